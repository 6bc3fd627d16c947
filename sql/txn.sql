-- txn: leases are not transactional (documented): ROLLBACK undoes nothing
BEGIN;
SELECT lock_id AS t_id FROM try_lock('txn:a', 30000) \gset
ROLLBACK;
SELECT count(*) AS held_after_rollback FROM lockext_leases WHERE key = 'txn:a';

BEGIN;
SAVEPOINT s;
SELECT release('txn:a', :'t_id') AS released_in_savepoint;
ROLLBACK TO s;
COMMIT;
SELECT count(*) AS held_after_savepoint_rollback FROM lockext_leases WHERE key = 'txn:a';

-- inside an aborted transaction PostgreSQL refuses the call
\set SHOW_CONTEXT never
BEGIN;
SELECT 1 / 0;
SELECT try_lock('txn:b', 1000);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT count(*) AS txn_b_leases FROM lockext_leases WHERE key = 'txn:b';

-- allowed in a read-only transaction, like advisory locks
BEGIN READ ONLY;
SELECT h.key, release(h) AS released FROM try_lock('txn:c', 1000) h;
COMMIT;

-- a function in a query's WHERE clause is called for every row: here three
-- grants of three keys, one statement
SELECT count(*) AS granted FROM generate_series(1, 3) k
 WHERE (try_lock('txn:multi' || k, 1000)).lock_id IS NOT NULL;
SELECT count(*) AS evicted FROM generate_series(1, 3) k WHERE lockext_force_release('txn:multi' || k);
SELECT count(*) AS leftover FROM lockext_leases;
