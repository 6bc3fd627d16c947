-- capacity: lockext.max_locks = 8 in the test configuration
SELECT count(*) AS leases_before FROM lockext_leases;
SELECT lockext_test_clock_freeze();
SELECT lockext_stats_reset();

CREATE TEMP TABLE cap AS
  SELECT k, h.lock_id FROM generate_series(1, 8) k, LATERAL try_lock('cap:' || k, 1000) h;
SELECT count(*) AS granted FROM cap WHERE lock_id IS NOT NULL;

-- full of live leases: a clear error, never a NULL that reads as contention
SELECT * FROM try_lock('cap:9', 1000);
\echo :LAST_ERROR_SQLSTATE
-- a held key still reports contention, and renew and release still work
SELECT try_lock('cap:1', 1000) IS NULL AS contended_when_full;
SELECT renew('cap:1', lock_id) AS renewed_when_full FROM cap WHERE k = 1;
SELECT table_full, leases, high_water, max_locks FROM lockext_stats;

-- a released slot is free at once
SELECT release('cap:8', lock_id) AS released FROM cap WHERE k = 8;
SELECT lock_id AS nine_id FROM try_lock('cap:9', 500) \gset
SELECT * FROM try_lock('cap:10', 1000);
\echo :LAST_ERROR_SQLSTATE

-- an expired lease never counts against capacity: cap:9 expires first
SELECT lockext_test_clock_advance(500);
SELECT key, lock_id IS NOT NULL AS granted FROM try_lock('cap:10', 1000);
SELECT leases, expired, table_full FROM lockext_stats;

-- once everything has expired, a whole table's worth of new keys fits
SELECT lockext_test_clock_advance(1000);
SELECT leases FROM lockext_stats;
SELECT count(*) AS granted_after_expiry
  FROM generate_series(11, 18) k, LATERAL try_lock('cap:' || k, 1000) h
 WHERE h.lock_id IS NOT NULL;
SELECT leases, high_water FROM lockext_stats;

SELECT count(*) AS evicted FROM generate_series(1, 18) k WHERE lockext_force_release('cap:' || k);
SELECT lockext_test_clock_release();
SELECT leases FROM lockext_stats;
