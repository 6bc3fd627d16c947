/*-------------------------------------------------------------------------
 *
 * grace.h
 *	  The grace period: after anything that may have forgotten a lease an
 *	  earlier holder still believes it owns, no key is granted until every
 *	  such lease has run out (spec §3.8).  This module is its only owner:
 *	  start, arming at promotion, the check in the grant path, the status
 *	  row, the end, and its persistence (through the durable record).
 *
 * Rules:
 *	- Started by the startup orchestration (crash restart, unclean start,
 *	  start that did not restore every lease) and at promotion.  Its length
 *	  is fixed when it starts (core::GraceLengthMillis); a reload does not
 *	  change or end it.  A new grace never shortens one in force.
 *	- Durable: its deadline is in the durable record (boot clock and boot
 *	  id), so a clean restart, an immediate stop, a crash or a promotion
 *	  during a grace continues it; after a host reboot it starts again.
 *	- Promotion: a server that starts in recovery is "pending": it refuses
 *	  every grant from the moment recovery ends until the grace is armed.
 *	  lockext's worker (worker.h), which the postmaster starts as soon as
 *	  recovery has finished, arms it; a backend that finds it still pending
 *	  after recovery arms it itself.  The deadline is published before the
 *	  pending flag is cleared, so no grant slips in between.
 *	- Promotion grace: lockext.promotion_grace_ms (if set) when the
 *	  replayed lease table is complete, the full length otherwise.
 *	- After a crash restart or an unclean shutdown the full grace starts at
 *	  once; when recovery is over it is shortened if redo restored every
 *	  lease (a complete snapshot replayed, lockext.replication = sync for
 *	  longer than the TTL ceiling), never below a grace continued from an
 *	  earlier run.  That is the only way a grace gets shorter.
 *	- Otherwise only its deadline or lockext_grace_end() ends a grace.
 *
 * Interface:
 *	GraceShmemSize(), GraceShmemInit()
 *	GraceRecover(record)		continue a grace found in the durable record (startup)
 *	GraceStart(reason, ceiling)	start (or extend) a grace of the default length
 *	GraceStartAfterCrash()		the same, which redo may shorten (replication.h)
 *	GraceArmPromotion(ceiling)	the server starts in recovery (startup)
 *	GraceOnRecoveryFinished()	arm a pending promotion grace, or settle the
 *								crash grace after redo (worker, backends)
 *	GraceRefusing(now_ns)		the grant path's check; no lock, no I/O
 *	GraceRefusalEndsNanos()		until when (lease clock) a waiter sleeps through a grace
 *	GraceNoteRefusal()			count a refused grant
 *	GraceEnd()					lockext_grace_end()
 *	GraceGetStatus()			lockext_grace()
 *	GraceReasonText()
 *	GracePromotionLengthMillis()	the grace a promotion would apply now
 *
 * Locking protocol: the deadline, the pending flag and the refusal count
 * are pg_atomic; the reason and length are protected by the spinlock.
 * Starting, arming and ending serialise on the durable lock inside
 * DurableSetGrace() and on the "arming" flag under the spinlock.  Nothing
 * here is called while a partition lock is held except GraceRefusing() and
 * GraceNoteRefusal(), which only read and add atomics.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_GRACE_H
#define LOCKEXT_GRACE_H

#include "durable.h"

typedef enum LockextGraceReason
{
	LOCKEXT_GRACE_NONE = 0,
	LOCKEXT_GRACE_CRASH_RESTART,		/* shared memory reinitialised after a crash */
	LOCKEXT_GRACE_UNCLEAN_SHUTDOWN,	/* previous run did not shut down cleanly */
	LOCKEXT_GRACE_NOT_SAVED,			/* clean shutdown with lockext.save = off */
	LOCKEXT_GRACE_NOT_RESTORED,		/* saved leases not (all) restored */
	LOCKEXT_GRACE_PROMOTION,			/* the server left recovery */
} LockextGraceReason;

typedef struct LockextGraceStatus
{
	bool		active;
	bool		pending;		/* promotion grace not armed yet (refusing) */
	int			reason;
	int64		remaining_ms;
	uint64		refused;
} LockextGraceStatus;

extern Size GraceShmemSize(void);
extern void GraceShmemInit(void);
extern void GraceRecover(const LockextDurableRecord *record);
extern void GraceStart(LockextGraceReason reason, int64 ttl_ceiling_ms);
extern void GraceStartAfterCrash(LockextGraceReason reason, int64 ttl_ceiling_ms);
extern void GraceArmPromotion(int64 ttl_ceiling_ms);
extern void GraceOnRecoveryFinished(void);
extern bool GraceRefusing(int64 now_ns);
extern int64 GraceRefusalEndsNanos(void);
extern void GraceNoteRefusal(void);
extern bool GraceEnd(void);
extern void GraceGetStatus(LockextGraceStatus *status, bool in_recovery);
extern void GraceRecordFields(int *reason, int64 *length_ms, int64 *until_boot_ns);
extern const char *GraceReasonText(int reason);
extern int64 GracePromotionLengthMillis(bool table_complete);

#endif							/* LOCKEXT_GRACE_H */
