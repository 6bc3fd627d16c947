/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  lockext's LWLock tranche and the "is the module loaded" check.
 *
 * Every module owns its shared state (its own ShmemInitStruct, sized by
 * its XxxShmemSize() and set up by its XxxShmemInit(), both called in order
 * by lockext.cpp, as ipci.c does for PostgreSQL's subsystems).  What they
 * share is one named tranche, "lockext", with the locks laid out below.
 *
 * Interface:
 *	ShmemRequestLocks()		request the tranche (shmem_request_hook)
 *	ShmemAttachLocks()		look it up (shmem_startup_hook, every process)
 *	LockextLock(i)			lock i of the tranche
 *	LockextRequireLoaded()	55000 with a hint unless preloaded
 *
 * Lock order (a process may hold several only in this order):
 *	one partition lock (LOCKEXT_LOCK_PARTITION0 + i), or all of them in
 *	ascending order  ->  LOCKEXT_LOCK_DURABLE (durable.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_SHMEM_H
#define LOCKEXT_SHMEM_H

#include "storage/lwlock.h"

#define LOCKEXT_TRANCHE_NAME "lockext"
#define LOCKEXT_NUM_PARTITIONS 16	/* power of two */

#define LOCKEXT_LOCK_PARTITION0 0
#define LOCKEXT_LOCK_DURABLE LOCKEXT_NUM_PARTITIONS	/* the durable record */
#define LOCKEXT_LOCK_COUNT (LOCKEXT_NUM_PARTITIONS + 1)

extern void ShmemRequestLocks(void);
extern void ShmemAttachLocks(void);
extern LWLock *LockextLock(int index);
extern bool LockextLoaded(void);
extern void LockextRequireLoaded(void);
extern void LockextReportNotPreloaded(void) pg_attribute_noreturn();

#endif							/* LOCKEXT_SHMEM_H */
