-- admin_1_1: lockext_grace_end() and lockext_fence_resume(), new in 1.1
SELECT extversion FROM pg_extension WHERE extname = 'lockext';
CREATE ROLE lockext_plain LOGIN;

-- not for PUBLIC
SET ROLE lockext_plain;
\set VERBOSITY terse
SELECT lockext_grace_end();
\echo :LAST_ERROR_SQLSTATE
SELECT lockext_fence_resume(0);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
RESET ROLE;

-- no grace period in force: nothing to end
SELECT active, reason FROM lockext_grace();
SELECT lockext_grace_end() AS was_active;

-- bad floors
SELECT lockext_fence_resume(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT lockext_fence_resume(-1);
\echo :LAST_ERROR_SQLSTATE
SELECT timeline_id::bigint << 44 AS tl_base FROM pg_control_checkpoint() \gset
SELECT lockext_fence_resume(:tl_base + (1::bigint << 44));
\echo :LAST_ERROR_SQLSTATE

-- a floor raises the fence; a lower one never lowers it
SELECT fence AS before_fence FROM try_lock('admin11:a', 1000) \gset
SELECT lockext_fence_resume(:before_fence + 1000000) = :before_fence + 1000000 AS raised_to_floor;
SELECT fence > :before_fence + 1000000 AS above_floor FROM try_lock('admin11:b', 1000);
SELECT fence AS after_fence FROM try_lock('admin11:c', 1000) \gset
SELECT lockext_fence_resume(0) >= :after_fence AS never_lowered;
SELECT fence > :after_fence AS still_rising FROM try_lock('admin11:d', 1000);

-- the handle's fence is the lease's, whatever the key's length (1- and 4-byte varlena headers)
SELECT fence AS short_fence FROM try_lock('admin11:e', 1000) \gset
SELECT fence = :short_fence AS short_key_fence_ok FROM lockext_leases WHERE key = 'admin11:e';
SELECT fence AS long_fence, ttl_ms FROM try_lock(repeat('k', 200), 1234) \gset
SELECT fence = :long_fence AS long_key_fence_ok, :ttl_ms = 1234 AS ttl_ok
  FROM lockext_leases WHERE key = repeat('k', 200);

SELECT count(*) AS evicted
  FROM unnest(ARRAY['admin11:a', 'admin11:b', 'admin11:c', 'admin11:d', 'admin11:e', repeat('k', 200)]) k
 WHERE lockext_force_release(k);
DROP ROLE lockext_plain;
