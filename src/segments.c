/*
 * segments.c
 *	  Real-time segments: checking and compiling predicates, and keeping
 *	  persona.segment_members current for the profiles a change touched.
 *
 * A predicate is parsed and analysed here, once, at persona_create_segment:
 * one boolean expression over the columns of persona.segment_source (the
 * columns of persona.profiles and one per computed trait), no subquery, only
 * built-in functions that are not volatile.  What is stored and ever run is
 * the expression deparsed from the checked tree, never the text a user gave.
 *
 * Refreshing.  SegmentsRefresh(profiles, changed columns) evaluates, in one
 * query, every segment that reads one of the changed columns for those
 * profiles, compares with the current members, and writes the entries and
 * exits (persona.segment_members, persona.segment_log) with a NOTIFY on
 * channel persona_segment for each.  Callers hold the profiles' row locks,
 * so changes to one profile's memberships are serialized.
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "parser/parse_expr.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/snapmgr.h"

#include "persona.h"
#include "rowwriter.h"
#include "segments.h"

#define PREDICATE_PREFIX "SELECT "

/* One row of persona.segments, as the C code needs it. */
typedef struct SegmentDef
{
	int32		segment_id;
	char	   *name;
	Datum		name_text;		/* the name as text (member and log rows) */
	char	   *name_json;		/* the name as a JSON string (NOTIFY payloads) */
	char	   *sql;			/* the checked, deparsed predicate */
	int			nreads;
	char	  **reads;			/* columns of persona.segment_source it reads */
	bool		clock;			/* calls a function of the clock */
} SegmentDef;

typedef struct SegmentCatalog
{
	int			nsegments;
	int			maxsegments;
	SegmentDef *segments;		/* ordered by segment_id */
	SPIPlanPtr	evaluate;		/* built on first use */
} SegmentCatalog;

static MemoryContext SegmentCatalogContext = NULL;
static SegmentCatalog *segment_catalog = NULL;
static Oid	segments_relid = InvalidOid;

static SPIPlanPtr exit_plan = NULL;

/* ---------------------------------------------------------------------
 * Checking and compiling a predicate
 * --------------------------------------------------------------------- */

/* Points errors at the predicate the user wrote, not at our wrapper. */
static void
PredicateErrorCallback(void *arg)
{
	const char *predicate = (const char *) arg;
	int			pos = geterrposition();

	if (pos > (int) strlen(PREDICATE_PREFIX))
	{
		errposition(0);
		internalerrposition(pos - (int) strlen(PREDICATE_PREFIX));
		internalerrquery(predicate);
	}
	errcontext("predicate \"%s\"", predicate);
}

static void
RefusePredicate(const char *what, const char *hint, int location)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("predicates cannot contain %s", what),
			 hint ? errhint("%s", hint) : 0,
			 location >= 0 ? errposition(location + 1) : 0));
}

typedef struct CheckContext
{
	bool		clock;
} CheckContext;

/*
 * The stable built-ins a predicate may call: the clock and date/time
 * arithmetic, which depend on the time (and the time zone) only.  Other
 * stable built-ins can read what the profile does not hold (settings,
 * statistics, whole tables as XML), and predicates run with persona's
 * privileges, so they are refused.
 */
static bool
ClockFunction(const char *name)
{
	static const char *const names[] = {
		"now", "transaction_timestamp", "statement_timestamp", "date_trunc",
		"date_part", "extract", "date_bin", "age", "timezone", "to_char",
		"to_date", "to_timestamp", "make_timestamptz", "date", "timestamp",
		"timestamptz", "time", "timetz", "overlaps", "isfinite"
	};
	static const char *const prefixes[] = {
		"timestamptz_", "timestamp_", "date_", "interval_", "time_", "timetz_"
	};

	for (size_t i = 0; i < lengthof(names); i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	for (size_t i = 0; i < lengthof(prefixes); i++)
		if (strncmp(name, prefixes[i], strlen(prefixes[i])) == 0)
			return true;
	return false;
}

static bool
CheckFunction(Oid funcid, void *context)
{
	CheckContext *cx = (CheckContext *) context;
	char		volatility = func_volatile(funcid);

	if (volatility == PROVOLATILE_VOLATILE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("predicates cannot call volatile function %s",
						format_procedure(funcid)),
				 errhint("A predicate must give the same answer for the same profile at the same time.")));
	if (get_func_namespace(funcid) != PG_CATALOG_NAMESPACE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("predicates cannot call function %s",
						format_procedure(funcid)),
				 errdetail("Only built-in functions and operators are allowed.")));
	if (volatility != PROVOLATILE_IMMUTABLE)
	{
		if (!ClockFunction(get_func_name(funcid)))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("predicates cannot call function %s",
							format_procedure(funcid)),
					 errdetail("Besides immutable built-ins, only clock and date/time functions are allowed.")));
		cx->clock = true;
	}
	return false;
}

static bool
CheckPredicateNode(Node *node, void *context)
{
	CheckContext *cx = (CheckContext *) context;

	if (node == NULL)
		return false;
	if (IsA(node, SubLink))
		RefusePredicate("subqueries", "Name columns of persona.profiles and persona.traits.",
						((SubLink *) node)->location);
	if (IsA(node, Param))
		RefusePredicate("parameters", NULL, ((Param *) node)->location);
	if (IsA(node, SQLValueFunction))
	{
		SQLValueFunction *svf = (SQLValueFunction *) node;

		if (svf->op > SVFOP_LOCALTIMESTAMP_N)
			RefusePredicate("session functions such as CURRENT_USER", NULL, svf->location);
		cx->clock = true;
	}
	if (IsA(node, NextValueExpr))
		RefusePredicate("sequence functions", NULL, -1);
	(void) check_functions_in_node(node, CheckFunction, context);
	return expression_tree_walker(node, CheckPredicateNode, context);
}

/* The raw expression of "SELECT <predicate>", or an error saying why not. */
static Node *
ParsePredicate(const char *predicate, const char *sql)
{
	List	   *stmts = raw_parser(sql, RAW_PARSE_DEFAULT);
	SelectStmt *select;
	ResTarget  *target;

	if (list_length(stmts) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("a predicate must be exactly one expression"),
				 errdetail("The text given holds %d statements.", list_length(stmts))));
	select = (SelectStmt *) ((RawStmt *) linitial(stmts))->stmt;
	if (!IsA(select, SelectStmt) || select->op != SETOP_NONE ||
		select->fromClause != NIL || select->whereClause != NULL ||
		select->groupClause != NIL || select->havingClause != NULL ||
		select->windowClause != NIL || select->valuesLists != NIL ||
		select->sortClause != NIL || select->limitCount != NULL ||
		select->limitOffset != NULL || select->lockingClause != NIL ||
		select->withClause != NULL || select->intoClause != NULL ||
		select->distinctClause != NIL || list_length(select->targetList) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("a predicate must be exactly one expression"),
				 errdetail("The text given is more than an expression: \"%s\".", predicate),
				 errhint("Write a boolean expression such as traits->>'city' = 'Mumbai' AND cart_value > 5000.")));
	target = linitial_node(ResTarget, select->targetList);
	if (target->name != NULL || target->indirection != NIL ||
		(IsA(target->val, ColumnRef) &&
		 IsA(llast(((ColumnRef *) target->val)->fields), A_Star)))
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("a predicate must be exactly one expression"),
				 errdetail("The text given is more than an expression: \"%s\".", predicate)));
	return target->val;
}

/*
 * Checks a predicate and returns it deparsed (over alias "s" of relation
 * ``relid``: persona.segment_source, or persona.decision_source for action
 * conditions), with the columns it reads and whether it calls a function of
 * the clock.
 */
char *
PersonaCompilePredicate(const char *predicate, Oid relid, List **reads, bool *clock)
{
	char	   *sql = psprintf("%s%s", PREDICATE_PREFIX, predicate);
	ErrorContextCallback errcallback;
	ParseState *pstate;
	ParseNamespaceItem *nsitem;
	Relation	rel;
	Node	   *raw;
	Node	   *expr;
	CheckContext cx = {false};
	Bitmapset  *attnos = NULL;
	int			k = -1;
	char	   *deparsed;

	errcallback.callback = PredicateErrorCallback;
	errcallback.arg = (void *) predicate;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	raw = ParsePredicate(predicate, sql);

	rel = relation_open(relid, AccessShareLock);
	pstate = make_parsestate(NULL);
	pstate->p_sourcetext = sql;
	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
										   makeAlias("s", NIL), false, true);
	addNSItemToQuery(pstate, nsitem, false, true, true);
	expr = transformExpr(pstate, raw, EXPR_KIND_WHERE);
	expr = coerce_to_boolean(pstate, expr, "predicate");
	assign_expr_collations(pstate, expr);
	(void) CheckPredicateNode(expr, &cx);

	pull_varattnos(expr, 1, &attnos);
	*reads = NIL;
	while ((k = bms_next_member(attnos, k)) >= 0)
	{
		AttrNumber	attno = k + FirstLowInvalidHeapAttributeNumber;

		if (attno <= 0)
			RefusePredicate("system columns", NULL, -1);
		*reads = lappend(*reads, pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel), attno - 1)->attname)));
	}
	*clock = cx.clock;
	deparsed = deparse_expression(expr, deparse_context_for("s", RelationGetRelid(rel)),
								  true, false);
	relation_close(rel, AccessShareLock);
	free_parsestate(pstate);
	error_context_stack = errcallback.previous;
	return deparsed;
}

/* Checks a predicate over a source relation; returns (sql, reads, clock). */
PG_FUNCTION_INFO_V1(persona_compile_predicate);
Datum
persona_compile_predicate(PG_FUNCTION_ARGS)
{
	char	   *predicate;
	List	   *reads;
	bool		clock;
	char	   *deparsed;
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	Datum	   *names;
	int			i = 0;
	ListCell   *lc;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("predicate must not be null")));
	predicate = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strspn(predicate, " \t\r\n") == strlen(predicate))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("predicate must not be empty")));
	deparsed = PersonaCompilePredicate(predicate, PG_GETARG_OID(1), &reads, &clock);

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "persona_compile_predicate must return a record");
	names = palloc(sizeof(Datum) * Max(list_length(reads), 1));
	foreach(lc, reads)
		names[i++] = CStringGetTextDatum((char *) lfirst(lc));
	values[0] = CStringGetTextDatum(deparsed);
	values[1] = PointerGetDatum(construct_array(names, i, TEXTOID, -1, false, TYPALIGN_INT));
	values[2] = BoolGetDatum(clock);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/* ---------------------------------------------------------------------
 * Definitions cache
 * --------------------------------------------------------------------- */

/* A segment name as a JSON string, quotes included. */
static char *
JsonString(const char *name)
{
	StringInfoData buf;

	initStringInfo(&buf);
	escape_json(&buf, name);
	return buf.data;
}

static void
SegmentCatalogRelcacheCallback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == segments_relid)
		segments_relid = InvalidOid;
}

static int
CompareSegments(const void *a, const void *b)
{
	return ((const SegmentDef *) a)->segment_id - ((const SegmentDef *) b)->segment_id;
}

/*
 * Returns the segment definitions, read again (under a fresh snapshot, as
 * the trait definitions are) after persona.segments changed.  The kept
 * evaluation plan is replanned by the plan cache when persona.segment_source
 * is rebuilt; a trait a segment reads cannot be dropped.
 */
static void
AddSegmentDef(Datum *values, bool *nulls, void *arg)
{
	SegmentCatalog *sc = (SegmentCatalog *) arg;
	SegmentDef *d;
	Datum	   *reads;
	int			nreads;

	if (sc->nsegments == sc->maxsegments)
	{
		sc->maxsegments = Max(8, sc->maxsegments * 2);
		sc->segments = sc->segments
			? repalloc(sc->segments, sizeof(SegmentDef) * sc->maxsegments)
			: palloc(sizeof(SegmentDef) * sc->maxsegments);
	}
	d = &sc->segments[sc->nsegments++];
	d->segment_id = DatumGetInt32(values[0]);
	d->name = TextDatumGetCString(values[1]);
	d->name_text = CStringGetTextDatum(d->name);
	d->name_json = JsonString(d->name);
	d->sql = TextDatumGetCString(values[3]);
	deconstruct_array(DatumGetArrayTypeP(values[4]), TEXTOID, -1, false,
					  TYPALIGN_INT, &reads, NULL, &nreads);
	d->nreads = nreads;
	d->reads = palloc(sizeof(char *) * Max(nreads, 1));
	for (int i = 0; i < nreads; i++)
		d->reads[i] = TextDatumGetCString(reads[i]);
	d->clock = DatumGetBool(values[5]);
}

static SegmentCatalog *
GetSegmentCatalog(void)
{
	const PersonaCatalog *cat = PersonaGetCatalog();
	SegmentCatalog *sc;
	MemoryContext old;
	MemoryContext cxt;

	if (segment_catalog != NULL && segments_relid == cat->segments)
		return segment_catalog;

	cxt = AllocSetContextCreate(TopMemoryContext, "persona segments",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	sc = palloc0(sizeof(SegmentCatalog));
	PersonaReadDefinitions(cat->segments, 6, AddSegmentDef, sc);
	if (sc->nsegments > 0)
		qsort(sc->segments, sc->nsegments, sizeof(SegmentDef), CompareSegments);
	MemoryContextSwitchTo(old);

	if (segment_catalog != NULL && segment_catalog->evaluate != NULL)
		SPI_freeplan(segment_catalog->evaluate);
	if (SegmentCatalogContext != NULL)
		MemoryContextDelete(SegmentCatalogContext);
	SegmentCatalogContext = cxt;
	segment_catalog = sc;
	segments_relid = cat->segments;
	return sc;
}

/*
 * One query that evaluates every segment for a set of profiles: $1 the
 * profile ids, $2 which segments to evaluate (the others read NULL), $3
 * whether to read their current memberships (false: they have none).
 */
static SPIPlanPtr
EvaluationPlan(SegmentCatalog *sc)
{
	StringInfoData sql;
	Oid			types[3] = {INT8ARRAYOID, BOOLARRAYOID, BOOLOID};

	if (sc->evaluate != NULL)
		return sc->evaluate;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT s.profile_id, ARRAY[");
	for (int k = 0; k < sc->nsegments; k++)
		appendStringInfo(&sql, "%sCASE WHEN $2[%d] THEN COALESCE((%s), false) END",
						 k > 0 ? ", " : "", k + 1, sc->segments[k].sql);
	appendStringInfoString(&sql,
						   "]::pg_catalog.bool[], "
						   "CASE WHEN $3 THEN ARRAY(SELECT m.segment FROM persona.segment_members AS m "
						   "      WHERE m.profile_id = s.profile_id) "
						   "ELSE '{}'::pg_catalog.text[] END "
						   "FROM persona.segment_source AS s "
						   "WHERE s.profile_id OPERATOR(pg_catalog.=) ANY ($1)");
	sc->evaluate = SPI_prepare(sql.data, 3, types);
	if (sc->evaluate == NULL)
		elog(ERROR, "SPI_prepare failed for the segment evaluation: %s",
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(sc->evaluate);
	return sc->evaluate;
}

/* ---------------------------------------------------------------------
 * Refreshing memberships
 * --------------------------------------------------------------------- */

/*
 * NOTIFY persona_segment with {"op", "log_id", "segment", "profile_id"},
 * written as jsonb_build_object(...)::text writes it, so that every path
 * announces in one format.  The log id keeps the payloads of one
 * transaction distinct (NOTIFY folds identical ones) and lets a listener
 * find its place in persona.segment_log.
 */
static void
Announce(StringInfo payload, const char *segment_json, int64 profile_id, const char *op,
		 int64 log_id)
{
	char		number[MAXINT8LEN + 1];

	resetStringInfo(payload);
	appendStringInfoString(payload, "{\"op\": \"");
	appendStringInfoString(payload, op);
	appendStringInfoString(payload, "\", \"log_id\": ");
	pg_lltoa(log_id, number);
	appendStringInfoString(payload, number);
	appendStringInfoString(payload, ", \"segment\": ");
	appendStringInfoString(payload, segment_json);
	appendStringInfoString(payload, ", \"profile_id\": ");
	pg_lltoa(profile_id, number);
	appendStringInfoString(payload, number);
	appendStringInfoChar(payload, '}');
	Async_Notify("persona_segment", payload->data);
}

/* Entries or exits: which segment (an index in the catalog), which profile. */
typedef struct ChangeList
{
	int			n;
	int			max;
	int		   *segments;
	Datum	   *pids;
} ChangeList;

static void
AddChange(ChangeList *list, int segment, int64 pid)
{
	if (list->n == list->max)
	{
		list->max = Max(16, list->max * 2);
		list->segments = list->segments ? repalloc(list->segments, sizeof(int) * list->max)
			: palloc(sizeof(int) * list->max);
		list->pids = list->pids ? repalloc(list->pids, sizeof(Datum) * list->max)
			: palloc(sizeof(Datum) * list->max);
	}
	list->segments[list->n] = segment;
	list->pids[list->n] = Int64GetDatum(pid);
	list->n++;
}

/*
 * Writes entries: a member row and a log row each, through RowWriters, and
 * announces them.  The callers hold the profiles' row locks and segment
 * definitions wait for them, so no one else changes these memberships
 * meanwhile: plain inserts suffice.
 */
static uint64
WriteEntries(const SegmentCatalog *sc, const ChangeList *entries)
{
	static const char *const member_columns[] = {"segment", "profile_id"};
	static const char *const log_columns[] = {"segment", "profile_id", "op"};
	const PersonaCatalog *cat = PersonaGetCatalog();
	AttrNumber	log_id = PersonaRequireColumn(cat->segment_log, "log_id");
	RowWriter  *members;
	RowWriter  *log;
	Datum		op = CStringGetTextDatum("enter");
	StringInfoData payload;

	if (entries->n == 0)
		return 0;
	initStringInfo(&payload);
	members = RowWriterOpen(cat->segment_members, member_columns, lengthof(member_columns));
	log = RowWriterOpen(cat->segment_log, log_columns, lengthof(log_columns));
	for (int i = 0; i < entries->n; i++)
	{
		const SegmentDef *seg = &sc->segments[entries->segments[i]];
		Datum		values[3] = {seg->name_text, entries->pids[i], op};
		TupleTableSlot *written;
		bool		isnull;

		CHECK_FOR_INTERRUPTS();
		(void) RowWriterInsert(members, values, NULL);
		written = RowWriterInsert(log, values, NULL);
		Announce(&payload, seg->name_json, DatumGetInt64(entries->pids[i]), "enter",
				 DatumGetInt64(slot_getattr(written, log_id, &isnull)));
	}
	RowWriterClose(log);
	RowWriterClose(members);
	CommandCounterIncrement();
	return entries->n;
}

/*
 * Deletes the member rows of exits, logs and announces them (one SPI
 * statement: exits are few next to entries).
 */
static uint64
WriteExits(const SegmentCatalog *sc, const ChangeList *exits)
{
	Oid			types[2] = {TEXTARRAYOID, INT8ARRAYOID};
	Datum		args[2];
	Datum	   *segments;
	SPIPlanPtr	plan;
	uint64		done;
	StringInfoData payload;

	if (exits->n == 0)
		return 0;
	initStringInfo(&payload);
	segments = palloc(sizeof(Datum) * exits->n);
	for (int i = 0; i < exits->n; i++)
		segments[i] = sc->segments[exits->segments[i]].name_text;
	args[0] = PointerGetDatum(construct_array(segments, exits->n, TEXTOID, -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(exits->pids, exits->n, INT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	plan = PersonaKeptPlan(&exit_plan,
					"WITH changed AS ("
					" DELETE FROM persona.segment_members AS m"
					" USING ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(segment, profile_id)"
					" WHERE m.segment OPERATOR(pg_catalog.=) u.segment"
					"   AND m.profile_id OPERATOR(pg_catalog.=) u.profile_id"
					" RETURNING m.segment, m.profile_id) "
					"INSERT INTO persona.segment_log (segment, profile_id, op, at) "
					"SELECT c.segment, c.profile_id, 'exit', pg_catalog.now() FROM changed AS c "
					"RETURNING segment, profile_id, log_id", 2, types, 0);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "writing segment exits failed");
	done = SPI_processed;
	for (uint64 r = 0; r < done; r++)
	{
		bool		isnull;
		char	   *segment = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);
		int64		pid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													  SPI_tuptable->tupdesc, 2, &isnull));
		int64		log_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
														 SPI_tuptable->tupdesc, 3, &isnull));

		CHECK_FOR_INTERRUPTS();
		Announce(&payload, JsonString(segment), pid, "exit", log_id);
	}
	return done;
}

/* Byte equality of two text datums (segment names). */
static inline bool
TextEquals(Datum a, Datum b)
{
	text	   *ta = DatumGetTextPP(a);
	text	   *tb = DatumGetTextPP(b);

	return VARSIZE_ANY_EXHDR(ta) == VARSIZE_ANY_EXHDR(tb) &&
		memcmp(VARDATA_ANY(ta), VARDATA_ANY(tb), VARSIZE_ANY_EXHDR(ta)) == 0;
}

static bool
ReadsAny(const SegmentDef *seg, const char *const *changed, int nchanged)
{
	if (changed == NULL)
		return true;
	for (int r = 0; r < seg->nreads; r++)
		for (int c = 0; c < nchanged; c++)
			if (strcmp(seg->reads[r], changed[c]) == 0)
				return true;
	return false;
}

/*
 * Re-evaluates the segments that read any of ``changed`` (NULL: all; the
 * pseudo-column "now()" selects the segments that call clock functions) for
 * the given profiles and applies the differences.  ``created``: the
 * profiles were created by the calling statement, so they are in no
 * segment yet.  Returns the number of entries and exits.  Connects to SPI
 * itself.
 */
uint64
SegmentsRefresh(const int64 *profile_ids, int nprofiles, bool created,
				const char *const *changed, int nchanged)
{
	SegmentCatalog *sc;
	bool	   *evaluate;
	Datum	   *flags;
	Datum	   *pids;
	Datum		args[3];
	int			nevaluate = 0;
	ChangeList changes[2] = {{0}};	/* 0: exits, 1: entries */
	uint64		nchanges = 0;
	bool		clock_requested = false;

	if (nprofiles == 0)
		return 0;
	sc = GetSegmentCatalog();
	if (sc->nsegments == 0)
		return 0;

	for (int c = 0; changed != NULL && c < nchanged; c++)
		if (strcmp(changed[c], "now()") == 0)
			clock_requested = true;
	evaluate = palloc0(sizeof(bool) * sc->nsegments);
	flags = palloc(sizeof(Datum) * sc->nsegments);
	for (int k = 0; k < sc->nsegments; k++)
	{
		const SegmentDef *seg = &sc->segments[k];

		evaluate[k] = ReadsAny(seg, changed, nchanged) || (clock_requested && seg->clock);
		flags[k] = BoolGetDatum(evaluate[k]);
		if (evaluate[k])
			nevaluate++;
	}
	if (nevaluate == 0)
		return 0;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pids = palloc(sizeof(Datum) * nprofiles);
	for (int i = 0; i < nprofiles; i++)
		pids[i] = Int64GetDatum(profile_ids[i]);
	args[0] = PointerGetDatum(construct_array(pids, nprofiles, INT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(flags, sc->nsegments, BOOLOID, 1,
											  true, TYPALIGN_CHAR));
	args[2] = BoolGetDatum(!created);
	if (SPI_execute_plan(EvaluationPlan(sc), args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "evaluating segments failed");

	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		pid = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		Datum	   *inside;
		bool	   *inside_null;
		int			ninside;
		Datum	   *members;
		int			nmembers;

		CHECK_FOR_INTERRUPTS();
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 2, &isnull)),
						  BOOLOID, 1, true, TYPALIGN_CHAR, &inside, &inside_null, &ninside);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 3, &isnull)),
						  TEXTOID, -1, false, TYPALIGN_INT, &members, NULL, &nmembers);
		for (int k = 0; k < sc->nsegments && k < ninside; k++)
		{
			bool		is_in;
			bool		was_in = false;

			if (!evaluate[k] || inside_null[k])
				continue;
			is_in = DatumGetBool(inside[k]);
			for (int m = 0; m < nmembers && !was_in; m++)
				was_in = TextEquals(members[m], sc->segments[k].name_text);
			if (is_in != was_in)
				AddChange(&changes[is_in ? 1 : 0], k, pid);
		}
	}

	/* Exits first, then entries. */
	nchanges += WriteExits(sc, &changes[0]);
	nchanges += WriteEntries(sc, &changes[1]);
	SPI_finish();
	return nchanges;
}

/* Re-evaluates segments for profiles; changed NULL means every segment. */
PG_FUNCTION_INFO_V1(persona_refresh_segments);
Datum
persona_refresh_segments(PG_FUNCTION_ARGS)
{
	Datum	   *ids;
	bool	   *ids_null;
	int			nids;
	int64	   *pids;
	char	  **changed = NULL;
	int			nchanged = 0;
	int			n = 0;

	if (PG_ARGISNULL(0))
		PG_RETURN_INT64(0);
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), INT8OID, 8, FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &ids, &ids_null, &nids);
	pids = palloc(sizeof(int64) * Max(nids, 1));
	for (int i = 0; i < nids; i++)
		if (!ids_null[i])
			pids[n++] = DatumGetInt64(ids[i]);
	if (!PG_ARGISNULL(1))
	{
		Datum	   *names;
		bool	   *names_null;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, -1, false,
						  TYPALIGN_INT, &names, &names_null, &nchanged);
		changed = palloc(sizeof(char *) * Max(nchanged, 1));
		for (int i = 0; i < nchanged; i++)
			changed[i] = names_null[i] ? "" : TextDatumGetCString(names[i]);
	}
	PG_RETURN_INT64((int64) SegmentsRefresh(pids, n, false, (const char *const *) changed,
											nchanged));
}

void
PersonaSegmentsInit(void)
{
	CacheRegisterRelcacheCallback(SegmentCatalogRelcacheCallback, (Datum) 0);
}
