/*
 * scoped_lease.cpp
 *     ScopedLease (see lockext/scoped_lease.hpp for the semantics).
 *
 * Locking protocol: none of its own; the LeaseKeeper inside is thread-safe, and
 * release()/moves/destruction are documented as not concurrent with other calls.
 */
#include <lockext/scoped_lease.hpp>

#include <algorithm>
#include <new>
#include <system_error>
#include <thread>

#include "errors_internal.hpp"

namespace lockext
{

struct ScopedLease::State
{
	LockingPlugin &plugin;
	BootClock::time_point hold_until;
	std::unique_ptr<LeaseKeeper> keeper;
	bool released = false;

	State(LockingPlugin &p, BootClock::time_point until) : plugin(p), hold_until(until) {}
};

namespace
{

/* Whole milliseconds from now until t, rounded up (0 when t has passed). */
std::uint64_t
ms_until(BootClock::time_point t) noexcept
{
	const auto left = std::chrono::ceil<std::chrono::milliseconds>(t - BootClock::now());
	return left.count() > 0 ? static_cast<std::uint64_t>(left.count()) : 0;
}

} // namespace

Outcome<std::optional<ScopedLease>>
ScopedLease::acquire(LockingPlugin &plugin, std::string_view key, std::uint64_t ttl_ms,
					 ScopedLeaseOptions options)
{
	if (options.hold_at_least.count() < 0)
		return std::unexpected(detail::make_failure(
			FailureKind::BadInput, "try_lock failed: hold_at_least must not be negative"));
	if (options.keeper.interval.count() > 0 &&
		static_cast<std::uint64_t>(options.keeper.interval.count()) >= ttl_ms)
		return std::unexpected(detail::make_failure(
			FailureKind::BadInput, "try_lock failed: the keeper's interval (" +
									   std::to_string(options.keeper.interval.count()) +
									   " ms) must be less than ttl_ms (" + std::to_string(ttl_ms) +
									   ")"));
	const auto before = BootClock::now();
	auto got = plugin.try_lock_outcome(key, ttl_ms);
	if (!got)
		return std::unexpected(std::move(got.error()));
	if (!got->has_value())
		return std::optional<ScopedLease>{}; // contention
	const LockHandle granted = **got;        // for the release if the keeper cannot start
	std::unique_ptr<State> state;
	std::string why;
	try
	{
		state = std::make_unique<State>(plugin, before + options.hold_at_least);
		state->keeper = std::make_unique<LeaseKeeper>(plugin, std::move(**got),
													  std::move(options.on_lost), options.keeper,
													  std::optional<BootClock::time_point>(before));
		return std::optional<ScopedLease>(ScopedLease(std::move(state)));
	}
	catch (const std::system_error &e) // std::thread could not start
	{
		why = e.what();
	}
	catch (const std::bad_alloc &)
	{
		why = "out of memory";
	}
	/* Granted but not kept alive: give the key back (best effort; otherwise it ends
	 * with its TTL) instead of leaking a lease nobody renews. */
	state.reset();
	auto released = plugin.release_outcome(granted);
	return std::unexpected(detail::make_failure(
		FailureKind::Capacity,
		"try_lock failed: could not start the lease keeper's thread (" + why + "); " +
			(released ? std::string("the lease was released")
					  : "the lease could not be released (" + released.error().message +
							") and ends after its TTL")));
}

ScopedLease::ScopedLease(std::unique_ptr<State> state) noexcept : m_state(std::move(state)) {}

ScopedLease::ScopedLease(ScopedLease &&other) noexcept = default;

ScopedLease &
ScopedLease::operator=(ScopedLease &&other) noexcept
{
	if (this != &other)
	{
		(void) release_impl(false);
		m_state = std::move(other.m_state);
	}
	return *this;
}

ScopedLease::~ScopedLease()
{
	try
	{
		(void) release_impl(false);
	}
	catch (...)
	{
	}
}

const LockHandle &
ScopedLease::handle() const noexcept
{
	return m_state->keeper->handle();
}

bool
ScopedLease::lost() const noexcept
{
	return !m_state || m_state->released || m_state->keeper->lost();
}

std::optional<std::string>
ScopedLease::lost_reason() const
{
	if (!m_state)
		return std::nullopt;
	return m_state->keeper->lost_reason();
}

BootClock::time_point
ScopedLease::valid_until() const noexcept
{
	return m_state ? m_state->keeper->valid_until() : BootClock::time_point{};
}

BootClock::time_point
ScopedLease::hold_until() const noexcept
{
	return m_state ? m_state->hold_until : BootClock::time_point{};
}

Outcome<void>
ScopedLease::release()
{
	return release_impl(true);
}

Outcome<void>
ScopedLease::release_impl(bool may_block)
{
	if (!m_state || m_state->released)
		return {};
	m_state->released = true;
	LeaseKeeper &keeper = *m_state->keeper;
	LockingPlugin &plugin = m_state->plugin;
	keeper.stop();
	const LockHandle &held = keeper.handle();
	std::uint64_t left = ms_until(m_state->hold_until);
	if (left == 0 || keeper.lost())
		return plugin.release_outcome(held); // a silent no-op if taken over
	/* Before hold_until: keep the key until then instead of releasing it, with one
	 * renew to the remaining time. */
	LockHandle once = held;
	once.ttl_ms = left;
	auto r = plugin.renew_outcome(once);
	if (r || r.error().kind != FailureKind::BadInput || left <= held.ttl_ms)
		return r;
	/* The server refused that TTL (above lockext.max_ttl_ms). */
	if (!may_block)
	{
		/* Destructor / move-assignment: never block for the rest of hold_at_least; keep
		 * the key for one more ttl_ms (one renew call) and let it end then. */
		return plugin.renew_outcome(held);
	}
	/* release(): renew in steps of the handle's ttl_ms until the rest fits in one, then
	 * renew once to the rest. A failed step that is retryable is retried (every
	 * ~ttl/10) while the lease is still known valid (send time of the last successful
	 * renew + ttl_ms); LockLost, other failures, or the end of that validity end it. */
	using std::chrono::milliseconds;
	const milliseconds step(static_cast<std::int64_t>(held.ttl_ms));
	const milliseconds retry = std::max(milliseconds(10), step / 10);
	auto sleep_until = [](BootClock::time_point t)
	{
		while (BootClock::now() < t)
			std::this_thread::sleep_for(
				std::min<BootClock::duration>(t - BootClock::now(), milliseconds(100)));
	};
	BootClock::time_point valid = keeper.valid_until();
	while ((left = ms_until(m_state->hold_until)) > held.ttl_ms)
	{
		const auto sent = BootClock::now();
		if (auto renewed = plugin.renew_outcome(held); !renewed)
		{
			if (!renewed.error().retryable() || BootClock::now() + retry >= valid)
				return renewed;
			sleep_until(BootClock::now() + retry);
			continue;
		}
		valid = sent + step;
		sleep_until(
			std::min(sent + std::max(milliseconds(1), step / 3), m_state->hold_until - step));
	}
	if (left == 0)
		return {};
	once.ttl_ms = left;
	return plugin.renew_outcome(once);
}

} // namespace lockext
