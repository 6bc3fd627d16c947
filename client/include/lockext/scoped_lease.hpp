/*
 * lockext/scoped_lease.hpp
 *     ScopedLease: a held lease together with the LeaseKeeper that renews it; releases
 *     the lease when destroyed (spec §9). Movable, not copyable.
 *
 *   auto lease = lockext::ScopedLease::acquire(plugin, "nightly-report", 30000);
 *   if (!lease)            -> backend failure (lease.error().kind, .message)
 *   else if (!*lease)      -> contention: someone else holds the key
 *   else                   -> held; (*lease)->lost() turns true the moment it is lost
 *
 * hold_at_least (ShedLock's lockAtLeastFor): a duration measured from acquisition
 * (the BootClock time just before the try_lock). When the lease is released earlier
 * (release() or the destructor), it is NOT released: the keeper stops and one renew
 * asks for exactly the remaining time, so the server keeps the key until
 * acquired_at + hold_at_least and a host that starts the same job late sees
 * contention. If the server refuses that TTL as too long (above lockext.max_ttl_ms,
 * FailureKind::BadInput):
 *   - release() keeps renewing in steps of the handle's ttl_ms and blocks until the
 *     remaining time fits in one such step, then renews once to it. A retryable failure
 *     of a step (Unreachable, Timeout, ...) is retried every ~ttl_ms/10 while the lease
 *     is still known valid; LockLost, another failure or the end of that validity ends
 *     the hold and is returned.
 *   - the destructor and move-assignment never block for the rest of hold_at_least:
 *     they renew once more to the handle's ttl_ms, so the key is kept for at least
 *     min(hold_at_least, ttl_ms) more, not until hold_until(). Call release() first
 *     for the full hold. They block at most for the keeper's renew in flight plus two
 *     renew calls (for pg, each bounded by PgOptions::call_timeout).
 * A lease already lost is not renewed. Errors of that final renew are returned by
 * release() and swallowed by the destructor (the lease then ends with its last TTL).
 *
 * If the keeper's thread cannot be started after the grant (std::system_error,
 * std::bad_alloc), acquire() releases the lease (best effort) and returns a
 * FailureKind::Capacity failure; it does not throw.
 *
 * Thread safety: const members may be called from any thread; release(), moves and
 * destruction must not race with other calls on the same object. The plugin must
 * outlive the ScopedLease.
 */
#ifndef LOCKEXT_SCOPED_LEASE_HPP
#define LOCKEXT_SCOPED_LEASE_HPP

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <lockext/boot_clock.hpp>
#include <lockext/errors.hpp>
#include <lockext/lease_keeper.hpp>
#include <lockext/locking_plugin.hpp>

namespace lockext
{

struct ScopedLeaseOptions
{
	/* Renewal timing of the keeper (interval must be < ttl_ms). */
	LeaseKeeperOptions keeper;
	/* Called once, on the keeper's thread, when the lease is lost. */
	LeaseKeeper::LostCallback on_lost;
	/* Keep the key at least this long after acquisition even if released earlier. */
	std::chrono::milliseconds hold_at_least{0};
};

class LOCKEXT_CLIENT_API ScopedLease final
{
  public:
	/*
	 * try_lock(key, ttl_ms) on plugin: a ScopedLease (held and being renewed), an empty
	 * optional (contention), or the classified failure. Invalid options (interval >=
	 * ttl_ms, negative hold_at_least) are a FailureKind::BadInput failure, nothing is
	 * acquired.
	 */
	[[nodiscard]] static Outcome<std::optional<ScopedLease>>
	acquire(LockingPlugin &plugin, std::string_view key, std::uint64_t ttl_ms,
			ScopedLeaseOptions options = {});

	ScopedLease(ScopedLease &&other) noexcept;
	ScopedLease &operator=(ScopedLease &&other) noexcept;
	ScopedLease(const ScopedLease &) = delete;
	ScopedLease &operator=(const ScopedLease &) = delete;
	/* release(), errors swallowed; noexcept. */
	~ScopedLease();

	/* The held lease (key, lock_id, ttl_ms, fence). Not valid after a move. */
	[[nodiscard]] const LockHandle &handle() const noexcept;
	/* True once the lease must be considered lost (sticky); true after release(). */
	[[nodiscard]] bool lost() const noexcept;
	[[nodiscard]] std::optional<std::string> lost_reason() const;
	[[nodiscard]] BootClock::time_point valid_until() const noexcept;
	/* BootClock time until which release() keeps the key (acquired_at + hold_at_least). */
	[[nodiscard]] BootClock::time_point hold_until() const noexcept;

	/* Stops renewing and releases the lease (or, before hold_until(), renews it once
	 * to the remaining time; see above). Idempotent: later calls succeed at once. */
	[[nodiscard]] Outcome<void> release();

  private:
	struct State;
	explicit ScopedLease(std::unique_ptr<State> state) noexcept;
	[[nodiscard]] Outcome<void> release_impl(bool may_block);
	std::unique_ptr<State> m_state;
};

} // namespace lockext

#endif
