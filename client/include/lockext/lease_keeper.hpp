/*
 * lockext/lease_keeper.hpp
 *     LeaseKeeper: keeps a held lease alive from a background thread and tells the
 *     caller the moment it must be considered lost (spec §5).
 *
 * It renews at about ttl/3 (PgOptions-independent; works with any LockingPlugin),
 * counted from acquired_at: the first renew is due at acquired_at + interval, at once
 * if that has already passed. The lease is known to be valid until valid_until() = the
 * send time of the last successful renew (at first: acquired_at) + ttl_ms: the server
 * granted or renewed it no earlier than that, so its lease lasts at least that long.
 *
 * All deadlines are on BootClock (CLOCK_BOOTTIME, spec §9): they keep running while
 * the host is suspended, so a host that slept past the TTL wakes up with lost() true
 * (and on_lost runs within 250 ms of the resume: the keeper waits in slices, because
 * condition variables count CLOCK_MONOTONIC).
 *
 * The lease is lost, for good, when
 *   - a renew fails with FailureKind::LockLost (renew_outcome: the lock is no longer
 *     held under this lock_id), or
 *   - valid_until() passes without a successful renew (backend failures are retried
 *     every ~ttl/10 until then; a renew that succeeds only after valid_until() passed
 *     does not revive it, because the caller may already have stopped).
 * lost() is exact: it turns true at valid_until() even while a renew call is still
 * blocked. The on_lost callback runs once, on the keeper's thread, at most one renew
 * call late. How long a renew call can take is the plugin's bound: for the pg backend
 * PgOptions::call_timeout (default acquire_timeout + connect budget + statement_timeout,
 * 15 s with the defaults), which covers waiting for a pool slot, connecting and the
 * statement, but not libpq's synchronous host name resolution. An exception thrown by
 * on_lost is caught and ignored (it cannot reach anyone on the keeper's thread).
 *
 * A programming error throws std::invalid_argument from the constructor: an explicit
 * options.interval >= the handle's ttl_ms (the lease would end before its first
 * renew). This is the keeper's only exception besides std::bad_alloc / std::system_error
 * from starting its thread.
 *
 * Thread safety: all methods may be called from any thread. Do not destroy the keeper
 * from inside on_lost. Destroying or stop()ping the keeper does not release the lease;
 * both wait for a renew in flight (bounded by the plugin's own timeouts: for pg,
 * PgOptions::call_timeout, see above).
 */
#ifndef LOCKEXT_LEASE_KEEPER_HPP
#define LOCKEXT_LEASE_KEEPER_HPP

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <lockext/boot_clock.hpp>
#include <lockext/locking_plugin.hpp>

namespace lockext
{

struct LeaseKeeperOptions
{
	/* Time between renewals; 0 = ttl_ms / 3. Must be < ttl_ms. */
	std::chrono::milliseconds interval{0};
	/* Time between retries after a failed renew; 0 = ttl_ms / 10 (at least 10 ms). */
	std::chrono::milliseconds retry_interval{0};
};

class LOCKEXT_CLIENT_API LeaseKeeper final
{
  public:
	using Clock = BootClock;
	/* Called once with the reason when the lease is lost. */
	using LostCallback = std::function<void(const std::string &reason)>;

	/*
	 * Starts renewing handle through plugin, which must outlive the keeper.
	 * acquired_at: a BootClock time taken just BEFORE the try_lock that returned
	 * handle (default: now, which overestimates the lease by the try_lock's duration).
	 * Throws std::invalid_argument if options.interval >= handle.ttl_ms.
	 */
	LeaseKeeper(LockingPlugin &plugin, LockHandle handle, LostCallback on_lost = {},
				LeaseKeeperOptions options = {},
				std::optional<Clock::time_point> acquired_at = std::nullopt);
	/* Source compatibility with 1.0: acquired_at on steady_clock (converted to BootClock
	 * by its distance from now; a suspend between the two clocks' readings is lost). */
	LeaseKeeper(LockingPlugin &plugin, LockHandle handle, LostCallback on_lost,
				LeaseKeeperOptions options, std::chrono::steady_clock::time_point acquired_at);
	~LeaseKeeper();
	LeaseKeeper(const LeaseKeeper &) = delete;
	LeaseKeeper &operator=(const LeaseKeeper &) = delete;

	[[nodiscard]] const LockHandle &handle() const noexcept;
	/* True once the lease must be considered lost (sticky). */
	[[nodiscard]] bool lost() const noexcept;
	/* Why it was lost, once the keeper thread has noticed. */
	[[nodiscard]] std::optional<std::string> lost_reason() const;
	/* End of the lease as far as this client knows (on BootClock). */
	[[nodiscard]] Clock::time_point valid_until() const noexcept;
	/* Stops renewing (idempotent); the lease then runs out after its TTL. */
	void stop() noexcept;
	/* stop(), then release the lease (a lost lease releases as a silent no-op). */
	[[nodiscard]] Result<void> release();

  private:
	struct State;
	std::unique_ptr<State> m_state;
};

} // namespace lockext

#endif
