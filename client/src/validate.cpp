/*
 * validate.cpp
 *     Local argument checks shared by the memory and pg backends (see validate.hpp).
 */
#include "validate.hpp"

#include <limits>

#include "errors_internal.hpp"

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

Failure
lock_lost(std::string_view key)
{
	std::string out = "renew failed: lock lost: '";
	out += key;
	out += "' is no longer held by this lock_id (expired, released or taken over)";
	return make_failure(FailureKind::LockLost, std::move(out));
}

namespace
{

std::unexpected<Failure>
bad_input(std::string_view op, std::string_view what)
{
	return std::unexpected(make_failure(FailureKind::BadInput, failure(op, what)));
}

int
hex_value(char c) noexcept
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

} // namespace

Outcome<void>
check_key(std::string_view op, std::string_view key, std::size_t max_len)
{
	if (key.empty())
		return bad_input(op, "lock key must not be empty");
	if (key.find('\0') != std::string_view::npos)
		return bad_input(op, "lock key must not contain a NUL byte");
	if (max_len > 0 && key.size() > max_len)
		return bad_input(op, "lock key must be at most " + std::to_string(max_len) +
								 " bytes (the key is " + std::to_string(key.size()) +
								 " bytes long)");
	return {};
}

Outcome<void>
check_ttl(std::string_view op, std::uint64_t ttl, std::optional<std::uint64_t> max_ttl)
{
	constexpr std::uint64_t bigint_max = std::numeric_limits<std::int64_t>::max();
	if (max_ttl && (ttl < 1 || ttl > *max_ttl))
		return bad_input(op, "ttl_ms must be between 1 and " + std::to_string(*max_ttl));
	if (ttl < 1)
		return bad_input(op, "ttl_ms must be at least 1");
	if (ttl > bigint_max)
		return bad_input(op, "ttl_ms must be at most " + std::to_string(bigint_max) + " (bigint)");
	return {};
}

std::optional<std::string>
canonical_uuid(std::string_view text)
{
	if (text.size() >= 2 && text.front() == '{' && text.back() == '}')
		text = text.substr(1, text.size() - 2);
	static constexpr char kHex[] = "0123456789abcdef";
	std::string out;
	out.reserve(36);
	std::size_t digits = 0;
	for (std::size_t i = 0; i < text.size(); ++i)
	{
		const char c = text[i];
		if (c == '-')
		{
			/* PostgreSQL: a hyphen may follow any group of four digits, never two in a
			 * row, never first or last. */
			if (digits == 0 || digits % 4 != 0 || digits == 32 || text[i - 1] == '-')
				return std::nullopt;
			continue;
		}
		const int v = hex_value(c);
		if (v < 0 || digits == 32)
			return std::nullopt;
		if (digits == 8 || digits == 12 || digits == 16 || digits == 20)
			out += '-';
		out += kHex[v];
		++digits;
	}
	if (digits != 32 || text.back() == '-')
		return std::nullopt;
	return out;
}

Outcome<void>
check_handle(std::string_view op, const LockHandle &handle, std::size_t max_key_len,
			 bool check_uuid)
{
	if (auto ok = check_key(op, handle.key, max_key_len); !ok)
		return ok;
	if (handle.lock_id.empty())
		return bad_input(op, "lock_id must not be empty");
	if (check_uuid && !canonical_uuid(handle.lock_id))
		return bad_input(op, "lock_id is not a UUID (a handle's lock_id must come from try_lock)");
	return {};
}

} // namespace lockext::detail
