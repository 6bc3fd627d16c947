/*
 * run_options.hpp
 *     lockext-run's command line: options, durations, validation (see usage()).
 */
#ifndef LOCKEXT_RUN_OPTIONS_HPP
#define LOCKEXT_RUN_OPTIONS_HPP

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lockext_run
{

using std::chrono::milliseconds;

/* Exit statuses (sysexits.h values where one fits). */
constexpr int kExitConflictDefault = 1;
constexpr int kExitUsage = 64;       // EX_USAGE: bad option or value (also rejected by server)
constexpr int kExitUnavailable = 69; // EX_UNAVAILABLE: server error (lockext missing, ...)
constexpr int kExitSoftware = 70;    // EX_SOFTWARE: the lease was lost while the command ran
constexpr int kExitOsErr = 71;       // EX_OSERR: fork, pipe, signalfd failed
constexpr int kExitTempFail = 75;    // EX_TEMPFAIL: server unreachable, connection failed
constexpr int kExitNoPerm = 77;      // EX_NOPERM: authentication failed, permission denied
constexpr int kExitNotExecutable = 126;
constexpr int kExitNotFound = 127;

extern const char *g_prog;

struct Options
{
	std::string dsn;
	std::string key;
	milliseconds ttl{30000};
	milliseconds wait{0};
	milliseconds kill_after{10000};
	/* Safety margin before the end of the lease as the client knows it; default
	 * default_margin(ttl). */
	std::optional<milliseconds> margin;
	milliseconds hold_at_least{0};
	/* "auto", "on" or "off" (--prepared-statements / LOCKEXT_PREPARED_STATEMENTS). */
	std::string prepared_statements;
	int conflict_exit = kExitConflictDefault;
	bool quiet = false;
	bool verbose = false;
	std::vector<char *> command; // argv of the command, nullptr-terminated

	/* The margin in effect. */
	[[nodiscard]] milliseconds effective_margin() const;
	/* How long before the SIGKILL point the SIGTERM goes out when renewals fail:
	 * min(--kill-after, ttl/3 - margin). */
	[[nodiscard]] milliseconds term_window() const;
};

/* Default safety margin: 1% of the TTL (clock-rate drift between hosts) + 100 ms
 * (scheduling, signal delivery, the process's exit), rounded up to a millisecond. */
[[nodiscard]] milliseconds default_margin(milliseconds ttl);

/* "500ms", "30s", "5m", "1h"; a bare "0" is 0; any other bare number is refused. */
[[nodiscard]] std::optional<milliseconds> parse_duration(std::string_view text);

void usage(FILE *out);

/* Parses argv into o; returns an exit status to stop with, or nullopt to go on. */
[[nodiscard]] std::optional<int> parse_args(int argc, char **argv, Options &o);

} // namespace lockext_run

#endif
