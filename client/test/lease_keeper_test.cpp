/*
 * lease_keeper_test.cpp
 *     LeaseKeeper timing and failure handling, on the memory backend behind a
 *     decorator that injects renew failures and delays. (The conformance suite runs
 *     the keeper's happy path and take-over against every backend.)
 */
#include <gtest/gtest.h>

#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <type_traits>
#include <thread>

#include <lockext/lease_keeper.hpp>
#include <lockext/memory_locking_plugin.hpp>
#include <lockext/scoped_lease.hpp>

#include "test_support.hpp"

using namespace std::chrono_literals;
using Clock = lockext::BootClock;
using lockext::LeaseKeeper;
using lockext::LockHandle;
using lockext::Result;
using lockext::test::LostLog;

namespace
{

/* Forwards to a memory backend; renew can be made to fail, or its reply to arrive late
 * (the renew itself takes effect at once). */
class FaultyRenew final : public lockext::LockingPlugin
{
  public:
	std::string_view name() const override
	{
		return m_inner.name();
	}
	Result<std::optional<LockHandle>> try_lock(std::string_view key, std::uint64_t ttl) override
	{
		return m_inner.try_lock(key, ttl);
	}
	Result<void> renew(const LockHandle &h) override
	{
		++renews;
		if (fail)
			++failed;
		Result<void> out =
			fail ? std::unexpected("renew failed: connection failed: injected failure")
				 : m_inner.renew(h);
		std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms.load())); // a slow reply
		return out;
	}
	Result<void> release(LockHandle h) override
	{
		return m_inner.release(std::move(h));
	}
	/* What the keeper calls: the injected failure is a lost connection. */
	lockext::Outcome<void> renew_outcome(const LockHandle &h) override
	{
		++renews;
		if (fail)
			++failed;
		lockext::Outcome<void> out =
			fail ? std::unexpected(
					   lockext::Failure{lockext::FailureKind::ConnectionLost, "", true,
										"renew failed: connection failed: injected failure"})
				 : m_inner.renew_outcome(h);
		std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms.load())); // a slow reply
		return out;
	}

	std::atomic<bool> fail{false};
	std::atomic<int> delay_ms{0};
	std::atomic<int> renews{0};
	std::atomic<int> failed{0};

  private:
	lockext::MemoryLockingPlugin m_inner;
};

LockHandle
grant(lockext::LockingPlugin &plugin, std::uint64_t ttl)
{
	auto r = plugin.try_lock(lockext::test::unique_key("keeper"), ttl);
	EXPECT_TRUE(r && r->has_value());
	return r && r->has_value() ? **r : LockHandle{};
}

TEST(LeaseKeeper, TransientRenewFailuresAreRetriedWithinTheWindow)
{
	FaultyRenew plugin;
	LostLog log;
	LeaseKeeper keeper(plugin, grant(plugin, 600), log.callback());
	std::this_thread::sleep_for(250ms); // one renew at ~200 ms: valid until ~800 ms
	plugin.fail = true; // 300 ms of failures from the renew at ~400 ms on, retried every ~60 ms
	std::this_thread::sleep_for(300ms);
	plugin.fail = false;
	const int during = plugin.renews.load();
	std::this_thread::sleep_for(800ms);
	EXPECT_FALSE(keeper.lost()) << keeper.lost_reason().value_or("");
	EXPECT_GE(plugin.failed.load(), 2) << "failed renews should be retried at ~ttl/10";
	EXPECT_GT(plugin.renews.load(), during) << "renewing must resume after the failures";
	EXPECT_TRUE(log.calls.empty());
	EXPECT_TRUE(keeper.release().has_value());
}

TEST(LeaseKeeper, PersistentFailureIsLossExactlyAtTheEndOfTheKnownWindow)
{
	FaultyRenew plugin;
	plugin.fail = true;
	LostLog log;
	const auto before = Clock::now();
	LeaseKeeper keeper(plugin, grant(plugin, 400), log.callback(), {}, before);
	EXPECT_EQ(keeper.valid_until(), before + 400ms);
	std::this_thread::sleep_until(before + 200ms);
	EXPECT_FALSE(keeper.lost());
	ASSERT_TRUE(log.wait(1s));
	const auto [why, at] = log.calls.front();
	EXPECT_TRUE(keeper.lost());
	EXPECT_GE(at, before + 400ms) << "reported lost before the window ended";
	EXPECT_LT(at, before + 900ms) << "reported lost late";
	EXPECT_NE(why.find("lease ran out"), std::string::npos) << why;
	EXPECT_NE(why.find("injected failure"), std::string::npos) << "should carry the last error";
}

/* A renew in flight past the window: lost() turns true on time, stays true after
 * the renew returns successfully, and the callback says the lease ran out. */
TEST(LeaseKeeper, RenewFinishingAfterTheWindowDoesNotReviveTheLease)
{
	FaultyRenew plugin;
	plugin.delay_ms = 400;
	LostLog log;
	const auto before = Clock::now();
	LeaseKeeper keeper(plugin, grant(plugin, 300), log.callback(), {}, before);
	std::this_thread::sleep_until(before + 310ms); // first renew (at ~100 ms) still running
	EXPECT_TRUE(keeper.lost()) << "lost() must be exact even while a renew blocks";
	ASSERT_TRUE(log.wait(1s));
	EXPECT_TRUE(keeper.lost());
	EXPECT_NE(log.calls.front().first.find("lease ran out"), std::string::npos);
	keeper.stop();
	EXPECT_EQ(log.calls.size(), 1u);
}

TEST(LeaseKeeper, StopEndsRenewingWithoutReleasing)
{
	FaultyRenew plugin;
	LockHandle h = grant(plugin, 600);
	{
		LeaseKeeper keeper(plugin, h);
		std::this_thread::sleep_for(250ms); // one renew at ~200 ms
		keeper.stop();
		const int renews = plugin.renews.load();
		EXPECT_GE(renews, 1);
		std::this_thread::sleep_for(250ms);
		EXPECT_EQ(plugin.renews.load(), renews) << "renewed after stop()";
		auto other = plugin.try_lock(h.key, 1000);
		ASSERT_TRUE(other.has_value());
		EXPECT_FALSE(other->has_value()) << "stop() must not release";
	}
	std::this_thread::sleep_for(600ms);
	auto later = plugin.try_lock(h.key, 1000);
	ASSERT_TRUE(later.has_value());
	EXPECT_TRUE(later->has_value()) << "after stop() the lease runs out by its TTL";
}

/* Item 7: an interval >= the TTL is a programming error (the lease would end before
 * its first renew): std::invalid_argument from the constructor. */
TEST(LeaseKeeper, IntervalNotBelowTheTtlIsRejected)
{
	FaultyRenew plugin;
	LockHandle h = grant(plugin, 300);
	lockext::LeaseKeeperOptions options;
	options.interval = 300ms;
	EXPECT_THROW(LeaseKeeper(plugin, h, {}, options), std::invalid_argument);
	options.interval = 299ms;
	EXPECT_NO_THROW(LeaseKeeper(plugin, h, {}, options));
	// The default interval of a tiny TTL is fine (at least 1 ms).
	LockHandle tiny = grant(plugin, 2);
	EXPECT_NO_THROW(LeaseKeeper(plugin, tiny));
}

/* Item 7: an exception from on_lost must not terminate the process. */
TEST(LeaseKeeper, ThrowingLostCallbackDoesNotTerminate)
{
	FaultyRenew plugin;
	plugin.fail = true;
	std::atomic<int> calls{0};
	LeaseKeeper keeper(plugin, grant(plugin, 200),
					   [&](const std::string &)
					   {
						   ++calls;
						   throw std::runtime_error("callback failed");
					   });
	std::this_thread::sleep_for(500ms);
	EXPECT_TRUE(keeper.lost());
	EXPECT_EQ(calls.load(), 1);
	EXPECT_TRUE(keeper.lost_reason().has_value());
}

/* Item 9: LockLost is recognised by FailureKind, not by message text: a renew whose
 * message merely starts like a lost lock but is a lost connection is retried. */
TEST(LeaseKeeper, DecidesOnTheFailureKindNotOnTheMessage)
{
	class Misleading final : public lockext::LockingPlugin
	{
	  public:
		std::string_view name() const override
		{
			return "misleading";
		}
		Result<std::optional<LockHandle>> try_lock(std::string_view k, std::uint64_t t) override
		{
			return m_inner.try_lock(k, t);
		}
		Result<void> renew(const LockHandle &h) override
		{
			return m_inner.renew(h);
		}
		Result<void> release(LockHandle h) override
		{
			return m_inner.release(std::move(h));
		}
		lockext::Outcome<void> renew_outcome(const LockHandle &h) override
		{
			if (++calls == 1)
				return std::unexpected(
					lockext::Failure{lockext::FailureKind::ConnectionLost, "", true,
									 "renew failed: lock lost: '" + h.key + "' (just words)"});
			return m_inner.renew_outcome(h);
		}
		std::atomic<int> calls{0};
		lockext::MemoryLockingPlugin m_inner;
	} plugin;
	LostLog log;
	LeaseKeeper keeper(plugin, grant(plugin, 600), log.callback());
	std::this_thread::sleep_for(900ms);
	EXPECT_FALSE(keeper.lost()) << keeper.lost_reason().value_or("");
	EXPECT_GE(plugin.calls.load(), 2);
	EXPECT_TRUE(keeper.release().has_value());
}

/* Item 7: the keeper's clock is CLOCK_BOOTTIME (keeps counting during suspend). */
TEST(LeaseKeeper, DeadlinesAreOnBootClock)
{
	static_assert(std::is_same_v<LeaseKeeper::Clock, lockext::BootClock>);
	timespec ts{};
	ASSERT_EQ(clock_gettime(CLOCK_BOOTTIME, &ts), 0);
	const auto boot = std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
	const auto ours = lockext::BootClock::now().time_since_epoch();
	EXPECT_LT(std::chrono::abs(ours - boot), 50ms);
	FaultyRenew plugin;
	const auto before = lockext::BootClock::now();
	LeaseKeeper keeper(plugin, grant(plugin, 5000), {}, {}, before);
	EXPECT_EQ(keeper.valid_until(), before + 5000ms);
	// The 1.0 overload (steady_clock acquired_at) converts by distance from now.
	const auto steady_before = std::chrono::steady_clock::now() - 1000ms;
	LeaseKeeper old_style(plugin, grant(plugin, 5000), {}, {}, steady_before);
	const auto expected = lockext::BootClock::now() - 1000ms + 5000ms;
	EXPECT_LT(std::chrono::abs(old_style.valid_until() - expected), 50ms);
}

/* Item 11: hold_at_least beyond the backend's longest TTL: release() renews in steps of
 * the lease's ttl_ms until the rest fits in one renew, so the key stays held until
 * acquisition + hold_at_least and no longer. */
TEST(ScopedLease, HoldAtLeastAboveTheMaximumTtlRenewsInSteps)
{
	lockext::MemoryOptions options;
	options.max_ttl_ms = 1000;
	lockext::MemoryLockingPlugin plugin(options);
	const std::string k = lockext::test::unique_key("steps");
	lockext::ScopedLeaseOptions lo;
	lo.hold_at_least = 1800ms;
	const auto start = lockext::BootClock::now();
	auto got = lockext::ScopedLease::acquire(plugin, k, 300, lo);
	ASSERT_TRUE(got && got->has_value());
	std::atomic<bool> released{false};
	std::thread waiter(
		[&]
		{
			auto r = (*got)->release(); // blocks until the rest fits in 300 ms
			EXPECT_TRUE(r.has_value()) << r.error().message;
			released = true;
		});
	std::this_thread::sleep_until(start + 1300ms);
	auto mid = plugin.try_lock(k, 100);
	ASSERT_TRUE(mid.has_value());
	EXPECT_FALSE(mid->has_value()) << "the key must be held past several 300 ms TTLs";
	waiter.join();
	EXPECT_TRUE(released.load());
	EXPECT_GE(lockext::BootClock::now() - start, 1800ms - 300ms - 50ms);
	std::this_thread::sleep_until(start + 1700ms);
	auto late = plugin.try_lock(k, 100);
	ASSERT_TRUE(late.has_value());
	EXPECT_FALSE(late->has_value()) << "held until start + hold_at_least";
	std::this_thread::sleep_until(start + 2000ms);
	auto after = plugin.try_lock(k, 100);
	ASSERT_TRUE(after.has_value());
	EXPECT_TRUE(after->has_value()) << "the hold must end at start + hold_at_least";
}

} // namespace
