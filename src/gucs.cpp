/*-------------------------------------------------------------------------
 *
 * gucs.cpp
 *	  The lockext.* settings (see gucs.h and the README's Configuration).
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include <limits.h>

#include "postmaster/postmaster.h"
#include "utils/guc.h"

#include "gucs.h"
#include "replication.h"
}

int			lockext_max_locks = 10000;
int			lockext_max_key_length = 256;
int			lockext_max_ttl_ms = 300000;
int			lockext_recovery_grace_ms = -1;
bool		lockext_save = true;
bool		lockext_enable_test_hooks = false;
int			lockext_max_wait_ms = 60000;
int			lockext_max_waiters = 100;
bool		lockext_handle_scan = true;
int			lockext_replication = LOCKEXT_REPLICATION_OFF;
int			lockext_promotion_grace_ms = -1;

static const struct config_enum_entry replication_options[] = {
	{"off", LOCKEXT_REPLICATION_OFF, false},
	{"async", LOCKEXT_REPLICATION_ASYNC, false},
	{"sync", LOCKEXT_REPLICATION_SYNC, false},
	{NULL, 0, false}
};

void
GucsDefine(void)
{
	DefineCustomIntVariable("lockext.max_locks",
							gettext_noop("Maximum number of leases held at once, all databases together."),
							gettext_noop("Each slot costs lockext.max_key_length plus about 128 bytes of shared memory."),
							&lockext_max_locks, 10000, 1, 10000000, PGC_POSTMASTER, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("lockext.max_key_length",
							gettext_noop("Longest lock key accepted, in bytes."),
							NULL, &lockext_max_key_length, 256, 1, 8192, PGC_POSTMASTER, 0, NULL,
							NULL, NULL);

	DefineCustomIntVariable("lockext.max_ttl_ms",
							gettext_noop("Longest TTL a grant or renewal may ask for."),
							NULL, &lockext_max_ttl_ms, 300000, 1, INT_MAX, PGC_SIGHUP,
							GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomIntVariable("lockext.recovery_grace_ms",
							gettext_noop("Time after a crash restart or promotion during which no lease is granted."),
							gettext_noop("-1 covers the longest TTL granted before (at least lockext.max_ttl_ms)."),
							&lockext_recovery_grace_ms, -1, -1, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("lockext.save",
							 gettext_noop("Save live leases at clean shutdown and restore them at start."),
							 NULL, &lockext_save, true, PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomBoolVariable("lockext.enable_test_hooks",
							 gettext_noop("Enables the lockext_test_* functions (for lockext's own tests only)."),
							 NULL, &lockext_enable_test_hooks, false, PGC_POSTMASTER,
							 GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);

	DefineCustomIntVariable("lockext.max_wait_ms",
							gettext_noop("Longest wait try_lock(key, ttl_ms, wait_ms) may ask for."),
							NULL, &lockext_max_wait_ms, 60000, 0, INT_MAX, PGC_SIGHUP,
							GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomIntVariable("lockext.max_waiters",
							gettext_noop("Most backends waiting for a lock at once, all databases together."),
							gettext_noop("Each waiter holds a backend (and a pooled connection) for its wait."),
							&lockext_max_waiters, 100, 0, MAX_BACKENDS, PGC_SIGHUP, 0, NULL, NULL,
							NULL);

	DefineCustomBoolVariable("lockext.handle_scan",
							 gettext_noop("Plans SELECT ... FROM try_lock(...) as a lockext handle scan instead of a function scan."),
							 gettext_noop("Same results, about 10,000 fewer instructions per execution; off only to compare or to work around a planner problem."),
							 &lockext_handle_scan, true, PGC_USERSET, 0, NULL, NULL, NULL);

	DefineCustomEnumVariable("lockext.replication",
							 gettext_noop("Writes leases to WAL so that standbys keep them: off, async or sync."),
							 gettext_noop("sync: try_lock and renew return only once a synchronous standby has flushed their record, whatever synchronous_commit says."),
							 &lockext_replication, LOCKEXT_REPLICATION_OFF, replication_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("lockext.promotion_grace_ms",
							gettext_noop("Time after a promotion during which no new lease is granted."),
							gettext_noop("-1 uses lockext.recovery_grace_ms.  0 is safe only if only a synchronous standby can be promoted and lockext.replication = sync has been in force for longer than the longest TTL."),
							&lockext_promotion_grace_ms, -1, -1, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("lockext");
}
