/*-------------------------------------------------------------------------
 *
 * sql_args.cpp
 *	  Argument checks shared by the SQL-callable functions (see sql_args.h).
 *
 *-------------------------------------------------------------------------
 */
#include "core/lease_rules.hpp"

extern "C"
{
#include "postgres.h"

#include "access/detoast.h"
#include "access/xlog.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

#include "gucs.h"
#include "shmem.h"
#include "sql/sql_args.h"
}

namespace core = lockext::core;

void
LockextCheckWritable(const char *fname)
{
	LockextRequireLoaded();
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot execute %s() during recovery", fname),
				 errhint("Leases are granted, renewed and released only on the primary.")));
}

text *
LockextProbeFromKeyDatum(LockextProbeKey *probe, Datum key, bool isnull)
{
	text	   *key_text;
	Size		length;

	if (isnull)
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("lock key must not be null")));

	/* check the length before detoasting, so a huge key is never expanded */
	length = toast_raw_datum_size(key) - VARHDRSZ;
	switch (core::CheckKeyLength(length, (std::size_t) lockext_max_key_length))
	{
		case core::KeyCheck::Empty:
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							errmsg("lock key must not be empty")));
			break;
		case core::KeyCheck::TooLong:
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							errmsg("lock key must be at most %d bytes", lockext_max_key_length),
							errdetail("The key is %zu bytes long.", (size_t) length),
							errhint("The limit is set by lockext.max_key_length.")));
			break;
		case core::KeyCheck::Ok:
			break;
	}
	key_text = DatumGetTextPP(key);
	LockTableMakeProbe(probe, MyDatabaseId, VARDATA_ANY(key_text),
					   (uint32) VARSIZE_ANY_EXHDR(key_text));
	return key_text;
}

int64
LockextCheckTtl(Datum ttl, bool isnull)
{
	int64		ttl_ms;

	if (isnull)
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("ttl_ms must not be null")));
	ttl_ms = DatumGetInt64(ttl);
	if (!core::TtlInRange(ttl_ms, lockext_max_ttl_ms))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("ttl_ms must be between 1 and %d", lockext_max_ttl_ms),
						errdetail("The requested TTL is " INT64_FORMAT " ms.", ttl_ms),
						errhint("The maximum is set by lockext.max_ttl_ms.")));
	return ttl_ms;
}

int64
LockextCheckWait(Datum wait, bool isnull)
{
	int64		wait_ms;

	if (isnull)
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("wait_ms must not be null")));
	wait_ms = DatumGetInt64(wait);
	if (wait_ms < 0 || wait_ms > lockext_max_wait_ms)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("wait_ms must be between 0 and %d", lockext_max_wait_ms),
						errdetail("The requested wait is " INT64_FORMAT " ms.", wait_ms),
						errhint("The maximum is set by lockext.max_wait_ms.")));
	return wait_ms;
}

const pg_uuid_t *
LockextCheckLockId(Datum lock_id, bool isnull)
{
	if (isnull)
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("lock_id must not be null")));
	return DatumGetUUIDP(lock_id);
}

HeapTupleHeader
LockextCheckHandle(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("lock handle must not be null")));
	return PG_GETARG_HEAPTUPLEHEADER(argno);
}

void
LockextRequireSuperuser(const char *fname)
{
	if (!superuser())
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("permission denied for function %s", fname)));
}

/*
 * A field of a lock_handle, by position: (key, lock_id, ttl_ms, fence,
 * expires_at) as created by the install script.  GetAttributeByNum avoids a
 * by-name lookup in the tuple descriptor on every call.
 */
Datum
LockextHandleField(HeapTupleHeader handle, LockextHandleAttr attr, bool *isnull)
{
	return GetAttributeByNum(handle, (AttrNumber) attr, isnull);
}
