/*
 * models.c
 *	  Predictions: the point-in-time feature aggregate, the fit of an
 *	  L2-regularized logistic regression with its held-out evaluation, and
 *	  the live score that persona.traits shows as a column.
 *
 * Features.  A feature is a computed trait or a numeric profile column
 * (event_count, days since last_seen, days since first_seen).  For training,
 * persona.model_row folds each profile's events up to the cutoff into the
 * same trait states that ingest keeps (traits.c, PersonaTraitAdd) and reads
 * their values as of the cutoff; later events only set the label (the
 * target event in (cutoff, now]).  For scoring, persona.model_score reads
 * the profile's stored states as of now: the same states, the same value
 * functions, so a model sees at scoring time what it saw in training.
 *
 * The fit (persona.model_fit) reads one row per profile from one GROUP BY
 * pass over the events, holds the feature matrix in memory, standardizes
 * it with the training part's means and standard deviations, and runs
 * Newton's method on the L2-penalized log loss (the intercept is not
 * penalized).  A fifth of the profiles, chosen by a hash of the profile id,
 * is held out and scored: AUC and log loss.
 *
 * A missing feature value (min, max, avg or a profile with no events of
 * the trait's type) is the training mean: it contributes nothing to the
 * score.
 */
#include "postgres.h"

#include <math.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "models.h"
#include "persona.h"
#include "traits.h"

/* The ridge penalty: sum of log losses + MODEL_L2 / 2 * |w|^2. */
#define MODEL_L2			1.0
#define MODEL_MAX_NEWTON	100
#define MODEL_TOLERANCE		1e-10
/* One profile in MODEL_HOLDOUT_MOD is held out of training. */
#define MODEL_HOLDOUT_MOD	5

/* ---------------------------------------------------------------------
 * Feature values
 * --------------------------------------------------------------------- */

/* The elements of an array without nulls (ARR_DATA_PTR without its test). */
static inline const void *
ArrayData(ArrayType *a)
{
	return (const char *) a + ARR_OVERHEAD_NONULLS(ARR_NDIM(a));
}

/* The int4 elements of a feature-id array argument, checked. */
static const int32 *
FeatureIds(ArrayType *a, int *n)
{
	if (ARR_NDIM(a) > 1 || ARR_HASNULL(a) || ARR_ELEMTYPE(a) != INT4OID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("feature ids must be a one-dimensional int[] without nulls")));
	*n = ARR_NDIM(a) == 0 ? 0 : ARR_DIMS(a)[0];
	if (*n < 1 || *n > MODEL_MAX_FEATURES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a model has 1 to %d features", MODEL_MAX_FEATURES)));
	return (const int32 *) ArrayData(a);
}

/* The definition of a trait feature, or NULL when it is not defined. */
static const TraitDef *
FeatureTrait(const TraitCatalog *tc, int32 trait_id)
{
	for (int i = 0; i < tc->ndefs; i++)
		if (tc->defs[i].trait_id == trait_id)
			return &tc->defs[i];
	return NULL;
}

/*
 * A trait's value as a float8 at ``now``; NaN when it has none (what the
 * trait reads over no events, for min, max and avg).  ``s`` NULL: no state.
 */
static double
TraitFeature(const TraitState *s, TraitKind kind, TimestampTz now)
{
	bool		isnull;
	Datum		v;
	double		x;

	if (s == NULL || s->kind != kind)
		return (kind == TRAIT_COUNT || kind == TRAIT_COUNT_DISTINCT || kind == TRAIT_SUM)
			? 0.0 : NAN;
	v = PersonaTraitValue(s, now, &isnull);
	if (isnull)
		return NAN;
	if (kind == TRAIT_COUNT || kind == TRAIT_COUNT_DISTINCT)
		return (double) DatumGetInt64(v);
	if (kind == TRAIT_FIRST || kind == TRAIT_LAST)
		return NAN;				/* refused as features; never reached */
	x = DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow, v));
	return isfinite(x) ? x : NAN;
}

/* Days from ``at`` to ``now``; NaN without ``at``. */
static inline double
DaysSince(TimestampTz at, bool has, TimestampTz now)
{
	return has ? (double) (now - at) / (double) USECS_PER_DAY : NAN;
}

/* ---------------------------------------------------------------------
 * SQL: the point-in-time aggregate
 *
 * persona.model_row(feature_ids, target_event, cutoff,
 *                   occurred_at, event_type, event_id, properties) -> float8[]
 * over one profile's events: {label, feature 1, ..., feature k} as of the
 * cutoff, NULL for a profile with no event up to the cutoff.
 * --------------------------------------------------------------------- */

/* What every row of one aggregate call shares, parsed once (fn_extra). */
typedef struct ModelSpec
{
	int			nfeatures;
	int32	   *ids;
	const TraitDef **defs;		/* per feature: the trait, or NULL */
	char	   *target;
	Size		target_len;
	TimestampTz cutoff;
} ModelSpec;

typedef struct ModelRowState
{
	const ModelSpec *spec;		/* for the final function */
	ProfileTraits *traits;		/* created at the first matching event */
	int64		events;			/* up to the cutoff */
	TimestampTz first_seen;
	TimestampTz last_seen;
	bool		label;
} ModelRowState;

static ModelSpec *
GetModelSpec(FunctionCallInfo fcinfo)
{
	ModelSpec  *spec = (ModelSpec *) fcinfo->flinfo->fn_extra;
	MemoryContext old;
	const TraitCatalog *tc;
	const int32 *ids;
	text	   *target;

	if (spec != NULL)
		return spec;
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("feature ids, target event and cutoff must not be null")));
	tc = PersonaTraitCatalog();
	old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	spec = palloc0(sizeof(ModelSpec));
	ids = FeatureIds(PG_GETARG_ARRAYTYPE_P(1), &spec->nfeatures);
	spec->ids = palloc(sizeof(int32) * spec->nfeatures);
	memcpy(spec->ids, ids, sizeof(int32) * spec->nfeatures);
	spec->defs = palloc0(sizeof(TraitDef *) * spec->nfeatures);
	for (int f = 0; f < spec->nfeatures; f++)
	{
		if (spec->ids[f] > 0)
		{
			const TraitDef *d = FeatureTrait(tc, spec->ids[f]);
			TraitDef   *copy;

			if (d == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("trait %d is not defined", spec->ids[f])));
			copy = palloc(sizeof(TraitDef));
			*copy = *d;
			copy->name = pstrdup(d->name);
			copy->event_type = pstrdup(d->event_type);
			copy->property = d->property ? pstrdup(d->property) : NULL;
			spec->defs[f] = copy;
		}
		else if (spec->ids[f] < MODEL_DAYS_SINCE_FIRST_SEEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown feature id %d", spec->ids[f])));
	}
	target = PG_GETARG_TEXT_PP(2);
	spec->target_len = VARSIZE_ANY_EXHDR(target);
	spec->target = pnstrdup(VARDATA_ANY(target), spec->target_len);
	spec->cutoff = PG_GETARG_TIMESTAMPTZ(3);
	MemoryContextSwitchTo(old);
	fcinfo->flinfo->fn_extra = spec;
	return spec;
}

static inline bool
TextIs(text *t, const char *s, Size len)
{
	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), s, len) == 0;
}

/* Transition: one event of the profile. */
PG_FUNCTION_INFO_V1(persona_model_row_add);
Datum
persona_model_row_add(PG_FUNCTION_ARGS)
{
	MemoryContext agg;
	MemoryContext old;
	ModelSpec  *spec;
	ModelRowState *st;
	TimestampTz at;
	text	   *type;
	Jsonb	   *props = NULL;

	if (!AggCheckCallContext(fcinfo, &agg))
		elog(ERROR, "persona_model_row_add called in non-aggregate context");
	spec = GetModelSpec(fcinfo);
	if (PG_ARGISNULL(0))
	{
		st = (ModelRowState *) MemoryContextAllocZero(agg, sizeof(ModelRowState));
		st->spec = spec;
	}
	else
		st = (ModelRowState *) PG_GETARG_POINTER(0);
	if (PG_ARGISNULL(4) || PG_ARGISNULL(5))
		PG_RETURN_POINTER(st);
	at = PG_GETARG_TIMESTAMPTZ(4);
	type = PG_GETARG_TEXT_PP(5);

	if (at > spec->cutoff)
	{
		/* After the cutoff: only the label. */
		if (!st->label && TextIs(type, spec->target, spec->target_len))
			st->label = true;
		PG_RETURN_POINTER(st);
	}
	if (st->events == 0 || at < st->first_seen)
		st->first_seen = at;
	if (st->events == 0 || at > st->last_seen)
		st->last_seen = at;
	st->events++;
	for (int f = 0; f < spec->nfeatures; f++)
	{
		const TraitDef *d = spec->defs[f];

		if (d == NULL || !TextIs(type, d->event_type, strlen(d->event_type)))
			continue;
		if (props == NULL)
			props = PG_ARGISNULL(7) ? NULL : PG_GETARG_JSONB_P(7);
		old = MemoryContextSwitchTo(agg);
		if (st->traits == NULL)
			st->traits = PersonaProfileTraitsCreate();
		PersonaTraitAdd(PersonaProfileTraitsGet(st->traits, d), d, at,
						PG_ARGISNULL(6) ? 0 : PG_GETARG_INT64(6), props, spec->cutoff);
		MemoryContextSwitchTo(old);
	}
	PG_RETURN_POINTER(st);
}

/* Final: {label, features...} as of the cutoff; NULL without events. */
PG_FUNCTION_INFO_V1(persona_model_row_final);
Datum
persona_model_row_final(PG_FUNCTION_ARGS)
{
	const ModelSpec *spec;
	ModelRowState *st;
	Datum	   *values;
	bool	   *nulls;
	int			dims[1];
	int			lbs[1] = {1};

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	st = (ModelRowState *) PG_GETARG_POINTER(0);
	spec = st->spec;
	if (st->events == 0)
		PG_RETURN_NULL();
	values = palloc(sizeof(Datum) * (spec->nfeatures + 1));
	nulls = palloc0(sizeof(bool) * (spec->nfeatures + 1));
	values[0] = Float8GetDatum(st->label ? 1.0 : 0.0);
	for (int f = 0; f < spec->nfeatures; f++)
	{
		double		x;

		switch (spec->ids[f])
		{
			case MODEL_EVENT_COUNT:
				x = (double) st->events;
				break;
			case MODEL_DAYS_SINCE_LAST_SEEN:
				x = DaysSince(st->last_seen, true, spec->cutoff);
				break;
			case MODEL_DAYS_SINCE_FIRST_SEEN:
				x = DaysSince(st->first_seen, true, spec->cutoff);
				break;
			default:
				x = TraitFeature(st->traits == NULL ? NULL
								 : PersonaProfileTraitsFind(st->traits, spec->ids[f]),
								 spec->defs[f]->kind, spec->cutoff);
				break;
		}
		if (isnan(x))
			nulls[f + 1] = true;
		else
			values[f + 1] = Float8GetDatum(x);
	}
	dims[0] = spec->nfeatures + 1;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(values, nulls, 1, dims, lbs, FLOAT8OID,
											 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* ---------------------------------------------------------------------
 * The fit
 * --------------------------------------------------------------------- */

/* Whether a profile is held out of training (deterministic, by its id). */
static inline bool
HeldOut(int64 profile_id)
{
	uint64		h = (uint64) profile_id * UINT64CONST(0x9E3779B97F4A7C15);

	return (h >> 32) % MODEL_HOLDOUT_MOD == 0;
}

/* Whether a profile is held out of training, for exports and tests. */
PG_FUNCTION_INFO_V1(persona_model_held_out);
Datum
persona_model_held_out(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(HeldOut(PG_GETARG_INT64(0)));
}

/* The training rows, in memory. */
typedef struct ModelData
{
	int			k;				/* features */
	int64		n;
	int64		max;
	double	   *x;				/* n * k, row-major; NaN: missing */
	uint8	   *y;
	bool	   *held;
} ModelData;

static void
AddRow(ModelData *d, const double *x, bool y, bool held)
{
	if (d->n == d->max)
	{
		d->max = Max(1024, d->max * 2);
		d->x = d->x == NULL
			? MemoryContextAllocHuge(CurrentMemoryContext, sizeof(double) * d->k * d->max)
			: repalloc_huge(d->x, sizeof(double) * d->k * d->max);
		d->y = d->y == NULL ? MemoryContextAllocHuge(CurrentMemoryContext, d->max)
			: repalloc_huge(d->y, d->max);
		d->held = d->held == NULL
			? MemoryContextAllocHuge(CurrentMemoryContext, sizeof(bool) * d->max)
			: repalloc_huge(d->held, sizeof(bool) * d->max);
	}
	memcpy(&d->x[d->n * d->k], x, sizeof(double) * d->k);
	d->y[d->n] = y;
	d->held[d->n] = held;
	d->n++;
}

/*
 * Reads one row per profile from one GROUP BY pass over the events, into
 * memory of ``outer`` (the caller's, which outlives SPI's).
 */
static void
ReadTrainingRows(ModelData *d, MemoryContext outer, Datum features, Datum target, Datum cutoff,
				 Datum upto)
{
	Oid			types[4] = {INT4ARRAYOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		args[4] = {features, target, cutoff, upto};
	Portal		portal;
	double	   *row = palloc(sizeof(double) * d->k);

	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT e.profile_id, persona.model_row($1, $2, $3, e.occurred_at,"
									   "       e.event_type, e.event_id, e.properties)"
									   "  FROM persona.events AS e"
									   " WHERE e.occurred_at OPERATOR(pg_catalog.<=) $4"
									   " GROUP BY e.profile_id",
									   4, types, args, NULL, true, CURSOR_OPT_NO_SCROLL);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			bool		isnull;
			int64		pid = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
			Datum		v = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull);
			Datum	   *elems;
			bool	   *enulls;
			int			nelems;
			MemoryContext old;

			CHECK_FOR_INTERRUPTS();
			if (isnull)
				continue;
			deconstruct_array(DatumGetArrayTypeP(v), FLOAT8OID, 8, FLOAT8PASSBYVAL,
							  TYPALIGN_DOUBLE, &elems, &enulls, &nelems);
			if (nelems != d->k + 1)
				elog(ERROR, "persona.model_row returned %d values, not %d", nelems, d->k + 1);
			for (int f = 0; f < d->k; f++)
				row[f] = enulls[f + 1] ? NAN : DatumGetFloat8(elems[f + 1]);
			old = MemoryContextSwitchTo(outer);
			AddRow(d, row, DatumGetFloat8(elems[0]) > 0.5, HeldOut(pid));
			MemoryContextSwitchTo(old);
			pfree(elems);
			pfree(enulls);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
}

/* Numerically stable log(1 + exp(m)). */
static inline double
Log1pExp(double m)
{
	return m > 0 ? m + log1p(exp(-m)) : log1p(exp(m));
}

static inline double
Sigmoid(double m)
{
	return m >= 0 ? 1.0 / (1.0 + exp(-m)) : exp(m) / (1.0 + exp(m));
}

/* beta: intercept, then k weights; z: the standardized row. */
static inline double
Margin(const double *beta, const double *z, int k)
{
	double		m = beta[0];

	for (int j = 0; j < k; j++)
		m += beta[j + 1] * z[j];
	return m;
}

/* The penalized loss of the training rows. */
static double
Loss(const ModelData *d, const double *beta)
{
	double		loss = 0;

	for (int64 i = 0; i < d->n; i++)
	{
		double		m;

		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (d->held[i])
			continue;
		m = Margin(beta, &d->x[i * d->k], d->k);
		loss += Log1pExp(m) - (d->y[i] ? m : 0);
	}
	for (int j = 1; j <= d->k; j++)
		loss += 0.5 * MODEL_L2 * beta[j] * beta[j];
	return loss;
}

/* Solves A x = b in place (b becomes x) for a symmetric positive definite A. */
static void
CholeskySolve(double *a, double *b, int p)
{
	for (int j = 0; j < p; j++)
	{
		double		s = a[j * p + j];

		for (int k = 0; k < j; k++)
			s -= a[j * p + k] * a[j * p + k];
		if (s <= 0)
			s = 1e-12;			/* numerically singular: a tiny ridge */
		a[j * p + j] = sqrt(s);
		for (int i = j + 1; i < p; i++)
		{
			double		t = a[i * p + j];

			for (int k = 0; k < j; k++)
				t -= a[i * p + k] * a[j * p + k];
			a[i * p + j] = t / a[j * p + j];
		}
	}
	for (int i = 0; i < p; i++)
	{
		for (int k = 0; k < i; k++)
			b[i] -= a[i * p + k] * b[k];
		b[i] /= a[i * p + i];
	}
	for (int i = p - 1; i >= 0; i--)
	{
		for (int k = i + 1; k < p; k++)
			b[i] -= a[k * p + i] * b[k];
		b[i] /= a[i * p + i];
	}
}

/* Newton's method with step halving; beta starts at the base rate. */
static void
Fit(const ModelData *d, double *beta, double base_rate)
{
	int			p = d->k + 1;
	double	   *grad = palloc(sizeof(double) * p);
	double	   *hess = palloc(sizeof(double) * p * p);
	double	   *trial = palloc(sizeof(double) * p);
	double		loss;

	memset(beta, 0, sizeof(double) * p);
	beta[0] = log(base_rate / (1 - base_rate));
	loss = Loss(d, beta);
	for (int iter = 0; iter < MODEL_MAX_NEWTON; iter++)
	{
		double		step = 1.0;
		double		biggest = 0;

		CHECK_FOR_INTERRUPTS();
		memset(grad, 0, sizeof(double) * p);
		memset(hess, 0, sizeof(double) * p * p);
		for (int64 i = 0; i < d->n; i++)
		{
			const double *z = &d->x[i * d->k];
			double		pr;
			double		w;

			if (d->held[i])
				continue;
			if ((i & 0xFFFF) == 0)
				CHECK_FOR_INTERRUPTS();
			pr = Sigmoid(Margin(beta, z, d->k));
			w = pr * (1 - pr);
			grad[0] += pr - d->y[i];
			hess[0] += w;
			for (int a = 0; a < d->k; a++)
			{
				grad[a + 1] += (pr - d->y[i]) * z[a];
				hess[(a + 1) * p] += w * z[a];
				for (int b = 0; b <= a; b++)
					hess[(a + 1) * p + b + 1] += w * z[a] * z[b];
			}
		}
		for (int a = 1; a < p; a++)
		{
			grad[a] += MODEL_L2 * beta[a];
			hess[a * p + a] += MODEL_L2;
		}
		for (int a = 0; a < p; a++)
			for (int b = a + 1; b < p; b++)
				hess[a * p + b] = hess[b * p + a];
		CholeskySolve(hess, grad, p);	/* grad is now the Newton step */
		for (;;)
		{
			double		next;

			for (int a = 0; a < p; a++)
				trial[a] = beta[a] - step * grad[a];
			next = Loss(d, trial);
			if (next <= loss || step < 1e-6)
			{
				loss = Min(next, loss);
				break;
			}
			step /= 2;
		}
		for (int a = 0; a < p; a++)
		{
			biggest = Max(biggest, fabs(trial[a] - beta[a]));
			beta[a] = trial[a];
		}
		if (biggest < MODEL_TOLERANCE)
			break;
	}
}

typedef struct Scored
{
	double		score;
	bool		y;
} Scored;

static int
CompareScored(const void *a, const void *b)
{
	double		x = ((const Scored *) a)->score;
	double		y = ((const Scored *) b)->score;

	return x < y ? -1 : x > y ? 1 : 0;
}

/* AUC (ties count half) and mean log loss of the held-out rows. */
static void
Evaluate(const ModelData *d, const double *beta, int64 *nheld, double *auc, bool *auc_null,
		 double *log_loss)
{
	Scored	   *s = MemoryContextAllocHuge(CurrentMemoryContext, sizeof(Scored) * Max(d->n, 1));
	int64		n = 0;
	int64		pos = 0;
	double		loss = 0;
	double		ranks = 0;

	for (int64 i = 0; i < d->n; i++)
	{
		double		m;

		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (!d->held[i])
			continue;
		m = Margin(beta, &d->x[i * d->k], d->k);
		s[n].score = m;
		s[n].y = d->y[i];
		loss += Log1pExp(m) - (d->y[i] ? m : 0);
		pos += d->y[i];
		n++;
	}
	*nheld = n;
	*log_loss = n > 0 ? loss / n : NAN;
	*auc_null = pos == 0 || pos == n;
	if (*auc_null)
		return;
	qsort(s, n, sizeof(Scored), CompareScored);
	for (int64 i = 0; i < n;)
	{
		int64		j = i;
		double		rank;

		CHECK_FOR_INTERRUPTS();

		while (j < n && s[j].score == s[i].score)
			j++;
		rank = (i + 1 + j) / 2.0;	/* the mean of ranks i + 1 .. j */
		for (int64 t = i; t < j; t++)
			if (s[t].y)
				ranks += rank;
		i = j;
	}
	*auc = (ranks - (double) pos * (pos + 1) / 2) / ((double) pos * (n - pos));
}

/*
 * persona.model_fit(feature_ids, target_event, cutoff, upto)
 *   -> (rows, positives, held_out, auc, log_loss, params)
 * params: {intercept, w_1..w_k, mean_1..mean_k, sd_1..sd_k}, the weights
 * over standardized features.
 */
PG_FUNCTION_INFO_V1(persona_model_fit);
Datum
persona_model_fit(PG_FUNCTION_ARGS)
{
	ModelData	d = {0};
	int			k;
	double	   *mean;
	double	   *sd;
	double	   *beta;
	int64		ntrain = 0;
	int64		npos_train = 0;
	int64		npos = 0;
	int64		nheld;
	double		auc = 0;
	bool		auc_null;
	double		log_loss;
	TupleDesc	desc;
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, false};
	Datum	   *params;
	char	   *target;
	MemoryContext fitcxt = CurrentMemoryContext;

	for (int a = 0; a < 4; a++)
		if (PG_ARGISNULL(a))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("persona.model_fit arguments must not be null")));
	(void) FeatureIds(PG_GETARG_ARRAYTYPE_P(0), &k);
	target = text_to_cstring(PG_GETARG_TEXT_PP(1));
	d.k = k;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ReadTrainingRows(&d, fitcxt, PG_GETARG_DATUM(0), PG_GETARG_DATUM(1), PG_GETARG_DATUM(2),
					 PG_GETARG_DATUM(3));
	SPI_finish();

	for (int64 i = 0; i < d.n; i++)
	{
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		npos += d.y[i];
		if (!d.held[i])
		{
			ntrain++;
			npos_train += d.y[i];
		}
	}
	if (d.n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no profile has events before the cutoff"),
				 errdetail("The cutoff is now() minus the horizon."),
				 errhint("Use a shorter horizon.")));
	if (npos_train == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no training profile had \"%s\" in the horizon", target),
				 errdetail("Of %lld training profiles, none had the target event after the cutoff: a model needs positive and negative examples.",
						   (long long) ntrain),
				 errhint("Use a longer horizon, or another target event.")));
	if (npos_train == ntrain)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("every training profile had \"%s\" in the horizon", target),
				 errdetail("All %lld training profiles had the target event after the cutoff: a model needs positive and negative examples.",
						   (long long) ntrain),
				 errhint("Use a shorter horizon, or another target event.")));

	/* Standardize with the training rows' statistics; missing -> the mean. */
	mean = palloc0(sizeof(double) * k);
	sd = palloc0(sizeof(double) * k);
	for (int f = 0; f < k; f++)
	{
		int64		m = 0;
		double		mu = 0;
		double		m2 = 0;

		for (int64 i = 0; i < d.n; i++)
		{
			double		x = d.x[i * k + f];

			if ((i & 0xFFFF) == 0)
				CHECK_FOR_INTERRUPTS();
			if (d.held[i] || isnan(x))
				continue;
			m++;
			{
				double		delta = x - mu;

				mu += delta / m;
				m2 += delta * (x - mu);
			}
		}
		mean[f] = mu;
		sd[f] = m > 1 ? sqrt(m2 / m) : 0;
		if (!(sd[f] > 1e-12) || !isfinite(sd[f]))
			sd[f] = 1;			/* constant: standardizes to 0 */
		for (int64 i = 0; i < d.n; i++)
		{
			double	   *x = &d.x[i * k + f];

			if ((i & 0xFFFF) == 0)
				CHECK_FOR_INTERRUPTS();
			*x = isnan(*x) ? 0 : (*x - mean[f]) / sd[f];
		}
	}

	beta = palloc(sizeof(double) * (k + 1));
	Fit(&d, beta, (double) npos_train / ntrain);
	Evaluate(&d, beta, &nheld, &auc, &auc_null, &log_loss);

	params = palloc(sizeof(Datum) * (3 * k + 1));
	for (int a = 0; a <= k; a++)
		params[a] = Float8GetDatum(beta[a]);
	for (int f = 0; f < k; f++)
	{
		params[k + 1 + f] = Float8GetDatum(mean[f]);
		params[2 * k + 1 + f] = Float8GetDatum(sd[f]);
	}
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "persona.model_fit must return a record");
	values[0] = Int64GetDatum(d.n);
	values[1] = Int64GetDatum(npos);
	values[2] = Int64GetDatum(nheld);
	values[3] = Float8GetDatum(auc);
	nulls[3] = auc_null;
	values[4] = Float8GetDatum(log_loss);
	nulls[4] = nheld == 0;
	values[5] = PointerGetDatum(construct_array(params, 3 * k + 1, FLOAT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/* ---------------------------------------------------------------------
 * SQL: the live score
 * --------------------------------------------------------------------- */

/*
 * persona.model_score(computed_state, event_count, first_seen, last_seen,
 *                     feature_ids, params) -> float8
 * The probability now, from a profile's stored trait states and columns:
 * what a model's column of persona.traits calls.
 */
PG_FUNCTION_INFO_V1(persona_model_score);
Datum
persona_model_score(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	const int32 *ids;
	ArrayType  *pa;
	const double *params;
	int			k;
	ProfileTraits *pt = NULL;
	const TraitCatalog *tc = NULL;
	double		m;

	if (PG_ARGISNULL(4) || PG_ARGISNULL(5))
		PG_RETURN_NULL();
	ids = FeatureIds(PG_GETARG_ARRAYTYPE_P(4), &k);
	pa = PG_GETARG_ARRAYTYPE_P(5);
	if (ARR_NDIM(pa) != 1 || ARR_HASNULL(pa) || ARR_ELEMTYPE(pa) != FLOAT8OID ||
		ARR_DIMS(pa)[0] != 3 * k + 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model parameters must be a float8[] of 3 * features + 1 values")));
	params = (const double *) ArrayData(pa);

	m = params[0];
	for (int f = 0; f < k; f++)
	{
		double		x;

		switch (ids[f])
		{
			case MODEL_EVENT_COUNT:
				x = PG_ARGISNULL(1) ? NAN : (double) PG_GETARG_INT64(1);
				break;
			case MODEL_DAYS_SINCE_LAST_SEEN:
				x = PG_ARGISNULL(3) ? NAN : DaysSince(PG_GETARG_TIMESTAMPTZ(3), true, now);
				break;
			case MODEL_DAYS_SINCE_FIRST_SEEN:
				x = PG_ARGISNULL(2) ? NAN : DaysSince(PG_GETARG_TIMESTAMPTZ(2), true, now);
				break;
			default:
				{
					const TraitDef *def;

					if (tc == NULL)
						tc = PersonaTraitCatalog();
					def = FeatureTrait(tc, ids[f]);
					if (def == NULL)
					{
						x = NAN;
						break;
					}
					if (pt == NULL && !PG_ARGISNULL(0))
						pt = PersonaParsedStates(PG_GETARG_BYTEA_PP(0));
					x = TraitFeature(pt == NULL ? NULL : PersonaProfileTraitsFind(pt, ids[f]),
									 def->kind, now);
				}
				break;
		}
		if (!isnan(x))
			m += params[f + 1] * (x - params[k + 1 + f]) / params[2 * k + 1 + f];
	}
	PG_RETURN_FLOAT8(Sigmoid(m));
}

/* ---------------------------------------------------------------------
 * What a stored expression over a model's column reads
 * --------------------------------------------------------------------- */

/*
 * Adds to ``reads`` (columns of persona.segment_source a predicate or
 * condition reads) what the models among them read: their features'
 * traits and profile columns.  A model that reads days since last_seen or
 * first_seen changes with the clock, which sets *clock.  So ingest and
 * persona_tick re-evaluate a segment on a score whenever its inputs
 * change.  persona.models is read directly, not through SQL: whoever may
 * write a definition may compile it, whatever their grants on
 * persona.models.  Nothing under a database still at 0.1.0's SQL (no
 * persona.models).
 */
void
PersonaModelReads(List **reads, bool *clock)
{
	Oid			nsp = get_namespace_oid("persona", true);
	Oid			relid;
	Relation	rel;
	TableScanDesc scan;
	Snapshot	snapshot;
	HeapTuple	tup;
	AttrNumber	name_att;
	AttrNumber	reads_att;
	AttrNumber	clock_att;
	List	   *models = NIL;

	if (*reads == NIL || !OidIsValid(nsp))
		return;
	relid = get_relname_relid("models", nsp);
	if (!OidIsValid(relid))
		return;
	name_att = PersonaRequireColumn(relid, "name");
	reads_att = PersonaRequireColumn(relid, "reads");
	clock_att = PersonaRequireColumn(relid, "clock");
	rel = table_open(relid, AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		char	   *name = TextDatumGetCString(heap_getattr(tup, name_att, RelationGetDescr(rel), &isnull));
		ListCell   *lc;
		Datum	   *model_reads;
		int			nmodel_reads;

		CHECK_FOR_INTERRUPTS();
		foreach(lc, *reads)
		{
			if (strcmp((char *) lfirst(lc), name) == 0)
				break;
		}
		if (lc == NULL)
			continue;
		deconstruct_array(DatumGetArrayTypeP(heap_getattr(tup, reads_att, RelationGetDescr(rel), &isnull)),
						  TEXTOID, -1, false, TYPALIGN_INT, &model_reads, NULL, &nmodel_reads);
		for (int j = 0; j < nmodel_reads; j++)
			models = lappend(models, TextDatumGetCString(model_reads[j]));
		if (DatumGetBool(heap_getattr(tup, clock_att, RelationGetDescr(rel), &isnull)))
			*clock = true;
	}
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);

	/* Appended after the scan: the loop above reads ``reads``. */
	{
		ListCell   *m;

		foreach(m, models)
		{
			ListCell   *lc;
			bool		have = false;

			foreach(lc, *reads)
			{
				if (strcmp((char *) lfirst(lc), (char *) lfirst(m)) == 0)
					have = true;
			}
			if (!have)
				*reads = lappend(*reads, lfirst(m));
		}
	}
}
