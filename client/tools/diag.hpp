/*
 * diag.hpp
 *     lockext-run's diagnostics (everything it prints on stderr after the command line
 *     was parsed) without ever blocking the caller on stderr.
 *
 * stderr may be a pipe whose reader stalled (`2>&1 | sleep 60`, a stuck logger): a
 * blocking write there would hold up the thread that has to SIGKILL the command before
 * the lease ends. So lines go into a bounded queue, and a writer thread empties it
 * through a non-blocking duplicate of stderr:
 *   - a pipe, FIFO or terminal: /proc/self/fd/2 opened again with O_NONBLOCK (a new
 *     open file description, so stderr's own flags, shared with other processes, stay
 *     as they are); if that open fails, fd 2 itself, written only in chunks of at most
 *     PIPE_BUF bytes after poll() reported room (a pipe then has PIPE_BUF bytes free);
 *   - a socket: send(MSG_DONTWAIT) on fd 2;
 *   - a regular file or block device: fd 2 (such writes do not wait for a reader).
 * When the queue is full, new lines are dropped and counted; the count is printed once
 * there is room again. Before start() (and in a process without the thread) a line is
 * written at once, non-blocking, or dropped.
 *
 * The state is allocated once and never freed: the writer thread may still be waiting
 * when the process exits. start() must run in each process that logs, after its last
 * fork that is not followed by exec (a thread does not survive fork).
 */
#ifndef LOCKEXT_RUN_DIAG_HPP
#define LOCKEXT_RUN_DIAG_HPP

#include "run_options.hpp"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

namespace lockext_run::diag
{

enum class Mode
{
	Discard,  // no usable stderr
	Write,    // write() on fd, which never waits for a reader
	PollPipe, // fd 2, blocking: poll for room, then at most PIPE_BUF bytes
	Send,     // send(MSG_DONTWAIT) on fd 2
};

struct State
{
	std::mutex mu;
	std::condition_variable cv;      // the writer waits for lines
	std::condition_variable drained; // flush() waits for an empty queue
	std::deque<std::string> queue;
	std::size_t dropped = 0;
	bool writing = false; // the writer holds a line that is not written yet
	bool started = false;
	std::atomic<bool> stop{false}; // shutdown(): the writer ends
	std::thread thread;
	pid_t owner = 0; // the process that started the writer
	int fd = -1;
	Mode mode = Mode::Discard;
};

inline constexpr std::size_t kQueueLines = 256;

inline State &
state()
{
	static State *s = new State; // never freed (see above)
	return *s;
}

/* Picks the descriptor and the way to write to it (see above). */
inline void
open_output(State &s)
{
	struct stat st
	{
	};
	if (s.fd > STDERR_FILENO)
		close(s.fd);
	s.fd = -1;
	if (fstat(STDERR_FILENO, &st) != 0)
	{
		s.mode = Mode::Discard;
		return;
	}
	if (S_ISSOCK(st.st_mode))
	{
		s.fd = STDERR_FILENO;
		s.mode = Mode::Send;
		return;
	}
	if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))
	{
		s.fd = STDERR_FILENO;
		s.mode = Mode::Write;
		return;
	}
	const int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd >= 0)
	{
		s.fd = fd;
		s.mode = Mode::Write;
		return;
	}
	s.fd = STDERR_FILENO;
	s.mode = Mode::PollPipe;
}

/* One attempt to write data[0, n): bytes written, 0 if it would block, -1 on an error
 * (the line is then dropped). */
inline ssize_t
write_some(const State &s, const char *data, std::size_t n)
{
	ssize_t w = -1;
	switch (s.mode)
	{
		case Mode::Discard:
			return static_cast<ssize_t>(n);
		case Mode::Write:
			w = write(s.fd, data, n);
			break;
		case Mode::Send:
			w = send(s.fd, data, n, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (w < 0 && errno == ENOTSOCK)
				w = write(s.fd, data, n);
			break;
		case Mode::PollPipe:
		{
			pollfd p{s.fd, POLLOUT, 0};
			if (poll(&p, 1, 0) != 1 || (p.revents & POLLOUT) == 0)
				return (p.revents & (POLLERR | POLLHUP)) != 0 ? -1 : 0;
			w = write(s.fd, data, std::min<std::size_t>(n, PIPE_BUF));
			break;
		}
	}
	if (w < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
	return w;
}

/* Writes a whole line, waiting for room at most until `until` (in slices of 50 ms).
 * False if it had to give up. */
inline bool
write_line(const State &s, const std::string &line, std::chrono::steady_clock::time_point until)
{
	std::size_t off = 0;
	while (off < line.size() && !s.stop.load())
	{
		const ssize_t w = write_some(s, line.data() + off, line.size() - off);
		if (w < 0)
			return false;
		off += static_cast<std::size_t>(w);
		if (off == line.size())
			break;
		if (std::chrono::steady_clock::now() >= until)
			return false;
		if (w == 0)
		{
			pollfd p{s.fd, POLLOUT, 0};
			(void) poll(&p, 1, 50);
		}
	}
	return true;
}

inline void
writer_loop(State &s)
{
	std::unique_lock lock(s.mu);
	for (;;)
	{
		s.cv.wait(lock, [&] { return !s.queue.empty() || s.stop.load(); });
		if (s.stop.load())
			return;
		std::string line = std::move(s.queue.front());
		s.queue.pop_front();
		if (s.dropped > 0)
		{
			line = std::string(g_prog) + ": " + std::to_string(s.dropped) +
				   " diagnostic line(s) dropped: stderr was not read\n" + line;
			s.dropped = 0;
		}
		s.writing = true;
		lock.unlock();
		// A line that cannot go out within 10 s is dropped, the rest waits its turn.
		const bool ok =
			write_line(s, line, std::chrono::steady_clock::now() + std::chrono::seconds(10));
		lock.lock();
		s.writing = false;
		if (!ok)
			++s.dropped;
		if (s.queue.empty())
			s.drained.notify_all();
	}
}

/* Starts the writer thread of this process (once). It runs with every signal blocked. */
inline void
start()
{
	State &s = state();
	std::lock_guard lock(s.mu);
	if (s.started && s.owner == getpid())
		return;
	s.queue.clear();
	s.dropped = 0;
	s.writing = false;
	open_output(s);
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	try
	{
		s.stop = false;
		s.thread = std::thread(writer_loop, std::ref(s));
		s.started = true;
	}
	catch (...)
	{
		s.started = false;
	}
	pthread_sigmask(SIG_SETMASK, &old, nullptr);
	s.owner = getpid();
}

/* Queues one line (a '\n' is added); never blocks on stderr. */
inline void
line(std::string text)
{
	text.push_back('\n');
	State &s = state();
	std::unique_lock lock(s.mu);
	if (!s.started || s.owner != getpid())
	{
		if (s.owner != getpid())
		{
			s.owner = getpid();
			s.started = false;
			open_output(s);
		}
		(void) write_line(s, text, std::chrono::steady_clock::now());
		return;
	}
	if (s.queue.size() >= kQueueLines)
	{
		++s.dropped;
		return;
	}
	s.queue.push_back(std::move(text));
	lock.unlock();
	s.cv.notify_one();
}

/* printf-style line. */
[[gnu::format(printf, 1, 2)]] inline void
printf(const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	va_start(ap, fmt);
	const int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	line(std::string(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1)));
}

/* Waits up to `bound` for the queued lines to be written (before exiting). */
inline void
flush(std::chrono::milliseconds bound)
{
	State &s = state();
	std::unique_lock lock(s.mu);
	if (!s.started || s.owner != getpid())
		return;
	s.drained.wait_for(lock, bound, [&] { return s.queue.empty() && !s.writing; });
}

/* flush(bound), then ends the writer thread and joins it (within ~50 ms even if stderr
 * is stuck): a thread still running at exit would make ThreadSanitizer's exit wait. */
inline void
shutdown(std::chrono::milliseconds bound)
{
	flush(bound);
	State &s = state();
	{
		std::lock_guard lock(s.mu);
		if (!s.started || s.owner != getpid())
			return;
		s.stop = true;
		s.started = false;
	}
	s.cv.notify_all();
	if (s.thread.joinable())
		s.thread.join();
}

} // namespace lockext_run::diag

#endif
