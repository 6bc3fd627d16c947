/*-------------------------------------------------------------------------
 *
 * sql_args.h
 *	  Argument checks shared by the SQL-callable functions: each raises the
 *	  documented SQLSTATE (22004 for NULL, 22023 for out-of-range values,
 *	  25006 on a standby, 55000 when not preloaded) before any lock is
 *	  taken.  Include after "postgres.h".
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_SQL_ARGS_H
#define LOCKEXT_SQL_ARGS_H

#include "access/htup.h"
#include "fmgr.h"
#include "lockext/lock_table.h"

/* Raises 55000 unless preloaded and 25006 during recovery (fname names the function). */
extern void LockextCheckWritable(const char *fname);
/* Detoasts a key datum into a probe for the current database, after checking its length. */
extern void LockextProbeFromKeyDatum(LockextProbeKey *probe, Datum key, bool isnull);
extern int64 LockextCheckTtl(Datum ttl, bool isnull);
extern const pg_uuid_t *LockextCheckLockId(Datum lock_id, bool isnull);
extern HeapTupleHeader LockextCheckHandle(FunctionCallInfo fcinfo, int argno);
extern Datum LockextHandleField(HeapTupleHeader handle, const char *field, bool *isnull);

#endif							/* LOCKEXT_SQL_ARGS_H */
