/*-------------------------------------------------------------------------
 *
 * sql_args.h
 *	  Argument checks shared by the SQL-callable functions: each raises the
 *	  documented SQLSTATE (22004 for NULL, 22023 for out-of-range values,
 *	  25006 on a standby, 55000 when not preloaded) before any lock is
 *	  taken.  Include after "postgres.h".
 *
 * Locking protocol: none; nothing here takes a lock.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_SQL_ARGS_H
#define LOCKEXT_SQL_ARGS_H

#include "access/htup.h"
#include "fmgr.h"

#include "lock_table.h"

/* Raises 55000 unless preloaded and 25006 during recovery (fname names the function). */
extern void LockextCheckWritable(const char *fname);
/*
 * Checks a key datum's length, detoasts it and makes a probe for the
 * current database; returns the detoasted text (probe->bytes points into it).
 */
extern text *LockextProbeFromKeyDatum(LockextProbeKey *probe, Datum key, bool isnull);
extern int64 LockextCheckTtl(Datum ttl, bool isnull);
/* 22004/22023 unless wait_ms is in 0..lockext.max_wait_ms */
extern int64 LockextCheckWait(Datum wait, bool isnull);
extern const pg_uuid_t *LockextCheckLockId(Datum lock_id, bool isnull);
extern HeapTupleHeader LockextCheckHandle(FunctionCallInfo fcinfo, int argno);
/* Raises 42501 unless the caller is a superuser (fname names the function). */
extern void LockextRequireSuperuser(const char *fname);

/* attribute numbers of lock_handle (key, lock_id, ttl_ms, fence, expires_at) */
typedef enum LockextHandleAttr
{
	LOCKEXT_HANDLE_KEY = 1,
	LOCKEXT_HANDLE_LOCK_ID = 2,
	LOCKEXT_HANDLE_TTL_MS = 3,
} LockextHandleAttr;
extern Datum LockextHandleField(HeapTupleHeader handle, LockextHandleAttr attr, bool *isnull);

#endif							/* LOCKEXT_SQL_ARGS_H */
