/*
 * nightly_report.cpp
 *     Example: run a scheduled job once across many hosts. Every host runs this program
 *     at the same time; only the one that gets the lease runs the job, a LeaseKeeper
 *     renews the lease at a third of its TTL while the job runs, and the job stops the
 *     moment the lease is lost. The fence goes with every write the job makes, so a storage layer
 * can reject writes from a holder whose lease has already passed to someone else.
 *
 *     nightly_report "<conninfo>" [key] [job_ms]
 *
 * Exit status: 0 = job done or skipped (another host holds the lease), 2 = backend
 * error, 3 = the lease was lost while the job ran.
 */
#include <lockext/lease_keeper.hpp>
#include <lockext/pg_locking_plugin.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

using namespace std::chrono_literals;

int
main(int argc, char **argv)
{
	if (argc < 2)
	{
		std::fprintf(stderr, "usage: %s <conninfo> [key] [job_ms]\n", argv[0]);
		return 2;
	}
	const std::string key = argc > 2 ? argv[2] : "nightly-report";
	const auto job = std::chrono::milliseconds(argc > 3 ? std::atoll(argv[3]) : 2000);
	const std::uint64_t ttl_ms = 900;

	lockext::PgLockingPlugin locks(argv[1]);
	const auto before = lockext::BootClock::now(); // the lease starts no earlier
	auto acquired = locks.try_lock(key, ttl_ms);
	if (!acquired)
	{
		std::fprintf(stderr, "error: %s\n", acquired.error().c_str());
		return 2;
	}
	if (!acquired->has_value())
	{
		std::printf("skipped: another instance holds '%s'\n", key.c_str());
		return 0;
	}

	// The keeper renews at ttl/3 in the background; lost() turns true the moment the
	// lease can no longer be trusted (renew refused, or no successful renew in time).
	lockext::LeaseKeeper lease(
		locks, **acquired,
		[](const std::string &why) { std::fprintf(stderr, "lease lost: %s\n", why.c_str()); }, {},
		before);

	// The job: check the lease between units of work; pass the fence to each write so
	// storage can reject a holder whose lease has passed to someone else.
	const auto end = std::chrono::steady_clock::now() + job;
	while (std::chrono::steady_clock::now() < end)
	{
		if (lease.lost())
			return 3;                      // stop at once: someone else may hold the lock now
		std::this_thread::sleep_for(20ms); // write_report_chunk(lease.handle().fence)
	}

	if (auto released = lease.release(); !released)
		std::fprintf(stderr, "warning: %s (the lease expires on its own)\n",
					 released.error().c_str());
	std::printf("report done under fence %lld\n", static_cast<long long>(lease.handle().fence));
	return 0;
}
