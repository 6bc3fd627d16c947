/*
 * pg_pipeline.cpp
 *     The pipelined mode of the pg backend (see pg_pipeline.hpp for the interface, the
 *     threads and the locking protocol).
 */
#include "pg_pipeline.hpp"

#include <poll.h>
#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>
#include <mutex>
#include <optional>
#include <string_view>
#include <utility>

#include "errors_internal.hpp"

namespace lockext::detail
{

namespace
{

/*
 * A one-shot wake-up (a binary semaphore on a futex: std::binary_semaphore of
 * libstdc++ 12 waits with a timeout by sleeping and yielding in a loop, and a
 * mutex + condition variable costs the woken thread a second futex round on the
 * mutex). State: 0 empty, 1 posted, 2 empty with the owner asleep in FUTEX_WAIT;
 * release() makes the syscall only in state 2. The futex word may be gone by the
 * time FUTEX_WAKE runs (the owner saw 1 and returned): waking a dead address is
 * harmless, as with sem_post(3).
 */
class Wake
{
  public:
	void release() noexcept
	{
		if (m_state.exchange(1, std::memory_order_release) == 2)
			syscall(SYS_futex, &m_state, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
	}
	/* Takes a release, waiting until it comes or until passes (false then). */
	bool acquire_until(std::chrono::steady_clock::time_point until) noexcept
	{
		for (;;)
		{
			std::uint32_t expected = 0;
			if (!m_state.compare_exchange_strong(expected, 2, std::memory_order_acquire))
			{
				if (expected == 1)
				{
					m_state.store(0, std::memory_order_relaxed);
					return true;
				}
				/* expected == 2: asleep from an earlier round (woken spuriously) */
			}
			timespec relative{};
			timespec *timeout = nullptr;
			if (until != std::chrono::steady_clock::time_point::max())
			{
				const auto left = until - std::chrono::steady_clock::now();
				if (left <= std::chrono::steady_clock::duration::zero())
				{
					expected = 2;
					if (m_state.compare_exchange_strong(expected, 0, std::memory_order_acquire))
						return false;
					m_state.store(0, std::memory_order_relaxed); // it was posted meanwhile
					return true;
				}
				const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
				relative.tv_sec = static_cast<time_t>(ns / 1000000000);
				relative.tv_nsec = static_cast<long>(ns % 1000000000);
				timeout = &relative;
			}
			syscall(SYS_futex, &m_state, FUTEX_WAIT_PRIVATE, 2, timeout, nullptr, 0);
		}
	}

  private:
	std::atomic<std::uint32_t> m_state{0};
};

/*
 * One caller's request; lives on the caller's stack while it is inside execute().
 * Waking: whoever sets done or reader (under the channel mutex) queues the request on
 * Channel::wakes unless it is already signalled, and releases its Wake after
 * unlocking (so that the woken thread does not run into the mutex still held). The
 * caller never returns while signalled (it takes the pending release first), so the
 * Wake outlives every release.
 */
struct Request
{
	Wake wake;
	bool signalled = false; // a release is queued or under way (guarded by the mutex)
	bool done = false;      // reply is set
	bool reader = false;    // handed the reader role
	Reply reply;
};

/* A request not sent yet, with its own copy of the parameters (the combining sender
 * sends it while its caller may already have given up). */
struct Outgoing
{
	Request *request = nullptr; // nullptr: the caller gave up
	unsigned statement = 0;
	bool named = false;
	int param_count = 0;
	std::array<std::string, 4> params;
};

/* One sync group in flight, in reply order. */
struct Slot
{
	Request *request = nullptr; // nullptr: abandoned by its caller, or an internal Parse
	unsigned statement = 0;
	bool prepare = false; // the Parse of a named statement (no caller)
	PgResult first;       // the first result, or the first error result
	bool first_is_error = false;
	std::optional<Failure> forced; // the Parse before it failed: this is the call's failure
};

/* A connection in pipeline mode. Shared by the channel and a reader polling its socket;
 * used only under the channel mutex. */
struct LiveConnection
{
	explicit LiveConnection(PgPool::Borrowed b) : borrowed(std::move(b)) {}
	~LiveConnection()
	{
		borrowed.discard(); // never back to the pool in pipeline mode: PQfinish
	}
	PgPool::Borrowed borrowed;
	PGconn *pg() const noexcept
	{
		return borrowed->conn.get();
	}
	unsigned prepared = 0; // bit i: statement i was (being) prepared on it
};

bool
is_error_status(ExecStatusType st) noexcept
{
	return st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_PIPELINE_ABORTED;
}

std::chrono::steady_clock::time_point
steady_deadline(BootClock::time_point at)
{
	if (at == BootClock::time_point::max())
		return std::chrono::steady_clock::time_point::max();
	return std::chrono::steady_clock::now() +
		   std::chrono::duration_cast<std::chrono::steady_clock::duration>(at - BootClock::now());
}

Failure
cleaned_up()
{
	return make_failure(FailureKind::Config, "the plugin was cleaned up (cleanup() was called)");
}

/* Releases the Wakes of the requests a thread woke, after unlocking. */
void
release_wakes(std::unique_lock<std::mutex> &lock, std::vector<Request *> &wakes)
{
	if (wakes.empty())
		return;
	std::vector<Request *> batch;
	batch.swap(wakes);
	lock.unlock();
	for (Request *request : batch)
		request->wake.release();
	lock.lock();
	if (wakes.empty())
		wakes.swap(batch), wakes.clear(); // keep the capacity
}

} // namespace

struct PgPipeline::Channel
{
	/* io: every libpq call on conn's PGconn and LiveConnection::prepared. mutex: all the
	 * rest. Order: io before mutex. */
	std::mutex io;
	std::mutex mutex;
	std::condition_variable state_cv;     // connecting ended, a caller left, close()
	std::shared_ptr<LiveConnection> conn; // nullptr: not connected
	bool connecting = false;
	bool sender_active = false; // a thread sends the outbox
	bool reader_active = false; // a thread reads (or has been handed the role)
	bool closed = false;
	std::deque<Outgoing> outbox;   // queued, not sent yet
	std::vector<Outgoing> sending; // taken by the sender, being sent
	std::deque<Slot> slots;        // in flight, FIFO = reply order
	std::size_t callers = 0;       // threads inside execute() on this channel
	std::vector<Request *> wakes;  // to release after unlocking (see Request)
	int wake_fd = -1;              // eventfd: wakes the reader from poll(2)

	Channel() : wake_fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
	~Channel()
	{
		if (wake_fd >= 0)
			::close(wake_fd);
	}

	void wake_reader() const noexcept
	{
		if (wake_fd >= 0 && reader_active)
		{
			const std::uint64_t one = 1;
			[[maybe_unused]] ssize_t n = ::write(wake_fd, &one, sizeof one);
		}
	}

	void signal(Request &request)
	{
		if (!request.signalled)
		{
			request.signalled = true;
			wakes.push_back(&request);
		}
	}

	/* Sets a request's reply and wakes its caller. */
	void complete(Request &request, Reply reply)
	{
		request.reply = std::move(reply);
		request.done = true;
		signal(request);
	}

	/*
	 * Fails every request in flight with why (the head with its own error result if it
	 * has one; pg_if_io = the connection when io is held, for its status) and every
	 * queued one with a known outcome, and drops the connection; the next call
	 * connects anew. A thread using the connection keeps it open until it lets go.
	 */
	void break_connection(const Failure &why, PGconn *pg_if_io)
	{
		bool head = true;
		for (Slot &slot : slots)
		{
			if (slot.request != nullptr && !slot.request->done)
			{
				Failure f = why;
				if (head && slot.first_is_error && pg_if_io != nullptr)
				{
					f = failure_from(pg_if_io, slot.first.get(), true);
					f.kind = FailureKind::ConnectionLost;
					f.outcome_unknown = true;
				}
				complete(*slot.request, std::unexpected(std::move(f)));
			}
			head = false;
		}
		slots.clear();
		for (Outgoing &out : outbox)
			if (out.request != nullptr)
				complete(*out.request, std::unexpected(make_failure(
										   FailureKind::ConnectionLost,
										   "the connection failed before the request was sent")));
		outbox.clear();
		conn.reset();
		wake_reader();
	}

	/* The head slot's sync group is complete (PGRES_PIPELINE_SYNC). io and mutex held. */
	void complete_head(LiveConnection &live)
	{
		Slot slot = std::move(slots.front());
		slots.pop_front();
		if (slot.prepare)
		{
			if (slot.first_is_error || !slot.first)
			{
				live.prepared &= ~(1u << slot.statement);
				Failure f = slot.first ? failure_from(live.pg(), slot.first.get(), false)
									   : connection_failure(live.pg(), false);
				f.outcome_unknown = false; // used only if the Execute after it failed too
				if (!slots.empty())
					slots.front().forced = std::move(f);
			}
			return;
		}
		if (slot.request == nullptr)
			return; // abandoned (its caller timed out): the late reply is discarded
		Reply reply;
		if (slot.forced && (slot.first_is_error || !slot.first))
			/* The Parse before it failed and so did the Execute (26000): the Parse's
			 * failure says why. (Behind a transaction pooler the Execute may have run a
			 * same-named statement on another server connection: then its own result
			 * counts, it did run.) */
			reply = std::unexpected(std::move(*slot.forced));
		else if (!slot.first)
			reply = std::unexpected(
				make_failure(FailureKind::Protocol, "the server sent no result for the request"));
		else if (slot.first_is_error || (PQresultStatus(slot.first.get()) != PGRES_TUPLES_OK &&
										 PQresultStatus(slot.first.get()) != PGRES_COMMAND_OK))
			reply = std::unexpected(failure_from(live.pg(), slot.first.get(), true));
		else
			reply = std::move(slot.first);
		const bool read_only = !reply && is_read_only_sqlstate(reply.error().sqlstate);
		complete(*slot.request, std::move(reply));
		if (read_only)
		{
			/* A standby or a demoted primary: drop the connection so that the next call
			 * connects anew (failover), as the pooled path does. */
			break_connection(make_failure(FailureKind::ConnectionLost,
										  "the server is read-only (25006); the connection "
										  "was dropped",
										  "", true),
							 live.pg());
		}
	}

	/* Dispatches every complete result libpq has buffered on live (the current
	 * connection, kept alive by the caller). io and mutex held. */
	void drain(LiveConnection &live)
	{
		PGconn *pg = live.pg();
		int empty_in_a_row = 0;
		while (conn.get() == &live && !slots.empty())
		{
			if (PQisBusy(pg))
				break;
			PGresult *res = PQgetResult(pg);
			if (res == nullptr)
			{
				/* The end of one query's results; twice in a row means libpq has nothing
				 * queued although slots are: out of step. */
				if (++empty_in_a_row < 2)
					continue;
				break_connection(make_failure(FailureKind::ConnectionLost,
											  "pipeline out of step with the server", "", true),
								 pg);
				return;
			}
			empty_in_a_row = 0;
			const ExecStatusType st = PQresultStatus(res);
			if (st == PGRES_PIPELINE_SYNC)
			{
				PQclear(res);
				complete_head(live);
				continue;
			}
			Slot &head = slots.front();
			const bool is_error = is_error_status(st);
			if (!head.first || (is_error && !head.first_is_error))
			{
				head.first.reset(res);
				head.first_is_error = is_error;
			}
			else
				PQclear(res);
		}
		if (conn.get() == &live && PQstatus(pg) != CONNECTION_OK)
			break_connection(connection_failure(pg, true), pg);
	}

	/* Gives the reader role to the oldest request in flight still waiting, if any. */
	void hand_off()
	{
		reader_active = false;
		for (Slot &slot : slots)
			if (slot.request != nullptr && !slot.request->done)
			{
				slot.request->reader = true;
				reader_active = true;
				signal(*slot.request);
				return;
			}
	}

	/* The caller gives up on request (its deadline passed): the failure to return. */
	Failure expire(Request &request, const Deadline &deadline)
	{
		for (auto it = outbox.begin(); it != outbox.end(); ++it)
			if (it->request == &request)
			{
				outbox.erase(it);
				return make_failure(FailureKind::Timeout, std::string("no reply within ") +
															  deadline.option +
															  " (the request was not sent)");
			}
		for (Outgoing &out : sending)
			if (out.request == &request)
				out.request = nullptr;
		bool in_flight = false;
		for (Slot &slot : slots)
			if (slot.request == &request)
			{
				slot.request = nullptr;
				in_flight = true;
			}
		if (in_flight && std::string_view(deadline.option) == "statement_timeout")
		{
			/* No reply for statement_timeout: the connection (or the server) is stuck. */
			break_connection(make_failure(FailureKind::ConnectionLost,
										  std::string("no reply within ") + deadline.option +
											  " for an earlier request; the connection was "
											  "discarded",
										  "", true),
							 nullptr);
			return timeout_failure(true, deadline);
		}
		return make_failure(FailureKind::Timeout,
							std::string("no reply within ") + deadline.option +
								" (the request stays in the pipeline; its late reply is "
								"discarded)",
							"", true);
	}

	/* The combining sender: sends whatever is queued, batch after batch, until the
	 * outbox is empty. Called with mutex held and sender_active set; returns with mutex
	 * held and sender_active cleared. */
	void send_queued(std::unique_lock<std::mutex> &lock,
					 const std::vector<PipelineStatement> &statements)
	{
		for (;;)
		{
			const std::shared_ptr<LiveConnection> live = conn;
			if (outbox.empty() || !live)
			{
				if (!live)
					for (Outgoing &out : outbox)
						if (out.request != nullptr)
							complete(*out.request,
									 std::unexpected(make_failure(
										 FailureKind::ConnectionLost,
										 "the connection failed before the request was sent")));
				outbox.clear();
				sender_active = false;
				return;
			}
			sending.assign(std::make_move_iterator(outbox.begin()),
						   std::make_move_iterator(outbox.end()));
			outbox.clear();
			lock.unlock();

			std::unique_lock io_lock(io);
			PGconn *pg = live->pg();
			const std::size_t n = sending.size();
			/* Parse before item i; items [0, sent) fully queued; failed_unknown: item
			 * `sent` failed after its Execute may have gone out. */
			std::vector<bool> parse_before(n, false);
			std::size_t sent = 0;
			bool failed = false, failed_unknown = false;
			const int fd = PQsocket(pg);
			const int on = 1, off = 0;
			/* One TCP segment for the whole batch (PQpipelineSync sends at once). */
			const bool cork =
				n > 1 && fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on) == 0;
			for (; sent < n; ++sent)
			{
				const Outgoing &out = sending[sent];
				const PipelineStatement &st = statements[out.statement];
				if (out.named && (live->prepared & (1u << out.statement)) == 0)
				{
					if (PQsendPrepare(pg, st.name.c_str(), st.sql.c_str(), st.param_count,
									  nullptr) != 1 ||
						PQpipelineSync(pg) != 1)
					{
						failed = true;
						break;
					}
					parse_before[sent] = true;
					live->prepared |= 1u << out.statement;
				}
				const char *params[4] = {};
				for (int p = 0; p < out.param_count; ++p)
					params[p] = out.params[static_cast<std::size_t>(p)].c_str();
				const int queued =
					out.named ? PQsendQueryPrepared(pg, st.name.c_str(), st.param_count, params,
													nullptr, nullptr, st.result_format)
							  : PQsendQueryParams(pg, st.sql.c_str(), st.param_count, nullptr,
												  params, nullptr, nullptr, st.result_format);
				if (queued != 1)
				{
					failed = true;
					break;
				}
				if (PQpipelineSync(pg) != 1)
				{
					failed = failed_unknown = true;
					break;
				}
			}
			if (cork)
				(void) setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
			const bool pending = !failed && PQflush(pg) == 1;

			lock.lock();
			if (conn != live)
			{
				/* Broken meanwhile: whatever was sent has an unknown outcome. */
				for (std::size_t i = 0; i < n; ++i)
					if (sending[i].request != nullptr)
						complete(*sending[i].request,
								 std::unexpected(make_failure(
									 FailureKind::ConnectionLost,
									 "the connection failed while the request was sent", "",
									 i < sent || (i == sent && failed_unknown))));
			}
			else
			{
				for (std::size_t i = 0; i < sent; ++i)
				{
					if (parse_before[i])
					{
						Slot parse;
						parse.statement = sending[i].statement;
						parse.prepare = true;
						slots.push_back(std::move(parse));
					}
					Slot slot;
					slot.request = sending[i].request;
					slot.statement = sending[i].statement;
					slots.push_back(std::move(slot));
				}
				if (failed)
				{
					const Failure own = connection_failure(pg, failed_unknown);
					break_connection(connection_failure(pg, true), pg);
					for (std::size_t i = sent; i < n; ++i)
						if (sending[i].request != nullptr)
						{
							Failure f = own;
							f.outcome_unknown = i == sent && failed_unknown;
							complete(*sending[i].request, std::unexpected(std::move(f)));
						}
				}
				else
				{
					if (!reader_active)
						hand_off();
					if (pending)
						wake_reader(); // the socket did not take it all: the reader flushes
				}
			}
			sending.clear();
			io_lock.unlock();
		}
	}
};

PgPipeline::PgPipeline(PgPipelineConfig config)
	: m_pool(
		  [&]
		  {
			  PgPoolConfig pool = config.pool;
			  pool.size = std::max<std::size_t>(pool.size, 1);
			  return pool;
		  }()),
	  m_statements(std::move(config.statements))
{
	const std::size_t n = std::max<std::size_t>(config.pool.size, 1);
	for (std::size_t i = 0; i < n; ++i)
		m_channels.push_back(std::make_unique<Channel>());
}

PgPipeline::~PgPipeline()
{
	close();
}

void
PgPipeline::close() noexcept
{
	m_pool.close(); // connects that start from now on fail
	for (auto &ch : m_channels)
	{
		std::unique_lock lock(ch->mutex);
		ch->closed = true;
		ch->break_connection(
			make_failure(FailureKind::ConnectionLost,
						 "the plugin was cleaned up while the request was in flight", "", true),
			nullptr);
		ch->state_cv.notify_all();
		release_wakes(lock, ch->wakes);
		ch->state_cv.wait(lock, [&] { return ch->callers == 0; });
	}
}

/* Asks the server for its backend pid: a pooler in between gave the client a cancel key
 * of its own, so PQbackendPID() is not the pid of the backend that answers. */
Outcome<bool>
PgPipeline::behind_pooler(PGconn *pg, BootClock::time_point call_deadline)
{
	const Deadline deadline{call_deadline, "call_timeout"};
	if (PQsendQueryParams(pg, "SELECT pg_backend_pid()", 0, nullptr, nullptr, nullptr, nullptr,
						  0) != 1)
		return std::unexpected(connection_failure(pg, false));
	if (auto f = flush_all(pg, deadline); !f)
		return std::unexpected(std::move(f.error()));
	auto res = await_result(pg, deadline);
	if (!res)
		return std::unexpected(std::move(res.error()));
	if (PQresultStatus(res->get()) != PGRES_TUPLES_OK || PQntuples(res->get()) != 1)
		return std::unexpected(failure_from(pg, res->get(), false));
	return std::atol(PQgetvalue(res->get(), 0, 0)) != PQbackendPID(pg);
}

Reply
PgPipeline::execute(unsigned statement, const char *const *params, bool named,
					const Deadline &deadline, BootClock::time_point call_deadline, bool *use_pool)
{
	*use_pool = false;
	if (m_bypassed.load(std::memory_order_relaxed))
	{
		*use_pool = true;
		return std::unexpected(make_failure(FailureKind::Config, "behind a pooler"));
	}
	Channel &ch = *m_channels[m_next.fetch_add(1, std::memory_order_relaxed) % m_channels.size()];
	const PipelineStatement &st = m_statements[statement];
	if (st.param_count > 4)
		return std::unexpected(make_failure(FailureKind::Protocol, "too many parameters"));
	std::unique_lock lock(ch.mutex);
	if (ch.closed)
		return std::unexpected(cleaned_up());
	++ch.callers;
	Request request;
	/* Every exit: wake whom this thread woke, take a release still owed to its own
	 * request (so that its Wake outlives it), leave. */
	struct Leave
	{
		Channel &ch;
		std::unique_lock<std::mutex> &lock;
		Request &request;
		~Leave()
		{
			if (!lock.owns_lock())
				lock.lock();
			release_wakes(lock, ch.wakes);
			if (request.signalled)
			{
				lock.unlock();
				request.wake.acquire_until(std::chrono::steady_clock::time_point::max());
				lock.lock();
				request.signalled = false;
			}
			if (--ch.callers == 0 && ch.closed)
				ch.state_cv.notify_all();
		}
	} leave{ch, lock, request};

	/* 1. A connection (one thread connects, the others wait for it). */
	while (!ch.conn)
	{
		if (ch.closed)
			return std::unexpected(cleaned_up());
		if (ch.connecting)
		{
			if (ch.state_cv.wait_until(lock, steady_deadline(call_deadline)) ==
					std::cv_status::timeout &&
				!ch.conn && ch.connecting)
				return std::unexpected(
					make_failure(FailureKind::Timeout, "no connection within call_timeout"));
			continue;
		}
		ch.connecting = true;
		lock.unlock();
		auto borrowed = m_pool.acquire(call_deadline);
		std::shared_ptr<LiveConnection> live;
		std::optional<Failure> failed;
		if (!borrowed)
			failed = std::move(borrowed.error());
		else
		{
			live = std::make_shared<LiveConnection>(std::move(*borrowed));
			auto pooled = behind_pooler(live->pg(), call_deadline);
			if (!pooled)
				failed = std::move(pooled.error());
			else if (*pooled)
			{
				/* A transaction pooler (PgBouncer < 1.21) hands a server connection back
				 * at each ReadyForQuery, so the sync groups queued behind it would run on a
				 * connection nobody reads: pipelining cannot work through it. */
				m_bypassed.store(true);
				live.reset();
				lock.lock();
				ch.connecting = false;
				ch.state_cv.notify_all();
				*use_pool = true;
				return std::unexpected(make_failure(FailureKind::Config, "behind a pooler"));
			}
			else if (PQenterPipelineMode(live->pg()) != 1)
				failed = make_failure(FailureKind::Unreachable,
									  "cannot enter pipeline mode: " +
										  one_line(PQerrorMessage(live->pg())));
		}
		if (failed || ch.closed)
		{
			live.reset(); // PQfinish outside the mutex
			lock.lock();
			ch.connecting = false;
			ch.state_cv.notify_all();
			return std::unexpected(failed ? std::move(*failed) : cleaned_up());
		}
		lock.lock();
		ch.connecting = false;
		ch.state_cv.notify_all();
		if (ch.closed)
		{
			lock.unlock();
			live.reset();
			return std::unexpected(cleaned_up());
		}
		ch.conn = std::move(live);
	}

	/* 2. Queue; send the queue if nobody is sending (the combiner). */
	Outgoing out;
	out.request = &request;
	out.statement = statement;
	out.named = named;
	out.param_count = st.param_count;
	for (int p = 0; p < st.param_count; ++p)
		out.params[static_cast<std::size_t>(p)] = params[p];
	ch.outbox.push_back(std::move(out));
	if (!ch.sender_active)
	{
		ch.sender_active = true;
		ch.send_queued(lock, m_statements);
	}

	/* 3. Wait for the reply, or read for everyone while this thread is the reader. */
	const auto until = steady_deadline(deadline.at);
	for (;;)
	{
		if (request.done && !request.reader)
			return std::move(request.reply);
		if (request.reader)
			break;
		release_wakes(lock, ch.wakes);
		if (request.done || request.reader)
			continue;
		lock.unlock();
		const bool woken = request.wake.acquire_until(until);
		lock.lock();
		if (woken)
			request.signalled = false;
		else if (!request.done && !request.reader)
			return std::unexpected(ch.expire(request, deadline));
	}

	/* The reader: poll the socket without any lock; read and dispatch with both. */
	std::shared_ptr<LiveConnection> live;
	bool readable = false;
	for (;;)
	{
		if (request.done)
			break;
		live = ch.conn;
		if (!live)
		{
			/* Cannot happen (a break completes every request), but never spin. */
			request.reply = std::unexpected(
				make_failure(FailureKind::ConnectionLost, "the connection was lost", "", true));
			request.done = true;
			break;
		}
		lock.unlock();
		std::unique_lock io_lock(ch.io);
		lock.lock();
		PGconn *pg = live->pg();
		if (ch.conn == live && !request.done)
		{
			if (readable && PQconsumeInput(pg) == 0)
				ch.break_connection(connection_failure(pg, true), pg);
			else
				ch.drain(*live);
		}
		readable = false;
		if (request.done)
			break;
		if (ch.conn != live)
			continue;
		const auto left =
			std::chrono::ceil<std::chrono::milliseconds>(deadline.at - BootClock::now());
		if (deadline.at != BootClock::time_point::max() && left.count() <= 0)
		{
			request.reply = std::unexpected(ch.expire(request, deadline));
			request.done = true;
			break;
		}
		const int flushed = PQflush(pg);
		if (flushed < 0)
		{
			ch.break_connection(connection_failure(pg, true), pg);
			continue;
		}
		pollfd fds[2] = {
			{PQsocket(pg), static_cast<short>(POLLIN | (flushed == 1 ? POLLOUT : 0)), 0},
			{ch.wake_fd, POLLIN, 0},
		};
		io_lock.unlock();
		/* poll(2) counts CLOCK_MONOTONIC, which stops during a suspend: slices of at most
		 * 1 s, so that the BootClock deadline is checked again. */
		const int wait_ms = deadline.at == BootClock::time_point::max()
								? 1000
								: static_cast<int>(std::min<std::int64_t>(left.count(), 1000));
		release_wakes(lock, ch.wakes);
		if (request.done || ch.conn != live)
			continue;
		lock.unlock();
		const int ready = poll(fds, 2, wait_ms);
		const int poll_errno = errno;
		if (ready > 0 && (fds[1].revents & POLLIN) != 0)
		{
			std::uint64_t count;
			[[maybe_unused]] ssize_t n = ::read(ch.wake_fd, &count, sizeof count);
		}
		lock.lock();
		if (ready < 0 && poll_errno != EINTR && ch.conn == live)
		{
			ch.break_connection(
				make_failure(FailureKind::ConnectionLost,
							 std::string("poll failed: ") + std::strerror(poll_errno), "", true),
				nullptr);
			continue;
		}
		readable = ready > 0 && (fds[0].revents & (POLLIN | POLLERR | POLLHUP | POLLNVAL)) != 0;
	}
	ch.hand_off();
	request.reader = false;
	if (live)
	{
		lock.unlock();
		live.reset(); // the last owner of a broken connection closes it, outside the locks
		lock.lock();
	}
	return std::move(request.reply);
}

} // namespace lockext::detail
