/*
 * validate.cpp
 *     Local argument checks shared by the memory and pg backends (see validate.hpp).
 */
#include "validate.hpp"

#include <limits>

namespace lockext::detail
{

std::string
failure(std::string_view op, std::string_view what)
{
	std::string out(op);
	out += " failed: ";
	out += what;
	return out;
}

constexpr std::string_view kLockLost = "renew failed: lock lost: '";

std::string
lock_lost(std::string_view key)
{
	std::string out(kLockLost);
	out += key;
	out += "' is no longer held by this lock_id (expired, released or taken over)";
	return out;
}

bool
is_lock_lost(std::string_view error)
{
	return error.starts_with(kLockLost);
}

Result<void>
check_key(std::string_view op, std::string_view key, std::size_t max_len)
{
	if (key.empty())
		return std::unexpected(failure(op, "lock key must not be empty"));
	if (key.find('\0') != std::string_view::npos)
		return std::unexpected(failure(op, "lock key must not contain a NUL byte"));
	if (max_len > 0 && key.size() > max_len)
		return std::unexpected(failure(op, "lock key must be at most " + std::to_string(max_len) +
											   " bytes (the key is " + std::to_string(key.size()) +
											   " bytes long)"));
	return {};
}

Result<void>
check_ttl(std::string_view op, std::uint64_t ttl, std::optional<std::uint64_t> max_ttl)
{
	constexpr std::uint64_t bigint_max = std::numeric_limits<std::int64_t>::max();
	if (max_ttl && (ttl < 1 || ttl > *max_ttl))
		return std::unexpected(
			failure(op, "ttl_ms must be between 1 and " + std::to_string(*max_ttl)));
	if (ttl < 1)
		return std::unexpected(failure(op, "ttl_ms must be at least 1"));
	if (ttl > bigint_max)
		return std::unexpected(
			failure(op, "ttl_ms must be at most " + std::to_string(bigint_max) + " (bigint)"));
	return {};
}

Result<void>
check_handle(std::string_view op, const LockHandle &handle, std::size_t max_key_len)
{
	if (auto ok = check_key(op, handle.key, max_key_len); !ok)
		return ok;
	if (handle.lock_id.empty())
		return std::unexpected(failure(op, "lock_id must not be empty"));
	return {};
}

} // namespace lockext::detail
