#!/usr/bin/env bash
# client/test/lockext_run_test.sh — tests of the lockext-run tool against a live server.
#
#   lockext_run_test.sh LOCKEXT_RUN_BINARY CONNINFO
#
# CONNINFO must be key/value (host=... port=... dbname=... user=...) and name a
# superuser (lockext_force_release); the database must have lockext installed.
# Prints "ok - NAME" or "not ok - NAME: why" per case and ends with
# "lockext-run tests: N passed, M failed"; exits 1 if any case failed.
# client/test/run.sh runs it against its throwaway cluster.
set -u -o pipefail

RUN=$1
DSN=$2
. "$(dirname "$0")/../../tools/lib.sh" # PG_BIN
PSQL=${PSQL:-$PG_BIN/psql}
T=$(mktemp -d /tmp/lockext-run-test.XXXXXX)
# Processes a case wants gone whatever happens (a failing case must not leave a
# "sleep 300" behind): their pids are appended to $T/cleanup.
cleanup() {
    local p
    for p in $(cat "$T/cleanup" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
PASSED=0
FAILED=0

ok() { PASSED=$((PASSED + 1)); printf 'ok - %s\n' "$1"; }
not_ok() { FAILED=$((FAILED + 1)); printf 'not ok - %s: %s\n' "$1" "$2"; }
# check NAME 'CONDITION': CONDITION is shell code (eval'd), e.g. '[ "$s" = 0 ] && [ -e f ]'.
check() {
    if eval "$2"; then ok "$1"; else not_ok "$1" "failed: $2"; fi
}
sql() { "$PSQL" "$DSN" -qAtc "$1"; }
key() { echo "lockext-run-test-$1-$$-$RANDOM"; }
leases() { sql "SELECT count(*) FROM lockext_leases WHERE key = '$1'"; }
now_ms() { date +%s%3N; }
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$DSN"; }
# wait_file FILE [TENTHS]: waits up to TENTHS/10 s (default 50) until FILE is non-empty.
wait_file() {
    local i
    for ((i = 0; i < ${2:-50}; i++)); do
        [ -s "$1" ] && return 0
        sleep 0.1
    done
    return 1
}
# gone PID [TENTHS]: true once PID is no longer a live process (zombies count as gone),
# waiting up to TENTHS/10 s (default 20).
gone() {
    local i st
    for ((i = 0; i <= ${2:-20}; i++)); do
        st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)
        [ -z "$st" ] || [ "$st" = Z ] && return 0
        sleep 0.1
    done
    return 1
}

# ---- four racing runs: the command runs exactly once -----------------------------
k=$(key race)
pids=()
for i in 1 2 3 4; do
    "$RUN" -d "$DSN" -k "$k" -t 2s -- sh -c "echo run >>'$T/race'; sleep 1" 2>"$T/race.err$i" &
    pids+=($!)
done
statuses=""
for p in "${pids[@]}"; do
    wait "$p"
    statuses="$statuses$?"$'\n'
done
runs=$(wc -l <"$T/race")
statuses=$(printf "%s" "$statuses" | sort | tr "\n" " ")
if [ "$runs" = 1 ] && [ "$statuses" = "0 1 1 1 " ]; then
    ok "four racing runs: the command ran once, the others exited 1 (conflict)"
else
    not_ok "four racing runs" "command ran $runs times, statuses $statuses"
fi
check "released after the run (no row in lockext_leases)" '[ "$(leases "$k")" = 0 ]'

# ---- conflict status, -E and -q -------------------------------------------------
k=$(key conflict)
"$RUN" -d "$DSN" -k "$k" -t 3s -- sleep 1.5 &
holder=$!
sleep 0.5
"$RUN" -d "$DSN" -k "$k" -- touch "$T/conflict-ran" 2>"$T/conflict.err"
s=$?
check "conflict: exit status 1 by default" '[ "$s" = 1 ]'
check "conflict: the command did not run" '[ ! -e "$T/conflict-ran" ]'
check "conflict: says the lock is held" 'grep -q "is held by someone else" "$T/conflict.err"'
"$RUN" -d "$DSN" -k "$k" -E 7 -q -- true 2>"$T/quiet.err"
s=$?
check "conflict with -E 7: exit status 7" '[ "$s" = 7 ]'
check "conflict with -q: nothing on stderr" '[ ! -s "$T/quiet.err" ]'

# ---- --wait gets the lock when the holder finishes ------------------------------
start=$(now_ms)
"$RUN" -d "$DSN" -k "$k" -w 5s -- touch "$T/waited"
s=$?
elapsed=$(($(now_ms) - start))
wait "$holder"
check "--wait 5s: acquired after the holder finished (exit 0)" '[ "$s" = 0 ] && [ -e "$T/waited" ]'
check "--wait 5s: waited for the holder (${elapsed} ms, holder had ~1000 ms left)" \
    '[ "$elapsed" -ge 700 ] && [ "$elapsed" -lt 4000 ]'
"$RUN" -d "$DSN" -k "$k" -t 3s -- sleep 2 &
holder=$!
sleep 0.3
start=$(now_ms)
"$RUN" -d "$DSN" -k "$k" -w 600ms -q -- true
s=$?
elapsed=$(($(now_ms) - start))
wait "$holder"
check "--wait 600ms on a longer holder: gives up with the conflict status after ~600 ms (${elapsed} ms)" \
    '[ "$s" = 1 ] && [ "$elapsed" -ge 550 ] && [ "$elapsed" -lt 1500 ]'

# ---- --wait waits on the server (lockext 1.1): push, FIFO, cancelled by SIGTERM -------
# A holder taken with SQL (released at a known instant); the waiter's command writes the
# time it started.
k=$(key push)
lid=$(sql "SELECT (try_lock('$k', 30000)).lock_id")
"$RUN" -d "$DSN" -k "$k" -w 20s -- sh -c "date +%s%3N >'$T/push.started'" 2>"$T/push.err" &
p=$!
echo "$p" >>"$T/cleanup"
sleep 2.5 # a polling waiter would be in 1.5 s backoff steps by now
w=$(sql "SELECT waiters FROM lockext_leases WHERE key = '$k'")
released=$(now_ms)
sql "SELECT release('$k', '$lid')" >/dev/null
wait "$p"
s=$?
lag=$(( $(cat "$T/push.started" 2>/dev/null || echo 0) - released ))
check "--wait: the waiter waits on the server (lockext_leases.waiters = $w)" '[ "$w" = 1 ]'
check "--wait: granted when the holder releases, within a fraction of a second (${lag} ms, exit $s)" \
    '[ "$s" = 0 ] && [ "$lag" -ge 0 ] && [ "$lag" -lt 300 ]'

# SIGTERM while waiting: exits at once with 128+15, leaves no waiter, and the lease is
# never handed to the dead waiter when the holder releases afterwards.
k=$(key termwait)
lid=$(sql "SELECT (try_lock('$k', 30000)).lock_id")
"$RUN" -d "$DSN" -k "$k" -t 20s -w 30s -- touch "$T/termwait.ran" 2>"$T/termwait.err" &
p=$!
echo "$p" >>"$T/cleanup"
for i in $(seq 50); do
    [ "$(sql "SELECT waiters FROM lockext_leases WHERE key = '$k'")" = 1 ] && break
    sleep 0.1
done
start=$(now_ms)
kill -TERM "$p"
wait "$p"
s=$?
elapsed=$(($(now_ms) - start))
w=$(sql "SELECT waiters FROM lockext_leases WHERE key = '$k'")
sql "SELECT release('$k', '$lid')" >/dev/null
sleep 0.3
check "--wait, SIGTERM while waiting: exit 143 within 500 ms (${elapsed} ms, exit $s)" \
    '[ "$s" = 143 ] && [ "$elapsed" -lt 500 ]'
check "--wait, SIGTERM while waiting: no waiter left on the server ($w)" '[ "$w" = 0 ]'
check "--wait, SIGTERM while waiting: no lease handed to the dead waiter, the command never ran" \
    '[ "$(leases "$k")" = 0 ] && [ ! -e "$T/termwait.ran" ]'

# Chained waits: a --wait longer than the server's lockext.max_wait_ms (300 ms here) is
# sent as successive bounded waits, never refused (22023) and never cut short.
sql "ALTER SYSTEM SET lockext.max_wait_ms = 300" && sql "SELECT pg_reload_conf()" >/dev/null
for i in $(seq 50); do
    [ "$(sql "SHOW lockext.max_wait_ms")" = 300ms ] && break
    sleep 0.1
done
k=$(key chain)
lid=$(sql "SELECT (try_lock('$k', 30000)).lock_id")
start=$(now_ms)
"$RUN" -d "$DSN" -k "$k" -w 1200ms -q -- true 2>"$T/chain.err"
s=$?
elapsed=$(($(now_ms) - start))
check "--wait 1200ms over lockext.max_wait_ms = 300: conflict after the whole bound (${elapsed} ms, exit $s)" \
    '[ "$s" = 1 ] && [ "$elapsed" -ge 1150 ] && [ "$elapsed" -lt 2500 ]'
( sleep 1; sql "SELECT release('$k', '$lid')" >/dev/null ) &
"$RUN" -d "$DSN" -k "$k" -w 5s -- true 2>"$T/chain2.err"
s=$?
wait
check "--wait 5s over lockext.max_wait_ms = 300: granted at the release after ~1 s (exit $s)" '[ "$s" = 0 ]'
sql "ALTER SYSTEM RESET lockext.max_wait_ms" && sql "SELECT pg_reload_conf()" >/dev/null
for i in $(seq 50); do
    [ "$(sql "SHOW lockext.max_wait_ms")" = 1min ] && break
    sleep 0.1
done

# A lockext 1.0 database (no try_lock(key, ttl, wait)): --wait polls as before, and a
# SIGTERM still ends the wait at once.
v10db="lockext_run_v10_$$"
if sql "CREATE DATABASE $v10db" >/dev/null &&
    "$PSQL" "$DSN dbname=$v10db" -qAtc "CREATE EXTENSION lockext VERSION '1.0'" >/dev/null; then
    V10="$DSN dbname=$v10db"
    k=$(key v10)
    lid=$("$PSQL" "$V10" -qAtc "SELECT (try_lock('$k', 30000)).lock_id")
    ( sleep 1; "$PSQL" "$V10" -qAtc "SELECT release('$k', '$lid')" >/dev/null ) &
    "$RUN" -d "$V10" -k "$k" -w 5s -- touch "$T/v10.ran" 2>"$T/v10.err"
    s=$?
    wait
    check "--wait against a lockext 1.0 database: polls and gets the key (exit $s)" \
        '[ "$s" = 0 ] && [ -e "$T/v10.ran" ]'
    lid=$("$PSQL" "$V10" -qAtc "SELECT (try_lock('$k', 30000)).lock_id")
    "$RUN" -d "$V10" -k "$k" -w 30s -- true 2>/dev/null &
    p=$!
    sleep 0.8
    start=$(now_ms)
    kill -TERM "$p"
    wait "$p"
    s=$?
    elapsed=$(($(now_ms) - start))
    check "--wait against a lockext 1.0 database: SIGTERM ends the polling at once (${elapsed} ms, exit $s)" \
        '[ "$s" = 143 ] && [ "$elapsed" -lt 500 ]'
    sql "DROP DATABASE $v10db" >/dev/null
else
    not_ok "lockext 1.0 database cases" "cannot create a database with lockext 1.0"
fi

# ---- renewal keeps the lease for longer than its TTL -----------------------------
k=$(key renew)
"$RUN" -d "$DSN" -k "$k" -t 1s -- sleep 2.5 &
holder=$!
sleep 1.8
"$RUN" -d "$DSN" -k "$k" -q -- true
s=$?
wait "$holder"
s1=$?
check "a 2.5 s command under a 1 s TTL keeps the lease (second run: conflict, first: exit 0)" \
    '[ "$s" = 1 ] && [ "$s1" = 0 ]'

# ---- exit status and signals ------------------------------------------------------
k=$(key status)
"$RUN" -d "$DSN" -k "$k" -t 2s -- sh -c 'exit 42'
s=$?
check "the command's exit status is passed on (42)" '[ "$s" = 42 ]'
"$RUN" -d "$DSN" -k "$k" -t 2s -- sh -c 'kill -USR1 $$'
s=$?
check "a command killed by SIGUSR1 gives 128+10 ($s)" '[ "$s" = 138 ]'
"$RUN" -d "$DSN" -k "$k" -t 2s -- sleep 30 &
p=$!
sleep 0.5
start=$(now_ms)
kill -TERM "$p"
wait "$p"
s=$?
elapsed=$(($(now_ms) - start))
check "SIGTERM to lockext-run reaches the command: status 128+15 ($s) in $elapsed ms" \
    '[ "$s" = 143 ] && [ "$elapsed" -lt 2000 ]'
check "released after SIGTERM (no row in lockext_leases)" '[ "$(leases "$k")" = 0 ]'
"$RUN" -d "$DSN" -k "$k" -t 2s -- sh -c "trap 'echo hup >\"$T/hup\"; exit 3' HUP; sleep 30 & wait" &
p=$!
sleep 0.5
kill -HUP "$p"
wait "$p"
s=$?
check "SIGHUP is forwarded to the command (its trap ran, exit 3)" '[ "$s" = 3 ] && [ -e "$T/hup" ]'

# ---- lease lost: the command is stopped --------------------------------------------
k=$(key lost)
"$RUN" -d "$DSN" -k "$k" -t 1500ms -- \
    sh -c "trap 'echo term >\"$T/lost-term\"; exit 0' TERM; while :; do sleep 0.1; done" \
    2>"$T/lost.err" &
p=$!
sleep 0.6
start=$(now_ms)
forced=$(sql "SELECT lockext_force_release('$k')")
wait "$p"
s=$?
elapsed=$(($(now_ms) - start))
check "lockext_force_release removed the lease" '[ "$forced" = t ]'
check "lost lease: exit status 70 ($s)" '[ "$s" = 70 ]'
check "lost lease: the command got SIGTERM" '[ -e "$T/lost-term" ]'
check "lost lease: noticed within ~ttl/3 (${elapsed} ms)" '[ "$elapsed" -lt 1200 ]'
check "lost lease: says so on stderr" 'grep -q "lease .$k. lost" "$T/lost.err"'
"$RUN" -d "$DSN" -k "$k" -t 1500ms -K 300ms -- sh -c "trap '' TERM; while :; do sleep 0.1; done" \
    2>"$T/kill.err" &
p=$!
sleep 0.6
sql "SELECT lockext_force_release('$k')" >/dev/null
wait "$p"
s=$?
check "lost lease, command ignores SIGTERM: SIGKILL after --kill-after, exit 70" \
    '[ "$s" = 70 ] && grep -q SIGKILL "$T/kill.err"'

# ---- environment -------------------------------------------------------------------
k=$(key env)
for i in 1 2; do
    "$RUN" -d "$DSN" -k "$k" -t 2s -- sh -c "env | grep '^LOCKEXT_' >'$T/env$i'"
done
f1=$(sed -n 's/^LOCKEXT_FENCE=//p' "$T/env1")
f2=$(sed -n 's/^LOCKEXT_FENCE=//p' "$T/env2")
check "LOCKEXT_FENCE increases between runs ($f1 < $f2)" \
    '[ -n "$f1" ] && [ -n "$f2" ] && [ "$f1" -lt "$f2" ]'
check "LOCKEXT_KEY is the key" 'grep -qx "LOCKEXT_KEY=$k" "$T/env1"'
check "LOCKEXT_LOCK_ID is a UUID" 'grep -Eqx "LOCKEXT_LOCK_ID=[0-9a-f-]{36}" "$T/env1"'
check "LOCKEXT_TTL_MS is the TTL" 'grep -qx "LOCKEXT_TTL_MS=2000" "$T/env1"'
# The command inherits lockext-run's descriptors only (libpq's sockets, the signalfd and
# pipes are close-on-exec): compare with the same shell started directly.
sh -c 'ls /proc/$$/fd' >"$T/fd-direct"
"$RUN" -d "$DSN" -k "$k" -t 2s -- sh -c 'ls /proc/$$/fd' >"$T/fd-run"
check "no descriptor leaks into the command ($(tr '\n' ' ' <"$T/fd-run"))" \
    'cmp -s "$T/fd-direct" "$T/fd-run"'
PGHOST=$(field host) PGPORT=$(field port) PGUSER=$(field user) PGDATABASE=$(field dbname) \
    "$RUN" -k "$k" -t 2s -- true
s=$?
check "no -d: libpq's PG* environment is used" '[ "$s" = 0 ]'

# ---- failures that are not contention ------------------------------------------------
"$RUN" -d "host=127.0.0.1 port=1 dbname=postgres connect_timeout=2" -k "$(key down)" \
    -- touch "$T/down-ran" 2>"$T/down.err"
s=$?
check "unreachable server: exit 75 ($s), command not run, says why" \
    '[ "$s" = 75 ] && [ ! -e "$T/down-ran" ] && grep -q "could not connect" "$T/down.err"'
"$RUN" -d "$DSN" -k "$(key badttl)" -t 5x -- true 2>"$T/ttl.err"
s=$?
check "bad --ttl: usage status 64 ($s) with a message" \
    '[ "$s" = 64 ] && grep -q -- "--ttl" "$T/ttl.err"'
"$RUN" -d "$DSN" -k "$(key bigttl)" -t 1h -- true 2>/dev/null
s=$?
check "TTL above the server's maximum: usage status 64" '[ "$s" = 64 ]'
"$RUN" -d "$DSN" -k "$(key x)" -w soon -- true 2>/dev/null
s=$?
check "bad --wait: usage status 64" '[ "$s" = 64 ]'
"$RUN" -d "$DSN" -- true 2>/dev/null
s=$?
check "no key: usage status 64" '[ "$s" = 64 ]'
"$RUN" -d "$DSN" -k "$(key x)" 2>/dev/null
s=$?
check "no command: usage status 64" '[ "$s" = 64 ]'
"$RUN" -d "$DSN" -k "$(key x)" -E 256 -- true 2>/dev/null
s=$?
check "bad -E: usage status 64" '[ "$s" = 64 ]'
k=$(key notfound)
"$RUN" -d "$DSN" -k "$k" -- "$T/no-such-command" 2>/dev/null
s=$?
check "command not found: 127" '[ "$s" = 127 ]'
check "released after a failed exec" '[ "$(leases "$k")" = 0 ]'
printf 'echo hi\n' >"$T/not-executable"
chmod 644 "$T/not-executable"
"$RUN" -d "$DSN" -k "$k" -- "$T/not-executable" 2>/dev/null
s=$?
check "command not executable: 126" '[ "$s" = 126 ]'
"$RUN" --help | grep -q -- "--conflict-exit-code"
s=$?
check "--help" '[ "$s" = 0 ]'
"$RUN" --version | grep -q "lockext-run"
s=$?
check "--version" '[ "$s" = 0 ]'

# ---- process tree: the whole tree is stopped, not only the command -----------------
# tree_case NAME SCRIPT: SCRIPT (run by sh) starts a "sleep 300" somewhere below the
# command and writes its pid to $T/tree.pid; the lease is then taken away.
tree_case() {
    local name=$1 script=$2 k p s sp
    k=$(key tree)
    rm -f "$T/tree.pid"
    "$RUN" -d "$DSN" -k "$k" -t 1500ms -K 1s -- sh -c "$script" 2>"$T/tree.err" &
    p=$!
    if ! wait_file "$T/tree.pid"; then
        not_ok "$name" "the command did not start"
        kill "$p" 2>/dev/null
        wait "$p"
        return
    fi
    sp=$(cat "$T/tree.pid")
    echo "$sp" >>"$T/cleanup"
    sql "SELECT lockext_force_release('$k')" >/dev/null
    wait "$p"
    s=$?
    check "$name: exit 70 ($s) and the sleep (pid $sp) is gone when lockext-run exits" \
        '[ "$s" = 70 ] && gone "$sp" 0'
}
tree_case "lost lease, background child (sh -c 'sleep 300 & wait')" \
    "sleep 300 & echo \$! >'$T/tree.pid'; wait"
tree_case "lost lease, setsid grandchild (setsid sleep 300 &)" \
    "setsid sleep 300 & echo \$! >'$T/tree.pid'; wait"
tree_case "lost lease, daemonised grandchild (double fork + setsid, command keeps running)" \
    "setsid sh -c 'sleep 300 & echo \$! >\"$T/tree.pid\"' & while :; do sleep 0.1; done"
tree_case "lost lease, command ignores SIGTERM, child in another session" \
    "trap '' TERM; setsid sh -c 'trap \"\" TERM; exec sleep 300' & echo \$! >'$T/tree.pid'; while :; do sleep 0.1; done"

k=$(key straggler)
rm -f "$T/tree.pid"
"$RUN" -d "$DSN" -k "$k" -t 2s -- sh -c "setsid sleep 300 >/dev/null 2>&1 & echo \$! >'$T/tree.pid'" \
    2>"$T/straggler.err"
s=$?
sp=$(cat "$T/tree.pid" 2>/dev/null)
echo "$sp" >>"$T/cleanup"
check "the command exits leaving a setsid'd sleep: exit 0 ($s), the sleep is stopped before the release" \
    '[ "$s" = 0 ] && [ -n "$sp" ] && gone "$sp" 0 && grep -q "left 1 process" "$T/straggler.err"'
check "released after the stragglers ended" '[ "$(leases "$k")" = 0 ]'

"$RUN" -d "$DSN" -k "$k" -t 2s -- sh -c 'cut -d" " -f5 /proc/$$/stat >"$1"; echo $$ >>"$1"' sh "$T/pgrp"
pg=$(sed -n 1p "$T/pgrp")
cp=$(sed -n 2p "$T/pgrp")
check "the command runs in its own process group (pgid $pg = its pid $cp, lockext-run's is $$'s)" \
    '[ -n "$pg" ] && [ "$pg" = "$cp" ] && [ "$pg" != "$(cut -d" " -f5 /proc/$$/stat)" ]'

# At a terminal (script(1) gives a pty): the command's group gets the foreground, and
# lockext-run's gets it back at the end.
if command -v script >/dev/null; then
    k=$(key tty)
    script -qec "'$RUN' -d '$DSN' -k '$k' -t 2s -- sh -c 'echo \$\$ \$(cut -d\" \" -f5,8 /proc/\$\$/stat)'; \
        cut -d' ' -f5,8 /proc/\$\$/stat" /dev/null </dev/null | tr -d '\r' >"$T/tty"
    read -r cpid cpg ctp <<<"$(sed -n 1p "$T/tty")"
    read -r spg stp <<<"$(sed -n 2p "$T/tty")"
    check "at a terminal: the command's own group ($cpid $cpg) is the foreground ($ctp), the shell's ($spg) again afterwards ($stp)" \
        '[ -n "$cpid" ] && [ "$cpid" = "$cpg" ] && [ "$cpg" = "$ctp" ] && [ -n "$spg" ] && [ "$spg" = "$stp" ]'
fi

# lockext-run killed with SIGKILL: its supervising process (which holds the lease and
# watches the tree) kills the whole tree at once and releases the lease.
k=$(key sigkill)
rm -f "$T/tree.pid" "$T/tree2.pid"
"$RUN" -d "$DSN" -k "$k" -t 10s -- sh -c "setsid sleep 300 & echo \$! >'$T/tree2.pid'; echo \$\$ >'$T/tree.pid'; exec sleep 300" \
    2>/dev/null &
p=$!
if wait_file "$T/tree.pid" && wait_file "$T/tree2.pid"; then
    sp=$(cat "$T/tree.pid")
    gp=$(cat "$T/tree2.pid")
    echo "$sp $gp" >>"$T/cleanup"
    kill -KILL "$p"
    wait "$p" 2>/dev/null
    check "SIGKILL of lockext-run: the command (pid $sp) and a setsid'd child (pid $gp) end at once" \
        'gone "$sp" 10 && gone "$gp" 10'
    for _ in $(seq 20); do [ "$(leases "$k")" = 0 ] && break; sleep 0.1; done
    check "SIGKILL of lockext-run: the lease is released (not left to expire after 10 s)" \
        '[ "$(leases "$k")" = 0 ]'
else
    not_ok "SIGKILL of lockext-run" "the command did not start"
    kill "$p" 2>/dev/null
fi
# Its supervising process killed with SIGKILL: the kernel kills the command
# (PR_SET_PDEATHSIG), lockext-run (a subreaper) kills what the command started, exit 70.
k=$(key sigkill2)
rm -f "$T/tree.pid" "$T/tree2.pid"
"$RUN" -d "$DSN" -k "$k" -t 10s -- sh -c "setsid sleep 300 & echo \$! >'$T/tree2.pid'; echo \$\$ >'$T/tree.pid'; exec sleep 300" \
    2>"$T/sup.err" &
p=$!
if wait_file "$T/tree.pid" && wait_file "$T/tree2.pid"; then
    sp=$(cat "$T/tree.pid")
    gp=$(cat "$T/tree2.pid")
    echo "$sp $gp" >>"$T/cleanup"
    sup=$(cat /proc/"$p"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -vx "$sp" | head -n 1)
    if [ -n "$sup" ] && [ "$sup" != "$sp" ]; then
        kill -KILL "$sup"
        wait "$p"
        s=$?
        check "SIGKILL of the supervising process (pid $sup): command and setsid'd child gone, exit 70 ($s)" \
            'gone "$sp" 10 && gone "$gp" 10 && [ "$s" = 70 ]'
    else
        not_ok "SIGKILL of the supervising process" "no supervising process below lockext-run ($p)"
        kill "$p" 2>/dev/null
        wait "$p"
    fi
else
    not_ok "SIGKILL of the supervising process" "the command did not start"
    kill "$p" 2>/dev/null
fi

# ---- a closed stderr (… 2>&1 | true) does not keep lockext-run from stopping the command
k=$(key pipe)
rm -f "$T/tree.pid" "$T/pipe.status"
(
    "$RUN" -d "$DSN" -k "$k" -t 1500ms -- sh -c "echo \$\$ >'$T/tree.pid'; exec sleep 300" 2>&1 | true
    echo "${PIPESTATUS[0]}" >"$T/pipe.status"
) &
p=$!
if wait_file "$T/tree.pid"; then
    sp=$(cat "$T/tree.pid")
    echo "$sp" >>"$T/cleanup"
    sleep 0.3
    sql "SELECT lockext_force_release('$k')" >/dev/null
    wait "$p"
    s=$(cat "$T/pipe.status")
    check "lost lease with stderr a closed pipe: the command (pid $sp) is stopped, exit 70 ($s)" \
        'gone "$sp" 0 && [ "$s" = 70 ]'
else
    not_ok "lost lease with stderr a closed pipe" "the command did not start"
    kill "$p" 2>/dev/null
fi
# ---- a stalled stderr reader (… 2>&1 | sleep 60) does not keep the command alive ------
# The command fills the pipe (64 KiB) and ignores SIGTERM; lockext-run's diagnostics
# then cannot be written: the SIGKILL must still come before the lease ends on the server.
k=$(key stall-reader)
rm -f "$T/tree.pid" "$T/reader.pid"
(
    setsid "$RUN" -d "$DSN" -k "$k" -t 3s -- sh -c "echo \$\$ >'$T/tree.pid'; head -c 65536 /dev/zero >&2; trap '' TERM; while :; do sleep .2; done" 2>&1 |
        sh -c "echo \$\$ >'$T/reader.pid'; exec sleep 30"
) 2>/dev/null &
p=$!
echo "$p" >>"$T/cleanup"
if wait_file "$T/tree.pid"; then
    sp=$(cat "$T/tree.pid")
    echo "$sp" >>"$T/cleanup"
    sleep 1.2
    e=$(sql "SELECT (extract(epoch FROM expires_at) * 1000)::bigint FROM lockext_leases WHERE key = '$k'")
    sql "SELECT lockext_force_release('$k')" >/dev/null
    dead=""
    t_end=$(($(now_ms) + 6000))
    while [ "$(now_ms)" -lt "$t_end" ]; do
        st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$sp/status" 2>/dev/null)
        if [ -z "$st" ] || [ "$st" = Z ]; then
            dead=$(now_ms)
            break
        fi
        sleep 0.02
    done
    "$RUN" -d "$DSN" -k "$k" -t 2s -q -- true
    s2=$?
    check "stderr a pipe whose reader stalled: the command (pid $sp, ignores SIGTERM) is dead before the server-side expiry (${e:-?} - ${dead:-never} ms)" \
        '[ -n "$dead" ] && [ -n "$e" ] && [ "$dead" -lt "$e" ] && [ "$s2" = 0 ]'
    kill -KILL "$sp" 2>/dev/null
else
    not_ok "stderr a pipe whose reader stalled" "the command did not start"
fi
rp=$(cat "$T/reader.pid" 2>/dev/null)
[ -n "$rp" ] && kill -KILL "$rp" 2>/dev/null
wait "$p" 2>/dev/null
"$RUN" -d "$DSN" -k "$k" -t 2s -- sh -c 'sed -n "s/^SigIgn:[[:space:]]*//p" /proc/$$/status' >"$T/sigign-pipe"
m=$(cat "$T/sigign-pipe")
check "the command gets SIGPIPE's default disposition back (SigIgn $m)" \
    '[ -n "$m" ] && [ $(( 16#$m & (1 << 12) )) = 0 ]'

# ---- job-control stops: the command never runs on while renewals are stopped --------
# The command ignores SIGTERM. lockext-run is started in a process group of its own
# (like a shell's job; perl does the setpgid), a child of this shell, so that the group
# is not orphaned (the kernel discards SIGTSTP sent to an orphaned group).
own_group() { exec perl -e 'setpgrp(0, 0) or die "setpgrp: $!"; exec { $ARGV[0] } @ARGV or die "exec: $!"' "$@"; }
# pstate PID: the State letter of PID ("" when gone).
pstate() { sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null; }
stop_case() {
    local sig=$1 k p sp st s s2 r1 r2
    k=$(key "stop$sig")
    rm -f "$T/tree.pid"
    own_group "$RUN" -d "$DSN" -k "$k" -t 1500ms -- \
        sh -c "echo \$\$ >'$T/tree.pid'; trap '' TERM; while :; do sleep 0.1; done" 2>"$T/stop$sig.err" &
    p=$!
    echo "$p" >>"$T/cleanup"
    if ! wait_file "$T/tree.pid"; then
        not_ok "SIG$sig to lockext-run's group" "the command did not start"
        kill -KILL "$p" 2>/dev/null
        return
    fi
    sp=$(cat "$T/tree.pid")
    echo "$sp" >>"$T/cleanup"
    sleep 0.3
    kill -"$sig" -- -"$p"
    sleep 0.5
    st=$(pstate "$sp")
    sleep 1.8 # past the TTL: without renewals the lease has ended on the server
    r1=$(pstate "$sp")
    "$RUN" -d "$DSN" -k "$k" -t 1s -q -- true
    s2=$?
    r2=$(pstate "$sp")
    # Running (S or R) is fine only while the lease is still held (renewed).
    check "SIG$sig to lockext-run's process group: the command (pid $sp) is stopped or renewed, never running without the lease (states $st $r1 $r2, second holder $s2)" \
        '{ [ "$st" = T ] && [ "$r1" = T ] && [ "$r2" = T ]; } || { [ "$s2" = 1 ] && [ "$r1" != T ]; }'
    kill -CONT -- -"$p"
    if [ "$s2" = 1 ]; then
        # still held: the command goes on; take the lease away to end it
        sleep 0.3
        r1=$(pstate "$sp")
        sql "SELECT lockext_force_release('$k')" >/dev/null
        wait "$p"
        s=$?
        check "SIG$sig, then SIGCONT: the command ran on under the lease ($r1), exit 70 once it was lost ($s)" \
            '[ -n "$r1" ] && [ "$r1" != T ] && [ "$r1" != Z ] && [ "$s" = 70 ] && gone "$sp" 0'
    else
        # the lease ran out while stopped: the command is killed, still stopped
        wait "$p"
        s=$?
        check "SIG$sig, lease ran out while stopped, then SIGCONT: the command is killed, exit 70 ($s)" \
            '[ "$s" = 70 ] && gone "$sp" 0 && grep -q "lost while" "$T/stop$sig.err"'
    fi
}
stop_case STOP
stop_case TSTP
stop_case TTIN
# A short stop: continued within the TTL, the command resumes and ends normally.
k=$(key tstp-short)
rm -f "$T/tree.pid"
own_group "$RUN" -d "$DSN" -k "$k" -t 3s -- \
    sh -c "echo \$\$ >'$T/tree.pid'; sleep 1.5; exit 5" 2>"$T/tstp.err" &
p=$!
echo "$p" >>"$T/cleanup"
if wait_file "$T/tree.pid"; then
    sp=$(cat "$T/tree.pid")
    sleep 0.2
    kill -TSTP -- -"$p"
    sleep 0.4
    st=$(pstate "$sp")
    kill -CONT -- -"$p"
    sleep 0.2
    r1=$(pstate "$sp")
    wait "$p"
    s=$?
    check "SIGTSTP, SIGCONT within the TTL: the command was stopped ($st), resumed ($r1) and ended normally (exit $s)" \
        '[ "$st" = T ] && [ -n "$r1" ] && [ "$r1" != T ] && [ "$s" = 5 ]'
else
    not_ok "SIGTSTP, SIGCONT within the TTL" "the command did not start"
    kill -KILL "$p" 2>/dev/null
fi
# The supervising process stopped by someone (kill -STOP, a debugger): the front stops
# the command's tree at once; once the supervisor runs again it kills the tree if the
# lease ended meanwhile (exit 70).
k=$(key supstop)
rm -f "$T/tree.pid"
"$RUN" -d "$DSN" -k "$k" -t 1500ms -- \
    sh -c "echo \$\$ >'$T/tree.pid'; trap '' TERM; while :; do sleep 0.1; done" 2>"$T/supstop.err" &
p=$!
echo "$p" >>"$T/cleanup"
if wait_file "$T/tree.pid"; then
    sp=$(cat "$T/tree.pid")
    echo "$sp" >>"$T/cleanup"
    sup=$(cat /proc/"$p"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -vx "$sp" | head -n 1)
    kill -STOP "$sup"
    sleep 0.5
    st=$(pstate "$sp")
    sleep 1.8
    "$RUN" -d "$DSN" -k "$k" -t 1s -q -- true
    s2=$?
    r1=$(pstate "$sp")
    kill -CONT "$sup"
    wait "$p"
    s=$?
    check "SIGSTOP of the supervising process: the command is stopped ($st, $r1, second holder $s2), killed after SIGCONT, exit 70 ($s)" \
        '[ "$st" = T ] && [ "$r1" = T ] && [ "$s" = 70 ] && gone "$sp" 0'
else
    not_ok "SIGSTOP of the supervising process" "the command did not start"
    kill -KILL "$p" 2>/dev/null
fi

# ---- signals ignored on entry stay ignored and are not forwarded ---------------------
k=$(key nohup)
rm -f "$T/nohup.ign"
(
    trap '' HUP
    exec "$RUN" -d "$DSN" -k "$k" -t 2s -- \
        sh -c 'sed -n "s/^SigIgn:[[:space:]]*//p" /proc/$$/status >"$1"; sleep 1; echo done >>"$1"' \
        sh "$T/nohup.ign"
) &
p=$!
wait_file "$T/nohup.ign"
kill -HUP "$p"
wait "$p"
s=$?
m=$(sed -n 1p "$T/nohup.ign")
check "trap '' HUP: the command still ignores SIGHUP (SigIgn $m), a SIGHUP to lockext-run is not forwarded (exit $s)" \
    '[ -n "$m" ] && [ $(( 16#$m & 1 )) = 1 ] && [ "$s" = 0 ] && grep -q done "$T/nohup.ign"'

# ---- durations: a bare number is refused (flock's -w means seconds) ------------------
"$RUN" -d "$DSN" -k "$(key x)" -w 10 -- true 2>"$T/bare.err"
s=$?
check "-w 10 (bare number): usage error 64 ($s) naming the units" \
    '[ "$s" = 64 ] && grep -q "\"ms\", \"s\"" "$T/bare.err"'
"$RUN" -d "$DSN" -k "$(key x)" -t 30 -- true 2>/dev/null
s=$?
check "-t 30 (bare number): usage error 64 ($s)" '[ "$s" = 64 ]'
"$RUN" -d "$DSN" -k "$(key x)" -w 0 -t 2s -- true
s=$?
check "-w 0 is unambiguous and accepted ($s)" '[ "$s" = 0 ]'
"$RUN" -d "$DSN" -k "$(key x)" -t 300ms -- true 2>"$T/short.err"
s=$?
check "--ttl 300ms is too short for the default margin: usage error 64 ($s)" \
    '[ "$s" = 64 ] && grep -q "too short" "$T/short.err"'
"$RUN" -d "$DSN" -k "$(key x)" -t 1s --margin 300ms -- true 2>/dev/null
s=$?
check "--margin above TTL/4: usage error 64 ($s)" '[ "$s" = 64 ]'

# ---- exit statuses of failures that are not contention -----------------------------
"$RUN" -d "host=127.0.0.1 port" -k "$(key x)" -- true 2>"$T/dsn.err"
s=$?
check "malformed DSN: usage error 64 ($s)" '[ "$s" = 64 ] && grep -q "invalid --dsn" "$T/dsn.err"'
"$RUN" -d "$DSN nosuchoption=1" -k "$(key x)" -- true 2>/dev/null
s=$?
check "DSN with an unknown keyword: usage error 64 ($s)" '[ "$s" = 64 ]'
"$RUN" -d "$(sed 's/user=[^ ]*/user=lockext_no_such_role/' <<<"$DSN")" -k "$(key x)" -- \
    touch "$T/auth-ran" 2>"$T/auth.err"
s=$?
check "authentication failure (28000): exit 77 ($s), command not run" \
    '[ "$s" = 77 ] && [ ! -e "$T/auth-ran" ]'
"$RUN" -d "$(sed 's/dbname=[^ ]*/dbname=template1/' <<<"$DSN")" -k "$(key nolockext)" -- true \
    2>"$T/missing.err"
s=$?
check "lockext not installed: exit 69 ($s) with a CREATE EXTENSION hint" \
    '[ "$s" = 69 ] && grep -q "run CREATE EXTENSION lockext in that database" "$T/missing.err"'

# ---- --hold-at-least: cron start skew between hosts does not run the job twice -------
k=$(key hold)
rm -f "$T/hold.runs"
start=$(now_ms)
"$RUN" -d "$DSN" -k "$k" -t 2s --hold-at-least 5s -q -- sh -c "echo run >>'$T/hold.runs'; sleep 0.2" &
h1=$!
sleep 1
"$RUN" -d "$DSN" -k "$k" -t 2s --hold-at-least 5s -q -- sh -c "echo run >>'$T/hold.runs'; sleep 0.2"
s2=$?
wait "$h1"
s1=$?
elapsed=$(($(now_ms) - start))
runs=$(wc -l <"$T/hold.runs")
check "--hold-at-least 5s, two hosts 1 s apart, 0.2 s job: ran once ($runs), statuses $s1/$s2" \
    '[ "$runs" = 1 ] && [ "$s1" = 0 ] && [ "$s2" = 1 ]'
check "--hold-at-least 5s above the 2 s TTL: the first host stayed until the hold was covered (${elapsed} ms)" \
    '[ "$elapsed" -ge 2800 ] && [ "$elapsed" -lt 5000 ]'
"$RUN" -d "$DSN" -k "$k" -q -- true
s=$?
check "a third host right after: still held (exit $s)" '[ "$s" = 1 ]'
sleep 2.3
"$RUN" -d "$DSN" -k "$k" -- true
s=$?
check "after start + 5 s the key is free again (exit $s)" '[ "$s" = 0 ]'
k=$(key hold2)
start=$(now_ms)
"$RUN" -d "$DSN" -k "$k" -t 10s --hold-at-least 2s -- true
s=$?
elapsed=$(($(now_ms) - start))
"$RUN" -d "$DSN" -k "$k" -q -- true
s2=$?
check "--hold-at-least 2s under a 10 s TTL: exits at once (${elapsed} ms, $s), the key stays held ($s2)" \
    '[ "$s" = 0 ] && [ "$elapsed" -lt 1500 ] && [ "$s2" = 1 ]'
sleep 2.2
"$RUN" -d "$DSN" -k "$k" -- true
s=$?
check "--hold-at-least 2s: free again after 2 s, not after the 10 s TTL (exit $s)" '[ "$s" = 0 ]'

# ---- PgBouncer in transaction mode with default options ------------------------------
if [ -n "${LOCKEXT_TEST_PGBOUNCER_DSN:-}" ]; then
    k=$(key bouncer)
    ss=""
    for i in 1 2 3; do
        "$RUN" -d "$LOCKEXT_TEST_PGBOUNCER_DSN" -k "$k-$i" -t 2s -- true 2>>"$T/bouncer.err"
        ss="$ss$? "
    done
    check "behind PgBouncer (transaction mode), default options: consecutive runs all succeed ($ss)" \
        '[ "$ss" = "0 0 0 " ]'
    "$RUN" -d "$LOCKEXT_TEST_PGBOUNCER_DSN" -k "$k" -t 2s --prepared-statements off -- true
    s=$?
    check "behind PgBouncer, --prepared-statements off ($s)" '[ "$s" = 0 ]'
    LOCKEXT_PREPARED_STATEMENTS=off "$RUN" -d "$LOCKEXT_TEST_PGBOUNCER_DSN" -k "$k" -t 2s -- true
    s=$?
    check "behind PgBouncer, LOCKEXT_PREPARED_STATEMENTS=off ($s)" '[ "$s" = 0 ]'
else
    not_ok "PgBouncer cases" "LOCKEXT_TEST_PGBOUNCER_DSN is not set"
fi
"$RUN" -d "$DSN" -k "$(key x)" --prepared-statements maybe -- true 2>/dev/null
s=$?
check "--prepared-statements maybe: usage error 64 ($s)" '[ "$s" = 64 ]'

# ---- server stalls, grace periods: on a cluster of their own -------------------------
if [ "$(id -u)" = 0 ] && [ "${LOCKEXT_RUN_SKIP_OWN_CLUSTER:-0}" != 1 ]; then
    bash "$HERE/lockext_run_stall_test.sh" "$RUN" >"$T/stall.out" 2>&1
    rc=$?
    cat "$T/stall.out"
    sp=$(sed -n 's/^lockext-run stall tests: \([0-9]*\) passed.*/\1/p' "$T/stall.out")
    sf=$(sed -n 's/^lockext-run stall tests: [0-9]* passed, \([0-9]*\) failed/\1/p' "$T/stall.out")
    PASSED=$((PASSED + ${sp:-0}))
    FAILED=$((FAILED + ${sf:-0}))
    if [ "$rc" != 0 ] && [ "${sf:-0}" = 0 ]; then not_ok "stall tests" "exit $rc"; fi
fi

printf 'lockext-run tests: %d passed, %d failed\n' "$PASSED" "$FAILED"
[ "$FAILED" -eq 0 ]
