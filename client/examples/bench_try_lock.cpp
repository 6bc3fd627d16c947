/*
 * bench_try_lock.cpp
 *     Throughput of try_lock + release pairs through the pg backend.
 *
 *     bench_try_lock "<conninfo>" [threads=4] [seconds=3] [prepared=1]
 *
 * Each thread cycles over its own 16 keys, so there is no contention; one operation is
 * one try_lock plus one release (two round trips).
 */
#include <lockext/pg_locking_plugin.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
#include <string>
#include <thread>
#include <vector>

int
main(int argc, char **argv)
{
	if (argc < 2)
	{
		std::fprintf(stderr, "usage: %s <conninfo> [threads] [seconds] [prepared]\n", argv[0]);
		return 2;
	}
	const int threads = argc > 2 ? std::atoi(argv[2]) : 4;
	const int seconds = argc > 3 ? std::atoi(argv[3]) : 3;
	lockext::PgOptions options;
	options.pool_size = static_cast<std::size_t>(threads);
	options.prepared_statements = argc > 4 ? std::atoi(argv[4]) != 0 : true;
	lockext::PgLockingPlugin locks(argv[1], options);

	std::atomic<long> ops{0}, errors{0};
	const auto stop = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
	std::vector<std::thread> pool;
	for (int t = 0; t < threads; ++t)
		pool.emplace_back(
			[&, t]
			{
				const std::string prefix =
					"bench-" + std::to_string(::getpid()) + "-" + std::to_string(t) + "-";
				for (long i = 0; std::chrono::steady_clock::now() < stop; ++i)
				{
					auto h = locks.try_lock(prefix + std::to_string(i % 16), 10000);
					if (!h || !h->has_value() || !locks.release(**h))
					{
						++errors;
						continue;
					}
					++ops;
				}
			});
	for (auto &t : pool)
		t.join();
	std::printf("%d threads, %s statements: %.0f try_lock+release/s (%ld ok, %ld errors)\n",
				threads, options.prepared_statements ? "prepared" : "unnamed",
				static_cast<double>(ops.load()) / seconds, ops.load(), errors.load());
	return errors.load() == 0 ? 0 : 1;
}
