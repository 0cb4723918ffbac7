/*
 * track.c
 *	  persona_track: one event, inserted and applied in C.
 *
 * An INSERT into persona.events costs, beside the row, the SQL machinery
 * around it: executor start-up, partition routing set up per statement, the
 * four triggers of persona.events fired through the trigger manager (the
 * AFTER ROW trigger's WHEN compiled per statement, the statement trigger a
 * SECURITY DEFINER call).  For one event that machinery costs as much as
 * the row and its apply together.  So persona_track does what those
 * triggers do, in their order, without it:
 *
 *	1. locks persona.events (RowExclusiveLock), takes the statement's
 *	   snapshot and command id as SPI would for its INSERT;
 *	2. routes the event by occurred_at to its partition, as the executor's
 *	   tuple routing does, and locks it (a default partition is routed again
 *	   once locked: a partition attached meanwhile may now own the row);
 *	3. builds the row: the arguments, and every other column's default of
 *	   persona.events (event_id from its sequence, received_at, ...);
 *	4. runs the row phase of the BEFORE ROW trigger (ingest_row.c: checks,
 *	   identity, fold), then the NOT NULL and CHECK constraints, the heap
 *	   insert and the partition's index entries, as logical replication's
 *	   apply does (ExecSimpleRelationInsert without its triggers);
 *	5. runs the statement trigger's apply (ingest_apply.c) as that trigger
 *	   runs, with the guard of maintained tables letting it through (as
 *	   persona.maintenance would): profiles, segments, linked events.
 *
 * What persona.events looks like (its columns, their defaults, its
 * triggers, and whether this path can honour everything an INSERT would
 * do) is worked out once and kept per backend, forgotten on a relcache
 * invalidation of persona.events (DDL, a new partition) or a change of a
 * function; the partition last routed to is checked once likewise.
 *
 * When anything would make an INSERT do more than this path does, the event
 * goes through INSERT ... RETURNING by SPI instead, as before 0.2.0
 * (TrackDirect, ShapeAllowsDirect and PartitionAllowsDirect decide;
 * docs/ingest.md lists the cases): a trigger on persona.events or on the
 * partition other than persona's own four (user triggers, foreign keys,
 * deferrable unique constraints), one of those four disabled or not firing
 * (session_replication_role = replica), a rule or row-level security on
 * persona.events, a read-only transaction (a standby's included), a stored
 * generated column, a column whose type or default is not the one persona
 * made in a way the path relies on, a partition that is not a plain table
 * or whose columns differ from persona.events', an event that no partition
 * takes (the INSERT raises the error), a caller without INSERT and SELECT
 * on persona.events (the INSERT checks column privileges and raises the
 * error), or persona.events_apply owned by another role than persona_track.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/value.h"
#include "optimizer/optimizer.h"
#include "parser/parse_func.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "pgstat.h"
#include "rewrite/rewriteHandler.h"
#include "utils/acl.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "ingest.h"
#include "persona.h"
#include "rowwriter.h"

/* persona_track's arguments, in their order, and the columns they fill. */
#define TRACK_NARGS 6
static const char *const track_columns[TRACK_NARGS] = {
	"user_id", "event_type", "properties", "occurred_at", "context", "anonymous_id"
};
static const Oid track_types[TRACK_NARGS] = {
	TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID, JSONBOID, TEXTOID
};

/* persona's own INSERT triggers of persona.events, by function. */
enum
{
	FN_BEGIN,					/* events_begin: BEFORE, per statement */
	FN_RESOLVE,					/* events_resolve: BEFORE, per row */
	FN_CONFIRM,					/* events_confirm: AFTER, per row */
	FN_APPLY,					/* events_apply: AFTER, per statement */
	NUM_FNS
};
static const char *const trigger_functions[NUM_FNS] = {
	"events_begin", "events_resolve", "events_confirm", "events_apply"
};

/* What persona.events looks like, for this path (see the file's header). */
typedef struct TrackShape
{
	bool		valid;
	Oid			events;			/* persona.events */
	bool		direct;			/* this path may serve it */
	int			natts;
	AttrNumber	attnums[TRACK_NARGS];	/* the arguments' columns */
	AttrNumber	event_id;		/* what persona_track returns */
	bool	   *given;			/* per attribute: an argument fills it */
	Datum	   *constants;		/* per attribute: a constant default ... */
	bool	   *constant_nulls; /* ... or NULL (no default, or a NULL one) */
	bool	   *computed;		/* per attribute: a default computed per row,
								 * compiled once (PersonaCompiledDefault) ... */
	FmgrInfo  **calls;			/* ... or by calling a C function without
								 * arguments (nextval, now()) */
	Oid		   *collations;		/* of those calls */
	Oid			functions[NUM_FNS];
	Oid			apply_owner;	/* the owner of persona.events_apply */
	Oid			partition;		/* the partition last checked ... */
	bool		partition_ok;	/* ... and whether this path may insert into
								 * it */
	MemoryContext cxt;
} TrackShape;

static TrackShape shape;

static void
InvalidateShape(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == shape.events)
		shape.valid = false;
	if (!OidIsValid(relid) || relid == shape.partition)
		shape.partition = InvalidOid;
}

static void
InvalidateShapeFunctions(Datum arg, int cacheid, uint32 hashvalue)
{
	shape.valid = false;
}

/*
 * Whether the INSERT triggers of ``td`` are exactly persona's functions of
 * ``wanted`` (bits of FN_*), once each, enabled when the session is not a
 * replica; a disabled trigger of anyone else's does not count.
 */
static bool
OnlyOwnTriggers(const TriggerDesc *td, int wanted)
{
	int			found = 0;

	for (int i = 0; td != NULL && i < td->numtriggers; i++)
	{
		const Trigger *t = &td->triggers[i];
		int			fn;

		if (!TRIGGER_FOR_INSERT(t->tgtype))
			continue;
		for (fn = 0; fn < NUM_FNS; fn++)
			if (t->tgfoid == shape.functions[fn])
				break;
		if (fn == NUM_FNS || (wanted & (1 << fn)) == 0)
		{
			if (t->tgenabled == TRIGGER_DISABLED)
				continue;
			return false;
		}
		if ((found & (1 << fn)) != 0 ||
			(t->tgenabled != TRIGGER_FIRES_ON_ORIGIN && t->tgenabled != TRIGGER_FIRES_ALWAYS))
			return false;
		found |= 1 << fn;
	}
	return found == wanted;
}

/*
 * Whether ``funcid`` is a function in C or internal: its call info may be
 * kept across transactions (such functions keep nothing in it that the
 * next call could trip on; an SQL function would cache a plan there).
 */
static bool
IsCFunction(Oid funcid)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	bool		result;

	if (!HeapTupleIsValid(tuple))
		return false;
	result = ((Form_pg_proc) GETSTRUCT(tuple))->prolang == ClanguageId ||
		((Form_pg_proc) GETSTRUCT(tuple))->prolang == INTERNALlanguageId;
	ReleaseSysCache(tuple);
	return result;
}

/* The value of a default kept as a call (see TrackShape), as the executor calls it. */
static Datum
CallDefault(FmgrInfo *flinfo, Oid collation, bool *isnull)
{
	LOCAL_FCINFO(fcinfo, 0);
	PgStat_FunctionCallUsage usage;
	Datum		result;

	InitFunctionCallInfoData(*fcinfo, flinfo, 0, collation, NULL, NULL);
	pgstat_init_function_usage(fcinfo, &usage);
	result = FunctionCallInvoke(fcinfo);
	pgstat_end_function_usage(&usage, true);
	*isnull = fcinfo->isnull;
	return result;
}

/* Whether the direct path can serve persona.events as ``rel`` is now. */
static bool
ShapeAllowsDirect(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	PartitionKey key = RelationGetPartitionKey(rel);
	AttrNumber	profile_id = get_attnum(RelationGetRelid(rel), "profile_id");

	if (rel->rd_rules != NULL || rel->rd_rel->relrowsecurity ||
		(desc->constr != NULL && desc->constr->has_generated_stored) ||
		!OnlyOwnTriggers(rel->trigdesc, (1 << NUM_FNS) - 1))
		return false;
	if (shape.event_id <= 0 || TupleDescAttr(desc, shape.event_id - 1)->atttypid != INT8OID)
		return false;
	if (key == NULL || key->strategy != PARTITION_STRATEGY_RANGE || key->partnatts != 1 ||
		key->partattrs[0] != shape.attnums[3])
		return false;
	for (int i = 0; i < TRACK_NARGS; i++)
	{
		Form_pg_attribute att;

		if (shape.attnums[i] <= 0)
			return false;
		att = TupleDescAttr(desc, shape.attnums[i] - 1);
		if (att->atttypid != track_types[i] || att->atttypmod != -1)
			return false;
		shape.given[shape.attnums[i] - 1] = true;
	}
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		Node	   *expr;

		shape.constant_nulls[i] = true;
		if (shape.given[i] || att->attisdropped)
			continue;
		expr = build_column_default(rel, i + 1);
		if (expr == NULL)
		{
			/* A domain's NOT NULL would be checked on the NULL by INSERT. */
			if (get_typtype(att->atttypid) == TYPTYPE_DOMAIN)
				return false;
			continue;
		}
		/* As the planner does: immutable parts folded (0::bigint a constant). */
		expr = (Node *) expression_planner((Expr *) expr);
		if (IsA(expr, Const))
		{
			Const	   *c = (Const *) expr;

			shape.constant_nulls[i] = c->constisnull;
			if (!c->constisnull)
				shape.constants[i] = datumCopy(c->constvalue, att->attbyval, att->attlen);
		}
		else if (IsA(expr, FuncExpr) && ((FuncExpr *) expr)->args == NIL &&
				 !((FuncExpr *) expr)->funcretset &&
				 IsCFunction(((FuncExpr *) expr)->funcid))
		{
			/* Its call info kept: no expression to set up per row. */
			shape.calls[i] = palloc0(sizeof(FmgrInfo));
			fmgr_info_cxt(((FuncExpr *) expr)->funcid, shape.calls[i], shape.cxt);
			shape.collations[i] = ((FuncExpr *) expr)->inputcollid;
		}
		else
			shape.computed[i] = true;
	}

	/*
	 * profile_id 0 (or NULL) is what makes the row a new event: with any
	 * other default every row would be a restored one (ingest_row.c).
	 */
	if (profile_id <= 0 || shape.computed[profile_id - 1] ||
		shape.calls[profile_id - 1] != NULL ||
		(!shape.constant_nulls[profile_id - 1] &&
		 DatumGetInt64(shape.constants[profile_id - 1]) != 0))
		return false;
	return true;
}

/* The shape of persona.events (``rel``), worked out again when forgotten. */
static const TrackShape *
GetShape(Relation rel)
{
	MemoryContext old;
	HeapTuple	tuple;
	int			natts = RelationGetDescr(rel)->natts;

	if (shape.valid && shape.events == RelationGetRelid(rel))
		return &shape;
	if (shape.cxt == NULL)
		shape.cxt = AllocSetContextCreate(CacheMemoryContext, "persona track shape",
										  ALLOCSET_SMALL_SIZES);
	MemoryContextReset(shape.cxt);
	shape.events = RelationGetRelid(rel);
	shape.partition = InvalidOid;
	shape.valid = false;
	old = MemoryContextSwitchTo(shape.cxt);
	shape.natts = natts;
	shape.given = palloc0(sizeof(bool) * natts);
	shape.constants = palloc0(sizeof(Datum) * natts);
	shape.constant_nulls = palloc0(sizeof(bool) * natts);
	shape.computed = palloc0(sizeof(bool) * natts);
	shape.calls = palloc0(sizeof(FmgrInfo *) * natts);
	shape.collations = palloc0(sizeof(Oid) * natts);
	for (int i = 0; i < TRACK_NARGS; i++)
		shape.attnums[i] = get_attnum(shape.events, track_columns[i]);
	shape.event_id = get_attnum(shape.events, "event_id");
	for (int fn = 0; fn < NUM_FNS; fn++)
		shape.functions[fn] = LookupFuncName(list_make2(makeString("persona"),
														makeString((char *) trigger_functions[fn])),
											 0, NULL, true);
	shape.apply_owner = InvalidOid;
	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(shape.functions[FN_APPLY]));
	if (HeapTupleIsValid(tuple))
	{
		shape.apply_owner = ((Form_pg_proc) GETSTRUCT(tuple))->proowner;
		ReleaseSysCache(tuple);
	}
	shape.direct = OidIsValid(shape.apply_owner) && ShapeAllowsDirect(rel);
	MemoryContextSwitchTo(old);
	shape.valid = true;
	return &shape;
}

/*
 * Whether the direct path may insert into partition ``part`` of
 * persona.events (``parent``): a plain table with persona.events' columns
 * (so the row needs no conversion), no stored generated column, and
 * persona's two row triggers as its only INSERT triggers.
 */
static bool
PartitionAllowsDirect(Relation parent, Relation part)
{
	TupleDesc	pd = RelationGetDescr(parent);
	TupleDesc	cd = RelationGetDescr(part);

	if (shape.partition == RelationGetRelid(part))
		return shape.partition_ok;
	shape.partition = RelationGetRelid(part);
	shape.partition_ok = false;
	if (part->rd_rel->relkind != RELKIND_RELATION || pd->natts != cd->natts ||
		(cd->constr != NULL && cd->constr->has_generated_stored) ||
		!OnlyOwnTriggers(part->trigdesc, (1 << FN_RESOLVE) | (1 << FN_CONFIRM)))
		return false;
	for (int i = 0; i < pd->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(pd, i);
		Form_pg_attribute b = TupleDescAttr(cd, i);

		if (a->attisdropped != b->attisdropped)
			return false;
		if (!a->attisdropped &&
			(strcmp(NameStr(a->attname), NameStr(b->attname)) != 0 ||
			 a->atttypid != b->atttypid || a->atttypmod != b->atttypmod ||
			 a->attcollation != b->attcollation))
			return false;
	}
	shape.partition_ok = true;
	return true;
}

/*
 * The partition that takes an event of ``occurred_at``, as the executor's
 * tuple routing finds it (no range holds NULL: the default partition), or
 * InvalidOid when none does.  ``is_default`` says whether it is the default
 * partition.
 */
static Oid
RouteEvent(Relation parent, Datum occurred_at, bool isnull, bool *is_default)
{
	PartitionKey key = RelationGetPartitionKey(parent);
	PartitionDesc pd = RelationGetPartitionDesc(parent, true);
	PartitionBoundInfo bounds = pd->boundinfo;
	int			part = -1;

	*is_default = false;
	if (pd->nparts == 0 || bounds == NULL)
		return InvalidOid;
	if (!isnull)
	{
		bool		equal;
		int			offset = partition_range_datum_bsearch(key->partsupfunc, key->partcollation,
														   bounds, 1, &occurred_at, &equal);

		part = bounds->indexes[offset + 1];
	}
	if (part < 0)
	{
		part = bounds->default_index;
		*is_default = true;
	}
	return part < 0 ? InvalidOid : pd->oids[part];
}

/*
 * Inserts the event of persona_track's arguments and applies it; returns
 * false, having done nothing, when the SQL path must do it (see the file's
 * header).
 */
static bool
TrackDirect(FunctionCallInfo fcinfo, int64 *event_id)
{
	const PersonaCatalog *cat = PersonaGetCatalog();
	const TrackShape *s;
	Relation	parent;
	Relation	part = NULL;
	Oid			partoid;
	bool		is_default;
	Datum		at = PG_GETARG_DATUM(3);
	bool		at_null = PG_ARGISNULL(3);
	MemoryContext cxt;
	MemoryContext old;
	EState	   *estate;
	RangeTblEntry *rte;
	ResultRelInfo *root;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	Datum	   *values;
	bool	   *nulls;
	bool		applying;

	/* The INSERT refuses a read-only transaction with its own error. */
	if (XactReadOnly || IsInParallelMode() ||
		SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
		return false;

	/* As the INSERT's plan would: the lock first, then the snapshot. */
	parent = table_open(cat->events, RowExclusiveLock);
	s = GetShape(parent);
	if (!s->direct || s->apply_owner != GetUserId() ||
		pg_class_aclmask(s->events, GetUserId(), ACL_INSERT | ACL_SELECT, ACLMASK_ALL) !=
		(ACL_INSERT | ACL_SELECT))
	{
		table_close(parent, NoLock);
		return false;
	}
	PushActiveSnapshot(GetTransactionSnapshot());
	CommandCounterIncrement();
	UpdateActiveSnapshotCommandId();

	/*
	 * The partition, locked.  A partition attached since the routing waited
	 * for the lock on the default partition (ATTACH PARTITION holds it) and
	 * may own the row now: routed again once locked, until it stays put.
	 */
	partoid = RouteEvent(parent, at, at_null, &is_default);
	while (OidIsValid(partoid))
	{
		Oid			again;

		part = table_open(partoid, RowExclusiveLock);
		if (!is_default)
			break;
		again = RouteEvent(parent, at, at_null, &is_default);
		if (again == partoid)
			break;
		table_close(part, NoLock);
		part = NULL;
		partoid = again;
	}
	if (part == NULL || !PartitionAllowsDirect(parent, part))
	{
		if (part != NULL)
			table_close(part, NoLock);
		table_close(parent, NoLock);
		PopActiveSnapshot();
		return false;
	}

	cxt = AllocSetContextCreate(CurrentMemoryContext, "persona track", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);

	/*
	 * The executor state of a routed insert: persona.events the target (range
	 * table entry 1, the columns given), the partition its child.
	 */
	estate = CreateExecutorState();
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = s->events;
	rte->relkind = parent->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	rte->requiredPerms = ACL_INSERT | ACL_SELECT;
	for (int i = 0; i < TRACK_NARGS; i++)
		rte->insertedCols = bms_add_member(rte->insertedCols,
										   s->attnums[i] - FirstLowInvalidHeapAttributeNumber);
	ExecInitRangeTable(estate, list_make1(rte));

	/*
	 * The target is only read by ExecConstraints' error message (the failing
	 * row in persona.events' terms, its columns as given): its relation and
	 * range table entry, without the copy of its triggers that
	 * InitResultRelInfo would make.
	 */
	root = makeNode(ResultRelInfo);
	root->ri_RangeTableIndex = 1;
	root->ri_RelationDesc = parent;
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, part, 0, root, 0);
	estate->es_output_cid = GetCurrentCommandId(true);
	estate->es_snapshot = GetActiveSnapshot();
	ExecOpenIndices(rri, false);

	/* The row: the arguments, then the defaults of the other columns. */
	slot = MakeSingleTupleTableSlot(RelationGetDescr(part), table_slot_callbacks(part));
	ExecClearTuple(slot);
	values = slot->tts_values;
	nulls = slot->tts_isnull;
	memcpy(values, s->constants, sizeof(Datum) * s->natts);
	memcpy(nulls, s->constant_nulls, sizeof(bool) * s->natts);
	for (int i = 0; i < TRACK_NARGS; i++)
	{
		values[s->attnums[i] - 1] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[s->attnums[i] - 1] = PG_ARGISNULL(i);
	}
	for (int i = 0; i < s->natts; i++)
	{
		if (s->calls[i] != NULL)
			values[i] = CallDefault(s->calls[i], s->collations[i], &nulls[i]);
		else if (s->computed[i])
		{
			bool		isvolatile;

			values[i] = ExecEvalExprSwitchContext(PersonaCompiledDefault(parent, i + 1, &isvolatile),
												  GetPerTupleExprContext(estate), &nulls[i]);
		}
	}

	/* The BEFORE ROW trigger's work, then the rest of ExecInsert's. */
	PersonaIngestTrackRow(parent, values, nulls);
	ExecStoreVirtualTuple(slot);
	if (RelationGetDescr(part)->constr != NULL)
	{
		rri->ri_ConstraintExprs = PersonaCompiledChecks(part);
		ExecConstraints(rri, slot, estate);
	}
	*event_id = DatumGetInt64(values[s->event_id - 1]);
	table_tuple_insert(part, slot, estate->es_output_cid, 0, NULL);
	if (rri->ri_NumIndices > 0)
		list_free(ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL));
	ExecCloseIndices(rri);
	ExecDropSingleTupleTableSlot(slot);
	FreeExecutorState(estate);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);

	/*
	 * The statement trigger's work, with the guard letting it through as the
	 * trigger's SET persona.maintenance clause would.  A flag, not that GUC:
	 * a GUC set and restored costs a pass over every GUC (AtEOXact_GUC), a
	 * microsecond per event.  PG_FINALLY restores it whatever happens.
	 */
	applying = persona_applying;
	persona_applying = true;
	PG_TRY();
	{
		PersonaIngestApply();
	}
	PG_FINALLY();
	{
		persona_applying = applying;
	}
	PG_END_TRY();

	PopActiveSnapshot();
	table_close(part, NoLock);
	table_close(parent, NoLock);
	return true;
}

static SPIPlanPtr track_plan = NULL;

/* The event of persona_track's arguments, by INSERT ... RETURNING through SPI. */
static int64
TrackThroughSql(FunctionCallInfo fcinfo)
{
	Oid			types[TRACK_NARGS] = {TEXTOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TIMESTAMPTZOID};
	Datum		args[TRACK_NARGS];
	char		nulls[TRACK_NARGS];
	SPIPlanPtr	plan;
	bool		isnull;
	int64		event_id;

	/* The statement's order of persona_track's arguments. */
	static const int order[TRACK_NARGS] = {0, 5, 1, 2, 4, 3};

	for (int i = 0; i < TRACK_NARGS; i++)
	{
		int			a = order[i];

		nulls[i] = PG_ARGISNULL(a) ? 'n' : ' ';
		args[i] = PG_ARGISNULL(a) ? (Datum) 0 : PG_GETARG_DATUM(a);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = PersonaKeptPlan(&track_plan,
						   "INSERT INTO persona.events "
						   "  (user_id, anonymous_id, event_type, properties, context, occurred_at) "
						   "VALUES ($1, $2, $3, $4, $5, $6) RETURNING event_id",
						   TRACK_NARGS, types, 0);
	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "inserting the event failed");
	event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	return event_id;
}

/* Records one event; returns its event_id. */
PG_FUNCTION_INFO_V1(persona_track);
Datum
persona_track(PG_FUNCTION_ARGS)
{
	int64		event_id;

	if (!TrackDirect(fcinfo, &event_id))
		event_id = TrackThroughSql(fcinfo);
	PG_RETURN_INT64(event_id);
}

void
PersonaTrackInit(void)
{
	CacheRegisterRelcacheCallback(InvalidateShape, (Datum) 0);
	CacheRegisterSyscacheCallback(PROCOID, InvalidateShapeFunctions, (Datum) 0);
}
