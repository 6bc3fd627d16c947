/*-------------------------------------------------------------------------
 *
 * persist.cpp
 *	  What survives the server: leases saved at a clean shutdown and
 *	  restored at start, the marker that tells a clean shutdown from a
 *	  crash, and the grace period that follows anything else.
 *
 * Files, under the data directory:
 *	pg_lockext/running	written durably at every start; its presence at the
 *						next start without a saved lease file means the last
 *						run did not shut down cleanly (or did not save).
 *	pg_lockext/leases	written at a clean shutdown (pg_control says
 *						DB_SHUTDOWNED and the postmaster exits with code 0):
 *						header (magic, format version, PostgreSQL major,
 *						flags, wall-clock save time), one record per live
 *						lease with its remaining time, and a trailer with the
 *						count and a CRC-32C.  Written to a temporary name,
 *						fsynced and renamed durably; removed once loaded.
 *	pg_lockext/fence	the fence reservation (fence.cpp).
 *
 * Grace: no key is granted for lockext.recovery_grace_ms (default: the
 * maximum TTL) after shared memory is reinitialised by a crash, after a
 * start that did not restore every lease the last run had, and from the
 * first lease call after the server leaves recovery (promotion; a server
 * that starts with standby.signal or recovery.signal arms it).
 *
 * Locking protocol: startup and shutdown run in the postmaster with no
 * other process attached (startup under AddinShmemInitLock), so they walk
 * the table without partition locks.  Backends only read the grace fields
 * (pg_atomic) and arm the promotion grace under the state spinlock.
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "catalog/pg_control.h"
#include "miscadmin.h"
#include "common/file_perm.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "lockext/lock_table.h"
}

#include "lockext/core/lease_rules.hpp"

namespace core = lockext::core;

#define LEASES_FILE LOCKEXT_DIR "/leases"
#define LEASES_FILE_TMP LOCKEXT_DIR "/leases.tmp"
#define LEASES_FILE_MAGIC 0x4C584C53	/* "LXLS" */
#define LEASES_FILE_VERSION 1
#define LEASES_FLAG_SAVED 0x1			/* the leases were saved (lockext.save = on) */

typedef struct LeasesFileHeader
{
	uint32		magic;
	uint32		version;
	uint32		pg_major;
	uint32		flags;
	TimestampTz saved_at;		/* wall clock */
	uint32		lease_size;		/* sizeof(LockextLease), guards the record layout */
	uint32		reserved;
} LeasesFileHeader;

/* one per lease, followed by key_len key bytes; lease.expires_ns holds the remaining ns */
typedef struct LeaseRecord
{
	Oid			dbid;
	uint32		key_len;
	LockextLease lease;
} LeaseRecord;

typedef struct LeasesFileTrailer
{
	uint32		count;
	pg_crc32c	crc;			/* of everything before it, count included */
} LeasesFileTrailer;

int64
LockextGraceMillis(void)
{
	return lockext_recovery_grace_ms >= 0 ? lockext_recovery_grace_ms : lockext_max_ttl_ms;
}

const char *
LockextGraceReasonText(int reason)
{
	switch (reason)
	{
		case LOCKEXT_GRACE_CRASH_RESTART:
			return "crash restart";
		case LOCKEXT_GRACE_UNCLEAN_SHUTDOWN:
			return "start after an unclean shutdown";
		case LOCKEXT_GRACE_NOT_SAVED:
			return "start after a shutdown with lockext.save = off";
		case LOCKEXT_GRACE_NOT_RESTORED:
			return "start without restoring every saved lease";
		case LOCKEXT_GRACE_PROMOTION:
			return "promotion";
		default:
			return "none";
	}
}

static void
StartGrace(LockextGraceReason reason)
{
	int64		until = LockextNowNanos() + LockextGraceMillis() * INT64CONST(1000000);

	SpinLockAcquire(&lockext_state->mutex);
	lockext_state->grace_reason = reason;
	SpinLockRelease(&lockext_state->mutex);
	pg_atomic_write_u64(&lockext_state->grace_until_ns, (uint64) until);
	ereport(LOG, (errmsg("lockext: no lease will be granted for %lld ms (%s)",
						 (long long) LockextGraceMillis(), LockextGraceReasonText(reason))));
}

/* Backends: the first lease call after the server left recovery starts the grace. */
void
LockextCheckPromotionGrace(void)
{
	bool		start = false;

	if (likely(pg_atomic_read_u32(&lockext_state->promotion_grace_pending) == 0))
		return;
	SpinLockAcquire(&lockext_state->mutex);
	if (pg_atomic_read_u32(&lockext_state->promotion_grace_pending) != 0)
	{
		pg_atomic_write_u32(&lockext_state->promotion_grace_pending, 0);
		start = true;
	}
	SpinLockRelease(&lockext_state->mutex);
	if (start)
		StartGrace(LOCKEXT_GRACE_PROMOTION);
}

static bool
WriteAll(FILE *file, const void *data, size_t len, pg_crc32c *crc)
{
	COMP_CRC32C(*crc, data, len);
	return fwrite(data, 1, len, file) == len;
}

/* True if pg_control records a completed shutdown checkpoint. */
static bool
ControlFileSaysShutDown(void)
{
	ControlFileData control;
	pg_crc32c	crc;
	int			fd = open(XLOG_CONTROL_FILE, O_RDONLY | PG_BINARY, 0);
	bool		ok;

	if (fd < 0)
		return false;
	ok = read(fd, &control, sizeof(control)) == (ssize_t) sizeof(control);
	close(fd);
	if (!ok)
		return false;
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, &control, offsetof(ControlFileData, crc));
	FIN_CRC32C(crc);
	return EQ_CRC32C(crc, control.crc) &&
		(control.state == DB_SHUTDOWNED || control.state == DB_SHUTDOWNED_IN_RECOVERY);
}

/* Writes pg_lockext/leases; with save off, an empty file flagged "not saved". */
static bool
SaveLeases(bool save)
{
	LeasesFileHeader header;
	LeasesFileTrailer trailer;
	pg_crc32c	crc;
	FILE	   *file = fopen(LEASES_FILE_TMP, PG_BINARY_W);
	bool		ok;
	uint32		count = 0;

	if (file == NULL)
		return false;
	memset(&header, 0, sizeof(header));
	header.magic = LEASES_FILE_MAGIC;
	header.version = LEASES_FILE_VERSION;
	header.pg_major = PG_VERSION_NUM / 100;
	header.flags = save ? LEASES_FLAG_SAVED : 0;
	header.saved_at = GetCurrentTimestamp();
	header.lease_size = sizeof(LockextLease);
	INIT_CRC32C(crc);
	ok = WriteAll(file, &header, sizeof(header), &crc);

	if (save)
	{
		HASH_SEQ_STATUS scan;
		void	   *entry;
		int64		now_ns = LockextNowNanos();

		hash_seq_init(&scan, lockext_table);
		while ((entry = hash_seq_search(&scan)) != NULL)
		{
			const LockextStoredKey *key = (const LockextStoredKey *) entry;
			LeaseRecord record;

			record.dbid = key->dbid;
			record.key_len = key->len;
			record.lease = *LockextEntryLease(entry);
			if (!core::IsLive(record.lease.expires_ns, now_ns))
				continue;
			record.lease.expires_ns -= now_ns;	/* remaining */
			ok = ok && WriteAll(file, &record, sizeof(record), &crc) &&
				WriteAll(file, key->bytes, key->len, &crc);
			count++;
		}
	}
	trailer.count = count;
	COMP_CRC32C(crc, &trailer.count, sizeof(trailer.count));
	FIN_CRC32C(crc);
	trailer.crc = crc;
	ok = ok && fwrite(&trailer, 1, sizeof(trailer), file) == sizeof(trailer);
	ok = ok && fflush(file) == 0 && pg_fsync(fileno(file)) == 0;
	ok = (fclose(file) == 0) && ok;
	ok = ok && durable_rename(LEASES_FILE_TMP, LEASES_FILE, LOG) == 0;
	if (ok)
		ereport(LOG, (errmsg("lockext: saved %u live leases to \"%s\"", count, LEASES_FILE)));
	return ok;
}

/*
 * on_shmem_exit in the postmaster.  Only a clean shutdown saves: code 0 and
 * a shutdown checkpoint in pg_control (an immediate stop exits 0 too, but
 * leaves pg_control "in production").  Then the marker goes, so the next
 * start knows it may trust the file.
 */
static void
ShutdownPersistence(int code, Datum arg)
{
	(void) arg;
	if (code != 0 || lockext_state == NULL || lockext_table == NULL)
		return;
	if (!ControlFileSaysShutDown())
		return;
	if (!SaveLeases(lockext_save))
	{
		ereport(LOG, (errmsg("lockext: could not save leases to \"%s\": %m", LEASES_FILE)));
		return;
	}
	if (unlink(LOCKEXT_MARKER_FILE) == 0)
		fsync_fname_ext(LOCKEXT_DIR, true, false, LOG);
}

/*
 * Restores the saved leases; true if every lease in the file is live in the
 * table now (expired ones are simply dropped).  Remaining times shrink by
 * the wall-clock downtime and are never extended.
 */
static bool
RestoreLeases(LockextGraceReason *reason)
{
	struct stat st;
	char	   *data;
	FILE	   *file;
	LeasesFileHeader header;
	LeasesFileTrailer trailer;
	pg_crc32c	crc;
	size_t		body_len, offset;
	uint32		count = 0, restored = 0, expired = 0;
	int64		now_ns, now_us;
	bool		complete = true;

	*reason = LOCKEXT_GRACE_NOT_RESTORED;
	if (stat(LEASES_FILE, &st) != 0 || st.st_size < (off_t) (sizeof(header) + sizeof(trailer)))
		return false;
	data = (char *) palloc_extended(st.st_size, MCXT_ALLOC_NO_OOM);
	if (data == NULL)
		return false;
	file = fopen(LEASES_FILE, PG_BINARY_R);
	if (file == NULL || fread(data, 1, st.st_size, file) != (size_t) st.st_size)
	{
		if (file)
			fclose(file);
		pfree(data);
		return false;
	}
	fclose(file);

	memcpy(&header, data, sizeof(header));
	memcpy(&trailer, data + st.st_size - sizeof(trailer), sizeof(trailer));
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, data, st.st_size - sizeof(trailer));
	COMP_CRC32C(crc, &trailer.count, sizeof(trailer.count));
	FIN_CRC32C(crc);
	if (header.magic != LEASES_FILE_MAGIC || header.version != LEASES_FILE_VERSION ||
		header.pg_major != PG_VERSION_NUM / 100 || header.lease_size != sizeof(LockextLease) ||
		!EQ_CRC32C(crc, trailer.crc))
	{
		ereport(WARNING, (errmsg("lockext: ignoring unreadable lease file \"%s\"", LEASES_FILE)));
		pfree(data);
		return false;
	}
	if ((header.flags & LEASES_FLAG_SAVED) == 0)
	{
		*reason = LOCKEXT_GRACE_NOT_SAVED;
		pfree(data);
		return false;
	}
	if (!lockext_save)
	{
		pfree(data);
		return false;
	}

	now_ns = LockextNowNanos();
	now_us = GetCurrentTimestamp();
	body_len = st.st_size - sizeof(trailer);
	offset = sizeof(header);
	while (offset + sizeof(LeaseRecord) <= body_len)
	{
		LeaseRecord record;
		int64		left;

		memcpy(&record, data + offset, sizeof(record));
		offset += sizeof(record);
		if (record.key_len > body_len - offset)
			break;
		count++;
		left = core::RestoredRemainingNanos(record.lease.expires_ns, header.saved_at, now_us);
		if (left <= 0)
			expired++;
		else
		{
			record.lease.expires_ns = now_ns + left;
			if (LockextRestoreLease(record.dbid, data + offset, record.key_len, &record.lease))
				restored++;
			else
				complete = false;
		}
		offset += record.key_len;
	}
	if (count != trailer.count)
		complete = false;
	pfree(data);
	ereport(LOG, (errmsg("lockext: restored %u of %u saved leases (%u expired during the downtime)",
						 restored, trailer.count, expired)));
	return complete;
}

static void
WriteMarker(void)
{
	int			fd = open(LOCKEXT_MARKER_FILE, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);

	if (fd < 0 || pg_fsync(fd) != 0)
		ereport(WARNING, (errmsg("lockext: could not write \"%s\": %m", LOCKEXT_MARKER_FILE)));
	if (fd >= 0)
		close(fd);
	fsync_fname_ext(LOCKEXT_DIR, true, false, LOG);
}

/*
 * At every shared-memory initialisation in the postmaster.  reinitialising
 * is true after a crash (the lease table was just wiped).
 */
void
LockextStartupPersistence(bool reinitialising)
{
	LockextGraceReason reason = LOCKEXT_GRACE_NONE;

	if (MakePGDirectory(LOCKEXT_DIR) != 0 && errno != EEXIST)
		ereport(WARNING, (errmsg("lockext: could not create directory \"%s\": %m", LOCKEXT_DIR)));

	LockextLoadFenceCounter();

	if (reinitialising)
		reason = LOCKEXT_GRACE_CRASH_RESTART;
	else if (access(LEASES_FILE, F_OK) == 0)
	{
		if (RestoreLeases(&reason))
			reason = LOCKEXT_GRACE_NONE;
		if (unlink(LEASES_FILE) != 0)
			ereport(WARNING, (errmsg("lockext: could not remove \"%s\": %m", LEASES_FILE)));
	}
	else if (access(LOCKEXT_MARKER_FILE, F_OK) == 0)
		reason = LOCKEXT_GRACE_UNCLEAN_SHUTDOWN;

	WriteMarker();

	/*
	 * A server starting in recovery grants nothing until it is promoted, and
	 * promotion starts a grace period of its own (the marker a base backup
	 * copied from its primary says nothing about this server).
	 */
	if (access(STANDBY_SIGNAL_FILE, F_OK) == 0 || access(RECOVERY_SIGNAL_FILE, F_OK) == 0)
		pg_atomic_write_u32(&lockext_state->promotion_grace_pending, 1);
	else if (reason != LOCKEXT_GRACE_NONE && LockextGraceMillis() > 0)
		StartGrace(reason);

	/* the list of exit callbacks is emptied by each crash reinitialisation */
	on_shmem_exit(ShutdownPersistence, (Datum) 0);
}
