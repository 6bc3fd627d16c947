-- scope: keys are per database and byte-exact
SELECT current_database() AS home_db \gset
CREATE DATABASE lockext_scope_other;
SELECT lock_id AS here_id FROM try_lock('scope:k', 30000) \gset

\c lockext_scope_other
CREATE EXTENSION lockext;
-- the same key in another database is a different lock
SELECT lock_id AS there_id FROM try_lock('scope:k', 30000) \gset
SELECT :'here_id' <> :'there_id' AS independent;
-- the first database's lock_id does nothing here
SELECT release('scope:k', :'here_id') AS cross_database_release;
SELECT datname = current_database() AS this_db, key FROM lockext_leases
 WHERE key = 'scope:k' ORDER BY 1;
SELECT release('scope:k', :'there_id') AS released_there;

\c :home_db
SELECT release('scope:k', :'here_id') AS released_here;
DROP DATABASE lockext_scope_other;

-- byte-exact: case, trailing space and Unicode normalization are distinct keys
CREATE TEMP TABLE variants (label text, k text);
INSERT INTO variants VALUES
  ('upper', 'scope:A'), ('lower', 'scope:a'), ('trailing space', 'scope:a '),
  ('NFC e-acute', 'scope:' || U&'\00E9'), ('NFD e + combining acute', 'scope:' || U&'e\0301');
SELECT label, octet_length(k) AS bytes, (try_lock(k, 30000)).lock_id IS NOT NULL AS granted
  FROM variants ORDER BY label;
SELECT count(*) AS distinct_leases FROM lockext_leases WHERE key IN (SELECT k FROM variants);
SELECT count(*) AS evicted FROM variants WHERE lockext_force_release(k);
SELECT count(*) AS leftover FROM lockext_leases;
