/*-------------------------------------------------------------------------
 *
 * clock.h
 *	  The clocks lockext measures time with.
 *
 *	- The lease clock, LockextNowNanos(): CLOCK_MONOTONIC, which wall-clock
 *	  steps do not move.  Every expiry and grace deadline inside one run of
 *	  the server is on this clock.  With lockext.enable_test_hooks it can be
 *	  frozen and advanced by hand (the lockext_test_clock_* functions).
 *	- The boot clock, LockextBootNowNanos(): CLOCK_BOOTTIME, which keeps
 *	  counting while the host is suspended and, like the monotonic clock,
 *	  never steps.  Durable deadlines and downtime across restarts are on
 *	  this clock, together with the boot id (LockextBootId) that says
 *	  whether two readings come from the same boot of the host.
 *	- The wall clock (GetCurrentTimestamp) is for display only.
 *
 * Interface:
 *	ClockShmemSize(), ClockShmemInit()	the test clock's shared state
 *	LockextNowNanos(), LockextRealNowNanos(), LockextBootNowNanos()
 *	LockextLeaseToBootNanos(ns)		a lease-clock instant on the boot clock
 *	LockextBootId(out)				this boot's id (false if unknown)
 *	ClockTestFreeze/Advance/Release	the test hooks
 *
 * Locking protocol: the test clock is three pg_atomic variables, written
 * only by the (superuser-only) test hooks.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_CLOCK_H
#define LOCKEXT_CLOCK_H

#define LOCKEXT_BOOT_ID_LEN 40	/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" + NUL, padded */

extern Size ClockShmemSize(void);
extern void ClockShmemInit(void);

extern int64 LockextNowNanos(void);
extern int64 LockextRealNowNanos(void);
extern int64 LockextBootNowNanos(void);
extern int64 LockextLeaseToBootNanos(int64 lease_ns);
extern bool LockextBootId(char out[LOCKEXT_BOOT_ID_LEN]);

extern void ClockTestFreeze(void);
extern bool ClockTestAdvance(int64 ms);
extern void ClockTestRelease(void);

#endif							/* LOCKEXT_CLOCK_H */
