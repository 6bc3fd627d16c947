/*
 * validate.hpp (internal)
 *     Local argument checks and failure builders shared by the backends, so that both
 *     report bad input and lost locks with the same words and the same FailureKind.
 */
#ifndef LOCKEXT_CLIENT_VALIDATE_HPP
#define LOCKEXT_CLIENT_VALIDATE_HPP

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <lockext/errors.hpp>
#include <lockext/locking_plugin.hpp>

namespace lockext::detail
{

/* "<op> failed: <what>" */
[[nodiscard]] std::string failure(std::string_view op, std::string_view what);

/* The FailureKind::LockLost failure renew() returns when the lease is no longer held
 * under handle.lock_id. */
[[nodiscard]] Failure lock_lost(std::string_view key);

/* Key must be non-empty and, when max_len > 0, at most max_len bytes (BadInput). */
[[nodiscard]] Outcome<void> check_key(std::string_view op, std::string_view key,
									  std::size_t max_len);

/* ttl must be >= 1 and <= max_ttl. Without max_ttl (the pg backend: the server owns
 * the limit, lockext.max_ttl_ms) only 0 and values beyond bigint are rejected here. */
[[nodiscard]] Outcome<void> check_ttl(std::string_view op, std::uint64_t ttl,
									  std::optional<std::uint64_t> max_ttl);

/* check_key + a non-empty lock_id, and with check_uuid a well-formed one (what
 * PostgreSQL's uuid type accepts): what renew and release need of a handle. A malformed
 * lock_id is BadInput in both backends (the pg backend leaves the UUID check to the
 * server, whose 22P02 is classified BadInput, so its message keeps the SQLSTATE). */
[[nodiscard]] Outcome<void> check_handle(std::string_view op, const LockHandle &handle,
										 std::size_t max_key_len, bool check_uuid);

/* The canonical text (lower-case, 8-4-4-4-12) of a UUID in any form PostgreSQL's uuid
 * input accepts (optional braces, upper case, hyphens after any group of four digits),
 * or nullopt. */
[[nodiscard]] std::optional<std::string> canonical_uuid(std::string_view text);

} // namespace lockext::detail

#endif
