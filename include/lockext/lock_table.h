/*-------------------------------------------------------------------------
 *
 * lock_table.h
 *	  Grant, renew, release and evict leases in the shared-memory table.
 *
 * Every function here takes and releases its own partition locks and
 * returns with none held.  None of them ereports: outcomes come back as
 * values and the SQL edge (sql_api.cpp) raises errors after the locks are
 * gone.  Include after "postgres.h".
 *
 *-------------------------------------------------------------------------
 */
#ifndef LOCKEXT_LOCK_TABLE_H
#define LOCKEXT_LOCK_TABLE_H

#include "lockext/lockext.h"

typedef enum LockextGrantStatus
{
	LOCKEXT_GRANTED,
	LOCKEXT_CONTENDED,
	LOCKEXT_TABLE_FULL,
	LOCKEXT_FENCE_EXHAUSTED,
	LOCKEXT_FENCE_WRITE_FAILED,	/* result->saved_errno says why */
} LockextGrantStatus;

/* What the grant records about the caller, filled by the SQL edge. */
typedef struct LockextGrantRequest
{
	int64		ttl_ms;
	pg_uuid_t	lock_id;
	TimestampTz wall_now;
	Oid			holder;
	int32		pid;
	uint8		client_addr[LOCKEXT_ADDR_BYTES];
	char		application_name[LOCKEXT_APPNAME_BYTES];
} LockextGrantRequest;

typedef struct LockextGrantResult
{
	int64		fence;
	uint32		live_leases;	/* with LOCKEXT_TABLE_FULL: live leases seen */
	int			saved_errno;	/* with LOCKEXT_FENCE_WRITE_FAILED */
} LockextGrantResult;

/* One lease as the views see it: a copy taken under the partition lock. */
typedef struct LockextLeaseCopy
{
	Oid			dbid;
	uint32		key_len;
	char	   *key;			/* palloc'd */
	LockextLease lease;
	int64		remaining_ms;
} LockextLeaseCopy;

typedef struct LockextTableCounts
{
	LockextCounters events;		/* summed over partitions */
	uint64		live_leases;
} LockextTableCounts;

extern void LockextMakeProbe(LockextProbeKey *probe, Oid dbid, const char *bytes, uint32 len);
extern LockextGrantStatus LockextGrant(const LockextProbeKey *probe,
									   const LockextGrantRequest *request,
									   LockextGrantResult *result);
/* ttl_ms < 0: keep the lease's own TTL (clamped to max_ttl_ms) */
extern bool LockextRenew(const LockextProbeKey *probe, const pg_uuid_t *lock_id, int64 ttl_ms,
						 int64 max_ttl_ms);
extern bool LockextRelease(const LockextProbeKey *probe, const pg_uuid_t *lock_id);
extern bool LockextEvict(const LockextProbeKey *probe);
extern uint32 LockextSweepExpired(void);
extern bool LockextRestoreLease(Oid dbid, const char *key, uint32 key_len,
								const LockextLease *lease);
extern LockextLeaseCopy *LockextCopyLiveLeases(int *count);
extern void LockextCollectCounts(LockextTableCounts *counts);
extern void LockextResetCounts(void);

#endif							/* LOCKEXT_LOCK_TABLE_H */
