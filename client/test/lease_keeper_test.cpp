/*
 * lease_keeper_test.cpp
 *     LeaseKeeper timing and failure handling, on the memory backend behind a
 *     decorator that injects renew failures and delays. (The conformance suite runs
 *     the keeper's happy path and take-over against every backend.)
 */
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <lockext/lease_keeper.hpp>
#include <lockext/memory_locking_plugin.hpp>

#include "test_support.hpp"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
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

} // namespace
