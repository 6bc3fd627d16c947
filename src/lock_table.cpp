/*-------------------------------------------------------------------------
 *
 * lock_table.cpp
 *	  The shared-memory lease table: grant, renew, release, evict, the
 *	  expired-lease sweep, and the consistent copies the views read.
 *
 * This is "C written in C++": plain structs, explicit LWLock acquire and
 * release, no STL, no new, no exceptions, no object with a destructor.
 * The decisions themselves (is the lease live, does the lock_id match, is
 * the fence valid) come from the pure functions in core/lease_rules.hpp.
 *
 * Locking protocol:
 *	- Grant, renew, release and evict hold exactly one partition lock,
 *	  EXCLUSIVE, for O(1) work: one hash probe and a few stores.  The lock
 *	  is released before returning; nothing here ereports while holding it.
 *	- A slot is reserved with an atomic increment of used_slots before an
 *	  entry is inserted, so max_locks is exact across partitions.
 *	- When no slot is free, LockextSweepExpired() takes every partition lock
 *	  EXCLUSIVE in ascending order, removes expired entries and records the
 *	  earliest live expiry; grants only sweep when that bound says some lease
 *	  may have expired, so a table full of live leases costs O(1) per refusal.
 *	- The copies for the views take every partition lock SHARED in
 *	  ascending order (they palloc while holding them; an out-of-memory
 *	  error releases them through error recovery).
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include "storage/lwlock.h"
#include "utils/hsearch.h"

#include "lockext/lock_table.h"
}

#include "lockext/core/lease_rules.hpp"

namespace core = lockext::core;

static LockextCounters *
StatsOf(uint32 hash)
{
	return &lockext_state->partition_stats[LockextPartitionOf(hash)].counters;
}

void
LockextMakeProbe(LockextProbeKey *probe, Oid dbid, const char *bytes, uint32 len)
{
	probe->dbid = dbid;
	probe->len = len;
	probe->bytes = bytes;
	probe->hash = LockextHashKey(dbid, bytes, len);
}

static void *
FindEntry(const LockextProbeKey *probe)
{
	return hash_search_with_hash_value(lockext_table, probe, probe->hash, HASH_FIND, NULL);
}

/* Removes the entry for probe; caller holds its partition lock EXCLUSIVE. */
static void
RemoveEntry(const LockextProbeKey *probe)
{
	hash_search_with_hash_value(lockext_table, probe, probe->hash, HASH_REMOVE, NULL);
	pg_atomic_fetch_sub_u32(&lockext_state->used_slots, 1);
}

/* Reserves one of max_locks slots; false when all are taken. */
static bool
ReserveSlot(void)
{
	uint32		used = pg_atomic_fetch_add_u32(&lockext_state->used_slots, 1) + 1;
	uint32		high;

	if (used > (uint32) lockext_max_locks)
	{
		pg_atomic_fetch_sub_u32(&lockext_state->used_slots, 1);
		return false;
	}
	high = pg_atomic_read_u32(&lockext_state->high_water);
	while (used > high &&
		   !pg_atomic_compare_exchange_u32(&lockext_state->high_water, &high, used))
		;
	return true;
}

/* Lowers the "no live lease expires before" bound to cover expires_ns. */
static void
NoteExpiry(int64 expires_ns)
{
	uint64		bound = pg_atomic_read_u64(&lockext_state->earliest_expiry_ns);

	while ((uint64) expires_ns < bound &&
		   !pg_atomic_compare_exchange_u64(&lockext_state->earliest_expiry_ns, &bound,
										   (uint64) expires_ns))
		;
}

static void
FillLease(LockextLease *lease, const LockextGrantRequest *request, int64 fence, int64 now_ns)
{
	lease->lock_id = request->lock_id;
	lease->fence = fence;
	lease->expires_ns = core::ExpiryNanos(now_ns, request->ttl_ms);
	lease->acquired_at = request->wall_now;
	lease->ttl_ms = (int32) request->ttl_ms;
	lease->renewals = 0;
	lease->holder = request->holder;
	lease->pid = request->pid;
	memcpy(lease->client_addr, request->client_addr, sizeof(lease->client_addr));
	memcpy(lease->application_name, request->application_name, sizeof(lease->application_name));
}

/*
 * Grants the lease for probe if nobody holds a live one.  An expired entry
 * is overwritten in place; a new key takes a free slot, sweeping expired
 * entries first when none is free.  The fence is drawn under the partition
 * lock, so fences of one key increase in grant order, and from one atomic
 * counter, so a grant that completes before another starts has the smaller
 * fence across all keys.
 */
LockextGrantStatus
LockextGrant(const LockextProbeKey *probe, const LockextGrantRequest *request,
			 LockextGrantResult *result)
{
	LWLock	   *lock = LockextPartitionLock(probe->hash);
	LockextCounters *stats = StatsOf(probe->hash);
	bool		swept = false;

	for (;;)
	{
		void	   *entry;
		bool		found;
		int64		now_ns;
		int64		fence;
		LockextFenceStatus fence_status;
		core::GrantDecision decision;

		LWLockAcquire(lock, LW_EXCLUSIVE);
		now_ns = LockextNowNanos();
		if ((uint64) now_ns < pg_atomic_read_u64(&lockext_state->grace_until_ns))
		{
			stats->contended++;
			pg_atomic_fetch_add_u64(&lockext_state->grace_refused, 1);
			LWLockRelease(lock);
			return LOCKEXT_CONTENDED;
		}

		entry = FindEntry(probe);
		decision = core::DecideGrant(entry != NULL,
									 entry ? LockextEntryLease(entry)->expires_ns : 0, now_ns);
		if (decision == core::GrantDecision::Contended)
		{
			stats->contended++;
			LWLockRelease(lock);
			return LOCKEXT_CONTENDED;
		}

		if (decision == core::GrantDecision::InsertNew && !ReserveSlot())
		{
			LWLockRelease(lock);
			if (!swept && (uint64) now_ns >= pg_atomic_read_u64(&lockext_state->earliest_expiry_ns))
			{
				LockextSweepExpired();
				swept = true;
				continue;
			}
			pg_atomic_fetch_add_u64(&lockext_state->table_full, 1);
			result->live_leases = pg_atomic_read_u32(&lockext_state->used_slots);
			return LOCKEXT_TABLE_FULL;
		}

		fence_status = LockextNextFence(&fence);
		if (fence_status != LOCKEXT_FENCE_OK)
		{
			result->saved_errno = errno;
			if (decision == core::GrantDecision::InsertNew)
				pg_atomic_fetch_sub_u32(&lockext_state->used_slots, 1);
			LWLockRelease(lock);
			return fence_status == LOCKEXT_FENCE_COUNTER_EXHAUSTED ? LOCKEXT_FENCE_EXHAUSTED
														   : LOCKEXT_FENCE_WRITE_FAILED;
		}

		if (decision == core::GrantDecision::ReuseExpired)
			stats->expired++;
		else
		{
			/* cannot fail: the table holds at least max_locks elements */
			entry = hash_search_with_hash_value(lockext_table, probe, probe->hash,
												HASH_ENTER_NULL, &found);
			if (unlikely(entry == NULL))
			{
				pg_atomic_fetch_sub_u32(&lockext_state->used_slots, 1);
				LWLockRelease(lock);
				pg_atomic_fetch_add_u64(&lockext_state->table_full, 1);
				result->live_leases = pg_atomic_read_u32(&lockext_state->used_slots);
				return LOCKEXT_TABLE_FULL;
			}
			Assert(!found);
		}

		FillLease(LockextEntryLease(entry), request, fence, now_ns);
		NoteExpiry(LockextEntryLease(entry)->expires_ns);
		stats->acquired++;
		LWLockRelease(lock);

		result->fence = fence;
		return LOCKEXT_GRANTED;
	}
}

/*
 * Puts a lease saved at the last clean shutdown back in the table (startup,
 * postmaster).  False if it does not fit: no slot, or a key longer than
 * lockext.max_key_length allows now.
 */
bool
LockextRestoreLease(Oid dbid, const char *key, uint32 key_len, const LockextLease *lease)
{
	LockextProbeKey probe;
	LWLock	   *lock;
	void	   *entry;
	bool		found;

	if (key_len == 0 || key_len > (uint32) lockext_max_key_length)
		return false;
	LockextMakeProbe(&probe, dbid, key, key_len);
	lock = LockextPartitionLock(probe.hash);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	if (FindEntry(&probe) != NULL || !ReserveSlot())
	{
		LWLockRelease(lock);
		return false;
	}
	entry = hash_search_with_hash_value(lockext_table, &probe, probe.hash, HASH_ENTER_NULL, &found);
	if (entry == NULL)
	{
		pg_atomic_fetch_sub_u32(&lockext_state->used_slots, 1);
		LWLockRelease(lock);
		return false;
	}
	*LockextEntryLease(entry) = *lease;
	NoteExpiry(lease->expires_ns);
	LWLockRelease(lock);
	return true;
}

/*
 * The check-and-set step shared by renew and release: finds the entry for
 * probe and decides whether lock_id holds it now.  An expired entry is
 * reclaimed here (never resurrected) and counted.  Caller holds the
 * partition lock EXCLUSIVE; *lease is set when the decision is Apply.
 */
static core::CasDecision
CheckHolder(const LockextProbeKey *probe, const pg_uuid_t *lock_id, int64 now_ns,
			LockextCounters *stats, LockextLease **lease)
{
	void	   *entry = FindEntry(probe);
	LockextLease *held = entry ? LockextEntryLease(entry) : NULL;
	core::CasDecision decision =
		core::DecideCas(entry != NULL, held ? held->lock_id.data : NULL, lock_id->data,
						held ? held->expires_ns : 0, now_ns);

	if (decision == core::CasDecision::ExpiredEntry)
	{
		RemoveEntry(probe);
		stats->expired++;
	}
	*lease = decision == core::CasDecision::Apply ? held : NULL;
	return decision;
}

/*
 * Check-and-set renewal: extends the lease only if it is live and held
 * under lock_id.  An expired entry is reclaimed, never resurrected.
 */
bool
LockextRenew(const LockextProbeKey *probe, const pg_uuid_t *lock_id, int64 ttl_ms,
			 int64 max_ttl_ms)
{
	LWLock	   *lock = LockextPartitionLock(probe->hash);
	LockextCounters *stats = StatsOf(probe->hash);
	LockextLease *lease;
	int64		now_ns;
	bool		renewed;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	now_ns = LockextNowNanos();
	renewed = CheckHolder(probe, lock_id, now_ns, stats, &lease) == core::CasDecision::Apply;
	if (renewed)
	{
		if (ttl_ms < 0)
			ttl_ms = Min((int64) lease->ttl_ms, max_ttl_ms);
		lease->ttl_ms = (int32) ttl_ms;
		lease->expires_ns = core::ExpiryNanos(now_ns, ttl_ms);
		lease->renewals++;
		NoteExpiry(lease->expires_ns);
		stats->renewed++;
	}
	else
		stats->renew_failed++;
	LWLockRelease(lock);
	return renewed;
}

/* Check-and-set release: true only if a live lease held under lock_id was removed. */
bool
LockextRelease(const LockextProbeKey *probe, const pg_uuid_t *lock_id)
{
	LWLock	   *lock = LockextPartitionLock(probe->hash);
	LockextCounters *stats = StatsOf(probe->hash);
	LockextLease *lease;
	bool		released;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	released = CheckHolder(probe, lock_id, LockextNowNanos(), stats, &lease) ==
		core::CasDecision::Apply;
	if (released)
	{
		RemoveEntry(probe);
		stats->released++;
	}
	else
		stats->release_noop++;
	LWLockRelease(lock);
	return released;
}

/* Operator eviction: removes the entry; true if its lease was live. */
bool
LockextEvict(const LockextProbeKey *probe)
{
	LWLock	   *lock = LockextPartitionLock(probe->hash);
	LockextCounters *stats = StatsOf(probe->hash);
	void	   *entry;
	bool		was_live = false;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	entry = FindEntry(probe);
	if (entry)
	{
		was_live = core::IsLive(LockextEntryLease(entry)->expires_ns, LockextNowNanos());
		if (!was_live)
			stats->expired++;
		RemoveEntry(probe);
	}
	LWLockRelease(lock);
	return was_live;
}

static void
AcquireAllPartitions(LWLockMode mode)
{
	LWLockPadded *locks = GetNamedLWLockTranche(LOCKEXT_TRANCHE_NAME);

	for (int i = 0; i < LOCKEXT_NUM_PARTITIONS; i++)
		LWLockAcquire(&locks[i].lock, mode);
}

static void
ReleaseAllPartitions(void)
{
	LWLockPadded *locks = GetNamedLWLockTranche(LOCKEXT_TRANCHE_NAME);

	for (int i = LOCKEXT_NUM_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&locks[i].lock);
}

static void
ProbeForStoredKey(LockextProbeKey *probe, const LockextStoredKey *key)
{
	LockextMakeProbe(probe, key->dbid, key->bytes, key->len);
}

/*
 * Removes every expired entry and recomputes the earliest live expiry.
 * Returns the number of live leases left.  Takes all partition locks.
 */
uint32
LockextSweepExpired(void)
{
	HASH_SEQ_STATUS scan;
	void	   *entry;
	uint32		live = 0;
	int64		earliest = INT64_MAX;
	int64		now_ns;

	AcquireAllPartitions(LW_EXCLUSIVE);
	now_ns = LockextNowNanos();
	hash_seq_init(&scan, lockext_table);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		int64		expires_ns = LockextEntryLease(entry)->expires_ns;

		if (core::IsLive(expires_ns, now_ns))
		{
			live++;
			earliest = core::EarlierOf(earliest, expires_ns);
		}
		else
		{
			LockextProbeKey probe;

			ProbeForStoredKey(&probe, (const LockextStoredKey *) entry);
			StatsOf(probe.hash)->expired++;
			RemoveEntry(&probe);	/* removing the current element is allowed */
		}
	}
	pg_atomic_write_u64(&lockext_state->earliest_expiry_ns, (uint64) earliest);
	ReleaseAllPartitions();
	return live;
}

/*
 * A palloc'd copy of every live lease (all databases), consistent across
 * partitions.  *count receives the number of elements.
 */
LockextLeaseCopy *
LockextCopyLiveLeases(int *count)
{
	HASH_SEQ_STATUS scan;
	void	   *entry;
	LockextLeaseCopy *copies;
	int			capacity;
	int			n = 0;
	int64		now_ns;

	AcquireAllPartitions(LW_SHARED);
	now_ns = LockextNowNanos();
	capacity = Max((int) hash_get_num_entries(lockext_table), 1);
	copies = (LockextLeaseCopy *) palloc(sizeof(LockextLeaseCopy) * capacity);
	hash_seq_init(&scan, lockext_table);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		const LockextStoredKey *key = (const LockextStoredKey *) entry;
		const LockextLease *lease = LockextEntryLease(entry);
		LockextLeaseCopy *copy;

		if (!core::IsLive(lease->expires_ns, now_ns) || n >= capacity)
			continue;
		copy = &copies[n++];
		copy->dbid = key->dbid;
		copy->key_len = key->len;
		copy->key = (char *) palloc(key->len + 1);
		memcpy(copy->key, key->bytes, key->len);
		copy->key[key->len] = '\0';
		copy->lease = *lease;
		copy->remaining_ms = core::RemainingMillis(lease->expires_ns, now_ns);
	}
	ReleaseAllPartitions();
	*count = n;
	return copies;
}

/* Sums the per-partition counters and counts live leases. */
void
LockextCollectCounts(LockextTableCounts *counts)
{
	HASH_SEQ_STATUS scan;
	void	   *entry;
	int64		now_ns;

	memset(counts, 0, sizeof(*counts));
	AcquireAllPartitions(LW_SHARED);
	for (int i = 0; i < LOCKEXT_NUM_PARTITIONS; i++)
	{
		const LockextCounters *s = &lockext_state->partition_stats[i].counters;
		LockextCounters *sum = &counts->events;

		sum->acquired += s->acquired;
		sum->contended += s->contended;
		sum->renewed += s->renewed;
		sum->renew_failed += s->renew_failed;
		sum->released += s->released;
		sum->release_noop += s->release_noop;
		sum->expired += s->expired;
	}
	now_ns = LockextNowNanos();
	hash_seq_init(&scan, lockext_table);
	while ((entry = hash_seq_search(&scan)) != NULL)
		if (core::IsLive(LockextEntryLease(entry)->expires_ns, now_ns))
			counts->live_leases++;
	ReleaseAllPartitions();
}

/* Zeroes every counter; high_water restarts from the slots in use now. */
void
LockextResetCounts(void)
{
	TimestampTz now = GetCurrentTimestamp();

	AcquireAllPartitions(LW_EXCLUSIVE);
	for (int i = 0; i < LOCKEXT_NUM_PARTITIONS; i++)
		memset(&lockext_state->partition_stats[i], 0, sizeof(LockextPartitionStats));
	pg_atomic_write_u64(&lockext_state->table_full, 0);
	pg_atomic_write_u32(&lockext_state->high_water,
						pg_atomic_read_u32(&lockext_state->used_slots));
	SpinLockAcquire(&lockext_state->mutex);
	lockext_state->stats_reset = now;
	SpinLockRelease(&lockext_state->mutex);
	ReleaseAllPartitions();
}
