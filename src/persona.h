/*
 * persona.h
 *	  Declarations shared by persona's modules.
 */
#ifndef PERSONA_H
#define PERSONA_H

#include "postgres.h"

#include "access/attnum.h"
#include "utils/relcache.h"

/* Longest id (user or anonymous) and event type, in bytes. */
#define PERSONA_MAX_ID_BYTES		255
#define PERSONA_MAX_EVENT_TYPE_BYTES 128

/* Sorted arrays of ids (profile ids, message ids). */
static inline int
PersonaCompareInt64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/* The index of value in sorted[0 .. n), or -1. */
static inline int
PersonaFindInt64(const int64 *sorted, int n, int64 value)
{
	const int64 *p = bsearch(&value, sorted, n, sizeof(int64), PersonaCompareInt64);

	return p == NULL ? -1 : (int) (p - sorted);
}

/* GUCs (persona.c) */
extern int	persona_max_event_bytes;
extern bool persona_maintenance;

/*
 * persona_track's apply in progress (track.c): the guard of the maintained
 * tables lets it through as persona.maintenance would.
 */
extern bool persona_applying;

/* OIDs of persona's own relations, looked up once and kept (catalog.c). */
typedef struct PersonaCatalog
{
	Oid			schema;
	Oid			events;
	Oid			profiles;
	Oid			profiles_pkey;
	Oid			identities;
	Oid			identities_pkey;
	Oid			profile_id_seq;
	Oid			event_id_seq;
	Oid			trait_defs;
	Oid			segments;
	Oid			segment_members;
	Oid			segment_members_pkey;
	AttrNumber	member_segment; /* segment_members' columns */
	AttrNumber	member_profile_id;
	Oid			segment_log;
	Oid			segment_source;
	Oid			decision_source;
	Oid			actions;
	Oid			experiments;	/* InvalidOid under 0.1.0's SQL */
	Oid			assignments;	/* likewise */
	Oid			assignments_pkey;	/* likewise */
	Oid			triggers;		/* likewise */
	Oid			trigger_source; /* likewise */
	Oid			messages;		/* likewise */
	AttrNumber	profile_consent;	/* likewise: profiles' consent column */
} PersonaCatalog;

extern const PersonaCatalog *PersonaGetCatalog(void);
extern AttrNumber PersonaRequireColumn(Oid relid, const char *name);
extern void PersonaCatalogInit(void);
extern void PersonaRequireRestorer(Relation rel, const char *column, const char *detail);


struct _SPI_plan;
extern struct _SPI_plan *PersonaKeptPlan(struct _SPI_plan **cache, const char *sql,
										 int nargs, Oid *types, int cursor_options);

/* predicate.c */
struct List;
extern char *PersonaCompilePredicate(const char *predicate, Oid relid,
									 struct List **reads, bool *clock);
struct ExprState;
extern struct ExprState *PersonaPreparePredicate(const char *sql, Oid relid, bool *may_fail);
extern int	PersonaPinSearchPath(void);
extern void PersonaUnpinSearchPath(int level);
extern bool PersonaTryEvaluation(void (*body) (void *arg), void *arg, bool may_fail,
								 ErrorData **error);

/* ingest.c */
extern void PersonaIngestInit(void);

#endif							/* PERSONA_H */
