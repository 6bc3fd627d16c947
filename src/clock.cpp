/*-------------------------------------------------------------------------
 *
 * clock.cpp
 *	  The lease clock, the boot clock, the boot id, and the frozen test
 *	  clock (see clock.h).
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "port/atomics.h"
#include "storage/shmem.h"

#include "clock.h"
#include "gucs.h"
}

typedef struct ClockSharedState
{
	pg_atomic_uint32 frozen;		/* test hook: the lease clock is stopped */
	pg_atomic_uint64 frozen_now_ns; /* the stopped clock's value */
	pg_atomic_uint64 offset_ns;		/* added to the real clock after a release, so
									 * that the test clock never moves backwards */
} ClockSharedState;

static ClockSharedState *clock_state = NULL;

Size
ClockShmemSize(void)
{
	return MAXALIGN(sizeof(ClockSharedState));
}

void
ClockShmemInit(void)
{
	bool		found;

	clock_state = (ClockSharedState *) ShmemInitStruct("lockext clock", sizeof(ClockSharedState),
													   &found);
	if (!found)
	{
		pg_atomic_init_u32(&clock_state->frozen, 0);
		pg_atomic_init_u64(&clock_state->frozen_now_ns, 0);
		pg_atomic_init_u64(&clock_state->offset_ns, 0);
	}
}

static int64
ReadClock(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (int64) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64
LockextRealNowNanos(void)
{
	return ReadClock(CLOCK_MONOTONIC);
}

int64
LockextBootNowNanos(void)
{
	return ReadClock(CLOCK_BOOTTIME);
}

/*
 * The lease clock.  Without test hooks this is CLOCK_MONOTONIC; with them
 * the clock can be frozen and advanced, and after release runs on from where
 * it stood (real clock plus an offset), so it never goes backwards.
 */
int64
LockextNowNanos(void)
{
	if (likely(!lockext_enable_test_hooks))
		return LockextRealNowNanos();
	if (pg_atomic_read_u32(&clock_state->frozen))
		return (int64) pg_atomic_read_u64(&clock_state->frozen_now_ns);
	return LockextRealNowNanos() + (int64) pg_atomic_read_u64(&clock_state->offset_ns);
}

/* The boot-clock instant that lies as far from now as lease_ns does on the lease clock. */
int64
LockextLeaseToBootNanos(int64 lease_ns)
{
	return LockextBootNowNanos() + (lease_ns - LockextNowNanos());
}

/* This boot's id from /proc/sys/kernel/random/boot_id; false if it cannot be read. */
bool
LockextBootId(char out[LOCKEXT_BOOT_ID_LEN])
{
	int			fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY);
	ssize_t		n;

	memset(out, 0, LOCKEXT_BOOT_ID_LEN);
	if (fd < 0)
		return false;
	n = read(fd, out, LOCKEXT_BOOT_ID_LEN - 1);
	close(fd);
	if (n < 36)
	{
		memset(out, 0, LOCKEXT_BOOT_ID_LEN);
		return false;
	}
	out[36] = '\0';
	memset(out + 36, 0, LOCKEXT_BOOT_ID_LEN - 36);
	return true;
}

void
ClockTestFreeze(void)
{
	if (!pg_atomic_read_u32(&clock_state->frozen))
	{
		pg_atomic_write_u64(&clock_state->frozen_now_ns, (uint64) LockextNowNanos());
		pg_atomic_write_u32(&clock_state->frozen, 1);
	}
}

/* False if the clock is not frozen. */
bool
ClockTestAdvance(int64 ms)
{
	if (!pg_atomic_read_u32(&clock_state->frozen))
		return false;
	pg_atomic_fetch_add_u64(&clock_state->frozen_now_ns, (uint64) (ms * INT64CONST(1000000)));
	return true;
}

void
ClockTestRelease(void)
{
	if (pg_atomic_read_u32(&clock_state->frozen))
	{
		int64		frozen = (int64) pg_atomic_read_u64(&clock_state->frozen_now_ns);
		int64		offset = frozen - LockextRealNowNanos();

		pg_atomic_write_u64(&clock_state->offset_ns, (uint64) Max(offset, 0));
		pg_atomic_write_u32(&clock_state->frozen, 0);
	}
}
