/*
 * lease_rules_test.cpp
 *	  Unit tests of the pure lease rules (core/lease_rules.hpp), and a
 *	  differential test: a table driven by the rules against a naive model.
 */
#include "core/lease_rules.hpp"

#include <gtest/gtest.h>

#include <array>
#include <climits>
#include <map>
#include <random>
#include <string>

using namespace lockext::core;

namespace
{
constexpr std::int64_t ms = kNanosPerMilli;
}

TEST(KeyLength, EmptyTooLongAndBounds)
{
	EXPECT_EQ(CheckKeyLength(0, 256), KeyCheck::Empty);
	EXPECT_EQ(CheckKeyLength(1, 256), KeyCheck::Ok);
	EXPECT_EQ(CheckKeyLength(256, 256), KeyCheck::Ok);
	EXPECT_EQ(CheckKeyLength(257, 256), KeyCheck::TooLong);
	EXPECT_EQ(CheckKeyLength(1 << 20, 256), KeyCheck::TooLong);
}

TEST(Ttl, RangeIsOneToMaxInclusive)
{
	EXPECT_FALSE(TtlInRange(0, 300000));
	EXPECT_FALSE(TtlInRange(-1, 300000));
	EXPECT_FALSE(TtlInRange(INT64_MIN, 300000));
	EXPECT_TRUE(TtlInRange(1, 300000));
	EXPECT_TRUE(TtlInRange(300000, 300000));
	EXPECT_FALSE(TtlInRange(300001, 300000));
	EXPECT_FALSE(TtlInRange(INT64_MAX, 300000));
}

TEST(Expiry, HeldAtTtlMinusOneFreeAtTtl)
{
	const std::int64_t t0 = 5'000 * ms;
	const std::int64_t expires = ExpiryNanos(t0, 60000);
	EXPECT_TRUE(IsLive(expires, t0 + 59999 * ms));
	EXPECT_TRUE(IsLive(expires, expires - 1));
	EXPECT_FALSE(IsLive(expires, t0 + 60000 * ms));
	EXPECT_FALSE(IsLive(expires, expires + 1));
}

TEST(Expiry, SaturatesInsteadOfOverflowing)
{
	EXPECT_EQ(ExpiryNanos(INT64_MAX - 10, 1), INT64_MAX);
	EXPECT_EQ(ExpiryNanos(0, INT64_MAX), INT64_MAX);
	EXPECT_EQ(ExpiryNanos(7, 0), 7);
	EXPECT_EQ(ExpiryNanos(7, -5), 7);
	EXPECT_EQ(ExpiryNanos(0, 1), ms);
}

TEST(Remaining, RoundsUpAndStopsAtZero)
{
	EXPECT_EQ(RemainingMillis(10 * ms, 0), 10);
	EXPECT_EQ(RemainingMillis(10 * ms, 1), 10);	/* 9.999999 ms left shows as 10 */
	EXPECT_EQ(RemainingMillis(10 * ms, 9 * ms), 1);
	EXPECT_EQ(RemainingMillis(10 * ms, 10 * ms), 0);
	EXPECT_EQ(RemainingMillis(10 * ms, 11 * ms), 0);
}

TEST(Grant, Decisions)
{
	EXPECT_EQ(DecideGrant(false, 0, 100), GrantDecision::InsertNew);
	EXPECT_EQ(DecideGrant(true, 101, 100), GrantDecision::Contended);
	EXPECT_EQ(DecideGrant(true, 100, 100), GrantDecision::ReuseExpired);
	EXPECT_EQ(DecideGrant(true, 50, 100), GrantDecision::ReuseExpired);
}

TEST(Cas, OnlyTheLiveHolderApplies)
{
	unsigned char a[kLockIdBytes] = {1};
	unsigned char b[kLockIdBytes] = {2};
	EXPECT_EQ(DecideCas(false, nullptr, a, 0, 0), CasDecision::Absent);
	EXPECT_EQ(DecideCas(true, a, a, 200, 100), CasDecision::Apply);
	EXPECT_EQ(DecideCas(true, a, b, 200, 100), CasDecision::NotHolder);
	/* expired: neither the old holder nor anyone else may act on it */
	EXPECT_EQ(DecideCas(true, a, a, 100, 100), CasDecision::ExpiredEntry);
	EXPECT_EQ(DecideCas(true, a, b, 100, 100), CasDecision::ExpiredEntry);
}

TEST(Cas, LockIdsDifferingInTheLastByteAreDistinct)
{
	unsigned char a[kLockIdBytes] = {};
	unsigned char b[kLockIdBytes] = {};
	b[kLockIdBytes - 1] = 1;
	EXPECT_EQ(DecideCas(true, a, b, 200, 100), CasDecision::NotHolder);
}

TEST(Fence, ComposesTimelineAboveCounter)
{
	std::int64_t f = 0;
	ASSERT_TRUE(ComposeFence(1, 1, &f));
	EXPECT_EQ(f, (std::int64_t{1} << 44) + 1);
	std::int64_t g = 0;
	ASSERT_TRUE(ComposeFence(2, 1, &g));
	std::int64_t last_of_1 = 0;
	ASSERT_TRUE(ComposeFence(1, kFenceCounterLimit - 1, &last_of_1));
	EXPECT_GT(g, last_of_1); /* any fence of a later timeline is above every earlier one */
}

TEST(Fence, NeverSpillsOrPassesInt64Max)
{
	std::int64_t f = 0;
	EXPECT_FALSE(ComposeFence(1, 0, &f));
	EXPECT_FALSE(ComposeFence(1, kFenceCounterLimit, &f));
	EXPECT_FALSE(ComposeFence(kFenceTimelineLimit, 1, &f));
	ASSERT_TRUE(ComposeFence(kFenceTimelineLimit - 1, kFenceCounterLimit - 1, &f));
	EXPECT_EQ(f, INT64_MAX);
}

TEST(Fence, CounterFloorAndReservations)
{
	EXPECT_EQ(CounterFloorFor(1, 5), 0u);
	EXPECT_EQ(CounterFloorFor(1, (std::int64_t{1} << 44) + 10), 10u);
	EXPECT_EQ(CounterFloorFor(1, -1), 0u);
	EXPECT_EQ(NextReservation(0, 1), kFenceBlock + 1);
	EXPECT_EQ(NextReservation(kFenceBlock, 3), 2 * kFenceBlock);
}

TEST(Restore, DowntimeOnTheBootClockIsSubtractedNeverAdded)
{
	/* 1 s left at shutdown; boot-clock readings in ns */
	EXPECT_EQ(RestoredRemainingNanos(1'000'000'000, true, 100, 100), 1'000'000'000);
	EXPECT_EQ(RestoredRemainingNanos(1'000'000'000, true, 0, 400'000'000), 600'000'000);
	EXPECT_EQ(RestoredRemainingNanos(1'000'000'000, true, 0, 1'000'000'000), 0); /* used up */
	EXPECT_EQ(RestoredRemainingNanos(1'000'000'000, true, 0, 5'000'000'000), 0);
	EXPECT_EQ(RestoredRemainingNanos(1'000'000'000, true, INT64_MIN / 2, INT64_MAX / 2), 0);
	/* a boot clock cannot go back: if it seems to, nothing is subtracted */
	EXPECT_EQ(RestoredRemainingNanos(1'000'000'000, true, 500, 0), 1'000'000'000);
	EXPECT_EQ(RestoredRemainingNanos(0, true, 0, 0), 0);
	EXPECT_EQ(RestoredRemainingNanos(-5, false, 0, 0), 0);
}

TEST(Restore, AfterARebootTheLeaseKeepsItsFullRemainingTime)
{
	/* the downtime is not measurable: a lease may last longer, never shorter */
	EXPECT_EQ(RestoredRemainingNanos(1'000'000'000, false, 0, 5'000'000'000), 1'000'000'000);
	EXPECT_EQ(RestoredRemainingNanos(1'000'000'000, false, 900, 100), 1'000'000'000);
}

TEST(Grace, LeftAfterARestart)
{
	EXPECT_EQ(GraceLeftNanos(1000, 5000, true, 400), 600);
	EXPECT_EQ(GraceLeftNanos(1000, 5000, true, 1000), 0);
	EXPECT_EQ(GraceLeftNanos(1000, 5000, true, 9000), 0);
	/* another boot: how long the host was down is unknown, the grace starts again */
	EXPECT_EQ(GraceLeftNanos(1000, 5000, false, 9000), 5000);
	EXPECT_EQ(GraceLeftNanos(1000, -1, false, 9000), 0);
}

TEST(Grace, LengthCoversTheLongestTtlGranted)
{
	/* an explicit setting is used as set, 0 included */
	EXPECT_EQ(GraceLengthMillis(0, 300000, 900000), 0);
	EXPECT_EQ(GraceLengthMillis(5000, 300000, 900000), 5000);
	/* the default covers max_ttl_ms and every TTL granted, even above a lowered max */
	EXPECT_EQ(GraceLengthMillis(-1, 300000, 0), 300000);
	EXPECT_EQ(GraceLengthMillis(-1, 1000, 90000), 90000);
	EXPECT_EQ(GraceLengthMillis(-1, 300000, 90000), 300000);
}

TEST(Slots, ReservationNeverOvershoots)
{
	EXPECT_EQ(ReservedSlotCount(0, 8), 1u);
	EXPECT_EQ(ReservedSlotCount(7, 8), 8u);
	EXPECT_EQ(ReservedSlotCount(8, 8), 0u);
	EXPECT_EQ(ReservedSlotCount(9, 8), 0u);
	EXPECT_EQ(ReservedSlotCount(UINT32_MAX, UINT32_MAX), 0u);
}

TEST(Fence, CounterOfAFence)
{
	std::int64_t fence = 0;
	ASSERT_TRUE(ComposeFence(3, 12345, &fence));
	EXPECT_EQ(FenceCounterOf(fence), 12345u);
	EXPECT_EQ(FenceCounterOf(0), 0u);
	EXPECT_EQ(FenceCounterOf(-7), 0u);
}

TEST(Uuid, StampsVersionFourAndRfcVariant)
{
	std::array<unsigned char, kLockIdBytes> id;
	id.fill(0xff);
	StampUuidV4(id.data());
	EXPECT_EQ(id[6] >> 4, 4);
	EXPECT_EQ(id[8] >> 6, 2);
	EXPECT_EQ(id[6] & 0x0f, 0x0f); /* random bits kept */
	id.fill(0x00);
	StampUuidV4(id.data());
	EXPECT_EQ(id[6], 0x40);
	EXPECT_EQ(id[8], 0x80);
}

TEST(EarliestExpiry, KeepsTheMinimum)
{
	EXPECT_EQ(EarlierOf(5, 9), 5);
	EXPECT_EQ(EarlierOf(9, 5), 5);
	EXPECT_EQ(EarlierOf(INT64_MAX, 1), 1);
}

/*
 * Differential test: random grant/renew/release/time steps applied to a
 * table built on the rules and to a naive model written independently
 * ("a lease is held until its deadline; only its id may touch it").  Any
 * divergence in outcome or in who holds what is a bug in the rules.
 */
namespace
{
struct RulesLease
{
	std::uint64_t id;
	std::int64_t expires_ns;
	std::int64_t fence;
};

struct ModelLease
{
	std::uint64_t id;
	std::int64_t deadline_ms;
};
} // namespace

TEST(Differential, RulesAgreeWithNaiveModel)
{
	std::mt19937_64 rng(12345);
	std::map<int, RulesLease> table;
	std::map<int, ModelLease> model;
	std::int64_t now_ms = 0;
	std::uint64_t next_id = 1;
	std::uint64_t fence_counter = 0;
	std::int64_t last_fence = 0;

	auto id_bytes = [](std::uint64_t id, unsigned char *out) {
		std::memset(out, 0, kLockIdBytes);
		std::memcpy(out, &id, sizeof id);
	};

	for (int step = 0; step < 200000; step++)
	{
		const int key = static_cast<int>(rng() % 8);
		const int op = static_cast<int>(rng() % 5);
		const std::int64_t ttl = 1 + static_cast<std::int64_t>(rng() % 50);
		const std::int64_t now_ns = now_ms * ms;
		auto found = table.find(key);
		auto held = model.find(key);
		const bool model_live = held != model.end() && now_ms < held->second.deadline_ms;

		if (op == 0) /* try_lock */
		{
			auto decision = DecideGrant(found != table.end(),
										found != table.end() ? found->second.expires_ns : 0, now_ns);
			const bool granted = decision != GrantDecision::Contended;
			ASSERT_EQ(granted, !model_live) << "step " << step;
			if (granted)
			{
				std::int64_t fence = 0;
				ASSERT_TRUE(ComposeFence(1, ++fence_counter, &fence));
				ASSERT_GT(fence, last_fence);
				last_fence = fence;
				table[key] = {next_id, ExpiryNanos(now_ns, ttl), last_fence};
				model[key] = {next_id, now_ms + ttl};
				next_id++;
			}
		}
		else if (op == 1 || op == 2) /* renew or release with the current or a stale id */
		{
			const std::uint64_t given = (rng() % 3 == 0 || held == model.end())
											? 1 + rng() % next_id
											: held->second.id;
			unsigned char given_bytes[kLockIdBytes], held_bytes[kLockIdBytes];
			id_bytes(given, given_bytes);
			if (found != table.end())
				id_bytes(found->second.id, held_bytes);
			auto decision = DecideCas(found != table.end(), held_bytes, given_bytes,
									  found != table.end() ? found->second.expires_ns : 0, now_ns);
			const bool applies = decision == CasDecision::Apply;
			const bool model_applies = model_live && held->second.id == given;
			ASSERT_EQ(applies, model_applies) << "step " << step;
			if (decision == CasDecision::ExpiredEntry)
				table.erase(found);
			if (applies && op == 1)
			{
				found->second.expires_ns = ExpiryNanos(now_ns, ttl);
				held->second.deadline_ms = now_ms + ttl;
			}
			if (applies && op == 2)
			{
				table.erase(found);
				model.erase(held);
			}
		}
		else /* time passes */
			now_ms += static_cast<std::int64_t>(rng() % 20);
	}
}
