/*
 * lockext/boot_clock.hpp
 *     BootClock: a std::chrono clock over CLOCK_BOOTTIME (spec §9). Like steady_clock
 *     it never goes backwards and ignores wall-clock changes, but unlike steady_clock
 *     (CLOCK_MONOTONIC) it keeps counting while the host is suspended, so a lease
 *     deadline computed on it passes during a laptop's or VM's sleep as it does on the
 *     server.
 *
 * Thread safety: now() is reentrant.
 */
#ifndef LOCKEXT_BOOT_CLOCK_HPP
#define LOCKEXT_BOOT_CLOCK_HPP

#include <chrono>

#include <lockext/locking_plugin.hpp>

namespace lockext
{

struct BootClock
{
	using duration = std::chrono::nanoseconds;
	using rep = duration::rep;
	using period = duration::period;
	using time_point = std::chrono::time_point<BootClock>;
	static constexpr bool is_steady = true;

	[[nodiscard]] LOCKEXT_CLIENT_API static time_point now() noexcept;

	/* The BootClock time of a steady_clock time point (same distance from now). */
	[[nodiscard]] LOCKEXT_CLIENT_API static time_point
	from_steady(std::chrono::steady_clock::time_point t) noexcept;
};

} // namespace lockext

#endif
