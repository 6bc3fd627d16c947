-- fence_limit: fence = timeline << 44 | counter.  When a timeline's counter
-- is used up a grant fails clearly; a fence never wraps or spills into the
-- next timeline.  (Runs last: it exhausts the counter of its test instance.)
SELECT timeline_id::bigint << 44 AS tl_base FROM pg_control_checkpoint() \gset
SELECT h.fence > :tl_base AND h.fence < :tl_base + (1::bigint << 44) AS fence_in_timeline,
       release(h) AS released
  FROM try_lock('limit:first', 1000) h;
SELECT lockext_test_set_fence_floor(:tl_base + (1::bigint << 44) - 2);
SELECT h.fence - :tl_base AS counter, h.fence = :tl_base + (1::bigint << 44) - 1 AS last_of_timeline,
       release(h) AS released
  FROM try_lock('limit:a', 1000) h;
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
