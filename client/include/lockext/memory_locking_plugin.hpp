/*
 * lockext/memory_locking_plugin.hpp
 *     The in-process "memory" backend: the LockingPlugin contract for tests and
 *     single-process programs. Leases live in this object only; expiry uses
 *     BootClock (CLOCK_BOOTTIME: it keeps counting while the host is suspended), a
 *     malformed lock_id is BadInput (as on the server), lock_ids are random UUIDv4 from
 *     getrandom(2), fences strictly increase for the life of the object.
 *
 * try_lock_for waits on a condition variable, first come first served per key (only
 * the head waiter may take a key; a try_lock of a free key with waiters queued is
 * contention), woken by release(), cleanup() and the holder's expiry (a timed wait to
 * the holder's deadline). The object must outlive every call in progress.
 *
 * Thread safety: every method may be called from any number of threads at once.
 */
#ifndef LOCKEXT_MEMORY_LOCKING_PLUGIN_HPP
#define LOCKEXT_MEMORY_LOCKING_PLUGIN_HPP

#include <cstddef>
#include <cstdint>
#include <memory>

#include <lockext/locking_plugin.hpp>

namespace lockext
{

/* Limits, defaulting to the server's GUC defaults. */
struct MemoryOptions
{
	std::uint64_t max_ttl_ms = 300000; // like lockext.max_ttl_ms
	std::size_t max_key_length = 256;  // bytes, like lockext.max_key_length
	std::size_t max_locks = 10000;     // live leases, like lockext.max_locks
};

class LOCKEXT_CLIENT_API MemoryLockingPlugin final : public LockingPlugin
{
  public:
	explicit MemoryLockingPlugin(MemoryOptions options = {});
	~MemoryLockingPlugin() override;
	MemoryLockingPlugin(const MemoryLockingPlugin &) = delete;
	MemoryLockingPlugin &operator=(const MemoryLockingPlugin &) = delete;

	[[nodiscard]] std::string_view name() const override
	{
		return "memory";
	}
	[[nodiscard]] Result<std::optional<LockHandle>> try_lock(std::string_view key,
															 std::uint64_t ttl_ms) override;
	[[nodiscard]] Result<void> renew(const LockHandle &handle) override;
	[[nodiscard]] Result<void> release(LockHandle handle) override;
	[[nodiscard]] Result<void> cleanup() override;
	[[nodiscard]] Result<std::optional<LockHandle>>
	try_lock_for(std::string_view key, std::uint64_t ttl_ms,
				 std::chrono::milliseconds wait) override;

	/* The same calls, with the failure classified (lockext/errors.hpp). */
	[[nodiscard]] Outcome<std::optional<LockHandle>>
	try_lock_outcome(std::string_view key, std::uint64_t ttl_ms) override;
	[[nodiscard]] Outcome<void> renew_outcome(const LockHandle &handle) override;
	[[nodiscard]] Outcome<void> release_outcome(LockHandle handle) override;
	[[nodiscard]] Outcome<std::optional<LockHandle>>
	try_lock_for_outcome(std::string_view key, std::uint64_t ttl_ms,
						 std::chrono::milliseconds wait) override;

  private:
	struct State;
	std::unique_ptr<State> m_state;
};

} // namespace lockext

#endif
