/*
 * client_bench.cpp
 *     Throughput of the lockext client library: try_lock + release cycles per second.
 *
 *     client_bench pg|pg-pipeline[=N]|memory <threads> <seconds> [conninfo] [keys=100000] [hot=0]
 *
 * Each thread loops until the deadline: pick a key uniformly from keys (or the one key
 * "hot" when hot=1), try_lock(key, 60000), and release the handle if granted. One cycle =
 * one attempt (one or two calls). The pg backend gets a pool of <threads> connections
 * with prepared statements, so each thread has a server backend of its own, as pgbench's
 * clients do. pg-pipeline: PgOptions::pipeline = true with N shared connections (default
 * PgOptions::pipeline_connections); its pool (<threads>, opened lazily) serves only what
 * cannot be pipelined (behind a transaction pooler the plugin falls back to it).
 * The pg modes first print "server_connections=<n>" on stderr. Then one line on stdout:
 *     cycles=<n> grants=<n> errors=<n> seconds=<s> ops_per_s=<x> avg_latency_us=<x>
 * and exits 1 if any call failed.
 */
#include <lockext/memory_locking_plugin.hpp>
#include <lockext/pg_locking_plugin.hpp>

#include "driver.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

int
main(int argc, char **argv)
{
    if (argc < 4)
    {
        std::fprintf(stderr, "usage: %s pg|pg-pipeline[=N]|memory <threads> <seconds> [conninfo] [keys] [hot]\n",
                     argv[0]);
        return 2;
    }
    const bool pipelined = std::strncmp(argv[1], "pg-pipeline", 11) == 0;
    const bool pg = pipelined || std::strcmp(argv[1], "pg") == 0;
    const int threads = std::atoi(argv[2]);
    const double seconds = std::atof(argv[3]);
    const std::string conninfo = argc > 4 ? argv[4] : "";
    const long keys = argc > 5 ? std::atol(argv[5]) : 100000;
    const bool hot = argc > 6 && std::atoi(argv[6]) != 0;

    std::unique_ptr<lockext::LockingPlugin> locks;
    if (pg)
    {
        lockext::PgOptions options;
        options.pool_size = static_cast<std::size_t>(threads);
        options.prepared_statements = true;
        if (pipelined)
        {
            options.pipeline = true; // the pool (opened lazily) serves only what cannot be pipelined
            if (argv[1][11] == '=')
                options.pipeline_connections = static_cast<std::size_t>(std::atol(argv[1] + 12));
        }
        std::fprintf(stderr, "server_connections=%zu\n",
                     pipelined ? std::max<std::size_t>(options.pipeline_connections, 1) : options.pool_size);
        locks = std::make_unique<lockext::PgLockingPlugin>(conninfo, options);
    }
    else
    {
        lockext::MemoryOptions options;
        options.max_locks = 1000000;
        locks = std::make_unique<lockext::MemoryLockingPlugin>(options);
    }

    /* Open every pooled connection before the clock starts (pgbench connects first too). */
    if (pg)
    {
        std::vector<std::thread> warm;
        for (int t = 0; t < threads; ++t)
            warm.emplace_back([&, t] {
                for (int i = 0; i < 20; ++i)
                {
                    auto h = locks->try_lock("warm-" + std::to_string(t) + "-" + std::to_string(i), 60000);
                    if (h && h->has_value())
                        (void) locks->release(**h);
                }
            });
        for (auto &t : warm)
            t.join();
    }

    const int rc = bench::run_timed(threads, seconds, [&](int t, bench::Clock::time_point stop) {
        std::mt19937_64 rng(std::random_device{}() ^ (static_cast<std::uint64_t>(t) << 32));
        std::uniform_int_distribution<long> pick(1, keys);
        bench::Counts n;
        std::string key;
        while (bench::Clock::now() < stop)
        {
            key = hot ? std::string("hot") : "k" + std::to_string(pick(rng));
            auto h = locks->try_lock(key, 60000);
            ++n.cycles;
            if (!h)
            {
                if (++n.errors <= 3)
                    std::fprintf(stderr, "try_lock: %s\n", h.error().c_str());
                continue;
            }
            if (!h->has_value())
                continue;
            ++n.grants;
            auto r = locks->release(std::move(**h));
            if (!r && ++n.errors <= 3)
                std::fprintf(stderr, "release: %s\n", r.error().c_str());
        }
        return n;
    });
    (void) locks->cleanup();
    return rc;
}
