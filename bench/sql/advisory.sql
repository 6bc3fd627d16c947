-- Session-level advisory lock on the key's 64-bit hash: try, then unlock (skipped on contention).
\set r random(:lo, :hi)
SELECT pg_try_advisory_lock(hashtextextended('k' || :r, 0))::int AS got \gset
\if :got
SELECT pg_advisory_unlock(hashtextextended('k' || :r, 0));
\endif
