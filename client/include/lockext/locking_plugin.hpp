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
 *   - try_lock_for / try_lock_for_outcome (lockext 1.1): try_lock that, when the key is
 *     held, waits up to `wait` for it. The same three results as try_lock: a handle,
 *     a value without a handle (contention: the bound passed), an error. wait = 0 is
 *     try_lock; wait < 0 is BadInput. Both lockext backends wait without polling
 *     (memory: a condition variable; pg: a server-side wait, FIFO per key with direct
 *     hand-off). The default, for third-party plugins, polls try_lock_outcome with
 *     jittered exponential backoff (a random delay in [d/2, d], d = 10 ms doubling up to
 *     500 ms, never past the bound): it is correct but neither prompt nor fair.
 *     try_lock_for returns exactly Failure::message of try_lock_for_outcome; a plugin
 *     that overrides the waiting overrides try_lock_for_outcome (the default
 *     try_lock_for calls it).
 * All methods are safe to call from many threads at once on one instance.
 */
#ifndef LOCKEXT_LOCKING_PLUGIN_HPP
#define LOCKEXT_LOCKING_PLUGIN_HPP

#include <version>
#if !defined(__cpp_lib_expected) || __cpp_lib_expected < 202202L
#error                                                                                             \
	"lockext client needs C++23 std::expected: compile with -std=c++23 or newer (pkg-config --cflags lockext-client leaves the standard to you; the CMake target lockext::client requires it)"
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <expected>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
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

	/* try_lock, waiting up to `wait` while the key is held (lockext 1.1, see above). */
	[[nodiscard]] virtual Result<std::optional<LockHandle>>
	try_lock_for(std::string_view key, std::uint64_t ttl_ms, std::chrono::milliseconds wait)
	{
		return to_result(try_lock_for_outcome(key, ttl_ms, wait));
	}
	[[nodiscard]] virtual Outcome<std::optional<LockHandle>>
	try_lock_for_outcome(std::string_view key, std::uint64_t ttl_ms,
						 std::chrono::milliseconds wait)
	{
		if (wait < std::chrono::milliseconds::zero())
			return std::unexpected(bad_wait(wait));
		using clock = std::chrono::steady_clock;
		const auto give_up = clock::now() + wait;
		std::chrono::milliseconds backoff{10};
		std::minstd_rand rng{std::random_device{}()};
		for (;;)
		{
			auto r = try_lock_outcome(key, ttl_ms);
			if (!r || r->has_value())
				return r;
			const auto now = clock::now();
			if (now >= give_up)
				return r; // contention after the bound
			std::uniform_int_distribution<long long> jitter(backoff.count() / 2, backoff.count());
			std::this_thread::sleep_until(
				std::min<clock::time_point>(now + std::chrono::milliseconds(jitter(rng)), give_up));
			backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
		}
	}

  protected:
	/* The BadInput failure of a negative wait (the same words in every backend). */
	[[nodiscard]] static Failure bad_wait(std::chrono::milliseconds wait)
	{
		return Failure{FailureKind::BadInput, "", false,
					   "try_lock_for failed: wait must be >= 0 ms (got " +
						   std::to_string(wait.count()) + " ms)"};
	}
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
