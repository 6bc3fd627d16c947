-- fence_order: every grant's fence is above every fence granted before it
SELECT lockext_test_clock_freeze();
SELECT fence AS f1, lock_id AS id1 FROM try_lock('fence:a', 100) \gset
SELECT fence AS f2, lock_id AS id2 FROM try_lock('fence:b', 100) \gset
SELECT :f2 > :f1 AS across_keys;

SELECT release('fence:a', :'id1');
SELECT fence AS f3, lock_id AS id3 FROM try_lock('fence:a', 100) \gset
SELECT :f3 > :f2 AS after_release;

SELECT renew('fence:a', :'id3');
SELECT fence = :f3 AS renew_keeps_fence FROM lockext_leases WHERE key = 'fence:a';

SELECT lockext_test_clock_advance(100);
SELECT fence AS f4 FROM try_lock('fence:a', 100) \gset
SELECT :f4 > :f3 AS after_expiry;

SELECT lockext_force_release('fence:a');
SELECT fence AS f5 FROM try_lock('fence:a', 100) \gset
SELECT :f5 > :f4 AS after_force_release;

-- contention does not hand out fences to anyone
SELECT try_lock('fence:a', 100) IS NULL AS contended;
SELECT fence AS f6 FROM try_lock('fence:c', 100) \gset
SELECT :f6 > :f5 AS still_increasing;

-- a batch: strictly increasing in grant order
SELECT bool_and(f > prev) AS batch_increasing
  FROM (SELECT h.fence AS f, lag(h.fence, 1, :f6) OVER (ORDER BY k) AS prev
          FROM generate_series(1, 4) k, LATERAL try_lock('fence:batch' || k, 100) h) s;

SELECT count(*) AS evicted
  FROM unnest(ARRAY['fence:a', 'fence:b', 'fence:c', 'fence:batch1', 'fence:batch2',
                    'fence:batch3', 'fence:batch4']) k
 WHERE lockext_force_release(k);
SELECT lockext_test_clock_release();
SELECT count(*) AS leftover FROM lockext_leases;
