/*
 * wait_bench.cpp
 *     Server-side waiting (spec §8) against polling, over raw libpq: hand-off latency,
 *     throughput of one contended key, and the server CPU of idle waiters.
 *
 *     wait_bench handoff    <waiters> <seconds> <conninfo> push|poll [hold_us=1000] [samples_file]
 *     wait_bench throughput <clients> <seconds> <conninfo> push|poll [hold_us=200]
 *     wait_bench idle       <waiters> <seconds> <conninfo> [kinds=push,poll,none]
 *
 * One connection (and so one server backend) per thread, opened and prepared before the
 * clock starts; blocking PQexecPrepared, text results. Statements:
 *     try   SELECT lock_id::text FROM try_lock($1::text, $2::bigint)
 *     tryw  SELECT lock_id::text FROM try_lock($1::text, $2::bigint, $3::bigint)   (push)
 *     rel   SELECT release($1::text, $2::uuid)
 * push = one tryw with a bound (retried if the bound passes); poll = what `lockext-run -w`
 * does today (client/tools/lockext_run.cpp, acquire()): try, and on contention sleep a
 * random time in [b/2, b] with b starting at 50 ms and doubling up to 1500 ms, then try
 * again. Every invocation uses a key of its own ("wb-<pid>-<mode>"), so a lease left by a
 * killed run cannot disturb the next one.
 *
 * handoff: <waiters> + 1 threads on one key. The holder holds it for hold_us, stamps
 *   t_release (steady_clock) into an atomic just before sending release, and releases.
 *   The waiter whose grant arrives stamps t_grant: one hand-off sample = t_grant -
 *   t_release. Then it is the holder. The thread that released does not compete again
 *   until another thread has been granted (otherwise a poller would re-take its own
 *   release while the others sleep); so every release has exactly <waiters> waiters.
 *   Prints
 *     mode=<m> waiters=<n> samples=<n> p50_us=<x> p99_us=<x> max_us=<x> mean_us=<x>
 *     attempts=<n> timeouts=<n> errors=<n> seconds=<s>
 *   (attempts = try_lock statements sent, timeouts = push waits whose bound passed) and,
 *   with samples_file, appends every sample (µs, one per line) to it.
 * throughput: <clients> threads on one key, each loops: take it (push or poll), hold it for
 *   hold_us, release. Prints
 *     mode=<m> clients=<n> grants=<n> grants_per_s=<x> attempts_per_s=<x> hold_us=<x>
 *     min_client=<n> max_client=<n> jain=<x> errors=<n> seconds=<s>
 *   (jain = Jain's fairness index of the per-client grants: 1 = all equal, 1/n = one
 *   client took everything).
 * idle: a holder connection takes "…-push" and "…-poll" for the whole run; <waiters>
 *   connections of each kind: push (one tryw on the push key with a bound longer than the
 *   run), poll (the polling loop on the poll key) and none (connected, idle). Once every
 *   push waiter shows wait_event_type 'Extension' in pg_stat_activity and the pollers have
 *   polled for 2 s (their backoff is at its 1500 ms cap after 1.55 s), the server backends'
 *   (pids from pg_backend_pid()) /proc/<pid>/stat utime+stime, /proc/<pid>/schedstat run
 *   time and /proc/<pid>/status context switches are read, again <seconds> later. One line
 *   per kind:
 *     kind=<k> waiters=<n> seconds=<s> cpu_ticks=<n> cpu_s_per_waiter_s=<x>
 *     sched_s_per_waiter_s=<x> wakeups_per_waiter_s=<x> waiting=<n>
 *   (waiting = push waiters seen waiting at the start). The driver must run on the
 *   server's host, as a user that may read the backends' /proc entries (root).
 * Exit status 1 if any statement failed or nothing was measured.
 *
 * Build: g++ -std=c++20 -O2 bench/wait_bench.cpp $(pkg-config --cflags --libs libpq) -pthread
 */
#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::microseconds;
using std::chrono::milliseconds;

constexpr long kTtlMs = 60000;         // lease TTL of every grant in handoff/throughput
constexpr long kPushWaitMs = 5000;     // bound of one push wait (retried when it passes)
constexpr double kWarm = 0.2;          // handoff/throughput: the first 20 % of the run is not recorded

struct ConnCloser {
    void operator()(PGconn *conn) const noexcept { PQfinish(conn); }
};
using Conn = std::unique_ptr<PGconn, ConnCloser>;

std::mutex log_mu;
std::atomic<long> logged{0};
template <class... A>
void
complain(const char *fmt, A... a)
{
    if (logged.fetch_add(1) >= 10)
        return;
    std::lock_guard g(log_mu);
    std::fprintf(stderr, fmt, a...);
}

bool
prepare(PGconn *conn, const char *name, const char *sql, int nparams)
{
    PGresult *res = PQprepare(conn, name, sql, nparams, nullptr);
    const bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        complain("prepare %s: %s", name, PQerrorMessage(conn));
    PQclear(res);
    return ok;
}

Conn
connect(const std::string &conninfo)
{
    Conn conn(PQconnectdb(conninfo.c_str()));
    if (PQstatus(conn.get()) != CONNECTION_OK)
    {
        complain("connect: %s", PQerrorMessage(conn.get()));
        return nullptr;
    }
    return conn;
}

/* A connection with the three statements (tryw only if push). */
Conn
open_prepared(const std::string &conninfo, bool push)
{
    Conn conn = connect(conninfo);
    if (!conn ||
        !prepare(conn.get(), "try", "SELECT lock_id::text FROM try_lock($1::text, $2::bigint)", 2) ||
        (push && !prepare(conn.get(), "tryw", "SELECT lock_id::text FROM try_lock($1::text, $2::bigint, $3::bigint)", 3)) ||
        !prepare(conn.get(), "rel", "SELECT release($1::text, $2::uuid)", 2))
        return nullptr;
    return conn;
}

/* One value of a one-row, one-column result; nullopt for SQL NULL; false on failure. */
bool
exec1(PGconn *conn, const char *stmt, std::initializer_list<const char *> params, std::optional<std::string> &value)
{
    std::vector<const char *> p(params);
    PGresult *res = PQexecPrepared(conn, stmt, static_cast<int>(p.size()), p.data(), nullptr, nullptr, 0);
    const bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) == 1;
    if (ok)
        value = PQgetisnull(res, 0, 0) ? std::nullopt : std::optional<std::string>(PQgetvalue(res, 0, 0));
    else
        complain("%s: %s", stmt, PQerrorMessage(conn));
    PQclear(res);
    return ok;
}

std::optional<std::string>
simple1(PGconn *conn, const std::string &sql)
{
    PGresult *res = PQexec(conn, sql.c_str());
    std::optional<std::string> v;
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) >= 1 && !PQgetisnull(res, 0, 0))
        v = PQgetvalue(res, 0, 0);
    else if (PQresultStatus(res) != PGRES_TUPLES_OK)
        complain("%s: %s", sql.c_str(), PQerrorMessage(conn));
    PQclear(res);
    return v;
}

struct Tally {
    long attempts = 0, timeouts = 0, errors = 0;
    Clock::time_point count_from{}; // attempts and timeouts before it are not counted
};

/* Takes the key, by one server-side wait after another (push) or by lockext-run's polling
 * loop (poll). Returns the lock_id, or nullopt when `stop` has passed (poll: checked
 * before every attempt after the first; push: after a wait whose bound passed) or on an
 * error (counted). */
std::optional<std::string>
acquire(PGconn *conn, bool push, const std::string &key, long wait_ms, Clock::time_point stop, std::mt19937_64 &rng,
        Tally &t, const std::atomic<bool> *quit = nullptr)
{
    const std::string ttl = std::to_string(kTtlMs), wait = std::to_string(wait_ms);
    milliseconds backoff{50};
    for (;;)
    {
        std::optional<std::string> lid;
        const bool counted = Clock::now() >= t.count_from;
        t.attempts += counted;
        const bool ok = push ? exec1(conn, "tryw", {key.c_str(), ttl.c_str(), wait.c_str()}, lid)
                             : exec1(conn, "try", {key.c_str(), ttl.c_str()}, lid);
        if (!ok)
        {
            ++t.errors;
            return std::nullopt;
        }
        if (lid)
            return lid;
        const auto now = Clock::now();
        if (push && counted)
            ++t.timeouts;
        if (now >= stop)
            return std::nullopt;
        if (push)
            continue;
        std::uniform_int_distribution<long long> jitter(backoff.count() / 2, backoff.count());
        const auto wake = std::min<Clock::time_point>(now + milliseconds(jitter(rng)), stop);
        if (!quit)
            std::this_thread::sleep_until(wake);
        else /* in steps, so that *quit ends the wait soon (the server sees no difference) */
            while (Clock::now() < wake && !quit->load())
                std::this_thread::sleep_until(std::min<Clock::time_point>(wake, Clock::now() + milliseconds(50)));
        if (Clock::now() >= stop || (quit && quit->load()))
            return std::nullopt;
        backoff = std::min(backoff * 2, milliseconds(1500));
    }
}

bool
release(PGconn *conn, const std::string &key, const std::string &lid, Tally &t)
{
    std::optional<std::string> r;
    if (!exec1(conn, "rel", {key.c_str(), lid.c_str()}, r))
    {
        ++t.errors;
        return false;
    }
    if (r != std::optional<std::string>("t"))
    {
        complain("release %s: not held (returned %s)\n", key.c_str(), r ? r->c_str() : "NULL");
        ++t.errors;
        return false;
    }
    return true;
}

std::vector<Conn>
open_all(int n, const std::string &conninfo, bool push)
{
    std::vector<Conn> conns;
    for (int i = 0; i < n; ++i)
    {
        Conn c = open_prepared(conninfo, push);
        if (!c)
            return {};
        conns.push_back(std::move(c));
    }
    return conns;
}

double
percentile(const std::vector<double> &sorted, double q)
{
    if (sorted.empty())
        return 0;
    /* nearest rank */
    std::size_t rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
    rank = std::clamp<std::size_t>(rank, 1, sorted.size());
    return sorted[rank - 1];
}

std::string
key_for(const char *what)
{
    return "wb-" + std::to_string(getpid()) + "-" + what;
}

/* ---- handoff ------------------------------------------------------------------------ */
int
handoff(int waiters, double seconds, const std::string &conninfo, bool push, long hold_us, const char *samples_file)
{
    const int threads = waiters + 1;
    std::vector<Conn> conns = open_all(threads, conninfo, push);
    if (conns.empty())
        return 1;
    const std::string key = key_for(push ? "handoff-push" : "handoff-poll");

    std::atomic<std::int64_t> t_release{0};   // ns since the clock's epoch of the last release
    std::atomic<long> releases{0};
    std::mutex mu;
    std::condition_variable cv;
    long grant_seq = 0;                        // under mu
    std::vector<std::vector<double>> samples(static_cast<std::size_t>(threads));
    std::vector<Tally> tallies(static_cast<std::size_t>(threads));

    const auto start = Clock::now();
    const auto stop = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    const auto from = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds * kWarm));
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            PGconn *conn = conns[static_cast<std::size_t>(t)].get();
            std::mt19937_64 rng(std::random_device{}() ^ (static_cast<std::uint64_t>(t) << 32));
            Tally &tally = tallies[static_cast<std::size_t>(t)];
            tally.count_from = from;
            auto &mine = samples[static_cast<std::size_t>(t)];
            long my_grant = -1; // the grant_seq of this thread's last grant
            while (Clock::now() < stop && tally.errors == 0)
            {
                if (my_grant >= 0)
                {
                    /* do not compete with the waiters for the lease just released */
                    std::unique_lock g(mu);
                    cv.wait_until(g, stop, [&] { return grant_seq != my_grant; });
                    if (Clock::now() >= stop)
                        break;
                }
                auto lid = acquire(conn, push, key, kPushWaitMs, stop, rng, tally);
                if (!lid)
                    continue;
                const auto t_grant = Clock::now();
                if (releases.load() > 0 && t_grant >= from && t_grant < stop)
                    mine.push_back(static_cast<double>(t_grant.time_since_epoch().count() - t_release.load()) / 1e3);
                {
                    std::lock_guard g(mu);
                    my_grant = ++grant_seq;
                }
                cv.notify_all();
                if (t_grant < stop)
                    std::this_thread::sleep_for(microseconds(hold_us));
                t_release.store(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
                releases.fetch_add(1);
                release(conn, key, *lid, tally);
            }
        });
    for (auto &th : pool)
        th.join();
    const double elapsed = std::chrono::duration<double>(stop - from).count();

    std::vector<double> all;
    Tally sum;
    for (int t = 0; t < threads; ++t)
    {
        all.insert(all.end(), samples[static_cast<std::size_t>(t)].begin(), samples[static_cast<std::size_t>(t)].end());
        sum.attempts += tallies[static_cast<std::size_t>(t)].attempts;
        sum.timeouts += tallies[static_cast<std::size_t>(t)].timeouts;
        sum.errors += tallies[static_cast<std::size_t>(t)].errors;
    }
    std::sort(all.begin(), all.end());
    double mean = 0;
    for (double x : all)
        mean += x;
    mean = all.empty() ? 0 : mean / static_cast<double>(all.size());
    if (samples_file)
    {
        std::FILE *f = std::fopen(samples_file, "a");
        if (!f)
        {
            std::perror(samples_file);
            return 1;
        }
        for (double x : all)
            std::fprintf(f, "%.1f\n", x);
        std::fclose(f);
    }
    std::printf("mode=%s waiters=%d samples=%zu p50_us=%.1f p99_us=%.1f max_us=%.1f mean_us=%.1f attempts=%ld "
                "timeouts=%ld errors=%ld seconds=%.3f\n",
                push ? "push" : "poll", waiters, all.size(), percentile(all, 0.50), percentile(all, 0.99),
                all.empty() ? 0.0 : all.back(), mean, sum.attempts, sum.timeouts, sum.errors, elapsed);
    return sum.errors == 0 && !all.empty() ? 0 : 1;
}

/* ---- throughput --------------------------------------------------------------------- */
int
throughput(int clients, double seconds, const std::string &conninfo, bool push, long hold_us)
{
    std::vector<Conn> conns = open_all(clients, conninfo, push);
    if (conns.empty())
        return 1;
    const std::string key = key_for(push ? "tput-push" : "tput-poll");
    std::vector<long> grants(static_cast<std::size_t>(clients), 0);
    std::vector<double> held_us(static_cast<std::size_t>(clients), 0);
    std::vector<Tally> tallies(static_cast<std::size_t>(clients));

    const auto start = Clock::now();
    const auto stop = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    const auto from = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds * kWarm));
    std::vector<std::thread> pool;
    for (int t = 0; t < clients; ++t)
        pool.emplace_back([&, t] {
            PGconn *conn = conns[static_cast<std::size_t>(t)].get();
            std::mt19937_64 rng(std::random_device{}() ^ (static_cast<std::uint64_t>(t) << 32));
            Tally &tally = tallies[static_cast<std::size_t>(t)];
            tally.count_from = from;
            while (Clock::now() < stop && tally.errors == 0)
            {
                auto lid = acquire(conn, push, key, kPushWaitMs, stop, rng, tally);
                if (!lid)
                    continue;
                const auto t_grant = Clock::now();
                if (t_grant >= from && t_grant < stop)
                {
                    ++grants[static_cast<std::size_t>(t)];
                    std::this_thread::sleep_for(microseconds(hold_us));
                    held_us[static_cast<std::size_t>(t)] += std::chrono::duration<double, std::micro>(Clock::now() - t_grant).count();
                }
                else if (t_grant < stop)
                    std::this_thread::sleep_for(microseconds(hold_us));
                release(conn, key, *lid, tally);
            }
        });
    for (auto &th : pool)
        th.join();
    const double elapsed = std::chrono::duration<double>(stop - from).count();
    long total = 0, attempts = 0, errors = 0, lo = grants.empty() ? 0 : grants[0], hi = 0;
    double sum = 0, sumsq = 0, held = 0;
    for (int t = 0; t < clients; ++t)
    {
        const long g = grants[static_cast<std::size_t>(t)];
        total += g;
        lo = std::min(lo, g);
        hi = std::max(hi, g);
        sum += static_cast<double>(g);
        sumsq += static_cast<double>(g) * static_cast<double>(g);
        held += held_us[static_cast<std::size_t>(t)];
        attempts += tallies[static_cast<std::size_t>(t)].attempts;
        errors += tallies[static_cast<std::size_t>(t)].errors;
    }
    std::printf("mode=%s clients=%d grants=%ld grants_per_s=%.1f attempts_per_s=%.1f hold_us=%.1f min_client=%ld "
                "max_client=%ld jain=%.3f errors=%ld seconds=%.3f\n",
                push ? "push" : "poll", clients, total, static_cast<double>(total) / elapsed,
                static_cast<double>(attempts) / elapsed, total > 0 ? held / static_cast<double>(total) : 0.0, lo, hi,
                sumsq > 0 ? sum * sum / (clients * sumsq) : 0.0, errors, elapsed);
    return errors == 0 && total > 0 ? 0 : 1;
}

/* ---- idle --------------------------------------------------------------------------- */
struct ProcSample {
    long long ticks = 0, sched_ns = 0, switches = 0;
    bool ok = false;
};

ProcSample
read_proc(int pid)
{
    ProcSample s;
    const std::string dir = "/proc/" + std::to_string(pid) + "/";
    std::ifstream st(dir + "stat");
    std::string line;
    if (!std::getline(st, line))
        return s;
    const auto rp = line.rfind(')');
    if (rp == std::string::npos)
        return s;
    std::istringstream in(line.substr(rp + 2));
    std::string f;
    long long utime = 0, stime = 0;
    for (int field = 3; in >> f; ++field) // field 3 is the state
    {
        if (field == 14)
            utime = std::atoll(f.c_str());
        else if (field == 15)
        {
            stime = std::atoll(f.c_str());
            break;
        }
    }
    s.ticks = utime + stime;
    std::ifstream ss(dir + "schedstat");
    ss >> s.sched_ns;
    std::ifstream status(dir + "status");
    while (std::getline(status, line))
        if (line.rfind("voluntary_ctxt_switches:", 0) == 0 || line.rfind("nonvoluntary_ctxt_switches:", 0) == 0)
            s.switches += std::atoll(line.substr(line.find(':') + 1).c_str());
    s.ok = true;
    return s;
}

int
idle(int waiters, double seconds, const std::string &conninfo, const std::string &kinds)
{
    const bool want_push = kinds.find("push") != std::string::npos;
    const bool want_poll = kinds.find("poll") != std::string::npos;
    const bool want_none = kinds.find("none") != std::string::npos;
    const std::string kpush = key_for("idle-push"), kpoll = key_for("idle-poll");
    const long hold_ms = static_cast<long>(seconds * 1000) + 120000;
    const long wait_ms = static_cast<long>(seconds * 1000) + 30000;

    Conn holder = open_prepared(conninfo, false);
    if (!holder)
        return 1;
    std::optional<std::string> lid_push, lid_poll;
    const std::string hold = std::to_string(hold_ms);
    Tally ht;
    if (!exec1(holder.get(), "try", {kpush.c_str(), hold.c_str()}, lid_push) || !lid_push ||
        !exec1(holder.get(), "try", {kpoll.c_str(), hold.c_str()}, lid_poll) || !lid_poll)
    {
        complain("idle: the holder could not take %s and %s (max_ttl_ms below %ld?)\n", kpush.c_str(), kpoll.c_str(),
                 hold_ms);
        return 1;
    }

    struct Kind {
        const char *name;
        bool on;
        std::vector<Conn> conns;
        std::vector<int> pids;
        std::vector<ProcSample> t0, t1;
    };
    Kind ks[3] = {{"push", want_push, {}, {}, {}, {}}, {"poll", want_poll, {}, {}, {}, {}}, {"none", want_none, {}, {}, {}, {}}};
    for (auto &k : ks)
    {
        if (!k.on)
            continue;
        k.conns = open_all(waiters, conninfo, std::strcmp(k.name, "push") == 0);
        if (k.conns.empty())
            return 1;
        for (auto &c : k.conns)
        {
            auto p = simple1(c.get(), "SELECT pg_backend_pid()");
            if (!p)
                return 1;
            k.pids.push_back(std::atoi(p->c_str()));
        }
    }

    const auto t_start = Clock::now();
    const auto poll_stop = t_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds + 20));
    std::atomic<bool> stop_poll{false};
    std::vector<Tally> tallies(static_cast<std::size_t>(2 * waiters));
    std::vector<std::thread> pool;
    if (ks[0].on)
        for (int i = 0; i < waiters; ++i)
            pool.emplace_back([&, i] {
                PGconn *conn = ks[0].conns[static_cast<std::size_t>(i)].get();
                Tally &t = tallies[static_cast<std::size_t>(i)];
                std::optional<std::string> lid;
                const std::string ttl = std::to_string(kTtlMs), w = std::to_string(wait_ms);
                if (!exec1(conn, "tryw", {kpush.c_str(), ttl.c_str(), w.c_str()}, lid))
                    ++t.errors;
                else if (lid)
                    release(conn, kpush, *lid, t); // the holder let go: pass it on
            });
    if (ks[1].on)
        for (int i = 0; i < waiters; ++i)
            pool.emplace_back([&, i] {
                PGconn *conn = ks[1].conns[static_cast<std::size_t>(i)].get();
                Tally &t = tallies[static_cast<std::size_t>(waiters + i)];
                std::mt19937_64 rng(std::random_device{}() ^ (static_cast<std::uint64_t>(i) << 32));
                /* lockext-run's loop until the main thread says stop (checked between sleeps) */
                auto lid = acquire(conn, false, kpoll, 0, poll_stop, rng, t, &stop_poll);
                if (lid)
                    release(conn, kpoll, *lid, t);
            });

    /* wait until every push waiter is waiting in the server */
    long waiting = 0;
    if (ks[0].on)
    {
        std::string pidlist;
        for (int p : ks[0].pids)
            pidlist += (pidlist.empty() ? "" : ",") + std::to_string(p);
        const std::string q = "SELECT count(*) FROM pg_stat_activity WHERE pid IN (" + pidlist +
                              ") AND wait_event_type = 'Extension'";
        const auto give_up = Clock::now() + std::chrono::seconds(15);
        while (Clock::now() < give_up)
        {
            auto n = simple1(holder.get(), q);
            waiting = n ? std::atol(n->c_str()) : 0;
            if (waiting >= waiters)
                break;
            std::this_thread::sleep_for(milliseconds(20));
        }
        if (waiting < waiters)
            complain("idle: only %ld of %d push waiters are waiting\n", waiting, waiters);
    }
    /* the pollers reach their 1500 ms cap 1.55 s after they start: measure from there on
     * (the cheapest polling can be); everybody else has long been idle by then */
    std::this_thread::sleep_until(std::max(Clock::now() + milliseconds(300), t_start + milliseconds(2000)));

    for (auto &k : ks)
        for (int p : k.pids)
            k.t0.push_back(read_proc(p));
    const auto m0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    for (auto &k : ks)
        for (int p : k.pids)
            k.t1.push_back(read_proc(p));
    const double elapsed = std::chrono::duration<double>(Clock::now() - m0).count();

    /* let everybody go: pollers stop, the push key is released (the waiters pass it on) */
    stop_poll.store(true);
    std::optional<std::string> r;
    const bool rel_ok = exec1(holder.get(), "rel", {kpush.c_str(), lid_push->c_str()}, r) &&
                        exec1(holder.get(), "rel", {kpoll.c_str(), lid_poll->c_str()}, r);
    for (auto &th : pool)
        th.join();

    long errors = rel_ok ? 0 : 1;
    for (auto &t : tallies)
        errors += t.errors;
    const long hz = sysconf(_SC_CLK_TCK);
    bool ok = errors == 0;
    for (auto &k : ks)
    {
        if (!k.on)
            continue;
        long long ticks = 0, ns = 0, sw = 0;
        for (std::size_t i = 0; i < k.pids.size(); ++i)
        {
            if (!k.t0[i].ok || !k.t1[i].ok)
            {
                complain("idle: cannot read /proc/%d (run on the server's host, as root)\n", k.pids[i]);
                ok = false;
                continue;
            }
            ticks += k.t1[i].ticks - k.t0[i].ticks;
            ns += k.t1[i].sched_ns - k.t0[i].sched_ns;
            sw += k.t1[i].switches - k.t0[i].switches;
        }
        const double ws = waiters * elapsed;
        std::printf("kind=%s waiters=%d seconds=%.3f cpu_ticks=%lld cpu_s_per_waiter_s=%.3g sched_s_per_waiter_s=%.3g "
                    "wakeups_per_waiter_s=%.3g waiting=%ld errors=%ld\n",
                    k.name, waiters, elapsed, ticks, static_cast<double>(ticks) / static_cast<double>(hz) / ws,
                    static_cast<double>(ns) / 1e9 / ws, static_cast<double>(sw) / ws,
                    std::strcmp(k.name, "push") == 0 ? waiting : 0L, errors);
    }
    if (ks[0].on && waiting < waiters)
        ok = false;
    return ok ? 0 : 1;
}

} // namespace

int
main(int argc, char **argv)
{
    if (argc < 5)
    {
        std::fprintf(stderr,
                     "usage: %s handoff <waiters> <seconds> <conninfo> push|poll [hold_us=1000] [samples_file]\n"
                     "       %s throughput <clients> <seconds> <conninfo> push|poll [hold_us=200]\n"
                     "       %s idle <waiters> <seconds> <conninfo> [kinds=push,poll,none]\n",
                     argv[0], argv[0], argv[0]);
        return 2;
    }
    const std::string mode = argv[1];
    const int n = std::atoi(argv[2]);
    const double seconds = std::atof(argv[3]);
    const std::string conninfo = argv[4];
    if (n < 1 || seconds <= 0)
    {
        std::fprintf(stderr, "%s: the count and the seconds must be positive\n", argv[0]);
        return 2;
    }
    if (mode == "idle")
        return idle(n, seconds, conninfo, argc > 5 ? argv[5] : "push,poll,none");
    if (argc < 6 || (std::strcmp(argv[5], "push") != 0 && std::strcmp(argv[5], "poll") != 0))
    {
        std::fprintf(stderr, "%s: %s needs push or poll\n", argv[0], mode.c_str());
        return 2;
    }
    const bool push = std::strcmp(argv[5], "push") == 0;
    if (mode == "handoff")
        return handoff(n, seconds, conninfo, push, argc > 6 ? std::atol(argv[6]) : 1000, argc > 7 ? argv[7] : nullptr);
    if (mode == "throughput")
        return throughput(n, seconds, conninfo, push, argc > 6 ? std::atol(argv[6]) : 200);
    std::fprintf(stderr, "%s: unknown mode %s\n", argv[0], mode.c_str());
    return 2;
}
