# client/test/lockext_run_lib.sh — sourced by lockext_run_stall_test.sh and
# lockext_run_margin.sh: a throwaway PostgreSQL cluster of their own (they stop its
# processes, so it must not be one another test uses) and one server-stall measurement.
#
#   own_cluster_start DIR [EXTRA_CONF_LINE...]   initdb as postgres in DIR, lockext
#                                                preloaded, start, CREATE EXTENSION;
#                                                sets OWN_DSN, OWN_PGCTL, OWN_DATA
#   own_cluster_stop                             stops it (immediate), SIGCONT first
#   server_pids                                  the postmaster and all its children
#   stall_once RUN KEY TTL STALL_SECONDS         see below; sets STALL_* variables
#
# Needs root (runuser -u postgres). Every wait is bounded.

. "$(dirname "${BASH_SOURCE[0]}")/../../tools/lib.sh" # PG_BIN, pg_cluster_start
PGBIN=$PG_BIN
PSQL=${PSQL:-$PG_BIN/psql}
OWN_DSN=""
OWN_PGCTL=""
OWN_DATA=""
STOPPED_PIDS=""

lib_now_ms() { date +%s%3N; }

own_cluster_start() {
    local dir=$1
    shift
    pg_cluster_start "$dir" "fsync = off" "max_connections = 40" "$@" >>"$dir.log" 2>&1 || return 1
    OWN_DATA=$PG_DATA
    OWN_PGCTL="$PG_CTL -w -t 60"
    OWN_DSN=$PG_DSN
    "$PSQL" "$OWN_DSN" -X -qc 'CREATE EXTENSION lockext' >>"$dir.log" 2>&1
}

own_cluster_stop() {
    own_resume
    if [ -n "$OWN_PGCTL" ]; then $OWN_PGCTL stop -m immediate >/dev/null 2>&1; fi
    OWN_PGCTL=""
}

# The postmaster (first line of postmaster.pid) and every process below it.
server_pids() {
    local pm todo p kids
    pm=$(head -n 1 "$OWN_DATA/postmaster.pid" 2>/dev/null)
    [ -n "$pm" ] || return 1
    todo=$pm
    while [ -n "$todo" ]; do
        set -- $todo
        p=$1
        shift
        todo="$*"
        echo "$p"
        kids=$(cat /proc/"$p"/task/*/children 2>/dev/null)
        todo="$todo $kids"
        todo=$(echo $todo)
    done
}

# SIGSTOPs the server's processes by pid (the postmaster first, so it starts no new ones).
own_pause() {
    local p
    STOPPED_PIDS=$(server_pids) || return 1
    for p in $STOPPED_PIDS; do kill -STOP "$p" 2>/dev/null; done
    # children forked between the listing and the postmaster's stop
    for p in $(server_pids); do
        case " $STOPPED_PIDS " in *" $p "*) ;; *)
            kill -STOP "$p" 2>/dev/null
            STOPPED_PIDS="$STOPPED_PIDS $p"
            ;;
        esac
    done
}

own_resume() {
    local p
    for p in $STOPPED_PIDS; do kill -CONT "$p" 2>/dev/null; done
    STOPPED_PIDS=""
}

# stall_once RUN KEY TTL STALL_S: runs `RUN -t TTL -- <a command that ignores SIGTERM>`
# on the own cluster; right after the server has recorded a renewal (lockext_leases
# .renewals went up) reads the lease's server-side expires_at, SIGSTOPs every server
# process for STALL_S seconds (renewals cannot get through, the lease ends on the server),
# notes when the command's pid disappeared, SIGCONTs, and checks that another holder
# gets the key at once. Sets:
#   STALL_OK=1 if the measurement worked, STALL_WHY otherwise
#   STALL_AHEAD_MS  = server-side expiry − the time the command was dead (> 0 is safe)
#   STALL_STATUS    = lockext-run's exit status, STALL_SECOND = the second holder's
#   STALL_EXIT_MS   = how long after the command's death lockext-run exited while the
#                     server was still stopped ("" if it was still running at the end)
STALL_OK=0
STALL_WHY=""
STALL_AHEAD_MS=""
STALL_STATUS=""
STALL_SECOND=""
STALL_EXIT_MS=""
stall_once() {
    local run=$1 key=$2 ttl=$3 stall=$4 dir p cp r0 r e dead t_end
    dir=$(mktemp -d /tmp/lockext-stall.XXXXXX)
    STALL_OK=0 STALL_WHY="" STALL_AHEAD_MS="" STALL_STATUS="" STALL_SECOND="" STALL_EXIT_MS=""
    "$run" -d "$OWN_DSN" -k "$key" -t "$ttl" -- \
        sh -c "trap '' TERM; echo \$\$ >'$dir/pid'; while :; do sleep 0.05; done" 2>"$dir/err" &
    p=$!
    for _ in $(seq 50); do [ -s "$dir/pid" ] && break; sleep 0.1; done
    cp=$(cat "$dir/pid" 2>/dev/null)
    if [ -z "$cp" ]; then
        STALL_WHY="the command did not start: $(cat "$dir/err")"
        kill "$p" 2>/dev/null
        wait "$p"
        rm -rf "$dir"
        return 1
    fi
    # Wait for a renewal to be recorded, then stop the server at once (the next renewal
    # is TTL/3 away).
    r0=$("$PSQL" "$OWN_DSN" -X -qAtc "SELECT renewals FROM lockext_leases WHERE key = '$key'")
    e=""
    t_end=$(($(lib_now_ms) + 10000))
    while [ "$(lib_now_ms)" -lt "$t_end" ]; do
        r=$("$PSQL" "$OWN_DSN" -X -qAtF ' ' -c "SELECT renewals,
              (extract(epoch FROM expires_at) * 1000)::bigint FROM lockext_leases WHERE key = '$key'")
        if [ -n "$r" ] && [ "${r%% *}" != "$r0" ]; then
            own_pause
            e=${r##* }
            break
        fi
    done
    if [ -z "$e" ]; then
        STALL_WHY="no renewal seen within 10 s"
        kill -KILL "$cp" "$p" 2>/dev/null
        wait "$p"
        rm -rf "$dir"
        return 1
    fi
    # Note when the command's pid is gone (zombie = dead), for at most STALL_S seconds.
    dead=""
    t_end=$(($(lib_now_ms) + stall * 1000))
    while [ "$(lib_now_ms)" -lt "$t_end" ]; do
        st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$cp/status" 2>/dev/null)
        if [ -z "$st" ] || [ "$st" = Z ]; then
            dead=$(lib_now_ms)
            break
        fi
        sleep 0.01
    done
    # Then when lockext-run itself exits (a zombie: it is our child), server still stopped.
    while [ -n "$dead" ] && [ "$(lib_now_ms)" -lt "$t_end" ]; do
        st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$p/status" 2>/dev/null)
        if [ -z "$st" ] || [ "$st" = Z ]; then
            STALL_EXIT_MS=$(($(lib_now_ms) - dead))
            break
        fi
        sleep 0.02
    done
    while [ "$(lib_now_ms)" -lt "$t_end" ]; do sleep 0.1; done
    own_resume
    wait "$p"
    STALL_STATUS=$?
    "$run" -d "$OWN_DSN" -k "$key" -t 2s -- true 2>>"$dir/err"
    STALL_SECOND=$?
    if [ -z "$dead" ]; then
        STALL_WHY="the command (pid $cp) was still alive ${stall} s after the stall began; $(tr '\n' ' ' <"$dir/err")"
        kill -KILL "$cp" 2>/dev/null
        rm -rf "$dir"
        return 1
    fi
    STALL_AHEAD_MS=$((e - dead))
    STALL_OK=1
    rm -rf "$dir"
    return 0
}
