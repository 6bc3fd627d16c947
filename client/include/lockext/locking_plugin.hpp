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
 *   - try_lock_outcome / renew_outcome / release_outcome (lockext 1.1): the same calls
 *     with the failure classified (lockext/errors.hpp). The string versions return
 *     exactly Failure::message of these. The defaults call the string versions and
 *     classify every error as FailureKind::Unknown; both lockext backends override them
 *     (and a renew that finds the lease gone is FailureKind::LockLost).
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
#include <type_traits>
#include <utility>

#include <lockext/errors.hpp> // Failure, Outcome, LOCKEXT_CLIENT_API

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

	[[nodiscard]] virtual Outcome<std::optional<LockHandle>> try_lock_outcome(std::string_view key,
																			  std::uint64_t ttl_ms)
	{
		auto r = try_lock(key, ttl_ms);
		if (!r)
			return std::unexpected(unclassified(std::move(r.error())));
		return std::move(*r);
	}
	[[nodiscard]] virtual Outcome<void> renew_outcome(const LockHandle &handle)
	{
		auto r = renew(handle);
		if (!r)
			return std::unexpected(unclassified(std::move(r.error())));
		return {};
	}
	[[nodiscard]] virtual Outcome<void> release_outcome(LockHandle handle)
	{
		auto r = release(std::move(handle));
		if (!r)
			return std::unexpected(unclassified(std::move(r.error())));
		return {};
	}

  protected:
	/* A plugin's error string as a Failure of kind Unknown. */
	[[nodiscard]] static Failure unclassified(std::string message)
	{
		return Failure{FailureKind::Unknown, "", false, std::move(message)};
	}
	/* The Result<T> of an Outcome<T>: the same value, or the failure's message. */
	template <class T> [[nodiscard]] static Result<T> to_result(Outcome<T> outcome)
	{
		if (!outcome)
			return std::unexpected(std::move(outcome.error().message));
		if constexpr (std::is_void_v<T>)
			return {};
		else
			return std::move(*outcome);
	}
};

} // namespace lockext

#endif
