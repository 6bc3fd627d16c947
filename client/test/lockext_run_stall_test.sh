#!/usr/bin/env bash
# client/test/lockext_run_stall_test.sh — lockext-run against a server that stalls or
# is in a grace period, on a throwaway cluster of its own (it SIGSTOPs that cluster's
# processes by pid, so it never touches a cluster another test uses).
#
#   lockext_run_stall_test.sh LOCKEXT_RUN_BINARY
#
# Run as root (the cluster runs as postgres). lockext_run_test.sh runs it (so run.sh
# does, for every build). Prints "ok - ..." / "not ok - ..." and ends with
# "lockext-run stall tests: N passed, M failed".
set -u -o pipefail

RUN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lockext_run_lib.sh"
W=$(mktemp -d /tmp/lockext-run-stall.XXXXXX)
chmod 755 "$W"
PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); printf 'ok - %s\n' "$1"; }
not_ok() { FAILED=$((FAILED + 1)); printf 'not ok - %s: %s\n' "$1" "$2"; }
finish() {
    printf 'lockext-run stall tests: %d passed, %d failed\n' "$PASSED" "$FAILED"
    [ "$FAILED" -eq 0 ]
    exit
}
cleanup() {
    own_cluster_stop # SIGCONTs the server first, whatever happened
    rm -rf "$W"
}
trap cleanup EXIT
trap 'not_ok interrupted "signal"; finish' INT TERM

# A short grace period after a crash, so that the grace case stays quick.
if ! own_cluster_start "$W/pg" "lockext.recovery_grace_ms = 4000" "restart_after_crash = on"; then
    not_ok "own cluster" "could not start: $(tail -n 5 "$W/pg/initdb.log" "$W/pg/server.log" 2>/dev/null)"
    finish
fi

# ---- the server stalls: the command (ignoring SIGTERM) is dead before the lease ends --
if stall_once "$RUN" stall-1 3s 5; then
    if [ "$STALL_AHEAD_MS" -gt 0 ] && [ "$STALL_STATUS" = 70 ]; then
        ok "server stopped (SIGSTOP) under a 3 s lease, command ignores SIGTERM: dead $STALL_AHEAD_MS ms before the server-side expiry, exit 70"
    else
        not_ok "server stall" "dead $STALL_AHEAD_MS ms before the server-side expiry (must be > 0), exit $STALL_STATUS"
    fi
    if [ "$STALL_SECOND" = 0 ]; then
        ok "after the stall the lease had ended on the server: the next holder got it"
    else
        not_ok "after the stall" "the next holder exited $STALL_SECOND (the stall did not outlast the lease?)"
    fi
else
    not_ok "server stall" "$STALL_WHY"
fi

# ---- the exit path is bounded: the release cannot be answered while the server stalls --
# The command is killed at the margin; lockext-run must not wait for the stalled server
# (a renew to join, then a connect for the release): it exits with 70 within ~2 s and
# leaves the lease to expire on the server.
if stall_once "$RUN" stall-2 3s 9; then
    if [ -n "$STALL_EXIT_MS" ] && [ "$STALL_EXIT_MS" -lt 3500 ] && [ "$STALL_STATUS" = 70 ]; then
        ok "server stopped: lockext-run exits $STALL_EXIT_MS ms after the command was killed (bound 3.5 s), exit 70, without waiting for the server"
    else
        not_ok "bounded exit while the server stalls" "exited ${STALL_EXIT_MS:-not within 9 s} ms after the command died, status $STALL_STATUS"
    fi
else
    not_ok "bounded exit while the server stalls" "$STALL_WHY"
fi

# ---- grace period: refused with its reason, not "held by someone else" --------------
# A backend killed with SIGKILL makes the postmaster reinitialise shared memory: a crash
# restart, after which lockext holds grants back for recovery_grace_ms.
"$PSQL" "$OWN_DSN" -X -qAtc "SELECT pg_backend_pid(), pg_sleep(30)" >"$W/victim" 2>/dev/null &
victim_psql=$!
vp=""
for _ in $(seq 50); do
    vp=$("$PSQL" "$OWN_DSN" -X -qAtc "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_backend_pid(), pg_sleep%' AND pid <> pg_backend_pid()" 2>/dev/null)
    [ -n "$vp" ] && break
    sleep 0.1
done
if [ -n "$vp" ]; then
    kill -KILL "$vp"
    wait "$victim_psql" 2>/dev/null
    active=""
    for _ in $(seq 100); do
        active=$("$PSQL" "$OWN_DSN" -X -qAtc "SELECT active FROM lockext_grace()" 2>/dev/null) && break
        sleep 0.1
    done
    "$RUN" -d "$OWN_DSN" -k grace-1 -t 2s -- touch "$W/grace-ran" 2>"$W/grace.err"
    s=$?
    if [ "$active" = t ] && [ "$s" = 1 ] && [ ! -e "$W/grace-ran" ] &&
        grep -q "refused: grace period after .*, [0-9]* ms left" "$W/grace.err"; then
        ok "grace period after a crash: exit 1, '$(cat "$W/grace.err")'"
    else
        not_ok "grace period" "active=$active exit $s: $(cat "$W/grace.err")"
    fi
    "$RUN" -d "$OWN_DSN" -k grace-1 -t 2s -E 9 -q -- true 2>"$W/grace-q.err"
    s=$?
    if [ "$s" = 9 ] && [ ! -s "$W/grace-q.err" ]; then
        ok "grace period with -E 9 -q: exit 9, nothing printed"
    else
        not_ok "grace period with -E 9 -q" "exit $s: $(cat "$W/grace-q.err")"
    fi
else
    not_ok "grace period" "no backend to kill"
    kill "$victim_psql" 2>/dev/null
fi

finish
