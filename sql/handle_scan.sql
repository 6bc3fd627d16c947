-- handle_scan: SELECT ... FROM try_lock(...) planned as a lockext handle scan
-- returns what the function scan returns and calls try_lock as often, no more
-- (keys are prefixed 'hs:'; everything taken here is released here)

CREATE FUNCTION hs_calls() RETURNS bigint LANGUAGE sql
  AS $$ SELECT acquired + contended FROM lockext_stats $$;
CREATE TABLE hs_runs (mode text, query int, calls bigint, result text);

-- which plans take the handle scan
EXPLAIN (COSTS OFF) SELECT * FROM try_lock('hs:a', 60000);
EXPLAIN (COSTS OFF) SELECT lock_id, fence FROM try_lock('hs:a', 60000) WHERE fence > 0;
EXPLAIN (COSTS OFF) SELECT count(*) FROM try_lock('hs:a', 60000);
-- whole-row references, ORDINALITY, ROWS FROM, LATERAL and other functions keep the function scan
EXPLAIN (COSTS OFF) SELECT h FROM try_lock('hs:a', 60000) h;
EXPLAIN (COSTS OFF) SELECT * FROM try_lock('hs:a', 60000) WITH ORDINALITY;
EXPLAIN (COSTS OFF) SELECT * FROM ROWS FROM (try_lock('hs:a', 60000), generate_series(1, 2));
EXPLAIN (COSTS OFF) SELECT h.fence FROM generate_series(1, 2) g, LATERAL try_lock('hs:' || g, 60000) h;
EXPLAIN (COSTS OFF) SELECT * FROM generate_series(1, 2);
SET lockext.handle_scan = off;
EXPLAIN (COSTS OFF) SELECT * FROM try_lock('hs:a', 60000);
RESET lockext.handle_scan;

-- the same queries with and without the handle scan: same rows, same number of calls
-- (each run starts with no 'hs:' lease; the results are compared below)
CREATE FUNCTION hs_run(mode text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  queries text[] := ARRAY[
    -- granted, then contention: one row of NULLs
    $q$SELECT key, ttl_ms, fence > 0 AS f, expires_at > now() AS e FROM try_lock('hs:a', 60000)$q$,
    $q$SELECT key, lock_id IS NULL AS n, fence FROM try_lock('hs:a', 60000)$q$,
    $q$SELECT count(*) FROM try_lock('hs:a', 60000)$q$,
    -- quals on the scan
    $q$SELECT key FROM try_lock('hs:b', 60000) WHERE fence > 0$q$,
    $q$SELECT key FROM try_lock('hs:b', 60000) WHERE fence > 0$q$,
    -- an uncorrelated subquery: called once
    $q$SELECT g, (SELECT key FROM try_lock('hs:c', 60000)) FROM generate_series(1, 3) g$q$,
    -- rescanned with a changed parameter the call does not use: called once (a function
    -- scan rewinds its tuplestore)
    $q$SELECT g, (SELECT t.key FROM try_lock('hs:d', 60000) t WHERE coalesce(t.fence, 0) > g)
        FROM generate_series(1, 3) g$q$,
    -- rescanned with a parameter the call uses: called per row
    $q$SELECT g, (SELECT key FROM try_lock('hs:e' || g, 60000)) FROM generate_series(1, 3) g$q$,
    -- joined (the caller turns off materialisation: the scan is rescanned): called once
    $q$SELECT g, t.key FROM generate_series(1, 3) g CROSS JOIN try_lock('hs:f', 60000) t$q$
  ];
  r text;
  before bigint;
BEGIN
  PERFORM lockext_force_release(key) FROM lockext_leases WHERE key LIKE 'hs:%';
  FOR i IN 1 .. array_length(queries, 1) LOOP
    before := hs_calls();
    EXECUTE format('SELECT string_agg(q::text, %L ORDER BY q::text) FROM (%s) q', ' ', queries[i]) INTO r;
    INSERT INTO hs_runs VALUES (mode, i, hs_calls() - before, r);
  END LOOP;
  PERFORM lockext_force_release(key) FROM lockext_leases WHERE key LIKE 'hs:%';
END $$;

SET enable_material = off;
SET enable_hashjoin = off;
SET enable_mergejoin = off;
SET join_collapse_limit = 1;
EXPLAIN (COSTS OFF) SELECT g, t.key FROM generate_series(1, 3) g CROSS JOIN try_lock('hs:f', 60000) t;
SELECT hs_run('handle scan');
SET lockext.handle_scan = off;
SELECT hs_run('function scan');
RESET lockext.handle_scan;
RESET enable_material;
RESET enable_hashjoin;
RESET enable_mergejoin;
RESET join_collapse_limit;
SELECT query, calls, result FROM hs_runs WHERE mode = 'handle scan' ORDER BY query;
SELECT h.query, h.calls AS handle_calls, f.calls AS function_calls, h.result = f.result AS same_rows
  FROM hs_runs h JOIN hs_runs f USING (query) WHERE h.mode = 'handle scan' AND f.mode = 'function scan'
  AND (h.calls <> f.calls OR h.result IS DISTINCT FROM f.result);

-- a prepared statement keeps working across executions, also when a call errors
PREPARE hs_take(text, bigint) AS SELECT key, fence > 0 AS f FROM try_lock($1, $2);
EXECUTE hs_take('hs:p', 60000);
EXECUTE hs_take('hs:p', 60000);
EXECUTE hs_take('hs:p', 0);
EXECUTE hs_take(NULL, 60000);
EXECUTE hs_take('hs:q', 60000);
DEALLOCATE hs_take;
SELECT count(*) AS released FROM lockext_leases WHERE key LIKE 'hs:%' AND lockext_force_release(key);

-- a cursor that scrolls back gets the same row, without a second call
BEGIN;
SELECT hs_calls() AS c0 \gset
DECLARE hs_cur SCROLL CURSOR FOR SELECT key FROM try_lock('hs:s', 60000);
FETCH NEXT hs_cur;
FETCH PRIOR hs_cur;
FETCH NEXT hs_cur;
SELECT hs_calls() - :c0 AS calls;
COMMIT;
SELECT lockext_force_release('hs:s');

DROP FUNCTION hs_run(text);
DROP TABLE hs_runs;
DROP FUNCTION hs_calls();
