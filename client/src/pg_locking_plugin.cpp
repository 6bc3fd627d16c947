/*
 * pg_locking_plugin.cpp
 *     The "pg" backend: try_lock / renew / release as one SQL statement each, over the
 *     connection pool of pg_pool.hpp.
 *
 * Statements (parameters in text format, explicit casts so that overload resolution
 * never depends on the client):
 *   SELECT lock_id::text, fence, ttl_ms FROM try_lock($1::text, $2::bigint)
 *       one call per statement (never "(try_lock(...)).*", which calls it per column);
 *       one row, all NULL on contention
 *   SELECT renew($1::text, $2::uuid, $3::bigint)      true, or false = not held
 *   SELECT release($1::text, $2::uuid)                true, or false = no-op
 *
 * Every statement runs with libpq's asynchronous API under a client-side deadline
 * (PgOptions::statement_timeout), which needs no session state and so also works
 * behind a transaction-pooling proxy. Error classification:
 *   - server error with a SQLSTATE outside class 08 / 57P0x: "<op> failed: [SQLSTATE]
 *     message; detail: ...; hint: ..."; the connection stays in the pool;
 *   - anything else (libpq-side error, connection lost, deadline passed): the connection
 *     is discarded and so are the pool's idle ones; when the request had been sent, the
 *     message says the outcome is unknown (a try_lock may have granted a lease nobody
 *     knows the lock_id of; it expires after its TTL). It is never contention.
 *
 * Locking protocol: no locks of its own; PgPool serialises access to connections.
 */
#include <lockext/pg_locking_plugin.hpp>

#include <libpq-fe.h>
#include <poll.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "pg_pool.hpp"
#include "validate.hpp"

namespace lockext
{

namespace
{

using detail::failure;
using Clock = std::chrono::steady_clock;

struct ResultCloser
{
	void operator()(PGresult *res) const noexcept
	{
		PQclear(res);
	}
};
using PgResult = std::unique_ptr<PGresult, ResultCloser>;

enum Statement : unsigned
{
	kTryLock = 0,
	kRenew = 1,
	kRelease = 2,
	kStatementCount = 3
};

constexpr std::array<const char *, kStatementCount> kOpNames = {"try_lock", "renew", "release"};
constexpr std::array<int, kStatementCount> kParamCount = {2, 3, 2};

/* "schema". with embedded quotes doubled, or "" for an unqualified name. */
std::string
qualifier(const std::string &schema)
{
	if (schema.empty())
		return {};
	std::string out = "\"";
	for (char c : schema)
	{
		out += c;
		if (c == '"')
			out += '"';
	}
	return out + "\".";
}

/* Statement names depend on the SQL text, so two clients configured with different
 * schemas never execute each other's statement on a shared server connection. */
std::string
statement_name(const char *op, const std::string &sql)
{
	std::uint64_t hash = 1469598103934665603ULL; // FNV-1a
	for (unsigned char c : sql)
		hash = (hash ^ c) * 1099511628211ULL;
	char hex[17];
	auto [end, ec] = std::to_chars(hex, hex + 16, hash, 16);
	(void) ec;
	return std::string("lockext_") + op + "_" + std::string(hex, end);
}

/* SQLSTATEs after which the connection must not be reused. */
bool
is_connection_sqlstate(std::string_view state)
{
	return state.empty() || state.starts_with("08") || state == "57P01" || state == "57P02" ||
		   state == "57P03";
}

/* What went wrong with one statement, before it becomes an error string. */
struct Failure
{
	std::string sqlstate;    // empty for client-side failures
	std::string message;     // "[SQLSTATE] message; detail: ...; hint: ..." or libpq text
	bool connection = false; // the connection is broken or in an unknown state
	bool sent = false;       // the request may have reached the server
};

Failure
failure_from(PGconn *conn, const PGresult *res, bool sent)
{
	Failure f;
	f.sent = sent;
	const char *state = res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
	f.sqlstate = state != nullptr ? state : "";
	if (!f.sqlstate.empty())
	{
		f.message = "[" + f.sqlstate + "] " +
					detail::one_line(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
		if (const char *d = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL))
			f.message += "; detail: " + detail::one_line(d);
		if (const char *h = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT))
			f.message += "; hint: " + detail::one_line(h);
	}
	else
	{
		f.message =
			detail::one_line(res != nullptr ? PQresultErrorMessage(res) : PQerrorMessage(conn));
		if (f.message.empty())
			f.message = detail::one_line(PQerrorMessage(conn));
	}
	f.connection = is_connection_sqlstate(f.sqlstate) || PQstatus(conn) != CONNECTION_OK;
	return f;
}

/*
 * Waits for the reply of a request already sent on conn and returns its one result.
 * Waits at most until deadline (Clock::time_point::max() = no deadline).
 */
Result<PgResult>
await_result(PGconn *conn, Clock::time_point deadline, Failure &fail)
{
	while (PQisBusy(conn))
	{
		int wait_ms = -1;
		if (deadline != Clock::time_point::max())
		{
			auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
			if (left.count() <= 0)
			{
				fail = {"", "no reply within statement_timeout; the connection was discarded", true,
						true};
				return std::unexpected(std::string());
			}
			wait_ms = static_cast<int>(std::min<std::int64_t>(left.count(), 1 << 30));
		}
		pollfd pfd{PQsocket(conn), POLLIN, 0};
		int ready = poll(&pfd, 1, wait_ms);
		if (ready < 0 && errno != EINTR)
		{
			fail = {"", std::string("poll failed: ") + std::strerror(errno), true, true};
			return std::unexpected(std::string());
		}
		if (ready > 0 && PQconsumeInput(conn) == 0)
		{
			fail = failure_from(conn, nullptr, true);
			fail.connection = true;
			return std::unexpected(std::string());
		}
	}
	PgResult first(PQgetResult(conn));
	while (PGresult *extra = PQgetResult(conn)) // drain so the connection is idle again
		PQclear(extra);
	if (!first)
	{
		fail = failure_from(conn, nullptr, true);
		fail.connection = true;
		return std::unexpected(std::string());
	}
	return first;
}

} // namespace

struct PgLockingPlugin::Impl
{
	PgOptions options;
	detail::PgPool pool;
	std::array<std::string, kStatementCount> sql;
	std::array<std::string, kStatementCount> names;

	Impl(std::string conninfo, PgOptions opts)
		: options(std::move(opts)),
		  pool(detail::PgPoolConfig{std::move(conninfo),
									std::max<std::size_t>(options.pool_size, 1),
									options.connect_timeout, options.acquire_timeout})
	{
		const std::string q = qualifier(options.schema);
		sql[kTryLock] =
			"SELECT lock_id::text, fence, ttl_ms FROM " + q + "try_lock($1::text, $2::bigint)";
		sql[kRenew] = "SELECT " + q + "renew($1::text, $2::uuid, $3::bigint)";
		sql[kRelease] = "SELECT " + q + "release($1::text, $2::uuid)";
		for (unsigned i = 0; i < kStatementCount; ++i)
			names[i] = statement_name(kOpNames[i], sql[i]);
	}

	/* Sends statement s (preparing it on this connection first if needed) and waits. */
	Result<PgResult> send_and_wait(PGconn *conn, unsigned &prepared, Statement s,
								   const char *const *params, Clock::time_point deadline,
								   Failure &fail)
	{
		if (options.prepared_statements && (prepared & (1u << s)) == 0)
		{
			if (PQsendPrepare(conn, names[s].c_str(), sql[s].c_str(), kParamCount[s], nullptr) == 0)
			{
				fail = failure_from(conn, nullptr, false);
				fail.connection = true;
				return std::unexpected(std::string());
			}
			auto res = await_result(conn, deadline, fail);
			if (!res)
				return res;
			if (PQresultStatus(res->get()) != PGRES_COMMAND_OK)
			{
				fail = failure_from(conn, res->get(), true);
				return std::unexpected(std::string());
			}
			prepared |= 1u << s;
		}
		int sent = options.prepared_statements
					   ? PQsendQueryPrepared(conn, names[s].c_str(), kParamCount[s], params,
											 nullptr, nullptr, 0)
					   : PQsendQueryParams(conn, sql[s].c_str(), kParamCount[s], nullptr, params,
										   nullptr, nullptr, 0);
		if (sent == 0)
		{
			fail = failure_from(conn, nullptr, false);
			fail.connection = true;
			return std::unexpected(std::string());
		}
		auto res = await_result(conn, deadline, fail);
		if (res && PQresultStatus(res->get()) != PGRES_TUPLES_OK)
		{
			fail = failure_from(conn, res->get(), true);
			return std::unexpected(std::string());
		}
		return res;
	}

	/* The error string for a failed statement; discards broken connections. */
	std::string report(Statement s, detail::PgPool::Borrowed &conn, const Failure &fail)
	{
		std::string msg = fail.message;
		bool discard = fail.connection;
		if (options.prepared_statements && (fail.sqlstate == "26000" || fail.sqlstate == "42P05"))
		{
			/* The server connection is not the one this client prepared on: a
			 * transaction-pooling proxy sits in between. */
			msg += "; hint: named prepared statements do not work through a transaction-pooling "
				   "proxy such as PgBouncer < 1.21: set PgOptions::prepared_statements = false";
			discard = true;
		}
		if (fail.connection && fail.sent)
		{
			msg = "outcome unknown, the connection failed after the request was sent";
			if (s == kTryLock)
				msg += " (a lease may have been granted; it expires after its TTL)";
			msg += ": " + fail.message;
		}
		else if (fail.connection)
			msg = "connection failed: " + msg;
		if (discard)
		{
			conn.discard();
			if (fail.connection)
				pool.drop_idle();
		}
		return failure(kOpNames[s], msg);
	}

	/* Runs statement s with params on a pooled connection. */
	Result<PgResult> execute(Statement s, const char *const *params)
	{
		auto conn = pool.acquire();
		if (!conn)
			return std::unexpected(failure(kOpNames[s], conn.error()));
		const auto deadline = options.statement_timeout.count() > 0
								  ? Clock::now() + options.statement_timeout
								  : Clock::time_point::max();
		Failure fail;
		auto res = send_and_wait((*conn)->conn.get(), (*conn)->prepared, s, params, deadline, fail);
		if (!res)
			return std::unexpected(report(s, *conn, fail));
		return res;
	}
};

namespace
{

/* The reply had a shape the SQL API of spec §2 does not produce. */
std::string
bad_reply(const char *op, const PGresult *res)
{
	return failure(op, "unexpected reply from the server (" + std::to_string(PQntuples(res)) +
						   " rows, " + std::to_string(PQnfields(res)) +
						   " columns): is the lockext extension installed at the expected "
						   "version?");
}

/* A single boolean cell: true, false, or an error for any other shape. */
Result<bool>
single_bool(const char *op, const PGresult *res)
{
	if (PQntuples(res) != 1 || PQnfields(res) != 1 || PQgetisnull(res, 0, 0))
		return std::unexpected(bad_reply(op, res));
	return PQgetvalue(res, 0, 0)[0] == 't';
}

template <class T>
bool
parse_number(const char *text, T &out)
{
	const char *end = text + std::strlen(text);
	auto [ptr, ec] = std::from_chars(text, end, out);
	return ec == std::errc() && ptr == end;
}

} // namespace

PgLockingPlugin::PgLockingPlugin(std::string conninfo, PgOptions options)
	: m_impl(std::make_unique<Impl>(std::move(conninfo), std::move(options)))
{
}

PgLockingPlugin::~PgLockingPlugin() = default;

Result<std::optional<LockHandle>>
PgLockingPlugin::try_lock(std::string_view key, std::uint64_t ttl_ms)
{
	if (auto ok = detail::check_key("try_lock", key, 0); !ok)
		return std::unexpected(ok.error());
	if (auto ok = detail::check_ttl("try_lock", ttl_ms, std::nullopt); !ok)
		return std::unexpected(ok.error());
	const std::string key_text(key);
	const std::string ttl_text = std::to_string(ttl_ms);
	const char *params[] = {key_text.c_str(), ttl_text.c_str()};
	auto res = m_impl->execute(kTryLock, params);
	if (!res)
		return std::unexpected(res.error());
	const PGresult *r = res->get();
	if (PQntuples(r) != 1 || PQnfields(r) != 3)
		return std::unexpected(bad_reply("try_lock", r));
	if (PQgetisnull(r, 0, 0))
		return std::optional<LockHandle>{}; // contention
	LockHandle handle{key_text, PQgetvalue(r, 0, 0), 0, 0};
	if (PQgetisnull(r, 0, 1) || PQgetisnull(r, 0, 2) ||
		!parse_number(PQgetvalue(r, 0, 1), handle.fence) ||
		!parse_number(PQgetvalue(r, 0, 2), handle.ttl_ms))
		return std::unexpected(bad_reply("try_lock", r));
	return handle;
}

Result<void>
PgLockingPlugin::renew(const LockHandle &handle)
{
	if (auto ok = detail::check_handle("renew", handle, 0); !ok)
		return ok;
	if (auto ok = detail::check_ttl("renew", handle.ttl_ms, std::nullopt); !ok)
		return ok;
	const std::string ttl_text = std::to_string(handle.ttl_ms);
	const char *params[] = {handle.key.c_str(), handle.lock_id.c_str(), ttl_text.c_str()};
	auto res = m_impl->execute(kRenew, params);
	if (!res)
		return std::unexpected(res.error());
	auto renewed = single_bool("renew", res->get());
	if (!renewed)
		return std::unexpected(renewed.error());
	if (!*renewed)
		return std::unexpected(detail::lock_lost(handle.key));
	return {};
}

Result<void>
PgLockingPlugin::release(LockHandle handle)
{
	if (auto ok = detail::check_handle("release", handle, 0); !ok)
		return ok;
	const char *params[] = {handle.key.c_str(), handle.lock_id.c_str()};
	auto res = m_impl->execute(kRelease, params);
	if (!res)
		return std::unexpected(res.error());
	auto released = single_bool("release", res->get());
	if (!released)
		return std::unexpected(released.error());
	return {}; // false = not held under this lock_id: a silent no-op
}

Result<void>
PgLockingPlugin::cleanup()
{
	m_impl->pool.close();
	return {};
}

} // namespace lockext
