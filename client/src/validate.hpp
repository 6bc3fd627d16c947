/*
 * validate.hpp (internal)
 *     Local argument checks and error-message builders shared by the backends, so that
 *     both report bad input and lost locks with the same words.
 */
#ifndef LOCKEXT_CLIENT_VALIDATE_HPP
#define LOCKEXT_CLIENT_VALIDATE_HPP

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <lockext/locking_plugin.hpp>

namespace lockext::detail
{

/* "<op> failed: <what>" */
[[nodiscard]] std::string failure(std::string_view op, std::string_view what);

/* The error renew() returns when the lease is no longer held under handle.lock_id. */
[[nodiscard]] std::string lock_lost(std::string_view key);

/* True for an error made by lock_lost(). */
[[nodiscard]] bool is_lock_lost(std::string_view error);

/* Key must be non-empty and, when max_len > 0, at most max_len bytes. */
[[nodiscard]] Result<void> check_key(std::string_view op, std::string_view key,
									 std::size_t max_len);

/* ttl must be >= 1 and <= max_ttl. Without max_ttl (the pg backend: the server owns
 * the limit, lockext.max_ttl_ms) only 0 and values beyond bigint are rejected here. */
[[nodiscard]] Result<void> check_ttl(std::string_view op, std::uint64_t ttl,
									 std::optional<std::uint64_t> max_ttl);

/* check_key + a non-empty lock_id: what renew and release need of a handle. */
[[nodiscard]] Result<void> check_handle(std::string_view op, const LockHandle &handle,
										std::size_t max_key_len);

} // namespace lockext::detail

#endif
