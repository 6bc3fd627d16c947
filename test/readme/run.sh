#!/usr/bin/env bash
# Tests README.md as a new user reads it. Extracts the blocks marked with an HTML comment
# on the line before their fence:
#   <!-- readme-test: sql -->               the SQL API examples: run with psql -v ON_ERROR_STOP=1
#                                           as a freshly created plain role in a fresh database
#   <!-- readme-test: sql-schema-setup -->  installing into another schema: run as a superuser
#                                           in a fresh database named app, then the sql blocks
#                                           again as the plain role (and once without its GRANT
#                                           line, which must then fail)
#   <!-- readme-test: cpp-program -->       a complete C++ program: compiled with g++ -std=c++23
#                                           against the client library, run against the cluster
# (blocks with the same name are joined in order). Ends with "N passed, M failed";
# non-zero exit on failure.
#
# Run as root (PostgreSQL runs as postgres). Environment:
#   LOCKEXT_PG_BIN          PostgreSQL binaries (tools/lib.sh), with lockext installed
#   LOCKEXT_CLIENT_BUILD    a cmake build directory of client/ to compile against
#                           (default: the installed library, via pkg-config lockext-client)
#   LOCKEXT_README          the README to test (default README.md of this tree)
#   LOCKEXT_README_ACCEPT=1 rewrite test/readme/sql.expected from this run's output
#   LOCKEXT_KEEP=1          keep the scratch directory
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
. "$top/tools/lib.sh"
require_root

readme=${LOCKEXT_README:-$top/README.md}
suite_start readme

cleanup() {
	pg_cluster_cleanup
	if [ "${LOCKEXT_KEEP:-0}" = 1 ]; then echo "kept $scratch"; else rm -rf "$scratch"; fi
}

[ -r "$readme" ] || suite_die "README $readme not readable"
scratch=$(make_scratch_dir)
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- extract ------------------------------------------------------------------------
# writes $scratch/blocks/NAME (every block marked NAME, in order); an unterminated
# block or a marker not followed by a fence is an error
mkdir -p "$scratch/blocks"
if ! awk -v dir="$scratch/blocks" '
	match($0, /^<!-- readme-test: [a-z0-9-]+ -->$/) {
		name = $0; sub(/^<!-- readme-test: /, "", name); sub(/ -->$/, "", name)
		want = 1; next
	}
	want && /^```/ { want = 0; inside = 1; file = dir "/" name; printf "" >> file; blocks[name]++; next }
	want && NF { printf "marker %s at line %d is not followed by a fence\n", name, NR > "/dev/stderr"; bad = 1; want = 0 }
	inside && /^```[ \t]*$/ { inside = 0; close(file); next }
	inside { print >> file }
	END {
		if (inside) { print "unterminated block " name > "/dev/stderr"; bad = 1 }
		for (n in blocks) printf "# %d block(s) marked %s\n", blocks[n], n
		exit bad
	}' "$readme"; then
	not_ok "extracting the marked blocks of $readme"
fi
for name in sql sql-schema-setup cpp-program; do
	[ -s "$scratch/blocks/$name" ] && ok "README has a block marked readme-test: $name" ||
		not_ok "README has no block marked readme-test: $name"
done

# --- the cluster ------------------------------------------------------------------
pg_cluster_start "$scratch/pg" || suite_die "cluster start"
psql_as() { # ROLE DB [psql args...]
	local role=$1 db=$2
	shift 2
	"$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$role" -d "$db" "$@"
}
# a plain role created for this run: not a superuser, no grants, owns nothing
psql_as postgres postgres -q -c "CREATE ROLE readme_user LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE" ||
	suite_die "create role readme_user"
[ "$(psql_as postgres postgres -At -c "SELECT rolsuper FROM pg_roles WHERE rolname = 'readme_user'")" = f ] ||
	suite_die "readme_user is a superuser"

# uuids, fences and timestamps differ from run to run
mask() {
	sed -E -e 's/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/<uuid>/g' \
		-e 's/[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:.+-]+/<timestamp>/g' -e 's/\b[0-9]{10,}\b/<fence>/g'
}

# run_sql_block DB LABEL: the sql blocks as readme_user in DB; output to $scratch/LABEL.out
run_sql_block() {
	local db=$1 label=$2
	if psql_as readme_user "$db" -f "$scratch/blocks/sql" >"$scratch/$label.out" 2>&1; then
		ok "$label: the SQL API block runs top to bottom as a plain role (ON_ERROR_STOP)"
	else
		not_ok "$label: the SQL API block failed as a plain role:"
		tail -5 "$scratch/$label.out" | sed 's/^/#   /'
	fi
	mask <"$scratch/$label.out" >"$scratch/$label.masked"
}

if [ -s "$scratch/blocks/sql" ]; then
	echo "== SQL API block, lockext in public"
	psql_as postgres postgres -q -c "CREATE DATABASE readme_public" || suite_die "create database"
	psql_as postgres readme_public -q -c "CREATE EXTENSION lockext" || suite_die "CREATE EXTENSION lockext"
	run_sql_block readme_public public
	if [ "${LOCKEXT_README_ACCEPT:-0}" = 1 ]; then
		cp "$scratch/public.masked" "$here/sql.expected"
		echo "# wrote $here/sql.expected"
	fi
	if diff -u "$here/sql.expected" "$scratch/public.masked" >"$scratch/public.diff"; then
		ok "public: every statement's result is as expected (test/readme/sql.expected)"
	else
		not_ok "public: results differ from test/readme/sql.expected:"
		head -40 "$scratch/public.diff" | sed 's/^/#   /'
	fi
	left=$(psql_as postgres readme_public -At -c "SELECT count(*) FROM lockext_leases WHERE datname = 'readme_public'")
	[ "$left" = 0 ] && ok "public: the block leaves no lease behind" || not_ok "public: $left lease(s) left behind"
fi

if [ -s "$scratch/blocks/sql" ] && [ -s "$scratch/blocks/sql-schema-setup" ]; then
	echo "== lockext in another schema, with the README's setup block"
	# the setup block names its database app; a second copy without the GRANT line must fail
	for db in app app_nogrant; do
		psql_as postgres postgres -q -c "CREATE DATABASE $db" || suite_die "create database $db"
	done
	if psql_as postgres app -q -f "$scratch/blocks/sql-schema-setup" >"$scratch/setup.out" 2>&1; then
		ok "schema: the setup block runs as a superuser"
	else
		not_ok "schema: the setup block failed: $(tail -3 "$scratch/setup.out")"
	fi
	schema=$(psql_as postgres app -At -c "SELECT extnamespace::regnamespace FROM pg_extension WHERE extname = 'lockext'")
	[ -n "$schema" ] && [ "$schema" != public ] && ok "schema: lockext is in schema $schema" ||
		not_ok "schema: lockext is in schema '${schema}', not another one"
	run_sql_block app schema
	diff -u "$scratch/public.masked" "$scratch/schema.masked" >"$scratch/schema.diff" &&
		ok "schema: the same results as in public" ||
		{ not_ok "schema: results differ from the public run:"; head -20 "$scratch/schema.diff" | sed 's/^/#   /'; }
	grep -v '^GRANT USAGE' "$scratch/blocks/sql-schema-setup" | sed 's/ALTER DATABASE app /ALTER DATABASE app_nogrant /' \
		>"$scratch/setup-nogrant.sql"
	if grep -q '^GRANT USAGE' "$scratch/blocks/sql-schema-setup" &&
		psql_as postgres app_nogrant -q -f "$scratch/setup-nogrant.sql" >/dev/null 2>&1 &&
		! psql_as readme_user app_nogrant -f "$scratch/blocks/sql" >"$scratch/nogrant.out" 2>&1 &&
		grep -Eq 'function try_lock\(.*\) does not exist|permission denied for schema' "$scratch/nogrant.out"; then
		ok "schema: without the GRANT USAGE line the block fails ($(grep -Eo 'function try_lock\(.*\) does not exist|permission denied for schema' "$scratch/nogrant.out" | head -1))"
	else
		not_ok "schema: the GRANT USAGE line is missing or not needed: $(tail -2 "$scratch/nogrant.out" 2>/dev/null)"
	fi
fi

# --- the C++ program ----------------------------------------------------------------
if [ -s "$scratch/blocks/cpp-program" ]; then
	echo "== C++ example"
	cp "$scratch/blocks/cpp-program" "$scratch/report.cpp"
	if [ -n "${LOCKEXT_CLIENT_BUILD:-}" ]; then
		libdir=$(cd "$LOCKEXT_CLIENT_BUILD" && pwd)
		cflags="-I$top/client/include"
		libs="-L$libdir -llockext-client"
	elif pkg-config --exists lockext-client 2>/dev/null; then
		libdir=$(pkg-config --variable=libdir lockext-client)
		cflags=$(pkg-config --cflags lockext-client)
		libs=$(pkg-config --libs lockext-client)
	else
		libdir=
	fi
	# the compile line the example's first comment gives, with $(pkg-config ...) as resolved above
	line=$(sed -n '1s|^// *||p' "$scratch/report.cpp")
	if [ -z "$libdir" ]; then
		not_ok "C++: no client library (set LOCKEXT_CLIENT_BUILD or install lockext-client.pc)"
	elif [[ "$line" != "g++ -std=c++23 report.cpp \$(pkg-config --cflags --libs lockext-client)"* ]]; then
		not_ok "C++: the example's first line is not its compile command: $line"
	elif (cd "$scratch" && g++ -std=c++23 -Wall -Wextra -Werror report.cpp $cflags $libs -o report) >"$scratch/cpp.log" 2>&1; then
		ok "C++: the example compiles as written (g++ -std=c++23 -Wall -Wextra -Werror)"
	else
		not_ok "C++: the example does not compile:"
		head -20 "$scratch/cpp.log" | sed 's/^/#   /'
	fi
	if [ -x "$scratch/report" ]; then
		export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
		for db in readme_public app; do
			dsn="host=127.0.0.1 port=$PG_PORT dbname=$db user=readme_user"
			before=$(psql_as postgres "$db" -At -c "SELECT acquired FROM lockext_stats" 2>/dev/null)
			timeout 60 "$scratch/report" "$dsn" >"$scratch/report-$db.log" 2>&1
			rc=$?
			lease=$(psql_as postgres "$db" -At -F ' ' -c "SELECT holder, remaining_ms FROM lockext_leases WHERE datname = '$db' AND key = 'nightly-report'" 2>&1)
			if [ "$rc" = 0 ] && [[ "$lease" =~ ^readme_user\ ([0-9]+)$ ]] &&
				[ "${BASH_REMATCH[1]}" -gt 200000 ] && [ "${BASH_REMATCH[1]}" -le 240000 ]; then
				ok "C++ in $db: runs (exit 0) and keeps nightly-report for hold_at_least (${BASH_REMATCH[1]} ms left)"
			else
				not_ok "C++ in $db: exit $rc, lease '$lease': $(head -3 "$scratch/report-$db.log")"
			fi
			timeout 60 "$scratch/report" "$dsn" >>"$scratch/report-$db.log" 2>&1
			rc=$?
			after=$(psql_as postgres "$db" -At -c "SELECT acquired FROM lockext_stats" 2>/dev/null)
			# one grant by the first run, none by the second (contention: exit 0, no work)
			if [ "$rc" = 0 ] && [ -n "$before" ] && [ "$after" = $((before + 1)) ]; then
				ok "C++ in $db: a second run sees contention and exits 0"
			else
				not_ok "C++ in $db: second run exit $rc, grants $before -> $after"
			fi
			psql_as postgres "$db" -q -At -c "SELECT lockext_force_release('nightly-report')" >/dev/null
		done
	fi
fi

suite_finish
