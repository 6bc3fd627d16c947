/*-------------------------------------------------------------------------
 *
 * test_hooks.cpp
 *	  lockext_test_* functions for lockext's own tests: a frozen virtual
 *	  clock, a stall inside a partition lock, a fence floor and the
 *	  partition of a key.  Compiled in, but each raises 55000 unless
 *	  lockext.enable_test_hooks = on (server start), and each is revoked
 *	  from PUBLIC and checks for a superuser as well.
 *
 * Locking protocol: the clock is two pg_atomic variables (frozen flag and
 * frozen instant); the stall hook holds one partition lock EXCLUSIVE for a
 * bounded time and may ereport while holding it, on purpose, to show that
 * error recovery releases it.
 *
 *-------------------------------------------------------------------------
 */
#include "core/lease_rules.hpp"

extern "C"
{
#include "postgres.h"

#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/wait_event.h"

#include "clock.h"
#include "fence.h"
#include "gucs.h"
#include "shmem.h"
#include "sql/sql_args.h"
#include "wait_queue.h"
}

#include "sql/pg_boundary.hpp"

static void
RequireTestHooks(const char *fname)
{
	LockextRequireLoaded();
	LockextRequireSuperuser(fname);
	if (!lockext_enable_test_hooks)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s() requires lockext.enable_test_hooks", fname),
				 errhint("Set lockext.enable_test_hooks = on at server start, in test clusters only.")));
}

/* lockext_test_clock_freeze(): expiry time stops until advanced or released */
LOCKEXT_SQL_FUNCTION(lockext_test_clock_freeze)
{
	(void) fcinfo;
	RequireTestHooks("lockext_test_clock_freeze");
	ClockTestFreeze();
	PG_RETURN_VOID();
}

/* lockext_test_clock_advance(ms bigint): moves the frozen clock forward */
LOCKEXT_SQL_FUNCTION(lockext_test_clock_advance)
{
	int64		ms;

	RequireTestHooks("lockext_test_clock_advance");
	if (PG_ARGISNULL(0) || PG_GETARG_INT64(0) < 0 || PG_GETARG_INT64(0) > INT64CONST(1000000000000))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("ms must be between 0 and 1000000000000")));
	ms = PG_GETARG_INT64(0);
	if (!ClockTestAdvance(ms))
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("the lockext test clock is not frozen"),
						errhint("Call lockext_test_clock_freeze() first.")));
	WaitQueueWakeAll();			/* waiters re-check expiry and their bound */
	PG_RETURN_VOID();
}

/*
 * lockext_test_clock_release(): the clock runs again from the instant it
 * was frozen at (plus what it was advanced), at real speed.
 */
LOCKEXT_SQL_FUNCTION(lockext_test_clock_release)
{
	(void) fcinfo;
	RequireTestHooks("lockext_test_clock_release");
	ClockTestRelease();
	WaitQueueWakeAll();
	PG_RETURN_VOID();
}

/* lockext_test_set_fence_floor(n bigint): the next fence is above n (only raises) */
LOCKEXT_SQL_FUNCTION(lockext_test_set_fence_floor)
{
	RequireTestHooks("lockext_test_set_fence_floor");
	if (PG_ARGISNULL(0) || PG_GETARG_INT64(0) < 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("fence floor must be a non-negative bigint")));
	FenceRaiseCounterTo(
		lockext::core::CounterFloorFor(GetWALInsertionTimeLine(), PG_GETARG_INT64(0)));
	PG_RETURN_VOID();
}

/* lockext_test_partition_of(key text) RETURNS int: the partition guarding key */
LOCKEXT_SQL_FUNCTION(lockext_test_partition_of)
{
	LockextProbeKey probe;

	RequireTestHooks("lockext_test_partition_of");
	(void) LockextProbeFromKeyDatum(&probe, PG_GETARG_DATUM(0), PG_ARGISNULL(0));
	PG_RETURN_INT32(LockTablePartitionOf(&probe));
}

/*
 * lockext_test_stall(partition int, ms int, raise_error bool): holds a
 * partition lock EXCLUSIVE for ms milliseconds, waiting on the latch with
 * wait_event_type 'Extension', then releases it or raises an ERROR while
 * still holding it.  Interrupts are held meanwhile, so keep ms small.
 */
LOCKEXT_SQL_FUNCTION(lockext_test_stall)
{
	int32		partition;
	int32		ms;
	bool		raise_error;
	LWLock	   *lock;
	int64		deadline;

	RequireTestHooks("lockext_test_stall");
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("lockext_test_stall arguments must not be null")));
	partition = PG_GETARG_INT32(0);
	ms = PG_GETARG_INT32(1);
	raise_error = PG_GETARG_BOOL(2);
	if (partition < 0 || partition >= LOCKEXT_NUM_PARTITIONS || ms < 0 || ms > 60000)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("partition must be between 0 and %d and ms between 0 and 60000",
							   LOCKEXT_NUM_PARTITIONS - 1)));

	lock = LockextLock(LOCKEXT_LOCK_PARTITION0 + partition);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	deadline = LockextRealNowNanos() + (int64) ms * 1000000;
	for (;;)
	{
		int64		left_ms = (deadline - LockextRealNowNanos()) / 1000000;

		if (left_ms <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, left_ms,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	if (raise_error)
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
						errmsg("lockext_test_stall raised an error inside partition %d", partition)));
	LWLockRelease(lock);
	PG_RETURN_VOID();
}
