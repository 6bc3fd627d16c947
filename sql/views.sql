-- views: lockext_leases and lockext_stats, under the frozen clock
SELECT lockext_test_clock_freeze();
SELECT lockext_stats_reset();
SELECT acquired, contended, renewed, renew_failed, released, release_noop, expired, table_full,
       leases, max_locks, high_water, stats_reset > now() - interval '1 minute' AS reset_recently
  FROM lockext_stats;

SET application_name = 'views-test';
SELECT lock_id AS v_id, fence AS v_fence FROM try_lock('views:a', 60000) \gset
SELECT lockext_test_clock_advance(15000);
SELECT datname = current_database() AS this_db, key, lock_id = :'v_id' AS lock_id_ok,
       fence = :v_fence AS fence_ok, ttl_ms, remaining_ms, renewals,
       holder = current_user AS holder_ok, pid = pg_backend_pid() AS pid_ok,
       application_name, client_addr,
       acquired_at <= now() AS acquired_in_past,
       expires_at BETWEEN clock_timestamp() + interval '44 seconds'
                      AND clock_timestamp() + interval '46 seconds' AS expires_in_45s
  FROM lockext_leases WHERE key = 'views:a';

SELECT renew('views:a', :'v_id') AS renewed;
SELECT remaining_ms, renewals FROM lockext_leases WHERE key = 'views:a';
SELECT lockext_test_clock_advance(59999);
SELECT remaining_ms FROM lockext_leases WHERE key = 'views:a';
SELECT lockext_test_clock_advance(1);
SELECT count(*) AS rows_after_expiry FROM lockext_leases WHERE key = 'views:a';
SELECT leases, expired FROM lockext_stats;

-- every counter moves with its event
SELECT try_lock('views:a', 1000) IS NOT NULL AS regranted_after_expiry;
SELECT leases, expired, acquired FROM lockext_stats;
SELECT try_lock('views:a', 1000) IS NULL AS contended;
SELECT renew('views:a', gen_random_uuid()) AS renew_wrong_id;
SELECT release('views:a', gen_random_uuid()) AS release_wrong_id;
SELECT lock_id AS b_id FROM try_lock('views:b', 1000) \gset
SELECT release('views:b', :'b_id') AS released;
SELECT acquired, contended, renewed, renew_failed, released, release_noop, expired, table_full,
       leases, high_water FROM lockext_stats;

-- a long application_name is kept up to its first 15 bytes
SET application_name = 'a-rather-long-application-name';
SELECT key FROM try_lock('views:c', 1000);
SELECT application_name, octet_length(application_name) AS bytes
  FROM lockext_leases WHERE key = 'views:c';
RESET application_name;

-- the shapes are the public contract
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'lockext_leases'::regclass AND attnum > 0 ORDER BY attnum;
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'lockext_stats'::regclass AND attnum > 0 ORDER BY attnum;
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'lock_handle'::regclass AND attnum > 0 ORDER BY attnum;

SELECT count(*) AS evicted FROM unnest(ARRAY['views:a', 'views:c']) k WHERE lockext_force_release(k);
SELECT lockext_test_clock_release();
SELECT count(*) AS leftover FROM lockext_leases;
