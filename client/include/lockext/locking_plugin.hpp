/*
 * lockext/locking_plugin.hpp
 *     The LockingPlugin interface of the lockext client library (spec §1, §5).
 *
 * Contract (every implementation, every method):
 *   - try_lock: a value holding a LockHandle = acquired; a value without a handle
 *     (empty std::optional) = contention; an error = backend failure. Contention is
 *     never an error and an error is never contention.
 *   - renew: success = the lease's TTL was reset to handle.ttl_ms from now; an error
 *     means the caller no longer owns the lock (or the backend failed): stop work.
 *   - release: check-and-set on handle.lock_id; releasing a lock the caller does not
 *     own is a silent success; only a backend failure is an error.
 *   - cleanup: release backend resources before unload.
 * All methods are safe to call from many threads at once on one instance.
 */
#ifndef LOCKEXT_LOCKING_PLUGIN_HPP
#define LOCKEXT_LOCKING_PLUGIN_HPP

#include <version>
#if !defined(__cpp_lib_expected) || __cpp_lib_expected < 202202L
#error                                                                                             \
	"lockext client needs C++23 std::expected: compile with -std=c++23 (pkg-config --cflags lockext-client adds it)"
#endif

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <string_view>

/* Marks the library's exported classes (it is built with -fvisibility=hidden). */
#define LOCKEXT_CLIENT_API __attribute__((visibility("default")))

namespace lockext
{

/* A granted lease. Copyable plain data; holding it does not keep the lock alive. */
struct LockHandle
{
	std::string key;
	std::string lock_id;      // opaque token (UUID text), used for check-and-set
	std::uint64_t ttl_ms = 0; // the lease length renew() asks for again
	std::int64_t fence = 0;   // fencing token: strictly greater than every earlier grant's
};

/* A value, or an error message ("<op> failed: [SQLSTATE] <server message>" style). */
template <class T> using Result = std::expected<T, std::string>;

class LOCKEXT_CLIENT_API LockingPlugin
{
  public:
	virtual ~LockingPlugin() = default;

	/* "pg" or "memory": the backend's unique name (metrics labels, test output). */
	[[nodiscard]] virtual std::string_view name() const = 0;

	[[nodiscard]] virtual Result<std::optional<LockHandle>> try_lock(std::string_view key,
																	 std::uint64_t ttl_ms) = 0;
	[[nodiscard]] virtual Result<void> renew(const LockHandle &handle) = 0;
	[[nodiscard]] virtual Result<void> release(LockHandle handle) = 0;
	[[nodiscard]] virtual Result<void> cleanup()
	{
		return {};
	}
};

} // namespace lockext

#endif
