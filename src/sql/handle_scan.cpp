/*-------------------------------------------------------------------------
 *
 * handle_scan.cpp
 *	  The "lockext handle scan": SELECT ... FROM try_lock(...) without a
 *	  Function Scan (see handle_scan.h).
 *
 * Planner: set_rel_pathlist_hook replaces the paths of an eligible function
 * RTE by one CustomPath.  The plan is a CustomScan with scanrelid 0 whose
 * custom_scan_tlist lists the five lock_handle columns (so setrefs maps the
 * tlist and quals onto the scan tuple, as for a foreign join) and whose
 * custom_exprs hold the call.
 *
 * Executor: the first fetch evaluates the call in the per-tuple context and
 * deforms the composite into the scan slot (NULL: a row of NULLs, as a
 * Function Scan returns for a non-set function that returned NULL); the
 * second fetch ends the scan.  The row is also copied into the query's
 * memory so that a rescan with no changed parameter of the call returns it
 * again without calling try_lock a second time.
 *
 * Only PostgreSQL's C API runs here (no C++ object, no exception), so an
 * ereport() from the planner or from try_lock longjmps over plain frames.
 *
 *-------------------------------------------------------------------------
 */
extern "C"
{
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_language_d.h"
#include "catalog/pg_proc.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "nodes/extensible.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "parser/parsetree.h"
#include "optimizer/clauses.h"
#include "optimizer/optimizer.h"
#include "optimizer/pathnode.h"
#include "optimizer/paths.h"
#include "optimizer/restrictinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "gucs.h"
#include "sql/handle_scan.h"

/* the SQL entry points this scan may take over (sql_api.cpp) */
extern Datum lockext_try_lock(PG_FUNCTION_ARGS);
}

#define HANDLE_NATTS 5

static set_rel_pathlist_hook_type prev_set_rel_pathlist_hook = NULL;

typedef struct HandleScanState
{
	CustomScanState css;		/* must be first */
	ExprState  *call;			/* the try_lock(...) call */
	Bitmapset  *call_params;	/* PARAM_EXEC ids the call depends on */
	bool		fetched;		/* this scan's row has been returned */
	bool		have_row;		/* row_values/row_nulls hold the evaluated row */
	HeapTuple	row;			/* the handle, copied to query memory; NULL = NULL result */
	int			ncolumns;		/* scan tuple columns */
	AttrNumber	columns[HANDLE_NATTS];	/* their lock_handle attribute numbers */
} HandleScanState;

static Node *HandleScanCreateState(CustomScan *cscan);
static void HandleScanBegin(CustomScanState *node, EState *estate, int eflags);
static TupleTableSlot *HandleScanExec(CustomScanState *node);
static void HandleScanEnd(CustomScanState *node);
static void HandleScanRescan(CustomScanState *node);
static Plan *HandleScanPlan(PlannerInfo *root, RelOptInfo *rel, CustomPath *best_path, List *tlist,
							List *clauses, List *custom_plans);

static const CustomPathMethods handle_path_methods = {
	.CustomName = "lockext handle scan",
	.PlanCustomPath = HandleScanPlan,
	.ReparameterizeCustomPathByChild = NULL,
};

static const CustomScanMethods handle_scan_methods = {
	.CustomName = "lockext handle scan",
	.CreateCustomScanState = HandleScanCreateState,
};

static const CustomExecMethods handle_exec_methods = {
	.CustomName = "lockext handle scan",
	.BeginCustomScan = HandleScanBegin,
	.ExecCustomScan = HandleScanExec,
	.EndCustomScan = HandleScanEnd,
	.ReScanCustomScan = HandleScanRescan,
	.MarkPosCustomScan = NULL,
	.RestrPosCustomScan = NULL,
	.EstimateDSMCustomScan = NULL,
	.InitializeDSMCustomScan = NULL,
	.ReInitializeDSMCustomScan = NULL,
	.InitializeWorkerCustomScan = NULL,
	.ShutdownCustomScan = NULL,
	.ExplainCustomScan = NULL,
};

/* True if funcid is lockext's try_lock(text, bigint) C function. */
static bool
IsLockextTryLock(Oid funcid)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	bool		c_function;
	FmgrInfo	finfo;

	if (!HeapTupleIsValid(tuple))
		return false;
	{
		Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tuple);
		bool		isnull;
		Datum		prosrc;

		c_function = proc->prolang == ClanguageId && !proc->proretset && proc->pronargs == 2;
		/* only lockext's symbol can be it: no other library is loaded for the check */
		if (c_function)
		{
			prosrc = SysCacheGetAttr(PROCOID, tuple, Anum_pg_proc_prosrc, &isnull);
			c_function = !isnull && strcmp(TextDatumGetCString(prosrc), "lockext_try_lock") == 0;
		}
	}
	ReleaseSysCache(tuple);
	if (!c_function)
		return false;
	fmgr_info(funcid, &finfo);
	return finfo.fn_addr == lockext_try_lock;
}

/*
 * The columns of rel that the query reads (tlist and quals), as attribute
 * numbers offset by FirstLowInvalidHeapAttributeNumber (pull_varattnos).
 */
static Bitmapset *
NeededColumns(RelOptInfo *rel)
{
	Bitmapset  *columns = NULL;
	ListCell   *lc;

	pull_varattnos((Node *) rel->reltarget->exprs, rel->relid, &columns);
	foreach(lc, rel->baserestrictinfo)
		pull_varattnos((Node *) lfirst_node(RestrictInfo, lc)->clause, rel->relid, &columns);
	return columns;
}

/* The call of an RTE the handle scan can run, or NULL. */
static FuncExpr *
EligibleCall(RelOptInfo *rel, RangeTblEntry *rte)
{
	RangeTblFunction *rtfunc;
	FuncExpr   *call;
	Bitmapset  *columns;
	int			member = -1;

	if (!lockext_handle_scan || rte->rtekind != RTE_FUNCTION || rel->reloptkind != RELOPT_BASEREL ||
		list_length(rte->functions) != 1 || rte->funcordinality ||
		!bms_is_empty(rel->lateral_relids) || rel->lateral_vars != NIL)
		return NULL;
	rtfunc = linitial_node(RangeTblFunction, rte->functions);
	if (rtfunc->funccolnames != NIL || rtfunc->funccolcount != HANDLE_NATTS ||
		!IsA(rtfunc->funcexpr, FuncExpr))
		return NULL;
	call = (FuncExpr *) rtfunc->funcexpr;
	if (call->funcretset || !IsLockextTryLock(call->funcid))
		return NULL;
	/* a whole-row or system column reference keeps the function scan */
	columns = NeededColumns(rel);
	while ((member = bms_next_member(columns, member)) >= 0)
		if (member + FirstLowInvalidHeapAttributeNumber <= 0)
			return NULL;
	return call;
}

static void
HandleScanPathlist(PlannerInfo *root, RelOptInfo *rel, Index rti, RangeTblEntry *rte)
{
	CustomPath *path;

	if (prev_set_rel_pathlist_hook)
		prev_set_rel_pathlist_hook(root, rel, rti, rte);
	if (EligibleCall(rel, rte) == NULL)
		return;

	path = makeNode(CustomPath);
	path->path.pathtype = T_CustomScan;
	path->path.parent = rel;
	path->path.pathtarget = rel->reltarget;
	path->path.param_info = NULL;
	path->path.parallel_aware = false;
	path->path.parallel_safe = false;
	path->path.parallel_workers = 0;
	path->path.rows = rel->rows;
	/* what the function scan costs, less its tuplestore: never chosen against */
	path->path.startup_cost = 0;
	path->path.total_cost = cpu_tuple_cost;
	path->path.pathkeys = NIL;
	path->flags = CUSTOMPATH_SUPPORT_PROJECTION;	/* ExecScan projects: no Result on top */
	path->custom_paths = NIL;
	path->custom_private = NIL;
	path->methods = &handle_path_methods;

	/* the only way to scan this RTE: the function scan's paths go */
	rel->pathlist = NIL;
	rel->partial_pathlist = NIL;
	add_path(rel, &path->path);
}

static Plan *
HandleScanPlan(PlannerInfo *root, RelOptInfo *rel, CustomPath *best_path, List *tlist,
			   List *clauses, List *custom_plans)
{
	RangeTblEntry *rte = planner_rt_fetch(rel->relid, root);
	RangeTblFunction *rtfunc = linitial_node(RangeTblFunction, rte->functions);
	CustomScan *cscan = makeNode(CustomScan);
	List	   *scan_tlist = NIL;
	List	   *scan_columns = NIL;
	Bitmapset  *columns;
	TupleDesc	tupdesc = NULL;

	(void) best_path;
	(void) custom_plans;
	/*
	 * The scan tuple: the lock_handle columns the query reads, in attribute
	 * order (custom_private lists their numbers); building a descriptor
	 * costs per column at every execution.
	 */
	if (get_expr_result_type(rtfunc->funcexpr, NULL, &tupdesc) != TYPEFUNC_COMPOSITE ||
		tupdesc->natts != HANDLE_NATTS)
		elog(ERROR, "lockext handle scan: try_lock() does not return a lock_handle");
	columns = NeededColumns(rel);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		AttrNumber	attno = (AttrNumber) (i + 1);
		Var		   *var;

		if (!bms_is_member(attno - FirstLowInvalidHeapAttributeNumber, columns))
			continue;
		var = makeVar(rel->relid, attno, att->atttypid, att->atttypmod, att->attcollation, 0);
		scan_tlist = lappend(scan_tlist,
							 makeTargetEntry((Expr *) var, (AttrNumber) (list_length(scan_tlist) + 1),
											 NULL, false));
		scan_columns = lappend_int(scan_columns, attno);
	}

	cscan->scan.plan.targetlist = tlist;
	cscan->scan.plan.qual = extract_actual_clauses(clauses, false);
	cscan->scan.scanrelid = 0;	/* not a relation: the scan tuple is custom_scan_tlist */
	cscan->flags = 0;
	cscan->custom_plans = NIL;
	cscan->custom_exprs = list_make1(copyObjectImpl(rtfunc->funcexpr));
	cscan->custom_private = scan_columns;
	cscan->custom_scan_tlist = scan_tlist;
	cscan->custom_relids = NULL;
	cscan->methods = &handle_scan_methods;
	return &cscan->scan.plan;
}

static Node *
HandleScanCreateState(CustomScan *cscan)
{
	HandleScanState *state = (HandleScanState *) newNode(sizeof(HandleScanState), T_CustomScanState);

	(void) cscan;
	state->css.methods = &handle_exec_methods;
	return (Node *) state;
}

static void
HandleScanBegin(CustomScanState *node, EState *estate, int eflags)
{
	HandleScanState *state = (HandleScanState *) node;
	CustomScan *cscan = (CustomScan *) node->ss.ps.plan;
	Expr	   *call = (Expr *) linitial(cscan->custom_exprs);

	(void) estate;
	(void) eflags;
	state->call = ExecInitExpr(call, &node->ss.ps);
	state->call_params = pull_paramids(call);
	state->ncolumns = 0;
	{
		ListCell   *lc;

		foreach(lc, cscan->custom_private)
			state->columns[state->ncolumns++] = (AttrNumber) lfirst_int(lc);
	}
	state->fetched = false;
	state->have_row = false;
	state->row = NULL;
}

/*
 * Stores the columns the scan returns of the handle (all NULL for a NULL
 * result) into the scan slot.  Their values point into handle.
 */
static TupleTableSlot *
StoreRow(HandleScanState *state, HeapTupleHeader handle)
{
	TupleTableSlot *slot = state->css.ss.ss_ScanTupleSlot;

	ExecClearTuple(slot);
	if (handle == NULL)
	{
		for (int i = 0; i < state->ncolumns; i++)
			slot->tts_isnull[i] = true;
	}
	else
	{
		TupleDesc	tupdesc = lookup_type_cache(HeapTupleHeaderGetTypeId(handle), TYPECACHE_TUPDESC)->tupDesc;
		HeapTupleData tuple;
		Datum		values[HANDLE_NATTS];
		bool		nulls[HANDLE_NATTS];

		if (tupdesc == NULL || tupdesc->natts != HANDLE_NATTS)
			elog(ERROR, "lockext handle scan: the call did not return a lock_handle");
		tuple.t_len = HeapTupleHeaderGetDatumLength(handle);
		ItemPointerSetInvalid(&tuple.t_self);
		tuple.t_tableOid = InvalidOid;
		tuple.t_data = handle;
		heap_deform_tuple(&tuple, tupdesc, values, nulls);
		for (int i = 0; i < state->ncolumns; i++)
		{
			slot->tts_values[i] = values[state->columns[i] - 1];
			slot->tts_isnull[i] = nulls[state->columns[i] - 1];
		}
	}
	return ExecStoreVirtualTuple(slot);
}

static TupleTableSlot *
HandleScanNext(ScanState *node)
{
	HandleScanState *state = (HandleScanState *) node;
	ExprContext *econtext = node->ps.ps_ExprContext;
	HeapTupleHeader handle = NULL;

	if (state->fetched)
		return ExecClearTuple(node->ss_ScanTupleSlot);
	state->fetched = true;

	if (state->have_row)
		return StoreRow(state, state->row ? state->row->t_data : NULL);

	{
		bool		isnull;
		Datum		result = ExecEvalExprSwitchContext(state->call, econtext, &isnull);
		MemoryContext old;

		if (!isnull)
			handle = DatumGetHeapTupleHeader(result);
		/* kept for a rescan that must not call try_lock again */
		old = MemoryContextSwitchTo(node->ps.state->es_query_cxt);
		if (handle != NULL)
		{
			HeapTupleData tuple;

			tuple.t_len = HeapTupleHeaderGetDatumLength(handle);
			ItemPointerSetInvalid(&tuple.t_self);
			tuple.t_tableOid = InvalidOid;
			tuple.t_data = handle;
			state->row = heap_copytuple(&tuple);
		}
		MemoryContextSwitchTo(old);
		state->have_row = true;
	}
	return StoreRow(state, handle);
}

static bool
HandleScanRecheck(ScanState *node, TupleTableSlot *slot)
{
	(void) node;
	(void) slot;
	return true;
}

static TupleTableSlot *
HandleScanExec(CustomScanState *node)
{
	return ExecScan(&node->ss, HandleScanNext, HandleScanRecheck);
}

static void
HandleScanEnd(CustomScanState *node)
{
	(void) node;
}

/* As a Function Scan: call again only when a parameter of the call changed. */
static void
HandleScanRescan(CustomScanState *node)
{
	HandleScanState *state = (HandleScanState *) node;
	Bitmapset  *changed = node->ss.ps.chgParam;

	if (changed != NULL && bms_overlap(changed, state->call_params))
	{
		if (state->row)
			heap_freetuple(state->row);
		state->row = NULL;
		state->have_row = false;
	}
	state->fetched = false;
	ExecScanReScan(&node->ss);
}

void
HandleScanInit(void)
{
	RegisterCustomScanMethods(&handle_scan_methods);
	prev_set_rel_pathlist_hook = set_rel_pathlist_hook;
	set_rel_pathlist_hook = HandleScanPathlist;
}
