/*-------------------------------------------------------------------------
 *
 * durable.cpp
 *	  The durable record and its two copies (see durable.h).
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/file_perm.h"
#include "port/atomics.h"
#include "storage/fd.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "durable.h"
#include "shmem.h"
}

#define RECORD_MAGIC 0x4C585354		/* "LXST" */
#define RECORD_VERSION 1
#define LEGACY_FENCE_MAGIC 0x4C584643	/* "LXFC", lockext 1.0 */
#define LEGACY_FENCE_VERSION 1

/* lockext 1.0's pg_lockext/fence */
typedef struct LegacyFenceFile
{
	uint32		magic;
	uint32		version;
	uint64		reserved;
	pg_crc32c	crc;
} LegacyFenceFile;

typedef struct DurableShared
{
	LockextDurableRecord record;	/* the marks in force; durable lock */
	bool		run_begun;		/* changes are written from now on */
	pg_atomic_uint64 ttl_ceiling_ms;	/* mirror of record.ttl_ceiling_ms */
} DurableShared;

static DurableShared *durable = NULL;

Size
DurableShmemSize(void)
{
	return MAXALIGN(sizeof(DurableShared));
}

void
DurableShmemInit(void)
{
	bool		found;

	durable = (DurableShared *) ShmemInitStruct("lockext durable record", sizeof(DurableShared),
												&found);
	if (!found)
	{
		memset(durable, 0, sizeof(*durable));
		pg_atomic_init_u64(&durable->ttl_ceiling_ms, 0);
	}
}

static pg_crc32c
RecordCrc(const void *data, size_t len)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, data, len);
	FIN_CRC32C(crc);
	return crc;
}

void
DurableSeal(LockextDurableRecord *record)
{
	record->magic = RECORD_MAGIC;
	record->version = RECORD_VERSION;
	record->crc = RecordCrc(record, offsetof(LockextDurableRecord, crc));
}

bool
DurableRecordValid(const LockextDurableRecord *record)
{
	return record->magic == RECORD_MAGIC && record->version == RECORD_VERSION &&
		EQ_CRC32C(record->crc, RecordCrc(record, offsetof(LockextDurableRecord, crc))) &&
		record->ttl_ceiling_ms >= 0 && record->grace_length_ms >= 0;
}

/*
 * The maximum of every mark.  Grace deadlines measured in different boots
 * cannot be compared: the merged record then names no boot, which makes the
 * whole grace start again (core::GraceLeftNanos).
 */
void
DurableMerge(LockextDurableRecord *into, const LockextDurableRecord *from)
{
	/* proven if any copy is (an unproven one can only raise the bound); owed if any says so */
	into->flags = ((into->flags & from->flags) & LOCKEXT_DURABLE_FENCE_UNPROVEN) |
		((into->flags | from->flags) & LOCKEXT_DURABLE_PROMOTION_OWED);
	into->standby_timeline = Max(into->standby_timeline, from->standby_timeline);
	into->fence_reserved = Max(into->fence_reserved, from->fence_reserved);
	into->ttl_ceiling_ms = Max(into->ttl_ceiling_ms, from->ttl_ceiling_ms);
	into->replication_mode = Max(into->replication_mode, from->replication_mode);
	if (from->grace_reason == 0)
		return;
	if (into->grace_reason == 0)
	{
		into->grace_reason = from->grace_reason;
		into->grace_length_ms = from->grace_length_ms;
		into->grace_until_boot_ns = from->grace_until_boot_ns;
		memcpy(into->boot_id, from->boot_id, sizeof(into->boot_id));
		return;
	}
	into->grace_length_ms = Max(into->grace_length_ms, from->grace_length_ms);
	if (memcmp(into->boot_id, from->boot_id, sizeof(into->boot_id)) == 0)
	{
		if (from->grace_until_boot_ns > into->grace_until_boot_ns)
		{
			into->grace_until_boot_ns = from->grace_until_boot_ns;
			into->grace_reason = from->grace_reason;
		}
	}
	else
		memset(into->boot_id, 0, sizeof(into->boot_id));
}

/* Reads exactly len bytes of path into buf; 0 = read, -1 = absent, 1 = present but unreadable. */
static int
ReadSmallFile(const char *path, void *buf, size_t len)
{
	struct stat st;
	int			fd;
	bool		ok;

	if (stat(path, &st) != 0)
		return errno == ENOENT ? -1 : 1;
	if (!S_ISREG(st.st_mode) || st.st_size != (off_t) len)
		return 1;
	fd = open(path, O_RDONLY | PG_BINARY, 0);
	if (fd < 0)
		return 1;
	ok = read(fd, buf, len) == (ssize_t) len;
	close(fd);
	return ok ? 0 : 1;
}

static void
NoteCopy(LockextDurableLoad *load, const char *path, int status,
		 const LockextDurableRecord *record)
{
	if (status == 0 && record != NULL)
	{
		if (!load->valid)
		{
			load->record = *record;
			load->valid = true;
		}
		else
			DurableMerge(&load->record, record);
		load->copies_valid++;
	}
	else if (status >= 0)
		load->damaged[load->copies_damaged++] = path;
}

/* Reads and merges every copy of the record (startup, postmaster). */
void
DurableLoad(LockextDurableLoad *load)
{
	static const char *const copies[] = {LOCKEXT_STATE_FILE, LOCKEXT_MARKER_FILE};
	LegacyFenceFile legacy;
	int			status;

	memset(load, 0, sizeof(*load));
	for (const char *path : copies)
	{
		LockextDurableRecord record;

		status = ReadSmallFile(path, &record, sizeof(record));
		if (status >= 0 && strcmp(path, LOCKEXT_MARKER_FILE) == 0)
			load->marker_present = true;
		NoteCopy(load, path, status == 0 && !DurableRecordValid(&record) ? 1 : status, &record);
	}

	/* lockext 1.0's fence file counts only where no 1.1 copy exists (an upgrade) */
	if (load->copies_valid > 0 || load->copies_damaged > 0)
		return;
	status = ReadSmallFile(LOCKEXT_LEGACY_FENCE_FILE, &legacy, sizeof(legacy));
	if (status == 0 &&
		(legacy.magic != LEGACY_FENCE_MAGIC || legacy.version != LEGACY_FENCE_VERSION ||
		 !EQ_CRC32C(legacy.crc, RecordCrc(&legacy, offsetof(LegacyFenceFile, crc)))))
		status = 1;
	if (status == 0)
	{
		LockextDurableRecord record;

		memset(&record, 0, sizeof(record));
		record.fence_reserved = legacy.reserved;
		NoteCopy(load, LOCKEXT_LEGACY_FENCE_FILE, 0, &record);
	}
	else
		NoteCopy(load, LOCKEXT_LEGACY_FENCE_FILE, status, NULL);
}

static const char *failed_path = LOCKEXT_STATE_FILE;

const char *
DurableFailedPath(void)
{
	return failed_path;
}

/* Writes record to path through a temporary file, durably; false with errno set. */
static bool
WriteCopy(const char *path, const LockextDurableRecord *record)
{
	char		tmp[MAXPGPATH];
	int			fd;
	int			saved_errno;

	failed_path = path;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);
	if (fd < 0)
		return false;
	errno = 0;
	if (write(fd, record, sizeof(*record)) != (ssize_t) sizeof(*record) || pg_fsync(fd) != 0)
	{
		saved_errno = errno ? errno : ENOSPC;
		close(fd);
		errno = saved_errno;
		return false;
	}
	if (close(fd) != 0)
		return false;
	return durable_rename(tmp, path, LOG) == 0;
}

/* Seals record and writes both copies; the caller holds the durable lock (or is the postmaster). */
static bool
WriteBoth(LockextDurableRecord *record)
{
	(void) LockextBootId(record->boot_id);
	DurableSeal(record);
	return WriteCopy(LOCKEXT_STATE_FILE, record) && WriteCopy(LOCKEXT_MARKER_FILE, record);
}

/*
 * Adopts record as the marks of this run and writes both copies (startup,
 * postmaster, before any lease is served).  False with errno set if a copy
 * could not be written; the marks are adopted anyway, and later changes try
 * again.
 */
bool
DurableBeginRun(const LockextDurableRecord *record)
{
	bool		ok;

	durable->record = *record;
	ok = WriteBoth(&durable->record);
	durable->run_begun = true;
	pg_atomic_write_u64(&durable->ttl_ceiling_ms, (uint64) durable->record.ttl_ceiling_ms);
	if (ok)
		(void) unlink(LOCKEXT_LEGACY_FENCE_FILE);
	return ok;
}

/*
 * Clean shutdown (postmaster), after the lease file with final_record is
 * durable: the state file gets the final record too (so a grace period that
 * ended is not continued after a reboot), and the marker goes.
 */
void
DurableEndRunClean(const LockextDurableRecord *final_record)
{
	LockextDurableRecord record = *final_record;

	(void) LockextBootId(record.boot_id);
	DurableSeal(&record);
	if (!WriteCopy(LOCKEXT_STATE_FILE, &record))
		ereport(LOG, (errmsg("lockext: could not write \"%s\": %m", LOCKEXT_STATE_FILE)));
	if (unlink(LOCKEXT_MARKER_FILE) == 0)
		fsync_fname_ext(LOCKEXT_DIR, true, false, LOG);
}

void
DurableCurrent(LockextDurableRecord *out)
{
	LWLock	   *lock = LockextLock(LOCKEXT_LOCK_DURABLE);

	LWLockAcquire(lock, LW_SHARED);
	*out = durable->record;
	LWLockRelease(lock);
}

/*
 * Applies a change to the record: both copies first (once the run has
 * begun), then the record in shared memory.  False with errno set when a
 * copy could not be written; the record is then unchanged.
 */
typedef void (*RecordChange) (LockextDurableRecord *record, const void *arg);

static bool
ChangeRecord(RecordChange change, const void *arg)
{
	LWLock	   *lock = LockextLock(LOCKEXT_LOCK_DURABLE);
	LockextDurableRecord next;
	bool		ok = true;
	int			saved_errno = 0;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	next = durable->record;
	change(&next, arg);
	if (memcmp(&next, &durable->record, sizeof(next)) == 0)
	{
		LWLockRelease(lock);
		return true;			/* nothing new to record */
	}
	if (durable->run_begun)
	{
		ok = WriteBoth(&next);
		saved_errno = errno;
	}
	if (ok)
	{
		durable->record = next;
		pg_atomic_write_u64(&durable->ttl_ceiling_ms, (uint64) next.ttl_ceiling_ms);
	}
	LWLockRelease(lock);
	errno = saved_errno;
	return ok;
}

static void
SetFence(LockextDurableRecord *record, const void *arg)
{
	record->fence_reserved = Max(record->fence_reserved, *(const uint64 *) arg);
	record->flags &= ~LOCKEXT_DURABLE_FENCE_UNPROVEN;
}

/*
 * Records that counters up to reserved may be handed out (and that this is
 * a proven bound: fence.h calls it only when it is); may be called under a
 * partition lock.
 */
bool
DurableRaiseFence(uint64 reserved)
{
	return ChangeRecord(SetFence, &reserved);
}

static void
SetTtlCeiling(LockextDurableRecord *record, const void *arg)
{
	record->ttl_ceiling_ms = Max(record->ttl_ceiling_ms, *(const int64 *) arg);
}

/* Records, before a grant or renewal for ttl_ms, that a lease may last that long. */
bool
DurableRaiseTtlCeiling(int64 ttl_ms)
{
	if (likely((uint64) ttl_ms <= pg_atomic_read_u64(&durable->ttl_ceiling_ms)))
		return true;
	return ChangeRecord(SetTtlCeiling, &ttl_ms);
}

typedef struct GraceChange
{
	int			reason;
	int64		length_ms;
	int64		until_boot_ns;
} GraceChange;

static void
SetGrace(LockextDurableRecord *record, const void *arg)
{
	const GraceChange *grace = (const GraceChange *) arg;

	record->grace_reason = grace->reason;
	record->grace_length_ms = grace->length_ms;
	record->grace_until_boot_ns = grace->until_boot_ns;
	/* a grace armed (or ended by an operator) settles a promotion grace owed */
	record->flags &= ~LOCKEXT_DURABLE_PROMOTION_OWED;
}

/* Records the grace period in force (reason 0: none). */
bool
DurableSetGrace(int reason, int64 length_ms, int64 until_boot_ns)
{
	GraceChange change = {reason, length_ms, until_boot_ns};

	return ChangeRecord(SetGrace, &change);
}

static void
SetReplicationMode(LockextDurableRecord *record, const void *arg)
{
	record->replication_mode = (uint32) *(const int *) arg;
}

bool
DurableSetReplicationMode(int mode)
{
	return ChangeRecord(SetReplicationMode, &mode);
}
