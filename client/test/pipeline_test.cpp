/*
 * pipeline_test.cpp
 *     PgOptions::pipeline (spec §9): many threads share few connections through libpq
 *     pipeline mode. The guarantees tested: one caller's error never fails another's
 *     call in the same batch; a request whose deadline passes returns Timeout and its
 *     late reply is discarded without desynchronising the connection; a connection
 *     killed mid-pipeline fails every request in flight with an unknown outcome and the
 *     next calls reconnect; it works through PgBouncer's transaction pooling; mutual
 *     exclusion holds with many threads on one hot key; cleanup() with calls in flight
 *     returns promptly and every call returns.
 *
 * Server-side slowness and errors come from wrappers in a schema of their own
 * (PgOptions::schema): its try_lock sleeps 0.8 s for keys starting "slow-" and raises
 * for keys starting "boom-", and otherwise calls the extension's.
 */
#include <gtest/gtest.h>

#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <lockext/pg_locking_plugin.hpp>

#include "test_support.hpp"

using namespace std::chrono_literals;
using lockext::FailureKind;
using lockext::PgLockingPlugin;
using lockext::PgOptions;
using lockext::test::env;
using lockext::test::unique_key;

namespace
{

constexpr const char *kSchema = "lockext_pipeline_test";

/* Runs SQL on a connection of its own; "" on success, else the error. */
std::string
run_sql(const std::string &dsn, const std::string &sql)
{
	PGconn *conn = PQconnectdb(dsn.c_str());
	std::string err;
	if (PQstatus(conn) != CONNECTION_OK)
		err = PQerrorMessage(conn);
	else
	{
		PGresult *res = PQexec(conn, sql.c_str());
		if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
			err = PQerrorMessage(conn);
		PQclear(res);
	}
	PQfinish(conn);
	return err;
}

/* The number of server connections with this application_name. */
int
backends_named(const std::string &dsn, const std::string &app)
{
	PGconn *conn = PQconnectdb(dsn.c_str());
	int n = -1;
	if (PQstatus(conn) == CONNECTION_OK)
	{
		const std::string sql =
			"SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + app + "'";
		PGresult *res = PQexec(conn, sql.c_str());
		if (PQresultStatus(res) == PGRES_TUPLES_OK)
			n = std::atoi(PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	PQfinish(conn);
	return n;
}

class Pipeline : public ::testing::Test
{
  protected:
	void SetUp() override
	{
		auto dsn = env("LOCKEXT_TEST_DSN");
		if (!dsn)
			GTEST_SKIP() << "needs LOCKEXT_TEST_DSN";
		m_dsn = *dsn;
		static std::once_flag once;
		static std::string setup_error;
		std::call_once(once,
					   [&]
					   {
						   setup_error = run_sql(m_dsn, std::string(R"SQL(
CREATE SCHEMA IF NOT EXISTS lockext_pipeline_test;
CREATE OR REPLACE FUNCTION lockext_pipeline_test.try_lock(key text, ttl_ms bigint)
RETURNS public.lock_handle LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF key LIKE 'slow-%' THEN PERFORM pg_sleep(0.8); END IF;
    IF key LIKE 'boom-%' THEN RAISE EXCEPTION 'boom for %', key; END IF;
    RETURN public.try_lock(key, ttl_ms);
END $$;
CREATE OR REPLACE FUNCTION lockext_pipeline_test.renew(key text, lock_id uuid, ttl_ms bigint)
RETURNS boolean LANGUAGE sql VOLATILE AS $$ SELECT public.renew(key, lock_id, ttl_ms) $$;
CREATE OR REPLACE FUNCTION lockext_pipeline_test.release(key text, lock_id uuid)
RETURNS boolean LANGUAGE sql VOLATILE AS $$ SELECT public.release(key, lock_id) $$;
)SQL"));
					   });
		ASSERT_EQ(setup_error, "") << "creating the test wrappers";
	}

	/* A pipelined plugin on the wrappers; app = its application_name. */
	std::unique_ptr<PgLockingPlugin> make(std::size_t connections, const std::string &app,
										  PgOptions options = {})
	{
		options.pipeline = true;
		options.pipeline_connections = connections;
		options.schema = kSchema;
		return std::make_unique<PgLockingPlugin>(m_dsn + " application_name=" + app, options);
	}

	std::string m_dsn;
};

/* One caller's server error (and another's bad input) in the same batches as the
 * other threads' calls: only those calls fail. */
TEST_F(Pipeline, OneCallersErrorNeverFailsAnotherInTheSameBatch)
{
	auto locks = make(1, "lockext-pipe-isolation");
	constexpr int kThreads = 16, kRounds = 150;
	std::atomic<int> wrong{0}, boom_errors{0}, bad_input{0}, grants{0};
	std::mutex log_mutex;
	std::string first_wrong;
	auto note = [&](const std::string &what)
	{
		std::lock_guard g(log_mutex);
		if (wrong++ == 0)
			first_wrong = what;
	};
	std::vector<std::thread> threads;
	for (int t = 0; t < kThreads; ++t)
		threads.emplace_back(
			[&, t]
			{
				for (int i = 0; i < kRounds; ++i)
				{
					if (t == 0)
					{
						auto r = locks->try_lock_outcome("boom-" + std::to_string(i), 10000);
						if (!r && r.error().kind == FailureKind::Server &&
							r.error().sqlstate == "P0001")
							++boom_errors;
						else
							note("boom call: " + (r ? std::string("no error") : r.error().message));
						continue;
					}
					if (t == 1)
					{
						lockext::LockHandle bogus{"k-" + std::to_string(i), "not-a-uuid", 1000, 0};
						auto r = locks->release_outcome(bogus);
						if (!r && r.error().kind == FailureKind::BadInput)
							++bad_input;
						else
							note("bad lock_id: " +
								 (r ? std::string("no error") : r.error().message));
						continue;
					}
					const std::string key = unique_key("iso");
					auto h = locks->try_lock_outcome(key, 10000);
					if (!h || !h->has_value() || (*h)->key != key)
					{
						note("try_lock " + key + ": " +
							 (h ? "contention or wrong key" : h.error().message));
						continue;
					}
					++grants;
					if (auto r = locks->release_outcome(**h); !r)
						note("release: " + r.error().message);
				}
			});
	for (auto &t : threads)
		t.join();
	EXPECT_EQ(wrong.load(), 0) << first_wrong;
	EXPECT_EQ(boom_errors.load(), kRounds);
	EXPECT_EQ(bad_input.load(), kRounds);
	EXPECT_EQ(grants.load(), (kThreads - 2) * kRounds);
}

/* A request whose call deadline passes returns Timeout; its late reply is discarded in
 * order, so later calls on the same connection get their own replies. */
TEST_F(Pipeline, DeadlineExpiryOfOneRequestDoesNotDesynchronise)
{
	PgOptions options;
	options.call_timeout = 400ms;
	auto locks = make(1, "lockext-pipe-deadline", options);
	auto warm = locks->try_lock_outcome(unique_key("warm"), 10000);
	ASSERT_TRUE(warm && warm->has_value()) << (warm ? "contention" : warm.error().message);
	ASSERT_TRUE(locks->release_outcome(**warm));

	const auto started = std::chrono::steady_clock::now();
	auto slow = locks->try_lock_outcome(unique_key("slow"), 10000);
	const auto took = std::chrono::steady_clock::now() - started;
	ASSERT_FALSE(slow) << "the slow try_lock should time out";
	EXPECT_EQ(slow.error().kind, FailureKind::Timeout) << slow.error().message;
	EXPECT_TRUE(slow.error().outcome_unknown) << slow.error().message;
	EXPECT_LT(took, 700ms) << "the deadline was not kept";

	/* Calls queued behind the slow one wait for it (or time out); then every call gets
	 * its own reply, on the same connection. */
	std::this_thread::sleep_for(600ms);
	for (int i = 0; i < 50; ++i)
	{
		const std::string key = unique_key("after");
		auto h = locks->try_lock_outcome(key, 10000);
		ASSERT_TRUE(h) << "call " << i << " after the timeout: " << h.error().message;
		ASSERT_TRUE(h->has_value()) << "call " << i << ": contention on a fresh key";
		EXPECT_EQ((*h)->key, key);
		auto r = locks->release_outcome(**h);
		ASSERT_TRUE(r) << r.error().message;
	}
	EXPECT_EQ(backends_named(m_dsn, "lockext-pipe-deadline"), 1)
		<< "the connection should have been kept";
}

/* pg_terminate_backend of the shared connection's backend while requests are in flight:
 * all of them fail with an unknown outcome, later calls reconnect and succeed. */
TEST_F(Pipeline, TerminatedBackendFailsEveryRequestInFlightAndTheNextCallsReconnect)
{
	const std::string app = "lockext-pipe-terminate";
	auto locks = make(1, app);
	auto warm = locks->try_lock_outcome(unique_key("warm"), 10000);
	ASSERT_TRUE(warm && warm->has_value());
	ASSERT_TRUE(locks->release_outcome(**warm));

	constexpr int kInFlight = 6;
	std::vector<lockext::Outcome<std::optional<lockext::LockHandle>>> results(kInFlight);
	std::vector<std::thread> threads;
	/* The first one holds the server for 0.8 s; the others are sent behind it. */
	threads.emplace_back([&] { results[0] = locks->try_lock_outcome(unique_key("slow"), 10000); });
	std::this_thread::sleep_for(150ms);
	for (int i = 1; i < kInFlight; ++i)
		threads.emplace_back(
			[&, i] { results[i] = locks->try_lock_outcome(unique_key("behind"), 10000); });
	std::this_thread::sleep_for(150ms);
	ASSERT_EQ(run_sql(m_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
							 "WHERE application_name = '" +
								 app + "'"),
			  "");
	for (auto &t : threads)
		t.join();
	for (int i = 0; i < kInFlight; ++i)
	{
		ASSERT_FALSE(results[i]) << "request " << i << " should have failed";
		EXPECT_EQ(results[i].error().kind, FailureKind::ConnectionLost)
			<< i << ": " << results[i].error().message;
		EXPECT_TRUE(results[i].error().outcome_unknown) << i << ": " << results[i].error().message;
	}
	for (int i = 0; i < 20; ++i)
	{
		auto h = locks->try_lock_outcome(unique_key("again"), 10000);
		ASSERT_TRUE(h) << "call " << i << " after the terminate: " << h.error().message;
		ASSERT_TRUE(h->has_value());
		ASSERT_TRUE(locks->release_outcome(**h));
	}
}

/* Through PgBouncer 1.18 in transaction mode with the default options (named statements
 * until the pooler shows, then unnamed): many threads, every reply is the caller's. */
TEST_F(Pipeline, WorksThroughPgBouncerTransactionPooling)
{
	auto dsn = env("LOCKEXT_TEST_PGBOUNCER_DSN");
	if (!dsn)
		GTEST_SKIP() << "needs LOCKEXT_TEST_PGBOUNCER_DSN";
	PgOptions options;
	options.pipeline = true;
	options.on_log = [](std::string_view) {};
	PgLockingPlugin locks(*dsn, options);
	std::atomic<int> wrong{0}, grants{0};
	std::mutex m;
	std::string first;
	std::vector<std::thread> threads;
	for (int t = 0; t < 16; ++t)
		threads.emplace_back(
			[&]
			{
				for (int i = 0; i < 100; ++i)
				{
					const std::string key = unique_key("bouncer");
					auto h = locks.try_lock_outcome(key, 10000);
					std::string why;
					if (!h)
						why = h.error().message;
					else if (!h->has_value() || (*h)->key != key)
						why = "contention or wrong key";
					else if (auto r = locks.renew_outcome(**h); !r)
						why = "renew: " + r.error().message;
					else if (auto r2 = locks.release_outcome(**h); !r2)
						why = "release: " + r2.error().message;
					else
						++grants;
					if (!why.empty())
					{
						std::lock_guard g(m);
						if (wrong++ == 0)
							first = why;
					}
				}
			});
	for (auto &t : threads)
		t.join();
	EXPECT_EQ(wrong.load(), 0) << first;
	EXPECT_EQ(grants.load(), 1600);
}

/* 32 threads on one hot key through two shared connections: never two holders. */
TEST_F(Pipeline, ManyThreadsOnOneHotKeyNeverOverlap)
{
	PgLockingPlugin locks(m_dsn,
						  []
						  {
							  PgOptions o;
							  o.pipeline = true;
							  o.pipeline_connections = 2;
							  return o;
						  }());
	const std::string key = unique_key("hot");
	std::atomic<int> holders{0}, overlaps{0}, errors{0}, grants{0};
	std::atomic<std::int64_t> last_fence{0};
	std::atomic<int> fence_regressions{0};
	const auto stop = std::chrono::steady_clock::now() + 2s;
	std::vector<std::thread> threads;
	for (int t = 0; t < 32; ++t)
		threads.emplace_back(
			[&]
			{
				while (std::chrono::steady_clock::now() < stop)
				{
					auto h = locks.try_lock_outcome(key, 10000);
					if (!h)
					{
						++errors;
						continue;
					}
					if (!h->has_value())
						continue;
					if (holders.fetch_add(1) != 0)
						++overlaps;
					++grants;
					const std::int64_t fence = (*h)->fence;
					if (last_fence.exchange(fence) >= fence)
						++fence_regressions;
					std::this_thread::sleep_for(100us);
					holders.fetch_sub(1);
					if (!locks.release_outcome(**h))
						++errors;
				}
			});
	for (auto &t : threads)
		t.join();
	EXPECT_EQ(overlaps.load(), 0);
	EXPECT_EQ(errors.load(), 0);
	EXPECT_EQ(fence_regressions.load(), 0);
	EXPECT_GT(grants.load(), 10);
}

/* cleanup() while calls are in flight (some held 0.8 s on the server): every call returns
 * promptly, later calls fail, and destruction is clean (run under ASan/TSan). */
TEST_F(Pipeline, CleanupWithCallsInFlightReturnsEveryCall)
{
	auto locks = make(2, "lockext-pipe-cleanup");
	std::atomic<bool> stop{false};
	std::atomic<int> returned_after_cleanup{0}, unexpected_kind{0};
	std::vector<std::thread> threads;
	for (int t = 0; t < 12; ++t)
		threads.emplace_back(
			[&, t]
			{
				while (!stop.load())
				{
					auto h =
						locks->try_lock_outcome(unique_key(t % 3 == 0 ? "slow" : "fast"), 10000);
					if (h && h->has_value())
						(void) locks->release_outcome(**h);
					if (!h && h.error().kind != FailureKind::ConnectionLost &&
						h.error().kind != FailureKind::Config)
						++unexpected_kind;
				}
				++returned_after_cleanup;
			});
	std::this_thread::sleep_for(300ms);
	const auto before = std::chrono::steady_clock::now();
	ASSERT_TRUE(locks->cleanup());
	EXPECT_LT(std::chrono::steady_clock::now() - before, 2s)
		<< "cleanup() should not wait for the server";
	stop = true;
	for (auto &t : threads)
		t.join();
	EXPECT_LT(std::chrono::steady_clock::now() - before, 3s)
		<< "calls in flight should return promptly";
	EXPECT_EQ(returned_after_cleanup.load(), 12);
	EXPECT_EQ(unexpected_kind.load(), 0);
	auto later = locks->try_lock_outcome(unique_key("late"), 10000);
	ASSERT_FALSE(later);
	EXPECT_EQ(later.error().kind, FailureKind::Config) << later.error().message;
	locks.reset();
}

} // namespace
