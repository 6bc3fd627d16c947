/*
 * run_options.cpp
 *     lockext-run's command line: parsing and validation. Everything wrong with the
 *     command line, the DSN's syntax included, is a usage error (64) found before any
 *     connection is made.
 */
#include "run_options.hpp"

#include <libpq-fe.h>

#include <getopt.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>

#ifndef LOCKEXT_VERSION
#define LOCKEXT_VERSION "unknown"
#endif

namespace lockext_run
{

const char *g_prog = "lockext-run";

milliseconds
default_margin(milliseconds ttl)
{
	return milliseconds((ttl.count() + 99) / 100) + milliseconds(100);
}

milliseconds
Options::effective_margin() const
{
	return margin.value_or(default_margin(ttl));
}

milliseconds
Options::term_window() const
{
	return std::min(kill_after, ttl / 3 - effective_margin());
}

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
		"  -K, --kill-after DURATION  when the command must stop, SIGKILL it this long after\n"
		"                             SIGTERM (default 10s; never later than the margin)\n"
		"      --margin DURATION      the command is dead this long before the lease can end\n"
		"                             (default TTL/100 + 100ms)\n"
		"      --hold-at-least DURATION  keep the lease until DURATION after the start even\n"
		"                             if the command ends earlier (cron start skew)\n"
		"      --prepared-statements auto|on|off  named prepared statements (default auto:\n"
		"                             on, off once a pooler is seen to break them)\n"
		"  -v, --verbose              report acquisition, loss and release on stderr\n"
		"  -h, --help                 this text\n"
		"  -V, --version              version\n"
		"DURATION: an integer with a unit ms, s, m (min) or h, e.g. 500ms, 30s, 5m; a bare\n"
		"number other than 0 is refused (flock's -w means seconds, lockext-run 1.0's meant\n"
		"milliseconds).\n"
		"\n"
		"The command's environment gets LOCKEXT_KEY, LOCKEXT_LOCK_ID, LOCKEXT_FENCE and\n"
		"LOCKEXT_TTL_MS. It runs in its own process group; it and everything it starts are\n"
		"stopped if the lease is lost (SIGTERM, then SIGKILL before the lease can end).\n"
		"\n"
		"Exit status: the command's (128+N if it died of signal N); 1 (or -E N) lock held\n"
		"elsewhere or refused in a grace period; 64 usage error (also a malformed DSN, a key\n"
		"or TTL the server rejects); 69 server error (lockext not installed, not preloaded,\n"
		"...); 70 the lease was lost while the command ran (it was stopped); 71 system\n"
		"error; 75 server unreachable or connection failed; 77 authentication failed or\n"
		"permission denied; 126 command not executable; 127 command not found.\n",
		g_prog);
}

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
	if (unit.empty() && value == 0)
		scale = 1;
	else if (unit == "ms")
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

namespace
{

bool
is_bare_number(std::string_view s)
{
	return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
}

/* Parses a duration option's value into out; complains and returns false if invalid. */
bool
set_duration(const char *what, const char *value, long long min_ms, milliseconds &out)
{
	auto d = parse_duration(value);
	if (!d && is_bare_number(value))
	{
		std::fprintf(stderr,
					 "%s: invalid %s '%s': a bare number is ambiguous (flock's -w means "
					 "seconds, lockext-run 1.0's meant milliseconds): give a unit \"ms\", \"s\" "
					 "or \"m\", e.g. %ss or %sms\n",
					 g_prog, what, value, value, value);
		return false;
	}
	if (!d || d->count() < min_ms)
	{
		std::fprintf(stderr,
					 "%s: invalid %s '%s' (expected an integer%s with a unit \"ms\", \"s\", "
					 "\"m\" or \"h\", e.g. 500ms, 30s, 5m)\n",
					 g_prog, what, value, min_ms > 0 ? " > 0" : "");
		return false;
	}
	out = *d;
	return true;
}

/* what: the option or variable the value came from, for the message */
bool
set_prepared_mode(const char *what, const char *value, std::string &out)
{
	const std::string_view v(value);
	if (v != "auto" && v != "on" && v != "off")
	{
		std::fprintf(stderr, "%s: invalid %s '%s' (expected auto, on or off)\n", g_prog, what,
					 value);
		return false;
	}
	out = value;
	return true;
}

enum LongOnly
{
	kOptMargin = 1000,
	kOptHoldAtLeast,
	kOptPrepared,
};

} // namespace

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
		{"margin", required_argument, nullptr, kOptMargin},
		{"hold-at-least", required_argument, nullptr, kOptHoldAtLeast},
		{"prepared-statements", required_argument, nullptr, kOptPrepared},
		{"verbose", no_argument, nullptr, 'v'},
		{"help", no_argument, nullptr, 'h'},
		{"version", no_argument, nullptr, 'V'},
		{nullptr, 0, nullptr, 0},
	};
	if (const char *env = std::getenv("LOCKEXT_PREPARED_STATEMENTS"); env != nullptr && *env)
	{
		if (!set_prepared_mode("LOCKEXT_PREPARED_STATEMENTS", env, o.prepared_statements))
			return kExitUsage;
	}
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
			case kOptMargin:
			{
				milliseconds m{0};
				if (!set_duration("--margin", optarg, 0, m))
					return kExitUsage;
				o.margin = m;
				break;
			}
			case kOptHoldAtLeast:
				if (!set_duration("--hold-at-least", optarg, 0, o.hold_at_least))
					return kExitUsage;
				break;
			case kOptPrepared:
				if (!set_prepared_mode("--prepared-statements", optarg, o.prepared_statements))
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
				else if (optopt != 0 && optopt < 256)
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
	// The margins must leave the lease room to be renewed: SIGKILL at margin before its
	// end, SIGTERM at most ttl/3 before that, renewals every ttl/3.
	const auto margin = o.effective_margin();
	if (margin * 4 > o.ttl)
	{
		std::fprintf(stderr,
					 "%s: --ttl %lldms is too short for a safety margin of %lld ms (%s): the TTL "
					 "must be at least 4 times the margin; use a longer --ttl%s\n",
					 g_prog, static_cast<long long>(o.ttl.count()),
					 static_cast<long long>(margin.count()),
					 o.margin ? "--margin" : "the default, TTL/100 + 100 ms",
					 o.margin ? " or a smaller --margin" : " (at least 417ms) or set --margin");
		return kExitUsage;
	}
	// A malformed conninfo is a usage error, found here rather than as a failed connect.
	if (!o.dsn.empty())
	{
		char *err = nullptr;
		PQconninfoOption *parsed = PQconninfoParse(o.dsn.c_str(), &err);
		if (parsed == nullptr)
		{
			std::string why = err != nullptr ? err : "out of memory";
			while (!why.empty() && (why.back() == '\n' || why.back() == ' '))
				why.pop_back();
			std::fprintf(stderr, "%s: invalid --dsn: %s\n", g_prog, why.c_str());
			PQfreemem(err);
			return kExitUsage;
		}
		PQconninfoFree(parsed);
	}
	for (int i = optind; i < argc; ++i)
		o.command.push_back(argv[i]);
	o.command.push_back(nullptr);
	return std::nullopt;
}

} // namespace lockext_run
