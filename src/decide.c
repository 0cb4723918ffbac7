/*
 * decide.c
 *	  persona_decide: the next best actions for one person, now.
 *
 * One call runs these steps, each a function below with a struct between
 * them (DecideRequest, DecideProfile, CandidateSet):
 *	1. ResolveDecideProfile: the id's profile (an unknown id becomes a new
 *	   anonymous profile), decisions for it serialized by a transaction-level
 *	   advisory lock, so that caps hold under concurrency;
 *	2. LoadCandidates: the actions active now, not paused, on the channel;
 *	3. ReadDecideProfile: the profile's row and segments (profile.c), the
 *	   candidates' conditions, compiled once (predicate.c) and evaluated in
 *	   C over the row and the call's context, and the declared and computed
 *	   traits (for eligibility and rendering);
 *	4. CheckEligibility: condition and segment;
 *	5. ChooseChannels: an action on the channel "best" goes to the person's
 *	   best consented channel (sendtime.c), or is out when none is (or
 *	   when it is not the channel asked for);
 *	   ApplyConsent: the person's consent to the action's channel (a
 *	   withdrawn channel, or an opt-in channel without a grant, is out);
 *	6. ApplyCaps: caps and cooldowns, from the profile's recent decisions
 *	   and messages (persona.recent_sends);
 *	7. ScoreCandidates: priority first, then a Thompson sample of each
 *	   action's success probability times its value: from the action's
 *	   per-person model over the person's features once it has enough
 *	   feedback (bandit.c), else from its Beta(1 + successes, 1 + failures)
 *	   average, so that an action without feedback is explored;
 *	8. ApplyHoldouts: running experiments (experiments.c): a global
 *	   holdout gets nothing, an action's holdout gets the next best; the
 *	   person's arm is recorded at the first exposure, in either arm;
 *	9. RecordDecisions: renders {{trait}} and {{context.path}} placeholders
 *	   and records every returned row in persona.decisions.
 *
 * The work grows with the number of candidate actions, not with the events
 * or profiles stored: every read is an index lookup on this profile.
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "nodes/params.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "defcache.h"
#include "outbox.h"
#include "experiments.h"
#include "bandit.h"
#include "persona.h"
#include "sendtime.h"
#include "profile.h"
#include "render.h"
#include "traits.h"
#include "validate.h"

#define MAX_DECISIONS 100

/* One row of persona.actions, as persona_decide needs it. */
typedef struct ActionDef
{
	int32		action_id;
	char	   *name;
	char	   *channel;
	Jsonb	   *content;
	char	   *segment;		/* NULL: everyone */
	char	   *condition_sql;	/* NULL: no condition */
	ExprState  *condition;		/* it, compiled over a profile row; context is
								 * $1 */
	bool		condition_may_fail; /* it may fail on the data (class 22 or
									 * 54): evaluated in a subtransaction */
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
	ActionDef  *actions;		/* ordered by action_id */
	int			nconditions;	/* actions with a condition */
} ActionCatalog;

/* A candidate during one call. */
typedef struct Candidate
{
	ActionDef  *def;
	const char *channel;		/* def's, or the one "best" chose */
	int64		trials;
	int64		successes;
	Jsonb	   *model;			/* its per-person model, NULL if none */
	int64		model_n;		/* the model's observations */
	bool		personal;		/* ranked by the model, not the average */
	double		predicted;		/* the model's mean success for the person */
	double		sample;
	double		score;
} Candidate;

static pg_prng_state decide_prng;
static bool decide_prng_seeded = false;
int			persona_decide_seed = 0;

static SPIPlanPtr resolve_plan = NULL;
static SPIPlanPtr create_plan = NULL;
static SPIPlanPtr recent_plan = NULL;
static SPIPlanPtr recent_decisions_plan = NULL;
static SPIPlanPtr stats_plan = NULL;
static SPIPlanPtr stats_model_plan = NULL;
static SPIPlanPtr record_plan = NULL;
static SPIPlanPtr record_features_plan = NULL;
static SPIPlanPtr hold_plan = NULL;
static SPIPlanPtr error_plan = NULL;

/* ---------------------------------------------------------------------
 * Definitions cache
 * --------------------------------------------------------------------- */

static const char *const action_columns[] = {
	"action_id", "name", "channel", "content", "segment", "condition_sql", "priority",
	"value", "cap_per_day", "cooldown", "starts_at", "ends_at", "paused"
};

static void
ReadActionDef(void *entry, const Datum *values, const bool *nulls)
{
	ActionDef  *d = (ActionDef *) entry;

	d->action_id = DatumGetInt32(values[0]);
	d->name = TextDatumGetCString(values[1]);
	d->channel = TextDatumGetCString(values[2]);
	d->content = DatumGetJsonbPCopy(values[3]);
	d->segment = nulls[4] ? NULL : TextDatumGetCString(values[4]);
	d->condition_sql = nulls[5] ? NULL : TextDatumGetCString(values[5]);
	d->priority = DatumGetInt32(values[6]);
	d->value = DatumGetFloat8(values[7]);
	d->cap_per_day = nulls[8] ? 0 : DatumGetInt32(values[8]);
	d->cooldown_us = nulls[9] ? 0 : PersonaTraitIntervalUs(DatumGetIntervalP(values[9]));
	if (nulls[10])
		TIMESTAMP_NOBEGIN(d->starts_at);
	else
		d->starts_at = DatumGetTimestampTz(values[10]);
	if (nulls[11])
		TIMESTAMP_NOEND(d->ends_at);
	else
		d->ends_at = DatumGetTimestampTz(values[11]);
	d->paused = DatumGetBool(values[12]);
}

/*
 * Each condition is compiled once per load into an expression over a row of
 * persona.profiles, the call's context being parameter 1 (predicate.c).
 */
static void *
BuildActionCatalog(void *entries, int n)
{
	ActionCatalog *ac = palloc0(sizeof(ActionCatalog));
	Oid			source = PersonaGetCatalog()->decision_source;

	ac->actions = (ActionDef *) entries;
	ac->nactions = n;
	for (int k = 0; k < n; k++)
		if (ac->actions[k].condition_sql != NULL)
		{
			ac->actions[k].condition = PersonaPreparePredicate(ac->actions[k].condition_sql, source,
															   &ac->actions[k].condition_may_fail);
			ac->nconditions++;
		}
	return ac;
}

/*
 * The action definitions, read and compiled again after persona.actions
 * changed or persona.decision_source was rebuilt (defcache.c).
 */
static DefinitionCache action_cache = {
	.name = "persona actions",
	.relation = offsetof(PersonaCatalog, actions),
	.columns = action_columns,
	.ncolumns = lengthof(action_columns),
	.entry_size = sizeof(ActionDef),
	.read_row = ReadActionDef,
	.build = BuildActionCatalog,
	.depends = offsetof(PersonaCatalog, decision_source),
};

static ActionCatalog *
GetActionCatalog(void)
{
	return (ActionCatalog *) PersonaDefinitions(&action_cache);
}

/*
 * The content template of an action, from the cached definitions (for the
 * outbox, which renders it at claim); NULL when the action is gone.
 */
Jsonb *
PersonaActionContent(int32 action_id)
{
	ActionCatalog *ac = GetActionCatalog();
	int			lo = 0,
				hi = ac->nactions - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (ac->actions[mid].action_id == action_id)
			return ac->actions[mid].content;
		if (ac->actions[mid].action_id < action_id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return NULL;
}

/* ---------------------------------------------------------------------
 * Thompson sampling
 * --------------------------------------------------------------------- */

/* persona.decide_seed was set: the next sample starts its sequence again. */
void
PersonaDecideSeedAssign(int newval, void *extra)
{
	decide_prng_seeded = false;
}

static double
Uniform(void)
{
	if (!decide_prng_seeded)
	{
		pg_prng_seed(&decide_prng, persona_decide_seed != 0 ? (uint64) persona_decide_seed :
					 pg_prng_uint64(&pg_global_prng_state));
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
 * persona_decide, in steps
 *
 * Each step takes what the one before produced, in the structs below, so a
 * new rule (consent, a holdout) is one more step over the candidates.
 * --------------------------------------------------------------------- */

/* What the caller asked for. */
typedef struct DecideRequest
{
	Datum		id;				/* the id, as text */
	Jsonb	   *context;
	const char *channel;		/* NULL: any channel */
	int			n;
	TimestampTz now;
} DecideRequest;

/* What the decision reads of the person. */
typedef struct DecideProfile
{
	int64		profile_id;
	text	   *user_id;		/* NULL while anonymous */
	Jsonb	   *declared;		/* declared traits, NULL if none */
	Jsonb	   *computed;		/* computed traits by name, NULL if none */
	Jsonb	   *consent;		/* channel -> granted */
	int64		event_count;
	TimestampTz last_seen;		/* DT_NOBEGIN: never seen */
	Datum	   *segments;		/* names (text) of the segments it is in */
	int			nsegments;
	bool	   *condition;		/* per action of the catalog: condition held */
} DecideProfile;

/* The candidate actions of one call, shrinking step by step. */
typedef struct CandidateSet
{
	Candidate  *items;
	int			n;
} CandidateSet;

/* Drops the candidates whose def a step cleared, keeping the order. */
static void
CompactCandidates(CandidateSet *set)
{
	int			keep = 0;

	for (int i = 0; i < set->n; i++)
		if (set->items[i].def != NULL)
			set->items[keep++] = set->items[i];
	set->n = keep;
}

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
	if (c->personal)
		return psprintf("personal: %.1f%% success predicted for this person by a model of %lld decisions with feedback, sampled %.3f, times value %g",
						100.0 * c->predicted, (long long) c->model_n, c->sample, c->def->value);
	if (c->trials == 0)
		return psprintf("exploring: no feedback yet, sampled %.3f from the uniform prior, times value %g",
						c->sample, c->def->value);
	if (persona_bandit && c->model_n < persona_bandit_min_feedback)
		return psprintf("learned: %.1f%% success over %lld decisions with feedback, the action's average until its per-person model has %d (it has %lld), sampled %.3f, times value %g",
						100.0 * c->successes / c->trials, (long long) c->trials,
						persona_bandit_min_feedback, (long long) c->model_n, c->sample,
						c->def->value);
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

/*
 * Step 1 (and persona_arm's first, experiments.c): the profile of the id
 * (a new anonymous one when the id is new),
 * with decisions for it serialized (a transaction-level advisory lock), so
 * that caps hold under concurrency.
 */
int64
PersonaDecideProfile(Datum id)
{
	Oid			type = TEXTOID;
	bool		isnull;
	int64		pid;
	SPIPlanPtr	plan = PersonaKeptPlan(&resolve_plan,
									   "SELECT i.profile_id FROM persona.identities AS i "
									   "WHERE i.id OPERATOR(pg_catalog.=) $1", 1, &type, 0);

	if (SPI_execute_plan(plan, &id, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "resolving the id failed");
	if (SPI_processed == 0)
	{
		plan = PersonaKeptPlan(&create_plan,
							   "SELECT persona.ensure_profile($1, 'anonymous')", 1, &type, 0);
		if (SPI_execute_plan(plan, &id, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "creating a profile failed");
	}
	pid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	PersonaLockProfileSends(pid);
	return HoldProfile(id, pid);
}

/* Step 2: the actions active now, not paused, on the requested channel. */
static void
LoadCandidates(const ActionCatalog *ac, const DecideRequest *req, CandidateSet *set)
{
	set->items = palloc0(sizeof(Candidate) * Max(ac->nactions, 1));
	set->n = 0;
	for (int k = 0; k < ac->nactions; k++)
	{
		ActionDef  *d = &ac->actions[k];

		if (!d->paused && d->starts_at <= req->now && req->now < d->ends_at &&
			(req->channel == NULL || strcmp(req->channel, d->channel) == 0 ||
			 strcmp(d->channel, PERSONA_BEST_CHANNEL) == 0))
		{
			set->items[set->n].def = d;
			set->items[set->n++].channel = d->channel;
		}
	}
}

/* What one attempt at a profile's conditions evaluates. */
typedef struct ConditionRun
{
	const ActionCatalog *ac;
	const bool *flagged;
	int			only;
	ProfileReader *r;
	DecideProfile *profile;
} ConditionRun;

static void
EvaluateConditions(void *arg)
{
	ConditionRun *run = (ConditionRun *) arg;

	for (int k = 0; k < run->ac->nactions; k++)
	{
		bool		isnull;
		Datum		v;

		if (run->only >= 0 ? k != run->only : !run->flagged[k])
			continue;
		v = ExecEvalExprSwitchContext(run->ac->actions[k].condition, run->r->econtext, &isnull);
		run->profile->condition[k] = !isnull && DatumGetBool(v);
	}
}

/*
 * Evaluates the conditions flagged in ``flagged`` (or only action ``only``
 * when it is not negative) against the profile row of the reader, inside a
 * subtransaction (PersonaTryEvaluation), unless none of them can fail on the
 * data (ActionDef.condition_may_fail).  Returns true with the results in
 * profile->condition, or false when a condition failed on this profile's
 * data or this call's context (a data exception, or a program limit such
 * as an over-long string): the error is returned in ``error``.  Any other
 * error is thrown.
 */
static bool
TryConditions(const ActionCatalog *ac, const bool *flagged, int only, ProfileReader *r,
			  DecideProfile *profile, ErrorData **error)
{
	ConditionRun run = {ac, flagged, only, r, profile};
	bool		may_fail = false;
	bool		ok;

	for (int k = 0; k < ac->nactions; k++)
		if (only >= 0 ? k == only : flagged[k])
			may_fail |= ac->actions[k].condition_may_fail;
	ok = PersonaTryEvaluation(EvaluateConditions, &run, may_fail, error);

	ResetExprContext(r->econtext);
	return ok;
}

/*
 * An action whose condition failed is not eligible for this call: the
 * error is counted on its row of persona.action_stats (errors, last_error,
 * last_error_at) and logged as a warning, and the other actions are decided
 * as usual.
 */
static void
RecordConditionError(const ActionDef *d, ErrorData *edata)
{
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		args[2];
	SPIPlanPtr	plan = PersonaKeptPlan(&error_plan,
									   "UPDATE persona.action_stats AS s "
									   "SET errors = s.errors OPERATOR(pg_catalog.+) 1, last_error = $2, "
									   "    last_error_at = pg_catalog.clock_timestamp() "
									   "WHERE s.action_id OPERATOR(pg_catalog.=) $1", 2, types, 0);

	args[0] = Int32GetDatum(d->action_id);
	args[1] = CStringGetTextDatum(psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode),
										   edata->message));
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "counting a condition error failed");
	ereport(WARNING,
			(errcode(edata->sqlerrcode),
			 errmsg("condition of action \"%s\" failed: %s", d->name, edata->message),
			 errdetail("The action is not eligible for this call; the others are decided as usual."),
			 errhint("persona.action_stats counts the errors of each action.")));
}

/*
 * Step 3: the person as the decision sees them: declared and computed
 * traits, segments, and the conditions of the candidates, each compiled
 * once (BuildActionCatalog) and evaluated here against the profile's row
 * and the call's context, with no query.  When a condition fails, each is
 * evaluated alone, and those that fail make their action ineligible
 * (RecordConditionError).
 */
static void
ReadDecideProfile(ActionCatalog *ac, const DecideRequest *req, const CandidateSet *set,
				  DecideProfile *profile)
{
	bool	   *flagged = palloc0(sizeof(bool) * Max(ac->nactions, 1));
	bool		any = false;
	ProfileReader r;
	ParamListInfo params = makeParamList(1);
	ErrorData  *error = NULL;
	bool		isnull;
	Datum		d;
	AttrNumber	consent_att;

	profile->condition = palloc0(sizeof(bool) * Max(ac->nactions, 1));
	for (int i = 0; i < set->n; i++)
		if (set->items[i].def->condition_sql != NULL)
		{
			flagged[set->items[i].def - ac->actions] = true;
			any = true;
		}

	PersonaProfileReaderBegin(&r, true);
	if (!PersonaProfileFetch(&r, profile->profile_id))
		elog(ERROR, "profile " INT64_FORMAT " is gone", profile->profile_id);
	d = PersonaProfileColumn(&r, "user_id", &isnull);
	profile->user_id = isnull ? NULL : DatumGetTextPCopy(d);
	d = PersonaProfileColumn(&r, "traits", &isnull);
	profile->declared = isnull ? NULL : DatumGetJsonbPCopy(d);
	d = PersonaProfileColumn(&r, "event_count", &isnull);
	profile->event_count = isnull ? 0 : DatumGetInt64(d);
	d = PersonaProfileColumn(&r, "last_seen", &isnull);
	if (isnull)
		TIMESTAMP_NOBEGIN(profile->last_seen);
	else
		profile->last_seen = DatumGetTimestampTz(d);
	d = PersonaProfileColumn(&r, "computed_state", &isnull);
	profile->computed = PersonaTraitsJson(isnull ? NULL : DatumGetByteaPP(d));
	/* A database still on 0.1.0's schema has no consent column. */
	consent_att = get_attnum(RelationGetRelid(r.profiles), "consent");
	profile->consent = NULL;
	if (consent_att != InvalidAttrNumber)
	{
		d = slot_getattr(r.profile, consent_att, &isnull);
		profile->consent = isnull ? NULL : DatumGetJsonbPCopy(d);
	}
	profile->segments = PersonaProfileSegments(&r, profile->profile_id, &profile->nsegments);

	params->params[0].value = JsonbPGetDatum(req->context);
	params->params[0].isnull = false;
	params->params[0].pflags = PARAM_FLAG_CONST;
	params->params[0].ptype = JSONBOID;
	r.econtext->ecxt_param_list_info = params;
	if (any && !TryConditions(ac, flagged, -1, &r, profile, &error))
	{
		for (int k = 0; k < ac->nactions; k++)
		{
			if (!flagged[k])
				continue;
			profile->condition[k] = false;
			if (!TryConditions(ac, flagged, k, &r, profile, &error))
				RecordConditionError(&ac->actions[k], error);
		}
	}
	PersonaProfileReaderEnd(&r);
}

static bool
InSegment(const DecideProfile *profile, const char *segment)
{
	size_t		len = strlen(segment);

	for (int m = 0; m < profile->nsegments; m++)
	{
		text	   *t = DatumGetTextPP(profile->segments[m]);

		if (VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), segment, len) == 0)
			return true;
	}
	return false;
}

/* Step 4: the candidates whose condition holds and whose segment has the person. */
static void
CheckEligibility(const ActionCatalog *ac, const DecideProfile *profile, CandidateSet *set)
{
	for (int i = 0; i < set->n; i++)
	{
		ActionDef  *d = set->items[i].def;

		if ((d->condition_sql != NULL && !profile->condition[d - ac->actions]) ||
			(d->segment != NULL && !InSegment(profile, d->segment)))
			set->items[i].def = NULL;
	}
	CompactCandidates(set);
}

/*
 * Step 5: the channel "best".  An action on it goes to the person's best
 * consented channel among the actions' channels (one choice per call);
 * none consented, or another channel than the one asked for, and it is out.
 */
static void
ChooseChannels(const DecideRequest *req, const DecideProfile *profile, CandidateSet *set)
{
	char	   *best = NULL;
	bool		chosen = false;

	for (int i = 0; i < set->n; i++)
	{
		if (strcmp(set->items[i].channel, PERSONA_BEST_CHANNEL) != 0)
			continue;
		if (!chosen)
		{
			best = PersonaBestChannel(profile->profile_id, true, NULL);
			chosen = true;
		}
		if (best == NULL || (req->channel != NULL && strcmp(req->channel, best) != 0))
			set->items[i].def = NULL;
		else
			set->items[i].channel = best;
	}
	CompactCandidates(set);
}

/*
 * And consent.  A withdrawn channel, or a channel of
 * persona.opt_in_channels the person has not granted, gets nothing.
 */
static void
ApplyConsent(const DecideProfile *profile, CandidateSet *set)
{
	for (int i = 0; i < set->n; i++)
		if (!PersonaConsented(profile->consent, set->items[i].channel))
			set->items[i].def = NULL;
	CompactCandidates(set);
}

/*
 * Step 6: caps and cooldowns, from this profile's recent decisions and
 * messages of them (persona.recent_sends, shared with the outbox).
 */
static void
ApplyCaps(const DecideRequest *req, int64 profile_id, CandidateSet *set)
{
	Datum	   *limited = palloc(sizeof(Datum) * Max(set->n, 1));
	int			nlimited = 0;
	int64		max_cooldown = USECS_PER_DAY;
	Oid			types[3] = {INT8OID, INTERVALOID, INT4ARRAYOID};
	Interval	span;
	Datum		a[3];
	Snapshot	latest;
	int			rc;
	SPIPlanPtr	plan;

	for (int i = 0; i < set->n; i++)
	{
		ActionDef  *d = set->items[i].def;

		if (d->cap_per_day > 0 || d->cooldown_us > 0)
			limited[nlimited++] = Int32GetDatum(d->action_id);
		if (d->cooldown_us > max_cooldown)
			max_cooldown = d->cooldown_us;
	}
	if (nlimited == 0)
		return;
	if (OidIsValid(PersonaGetCatalog()->messages))
		plan = PersonaKeptPlan(&recent_plan,
							   "SELECT r.action_id, r.last_day, r.latest "
							   "FROM persona.recent_sends($1, $2, $3) AS r", 3, types, 0);
	else						/* 0.1.0's schema, before the outbox */
		plan = PersonaKeptPlan(&recent_decisions_plan,
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
	a[0] = Int64GetDatum(profile_id);
	a[1] = IntervalPGetDatum(&span);
	a[2] = PointerGetDatum(construct_array(limited, nlimited, INT4OID, 4, true, TYPALIGN_INT));

	/*
	 * Under the latest snapshot, not the transaction's: a decision another
	 * session committed while this one waited for the profile counts,
	 * whatever the isolation level.
	 */
	latest = RegisterSnapshot(GetLatestSnapshot());
	rc = SPI_execute_snapshot(plan, a, NULL, latest, InvalidSnapshot, true, false, 0);
	UnregisterSnapshot(latest);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading recent decisions and messages failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		bool		isnull;
		int32		action_id = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		int64		today = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		TimestampTz last = DatumGetTimestampTz(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull));

		CHECK_FOR_INTERRUPTS();

		for (int i = 0; i < set->n; i++)
		{
			ActionDef  *d = set->items[i].def;

			if (d == NULL || d->action_id != action_id)
				continue;
			if ((d->cap_per_day > 0 && today >= d->cap_per_day) ||
				(d->cooldown_us > 0 && last > req->now - d->cooldown_us))
				set->items[i].def = NULL;
		}
	}
	CompactCandidates(set);
}

/* Whether persona's table has the column: not under 0.1.0's schema. */
static bool
HasColumn(const char *table, const char *column)
{
	Oid			relid = get_relname_relid(table, PersonaGetCatalog()->schema);

	return OidIsValid(relid) && get_attnum(relid, column) != InvalidAttrNumber;
}

/*
 * Step 7: what feedback taught us, and the ranking.  Each action's success
 * probability is sampled from its per-person model over the person's
 * features (bandit.c) once the model has persona.bandit_min_feedback
 * observations, else from the Beta posterior of its average.  The features
 * are returned, to be recorded with the decisions: feedback on a decision
 * teaches the model what the decision saw.
 */
static void
ScoreCandidates(const DecideRequest *req, const DecideProfile *profile, CandidateSet *set,
				Jsonb **features_out)
{
	Oid			type = INT4ARRAYOID;
	Datum	   *ids;
	Datum		a;
	SPIPlanPtr	plan;
	bool		models = HasColumn("action_stats", "model");
	PersonaBanditFeatures features;

	*features_out = NULL;
	if (set->n == 0)
		return;
	ids = palloc(sizeof(Datum) * set->n);
	for (int i = 0; i < set->n; i++)
		ids[i] = Int32GetDatum(set->items[i].def->action_id);
	a = PointerGetDatum(construct_array(ids, set->n, INT4OID, 4, true, TYPALIGN_INT));
	if (models)
		plan = PersonaKeptPlan(&stats_model_plan,
							   "SELECT s.action_id, s.trials, s.successes, s.model FROM persona.action_stats AS s "
							   "WHERE s.action_id OPERATOR(pg_catalog.=) ANY ($1)", 1, &type, 0);
	else						/* 0.1.0's schema, before the per-person
								 * bandit */
		plan = PersonaKeptPlan(&stats_plan,
							   "SELECT s.action_id, s.trials, s.successes, NULL::jsonb FROM persona.action_stats AS s "
							   "WHERE s.action_id OPERATOR(pg_catalog.=) ANY ($1)", 1, &type, 0);
	if (SPI_execute_plan(plan, &a, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading action statistics failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		bool		isnull;
		int32		action_id = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));

		CHECK_FOR_INTERRUPTS();

		for (int i = 0; i < set->n; i++)
			if (set->items[i].def->action_id == action_id)
			{
				Candidate  *c = &set->items[i];
				Datum		m;

				c->trials = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
				c->successes = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull));
				m = SPI_getbinval(tup, SPI_tuptable->tupdesc, 4, &isnull);
				/* read in this step only: SPI's result holds it meanwhile */
				c->model = isnull ? NULL : DatumGetJsonbP(m);
			}
	}
	if (models)
	{
		PersonaBanditExtract(&features, profile->declared, profile->computed,
							 profile->event_count, profile->last_seen, req->now);
		*features_out = PersonaBanditFeaturesJsonb(&features);
	}
	for (int i = 0; i < set->n; i++)
	{
		Candidate  *c = &set->items[i];
		double		failures = (double) Max(c->trials - c->successes, 0);
		double		mean,
					sd;

		if (models && PersonaBanditPredict(c->def->action_id, c->model, &features, &mean, &sd, &c->model_n))
		{
			c->personal = true;
			c->predicted = PersonaBanditLogistic(mean);
			c->sample = PersonaBanditLogistic(mean + sd * Normal());
		}
		else
			c->sample = Beta(1.0 + c->successes, 1.0 + failures);
		c->score = c->sample * c->def->value;
	}
	qsort(set->items, set->n, sizeof(Candidate), CompareCandidates);
}

/*
 * Step 8: holdouts.  An experiment is exposed, and the person's arm
 * recorded (experiments.c), when the decision reaches it:
 *	- a global holdout (no action): whenever at least one candidate is
 *	  left, that is whenever the decision would return a row; its holdout
 *	  gets no row at all;
 *	- an action's holdout: when the walk below reaches that action, in rank
 *	  order, while filling the n rows, that is when the action would be
 *	  returned but for the experiment; its holdout does not get it and the
 *	  walk goes on to the next best.
 * The id hashed is the profile's user_id, else the id of the call.
 */
static void
ApplyHoldouts(const DecideRequest *req, const DecideProfile *profile, CandidateSet *set)
{
	PersonaExperimentSet *es;
	text	   *hid;
	int			taken = 0;

	if (set->n == 0)
		return;
	es = PersonaGetExperiments();
	if (es->nrunning == 0)
		return;
	hid = profile->user_id != NULL ? profile->user_id : DatumGetTextPP(req->id);
	if (es->nrunning_global > 0)
	{
		bool		held = false;

		for (int k = 0; k < es->n; k++)
		{
			const PersonaExperiment *e = &es->experiments[k];

			if (e->running && e->action == NULL &&
				PersonaExperimentHoldout(e, profile->profile_id, VARDATA_ANY(hid),
										 VARSIZE_ANY_EXHDR(hid)))
				held = true;
		}
		if (held)
		{
			set->n = 0;
			return;
		}
	}
	if (es->nrunning == es->nrunning_global)
		return;
	for (int i = 0; i < set->n && taken < req->n; i++)
	{
		Candidate  *c = &set->items[i];
		bool		held = false;

		for (int k = 0; k < es->n; k++)
		{
			const PersonaExperiment *e = &es->experiments[k];

			if (e->running && e->action != NULL && strcmp(e->action, c->def->name) == 0 &&
				PersonaExperimentHoldout(e, profile->profile_id, VARDATA_ANY(hid),
										 VARSIZE_ANY_EXHDR(hid)))
				held = true;
		}
		if (held)
			c->def = NULL;
		else
			taken++;
	}
	CompactCandidates(set);
}

/*
 * Step 9: the first n candidates rendered, recorded in persona.decisions
 * and returned.
 */
static void
RecordDecisions(const DecideRequest *req, const DecideProfile *profile,
				const CandidateSet *set, Jsonb *features, ReturnSetInfo *rsinfo)
{
	int			take = Min(req->n, set->n);
	Datum	   *rec[7];
	Oid			types[9] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	FLOAT8ARRAYOID, TEXTARRAYOID, JSONBOID, JSONBARRAYOID, JSONBOID};
	Datum		a[9];
	char		nulls[9] = "         ";
	SPIPlanPtr	plan;

	if (take == 0)
		return;
	for (int f = 0; f < 7; f++)
		rec[f] = palloc(sizeof(Datum) * take);
	for (int i = 0; i < take; i++)
	{
		const Candidate *c = &set->items[i];

		rec[0][i] = Int64GetDatum(profile->profile_id);
		rec[1][i] = Int32GetDatum(c->def->action_id);
		rec[2][i] = CStringGetTextDatum(c->def->name);
		rec[3][i] = CStringGetTextDatum(c->channel);
		rec[4][i] = Float8GetDatum(c->score);
		rec[5][i] = CStringGetTextDatum(Reason(c, set->items, set->n, i));
		rec[6][i] = JsonbPGetDatum(PersonaRender(c->def->content, req->context, profile->declared,
												 profile->computed));
	}
	if (features != NULL)
		plan = PersonaKeptPlan(&record_features_plan,
							   "INSERT INTO persona.decisions "
							   "  (profile_id, action_id, action, channel, score, reason, context, content, features) "
							   "SELECT u.profile_id, u.action_id, u.action, u.channel, u.score, u.reason, $7, u.content, $9 "
							   "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
							   "  pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), "
							   "  pg_catalog.unnest($8)) WITH ORDINALITY "
							   "  AS u(profile_id, action_id, action, channel, score, reason, content, n) "
							   "ORDER BY u.n RETURNING decision_id", 9, types, 0);
	else						/* 0.1.0's schema, before the per-person
								 * bandit */
		plan = PersonaKeptPlan(&record_plan,
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
	a[6] = JsonbPGetDatum(req->context);
	a[7] = PointerGetDatum(construct_array(rec[6], take, JSONBOID, -1, false, TYPALIGN_INT));
	a[8] = features != NULL ? JsonbPGetDatum(features) : (Datum) 0;
	if (SPI_execute_plan(plan, a, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != (uint64) take)
		elog(ERROR, "recording decisions failed");
	for (int i = 0; i < take; i++)
	{
		bool		isnull;
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
	DecideRequest req;
	DecideProfile profile;
	CandidateSet candidates;
	ActionCatalog *ac;
	Jsonb	   *features;

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
		PersonaCheckChannel(channel);
	InitMaterializedSRF(fcinfo, 0);

	req.id = CStringGetTextDatum(id);
	req.context = context;
	req.channel = channel;
	req.n = n;
	req.now = GetCurrentTransactionStartTimestamp();

	ac = GetActionCatalog();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	profile.profile_id = PersonaDecideProfile(req.id);
	LoadCandidates(ac, &req, &candidates);
	ReadDecideProfile(ac, &req, &candidates, &profile);
	CheckEligibility(ac, &profile, &candidates);
	ChooseChannels(&req, &profile, &candidates);
	ApplyConsent(&profile, &candidates);
	ApplyCaps(&req, profile.profile_id, &candidates);
	ScoreCandidates(&req, &profile, &candidates, &features);
	ApplyHoldouts(&req, &profile, &candidates);
	RecordDecisions(&req, &profile, &candidates, features, rsinfo);
	SPI_finish();
	return (Datum) 0;
}
