/*
 * decide.c
 *	  persona_decide: the next best actions for one person, now.
 *
 * One call:
 *	1. resolves the id (an unknown id becomes a new anonymous profile) and
 *	   serializes decisions for that profile (a transaction-level advisory
 *	   lock), so that caps hold under concurrency;
 *	2. evaluates, in one query, every candidate action's condition over the
 *	   profile, its traits and the call's context, and reads the profile's
 *	   segments and declared and computed traits (for rendering);
 *	3. reads the profile's recent decisions (caps, cooldowns) and the
 *	   candidates' feedback statistics;
 *	4. ranks the eligible actions: priority first, then a Thompson sample of
 *	   each action's Beta(1 + successes, 1 + failures) success probability
 *	   times its value, so that an action without feedback is explored;
 *	5. renders {{trait}} and {{context.path}} placeholders in the content and
 *	   records every returned row in persona.decisions.
 *
 * The work grows with the number of candidate actions, not with the events
 * or profiles stored: every read is an index lookup on this profile.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "persona.h"
#include "traits.h"
#include "validate.h"

#define MAX_DECISIONS 100
#define ADVISORY_CLASS 0x50525341	/* "PRSA": persona's advisory locks */

/* One row of persona.actions, as persona_decide needs it. */
typedef struct ActionDef
{
	int32		action_id;
	char	   *name;
	char	   *channel;
	Jsonb	   *content;
	char	   *segment;		/* NULL: everyone */
	char	   *condition_sql;	/* NULL: no condition */
	int32		priority;
	double		value;
	int32		cap_per_day;	/* 0: no cap */
	int64		cooldown_us;	/* 0: no cooldown */
	TimestampTz starts_at;		/* DT_NOBEGIN: always */
	TimestampTz ends_at;		/* DT_NOEND: never */
	bool		paused;
} ActionDef;

typedef struct ActionCatalog
{
	int			nactions;
	int			maxactions;
	ActionDef  *actions;		/* ordered by action_id */
	int			nconditions;	/* actions with a condition */
	SPIPlanPtr	evaluate;		/* built on first use */
} ActionCatalog;

/* A candidate during one call. */
typedef struct Candidate
{
	ActionDef  *def;
	int64		trials;
	int64		successes;
	double		sample;
	double		score;
} Candidate;

static MemoryContext ActionCatalogContext = NULL;
static ActionCatalog *action_catalog = NULL;
static Oid	actions_relid = InvalidOid;
static pg_prng_state decide_prng;
static bool decide_prng_seeded = false;

static SPIPlanPtr resolve_plan = NULL;
static SPIPlanPtr create_plan = NULL;
static SPIPlanPtr recent_plan = NULL;
static SPIPlanPtr stats_plan = NULL;
static SPIPlanPtr record_plan = NULL;
static SPIPlanPtr hold_plan = NULL;

/* ---------------------------------------------------------------------
 * Definitions cache
 * --------------------------------------------------------------------- */

static void
ActionCatalogRelcacheCallback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == actions_relid)
		actions_relid = InvalidOid;
}

static int
CompareActions(const void *a, const void *b)
{
	return ((const ActionDef *) a)->action_id - ((const ActionDef *) b)->action_id;
}

static void
AddActionDef(Datum *values, bool *nulls, void *arg)
{
	ActionCatalog *ac = (ActionCatalog *) arg;
	ActionDef  *d;

	if (ac->nactions == ac->maxactions)
	{
		ac->maxactions = Max(8, ac->maxactions * 2);
		ac->actions = ac->actions
			? repalloc(ac->actions, sizeof(ActionDef) * ac->maxactions)
			: palloc(sizeof(ActionDef) * ac->maxactions);
	}
	d = &ac->actions[ac->nactions++];
	d->action_id = DatumGetInt32(values[0]);
	d->name = TextDatumGetCString(values[1]);
	d->channel = TextDatumGetCString(values[2]);
	d->content = DatumGetJsonbPCopy(values[3]);
	d->segment = nulls[4] ? NULL : TextDatumGetCString(values[4]);
	d->condition_sql = nulls[6] ? NULL : TextDatumGetCString(values[6]);
	d->priority = DatumGetInt32(values[8]);
	d->value = DatumGetFloat8(values[9]);
	d->cap_per_day = nulls[10] ? 0 : DatumGetInt32(values[10]);
	d->cooldown_us = nulls[11] ? 0 : TraitIntervalUs(DatumGetIntervalP(values[11]));
	if (nulls[12])
		TIMESTAMP_NOBEGIN(d->starts_at);
	else
		d->starts_at = DatumGetTimestampTz(values[12]);
	if (nulls[13])
		TIMESTAMP_NOEND(d->ends_at);
	else
		d->ends_at = DatumGetTimestampTz(values[13]);
	d->paused = DatumGetBool(values[14]);
	if (d->condition_sql != NULL)
		ac->nconditions++;
}

/* The action definitions, read again after persona.actions changed. */
static ActionCatalog *
GetActionCatalog(void)
{
	const PersonaCatalog *cat = PersonaGetCatalog();
	ActionCatalog *ac;
	MemoryContext old;
	MemoryContext cxt;

	if (action_catalog != NULL && actions_relid == cat->actions)
		return action_catalog;

	cxt = AllocSetContextCreate(TopMemoryContext, "persona actions", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	ac = palloc0(sizeof(ActionCatalog));
	PersonaReadDefinitions(cat->actions, 15, AddActionDef, ac);
	if (ac->nactions > 0)
		qsort(ac->actions, ac->nactions, sizeof(ActionDef), CompareActions);
	MemoryContextSwitchTo(old);

	if (action_catalog != NULL && action_catalog->evaluate != NULL)
		SPI_freeplan(action_catalog->evaluate);
	if (ActionCatalogContext != NULL)
		MemoryContextDelete(ActionCatalogContext);
	ActionCatalogContext = cxt;
	action_catalog = ac;
	actions_relid = cat->actions;
	return ac;
}

/*
 * One query over the profile: $1 profile id, $2 context, $3 which actions'
 * conditions to evaluate.  Returns the conditions (NULL where not
 * evaluated), the declared traits, the computed traits and the segments.
 * The conditions are the checked, deparsed expressions over alias "s" of
 * persona.decision_source, whose context column is the parameter here.
 */
static SPIPlanPtr
EvaluationPlan(ActionCatalog *ac)
{
	StringInfoData sql;
	Oid			types[3] = {INT8OID, JSONBOID, BOOLARRAYOID};
	bool		first = true;

	if (ac->evaluate != NULL)
		return ac->evaluate;
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT ARRAY[");
	for (int k = 0; k < ac->nactions; k++)
	{
		if (ac->actions[k].condition_sql == NULL)
			continue;
		appendStringInfo(&sql, "%sCASE WHEN $3[%d] THEN COALESCE((%s), false) END",
						 first ? "" : ", ", k + 1, ac->actions[k].condition_sql);
		first = false;
	}
	appendStringInfoString(&sql,
						   "]::pg_catalog.bool[], p.traits, persona.traits_json(p.computed_state), "
						   "ARRAY(SELECT m.segment FROM persona.segment_members AS m "
						   "      WHERE m.profile_id OPERATOR(pg_catalog.=) p.profile_id) "
						   "FROM persona.profiles AS p "
						   "CROSS JOIN LATERAL (SELECT d.*, $2 AS context FROM persona.segment_source AS d "
						   "     WHERE d.profile_id OPERATOR(pg_catalog.=) p.profile_id) AS s "
						   "WHERE p.profile_id OPERATOR(pg_catalog.=) $1");
	ac->evaluate = SPI_prepare(sql.data, 3, types);
	if (ac->evaluate == NULL)
		elog(ERROR, "SPI_prepare failed for the action conditions: %s",
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(ac->evaluate);
	return ac->evaluate;
}


/* ---------------------------------------------------------------------
 * Thompson sampling
 * --------------------------------------------------------------------- */

static double
Uniform(void)
{
	if (!decide_prng_seeded)
	{
		pg_prng_seed(&decide_prng, pg_prng_uint64(&pg_global_prng_state));
		decide_prng_seeded = true;
	}
	return pg_prng_double(&decide_prng);
}

static double
Normal(void)
{
	double		u1 = 1.0 - Uniform();	/* (0, 1] */
	double		u2 = Uniform();

	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* A Gamma(shape, 1) variate, shape >= 1 (Marsaglia and Tsang). */
static double
Gamma(double shape)
{
	double		d = shape - 1.0 / 3.0;
	double		c = 1.0 / sqrt(9.0 * d);

	for (;;)
	{
		double		x = Normal();
		double		v = 1.0 + c * x;
		double		u;

		if (v <= 0)
			continue;
		v = v * v * v;
		u = 1.0 - Uniform();
		if (log(u) < 0.5 * x * x + d - d * v + d * log(v))
			return d * v;
	}
}

/* A Beta(a, b) variate, a, b >= 1. */
static double
Beta(double a, double b)
{
	double		x = Gamma(a);
	double		y = Gamma(b);

	return x / (x + y);
}

static int
CompareCandidates(const void *a, const void *b)
{
	const Candidate *x = (const Candidate *) a;
	const Candidate *y = (const Candidate *) b;

	if (x->def->priority != y->def->priority)
		return x->def->priority > y->def->priority ? -1 : 1;
	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return x->def->action_id - y->def->action_id;
}

/* ---------------------------------------------------------------------
 * Rendering
 * --------------------------------------------------------------------- */

/* A JSON value as the text a template shows. */
static void
AppendValue(StringInfo out, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			appendBinaryStringInfo(out, v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			appendStringInfoString(out, DatumGetCString(DirectFunctionCall1(numeric_out,
																			NumericGetDatum(v->val.numeric))));
			break;
		case jbvBool:
			appendStringInfoString(out, v->val.boolean ? "true" : "false");
			break;
		case jbvBinary:
			appendStringInfoString(out, JsonbToCString(NULL, v->val.binary.data, v->val.binary.len));
			break;
		default:
			break;				/* null renders empty */
	}
}

static bool
LookupKey(JsonbContainer *obj, const char *key, int len, JsonbValue *out)
{
	JsonbValue	k;
	JsonbValue *v;

	if (obj == NULL || !JsonContainerIsObject(obj))
		return false;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = len;
	v = findJsonbValueFromContainer(obj, JB_FOBJECT, &k);
	if (v == NULL)
		return false;
	*out = *v;
	return true;
}

/* The value of a placeholder name: context.a.b, a computed trait, a declared trait. */
static void
AppendPlaceholder(StringInfo out, const char *name, int len, Jsonb *context,
				  Jsonb *declared, Jsonb *computed)
{
	JsonbValue	v;

	while (len > 0 && name[0] == ' ')
		name++, len--;
	while (len > 0 && name[len - 1] == ' ')
		len--;
	if (len > 8 && strncmp(name, "context.", 8) == 0)
	{
		JsonbContainer *at = &context->root;
		const char *p = name + 8;
		const char *end = name + len;

		for (;;)
		{
			const char *dot = memchr(p, '.', end - p);
			int			part = dot ? dot - p : end - p;

			if (!LookupKey(at, p, part, &v))
				return;
			if (dot == NULL)
				break;
			if (v.type != jbvBinary)
				return;
			at = v.val.binary.data;
			p = dot + 1;
		}
		AppendValue(out, &v);
		return;
	}
	if (LookupKey(computed ? &computed->root : NULL, name, len, &v) ||
		LookupKey(declared ? &declared->root : NULL, name, len, &v))
		AppendValue(out, &v);
}

/* A string with its {{...}} placeholders filled. */
static void
RenderString(JsonbValue *v, Jsonb *context, Jsonb *declared, Jsonb *computed)
{
	const char *s = v->val.string.val;
	int			len = v->val.string.len;
	StringInfoData out;
	int			i = 0;

	if (len < 4 || memchr(s, '{', len) == NULL)
		return;
	initStringInfo(&out);
	while (i < len)
	{
		if (i + 1 < len && s[i] == '{' && s[i + 1] == '{')
		{
			int			j = i + 2;

			while (j + 1 < len && !(s[j] == '}' && s[j + 1] == '}'))
				j++;
			if (j + 1 < len)
			{
				AppendPlaceholder(&out, s + i + 2, j - i - 2, context, declared, computed);
				i = j + 2;
				continue;
			}
		}
		appendStringInfoChar(&out, s[i++]);
	}
	v->val.string.val = out.data;
	v->val.string.len = out.len;
}

/* The content with every string's placeholders filled; always valid JSON. */
static Jsonb *
Render(Jsonb *content, Jsonb *context, Jsonb *declared, Jsonb *computed)
{
	JsonbIterator *it = JsonbIteratorInit(&content->root);
	JsonbParseState *state = NULL;
	JsonbValue	v;
	JsonbIteratorToken tok;
	JsonbValue *res = NULL;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if ((tok == WJB_VALUE || tok == WJB_ELEM) && v.type == jbvString)
			RenderString(&v, context, declared, computed);
		res = pushJsonbValue(&state, tok, tok < WJB_BEGIN_ARRAY ? &v : NULL);
	}
	return JsonbValueToJsonb(res);
}

/* ---------------------------------------------------------------------
 * persona_decide
 * --------------------------------------------------------------------- */

static char *
Reason(const Candidate *c, const Candidate *all, int ncand, int rank)
{
	int			below = 0;

	for (int i = rank + 1; i < ncand; i++)
		if (all[i].def->priority < c->def->priority)
			below++;
	if (below > 0 && below == ncand - rank - 1)
		return psprintf("priority %d rule: outranks the %d other eligible action%s",
						c->def->priority, below, below == 1 ? "" : "s");
	if (c->trials == 0)
		return psprintf("exploring: no feedback yet, sampled %.3f from the uniform prior, times value %g",
						c->sample, c->def->value);
	return psprintf("learned: %.1f%% success over %lld decisions with feedback, sampled %.3f, times value %g",
					100.0 * c->successes / c->trials, (long long) c->trials, c->sample,
					c->def->value);
}

/*
 * Holds the profile (FOR KEY SHARE: ingest goes on, a merge or forget waits
 * for this decision to commit) and returns it; when a merge or forget got
 * there first, resolves the id again.
 */
static int64
HoldProfile(Datum id, int64 pid)
{
	Oid			types[2] = {INT8OID, TEXTOID};

	for (int attempt = 0; attempt < 20; attempt++)
	{
		Datum		args[2] = {Int64GetDatum(pid), id};
		bool		isnull;
		SPIPlanPtr	plan = PersonaKeptPlan(&hold_plan,
										   "SELECT p.profile_id FROM persona.profiles AS p "
										   "WHERE p.profile_id OPERATOR(pg_catalog.=) $1 "
										   "  AND EXISTS (SELECT FROM persona.identities AS i "
										   "              WHERE i.id OPERATOR(pg_catalog.=) $2 "
										   "                AND i.profile_id OPERATOR(pg_catalog.=) $1) "
										   "FOR KEY SHARE OF p",
										   2, types, 0);

		if (SPI_execute_plan(plan, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "holding the profile failed");
		if (SPI_processed == 1)
			return pid;
		plan = PersonaKeptPlan(&create_plan, "SELECT persona.ensure_profile($1, 'anonymous')",
							   1, &types[1], 0);
		if (SPI_execute_plan(plan, &id, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "resolving the id failed");
		pid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access due to concurrent merges"),
			 errhint("Retry the transaction.")));
	return 0;					/* keep compiler quiet */
}

/* The next best actions for a person now; each is recorded. */
PG_FUNCTION_INFO_V1(persona_decide);
Datum
persona_decide(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *id;
	Jsonb	   *context;
	char	   *channel = NULL;
	int32		n;
	ActionCatalog *ac;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	int64		pid;
	bool		isnull;
	Candidate  *cand;
	int			ncand = 0;
	bool	   *evaluate;
	Datum	   *flags;
	Datum		args[3];
	Datum	   *inside = NULL;
	bool	   *inside_null = NULL;
	int			ninside = 0;
	Datum	   *segments = NULL;
	int			nsegments = 0;
	Jsonb	   *declared = NULL;
	Jsonb	   *computed = NULL;
	int64		max_cooldown = USECS_PER_DAY;
	int			take;
	Datum	   *rec[7];
	MemoryContext call_cxt = CurrentMemoryContext;

	PersonaCheckNotNull(PG_ARGISNULL(0), "user_id");
	(void) PersonaCheckId(PG_GETARG_TEXT_PP(0), "user_id", false);
	id = text_to_cstring(PG_GETARG_TEXT_PP(0));
	(void) PersonaCheckObject(PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1),
							  PG_ARGISNULL(1), "context");
	context = PG_GETARG_JSONB_P(1);
	if (!PG_ARGISNULL(2))
		channel = text_to_cstring(PG_GETARG_TEXT_PP(2));
	n = PG_ARGISNULL(3) ? 1 : PG_GETARG_INT32(3);
	if (n <= 0 || n > MAX_DECISIONS)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("n must be between 1 and %d", MAX_DECISIONS),
						errdetail("The n given was %d.", n)));
	if (channel != NULL)
	{
		bool		ok = channel[0] >= 'a' && channel[0] <= 'z' && strlen(channel) <= 32;

		for (const char *p = channel; ok && *p; p++)
			ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
		if (!ok)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							errmsg("invalid channel name \"%s\"", channel),
							errhint("Channels are lower-case letters, digits and underscores, such as web or email.")));
	}
	InitMaterializedSRF(fcinfo, 0);

	ac = GetActionCatalog();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* 1. The profile (created when the id is new), decisions serialized. */
	{
		Oid			type = TEXTOID;
		Datum		arg = CStringGetTextDatum(id);
		SPIPlanPtr	plan = PersonaKeptPlan(&resolve_plan,
									"SELECT i.profile_id FROM persona.identities AS i "
									"WHERE i.id OPERATOR(pg_catalog.=) $1", 1, &type, 0);

		if (SPI_execute_plan(plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "resolving the id failed");
		if (SPI_processed == 0)
		{
			plan = PersonaKeptPlan(&create_plan,
							"SELECT persona.ensure_profile($1, 'anonymous')", 1, &type, 0);
			if (SPI_execute_plan(plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "creating a profile failed");
		}
		pid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		DirectFunctionCall2(pg_advisory_xact_lock_int4, Int32GetDatum(ADVISORY_CLASS),
							Int32GetDatum((int32) (pid ^ (pid >> 32))));
		pid = HoldProfile(arg, pid);
	}

	/* 2. Candidates by schedule, pause and channel; their conditions. */
	cand = palloc0(sizeof(Candidate) * Max(ac->nactions, 1));
	evaluate = palloc0(sizeof(bool) * Max(ac->nactions, 1));
	flags = palloc(sizeof(Datum) * Max(ac->nactions, 1));
	for (int k = 0; k < ac->nactions; k++)
	{
		ActionDef  *d = &ac->actions[k];

		CHECK_FOR_INTERRUPTS();
		evaluate[k] = !d->paused && d->starts_at <= now && now < d->ends_at &&
			(channel == NULL || strcmp(channel, d->channel) == 0);
		flags[k] = BoolGetDatum(evaluate[k] && d->condition_sql != NULL);
		if (evaluate[k] && d->cooldown_us > max_cooldown)
			max_cooldown = d->cooldown_us;
	}
	args[0] = Int64GetDatum(pid);
	args[1] = JsonbPGetDatum(context);
	args[2] = PointerGetDatum(construct_array(flags, ac->nactions, BOOLOID, 1, true, TYPALIGN_CHAR));
	if (SPI_execute_plan(EvaluationPlan(ac), args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "evaluating action conditions failed");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum		d;
		MemoryContext old = MemoryContextSwitchTo(call_cxt);

		deconstruct_array(DatumGetArrayTypePCopy(SPI_getbinval(tup, desc, 1, &isnull)),
						  BOOLOID, 1, true, TYPALIGN_CHAR, &inside, &inside_null, &ninside);
		d = SPI_getbinval(tup, desc, 2, &isnull);
		declared = isnull ? NULL : DatumGetJsonbPCopy(d);
		d = SPI_getbinval(tup, desc, 3, &isnull);
		computed = isnull ? NULL : DatumGetJsonbPCopy(d);
		deconstruct_array(DatumGetArrayTypePCopy(SPI_getbinval(tup, desc, 4, &isnull)),
						  TEXTOID, -1, false, TYPALIGN_INT, &segments, NULL, &nsegments);
		MemoryContextSwitchTo(old);
	}

	/* Segment and condition. */
	{
		int			c = 0;

		for (int k = 0; k < ac->nactions; k++)
		{
			ActionDef  *d = &ac->actions[k];
			bool		ok = evaluate[k];

			CHECK_FOR_INTERRUPTS();
			if (ok && d->condition_sql != NULL)
			{
				ok = c < ninside && !inside_null[c] && DatumGetBool(inside[c]);
			}
			if (d->condition_sql != NULL)
				c++;
			if (ok && d->segment != NULL)
			{
				bool		member = false;

				for (int m = 0; m < nsegments && !member; m++)
				{
					text	   *t = DatumGetTextPP(segments[m]);

					member = VARSIZE_ANY_EXHDR(t) == strlen(d->segment) &&
						memcmp(VARDATA_ANY(t), d->segment, strlen(d->segment)) == 0;
				}
				ok = member;
			}
			if (ok)
				cand[ncand++].def = d;
		}
	}

	/* 3. Caps and cooldowns, from this profile's recent decisions of them. */
	{
		Datum	   *limited = palloc(sizeof(Datum) * Max(ncand, 1));
		int			nlimited = 0;

		for (int i = 0; i < ncand; i++)
			if (cand[i].def->cap_per_day > 0 || cand[i].def->cooldown_us > 0)
				limited[nlimited++] = Int32GetDatum(cand[i].def->action_id);
		if (nlimited > 0)
		{
			Oid			types[3] = {INT8OID, INTERVALOID, INT4ARRAYOID};
			Interval	span;
			Datum		a[3];
			Snapshot	latest;
			int			rc;
			SPIPlanPtr	plan = PersonaKeptPlan(&recent_plan,
										"SELECT d.action_id, "
										"  count(*) FILTER (WHERE d.decided_at > pg_catalog.now() - interval '24 hours'), "
										"  max(d.decided_at) "
										"FROM persona.decisions AS d "
										"WHERE d.profile_id OPERATOR(pg_catalog.=) $1 "
										"  AND d.decided_at > pg_catalog.now() - $2 "
										"  AND d.action_id OPERATOR(pg_catalog.=) ANY ($3) "
										"GROUP BY d.action_id", 3, types, 0);

			memset(&span, 0, sizeof(span));
			span.time = max_cooldown;
			a[0] = Int64GetDatum(pid);
			a[1] = IntervalPGetDatum(&span);
			a[2] = PointerGetDatum(construct_array(limited, nlimited, INT4OID, 4, true, TYPALIGN_INT));
			/*
			 * Under the latest snapshot, not the transaction's: a decision
			 * another session committed while this one waited for the
			 * profile counts, whatever the isolation level.
			 */
			latest = RegisterSnapshot(GetLatestSnapshot());
			rc = SPI_execute_snapshot(plan, a, NULL, latest, InvalidSnapshot, true, false, 0);
			UnregisterSnapshot(latest);
			if (rc != SPI_OK_SELECT)
				elog(ERROR, "reading recent decisions failed");
			for (uint64 r = 0; r < SPI_processed; r++)
			{
				HeapTuple	tup = SPI_tuptable->vals[r];
				int32		action_id = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
				int64		today = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
				TimestampTz last = DatumGetTimestampTz(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull));

				CHECK_FOR_INTERRUPTS();
				for (int i = 0; i < ncand; i++)
				{
					ActionDef  *d = cand[i].def;

					if (d == NULL || d->action_id != action_id)
						continue;
					if ((d->cap_per_day > 0 && today >= d->cap_per_day) ||
						(d->cooldown_us > 0 && last > now - d->cooldown_us))
						cand[i].def = NULL;
				}
			}
			{
				int			keep = 0;

				for (int i = 0; i < ncand; i++)
					if (cand[i].def != NULL)
						cand[keep++] = cand[i];
				ncand = keep;
			}
		}
	}

	/* 4. What feedback taught us, and the ranking. */
	if (ncand > 0)
	{
		Oid			type = INT4ARRAYOID;
		Datum	   *ids = palloc(sizeof(Datum) * ncand);
		Datum		a;
		SPIPlanPtr	plan = PersonaKeptPlan(&stats_plan,
									"SELECT s.action_id, s.trials, s.successes FROM persona.action_stats AS s "
									"WHERE s.action_id OPERATOR(pg_catalog.=) ANY ($1)", 1, &type, 0);

		for (int i = 0; i < ncand; i++)
			ids[i] = Int32GetDatum(cand[i].def->action_id);
		a = PointerGetDatum(construct_array(ids, ncand, INT4OID, 4, true, TYPALIGN_INT));
		if (SPI_execute_plan(plan, &a, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "reading action statistics failed");
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			int32		action_id = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));

			CHECK_FOR_INTERRUPTS();
			for (int i = 0; i < ncand; i++)
				if (cand[i].def->action_id == action_id)
				{
					cand[i].trials = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
					cand[i].successes = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull));
				}
		}
		for (int i = 0; i < ncand; i++)
		{
			double		failures = (double) Max(cand[i].trials - cand[i].successes, 0);

			cand[i].sample = Beta(1.0 + cand[i].successes, 1.0 + failures);
			cand[i].score = cand[i].sample * cand[i].def->value;
		}
		qsort(cand, ncand, sizeof(Candidate), CompareCandidates);
	}

	/* 5. Render, record, return. */
	take = Min(n, ncand);
	for (int f = 0; f < 7; f++)
		rec[f] = palloc(sizeof(Datum) * Max(take, 1));
	for (int i = 0; i < take; i++)
	{
		Candidate  *c = &cand[i];

		rec[0][i] = Int64GetDatum(pid);
		rec[1][i] = Int32GetDatum(c->def->action_id);
		rec[2][i] = CStringGetTextDatum(c->def->name);
		rec[3][i] = CStringGetTextDatum(c->def->channel);
		rec[4][i] = Float8GetDatum(c->score);
		rec[5][i] = CStringGetTextDatum(Reason(c, cand, ncand, i));
		rec[6][i] = JsonbPGetDatum(Render(c->def->content, context, declared, computed));
	}
	if (take > 0)
	{
		Oid			types[8] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		FLOAT8ARRAYOID, TEXTARRAYOID, JSONBOID, JSONBARRAYOID};
		Datum		a[8];
		SPIPlanPtr	plan = PersonaKeptPlan(&record_plan,
									"INSERT INTO persona.decisions "
									"  (profile_id, action_id, action, channel, score, reason, context, content) "
									"SELECT u.profile_id, u.action_id, u.action, u.channel, u.score, u.reason, $7, u.content "
									"FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
									"  pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), "
									"  pg_catalog.unnest($8)) WITH ORDINALITY "
									"  AS u(profile_id, action_id, action, channel, score, reason, content, n) "
									"ORDER BY u.n RETURNING decision_id", 8, types, 0);

		a[0] = PointerGetDatum(construct_array(rec[0], take, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		a[1] = PointerGetDatum(construct_array(rec[1], take, INT4OID, 4, true, TYPALIGN_INT));
		a[2] = PointerGetDatum(construct_array(rec[2], take, TEXTOID, -1, false, TYPALIGN_INT));
		a[3] = PointerGetDatum(construct_array(rec[3], take, TEXTOID, -1, false, TYPALIGN_INT));
		a[4] = PointerGetDatum(construct_array(rec[4], take, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		a[5] = PointerGetDatum(construct_array(rec[5], take, TEXTOID, -1, false, TYPALIGN_INT));
		a[6] = JsonbPGetDatum(context);
		a[7] = PointerGetDatum(construct_array(rec[6], take, JSONBOID, -1, false, TYPALIGN_INT));
		if (SPI_execute_plan(plan, a, NULL, false, 0) != SPI_OK_INSERT_RETURNING ||
			SPI_processed != (uint64) take)
			elog(ERROR, "recording decisions failed");
		for (int i = 0; i < take; i++)
		{
			Datum		values[6];
			bool		nulls[6] = {false, false, false, false, false, false};

			values[0] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
			values[1] = rec[2][i];
			values[2] = rec[3][i];
			values[3] = rec[6][i];
			values[4] = rec[4][i];
			values[5] = rec[5][i];
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	SPI_finish();
	return (Datum) 0;
}

void
PersonaDecideInit(void)
{
	CacheRegisterRelcacheCallback(ActionCatalogRelcacheCallback, (Datum) 0);
}
