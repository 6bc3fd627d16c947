/*-------------------------------------------------------------------------
 *
 * lockext.cpp
 *	  Module entry: PG_MODULE_MAGIC, _PG_init, and the start-up and
 *	  shutdown orchestration of lockext's modules.
 *
 * lockext must be listed in shared_preload_libraries: its lease table lives
 * in shared memory reserved at postmaster start.  Loaded any other way
 * _PG_init raises 55000 with a hint, so a missing preload is caught at once
 * instead of at the first lock call.
 *
 * Start-up, in the pattern of PostgreSQL's ipci.c and InitLocks: the
 * request hook sums every module's size; the startup hook initialises each
 * module's shared state in order, then (postmaster only, at every start
 * and after every crash reinitialisation) decides from the files in
 * pg_lockext/ what this start is and tells each module:
 *
 *	durable record  --DurableLoad-->  merged record ----+
 *	lease file      --PersistRestore--> leases, record, +--> FenceRecover / FenceMarkLost
 *	                                   evidence         +--> GraceRecover, GraceStart / GraceArmPromotion
 *	                                                    +--> DurableBeginRun, then the lease file goes
 *
 * Then the startup process replays WAL; lockext's records (replication.h)
 * rebuild the lease table, and when recovery is over the worker arms the
 * promotion grace or settles the crash grace (grace.h).
 *
 * At a clean shutdown (code 0 and a shutdown checkpoint in pg_control) the
 * postmaster saves the leases with the final record, then removes the
 * marker.
 *
 * Locking protocol: the startup hook runs under AddinShmemInitLock; the
 * orchestration runs in the postmaster before any other process exists.
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "clock.h"
#include "durable.h"
#include "fence.h"
#include "grace.h"
#include "gucs.h"
#include "lock_table.h"
#include "persist.h"
#include "replication.h"
#include "shmem.h"
#include "sql/handle_scan.h"
#include "wait_queue.h"
#include "worker.h"

	PG_MODULE_MAGIC;

	void _PG_init(void);
}

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static bool shmem_initialised_before = false;	/* postmaster: a later init is a crash restart */

static Size
SharedMemorySize(void)
{
	Size		size = MAXALIGN(sizeof(bool));	/* "lockext": set once initialised */

	size = add_size(size, ClockShmemSize());

	size = add_size(size, DurableShmemSize());
	size = add_size(size, FenceShmemSize());
	size = add_size(size, GraceShmemSize());
	size = add_size(size, LockTableShmemSize());
	size = add_size(size, WaitQueueShmemSize());
	size = add_size(size, ReplicationShmemSize());
	return size;
}

static void
LockextShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(SharedMemorySize());
	ShmemRequestLocks();
}

/* Where the fences resume, and whether that is proven (see fence.h). */
static void
RecoverFences(bool first_start, const LockextDurableLoad *load, bool record_valid,
			  const LockextDurableRecord *record, const LockextRestoreOutcome *lease_file)
{
	bool		proven = record_valid && (record->flags & LOCKEXT_DURABLE_FENCE_UNPROVEN) == 0;

	if (first_start)
	{
		FenceRecover(0);
		return;
	}
	if (proven && record->fence_reserved >= lease_file->max_fence_counter)
	{
		FenceRecover(record->fence_reserved);
		/* after a clean shutdown the marker is gone by design: only state is expected */
		if (load->copies_damaged > 0 || load->copies_valid == 0 ||
			(load->marker_present && load->copies_valid < 2))
			ereport(WARNING,
					(errmsg("lockext: \"%s\" is missing or unreadable; fences resume from the reservation recorded in %s",
							load->copies_damaged > 0 ? load->damaged[0] :
							!load->marker_present ? LOCKEXT_MARKER_FILE : LOCKEXT_STATE_FILE,
							load->copies_valid > 0 ? "another copy of the durable record"
												   : "\"" LOCKEXT_LEASES_FILE "\" at the last clean shutdown"),
					 errdetail("Every fence handed out before is at or below counter " UINT64_FORMAT ".",
							   record->fence_reserved)));
		return;
	}
	FenceMarkLost(Max(record_valid ? record->fence_reserved : 0, lease_file->max_fence_counter));
	ereport(WARNING,
			(errmsg("lockext: the fence state is lost; no lease will be granted until an operator names a fence floor"),
			 errdetail(proven ? "The durable record in \"%s\" is older than a fence in the lease file."
					   : "No readable copy of the durable record (\"%s\", \"" LOCKEXT_MARKER_FILE
						 "\") proves how far fences went.",
					   LOCKEXT_STATE_FILE),
			 errhint("If you know a fence at or above every fence granted before, run SELECT lockext_fence_resume(that_fence) as a superuser.")));
}

/*
 * What kind of start this is, as far as leases are concerned.  Clean means
 * a valid lease file and no marker: a clean shutdown removes the marker
 * last, and a start writes it before it removes the lease file, so a marker
 * next to a lease file means that one of the two did not finish.
 */
static LockextGraceReason
StartReason(bool first_start, bool reinitialising, bool marker_present,
			const LockextRestoreOutcome *lease_file)
{
	if (first_start)
		return LOCKEXT_GRACE_NONE;
	if (reinitialising)
		return LOCKEXT_GRACE_CRASH_RESTART;
	if (!lease_file->present || marker_present)
		return LOCKEXT_GRACE_UNCLEAN_SHUTDOWN;
	if (!lease_file->readable || (lease_file->saved && !lease_file->complete))
		return LOCKEXT_GRACE_NOT_RESTORED;
	if (!lease_file->saved)
		return LOCKEXT_GRACE_NOT_SAVED;
	return LOCKEXT_GRACE_NONE;
}

static void ShutdownSave(int code, Datum arg);

/*
 * At every shared-memory initialisation in the postmaster: restore what
 * the last run left, decide fences and grace, and make this run's durable
 * record durable before anything is served.  reinitialising is true after a
 * crash (the lease table was just wiped).
 */
static void
RecoverAtStartup(bool reinitialising)
{
	struct stat st;
	/* after a crash reinitialisation, a missing directory is a loss, not a first start */
	bool		dir_missing = stat(LOCKEXT_DIR, &st) != 0 && errno == ENOENT;
	bool		first_start = dir_missing && !reinitialising;
	bool		in_recovery = access(STANDBY_SIGNAL_FILE, F_OK) == 0 ||
		access(RECOVERY_SIGNAL_FILE, F_OK) == 0;
	LockextDurableLoad load;
	LockextRestoreOutcome lease_file;
	LockextDurableRecord record;
	LockextDurableRecord run;
	bool		record_valid;
	LockextGraceReason reason;

	bool		promotion_owed;
	uint32		timeline = PersistControlTimeline();

	if (dir_missing && MakePGDirectory(LOCKEXT_DIR) != 0 && errno != EEXIST)
		ereport(WARNING, (errmsg("lockext: could not create directory \"%s\": %m", LOCKEXT_DIR)));

	DurableLoad(&load);
	memset(&lease_file, 0, sizeof(lease_file));
	if (!reinitialising)
		PersistRestore(lockext_save, &lease_file);

	memset(&record, 0, sizeof(record));
	record_valid = load.valid || lease_file.has_record;
	if (load.valid)
		record = load.record;
	if (lease_file.has_record)
	{
		if (load.valid)
			DurableMerge(&record, &lease_file.record);
		else
			record = lease_file.record;
	}

	RecoverFences(first_start, &load, record_valid, &record, &lease_file);
	promotion_owed = record_valid && (record.flags & LOCKEXT_DURABLE_PROMOTION_OWED) != 0;

	/* a grace period that has begun goes on, whatever happened since */
	GraceRecover(record_valid ? &record : NULL);
	reason = StartReason(first_start, reinitialising, load.marker_present, &lease_file);
	if (in_recovery)
		GraceArmPromotion(record.ttl_ceiling_ms);
	else
	{
		if (promotion_owed)
		{
			/*
			 * The last run was a standby whose promotion grace was never
			 * armed: promoted and stopped before that, or started now as a
			 * primary without standby.signal.  In the latter case the
			 * timeline did not move, so its fences could repeat the old
			 * primary's.
			 */
			if (timeline != 0 && timeline <= record.standby_timeline)
			{
				FenceMarkLost(FenceReserved());
				ereport(WARNING,
						(errmsg("lockext: this server ran as a standby on timeline %u and now starts as a primary on the same timeline",
								timeline),
						 errdetail("Its fences could repeat those of the primary it followed, so no lease will be granted until an operator names a fence floor."),
						 errhint("Promote standbys with pg_ctl promote or pg_promote(); otherwise run SELECT lockext_fence_resume(highest_fence_of_the_old_primary).")));
			}
			GraceStart(LOCKEXT_GRACE_PROMOTION, record.ttl_ceiling_ms);
		}
		/* after a crash, redo may restore every lease from WAL (replication.h) */
		if (reason == LOCKEXT_GRACE_CRASH_RESTART || reason == LOCKEXT_GRACE_UNCLEAN_SHUTDOWN)
			GraceStartAfterCrash(reason, record.ttl_ceiling_ms);
		else if (reason != LOCKEXT_GRACE_NONE)
			GraceStart(reason, record.ttl_ceiling_ms);
	}

	/* a start that restored every lease has them all in the first snapshot */
	ReplicationStartup(!in_recovery && !promotion_owed && reason == LOCKEXT_GRACE_NONE);

	memset(&run, 0, sizeof(run));
	run.fence_reserved = FenceReserved();
	run.ttl_ceiling_ms = lease_file.ttl_ceiling_ms;
	run.replication_mode = record_valid ? record.replication_mode : 0;
	run.flags = FenceIsLost() ? LOCKEXT_DURABLE_FENCE_UNPROVEN : 0;
	if (in_recovery)
	{
		/* a standby grants nothing: keep what it knows of the primary's TTLs */
		run.ttl_ceiling_ms = Max(run.ttl_ceiling_ms, record.ttl_ceiling_ms);
		run.flags |= LOCKEXT_DURABLE_PROMOTION_OWED;
		run.standby_timeline = timeline;
	}
	GraceRecordFields(&run.grace_reason, &run.grace_length_ms, &run.grace_until_boot_ns);
	if (!DurableBeginRun(&run))
	{
		/* fail closed: without both copies a later crash could not be told apart */
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("lockext could not write \"%s\" and \"%s\": %m",
						LOCKEXT_STATE_FILE, LOCKEXT_MARKER_FILE),
				 errdetail("No lease will be granted until both can be written; the lease file is kept."),
				 errhint("Fix the directory \"%s\", then run SELECT lockext_fence_resume(" INT64_FORMAT ") as a superuser.",
						 LOCKEXT_DIR, (int64) FenceReserved())));
		FenceMarkLost(FenceReserved());
	}
	/* only now: until both copies are durable the lease file is the only record */
	else if (lease_file.present)
		PersistRemoveLeaseFile();

	/* the list of exit callbacks is emptied by each crash reinitialisation */
	on_shmem_exit(ShutdownSave, (Datum) 0);
}

/*
 * on_shmem_exit in the postmaster.  Only a clean shutdown saves: code 0 and
 * a shutdown checkpoint in pg_control (an immediate stop exits 0 too, but
 * leaves pg_control "in production").  The lease file goes first; then the
 * state file gets the final record and the marker goes.
 */
static void
ShutdownSave(int code, Datum arg)
{
	LockextDurableRecord final_record;

	(void) arg;
	if (code != 0 || !PersistShutdownWasClean())
		return;
	DurableCurrent(&final_record);
	final_record.fence_reserved = Max(final_record.fence_reserved, FenceReserved());
	GraceRecordFields(&final_record.grace_reason, &final_record.grace_length_ms,
					  &final_record.grace_until_boot_ns);
	(void) LockextBootId(final_record.boot_id);
	DurableSeal(&final_record);
	if (!PersistSave(lockext_save, &final_record))
	{
		ereport(LOG, (errmsg("lockext: could not save leases to \"%s\": %m", LOCKEXT_LEASES_FILE),
					  errdetail("The next start applies the grace period.")));
		return;
	}
	DurableEndRunClean(&final_record);
}

static void
LockextShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	(void) ShmemInitStruct("lockext", sizeof(bool), &found);
	ShmemAttachLocks();
	ClockShmemInit();
	DurableShmemInit();
	FenceShmemInit();
	GraceShmemInit();
	LockTableShmemInit();
	WaitQueueShmemInit();
	ReplicationShmemInit();

	/*
	 * The postmaster (or a single-user backend) owns persistence: it runs
	 * this hook at start and again after every crash reinitialisation.
	 */
	if (!found && !IsUnderPostmaster)
	{
		RecoverAtStartup(shmem_initialised_before);
		shmem_initialised_before = true;
	}
	LWLockRelease(AddinShmemInitLock);
}

extern "C" void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		LockextReportNotPreloaded();

	GucsDefine();
	ReplicationRegister();
	WorkerRegister();
	HandleScanInit();
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = LockextShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = LockextShmemStartup;
}
