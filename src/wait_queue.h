/*-------------------------------------------------------------------------
 *
 * wait_queue.h
 *	  Backends waiting for a key: try_lock(key, ttl_ms, wait_ms).
 *
 * One wait slot per backend (PGPROC number), like the lock manager's
 * PGPROC wait links: the memory per lease slot does not grow, and a
 * waiter costs max_key_length plus about 150 bytes, whatever the table's
 * size.  A waiting slot is linked into the FIFO list of its key's
 * partition; the first slot of a key in that list is the key's head
 * waiter.  The lease table (lock_table.cpp) hands a freed lease straight
 * to the head waiter under the partition lock (granting it there, with
 * the waiter's own request), then sets the waiter's latch: the waiter
 * wakes up holding the lease, nobody can take the key in between, and
 * waiters do not stampede for it.
 *
 * Interface:
 *	WaitQueueShmemSize(), WaitQueueShmemInit()
 *	WaitQueueMySlot()				this backend's slot
 *	WaitQueueAdmit(), WaitQueueLeave()	the lockext.max_waiters bound (no lock)
 *	WaitQueueAppend(), WaitQueueRemove(), WaitQueueHead(), WaitQueueCountFor()
 *									the per-partition FIFO lists
 *	WaitQueueAnyWaiters()			anyone waiting at all (no lock)
 *	WaitQueueWake(slot)				set the waiter's latch
 *	WaitQueueWakeAll()				every waiter re-checks (test clock hook)
 *	WaitQueueHasWaiters(partition)	the release path's fast check: one atomic read
 *	WaitQueueCounts()				lockext_stats: waiting now, waits, timeouts
 *
 * Locking protocol:
 *	- A partition's list, its count and the state of every slot linked into
 *	  it are guarded by that partition's lock (lock_table.h), EXCLUSIVE to
 *	  change, SHARED to read (lockext_leases counts waiters per key).
 *	- A slot's key, request and state are written by its backend before it
 *	  is linked, and after that only under the partition lock; the latch is
 *	  set by whoever changes the state.
 *	- Admission (waiting_now) is a compare-and-swap on an atomic, no lock.
 *	- Nothing here ereports or allocates; every function but the shmem ones
 *	  may run under a partition lock.
 *
 * Include after "postgres.h" and "lock_table.h".
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_WAIT_QUEUE_H
#define LOCKEXT_WAIT_QUEUE_H

#include "lib/ilist.h"
#include "storage/latch.h"

typedef enum LockextWaitState
{
	LOCKEXT_WAIT_IDLE,			/* not linked */
	LOCKEXT_WAIT_QUEUED,		/* linked, waiting */
	LOCKEXT_WAIT_GRANTED,		/* handed the lease; unlinked */
	LOCKEXT_WAIT_FAILED			/* the hand-off failed (status says why); unlinked */
} LockextWaitState;

typedef struct LockextWaitSlot
{
	dlist_node	link;			/* in the partition's list while QUEUED */
	LockextWaitState state;
	int			partition;
	Latch	   *latch;			/* the waiting backend's procLatch */
	LockextGrantRequest request;	/* what the grant records: the waiter's lock_id, TTL... */
	int64		fence;			/* GRANTED: the fence of the handed lease */
	uint64		grant_lsn;		/* GRANTED: end of its WAL record (0: not logged) */
	bool		grant_sync;		/* GRANTED: logged in lockext.replication = sync */
	TimestampTz granted_at;		/* GRANTED: wall clock of the hand-off (display) */
	int			status;			/* FAILED: the LockextGrantStatus */
	LockextGrantResult result;	/* FAILED: its details */
	Oid			dbid;
	uint32		hash;
	uint32		key_len;
	char		key[FLEXIBLE_ARRAY_MEMBER];	/* lockext.max_key_length bytes */
} LockextWaitSlot;

extern Size WaitQueueShmemSize(void);
extern void WaitQueueShmemInit(void);

extern LockextWaitSlot *WaitQueueMySlot(void);
extern bool WaitQueueAdmit(void);
extern void WaitQueueLeave(bool timed_out);

/* the slot's key fields are filled from probe; the slot must be IDLE */
extern void WaitQueueAppend(LockextWaitSlot *slot, const LockextProbeKey *probe);
extern void WaitQueueRemove(LockextWaitSlot *slot);
extern LockextWaitSlot *WaitQueueHead(const LockextProbeKey *probe);
extern uint32 WaitQueueCountFor(Oid dbid, const char *key, uint32 key_len);
extern bool WaitQueueAnyWaiters(void);
extern bool WaitQueueHasWaiters(int partition);
extern void WaitQueueWake(LockextWaitSlot *slot);
extern void WaitQueueWakeAll(void);

typedef struct LockextWaitCounts
{
	uint64		waiting_now;
	uint64		waits;
	uint64		wait_timeouts;
} LockextWaitCounts;

extern void WaitQueueCounts(LockextWaitCounts *counts);
extern void WaitQueueResetCounts(void);

#endif							/* LOCKEXT_WAIT_QUEUE_H */
