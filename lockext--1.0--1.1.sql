/* lockext--1.0--1.1.sql: what 1.1 adds to 1.0 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION lockext UPDATE TO '1.1'" to load this file. \quit

-- The lockext_test_* hooks leave the extension: 1.1 has them in the
-- test-only extension lockext_test (test/lockext_test/, never packaged).
-- A member of the extension being updated may be dropped by its update
-- script; the symbols stay in the library for databases still at 1.0.
DROP FUNCTION lockext_test_clock_freeze();
DROP FUNCTION lockext_test_clock_advance(bigint);
DROP FUNCTION lockext_test_clock_release();
DROP FUNCTION lockext_test_set_fence_floor(bigint);
DROP FUNCTION lockext_test_partition_of(text);
DROP FUNCTION lockext_test_stall(integer, integer, boolean);

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
