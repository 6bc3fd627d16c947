/*-------------------------------------------------------------------------
 *
 * persist.cpp
 *	  The lease file (see persist.h).
 *
 *-------------------------------------------------------------------------
 */
#include "core/lease_rules.hpp"

extern "C"
{
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog_internal.h"
#include "catalog/pg_control.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "utils/timestamp.h"

#include "clock.h"
#include "gucs.h"
#include "lock_table.h"
#include "persist.h"
}

namespace core = lockext::core;

#define LEASES_FILE_TMP LOCKEXT_DIR "/leases.tmp"
#define LEASES_FILE_MAGIC 0x4C584C53	/* "LXLS" */
#define LEASES_FILE_VERSION 2
#define LEASES_FLAG_SAVED 0x1			/* the leases were saved (lockext.save = on) */
#define READ_CHUNK 65536

/* The fields every version starts with. */
typedef struct LeasesFileStart
{
	uint32		magic;
	uint32		version;
	uint32		pg_major;
	uint32		flags;
	TimestampTz saved_at;		/* wall clock, display only */
	uint32		lease_size;		/* sizeof(LockextLease), guards the record layout */
	uint32		reserved;
} LeasesFileStart;

typedef struct LeasesFileHeader
{
	LeasesFileStart start;
	int64		saved_boot_ns;	/* boot clock at the save */
	char		boot_id[LOCKEXT_BOOT_ID_LEN];
	LockextDurableRecord record;
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

/* Reads pg_control; false if it is unreadable or its CRC does not match. */
static bool
ReadControlFile(ControlFileData *control)
{
	pg_crc32c	crc;
	int			fd = open(XLOG_CONTROL_FILE, O_RDONLY | PG_BINARY, 0);
	bool		ok;

	if (fd < 0)
		return false;
	ok = read(fd, control, sizeof(*control)) == (ssize_t) sizeof(*control);
	close(fd);
	if (!ok)
		return false;
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, control, offsetof(ControlFileData, crc));
	FIN_CRC32C(crc);
	return EQ_CRC32C(crc, control->crc);
}

/* True if pg_control records a completed shutdown checkpoint. */
bool
PersistShutdownWasClean(void)
{
	ControlFileData control;

	return ReadControlFile(&control) &&
		(control.state == DB_SHUTDOWNED || control.state == DB_SHUTDOWNED_IN_RECOVERY);
}

/* The timeline of pg_control's last checkpoint; 0 if unreadable. */
uint32
PersistControlTimeline(void)
{
	ControlFileData control;

	return ReadControlFile(&control) ? control.checkPointCopy.ThisTimeLineID : 0;
}

static bool
WriteAll(FILE *file, const void *data, size_t len, pg_crc32c *crc)
{
	COMP_CRC32C(*crc, data, len);
	return fwrite(data, 1, len, file) == len;
}

typedef struct SaveState
{
	FILE	   *file;
	pg_crc32c  *crc;
	uint32		count;
	bool		ok;
} SaveState;

static void
SaveOne(Oid dbid, const char *key, uint32 key_len, const LockextLease *lease, int64 now_ns,
		void *arg)
{
	SaveState  *state = (SaveState *) arg;
	LeaseRecord record;

	record.dbid = dbid;
	record.key_len = key_len;
	record.lease = *lease;
	record.lease.expires_ns -= now_ns;	/* remaining */
	state->ok = state->ok && WriteAll(state->file, &record, sizeof(record), state->crc) &&
		WriteAll(state->file, key, key_len, state->crc);
	state->count++;
}

/*
 * Writes pg_lockext/leases (postmaster, clean shutdown, nothing else
 * attached): the live leases when save_leases, else an empty file flagged
 * "not saved"; always the durable record.
 */
bool
PersistSave(bool save_leases, const LockextDurableRecord *record)
{
	LeasesFileHeader header;
	LeasesFileTrailer trailer;
	pg_crc32c	crc;
	SaveState	state;
	FILE	   *file = fopen(LEASES_FILE_TMP, PG_BINARY_W);

	if (file == NULL)
		return false;
	memset(&header, 0, sizeof(header));
	header.start.magic = LEASES_FILE_MAGIC;
	header.start.version = LEASES_FILE_VERSION;
	header.start.pg_major = PG_VERSION_NUM / 100;
	header.start.flags = save_leases ? LEASES_FLAG_SAVED : 0;
	header.start.saved_at = GetCurrentTimestamp();
	header.start.lease_size = sizeof(LockextLease);
	(void) LockextBootId(header.boot_id);
	header.saved_boot_ns = LockextBootNowNanos();
	header.record = *record;
	INIT_CRC32C(crc);
	state.file = file;
	state.crc = &crc;
	state.count = 0;
	state.ok = WriteAll(file, &header, sizeof(header), &crc);
	if (save_leases)
		LockTableForEachLive(SaveOne, &state);
	trailer.count = state.count;
	COMP_CRC32C(crc, &trailer.count, sizeof(trailer.count));
	FIN_CRC32C(crc);
	trailer.crc = crc;
	state.ok = state.ok && fwrite(&trailer, 1, sizeof(trailer), file) == sizeof(trailer);
	state.ok = state.ok && fflush(file) == 0 && pg_fsync(fileno(file)) == 0;
	state.ok = (fclose(file) == 0) && state.ok;
	state.ok = state.ok && durable_rename(LEASES_FILE_TMP, LOCKEXT_LEASES_FILE, LOG) == 0;
	if (state.ok)
		ereport(LOG, (errmsg("lockext: saved %u live leases to \"%s\"", state.count,
							 LOCKEXT_LEASES_FILE)));
	return state.ok;
}

/* CRC of the first len bytes of file, read in chunks; false on a read error. */
static bool
StreamCrc(FILE *file, off_t len, pg_crc32c *crc)
{
	static char buffer[READ_CHUNK];

	if (fseeko(file, 0, SEEK_SET) != 0)
		return false;
	while (len > 0)
	{
		size_t		want = (size_t) Min((off_t) sizeof(buffer), len);

		if (fread(buffer, 1, want, file) != want)
			return false;
		COMP_CRC32C(*crc, buffer, want);
		len -= (off_t) want;
	}
	return true;
}

static void
Unreadable(const char *why)
{
	ereport(WARNING,
			(errmsg("lockext: ignoring unreadable lease file \"%s\": %s", LOCKEXT_LEASES_FILE, why),
			 errdetail("Grants wait for the grace period, since not every lease was restored.")));
}

/*
 * Checks the header and the CRC of the open lease file of size bytes; on
 * success *header holds the header (a 1.0 file's is widened, with no boot
 * id and no record) and *header_len its size on disk.
 */
static bool
CheckFile(FILE *file, off_t size, LeasesFileHeader *header, size_t *header_len,
		  LeasesFileTrailer *trailer)
{
	pg_crc32c	crc;

	memset(header, 0, sizeof(*header));
	if (size < (off_t) (sizeof(LeasesFileStart) + sizeof(LeasesFileTrailer)) ||
		fread(&header->start, 1, sizeof(header->start), file) != sizeof(header->start))
	{
		Unreadable("too short");
		return false;
	}
	if (header->start.magic != LEASES_FILE_MAGIC ||
		(header->start.version != 1 && header->start.version != LEASES_FILE_VERSION) ||
		header->start.pg_major != PG_VERSION_NUM / 100 ||
		header->start.lease_size != sizeof(LockextLease))
	{
		Unreadable("not a lease file of this lockext and PostgreSQL version");
		return false;
	}
	*header_len = header->start.version == 1 ? sizeof(LeasesFileStart) : sizeof(LeasesFileHeader);
	if (size < (off_t) (*header_len + sizeof(LeasesFileTrailer)) ||
		(header->start.version != 1 &&
		 fread((char *) header + sizeof(header->start), 1,
			   sizeof(*header) - sizeof(header->start), file) !=
			 sizeof(*header) - sizeof(header->start)))
	{
		Unreadable("too short");
		return false;
	}
	INIT_CRC32C(crc);
	if (!StreamCrc(file, size - (off_t) sizeof(*trailer), &crc) ||
		fread(trailer, 1, sizeof(*trailer), file) != sizeof(*trailer))
	{
		Unreadable("read error");
		return false;
	}
	COMP_CRC32C(crc, &trailer->count, sizeof(trailer->count));
	FIN_CRC32C(crc);
	if (!EQ_CRC32C(crc, trailer->crc))
	{
		Unreadable("checksum mismatch");
		return false;
	}
	return true;
}

/*
 * Restores the saved leases (when restore_leases) and reports what the
 * file said.  Remaining times shrink by the downtime on the boot clock and
 * are never extended.
 */
void
PersistRestore(bool restore_leases, LockextRestoreOutcome *outcome)
{
	struct stat st;
	FILE	   *file;
	LeasesFileHeader header;
	LeasesFileTrailer trailer;
	size_t		header_len;
	off_t		offset, body_end;
	char		boot_id[LOCKEXT_BOOT_ID_LEN];
	bool		same_boot;
	int64		now_ns, now_boot_ns;
	char	   *key;

	memset(outcome, 0, sizeof(*outcome));
	if (stat(LOCKEXT_LEASES_FILE, &st) != 0)
		return;
	outcome->present = true;
	if (!S_ISREG(st.st_mode) || (file = fopen(LOCKEXT_LEASES_FILE, PG_BINARY_R)) == NULL)
	{
		Unreadable("not a readable file");
		return;
	}
	if (!CheckFile(file, st.st_size, &header, &header_len, &trailer))
	{
		fclose(file);
		return;
	}
	outcome->readable = true;
	outcome->saved = (header.start.flags & LEASES_FLAG_SAVED) != 0;
	outcome->has_record = header.start.version != 1 && DurableRecordValid(&header.record);
	if (outcome->has_record)
		outcome->record = header.record;
	outcome->count = trailer.count;
	outcome->complete = outcome->saved && restore_leases;

	same_boot = header.start.version != 1 && LockextBootId(boot_id) &&
		memcmp(boot_id, header.boot_id, sizeof(boot_id)) == 0;
	now_ns = LockextNowNanos();
	now_boot_ns = LockextBootNowNanos();
	key = (char *) palloc(lockext_max_key_length + 1);
	offset = (off_t) header_len;
	body_end = st.st_size - (off_t) sizeof(trailer);
	if (outcome->saved && fseeko(file, offset, SEEK_SET) != 0)
		outcome->complete = false;
	while (outcome->saved && offset + (off_t) sizeof(LeaseRecord) <= body_end)
	{
		LeaseRecord record;
		int64		left;

		if (fread(&record, 1, sizeof(record), file) != sizeof(record) ||
			record.key_len > body_end - offset - (off_t) sizeof(record))
		{
			outcome->complete = false;
			break;
		}
		offset += (off_t) sizeof(record) + record.key_len;
		outcome->max_fence_counter = Max(outcome->max_fence_counter,
										 core::FenceCounterOf(record.lease.fence));
		if (!restore_leases || record.key_len == 0 ||
			record.key_len > (uint32) lockext_max_key_length)
		{
			/* not restored (a key too long for this server's slots makes it incomplete) */
			outcome->complete = false;
			if (fseeko(file, offset, SEEK_SET) != 0)
				break;
			continue;
		}
		if (fread(key, 1, record.key_len, file) != record.key_len)
		{
			outcome->complete = false;
			break;
		}
		left = core::RestoredRemainingNanos(record.lease.expires_ns, same_boot,
											header.saved_boot_ns, now_boot_ns);
		if (left <= 0)
		{
			outcome->expired++;
			continue;
		}
		record.lease.expires_ns = now_ns + left;
		if (LockTableRestore(record.dbid, key, record.key_len, &record.lease))
		{
			outcome->restored++;
			outcome->ttl_ceiling_ms = Max(outcome->ttl_ceiling_ms, (int64) record.lease.ttl_ms);
		}
		else
			outcome->complete = false;
	}
	pfree(key);
	fclose(file);
	if (outcome->restored + outcome->expired != trailer.count)
		outcome->complete = false;
	if (outcome->saved)
		ereport(LOG,
				(errmsg("lockext: restored %u of %u saved leases (%u expired during the downtime%s)",
						outcome->restored, trailer.count, outcome->expired,
						same_boot ? "" : "; downtime not measurable across a host reboot, "
						"so nothing was subtracted")));
}

void
PersistRemoveLeaseFile(void)
{
	if (unlink(LOCKEXT_LEASES_FILE) != 0 && errno != ENOENT)
		ereport(WARNING, (errmsg("lockext: could not remove \"%s\": %m", LOCKEXT_LEASES_FILE)));
	else
		fsync_fname_ext(LOCKEXT_DIR, true, false, LOG);
}
