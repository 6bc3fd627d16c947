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
PSQL=${PSQL:-/usr/lib/postgresql/15/bin/psql}
T=$(mktemp -d /tmp/lockext-run-test.XXXXXX)
trap 'rm -rf "$T"' EXIT
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
"$RUN" -d "$(sed 's/dbname=[^ ]*/dbname=template1/' <<<"$DSN")" -k "$(key nolockext)" -- true \
    2>"$T/missing.err"
s=$?
check "lockext not installed in the database: exit 69 ($s)" '[ "$s" = 69 ]'
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

printf 'lockext-run tests: %d passed, %d failed\n' "$PASSED" "$FAILED"
[ "$FAILED" -eq 0 ]
