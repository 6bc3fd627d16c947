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
 * the calls return errors instead.
 */
#ifndef LOCKEXT_PG_LOCKING_PLUGIN_HPP
#define LOCKEXT_PG_LOCKING_PLUGIN_HPP

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include <lockext/locking_plugin.hpp>

namespace lockext
{

struct PgOptions
{
	/* Most connections open at once. 0 is treated as 1. */
	std::size_t pool_size = 4;
	/* libpq connect_timeout (whole seconds, libpq's minimum is 2 s), used unless the
	 * conninfo sets connect_timeout itself. 0 = wait indefinitely. */
	std::chrono::seconds connect_timeout{5};
	/* Client-side deadline for one statement (send + reply). When it passes, the call
	 * returns an error and the connection is discarded. Works through any pooler
	 * because it is no session state. 0 = no deadline. */
	std::chrono::milliseconds statement_timeout{5000};
	/* How long a call waits for a free pool connection before it fails. */
	std::chrono::milliseconds acquire_timeout{5000};
	/* true: named prepared statements (one Parse per connection). false: unnamed
	 * statements (PQexecParams), required behind PgBouncer < 1.21 in transaction or
	 * statement pooling mode. */
	bool prepared_statements = true;
	/* Schema holding the extension's functions; empty = unqualified (search_path). */
	std::string schema;
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

  private:
	struct Impl;
	std::unique_ptr<Impl> m_impl;
};

} // namespace lockext

#endif
