-- api: grant, contention, renew and release in every form
-- (keys are prefixed 'api:'; everything taken here is released here)

SELECT lock_id AS a_id, fence AS a_fence, key AS a_key, ttl_ms AS a_ttl,
       expires_at > now() + interval '29 seconds'
         AND expires_at <= clock_timestamp() + interval '30 seconds' AS a_expiry_ok
  FROM try_lock('api:a', 30000) \gset
SELECT :'a_key' AS key, :a_ttl AS ttl_ms, :a_fence > 0 AS fence_positive,
       :'a_expiry_ok' AS expiry_about_ttl_from_now;
SELECT :'a_id' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'
       AS lock_id_is_uuid_v4;

-- contention is NULL (a row of NULLs from FROM), never an error
SELECT try_lock('api:a', 30000) IS NULL AS contended;
SELECT * FROM try_lock('api:a', 30000);
SELECT count(*) AS grants_in_from FROM try_lock('api:a', 30000) h WHERE h.lock_id IS NOT NULL;

-- renew, three forms
SELECT renew('api:a', :'a_id') AS renew_keep_ttl;
SELECT renew('api:a', :'a_id', 60000) AS renew_new_ttl;
SELECT ttl_ms, renewals, remaining_ms > 59000 AS extended FROM lockext_leases WHERE key = 'api:a';
SELECT renew(('api:a', :'a_id', 45000, :a_fence, now())::lock_handle) AS renew_handle;
SELECT ttl_ms, renewals FROM lockext_leases WHERE key = 'api:a';
-- the two-argument form keeps the TTL set last
SELECT renew('api:a', :'a_id') AS renew_keep_ttl;
SELECT ttl_ms, renewals, fence = :a_fence AS fence_unchanged FROM lockext_leases WHERE key = 'api:a';

-- release: true once, then a silent no-op
SELECT release('api:a', :'a_id') AS released;
SELECT release('api:a', :'a_id') AS released_again;
SELECT renew('api:a', :'a_id') AS renew_after_release;
SELECT count(*) AS leases_left FROM lockext_leases WHERE key = 'api:a';

-- a new grant of the same key gets a new lock_id and a higher fence
SELECT h.lock_id <> :'a_id' AS new_lock_id, h.fence > :a_fence AS higher_fence,
       release(h) AS released
  FROM try_lock('api:a', 30000) h;

-- handle overloads, with the handle kept in a lock_handle column
CREATE TEMP TABLE held (h lock_handle);
INSERT INTO held SELECT try_lock('api:c', 30000);
SELECT (h).key, renew(h) AS renew_handle, release(h) AS release_handle FROM held;
SELECT release(h) AS release_handle_again, renew(h) AS renew_handle_again FROM held;

-- the single-field form calls try_lock once
SELECT (try_lock('api:d', 30000)).lock_id IS NOT NULL AS granted_once;
SELECT count(*) AS api_d_leases FROM lockext_leases WHERE key = 'api:d';

-- the documented pitfall: (try_lock(...)).* calls the function once per
-- column, so the first column's call grants and the others see contention
SELECT (try_lock('api:e', 30000)).*;
SELECT lock_id IS NOT NULL AS api_e_held FROM lockext_leases WHERE key = 'api:e';

SELECT lockext_force_release('api:d') AS evicted_d, lockext_force_release('api:e') AS evicted_e;
SELECT lockext_force_release('api:e') AS evicted_again;
SELECT count(*) AS leftover FROM lockext_leases;
