/*
 * advisory_libpq.cpp
 *     The floor the client library must beat: PostgreSQL advisory locks driven by raw
 *     libpq, the same cycle shape as client_bench (try, then unlock if granted).
 *
 *     advisory_libpq <threads> <seconds> <conninfo> [keys=100000] [hot=0]
 *
 * One connection per thread, opened before the clock starts; two named prepared
 * statements per connection:
 *     SELECT pg_try_advisory_lock(hashtextextended($1::text, 0))
 *     SELECT pg_advisory_unlock(hashtextextended($1::text, 0))
 * Each cycle draws "k" + uniform(1..keys) (or the one key "hot" when hot=1), runs the
 * first, and the second if the lock was granted (blocking PQexecPrepared, text results:
 * the cheapest thing a careful libpq user would write). Prints the driver.hpp line:
 *     cycles=<n> grants=<n> errors=<n> seconds=<s> ops_per_s=<x> avg_latency_us=<x>
 * and exits 1 if any call failed.
 *
 * Build: g++ -std=c++23 -O2 bench/advisory_libpq.cpp $(pkg-config --cflags --libs libpq) -pthread
 */
#include <libpq-fe.h>

#include "driver.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

struct ConnCloser {
    void operator()(PGconn *conn) const noexcept { PQfinish(conn); }
};
using Conn = std::unique_ptr<PGconn, ConnCloser>;

/* Runs a statement that returns one boolean; false with a message on any failure. */
bool
exec_bool(PGconn *conn, const char *name, const char *key, bool &value, long &errors)
{
    PGresult *res = PQexecPrepared(conn, name, 1, &key, nullptr, nullptr, 0);
    const bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) == 1;
    if (ok)
        value = PQgetvalue(res, 0, 0)[0] == 't';
    else if (++errors <= 3)
        std::fprintf(stderr, "%s: %s", name, PQerrorMessage(conn));
    PQclear(res);
    return ok;
}

bool
prepare(PGconn *conn, const char *name, const char *sql)
{
    PGresult *res = PQprepare(conn, name, sql, 1, nullptr);
    const bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        std::fprintf(stderr, "prepare %s: %s", name, PQerrorMessage(conn));
    PQclear(res);
    return ok;
}

} // namespace

int
main(int argc, char **argv)
{
    if (argc < 4)
    {
        std::fprintf(stderr, "usage: %s <threads> <seconds> <conninfo> [keys=100000] [hot=0]\n", argv[0]);
        return 2;
    }
    const int threads = std::atoi(argv[1]);
    const double seconds = std::atof(argv[2]);
    const std::string conninfo = argv[3];
    const long keys = argc > 4 ? std::atol(argv[4]) : 100000;
    const bool hot = argc > 5 && std::atoi(argv[5]) != 0;
    if (threads < 1 || seconds <= 0 || keys < 1)
    {
        std::fprintf(stderr, "%s: threads, seconds and keys must be positive\n", argv[0]);
        return 2;
    }

    /* Connect and prepare before the clock starts (pgbench connects first too). */
    std::vector<Conn> conns;
    for (int t = 0; t < threads; ++t)
    {
        Conn conn(PQconnectdb(conninfo.c_str()));
        if (PQstatus(conn.get()) != CONNECTION_OK)
        {
            std::fprintf(stderr, "connect: %s", PQerrorMessage(conn.get()));
            return 1;
        }
        if (!prepare(conn.get(), "try", "SELECT pg_try_advisory_lock(hashtextextended($1::text, 0))") ||
            !prepare(conn.get(), "unlock", "SELECT pg_advisory_unlock(hashtextextended($1::text, 0))"))
            return 1;
        conns.push_back(std::move(conn));
    }

    return bench::run_timed(threads, seconds, [&](int t, bench::Clock::time_point stop) {
        PGconn *conn = conns[static_cast<std::size_t>(t)].get();
        std::mt19937_64 rng(std::random_device{}() ^ (static_cast<std::uint64_t>(t) << 32));
        std::uniform_int_distribution<long> pick(1, keys);
        bench::Counts n;
        std::string key;
        while (bench::Clock::now() < stop)
        {
            key = hot ? std::string("hot") : "k" + std::to_string(pick(rng));
            bool granted = false;
            ++n.cycles;
            if (!exec_bool(conn, "try", key.c_str(), granted, n.errors) || !granted)
                continue;
            ++n.grants;
            bool unlocked = false;
            if (exec_bool(conn, "unlock", key.c_str(), unlocked, n.errors) && !unlocked && ++n.errors <= 3)
                std::fprintf(stderr, "unlock: lock %s was not held\n", key.c_str());
        }
        return n;
    });
}
