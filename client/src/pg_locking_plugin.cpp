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
 *   SELECT active, reason, remaining_ms FROM lockext_grace()     grace_status()
 *
 * Every statement runs with libpq's asynchronous API on a non-blocking connection:
 * sending flushes with PQflush + poll(2), every PQgetResult is preceded by
 * PQconsumeInput/PQisBusy, and every wait is bounded by the client-side deadline
 * (PgOptions::statement_timeout, and the whole call's PgOptions::call_timeout, which
 * also bounds waiting for a pool slot and connecting), so a server or proxy that stalls
 * mid-reply (even after an ErrorResponse) cannot hang a call. An error result after
 * the statement's rows (ErrorResponse after CommandComplete) fails the call. The deadline needs no
 * session state and so also works behind a transaction-pooling proxy.
 *
 * Failures are classified in errors.cpp (kind, SQLSTATE, outcome unknown):
 *   - server error with a SQLSTATE outside class 08 / 57P0x: "<op> failed: [SQLSTATE]
 *     message; detail: ...; hint: ..."; the connection stays in the pool, except after
 *     25006 (read-only server: dropped, with the idle ones, so failover can move on);
 *   - anything else (libpq-side error, connection lost, deadline passed): the connection
 *     is discarded and so are the pool's idle ones; when the request had been sent, the
 *     message says the outcome is unknown (a try_lock may have granted a lease nobody
 *     knows the lock_id of; it expires after its TTL). It is never contention.
 *   - 42P05 / 26000 for one of our named statements (a transaction pooler routes Parse
 *     and Execute to different server connections): in the default mode the plugin
 *     switches to unnamed statements for good, logs it once, and retries the call once
 *     on the same connection (the Parse or Bind failed, so nothing was executed).
 *
 * Locking protocol: no locks of its own; PgPool serialises access to connections; the
 * statement mode is an atomic flag.
 */
#include <lockext/pg_locking_plugin.hpp>

#include <libpq-fe.h>
#include <poll.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include <lockext/boot_clock.hpp>

#include "errors_internal.hpp"
#include "pg_pool.hpp"
#include "validate.hpp"

namespace lockext
{

namespace
{

using detail::failure;
using detail::make_failure;
using Clock = BootClock;
using std::chrono::milliseconds;

struct ResultCloser
{
	void operator()(PGresult *res) const noexcept
	{
		PQclear(res);
	}
};
using PgResult = std::unique_ptr<PGresult, ResultCloser>;
/* The reply to one statement, or its failure (message without "<op> failed: "). */
using Reply = std::expected<PgResult, Failure>;

enum Statement : unsigned
{
	kTryLock = 0,
	kRenew = 1,
	kRelease = 2,
	kGrace = 3,
	kStatementCount = 4
};

constexpr std::array<const char *, kStatementCount> kOpNames = {"try_lock", "renew", "release",
																"grace_status"};
constexpr std::array<int, kStatementCount> kParamCount = {2, 3, 2, 0};

enum class NamedMode
{
	Auto, // named until a pooler shows, then unnamed for good
	On,   // named only
	Off,  // unnamed only
};

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

/* The connection is broken or in an unknown state after this failure. */
bool
breaks_connection(const Failure &f) noexcept
{
	return f.kind == FailureKind::ConnectionLost ||
		   (f.kind == FailureKind::Timeout && f.sqlstate.empty());
}

/* A failure of one statement; sent = the request may have reached the server. */
Failure
failure_from(PGconn *conn, const PGresult *res, bool sent)
{
	Failure f;
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
	f.kind = detail::classify_statement_sqlstate(f.sqlstate);
	if (PQstatus(conn) != CONNECTION_OK)
		f.kind = FailureKind::ConnectionLost;
	f.outcome_unknown = sent && breaks_connection(f);
	return f;
}

Failure
connection_failure(PGconn *conn, bool sent)
{
	Failure f = failure_from(conn, nullptr, sent);
	f.kind = FailureKind::ConnectionLost;
	f.outcome_unknown = sent;
	return f;
}

/* The deadline of one statement: which option set it, for the message. */
struct Deadline
{
	Clock::time_point at = Clock::time_point::max();
	const char *option = "statement_timeout"; // or "call_timeout"
};

Failure
timeout_failure(bool sent, const Deadline &deadline)
{
	return make_failure(FailureKind::Timeout,
						std::string("no reply within ") + deadline.option +
							"; the connection was discarded",
						"", sent);
}

/* Flushes what PQsend* queued, on a non-blocking connection, until deadline. */
Outcome<void>
flush_all(PGconn *conn, const Deadline &deadline)
{
	for (;;)
	{
		const int r = PQflush(conn);
		if (r == 0)
			return {};
		if (r < 0)
			return std::unexpected(connection_failure(conn, true));
		if (auto w = detail::wait_socket(PQsocket(conn), true, true, deadline.at); !w)
			return std::unexpected(w.error().kind == FailureKind::Timeout
									   ? timeout_failure(true, deadline)
									   : w.error());
		/* libpq: when the socket is read-ready, consume input before flushing again. */
		if (PQconsumeInput(conn) == 0)
			return std::unexpected(connection_failure(conn, true));
	}
}

/*
 * Waits for the reply of a request already sent (and flushed) on conn and returns its
 * first result, or its first error result when a later one is an error (an
 * ErrorResponse after CommandComplete, e.g. a deferred constraint failing at the
 * implicit commit: the statement's effect was rolled back, so its rows must not be
 * believed), after reading every result up to the end of the reply so that the
 * connection is idle again. Never blocks past deadline (max() = no deadline): each
 * PQgetResult is called only when PQisBusy says it will not block.
 */
Reply
await_result(PGconn *conn, const Deadline &deadline)
{
	PgResult first;
	bool first_is_error = false;
	for (;;)
	{
		while (PQisBusy(conn))
		{
			if (auto w = detail::wait_socket(PQsocket(conn), true, false, deadline.at); !w)
				return std::unexpected(w.error().kind == FailureKind::Timeout
										   ? timeout_failure(true, deadline)
										   : w.error());
			if (PQconsumeInput(conn) == 0)
				return std::unexpected(connection_failure(conn, true));
		}
		PGresult *res = PQgetResult(conn);
		if (res == nullptr)
			break;
		const ExecStatusType st = PQresultStatus(res);
		const bool is_error = st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE;
		if (!first || (is_error && !first_is_error))
		{
			first.reset(res);
			first_is_error = is_error;
		}
		else
			PQclear(res);
	}
	if (!first)
		return std::unexpected(connection_failure(conn, true));
	return first;
}

/* PgOptions::call_timeout, or the default it documents when 0: acquire_timeout + the
 * connect budget (connect_timeout, or 10 s when that is 0) + statement_timeout; no
 * deadline when call_timeout < 0. */
std::chrono::milliseconds
effective_call_timeout(const PgOptions &o)
{
	if (o.call_timeout.count() != 0)
		return o.call_timeout.count() > 0 ? o.call_timeout : milliseconds(0);
	const milliseconds connect = o.connect_timeout.count() > 0
									 ? std::chrono::duration_cast<milliseconds>(o.connect_timeout)
									 : milliseconds(10000);
	return std::max(o.acquire_timeout, milliseconds(0)) + connect +
		   std::max(o.statement_timeout, milliseconds(0));
}

} // namespace

struct PgLockingPlugin::Impl
{
	PgOptions options;
	detail::PgPool pool;
	std::array<std::string, kStatementCount> sql;
	std::array<std::string, kStatementCount> names;
	NamedMode mode = NamedMode::Auto;
	std::atomic<bool> unnamed{false};          // Auto mode switched to unnamed statements
	std::optional<Failure> bad_conninfo;       // the conninfo does not parse
	std::chrono::milliseconds call_timeout{0}; // effective PgOptions::call_timeout, 0 = none

	Impl(std::string conninfo, PgOptions opts)
		: options(std::move(opts)),
		  pool(detail::PgPoolConfig{conninfo, std::max<std::size_t>(options.pool_size, 1),
									options.connect_timeout, options.acquire_timeout})
	{
		const std::string q = qualifier(options.schema);
		sql[kTryLock] =
			"SELECT lock_id::text, fence, ttl_ms FROM " + q + "try_lock($1::text, $2::bigint)";
		sql[kRenew] = "SELECT " + q + "renew($1::text, $2::uuid, $3::bigint)";
		sql[kRelease] = "SELECT " + q + "release($1::text, $2::uuid)";
		sql[kGrace] = "SELECT active, reason, remaining_ms FROM " + q + "lockext_grace()";
		for (unsigned i = 0; i < kStatementCount; ++i)
			names[i] = statement_name(kOpNames[i], sql[i]);

		call_timeout = effective_call_timeout(options);
		mode = options.prepared_statements ? NamedMode::Auto : NamedMode::Off;
		if (const char *env = std::getenv("LOCKEXT_PREPARED_STATEMENTS"))
		{
			const std::string_view v(env);
			if (v == "on")
				mode = NamedMode::On;
			else if (v == "off")
				mode = NamedMode::Off;
			else if (v == "auto")
				mode = NamedMode::Auto;
		}

		char *err = nullptr;
		PQconninfoOption *parsed = PQconninfoParse(conninfo.c_str(), &err);
		if (parsed == nullptr)
			bad_conninfo = make_failure(
				FailureKind::Config, "invalid connection string: " +
										 detail::one_line(err != nullptr ? err : "out of memory"));
		PQconninfoFree(parsed);
		PQfreemem(err);
	}

	void log(const std::string &line) const
	{
		if (options.on_log)
			options.on_log(line);
		else
			std::fprintf(stderr, "lockext: %s\n", line.c_str());
	}

	bool use_named() const noexcept
	{
		return mode == NamedMode::On || (mode == NamedMode::Auto && !unnamed.load());
	}

	void switch_to_unnamed(const Failure &why)
	{
		if (!unnamed.exchange(true))
			log("prepared statements unusable behind this pooler; switching to unnamed "
				"statements (" +
				why.message + ")");
	}

	/* Sends statement s (preparing it on this connection first if needed) and waits. */
	Reply send_and_wait(PGconn *conn, unsigned &prepared, Statement s, const char *const *params,
						const Deadline &deadline, bool named)
	{
		if (named && (prepared & (1u << s)) == 0)
		{
			/* Only a Parse (+ Sync) is sent here: whatever fails, nothing was executed,
			 * so the outcome is known (nothing happened). */
			auto nothing_ran = [](Failure f)
			{
				f.outcome_unknown = false;
				if (f.kind == FailureKind::Timeout)
					f.message += " while preparing the statement (nothing was executed)";
				return std::unexpected(std::move(f));
			};
			if (PQsendPrepare(conn, names[s].c_str(), sql[s].c_str(), kParamCount[s], nullptr) == 0)
				return std::unexpected(connection_failure(conn, false));
			if (auto f = flush_all(conn, deadline); !f)
				return nothing_ran(std::move(f.error()));
			auto res = await_result(conn, deadline);
			if (!res)
				return nothing_ran(std::move(res.error()));
			if (PQresultStatus(res->get()) != PGRES_COMMAND_OK)
				return nothing_ran(failure_from(conn, res->get(), false));
			prepared |= 1u << s;
		}
		int sent = named ? PQsendQueryPrepared(conn, names[s].c_str(), kParamCount[s], params,
											   nullptr, nullptr, 0)
						 : PQsendQueryParams(conn, sql[s].c_str(), kParamCount[s], nullptr, params,
											 nullptr, nullptr, 0);
		if (sent == 0)
			return std::unexpected(connection_failure(conn, false));
		if (auto f = flush_all(conn, deadline); !f)
			return std::unexpected(std::move(f.error()));
		auto res = await_result(conn, deadline);
		if (res && PQresultStatus(res->get()) != PGRES_TUPLES_OK)
			return std::unexpected(failure_from(conn, res->get(), true));
		return res;
	}

	/* The public failure for a failed statement; discards broken connections. */
	Failure report(Statement s, detail::PgPool::Borrowed &conn, Failure fail, bool named)
	{
		const bool broken = breaks_connection(fail);
		bool discard = broken;
		if (named && detail::is_pooler_statement_sqlstate(fail.sqlstate))
		{
			/* The server connection is not the one this client prepared on: a
			 * transaction-pooling proxy sits in between. */
			fail.message += "; hint: named prepared statements do not work through a "
							"transaction-pooling proxy such as PgBouncer < 1.21: set "
							"PgOptions::prepared_statements = false (or unset "
							"LOCKEXT_PREPARED_STATEMENTS=on)";
			fail.kind = FailureKind::Config;
			discard = true;
		}
		if (detail::is_read_only_sqlstate(fail.sqlstate))
		{
			/* A standby or read-only primary: drop this connection and the idle ones so
			 * that the next call connects anew (DNS- or proxy-based failover). */
			discard = true;
			conn.discard();
			pool.drop_idle();
		}
		if (broken && fail.outcome_unknown)
		{
			std::string msg = "outcome unknown, the connection failed after the request was sent";
			if (s == kTryLock)
				msg += " (a lease may have been granted; it expires after its TTL)";
			fail.message = msg + ": " + fail.message;
		}
		else if (broken && fail.kind != FailureKind::Timeout)
			fail.message = "connection failed: " + fail.message;
		if (discard)
		{
			conn.discard();
			if (broken)
				pool.drop_idle();
		}
		fail.message = failure(kOpNames[s], fail.message);
		return fail;
	}

	/* Runs statement s with params on a pooled connection. */
	Reply execute(Statement s, const char *const *params)
	{
		if (bad_conninfo)
		{
			Failure f = *bad_conninfo;
			f.message = failure(kOpNames[s], f.message);
			return std::unexpected(std::move(f));
		}
		/* One deadline for the whole call: waiting for a pool slot, connecting (every
		 * host) and the statement (see PgOptions::call_timeout). */
		const auto call_deadline =
			call_timeout.count() > 0 ? Clock::now() + call_timeout : Clock::time_point::max();
		auto conn = pool.acquire(call_deadline);
		if (!conn)
		{
			Failure f = std::move(conn.error());
			f.message = failure(kOpNames[s], f.message);
			return std::unexpected(std::move(f));
		}
		Deadline deadline;
		if (options.statement_timeout.count() > 0)
			deadline.at = Clock::now() + options.statement_timeout;
		if (call_deadline < deadline.at)
			deadline = Deadline{call_deadline, "call_timeout"};
		PGconn *pg = (*conn)->conn.get();
		bool named = use_named();
		auto res = send_and_wait(pg, (*conn)->prepared, s, params, deadline, named);
		if (!res && named && mode == NamedMode::Auto &&
			detail::is_pooler_statement_sqlstate(res.error().sqlstate))
		{
			/* Parse (42P05) or Bind (26000) failed: nothing was executed, so the call
			 * is retried once, with an unnamed statement, on the same connection. */
			switch_to_unnamed(res.error());
			named = false;
			res = send_and_wait(pg, (*conn)->prepared, s, params, deadline, named);
		}
		if (!res)
			return std::unexpected(report(s, *conn, std::move(res.error()), named));
		return res;
	}
};

namespace
{

/* The reply had a shape the SQL API of spec §2 does not produce. */
Failure
bad_reply(const char *op, const PGresult *res)
{
	return make_failure(FailureKind::Protocol,
						failure(op, "unexpected reply from the server (" +
										std::to_string(PQntuples(res)) + " rows, " +
										std::to_string(PQnfields(res)) +
										" columns): is the lockext extension installed at the "
										"expected version?"));
}

/* A single boolean cell: true, false, or an error for any other shape. */
Outcome<bool>
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

Outcome<std::optional<LockHandle>>
PgLockingPlugin::try_lock_outcome(std::string_view key, std::uint64_t ttl_ms)
{
	if (auto ok = detail::check_key("try_lock", key, 0); !ok)
		return std::unexpected(std::move(ok.error()));
	if (auto ok = detail::check_ttl("try_lock", ttl_ms, std::nullopt); !ok)
		return std::unexpected(std::move(ok.error()));
	const std::string key_text(key);
	const std::string ttl_text = std::to_string(ttl_ms);
	const char *params[] = {key_text.c_str(), ttl_text.c_str()};
	auto res = m_impl->execute(kTryLock, params);
	if (!res)
		return std::unexpected(std::move(res.error()));
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

Outcome<void>
PgLockingPlugin::renew_outcome(const LockHandle &handle)
{
	if (auto ok = detail::check_handle("renew", handle, 0, false); !ok)
		return ok;
	if (auto ok = detail::check_ttl("renew", handle.ttl_ms, std::nullopt); !ok)
		return ok;
	const std::string ttl_text = std::to_string(handle.ttl_ms);
	const char *params[] = {handle.key.c_str(), handle.lock_id.c_str(), ttl_text.c_str()};
	auto res = m_impl->execute(kRenew, params);
	if (!res)
		return std::unexpected(std::move(res.error()));
	auto renewed = single_bool("renew", res->get());
	if (!renewed)
		return std::unexpected(std::move(renewed.error()));
	if (!*renewed)
		return std::unexpected(detail::lock_lost(handle.key));
	return {};
}

Outcome<void>
PgLockingPlugin::release_outcome(LockHandle handle)
{
	if (auto ok = detail::check_handle("release", handle, 0, false); !ok)
		return ok;
	const char *params[] = {handle.key.c_str(), handle.lock_id.c_str()};
	auto res = m_impl->execute(kRelease, params);
	if (!res)
		return std::unexpected(std::move(res.error()));
	auto released = single_bool("release", res->get());
	if (!released)
		return std::unexpected(std::move(released.error()));
	return {}; // false = not held under this lock_id: a silent no-op
}

Result<std::optional<LockHandle>>
PgLockingPlugin::try_lock(std::string_view key, std::uint64_t ttl_ms)
{
	return to_result(try_lock_outcome(key, ttl_ms));
}

Result<void>
PgLockingPlugin::renew(const LockHandle &handle)
{
	return to_result(renew_outcome(handle));
}

Result<void>
PgLockingPlugin::release(LockHandle handle)
{
	return to_result(release_outcome(std::move(handle)));
}

Outcome<PgLockingPlugin::GraceStatus>
PgLockingPlugin::grace_status()
{
	auto res = m_impl->execute(kGrace, nullptr);
	if (!res)
		return std::unexpected(std::move(res.error()));
	const PGresult *r = res->get();
	if (PQntuples(r) != 1 || PQnfields(r) != 3 || PQgetisnull(r, 0, 0))
		return std::unexpected(bad_reply("grace_status", r));
	GraceStatus out;
	out.active = PQgetvalue(r, 0, 0)[0] == 't';
	if (!PQgetisnull(r, 0, 1))
		out.reason = PQgetvalue(r, 0, 1);
	if (!PQgetisnull(r, 0, 2) && !parse_number(PQgetvalue(r, 0, 2), out.remaining_ms))
		return std::unexpected(bad_reply("grace_status", r));
	return out;
}

Result<void>
PgLockingPlugin::cleanup()
{
	m_impl->pool.close();
	return {};
}

} // namespace lockext
