/*
 * lockext/errors.hpp
 *     The classification of the client library's failures (spec §9): every error the
 *     library reports is classified once, where it happens (src/errors.cpp), into a
 *     FailureKind, the server's SQLSTATE if there was one, and whether the request may
 *     have taken effect. Callers (LeaseKeeper, lockext-run, applications) decide on
 *     Failure::kind, never on the text of a message.
 *
 * The error strings of Result<T> stay the public contract: Failure::message is exactly
 * the string the Result<T> variant of the same call returns.
 *
 * Thread safety: plain values; to_string is reentrant.
 */
#ifndef LOCKEXT_ERRORS_HPP
#define LOCKEXT_ERRORS_HPP

#include <version>
#if !defined(__cpp_lib_expected) || __cpp_lib_expected < 202202L
#error                                                                                             \
	"lockext client needs C++23 std::expected: compile with -std=c++23 or newer (pkg-config --cflags lockext-client leaves the standard to you; the CMake target lockext::client requires it)"
#endif

#include <expected>
#include <string>
#include <string_view>

#ifndef LOCKEXT_CLIENT_API
/* Marks the library's exported classes (it is built with -fvisibility=hidden). */
#define LOCKEXT_CLIENT_API __attribute__((visibility("default")))
#endif

namespace lockext
{

enum class FailureKind
{
	/* argument rejected (client-side check, or server 22xxx) */
	BadInput,
	/* renew: the lease is no longer held under this lock_id */
	LockLost,
	/* could not connect (refused, DNS, timeout, server starting/shutting down), or the
	 * server is read-only (25006: a standby, or a primary demoted by a failover; the
	 * connection is dropped so that the next call connects anew): retry later */
	Unreachable,
	/* 28xxx at connect (wrong password, no pg_hba.conf entry, no such role), or a
	 * password needed but none supplied */
	AuthFailed,
	/* malformed conninfo, no such database (3D000), extension missing (42883/3F000/42P01/
	 * 55000), 42501, 42P05/26000 pooler trouble not recovered, SSL/GSS encryption
	 * required but not offered by the server */
	Config,
	/* 53xxx (53400 table full, 53300 too many connections) */
	Capacity,
	/* client-side deadline passed (call_timeout, statement_timeout, acquire_timeout), or
	 * 57014 */
	Timeout,
	/* the connection broke mid-call */
	ConnectionLost,
	/* any other server error */
	Server,
	/* unexpected reply shape */
	Protocol,
	/* from a third-party plugin that only gave a string */
	Unknown,
};

/* "bad_input", "lock_lost", "unreachable", ... (snake_case, stable: for logs and metrics). */
[[nodiscard]] LOCKEXT_CLIENT_API std::string_view to_string(FailureKind kind) noexcept;

struct Failure
{
	FailureKind kind = FailureKind::Unknown;
	std::string sqlstate;         // "" when none
	bool outcome_unknown = false; // the request may have taken effect (reply lost)
	std::string message;          // exactly the public error string Result<T> carries

	/* Worth retrying later: Unreachable, Timeout, ConnectionLost, Capacity. */
	[[nodiscard]] LOCKEXT_CLIENT_API bool retryable() const noexcept;
};

template <class T> using Outcome = std::expected<T, Failure>;

} // namespace lockext

#endif
