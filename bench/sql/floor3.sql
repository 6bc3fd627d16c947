-- The floor for the three-statement renew cycle.
\set r random(:lo, :hi)
SELECT 1;
SELECT 1;
SELECT 1;
