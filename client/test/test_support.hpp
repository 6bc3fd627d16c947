/*
 * test_support.hpp
 *     Helpers shared by the client test binaries: unique keys, environment lookup,
 *     the list of backends the conformance suite runs against.
 *
 * Environment (set by client/test/run.sh):
 *   LOCKEXT_TEST_DSN            conninfo of a server with lockext installed
 *   LOCKEXT_TEST_PGBOUNCER_DSN  the same database through PgBouncer, transaction pooling
 *   LOCKEXT_TEST_PG_STOP / LOCKEXT_TEST_PG_START  shell commands stopping/starting that server
 */
#ifndef LOCKEXT_TEST_SUPPORT_HPP
#define LOCKEXT_TEST_SUPPORT_HPP

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <utility>
#include <ostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <lockext/boot_clock.hpp>

#include <lockext/lease_keeper.hpp>
#include <lockext/locking_plugin.hpp>
#include <lockext/pg_locking_plugin.hpp>

namespace lockext::test
{

/* The value of an environment variable, or nullopt when unset or empty. */
std::optional<std::string> env(const char *name);

/* "<prefix>-<16 random hex digits>", unique across runs and processes. */
std::string unique_key(const std::string &prefix);

/* The name of the running gtest test ("Suite.Name/param"), for key prefixes. */
std::string current_test_name();

/* A backend the conformance suite runs against. make() returns nullptr and sets why
 * when the backend is not configured (the test is then skipped with that message). */
struct Backend
{
	std::string label;
	std::function<std::unique_ptr<LockingPlugin>(std::string &why)> make;
};

std::vector<Backend> conformance_backends();

/* gtest prints a Backend parameter by its label. */
void PrintTo(const Backend &backend, std::ostream *os);

/* A pg plugin on LOCKEXT_TEST_DSN (or the given env var), or nullptr + why. */
std::unique_ptr<PgLockingPlugin> make_pg(std::string &why, PgOptions options = {},
										 const char *dsn_var = "LOCKEXT_TEST_DSN");

/* Records the on_lost calls and when they happened. */
struct LostLog
{
	std::mutex mutex;
	std::condition_variable cv;
	std::vector<std::pair<std::string, lockext::BootClock::time_point>> calls;

	LeaseKeeper::LostCallback callback()
	{
		return [this](const std::string &why)
		{
			std::lock_guard g(mutex);
			calls.emplace_back(why, lockext::BootClock::now());
			cv.notify_all();
		};
	}
	bool wait(std::chrono::milliseconds bound)
	{
		std::unique_lock lock(mutex);
		return cv.wait_for(lock, bound, [&] { return !calls.empty(); });
	}
	/* The first call (reason, time), if any, read under the mutex. */
	std::optional<std::pair<std::string, lockext::BootClock::time_point>> first()
	{
		std::lock_guard g(mutex);
		if (calls.empty())
			return std::nullopt;
		return calls.front();
	}
	std::size_t count()
	{
		std::lock_guard g(mutex);
		return calls.size();
	}
};

/* Runs a shell command, returns its exit status (0 = success). */
int run_command(const std::string &command);

/*
 * A TCP relay on 127.0.0.1 (port()) in front of target_port, one thread for all its
 * connection pairs. Connect with sslmode=disable: it parses the server-to-client stream
 * as protocol-3 messages (type byte + length). After stall_after(type), the next server
 * message of that type ('E' ErrorResponse, 'C' CommandComplete, 'T' RowDescription) is
 * forwarded in full and then nothing more is forwarded to that client, ever (the server
 * side stays open): a server that replies and then stalls. Later connections relay
 * normally. stop() (and the destructor) closes everything.
 */
class StallingRelay
{
  public:
	explicit StallingRelay(int target_port);
	~StallingRelay();
	StallingRelay(const StallingRelay &) = delete;
	StallingRelay &operator=(const StallingRelay &) = delete;

	int port() const noexcept
	{
		return m_port;
	}
	void stall_after(char message_type);
	/* Connections currently stalled. */
	int stalled() const;
	void stop();

  private:
	struct Impl;
	std::unique_ptr<Impl> m_impl;
	int m_port = 0;
};

/* The port= of a keyword/value conninfo, or 0. */
int port_of(const std::string &conninfo);

} // namespace lockext::test

#endif
