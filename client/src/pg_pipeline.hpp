/*
 * pg_pipeline.hpp (internal)
 *     PgOptions::pipeline (spec §9): concurrent calls from many threads share a few
 *     connections through libpq pipeline mode, so one round trip carries many threads'
 *     requests.
 *
 * Interface: PgPipeline::execute(statement, params, named, deadline, call_deadline) runs
 * one statement on one of the shared connections (round robin) and returns its first
 * result (or its first error result), exactly like the pooled path's await_result, or a
 * classified Failure whose message has no "<op> failed: " prefix. close() fails every
 * request in flight, makes later calls fail, and returns once no thread is inside.
 *
 * Wire protocol: every request is its own sync group (Parse only for a named statement
 * not yet prepared on that connection, then Bind/Describe/Execute, then Sync:
 * PQsendQueryPrepared/PQsendQueryParams + PQpipelineSync), so one caller's error never
 * aborts another's request; results come back in the order the requests were queued
 * and are matched to them first-in first-out (Channel::slots).
 *
 * Threads and locking protocol: no threads of its own (a leader-based combiner). Per
 * shared connection one Channel with one mutex, which guards the channel's state, its
 * slots, the Request objects referenced from them, and EVERY libpq call on its PGconn
 * (libpq is not thread-safe per connection). A caller, under the mutex, sends its
 * request (non-blocking: PQpipelineSync pushes what the socket takes; the rest is
 * flushed by the reader when the socket is writable) and appends a slot. If no thread
 * is the channel's reader it becomes it; otherwise it waits on its own condition
 * variable (with the channel mutex). The reader, outside the mutex, polls the socket
 * (and the channel's eventfd, which wakes it for pending output, a broken connection
 * or close()); under the mutex it reads (PQconsumeInput), dispatches every complete
 * result to its slot's request (setting done and notifying it), and when its own
 * request is done hands the reader role to the oldest request still waiting (sets
 * Request::reader and notifies it) before returning. The connection object is shared
 * (std::shared_ptr) so that a reader polling its socket keeps it open even if another
 * thread breaks it meanwhile; it is only ever used under the mutex.
 *
 * Deadlines: a request whose call_timeout passes returns Timeout (outcome unknown: it
 * was sent); its slot stays in the FIFO with no request, and its late result is read and
 * discarded in order, so the connection stays in step. A request whose statement_timeout
 * passes without a reply means the connection made no progress for that long: the
 * connection is broken as below (the pooled path discards its connection then, too).
 * Connecting uses the pool's connect (PgPool::acquire: connect timeout, every host of a
 * multi-host conninfo, the call deadline), one thread per channel at a time; the others
 * wait for it, bounded by their call deadline.
 *
 * Poolers: a new connection first asks the server for pg_backend_pid(); if that is not
 * PQbackendPID() a pooler sits in between (its own cancel key), and the pipeline is
 * bypassed for good (see bypassed()): a transaction pooler such as PgBouncer 1.18 hands
 * the server connection back at each ReadyForQuery, so later sync groups already sent
 * would run on a server connection nobody reads.
 *
 * Broken connection (libpq error, EOF, a FATAL such as pg_terminate_backend's 57P01,
 * 25006 read-only, a reply matching no request): every request in flight on it fails
 * with ConnectionLost and outcome_unknown = true, the connection is closed, and the
 * next call on that channel connects anew.
 */
#ifndef LOCKEXT_CLIENT_PG_PIPELINE_HPP
#define LOCKEXT_CLIENT_PG_PIPELINE_HPP

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "pg_pool.hpp"

namespace lockext::detail
{

struct PipelineStatement
{
	std::string name; // the prepared statement's name (named mode)
	std::string sql;
	int param_count = 0;
	int result_format = 0; // 0 = text, 1 = binary
};

struct PgPipelineConfig
{
	PgPoolConfig pool; // size = number of shared connections (at least 1)
	std::vector<PipelineStatement> statements;
};

class PgPipeline final
{
  public:
	explicit PgPipeline(PgPipelineConfig config);
	~PgPipeline(); // close()
	PgPipeline(const PgPipeline &) = delete;
	PgPipeline &operator=(const PgPipeline &) = delete;

	/* Runs statements[statement] with params (text format, param_count of them). named:
	 * as a prepared statement (prepared on the connection first if needed). Waits
	 * until deadline (the statement's: min(statement_timeout, call_timeout)); connecting
	 * ends at call_deadline. Thread-safe. */
	[[nodiscard]] Reply execute(unsigned statement, const char *const *params, bool named,
								const Deadline &deadline, BootClock::time_point call_deadline,
								bool *use_pool);

	/* True once a connection showed a pooler in between (the pid the server reports is
	 * not the one of the connection's BackendKeyData: PgBouncer, pgpool): a transaction
	 * pooler releases the server connection at every ReadyForQuery, so sync groups
	 * queued behind it would be lost. execute() then sets *use_pool and does nothing;
	 * the caller runs the call on its pool instead (for good). */
	[[nodiscard]] bool bypassed() const noexcept
	{
		return m_bypassed.load(std::memory_order_relaxed);
	}

	/* Fails every request in flight (ConnectionLost, outcome unknown), closes the
	 * connections, makes later calls fail (Config, "cleaned up"), and returns once no
	 * thread is inside execute(). Idempotent. */
	void close() noexcept;

	/* The number of shared connections (the most server connections it opens). */
	[[nodiscard]] std::size_t connections() const noexcept
	{
		return m_channels.size();
	}

	struct Channel; // pg_pipeline.cpp

  private:
	[[nodiscard]] static Outcome<bool> behind_pooler(PGconn *pg,
													 BootClock::time_point call_deadline);
	std::atomic<bool> m_bypassed{false};
	PgPool m_pool;
	std::vector<PipelineStatement> m_statements;
	std::vector<std::unique_ptr<Channel>> m_channels;
	std::atomic<std::size_t> m_next{0};
};

} // namespace lockext::detail

#endif
