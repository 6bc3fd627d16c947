/*-------------------------------------------------------------------------
 *
 * lockext.h
 *	  Shared-memory layout, constants, GUC variables and the internal
 *	  interfaces between lockext's modules.
 *
 * Include after "postgres.h" (inside extern "C" in C++ files).  Everything
 * declared here that lives in shared memory is a plain struct: no
 * constructors, no destructors, only pg_atomic_*, slock_t and LWLocks.
 *
 * Locking protocol (the whole extension):
 *	- The lease table is a partitioned dynahash.  Entry e for (dbid, key)
 *	  with hash h is protected by partition lock h % LOCKEXT_NUM_PARTITIONS,
 *	  taken EXCLUSIVE to grant, renew, release or evict and SHARED to read.
 *	- Operations that visit every entry (the expired-lease sweep, the views,
 *	  stats reset) take all partition locks in ascending order and release
 *	  them in reverse, as PostgreSQL's lock manager does.
 *	- LockextPartitionStats[i] is protected by partition lock i.
 *	- used_slots, fence_counter, fence_reserved, earliest_expiry_ns,
 *	  high_water, table_full, the grace fields and the test clock are
 *	  pg_atomic variables, read and written without locks.
 *	- Extending fence_reserved (a durable write of pg_lockext/fence) happens
 *	  under the fence lock, GetNamedLWLockTranche("lockext")[16], which may be
 *	  taken while holding one partition lock, never the other way round.
 *	- stats_reset and grace_reason are protected by the spinlock "mutex".
 *	- No code path holds a partition lock while it can ereport(ERROR), except
 *	  the test stall hook, which does so on purpose.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_LOCKEXT_H
#define LOCKEXT_LOCKEXT_H

#include "port/atomics.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#define LOCKEXT_NUM_PARTITIONS 16	/* power of two */
#define LOCKEXT_TRANCHE_NAME "lockext"
#define LOCKEXT_APPNAME_BYTES 16	/* application_name kept per lease, with NUL */
#define LOCKEXT_ADDR_BYTES 16

/* GUC variables (src/lockext.cpp) */
extern int	lockext_max_locks;
extern int	lockext_max_key_length;
extern int	lockext_max_ttl_ms;
extern int	lockext_recovery_grace_ms;
extern bool lockext_save;
extern bool lockext_enable_test_hooks;

/*
 * Stored key: the fixed-size head of every hash entry.  dynahash's keysize
 * is LockextKeySize(): the header plus lockext.max_key_length bytes.  Only
 * the first len bytes of bytes[] are meaningful; the hash, compare and copy
 * functions look at nothing else.
 */
typedef struct LockextStoredKey
{
	Oid			dbid;
	uint32		len;
	char		bytes[FLEXIBLE_ARRAY_MEMBER];
} LockextStoredKey;

/*
 * Probe key: what callers pass to hash_search_with_hash_value().  The
 * table's compare and copy functions take a stored key as the first
 * argument and a probe as the second, which avoids copying every key into a
 * max_key_length buffer before each lookup.
 */
typedef struct LockextProbeKey
{
	Oid			dbid;
	uint32		len;
	const char *bytes;
	uint32		hash;			/* LockextHashKey(dbid, bytes, len) */
} LockextProbeKey;

/* The lease, stored right after the key in each entry. */
typedef struct LockextLease
{
	pg_uuid_t	lock_id;
	int64		fence;
	int64		expires_ns;		/* monotonic clock */
	TimestampTz acquired_at;	/* wall clock, display only */
	int32		ttl_ms;
	uint32		renewals;
	Oid			holder;			/* role that took the lease */
	int32		pid;
	uint8		client_addr[LOCKEXT_ADDR_BYTES];	/* IPv6, IPv4-mapped for IPv4;
													 * all zero for local sockets */
	char		application_name[LOCKEXT_APPNAME_BYTES];
} LockextLease;

/* 88 bytes: a slot costs max_key_length + about 128 bytes with the hash overhead */
StaticAssertDecl(sizeof(LockextLease) == 88, "LockextLease grew");

/* Event counters behind lockext_stats. */
typedef struct LockextCounters
{
	uint64		acquired;
	uint64		contended;
	uint64		renewed;
	uint64		renew_failed;
	uint64		released;
	uint64		release_noop;
	uint64		expired;
} LockextCounters;

/* One partition's counters, padded so partitions do not share cache lines. */
typedef union LockextPartitionStats
{
	LockextCounters counters;
	char		pad[PG_CACHE_LINE_SIZE];
} LockextPartitionStats;

typedef struct LockextSharedState
{
	pg_atomic_uint64 fence_counter;	/* last fence counter handed out */
	pg_atomic_uint64 fence_reserved;	/* counters up to this are durably reserved */
	pg_atomic_uint32 used_slots;	/* entries in the table, live or not yet reclaimed */
	pg_atomic_uint32 high_water;	/* most entries ever in use at once */
	pg_atomic_uint64 table_full;	/* grants refused for lack of a slot */
	pg_atomic_uint64 earliest_expiry_ns;	/* no live lease expires before this */
	pg_atomic_uint32 clock_frozen;	/* test hook: expiry clock stopped */
	pg_atomic_uint64 frozen_now_ns; /* test hook: the stopped clock's value */
	pg_atomic_uint64 clock_offset_ns;	/* test hook: added to the real clock so
										 * that releasing a frozen clock never
										 * moves time backwards */
	uint64		hash_seed;		/* random per shared-memory lifetime */
	pg_atomic_uint64 grace_until_ns;	/* grants report contention before this */
	pg_atomic_uint32 promotion_grace_pending;	/* started in recovery: grace at promotion */
	pg_atomic_uint64 grace_refused; /* grants refused during grace periods */
	slock_t		mutex;
	TimestampTz stats_reset;
	int			grace_reason;	/* LockextGraceReason of the last grace period */
	LockextPartitionStats partition_stats[LOCKEXT_NUM_PARTITIONS];
} LockextSharedState;

typedef enum LockextGraceReason
{
	LOCKEXT_GRACE_NONE = 0,
	LOCKEXT_GRACE_CRASH_RESTART,		/* shared memory reinitialised after a crash */
	LOCKEXT_GRACE_UNCLEAN_SHUTDOWN,	/* previous run did not shut down cleanly */
	LOCKEXT_GRACE_NOT_SAVED,			/* clean shutdown with lockext.save = off */
	LOCKEXT_GRACE_NOT_RESTORED,		/* saved leases not (all) restored */
	LOCKEXT_GRACE_PROMOTION,			/* the server left recovery */
} LockextGraceReason;

#define LOCKEXT_FENCE_LOCK_INDEX LOCKEXT_NUM_PARTITIONS
#define LOCKEXT_DIR "pg_lockext"
#define LOCKEXT_MARKER_FILE LOCKEXT_DIR "/running"	/* see persist.cpp */

/* shmem.cpp: shared state, clock, hashing */
extern LockextSharedState *lockext_state;
extern HTAB *lockext_table;
extern void LockextInstallShmemHooks(void);
extern void LockextReportNotPreloaded(void) pg_attribute_noreturn();
extern void LockextRequireLoaded(void);
extern int64 LockextNowNanos(void);
extern int64 LockextRealNowNanos(void);
extern uint32 LockextHashKey(Oid dbid, const char *bytes, uint32 len);
extern Size LockextKeySize(void);
extern Size LockextEntrySize(void);
extern LWLock *LockextPartitionLock(uint32 hash);
extern int	LockextPartitionOf(uint32 hash);
extern LWLock *LockextFenceLock(void);

/* fence.cpp: fencing tokens with a durable, block-reserved counter */
typedef enum LockextFenceStatus
{
	LOCKEXT_FENCE_OK,
	LOCKEXT_FENCE_COUNTER_EXHAUSTED,
	LOCKEXT_FENCE_IO_ERROR,		/* errno says why */
} LockextFenceStatus;
extern LockextFenceStatus LockextNextFence(int64 *fence);
extern void LockextLoadFenceCounter(void);
extern void LockextRaiseCounterTo(uint64 counter);

/* persist.cpp: marker, save at clean shutdown, restore at start, grace */
extern void LockextStartupPersistence(bool reinitialising);
extern void LockextCheckPromotionGrace(void);
extern int64 LockextGraceMillis(void);
extern const char *LockextGraceReasonText(int reason);

static inline LockextLease *
LockextEntryLease(void *entry)
{
	return (LockextLease *) ((char *) entry + LockextKeySize());
}

#endif							/* LOCKEXT_LOCKEXT_H */
