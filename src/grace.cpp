/*-------------------------------------------------------------------------
 *
 * grace.cpp
 *	  The grace period (see grace.h).
 *
 *-------------------------------------------------------------------------
 */
#include "core/lease_rules.hpp"

extern "C"
{
#include "postgres.h"

#include "port/atomics.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include "clock.h"
#include "durable.h"
#include "grace.h"
#include "gucs.h"
#include "replication.h"
}

namespace core = lockext::core;

typedef struct GraceShared
{
	pg_atomic_uint64 until_ns;	/* lease clock: grants are refused before this */
	pg_atomic_uint32 pending;	/* promotion grace not armed yet: refuse everything */
	pg_atomic_uint32 settle;	/* crash grace in force until redo's outcome is known */
	pg_atomic_uint64 refused;	/* grants refused during grace periods */
	slock_t		mutex;			/* protects the fields below */
	int			reason;			/* LockextGraceReason of the last grace period */
	int64		length_ms;
	bool		arming;			/* a process is arming the promotion grace */
	int64		promotion_ceiling_ms;	/* TTL ceiling known when recovery began */
	int			settle_reason;	/* the crash grace that redo may shorten */
	int64		settle_floor_ns;	/* a grace continued from before: redo never shortens it */
	int64		settle_ceiling_ms;
} GraceShared;

static GraceShared *grace = NULL;

Size
GraceShmemSize(void)
{
	return MAXALIGN(sizeof(GraceShared));
}

void
GraceShmemInit(void)
{
	bool		found;

	grace = (GraceShared *) ShmemInitStruct("lockext grace", sizeof(GraceShared), &found);
	if (!found)
	{
		pg_atomic_init_u64(&grace->until_ns, 0);
		pg_atomic_init_u32(&grace->pending, 0);
		pg_atomic_init_u32(&grace->settle, 0);
		pg_atomic_init_u64(&grace->refused, 0);
		SpinLockInit(&grace->mutex);
		grace->reason = LOCKEXT_GRACE_NONE;
		grace->length_ms = 0;
		grace->arming = false;
		grace->promotion_ceiling_ms = 0;
		grace->settle_reason = LOCKEXT_GRACE_NONE;
		grace->settle_floor_ns = 0;
		grace->settle_ceiling_ms = 0;
	}
}

const char *
GraceReasonText(int reason)
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

/*
 * Puts a grace period of length_ms ending at until_ns (lease clock) in
 * force: durably first (a failure to write is logged and the grace applies
 * all the same), then for the grant path.  Never shortens a grace in force.
 */
static void
Publish(LockextGraceReason reason, int64 length_ms, int64 until_ns)
{
	int64		current = (int64) pg_atomic_read_u64(&grace->until_ns);

	if (current > until_ns)
	{
		until_ns = current;
		SpinLockAcquire(&grace->mutex);
		length_ms = Max(length_ms, grace->length_ms);
		SpinLockRelease(&grace->mutex);
	}
	if (!DurableSetGrace(reason, length_ms, LockextLeaseToBootNanos(until_ns)))
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("lockext could not record the grace period in \"%s\": %m", DurableFailedPath()),
				 errdetail("The grace period applies, but a restart may not continue it.")));
	SpinLockAcquire(&grace->mutex);
	grace->reason = reason;
	grace->length_ms = length_ms;
	SpinLockRelease(&grace->mutex);
	pg_atomic_write_u64(&grace->until_ns, (uint64) until_ns);
	ereport(LOG,
			(errmsg("lockext: no lease will be granted for %lld ms (%s)",
					(long long) ((until_ns - LockextNowNanos()) / core::kNanosPerMilli),
					GraceReasonText(reason))));
}

/* Startup: a grace period recorded by an earlier run goes on until its deadline. */
void
GraceRecover(const LockextDurableRecord *record)
{
	char		boot_id[LOCKEXT_BOOT_ID_LEN];
	bool		same_boot;
	int64		left_ns;

	if (record == NULL || record->grace_reason == LOCKEXT_GRACE_NONE)
		return;
	same_boot = LockextBootId(boot_id) && record->boot_id[0] != '\0' &&
		memcmp(boot_id, record->boot_id, sizeof(boot_id)) == 0;
	left_ns = core::GraceLeftNanos(record->grace_until_boot_ns,
								   record->grace_length_ms * core::kNanosPerMilli, same_boot,
								   LockextBootNowNanos());
	if (left_ns > 0)
		Publish((LockextGraceReason) record->grace_reason, record->grace_length_ms,
				LockextNowNanos() + left_ns);
}

static int64
LengthMillis(int64 ttl_ceiling_ms)
{
	return core::GraceLengthMillis(lockext_recovery_grace_ms, lockext_max_ttl_ms, ttl_ceiling_ms);
}

static void
StartLength(LockextGraceReason reason, int64 length_ms)
{
	if (length_ms <= 0)
		return;
	Publish(reason, length_ms, core::ExpiryNanos(LockextNowNanos(), length_ms));
}

/* Starts a grace period of the configured length from now (or extends the one in force). */
void
GraceStart(LockextGraceReason reason, int64 ttl_ceiling_ms)
{
	StartLength(reason, LengthMillis(ttl_ceiling_ms));
}

/*
 * Startup after a crash or an unclean shutdown: the full grace starts now,
 * and once recovery is over GraceOnRecoveryFinished() shortens it if redo
 * restored every lease (replication.h), never below a grace continued
 * from an earlier run.
 */
void
GraceStartAfterCrash(LockextGraceReason reason, int64 ttl_ceiling_ms)
{
	int64		floor_ns = (int64) pg_atomic_read_u64(&grace->until_ns);

	GraceStart(reason, ttl_ceiling_ms);
	if ((int64) pg_atomic_read_u64(&grace->until_ns) <= floor_ns)
		return;
	SpinLockAcquire(&grace->mutex);
	grace->settle_reason = reason;
	grace->settle_floor_ns = floor_ns;
	grace->settle_ceiling_ms = ttl_ceiling_ms;
	SpinLockRelease(&grace->mutex);
	pg_atomic_write_u32(&grace->settle, 1);
}

/*
 * Redo restored every lease: the crash grace ends at until_ns instead
 * (durably first, as Publish).  The only place a grace is shortened.
 */
static void
Shorten(int reason, int64 until_ns)
{
	int64		now_ns = LockextNowNanos();
	int64		length_ms = Max((until_ns - now_ns) / core::kNanosPerMilli, (int64) 0);
	bool		ends = until_ns <= now_ns;

	if (!DurableSetGrace(ends ? LOCKEXT_GRACE_NONE : reason, ends ? 0 : length_ms,
						 ends ? 0 : LockextLeaseToBootNanos(until_ns)))
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("lockext could not record the grace period in \"%s\": %m", DurableFailedPath()),
				 errdetail("The full grace period after the crash applies.")));
		return;
	}
	SpinLockAcquire(&grace->mutex);
	grace->length_ms = length_ms;
	if (ends)
		grace->reason = LOCKEXT_GRACE_NONE;	/* lockext_grace(): none applied */
	SpinLockRelease(&grace->mutex);
	pg_atomic_write_u64(&grace->until_ns, ends ? 0 : (uint64) until_ns);
	ereport(LOG,
			(errmsg(ends ? "lockext: every lease was restored from WAL; no grace period after the %s"
					: "lockext: every lease was restored from WAL; the grace period after the %s ends in %lld ms",
					GraceReasonText(reason), (long long) length_ms),
			 ends ? errdetail("lockext.replication was sync for longer than the longest TTL before the crash.")
			 : errdetail("lockext.replication became sync less than the longest TTL before the crash: leases granted before that may still be held until then.")));
}

/* After crash recovery: shorten the crash grace if redo restored every lease. */
static void
Settle(void)
{
	int			reason;
	int64		floor_ns;
	int64		ceiling_ms;
	int64		until_ns;
	const char *why_not = NULL;

	SpinLockAcquire(&grace->mutex);
	reason = grace->settle_reason;
	floor_ns = grace->settle_floor_ns;
	ceiling_ms = grace->settle_ceiling_ms;
	SpinLockRelease(&grace->mutex);

	ReplicationOnRecoveryFinished();
	if (ReplicationRedoRestoredEveryLease(ceiling_ms, &until_ns, &why_not))
	{
		until_ns = Max(until_ns, floor_ns);
		if (until_ns < (int64) pg_atomic_read_u64(&grace->until_ns))
			Shorten(reason, until_ns);
	}
	else if (why_not != NULL)
		ereport(LOG, (errmsg("lockext: the grace period after the %s applies in full: %s",
							 GraceReasonText(reason), why_not)));
}

/* Startup of a server in recovery: from the end of recovery, refuse until armed. */
void
GraceArmPromotion(int64 ttl_ceiling_ms)
{
	SpinLockAcquire(&grace->mutex);
	grace->promotion_ceiling_ms = ttl_ceiling_ms;
	SpinLockRelease(&grace->mutex);
	pg_atomic_write_u32(&grace->pending, 1);
}

/*
 * The promotion grace: lockext.promotion_grace_ms if the replayed table is
 * complete and it is set, the full grace otherwise.  It covers the TTLs of
 * replayed leases too.
 */
int64
GracePromotionLengthMillis(bool table_complete)
{
	int64		ceiling;

	if (lockext_promotion_grace_ms >= 0 && table_complete)
		return lockext_promotion_grace_ms;
	SpinLockAcquire(&grace->mutex);
	ceiling = grace->promotion_ceiling_ms;
	SpinLockRelease(&grace->mutex);
	return LengthMillis(Max(ceiling, ReplicationReplayedCeilingMs()));
}

static void
ArmPromotion(int64 ceiling)
{
	int64		length_ms;

	ceiling = Max(ceiling, ReplicationReplayedCeilingMs());
	ReplicationOnRecoveryFinished();
	length_ms = LengthMillis(ceiling);
	if (lockext_promotion_grace_ms >= 0)
	{
		if (ReplicationTableComplete())
			length_ms = lockext_promotion_grace_ms;
		else
			ereport(LOG,
					(errmsg("lockext: the promotion applies the full grace period of %lld ms, not lockext.promotion_grace_ms",
							(long long) length_ms),
					 errdetail("This server had not replayed a complete snapshot of the lease table.")));
	}
	StartLength(LOCKEXT_GRACE_PROMOTION, length_ms);
	if (length_ms <= 0)
	{
		int			reason;
		int64		length;
		int64		until_boot_ns;

		/* no grace: the record still says that the promotion owes none now */
		GraceRecordFields(&reason, &length, &until_boot_ns);
		if (!DurableSetGrace(reason, length, until_boot_ns))
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("lockext could not record the end of the promotion in \"%s\": %m", DurableFailedPath()),
					 errdetail("A restart before the next successful write applies the full promotion grace period.")));
		ereport(LOG, (errmsg("lockext: promoted with every replicated lease kept and no grace period")));
	}
}

/*
 * Arms the promotion grace once recovery has ended (the grace starts now),
 * or settles the grace after crash recovery.  Called by lockext's worker,
 * which the postmaster starts as soon as recovery has finished, and by any
 * lease call that still finds either pending.
 */
void
GraceOnRecoveryFinished(void)
{
	int64		ceiling;
	bool		promotion;

	if (likely(pg_atomic_read_u32(&grace->pending) == 0 && pg_atomic_read_u32(&grace->settle) == 0))
		return;
	SpinLockAcquire(&grace->mutex);
	promotion = pg_atomic_read_u32(&grace->pending) != 0;
	if (grace->arming || (!promotion && pg_atomic_read_u32(&grace->settle) == 0))
	{
		SpinLockRelease(&grace->mutex);
		return;
	}
	grace->arming = true;
	ceiling = grace->promotion_ceiling_ms;
	SpinLockRelease(&grace->mutex);

	if (promotion)
		ArmPromotion(ceiling);
	else
		Settle();

	/* the deadline is published; only now may grants see pending == 0 */
	pg_write_barrier();
	pg_atomic_write_u32(&grace->pending, 0);
	pg_atomic_write_u32(&grace->settle, 0);
	SpinLockAcquire(&grace->mutex);
	grace->arming = false;
	SpinLockRelease(&grace->mutex);
}

bool
GraceRefusing(int64 now_ns)
{
	if (unlikely(pg_atomic_read_u32(&grace->pending) != 0))
		return true;
	pg_read_barrier();
	return (uint64) now_ns < pg_atomic_read_u64(&grace->until_ns);
}

/*
 * The lease-clock time a grace in force ends; PG_INT64_MAX while a
 * promotion grace is pending (it ends later than any deadline known now).
 * No lock, no I/O.
 */
int64
GraceRefusalEndsNanos(void)
{
	uint64		until;

	if (pg_atomic_read_u32(&grace->pending) != 0)
		return PG_INT64_MAX;
	pg_read_barrier();
	until = pg_atomic_read_u64(&grace->until_ns);
	return until > (uint64) PG_INT64_MAX ? PG_INT64_MAX : (int64) until;
}

void
GraceNoteRefusal(void)
{
	pg_atomic_fetch_add_u64(&grace->refused, 1);
}

/* lockext_grace_end(): true if a grace period was in force (or pending). */
bool
GraceEnd(void)
{
	bool		was_active = pg_atomic_read_u32(&grace->pending) != 0 ||
		(uint64) LockextNowNanos() < pg_atomic_read_u64(&grace->until_ns);

	pg_atomic_write_u64(&grace->until_ns, 0);
	pg_write_barrier();
	pg_atomic_write_u32(&grace->pending, 0);
	pg_atomic_write_u32(&grace->settle, 0);
	if (!DurableSetGrace(LOCKEXT_GRACE_NONE, 0, 0))
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("lockext could not record the end of the grace period in \"%s\": %m",
						DurableFailedPath()),
				 errdetail("A restart may continue the grace period until its deadline.")));
	if (was_active)
		ereport(LOG, (errmsg("lockext: grace period ended by lockext_grace_end()")));
	return was_active;
}

void
GraceGetStatus(LockextGraceStatus *status, bool in_recovery)
{
	int64		now_ns = LockextNowNanos();

	/* a standby grants nothing anyway: its pending grace starts at promotion */
	status->pending = !in_recovery && pg_atomic_read_u32(&grace->pending) != 0;
	pg_read_barrier();
	status->remaining_ms = core::RemainingMillis((int64) pg_atomic_read_u64(&grace->until_ns), now_ns);
	status->active = status->pending || status->remaining_ms > 0;
	status->refused = pg_atomic_read_u64(&grace->refused);
	SpinLockAcquire(&grace->mutex);
	status->reason = status->pending ? LOCKEXT_GRACE_PROMOTION : grace->reason;
	SpinLockRelease(&grace->mutex);
}

/* The grace period in force, as the durable record stores it (none once it has ended). */
void
GraceRecordFields(int *reason, int64 *length_ms, int64 *until_boot_ns)
{
	int64		until_ns = (int64) pg_atomic_read_u64(&grace->until_ns);

	*reason = LOCKEXT_GRACE_NONE;
	*length_ms = 0;
	*until_boot_ns = 0;
	if (until_ns <= LockextNowNanos())
		return;
	SpinLockAcquire(&grace->mutex);
	*reason = grace->reason;
	*length_ms = grace->length_ms;
	SpinLockRelease(&grace->mutex);
	*until_boot_ns = LockextLeaseToBootNanos(until_ns);
}
