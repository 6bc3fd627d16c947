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
 * (test/unit) exercise them without a server.
 *
 * Locking protocol: none; callers hold whatever lock protects the lease
 * they pass in.
 *
 *-------------------------------------------------------------------------
 */
#pragma once

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
 * Fences are handed out from a 64-bit counter that holds the last fence
 * granted.  A fence is valid when it fits a signed bigint; the counter never
 * wraps (it would take centuries at any real grant rate to pass 2^64).
 */
constexpr bool
FenceIsValid(std::uint64_t fence) noexcept
{
	return fence >= 1 && fence <= static_cast<std::uint64_t>(INT64_MAX);
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
