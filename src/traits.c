/*
 * traits.c
 *	  Computed traits: aggregate states, their wire format, the definitions
 *	  cache, and the SQL-callable functions over them.
 *
 * A profile keeps the state of every trait in one bytea,
 * persona.profiles.computed_state:
 *
 *	  uint8 version (2 or 3), n, then n times (length, entry)
 *
 * and an entry is the state of one trait:
 *
 *	  trait_id, uint8 kind, window_us, bucket_us, skipped, ncells, cells,
 *	  nvalues, values, uint8 flags, [256 HyperLogLog registers]
 *
 * where a cell is (bucket - previous bucket, n, [the kind's value]) and a
 * value of count_distinct its 8-byte hash, windowed followed by its span
 * (last occurrence, last - first).  Version 2 (0.1.0) wrote only the last
 * occurrence of each windowed value: it is still read, as a span of one.
 * The two versions differ in nothing else, so states holding no windowed
 * count_distinct value are written as version 2, the bytes 0.1.0 wrote.
 * Integers are varints (signed ones zigzag-encoded), value hashes 8 bytes in
 * network order, numerics in numeric_send format, so the bytes survive
 * pg_dump and a move to another machine; three small traits take about 60
 * bytes.  Every reader checks what it reads: a state is data, never trusted.
 *
 * Windows.  A window of W is counted in TRAIT_WINDOW_BUCKETS buckets of
 * width W / 60 (at least a second), numbered from PostgreSQL's epoch
 * (2000-01-01 00:00 UTC, where TimestampTz counts from; not the Unix epoch)
 * so that states of two profiles line up when they merge.  Bucket numbers
 * are stored in states, so the origin never changes.  A bucket counts while any part
 * of it lies in (now - W, now]: an event counts for at least W and at most
 * W + W/60 after it occurred.  Buckets wholly older than the window are
 * dropped whenever the state is written.
 */
#include "postgres.h"

#include <limits.h>
#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/int.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "libpq/pqformat.h"
#include "port/pg_bitutils.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "persona.h"
#include "defcache.h"
#include "traits.h"

#define STATE_VERSION 3
#define STATE_VERSION_OLDEST 2

#define FLAG_HLL		0x01
#define FLAG_TRUNCATED	0x02

static const char *const kind_names[] = {
	NULL, "count", "sum", "min", "max", "avg", "first", "last", "count_distinct"
};

/* ---------------------------------------------------------------------
 * Definitions cache
 * --------------------------------------------------------------------- */

TraitKind
PersonaTraitKindFromName(const char *name)
{
	for (int k = TRAIT_COUNT; k <= TRAIT_COUNT_DISTINCT; k++)
		if (strcmp(name, kind_names[k]) == 0)
			return (TraitKind) k;
	return 0;
}

static int64
BucketWidth(int64 window_us)
{
	if (window_us <= 0)
		return 0;
	return Max(USECS_PER_SEC, (window_us + TRAIT_WINDOW_BUCKETS - 1) / TRAIT_WINDOW_BUCKETS);
}

/* An interval as microseconds: a month is 30 days, a day 24 hours. */
int64
PersonaTraitIntervalUs(const Interval *w)
{
	return w->time + (int64) w->day * USECS_PER_DAY +
		(int64) w->month * DAYS_PER_MONTH * USECS_PER_DAY;
}

static const char *const trait_def_columns[] = {
	"trait_id", "name", "aggregate", "event_type", "property", "time_window"
};

static void
ReadTraitDef(void *entry, const Datum *values, const bool *nulls)
{
	TraitDef   *d = (TraitDef *) entry;

	d->trait_id = DatumGetInt32(values[0]);
	d->name = TextDatumGetCString(values[1]);
	d->kind = PersonaTraitKindFromName(TextDatumGetCString(values[2]));
	d->event_type = TextDatumGetCString(values[3]);
	d->property = nulls[4] ? NULL : TextDatumGetCString(values[4]);
	d->window_us = nulls[5] ? 0 : PersonaTraitIntervalUs(DatumGetIntervalP(values[5]));
	d->bucket_us = BucketWidth(d->window_us);
	if (d->kind == 0)
		elog(ERROR, "persona.trait_defs holds an unknown aggregate");
}

static void *
BuildTraitCatalog(void *entries, int n)
{
	TraitCatalog *tc = palloc0(sizeof(TraitCatalog));

	tc->defs = (TraitDef *) entries;
	tc->ndefs = n;
	for (int i = 0; i < n; i++)
		tc->max_trait_id = Max(tc->max_trait_id, tc->defs[i].trait_id);
	return tc;
}

static DefinitionCache trait_cache = {
	.name = "persona traits",
	.relation = offsetof(PersonaCatalog, trait_defs),
	.columns = trait_def_columns,
	.ncolumns = lengthof(trait_def_columns),
	.entry_size = sizeof(TraitDef),
	.read_row = ReadTraitDef,
	.build = BuildTraitCatalog,
};

/*
 * Returns the trait definitions, read again after persona.trait_defs
 * changed (defcache.c).  The list stays valid for whoever holds it until
 * the next call.
 */
const TraitCatalog *
PersonaTraitCatalog(void)
{
	return (const TraitCatalog *) PersonaDefinitions(&trait_cache);
}

/* ---------------------------------------------------------------------
 * Values out of event properties
 * --------------------------------------------------------------------- */

static bool
FindProperty(Jsonb *props, const char *key, JsonbValue *out)
{
	JsonbValue	k;
	JsonbValue *v;

	if (props == NULL || !JB_ROOT_IS_OBJECT(props))
		return false;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	v = findJsonbValueFromContainer(&props->root, JB_FOBJECT, &k);
	if (v == NULL || v->type == jbvNull)
		return false;
	*out = *v;
	return true;
}

/* A decimal number in a string, as JSON would write it, or NULL. */
static Numeric
NumericFromString(const char *s, int len)
{
	int			i = 0;
	int			digits = 0;
	char	   *copy;

	while (i < len && s[i] == ' ')
		i++;
	if (i < len && (s[i] == '-' || s[i] == '+'))
		i++;
	while (i < len && isdigit((unsigned char) s[i]))
		i++, digits++;
	if (i < len && s[i] == '.')
	{
		i++;
		while (i < len && isdigit((unsigned char) s[i]))
			i++, digits++;
	}
	if (digits == 0)
		return NULL;
	if (i < len && (s[i] == 'e' || s[i] == 'E'))
	{
		int			exp_digits = 0;

		i++;
		if (i < len && (s[i] == '-' || s[i] == '+'))
			i++;
		while (i < len && isdigit((unsigned char) s[i]))
			i++, exp_digits++;
		if (exp_digits == 0 || exp_digits > 4)
			return NULL;
	}
	while (i < len && s[i] == ' ')
		i++;
	if (i != len || len > 1000)
		return NULL;
	copy = pnstrdup(s, len);
	return DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum(copy),
											   ObjectIdGetDatum(InvalidOid),
											   Int32GetDatum(-1)));
}

/* A property as a number: JSON numbers and numeric strings, else NULL. */
static Numeric
NumericValue(const JsonbValue *v)
{
	if (v->type == jbvNumeric)
		return v->val.numeric;
	if (v->type == jbvString)
		return NumericFromString(v->val.string.val, v->val.string.len);
	return NULL;
}

/* A property as text: strings as they are, other scalars as JSON. */
static text *
TextValue(const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			return cstring_to_text_with_len(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return cstring_to_text(DatumGetCString(DirectFunctionCall1(numeric_out,
																	   NumericGetDatum(v->val.numeric))));
		case jbvBool:
			return cstring_to_text(v->val.boolean ? "true" : "false");
		default:
			return cstring_to_text(JsonbToCString(NULL, v->val.binary.data, v->val.binary.len));
	}
}

/* ---------------------------------------------------------------------
 * Buckets and cells
 * --------------------------------------------------------------------- */

static inline int64
FloorDiv(int64 a, int64 b)
{
	int64		q = a / b;

	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static inline int64
BucketOf(const TraitState *s, TimestampTz at)
{
	return s->bucket_us == 0 ? 0 : FloorDiv(at, s->bucket_us);
}

/* Does any part of the bucket lie in (now - window, now]? */
static inline bool
BucketLive(const TraitState *s, int64 bucket, TimestampTz now)
{
	int64		start;

	if (s->bucket_us == 0)
		return true;
	start = bucket * s->bucket_us;
	return start + s->bucket_us > now - s->window_us && start <= now;
}

/* Can the bucket still count, now or later? */
static inline bool
BucketKept(const TraitState *s, int64 bucket, TimestampTz now)
{
	return s->bucket_us == 0 ||
		bucket * s->bucket_us + s->bucket_us > now - s->window_us;
}

static TraitCell *
GetCell(TraitState *s, int64 bucket)
{
	int			lo = 0;
	int			hi = s->ncells;

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (s->cells[mid].bucket < bucket)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < s->ncells && s->cells[lo].bucket == bucket)
		return &s->cells[lo];

	if (s->ncells == s->maxcells)
	{
		/*
		 * The first cell is the state's own (a lifetime state has one cell,
		 * ever, and a profile of a bulk statement holds one state per trait:
		 * no allocation of its own); more move to an array.
		 */
		if (s->cells == NULL)
		{
			s->cells = &s->one;
			s->maxcells = 1;
		}
		else if (s->cells == &s->one)
		{
			s->maxcells = 2;
			s->cells = palloc(sizeof(TraitCell) * s->maxcells);
			s->cells[0] = s->one;
		}
		else
		{
			s->maxcells *= 2;
			s->cells = repalloc(s->cells, sizeof(TraitCell) * s->maxcells);
		}
	}
	memmove(&s->cells[lo + 1], &s->cells[lo], sizeof(TraitCell) * (s->ncells - lo));
	s->ncells++;
	memset(&s->cells[lo], 0, sizeof(TraitCell));
	s->cells[lo].bucket = bucket;
	return &s->cells[lo];
}

static inline int
NumericCmp(Numeric a, Numeric b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(a),
											 NumericGetDatum(b)));
}

static inline Numeric
NumericAdd(Numeric a, Numeric b)
{
	return DatumGetNumeric(DirectFunctionCall2(numeric_add, NumericGetDatum(a),
											   NumericGetDatum(b)));
}

/* Is (at, seq) before (at2, seq2)? */
static inline bool
Earlier(TimestampTz at, int64 seq, TimestampTz at2, int64 seq2)
{
	return at < at2 || (at == at2 && seq < seq2);
}

/* Folds one value (or a whole cell) into a cell. */
static void
CellAdd(TraitKind kind, TraitCell *c, int64 n, Numeric num, TimestampTz at,
		int64 seq, text *str)
{
	switch (kind)
	{
		case TRAIT_COUNT:
			break;
		case TRAIT_SUM:
		case TRAIT_AVG:
			c->num = c->n == 0 ? num : NumericAdd(c->num, num);
			break;
		case TRAIT_MIN:
			if (c->n == 0 || NumericCmp(num, c->num) < 0)
				c->num = num;
			break;
		case TRAIT_MAX:
			if (c->n == 0 || NumericCmp(num, c->num) > 0)
				c->num = num;
			break;
		case TRAIT_FIRST:
			if (c->n == 0 || Earlier(at, seq, c->at, c->seq))
				c->at = at, c->seq = seq, c->str = str;
			break;
		case TRAIT_LAST:
			if (c->n == 0 || Earlier(c->at, c->seq, at, seq))
				c->at = at, c->seq = seq, c->str = str;
			break;
		case TRAIT_COUNT_DISTINCT:
			break;
	}
	c->n += n;
}

/* ---------------------------------------------------------------------
 * count_distinct: an exact set of 64-bit hashes, then HyperLogLog
 * --------------------------------------------------------------------- */

static void
HllAdd(uint8 *hll, uint64 h)
{
	int			idx = (int) (h >> 56);
	uint64		rest = h << 8;
	uint8		rho = rest == 0 ? 57 : (uint8) (pg_leftmost_one_pos64(rest) ^ 63) + 1;

	if (rho > hll[idx])
		hll[idx] = rho;
}

static int64
HllEstimate(const uint8 *hll)
{
	double		m = TRAIT_HLL_REGISTERS;
	double		sum = 0;
	int			zeros = 0;
	double		e;

	for (int i = 0; i < TRAIT_HLL_REGISTERS; i++)
	{
		sum += ldexp(1.0, -hll[i]);
		if (hll[i] == 0)
			zeros++;
	}
	e = (0.7213 / (1 + 1.079 / m)) * m * m / sum;
	if (e <= 2.5 * m && zeros > 0)
		e = m * log(m / zeros);
	return (int64) llround(e);
}

static int
FindValue(const TraitState *s, uint64 h)
{
	for (int i = 0; i < s->nvalues; i++)
		if (s->hashes[i] == h)
			return i;
	return -1;
}

static void
ValuesReserve(TraitState *s)
{
	if (s->nvalues < s->maxvalues)
		return;
	s->maxvalues = Max(8, s->maxvalues * 2);
	s->hashes = s->hashes == NULL ? palloc(sizeof(uint64) * s->maxvalues)
		: repalloc(s->hashes, sizeof(uint64) * s->maxvalues);
	if (s->window_us != 0)
		s->spans = s->spans == NULL ? palloc(sizeof(DistinctSpan) * s->maxvalues)
			: repalloc(s->spans, sizeof(DistinctSpan) * s->maxvalues);
}

/* A lifetime count_distinct: a set of hashes, past the bound HyperLogLog. */
static void
DistinctAdd(TraitState *s, uint64 h)
{
	if (s->hll != NULL)
	{
		HllAdd(s->hll, h);
		return;
	}
	if (FindValue(s, h) >= 0)
		return;
	if (s->nvalues == TRAIT_DISTINCT_EXACT)
	{
		/* Past the bound, a lifetime set becomes an estimate. */
		s->hll = palloc0(TRAIT_HLL_REGISTERS);
		for (int j = 0; j < s->nvalues; j++)
			HllAdd(s->hll, s->hashes[j]);
		HllAdd(s->hll, h);
		s->nvalues = 0;
		return;
	}
	ValuesReserve(s);
	s->hashes[s->nvalues++] = h;
}

/* Is entry i before (h, first) in a windowed state's order? */
static inline bool
EntryBefore(const TraitState *s, int i, uint64 h, TimestampTz first)
{
	return s->hashes[i] < h || (s->hashes[i] == h && s->spans[i].first < first);
}

/*
 * A windowed count_distinct: adds the occurrences of value ``h`` from
 * ``first`` to ``last`` (a span), joining every span of the value less than
 * a window away, so that a value counts at any time, past or future,
 * exactly when one of its occurrences lies in the window then.  Past the
 * bound, the spans that stop counting first make way (the state is then
 * marked truncated: a lower bound).
 */
static void
DistinctAddSpan(TraitState *s, uint64 h, TimestampTz first, TimestampTz last,
				TimestampTz now)
{
	int			lo = 0;
	int			hi = s->nvalues;
	int			end;
	int			pos;

	/* The value's entries start at lo. */
	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (s->hashes[mid] < h)
			lo = mid + 1;
		else
			hi = mid;
	}

	/*
	 * Its spans are ordered and more than a window apart, so those the new
	 * one joins are consecutive: [pos, end).  Widening it to one of them
	 * cannot bring an earlier one within a window.
	 */
	pos = lo;
	while (pos < s->nvalues && s->hashes[pos] == h &&
		   s->spans[pos].last < first - s->window_us)
		pos++;
	end = pos;
	while (end < s->nvalues && s->hashes[end] == h &&
		   s->spans[end].first <= last + s->window_us)
	{
		first = Min(first, s->spans[end].first);
		last = Max(last, s->spans[end].last);
		end++;
	}
	if (end > pos)
	{
		/* Joined: the first joined entry becomes the whole span. */
		s->spans[pos].first = first;
		s->spans[pos].last = last;
		memmove(&s->hashes[pos + 1], &s->hashes[end], sizeof(uint64) * (s->nvalues - end));
		memmove(&s->spans[pos + 1], &s->spans[end], sizeof(DistinctSpan) * (s->nvalues - end));
		s->nvalues -= end - pos - 1;
		return;
	}

	if (s->nvalues == TRAIT_DISTINCT_EXACT)
	{
		int			oldest = 0;

		for (int j = 1; j < s->nvalues; j++)
			if (s->spans[j].last < s->spans[oldest].last)
				oldest = j;
		if (s->spans[oldest].last >= last)
		{
			if (last > now - s->window_us)
				s->truncated = true;
			return;
		}
		if (s->spans[oldest].last > now - s->window_us)
			s->truncated = true;
		memmove(&s->hashes[oldest], &s->hashes[oldest + 1],
				sizeof(uint64) * (s->nvalues - oldest - 1));
		memmove(&s->spans[oldest], &s->spans[oldest + 1],
				sizeof(DistinctSpan) * (s->nvalues - oldest - 1));
		s->nvalues--;
		if (oldest < pos)
			pos--;
	}
	ValuesReserve(s);
	while (pos > 0 && !EntryBefore(s, pos - 1, h, first))
		pos--;
	while (pos < s->nvalues && EntryBefore(s, pos, h, first))
		pos++;
	memmove(&s->hashes[pos + 1], &s->hashes[pos], sizeof(uint64) * (s->nvalues - pos));
	memmove(&s->spans[pos + 1], &s->spans[pos], sizeof(DistinctSpan) * (s->nvalues - pos));
	s->hashes[pos] = h;
	s->spans[pos].first = first;
	s->spans[pos].last = last;
	s->nvalues++;
}

/* ---------------------------------------------------------------------
 * Trait states
 * --------------------------------------------------------------------- */

/* A profile of a bulk statement holds one state per trait: keep them small. */
StaticAssertDecl(sizeof(TraitState) <= 128, "a trait state fits a 128-byte chunk");
StaticAssertDecl(sizeof(ProfileTraits) <= 64, "a profile's states fit a 64-byte chunk");

TraitState *
PersonaTraitStateCreate(const TraitDef *def)
{
	TraitState *s = palloc0(sizeof(TraitState));

	s->trait_id = def->trait_id;
	s->kind = def->kind;
	s->window_us = def->window_us;
	s->bucket_us = def->bucket_us;
	return s;
}

/* Folds one event into the state. */
void
PersonaTraitAdd(TraitState *s, const TraitDef *def, TimestampTz at, int64 event_id,
				Jsonb *properties, TimestampTz now)
{
	int64		bucket = BucketOf(s, at);
	JsonbValue	v;
	Numeric		num = NULL;
	text	   *str = NULL;
	TraitCell  *cell;

	if (!BucketKept(s, bucket, now))
		return;					/* already out of the window */

	if (def->property != NULL && !FindProperty(properties, def->property, &v))
		return;					/* the event does not carry the property */

	switch (s->kind)
	{
		case TRAIT_COUNT:
			break;
		case TRAIT_SUM:
		case TRAIT_AVG:
		case TRAIT_MIN:
		case TRAIT_MAX:
			num = NumericValue(&v);
			if (num == NULL)
			{
				s->skipped++;
				return;
			}
			break;
		case TRAIT_FIRST:
		case TRAIT_LAST:
			str = TextValue(&v);
			break;
		case TRAIT_COUNT_DISTINCT:
			str = TextValue(&v);
			{
				uint64		h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(str),
													VARSIZE_ANY_EXHDR(str), 0);

				if (s->window_us == 0)
					DistinctAdd(s, h);
				else
					DistinctAddSpan(s, h, at, at, now);
				return;
			}
	}
	cell = GetCell(s, bucket);

	/*
	 * The event's memory goes with the row: a value the cell keeps as it is
	 * needs a copy of its own (a sum keeps the new result of an addition).
	 */
	if (num != NULL &&
		(cell->n == 0 || s->kind == TRAIT_MIN || s->kind == TRAIT_MAX))
		num = DatumGetNumericCopy(NumericGetDatum(num));
	CellAdd(s->kind, cell, 1, num, at, event_id, str);
}

/* Folds ``from`` into ``into``: the state of both profiles' events. */
void
PersonaTraitCombine(TraitState *into, const TraitState *from)
{
	into->skipped += from->skipped;
	for (int i = 0; i < from->ncells; i++)
	{
		const TraitCell *c = &from->cells[i];

		/*
		 * Copy what the state keeps: ``from`` may live in shorter-lived
		 * memory (a deserialized partial state of a parallel aggregate).
		 */
		if (c->n > 0)
			CellAdd(into->kind, GetCell(into, c->bucket), c->n,
					c->num ? DatumGetNumericCopy(NumericGetDatum(c->num)) : NULL,
					c->at, c->seq,
					c->str ? DatumGetTextPCopy(PointerGetDatum(c->str)) : NULL);
	}
	if (into->kind != TRAIT_COUNT_DISTINCT)
		return;

	into->truncated |= from->truncated;
	if (from->hll != NULL)
	{
		if (into->hll == NULL)
		{
			into->hll = palloc0(TRAIT_HLL_REGISTERS);
			for (int j = 0; j < into->nvalues; j++)
				HllAdd(into->hll, into->hashes[j]);
			into->nvalues = 0;
		}
		for (int r = 0; r < TRAIT_HLL_REGISTERS; r++)
			into->hll[r] = Max(into->hll[r], from->hll[r]);
	}
	for (int j = 0; j < from->nvalues; j++)
	{
		if (into->window_us == 0)
			DistinctAdd(into, from->hashes[j]);
		else
			DistinctAddSpan(into, from->hashes[j], from->spans[j].first,
							from->spans[j].last, GetCurrentTransactionStartTimestamp());
	}
}

/*
 * a + b, or +/-Infinity when the sum no longer fits numeric (beyond 10^131071,
 * possible only across the cells of a window, each of which fitted): only
 * then can two finite values overflow, and both have the sign of the sum.
 * The value of a trait raises no data exception, so that a predicate over
 * traits never needs a subtransaction (predicate.c, PredicateMayFail).
 */
static Numeric
NumericAddSaturating(Numeric a, Numeric b)
{
	bool		overflow = false;
	Numeric		sum = numeric_add_opt_error(a, b, &overflow);

	if (!overflow)
		return sum;
	return DatumGetNumeric(DirectFunctionCall3(numeric_in,
											   CStringGetDatum(NumericCmp(a, int64_to_numeric(0)) < 0
															   ? "-Infinity" : "Infinity"),
											   ObjectIdGetDatum(InvalidOid),
											   Int32GetDatum(-1)));
}

/*
 * The value of a trait at ``now``: bigint for count and count_distinct,
 * numeric for sum, avg, min and max, text for first and last.
 */
Datum
PersonaTraitValue(const TraitState *s, TimestampTz now, bool *isnull)
{
	int64		n = 0;
	Numeric		num = NULL;
	const TraitCell *pick = NULL;

	*isnull = false;
	if (s->kind == TRAIT_COUNT_DISTINCT)
	{
		if (s->hll != NULL)
			return Int64GetDatum(HllEstimate(s->hll));
		/* A value's spans are more than a window apart: one counts at most. */
		for (int j = 0; j < s->nvalues; j++)
			if (s->window_us == 0 ||
				(s->spans[j].first <= now && s->spans[j].last > now - s->window_us))
				n++;
		return Int64GetDatum(n);
	}

	for (int i = 0; i < s->ncells; i++)
	{
		const TraitCell *c = &s->cells[i];

		if (c->n == 0 || !BucketLive(s, c->bucket, now))
			continue;
		switch (s->kind)
		{
			case TRAIT_SUM:
			case TRAIT_AVG:
				num = num == NULL ? c->num : NumericAddSaturating(num, c->num);
				break;
			case TRAIT_MIN:
				if (num == NULL || NumericCmp(c->num, num) < 0)
					num = c->num;
				break;
			case TRAIT_MAX:
				if (num == NULL || NumericCmp(c->num, num) > 0)
					num = c->num;
				break;
			case TRAIT_FIRST:
				if (pick == NULL || Earlier(c->at, c->seq, pick->at, pick->seq))
					pick = c;
				break;
			case TRAIT_LAST:
				if (pick == NULL || Earlier(pick->at, pick->seq, c->at, c->seq))
					pick = c;
				break;
			default:
				break;
		}
		/* Counts are never negative (RecvState): n >= 1 from here on. */
		if (pg_add_s64_overflow(n, c->n, &n))
			n = PG_INT64_MAX;
	}

	switch (s->kind)
	{
		case TRAIT_COUNT:
			return Int64GetDatum(n);
		case TRAIT_SUM:
			if (num == NULL)
				return DirectFunctionCall1(int8_numeric, Int64GetDatum(0));
			return NumericGetDatum(num);
		case TRAIT_AVG:
			if (num == NULL)
				break;

			/*
			 * n >= 1 (a cell with a value counts at least one event, and the
			 * count saturates), so neither division by zero nor overflow: the
			 * quotient is no larger than the sum, and its scale is capped by
			 * numeric_div.
			 */
			return DirectFunctionCall2(numeric_div, NumericGetDatum(num),
									   DirectFunctionCall1(int8_numeric, Int64GetDatum(n)));
		case TRAIT_MIN:
		case TRAIT_MAX:
			if (num == NULL)
				break;
			return NumericGetDatum(num);
		case TRAIT_FIRST:
		case TRAIT_LAST:
			if (pick == NULL)
				break;
			return PointerGetDatum(pick->str);
		default:
			break;
	}
	*isnull = true;
	return (Datum) 0;
}

/* Drops buckets that can no longer count. */
static void
TraitPrune(TraitState *s, TimestampTz now)
{
	int			keep = 0;

	if (s->bucket_us == 0)
		return;
	for (int i = 0; i < s->ncells; i++)
		if (BucketKept(s, s->cells[i].bucket, now))
			s->cells[keep++] = s->cells[i];
	s->ncells = keep;
	if (s->spans != NULL)
	{
		keep = 0;
		for (int j = 0; j < s->nvalues; j++)
			if (s->spans[j].last > now - s->window_us)
			{
				s->hashes[keep] = s->hashes[j];
				s->spans[keep++] = s->spans[j];
			}
		s->nvalues = keep;
	}
}

/* ---------------------------------------------------------------------
 * Wire format
 * --------------------------------------------------------------------- */

/*
 * Integers are written as varints (7 bits a byte, low bits first, the high
 * bit set on every byte but the last); signed ones zigzag-encoded first, so
 * that small magnitudes of either sign stay short.  A state of a lifetime
 * count is a dozen bytes; bucket numbers are written as the difference from
 * the previous bucket.
 */
static void
SendVarint(StringInfo buf, uint64 v)
{
	while (v >= 0x80)
	{
		appendStringInfoCharMacro(buf, (char) (v | 0x80));
		v >>= 7;
	}
	appendStringInfoCharMacro(buf, (char) v);
}

static inline void
SendSigned(StringInfo buf, int64 v)
{
	SendVarint(buf, ((uint64) v << 1) ^ (uint64) (v >> 63));
}

static inline void
CheckState(bool ok)
{
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("invalid trait state")));
}

static uint64
RecvVarint(StringInfo buf)
{
	uint64		v = 0;

	for (int shift = 0;; shift += 7)
	{
		uint8		b;

		CheckState(buf->cursor < buf->len && shift < 64);
		b = (uint8) buf->data[buf->cursor++];
		v |= (uint64) (b & 0x7F) << shift;
		if ((b & 0x80) == 0)
			return v;
	}
}

static inline int64
RecvSigned(StringInfo buf)
{
	uint64		u = RecvVarint(buf);

	return (int64) (u >> 1) ^ -(int64) (u & 1);
}

/* A count that must fit what is left of the buffer, ``unit`` bytes each. */
static int
RecvCount(StringInfo buf, int unit, int max)
{
	uint64		n = RecvVarint(buf);

	CheckState(n <= (uint64) max && n * unit <= (uint64) (buf->len - buf->cursor));
	return (int) n;
}

static void
SendNumeric(StringInfo buf, Numeric num)
{
	bytea	   *b = DatumGetByteaPP(DirectFunctionCall1(numeric_send, NumericGetDatum(num)));

	SendVarint(buf, VARSIZE_ANY_EXHDR(b));
	appendBinaryStringInfo(buf, VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
	/* numeric_send's buffer is 1 kB: a batch writing many states frees each. */
	pfree(b);
}

/*
 * numeric_recv's checks of its input (PostgreSQL 15: ndigits, weight, sign,
 * dscale, then ndigits digits, each an int16 in network order), made before
 * it runs: a malformed numeric is then a corrupt state (XX001) like any
 * other malformed byte, never numeric_recv's invalid binary representation
 * (22P03), a data exception.  The trait decoders must raise no error of
 * class 22 (predicate.c, PredicateMayFail).  numeric_recv raises nothing
 * else of class 22: a weight is an int16, and trunc_var drops every digit
 * below the scale (at most 16,383 decimal places), so the first digit kept
 * never overflows the weight.  A shorter buffer is left to numeric_recv's
 * own reads (protocol violation, 08P01), as before.
 */
#define RECV_NUMERIC_POS	0x0000
#define RECV_NUMERIC_NEG	0x4000
#define RECV_NUMERIC_NAN	0xC000
#define RECV_NUMERIC_PINF	0xD000
#define RECV_NUMERIC_NINF	0xF000
#define RECV_NUMERIC_DSCALE_MASK 0x3FFF
#define RECV_NUMERIC_NBASE	10000

static inline uint16
NumericWord(const char *p)
{
	return (uint16) (((uint8) p[0] << 8) | (uint8) p[1]);
}

static bool
NumericBytesValid(const char *p, int len)
{
	int			ndigits;
	uint16		sign;

	if (len < 8)
		return true;
	ndigits = NumericWord(p);
	sign = NumericWord(p + 4);
	if (sign != RECV_NUMERIC_POS && sign != RECV_NUMERIC_NEG && sign != RECV_NUMERIC_NAN &&
		sign != RECV_NUMERIC_PINF && sign != RECV_NUMERIC_NINF)
		return false;
	if ((NumericWord(p + 6) & ~RECV_NUMERIC_DSCALE_MASK) != 0)
		return false;
	for (int i = 0; i < ndigits && 8 + 2 * i + 1 < len; i++)
	{
		int16		d = (int16) NumericWord(p + 8 + 2 * i);

		if (d < 0 || d >= RECV_NUMERIC_NBASE)
			return false;
	}
	return true;
}

static Numeric
RecvNumeric(StringInfo buf)
{
	int			len = RecvCount(buf, 1, INT_MAX);
	StringInfoData sub;

	sub.data = (char *) pq_getmsgbytes(buf, len);
	sub.len = len;
	sub.maxlen = len;
	sub.cursor = 0;
	CheckState(NumericBytesValid(sub.data, len));
	return DatumGetNumeric(DirectFunctionCall3(numeric_recv, PointerGetDatum(&sub),
											   ObjectIdGetDatum(InvalidOid),
											   Int32GetDatum(-1)));
}

static void
SendState(StringInfo buf, const TraitState *s)
{
	uint8		flags = (s->hll ? FLAG_HLL : 0) | (s->truncated ? FLAG_TRUNCATED : 0);
	int64		prev = 0;

	SendVarint(buf, (uint32) s->trait_id);
	appendStringInfoCharMacro(buf, (char) s->kind);
	SendVarint(buf, s->window_us);
	SendVarint(buf, s->bucket_us);
	SendVarint(buf, s->skipped);
	SendVarint(buf, s->ncells);
	for (int i = 0; i < s->ncells; i++)
	{
		const TraitCell *c = &s->cells[i];

		SendSigned(buf, c->bucket - prev);
		prev = c->bucket;
		SendVarint(buf, c->n);
		if (c->n == 0)
			continue;
		switch (s->kind)
		{
			case TRAIT_SUM:
			case TRAIT_AVG:
			case TRAIT_MIN:
			case TRAIT_MAX:
				SendNumeric(buf, c->num);
				break;
			case TRAIT_FIRST:
			case TRAIT_LAST:
				SendSigned(buf, c->at);
				SendSigned(buf, c->seq);
				SendVarint(buf, VARSIZE_ANY_EXHDR(c->str));
				appendBinaryStringInfo(buf, VARDATA_ANY(c->str), VARSIZE_ANY_EXHDR(c->str));
				break;
			default:
				break;
		}
	}
	SendVarint(buf, s->nvalues);
	for (int j = 0; j < s->nvalues; j++)
	{
		pq_sendint64(buf, (int64) s->hashes[j]);
		if (s->window_us != 0)
		{
			SendSigned(buf, s->spans[j].last);
			SendVarint(buf, (uint64) (s->spans[j].last - s->spans[j].first));
		}
	}
	appendStringInfoCharMacro(buf, (char) flags);
	if (s->hll != NULL)
		appendBinaryStringInfo(buf, (char *) s->hll, TRAIT_HLL_REGISTERS);
}

/*
 * A windowed value's span: (last, last - first) since version 3; version 2
 * kept only the last occurrence, read as a span of one.
 */
static void
RecvSpan(StringInfo buf, int version, DistinctSpan *span)
{
	uint64		length;

	span->last = RecvSigned(buf);
	span->first = span->last;
	if (version < 3)
		return;
	length = RecvVarint(buf);
	CheckState(IS_VALID_TIMESTAMP(span->last) && length <= (uint64) PG_INT64_MAX &&
			   !pg_sub_s64_overflow(span->last, (int64) length, &span->first) &&
			   IS_VALID_TIMESTAMP(span->first));
}

static int
SpanCmp(const void *a, const void *b)
{
	const DistinctSpan *x = (const DistinctSpan *) a;
	const DistinctSpan *y = (const DistinctSpan *) b;

	return x->first < y->first ? -1 : x->first > y->first;
}

/*
 * A windowed state's entries in (hash, first) order, the spans of a value
 * more than a window apart.  A version 2 state held each value once, in the
 * order of arrival: it is sorted here.
 */
static void
CheckSpans(TraitState *s, int version)
{
	if (version < 3)
	{
		/* Sort (hash, span) pairs by hash; the spans ride along. */
		DistinctSpan *pairs = palloc(sizeof(DistinctSpan) * s->nvalues);

		for (int j = 0; j < s->nvalues; j++)
		{
			pairs[j].first = (TimestampTz) (s->hashes[j] ^ UINT64CONST(0x8000000000000000));
			pairs[j].last = s->spans[j].last;
		}
		qsort(pairs, s->nvalues, sizeof(DistinctSpan), SpanCmp);
		for (int j = 0; j < s->nvalues; j++)
		{
			s->hashes[j] = (uint64) pairs[j].first ^ UINT64CONST(0x8000000000000000);
			s->spans[j].first = s->spans[j].last = pairs[j].last;
		}
		pfree(pairs);
	}
	for (int j = 1; j < s->nvalues; j++)
		CheckState(s->hashes[j - 1] < s->hashes[j] ||
				   (s->hashes[j - 1] == s->hashes[j] && version >= 3 &&
					s->spans[j].first - s->spans[j - 1].last > s->window_us));
}

static TraitState *
RecvState(StringInfo buf, int version)
{
	TraitState *s = palloc0(sizeof(TraitState));
	int			n;
	uint8		flags;
	uint64		u;

	u = RecvVarint(buf);
	CheckState(u <= PG_INT32_MAX);
	s->trait_id = (int32) u;
	s->kind = (TraitKind) pq_getmsgbyte(buf);
	CheckState(s->kind >= TRAIT_COUNT && s->kind <= TRAIT_COUNT_DISTINCT);
	u = RecvVarint(buf);
	CheckState(u <= PG_INT64_MAX);
	s->window_us = (int64) u;
	u = RecvVarint(buf);
	CheckState(u <= PG_INT64_MAX);
	s->bucket_us = (int64) u;
	CheckState((s->window_us == 0) == (s->bucket_us == 0));
	u = RecvVarint(buf);
	CheckState(u <= PG_INT64_MAX);
	s->skipped = (int64) u;
	n = RecvCount(buf, 2, INT_MAX / sizeof(TraitCell));
	s->ncells = n;
	s->maxcells = Max(n, 1);
	s->cells = n <= 1 ? &s->one : palloc0(sizeof(TraitCell) * n);
	for (int i = 0; i < n; i++)
	{
		TraitCell  *c = &s->cells[i];
		int64		delta = RecvSigned(buf);

		CheckState(i == 0 || delta > 0);
		c->bucket = (i == 0 ? 0 : s->cells[i - 1].bucket) + delta;
		u = RecvVarint(buf);
		CheckState(u <= PG_INT64_MAX);
		c->n = (int64) u;
		if (c->n == 0)
			continue;
		switch (s->kind)
		{
			case TRAIT_SUM:
			case TRAIT_AVG:
			case TRAIT_MIN:
			case TRAIT_MAX:
				c->num = RecvNumeric(buf);
				break;
			case TRAIT_FIRST:
			case TRAIT_LAST:
				{
					int			len;
					const char *str;

					c->at = RecvSigned(buf);
					c->seq = RecvSigned(buf);
					len = RecvCount(buf, 1, INT_MAX);
					str = pq_getmsgbytes(buf, len);
					/* Text not valid in the database's encoding is corrupt. */
					CheckState(pg_verifymbstr(str, len, true));
					c->str = cstring_to_text_with_len(str, len);
					break;
				}
			default:
				break;
		}
	}
	n = RecvCount(buf, 8, TRAIT_DISTINCT_EXACT);
	CheckState(n == 0 || s->kind == TRAIT_COUNT_DISTINCT);
	s->nvalues = s->maxvalues = n;
	if (n > 0)
	{
		s->hashes = palloc(sizeof(uint64) * n);
		if (s->window_us != 0)
			s->spans = palloc(sizeof(DistinctSpan) * n);
	}
	for (int j = 0; j < n; j++)
	{
		s->hashes[j] = (uint64) pq_getmsgint64(buf);
		if (s->window_us != 0)
			RecvSpan(buf, version, &s->spans[j]);
	}
	if (s->window_us != 0)
		CheckSpans(s, version);
	flags = pq_getmsgbyte(buf);
	CheckState((flags & ~(FLAG_HLL | FLAG_TRUNCATED)) == 0);
	s->truncated = (flags & FLAG_TRUNCATED) != 0;
	if (flags & FLAG_HLL)
	{
		CheckState(s->kind == TRAIT_COUNT_DISTINCT && s->window_us == 0 && n == 0);
		s->hll = palloc(TRAIT_HLL_REGISTERS);
		memcpy(s->hll, pq_getmsgbytes(buf, TRAIT_HLL_REGISTERS), TRAIT_HLL_REGISTERS);
	}
	return s;
}

/* ---------------------------------------------------------------------
 * A profile's states
 * --------------------------------------------------------------------- */

ProfileTraits *
PersonaProfileTraitsCreate(void)
{
	return palloc0(sizeof(ProfileTraits));
}

static void
ProfileTraitsAppend(ProfileTraits *pt, TraitState *s)
{
	if (pt->states == NULL)
	{
		pt->states = pt->inline_states;
		pt->ids = pt->inline_ids;
		pt->maxstates = PROFILE_TRAITS_INLINE;
	}
	if (pt->nstates == pt->maxstates)
	{
		TraitState **states = palloc(sizeof(TraitState *) * pt->maxstates * 2);
		int32	   *ids = palloc(sizeof(int32) * pt->maxstates * 2);

		memcpy(states, pt->states, sizeof(TraitState *) * pt->nstates);
		memcpy(ids, pt->ids, sizeof(int32) * pt->nstates);
		if (pt->states != pt->inline_states)
		{
			pfree(pt->states);
			pfree(pt->ids);
		}
		pt->states = states;
		pt->ids = ids;
		pt->maxstates *= 2;
	}
	pt->ids[pt->nstates] = s->trait_id;
	pt->states[pt->nstates++] = s;
}

ProfileTraits *
PersonaProfileTraitsParse(bytea *blob)
{
	ProfileTraits *pt = PersonaProfileTraitsCreate();
	StringInfoData buf;
	int			version;
	int			n;

	if (blob == NULL)
		return pt;
	buf.data = VARDATA_ANY(blob);
	buf.len = VARSIZE_ANY_EXHDR(blob);
	buf.maxlen = buf.len;
	buf.cursor = 0;
	if (buf.len == 0)
		return pt;
	version = pq_getmsgbyte(&buf);
	CheckState(version >= STATE_VERSION_OLDEST && version <= STATE_VERSION);
	n = RecvCount(&buf, 1, INT_MAX);
	for (int i = 0; i < n; i++)
	{
		int			len = RecvCount(&buf, 1, INT_MAX);
		StringInfoData sub;
		TraitState *s;

		CheckState(len > 0);
		sub.data = (char *) pq_getmsgbytes(&buf, len);
		sub.len = sub.maxlen = len;
		sub.cursor = 0;
		s = RecvState(&sub, version);
		CheckState(sub.cursor == sub.len && PersonaProfileTraitsFind(pt, s->trait_id) == NULL);
		ProfileTraitsAppend(pt, s);
	}
	CheckState(buf.cursor == buf.len);
	return pt;
}

TraitState *
PersonaProfileTraitsFind(ProfileTraits *pt, int32 trait_id)
{
	for (int i = 0; i < pt->nstates; i++)
		if (pt->ids[i] == trait_id)
			return pt->states[i];
	return NULL;
}

/* The state of a defined trait, created when the profile has none yet. */
TraitState *
PersonaProfileTraitsGet(ProfileTraits *pt, const TraitDef *def)
{
	TraitState *s = PersonaProfileTraitsFind(pt, def->trait_id);

	if (s == NULL)
	{
		s = PersonaTraitStateCreate(def);
		ProfileTraitsAppend(pt, s);
	}
	return s;
}

void
PersonaProfileTraitsCombine(ProfileTraits *into, const ProfileTraits *from)
{
	for (int i = 0; i < from->nstates; i++)
	{
		const TraitState *f = from->states[i];
		TraitState *s = PersonaProfileTraitsFind(into, f->trait_id);

		if (s == NULL)
		{
			s = palloc0(sizeof(TraitState));
			s->trait_id = f->trait_id;
			s->kind = f->kind;
			s->window_us = f->window_us;
			s->bucket_us = f->bucket_us;
			ProfileTraitsAppend(into, s);
		}
		else if (s->kind != f->kind || s->bucket_us != f->bucket_us)
			CheckState(false);
		PersonaTraitCombine(s, f);
	}
}

/*
 * Two scratch buffers that live as long as the backend, so that writing the
 * states of many profiles allocates only the results.
 */
static StringInfo
ScratchBuffer(int which)
{
	static StringInfo scratch[2];

	if (scratch[which] == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		scratch[which] = makeStringInfo();
		MemoryContextSwitchTo(old);
	}
	resetStringInfo(scratch[which]);
	return scratch[which];
}

/*
 * Is the trait still defined?  Ids only grow, so an id above every id this
 * backend knows belongs to a trait defined after its list was read: keep it.
 */
static bool
TraitDefined(const TraitCatalog *tc, int32 trait_id)
{
	if (trait_id > tc->max_trait_id)
		return true;
	for (int i = 0; i < tc->ndefs; i++)
		if (tc->defs[i].trait_id == trait_id)
			return true;
	return false;
}

/* The profile-states bytes of ``n`` states (see the top of the file). */
static bytea *
EncodeStates(TraitState *const *states, int n)
{
	StringInfo	body = ScratchBuffer(0);
	StringInfo	entry = ScratchBuffer(1);
	StringInfoData head;
	char		head_bytes[16];
	int			version = STATE_VERSION_OLDEST;
	bytea	   *result;

	for (int i = 0; i < n; i++)
	{
		if (states[i]->spans != NULL && states[i]->nvalues > 0)
			version = STATE_VERSION;
		resetStringInfo(entry);
		SendState(entry, states[i]);
		SendVarint(body, entry->len);
		appendBinaryStringInfo(body, entry->data, entry->len);
	}

	/*
	 * The version and the count of states (at most 11 bytes), then the
	 * states.
	 */
	head.data = head_bytes;
	head.len = 0;
	head.maxlen = sizeof(head_bytes);
	head.cursor = 0;
	appendStringInfoCharMacro(&head, (char) version);
	SendVarint(&head, n);
	result = palloc(VARHDRSZ + head.len + body->len);
	SET_VARSIZE(result, VARHDRSZ + head.len + body->len);
	memcpy(VARDATA(result), head.data, head.len);
	memcpy(VARDATA(result) + head.len, body->data, body->len);
	return result;
}

/*
 * The bytes of a profile's states, leaving out traits that were dropped and
 * buckets that can no longer count.  NULL when nothing is left.
 */
bytea *
PersonaProfileTraitsSerialize(const ProfileTraits *pt, TimestampTz now)
{
	const TraitCatalog *tc = PersonaTraitCatalog();
	TraitState **kept = palloc(sizeof(TraitState *) * Max(pt->nstates, 1));
	int			n = 0;
	bytea	   *result;

	for (int i = 0; i < pt->nstates; i++)
	{
		TraitState *s = pt->states[i];

		if (!TraitDefined(tc, s->trait_id))
			continue;
		TraitPrune(s, now);
		kept[n++] = s;
	}
	result = n == 0 ? NULL : EncodeStates(kept, n);
	pfree(kept);
	return result;
}

/*
 * The earliest time after ``now`` at which a windowed trait of these states
 * reads differently with no new event: a bucket leaves its window, or a
 * bucket dated in the future enters it.  0 when no value will change.
 */
TimestampTz
PersonaProfileTraitsNextChange(const ProfileTraits *pt, TimestampTz now)
{
	TimestampTz next = 0;

	for (int i = 0; i < pt->nstates; i++)
	{
		const TraitState *s = pt->states[i];

		if (s->window_us == 0)
			continue;
		for (int c = 0; c < s->ncells; c++)
		{
			TimestampTz start = s->cells[c].bucket * s->bucket_us;
			TimestampTz at = start > now ? start
			: start + s->bucket_us + s->window_us;

			if (s->cells[c].n > 0 && at > now && (next == 0 || at < next))
				next = at;
		}
		for (int j = 0; j < s->nvalues; j++)
		{
			const DistinctSpan *sp = &s->spans[j];
			TimestampTz at = sp->first > now ? sp->first : sp->last + s->window_us;

			if (at > now && (next == 0 || at < next))
				next = at;
		}
	}
	return next;
}

/* ---------------------------------------------------------------------
 * SQL: merging states, reading values
 * --------------------------------------------------------------------- */

/* The states of two profiles' events as one (identity merge, ingest). */
PG_FUNCTION_INFO_V1(persona_state_merge);
Datum
persona_state_merge(PG_FUNCTION_ARGS)
{
	ProfileTraits *pt;
	bytea	   *result;

	if (PG_ARGISNULL(0) && PG_ARGISNULL(1))
		PG_RETURN_NULL();
	pt = PersonaProfileTraitsParse(PG_ARGISNULL(0) ? NULL : PG_GETARG_BYTEA_PP(0));
	if (!PG_ARGISNULL(1))
		PersonaProfileTraitsCombine(pt, PersonaProfileTraitsParse(PG_GETARG_BYTEA_PP(1)));
	result = PersonaProfileTraitsSerialize(pt, GetCurrentTransactionStartTimestamp());
	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(result);
}

/* When the windowed traits of a profile's states next change by themselves. */
PG_FUNCTION_INFO_V1(persona_next_change);
Datum
persona_next_change(PG_FUNCTION_ARGS)
{
	TimestampTz next;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	next = PersonaProfileTraitsNextChange(PersonaProfileTraitsParse(PG_GETARG_BYTEA_PP(0)),
										  GetCurrentTransactionStartTimestamp());
	if (next == 0)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(next);
}

/* Replaces one trait's state in a profile's states (backfill). */
PG_FUNCTION_INFO_V1(persona_state_put);
Datum
persona_state_put(PG_FUNCTION_ARGS)
{
	ProfileTraits *pt = PersonaProfileTraitsParse(PG_ARGISNULL(0) ? NULL : PG_GETARG_BYTEA_PP(0));
	ProfileTraits *one;
	bytea	   *result;

	if (!PG_ARGISNULL(1))
	{
		one = PersonaProfileTraitsParse(PG_GETARG_BYTEA_PP(1));
		for (int i = 0; i < one->nstates; i++)
		{
			TraitState *s = one->states[i];
			bool		replaced = false;

			for (int j = 0; j < pt->nstates; j++)
				if (pt->states[j]->trait_id == s->trait_id)
				{
					pt->states[j] = s;
					replaced = true;
				}
			if (!replaced)
				ProfileTraitsAppend(pt, s);
		}
	}
	result = PersonaProfileTraitsSerialize(pt, GetCurrentTransactionStartTimestamp());
	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(result);
}

/* The value of one trait now, or NULL when the profile has no state. */
#define KIND_BIT(k) (1 << (k))

/*
 * The states of the last profile read, parsed.  A row of persona.traits or
 * a segment evaluation reads several traits of one profile in a row: they
 * share one parse.  Keyed by the bytes themselves, never by a pointer.
 */
ProfileTraits *
PersonaParsedStates(bytea *blob)
{
	static MemoryContext cxt = NULL;
	static char *bytes = NULL;
	static Size nbytes = 0;
	static ProfileTraits *parsed = NULL;
	Size		len = VARSIZE_ANY_EXHDR(blob);
	MemoryContext old;

	if (parsed != NULL && len == nbytes && memcmp(bytes, VARDATA_ANY(blob), len) == 0)
		return parsed;
	if (cxt == NULL)
		cxt = AllocSetContextCreate(TopMemoryContext, "persona parsed states",
									ALLOCSET_SMALL_SIZES);
	parsed = NULL;
	MemoryContextReset(cxt);
	old = MemoryContextSwitchTo(cxt);
	bytes = palloc(Max(len, 1));
	memcpy(bytes, VARDATA_ANY(blob), len);
	nbytes = len;
	parsed = PersonaProfileTraitsParse(blob);
	MemoryContextSwitchTo(old);
	return parsed;
}

static Datum
StateValue(FunctionCallInfo fcinfo, int kinds, bool *isnull)
{
	ProfileTraits *pt;
	TraitState *s;
	int32		trait_id = PG_GETARG_INT32(1);
	const TraitCatalog *tc;

	*isnull = true;
	if (!PG_ARGISNULL(0))
	{
		pt = PersonaParsedStates(PG_GETARG_BYTEA_PP(0));
		s = PersonaProfileTraitsFind(pt, trait_id);
		if (s != NULL)
		{
			Datum		v;

			if ((KIND_BIT(s->kind) & kinds) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("trait %d is a %s, not read with this function",
								trait_id, kind_names[s->kind])));
			v = PersonaTraitValue(s, GetCurrentTransactionStartTimestamp(), isnull);

			/*
			 * The cached states outlive this call's memory; the value must
			 * not.
			 */
			if (!*isnull && (s->kind == TRAIT_FIRST || s->kind == TRAIT_LAST))
				v = PointerGetDatum(DatumGetTextPCopy(v));
			else if (!*isnull && s->kind != TRAIT_COUNT && s->kind != TRAIT_COUNT_DISTINCT)
				v = datumCopy(v, false, -1);
			return v;
		}
	}

	/* No events yet: what the trait reads over no events. */
	tc = PersonaTraitCatalog();
	for (int i = 0; i < tc->ndefs; i++)
		if (tc->defs[i].trait_id == trait_id)
		{
			s = PersonaTraitStateCreate(&tc->defs[i]);
			if (KIND_BIT(s->kind) & kinds)
				return PersonaTraitValue(s, GetCurrentTransactionStartTimestamp(), isnull);
		}
	return (Datum) 0;
}

/* A count or count_distinct trait of a profile's states. */
PG_FUNCTION_INFO_V1(persona_trait_bigint);
Datum
persona_trait_bigint(PG_FUNCTION_ARGS)
{
	bool		isnull;
	Datum		v = StateValue(fcinfo, KIND_BIT(TRAIT_COUNT) | KIND_BIT(TRAIT_COUNT_DISTINCT),
							   &isnull);

	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(v);
}

/* A sum, avg, min or max trait of a profile's states. */
PG_FUNCTION_INFO_V1(persona_trait_numeric);
Datum
persona_trait_numeric(PG_FUNCTION_ARGS)
{
	bool		isnull;
	Datum		v = StateValue(fcinfo, KIND_BIT(TRAIT_SUM) | KIND_BIT(TRAIT_AVG) |
							   KIND_BIT(TRAIT_MIN) | KIND_BIT(TRAIT_MAX), &isnull);

	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(v);
}

/* A first or last trait of a profile's states. */
PG_FUNCTION_INFO_V1(persona_trait_text);
Datum
persona_trait_text(PG_FUNCTION_ARGS)
{
	bool		isnull;
	Datum		v = StateValue(fcinfo, KIND_BIT(TRAIT_FIRST) | KIND_BIT(TRAIT_LAST), &isnull);

	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(v);
}

/* Every defined trait of a profile's states, as a JSON object. */
PG_FUNCTION_INFO_V1(persona_traits_json);
Datum
persona_traits_json(PG_FUNCTION_ARGS)
{
	PG_RETURN_JSONB_P(PersonaTraitsJson(PG_ARGISNULL(0) ? NULL : PG_GETARG_BYTEA_PP(0)));
}

/* Every defined trait of a profile's states (NULL: none yet), as a JSON object. */
Jsonb *
PersonaTraitsJson(bytea *states)
{
	const TraitCatalog *tc = PersonaTraitCatalog();
	ProfileTraits *pt = PersonaProfileTraitsParse(states);
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	JsonbParseState *state = NULL;
	JsonbValue *res;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < tc->ndefs; i++)
	{
		const TraitDef *d = &tc->defs[i];
		TraitState *s = PersonaProfileTraitsFind(pt, d->trait_id);
		JsonbValue	k;
		JsonbValue	v;
		bool		isnull;
		Datum		val;

		if (s == NULL || s->kind != d->kind)
			s = PersonaTraitStateCreate(d);
		val = PersonaTraitValue(s, now, &isnull);
		k.type = jbvString;
		k.val.string.val = d->name;
		k.val.string.len = strlen(d->name);
		pushJsonbValue(&state, WJB_KEY, &k);
		if (isnull)
			v.type = jbvNull;
		else if (d->kind == TRAIT_COUNT || d->kind == TRAIT_COUNT_DISTINCT)
		{
			v.type = jbvNumeric;
			v.val.numeric = DatumGetNumeric(DirectFunctionCall1(int8_numeric, val));
		}
		else if (d->kind == TRAIT_FIRST || d->kind == TRAIT_LAST)
		{
			text	   *t = DatumGetTextPP(val);

			v.type = jbvString;
			v.val.string.val = VARDATA_ANY(t);
			v.val.string.len = VARSIZE_ANY_EXHDR(t);
		}
		else
		{
			v.type = jbvNumeric;
			v.val.numeric = DatumGetNumeric(val);
		}
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	res = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/* ---------------------------------------------------------------------
 * SQL: the backfill aggregate
 *
 * persona.trait_agg(trait_id, aggregate, time_window, property,
 *                   occurred_at, event_id, properties) -> bytea
 * returns one trait's state in the profile-states format, for
 * persona.state_put.
 * --------------------------------------------------------------------- */

typedef struct TraitAggState
{
	TraitDef	def;
	TraitState *state;
} TraitAggState;

static TraitAggState *
TraitAggStateCreate(FunctionCallInfo fcinfo, MemoryContext agg)
{
	MemoryContext old = MemoryContextSwitchTo(agg);
	TraitAggState *a = palloc0(sizeof(TraitAggState));

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("trait_id and aggregate must not be null")));
	a->def.trait_id = PG_GETARG_INT32(1);
	a->def.kind = PersonaTraitKindFromName(text_to_cstring(PG_GETARG_TEXT_PP(2)));
	if (a->def.kind == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown trait aggregate")));
	if (!PG_ARGISNULL(3))
	{
		a->def.window_us = PersonaTraitIntervalUs(PG_GETARG_INTERVAL_P(3));
		a->def.bucket_us = BucketWidth(a->def.window_us);
	}
	a->def.property = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));
	a->state = PersonaTraitStateCreate(&a->def);
	MemoryContextSwitchTo(old);
	return a;
}

/* Transition: folds one event into the aggregate's state. */
PG_FUNCTION_INFO_V1(persona_trait_agg_add);
Datum
persona_trait_agg_add(PG_FUNCTION_ARGS)
{
	MemoryContext agg;
	MemoryContext old;
	TraitAggState *a;

	if (!AggCheckCallContext(fcinfo, &agg))
		elog(ERROR, "persona_trait_agg_add called in non-aggregate context");
	a = PG_ARGISNULL(0) ? TraitAggStateCreate(fcinfo, agg) : (TraitAggState *) PG_GETARG_POINTER(0);
	if (!PG_ARGISNULL(5))
	{
		old = MemoryContextSwitchTo(agg);
		PersonaTraitAdd(a->state, &a->def, PG_GETARG_TIMESTAMPTZ(5),
						PG_ARGISNULL(6) ? 0 : PG_GETARG_INT64(6),
						PG_ARGISNULL(7) ? NULL : PG_GETARG_JSONB_P(7),
						GetCurrentTransactionStartTimestamp());
		MemoryContextSwitchTo(old);
	}
	PG_RETURN_POINTER(a);
}

/* Combine: two partial states of one trait (parallel aggregation). */
PG_FUNCTION_INFO_V1(persona_trait_agg_combine);
Datum
persona_trait_agg_combine(PG_FUNCTION_ARGS)
{
	MemoryContext agg;
	MemoryContext old;
	TraitAggState *a;
	TraitAggState *b;

	if (!AggCheckCallContext(fcinfo, &agg))
		elog(ERROR, "persona_trait_agg_combine called in non-aggregate context");
	if (PG_ARGISNULL(1))
		PG_RETURN_POINTER(PG_ARGISNULL(0) ? NULL : PG_GETARG_POINTER(0));
	b = (TraitAggState *) PG_GETARG_POINTER(1);
	if (PG_ARGISNULL(0))
	{
		old = MemoryContextSwitchTo(agg);
		a = palloc0(sizeof(TraitAggState));
		a->def = b->def;
		a->state = palloc0(sizeof(TraitState));
		a->state->trait_id = b->state->trait_id;
		a->state->kind = b->state->kind;
		a->state->window_us = b->state->window_us;
		a->state->bucket_us = b->state->bucket_us;
		MemoryContextSwitchTo(old);
	}
	else
		a = (TraitAggState *) PG_GETARG_POINTER(0);
	old = MemoryContextSwitchTo(agg);
	PersonaTraitCombine(a->state, b->state);
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(a);
}

/* Serialize: a partial state to bytes (definition, then the state). */
PG_FUNCTION_INFO_V1(persona_trait_agg_serialize);
Datum
persona_trait_agg_serialize(PG_FUNCTION_ARGS)
{
	TraitAggState *a = (TraitAggState *) PG_GETARG_POINTER(0);
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendstring(&buf, a->def.property ? a->def.property : "");
	pq_sendbyte(&buf, a->def.property != NULL);
	SendState(&buf, a->state);
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/* Deserialize: the inverse of persona_trait_agg_serialize. */
PG_FUNCTION_INFO_V1(persona_trait_agg_deserialize);
Datum
persona_trait_agg_deserialize(PG_FUNCTION_ARGS)
{
	bytea	   *b = PG_GETARG_BYTEA_PP(0);
	TraitAggState *a = palloc0(sizeof(TraitAggState));
	StringInfoData buf;
	const char *property;

	if (!AggCheckCallContext(fcinfo, NULL))
		elog(ERROR, "persona_trait_agg_deserialize called in non-aggregate context");
	buf.data = VARDATA_ANY(b);
	buf.len = buf.maxlen = VARSIZE_ANY_EXHDR(b);
	buf.cursor = 0;
	property = pq_getmsgstring(&buf);
	if (pq_getmsgbyte(&buf))
		a->def.property = pstrdup(property);
	a->state = RecvState(&buf, STATE_VERSION);
	a->def.trait_id = a->state->trait_id;
	a->def.kind = a->state->kind;
	a->def.window_us = a->state->window_us;
	a->def.bucket_us = a->state->bucket_us;
	PG_RETURN_POINTER(a);
}

/* Final: the state in the profile-states format. */
PG_FUNCTION_INFO_V1(persona_trait_agg_final);
Datum
persona_trait_agg_final(PG_FUNCTION_ARGS)
{
	TraitAggState *a;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	a = (TraitAggState *) PG_GETARG_POINTER(0);
	PG_RETURN_BYTEA_P(EncodeStates(&a->state, 1));
}
