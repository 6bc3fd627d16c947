-- Advisory lock through a transaction-pooling PgBouncer: a session-level advisory lock
-- only stays on one server connection inside an explicit transaction, so the cycle
-- needs BEGIN and COMMIT around it (4 round trips instead of 2).
\set r random(:lo, :hi)
BEGIN;
SELECT pg_try_advisory_lock(hashtextextended('k' || :r, 0))::int AS got \gset
\if :got
SELECT pg_advisory_unlock(hashtextextended('k' || :r, 0));
\endif
COMMIT;
