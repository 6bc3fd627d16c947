/*
 * driver.hpp
 *     The timing harness shared by client_bench and redis_lock: run one closure per
 *     client thread until a deadline, sum what they counted, print the result line that
 *     run.sh parses:
 *         cycles=<n> grants=<n> errors=<n> seconds=<s> ops_per_s=<x> avg_latency_us=<x>
 */
#ifndef LOCKEXT_BENCH_DRIVER_HPP
#define LOCKEXT_BENCH_DRIVER_HPP

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

namespace bench {

struct Counts {
    long cycles = 0, grants = 0, errors = 0;
};

using Clock = std::chrono::steady_clock;

/* body(thread_index, deadline) -> Counts, called once per thread. Returns the exit code
 * (1 if any call failed). */
template <class Body>
int
run_timed(int threads, double seconds, Body body)
{
    std::atomic<long> cycles{0}, grants{0}, errors{0};
    const auto start = Clock::now();
    const auto stop = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            const Counts c = body(t, stop);
            cycles += c.cycles;
            grants += c.grants;
            errors += c.errors;
        });
    for (auto &t : pool)
        t.join();
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double ops = static_cast<double>(cycles.load()) / elapsed;
    std::printf("cycles=%ld grants=%ld errors=%ld seconds=%.3f ops_per_s=%.1f avg_latency_us=%.2f\n",
                cycles.load(), grants.load(), errors.load(), elapsed, ops,
                ops > 0 ? 1e6 * threads / ops : 0.0);
    return errors.load() == 0 ? 0 : 1;
}

} // namespace bench

#endif
