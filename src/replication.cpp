/*-------------------------------------------------------------------------
 *
 * replication.cpp
 *	  Leases in WAL: records, redo, snapshot, mode and the synchronous
 *	  confirmation (see replication.h for the interface and the locking
 *	  protocol).
 *
 * Plain C++ with PostgreSQL's APIs: no STL, no exceptions, no object with
 * a destructor.  Records are written with memcpy into fixed structs and
 * read back the same way (WAL data is not aligned past the first field).
 *
 *-------------------------------------------------------------------------
 */
#include "core/lease_rules.hpp"

extern "C"
{
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "clock.h"
#include "durable.h"
#include "fence.h"
#include "gucs.h"
#include "lock_table.h"
#include "replication.h"
}

namespace core = lockext::core;

/* ---- record layouts ---------------------------------------------------- */

typedef struct LockextWalHeader
{
	uint16		format;			/* LOCKEXT_WAL_FORMAT of the writer */
	uint16		flags;			/* SNAPSHOT: LOCKEXT_SNAPSHOT_FIRST/LAST */
	uint32		count;			/* SNAPSHOT: leases in this part */
} LockextWalHeader;

#define LOCKEXT_SNAPSHOT_FIRST 0x1
#define LOCKEXT_SNAPSHOT_LAST 0x2

/* One lease (GRANT, RENEW, SNAPSHOT items); key_len bytes of key follow. */
typedef struct LockextWalLease
{
	Oid			dbid;
	uint32		key_len;
	pg_uuid_t	lock_id;
	int64		fence;
	int64		remaining_ns;	/* left when logged; counted from replay */
	TimestampTz acquired_at;	/* display only */
	int32		ttl_ms;
	uint32		renewals;
	Oid			holder;
	int32		pid;			/* on the primary, display only */
	uint8		client_addr[LOCKEXT_ADDR_BYTES];
	char		application_name[LOCKEXT_APPNAME_BYTES];
} LockextWalLease;

/* RELEASE, EVICT; key_len bytes of key follow. */
typedef struct LockextWalRemoval
{
	Oid			dbid;
	uint32		key_len;
	pg_uuid_t	lock_id;		/* EVICT: unused */
} LockextWalRemoval;

/* MODE, and the head of every SNAPSHOT part. */
typedef struct LockextWalState
{
	uint32		mode;
	uint32		part;			/* SNAPSHOT: 0, 1, ... */
	uint64		snapshot_id;	/* SNAPSHOT: the same for every part */
	int64		ttl_ceiling_ms;
	int64		max_fence;
	int64		sync_since_boot_ns; /* mode sync: since when (boot clock) */
	char		boot_id[LOCKEXT_BOOT_ID_LEN];
} LockextWalState;

/* ---- shared state ------------------------------------------------------ */

typedef struct ReplicationShared
{
	pg_atomic_uint32 mode;		/* published LockextReplicationMode */
	pg_atomic_uint64 sync_since_boot_ns;
	pg_atomic_uint64 snapshot_id;	/* the last one logged */
	pg_atomic_uint64 wal_records;
	pg_atomic_uint64 sync_failed;
	pg_atomic_uint64 snapshots;
	pg_atomic_uint32 complete;	/* replayed table holds every lease */
	pg_atomic_uint64 replayed;
	pg_atomic_uint64 replayed_max_fence;
	pg_atomic_uint64 replayed_ceiling_ms;
	/* replay state: written by the startup process only, read under mutex */
	slock_t		mutex;
	int			replayed_mode;	/* -1: no MODE or SNAPSHOT replayed */
	int64		replayed_sync_since_boot_ns;
	char		replayed_boot_id[LOCKEXT_BOOT_ID_LEN];
	uint64		replay_snapshot_id; /* the snapshot being replayed, 0 = none */
	uint32		replay_next_part;
	bool		replay_dropped; /* a lease did not fit since that snapshot began */
	bool		replay_stopped; /* a record of a newer format was seen */
} ReplicationShared;

static ReplicationShared *repl = NULL;

/* the records this backend logged in its current lease call */
static XLogRecPtr pending_lsn = InvalidXLogRecPtr;
static bool pending_sync = false;

const char *
ReplicationModeName(int mode)
{
	switch (mode)
	{
		case LOCKEXT_REPLICATION_ASYNC:
			return "async";
		case LOCKEXT_REPLICATION_SYNC:
			return "sync";
		default:
			return "off";
	}
}

Size
ReplicationShmemSize(void)
{
	return MAXALIGN(sizeof(ReplicationShared));
}

void
ReplicationShmemInit(void)
{
	bool		found;

	repl = (ReplicationShared *) ShmemInitStruct("lockext replication", sizeof(ReplicationShared), &found);
	if (!found)
	{
		pg_atomic_init_u32(&repl->mode, LOCKEXT_REPLICATION_OFF);
		pg_atomic_init_u64(&repl->sync_since_boot_ns, 0);
		/* distinct across restarts, so a standby never joins parts of two snapshots */
		pg_atomic_init_u64(&repl->snapshot_id, (uint64) LockextRealNowNanos());
		pg_atomic_init_u64(&repl->wal_records, 0);
		pg_atomic_init_u64(&repl->sync_failed, 0);
		pg_atomic_init_u64(&repl->snapshots, 0);
		pg_atomic_init_u32(&repl->complete, 0);
		pg_atomic_init_u64(&repl->replayed, 0);
		pg_atomic_init_u64(&repl->replayed_max_fence, 0);
		pg_atomic_init_u64(&repl->replayed_ceiling_ms, 0);
		SpinLockInit(&repl->mutex);
		repl->replayed_mode = -1;
		repl->replayed_sync_since_boot_ns = 0;
		memset(repl->replayed_boot_id, 0, sizeof(repl->replayed_boot_id));
		repl->replay_snapshot_id = 0;
		repl->replay_next_part = 0;
		repl->replay_dropped = false;
		repl->replay_stopped = false;
	}
}

/*
 * Postmaster, at every shared-memory initialisation: the mode starts as
 * configured (the worker logs it once recovery is over).  "Sync since"
 * bounds the leases a crash could lose: none after a start that restored
 * every lease (all_restored: the worker's first snapshot holds them all,
 * and a crash before it is logged finds no complete snapshot), the leases
 * granted before now otherwise, until redo proves more (below).
 */
void
ReplicationStartup(bool all_restored)
{
	pg_atomic_write_u32(&repl->mode, (uint32) lockext_replication);
	pg_atomic_write_u64(&repl->sync_since_boot_ns,
						lockext_replication == LOCKEXT_REPLICATION_SYNC && !all_restored
						? (uint64) LockextBootNowNanos() : 0);
}

static inline int
PublishedMode(void)
{
	return (int) pg_atomic_read_u32(&repl->mode);
}

/* ---- logging (under the key's partition lock) --------------------------- */

static void
NoteLogged(XLogRecPtr lsn, bool sync)
{
	if (lsn > pending_lsn)
		pending_lsn = lsn;
	pending_sync |= sync;
	pg_atomic_fetch_add_u64(&repl->wal_records, 1);
}

static void
FillWalLease(LockextWalLease *item, const LockextProbeKey *probe, const LockextLease *lease,
			 int64 now_ns)
{
	memset(item, 0, sizeof(*item));
	item->dbid = probe->dbid;
	item->key_len = probe->len;
	item->lock_id = lease->lock_id;
	item->fence = lease->fence;
	item->remaining_ns = Max(lease->expires_ns - now_ns, (int64) 0);
	item->acquired_at = lease->acquired_at;
	item->ttl_ms = lease->ttl_ms;
	item->renewals = lease->renewals;
	item->holder = lease->holder;
	item->pid = lease->pid;
	memcpy(item->client_addr, lease->client_addr, sizeof(item->client_addr));
	memcpy(item->application_name, lease->application_name, sizeof(item->application_name));
}

/*
 * Inserts one lease record: the header, body (size bytes) and probe's key.
 * The caller holds the key's partition lock EXCLUSIVE; the critical section
 * turns any failure into a PANIC instead of an ERROR that would jump over
 * the held lock.
 */
static XLogRecPtr
InsertKeyRecord(uint8 info, const void *body, Size size, const LockextProbeKey *probe)
{
	LockextWalHeader header = {LOCKEXT_WAL_FORMAT, 0, 1};
	XLogRecPtr	lsn;

	START_CRIT_SECTION();
	XLogBeginInsert();
	XLogRegisterData((char *) &header, sizeof(header));
	XLogRegisterData((char *) body, (uint32) size);
	XLogRegisterData((char *) probe->bytes, probe->len);
	lsn = XLogInsert(LOCKEXT_RMGR_ID, info);
	END_CRIT_SECTION();
	return lsn;
}

/* A lease was granted or renewed; the caller holds its partition lock EXCLUSIVE. */
void
ReplicationLogLease(uint8 info, const LockextProbeKey *probe, const LockextLease *lease, int64 now_ns)
{
	int			mode = PublishedMode();
	LockextWalLease item;

	if (likely(mode == LOCKEXT_REPLICATION_OFF) || !XLogInsertAllowed())
		return;
	FillWalLease(&item, probe, lease, now_ns);
	NoteLogged(InsertKeyRecord(info, &item, sizeof(item), probe), mode == LOCKEXT_REPLICATION_SYNC);
}

/* A lease was released (lock_id) or evicted (NULL); partition lock held EXCLUSIVE. */
void
ReplicationLogRemoval(uint8 info, const LockextProbeKey *probe, const pg_uuid_t *lock_id)
{
	LockextWalRemoval item;

	if (likely(PublishedMode() == LOCKEXT_REPLICATION_OFF) || !XLogInsertAllowed())
		return;
	memset(&item, 0, sizeof(item));
	item.dbid = probe->dbid;
	item.key_len = probe->len;
	if (lock_id != NULL)
		item.lock_id = *lock_id;
	/* a removal is never waited for: a standby that keeps a lease longer is safe */
	NoteLogged(InsertKeyRecord(info, &item, sizeof(item), probe), false);
}

XLogRecPtr
ReplicationLastLsn(bool *sync)
{
	*sync = pending_sync;
	return pending_lsn;
}

/* ---- around a lease call (no lock held) --------------------------------- */

void
ReplicationBeginCall(void)
{
	pending_lsn = InvalidXLogRecPtr;
	pending_sync = false;
}

/* A waiter was handed a lease: the releasing backend logged its grant. */
void
ReplicationNoteHandOff(XLogRecPtr lsn, bool sync)
{
	if (lsn > pending_lsn)
		pending_lsn = lsn;
	pending_sync |= sync;
}

/* Records that are not waited for reach the disk and the standbys soon. */
void
ReplicationFlushSoon(void)
{
	if (pending_lsn != InvalidXLogRecPtr)
		XLogSetAsyncXactLSN(pending_lsn);
}

/*
 * The wait's outcome: flushed by the synchronous standbys, or none is
 * named (this backend's synchronous_standby_names is empty, or there can
 * be no standby).  Read from the flush position itself, not from the
 * walsender's flags, whose layout changed within PostgreSQL 15.
 */
static bool
ConfirmedFlushed(XLogRecPtr lsn)
{
	bool		confirmed;

	if (max_wal_senders == 0 || SyncRepStandbyNames == NULL || SyncRepStandbyNames[0] == '\0')
		return true;
	LWLockAcquire(SyncRepLock, LW_SHARED);
	confirmed = WalSndCtl->lsn[SYNC_REP_WAIT_FLUSH] >= lsn;
	LWLockRelease(SyncRepLock);
	return confirmed;
}

/*
 * In sync mode: the records of this call flushed here, then confirmed
 * flushed by the synchronous standbys, whatever the session's
 * synchronous_commit (it is raised to "on" for the wait).  The wait ends
 * early only when it is cancelled (statement_timeout, pg_cancel_backend)
 * or the backend is terminated; SyncRepWaitForLSN then returns with a
 * WARNING, so the outcome is checked here: false means not confirmed, and
 * the caller removes the lease and raises an ERROR.  Otherwise the records
 * are handed to the WAL writer.
 */
bool
ReplicationConfirm(void)
{
	XLogRecPtr	lsn = pending_lsn;
	bool		confirmed;

	if (lsn == InvalidXLogRecPtr)
		return true;
	if (!pending_sync)
	{
		XLogSetAsyncXactLSN(lsn);
		return true;
	}
	XLogFlush(lsn);
	if (synchronous_commit < SYNCHRONOUS_COMMIT_REMOTE_FLUSH)
	{
		int			nest = NewGUCNestLevel();

		(void) set_config_option("synchronous_commit", "on", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		HOLD_INTERRUPTS();
		SyncRepWaitForLSN(lsn, false);
		RESUME_INTERRUPTS();
		AtEOXact_GUC(true, nest);
	}
	else
	{
		HOLD_INTERRUPTS();
		SyncRepWaitForLSN(lsn, false);
		RESUME_INTERRUPTS();
	}
	confirmed = ConfirmedFlushed(lsn);
	if (!confirmed)
		pg_atomic_fetch_add_u64(&repl->sync_failed, 1);
	return confirmed;
}

/* ---- the worker: mode and snapshots -------------------------------------- */

static void
FillState(LockextWalState *state, int mode)
{
	memset(state, 0, sizeof(*state));
	state->mode = (uint32) mode;
	{
		LockextDurableRecord record;

		DurableCurrent(&record);
		state->ttl_ceiling_ms = Max(record.ttl_ceiling_ms, (int64) lockext_max_ttl_ms);
	}
	state->max_fence = 0;
	state->sync_since_boot_ns = (int64) pg_atomic_read_u64(&repl->sync_since_boot_ns);
	(void) LockextBootId(state->boot_id);
}

static XLogRecPtr
LogMode(int mode)
{
	LockextWalHeader header = {LOCKEXT_WAL_FORMAT, 0, 0};
	LockextWalState state;
	XLogRecPtr	lsn;

	FillState(&state, mode);
	XLogBeginInsert();
	XLogSetRecordFlags(XLOG_MARK_UNIMPORTANT);
	XLogRegisterData((char *) &header, sizeof(header));
	XLogRegisterData((char *) &state, sizeof(state));
	lsn = XLogInsert(LOCKEXT_RMGR_ID, XLOG_LOCKEXT_MODE);
	pg_atomic_fetch_add_u64(&repl->wal_records, 1);
	return lsn;
}

/*
 * Publishes mode and logs it.  Switching to sync passes the barrier first,
 * so "sync since" follows every grant logged in the old mode.  Switching
 * away from sync logs and flushes the MODE record first: a grant that
 * stops waiting comes after it in WAL, so redo after a crash never takes
 * an unflushed grant for a sync one.  "off" is logged too (a standby
 * learns that its table stops being complete), and the durable record
 * remembers the mode, so that a start with replication off can say so.
 */
static void
PublishMode(int mode)
{
	int			old = PublishedMode();

	if (mode == LOCKEXT_REPLICATION_SYNC && old != LOCKEXT_REPLICATION_SYNC)
	{
		pg_atomic_write_u32(&repl->mode, (uint32) mode);
		/* every grant that read the old mode under its partition lock is done */
		LockTableBarrier();
		pg_atomic_write_u64(&repl->sync_since_boot_ns, (uint64) LockextBootNowNanos());
		XLogFlush(LogMode(mode));
	}
	else
	{
		XLogRecPtr	lsn;

		if (mode != LOCKEXT_REPLICATION_SYNC)
			pg_atomic_write_u64(&repl->sync_since_boot_ns, 0);
		lsn = LogMode(mode);
		XLogFlush(lsn);
		pg_atomic_write_u32(&repl->mode, (uint32) mode);
	}
	if (!DurableSetReplicationMode(mode))
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("lockext could not record the replication mode in \"%s\": %m", DurableFailedPath()),
				 errdetail("If the server restarts with lockext.replication = off, its standbys may not learn that their lease tables stop being complete.")));
	if (old != mode)
		ereport(LOG, (errmsg("lockext: lease replication is now %s (was %s)",
							 ReplicationModeName(mode), ReplicationModeName(old))));
}

/* The first part of a snapshot, logged while the copy's locks are held. */
typedef struct SnapshotBegin
{
	LockextWalState state;
	XLogRecPtr	lsn;
} SnapshotBegin;

/*
 * Under every partition lock SHARED, right after the copy of n leases: the
 * snapshot's first record.  Every change not in the copy takes its lock
 * EXCLUSIVE after this, so its record comes after this one; a replay that
 * saw this record and every later part has every lease.  A critical
 * section: nothing may ERROR out of the locked region.
 */
static void
LogSnapshotBegin(uint32 n, void *arg)
{
	SnapshotBegin *begin = (SnapshotBegin *) arg;
	LockextWalHeader header = {LOCKEXT_WAL_FORMAT, LOCKEXT_SNAPSHOT_FIRST, 0};

	if (n == 0)
		header.flags |= LOCKEXT_SNAPSHOT_LAST;
	START_CRIT_SECTION();
	XLogBeginInsert();
	XLogSetRecordFlags(XLOG_MARK_UNIMPORTANT);
	XLogRegisterData((char *) &header, sizeof(header));
	XLogRegisterData((char *) &begin->state, sizeof(begin->state));
	begin->lsn = XLogInsert(LOCKEXT_RMGR_ID, XLOG_LOCKEXT_SNAPSHOT);
	END_CRIT_SECTION();
}

/*
 * One snapshot: a consistent copy of the live leases (all partitions
 * SHARED, as for lockext_leases) with its first record logged before the
 * locks go, then the leases in parts of at most
 * LOCKEXT_SNAPSHOT_PART_ITEMS, each one buffer (one WAL data chunk), with
 * no lock held.  Records logged for a key while the parts are written are
 * newer than its item; replay keeps them (LockTableReplayLease).
 */
static void
LogSnapshot(int mode, MemoryContext scratch)
{
	MemoryContext old = MemoryContextSwitchTo(scratch);
	SnapshotBegin begin;
	int			count;
	LockextLeaseCopy *copies;
	Size		item_max = sizeof(LockextWalLease) + (Size) lockext_max_key_length;
	char	   *buffer = (char *) MemoryContextAllocHuge(scratch, sizeof(LockextWalHeader) + sizeof(LockextWalState) +
														 item_max * LOCKEXT_SNAPSHOT_PART_ITEMS);
	int			done = 0;
	uint32		part = 1;
	XLogRecPtr	lsn;

	FillState(&begin.state, mode);
	begin.state.snapshot_id = pg_atomic_add_fetch_u64(&repl->snapshot_id, 1);
	begin.state.part = 0;
	copies = LockTableCopyLive(&count, LogSnapshotBegin, &begin);
	lsn = begin.lsn;
	pg_atomic_fetch_add_u64(&repl->wal_records, 1);

	while (done < count)
	{
		int			n = Min(count - done, LOCKEXT_SNAPSHOT_PART_ITEMS);
		LockextWalHeader header = {LOCKEXT_WAL_FORMAT, 0, (uint32) n};
		LockextWalState state = begin.state;
		int64		now_ns = LockextNowNanos();
		Size		len = sizeof(header) + sizeof(state);

		state.part = part;
		if (done + n == count)
			header.flags |= LOCKEXT_SNAPSHOT_LAST;
		for (int i = 0; i < n; i++)
		{
			const LockextLeaseCopy *copy = &copies[done + i];
			LockextProbeKey probe;
			LockextWalLease item;

			probe.dbid = copy->dbid;
			probe.len = copy->key_len;
			probe.bytes = copy->key;
			FillWalLease(&item, &probe, &copy->lease, now_ns);
			state.max_fence = Max(state.max_fence, copy->lease.fence);
			memcpy(buffer + len, &item, sizeof(item));
			len += sizeof(item);
			memcpy(buffer + len, copy->key, copy->key_len);
			len += copy->key_len;
		}
		memcpy(buffer, &header, sizeof(header));
		memcpy(buffer + sizeof(header), &state, sizeof(state));
		XLogBeginInsert();
		XLogSetRecordFlags(XLOG_MARK_UNIMPORTANT);
		XLogRegisterData(buffer, (uint32) len);
		lsn = XLogInsert(LOCKEXT_RMGR_ID, XLOG_LOCKEXT_SNAPSHOT);
		pg_atomic_fetch_add_u64(&repl->wal_records, 1);
		done += n;
		part++;
	}
	XLogSetAsyncXactLSN(lsn);
	pg_atomic_fetch_add_u64(&repl->snapshots, 1);
	MemoryContextSwitchTo(old);
	MemoryContextReset(scratch);
}

/*
 * One round of lockext's worker on a primary: publish a changed mode, and
 * log a snapshot at start, after a mode change, and whenever the redo
 * pointer has moved since the last one (a checkpoint began: crash recovery
 * from it must find a snapshot after it).  started: first round.  A start
 * with replication off logs MODE(off) only if the last mode published was
 * not off: standbys learn that their tables stop being complete, and a
 * server that never replicated writes no lockext WAL at all.
 */
void
ReplicationWorkerStep(bool started)
{
	static XLogRecPtr last_snapshot_redo = InvalidXLogRecPtr;
	static MemoryContext scratch = NULL;
	int			configured = lockext_replication;
	bool		changed = configured != PublishedMode();
	XLogRecPtr	redo;

	if (scratch == NULL)
		scratch = AllocSetContextCreate(TopMemoryContext, "lockext snapshot", ALLOCSET_DEFAULT_SIZES);
	if (started && !changed && configured == LOCKEXT_REPLICATION_OFF)
	{
		LockextDurableRecord record;

		DurableCurrent(&record);
		if (record.replication_mode != LOCKEXT_REPLICATION_OFF)
			PublishMode(LOCKEXT_REPLICATION_OFF);
	}
	if (changed || (started && configured != LOCKEXT_REPLICATION_OFF))
		PublishMode(configured);
	if (configured == LOCKEXT_REPLICATION_OFF)
		return;
	/*
	 * Snapshots are XLOG_MARK_UNIMPORTANT: on an idle server the checkpointer
	 * skips its checkpoints, the redo pointer stays, and nothing more is
	 * logged.
	 */
	redo = GetRedoRecPtr();
	if (changed || started || redo != last_snapshot_redo)
	{
		last_snapshot_redo = redo;
		LogSnapshot(configured, scratch);
	}
}

/* ---- redo (startup process; never ERROR) --------------------------------- */

/* A record that cannot be read: incomplete, also for the snapshot being replayed. */
static void
MarkIncomplete(const char *what)
{
	SpinLockAcquire(&repl->mutex);
	repl->replay_dropped = true;
	SpinLockRelease(&repl->mutex);
	pg_atomic_write_u32(&repl->complete, 0);
	ereport(LOG, (errmsg("lockext: ignoring %s", what)));
}

static void
NoteReplayDropped(const char *what, uint32 key_len)
{
	bool		first;

	SpinLockAcquire(&repl->mutex);
	first = !repl->replay_dropped;
	repl->replay_dropped = true;
	SpinLockRelease(&repl->mutex);
	pg_atomic_write_u32(&repl->complete, 0);
	if (first)
		ereport(LOG,
				(errmsg("lockext: a replicated lease could not be stored: %s", what),
				 errdetail("The key is %u bytes; lockext.max_key_length is %d and lockext.max_locks is %d on this server.",
						   key_len, lockext_max_key_length, lockext_max_locks),
				 errhint("Configure lockext.max_locks and lockext.max_key_length at least as high as on the primary.  Until then this server's lease table is incomplete and a promotion applies the full grace period.")));
}

static void
RaiseAtomic(pg_atomic_uint64 *mark, uint64 value)
{
	uint64		current = pg_atomic_read_u64(mark);

	while (value > current && !pg_atomic_compare_exchange_u64(mark, &current, value))
		;
}

/* Copies size bytes at *pos of data (len bytes in all) to out; false if truncated. */
static bool
ReadFixed(const char *data, Size len, Size *pos, void *out, Size size)
{
	if (len - *pos < size)
		return false;
	memcpy(out, data + *pos, size);
	*pos += size;
	return true;
}

/* The key_len bytes of key at *pos; false if truncated or empty. */
static bool
ReadKeyBytes(const char *data, Size len, Size *pos, uint32 key_len, const char **key)
{
	if (key_len == 0 || len - *pos < key_len)
		return false;
	*key = data + *pos;
	*pos += key_len;
	return true;
}

/* One lease (GRANT, RENEW, a SNAPSHOT item) and its key. */
static bool
ReadWalLease(const char *data, Size len, Size *pos, LockextWalLease *item, const char **key)
{
	return ReadFixed(data, len, pos, item, sizeof(*item)) &&
		ReadKeyBytes(data, len, pos, item->key_len, key);
}

/* A RELEASE or EVICT body and its key. */
static bool
ReadWalRemoval(const char *data, Size len, Size *pos, LockextWalRemoval *item, const char **key)
{
	return ReadFixed(data, len, pos, item, sizeof(*item)) &&
		ReadKeyBytes(data, len, pos, item->key_len, key);
}

/* The state at the head of a MODE or SNAPSHOT record. */
static bool
ReadWalState(const char *data, Size len, Size *pos, LockextWalState *state)
{
	return ReadFixed(data, len, pos, state, sizeof(*state));
}

static void
ReplayLease(const LockextWalLease *item, const char *key, bool snapshot_item)
{
	LockextProbeKey probe;
	LockextLease lease;

	memset(&lease, 0, sizeof(lease));
	lease.lock_id = item->lock_id;
	lease.fence = item->fence;
	lease.expires_ns = LockextNowNanos() + Max(item->remaining_ns, (int64) 0);
	lease.acquired_at = item->acquired_at;
	lease.ttl_ms = item->ttl_ms;
	lease.renewals = item->renewals;
	lease.holder = item->holder;
	lease.pid = item->pid;
	memcpy(lease.client_addr, item->client_addr, sizeof(lease.client_addr));
	memcpy(lease.application_name, item->application_name, sizeof(lease.application_name));
	lease.application_name[LOCKEXT_APPNAME_BYTES - 1] = '\0';

	RaiseAtomic(&repl->replayed_max_fence, (uint64) Max(item->fence, (int64) 0));
	RaiseAtomic(&repl->replayed_ceiling_ms, (uint64) Max(item->ttl_ms, 0));
	if (item->key_len > (uint32) lockext_max_key_length)
	{
		NoteReplayDropped("its key is longer than lockext.max_key_length", item->key_len);
		return;
	}
	LockTableMakeProbe(&probe, item->dbid, key, item->key_len);
	if (LockTableReplayLease(&probe, &lease, snapshot_item) == LOCKEXT_REPLAY_NO_ROOM)
		NoteReplayDropped("the lock table is full", item->key_len);
}

static void
ReplayState(const LockextWalState *state)
{
	SpinLockAcquire(&repl->mutex);
	repl->replayed_mode = (int) state->mode;
	repl->replayed_sync_since_boot_ns = state->sync_since_boot_ns;
	memcpy(repl->replayed_boot_id, state->boot_id, sizeof(repl->replayed_boot_id));
	repl->replayed_boot_id[LOCKEXT_BOOT_ID_LEN - 1] = '\0';
	SpinLockRelease(&repl->mutex);
	RaiseAtomic(&repl->replayed_ceiling_ms, (uint64) Max(state->ttl_ceiling_ms, (int64) 0));
	RaiseAtomic(&repl->replayed_max_fence, (uint64) Max(state->max_fence, (int64) 0));
}

static void
ReplaySnapshotPart(const LockextWalHeader *header, const LockextWalState *state, const char *data,
				   Size len, Size pos)
{
	bool		in_order;
	bool		complete_now = false;

	ReplayState(state);
	SpinLockAcquire(&repl->mutex);
	if (header->flags & LOCKEXT_SNAPSHOT_FIRST)
	{
		repl->replay_snapshot_id = state->snapshot_id;
		repl->replay_next_part = 0;
		repl->replay_dropped = false;
	}
	in_order = repl->replay_snapshot_id == state->snapshot_id && repl->replay_next_part == state->part;
	if (in_order)
		repl->replay_next_part++;
	else
		repl->replay_snapshot_id = 0;	/* parts missing: wait for the next snapshot */
	SpinLockRelease(&repl->mutex);

	for (uint32 i = 0; i < header->count; i++)
	{
		LockextWalLease item;
		const char *key;

		if (!ReadWalLease(data, len, &pos, &item, &key))
		{
			MarkIncomplete("a truncated snapshot record");
			return;
		}
		ReplayLease(&item, key, true);
	}
	if (in_order && (header->flags & LOCKEXT_SNAPSHOT_LAST))
	{
		SpinLockAcquire(&repl->mutex);
		complete_now = !repl->replay_dropped;
		repl->replay_snapshot_id = 0;
		SpinLockRelease(&repl->mutex);
		if (complete_now)
		{
			if (pg_atomic_exchange_u32(&repl->complete, 1) == 0)
				ereport(LOG, (errmsg("lockext: replayed a complete snapshot of the lease table")));
			pg_atomic_fetch_add_u64(&repl->snapshots, 1);
		}
	}
}

static void
lockext_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & XLR_RMGR_INFO_MASK;
	const char *data = XLogRecGetData(record);
	Size		len = XLogRecGetDataLen(record);
	LockextWalHeader header;
	Size		pos = sizeof(LockextWalHeader);

	if (len < sizeof(header))
	{
		MarkIncomplete("a truncated WAL record");
		return;
	}
	memcpy(&header, data, sizeof(header));
	if (header.format > LOCKEXT_WAL_FORMAT || repl->replay_stopped)
	{
		if (!repl->replay_stopped)
			ereport(WARNING,
					(errmsg("lockext: WAL record format %u is newer than this server's %u; lease replay stopped",
							header.format, LOCKEXT_WAL_FORMAT),
					 errdetail("This server's lease table stays incomplete, so a promotion applies the full grace period."),
					 errhint("Upgrade lockext on this server to the primary's version (standbys first, then the primary).")));
		repl->replay_stopped = true;
		pg_atomic_write_u32(&repl->complete, 0);
		return;
	}
	pg_atomic_fetch_add_u64(&repl->replayed, 1);
	switch (info)
	{
		case XLOG_LOCKEXT_GRANT:
		case XLOG_LOCKEXT_RENEW:
			{
				LockextWalLease item;
				const char *key;

				if (ReadWalLease(data, len, &pos, &item, &key))
					ReplayLease(&item, key, false);
				else
					MarkIncomplete("a truncated lease record");
				break;
			}
		case XLOG_LOCKEXT_RELEASE:
		case XLOG_LOCKEXT_EVICT:
			{
				LockextWalRemoval item;
				LockextProbeKey probe;
				const char *key;

				if (!ReadWalRemoval(data, len, &pos, &item, &key))
				{
					MarkIncomplete("a truncated removal record");
					break;
				}
				LockTableMakeProbe(&probe, item.dbid, key, item.key_len);
				LockTableReplayRemoval(&probe, info == XLOG_LOCKEXT_RELEASE ? &item.lock_id : NULL);
				break;
			}
		case XLOG_LOCKEXT_SNAPSHOT:
			{
				LockextWalState state;

				if (ReadWalState(data, len, &pos, &state))
					ReplaySnapshotPart(&header, &state, data, len, pos);
				else
					MarkIncomplete("a truncated snapshot record");
				break;
			}
		case XLOG_LOCKEXT_MODE:
			{
				LockextWalState state;

				if (!ReadWalState(data, len, &pos, &state))
				{
					MarkIncomplete("a truncated mode record");
					break;
				}
				ReplayState(&state);
				/* leases change unlogged from here on: complete only after a new snapshot */
				if (state.mode == LOCKEXT_REPLICATION_OFF)
					pg_atomic_write_u32(&repl->complete, 0);
				break;
			}
		default:
			MarkIncomplete("a lockext WAL record of an unknown type");
			break;
	}
}

/* ---- pg_walinspect ------------------------------------------------------ */

static const char *
lockext_identify(uint8 info)
{
	switch (info & XLR_RMGR_INFO_MASK)
	{
		case XLOG_LOCKEXT_GRANT:
			return "GRANT";
		case XLOG_LOCKEXT_RENEW:
			return "RENEW";
		case XLOG_LOCKEXT_RELEASE:
			return "RELEASE";
		case XLOG_LOCKEXT_EVICT:
			return "EVICT";
		case XLOG_LOCKEXT_SNAPSHOT:
			return "SNAPSHOT";
		case XLOG_LOCKEXT_MODE:
			return "MODE";
	}
	return NULL;
}

static void
DescribeLockId(StringInfo buf, const pg_uuid_t *lock_id)
{
	static const char hex[] = "0123456789abcdef";

	for (int i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			appendStringInfoChar(buf, '-');
		appendStringInfoChar(buf, hex[lock_id->data[i] >> 4]);
		appendStringInfoChar(buf, hex[lock_id->data[i] & 0xf]);
	}
}

/* "; db D key "K"" (non-printable bytes as \xNN, at most 64), then the lock_id if given */
static void
DescribeKey(StringInfo buf, Oid dbid, const char *key, uint32 key_len, const pg_uuid_t *lock_id)
{
	appendStringInfo(buf, "; db %u key \"", dbid);
	for (uint32 i = 0; i < key_len && i < 64; i++)
	{
		unsigned char c = (unsigned char) key[i];

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
			appendStringInfoChar(buf, (char) c);
		else
			appendStringInfo(buf, "\\x%02x", c);
	}
	appendStringInfoString(buf, key_len > 64 ? "...\"" : "\"");
	if (lock_id != NULL)
	{
		appendStringInfoString(buf, " lock_id ");
		DescribeLockId(buf, lock_id);
	}
}

static void
lockext_desc(StringInfo buf, XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & XLR_RMGR_INFO_MASK;
	const char *data = XLogRecGetData(record);
	Size		len = XLogRecGetDataLen(record);
	LockextWalHeader header;
	Size		pos = sizeof(header);

	if (len < sizeof(header))
	{
		appendStringInfoString(buf, "truncated");
		return;
	}
	memcpy(&header, data, sizeof(header));
	appendStringInfo(buf, "format %u", header.format);
	if (header.format > LOCKEXT_WAL_FORMAT)
		return;
	switch (info)
	{
		case XLOG_LOCKEXT_GRANT:
		case XLOG_LOCKEXT_RENEW:
			{
				LockextWalLease item;
				const char *key;

				if (!ReadWalLease(data, len, &pos, &item, &key))
					break;
				DescribeKey(buf, item.dbid, key, item.key_len, &item.lock_id);
				appendStringInfo(buf, " fence " INT64_FORMAT " ttl_ms %d remaining_ms " INT64_FORMAT,
								 item.fence, item.ttl_ms, item.remaining_ns / 1000000);
				break;
			}
		case XLOG_LOCKEXT_RELEASE:
		case XLOG_LOCKEXT_EVICT:
			{
				LockextWalRemoval item;
				const char *key;

				if (!ReadWalRemoval(data, len, &pos, &item, &key))
					break;
				DescribeKey(buf, item.dbid, key, item.key_len,
							info == XLOG_LOCKEXT_RELEASE ? &item.lock_id : NULL);
				break;
			}
		case XLOG_LOCKEXT_SNAPSHOT:
		case XLOG_LOCKEXT_MODE:
			{
				LockextWalState state;

				if (!ReadWalState(data, len, &pos, &state))
					break;
				appendStringInfo(buf, "; mode %s ttl_ceiling_ms " INT64_FORMAT,
								 ReplicationModeName((int) state.mode), state.ttl_ceiling_ms);
				if (info == XLOG_LOCKEXT_SNAPSHOT)
					appendStringInfo(buf, " snapshot " UINT64_FORMAT " part %u%s%s leases %u max_fence " INT64_FORMAT,
									 state.snapshot_id, state.part,
									 (header.flags & LOCKEXT_SNAPSHOT_FIRST) ? " first" : "",
									 (header.flags & LOCKEXT_SNAPSHOT_LAST) ? " last" : "",
									 header.count, state.max_fence);
				break;
			}
	}
}

static RmgrData lockext_rmgr = {
	LOCKEXT_RMGR_NAME,
	lockext_redo,
	lockext_desc,
	lockext_identify,
	NULL,
	NULL,
	NULL,
	NULL,
};

/*
 * _PG_init.  PostgreSQL's own message for a taken id does not say who
 * lockext collided with; this one does.
 */
void
ReplicationRegister(void)
{
	if (RmgrIdExists(LOCKEXT_RMGR_ID))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("lockext cannot register its WAL resource manager: id %d is already used by \"%s\"",
						LOCKEXT_RMGR_ID, RmgrTable[LOCKEXT_RMGR_ID].rm_name),
				 errdetail("lockext writes its WAL records with the fixed resource manager id %d.",
						   LOCKEXT_RMGR_ID),
				 errhint("Two extensions in shared_preload_libraries use the same custom WAL resource manager id; remove one of them.")));
	RegisterCustomRmgr(LOCKEXT_RMGR_ID, &lockext_rmgr);
}

/* ---- after recovery, and status ------------------------------------------ */

/*
 * After crash recovery: true (and the deadline the grace must still run
 * to, on the lease clock, possibly now) if redo restored every lease a
 * holder may still have: it replayed a complete snapshot, the mode in
 * force was sync, and every lease granted before sync began has run out by
 * *until_ns.  Otherwise false, and why_not says which condition failed
 * (NULL if redo replayed no lockext state at all).
 */
bool
ReplicationRedoRestoredEveryLease(int64 ttl_ceiling_ms, int64 *until_ns, const char **why_not)
{
	int			mode;
	int64		since_boot_ns;
	char		boot_id[LOCKEXT_BOOT_ID_LEN];
	char		here[LOCKEXT_BOOT_ID_LEN];
	int64		ceiling = Max(ttl_ceiling_ms, ReplicationReplayedCeilingMs());
	int64		left_ns;

	SpinLockAcquire(&repl->mutex);
	mode = repl->replayed_mode;
	since_boot_ns = repl->replayed_sync_since_boot_ns;
	memcpy(boot_id, repl->replayed_boot_id, sizeof(boot_id));
	SpinLockRelease(&repl->mutex);

	if (mode < 0)
	{
		*why_not = NULL;		/* lockext.replication was off: nothing to say */
		return false;
	}
	if (pg_atomic_read_u32(&repl->complete) == 0)
	{
		*why_not = "redo did not restore a complete lease table";
		return false;
	}
	if (mode != LOCKEXT_REPLICATION_SYNC)
	{
		*why_not = mode == LOCKEXT_REPLICATION_ASYNC ? "lockext.replication was async"
			: "lockext.replication was off";
		return false;
	}
	if (!LockextBootId(here) || boot_id[0] == '\0' || memcmp(here, boot_id, sizeof(here)) != 0)
	{
		*why_not = "the host restarted since lockext.replication became sync";
		return false;
	}
	left_ns = since_boot_ns + ceiling * core::kNanosPerMilli - LockextBootNowNanos();
	*until_ns = LockextNowNanos() + Max(left_ns, (int64) 0);
	/* this run goes on in sync: it has lost nothing since then either */
	if (PublishedMode() == LOCKEXT_REPLICATION_SYNC)
		pg_atomic_write_u64(&repl->sync_since_boot_ns, (uint64) Max(since_boot_ns, (int64) 0));
	return true;
}

/*
 * Once recovery has ended (promotion or crash recovery): fences continue
 * above every replayed one, and the durable TTL ceiling covers every
 * replayed lease, so a later crash's grace does too.
 */
void
ReplicationOnRecoveryFinished(void)
{
	uint64		max_fence = pg_atomic_read_u64(&repl->replayed_max_fence);
	int64		ceiling = ReplicationReplayedCeilingMs();

	if (max_fence > 0 && (max_fence >> 44) == GetWALInsertionTimeLine())
		FenceRaiseCounterTo(core::FenceCounterOf((int64) max_fence));
	if (ceiling > 0 && !DurableRaiseTtlCeiling(ceiling))
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("lockext could not record the TTL ceiling in \"%s\": %m", DurableFailedPath()),
				 errdetail("A crash before the next successful write may apply a shorter grace period than replayed leases need.")));
}

bool
ReplicationTableComplete(void)
{
	return pg_atomic_read_u32(&repl->complete) != 0;
}

int64
ReplicationReplayedCeilingMs(void)
{
	return (int64) pg_atomic_read_u64(&repl->replayed_ceiling_ms);
}

void
ReplicationGetStatus(LockextReplicationStatus *status)
{
	bool		in_recovery = RecoveryInProgress();

	/* a standby shows the mode its primary logged last */
	status->mode = PublishedMode();
	if (in_recovery)
	{
		SpinLockAcquire(&repl->mutex);
		status->mode = Max(repl->replayed_mode, (int) LOCKEXT_REPLICATION_OFF);
		SpinLockRelease(&repl->mutex);
	}
	status->table_complete = !in_recovery || ReplicationTableComplete();
	status->wal_records = pg_atomic_read_u64(&repl->wal_records);
	status->sync_failed = pg_atomic_read_u64(&repl->sync_failed);
	status->replayed = pg_atomic_read_u64(&repl->replayed);
	status->snapshots = pg_atomic_read_u64(&repl->snapshots);
}
