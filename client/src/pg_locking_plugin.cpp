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
 *   SELECT try_lock($1::text, $2::bigint, $3::bigint)    try_lock_for (lockext 1.1): the
 *       lock_handle in binary, decoded like try_lock's; NULL = the bound passed
 *   SELECT setting::bigint FROM pg_settings WHERE name = 'lockext.max_wait_ms'
 *       the server's bound on one wait (read once, and again after a 22023)
 *
 * try_lock_for: a server-side wait on a connection of the pool (never the pipeline), its
 * deadlines extended by the wait; a wait beyond lockext.max_wait_ms is a chain of bounded
 * waits (each one re-joins the key's queue at the tail); 42883 (a lockext 1.0 database)
 * switches the plugin to polling try_lock for good. Cancellation (cancel_waits, also from
 * a signal handler): a fixed array of CancelSlot, one per pool connection; a waiter arms
 * one with PQgetCancel before sending its wait and disarms it after the reply; the
 * canceller bumps cancel_gen and PQcancels every armed slot (slot states make the
 * PGcancel's lifetime safe without locks). A connection whose wait was the target of a
 * cancel is discarded (a late cancel request must not hit its next statement).
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
#include <random>
#include <thread>

#include <lockext/boot_clock.hpp>

#include "errors_internal.hpp"
#include "pg_pipeline.hpp"
#include "pg_pool.hpp"
#include "validate.hpp"

namespace lockext
{

namespace
{

using detail::await_result;
using detail::breaks_connection;
using detail::connection_failure;
using detail::Deadline;
using detail::failure;
using detail::failure_from;
using detail::flush_all;
using detail::make_failure;
using detail::PgResult;
using detail::Reply;
using Clock = BootClock;
using std::chrono::milliseconds;

enum Statement : unsigned
{
	kTryLock = 0,
	kRenew = 1,
	kRelease = 2,
	kGrace = 3,
	kTryLockWait = 4,
	kMaxWait = 5,
	kStatementCount = 6
};

constexpr std::array<const char *, kStatementCount> kOpNames = {
	"try_lock", "renew", "release", "grace_status", "try_lock_for", "try_lock_for"};
constexpr std::array<int, kStatementCount> kParamCount = {2, 3, 2, 0, 3, 0};
/* try_lock's lock_handle comes back in binary (record_send) format, see decode_handle. */
constexpr std::array<int, kStatementCount> kResultFormat = {1, 0, 0, 0, 1, 0};

/* Statements that may wait on the server: always on a pooled connection of their own. */
constexpr bool
runs_on_pool(unsigned s) noexcept
{
	return s == kGrace || s == kTryLockWait || s == kMaxWait;
}

/* One waiting connection's PGcancel, reachable from cancel_waits() without locks.
 * state: kFree -> (waiter) kSetup -> kArmed <-> (canceller) kFiring; the waiter takes it
 * back kArmed -> kSetup -> kFree, waiting out a kFiring. */
struct CancelSlot
{
	static constexpr int kFree = 0, kSetup = 1, kArmed = 2, kFiring = 3;
	std::atomic<int> state{kFree};
	std::atomic<bool> fired{false};
	PGcancel *cancel = nullptr; // owned by the waiter; valid while kArmed / kFiring
};
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free,
			  "cancel_waits must be async-signal-safe");

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
	/* PgOptions::pipeline: try_lock/renew/release share these connections; grace_status
	 * (and any call that could wait on the server) keeps using the pool. */
	std::unique_ptr<detail::PgPipeline> pipeline;

	/* try_lock_for (see the file comment). */
	std::atomic<std::uint64_t> cancel_gen{0};     // bumped by cancel_waits()
	std::size_t cancel_slot_count = 0;
	std::unique_ptr<CancelSlot[]> cancel_slots;   // one per pool connection
	std::atomic<std::int64_t> max_wait_ms{-1};    // lockext.max_wait_ms, -1 = not read yet
	std::atomic<bool> polling{false};             // a lockext 1.0 database: poll try_lock

	Impl(std::string conninfo, PgOptions opts)
		: options(std::move(opts)),
		  pool(detail::PgPoolConfig{conninfo, std::max<std::size_t>(options.pool_size, 1),
									options.connect_timeout, options.acquire_timeout})
	{
		const std::string q = qualifier(options.schema);
		sql[kTryLock] = "SELECT " + q + "try_lock($1::text, $2::bigint)";
		sql[kRenew] = "SELECT " + q + "renew($1::text, $2::uuid, $3::bigint)";
		sql[kRelease] = "SELECT " + q + "release($1::text, $2::uuid)";
		sql[kGrace] = "SELECT active, reason, remaining_ms FROM " + q + "lockext_grace()";
		sql[kTryLockWait] = "SELECT " + q + "try_lock($1::text, $2::bigint, $3::bigint)";
		sql[kMaxWait] =
			"SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'lockext.max_wait_ms'";
		for (unsigned i = 0; i < kStatementCount; ++i)
			names[i] = statement_name(kOpNames[i], sql[i]);

		call_timeout = effective_call_timeout(options);
		cancel_slot_count = std::max<std::size_t>(options.pool_size, 1);
		cancel_slots = std::make_unique<CancelSlot[]>(cancel_slot_count);
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

		if (options.pipeline)
		{
			detail::PgPipelineConfig config;
			config.pool = detail::PgPoolConfig{
				conninfo, std::max<std::size_t>(options.pipeline_connections, 1),
				options.connect_timeout, options.acquire_timeout};
			for (unsigned i = 0; i < kStatementCount; ++i)
				config.statements.push_back(
					detail::PipelineStatement{names[i], sql[i], kParamCount[i], kResultFormat[i]});
			pipeline = std::make_unique<detail::PgPipeline>(std::move(config));
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

	std::atomic<bool> bypass_logged{false};
	void log_bypass_once()
	{
		if (!bypass_logged.exchange(true))
			log("a connection pooler sits between client and server (its backend pid differs "
				"from the server's): pipeline mode is off, calls use the connection pool");
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
											   nullptr, nullptr, kResultFormat[s])
						 : PQsendQueryParams(conn, sql[s].c_str(), kParamCount[s], nullptr, params,
											 nullptr, nullptr, kResultFormat[s]);
		if (sent == 0)
			return std::unexpected(connection_failure(conn, false));
		if (auto f = flush_all(conn, deadline); !f)
			return std::unexpected(std::move(f.error()));
		auto res = await_result(conn, deadline);
		if (res && PQresultStatus(res->get()) != PGRES_TUPLES_OK)
			return std::unexpected(failure_from(conn, res->get(), true));
		return res;
	}

	/* The public failure for a failed statement; discards broken connections (conn =
	 * nullptr: a pipelined call, whose connection the pipeline looks after). */
	Failure report(Statement s, detail::PgPool::Borrowed *conn, Failure fail, bool named)
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
			if (conn != nullptr)
			{
				conn->discard();
				pool.drop_idle();
			}
		}
		if (conn == nullptr && fail.kind == FailureKind::Timeout && fail.outcome_unknown)
		{
			std::string msg = "outcome unknown";
			if (s == kTryLock || s == kTryLockWait)
				msg += " (a lease may have been granted; it expires after its TTL)";
			fail.message = msg + ": " + fail.message;
		}
		else if (broken && fail.outcome_unknown)
		{
			std::string msg = "outcome unknown, the connection failed after the request was sent";
			if (s == kTryLock || s == kTryLockWait)
				msg += " (a lease may have been granted; it expires after its TTL)";
			fail.message = msg + ": " + fail.message;
		}
		else if (broken && fail.kind != FailureKind::Timeout)
			fail.message = "connection failed: " + fail.message;
		if (discard && conn != nullptr)
		{
			conn->discard();
			if (broken)
				pool.drop_idle();
		}
		fail.message = failure(kOpNames[s], fail.message);
		return fail;
	}

	/* The deadline of a statement starting now: statement_timeout, or the call's deadline
	 * when that comes first. */
	Deadline statement_deadline(Clock::time_point call_deadline,
								milliseconds extra = milliseconds(0)) const
	{
		Deadline deadline; // extra: a server-side wait's length, added to statement_timeout
		if (options.statement_timeout.count() > 0)
			deadline.at = Clock::now() + options.statement_timeout + extra;
		if (call_deadline < deadline.at)
			deadline = Deadline{call_deadline, "call_timeout"};
		return deadline;
	}

	/* Arms a free cancel slot for conn (nullptr: none free, or no PGcancel). */
	CancelSlot *arm_cancel(PGconn *conn)
	{
		for (std::size_t i = 0; i < cancel_slot_count; ++i)
		{
			CancelSlot &slot = cancel_slots[i];
			int expected = CancelSlot::kFree;
			if (!slot.state.compare_exchange_strong(expected, CancelSlot::kSetup))
				continue;
			slot.cancel = PQgetCancel(conn);
			if (slot.cancel == nullptr)
			{
				slot.state.store(CancelSlot::kFree);
				return nullptr;
			}
			slot.fired.store(false);
			slot.state.store(CancelSlot::kArmed);
			return &slot;
		}
		return nullptr;
	}

	/* Takes the slot back; true if a cancel was sent through it. */
	static bool disarm_cancel(CancelSlot *slot)
	{
		if (slot == nullptr)
			return false;
		for (;;)
		{
			int expected = CancelSlot::kArmed;
			if (slot->state.compare_exchange_weak(expected, CancelSlot::kSetup))
				break;
			std::this_thread::yield(); // a PQcancel through it is in progress
		}
		PQfreeCancel(slot->cancel);
		slot->cancel = nullptr;
		const bool fired = slot->fired.load();
		slot->state.store(CancelSlot::kFree);
		return fired;
	}

	/* Runs statement s with params on a pooled connection. extra: added to the call's
	 * and the statement's deadlines (a server-side wait). cancel_gen0 (waits only): the
	 * cancel generation the call began in; the statement is not sent once it changed. */
	Reply execute(Statement s, const char *const *params, milliseconds extra = milliseconds(0),
				  std::optional<std::uint64_t> cancel_gen0 = std::nullopt)
	{
		if (bad_conninfo)
		{
			Failure f = *bad_conninfo;
			f.message = failure(kOpNames[s], f.message);
			return std::unexpected(std::move(f));
		}
		/* One deadline for the whole call: waiting for a pool slot, connecting (every
		 * host) and the statement (see PgOptions::call_timeout). */
		const auto call_deadline = call_timeout.count() > 0
									   ? Clock::now() + call_timeout + extra
									   : Clock::time_point::max();
		if (pipeline && !runs_on_pool(s) && !pipeline->bypassed())
		{
			bool use_pool = false;
			auto res = execute_pipelined(s, params, call_deadline, use_pool);
			if (!use_pool)
				return res;
			log_bypass_once();
		}
		auto conn = pool.acquire(call_deadline);
		if (!conn)
		{
			Failure f = std::move(conn.error());
			f.message = failure(kOpNames[s], f.message);
			return std::unexpected(std::move(f));
		}
		const Deadline deadline = statement_deadline(call_deadline, extra);
		PGconn *pg = (*conn)->conn.get();
		CancelSlot *slot = cancel_gen0 ? arm_cancel(pg) : nullptr;
		if (cancel_gen0 && cancel_gen.load() != *cancel_gen0)
		{
			disarm_cancel(slot);
			return std::unexpected(cancelled_failure());
		}
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
		if (disarm_cancel(slot))
			conn->discard(); // a late cancel request must not hit its next statement
		if (!res)
			return std::unexpected(report(s, &*conn, std::move(res.error()), named));
		return res;
	}

	/* The failure of a wait ended by cancel_waits(). */
	static Failure cancelled_failure()
	{
		return make_failure(FailureKind::Timeout,
							failure("try_lock_for", "the wait was cancelled (cancel_waits)"),
							"57014");
	}

	/* execute() through the pipeline: the same statement-mode fallback (a pooler's
	 * 42P05/26000 switches to unnamed statements and retries once: nothing ran). */
	Reply execute_pipelined(Statement s, const char *const *params, Clock::time_point call_deadline,
							bool &use_pool)
	{
		const Deadline deadline = statement_deadline(call_deadline);
		bool named = use_named();
		auto res = pipeline->execute(s, params, named, deadline, call_deadline, &use_pool);
		if (use_pool)
			return res;
		if (!res && named && mode == NamedMode::Auto &&
			detail::is_pooler_statement_sqlstate(res.error().sqlstate))
		{
			switch_to_unnamed(res.error());
			named = false;
			res = pipeline->execute(s, params, named, deadline, call_deadline, &use_pool);
			if (use_pool)
				return res;
		}
		if (!res)
			return std::unexpected(report(s, nullptr, std::move(res.error()), named));
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

/* Big-endian integers of the binary wire format. */
std::uint32_t
read_u32(const unsigned char *p) noexcept
{
	return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
		   std::uint32_t{p[3]};
}

std::int64_t
read_i64(const unsigned char *p) noexcept
{
	return static_cast<std::int64_t>((std::uint64_t{read_u32(p)} << 32) | read_u32(p + 4));
}

/* The canonical (lower-case 8-4-4-4-12) text of a 16-byte binary uuid. */
std::string
uuid_text(const unsigned char *p)
{
	static constexpr char kHex[] = "0123456789abcdef";
	std::string out(36, '-');
	std::size_t at = 0;
	for (int i = 0; i < 16; ++i)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			++at; // the hyphen already there
		out[at++] = kHex[p[i] >> 4];
		out[at++] = kHex[p[i] & 0xF];
	}
	return out;
}

/*
 * try_lock's reply: one row, one column, the lock_handle composite in binary format
 * (record_send: int32 column count, then per column int32 type oid, int32 length (-1 =
 * NULL) and the bytes), or NULL on contention. The columns (spec §2, the same in
 * extension 1.0 and 1.1): key text, lock_id uuid, ttl_ms int8, fence int8, expires_at
 * timestamptz; later columns (a future version) are skipped. Anything else is a
 * Protocol failure, never a crash and never contention; a key other than the one asked
 * for (a reply matched to the wrong request) is one too.
 */
Outcome<std::optional<LockHandle>>
decode_handle(const PGresult *res, std::string key)
{
	constexpr Oid kTextOid = 25, kUuidOid = 2950, kInt8Oid = 20, kTimestamptzOid = 1184;
	auto bad = [&](const std::string &why) -> Outcome<std::optional<LockHandle>>
	{
		return std::unexpected(make_failure(
			FailureKind::Protocol,
			failure("try_lock", "unexpected reply from the server (" + why +
									"): is the lockext extension installed at the expected "
									"version?")));
	};
	if (PQntuples(res) != 1 || PQnfields(res) != 1)
		return bad(std::to_string(PQntuples(res)) + " rows, " + std::to_string(PQnfields(res)) +
				   " columns");
	if (PQgetisnull(res, 0, 0))
		return std::optional<LockHandle>{}; // contention
	if (PQfformat(res, 0) != 1)
		return bad("lock_handle not in binary format");
	const auto *data = reinterpret_cast<const unsigned char *>(PQgetvalue(res, 0, 0));
	const std::size_t size = static_cast<std::size_t>(std::max(PQgetlength(res, 0, 0), 0));
	std::size_t at = 0;
	if (size < 4)
		return bad("lock_handle of " + std::to_string(size) + " bytes");
	const std::uint32_t columns = read_u32(data);
	at = 4;
	if (columns < 5 || columns > 1600)
		return bad("lock_handle with " + std::to_string(columns) + " columns");
	struct Field
	{
		Oid oid;
		std::int32_t length; // -1 = NULL
		const unsigned char *bytes;
	};
	Field fields[5]{};
	for (std::uint32_t i = 0; i < columns; ++i)
	{
		if (size - at < 8)
			return bad("lock_handle truncated in column " + std::to_string(i + 1));
		const Field f{read_u32(data + at), static_cast<std::int32_t>(read_u32(data + at + 4)),
					  data + at + 8};
		at += 8;
		if (f.length < -1 || (f.length > 0 && static_cast<std::size_t>(f.length) > size - at))
			return bad("lock_handle column " + std::to_string(i + 1) + " has a bad length");
		if (f.length > 0)
			at += static_cast<std::size_t>(f.length);
		if (i < 5)
			fields[i] = f;
	}
	if (at != size)
		return bad("lock_handle with trailing bytes");
	const Oid expected_oid[5] = {kTextOid, kUuidOid, kInt8Oid, kInt8Oid, kTimestamptzOid};
	const std::int32_t expected_length[5] = {-2, 16, 8, 8, 8}; // -2: any non-NULL
	for (int i = 0; i < 5; ++i)
	{
		if (fields[i].oid != expected_oid[i])
			return bad("lock_handle column " + std::to_string(i + 1) + " has type oid " +
					   std::to_string(fields[i].oid));
		if (fields[i].length < 0 ||
			(expected_length[i] >= 0 && fields[i].length != expected_length[i]))
			return bad("lock_handle column " + std::to_string(i + 1) + " is NULL or " +
					   std::to_string(fields[i].length) + " bytes long");
	}
	if (std::string_view(reinterpret_cast<const char *>(fields[0].bytes),
						 static_cast<std::size_t>(fields[0].length)) != key)
		return bad("the lock_handle is for another key");
	const std::int64_t ttl = read_i64(fields[2].bytes);
	if (ttl <= 0)
		return bad("ttl_ms " + std::to_string(ttl));
	return LockHandle{std::move(key), uuid_text(fields[1].bytes), static_cast<std::uint64_t>(ttl),
					  read_i64(fields[3].bytes)};
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
	std::string key_text(key);
	char ttl_text[24];
	*std::to_chars(ttl_text, ttl_text + sizeof ttl_text - 1, ttl_ms).ptr = '\0';
	const char *params[] = {key_text.c_str(), ttl_text};
	auto res = m_impl->execute(kTryLock, params);
	if (!res)
		return std::unexpected(std::move(res.error()));
	return decode_handle(res->get(), std::move(key_text));
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

namespace
{

/* The bigint text of v (a NUL-terminated buffer of 24). */
void
to_text(std::int64_t v, char (&out)[24])
{
	*std::to_chars(out, out + sizeof out - 1, v).ptr = '\0';
}

} // namespace

void
PgLockingPlugin::cancel_waits() noexcept
{
	Impl &impl = *m_impl;
	impl.cancel_gen.fetch_add(1);
	for (std::size_t i = 0; i < impl.cancel_slot_count; ++i)
	{
		CancelSlot &slot = impl.cancel_slots[i];
		int expected = CancelSlot::kArmed;
		if (!slot.state.compare_exchange_strong(expected, CancelSlot::kFiring))
			continue;
		char errbuf[256];
		(void) PQcancel(slot.cancel, errbuf, sizeof errbuf); // async-signal-safe
		slot.fired.store(true);
		slot.state.store(CancelSlot::kArmed);
	}
}

Outcome<std::optional<LockHandle>>
PgLockingPlugin::try_lock_for_outcome(std::string_view key, std::uint64_t ttl_ms,
									  std::chrono::milliseconds wait)
{
	if (wait < milliseconds::zero())
		return std::unexpected(bad_wait(wait));
	if (wait == milliseconds::zero())
		return try_lock_outcome(key, ttl_ms);
	if (auto ok = detail::check_key("try_lock", key, 0); !ok)
		return std::unexpected(std::move(ok.error()));
	if (auto ok = detail::check_ttl("try_lock", ttl_ms, std::nullopt); !ok)
		return std::unexpected(std::move(ok.error()));
	Impl &impl = *m_impl;
	const std::uint64_t gen0 = impl.cancel_gen.load();
	const auto give_up = Clock::now() + wait;
	auto cancelled = [&] { return impl.cancel_gen.load() != gen0; };
	/* A handle obtained while a cancel was requested is given back. */
	auto settle = [&](Outcome<std::optional<LockHandle>> r) -> Outcome<std::optional<LockHandle>>
	{
		if (!cancelled())
			return r;
		if (r && r->has_value())
			(void) release_outcome(**r);
		return std::unexpected(Impl::cancelled_failure());
	};
	auto left_ms = [&]
	{
		return std::chrono::ceil<milliseconds>(give_up - Clock::now());
	};

	/* Reads lockext.max_wait_ms; false if it could not be read (error in out). */
	auto read_max_wait = [&](Failure &out) -> bool
	{
		auto res = impl.execute(kMaxWait, nullptr, milliseconds(0), gen0);
		if (!res)
		{
			out = std::move(res.error());
			return false;
		}
		const PGresult *r = res->get();
		std::int64_t v = 0;
		if (PQntuples(r) != 1 || PQnfields(r) != 1 || PQgetisnull(r, 0, 0) ||
			!parse_number(PQgetvalue(r, 0, 0), v) || v < 0)
		{
			out = bad_reply("try_lock_for", r);
			return false;
		}
		impl.max_wait_ms.store(v);
		return true;
	};

	std::string key_text(key);
	char ttl_text[24];
	to_text(static_cast<std::int64_t>(ttl_ms), ttl_text);
	while (!impl.polling.load())
	{
		if (cancelled())
			return std::unexpected(Impl::cancelled_failure());
		if (impl.max_wait_ms.load() < 0)
		{
			Failure f;
			if (!read_max_wait(f))
			{
				if (f.sqlstate == "57014" && cancelled())
					return std::unexpected(Impl::cancelled_failure());
				return std::unexpected(std::move(f));
			}
		}
		const std::int64_t max_wait = impl.max_wait_ms.load();
		if (max_wait == 0)
			break; // the server allows no waits: poll
		const milliseconds left = left_ms();
		if (left.count() <= 0)
			return std::optional<LockHandle>{}; // the bound passed: contention
		const milliseconds chunk = std::min(left, milliseconds(max_wait));
		char wait_text[24];
		to_text(chunk.count(), wait_text);
		const char *params[] = {key_text.c_str(), ttl_text, wait_text};
		auto res = impl.execute(kTryLockWait, params, chunk, gen0);
		if (!res)
		{
			Failure f = std::move(res.error());
			if (cancelled() && (f.sqlstate == "57014" || f.kind == FailureKind::Timeout))
				return std::unexpected(Impl::cancelled_failure());
			if (f.sqlstate == "42883")
			{
				/* A lockext 1.0 database: no try_lock(text, bigint, bigint). */
				if (!impl.polling.exchange(true))
					impl.log("the database has lockext 1.0 (no server-side waits: " + f.message +
							 "); try_lock_for polls try_lock with backoff instead");
				break;
			}
			if (f.sqlstate == "22023")
			{
				/* Maybe lockext.max_wait_ms was lowered (reload): read it again and retry
				 * if our wait is now beyond it; otherwise the key or ttl was refused. */
				const std::int64_t before = max_wait;
				Failure g;
				if (read_max_wait(g) && impl.max_wait_ms.load() < before)
					continue;
			}
			return std::unexpected(std::move(f));
		}
		auto handle = decode_handle(res->get(), key_text);
		if (!handle || handle->has_value())
			return settle(std::move(handle));
		/* NULL: this bounded wait ended without a grant. Chain the next one (it joins the
		 * key's queue at the tail) while the whole bound has not passed. */
	}

	/* Polling (lockext 1.0, or lockext.max_wait_ms = 0): jittered exponential backoff, a
	 * random delay in [d/2, d], d = 50 ms doubling up to 1.5 s, never past the bound; the
	 * sleep checks for cancel_waits() every 20 ms. */
	std::minstd_rand rng{std::random_device{}()};
	milliseconds backoff{50};
	for (;;)
	{
		if (cancelled())
			return std::unexpected(Impl::cancelled_failure());
		auto r = try_lock_outcome(key, ttl_ms);
		if (!r || r->has_value())
			return settle(std::move(r));
		const auto now = Clock::now();
		if (now >= give_up)
			return r;
		std::uniform_int_distribution<long long> jitter(backoff.count() / 2, backoff.count());
		const auto wake = std::min<Clock::time_point>(now + milliseconds(jitter(rng)), give_up);
		for (auto t = Clock::now(); t < wake; t = Clock::now())
		{
			if (cancelled())
				return std::unexpected(Impl::cancelled_failure());
			std::this_thread::sleep_for(std::min<Clock::duration>(wake - t, milliseconds(20)));
		}
		backoff = std::min(backoff * 2, milliseconds(1500));
	}
}

Result<std::optional<LockHandle>>
PgLockingPlugin::try_lock_for(std::string_view key, std::uint64_t ttl_ms,
							  std::chrono::milliseconds wait)
{
	return to_result(try_lock_for_outcome(key, ttl_ms, wait));
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
	if (m_impl->pipeline)
		m_impl->pipeline->close();
	return {};
}

} // namespace lockext
