/*-------------------------------------------------------------------------
 *
 * sql_api.cpp
 *	  The lease API as SQL sees it: try_lock, renew (three forms) and
 *	  release (two forms).  Thin: check arguments, build a probe, call the
 *	  lease table, turn its outcome into a result or an ERROR.
 *
 * None of these functions is STRICT: a NULL argument is an error (22004),
 * never a NULL result that would read as contention.  Every entry point is
 * wrapped by LOCKEXT_SQL_FUNCTION, so no C++ exception reaches PostgreSQL.
 *
 * Locking protocol: no lock is held here; lock_table.cpp takes and releases
 * the partition lock inside each call, and every ereport happens after.
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/xlog.h"
#include "executor/executor.h"
#include "funcapi.h"
#include "libpq/libpq-be.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "lockext/sql_args.h"
}

#include "lockext/core/lease_rules.hpp"
#include "lockext/pg_boundary.hpp"

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

void
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
	LockextMakeProbe(probe, MyDatabaseId, VARDATA_ANY(key_text),
					 (uint32) VARSIZE_ANY_EXHDR(key_text));
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

/* Records who is asking: role, pid, application_name, client address. */
static void
FillRequester(LockextGrantRequest *request)
{
	request->holder = GetUserId();
	request->pid = MyProcPid;
	memset(request->client_addr, 0, sizeof(request->client_addr));
	memset(request->application_name, 0, sizeof(request->application_name));

	if (application_name != NULL && application_name[0] != '\0')
	{
		int			len = pg_mbcliplen(application_name, (int) strlen(application_name),
									   LOCKEXT_APPNAME_BYTES - 1);

		memcpy(request->application_name, application_name, len);
	}
	if (MyProcPort != NULL)
	{
		const struct sockaddr *addr = (const struct sockaddr *) &MyProcPort->raddr.addr;

		if (addr->sa_family == AF_INET)
		{
			/* stored IPv4-mapped: ::ffff:a.b.c.d */
			request->client_addr[10] = 0xff;
			request->client_addr[11] = 0xff;
			memcpy(&request->client_addr[12], &((const struct sockaddr_in *) addr)->sin_addr, 4);
		}
		else if (addr->sa_family == AF_INET6)
			memcpy(request->client_addr, &((const struct sockaddr_in6 *) addr)->sin6_addr, 16);
	}
}

/*
 * Random bytes for lock_ids, drawn from pg_strong_random() 1 KiB at a time:
 * OpenSSL's per-call overhead was 2/3 of try_lock's cost when called for
 * every 16 bytes.  Each byte is handed out once and wiped; the buffer is
 * refilled in a forked child, so no two processes share bytes.
 */
static unsigned char lock_id_pool[UUID_LEN * 64];
static size_t lock_id_pool_used = sizeof(lock_id_pool);
static int	lock_id_pool_pid = 0;

static bool
NextRandomLockId(pg_uuid_t *lock_id)
{
	if (lock_id_pool_pid != MyProcPid || lock_id_pool_used + UUID_LEN > sizeof(lock_id_pool))
	{
		if (!pg_strong_random(lock_id_pool, sizeof(lock_id_pool)))
			return false;
		lock_id_pool_used = 0;
		lock_id_pool_pid = MyProcPid;
	}
	memcpy(lock_id->data, lock_id_pool + lock_id_pool_used, UUID_LEN);
	explicit_bzero(lock_id_pool + lock_id_pool_used, UUID_LEN);
	lock_id_pool_used += UUID_LEN;
	core::StampUuidV4(lock_id->data);
	return true;
}

/* The blessed lock_handle descriptor, looked up once per call site (fn_extra). */
static TupleDesc
HandleTupleDesc(FunctionCallInfo fcinfo)
{
	TupleDesc	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;

	if (tupdesc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							errmsg("try_lock() must be called in a context that accepts a lock_handle")));
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = tupdesc;
	}
	return tupdesc;
}

static Datum
MakeHandle(FunctionCallInfo fcinfo, Datum key, const LockextGrantRequest *request, int64 fence)
{
	TupleDesc	tupdesc = HandleTupleDesc(fcinfo);
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	pg_uuid_t  *lock_id = (pg_uuid_t *) palloc(sizeof(pg_uuid_t));

	*lock_id = request->lock_id;
	values[0] = key;
	values[1] = UUIDPGetDatum(lock_id);
	values[2] = Int64GetDatum(request->ttl_ms);
	values[3] = Int64GetDatum(fence);
	values[4] = TimestampTzGetDatum(request->wall_now + request->ttl_ms * INT64CONST(1000));
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/*
 * try_lock(key text, ttl_ms bigint) RETURNS lock_handle
 *		The handle if granted, NULL on contention (including the grace period
 *		after a crash or promotion).  53400 when no slot is free.
 */
LOCKEXT_SQL_FUNCTION(lockext_try_lock)
{
	LockextProbeKey probe;
	LockextGrantRequest request;
	LockextGrantResult result;

	LockextCheckWritable("try_lock");
	LockextCheckPromotionGrace();
	LockextProbeFromKeyDatum(&probe, PG_GETARG_DATUM(0), PG_ARGISNULL(0));
	request.ttl_ms = LockextCheckTtl(PG_GETARG_DATUM(1), PG_ARGISNULL(1));

	if (!NextRandomLockId(&request.lock_id))
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
						errmsg("could not generate a random lock_id")));
	request.wall_now = GetCurrentTimestamp();
	FillRequester(&request);

	switch (LockextGrant(&probe, &request, &result))
	{
		case LOCKEXT_GRANTED:
			break;
		case LOCKEXT_CONTENDED:
			PG_RETURN_NULL();
		case LOCKEXT_TABLE_FULL:
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("lock table is full"),
					 errdetail("%u of %d slots hold unexpired leases.", result.live_leases,
							   lockext_max_locks),
					 errhint("Increase lockext.max_locks (requires restart).")));
			break;
		case LOCKEXT_FENCE_EXHAUSTED:
			ereport(ERROR, (errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
							errmsg("fence counter exhausted"),
							errdetail("Every fence of timeline %u has been granted.",
									  GetWALInsertionTimeLine()),
							errhint("Fences continue above after a promotion to a new timeline.")));
			break;
		case LOCKEXT_FENCE_WRITE_FAILED:
			errno = result.saved_errno;
			ereport(ERROR, (errcode_for_file_access(),
							errmsg("could not reserve fences in \"%s/fence\": %m", LOCKEXT_DIR)));
			break;
	}
	return MakeHandle(fcinfo, PointerGetDatum(DatumGetTextPP(PG_GETARG_DATUM(0))), &request,
					  result.fence);
}

/* ttl == NULL: keep the lease's own TTL (clamped to lockext.max_ttl_ms) */
static bool
RenewChecked(Datum key, bool key_null, Datum lock_id, bool lock_id_null, const Datum *ttl,
			 bool ttl_null)
{
	LockextProbeKey probe;
	const pg_uuid_t *id;
	int64		ttl_ms = -1;

	LockextCheckWritable("renew");
	LockextProbeFromKeyDatum(&probe, key, key_null);
	id = LockextCheckLockId(lock_id, lock_id_null);
	if (ttl != NULL)
		ttl_ms = LockextCheckTtl(*ttl, ttl_null);
	return LockextRenew(&probe, id, ttl_ms, lockext_max_ttl_ms);
}

/* renew(key text, lock_id uuid) RETURNS boolean: keeps the lease's own TTL */
LOCKEXT_SQL_FUNCTION(lockext_renew_keep_ttl)
{
	PG_RETURN_BOOL(RenewChecked(PG_GETARG_DATUM(0), PG_ARGISNULL(0), PG_GETARG_DATUM(1),
								PG_ARGISNULL(1), NULL, false));
}

/* renew(key text, lock_id uuid, ttl_ms bigint) RETURNS boolean */
LOCKEXT_SQL_FUNCTION(lockext_renew)
{
	Datum		ttl = PG_GETARG_DATUM(2);

	PG_RETURN_BOOL(RenewChecked(PG_GETARG_DATUM(0), PG_ARGISNULL(0), PG_GETARG_DATUM(1),
								PG_ARGISNULL(1), &ttl, PG_ARGISNULL(2)));
}

/* renew(h lock_handle) RETURNS boolean: renews for h.ttl_ms */
LOCKEXT_SQL_FUNCTION(lockext_renew_handle)
{
	HeapTupleHeader handle = LockextCheckHandle(fcinfo, 0);
	bool		key_null, id_null, ttl_null;
	Datum		key = LockextHandleField(handle, LOCKEXT_HANDLE_KEY, &key_null);
	Datum		lock_id = LockextHandleField(handle, LOCKEXT_HANDLE_LOCK_ID, &id_null);
	Datum		ttl = LockextHandleField(handle, LOCKEXT_HANDLE_TTL_MS, &ttl_null);

	PG_RETURN_BOOL(RenewChecked(key, key_null, lock_id, id_null, &ttl, ttl_null));
}

static bool
ReleaseChecked(Datum key, bool key_null, Datum lock_id, bool lock_id_null)
{
	LockextProbeKey probe;
	const pg_uuid_t *id;

	LockextCheckWritable("release");
	LockextProbeFromKeyDatum(&probe, key, key_null);
	id = LockextCheckLockId(lock_id, lock_id_null);
	return LockextRelease(&probe, id);
}

/* release(key text, lock_id uuid) RETURNS boolean: true = released now, false = no-op */
LOCKEXT_SQL_FUNCTION(lockext_release)
{
	PG_RETURN_BOOL(ReleaseChecked(PG_GETARG_DATUM(0), PG_ARGISNULL(0), PG_GETARG_DATUM(1),
								  PG_ARGISNULL(1)));
}

/* release(h lock_handle) RETURNS boolean */
LOCKEXT_SQL_FUNCTION(lockext_release_handle)
{
	HeapTupleHeader handle = LockextCheckHandle(fcinfo, 0);
	bool		key_null, id_null;
	Datum		key = LockextHandleField(handle, LOCKEXT_HANDLE_KEY, &key_null);
	Datum		lock_id = LockextHandleField(handle, LOCKEXT_HANDLE_LOCK_ID, &id_null);

	PG_RETURN_BOOL(ReleaseChecked(key, key_null, lock_id, id_null));
}
