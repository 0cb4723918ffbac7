/*
 * ingest_row.c
 *	  The row phase of the event path: the row triggers of persona.events.
 *
 *	- persona_events_resolve (BEFORE INSERT FOR EACH ROW) checks the row and
 *	  sets its profile_id.  An id that is not known yet gets a profile id from
 *	  persona.profile_id_seq at once; it is remembered as "pending" in the id
 *	  map (idmap.c) until its identity row is written.  When the row is sure
 *	  to be inserted as the trigger sees it, the trigger also folds it into
 *	  its profile's delta (see MayFoldBefore).
 *	- persona_events_confirm (AFTER INSERT FOR EACH ROW, WHEN the row was not
 *	  folded) folds the other rows, as inserted.
 *
 * The folds wait, per subtransaction, for the statement trigger
 * (ingest_apply.c) to take them.
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
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "ingest.h"
#include "persona.h"
#include "traits.h"
#include "validate.h"

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

static EventColumns event_columns;

static RowFolds *row_folds = NULL;
static uint64 row_folds_generation = 0;

/* ---------------------------------------------------------------------
 * Row checks
 * --------------------------------------------------------------------- */

/* Whether column ``attnum`` of ``desc`` is a live one named ``name``. */
static inline bool
ColumnIs(TupleDesc desc, AttrNumber attnum, const char *name)
{
	Form_pg_attribute att;

	if (attnum <= 0 || attnum > desc->natts)
		return false;
	att = TupleDescAttr(desc, attnum - 1);
	return !att->attisdropped && strcmp(NameStr(att->attname), name) == 0;
}

static void
ResolveEventColumns(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	TupleDesc	desc = RelationGetDescr(rel);

	if (event_columns.relid == relid)
		return;

	/*
	 * Rows of one statement may go to several partitions of persona.events,
	 * which usually have the same layout: the numbers found for the last one
	 * are checked against this one's descriptor before looking up the catalog
	 * again.
	 */
	if (OidIsValid(event_columns.relid) &&
		ColumnIs(desc, event_columns.event_id, "event_id") &&
		ColumnIs(desc, event_columns.profile_id, "profile_id") &&
		ColumnIs(desc, event_columns.user_id, "user_id") &&
		ColumnIs(desc, event_columns.anonymous_id, "anonymous_id") &&
		ColumnIs(desc, event_columns.event_type, "event_type") &&
		ColumnIs(desc, event_columns.properties, "properties") &&
		ColumnIs(desc, event_columns.context, "context") &&
		ColumnIs(desc, event_columns.occurred_at, "occurred_at"))
	{
		event_columns.relid = relid;
		return;
	}
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

/*
 * Copies the id into ``buf`` (PERSONA_MAX_ID_BYTES + 1 bytes) as a C string
 * and returns it, or NULL for a NULL id; rejects empty and over-long ids.
 */
static inline char *
CheckId(Datum value, bool isnull, const char *column, char *buf)
{
	text	   *t;
	int			len;

	if (isnull)
		return NULL;
	t = DatumGetTextPP(value);
	len = PersonaCheckId(t, column, true);
	memcpy(buf, VARDATA_ANY(t), len);
	buf[len] = '\0';
	return buf;
}

/* Checks the columns of an event other than its ids (validate.h's rules). */
static void
CheckEvent(const Datum *values, const bool *nulls)
{
	Size		payload;
	int			at = event_columns.occurred_at - 1;

	PersonaCheckNotNull(nulls[event_columns.event_type - 1], "event_type");
	(void) PersonaCheckEventType(DatumGetTextPP(values[event_columns.event_type - 1]),
								 "event_type");

	payload = PersonaCheckObject(values[event_columns.properties - 1],
								 nulls[event_columns.properties - 1], "properties");
	payload += PersonaCheckObject(values[event_columns.context - 1],
								  nulls[event_columns.context - 1], "context");
	if (payload > (Size) persona_max_event_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event payload is too large"),
				 errdetail("properties and context take %zu bytes; the limit is %d.",
						   payload, persona_max_event_bytes),
				 errhint("Raise persona.max_event_bytes or send less.")));

	PersonaCheckNotNull(nulls[at], "occurred_at");
	if (TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(values[at])))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("occurred_at of an event must be finite")));
}

/*
 * Checks an event's row (every column, deformed): its ids, copied into the
 * buffers (PERSONA_MAX_ID_BYTES + 1 bytes each) and returned (NULL for a
 * NULL id), at least one of them, and its other columns.
 */
static void
CheckRow(const Datum *values, const bool *nulls, char *user_buf, char *anonymous_buf,
		 char **user_id, char **anonymous_id)
{
	*user_id = CheckId(values[event_columns.user_id - 1],
					   nulls[event_columns.user_id - 1], "user_id", user_buf);
	*anonymous_id = CheckId(values[event_columns.anonymous_id - 1],
							nulls[event_columns.anonymous_id - 1], "anonymous_id",
							anonymous_buf);
	if (*user_id == NULL && *anonymous_id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("an event needs a user_id or an anonymous_id"),
				 errhint("Pass the known user id, or the anonymous id of the device.")));
	CheckEvent(values, nulls);
}

/* ---------------------------------------------------------------------
 * Identity lookup
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
	MemoryContext cxt;			/* the scan's: btree keeps buffers across
								 * rescans */
	Snapshot	snapshot;
	LocalTransactionId lxid;
	CommandId	cid;
	ResourceOwner owner;		/* holds the relations and buffers */
	SubTransactionId subid;		/* of that owner */
	int64		found;			/* ids it found */
	int64		next_check;		/* found count at which to weigh reading the
								 * table (ShouldLoadIdentities); never again
								 * once it was read */
} IdentityScan;

static IdentityScan id_scan;

/*
 * Closes the scan, in the resource owner that opened it: a statement run by
 * a function of an enclosing INSERT's rows may be the one to close it.
 */
void
PersonaIngestCloseIdentityScan(void)
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

/* Forgets the scan when ``subid`` or a child of it opened it: its abort released it. */
void
PersonaIngestForgetIdentityScan(SubTransactionId subid)
{
	if (id_scan.rel != NULL && id_scan.subid >= subid)
		id_scan.rel = NULL;
}

/* Whether the open scan is the current statement's, on the current catalog's table. */
static inline bool
IdentityScanCurrent(const PersonaCatalog *cat)
{
	return id_scan.snapshot == GetActiveSnapshot() && id_scan.lxid == MyProc->lxid &&
		id_scan.cid == GetCurrentCommandId(false) &&
		RelationGetRelid(id_scan.rel) == cat->identities;
}

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

	if (id_scan.rel != NULL && !IdentityScanCurrent(cat))
		PersonaIngestCloseIdentityScan();
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
		id_scan.found = 0;
		id_scan.next_check = 1024;
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
	if (found)
		id_scan.found++;
	return found;
}

/*
 * A new entry of the id map for ``id`` (not in it), resolved to ``profile_id``
 * (pending when the id has no identity row yet).
 */
static IdEntry *
AddIdEntry(idmap_hash *map, const char *id, int len, int64 profile_id, bool pending,
		   bool is_user)
{
	IdEntry    *entry;
	IdSlot	   *slot;
	bool		found;

	entry = MemoryContextAlloc(PersonaIdMap.cxt, offsetof(IdEntry, id) + len + 1);
	memcpy(entry->id, id, len);
	entry->id[len] = '\0';
	entry->profile_id = profile_id;
	entry->pending = pending;
	entry->is_user = is_user;
	entry->created_in = GetCurrentSubTransactionId();
	entry->written_in = InvalidSubTransactionId;
	entry->delta = NULL;
	entry->delta_folds = 0;
	slot = idmap_insert(map, entry->id, &found);
	slot->entry = entry;
	if (pending)
		PersonaIdMap.pending++;
	return entry;
}

/*
 * Identity rows per page of persona.identities, about (an id of a dozen
 * bytes), and what a lookup by index costs against reading one page in
 * sequence and entering its rows in the id map (measured: a descent of the
 * primary key with its buffer accesses and comparisons, about 3 us, against
 * about 0.2 us per row read in sequence).
 */
#define IDENTITIES_PER_PAGE 120
#define LOOKUPS_PER_PAGE 8

/*
 * Whether the statement should read the whole of persona.identities into
 * the id map rather than go on looking its ids up one by one.  A bulk insert
 * of events for many known people looks up most of the ids in the table,
 * in no order, a descent of the index each: once it has found as many as
 * reading the table would cost (the rule of renting skis until their price
 * is spent), reading it costs at most as much again, and every later known
 * id of the statement is in memory.  Ids not found (new people) do not
 * count: the table cannot answer them.  Only when the table fits in the
 * map's bound; once per scan (statement).  Weighed once per 1,024 ids
 * found, not per lookup: the table's size is a system call.
 */
static bool
ShouldLoadIdentities(const PersonaCatalog *cat)
{
	BlockNumber pages;

	if (id_scan.found < id_scan.next_check || !IdentityScanCurrent(cat))
		return false;
	id_scan.next_check = id_scan.found + 1024;
	pages = RelationGetNumberOfBlocks(id_scan.rel);
	if ((double) pages * IDENTITIES_PER_PAGE + PersonaIdMap.map->members > ID_MAP_MAX_ENTRIES)
		return false;
	return id_scan.found >= (int64) pages * LOOKUPS_PER_PAGE;
}

/*
 * Enters every id of persona.identities that the map does not hold, as the
 * statement's lookups would find it (the same snapshot), up to the map's
 * bound.  What the map holds then is what it would have cached one lookup
 * at a time, and the same invalidation keeps it true.
 */
static void
LoadIdentities(idmap_hash *map)
{
	TableScanDesc scan;
	TupleTableSlot *slot = id_scan.slot;
	MemoryContext old = MemoryContextSwitchTo(id_scan.cxt);
	char		buf[PERSONA_MAX_ID_BYTES + 1];

	id_scan.next_check = PG_INT64_MAX;
	scan = table_beginscan(id_scan.rel, id_scan.snapshot, 0, NULL);
	MemoryContextSwitchTo(old);
	while (map->members < ID_MAP_MAX_ENTRIES &&
		   table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		text	   *t;
		int			len;

		CHECK_FOR_INTERRUPTS();
		slot_getsomeattrs(slot, 3);
		if (slot->tts_isnull[0] || slot->tts_isnull[1] || slot->tts_isnull[2])
			continue;
		t = (text *) PG_DETOAST_DATUM_PACKED(slot->tts_values[0]);
		len = VARSIZE_ANY_EXHDR(t);
		if (len <= PERSONA_MAX_ID_BYTES)
		{
			text	   *kind = (text *) PG_DETOAST_DATUM_PACKED(slot->tts_values[2]);

			memcpy(buf, VARDATA_ANY(t), len);
			buf[len] = '\0';
			if (idmap_lookup(map, buf) == NULL)
				AddIdEntry(map, buf, len, DatumGetInt64(slot->tts_values[1]), false,
						   VARSIZE_ANY_EXHDR(kind) == 4 && memcmp(VARDATA_ANY(kind), "user", 4) == 0);
			if ((Pointer) kind != DatumGetPointer(slot->tts_values[2]))
				pfree(kind);
		}
		if ((Pointer) t != DatumGetPointer(slot->tts_values[0]))
			pfree(t);
	}
	ExecClearTuple(slot);
	table_endscan(scan);
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
	int64		profile_id;
	bool		found;

	IdMapPrune();
	map = IdMapGet(false);
	PersonaIdMap.relid = cat->identities;
	slot = idmap_lookup(map, id);
	if (slot != NULL)
		return slot->entry;
	if (id_scan.rel != NULL && ShouldLoadIdentities(cat))
	{
		LoadIdentities(map);
		slot = idmap_lookup(map, id);
		if (slot != NULL)
			return slot->entry;
	}

	if (LookupIdentity(cat, id, &profile_id))
		found = true;
	else
	{
		profile_id = nextval_internal(cat->profile_id_seq, false);
		found = false;
	}

	/* Folds point to entries: the map starts over only when none do. */
	if (map->members >= ID_MAP_MAX_ENTRIES && PersonaIdMap.pending == 0 && row_folds == NULL)
		map = IdMapGet(true);
	return AddIdEntry(map, id, strlen(id), profile_id, !found, is_user);
}

/*
 * The entry of the id an event resolves by: a known user id wins (the
 * anonymous id is kept on the event).
 */
static inline IdEntry *
ResolveRowProfile(const char *user_id, const char *anonymous_id)
{
	if (user_id != NULL)
		return ResolveProfile(user_id, true);
	return ResolveProfile(anonymous_id, false);
}

/* ---------------------------------------------------------------------
 * Folding rows
 * --------------------------------------------------------------------- */

/* Folds ``from`` into ``into`` (same person). */
void
PersonaIngestCombineDeltas(ProfileDelta *into, const ProfileDelta *from)
{
	into->events += from->events;
	if (from->traits != NULL)
	{
		if (into->traits == NULL)
			into->traits = PersonaProfileTraitsCreate();
		PersonaProfileTraitsCombine(into->traits, from->traits);
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
	MemoryContext old;

	if (f != NULL && f->subid == subid && f->traits == traits && f->ntraits == traits->ndefs)
		return f;
	cxt = AllocSetContextCreate(TopTransactionContext, "persona row folds",
								ALLOCSET_DEFAULT_SIZES);
	f = MemoryContextAllocZero(cxt, sizeof(RowFolds));
	f->generation = ++row_folds_generation;
	f->subid = subid;
	f->cxt = cxt;

	/*
	 * Small at first: the apply walks the table's buckets several times,
	 * which for one event (persona_track) cost more than the event's fold did
	 * with 512 of them; a bulk statement doubles it as it grows.
	 */
	f->deltas = pidmap_create(cxt, 8, NULL);
	f->traits = traits;
	f->ntraits = traits->ndefs;
	f->touched = MemoryContextAllocZero(cxt, Max(traits->ndefs, 1));
	/* Once per statement: ingest without triggers pays nothing more. */
	old = MemoryContextSwitchTo(cxt);
	f->trigger_types = PersonaTriggerEventTypes();
	MemoryContextSwitchTo(old);
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
			d->traits = PersonaProfileTraitsCreate();
		PersonaTraitAdd(PersonaProfileTraitsGet(d->traits, def), def, at, event_id, props, now);
		if (!f->touched[i])
		{
			f->touched[i] = true;
			f->touched_names = lappend(f->touched_names, pstrdup(def->name));
		}
		MemoryContextSwitchTo(old);
	}
}

/*
 * Records the row as a firing of each trigger on its event type, for the
 * apply phase (triggers.c).
 */
static void
CollectFirings(RowFolds *f, const Datum *values, int64 pid, TimestampTz at)
{
	text	   *type = DatumGetTextPP(values[event_columns.event_type - 1]);
	const char *tp = VARDATA_ANY(type);
	int			tlen = VARSIZE_ANY_EXHDR(type);
	Jsonb	   *context = NULL;
	Jsonb	   *event = NULL;

	for (int i = 0; i < f->trigger_types->n; i++)
	{
		const char *et = f->trigger_types->event_types[i];
		TriggerFiring *firing;
		MemoryContext old;

		if (strncmp(et, tp, tlen) != 0 || et[tlen] != '\0')
			continue;
		old = MemoryContextSwitchTo(f->cxt);
		if (event == NULL)
		{
			context = DatumGetJsonbPCopy(values[event_columns.context - 1]);
			event = PersonaTriggerEventObject(type,
											  DatumGetJsonbP(values[event_columns.properties - 1]),
											  context);
		}
		if (f->nfirings == f->maxfirings)
		{
			f->maxfirings = Max(16, f->maxfirings * 2);
			f->firings = f->firings == NULL
				? palloc(sizeof(TriggerFiring) * f->maxfirings)
				: repalloc(f->firings, sizeof(TriggerFiring) * f->maxfirings);
		}
		MemoryContextSwitchTo(old);
		firing = &f->firings[f->nfirings++];
		firing->trigger_id = f->trigger_types->trigger_ids[i];
		firing->profile_id = pid;
		firing->occurred_at = at;
		firing->context = context;
		firing->event = event;
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
		d->row = NULL;
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
	if (f->trigger_types != NULL)
		CollectFirings(f, values, pid, at);
}

/*
 * Takes the folds of the current subtransaction (and of its committed
 * children), as one: the older ones are merged into the newest, whose
 * context becomes theirs too.  NULL when there are none.
 */
RowFolds *
PersonaIngestTakeFolds(void)
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
			ProfileDelta *d;

			CHECK_FOR_INTERRUPTS();
			d = EnterDelta(taken->deltas, from->profile_id, &found);

			if (!found)
				*d = *from;
			else
			{
				PersonaIngestCombineDeltas(d, from);
				if (d->new_id == NULL)
					d->new_id = from->new_id;
			}
		}
		taken->touched_names = list_concat(taken->touched_names, f->touched_names);
		if (f->nfirings > 0)
		{
			/* The older folds' firings come first: events in order. */
			TriggerFiring *all = palloc(sizeof(TriggerFiring) * (f->nfirings + taken->nfirings));

			memcpy(all, f->firings, sizeof(TriggerFiring) * f->nfirings);
			if (taken->nfirings > 0)
				memcpy(all + f->nfirings, taken->firings, sizeof(TriggerFiring) * taken->nfirings);
			taken->firings = all;
			taken->nfirings += f->nfirings;
			taken->maxfirings = taken->nfirings;
		}
		MemoryContextSwitchTo(old);
	}
	return taken;
}

/* Whether rows are folded and not applied yet. */
bool
PersonaIngestHasFolds(void)
{
	return row_folds != NULL;
}

/* At the end of the transaction: the folds go with TopTransactionContext. */
void
PersonaIngestForgetFolds(void)
{
	row_folds = NULL;
}

/* A committed subtransaction's folds pass to its parent. */
void
PersonaIngestCommitFolds(SubTransactionId mySubid, SubTransactionId parentSubid)
{
	for (RowFolds *f = row_folds; f != NULL && f->subid >= mySubid; f = f->outer)
		f->subid = parentSubid;
}

/*
 * An aborted subtransaction's folds, and its children's, go with its rows.
 * Returns whether folds of enclosing statements are left.
 */
bool
PersonaIngestAbortFolds(SubTransactionId mySubid)
{
	while (row_folds != NULL && row_folds->subid >= mySubid)
	{
		RowFolds   *f = row_folds;

		row_folds = f->outer;
		MemoryContextDelete(f->cxt);
	}
	return row_folds != NULL;
}

/* ---------------------------------------------------------------------
 * BEFORE INSERT FOR EACH ROW
 * --------------------------------------------------------------------- */
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

/*
 * The INSERT or COPY statements into persona.events in progress, innermost
 * last, each by the subtransaction it began in.  The statement triggers of
 * persona.events fire for a statement that names the partitioned table,
 * not for one that names a partition: a new event inserted into a
 * partition directly would be folded and never applied, so it is refused.
 */
static SubTransactionId *statements = NULL;
static int	nstatements = 0;
static int	maxstatements = 0;

/* Marks the start of an insert into persona.events (the partitioned table). */
PG_FUNCTION_INFO_V1(persona_events_begin);
Datum
persona_events_begin(PG_FUNCTION_ARGS)
{
	(void) PersonaIngestRequireInsertTrigger(fcinfo, true, false,
											 "persona_events_begin must be fired BEFORE INSERT FOR EACH STATEMENT");
	if (nstatements == maxstatements)
	{
		maxstatements = Max(8, maxstatements * 2);
		statements = statements == NULL
			? MemoryContextAlloc(TopMemoryContext, sizeof(SubTransactionId) * maxstatements)
			: repalloc(statements, sizeof(SubTransactionId) * maxstatements);
	}
	statements[nstatements++] = GetCurrentSubTransactionId();
	return PointerGetDatum(NULL);
}

/* The end of the innermost insert into persona.events (persona_events_apply). */
void
PersonaIngestEndStatement(void)
{
	if (nstatements > 0)
		nstatements--;
}

/*
 * Forgets the statements that subtransaction ``subid`` or a child of it
 * began: its abort ended them (InvalidSubTransactionId: every one, at the
 * end of the transaction).
 */
void
PersonaIngestForgetStatements(SubTransactionId subid)
{
	while (nstatements > 0 && statements[nstatements - 1] >= subid)
		nstatements--;
}

/* Checks an incoming event, sets its profile_id and folds it when it may. */
PG_FUNCTION_INFO_V1(persona_events_resolve);
Datum
persona_events_resolve(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = PersonaIngestRequireInsertTrigger(fcinfo, true, true,
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
	CheckRow(row_values, row_nulls, user_buf, anonymous_buf, &user_id, &anonymous_id);

	/*
	 * A row that comes with its profile_id is a restored one (pg_dump writes
	 * every column, and the dumped profiles already count it): stored as is,
	 * neither resolved nor folded.  Only the owner of persona.events may, as
	 * a restore runs as the owner; anyone else would attach an event to a
	 * profile without counting it (docs/operations.md).
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

	/* A new event goes through persona.events, whose statement applies it. */
	if (trigdata->tg_relation->rd_rel->relispartition && nstatements == 0)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot insert a new event into partition \"%s\" of persona.events",
						RelationGetRelationName(trigdata->tg_relation)),
				 errdetail("Events are applied to their profiles by the statement triggers of persona.events, which do not fire for a statement on a partition."),
				 errhint("Insert into persona.events: each row is routed to its partition.")));

	entry = ResolveRowProfile(user_id, anonymous_id);
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
 * The row phase of an event that persona_track inserts itself (track.c),
 * on the row as it will be stored (every column of persona.events, in the
 * layout of ``rel``, its defaults computed): the checks of
 * persona_events_resolve, the profile_id set in ``values``, and the fold.
 * The row is stored as it is or the statement fails: no other row trigger
 * fires, and nothing (no ON CONFLICT) can skip it.
 */
void
PersonaIngestTrackRow(Relation rel, Datum *values, bool *nulls)
{
	char		user_buf[PERSONA_MAX_ID_BYTES + 1];
	char		anonymous_buf[PERSONA_MAX_ID_BYTES + 1];
	char	   *user_id;
	char	   *anonymous_id;
	IdEntry    *entry;

	ResolveEventColumns(rel);
	default_event_id = 0;		/* no BEFORE ROW trigger will ask */
	CheckRow(values, nulls, user_buf, anonymous_buf, &user_id, &anonymous_id);
	entry = ResolveRowProfile(user_id, anonymous_id);
	values[event_columns.profile_id - 1] = Int64GetDatum(entry->profile_id);
	nulls[event_columns.profile_id - 1] = false;
	FoldRow(values, entry);
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
	TriggerData *trigdata = PersonaIngestRequireInsertTrigger(fcinfo, false, true,
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
	if (PersonaIdMap.map != NULL && !nulls[idcol - 1])
	{
		char	   *id = TextDatumGetCString(values[idcol - 1]);

		slot = idmap_lookup(PersonaIdMap.map, id);
		pfree(id);
	}
	FoldRow(values, slot != NULL ? slot->entry : NULL);
	pfree(values);
	pfree(nulls);
	return PointerGetDatum(NULL);
}
