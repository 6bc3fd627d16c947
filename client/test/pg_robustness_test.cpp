/*
 * pg_robustness_test.cpp
 *     The pg backend against servers and proxies that misbehave (issue 10, items 4, 6,
 *     8, 9): a relay that stalls mid-reply, connect failures and their classification,
 *     connect_timeout precedence, PgBouncer in transaction mode with the default
 *     options, grace_status().
 *
 * Needs LOCKEXT_TEST_DSN (keyword/value with port=); PgBouncer cases need
 * LOCKEXT_TEST_PGBOUNCER_DSN. Linked into lockext_pg_test.
 */
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <libpq-fe.h>

#include <lockext/errors.hpp>
#include <lockext/lease_keeper.hpp>
#include <lockext/pg_locking_plugin.hpp>

#include "test_support.hpp"

using namespace std::chrono_literals;
using lockext::BootClock;
using lockext::FailureKind;
using lockext::LockHandle;
using lockext::PgLockingPlugin;
using lockext::PgOptions;
using lockext::test::env;
using lockext::test::StallingRelay;

namespace
{

std::string
key(const std::string &suffix = "k")
{
	return lockext::test::unique_key(lockext::test::current_test_name() + "-" + suffix);
}

/* The relay's conninfo for the server of LOCKEXT_TEST_DSN. */
std::string
relay_dsn(const StallingRelay &relay)
{
	return "host=127.0.0.1 port=" + std::to_string(relay.port()) +
		   " dbname=postgres user=postgres sslmode=disable";
}

#define DSN_OR_SKIP(var)                                                                           \
	auto var = env("LOCKEXT_TEST_DSN");                                                            \
	if (!var)                                                                                      \
		GTEST_SKIP() << "LOCKEXT_TEST_DSN is not set";

/* Runs f on a thread and waits at most bound for it: a hang fails the test instead of
 * the whole binary (the thread is then left behind, detached). */
template <class F>
bool
finishes_within(std::chrono::milliseconds bound, F f)
{
	auto done = std::make_shared<std::atomic<bool>>(false);
	std::thread t(
		[done, f = std::move(f)]() mutable
		{
			f();
			*done = true;
		});
	const auto until = BootClock::now() + bound;
	while (!*done && BootClock::now() < until)
		std::this_thread::sleep_for(10ms);
	if (*done)
	{
		t.join();
		return true;
	}
	t.detach();
	return false;
}

/* Runs sql on dsn with a plain libpq connection; "" on success, else the error. */
std::string
exec_sql(const std::string &dsn, const std::string &sql)
{
	PGconn *conn = PQconnectdb(dsn.c_str());
	PQsetNoticeProcessor(
		conn, [](void *, const char *) {}, nullptr);
	std::string err;
	if (PQstatus(conn) != CONNECTION_OK)
		err = PQerrorMessage(conn);
	else
	{
		PGresult *res = PQexec(conn, sql.c_str());
		if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
			err = PQresultErrorMessage(res);
		PQclear(res);
	}
	PQfinish(conn);
	return err;
}

} // namespace

/* Item 8: a 25006 reply (a standby, or a read-only server after failover) drops the
 * connection from the pool, so the next call connects anew; other server errors keep
 * it. A stand-in try_lock in its own schema raises 25006 for key 'ro' and returns the
 * backend's pid as the fence otherwise. */
TEST(PgBackend, ReadOnlyReplyDropsTheConnection)
{
	DSN_OR_SKIP(dsn);
	const std::string schema = "lockext_fake_ro";
	ASSERT_EQ(exec_sql(*dsn, "DROP SCHEMA IF EXISTS " + schema + " CASCADE; CREATE SCHEMA " +
								 schema + "; CREATE FUNCTION " + schema +
								 ".try_lock(k text, t bigint) RETURNS public.lock_handle "
								 "LANGUAGE plpgsql AS $$ BEGIN "
								 "IF k = 'ro' THEN RAISE EXCEPTION 'read only' USING ERRCODE = "
								 "'25006'; END IF; IF k = 'bad' THEN RAISE EXCEPTION 'bad' USING "
								 "ERRCODE = '22023'; END IF; RETURN ROW(k, gen_random_uuid(), t, "
								 "pg_backend_pid(), now())::public.lock_handle; END $$"),
			  "");
	PgOptions options;
	options.pool_size = 1;
	options.schema = schema;
	PgLockingPlugin pg(*dsn, options);
	auto pid_of = [&](const char *k) -> std::int64_t
	{
		auto r = pg.try_lock(k, 1000);
		EXPECT_TRUE(r && r->has_value()) << (r ? "contention" : r.error());
		return r && r->has_value() ? (*r)->fence : -1;
	};
	const std::int64_t first = pid_of("a");
	auto bad = pg.try_lock_outcome("bad", 1000);
	ASSERT_FALSE(bad.has_value());
	EXPECT_EQ(bad.error().kind, FailureKind::BadInput);
	EXPECT_EQ(pid_of("b"), first) << "a 22023 must keep the connection";
	auto ro = pg.try_lock_outcome("ro", 1000);
	ASSERT_FALSE(ro.has_value());
	EXPECT_EQ(ro.error().sqlstate, "25006");
	EXPECT_EQ(ro.error().kind, FailureKind::Unreachable) << ro.error().message;
	EXPECT_TRUE(ro.error().retryable()) << "the next call moves on: retrying must be allowed";
	EXPECT_NE(pid_of("c"), first) << "a 25006 must drop the connection from the pool";
	EXPECT_EQ(exec_sql(*dsn, "DROP SCHEMA " + schema + " CASCADE"), "");
}

/* Item 8: 53300 at connect (too many connections) is Capacity, with its SQLSTATE. */
TEST(PgConnect, TooManyConnectionsIsCapacity)
{
	DSN_OR_SKIP(dsn);
	(void) exec_sql(*dsn, "DROP ROLE IF EXISTS lockext_no_conn");
	ASSERT_EQ(exec_sql(*dsn, "CREATE ROLE lockext_no_conn LOGIN CONNECTION LIMIT 0"), "");
	const std::string base = "host=127.0.0.1 port=" + std::to_string(lockext::test::port_of(*dsn));
	PgLockingPlugin pg(base + " dbname=postgres user=lockext_no_conn");
	auto r = pg.try_lock_outcome(key(), 1000);
	ASSERT_FALSE(r.has_value());
	EXPECT_EQ(r.error().sqlstate, "53300") << r.error().message;
	EXPECT_EQ(r.error().kind, FailureKind::Capacity) << r.error().message;
	EXPECT_TRUE(r.error().retryable());
	EXPECT_EQ(exec_sql(*dsn, "DROP ROLE lockext_no_conn"), "");
}

/* Item 6: the server sends ErrorResponse and then nothing (no ReadyForQuery). The call
 * must end at its statement deadline with a Timeout, not hang in PQgetResult. */
TEST(PgStall, ErrorResponseThenStallTimesOutAtTheDeadline)
{
	DSN_OR_SKIP(dsn);
	StallingRelay relay(lockext::test::port_of(*dsn));
	for (bool prepared : {true, false})
	{
		PgOptions options;
		options.pool_size = 1;
		options.statement_timeout = 400ms;
		options.prepared_statements = prepared;
		auto pg = std::make_shared<PgLockingPlugin>(relay_dsn(relay), options);
		auto warm = pg->try_lock(key(), 1000); // opens the pooled connection
		ASSERT_TRUE(warm && warm->has_value()) << (warm ? "contention" : warm.error());
		ASSERT_TRUE(pg->release(**warm).has_value());

		relay.stall_after('E');
		auto outcome = std::make_shared<lockext::Outcome<std::optional<LockHandle>>>();
		const auto start = BootClock::now();
		const bool finished =
			finishes_within(5s, [pg, outcome] { *outcome = pg->try_lock_outcome(key(), 300001); });
		ASSERT_TRUE(finished) << "try_lock hung after an ErrorResponse without ReadyForQuery";
		const auto took = BootClock::now() - start;
		ASSERT_FALSE(outcome->has_value());
		EXPECT_EQ(outcome->error().kind, FailureKind::Timeout) << outcome->error().message;
		EXPECT_TRUE(outcome->error().message.find("statement_timeout") != std::string::npos)
			<< outcome->error().message;
		EXPECT_LT(took, 400ms + 600ms);
		EXPECT_GE(took, 350ms);

		// The stalled connection was discarded: the next call works on a new one.
		auto next = pg->try_lock(key(), 1000);
		ASSERT_TRUE(next && next->has_value()) << (next ? "contention" : next.error());
		EXPECT_TRUE(pg->release(**next).has_value());
	}
}

/* Item 6: a reply that stalls after CommandComplete (no ReadyForQuery) while the lease
 * keeper renews: the renew times out, and stop() returns promptly. */
TEST(PgStall, KeeperStopReturnsWhileARenewStalls)
{
	DSN_OR_SKIP(dsn);
	StallingRelay relay(lockext::test::port_of(*dsn));
	PgOptions options;
	options.pool_size = 1;
	options.statement_timeout = 500ms;
	auto pg = std::make_shared<PgLockingPlugin>(relay_dsn(relay), options);
	const auto before = BootClock::now();
	auto h = pg->try_lock(key(), 3000);
	ASSERT_TRUE(h && h->has_value()) << (h ? "contention" : h.error());
	lockext::LeaseKeeperOptions ko;
	ko.interval = 300ms;
	auto keeper = std::make_shared<lockext::LeaseKeeper>(
		*pg, **h, lockext::LeaseKeeper::LostCallback{}, ko, before);
	relay.stall_after('C');
	const auto limit = BootClock::now() + 3s;
	while (relay.stalled() == 0 && BootClock::now() < limit)
		std::this_thread::sleep_for(10ms);
	ASSERT_GT(relay.stalled(), 0) << "the keeper's renew never reached the relay";
	const auto start = BootClock::now();
	ASSERT_TRUE(finishes_within(5s, [keeper] { keeper->stop(); }))
		<< "LeaseKeeper::stop() hung behind a stalled renew";
	EXPECT_LT(BootClock::now() - start, 500ms + 700ms);
	auto rel = pg->release(**h);
	EXPECT_TRUE(rel.has_value()) << rel.error();
}

/* Item 8: a connect failure carries the server's SQLSTATE and is classified. */
TEST(PgConnect, ServerRefusalsCarryTheirSqlstate)
{
	DSN_OR_SKIP(dsn);
	const std::string base = "host=127.0.0.1 port=" + std::to_string(lockext::test::port_of(*dsn));
	{
		PgLockingPlugin pg(base + " dbname=lockext_no_such_db user=postgres");
		auto r = pg.try_lock_outcome(key(), 1000);
		ASSERT_FALSE(r.has_value());
		EXPECT_EQ(r.error().sqlstate, "3D000") << r.error().message;
		EXPECT_EQ(r.error().kind, FailureKind::Config) << r.error().message;
		EXPECT_EQ(pg.try_lock(key(), 1000).error(), r.error().message)
			<< "string and classified calls must agree";
	}
	{
		PgLockingPlugin pg(base + " dbname=postgres user=lockext_no_such_role");
		auto r = pg.try_lock_outcome(key(), 1000);
		ASSERT_FALSE(r.has_value());
		EXPECT_EQ(r.error().sqlstate, "28000") << r.error().message;
		EXPECT_EQ(r.error().kind, FailureKind::AuthFailed) << r.error().message;
		EXPECT_FALSE(r.error().retryable());
	}
}

/* Item 8: refused, malformed. */
TEST(PgConnect, RefusedIsUnreachableAndAMalformedConninfoIsConfig)
{
	{
		PgOptions options;
		options.connect_timeout = 2s;
		PgLockingPlugin pg("host=127.0.0.1 port=1 dbname=postgres", options);
		auto r =
			pg.renew_outcome(LockHandle{key(), "00000000-0000-4000-8000-000000000000", 1000, 1});
		ASSERT_FALSE(r.has_value());
		EXPECT_EQ(r.error().kind, FailureKind::Unreachable) << r.error().message;
		EXPECT_EQ(r.error().sqlstate, "");
		EXPECT_TRUE(r.error().retryable());
	}
	for (const char *bad : {"host=127.0.0.1 port", "postgresql://[::1", "nosuchkeyword=1"})
	{
		PgLockingPlugin pg(bad);
		auto r = pg.try_lock_outcome(key(), 1000);
		ASSERT_FALSE(r.has_value()) << bad;
		EXPECT_EQ(r.error().kind, FailureKind::Config) << bad << ": " << r.error().message;
		EXPECT_TRUE(r.error().message.starts_with("try_lock failed: invalid connection string: "))
			<< r.error().message;
	}
}

namespace
{

/* A listening socket that never accepts: TCP connects (kernel backlog), the startup
 * packet is never answered. */
struct SilentListener
{
	int fd = -1;
	int port = 0;
	SilentListener()
	{
		fd = socket(AF_INET, SOCK_STREAM, 0);
		sockaddr_in a{};
		a.sin_family = AF_INET;
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
		listen(fd, 16);
		socklen_t len = sizeof a;
		getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
		port = ntohs(a.sin_port);
	}
	~SilentListener()
	{
		close(fd);
	}
};

} // namespace

/* Item 8: PgOptions::connect_timeout is only a default: PGCONNECT_TIMEOUT (and the
 * conninfo) win. */
TEST(PgConnect, ConnectTimeoutFromTheEnvironmentWinsOverTheOption)
{
	SilentListener silent;
	PgOptions options;
	options.connect_timeout = 30s;
	options.statement_timeout = 60000ms;
	const std::string dsn =
		"host=127.0.0.1 port=" + std::to_string(silent.port) + " dbname=postgres sslmode=disable";
	::setenv("PGCONNECT_TIMEOUT", "2", 1);
	PgLockingPlugin pg(dsn, options);
	const auto start = BootClock::now();
	auto r = pg.try_lock_outcome(key(), 1000);
	const auto took = BootClock::now() - start;
	::unsetenv("PGCONNECT_TIMEOUT");
	ASSERT_FALSE(r.has_value());
	EXPECT_EQ(r.error().kind, FailureKind::Unreachable) << r.error().message;
	EXPECT_GE(took, 1900ms);
	EXPECT_LT(took, 6s) << "PGCONNECT_TIMEOUT=2 was overridden by connect_timeout = 30 s";

	// In the conninfo too; and without either, the option applies.
	PgLockingPlugin in_conninfo(dsn + " connect_timeout=2", options);
	const auto start2 = BootClock::now();
	EXPECT_FALSE(in_conninfo.try_lock(key(), 1000).has_value());
	EXPECT_LT(BootClock::now() - start2, 6s);
	options.connect_timeout = 2s;
	PgLockingPlugin by_option(dsn, options);
	const auto start3 = BootClock::now();
	EXPECT_FALSE(by_option.try_lock(key(), 1000).has_value());
	EXPECT_LT(BootClock::now() - start3, 6s);
	EXPECT_GE(BootClock::now() - start3, 1900ms);
}

/* Failover through a multi-host conninfo still moves on to the next host when the first
 * one does not answer within connect_timeout (per host, as libpq's blocking connect
 * does), also with the asynchronous connect. */
TEST(PgConnect, MultiHostMovesOnFromASilentHostAfterConnectTimeout)
{
	DSN_OR_SKIP(dsn);
	SilentListener silent;
	PgOptions options;
	options.connect_timeout = 2s;
	const std::string multi = "host=127.0.0.1,127.0.0.1 port=" + std::to_string(silent.port) + "," +
							  std::to_string(lockext::test::port_of(*dsn)) +
							  " dbname=postgres user=postgres sslmode=disable";
	PgLockingPlugin pg(multi, options);
	const auto start = BootClock::now();
	auto r = pg.try_lock(key(), 1000);
	const auto took = BootClock::now() - start;
	ASSERT_TRUE(r.has_value()) << r.error();
	ASSERT_TRUE(r->has_value());
	EXPECT_GE(took, 1900ms);
	EXPECT_LT(took, 5s);
	EXPECT_TRUE(pg.release(**r).has_value());

	// Both silent: the error names the timeouts.
	SilentListener silent2;
	PgLockingPlugin none("host=127.0.0.1,127.0.0.1 port=" + std::to_string(silent.port) + "," +
							 std::to_string(silent2.port) + " dbname=postgres sslmode=disable",
						 options);
	auto failed = none.try_lock_outcome(key(), 1000);
	ASSERT_FALSE(failed.has_value());
	EXPECT_EQ(failed.error().kind, FailureKind::Unreachable) << failed.error().message;
	EXPECT_NE(failed.error().message.find("timeout expired"), std::string::npos)
		<< failed.error().message;
}

/* Item 4: PgBouncer 1.18 in transaction mode with the DEFAULT options: several plugin
 * instances (as separate runs of a program would be) all work; each that hits the
 * clash switches to unnamed statements and says so once. */
TEST(PgBouncer, DefaultOptionsWorkForEveryInstanceAndTheSwitchIsLoggedOnce)
{
	auto dsn = env("LOCKEXT_TEST_PGBOUNCER_DSN");
	if (!dsn)
		GTEST_SKIP() << "LOCKEXT_TEST_PGBOUNCER_DSN is not set";
	std::atomic<int> lines{0};
	std::string first_line;
	std::mutex mutex;
	auto make = [&]
	{
		PgOptions options; // defaults: prepared_statements = true
		options.pool_size = 1;
		options.on_log = [&](std::string_view line)
		{
			std::lock_guard g(mutex);
			if (lines++ == 0)
				first_line = line;
		};
		return std::make_unique<PgLockingPlugin>(*dsn, options);
	};
	std::vector<std::unique_ptr<PgLockingPlugin>> plugins;
	for (int i = 0; i < 3; ++i)
		plugins.push_back(make());
	for (int round = 0; round < 10; ++round)
		for (auto &pg : plugins)
		{
			auto r = pg->try_lock(key(std::to_string(round)), 10000);
			ASSERT_TRUE(r.has_value()) << r.error();
			ASSERT_TRUE(r->has_value()) << "a fresh key reported as contention";
			auto renewed = pg->renew(**r);
			EXPECT_TRUE(renewed.has_value()) << renewed.error();
			auto rel = pg->release(**r);
			EXPECT_TRUE(rel.has_value()) << rel.error();
		}
	EXPECT_LE(lines.load(), 3) << "at most one line per plugin instance";
	EXPECT_GE(lines.load(), 1) << "the pooler should have shown itself";
	std::lock_guard g(mutex);
	EXPECT_NE(first_line.find("switching to unnamed statements"), std::string::npos) << first_line;
}

/* Item 4: LOCKEXT_PREPARED_STATEMENTS=on keeps named statements (no fallback): the
 * pooler's error comes back classified Config, never as contention. */
TEST(PgBouncer, ForcedNamedStatementsFailClearlyNeverWrongly)
{
	auto dsn = env("LOCKEXT_TEST_PGBOUNCER_DSN");
	if (!dsn)
		GTEST_SKIP() << "LOCKEXT_TEST_PGBOUNCER_DSN is not set";
	::setenv("LOCKEXT_PREPARED_STATEMENTS", "on", 1);
	PgOptions named;
	named.pool_size = 1;
	PgLockingPlugin a(*dsn, named);
	PgLockingPlugin b(*dsn, named);
	::unsetenv("LOCKEXT_PREPARED_STATEMENTS");
	int errors = 0;
	for (int i = 0; i < 20; ++i)
	{
		PgLockingPlugin &pg = i % 2 ? a : b;
		auto r = pg.try_lock_outcome(key(std::to_string(i)), 10000);
		if (!r)
		{
			++errors;
			EXPECT_EQ(r.error().kind, FailureKind::Config) << r.error().message;
			EXPECT_NE(r.error().message.find("prepared_statements = false"), std::string::npos)
				<< r.error().message;
			continue;
		}
		ASSERT_TRUE(r->has_value()) << "a fresh key reported as contention: a wrong answer";
		(void) pg.release(**r);
	}
	EXPECT_GT(errors, 0) << "expected named statements to clash through the pooler";
}

/* grace_status() reads lockext_grace(); a running server is not in a grace period. */
TEST(PgBackend, GraceStatusIsReadable)
{
	DSN_OR_SKIP(dsn);
	PgLockingPlugin pg(*dsn);
	auto g = pg.grace_status();
	ASSERT_TRUE(g.has_value()) << g.error().message;
	EXPECT_FALSE(g->active) << g->reason;
	EXPECT_GE(g->remaining_ms, 0);
}

namespace
{

/*
 * A fake PostgreSQL server on 127.0.0.1: for every connection it answers an SSLRequest
 * or GSSENCRequest with 'N' (not supported), then replies to the startup packet with
 * the scripted bytes and keeps the connection open until the client closes it.
 */
class FakeServer
{
  public:
	explicit FakeServer(std::string reply) : m_reply(std::move(reply))
	{
		m_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		sockaddr_in a{};
		a.sin_family = AF_INET;
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		bind(m_fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
		listen(m_fd, 16);
		socklen_t len = sizeof a;
		getsockname(m_fd, reinterpret_cast<sockaddr *>(&a), &len);
		m_port = ntohs(a.sin_port);
		m_thread = std::thread([this] { run(); });
	}
	~FakeServer()
	{
		m_stop = true;
		shutdown(m_fd, SHUT_RDWR);
		m_thread.join();
		close(m_fd);
	}
	int port() const noexcept
	{
		return m_port;
	}

	/* An ErrorResponse with the given (localized) severity, SQLSTATE and message. */
	static std::string error_response(const std::string &severity, const std::string &code,
									  const std::string &message)
	{
		std::string body = "S" + severity + '\0' + "VFATAL" + '\0' + "C" + code + '\0' + "M" +
						   message + '\0' + '\0';
		return "E" + be32(static_cast<std::uint32_t>(body.size() + 4)) + body;
	}
	/* AuthenticationCleartextPassword. */
	static std::string password_request()
	{
		return "R" + be32(8) + be32(3);
	}

  private:
	static std::string be32(std::uint32_t v)
	{
		const std::uint32_t n = htonl(v);
		return std::string(reinterpret_cast<const char *>(&n), 4);
	}
	static bool read_n(int fd, char *buf, std::size_t n)
	{
		while (n > 0)
		{
			const ssize_t r = read(fd, buf, n);
			if (r <= 0)
				return false;
			buf += r;
			n -= static_cast<std::size_t>(r);
		}
		return true;
	}
	void run()
	{
		while (!m_stop)
		{
			const int c = accept(m_fd, nullptr, nullptr);
			if (c < 0)
				return;
			for (;;) // startup packets: length, code, rest
			{
				char head[8];
				if (!read_n(c, head, 8))
					break;
				std::uint32_t len, code;
				std::memcpy(&len, head, 4);
				std::memcpy(&code, head + 4, 4);
				len = ntohl(len);
				code = ntohl(code);
				std::string rest(len > 8 ? len - 8 : 0, '\0');
				if (!rest.empty() && !read_n(c, rest.data(), rest.size()))
					break;
				if (code == 80877103 || code == 80877104) // SSLRequest, GSSENCRequest
				{
					(void) !write(c, "N", 1);
					continue;
				}
				(void) !write(c, m_reply.data(), m_reply.size());
				char sink[256];
				while (read(c, sink, sizeof sink) > 0)
				{
				}
				break;
			}
			close(c);
		}
	}

	std::string m_reply;
	int m_fd = -1;
	int m_port = 0;
	std::atomic<bool> m_stop{false};
	std::thread m_thread;
};

std::string
fake_dsn(const FakeServer &server, const std::string &extra = "sslmode=disable")
{
	return "host=127.0.0.1 port=" + std::to_string(server.port()) +
		   " dbname=postgres user=lockext_pw gssencmode=disable " + extra;
}

} // namespace

/* Connect refusals from a server with localized messages (lc_messages): the severity
 * word is translated, the SQLSTATE is what classifies. The fake server sends exactly
 * what such a server sends, and libpq formats it. */
TEST(PgConnect, LocalizedRefusalsAreClassifiedBySqlstate)
{
	const std::pair<const char *, const char *> samples[] = {
		{"ВАЖНО", "пользователь \"lockext_pw\" не прошёл проверку подлинности (по паролю)"},
		{"致命错误", "用户 \"lockext_pw\" Password 认证失败"},
		{"FATAL", "password authentication failed for user \"lockext_pw\""},
	};
	for (const auto &[severity, text] : samples)
	{
		FakeServer server(FakeServer::error_response(severity, "28P01", text));
		PgLockingPlugin pg(fake_dsn(server));
		auto r = pg.try_lock_outcome(key(), 1000);
		ASSERT_FALSE(r.has_value());
		EXPECT_EQ(r.error().sqlstate, "28P01") << severity << ": " << r.error().message;
		EXPECT_EQ(r.error().kind, FailureKind::AuthFailed) << severity << ": " << r.error().message;
		EXPECT_FALSE(r.error().retryable());
	}
	FakeServer db(FakeServer::error_response("ERREUR", "3D000", "la base n'existe pas"));
	PgLockingPlugin pg(fake_dsn(db));
	auto r = pg.try_lock_outcome(key(), 1000);
	ASSERT_FALSE(r.has_value());
	EXPECT_EQ(r.error().kind, FailureKind::Config) << r.error().message;
}

/* A server that asks for a password when none is configured ("fe_sendauth: no password
 * supplied", PQconnectionNeedsPassword) is AuthFailed; SSL required but not offered by
 * the server is Config. Neither is worth retrying. */
TEST(PgConnect, NoPasswordIsAuthFailedAndSslRequiredIsConfig)
{
	::setenv("PGPASSFILE", "/nonexistent/lockext-pgpass", 1);
	::unsetenv("PGPASSWORD");
	{
		FakeServer server(FakeServer::password_request());
		PgLockingPlugin pg(fake_dsn(server));
		auto r = pg.try_lock_outcome(key(), 1000);
		ASSERT_FALSE(r.has_value());
		EXPECT_EQ(r.error().kind, FailureKind::AuthFailed) << r.error().message;
		EXPECT_NE(r.error().message.find("no password supplied"), std::string::npos)
			<< r.error().message;
		EXPECT_FALSE(r.error().retryable());
	}
	::unsetenv("PGPASSFILE");
	{
		FakeServer server(FakeServer::password_request());
		PgLockingPlugin pg(fake_dsn(server, "sslmode=require"));
		auto r = pg.try_lock_outcome(key(), 1000);
		ASSERT_FALSE(r.has_value());
		EXPECT_EQ(r.error().kind, FailureKind::Config) << r.error().message;
		EXPECT_NE(r.error().message.find("SSL"), std::string::npos) << r.error().message;
		EXPECT_FALSE(r.error().retryable());
	}
}

/* One deadline covers the whole call: with PGCONNECT_TIMEOUT=0 (no per-host connect
 * timeout) and a server that accepts and never answers, a call returns a Timeout at
 * the call deadline (default: acquire_timeout + connect_timeout + statement_timeout),
 * and LeaseKeeper::stop() behind such a renew returns too. */
TEST(PgConnect, CallDeadlineBoundsConnectingWithoutAConnectTimeout)
{
	SilentListener silent;
	::setenv("PGCONNECT_TIMEOUT", "0", 1);
	PgOptions options;
	options.acquire_timeout = 200ms;
	options.connect_timeout = 1s;
	options.statement_timeout = 500ms; // derived call deadline: 1.7 s
	auto pg = std::make_shared<PgLockingPlugin>(
		"host=127.0.0.1 port=" + std::to_string(silent.port) + " dbname=postgres sslmode=disable",
		options);
	auto outcome = std::make_shared<lockext::Outcome<std::optional<LockHandle>>>();
	auto start = BootClock::now();
	const bool finished =
		finishes_within(6s, [pg, outcome] { *outcome = pg->try_lock_outcome(key(), 1000); });
	auto took = BootClock::now() - start;
	ASSERT_TRUE(finished) << "try_lock hung connecting with PGCONNECT_TIMEOUT=0";
	ASSERT_FALSE(outcome->has_value());
	EXPECT_EQ(outcome->error().kind, FailureKind::Timeout) << outcome->error().message;
	EXPECT_FALSE(outcome->error().outcome_unknown) << "nothing was sent";
	EXPECT_NE(outcome->error().message.find("call_timeout"), std::string::npos)
		<< outcome->error().message;
	EXPECT_GE(took, 1600ms);
	EXPECT_LT(took, 1700ms + 700ms);

	// An explicit call_timeout, and the keeper's stop() behind a renew that connects.
	options.call_timeout = 800ms;
	auto pg2 = std::make_shared<PgLockingPlugin>(
		"host=127.0.0.1 port=" + std::to_string(silent.port) + " dbname=postgres sslmode=disable",
		options);
	start = BootClock::now();
	auto r = pg2->renew_outcome(LockHandle{key(), "00000000-0000-4000-8000-000000000000", 5000, 1});
	took = BootClock::now() - start;
	ASSERT_FALSE(r.has_value());
	EXPECT_EQ(r.error().kind, FailureKind::Timeout) << r.error().message;
	EXPECT_LT(took, 800ms + 600ms);
	lockext::LeaseKeeperOptions ko;
	ko.interval = 100ms;
	auto keeper = std::make_shared<lockext::LeaseKeeper>(
		*pg2, LockHandle{key(), "00000000-0000-4000-8000-000000000000", 5000, 1},
		lockext::LeaseKeeper::LostCallback{}, ko, BootClock::now() - 1s);
	std::this_thread::sleep_for(100ms); // the renew is connecting now
	start = BootClock::now();
	const bool stopped = finishes_within(6s, [keeper] { keeper->stop(); });
	took = BootClock::now() - start;
	::unsetenv("PGCONNECT_TIMEOUT");
	ASSERT_TRUE(stopped) << "LeaseKeeper::stop() hung behind a renew that never connects";
	EXPECT_LT(took, 800ms + 600ms);
}

/* The call deadline also caps the statement: statement_timeout 5 s, call_timeout
 * 600 ms, a reply that stalls after CommandComplete. */
TEST(PgStall, CallTimeoutCapsTheStatement)
{
	DSN_OR_SKIP(dsn);
	StallingRelay relay(lockext::test::port_of(*dsn));
	PgOptions options;
	options.pool_size = 1;
	options.statement_timeout = 5000ms;
	options.call_timeout = 600ms;
	PgLockingPlugin pg(relay_dsn(relay), options);
	auto warm = pg.try_lock(key(), 1000);
	ASSERT_TRUE(warm && warm->has_value()) << (warm ? "contention" : warm.error());
	relay.stall_after('C');
	const auto start = BootClock::now();
	auto r = pg.release_outcome(**warm);
	const auto took = BootClock::now() - start;
	ASSERT_FALSE(r.has_value());
	EXPECT_EQ(r.error().kind, FailureKind::Timeout) << r.error().message;
	EXPECT_NE(r.error().message.find("call_timeout"), std::string::npos) << r.error().message;
	EXPECT_LT(took, 600ms + 500ms);
}

/* A reply that stalls after ParseComplete (the statement was being prepared, nothing
 * executed): a plain Timeout whose outcome is known, no "a lease may have been
 * granted". */
TEST(PgStall, TimeoutWhilePreparingIsNotOutcomeUnknown)
{
	DSN_OR_SKIP(dsn);
	StallingRelay relay(lockext::test::port_of(*dsn));
	PgOptions options;
	options.pool_size = 1;
	options.statement_timeout = 400ms;
	options.prepared_statements = true;
	PgLockingPlugin pg(relay_dsn(relay), options);
	// Opens the pooled connection and prepares only release on it.
	auto warm =
		pg.release_outcome(LockHandle{key(), "00000000-0000-4000-8000-000000000000", 1000, 1});
	ASSERT_TRUE(warm.has_value()) << warm.error().message;
	relay.stall_after('1'); // ParseComplete
	auto r = pg.try_lock_outcome(key(), 1000);
	ASSERT_FALSE(r.has_value());
	EXPECT_EQ(r.error().kind, FailureKind::Timeout) << r.error().message;
	EXPECT_FALSE(r.error().outcome_unknown) << r.error().message;
	EXPECT_EQ(r.error().message.find("outcome unknown"), std::string::npos) << r.error().message;
	EXPECT_EQ(r.error().message.find("may have been granted"), std::string::npos)
		<< r.error().message;
	EXPECT_TRUE(r.error().retryable());
	auto next = pg.try_lock(key(), 1000); // a new connection works
	ASSERT_TRUE(next && next->has_value()) << (next ? "contention" : next.error());
	EXPECT_TRUE(pg.release(**next).has_value());
}

/* An ErrorResponse after CommandComplete (a deferred constraint fails at the implicit
 * commit, so the statement's effect was rolled back) fails the call; its rows must not
 * be reported as a grant. */
TEST(PgBackend, AnErrorAfterTheRowsFailsTheCall)
{
	DSN_OR_SKIP(dsn);
	const std::string schema = "lockext_fake_late";
	ASSERT_EQ(exec_sql(*dsn, "DROP SCHEMA IF EXISTS " + schema + " CASCADE; CREATE SCHEMA " +
								 schema + "; CREATE TABLE " + schema +
								 ".t (id serial PRIMARY KEY, ref int REFERENCES " + schema +
								 ".t (id) DEFERRABLE INITIALLY DEFERRED); CREATE FUNCTION " +
								 schema +
								 ".try_lock(k text, t bigint) RETURNS public.lock_handle "
								 "LANGUAGE plpgsql AS $$ BEGIN "
								 "INSERT INTO " +
								 schema +
								 ".t (ref) VALUES (-1); RETURN ROW(k, gen_random_uuid(), t, 1, "
								 "now())::public.lock_handle; END $$"),
			  "");
	for (int variant = 0; variant < 4; ++variant)
	{
		PgOptions options;
		options.schema = schema;
		options.prepared_statements = variant % 2 == 0;
		options.pipeline = variant >= 2;
		PgLockingPlugin pg(*dsn, options);
		auto r = pg.try_lock_outcome(key(), 1000);
		ASSERT_FALSE(r.has_value()) << "a grant whose transaction failed at commit was reported";
		EXPECT_EQ(r.error().sqlstate, "23503") << r.error().message;
		EXPECT_EQ(r.error().kind, FailureKind::Server) << r.error().message;
	}
	EXPECT_EQ(exec_sql(*dsn, "DROP SCHEMA " + schema + " CASCADE"), "");
}
