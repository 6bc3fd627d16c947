/*
 * lease_keeper.cpp
 *     LeaseKeeper (see lockext/lease_keeper.hpp for the semantics).
 *
 * Locking protocol: State::mutex guards stopping, reason and last_error and is what the
 * keeper thread waits on (cv). lost and valid_until are atomics so lost() and
 * valid_until() never block behind a renew in flight. The mutex is never held while
 * calling the plugin or the callback.
 */
#include <lockext/lease_keeper.hpp>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace lockext
{

using Clock = LeaseKeeper::Clock;

/* Longest single wait of the keeper thread (see run()). */
constexpr std::chrono::milliseconds kSlice{250};

struct LeaseKeeper::State
{
	LockingPlugin &plugin;
	const LockHandle handle;
	const LostCallback on_lost;
	Clock::duration interval;
	Clock::duration retry_interval;

	std::atomic<bool> lost{false};
	std::atomic<Clock::rep> valid_until; // Clock::time_point, as ticks since its epoch

	mutable std::mutex mutex;
	std::condition_variable cv;
	bool stopping = false;  // guarded by mutex
	std::string reason;     // guarded by mutex
	std::string last_error; // guarded by mutex
	std::thread thread;

	State(LockingPlugin &p, LockHandle h, LostCallback cb)
		: plugin(p), handle(std::move(h)), on_lost(std::move(cb))
	{
	}

	/* handle.ttl_ms as a duration, capped (2^40 ms, ~35 years) so that time_point
	 * arithmetic cannot overflow for absurd values a plugin would reject anyway. */
	std::chrono::milliseconds ttl() const noexcept
	{
		constexpr std::uint64_t cap = std::uint64_t{1} << 40;
		return std::chrono::milliseconds(static_cast<std::int64_t>(std::min(handle.ttl_ms, cap)));
	}

	Clock::time_point deadline() const noexcept
	{
		return Clock::time_point(Clock::duration(valid_until.load()));
	}

	/* Marks the lease lost and runs the callback; caller holds lock, which is
	 * released for the callback and not re-acquired. An exception from the callback
	 * is swallowed: on the keeper's thread it would terminate the process. */
	void declare_lost(std::unique_lock<std::mutex> &lock, std::string why)
	{
		reason = std::move(why);
		lost = true;
		const std::string copy = reason;
		lock.unlock();
		if (!on_lost)
			return;
		try
		{
			on_lost(copy);
		}
		catch (...)
		{
		}
	}

	std::string ran_out() const
	{
		std::string why = "lease ran out: no successful renew of '" + handle.key +
						  "' within its ttl_ms (" + std::to_string(handle.ttl_ms) + " ms)";
		if (!last_error.empty())
			why += "; last error: " + last_error;
		return why;
	}

	void run(Clock::time_point acquired_at)
	{
		std::unique_lock lock(mutex);
		auto next = acquired_at + interval; // in the past when late: renew at once
		while (!stopping)
		{
			/* condition_variable waits on CLOCK_MONOTONIC, which stops while the host is
			 * suspended: wait in slices so that the BootClock deadline is checked again
			 * at most kSlice after a resume. */
			cv.wait_until(lock, std::min({next, deadline(), Clock::now() + kSlice}),
						  [&] { return stopping; });
			if (stopping)
				return;
			if (Clock::now() >= deadline())
				return declare_lost(lock, ran_out());
			if (Clock::now() < next)
				continue;

			lock.unlock();
			const auto invoked = Clock::now();
			auto renewed = plugin.renew_outcome(handle);
			lock.lock();
			if (stopping)
				return;
			if (renewed && Clock::now() < deadline())
			{
				valid_until = (invoked + ttl()).time_since_epoch().count();
				last_error.clear();
				next = invoked + interval;
			}
			else if (!renewed && renewed.error().kind == FailureKind::LockLost)
				return declare_lost(lock, renewed.error().message);
			else if (!renewed)
			{
				last_error = renewed.error().message;
				next = Clock::now() + retry_interval;
			}
			// else: the renew succeeded only after the known window ended; the loop
			// top declares the lease lost.
		}
	}
};

LeaseKeeper::LeaseKeeper(LockingPlugin &plugin, LockHandle handle, LostCallback on_lost,
						 LeaseKeeperOptions options, std::optional<Clock::time_point> acquired_at)
	: m_state(std::make_unique<State>(plugin, std::move(handle), std::move(on_lost)))
{
	using std::chrono::milliseconds;
	const auto ttl = m_state->ttl();
	if (options.interval.count() > 0 && options.interval >= ttl)
		throw std::invalid_argument("LeaseKeeper: interval (" +
									std::to_string(options.interval.count()) +
									" ms) must be less than the lease's ttl_ms (" +
									std::to_string(m_state->handle.ttl_ms) + ")");
	m_state->interval =
		options.interval.count() > 0 ? options.interval : std::max(milliseconds(1), ttl / 3);
	m_state->retry_interval = options.retry_interval.count() > 0
								  ? options.retry_interval
								  : std::max(milliseconds(10), ttl / 10);
	const auto start = acquired_at.value_or(Clock::now());
	m_state->valid_until = (start + ttl).time_since_epoch().count();
	m_state->thread = std::thread([state = m_state.get(), start] { state->run(start); });
}

LeaseKeeper::LeaseKeeper(LockingPlugin &plugin, LockHandle handle, LostCallback on_lost,
						 LeaseKeeperOptions options,
						 std::chrono::steady_clock::time_point acquired_at)
	: LeaseKeeper(plugin, std::move(handle), std::move(on_lost), options,
				  std::optional<Clock::time_point>(BootClock::from_steady(acquired_at)))
{
}

LeaseKeeper::~LeaseKeeper()
{
	stop();
}

const LockHandle &
LeaseKeeper::handle() const noexcept
{
	return m_state->handle;
}

bool
LeaseKeeper::lost() const noexcept
{
	return m_state->lost.load() || Clock::now() >= m_state->deadline();
}

std::optional<std::string>
LeaseKeeper::lost_reason() const
{
	std::lock_guard guard(m_state->mutex);
	if (!m_state->lost.load())
		return std::nullopt;
	return m_state->reason;
}

Clock::time_point
LeaseKeeper::valid_until() const noexcept
{
	return m_state->deadline();
}

void
LeaseKeeper::stop() noexcept
{
	{
		std::lock_guard guard(m_state->mutex);
		m_state->stopping = true;
	}
	m_state->cv.notify_all();
	if (m_state->thread.joinable() && m_state->thread.get_id() != std::this_thread::get_id())
		m_state->thread.join();
}

Result<void>
LeaseKeeper::release()
{
	stop();
	return m_state->plugin.release(m_state->handle);
}

} // namespace lockext
