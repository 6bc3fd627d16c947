/*-------------------------------------------------------------------------
 *
 * lockext.cpp
 *	  Module entry: PG_MODULE_MAGIC, _PG_init, the lockext.* GUCs.
 *
 * lockext must be listed in shared_preload_libraries: its lease table lives
 * in shared memory reserved at postmaster start.  Loaded any other way
 * (CREATE EXTENSION or a function call in a server that did not preload it)
 * _PG_init raises 55000 with a hint, so a missing preload is caught at once
 * instead of at the first lock call.
 *
 * Locking protocol: none; runs in the postmaster before shared memory exists.
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "lockext/lockext.h"

	PG_MODULE_MAGIC;

	void _PG_init(void);
}

int			lockext_max_locks = 10000;
int			lockext_max_key_length = 256;
int			lockext_max_ttl_ms = 300000;
int			lockext_recovery_grace_ms = -1;
bool		lockext_save = true;
bool		lockext_enable_test_hooks = false;

static void
DefineGucs(void)
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
							gettext_noop("-1 means lockext.max_ttl_ms."),
							&lockext_recovery_grace_ms, -1, -1, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("lockext.save",
							 gettext_noop("Save live leases at clean shutdown and restore them at start."),
							 NULL, &lockext_save, true, PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomBoolVariable("lockext.enable_test_hooks",
							 gettext_noop("Enables the lockext_test_* functions (for lockext's own tests only)."),
							 NULL, &lockext_enable_test_hooks, false, PGC_POSTMASTER,
							 GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);

	MarkGUCPrefixReserved("lockext");
}

extern "C" void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		LockextReportNotPreloaded();

	DefineGucs();
	LockextInstallShmemHooks();
}
