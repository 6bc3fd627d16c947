#!/usr/bin/env bash
# bench/replication.sh: what WAL-replicated leases (lockext.replication, spec §7) cost,
# every mode measured side by side in one run against one primary and one streaming standby.
#
#   bench/replication.sh               # full: 5 s per mode (round-robin slices of 1 s)
#   bench/replication.sh --smoke       # CI: 1 s per mode
#   options: --duration S (per mode, default 5)  --slice S (default 1)  --clients N (default 8)
#            --out DIR (default bench/results; smoke: bench/results-smoke)  --keep (keep the scratch dir)
#
# Modes: off, async, sync (synchronous_standby_names naming the standby) and sync with no
# synchronous standby named (the local WAL flush alone). Per mode: try_lock+release cycles
# per second with pgbench (N clients, each on its own key: no contention), the ratio to
# off, per-statement latencies, WAL bytes per cycle (insert-LSN difference / cycles) and
# lockext records per cycle, and the standby's distance from the primary sampled every
# 100 ms during the slices (bytes not yet flushed / replayed there, pg_stat_replication's
# replay_lag), and the CPU per cycle of the WAL writer, the WAL sender and the standby.
# Then the record sizes from pg_walinspect, and a check that the standby mirrors the
# primary's leases. If the installed lockext has no lockext.replication, it runs
# `make install` at the top level first.
#
# Run as root on Debian 12 after the top-level `make install`. Installs missing Debian
# packages, starts a primary and a standby (PostgreSQL 15, as the postgres user, lockext
# preloaded, 127.0.0.1 and Unix sockets in a scratch dir under /tmp), stops both by PID on
# exit, prints one table, writes replication.txt and replication.csv to DIR, and ends with
# "N passed, M failed" (a check passes when its cell ran and measured what it should).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
. "$TOP/tools/lib.sh"

SMOKE=0 DURATION= SLICE= CLIENTS=8 OUT= KEEP=0
while [ $# -gt 0 ]; do
	case $1 in
	--smoke) SMOKE=1 ;;
	--duration) DURATION=$2; shift ;;
	--slice) SLICE=$2; shift ;;
	--clients) CLIENTS=$2; shift ;;
	--out) OUT=$2; shift ;;
	--keep) KEEP=1 ;;
	-h|--help) sed -n '2,25p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
if [ $SMOKE = 1 ]; then
	: "${DURATION:=1}" "${SLICE:=1}" "${OUT:=$HERE/results-smoke}"
else
	: "${DURATION:=5}" "${SLICE:=1}" "${OUT:=$HERE/results}"
fi
ROUNDS=$(( DURATION / SLICE )); [ "$ROUNDS" -ge 1 ] || ROUNDS=1
STANDBY_NAME=bench_standby
SAMPLE_S=0.1              # lag sampling interval
INSPECT_N=1000            # cycles of the pg_walinspect measurement
MIRROR_N=100              # leases of the mirror check
MODES="off async sync sync_local"
T0=$SECONDS

say() { printf '[repl %4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs packages and runs PostgreSQL as the postgres user"

# ---- 1. packages, lockext ---------------------------------------------------------
need=()
for p in postgresql-15 postgresql-client-15; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >/dev/null 2>&1 ||
		die "apt-get install ${need[*]} failed"
fi
SO=$("$PG_CONFIG" --pkglibdir)/lockext.so
[ -f "$SO" ] || die "lockext is not installed in $("$PG_CONFIG" --pkglibdir): run 'make install' at the top level first"

# ---- 2. scratch dir, primary --------------------------------------------------------
WORK=$(mktemp -d /tmp/lockext-repl.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/out" "$OUT" && OUT=$(cd "$OUT" && pwd) || die "cannot create $OUT"
chown postgres:postgres "$WORK" "$WORK/out"
cd "$WORK" || die "cannot cd to $WORK"
S_DATA="$WORK/standby/data" S_LOG="$WORK/standby/postgres.log" S_SOCK="$WORK/standby" S_PORT=

# The standby's postmaster PID, if that process is alive and is the standby's postmaster.
standby_pid() { postmaster_pid_of "$S_DATA"; }
standby_stop() {
	local pid
	standby_pid >/dev/null || return 0
	as_postgres "$PG_BIN/pg_ctl" -D "$S_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1
	if pid=$(standby_pid); then kill -KILL "$pid" 2>/dev/null; sleep 1; fi
	return 0
}
cleanup() {
	standby_stop
	pg_cluster_cleanup
	if [ $KEEP = 1 ]; then say "scratch dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PRIMARY_CONF=("max_connections = 50" "shared_buffers = 128MB" "wal_level = replica" "max_wal_senders = 4"
	"wal_keep_size = '512MB'" "lockext.save = off" "lockext.max_ttl_ms = 60000"
	"synchronous_standby_names = ''" "log_min_messages = warning" "log_checkpoints = off")
pg_cluster_start "$WORK/primary" "${PRIMARY_CONF[@]}" || die "the primary failed to start"
say "primary: PostgreSQL 15 on 127.0.0.1:$PG_PORT (pid $PG_PID)"
psqlp() { $PG_BIN/psql -h "$PG_SOCKDIR" -p "$PG_PORT" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }
psqls() { $PG_BIN/psql -h "$S_SOCK" -p "$S_PORT" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }

if [ -z "$(psqlp -c "SELECT current_setting('lockext.replication', true)")" ]; then
	say "the installed lockext has no lockext.replication: make -C $TOP install"
	build_and_install "$TOP" "$WORK/install.log" || die "make install failed (log above)"
	pg_cluster_ctl -m fast -w -t 120 restart >/dev/null 2>&1 || die "the primary did not restart"
	PG_PID=$(pg_cluster_pid)
	[ -n "$(psqlp -c "SELECT current_setting('lockext.replication', true)")" ] ||
		die "lockext.replication is still unknown after make install"
fi
psqlp <<'SQL' >/dev/null || die "setup SQL failed"
CREATE EXTENSION lockext;
CREATE EXTENSION pg_walinspect;
SELECT lockext_grace_end();   -- no grace on a first start; after a restart (save = off) there is one
VACUUM;                       -- or the first slice prunes the catalog pages CREATE EXTENSION left behind
CHECKPOINT;
SQL

# ---- 3. standby ---------------------------------------------------------------------
S_PORT=$(free_port) || die "no free port"
mkdir -p "$WORK/standby" && chown postgres:postgres "$WORK/standby"
as_postgres "$PG_BIN/pg_basebackup" -h "$PG_SOCKDIR" -p "$PG_PORT" -U postgres -D "$S_DATA" -X stream -c fast \
	>"$WORK/basebackup.log" 2>&1 || { cat "$WORK/basebackup.log" >&2; die "pg_basebackup failed"; }
{
	echo "# bench/replication.sh: the standby"
	echo "port = $S_PORT"
	echo "unix_socket_directories = '$S_SOCK'"
	echo "hot_standby = on"
	echo "primary_conninfo = 'host=$PG_SOCKDIR port=$PG_PORT user=postgres application_name=$STANDBY_NAME'"
} >>"$S_DATA/postgresql.conf"
as_postgres touch "$S_DATA/standby.signal"
as_postgres "$PG_BIN/pg_ctl" -D "$S_DATA" -l "$S_LOG" -w -t 120 start >/dev/null 2>&1 ||
	{ tail -20 "$S_LOG" >&2; die "the standby failed to start"; }
S_PID=$(standby_pid) || die "no standby postmaster"
for _ in $(seq 100); do
	[ "$(psqlp -c "SELECT state FROM pg_stat_replication WHERE application_name = '$STANDBY_NAME'")" = streaming ] && break
	sleep 0.1
done
[ "$(psqlp -c "SELECT state FROM pg_stat_replication WHERE application_name = '$STANDBY_NAME'")" = streaming ] ||
	{ tail -20 "$S_LOG" >&2; die "the standby is not streaming"; }
say "standby: 127.0.0.1:$S_PORT (pid $S_PID), streaming as $STANDBY_NAME"

# ---- 4. modes -------------------------------------------------------------------------
PASSED=0 FAILED=0 FAILED_CHECKS=()
check() { # TEXT CONDITION-RESULT(0 = pass)
	if [ "$2" = 0 ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); FAILED_CHECKS+=("$1"); say "FAILED: $1"; fi
}

# set_mode MODE: lockext.replication and synchronous_standby_names by ALTER SYSTEM and a
# reload; waits until lockext's worker has published the mode (lockext_replication().mode)
# and the walsender's sync_state says what synchronous_standby_names asks for.
set_mode() {
	local lockext=$1 ssn=$STANDBY_NAME want=sync i
	[ "$1" = sync_local ] && { lockext=sync ssn=; want=async; }
	psqlp -c "ALTER SYSTEM SET lockext.replication = '$lockext'" -c "ALTER SYSTEM SET synchronous_standby_names = '$ssn'" \
		-c "SELECT pg_reload_conf()" >/dev/null || return 1
	for i in $(seq 100); do
		[ "$(psqlp -c "SELECT (SELECT mode FROM lockext_replication()) || '/' || (SELECT sync_state FROM pg_stat_replication WHERE application_name = '$STANDBY_NAME')")" = "$lockext/$want" ] &&
			break
		sleep 0.05
	done
	if [ $i = 100 ]; then
		say "mode $1 not in force after 5 s: $(psqlp -c "SELECT mode FROM lockext_replication()"), sync_state $(psqlp -c "SELECT sync_state FROM pg_stat_replication")"
		return 1
	fi
	# the worker logs the MODE record and (async, sync) a snapshot right after publishing:
	# let them pass, and let the standby replay everything, so that a slice measures its
	# own mode only
	local lsn prev=
	for i in $(seq 200); do
		# (the insert LSN can point past a page header: compare with the flush LSN)
		lsn=$(psqlp -c "SELECT wal_records || ' ' || pg_current_wal_flush_lsn() || ' ' || (SELECT replay_lsn >= pg_current_wal_flush_lsn() FROM pg_stat_replication WHERE application_name = '$STANDBY_NAME') FROM lockext_stats")
		[ "$lsn" = "$prev" ] && [ "${lsn##* }" = true ] && return 0
		prev=$lsn
		sleep 0.05
	done
	say "mode $1: the standby did not catch up within 10 s: $lsn; $(psqlp -c "SELECT pg_current_wal_insert_lsn(), pg_current_wal_lsn(), flush_lsn, replay_lsn FROM pg_stat_replication")"
	return 1
}

# CPU (ns, /proc/PID/schedstat) of the replication machinery: the primary's WAL writer and
# WAL sender, and every process of the standby (its postmaster's children, by parent PID)
repl_pids() {
	psqlp -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'"
	psqlp -c "SELECT pid FROM pg_stat_replication WHERE application_name = '$STANDBY_NAME'"
	echo "$S_PID"; pgrep -P "$S_PID"
}
cpu_ns() { # WALWRITER WALSENDER STANDBY-PIDS...: "walwriter walsender standby"
	local ww=$1 ws=$2 s=0 p v
	shift 2
	for p in "$@"; do v=$(cut -d' ' -f1 "/proc/$p/schedstat" 2>/dev/null) && s=$((s + v)); done
	echo "$(cut -d' ' -f1 "/proc/$ww/schedstat" 2>/dev/null || echo 0) $(cut -d' ' -f1 "/proc/$ws/schedstat" 2>/dev/null || echo 0) $s"
}

cat >"$WORK/cycle.sql" <<'SQL'
-- one try_lock + release cycle on this client's own key: no contention
SELECT lock_id AS lid, (lock_id IS NOT NULL)::int AS got FROM try_lock('repl-' || :client_id, 60000) \gset
\if :got
SELECT release('repl-' || :client_id, :lid);
\endif
SQL
chown postgres "$WORK/cycle.sql"

# slices.csv: mode,round,cycles,seconds,wal_bytes,lockext_records,contended,sync_failed,try_ms,release_ms,ok,
#             walwriter_ns,walsender_ns,standby_ns
SLICES="$WORK/slices.csv" SAMPLES="$WORK/samples.csv"
: >"$SLICES"; : >"$SAMPLES"
STATS_SQL="SELECT pg_current_wal_insert_lsn() || ',' || wal_records || ',' || contended || ',' || sync_failed FROM lockext_stats"
SAMPLE_SQL="SELECT extract(epoch FROM clock_timestamp()) || ',' || pg_wal_lsn_diff(pg_current_wal_insert_lsn(), flush_lsn) || ',' || pg_wal_lsn_diff(pg_current_wal_insert_lsn(), replay_lsn) || ',' || coalesce((1000 * extract(epoch FROM replay_lag))::text, '') FROM pg_stat_replication WHERE application_name = '$STANDBY_NAME'"

# slice MODE ROUND: one pgbench slice in the mode in force, the lag sampler beside it
slice() {
	local mode=$1 round=$2 out="$WORK/out/$1-$2.txt" before after rc ok=1 n tps try rel samples
	local pids c0 c1
	pids=$(repl_pids | tr '\n' ' ')
	c0=$(cpu_ns $pids)
	before=$(psqlp -c "$STATS_SQL")
	samples=$(awk -v s=$SLICE -v i=$SAMPLE_S 'BEGIN { printf "%d", s / i }')
	awk -v n="$samples" -v q="$SAMPLE_SQL" -v i=$SAMPLE_S 'BEGIN { for (k = 0; k < n; k++) printf "%s;\nSELECT pg_sleep(%s);\n", q, i }' |
		psqlp 2>/dev/null | grep , | sed "s/^/$mode,$round,/" >>"$SAMPLES" &
	local sampler=$!
	timeout $((SLICE + 60)) $PG_BIN/pgbench -h "$PG_SOCKDIR" -p "$PG_PORT" -U postgres -n -M prepared -r \
		-c "$CLIENTS" -j $(( CLIENTS < 2 ? 1 : 2 )) -T "$SLICE" -f "$WORK/cycle.sql" postgres >"$out" 2>&1
	rc=$?
	after=$(psqlp -c "$STATS_SQL")
	c1=$(cpu_ns $pids)
	wait "$sampler"
	[ "${before%%,*}" = "${after%%,*}" ] || echo "('$mode', '${before%%,*}'::pg_lsn, '${after%%,*}'::pg_lsn)" >>"$WORK/ranges"
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | tail -1)
	n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
	try=$(awk '/try_lock\(/ { print $1; exit }' "$out")
	rel=$(awk '/release\(/ { print $1; exit }' "$out")
	if [ $rc != 0 ] || grep -qi 'aborted\|error' "$out"; then
		say "slice $mode/$round failed (rc $rc):"; grep -i 'error\|abort' "$out" | head -3 >&2; ok=0
	fi
	: "${tps:=0}" "${n:=0}" "${try:=0}" "${rel:=0}"
	psqlp -c "SELECT $n || ',' || CASE WHEN $tps > 0 THEN $n / $tps ELSE 0 END || ',' ||
		pg_wal_lsn_diff('${after%%,*}', '${before%%,*}') || ',' ||
		$(echo "$after" | cut -d, -f2) - $(echo "$before" | cut -d, -f2) || ',' ||
		$(echo "$after" | cut -d, -f3) - $(echo "$before" | cut -d, -f3) || ',' ||
		$(echo "$after" | cut -d, -f4) - $(echo "$before" | cut -d, -f4)" |
		sed "s/^/$mode,$round,/; s/\$/,$try,$rel,$ok,$(echo $c0 $c1 | awk '{ printf "%d,%d,%d", $4 - $1, $5 - $2, $6 - $3 }')/" >>"$SLICES"
}

say "warm-up: 1 s per mode (not recorded)"
for m in $MODES; do
	set_mode "$m" || die "cannot switch to $m"
	timeout 60 $PG_BIN/pgbench -h "$PG_SOCKDIR" -p "$PG_PORT" -U postgres -n -M prepared -c "$CLIENTS" \
		-j $(( CLIENTS < 2 ? 1 : 2 )) -T 1 -f "$WORK/cycle.sql" postgres >/dev/null 2>&1
done
say "$ROUNDS rounds of $SLICE s per mode ($MODES), $CLIENTS clients"
for round in $(seq 1 $ROUNDS); do
	for m in $MODES; do
		set_mode "$m" || die "cannot switch to $m"
		slice "$m" "$round"
	done
	say "round $round: $(awk -F, -v r=$round '$2 == r { printf "%s %.0f/s  ", $1, ($4 > 0 ? $3 / $4 : 0) }' "$SLICES")"
done

# ---- 5. WAL records, from pg_walinspect -----------------------------------------------
# What else was logged during the slices (pg_walinspect reads flushed WAL only: wait for it)
OTHER_WAL=
if [ -s "$WORK/ranges" ]; then
	LAST=$(psqlp -c "SELECT max(l1) FROM (VALUES $(paste -sd, "$WORK/ranges")) r(mode, l0, l1)")
	for _ in $(seq 100); do
		[ "$(psqlp -c "SELECT pg_current_wal_flush_lsn() >= '$LAST'")" = t ] && break
		sleep 0.05
	done
	OTHER_WAL=$(psqlp -F ' ' -c "SELECT r.mode, w.resource_manager || '/' || w.record_type, count(*), sum(w.record_length)
		FROM (VALUES $(paste -sd, "$WORK/ranges")) r(mode, l0, l1), LATERAL pg_get_wal_records_info(r.l0, r.l1) w
		WHERE w.resource_manager <> 'lockext' AND w.start_lsn < r.l1 GROUP BY 1, 2 ORDER BY 1, 2" 2>&1)
fi
say "other WAL records during the slices: ${OTHER_WAL:-none}"

# INSPECT_N cycles in one statement, in async mode, then the lockext records between the
# two insert LSNs (once they are flushed: pg_walinspect reads only flushed WAL).
set_mode async || die "cannot switch to async"
CYCLE_SQL="SELECT count(release(h.key, h.lock_id)) FROM generate_series(1, $INSPECT_N) g, LATERAL try_lock('inspect-' || g, 60000) h"
L0=$(psqlp -c "SELECT pg_current_wal_insert_lsn()")
GOT=$(psqlp -c "$CYCLE_SQL")
L1=$(psqlp -c "SELECT pg_current_wal_insert_lsn()")
for _ in $(seq 100); do
	[ "$(psqlp -c "SELECT pg_current_wal_flush_lsn() >= '$L1'")" = t ] && break
	sleep 0.05
done
INSPECT=$(psqlp -F ' ' -c "SELECT record_type, count(*), round(avg(record_length), 1), min(description)
	FROM pg_get_wal_records_info('$L0', '$L1') WHERE resource_manager = 'lockext' GROUP BY 1 ORDER BY 1" 2>&1)
OTHER=$(psqlp -c "SELECT count(*) FROM pg_get_wal_records_info('$L0', '$L1') WHERE resource_manager <> 'lockext'" 2>&1)
INSPECT_BYTES=$(psqlp -c "SELECT pg_wal_lsn_diff('$L1', '$L0')")
GRANT_LEN=$(echo "$INSPECT" | awk '$1 == "GRANT" { print $3 }')
RELEASE_LEN=$(echo "$INSPECT" | awk '$1 == "RELEASE" { print $3 }')
GRANT_N=$(echo "$INSPECT" | awk '$1 == "GRANT" { print $2 }')
RELEASE_N=$(echo "$INSPECT" | awk '$1 == "RELEASE" { print $2 }')
say "pg_walinspect, $INSPECT_N cycles in one statement ($GOT released): $INSPECT_BYTES bytes of WAL; other records: $OTHER"
echo "$INSPECT" | sed 's/^/    /' >&2
[ "$GOT" = "$INSPECT_N" ] && [ "${GRANT_N:-0}" = "$INSPECT_N" ] && [ "${RELEASE_N:-0}" = "$INSPECT_N" ]
check "pg_walinspect shows one GRANT and one RELEASE record per cycle" $?

# ---- 6. the standby mirrors the leases ---------------------------------------------------
set_mode sync || die "cannot switch to sync"
psqlp -c "SELECT count(try_lock('mirror-' || g, 60000)) FROM generate_series(1, $MIRROR_N) g" >/dev/null
P_FENCES=$(psqlp -c "SELECT string_agg(key || ':' || fence, ' ' ORDER BY key) FROM lockext_leases WHERE key LIKE 'mirror-%'")
S_FENCES=
for _ in $(seq 50); do
	S_FENCES=$(psqls -c "SELECT string_agg(key || ':' || fence, ' ' ORDER BY key) FROM lockext_leases WHERE key LIKE 'mirror-%'" 2>/dev/null)
	[ "$S_FENCES" = "$P_FENCES" ] && break
	sleep 0.1
done
S_GRACE=$(psqls -c "SELECT mode || ' ' || table_complete || ' ' || promotion_grace_ms FROM lockext_replication()" 2>&1)
S_REPLAYED=$(psqls -c "SELECT replayed FROM lockext_stats" 2>&1)
[ -n "$P_FENCES" ] && [ "$S_FENCES" = "$P_FENCES" ]
check "the standby shows the primary's $MIRROR_N leases with the same fences" $?
[ "${S_GRACE% *}" = "sync true" ]
check "the standby's lockext_replication(): mode sync, table_complete true (got: $S_GRACE)" $?
say "standby: $(echo "$S_FENCES" | wc -w) of $MIRROR_N leases mirrored, lockext_replication() mode/table_complete/promotion_grace_ms = $S_GRACE, $S_REPLAYED records replayed"
psqlp -c "SELECT lockext_force_release('mirror-' || g) FROM generate_series(1, $MIRROR_N) g" >/dev/null
S_ERRORS=$(grep -c 'PANIC\|FATAL\|TRAP:' "$S_LOG" "$PG_LOG" | awk -F: '{ s += $2 } END { print s + 0 }')
[ "$S_ERRORS" = 0 ]
check "no PANIC, FATAL or TRAP in the server logs ($S_ERRORS)" $?
set_mode off >/dev/null

# ---- 7. report -------------------------------------------------------------------------
# per mode: cycles/s over all slices, latencies weighted by cycles, WAL per cycle, lag
# percentiles over the samples (nearest rank)
pct() { # FILE-OF-NUMBERS P
	sort -g "$1" | awk -v p="$2" '{ a[NR] = $1 } END { if (NR == 0) { print "-"; exit }
		k = int(p * NR + 0.999999); if (k < 1) k = 1; if (k > NR) k = NR; print a[k] }'
}
CSV="$OUT/replication$([ $SMOKE = 1 ] && echo -smoke).csv"
TXT="$OUT/replication$([ $SMOKE = 1 ] && echo -smoke).txt"
echo "mode,cycles,seconds,ops_s,ratio_off,try_lock_ms,release_ms,wal_bytes_per_cycle,lockext_records_per_cycle,contended,sync_failed,flush_lag_bytes_p50,flush_lag_bytes_max,replay_lag_bytes_p50,replay_lag_bytes_max,replay_lag_ms_p50,replay_lag_ms_max,samples,walwriter_us_per_cycle,walsender_us_per_cycle,standby_us_per_cycle" >"$CSV"
OFF_OPS=$(awk -F, '$1 == "off" && $11 == 1 { n += $3; t += $4 } END { printf "%.1f", (t > 0 ? n / t : 0) }' "$SLICES")
for m in $MODES; do
	read -r cycles secs ops try rel wal recs cont sf ok cww cws cst < <(awk -F, -v m=$m '$1 == m {
		n += $3; t += $4; w += $5; r += $6; c += $7; f += $8; tl += $9 * $3; rl += $10 * $3; if ($11 != 1) bad = 1
		ww += $12; ws += $13; st += $14 }
		END { printf "%d %.3f %.1f %.3f %.3f %.1f %.3f %d %d %d %.2f %.2f %.2f\n", n, t, (t > 0 ? n / t : 0), (n ? tl / n : 0), (n ? rl / n : 0),
			(n ? w / n : 0), (n ? r / n : 0), c, f, (bad ? 0 : 1), (n ? ww / n / 1000 : 0), (n ? ws / n / 1000 : 0), (n ? st / n / 1000 : 0) }' "$SLICES")
	awk -F, -v m=$m '$1 == m { print $4 }' "$SAMPLES" >"$WORK/fl"
	awk -F, -v m=$m '$1 == m { print $5 }' "$SAMPLES" >"$WORK/rl"
	awk -F, -v m=$m '$1 == m && $6 != "" { print $6 }' "$SAMPLES" >"$WORK/rt"
	ratio=$(awk -v a=$ops -v b=$OFF_OPS 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
	echo "$m,$cycles,$secs,$ops,$ratio,$try,$rel,$wal,$recs,$cont,$sf,$(pct "$WORK/fl" 0.5),$(pct "$WORK/fl" 1),$(pct "$WORK/rl" 0.5),$(pct "$WORK/rl" 1),$(pct "$WORK/rt" 0.5),$(pct "$WORK/rt" 1),$(wc -l <"$WORK/fl"),$cww,$cws,$cst" >>"$CSV"
	awk -v o=$ops 'BEGIN { exit !(o > 0) }' && [ "$ok" = 1 ] && [ "$cont" = 0 ] && [ "$sf" = 0 ]
	check "mode $m: pgbench ran without errors, no contention, no unconfirmed grant ($cycles cycles)" $?
	case $m in
	off) awk -v r=$recs 'BEGIN { exit !(r == 0) }' ;;
	*) awk -v r=$recs 'BEGIN { exit !(r >= 1.99 && r <= 2.05) }' ;;
	esac
	check "mode $m: lockext records per cycle $recs (off: 0, else 2)" $?
done

fmt() { # a number with thousands separators, or as is
	awk -v x="${1:-}" 'BEGIN { if (x !~ /^[0-9.]+$/) { print x; exit } s = sprintf("%.0f", x); o = ""
		while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) } print s o }'
}
ms() { awk -v x="${1:-}" 'BEGIN { if (x ~ /^[0-9.]+$/) printf "%.1f", x; else print x }'; }
{
	echo "lockext lease replication, $(date -u '+%Y-%m-%d %H:%M UTC'): bench/replication.sh$([ $SMOKE = 1 ] && echo ' --smoke') --duration $DURATION"
	echo "$CLIENTS pgbench clients (-M prepared), each on its own key; $ROUNDS round-robin slices of $SLICE s per mode;"
	echo "primary + 1 streaming standby on this host (Unix sockets; fsync on, WAL on $(df -T "$WORK" | awk 'NR == 2 { print $2 }'));"
	echo "lockext.so $(md5sum "$SO" | cut -c1-8), PostgreSQL $(psqlp -c 'SHOW server_version'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	echo "| mode | cycles/s | × off | try_lock ms | release ms | WAL B/cycle | not flushed on standby, B p50 / max | not replayed, B p50 / max | replay_lag ms p50 / max | CPU µs/cycle: WAL writer / sender / standby |"
	echo "|---|---|---|---|---|---|---|---|---|---|"
	while IFS=, read -r m cycles secs ops ratio try rel wal recs cont sf f50 fmax r50 rmax t50 tmax ns cww cws cst; do
		case $m in
		off) label="off" ;;
		async) label="async" ;;
		sync) label="sync (synchronous_standby_names = '$STANDBY_NAME')" ;;
		sync_local) label="sync, no synchronous standby named (local flush only)" ;;
		esac
		echo "| $label | $(fmt $ops) | $ratio | $try | $rel | $wal | $(fmt $f50) / $(fmt $fmax) | $(fmt $r50) / $(fmt $rmax) | $([ "$rmax" = 0 ] && echo "— (nothing to replay)" || echo "$(ms $t50) / $(ms $tmax)") | $cww / $cws / $cst |"
	done < <(tail -n +2 "$CSV")
	echo "| failover time seen by clients | see test/ha | | | | | | | | |"
	echo
	echo "WAL records (pg_walinspect, $INSPECT_N try_lock+release cycles in one statement, async): $(echo "$INSPECT" | awk '{ printf "%s%s %s × %s B", (NR > 1 ? ", " : ""), $1, $2, $3 }');"
	echo "$INSPECT_BYTES bytes between the insert LSNs ($(awk -v b=$INSPECT_BYTES -v n=$INSPECT_N 'BEGIN { printf "%.1f", b / n }') per cycle, record alignment and page headers included), $OTHER other records."
	echo "Example description: $(echo "$INSPECT" | awk '$1 == "GRANT" { $1 = $2 = $3 = ""; sub(/^ +/, ""); print; exit }')"
	echo "Other WAL records during the slices (mode, record, count, bytes): $(echo "${OTHER_WAL:-none}" | paste -sd';' | sed 's/;/; /g')."
	echo "Standby: $(echo "$S_FENCES" | wc -w) of $MIRROR_N leases taken in sync mode shown with the same fences; lockext_replication() there: mode = $(echo "$S_GRACE" | cut -d' ' -f1), table_complete = $(echo "$S_GRACE" | cut -d' ' -f2), promotion_grace_ms = $(echo "$S_GRACE" | cut -d' ' -f3)."
	echo "Lag columns: pg_current_wal_insert_lsn() minus the standby's flush_lsn / replay_lsn (pg_stat_replication), sampled every ${SAMPLE_S} s during the slices; replay_lag as PostgreSQL reports it while the standby has something to replay (it shows the last value for a while after)."
} >"$TXT"
cat "$TXT"
for f in "${FAILED_CHECKS[@]}"; do say "failed: $f"; done
say "done in $((SECONDS - T0)) s; $TXT, $CSV"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
