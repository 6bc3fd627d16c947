/*
 * lockext_run.cpp
 *     lockext-run: run a command under a lockext lease, in the spirit of flock(1).
 *
 *     lockext-run [options] -k KEY [--] COMMAND [ARGS...]
 *
 * Takes the lease (waiting up to --wait on the server: try_lock_for, cancelled by the
 * forwarded signals; polling with jittered backoff against a lockext 1.0 database), forks and
 * execs the command in its own process group with LOCKEXT_KEY, LOCKEXT_LOCK_ID,
 * LOCKEXT_FENCE and LOCKEXT_TTL_MS in its environment, renews the lease with a
 * LeaseKeeper while it runs, and stops the command's whole process tree before the
 * lease can end on the server:
 *
 *   D = valid_until() = send time of the last successful renew + TTL (BootClock)
 *   M = --margin (default TTL/100 + 100 ms: clock-rate drift between the hosts, and the
 *       time to deliver the signal and for the kernel to end the processes)
 *   W = min(--kill-after, TTL/3 - M)
 *   SIGTERM at D - M - W (or at once when the server says the lease is gone),
 *   SIGKILL at min(SIGTERM + --kill-after, D - M).
 *
 * Processes: the front (the pid the caller sees; forwards signals, exits with the status)
 * forks the supervisor (everything else), which forks the command. Both are child
 * subreapers, so everything the command starts stays their descendant (setsid and double
 * forks included); on loss and when the command ends, every live descendant is signalled
 * and reaped before the lease is released. The command gets PR_SET_PDEATHSIG(SIGKILL). A
 * SIGKILLed front: the supervisor kills the tree and releases; a SIGKILLed supervisor: the
 * kernel kills the command and the front kills the rest (see front()).
 *
 * Signals: the forwarded signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, minus
 * those ignored on entry) and SIGCHLD are blocked in every thread (before the keeper
 * thread starts, which inherits the mask) and read from a signalfd by the main thread;
 * SIGPIPE is ignored (the command gets its entry disposition back). SIGTSTP, SIGTTIN and
 * SIGTTOU are caught the same way and relayed (the tree is stopped before lockext-run),
 * SIGCONT is read by the supervisor (it checks the lease before continuing the tree); the
 * supervisor has a process group of its own. Every diagnostic goes through diag.hpp
 * (never blocks on stderr), and after the command is reaped its process-group id is no
 * longer signalled (the id may be reused). Deadlines are on
 * CLOCK_BOOTTIME: a timerfd on that clock wakes the main loop, so a host that was
 * suspended past a deadline acts on it at once after resume. Exit statuses: usage() and
 * client/README.md; they are decided on lockext::Failure's kind and SQLSTATE, never on
 * message text.
 */
#include "diag.hpp"
#include "process_tree.hpp"
#include "run_options.hpp"

#include <lockext/boot_clock.hpp>
#include <lockext/errors.hpp>
#include <lockext/lease_keeper.hpp>
#include <lockext/pg_locking_plugin.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <thread>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

extern char **environ;

namespace lockext_run
{
namespace
{

using Clock = lockext::LeaseKeeper::Clock;
static_assert(std::is_same_v<Clock, lockext::BootClock>, "lockext-run's deadlines are BOOTTIME");

/* "lockext-run: " + fmt with what; through diag (never blocks on stderr). */
void
complain(const char *fmt, const std::string &what)
{
	char buf[1536];
	std::snprintf(buf, sizeof buf, fmt, what.c_str());
	diag::printf("%s: %s", g_prog, buf);
}

long long
ms_of(Clock::duration d)
{
	return std::chrono::duration_cast<milliseconds>(d).count();
}

/* Exit status for a failed try_lock, from the failure's SQLSTATE and kind. */
int
exit_status_for(const lockext::Failure &f)
{
	using K = lockext::FailureKind;
	const std::string_view s = f.sqlstate;
	if (s.starts_with("28") || s == "42501")
		return kExitNoPerm; // authentication / authorization
	if (s.starts_with("22"))
		return kExitUsage; // the server rejected the key or the TTL
	if (s == "42883" || s == "3F000" || s == "55000" || s == "42P01")
		return kExitUnavailable;
	if (s.starts_with("08") || s.starts_with("57P") || s.starts_with("53") || s == "25006" ||
		s == "57014")
		return kExitTempFail;
	switch (f.kind)
	{
		case K::BadInput:
			return kExitUsage;
		case K::AuthFailed:
			return kExitNoPerm;
		case K::Config:
		case K::Server:
		case K::Protocol:
		case K::LockLost:
			return kExitUnavailable;
		case K::Unreachable:
		case K::Timeout:
		case K::ConnectionLost:
		case K::Capacity:
		case K::Unknown:
			return kExitTempFail;
	}
	return kExitTempFail;
}

void
report_failure(const lockext::Failure &f)
{
	complain("%s", f.message);
	if (f.sqlstate == "42883" || f.sqlstate == "3F000")
		complain("hint: %s", "run CREATE EXTENSION lockext in that database (or check the "
							 "search_path / schema it was created in)");
}

/* Pending signals, read from a signalfd (SIGCHLD only wakes). */
struct Pending
{
	std::vector<int> forwarded; // forwardable signals, in order
	std::vector<int> stops;     // SIGTSTP, SIGTTIN, SIGTTOU (from anyone)
	bool cont = false;          // SIGCONT (from anyone; supervisor only)
};

/* Reads pending signals. With from != 0 only forwardable signals sent by process `from`
 * count (the supervisor takes them from the front process, which forwards everything it
 * gets, so that a signal sent to several of lockext-run's processes is passed on once). */
Pending
drain_signals(int sfd, pid_t from = 0)
{
	Pending out;
	signalfd_siginfo info;
	while (read(sfd, &info, sizeof info) == static_cast<ssize_t>(sizeof info))
	{
		const int sig = static_cast<int>(info.ssi_signo);
		if (sig == SIGCHLD)
			continue;
		if (sig == SIGCONT)
			out.cont = true;
		else if (is_stop_signal(sig))
			out.stops.push_back(sig);
		else if (from == 0 || static_cast<pid_t>(info.ssi_pid) == from)
			out.forwarded.push_back(sig);
	}
	return out;
}

/* The front process (see front()): its pid, and the read end of a pipe that reaches EOF
 * when it dies. */
struct Front
{
	pid_t pid = 0;
	int fd = -1;
	pid_t pgrp = 0; // the front's process group: lockext-run's job (the supervisor has its own)
	int suspend_fd = -1; // a byte written here before the supervisor stops itself
};

/* Stops the supervisor (SIGSTOP), telling the front first that it did so itself: the
 * front then stops too (the shell sees the job stopped) and continues the supervisor when
 * it is continued. */
void
stop_self(const Front &front)
{
	const char byte = 1;
	(void) !write(front.suspend_fd, &byte, 1);
	(void) kill(getpid(), SIGSTOP);
}

/* Sleeps in poll() on fds until `when` or until one of them is ready, at most 1 s. The
 * wake-up comes from tfd, a timerfd on CLOCK_BOOTTIME, so time spent suspended counts
 * (poll's own timeout runs on CLOCK_MONOTONIC and is only the 1 s backstop). */
void
wait_until(std::vector<pollfd> &fds, int tfd, Clock::time_point when)
{
	const auto now = Clock::now();
	when = std::clamp(when, now + std::chrono::microseconds(1), now + std::chrono::seconds(1));
	const auto ns = when.time_since_epoch().count();
	itimerspec spec{};
	spec.it_value.tv_sec = static_cast<time_t>(ns / 1000000000);
	spec.it_value.tv_nsec = static_cast<long>(ns % 1000000000);
	(void) timerfd_settime(tfd, TFD_TIMER_ABSTIME, &spec, nullptr);
	std::vector<pollfd> all = fds;
	all.push_back({tfd, POLLIN, 0});
	(void) poll(all.data(), all.size(), 1000);
	for (std::size_t i = 0; i < fds.size(); ++i)
		fds[i].revents = all[i].revents;
	std::uint64_t expirations;
	(void) !read(tfd, &expirations, sizeof expirations);
}

/* environ plus the LOCKEXT_* variables (replacing inherited ones). */
std::vector<std::string>
child_environment(const lockext::LockHandle &h)
{
	std::vector<std::string> env;
	for (char **e = environ; e != nullptr && *e != nullptr; ++e)
	{
		std::string_view v(*e);
		if (v.starts_with("LOCKEXT_KEY=") || v.starts_with("LOCKEXT_LOCK_ID=") ||
			v.starts_with("LOCKEXT_FENCE=") || v.starts_with("LOCKEXT_TTL_MS="))
			continue;
		env.emplace_back(v);
	}
	env.push_back("LOCKEXT_KEY=" + h.key);
	env.push_back("LOCKEXT_LOCK_ID=" + h.lock_id);
	env.push_back("LOCKEXT_FENCE=" + std::to_string(h.fence));
	env.push_back("LOCKEXT_TTL_MS=" + std::to_string(h.ttl_ms));
	return env;
}

/* "lock 'k' is held by someone else", or the server's grace period if one is active. */
std::string
contention_message(lockext::PgLockingPlugin &locks, const Options &o)
{
	if (auto g = locks.grace_status(); g && g->active)
		return "refused: grace period after " + g->reason + ", " + std::to_string(g->remaining_ms) +
			   " ms left";
	return "lock '" + o.key + "' is held by someone else" +
		   (o.wait.count() > 0 ? " (gave up waiting)" : "");
}

/* How long the exit path waits for the keeper to stop and the release to be answered.
 * The command is dead by then; a stalled server (a renew to wait for, then a connect)
 * must not keep lockext-run from exiting: the lease then expires on the server. Also
 * the bound on a cancelled wait's end (acquire_waiting). */
constexpr milliseconds kExitWait{2000};

/* The lease after a grant: when the grant came after a wait (a server-side wait may end
 * long after the request was sent, and chained waits were sent later still), the lease's
 * start is not known from the send time `before`, so the lease is renewed once at once
 * and `before` becomes that renew's send time (the deadlines of the safety margin are
 * measured from it). Returns false (and sets exit_status) if the lease is already gone. */
bool
settle_waited_grant(lockext::PgLockingPlugin &locks, const Options &o,
					const lockext::LockHandle &h, Clock::time_point &before, int &exit_status)
{
	if (Clock::now() - before <= o.effective_margin())
		return true; // granted at once: `before` bounds the lease's start
	const auto sent = Clock::now();
	if (auto r = locks.renew_outcome(h); !r)
	{
		complain("%s", "lease '" + o.key + "' was granted after the wait but could not be renewed: " +
						   r.error().message);
		(void) locks.release(h);
		exit_status = r.error().kind == lockext::FailureKind::LockLost
						  ? kExitTempFail
						  : exit_status_for(r.error());
		return false;
	}
	before = sent;
	return true;
}

/* The result of a try_lock_for run on a thread of its own (acquire_waiting). */
struct WaitOutcome
{
	int pipe[2] = {-1, -1}; // a byte is written to pipe[1] when `result` is set
	std::optional<lockext::Outcome<std::optional<lockext::LockHandle>>> result;
	~WaitOutcome()
	{
		for (int fd : pipe)
			if (fd >= 0)
				close(fd);
	}
};

/* --wait > 0: one try_lock_for (server-side waits, FIFO with direct hand-off; the
 * plugin chains bounded waits when --wait exceeds lockext.max_wait_ms, and polls with
 * jittered backoff against a lockext 1.0 database) on a thread of its own, while this
 * thread watches the signalfd and the front. A forwarded signal (SIGINT, SIGTERM, ...)
 * or the front's death cancels the wait at once (PgLockingPlugin::cancel_waits: a
 * PQcancel of the waiting connection, so the server drops the waiter and never hands the
 * lease to a client that is gone); a lease granted at the same moment is released.
 * Returns the outcome, or nullopt with exit_status set. */
std::optional<lockext::Outcome<std::optional<lockext::LockHandle>>>
acquire_waiting(lockext::PgLockingPlugin &locks, const Options &o, int sfd, const Front &front,
				int &exit_status)
{
	auto out = std::make_shared<WaitOutcome>();
	if (pipe2(out->pipe, O_CLOEXEC | O_NONBLOCK) != 0)
	{
		complain("cannot wait for the lock: pipe: %s", std::strerror(errno));
		exit_status = kExitOsErr;
		return std::nullopt;
	}
	// The thread inherits the blocked signal mask: signals stay with the signalfd.
	std::thread worker(
		[out, &locks, &o]
		{
			out->result =
				locks.try_lock_for_outcome(o.key, static_cast<std::uint64_t>(o.ttl.count()), o.wait);
			const char byte = 1;
			(void) !write(out->pipe[1], &byte, 1);
		});
	int interrupted = 0; // the exit status of a cancelled wait (128 + signal)
	std::optional<std::chrono::steady_clock::time_point> give_up; // after a cancel
	for (;;)
	{
		int timeout_ms = 1000;
		if (give_up)
		{
			const auto left = std::chrono::ceil<milliseconds>(*give_up -
															   std::chrono::steady_clock::now());
			if (left.count() <= 0)
			{
				// The server did not answer the cancel (stalled): leave the waiting thread
				// behind; exiting closes its connection, which ends the wait on the server.
				worker.detach();
				complain("%s", "the wait for '" + o.key + "' did not end within " +
								   std::to_string(kExitWait.count()) + " ms of the cancel; exiting");
				diag::flush(milliseconds(300));
				_exit(interrupted);
			}
			// Cancel again every 100 ms: a cancel that reached the server before the wait
			// itself did is ignored there.
			timeout_ms = static_cast<int>(std::min<long long>(left.count(), 100));
			if (timeout_ms == 100)
				locks.cancel_waits();
		}
		pollfd fds[] = {{out->pipe[0], POLLIN, 0}, {sfd, POLLIN, 0}, {front.fd, POLLIN, 0}};
		(void) poll(fds, interrupted != 0 ? 2 : 3, timeout_ms);
		if (fds[0].revents != 0)
			break;
		int sig = 0;
		if (fds[1].revents & POLLIN)
		{
			auto sigs = drain_signals(sfd, front.pid);
			if (!sigs.forwarded.empty())
				sig = sigs.forwarded.back();
			if (!sigs.stops.empty() && interrupted == 0)
				stop_self(front); // no command yet: just stop (the front follows)
		}
		if (interrupted == 0 && fds[2].revents != 0)
			sig = SIGKILL; // the front process was killed
		if (sig != 0)
		{
			locks.cancel_waits(); // async-signal-safe; cheap to repeat
			if (interrupted == 0)
			{
				interrupted = 128 + sig;
				give_up = std::chrono::steady_clock::now() + kExitWait;
			}
		}
	}
	worker.join();
	auto result = std::move(*out->result);
	if (interrupted != 0)
	{
		if (result && result->has_value())
			(void) locks.release(**result); // granted as the cancel went out
		exit_status = interrupted;
		return std::nullopt;
	}
	return result;
}

/* Takes the lease: one try_lock (--wait 0) or a server-side wait (acquire_waiting).
 * Returns the handle, or sets exit_status. before = time just before the granting
 * request (after a wait: before the renew that settles the lease's start). A forwarded
 * signal in the wait ends it with 128+signal. */
std::optional<lockext::LockHandle>
acquire(lockext::PgLockingPlugin &locks, const Options &o, int sfd, const Front &front,
		Clock::time_point &before, int &exit_status)
{
	before = Clock::now();
	std::optional<lockext::Outcome<std::optional<lockext::LockHandle>>> r;
	if (o.wait.count() == 0)
		r = locks.try_lock_outcome(o.key, static_cast<std::uint64_t>(o.ttl.count()));
	else if (o.verbose)
		diag::printf("%s: waiting up to %lld ms for '%s'", g_prog,
					 static_cast<long long>(o.wait.count()), o.key.c_str());
	if (o.wait.count() != 0 && !(r = acquire_waiting(locks, o, sfd, front, exit_status)))
		return std::nullopt;
	const auto &outcome = *r;
	if (!outcome)
	{
		report_failure(outcome.error());
		exit_status = exit_status_for(outcome.error());
		return std::nullopt;
	}
	if (!outcome->has_value())
	{
		if (!o.quiet)
			complain("%s", contention_message(locks, o));
		exit_status = o.conflict_exit;
		return std::nullopt;
	}
	const lockext::LockHandle handle = **outcome;
	if (auto sigs = drain_signals(sfd, front.pid); !sigs.forwarded.empty())
	{
		(void) locks.release(handle);
		exit_status = 128 + sigs.forwarded.back();
		return std::nullopt;
	}
	if (!settle_waited_grant(locks, o, handle, before, exit_status))
		return std::nullopt;
	return handle;
}

struct Ending
{
	int wstatus = 0;
	bool lost = false;  // the lease was lost (or about to end): the command was stopped
	bool stuck = false; // processes survived SIGKILL: do not release
};

/* Runs until the command and every descendant have ended, stopping them when the lease
 * is lost or about to end.
 *
 * Job control: a ^Z at the terminal stops the command's group; a SIGTSTP, SIGTTIN or
 * SIGTTOU sent to lockext-run is relayed (the front passes it on): either way the whole
 * tree is stopped (SIGSTOP) first, then the supervisor stops itself, and the front
 * follows so that the shell sees the job stopped. On SIGCONT (fg, bg, kill -CONT; the
 * front continues the supervisor when it is continued itself) the lease is checked
 * first: still valid, the tree is continued (and given the terminal again if the job is
 * in the foreground); ended meanwhile, the still stopped tree is killed (exit 70). */
Ending
supervise(const Options &o, lockext::LeaseKeeper &keeper, pid_t child, int sfd, int lost_fd,
		  int tfd, int tty, const Front &front)
{
	const milliseconds margin = o.effective_margin();
	const milliseconds window = o.term_window();
	const std::string &key = keeper.handle().key;
	std::vector<pollfd> fds{{sfd, POLLIN, 0}, {lost_fd, POLLIN, 0}, {front.fd, POLLIN, 0}};
	Ending end;
	bool done = false, stopping = false, killed = false, front_died = false;
	Clock::time_point stop_sent{}, kill_sent{};
	std::optional<Clock::time_point> done_at;
	// The command's process group may be signalled only until the command is reaped
	// (see signal_tree()); after that, only the descendant walk.
	const auto group = [&] { return done ? 0 : child; };
	// The lease ended (or is about to) while the tree was stopped: kill it, still stopped.
	const auto resume_or_kill = [&](const char *while_what)
	{
		const auto now = Clock::now();
		if (killed)
			return;
		if (keeper.lost() || now >= keeper.valid_until() - margin)
		{
			kill_tree(group());
			killed = stopping = end.lost = true;
			kill_sent = now;
			diag::printf("%s: lease '%s' lost while %s: SIGKILL to the stopped command", g_prog,
						 key.c_str(), while_what);
			return;
		}
		if (tty >= 0 && !done && tcgetpgrp(tty) == front.pgrp)
			(void) tcsetpgrp(tty, child);
		signal_tree(group(), SIGCONT);
	};
	// Stops the tree, then the supervisor itself (the front sees it and stops too).
	const auto suspend = [&]
	{
		signal_tree(group(), SIGSTOP);
		if (tty >= 0)
			(void) tcsetpgrp(tty, front.pgrp);
		stop_self(front);
		resume_or_kill("lockext-run was stopped");
	};
	// Processes still alive this long after the command ended are stragglers (shorter
	// lived ones were just dying with it, e.g. of the same forwarded signal).
	constexpr milliseconds kStragglerDelay{100};
	for (;;)
	{
		bool stopped = false;
		reap(child, tty >= 0 && !stopping, done, end.wstatus, stopped);
		// (a stale report, of a stop that is over, is ignored)
		if (stopped && !done && !stopping && is_stopped(child))
			suspend(); // ^Z at the terminal
		const auto tree = descendants();
		if (done && tree.empty())
			break;
		const auto now = Clock::now();
		if (done && !done_at)
			done_at = now;
		const auto valid_until = keeper.valid_until();
		const auto kill_by = valid_until - margin;
		if (!stopping)
		{
			std::string why;
			if (keeper.lost())
				why =
					keeper.lost_reason().value_or("no successful renew within the lease's ttl (" +
												  std::to_string(keeper.handle().ttl_ms) + " ms)");
			else if (now >= kill_by - window)
				why = "no successful renew for " +
					  std::to_string(ms_of(now - (valid_until - o.ttl))) +
					  " ms, the lease may end in " + std::to_string(ms_of(valid_until - now)) +
					  " ms (" + keeper.lost_reason().value_or("renewals fail") + ")";
			if (!why.empty())
			{
				// Signal first, log after (diag never blocks: a stalled stderr reader
				// cannot delay the SIGKILL either).
				signal_tree(group(), SIGTERM);
				stopping = true;
				end.lost = true;
				stop_sent = now;
				diag::printf("%s: lease '%s' lost: %s; stopping the command (SIGTERM)", g_prog,
							 key.c_str(), why.c_str());
			}
			else if (done && now >= *done_at + kStragglerDelay)
			{
				signal_tree(0, SIGTERM);
				stopping = true;
				stop_sent = now;
				diag::printf("%s: the command ended but left %zu process(es) running: SIGTERM",
							 g_prog, tree.size());
			}
		}
		if (front_died && !killed)
		{
			// lockext-run (the front process) was killed with SIGKILL: end everything at
			// once, then release.
			kill_tree(group());
			killed = stopping = true;
			kill_sent = now;
			fds[2].fd = -1;
			diag::printf("%s: lockext-run was killed: SIGKILL to the command", g_prog);
		}
		if (stopping && !killed && now >= std::min(stop_sent + o.kill_after, kill_by))
		{
			kill_tree(group());
			killed = true;
			kill_sent = now;
			diag::printf("%s: the command did not stop %s: SIGKILL", g_prog,
						 now >= kill_by ? "before the safety margin" : "within --kill-after");
		}
		if (killed && now - kill_sent >= std::chrono::seconds(5))
		{
			diag::printf("%s: %zu process(es) did not end 5 s after SIGKILL (uninterruptible "
						 "sleep?), first pid %d; leaving the lease to expire",
						 g_prog, tree.size(), tree.empty() ? 0 : static_cast<int>(tree.front()));
			end.stuck = true;
			break;
		}
		Clock::time_point next = now + std::chrono::seconds(1);
		if (!stopping)
		{
			next = std::min(next, kill_by - window);
			if (done_at)
				next = std::min(next, *done_at + kStragglerDelay);
		}
		else if (!killed)
			next = std::min(next, std::min(stop_sent + o.kill_after, kill_by));
		else
		{
			kill_tree(group()); // again: whatever was re-parented to us meanwhile
			next = now + milliseconds(20);
		}
		wait_until(fds, tfd, next);
		if (fds[0].revents & POLLIN)
		{
			const Pending sigs = drain_signals(sfd, front.pid);
			for (int sig : sigs.forwarded)
				if (!done)
					(void) kill(-child, sig); // the command's group (not yet reaped: its own)
				else
					signal_tree(0, sig); // the group's id may be reused: the walk only
			if (!sigs.stops.empty() && !killed)
				suspend();
			else if (sigs.cont)
				resume_or_kill("lockext-run was stopped"); // e.g. after a SIGSTOP to it
		}
		if (fds[2].fd >= 0 && fds[2].revents != 0)
			front_died = true;
		if (fds[1].revents & POLLIN)
		{
			char buf[16];
			while (read(lost_fd, buf, sizeof buf) > 0)
			{
			}
		}
	}
	if (tty >= 0)
		(void) tcsetpgrp(tty, front.pgrp);
	return end;
}

/* --hold-at-least: keep the lease until start + hold although the command has ended.
 * While more than one TTL remains the keeper goes on renewing; then one final renew
 * asks for exactly the rest (sent now, so the server keeps it at least until
 * start + hold) and lockext-run exits without releasing. A forwarded signal ends the
 * wait early with the final renew capped at one TTL. Returns false if the lease had to
 * be released normally instead (the time was already covered). */
bool
hold_until(lockext::PgLockingPlugin &locks, lockext::LeaseKeeper &keeper, const Options &o,
		   Clock::time_point until, int sfd, int tfd, const Front &front)
{
	if (Clock::now() >= until)
		return false;
	std::vector<pollfd> fds{{sfd, POLLIN, 0}, {front.fd, POLLIN, 0}};
	if (o.verbose)
		diag::printf("%s: holding '%s' for %lld ms more (--hold-at-least)", g_prog, o.key.c_str(),
					 ms_of(until - Clock::now()));
	bool interrupted = false;
	while (!interrupted && !keeper.lost() && until - Clock::now() > o.ttl)
	{
		wait_until(fds, tfd, until - o.ttl);
		if (fds[0].revents & POLLIN)
			interrupted = !drain_signals(sfd, front.pid).forwarded.empty();
		if (fds[1].revents != 0)
			interrupted = true;
	}
	keeper.stop();
	if (keeper.lost())
	{
		complain("warning: the lease was lost while held for --hold-at-least: %s",
				 keeper.lost_reason().value_or("no successful renew within its ttl"));
		return true;
	}
	lockext::LockHandle h = keeper.handle();
	const auto now = Clock::now(); // before the renew is sent
	auto rest = std::chrono::ceil<milliseconds>(until - now);
	rest = std::clamp(rest, milliseconds(1), o.ttl);
	h.ttl_ms = static_cast<std::uint64_t>(rest.count());
	if (auto r = locks.renew_outcome(h); !r)
		complain("warning: could not hold the lease for --hold-at-least: %s", r.error().message);
	else if (o.verbose)
		diag::printf("%s: '%s' held for another %lld ms, not released", g_prog, o.key.c_str(),
					 static_cast<long long>(rest.count()));
	return true;
}

/* Builds the plugin with --prepared-statements applied: the library reads
 * LOCKEXT_PREPARED_STATEMENTS at construction, so the chosen mode is put there for the
 * constructor only (the command sees the environment lockext-run was given). */
lockext::PgOptions
plugin_options(const Options &o)
{
	lockext::PgOptions popts;
	popts.pool_size = 2;
	// A renew must not block much longer than the retries between renewals allow.
	popts.statement_timeout = std::clamp(std::chrono::duration_cast<milliseconds>(o.ttl / 6),
										 milliseconds(250), milliseconds(5000));
	popts.prepared_statements = o.prepared_statements != "off";
	popts.on_log = [](std::string_view line)
	{ diag::printf("%s: %.*s", g_prog, static_cast<int>(line.size()), line.data()); };
	// A connect (e.g. for the final release while the server stalls) must not take
	// longer than the time left: min(2 s, TTL/3) in whole seconds, at least 1 (libpq
	// rounds up to 2 s). Only used when neither the DSN nor PGCONNECT_TIMEOUT sets one.
	popts.connect_timeout = std::clamp(std::chrono::floor<std::chrono::seconds>(o.ttl / 3),
									   std::chrono::seconds(1), std::chrono::seconds(2));
	return popts;
}


/* keeper.release() (or, with release false, keeper.stop()) on a thread of its own,
 * waited for at most kExitWait, and less if a forwarded signal (SIGTERM, SIGINT, ...)
 * arrives meanwhile. Returns the release's error, if any; if the wait is cut short, says so,
 * leaves the lease to expire on the server and exits at once with `status` (the thread
 * may still be blocked on the server: no destructor may wait for it). */
std::optional<std::string>
finish_keeper(lockext::LeaseKeeper &keeper, bool release, int sfd, const Front &front, int status)
{
	struct Outcome
	{
		int pipe[2] = {-1, -1};
		std::optional<std::string> error;
	};
	auto out = std::make_shared<Outcome>();
	if (pipe2(out->pipe, O_CLOEXEC | O_NONBLOCK) != 0)
	{
		// Cannot wait with a bound: do it inline.
		if (!release)
			keeper.stop();
		else if (auto r = keeper.release(); !r)
			return r.error();
		return std::nullopt;
	}
	std::thread worker(
		[out, &keeper, release]
		{
			if (!release)
				keeper.stop();
			else if (auto r = keeper.release(); !r)
				out->error = r.error();
			const char byte = 1;
			(void) !write(out->pipe[1], &byte, 1);
		});
	const auto give_up = std::chrono::steady_clock::now() + kExitWait;
	const char *why = nullptr;
	for (;;)
	{
		const auto left =
			std::chrono::ceil<milliseconds>(give_up - std::chrono::steady_clock::now());
		if (left.count() <= 0)
		{
			why = "the server did not answer within 2 s";
			break;
		}
		pollfd fds[] = {{out->pipe[0], POLLIN, 0}, {sfd, POLLIN, 0}};
		(void) poll(fds, 2, static_cast<int>(left.count()));
		if (fds[0].revents != 0)
		{
			worker.join();
			close(out->pipe[0]);
			close(out->pipe[1]);
			return out->error;
		}
		if ((fds[1].revents & POLLIN) && !drain_signals(sfd, front.pid).forwarded.empty())
		{
			why = "interrupted by a signal";
			break;
		}
	}
	worker.detach();
	diag::printf("%s: %s %s; leaving the lease to expire on the server (ttl %lld ms)", g_prog,
				 release ? "could not release the lease:" : "could not stop renewing:", why,
				 static_cast<long long>(keeper.handle().ttl_ms));
	diag::flush(milliseconds(300));
	_exit(status);
}

/* The supervisor: takes the lease, runs and watches the command, releases. */
int
run(const Options &o, const EntrySignals &entry, const Front &front)
{
	diag::start();
	const int sfd = open_signalfd(entry, true);
	int lost_pipe[2];
	const int tfd = timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC | TFD_NONBLOCK);
	if (sfd < 0 || tfd < 0 || pipe2(lost_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
	{
		complain("cannot set up signal handling: %s", std::strerror(errno));
		return kExitOsErr;
	}
	if (!become_subreaper())
	{
		complain("cannot become a child subreaper: %s", std::strerror(errno));
		return kExitOsErr;
	}

	std::optional<std::string> saved_env;
	if (!o.prepared_statements.empty())
	{
		if (const char *e = std::getenv("LOCKEXT_PREPARED_STATEMENTS"))
			saved_env = e;
		setenv("LOCKEXT_PREPARED_STATEMENTS", o.prepared_statements.c_str(), 1);
	}
	lockext::PgLockingPlugin locks(o.dsn, plugin_options(o));
	if (!o.prepared_statements.empty())
	{
		if (saved_env)
			setenv("LOCKEXT_PREPARED_STATEMENTS", saved_env->c_str(), 1);
		else
			unsetenv("LOCKEXT_PREPARED_STATEMENTS");
	}

	int exit_status = 0;
	Clock::time_point before;
	auto handle = acquire(locks, o, sfd, front, before, exit_status);
	if (!handle)
		return exit_status;
	if (o.verbose)
		diag::printf("%s: acquired '%s' (fence %lld, ttl %lld ms)", g_prog, handle->key.c_str(),
					 static_cast<long long>(handle->fence), static_cast<long long>(handle->ttl_ms));

	// The keeper thread inherits the blocked signal mask set above.
	lockext::LeaseKeeper keeper(
		locks, *handle,
		[fd = lost_pipe[1]](const std::string &)
		{
			const char byte = 1;
			(void) !write(fd, &byte, 1);
		},
		{}, before);

	std::vector<std::string> env = child_environment(*handle);
	std::vector<char *> envp;
	for (auto &e : env)
		envp.push_back(e.data());
	envp.push_back(nullptr);
	const int tty = foreground_tty(front.pgrp);
	const Spawned child = spawn_command(o.command.data(), envp.data(), entry, tty, front.pgrp);
	if (child.pid < 0)
	{
		if (auto e = finish_keeper(keeper, true, sfd, front, child.exit_status))
			complain("warning: %s (the lease expires after its TTL)", *e);
		return child.exit_status;
	}

	const Ending end = supervise(o, keeper, child.pid, sfd, lost_pipe[0], tfd, tty, front);
	const int command_status = status_of(end.wstatus);
	const int status = end.lost ? kExitSoftware : command_status;
	if (end.stuck)
	{
		(void) finish_keeper(keeper, false, sfd, front, status);
		return status;
	}
	if (!end.lost && o.hold_at_least.count() > 0 &&
		hold_until(locks, keeper, o, before + o.hold_at_least, sfd, tfd, front))
		return command_status;
	if (end.lost)
		diag::printf("%s: the command ended with status %d after the lease was lost", g_prog,
					 command_status);
	if (auto e = finish_keeper(keeper, true, sfd, front, status))
		complain("warning: %s (the lease expires after its TTL)", *e);
	else if (o.verbose && !end.lost)
		diag::printf("%s: released '%s'", g_prog, handle->key.c_str());
	return status;
}

/*
 * The front process: the one the caller started (its pid is the one cron, a shell or an
 * operator sees and signals). It forks the supervisor (run()), in a process group of its
 * own (one signal to lockext-run's group, e.g. kill -STOP -PGID, cannot stop both),
 * forwards every signal it gets to it (the stop signals too: the supervisor stops the
 * command's tree, then itself), follows its stops, and exits with its status. Both are
 * child subreapers: if the supervisor dies (even of SIGKILL), the kernel kills the
 * command (PDEATHSIG) and the rest of the tree is re-parented to the front, which kills
 * and reaps it; if the front is killed with SIGKILL, the supervisor sees its pipe close,
 * kills the whole tree at once and releases the lease. Only both dying at once leaves the
 * command's descendants running.
 *
 * A supervisor stopped by something else (SIGSTOP, a debugger) cannot renew: the front
 * then SIGSTOPs every process below it (the command's tree, by pid) at once, and when
 * the supervisor runs again sends it SIGCONT, on which it checks the lease before it
 * continues the tree (or kills it, if the lease ended meanwhile).
 */
int
front(pid_t supervisor, int sfd, int suspend_fd)
{
	diag::start();
	std::vector<pollfd> fds{{sfd, POLLIN, 0}};
	int wstatus = 0;
	bool done = false;
	bool sup_stopped = false; // the supervisor was seen stopped, the tree was stopped
	// Not the supervisor's tracer, if it is below us: LeakSanitizer's exit check, for one,
	// ptraces the supervisor from a child of it.
	const auto stop_tree = [&]
	{
		const pid_t tracer = tracer_of(supervisor);
		for (int round = 0; round < 16; ++round)
		{
			bool fresh = false;
			for (pid_t p : descendants())
				if (p != supervisor && p != tracer && proc_state(p) != 'T' && proc_state(p) != 't')
				{
					(void) kill(p, SIGSTOP);
					fresh = true;
				}
			if (!fresh)
				break;
		}
	};
	while (!done)
	{
		for (;;)
		{
			int st = 0;
			const pid_t p = waitpid(-1, &st, WNOHANG | WUNTRACED);
			if (p < 0 && errno == EINTR)
				continue;
			if (p <= 0)
				break;
			if (p != supervisor)
				continue;
			if (WIFSTOPPED(st))
			{
				// The supervisor stopped itself, after stopping the tree, on a ^Z or a
				// relayed stop signal (it wrote to suspend_fd first): stop too, so the
				// shell sees the job stopped, and continue it when we are continued.
				// Stopped by someone else (SIGSTOP): stop the tree, not ourselves (see
				// below). A stale report, after it was continued already, is ignored.
				char buf[16];
				const bool self = read(suspend_fd, buf, sizeof buf) > 0;
				if (is_stopped(supervisor))
				{
					stop_tree();
					if (!self)
					{
						sup_stopped = true;
						continue;
					}
					(void) kill(getpid(), SIGSTOP);
					(void) kill(supervisor, SIGCONT);
					sup_stopped = false;
				}
				continue;
			}
			done = true;
			wstatus = st;
		}
		if (done)
			break;
		for (auto &f : fds)
			f.revents = 0;
		(void) poll(fds.data(), fds.size(), 100);
		if (fds[0].revents & POLLIN)
		{
			const Pending sigs = drain_signals(sfd);
			for (int sig : sigs.forwarded)
				(void) kill(supervisor, sig);
			for (int sig : sigs.stops)
				(void) kill(supervisor, sig);
		}
		// Stopped or traced without a report to us (ptrace), or not yet reaped above.
		const char st = proc_state(supervisor);
		if (st == 'T' || st == 't')
		{
			if (!sup_stopped)
				stop_tree();
			sup_stopped = true;
		}
		else if (sup_stopped && st != '\0' && st != 'Z')
		{
			sup_stopped = false;
			(void) kill(supervisor, SIGCONT); // check the lease, continue the tree
		}
	}
	// Anything left was re-parented to us: the supervisor died without stopping it.
	const auto give_up = Clock::now() + std::chrono::seconds(5);
	while (!descendants().empty() && Clock::now() < give_up)
	{
		kill_tree(0);
		for (int st; waitpid(-1, &st, WNOHANG) > 0;)
		{
		}
		usleep(10000);
	}
	if (WIFEXITED(wstatus))
	{
		diag::shutdown(milliseconds(500));
		return WEXITSTATUS(wstatus);
	}
	diag::printf("%s: the supervising process died of signal %d; the command was stopped "
				 "(the lease expires after its TTL)",
				 g_prog, WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0);
	diag::shutdown(milliseconds(500));
	return kExitSoftware;
}

int
start(const Options &o)
{
	EntrySignals entry;
	const int sfd = setup_signals(entry);
	int alive[2], suspend[2];
	if (sfd < 0 || pipe2(alive, O_CLOEXEC) != 0 || pipe2(suspend, O_CLOEXEC | O_NONBLOCK) != 0)
	{
		complain("cannot set up signal handling: %s", std::strerror(errno));
		return kExitOsErr;
	}
	if (!become_subreaper())
	{
		complain("cannot become a child subreaper: %s", std::strerror(errno));
		return kExitOsErr;
	}
	// No thread exists yet, so the child may go on with ordinary code.
	const pid_t front_pid = getpid();
	const pid_t front_pgrp = getpgrp();
	const pid_t supervisor = fork();
	if (supervisor < 0)
	{
		complain("cannot fork: %s", std::strerror(errno));
		return kExitOsErr;
	}
	if (supervisor == 0)
	{
		(void) setpgid(0, 0); // both sides, so neither order races
		close(alive[1]);
		close(suspend[0]);
		close(sfd);
		const int status = run(o, entry, Front{front_pid, alive[0], front_pgrp, suspend[1]});
		diag::shutdown(milliseconds(500));
		return status;
	}
	(void) setpgid(supervisor, supervisor);
	close(alive[0]);
	close(suspend[1]);
	return front(supervisor, sfd, suspend[0]);
}

} // namespace
} // namespace lockext_run

int
main(int argc, char **argv)
{
	lockext_run::Options o;
	if (auto stop = lockext_run::parse_args(argc, argv, o))
		return *stop;
	return lockext_run::start(o);
}
