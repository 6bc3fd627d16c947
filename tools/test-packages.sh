#!/usr/bin/env bash
# Builds lockext's Debian packages (debian/) from a clean copy of the tree, installs them
# in place of a `make install`, and tests what they installed. Ends with one line
# "N passed, M failed"; the exit status is non-zero on any failure. Run as root (CI does):
# it installs the build dependencies, removes a previous `make install`'s lockext files
# from the system (PostgreSQL 15's directories and /usr/local), installs the packages, and
# runs PostgreSQL as the postgres user on throwaway instances. It leaves the packages
# installed (a working lockext: extension, client library, lockext-run).
#
#   tools/test-packages.sh
#   LOCKEXT_KEEP=1 tools/test-packages.sh     keep the scratch directory (debs, logs)
#
# Steps: build dependencies; dpkg-buildpackage -us -uc -b; lintian on the .changes (and
# so on every .deb in it: an E: tag fails, the others are listed); remove the old files;
# apt-get install ./*.deb; the files where Debian expects them (dpkg -L); the pg_regress
# suite against the installed extension (make installcheck, its own temporary instance);
# a consumer built with pkg-config and one with CMake's find_package(lockext-client),
# both run against a server with the packaged extension; lockext-run --version and a run
# under a lease; the man page.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/tools/lib.sh"
require_root

passed=0
failed=0
started=$(date +%s)
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
finish() {
	echo "== packages done in $(($(date +%s) - started)) s"
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
	exit $?
}
# check NAME COMMAND...: one check, output in $work/log/NAME.log (its tail on failure)
check() {
	local name=$1 log
	shift
	log=$work/log/${name//[^A-Za-z0-9._-]/_}.log
	if "$@" >"$log" 2>&1; then
		pass "$name"
	else
		fail "$name"
		tail -n 40 "$log" | sed 's/^/    /'
	fi
}

work=$(make_scratch_dir)
mkdir -p "$work/log"
chmod 755 "$work/log"
cleanup() {
	pg_cluster_cleanup
	if [ -n "${LOCKEXT_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ---- build dependencies (debian/control's Build-Depends, and what the tests use) ----
deps=(debhelper dpkg-dev fakeroot postgresql-server-dev-all postgresql-server-dev-15
	libkrb5-dev libpq-dev cmake pkgconf g++ make lintian postgresql-15 man-db)
missing=()
for pkg in "${deps[@]}"; do
	dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing: ${missing[*]}"
	if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		"${missing[@]}"; } >"$work/log/apt-deps.log" 2>&1; then
		fail "install build dependencies"
		tail -n 20 "$work/log/apt-deps.log"
		finish
	fi
fi

# ---- build from a clean copy: the files git knows (tracked, or new and not ignored) ----
version=$(cd "$top" && dpkg-parsechangelog -S Version)
upstream=${version%-*}
src=$work/build/lockext-$upstream
mkdir -p "$src"
if git -C "$top" -c safe.directory="$top" rev-parse --git-dir >/dev/null 2>&1; then
	(cd "$top" && git -c safe.directory="$top" ls-files -z -co --exclude-standard |
		tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$src" -xf -
else
	tar -C "$top" --exclude=./.git --exclude='./build*' --exclude='./client/build*' \
		--exclude='*.o' --exclude='*.so' --exclude='*.d' --exclude=./debian/tmp -cf - . | tar -C "$src" -xf -
fi
echo "== dpkg-buildpackage -us -uc -b ($version)"
build() { (cd "$src" && dpkg-checkbuilddeps && dpkg-buildpackage -us -uc -b -j2); }
check "dpkg-buildpackage" build
changes=$work/build/lockext_${version}_$(dpkg --print-architecture).changes
if [ ! -f "$changes" ]; then
	fail "no $changes: not installing anything"
	finish
fi
cd "$work/build" || finish
debs=(./*.deb)
echo "   ${debs[*]#./}"

# ---- lintian: errors fail, the rest is reported ---------------------------------------
lintian_run() {
	runuser -u postgres -- lintian --pedantic --display-info --display-experimental "$changes" >"$work/log/lintian.tags" 2>&1
	cat "$work/log/lintian.tags"
	! grep -q '^E: ' "$work/log/lintian.tags"
}
check "lintian (no E: tags)" lintian_run
echo "   lintian: $(grep -c '^E: ' "$work/log/lintian.tags") E, $(grep -c '^W: ' "$work/log/lintian.tags") W," \
	"$(grep -c '^I: ' "$work/log/lintian.tags") I, $(grep -c '^P: ' "$work/log/lintian.tags") P, $(grep -c '^X: ' "$work/log/lintian.tags") X"
grep -E '^[EWIPX]: ' "$work/log/lintian.tags" | sed 's/^/   /'

# ---- remove what a previous `make install` or an earlier run left ---------------------
pkgs=(postgresql-15-lockext liblockext-client2 liblockext-client-dev lockext-tools)
pkglibdir=$("$PG_CONFIG" --pkglibdir)
extdir=$("$PG_CONFIG" --sharedir)/extension
remove_old() {
	local p f installed=()
	for p in "${pkgs[@]}" "${pkgs[@]/%/-dbgsym}"; do
		dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' && installed+=("$p")
	done
	if [ ${#installed[@]} -gt 0 ]; then
		echo "removing packages: ${installed[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get remove -y "${installed[@]}" || return 1
	fi
	for f in "$pkglibdir"/lockext.so "$pkglibdir"/bitcode/lockext "$pkglibdir"/bitcode/lockext.index.bc \
		"$extdir"/lockext.control "$extdir"/lockext--*.sql \
		/usr/local/lib/liblockext-client.so* /usr/local/lib/pkgconfig/lockext-client.pc \
		/usr/local/lib/cmake/lockext-client /usr/local/include/lockext /usr/local/bin/lockext-run \
		/usr/local/share/man/man1/lockext-run.1; do
		[ -e "$f" ] || [ -L "$f" ] || continue
		if dpkg -S "$f" >/dev/null 2>&1; then
			echo "not removing $f: a package owns it"
			continue
		fi
		echo "removing $f"
		rm -rf "$f" || return 1
	done
	ldconfig
}
check "remove a previous make install" remove_old

# ---- install ------------------------------------------------------------------------
install_debs() { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${debs[@]}"; }
check "apt-get install ./*.deb" install_debs

# ---- the files where Debian expects them -------------------------------------------
ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
# has PACKAGE PATH...: dpkg -L PACKAGE lists every PATH, and each exists
has() {
	local p=$1 f list
	shift
	list=$(dpkg -L "$p") || return 1
	for f in "$@"; do
		grep -qxF "$f" <<<"$list" || { echo "$p does not ship $f"; return 1; }
		[ -e "$f" ] || { echo "$f is missing"; return 1; }
	done
	echo "$list"
}
check "postgresql-15-lockext files" has postgresql-15-lockext "$pkglibdir/lockext.so" \
	"$extdir/lockext.control" "$extdir/lockext--1.0.sql" "$extdir/lockext--1.1.sql" \
	"$extdir/lockext--1.0--1.1.sql" /usr/share/doc/postgresql-15-lockext/copyright
check "liblockext-client2 files" has liblockext-client2 "/usr/lib/$ma/liblockext-client.so.2" \
	"/usr/lib/$ma/liblockext-client.so.1.1.0"
check "liblockext-client-dev files" has liblockext-client-dev /usr/include/lockext/locking_plugin.hpp \
	/usr/include/lockext/pg_locking_plugin.hpp "/usr/lib/$ma/liblockext-client.so" \
	"/usr/lib/$ma/pkgconfig/lockext-client.pc" "/usr/lib/$ma/cmake/lockext-client/lockext-client-config.cmake"
check "lockext-tools files" has lockext-tools /usr/bin/lockext-run /usr/share/man/man1/lockext-run.1.gz
soname() { readelf -d "/usr/lib/$ma/liblockext-client.so.2" | grep 'SONAME.*\[liblockext-client\.so\.2\]'; }
check "SONAME liblockext-client.so.2" soname
# no test-only extension in a package, nothing in /usr/local, no RPATH in lockext-run
clean_install() {
	! dpkg -L "${pkgs[@]}" | grep lockext_test || return 1
	! ls -d /usr/local/lib/liblockext-client* /usr/local/bin/lockext-run /usr/local/include/lockext 2>/dev/null || return 1
	! readelf -d /usr/bin/lockext-run | grep -E 'RPATH|RUNPATH'
}
check "no lockext_test, /usr/local or RPATH" clean_install

# ---- pg_regress against the installed extension --------------------------------------
copy=$work/src
mkdir -p "$copy"
tar -C "$src" --exclude=./client --exclude=./debian -cf - . | tar -C "$copy" -xf -
chown -R postgres:postgres "$copy"
regress() {
	if [ -d "$copy/test/lockext_test" ]; then
		make -C "$copy/test/lockext_test" PG_CONFIG="$PG_CONFIG" install || return 1
	fi
	as_postgres make -C "$copy" PG_CONFIG="$PG_CONFIG" installcheck ISOLATION= TAP_TESTS= \
		EXTRA_REGRESS_OPTS="--temp-instance=$copy/tmp_instance"
}
regress >"$work/log/regress.log" 2>&1
rc=$?
p=$(grep -cE '\.\.\. ok|^ok ' "$work/log/regress.log")
f=$(grep -cE '\.\.\. FAILED|^not ok ' "$work/log/regress.log")
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
passed=$((passed + p))
failed=$((failed + f))
echo "regress (installed package): $p passed, $f failed"
if [ "$rc" -ne 0 ]; then
	tail -n 40 "$work/log/regress.log"
	head -n 100 "$copy/regression.diffs" 2>/dev/null
fi

# ---- consumers, against a server with the packaged extension -------------------------
pg_cluster_start "$work/pg" >"$work/log/cluster.log" 2>&1 &&
	"$PG_BIN/psql" "$PG_DSN" -v ON_ERROR_STOP=1 -qc 'CREATE EXTENSION lockext' >>"$work/log/cluster.log" 2>&1
cluster_rc=$?
[ "$cluster_rc" -eq 0 ] || { fail "server with the packaged extension"; tail -n 20 "$work/log/cluster.log"; }
dsn=${PG_DSN:-}
app_src=$src/client/test/pkgconfig_app/main.cpp
# packaged_lib PROGRAM: it loads the packaged library (/lib is /usr/lib on Debian 12)
packaged_lib() {
	local out
	out=$(ldd "$1") || return 1
	grep -E "liblockext-client\.so\.2 => (/usr)?/lib/$ma/liblockext-client\.so\.2 " <<<"$out" && return 0
	echo "$out"
	return 1
}
consumer_pkgconfig() {
	local d=$work/app-pc flags
	mkdir -p "$d" && cp "$app_src" "$d/" || return 1
	flags=$(pkg-config --cflags --libs lockext-client) || return 1
	echo "pkg-config: $flags"
	# the .pc leaves the standard to the consumer (C++23 or newer)
	[[ " $flags " != *" -std="* ]] || { echo "the .pc forces a -std flag"; return 1; }
	(cd "$d" && g++ -std=c++23 -Wall -Wextra -Werror main.cpp $flags -o app) || return 1
	packaged_lib "$d/app" || return 1
	[ "$cluster_rc" -eq 0 ] || return 1
	"$d/app" "$dsn"
}
check "consumer built with pkg-config" consumer_pkgconfig
consumer_cmake() {
	local d=$work/app-cmake
	mkdir -p "$d" && cp "$app_src" "$d/" || return 1
	cat >"$d/CMakeLists.txt" <<-'EOF'
		cmake_minimum_required(VERSION 3.22)
		project(lockext_consumer LANGUAGES CXX)
		find_package(lockext-client 1.1 REQUIRED)
		add_executable(app main.cpp)
		# lockext::client brings the include directory and C++23 (a compile feature)
		target_link_libraries(app PRIVATE lockext::client)
		target_compile_options(app PRIVATE -Wall -Wextra -Werror)
	EOF
	cmake -S "$d" -B "$d/build" && cmake --build "$d/build" --verbose || return 1
	packaged_lib "$d/build/app" || return 1
	[ "$cluster_rc" -eq 0 ] || return 1
	"$d/build/app" "$dsn"
}
check "consumer built with CMake find_package(lockext-client)" consumer_cmake
tool() {
	local out
	out=$(lockext-run --version) || return 1
	echo "$out"
	[ "$out" = "lockext-run (lockext client) $upstream" ] || { echo "expected version $upstream"; return 1; }
	[ "$cluster_rc" -eq 0 ] || return 1
	out=$(lockext-run -d "$dsn" -k test-packages -t 10s -- sh -c 'echo "fence $LOCKEXT_FENCE"') || return 1
	echo "$out"
	[[ $out == "fence "[0-9]* ]]
}
check "lockext-run --version, and a command under a lease" tool
manpage() {
	local warnings
	warnings=$(MANWIDTH=80 man --warnings -l /usr/share/man/man1/lockext-run.1.gz 2>&1 >/dev/null)
	[ -z "$warnings" ] || { echo "$warnings"; return 1; }
	man -w lockext-run
}
check "man lockext-run" manpage
pg_cluster_stop >/dev/null 2>&1 || true

finish
