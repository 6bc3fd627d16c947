/*-------------------------------------------------------------------------
 *
 * lock_table.h
 *	  The shared-memory lease table: keys, probes, grant, renew, release,
 *	  evict, the expired-lease sweep, restore at start, and the copies and
 *	  counts the views read.
 *
 * Interface:
 *	LockTableShmemSize(), LockTableShmemInit()
 *	LockTableMakeProbe()				a lookup key for (database, key bytes)
 *	LockTableRefuseIfHeld()				the cheap refusal before a grant is prepared
 *	LockTableGrant/Renew/Release/Evict	one lease, check-and-set on lock_id
 *	LockTableUndoRenew()				take back a renewal not confirmed (replication.h)
 *	LockTableGrantAll()					several keys, all or none (try_lock_all)
 *	LockTableGrantOrQueue/WaitStep/WaitLeave	waiting for a held key (wait_queue.h)
 *	LockTableSweepExpired()				reclaim every expired slot
 *	LockTableRestore()					put a saved lease back (startup)
 *	LockTableReplayLease/Removal()		WAL redo of lease records (replication.h)
 *	LockTableBarrier()					every partition lock once (mode switch)
 *	LockTableForEachLive()				visit live leases (postmaster, at shutdown)
 *	LockTableCopyLive()					a consistent copy for lockext_leases
 *	LockTableCollectCounts()			counters for lockext_stats, no table scan
 *	LockTableResetCounts()				lockext_stats_reset()
 *	LockTablePartitionOf()				the partition guarding a probe (test hook)
 *
 * Locking protocol:
 *	- Entry e for (dbid, key) with hash h lives in partition h % 16, guarded
 *	  by LockextLock(LOCKEXT_LOCK_PARTITION0 + partition): EXCLUSIVE to grant,
 *	  renew, release, evict or reclaim, SHARED to read.
 *	- Grant, renew, release and evict hold exactly one partition lock, for
 *	  O(1) work; the grant may take the durable lock after it (fence.h).
 *	  GrantAll holds the partitions of its keys, taken in ascending order
 *	  and released in reverse, like the sweep; the durable lock comes after.
 *	- The lease that ends by release, eviction or expiry goes to the key's
 *	  head waiter under the same partition lock (wait_queue.h); a free key
 *	  with waiters is never granted to anyone else.
 *	  They return with no lock held and never ereport: outcomes are values
 *	  and the SQL layer raises errors after the locks are gone.
 *	- The sweep and the view's copy take every partition lock in ascending
 *	  order (EXCLUSIVE resp. SHARED) and release them in reverse, as the
 *	  lock manager does; the copy's memory is allocated before.
 *	- used_slots keeps max_locks exact across partitions: a slot is taken by
 *	  a compare-and-swap that only succeeds while one is free.
 *	- The per-partition counters are pg_atomic_uint64 written under the
 *	  partition's lock, so lockext_stats reads them without locks: with it
 *	  EXCLUSIVE by a plain read and write (the only writer), with it SHARED
 *	  (the refusal probe) by an atomic add, which cannot overlap either.
 *	- The startup and shutdown entry points run in the postmaster with no
 *	  other process attached.
 *
 * Include after "postgres.h".
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_LOCK_TABLE_H
#define LOCKEXT_LOCK_TABLE_H

#include "datatype/timestamp.h"
#include "utils/uuid.h"

#define LOCKEXT_APPNAME_BYTES 16	/* application_name kept per lease, with NUL */
#define LOCKEXT_ADDR_BYTES 16

/*
 * Probe key: what callers look a lease up with.  The table compares and
 * copies it against the stored keys without first copying the key into a
 * max_key_length buffer.
 */
typedef struct LockextProbeKey
{
	Oid			dbid;
	uint32		len;
	const char *bytes;
	uint32		hash;			/* seeded hash of (dbid, bytes) */
} LockextProbeKey;

/* The lease, stored right after the key in each entry. */
typedef struct LockextLease
{
	pg_uuid_t	lock_id;
	int64		fence;
	int64		expires_ns;		/* lease clock (clock.h) */
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

typedef enum LockextGrantStatus
{
	LOCKEXT_GRANTED,
	LOCKEXT_CONTENDED,			/* held by someone else */
	LOCKEXT_GRACE,				/* refused: grace period (reported as contention) */
	LOCKEXT_TABLE_FULL,
	LOCKEXT_FENCE_EXHAUSTED,
	LOCKEXT_FENCE_WRITE_FAILED, /* result->saved_errno says why */
	LOCKEXT_FENCE_LOST,			/* fence state lost: lockext_fence_resume() */
	LOCKEXT_QUEUED,				/* contended, and the caller's wait slot is queued */
	LOCKEXT_TOO_MANY_WAITERS,	/* contended, and lockext.max_waiters already wait */
} LockextGrantStatus;

/* What the grant records about the caller, filled by the SQL layer. */
typedef struct LockextGrantRequest
{
	int64		ttl_ms;
	pg_uuid_t	lock_id;
	TimestampTz wall_now;
	Oid			holder;
	int32		pid;
	uint8		client_addr[LOCKEXT_ADDR_BYTES];
	char		application_name[LOCKEXT_APPNAME_BYTES];
} LockextGrantRequest;

typedef struct LockextGrantResult
{
	int64		fence;
	uint32		live_leases;	/* with LOCKEXT_TABLE_FULL: slots in use */
	int			saved_errno;	/* with LOCKEXT_FENCE_WRITE_FAILED */
} LockextGrantResult;

/* One lease as the view sees it: a copy taken under the partition locks. */
typedef struct LockextLeaseCopy
{
	Oid			dbid;
	uint32		key_len;
	char	   *key;			/* NUL-terminated, in the copy's key arena */
	LockextLease lease;
	int64		remaining_ms;
	uint32		waiters;		/* backends waiting for this key */
} LockextLeaseCopy;

/* Event counters behind lockext_stats, summed over partitions. */
typedef struct LockextCounts
{
	uint64		acquired;
	uint64		contended;
	uint64		renewed;
	uint64		renew_failed;
	uint64		released;
	uint64		release_noop;
	uint64		expired;
	uint64		table_full;
	uint64		live_leases;
	uint64		high_water;
	TimestampTz stats_reset;
} LockextCounts;

typedef void (*LockTableVisitor) (Oid dbid, const char *key, uint32 key_len,
								  const LockextLease *lease, int64 now_ns, void *arg);

extern Size LockTableShmemSize(void);
extern void LockTableShmemInit(void);

extern void LockTableMakeProbe(LockextProbeKey *probe, Oid dbid, const char *bytes, uint32 len);
extern int	LockTablePartitionOf(const LockextProbeKey *probe);
/*
 * True (and counted as contention) if a live lease holds probe's key now,
 * found under the partition lock SHARED: many callers refused on one hot
 * key do not queue behind each other.  False says nothing: the grant
 * decides again under the lock EXCLUSIVE.
 */
extern bool LockTableRefuseIfHeld(const LockextProbeKey *probe);
extern LockextGrantStatus LockTableGrant(const LockextProbeKey *probe,
										 const LockextGrantRequest *request,
										 LockextGrantResult *result);
/*
 * Waiting (wait_queue.h): the grant, or, when the key is held, queue_slot
 * appended to its waiters (LOCKEXT_QUEUED); then LockTableWaitStep() until
 * it is granted, and LockTableWaitLeave() whenever the wait ends otherwise.
 */
/* try_lock_all(): at most this many keys per call (54000 beyond) */
#define LOCKEXT_MAX_KEYS_PER_CALL 64
extern LockextGrantStatus LockTableGrantAll(const LockextProbeKey *probes,
											const LockextGrantRequest *requests, int n,
											LockextGrantResult *results);
struct LockextWaitSlot;
extern LockextGrantStatus LockTableGrantOrQueue(const LockextProbeKey *probe,
												const LockextGrantRequest *request,
												LockextGrantResult *result,
												struct LockextWaitSlot *queue_slot);
extern LockextGrantStatus LockTableWaitStep(const LockextProbeKey *probe,
											struct LockextWaitSlot *slot,
											LockextGrantResult *result, int64 *sleep_until_ns);
extern LockextGrantStatus LockTableWaitLeave(const LockextProbeKey *probe,
											 struct LockextWaitSlot *slot, bool keep_grant,
											 LockextGrantResult *result);
/*
 * ttl_ms < 0: keep the lease's own TTL, also above a lowered max_ttl_ms (it
 * was granted; the durable TTL ceiling covers it)
 */
/* what a renewal replaced, to take it back (LockTableUndoRenew) */
typedef struct LockextRenewUndo
{
	int64		expires_ns;
	int32		ttl_ms;
	int64		fence;
} LockextRenewUndo;
extern bool LockTableRenew(const LockextProbeKey *probe, const pg_uuid_t *lock_id, int64 ttl_ms,
						   LockextRenewUndo *undo);
extern void LockTableUndoRenew(const LockextProbeKey *probe, const pg_uuid_t *lock_id,
							   const LockextRenewUndo *undo);
extern bool LockTableRelease(const LockextProbeKey *probe, const pg_uuid_t *lock_id);
extern bool LockTableEvict(const LockextProbeKey *probe);
extern void LockTableSweepExpired(void);
extern bool LockTableRestore(Oid dbid, const char *key, uint32 key_len, const LockextLease *lease);
typedef enum LockextReplayOutcome
{
	LOCKEXT_REPLAY_APPLIED,
	LOCKEXT_REPLAY_SKIPPED,		/* a snapshot item older than the lease in the table */
	LOCKEXT_REPLAY_NO_ROOM,		/* no slot, or a key longer than lockext.max_key_length */
} LockextReplayOutcome;
extern LockextReplayOutcome LockTableReplayLease(const LockextProbeKey *probe,
												 const LockextLease *lease, bool snapshot_item);
extern void LockTableReplayRemoval(const LockextProbeKey *probe, const pg_uuid_t *lock_id);
extern void LockTableBarrier(void);
extern void LockTableForEachLive(LockTableVisitor visit, void *arg);
/* called with every partition lock still held, after the copy of n leases */
typedef void (*LockTableLockedStep) (uint32 n, void *arg);
extern LockextLeaseCopy *LockTableCopyLive(int *count, LockTableLockedStep while_locked, void *arg);
extern void LockTableCollectCounts(LockextCounts *counts);
extern void LockTableResetCounts(void);

#endif							/* LOCKEXT_LOCK_TABLE_H */
