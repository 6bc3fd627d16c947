/*-------------------------------------------------------------------------
 *
 * admin_views.cpp
 *	  What DBAs use: the SRFs behind the lockext_leases and lockext_stats
 *	  views, lockext_stats_reset() and lockext_force_release().
 *
 * lockext_leases_internal() hides lock_id unless the caller is a superuser
 * or a member of the holder's role, and client_addr by pg_stat_activity's
 * rule (visible to roles with the privileges of the holder's role or of
 * pg_read_all_stats; a lock_id is never shown to pg_read_all_stats alone),
 * here in C rather than in the view, so that calling the function directly
 * reveals nothing more.  Keys of other databases are shown only when they
 * are valid text in this database's encoding (NULL otherwise).
 *
 * Locking protocol: lock_table.cpp copies the leases under all partition
 * locks (SHARED, ascending) into memory allocated before; role checks and
 * tuple building run after they are released, because they may read
 * catalogs.  lockext_stats reads atomic counters and takes no lock.
 *
 *-------------------------------------------------------------------------
 */
#include "core/lease_rules.hpp"

extern "C"
{
#include "postgres.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include "access/xlog.h"
#include "catalog/pg_authid.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inet.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

#include "durable.h"
#include "fence.h"
#include "grace.h"
#include "gucs.h"
#include "shmem.h"
#include "sql/sql_args.h"
#include "replication.h"
#include "wait_queue.h"
}

#include "sql/pg_boundary.hpp"

/* 1.0's columns; 1.1's internal functions append waiters (and the wait counters) */
#define LEASES_COLUMNS 13
#define LEASES_COLUMNS_1_1 (LEASES_COLUMNS + 1)
#define STATS_COLUMNS 12
#define STATS_COLUMNS_1_1 (STATS_COLUMNS + 6)


static Datum
ClientAddrDatum(const LockextLease *lease, bool *isnull)
{
	static const uint8 v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	static const uint8 none[LOCKEXT_ADDR_BYTES] = {0};
	char		text_addr[INET6_ADDRSTRLEN];
	const char *ok;

	*isnull = true;
	if (memcmp(lease->client_addr, none, sizeof(none)) == 0)
		return (Datum) 0;	/* local socket or background process */
	if (memcmp(lease->client_addr, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0)
		ok = inet_ntop(AF_INET, &lease->client_addr[12], text_addr, sizeof(text_addr));
	else
		ok = inet_ntop(AF_INET6, lease->client_addr, text_addr, sizeof(text_addr));
	if (ok == NULL)
		return (Datum) 0;
	*isnull = false;
	return DirectFunctionCall1(inet_in, CStringGetDatum(text_addr));
}

static bool
KeyShowable(const LockextLeaseCopy *copy)
{
	return copy->dbid == MyDatabaseId || pg_verifymbstr(copy->key, (int) copy->key_len, true);
}

/*
 * lockext_leases_internal() RETURNS SETOF record: one row per live lease in
 * every database (dbid, key, lock_id, fence, ttl_ms, acquired_at,
 * expires_at, remaining_ms, renewals, holder, pid, application_name,
 * client_addr).
 */
LOCKEXT_SQL_FUNCTION(lockext_leases_internal)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LockextLeaseCopy *copies;
	int			count;
	TimestampTz wall_now;
	bool		see_all = superuser();
	bool		with_waiters;
	bool		read_all_stats = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);

	LockextRequireLoaded();
	InitMaterializedSRF(fcinfo, 0);
	/* lockext_leases_internal_1_1() (1.1) has the waiters column, the 1.0 function not */
	with_waiters = rsinfo->setDesc->natts == LEASES_COLUMNS_1_1;
	if (!with_waiters && rsinfo->setDesc->natts != LEASES_COLUMNS)
		elog(ERROR, "lockext_leases_internal: unexpected result type");
	copies = LockTableCopyLive(&count, NULL, NULL);
	wall_now = GetCurrentTimestamp();

	for (int i = 0; i < count; i++)
	{
		const LockextLeaseCopy *copy = &copies[i];
		const LockextLease *lease = &copy->lease;
		Datum		values[LEASES_COLUMNS_1_1];
		bool		nulls[LEASES_COLUMNS_1_1];
		int			c = 0;

		memset(nulls, 0, sizeof(nulls));
		values[c++] = ObjectIdGetDatum(copy->dbid);
		if (KeyShowable(copy))
			values[c++] = PointerGetDatum(cstring_to_text_with_len(copy->key, (int) copy->key_len));
		else
			nulls[c++] = true;
		if (see_all || is_member_of_role(GetUserId(), lease->holder))
		{
			pg_uuid_t  *id = (pg_uuid_t *) palloc(sizeof(pg_uuid_t));

			*id = lease->lock_id;
			values[c++] = UUIDPGetDatum(id);
		}
		else
			nulls[c++] = true;
		values[c++] = Int64GetDatum(lease->fence);
		values[c++] = Int64GetDatum((int64) lease->ttl_ms);
		values[c++] = TimestampTzGetDatum(lease->acquired_at);
		values[c++] = TimestampTzGetDatum(wall_now + copy->remaining_ms * INT64CONST(1000));
		values[c++] = Int64GetDatum(copy->remaining_ms);
		values[c++] = Int64GetDatum((int64) lease->renewals);
		values[c++] = ObjectIdGetDatum(lease->holder);
		values[c++] = Int32GetDatum(lease->pid);
		if (lease->application_name[0] != '\0')
			values[c++] = CStringGetTextDatum(lease->application_name);
		else
			nulls[c++] = true;
		if (read_all_stats || has_privs_of_role(GetUserId(), lease->holder))
			values[c] = ClientAddrDatum(lease, &nulls[c]);
		else
			nulls[c] = true;
		c++;
		Assert(c == LEASES_COLUMNS);
		if (with_waiters)
			values[c++] = Int64GetDatum((int64) copy->waiters);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* lockext_stats_internal() RETURNS record: the single row of lockext_stats */
LOCKEXT_SQL_FUNCTION(lockext_stats_internal)
{
	TupleDesc	tupdesc;
	LockextCounts counts;
	Datum		values[STATS_COLUMNS_1_1];
	bool		nulls[STATS_COLUMNS_1_1];
	int			c = 0;

	LockextRequireLoaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	LockTableCollectCounts(&counts);
	memset(nulls, 0, sizeof(nulls));
	values[c++] = Int64GetDatum((int64) counts.acquired);
	values[c++] = Int64GetDatum((int64) counts.contended);
	values[c++] = Int64GetDatum((int64) counts.renewed);
	values[c++] = Int64GetDatum((int64) counts.renew_failed);
	values[c++] = Int64GetDatum((int64) counts.released);
	values[c++] = Int64GetDatum((int64) counts.release_noop);
	values[c++] = Int64GetDatum((int64) counts.expired);
	values[c++] = Int64GetDatum((int64) counts.table_full);
	values[c++] = Int64GetDatum((int64) counts.live_leases);
	values[c++] = Int32GetDatum(lockext_max_locks);
	values[c++] = Int64GetDatum((int64) counts.high_water);
	values[c++] = TimestampTzGetDatum(counts.stats_reset);
	Assert(c == STATS_COLUMNS);
	if (tupdesc->natts == STATS_COLUMNS_1_1)
	{
		LockextWaitCounts waits;
		LockextReplicationStatus replication;

		WaitQueueCounts(&waits);
		values[c++] = Int64GetDatum((int64) waits.waiting_now);
		values[c++] = Int64GetDatum((int64) waits.waits);
		values[c++] = Int64GetDatum((int64) waits.wait_timeouts);
		ReplicationGetStatus(&replication);
		values[c++] = Int64GetDatum((int64) replication.wal_records);
		values[c++] = Int64GetDatum((int64) replication.sync_failed);
		values[c++] = Int64GetDatum((int64) replication.replayed);
	}
	else if (tupdesc->natts != STATS_COLUMNS)
		elog(ERROR, "lockext_stats_internal: unexpected result type");
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls));
}

/* lockext_stats_reset() RETURNS void; revoked from PUBLIC */
LOCKEXT_SQL_FUNCTION(lockext_stats_reset)
{
	(void) fcinfo;
	LockextRequireLoaded();
	LockTableResetCounts();
	WaitQueueResetCounts();
	PG_RETURN_VOID();
}

/*
 * lockext_force_release(key text) RETURNS boolean; revoked from PUBLIC.
 * Evicts the lease on key in the current database whoever holds it; true if
 * a live lease was removed.  The evicted holder's renew and release then
 * return false.
 */
LOCKEXT_SQL_FUNCTION(lockext_force_release)
{
	LockextProbeKey probe;

	LockextCheckWritable("lockext_force_release");
	(void) LockextProbeFromKeyDatum(&probe, PG_GETARG_DATUM(0), PG_ARGISNULL(0));
	PG_RETURN_BOOL(LockTableEvict(&probe));
}

/*
 * lockext_grace() RETURNS record (active, reason, grace_until, remaining_ms,
 * refused): whether grants are held back after a crash, an unsaved restart
 * or a promotion, why, and until when.
 */
LOCKEXT_SQL_FUNCTION(lockext_grace)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	LockextGraceStatus status;
	bool		in_recovery;

	LockextRequireLoaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	in_recovery = RecoveryInProgress();
	if (!in_recovery)
		GraceOnRecoveryFinished();
	GraceGetStatus(&status, in_recovery);

	values[0] = BoolGetDatum(status.active);
	values[1] = CStringGetTextDatum(GraceReasonText(status.reason));
	if (status.reason == LOCKEXT_GRACE_NONE)
		nulls[2] = true;
	else
		values[2] = TimestampTzGetDatum(GetCurrentTimestamp() + status.remaining_ms * INT64CONST(1000));
	values[3] = Int64GetDatum(status.remaining_ms);
	values[4] = Int64GetDatum((int64) status.refused);
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls));
}

/*
 * lockext_replication() RETURNS record (mode, table_complete,
 * promotion_grace_ms, wal_records, sync_failed, replayed, snapshots) (1.1).
 * promotion_grace_ms: the grace a promotion of this server would apply
 * now (lockext.promotion_grace_ms only with a complete table).
 */
LOCKEXT_SQL_FUNCTION(lockext_replication_status)
{
	TupleDesc	tupdesc;
	Datum		values[7];
	bool		nulls[7] = {false, false, false, false, false, false, false};
	LockextReplicationStatus status;

	LockextRequireLoaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	ReplicationGetStatus(&status);
	values[0] = CStringGetTextDatum(ReplicationModeName(status.mode));
	values[1] = BoolGetDatum(status.table_complete);
	values[2] = Int64GetDatum(GracePromotionLengthMillis(status.table_complete));
	values[3] = Int64GetDatum((int64) status.wal_records);
	values[4] = Int64GetDatum((int64) status.sync_failed);
	values[5] = Int64GetDatum((int64) status.replayed);
	values[6] = Int64GetDatum((int64) status.snapshots);
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls));
}

/*
 * lockext_grace_end() RETURNS boolean (1.1); revoked from PUBLIC (an
 * operator role may be granted EXECUTE).  Ends the
 * grace period in force, for an operator who knows that no earlier holder
 * is alive; true if one was in force.
 */
LOCKEXT_SQL_FUNCTION(lockext_grace_end)
{
	(void) fcinfo;
	bool		ended;

	LockextCheckWritable("lockext_grace_end");
	ended = GraceEnd();
	WaitQueueWakeAll();			/* head waiters sleeping through the grace take their keys */
	PG_RETURN_BOOL(ended);
}

/*
 * lockext_fence_resume(floor bigint) RETURNS bigint (1.1); revoked from
 * PUBLIC.  Every later fence is above floor: raises the fence counter
 * (never lowers it), makes that durable and ends a "fence state lost"
 * refusal.  Returns the fence every later grant exceeds.
 */
LOCKEXT_SQL_FUNCTION(lockext_fence_resume)
{
	int64		floor;
	int64		next_above = 0;

	LockextCheckWritable("lockext_fence_resume");
	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("fence floor must not be null")));
	floor = PG_GETARG_INT64(0);
	if (floor < 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("fence floor must not be negative")));
	switch (FenceResume(floor, &next_above))
	{
		case LOCKEXT_FENCE_OK:
			break;
		case LOCKEXT_FENCE_FLOOR_OUT_OF_RANGE:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("fence floor " INT64_FORMAT " is beyond the fences of timeline %u", floor,
							GetWALInsertionTimeLine()),
					 errhint("Fences of a timeline lie between timeline << 44 and (timeline + 1) << 44.")));
			break;
		case LOCKEXT_FENCE_IO_ERROR:
			ereport(ERROR, (errcode_for_file_access(),
							errmsg("could not reserve fences in \"%s\": %m", DurableFailedPath())));
			break;
		default:
			elog(ERROR, "unexpected fence status");
	}
	ereport(LOG, (errmsg("lockext: fences resume above " INT64_FORMAT " (lockext_fence_resume)",
						 next_above)));
	PG_RETURN_INT64(next_above);
}
