/*
 * pg_wait_test.cpp
 *     PgLockingPlugin::try_lock_for against a live server (lockext 1.1), the cases only
 *     the pg backend has (the shared cases are in conformance_test.cpp):
 *       - a wait longer than the server's lockext.max_wait_ms is chained (the test sets
 *         lockext.max_wait_ms = 300 with ALTER SYSTEM + reload and resets it after);
 *       - cancel_waits() from another thread ends a wait at once, with a clear error,
 *         and leaves no waiter and no lease on the server;
 *       - a lockext 1.0 database (no 3-argument try_lock) falls back to polling, logged
 *         once, still cancellable;
 *       - in pipeline mode a wait does not hold up other threads' calls.
 * Needs LOCKEXT_TEST_DSN naming a superuser (ALTER SYSTEM, CREATE DATABASE).
 */
#include <gtest/gtest.h>

#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <lockext/boot_clock.hpp>
#include <lockext/pg_locking_plugin.hpp>

#include "test_support.hpp"

using namespace std::chrono_literals;
using lockext::BootClock;
using lockext::LockHandle;
using lockext::PgLockingPlugin;
using lockext::PgOptions;

namespace
{

/* Runs sql on a fresh connection: the first value of the first row ("" without rows;
 * "OK" for a command), or the error message. */
lockext::Result<std::string>
sql(const std::string &dsn, const std::string &query)
{
	PGconn *conn = PQconnectdb(dsn.c_str());
	PGresult *res = PQexec(conn, query.c_str());
	lockext::Result<std::string> out = std::unexpected(std::string(PQerrorMessage(conn)));
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
		out = PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "";
	else if (PQresultStatus(res) == PGRES_COMMAND_OK)
		out = "OK";
	PQclear(res);
	PQfinish(conn);
	return out;
}

std::string
key(const std::string &suffix = "k")
{
	return lockext::test::unique_key(lockext::test::current_test_name() + "-" + suffix);
}

/* Waiters on key k as the server sees them (-1 on error). */
int
waiters_on(const std::string &dsn, const std::string &k)
{
	auto n = sql(dsn, "SELECT coalesce(sum(waiters), 0) FROM lockext_leases WHERE key = '" + k + "'");
	return n ? std::atoi(n->c_str()) : -1;
}

/* Polls until the server shows n waiters on k (bounded). */
bool
await_waiters(const std::string &dsn, const std::string &k, int n)
{
	for (int i = 0; i < 100; ++i)
	{
		if (waiters_on(dsn, k) == n)
			return true;
		std::this_thread::sleep_for(20ms);
	}
	return false;
}

class PgWait : public ::testing::Test
{
  protected:
	void SetUp() override
	{
		auto dsn = lockext::test::env("LOCKEXT_TEST_DSN");
		if (!dsn)
			GTEST_SKIP() << "LOCKEXT_TEST_DSN is not set: no server to test against";
		m_dsn = *dsn;
	}
	std::string m_dsn;
};

/* Sets lockext.max_wait_ms for the test's lifetime (ALTER SYSTEM + reload). */
struct MaxWait
{
	std::string dsn;
	bool ok = false;
	MaxWait(std::string d, const std::string &value, const std::string &shown) : dsn(std::move(d))
	{
		ok = sql(dsn, "ALTER SYSTEM SET lockext.max_wait_ms = " + value).has_value() &&
			 sql(dsn, "SELECT pg_reload_conf()").has_value();
		for (int i = 0; ok && i < 100; ++i)
		{
			if (sql(dsn, "SHOW lockext.max_wait_ms").value_or("") == shown)
				return;
			std::this_thread::sleep_for(20ms);
		}
		ok = false;
	}
	~MaxWait()
	{
		(void) sql(dsn, "ALTER SYSTEM RESET lockext.max_wait_ms");
		(void) sql(dsn, "SELECT pg_reload_conf()");
		for (int i = 0; i < 100; ++i)
		{
			if (sql(dsn, "SHOW lockext.max_wait_ms").value_or("") == "1min")
				return;
			std::this_thread::sleep_for(20ms);
		}
	}
};

std::int64_t
stat(const std::string &dsn, const char *column)
{
	auto v = sql(dsn, std::string("SELECT ") + column + " FROM lockext_stats");
	return v ? std::atoll(v->c_str()) : -1;
}

} // namespace

/* lockext.max_wait_ms = 300: a 1200 ms wait is four bounded waits on the server, never a
 * 22023, and the bound is the caller's (contention after ~1200 ms, not 300); a holder
 * released after 900 ms hands the key over within the chain. */
TEST_F(PgWait, WaitsBeyondTheServersMaxWaitAreChained)
{
	MaxWait guard(m_dsn, "300", "300ms");
	ASSERT_TRUE(guard.ok) << "could not set lockext.max_wait_ms";
	PgLockingPlugin pg(m_dsn);
	const std::string k = key();
	auto holder = pg.try_lock(k, 30000);
	ASSERT_TRUE(holder && holder->has_value()) << (holder ? "contention" : holder.error());

	const std::int64_t waits0 = stat(m_dsn, "waits");
	const auto t0 = BootClock::now();
	auto r = pg.try_lock_for_outcome(k, 30000, 1200ms);
	const auto took = BootClock::now() - t0;
	ASSERT_TRUE(r.has_value()) << r.error().message;
	EXPECT_FALSE(r->has_value());
	EXPECT_GE(took, 1150ms);
	EXPECT_LT(took, 2500ms);
	EXPECT_GE(stat(m_dsn, "waits") - waits0, 4) << "not chained in waits of <= 300 ms";

	std::thread releaser(
		[&]
		{
			std::this_thread::sleep_for(900ms);
			EXPECT_TRUE(pg.release(**holder).has_value());
		});
	auto g = pg.try_lock_for(k, 30000, 5s);
	releaser.join();
	ASSERT_TRUE(g.has_value()) << g.error();
	ASSERT_TRUE(g->has_value());
	EXPECT_GT((*g)->fence, (*holder)->fence);
	EXPECT_TRUE(pg.release(**g).has_value());
}

/* The server's bound lowered while the plugin had read the old one (a reload): the
 * plugin's too-long wait gets 22023, it reads the bound again and carries on. */
TEST_F(PgWait, ALoweredMaxWaitIsReadAgain)
{
	PgLockingPlugin pg(m_dsn);
	const std::string k = key();
	auto holder = pg.try_lock(k, 30000);
	ASSERT_TRUE(holder && holder->has_value());
	auto first = pg.try_lock_for(k, 30000, 100ms); // reads lockext.max_wait_ms = 1 min
	ASSERT_TRUE(first.has_value()) << first.error();
	MaxWait guard(m_dsn, "200", "200ms");
	ASSERT_TRUE(guard.ok);
	const auto t0 = BootClock::now();
	auto r = pg.try_lock_for_outcome(k, 30000, 700ms);
	ASSERT_TRUE(r.has_value()) << r.error().message;
	EXPECT_FALSE(r->has_value());
	EXPECT_GE(BootClock::now() - t0, 650ms);
	EXPECT_TRUE(pg.release(**holder).has_value());
}

/* cancel_waits() from another thread: the wait ends at once with a Timeout/57014
 * "cancelled" failure; no waiter is left on the server and the lease released later is
 * not handed to the cancelled waiter. */
TEST_F(PgWait, CancelWaitsEndsAWaitAtOnceAndLeavesNothingBehind)
{
	PgLockingPlugin pg(m_dsn);
	const std::string k = key();
	auto holder = pg.try_lock(k, 30000);
	ASSERT_TRUE(holder && holder->has_value());
	std::optional<lockext::Outcome<std::optional<LockHandle>>> got;
	BootClock::time_point ended;
	std::thread waiter(
		[&]
		{
			got = pg.try_lock_for_outcome(k, 30000, 20s);
			ended = BootClock::now();
		});
	const bool queued = await_waiters(m_dsn, k, 1);
	const auto cancelled_at = BootClock::now();
	pg.cancel_waits();
	waiter.join();
	ASSERT_TRUE(queued) << "the waiter never showed up on the server";
	ASSERT_TRUE(got.has_value());
	ASSERT_FALSE(got->has_value()) << "the cancelled wait returned a value";
	const lockext::Failure &f = got->error();
	EXPECT_EQ(f.kind, lockext::FailureKind::Timeout);
	EXPECT_EQ(f.sqlstate, "57014");
	EXPECT_EQ(f.message, "try_lock_for failed: the wait was cancelled (cancel_waits)");
	EXPECT_LT(ended - cancelled_at, 500ms);
	EXPECT_EQ(waiters_on(m_dsn, k), 0);
	EXPECT_EQ(stat(m_dsn, "waiters"), 0);

	EXPECT_TRUE(pg.release(**holder).has_value());
	std::this_thread::sleep_for(100ms);
	auto again = pg.try_lock(k, 30000);
	ASSERT_TRUE(again.has_value()) << again.error();
	EXPECT_TRUE(again->has_value()) << "the key went to the cancelled waiter";
	if (again && again->has_value())
	{
		EXPECT_TRUE(pg.release(**again).has_value());
	}

	// A wait that begins after cancel_waits() is not affected by it.
	auto later = pg.try_lock_for(k, 30000, 200ms);
	ASSERT_TRUE(later.has_value()) << later.error();
	ASSERT_TRUE(later->has_value());
	EXPECT_TRUE(pg.release(**later).has_value());
}

/* A database with lockext 1.0 has no try_lock(key, ttl, wait) (42883): try_lock_for polls
 * try_lock instead, says so once through on_log, and stays cancellable. */
TEST_F(PgWait, ALockext10DatabaseFallsBackToPolling)
{
	const std::string db = "lockext_wait_v10_" + std::to_string(::getpid());
	(void) sql(m_dsn, "DROP DATABASE IF EXISTS " + db);
	ASSERT_TRUE(sql(m_dsn, "CREATE DATABASE " + db).has_value());
	const std::string dsn = m_dsn + " dbname=" + db;
	auto created = sql(dsn, "CREATE EXTENSION lockext VERSION '1.0'");
	ASSERT_TRUE(created.has_value()) << created.error();
	{
		std::mutex m;
		std::vector<std::string> logs;
		PgOptions options;
		options.on_log = [&](std::string_view line)
		{
			std::lock_guard g(m);
			logs.emplace_back(line);
		};
		PgLockingPlugin pg(dsn, options);
		const std::string k = key();
		auto holder = pg.try_lock(k, 30000);
		ASSERT_TRUE(holder && holder->has_value()) << (holder ? "contention" : holder.error());
		std::thread releaser(
			[&]
			{
				std::this_thread::sleep_for(500ms);
				EXPECT_TRUE(pg.release(**holder).has_value());
			});
		auto r = pg.try_lock_for(k, 30000, 5s);
		releaser.join();
		ASSERT_TRUE(r.has_value()) << r.error();
		ASSERT_TRUE(r->has_value());
		EXPECT_GT((*r)->fence, (*holder)->fence);

		const auto t0 = BootClock::now();
		auto timed_out = pg.try_lock_for(k, 30000, 400ms);
		ASSERT_TRUE(timed_out.has_value()) << timed_out.error();
		EXPECT_FALSE(timed_out->has_value());
		EXPECT_GE(BootClock::now() - t0, 390ms);

		std::optional<lockext::Outcome<std::optional<LockHandle>>> got;
		std::thread waiter([&] { got = pg.try_lock_for_outcome(k, 30000, 20s); });
		std::this_thread::sleep_for(300ms);
		const auto cancelled_at = BootClock::now();
		pg.cancel_waits();
		waiter.join();
		EXPECT_LT(BootClock::now() - cancelled_at, 500ms);
		ASSERT_TRUE(got.has_value());
		ASSERT_FALSE(got->has_value());
		EXPECT_EQ(got->error().sqlstate, "57014");
		EXPECT_TRUE(pg.release(**r).has_value());

		std::lock_guard g(m);
		ASSERT_EQ(logs.size(), 1u) << "the fallback must be logged exactly once";
		EXPECT_NE(logs[0].find("lockext 1.0"), std::string::npos) << logs[0];
	}
	(void) sql(m_dsn, "DROP DATABASE " + db);
}

/* PgOptions::pipeline: a waiting try_lock_for runs on a dedicated connection; other
 * threads' try_lock/renew/release keep flowing through the pipeline meanwhile. */
TEST_F(PgWait, PipelinedCallsDoNotQueueBehindAWait)
{
	PgOptions options;
	options.pipeline = true;
	options.pipeline_connections = 1;
	PgLockingPlugin pg(m_dsn, options);
	const std::string k = key("held");
	auto holder = pg.try_lock(k, 30000);
	ASSERT_TRUE(holder && holder->has_value());
	std::thread waiter([&] { EXPECT_FALSE(pg.try_lock_for(k, 30000, 1500ms).value()); });
	ASSERT_TRUE(await_waiters(m_dsn, k, 1));
	const std::string other = key("other");
	auto worst = 0ms;
	for (int i = 0; i < 20; ++i)
	{
		const auto t0 = BootClock::now();
		auto h = pg.try_lock(other, 5000);
		ASSERT_TRUE(h && h->has_value());
		ASSERT_TRUE(pg.renew(**h).has_value());
		ASSERT_TRUE(pg.release(**h).has_value());
		worst = std::max(worst, std::chrono::duration_cast<std::chrono::milliseconds>(
									BootClock::now() - t0));
	}
	EXPECT_EQ(waiters_on(m_dsn, k), 1) << "the wait ended early";
	EXPECT_LT(worst, 300ms) << "calls queued behind the wait";
	waiter.join();
	EXPECT_TRUE(pg.release(**holder).has_value());
}
