/*
 * ingest.h
 *	  Internal declarations of the event path, shared by its phases and by
 *	  nothing else (persona.h has what other modules need):
 *
 *	- idmap.c: what this backend knows about ids, and its transaction,
 *	  subtransaction and relcache callbacks;
 *	- ingest_row.c: the row triggers: checks, identity lookup, folding;
 *	- ingest_apply.c: the statement trigger: new identities, new profiles,
 *	  profile updates, segment refresh;
 *	- track.c: persona_track, which runs both phases itself;
 *	- ingest.c: what the triggers share.
 */
#ifndef PERSONA_INGEST_H
#define PERSONA_INGEST_H

#include "postgres.h"

#include "access/htup.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "port/pg_bswap.h"
#include "utils/timestamp.h"

#include "traits.h"
#include "triggers.h"

/*
 * What this backend knows about an id: the profile it resolves to, and
 * whether its identity row is still to be written (pending).
 *
 * The map outlives transactions, so that a stream of events for known people
 * costs no index lookup.  It is emptied when it could hold something false:
 * at the abort of a (sub)transaction, which may undo identities this backend
 * wrote, and when persona.identities rows are updated or deleted anywhere
 * (merge, forget), announced by a relcache invalidation.  An entry made stale
 * by a merge that this backend has not heard of yet is still safe: the rows
 * land on the absorbed profile and persona_events_apply follows the merge.
 */
typedef struct IdEntry
{
	int64		profile_id;
	bool		pending;
	bool		is_user;		/* came from user_id rather than anonymous_id */
	SubTransactionId created_in;	/* where the entry was made */
	SubTransactionId written_in;	/* where its identity row was written */
	struct ProfileDelta *delta; /* its profile's delta in the folds of ... */
	uint64		delta_folds;	/* ... this generation (see RowFolds) */
	char		id[FLEXIBLE_ARRAY_MEMBER];	/* NUL-terminated, the map's key:
											 * beside the entry, one cache
											 * line for a lookup */
} IdEntry;

/* The statement's rows of one profile, folded. */
typedef struct ProfileDelta
{
	int64		profile_id;		/* the deltas' key */
	int64		events;
	TimestampTz first_seen;
	TimestampTz last_seen;
	IdEntry    *new_id;			/* identity to write, when pending */
	ProfileTraits *traits;		/* computed trait states, or NULL */
	bool		written;		/* the upsert created or updated it */
	bool		created;		/* this statement created the profile */
	HeapTuple	row;			/* the profile's row as written, for the
								 * segments; NULL: fetch it again */
} ProfileDelta;

/*
 * The id map and the deltas are simplehash tables (open addressing, keys
 * inline): a bulk statement looks them up once or twice per row, and
 * dynahash's chains of separately allocated entries cost a cache miss per
 * step.  Entries point to their IdEntry or ProfileDelta, which never move.
 */
typedef struct IdSlot
{
	const char *id;				/* the entry's id */
	uint32		hash;
	char		status;
	IdEntry    *entry;
} IdSlot;

#define SH_PREFIX		idmap
#define SH_ELEMENT_TYPE	IdSlot
#define SH_KEY_TYPE		const char *
#define SH_KEY			id
#define SH_HASH_KEY(tb, key)	hash_bytes((const unsigned char *) (key), strlen(key))
#define SH_EQUAL(tb, a, b)		(strcmp((a), (b)) == 0)
#define SH_STORE_HASH
#define SH_GET_HASH(tb, a)		((a)->hash)
#define SH_SCOPE		static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

/* Deltas by profile id. */
typedef struct PidSlot
{
	int64		profile_id;
	char		status;
	ProfileDelta *delta;
} PidSlot;

#define SH_PREFIX		pidmap
#define SH_ELEMENT_TYPE	PidSlot
#define SH_KEY_TYPE		int64
#define SH_KEY			profile_id
#define SH_HASH_KEY(tb, key)	murmurhash32((uint32) ((uint64) (key) ^ ((uint64) (key) >> 32)))
#define SH_EQUAL(tb, a, b)		((a) == (b))
#define SH_SCOPE		static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

/* The delta of a profile, allocated (uninitialized but for its key) if new. */
static inline ProfileDelta *
EnterDelta(pidmap_hash *deltas, int64 profile_id, bool *found)
{
	PidSlot    *slot = pidmap_insert(deltas, profile_id, found);

	if (!*found)
	{
		slot->delta = palloc(sizeof(ProfileDelta));
		slot->delta->profile_id = profile_id;
	}
	return slot->delta;
}

/* Past this many ids the map starts over, bounding its memory. */
#define ID_MAP_MAX_ENTRIES 200000

/*
 * The id map and its bookkeeping (idmap.c).  The row trigger reads and
 * extends the map directly, the way it did when all of ingest was one file:
 * one lookup per row, no call.
 */
typedef struct IdMapState
{
	MemoryContext cxt;			/* holds the map and its entries */
	idmap_hash *map;			/* NULL when empty */
	int			pending;		/* entries whose identity row is not written */
	bool		stale;			/* an invalidation arrived: see IdMapPrune */
	Oid			relid;			/* persona.identities when filled */
	bool		in_own_subxact; /* see OwnSubxact (ingest_apply.c) */
} IdMapState;

extern IdMapState PersonaIdMap;

extern void PersonaIdMapCreate(void);
extern void PersonaIdMapForget(void);
extern void PersonaIdMapPruneStale(void);
extern void PersonaIdMapInit(void);

/* The map, emptied first when ``fresh``. */
static inline idmap_hash *
IdMapGet(bool fresh)
{
	if (fresh)
		PersonaIdMapForget();
	if (PersonaIdMap.map == NULL)
		PersonaIdMapCreate();
	return PersonaIdMap.map;
}

/*
 * Invalidation can arrive in the middle of a statement, while deltas point
 * into the map: it only marks the map stale, and this drops what is stale
 * at the next safe point.
 */
static inline void
IdMapPrune(void)
{
	if (PersonaIdMap.stale)
		PersonaIdMapPruneStale();
}

/*
 * A new id of a statement, to sort: its first 16 bytes as two big-endian
 * integers (zero padded, which keeps bytewise order), so that most
 * comparisons never touch the strings, its entry, and its delta with that
 * delta's profile id (so that writing the identity does not visit the
 * delta).  Recorded as the row trigger folds the id's first row.
 */
typedef struct SortedId
{
	uint64		prefix[2];
	IdEntry    *entry;
	ProfileDelta *delta;
	int64		profile_id;
} SortedId;

static inline void
FillSortedId(SortedId *s, ProfileDelta *d)
{
	char		bytes[16] = {0};
	uint64		word[2];

	strncpy(bytes, d->new_id->id, sizeof(bytes));
	memcpy(word, bytes, sizeof(word));
	s->prefix[0] = pg_ntoh64(word[0]);
	s->prefix[1] = pg_ntoh64(word[1]);
	s->entry = d->new_id;
	s->delta = d;
	s->profile_id = d->profile_id;
}

/*
 * The rows of persona.events inserted but not yet applied to their profiles,
 * folded per profile as they come in: by the BEFORE ROW trigger for a row
 * it knows will be inserted as it saw it (see persona_events_resolve), by
 * the AFTER ROW trigger persona_events_confirm for any other row.
 * persona_events_apply takes them at the end of the statement.
 *
 * Rows inserted in a subtransaction go away with it, so folds are kept per
 * subtransaction, newest first.  An abort drops the folds of the
 * subtransaction and of its children, whose ids are all larger (ids grow
 * within a transaction, and a subtransaction that began after the aborting
 * one did is its child).  A committed subtransaction's folds pass to its
 * parent.  A statement trigger takes the folds of its own subtransaction;
 * those of an enclosing one wait for the enclosing statement's trigger.
 */
typedef struct RowFolds
{
	uint64		generation;		/* unique in the backend: IdEntry.delta_folds */
	SubTransactionId subid;
	MemoryContext cxt;			/* holds the folds; under
								 * TopTransactionContext */
	pidmap_hash *deltas;
	const TraitCatalog *traits; /* the definitions the folds used (compared
								 * only) */
	int			ntraits;
	bool	   *touched;		/* per definition: fed by a row */
	List	   *touched_names;	/* the names of those, copied */
	SortedId   *fresh;			/* the deltas given a pending id, in order */
	int			nfresh;
	int			maxfresh;
	bool		merged;			/* TakeFolds merged others in: fresh is
								 * partial */
	TriggerEventTypes *trigger_types;	/* NULL: no trigger on an event type */
	TriggerFiring *firings;		/* rows of those types, in order */
	int			nfirings;
	int			maxfirings;
	struct RowFolds *outer;		/* older folds */
} RowFolds;

/* ingest_row.c */
extern void PersonaIngestCloseIdentityScan(void);
extern void PersonaIngestForgetIdentityScan(SubTransactionId subid);
extern void PersonaIngestCombineDeltas(ProfileDelta *into, const ProfileDelta *from);
extern RowFolds *PersonaIngestTakeFolds(void);
extern bool PersonaIngestHasFolds(void);
extern void PersonaIngestForgetFolds(void);
extern void PersonaIngestEndStatement(void);
extern void PersonaIngestForgetStatements(SubTransactionId subid);
extern void PersonaIngestCommitFolds(SubTransactionId mySubid, SubTransactionId parentSubid);
extern bool PersonaIngestAbortFolds(SubTransactionId mySubid);
extern void PersonaIngestTrackRow(Relation rel, Datum *values, bool *nulls);

/* ingest_apply.c */
extern void PersonaIngestApply(void);

/* track.c */
extern void PersonaTrackInit(void);

/* ingest.c */
extern TriggerData *PersonaIngestRequireInsertTrigger(FunctionCallInfo fcinfo, bool before,
													  bool row, const char *usage);

#endif							/* PERSONA_INGEST_H */
