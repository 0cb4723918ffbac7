/*
 * ingest.c
 *	  The event path: validation, identity resolution and folding per row,
 *	  profile maintenance once per statement, and persona_track.
 *
 * Every way an event comes in (persona_track, INSERT, COPY) runs the same
 * triggers on persona.events:
 *
 *	- persona_events_resolve (BEFORE INSERT FOR EACH ROW) checks the row and
 *	  sets its profile_id.  An id that is not known yet gets a profile id from
 *	  persona.profile_id_seq at once; it is remembered as "pending" in a
 *	  transaction-local map until its identity row is written.  When the row
 *	  is sure to be inserted as the trigger sees it, the trigger also folds
 *	  it into its profile's delta (see MayFoldBefore).
 *	- persona_events_confirm (AFTER INSERT FOR EACH ROW, WHEN the row was not
 *	  folded) folds the other rows, as inserted.
 *	- persona_events_apply (AFTER INSERT FOR EACH STATEMENT) takes the deltas
 *	  and writes each profile once: new identities, then new profiles, then
 *	  updates of the others.
 *
 * Concurrency.  Two transactions may see the same new id at once: both
 * allocate a profile id, the identity insert of the second one meets the
 * first one's row (ON CONFLICT DO NOTHING), and the second moves its rows to
 * the winner's profile.  A merge (identity.sql) may absorb a profile while
 * this statement still holds rows resolved to it: the upsert then recreates
 * a row for a profile that persona.merges says is gone, and the statement
 * moves its rows on to the surviving profile.  Identities and profiles are
 * always written in key order, so concurrent batches cannot deadlock on them.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/visibilitymap.h"
#include "access/xact.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "port/pg_bswap.h"
#include "storage/bufmgr.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "persona.h"
#include "rowwriter.h"
#include "segments.h"
#include "traits.h"

/* Columns of persona.events, by name, for one relation. */
typedef struct EventColumns
{
	Oid			relid;
	AttrNumber	event_id;
	AttrNumber	profile_id;
	AttrNumber	user_id;
	AttrNumber	anonymous_id;
	AttrNumber	event_type;
	AttrNumber	properties;
	AttrNumber	context;
	AttrNumber	occurred_at;
} EventColumns;

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

static MemoryContext IngestContext = NULL;
static idmap_hash *id_map = NULL;
static int	id_map_pending = 0;
static bool id_map_stale = false;
static bool in_own_subxact = false;	/* see OwnSubxact */
static Oid	id_map_relid = InvalidOid;	/* persona.identities when filled */
static EventColumns event_columns;

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

static void
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

static int
CompareSortedIds(const void *a, const void *b)
{
	const SortedId *x = a;
	const SortedId *y = b;

	for (int i = 0; i < 2; i++)
		if (x->prefix[i] != y->prefix[i])
			return x->prefix[i] < y->prefix[i] ? -1 : 1;
	return strcmp(x->entry->id, y->entry->id);
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
	MemoryContext cxt;			/* holds the folds; under TopTransactionContext */
	pidmap_hash *deltas;
	const TraitCatalog *traits; /* the definitions the folds used (compared only) */
	int			ntraits;
	bool	   *touched;		/* per definition: fed by a row */
	List	   *touched_names;	/* the names of those, copied */
	SortedId   *fresh;			/* the deltas given a pending id, in order */
	int			nfresh;
	int			maxfresh;
	bool		merged;			/* TakeFolds merged others in: fresh is partial */
	struct RowFolds *outer;		/* older folds */
} RowFolds;

static RowFolds *row_folds = NULL;
static uint64 row_folds_generation = 0;

/* Plans of the statement-level trigger, prepared once per backend. */
static SPIPlanPtr insert_identities_plan = NULL;
static SPIPlanPtr select_identities_plan = NULL;
static SPIPlanPtr move_events_plan = NULL;
static SPIPlanPtr select_merges_plan = NULL;
static SPIPlanPtr track_plan = NULL;

/* ---------------------------------------------------------------------
 * The transaction-local id map
 * --------------------------------------------------------------------- */

/*
 * An index scan of persona.identities kept open for the rows of one
 * statement: the BEFORE ROW trigger looks up many ids in a row, and opening
 * the relations and the scan once per id would cost more than the lookup.
 * persona_events_apply closes it; an abort forgets it (the resource owner
 * has released what it held).
 */
typedef struct IdentityScan
{
	Relation	rel;			/* NULL when closed */
	Relation	idx;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	Buffer		vmbuffer;		/* visibility map page, or InvalidBuffer */
	MemoryContext cxt;			/* the scan's: btree keeps buffers across rescans */
	Snapshot	snapshot;
	LocalTransactionId lxid;
	CommandId	cid;
	ResourceOwner owner;		/* holds the relations and buffers */
	SubTransactionId subid;		/* of that owner */
} IdentityScan;

static IdentityScan id_scan;

/*
 * Closes the scan, in the resource owner that opened it: a statement run by
 * a function of an enclosing INSERT's rows may be the one to close it.
 */
static void
CloseIdentityScan(void)
{
	ResourceOwner owner = CurrentResourceOwner;

	if (id_scan.rel == NULL)
		return;
	CurrentResourceOwner = id_scan.owner;
	if (BufferIsValid(id_scan.vmbuffer))
		ReleaseBuffer(id_scan.vmbuffer);
	index_endscan(id_scan.scan);
	ExecDropSingleTupleTableSlot(id_scan.slot);
	index_close(id_scan.idx, NoLock);
	table_close(id_scan.rel, NoLock);
	CurrentResourceOwner = owner;
	id_scan.rel = NULL;
}

static void
ForgetIdMap(void)
{
	if (IngestContext != NULL)
		MemoryContextReset(IngestContext);
	id_map = NULL;
	id_map_pending = 0;
	id_map_stale = false;
}

static void
IdMapXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			CloseIdentityScan();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			id_scan.rel = NULL;
			row_folds = NULL;	/* freed with TopTransactionContext */
			ForgetIdMap();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			/* Folds left (events_apply disabled) and pending ids are of no use. */
			row_folds = NULL;
			if (id_map_pending > 0)
				ForgetIdMap();
			break;
		default:
			break;
	}
}

/*
 * Undoes in the id map what the abort of subtransaction ``subid`` undid in
 * the tables, for the folds of enclosing statements, which point to
 * entries: entries made in it or its children go, identity rows written
 * there are pending again.  Memory is kept (folds may point to an entry
 * that leaves the map).
 */
static void
RollBackIdMap(SubTransactionId subid)
{
	idmap_iterator it;
	IdSlot	   *slot;

	if (id_map == NULL)
		return;
	idmap_start_iterate(id_map, &it);
	while ((slot = idmap_iterate(id_map, &it)) != NULL)
	{
		IdEntry    *entry = slot->entry;

		if (entry->created_in >= subid)
		{
			if (entry->pending)
				id_map_pending--;
			entry->pending = false;
			idmap_delete_item(id_map, slot);
		}
		else if (!entry->pending && entry->written_in >= subid)
		{
			entry->pending = true;
			entry->written_in = InvalidSubTransactionId;
			id_map_pending++;
		}
	}
}

static void
IdMapSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	if (in_own_subxact)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (RowFolds *f = row_folds; f != NULL && f->subid >= mySubid; f = f->outer)
			f->subid = parentSubid;
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* The abort released the scan if it was opened there. */
		if (id_scan.rel != NULL && id_scan.subid >= mySubid)
			id_scan.rel = NULL;
		while (row_folds != NULL && row_folds->subid >= mySubid)
		{
			RowFolds   *f = row_folds;

			row_folds = f->outer;
			MemoryContextDelete(f->cxt);
		}
		if (row_folds == NULL)
			ForgetIdMap();
		else
			RollBackIdMap(mySubid);
	}
}

/*
 * Invalidation can arrive in the middle of a statement, while deltas point
 * into the map: it only marks the map stale, and PruneIdMap drops what is
 * stale at the next safe point.
 */
static void
IdMapRelcacheCallback(Datum arg, Oid relid)
{
	if (id_map != NULL && (!OidIsValid(relid) || relid == id_map_relid))
		id_map_stale = true;
}

/* Drops every resolved entry of a stale map; pending ones are our own. */
static void
PruneIdMap(void)
{
	idmap_iterator it;
	IdSlot	   *slot;

	if (!id_map_stale)
		return;
	id_map_stale = false;
	if (id_map_pending == 0 && row_folds == NULL)
	{
		ForgetIdMap();
		return;
	}
	idmap_start_iterate(id_map, &it);
	while ((slot = idmap_iterate(id_map, &it)) != NULL)
		if (!slot->entry->pending)
			idmap_delete_item(id_map, slot);
}

static idmap_hash *
GetIdMap(bool fresh)
{
	if (fresh)
		ForgetIdMap();
	if (id_map == NULL)
	{
		if (IngestContext == NULL)
			IngestContext = AllocSetContextCreate(TopMemoryContext,
												  "persona ingest",
												  ALLOCSET_DEFAULT_SIZES);
		id_map = idmap_create(IngestContext, 1024, NULL);
	}
	return id_map;
}

/* ---------------------------------------------------------------------
 * Row checks
 * --------------------------------------------------------------------- */

static void
ResolveEventColumns(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);

	if (event_columns.relid == relid)
		return;
	event_columns.event_id = PersonaRequireColumn(relid, "event_id");
	event_columns.profile_id = PersonaRequireColumn(relid, "profile_id");
	event_columns.user_id = PersonaRequireColumn(relid, "user_id");
	event_columns.anonymous_id = PersonaRequireColumn(relid, "anonymous_id");
	event_columns.event_type = PersonaRequireColumn(relid, "event_type");
	event_columns.properties = PersonaRequireColumn(relid, "properties");
	event_columns.context = PersonaRequireColumn(relid, "context");
	event_columns.occurred_at = PersonaRequireColumn(relid, "occurred_at");
	event_columns.relid = relid;
}

static inline void
RequireNotNull(bool isnull, const char *column)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s of an event must not be null", column)));
}

/*
 * Copies the id into ``buf`` (PERSONA_MAX_ID_BYTES + 1 bytes) as a C string
 * and returns it, or NULL for a NULL id; rejects empty and over-long ids.
 */
static char *
CheckId(Datum value, bool isnull, const char *column, char *buf)
{
	text	   *t;
	int			len;

	if (isnull)
		return NULL;
	t = DatumGetTextPP(value);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", column),
				 errhint("Pass NULL when the id is not known.")));
	if (len > PERSONA_MAX_ID_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", column),
				 errdetail("The id has %d bytes; the limit is %d.",
						   len, PERSONA_MAX_ID_BYTES)));
	memcpy(buf, VARDATA_ANY(t), len);
	buf[len] = '\0';
	return buf;
}

/*
 * Checks that a jsonb value is an object and returns its size.  Only the
 * root container's header is read, in place: no detoasting copy.
 */
static Size
CheckObject(Datum value, bool isnull, const char *column)
{
	struct varlena *v;
	uint32		header;

	RequireNotNull(isnull, column);
	v = PG_DETOAST_DATUM_PACKED(value);
	if (VARSIZE_ANY_EXHDR(v) < sizeof(uint32))
		elog(ERROR, "invalid jsonb value in %s", column);
	memcpy(&header, VARDATA_ANY(v), sizeof(uint32));
	if ((header & JB_FOBJECT) == 0 || (header & JB_FSCALAR) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s of an event must be a JSON object", column),
				 errhint("Use '{}' for no %s.", column)));
	return VARSIZE_ANY_EXHDR(v) + VARHDRSZ;
}

/* Checks the columns of an event other than its ids. */
static void
CheckEvent(const Datum *values, const bool *nulls)
{
	text	   *type;
	int			len;
	Size		payload;
	int			at = event_columns.occurred_at - 1;

	RequireNotNull(nulls[event_columns.event_type - 1], "event_type");
	type = DatumGetTextPP(values[event_columns.event_type - 1]);
	len = VARSIZE_ANY_EXHDR(type);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event_type must not be empty")));
	if (len > PERSONA_MAX_EVENT_TYPE_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("event_type is too long"),
				 errdetail("The event type has %d bytes; the limit is %d.",
						   len, PERSONA_MAX_EVENT_TYPE_BYTES)));

	payload = CheckObject(values[event_columns.properties - 1],
						  nulls[event_columns.properties - 1], "properties");
	payload += CheckObject(values[event_columns.context - 1],
						   nulls[event_columns.context - 1], "context");
	if (payload > (Size) persona_max_event_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event payload is too large"),
				 errdetail("properties and context take %zu bytes; the limit is %d.",
						   payload, persona_max_event_bytes),
				 errhint("Raise persona.max_event_bytes or send less.")));

	RequireNotNull(nulls[at], "occurred_at");
	if (TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(values[at])))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("occurred_at of an event must be finite")));
}

/* ---------------------------------------------------------------------
 * Identity resolution
 * --------------------------------------------------------------------- */

/*
 * Looks an id up in persona.identities under the active snapshot.  The
 * primary key carries profile_id (INCLUDE), so an id on an all-visible heap
 * page is answered from the index alone, as an index-only scan would.
 */
static bool
LookupIdentity(const PersonaCatalog *cat, const char *id, int64 *profile_id)
{
	ScanKeyData key;
	text	   *t = cstring_to_text(id);
	ItemPointer tid;
	bool		found = false;

	if (id_scan.rel != NULL &&
		(id_scan.snapshot != GetActiveSnapshot() || id_scan.lxid != MyProc->lxid ||
		 id_scan.cid != GetCurrentCommandId(false) ||
		 RelationGetRelid(id_scan.rel) != cat->identities))
		CloseIdentityScan();
	if (id_scan.rel == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(CurTransactionContext);

		id_scan.rel = table_open(cat->identities, AccessShareLock);
		id_scan.idx = index_open(cat->identities_pkey, AccessShareLock);
		id_scan.slot = table_slot_create(id_scan.rel, NULL);
		id_scan.vmbuffer = InvalidBuffer;
		id_scan.cxt = CurTransactionContext;
		id_scan.snapshot = GetActiveSnapshot();
		id_scan.scan = index_beginscan(id_scan.rel, id_scan.idx, id_scan.snapshot, 1, 0);
		id_scan.scan->xs_want_itup = true;
		id_scan.lxid = MyProc->lxid;
		id_scan.cid = GetCurrentCommandId(false);
		id_scan.owner = CurrentResourceOwner;
		id_scan.subid = GetCurrentSubTransactionId();
		MemoryContextSwitchTo(old);
	}

	ScanKeyEntryInitialize(&key, 0, 1, BTEqualStrategyNumber, InvalidOid,
						   id_scan.idx->rd_indcollation[0], F_TEXTEQ,
						   PointerGetDatum(t));
	{
		/* The first rescan of an index-only scan allocates its tuple buffer. */
		MemoryContext old = MemoryContextSwitchTo(id_scan.cxt);

		index_rescan(id_scan.scan, &key, 1, NULL, 0);
		MemoryContextSwitchTo(old);
	}
	while (!found && (tid = index_getnext_tid(id_scan.scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull = true;

		if (id_scan.scan->xs_itup != NULL &&
			id_scan.scan->xs_itupdesc->natts >= 2 &&
			VM_ALL_VISIBLE(id_scan.rel, ItemPointerGetBlockNumber(tid), &id_scan.vmbuffer))
			*profile_id = DatumGetInt64(index_getattr(id_scan.scan->xs_itup, 2,
													  id_scan.scan->xs_itupdesc, &isnull));
		else if (index_fetch_heap(id_scan.scan, id_scan.slot))
		{
			*profile_id = DatumGetInt64(slot_getattr(id_scan.slot, 2, &isnull));
			ExecClearTuple(id_scan.slot);
		}
		found = !isnull;
	}
	pfree(t);
	return found;
}

/*
 * Returns the entry of an event's id, made from persona.identities or, for an
 * id that is not there, with a newly allocated profile id (and pending).
 */
static IdEntry *
ResolveProfile(const char *id, bool is_user)
{
	const PersonaCatalog *cat = PersonaGetCatalog();
	idmap_hash *map;
	IdSlot	   *slot;
	IdEntry    *entry;
	int64		profile_id;
	bool		found;

	PruneIdMap();
	map = GetIdMap(false);
	id_map_relid = cat->identities;
	slot = idmap_lookup(map, id);
	if (slot != NULL)
		return slot->entry;

	if (LookupIdentity(cat, id, &profile_id))
		found = true;
	else
	{
		profile_id = nextval_internal(cat->profile_id_seq, false);
		found = false;
	}

	/* Folds point to entries: the map starts over only when none do. */
	if (map->members >= ID_MAP_MAX_ENTRIES && id_map_pending == 0 && row_folds == NULL)
		map = GetIdMap(true);
	entry = MemoryContextAlloc(IngestContext, offsetof(IdEntry, id) + strlen(id) + 1);
	strcpy(entry->id, id);
	entry->profile_id = profile_id;
	entry->pending = !found;
	entry->is_user = is_user;
	entry->created_in = GetCurrentSubTransactionId();
	entry->written_in = InvalidSubTransactionId;
	entry->delta = NULL;
	entry->delta_folds = 0;
	slot = idmap_insert(map, entry->id, &found);
	slot->entry = entry;
	if (entry->pending)
		id_map_pending++;
	return entry;
}

/* ---------------------------------------------------------------------
 * Folding rows
 * --------------------------------------------------------------------- */

/* Folds ``from`` into ``into`` (same person). */
static void
CombineDeltas(ProfileDelta *into, const ProfileDelta *from)
{
	into->events += from->events;
	if (from->traits != NULL)
	{
		if (into->traits == NULL)
			into->traits = ProfileTraitsCreate();
		ProfileTraitsCombine(into->traits, from->traits);
	}
	if (from->first_seen < into->first_seen)
		into->first_seen = from->first_seen;
	if (from->last_seen > into->last_seen)
		into->last_seen = from->last_seen;
}

/* The folds rows of the current subtransaction go to, made when needed. */
static RowFolds *
CurrentFolds(void)
{
	const TraitCatalog *traits = PersonaTraitCatalog();
	SubTransactionId subid = GetCurrentSubTransactionId();
	RowFolds   *f = row_folds;
	MemoryContext cxt;

	if (f != NULL && f->subid == subid && f->traits == traits && f->ntraits == traits->ndefs)
		return f;
	cxt = AllocSetContextCreate(TopTransactionContext, "persona row folds",
								ALLOCSET_DEFAULT_SIZES);
	f = MemoryContextAllocZero(cxt, sizeof(RowFolds));
	f->generation = ++row_folds_generation;
	f->subid = subid;
	f->cxt = cxt;
	f->deltas = pidmap_create(cxt, 256, NULL);
	f->traits = traits;
	f->ntraits = traits->ndefs;
	f->touched = MemoryContextAllocZero(cxt, Max(traits->ndefs, 1));
	f->outer = row_folds;
	row_folds = f;
	return f;
}

/* Folds one event into the states of the traits defined on its type. */
static void
FoldTraits(RowFolds *f, ProfileDelta *d, const Datum *values, TimestampTz at)
{
	text	   *type = DatumGetTextPP(values[event_columns.event_type - 1]);
	const char *tp = VARDATA_ANY(type);
	int			tlen = VARSIZE_ANY_EXHDR(type);
	Jsonb	   *props = NULL;
	int64		event_id = DatumGetInt64(values[event_columns.event_id - 1]);
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	for (int i = 0; i < f->ntraits; i++)
	{
		const TraitDef *def = &f->traits->defs[i];
		MemoryContext old;

		if (strncmp(def->event_type, tp, tlen) != 0 || def->event_type[tlen] != '\0')
			continue;
		/* Only a trait on a property reads them; detoasted per row. */
		if (props == NULL && def->property != NULL)
			props = DatumGetJsonbP(values[event_columns.properties - 1]);
		old = MemoryContextSwitchTo(f->cxt);
		if (d->traits == NULL)
			d->traits = ProfileTraitsCreate();
		TraitAdd(ProfileTraitsGet(d->traits, def), def, at, event_id, props, now);
		if (!f->touched[i])
		{
			f->touched[i] = true;
			f->touched_names = lappend(f->touched_names, pstrdup(def->name));
		}
		MemoryContextSwitchTo(old);
	}
}

/*
 * Folds an inserted row (deformed, every column valid) into the delta of its
 * profile; ``entry`` is its id's, when that one is pending.
 */
static void
FoldRow(const Datum *values, IdEntry *entry)
{
	RowFolds   *f = CurrentFolds();
	int64		pid = DatumGetInt64(values[event_columns.profile_id - 1]);
	TimestampTz at = DatumGetTimestampTz(values[event_columns.occurred_at - 1]);
	bool		found;
	ProfileDelta *d;

	/* The id's entry remembers its delta: no hash lookup for its next rows. */
	if (entry != NULL && entry->delta_folds == f->generation && entry->delta->profile_id == pid)
	{
		d = entry->delta;
		found = true;
	}
	else
	{
		MemoryContext old = MemoryContextSwitchTo(f->cxt);

		d = EnterDelta(f->deltas, pid, &found);
		MemoryContextSwitchTo(old);
		if (entry != NULL)
		{
			entry->delta = d;
			entry->delta_folds = f->generation;
		}
	}
	if (!found)
	{
		d->events = 0;
		d->first_seen = at;
		d->last_seen = at;
		d->new_id = NULL;
		d->traits = NULL;
		d->written = false;
		d->created = false;
	}
	if (d->new_id == NULL && entry != NULL && entry->pending && entry->profile_id == pid)
	{
		d->new_id = entry;
		if (f->nfresh == f->maxfresh)
		{
			f->maxfresh = Max(64, f->maxfresh * 2);
			f->fresh = f->fresh == NULL
				? MemoryContextAlloc(f->cxt, sizeof(SortedId) * f->maxfresh)
				: repalloc(f->fresh, sizeof(SortedId) * f->maxfresh);
		}
		FillSortedId(&f->fresh[f->nfresh++], d);
	}
	d->events++;
	if (at < d->first_seen)
		d->first_seen = at;
	if (at > d->last_seen)
		d->last_seen = at;
	if (f->ntraits > 0)
		FoldTraits(f, d, values, at);
}

/*
 * Takes the folds of the current subtransaction (and of its committed
 * children), as one: the older ones are merged into the newest, whose
 * context becomes theirs too.  NULL when there are none.
 */
static RowFolds *
TakeFolds(void)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	RowFolds   *taken = NULL;

	while (row_folds != NULL && row_folds->subid >= subid)
	{
		RowFolds   *f = row_folds;
		pidmap_iterator it;
		PidSlot    *slot;
		MemoryContext old;

		row_folds = f->outer;
		if (taken == NULL)
		{
			taken = f;
			continue;
		}
		taken->merged = true;
		MemoryContextSetParent(f->cxt, taken->cxt);
		old = MemoryContextSwitchTo(taken->cxt);
		pidmap_start_iterate(f->deltas, &it);
		while ((slot = pidmap_iterate(f->deltas, &it)) != NULL)
		{
			ProfileDelta *from = slot->delta;
			bool		found;
			ProfileDelta *d = EnterDelta(taken->deltas, from->profile_id, &found);

			if (!found)
				*d = *from;
			else
			{
				CombineDeltas(d, from);
				if (d->new_id == NULL)
					d->new_id = from->new_id;
			}
		}
		taken->touched_names = list_concat(taken->touched_names, f->touched_names);
		MemoryContextSwitchTo(old);
	}
	return taken;
}

/* ---------------------------------------------------------------------
 * BEFORE INSERT FOR EACH ROW
 * --------------------------------------------------------------------- */

/*
 * The trigger data of a trigger function that must be fired by INSERT, at
 * the given timing and level (``usage`` says which, for the error).
 */
static TriggerData *
RequireInsertTrigger(FunctionCallInfo fcinfo, bool before, bool row, const char *usage)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		(TRIGGER_FIRED_BEFORE(trigdata->tg_event) != 0) != before ||
		(TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) != 0) != row ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s", usage)));
	return trigdata;
}

/*
 * The tuple with a bigint column set, when that column and every column
 * before it are fixed-width and not null (profile_id has a default, so it
 * usually is): the value is written at its offset, without the
 * deform-and-form of heap_modify_tuple.  The tuple itself is changed when
 * ``slot`` holds it as its own materialized copy (the executor's slot of the
 * row being inserted; the executor then keeps it as it is, with no copy),
 * else a copy.  NULL when the layout does not allow it.
 */
static HeapTuple
SetInPlace(TupleTableSlot *slot, HeapTuple tuple, TupleDesc desc, int attnum, int64 value)
{
	HeapTupleHeader td = tuple->t_data;
	bool		hasnulls = HeapTupleHasNulls(tuple);
	uint32		off = 0;
	HeapTuple	target = tuple;

	for (int i = 0; i < attnum; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attlen <= 0 || (hasnulls && att_isnull(i, td->t_bits)))
			return NULL;
		off = att_align_nominal(off, att->attalign);
		if (i < attnum - 1)
			off += att->attlen;
	}
	if (TupleDescAttr(desc, attnum - 1)->atttypid != INT8OID)
		return NULL;
	/* Owned means palloc'd by the slot: never a tuple on a shared buffer. */
	if (slot == NULL ||
		!(TTS_IS_HEAPTUPLE(slot) || TTS_IS_BUFFERTUPLE(slot)) ||
		((HeapTupleTableSlot *) slot)->tuple != tuple ||
		(slot->tts_flags & TTS_FLAG_SHOULDFREE) == 0)
		target = heap_copytuple(tuple);
	else
	{
		/* Values the slot already deformed would be stale: deform again. */
		slot->tts_nvalid = 0;
		((HeapTupleTableSlot *) slot)->off = 0;
	}
	memcpy((char *) target->t_data + target->t_data->t_hoff + off, &value, sizeof(int64));
	return target;
}

/* The deformed row of persona_events_resolve, grown as needed. */
static Datum *row_values = NULL;
static bool *row_nulls = NULL;
static int	row_natts = 0;

/*
 * The event id persona.next_event_id() handed out last, for the row being
 * built (0: none since the last row), and the id of the last row the BEFORE
 * ROW trigger folded (0: it folded none).
 */
static int64 default_event_id = 0;
static int64 folded_event_id = 0;
static bool restored_row = false;	/* the last row was stored as is */

/*
 * Whether the BEFORE ROW trigger may fold a row itself: the row will be
 * inserted exactly as the trigger sees it.  That holds when its event_id
 * came from the column default just now (so no unique conflict can skip
 * it, as ON CONFLICT DO NOTHING would) and no BEFORE ROW trigger of another
 * name fires after this one (triggers fire in name order; a later one could
 * change or drop the row).  Any other row is folded by the AFTER ROW
 * trigger, from the row as inserted.
 */
static bool
MayFoldBefore(TriggerData *trigdata, int64 event_id)
{
	const TriggerDesc *td = trigdata->tg_relation->trigdesc;
	const Trigger *mine = trigdata->tg_trigger;
	bool		fresh = event_id != 0 && event_id == default_event_id;

	default_event_id = 0;
	if (!fresh)
		return false;
	for (int i = 0; i < td->numtriggers; i++)
	{
		const Trigger *t = &td->triggers[i];

		if (t->tgoid != mine->tgoid &&
			TRIGGER_TYPE_MATCHES(t->tgtype, TRIGGER_TYPE_ROW,
								 TRIGGER_TYPE_BEFORE, TRIGGER_TYPE_INSERT) &&
			strcmp(t->tgname, mine->tgname) > 0)
			return false;
	}
	return true;
}

/* Checks an incoming event, sets its profile_id and folds it when it may. */
PG_FUNCTION_INFO_V1(persona_events_resolve);
Datum
persona_events_resolve(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = RequireInsertTrigger(fcinfo, true, true,
												 "persona_events_resolve must be fired BEFORE INSERT FOR EACH ROW");
	HeapTuple	tuple;
	HeapTuple	result;
	TupleDesc	desc;
	char	   *user_id;
	char	   *anonymous_id;
	char		user_buf[PERSONA_MAX_ID_BYTES + 1];
	char		anonymous_buf[PERSONA_MAX_ID_BYTES + 1];
	IdEntry    *entry;
	Datum		profile_id;
	bool		isnull = false;
	int			attnum;
	int64		event_id;

	tuple = trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);
	ResolveEventColumns(trigdata->tg_relation);
	folded_event_id = 0;
	restored_row = false;

	/* Every column at once: the ids make later offsets uncacheable. */
	if (desc->natts > row_natts)
	{
		row_values = MemoryContextAlloc(TopMemoryContext, sizeof(Datum) * desc->natts);
		row_nulls = MemoryContextAlloc(TopMemoryContext, sizeof(bool) * desc->natts);
		row_natts = desc->natts;
	}
	heap_deform_tuple(tuple, desc, row_values, row_nulls);

	user_id = CheckId(row_values[event_columns.user_id - 1],
					  row_nulls[event_columns.user_id - 1], "user_id", user_buf);
	anonymous_id = CheckId(row_values[event_columns.anonymous_id - 1],
						   row_nulls[event_columns.anonymous_id - 1], "anonymous_id",
						   anonymous_buf);
	if (user_id == NULL && anonymous_id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("an event needs a user_id or an anonymous_id"),
				 errhint("Pass the known user id, or the anonymous id of the device.")));
	CheckEvent(row_values, row_nulls);

	/*
	 * A row that comes with its profile_id is a restored one (pg_dump writes
	 * every column, and the dumped profiles already count it): stored as
	 * is, neither resolved nor folded.  Only the owner of persona.events
	 * may, as a restore runs as the owner; anyone else would attach an event
	 * to a profile without counting it (docs/operations.md).
	 */
	if (!row_nulls[event_columns.profile_id - 1] &&
		DatumGetInt64(row_values[event_columns.profile_id - 1]) != 0)
	{
		PersonaRequireRestorer(trigdata->tg_relation, "profile_id",
							   "The profile of an event is resolved from its user_id or anonymous_id.");
		restored_row = true;
		default_event_id = 0;
		return PointerGetDatum(tuple);
	}

	/* A known user id wins; the anonymous id is kept on the event. */
	if (user_id != NULL)
		entry = ResolveProfile(user_id, true);
	else
		entry = ResolveProfile(anonymous_id, false);
	profile_id = Int64GetDatum(entry->profile_id);

	attnum = event_columns.profile_id;
	result = SetInPlace(trigdata->tg_trigslot, tuple, desc, attnum, entry->profile_id);
	if (result == NULL)
		result = heap_modify_tuple_by_cols(tuple, desc, 1, &attnum, &profile_id, &isnull);

	event_id = row_nulls[event_columns.event_id - 1] ? 0 :
		DatumGetInt64(row_values[event_columns.event_id - 1]);
	if (MayFoldBefore(trigdata, event_id))
	{
		row_values[attnum - 1] = profile_id;
		row_nulls[attnum - 1] = false;
		FoldRow(row_values, entry);
		folded_event_id = event_id;
	}
	return PointerGetDatum(result);
}

/*
 * The default of persona.events.event_id: the next value of
 * persona.event_id_seq, remembered so that the BEFORE ROW trigger knows
 * the row's id is fresh.
 */
PG_FUNCTION_INFO_V1(persona_next_event_id);
Datum
persona_next_event_id(PG_FUNCTION_ARGS)
{
	default_event_id = nextval_internal(PersonaGetCatalog()->event_id_seq, true);
	PG_RETURN_INT64(default_event_id);
}

/*
 * The WHEN condition of the AFTER ROW trigger: whether the BEFORE ROW
 * trigger folded the row just inserted.
 */
PG_FUNCTION_INFO_V1(persona_event_folded);
Datum
persona_event_folded(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(restored_row ||
				   (folded_event_id != 0 && PG_GETARG_INT64(0) == folded_event_id));
}

/*
 * Raises an error when rows of persona.events are folded but not applied
 * yet: a trait defined now (by a function an INSERT calls between its
 * rows) would miss the rows folded before it, which its backfill cannot
 * see applied either.
 */
PG_FUNCTION_INFO_V1(persona_check_ingest_idle);
Datum
persona_check_ingest_idle(PG_FUNCTION_ARGS)
{
	if (row_folds != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s cannot run while an insert into persona.events is in progress",
						text_to_cstring(PG_GETARG_TEXT_PP(0))),
				 errdetail("A statement of this transaction has inserted events that are not applied to their profiles yet."),
				 errhint("Run it before or after that statement, not from a function the statement calls.")));
	PG_RETURN_VOID();
}

/* Folds an inserted row the BEFORE ROW trigger did not fold. */
PG_FUNCTION_INFO_V1(persona_events_confirm);
Datum
persona_events_confirm(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = RequireInsertTrigger(fcinfo, false, true,
												 "persona_events_confirm must be fired AFTER INSERT FOR EACH ROW");
	TupleDesc	desc;
	Datum	   *values;
	bool	   *nulls;
	int			idcol;
	IdSlot	   *slot = NULL;

	desc = RelationGetDescr(trigdata->tg_relation);
	ResolveEventColumns(trigdata->tg_relation);
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	heap_deform_tuple(trigdata->tg_trigtuple, desc, values, nulls);

	/* The id the row resolved by, as persona_events_resolve chose it. */
	idcol = nulls[event_columns.user_id - 1] ? event_columns.anonymous_id : event_columns.user_id;
	if (id_map != NULL && !nulls[idcol - 1])
	{
		char	   *id = TextDatumGetCString(values[idcol - 1]);

		slot = idmap_lookup(id_map, id);
		pfree(id);
	}
	FoldRow(values, slot != NULL ? slot->entry : NULL);
	pfree(values);
	pfree(nulls);
	return PointerGetDatum(NULL);
}

/* ---------------------------------------------------------------------
 * AFTER INSERT FOR EACH STATEMENT
 * --------------------------------------------------------------------- */

static int
CompareDeltas(const void *a, const void *b)
{
	int64		x = (*(ProfileDelta *const *) a)->profile_id;
	int64		y = (*(ProfileDelta *const *) b)->profile_id;

	return (x > y) - (x < y);
}

/*
 * Sorts deltas by profile id.  The ids of the profiles a statement created
 * come from the sequence, nearly consecutive: when they span little more
 * than their count, each is placed at its offset (no comparisons, no
 * visits of the deltas but one); otherwise, a comparison sort.
 */
static void
SortByProfileId(ProfileDelta **list, int n)
{
	int64		lo = PG_INT64_MAX;
	int64		hi = PG_INT64_MIN;
	ProfileDelta **placed;
	int			k = 0;

	for (int i = 0; i < n; i++)
	{
		lo = Min(lo, list[i]->profile_id);
		hi = Max(hi, list[i]->profile_id);
	}
	if (n < 2 || hi - lo >= 4 * (int64) n)
	{
		qsort(list, n, sizeof(ProfileDelta *), CompareDeltas);
		return;
	}
	placed = palloc0(sizeof(ProfileDelta *) * (hi - lo + 1));
	for (int i = 0; i < n; i++)
		placed[list[i]->profile_id - lo] = list[i];	/* ids are distinct */
	for (int64 j = 0; j <= hi - lo; j++)
		if (placed[j] != NULL)
			list[k++] = placed[j];
	Assert(k == n);
	pfree(placed);
}

static void
MoveEvents(int64 from, int64 into)
{
	Datum		args[2] = {Int64GetDatum(from), Int64GetDatum(into)};
	Oid			types[2] = {INT8OID, INT8OID};
	SPIPlanPtr	plan = PersonaKeptPlan(&move_events_plan,
								   "UPDATE persona.events SET profile_id = $2 "
								   "WHERE profile_id = $1",
								   2, types, 0);

	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "moving events of profile " INT64_FORMAT " failed", from);
}

static Datum
BuildArray(Datum *values, bool *nulls, int n, Oid type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs,
											  type, typlen, typbyval, typalign));
}

/*
 * A subtransaction of the statement trigger's own.  Rolling it back undoes
 * rows this statement wrote in it but no id of the map (in_own_subxact keeps
 * IdMapSubXactCallback from forgetting them).
 */
typedef struct OwnSubxact
{
	MemoryContext cxt;
	ResourceOwner owner;
} OwnSubxact;

static void
BeginOwnSubxact(OwnSubxact *sub)
{
	sub->cxt = CurrentMemoryContext;
	sub->owner = CurrentResourceOwner;
	in_own_subxact = true;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(sub->cxt);
}

static void
EndOwnSubxact(const OwnSubxact *sub, bool commit)
{
	if (commit)
		ReleaseCurrentSubTransaction();
	else
		RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(sub->cxt);
	CurrentResourceOwner = sub->owner;
	in_own_subxact = false;
}

/*
 * Statements with at least this many new ids write their identities
 * directly (InsertIdentitiesDirect); fewer go through INSERT ... ON CONFLICT,
 * which costs a speculative insertion per row but no subtransaction.
 */
#define DIRECT_IDENTITIES_MIN 8

/*
 * Writes the identity rows of ``fresh`` (in key order) with plain inserts,
 * in a subtransaction.  A concurrent transaction that created one of the
 * ids first makes the unique index wait for it and then fail: the
 * subtransaction is rolled back, every row it wrote with it, and false
 * returned, for the caller to write the ids one by one with ON CONFLICT.
 * Any other error propagates.
 */
static bool
InsertIdentitiesDirect(const SortedId *fresh, int n)
{
	static const char *const columns[] = {"id", "profile_id", "kind"};
	Oid			relid = PersonaGetCatalog()->identities;
	OwnSubxact	sub;
	bool		written = true;

	BeginOwnSubxact(&sub);
	PG_TRY();
	{
		RowWriter  *w = RowWriterOpen(relid, columns, lengthof(columns));
		Datum		user = CStringGetTextDatum("user");
		Datum		anonymous = CStringGetTextDatum("anonymous");

		for (int i = 0; i < n; i++)
		{
			Datum		values[3];

			values[0] = CStringGetTextDatum(fresh[i].entry->id);
			values[1] = Int64GetDatum(fresh[i].profile_id);
			values[2] = fresh[i].entry->is_user ? user : anonymous;
			RowWriterInsert(w, values, NULL);
			pfree(DatumGetPointer(values[0]));
		}
		RowWriterClose(w);
		EndOwnSubxact(&sub, true);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(sub.cxt);
		edata = CopyErrorData();
		FlushErrorState();
		EndOwnSubxact(&sub, false);
		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION)
			ReThrowError(edata);
		FreeErrorData(edata);
		written = false;
	}
	PG_END_TRY();
	CommandCounterIncrement();
	return written;
}

/*
 * Writes the identity rows of ``fresh`` (in key order) in one
 * INSERT ... ON CONFLICT (id) DO NOTHING; returns how many it wrote.
 */
static uint64
InsertIdentitiesOnConflict(const SortedId *fresh, int n)
{
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *pids = palloc(sizeof(Datum) * n);
	Datum	   *kinds = palloc(sizeof(Datum) * n);
	Datum		args[3];
	Oid			types[3] = {TEXTARRAYOID, INT8ARRAYOID, TEXTARRAYOID};
	SPIPlanPtr	plan;

	for (int i = 0; i < n; i++)
	{
		ids[i] = CStringGetTextDatum(fresh[i].entry->id);
		pids[i] = Int64GetDatum(fresh[i].profile_id);
		kinds[i] = CStringGetTextDatum(fresh[i].entry->is_user ? "user" : "anonymous");
	}
	args[0] = BuildArray(ids, NULL, n, TEXTOID);
	args[1] = BuildArray(pids, NULL, n, INT8OID);
	args[2] = BuildArray(kinds, NULL, n, TEXTOID);

	/* A function scan returns its rows in order, so rows go in key order. */
	plan = PersonaKeptPlan(&insert_identities_plan,
					   "INSERT INTO persona.identities (id, profile_id, kind) "
					   "SELECT u.id, u.profile_id, u.kind "
					   "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
					   "  pg_catalog.unnest($3)) AS u(id, profile_id, kind) "
					   "ON CONFLICT (id) DO NOTHING",
					   3, types, 0);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "writing new identities failed");
	return SPI_processed;
}

/*
 * Ids of ``fresh`` that a concurrent transaction created first keep that
 * transaction's profile: our rows move there and the delta joins the
 * winner's (and leaves ``fresh``, as NULL).
 */
static void
JoinWinners(pidmap_hash *deltas, ProfileDelta **fresh, int n)
{
	Oid			idtype = TEXTOID;
	SPIPlanPtr	plan = PersonaKeptPlan(&select_identities_plan,
									   "SELECT profile_id FROM persona.identities WHERE id = $1",
									   1, &idtype, 0);

	for (int i = 0; i < n; i++)
	{
		ProfileDelta *lost = fresh[i];
		ProfileDelta *winner;
		Datum		id = CStringGetTextDatum(lost->new_id->id);
		bool		found;
		bool		isnull;
		int64		winner_pid;

		if (SPI_execute_plan(plan, &id, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "reading identities failed");
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to a concurrently created identity"),
					 errdetail("The id \"%s\" was created by a concurrent transaction.",
							   lost->new_id->id),
					 errhint("Retry the transaction.")));
		winner_pid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
		if (winner_pid == lost->profile_id)
			continue;

		MoveEvents(lost->profile_id, winner_pid);
		lost->new_id->profile_id = winner_pid;
		winner = EnterDelta(deltas, winner_pid, &found);
		if (found)
			CombineDeltas(winner, lost);
		else
		{
			*winner = *lost;
			winner->profile_id = winner_pid;
		}
		winner->new_id = NULL;
		pidmap_delete(deltas, lost->profile_id);
		fresh[i] = NULL;
	}
}

/*
 * Writes the identity rows of the ids first seen in this statement, in key
 * order, so that concurrent batches cannot deadlock: directly when there
 * are many, else (or when the direct attempt lost a race) with ON CONFLICT,
 * then joining the winners of lost races.  ``fresh`` receives the ids'
 * deltas, NULL where the delta joined a winner's.
 */
static void
WriteNewIdentities(pidmap_hash *deltas, const SortedId *ids, ProfileDelta **fresh, int n)
{
	uint64		written;

	if (n >= DIRECT_IDENTITIES_MIN && InsertIdentitiesDirect(ids, n))
		written = n;
	else
		written = InsertIdentitiesOnConflict(ids, n);
	for (int i = 0; i < n; i++)
	{
		ids[i].entry->pending = false;
		ids[i].entry->written_in = GetCurrentSubTransactionId();
		fresh[i] = ids[i].delta;
	}
	id_map_pending -= n;
	if (written < (uint64) n)
		JoinWinners(deltas, fresh, n);
}

/*
 * The ids the statement's rows saw first, sorted bytewise: the records the
 * row trigger made, or, when TakeFolds merged folds (whose records point to
 * deltas it copied), made again from the deltas.  An id whose identity a
 * statement in between wrote is known: its delta loses it.
 */
static SortedId *
NewIds(RowFolds *folds, int *n)
{
	SortedId   *ids = palloc(sizeof(SortedId) * Max(folds->deltas->members, 1));
	int			k = 0;

	if (!folds->merged)
	{
		for (int i = 0; i < folds->nfresh; i++)
		{
			if (folds->fresh[i].entry->pending)
				ids[k++] = folds->fresh[i];
			else
				folds->fresh[i].delta->new_id = NULL;
		}
	}
	else
	{
		pidmap_iterator it;
		PidSlot    *slot;

		pidmap_start_iterate(folds->deltas, &it);
		while ((slot = pidmap_iterate(folds->deltas, &it)) != NULL)
		{
			ProfileDelta *d = slot->delta;

			if (d->new_id == NULL)
				continue;
			if (d->new_id->pending)
				FillSortedId(&ids[k++], d);
			else
				d->new_id = NULL;
		}
	}
	qsort(ids, k, sizeof(SortedId), CompareSortedIds);
	*n = k;
	return ids;
}

/*
 * What a delta adds to its profile: the trait states of the statement's
 * events (NULL where none) and when those states next change by the clock
 * alone (0: never).  Marks the delta written.
 */
static void
DeltaState(ProfileDelta *d, TimestampTz now, bytea **state, TimestampTz *next)
{
	*state = NULL;
	*next = 0;
	if (d->new_id != NULL)
		d->created = true;
	if (d->traits != NULL)
	{
		*state = ProfileTraitsSerialize(d->traits, now);
		*next = ProfileTraitsNextChange(d->traits, now);
	}
	d->written = true;
}

/*
 * Inserts the profiles whose identities this statement created, in profile
 * order.  Their ids are fresh from the sequence: nobody else can be writing
 * them.
 */
static void
InsertNewProfiles(ProfileDelta **list, int n)
{
	static const char *const columns[] = {
		"profile_id", "first_seen", "last_seen", "event_count", "computed_state",
		"next_change_at", "user_id"
	};
	RowWriter  *w = RowWriterOpen(PersonaGetCatalog()->profiles, columns, lengthof(columns));
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	SortByProfileId(list, n);
	for (int i = 0; i < n; i++)
	{
		ProfileDelta *d = list[i];
		Datum		values[7];
		bool		nulls[7] = {false};
		bytea	   *state;
		TimestampTz next;

		DeltaState(d, now, &state, &next);
		values[0] = Int64GetDatum(d->profile_id);
		values[1] = TimestampTzGetDatum(d->first_seen);
		values[2] = TimestampTzGetDatum(d->last_seen);
		values[3] = Int64GetDatum(d->events);
		values[4] = PointerGetDatum(state);
		nulls[4] = state == NULL;
		values[5] = TimestampTzGetDatum(next);
		nulls[5] = next == 0;
		nulls[6] = !d->new_id->is_user;
		values[6] = nulls[6] ? (Datum) 0 : CStringGetTextDatum(d->new_id->id);
		RowWriterInsert(w, values, nulls);
		if (state != NULL)
			pfree(state);
		if (!nulls[6])
			pfree(DatumGetPointer(values[6]));
	}
	RowWriterClose(w);
	CommandCounterIncrement();
}

/* Columns of persona.profiles that ingest updates, by name. */
typedef struct ProfileColumns
{
	Oid			relid;
	AttrNumber	first_seen;
	AttrNumber	last_seen;
	AttrNumber	event_count;
	AttrNumber	computed_state;
	AttrNumber	next_change_at;
	AttrNumber	updated_at;
} ProfileColumns;

static ProfileColumns profile_columns;

static void
ResolveProfileColumns(Oid relid)
{
	if (profile_columns.relid == relid)
		return;
	profile_columns.first_seen = PersonaRequireColumn(relid, "first_seen");
	profile_columns.last_seen = PersonaRequireColumn(relid, "last_seen");
	profile_columns.event_count = PersonaRequireColumn(relid, "event_count");
	profile_columns.computed_state = PersonaRequireColumn(relid, "computed_state");
	profile_columns.next_change_at = PersonaRequireColumn(relid, "next_change_at");
	profile_columns.updated_at = PersonaRequireColumn(relid, "updated_at");
	profile_columns.relid = relid;
}

/* A delta to add to its profile's row, at the transaction's now(). */
typedef struct ProfileChange
{
	ProfileDelta *delta;
	TimestampTz now;
} ProfileChange;

/*
 * The profile's new row: counts added, first and last seen widened, trait
 * states merged, the earlier of the next changes kept, updated_at = now().
 */
static void
AddDelta(TupleTableSlot *current, Datum *values, bool *nulls, void *arg)
{
	const ProfileChange *change = arg;
	ProfileDelta *d = change->delta;
	const ProfileColumns *pc = &profile_columns;
	int			i;

	i = pc->event_count - 1;
	values[i] = Int64GetDatum((nulls[i] ? 0 : DatumGetInt64(values[i])) + d->events);
	nulls[i] = false;
	i = pc->first_seen - 1;
	if (nulls[i] || d->first_seen < DatumGetTimestampTz(values[i]))
		values[i] = TimestampTzGetDatum(d->first_seen);
	nulls[i] = false;
	i = pc->last_seen - 1;
	if (nulls[i] || d->last_seen > DatumGetTimestampTz(values[i]))
		values[i] = TimestampTzGetDatum(d->last_seen);
	nulls[i] = false;
	if (d->traits != NULL)
	{
		int			cs = pc->computed_state - 1;
		int			nc = pc->next_change_at - 1;
		TimestampTz next = ProfileTraitsNextChange(d->traits, change->now);
		ProfileTraits *pt = ProfileTraitsParse(nulls[cs] ? NULL : DatumGetByteaPP(values[cs]));
		bytea	   *state;

		ProfileTraitsCombine(pt, d->traits);
		state = ProfileTraitsSerialize(pt, change->now);
		values[cs] = PointerGetDatum(state);
		nulls[cs] = state == NULL;
		if (next != 0 && (nulls[nc] || next < DatumGetTimestampTz(values[nc])))
		{
			values[nc] = TimestampTzGetDatum(next);
			nulls[nc] = false;
		}
	}
	i = pc->updated_at - 1;
	values[i] = TimestampTzGetDatum(change->now);
	nulls[i] = false;
	d->written = true;
}

/*
 * Adds the deltas of ``list`` to their profiles, in profile order, each row
 * locked as UPDATE locks it: merges lock profiles in key order too, so
 * ingest and merges cannot deadlock.  Returns the profiles that are gone:
 * absorbed or erased by a concurrent transaction after this statement
 * resolved its rows to them.
 */
static int
UpdateProfiles(ProfileDelta **list, int n, ProfileDelta **orphans)
{
	const PersonaCatalog *cat = PersonaGetCatalog();
	MemoryContext row_cxt = AllocSetContextCreate(CurrentMemoryContext, "persona profile",
												  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;
	ProfileChange change;
	RowUpdater *u;
	int			norphans = 0;

	SortByProfileId(list, n);
	ResolveProfileColumns(cat->profiles);

	/*
	 * As a statement of its own would: see what this statement wrote so far
	 * and, at READ COMMITTED, what committed meanwhile.
	 */
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	u = RowUpdaterOpen(cat->profiles, cat->profiles_pkey);
	change.now = GetCurrentTransactionStartTimestamp();
	for (int i = 0; i < n; i++)
	{
		old = MemoryContextSwitchTo(row_cxt);
		change.delta = list[i];
		if (!RowUpdaterUpdate(u, list[i]->profile_id, AddDelta, &change))
			orphans[norphans++] = list[i];
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_cxt);
	}
	RowUpdaterClose(u);
	PopActiveSnapshot();
	MemoryContextDelete(row_cxt);
	CommandCounterIncrement();
	return norphans;
}

/*
 * A profile this statement resolved rows to was absorbed by a merge that
 * committed meanwhile: carry the rows over to the surviving profile, which
 * is returned.
 */
static int64
FollowMerge(int64 pid)
{
	Datum		arg = Int64GetDatum(pid);
	Oid			type = INT8OID;
	SPIPlanPtr	plan;
	bool		isnull;
	int64		into;

	plan = PersonaKeptPlan(&select_merges_plan,
					   "SELECT into_profile_id FROM persona.merges WHERE from_profile_id = $1",
					   1, &type, 0);
	if (SPI_execute_plan(plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading persona.merges failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access due to a concurrently erased profile"),
				 errdetail("Profile " INT64_FORMAT " was erased by a concurrent transaction.", pid),
				 errhint("Retry the transaction.")));
	into = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	MoveEvents(pid, into);
	return into;
}

/*
 * UpdateProfiles, all or nothing.  When some profiles turn out absorbed by a
 * concurrent merge, the rows of the survivors must be locked in key order
 * together with the rest, not after them (which could deadlock with a merge
 * or another batch): so a statement touching several profiles updates them
 * in a subtransaction, and rolls it back, releasing every row lock, when
 * there are merges to follow first.  A single profile needs no such care.
 */
static int
UpdateProfilesOnce(ProfileDelta **list, int n, ProfileDelta **orphans)
{
	OwnSubxact	sub;
	int			norphans;

	if (n == 1)
		return UpdateProfiles(list, n, orphans);

	BeginOwnSubxact(&sub);
	norphans = UpdateProfiles(list, n, orphans);
	EndOwnSubxact(&sub, norphans == 0);
	if (norphans > 0)
		for (int i = 0; i < n; i++)
			list[i]->written = false;
	return norphans;
}

/*
 * Re-evaluates the segments that read what the statement changed: the event
 * statistics of every profile it touched, and the traits its events fed.  A
 * profile the statement created is new to every segment.
 */
static void
RefreshSegments(pidmap_hash *deltas, List *touched)
{
	static const char *const stats[] = {"event_count", "first_seen", "last_seen", "updated_at"};
	const char **changed = palloc(sizeof(char *) * (lengthof(stats) + list_length(touched)));
	int			nchanged = 0;
	long		total = deltas->members;
	int64	   *known = palloc(sizeof(int64) * total);
	int64	   *created = palloc(sizeof(int64) * total);
	int			nknown = 0;
	int			ncreated = 0;
	pidmap_iterator it;
	PidSlot    *slot;
	ListCell   *lc;

	for (size_t i = 0; i < lengthof(stats); i++)
		changed[nchanged++] = stats[i];
	foreach(lc, touched)
		changed[nchanged++] = lfirst(lc);
	pidmap_start_iterate(deltas, &it);
	while ((slot = pidmap_iterate(deltas, &it)) != NULL)
	{
		if (slot->delta->created)
			created[ncreated++] = slot->profile_id;
		else
			known[nknown++] = slot->profile_id;
	}
	(void) SegmentsRefresh(known, nknown, false, changed, nchanged);
	(void) SegmentsRefresh(created, ncreated, true, NULL, 0);
}

/* Writes each profile the statement's rows touched, once. */
PG_FUNCTION_INFO_V1(persona_events_apply);
Datum
persona_events_apply(PG_FUNCTION_ARGS)
{
	RowFolds   *folds;
	MemoryContext batch;
	MemoryContext old;
	pidmap_hash *deltas;
	pidmap_iterator it;
	PidSlot    *slot;
	ProfileDelta **list;
	ProfileDelta **orphans;
	SortedId   *ids;
	int			n = 0;

	(void) RequireInsertTrigger(fcinfo, false, false,
								"persona_events_apply must be fired AFTER INSERT FOR EACH STATEMENT");
	CloseIdentityScan();
	folds = TakeFolds();
	if (folds == NULL)
	{
		PruneIdMap();
		return PointerGetDatum(NULL);
	}
	deltas = folds->deltas;
	Assert(deltas->members > 0);	/* folds are made for a row */
	batch = AllocSetContextCreate(CurrentMemoryContext, "persona batch",
								  ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(batch);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* Ids first seen here: identities first, then their profiles. */
	ids = NewIds(folds, &n);
	list = palloc(sizeof(ProfileDelta *) * Max(n, 1));
	if (n > 0)
	{
		int			nwon = 0;

		WriteNewIdentities(deltas, ids, list, n);
		for (int i = 0; i < n; i++)
			if (list[i] != NULL)
				list[nwon++] = list[i];
		if (nwon > 0)
			InsertNewProfiles(list, nwon);
	}

	/* Known profiles; the loop follows merges until all are written. */
	for (;;)
	{
		int			norphans;

		n = 0;
		list = palloc(sizeof(ProfileDelta *) * deltas->members);
		pidmap_start_iterate(deltas, &it);
		while ((slot = pidmap_iterate(deltas, &it)) != NULL)
			if (!slot->delta->written)
				list[n++] = slot->delta;
		if (n == 0)
			break;
		orphans = palloc(sizeof(ProfileDelta *) * n);
		norphans = UpdateProfilesOnce(list, n, orphans);
		for (int i = 0; i < norphans; i++)
		{
			int64		into = FollowMerge(orphans[i]->profile_id);
			ProfileDelta moved = *orphans[i];
			bool		found;
			ProfileDelta *d;

			pidmap_delete(deltas, moved.profile_id);
			d = EnterDelta(deltas, into, &found);
			if (found && !d->written)
				CombineDeltas(d, &moved);
			else
			{
				/* Only the moved rows are still to be written. */
				*d = moved;
				d->profile_id = into;
				d->new_id = NULL;
				d->written = false;
			}
		}
	}
	RefreshSegments(deltas, folds->touched_names);
	SPI_finish();

	MemoryContextSwitchTo(old);
	MemoryContextDelete(batch);
	MemoryContextDelete(folds->cxt);
	PruneIdMap();
	return PointerGetDatum(NULL);
}

/* ---------------------------------------------------------------------
 * persona_track
 * --------------------------------------------------------------------- */

/* Records one event; returns its event_id. */
PG_FUNCTION_INFO_V1(persona_track);
Datum
persona_track(PG_FUNCTION_ARGS)
{
	Oid			types[6] = {TEXTOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TIMESTAMPTZOID};
	Datum		args[6];
	char		nulls[6];
	SPIPlanPtr	plan;
	bool		isnull;
	int64		event_id;

	/* Arguments: user_id, event_type, properties, occurred_at, context, anonymous_id */
	static const int order[6] = {0, 5, 1, 2, 4, 3};

	for (int i = 0; i < 6; i++)
	{
		int			a = order[i];

		nulls[i] = PG_ARGISNULL(a) ? 'n' : ' ';
		args[i] = PG_ARGISNULL(a) ? (Datum) 0 : PG_GETARG_DATUM(a);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = PersonaKeptPlan(&track_plan,
					   "INSERT INTO persona.events "
					   "  (user_id, anonymous_id, event_type, properties, context, occurred_at) "
					   "VALUES ($1, $2, $3, $4, $5, $6) RETURNING event_id",
					   6, types, 0);
	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "inserting the event failed");
	event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	PG_RETURN_INT64(event_id);
}

void
PersonaIngestInit(void)
{
	RegisterXactCallback(IdMapXactCallback, NULL);
	RegisterSubXactCallback(IdMapSubXactCallback, NULL);
	CacheRegisterRelcacheCallback(IdMapRelcacheCallback, (Datum) 0);
}
