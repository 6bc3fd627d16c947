# shellcheck shell=bash
# test/ha/cluster.sh: the throwaway etcd + Patroni + PostgreSQL cluster of test/ha/run.sh
# (sourced after tools/lib.sh; needs HA_WORK, a postgres-owned directory).
#
#   etcd_start                  one etcd 3.4 on 127.0.0.1, data in a tmpfs dir; ETCD_PORT ETCD_PID
#   nodes_start N               renders patroni.yml.in for n1..nN and starts their Patroni
#                               (each starts and manages its PostgreSQL); PATRONI_PID[name]
#   cluster_json                GET /cluster from the first node whose REST API answers
#   leader_name                 the member with role leader and state running, or nothing
#   node_pg_port NAME, node_data NAME
#   node_psql NAME ARGS...      psql -X -A -t -q as postgres on NAME's TCP port
#   node_settings NAME GUC...   their pg_settings.setting values (no units), space-separated
#   postmaster_pid NAME         the PID in NAME's postmaster.pid, if that process is alive and
#                               is this data directory's postmaster
#   wait_healthy SECONDS [NEED_COMPLETE]
#                               a running leader that grants (no lockext grace period in
#                               force), every other member streaming from it, one of them
#                               synchronous (if synchronous_standby_names is set) and, with
#                               NEED_COMPLETE=1, every standby's lockext table complete
#   cluster_stop                SIGTERM every Patroni (fast shutdown of its PostgreSQL), then
#                               SIGKILL what is left, by PID; then etcd
#
# Processes run as postgres through setpriv and env, which exec (no fork), started with "&"
# straight from the script (never from a function run in a subshell): $! is the program's
# own PID, and the script is its parent (it reaps it).
HA_NODES=()
declare -A PATRONI_PID=() NODE_PG_PORT=() NODE_REST_PORT=()
ETCD_PID=
ETCD_DIR=

AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME=/var/lib/postgresql)

curl_json() { curl -s -m 2 "$@"; }

# a port no other node of this cluster uses and nothing listens on
ha_free_port() {
	local p used
	while :; do
		p=$(free_port) || return 1
		used=" ${NODE_PG_PORT[*]:-} ${NODE_REST_PORT[*]:-} ${ETCD_PORT:-} ${ETCD_PEER_PORT:-} "
		case $used in *" $p "*) continue ;; esac
		echo "$p"
		return 0
	done
}

etcd_start() {
	local i
	ETCD_DIR=$(mktemp -d /dev/shm/lockext-ha-etcd.XXXXXX) || return 1
	chown postgres:postgres "$ETCD_DIR" && chmod 700 "$ETCD_DIR"
	for _ in 1 2 3; do
		ETCD_PORT=$(ha_free_port) && ETCD_PEER_PORT=$(ha_free_port) || return 1
		rm -rf "${ETCD_DIR:?}"/*
		"${AS_PG[@]}" etcd --name ha --data-dir "$ETCD_DIR/data" \
			--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
			--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
			--initial-cluster "ha=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
			--initial-cluster-token "lockext-ha-$$" --logger zap --log-outputs stderr \
			>>"$HA_WORK/etcd.log" 2>&1 &
		ETCD_PID=$!
		for i in $(seq 100); do
			curl_json "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"' && return 0
			kill -0 "$ETCD_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$ETCD_PID" 2>/dev/null
		wait "$ETCD_PID" 2>/dev/null
		ETCD_PID=
		grep -q 'address already in use' "$HA_WORK/etcd.log" || break
	done
	tail -n 20 "$HA_WORK/etcd.log" >&2
	return 1
}

node_dir() { echo "$HA_WORK/$1"; }
node_data() { echo "$HA_WORK/$1/data"; }
node_pg_port() { echo "${NODE_PG_PORT[$1]}"; }
node_log() { echo "$HA_WORK/$1/log/postgresql.log"; }

# render patroni.yml.in for node $1 (lockext parameters: $LOCKEXT_PARAMETERS, YAML lines)
node_render() {
	local name=$1 dir
	dir=$(node_dir "$name")
	mkdir -p "$dir/log" && chown postgres:postgres "$dir" "$dir/log" && chmod 755 "$dir" || return 1
	NAME=$name NODE_DIR=$dir REST_PORT=${NODE_REST_PORT[$name]} PG_PORT=${NODE_PG_PORT[$name]} \
		ETCD_PORT=$ETCD_PORT PG_BIN=$PG_BIN SCOPE=$HA_SCOPE TTL=$HA_TTL LOOP_WAIT=$HA_LOOP_WAIT \
		RETRY_TIMEOUT=$HA_RETRY_TIMEOUT MAX_TTL=$HA_MAX_TTL USE_SLOTS=${HA_USE_SLOTS:-false} LOCKEXT_PARAMETERS=$LOCKEXT_PARAMETERS \
		python3 -c 'import os, string, sys
sys.stdout.write(string.Template(open(sys.argv[1]).read()).substitute(os.environ))' \
		"$HA_HERE/patroni.yml.in" >"$dir/patroni.yml" || return 1
	chown postgres:postgres "$dir/patroni.yml"
}

patroni_start() {
	local name=$1 dir
	dir=$(node_dir "$name")
	"${AS_PG[@]}" /usr/bin/patroni "$dir/patroni.yml" >>"$dir/patroni.log" 2>&1 &
	PATRONI_PID[$name]=$!
}

nodes_start() {
	local n=$1 i name
	for i in $(seq "$n"); do
		name=n$i
		HA_NODES+=("$name")
		NODE_PG_PORT[$name]=$(ha_free_port) || return 1
		NODE_REST_PORT[$name]=$(ha_free_port) || return 1
	done
	for name in "${HA_NODES[@]}"; do
		node_render "$name" || return 1
		patroni_start "$name"
	done
}

cluster_json() {
	local name out
	for name in "${HA_NODES[@]}"; do
		out=$(curl_json "http://127.0.0.1:${NODE_REST_PORT[$name]}/cluster" 2>/dev/null) &&
			[ -n "$out" ] && { printf '%s\n' "$out"; return 0; }
	done
	return 1
}

leader_name() {
	cluster_json | jq -r '.members[] | select(.role == "leader" and .state == "running") | .name' 2>/dev/null | head -n 1
}

leader_timeline() {
	cluster_json | jq -r '.members[] | select(.role == "leader") | .timeline // empty' 2>/dev/null | head -n 1
}

node_psql() {
	local name=$1
	shift
	PGCONNECT_TIMEOUT=3 "$PG_BIN/psql" -X -A -t -q -h 127.0.0.1 -p "${NODE_PG_PORT[$name]}" -U postgres -d postgres "$@"
}

# the settings (pg_settings.setting: no units) of GUCs $2... on node $1, space-separated
node_settings() {
	local name=$1 g sql=
	shift
	for g in "$@"; do sql="$sql${sql:+, }(SELECT setting FROM pg_settings WHERE name = '$g')"; done
	node_psql "$name" -F ' ' -c "SELECT $sql"
}

postmaster_pid() { postmaster_pid_of "$(node_data "$1")"; }

# 0 when healthy (see the header); prints what is missing otherwise
cluster_healthy() {
	local need_complete=${1:-0} leader name n_rep n_sync ssn complete
	leader=$(leader_name)
	[ -n "$leader" ] || { echo "no running leader"; return 1; }
	[ "$(node_psql "$leader" -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] ||
		{ echo "leader $leader not accepting writes"; return 1; }
	read -r n_rep n_sync < <(node_psql "$leader" -F ' ' -c "SELECT count(*) FILTER (WHERE state = 'streaming'),
		count(*) FILTER (WHERE state = 'streaming' AND sync_state = 'sync') FROM pg_stat_replication" 2>/dev/null)
	[ "${n_rep:-0}" -eq $((${#HA_NODES[@]} - 1)) ] || { echo "leader $leader: ${n_rep:-?} standbys streaming"; return 1; }
	ssn=$(node_psql "$leader" -c 'SHOW synchronous_standby_names' 2>/dev/null)
	if [ -n "$ssn" ] && [ "${n_sync:-0}" -lt 1 ]; then echo "leader $leader: no synchronous standby"; return 1; fi
	if [ -n "$ssn" ] && ! cluster_json | jq -e '.members[] | select(.role == "sync_standby")' >/dev/null 2>&1; then
		echo "Patroni names no sync_standby"
		return 1
	fi
	if [ "$(node_psql "$leader" -c "SELECT count(*) FROM pg_extension WHERE extname = 'lockext'" 2>/dev/null)" = 1 ] &&
		[ "$(node_psql "$leader" -c 'SELECT active FROM lockext_grace()' 2>/dev/null)" != f ]; then
		echo "leader $leader: lockext grace period in force"
		return 1
	fi
	if [ "$need_complete" = 1 ]; then
		for name in "${HA_NODES[@]}"; do
			[ "$name" = "$leader" ] && continue
			complete=$(node_psql "$name" -c 'SELECT table_complete FROM lockext_replication()' 2>/dev/null)
			[ "$complete" = t ] || { echo "standby $name: lockext table not complete (${complete:-no answer})"; return 1; }
		done
	fi
	return 0
}

wait_healthy() {
	local secs=$1 need_complete=${2:-0} end why
	end=$((SECONDS + secs))
	while :; do
		why=$(cluster_healthy "$need_complete") && return 0
		[ "$SECONDS" -ge "$end" ] && { echo "$why"; return 1; }
		sleep 0.2
	done
}

cluster_stop() {
	local name pid i left
	for name in "${HA_NODES[@]}"; do
		pid=${PATRONI_PID[$name]:-}
		[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
	done
	for i in $(seq 300); do
		left=0
		for name in "${HA_NODES[@]}"; do
			pid=${PATRONI_PID[$name]:-}
			[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && left=1
		done
		[ "$left" = 0 ] && break
		sleep 0.1
	done
	for name in "${HA_NODES[@]}"; do
		pid=${PATRONI_PID[$name]:-}
		if [ -n "$pid" ]; then
			kill -KILL "$pid" 2>/dev/null
			wait "$pid" 2>/dev/null
		fi
		PATRONI_PID[$name]=
		# a PostgreSQL its Patroni did not stop (Patroni killed, or a nemesis' leftovers)
		pid=$(postmaster_pid "$name") && kill -KILL "$pid" 2>/dev/null
	done
	if [ -n "$ETCD_PID" ]; then
		kill -TERM "$ETCD_PID" 2>/dev/null
		for i in $(seq 50); do kill -0 "$ETCD_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$ETCD_PID" 2>/dev/null
		wait "$ETCD_PID" 2>/dev/null
		ETCD_PID=
	fi
	return 0
}
