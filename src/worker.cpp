/*-------------------------------------------------------------------------
 *
 * worker.cpp
 *	  lockext's background worker (see worker.h).
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/wait_event.h"

#include "grace.h"
#include "replication.h"
#include "worker.h"
}

#define WORKER_NAP_MS 1000

void
WorkerRegister(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	/*
	 * Not BGW_NEVER_RESTART: the postmaster forgets such workers at a crash
	 * reinitialisation, and the new run needs it as much as the old.
	 */
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "lockext", sizeof(worker.bgw_library_name));
	strlcpy(worker.bgw_function_name, "lockext_worker_main", sizeof(worker.bgw_function_name));
	strlcpy(worker.bgw_name, "lockext worker", sizeof(worker.bgw_name));
	strlcpy(worker.bgw_type, "lockext worker", sizeof(worker.bgw_type));
	RegisterBackgroundWorker(&worker);
}

/* One round; false if a C++ exception escaped it (none is expected: plain C++). */
static bool
WorkerRound(bool first)
{
	try
	{
		if (first)
			GraceOnRecoveryFinished();
		ReplicationWorkerStep(first);
	}
	catch (...)
	{
		return false;
	}
	return true;
}

/*
 * Runs once recovery has finished, until shutdown.  SIGTERM only sets a
 * flag (the default bgworker handler would raise FATAL wherever the signal
 * lands, also inside a WAL insertion's critical section); an ERROR ends the
 * worker with exit code 1 and the postmaster starts it again a second
 * later.
 */
extern "C" void
lockext_worker_main(Datum arg)
{
	bool		first = true;

	(void) arg;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	for (;;)
	{
		/* 1, not 0: a worker that exits with 0 is never started again (pg_terminate_backend) */
		if (ShutdownRequestPending)
			proc_exit(1);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (!WorkerRound(first))
			ereport(ERROR, (errmsg("lockext worker: unexpected C++ exception")));
		first = false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, WORKER_NAP_MS,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}
