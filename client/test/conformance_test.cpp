/*
 * conformance_test.cpp
 *     The LockingPlugin contract (spec §1, §3), run unchanged against every backend:
 *     memory, pg with named prepared statements, pg with unnamed statements, and pg
 *     through PgBouncer in transaction pooling mode (unnamed statements).
 *
 * Every test uses keys unique to the test and the run, so runs never interfere, and
 * short TTLs (50-300 ms) with sleeps for the expiry cases.
 */
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <chrono>
#include <map>
#include <mutex>
#include <numeric>
#include <cctype>
#include <thread>

#include <lockext/errors.hpp>
#include <lockext/lease_keeper.hpp>
#include <lockext/scoped_lease.hpp>
#include <lockext/memory_locking_plugin.hpp>

#include "errors_internal.hpp" // the classifier, compiled into this binary (src/errors.cpp)
#include "test_support.hpp"

using namespace std::chrono_literals;
using lockext::LockHandle;
using lockext::LockingPlugin;

namespace
{

/* Canonical lower-case UUIDv4 text: 8-4-4-4-12 hex digits, version 4, variant 10xx.
 * (Hand-written: std::regex trips a GCC 12 -Wmaybe-uninitialized false positive.) */
bool
is_uuid_v4(const std::string &s)
{
	if (s.size() != 36 || s[14] != '4' ||
		std::string_view("89ab").find(s[19]) == std::string_view::npos)
		return false;
	for (std::size_t i = 0; i < s.size(); ++i)
	{
		const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
		if (dash ? s[i] != '-'
				 : std::string_view("0123456789abcdef").find(s[i]) == std::string_view::npos)
			return false;
	}
	return true;
}

class Conformance : public ::testing::TestWithParam<lockext::test::Backend>
{
  protected:
	void SetUp() override
	{
		std::string why;
		m_plugin = GetParam().make(why);
		if (!m_plugin)
			GTEST_SKIP() << GetParam().label << ": " << why;
	}

	void TearDown() override
	{
		if (m_plugin)
		{
			EXPECT_TRUE(m_plugin->cleanup().has_value());
		}
	}

	std::string key(const std::string &suffix = "k") const
	{
		return lockext::test::unique_key(lockext::test::current_test_name() + "-" + suffix);
	}

	/* try_lock that must grant. */
	LockHandle grant(const std::string &k, std::uint64_t ttl_ms)
	{
		auto r = m_plugin->try_lock(k, ttl_ms);
		EXPECT_TRUE(r.has_value()) << r.error();
		if (!r)
			return {};
		EXPECT_TRUE(r->has_value()) << "contention on " << k;
		return r->value_or(LockHandle{});
	}

	/* true if try_lock reports contention (an error fails the test). */
	bool contended(const std::string &k)
	{
		auto r = m_plugin->try_lock(k, 1000);
		EXPECT_TRUE(r.has_value()) << r.error();
		if (r && r->has_value())
		{
			EXPECT_TRUE(m_plugin->release(**r).has_value());
			return false;
		}
		return r.has_value();
	}

	/* The holder's handle with a well-formed lock_id nobody was granted. */
	static LockHandle stranger_of(LockHandle holder)
	{
		holder.lock_id = "00000000-0000-4000-8000-000000000000";
		return holder;
	}

	std::unique_ptr<LockingPlugin> m_plugin;
};

TEST_P(Conformance, NameIsTheBackendName)
{
	const std::string label = GetParam().label;
	EXPECT_EQ(m_plugin->name(), label == "memory" ? "memory" : "pg");
}

TEST_P(Conformance, GrantReturnsAFullHandle)
{
	const std::string k = key();
	LockHandle h = grant(k, 30000);
	EXPECT_EQ(h.key, k);
	EXPECT_EQ(h.ttl_ms, 30000u);
	EXPECT_GT(h.fence, 0);
	EXPECT_TRUE(is_uuid_v4(h.lock_id)) << h.lock_id;
	EXPECT_TRUE(m_plugin->release(h).has_value());
}

TEST_P(Conformance, ContentionIsAValueWithoutHandle)
{
	const std::string k = key();
	LockHandle h = grant(k, 30000);
	auto second = m_plugin->try_lock(k, 30000);
	ASSERT_TRUE(second.has_value()) << "contention must not be an error: " << second.error();
	EXPECT_FALSE(second->has_value());
	EXPECT_TRUE(m_plugin->release(h).has_value());
}

TEST_P(Conformance, ReleaseFreesTheKeyAndTheNextGrantHasAHigherFence)
{
	const std::string k = key();
	LockHandle first = grant(k, 30000);
	ASSERT_TRUE(m_plugin->release(first).has_value());
	LockHandle second = grant(k, 30000);
	EXPECT_NE(second.lock_id, first.lock_id);
	EXPECT_GT(second.fence, first.fence);
	EXPECT_TRUE(m_plugin->release(second).has_value());
}

TEST_P(Conformance, ReleaseWithAForeignLockIdIsASilentNoOp)
{
	const std::string k = key();
	LockHandle holder = grant(k, 30000);
	const LockHandle stranger = stranger_of(holder);
	EXPECT_TRUE(m_plugin->release(stranger).has_value());
	EXPECT_TRUE(contended(k)) << "a foreign release must not free the key";
	EXPECT_TRUE(m_plugin->renew(holder).has_value());
	EXPECT_TRUE(m_plugin->release(holder).has_value());
}

TEST_P(Conformance, ReleaseTwiceAndReleaseOfAnotherKeysIdSucceed)
{
	const std::string k1 = key("a"), k2 = key("b");
	LockHandle h1 = grant(k1, 30000);
	LockHandle h2 = grant(k2, 30000);
	LockHandle crossed = h2;
	crossed.lock_id = h1.lock_id; // h1's id does not own k2
	EXPECT_TRUE(m_plugin->release(crossed).has_value());
	EXPECT_TRUE(contended(k2));
	EXPECT_TRUE(m_plugin->release(h1).has_value());
	EXPECT_TRUE(m_plugin->release(h1).has_value()) << "a second release is a no-op";
	EXPECT_TRUE(m_plugin->release(h2).has_value());
}

TEST_P(Conformance, RenewExtendsTheLease)
{
	const std::string k = key();
	LockHandle h = grant(k, 600);
	std::this_thread::sleep_for(400ms);
	ASSERT_TRUE(m_plugin->renew(h).has_value());
	std::this_thread::sleep_for(400ms); // 800 ms after the grant, 400 ms after the renew
	EXPECT_TRUE(contended(k)) << "the renewed lease must still be held";
	EXPECT_TRUE(m_plugin->release(h).has_value());
}

TEST_P(Conformance, RenewWithAForeignLockIdFailsAndLeavesTheHolder)
{
	const std::string k = key();
	LockHandle holder = grant(k, 30000);
	const LockHandle stranger = stranger_of(holder);
	auto r = m_plugin->renew(stranger);
	ASSERT_FALSE(r.has_value());
	EXPECT_NE(r.error().find("lock lost"), std::string::npos) << r.error();
	EXPECT_TRUE(contended(k));
	EXPECT_TRUE(m_plugin->release(holder).has_value());
}

TEST_P(Conformance, LeaseExpiresAfterItsTtl)
{
	const std::string k = key();
	LockHandle h = grant(k, 300);
	EXPECT_TRUE(contended(k));
	std::this_thread::sleep_for(400ms);
	LockHandle next = grant(k, 30000);
	EXPECT_GT(next.fence, h.fence);
	EXPECT_TRUE(m_plugin->release(next).has_value());
}

TEST_P(Conformance, RenewAfterExpiryFailsEvenIfNobodyTookTheKey)
{
	const std::string k = key();
	LockHandle h = grant(k, 50);
	std::this_thread::sleep_for(150ms);
	auto r = m_plugin->renew(h);
	ASSERT_FALSE(r.has_value()) << "renew must not resurrect an expired lease";
	EXPECT_NE(r.error().find("lock lost"), std::string::npos) << r.error();
	EXPECT_NE(r.error().find(k), std::string::npos) << r.error();
}

TEST_P(Conformance, StaleCallsAfterExpiryNeverTouchTheNewHolder)
{
	const std::string k = key();
	LockHandle stale = grant(k, 50);
	std::this_thread::sleep_for(150ms);
	LockHandle fresh = grant(k, 30000);
	EXPECT_GT(fresh.fence, stale.fence);
	EXPECT_FALSE(m_plugin->renew(stale).has_value());
	EXPECT_TRUE(m_plugin->release(stale).has_value()) << "stale release is a silent no-op";
	EXPECT_TRUE(contended(k)) << "the stale release freed the new holder's lock";
	EXPECT_TRUE(m_plugin->renew(fresh).has_value());
	EXPECT_TRUE(m_plugin->release(fresh).has_value());
	LockHandle after = grant(k, 30000);
	EXPECT_GT(after.fence, fresh.fence);
	EXPECT_TRUE(m_plugin->release(after).has_value());
}

TEST_P(Conformance, FencesStrictlyIncreaseAcrossKeysAndGrants)
{
	std::int64_t last = 0;
	const std::string same = key("same");
	for (int i = 0; i < 10; ++i)
	{
		for (const std::string &k : {same, key("other")})
		{
			LockHandle h = grant(k, 30000);
			EXPECT_GT(h.fence, last);
			last = h.fence;
			EXPECT_TRUE(m_plugin->release(h).has_value());
		}
	}
}

TEST_P(Conformance, BadInputIsAnErrorNeverContention)
{
	auto expect_error = [](const auto &r, const char *needle, const char *what)
	{
		ASSERT_FALSE(r.has_value()) << what << " must be an error";
		EXPECT_NE(r.error().find(needle), std::string::npos) << what << ": " << r.error();
	};
	expect_error(m_plugin->try_lock("", 1000), "empty", "empty key");
	expect_error(m_plugin->try_lock(key(), 0), "ttl_ms", "ttl 0");
	expect_error(m_plugin->try_lock(key(), 300001), "ttl_ms", "ttl above the max");
	expect_error(m_plugin->try_lock(key(), UINT64_MAX), "ttl_ms", "ttl 2^64-1");
	expect_error(m_plugin->try_lock(std::string(100000, 'x'), 1000), "key", "100 kB key");

	const std::string k = key();
	LockHandle h = grant(k, 30000);
	LockHandle zero_ttl = h;
	zero_ttl.ttl_ms = 0;
	expect_error(m_plugin->renew(zero_ttl), "ttl_ms", "renew with ttl 0");
	LockHandle big_ttl = h;
	big_ttl.ttl_ms = 300001;
	expect_error(m_plugin->renew(big_ttl), "ttl_ms", "renew with ttl above the max");
	LockHandle no_key = h;
	no_key.key.clear();
	expect_error(m_plugin->renew(no_key), "empty", "renew with an empty key");
	expect_error(m_plugin->release(no_key), "empty", "release with an empty key");
	EXPECT_TRUE(contended(k)) << "failed calls must not have touched the lease";
	EXPECT_TRUE(m_plugin->release(h).has_value());
}

TEST_P(Conformance, HandleFromOneCallWorksAfterCopying)
{
	const std::string k = key();
	LockHandle h = grant(k, 30000);
	LockHandle copy = h;
	EXPECT_TRUE(m_plugin->renew(copy).has_value());
	EXPECT_TRUE(m_plugin->release(std::move(copy)).has_value());
	EXPECT_FALSE(contended(k));
}

/* 16 threads on 3 keys: never two holders of a key at once, fences per key increase
 * in holding order, no errors, and every thread makes progress overall. */
TEST_P(Conformance, SixteenThreadsNeverOverlap)
{
	const std::vector<std::string> keys = {key("a"), key("b"), key("c")};
	std::array<std::atomic<int>, 3> holders{};
	std::array<std::atomic<std::int64_t>, 3> last_fence{}; // written by the key's holder
	std::atomic<int> grants{0}, contentions{0}, overlaps{0}, fence_regressions{0};
	std::mutex errors_mutex;
	std::vector<std::string> errors;
	const auto stop_at = lockext::BootClock::now() + 1500ms;

	auto worker = [&](int id)
	{
		for (int i = 0; lockext::BootClock::now() < stop_at; ++i)
		{
			const std::size_t slot = static_cast<std::size_t>(id + i) % keys.size();
			auto r = m_plugin->try_lock(keys[slot], 5000);
			if (!r)
			{
				std::lock_guard g(errors_mutex);
				errors.push_back(r.error());
				continue;
			}
			if (!r->has_value())
			{
				++contentions;
				std::this_thread::sleep_for(1ms);
				continue;
			}
			if (holders[slot].fetch_add(1) != 0)
				++overlaps;
			if ((*r)->fence <= last_fence[slot].load())
				++fence_regressions;
			last_fence[slot].store((*r)->fence);
			++grants;
			std::this_thread::sleep_for(500us);
			holders[slot].fetch_sub(1);
			if (auto rel = m_plugin->release(**r); !rel)
			{
				std::lock_guard g(errors_mutex);
				errors.push_back(rel.error());
			}
		}
	};
	std::vector<std::thread> threads;
	for (int t = 0; t < 16; ++t)
		threads.emplace_back(worker, t);
	for (auto &t : threads)
		t.join();

	EXPECT_EQ(overlaps.load(), 0);
	EXPECT_EQ(fence_regressions.load(), 0);
	EXPECT_TRUE(errors.empty()) << errors.size() << " errors, first: " << errors.front();
	EXPECT_GT(grants.load(), 10);
	EXPECT_GT(contentions.load(), 0);
	RecordProperty("grants", grants.load());
	RecordProperty("contentions", contentions.load());
}

/* The lease keeper keeps a 450 ms lease for more than two TTLs and releases it. */
TEST_P(Conformance, KeeperHoldsTheLeaseWellPastItsTtl)
{
	const std::string k = key();
	const auto before = lockext::BootClock::now();
	LockHandle h = grant(k, 450);
	std::atomic<int> calls{0};
	lockext::LeaseKeeper keeper(
		*m_plugin, h, [&](const std::string &) { ++calls; }, {}, before);
	std::this_thread::sleep_for(1200ms);
	EXPECT_FALSE(keeper.lost()) << keeper.lost_reason().value_or("");
	EXPECT_TRUE(contended(k)) << "the keeper must have renewed the lease";
	EXPECT_GT(keeper.valid_until(), lockext::BootClock::now());
	EXPECT_TRUE(keeper.release().has_value());
	EXPECT_FALSE(contended(k)) << "release() must free the key";
	EXPECT_EQ(calls.load(), 0);
}

/* Someone releases the lease behind the keeper's back and another holder takes the
 * key: the keeper reports "lock lost" once and never touches the new holder. */
TEST_P(Conformance, KeeperReportsATakenOverLeaseOnce)
{
	const std::string k = key();
	LockHandle h = grant(k, 300);
	std::mutex mutex;
	std::condition_variable cv;
	std::vector<std::string> reasons;
	lockext::LeaseKeeper keeper(*m_plugin, h,
								[&](const std::string &why)
								{
									std::lock_guard g(mutex);
									reasons.push_back(why);
									cv.notify_all();
								});
	ASSERT_TRUE(m_plugin->release(h).has_value());
	LockHandle next = grant(k, 30000);
	{
		std::unique_lock lock(mutex);
		ASSERT_TRUE(cv.wait_for(lock, 2s, [&] { return !reasons.empty(); }));
	}
	std::this_thread::sleep_for(250ms); // no second report
	std::lock_guard g(mutex);
	ASSERT_EQ(reasons.size(), 1u);
	EXPECT_NE(reasons[0].find("lock lost"), std::string::npos) << reasons[0];
	EXPECT_TRUE(keeper.lost());
	EXPECT_EQ(keeper.lost_reason().value_or(""), reasons[0]);
	EXPECT_TRUE(keeper.release().has_value()) << "releasing a lost lease is a no-op";
	EXPECT_TRUE(contended(k)) << "the keeper touched the new holder";
	EXPECT_TRUE(m_plugin->release(next).has_value());
}

/* Spec §9: a malformed lock_id is bad input in renew AND release, in every backend;
 * only a well-formed lock_id that is not the holder's makes release a no-op. */
TEST_P(Conformance, MalformedLockIdIsBadInputInRenewAndRelease)
{
	const std::string k = key();
	LockHandle h = grant(k, 5000);
	for (const char *bad : {"not-a-uuid", "00000000-0000-4000-8000-00000000000", "xyz"})
	{
		LockHandle broken = h;
		broken.lock_id = bad;
		auto renewed = m_plugin->renew_outcome(broken);
		ASSERT_FALSE(renewed.has_value()) << bad;
		EXPECT_EQ(renewed.error().kind, lockext::FailureKind::BadInput)
			<< bad << ": " << renewed.error().message;
		EXPECT_TRUE(renewed.error().message.starts_with("renew failed: "))
			<< renewed.error().message;
		auto released = m_plugin->release_outcome(broken);
		ASSERT_FALSE(released.has_value()) << bad << ": a malformed lock_id is not a no-op";
		EXPECT_EQ(released.error().kind, lockext::FailureKind::BadInput)
			<< bad << ": " << released.error().message;
		auto released_text = m_plugin->release(broken);
		ASSERT_FALSE(released_text.has_value());
		EXPECT_EQ(released_text.error(), released.error().message);
	}
	// Upper case is the same UUID (PostgreSQL's uuid input accepts it).
	LockHandle upper = h;
	for (char &c : upper.lock_id)
		c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
	EXPECT_TRUE(m_plugin->renew(upper).has_value());
	EXPECT_TRUE(contended(k));
	EXPECT_TRUE(m_plugin->release(h).has_value());
}

/* The classified calls (errors.hpp) agree with the string calls by construction. */
TEST_P(Conformance, ClassifiedFailuresAgreeWithTheErrorStrings)
{
	const std::string k = key();
	LockHandle h = grant(k, 5000);
	auto lost = m_plugin->renew_outcome(stranger_of(h));
	ASSERT_FALSE(lost.has_value());
	EXPECT_EQ(lost.error().kind, lockext::FailureKind::LockLost) << lost.error().message;
	EXPECT_FALSE(lost.error().retryable());
	EXPECT_FALSE(lost.error().outcome_unknown);
	EXPECT_EQ(m_plugin->renew(stranger_of(h)).error(), lost.error().message);

	auto held = m_plugin->try_lock_outcome(k, 1000);
	ASSERT_TRUE(held.has_value()) << held.error().message;
	EXPECT_FALSE(held->has_value()) << "contention is a value, never a failure";

	auto zero = m_plugin->try_lock_outcome(key("zero"), 0);
	ASSERT_FALSE(zero.has_value());
	EXPECT_EQ(zero.error().kind, lockext::FailureKind::BadInput) << zero.error().message;
	EXPECT_EQ(m_plugin->try_lock(key("zero"), 0).error(), zero.error().message);
	auto empty = m_plugin->try_lock_outcome("", 1000);
	ASSERT_FALSE(empty.has_value());
	EXPECT_EQ(empty.error().kind, lockext::FailureKind::BadInput);
	EXPECT_EQ(lockext::to_string(lockext::FailureKind::LockLost), "lock_lost");
	EXPECT_TRUE(m_plugin->release_outcome(h).has_value());
}

/* Item 7: the first renew is due at acquired_at + interval, at once when that passed.
 * Told that the lease was acquired 500 ms ago (of a 700 ms TTL, interval 230 ms), the
 * keeper must renew at once; scheduling from construction (old behaviour) renews only
 * after the known window has ended and reports the lease lost. */
TEST_P(Conformance, KeeperRenewsAtOnceWhenAcquiredAtIsLate)
{
	const std::string k = key();
	LockHandle h = grant(k, 700);
	const auto acquired_at = lockext::BootClock::now() - 500ms;
	lockext::test::LostLog log;
	lockext::LeaseKeeper keeper(*m_plugin, h, log.callback(), {}, acquired_at);
	std::this_thread::sleep_for(900ms);
	EXPECT_FALSE(keeper.lost()) << keeper.lost_reason().value_or("");
	EXPECT_EQ(log.count(), 0u);
	EXPECT_TRUE(contended(k));
	EXPECT_TRUE(keeper.release().has_value());
}

/* Item 10: ScopedLease owns the lease and its keeper, releases on destruction, moves. */
TEST_P(Conformance, ScopedLeaseHoldsMovesAndReleasesOnDestruction)
{
	const std::string k = key();
	{
		auto got = lockext::ScopedLease::acquire(*m_plugin, k, 450);
		ASSERT_TRUE(got.has_value()) << got.error().message;
		ASSERT_TRUE(got->has_value()) << "contention on a fresh key";
		lockext::ScopedLease lease = std::move(**got);
		auto again = lockext::ScopedLease::acquire(*m_plugin, k, 450);
		ASSERT_TRUE(again.has_value()) << again.error().message;
		EXPECT_FALSE(again->has_value()) << "a held key must be contention";
		std::this_thread::sleep_for(1000ms); // the keeper renews past the TTL
		EXPECT_FALSE(lease.lost()) << lease.lost_reason().value_or("");
		EXPECT_EQ(lease.handle().key, k);
		EXPECT_GT(lease.handle().fence, 0);
		lockext::ScopedLease moved(std::move(lease));
		EXPECT_FALSE(moved.lost());
		EXPECT_TRUE(contended(k));
	}
	EXPECT_FALSE(contended(k)) << "the destructor must release the lease";

	auto bad = lockext::ScopedLease::acquire(
		*m_plugin, k, 450, {.keeper = {.interval = 450ms}, .on_lost = {}, .hold_at_least = 0ms});
	ASSERT_FALSE(bad.has_value());
	EXPECT_EQ(bad.error().kind, lockext::FailureKind::BadInput) << bad.error().message;
}

/* Item 11: hold_at_least keeps the key until acquisition + hold_at_least when the work
 * ends earlier (renewed once to the remaining time, not released), so a second
 * "host" starting 1 s later sees contention and the job runs once. */
TEST_P(Conformance, ScopedLeaseHoldAtLeastKeepsTheKeyUntilThen)
{
	const std::string k = key();
	int runs = 0;
	const auto host = [&]
	{
		auto got = lockext::ScopedLease::acquire(
			*m_plugin, k, 600, {.keeper = {}, .on_lost = {}, .hold_at_least = 2000ms});
		EXPECT_TRUE(got.has_value()) << got.error().message;
		if (!got || !got->has_value())
			return;
		++runs; // the job: much shorter than the hosts' start-time difference
		auto released = (*got)->release();
		EXPECT_TRUE(released.has_value()) << released.error().message;
		EXPECT_TRUE((*got)->lost()) << "released leases read as lost";
	};
	const auto start = lockext::BootClock::now();
	host();
	std::this_thread::sleep_for(1000ms);
	host(); // a second host, 1 s late
	EXPECT_EQ(runs, 1) << "the job ran twice";
	EXPECT_TRUE(contended(k)) << "held until start + 2 s, beyond its 600 ms TTL";
	std::this_thread::sleep_until(start + 2300ms);
	EXPECT_FALSE(contended(k)) << "the hold must end at start + hold_at_least";
}

/* A ScopedLease whose lease is taken over reports it lost; its destructor then leaves
 * the new holder alone. */
TEST_P(Conformance, ScopedLeaseReportsATakenOverLease)
{
	const std::string k = key();
	LockHandle next;
	{
		auto got = lockext::ScopedLease::acquire(*m_plugin, k, 450);
		ASSERT_TRUE(got && got->has_value());
		lockext::ScopedLease &lease = **got;
		ASSERT_TRUE(m_plugin->release(lease.handle()).has_value()); // behind its back
		next = grant(k, 5000);
		const auto limit = lockext::BootClock::now() + 2s;
		while (!lease.lost() && lockext::BootClock::now() < limit)
			std::this_thread::sleep_for(20ms);
		EXPECT_TRUE(lease.lost());
	}
	EXPECT_TRUE(contended(k)) << "the destructor touched the new holder";
	EXPECT_TRUE(m_plugin->release(next).has_value());
}

/* --- try_lock_for (lockext 1.1): waiting for a held key ------------------------------- */

/* A free key is granted at once, also with a long bound. */
TEST_P(Conformance, TryLockForGrantsAFreeKeyAtOnce)
{
	const std::string k = key();
	const auto t0 = lockext::BootClock::now();
	auto r = m_plugin->try_lock_for(k, 30000, 10s);
	ASSERT_TRUE(r.has_value()) << r.error();
	ASSERT_TRUE(r->has_value());
	EXPECT_LT(lockext::BootClock::now() - t0, 1s);
	EXPECT_EQ((*r)->key, k);
	EXPECT_EQ((*r)->ttl_ms, 30000u);
	EXPECT_TRUE(is_uuid_v4((*r)->lock_id)) << (*r)->lock_id;
	EXPECT_TRUE(m_plugin->release(**r).has_value());
}

/* wait = 0 is try_lock: contention at once, as a value. */
TEST_P(Conformance, TryLockForZeroWaitIsTryLock)
{
	const std::string k = key();
	LockHandle h = grant(k, 30000);
	const auto t0 = lockext::BootClock::now();
	auto r = m_plugin->try_lock_for(k, 30000, 0ms);
	ASSERT_TRUE(r.has_value()) << r.error();
	EXPECT_FALSE(r->has_value());
	EXPECT_LT(lockext::BootClock::now() - t0, 1s);
	EXPECT_TRUE(m_plugin->release(h).has_value());
}

/* A negative wait is bad input with a clear message, never contention. */
TEST_P(Conformance, TryLockForNegativeWaitIsBadInput)
{
	auto r = m_plugin->try_lock_for_outcome(key(), 1000, -5ms);
	ASSERT_FALSE(r.has_value());
	EXPECT_EQ(r.error().kind, lockext::FailureKind::BadInput);
	EXPECT_NE(r.error().message.find("wait must be >= 0 ms (got -5 ms)"), std::string::npos)
		<< r.error().message;
	auto s = m_plugin->try_lock_for(key(), 1000, -5ms);
	ASSERT_FALSE(s.has_value());
	EXPECT_EQ(s.error(), r.error().message);
	auto bad_key = m_plugin->try_lock_for_outcome("", 1000, 100ms);
	ASSERT_FALSE(bad_key.has_value());
	EXPECT_EQ(bad_key.error().kind, lockext::FailureKind::BadInput);
}

/* A held key is granted to the waiter when another thread releases it: promptly (push,
 * not a backoff step) and with a greater fence. */
TEST_P(Conformance, TryLockForGetsTheKeyWhenAnotherThreadReleases)
{
	const std::string k = key();
	LockHandle h = grant(k, 30000);
	std::atomic<std::int64_t> released_at{0};
	std::thread releaser(
		[&]
		{
			std::this_thread::sleep_for(300ms);
			released_at = lockext::BootClock::now().time_since_epoch().count();
			EXPECT_TRUE(m_plugin->release(h).has_value());
		});
	auto r = m_plugin->try_lock_for(k, 30000, 10s);
	const auto got_at = lockext::BootClock::now().time_since_epoch().count();
	releaser.join();
	ASSERT_TRUE(r.has_value()) << r.error();
	ASSERT_TRUE(r->has_value()) << "the bound passed although the key was released";
	EXPECT_GT((*r)->fence, h.fence);
	const auto lag = std::chrono::nanoseconds(got_at - released_at.load());
	EXPECT_LT(lag, 250ms) << "granted " << lag.count() / 1000000 << " ms after the release";
	RecordProperty("handoff_us", static_cast<int>(lag.count() / 1000));
	EXPECT_TRUE(m_plugin->release(**r).has_value());
}

/* The bound passes while the key stays held: a value without a handle, after the bound. */
TEST_P(Conformance, TryLockForBoundPassesIsContention)
{
	const std::string k = key();
	LockHandle h = grant(k, 30000);
	const auto t0 = lockext::BootClock::now();
	auto r = m_plugin->try_lock_for(k, 30000, 400ms);
	const auto took = lockext::BootClock::now() - t0;
	ASSERT_TRUE(r.has_value()) << "contention must not be an error: " << r.error();
	EXPECT_FALSE(r->has_value());
	EXPECT_GE(took, 390ms);
	EXPECT_LT(took, 2s);
	EXPECT_TRUE(m_plugin->release(h).has_value());
	EXPECT_FALSE(contended(k)) << "the timed-out waiter left something behind";
}

/* The holder's lease expires (no release): the waiter is woken and granted. */
TEST_P(Conformance, TryLockForIsWokenByTheHoldersExpiry)
{
	const std::string k = key();
	const auto t0 = lockext::BootClock::now();
	LockHandle h = grant(k, 400);
	auto r = m_plugin->try_lock_for(k, 30000, 10s);
	const auto took = lockext::BootClock::now() - t0;
	ASSERT_TRUE(r.has_value()) << r.error();
	ASSERT_TRUE(r->has_value());
	EXPECT_GT((*r)->fence, h.fence);
	EXPECT_GE(took, 390ms);
	EXPECT_LT(took, 1500ms) << "the waiter was not woken at the holder's expiry";
	EXPECT_TRUE(m_plugin->release(**r).has_value());
}

/* Three threads wait on one key, arriving 250 ms apart: they get it in arrival order,
 * each with a greater fence, and a plain try_lock never barges in between. Through
 * PgBouncer (default_pool_size = 2 in run.sh) one waiter only: a waiting statement holds
 * one of the pooler's server connections for the whole wait, and the release needs the
 * other. */
TEST_P(Conformance, TryLockForServesWaitersFirstComeFirstServed)
{
	const int n = std::string(GetParam().label).starts_with("pgbouncer") ? 1 : 3;
	const std::string k = key();
	LockHandle h = grant(k, 30000);
	std::mutex m;
	std::vector<int> order;
	std::vector<std::int64_t> fences;
	std::vector<std::string> errors;
	std::vector<std::thread> waiters;
	for (int i = 0; i < n; ++i)
	{
		waiters.emplace_back(
			[&, i]
			{
				auto r = m_plugin->try_lock_for(k, 30000, 20s);
				std::lock_guard g(m);
				if (!r)
					errors.push_back(r.error());
				else if (!r->has_value())
					errors.push_back("waiter " + std::to_string(i) + ": bound passed");
				else
				{
					order.push_back(i);
					fences.push_back((*r)->fence);
				}
				if (r && r->has_value())
				{
					std::this_thread::sleep_for(100ms);
					EXPECT_TRUE(m_plugin->release(**r).has_value());
				}
			});
		std::this_thread::sleep_for(250ms); // waiter i is queued before i + 1 starts
	}
	EXPECT_TRUE(contended(k)) << "a plain try_lock barged past the waiters";
	EXPECT_TRUE(m_plugin->release(h).has_value());
	for (auto &t : waiters)
		t.join();
	EXPECT_TRUE(errors.empty()) << errors.front();
	std::vector<int> expected(static_cast<std::size_t>(n));
	std::iota(expected.begin(), expected.end(), 0);
	EXPECT_EQ(order, expected);
	ASSERT_EQ(fences.size(), static_cast<std::size_t>(n));
	EXPECT_GT(fences[0], h.fence);
	for (std::size_t i = 1; i < fences.size(); ++i)
		EXPECT_LT(fences[i - 1], fences[i]);
	EXPECT_FALSE(contended(k));
}

INSTANTIATE_TEST_SUITE_P(Backends, Conformance,
						 ::testing::ValuesIn(lockext::test::conformance_backends()),
						 [](const auto &info) { return info.param.label; });

} // namespace

/* Limits of the memory backend's options (the pg backend's are the server's GUCs). */
TEST(MemoryBackend, FullTableIsAnErrorAndExpiredLeasesAreReclaimed)
{
	lockext::MemoryOptions options;
	options.max_locks = 3;
	lockext::MemoryLockingPlugin plugin(options);
	const std::string prefix = lockext::test::unique_key("full");
	for (int i = 0; i < 2; ++i)
		ASSERT_TRUE(plugin.try_lock(prefix + std::to_string(i), 30000).value().has_value());
	auto short_lived = plugin.try_lock(prefix + "short", 50);
	ASSERT_TRUE(short_lived && short_lived->has_value());
	auto full = plugin.try_lock(prefix + "x", 30000);
	ASSERT_FALSE(full.has_value()) << "a full table must be an error, not contention";
	EXPECT_NE(full.error().find("lock table is full"), std::string::npos) << full.error();
	std::this_thread::sleep_for(100ms);
	auto after = plugin.try_lock(prefix + "x", 30000);
	ASSERT_TRUE(after.has_value()) << after.error();
	EXPECT_TRUE(after->has_value()) << "the expired lease must not count against capacity";
}

TEST(MemoryBackend, OptionsSetTheLimits)
{
	lockext::MemoryOptions options;
	options.max_ttl_ms = 1000;
	options.max_key_length = 4;
	lockext::MemoryLockingPlugin plugin(options);
	EXPECT_TRUE(plugin.try_lock("abcd", 1000).has_value());
	auto long_key = plugin.try_lock("abcde", 1000);
	ASSERT_FALSE(long_key.has_value());
	EXPECT_EQ(long_key.error(),
			  "try_lock failed: lock key must be at most 4 bytes (the key is 5 bytes long)");
	auto long_ttl = plugin.try_lock("k", 1001);
	ASSERT_FALSE(long_ttl.has_value());
	EXPECT_EQ(long_ttl.error(), "try_lock failed: ttl_ms must be between 1 and 1000");
	auto nul = plugin.try_lock(std::string("a\0b", 3), 10);
	ASSERT_FALSE(nul.has_value());
	EXPECT_NE(nul.error().find("NUL"), std::string::npos);
}

TEST(MemoryBackend, CleanupDropsLeasesButFencesKeepIncreasing)
{
	lockext::MemoryLockingPlugin plugin;
	auto first = plugin.try_lock("k", 30000).value().value();
	ASSERT_TRUE(plugin.cleanup().has_value());
	auto second = plugin.try_lock("k", 30000);
	ASSERT_TRUE(second && second->has_value());
	EXPECT_GT((*second)->fence, first.fence);
}

/* A waiter re-arms its timed wait when the holder renews (no early grant), cleanup()
 * wakes it, and a head waiter whose bound passes hands its turn to the next one. */
TEST(MemoryBackend, TryLockForFollowsRenewalsCleanupAndTimedOutHeads)
{
	lockext::MemoryLockingPlugin plugin;
	auto h = plugin.try_lock("k", 300).value().value();
	std::thread renewer(
		[&]
		{
			std::this_thread::sleep_for(200ms);
			EXPECT_TRUE(plugin.renew(h).has_value()); // now expires at ~500 ms
		});
	const auto t0 = lockext::BootClock::now();
	auto r = plugin.try_lock_for("k", 30000, 5s);
	renewer.join();
	ASSERT_TRUE(r && r->has_value());
	EXPECT_GE(lockext::BootClock::now() - t0, 480ms) << "granted before the renewed expiry";
	EXPECT_LT(lockext::BootClock::now() - t0, 1500ms) << "not woken at the renewed expiry";

	// cleanup() drops the lease and wakes the waiter.
	std::thread cleaner(
		[&]
		{
			std::this_thread::sleep_for(150ms);
			EXPECT_TRUE(plugin.cleanup().has_value());
		});
	auto c = plugin.try_lock_for("k", 30000, 5s);
	cleaner.join();
	ASSERT_TRUE(c && c->has_value());

	// A head with a short bound times out; the next waiter (long bound) gets the key at
	// the release, not after its own bound.
	std::optional<LockHandle> second;
	std::thread head([&] { EXPECT_FALSE(plugin.try_lock_for("k", 30000, 200ms).value()); });
	std::this_thread::sleep_for(50ms);
	std::thread next([&] { second = plugin.try_lock_for("k", 30000, 5s).value(); });
	head.join();
	std::this_thread::sleep_for(100ms);
	const auto released = lockext::BootClock::now();
	ASSERT_TRUE(plugin.release(**c).has_value());
	next.join();
	ASSERT_TRUE(second.has_value());
	EXPECT_LT(lockext::BootClock::now() - released, 200ms);
}

/* A third-party plugin that implements only the string calls gets the default
 * try_lock_for: polling with backoff, the same three results. */
TEST(DefaultTryLockFor, PollsUntilGrantedOrTheBoundPasses)
{
	struct ThirdParty final : LockingPlugin
	{
		lockext::MemoryLockingPlugin inner;
		std::atomic<int> calls{0};
		std::string_view name() const override
		{
			return "third-party";
		}
		lockext::Result<std::optional<LockHandle>> try_lock(std::string_view key,
															 std::uint64_t ttl) override
		{
			++calls;
			return inner.try_lock(key, ttl);
		}
		lockext::Result<void> renew(const LockHandle &h) override
		{
			return inner.renew(h);
		}
		lockext::Result<void> release(LockHandle h) override
		{
			return inner.release(std::move(h));
		}
	} plugin;
	auto h = plugin.try_lock("k", 30000).value().value();
	const auto t0 = lockext::BootClock::now();
	auto timed_out = plugin.try_lock_for("k", 30000, 300ms);
	ASSERT_TRUE(timed_out.has_value()) << timed_out.error();
	EXPECT_FALSE(timed_out->has_value());
	EXPECT_GE(lockext::BootClock::now() - t0, 290ms);
	EXPECT_GT(plugin.calls.load(), 2);
	EXPECT_LT(plugin.calls.load(), 40) << "the default polls without backing off";

	std::thread releaser(
		[&]
		{
			std::this_thread::sleep_for(200ms);
			EXPECT_TRUE(plugin.release(h).has_value());
		});
	auto r = plugin.try_lock_for("k", 30000, 5s);
	releaser.join();
	ASSERT_TRUE(r && r->has_value());
	EXPECT_GT((*r)->fence, h.fence);

	auto bad = plugin.try_lock_for_outcome("k", 1000, -1ms);
	ASSERT_FALSE(bad.has_value());
	EXPECT_EQ(bad.error().kind, lockext::FailureKind::BadInput);
	auto err = plugin.try_lock_for_outcome("", 1000, 10ms);
	ASSERT_FALSE(err.has_value());
	EXPECT_EQ(err.error().kind, lockext::FailureKind::Unknown); // only a string to go on
}

/* ---- classification of connect failures (errors.cpp, unit level) ---------------- */

/* libpq's verbose connection errors, as a server with lc_messages = ru_RU / zh_CN /
 * de_DE sends them: the severity word is localized, the SQLSTATE is not. */
TEST(Classify, LocalizedConnectErrorsKeepTheirSqlstate)
{
	using lockext::FailureKind;
	using lockext::detail::classify_connect_failure;
	const std::pair<std::string, std::string> auth[] = {
		{"ru", "connection to server at \"127.0.0.1\", port 5432 failed: ВАЖНО:  28P01: "
			   "пользователь \"app\" не прошёл проверку подлинности (по паролю)"},
		{"zh_CN", "connection to server at \"127.0.0.1\", port 5432 failed: 致命错误:  28P01: "
				  "用户 \"app\" Password 认证失败"},
		{"de", "Verbindung zum Server auf »127.0.0.1«, Port 5432 fehlgeschlagen: FATAL:  28P01: "
			   "Passwort-Authentifizierung für Benutzer »app« fehlgeschlagen"},
		{"en", "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  28P01: password "
			   "authentication failed for user \"app\""},
	};
	for (const auto &[lang, text] : auth)
	{
		const auto c = classify_connect_failure(text, false);
		EXPECT_EQ(c.sqlstate, "28P01") << lang;
		EXPECT_EQ(c.kind, FailureKind::AuthFailed) << lang;
	}
	EXPECT_EQ(
		classify_connect_failure("… failed: ОШИБКА:  3D000: база данных «x» не существует", false)
			.kind,
		FailureKind::Config);
	EXPECT_EQ(
		classify_connect_failure("… failed: ВАЖНО:  53300: слишком много подключений", false).kind,
		FailureKind::Capacity);
	EXPECT_EQ(classify_connect_failure("… failed: ВАЖНО:  57P03: система запускается", false).kind,
			  FailureKind::Unreachable);
	// Not a SQLSTATE: lower case, too short, no ": " after it.
	for (const char *text : {"x failed: Connection refused", "FATAL:  28p01: no",
							 "FATAL:  28P0: no", "FATAL:  28P01 no", "a:  ABCDE:"})
		EXPECT_EQ(classify_connect_failure(text, false).sqlstate, "") << text;
}

/* libpq-side refusals (no SQLSTATE), with libpq's exact strings. */
TEST(Classify, LibpqSideRefusals)
{
	using lockext::FailureKind;
	using lockext::detail::classify_connect_failure;
	EXPECT_EQ(classify_connect_failure("connection to server at \"h\", port 5432 failed: "
									   "fe_sendauth: no password supplied",
									   false)
				  .kind,
			  FailureKind::AuthFailed);
	EXPECT_EQ(classify_connect_failure("localized text", true).kind, FailureKind::AuthFailed)
		<< "PQconnectionNeedsPassword() decides regardless of the text";
	for (const char *text :
		 {"connection to server at \"h\", port 5432 failed: server does not support SSL, but SSL "
		  "was required",
		  "connection to server at \"h\", port 5432 failed: server doesn't support GSSAPI "
		  "encryption, but it was required",
		  "connection to server at \"h\", port 5432 failed: GSSAPI encryption required but was "
		  "impossible (possibly no credential cache, no server support, or using a local "
		  "socket)"})
		EXPECT_EQ(classify_connect_failure(text, false).kind, FailureKind::Config) << text;
	EXPECT_EQ(classify_connect_failure("connection to server at \"h\" (127.0.0.1), port 1 failed: "
									   "Connection refused",
									   false)
				  .kind,
			  FailureKind::Unreachable);
}

/* 25006 (read-only server) is retryable: the call after it connects anew and may reach
 * another host (README, spec §9). */
TEST(Classify, ReadOnlyIsRetryable)
{
	using lockext::FailureKind;
	const auto kind = lockext::detail::classify_statement_sqlstate("25006");
	EXPECT_EQ(kind, FailureKind::Unreachable);
	EXPECT_TRUE(lockext::detail::make_failure(kind, "x", "25006").retryable());
	EXPECT_EQ(lockext::detail::classify_connect_sqlstate("25006"), FailureKind::Unreachable);
}

/* ---- ScopedLease: keeper thread failure, hold_at_least beyond max_ttl ------------ */

namespace
{

/* When set, the next pthread_create in this process fails with EAGAIN (so std::thread
 * throws std::system_error). The real one is the next definition (libc, or a
 * sanitizer runtime's interceptor). */
std::atomic<bool> g_fail_next_thread{false};

} // namespace

extern "C" int
pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *), void *arg)
{
	using Fn = int (*)(pthread_t *, const pthread_attr_t *, void *(*) (void *), void *);
	static const Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "pthread_create"));
	if (g_fail_next_thread.exchange(false))
		return EAGAIN;
	return real(thread, attr, start, arg);
}

namespace
{

/* A memory backend whose next `fail_renews` renews fail with a retryable error. */
class FlakyPlugin final : public lockext::LockingPlugin
{
  public:
	explicit FlakyPlugin(lockext::MemoryOptions options) : m_inner(options) {}
	std::string_view name() const override
	{
		return "flaky";
	}
	lockext::Result<std::optional<LockHandle>> try_lock(std::string_view key,
														std::uint64_t ttl_ms) override
	{
		return m_inner.try_lock(key, ttl_ms);
	}
	lockext::Result<void> renew(const LockHandle &handle) override
	{
		return to_result(renew_outcome(handle));
	}
	lockext::Result<void> release(LockHandle handle) override
	{
		return m_inner.release(std::move(handle));
	}
	lockext::Outcome<std::optional<LockHandle>> try_lock_outcome(std::string_view key,
																 std::uint64_t ttl_ms) override
	{
		return m_inner.try_lock_outcome(key, ttl_ms);
	}
	lockext::Outcome<void> renew_outcome(const LockHandle &handle) override
	{
		++renews;
		if (handle.ttl_ms <= m_short_ttl && fail_renews > 0)
		{
			--fail_renews;
			return std::unexpected(lockext::detail::make_failure(lockext::FailureKind::Unreachable,
																 "renew failed: injected"));
		}
		return m_inner.renew_outcome(handle);
	}
	lockext::Outcome<void> release_outcome(LockHandle handle) override
	{
		++releases;
		return m_inner.release_outcome(std::move(handle));
	}
	void fail_short_renews(int n, std::uint64_t up_to_ttl)
	{
		m_short_ttl = up_to_ttl;
		fail_renews = n;
	}

	std::atomic<int> fail_renews{0};
	std::atomic<int> renews{0};
	std::atomic<int> releases{0};

  private:
	lockext::MemoryLockingPlugin m_inner;
	std::atomic<std::uint64_t> m_short_ttl{0};
};

} // namespace

/* The keeper's thread cannot start after the grant: acquire() returns a failure (it
 * must not throw out of an Outcome-returning call) and releases the lease. */
TEST(ScopedLeaseFailures, KeeperThreadFailureReleasesAndReturnsAFailure)
{
	lockext::MemoryLockingPlugin plugin;
	g_fail_next_thread = true;
	std::optional<lockext::Outcome<std::optional<lockext::ScopedLease>>> got;
	try
	{
		got.emplace(lockext::ScopedLease::acquire(plugin, "k", 30000));
	}
	catch (const std::exception &e)
	{
		g_fail_next_thread = false;
		FAIL() << "acquire() threw: " << e.what();
	}
	g_fail_next_thread = false;
	ASSERT_FALSE(got->has_value()) << "no keeper, yet a lease was returned";
	EXPECT_EQ(got->error().kind, lockext::FailureKind::Capacity) << got->error().message;
	EXPECT_NE(got->error().message.find("released"), std::string::npos) << got->error().message;
	auto again = plugin.try_lock("k", 1000);
	ASSERT_TRUE(again.has_value()) << again.error();
	EXPECT_TRUE(again->has_value()) << "the lease leaked: the key is still held";
}

/* hold_at_least far beyond the server's max TTL: the destructor must not block for the
 * rest of the hold (it renews once and returns); the key stays held for one ttl_ms. */
TEST(ScopedLeaseFailures, DestructorDoesNotBlockForALongHold)
{
	lockext::MemoryOptions options;
	options.max_ttl_ms = 1000;
	FlakyPlugin plugin(options);
	const auto start = lockext::BootClock::now();
	{
		auto got = lockext::ScopedLease::acquire(
			plugin, "k", 400, {.keeper = {}, .on_lost = {}, .hold_at_least = 5000ms});
		ASSERT_TRUE(got && got->has_value());
		lockext::ScopedLease other = std::move(**got);
		auto second = lockext::ScopedLease::acquire(
			plugin, "k2", 400, {.keeper = {}, .on_lost = {}, .hold_at_least = 5000ms});
		ASSERT_TRUE(second && second->has_value());
		other = std::move(**second); // move-assignment ends the first one: must not block
		EXPECT_LT(lockext::BootClock::now() - start, 1000ms) << "move-assignment blocked";
	} // destructor
	EXPECT_LT(lockext::BootClock::now() - start, 1500ms) << "the destructor blocked";
	auto held = plugin.try_lock("k2", 1000);
	ASSERT_TRUE(held.has_value()) << held.error();
	EXPECT_FALSE(held->has_value()) << "still held for one more ttl_ms";
}

/* release() with hold_at_least beyond max TTL renews in steps; one transient failure of
 * a step is retried within the lease's known validity instead of ending the hold. */
TEST(ScopedLeaseFailures, ReleaseRetriesATransientStepFailure)
{
	lockext::MemoryOptions options;
	options.max_ttl_ms = 1000;
	FlakyPlugin plugin(options);
	const auto start = lockext::BootClock::now();
	auto got = lockext::ScopedLease::acquire(
		plugin, "k", 600, {.keeper = {}, .on_lost = {}, .hold_at_least = 2000ms});
	ASSERT_TRUE(got && got->has_value());
	plugin.fail_short_renews(1, 600);
	auto released = (*got)->release();
	EXPECT_TRUE(released.has_value()) << released.error().message;
	EXPECT_EQ(plugin.fail_renews.load(), 0) << "the injected failure was not hit";
	EXPECT_GE(lockext::BootClock::now() - start, 1300ms)
		<< "release() should block until the rest fits";
	auto held = plugin.try_lock("k", 1000);
	ASSERT_TRUE(held.has_value()) << held.error();
	EXPECT_FALSE(held->has_value()) << "the hold must continue after one transient failure";
	std::this_thread::sleep_until(start + 2300ms);
	auto free_now = plugin.try_lock("k", 1000);
	ASSERT_TRUE(free_now.has_value());
	EXPECT_TRUE(free_now->has_value()) << "the hold must end at hold_until";
}
