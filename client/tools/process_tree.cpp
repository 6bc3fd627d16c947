/*
 * process_tree.cpp
 *     Starting, finding, signalling and reaping the command's process tree (see
 *     process_tree.hpp).
 */
#include "process_tree.hpp"

#include "diag.hpp"
#include "run_options.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace lockext_run
{

namespace
{

void
noop_handler(int)
{
}

/* The pids listed in /proc/<pid>/task/<tid>/children for every thread of pid (nothing
 * if pid is gone). */
void
children_of(pid_t pid, std::vector<pid_t> &out)
{
	const std::string task = "/proc/" + std::to_string(pid) + "/task";
	DIR *d = opendir(task.c_str());
	if (d == nullptr)
		return;
	while (dirent *e = readdir(d))
	{
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		std::ifstream in(task + "/" + e->d_name + "/children");
		long p;
		while (in >> p)
			out.push_back(static_cast<pid_t>(p));
	}
	closedir(d);
}

/* State letter and parent of pid from /proc/<pid>/stat ('\0' if it is gone). */
char
stat_of(pid_t pid, pid_t *ppid = nullptr)
{
	std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
	std::string line;
	if (!std::getline(in, line))
		return '\0';
	const auto close = line.rfind(')'); // comm may contain spaces and parentheses
	if (close == std::string::npos || close + 2 >= line.size())
		return '\0';
	std::istringstream rest(line.substr(close + 2));
	char state = '\0';
	long parent = 0;
	rest >> state >> parent;
	if (ppid != nullptr)
		*ppid = static_cast<pid_t>(parent);
	return state;
}

bool
alive(pid_t pid)
{
	const char s = stat_of(pid);
	return s != '\0' && s != 'Z' && s != 'X';
}

/* Fallback without /proc/.../children: the parent links of every process. */
std::vector<pid_t>
descendants_by_scan()
{
	std::multimap<pid_t, pid_t> kids;
	if (DIR *d = opendir("/proc"))
	{
		while (dirent *e = readdir(d))
		{
			if (e->d_name[0] < '0' || e->d_name[0] > '9')
				continue;
			const auto pid = static_cast<pid_t>(std::atol(e->d_name));
			pid_t ppid = 0;
			if (stat_of(pid, &ppid) != '\0')
				kids.emplace(ppid, pid);
		}
		closedir(d);
	}
	std::vector<pid_t> out;
	std::vector<pid_t> todo{getpid()};
	while (!todo.empty())
	{
		const pid_t p = todo.back();
		todo.pop_back();
		auto [b, e] = kids.equal_range(p);
		for (auto it = b; it != e; ++it)
		{
			out.push_back(it->second);
			todo.push_back(it->second);
		}
	}
	return out;
}

} // namespace

int
setup_signals(EntrySignals &entry)
{
	sigset_t set;
	sigemptyset(&set);
	for (int s : kForwardable)
	{
		struct sigaction old
		{
		};
		sigaction(s, nullptr, &old);
		if (old.sa_handler == SIG_IGN)
			continue; // stays ignored, for lockext-run and for the command
		entry.forwarded.push_back(s);
		sigaddset(&set, s);
	}
	struct sigaction old
	{
	};
	sigaction(SIGPIPE, nullptr, &old);
	entry.pipe_ignored = old.sa_handler == SIG_IGN;
	// A closed stderr must not kill lockext-run before it has stopped the command.
	signal(SIGPIPE, SIG_IGN);
	// A handler (never run: the signal stays blocked) makes sure SIGCHLD is queued
	// for the signalfd whatever disposition we inherited.
	struct sigaction sa
	{
	};
	sa.sa_handler = noop_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; // stops of the command are reported too (interactive ^Z)
	sigaction(SIGCHLD, &sa, nullptr);
	sigaddset(&set, SIGCHLD);
	for (int s : kStopSignals)
		sigaddset(&set, s);
	// SIGTTOU blocked also lets tcsetpgrp work from a background process group. SIGCONT
	// blocked still continues the process; the supervisor reads it from its signalfd.
	sigaddset(&set, SIGCONT);
	if (sigprocmask(SIG_BLOCK, &set, nullptr) != 0)
		return -1;
	return open_signalfd(entry, false);
}

int
open_signalfd(const EntrySignals &entry, bool with_cont)
{
	sigset_t set;
	sigemptyset(&set);
	for (int s : entry.forwarded)
		sigaddset(&set, s);
	for (int s : kStopSignals)
		sigaddset(&set, s);
	sigaddset(&set, SIGCHLD);
	if (with_cont)
		sigaddset(&set, SIGCONT);
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

bool
is_stopped(pid_t pid)
{
	return stat_of(pid) == 'T';
}

char
proc_state(pid_t pid)
{
	return stat_of(pid);
}

pid_t
tracer_of(pid_t pid)
{
	std::ifstream in("/proc/" + std::to_string(pid) + "/status");
	std::string line;
	while (std::getline(in, line))
		if (line.starts_with("TracerPid:"))
			return static_cast<pid_t>(std::atol(line.c_str() + 10));
	return 0;
}

bool
become_subreaper()
{
	return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0;
}

int
foreground_tty(pid_t pgrp)
{
	for (int fd = 0; fd <= 2; ++fd)
		if (isatty(fd) && tcgetpgrp(fd) == pgrp)
			return fd;
	return -1;
}

Spawned
spawn_command(char *const argv[], char *const envp[], const EntrySignals &entry, int tty,
			  pid_t job_pgrp)
{
	Spawned out;
	int report[2];
	if (pipe2(report, O_CLOEXEC) != 0)
	{
		diag::printf("%s: cannot create a pipe: %s", g_prog, std::strerror(errno));
		out.exit_status = kExitOsErr;
		return out;
	}
	const pid_t parent = getpid();
	const pid_t pid = fork();
	if (pid < 0)
	{
		diag::printf("%s: cannot fork: %s", g_prog, std::strerror(errno));
		close(report[0]);
		close(report[1]);
		out.exit_status = kExitOsErr;
		return out;
	}
	if (pid == 0)
	{
		// Async-signal-safe calls only from here on (the keeper thread runs in the parent).
		close(report[0]);
		setpgid(0, 0);
		if (tty >= 0)
			(void) tcsetpgrp(tty, getpid()); // SIGTTOU is still blocked here
		// lockext-run killed with SIGKILL takes the command with it. PDEATHSIG is armed
		// only now: if the parent died before, getppid() tells.
		prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
		if (getppid() != parent)
			_exit(kExitSoftware);
		if (!entry.pipe_ignored)
		{
			struct sigaction dfl
			{
			};
			dfl.sa_handler = SIG_DFL;
			sigemptyset(&dfl.sa_mask);
			sigaction(SIGPIPE, &dfl, nullptr);
		}
		// SIGCHLD's handler becomes SIG_DFL at exec; ignored signals stay ignored.
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, nullptr);
		execvpe(argv[0], argv, envp);
		const int err = errno;
		(void) !write(report[1], &err, sizeof err);
		_exit(err == ENOENT ? kExitNotFound : kExitNotExecutable);
	}
	// Both sides set the group and the foreground, so neither order races.
	(void) setpgid(pid, pid);
	if (tty >= 0)
		(void) tcsetpgrp(tty, pid);
	close(report[1]);
	int err = 0;
	ssize_t n;
	do
		n = read(report[0], &err, sizeof err);
	while (n < 0 && errno == EINTR);
	close(report[0]);
	if (n == static_cast<ssize_t>(sizeof err))
	{
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		{
		}
		if (tty >= 0)
			(void) tcsetpgrp(tty, job_pgrp);
		diag::printf("%s: cannot run %s: %s", g_prog, argv[0], std::strerror(err));
		out.exit_status = err == ENOENT ? kExitNotFound : kExitNotExecutable;
		return out;
	}
	out.pid = pid;
	return out;
}

std::vector<pid_t>
descendants()
{
	// /proc/<pid>/task/<tid>/children needs CONFIG_PROC_CHILDREN; without it, scan /proc.
	static const bool have_children_files =
		access(("/proc/self/task/" + std::to_string(getpid()) + "/children").c_str(), R_OK) == 0;
	std::vector<pid_t> all;
	if (have_children_files)
	{
		std::vector<pid_t> todo{getpid()};
		std::set<pid_t> seen;
		while (!todo.empty())
		{
			const pid_t p = todo.back();
			todo.pop_back();
			std::vector<pid_t> kids;
			children_of(p, kids);
			for (pid_t k : kids)
				if (seen.insert(k).second)
				{
					all.push_back(k);
					todo.push_back(k);
				}
		}
	}
	else
		all = descendants_by_scan();
	std::vector<pid_t> live;
	for (pid_t p : all)
		if (alive(p))
			live.push_back(p);
	return live;
}

void
signal_tree(pid_t pgid, int sig)
{
	if (pgid > 0)
		(void) kill(-pgid, sig);
	std::set<pid_t> done;
	for (int round = 0; round < 16; ++round)
	{
		bool fresh = false;
		for (pid_t p : descendants())
			if (done.insert(p).second)
			{
				(void) kill(p, sig);
				fresh = true;
			}
		if (!fresh)
			break;
	}
}

void
kill_tree(pid_t pgid)
{
	if (pgid > 0)
		(void) kill(-pgid, SIGSTOP);
	std::set<pid_t> stopped;
	for (int round = 0; round < 64; ++round)
	{
		bool fresh = false;
		for (pid_t p : descendants())
			if (stopped.insert(p).second)
			{
				(void) kill(p, SIGSTOP);
				fresh = true;
			}
		if (!fresh)
			break;
	}
	if (pgid > 0)
		(void) kill(-pgid, SIGKILL);
	for (pid_t p : descendants())
		(void) kill(p, SIGKILL);
	for (pid_t p : stopped)
		(void) kill(p, SIGKILL);
}

void
reap(pid_t command, bool track_stops, bool &command_done, int &command_status,
	 bool &command_stopped)
{
	for (;;)
	{
		int st = 0;
		const pid_t p = waitpid(-1, &st, WNOHANG | (track_stops ? WUNTRACED : 0));
		if (p < 0 && errno == EINTR)
			continue;
		if (p <= 0)
			return;
		if (p != command)
			continue; // an orphan re-parented to us (subreaper)
		if (WIFSTOPPED(st))
		{
			command_stopped = true;
			continue;
		}
		command_done = true;
		command_status = st;
	}
}

int
status_of(int wstatus)
{
	if (WIFEXITED(wstatus))
		return WEXITSTATUS(wstatus);
	if (WIFSIGNALED(wstatus))
		return 128 + WTERMSIG(wstatus);
	return 1;
}

} // namespace lockext_run
