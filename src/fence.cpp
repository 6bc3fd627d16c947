/*-------------------------------------------------------------------------
 *
 * fence.cpp
 *	  Fencing tokens that never go backwards for the life of the cluster.
 *
 * fence = WAL timeline << 44 | counter (core::ComposeFence).  The counter
 * is handed out from shared memory, but only below fence_reserved, a bound
 * written durably to pg_lockext/fence (temporary file, fsync, rename) one
 * block of 65536 counters ahead.  After any restart, clean or crash, the
 * counter resumes at the durable bound, so it never returns to a value
 * that may have been handed out; after a promotion the new timeline is
 * higher, so every fence of the new primary is above every fence the old
 * primary granted, even with asynchronous replication and even if the old
 * primary still runs.  Cost: one small write and fsync per 65536 grants,
 * no WAL.
 *
 * Locking protocol: fence_counter and fence_reserved are pg_atomic.  A
 * backend whose counter passes fence_reserved takes the fence lock
 * EXCLUSIVE (while holding its partition lock: partition locks come first),
 * extends the reservation and releases it.  Nothing here ereports; I/O
 * failures come back as LOCKEXT_FENCE_IO_ERROR with errno set.
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
#include "common/file_perm.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "utils/timestamp.h"

#include "lockext/lockext.h"
}

#include "lockext/core/lease_rules.hpp"

namespace core = lockext::core;

#define FENCE_FILE LOCKEXT_DIR "/fence"
#define FENCE_FILE_TMP LOCKEXT_DIR "/fence.tmp"
#define FENCE_FILE_MAGIC 0x4C584643	/* "LXFC" */
#define FENCE_FILE_VERSION 1

typedef struct LockextFenceFile
{
	uint32		magic;
	uint32		version;
	uint64		reserved;
	pg_crc32c	crc;			/* of the fields above */
} LockextFenceFile;

static pg_crc32c
FenceFileCrc(const LockextFenceFile *file)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, file, offsetof(LockextFenceFile, crc));
	FIN_CRC32C(crc);
	return crc;
}

/* Writes the reservation durably; false with errno set on failure. */
static bool
WriteFenceFile(uint64 reserved)
{
	LockextFenceFile file;
	int			fd;
	int			saved_errno;

	memset(&file, 0, sizeof(file));
	file.magic = FENCE_FILE_MAGIC;
	file.version = FENCE_FILE_VERSION;
	file.reserved = reserved;
	file.crc = FenceFileCrc(&file);

	fd = open(FENCE_FILE_TMP, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);
	if (fd < 0)
		return false;
	if (write(fd, &file, sizeof(file)) != (ssize_t) sizeof(file))
	{
		saved_errno = errno ? errno : ENOSPC;
		close(fd);
		errno = saved_errno;
		return false;
	}
	if (pg_fsync(fd) != 0)
	{
		saved_errno = errno;
		close(fd);
		errno = saved_errno;
		return false;
	}
	if (close(fd) != 0)
		return false;
	return durable_rename(FENCE_FILE_TMP, FENCE_FILE, LOG) == 0;
}

/*
 * Hands out the next fence.  Caller holds the key's partition lock
 * EXCLUSIVE, so fences of one key increase in grant order.
 */
LockextFenceStatus
LockextNextFence(int64 *fence)
{
	uint64		counter = pg_atomic_add_fetch_u64(&lockext_state->fence_counter, 1);

	if (counter > pg_atomic_read_u64(&lockext_state->fence_reserved))
	{
		LWLock	   *lock = LockextFenceLock();
		uint64		reserved;

		LWLockAcquire(lock, LW_EXCLUSIVE);
		reserved = pg_atomic_read_u64(&lockext_state->fence_reserved);
		if (counter > reserved && counter < core::kFenceCounterLimit)
		{
			uint64		target = core::NextReservation(reserved, counter);

			if (!WriteFenceFile(target))
			{
				int			saved_errno = errno;

				LWLockRelease(lock);
				errno = saved_errno;
				return LOCKEXT_FENCE_IO_ERROR;
			}
			pg_atomic_write_u64(&lockext_state->fence_reserved, target);
		}
		LWLockRelease(lock);
	}

	if (!core::ComposeFence(GetWALInsertionTimeLine(), counter, fence))
		return LOCKEXT_FENCE_COUNTER_EXHAUSTED;
	return LOCKEXT_FENCE_OK;
}

/*
 * At shared-memory initialisation (postmaster): resume the counter at the
 * durable reservation.  A missing file on a cluster that ran lockext
 * before, or an unreadable one, falls back to a floor derived from the wall
 * clock (4 counters per millisecond since 2000), which is above any counter
 * a cluster could have reached at a lower average grant rate.
 */
void
LockextLoadFenceCounter(void)
{
	LockextFenceFile file;
	uint64		resume = 0;
	int			fd = open(FENCE_FILE, O_RDONLY | PG_BINARY, 0);
	bool		ok = false;

	if (fd >= 0)
	{
		ok = read(fd, &file, sizeof(file)) == (ssize_t) sizeof(file) &&
			file.magic == FENCE_FILE_MAGIC && file.version == FENCE_FILE_VERSION &&
			EQ_CRC32C(file.crc, FenceFileCrc(&file));
		close(fd);
		if (ok)
			resume = file.reserved;
		else
			ereport(WARNING,
					(errmsg("lockext fence file \"%s\" is unreadable; fences resume from a clock-based floor",
							FENCE_FILE)));
	}
	if (!ok && access(LOCKEXT_MARKER_FILE, F_OK) == 0)
	{
		uint64		floor = (uint64) Max(GetCurrentTimestamp() / 1000, 0) * 4;

		if (fd < 0)
			ereport(WARNING,
					(errmsg("lockext fence file \"%s\" is missing; fences resume from a clock-based floor",
							FENCE_FILE)));
		resume = Max(resume, floor);
	}
	pg_atomic_write_u64(&lockext_state->fence_counter, resume);
	pg_atomic_write_u64(&lockext_state->fence_reserved, resume);
}

/* Test hook support: the counter only moves up. */
void
LockextRaiseCounterTo(uint64 counter)
{
	uint64		current = pg_atomic_read_u64(&lockext_state->fence_counter);

	while (current < counter &&
		   !pg_atomic_compare_exchange_u64(&lockext_state->fence_counter, &current, counter))
		;
}
