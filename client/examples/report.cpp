// g++ -std=c++23 report.cpp $(pkg-config --cflags --libs lockext-client)
#include <lockext/pg_locking_plugin.hpp>
#include <lockext/scoped_lease.hpp>

#include <cstdio>

static int chunks = 3;
static bool more_work() { return chunks-- > 0; }           // your job, in small steps
static void write_chunk(std::int64_t fence) { (void) fence; } // storage rejects older fences

int main()
{
    lockext::PgLockingPlugin locks("host=db1,db2 dbname=app target_session_attrs=read-write");
    // Renewed every ttl/3 in the background; kept at least 4 min from acquisition even if
    // the job ends sooner, so hosts whose cron starts a little later see contention.
    lockext::ScopedLeaseOptions options;
    options.hold_at_least = std::chrono::minutes(4); // <= lockext.max_ttl_ms: one renew
    auto lease = lockext::ScopedLease::acquire(locks, "nightly-report", 30000, options);
    if (!lease)
    {
        std::fprintf(stderr, "lock: %s\n", lease.error().message.c_str()); // with SQLSTATE
        return lease.error().retryable() ? 75 : 69;
    }
    if (!*lease)
        return 0;                             // contention: another instance runs the report
    while (more_work() && !(*lease)->lost())  // lost() turns true the moment it is lost
        write_chunk((*lease)->handle().fence);
    return (*lease)->lost() ? 3 : 0;          // the destructor releases (or holds) the lease
}
