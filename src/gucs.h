/*-------------------------------------------------------------------------
 *
 * gucs.h
 *	  The lockext.* settings.
 *
 * Interface:
 *	GucsDefine()		defines every setting and reserves the prefix (_PG_init)
 *	lockext_*			the current values, read by the modules that use them
 *
 * Locking protocol: none.  PGC_SIGHUP values change between statements
 * when a backend processes a reload; a value that must not change under a
 * running period (the length of a grace period) is copied when it starts.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_GUCS_H
#define LOCKEXT_GUCS_H

extern int	lockext_max_locks;			/* PGC_POSTMASTER */
extern int	lockext_max_key_length;		/* PGC_POSTMASTER */
extern int	lockext_max_ttl_ms;			/* PGC_SIGHUP */
extern int	lockext_recovery_grace_ms;	/* PGC_SIGHUP; -1 = cover every granted TTL */
extern bool lockext_save;				/* PGC_SIGHUP */
extern bool lockext_enable_test_hooks;	/* PGC_POSTMASTER */
extern int	lockext_max_wait_ms;		/* PGC_SIGHUP: bound of try_lock(key, ttl, wait_ms) */
extern int	lockext_max_waiters;		/* PGC_SIGHUP: backends waiting at once */
extern bool lockext_handle_scan;		/* PGC_USERSET: plan FROM try_lock() as a handle scan */
extern int	lockext_replication;		/* PGC_SIGHUP: LockextReplicationMode (replication.h) */
extern int	lockext_promotion_grace_ms;	/* PGC_SIGHUP; -1 = lockext.recovery_grace_ms */

extern void GucsDefine(void);

#endif							/* LOCKEXT_GUCS_H */
