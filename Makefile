# lockext: lease-based distributed locks in PostgreSQL shared memory (PGXS)
EXTENSION  = lockext
MODULE_big = lockext
# start-up orchestration, then the modules (each header beside its source),
# then what PostgreSQL calls by name
OBJS       = src/lockext.o src/gucs.o src/shmem.o src/clock.o src/durable.o src/fence.o \
             src/grace.o src/lock_table.o src/wait_queue.o src/persist.o src/replication.o src/worker.o \
             src/sql/sql_args.o src/sql/sql_api.o src/sql/handle_scan.o src/sql/admin_views.o \
             src/sql/test_hooks.o
# 1.0 is released and stays as it is; 1.1 adds objects (lockext--1.0--1.1.sql)
DATA       = lockext--1.0.sql lockext--1.1.sql lockext--1.0--1.1.sql
PGFILEDESC = "lockext - lease-based locks in shared memory"

# pg_regress suites (sql/, expected/), each on its own temporary instance
REGRESS        = api cas fence_order badinput capacity scope security txn views encoding gucs admin_1_1 \
                 handle_scan wait \
                 fence_limit
REGRESS_OPTS   = --temp-config=$(srcdir)/test/lockext_test.conf --load-extension=lockext \
                 --load-extension=lockext_test
# isolation specs, generated from test/isolation/prelude.spec + specs/*.spec.in
include test/isolation/isolation.mk
# the lockext_test_* hooks: a test-only extension, installed by installcheck (never packaged)
include test/lockext_test/lockext_test.mk
TAP_TESTS      = 1
PROVE_TESTS    = test/t/*.pl
EXTRA_CLEAN    = tmp_check tmp_check_iso output_iso results regression.diffs regression.out \
                 $(OBJS:.o=.d)

# the scripts pass tools/lib.sh's PG_CONFIG; by hand, any PostgreSQL 15 pg_config
PG_CONFIG ?= pg_config

# The LLVM bitcode step would compile the C++ with clang and none of our
# flags; lockext gains nothing from JIT inlining, so it is off.
override with_llvm = no

PG_CPPFLAGS = -I$(srcdir)/src -isystem $(shell $(PG_CONFIG) --includedir-server)
# -fno-semantic-interposition: calls inside a module may be inlined although
# the shared object exports the functions (nobody interposes them)
# warnings are errors in the project's builds; a distribution build with a newer
# compiler may turn that off (debian/rules sets LOCKEXT_WERROR to empty)
LOCKEXT_WERROR ?= -Werror
PG_CXXFLAGS = -std=c++20 -Wall -Wextra $(LOCKEXT_WERROR) -Wno-register -fno-semantic-interposition -MMD -MP \
              $(LOCKEXT_EXTRA_CXXFLAGS)
SHLIB_LINK  = -lstdc++ $(LOCKEXT_EXTRA_LDFLAGS)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The C++ client library (client/, CMake) is built and installed with the
# extension: headers under <prefix>/include/lockext/, liblockext-client.so,
# lockext-client.pc, its CMake package and lockext-run.
#   CLIENT_PREFIX       install prefix (/usr/local)
#   CLIENT_LIBDIR       library directory, relative to the prefix or absolute
#                       (default: GNUInstallDirs' choice, lib under /usr/local)
#   CLIENT_CMAKE_FLAGS  more cmake options (CI: -DLOCKEXT_CLIENT_WERROR=ON)
#   DESTDIR             staging directory, as for the extension
#   LOCKEXT_CLIENT=no   build and install the extension only (debian/rules builds
#                       the client once with CMake itself, not per PostgreSQL version)
CLIENT_BUILD   ?= build/client
CLIENT_PREFIX  ?= /usr/local
CLIENT_LIBDIR  ?=
LOCKEXT_CLIENT ?= yes
ifneq ($(LOCKEXT_CLIENT),no)
all: client
install: install-client
endif
client:
	cmake -S $(srcdir)/client -B $(CLIENT_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DCMAKE_INSTALL_PREFIX=$(CLIENT_PREFIX) \
		$(if $(CLIENT_LIBDIR),-DCMAKE_INSTALL_LIBDIR=$(CLIENT_LIBDIR)) $(CLIENT_CMAKE_FLAGS) >/dev/null
	cmake --build $(CLIENT_BUILD) -j2
install-client: client
	DESTDIR='$(DESTDIR)' cmake --install $(CLIENT_BUILD)
	$(if $(DESTDIR),,-ldconfig 2>/dev/null)
clean: clean-client
clean-client:
	rm -rf $(CLIENT_BUILD)
.PHONY: client install-client clean-client

# header dependencies, per object (-MMD)
-include $(OBJS:.o=.d)
