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
 * try_lock does everything that can fail (arguments, the result's
 * descriptor and memory, the durable TTL ceiling) before it grants, so an
 * ERROR never leaves a lease nobody has the lock_id of.
 *
 * Locking protocol: no lock is held here; lock_table.cpp takes and releases
 * the partition lock inside each call, and every ereport happens after.
 *
 *-------------------------------------------------------------------------
 */
#include "core/lease_rules.hpp"

extern "C"
{
#include "postgres.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include "access/htup_details.h"
#include "access/tupmacs.h"
#include "access/xlog.h"
#include "catalog/pg_type_d.h"
#include "funcapi.h"
#include "libpq/libpq-be.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"
#include "utils/uuid.h"

#include "durable.h"
#include "fence.h"
#include "grace.h"
#include "gucs.h"
#include "replication.h"
#include "sql/sql_args.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/wait_event.h"
#include "wait_queue.h"
}

#include "sql/pg_boundary.hpp"

namespace core = lockext::core;

/*
 * Before a grant or renewal for ttl_ms: the durable record must say that a
 * lease may last that long, so that the grace after a crash covers it.
 */
static void
RecordTtlCeiling(int64 ttl_ms)
{
	if (!DurableRaiseTtlCeiling(ttl_ms))
		ereport(ERROR, (errcode_for_file_access(),
						errmsg("could not record the TTL ceiling in \"%s\": %m", DurableFailedPath()),
						errdetail("A lease is granted or renewed only once the grace period after a crash would cover it.")));
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

/* True if tupdesc is lock_handle as the install script creates it (see HandleFinish). */
static bool
HandleLayoutExpected(TupleDesc tupdesc)
{
	static const struct
	{
		int16		len;
		char		align;
	}			expected[5] = {{-1, TYPALIGN_INT}, {UUID_LEN, TYPALIGN_CHAR}, {8, TYPALIGN_DOUBLE},
							   {8, TYPALIGN_DOUBLE}, {8, TYPALIGN_DOUBLE}};

	if (tupdesc->natts != 5)
		return false;
	for (int i = 0; i < 5; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		if (att->attisdropped || att->attlen != expected[i].len || att->attalign != expected[i].align ||
			(i >= 2 && !att->attbyval))
			return false;
	}
	return true;
}

/* Raises the error for a lock_handle whose layout is not the one lockext builds. */
static void
ReportUnexpectedLayout(void)
{
	ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
					errmsg("type lock_handle does not have the layout lockext expects"),
					errhint("Reinstall the extension: DROP EXTENSION lockext; CREATE EXTENSION lockext.")));
}

/*
 * The lock_handle descriptor.  Every execution of a statement builds new
 * expression state, so a descriptor cached per call site (fn_extra) would be
 * looked up again each time; the type cache keeps one per backend and per
 * type, invalidated by ALTER TYPE, so only the layout check is cached here,
 * per descriptor identifier.  The descriptor is used at once (no catalog
 * access, hence no invalidation, before heap_form_tuple).  A call without
 * an expression (from C) resolves its result type the long way.
 */
static TupleDesc
HandleTupleDesc(FunctionCallInfo fcinfo)
{
	static uint64 checked_identifier = 0;
	Oid			rettype = get_fn_expr_rettype(fcinfo->flinfo);
	TupleDesc	tupdesc;

	if (OidIsValid(rettype) && rettype != RECORDOID)
	{
		TypeCacheEntry *type = lookup_type_cache(rettype, TYPECACHE_TUPDESC);

		if (type->tupDesc == NULL)
			ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							errmsg("try_lock() must be called in a context that accepts a lock_handle")));
		if (type->tupDesc_identifier != checked_identifier)
		{
			if (!HandleLayoutExpected(type->tupDesc))
				ReportUnexpectedLayout();
			checked_identifier = type->tupDesc_identifier;
		}
		return type->tupDesc;
	}

	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	if (tupdesc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							errmsg("try_lock() must be called in a context that accepts a lock_handle")));
		if (!HandleLayoutExpected(tupdesc))
			ReportUnexpectedLayout();
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = tupdesc;
	}
	return tupdesc;
}

/*
 * The lock_handle for a lease about to be granted, built so that nothing
 * can fail after the grant: HandleStart() forms the whole tuple before it,
 * with a placeholder fence (a fixed-width, by-value field, so the tuple's
 * layout does not depend on its value); HandleFinish() only stores the
 * fence into it after.
 */
static HeapTuple
HandleStart(TupleDesc tupdesc, text *key, const LockextGrantRequest *request)
{
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	values[0] = PointerGetDatum(key);
	values[1] = UUIDPGetDatum(&request->lock_id);
	values[2] = Int64GetDatum(request->ttl_ms);
	values[3] = Int64GetDatum(0);	/* the fence, known after the grant */
	values[4] = TimestampTzGetDatum(request->wall_now + request->ttl_ms * INT64CONST(1000));
	return heap_form_tuple(tupdesc, values, nulls);
}

/*
 * Cannot fail: stores the fence into the tuple HandleStart() formed, where
 * heap_deform_tuple() reads it: after the key (a varlena at offset 0, with
 * the header heap_fill_tuple chose), the 16-byte uuid (char-aligned) and the
 * int8 ttl_ms, both int8 fields double-aligned.  HandleTupleDesc() checked
 * that the descriptor has this layout.
 */
static Datum
HandleFinish(HeapTuple handle, int64 fence)
{
	HeapTupleHeader td = handle->t_data;
	char	   *tp = (char *) td + td->t_hoff;
	Size		off = VARSIZE_ANY(tp) + UUID_LEN;

	off = TYPEALIGN(sizeof(int64), off) + sizeof(int64);
	off = TYPEALIGN(sizeof(int64), off);
	memcpy(tp + off, &fence, sizeof(fence));
	return HeapTupleGetDatum(handle);	/* no external field: nothing to flatten */
}

/*
 * HandleFinish() for a lease granted later than HandleStart() assumed (a
 * waiter's): also stores expires_at, the fixed-width field after the fence.
 */
static Datum
HandleFinishAt(HeapTuple handle, int64 fence, TimestampTz expires_at)
{
	HeapTupleHeader td = handle->t_data;
	char	   *tp = (char *) td + td->t_hoff;
	Size		off = VARSIZE_ANY(tp) + UUID_LEN;

	off = TYPEALIGN(sizeof(int64), off) + sizeof(int64);	/* ttl_ms */
	off = TYPEALIGN(sizeof(int64), off) + sizeof(int64);	/* fence */
	off = TYPEALIGN(sizeof(int64), off);
	memcpy(tp + off, &expires_at, sizeof(expires_at));
	return HandleFinish(handle, fence);
}

/* Raises the error for a grant that neither succeeded nor met contention. */
static void
ReportGrantFailure(LockextGrantStatus status, const LockextGrantResult *result)
{
	switch (status)
	{
		case LOCKEXT_TABLE_FULL:
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("lock table is full"),
					 errdetail("%u of %d slots hold unexpired leases.", result->live_leases,
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
			errno = result->saved_errno;
			ereport(ERROR, (errcode_for_file_access(),
							errmsg("could not reserve fences in \"%s\": %m", DurableFailedPath())));
			break;
		case LOCKEXT_FENCE_LOST:
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("lockext cannot grant: its fence state is lost"),
					 errdetail("No readable copy of \"%s\" proves that a new fence would be above every fence granted before.",
							   LOCKEXT_STATE_FILE),
					 errhint("If you know a fence at or above every fence granted before, run SELECT lockext_fence_resume(that_fence) as a superuser.")));
			break;
		default:
			elog(ERROR, "unexpected lockext grant status %d", (int) status);
	}
}

/* The 57014 of a grant or renewal no synchronous standby confirmed; detail says what became of it. */
static void
ReportUnconfirmed(const LockextProbeKey *probe, const char *what, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_QUERY_CANCELED),
			 errmsg("lockext %s of \"%.*s\" was not confirmed by a synchronous standby",
					what, (int) probe->len, probe->bytes),
			 errdetail_internal("%s", detail),
			 errhint("Check that the standbys named in synchronous_standby_names are connected, then try again.")));
}

/*
 * In lockext.replication = sync: the grants of this call are confirmed by
 * the synchronous standbys, or they are removed here and the call fails
 * (replication.h): the leases in probes[0..n) with lock_ids ids[0..n) are
 * released.  In the other modes the records just go to the WAL writer.
 */
static void
ConfirmOrUndo(const LockextProbeKey *probes, const pg_uuid_t *const *ids, int n)
{
	if (ReplicationConfirm())
		return;
	for (int i = 0; i < n; i++)
		(void) LockTableRelease(&probes[i], ids[i]);
	ReplicationFlushSoon();
	ReportUnconfirmed(&probes[0], "grant",
					  "The wait for synchronous replication ended first, so the lease was removed on this server; a standby may keep it until its TTL runs out.");
}

/* ConfirmOrUndo() for the one lease a try_lock granted. */
static void
ConfirmGrant(const LockextProbeKey *probe, const LockextGrantRequest *request)
{
	const pg_uuid_t *id = &request->lock_id;

	ConfirmOrUndo(probe, &id, 1);
}

/*
 * Everything a grant of request->ttl_ms needs that can fail, done before it:
 * the TTL ceiling made durable, a random lock_id, the requester, and the
 * handle tuple (HandleStart).  Nothing can fail after the grant.
 */
static HeapTuple
PrepareGrant(FunctionCallInfo fcinfo, text *key, LockextGrantRequest *request)
{
	RecordTtlCeiling(request->ttl_ms);
	if (!NextRandomLockId(&request->lock_id))
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
						errmsg("could not generate a random lock_id")));
	request->wall_now = GetCurrentTimestamp();
	FillRequester(request);
	return HandleStart(HandleTupleDesc(fcinfo), key, request);
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
	LockextGrantStatus status;
	HeapTuple	handle;
	text	   *key;

	LockextCheckWritable("try_lock");
	GraceOnRecoveryFinished();
	key = LockextProbeFromKeyDatum(&probe, PG_GETARG_DATUM(0), PG_ARGISNULL(0));
	request.ttl_ms = LockextCheckTtl(PG_GETARG_DATUM(1), PG_ARGISNULL(1));
	if (FenceIsLost())
		ReportGrantFailure(LOCKEXT_FENCE_LOST, &result);
	/* a refusal costs one probe: no lock_id, no handle, no lock taken EXCLUSIVE */
	if (LockTableRefuseIfHeld(&probe))
		PG_RETURN_NULL();
	handle = PrepareGrant(fcinfo, key, &request);

	ReplicationBeginCall();
	status = LockTableGrant(&probe, &request, &result);
	if (status == LOCKEXT_CONTENDED || status == LOCKEXT_GRACE)
		PG_RETURN_NULL();
	if (status != LOCKEXT_GRANTED)
		ReportGrantFailure(status, &result);
	ConfirmGrant(&probe, &request);
	return HandleFinish(handle, result.fence);
}

/*
 * The wait in progress, for the exit callback: a backend that ends while
 * it waits (pg_terminate_backend, a client gone, postmaster death) leaves
 * the queue, and gives back a lease it was handed meanwhile.
 */
static LockextWaitSlot *waiting_slot = NULL;
static bool wait_exit_callback_registered = false;

/*
 * Leaves the queue (see LockTableWaitLeave): LOCKEXT_GRANTED if the wait was
 * handed the lease after all and keep_grant, a failed hand-off's status, or
 * LOCKEXT_QUEUED.
 */
static LockextGrantStatus
LeaveWait(LockextWaitSlot *slot, bool keep_grant, bool timed_out, LockextGrantResult *result)
{
	LockextProbeKey probe;
	LockextGrantStatus status;

	LockTableMakeProbe(&probe, slot->dbid, slot->key, slot->key_len);
	status = LockTableWaitLeave(&probe, slot, keep_grant, result);
	WaitQueueLeave(timed_out && status == LOCKEXT_QUEUED);
	waiting_slot = NULL;
	return status;
}

static void
LeaveWaitAtExit(int code, Datum arg)
{
	LockextGrantResult result;

	(void) code;
	(void) arg;
	if (waiting_slot != NULL)
		(void) LeaveWait(waiting_slot, false, false, &result);
}

/*
 * Sleeps on the latch until the slot is granted or fails, or the deadline
 * (lease clock) passes: LOCKEXT_QUEUED then.  Interrupts (cancel,
 * statement_timeout, terminate, a client gone) are served after every
 * wake-up; the caller's PG_CATCH and the exit callback leave the queue.
 */
static LockextGrantStatus
SleepUntilGranted(const LockextProbeKey *probe, LockextWaitSlot *slot, int64 deadline_ns,
				  LockextGrantResult *result)
{
	for (;;)
	{
		int64		sleep_until_ns;
		int64		now_ns;
		int64		wake_ns;
		long		timeout_ms;
		LockextGrantStatus status = LockTableWaitStep(probe, slot, result, &sleep_until_ns);

		if (status != LOCKEXT_QUEUED)
			return status;
		now_ns = LockextNowNanos();
		if (now_ns >= deadline_ns)
			return LOCKEXT_QUEUED;
		wake_ns = Min(deadline_ns, sleep_until_ns);
		/* round up: waking before the holder's expiry would only sleep again */
		timeout_ms = (long) Min((wake_ns - now_ns + 999999) / 1000000, (int64) 3600000);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, Max(timeout_ms, 1L),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * try_lock(key text, ttl_ms bigint, wait_ms bigint) RETURNS lock_handle
 *		try_lock that waits up to wait_ms for a held key: first come, first
 *		served; a release, an eviction or the holder's expiry hands the
 *		lease to the oldest waiter.  NULL when the bound passes.  53400
 *		beyond lockext.max_waiters.
 */
LOCKEXT_SQL_FUNCTION(lockext_try_lock_wait)
{
	LockextProbeKey probe;
	LockextGrantRequest request;
	LockextGrantResult result;
	LockextGrantStatus status;
	LockextWaitSlot *volatile slot = NULL;
	HeapTuple	handle;
	text	   *key;
	int64		wait_ms;
	int64		deadline_ns;
	volatile bool timed_out = false;

	LockextCheckWritable("try_lock");
	GraceOnRecoveryFinished();
	key = LockextProbeFromKeyDatum(&probe, PG_GETARG_DATUM(0), PG_ARGISNULL(0));
	request.ttl_ms = LockextCheckTtl(PG_GETARG_DATUM(1), PG_ARGISNULL(1));
	wait_ms = LockextCheckWait(PG_GETARG_DATUM(2), PG_ARGISNULL(2));
	if (FenceIsLost())
		ReportGrantFailure(LOCKEXT_FENCE_LOST, &result);
	if (wait_ms > 0)
	{
		slot = WaitQueueMySlot();
		if (slot == NULL)
			ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							errmsg("this process cannot wait for a lockext lock")));
		if (!wait_exit_callback_registered)
		{
			before_shmem_exit(LeaveWaitAtExit, (Datum) 0);
			wait_exit_callback_registered = true;
		}
	}
	handle = PrepareGrant(fcinfo, key, &request);

	deadline_ns = LockextNowNanos() + wait_ms * INT64CONST(1000000);
	ReplicationBeginCall();
	status = LockTableGrantOrQueue(&probe, &request, &result, slot);
	if (status == LOCKEXT_QUEUED)
	{
		waiting_slot = slot;
		PG_TRY();
		{
			status = SleepUntilGranted(&probe, slot, deadline_ns, &result);
			timed_out = status == LOCKEXT_QUEUED;
		}
		PG_CATCH();
		{
			if (waiting_slot != NULL)
				(void) LeaveWait(slot, false, false, &result);
			PG_RE_THROW();
		}
		PG_END_TRY();
		if (timed_out)
			/* a hand-off may have come after the last look: then the lease is ours */
			status = LeaveWait(slot, true, true, &result);
		else
		{
			waiting_slot = NULL;
			WaitQueueLeave(false);
		}
		if (status == LOCKEXT_GRANTED && (ProcDiePending || QueryCancelPending))
		{
			/*
			 * Interrupted in the instant it was granted: the reply would not
			 * reach the client, so give the lease back (to the next waiter)
			 * before the interrupt is served.
			 */
			(void) LockTableRelease(&probe, &request.lock_id);
			CHECK_FOR_INTERRUPTS();
			PG_RETURN_NULL();
		}
		if (status == LOCKEXT_GRANTED)
		{
			/* the backend that handed the lease over logged its grant */
			ReplicationNoteHandOff(slot->grant_lsn, slot->grant_sync);
			ConfirmGrant(&probe, &request);
			return HandleFinishAt(handle, result.fence, slot->granted_at + request.ttl_ms * INT64CONST(1000));
		}
		if (status == LOCKEXT_QUEUED)
			PG_RETURN_NULL();	/* the bound passed */
	}
	if (status == LOCKEXT_TOO_MANY_WAITERS)
		ereport(ERROR, (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						errmsg("too many lock waiters"),
						errdetail("lockext.max_waiters is %d, and that many backends are waiting already.",
								  lockext_max_waiters),
						errhint("Increase lockext.max_waiters, or wait less long.")));
	if (status == LOCKEXT_CONTENDED || status == LOCKEXT_GRACE)
		PG_RETURN_NULL();
	if (status != LOCKEXT_GRANTED)
		ReportGrantFailure(status, &result);
	ConfirmGrant(&probe, &request);
	return HandleFinish(handle, result.fence);
}

/*
 * try_lock_all(keys text[], ttl_ms bigint) RETURNS SETOF lock_handle
 *		Every key granted (one handle per key, in the order given, fences
 *		rising in that order) or none (no row) when any is held.  NULL array
 *		or element 22004; empty, multidimensional or duplicate 22023; more
 *		than LOCKEXT_MAX_KEYS_PER_CALL keys 54000.
 */
LOCKEXT_SQL_FUNCTION(lockext_try_lock_all)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LockextProbeKey probes[LOCKEXT_MAX_KEYS_PER_CALL];
	LockextGrantRequest requests[LOCKEXT_MAX_KEYS_PER_CALL];
	LockextGrantResult results[LOCKEXT_MAX_KEYS_PER_CALL];
	HeapTuple	handles[LOCKEXT_MAX_KEYS_PER_CALL];
	LockextGrantStatus status;
	ArrayType  *keys;
	Datum	   *elements;
	bool	   *element_nulls;
	int			n;
	int64		ttl_ms;
	TupleDesc	tupdesc;

	LockextCheckWritable("try_lock_all");
	GraceOnRecoveryFinished();
	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("keys must not be null")));
	keys = PG_GETARG_ARRAYTYPE_P(0);
	ttl_ms = LockextCheckTtl(PG_GETARG_DATUM(1), PG_ARGISNULL(1));
	if (ARR_NDIM(keys) > 1)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("keys must be a one-dimensional array")));
	deconstruct_array(keys, TEXTOID, -1, false, TYPALIGN_INT, &elements, &element_nulls, &n);
	if (n == 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("keys must not be empty")));
	if (n > LOCKEXT_MAX_KEYS_PER_CALL)
		ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						errmsg("try_lock_all takes at most %d keys", LOCKEXT_MAX_KEYS_PER_CALL),
						errdetail("%d keys were given.", n)));
	for (int i = 0; i < n; i++)
	{
		if (element_nulls[i])
			ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
							errmsg("keys must not contain null"),
							errdetail("Element %d is null.", i + 1)));
		(void) LockextProbeFromKeyDatum(&probes[i], elements[i], false);
		for (int j = 0; j < i; j++)
			if (probes[j].len == probes[i].len && memcmp(probes[j].bytes, probes[i].bytes, probes[i].len) == 0)
				ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
								errmsg("keys must not contain duplicates"),
								errdetail("Elements %d and %d are the same key.", j + 1, i + 1)));
	}
	if (FenceIsLost())
		ReportGrantFailure(LOCKEXT_FENCE_LOST, &results[0]);
	RecordTtlCeiling(ttl_ms);

	InitMaterializedSRF(fcinfo, 0);
	tupdesc = HandleTupleDesc(fcinfo);
	requests[0].ttl_ms = ttl_ms;
	requests[0].wall_now = GetCurrentTimestamp();
	FillRequester(&requests[0]);
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			requests[i] = requests[0];
		if (!NextRandomLockId(&requests[i].lock_id))
			ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
							errmsg("could not generate a random lock_id")));
		handles[i] = HandleStart(tupdesc, (text *) DatumGetPointer(elements[i]), &requests[i]);
	}

	ReplicationBeginCall();
	status = LockTableGrantAll(probes, requests, n, results);
	if (status == LOCKEXT_TABLE_FULL)
	{
		/* expired leases may hold the slots: reclaim them and try once more */
		LockTableSweepExpired();
		status = LockTableGrantAll(probes, requests, n, results);
	}
	if (status == LOCKEXT_CONTENDED || status == LOCKEXT_GRACE)
		return (Datum) 0;
	if (status == LOCKEXT_TABLE_FULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("lock table has no room for %d leases", n),
				 errdetail("%u of %d slots are in use; none of the keys was granted.",
						   results[0].live_leases, lockext_max_locks),
				 errhint("Increase lockext.max_locks (requires restart).")));
	if (status != LOCKEXT_GRANTED)
		ReportGrantFailure(status, &results[0]);
	{
		const pg_uuid_t *ids[LOCKEXT_MAX_KEYS_PER_CALL];

		for (int i = 0; i < n; i++)
			ids[i] = &requests[i].lock_id;
		ConfirmOrUndo(probes, ids, n);
	}
	/* the leases are held: only the rows remain to be stored */
	for (int i = 0; i < n; i++)
	{
		(void) HandleFinish(handles[i], results[i].fence);
		tuplestore_puttuple(rsinfo->setResult, handles[i]);
	}
	return (Datum) 0;
}

/* ttl == NULL: keep the lease's own TTL, even above a lowered lockext.max_ttl_ms */
static bool
RenewChecked(Datum key, bool key_null, Datum lock_id, bool lock_id_null, const Datum *ttl,
			 bool ttl_null)
{
	LockextProbeKey probe;
	const pg_uuid_t *id;
	int64		ttl_ms = -1;
	LockextRenewUndo undo;

	LockextCheckWritable("renew");
	LockextProbeFromKeyDatum(&probe, key, key_null);
	id = LockextCheckLockId(lock_id, lock_id_null);
	if (ttl != NULL)
	{
		ttl_ms = LockextCheckTtl(*ttl, ttl_null);
		RecordTtlCeiling(ttl_ms);
	}
	ReplicationBeginCall();
	if (!LockTableRenew(&probe, id, ttl_ms, &undo))
		return false;
	if (!ReplicationConfirm())
	{
		/*
		 * Not removed: its holder, told of an error, still holds it until it
		 * would have ended without this renewal (a client library keeps that
		 * deadline and retries), so it must not be granted to anyone before.
		 */
		LockTableUndoRenew(&probe, id, &undo);
		ReportUnconfirmed(&probe, "renewal",
						  "The wait for synchronous replication ended first, so the lease ends on this server when it would have without this renewal; a standby may keep it until the renewed TTL runs out.");
	}
	return true;
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
	bool		released;

	LockextCheckWritable("release");
	LockextProbeFromKeyDatum(&probe, key, key_null);
	id = LockextCheckLockId(lock_id, lock_id_null);
	ReplicationBeginCall();
	released = LockTableRelease(&probe, id);
	ReplicationFlushSoon();
	return released;
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
