-- Control: the lockext cycle's SQL shape without a lock (same parameters, a uuid out through
-- \gset and back in, the \if), to separate the statements' own cost from lockext's.
\set r random(:lo, :hi)
SELECT lock_id AS lid, (lock_id IS NOT NULL)::int AS got FROM (SELECT 'k' || :r AS key, '6ba7b810-9dad-41d1-80b4-00c04fd430c8'::uuid AS lock_id) h \gset
\if :got
SELECT ('k' || :r) IS NOT NULL AND :lid::uuid IS NOT NULL;
\endif
