/*-------------------------------------------------------------------------
 *
 * lock_table.cpp
 *	  The shared-memory lease table (see lock_table.h for the interface and
 *	  the locking protocol).
 *
 * This is "C written in C++": plain structs, explicit LWLock acquire and
 * release, no STL, no new, no exceptions, no object with a destructor.
 * The decisions themselves (is the lease live, does the lock_id match) come
 * from the pure functions in core/lease_rules.hpp.
 *
 * Sizing: a dynahash of lockext.max_locks entries, each a stored key of
 * lockext.max_key_length bytes followed by a LockextLease, allocated once
 * at postmaster start with HASH_FIXED_SIZE: the table never grows into the
 * rest of shared memory.  The hash is seeded from pg_strong_random() when
 * shared memory is created, so nobody can choose keys that pile into one
 * bucket.
 *
 *-------------------------------------------------------------------------
 */
#include "core/lease_rules.hpp"

extern "C"
{
#include "postgres.h"

#include "common/hashfn.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "clock.h"
#include "fence.h"
#include "grace.h"
#include "gucs.h"
#include "lock_table.h"
#include "replication.h"
#include "shmem.h"
#include "wait_queue.h"
}

namespace core = lockext::core;

/*
 * Stored key: the fixed-size head of every hash entry (keysize is
 * KeySize(): the header plus lockext.max_key_length bytes).  Only the first
 * len bytes of bytes[] are meaningful.
 */
typedef struct StoredKey
{
	Oid			dbid;
	uint32		len;
	char		bytes[FLEXIBLE_ARRAY_MEMBER];
} StoredKey;

/* What each partition counts (the order of LockextCounts' first fields). */
typedef enum CounterKind
{
	C_ACQUIRED,
	C_CONTENDED,
	C_RENEWED,
	C_RENEW_FAILED,
	C_RELEASED,
	C_RELEASE_NOOP,
	C_EXPIRED,
	C_EVENT_KINDS,				/* the event counters end here; reset zeroes them */
	C_ENTRIES = C_EVENT_KINDS,	/* entries in the partition, live or not yet reclaimed */
	C_KINDS
} CounterKind;

/* One partition's counters, padded so partitions do not share cache lines. */
typedef struct PartitionCounters
{
	pg_atomic_uint64 v[C_KINDS];
} PartitionCounters;

typedef union PaddedPartitionCounters
{
	PartitionCounters c;
	char		pad[TYPEALIGN(PG_CACHE_LINE_SIZE, sizeof(PartitionCounters))];
} PaddedPartitionCounters;

typedef struct LockTableShared
{
	uint64		hash_seed;		/* random per shared-memory lifetime */
	pg_atomic_uint32 used_slots;	/* entries in the table, live or not yet reclaimed */
	pg_atomic_uint32 high_water;	/* most entries ever in use at once */
	pg_atomic_uint64 table_full;	/* grants refused for lack of a slot */
	pg_atomic_uint64 earliest_expiry_ns;	/* no live lease expires before this */
	pg_atomic_uint64 last_sweep_ns; /* real clock: end of the last sweep */
	pg_atomic_uint64 last_sweep_cost_ns;	/* how long it took */
	slock_t		mutex;			/* protects stats_reset */
	TimestampTz stats_reset;
	PaddedPartitionCounters partitions[LOCKEXT_NUM_PARTITIONS];
} LockTableShared;

static LockTableShared *table_state = NULL;
static HTAB *lease_table = NULL;

static Size
KeySize(void)
{
	return MAXALIGN(offsetof(StoredKey, bytes) + lockext_max_key_length);
}

static Size
EntrySize(void)
{
	return KeySize() + MAXALIGN(sizeof(LockextLease));
}

static inline LockextLease *
LeaseOf(void *entry)
{
	return (LockextLease *) ((char *) entry + KeySize());
}

/*
 * Elements the hash table allocates: dynahash preallocates at least one per
 * freelist (32) even for tiny tables, so small test configurations are sized
 * for that; used_slots keeps the capacity at exactly lockext.max_locks.
 */
static long
TableElements(void)
{
	return Max(lockext_max_locks, 32);
}

Size
LockTableShmemSize(void)
{
	return add_size(MAXALIGN(sizeof(LockTableShared)),
					hash_estimate_size(TableElements(), EntrySize()));
}

/* dynahash callbacks; the second argument is always a LockextProbeKey */
static uint32
ProbeHash(const void *key, Size keysize)
{
	(void) keysize;
	return ((const LockextProbeKey *) key)->hash;
}

static int
StoredKeyMatchesProbe(const void *stored_key, const void *probe_key, Size keysize)
{
	const StoredKey *stored = (const StoredKey *) stored_key;
	const LockextProbeKey *probe = (const LockextProbeKey *) probe_key;

	(void) keysize;
	if (stored->dbid != probe->dbid || stored->len != probe->len)
		return 1;
	return memcmp(stored->bytes, probe->bytes, probe->len);
}

static void *
CopyProbeToStoredKey(void *dest, const void *src, Size keysize)
{
	StoredKey  *stored = (StoredKey *) dest;
	const LockextProbeKey *probe = (const LockextProbeKey *) src;

	(void) keysize;
	stored->dbid = probe->dbid;
	stored->len = probe->len;
	memcpy(stored->bytes, probe->bytes, probe->len);
	return dest;
}

void
LockTableShmemInit(void)
{
	bool		found;
	HASHCTL		info;

	table_state = (LockTableShared *) ShmemInitStruct("lockext lease table state",
													  sizeof(LockTableShared), &found);
	if (!found)
	{
		memset(table_state, 0, sizeof(*table_state));
		if (!pg_strong_random(&table_state->hash_seed, sizeof(table_state->hash_seed)))
			ereport(FATAL, (errmsg("lockext could not generate a random hash seed")));
		pg_atomic_init_u32(&table_state->used_slots, 0);
		pg_atomic_init_u32(&table_state->high_water, 0);
		pg_atomic_init_u64(&table_state->table_full, 0);
		pg_atomic_init_u64(&table_state->earliest_expiry_ns, PG_UINT64_MAX);
		pg_atomic_init_u64(&table_state->last_sweep_ns, 0);
		pg_atomic_init_u64(&table_state->last_sweep_cost_ns, 0);
		SpinLockInit(&table_state->mutex);
		table_state->stats_reset = GetCurrentTimestamp();
		for (int i = 0; i < LOCKEXT_NUM_PARTITIONS; i++)
			for (int k = 0; k < C_KINDS; k++)
				pg_atomic_init_u64(&table_state->partitions[i].c.v[k], 0);
	}

	memset(&info, 0, sizeof(info));
	info.keysize = KeySize();
	info.entrysize = EntrySize();
	info.num_partitions = LOCKEXT_NUM_PARTITIONS;
	info.hash = ProbeHash;
	info.match = StoredKeyMatchesProbe;
	info.keycopy = CopyProbeToStoredKey;
	lease_table = ShmemInitHash("lockext leases", TableElements(), TableElements(), &info,
								HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_KEYCOPY |
									HASH_PARTITION | HASH_FIXED_SIZE);
}

void
LockTableMakeProbe(LockextProbeKey *probe, Oid dbid, const char *bytes, uint32 len)
{
	uint64		h = hash_bytes_extended((const unsigned char *) bytes, (int) len,
									table_state->hash_seed ^ (uint64) dbid);

	probe->dbid = dbid;
	probe->len = len;
	probe->bytes = bytes;
	probe->hash = (uint32) (h ^ (h >> 32));
}

int
LockTablePartitionOf(const LockextProbeKey *probe)
{
	return (int) (probe->hash % LOCKEXT_NUM_PARTITIONS);
}

static LWLock *
PartitionLock(const LockextProbeKey *probe)
{
	return LockextLock(LOCKEXT_LOCK_PARTITION0 + LockTablePartitionOf(probe));
}

static PartitionCounters *
CountersOf(const LockextProbeKey *probe)
{
	return &table_state->partitions[LockTablePartitionOf(probe)].c;
}

/* counter += 1; the caller holds the counter's partition lock EXCLUSIVE (single writer) */
static inline void
Bump(pg_atomic_uint64 *counter, int64 delta = 1)
{
	pg_atomic_write_u64(counter, pg_atomic_read_u64(counter) + (uint64) delta);
}

static void *
FindEntry(const LockextProbeKey *probe)
{
	return hash_search_with_hash_value(lease_table, probe, probe->hash, HASH_FIND, NULL);
}

/* Takes one of max_locks slots; false when all are taken.  Never undone by a refusal. */
static bool
ReserveSlot(void)
{
	uint32		used = pg_atomic_read_u32(&table_state->used_slots);
	uint32		next;
	uint32		high;

	do
	{
		next = core::ReservedSlotCount(used, (uint32) lockext_max_locks);
		if (next == 0)
			return false;
	} while (!pg_atomic_compare_exchange_u32(&table_state->used_slots, &used, next));

	high = pg_atomic_read_u32(&table_state->high_water);
	while (next > high &&
		   !pg_atomic_compare_exchange_u32(&table_state->high_water, &high, next))
		;
	return true;
}

static void
ReleaseSlot(void)
{
	pg_atomic_fetch_sub_u32(&table_state->used_slots, 1);
}

/* Inserts the entry for probe into a reserved slot; caller holds its partition lock EXCLUSIVE. */
static void *
InsertEntry(const LockextProbeKey *probe)
{
	bool		found;
	void	   *entry = hash_search_with_hash_value(lease_table, probe, probe->hash,
													HASH_ENTER_NULL, &found);

	/* cannot fail: the table holds at least max_locks elements */
	if (unlikely(entry == NULL))
	{
		ReleaseSlot();
		return NULL;
	}
	Assert(!found);
	Bump(&CountersOf(probe)->v[C_ENTRIES]);
	return entry;
}

/* Removes the entry for probe; caller holds its partition lock EXCLUSIVE. */
static void
RemoveEntry(const LockextProbeKey *probe)
{
	hash_search_with_hash_value(lease_table, probe, probe->hash, HASH_REMOVE, NULL);
	Bump(&CountersOf(probe)->v[C_ENTRIES], -1);
	ReleaseSlot();
}

/* Lowers the "no live lease expires before" bound to cover expires_ns. */
static void
NoteExpiry(int64 expires_ns)
{
	uint64		bound = pg_atomic_read_u64(&table_state->earliest_expiry_ns);

	while ((uint64) expires_ns < bound &&
		   !pg_atomic_compare_exchange_u64(&table_state->earliest_expiry_ns, &bound,
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
	NoteExpiry(lease->expires_ns);
}

/*
 * The lease on probe's key ends (released, evicted, expired): its entry
 * goes to the head waiter, or is removed.  Caller holds the partition lock
 * EXCLUSIVE.
 */
static bool ServeHeadWaiter(const LockextProbeKey *probe, void *entry, int64 now_ns);

static void
RemoveOrHandOff(const LockextProbeKey *probe, LockextLease *lease, int64 now_ns)
{
	void	   *entry = (char *) lease - KeySize();

	if (!WaitQueueHasWaiters(LockTablePartitionOf(probe)) || !ServeHeadWaiter(probe, entry, now_ns))
		RemoveEntry(probe);
}

static LockextGrantStatus
FenceFailure(LockextFenceStatus status, LockextGrantResult *result)
{
	switch (status)
	{
		case LOCKEXT_FENCE_COUNTER_EXHAUSTED:
			return LOCKEXT_FENCE_EXHAUSTED;
		case LOCKEXT_FENCE_STATE_LOST:
			return LOCKEXT_FENCE_LOST;
		default:
			result->saved_errno = errno;
			return LOCKEXT_FENCE_WRITE_FAILED;
	}
}

/*
 * Wakes the key's head waiter, if any: whenever the head changes, the new
 * one must look again (only the head sleeps to the holder's expiry).
 */
static void
WakeHead(const LockextProbeKey *probe)
{
	LockextWaitSlot *head = WaitQueueHead(probe);

	if (head != NULL)
		WaitQueueWake(head);
}

/*
 * Hands probe's key to its head waiter, if it has one and the key is free:
 * entry is the key's entry (expired, or the lease just released or
 * evicted, which the waiter's lease overwrites in place) or NULL (no
 * entry: one is inserted).  The waiter's own request fills the lease, then
 * its latch is set; it wakes up holding it.  A hand-off that fails (no
 * slot, no fence) fails that waiter, who reports it.  During a grace period
 * nobody is served: the head waiter sleeps until the grace ends.  True if
 * the head waiter now holds the key.  Caller holds the partition lock
 * EXCLUSIVE.
 */
static bool
ServeHeadWaiter(const LockextProbeKey *probe, void *entry, int64 now_ns)
{
	LockextWaitSlot *head = WaitQueueHead(probe);
	LockextFenceStatus fence_status;
	int64		fence;
	bool		inserted = false;

	if (head == NULL || GraceRefusing(now_ns))
		return false;
	if (entry == NULL)
	{
		if (!ReserveSlot())
		{
			head->status = LOCKEXT_TABLE_FULL;
			head->result.live_leases = pg_atomic_read_u32(&table_state->used_slots);
			goto fail;
		}
		inserted = true;
	}
	if ((fence_status = FenceNext(&fence)) != LOCKEXT_FENCE_OK)
	{
		head->status = FenceFailure(fence_status, &head->result);
		if (inserted)
			ReleaseSlot();
		goto fail;
	}
	if (inserted && (entry = InsertEntry(probe)) == NULL)
	{
		head->status = LOCKEXT_TABLE_FULL;
		goto fail;
	}
	head->request.wall_now = GetCurrentTimestamp();
	FillLease(LeaseOf(entry), &head->request, fence, now_ns);
	Bump(&CountersOf(probe)->v[C_ACQUIRED]);
	ReplicationLogLease(XLOG_LOCKEXT_GRANT, probe, LeaseOf(entry), now_ns);
	head->grant_lsn = ReplicationLastLsn(&head->grant_sync);
	head->fence = fence;
	head->granted_at = head->request.wall_now;
	WaitQueueRemove(head);
	head->state = LOCKEXT_WAIT_GRANTED;
	WaitQueueWake(head);
	WakeHead(probe);			/* the next waiter now sleeps to the new holder's expiry */
	return true;

fail:
	WaitQueueRemove(head);
	head->state = LOCKEXT_WAIT_FAILED;
	WaitQueueWake(head);
	WakeHead(probe);			/* the key is still free: the next waiter tries */
	return false;
}

/*
 * A free key with waiters (entry expired, or NULL) goes to its head
 * waiter; an expired entry nobody takes is reclaimed.  Either way an
 * expired entry is counted once.  Caller holds the partition lock
 * EXCLUSIVE.
 */
static void
ServeFreeKey(const LockextProbeKey *probe, void *entry, int64 now_ns)
{
	if (entry == NULL)
	{
		(void) ServeHeadWaiter(probe, NULL, now_ns);
		return;
	}
	Bump(&CountersOf(probe)->v[C_EXPIRED]);
	RemoveOrHandOff(probe, LeaseOf(entry), now_ns);
}

/*
 * One attempt at granting under the partition lock.  *may_sweep is set when
 * the table was full but some lease may have expired since the last sweep.
 */
static LockextGrantStatus
GrantOnce(const LockextProbeKey *probe, const LockextGrantRequest *request,
		  LockextGrantResult *result, bool *may_sweep, LockextWaitSlot *queue_slot)
{
	LWLock	   *lock = PartitionLock(probe);
	PartitionCounters *counters = CountersOf(probe);
	LockextGrantStatus status = LOCKEXT_GRANTED;
	void	   *entry;
	int64		now_ns;
	LockextFenceStatus fence_status;

	*may_sweep = false;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	now_ns = LockextNowNanos();
	entry = FindEntry(probe);
	switch (core::DecideGrant(entry != NULL, entry ? LeaseOf(entry)->expires_ns : 0, now_ns))
	{
		case core::GrantDecision::Contended:
			status = LOCKEXT_CONTENDED;
			break;
		case core::GrantDecision::ReuseExpired:
		case core::GrantDecision::InsertNew:
			if (WaitQueueHasWaiters(LockTablePartitionOf(probe)) && WaitQueueHead(probe) != NULL)
			{
				/* first come, first served: a free key with waiters goes to the oldest */
				ServeFreeKey(probe, entry, now_ns);
				status = GraceRefusing(now_ns) ? LOCKEXT_GRACE : LOCKEXT_CONTENDED;
				break;
			}
			if (entry == NULL)
				goto insert_new;
			if (GraceRefusing(now_ns))
				status = LOCKEXT_GRACE;
			else if ((fence_status = FenceNext(&result->fence)) != LOCKEXT_FENCE_OK)
				status = FenceFailure(fence_status, result);
			else
				Bump(&counters->v[C_EXPIRED]);
			break;
		insert_new:
			if (GraceRefusing(now_ns))
				status = LOCKEXT_GRACE;
			else if (!ReserveSlot())
			{
				status = LOCKEXT_TABLE_FULL;
				*may_sweep = (uint64) now_ns >= pg_atomic_read_u64(&table_state->earliest_expiry_ns);
			}
			else if ((fence_status = FenceNext(&result->fence)) != LOCKEXT_FENCE_OK)
			{
				ReleaseSlot();
				status = FenceFailure(fence_status, result);
			}
			else if ((entry = InsertEntry(probe)) == NULL)
				status = LOCKEXT_TABLE_FULL;
			break;
	}
	if (status == LOCKEXT_GRANTED)
	{
		FillLease(LeaseOf(entry), request, result->fence, now_ns);
		Bump(&counters->v[C_ACQUIRED]);
		ReplicationLogLease(XLOG_LOCKEXT_GRANT, probe, LeaseOf(entry), now_ns);
	}
	else if ((status == LOCKEXT_CONTENDED || status == LOCKEXT_GRACE) && queue_slot != NULL)
	{
		/* admitted only now that it waits: a grant at once never takes a waiter's place */
		if (!WaitQueueAdmit())
			status = LOCKEXT_TOO_MANY_WAITERS;
		else
		{
			queue_slot->request = *request;
			WaitQueueAppend(queue_slot, probe);
			status = LOCKEXT_QUEUED;
		}
	}
	else if (status == LOCKEXT_CONTENDED || status == LOCKEXT_GRACE)
		Bump(&counters->v[C_CONTENDED]);
	LWLockRelease(lock);
	return status;
}

bool
LockTableRefuseIfHeld(const LockextProbeKey *probe)
{
	LWLock	   *lock = PartitionLock(probe);
	void	   *entry;
	bool		held;

	LWLockAcquire(lock, LW_SHARED);
	entry = FindEntry(probe);
	held = entry != NULL && core::IsLive(LeaseOf(entry)->expires_ns, LockextNowNanos());
	if (held)
		pg_atomic_fetch_add_u64(&CountersOf(probe)->v[C_CONTENDED], 1);
	LWLockRelease(lock);
	return held;
}

/*
 * Grants the lease for probe if nobody holds a live one (and no grace
 * period holds grants back).  An expired entry is overwritten in place; a
 * new key takes a free slot, sweeping expired entries first when none is
 * free.  The fence is drawn under the partition lock, so fences of one key
 * increase in grant order, and from one atomic counter, so a grant that
 * completes before another starts has the smaller fence across all keys.
 */
LockextGrantStatus
LockTableGrant(const LockextProbeKey *probe, const LockextGrantRequest *request,
			   LockextGrantResult *result)
{
	return LockTableGrantOrQueue(probe, request, result, NULL);
}

LockextGrantStatus
LockTableGrantOrQueue(const LockextProbeKey *probe, const LockextGrantRequest *request,
					  LockextGrantResult *result, LockextWaitSlot *queue_slot)
{
	bool		may_sweep;
	LockextGrantStatus status = GrantOnce(probe, request, result, &may_sweep, queue_slot);

	if (status == LOCKEXT_TABLE_FULL && may_sweep)
	{
		LockTableSweepExpired();
		status = GrantOnce(probe, request, result, &may_sweep, queue_slot);
	}
	if (status == LOCKEXT_TABLE_FULL)
	{
		pg_atomic_fetch_add_u64(&table_state->table_full, 1);
		result->live_leases = pg_atomic_read_u32(&table_state->used_slots);
	}
	else if (status == LOCKEXT_GRACE)
		GraceNoteRefusal();
	return status;
}

/*
 * Puts a lease saved at the last clean shutdown back in the table (startup,
 * postmaster).  False if it does not fit: no slot, a duplicate, or a key
 * longer than lockext.max_key_length allows now.
 */
bool
LockTableRestore(Oid dbid, const char *key, uint32 key_len, const LockextLease *lease)
{
	LockextProbeKey probe;
	LWLock	   *lock;
	void	   *entry = NULL;

	if (key_len == 0 || key_len > (uint32) lockext_max_key_length)
		return false;
	LockTableMakeProbe(&probe, dbid, key, key_len);
	lock = PartitionLock(&probe);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	if (FindEntry(&probe) == NULL && ReserveSlot() && (entry = InsertEntry(&probe)) != NULL)
	{
		*LeaseOf(entry) = *lease;
		NoteExpiry(lease->expires_ns);
	}
	LWLockRelease(lock);
	return entry != NULL;
}

/*
 * Replay of a lease record (replication.h), in the startup process: puts
 * lease on probe's key, replacing what is there.  A snapshot item is older
 * than the records logged while the snapshot was copied, so it does not
 * replace a live lease with a higher fence, and for the same lease only
 * lengthens it.  A key that does not fit (too long for this server's
 * lockext.max_key_length, or no slot even after a sweep) is LOCKEXT_REPLAY_NO_ROOM.
 * Never ereports.
 */
LockextReplayOutcome
LockTableReplayLease(const LockextProbeKey *probe, const LockextLease *lease, bool snapshot_item)
{
	LWLock	   *lock = PartitionLock(probe);
	LockextReplayOutcome outcome = LOCKEXT_REPLAY_APPLIED;

	if (probe->len == 0 || probe->len > (uint32) lockext_max_key_length)
		return LOCKEXT_REPLAY_NO_ROOM;
	for (int attempt = 0; attempt < 2; attempt++)
	{
		void	   *entry;
		int64		now_ns;

		LWLockAcquire(lock, LW_EXCLUSIVE);
		now_ns = LockextNowNanos();
		entry = FindEntry(probe);
		if (entry != NULL)
		{
			LockextLease *held = LeaseOf(entry);

			if (snapshot_item && core::IsLive(held->expires_ns, now_ns) && held->fence >= lease->fence)
			{
				if (held->fence == lease->fence && lease->expires_ns > held->expires_ns)
					held->expires_ns = lease->expires_ns;
				else
					outcome = LOCKEXT_REPLAY_SKIPPED;
			}
			else
				*held = *lease;
		}
		else if (ReserveSlot() && (entry = InsertEntry(probe)) != NULL)
			*LeaseOf(entry) = *lease;
		else
			outcome = LOCKEXT_REPLAY_NO_ROOM;
		if (outcome != LOCKEXT_REPLAY_SKIPPED && entry != NULL)
			NoteExpiry(LeaseOf(entry)->expires_ns);
		LWLockRelease(lock);
		if (outcome != LOCKEXT_REPLAY_NO_ROOM || attempt > 0 ||
			(uint64) LockextNowNanos() < pg_atomic_read_u64(&table_state->earliest_expiry_ns))
			break;
		/* expired leases may hold the slots: reclaim them and try once more */
		LockTableSweepExpired();
		outcome = LOCKEXT_REPLAY_APPLIED;
	}
	return outcome;
}

/* Replay of RELEASE (lock_id given: only that lease) or EVICT (NULL). */
void
LockTableReplayRemoval(const LockextProbeKey *probe, const pg_uuid_t *lock_id)
{
	LWLock	   *lock = PartitionLock(probe);
	void	   *entry;

	if (probe->len == 0 || probe->len > (uint32) lockext_max_key_length)
		return;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	entry = FindEntry(probe);
	if (entry != NULL &&
		(lock_id == NULL || memcmp(LeaseOf(entry)->lock_id.data, lock_id->data, UUID_LEN) == 0))
		RemoveOrHandOff(probe, LeaseOf(entry), LockextNowNanos());
	LWLockRelease(lock);
}

/* Every partition lock EXCLUSIVE once: no change begun before is still running after. */
void
LockTableBarrier(void)
{
	for (int i = 0; i < LOCKEXT_NUM_PARTITIONS; i++)
	{
		LWLockAcquire(LockextLock(LOCKEXT_LOCK_PARTITION0 + i), LW_EXCLUSIVE);
		LWLockRelease(LockextLock(LOCKEXT_LOCK_PARTITION0 + i));
	}
}

/*
 * The check-and-set step shared by renew and release: the lease lock_id
 * holds on probe's key now, or NULL.  An expired entry is reclaimed here
 * (never resurrected) and counted.  Caller holds the partition lock
 * EXCLUSIVE.
 */
static LockextLease *
HeldLease(const LockextProbeKey *probe, const pg_uuid_t *lock_id, int64 now_ns)
{
	void	   *entry = FindEntry(probe);
	LockextLease *held = entry ? LeaseOf(entry) : NULL;

	switch (core::DecideCas(entry != NULL, held ? held->lock_id.data : NULL, lock_id->data,
							held ? held->expires_ns : 0, now_ns))
	{
		case core::CasDecision::Apply:
			return held;
		case core::CasDecision::ExpiredEntry:
			Bump(&CountersOf(probe)->v[C_EXPIRED]);
			RemoveOrHandOff(probe, held, now_ns);
			return NULL;
		case core::CasDecision::NotHolder:
		case core::CasDecision::Absent:
			return NULL;
	}
	return NULL;
}

/*
 * Check-and-set renewal: extends the lease only if it is live and held
 * under lock_id.  An expired entry is reclaimed, never resurrected.
 */
bool
LockTableRenew(const LockextProbeKey *probe, const pg_uuid_t *lock_id, int64 ttl_ms,
			   LockextRenewUndo *undo)
{
	LWLock	   *lock = PartitionLock(probe);
	PartitionCounters *counters = CountersOf(probe);
	LockextLease *lease;
	int64		now_ns;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	now_ns = LockextNowNanos();
	lease = HeldLease(probe, lock_id, now_ns);
	if (lease != NULL)
	{
		if (undo != NULL)
		{
			undo->expires_ns = lease->expires_ns;
			undo->ttl_ms = lease->ttl_ms;
			undo->fence = lease->fence;
		}
		if (ttl_ms < 0)
			ttl_ms = lease->ttl_ms;
		lease->ttl_ms = (int32) ttl_ms;
		lease->expires_ns = core::ExpiryNanos(now_ns, ttl_ms);
		lease->renewals++;
		NoteExpiry(lease->expires_ns);
		Bump(&counters->v[C_RENEWED]);
		ReplicationLogLease(XLOG_LOCKEXT_RENEW, probe, lease, now_ns);
	}
	else
		Bump(&counters->v[C_RENEW_FAILED]);
	LWLockRelease(lock);
	return lease != NULL;
}

/*
 * Takes back a renewal that was not confirmed (replication.h): the lease
 * ends when it did before, if it is still that lease.  Not logged: the WAL
 * and a standby may keep the longer lease, which is conservative.
 */
void
LockTableUndoRenew(const LockextProbeKey *probe, const pg_uuid_t *lock_id,
				   const LockextRenewUndo *undo)
{
	LWLock	   *lock = PartitionLock(probe);
	void	   *entry;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	entry = FindEntry(probe);
	if (entry != NULL && LeaseOf(entry)->fence == undo->fence &&
		memcmp(LeaseOf(entry)->lock_id.data, lock_id->data, UUID_LEN) == 0)
	{
		LeaseOf(entry)->expires_ns = undo->expires_ns;
		LeaseOf(entry)->ttl_ms = undo->ttl_ms;
	}
	LWLockRelease(lock);
}

/* Check-and-set release: true only if a live lease held under lock_id was removed. */
bool
LockTableRelease(const LockextProbeKey *probe, const pg_uuid_t *lock_id)
{
	LWLock	   *lock = PartitionLock(probe);
	PartitionCounters *counters = CountersOf(probe);
	LockextLease *lease;
	bool		released;
	int64		now_ns;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	now_ns = LockextNowNanos();
	lease = HeldLease(probe, lock_id, now_ns);
	released = lease != NULL;
	if (released)
	{
		Bump(&counters->v[C_RELEASED]);
		/* logged before a hand-off's grant, in the order they happen */
		ReplicationLogRemoval(XLOG_LOCKEXT_RELEASE, probe, lock_id);
		RemoveOrHandOff(probe, lease, now_ns);
	}
	else
		Bump(&counters->v[C_RELEASE_NOOP]);
	LWLockRelease(lock);
	return released;
}

/*
 * All of n keys granted, each with its own request, or none: the distinct
 * partitions of the keys are locked EXCLUSIVE in ascending order (the
 * sweep's order), every key checked (held, or free with waiters queued:
 * refused), the slots reserved and the fences drawn in array order, the
 * entries filled, then the locks released in reverse.  A reader, which
 * takes the partitions in the same order, sees all of the leases or none.
 * Keys must be distinct (the SQL layer checks).  results[i].fence on
 * LOCKEXT_GRANTED; result[0] carries a failure's details.
 */
LockextGrantStatus
LockTableGrantAll(const LockextProbeKey *probes, const LockextGrantRequest *requests, int n,
				  LockextGrantResult *results)
{
	bool		locked[LOCKEXT_NUM_PARTITIONS] = {false};
	void	   *entries[LOCKEXT_MAX_KEYS_PER_CALL];
	int			reserved = 0;
	int			contended_at = -1;
	LockextGrantStatus status = LOCKEXT_GRANTED;
	int64		now_ns;

	Assert(n > 0 && n <= LOCKEXT_MAX_KEYS_PER_CALL);
	for (int i = 0; i < n; i++)
		locked[LockTablePartitionOf(&probes[i])] = true;
	for (int p = 0; p < LOCKEXT_NUM_PARTITIONS; p++)
		if (locked[p])
			LWLockAcquire(LockextLock(LOCKEXT_LOCK_PARTITION0 + p), LW_EXCLUSIVE);
	now_ns = LockextNowNanos();

	for (int i = 0; i < n && status == LOCKEXT_GRANTED; i++)
	{
		void	   *entry = FindEntry(&probes[i]);

		entries[i] = entry;
		if ((entry != NULL && core::IsLive(LeaseOf(entry)->expires_ns, now_ns)) ||
			(WaitQueueHasWaiters(LockTablePartitionOf(&probes[i])) && WaitQueueHead(&probes[i]) != NULL))
		{
			status = LOCKEXT_CONTENDED;
			contended_at = i;
		}
	}
	if (status == LOCKEXT_GRANTED && GraceRefusing(now_ns))
	{
		status = LOCKEXT_GRACE;
		contended_at = 0;
	}
	for (int i = 0; i < n && status == LOCKEXT_GRANTED; i++)
	{
		if (entries[i] != NULL)
			continue;
		if (!ReserveSlot())
		{
			status = LOCKEXT_TABLE_FULL;
			pg_atomic_fetch_add_u64(&table_state->table_full, 1);
		}
		else
			reserved++;
	}
	for (int i = 0; i < n && status == LOCKEXT_GRANTED; i++)
	{
		LockextFenceStatus fence_status = FenceNext(&results[i].fence);

		if (fence_status != LOCKEXT_FENCE_OK)
			status = FenceFailure(fence_status, &results[0]);
	}
	if (status == LOCKEXT_GRANTED)
	{
		for (int i = 0; i < n; i++)
		{
			if (entries[i] == NULL)
			{
				entries[i] = InsertEntry(&probes[i]);
				reserved--;
				Assert(entries[i] != NULL);	/* the slot was reserved: dynahash has room */
			}
			else
				Bump(&CountersOf(&probes[i])->v[C_EXPIRED]);
			FillLease(LeaseOf(entries[i]), &requests[i], results[i].fence, now_ns);
			Bump(&CountersOf(&probes[i])->v[C_ACQUIRED]);
			ReplicationLogLease(XLOG_LOCKEXT_GRANT, &probes[i], LeaseOf(entries[i]), now_ns);
		}
	}
	else
	{
		while (reserved-- > 0)
			ReleaseSlot();
		/* slots in use by others: what the 53400 message reports */
		results[0].live_leases = pg_atomic_read_u32(&table_state->used_slots);
		if (contended_at >= 0)
			Bump(&CountersOf(&probes[contended_at])->v[C_CONTENDED]);
	}

	for (int p = LOCKEXT_NUM_PARTITIONS - 1; p >= 0; p--)
		if (locked[p])
			LWLockRelease(LockextLock(LOCKEXT_LOCK_PARTITION0 + p));
	if (status == LOCKEXT_GRACE)
		GraceNoteRefusal();
	return status;
}

/*
 * One look of a queued waiter at its key: GRANTED (handed the lease; the
 * fence is in the slot), a failure status (the hand-off failed), or
 * LOCKEXT_QUEUED with *sleep_until_ns: when to look again if nothing wakes
 * it (the holder's expiry, or the end of a grace period, for the head
 * waiter; PG_INT64_MAX for the others, whom a hand-off or a departure
 * ahead of them wakes).  The head waiter of a free key takes it here.
 */
LockextGrantStatus
LockTableWaitStep(const LockextProbeKey *probe, LockextWaitSlot *slot, LockextGrantResult *result,
				  int64 *sleep_until_ns)
{
	LWLock	   *lock = PartitionLock(probe);
	LockextGrantStatus status = LOCKEXT_QUEUED;
	int64		now_ns;

	*sleep_until_ns = PG_INT64_MAX;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	now_ns = LockextNowNanos();
	if (slot->state == LOCKEXT_WAIT_QUEUED && WaitQueueHead(probe) == slot)
	{
		void	   *entry = FindEntry(probe);

		if (entry == NULL || !core::IsLive(LeaseOf(entry)->expires_ns, now_ns))
		{
			ServeFreeKey(probe, entry, now_ns);
			if (slot->state == LOCKEXT_WAIT_QUEUED)
				*sleep_until_ns = GraceRefusalEndsNanos();
		}
		else
			*sleep_until_ns = LeaseOf(entry)->expires_ns;
	}
	switch (slot->state)
	{
		case LOCKEXT_WAIT_GRANTED:
			status = LOCKEXT_GRANTED;
			result->fence = slot->fence;
			slot->state = LOCKEXT_WAIT_IDLE;
			break;
		case LOCKEXT_WAIT_FAILED:
			status = (LockextGrantStatus) slot->status;
			*result = slot->result;
			slot->state = LOCKEXT_WAIT_IDLE;
			break;
		default:
			break;
	}
	LWLockRelease(lock);
	return status;
}

/*
 * A waiter leaves (its bound passed, or it is interrupted): out of the
 * queue, the next waiter told (it may be the head now, and the key free);
 * a lease it was handed meanwhile is released again (nobody else knows its
 * lock_id), to the next waiter or for good, unless keep_grant: then
 * LOCKEXT_GRANTED and result->fence (the caller returns the handle).  A
 * failed hand-off returns its status; otherwise LOCKEXT_QUEUED (left without
 * a lease).  The slot is IDLE after.
 */
LockextGrantStatus
LockTableWaitLeave(const LockextProbeKey *probe, LockextWaitSlot *slot, bool keep_grant,
				   LockextGrantResult *result)
{
	LWLock	   *lock = PartitionLock(probe);
	int64		now_ns;
	LockextGrantStatus status = LOCKEXT_QUEUED;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	now_ns = LockextNowNanos();
	if (slot->state == LOCKEXT_WAIT_QUEUED)
	{
		void	   *entry;

		WaitQueueRemove(slot);
		slot->state = LOCKEXT_WAIT_IDLE;
		entry = FindEntry(probe);
		if (entry == NULL || !core::IsLive(LeaseOf(entry)->expires_ns, now_ns))
			ServeFreeKey(probe, entry, now_ns);
		WakeHead(probe);		/* the new head, if any, re-arms its sleep */
	}
	else if (slot->state == LOCKEXT_WAIT_GRANTED && keep_grant)
	{
		status = LOCKEXT_GRANTED;
		result->fence = slot->fence;
	}
	else if (slot->state == LOCKEXT_WAIT_FAILED)
	{
		status = (LockextGrantStatus) slot->status;
		*result = slot->result;
	}
	else if (slot->state == LOCKEXT_WAIT_GRANTED)
	{
		LockextLease *lease = HeldLease(probe, &slot->request.lock_id, now_ns);

		if (lease != NULL)
		{
			Bump(&CountersOf(probe)->v[C_RELEASED]);
			ReplicationLogRemoval(XLOG_LOCKEXT_RELEASE, probe, &slot->request.lock_id);
			RemoveOrHandOff(probe, lease, now_ns);
		}
	}
	slot->state = LOCKEXT_WAIT_IDLE;
	LWLockRelease(lock);
	return status;
}

/* Operator eviction: removes the entry; true if its lease was live. */
bool
LockTableEvict(const LockextProbeKey *probe)
{
	LWLock	   *lock = PartitionLock(probe);
	void	   *entry;
	bool		was_live = false;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	entry = FindEntry(probe);
	if (entry)
	{
		int64		now_ns = LockextNowNanos();

		was_live = core::IsLive(LeaseOf(entry)->expires_ns, now_ns);
		if (!was_live)
			Bump(&CountersOf(probe)->v[C_EXPIRED]);
		ReplicationLogRemoval(XLOG_LOCKEXT_EVICT, probe, NULL);
		RemoveOrHandOff(probe, LeaseOf(entry), now_ns);
	}
	LWLockRelease(lock);
	return was_live;
}

static void
AcquireAllPartitions(LWLockMode mode)
{
	for (int i = 0; i < LOCKEXT_NUM_PARTITIONS; i++)
		LWLockAcquire(LockextLock(LOCKEXT_LOCK_PARTITION0 + i), mode);
}

static void
ReleaseAllPartitions(void)
{
	for (int i = LOCKEXT_NUM_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(LockextLock(LOCKEXT_LOCK_PARTITION0 + i));
}

static void
ProbeOfEntry(LockextProbeKey *probe, const void *entry)
{
	const StoredKey *key = (const StoredKey *) entry;

	LockTableMakeProbe(probe, key->dbid, key->bytes, key->len);
}

/*
 * Removes every expired entry and recomputes the earliest live expiry.
 * Takes all partition locks.
 */
void
LockTableSweepExpired(void)
{
	HASH_SEQ_STATUS scan;
	void	   *entry;
	int64		earliest = INT64_MAX;
	int64		now_ns;
	int64		started_ns = LockextRealNowNanos();
	int64		ended_ns;

	AcquireAllPartitions(LW_EXCLUSIVE);
	now_ns = LockextNowNanos();
	hash_seq_init(&scan, lease_table);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		int64		expires_ns = LeaseOf(entry)->expires_ns;

		if (core::IsLive(expires_ns, now_ns))
			earliest = core::EarlierOf(earliest, expires_ns);
		else
		{
			LockextProbeKey probe;

			ProbeOfEntry(&probe, entry);
			Bump(&CountersOf(&probe)->v[C_EXPIRED]);
			/* an expired lease with waiters goes to the head waiter, in place */
			if (WaitQueueHasWaiters(LockTablePartitionOf(&probe)) && ServeHeadWaiter(&probe, entry, now_ns))
				earliest = core::EarlierOf(earliest, LeaseOf(entry)->expires_ns);
			else
				RemoveEntry(&probe);	/* removing the current element is allowed */
		}
	}
	pg_atomic_write_u64(&table_state->earliest_expiry_ns, (uint64) earliest);
	ReleaseAllPartitions();
	ended_ns = LockextRealNowNanos();
	pg_atomic_write_u64(&table_state->last_sweep_ns, (uint64) ended_ns);
	pg_atomic_write_u64(&table_state->last_sweep_cost_ns, (uint64) (ended_ns - started_ns));
}

/*
 * Visits every live lease.  Postmaster only, with no other process
 * attached (the clean-shutdown save), so no lock is taken.
 */
void
LockTableForEachLive(LockTableVisitor visit, void *arg)
{
	HASH_SEQ_STATUS scan;
	void	   *entry;
	int64		now_ns = LockextNowNanos();

	hash_seq_init(&scan, lease_table);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		const StoredKey *key = (const StoredKey *) entry;
		const LockextLease *lease = LeaseOf(entry);

		if (core::IsLive(lease->expires_ns, now_ns))
			visit(key->dbid, key->bytes, key->len, lease, now_ns, arg);
	}
}

/*
 * A copy of every live lease (all databases), consistent across
 * partitions.  The memory is allocated before the partition locks are
 * taken (sized by the slots in use, retried if more appeared meanwhile), so
 * nothing can fail while they are held; huge allocations are allowed, so
 * the view works at any lockext.max_locks.
 */
LockextLeaseCopy *
LockTableCopyLive(int *count, LockTableLockedStep while_locked, void *arg)
{
	for (int attempt = 0;; attempt++)
	{
		uint32		capacity = attempt < 3 ? pg_atomic_read_u32(&table_state->used_slots) + 16
										   : (uint32) lockext_max_locks;
		Size		key_stride = MAXALIGN(lockext_max_key_length + 1);
		LockextLeaseCopy *copies = (LockextLeaseCopy *)
			MemoryContextAllocHuge(CurrentMemoryContext, sizeof(LockextLeaseCopy) * capacity);
		char	   *keys = (char *) MemoryContextAllocHuge(CurrentMemoryContext,
														   key_stride * capacity);
		HASH_SEQ_STATUS scan;
		void	   *entry;
		uint32		n = 0;
		int64		now_ns;
		bool		any_waiters;

		AcquireAllPartitions(LW_SHARED);
		any_waiters = WaitQueueAnyWaiters();
		if (pg_atomic_read_u32(&table_state->used_slots) > capacity)
		{
			ReleaseAllPartitions();
			pfree(copies);
			pfree(keys);
			continue;
		}
		now_ns = LockextNowNanos();
		hash_seq_init(&scan, lease_table);
		while ((entry = hash_seq_search(&scan)) != NULL)
		{
			const StoredKey *key = (const StoredKey *) entry;
			const LockextLease *lease = LeaseOf(entry);
			LockextLeaseCopy *copy;

			if (!core::IsLive(lease->expires_ns, now_ns) || n >= capacity)
				continue;
			copy = &copies[n];
			copy->dbid = key->dbid;
			copy->key_len = key->len;
			copy->key = keys + key_stride * n;
			memcpy(copy->key, key->bytes, key->len);
			copy->key[key->len] = '\0';
			copy->lease = *lease;
			copy->remaining_ms = core::RemainingMillis(lease->expires_ns, now_ns);
			copy->waiters = any_waiters ? WaitQueueCountFor(key->dbid, key->bytes, key->len) : 0;
			n++;
		}
		if (while_locked != NULL)
			while_locked(n, arg);
		ReleaseAllPartitions();
		*count = (int) n;
		return copies;
	}
}

/*
 * The counters behind lockext_stats, read without partition locks.  Live
 * leases are the entries in use; when some lease may have expired since
 * the last sweep, a sweep reclaims them first, unless sweeps already took
 * more than a tenth of the recent time (a huge table read in a loop must
 * not hold grants back; one reader claims each sweep with a compare-and-
 * swap, so many readers do not multiply it): then expired leases not yet
 * reclaimed are counted too, until the next sweep.
 */
void
LockTableCollectCounts(LockextCounts *counts)
{
	int64		now_ns = LockextNowNanos();

	if ((uint64) now_ns >= pg_atomic_read_u64(&table_state->earliest_expiry_ns))
	{
		int64		real_ns = LockextRealNowNanos();
		uint64		last = pg_atomic_read_u64(&table_state->last_sweep_ns);
		int64		cost = (int64) pg_atomic_read_u64(&table_state->last_sweep_cost_ns);

		/* one reader claims the sweep; concurrent readers do not pile up behind it */
		if (real_ns - (int64) last >= 9 * cost &&
			pg_atomic_compare_exchange_u64(&table_state->last_sweep_ns, &last, (uint64) real_ns))
			LockTableSweepExpired();
	}

	memset(counts, 0, sizeof(*counts));
	for (int i = 0; i < LOCKEXT_NUM_PARTITIONS; i++)
	{
		uint64		sum[C_KINDS];
		PartitionCounters *c = &table_state->partitions[i].c;

		for (int k = 0; k < C_KINDS; k++)
			sum[k] = pg_atomic_read_u64(&c->v[k]);
		counts->acquired += sum[C_ACQUIRED];
		counts->contended += sum[C_CONTENDED];
		counts->renewed += sum[C_RENEWED];
		counts->renew_failed += sum[C_RENEW_FAILED];
		counts->released += sum[C_RELEASED];
		counts->release_noop += sum[C_RELEASE_NOOP];
		counts->expired += sum[C_EXPIRED];
		counts->live_leases += sum[C_ENTRIES];
	}
	counts->table_full = pg_atomic_read_u64(&table_state->table_full);
	counts->high_water = pg_atomic_read_u32(&table_state->high_water);
	SpinLockAcquire(&table_state->mutex);
	counts->stats_reset = table_state->stats_reset;
	SpinLockRelease(&table_state->mutex);
}

/* Zeroes every event counter; high_water restarts from the slots in use now. */
void
LockTableResetCounts(void)
{
	TimestampTz now = GetCurrentTimestamp();

	AcquireAllPartitions(LW_EXCLUSIVE);
	for (int i = 0; i < LOCKEXT_NUM_PARTITIONS; i++)
		for (int k = 0; k < C_EVENT_KINDS; k++)
			pg_atomic_write_u64(&table_state->partitions[i].c.v[k], 0);
	pg_atomic_write_u64(&table_state->table_full, 0);
	pg_atomic_write_u32(&table_state->high_water, pg_atomic_read_u32(&table_state->used_slots));
	SpinLockAcquire(&table_state->mutex);
	table_state->stats_reset = now;
	SpinLockRelease(&table_state->mutex);
	ReleaseAllPartitions();
}
