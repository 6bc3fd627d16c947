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

	MarkGUCPrefixReserved("lockext");
}
