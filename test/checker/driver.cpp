/*
 * test/checker/driver.cpp
 *     History generator for the mutual-exclusion and fencing checker (testing.md §2.6).
 *
 * N threads share one lockext::PgLockingPlugin (the library's pool, one connection per
 * thread); --procs forks several such processes (run.sh starts them separately instead, so
 * it can SIGSTOP one). Each thread loops until --seconds have passed:
 *
 *     try_lock(key, ttl)  ->  granted: "work" for a random time, optionally renewing at
 *                             ttl/3 like the lease keeper (stop at the first failed renew),
 *                             then release
 *                         ->  contention / error: back off a little, try again
 *
 * --wait-pct of the threads (the first ones of each process) are waiting clients instead:
 * they ask with try_lock(key, ttl, wait_ms) over a libpq connection of their own (the
 * library has no server-side wait yet), one SQL statement per call, so a grant is handed
 * to them by a release, an expiry or a force_release while they wait. Their TTL is at least
 * half of --ttl-ms and wait_ms is 25..50 % of it, so the window the checker can prove
 * ([complete, invoke + ttl)) stays non-empty however long the wait took. A wait that
 * ends without a grant is logged as contention, like a plain try_lock's NULL; the grant
 * is logged as a try_lock with its lock_id and fence (plus "wait_ms"), and held, renewed
 * and released through the library like any other.
 *
 * The TTL of each try_lock is log-uniform in [--ttl-min-ms, --ttl-ms]; work takes a random
 * share of it, and --overrun-pct of the holders work 100..150 % of their TTL (clients that
 * overrun their lease). Every call
 * is logged as one JSON object per line when it completes, with CLOCK_MONOTONIC
 * nanoseconds taken just before the call (invoke_ns) and just after it (complete_ns):
 * the same clock the server measures expiry on, so histories of several processes on one
 * host are comparable. outcome is "ok" (granted / renewed / released), "fail" (definitely
 * not done: contention, "lock lost", an error raised before the request was sent or a
 * server error that rules the call out) or "info" (indeterminate: the request may have
 * been executed, e.g. the connection died after it was sent).
 *
 * --raw-pct of the threads (the last ones of each process) make every call, try_lock,
 * renew and release, over a libpq connection of their own instead of the library (the
 * library's SQL, one simple query each with SET LOCAL statement_timeout, so the server
 * cancels a call it cannot finish, e.g. a replicated grant whose confirmation does not
 * come: 57014). With --server-info 1, a thread's own connection asks the server who it is
 * when it connects (inet_server_port() and, on a primary, the timeline of its current WAL
 * file) and every call over it logs "server": "<port>/<timeline>", so a history shows
 * which leader of a failover served each call (test/ha). A broken connection is dropped
 * and the next call connects anew (multi-host conninfo: to whichever host is read-write
 * with target_session_attrs=read-write); a 25006 reply (read-only) drops it too.
 *
 * The log is written under a mutex and flushed when the process exits normally; the
 * driver always stops by itself, after --seconds or as soon as --stop-file exists (checked
 * every 50 ms; holders then release at once). Send SIGSTOP/SIGCONT to pause it, never
 * SIGKILL, or the tail of the history is lost.
 */
#include <lockext/pg_locking_plugin.hpp>

#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

struct Config {
    std::string conninfo = "host=127.0.0.1 dbname=postgres";
    std::string out = "-";
    std::string key_prefix = "checker";
    int proc = 0;
    int procs = 1;          /* fork this many driver processes, ids proc..proc+procs-1 */
    int threads = 4;
    int keys = 2;
    std::uint64_t ttl_ms = 2000;      /* longest TTL asked for */
    std::uint64_t ttl_min_ms = 0;     /* shortest (0 = ttl_ms); each try_lock picks one in
                                         between, log-uniformly (as many short as long) */
    int work_min_pct = 0;             /* work time, in % of the grant's TTL */
    int work_max_pct = 75;
    int overrun_pct = 10;   /* % of holds that work 100..150 % of the TTL */
    int renew_pct = 30;     /* % of holds that renew every ttl/3 while working */
    int wait_pct = 0;       /* % of the threads that take the lock with a server-side wait */
    int raw_pct = 0;        /* % of the threads that make every call over their own libpq connection */
    bool server_info = false; /* own connections log the server's port/timeline per call */
    std::string stop_file;  /* stop as soon as this file exists */
    int backoff_max_ms = 20;
    int error_sleep_ms = 100;
    double seconds = 15;
    bool prepared = true;
    int pool_size = 0;      /* 0 = threads */
    int statement_timeout_ms = 3000;
    int connect_timeout_s = 2;
    int acquire_timeout_ms = 3000;
    std::uint64_t seed = 0; /* 0 = from the clock */
};

std::int64_t
mono_ns()
{
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

/* The run's end: --seconds after the start, or earlier once --stop-file exists. */
std::atomic<std::int64_t> g_deadline{0};

std::int64_t
deadline()
{
    return g_deadline.load(std::memory_order_relaxed);
}

/* Sleeps until target, or until the deadline if that comes first (a stop file lowers it
 * while we sleep: naps of at most 50 ms). */
void
sleep_until_ns(std::int64_t target)
{
    for (;;) {
        const std::int64_t left = std::min(target, deadline()) - mono_ns();
        if (left <= 0)
            return;
        const std::int64_t nap = std::min<std::int64_t>(left, 50000000);
        timespec ts{static_cast<time_t>(nap / 1000000000), static_cast<long>(nap % 1000000000)};
        nanosleep(&ts, nullptr);
    }
}

std::string
json_string(std::string_view s)
{
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20 || c == 0x7f) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                out += buf;
            } else {
                out += static_cast<char>(c);
            }
        }
    }
    return out + "\"";
}

/*
 * "fail" only when the call certainly did not take effect; everything else is "info".
 * The checker draws no safety claim from either, so a misclassification only moves
 * counts between columns.
 */
const char *
classify_error(const std::string &e)
{
    static constexpr std::string_view definite[] = {
        "could not connect to server",   /* nothing was sent */
        "failed: connection failed: ",   /* broke before the request was sent */
        "no pool connection became free",
        "lock lost",                     /* renew: the server answered false */
        "the plugin was cleaned up",
        "[22", "[42", "[3F000]", "[25006]", "[53400]", "[55000]",
    };
    if (e.find("outcome unknown") != std::string::npos)
        return "info";
    for (auto d : definite)
        if (e.find(d) != std::string::npos)
            return "fail";
    return "info";
}

class Log {
public:
    explicit Log(const std::string &path)
    {
        m_file = path == "-" ? stdout : std::fopen(path.c_str(), "w");
        if (m_file == nullptr) {
            std::perror(path.c_str());
            std::exit(2);
        }
    }
    ~Log()
    {
        std::fflush(m_file);
        if (m_file != stdout)
            std::fclose(m_file);
    }
    void write(const std::string &line)
    {
        std::lock_guard lock(m_mutex);
        std::fputs(line.c_str(), m_file);
        std::fputc('\n', m_file);
    }

private:
    std::mutex m_mutex;
    std::FILE *m_file;
};

struct Op {
    const char *op = "";
    std::int64_t invoke_ns = 0;
    std::int64_t complete_ns = 0;
    const char *outcome = "ok";
    std::string key;
    std::uint64_t ttl_ms = 0;
    std::string lock_id;
    std::optional<std::int64_t> fence;
    bool contended = false;
    std::string error;
    std::int64_t wait_ms = -1;  /* try_lock(key, ttl, wait_ms); -1: a plain try_lock */
    std::string server;         /* "<port>/<timeline>" of the server it went to, if known */
};

Op
make_op(const char *name, std::string key, std::uint64_t ttl_ms,
        const lockext::LockHandle *handle = nullptr)
{
    Op op;
    op.op = name;
    op.key = std::move(key);
    op.ttl_ms = ttl_ms;
    if (handle != nullptr) {
        op.lock_id = handle->lock_id;
        op.fence = handle->fence;
    }
    return op;
}

struct Counters {
    std::atomic<long> ops{0}, grants{0}, contended{0}, errors{0};
};

class Worker {
public:
    Worker(const Config &cfg, lockext::PgLockingPlugin &plugin, Log &log, Counters &counters,
           int thread)
        : m_cfg(cfg), m_plugin(plugin), m_log(log), m_counters(counters), m_thread(thread),
          m_raw(thread >= cfg.threads - (cfg.threads * cfg.raw_pct + 99) / 100),
          m_rng(cfg.seed * 1000003 + static_cast<std::uint64_t>(cfg.proc) * 1009 +
                static_cast<std::uint64_t>(thread))
    {
    }

    ~Worker()
    {
        if (m_conn != nullptr)
            PQfinish(m_conn);
    }

    void run()
    {
        const bool waiting = m_thread < (m_cfg.threads * m_cfg.wait_pct + 99) / 100;
        while (mono_ns() < deadline()) {
            const std::string key =
                m_cfg.key_prefix + "-k" + std::to_string(uniform(0, m_cfg.keys - 1));
            std::uint64_t ttl_ms = pick_ttl();
            if (waiting)
                ttl_ms = std::max<std::uint64_t>(ttl_ms, m_cfg.ttl_ms / 2);
            Op op = make_op("try_lock", key, ttl_ms);
            if (waiting)
                op.wait_ms = static_cast<std::int64_t>(ttl_ms) * uniform(25, 50) / 100;
            op.invoke_ns = mono_ns();
            auto r = waiting  ? try_lock_wait(key, ttl_ms, op.wait_ms)
                     : m_raw ? try_lock_raw(key, ttl_ms)
                             : m_plugin.try_lock(key, ttl_ms);
            op.complete_ns = mono_ns();
            if (waiting || m_raw)
                op.server = m_server;
            if (!r) {
                fail_op(op, r.error());
                emit(op);
                pause_ms(uniform(m_cfg.error_sleep_ms / 2, m_cfg.error_sleep_ms));
                continue;
            }
            if (!r->has_value()) {
                op.outcome = "fail";
                op.contended = true;
                emit(op);
                pause_ms(uniform(0, m_cfg.backoff_max_ms));
                continue;
            }
            const lockext::LockHandle handle = **r;
            op.lock_id = handle.lock_id;
            op.fence = handle.fence;
            emit(op);
            hold(handle, op.invoke_ns);
        }
    }

private:
    /*
     * This thread's own connection (waiting and raw threads): connects if there is none
     * or the last one broke. With --server-info, asks who the server is (port, and on a
     * primary the timeline of its current WAL file: pg_walfile_name's first 8 hex digits).
     * Returns an error in the library's words ("<op> failed: could not connect to
     * server: ...") when it cannot connect.
     */
    lockext::Result<PGconn *> connection(const char *op)
    {
        if (m_conn != nullptr && PQstatus(m_conn) != CONNECTION_OK)
            drop_connection();
        if (m_conn == nullptr) {
            const std::string conninfo =
                m_cfg.conninfo + " connect_timeout=" + std::to_string(m_cfg.connect_timeout_s);
            m_conn = PQconnectdb(conninfo.c_str());
            if (PQstatus(m_conn) != CONNECTION_OK) {
                std::string e = std::string(op) + " failed: could not connect to server: " +
                                PQerrorMessage(m_conn);
                drop_connection();
                return std::unexpected(e);
            }
            if (m_cfg.server_info) {
                PGresult *res = PQexec(
                    m_conn, "SELECT inet_server_port(), CASE WHEN pg_is_in_recovery() THEN -1 ELSE "
                            "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END");
                if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
                    m_server = std::string(PQgetvalue(res, 0, 0)) + "/" + PQgetvalue(res, 0, 1);
                PQclear(res);
            }
        }
        return m_conn;
    }

    void drop_connection()
    {
        if (m_conn != nullptr)
            PQfinish(m_conn);
        m_conn = nullptr;
        m_server.clear();
    }

    /*
     * One simple query (statements separated by ';', the last one's result counts) on
     * this thread's own connection; PQexec, no prepared statement, so it also works
     * through PgBouncer's transaction pooling. Errors read like the library's: "<op>
     * failed: [SQLSTATE] message", "outcome unknown" once the request was sent and no
     * answer came back (the connection is then dropped, as after a 25006 reply: the next
     * call connects anew, to whichever host is read-write now).
     */
    lockext::Result<PGresult *> exec(const char *op, const std::string &sql)
    {
        auto conn = connection(op);
        if (!conn)
            return std::unexpected(conn.error());
        PGresult *res = PQexec(*conn, sql.c_str());
        if (PQresultStatus(res) == PGRES_TUPLES_OK)
            return res;
        const char *state = res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
        std::string msg = PQerrorMessage(*conn);
        while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' '))
            msg.pop_back();
        /* no SQLSTATE: the connection broke after the request was sent */
        std::string e = state != nullptr ? std::string(op) + " failed: [" + state + "] " + msg
                                         : std::string(op) + " failed: outcome unknown: " + msg;
        if (state == nullptr || std::strcmp(state, "25006") == 0 || std::strncmp(state, "57P", 3) == 0)
            drop_connection();
        PQclear(res);
        return std::unexpected(e);
    }

    /* A quoted literal for this thread's connection (connected by the caller). */
    std::string literal(const std::string &s)
    {
        char *lit = PQescapeLiteral(m_conn, s.c_str(), s.size());
        if (lit == nullptr)
            return "NULL";
        std::string out = lit;
        PQfreemem(lit);
        return out;
    }

    std::string timeout_prefix(std::int64_t extra_ms)
    {
        return "SET LOCAL statement_timeout = " + std::to_string(extra_ms + m_cfg.statement_timeout_ms) +
               "; ";
    }

    /* The handle in a "SELECT lock_id, fence, ttl_ms FROM try_lock(...)" result; no
     * handle for the row of NULLs (contention). */
    static lockext::Result<std::optional<lockext::LockHandle>>
    handle_from(PGresult *res, const std::string &key)
    {
        lockext::Result<std::optional<lockext::LockHandle>> out = std::optional<lockext::LockHandle>{};
        if (PQntuples(res) != 1 || PQnfields(res) != 3)
            out = std::unexpected(std::string("try_lock failed: [XX000] unexpected result shape"));
        else if (!PQgetisnull(res, 0, 0)) {
            lockext::LockHandle h;
            h.key = key;
            h.lock_id = PQgetvalue(res, 0, 0);
            h.fence = std::stoll(PQgetvalue(res, 0, 1));
            h.ttl_ms = static_cast<std::uint64_t>(std::stoll(PQgetvalue(res, 0, 2)));
            out = std::optional<lockext::LockHandle>{h};
        }
        PQclear(res);
        return out;
    }

    /*
     * try_lock(key, ttl_ms, wait_ms) on this thread's own connection. The statement_timeout
     * (SET LOCAL: same implicit transaction) bounds a wait the server failed to end.
     */
    lockext::Result<std::optional<lockext::LockHandle>>
    try_lock_wait(const std::string &key, std::uint64_t ttl_ms, std::int64_t wait_ms)
    {
        if (auto conn = connection("try_lock"); !conn)
            return std::unexpected(conn.error());
        const std::string sql = timeout_prefix(wait_ms) + "SELECT lock_id, fence, ttl_ms FROM try_lock(" +
                                literal(key) + ", " + std::to_string(ttl_ms) + ", " +
                                std::to_string(wait_ms) + ")";
        auto res = exec("try_lock", sql);
        if (!res)
            return std::unexpected(res.error());
        return handle_from(*res, key);
    }

    /* The library's calls, made by a raw thread over its own connection. */
    lockext::Result<std::optional<lockext::LockHandle>>
    try_lock_raw(const std::string &key, std::uint64_t ttl_ms)
    {
        if (auto conn = connection("try_lock"); !conn)
            return std::unexpected(conn.error());
        auto res = exec("try_lock", timeout_prefix(0) + "SELECT lock_id, fence, ttl_ms FROM try_lock(" +
                                        literal(key) + ", " + std::to_string(ttl_ms) + ")");
        if (!res)
            return std::unexpected(res.error());
        return handle_from(*res, key);
    }

    /* renew / release (key, lock_id): the function's boolean; false is "lock lost" for a
     * renew (the library's words) and a silent no-op for a release. */
    lockext::Result<void> call_raw(const char *fn, const lockext::LockHandle &h)
    {
        if (auto conn = connection(fn); !conn)
            return std::unexpected(conn.error());
        std::string sql = timeout_prefix(0) + "SELECT " + fn + "(" + literal(h.key) + "::text, " +
                          literal(h.lock_id) + "::uuid)";
        auto res = exec(fn, sql);
        if (!res)
            return std::unexpected(res.error());
        const bool shaped = PQntuples(*res) == 1 && PQnfields(*res) == 1 && !PQgetisnull(*res, 0, 0);
        const bool yes = shaped && PQgetvalue(*res, 0, 0)[0] == 't';
        PQclear(*res);
        if (!shaped)
            return std::unexpected(std::string(fn) + " failed: [XX000] unexpected result shape");
        if (!yes && std::strcmp(fn, "renew") == 0)
            return std::unexpected("renew failed: lock lost: '" + h.key +
                                   "' is no longer held by this lock_id (expired, released or taken over)");
        return {};
    }

    /* Works under the lease; granted_at = invoke time of the try_lock that granted it. */
    void hold(const lockext::LockHandle &handle, std::int64_t granted_at)
    {
        const std::int64_t ttl = static_cast<std::int64_t>(handle.ttl_ms);
        /* renewing holders are the keeper's use case, jobs longer than the TTL: they
         * work 1-3 TTLs; the others work --work-*-pct of it, or overrun it by up to 50 % */
        const bool renewing = uniform(0, 99) < m_cfg.renew_pct;
        const int pct = renewing                             ? uniform(100, 300)
                        : uniform(0, 99) < m_cfg.overrun_pct ? uniform(100, 150)
                                                             : uniform(m_cfg.work_min_pct,
                                                                       m_cfg.work_max_pct);
        const std::int64_t work_ms = ttl * pct / 100;
        const std::int64_t work_end =
            std::min(mono_ns() + work_ms * 1000000, deadline());
        if (renewing) {
            /* like LeaseKeeper: renew every ttl/3; after a backend failure retry every
             * ttl/10 until the lease is known to have run out; "lock lost" ends it */
            const std::int64_t interval = std::max<std::int64_t>(ttl / 3, 1) * 1000000;
            const std::int64_t retry = std::max<std::int64_t>(ttl / 10, 10) * 1000000;
            std::int64_t valid_until = granted_at + ttl * 1000000;
            std::int64_t next = mono_ns() + interval;
            while (next < std::min(work_end, deadline())) {
                sleep_until_ns(next);
                if (mono_ns() >= deadline())
                    break; /* --stop-file: release now */
                const Op op = logged("renew", handle, [&] {
                    return m_raw ? call_raw("renew", handle) : m_plugin.renew(handle);
                });
                if (op.error.empty()) {
                    valid_until = op.invoke_ns + ttl * 1000000;
                    next = op.invoke_ns + interval;
                } else if (op.error.find("lock lost") != std::string::npos ||
                           mono_ns() >= valid_until) {
                    break; /* lost: the keeper tells the worker to stop */
                } else {
                    next = std::min(mono_ns() + retry, valid_until);
                }
            }
        }
        sleep_until_ns(work_end);
        (void) logged("release", handle, [&] {
            return m_raw ? call_raw("release", handle) : m_plugin.release(handle);
        });
    }

    /* Runs call (a renew or release of handle), logs it and returns the logged op. */
    template <class Call>
    Op logged(const char *name, const lockext::LockHandle &handle, Call &&call)
    {
        Op op = make_op(name, handle.key, handle.ttl_ms, &handle);
        op.invoke_ns = mono_ns();
        const lockext::Result<void> r = call();
        op.complete_ns = mono_ns();
        if (m_raw)
            op.server = m_server;
        if (!r)
            fail_op(op, r.error());
        emit(op);
        return op;
    }

    void fail_op(Op &op, const std::string &error)
    {
        op.outcome = classify_error(error);
        op.error = error;
    }

    void emit(const Op &op)
    {
        m_counters.ops++;
        if (op.contended)
            m_counters.contended++;
        else if (!op.error.empty())
            m_counters.errors++;
        else if (std::strcmp(op.op, "try_lock") == 0)
            m_counters.grants++;
        std::string line = "{\"proc\":" + std::to_string(m_cfg.proc) +
                           ",\"thread\":" + std::to_string(m_thread) + ",\"op\":\"" + op.op +
                           "\",\"invoke_ns\":" + std::to_string(op.invoke_ns) +
                           ",\"complete_ns\":" + std::to_string(op.complete_ns) +
                           ",\"outcome\":\"" + op.outcome + "\",\"key\":" + json_string(op.key) +
                           ",\"ttl_ms\":" + std::to_string(op.ttl_ms) + ",\"lock_id\":" +
                           (op.lock_id.empty() ? "null" : json_string(op.lock_id)) +
                           ",\"fence\":" + (op.fence ? std::to_string(*op.fence) : "null") +
                           ",\"contended\":" + (op.contended ? "true" : "false") +
                           ",\"error\":" + (op.error.empty() ? "null" : json_string(op.error)) +
                           (op.wait_ms >= 0 ? ",\"wait_ms\":" + std::to_string(op.wait_ms) : "") +
                           (op.server.empty() ? "" : ",\"server\":" + json_string(op.server)) +
                           "}";
        m_log.write(line);
    }

    std::uint64_t pick_ttl()
    {
        if (m_cfg.ttl_min_ms >= m_cfg.ttl_ms)
            return m_cfg.ttl_ms;
        const double lo = static_cast<double>(m_cfg.ttl_min_ms);
        const double u = std::uniform_real_distribution<double>(0.0, 1.0)(m_rng);
        const double ttl = lo * std::pow(static_cast<double>(m_cfg.ttl_ms) / lo, u);
        return std::clamp<std::uint64_t>(static_cast<std::uint64_t>(std::llround(ttl)),
                                         m_cfg.ttl_min_ms, m_cfg.ttl_ms);
    }

    int uniform(int lo, int hi)
    {
        if (hi <= lo)
            return lo;
        return std::uniform_int_distribution<int>(lo, hi)(m_rng);
    }

    void pause_ms(int ms)
    {
        sleep_until_ns(mono_ns() + std::int64_t{ms} * 1000000);
    }

    const Config &m_cfg;
    lockext::PgLockingPlugin &m_plugin;
    Log &m_log;
    Counters &m_counters;
    int m_thread;
    bool m_raw;                 /* every call over m_conn, not the library */
    std::mt19937_64 m_rng;
    PGconn *m_conn = nullptr;   /* a waiting or raw thread's own connection */
    std::string m_server;       /* "<port>/<timeline>" of m_conn's server (--server-info) */
};

[[noreturn]] void
usage(const char *argv0)
{
    std::fprintf(stderr,
                 "usage: %s [--conninfo STR] [--out FILE|-] [--proc N] [--threads N] [--keys N]\n"
                 "    [--key-prefix STR] [--ttl-ms N] [--ttl-min-ms N] [--work-min-pct P]\n"
                 "    [--work-max-pct P] [--overrun-pct P] [--renew-pct P] [--backoff-max-ms N]\n"
                 "    [--error-sleep-ms N] [--wait-pct P] [--raw-pct P] [--server-info 0|1]\n"
                 "    [--seconds S] [--stop-file PATH] [--prepared 0|1] [--pool-size N]\n"
                 "    [--statement-timeout-ms N] [--connect-timeout-s N] [--acquire-timeout-ms N]\n"
                 "    [--seed N] [--procs N]\n",
                 argv0);
    std::exit(2);
}

Config
parse(int argc, char **argv)
{
    Config c;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help")
            usage(argv[0]);
        if (i + 1 >= argc)
            usage(argv[0]);
        const std::string v = argv[++i];
        auto num = [&] { return std::stoll(v); };
        if (a == "--conninfo") c.conninfo = v;
        else if (a == "--out") c.out = v;
        else if (a == "--key-prefix") c.key_prefix = v;
        else if (a == "--proc") c.proc = static_cast<int>(num());
        else if (a == "--procs") c.procs = static_cast<int>(num());
        else if (a == "--threads") c.threads = static_cast<int>(num());
        else if (a == "--keys") c.keys = static_cast<int>(num());
        else if (a == "--ttl-ms") c.ttl_ms = static_cast<std::uint64_t>(num());
        else if (a == "--ttl-min-ms") c.ttl_min_ms = static_cast<std::uint64_t>(num());
        else if (a == "--work-min-pct") c.work_min_pct = static_cast<int>(num());
        else if (a == "--work-max-pct") c.work_max_pct = static_cast<int>(num());
        else if (a == "--overrun-pct") c.overrun_pct = static_cast<int>(num());
        else if (a == "--renew-pct") c.renew_pct = static_cast<int>(num());
        else if (a == "--wait-pct") c.wait_pct = static_cast<int>(num());
        else if (a == "--raw-pct") c.raw_pct = static_cast<int>(num());
        else if (a == "--server-info") c.server_info = num() != 0;
        else if (a == "--stop-file") c.stop_file = v;
        else if (a == "--backoff-max-ms") c.backoff_max_ms = static_cast<int>(num());
        else if (a == "--error-sleep-ms") c.error_sleep_ms = static_cast<int>(num());
        else if (a == "--seconds") c.seconds = std::stod(v);
        else if (a == "--prepared") c.prepared = num() != 0;
        else if (a == "--pool-size") c.pool_size = static_cast<int>(num());
        else if (a == "--statement-timeout-ms") c.statement_timeout_ms = static_cast<int>(num());
        else if (a == "--connect-timeout-s") c.connect_timeout_s = static_cast<int>(num());
        else if (a == "--acquire-timeout-ms") c.acquire_timeout_ms = static_cast<int>(num());
        else if (a == "--seed") c.seed = static_cast<std::uint64_t>(num());
        else usage(argv[0]);
    }
    if (c.procs > 1 && c.out == "-") {
        std::fprintf(stderr, "--procs needs --out FILE (process i writes FILE.p<i>)\n");
        std::exit(2);
    }
    if (c.procs < 1 || c.threads < 1 || c.keys < 1 || c.ttl_ms < 1 || c.seconds <= 0)
        usage(argv[0]);
    if (c.ttl_min_ms == 0 || c.ttl_min_ms > c.ttl_ms)
        c.ttl_min_ms = c.ttl_ms;
    if (c.seed == 0)
        c.seed = static_cast<std::uint64_t>(mono_ns()) ^ static_cast<std::uint64_t>(getpid());
    return c;
}

} // namespace

int
main(int argc, char **argv)
{
    Config cfg = parse(argc, argv);
    if (cfg.procs > 1) {
        /* several processes: fork before any thread or connection exists */
        std::vector<pid_t> children;
        const int first = cfg.proc;
        const std::string out = cfg.out;
        for (int i = 0; i < cfg.procs; ++i) {
            const pid_t pid = fork();
            if (pid < 0) {
                std::perror("fork");
                return 2;
            }
            if (pid == 0) {
                cfg.proc = first + i;
                cfg.out = out + ".p" + std::to_string(cfg.proc);
                cfg.procs = 1;
                break;
            }
            children.push_back(pid);
        }
        if (cfg.procs > 1) {
            int failed = 0;
            for (pid_t pid : children) {
                int status = 0;
                if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                    failed++;
            }
            return failed == 0 ? 0 : 1;
        }
    }
    lockext::PgOptions options;
    options.pool_size = static_cast<std::size_t>(cfg.pool_size > 0 ? cfg.pool_size : cfg.threads);
    options.prepared_statements = cfg.prepared;
    options.statement_timeout = std::chrono::milliseconds(cfg.statement_timeout_ms);
    options.connect_timeout = std::chrono::seconds(cfg.connect_timeout_s);
    options.acquire_timeout = std::chrono::milliseconds(cfg.acquire_timeout_ms);

    Counters counters;
    {
        Log log(cfg.out);
        lockext::PgLockingPlugin plugin(cfg.conninfo, options);
        const std::int64_t start = mono_ns();
        g_deadline = start + static_cast<std::int64_t>(cfg.seconds * 1e9);
        std::atomic<bool> done{false};
        std::thread stop_watch;
        if (!cfg.stop_file.empty())
            stop_watch = std::thread([&] {
                struct stat st{};
                while (!done.load() && mono_ns() < deadline()) {
                    if (stat(cfg.stop_file.c_str(), &st) == 0) {
                        g_deadline = std::min(deadline(), mono_ns());
                        break;
                    }
                    timespec ts{0, 50000000};
                    nanosleep(&ts, nullptr);
                }
            });
        log.write("{\"proc\":" + std::to_string(cfg.proc) + ",\"op\":\"meta\",\"start_ns\":" +
                  std::to_string(start) + ",\"threads\":" + std::to_string(cfg.threads) +
                  ",\"keys\":" + std::to_string(cfg.keys) + ",\"wait_pct\":" +
                  std::to_string(cfg.wait_pct) + ",\"raw_pct\":" + std::to_string(cfg.raw_pct) +
                  ",\"ttl_ms\":" +
                  std::to_string(cfg.ttl_ms) + ",\"seed\":" + std::to_string(cfg.seed) +
                  ",\"prepared\":" + (cfg.prepared ? "true" : "false") + "}");
        std::vector<std::thread> threads;
        threads.reserve(static_cast<std::size_t>(cfg.threads));
        for (int t = 0; t < cfg.threads; ++t)
            threads.emplace_back([&, t] {
                Worker(cfg, plugin, log, counters, t).run();
            });
        for (auto &t : threads)
            t.join();
        done = true;
        if (stop_watch.joinable())
            stop_watch.join();
        (void) plugin.cleanup();
    }
    std::fprintf(stderr, "driver p%d: %ld ops, %ld grants, %ld contended, %ld errors\n", cfg.proc,
                 counters.ops.load(), counters.grants.load(), counters.contended.load(),
                 counters.errors.load());
    return 0;
}
