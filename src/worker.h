/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  lockext's background worker: arms the promotion grace the moment the
 *	  server leaves recovery.
 *
 * PostgreSQL 15 has no promotion hook.  The earliest point an extension
 * can act on is a background worker with BgWorkerStart_RecoveryFinished:
 * the postmaster starts it as soon as the startup process has finished
 * recovery.  That is safe because grants are refused all along: during
 * recovery every lease call fails with 25006, and from the moment recovery
 * ends until the grace is armed, the pending flag (grace.h) refuses every
 * grant.  The grace therefore starts a few milliseconds after promotion
 * (never earlier), and a server promoted long ago is not blocked by a grace
 * that starts at its first lease call.  The worker exits once it has done
 * so; on a server that does not start in recovery it exits at once.  It is
 * not BGW_NEVER_RESTART, so it survives crash reinitialisations of a
 * standby.  If it cannot start (max_worker_processes exhausted), the first
 * lease call arms the grace, and the durable record says that a promotion
 * grace is owed, so a restart before that still applies it.
 *
 * Interface:
 *	WorkerRegister()		_PG_init
 *	lockext_worker_main()	the worker's entry point (called by name)
 *
 * Locking protocol: none of its own (grace.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_WORKER_H
#define LOCKEXT_WORKER_H

extern void WorkerRegister(void);
extern "C" PGDLLEXPORT void lockext_worker_main(Datum arg);

#endif							/* LOCKEXT_WORKER_H */
