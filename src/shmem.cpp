/*-------------------------------------------------------------------------
 *
 * shmem.cpp
 *	  Shared memory for lockext: the request and startup hooks, the
 *	  partitioned lease hash table, its key functions, the partition locks
 *	  and the monotonic clock (with the test hooks' frozen variant).
 *
 * Sizing: one LockextSharedState plus a dynahash of lockext.max_locks
 * entries, each LockextKeySize() + sizeof(LockextLease) bytes, allocated
 * once at postmaster start with HASH_FIXED_SIZE: the table never grows
 * into the rest of shared memory.
 *
 * Locking protocol: the startup hook runs under AddinShmemInitLock, as
 * every add-in's does; partition i of the table is guarded by
 * GetNamedLWLockTranche("lockext")[i].  See lockext.h for the rest.
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include <time.h>

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"

#include "lockext/lockext.h"
}

#include "lockext/core/lease_rules.hpp"

LockextSharedState *lockext_state = NULL;
HTAB	   *lockext_table = NULL;

static LWLockPadded *partition_locks = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static bool shmem_initialised_before = false;	/* postmaster: a later init is a crash restart */

Size
LockextKeySize(void)
{
	return MAXALIGN(offsetof(LockextStoredKey, bytes) + lockext_max_key_length);
}

Size
LockextEntrySize(void)
{
	return LockextKeySize() + MAXALIGN(sizeof(LockextLease));
}

/*
 * Seeded hash of (dbid, key bytes).  The seed is drawn from a strong random
 * source when shared memory is created, so an adversary cannot choose keys
 * that pile into one bucket.
 */
uint32
LockextHashKey(Oid dbid, const char *bytes, uint32 len)
{
	uint64		h = hash_bytes_extended((const unsigned char *) bytes, (int) len,
									lockext_state->hash_seed ^ (uint64) dbid);

	return (uint32) (h ^ (h >> 32));
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
	const LockextStoredKey *stored = (const LockextStoredKey *) stored_key;
	const LockextProbeKey *probe = (const LockextProbeKey *) probe_key;

	(void) keysize;
	if (stored->dbid != probe->dbid || stored->len != probe->len)
		return 1;
	return memcmp(stored->bytes, probe->bytes, probe->len);
}

static void *
CopyProbeToStoredKey(void *dest, const void *src, Size keysize)
{
	LockextStoredKey *stored = (LockextStoredKey *) dest;
	const LockextProbeKey *probe = (const LockextProbeKey *) src;

	(void) keysize;
	stored->dbid = probe->dbid;
	stored->len = probe->len;
	memcpy(stored->bytes, probe->bytes, probe->len);
	return dest;
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

static Size
SharedMemorySize(void)
{
	return add_size(MAXALIGN(sizeof(LockextSharedState)),
					hash_estimate_size(TableElements(), LockextEntrySize()));
}

static void
LockextShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	RequestAddinShmemSpace(SharedMemorySize());
	/* one lock per partition, then the fence reservation lock */
	RequestNamedLWLockTranche(LOCKEXT_TRANCHE_NAME, LOCKEXT_NUM_PARTITIONS + 1);
}

static void
InitSharedState(LockextSharedState *state)
{
	memset(state, 0, sizeof(*state));
	pg_atomic_init_u64(&state->fence_counter, 0);
	pg_atomic_init_u64(&state->fence_reserved, 0);
	pg_atomic_init_u64(&state->grace_until_ns, 0);
	pg_atomic_init_u32(&state->promotion_grace_pending, 0);
	pg_atomic_init_u64(&state->grace_refused, 0);
	pg_atomic_init_u32(&state->used_slots, 0);
	pg_atomic_init_u32(&state->high_water, 0);
	pg_atomic_init_u64(&state->table_full, 0);
	pg_atomic_init_u64(&state->earliest_expiry_ns, PG_UINT64_MAX);
	pg_atomic_init_u32(&state->clock_frozen, 0);
	pg_atomic_init_u64(&state->frozen_now_ns, 0);
	pg_atomic_init_u64(&state->clock_offset_ns, 0);
	if (!pg_strong_random(&state->hash_seed, sizeof(state->hash_seed)))
		ereport(FATAL, (errmsg("lockext could not generate a random hash seed")));
	state->grace_reason = LOCKEXT_GRACE_NONE;
	SpinLockInit(&state->mutex);
	state->stats_reset = GetCurrentTimestamp();
}

static void
LockextShmemStartup(void)
{
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	lockext_state = (LockextSharedState *) ShmemInitStruct("lockext state",
															sizeof(LockextSharedState), &found);
	if (!found)
		InitSharedState(lockext_state);

	memset(&info, 0, sizeof(info));
	info.keysize = LockextKeySize();
	info.entrysize = LockextEntrySize();
	info.num_partitions = LOCKEXT_NUM_PARTITIONS;
	info.hash = ProbeHash;
	info.match = StoredKeyMatchesProbe;
	info.keycopy = CopyProbeToStoredKey;
	lockext_table = ShmemInitHash("lockext leases", TableElements(), TableElements(), &info,
								  HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_KEYCOPY |
									  HASH_PARTITION | HASH_FIXED_SIZE);

	partition_locks = GetNamedLWLockTranche(LOCKEXT_TRANCHE_NAME);

	/*
	 * The postmaster (or a single-user backend) owns persistence: it runs
	 * this hook at start and again after every crash reinitialisation.
	 */
	if (!found && !IsUnderPostmaster)
	{
		LockextStartupPersistence(shmem_initialised_before);
		shmem_initialised_before = true;
	}

	LWLockRelease(AddinShmemInitLock);
}

void
LockextInstallShmemHooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = LockextShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = LockextShmemStartup;
}

/* Raises 55000 with a hint: lockext was not loaded at server start. */
void
LockextReportNotPreloaded(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("lockext must be loaded via \"shared_preload_libraries\""),
			 errhint("Add lockext to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* Raises 55000 when the lease table is not there (not preloaded). */
void
LockextRequireLoaded(void)
{
	if (lockext_state == NULL || lockext_table == NULL)
		LockextReportNotPreloaded();
}

int
LockextPartitionOf(uint32 hash)
{
	return (int) (hash % LOCKEXT_NUM_PARTITIONS);
}

LWLock *
LockextFenceLock(void)
{
	return &partition_locks[LOCKEXT_FENCE_LOCK_INDEX].lock;
}

LWLock *
LockextPartitionLock(uint32 hash)
{
	return &partition_locks[LockextPartitionOf(hash)].lock;
}

/* CLOCK_MONOTONIC in nanoseconds: wall-clock steps do not move it. */
int64
LockextRealNowNanos(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * The instant that lease expiry is measured against: the monotonic clock,
 * never GetCurrentTimestamp().  With lockext.enable_test_hooks on, the test
 * clock can be frozen and advanced by hand, and after release runs on from
 * where it stood (real clock plus an offset), so it never goes backwards.
 */
int64
LockextNowNanos(void)
{
	if (likely(!lockext_enable_test_hooks))
		return LockextRealNowNanos();
	if (pg_atomic_read_u32(&lockext_state->clock_frozen))
		return (int64) pg_atomic_read_u64(&lockext_state->frozen_now_ns);
	return LockextRealNowNanos() + (int64) pg_atomic_read_u64(&lockext_state->clock_offset_ns);
}
