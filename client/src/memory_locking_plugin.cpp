/*
 * memory_locking_plugin.cpp
 *     The in-process "memory" backend.
 *
 * Locking protocol: one std::mutex (State::mutex) protects the whole lease map, the
 * waiter queues and the fence counter; every public call takes it once for O(log n)
 * work (plus, when the table looks full, one sweep of expired leases). Lock ids are
 * minted before the mutex is taken (getrandom(2) may block briefly at boot).
 *
 * Waiting (try_lock_for): a key's waiters form a FIFO queue (State::queues, arrival
 * order). Only the head of a key's queue may take the key, and a plain try_lock of a key
 * with waiters is contention (no barging: the key goes to the head waiter, as on the
 * server). Each waiter sleeps on a condition variable of its own: the head until its
 * bound or the holder's expiry (a timed wait, re-armed after a renew moved the expiry),
 * the others until their bound. release() and cleanup() notify the head; a head that
 * leaves (granted, bound passed, error) notifies the next one. No polling loop.
 */
#include <lockext/memory_locking_plugin.hpp>

#include <lockext/boot_clock.hpp>

#include <sys/random.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>

#include "errors_internal.hpp"
#include "validate.hpp"

namespace lockext
{

namespace
{

using Clock = BootClock;

struct Lease
{
	std::string lock_id;
	std::int64_t fence;
	Clock::time_point expires_at;
};

/* A random UUIDv4 in canonical text form, or an error if the kernel source failed. */
Result<std::string>
random_uuid_v4()
{
	std::array<unsigned char, 16> b{};
	std::size_t got = 0;
	while (got < b.size())
	{
		ssize_t n = getrandom(b.data() + got, b.size() - got, 0);
		if (n < 0)
		{
			if (errno == EINTR)
				continue;
			return std::unexpected(std::string("getrandom failed: ") + std::strerror(errno));
		}
		got += static_cast<std::size_t>(n);
	}
	b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40); // version 4
	b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80); // RFC 4122 variant
	char text[37];
	std::snprintf(text, sizeof text,
				  "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
				  b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
				  b[14], b[15]);
	return std::string(text, 36);
}

/* One try_lock_for in a key's queue. */
struct Waiter
{
	std::condition_variable cv;
};

using Queue = std::deque<Waiter *>;

} // namespace

struct MemoryLockingPlugin::State
{
	MemoryOptions options;
	std::mutex mutex;
	std::map<std::string, Lease, std::less<>> leases; // guarded by mutex
	std::map<std::string, Queue, std::less<>> queues; // guarded by mutex; never empty
	std::int64_t last_fence = 0;                      // guarded by mutex

	/* Wakes the head waiter of key, if any; caller holds mutex. */
	void wake_head(std::string_view key)
	{
		if (auto q = queues.find(key); q != queues.end())
			q->second.front()->cv.notify_one();
	}

	/* Takes w out of its key's queue (waking the next head if w was the head); caller
	 * holds mutex. */
	void leave(std::map<std::string, Queue, std::less<>>::iterator q, Waiter *w)
	{
		Queue &queue = q->second;
		const bool was_head = queue.front() == w;
		std::erase(queue, w);
		if (queue.empty())
			queues.erase(q);
		else if (was_head)
			queue.front()->cv.notify_one();
	}

	/* Grants key to lock_id if it is free (an expired lease is dropped first); nullopt
	 * = held (contention), an error = table full. Caller holds mutex and has checked that
	 * nobody queued ahead of it. */
	Outcome<std::optional<LockHandle>> grant(std::string_view key, std::uint64_t ttl_ms,
											 const std::string &lock_id, Clock::time_point now)
	{
		auto it = leases.find(key);
		if (it != leases.end())
		{
			if (it->second.expires_at > now)
				return std::optional<LockHandle>{}; // contention
			leases.erase(it);
		}
		if (leases.size() >= options.max_locks)
			sweep(now);
		if (leases.size() >= options.max_locks)
			return std::unexpected(detail::make_failure(
				FailureKind::Capacity,
				detail::failure("try_lock", "lock table is full (" +
												std::to_string(leases.size()) + " of " +
												std::to_string(options.max_locks) +
												" slots hold unexpired leases)")));
		const std::int64_t fence = ++last_fence;
		leases.emplace(std::string(key),
					   Lease{lock_id, fence, now + std::chrono::milliseconds(ttl_ms)});
		return LockHandle{std::string(key), lock_id, ttl_ms, fence};
	}

	/* Drops every expired lease; caller holds mutex. */
	void sweep(Clock::time_point now)
	{
		std::erase_if(leases, [now](const auto &kv) { return kv.second.expires_at <= now; });
	}

	/* The live lease of key held under lock_id, or nullptr; caller holds mutex. */
	Lease *held(std::string_view key, std::string_view lock_id, Clock::time_point now)
	{
		auto it = leases.find(key);
		if (it == leases.end() || it->second.expires_at <= now || it->second.lock_id != lock_id)
			return nullptr;
		return &it->second;
	}
};

MemoryLockingPlugin::MemoryLockingPlugin(MemoryOptions options) : m_state(std::make_unique<State>())
{
	m_state->options = options;
}

MemoryLockingPlugin::~MemoryLockingPlugin() = default;

Outcome<std::optional<LockHandle>>
MemoryLockingPlugin::try_lock_outcome(std::string_view key, std::uint64_t ttl_ms)
{
	return try_lock_for_outcome(key, ttl_ms, std::chrono::milliseconds::zero());
}

Outcome<std::optional<LockHandle>>
MemoryLockingPlugin::try_lock_for_outcome(std::string_view key, std::uint64_t ttl_ms,
										  std::chrono::milliseconds wait)
{
	const MemoryOptions &opt = m_state->options;
	if (auto ok = detail::check_key("try_lock", key, opt.max_key_length); !ok)
		return std::unexpected(std::move(ok.error()));
	if (auto ok = detail::check_ttl("try_lock", ttl_ms, opt.max_ttl_ms); !ok)
		return std::unexpected(std::move(ok.error()));
	if (wait < std::chrono::milliseconds::zero())
		return std::unexpected(bad_wait(wait));
	auto lock_id = random_uuid_v4();
	if (!lock_id)
		return std::unexpected(detail::make_failure(FailureKind::Server,
													detail::failure("try_lock", lock_id.error())));

	State &st = *m_state;
	std::unique_lock lock(st.mutex);
	const auto start = Clock::now();
	if (!st.queues.contains(key))
	{
		auto r = st.grant(key, ttl_ms, *lock_id, start);
		if (!r || r->has_value() || wait == std::chrono::milliseconds::zero())
			return r;
	}
	else if (wait == std::chrono::milliseconds::zero())
		return std::optional<LockHandle>{}; // waiters queued: the key is theirs first

	// Join the key's queue at the tail and sleep until at the head and the key is free.
	const auto deadline = start + wait;
	Waiter self;
	auto q = st.queues.try_emplace(std::string(key)).first;
	q->second.push_back(&self);
	for (;;)
	{
		const auto now = Clock::now();
		auto wake_at = deadline;
		if (q->second.front() == &self)
		{
			auto r = st.grant(key, ttl_ms, *lock_id, now);
			if (!r || r->has_value())
			{
				st.leave(q, &self);
				return r;
			}
			wake_at = std::min(wake_at, st.leases.find(key)->second.expires_at);
		}
		if (now >= deadline)
		{
			st.leave(q, &self);
			return std::optional<LockHandle>{}; // the bound passed: contention
		}
		// A relative wait (condition_variable measures it on steady_clock), re-checked
		// against BootClock by the loop.
		self.cv.wait_for(lock, wake_at - now);
	}
}

Outcome<void>
MemoryLockingPlugin::renew_outcome(const LockHandle &handle)
{
	const MemoryOptions &opt = m_state->options;
	if (auto ok = detail::check_handle("renew", handle, opt.max_key_length, true); !ok)
		return ok;
	if (auto ok = detail::check_ttl("renew", handle.ttl_ms, opt.max_ttl_ms); !ok)
		return ok;
	const std::string lock_id = *detail::canonical_uuid(handle.lock_id);

	std::lock_guard guard(m_state->mutex);
	const auto now = Clock::now();
	Lease *lease = m_state->held(handle.key, lock_id, now);
	if (lease == nullptr)
		return std::unexpected(detail::lock_lost(handle.key));
	lease->expires_at = now + std::chrono::milliseconds(handle.ttl_ms);
	return {};
}

Outcome<void>
MemoryLockingPlugin::release_outcome(LockHandle handle)
{
	if (auto ok = detail::check_handle("release", handle, m_state->options.max_key_length, true);
		!ok)
		return ok;
	const std::string lock_id = *detail::canonical_uuid(handle.lock_id);

	std::lock_guard guard(m_state->mutex);
	if (m_state->held(handle.key, lock_id, Clock::now()) != nullptr)
	{
		m_state->leases.erase(handle.key);
		m_state->wake_head(handle.key);
	}
	return {}; // not held under this lock_id: a silent no-op
}

Result<std::optional<LockHandle>>
MemoryLockingPlugin::try_lock(std::string_view key, std::uint64_t ttl_ms)
{
	return to_result(try_lock_outcome(key, ttl_ms));
}

Result<std::optional<LockHandle>>
MemoryLockingPlugin::try_lock_for(std::string_view key, std::uint64_t ttl_ms,
								  std::chrono::milliseconds wait)
{
	return to_result(try_lock_for_outcome(key, ttl_ms, wait));
}

Result<void>
MemoryLockingPlugin::renew(const LockHandle &handle)
{
	return to_result(renew_outcome(handle));
}

Result<void>
MemoryLockingPlugin::release(LockHandle handle)
{
	return to_result(release_outcome(std::move(handle)));
}

Result<void>
MemoryLockingPlugin::cleanup()
{
	std::lock_guard guard(m_state->mutex);
	m_state->leases.clear();
	for (auto &[key, queue] : m_state->queues)
		queue.front()->cv.notify_one();
	return {};
}

} // namespace lockext
