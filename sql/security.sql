-- security: plain roles use the API; lock_ids stay private; admin is revoked
SELECT current_database() AS home_db, current_user AS admin_user \gset
CREATE ROLE lockext_alice LOGIN;
CREATE ROLE lockext_bob LOGIN;
CREATE ROLE lockext_carol LOGIN IN ROLE lockext_alice;

SET ROLE lockext_alice;
SELECT lock_id AS alice_id FROM try_lock('sec:alice', 30000) \gset
SELECT key, lock_id = :'alice_id' AS sees_own_lock_id, holder FROM lockext_leases
 WHERE key = 'sec:alice';
RESET ROLE;

-- another role sees the lease, not its lock_id, not even by calling the SRF
SET ROLE lockext_bob;
SELECT key, lock_id IS NULL AS lock_id_hidden, holder FROM lockext_leases WHERE key = 'sec:alice';
SELECT count(*) AS ids_visible FROM lockext_leases_internal_1_1() WHERE lock_id IS NOT NULL;
SELECT try_lock('sec:alice', 30000) IS NULL AS contended;
SELECT release('sec:alice', gen_random_uuid()) AS guessed_release;
\set SHOW_CONTEXT never
SELECT lockext_force_release('sec:alice');
\echo :LAST_ERROR_SQLSTATE
SELECT lockext_stats_reset();
\echo :LAST_ERROR_SQLSTATE
SELECT lockext_test_clock_freeze();
\echo :LAST_ERROR_SQLSTATE
SELECT lockext_test_stall(0, 1, false);
\echo :LAST_ERROR_SQLSTATE
SELECT lockext_test_set_fence_floor(1);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- a member of the holder's role sees it, and so does a superuser
SET ROLE lockext_carol;
SELECT lock_id = :'alice_id' AS member_sees_lock_id FROM lockext_leases WHERE key = 'sec:alice';
RESET ROLE;
SELECT lock_id = :'alice_id' AS superuser_sees_lock_id FROM lockext_leases WHERE key = 'sec:alice';

-- the lock_id is what grants control, whoever presents it
SET ROLE lockext_bob;
SELECT release('sec:alice', :'alice_id') AS released_with_the_id;
RESET ROLE;

-- the test hooks are the test-only extension lockext_test's (revoked as well)
SELECT e.extname, p.proname, has_function_privilege('lockext_bob', p.oid, 'EXECUTE') AS bob_can_execute
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname IN ('lockext', 'lockext_test')
 ORDER BY e.extname, p.proname, pg_get_function_identity_arguments(p.oid);

-- a plain role in a fresh database
CREATE DATABASE lockext_sec_fresh;
\c lockext_sec_fresh
CREATE EXTENSION lockext;
\c lockext_sec_fresh lockext_bob
SELECT current_user, h.key, h.lock_id IS NOT NULL AS granted, release(h) AS released
  FROM try_lock('nightly-report', 30000) h;
\c :home_db :admin_user
DROP DATABASE lockext_sec_fresh;
DROP ROLE lockext_carol;
DROP ROLE lockext_bob;
DROP ROLE lockext_alice;
SELECT count(*) AS leftover FROM lockext_leases;
