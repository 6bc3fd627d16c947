#!/usr/bin/env bash
# client/test/run.sh — build and test the lockext C++ client library.
#
# Run as root on Debian 12 after the extension is installed (make install). It:
#   1. installs missing build/test packages (cmake g++ libpq-dev libgtest-dev pgbouncer
#      pkg-config postgresql-15);
#   2. builds the client three times: build-release, build-asan (ASan+UBSan), build-tsan;
#   3. starts a throwaway PostgreSQL 15 cluster as user postgres (lockext preloaded,
#      lockext.max_locks=1000, 127.0.0.1 on a free port) and PgBouncer 1.18 in
#      transaction pooling mode in front of it;
#   4. runs every gtest binary of every build (pg cases included: a skipped test counts
#      as a failure here), test/lockext_run_test.sh with every build's lockext-run, and
#      builds + runs a tiny app against the INSTALLED library using only
#      `pkg-config --cflags --libs lockext-client` (and runs the installed lockext-run);
#   5. prints per-binary results and a final line "N passed, M failed"; exits non-zero
#      on any failure. Everything it started is stopped on exit.
# Build output goes to a log file that is printed only on failure.
set -u -o pipefail

CLIENT=$(cd "$(dirname "$0")/.." && pwd)
. "$CLIENT/../tools/lib.sh"        # PG_BIN, PG_CONFIG, free_port, pg_cluster_*
. "$CLIENT/../tools/pgbouncer.sh"  # pgbouncer_start_free
WORK=$(mktemp -d /tmp/lockext-client-test.XXXXXX)
chmod 755 "$WORK"
LOG=$WORK/build.log
PASSED=0
FAILED=0
BOUNCER_PID=""

say() { printf '%s\n' "$*"; }
# Prints the summary as the very last line and exits (0 only if nothing failed).
finish() {
    if [ "${KEEP_WORK:-0}" = 1 ] || [ "$FAILED" -gt 0 ]; then
        say "run.sh: logs kept in $WORK"
    fi
    say "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ] && exit 0
    exit 1
}
die() {
    say "run.sh: $*"
    [ -s "$LOG" ] && { say "---- $LOG (last 60 lines) ----"; tail -n 60 "$LOG"; }
    FAILED=$((FAILED + 1))
    finish
}

# Stops what this script started (silently: the summary stays the last line).
cleanup() {
    if [ -n "$BOUNCER_PID" ]; then kill -INT "$BOUNCER_PID" 2>/dev/null; fi
    pg_cluster_cleanup
    if [ "${KEEP_WORK:-0}" != 1 ] && [ "$FAILED" -eq 0 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'FAILED=$((FAILED + 1)); say "run.sh: interrupted"; finish' INT TERM

# ---- 1. packages ---------------------------------------------------------------
missing=()
for pkg in cmake g++ libpq-dev libgtest-dev pgbouncer pkg-config postgresql-15; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; } \
        >>"$LOG" 2>&1 || die "apt-get install failed"
fi
[ -f "$("$PG_CONFIG" --pkglibdir)/lockext.so" ] || die "lockext.so is not installed: run make install first"

# ---- 2. builds -----------------------------------------------------------------
# build NAME BUILD_TYPE [cmake args]: the sanitizer builds use Debug (-O0 -g), which
# compiles about twice as fast; the tests are dominated by sleeps, not CPU.
build() {
    local name=$1 type=$2
    shift 2
    local start=$SECONDS
    say "== build $name" >>"$LOG"
    cmake -S "$CLIENT" -B "$CLIENT/build-$name" -DLOCKEXT_CLIENT_TESTS=ON -DLOCKEXT_CLIENT_WERROR=ON \
        -DCMAKE_BUILD_TYPE="$type" "$@" >>"$LOG" 2>&1 &&
        cmake --build "$CLIENT/build-$name" -j2 >>"$LOG" 2>&1 || die "build $name failed"
    say "built $name in $((SECONDS - start)) s"
}
build release RelWithDebInfo
build asan Debug -DLOCKEXT_CLIENT_SANITIZE=address,undefined
build tsan Debug -DLOCKEXT_CLIENT_SANITIZE=thread

# ---- 3. PostgreSQL and PgBouncer -----------------------------------------------
pg_cluster_start "$WORK/pg" "lockext.max_locks = 1000" "lockext.enable_test_hooks = on" \
    "max_connections = 100" "fsync = off" >>"$LOG" 2>&1 || die "server start failed"
PORT=$PG_PORT
export LOCKEXT_TEST_DSN=$PG_DSN
# the lockext_test_* hooks (lockext_test_stall) come from the test-only extension
make -C "$CLIENT/../test/lockext_test" PG_CONFIG="$PG_CONFIG" install >>"$LOG" 2>&1 ||
    die "installing the test-only extension lockext_test failed"
"$PG_BIN/psql" "$LOCKEXT_TEST_DSN" -v ON_ERROR_STOP=1 -qc 'CREATE EXTENSION lockext' \
    -c 'CREATE EXTENSION lockext_test' >>"$LOG" 2>&1 || die "CREATE EXTENSION lockext, lockext_test failed"
export LOCKEXT_TEST_PG_STOP="$PG_CTL stop -m fast"
export LOCKEXT_TEST_PG_START="$PG_CTL start"

pgbouncer_start_free "$WORK/pgb" "$PG_PORT" 2 200 "admin_users = postgres" "server_check_delay = 0" \
    >>"$LOG" 2>&1 || die "cannot connect through pgbouncer: $(tail -n 3 "$WORK/pgb/pgbouncer.log")"
BPORT=$PGB_PORT BOUNCER_PID=$PGB_PID
export LOCKEXT_TEST_PGBOUNCER_DSN="host=127.0.0.1 port=$BPORT dbname=postgres user=postgres"
export LOCKEXT_TEST_PGBOUNCER_ADMIN_DSN="host=127.0.0.1 port=$BPORT dbname=pgbouncer user=postgres"
say "server on port $PORT, pgbouncer on port $BPORT"

# ---- 4. tests ------------------------------------------------------------------
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1

# run_gtest LABEL COMMAND...: adds the binary's passed/failed counts; skipped = failed.
run_gtest() {
    local label=$1 out="$WORK/$1.log" start=$SECONDS rc p f s
    shift
    timeout 300 "$@" --gtest_color=no >"$out" 2>&1
    rc=$?
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -n 1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -n 1)
    s=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$out" | tail -n 1)
    p=${p:-0} f=${f:-0} s=${s:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi # crash, sanitizer report, timeout
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f + s))
    if [ "$rc" -eq 0 ] && [ "$f" -eq 0 ] && [ "$s" -eq 0 ]; then
        say "PASS $label: $p passed ($((SECONDS - start)) s)"
    else
        say "FAIL $label: $p passed, $f failed, $s skipped, exit $rc ($((SECONDS - start)) s)"
        grep -E '^\[  (FAILED|SKIPPED) \] |: Failure$|ERROR: [A-Za-z]*Sanitizer|WARNING: ThreadSanitizer|runtime error:' \
            "$out" | head -n 40
        say "  full output: $out"
    fi
}

# TSan's shadow memory needs a predictable address space on kernels with high mmap
# randomisation ("unexpected memory mapping"): run those binaries without ASLR.
launcher() {
    if [ "$1" = tsan ] && command -v setarch >/dev/null; then
        echo "setarch $(uname -m) -R"
    fi
}
for b in release asan tsan; do
    run_gtest "conformance-$b" $(launcher $b) "$CLIENT/build-$b/lockext_conformance_test"
done
# run_tool_test LABEL COMMAND...: lockext_run_test.sh output ("ok - ..." / "not ok - ...",
# last line "lockext-run tests: N passed, M failed").
run_tool_test() {
    local label=$1 out="$WORK/$1.log" start=$SECONDS rc p f
    shift
    timeout 300 "$@" >"$out" 2>&1
    rc=$?
    p=$(sed -n 's/^lockext-run tests: \([0-9]*\) passed.*/\1/p' "$out")
    f=$(sed -n 's/^lockext-run tests: [0-9]* passed, \([0-9]*\) failed/\1/p' "$out")
    p=${p:-0} f=${f:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    if [ "$rc" -eq 0 ] && [ "$f" -eq 0 ]; then
        say "PASS $label: $p passed ($((SECONDS - start)) s)"
    else
        say "FAIL $label: $p passed, $f failed, exit $rc ($((SECONDS - start)) s)"
        grep -E '^not ok|ERROR: [A-Za-z]*Sanitizer|WARNING: ThreadSanitizer|runtime error:' "$out" |
            head -n 40
        say "  full output: $out"
    fi
}
# lockext-run (the flock-like tool) against the server, in every build.
for b in release asan tsan; do
    run_tool_test "lockext-run-$b" $(launcher $b) bash "$CLIENT/test/lockext_run_test.sh" \
        "$CLIENT/build-$b/lockext-run" "$LOCKEXT_TEST_DSN"
done
# pg_test stops and restarts the server: run it after all conformance runs.
for b in release asan tsan; do
    run_gtest "pg-$b" $(launcher $b) "$CLIENT/build-$b/lockext_pg_test"
done

# ---- 5. the installed library through pkg-config -------------------------------
pkgconfig_test() {
    local prefix="$WORK/prefix" app="$WORK/app"
    cmake --install "$CLIENT/build-release" --prefix "$prefix" >>"$LOG" 2>&1 || return 1
    readelf -d "$prefix/lib/liblockext-client.so" | grep -q 'SONAME.*liblockext-client.so.2' ||
        { say "  no SONAME liblockext-client.so.2" >>"$LOG"; return 1; }
    "$prefix/bin/lockext-run" --version >>"$LOG" 2>&1 ||
        { say "  installed bin/lockext-run does not run" >>"$LOG"; return 1; }
    mkdir -p "$app" && cp "$CLIENT/test/pkgconfig_app/main.cpp" "$app/"
    local flags
    flags=$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs lockext-client) ||
        return 1
    say "  pkg-config: $flags" >>"$LOG"
    # the .pc does not choose the language standard: the consumer does (C++23 or newer)
    (cd "$app" && g++ -std=c++23 -Wall -Wextra -Werror main.cpp $flags -o app) >>"$LOG" 2>&1 || return 1
    LD_LIBRARY_PATH="$prefix/lib" "$app/app" "$LOCKEXT_TEST_DSN" >>"$LOG" 2>&1
}
if pkgconfig_test; then
    PASSED=$((PASSED + 1))
    say "PASS pkg-config build of an app against the installed library"
else
    FAILED=$((FAILED + 1))
    say "FAIL pkg-config build of an app against the installed library"
    tail -n 30 "$LOG"
fi

finish
