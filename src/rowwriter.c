/*
 * rowwriter.c
 *	  Inserting rows into persona's own tables without SQL: the heap tuple,
 *	  its index entries, constraints and row triggers, as the executor would
 *	  do them, with no plan, no parameter arrays and no per-row executor
 *	  startup.
 *
 * persona's statement-level ingest writes up to one identity and one profile
 * per person of a batch, and segment refreshes a member and a log row per
 * entry: through SPI each row cost the planner's projection, the unnest of
 * an array built for it, and (for ON CONFLICT) a speculative insertion.
 * A RowWriter does what logical replication's apply worker does for each
 * row (ExecSimpleRelationInsert): BEFORE ROW triggers, CHECK and NOT NULL
 * constraints, the heap insert, every index entry (unique ones checked,
 * waiting for in-progress inserters as usual), AFTER ROW triggers.  Columns
 * the caller does not set take their defaults.  Statement-level triggers do
 * not fire.
 */
#include "postgres.h"

#include "access/table.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "rewrite/rewriteHandler.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "rowwriter.h"

struct RowWriter
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	int			ncolumns;
	AttrNumber *attnums;		/* the caller's columns, in its order */
	ExprState **defaults;		/* per attribute: its default, when not set */
	bool		triggers;		/* after-trigger query bracket opened */
};

/*
 * Opens ``relid`` (RowExclusiveLock, held to the end of the transaction) for
 * inserts of ``ncolumns`` named columns, in that order.
 */
RowWriter *
RowWriterOpen(Oid relid, const char *const *columns, int ncolumns)
{
	RowWriter  *w = palloc0(sizeof(RowWriter));
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	TupleDesc	desc;
	bool	   *set;

	w->rel = table_open(relid, RowExclusiveLock);
	desc = RelationGetDescr(w->rel);
	w->estate = CreateExecutorState();
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = w->rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(w->estate, list_make1(rte));
	w->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(w->rri, w->rel, 1, NULL, 0);
	w->estate->es_output_cid = GetCurrentCommandId(true);
	ExecOpenIndices(w->rri, false);
	w->slot = ExecInitExtraTupleSlot(w->estate, desc, &TTSOpsVirtual);

	w->ncolumns = ncolumns;
	w->attnums = palloc(sizeof(AttrNumber) * ncolumns);
	set = palloc0(sizeof(bool) * desc->natts);
	for (int i = 0; i < ncolumns; i++)
	{
		AttrNumber	attnum = get_attnum(relid, columns[i]);

		if (attnum <= 0)
			elog(ERROR, "relation \"%s\" has no column \"%s\"",
				 RelationGetRelationName(w->rel), columns[i]);
		w->attnums[i] = attnum;
		set[attnum - 1] = true;
	}
	w->defaults = palloc0(sizeof(ExprState *) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Expr	   *expr;

		if (set[i] || TupleDescAttr(desc, i)->attisdropped)
			continue;
		expr = (Expr *) build_column_default(w->rel, i + 1);
		if (expr != NULL)
			w->defaults[i] = ExecPrepareExpr(expr, w->estate);
	}

	if (w->rel->trigdesc != NULL)
	{
		AfterTriggerBeginQuery();
		w->triggers = true;
	}
	return w;
}

/*
 * Inserts one row: ``values`` and ``nulls`` in the order of the columns.
 * Returns the row as written, defaults included, valid until the next call.
 */
TupleTableSlot *
RowWriterInsert(RowWriter *w, const Datum *values, const bool *nulls)
{
	TupleTableSlot *slot = w->slot;
	TupleDesc	desc = slot->tts_tupleDescriptor;
	ExprContext *econtext = GetPerTupleExprContext(w->estate);

	ExecClearTuple(slot);
	for (int i = 0; i < desc->natts; i++)
	{
		slot->tts_isnull[i] = true;
		slot->tts_values[i] = (Datum) 0;
		if (w->defaults[i] != NULL)
			slot->tts_values[i] = ExecEvalExprSwitchContext(w->defaults[i], econtext,
															&slot->tts_isnull[i]);
	}
	for (int i = 0; i < w->ncolumns; i++)
	{
		slot->tts_values[w->attnums[i] - 1] = values[i];
		slot->tts_isnull[w->attnums[i] - 1] = nulls != NULL && nulls[i];
	}
	ExecStoreVirtualTuple(slot);
	ExecSimpleRelationInsert(w->rri, w->estate, slot);
	ResetPerTupleExprContext(w->estate);
	return slot;
}

/* Fires the queued AFTER ROW triggers and closes everything. */
void
RowWriterClose(RowWriter *w)
{
	if (w->triggers)
		AfterTriggerEndQuery(w->estate);
	ExecCloseIndices(w->rri);
	ExecResetTupleTable(w->estate->es_tupleTable, false);
	FreeExecutorState(w->estate);
	table_close(w->rel, NoLock);
	pfree(w->attnums);
	pfree(w->defaults);
	pfree(w);
}
