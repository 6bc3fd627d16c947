/* lockext_test--1.1.sql: the lockext_test_* hooks, for lockext's test suites only */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION lockext_test" to load this file. \quit

-- lockext 1.0 created these functions itself; from 1.1 on they are here.
DO $$
BEGIN
    IF (SELECT extversion FROM pg_extension WHERE extname = 'lockext') = '1.0' THEN
        RAISE EXCEPTION 'lockext 1.0 already provides the lockext_test_* functions'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run ALTER EXTENSION lockext UPDATE first.';
    END IF;
END
$$;

-- The symbols are in the lockext library (MODULE_PATHNAME is $libdir/lockext).
-- Each raises 55000 unless lockext.enable_test_hooks = on at server start,
-- checks for a superuser, and is revoked from PUBLIC.
CREATE FUNCTION lockext_test_clock_freeze() RETURNS void
AS 'MODULE_PATHNAME', 'lockext_test_clock_freeze' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION lockext_test_clock_advance(ms bigint) RETURNS void
AS 'MODULE_PATHNAME', 'lockext_test_clock_advance' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION lockext_test_clock_release() RETURNS void
AS 'MODULE_PATHNAME', 'lockext_test_clock_release' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION lockext_test_set_fence_floor(fence bigint) RETURNS void
AS 'MODULE_PATHNAME', 'lockext_test_set_fence_floor' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION lockext_test_partition_of(key text) RETURNS integer
AS 'MODULE_PATHNAME', 'lockext_test_partition_of' LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION lockext_test_stall(partition integer, ms integer, raise_error boolean) RETURNS void
AS 'MODULE_PATHNAME', 'lockext_test_stall' LANGUAGE C VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION lockext_test_clock_freeze() FROM PUBLIC;
REVOKE ALL ON FUNCTION lockext_test_clock_advance(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION lockext_test_clock_release() FROM PUBLIC;
REVOKE ALL ON FUNCTION lockext_test_set_fence_floor(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION lockext_test_partition_of(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION lockext_test_stall(integer, integer, boolean) FROM PUBLIC;
