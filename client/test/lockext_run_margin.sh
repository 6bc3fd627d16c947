#!/usr/bin/env bash
# client/test/lockext_run_margin.sh — measures lockext-run's safety margin (not run in CI).
#
#   bash client/test/lockext_run_margin.sh LOCKEXT_RUN_BINARY [RUNS=20] [TTL=3s]
#
# On a throwaway cluster of its own (as root), RUNS times: lockext-run -t TTL runs a
# command that ignores SIGTERM; right after the server records a renewal, every server
# process is SIGSTOPped (by pid) for TTL + 2 s, so renewals fail and the lease ends on
# the server; the time the command's pid disappeared is compared with the lease's
# server-side expires_at. Prints each run and min/median/max of "dead N ms before the
# server-side expiry" (positive = safe). Exits 1 if any run was not safe.
set -u -o pipefail

RUN=$1
RUNS=${2:-20}
TTL=${3:-3s}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lockext_run_lib.sh"
W=$(mktemp -d /tmp/lockext-run-margin.XXXXXX)
chmod 755 "$W"
trap 'own_cluster_stop; rm -rf "$W"' EXIT
own_cluster_start "$W/pg" || { echo "cannot start a cluster: $(tail -n 5 "$W/pg/initdb.log")"; exit 1; }
ttl_s=$(sed -n 's/^\([0-9]*\)s$/\1/p' <<<"$TTL")
stall=$((${ttl_s:-3} + 2))
values=()
unsafe=0
for i in $(seq "$RUNS"); do
    if stall_once "$RUN" "margin-$i" "$TTL" "$stall"; then
        printf 'run %2d: dead %4d ms before the server-side expiry (lockext-run exit %s, next holder exit %s)\n' \
            "$i" "$STALL_AHEAD_MS" "$STALL_STATUS" "$STALL_SECOND"
        values+=("$STALL_AHEAD_MS")
        [ "$STALL_AHEAD_MS" -gt 0 ] || unsafe=$((unsafe + 1))
    else
        printf 'run %2d: FAILED: %s\n' "$i" "$STALL_WHY"
        unsafe=$((unsafe + 1))
    fi
done
if [ ${#values[@]} -gt 0 ]; then
    sorted=$(printf '%s\n' "${values[@]}" | sort -n)
    n=${#values[@]}
    min=$(sed -n 1p <<<"$sorted")
    max=$(sed -n "${n}p" <<<"$sorted")
    if [ $((n % 2)) = 1 ]; then
        med=$(sed -n "$(((n + 1) / 2))p" <<<"$sorted")
    else
        a=$(sed -n "$((n / 2))p" <<<"$sorted")
        b=$(sed -n "$((n / 2 + 1))p" <<<"$sorted")
        med=$(((a + b) / 2))
    fi
    printf 'ttl %s, %d runs: dead before the server-side expiry by min %d ms, median %d ms, max %d ms; %d unsafe\n' \
        "$TTL" "$n" "$min" "$med" "$max" "$unsafe"
fi
[ "$unsafe" -eq 0 ]
