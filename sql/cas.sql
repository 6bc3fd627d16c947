-- cas: renew and release act only for the live holder's lock_id
SELECT lockext_test_clock_freeze();
SELECT lock_id AS a_id FROM try_lock('cas:a', 1000) \gset
SELECT lock_id AS b_id FROM try_lock('cas:b', 5000) \gset

-- unknown lock_id, and the lock_id of another key: no effect
SELECT renew('cas:a', gen_random_uuid()) AS renew_unknown,
       release('cas:a', gen_random_uuid()) AS release_unknown;
SELECT renew('cas:a', :'b_id') AS renew_other_keys_id,
       release('cas:a', :'b_id') AS release_other_keys_id;
SELECT key, lock_id = CASE key WHEN 'cas:a' THEN :'a_id'::uuid ELSE :'b_id'::uuid END AS holder_intact,
       renewals
  FROM lockext_leases WHERE key LIKE 'cas:%' ORDER BY key;

-- held at ttl - 1 ms, expired at ttl
SELECT lockext_test_clock_advance(999);
SELECT try_lock('cas:a', 1000) IS NULL AS held_at_999ms;
SELECT remaining_ms FROM lockext_leases WHERE key = 'cas:a';
SELECT lockext_test_clock_advance(1);
SELECT count(*) AS visible_at_1000ms FROM lockext_leases WHERE key = 'cas:a';

-- renew never resurrects an expired lease, even if nobody took the key
SELECT renew('cas:a', :'a_id') AS renew_expired;
SELECT renew('cas:a', :'a_id', 1000) AS renew_expired_with_ttl;
SELECT release('cas:a', :'a_id') AS release_expired;

-- a new holder takes over; the stale holder's calls do not touch it
SELECT lock_id AS a2_id FROM try_lock('cas:a', 1000) \gset
SELECT renew('cas:a', :'a_id') AS stale_renew, release('cas:a', :'a_id') AS stale_release;
SELECT lock_id = :'a2_id' AS new_holder_intact, renewals FROM lockext_leases WHERE key = 'cas:a';

-- renewing at ttl - 1 ms extends the lease; it expires exactly at the new deadline
SELECT lockext_test_clock_advance(999);
SELECT renew('cas:a', :'a2_id', 2000) AS renew_at_999ms;
SELECT lockext_test_clock_advance(1999);
SELECT remaining_ms FROM lockext_leases WHERE key = 'cas:a';
SELECT lockext_test_clock_advance(1);
SELECT renew('cas:a', :'a2_id') AS renew_after_expiry;

-- double release
SELECT lock_id AS a3_id FROM try_lock('cas:a', 1000) \gset
SELECT release('cas:a', :'a3_id') AS first_release;
SELECT release('cas:a', :'a3_id') AS second_release;

-- cas:b was granted for 5000 ms at t=0; the clock now reads 3999 ms
SELECT remaining_ms FROM lockext_leases WHERE key = 'cas:b';
SELECT release('cas:b', :'b_id') AS release_b;
SELECT lockext_test_clock_release();
SELECT count(*) AS leftover FROM lockext_leases;
