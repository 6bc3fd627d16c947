/*
 * lockext_run.cpp
 *     lockext-run: run a command under a lockext lease, in the spirit of flock(1).
 *
 *     lockext-run [options] -k KEY [--] COMMAND [ARGS...]
 *
 * Takes the lease (waiting up to --wait with jittered exponential backoff), forks and
 * execs the command with LOCKEXT_KEY, LOCKEXT_LOCK_ID, LOCKEXT_FENCE and LOCKEXT_TTL_MS in
 * its environment, renews the lease with a LeaseKeeper while it runs, stops it (SIGTERM,
 * SIGKILL after --kill-after) if the lease is lost, forwards SIGINT/SIGTERM/SIGHUP/
 * SIGQUIT/SIGUSR1/SIGUSR2 to it, and releases the lease when it ends. Exit statuses:
 * see usage() and client/README.md.
 *
 * Signals: the forwarded signals and SIGCHLD are blocked in every thread (they are
 * blocked before the keeper thread starts, which inherits the mask) and read from a
 * signalfd by the main thread; the child gets an empty mask and default dispositions
 * before exec. The keeper's on_lost callback wakes the main thread through a pipe.
 * Every descriptor this program opens is close-on-exec (libpq sets FD_CLOEXEC on its
 * sockets), so the command inherits only what lockext-run itself inherited.
 */
#include <lockext/lease_keeper.hpp>
#include <lockext/pg_locking_plugin.hpp>

#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#ifndef LOCKEXT_VERSION
#define LOCKEXT_VERSION "unknown"
#endif

extern char **environ;

namespace
{

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

/* Exit statuses (sysexits.h values where one fits). */
constexpr int kExitConflictDefault = 1;
constexpr int kExitUsage = 64;       // EX_USAGE: bad option or value (also rejected by server)
constexpr int kExitUnavailable = 69; // EX_UNAVAILABLE: server error (lockext missing, rights)
constexpr int kExitSoftware = 70;    // EX_SOFTWARE: the lease was lost while the command ran
constexpr int kExitOsErr = 71;       // EX_OSERR: fork, pipe, signalfd failed
constexpr int kExitTempFail = 75;    // EX_TEMPFAIL: server unreachable, connection failed
constexpr int kExitNotExecutable = 126;
constexpr int kExitNotFound = 127;

const char *g_prog = "lockext-run";

struct Options
{
	std::string dsn;
	std::string key;
	milliseconds ttl{30000};
	milliseconds wait{0};
	milliseconds kill_after{10000};
	int conflict_exit = kExitConflictDefault;
	bool quiet = false;
	bool verbose = false;
	std::vector<char *> command;
};

void
usage(FILE *out)
{
	std::fprintf(
		out,
		"Usage: %s [options] -k KEY [--] COMMAND [ARGS...]\n"
		"Run COMMAND while holding the lockext lease KEY (renewed in the background).\n"
		"\n"
		"Options:\n"
		"  -k, --key KEY              lock key (required)\n"
		"  -d, --dsn CONNINFO         libpq connection string (default: empty, i.e. the\n"
		"                             PGHOST, PGDATABASE, ... environment)\n"
		"  -t, --ttl DURATION         lease TTL (default 30s), renewed every TTL/3\n"
		"  -w, --wait DURATION        wait up to DURATION for the lock (default 0: do not wait)\n"
		"  -n, --nonblock             do not wait (same as --wait 0)\n"
		"  -E, --conflict-exit-code N exit status when the lock is held elsewhere (default 1)\n"
		"  -q, --quiet                print nothing when the lock is held elsewhere\n"
		"  -K, --kill-after DURATION  after a lost lease, SIGKILL the command this long after\n"
		"                             SIGTERM (default 10s)\n"
		"  -v, --verbose              report acquisition, loss and release on stderr\n"
		"  -h, --help                 this text\n"
		"  -V, --version              version\n"
		"DURATION: an integer with a unit ms, s, m or h; a bare number is milliseconds.\n"
		"\n"
		"The command's environment gets LOCKEXT_KEY, LOCKEXT_LOCK_ID, LOCKEXT_FENCE and\n"
		"LOCKEXT_TTL_MS.\n"
		"\n"
		"Exit status: the command's (128+N if it died of signal N); 1 (or -E N) lock held\n"
		"elsewhere; 64 usage error (also a key or TTL the server rejects); 69 server error\n"
		"(lockext not installed, permission, ...); 70 the lease was lost while the command\n"
		"ran (it was sent SIGTERM); 71 system error; 75 server unreachable or connection\n"
		"failed; 126 command not executable; 127 command not found.\n",
		g_prog);
}

void
complain(const char *fmt, const std::string &what)
{
	std::fprintf(stderr, "%s: ", g_prog);
	std::fprintf(stderr, fmt, what.c_str());
	std::fputc('\n', stderr);
}

/* "500ms", "30s", "5m", "1h" or a bare number of milliseconds. */
std::optional<milliseconds>
parse_duration(std::string_view text)
{
	long long value = 0;
	const char *end = text.data() + text.size();
	auto [p, ec] = std::from_chars(text.data(), end, value);
	if (ec != std::errc() || p == text.data() || value < 0)
		return std::nullopt;
	const std::string_view unit(p, static_cast<std::size_t>(end - p));
	long long scale = 0;
	if (unit.empty() || unit == "ms")
		scale = 1;
	else if (unit == "s")
		scale = 1000;
	else if (unit == "m" || unit == "min")
		scale = 60 * 1000;
	else if (unit == "h")
		scale = 3600 * 1000;
	else
		return std::nullopt;
	constexpr long long kMax = 1LL << 40; // ~35 years
	if (value > kMax / scale)
		return std::nullopt;
	return milliseconds(value * scale);
}

/* Parses a duration option's value into out; complains and returns false if invalid. */
bool
set_duration(const char *what, const char *value, long long min_ms, milliseconds &out)
{
	auto d = parse_duration(value);
	if (!d || d->count() < min_ms)
	{
		std::fprintf(stderr,
					 "%s: invalid %s '%s' (expected an integer%s with a unit ms, s, m or h, "
					 "e.g. 500ms, 30s, 5m; a bare number is milliseconds)\n",
					 g_prog, what, value, min_ms > 0 ? " > 0" : "");
		return false;
	}
	out = *d;
	return true;
}

/* Parses argv into options; returns an exit status to stop with, or nullopt to go on. */
std::optional<int>
parse_args(int argc, char **argv, Options &o)
{
	static const option longs[] = {
		{"key", required_argument, nullptr, 'k'},
		{"dsn", required_argument, nullptr, 'd'},
		{"ttl", required_argument, nullptr, 't'},
		{"wait", required_argument, nullptr, 'w'},
		{"timeout", required_argument, nullptr, 'w'},
		{"nonblock", no_argument, nullptr, 'n'},
		{"conflict-exit-code", required_argument, nullptr, 'E'},
		{"quiet", no_argument, nullptr, 'q'},
		{"kill-after", required_argument, nullptr, 'K'},
		{"verbose", no_argument, nullptr, 'v'},
		{"help", no_argument, nullptr, 'h'},
		{"version", no_argument, nullptr, 'V'},
		{nullptr, 0, nullptr, 0},
	};
	opterr = 0;
	int c;
	// '+': stop at the first non-option, so the command's own options stay its own.
	while ((c = getopt_long(argc, argv, "+k:d:t:w:nE:qK:vhV", longs, nullptr)) != -1)
	{
		switch (c)
		{
			case 'k':
				o.key = optarg;
				break;
			case 'd':
				o.dsn = optarg;
				break;
			case 't':
				if (!set_duration("--ttl", optarg, 1, o.ttl))
					return kExitUsage;
				break;
			case 'w':
				if (!set_duration("--wait", optarg, 0, o.wait))
					return kExitUsage;
				break;
			case 'n':
				o.wait = milliseconds(0);
				break;
			case 'K':
				if (!set_duration("--kill-after", optarg, 0, o.kill_after))
					return kExitUsage;
				break;
			case 'E':
			{
				int v = -1;
				const std::string_view s(optarg);
				auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
				if (ec != std::errc() || p != s.data() + s.size() || v < 0 || v > 255)
				{
					std::fprintf(stderr,
								 "%s: invalid --conflict-exit-code '%s' (expected 0..255)\n",
								 g_prog, optarg);
					return kExitUsage;
				}
				o.conflict_exit = v;
				break;
			}
			case 'q':
				o.quiet = true;
				break;
			case 'v':
				o.verbose = true;
				break;
			case 'h':
				usage(stdout);
				return 0;
			case 'V':
				std::printf("lockext-run (lockext client) %s\n", LOCKEXT_VERSION);
				return 0;
			default:
				if (optopt != 0 && std::strchr("kdtwEK", optopt) != nullptr)
					std::fprintf(stderr, "%s: option -%c needs a value\n", g_prog, optopt);
				else if (optopt != 0)
					std::fprintf(stderr, "%s: unknown option -%c\n", g_prog, optopt);
				else
					std::fprintf(stderr, "%s: unknown option or missing value: %s\n", g_prog,
								 argv[optind - 1]);
				std::fprintf(stderr, "Try '%s --help'.\n", g_prog);
				return kExitUsage;
		}
	}
	if (o.key.empty())
	{
		std::fprintf(stderr, "%s: a non-empty lock key is required (-k KEY)\nTry '%s --help'.\n",
					 g_prog, g_prog);
		return kExitUsage;
	}
	if (optind >= argc)
	{
		std::fprintf(stderr, "%s: no command given\nTry '%s --help'.\n", g_prog, g_prog);
		return kExitUsage;
	}
	for (int i = optind; i < argc; ++i)
		o.command.push_back(argv[i]);
	o.command.push_back(nullptr);
	return std::nullopt;
}

/* Exit status for a try_lock error ("try_lock failed: <reason>"). */
int
classify_error(const std::string &error)
{
	std::string_view reason(error);
	if (auto colon = reason.find("failed: "); colon != std::string_view::npos)
		reason.remove_prefix(colon + 8);
	if (reason.starts_with("["))
	{
		// Server errors: bad input → usage; connection class, shutdown, standby,
		// capacity → temporary; anything else (extension missing, permission, not
		// preloaded) → unavailable.
		if (reason.starts_with("[22"))
			return kExitUsage;
		if (reason.starts_with("[08") || reason.starts_with("[57P") ||
			reason.starts_with("[25006]") || reason.starts_with("[53"))
			return kExitTempFail;
		return kExitUnavailable;
	}
	if (reason.starts_with("lock key") || reason.starts_with("ttl_ms"))
		return kExitUsage;
	if (reason.starts_with("unexpected reply"))
		return kExitUnavailable;
	return kExitTempFail; // could not connect, connection failed, outcome unknown, pool
}

/* The signals lockext-run forwards to the command. */
constexpr int kForwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

void
noop_handler(int)
{
}

/* Blocks the forwarded signals and SIGCHLD and returns a signalfd for them. */
int
make_signalfd(sigset_t &set)
{
	sigemptyset(&set);
	for (int s : kForwarded)
		sigaddset(&set, s);
	sigaddset(&set, SIGCHLD);
	// A handler (never run: the signal stays blocked) makes sure SIGCHLD is queued
	// for the signalfd whatever disposition we inherited.
	struct sigaction sa
	{
	};
	sa.sa_handler = noop_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_NOCLDSTOP;
	sigaction(SIGCHLD, &sa, nullptr);
	if (sigprocmask(SIG_BLOCK, &set, nullptr) != 0)
		return -1;
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

/* Reads pending signals; returns the last forwardable one (0 if none). SIGCHLD only
 * wakes the caller, which then calls waitpid. */
int
drain_signals(int sfd)
{
	int last = 0;
	signalfd_siginfo info;
	while (read(sfd, &info, sizeof info) == static_cast<ssize_t>(sizeof info))
		if (info.ssi_signo != SIGCHLD)
			last = static_cast<int>(info.ssi_signo);
	return last;
}

/* poll() on fds for at most timeout (rounded up to whole ms, capped). */
void
wait_for(std::vector<pollfd> &fds, Clock::duration timeout)
{
	auto ms = std::chrono::ceil<milliseconds>(std::max(timeout, Clock::duration::zero()));
	const int t = static_cast<int>(std::min<long long>(ms.count(), 1000));
	for (auto &f : fds)
		f.revents = 0;
	(void) poll(fds.data(), fds.size(), t);
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

/* Forks and execs the command; returns its pid, or a negative exit status. Reports
 * exec failures through a close-on-exec pipe. Only async-signal-safe calls in the child
 * (the keeper thread runs in the parent). */
pid_t
spawn(const Options &o, const lockext::LockHandle &h, int &exit_status)
{
	std::vector<std::string> env = child_environment(h);
	std::vector<char *> envp;
	for (auto &e : env)
		envp.push_back(e.data());
	envp.push_back(nullptr);

	int report[2];
	if (pipe2(report, O_CLOEXEC) != 0)
	{
		complain("cannot create a pipe: %s", std::strerror(errno));
		exit_status = kExitOsErr;
		return -1;
	}
	const pid_t pid = fork();
	if (pid < 0)
	{
		complain("cannot fork: %s", std::strerror(errno));
		close(report[0]);
		close(report[1]);
		exit_status = kExitOsErr;
		return -1;
	}
	if (pid == 0)
	{
		close(report[0]);
		struct sigaction dfl
		{
		};
		dfl.sa_handler = SIG_DFL;
		sigemptyset(&dfl.sa_mask);
		for (int s : kForwarded)
			sigaction(s, &dfl, nullptr);
		sigaction(SIGCHLD, &dfl, nullptr);
		sigaction(SIGPIPE, &dfl, nullptr);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, nullptr);
		execvpe(o.command[0], o.command.data(), envp.data());
		const int err = errno;
		(void) !write(report[1], &err, sizeof err);
		_exit(err == ENOENT ? kExitNotFound : kExitNotExecutable);
	}
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
		std::fprintf(stderr, "%s: cannot run %s: %s\n", g_prog, o.command[0], std::strerror(err));
		exit_status = err == ENOENT ? kExitNotFound : kExitNotExecutable;
		return -1;
	}
	return pid;
}

/* Takes the lease, retrying with jittered exponential backoff until o.wait has passed.
 * Returns the handle, or sets exit_status. before = steady time before the granting
 * try_lock. A signal in the wait ends it with 128+signal. */
std::optional<lockext::LockHandle>
acquire(lockext::PgLockingPlugin &locks, const Options &o, int sfd, Clock::time_point &before,
		int &exit_status)
{
	const auto give_up = Clock::now() + o.wait;
	std::mt19937_64 rng{std::random_device{}()};
	milliseconds backoff{50};
	std::vector<pollfd> fds{{sfd, POLLIN, 0}};
	for (;;)
	{
		before = Clock::now();
		auto r = locks.try_lock(o.key, static_cast<std::uint64_t>(o.ttl.count()));
		if (!r)
		{
			complain("%s", r.error());
			exit_status = classify_error(r.error());
			return std::nullopt;
		}
		if (r->has_value())
		{
			if (int sig = drain_signals(sfd); sig != 0)
			{
				(void) locks.release(**r);
				exit_status = 128 + sig;
				return std::nullopt;
			}
			return **r;
		}
		const auto now = Clock::now();
		if (now >= give_up)
		{
			if (!o.quiet)
				complain(o.wait.count() > 0 ? "lock '%s' is held by someone else (gave up waiting)"
											: "lock '%s' is held by someone else",
						 o.key);
			exit_status = o.conflict_exit;
			return std::nullopt;
		}
		// Sleep a random time in [backoff/2, backoff], never past the end of the wait.
		std::uniform_int_distribution<long long> jitter(backoff.count() / 2, backoff.count());
		auto nap = std::min<Clock::duration>(milliseconds(jitter(rng)), give_up - now);
		const auto wake = now + nap;
		while (Clock::now() < wake)
		{
			wait_for(fds, wake - Clock::now());
			if (int sig = drain_signals(sfd); sig != 0)
			{
				exit_status = 128 + sig;
				return std::nullopt;
			}
		}
		backoff = std::min(backoff * 2, milliseconds(1500));
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

int
run(const Options &o)
{
	sigset_t set;
	const int sfd = make_signalfd(set);
	int lost_pipe[2];
	if (sfd < 0 || pipe2(lost_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
	{
		complain("cannot set up signal handling: %s", std::strerror(errno));
		return kExitOsErr;
	}

	lockext::PgOptions popts;
	popts.pool_size = 2;
	// A renew must not block much longer than the time between renewals.
	popts.statement_timeout = std::clamp(std::chrono::duration_cast<milliseconds>(o.ttl / 3),
										 milliseconds(250), milliseconds(5000));
	lockext::PgLockingPlugin locks(o.dsn, popts);

	int exit_status = 0;
	Clock::time_point before;
	auto handle = acquire(locks, o, sfd, before, exit_status);
	if (!handle)
		return exit_status;
	if (o.verbose)
		std::fprintf(stderr, "%s: acquired '%s' (fence %lld, ttl %lld ms)\n", g_prog,
					 handle->key.c_str(), static_cast<long long>(handle->fence),
					 static_cast<long long>(handle->ttl_ms));

	// The keeper thread inherits the blocked signal mask set above.
	lockext::LeaseKeeper keeper(
		locks, *handle,
		[fd = lost_pipe[1]](const std::string &)
		{
			const char byte = 1;
			(void) !write(fd, &byte, 1);
		},
		{}, before);

	const pid_t child = spawn(o, *handle, exit_status);
	if (child < 0)
	{
		if (auto r = keeper.release(); !r)
			complain("warning: %s (the lease expires after its TTL)", r.error());
		return exit_status;
	}

	std::vector<pollfd> fds{{sfd, POLLIN, 0}, {lost_pipe[0], POLLIN, 0}};
	bool lost = false;
	bool kill_pending = false; // SIGTERM sent after loss, SIGKILL due at kill_at
	Clock::time_point kill_at{};
	int wstatus = 0;
	for (;;)
	{
		const pid_t done = waitpid(child, &wstatus, WNOHANG);
		if (done == child)
			break;
		if (done < 0 && errno != EINTR)
		{
			complain("waitpid failed: %s", std::strerror(errno));
			wstatus = 0;
			exit_status = kExitOsErr;
			break;
		}
		if (!lost && keeper.lost())
		{
			lost = true;
			const auto why =
				keeper.lost_reason().value_or("no successful renew within the lease's ttl (" +
											  std::to_string(handle->ttl_ms) + " ms)");
			std::fprintf(stderr, "%s: lease '%s' lost: %s; stopping the command (SIGTERM)\n",
						 g_prog, handle->key.c_str(), why.c_str());
			kill(child, SIGTERM);
			kill_at = Clock::now() + o.kill_after;
			kill_pending = true;
		}
		if (kill_pending && Clock::now() >= kill_at)
		{
			std::fprintf(stderr, "%s: the command did not stop within %lld ms: SIGKILL\n", g_prog,
						 static_cast<long long>(o.kill_after.count()));
			kill(child, SIGKILL);
			kill_pending = false;
		}
		auto timeout = lost ? Clock::duration(milliseconds(1000))
							: keeper.valid_until() - Clock::now() + milliseconds(1);
		if (kill_pending)
			timeout = std::min(timeout, kill_at - Clock::now());
		wait_for(fds, timeout);
		if (fds[0].revents & POLLIN)
			if (int sig = drain_signals(sfd); sig != 0)
				kill(child, sig);
		if (fds[1].revents & POLLIN)
		{
			char buf[16];
			while (read(lost_pipe[0], buf, sizeof buf) > 0)
			{
			}
		}
	}

	if (auto r = keeper.release(); !r)
		complain("warning: %s (the lease expires after its TTL)", r.error());
	else if (o.verbose && !lost)
		std::fprintf(stderr, "%s: released '%s'\n", g_prog, handle->key.c_str());
	if (exit_status != 0)
		return exit_status;
	const int command_status = status_of(wstatus);
	if (lost)
	{
		std::fprintf(stderr, "%s: the command ended with status %d after the lease was lost\n",
					 g_prog, command_status);
		return kExitSoftware;
	}
	return command_status;
}

} // namespace

int
main(int argc, char **argv)
{
	Options o;
	if (auto stop = parse_args(argc, argv, o))
		return *stop;
	return run(o);
}
