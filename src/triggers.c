/*
 * triggers.c
 *	  Linked events: the definitions of persona.triggers, cached, and their
 *	  firing.
 *
 * The row phase of ingest (ingest_row.c) takes the event types that have
 * triggers once per statement (PersonaTriggerEventTypes: NULL when there
 * are none, so that ingest without triggers pays one cache check per
 * statement) and records each row of such a type as a TriggerFiring in the
 * statement's folds.  The apply phase (ingest_apply.c), once the profiles
 * are written, hands them to PersonaTriggersFire: each trigger's condition
 * is evaluated in C against the profile row, with the event's context as
 * parameter 1 and the event object as parameter 2 (persona.trigger_source,
 * predicate.c), and those that hold become messages, queued as one set by
 * PersonaEnqueue (enqueue.c), which applies consent, caps, cooldowns and
 * holdouts, and counts a trigger whose action was dropped since as
 * action_dropped.  All in the ingesting transaction.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/params.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "defcache.h"
#include "enqueue.h"
#include "persona.h"
#include "profile.h"
#include "triggers.h"

typedef struct TriggerDef
{
	int32		trigger_id;		/* first: defcache.c sorts by it */
	char	   *name;
	char	   *event_type;		/* NULL: a segment trigger */
	char	   *segment;		/* a segment trigger's segment, else NULL */
	bool		on_enter;		/* a segment trigger: on entries, else exits */
	char	   *action;
	char	   *source;			/* trigger:NAME */
	char	   *condition_sql;	/* NULL: no condition */
	ExprState  *condition;
	bool		condition_may_fail; /* it may fail on the data (class 22 or
									 * 54): evaluated in a subtransaction */
	Interval	delay;
} TriggerDef;

typedef struct TriggerCatalog
{
	TriggerDef *defs;
	int			ndefs;
	TriggerEventTypes events;	/* n == 0: no trigger on an event type */
	int			nsegment;		/* triggers on segment entries and exits */
} TriggerCatalog;

static SPIPlanPtr error_plan = NULL;
static SPIPlanPtr member_plan = NULL;

static const char *const trigger_columns[] = {
	"trigger_id", "name", "event_type", "action", "condition_sql", "delay", "segment", "direction"
};

static void
ReadTriggerDef(void *entry, const Datum *values, const bool *nulls)
{
	TriggerDef *d = (TriggerDef *) entry;

	d->trigger_id = DatumGetInt32(values[0]);
	d->name = TextDatumGetCString(values[1]);
	d->event_type = nulls[2] ? NULL : TextDatumGetCString(values[2]);
	d->action = TextDatumGetCString(values[3]);
	d->source = psprintf("trigger:%s", d->name);
	d->condition_sql = nulls[4] ? NULL : TextDatumGetCString(values[4]);
	d->delay = *DatumGetIntervalP(values[5]);
	d->segment = nulls[6] ? NULL : TextDatumGetCString(values[6]);
	d->on_enter = !nulls[7] && strcmp(TextDatumGetCString(values[7]), "enter") == 0;
}

/* Conditions are compiled once per load, over persona.trigger_source. */
static void *
BuildTriggerCatalog(void *entries, int n)
{
	TriggerCatalog *tc = palloc0(sizeof(TriggerCatalog));
	Oid			source = PersonaGetCatalog()->trigger_source;

	tc->defs = (TriggerDef *) entries;
	tc->ndefs = n;
	tc->events.trigger_ids = palloc(sizeof(int32) * Max(n, 1));
	tc->events.event_types = palloc(sizeof(char *) * Max(n, 1));
	for (int k = 0; k < n; k++)
	{
		TriggerDef *d = &tc->defs[k];

		if (d->condition_sql != NULL)
			d->condition = PersonaPreparePredicate(d->condition_sql, source,
												   &d->condition_may_fail);
		if (d->event_type != NULL)
		{
			tc->events.trigger_ids[tc->events.n] = d->trigger_id;
			tc->events.event_types[tc->events.n++] = d->event_type;
		}
		else
			tc->nsegment++;
	}
	return tc;
}

/*
 * The trigger definitions, read and compiled again after persona.triggers
 * changed or persona.trigger_source was rebuilt (defcache.c).
 */
static DefinitionCache trigger_cache = {
	.name = "persona triggers",
	.relation = offsetof(PersonaCatalog, triggers),
	.columns = trigger_columns,
	.ncolumns = lengthof(trigger_columns),
	.entry_size = sizeof(TriggerDef),
	.read_row = ReadTriggerDef,
	.build = BuildTriggerCatalog,
	.depends = offsetof(PersonaCatalog, trigger_source),
};

/* NULL under 0.1.0's SQL, which has no persona.triggers. */
static TriggerCatalog *
GetTriggerCatalog(void)
{
	if (!OidIsValid(PersonaGetCatalog()->triggers))
		return NULL;
	return (TriggerCatalog *) PersonaDefinitions(&trigger_cache);
}

/*
 * The event types that have triggers, copied into the current memory
 * context; NULL when no trigger is on an event type.
 */
TriggerEventTypes *
PersonaTriggerEventTypes(void)
{
	TriggerCatalog *tc = GetTriggerCatalog();
	TriggerEventTypes *copy;

	if (tc == NULL || tc->events.n == 0)
		return NULL;
	copy = palloc(sizeof(TriggerEventTypes));
	copy->n = tc->events.n;
	copy->trigger_ids = palloc(sizeof(int32) * copy->n);
	copy->event_types = palloc(sizeof(char *) * copy->n);
	for (int i = 0; i < copy->n; i++)
	{
		copy->trigger_ids[i] = tc->events.trigger_ids[i];
		copy->event_types[i] = pstrdup(tc->events.event_types[i]);
	}
	return copy;
}

static void
PushKey(JsonbParseState **st, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	pushJsonbValue(st, WJB_KEY, &k);
}

static void
PushJsonb(JsonbParseState **st, Jsonb *value)
{
	JsonbValue	v;

	v.type = jbvBinary;
	v.val.binary.data = &value->root;
	v.val.binary.len = VARSIZE(value) - VARHDRSZ;
	pushJsonbValue(st, WJB_VALUE, &v);
}

/* The event as a trigger condition sees it: {event_type, properties, context}. */
Jsonb *
PersonaTriggerEventObject(text *event_type, Jsonb *properties, Jsonb *context)
{
	JsonbParseState *st = NULL;
	JsonbValue	v;
	JsonbValue *result;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	PushKey(&st, "context");
	PushJsonb(&st, context);
	PushKey(&st, "event_type");
	v.type = jbvString;
	v.val.string.val = VARDATA_ANY(event_type);
	v.val.string.len = VARSIZE_ANY_EXHDR(event_type);
	pushJsonbValue(&st, WJB_VALUE, &v);
	PushKey(&st, "properties");
	PushJsonb(&st, properties);
	result = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}

static const TriggerDef *
FindTrigger(const TriggerCatalog *tc, int32 trigger_id)
{
	int			lo = 0,
				hi = tc->ndefs - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (tc->defs[mid].trigger_id == trigger_id)
			return &tc->defs[mid];
		if (tc->defs[mid].trigger_id < trigger_id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return NULL;
}

/* What EvalFirings evaluates. */
typedef struct FiringBatch
{
	const TriggerCatalog *tc;
	const TriggerFiring *firings;
	int			lo;
	int			hi;
	HeapTuple  *rows;
	ExprContext *econtext;
	ParamListInfo params;
	bool	   *holds;
} FiringBatch;

static void
EvalFirings(void *arg)
{
	FiringBatch *b = arg;

	for (int i = b->lo; i < b->hi; i++)
	{
		const TriggerFiring *f = &b->firings[i];
		const TriggerDef *d = FindTrigger(b->tc, f->trigger_id);
		bool		isnull;
		Datum		v;

		CHECK_FOR_INTERRUPTS();
		if (d == NULL || d->condition == NULL)
			continue;
		ExecStoreHeapTuple(b->rows[i], b->econtext->ecxt_scantuple, false);
		b->params->params[0].value = JsonbPGetDatum(f->context);
		b->params->params[1].value = JsonbPGetDatum(f->event);
		v = ExecEvalExprSwitchContext(d->condition, b->econtext, &isnull);
		b->holds[i] = !isnull && DatumGetBool(v);
		ResetExprContext(b->econtext);
	}
}

/*
 * Evaluates the conditions of firings[lo, hi) (those whose trigger has one)
 * inside one subtransaction (none when no condition among them can fail on
 * the data: TriggerDef.condition_may_fail), into holds[], each against its
 * profile row (rows[i], copied beforehand: buffer pins taken inside the
 * subtransaction would belong to it).  Returns false when a condition failed
 * on its profile's data or its event (a data exception or a program limit),
 * the error in ``error``; any other error is thrown.
 */
static bool
TryConditions(const TriggerCatalog *tc, const TriggerFiring *firings, int lo, int hi,
			  HeapTuple *rows, ExprContext *econtext, ParamListInfo params, bool *holds,
			  ErrorData **error)
{
	FiringBatch b = {tc, firings, lo, hi, rows, econtext, params, holds};
	bool		may_fail = false;
	bool		ok;

	for (int i = lo; i < hi && !may_fail; i++)
	{
		const TriggerDef *d = FindTrigger(tc, firings[i].trigger_id);

		may_fail = d != NULL && d->condition != NULL && d->condition_may_fail;
	}
	ok = PersonaTryEvaluation(EvalFirings, &b, may_fail, error);

	ResetExprContext(econtext);
	return ok;
}

/*
 * A firing whose condition failed is skipped: counted in
 * persona.trigger_stats and logged as a warning; the event is ingested.
 */
static void
RecordConditionError(const TriggerDef *d, ErrorData *edata)
{
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		args[2];
	SPIPlanPtr	plan = PersonaKeptPlan(&error_plan,
									   "SELECT persona.count_trigger_error($1, $2)", 2, types, 0);

	args[0] = Int32GetDatum(d->trigger_id);
	args[1] = CStringGetTextDatum(psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode),
										   edata->message));
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "counting a trigger condition error failed");
	ereport(WARNING,
			(errcode(edata->sqlerrcode),
			 errmsg("condition of trigger \"%s\" failed: %s", d->name, edata->message),
			 errdetail("The trigger did not fire for this event; the event was ingested."),
			 errhint("persona.trigger_stats counts the errors of each trigger.")));
}

/*
 * Fires the triggers of a statement's events, in order: evaluates their
 * conditions and queues the messages of those that hold.  Runs inside the
 * caller's SPI connection, after the profiles are written.  ``rows`` (may
 * be NULL), per firing: its profile's row as the statement wrote it, or
 * NULL: it is read.
 */
void
PersonaTriggersFire(const TriggerFiring *firings, const HeapTuple *rows, int n)
{
	TriggerCatalog *tc = GetTriggerCatalog();
	bool	   *holds;
	bool		any = false;
	ProfileReader r;
	ParamListInfo params;
	HeapTuple  *profiles;
	ExprContext *econtext;
	ErrorData  *error = NULL;
	EnqueueItem *items;
	int			nitems = 0;

	if (tc == NULL || n == 0)
		return;
	holds = palloc(sizeof(bool) * n);
	for (int i = 0; i < n; i++)
	{
		const TriggerDef *d = FindTrigger(tc, firings[i].trigger_id);

		/* A trigger dropped since the row came in does not fire. */
		holds[i] = d != NULL && d->condition == NULL;
		if (d != NULL && d->condition != NULL)
			any = true;
	}

	if (any)
	{
		params = makeParamList(2);
		for (int p = 0; p < 2; p++)
		{
			params->params[p].isnull = false;
			params->params[p].pflags = PARAM_FLAG_CONST;
			params->params[p].ptype = JSONBOID;
		}
		PersonaProfileReaderBegin(&r, false);
		profiles = palloc0(sizeof(HeapTuple) * n);
		for (int i = 0; i < n; i++)
		{
			const TriggerDef *d = FindTrigger(tc, firings[i].trigger_id);

			CHECK_FOR_INTERRUPTS();
			if (d == NULL || d->condition == NULL)
				continue;
			if (rows != NULL && rows[i] != NULL)
			{
				profiles[i] = rows[i];
				continue;
			}
			if (!PersonaProfileFetch(&r, firings[i].profile_id))
				elog(ERROR, "profile " INT64_FORMAT " is gone", firings[i].profile_id);
			profiles[i] = ExecCopySlotHeapTuple(r.profile);
		}
		econtext = CreateStandaloneExprContext();
		econtext->ecxt_scantuple = MakeSingleTupleTableSlot(RelationGetDescr(r.profiles),
															&TTSOpsHeapTuple);
		econtext->ecxt_param_list_info = params;
		PersonaProfileReaderEnd(&r);
		if (!TryConditions(tc, firings, 0, n, profiles, econtext, params, holds, &error))
		{
			/* One at a time: only the failing firings are skipped. */
			for (int i = 0; i < n; i++)
			{
				const TriggerDef *d = FindTrigger(tc, firings[i].trigger_id);

				if (d == NULL || d->condition == NULL)
					continue;
				holds[i] = false;
				if (!TryConditions(tc, firings, i, i + 1, profiles, econtext, params, holds, &error))
					RecordConditionError(d, error);
			}
		}
		ExecDropSingleTupleTableSlot(econtext->ecxt_scantuple);
		FreeExprContext(econtext, true);
	}

	/* The messages of those that hold, queued as one set. */
	items = palloc(sizeof(EnqueueItem) * n);
	for (int i = 0; i < n; i++)
	{
		const TriggerDef *d;
		EnqueueItem *it;

		CHECK_FOR_INTERRUPTS();
		if (!holds[i])
			continue;
		d = FindTrigger(tc, firings[i].trigger_id);
		it = &items[nitems++];
		it->profile_id = firings[i].profile_id;
		it->action = d->action;
		it->source = d->source;
		it->due_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
															 TimestampTzGetDatum(firings[i].occurred_at),
															 IntervalPGetDatum(&d->delay)));
		/* The event is kept for the check and the rendering at claim. */
		it->event = firings[i].event;
		it->profile_row = rows != NULL ? rows[i] : NULL;
	}
	PersonaEnqueue(items, nitems, true, NULL);
}

/* Whether the profile of a persona.profiles row is a member of a segment (SPI). */
static bool
IsMember(HeapTuple profile, TupleDesc desc, const char *segment)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		args[2];
	bool		isnull;
	SPIPlanPtr	plan = PersonaKeptPlan(&member_plan,
									   "SELECT FROM persona.segment_members AS m "
									   "WHERE m.profile_id OPERATOR(pg_catalog.=) $1 "
									   "  AND m.segment OPERATOR(pg_catalog.=) $2", 2, types, 0);

	args[0] = heap_getattr(profile, PersonaRequireColumn(PersonaGetCatalog()->profiles, "profile_id"),
						   desc, &isnull);
	args[1] = CStringGetTextDatum(segment);
	if (SPI_execute_plan(plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading a segment membership failed");
	return SPI_processed > 0;
}

/*
 * Fires the triggers on segment entries and exits: ``segments[i]`` entered
 * (or, when not ``entered``, left) by profile ``pids[i]``.  The event a
 * condition sees is {"event_type": "segment:NAME:enter|exit", "properties":
 * {"segment": NAME}, "context": {}}; the message is due delay after now
 * (the clock).  Nothing when no trigger is on a segment.
 */
void
PersonaTriggersFireSegments(const char *const *segments, const Datum *pids, int n, bool entered)
{
	TriggerCatalog *tc = GetTriggerCatalog();
	TriggerFiring *firings;
	int			nfirings = 0;
	Jsonb	   *empty;
	TimestampTz now = GetCurrentTimestamp();

	if (tc == NULL || tc->nsegment == 0 || n == 0)
		return;
	firings = palloc(sizeof(TriggerFiring) * n * tc->nsegment);
	empty = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	for (int i = 0; i < n; i++)
	{
		Jsonb	   *event = NULL;

		CHECK_FOR_INTERRUPTS();
		for (int k = 0; k < tc->ndefs; k++)
		{
			const TriggerDef *d = &tc->defs[k];
			TriggerFiring *f;

			if (d->segment == NULL || d->on_enter != entered || strcmp(d->segment, segments[i]) != 0)
				continue;
			if (event == NULL)
			{
				JsonbParseState *st = NULL;
				JsonbValue	v;
				char	   *type = psprintf("segment:%s:%s", segments[i], entered ? "enter" : "exit");

				pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
				PushKey(&st, "segment");
				v.type = jbvString;
				v.val.string.val = (char *) segments[i];
				v.val.string.len = strlen(segments[i]);
				pushJsonbValue(&st, WJB_VALUE, &v);
				event = PersonaTriggerEventObject(cstring_to_text(type),
												  JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL)),
												  empty);
			}
			f = &firings[nfirings++];
			f->trigger_id = d->trigger_id;
			f->profile_id = DatumGetInt64(pids[i]);
			f->occurred_at = now;
			f->context = empty;
			f->event = event;
		}
	}
	if (nfirings == 0)
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PersonaTriggersFire(firings, NULL, nfirings);
	SPI_finish();
}

/* What EvalRecheck evaluates. */
typedef struct RecheckArgs
{
	const TriggerDef *def;
	ExprContext *econtext;
	bool		holds;
} RecheckArgs;

static void
EvalRecheck(void *arg)
{
	RecheckArgs *a = arg;
	bool		isnull;
	Datum		v = ExecEvalExprSwitchContext(a->def->condition, a->econtext, &isnull);

	a->holds = !isnull && DatumGetBool(v);
}

/*
 * Whether a message that trigger ``source`` (trigger:NAME) queued for the
 * profile in ``profile`` (a copied row of persona.profiles, described by
 * ``desc``) still qualifies: its condition, evaluated again against the
 * profile as it is now and the triggering event kept with the message.
 * True when the trigger has no condition or is gone (nothing to check).
 * Otherwise false with the reason in ``why``: the condition no longer holds,
 * or it failed (an error of class 22 or 54, as at firing).
 */
bool
PersonaTriggerStillHolds(const char *source, HeapTuple profile, TupleDesc desc,
						 Jsonb *event, const char **why)
{
	TriggerCatalog *tc = GetTriggerCatalog();
	const TriggerDef *def = NULL;
	RecheckArgs a;
	ParamListInfo params;
	ExprContext *econtext;
	ErrorData  *error = NULL;
	bool		ok;
	JsonbValue	key;
	JsonbValue *context;

	if (tc == NULL || event == NULL || strncmp(source, "trigger:", 8) != 0)
		return true;
	for (int k = 0; k < tc->ndefs; k++)
		if (strcmp(tc->defs[k].name, source + 8) == 0)
			def = &tc->defs[k];
	if (def == NULL)
		return true;
	if (def->segment != NULL && IsMember(profile, desc, def->segment) != def->on_enter)
	{
		*why = def->on_enter ? "left the segment" : "back in the segment";
		return false;
	}
	if (def->condition == NULL)
		return true;

	params = makeParamList(2);
	key.type = jbvString;
	key.val.string.val = "context";
	key.val.string.len = 7;
	context = findJsonbValueFromContainer(&event->root, JB_FOBJECT, &key);
	params->params[0].value = context == NULL ? (Datum) 0 : JsonbPGetDatum(JsonbValueToJsonb(context));
	params->params[0].isnull = context == NULL;
	params->params[1].value = JsonbPGetDatum(event);
	params->params[1].isnull = false;
	for (int p = 0; p < 2; p++)
	{
		params->params[p].pflags = PARAM_FLAG_CONST;
		params->params[p].ptype = JSONBOID;
	}
	econtext = CreateStandaloneExprContext();
	econtext->ecxt_scantuple = MakeSingleTupleTableSlot(desc, &TTSOpsHeapTuple);
	econtext->ecxt_param_list_info = params;
	ExecStoreHeapTuple(profile, econtext->ecxt_scantuple, false);
	a.def = def;
	a.econtext = econtext;
	a.holds = false;
	ok = PersonaTryEvaluation(EvalRecheck, &a, def->condition_may_fail, &error);
	ExecDropSingleTupleTableSlot(econtext->ecxt_scantuple);
	FreeExprContext(econtext, true);
	if (!ok)
	{
		*why = psprintf("condition of trigger \"%s\" failed: %s", def->name, error->message);
		return false;
	}
	if (!a.holds)
		*why = "condition no longer holds";
	return a.holds;
}
