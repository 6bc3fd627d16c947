/*
 * pg_pool.hpp (internal)
 *     A bounded, thread-safe pool of libpq connections for the pg backend.
 *
 * Locking protocol: m_mutex guards m_idle, m_open, m_waiters and m_closed. Connecting,
 * the liveness check of an idle connection (a poll(2)) and PQfinish happen outside the
 * mutex: acquire() reserves a slot (m_open++) or pops an idle connection under the
 * mutex, then connects or checks it without it; give_back() notifies m_cv only when a
 * thread waits. Waiting for a free slot is bounded by
 * acquire_timeout on m_cv. A borrowed connection belongs to one thread until its
 * Borrowed guard is destroyed; only connections that are CONNECTION_OK, idle
 * (PQTRANS_IDLE) and not marked discarded go back to the pool.
 */
#ifndef LOCKEXT_CLIENT_PG_POOL_HPP
#define LOCKEXT_CLIENT_PG_POOL_HPP

#include <libpq-fe.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <expected>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <lockext/boot_clock.hpp>
#include <lockext/errors.hpp>
#include <lockext/locking_plugin.hpp>

namespace lockext::detail
{

/* libpq's text (error messages span several lines for multi-host conninfo) on one
 * line, without the trailing newline. */
[[nodiscard]] std::string one_line(const char *text);

/* Waits until fd is readable (read) and/or writable (write), or deadline passes
 * (BootClock::time_point::max() = never): an error of kind Timeout then; EINTR is
 * retried. */
[[nodiscard]] Outcome<void> wait_socket(int fd, bool read, bool write,
										BootClock::time_point deadline);

/*
 * One statement's plumbing, shared by the pooled (pg_locking_plugin.cpp) and the
 * pipelined (pg_pipeline.cpp) paths.
 */
struct PgResultCloser
{
	void operator()(PGresult *res) const noexcept
	{
		PQclear(res);
	}
};
using PgResult = std::unique_ptr<PGresult, PgResultCloser>;
/* The reply to one statement, or its failure (message without "<op> failed: "). */
using Reply = std::expected<PgResult, Failure>;

/* The deadline of one statement: which option set it, for the message. */
struct Deadline
{
	BootClock::time_point at = BootClock::time_point::max();
	const char *option = "statement_timeout"; // or "call_timeout"
};

/* The connection is broken or in an unknown state after this failure. */
[[nodiscard]] bool breaks_connection(const Failure &f) noexcept;

/* A failure of one statement from its error result (res may be nullptr: libpq's
 * connection error); sent = the request may have reached the server. Classified by
 * errors.cpp (SQLSTATE), ConnectionLost when the connection is no longer OK. */
[[nodiscard]] Failure failure_from(PGconn *conn, const PGresult *res, bool sent);

/* The connection failed (ConnectionLost); outcome unknown when sent. */
[[nodiscard]] Failure connection_failure(PGconn *conn, bool sent);

/* "no reply within <option>; the connection was discarded" (Timeout). */
[[nodiscard]] Failure timeout_failure(bool sent, const Deadline &deadline);

/* Flushes what PQsend* queued, on a non-blocking connection, until deadline. */
[[nodiscard]] Outcome<void> flush_all(PGconn *conn, const Deadline &deadline);

/*
 * Waits for the reply of a request already sent (and flushed) on conn and returns its
 * first result, or its first error result when a later one is an error (an
 * ErrorResponse after CommandComplete, e.g. a deferred constraint failing at the
 * implicit commit: the statement's effect was rolled back, so its rows must not be
 * believed), after reading every result up to the end of the reply so that the
 * connection is idle again. Never blocks past deadline (max() = no deadline): each
 * PQgetResult is called only when PQisBusy says it will not block.
 */
[[nodiscard]] Reply await_result(PGconn *conn, const Deadline &deadline);

struct PgConnCloser
{
	void operator()(PGconn *conn) const noexcept
	{
		PQfinish(conn);
	}
};

/* One physical connection plus what this client prepared on it. */
struct PgConnection
{
	std::unique_ptr<PGconn, PgConnCloser> conn;
	unsigned prepared = 0;              // bit i set: statement i was prepared on this connection
	BootClock::time_point idle_since{}; // when it last went back to the pool
};

struct PgPoolConfig
{
	std::string conninfo;
	std::size_t size = 4;
	std::chrono::seconds connect_timeout{5};
	std::chrono::milliseconds acquire_timeout{5000};
};

class PgPool final
{
  public:
	/* A borrowed connection; gives it back (or drops it) when destroyed. */
	class Borrowed final
	{
	  public:
		Borrowed(PgPool *pool, std::unique_ptr<PgConnection> conn) noexcept
			: m_pool(pool), m_conn(std::move(conn))
		{
		}
		Borrowed(Borrowed &&other) noexcept
			: m_pool(std::exchange(other.m_pool, nullptr)), m_conn(std::move(other.m_conn)),
			  m_discard(other.m_discard)
		{
		}
		Borrowed &operator=(Borrowed &&) = delete;
		~Borrowed();

		PgConnection &operator*() const noexcept
		{
			return *m_conn;
		}
		PgConnection *operator->() const noexcept
		{
			return m_conn.get();
		}
		/* Do not reuse this connection (broken, timed out, or state unknown). */
		void discard() noexcept
		{
			m_discard = true;
		}

	  private:
		PgPool *m_pool;
		std::unique_ptr<PgConnection> m_conn;
		bool m_discard = false;
	};

	explicit PgPool(PgPoolConfig config);
	~PgPool();
	PgPool(const PgPool &) = delete;
	PgPool &operator=(const PgPool &) = delete;

	/* An idle connection, or a new one if fewer than size are open, waiting at most
	 * acquire_timeout for one to come back, and never past call_deadline (max() = none):
	 * waiting for a slot and connecting (every host) end there, with a Timeout failure
	 * (nothing was sent). The failure's message has no
	 * "<op> failed: " prefix. New connections are opened with PQconnectStartParams +
	 * PQconnectPoll under the connect timeout (see PgOptions::connect_timeout), with
	 * verbose errors so that a server's refusal carries its SQLSTATE, and are switched
	 * to non-blocking mode. */
	[[nodiscard]] Outcome<Borrowed> acquire(BootClock::time_point call_deadline);

	/* Closes every idle connection: after one connection broke (server restart,
	 * failover), the others to the same server are most likely broken too. */
	void drop_idle() noexcept;

	/* Closes idle connections and makes acquire() fail from now on. */
	void close() noexcept;

  private:
	[[nodiscard]] Outcome<std::unique_ptr<PgConnection>>
	connect(BootClock::time_point call_deadline) const;
	void give_back(std::unique_ptr<PgConnection> conn, bool discard) noexcept;

	const PgPoolConfig m_config;
	std::mutex m_mutex;
	std::condition_variable m_cv;
	std::vector<std::unique_ptr<PgConnection>> m_idle; // guarded by m_mutex
	std::size_t m_open = 0;                            // idle + borrowed + connecting
	std::size_t m_waiters = 0;                         // threads in m_cv.wait_until
	bool m_closed = false;
};

} // namespace lockext::detail

#endif
