/*
 * test_support.cpp
 *     See test_support.hpp.
 */
#include "test_support.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <sys/wait.h>

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

} // namespace lockext::test
