/*-------------------------------------------------------------------------
 *
 * shmem.cpp
 *	  lockext's LWLock tranche and the "is the module loaded" check.
 *
 * Locking protocol: see shmem.h.
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include "storage/lwlock.h"

#include "shmem.h"
}

static LWLockPadded *lockext_locks = NULL;

void
ShmemRequestLocks(void)
{
	RequestNamedLWLockTranche(LOCKEXT_TRANCHE_NAME, LOCKEXT_LOCK_COUNT);
}

void
ShmemAttachLocks(void)
{
	lockext_locks = GetNamedLWLockTranche(LOCKEXT_TRANCHE_NAME);
}

LWLock *
LockextLock(int index)
{
	Assert(index >= 0 && index < LOCKEXT_LOCK_COUNT);
	return &lockext_locks[index].lock;
}

/* True once shared memory is attached (lockext was preloaded). */
bool
LockextLoaded(void)
{
	return lockext_locks != NULL;
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

void
LockextRequireLoaded(void)
{
	if (!LockextLoaded())
		LockextReportNotPreloaded();
}
