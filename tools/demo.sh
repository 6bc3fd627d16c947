#!/usr/bin/env bash
# Installs what lockext needs, builds and installs it, starts a throwaway
# cluster with lockext preloaded, shows the lease API at work, and stops it.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/tools/lib.sh"
require_root

"$top/tools/install-deps.sh"
scratch=$(make_scratch_dir)
trap 'pg_cluster_cleanup; rm -rf "$scratch"' EXIT
echo "== building and installing lockext"
build_and_install "$top" "$scratch/build.log"

echo "== starting a throwaway cluster with shared_preload_libraries = 'lockext'"
pg_cluster_start "$scratch/pg"
psql_as() { as_postgres "$PG_BIN/psql" -X -q -h "$PG_SOCKDIR" -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 "$@"; }

psql_as -c "CREATE ROLE app LOGIN; CREATE EXTENSION lockext;"
echo
echo "== client A (role app) takes 'nightly-report' for 2 s"
psql_as -U app -c "CREATE TEMP TABLE t AS SELECT * FROM try_lock('nightly-report', 2000);" \
	-c "SELECT key, fence, ttl_ms FROM t;" -c "\copy (SELECT lock_id FROM t) TO '$scratch/a.id'"
echo "== client B tries the same key: contention is a row of NULLs, not an error"
psql_as -U app -c "SELECT * FROM try_lock('nightly-report', 2000);"
echo "== client A renews with its lock_id (true), client B cannot release it (false)"
psql_as -U app -c "SELECT renew('nightly-report', '$(cat "$scratch/a.id")') AS a_renewed, release('nightly-report', gen_random_uuid()) AS b_released;"
echo "== the leases view"
psql_as -c "SELECT datname, key, fence, ttl_ms, remaining_ms, renewals, holder, application_name FROM lockext_leases;"
echo "== 2.5 s later the lease has expired: client B gets it with a higher fence"
sleep 2.5
psql_as -U app -c "SELECT key, fence, ttl_ms FROM try_lock('nightly-report', 30000) h WHERE h.lock_id IS NOT NULL;"
echo "== client A's late renew and release are no-ops (false): the new holder is untouched"
psql_as -U app -c "SELECT renew('nightly-report', '$(cat "$scratch/a.id")') AS a_renewed, release('nightly-report', '$(cat "$scratch/a.id")') AS a_released;"
psql_as -c "SELECT key, fence, remaining_ms > 0 AS held FROM lockext_leases;"
echo "== stats"
psql_as -c "SELECT acquired, contended, renewed, renew_failed, released, release_noop, expired, leases, max_locks FROM lockext_stats;"
echo "== lockext works. Stopping the throwaway cluster."
