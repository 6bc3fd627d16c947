#!/usr/bin/env bash
# test/checker/run.sh — mutual-exclusion and fencing checker under nemeses (testing.md §2.6).
#
# As root on Debian 12, after `make install` (extension and client library):
#     test/checker/run.sh                         # every run, CHECKER_SECONDS (15) each
#     CHECKER_SECONDS=60 test/checker/run.sh      # the long run
#     test/checker/run.sh none pause              # a subset, in the order given
# Runs: none kill restart pause pgbouncer selftest (see README.md). Builds the driver into a
# temp dir, starts a throwaway PostgreSQL 15 as the postgres user on 127.0.0.1 and a
# socket in the temp dir, runs 2 driver processes under each nemesis, checks each history
# with check.py, prints a table and ends with "N passed, M failed". Exit 0 only if all
# passed. CHECKER_KEEP=1 keeps the temp dir (histories, server and pgbouncer logs).
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/../../tools/lib.sh"
. "$HERE/../../tools/pgbouncer.sh"
RUN_SECONDS=${CHECKER_SECONDS:-15}
PROCS=${CHECKER_PROCS:-2}          # driver processes per run
THREADS=${CHECKER_THREADS:-4}      # threads per driver process
KEYS=${CHECKER_KEYS:-2}
WAIT_PCT=${CHECKER_WAIT_PCT:-50}   # % of each process' threads that wait on the server
MAX_TTL=2000                       # lockext.max_ttl_ms, so the crash grace is 2 s
KEEP=${CHECKER_KEEP:-0}
ALL_RUNS=(none kill restart pause pgbouncer selftest)

say() { printf '%s\n' "$*"; }
die() { printf 'checker: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "run as root (PostgreSQL and PgBouncer run as the postgres user)"
case $RUN_SECONDS in '' | *[!0-9]*) die "CHECKER_SECONDS must be a whole number of seconds" ;; esac
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || RUNS=("${ALL_RUNS[@]}")
for r in "${RUNS[@]}"; do
	case " ${ALL_RUNS[*]} " in *" $r "*) ;; *) die "unknown run '$r' (one of: ${ALL_RUNS[*]})" ;; esac
done

# --- packages ---------------------------------------------------------------------------
missing=()
for p in python3 pgbouncer postgresql-15 g++ pkg-config libpq-dev procps bsdextrautils; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]}"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null ||
		die "apt-get install ${missing[*]} failed"
fi
pkg-config --exists lockext-client || die "lockext-client not installed: run 'make install' at the top level first"
[ -f "$("$PG_CONFIG" --pkglibdir)/lockext.so" ] || die "lockext.so not installed: run 'make install' at the top level first"

# --- scratch dir, cleanup ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/lockext-checker.XXXXXX) || die "mktemp failed"
chmod 755 "$WORK"
chown postgres:postgres "$WORK"
BG_PIDS=()            # drivers and nemesis loops of the current run
PGB_STARTED=0

pgb_pid() { cat "$WORK/pgb/pgbouncer.pid" 2>/dev/null; }

stop_pgbouncer() {
	local pid i
	pid=$(pgb_pid) || return 0
	[ -n "$pid" ] || return 0
	kill -INT "$pid" 2>/dev/null || return 0
	for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null
	return 0
}

cleanup() {
	local pid
	trap - EXIT INT TERM
	for pid in "${BG_PIDS[@]}"; do kill_tree "$pid"; done
	[ "$PGB_STARTED" = 1 ] && stop_pgbouncer
	pg_cluster_cleanup
	[ "$KEEP" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wall_minus_mono() { # CLOCK_REALTIME - CLOCK_MONOTONIC, ns: maps the server log's times onto the histories'
	python3 -c 'import time; m = time.monotonic_ns(); w = time.time_ns(); print(w - (m + time.monotonic_ns()) // 2)'
}

# --- build the driver -------------------------------------------------------------------
DRIVER=$WORK/driver
# shellcheck disable=SC2046
g++ -std=c++23 -O2 -Wall -Wextra -pthread "$HERE/driver.cpp" $(pkg-config --cflags --libs lockext-client libpq) \
	-o "$DRIVER" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; die "driver build failed"; }
python3 "$HERE/test_check.py" >"$WORK/test_check.log" 2>&1 ||
	{ cat "$WORK/test_check.log" >&2; die "check.py's own unit tests failed"; }

# --- the cluster ------------------------------------------------------------------------
pg_cluster_start "$WORK" "restart_after_crash = on" "max_connections = 60" "lockext.max_ttl_ms = $MAX_TTL" \
	"log_min_messages = log" "log_line_prefix = '%m [%p] '" "log_timezone = 'UTC'" ||
	die "the server did not start"
export PGCONNECT_TIMEOUT=3
PSQL=("$PG_BIN/psql" -X -A -t -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)
"${PSQL[@]}" -c 'CREATE EXTENSION lockext' >/dev/null || die "CREATE EXTENSION lockext failed"

wait_ready() { # until the server accepts a query (after a crash restart or pg_ctl restart)
	local i
	for i in $(seq 300); do
		"${PSQL[@]}" -c 'SELECT 1' >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	return 1
}

# --- PgBouncer (transaction pooling, as postgres) ---------------------------------------
PGB_PORT=$(free_port)
pgbouncer_config "$WORK/pgb" "$PGB_PORT" "$PG_PORT" 2 100
start_pgbouncer() {
	PGB_STARTED=1
	pgbouncer_start "$WORK/pgb" "$PGB_PORT"
}

# --- nemeses: each runs until $1 (a stop file) exists, logs one line per event ----------
rand_ms() { echo $(($1 + RANDOM % ($2 - $1 + 1))); } # uniform in [$1, $2]
nap_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }
# sleeps $1 ms unless the stop file appears; returns 1 if it did
nap_or_stop() {
	local stop=$1 left=$2
	while [ "$left" -gt 0 ]; do
		[ -e "$stop" ] && return 1
		nap_ms $((left < 100 ? left : 100))
		left=$((left - 100))
	done
	[ ! -e "$stop" ]
}

nemesis_kill() { # $1 stop file, $2 $3 interval bounds in ms
	local stop=$1 lo=$2 hi=$3 pid
	while nap_or_stop "$stop" "$(rand_ms "$lo" "$hi")"; do
		pid=$("${PSQL[@]}" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'
			AND application_name = 'lockext-checker' ORDER BY random() LIMIT 1" 2>/dev/null)
		# only a child of this cluster's postmaster (the pid may have been reused since)
		if [ -n "$pid" ] && [ "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$(pg_cluster_pid)" ] &&
			kill -KILL "$pid" 2>/dev/null; then
			say "$(date +%T.%N) SIGKILL backend $pid"
		else
			say "$(date +%T.%N) no backend to kill"
		fi
	done
}

nemesis_restart() { # alternating pg_ctl restart -m fast / -m immediate
	local stop=$1 n=0 mode
	while nap_or_stop "$stop" "$(rand_ms 2500 4000)"; do
		mode=$([ $((n % 2)) = 0 ] && echo fast || echo immediate)
		n=$((n + 1))
		if pg_cluster_ctl restart -m "$mode" -w -t 60 >/dev/null 2>&1; then
			say "$(date +%T.%N) restart -m $mode"
		else
			say "$(date +%T.%N) restart -m $mode FAILED"
		fi
	done
}

nemesis_pause() { # SIGSTOP one driver process for 1.5 x max ttl, then SIGCONT
	local stop=$1 pids=("${@:2}") pid
	while nap_or_stop "$stop" "$(rand_ms 1000 3000)"; do
		pid=${pids[RANDOM % ${#pids[@]}]}
		kill -STOP "$pid" 2>/dev/null || continue
		say "$(date +%T.%N) SIGSTOP driver $pid"
		nap_ms $((MAX_TTL * 3 / 2))
		kill -CONT "$pid" 2>/dev/null
		say "$(date +%T.%N) SIGCONT driver $pid"
	done
}

nemesis_pgbouncer() { # kill -INT pgbouncer and start it again
	local stop=$1
	while nap_or_stop "$stop" "$(rand_ms 2500 4000)"; do
		stop_pgbouncer
		nap_ms "$(rand_ms 100 800)"
		if start_pgbouncer; then
			say "$(date +%T.%N) pgbouncer restarted"
		else
			say "$(date +%T.%N) pgbouncer restart FAILED"
		fi
	done
}

# --- one run ----------------------------------------------------------------------------
RESULTS=()
PASSED=0
FAILED=0

run_case() { # name, file prefix
	local name=$1 f=$WORK/$2 conninfo prepared=1 expect=clean i pid stop nem_pid events rc row
	local -a dargs drivers=()
	local t0=$SECONDS log_off clock0 grace_args=()
	clock0=$(wall_minus_mono)
	log_off=$(stat -c %s "$PG_LOG" 2>/dev/null || echo 0)
	conninfo="$PG_DSN application_name=lockext-checker"
	# TTLs 100..2000 ms (log-uniform); 20 % of holders renew every ttl/3 while working
	# 1-3 TTLs, the others work 0..75 % of the TTL, or (10 %) overrun it by up to 50 %
	# half the threads of each process wait on the server (try_lock(key, ttl, wait_ms)),
	# so grants handed over by a release, expiry or force_release are checked too
	dargs=(--keys "$KEYS" --threads "$THREADS" --ttl-ms "$MAX_TTL" --ttl-min-ms 100
		--work-max-pct 75 --overrun-pct 10 --renew-pct 20 --wait-pct "$WAIT_PCT")
	case $name in
	pgbouncer)
		start_pgbouncer || { say "pgbouncer did not start"; cat "$WORK/pgb/pgbouncer.log" >&2; }
		conninfo="host=127.0.0.1 port=$PGB_PORT dbname=postgres user=postgres"
		prepared=0
		;;
	selftest)
		# grace off: after a crash the server grants keys that pre-crash holders still
		# believe they own; the checker must see it. Fixed TTL 2 s, holders work 1-2 s
		# (so a crash usually finds a holder with a long window left), 20 % renew.
		expect=violations
		dargs=(--keys 2 --threads "$THREADS" --ttl-ms 2000 --work-min-pct 50 --work-max-pct 100
			--overrun-pct 0 --renew-pct 20 --wait-pct "$WAIT_PCT")
		"${PSQL[@]}" -c 'ALTER SYSTEM SET lockext.recovery_grace_ms = 0' -c 'SELECT pg_reload_conf()' >/dev/null
		;;
	esac
	for i in $(seq "$PROCS"); do
		"$DRIVER" --conninfo "$conninfo" --prepared "$prepared" --proc "$i" \
			--key-prefix "ck-$2-$$" --seconds "$RUN_SECONDS" "${dargs[@]}" \
			--out "$f.p$i.jsonl" 2>>"$f.driver.log" &
		drivers+=($!)
	done
	BG_PIDS=("${drivers[@]}")
	stop=$f.stop
	case $name in
	none) nem_pid= ;;
	kill) nemesis_kill "$stop" 3000 5000 >"$f.nemesis.log" 2>&1 & nem_pid=$! ;;
	selftest) nemesis_kill "$stop" 1200 2000 >"$f.nemesis.log" 2>&1 & nem_pid=$! ;;
	restart) nemesis_restart "$stop" >"$f.nemesis.log" 2>&1 & nem_pid=$! ;;
	pause) nemesis_pause "$stop" "${drivers[@]}" >"$f.nemesis.log" 2>&1 & nem_pid=$! ;;
	pgbouncer) nemesis_pgbouncer "$stop" >"$f.nemesis.log" 2>&1 & nem_pid=$! ;;
	esac
	[ -n "$nem_pid" ] && BG_PIDS+=("$nem_pid")
	touch "$f.nemesis.log"

	# wait for the drivers (they stop by themselves); the nemesis stops when they are done
	local hung=0 deadline=$((SECONDS + RUN_SECONDS + 60))
	for pid in "${drivers[@]}"; do
		while kill -0 "$pid" 2>/dev/null; do
			if [ "$SECONDS" -ge "$deadline" ]; then
				hung=1
				kill -CONT "$pid" 2>/dev/null
				kill -KILL "$pid" 2>/dev/null
			fi
			sleep 0.2
		done
		wait "$pid" 2>/dev/null
	done
	touch "$stop"
	if [ -n "$nem_pid" ]; then
		wait "$nem_pid" 2>/dev/null
		for pid in "${drivers[@]}"; do kill -CONT "$pid" 2>/dev/null; done
	fi
	BG_PIDS=()
	events=$(grep -vc 'FAILED\|no backend' "$f.nemesis.log")
	[ "$name" = pgbouncer ] && stop_pgbouncer
	[ "$name" = selftest ] && "${PSQL[@]}" -c 'ALTER SYSTEM RESET lockext.recovery_grace_ms' \
		-c 'SELECT pg_reload_conf()' >/dev/null 2>&1
	wait_ready || say "the server did not come back after run $name"

	# the grace check: what the server logged since the run started; the self-test checks
	# the grace a correct server would have kept (the default, the max TTL)
	[ "$name" = selftest ] && grace_args=(--grace-ms "$MAX_TTL")
	python3 "$HERE/check.py" --label "$name" --json "$f.json" --examples 3 \
		--server-log "$PG_LOG" --server-log-from "$log_off" --wall-minus-mono "$clock0" --wall-minus-mono "$(wall_minus_mono)" \
		"${grace_args[@]}" "$f".p*.jsonl >"$f.check.log" 2>&1
	rc=$?
	# server processes that died of anything but the nemesis' SIGKILL
	local crashes
	crashes=$(tail -c +"$((log_off + 1))" "$PG_LOG" | grep -c 'terminated by signal [^9]\|PANIC\|TRAP:')

	row=$(python3 - "$f.json" "$name" "$expect" "$rc" "$hung" "$events" "$crashes" "$((SECONDS - t0))" <<'EOF'
import json, sys
path, name, expect, rc, hung, events, crashes, secs = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception:
    r = {}
g = lambda k: r.get(k, "-")
why = []
if int(hung): why.append("a driver hung")
if int(crashes): why.append(f"{crashes} unexpected server crash lines")
if name != "none" and int(events) == 0: why.append("the nemesis never struck")
if expect == "clean":
    if rc != "0": why.append(f"checker exit {rc} ({g('verdict')})")
    if r.get("grants", 0) == 0: why.append("no grants")
else:
    if r.get("mutex_violations", 0) == 0: why.append("the checker saw no violation")
    if r.get("verdict") == "unusable" or rc == "2": why.append("unusable history")
verdict = "PASS" if not why else "FAIL: " + "; ".join(why)
print("\t".join(str(x) for x in (name, g("ops"), g("grants"), g("errors"), g("mutex_violations"),
                                  g("fence_violations"), g("grace_violations"), g("lost_leases"), events, secs,
                                  verdict)))
EOF
)
	RESULTS+=("$row")
	case $row in
	*$'\t'PASS) PASSED=$((PASSED + 1)) ;;
	*) FAILED=$((FAILED + 1)) ;;
	esac
	sed 's/^/  /' "$f.check.log"
	say "  nemesis events: $events; $(grep '^driver p' "$f.driver.log" | tr '\n' ' ')"
	say "  => ${row##*$'\t'}"
}

say "lockext checker: ${#RUNS[@]} runs x ${RUN_SECONDS}s, $PROCS driver processes x $THREADS threads, $KEYS keys, max ttl ${MAX_TTL} ms (grace = max ttl), port $PG_PORT"
T_START=$SECONDS
n=0
for r in "${RUNS[@]}"; do
	n=$((n + 1))
	say "== $r"
	run_case "$r" "$(printf '%02d' "$n")-$r"
done

say ""
{
	printf 'nemesis\tops\tgrants\terrors\tmutex violations\tfence violations\tgrace violations\tleases lost early\tnemesis events\tseconds\tverdict\n'
	printf '%s\n' "${RESULTS[@]}"
} | column -t -s $'\t' -o ' | ' | sed 's/^/| /; s/$/ |/'
say "total $((SECONDS - T_START)) s"
[ "$KEEP" = 1 ] && say "kept $WORK (histories, checker output, nemesis logs, postgres.log, pgb/pgbouncer.log)"
say "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
