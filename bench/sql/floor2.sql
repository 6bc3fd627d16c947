-- The floor: two round trips of the cheapest statement, as many as a lock cycle makes.
\set r random(:lo, :hi)
SELECT 1;
SELECT 1;
