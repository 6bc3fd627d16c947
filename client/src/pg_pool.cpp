/*
 * pg_pool.cpp
 *     The pg backend's connection pool (see pg_pool.hpp for the locking protocol).
 */
#include "pg_pool.hpp"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdlib>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include <lockext/boot_clock.hpp>

#include "errors_internal.hpp"

namespace lockext::detail
{

std::string
one_line(const char *text)
{
	std::string out = text != nullptr ? text : "";
	while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
		out.pop_back();
	for (char &c : out)
		if (c == '\n')
			c = ' ';
	return out;
}

Outcome<void>
wait_socket(int fd, bool read, bool write, BootClock::time_point deadline)
{
	for (;;)
	{
		int wait_ms = -1;
		if (deadline != BootClock::time_point::max())
		{
			auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - BootClock::now());
			if (left.count() <= 0)
				return std::unexpected(make_failure(FailureKind::Timeout, "deadline passed"));
			/* poll(2) counts CLOCK_MONOTONIC, which stops during a suspend: wait in
			 * slices of at most 1 s so the BootClock deadline is checked again. */
			wait_ms = static_cast<int>(std::min<std::int64_t>(left.count(), 1000));
		}
		pollfd pfd{fd, static_cast<short>((read ? POLLIN : 0) | (write ? POLLOUT : 0)), 0};
		int ready = poll(&pfd, 1, wait_ms);
		if (ready > 0)
			return {};
		if (ready < 0 && errno != EINTR)
			return std::unexpected(make_failure(
				FailureKind::ConnectionLost, std::string("poll failed: ") + std::strerror(errno)));
	}
}

namespace
{

/*
 * False if an idle connection should not be reused. An idle connection of this pool has
 * nothing to read: the client never LISTENs and never leaves a query running. Anything
 * readable is the server going away (a FATAL such as 57P01 at shutdown followed by EOF,
 * pg_terminate_backend, a pooler closing it) or, rarely, a NOTICE/ParameterStatus; the
 * connection is dropped in every case (libpq would report a buffered FATAL only as the
 * result of the next query). Costs one poll(2) with zero timeout, paid only by a
 * connection idle for kRecheckIdleAfter or longer.
 */
constexpr std::chrono::milliseconds kRecheckIdleAfter{2};

bool
looks_alive(const PgConnection &connection) noexcept
{
	PGconn *conn = connection.conn.get();
	if (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE)
		return false;
	/* A connection given back moments ago (a busy pool hands the same connections
	 * around every few microseconds) is not polled again: what the poll could find
	 * (the server going away) is no likelier in that instant than during the call. */
	if (BootClock::now() - connection.idle_since < kRecheckIdleAfter)
		return true;
	pollfd pfd{PQsocket(conn), POLLIN, 0};
	if (pfd.fd < 0)
		return false;
	int ready = poll(&pfd, 1, 0);
	return ready == 0 || (ready < 0 && errno == EINTR);
}

void
close_all(std::vector<std::unique_ptr<PgConnection>> conns) noexcept
{
	conns.clear(); // PQfinish each, outside the pool mutex
}

} // namespace

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
		f.message =
			"[" + f.sqlstate + "] " + one_line(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
		if (const char *d = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL))
			f.message += "; detail: " + one_line(d);
		if (const char *h = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT))
			f.message += "; hint: " + one_line(h);
	}
	else
	{
		f.message = one_line(res != nullptr ? PQresultErrorMessage(res) : PQerrorMessage(conn));
		if (f.message.empty())
			f.message = one_line(PQerrorMessage(conn));
	}
	f.kind = classify_statement_sqlstate(f.sqlstate);
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
		if (auto w = wait_socket(PQsocket(conn), true, true, deadline.at); !w)
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
			if (auto w = wait_socket(PQsocket(conn), true, false, deadline.at); !w)
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

namespace
{
/* Identity only (never dereferenced): the connection this thread borrowed last. */
thread_local const void *t_last_connection = nullptr;
} // namespace

PgPool::Borrowed::~Borrowed()
{
	if (m_pool != nullptr)
		m_pool->give_back(std::move(m_conn), m_discard);
}

PgPool::PgPool(PgPoolConfig config) : m_config(std::move(config)) {}

PgPool::~PgPool()
{
	close();
}

namespace
{

/* libpq's connection error text without the LOCATION lines of verbose mode, on one
 * line. */
std::string
connect_error_text(PGconn *conn)
{
	std::string text = PQerrorMessage(conn);
	std::string out;
	std::size_t pos = 0;
	while (pos < text.size())
	{
		std::size_t nl = text.find('\n', pos);
		std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
		pos = nl == std::string::npos ? text.size() : nl + 1;
		if (line.starts_with("LOCATION:"))
			continue;
		out += line;
		out += '\n';
	}
	return one_line(out.c_str());
}

/* The connect_timeout libpq would use from the conninfo, PGCONNECT_TIMEOUT or a
 * service file, in seconds (libpq's rules: <= 0 = none, 1 = 2), or nullopt if unset. */
std::optional<std::chrono::seconds>
configured_connect_timeout(PGconn *conn)
{
	PQconninfoOption *opts = PQconninfo(conn);
	if (opts == nullptr)
		return std::nullopt;
	std::optional<std::chrono::seconds> out;
	for (PQconninfoOption *o = opts; o->keyword != nullptr; ++o)
		if (std::string_view(o->keyword) == "connect_timeout" && o->val != nullptr &&
			*o->val != '\0')
		{
			long v = std::strtol(o->val, nullptr, 10);
			out = std::chrono::seconds(v <= 0 ? 0 : std::max(v, 2L));
		}
	PQconninfoFree(opts);
	return out;
}

} // namespace

namespace
{

std::vector<std::string>
split_commas(const char *text)
{
	std::vector<std::string> out;
	if (text == nullptr || *text == '\0')
		return out;
	std::string_view rest(text);
	for (;;)
	{
		const auto comma = rest.find(',');
		out.emplace_back(rest.substr(0, comma));
		if (comma == std::string_view::npos)
			return out;
		rest.remove_prefix(comma + 1);
	}
}

std::string
join_from(const std::vector<std::string> &parts, std::size_t from)
{
	std::string out;
	for (std::size_t i = from; i < parts.size(); ++i)
		out += (i > from ? "," : "") + parts[i];
	return out;
}

/* Connection options as keyword/value pairs (owned strings). */
using Options = std::vector<std::pair<std::string, std::string>>;

/*
 * After a connect attempt timed out on one host of a multi-host conninfo: the options
 * of the attempt with the hosts after that one (as libpq's blocking connect moves on to
 * the next host when connect_timeout passes), or nullopt when it was the last.
 */
std::optional<Options>
later_hosts(PGconn *conn)
{
	PQconninfoOption *opts = PQconninfo(conn);
	if (opts == nullptr)
		return std::nullopt;
	Options kept;
	std::vector<std::string> hosts, addrs, ports;
	for (PQconninfoOption *o = opts; o->keyword != nullptr; ++o)
	{
		const std::string_view k(o->keyword);
		if (k == "host")
			hosts = split_commas(o->val);
		else if (k == "hostaddr")
			addrs = split_commas(o->val);
		else if (k == "port")
			ports = split_commas(o->val);
		else if (o->val != nullptr)
			kept.emplace_back(o->keyword, o->val);
	}
	PQconninfoFree(opts);
	const std::size_t n = std::max(hosts.size(), addrs.size());
	if (n <= 1)
		return std::nullopt;
	const std::string current = PQhost(conn) != nullptr ? PQhost(conn) : "";
	const std::string current_port = PQport(conn) != nullptr ? PQport(conn) : "";
	std::optional<std::size_t> at;
	for (std::size_t i = 0; i < n && !at; ++i)
	{
		const bool host_matches =
			(i < hosts.size() && hosts[i] == current) || (i < addrs.size() && addrs[i] == current);
		const std::string port = ports.size() > 1 && i < ports.size() ? ports[i]
								 : ports.empty()                      ? std::string()
																	  : ports[0];
		if (host_matches && (port.empty() || current_port.empty() || port == current_port))
			at = i;
	}
	if (!at || *at + 1 >= n)
		return std::nullopt;
	if (!hosts.empty())
		kept.emplace_back("host", join_from(hosts, *at + 1));
	if (!addrs.empty())
		kept.emplace_back("hostaddr", join_from(addrs, *at + 1));
	if (ports.size() > 1)
		kept.emplace_back("port", join_from(ports, *at + 1));
	else if (ports.size() == 1)
		kept.emplace_back("port", ports[0]);
	return kept;
}

enum class Polled
{
	Connected,
	Failed,
	TimedOut,
};

/* Drives PQconnectPoll until the attempt ends or deadline passes. */
Polled
poll_connect(PGconn *pg, BootClock::time_point deadline)
{
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	while (PQstatus(pg) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED)
	{
		const int fd = PQsocket(pg);
		if (fd < 0)
			break;
		if (auto waited =
				wait_socket(fd, st == PGRES_POLLING_READING, st != PGRES_POLLING_READING, deadline);
			!waited)
			return waited.error().kind == FailureKind::Timeout ? Polled::TimedOut : Polled::Failed;
		st = PQconnectPoll(pg);
	}
	return PQstatus(pg) == CONNECTION_OK ? Polled::Connected : Polled::Failed;
}

void
quiet_and_verbose(PGconn *pg)
{
	PQsetErrorVerbosity(pg, PQERRORS_VERBOSE); // so that server refusals carry SQLSTATEs
	/* libpq's default prints NOTICEs and WARNINGs (e.g. "terminating connection because
	 * of crash of another server process") on the application's stderr; a library must
	 * not, and every failure that matters reaches the caller as an error string. */
	PQsetNoticeProcessor(
		pg, [](void *, const char *) {}, nullptr);
}

} // namespace

Outcome<std::unique_ptr<PgConnection>>
PgPool::connect(BootClock::time_point call_deadline) const
{
	auto fail = [](FailureKind kind, std::string text, std::string state = {})
	{ return std::unexpected(make_failure(kind, "could not connect to server: " + text, state)); };
	/* The expanded conninfo comes last, so settings in the user's conninfo win. */
	const char *keywords[] = {"fallback_application_name", "dbname", nullptr};
	const char *values[] = {"lockext-client", m_config.conninfo.c_str(), nullptr};
	auto conn = std::make_unique<PgConnection>();
	conn->conn.reset(PQconnectStartParams(keywords, values, 1));
	PGconn *pg = conn->conn.get();
	if (pg == nullptr)
		return fail(FailureKind::Unreachable, "out of memory");
	quiet_and_verbose(pg);
	/* The conninfo, PGCONNECT_TIMEOUT or a service file may set it (PQconninfo shows the
	 * value libpq settled on); otherwise PgOptions::connect_timeout. Per host, as in
	 * libpq's own blocking connect, and never past the call's deadline (call_timeout),
	 * also when the per-host timeout is 0 (none). */
	const auto timeout = configured_connect_timeout(pg).value_or(m_config.connect_timeout);
	std::string timed_out; // hosts given up on, for the final message
	for (;;)
	{
		auto deadline =
			timeout.count() > 0 ? BootClock::now() + timeout : BootClock::time_point::max();
		const bool call_bound = call_deadline < deadline;
		if (call_bound)
			deadline = call_deadline;
		const Polled polled = poll_connect(pg, deadline);
		if (polled == Polled::Connected)
			break;
		if (polled == Polled::Failed)
		{
			const std::string text = connect_error_text(pg);
			const ConnectClass cls = classify_connect_failure(text, PQconnectionNeedsPassword(pg));
			return fail(cls.kind, timed_out + text, cls.sqlstate);
		}
		if (call_bound)
		{
			const char *host = PQhost(pg);
			return fail(FailureKind::Timeout,
						timed_out + "no connection within call_timeout" +
							(host != nullptr && *host != '\0'
								 ? std::string(" (connecting to host \"") + host + "\")"
								 : std::string()));
		}
		const char *host = PQhost(pg);
		timed_out += "timeout expired after " + std::to_string(timeout.count()) +
					 " s (connect_timeout)" +
					 (host != nullptr && *host != '\0' ? std::string(" on host \"") + host + "\""
													   : std::string());
		auto next = later_hosts(pg);
		if (!next)
			return fail(FailureKind::Unreachable, timed_out);
		timed_out += "; ";
		std::vector<const char *> kw, val;
		for (const auto &[k, v] : *next)
		{
			kw.push_back(k.c_str());
			val.push_back(v.c_str());
		}
		kw.push_back(nullptr);
		val.push_back(nullptr);
		conn->conn.reset(PQconnectStartParams(kw.data(), val.data(), 0));
		pg = conn->conn.get();
		if (pg == nullptr)
			return fail(FailureKind::Unreachable, "out of memory");
		quiet_and_verbose(pg);
	}
	PQsetErrorVerbosity(pg, PQERRORS_DEFAULT);
	if (PQsetnonblocking(pg, 1) != 0)
		return fail(FailureKind::Unreachable,
					"cannot switch to non-blocking mode: " + one_line(PQerrorMessage(pg)));
	return conn;
}

Outcome<PgPool::Borrowed>
PgPool::acquire(BootClock::time_point call_deadline)
{
	std::vector<std::unique_ptr<PgConnection>> dead;
	std::unique_lock lock(m_mutex);
	/* The condition variable counts steady_clock: the call deadline (BootClock) is
	 * converted by its distance from now. */
	const auto steady_now = std::chrono::steady_clock::now();
	auto deadline = steady_now + m_config.acquire_timeout;
	bool call_bound = false;
	if (call_deadline != BootClock::time_point::max())
	{
		const auto left = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
			call_deadline - BootClock::now());
		if (steady_now + left < deadline)
		{
			deadline = steady_now + left;
			call_bound = true;
		}
	}
	for (;;)
	{
		if (m_closed)
			return std::unexpected(make_failure(
				FailureKind::Config, "the plugin was cleaned up (cleanup() was called)"));
		if (!m_idle.empty())
		{
			/* The liveness check (a poll(2)) runs without the mutex: the connection is
			 * this thread's once popped, and its slot stays counted in m_open. */
			/* Prefer the connection this thread used last (its server backend, caches
			 * and scheduling stay paired with this thread, as with a connection per
			 * thread); otherwise the most recently returned one. */
			auto pick =
				std::find_if(m_idle.begin(), m_idle.end(),
							 [](const auto &idle) { return idle.get() == t_last_connection; });
			if (pick == m_idle.end())
				pick = m_idle.end() - 1;
			std::unique_ptr<PgConnection> conn = std::move(*pick);
			*pick = std::move(m_idle.back());
			m_idle.pop_back();
			lock.unlock();
			if (looks_alive(*conn))
			{
				close_all(std::move(dead));
				return Borrowed(this, std::move(conn));
			}
			dead.push_back(std::move(conn));
			lock.lock();
			--m_open;
			continue;
		}
		if (m_open < m_config.size)
			break;
		++m_waiters;
		const auto waited = m_cv.wait_until(lock, deadline);
		--m_waiters;
		if (waited == std::cv_status::timeout && m_idle.empty() && m_open >= m_config.size &&
			!m_closed)
			return std::unexpected(make_failure(
				FailureKind::Timeout,
				call_bound ? std::string("no pool connection became free within call_timeout")
						   : "no pool connection became free within acquire_timeout (" +
								 std::to_string(m_config.acquire_timeout.count()) + " ms)"));
	}
	++m_open; // reserve the slot, then connect without holding the mutex
	lock.unlock();
	close_all(std::move(dead));

	auto conn = connect(call_deadline);
	if (!conn)
	{
		give_back(nullptr, true);
		return std::unexpected(std::move(conn.error()));
	}
	return Borrowed(this, std::move(*conn));
}

void
PgPool::give_back(std::unique_ptr<PgConnection> conn, bool discard) noexcept
{
	bool keep = conn && !discard && PQstatus(conn->conn.get()) == CONNECTION_OK &&
				PQtransactionStatus(conn->conn.get()) == PQTRANS_IDLE;
	bool waiters = false;
	t_last_connection = conn.get();
	if (keep)
		conn->idle_since = BootClock::now();
	{
		std::lock_guard guard(m_mutex);
		if (keep && !m_closed)
			m_idle.push_back(std::move(conn));
		else
			--m_open;
		waiters = m_waiters > 0;
	}
	if (waiters)
		m_cv.notify_one();
	conn.reset(); // PQfinish (if not kept) outside the mutex
}

void
PgPool::drop_idle() noexcept
{
	std::vector<std::unique_ptr<PgConnection>> dead;
	{
		std::lock_guard guard(m_mutex);
		m_open -= m_idle.size();
		dead.swap(m_idle);
	}
	m_cv.notify_all();
	close_all(std::move(dead));
}

void
PgPool::close() noexcept
{
	{
		std::lock_guard guard(m_mutex);
		m_closed = true;
	}
	drop_idle();
}

} // namespace lockext::detail
