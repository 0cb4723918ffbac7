/*
 * bandit.c
 *	  The per-person bandit: each action's success probability as a
 *	  function of the person, learned online from feedback.
 *
 * A person is described by a few numeric features (PersonaBanditExtract):
 *	@bias			1
 *	@events			ln(1 + event_count)
 *	@days_idle		ln(1 + days since last_seen)
 *	<trait>			every numeric computed or declared trait, as
 *					sign(v) ln(1 + |v|); every true boolean trait, as 1
 *	<trait>=<value>	1, for a string trait named in persona.bandit_categories
 * (a declared trait whose name starts with @ is left out: the built-in
 * features own those names).
 *
 * Each action has a Bayesian logistic model over them, P(success | x) =
 * 1 / (1 + exp(-w.x)), with a diagonal Gaussian posterior over w (a mean
 * and a precision per feature, prior N(0, 1)): the Laplace approximation
 * of Chapelle and Li, "An Empirical Evaluation of Thompson Sampling" (NIPS
 * 2011), Algorithm 3, updated after every observation rather than in
 * batches (persona.bandit_learn).  The model is a jsonb in the action's
 * row of persona.action_stats, {"n": observations, "w": {feature: [mean,
 * precision]}}, updated under the row lock feedback already takes.
 *
 * persona_decide (ScoreCandidates, decide.c) draws w.x from its posterior,
 * a normal of mean sum(m_i x_i) and variance sum(x_i^2 / q_i), for the
 * person's features (PersonaBanditPredict): one Thompson sample per
 * action, with no query beyond the statistics it already reads.  Until an
 * action's model has persona.bandit_min_feedback observations, the
 * decision uses the action's average instead (0.1.0's Beta sample).
 */
#include "postgres.h"

#include <limits.h>
#include <math.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/varlena.h"

#include "bandit.h"

/* Prior precision of every weight: w_i ~ N(0, 1) before any feedback. */
#define PRIOR_PRECISION 1.0
/* A model learns at most this many features; later new ones are ignored. */
#define MAX_MODEL_FEATURES 256
/* Longest string value that becomes a category feature, in bytes. */
#define MAX_CATEGORY_BYTES 64
/* Longest feature name, in bytes. */
#define MAX_FEATURE_NAME_BYTES 200

bool		persona_bandit = true;
int			persona_bandit_min_feedback = 100;
static char *persona_bandit_categories = NULL;

static bool
CheckCategories(char **newval, void **extra, GucSource source)
{
	char	   *copy = pstrdup(*newval);
	List	   *names;
	bool		ok = SplitIdentifierString(copy, ',', &names);

	if (!ok)
		GUC_check_errdetail("List syntax is invalid.");
	list_free(names);
	pfree(copy);
	return ok;
}

void
PersonaBanditInit(void)
{
	DefineCustomBoolVariable("persona.bandit",
							 "Sets whether persona_decide ranks by each person's own predicted success.",
							 "Off: every action is ranked by its average success, as in 0.1.0; "
							 "the models go on learning either way.",
							 &persona_bandit,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("persona.bandit_min_feedback",
							"Sets the feedback an action's per-person model needs before it ranks the action.",
							"Until then the action's average success ranks it.",
							&persona_bandit_min_feedback,
							100, 1, INT_MAX,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);
	DefineCustomStringVariable("persona.bandit_categories",
							   "Sets the string traits whose values are features of the per-person bandit.",
							   "A comma-separated list of trait names, such as 'plan,country'; "
							   "each value becomes a feature of its own.",
							   &persona_bandit_categories,
							   "",
							   PGC_SUSET,
							   GUC_LIST_INPUT,
							   CheckCategories, NULL, NULL);
	DefineCustomIntVariable("persona.decide_seed",
							"Sets the seed of persona_decide's random samples (0: a random seed).",
							"Setting it restarts the session's sequence, for reproducible tests.",
							&persona_decide_seed,
							0, 0, INT_MAX,
							PGC_USERSET,
							0,
							NULL, PersonaDecideSeedAssign, NULL);
}

double
PersonaBanditLogistic(double s)
{
	return s >= 0 ? 1.0 / (1.0 + exp(-s)) : exp(s) / (1.0 + exp(s));
}

/* ---------------------------------------------------------------------
 * Features
 * --------------------------------------------------------------------- */

static void
AddFeature(PersonaBanditFeatures *f, char *name, double x)
{
	if (f->n >= PERSONA_BANDIT_MAX_PERSON_FEATURES || x == 0 || !isfinite(x))
		return;
	f->names[f->n] = name;
	f->x[f->n] = x;
	f->n++;
}

static double
SignedLog(double v)
{
	return v >= 0 ? log1p(v) : -log1p(-v);
}

static bool
IsCategory(List *categories, const char *key, int len)
{
	ListCell   *lc;

	foreach(lc, categories)
	{
		const char *c = lfirst(lc);

		if ((int) strlen(c) == len && memcmp(c, key, len) == 0)
			return true;
	}
	return false;
}

/* The features of one object of traits; skip: an object whose keys are taken. */
static void
AddTraits(PersonaBanditFeatures *f, Jsonb *traits, Jsonb *skip, List *categories)
{
	JsonbIterator *it;
	JsonbValue	k,
				v;
	JsonbIteratorToken tok;

	if (traits == NULL || !JB_ROOT_IS_OBJECT(traits))
		return;
	it = JsonbIteratorInit(&traits->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		char	   *name;
		int			len;

		if (tok != WJB_KEY)
			continue;
		tok = JsonbIteratorNext(&it, &v, true);
		len = k.val.string.len;
		if (len > MAX_FEATURE_NAME_BYTES || (len > 0 && k.val.string.val[0] == '@'))
			continue;			/* too long, or a built-in feature's name */
		if (skip != NULL && getKeyJsonValueFromContainer(&skip->root, k.val.string.val, len, NULL))
			continue;
		name = pnstrdup(k.val.string.val, len);
		if (v.type == jbvNumeric)
			AddFeature(f, name, SignedLog(DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
																			 NumericGetDatum(v.val.numeric)))));
		else if (v.type == jbvBool && v.val.boolean)
			AddFeature(f, name, 1.0);
		else if (v.type == jbvString && v.val.string.len <= MAX_CATEGORY_BYTES &&
				 IsCategory(categories, k.val.string.val, len))
			AddFeature(f, psprintf("%s=%.*s", name, v.val.string.len, v.val.string.val), 1.0);
	}
}

/*
 * The person's features: the built-in ones, then the computed traits, then
 * the declared traits that no computed trait shadows (as {{placeholders}}
 * resolve), up to PERSONA_BANDIT_MAX_PERSON_FEATURES.  A zero is no feature.
 */
void
PersonaBanditExtract(PersonaBanditFeatures *f, Jsonb *declared, Jsonb *computed,
					 int64 event_count, TimestampTz last_seen, TimestampTz now)
{
	List	   *categories = NIL;

	f->n = 0;
	AddFeature(f, "@bias", 1.0);
	AddFeature(f, "@events", log1p((double) Max(event_count, 0)));
	if (!TIMESTAMP_NOT_FINITE(last_seen))
		AddFeature(f, "@days_idle", log1p((double) Max(now - last_seen, 0) / USECS_PER_DAY));
	if (persona_bandit_categories[0] != '\0')
		(void) SplitIdentifierString(pstrdup(persona_bandit_categories), ',', &categories);
	AddTraits(f, computed, NULL, categories);
	AddTraits(f, declared, computed, categories);
}

static JsonbValue *
NumericValue(JsonbValue *v, double d)
{
	v->type = jbvNumeric;
	v->val.numeric = DatumGetNumeric(DirectFunctionCall1(float8_numeric, Float8GetDatum(d)));
	return v;
}

static JsonbValue *
StringValue(JsonbValue *v, const char *s, int len)
{
	v->type = jbvString;
	v->val.string.val = (char *) s;
	v->val.string.len = len;
	return v;
}

/* The features as recorded with a decision: {name: x}. */
Jsonb *
PersonaBanditFeaturesJsonb(const PersonaBanditFeatures *f)
{
	JsonbParseState *state = NULL;
	JsonbValue	v;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < f->n; i++)
	{
		pushJsonbValue(&state, WJB_KEY, StringValue(&v, f->names[i], strlen(f->names[i])));
		pushJsonbValue(&state, WJB_VALUE, NumericValue(&v, f->x[i]));
	}
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/* ---------------------------------------------------------------------
 * The model
 * --------------------------------------------------------------------- */

static void
BadModel(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid bandit model"),
			 errdetail("A model is {\"n\": observations, \"w\": {feature: [mean, precision]}}, "
					   "with finite means and positive finite precisions.")));
}

static double
NumberOf(JsonbValue *v)
{
	double		d;

	if (v == NULL || v->type != jbvNumeric)
		BadModel();
	d = DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow, NumericGetDatum(v->val.numeric)));
	if (!isfinite(d))
		BadModel();
	return d;
}

/* A weight's [mean, precision]. */
static void
ReadWeight(JsonbValue *v, double *m, double *q)
{
	if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data) ||
		JsonContainerSize(v->val.binary.data) != 2)
		BadModel();
	*m = NumberOf(getIthJsonbValueFromContainer(v->val.binary.data, 0));
	*q = NumberOf(getIthJsonbValueFromContainer(v->val.binary.data, 1));
	if (!(*q > 0))
		BadModel();
}

static int64
ModelCount(Jsonb *model, JsonbContainer **w)
{
	JsonbValue	buf;
	JsonbValue *v;
	double		n;

	if (!JB_ROOT_IS_OBJECT(model))
		BadModel();
	n = NumberOf(getKeyJsonValueFromContainer(&model->root, "n", 1, &buf));
	v = getKeyJsonValueFromContainer(&model->root, "w", 1, &buf);
	if (n < 0 || v == NULL || v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		BadModel();
	*w = v->val.binary.data;
	return (int64) n;
}

/* One feature of the model: its name and the posterior of its weight. */
typedef struct Weight
{
	char	   *name;
	int			len;
	double		m;
	double		q;
} Weight;

/*
 * A model as persona_decide reads it, parsed once: each backend keeps the
 * last parsed model of each action, with the jsonb it came from, and parses
 * again only when the stored model differs (reading numbers out of jsonb
 * costs more than the prediction).
 */
typedef struct ParsedModel
{
	int32		action_id;
	MemoryContext cxt;			/* holds all below */
	Size		size;
	char	   *bytes;			/* the jsonb, as stored */
	int64		n;
	int			nw;
	Weight	   *ws;				/* in jsonb key order */
} ParsedModel;

static MemoryContext model_cache_cxt = NULL;
static ParsedModel *model_cache = NULL;
static int	model_cache_n = 0;
static int	model_cache_size = 0;

static int	FindWeight(const Weight *ws, int n, const char *name, int len);

/* The weights of a model, in key order, allocated in the current context. */
static int
ReadWeights(JsonbContainer *w, Weight *ws, int max)
{
	JsonbIterator *it = JsonbIteratorInit(w);
	JsonbValue	k,
				val;
	JsonbIteratorToken tok;
	int			nw = 0;

	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		(void) JsonbIteratorNext(&it, &val, true);
		if (nw >= max)
			BadModel();
		ws[nw].name = pnstrdup(k.val.string.val, k.val.string.len);
		ws[nw].len = k.val.string.len;
		ReadWeight(&val, &ws[nw].m, &ws[nw].q);
		nw++;
	}
	return nw;
}

static ParsedModel *
GetParsedModel(int32 action_id, Jsonb *model)
{
	ParsedModel *pm = NULL;
	Size		size = VARSIZE(model);
	JsonbContainer *w;
	MemoryContext old;

	for (int i = 0; i < model_cache_n; i++)
		if (model_cache[i].action_id == action_id)
			pm = &model_cache[i];
	if (pm != NULL && pm->size == size && memcmp(pm->bytes, model, size) == 0)
		return pm;
	if (model_cache_cxt == NULL)
		model_cache_cxt = AllocSetContextCreate(TopMemoryContext, "persona bandit models",
												ALLOCSET_SMALL_SIZES);
	if (pm == NULL)
	{
		if (model_cache_n == model_cache_size)
		{
			model_cache_size = Max(16, 2 * model_cache_size);
			model_cache = model_cache == NULL
				? MemoryContextAlloc(model_cache_cxt, sizeof(ParsedModel) * model_cache_size)
				: repalloc(model_cache, sizeof(ParsedModel) * model_cache_size);
		}
		pm = &model_cache[model_cache_n++];
		pm->action_id = action_id;
		pm->cxt = NULL;
	}
	if (pm->cxt != NULL)
		MemoryContextDelete(pm->cxt);
	pm->size = 0;				/* invalid until parsed: an error leaves it so */
	pm->cxt = AllocSetContextCreate(model_cache_cxt, "persona bandit model", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(pm->cxt);
	pm->n = ModelCount(model, &w);
	pm->ws = palloc(sizeof(Weight) * Max(JsonContainerSize(w), 1));
	pm->nw = ReadWeights(w, pm->ws, MAX_MODEL_FEATURES);
	pm->bytes = palloc(size);
	memcpy(pm->bytes, model, size);
	MemoryContextSwitchTo(old);
	pm->size = size;
	return pm;
}

/*
 * The posterior of w.x for these features, under action_id's model: its
 * mean and standard deviation.  False, when the model may not rank yet: it
 * is NULL, has fewer than persona.bandit_min_feedback observations (its
 * count, in *n), or persona.bandit is off.
 */
bool
PersonaBanditPredict(int32 action_id, Jsonb *model, const PersonaBanditFeatures *f,
					 double *mean, double *sd, int64 *n)
{
	ParsedModel *pm;
	double		s = 0,
				var = 0;

	*n = 0;
	if (model == NULL)
		return false;
	pm = GetParsedModel(action_id, model);
	*n = pm->n;
	if (!persona_bandit || *n < persona_bandit_min_feedback)
		return false;
	for (int i = 0; i < f->n; i++)
	{
		int			at = FindWeight(pm->ws, pm->nw, f->names[i], strlen(f->names[i]));
		double		m = at >= 0 ? pm->ws[at].m : 0;
		double		q = at >= 0 ? pm->ws[at].q : PRIOR_PRECISION;

		s += m * f->x[i];
		var += f->x[i] * f->x[i] / q;
	}
	*mean = s;
	*sd = sqrt(var);
	return true;
}

/* The order of jsonb object keys: by length, then bytes. */
static int
CompareKeys(const char *a, int alen, const char *b, int blen)
{
	if (alen != blen)
		return alen < blen ? -1 : 1;
	return memcmp(a, b, alen);
}

static int
FindWeight(const Weight *ws, int n, const char *name, int len)
{
	int			lo = 0,
				hi = n - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;
		int			c = CompareKeys(ws[mid].name, ws[mid].len, name, len);

		if (c == 0)
			return mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

/*
 * The model after one more observation of features x.  change is
 * 'success' or 'failure' for a decision's first outcome, and 'flip' for a
 * success that follows a first outcome that was not one.
 *
 * success/failure (label y): the mode of the posterior times the
 * likelihood, N(m, 1/q) * sigma(w.x)^y (1 - sigma(w.x))^(1-y), lies on
 * w = m - (sigma(s) - y) x / q, where s = w.x solves
 * s = m.x - (sigma(s) - y) sum(x_i^2 / q_i): a scalar equation, solved by
 * Newton's method (its derivative is positive).  The precisions then grow
 * by the curvature there, q_i += x_i^2 sigma(s) (1 - sigma(s)).
 * flip: the label of an observation becomes 1 instead of 0, which adds the
 * linear term w.x to the log posterior: w = m + x / q, same curvature.
 */
PG_FUNCTION_INFO_V1(persona_bandit_learn);
Datum
persona_bandit_learn(PG_FUNCTION_ARGS)
{
	Jsonb	   *model = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);
	Jsonb	   *features;
	char	   *change;
	int64		n = 0;
	Weight	   *ws;
	int			nw = 0,
				nold;
	int			idx[PERSONA_BANDIT_MAX_PERSON_FEATURES];
	double		xs[PERSONA_BANDIT_MAX_PERSON_FEATURES];
	int			nx = 0;
	double		s0 = 0,
				v = 0;
	JsonbIterator *it;
	JsonbValue	k,
				val;
	JsonbIteratorToken tok;
	JsonbParseState *state = NULL;

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
	{
		if (model == NULL)
			PG_RETURN_NULL();
		PG_RETURN_JSONB_P(model);
	}
	features = PG_GETARG_JSONB_P(1);
	change = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (strcmp(change, "success") != 0 && strcmp(change, "failure") != 0 &&
		strcmp(change, "flip") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown model change \"%s\"", change),
				 errhint("Use success, failure or flip.")));
	if (!JB_ROOT_IS_OBJECT(features) ||
		JB_ROOT_COUNT(features) > PERSONA_BANDIT_MAX_PERSON_FEATURES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("features must be an object of at most %d numbers",
						PERSONA_BANDIT_MAX_PERSON_FEATURES)));

	/* The model's weights, in key order. */
	ws = palloc(sizeof(Weight) * (MAX_MODEL_FEATURES + PERSONA_BANDIT_MAX_PERSON_FEATURES));
	if (model != NULL)
	{
		JsonbContainer *w;

		n = ModelCount(model, &w);
		nw = ReadWeights(w, ws, MAX_MODEL_FEATURES);
	}
	nold = nw;

	/* The observation's features, new ones added while there is room. */
	it = JsonbIteratorInit(&features->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		int			at;

		if (tok != WJB_KEY)
			continue;
		(void) JsonbIteratorNext(&it, &val, true);
		if (val.type != jbvNumeric)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("feature \"%.*s\" is not a number", k.val.string.len, k.val.string.val)));
		xs[nx] = DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
													NumericGetDatum(val.val.numeric)));
		if (!isfinite(xs[nx]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("feature \"%.*s\" is not finite", k.val.string.len, k.val.string.val)));
		at = FindWeight(ws, nold, k.val.string.val, k.val.string.len);
		if (at < 0 && nw < MAX_MODEL_FEATURES)
		{
			at = nw++;
			ws[at].name = k.val.string.val;
			ws[at].len = k.val.string.len;
			ws[at].m = 0;
			ws[at].q = PRIOR_PRECISION;
		}
		if (at < 0)
			continue;			/* the model is full: ignored */
		idx[nx] = at;
		s0 += ws[at].m * xs[nx];
		v += xs[nx] * xs[nx] / ws[at].q;
		nx++;
	}

	if (strcmp(change, "flip") == 0)
	{
		for (int i = 0; i < nx; i++)
			ws[idx[i]].m += xs[i] / ws[idx[i]].q;
	}
	else
	{
		double		y = strcmp(change, "success") == 0 ? 1.0 : 0.0;
		double		s = s0;
		double		p;

		for (int iter = 0; iter < 50; iter++)
		{
			double		ps = PersonaBanditLogistic(s);
			double		g = s - s0 + (ps - y) * v;
			double		step = g / (1.0 + v * ps * (1.0 - ps));

			s -= step;
			if (fabs(step) < 1e-10)
				break;
		}
		p = PersonaBanditLogistic(s);
		for (int i = 0; i < nx; i++)
		{
			Weight	   *wt = &ws[idx[i]];

			wt->m -= (p - y) * xs[i] / wt->q;
			wt->q += xs[i] * xs[i] * p * (1.0 - p);
		}
		n++;
	}

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	pushJsonbValue(&state, WJB_KEY, StringValue(&val, "n", 1));
	pushJsonbValue(&state, WJB_VALUE, NumericValue(&val, (double) n));
	pushJsonbValue(&state, WJB_KEY, StringValue(&val, "w", 1));
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < nw; i++)
	{
		pushJsonbValue(&state, WJB_KEY, StringValue(&val, ws[i].name, ws[i].len));
		pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
		pushJsonbValue(&state, WJB_ELEM, NumericValue(&val, ws[i].m));
		pushJsonbValue(&state, WJB_ELEM, NumericValue(&val, ws[i].q));
		pushJsonbValue(&state, WJB_END_ARRAY, NULL);
	}
	pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL)));
}
