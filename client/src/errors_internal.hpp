/*
 * errors_internal.hpp (internal)
 *     The one place where failures are classified (spec §9): SQLSTATE -> FailureKind,
 *     for statements and for connection attempts, and the Failure builders the backends
 *     use. Nothing else in the library looks at SQLSTATEs or message text to decide.
 */
#ifndef LOCKEXT_CLIENT_ERRORS_INTERNAL_HPP
#define LOCKEXT_CLIENT_ERRORS_INTERNAL_HPP

#include <string>
#include <string_view>

#include <lockext/errors.hpp>

namespace lockext::detail
{

/* The kind of a server error reply to one of our statements. */
[[nodiscard]] FailureKind classify_statement_sqlstate(std::string_view sqlstate) noexcept;

/* The kind of a failed connection attempt ("" = no SQLSTATE: refused, DNS, ...). */
[[nodiscard]] FailureKind classify_connect_sqlstate(std::string_view sqlstate) noexcept;

/* SQLSTATEs after which a connection must not be reused ("" included: libpq-side). */
[[nodiscard]] bool poisons_connection(std::string_view sqlstate) noexcept;

/* A server in read-only mode (25006): drop the connection so failover can move on. */
[[nodiscard]] bool is_read_only_sqlstate(std::string_view sqlstate) noexcept;

/* 42P05 / 26000: named statements cannot work (a transaction pooler in between). */
[[nodiscard]] bool is_pooler_statement_sqlstate(std::string_view sqlstate) noexcept;

/* The SQLSTATE in a libpq error text made with PQERRORS_VERBOSE
 * ("FATAL:  28P01: password ...", or with a localized severity such as
 * "ВАЖНО:  28P01: ..."), or "" when there is none. */
[[nodiscard]] std::string sqlstate_of_verbose_message(std::string_view text);

/* The classification of a failed connection attempt from libpq's error text (made with
 * PQERRORS_VERBOSE) and PQconnectionNeedsPassword(): the SQLSTATE when the server sent
 * one (any severity word, localized or not), else AuthFailed for "no password
 * supplied", Config for an SSL/GSS encryption requirement the server cannot meet, and
 * Unreachable for the rest (refused, DNS, timeout, ...). */
struct ConnectClass
{
	FailureKind kind = FailureKind::Unreachable;
	std::string sqlstate;
};
[[nodiscard]] ConnectClass classify_connect_failure(std::string_view text, bool needs_password);

/* A Failure; message is the full public error string. */
[[nodiscard]] Failure make_failure(FailureKind kind, std::string message, std::string sqlstate = {},
								   bool outcome_unknown = false);

} // namespace lockext::detail

#endif
