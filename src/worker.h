/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  lockext's background worker: arms the promotion grace (or settles the
 *	  grace after crash recovery) the moment the server leaves recovery,
 *	  then, for as long as the server runs as a primary, publishes
 *	  lockext.replication and logs the lease snapshots (replication.h).
 *
 * PostgreSQL 15 has no promotion hook.  The earliest point an extension
 * can act on is a background worker with BgWorkerStart_RecoveryFinished:
 * the postmaster starts it as soon as the startup process has finished
 * recovery.  That is safe because grants are refused all along: during
 * recovery every lease call fails with 25006, and from the moment recovery
 * ends until the grace is armed, the pending flag (grace.h) refuses every
 * grant.  The grace therefore starts a few milliseconds after promotion
 * (never earlier), and a server promoted long ago is not blocked by a grace
 * that starts at its first lease call.
 *
 * It then wakes every second (and at every reload) for
 * ReplicationWorkerStep(), and exits only at shutdown.  It is not
 * BGW_NEVER_RESTART, so it comes back after a crash reinitialisation.  If
 * it cannot start (max_worker_processes exhausted), the first lease call
 * arms the grace, and the durable record says that a promotion grace is
 * owed, so a restart before that still applies it; but then neither a
 * change of lockext.replication nor any snapshot is logged (it warns).
 *
 * Interface:
 *	WorkerRegister()		_PG_init
 *	lockext_worker_main()	the worker's entry point (called by name)
 *
 * Locking protocol: none of its own (grace.h, replication.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_WORKER_H
#define LOCKEXT_WORKER_H

extern void WorkerRegister(void);
extern "C" PGDLLEXPORT void lockext_worker_main(Datum arg);

#endif							/* LOCKEXT_WORKER_H */
