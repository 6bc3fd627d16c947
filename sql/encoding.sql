-- encoding: in a SQL_ASCII database any bytes are a key, compared exactly
SELECT current_database() AS home_db \gset
CREATE DATABASE lockext_ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
\c lockext_ascii
CREATE EXTENSION lockext;
SELECT lock_id AS raw_id FROM try_lock(E'enc:\xff\xfe', 30000) \gset
SELECT try_lock(E'enc:\xff\xfe', 30000) IS NULL AS same_bytes_contend;
SELECT h.lock_id IS NOT NULL AS other_bytes_granted, release(h) AS released
  FROM try_lock(E'enc:\xff\xfd', 30000) h;
SELECT key = E'enc:\xff\xfe' AS round_trips, octet_length(key) AS bytes
  FROM lockext_leases WHERE datname = current_database();

\c :home_db
-- seen from a UTF8 database the key is not valid text: shown as NULL
SELECT key IS NULL AS key_hidden, fence > 0 AS has_fence
  FROM lockext_leases WHERE datname = 'lockext_ascii';

\c lockext_ascii
SELECT release(E'enc:\xff\xfe', :'raw_id') AS released;
\c :home_db
DROP DATABASE lockext_ascii;
SELECT count(*) AS leftover FROM lockext_leases;
