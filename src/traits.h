/*
 * traits.h
 *	  Computed traits: the definitions, and the state of each aggregate.
 *
 * One implementation of each aggregate's state serves three uses: live
 * maintenance in the ingest trigger (PersonaTraitAdd), backfill as a custom
 * aggregate, and identity merges (PersonaTraitCombine).
 */
#ifndef PERSONA_TRAITS_H
#define PERSONA_TRAITS_H

#include "postgres.h"

#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

typedef enum TraitKind
{
	TRAIT_COUNT = 1,
	TRAIT_SUM,
	TRAIT_MIN,
	TRAIT_MAX,
	TRAIT_AVG,
	TRAIT_FIRST,
	TRAIT_LAST,
	TRAIT_COUNT_DISTINCT
} TraitKind;

/* A sliding window is counted in this many buckets. */
#define TRAIT_WINDOW_BUCKETS	60

/*
 * count_distinct is exact up to this many values per profile (a windowed one:
 * this many spans).
 */
#define TRAIT_DISTINCT_EXACT	128
#define TRAIT_HLL_REGISTERS		256

/* One row of persona.trait_defs, as the C code needs it. */
typedef struct TraitDef
{
	int32		trait_id;
	TraitKind	kind;
	char	   *name;
	char	   *event_type;
	char	   *property;		/* NULL: none */
	int64		window_us;		/* 0: lifetime */
	int64		bucket_us;		/* 0: lifetime */
} TraitDef;

typedef struct TraitCatalog
{
	int			ndefs;
	TraitDef   *defs;			/* ordered by trait_id */
	int32		max_trait_id;
} TraitCatalog;

/* One bucket of a windowed trait, or the whole lifetime (bucket 0). */
typedef struct TraitCell
{
	int64		bucket;
	int64		n;				/* values counted */
	Numeric		num;			/* sum (sum, avg), min or max; NULL if n = 0 */
	TimestampTz at;				/* first, last: when */
	int64		seq;			/* first, last: event id, the tie-break */
	text	   *str;			/* first, last: the value */
} TraitCell;

/*
 * A windowed count_distinct keeps, for each value, its spans: runs of
 * occurrences at most a window apart, from the first to the last.  The
 * value counts at ``now`` while a span holds an occurrence in
 * (now - window, now], that is from ``first`` until ``last`` + window.
 */
typedef struct DistinctSpan
{
	TimestampTz first;
	TimestampTz last;
} DistinctSpan;

/* The state of one trait for one profile. */
typedef struct TraitState
{
	int32		trait_id;
	uint8		kind;			/* a TraitKind, in a byte: see ``one`` */
	bool		truncated;		/* count_distinct, windowed, past the bound: a
								 * lower bound */
	int64		window_us;
	int64		bucket_us;
	int64		skipped;		/* values that were not numbers */
	int			ncells;
	int			maxcells;
	TraitCell  *cells;			/* ordered by bucket; at first ``one`` */

	/*
	 * The first cell: a lifetime state's only one.  With it the state takes
	 * 128 bytes, one allocation chunk of exactly its size.
	 */
	TraitCell	one;

	/*
	 * count_distinct: value hashes; windowed, one per span, ordered by (hash,
	 * first), the spans of one value more than a window apart
	 */
	int			nvalues;
	int			maxvalues;
	uint64	   *hashes;
	DistinctSpan *spans;		/* windowed: the span of each entry */
	uint8	   *hll;			/* lifetime, past TRAIT_DISTINCT_EXACT values */
} TraitState;

/*
 * A profile's first states fit in the struct itself, which then takes 64
 * bytes, one allocation chunk of about its size.
 */
#define PROFILE_TRAITS_INLINE	3

/* Every trait state of one profile. */
typedef struct ProfileTraits
{
	int			nstates;
	int			maxstates;
	TraitState **states;		/* at first the inline arrays below */
	int32	   *ids;			/* states[i]->trait_id, found without a visit */
	TraitState *inline_states[PROFILE_TRAITS_INLINE];
	int32		inline_ids[PROFILE_TRAITS_INLINE];
} ProfileTraits;

extern const TraitCatalog *PersonaTraitCatalog(void);
extern Jsonb *PersonaTraitsJson(bytea *states);
extern TraitKind PersonaTraitKindFromName(const char *name);
extern int64 PersonaTraitIntervalUs(const Interval *w);

extern TraitState *PersonaTraitStateCreate(const TraitDef *def);
extern void PersonaTraitAdd(TraitState *state, const TraitDef *def, TimestampTz at,
							int64 event_id, Jsonb *properties, TimestampTz now);
extern void PersonaTraitCombine(TraitState *into, const TraitState *from);
extern Datum PersonaTraitValue(const TraitState *state, TimestampTz now, bool *isnull);

extern ProfileTraits *PersonaProfileTraitsCreate(void);
extern ProfileTraits *PersonaProfileTraitsParse(bytea *blob);
extern ProfileTraits *PersonaParsedStates(bytea *blob);
extern TraitState *PersonaProfileTraitsFind(ProfileTraits *pt, int32 trait_id);
extern TraitState *PersonaProfileTraitsGet(ProfileTraits *pt, const TraitDef *def);
extern void PersonaProfileTraitsCombine(ProfileTraits *into, const ProfileTraits *from);
extern bytea *PersonaProfileTraitsSerialize(const ProfileTraits *pt, TimestampTz now);
extern TimestampTz PersonaProfileTraitsNextChange(const ProfileTraits *pt, TimestampTz now);

#endif							/* PERSONA_TRAITS_H */
