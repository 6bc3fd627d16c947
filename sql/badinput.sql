-- badinput: every bad argument gets an ERROR with a fitting SQLSTATE, and
-- none of them takes, changes or leaks a lease (testing.md section 3)
\set SHOW_CONTEXT never
SELECT acquired AS acquired_before FROM lockext_stats \gset

-- NULL key, ttl, lock_id, handle: 22004 (never a NULL that reads as contention)
SELECT try_lock(NULL, 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('bad:k', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT renew(NULL, gen_random_uuid());
\echo :LAST_ERROR_SQLSTATE
SELECT renew('bad:k', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT renew('bad:k', gen_random_uuid(), NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT release(NULL, gen_random_uuid());
\echo :LAST_ERROR_SQLSTATE
SELECT release('bad:k', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT renew(NULL::lock_handle);
\echo :LAST_ERROR_SQLSTATE
SELECT release(NULL::lock_handle);
\echo :LAST_ERROR_SQLSTATE
SELECT release(('bad:k', NULL, 1000, 1, now())::lock_handle);
\echo :LAST_ERROR_SQLSTATE
SELECT renew(('bad:k', gen_random_uuid(), NULL, 1, now())::lock_handle);
\echo :LAST_ERROR_SQLSTATE
SELECT renew((NULL, gen_random_uuid(), 1000, 1, now())::lock_handle);
\echo :LAST_ERROR_SQLSTATE
SELECT lockext_force_release(NULL);
\echo :LAST_ERROR_SQLSTATE
-- the key is checked first
SELECT renew(NULL, NULL, 0);
\echo :LAST_ERROR_SQLSTATE

-- empty and too-long keys: 22023, the length in the detail, never truncated
SELECT try_lock('', 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock(repeat('x', 257), 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock(repeat('é', 129), 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock(repeat('x', 1000000), 1000);
\echo :LAST_ERROR_SQLSTATE
CREATE TEMP TABLE big (k text);
INSERT INTO big VALUES (repeat('ab', 500000));
SELECT pg_column_size(k) < 100000 AS stored_compressed FROM big;
SELECT try_lock(k, 1000) FROM big;
\echo :LAST_ERROR_SQLSTATE
SELECT renew('', gen_random_uuid());
\echo :LAST_ERROR_SQLSTATE
SELECT release(repeat('x', 300), gen_random_uuid());
\echo :LAST_ERROR_SQLSTATE
SELECT lockext_force_release('');
\echo :LAST_ERROR_SQLSTATE
-- exactly max_key_length bytes is fine
SELECT octet_length(h.key) AS key_bytes, release(h) AS released FROM try_lock(repeat('x', 256), 1000) h;

-- TTL out of range: 22023 naming the limit, checked before any arithmetic
SELECT try_lock('bad:k', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('bad:k', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('bad:k', 300001);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('bad:k', 9223372036854775807);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('bad:k', -9223372036854775808);
\echo :LAST_ERROR_SQLSTATE
SELECT renew('bad:k', gen_random_uuid(), 0);
\echo :LAST_ERROR_SQLSTATE
SELECT renew('bad:k', gen_random_uuid(), 300001);
\echo :LAST_ERROR_SQLSTATE
-- the maximum itself is fine
SELECT h.ttl_ms, release(h) AS released FROM try_lock('bad:max', 300000) h;

-- rejected by PostgreSQL before lockext runs
SELECT try_lock('bad:k', '9223372036854775808');
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('bad:k', 9223372036854775808);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('bad:k', 1.5);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('bad:k', '1.5');
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock('bad:k', 'abc');
\echo :LAST_ERROR_SQLSTATE
SELECT renew('bad:k', 'abc');
\echo :LAST_ERROR_SQLSTATE
SELECT release('bad:k', '0123456789abcdef0123456789abcdef0');
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock(chr(0), 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT try_lock(convert_from('\xff'::bytea, 'UTF8'), 1000);
\echo :LAST_ERROR_SQLSTATE

-- nothing was granted, nothing is left
SELECT acquired - :acquired_before AS acquired_during_test, leases FROM lockext_stats;
