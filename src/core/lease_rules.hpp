/*-------------------------------------------------------------------------
 *
 * lease_rules.hpp
 *	  The lease semantics of lockext as pure functions: key and TTL
 *	  validation, expiry arithmetic on the monotonic clock, the grant and
 *	  check-and-set decisions, fence allocation and lock_id minting.
 *
 * This header includes no PostgreSQL header and nothing here allocates,
 * throws or blocks: the shared-memory lease table (src/lock_table.cpp) calls
 * these functions while it holds a partition LWLock, and the unit tests
 * (test/unit) exercise them without a server.  Server files include it
 * before postgres.h, and the guard below enforces that: the pure core can
 * never come to depend on a PostgreSQL macro by accident.
 *
 * Locking protocol: none; callers hold whatever lock protects the lease
 * they pass in.
 *
 *-------------------------------------------------------------------------
 */
#pragma once

#ifdef POSTGRES_H
#error "core/ headers are PostgreSQL-free: include them before postgres.h"
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace lockext::core
{

constexpr std::int64_t kNanosPerMilli = 1'000'000;
constexpr std::size_t kLockIdBytes = 16;

/* Result of validating a key's byte length against lockext.max_key_length. */
enum class KeyCheck
{
	Ok,
	Empty,
	TooLong,
};

constexpr KeyCheck
CheckKeyLength(std::size_t length, std::size_t max_length) noexcept
{
	if (length == 0)
		return KeyCheck::Empty;
	if (length > max_length)
		return KeyCheck::TooLong;
	return KeyCheck::Ok;
}

/*
 * A TTL is valid when 1 <= ttl_ms <= max_ttl_ms.  The bound is checked before
 * any arithmetic, so INT64_MAX and negative values are safe to pass.
 */
constexpr bool
TtlInRange(std::int64_t ttl_ms, std::int64_t max_ttl_ms) noexcept
{
	return ttl_ms >= 1 && ttl_ms <= max_ttl_ms;
}

/*
 * Monotonic instant (ns) at which a lease granted or renewed at now_ns with
 * ttl_ms stops being live.  Saturates instead of overflowing.
 */
constexpr std::int64_t
ExpiryNanos(std::int64_t now_ns, std::int64_t ttl_ms) noexcept
{
	constexpr std::int64_t max = INT64_MAX;
	if (ttl_ms <= 0)
		return now_ns;
	if (ttl_ms > max / kNanosPerMilli)
		return max;
	const std::int64_t span = ttl_ms * kNanosPerMilli;
	return now_ns > max - span ? max : now_ns + span;
}

/* A lease is live strictly before its expiry instant: held at ttl-1 ms, free at ttl. */
constexpr bool
IsLive(std::int64_t expires_ns, std::int64_t now_ns) noexcept
{
	return now_ns < expires_ns;
}

/* Whole milliseconds left, rounded up; 0 once expired. */
constexpr std::int64_t
RemainingMillis(std::int64_t expires_ns, std::int64_t now_ns) noexcept
{
	if (!IsLive(expires_ns, now_ns))
		return 0;
	const std::int64_t left = expires_ns - now_ns;
	return left / kNanosPerMilli + (left % kNanosPerMilli != 0 ? 1 : 0);
}

/* What try_lock does with the slot it found (or did not find) for a key. */
enum class GrantDecision
{
	InsertNew,		 /* no entry: take a free slot */
	ReuseExpired,	 /* entry whose lease expired: overwrite it in place */
	Contended,		 /* entry with a live lease: report contention */
};

constexpr GrantDecision
DecideGrant(bool found, std::int64_t expires_ns, std::int64_t now_ns) noexcept
{
	if (!found)
		return GrantDecision::InsertNew;
	return IsLive(expires_ns, now_ns) ? GrantDecision::Contended : GrantDecision::ReuseExpired;
}

/* What renew and release do with the entry a caller's (key, lock_id) names. */
enum class CasDecision
{
	Apply,			/* live lease held under this lock_id */
	NotHolder,		/* live lease held under another lock_id: leave it alone */
	ExpiredEntry,	/* entry expired (whoever held it): reclaim it, report false */
	Absent,			/* no entry for the key */
};

inline CasDecision
DecideCas(bool found, const unsigned char *held_id, const unsigned char *given_id,
		  std::int64_t expires_ns, std::int64_t now_ns) noexcept
{
	if (!found)
		return CasDecision::Absent;
	if (!IsLive(expires_ns, now_ns))
		return CasDecision::ExpiredEntry;
	return std::memcmp(held_id, given_id, kLockIdBytes) == 0 ? CasDecision::Apply
															 : CasDecision::NotHolder;
}

/*
 * A fence is the WAL timeline in the high bits and a per-cluster counter in
 * the low kFenceCounterBits bits: fence = timeline << 44 | counter.  The
 * counter is reserved durably in blocks, so it never goes back within a
 * timeline (clean or crash restart); a promotion moves to a higher
 * timeline, so every fence of the new primary is above every fence of the
 * old one.  Composition fails (the caller raises an error) rather than
 * letting a counter spill into the timeline bits or a fence pass INT64_MAX.
 */
constexpr int kFenceCounterBits = 44;
constexpr std::uint64_t kFenceCounterLimit = std::uint64_t{1} << kFenceCounterBits;
constexpr std::uint32_t kFenceTimelineLimit = std::uint32_t{1} << (63 - kFenceCounterBits);

constexpr bool
ComposeFence(std::uint32_t timeline, std::uint64_t counter, std::int64_t *fence) noexcept
{
	if (counter == 0 || counter >= kFenceCounterLimit || timeline >= kFenceTimelineLimit)
		return false;
	*fence = static_cast<std::int64_t>((std::uint64_t{timeline} << kFenceCounterBits) | counter);
	return true;
}

/* The counter value that makes the next composed fence exceed floor. */
constexpr std::uint64_t
CounterFloorFor(std::uint32_t timeline, std::int64_t floor) noexcept
{
	const std::uint64_t base = std::uint64_t{timeline} << kFenceCounterBits;
	if (floor < 0 || static_cast<std::uint64_t>(floor) < base)
		return 0;
	return static_cast<std::uint64_t>(floor) - base;
}

/* Fence counter blocks reserved durably at a time: one fsync per block. */
constexpr std::uint64_t kFenceBlock = 65536;

/* Where the next durable reservation must reach to cover counter. */
constexpr std::uint64_t
NextReservation(std::uint64_t reserved, std::uint64_t counter) noexcept
{
	const std::uint64_t from = reserved > counter ? reserved : counter;
	return from + kFenceBlock;
}

/*
 * Remaining time of a lease restored after a restart: what was left at
 * shutdown minus the downtime, but only when the downtime was measured on a
 * clock that cannot step forward: the host's boot-time clock (CLOCK_BOOTTIME)
 * within one boot.  After a reboot (or with a boot clock that went
 * backwards, which it cannot) the lease keeps its full remaining time: a
 * lease may last longer than asked, never shorter.
 */
constexpr std::int64_t
RestoredRemainingNanos(std::int64_t remaining_at_save_ns, bool same_boot,
					   std::int64_t saved_boot_ns, std::int64_t now_boot_ns) noexcept
{
	if (remaining_at_save_ns <= 0)
		return 0;
	if (!same_boot || now_boot_ns < saved_boot_ns)
		return remaining_at_save_ns;
	const std::int64_t down_ns = now_boot_ns - saved_boot_ns;
	return remaining_at_save_ns > down_ns ? remaining_at_save_ns - down_ns : 0;
}

/*
 * Grace left of a grace period recorded with deadline until_boot_ns on the
 * boot clock: within the same boot, what the boot clock says; after a reboot
 * nobody can tell how long the host was down, so the whole grace starts again.
 */
constexpr std::int64_t
GraceLeftNanos(std::int64_t until_boot_ns, std::int64_t length_ns, bool same_boot,
			   std::int64_t now_boot_ns) noexcept
{
	if (!same_boot)
		return length_ns > 0 ? length_ns : 0;
	return until_boot_ns > now_boot_ns ? until_boot_ns - now_boot_ns : 0;
}

/*
 * Length of a grace period.  An explicit lockext.recovery_grace_ms (>= 0) is
 * the operator's choice and is used as set.  The default (-1) covers the
 * longest lease an earlier holder could still hold: never less than the
 * longest TTL granted or renewed in the window (ttl_ceiling_ms), even when
 * lockext.max_ttl_ms was lowered since.
 */
constexpr std::int64_t
GraceLengthMillis(std::int64_t recovery_grace_ms, std::int64_t max_ttl_ms,
				  std::int64_t ttl_ceiling_ms) noexcept
{
	if (recovery_grace_ms >= 0)
		return recovery_grace_ms;
	return max_ttl_ms > ttl_ceiling_ms ? max_ttl_ms : ttl_ceiling_ms;
}

/*
 * The slot counter's check-and-reserve step: the new count if one of
 * max_slots is free, 0 when all are taken.  Callers loop on a
 * compare-and-swap, so a refusal is never caused by another backend's
 * reservation that is undone a moment later.
 */
constexpr std::uint32_t
ReservedSlotCount(std::uint32_t used, std::uint32_t max_slots) noexcept
{
	return used < max_slots ? used + 1 : 0;
}

/* The counter part of a fence (what the durable reservation bounds). */
constexpr std::uint64_t
FenceCounterOf(std::int64_t fence) noexcept
{
	return fence <= 0 ? 0 : static_cast<std::uint64_t>(fence) & (kFenceCounterLimit - 1);
}

/* Turns 16 random bytes into an RFC 4122 version 4 UUID in place. */
inline void
StampUuidV4(unsigned char bytes[kLockIdBytes]) noexcept
{
	bytes[6] = static_cast<unsigned char>((bytes[6] & 0x0f) | 0x40);
	bytes[8] = static_cast<unsigned char>((bytes[8] & 0x3f) | 0x80);
}

/* Lower of two expiry hints; used to keep the "earliest live expiry" bound. */
constexpr std::int64_t
EarlierOf(std::int64_t a, std::int64_t b) noexcept
{
	return a < b ? a : b;
}

} // namespace lockext::core
