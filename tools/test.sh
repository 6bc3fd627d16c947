#!/usr/bin/env bash
# Runs every lockext test suite and ends with one line "N passed, M failed".
# Exit status is non-zero on any failure. Run as root (or via sudo): it
# installs dependencies, builds and installs lockext, and runs PostgreSQL as
# the unprivileged postgres user on throwaway instances.
#
#   tools/test.sh            all suites
#   LOCKEXT_SUITES="regress isolation" tools/test.sh   a subset
#     (unit regress isolation tap client checker ha bench exporter readme ubsan packages)
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/tools/lib.sh"
require_root

suites=${LOCKEXT_SUITES:-"unit regress isolation tap client checker ha bench exporter readme ubsan packages"}
passed=0
failed=0
started=$(date +%s)

record() {
	local suite=$1 p=$2 f=$3 rc=$4
	# a runner that failed without reporting a failing test still counts as one failure
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
	passed=$((passed + p))
	failed=$((failed + f))
	printf '%-12s %5d passed, %d failed\n' "$suite:" "$p" "$f"
}

finish() {
	echo "== all suites done in $(($(date +%s) - started)) s"
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
	exit $?
}

"$top/tools/install-deps.sh" || { record deps 0 1 1; finish; }
scratch=$(make_scratch_dir)
trap 'rm -rf "$scratch"' EXIT

echo "== building and installing lockext"
# the project's own builds treat the client's warnings as errors (a consumer's build does not)
export CLIENT_CMAKE_FLAGS="${CLIENT_CMAKE_FLAGS:-} -DLOCKEXT_CLIENT_WERROR=ON"
if ! build_and_install "$top" "$scratch/build.log"; then
	record build 0 1 1
	finish
fi
# the test-only extension with the lockext_test_* hooks (never packaged), installed as
# root here: the suites' installcheck, run as postgres, then finds it up to date
if ! make -C "$top/test/lockext_test" PG_CONFIG="$PG_CONFIG" install >>"$scratch/build.log" 2>&1; then
	cat "$scratch/build.log"
	record build 0 1 1
	finish
fi
# the installed client tool, for test/t/017_upgrade.pl (1.1 client against a 1.0 database)
LOCKEXT_RUN=${LOCKEXT_RUN:-$(command -v lockext-run || true)}
export LOCKEXT_RUN

has_suite() { [[ " $suites " == *" $1 "* ]]; }

count() { grep -cE "$1" "$2" || true; }

# Unit tests of the PostgreSQL-free core, under AddressSanitizer and UBSan.
if has_suite unit; then
	log=$scratch/unit.log
	{
		cmake -S "$top/test/unit" -B "$scratch/unit-build" -DCMAKE_BUILD_TYPE=Debug \
			-DLOCKEXT_SANITIZE=ON && cmake --build "$scratch/unit-build" -j"$(nproc)" &&
			"$scratch/unit-build/lockext_core_tests" --gtest_brief=1
	} >"$log" 2>&1
	rc=$?
	p=$(sed -nE 's/.*\[  PASSED  \] ([0-9]+) tests?.*/\1/p' "$log" | tail -1)
	f=$(sed -nE 's/.*\[  FAILED  \] ([0-9]+) tests?,.*/\1/p' "$log" | tail -1)
	[ "$rc" -ne 0 ] && tail -50 "$log"
	record unit "${p:-0}" "${f:-0}" "$rc"
fi

# The extension's part of the tree (no client, git or build directories) copied to $1.
copy_tree() {
	mkdir -p "$1"
	tar -C "$top" --exclude=./client --exclude=./.git --exclude='./build*' -cf - . | tar -C "$1" -xf -
}

# The server suites run from a postgres-owned copy of the tree.
copy=$scratch/src
copy_tree "$copy"
chown -R postgres:postgres "$scratch"
pg_make() {
	as_postgres make -C "$copy" PG_CONFIG="$PG_CONFIG" installcheck \
		EXTRA_REGRESS_OPTS="--temp-instance=$copy/tmp_instance" "$@"
}

# pg_regress-style suites: name, diffs file, then make overrides
run_pg_suite() {
	local suite=$1 diffs=$2 log=$scratch/$1.log rc
	shift 2
	pg_make "$@" >"$log" 2>&1
	rc=$?
	[ "$rc" -ne 0 ] && { cat "$log"; head -300 "$diffs" 2>/dev/null; }
	record "$suite" "$(count '\.\.\. ok' "$log")" "$(count '\.\.\. FAILED' "$log")" "$rc"
}
has_suite regress && run_pg_suite regress "$copy/regression.diffs" ISOLATION= TAP_TESTS=
has_suite isolation && run_pg_suite isolation "$copy/output_iso/regression.diffs" REGRESS= TAP_TESTS=

# TAP suites via prove: name, then make overrides
run_tap_suite() {
	local suite=$1 log=$scratch/$1.log rc total bad f
	shift
	pg_make REGRESS= ISOLATION= PROVE_FLAGS="--timer" "$@" >"$log" 2>&1
	rc=$?
	total=$(sed -nE 's/^Files=[0-9]+, Tests=([0-9]+),.*/\1/p' "$log" | tail -1)
	bad=$(sed -nE 's/.*Failed ([0-9]+)\/[0-9]+ subtests.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
	total=${total:-0}
	if [ "$rc" -ne 0 ]; then
		cat "$log"
		for f in "$copy"/tmp_check/log/regress_log_*; do
			[ -f "$f" ] && { echo "---- $f"; tail -40 "$f"; }
		done
	fi
	record "$suite" "$((total - bad))" "$bad" "$rc"
}
if has_suite tap && ls "$copy"/test/t/*.pl >/dev/null 2>&1; then
	run_tap_suite tap
fi

# Suites with a runner script of their own that ends with "N passed, M failed"
run_script_suite() {
	local suite=$1 log=$scratch/$1.log rc last p f
	shift
	bash "$@" >"$log" 2>&1
	rc=$?
	last=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
	if [ "$rc" -ne 0 ]; then tail -80 "$log"; else grep -E '^\|' "$log" | head -40; fi
	p=$(echo "$last" | sed -nE 's/^([0-9]+) passed.*/\1/p')
	f=$(echo "$last" | sed -nE 's/.* ([0-9]+) failed.*/\1/p')
	record "$suite" "${p:-0}" "${f:-0}" "$rc"
}
has_suite client && run_script_suite client "$top/client/test/run.sh"
has_suite checker && run_script_suite checker "$top/test/checker/run.sh"
has_suite bench && run_script_suite bench-smoke "$top/bench/run.sh" --smoke
has_suite bench && run_script_suite bench-wait-smoke "$top/bench/wait.sh" --smoke
has_suite bench && run_script_suite bench-repl-smoke "$top/bench/replication.sh" --smoke
# Patroni 3 + etcd 3.4, three nodes, failovers under the history checker (short form)
has_suite ha && run_script_suite ha "$top/test/ha/run.sh"
has_suite exporter && run_script_suite exporter "$top/test/exporter/run.sh"
has_suite readme && run_script_suite readme "$top/test/readme/run.sh"

# The extension built with UndefinedBehaviorSanitizer (any hit aborts the
# backend), installed for the regress and isolation suites, then the normal
# build is put back.
if has_suite ubsan; then
	ubsrc=$scratch/ubsan
	copy_tree "$ubsrc"
	make -C "$ubsrc" clean >/dev/null 2>&1
	if make -C "$ubsrc" -j"$(nproc)" PG_CONFIG="$PG_CONFIG" \
		LOCKEXT_EXTRA_CXXFLAGS="-fsanitize=undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
		LOCKEXT_EXTRA_LDFLAGS="-fsanitize=undefined" lockext.so >"$scratch/ubsan-build.log" 2>&1 &&
		make -C "$ubsrc" PG_CONFIG="$PG_CONFIG" install-lib >>"$scratch/ubsan-build.log" 2>&1; then
		run_pg_suite ubsan-regress "$copy/regression.diffs" ISOLATION= TAP_TESTS=
		run_pg_suite ubsan-isolation "$copy/output_iso/regression.diffs" REGRESS= TAP_TESTS=
		run_tap_suite ubsan-fuzz PROVE_TESTS=test/t/007_sql_fuzz.pl
		grep -q "runtime error" "$copy"/tmp_check/log/*.log 2>/dev/null && record ubsan-fuzz-log 0 1 1
		if grep -q "runtime error" "$copy"/log/* "$copy"/output_iso/log/* 2>/dev/null; then
			grep -h -A3 "runtime error" "$copy"/log/* "$copy"/output_iso/log/* | head -20
			record ubsan-log 0 1 1
		fi
	else
		tail -30 "$scratch/ubsan-build.log"
		record ubsan-build 0 1 1
	fi
	build_and_install "$top" "$scratch/reinstall.log" || record reinstall 0 1 1
fi

# Last: builds the Debian packages and replaces make install's files with them
has_suite packages && run_script_suite packages "$top/tools/test-packages.sh"

finish
