/*-------------------------------------------------------------------------
 *
 * fence.h
 *	  Fencing tokens that never go backwards for the life of the cluster.
 *
 * fence = WAL timeline << 44 | counter (core::ComposeFence).  The counter
 * is handed out from shared memory, but only up to the durable reservation
 * (durable.h), which is raised one block of 65536 counters ahead: after any
 * restart the counter resumes at the reservation, so it never returns to a
 * value that may have been handed out.  A promotion moves to a higher
 * timeline, so every fence of the new primary is above every fence the old
 * primary granted, even if the old primary still runs.
 *
 * Fail closed: when no readable copy of the reservation exists on a server
 * that ran before, or the copies are older than a fence found in the lease
 * file, the module is "lost": grants fail (LOCKEXT_FENCE_STATE_LOST) until
 * an operator names a floor with lockext_fence_resume(), which can only
 * raise the counter.
 *
 * Interface:
 *	FenceShmemSize(), FenceShmemInit()
 *	FenceRecover(reserved)		resume at a proven reservation (startup)
 *	FenceMarkLost(evidence)		no proven reservation (startup)
 *	FenceNext(&fence)			the next fence (caller holds a partition lock)
 *	FenceResume(floor, &next)	lockext_fence_resume()
 *	FenceReserved(), FenceIsLost()
 *	FenceRaiseCounterTo(n)		test hook
 *
 * Locking protocol: counter and reservation are pg_atomic.  A backend whose
 * counter passes the reservation raises it through DurableRaiseFence(),
 * which takes the durable lock while the caller holds its partition lock
 * (partition locks come first).  Nothing here ereports.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_FENCE_H
#define LOCKEXT_FENCE_H

typedef enum LockextFenceStatus
{
	LOCKEXT_FENCE_OK,
	LOCKEXT_FENCE_COUNTER_EXHAUSTED,
	LOCKEXT_FENCE_IO_ERROR,		/* errno says why */
	LOCKEXT_FENCE_STATE_LOST,
	LOCKEXT_FENCE_FLOOR_OUT_OF_RANGE,	/* FenceResume: floor beyond this timeline */
} LockextFenceStatus;

extern Size FenceShmemSize(void);
extern void FenceShmemInit(void);
extern void FenceRecover(uint64 reserved);
extern void FenceMarkLost(uint64 evidence);
extern LockextFenceStatus FenceNext(int64 *fence);
extern LockextFenceStatus FenceResume(int64 floor, int64 *next_above);
extern uint64 FenceReserved(void);
extern bool FenceIsLost(void);
extern void FenceRaiseCounterTo(uint64 counter);

#endif							/* LOCKEXT_FENCE_H */
