/*-------------------------------------------------------------------------
 *
 * handle_scan.h
 *	  A cheaper plan for `SELECT ... FROM try_lock(key, ttl)`.
 *
 * PostgreSQL runs a function in FROM as a Function Scan, which on every
 * execution builds the function's result descriptor from the catalog, a
 * tuplestore and a slot per function, and copies the one row through the
 * tuplestore: ~10,000 instructions per execution of a prepared statement,
 * more than try_lock itself.  For the documented form
 * `SELECT * FROM try_lock(...)` (and any column list of it) this module
 * plans a Custom Scan instead ("lockext handle scan") that evaluates the
 * call and deforms the lock_handle straight into its scan slot.
 *
 * Semantics are the Function Scan's: one row per execution, a row of NULLs
 * on contention, one call per execution (a rescan without a changed
 * parameter of the call returns the same row again, as a Function Scan
 * rewinds its tuplestore), quals and projection on top.  Only a plain call
 * is taken over: one function (lockext's try_lock, recognised by its C
 * entry point, so a schema or a search_path change cannot fool it), no
 * WITH ORDINALITY, no ROWS FROM, no column definition list, no LATERAL
 * reference; everything else keeps the Function Scan.  The GUC
 * lockext.handle_scan (default on) turns it off.
 *
 * Interface: HandleScanInit() from _PG_init (installs the planner hook and
 * registers the custom scan methods).
 *
 * Locking protocol: none; planner and executor state only, per backend.
 *
 *-------------------------------------------------------------------------
 */
#pragma once



extern void HandleScanInit(void);
