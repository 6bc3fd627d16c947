-- lockext cycle: try_lock, then release with the lock_id (skipped on contention).
\set r random(:lo, :hi)
SELECT lock_id AS lid, (lock_id IS NOT NULL)::int AS got FROM try_lock('k' || :r, 60000) \gset
\if :got
SELECT release('k' || :r, :lid);
\endif
