/*-------------------------------------------------------------------------
 *
 * pg_boundary.hpp
 *	  The C++/PostgreSQL error boundary for every SQL-callable function.
 *
 * LOCKEXT_SQL_FUNCTION(name) defines the extern "C" function `name` that
 * PostgreSQL calls and makes it run name_impl(fcinfo) inside a catch-all.
 * A C++ exception never escapes into PostgreSQL (that would abort the
 * backend and crash-restart the cluster, wiping every lease): its message is
 * copied into a fixed buffer, the catch block is left, and only then is a
 * PostgreSQL ERROR raised.  Nothing is palloc'd inside the handler.
 *
 * The _impl functions themselves may ereport(): that longjmps over this
 * frame, which holds no object with a non-trivial destructor.
 *
 * Locking protocol: none.
 *
 *-------------------------------------------------------------------------
 */
#pragma once

#include <exception>

#define LOCKEXT_SQL_FUNCTION(name)                                                                 \
	static Datum name##_impl(PG_FUNCTION_ARGS);                                                    \
	extern "C"                                                                                     \
	{                                                                                              \
		PG_FUNCTION_INFO_V1(name);                                                                 \
		Datum name(PG_FUNCTION_ARGS)                                                               \
		{                                                                                          \
			char lockext_exception_message[256];                                                   \
			try                                                                                    \
			{                                                                                      \
				return name##_impl(fcinfo);                                                        \
			}                                                                                      \
			catch (const std::exception &e)                                                        \
			{                                                                                      \
				strlcpy(lockext_exception_message, e.what(), sizeof(lockext_exception_message));   \
			}                                                                                      \
			catch (...)                                                                            \
			{                                                                                      \
				strlcpy(lockext_exception_message, "unexpected C++ exception",                     \
						sizeof(lockext_exception_message));                                        \
			}                                                                                      \
			ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),                                       \
							errmsg("lockext: %s in %s()", lockext_exception_message, #name)));     \
			pg_unreachable();                                                                      \
		}                                                                                          \
	}                                                                                              \
	static Datum name##_impl(PG_FUNCTION_ARGS)
