/*-------------------------------------------------------------------------
 *
 * fence.cpp
 *	  Fencing tokens (see fence.h).
 *
 *-------------------------------------------------------------------------
 */
#include "core/lease_rules.hpp"

extern "C"
{
#include "postgres.h"

#include "access/xlog.h"
#include "port/atomics.h"
#include "storage/shmem.h"

#include "durable.h"
#include "fence.h"
}

namespace core = lockext::core;

typedef struct FenceShared
{
	pg_atomic_uint64 counter;	/* last counter handed out */
	pg_atomic_uint64 reserved;	/* counters up to this are durably reserved */
	pg_atomic_uint32 lost;		/* no proven reservation: grants refused */
} FenceShared;

static FenceShared *fence_state = NULL;

Size
FenceShmemSize(void)
{
	return MAXALIGN(sizeof(FenceShared));
}

void
FenceShmemInit(void)
{
	bool		found;

	fence_state = (FenceShared *) ShmemInitStruct("lockext fences", sizeof(FenceShared), &found);
	if (!found)
	{
		pg_atomic_init_u64(&fence_state->counter, 0);
		pg_atomic_init_u64(&fence_state->reserved, 0);
		pg_atomic_init_u32(&fence_state->lost, 0);
	}
}

/* Startup: every counter up to reserved may have been handed out before. */
void
FenceRecover(uint64 reserved)
{
	pg_atomic_write_u64(&fence_state->counter, reserved);
	pg_atomic_write_u64(&fence_state->reserved, reserved);
	pg_atomic_write_u32(&fence_state->lost, 0);
}

/* Startup: nothing proves how far fences went; evidence is a counter known to be used. */
void
FenceMarkLost(uint64 evidence)
{
	pg_atomic_write_u64(&fence_state->counter, evidence);
	pg_atomic_write_u64(&fence_state->reserved, evidence);
	pg_atomic_write_u32(&fence_state->lost, 1);
}

bool
FenceIsLost(void)
{
	return pg_atomic_read_u32(&fence_state->lost) != 0;
}

uint64
FenceReserved(void)
{
	return pg_atomic_read_u64(&fence_state->reserved);
}

/* Raises the durable reservation to cover counter; false with errno set. */
static bool
ReserveThrough(uint64 counter)
{
	uint64		reserved = pg_atomic_read_u64(&fence_state->reserved);
	uint64		target;

	if (counter <= reserved)
		return true;
	target = core::NextReservation(reserved, counter);
	if (!DurableRaiseFence(target))
		return false;
	/* only raise: a concurrent reservation may have gone further */
	while (reserved < target &&
		   !pg_atomic_compare_exchange_u64(&fence_state->reserved, &reserved, target))
		;
	return true;
}

/*
 * Hands out the next fence.  Caller holds the key's partition lock
 * EXCLUSIVE, so fences of one key increase in grant order.
 */
LockextFenceStatus
FenceNext(int64 *fence)
{
	uint64		counter;

	if (unlikely(FenceIsLost()))
		return LOCKEXT_FENCE_STATE_LOST;
	counter = pg_atomic_add_fetch_u64(&fence_state->counter, 1);
	if (counter >= core::kFenceCounterLimit)
		return LOCKEXT_FENCE_COUNTER_EXHAUSTED;
	if (counter > pg_atomic_read_u64(&fence_state->reserved) && !ReserveThrough(counter))
		return LOCKEXT_FENCE_IO_ERROR;
	if (!core::ComposeFence(GetWALInsertionTimeLine(), counter, fence))
		return LOCKEXT_FENCE_COUNTER_EXHAUSTED;
	return LOCKEXT_FENCE_OK;
}

/* Only moves the counter up. */
void
FenceRaiseCounterTo(uint64 counter)
{
	uint64		current = pg_atomic_read_u64(&fence_state->counter);

	while (current < counter &&
		   !pg_atomic_compare_exchange_u64(&fence_state->counter, &current, counter))
		;
}

/*
 * lockext_fence_resume(floor): every later fence is above floor.  Raises
 * the counter (never lowers it), makes the reservation durable and ends the
 * "lost" state.  *next_above receives the fence every later grant exceeds.
 */
LockextFenceStatus
FenceResume(int64 floor, int64 *next_above)
{
	uint32		timeline = GetWALInsertionTimeLine();
	uint64		counter = core::CounterFloorFor(timeline, floor);
	int64		composed;

	if (counter >= core::kFenceCounterLimit - 1)
		return LOCKEXT_FENCE_FLOOR_OUT_OF_RANGE;
	FenceRaiseCounterTo(counter);
	counter = pg_atomic_read_u64(&fence_state->counter);
	if (!ReserveThrough(counter + 1))
		return LOCKEXT_FENCE_IO_ERROR;
	pg_atomic_write_u32(&fence_state->lost, 0);
	if (!core::ComposeFence(timeline, Max(counter, (uint64) 1), &composed))
		composed = floor;
	*next_above = Max(composed, floor);
	return LOCKEXT_FENCE_OK;
}
