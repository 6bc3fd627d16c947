/*
 * nightly_report.cpp
 *     Example: run a scheduled job once across many hosts. Every host runs this program
 *     at the same time; only the one that gets the lease runs the job, renewing the
 *     lease at a third of its TTL while the job runs, and stopping the job if the lease
 *     is lost. The fence goes with every write the job makes, so a storage layer can
 *     reject writes from a holder whose lease has already passed to someone else.
 *
 *     nightly_report "<conninfo>" [key] [job_ms]
 *
 * Exit status: 0 = job done or skipped (another host holds the lease), 2 = backend
 * error, 3 = the lease was lost while the job ran.
 */
#include <lockext/pg_locking_plugin.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
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
    const lockext::LockHandle lease = **acquired;

    // Keeper: renew at ttl/3 until told to stop; flag the loss at once.
    std::atomic<bool> lost{false};
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
    std::thread keeper([&] {
        std::unique_lock lock(mutex);
        while (!cv.wait_for(lock, std::chrono::milliseconds(ttl_ms / 3), [&] { return done; }))
        {
            if (auto renewed = locks.renew(lease); !renewed)
            {
                std::fprintf(stderr, "lease lost: %s\n", renewed.error().c_str());
                lost = true;
                return;
            }
        }
    });

    // The job: check the lease between units of work; pass the fence to each write.
    const auto end = std::chrono::steady_clock::now() + job;
    while (std::chrono::steady_clock::now() < end && !lost)
        std::this_thread::sleep_for(20ms); // write_report_chunk(lease.fence)

    {
        std::lock_guard lock(mutex);
        done = true;
    }
    cv.notify_one();
    keeper.join();
    if (lost)
        return 3;
    if (auto released = locks.release(lease); !released)
        std::fprintf(stderr, "warning: %s (the lease expires on its own)\n",
                     released.error().c_str());
    std::printf("report done under fence %lld\n", static_cast<long long>(lease.fence));
    return 0;
}
