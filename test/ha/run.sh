#!/usr/bin/env bash
# test/ha/run.sh: lockext's replicated leases on a real HA stack (spec §7): one etcd 3.4,
# three Patroni 3 nodes each managing a PostgreSQL 15 with lockext preloaded, synchronous
# mode strict, lockext.replication = sync and lockext.promotion_grace_ms = 0. The history
# checker's driver (test/checker/driver.cpp) hammers a few keys through a multi-host
# connection string (target_session_attrs=read-write) while a nemesis SIGKILLs the leader's
# postmaster and Patroni fails over, several times; test/checker/check.py must find no
# mutual-exclusion, fence or lost-lease violation, and failover_report.py prints per
# failover how long clients could not get a grant and how many holders kept their lease on
# the new leader. A self-test then shows that the checker does catch a lease lost in a
# failover here (async replication, synchronous mode off, the WAL senders stopped).
#
# As root on Debian 12, after `make install` at the top level (extension and client library):
#     test/ha/run.sh                     # failovers (HA_FAILOVERS, 3) + self-test, ~1.5 min
#     test/ha/run.sh failover            # or: selftest; the phases given, in that order
#     HA_FAILOVERS=20 test/ha/run.sh     # the long form (or HA_SECONDS=600: failovers until then)
# Ends with "N passed, M failed"; non-zero exit on failure. See test/ha/README.md for the
# knobs (HA_*). Everything it starts runs as the postgres user on 127.0.0.1 and is stopped by
# PID on exit (also on INT/TERM); HA_KEEP=1 keeps the temp dir (histories, logs).
set -uo pipefail

HA_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HA_HERE/../.." && pwd)
CHECKER=$TOP/test/checker
. "$TOP/tools/lib.sh"
require_root
# the processes run as postgres inherit the working directory: Patroni's multiprocessing
# children chdir into it and die if postgres cannot enter it (a clone under /root)
cd /

# --- knobs ------------------------------------------------------------------------------
HA_REPLICATION=${HA_REPLICATION:-sync}     # sync: the real test; off: lockext without replicated leases (grace only)
if [ -n "${HA_SECONDS:-}" ] && [ -z "${HA_FAILOVERS:-}" ]; then HA_FAILOVERS=1000000; fi
HA_FAILOVERS=${HA_FAILOVERS:-3}
HA_SECONDS=${HA_SECONDS:-0}                # 0: no time limit, HA_FAILOVERS failovers
HA_KEEP=${HA_KEEP:-0}
HA_TTL=${HA_TTL:-6}                        # Patroni ttl / loop_wait / retry_timeout (seconds)
HA_LOOP_WAIT=${HA_LOOP_WAIT:-1}
HA_RETRY_TIMEOUT=${HA_RETRY_TIMEOUT:-2}
HA_USE_SLOTS=${HA_USE_SLOTS:-false}        # Patroni use_slots (true: +1-2 s per failover, see README)
HA_MAX_TTL=${HA_MAX_TTL:-10000}            # lockext.max_ttl_ms = the longest TTL the driver asks for
HA_TTL_MIN=${HA_TTL_MIN:-1000}
HA_PROCS=${HA_PROCS:-2}
HA_THREADS=${HA_THREADS:-6}
HA_KEYS=${HA_KEYS:-8}
HA_GAP_MS=${HA_GAP_MS:-2000-4000}          # healthy cluster -> next kill, uniform in this range
HA_SCOPE=lockext-ha-$$
export HA_USE_SLOTS

case $HA_REPLICATION in sync | off) ;; *) echo "HA_REPLICATION must be sync or off" >&2; exit 2 ;; esac
for v in HA_FAILOVERS HA_SECONDS HA_TTL HA_LOOP_WAIT HA_RETRY_TIMEOUT HA_MAX_TTL HA_TTL_MIN HA_PROCS HA_THREADS HA_KEYS; do
	case ${!v} in '' | *[!0-9]*) echo "$v must be a whole number" >&2; exit 2 ;; esac
done
case $HA_GAP_MS in *[0-9]-[0-9]*) ;; *) echo "HA_GAP_MS must be LOW-HIGH (ms)" >&2; exit 2 ;; esac
PHASES=("$@")
[ ${#PHASES[@]} -gt 0 ] || PHASES=(failover selftest)
for p in "${PHASES[@]}"; do
	case $p in failover | selftest) ;; *) echo "unknown phase '$p' (failover, selftest)" >&2; exit 2 ;; esac
done

suite_start ha
echo "# lockext HA: ${PHASES[*]}; replication $HA_REPLICATION, $HA_FAILOVERS failovers$([ "$HA_SECONDS" -gt 0 ] && echo " or ${HA_SECONDS} s"), Patroni ttl/loop_wait/retry_timeout $HA_TTL/$HA_LOOP_WAIT/$HA_RETRY_TIMEOUT, max ttl $HA_MAX_TTL ms"

# --- packages ---------------------------------------------------------------------------
missing=()
for p in patroni python3-etcd etcd-server etcd-client postgresql-15 python3 g++ pkg-config libpq-dev curl jq procps util-linux; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "# installing ${missing[*]}"
	# policy-rc.d or not: the packaged etcd and patroni services are not what this test runs
	{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; } \
		>/dev/null 2>&1 || suite_die "apt-get install ${missing[*]}"
fi
[ -x /usr/bin/patroni ] || suite_die "/usr/bin/patroni not found"
echo "# $(/usr/bin/patroni --version 2>&1 | head -n 1), $(etcd --version 2>&1 | head -n 1), $("$PG_BIN/postgres" --version)"
pkg-config --exists lockext-client || suite_die "lockext-client not installed: run 'make install' at the top level first"
LOCKEXT_SO=$("$PG_CONFIG" --pkglibdir)/lockext.so
[ -f "$LOCKEXT_SO" ] || suite_die "lockext.so not installed: run 'make install' at the top level first"
if [ "$HA_REPLICATION" != off ] && ! grep -qa 'lockext.promotion_grace_ms' "$LOCKEXT_SO"; then
	suite_die "the installed $LOCKEXT_SO has no lockext.replication / lockext.promotion_grace_ms (replicated leases, lockext 1.1): make install the current tree, or run with HA_REPLICATION=off"
fi

# --- scratch dir, cleanup ---------------------------------------------------------------
HA_WORK=$(make_scratch_dir) || suite_die "mktemp"
. "$HA_HERE/cluster.sh"
BG_PIDS=()            # drivers and the nemesis loop
STOPPED_PIDS=()       # the self-test's SIGSTOPped WAL senders (processes of a killed postmaster)

kill_stopped_walsenders() {
	local pid
	for pid in "${STOPPED_PIDS[@]}"; do
		tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'walsender' && kill -KILL "$pid" 2>/dev/null
	done
	STOPPED_PIDS=()
}

cleanup() {
	local pid
	trap - EXIT INT TERM
	for pid in "${BG_PIDS[@]}"; do kill_tree "$pid"; done
	kill_stopped_walsenders
	cluster_stop
	[ -n "$ETCD_DIR" ] && rm -rf "$ETCD_DIR"
	if [ "$HA_KEEP" = 1 ]; then echo "# kept $HA_WORK"; else rm -rf "$HA_WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- driver, clock helper, checker self-check -------------------------------------------
DRIVER=$HA_WORK/driver
# shellcheck disable=SC2046
g++ -std=c++23 -O2 -Wall -Wextra -pthread "$CHECKER/driver.cpp" $(pkg-config --cflags --libs lockext-client libpq) \
	-o "$DRIVER" >"$HA_WORK/build.log" 2>&1 || { cat "$HA_WORK/build.log" >&2; suite_die "driver build"; }
printf '#include <cstdio>\n#include <ctime>\nint main(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);std::printf("%%lld\\n",(long long)t.tv_sec*1000000000LL+t.tv_nsec);}\n' \
	>"$HA_WORK/mono.cpp"
g++ -O2 "$HA_WORK/mono.cpp" -o "$HA_WORK/mono" >>"$HA_WORK/build.log" 2>&1 || suite_die "mono helper build"
mono() { "$HA_WORK/mono"; }
python3 "$CHECKER/test_check.py" >"$HA_WORK/test_check.log" 2>&1 ||
	{ cat "$HA_WORK/test_check.log" >&2; suite_die "check.py's unit tests"; }
ok "driver built, check.py's unit tests pass"

# --- the cluster ------------------------------------------------------------------------
LOCKEXT_PARAMETERS=
if [ "$HA_REPLICATION" != off ]; then
	LOCKEXT_PARAMETERS="        lockext.replication: $HA_REPLICATION
        lockext.promotion_grace_ms: 0"
fi
T0=$SECONDS
etcd_start || suite_die "etcd did not start (see $HA_WORK/etcd.log)"
nodes_start 3 || suite_die "Patroni config or start failed"
if why=$(wait_healthy 180); then
	ok "etcd + 3 Patroni nodes up in $((SECONDS - T0)) s: leader $(leader_name), both standbys streaming, one synchronous"
else
	tail -n 15 "$HA_WORK"/n*/patroni.log >&2
	suite_die "cluster not healthy after 180 s: $why"
fi
LEADER=$(leader_name)
node_psql "$LEADER" -c 'CREATE EXTENSION lockext' >/dev/null 2>"$HA_WORK/create.err" ||
	suite_die "CREATE EXTENSION lockext on $LEADER: $(cat "$HA_WORK/create.err")"
NEED_COMPLETE=0
if [ "$HA_REPLICATION" != off ]; then
	NEED_COMPLETE=1
	bad=
	for n in "${HA_NODES[@]}"; do
		got="$(node_settings "$n" lockext.replication lockext.promotion_grace_ms 2>&1) $(node_psql "$n" -c 'SELECT mode FROM lockext_replication()' 2>&1)"
		[ "$got" = "$HA_REPLICATION 0 $HA_REPLICATION" ] || bad="$bad $n: '$got'"
	done
	[ -z "$bad" ] || suite_die "lockext.replication / promotion_grace_ms not in force:$bad"
	ok "lockext.replication = $HA_REPLICATION, lockext.promotion_grace_ms = 0 on every node (and lockext_replication().mode)"
fi

pg_conninfo() {
	local hosts='' ports='' n
	for n in "${HA_NODES[@]}"; do
		hosts=${hosts:+$hosts,}127.0.0.1
		ports=${ports:+$ports,}${NODE_PG_PORT[$n]}
	done
	echo "host=$hosts port=$ports dbname=postgres user=postgres target_session_attrs=read-write application_name=lockext-ha"
}

log_offsets() { # "name:offset ..." of every node's PostgreSQL log now
	local n
	for n in "${HA_NODES[@]}"; do printf '%s:%s ' "$n" "$(stat -c %s "$(node_log "$n")" 2>/dev/null || echo 0)"; done
}

crash_lines() { # server processes that died of anything but SIGKILL, since the offsets $1
	local e n off
	for e in $1; do
		n=${e%%:*} off=${e##*:}
		tail -c +"$((off + 1))" "$(node_log "$n")" 2>/dev/null | grep 'terminated by signal [^9]\|PANIC\|TRAP:' | sed "s/^/$n: /"
	done
}

patroni_promotions() { cat "$HA_WORK"/n*/patroni.log 2>/dev/null | grep -c 'promoted self to leader'; }

tli_sql="SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"

# waits for a leader other than $1 that accepts writes; prints "name timeline"
wait_new_leader() {
	local old=$1 secs=$2 end l tl
	end=$((SECONDS + secs))
	while [ "$SECONDS" -lt "$end" ]; do
		l=$(leader_name)
		if [ -n "$l" ] && [ "$l" != "$old" ]; then
			tl=$(node_psql "$l" -c "$tli_sql" 2>/dev/null) && [ -n "$tl" ] && { echo "$l $tl"; return 0; }
		fi
		sleep 0.05
	done
	return 1
}

# --- nemesis: fail over $2 times (or until $3 s have passed), then touch the stop file $1 --
rand_between() { local lo=${1%-*} hi=${1#*-}; echo $((lo + RANDOM % (hi - lo + 1))); }
ms_sleep() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

nemesis_failovers() {
	local stop=$1 count=$2 secs=$3 events=$4 n=0 t_end leader pid tl k new why
	t_end=$((SECONDS + secs))
	while [ "$n" -lt "$count" ]; do
		[ "$secs" -gt 0 ] && [ "$SECONDS" -ge "$t_end" ] && break
		if ! why=$(wait_healthy 120 "$NEED_COMPLETE"); then
			echo "$(date +%T.%N) cluster not healthy before failover $((n + 1)): $why"
			break
		fi
		ms_sleep "$(rand_between "$HA_GAP_MS")"
		leader=$(leader_name)
		tl=$(node_psql "$leader" -c "$tli_sql" 2>/dev/null)
		if ! pid=$(postmaster_pid "$leader") || [ -z "$tl" ]; then
			echo "$(date +%T.%N) leader $leader: no postmaster PID or timeline, retrying"
			continue
		fi
		k=$(mono)
		kill -KILL "$pid" || { echo "$(date +%T.%N) kill $pid failed"; continue; }
		printf '{"event":"kill","mono_ns":%s,"node":"%s","port":%s,"pid":%s,"timeline":%s}\n' \
			"$k" "$leader" "${NODE_PG_PORT[$leader]}" "$pid" "$tl" >>"$events"
		echo "$(date +%T.%N) SIGKILL postmaster $pid of leader $leader (timeline $tl)"
		if ! new=$(wait_new_leader "$leader" 90); then
			echo "$(date +%T.%N) no new leader 90 s after the kill"
			break
		fi
		printf '{"event":"promoted","mono_ns":%s,"node":"%s","port":%s,"timeline":%s}\n' \
			"$(mono)" "${new% *}" "${NODE_PG_PORT[${new% *}]}" "${new#* }" >>"$events"
		echo "$(date +%T.%N) new leader ${new% *} (timeline ${new#* })"
		n=$((n + 1))
	done
	# the old leader rejoins; clients run on the final leader a little longer
	why=$(wait_healthy 120 "$NEED_COMPLETE") || echo "$(date +%T.%N) not healthy after the last failover: $why"
	ms_sleep 3000
	touch "$stop"
	echo "$(date +%T.%N) done: $n failovers"
}

# --- drivers under the failover nemesis ------------------------------------------------
# run_load NAME FAILOVERS SECONDS [CHECK_ARGS...]: the drivers through the multi-host
# conninfo, the nemesis failing over FAILOVERS times (or for SECONDS), then check.py and
# failover_report.py over the histories. Files $HA_WORK/NAME.*; sets RL_HUNG, RL_RC (check.py's
# exit status), RL_NFAIL, RL_NPROM (kills, promotions) and RL_OFFS (log offsets before).
run_load() {
	local name=$1 count=$2 nsecs=$3 f=$HA_WORK/$1 i pid nem_pid deadline secs
	shift 3
	local -a drivers=() dargs
	RL_HUNG=0
	RL_OFFS=$(log_offsets)
	secs=$((nsecs > 0 ? nsecs + 180 : count * 90 + 60))
	# half the threads make every call over a libpq connection of their own and log the
	# server's port/timeline per call; one in five waits on the server; half the holders
	# renew like the lease keeper (every ttl/3, for 1-3 TTLs), so leases span the failovers
	dargs=(--keys "$HA_KEYS" --threads "$HA_THREADS" --ttl-ms "$HA_MAX_TTL" --ttl-min-ms "$HA_TTL_MIN"
		--work-max-pct 75 --overrun-pct 10 --renew-pct 50 --wait-pct 20 --raw-pct 50 --server-info 1
		--statement-timeout-ms 3000 --connect-timeout-s 2 --acquire-timeout-ms 3000
		--seconds "$secs" --stop-file "$f.stop")
	for i in $(seq "$HA_PROCS"); do
		"$DRIVER" --conninfo "$(pg_conninfo)" --proc "$i" --key-prefix "ha-$name-$$" "${dargs[@]}" \
			--out "$f.p$i.jsonl" 2>>"$f.driver.log" &
		drivers+=($!)
	done
	: >"$f.events.jsonl"
	nemesis_failovers "$f.stop" "$count" "$nsecs" "$f.events.jsonl" >"$f.nemesis.log" 2>&1 &
	nem_pid=$!
	BG_PIDS=("${drivers[@]}" "$nem_pid")
	deadline=$((SECONDS + secs + 60))
	for pid in "${drivers[@]}"; do
		while kill -0 "$pid" 2>/dev/null; do
			if [ "$SECONDS" -ge "$deadline" ]; then
				RL_HUNG=1
				kill -KILL "$pid" 2>/dev/null
			fi
			sleep 0.2
		done
		wait "$pid" 2>/dev/null
	done
	touch "$f.stop"
	kill -0 "$nem_pid" 2>/dev/null && kill_tree "$nem_pid"
	wait "$nem_pid" 2>/dev/null
	BG_PIDS=()
	sed 's/^/  nemesis: /' "$f.nemesis.log"
	grep '^driver p' "$f.driver.log" | sed 's/^/  /'
	python3 "$CHECKER/check.py" --label "$name" --json "$f.check.json" --examples 5 "$@" \
		"$f".p*.jsonl >"$f.check.log" 2>&1
	RL_RC=$?
	sed 's/^/  /' "$f.check.log"
	python3 "$HA_HERE/failover_report.py" --events "$f.events.jsonl" --json "$f.report.json" "$f".p*.jsonl \
		>"$f.report.log" 2>&1 || { cat "$f.report.log"; not_ok "failover_report.py failed"; }
	echo
	sed 's/^/  /' "$f.report.log"
	echo
	RL_NFAIL=$(grep -c '"event":"kill"' "$f.events.jsonl")
	RL_NPROM=$(grep -c '"event":"promoted"' "$f.events.jsonl")
}

# --- phase: failovers under load --------------------------------------------------------
phase_failover() {
	local f=$HA_WORK/failover crashes promos0 promos rc nfail nprom
	local -a check_args=()
	echo "== failover: $HA_PROCS driver processes x $HA_THREADS threads, $HA_KEYS keys, TTL ${HA_TTL_MIN}..${HA_MAX_TTL} ms"
	why=$(wait_healthy 120 "$NEED_COMPLETE") || { not_ok "cluster healthy before the failover phase: $why"; return; }
	promos0=$(patroni_promotions)
	[ "$HA_REPLICATION" != off ] && check_args=(--no-lease-loss)
	run_load failover "$HA_FAILOVERS" "$HA_SECONDS" "${check_args[@]}"
	local hung=$RL_HUNG offs=$RL_OFFS
	rc=$RL_RC nfail=$RL_NFAIL nprom=$RL_NPROM
	FAILOVER_TABLE=$(grep '^|' "$f.report.log")

	local mutex fence lost verdict grants kept keepers tls
	read -r mutex fence lost verdict grants < <(jq -r '"\(.mutex_violations) \(.fence_violations) \(.lost_leases) \(.verdict) \(.grants)"' "$f.check.json" 2>/dev/null)
	read -r kept keepers tls < <(jq -r '"\(.kept_across_failover) \([.failovers[].keepers_at_kill] | add // 0) \(.grant_timelines | length)"' "$f.report.json" 2>/dev/null)
	local want=$HA_FAILOVERS
	[ "$HA_SECONDS" -gt 0 ] && [ "$nprom" -ge 1 ] && want=$nprom
	[ "$hung" = 0 ] && ok "the drivers finished by themselves" || not_ok "a driver hung (killed)"
	[ "$nprom" -eq "$want" ] && [ "$nfail" -eq "$nprom" ] &&
		ok "$nprom failovers: leader's postmaster SIGKILLed, Patroni promoted the synchronous standby each time" ||
		not_ok "failovers: $nfail kills, $nprom promotions (wanted $want; see nemesis log above)"
	[ "${verdict:-}" != unusable ] && [ "${grants:-0}" -gt 0 ] && [ "$rc" != 2 ] &&
		ok "history usable: ${grants} grants" || not_ok "history unusable (check.py exit $rc, verdict ${verdict:-none})"
	[ "${mutex:-x}" = 0 ] && ok "0 mutual-exclusion violations" || not_ok "${mutex:-?} mutual-exclusion violations"
	[ "${fence:-x}" = 0 ] && ok "0 fence violations" || not_ok "${fence:-?} fence violations"
	[ "${tls:-0}" -ge $((nprom + 1)) ] && ok "grants on every leader ($tls timelines)" ||
		not_ok "grants on ${tls:-0} timelines, $((nprom + 1)) leaders"
	if [ "$HA_REPLICATION" != off ]; then
		[ "${lost:-x}" = 0 ] && ok "no lease lost: no renew answered 'lock lost' while its lease was live (also across failovers)" ||
			not_ok "${lost:-?} leases lost early (renew said 'lock lost' while the lease was live; see check output)"
		[ "${kept:-0}" -ge 1 ] && ok "$kept leases kept across a failover (renewed on the new leader; $keepers holders were renewing at the kills)" ||
			not_ok "no lease was kept across a failover ($keepers holders were renewing at the kills)"
	else
		echo "# replication off: leases are not replicated; $kept kept across a failover (expected 0)"
	fi
	if [ "$HA_REPLICATION" != off ]; then
		# lockext_stats (per server, since its start): the leader WAL-logs, the standbys replay
		local l st bad='' seen=''
		l=$(leader_name)
		for n in "${HA_NODES[@]}"; do
			if [ "$n" = "$l" ]; then
				st=$(node_psql "$n" -c 'SELECT wal_records FROM lockext_stats' 2>&1)
				[ "$st" -gt 0 ] 2>/dev/null || bad="$bad leader $n wal_records '$st'"
				seen="$seen $n (leader) wal_records $st;"
			else
				st=$(node_psql "$n" -c 'SELECT replayed FROM lockext_stats' 2>&1)
				[ "$st" -gt 0 ] 2>/dev/null || bad="$bad standby $n replayed '$st'"
				seen="$seen $n replayed $st;"
			fi
		done
		seen=${seen# }
		[ -z "$bad" ] && ok "lockext_stats: the leader WAL-logs leases, the standbys replay them (${seen%;})" ||
			not_ok "lockext_stats:$bad"
	fi
	promos=$(($(patroni_promotions) - promos0))
	[ "$promos" -eq "$nprom" ] && ok "Patroni changed leaders only when the nemesis struck ($promos promotions)" ||
		not_ok "Patroni promoted $promos times, the nemesis caused $nprom (leader key lost under load? raise HA_TTL / HA_RETRY_TIMEOUT)"
	crashes=$(crash_lines "$offs")
	[ -z "$crashes" ] && ok "no server process died of anything but SIGKILL (PANIC, TRAP, other signals)" ||
		not_ok "unexpected crashes: $(echo "$crashes" | head -n 5)"
}

# --- phase: self-test -------------------------------------------------------------------
# walsender PIDs of node $1's postmaster (checked: children of that postmaster)
walsender_pids() {
	local n=$1 pm pid
	pm=$(postmaster_pid "$n") || return 1
	for pid in $(node_psql "$n" -c 'SELECT pid FROM pg_stat_replication' 2>/dev/null); do
		[ "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pm" ] && echo "$pid"
	done
}

grant_row() { # node key ttl -> "lock_id fence" or nothing; errors to stderr
	node_psql "$1" -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -F ' ' -c "SET statement_timeout = ${4:-5000}" \
		-c "SELECT lock_id, fence FROM try_lock('$2', $3) WHERE lock_id IS NOT NULL"
}

history_line() { # proc invoke complete key ttl lock_id fence
	printf '{"proc":%s,"thread":0,"op":"try_lock","invoke_ns":%s,"complete_ns":%s,"outcome":"ok","key":"%s","ttl_ms":%s,"lock_id":"%s","fence":%s,"contended":false,"error":null}\n' "$@"
}

phase_selftest() {
	local f=$HA_WORK/selftest leader ws out left key ttl=60000 gucs sf0 sf1 inv1 cpl1 row1 k new inv2 cpl2 row2 end rc mutex patch want
	echo "== selftest"
	why=$(wait_healthy 120 "$NEED_COMPLETE") || { not_ok "cluster healthy before the self-test: $why"; return; }

	if [ "$HA_REPLICATION" = sync ]; then
		# spec §7.4: a grant whose confirmation does not come is an ERROR, never granted
		leader=$(leader_name)
		mapfile -t ws < <(walsender_pids "$leader")
		key=ha-selftest-sync-$$
		if [ ${#ws[@]} -eq 0 ]; then
			not_ok "sync control: no WAL sender found on $leader"
		else
			sf0=$(node_psql "$leader" -c 'SELECT sync_failed FROM lockext_stats' 2>&1)
			kill -STOP "${ws[@]}"
			out=$(grant_row "$leader" "$key" 5000 2000 2>&1)
			kill -CONT "${ws[@]}"
			left=$(node_psql "$leader" -c "SELECT count(*) FROM lockext_leases WHERE key = '$key'" 2>&1)
			sf1=$(node_psql "$leader" -c 'SELECT sync_failed FROM lockext_stats' 2>&1)
			if [[ $out == *57014* ]] && [ "$left" = 0 ] && [ "$((sf1 - sf0))" -ge 1 ] 2>/dev/null; then
				ok "sync: with the WAL senders stopped a grant fails with 57014 after statement_timeout, leaves no lease on the primary, lockext_stats.sync_failed $sf0 -> $sf1"
			else
				not_ok "sync: grant with the WAL senders stopped: '$out', leases left on the primary: $left, sync_failed $sf0 -> $sf1"
			fi
		fi
	fi

	# async replication, synchronous mode off (any standby may be promoted), no grace
	if [ "$HA_REPLICATION" = off ]; then
		gucs=(lockext.recovery_grace_ms lockext.max_ttl_ms)
		want="0 $ttl"
		patch='"lockext.recovery_grace_ms": 0'
	else
		gucs=(lockext.replication lockext.promotion_grace_ms lockext.max_ttl_ms)
		want="async 0 $ttl"
		patch='"lockext.replication": "async"'
	fi
	patch='{"synchronous_mode": false, "synchronous_mode_strict": false, "postgresql": {"parameters": {'$patch', "lockext.max_ttl_ms": '$ttl'}}}'
	curl_json -XPATCH -d "$patch" "http://127.0.0.1:${NODE_REST_PORT[$(leader_name)]}/config" >"$f.patch.json" 2>&1 ||
		{ not_ok "PATCH /config failed: $(cat "$f.patch.json")"; return; }
	end=$((SECONDS + 60))
	while :; do
		local all=1 n got
		for n in "${HA_NODES[@]}"; do
			got=$(node_settings "$n" "${gucs[@]}" 2>/dev/null)
			[ "$got" = "$want" ] || all=0
		done
		leader=$(leader_name)
		[ -n "$leader" ] && [ -z "$(node_psql "$leader" -c 'SHOW synchronous_standby_names' 2>/dev/null)" ] || all=0
		[ "$all" = 1 ] && break
		[ "$SECONDS" -ge "$end" ] && { not_ok "self-test configuration ($want, synchronous mode off) not in force after 60 s"; return; }
		sleep 0.3
	done
	why=$(wait_healthy 60 "$NEED_COMPLETE") || { not_ok "cluster healthy after switching to async: $why"; return; }
	leader=$(leader_name)
	mapfile -t ws < <(walsender_pids "$leader")
	[ ${#ws[@]} -gt 0 ] || { not_ok "self-test: no WAL sender on $leader"; return; }
	key=ha-selftest-$$
	# 1. stop the WAL senders, so that no standby receives what comes next
	STOPPED_PIDS=("${ws[@]}")
	kill -STOP "${ws[@]}"
	inv1=$(mono)
	row1=$(grant_row "$leader" "$key" "$ttl" 2>"$f.err1")
	cpl1=$(mono)
	if [ -z "$row1" ]; then
		kill -CONT "${ws[@]}"
		STOPPED_PIDS=()
		not_ok "self-test: the first grant on $leader failed: $(cat "$f.err1")"
		return
	fi
	# 2. no standby has it
	out=
	for n in "${HA_NODES[@]}"; do
		[ "$n" = "$leader" ] && continue
		out="$out${out:+, }$n $(node_psql "$n" -c "SELECT count(*) FROM lockext_leases WHERE key = '$key'" 2>&1)"
	done
	# 3. SIGKILL the leader's postmaster; Patroni promotes a standby
	k=$(mono)
	kill -KILL "$(postmaster_pid "$leader")"
	if ! new=$(wait_new_leader "$leader" 90); then
		kill_stopped_walsenders
		not_ok "self-test: no new leader 90 s after the kill"
		return
	fi
	kill_stopped_walsenders        # the old postmaster's leftovers: its Patroni can restart it
	# 4. the same key on the new leader: granted at once (no grace), while holder 1's lease runs
	end=$((SECONDS + 20))
	row2=
	while [ -z "$row2" ] && [ "$SECONDS" -lt "$end" ]; do
		inv2=$(mono)
		row2=$(grant_row "${new% *}" "$key" "$ttl" 2>>"$f.err2")
		cpl2=$(mono)
		[ -n "$row2" ] || sleep 0.1
	done
	echo "  grant 1 on $leader: $row1 (its leases on the standbys: ${out:-?}); kill -> new leader ${new% *} (timeline ${new#* }) in $(((cpl2 - k) / 1000000)) ms; grant 2 there: ${row2:-none in 20 s}"
	{
		history_line 1 "$inv1" "$cpl1" "$key" "$ttl" "${row1% *}" "${row1#* }"
		[ -n "$row2" ] && history_line 2 "$inv2" "$cpl2" "$key" "$ttl" "${row2% *}" "${row2#* }"
	} >"$f.history.jsonl"
	python3 "$CHECKER/check.py" --label selftest --json "$f.check.json" "$f.history.jsonl" >"$f.check.log" 2>&1
	rc=$?
	sed 's/^/  /' "$f.check.log"
	mutex=$(jq -r .mutex_violations "$f.check.json" 2>/dev/null)
	if [ "$rc" = 1 ] && [ "${mutex:-0}" -ge 1 ]; then
		ok "self-test: async replication + promotion grace 0, a lease no standby received is lost in the failover and granted again: the checker reports the mutual-exclusion violation"
	else
		not_ok "self-test: the checker found no violation (exit $rc, mutex ${mutex:-?}; grant 2: ${row2:-none})"
	fi

	# The same drivers, nemesis and checks as the failover phase, with nothing replicated and
	# no grace (lockext.replication = off, recovery and promotion grace 0): one failover must
	# leave violations in the drivers' own history.
	if [ "$HA_REPLICATION" != off ]; then
		patch='{"postgresql": {"parameters": {"lockext.replication": "off", "lockext.recovery_grace_ms": 0}}}'
		curl_json -XPATCH -d "$patch" "http://127.0.0.1:${NODE_REST_PORT[$(leader_name)]}/config" >"$f.patch2.json" 2>&1 ||
			{ not_ok "PATCH /config failed: $(cat "$f.patch2.json")"; return; }
		end=$((SECONDS + 60))
		while :; do
			local all=1 n
			for n in "${HA_NODES[@]}"; do
				[ "$(node_settings "$n" lockext.replication lockext.recovery_grace_ms lockext.promotion_grace_ms 2>/dev/null)" = "off 0 0" ] || all=0
			done
			[ "$all" = 1 ] && break
			[ "$SECONDS" -ge "$end" ] && { not_ok "replication off, recovery_grace_ms 0 not in force after 60 s"; return; }
			sleep 0.3
		done
	fi
	echo "== selftest-load: replication off, no grace, 1 failover under the drivers"
	why=$(wait_healthy 120 0) || { not_ok "cluster healthy before the driver self-test: $why"; return; }
	NEED_COMPLETE=0 run_load selftest-load 1 0 --no-lease-loss
	local lost
	read -r mutex lost < <(jq -r '"\(.mutex_violations) \(.lost_leases)"' "$HA_WORK/selftest-load.check.json" 2>/dev/null)
	if [ "$RL_NPROM" -ge 1 ] && [ "${mutex:-0}" -ge 1 ]; then
		ok "self-test (drivers): replication off and no grace, the checker finds the failover's lost leases in the drivers' history: $mutex mutual-exclusion violations, ${lost:-?} leases lost"
	else
		not_ok "self-test (drivers): $RL_NPROM failovers, checker exit $RL_RC: ${mutex:-?} mutual-exclusion violations, ${lost:-?} leases lost (wanted at least one violation)"
	fi
}

FAILOVER_TABLE=
for p in "${PHASES[@]}"; do
	"phase_$p"
done
if [ -n "$FAILOVER_TABLE" ]; then
	echo
	echo "failovers (replication $HA_REPLICATION):"
	echo "$FAILOVER_TABLE"
fi
suite_finish
