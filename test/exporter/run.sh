#!/usr/bin/env bash
# Tests contrib/prometheus/queries.yaml against Debian's prometheus-postgres-exporter:
# a throwaway PostgreSQL 15 cluster with lockext preloaded (8 slots), the extension in two
# databases, known leases, contention, renew failures and a full table made by a plain
# role; the exporter on 127.0.0.1 and a free port as an unprivileged user, connected as a
# plain role with no grants; /metrics scraped with curl and every lockext series checked
# for its type and exact value; then an immediate stop and a start (a grace period) and
# the grace series checked. Ends with "N passed, M failed"; non-zero exit on failure.
#
# Run as root (it installs prometheus-postgres-exporter and curl with apt-get if missing
# and runs PostgreSQL as postgres). Environment:
#   LOCKEXT_PG_BIN              PostgreSQL binaries (tools/lib.sh), with lockext installed
#   LOCKEXT_EXPORTER_QUERIES    the queries file to test (default contrib/prometheus/queries.yaml)
#   LOCKEXT_EXPORTER_USER       unprivileged user to run the exporter as (default nobody)
#   LOCKEXT_KEEP=1              keep the scratch directory
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/tools/lib.sh"
require_root

queries_src=${LOCKEXT_EXPORTER_QUERIES:-$top/contrib/prometheus/queries.yaml}
exporter_user=${LOCKEXT_EXPORTER_USER:-nobody}
exporter=/usr/bin/prometheus-postgres-exporter
suite_start exporter
EXPORTER_PID=




stop_exporter() {
	local pid=$EXPORTER_PID
	[ -n "$pid" ] || return 0
	# our own child: its PID cannot be reused before we reap it with wait
	kill -TERM "$pid" 2>/dev/null
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	EXPORTER_PID=
}

cleanup() {
	stop_exporter
	pg_cluster_cleanup
	if [ "${LOCKEXT_KEEP:-0}" = 1 ]; then echo "kept $scratch"; else rm -rf "$scratch"; fi
}

# --- packages ---------------------------------------------------------------
missing=
for pkg in prometheus-postgres-exporter curl python3-yaml; do
	dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
	echo "== installing$missing"
	# policy-rc.d or not: the packaged service is not what this test runs
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >/dev/null 2>&1 ||
		{ apt-get update >/dev/null 2>&1 &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >/dev/null; } ||
		suite_die "apt-get install$missing"
fi
[ -x "$exporter" ] || suite_die "$exporter not found"
id -u "$exporter_user" >/dev/null 2>&1 || suite_die "no user $exporter_user to run the exporter as"
echo "# $("$exporter" --version 2>&1 | head -1)"

scratch=$(make_scratch_dir)
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -r "$queries_src" ] || suite_die "queries file $queries_src not readable"
cp "$queries_src" "$scratch/queries.yaml" && chmod 644 "$scratch/queries.yaml"

# --- the cluster --------------------------------------------------------------
# 8 slots so that the table can be filled; a grace period long enough to outlast the test
pg_cluster_start "$scratch/pg" "lockext.max_locks = 8" "lockext.max_ttl_ms = 600000" \
	"lockext.recovery_grace_ms = 600000" || suite_die "cluster start"

psql_as() { # ROLE DB [psql args...]
	local role=$1 db=$2
	shift 2
	"$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$role" -d "$db" "$@"
}

psql_as postgres postgres -c "CREATE DATABASE db1" -c "CREATE DATABASE db2" \
	-c "CREATE ROLE app LOGIN" -c "CREATE ROLE lockext_exporter LOGIN" || suite_die "create databases and roles"
# db1 has lockext in its own schema, as README.md's monitoring section assumes for its
# GRANT lines; db2 in public
psql_as postgres db1 -c "CREATE SCHEMA locks" -c "CREATE EXTENSION lockext SCHEMA locks" \
	-c "GRANT USAGE ON SCHEMA locks TO app" -c "ALTER ROLE app IN DATABASE db1 SET search_path = locks, public" ||
	suite_die "CREATE EXTENSION lockext SCHEMA locks in db1"
psql_as postgres db2 -c "CREATE EXTENSION lockext" || suite_die "CREATE EXTENSION lockext in db2"

# the monitoring role: pg_monitor is not enough to read lockext in another schema ...
psql_as postgres postgres -c "GRANT pg_monitor TO lockext_exporter" || suite_die "GRANT pg_monitor"
out=$(psql_as lockext_exporter db1 -v VERBOSITY=verbose -c "SELECT leases FROM locks.lockext_stats" 2>&1)
[[ "$out" == *"42501"*"permission denied for schema locks"* ]] &&
	ok "pg_monitor alone cannot read lockext_stats in schema locks (42501)" ||
	not_ok "lockext_stats in schema locks as pg_monitor: got $out"
# ... these two lines from README.md are what it needs (lockext's views and lockext_grace()
# are PUBLIC); pg_monitor stays for the exporter's built-in metrics
psql_as postgres db1 -c "GRANT USAGE ON SCHEMA locks TO lockext_exporter" \
	-c "ALTER ROLE lockext_exporter IN DATABASE db1 SET search_path = locks, public" || suite_die "GRANT USAGE"

# --- known traffic, as the plain role app ---------------------------------------
# db1: 3 grants, 2 refused attempts, 1 renew, 2 failed renews, 1 release, 1 no-op release,
# 1 wait of 100 ms that runs out
out=$(psql_as app db1 -At <<'SQL' 2>&1
SELECT lock_id AS k1 FROM try_lock('job-1', 600000) \gset
SELECT lock_id AS k2 FROM try_lock('job-2', 600000) \gset
SELECT lock_id AS k3 FROM try_lock('job-3', 600000) \gset
SELECT lock_id IS NULL FROM try_lock('job-1', 600000);
SELECT lock_id IS NULL FROM try_lock('job-2', 600000);
SELECT renew('job-2', :'k2');
SELECT renew('job-1', gen_random_uuid());
SELECT renew('job-1', gen_random_uuid(), 1000);
SELECT release('job-3', :'k3');
SELECT release('job-3', :'k3');
SELECT lock_id IS NULL FROM try_lock('job-1', 600000, 100);
SQL
)
exp=$'t\nt\nt\nf\nf\nt\nf\nt'
[ "$out" = "$exp" ] && ok "db1 traffic as planned" || not_ok "db1 traffic: got $(echo "$out" | tr '\n' ' ')"

# db2: the same key is another lock (granted), 1 refused attempt, 5 more grants fill the table
out=$(psql_as app db2 -At <<'SQL' 2>&1
SELECT lock_id IS NOT NULL FROM try_lock('job-1', 600000);
SELECT lock_id IS NULL FROM try_lock('job-1', 600000);
SELECT count(*) FROM generate_series(1, 5) g, LATERAL try_lock('fill-' || g, 600000) h WHERE h.lock_id IS NOT NULL;
SQL
)
exp=$'t\nt\n5'
[ "$out" = "$exp" ] && ok "db2 traffic as planned" || not_ok "db2 traffic: got $(echo "$out" | tr '\n' ' ')"

# one grant more than fits: 53400, counted in table_full, not in contended
out=$(psql_as app db2 -v VERBOSITY=verbose -c "SELECT * FROM try_lock('one-too-many', 600000)" 2>&1)
[[ "$out" == *"53400"*"lock table is full"* ]] && ok "ninth lease refused with 53400" ||
	not_ok "ninth lease: got $out"

# --- the exporter -----------------------------------------------------------------
export_port=$(free_port) || suite_die "no free port"
exporter_log=$scratch/exporter.log
start_exporter() {
	# setpriv execs, so $! is the exporter itself; trust auth, plain role, no grants
	DATA_SOURCE_NAME="host=127.0.0.1 port=$PG_PORT user=lockext_exporter dbname=db1 sslmode=disable" \
		setpriv --reuid="$exporter_user" --regid="$(id -g "$exporter_user")" --clear-groups -- \
		"$exporter" --web.listen-address="127.0.0.1:$export_port" \
		--extend.query-path="$scratch/queries.yaml" --log.level=info >>"$exporter_log" 2>&1 &
	EXPORTER_PID=$!
}
start_exporter

metrics=$scratch/metrics.txt
# scrape until the exporter answers, has connected (pg_up 1) and a line starts with WANT (a regex)
scrape() {
	local want=$1
	for _ in $(seq 1 60); do
		if curl -sf --max-time 10 "http://127.0.0.1:$export_port/metrics" -o "$metrics" 2>/dev/null &&
			grep -qx 'pg_up 1' "$metrics" && grep -q "^$want" "$metrics"; then
			return 0
		fi
		kill -0 "$EXPORTER_PID" 2>/dev/null || return 1
		sleep 0.5
	done
	return 1
}

# value NAME [LABEL=VALUE...]: the value of the one series NAME whose labels include all
# those given (the exporter adds server="host:port")
value() {
	local name=$1
	shift
	local IFS=$'\037'   # label values may contain spaces: pass them separated by US
	awk -v name="$name" -v want="$*" '
		BEGIN { n = split(want, w, "\037") }
		$0 ~ /^#/ { next }
		{
			i = index($0, "{"); j = index($0, "} ")
			if (i) { mname = substr($0, 1, i - 1); labels = substr($0, i + 1, j - i - 1); v = substr($0, j + 2) }
			else { split($0, f, " "); mname = f[1]; labels = ""; v = f[2] }
			if (mname != name) next
			for (k = 1; k <= n; k++) {
				e = index(w[k], "=")
				if (index("," labels ",", "," substr(w[k], 1, e - 1) "=\"" substr(w[k], e + 1) "\",") == 0) next
			}
			print v; found++
		}
		END { if (found != 1) exit 1 }' "$metrics"
}

# NAME{LABEL=VALUE,...} for messages
series() { local name=$1; shift; local IFS=,; [ $# -gt 0 ] && echo "$name{$*}" || echo "$name"; }

# expect TYPE NAME VALUE [LABEL=VALUE...]: the series exists once, has that type and value
expect() {
	local type=$1 name=$2 want=$3 got t s
	shift 3
	s=$(series "$name" "$@")
	t=$(awk -v name="$name" '$1 == "#" && $2 == "TYPE" && $3 == name { print $4 }' "$metrics")
	if ! got=$(value "$name" "$@"); then
		not_ok "$s = $want: no such series (or more than one)"
	elif [ "$t" != "$type" ]; then
		not_ok "$s: type '$t', want $type"
	elif awk -v a="$got" -v b="$want" 'BEGIN { exit !(a + 0 == b + 0) }'; then
		ok "$s = $want ($type)"
	else
		not_ok "$s = $got, want $want"
	fi
}

# expect_range TYPE NAME LOW HIGH [LABEL=VALUE...]
expect_range() {
	local type=$1 name=$2 low=$3 high=$4 got t s
	shift 4
	s=$(series "$name" "$@")
	t=$(awk -v name="$name" '$1 == "#" && $2 == "TYPE" && $3 == name { print $4 }' "$metrics")
	if ! got=$(value "$name" "$@"); then
		not_ok "$s in [$low, $high]: no such series (or more than one)"
	elif [ "$t" != "$type" ]; then
		not_ok "$s: type '$t', want $type"
	elif awk -v a="$got" -v l="$low" -v h="$high" 'BEGIN { exit !(a + 0 >= l + 0 && a + 0 <= h + 0) }'; then
		ok "$s = $got in [$low, $high] ($type)"
	else
		not_ok "$s = $got, want [$low, $high]"
	fi
}

no_exporter_errors() {
	if grep -E 'level=(error|warn)' "$exporter_log" | grep -v 'Error opening connection to database\|connection refused\|terminating connection\|shutting down\|bad connection\|unexpected EOF' >"$scratch/errors.txt"; then
		not_ok "exporter logged errors: $(head -3 "$scratch/errors.txt")"
	else
		ok "exporter logged no query errors"
	fi
}

echo "== scrape 1: after the traffic"
if scrape 'lockext_stats_leases[{ ]'; then ok "exporter up, connected, lockext series present"; else
	tail -20 "$exporter_log"
	not_ok "exporter did not serve lockext series on 127.0.0.1:$export_port"
fi
# (checked once it serves: setpriv drops to the user just before it execs the exporter)
euid=$(awk '/^Uid:/ { print $3 }' "/proc/$EXPORTER_PID/status" 2>/dev/null)
exe=$(readlink "/proc/$EXPORTER_PID/exe" 2>/dev/null)
[ -n "$euid" ] && [ "$euid" = "$(id -u "$exporter_user")" ] && [ "$euid" != 0 ] && [ "$exe" = "$exporter" ] &&
	ok "exporter (PID $EXPORTER_PID) runs as $exporter_user (uid $euid) on 127.0.0.1:$export_port" ||
	not_ok "exporter PID $EXPORTER_PID is '$exe' as uid '${euid}', not $exporter as $exporter_user"
expect gauge pg_exporter_user_queries_load_error 0
# counters
expect counter lockext_stats_acquired_total 9        # 3 in db1 + 1 + 5 in db2
expect counter lockext_stats_contended_total 3       # 2 in db1 + 1 in db2 (not the table-full one)
expect counter lockext_stats_renewed_total 1
expect counter lockext_stats_renew_failed_total 2
expect counter lockext_stats_released_total 1
expect counter lockext_stats_release_noop_total 1
expect counter lockext_stats_expired_total 0
expect counter lockext_stats_table_full_total 1
expect gauge lockext_stats_waiters 0
expect counter lockext_stats_waits_total 1
expect counter lockext_stats_wait_timeouts_total 1
expect counter lockext_stats_wal_records_total 0      # lockext.replication = off
expect counter lockext_stats_sync_failed_total 0
expect counter lockext_stats_replayed_total 0
expect gauge lockext_replication_table_complete 1 mode=off
expect counter lockext_replication_snapshots_total 0 mode=off
# gauges
expect gauge lockext_stats_leases 8
expect gauge lockext_stats_max_locks 8
expect gauge lockext_stats_high_water 8
now=$(date +%s)
expect_range gauge lockext_stats_reset_timestamp_seconds $((suite_started - 120)) $((now + 5))
# per database (postgres has no extension and no leases: 0, not absent)
expect gauge lockext_database_leases 2 datname=db1
expect gauge lockext_database_leases 6 datname=db2
expect gauge lockext_database_leases 0 datname=postgres
# grace: none
expect gauge lockext_grace_active 0 reason=none
expect gauge lockext_grace_remaining_seconds 0 reason=none
expect gauge lockext_grace_until_timestamp_seconds 0 reason=none
expect counter lockext_grace_refused_total 0
no_exporter_errors

# the alerting rules in README.md: valid YAML, and every lockext series they name is exported
rules=$scratch/rules.yaml
awk '/^<!-- readme-test: prometheus-rules -->$/ { want = 1; next }
	want && /^```/ { if (inside) exit; inside = 1; next }
	inside { print }' "${LOCKEXT_README:-$top/README.md}" >"$rules"
if [ -s "$rules" ] && python3 -c 'import sys, yaml
rules = [r for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"]]
assert rules and all("alert" in r and "expr" in r for r in rules)' "$rules" 2>"$scratch/rules.err"; then
	ok "README alerting rules: $(grep -c -- '- alert:' "$rules") rules, valid YAML"
else
	not_ok "README alerting rules block missing or not valid: $(tail -1 "$scratch/rules.err")"
fi
for name in $(grep -o 'lockext_[a-z_]*' "$rules" | sort -u); do
	grep -q "^# TYPE $name " "$metrics" && ok "alert rules use exported series $name" ||
		not_ok "alert rules name $name, which the exporter does not export"
done

echo "== immediate stop and start: a grace period"
pg_cluster_stop immediate || not_ok "immediate stop"
if pg_cluster_ctl start -w -t 120 >/dev/null 2>&1; then PG_PID=$(pg_cluster_pid); else suite_die "restart after immediate stop"; fi
out=$(psql_as app db1 -At -c "SELECT lock_id IS NULL FROM try_lock('job-9', 600000)" 2>&1)
[ "$out" = t ] && ok "try_lock refused during the grace period" || not_ok "try_lock during grace: got $out"
# the exporter's connection died with the server: it reconnects at a later scrape
scrape 'lockext_grace_active{reason="start after an unclean shutdown"' ||
	not_ok "exporter did not report the grace period after the restart"
grace_until=$(psql_as postgres db2 -At -c "SELECT extract(epoch FROM grace_until) FROM lockext_grace()")
expect gauge lockext_grace_active 1 "reason=start after an unclean shutdown"
expect_range gauge lockext_grace_remaining_seconds 500 600 "reason=start after an unclean shutdown"
expect_range gauge lockext_grace_until_timestamp_seconds "$(awk -v g="$grace_until" 'BEGIN { printf "%.3f", g - 1 }')" \
	"$(awk -v g="$grace_until" 'BEGIN { printf "%.3f", g + 1 }')" "reason=start after an unclean shutdown"
expect counter lockext_grace_refused_total 1
expect counter lockext_stats_contended_total 1       # a grace refusal is contention too
expect counter lockext_stats_acquired_total 0        # counters live in shared memory
expect gauge lockext_stats_leases 0                  # leases are forgotten by an immediate stop
expect gauge lockext_stats_high_water 0
expect gauge lockext_stats_max_locks 8
expect gauge lockext_database_leases 0 datname=db1
expect gauge lockext_database_leases 0 datname=db2
if value lockext_grace_active reason=none >/dev/null 2>&1; then
	not_ok "a reason=none series next to the active one"
else
	ok "one lockext_grace_active series (reason label changed)"
fi
no_exporter_errors

stop_exporter
suite_finish
