# Shared helpers for lockext's scripts (sourced, not run; safe under set -eu).
#
# PostgreSQL binaries (the one place their path is written):
#   PG_BIN      LOCKEXT_PG_BIN if set, else /usr/lib/postgresql/15/bin
#   PG_CONFIG   $PG_BIN/pg_config (exported: make and the PGXS build read it)
#
# A throwaway cluster, run as the postgres user (one per script):
#   pg_cluster_start DIR [CONF_LINE...]
#       initdb DIR/data (trust, superuser postgres, UTF8), lockext preloaded, listening on
#       127.0.0.1 on a free port below the ephemeral range and on a Unix socket in DIR,
#       then the caller's postgresql.conf lines (later lines win), then pg_ctl -w start
#       (server log DIR/postgres.log). A port taken between the check and the server's
#       bind() is retried with another one. DIR is created and given to postgres; its
#       parent must be traversable by postgres. On failure prints the log's tail to
#       stderr and returns 1. Sets and exports:
#         PG_DIR PG_DATA PG_LOG PG_SOCKDIR PG_PORT
#         PG_DSN   "host=127.0.0.1 port=... dbname=postgres user=postgres"
#         PG_PID   the postmaster's PID (from postmaster.pid; pg_cluster_pid re-reads it)
#         PG_CTL   pg_ctl for this cluster as one command string (for environment
#                  variables that a test program runs, e.g. "$PG_CTL stop -m fast")
#   pg_cluster_ctl PG_CTL_ARGS...   pg_ctl -D PG_DATA -l PG_LOG ... as postgres
#   pg_cluster_pid                  prints the running postmaster's PID; 1 if none
#   pg_cluster_stop [MODE]          pg_ctl stop (MODE fast by default, then immediate),
#                                   SIGKILL to the postmaster's PID as the last resort
#   pg_cluster_cleanup              for traps: stops the cluster if one runs, always 0
#   free_port                       a TCP port on 127.0.0.1 nothing listens on now
PG_BIN=${LOCKEXT_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PG_BIN/pg_config
export PG_CONFIG
LOCKEXT_LIB_SH=1

require_root() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "lockext: run this as root (or with sudo): it installs packages and runs PostgreSQL as the postgres user" >&2
		exit 2
	fi
}

build_and_install() {
	local top=$1 log=$2
	if ! { make -C "$top" -j"$(nproc)" PG_CONFIG="$PG_CONFIG" && make -C "$top" PG_CONFIG="$PG_CONFIG" install; } >"$log" 2>&1; then
		cat "$log" >&2
		echo "lockext: build failed" >&2
		return 1
	fi
}

# A postgres-owned scratch directory (initdb refuses root; /root may be 0700).
make_scratch_dir() {
	local dir
	dir=$(mktemp -d /tmp/lockext.XXXXXX)
	chmod 755 "$dir"
	chown postgres:postgres "$dir"
	echo "$dir"
}

as_postgres() { runuser -u postgres -- "$@"; }

# A TCP port on 127.0.0.1 that nothing listens on right now, below the kernel's
# ephemeral range (an outgoing connection's local port refuses connect() but
# still cannot be bound). Free now is not free later: starters retry on EADDRINUSE.
free_port() {
	local p low
	low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
	for _ in $(seq 1 100); do
		p=$((20000 + RANDOM % (low - 20000)))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

pg_cluster_start() {
	local dir=$1 attempt line log_off
	shift
	PG_DIR=$dir PG_DATA=$dir/data PG_LOG=$dir/postgres.log PG_SOCKDIR=$dir PG_PID=
	PG_CTL=$(printf '%q ' runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG")
	PG_CTL=${PG_CTL% }
	export PG_DIR PG_DATA PG_LOG PG_SOCKDIR PG_CTL
	mkdir -p "$dir" && chmod 755 "$dir" && chown postgres:postgres "$dir" || return 1
	if ! as_postgres "$PG_BIN/initdb" -D "$PG_DATA" --auth=trust --username=postgres --encoding=UTF8 \
		--no-instructions --no-sync >"$dir/initdb.log" 2>&1; then
		cat "$dir/initdb.log" >&2
		echo "lockext: initdb $PG_DATA failed" >&2
		return 1
	fi
	PG_PORT=$(free_port) || { echo "lockext: no free port on 127.0.0.1" >&2; return 1; }
	{
		echo "# pg_cluster_start (tools/lib.sh)"
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $PG_PORT"
		echo "unix_socket_directories = '$PG_SOCKDIR'"
		echo "shared_preload_libraries = 'lockext'"
		for line in "$@"; do printf '%s\n' "$line"; done
	} >>"$PG_DATA/postgresql.conf"
	for attempt in 1 2 3 4 5; do
		log_off=$(stat -c %s "$PG_LOG" 2>/dev/null || echo 0)
		if pg_cluster_ctl start -w -t 120 >/dev/null 2>&1; then
			PG_PID=$(pg_cluster_pid) || true
			PG_DSN="host=127.0.0.1 port=$PG_PORT dbname=postgres user=postgres"
			export PG_PORT PG_PID PG_DSN
			return 0
		fi
		# only a port taken since free_port() is worth another try
		tail -c +"$((log_off + 1))" "$PG_LOG" | grep -q 'could not bind.*Address already in use' || break
		PG_PORT=$(free_port) || break
		sed -i "s/^port = [0-9]*\$/port = $PG_PORT/" "$PG_DATA/postgresql.conf"
	done
	tail -n 20 "$PG_LOG" >&2
	echo "lockext: the server in $PG_DATA did not start" >&2
	return 1
}

pg_cluster_ctl() { as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" "$@"; }

# postmaster_pid_of DATA: the PID in DATA/postmaster.pid if that process is alive and is the
# postmaster of DATA (a PID left by a crashed server may have been reused by anything).
postmaster_pid_of() {
	local pid
	pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null) || return 1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$1" || return 1
	echo "$pid"
}

# The PID of this cluster's postmaster (postmaster_pid_of PG_DATA).
pg_cluster_pid() { postmaster_pid_of "$PG_DATA"; }

pg_cluster_stop() {
	local mode=${1:-fast} pid
	[ -n "${PG_DATA:-}" ] || return 0
	# up to three times: a pg_ctl restart the caller killed may be starting it again
	for _ in 1 2 3; do
		pg_cluster_pid >/dev/null || break
		pg_cluster_ctl stop -m "$mode" -w -t 60 >/dev/null 2>&1 || { mode=immediate; sleep 1; }
	done
	if pid=$(pg_cluster_pid); then
		kill -KILL "$pid" 2>/dev/null || true
		sleep 1
		pg_cluster_pid >/dev/null && return 1
	fi
	PG_PID=
	return 0
}

pg_cluster_cleanup() { pg_cluster_stop immediate || true; }

# The tally of a suite script's own checks. suite_start NAME; ok/not_ok TEXT count and
# print one check; suite_die TEXT counts a failed setup step and ends the script;
# suite_finish prints "N passed, M failed" (the line tools/test.sh reads) and exits
# non-zero on any failure, or when nothing passed.
suite_start() {
	suite_name=$1 passed=0 failed=0 suite_started=$(date +%s)
}
ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }
suite_finish() {
	echo "== $suite_name tests done in $(($(date +%s) - suite_started)) s"
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
	exit $?
}
suite_die() {
	not_ok "$*"
	suite_finish
}

# kill_tree PID: stops a process this script started and all its descendants, by pid
# (stopped first, so none forks a new child while the tree is walked)
kill_tree() {
	local child
	kill -STOP "$1" 2>/dev/null
	for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
	kill -KILL "$1" 2>/dev/null
	kill -CONT "$1" 2>/dev/null
}
