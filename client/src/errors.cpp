/*
 * errors.cpp
 *     FailureKind names, Failure::retryable, BootClock, and the classification of
 *     SQLSTATEs (see errors_internal.hpp).
 */
#include <lockext/boot_clock.hpp>
#include <lockext/errors.hpp>

#include <time.h>

#include "errors_internal.hpp"

namespace lockext
{

std::string_view
to_string(FailureKind kind) noexcept
{
	switch (kind)
	{
		case FailureKind::BadInput:
			return "bad_input";
		case FailureKind::LockLost:
			return "lock_lost";
		case FailureKind::Unreachable:
			return "unreachable";
		case FailureKind::AuthFailed:
			return "auth_failed";
		case FailureKind::Config:
			return "config";
		case FailureKind::Capacity:
			return "capacity";
		case FailureKind::Timeout:
			return "timeout";
		case FailureKind::ConnectionLost:
			return "connection_lost";
		case FailureKind::Server:
			return "server";
		case FailureKind::Protocol:
			return "protocol";
		case FailureKind::Unknown:
			return "unknown";
	}
	return "unknown";
}

bool
Failure::retryable() const noexcept
{
	return kind == FailureKind::Unreachable || kind == FailureKind::Timeout ||
		   kind == FailureKind::ConnectionLost || kind == FailureKind::Capacity;
}

BootClock::time_point
BootClock::now() noexcept
{
	timespec ts{};
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
}

BootClock::time_point
BootClock::from_steady(std::chrono::steady_clock::time_point t) noexcept
{
	const auto boot = now();
	const auto steady = std::chrono::steady_clock::now();
	return boot - std::chrono::duration_cast<duration>(steady - t);
}

namespace detail
{

namespace
{

bool
is_class(std::string_view state, std::string_view cls) noexcept
{
	return state.size() == 5 && state.starts_with(cls);
}

} // namespace

FailureKind
classify_statement_sqlstate(std::string_view s) noexcept
{
	if (s.empty() || is_class(s, "08") || s == "57P01" || s == "57P02" || s == "57P03")
		return FailureKind::ConnectionLost;
	if (is_class(s, "22"))
		return FailureKind::BadInput;
	if (is_class(s, "28"))
		return FailureKind::AuthFailed;
	if (is_class(s, "53"))
		return FailureKind::Capacity;
	if (s == "57014")
		return FailureKind::Timeout;
	/* 25006 (read-only transaction: a standby, or a primary demoted by a failover) is
	 * about this server, not about the call: retryable, and the next call connects anew
	 * (the connection and the pool's idle ones are dropped) and so may reach another
	 * host. */
	if (s == "25006")
		return FailureKind::Unreachable;
	if (s == "42883" || s == "3F000" || s == "42P01" || s == "55000" || s == "42501" ||
		s == "42P05" || s == "26000" || s == "3D000")
		return FailureKind::Config;
	return FailureKind::Server;
}

FailureKind
classify_connect_sqlstate(std::string_view s) noexcept
{
	if (s.empty() || is_class(s, "08") || s == "57P01" || s == "57P02" || s == "57P03")
		return FailureKind::Unreachable;
	if (is_class(s, "28"))
		return FailureKind::AuthFailed;
	if (is_class(s, "53"))
		return FailureKind::Capacity;
	if (s == "3D000" || s == "42501")
		return FailureKind::Config;
	return classify_statement_sqlstate(s);
}

bool
poisons_connection(std::string_view s) noexcept
{
	return classify_statement_sqlstate(s) == FailureKind::ConnectionLost;
}

bool
is_read_only_sqlstate(std::string_view s) noexcept
{
	return s == "25006";
}

bool
is_pooler_statement_sqlstate(std::string_view s) noexcept
{
	return s == "42P05" || s == "26000";
}

std::string
sqlstate_of_verbose_message(std::string_view text)
{
	/*
	 * libpq gives a failed connection attempt only as text (PQerrorMessage; there is no
	 * PGresult to read PG_DIAG_SQLSTATE from), so the SQLSTATE is recovered from the
	 * verbose form "<SEVERITY>:  <SQLSTATE>: <message>". The severity word is localized
	 * by the server's lc_messages ("FATAL", "ВАЖНО", "致命错误", ...), so it is not
	 * matched: the first ":  " (two spaces) followed by five of [0-9A-Z] and ": " is.
	 */
	auto is_code_char = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z'); };
	for (std::size_t at = text.find(":  "); at != std::string_view::npos;
		 at = text.find(":  ", at + 1))
	{
		const auto code = text.substr(at + 3);
		if (code.size() < 7 || code[5] != ':' || code[6] != ' ')
			continue;
		bool ok = true;
		for (std::size_t i = 0; i < 5; ++i)
			ok = ok && is_code_char(code[i]);
		if (ok)
			return std::string(code.substr(0, 5));
	}
	return {};
}

ConnectClass
classify_connect_failure(std::string_view text, bool needs_password)
{
	ConnectClass out;
	out.sqlstate = sqlstate_of_verbose_message(text);
	if (!out.sqlstate.empty())
	{
		out.kind = classify_connect_sqlstate(out.sqlstate);
		return out;
	}
	/* libpq-side refusals (no SQLSTATE; these texts are libpq's own, English unless
	 * libpq itself was built with NLS and a non-English locale is active; the password
	 * case is detected through PQconnectionNeedsPassword() regardless). */
	if (needs_password || text.find("fe_sendauth: no password supplied") != std::string_view::npos)
		out.kind = FailureKind::AuthFailed;
	else if (text.find("server does not support SSL, but SSL was required") !=
				 std::string_view::npos ||
			 text.find("server doesn't support GSSAPI encryption, but it was required") !=
				 std::string_view::npos ||
			 text.find("GSSAPI encryption required but was impossible") != std::string_view::npos)
		out.kind = FailureKind::Config;
	else
		out.kind = FailureKind::Unreachable;
	return out;
}

Failure
make_failure(FailureKind kind, std::string message, std::string sqlstate, bool outcome_unknown)
{
	return Failure{kind, std::move(sqlstate), outcome_unknown, std::move(message)};
}

} // namespace detail

} // namespace lockext
