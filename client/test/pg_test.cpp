/*
 * pg_test.cpp
 *     Cases only the pg backend has: server errors with SQLSTATE, capacity, schema and
 *     pool options, sessionless use, an unreachable or unresponsive server, PgBouncer
 *     with named prepared statements, the example program, and (last, because they
 *     stop the shared test server) downtime and restart.
 *
 * Needs LOCKEXT_TEST_DSN (else skipped); PgBouncer cases need LOCKEXT_TEST_PGBOUNCER_DSN,
 * restart cases LOCKEXT_TEST_PG_STOP and LOCKEXT_TEST_PG_START (see test_support.hpp).
 */
#include <gtest/gtest.h>

#include <libpq-fe.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <thread>

#include <lockext/lease_keeper.hpp>

#include "test_support.hpp"

using namespace std::chrono_literals;
using lockext::LockHandle;
using lockext::PgLockingPlugin;
using lockext::PgOptions;
using lockext::test::env;
using lockext::test::make_pg;
using lockext::test::unique_key;

namespace
{

std::string
key(const std::string &suffix = "k")
{
	return unique_key(lockext::test::current_test_name() + "-" + suffix);
}

#define PG_PLUGIN_OR_SKIP(var, ...)                                                                \
	std::string var##_why;                                                                         \
	auto var = make_pg(var##_why, ##__VA_ARGS__);                                                  \
	if (!var)                                                                                      \
		GTEST_SKIP() << var##_why;

bool
contains(const std::string &text, const char *needle)
{
	return text.find(needle) != std::string::npos;
}

/* A TCP port on 127.0.0.1 that listens (if keep_listening) but never answers, or that
 * nothing listens on. */
class LocalPort
{
  public:
	explicit LocalPort(bool keep_listening)
	{
		m_fd = socket(AF_INET, SOCK_STREAM, 0);
		sockaddr_in addr{};
		addr.sin_family = AF_INET;
		addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		socklen_t len = sizeof addr;
		if (bind(m_fd, reinterpret_cast<sockaddr *>(&addr), len) != 0 ||
			getsockname(m_fd, reinterpret_cast<sockaddr *>(&addr), &len) != 0 ||
			(keep_listening && listen(m_fd, 16) != 0))
			ADD_FAILURE() << "could not set up a local port";
		m_port = ntohs(addr.sin_port);
		if (!keep_listening)
		{
			close(m_fd);
			m_fd = -1;
		}
	}
	~LocalPort()
	{
		if (m_fd >= 0)
			close(m_fd);
	}
	int port() const
	{
		return m_port;
	}
	std::string conninfo() const
	{
		return "host=127.0.0.1 port=" + std::to_string(m_port) + " dbname=postgres user=postgres";
	}

  private:
	int m_fd = -1;
	int m_port = 0;
};

/* A server error keeps its SQLSTATE and message, for both statement kinds. */
TEST(PgBackend, ServerErrorsCarrySqlstateAndMessage)
{
	for (bool prepared : {true, false})
	{
		PgOptions options;
		options.prepared_statements = prepared;
		PG_PLUGIN_OR_SKIP(pg, options);
		auto too_long = pg->try_lock(key(), 300001);
		ASSERT_FALSE(too_long.has_value());
		EXPECT_TRUE(too_long.error().starts_with("try_lock failed: [22023] ")) << too_long.error();
		EXPECT_TRUE(contains(too_long.error(), "ttl_ms")) << too_long.error();

		auto huge_key = pg->try_lock(std::string(100000, 'k'), 1000);
		ASSERT_FALSE(huge_key.has_value());
		EXPECT_TRUE(huge_key.error().starts_with("try_lock failed: [22023] ")) << huge_key.error();

		LockHandle bad{key(), "not-a-uuid", 1000, 1};
		auto renewed = pg->renew(bad);
		ASSERT_FALSE(renewed.has_value());
		EXPECT_TRUE(renewed.error().starts_with("renew failed: [22P02] ")) << renewed.error();
		auto released = pg->release(bad);
		ASSERT_FALSE(released.has_value()) << "a malformed lock_id is bad input, not a no-op";
		EXPECT_TRUE(released.error().starts_with("release failed: [22P02] ")) << released.error();

		// The connection survives server errors: the next call works.
		auto ok = pg->try_lock(key(), 1000);
		ASSERT_TRUE(ok && ok->has_value()) << (ok ? "contention" : ok.error());
		EXPECT_TRUE(pg->release(**ok).has_value());
	}
}

/* A table full of live leases is an error with SQLSTATE 53400, never contention. */
TEST(PgBackend, FullTableIsAnErrorNotContention)
{
	PgOptions options;
	options.prepared_statements = true;
	PG_PLUGIN_OR_SKIP(pg, options);
	std::vector<LockHandle> held;
	std::string error;
	const std::string prefix = key();
	for (int i = 0; i < 20000 && error.empty(); ++i)
	{
		auto r = pg->try_lock(prefix + "-" + std::to_string(i), 60000);
		if (!r)
			error = r.error();
		else if (!r->has_value())
			ADD_FAILURE() << "fresh key reported as contention";
		else
			held.push_back(**r);
	}
	EXPECT_TRUE(error.starts_with("try_lock failed: [53400] ")) << error;
	EXPECT_TRUE(contains(error, "lockext.max_locks")) << "the hint should name the GUC: " << error;
	for (const auto &h : held)
		EXPECT_TRUE(pg->release(h).has_value());
	auto after = pg->try_lock(prefix + "-after", 1000);
	ASSERT_TRUE(after && after->has_value()) << "released slots must be reusable";
	EXPECT_TRUE(pg->release(**after).has_value());
}

/* Leases are sessionless: another plugin (other connections) renews and releases. */
TEST(PgBackend, AnotherInstanceCanRenewAndReleaseWithTheLockId)
{
	PG_PLUGIN_OR_SKIP(first);
	PgOptions unnamed;
	unnamed.prepared_statements = false;
	PG_PLUGIN_OR_SKIP(second, unnamed);
	const std::string k = key();
	auto h = first->try_lock(k, 30000);
	ASSERT_TRUE(h && h->has_value());
	ASSERT_TRUE(first->cleanup().has_value()); // the granting connections are gone
	EXPECT_TRUE(second->renew(**h).has_value());
	auto other = second->try_lock(k, 30000);
	ASSERT_TRUE(other.has_value());
	EXPECT_FALSE(other->has_value());
	EXPECT_TRUE(second->release(**h).has_value());
	auto again = second->try_lock(k, 30000);
	ASSERT_TRUE(again && again->has_value());
	EXPECT_TRUE(second->release(**again).has_value());
}

TEST(PgBackend, SchemaOptionQualifiesTheFunctions)
{
	PgOptions in_public;
	in_public.schema = "public";
	PG_PLUGIN_OR_SKIP(pg, in_public);
	auto h = pg->try_lock(key(), 1000);
	ASSERT_TRUE(h && h->has_value()) << (h ? "contention" : h.error());
	EXPECT_TRUE(pg->release(**h).has_value());

	for (bool prepared : {true, false})
	{
		PgOptions missing;
		missing.schema = "no_such\"schema";
		missing.prepared_statements = prepared;
		PG_PLUGIN_OR_SKIP(bad, missing);
		auto r = bad->try_lock(key(), 1000);
		ASSERT_FALSE(r.has_value()) << "a missing schema must be an error, not contention";
		EXPECT_TRUE(r.error().starts_with("try_lock failed: [3F000] ")) << r.error();
	}
}

TEST(PgBackend, CleanupClosesThePoolAndLaterCallsFail)
{
	PG_PLUGIN_OR_SKIP(pg);
	auto h = pg->try_lock(key(), 1000);
	ASSERT_TRUE(h && h->has_value());
	EXPECT_TRUE(pg->cleanup().has_value());
	auto r = pg->release(**h);
	ASSERT_FALSE(r.has_value());
	EXPECT_TRUE(contains(r.error(), "cleanup")) << r.error();
}

/* Runs one single-parameter statement on a fresh libpq connection: the first value of
 * its first row ("" if it returns no row), or the error message. */
lockext::Result<std::string>
query_raw(const std::string &dsn, const std::string &sql, const std::string &param)
{
	PGconn *conn = PQconnectdb(dsn.c_str());
	const char *params[] = {param.c_str()};
	PGresult *res = PQexecParams(conn, sql.c_str(), 1, nullptr, params, nullptr, nullptr, 0);
	lockext::Result<std::string> out = std::unexpected(std::string(PQerrorMessage(conn)));
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
		out = PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "";
	PQclear(res);
	PQfinish(conn);
	return out;
}

/* Counts server backends whose application_name is name (-1 on error). */
int
count_backends(const std::string &dsn, const std::string &name)
{
	auto n =
		query_raw(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name);
	return n ? std::atoi(n->c_str()) : -1;
}

/* 12 threads share 3 connections: never more are opened, waits for a free one are
 * bounded by acquire_timeout, and a too-short bound is a clear error. */
TEST(PgBackend, PoolIsBoundedAndWaitsAreBounded)
{
	auto dsn = env("LOCKEXT_TEST_DSN");
	if (!dsn)
		GTEST_SKIP() << "LOCKEXT_TEST_DSN is not set";
	const std::string app = unique_key("pool");
	for (auto [size, wait] : {std::pair{3, 5000ms}, std::pair{1, 0ms}})
	{
		PgOptions options;
		options.pool_size = static_cast<std::size_t>(size);
		options.acquire_timeout = wait;
		PgLockingPlugin pg(*dsn + " application_name=" + app, options);
		std::atomic<int> ok{0}, waited_out{0}, other{0}, max_seen{0};
		std::mutex first_mutex;
		std::string first_other;
		auto classify = [&](const std::string &error)
		{
			if (contains(error, "acquire_timeout"))
				return void(++waited_out);
			++other;
			std::lock_guard g(first_mutex);
			if (first_other.empty())
				first_other = error;
		};
		std::vector<std::thread> threads;
		for (int t = 0; t < 12; ++t)
			threads.emplace_back(
				[&, t]
				{
					for (int i = 0; i < 30; ++i)
					{
						auto r = pg.try_lock(key(std::to_string(t)), 1000);
						if (!r)
							classify(r.error());
						else if (!r->has_value())
							classify("contention on a fresh key");
						else if (auto rel = pg.release(**r); !rel)
							classify(rel.error());
						else
							++ok;
					}
				});
		for (int probe = 0; probe < 5; ++probe)
		{
			max_seen = std::max(max_seen.load(), count_backends(*dsn, app));
			std::this_thread::sleep_for(20ms);
		}
		for (auto &t : threads)
			t.join();
		max_seen = std::max(max_seen.load(), count_backends(*dsn, app));
		EXPECT_LE(max_seen.load(), size);
		EXPECT_EQ(other.load(), 0) << first_other;
		EXPECT_GT(ok.load(), 0);
		if (wait.count() > 0)
		{
			EXPECT_EQ(waited_out.load(), 0) << "5 s is plenty for 12 threads on 3 connections";
		}
		else
		{
			EXPECT_GT(waited_out.load(), 0) << "12 threads on 1 connection with no wait";
		}
	}
}

/* Nothing listens: errors (never contention) from the constructor-time-safe plugin. */
TEST(PgBackend, UnreachableServerIsAnErrorNotContention)
{
	LocalPort closed(false);
	PgOptions options;
	options.connect_timeout = 2s;
	PgLockingPlugin pg(closed.conninfo(), options); // must not throw
	auto r = pg.try_lock(key(), 1000);
	ASSERT_FALSE(r.has_value());
	EXPECT_TRUE(r.error().starts_with("try_lock failed: could not connect to server: "))
		<< r.error();
	LockHandle h{key(), "00000000-0000-4000-8000-000000000000", 1000, 1};
	EXPECT_FALSE(pg.renew(h).has_value());
	EXPECT_FALSE(pg.release(h).has_value()) << "a release that could not run is an error";
}

/* A multi-host conninfo whose first host is down: libpq moves on to the next one that
 * accepts writes (target_session_attrs=read-write), as it would after a failover. */
TEST(PgBackend, MultiHostConninfoUsesTheReachableWritableHost)
{
	auto dsn = env("LOCKEXT_TEST_DSN");
	if (!dsn)
		GTEST_SKIP() << "LOCKEXT_TEST_DSN is not set";
	auto port = query_raw(*dsn, "SELECT setting FROM pg_settings WHERE name = $1", "port");
	ASSERT_TRUE(port.has_value()) << port.error();
	LocalPort down(false);
	PgOptions options;
	options.connect_timeout = 2s;
	PgLockingPlugin pg(*dsn + " host=127.0.0.1,127.0.0.1 port=" + std::to_string(down.port()) +
						   "," + *port + " target_session_attrs=read-write",
					   options);
	auto h = pg.try_lock(key(), 1000);
	ASSERT_TRUE(h.has_value()) << h.error();
	ASSERT_TRUE(h->has_value());
	EXPECT_TRUE(pg.release(**h).has_value());
}

/* The port accepts TCP but never speaks the protocol: connect_timeout bounds the wait. */
TEST(PgBackend, UnresponsiveServerTimesOut)
{
	LocalPort silent(true);
	PgOptions options;
	options.connect_timeout = 2s;
	PgLockingPlugin pg(silent.conninfo(), options);
	const auto start = lockext::BootClock::now();
	auto r = pg.try_lock(key(), 1000);
	const auto took = lockext::BootClock::now() - start;
	ASSERT_FALSE(r.has_value());
	EXPECT_TRUE(contains(r.error(), "could not connect")) << r.error();
	EXPECT_LT(took, 5s);
}

/* The server holds the key's partition lock (test hook) longer than the client's
 * statement_timeout: the call is an error that says the outcome is unknown, never
 * contention; the plugin keeps working; the possibly granted lease expires by TTL. */
TEST(PgBackend, StatementTimeoutIsAnErrorWithUnknownOutcome)
{
	auto dsn = env("LOCKEXT_TEST_DSN");
	if (!dsn)
		GTEST_SKIP() << "LOCKEXT_TEST_DSN is not set";
	const std::string k = key();
	lockext::Result<std::string> stalled;
	std::thread stall(
		[&]
		{
			stalled = query_raw(
				*dsn, "SELECT lockext_test_stall(lockext_test_partition_of($1), 2000, false)", k);
		});
	// Wait until the stall holds the partition lock (it waits with wait_event_type
	// 'Extension' while holding it).
	const std::string waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
								"'Extension' AND query LIKE $1";
	bool holding = false;
	for (int i = 0; i < 100 && !holding; ++i)
	{
		holding = query_raw(*dsn, waiting, "%lockext_test_stall%").value_or("0") != "0";
		if (!holding)
			std::this_thread::sleep_for(10ms);
	}
	EXPECT_TRUE(holding) << "the stall hook did not start";
	PgOptions options;
	options.statement_timeout = 300ms;
	PgLockingPlugin pg(*dsn, options);
	const auto start = lockext::BootClock::now();
	auto r = pg.try_lock(k, 1000);
	const auto took = lockext::BootClock::now() - start;
	stall.join();
	ASSERT_TRUE(stalled.has_value()) << "needs lockext.enable_test_hooks = on: " << stalled.error();
	ASSERT_FALSE(r.has_value()) << "a timed-out try_lock must be an error";
	EXPECT_TRUE(r.error().starts_with("try_lock failed: outcome unknown")) << r.error();
	EXPECT_TRUE(contains(r.error(), "statement_timeout")) << r.error();
	EXPECT_LT(took, 1000ms);

	auto after = pg.try_lock(k, 1000); // the abandoned call may have granted it
	ASSERT_TRUE(after.has_value()) << after.error();
	if (!after->has_value())
	{
		std::this_thread::sleep_for(1100ms);
		after = pg.try_lock(k, 1000);
		ASSERT_TRUE(after.has_value()) << after.error();
	}
	ASSERT_TRUE(after->has_value()) << "the abandoned lease must expire after its TTL";
	EXPECT_TRUE(pg.release(**after).has_value());
}

/* Sends one command to PgBouncer's admin console (simple query protocol only). */
lockext::Result<void>
pgbouncer_admin(const std::string &dsn, const char *command)
{
	PGconn *conn = PQconnectdb(dsn.c_str());
	PGresult *res = PQexec(conn, command);
	lockext::Result<void> out;
	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		out = std::unexpected(std::string(PQerrorMessage(conn)));
	PQclear(res);
	PQfinish(conn);
	return out;
}

/* A paused pooler is a network partition for the client: renews hang, each call ends
 * at statement_timeout with "outcome unknown", and the keeper declares the lease lost
 * when its known window ends. After RESUME the same plugin works again. */
TEST(PgBouncer, PausedPoolerMakesTheKeeperGiveUpAtTheEndOfTheWindow)
{
	auto admin = env("LOCKEXT_TEST_PGBOUNCER_ADMIN_DSN");
	if (!admin)
		GTEST_SKIP() << "LOCKEXT_TEST_PGBOUNCER_ADMIN_DSN is not set";
	PgOptions options;
	options.prepared_statements = false;
	options.statement_timeout = 200ms;
	PG_PLUGIN_OR_SKIP(pg, options, "LOCKEXT_TEST_PGBOUNCER_DSN");
	const auto before = lockext::BootClock::now();
	auto h = pg->try_lock(key(), 900);
	ASSERT_TRUE(h && h->has_value()) << (h ? "contention" : h.error());
	std::mutex mutex;
	std::condition_variable cv;
	std::string reason;
	lockext::LeaseKeeper keeper(
		*pg, **h,
		[&](const std::string &why)
		{
			std::lock_guard g(mutex);
			reason = why;
			cv.notify_all();
		},
		{}, before);

	ASSERT_TRUE(pgbouncer_admin(*admin, "PAUSE postgres").has_value());
	{
		std::unique_lock lock(mutex);
		EXPECT_TRUE(cv.wait_for(lock, 3s, [&] { return !reason.empty(); }));
	}
	const auto lost_at = lockext::BootClock::now();
	ASSERT_TRUE(pgbouncer_admin(*admin, "RESUME postgres").has_value());
	EXPECT_TRUE(keeper.lost());
	EXPECT_LT(lost_at, keeper.valid_until() + 1s) << "reported long after the window";
	EXPECT_TRUE(contains(reason, "lease ran out")) << reason;
	EXPECT_TRUE(contains(reason, "statement_timeout")) << reason;
	keeper.stop();

	auto after = pg->try_lock(key("after"), 1000);
	for (int i = 0; i < 3 && !after; ++i) // calls queued behind the pause may still time out
		after = pg->try_lock(key("after"), 1000);
	ASSERT_TRUE(after && after->has_value()) << (after ? "contention" : after.error());
	EXPECT_TRUE(pg->release(**after).has_value());
}

/* The example: the second instance, started after the first's TTL has passed once,
 * still skips, so the first renewed its lease; the first finishes its job. */
TEST(Example, NightlyReportRunsOnceAndRenewsWhileRunning)
{
	auto dsn = env("LOCKEXT_TEST_DSN");
	if (!dsn)
		GTEST_SKIP() << "LOCKEXT_TEST_DSN is not set";
	const std::string k = key();
	const std::string cmd = std::string(LOCKEXT_NIGHTLY_REPORT) + " '" + *dsn + "' '" + k + "' ";
	FILE *first = popen((cmd + "2000").c_str(), "r");
	ASSERT_NE(first, nullptr);
	std::this_thread::sleep_for(1300ms); // > ttl (900 ms): only renewals keep the lease
	FILE *second = popen((cmd + "10").c_str(), "r");
	ASSERT_NE(second, nullptr);
	auto slurp = [](FILE *f, int &status)
	{
		std::string out;
		char buf[256];
		while (std::fgets(buf, sizeof buf, f))
			out += buf;
		status = pclose(f);
		return out;
	};
	int s1 = 0, s2 = 0;
	std::string out2 = slurp(second, s2);
	std::string out1 = slurp(first, s1);
	EXPECT_EQ(s2, 0);
	EXPECT_TRUE(contains(out2, "skipped")) << out2;
	EXPECT_EQ(s1, 0);
	EXPECT_TRUE(contains(out1, "report done under fence")) << out1;
}

/* Forwards to a PgLockingPlugin and counts renew calls (to see that a keeper stops). */
class CountingRenew final : public lockext::LockingPlugin
{
  public:
	explicit CountingRenew(lockext::LockingPlugin &inner) : m_inner(inner) {}
	std::string_view name() const override
	{
		return m_inner.name();
	}
	lockext::Result<std::optional<LockHandle>> try_lock(std::string_view k,
														std::uint64_t ttl) override
	{
		return m_inner.try_lock(k, ttl);
	}
	lockext::Result<void> renew(const LockHandle &h) override
	{
		++renews;
		return m_inner.renew(h);
	}
	lockext::Result<void> release(LockHandle h) override
	{
		return m_inner.release(std::move(h));
	}
	/* The keeper uses the classified call (FailureKind::LockLost). */
	lockext::Outcome<void> renew_outcome(const LockHandle &h) override
	{
		++renews;
		return m_inner.renew_outcome(h);
	}
	std::atomic<int> renews{0};

  private:
	lockext::LockingPlugin &m_inner;
};

/* The server's row for key in lockext_leases as "lock_id|fence" ("" if none). */
std::string
lease_row(const std::string &dsn, const std::string &k)
{
	auto row =
		query_raw(dsn, "SELECT lock_id || '|' || fence FROM lockext_leases WHERE key = $1", k);
	EXPECT_TRUE(row.has_value()) << row.error();
	return row.value_or("?");
}

std::string
row_of(const LockHandle &h)
{
	return h.lock_id + "|" + std::to_string(h.fence);
}

/* An operator's lockext_force_release is seen by the keeper's next renew: lost within
 * about ttl/3 (callback and lost()), and it never renews again, so the next holder's
 * lease is left alone. */
TEST(PgKeeper, ForceReleaseIsReportedLostWithinATtlThirdAndNeverRenewedAgain)
{
	PG_PLUGIN_OR_SKIP(pg);
	const std::string dsn = *env("LOCKEXT_TEST_DSN");
	CountingRenew counting(*pg);
	const std::string k = key();
	const auto before = lockext::BootClock::now();
	auto h = pg->try_lock(k, 1500);
	ASSERT_TRUE(h && h->has_value()) << (h ? "contention" : h.error());
	lockext::test::LostLog log;
	lockext::LeaseKeeper keeper(counting, **h, log.callback(), {}, before);
	std::this_thread::sleep_for(700ms); // one renew at ~500 ms
	EXPECT_GE(counting.renews.load(), 1);
	EXPECT_FALSE(keeper.lost());
	auto forced = query_raw(dsn, "SELECT lockext_force_release($1)", k);
	ASSERT_TRUE(forced.has_value()) << forced.error();
	ASSERT_EQ(*forced, "t");
	const auto forced_at = lockext::BootClock::now();
	ASSERT_TRUE(log.wait(2s)) << "force release not reported";
	const auto [why, at] = *log.first();
	EXPECT_TRUE(keeper.lost());
	EXPECT_LT(at - forced_at, 500ms + 300ms) << "reported later than the next renew (ttl/3)";
	EXPECT_TRUE(contains(why, "lock lost")) << why;
	EXPECT_EQ(keeper.lost_reason().value_or(""), why);

	// Someone else takes the key; the old keeper must leave the new lease alone.
	auto next = pg->try_lock(k, 1000);
	ASSERT_TRUE(next && next->has_value()) << (next ? "contention" : next.error());
	const int renews = counting.renews.load();
	std::this_thread::sleep_for(1200ms); // > 2 renew intervals of the old keeper
	EXPECT_EQ(counting.renews.load(), renews) << "the keeper renewed after the loss";
	EXPECT_EQ(log.count(), 1u) << "on_lost must run once";
	EXPECT_TRUE(keeper.lost());
	EXPECT_EQ(lease_row(dsn, k), "") << "the 1000 ms lease of the next holder should have expired";
	EXPECT_TRUE(keeper.release().has_value()) << "releasing a lost lease is a silent no-op";
}

/* ---- these stop the shared server: keep them last ---- */

class PgServerControl : public ::testing::Test
{
  protected:
	void SetUp() override
	{
		m_dsn = env("LOCKEXT_TEST_DSN").value_or("");
		m_stop = env("LOCKEXT_TEST_PG_STOP").value_or("");
		m_start = env("LOCKEXT_TEST_PG_START").value_or("");
		if (m_dsn.empty() || m_stop.empty() || m_start.empty())
			GTEST_SKIP() << "needs LOCKEXT_TEST_DSN, LOCKEXT_TEST_PG_STOP, LOCKEXT_TEST_PG_START";
	}
	void TearDown() override
	{
		if (m_stopped)
			lockext::test::run_command(m_start);
	}
	void stop()
	{
		ASSERT_EQ(lockext::test::run_command(m_stop), 0);
		m_stopped = true;
	}
	void start()
	{
		ASSERT_EQ(lockext::test::run_command(m_start), 0);
		m_stopped = false;
	}

	/* try_lock on a fresh key, allowing one clear failure right after a restart. */
	void expect_grant_within_two_calls(PgLockingPlugin &pg)
	{
		auto r = pg.try_lock(key("after"), 1000);
		if (!r)
		{
			EXPECT_TRUE(contains(r.error(), "connection") || contains(r.error(), "terminat"))
				<< "the first failure after a restart should say why: " << r.error();
			std::printf("first call after the restart failed (allowed): %s\n", r.error().c_str());
			r = pg.try_lock(key("after2"), 1000);
		}
		ASSERT_TRUE(r.has_value()) << r.error();
		ASSERT_TRUE(r->has_value());
		EXPECT_TRUE(pg.release(**r).has_value());
	}

	std::string m_dsn, m_stop, m_start;
	bool m_stopped = false;
};

/* After a clean restart the pooled connections are dead; the pool notices that before
 * reuse (the FATAL and EOF the old backends sent are already in the sockets), so on
 * loopback no call fails at all. */
TEST_F(PgServerControl, RestartMidUseCostsNoFailedCall)
{
	for (bool prepared : {true, false})
	{
		PgOptions options;
		options.pool_size = 3;
		options.prepared_statements = prepared;
		PgLockingPlugin pg(m_dsn, options);
		// Fill the pool with idle connections.
		std::vector<std::thread> warm;
		for (int t = 0; t < 3; ++t)
			warm.emplace_back([&] { (void) pg.try_lock(key("warm"), 1000); });
		for (auto &t : warm)
			t.join();
		stop();
		start();
		for (int i = 0; i < 4; ++i)
		{
			auto r = pg.try_lock(key("after"), 1000);
			ASSERT_TRUE(r.has_value()) << "call " << i << " after the restart: " << r.error();
			ASSERT_TRUE(r->has_value());
			EXPECT_TRUE(pg.release(**r).has_value());
		}
	}
}

/* A clean restart saves the live leases and restores them (downtime subtracted). A
 * restart shorter than the keeper's known window therefore costs nothing: the renews
 * during the downtime fail and are retried, the first one after the restart succeeds
 * (the server still holds the lease under the same lock_id and fence), and the lease is
 * never reported lost. */
TEST_F(PgServerControl, KeeperKeepsItsLeaseAcrossACleanRestart)
{
	PgOptions options;
	options.connect_timeout = 2s;
	options.statement_timeout = 1000ms;
	PgLockingPlugin pg(m_dsn, options);
	const std::string k = key();
	const auto before = lockext::BootClock::now();
	auto h = pg.try_lock(k, 10000);
	ASSERT_TRUE(h && h->has_value()) << (h ? "contention" : h.error());
	lockext::test::LostLog log;
	lockext::LeaseKeeperOptions ko;
	ko.interval = 500ms;
	ko.retry_interval = 200ms;
	lockext::LeaseKeeper keeper(pg, **h, log.callback(), ko, before);
	std::this_thread::sleep_for(600ms);
	stop();
	const auto stopped = lockext::BootClock::now();
	std::this_thread::sleep_for(500ms);
	start();
	// A renew sent after the server went down and answered successfully can only have
	// been answered by the restarted server: valid_until moves past stopped + ttl.
	const auto limit = lockext::BootClock::now() + 5s;
	while (keeper.valid_until() < stopped + 10000ms && lockext::BootClock::now() < limit &&
		   !keeper.lost())
		std::this_thread::sleep_for(50ms);
	EXPECT_GE(keeper.valid_until(), stopped + 10000ms) << "no successful renew after the restart";
	EXPECT_FALSE(keeper.lost()) << keeper.lost_reason().value_or("");
	EXPECT_EQ(log.count(), 0u);
	EXPECT_EQ(lease_row(m_dsn, k), row_of(**h)) << "the restart should restore the lease as it was";
	auto other = pg.try_lock(k, 1000);
	ASSERT_TRUE(other.has_value()) << other.error();
	EXPECT_FALSE(other->has_value()) << "the restored lease must still exclude others";
	EXPECT_TRUE(keeper.release().has_value());
	EXPECT_EQ(lease_row(m_dsn, k), "");
}

/* A restart longer than the known window: the keeper reports the lease lost exactly
 * when the window ends (the server is down, no renew can succeed), never renews it
 * again, and the restarted server does not hold it either (downtime is subtracted, so
 * it expired), so the key is free for the next holder. */
TEST_F(PgServerControl, KeeperReportsLossWhenTheRestartOutlastsTheWindow)
{
	PgOptions options;
	options.connect_timeout = 2s;
	options.statement_timeout = 500ms;
	PgLockingPlugin pg(m_dsn, options);
	CountingRenew counting(pg);
	const std::string k = key();
	const auto before = lockext::BootClock::now();
	auto h = pg.try_lock(k, 1500);
	ASSERT_TRUE(h && h->has_value()) << (h ? "contention" : h.error());
	lockext::test::LostLog log;
	lockext::LeaseKeeper keeper(counting, **h, log.callback(), {}, before);
	stop();
	ASSERT_TRUE(log.wait(5s)) << "the keeper did not report the loss while the server was down";
	const auto [why, at] = *log.first();
	EXPECT_TRUE(keeper.lost());
	EXPECT_GE(at, keeper.valid_until()) << "reported lost before the known window ended";
	EXPECT_LT(at, keeper.valid_until() + 1s) << "reported long after the window ended";
	EXPECT_TRUE(contains(why, "lease ran out")) << why;
	std::this_thread::sleep_until(before + 2000ms); // the server's lease is over too
	start();
	const int renews = counting.renews.load();
	std::this_thread::sleep_for(700ms); // > one renew interval (500 ms)
	EXPECT_EQ(counting.renews.load(), renews) << "renewed after the loss";
	EXPECT_TRUE(keeper.lost());
	EXPECT_EQ(lease_row(m_dsn, k), "") << "the server restored a lease that had run out";
	auto r = pg.renew(**h);
	for (int i = 0; i < 2 && !r && !contains(r.error(), "lock lost"); ++i)
		r = pg.renew(**h); // the first call after a restart may fail on a dead connection
	ASSERT_FALSE(r.has_value()) << "an expired lease must not be renewable";
	EXPECT_TRUE(contains(r.error(), "lock lost")) << r.error();
	auto next = pg.try_lock(k, 1000);
	ASSERT_TRUE(next.has_value()) << next.error();
	ASSERT_TRUE(next->has_value()) << "the key should be free after the lease expired";
	EXPECT_GT((*next)->fence, (**h).fence);
	EXPECT_TRUE(pg.release(**next).has_value());
}

TEST_F(PgServerControl, DowntimeGivesErrorsAndTheSameInstanceRecovers)
{
	PgOptions options;
	options.connect_timeout = 2s;
	PgLockingPlugin before(m_dsn, options);
	const std::string k = key();
	auto h = before.try_lock(k, 60000);
	ASSERT_TRUE(h && h->has_value());
	stop();
	PgLockingPlugin during(m_dsn, options); // constructing while down must not throw
	for (PgLockingPlugin *pg : {&before, &during})
	{
		auto r = pg->try_lock(key("down"), 1000);
		ASSERT_FALSE(r.has_value()) << "server down must be an error, not contention";
		EXPECT_TRUE(r.error().starts_with("try_lock failed: ")) << r.error();
		EXPECT_FALSE(pg->renew(**h).has_value());
		EXPECT_FALSE(pg->release(**h).has_value());
	}
	start();
	expect_grant_within_two_calls(before);
	expect_grant_within_two_calls(during);
	EXPECT_TRUE(before.release(**h).has_value());
}

} // namespace
