# PgBouncer for lockext's test and benchmark scripts (sourced, not run).
# Transaction pooling in front of one local PostgreSQL, run as the postgres user.
#
#   pgbouncer_config DIR LISTEN_PORT PG_PORT POOL_SIZE MAX_CLIENTS [EXTRA_INI_LINE...]
#       writes DIR/pgbouncer.ini and DIR/users.txt (trust auth for "postgres")
#   pgbouncer_start DIR PORT
#       starts it (daemon, pid in DIR/pgbouncer.pid) and waits up to 5 s until a
#       query through it works; returns 1 otherwise (e.g. the port was taken)
#   pgbouncer_start_free DIR PG_PORT POOL_SIZE MAX_CLIENTS [EXTRA_INI_LINE...]
#       config + start on a free port (tools/lib.sh free_port), on another one if that
#       fails (taken between the check and pgbouncer's bind()), 3 tries; sets PGB_PORT,
#       PGB_PID

[ -n "${LOCKEXT_LIB_SH:-}" ] || . "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # PG_BIN

pgbouncer_config() {
	local dir=$1 port=$2 pg_port=$3 pool=$4 clients=$5 line
	shift 5
	mkdir -p "$dir"
	printf '"postgres" ""\n' >"$dir/users.txt"
	{
		printf '[databases]\npostgres = host=127.0.0.1 port=%s dbname=postgres\n' "$pg_port"
		printf '[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = %s\nunix_socket_dir =\n' "$port"
		printf 'auth_type = trust\nauth_file = %s/users.txt\npool_mode = transaction\n' "$dir"
		printf 'default_pool_size = %s\nmax_client_conn = %s\n' "$pool" "$clients"
		printf 'logfile = %s/pgbouncer.log\npidfile = %s/pgbouncer.pid\n' "$dir" "$dir"
		for line in "$@"; do printf '%s\n' "$line"; done
	} >"$dir/pgbouncer.ini"
	chown -R postgres:postgres "$dir"
}

pgbouncer_start() {
	local dir=$1 port=$2
	runuser -u postgres -- /usr/sbin/pgbouncer -d "$dir/pgbouncer.ini" >>"$dir/pgbouncer.out" 2>&1 || return 1
	for _ in $(seq 50); do
		"$PG_BIN/psql" -X -qAt "host=127.0.0.1 port=$port dbname=postgres user=postgres" \
			-c 'SELECT 1' >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

pgbouncer_start_free() {
	local dir=$1 pid
	shift
	for _ in 1 2 3; do
		PGB_PORT=$(free_port) || return 1
		pgbouncer_config "$dir" "$PGB_PORT" "$@"
		if pgbouncer_start "$dir" "$PGB_PORT"; then
			PGB_PID=$(cat "$dir/pgbouncer.pid")
			return 0
		fi
		pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null) && kill "$pid" 2>/dev/null # up, but not reachable
		rm -f "$dir/pgbouncer.pid"
	done
	return 1
}
