-- fence_limit: near INT64_MAX a grant fails clearly; the fence never wraps.
-- (Runs last: it exhausts the counter of its test instance.)
SELECT lockext_test_set_fence_floor(9223372036854775806);
SELECT h.fence, release(h) AS released FROM try_lock('limit:a', 1000) h;
\set VERBOSITY default
SELECT * FROM try_lock('limit:b', 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS leases_left FROM lockext_leases;
-- the floor only raises the counter
SELECT lockext_test_set_fence_floor(5);
SELECT * FROM try_lock('limit:c', 1000);
\echo :LAST_ERROR_SQLSTATE
SELECT lockext_test_set_fence_floor(-1);
\echo :LAST_ERROR_SQLSTATE
