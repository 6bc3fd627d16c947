-- wait: try_lock(key, ttl_ms, wait_ms) and try_lock_all(keys, ttl_ms), new in
-- 1.1: every argument error with its SQLSTATE, the limits and their GUCs, and
-- the single-session semantics (keys 'wait:'; everything taken is released).
-- The concurrent behaviour is in the isolation specs wait_*.
\set SHOW_CONTEXT never
SELECT lockext_stats_reset();

-- the new functions: volatile, not strict (a NULL argument is an error)
SELECT p.oid::regprocedure AS function, p.provolatile, p.proisstrict, p.proretset
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.proname IN ('try_lock', 'try_lock_all') ORDER BY 1::text;

-- the new view columns, at the end, and 0 while nobody waits
SELECT attnum, attname, atttypid::regtype FROM pg_attribute
 WHERE attrelid = 'lockext_stats'::regclass AND attname IN ('waiters', 'waits', 'wait_timeouts')
 ORDER BY attnum;
SELECT (SELECT attnum FROM pg_attribute WHERE attrelid = 'lockext_stats'::regclass AND attname = 'wait_timeouts')
       = attnum + 3 AS wait_columns_after_1_0
  FROM pg_attribute WHERE attrelid = 'lockext_stats'::regclass AND attname = 'stats_reset';
SELECT attname, atttypid::regtype,
       attnum = (SELECT max(attnum) FROM pg_attribute WHERE attrelid = 'lockext_leases'::regclass AND attnum > 0) AS last
  FROM pg_attribute WHERE attrelid = 'lockext_leases'::regclass AND attname = 'waiters';
SELECT waiters, waits, wait_timeouts FROM lockext_stats;
SELECT lock_id AS idle_id FROM try_lock('wait:idle', 1000) \gset
SELECT key, waiters AS key_waiters FROM lockext_leases WHERE lock_id = :'idle_id';
SELECT release('wait:idle', :'idle_id') AS released;

-- the GUCs: both reload settings, not SET-able
SELECT name, setting, unit, context, vartype, min_val, max_val, boot_val
  FROM pg_settings WHERE name IN ('lockext.max_wait_ms', 'lockext.max_waiters') ORDER BY name;
SET lockext.max_wait_ms = 1000;
\echo :LAST_ERROR_SQLSTATE
SET lockext.max_waiters = 1;
\echo :LAST_ERROR_SQLSTATE

-- try_lock with a wait: NULLs are 22004, never a NULL that reads as contention
SELECT try_lock(NULL, 1000, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('wait:k', NULL, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('wait:k', 1000, NULL);
\echo :LAST_ERROR_SQLSTATE
-- keys and TTLs as for try_lock(key, ttl_ms): 22023
SELECT try_lock('', 1000, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock(repeat('x', 257), 1000, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('wait:k', 0, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('wait:k', 300001, 10);
\echo :LAST_ERROR_SQLSTATE
-- wait_ms out of 0..lockext.max_wait_ms: 22023 naming the limit
SELECT try_lock('wait:k', 1000, -1);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('wait:k', 1000, 60001);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('wait:k', 1000, 9223372036854775807);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('wait:k', 1000, -9223372036854775808);
\echo :LAST_ERROR_SQLSTATE
-- the maximum itself is fine (a free key: no wait at all)
SELECT h.ttl_ms, release(h) AS released FROM try_lock('wait:max', 1000, 60000) h;

-- a free key is granted at once, with a wait; wait_ms = 0 is try_lock
SELECT h.lock_id IS NOT NULL AS granted, h.ttl_ms, h.fence > 0 AS fence_positive, release(h) AS released
  FROM try_lock('wait:free', 2000, 5000) h;
SELECT lock_id AS a_id, fence AS a_fence FROM try_lock('wait:a', 60000, 0) \gset
SELECT :'a_id' IS NOT NULL AS granted_with_wait_0;
SELECT lock_id IS NULL AS contended_with_wait_0 FROM try_lock('wait:a', 60000, 0);
SELECT waiters, wait_timeouts FROM lockext_stats;
-- a held key (held by this very session: a lease is not re-entrant) and a
-- 100 ms bound: NULL, counted as a wait that timed out, nothing left queued
SELECT lock_id IS NULL AS contended_after_bound FROM try_lock('wait:a', 60000, 100);
SELECT waiters, waits >= 1 AS counted_wait, wait_timeouts FROM lockext_stats;
SELECT waiters AS key_waiters, lock_id = :'a_id' AS same_holder, fence = :a_fence AS same_fence
  FROM lockext_leases WHERE key = 'wait:a';
-- statement_timeout ends a wait: 57014, nothing left queued, the holder untouched
SET statement_timeout = 100;
SELECT try_lock('wait:a', 60000, 10000);
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
SELECT waiters FROM lockext_stats;
SELECT waiters AS key_waiters, lock_id = :'a_id' AS same_holder FROM lockext_leases WHERE key = 'wait:a';

-- lockext.max_wait_ms on reload: a longer wait is 22023 with the limit named
ALTER SYSTEM SET lockext.max_wait_ms = 500;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW lockext.max_wait_ms;
SELECT try_lock('wait:a', 60000, 501);
\echo :LAST_ERROR_SQLSTATE
SELECT lock_id IS NULL AS contended_within_new_max FROM try_lock('wait:a', 60000, 50);
ALTER SYSTEM RESET lockext.max_wait_ms;
-- lockext.max_waiters = 0: a call that would wait is 53400; a free key is still granted
ALTER SYSTEM SET lockext.max_waiters = 0;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW lockext.max_wait_ms;
SHOW lockext.max_waiters;
SELECT try_lock('wait:a', 60000, 100);
\echo :LAST_ERROR_SQLSTATE
SELECT h.lock_id IS NOT NULL AS free_key_granted, release(h) AS released FROM try_lock('wait:free', 1000, 100) h;
ALTER SYSTEM RESET lockext.max_waiters;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW lockext.max_waiters;
SELECT waiters FROM lockext_stats;
SELECT release('wait:a', :'a_id') AS released;

-- try_lock_all: the array itself
SELECT * FROM try_lock_all(NULL, 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM try_lock_all('{}', 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM try_lock_all(ARRAY['wait:x', NULL], 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM try_lock_all(ARRAY['wait:x', 'wait:y', 'wait:x'], 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM try_lock_all(ARRAY[['wait:x', 'wait:y'], ['wait:z', 'wait:w']], 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM try_lock_all((SELECT array_agg('wait:n' || g) FROM generate_series(1, 65) g), 1000);
\echo :LAST_ERROR_SQLSTATE
-- its keys and TTL as for try_lock
SELECT * FROM try_lock_all(ARRAY['wait:x', ''], 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM try_lock_all(ARRAY['wait:x', repeat('x', 257)], 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM try_lock_all(ARRAY['wait:x'], NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM try_lock_all(ARRAY['wait:x'], 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM try_lock_all(ARRAY['wait:x'], 300001);
\echo :LAST_ERROR_SQLSTATE
-- more keys than free slots (lockext.max_locks = 8 in the test config): 53400
-- and no partial grant; 64 keys (the most) likewise
SELECT * FROM try_lock_all((SELECT array_agg('wait:n' || g) FROM generate_series(1, 9) g), 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM try_lock_all((SELECT array_agg('wait:n' || g) FROM generate_series(1, 64) g), 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS leases_after_errors FROM lockext_leases;

-- every key granted: one row per key in the order given, one lock_id per key,
-- fences rising in array order, each the lease's own
CREATE TEMP TABLE all_h AS
  SELECT row_number() OVER () AS n, h.* FROM try_lock_all(ARRAY['wait:c', 'wait:a', 'wait:b'], 30000) h;
SELECT n, key, ttl_ms, expires_at > now() AS expires_later FROM all_h ORDER BY n;
SELECT count(DISTINCT lock_id) AS lock_ids,
       bool_and(fence > coalesce(prev, 0)) AS fences_rising_in_array_order
  FROM (SELECT lock_id, fence, lag(fence) OVER (ORDER BY n) AS prev FROM all_h) x;
SELECT count(*) AS matching_leases FROM all_h h JOIN lockext_leases l USING (key, lock_id, fence);
-- each one is a lease like any other: contention for others
SELECT lock_id IS NULL AS contended FROM try_lock('wait:a', 1000);
-- all or nothing: one key held, zero rows and nothing taken
SELECT count(*) AS rows_with_one_held FROM try_lock_all(ARRAY['wait:d', 'wait:b', 'wait:e'], 1000);
SELECT count(*) AS d_or_e_leased FROM lockext_leases WHERE key IN ('wait:d', 'wait:e');
SELECT count(*) FILTER (WHERE release(key, lock_id)) AS released FROM all_h;
-- exactly as many keys as free slots: granted
SELECT count(*) AS granted_8 FROM try_lock_all(ARRAY['wait:1', 'wait:2', 'wait:3', 'wait:4', 'wait:5', 'wait:6', 'wait:7', 'wait:8'], 1000);
SELECT count(lockext_force_release(key)) AS evicted FROM lockext_leases WHERE key LIKE 'wait:%';

-- nothing is left
SELECT leases, waiters FROM lockext_stats;
