# Shared helpers for lockext's scripts (sourced, not run).
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
export PG_CONFIG

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
