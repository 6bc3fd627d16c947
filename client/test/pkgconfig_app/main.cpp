/*
 * main.cpp — a tiny application built OUTSIDE the source tree against the INSTALLED
 * client library with nothing but `pkg-config --cflags --libs lockext-client`
 * (client/test/run.sh does the build). It exercises both backends once.
 *
 *     app "<conninfo>"
 */
#include <lockext/lease_keeper.hpp>
#include <lockext/memory_locking_plugin.hpp>
#include <lockext/pg_locking_plugin.hpp>

#include <cstdio>
#include <memory>
#include <string>
#include <unistd.h>

static bool
exercise(lockext::LockingPlugin &plugin, const std::string &key)
{
	auto h = plugin.try_lock(key, 5000);
	if (!h || !h->has_value())
	{
		std::fprintf(stderr, "%s: try_lock: %s\n", std::string(plugin.name()).c_str(),
					 h ? "contention on a fresh key" : h.error().c_str());
		return false;
	}
	auto renewed = plugin.renew(**h);
	lockext::LeaseKeeper keeper(plugin, **h);
	auto released = keeper.release();
	auto cleaned = plugin.cleanup();
	if (!renewed || !released || !cleaned)
	{
		std::fprintf(stderr, "%s: renew/release/cleanup failed\n",
					 std::string(plugin.name()).c_str());
		return false;
	}
	std::printf("%s: ok (fence %lld)\n", std::string(plugin.name()).c_str(),
				static_cast<long long>((*h)->fence));
	return true;
}

int
main(int argc, char **argv)
{
	const std::string key = "pkgconfig-app-" + std::to_string(::getpid());
	lockext::MemoryLockingPlugin memory;
	bool ok = exercise(memory, key);
	if (argc > 1)
	{
		lockext::PgLockingPlugin pg(argv[1]);
		ok = exercise(pg, key) && ok;
	}
	return ok ? 0 : 1;
}
