/*-------------------------------------------------------------------------
 *
 * replication.h
 *	  Leases in WAL (spec §7): lockext's custom WAL resource manager, the
 *	  replication mode, the synchronous confirmation of grants and renewals,
 *	  the periodic snapshot of the whole table, and its replay on standbys
 *	  and in crash recovery.
 *
 * Records (resource manager "lockext", id LOCKEXT_RMGR_ID; every record
 * starts with LockextWalHeader and its format version):
 *	GRANT, RENEW	one lease, a self-contained upsert: key, lock_id, fence,
 *					TTL and the time it had left when it was logged
 *	RELEASE			remove the key's lease if it still has that lock_id
 *	EVICT			remove the key's lease, whoever holds it
 *	SNAPSHOT		part of a copy of the whole table, at most
 *					LOCKEXT_SNAPSHOT_PART_ITEMS leases per record, with the
 *					replication state (mode, since when sync, TTL ceiling)
 *	MODE			the mode changed, or a server started with replication on
 * SNAPSHOT and MODE are XLOG_MARK_UNIMPORTANT: an idle server does not
 * checkpoint for them.  Expiry never travels as a timestamp: a replayed
 * lease lasts its shipped remaining time from the moment of replay on the
 * replaying server's own monotonic clock, so it never ends earlier there.
 *
 * Mode: lockext.replication is read by lockext's worker only, which
 * publishes it in shared memory and WAL-logs each change; every backend
 * uses the published mode, so none runs on a stale one.  Switching to sync
 * passes a barrier (every partition lock once) before "sync since" is
 * taken, so no grant logged in the old mode comes after it.
 *
 * Completeness: a standby, or a server in crash recovery, starts with an
 * incomplete table: it has not seen leases granted before its redo point.
 * The last part of a snapshot whose every part it replayed in order makes
 * it complete; a lease it could not store (table full, key too long) or a
 * record of a newer format makes it incomplete again.  A promotion with an
 * incomplete table gets the full grace period (grace.h), and a crash
 * restart skips its grace only if redo made the table complete and sync was
 * in force for longer than the TTL ceiling before the crash.
 *
 * Interface:
 *	ReplicationRegister()			_PG_init: RegisterCustomRmgr
 *	ReplicationShmemSize(), ReplicationShmemInit()
 *	ReplicationStartup()			postmaster, every shared-memory init
 *	ReplicationLogLease()			lock_table.cpp, a lease granted or renewed
 *	ReplicationLogRemoval()			lock_table.cpp, a lease released or evicted
 *	ReplicationBeginCall(), ReplicationNoteHandOff(), ReplicationConfirm(),
 *	ReplicationFlushSoon()			the SQL layer around a lease call
 *	ReplicationWorkerStep()			lockext's worker: mode and snapshots
 *	ReplicationRedoRestoredEveryLease()	grace.cpp, after crash recovery
 *	ReplicationOnRecoveryFinished()	fences and TTL ceiling from replay
 *	ReplicationTableComplete(), ReplicationReplayedCeilingMs(),
 *	ReplicationGetStatus()			lockext_grace(), lockext_stats
 *
 * Locking protocol: lease records are inserted while the caller holds the
 * key's partition lock EXCLUSIVE (lock_table.cpp), inside a critical
 * section, so WAL order is the order of changes to each key and no ERROR
 * can longjmp out of the locked region (a failure to insert WAL is a
 * PANIC, as for every WAL record PostgreSQL writes under a buffer lock).
 * Redo runs in the startup process and takes partition locks itself, one at
 * a time; it never raises an ERROR.  The shared state is pg_atomic, except
 * the replay state, written only by the startup process and read under
 * the spinlock.  The confirmation wait runs with no lock held.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_REPLICATION_H
#define LOCKEXT_REPLICATION_H

#include "access/xlogdefs.h"
#include "utils/uuid.h"

/*
 * The resource-manager id, fixed in the custom range 128..255.  Reserving
 * it on https://wiki.postgresql.org/wiki/CustomWALResourceManagers is a
 * release step; another extension holding it is a clear error at start.
 */
#define LOCKEXT_RMGR_ID 197
#define LOCKEXT_RMGR_NAME "lockext"

/* Format of every lockext WAL record; a newer one stops lease replay. */
#define LOCKEXT_WAL_FORMAT 1

typedef enum LockextReplicationMode
{
	LOCKEXT_REPLICATION_OFF = 0,
	LOCKEXT_REPLICATION_ASYNC = 1,
	LOCKEXT_REPLICATION_SYNC = 2,
} LockextReplicationMode;

/* xl_info codes (the high nibble) */
#define XLOG_LOCKEXT_GRANT		0x00
#define XLOG_LOCKEXT_RENEW		0x10
#define XLOG_LOCKEXT_RELEASE	0x20
#define XLOG_LOCKEXT_EVICT		0x30
#define XLOG_LOCKEXT_SNAPSHOT	0x40
#define XLOG_LOCKEXT_MODE		0x50

#define LOCKEXT_SNAPSHOT_PART_ITEMS 512

typedef struct LockextReplicationStatus
{
	int			mode;			/* LockextReplicationMode in force */
	bool		table_complete;
	uint64		wal_records;	/* lockext records this server logged */
	uint64		sync_failed;	/* grants and renewals not confirmed */
	uint64		replayed;		/* lockext records this server replayed */
	uint64		snapshots;		/* snapshots logged (primary) or completed (replay) */
} LockextReplicationStatus;

struct LockextProbeKey;
struct LockextLease;

extern void ReplicationRegister(void);
extern Size ReplicationShmemSize(void);
extern void ReplicationShmemInit(void);
extern void ReplicationStartup(bool all_restored);

extern void ReplicationLogLease(uint8 info, const struct LockextProbeKey *probe,
								const struct LockextLease *lease, int64 now_ns);
extern void ReplicationLogRemoval(uint8 info, const struct LockextProbeKey *probe,
								  const pg_uuid_t *lock_id);
extern XLogRecPtr ReplicationLastLsn(bool *sync);

extern void ReplicationBeginCall(void);
extern void ReplicationNoteHandOff(XLogRecPtr lsn, bool sync);
extern bool ReplicationConfirm(void);
extern void ReplicationFlushSoon(void);

extern void ReplicationWorkerStep(bool started);

extern bool ReplicationRedoRestoredEveryLease(int64 ttl_ceiling_ms, int64 *until_ns,
											  const char **why_not);
extern void ReplicationOnRecoveryFinished(void);
extern bool ReplicationTableComplete(void);
extern int64 ReplicationReplayedCeilingMs(void);
extern void ReplicationGetStatus(LockextReplicationStatus *status);
extern const char *ReplicationModeName(int mode);

#endif							/* LOCKEXT_REPLICATION_H */
