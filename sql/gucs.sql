-- gucs: names, contexts, defaults and limits of every lockext setting
SELECT name, setting, unit, context, vartype, min_val, max_val, boot_val
  FROM pg_settings WHERE name LIKE 'lockext.%' ORDER BY name;

-- the prefix is reserved, and the server-wide settings cannot be SET
\set SHOW_CONTEXT never
SET lockext.no_such_setting = 1;
\echo :LAST_ERROR_SQLSTATE
SET lockext.max_ttl_ms = 1000;
\echo :LAST_ERROR_SQLSTATE
SET lockext.max_locks = 100;
\echo :LAST_ERROR_SQLSTATE

-- lowering lockext.max_ttl_ms on reload: new grants obey it; a renewal that
-- keeps the lease's own TTL keeps it (shortening it silently would free the
-- key while its holder still believes it owns it)
SELECT lock_id AS g_id FROM try_lock('gucs:a', 200000) \gset
ALTER SYSTEM SET lockext.max_ttl_ms = '100s';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW lockext.max_ttl_ms;
SELECT try_lock('gucs:b', 200000);
\echo :LAST_ERROR_SQLSTATE
SELECT renew('gucs:a', :'g_id') AS renewed;
SELECT ttl_ms, remaining_ms > 100000 AS kept_own_ttl FROM lockext_leases WHERE key = 'gucs:a';
ALTER SYSTEM RESET lockext.max_ttl_ms;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW lockext.max_ttl_ms;
SELECT release('gucs:a', :'g_id') AS released;
