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
#include "storage/ipc.h"

#include "grace.h"
#include "worker.h"
}

void
WorkerRegister(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	/*
	 * Not BGW_NEVER_RESTART: the postmaster forgets such workers at a crash
	 * reinitialisation, and a standby that crash-restarted during recovery
	 * still needs it at promotion.  It exits with code 0 once it has run,
	 * which unregisters it.
	 */
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "lockext", sizeof(worker.bgw_library_name));
	strlcpy(worker.bgw_function_name, "lockext_worker_main", sizeof(worker.bgw_function_name));
	strlcpy(worker.bgw_name, "lockext worker", sizeof(worker.bgw_name));
	strlcpy(worker.bgw_type, "lockext worker", sizeof(worker.bgw_type));
	RegisterBackgroundWorker(&worker);
}

/*
 * Runs once recovery has finished.  Any C++ exception is caught here (none
 * is expected: the grace code is plain C++), and an ERROR ends the worker
 * with exit code 1, which the postmaster treats as a normal exit.
 */
extern "C" void
lockext_worker_main(Datum arg)
{
	bool		failed = false;

	(void) arg;
	BackgroundWorkerUnblockSignals();
	try
	{
		GraceOnRecoveryFinished();
	}
	catch (...)
	{
		failed = true;
	}
	if (failed)
		ereport(ERROR, (errmsg("lockext worker: unexpected C++ exception")));
	proc_exit(0);
}
