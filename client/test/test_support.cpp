/*
 * test_support.cpp
 *     See test_support.hpp.
 */
#include "test_support.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <fcntl.h>

#include <lockext/memory_locking_plugin.hpp>

namespace lockext::test
{

std::optional<std::string>
env(const char *name)
{
	const char *value = std::getenv(name);
	if (value == nullptr || *value == '\0')
		return std::nullopt;
	return std::string(value);
}

std::string
unique_key(const std::string &prefix)
{
	static thread_local std::mt19937_64 rng{std::random_device{}()};
	char hex[17];
	std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(rng()));
	return prefix + "-" + hex;
}

std::string
current_test_name()
{
	const auto *info = ::testing::UnitTest::GetInstance()->current_test_info();
	if (info == nullptr)
		return "no-test";
	return std::string(info->test_suite_name()) + "." + info->name();
}

std::unique_ptr<PgLockingPlugin>
make_pg(std::string &why, PgOptions options, const char *dsn_var)
{
	auto dsn = env(dsn_var);
	if (!dsn)
	{
		why = std::string(dsn_var) + " is not set: no server to test against";
		return nullptr;
	}
	return std::make_unique<PgLockingPlugin>(*dsn, std::move(options));
}

std::vector<Backend>
conformance_backends()
{
	PgOptions unnamed;
	unnamed.prepared_statements = false;
	unnamed.pool_size = 8;
	PgOptions prepared;
	prepared.pool_size = 8;
	PgOptions defaults; // through PgBouncer: switches to unnamed statements by itself
	defaults.pool_size = 8;
	defaults.on_log = [](std::string_view) {};
	PgOptions pipelined = prepared; // PgOptions::pipeline: 2 shared connections
	pipelined.pipeline = true;
	PgOptions pipelined_defaults = defaults;
	pipelined_defaults.pipeline = true;
	return {
		{"memory", [](std::string &) { return std::make_unique<MemoryLockingPlugin>(); }},
		{"pg_prepared",
		 [prepared](std::string &why) -> std::unique_ptr<LockingPlugin>
		 { return make_pg(why, prepared); }},
		{"pg_unnamed",
		 [unnamed](std::string &why) -> std::unique_ptr<LockingPlugin>
		 { return make_pg(why, unnamed); }},
		{"pgbouncer_unnamed",
		 [unnamed](std::string &why) -> std::unique_ptr<LockingPlugin>
		 { return make_pg(why, unnamed, "LOCKEXT_TEST_PGBOUNCER_DSN"); }},
		{"pgbouncer_default",
		 [defaults](std::string &why) -> std::unique_ptr<LockingPlugin>
		 { return make_pg(why, defaults, "LOCKEXT_TEST_PGBOUNCER_DSN"); }},
		{"pg_pipeline",
		 [pipelined](std::string &why) -> std::unique_ptr<LockingPlugin>
		 { return make_pg(why, pipelined); }},
		{"pgbouncer_pipeline",
		 [pipelined_defaults](std::string &why) -> std::unique_ptr<LockingPlugin>
		 { return make_pg(why, pipelined_defaults, "LOCKEXT_TEST_PGBOUNCER_DSN"); }},
	};
}

void
PrintTo(const Backend &backend, std::ostream *os)
{
	*os << backend.label;
}

int
run_command(const std::string &command)
{
	int status = std::system(command.c_str());
	if (status == -1 || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

namespace
{

int
listen_on_loopback(int &port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	sockaddr_in addr{};
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	addr.sin_port = 0;
	if (fd < 0 || bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 ||
		listen(fd, 64) != 0)
		return -1;
	socklen_t len = sizeof addr;
	getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len);
	port = ntohs(addr.sin_port);
	return fd;
}

int
connect_loopback(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	sockaddr_in addr{};
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	addr.sin_port = htons(static_cast<std::uint16_t>(port));
	if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0)
		return fd;
	if (fd >= 0)
		close(fd);
	return -1;
}

} // namespace

struct StallingRelay::Impl
{
	struct Pair
	{
		int client = -1;
		int server = -1;
		std::string to_client; // server bytes not yet parsed into whole messages
		bool armed = false;    // stall after the next message of type stall_type
		bool stalled = false;
	};
	int listen_fd = -1;
	int target = 0;
	int wake[2] = {-1, -1};
	std::thread thread;
	mutable std::mutex mutex;
	char stall_type = 0;      // guarded by mutex: arm every open pair with it
	bool arm_pending = false; // guarded by mutex
	int stalled_count = 0;    // guarded by mutex
	std::atomic<bool> stopping{false};
	std::vector<Pair> pairs; // relay thread only

	void run()
	{
		while (!stopping)
		{
			std::vector<pollfd> fds{{listen_fd, POLLIN, 0}, {wake[0], POLLIN, 0}};
			for (auto &p : pairs)
			{
				fds.push_back({p.client, POLLIN, 0});
				fds.push_back({p.server, static_cast<short>(p.stalled ? 0 : POLLIN), 0});
			}
			if (poll(fds.data(), fds.size(), 100) < 0)
				continue;
			{
				std::lock_guard g(mutex);
				if (arm_pending)
				{
					arm_pending = false;
					for (auto &p : pairs)
						p.armed = true;
				}
			}
			if (fds[1].revents & POLLIN)
			{
				char buf[16];
				(void) !read(wake[0], buf, sizeof buf);
			}
			const std::size_t polled = (fds.size() - 2) / 2; // pairs that fds describes
			for (std::size_t i = 0; i < polled && i < pairs.size(); ++i)
			{
				Pair &p = pairs[i];
				const pollfd &cf = fds[2 + 2 * i];
				const pollfd &sf = fds[3 + 2 * i];
				bool dead = false;
				char buf[8192];
				if (cf.revents & (POLLIN | POLLHUP | POLLERR))
				{
					ssize_t n = read(p.client, buf, sizeof buf);
					if (n <= 0 || write(p.server, buf, n) != n)
						dead = true;
				}
				if (!dead && !p.stalled && (sf.revents & (POLLIN | POLLHUP | POLLERR)))
				{
					ssize_t n = read(p.server, buf, sizeof buf);
					if (n <= 0)
						dead = true;
					else
						dead = !forward(p, std::string_view(buf, static_cast<std::size_t>(n)));
				}
				if (dead)
				{
					close(p.client);
					close(p.server);
					if (p.stalled)
					{
						std::lock_guard g(mutex);
						--stalled_count;
					}
					pairs.erase(pairs.begin() + static_cast<std::ptrdiff_t>(i));
					break; // fds no longer match pairs; poll again
				}
			}
			if (fds[0].revents & POLLIN)
			{
				int c = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
				int srv = c >= 0 ? connect_loopback(target) : -1;
				if (srv >= 0)
					pairs.push_back({c, srv, {}, false, false});
				else if (c >= 0)
					close(c);
			}
		}
		for (auto &p : pairs)
		{
			close(p.client);
			close(p.server);
		}
		pairs.clear();
	}

	/* Forwards whole server messages to the client until a stall; false = broken. */
	bool forward(Pair &p, std::string_view data)
	{
		p.to_client.append(data);
		std::size_t sent = 0;
		char type;
		{
			std::lock_guard g(mutex);
			type = stall_type;
		}
		while (!p.stalled && p.to_client.size() - sent >= 5)
		{
			const char *m = p.to_client.data() + sent;
			std::uint32_t len;
			std::memcpy(&len, m + 1, 4);
			len = ntohl(len);
			if (p.to_client.size() - sent < 1 + len)
				break;
			if (write(p.client, m, 1 + len) != static_cast<ssize_t>(1 + len))
				return false;
			sent += 1 + len;
			if (p.armed && m[0] == type)
			{
				p.stalled = true;
				std::lock_guard g(mutex);
				++stalled_count;
			}
		}
		p.to_client.erase(0, sent);
		return true;
	}
};

StallingRelay::StallingRelay(int target_port) : m_impl(std::make_unique<Impl>())
{
	m_impl->target = target_port;
	m_impl->listen_fd = listen_on_loopback(m_port);
	if (pipe2(m_impl->wake, O_CLOEXEC) != 0)
		m_impl->wake[0] = m_impl->wake[1] = -1;
	m_impl->thread = std::thread([impl = m_impl.get()] { impl->run(); });
}

StallingRelay::~StallingRelay()
{
	stop();
}

void
StallingRelay::stall_after(char message_type)
{
	{
		std::lock_guard g(m_impl->mutex);
		m_impl->stall_type = message_type;
		m_impl->arm_pending = true;
	}
	(void) !write(m_impl->wake[1], "x", 1);
	/* The relay thread arms the open pairs before it forwards anything else. */
	for (int i = 0; i < 200; ++i)
	{
		{
			std::lock_guard g(m_impl->mutex);
			if (!m_impl->arm_pending)
				return;
		}
		std::this_thread::sleep_for(std::chrono::milliseconds(5));
	}
}

int
StallingRelay::stalled() const
{
	std::lock_guard g(m_impl->mutex);
	return m_impl->stalled_count;
}

void
StallingRelay::stop()
{
	if (!m_impl || m_impl->stopping.exchange(true))
		return;
	(void) !write(m_impl->wake[1], "x", 1);
	if (m_impl->thread.joinable())
		m_impl->thread.join();
	for (int fd : {m_impl->listen_fd, m_impl->wake[0], m_impl->wake[1]})
		if (fd >= 0)
			close(fd);
}

int
port_of(const std::string &conninfo)
{
	auto at = conninfo.find("port=");
	return at == std::string::npos ? 0 : std::atoi(conninfo.c_str() + at + 5);
}

} // namespace lockext::test
