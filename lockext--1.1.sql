/* lockext--1.1.sql: lease-based distributed locks in shared memory */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION lockext" to load this file. \quit

-- What try_lock returns: everything a holder needs to renew and release,
-- plus the fencing token to hand to the resource it protects.
CREATE TYPE lock_handle AS (
    key        text,
    lock_id    uuid,
    ttl_ms     bigint,
    fence      bigint,
    expires_at timestamptz
);

-- None of these functions is STRICT (a NULL argument is an error, never a
-- NULL result that would read as contention), and all are VOLATILE so that
-- a query never folds or repeats a call.

CREATE FUNCTION try_lock(key text, ttl_ms bigint)
RETURNS lock_handle
AS 'MODULE_PATHNAME', 'lockext_try_lock'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION renew(key text, lock_id uuid)
RETURNS boolean
AS 'MODULE_PATHNAME', 'lockext_renew_keep_ttl'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION renew(key text, lock_id uuid, ttl_ms bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'lockext_renew'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION renew(h lock_handle)
RETURNS boolean
AS 'MODULE_PATHNAME', 'lockext_renew_handle'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION release(key text, lock_id uuid)
RETURNS boolean
AS 'MODULE_PATHNAME', 'lockext_release'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION release(h lock_handle)
RETURNS boolean
AS 'MODULE_PATHNAME', 'lockext_release_handle'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

-- Inspection.  The function hides lock_id itself (only superusers and
-- members of the holder's role see it), so calling it directly reveals
-- nothing the view does not.  (1.0's lockext_leases_internal() and
-- lockext_stats_internal() had the columns before waiters; 1.1 appends.)
CREATE FUNCTION lockext_leases_internal_1_1(
    OUT dbid oid, OUT key text, OUT lock_id uuid, OUT fence bigint, OUT ttl_ms bigint,
    OUT acquired_at timestamptz, OUT expires_at timestamptz, OUT remaining_ms bigint,
    OUT renewals bigint, OUT holder oid, OUT pid integer, OUT application_name text,
    OUT client_addr inet, OUT waiters bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'lockext_leases_internal'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

CREATE VIEW lockext_leases AS
    SELECT d.datname, l.key, l.lock_id, l.fence, l.ttl_ms, l.acquired_at, l.expires_at,
           l.remaining_ms, l.renewals, pg_get_userbyid(l.holder) AS holder, l.pid,
           l.application_name, l.client_addr, l.waiters
    FROM lockext_leases_internal_1_1() l
    LEFT JOIN pg_database d ON d.oid = l.dbid;

CREATE FUNCTION lockext_stats_internal_1_1(
    OUT acquired bigint, OUT contended bigint, OUT renewed bigint, OUT renew_failed bigint,
    OUT released bigint, OUT release_noop bigint, OUT expired bigint, OUT table_full bigint,
    OUT leases bigint, OUT max_locks integer, OUT high_water bigint,
    OUT stats_reset timestamptz, OUT waiters bigint, OUT waits bigint, OUT wait_timeouts bigint,
    OUT wal_records bigint, OUT sync_failed bigint, OUT replayed bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'lockext_stats_internal'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

CREATE VIEW lockext_stats AS
    SELECT acquired, contended, renewed, renew_failed, released, release_noop, expired,
           table_full, leases, max_locks, high_water, stats_reset, waiters, waits, wait_timeouts,
           wal_records, sync_failed, replayed
    FROM lockext_stats_internal_1_1();

GRANT SELECT ON lockext_leases, lockext_stats TO PUBLIC;

-- Whether grants are held back after a crash restart, a restart that did
-- not restore every lease, or a promotion; why, and until when.
CREATE FUNCTION lockext_grace(
    OUT active boolean, OUT reason text, OUT grace_until timestamptz,
    OUT remaining_ms bigint, OUT refused bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'lockext_grace'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

-- Administration: not for PUBLIC.
CREATE FUNCTION lockext_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'lockext_stats_reset'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION lockext_force_release(key text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'lockext_force_release'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION lockext_stats_reset() FROM PUBLIC;
REVOKE ALL ON FUNCTION lockext_force_release(text) FROM PUBLIC;

-- The lockext_test_* hooks of 1.0 are not part of 1.1: the library keeps
-- their symbols (so a database at 1.0 keeps working), and the test-only
-- extension lockext_test (test/lockext_test/, never packaged) creates them.

-- Ends the grace period in force, for an operator who knows that no earlier
-- holder of any lease is still alive.  True if one was in force.
CREATE FUNCTION lockext_grace_end()
RETURNS boolean
AS 'MODULE_PATHNAME', 'lockext_grace_end'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- After the fence state was lost: every later fence is above floor.  Only
-- raises the fence counter.  Returns the fence every later grant exceeds.
CREATE FUNCTION lockext_fence_resume(floor bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'lockext_fence_resume'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION lockext_grace_end() FROM PUBLIC;
REVOKE ALL ON FUNCTION lockext_fence_resume(bigint) FROM PUBLIC;

-- Waiting for a held key (first come, first served; a release, an eviction
-- or the holder's expiry hands the lease to the oldest waiter), and several
-- keys at once, all or none.
CREATE FUNCTION try_lock(key text, ttl_ms bigint, wait_ms bigint)
RETURNS lock_handle
AS 'MODULE_PATHNAME', 'lockext_try_lock_wait'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION try_lock_all(keys text[], ttl_ms bigint)
RETURNS SETOF lock_handle
AS 'MODULE_PATHNAME', 'lockext_try_lock_all'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE ROWS 4;

-- Lease replication (1.1): the mode in force (on a standby: the one its
-- primary logged last), whether this server's lease table is complete (a
-- standby: it replayed a whole snapshot; a promotion with an incomplete
-- table applies the full grace period), and what grace a promotion would
-- apply now.
CREATE FUNCTION lockext_replication(
    OUT mode text, OUT table_complete boolean, OUT promotion_grace_ms bigint,
    OUT wal_records bigint, OUT sync_failed bigint, OUT replayed bigint,
    OUT snapshots bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'lockext_replication_status'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
