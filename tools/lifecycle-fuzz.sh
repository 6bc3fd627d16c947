#!/usr/bin/env bash
# Runs the lifecycle fuzzer (test/t/014_lifecycle_fuzz.pl) outside
# `make installcheck`: against any PostgreSQL 15 install that has lockext
# installed (its lockext.so under `pg_config --pkglibdir`, its SQL files
# under `pg_config --sharedir`/extension), for a chosen time, seed or number
# of seeds.  Run as root (PostgreSQL then runs as the postgres user) or as
# the postgres user itself.
#
#   tools/lifecycle-fuzz.sh                       CI bound (100 s), random seed, system install
#   tools/lifecycle-fuzz.sh --seed 42             reproduce a run
#   tools/lifecycle-fuzz.sh --long                soak: one 30-minute run
#   tools/lifecycle-fuzz.sh --runs 5 --seed 1     seeds 1..5, one after the other
#   tools/lifecycle-fuzz.sh --pg-bin /tmp/pgold/usr/lib/postgresql/15/bin --seconds 120
#   tools/lifecycle-fuzz.sh --events promote=3,tamper=60
#
# Options: --pg-bin DIR (default: tools/lib.sh's PG_BIN), --seconds N,
# --seed S, --runs N, --long (1800 s unless --seconds is given), --events W
# (LOCKEXT_FUZZ_EVENTS), --grace MS (LOCKEXT_FUZZ_GRACE_MS), --stop-at-first,
# --conf 'LINES' (LOCKEXT_FUZZ_CONF: extra postgresql.conf lines for every node),
# --keep (keep the scratch directory even when every run passed).
# Output: prove's, plus the fuzzer's diagnostics; the last line is
# "N passed, M failed" (runs).  Logs of failed runs stay under the printed
# scratch directory (tmp_check/log/).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/tools/lib.sh" # PG_BIN

pg_bin=$PG_BIN
seconds=
seed=
runs=1
long=0
events=
grace=
stop_first=
conf=
keep=0
while [ $# -gt 0 ]; do
	case $1 in
	--pg-bin) pg_bin=$2; shift 2 ;;
	--seconds) seconds=$2; shift 2 ;;
	--seed) seed=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--long) long=1; shift ;;
	--events) events=$2; shift 2 ;;
	--grace) grace=$2; shift 2 ;;
	--stop-at-first) stop_first=1; shift ;;
	--conf) conf=$2; shift 2 ;;
	--keep) keep=1; shift ;;
	-h | --help) sed -n '2,25p' "$0"; exit 0 ;;
	*) echo "lifecycle-fuzz: unknown option $1" >&2; exit 2 ;;
	esac
done
[ -z "$seconds" ] && { [ "$long" = 1 ] && seconds=1800 || seconds=100; }

pg_config=$pg_bin/pg_config
[ -x "$pg_config" ] || { echo "lifecycle-fuzz: no pg_config in $pg_bin" >&2; exit 2; }
pgxs_src=$(dirname "$(dirname "$("$pg_config" --pgxs)")")    # .../lib/pgxs/src
pg_regress=$pgxs_src/test/regress/pg_regress
perl_lib=$pgxs_src/test/perl
pkglib=$("$pg_config" --pkglibdir)
share=$("$pg_config" --sharedir)
for f in "$pkglib/lockext.so" "$share/extension/lockext.control" "$pg_regress" "$perl_lib/PostgreSQL/Test/Cluster.pm"; do
	[ -e "$f" ] || { echo "lifecycle-fuzz: missing $f (is lockext installed into this PostgreSQL?)" >&2; exit 2; }
done
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || [ -n "${LOCKEXT_FUZZ_LIBFAKETIME:-}" ] ||
	{ echo "lifecycle-fuzz: libfaketime missing (apt-get install faketime)" >&2; exit 2; }

if [ "$(id -u)" -eq 0 ]; then
	as_pg() { runuser -u postgres -- "$@"; }
	owner=postgres
else
	as_pg() { "$@"; }
	owner=$(id -un)
fi

scratch=$(mktemp -d /tmp/lockext-fuzz.XXXXXX)
chmod 755 "$scratch"
mkdir -p "$scratch/t" "$scratch/tmp_check"
cp "$top/test/t/014_lifecycle_fuzz.pl" "$scratch/t/"
[ -d "$top/test/perl" ] && cp -a "$top/test/perl" "$scratch/perl"
chown -R "$owner" "$scratch"
echo "== lifecycle fuzz: $runs run(s) of $seconds s against $pg_bin ($pkglib/lockext.so), scratch $scratch"

passed=0
failed=0
for i in $(seq 1 "$runs"); do
	if [ -n "$seed" ]; then s=$((seed + i - 1)); else s=$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); fi
	run=$scratch/run$i
	mkdir -p "$run/tmp_check"
	cp -a "$scratch/t" "$run/t"
	chown -R "$owner" "$run"
	echo "== run $i: LOCKEXT_FUZZ_SEED=$s"
	(
		cd "$run" &&
			as_pg env PATH="$pg_bin:$PATH" PG_REGRESS="$pg_regress" TESTDIR="$run" \
				LOCKEXT_FUZZ_SEED="$s" LOCKEXT_FUZZ_SECONDS="$seconds" \
				${events:+LOCKEXT_FUZZ_EVENTS="$events"} ${grace:+LOCKEXT_FUZZ_GRACE_MS="$grace"} \
				${stop_first:+LOCKEXT_FUZZ_STOP_AT_FIRST=1} ${conf:+LOCKEXT_FUZZ_CONF="$conf"} \
				prove --timer -I "$perl_lib" -I "$scratch/perl" t/014_lifecycle_fuzz.pl
	) 2>&1 | tee "$run/output.txt"
	if [ "${PIPESTATUS[0]}" -eq 0 ]; then
		passed=$((passed + 1))
		[ "$keep" = 1 ] || rm -rf "$run/tmp_check"
	else
		failed=$((failed + 1))
		echo "== run $i failed: LOCKEXT_FUZZ_SEED=$s; logs in $run/tmp_check/log/, output in $run/output.txt"
	fi
done
grep -h "lifecycle fuzz summary\|^#   [0-9]* x " "$scratch"/run*/output.txt
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
