/*
 * rowwriter.c
 *	  Writing rows of persona's own tables without SQL: inserts (RowWriter)
 *	  and updates of rows found by a bigint key (RowUpdater), with their
 *	  index entries, constraints and row triggers, as the executor would do
 *	  them, with no plan, no parameter arrays and no per-row executor
 *	  startup.
 *
 * persona's statement-level ingest writes up to one identity and one profile
 * per person of a batch, and segment refreshes a member and a log row per
 * entry: through SPI each row cost the planner's projection, the unnest of
 * an array built for it, and (for ON CONFLICT) a speculative insertion.
 * A RowWriter does what logical replication's apply worker does for each
 * row (ExecSimpleRelationInsert): BEFORE ROW triggers, CHECK and NOT NULL
 * constraints (the CHECK constraints compiled once per backend, not per
 * statement, as are the column defaults: CompiledRel), the heap insert, every index entry (unique
 * ones checked, waiting for in-progress inserters as usual), AFTER ROW
 * triggers.  Columns
 * the caller does not set take their defaults.  Statement-level triggers do
 * not fire.
 *
 * A RowUpdater finds a row by the value of a unique bigint index under the
 * active snapshot, lets the caller compute the new row from it and updates
 * it as UPDATE does: waiting for a concurrent writer and, when that one
 * updated the row, locking the latest version and starting over from it
 * (at REPEATABLE READ a concurrent change is a serialization failure).  The
 * update is HOT when no indexed column changed.  A relation with row
 * triggers gets its rows locked first and updated by
 * ExecSimpleRelationUpdate, which fires them.  A check function may refuse
 * the row (PersonaRowUpdaterUpdateIf): it sees every version the change
 * would be computed from.
 *
 * A RowUpdater also walks an index of its own keys (PersonaRowUpdaterScan,
 * PersonaRowUpdaterNext) and updates the rows it finds without waiting
 * (PersonaRowUpdaterTry): a row that another transaction is changing, or
 * changed since the snapshot, is skipped, as SELECT ... FOR UPDATE SKIP
 * LOCKED skips it, but without the row lock's WAL record and dirtied page:
 * the update itself is the claim (persona_claim, outbox.c).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "pgstat.h"
#include "rewrite/rewriteHandler.h"
#include "storage/bufmgr.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "persona.h"
#include "profile.h"
#include "rowwriter.h"

/* The executor state both kinds of writers need for one relation. */
typedef struct RowTarget
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	bool		triggers;		/* after-trigger query bracket opened */
	bool		indices_open;	/* rri's indexes (TargetIndices) */
	struct CompiledRel *compiled;	/* its expressions, compiled once */
} RowTarget;

/*
 * What the executor compiles per statement for a relation, compiled once
 * per backend: its CHECK constraints and its column defaults
 * (stringToNode, expression_planner, ExecInitExpr).  For a statement that
 * writes one row (a trigger's message per persona_track) that cost more
 * than the row.  An entry goes stale when its relation changes (a relcache
 * invalidation) or any function does (an SQL function may have been
 * inlined into the expressions); a stale entry's memory is handed to the
 * transaction that notices, since a writer of that transaction may still
 * be evaluating it.  Only the expressions are kept, and the column numbers
 * of the writers' column lists: a default's value is still computed per
 * statement (now()), or per row when volatile.
 */
typedef struct CompiledRel
{
	Oid			relid;
	bool		stale;
	MemoryContext cxt;
	int			natts;
	int			ncheck;
	ExprState **checks;			/* as ExecRelCheck expects them */
	char	   *default_known;	/* per attribute: its default was looked up */
	ExprState **defaults;		/* per attribute: NULL when it has none */
	bool	   *default_volatile;
	struct ColumnList *columns; /* column lists resolved to numbers */
	struct CompiledRel *next;
} CompiledRel;

/*
 * A writer's column names resolved to attribute numbers: a syscache lookup
 * per column per statement was most of what opening a writer of one row
 * cost, after its indexes.
 */
typedef struct ColumnList
{
	char	  **names;			/* copies */
	int			n;
	AttrNumber *attnums;
	struct ColumnList *next;
} ColumnList;

static CompiledRel *compiled_rels = NULL;
static bool compiled_callbacks = false;

static void
CompiledRelcacheCallback(Datum arg, Oid relid)
{
	for (CompiledRel *c = compiled_rels; c != NULL; c = c->next)
		if (!OidIsValid(relid) || relid == c->relid)
			c->stale = true;
}

static void
CompiledSyscacheCallback(Datum arg, int cacheid, uint32 hashvalue)
{
	for (CompiledRel *c = compiled_rels; c != NULL; c = c->next)
		c->stale = true;
}

/* The compiled expressions of an open relation, its CHECK constraints compiled. */
static CompiledRel *
GetCompiledRel(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			ncheck = desc->constr != NULL ? desc->constr->num_check : 0;
	CompiledRel *c;
	MemoryContext cxt;
	MemoryContext old;

	if (!compiled_callbacks)
	{
		CacheRegisterRelcacheCallback(CompiledRelcacheCallback, (Datum) 0);
		CacheRegisterSyscacheCallback(PROCOID, CompiledSyscacheCallback, (Datum) 0);
		compiled_callbacks = true;
	}
	for (c = compiled_rels; c != NULL; c = c->next)
		if (c->relid == RelationGetRelid(rel))
			break;
	if (c != NULL && !c->stale && c->natts == desc->natts && c->ncheck == ncheck)
		return c;
	if (c == NULL)
	{
		c = MemoryContextAllocZero(TopMemoryContext, sizeof(CompiledRel));
		c->relid = RelationGetRelid(rel);
		c->next = compiled_rels;
		compiled_rels = c;
	}
	else if (c->cxt != NULL)
		MemoryContextSetParent(c->cxt, TopTransactionContext);
	c->cxt = NULL;
	c->stale = true;			/* until it is complete */
	cxt = AllocSetContextCreate(TopMemoryContext, "persona compiled relation",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		c->checks = palloc(sizeof(ExprState *) * Max(ncheck, 1));
		for (int i = 0; i < ncheck; i++)
			c->checks[i] = ExecInitExpr(expression_planner(stringToNode(desc->constr->check[i].ccbin)),
										NULL);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		MemoryContextDelete(cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	c->default_known = palloc0(desc->natts);
	c->defaults = palloc0(sizeof(ExprState *) * desc->natts);
	c->default_volatile = palloc0(sizeof(bool) * desc->natts);
	c->columns = NULL;
	MemoryContextSwitchTo(old);
	c->cxt = cxt;
	c->natts = desc->natts;
	c->ncheck = ncheck;
	c->stale = false;
	return c;
}

/* The attribute numbers of ``names``, resolved once per compiled relation. */
static const AttrNumber *
CompiledColumns(CompiledRel *c, Relation rel, const char *const *names, int n)
{
	ColumnList *l;
	MemoryContext old;

	for (l = c->columns; l != NULL; l = l->next)
	{
		int			i = 0;

		if (l->n != n)
			continue;
		while (i < n && strcmp(l->names[i], names[i]) == 0)
			i++;
		if (i == n)
			return l->attnums;
	}
	old = MemoryContextSwitchTo(c->cxt);
	l = palloc(sizeof(ColumnList));
	l->n = n;
	l->names = palloc(sizeof(char *) * Max(n, 1));
	l->attnums = palloc(sizeof(AttrNumber) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		l->names[i] = pstrdup(names[i]);
		l->attnums[i] = PersonaRequireColumn(RelationGetRelid(rel), names[i]);
	}
	l->next = c->columns;
	c->columns = l;
	MemoryContextSwitchTo(old);
	return l->attnums;
}

/* The compiled default of attribute attnum, NULL when it has none. */
static ExprState *
CompiledDefault(CompiledRel *c, Relation rel, AttrNumber attnum, bool *isvolatile)
{
	int			i = attnum - 1;

	if (!c->default_known[i])
	{
		MemoryContext old = MemoryContextSwitchTo(c->cxt);
		Expr	   *expr = (Expr *) build_column_default(rel, attnum);

		if (expr != NULL)
		{
			expr = expression_planner(expr);
			c->default_volatile[i] = contain_volatile_functions((Node *) expr);
			c->defaults[i] = ExecInitExpr(expr, NULL);
		}
		MemoryContextSwitchTo(old);
		c->default_known[i] = true;
	}
	*isvolatile = c->default_volatile[i];
	return c->defaults[i];
}

/*
 * For writers of their own (persona_track's, track.c): the CHECK
 * constraints of ``rel`` compiled once per backend, to be set as its
 * ResultRelInfo's ri_ConstraintExprs (NULL when it has none) ...
 */
ExprState **
PersonaCompiledChecks(Relation rel)
{
	CompiledRel *c = GetCompiledRel(rel);

	return c->ncheck > 0 ? c->checks : NULL;
}

/* ... and the default of its attribute ``attnum``, NULL when it has none. */
ExprState *
PersonaCompiledDefault(Relation rel, AttrNumber attnum, bool *isvolatile)
{
	return CompiledDefault(GetCompiledRel(rel), rel, attnum, isvolatile);
}

/*
 * Opens the target's indexes for the executor's index maintenance, once.
 * An updater opens them only for an update that is not HOT, or one that
 * goes through the executor: opening and closing them is most of the
 * set-up of a statement that updates one profile, HOT.
 */
static void
TargetIndices(RowTarget *t)
{
	if (!t->indices_open)
	{
		MemoryContext old = MemoryContextSwitchTo(t->estate->es_query_cxt);

		ExecOpenIndices(t->rri, false);
		MemoryContextSwitchTo(old);
		t->indices_open = true;
	}
}

/* Opens ``relid`` for writes, with its indexes or not yet (TargetIndices). */
static void
OpenTarget(RowTarget *t, Oid relid, bool indices)
{
	RangeTblEntry *rte = makeNode(RangeTblEntry);

	t->rel = table_open(relid, RowExclusiveLock);
	t->estate = CreateExecutorState();
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = t->rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(t->estate, list_make1(rte));
	t->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(t->rri, t->rel, 1, NULL, 0);
	/* Where AFTER ROW triggers look for it, or they open the table again. */
	t->estate->es_opened_result_relations = list_make1(t->rri);
	t->estate->es_output_cid = GetCurrentCommandId(true);
	t->estate->es_snapshot = GetActiveSnapshot();
	t->indices_open = false;
	if (indices)
		TargetIndices(t);
	t->compiled = GetCompiledRel(t->rel);
	if (t->compiled->ncheck > 0)
		t->rri->ri_ConstraintExprs = t->compiled->checks;
	t->triggers = false;
	/* Only AFTER ROW triggers (foreign keys too) queue events here. */
	if (t->rel->trigdesc != NULL &&
		(t->rel->trigdesc->trig_insert_after_row ||
		 t->rel->trigdesc->trig_update_after_row ||
		 t->rel->trigdesc->trig_insert_new_table ||
		 t->rel->trigdesc->trig_update_old_table ||
		 t->rel->trigdesc->trig_update_new_table))
	{
		AfterTriggerBeginQuery();
		t->triggers = true;
	}
}

/* Fires the queued AFTER ROW triggers and closes everything. */
static void
CloseTarget(RowTarget *t)
{
	if (t->triggers)
		AfterTriggerEndQuery(t->estate);
	/* Its indexes, and the relations AFTER ROW triggers opened, if any. */
	ExecCloseResultRelations(t->estate);
	ExecResetTupleTable(t->estate->es_tupleTable, false);
	FreeExecutorState(t->estate);
	table_close(t->rel, NoLock);
}

/*
 * A RowWriter of a relation without row triggers or generated columns
 * buffers its rows and writes them in batches: one heap_multi_insert per
 * batch (a WAL record per page, not per row, as COPY does), then each row's
 * index entries.  Other relations get each row inserted as it comes.
 */
#define WRITER_BATCH_ROWS 1000
#define WRITER_BATCH_BYTES (64 * 1024)

struct RowWriter
{
	RowTarget	t;
	bool		batched;		/* rows are buffered (see above) */
	TupleTableSlot **slots;		/* batched: up to WRITER_BATCH_ROWS, else 1 */
	int			nslots;			/* slots created so far */
	int			nbuffered;		/* rows waiting in slots[0 .. nbuffered) */
	Size		bufferedbytes;
	int			ncolumns;
	AttrNumber *attnums;		/* the caller's columns, in its order */
	Datum	   *base_values;	/* every row starts as this: defaults computed
								 * once */
	bool	   *base_nulls;
	ExprState **defaults;		/* per attribute: a default computed per row */
};

/*
 * Opens ``relid`` (RowExclusiveLock, held to the end of the transaction) for
 * inserts of ``ncolumns`` named columns, in that order.
 */
RowWriter *
PersonaRowWriterOpen(Oid relid, const char *const *columns, int ncolumns)
{
	RowWriter  *w = palloc0(sizeof(RowWriter));
	TupleDesc	desc;
	bool	   *set;

	OpenTarget(&w->t, relid, true);
	desc = RelationGetDescr(w->t.rel);
	w->batched = !(desc->constr != NULL && desc->constr->has_generated_stored) &&
		!(w->t.rel->trigdesc != NULL &&
		  (w->t.rel->trigdesc->trig_insert_before_row ||
		   w->t.rel->trigdesc->trig_insert_after_row ||
		   w->t.rel->trigdesc->trig_insert_instead_row));
	w->slots = palloc0(sizeof(TupleTableSlot *) * (w->batched ? WRITER_BATCH_ROWS : 1));
	w->ncolumns = ncolumns;
	w->attnums = palloc(sizeof(AttrNumber) * ncolumns);
	memcpy(w->attnums, CompiledColumns(w->t.compiled, w->t.rel, columns, ncolumns),
		   sizeof(AttrNumber) * ncolumns);
	set = palloc0(sizeof(bool) * desc->natts);
	for (int i = 0; i < ncolumns; i++)
		set[w->attnums[i] - 1] = true;
	w->base_values = palloc0(sizeof(Datum) * desc->natts);
	w->base_nulls = palloc(sizeof(bool) * desc->natts);
	memset(w->base_nulls, true, sizeof(bool) * desc->natts);
	w->defaults = palloc0(sizeof(ExprState *) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		ExprState  *state;
		bool		isvolatile;
		Datum		value;

		if (set[i] || att->attisdropped)
			continue;
		state = CompiledDefault(w->t.compiled, w->t.rel, i + 1, &isvolatile);
		if (state == NULL)
			continue;

		/*
		 * A default without volatile functions (a constant, now()) has the
		 * same value for every row of the statement: computed once.
		 */
		if (isvolatile)
		{
			w->defaults[i] = state;
			continue;
		}
		value = ExecEvalExprSwitchContext(state, GetPerTupleExprContext(w->t.estate),
										  &w->base_nulls[i]);
		if (!w->base_nulls[i])
			w->base_values[i] = datumCopy(value, att->attbyval, att->attlen);
		ResetPerTupleExprContext(w->t.estate);
	}
	pfree(set);
	return w;
}

/* Writes the buffered rows: the heap tuples at once, then their index entries. */
static void
Flush(RowWriter *w)
{
	EState	   *estate = w->t.estate;

	if (w->nbuffered == 0)
		return;
	table_multi_insert(w->t.rel, w->slots, w->nbuffered, estate->es_output_cid, 0, NULL);
	for (int i = 0; i < w->nbuffered; i++)
	{
		if (w->t.rri->ri_NumIndices > 0)
			list_free(ExecInsertIndexTuples(w->t.rri, w->slots[i], estate, false, false,
											NULL, NIL));
		ResetPerTupleExprContext(estate);
		ExecClearTuple(w->slots[i]);
	}
	w->nbuffered = 0;
	w->bufferedbytes = 0;
}

/*
 * Inserts one row: ``values`` and ``nulls`` in the order of the columns.
 * Returns the row with its defaults, valid until the next call.  Constraints
 * are checked at once; a batched row reaches the table and its indexes (and
 * a unique violation is raised) by a later call or PersonaRowWriterClose at the
 * latest.
 */
TupleTableSlot *
PersonaRowWriterInsert(RowWriter *w, const Datum *values, const bool *nulls)
{
	TupleTableSlot *slot;
	TupleDesc	desc = RelationGetDescr(w->t.rel);
	ExprContext *econtext = GetPerTupleExprContext(w->t.estate);

	if (w->batched && (w->nbuffered == WRITER_BATCH_ROWS ||
					   w->bufferedbytes >= WRITER_BATCH_BYTES))
		Flush(w);
	if (w->nbuffered == w->nslots)
		w->slots[w->nslots++] = table_slot_create(w->t.rel, &w->t.estate->es_tupleTable);
	slot = w->slots[w->nbuffered];
	ExecClearTuple(slot);
	memcpy(slot->tts_values, w->base_values, sizeof(Datum) * desc->natts);
	memcpy(slot->tts_isnull, w->base_nulls, sizeof(bool) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
		if (w->defaults[i] != NULL)
			slot->tts_values[i] = ExecEvalExprSwitchContext(w->defaults[i], econtext,
															&slot->tts_isnull[i]);
	for (int i = 0; i < w->ncolumns; i++)
	{
		slot->tts_values[w->attnums[i] - 1] = values[i];
		slot->tts_isnull[w->attnums[i] - 1] = nulls != NULL && nulls[i];
	}
	ExecStoreVirtualTuple(slot);
	if (!w->batched)
	{
		ExecSimpleRelationInsert(w->t.rri, w->t.estate, slot);
		ResetPerTupleExprContext(w->t.estate);
		return slot;
	}
	/* The slot's own copy: the caller's values and the defaults' go away. */
	ExecMaterializeSlot(slot);
	if (desc->constr != NULL)
		ExecConstraints(w->t.rri, slot, w->t.estate);
	ResetPerTupleExprContext(w->t.estate);
	w->bufferedbytes += ExecFetchSlotHeapTuple(slot, false, NULL)->t_len;
	w->nbuffered++;
	return slot;
}

/*
 * Whether the rows PersonaRowWriterInsert returns are exactly the rows
 * stored: no row trigger or generated column can change them after.
 */
bool
PersonaRowWriterRowsExact(const RowWriter *w)
{
	return w->batched;
}

/* Writes the buffered rows and closes the writer. */
void
PersonaRowWriterClose(RowWriter *w)
{
	Flush(w);
	CloseTarget(&w->t);
	pfree(w->slots);
	pfree(w->attnums);
	pfree(w->base_values);
	pfree(w->base_nulls);
	pfree(w->defaults);
	pfree(w);
}

struct RowUpdater
{
	RowTarget	t;
	Relation	index;
	IndexScanDesc scan;
	TupleTableSlot *current;	/* the locked row */
	TupleTableSlot *next;		/* the row to write */
	bool		exact;			/* next is the row the last update stored */
	EPQState	epqstate;
	MemoryContext cxt;			/* the scan's: btree allocates lazily */
	bool		scanning;		/* PersonaRowUpdaterScan: walking the index */
	IndexWalk	walk;			/* FindRow's (keys asked in ascending order) */
	Buffer		buffer;			/* FetchVersion's last page, kept pinned */
};

/*
 * How far ahead (in key values) FindRow walks the index from the entry it
 * is on before it descends from the root again.
 */
#define UPDATER_WALK_MAX_GAP 32

/*
 * Opens ``relid`` for updates of rows found by ``indexid``, a unique index on
 * one bigint column, under the active snapshot.
 */
RowUpdater *
PersonaRowUpdaterOpen(Oid relid, Oid indexid)
{
	RowUpdater *u = palloc0(sizeof(RowUpdater));

	OpenTarget(&u->t, relid, false);
	u->cxt = CurrentMemoryContext;
	u->index = index_open(indexid, AccessShareLock);
	u->current = table_slot_create(u->t.rel, &u->t.estate->es_tupleTable);
	u->next = ExecInitExtraTupleSlot(u->t.estate, RelationGetDescr(u->t.rel),
									 &TTSOpsVirtual);
	u->scan = index_beginscan(u->t.rel, u->index, u->t.estate->es_snapshot, 1, 0);
	PersonaIndexWalkInit(&u->walk, u->scan, 1, UPDATER_WALK_MAX_GAP);
	EvalPlanQualInit(&u->epqstate, u->t.estate, NULL, NIL, -1);
	return u;
}

/*
 * Whether a lock attempt left the latest version of the row locked in
 * u->current; false when the row is gone.  At REPEATABLE READ, a row
 * changed or deleted since the snapshot is a serialization failure.
 */
static bool
Locked(RowUpdater *u, TM_Result result)
{
	switch (result)
	{
		case TM_Ok:
			return true;
		case TM_Deleted:
			if (IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to concurrent delete")));
			return false;
		case TM_Updated:
			/* Followed to the last version, except at REPEATABLE READ. */
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent update")));
			break;
		default:
			elog(ERROR, "unexpected result %d locking a row of \"%s\"",
				 (int) result, RelationGetRelationName(u->t.rel));
	}
	return false;
}

/* u->next: the caller's change to u->current. */
static void
NextRow(RowUpdater *u, RowChangeFunc change, void *arg)
{
	TupleTableSlot *next = u->next;
	int			natts = next->tts_tupleDescriptor->natts;

	slot_getallattrs(u->current);
	ExecClearTuple(next);
	memcpy(next->tts_values, u->current->tts_values, sizeof(Datum) * natts);
	memcpy(next->tts_isnull, u->current->tts_isnull, sizeof(bool) * natts);
	change(u->current, next->tts_values, next->tts_isnull, arg);
	ExecStoreVirtualTuple(next);
}

/* The index entries of the row just stored from u->next, unless HOT. */
static inline void
InsertIndexEntries(RowUpdater *u, bool update_indexes)
{
	if (update_indexes)
	{
		TargetIndices(&u->t);
		if (u->t.rri->ri_NumIndices > 0)
			list_free(ExecInsertIndexTuples(u->t.rri, u->next, u->t.estate, true, false,
											NULL, NIL));
	}
	ResetPerTupleExprContext(u->t.estate);
}

/*
 * Computes u->next from u->current, checks its constraints and writes it
 * over the version at ``tid``, waiting for a concurrent writer or not; on
 * success, with its index entries unless HOT.
 */
static TM_Result
WriteNext(RowUpdater *u, ItemPointer tid, RowChangeFunc change, void *arg, bool wait)
{
	EState	   *estate = u->t.estate;
	TM_FailureData tmfd;
	TM_Result	result;
	LockTupleMode lockmode;
	bool		update_indexes;

	NextRow(u, change, arg);
	if (u->t.rel->rd_att->constr != NULL)
		ExecConstraints(u->t.rri, u->next, estate);
	result = table_tuple_update(u->t.rel, tid, u->next, estate->es_output_cid,
								estate->es_snapshot, InvalidSnapshot, wait,
								&tmfd, &lockmode, &update_indexes);
	if (result == TM_Ok)
		InsertIndexEntries(u, update_indexes);
	else
		ResetPerTupleExprContext(estate);
	return result;
}

/*
 * Updates the row found in u->current as UPDATE does, without locking it
 * first (a lock is a WAL record of its own): when a concurrent transaction
 * updated it meanwhile, lock its latest version and update that instead
 * (at READ COMMITTED; at REPEATABLE READ it is a serialization failure).
 */
static RowUpdateResult
UpdateFound(RowUpdater *u, RowCheckFunc check, RowChangeFunc change, void *arg)
{
	EState	   *estate = u->t.estate;
	Relation	rel = u->t.rel;

	for (;;)
	{
		TM_FailureData tmfd;
		TM_Result	result;
		ItemPointerData tid = u->current->tts_tid;

		if (check != NULL && !check(u->current, arg))
			return ROW_REFUSED;
		result = WriteNext(u, &tid, change, arg, true);
		if (result == TM_Ok)
			return ROW_UPDATED;
		if (result != TM_Updated && result != TM_Deleted)
			elog(ERROR, "unexpected result %d updating a row of \"%s\"",
				 (int) result, RelationGetRelationName(rel));
		/* Gone, or at REPEATABLE READ a serialization failure. */
		if (result == TM_Deleted || IsolationUsesXactSnapshot())
		{
			(void) Locked(u, result);	/* errors at REPEATABLE READ */
			return ROW_MISSING;
		}
		result = table_tuple_lock(rel, &tid, estate->es_snapshot, u->current,
								  estate->es_output_cid, LockTupleNoKeyExclusive,
								  LockWaitBlock, TUPLE_LOCK_FLAG_FIND_LAST_VERSION, &tmfd);
		if (!Locked(u, result))
			return ROW_MISSING;
	}
}

/*
 * Whether an UPDATE of ``rel`` fires row triggers or fills transition
 * tables.  Statement triggers (persona's guards) fire for neither path
 * here, so they do not make the row go through ExecSimpleRelationUpdate.
 */
static inline bool
HasRowUpdateTriggers(Relation rel)
{
	const TriggerDesc *td = rel->trigdesc;

	return td != NULL &&
		(td->trig_update_before_row || td->trig_update_after_row ||
		 td->trig_update_instead_row || td->trig_update_old_table ||
		 td->trig_update_new_table);
}

/* Updates the locked row in u->current through the executor (row triggers). */
static void
UpdateLocked(RowUpdater *u, RowChangeFunc change, void *arg)
{
	NextRow(u, change, arg);
	EvalPlanQualSetSlot(&u->epqstate, u->next);
	TargetIndices(&u->t);
	ExecSimpleRelationUpdate(u->t.rri, u->t.estate, &u->epqstate, u->current, u->next);
	ResetPerTupleExprContext(u->t.estate);
}

/*
 * Prunes a page holding a row about to be updated when the new version may
 * not fit beside it: the page is marked full (an update found no room
 * there) or less than a tenth of it is free, PostgreSQL's threshold for a
 * table at fillfactor 100.  The pruning on access that index_fetch_heap
 * does (heap_page_prune_opt) prunes whenever the free space is under the
 * relation's fillfactor target instead: persona.profiles keeps half of
 * each page free, room for a bulk statement's new version of every row on
 * it, so every fetch after an update of any row of the page pruned it, a
 * pass over the page per event.  Pruning when the room runs out removes
 * the same dead versions, a dozen updates at a time.  Otherwise as
 * heap_page_prune_opt does it (PostgreSQL 15): only versions dead to every
 * snapshot, only with a cleanup lock taken without waiting; with
 * old_snapshot_threshold set, heap_page_prune_opt itself decides.
 */
static void
PruneIfFull(Relation rel, Buffer buffer)
{
	Page		page = BufferGetPage(buffer);
	TransactionId prune_xid = ((PageHeader) page)->pd_prune_xid;
	GlobalVisState *vistest;
	int			ndeleted;
	int			nnewlpdead;

	if (!TransactionIdIsValid(prune_xid))
		return;
	if (OldSnapshotThresholdActive())
	{
		heap_page_prune_opt(rel, buffer);
		return;
	}
	/* Unlocked, as heap_page_prune_opt reads it: a hint, checked again. */
	if (!PageIsFull(page) && PageGetHeapFreeSpace(page) >= BLCKSZ / 10)
		return;
	vistest = GlobalVisTestFor(rel);
	if (!GlobalVisTestIsRemovableXid(vistest, prune_xid) ||
		!ConditionalLockBufferForCleanup(buffer))
		return;
	if (PageIsFull(page) || PageGetHeapFreeSpace(page) < BLCKSZ / 10)
	{
		ndeleted = heap_page_prune(rel, buffer, InvalidTransactionId, vistest,
								   InvalidTransactionId, 0, &nnewlpdead, NULL);
		if (ndeleted > nnewlpdead)
			pgstat_update_heap_dead_tuples(rel, ndeleted - nnewlpdead);
	}
	LockBuffer(buffer, BUFFER_LOCK_UNLOCK);
}

/*
 * The version of the HOT chain at ``tid`` visible to the scan's snapshot,
 * into u->current, as index_fetch_heap finds it (heapam_index_fetch_tuple,
 * with its predicate lock and its hint to the index scan that the chain is
 * dead), after PruneIfFull instead of the pruning on access.
 */
static bool
FetchVersion(RowUpdater *u, ItemPointer tid)
{
	IndexScanDesc scan = u->walk.scan;
	BufferHeapTupleTableSlot *bslot = (BufferHeapTupleTableSlot *) u->current;
	ItemPointerData at = *tid;
	bool		all_dead = false;
	bool		found;

	u->buffer = ReleaseAndReadBuffer(u->buffer, u->t.rel, ItemPointerGetBlockNumber(tid));
	PruneIfFull(u->t.rel, u->buffer);
	LockBuffer(u->buffer, BUFFER_LOCK_SHARE);
	found = heap_hot_search_buffer(&at, u->t.rel, u->buffer, scan->xs_snapshot,
								   &bslot->base.tupdata, &all_dead, true);
	bslot->base.tupdata.t_self = at;
	LockBuffer(u->buffer, BUFFER_LOCK_UNLOCK);
	if (!scan->xactStartedInRecovery)
		scan->kill_prior_tuple = all_dead;
	if (!found)
		return false;
	u->current->tts_tableOid = RelationGetRelid(u->t.rel);
	ExecStoreBufferHeapTuple(&bslot->base.tupdata, u->current, u->buffer);
	pgstat_count_heap_fetch(scan->indexRelation);
	return true;
}

/*
 * Finds the row whose key is ``key`` under the scan's snapshot, into
 * u->current.  Keys asked for in ascending order (ingest updates profiles in
 * profile_id order) are found by one forward walk of the index from the
 * first, reading each entry's key from the index tuple and fetching the
 * heap only for the entries of the key asked for (FetchVersion), instead
 * of a descent from the root per row; a key asked for again or below the
 * last one, or far ahead of the entry the walk is on, starts a new walk
 * from it.  The walk sees the entries this updater's own non-HOT updates
 * add (same key, new version): it has passed their key by then, and their
 * versions are invisible to the snapshot anyway (this command wrote them).
 */
static bool
FindRow(RowUpdater *u, int64 key)
{
	MemoryContext old = MemoryContextSwitchTo(u->cxt);
	IndexScanDesc scan = u->walk.scan;
	bool		found = false;

	Assert(IsMVCCSnapshot(scan->xs_snapshot));
	ExecClearTuple(u->current); /* a second pin would keep PruneIfFull out */
	PersonaIndexWalkTo(&u->walk, key);
	for (; u->walk.entry && u->walk.key == key; (void) PersonaIndexWalkNext(&u->walk))
		if (FetchVersion(u, &scan->xs_heaptid))
		{
			found = true;
			break;
		}
	MemoryContextSwitchTo(old);
	return found;
}

/*
 * Updates the row whose key is ``key``: ``change`` gets its current version
 * and that version's values and nulls (every attribute, to be changed in
 * place); it may be called again for a newer version after a concurrent
 * update.
 * Returns false, changing nothing, when there is no such row any more (a
 * concurrent transaction deleted it; at REPEATABLE READ that is a
 * serialization failure instead).
 */
bool
PersonaRowUpdaterUpdate(RowUpdater *u, int64 key, RowChangeFunc change, void *arg)
{
	return PersonaRowUpdaterUpdateIf(u, key, NULL, change, arg) == ROW_UPDATED;
}

/*
 * As PersonaRowUpdaterUpdate, but ``check`` (when not NULL) first sees each
 * version ``change`` would be computed from, the latest after a concurrent
 * update (waited for): when it returns false nothing is written
 * (ROW_REFUSED; the row is in PersonaRowUpdaterCurrent).  ROW_MISSING: no
 * such row.
 */
RowUpdateResult
PersonaRowUpdaterUpdateIf(RowUpdater *u, int64 key, RowCheckFunc check, RowChangeFunc change,
						  void *arg)
{
	TM_FailureData tmfd;
	TM_Result	result;
	ItemPointerData tid;

	Assert(!u->scanning);
	u->exact = false;
	if (!FindRow(u, key))
		return ROW_MISSING;
	if (!HasRowUpdateTriggers(u->t.rel))
	{
		RowUpdateResult r = UpdateFound(u, check, change, arg);

		u->exact = r == ROW_UPDATED;
		return r;
	}

	/*
	 * Row triggers need the row locked first (ExecSimpleRelationUpdate), as
	 * SELECT FOR UPDATE locks it: follow a concurrent update, except at
	 * REPEATABLE READ.
	 */
	tid = u->current->tts_tid;
	result = table_tuple_lock(u->t.rel, &tid, u->t.estate->es_snapshot, u->current,
							  u->t.estate->es_output_cid, LockTupleNoKeyExclusive,
							  LockWaitBlock,
							  IsolationUsesXactSnapshot() ? 0 : TUPLE_LOCK_FLAG_FIND_LAST_VERSION,
							  &tmfd);
	if (!Locked(u, result))
		return ROW_MISSING;
	if (check != NULL && !check(u->current, arg))
		return ROW_REFUSED;
	UpdateLocked(u, change, arg);
	return ROW_UPDATED;
}

/* The row last found (by key or by the scan), valid until the next call. */
TupleTableSlot *
PersonaRowUpdaterCurrent(RowUpdater *u)
{
	return u->current;
}

/*
 * Starts a walk of the updater's index: the entries matching ``keys``
 * (index attribute numbers, collations set), in index order, each row as
 * the active snapshot sees it.  Not mixed with lookups by key.
 */
void
PersonaRowUpdaterScan(RowUpdater *u, ScanKey keys, int nkeys)
{
	MemoryContext old = MemoryContextSwitchTo(u->cxt);

	/* u->walk's scan ends here: no lookup by key follows (Assert in UpdateIf) */
	index_endscan(u->scan);
	u->walk.scan = NULL;
	u->scan = index_beginscan(u->t.rel, u->index, u->t.estate->es_snapshot, nkeys, 0);
	index_rescan(u->scan, keys, nkeys, NULL, 0);
	u->scanning = true;
	MemoryContextSwitchTo(old);
}

/* The walk's next row, or NULL at its end. */
TupleTableSlot *
PersonaRowUpdaterNext(RowUpdater *u)
{
	MemoryContext old = MemoryContextSwitchTo(u->cxt);
	bool		found;

	Assert(u->scanning);
	found = index_getnext_slot(u->scan, ForwardScanDirection, u->current);
	MemoryContextSwitchTo(old);
	return found ? u->current : NULL;
}

/*
 * Whether the row the walk is on looks free: no other transaction is
 * changing or locking it, nor changed it since the snapshot.  A hint, read
 * under a share lock of its page, so that a caller can skip a busy row
 * before preparing its change; PersonaRowUpdaterTry decides.
 */
bool
PersonaRowUpdaterLooksFree(RowUpdater *u)
{
	BufferHeapTupleTableSlot *bslot = (BufferHeapTupleTableSlot *) u->current;
	TM_Result	result;

	if (!TTS_IS_BUFFERTUPLE(u->current) || !BufferIsValid(bslot->buffer))
		return true;			/* not a heap row in a buffer: Try decides */
	LockBuffer(bslot->buffer, BUFFER_LOCK_SHARE);
	result = HeapTupleSatisfiesUpdate(bslot->base.tuple, u->t.estate->es_output_cid,
									  bslot->buffer);
	LockBuffer(bslot->buffer, BUFFER_LOCK_UNLOCK);
	return result == TM_Ok;
}

/*
 * Updates the row the walk is on, computed by ``change``, unless another
 * transaction is changing or locking it, or changed it since the snapshot:
 * then it writes nothing and returns false, without waiting (what SKIP
 * LOCKED skips).  The update is the only record written: no row lock
 * first, unless the relation has row triggers.
 */
bool
PersonaRowUpdaterTry(RowUpdater *u, RowChangeFunc change, void *arg)
{
	EState	   *estate = u->t.estate;
	Relation	rel = u->t.rel;
	ItemPointerData tid = u->current->tts_tid;
	TM_FailureData tmfd;
	TM_Result	result;

	Assert(u->scanning);
	u->exact = false;
	if (HasRowUpdateTriggers(rel))
	{
		result = table_tuple_lock(rel, &tid, estate->es_snapshot, u->current,
								  estate->es_output_cid, LockTupleNoKeyExclusive,
								  LockWaitSkip, 0, &tmfd);
		if (result != TM_Ok)
			return false;
		UpdateLocked(u, change, arg);
		return true;
	}
	result = WriteNext(u, &tid, change, arg, false);
	switch (result)
	{
		case TM_Ok:
			u->exact = true;
			return true;
		case TM_BeingModified:
		case TM_Updated:
		case TM_Deleted:
			return false;
		default:
			elog(ERROR, "unexpected result %d updating a row of \"%s\"",
				 (int) result, RelationGetRelationName(rel));
	}
	return false;				/* not reached */
}

/*
 * The row the last successful PersonaRowUpdaterUpdate stored, valid until
 * the next call; NULL when row triggers may have changed it on the way.
 */
TupleTableSlot *
PersonaRowUpdaterRow(RowUpdater *u)
{
	return u->exact ? u->next : NULL;
}

void
PersonaRowUpdaterClose(RowUpdater *u)
{
	ExecClearTuple(u->current);
	if (BufferIsValid(u->buffer))
		ReleaseBuffer(u->buffer);
	index_endscan(u->scan);
	index_close(u->index, NoLock);
	EvalPlanQualEnd(&u->epqstate);
	CloseTarget(&u->t);
	pfree(u);
}
