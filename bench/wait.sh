#!/usr/bin/env bash
# bench/wait.sh: server-side waiting (try_lock(key, ttl_ms, wait_ms), spec §8) against the
# polling that `lockext-run -w` did before it, measured side by side in one run.
#
#   bench/wait.sh --smoke         # CI: one 2 s slice per cell, 3 s of idle, ~1 min
#   bench/wait.sh                 # full: 5 round-robin slices of 5 s per cell, 2 x 15 s idle (~5 min)
#   options: --rounds N  --slice S (seconds per slice)  --idle S (seconds per idle round)
#            --out DIR (default bench/results; smoke: bench/results-smoke)  --keep (keep the scratch dir)
#
# Cells: hand-off latency (release -> the next waiter's grant) with 1, 8, 32 waiters on one
# key; grants/s of one key with 8 and 32 clients; server CPU of 32 idle waiters (push, poll,
# and 32 idle connections as the baseline, all at the same time). push and poll slices
# alternate round-robin. Run as root on Debian 12 after the top-level `make install` (the
# extension; the driver needs only libpq). It installs missing Debian packages, starts its
# own PostgreSQL 15 (as the postgres user, lockext preloaded, LOCKEXT_PG_BIN honoured) on
# 127.0.0.1, stops it on exit, prints one table with the targets, writes wait.csv and
# wait.txt to DIR, and ends with "N passed, M failed" (a cell passes when it ran and
# measured something; the targets are reported, not failed).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../tools/lib.sh"

SMOKE=0 ROUNDS= SLICE= IDLE= IDLE_ROUNDS= OUT= KEEP=0
while [ $# -gt 0 ]; do
	case $1 in
	--smoke) SMOKE=1 ;;
	--rounds) ROUNDS=$2; shift ;;
	--slice) SLICE=$2; shift ;;
	--idle) IDLE=$2; shift ;;
	--out) OUT=$2; shift ;;
	--keep) KEEP=1 ;;
	-h|--help) sed -n '2,18p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
if [ $SMOKE = 1 ]; then
	: "${ROUNDS:=1}" "${SLICE:=2}" "${IDLE:=3}" "${OUT:=$HERE/results-smoke}"
	IDLE_ROUNDS=1
else
	: "${ROUNDS:=5}" "${SLICE:=5}" "${IDLE:=15}" "${OUT:=$HERE/results}"
	IDLE_ROUNDS=2
fi
HOLD_HANDOFF_US=1000     # the holder's hold time in the hand-off cells
HOLD_TPUT_US=200         # the hold time in the throughput cells
IDLE_WAITERS=32
T0=$SECONDS

say() { printf '[wait %4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs packages, runs PostgreSQL as the postgres user and reads the backends' /proc entries"

# ---- 1. packages ------------------------------------------------------------------
need=()
for p in postgresql-15 postgresql-client-15 g++ pkg-config libpq-dev; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >/dev/null 2>&1 ||
		die "apt-get install ${need[*]} failed"
fi
[ -f "$("$PG_CONFIG" --pkglibdir)/lockext.so" ] || die "lockext is not installed in $("$PG_CONFIG" --pkglibdir): run 'make install' at the top level first"

# ---- 2. scratch dir, driver, server -------------------------------------------------
WORK=$(mktemp -d /tmp/lockext-wait.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/bin" "$WORK/out" "$WORK/samples" "$OUT" && OUT=$(cd "$OUT" && pwd) || die "cannot create $OUT"
cleanup() {
	pg_cluster_cleanup
	if [ $KEEP = 1 ]; then say "scratch dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building the driver"
g++ -std=c++20 -O2 -o "$WORK/bin/wait_bench" "$HERE/wait_bench.cpp" $(pkg-config --cflags --libs libpq) -pthread \
	2>"$WORK/build.log" || { cat "$WORK/build.log" >&2; die "wait_bench build failed"; }

pg_cluster_start "$WORK/pg" "max_connections = 150" "lockext.max_ttl_ms = 3600000" "lockext.save = off" \
	"lockext.max_wait_ms = 600000" "lockext.max_waiters = 256" || die "PostgreSQL failed to start"
say "PostgreSQL 15 ($PG_BIN) on 127.0.0.1:$PG_PORT, pid $PG_PID"
psqlc() { "$PG_BIN/psql" "$PG_DSN" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
psqlc -c "CREATE EXTENSION lockext" || die "CREATE EXTENSION lockext failed"
HAVE_WAIT=$(psqlc -c "SELECT count(*) FROM pg_proc WHERE proname = 'try_lock' AND pronargs = 3")
[ "$HAVE_WAIT" = 1 ] || say "this lockext has no try_lock(key, ttl_ms, wait_ms): the push cells will fail"
LOCKEXT_MD5=$(md5sum "$("$PG_CONFIG" --pkglibdir)/lockext.so" | cut -c1-8)

# ---- 3. cells -----------------------------------------------------------------------
cd "$WORK" || die "cannot enter $WORK"
# results: cell,mode,n,metric,value (one row per number); cells: cell,mode,n,ok
RES="$WORK/wait.csv" CELLS="$WORK/cells.csv"
echo "cell,mode,n,metric,value" >"$RES"
: >"$CELLS"
put() { echo "$1,$2,$3,$4,$5" >>"$RES"; }
val() { awk -F, -v c="$1" -v m="$2" -v n="$3" -v k="$4" '$1 == c && $2 == m && $3 == n && $4 == k { v = $5 } END { print v }' "$RES"; }

# slice CELL MODE N ARGS...: one driver run; its output goes to out/CELL-MODE-N.txt (appended)
slice() {
	local cell=$1 mode=$2 n=$3 out
	shift 3
	out="$WORK/out/$cell-$mode-$n.txt"
	timeout $((SLICE + IDLE + 90)) "$WORK/bin/wait_bench" "$@" >>"$out" 2>&1
	local rc=$?
	[ $rc = 0 ] || { echo "rc=$rc" >>"$out"; say "slice $cell/$mode/$n failed (rc $rc): $(grep -v '=' "$out" | head -2 | tr '\n' ' ')"; }
	echo "$cell,$mode,$n,$rc" >>"$CELLS"
}

# percentile FILE Q: nearest rank of the samples (µs) in FILE
percentile() { sort -g "$1" | awk -v q="$2" '{ a[NR] = $1 } END { if (NR == 0) exit; r = int(q * NR); if (r < q * NR) r++; if (r < 1) r = 1; print a[r] }'; }

say "hand-off: $ROUNDS rounds of $SLICE s per cell (push and poll alternate), hold $HOLD_HANDOFF_US µs"
for w in 1 8 32; do
	: >"$WORK/samples/push-$w" ; : >"$WORK/samples/poll-$w"
	for r in $(seq 1 "$ROUNDS"); do
		if [ $((r % 2)) = 1 ]; then order="push poll"; else order="poll push"; fi
		for m in $order; do
			slice handoff $m $w handoff $w "$SLICE" "$PG_DSN" $m $HOLD_HANDOFF_US "$WORK/samples/$m-$w"
		done
	done
	for m in push poll; do
		f="$WORK/samples/$m-$w" o="$WORK/out/handoff-$m-$w.txt"
		n=$(wc -l <"$f")
		put handoff $m $w samples "$n"
		if [ "$n" -gt 0 ]; then
			put handoff $m $w p50_us "$(percentile "$f" 0.50)"
			put handoff $m $w p99_us "$(percentile "$f" 0.99)"
			put handoff $m $w max_us "$(percentile "$f" 1)"
		fi
		put handoff $m $w attempts_per_grant "$(awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "attempts") a += kv[2]; if (kv[1] == "samples") s += kv[2] } }
			END { printf "%.2f", (s > 0) ? a / s : 0 }' "$o")"
		say "hand-off $m, $w waiters: $n samples, p50 $(val handoff $m $w p50_us) µs, p99 $(val handoff $m $w p99_us) µs"
	done
done

say "throughput: one key, $ROUNDS rounds of $SLICE s per cell, hold $HOLD_TPUT_US µs"
for c in 8 32; do
	for r in $(seq 1 "$ROUNDS"); do
		if [ $((r % 2)) = 1 ]; then order="push poll"; else order="poll push"; fi
		for m in $order; do
			slice throughput $m $c throughput $c "$SLICE" "$PG_DSN" $m $HOLD_TPUT_US
		done
	done
	for m in push poll; do
		o="$WORK/out/throughput-$m-$c.txt"
		# sums over the slices: grants, seconds, attempts; Jain's index weighted by grants
		read -r g s a j <<<"$(awk '/grants=/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
			G += v["grants"]; S += v["seconds"]; A += v["attempts_per_s"] * v["seconds"]; J += v["jain"] * v["grants"] }
			END { printf "%d %.3f %.0f %.3f\n", G, S, A, (G > 0) ? J / G : 0 }' "$o")"
		put throughput $m $c grants "$g"
		put throughput $m $c grants_per_s "$(awk -v g=$g -v s=$s 'BEGIN { printf "%.1f", (s > 0) ? g / s : 0 }')"
		put throughput $m $c attempts_per_grant "$(awk -v g=$g -v a=$a 'BEGIN { printf "%.2f", (g > 0) ? a / g : 0 }')"
		put throughput $m $c jain "$j"
		say "throughput $m, $c clients: $(val throughput $m $c grants_per_s) grants/s, Jain $j"
	done
done

say "idle: $IDLE_WAITERS push waiters, $IDLE_WAITERS pollers, $IDLE_WAITERS idle connections, $IDLE_ROUNDS x $IDLE s"
KINDS=push,poll,none
[ "$HAVE_WAIT" = 1 ] || KINDS=poll,none
for r in $(seq 1 "$IDLE_ROUNDS"); do
	slice idle all $IDLE_WAITERS idle $IDLE_WAITERS "$IDLE" "$PG_DSN" $KINDS
done
o="$WORK/out/idle-all-$IDLE_WAITERS.txt"
for k in push poll none; do
	# means over the rounds, weighted by their seconds
	read -r cpu sch wk <<<"$(awk -v k=$k '$0 ~ "^kind=" k " " { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
		S += v["seconds"]; C += v["cpu_s_per_waiter_s"] * v["seconds"]; H += v["sched_s_per_waiter_s"] * v["seconds"]
		W += v["wakeups_per_waiter_s"] * v["seconds"] }
		END { if (S > 0) printf "%.3g %.3g %.3g\n", C / S, H / S, W / S }' "$o")"
	[ -n "${cpu:-}" ] || { echo "idle,$k,$IDLE_WAITERS,1" >>"$CELLS"; continue; }
	put idle $k $IDLE_WAITERS cpu_s_per_waiter_s "$cpu"
	put idle $k $IDLE_WAITERS sched_s_per_waiter_s "$sch"
	put idle $k $IDLE_WAITERS wakeups_per_waiter_s "$wk"
	say "idle $k: $sch CPU s per waiter-second (schedstat), $cpu (ticks), $wk wakeups per waiter-second"
done

# ---- 4. report ------------------------------------------------------------------------
# a cell passes when all its slices exited 0 and it measured something
PASSED=0 FAILED=0 FAILED_CELLS=()
cell_ok() { # CELL MODE N METRIC
	local bad v
	bad=$(awk -F, -v c="$1" -v m="$2" -v n="$3" '$1 == c && ($2 == m || $2 == "all") && $3 == n && $4 != 0' "$CELLS" | wc -l)
	v=$(val "$1" "$2" "$3" "$4")
	if [ "$bad" = 0 ] && awk -v x="${v:-0}" 'BEGIN { exit !(x > 0) }'; then PASSED=$((PASSED + 1)); else
		FAILED=$((FAILED + 1)); FAILED_CELLS+=("$1/$2/$3"); fi
}
for w in 1 8 32; do for m in push poll; do cell_ok handoff $m $w samples; done; done
for c in 8 32; do for m in push poll; do cell_ok throughput $m $c grants; done; done
# idle: a kind passes when every idle run exited 0 and measured it (0 CPU is a measurement)
for k in push poll none; do
	bad=$(awk -F, -v k=$k '$1 == "idle" && ($2 == "all" || $2 == k) && $4 != 0' "$CELLS" | wc -l)
	if [ "$bad" = 0 ] && [ -n "$(val idle $k $IDLE_WAITERS sched_s_per_waiter_s)" ]; then PASSED=$((PASSED + 1)); else
		FAILED=$((FAILED + 1)); FAILED_CELLS+=("idle/$k"); fi
done

ms() { awk -v u="${1:-}" 'BEGIN { if (u == "") print "-"; else printf "%.3f", u / 1000 }'; }
ratio() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.1f", a / b }'; }
met() { awk -v x="${1:-}" -v t="$2" 'BEGIN { if (x == "") print "-"; else if (x + 0 <= t + 0) print "yes"; else print "**no**" }'; }
us_s() { awk -v x="${1:-}" 'BEGIN { if (x == "") print "-"; else printf "%.2f", x * 1e6 }'; }
{
	echo "| measure | waiters / clients | push (server-side wait) | poll (lockext-run -w backoff) | poll / push | target (push) | met? |"
	echo "|---|---|---|---|---|---|---|"
	for w in 1 8 32; do
		p50=$(val handoff push $w p50_us) q50=$(val handoff poll $w p50_us)
		p99=$(val handoff push $w p99_us) q99=$(val handoff poll $w p99_us)
		echo "| hand-off p50, ms | $w | $(ms "$p50") | $(ms "$q50") | $(ratio "$q50" "$p50") | ≤ 1 ms | $(met "$p50" 1000) |"
		echo "| hand-off p99, ms | $w | $(ms "$p99") | $(ms "$q99") | $(ratio "$q99" "$p99") | ≤ 5 ms | $(met "$p99" 5000) |"
		echo "| hand-off max, ms (samples) | $w | $(ms "$(val handoff push $w max_us)") ($(val handoff push $w samples)) | $(ms "$(val handoff poll $w max_us)") ($(val handoff poll $w samples)) | | | |"
		echo "| try_lock calls per hand-off | $w | $(val handoff push $w attempts_per_grant) | $(val handoff poll $w attempts_per_grant) | | | |"
	done
	for c in 8 32; do
		gp=$(val throughput push $c grants_per_s) gq=$(val throughput poll $c grants_per_s)
		echo "| grants/s, one key (hold ${HOLD_TPUT_US} µs) | $c | $gp | $gq | $(ratio "$gq" "$gp") | | |"
		echo "| try_lock calls per grant | $c | $(val throughput push $c attempts_per_grant) | $(val throughput poll $c attempts_per_grant) | | | |"
		echo "| fairness (Jain, 1 = equal shares) | $c | $(val throughput push $c jain) | $(val throughput poll $c jain) | | | |"
	done
	n=$IDLE_WAITERS
	sp=$(val idle push $n sched_s_per_waiter_s) sq=$(val idle poll $n sched_s_per_waiter_s) sn=$(val idle none $n sched_s_per_waiter_s)
	wp=$(val idle push $n wakeups_per_waiter_s) wq=$(val idle poll $n wakeups_per_waiter_s) wn=$(val idle none $n wakeups_per_waiter_s)
	idle_met=$(awk -v p="${sp:-}" -v b="${sn:-}" -v w="${wp:-}" -v wb="${wn:-0}" 'BEGIN { if (p == "" || b == "" || w == "") print "-";
		else if (p <= b + 1e-5 && w <= wb + 0.1) print "yes"; else print "**no**" }')
	echo "| idle: backend CPU, µs per waiter-second | $n | $(us_s "$sp") | $(us_s "$sq") | $(ratio "$sq" "$sp") | ≤ idle connection ($(us_s "$sn")) + 10 | $idle_met |"
	echo "| idle: backend wakeups per waiter-second | $n | $wp | $wq | | ≤ idle connection ($wn) + 0.1 | $idle_met |"
} >"$WORK/table.txt"
{
	echo "mode=$([ $SMOKE = 1 ] && echo smoke || echo full) rounds=$ROUNDS slice=${SLICE}s idle=${IDLE_ROUNDS}x${IDLE}s lockext.so=$LOCKEXT_MD5 pg_bin=$PG_BIN"
	echo
	cat "$WORK/table.txt"
} >"$OUT/wait.txt"
cp "$RES" "$OUT/wait.csv"
cat "$OUT/wait.txt"
for f in "${FAILED_CELLS[@]}"; do say "failed: $f"; done
say "done in $((SECONDS - T0)) s; results in $OUT/wait.csv and $OUT/wait.txt"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
