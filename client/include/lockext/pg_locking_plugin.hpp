/*
 * lockext/pg_locking_plugin.hpp
 *     The "pg" backend: LockingPlugin over libpq against the lockext extension.
 *
 * Thread safety: every method may be called from any number of threads at once. The
 * plugin owns a pool of at most PgOptions::pool_size connections; a connection is used
 * by one call at a time. Connections are opened lazily (outside the pool lock), a
 * connection that broke is dropped and a later call opens a new one.
 *
 * Construction never contacts the server and never throws for an unreachable server:
 * the calls return errors instead (a conninfo that does not parse: every call fails with
 * FailureKind::Config, "invalid connection string: ...").
 *
 * Every wait is bounded: connecting by the connect timeout (PQconnectStartParams +
 * PQconnectPoll), a statement by statement_timeout (non-blocking libpq, poll(2)), the
 * pool by acquire_timeout, and the whole call (pool + connect + statement) by
 * call_timeout, except libpq's synchronous host name resolution. Failures are classified once
 * (lockext/errors.hpp): connect refusals carry the server's SQLSTATE (28P01, 3D000, 53300, ...),
 * others are Unreachable; a 25006 reply (read-only server) is Unreachable, i.e. retryable, and
 * drops the connection and the pool's idle ones so the next call connects anew.
 */
#ifndef LOCKEXT_PG_LOCKING_PLUGIN_HPP
#define LOCKEXT_PG_LOCKING_PLUGIN_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <lockext/locking_plugin.hpp>

namespace lockext
{

struct PgOptions
{
	/* Most connections open at once. 0 is treated as 1. */
	std::size_t pool_size = 4;
	/* Bound on opening one connection (whole seconds), used only when neither the
	 * conninfo, PGCONNECT_TIMEOUT nor a service file sets connect_timeout (libpq's
	 * rules: then that value, minimum 2 s, applies). 0 = wait indefinitely. It applies
	 * per host of a multi-host conninfo: when it passes, the next host is tried. */
	std::chrono::seconds connect_timeout{5};
	/* Client-side deadline for one statement (send + reply). When it passes, the call
	 * returns an error and the connection is discarded. Works through any pooler
	 * because it is no session state. 0 = no deadline. */
	std::chrono::milliseconds statement_timeout{5000};
	/* How long a call waits for a free pool connection before it fails. */
	std::chrono::milliseconds acquire_timeout{5000};
	/* Client-side deadline for the whole call: waiting for a pool slot, connecting
	 * (every host of a multi-host conninfo, also when the per-host connect timeout is 0
	 * = none, e.g. PGCONNECT_TIMEOUT=0) and the statement. When it passes, the call
	 * fails with FailureKind::Timeout (before anything was sent: outcome known). The
	 * three timeouts above still apply within it.
	 * 0 (default) = acquire_timeout + connect budget + statement_timeout, where the
	 * connect budget is connect_timeout, or 10 s when connect_timeout is 0 (15 s with
	 * the defaults); a conninfo whose connects may legitimately take longer (several
	 * silent hosts, a large connect_timeout in the conninfo) needs a larger value.
	 * Negative = no call deadline (only the three timeouts above).
	 * Not covered: host name resolution, which libpq does synchronously inside
	 * PQconnectPoll (getaddrinfo); use hostaddr= or a local resolver to bound it. */
	std::chrono::milliseconds call_timeout{0};
	/* true (default): named prepared statements (one Parse per connection) until the
	 * first 42P05/26000 for one of this plugin's statements shows a transaction-pooling
	 * proxy (PgBouncer < 1.21) in between; the plugin then switches to unnamed
	 * statements for good, retries that call once (the Parse failed, nothing ran) and
	 * logs one line through on_log. false: unnamed statements only.
	 * The environment variable LOCKEXT_PREPARED_STATEMENTS, read at construction,
	 * overrides this: "off" = unnamed only, "on" = named only (no fallback: the
	 * pooler's error is returned), "auto" = the default behaviour. */
	bool prepared_statements = true;
	/* Schema holding the extension's functions; empty = unqualified (search_path). */
	std::string schema;
	/* Receives the plugin's rare log lines (one line, no newline), e.g. the switch to
	 * unnamed statements. May be called from any thread that makes a call; must not
	 * call the plugin. Empty (default): the line goes to stderr, prefixed "lockext: ". */
	std::function<void(std::string_view line)> on_log;
	/* (lockext 1.1; fields are only ever added here, at the end.) true: try_lock, renew
	 * and release from all threads share pipeline_connections connections through libpq
	 * pipeline mode, so one round trip carries many threads' requests. Every request is
	 * its own sync group (one caller's error never fails another's call); a call whose
	 * deadline passes returns Timeout and its late reply is discarded in order (the
	 * connection stays usable; after statement_timeout without any reply it is
	 * discarded, as in the pooled mode); a broken connection fails every call in flight
	 * on it with ConnectionLost, outcome unknown, and the next call connects anew.
	 * Connecting, failover, prepared_statements (and its fallback behind a transaction
	 * pooler), statement_timeout and call_timeout behave as in the pooled mode.
	 * grace_status() (and any call that can wait on the server) runs on the pool's
	 * dedicated connections (pool_size), so it never blocks the shared pipeline and the
	 * lease keeper's renewals never queue behind it. Behind a connection pooler (the
	 * server's pg_backend_pid() differs from the connection's BackendKeyData, e.g.
	 * PgBouncer) pipelining cannot work (a transaction pooler hands the server
	 * connection back at every ReadyForQuery): the plugin logs one line through on_log
	 * and runs every call on the pool instead. false (default): one pooled connection
	 * per call in flight. */
	bool pipeline = false;
	/* The shared connections of the pipelined mode (0 is treated as 1). Calls are spread
	 * over them round robin; each one is served by one server backend: more connections
	 * let a many-core server run requests in parallel, fewer make larger batches (on a
	 * 2-core host shared with the clients, 1 used the least CPU per call). */
	std::size_t pipeline_connections = 2;
};

class LOCKEXT_CLIENT_API PgLockingPlugin final : public LockingPlugin
{
  public:
	explicit PgLockingPlugin(std::string conninfo, PgOptions options = {});
	~PgLockingPlugin() override;
	PgLockingPlugin(const PgLockingPlugin &) = delete;
	PgLockingPlugin &operator=(const PgLockingPlugin &) = delete;

	[[nodiscard]] std::string_view name() const override
	{
		return "pg";
	}
	[[nodiscard]] Result<std::optional<LockHandle>> try_lock(std::string_view key,
															 std::uint64_t ttl_ms) override;
	[[nodiscard]] Result<void> renew(const LockHandle &handle) override;
	[[nodiscard]] Result<void> release(LockHandle handle) override;
	/* Closes idle connections; later calls fail with an error. */
	[[nodiscard]] Result<void> cleanup() override;

	/* The same calls, with the failure classified (lockext/errors.hpp). */
	[[nodiscard]] Outcome<std::optional<LockHandle>>
	try_lock_outcome(std::string_view key, std::uint64_t ttl_ms) override;
	[[nodiscard]] Outcome<void> renew_outcome(const LockHandle &handle) override;
	[[nodiscard]] Outcome<void> release_outcome(LockHandle handle) override;

	/* try_lock waiting up to `wait` on the server (lockext 1.1, client/README.md
	 * "Waiting"): SELECT try_lock(key, ttl_ms, wait_ms), FIFO per key with direct
	 * hand-off, on a dedicated pooled connection (never the shared pipeline). A wait
	 * longer than the server's lockext.max_wait_ms is chained (successive bounded waits;
	 * each boundary re-joins the queue at the tail). Its deadlines (statement_timeout,
	 * call_timeout) are extended by the wait. Against a lockext 1.0 database (no such
	 * function, 42883) it polls try_lock with jittered exponential backoff (logged once
	 * through on_log). Cancelled by cancel_waits(). */
	[[nodiscard]] Result<std::optional<LockHandle>>
	try_lock_for(std::string_view key, std::uint64_t ttl_ms,
				 std::chrono::milliseconds wait) override;
	[[nodiscard]] Outcome<std::optional<LockHandle>>
	try_lock_for_outcome(std::string_view key, std::uint64_t ttl_ms,
						 std::chrono::milliseconds wait) override;

	/* Ends every try_lock_for of this plugin in progress at once (server-side waits by
	 * PQcancel of their connections, polling ones at their next check, within 20 ms):
	 * they return FailureKind::Timeout, SQLSTATE 57014, "try_lock_for failed: the wait
	 * was cancelled (cancel_waits)", and leave no waiter and no lease on the server (a
	 * lease granted as the cancel went out is released before the call returns). Waits
	 * that begin after it returns are not affected. Safe from any thread and from a
	 * signal handler (atomics and PQcancel only, on PGcancel objects prepared before
	 * each wait was sent). */
	void cancel_waits() noexcept;

	/* The server's grace period (lockext_grace()): after a restart or failover the server
	 * refuses grants for a while; use it after a refusal to tell "grace period after
	 * <reason>, N ms left" from "held by someone else". */
	struct GraceStatus
	{
		bool active = false;
		std::string reason;
		std::int64_t remaining_ms = 0;
	};
	[[nodiscard]] Outcome<GraceStatus> grace_status();

  private:
	struct Impl;
	std::unique_ptr<Impl> m_impl;
};

} // namespace lockext

#endif
