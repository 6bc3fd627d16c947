-- lockext cycle with one renewal: try_lock, renew, release (renew and release skipped on contention).
\set r random(:lo, :hi)
SELECT lock_id AS lid, (lock_id IS NOT NULL)::int AS got FROM try_lock('k' || :r, 60000) \gset
\if :got
SELECT renew('k' || :r, :lid);
SELECT release('k' || :r, :lid);
\endif
