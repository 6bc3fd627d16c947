/*
 * pg_pool.cpp
 *     The pg backend's connection pool (see pg_pool.hpp for the locking protocol).
 */
#include "pg_pool.hpp"

#include <poll.h>

#include <cerrno>
#include <utility>

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

namespace
{

/*
 * False if an idle connection should not be reused. An idle connection of this pool has
 * nothing to read: the client never LISTENs and never leaves a query running. Anything
 * readable is the server going away (a FATAL such as 57P01 at shutdown followed by EOF,
 * pg_terminate_backend, a pooler closing it) or, rarely, a NOTICE/ParameterStatus; the
 * connection is dropped in every case (libpq would report a buffered FATAL only as the
 * result of the next query). Costs one poll(2) with zero timeout.
 */
bool
looks_alive(PGconn *conn) noexcept
{
	if (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE)
		return false;
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

Result<std::unique_ptr<PgConnection>>
PgPool::connect() const
{
	const std::string timeout = std::to_string(m_config.connect_timeout.count());
	/* Later entries override earlier ones, and the expanded conninfo comes last, so
	 * settings in the user's conninfo win over these defaults. */
	const char *keywords[] = {"connect_timeout", "fallback_application_name", "dbname", nullptr};
	const char *values[] = {m_config.connect_timeout.count() > 0 ? timeout.c_str() : nullptr,
							"lockext-client", m_config.conninfo.c_str(), nullptr};
	auto conn = std::make_unique<PgConnection>();
	conn->conn.reset(PQconnectdbParams(keywords, values, 1));
	if (!conn->conn)
		return std::unexpected("could not connect to server: out of memory");
	if (PQstatus(conn->conn.get()) != CONNECTION_OK)
		return std::unexpected("could not connect to server: " +
							   one_line(PQerrorMessage(conn->conn.get())));
	/* libpq's default prints NOTICEs and WARNINGs (e.g. "terminating connection because
	 * of crash of another server process") on the application's stderr; a library must
	 * not, and every failure that matters reaches the caller as an error string. */
	PQsetNoticeProcessor(conn->conn.get(), [](void *, const char *) {}, nullptr);
	return conn;
}

Result<PgPool::Borrowed>
PgPool::acquire()
{
	std::vector<std::unique_ptr<PgConnection>> dead;
	std::unique_lock lock(m_mutex);
	const auto deadline = std::chrono::steady_clock::now() + m_config.acquire_timeout;
	for (;;)
	{
		if (m_closed)
			return std::unexpected("the plugin was cleaned up (cleanup() was called)");
		while (!m_idle.empty())
		{
			std::unique_ptr<PgConnection> conn = std::move(m_idle.back());
			m_idle.pop_back();
			if (looks_alive(conn->conn.get()))
			{
				lock.unlock();
				close_all(std::move(dead));
				return Borrowed(this, std::move(conn));
			}
			dead.push_back(std::move(conn));
			--m_open;
		}
		if (m_open < m_config.size)
			break;
		if (m_cv.wait_until(lock, deadline) == std::cv_status::timeout && m_idle.empty() &&
			m_open >= m_config.size && !m_closed)
			return std::unexpected("no pool connection became free within acquire_timeout (" +
								   std::to_string(m_config.acquire_timeout.count()) + " ms)");
	}
	++m_open; // reserve the slot, then connect without holding the mutex
	lock.unlock();
	close_all(std::move(dead));

	auto conn = connect();
	if (!conn)
	{
		give_back(nullptr, true);
		return std::unexpected(conn.error());
	}
	return Borrowed(this, std::move(*conn));
}

void
PgPool::give_back(std::unique_ptr<PgConnection> conn, bool discard) noexcept
{
	bool keep = conn && !discard && PQstatus(conn->conn.get()) == CONNECTION_OK &&
				PQtransactionStatus(conn->conn.get()) == PQTRANS_IDLE;
	{
		std::lock_guard guard(m_mutex);
		if (keep && !m_closed)
			m_idle.push_back(std::move(conn));
		else
			--m_open;
	}
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
