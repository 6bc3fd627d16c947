# lockext: lease-based distributed locks in PostgreSQL shared memory (PGXS)
EXTENSION  = lockext
EXTVERSION = 1.0
MODULE_big = lockext
OBJS       = src/lockext.o src/shmem.o src/lock_table.o src/sql_api.o src/admin_views.o \
             src/test_hooks.o src/fence.o src/persist.o \
             $(patsubst %.cpp,%.o,$(wildcard src/core/*.cpp))
DATA       = $(EXTENSION)--$(EXTVERSION).sql
PGFILEDESC = "lockext - lease-based locks in shared memory"

# pg_regress suites (sql/, expected/), each on its own temporary instance
REGRESS        = api cas fence_order badinput capacity scope security txn views encoding gucs fence_limit
REGRESS_OPTS   = --temp-config=$(srcdir)/test/lockext_test.conf --load-extension=lockext
ISOLATION      = contend expiry renew_vs_expiry renew_vs_release release_vs_reacquire \
                 foreign_id three_way capacity_race
ISOLATION_OPTS = --inputdir=$(srcdir)/test/isolation \
                 --temp-config=$(srcdir)/test/lockext_test.conf
TAP_TESTS      = 1
PROVE_TESTS    = test/t/*.pl
EXTRA_CLEAN    = tmp_check tmp_check_iso output_iso results regression.diffs regression.out

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config

# The LLVM bitcode step would compile the C++ with clang and none of our
# flags; lockext gains nothing from JIT inlining, so it is off.
override with_llvm = no

PG_CPPFLAGS = -I$(srcdir)/include -isystem $(shell $(PG_CONFIG) --includedir-server)
PG_CXXFLAGS = -std=c++20 -Wall -Wextra -Werror -Wno-register $(LOCKEXT_EXTRA_CXXFLAGS)
SHLIB_LINK  = -lstdc++ $(LOCKEXT_EXTRA_LDFLAGS)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The C++ client library (client/, CMake) is built and installed with the
# extension: headers under <prefix>/include/lockext/, liblockext-client.so
# and lockext-client.pc (prefix /usr/local unless CLIENT_PREFIX is set).
CLIENT_BUILD  ?= build/client
CLIENT_PREFIX ?= /usr/local
all: client
install: install-client
client:
	cmake -S $(srcdir)/client -B $(CLIENT_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DCMAKE_INSTALL_PREFIX=$(CLIENT_PREFIX) >/dev/null
	cmake --build $(CLIENT_BUILD) -j2
install-client: client
	cmake --install $(CLIENT_BUILD)
	-ldconfig 2>/dev/null
clean: clean-client
clean-client:
	rm -rf $(CLIENT_BUILD)
.PHONY: client install-client clean-client

# PGXS does not track header dependencies; every object depends on every header.
$(OBJS): $(wildcard $(srcdir)/include/lockext/*.h $(srcdir)/include/lockext/*.hpp $(srcdir)/include/lockext/core/*.hpp)
