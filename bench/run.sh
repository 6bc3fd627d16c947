#!/usr/bin/env bash
# bench/run.sh: lockext against the PostgreSQL alternatives and the protocol's floor,
# measured side by side on one machine in one run.
#
#   bench/run.sh --smoke          # ~2 s per cell, one run: checks every cell works (CI)
#   bench/run.sh                  # full: 10 s per cell, 3 runs, medians
#   options: --runs N  --duration S (per cell and run)  --slice S (round-robin slice, default 2)
#            --profile (callgrind of the in-server loop)
#            --out DIR (default bench/results; smoke: bench/results-smoke)  --keep (keep the scratch dir)
#            --no-huge-pages (skip the huge-pages scale step, which raises vm.nr_hugepages for its duration)
#
# Run as root on Debian 12 after the top-level `make install` (extension + client library).
# It installs missing Debian packages, starts its own PostgreSQL 15 (as the postgres user,
# lockext preloaded), PgBouncer (transaction pooling) and redis-server on 127.0.0.1, runs
# every cell with a time bound, stops what it started, prints one table, writes
# results.csv (medians), raw.csv (every run) and results.png, and ends with
# "N passed, M failed" (a cell passes when it ran and measured a positive rate).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../tools/lib.sh"
. "$HERE/../tools/pgbouncer.sh"

SMOKE=0 RUNS= DURATION= SLICE= PROFILE=0 OUT= KEEP=0 HUGE=1 HUGE_OLD=
while [ $# -gt 0 ]; do
	case $1 in
	--smoke) SMOKE=1 ;;
	--runs) RUNS=$2; shift ;;
	--duration) DURATION=$2; shift ;;
	--slice) SLICE=$2; shift ;;
	--profile) PROFILE=1 ;;
	--out) OUT=$2; shift ;;
	--keep) KEEP=1 ;;
	--no-huge-pages) HUGE=0 ;;
	-h|--help) sed -n '2,17p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
if [ $SMOKE = 1 ]; then
	: "${RUNS:=1}" "${DURATION:=2}" "${SLICE:=2}" "${OUT:=$HERE/results-smoke}"
	INSERVER_N=100000 SCALE_N=50000
else
	: "${RUNS:=3}" "${DURATION:=10}" "${SLICE:=2}" "${OUT:=$HERE/results}"
	INSERVER_N=1000000 SCALE_N=200000
fi
MAX_LOCKS=1000000        # lockext.max_locks of the benchmark server
SCALE_FILL=999000        # live leases in the "full" scale point (1000 slots stay free for the cycles)
SMALL_LOCKS=10000        # second size for the shared-memory-per-slot measurement
BOUNCER_POOL=8           # PgBouncer default_pool_size (server connections behind 32 clients)
PIPE_CONNS=1             # server connections of the pipelined client (PgOptions::pipeline_connections)
T0=$SECONDS

say() { printf '[bench %4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs packages and runs PostgreSQL as the postgres user"

# ---- 1. packages ------------------------------------------------------------------
need=()
for p in postgresql-15 postgresql-client-15 pgbouncer redis-server gnuplot-nox g++ pkg-config libpq-dev; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
[ $PROFILE = 1 ] && { dpkg -s valgrind >/dev/null 2>&1 || need+=(valgrind); }
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >/dev/null 2>&1 ||
		die "apt-get install ${need[*]} failed"
fi
[ -f "$("$PG_CONFIG" --pkglibdir)/lockext.so" ] || die "lockext is not installed: run 'make install' at the top level first"
pkg-config --exists lockext-client || die "lockext-client.pc not found: run 'make install' at the top level first"

# ---- 2. scratch dir, drivers --------------------------------------------------------
WORK=$(mktemp -d /tmp/lockext-bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/bin" "$WORK/sql" "$WORK/out" "$WORK/redis" "$WORK/pgb" "$OUT"
BOUNCER_PID= REDIS_PID=
cleanup() {
	[ -n "$HUGE_OLD" ] && echo "$HUGE_OLD" >/proc/sys/vm/nr_hugepages 2>/dev/null
	[ -n "$BOUNCER_PID" ] && kill "$BOUNCER_PID" 2>/dev/null
	[ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null
	pg_cluster_cleanup
	if [ $KEEP = 1 ]; then say "scratch dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building the drivers"
g++ -std=c++23 -O2 -o "$WORK/bin/client_bench" "$HERE/client_bench.cpp" \
	$(pkg-config --cflags --libs lockext-client) -pthread 2>"$WORK/build.log" || { cat "$WORK/build.log" >&2; die "client_bench build failed"; }
g++ -std=c++23 -O2 -o "$WORK/bin/advisory_libpq" "$HERE/advisory_libpq.cpp" \
	$(pkg-config --cflags --libs libpq) -pthread 2>>"$WORK/build.log" || { cat "$WORK/build.log" >&2; die "advisory_libpq build failed"; }
g++ -std=c++17 -O2 -o "$WORK/bin/redis_lock" "$HERE/redis_lock.cpp" -pthread 2>>"$WORK/build.log" ||
	{ cat "$WORK/build.log" >&2; die "redis_lock build failed"; }

RPORT=$(free_port)

# ---- 3. servers ---------------------------------------------------------------------
cp "$HERE"/sql/*.sql "$WORK/sql/"
for t in lease_logged lease_unlogged; do sed "s/@TABLE@/$t/g" "$HERE/sql/lease.sql.in" >"$WORK/sql/$t.sql"; done
chown -R postgres:postgres "$WORK"

pg_cluster_start "$WORK/pg" "max_connections = 120" "shared_buffers = 256MB" "lockext.max_locks = $MAX_LOCKS" \
	"lockext.max_ttl_ms = 3600000" "lockext.save = off" || die "PostgreSQL failed to start"
say "initdb and start PostgreSQL 15 on 127.0.0.1:$PG_PORT"
pg_start() { pg_cluster_ctl -w -t 120 start "$@" >/dev/null 2>&1 || { tail -20 "$PG_LOG" >&2; die "PostgreSQL failed to start"; }; }
pg_stop() { pg_cluster_ctl -m fast -w -t 120 stop >/dev/null 2>&1; }
psqlc() { $PG_BIN/psql "$PG_DSN" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
psqlc <<'SQL' || die "setup SQL failed"
CREATE EXTENSION lockext;
CREATE TABLE lease_logged (key text PRIMARY KEY, lock_id uuid NOT NULL, expires_at timestamptz NOT NULL);
CREATE UNLOGGED TABLE lease_unlogged (key text PRIMARY KEY, lock_id uuid NOT NULL, expires_at timestamptz NOT NULL);
SQL

pgbouncer_start_free "$WORK/pgb" "$PG_PORT" "$BOUNCER_POOL" 200 ||
	die "cannot connect through PgBouncer: $(tail -n 3 "$WORK/pgb/pgbouncer.log")"
BPORT=$PGB_PORT BOUNCER_PID=$PGB_PID
say "start PgBouncer (transaction pooling) on 127.0.0.1:$BPORT"
BDSN="host=127.0.0.1 port=$BPORT dbname=postgres user=postgres"

say "start redis-server on 127.0.0.1:$RPORT (save \"\", appendonly no)"
chown postgres:postgres "$WORK/redis"
runuser -u postgres -- redis-server --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly no \
	--daemonize yes --dir "$WORK/redis" --pidfile "$WORK/redis/redis.pid" --logfile "$WORK/redis/redis.log" >/dev/null 2>&1 ||
	die "redis-server failed to start"
for _ in $(seq 50); do [ -s "$WORK/redis/redis.pid" ] && break; sleep 0.1; done
REDIS_PID=$(cat "$WORK/redis/redis.pid" 2>/dev/null)
redis-cli -p "$RPORT" ping >/dev/null 2>&1 || die "cannot reach redis-server"

# ---- 4. cells -----------------------------------------------------------------------
# raw.csv: run,workload,path,clients,ops_s,lat_us,grants_s,rt_per_op,floor
RAW="$WORK/raw.csv"
echo "run,workload,path,clients,ops_s,lat_us,grants_s,rt_per_op,floor" >"$RAW"
PASSED=0 FAILED=0 FAILED_CELLS=()
record() { # run workload path clients ops lat grants rt floor
	echo "$1,$2,$3,$4,$5,$6,$7,$8,$9" >>"$RAW"
	if awk -v x="$5" 'BEGIN { exit !(x > 0) }'; then PASSED=$((PASSED + 1)); else
		FAILED=$((FAILED + 1)); FAILED_CELLS+=("$2/$3/$4 (run $1)"); fi
}
xact_commits() { psqlc -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'"; }
lockext_acquired() { psqlc -c "SELECT acquired FROM lockext_stats"; }

# Cells run in slices of $SLICE seconds, round-robin: every workload of one concurrency
# gets one slice, then the next round starts, until each has had $DURATION seconds. On a
# shared, noisy machine this spreads the noise over all workloads alike, so the ratios
# taken within a run compare like with like. Every slice appends a row to $SLICES:
#   run,workload,path,clients,cycles,seconds,grants(-1 = not counted),lat_ms,base_rt,floor,ok
SLICES="$WORK/slices.csv"
: >"$SLICES"

# pgbench_cell RUN WORKLOAD SCRIPT PATH(direct|pgbouncer) CLIENTS HOT(0|1) FLOOR BASE_RT [PGOPTIONS]
# BASE_RT: round trips of a granted cycle. PGOPTIONS: session settings of the clients
# (e.g. "-c lockext.handle_scan=off"). Grants of hot-key cells are counted from the
# server (lockext_stats.acquired for lockext; for the others the commits of the database:
# every statement is its own transaction, a refused attempt makes 1, a granted one BASE_RT).
pgbench_cell() {
	local run=$1 wl=$2 script=$3 path=$4 c=$5 hot=$6 floor=$7 rt=$8 pgoptions=${9:-}
	local dsn=$PG_DSN mode=prepared j=$(( $5 < 2 ? 1 : 2 )) lo=1 hi=100000 out="$WORK/out/$wl-$path-$c-$run.txt"
	[ "$path" = pgbouncer ] && { dsn=$BDSN; mode=extended; }
	[ "$hot" = 1 ] && { lo=0; hi=0; }
	local x0= a0=
	if [ "$hot" = 1 ]; then x0=$(xact_commits); a0=$(lockext_acquired); fi
	PGOPTIONS=$pgoptions timeout $((SLICE + 60)) $PG_BIN/pgbench "$dsn" -n -M $mode -c "$c" -j "$j" -T "$SLICE" \
		-D lo=$lo -D hi=$hi -f "$WORK/sql/$script" >"$out" 2>&1
	local rc=$? ok=1 tps lat n g=-1
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | tail -1)
	lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$out")
	n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
	if [ $rc != 0 ] || grep -q 'aborted\|error' "$out"; then
		say "cell $wl/$path/$c failed (rc $rc):"; grep -i 'error\|abort' "$out" | head -3 >&2; ok=0
	fi
	: "${tps:=0}" "${lat:=0}" "${n:=0}"
	if [ "$hot" = 1 ] && [ "$n" -gt 0 ]; then
		if [[ $wl == lockext* ]]; then
			g=$(( $(lockext_acquired) - a0 ))
		else
			sleep 0.3 # the pgbench backends flush their statistics as they exit
			g=$(( ($(xact_commits) - x0 - n - 2) / (rt - 1) ))
			[ $g -lt 0 ] && g=0
		fi
	fi
	echo "$run,$wl,$path,$c,$n,$(awk -v n=$n -v t=$tps 'BEGIN { printf "%.4f", (t > 0) ? n / t : 0 }'),$g,$lat,$rt,$floor,$ok" >>"$SLICES"
}

# driver_cell RUN WORKLOAD PATH CLIENTS FLOOR COMMAND...: a driver that prints cycles= etc.
# (its duration argument is $SLICE). Grants are always counted; a granted cycle is 2 round trips.
driver_cell() {
	local run=$1 wl=$2 path=$3 c=$4 floor=$5
	shift 5
	local out="$WORK/out/$wl-$path-$c-$run.txt"
	timeout $((SLICE + 60)) "$@" >"$out" 2>&1
	local rc=$? ok=1 secs lat g n
	secs=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' "$out")
	lat=$(sed -n 's/.*avg_latency_us=\([0-9.]*\).*/\1/p' "$out")
	n=$(sed -n 's/.*cycles=\([0-9]*\).*/\1/p' "$out")
	g=$(sed -n 's/.*grants=\([0-9]*\).*/\1/p' "$out")
	if [ $rc != 0 ] || [ -z "$n" ]; then say "cell $wl/$path/$c failed (rc $rc):"; head -3 "$out" >&2; ok=0; fi
	: "${secs:=0}" "${lat:=0}" "${n:=0}" "${g:=0}"
	echo "$run,$wl,$path,$c,$n,$secs,$g,$(awk -v l=$lat 'BEGIN { printf "%.4f", l / 1000 }'),2,$floor,$ok" >>"$SLICES"
}

# aggregate: turns the slices collected so far into one raw.csv row per cell, then empties
# $SLICES. ops/s = cycles / seconds over all slices; latency weighted by cycles; hot-key
# cells also get grants/s and the round trips per attempt (1 + (base - 1) x grants / attempts).
aggregate() {
	local run wl path c ops lat grants rtop floor ok
	while IFS=, read -r run wl path c ops lat grants rtop floor ok; do
		[ "$ok" = 1 ] || ops=0
		record "$run" "$wl" "$path" "$c" "$ops" "$lat" "$grants" "$rtop" "$floor"
		say "run $run  $(printf '%-22s %-9s %2s' "$wl" "$path" "$c")  $(printf '%10.0f' "$ops") ops/s${grants:+  grants $grants/s}"
	done < <(awk -F, '
		{ k = $1 "," $2 "," $3 "," $4; if (!(k in n)) { order[++m] = k }
		  n[k] += $5; t[k] += $6; lw[k] += $8 * $5; rt[k] = $9; fl[k] = $10
		  if ($7 >= 0) { g[k] += $7; counted[k] = 1 }
		  if (!(k in ok)) ok[k] = 1; if ($11 != 1 || $5 == 0) ok[k] = 0 }
		END { for (i = 1; i <= m; i++) { k = order[i]
		  split(k, f, ",")
		  ops = t[k] > 0 ? n[k] / t[k] : 0; lat = n[k] > 0 ? 1000 * lw[k] / n[k] : 0
		  gs = ""; rtop = rt[k]
		  if (counted[k] && n[k] > 0) { rtop = sprintf("%.4f", 1 + (rt[k] - 1) * g[k] / n[k])
		    if (f[2] ~ /hot/) gs = sprintf("%.1f", g[k] / t[k]) }
		  printf "%s,%.1f,%.1f,%s,%s,%s,%d\n", k, ops, lat, gs, rtop, fl[k], ok[k] } }' "$SLICES")
	: >"$SLICES"
}

say "warm-up (not recorded)"
for w in floor2.sql lockext.sql; do
	$PG_BIN/pgbench "$PG_DSN" -n -M prepared -c 8 -j 2 -T 1 -D lo=1 -D hi=100000 -f "$WORK/sql/$w" >/dev/null 2>&1
done
ROUNDS=$(( DURATION / SLICE )); [ "$ROUNDS" -ge 1 ] || ROUNDS=1
for run in $(seq 1 "$RUNS"); do
	say "---- run $run of $RUNS ($ROUNDS rounds of $SLICE s per cell)"
	for c in 1 8 32; do
		for round in $(seq 1 $ROUNDS); do
			pgbench_cell $run floor2             floor2.sql         direct $c 0 floor2 2
			pgbench_cell $run shape              shape.sql          direct $c 0 floor2 2
			pgbench_cell $run lockext            lockext.sql        direct $c 0 floor2 2
			pgbench_cell $run lockext_fnscan     lockext.sql        direct $c 0 floor2 2 "-c lockext.handle_scan=off"
			pgbench_cell $run lockext_hot        lockext.sql        direct $c 1 floor2 2
			pgbench_cell $run advisory           advisory.sql       direct $c 0 floor2 2
			pgbench_cell $run advisory_hot       advisory.sql       direct $c 1 floor2 2
			pgbench_cell $run lease_unlogged     lease_unlogged.sql direct $c 0 floor2 2
			pgbench_cell $run lease_unlogged_hot lease_unlogged.sql direct $c 1 floor2 2
			pgbench_cell $run lease_logged       lease_logged.sql   direct $c 0 floor2 2
			pgbench_cell $run lease_logged_hot   lease_logged.sql   direct $c 1 floor2 2
			pgbench_cell $run floor3             floor3.sql         direct $c 0 floor3 3
			pgbench_cell $run lockext_renew      lockext_renew.sql  direct $c 0 floor3 3
			driver_cell  $run advisory_libpq     client  $c floor2 "$WORK/bin/advisory_libpq" "$c" "$SLICE" "$PG_DSN"
			driver_cell  $run client_pg          client  $c floor2 "$WORK/bin/client_bench" pg "$c" "$SLICE" "$PG_DSN"
			driver_cell  $run client_pipeline    client  $c floor2 "$WORK/bin/client_bench" "pg-pipeline=$PIPE_CONNS" "$c" "$SLICE" "$PG_DSN"
			driver_cell  $run client_memory      client  $c floor2 "$WORK/bin/client_bench" memory "$c" "$SLICE"
			driver_cell  $run redis              redis   $c floor2 "$WORK/bin/redis_lock" "$RPORT" "$c" "$SLICE"
			driver_cell  $run redis_hot          redis   $c floor2 "$WORK/bin/redis_lock" "$RPORT" "$c" "$SLICE" 100000 1
			driver_cell  $run redis_pipe16       redis   $c floor2 "$WORK/bin/redis_lock" "$RPORT" "$c" "$SLICE" 100000 0 16
		done
		aggregate
	done
	for round in $(seq 1 $ROUNDS); do
		pgbench_cell $run floor2             floor2.sql         pgbouncer 32 0 floor2 2
		pgbench_cell $run lockext            lockext.sql        pgbouncer 32 0 floor2 2
		pgbench_cell $run lockext_hot        lockext.sql        pgbouncer 32 1 floor2 2
		pgbench_cell $run advisory_txn       advisory_txn.sql   pgbouncer 32 0 floor2 4
		driver_cell  $run client_pg          client-pgb 32 floor2 "$WORK/bin/client_bench" pg 32 "$SLICE" "$BDSN"
		driver_cell  $run client_pipeline    client-pgb 32 floor2 "$WORK/bin/client_bench" "pg-pipeline=$PIPE_CONNS" 32 "$SLICE" "$BDSN"
		pgbench_cell $run lease_unlogged     lease_unlogged.sql pgbouncer 32 0 floor2 2
	done
	aggregate
	psqlc -c "TRUNCATE lease_logged, lease_unlogged" -c "CHECKPOINT" >/dev/null
done

# ---- 5. in-server cost -----------------------------------------------------------------
# sql_ms SQL: server time of one statement in ms (psql \timing), after checking its result.
sql_ms() {
	local out
	out=$(printf '\\timing on\n%s\n' "$1" | psqlc 2>&1) || { echo "$out" >&2; echo 0; return; }
	echo "$out" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
REPS=$(( SMOKE == 1 ? 1 : 5 ))
LOCK_SQL="SELECT count(release(h.key, h.lock_id)) FROM generate_series(1, %d) g, LATERAL try_lock('%s' || g, 60000) h"
LOCKH_SQL="SELECT count(release(h)) FROM generate_series(1, %d) g, LATERAL try_lock('%s' || g, 60000) h"
BASE_SQL="SELECT count(int4abs(h)) FROM generate_series(1, %d) g, LATERAL textlen('%s' || g) h"
# inserver RUN-LABEL N PREFIX: records the net µs per try_lock+release pair (lockext minus trivial)
inserver() {
	local label=$1 n=$2 prefix=$3 lock base i check
	check=$(psqlc -c "$(printf "$LOCK_SQL" "$n" "$prefix")")
	[ "$check" = "$n" ] || say "in-server check: expected $n releases, got '$check'"
	lock=$(for i in $(seq $REPS); do sql_ms "$(printf "$LOCK_SQL" "$n" "$prefix")"; done | median)
	base=$(for i in $(seq $REPS); do sql_ms "$(printf "$BASE_SQL" "$n" "$prefix")"; done | median)
	[ "$check" = "$n" ] || lock=0
	local us_lock us_base us_net
	us_lock=$(awk -v t=$lock -v n=$n 'BEGIN { printf "%.3f", t * 1000 / n }')
	us_base=$(awk -v t=$base -v n=$n 'BEGIN { printf "%.3f", t * 1000 / n }')
	us_net=$(awk -v a=$us_lock -v b=$us_base 'BEGIN { printf "%.3f", a - b }')
	record 1 "${label}_gross" inserver 1 "$(awk -v u=$us_lock 'BEGIN { printf "%.1f", (u > 0) ? 1e6 / u : 0 }')" "$us_lock" "" 1 ""
	record 1 "${label}_trivial" inserver 1 "$(awk -v u=$us_base 'BEGIN { printf "%.1f", (u > 0) ? 1e6 / u : 0 }')" "$us_base" "" 1 ""
	record 1 "${label}_net" inserver 1 "$(awk -v u=$us_net -v l=$lock 'BEGIN { printf "%.1f", (u > 0 && l > 0) ? 1e6 / u : 0 }')" "$us_net" "" 1 ""
	say "in-server $label: $us_lock µs per pair, trivial $us_base µs, net $us_net µs ($n pairs, median of $REPS)"
}
say "in-server cost: $INSERVER_N try_lock+release pairs in one statement"
inserver pair "$INSERVER_N" k
HMS=$(for i in $(seq $REPS); do sql_ms "$(printf "$LOCKH_SQL" "$INSERVER_N" k)"; done | median)
HUS=$(awk -v t=$HMS -v n=$INSERVER_N 'BEGIN { printf "%.3f", t * 1000 / n }')
record 1 pair_handle_gross inserver 1 "$(awk -v u=$HUS 'BEGIN { printf "%.1f", (u > 0) ? 1e6 / u : 0 }')" "$HUS" "" 1 ""
say "in-server, release(h) whole-handle form: $HUS µs per pair (gross)"

# ---- 6. scale: 1k vs 999k live leases (lockext.max_locks = 1,000,000) --------------------
say "scale: 1000 live leases"
psqlc -c "SELECT count(try_lock('fill-' || g, 3600000)) FROM generate_series(1, 1000) g" >/dev/null
inserver scale_1k "$SCALE_N" s
say "scale: filling to $SCALE_FILL live leases"
psqlc -c "SELECT count(try_lock('fill-' || g, 3600000)) FROM generate_series(1001, $SCALE_FILL) g" >/dev/null
LIVE=$(psqlc -c "SELECT leases FROM lockext_stats")
say "scale: $LIVE live leases"
inserver scale_999k "$SCALE_N" s
for round in $(seq 1 $ROUNDS); do
	pgbench_cell 1 lockext_999k_live lockext.sql direct 8 0 floor2 2
done
aggregate

# ---- 6b. the same with huge pages (huge_pages = on, a vm.nr_hugepages reservation) ---------
# A 1,000,000-slot table is ~640 MiB of shared memory: with 4 KiB pages nearly every probe of
# a new key also misses the TLB. The reservation is raised for the measurement and put back
# on exit (cleanup). Skipped with --no-huge-pages or when the kernel refuses it.
if [ $HUGE = 1 ]; then
	HP_NEED=$(psqlc -c "SHOW shared_memory_size_in_huge_pages")
	HUGE_OLD=$(cat /proc/sys/vm/nr_hugepages)
	echo $((HUGE_OLD + HP_NEED + 8)) >/proc/sys/vm/nr_hugepages 2>/dev/null
	HP_HAVE=$(awk '/HugePages_Free/ { print $2 }' /proc/meminfo)
	if [ "${HP_HAVE:-0}" -ge "$HP_NEED" ]; then
		say "huge pages: $HP_NEED needed, $HP_HAVE free (vm.nr_hugepages $HUGE_OLD -> $(cat /proc/sys/vm/nr_hugepages))"
		pg_stop
		pg_start -o "-c huge_pages=on"
		psqlc -c "SELECT lockext_grace_end()" >/dev/null # a restart with lockext.save = off starts a grace period
		psqlc -c "SELECT count(try_lock('fill-' || g, 3600000)) FROM generate_series(1, 1000) g" >/dev/null
		inserver scale_hp_1k "$SCALE_N" s
		psqlc -c "SELECT count(try_lock('fill-' || g, 3600000)) FROM generate_series(1001, $SCALE_FILL) g" >/dev/null
		inserver scale_hp_999k "$SCALE_N" s
		pg_stop
		pg_start
	else
		say "huge pages: the kernel gave $HP_HAVE of $HP_NEED pages; skipped"
	fi
	echo "$HUGE_OLD" >/proc/sys/vm/nr_hugepages 2>/dev/null
	HUGE_OLD=
fi

# ---- 7. shared memory per slot ------------------------------------------------------------
SHMEM_SQL="SELECT sum(allocated_size) FROM pg_shmem_allocations WHERE name IS NOT NULL"
KEYLEN=$(psqlc -c "SHOW lockext.max_key_length")
SH_BIG=$(psqlc -c "$SHMEM_SQL")
pg_stop
pg_start -o "-c lockext.max_locks=$SMALL_LOCKS"
SH_SMALL=$(psqlc -c "$SHMEM_SQL")
PER_SLOT=$(awk -v a=$SH_BIG -v b=$SH_SMALL -v n=$((MAX_LOCKS - SMALL_LOCKS)) 'BEGIN { printf "%.1f", (a - b) / n }')
psqlc -c "SELECT name, allocated_size FROM pg_shmem_allocations WHERE name ILIKE '%lockext%' ORDER BY 2 DESC" >"$WORK/shmem_small.txt"
pg_stop
record 1 shmem_per_slot inserver 1 "$PER_SLOT" "" "" "" ""
say "shared memory: $SH_BIG B at max_locks=$MAX_LOCKS, $SH_SMALL B at $SMALL_LOCKS: $PER_SLOT B per slot (max_key_length $KEYLEN)"

# ---- 8. profile (optional) ----------------------------------------------------------------
if [ $PROFILE = 1 ]; then
	say "callgrind: single-user backend running 100000 pairs and the trivial statement"
	for what in lock base; do
		if [ $what = lock ]; then q=$(printf "$LOCK_SQL" 100000 p); else q=$(printf "$BASE_SQL" 100000 p); fi
		# a restart with lockext.save = off started a grace period, which is durable: end it,
		# or every try_lock is refused (in both files, so the difference cancels it)
		printf 'SELECT lockext_grace_end();\n%s\n' "$q" >"$WORK/profile-$what.sql"
		chown postgres "$WORK/profile-$what.sql"
		(cd "$WORK" && runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.$what" \
			--trace-children=no $PG_BIN/postgres --single -D "$PG_DATA" -c lockext.max_locks=$SMALL_LOCKS \
			-c lockext.recovery_grace_ms=0 postgres \
			<"$WORK/profile-$what.sql" >"$WORK/profile-$what.log" 2>&1)
	done
	total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }'; }
	IL=$(total "$WORK/callgrind.lock") IB=$(total "$WORK/callgrind.base")
	{
		echo "callgrind, single-user backend, 100000 pairs: $(printf "$LOCK_SQL" 100000 p)"
		echo "total instructions: lockext statement $IL, trivial statement $IB"
		echo "net instructions per try_lock+release pair: $(( (IL - IB) / 100000 ))"
		echo
		echo "== call trees under the lockext entry points (inclusive Ir, calls)"
		callgrind_annotate --inclusive=yes --tree=calling "$WORK/callgrind.lock" 2>/dev/null |
			awk '/^ *[0-9,]+ .*\*  .*(lockext_try_lock|lockext_release|pg_strong_random|LockTableGrant|LockTableRelease) \[/ { p = 1 }
			     p && /^$/ { p = 0; print "" } p { print }'
		echo "== inclusive, top 60"
		callgrind_annotate --inclusive=yes "$WORK/callgrind.lock" 2>/dev/null | sed -n '20,80p'
		echo "== exclusive, top 40"
		callgrind_annotate "$WORK/callgrind.lock" 2>/dev/null | sed -n '20,60p'
	} >"$OUT/profile.txt"
	# Statement level: the pgbench scripts' SQL as prepared statements, 10000 EXECUTE
	# cycles each (the release gets a lock_id that does not match: the no-op path), minus
	# a run that only prepares: instructions per cycle in the backend, protocol excluded.
	stmt_sql() { # NAME: header + cycles (the grace period of the last restart ended first)
		echo "SELECT lockext_grace_end();"
		case $1 in
		one) printf '%s\n' "PREPARE t(int) AS SELECT 1;" "PREPARE r(int, uuid) AS SELECT 1;" ;;
		ctl) printf '%s\n' "PREPARE t(int) AS SELECT lock_id AS lid, (lock_id IS NOT NULL)::int AS got FROM (SELECT 'k' || \$1 AS key, '6ba7b810-9dad-41d1-80b4-00c04fd430c8'::uuid AS lock_id) h;" \
			"PREPARE r(int, uuid) AS SELECT ('k' || \$1) IS NOT NULL AND \$2::uuid IS NOT NULL;" ;;
		adv) printf '%s\n' "PREPARE t(int) AS SELECT pg_try_advisory_lock(hashtextextended('k' || \$1, 0))::int AS got;" \
			"PREPARE r(int, uuid) AS SELECT pg_advisory_unlock(hashtextextended('k' || \$1, 0));" ;;
		lock) printf '%s\n' "PREPARE t(int) AS SELECT lock_id AS lid, (lock_id IS NOT NULL)::int AS got FROM try_lock('k' || \$1, 60000);" \
			"PREPARE r(int, uuid) AS SELECT release('k' || \$1, \$2);" ;;
		field) printf '%s\n' "PREPARE t(int) AS SELECT (try_lock('k' || \$1, 60000)).lock_id AS lid;" \
			"PREPARE r(int, uuid) AS SELECT release('k' || \$1, \$2);" ;;
		fnscan) printf '%s\n' "SET lockext.handle_scan = off;" \
			"PREPARE t(int) AS SELECT lock_id AS lid, (lock_id IS NOT NULL)::int AS got FROM try_lock('k' || \$1, 60000);" \
			"PREPARE r(int, uuid) AS SELECT release('k' || \$1, \$2);" ;;
		esac
		[ "$2" = 0 ] || awk -v n="$2" 'BEGIN { for (i = 1; i <= n; i++)
			printf "EXECUTE t(%d);\nEXECUTE r(%d, '"'"'6ba7b810-9dad-41d1-80b4-%012d'"'"');\n", i, i, i }'
	}
	STMT_N=10000
	{
		echo
		echo "== statement level: instructions per cycle (2 prepared statements, $STMT_N EXECUTE cycles, minus setup)"
	} >>"$OUT/profile.txt"
	for what in one ctl adv lock fnscan field; do
		for n in 0 $STMT_N; do
			stmt_sql $what $n >"$WORK/stmt-$what-$n.sql"
			chown postgres "$WORK/stmt-$what-$n.sql"
			(cd "$WORK" && runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.stmt-$what-$n" \
				$PG_BIN/postgres --single -D "$PG_DATA" -c lockext.max_locks=100000 -c lockext.recovery_grace_ms=0 postgres \
				<"$WORK/stmt-$what-$n.sql" >"$WORK/stmt-$what-$n.log" 2>&1)
		done
		I1=$(total "$WORK/callgrind.stmt-$what-$STMT_N") I0=$(total "$WORK/callgrind.stmt-$what-0")
		label=$(grep -m1 '^PREPARE t' "$WORK/stmt-$what-0.sql" | cut -c19-)
		[ $what = fnscan ] && label="[lockext.handle_scan = off] $label"
		printf '%-6s %8d instructions per cycle   %s\n' "$what" $(( (I1 - I0) / STMT_N )) "$label" >>"$OUT/profile.txt"
	done
	cp "$WORK/callgrind.lock" "$WORK/callgrind.base" "$OUT/" 2>/dev/null
	say "profile written to $OUT/profile.txt"
fi

# ---- 8b. waiting: hand-off latency, contended throughput, idle waiters (bench/wait.sh) ---
[ $SMOKE = 1 ] || bash "$HERE/wait.sh" --out "$OUT" >&2 || { FAILED=$((FAILED + 1)); FAILED_CELLS+=("wait.sh (see $OUT/wait.txt)"); }

# ---- 9. report ----------------------------------------------------------------------------
cp "$RAW" "$OUT/raw.csv"
cp "$WORK/shmem_small.txt" "$OUT/shmem_lockext_entries.txt" 2>/dev/null
python3 "$HERE/report.py" "$OUT/raw.csv" "$OUT" \
	"mode=$([ $SMOKE = 1 ] && echo smoke || echo full) lockext.so=$(md5sum "$("$PG_CONFIG" --pkglibdir)/lockext.so" | cut -c1-8) client=$(md5sum "$(pkg-config --variable=libdir lockext-client)/liblockext-client.so" 2>/dev/null | cut -c1-8) runs=$RUNS duration=${DURATION}s max_locks=$MAX_LOCKS max_key_length=$KEYLEN bouncer_pool=$BOUNCER_POOL pipe_conns=$PIPE_CONNS shmem_big=$SH_BIG shmem_small=$SH_SMALL" ||
	say "report.py failed"
if command -v gnuplot >/dev/null && [ -s "$OUT/plot.dat" ]; then
	(cd "$OUT" && gnuplot "$HERE/plot.gp" 2>"$WORK/gnuplot.log") || say "gnuplot failed: $(head -3 "$WORK/gnuplot.log")"
fi
[ -s "$OUT/results.png" ] || { FAILED=$((FAILED + 1)); FAILED_CELLS+=("plot"); }
for f in "${FAILED_CELLS[@]}"; do say "failed: $f"; done
say "done in $((SECONDS - T0)) s; results in $OUT"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
