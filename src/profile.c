/*
 * profile.c
 *	  Reading one profile at a time without SQL: its persona.profiles row by
 *	  primary key, and the segments it is a member of through
 *	  persona.segment_members' primary key (profile_id, segment).
 *
 * A reader takes one snapshot, after a CommandCounterIncrement, so that it
 * sees the calling statement's own writes (the profile ingest just updated),
 * as a query run through SPI would.  Its expression context has the profile
 * as its scan tuple, for the predicates predicate.c compiles.
 *
 * Memberships are read from the primary key of persona.segment_members
 * alone where the visibility map says the row's page is all visible, as an
 * index-only scan reads them: the members of a steady segment change
 * rarely, so a profile's memberships usually cost no heap visit.
 *
 * The index scans keep state that they allocate as they go (btree's list
 * of dead items to mark, for one), in the memory context current at each
 * call: every scan call runs in the context the reader began in, so that a
 * caller may read in a short-lived context without freeing scan state.
 */
#include "postgres.h"

#include "access/nbtree.h"
#include "access/table.h"
#include "access/visibilitymap.h"
#include "access/xact.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/predicate.h"
#include "utils/fmgroids.h"
#include "utils/snapmgr.h"

#include "persona.h"
#include "profile.h"

/*
 * How far ahead (in profile ids) the ordered reads walk from the entry they
 * are on before they descend again: stepping over an entry costs a small
 * fraction of a descent, and a profile has at most a few member entries.
 */
#define PROFILE_WALK_MAX_GAP 64
#define MEMBERS_WALK_MAX_GAP 16

void
PersonaProfileReaderBegin(ProfileReader *r, bool memberships)
{
	const PersonaCatalog *cat = PersonaGetCatalog();

	memset(r, 0, sizeof(ProfileReader));
	r->cxt = CurrentMemoryContext;
	CommandCounterIncrement();
	r->snapshot = RegisterSnapshot(GetTransactionSnapshot());
	r->profiles = table_open(cat->profiles, AccessShareLock);
	/* The primary key is opened by the first fetch (ProfileScan). */
	r->profile = table_slot_create(r->profiles, NULL);
	if (memberships)
	{
		r->members = table_open(cat->segment_members, AccessShareLock);
		r->members_pkey = index_open(cat->segment_members_pkey, AccessShareLock);
		r->member_scan = index_beginscan(r->members, r->members_pkey, r->snapshot, 1, 0);
		r->member = table_slot_create(r->members, NULL);
		r->member_segment = cat->member_segment;
		r->member_vm = InvalidBuffer;
		for (int k = 0; k < r->members_pkey->rd_index->indnatts; k++)
		{
			if (r->members_pkey->rd_index->indkey.values[k] == r->member_segment)
				r->member_segment_key = k + 1;
			/* Walked by profile id: it must lead the key. */
			if (k == 0 && r->members_pkey->rd_index->indkey.values[k] == cat->member_profile_id)
				r->member_pid_key = k + 1;
		}
		r->member_scan->xs_want_itup = r->member_segment_key > 0;
		if (r->member_segment_key > 0 && r->member_pid_key > 0)
			PersonaIndexWalkInit(&r->member_walk, r->member_scan, r->member_pid_key,
								 MEMBERS_WALK_MAX_GAP);
	}
	r->econtext = CreateStandaloneExprContext();
	r->econtext->ecxt_scantuple = r->profile;
}

void
PersonaProfileReaderEnd(ProfileReader *r)
{
	FreeExprContext(r->econtext, true);
	if (r->members != NULL)
	{
		if (BufferIsValid(r->member_vm))
			ReleaseBuffer(r->member_vm);
		ExecDropSingleTupleTableSlot(r->member);
		index_endscan(r->member_scan);
		index_close(r->members_pkey, AccessShareLock);
		table_close(r->members, AccessShareLock);
	}
	ExecDropSingleTupleTableSlot(r->profile);
	if (r->profile_scan != NULL)
	{
		index_endscan(r->profile_scan);
		index_close(r->profiles_pkey, AccessShareLock);
	}
	table_close(r->profiles, AccessShareLock);
	UnregisterSnapshot(r->snapshot);
}

/*
 * The scan of the profiles' primary key, begun at the first fetch: a
 * reader given the rows its caller just wrote (the refresh of an ingest
 * statement's profiles) never opens it.  Called in r->cxt, and in the
 * (sub)transaction the reader began in, as its other scans are.
 */
static IndexScanDesc
ProfileScan(ProfileReader *r)
{
	if (r->profile_scan == NULL)
	{
		r->profiles_pkey = index_open(PersonaGetCatalog()->profiles_pkey, AccessShareLock);
		r->profile_scan = index_beginscan(r->profiles, r->profiles_pkey, r->snapshot, 1, 0);
		PersonaIndexWalkInit(&r->profile_walk, r->profile_scan, 1, PROFILE_WALK_MAX_GAP);
	}
	return r->profile_scan;
}

/* Fetches a profile's row into r->profile; false if there is none. */
bool
PersonaProfileFetch(ProfileReader *r, int64 profile_id)
{
	ScanKeyData key;
	MemoryContext old = MemoryContextSwitchTo(r->cxt);
	bool		found;

	(void) ProfileScan(r);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(profile_id));
	index_rescan(r->profile_scan, &key, 1, NULL, 0);
	r->profile_walk.walking = false;
	found = index_getnext_slot(r->profile_scan, ForwardScanDirection, r->profile);
	MemoryContextSwitchTo(old);
	return found;
}

/*
 * Readies a walk over ``scan``, whose index key leads with the bigint at
 * ``key_att`` of the index tuple.
 */
void
PersonaIndexWalkInit(IndexWalk *w, IndexScanDesc scan, AttrNumber key_att, int64 max_gap)
{
	memset(w, 0, sizeof(IndexWalk));
	w->scan = scan;
	w->key_att = key_att;
	w->max_gap = max_gap;
	scan->xs_want_itup = true;
}

/* Steps to the next entry; false (w->entry false) when there is none. */
bool
PersonaIndexWalkNext(IndexWalk *w)
{
	bool		isnull;

	if (index_getnext_tid(w->scan, ForwardScanDirection) == NULL)
	{
		/* No entry left: no larger key in this snapshot either. */
		w->entry = false;
		w->walking = false;
		return false;
	}
	w->entry = true;
	w->key = DatumGetInt64(index_getattr(w->scan->xs_itup, w->key_att,
										 w->scan->xs_itupdesc, &isnull));
	return true;
}

/*
 * At most this many entries are stepped over to reach a key before the walk
 * descends to it instead: a step costs a small fraction of a descent, so a
 * walk costs at most about two descents per key, however many entries
 * (of other profiles, or dead versions) lie in between.
 */
#define INDEX_WALK_MAX_STEPS 64

/*
 * A new scan of the walk's index from ``key``, not yet on an entry.
 *
 * The walk's first scan looks ``key`` up by equality; only a second key
 * starts a scan forward (>=) from it.  A `>=` scan reads each leaf page it
 * lands on to its end (btree checks and copies every entry after the key,
 * a few hundred of them), which is most of a lookup's cost when the walk
 * serves one key, as the statement of a single event does; a walk of many
 * keys pays one descent more.
 */
static void
IndexWalkRestart(IndexWalk *w, int64 key)
{
	ScanKeyData skey;

	w->exact = !w->restarted;
	w->restarted = true;
	if (w->exact)
		ScanKeyInit(&skey, w->key_att, BTEqualStrategyNumber, F_INT8EQ,
					Int64GetDatum(key));
	else
		ScanKeyInit(&skey, w->key_att, BTGreaterEqualStrategyNumber, F_INT8GE,
					Int64GetDatum(key));
	index_rescan(w->scan, &skey, 1, NULL, 0);
	w->walking = true;
	w->entry = false;
}

/*
 * Puts the walk on the first entry whose key is at least ``key`` (w->entry
 * false: none): the caller then takes the entries of w->key == key,
 * stepping with PersonaIndexWalkNext.  The walk's first key is looked up
 * (IndexWalkRestart); a second key, a key asked for again or below the
 * last one, further than max_gap ahead of the entry the walk is on, or
 * more than INDEX_WALK_MAX_STEPS entries ahead, starts a new scan from
 * it.  The index scan allocates as it goes, in the memory context current
 * at each call: callers keep it the same.
 */
void
PersonaIndexWalkTo(IndexWalk *w, int64 key)
{
	int			steps = 0;

	if (!w->walking || w->exact || key <= w->asked ||
		(w->entry && key - w->key > w->max_gap))
		IndexWalkRestart(w, key);
	w->asked = key;
	if (!w->entry)
		(void) PersonaIndexWalkNext(w);
	while (w->entry && w->key < key)
	{
		CHECK_FOR_INTERRUPTS();
		/* Many entries between the keys (a profile in many segments). */
		if (++steps > INDEX_WALK_MAX_STEPS)
		{
			IndexWalkRestart(w, key);
			(void) PersonaIndexWalkNext(w);
			break;
		}
		(void) PersonaIndexWalkNext(w);
	}
}

/*
 * The row of ``key`` visible to the scan's snapshot, into ``slot``: the
 * heap is visited only for the entries of that key.
 */
bool
PersonaIndexWalkFetch(IndexWalk *w, int64 key, TupleTableSlot *slot)
{
	PersonaIndexWalkTo(w, key);
	for (; w->entry && w->key == key; (void) PersonaIndexWalkNext(w))
		if (index_fetch_heap(w->scan, slot))
			return true;
	return false;
}

/*
 * PersonaProfileFetch for ids asked for in ascending order (a campaign
 * chunk's recipients, a refresh's profiles): one forward walk of the
 * primary key (IndexWalk), visiting the heap only for the id asked for.
 * Do not mix with PersonaProfileFetch on one reader without expecting a new
 * scan.
 */
bool
PersonaProfileFetchOrdered(ProfileReader *r, int64 profile_id)
{
	MemoryContext old = MemoryContextSwitchTo(r->cxt);
	bool		found;

	(void) ProfileScan(r);
	found = PersonaIndexWalkFetch(&r->profile_walk, profile_id, r->profile);
	MemoryContextSwitchTo(old);
	return found;
}

/* A column of the profile last fetched, by name. */
Datum
PersonaProfileColumn(ProfileReader *r, const char *column, bool *isnull)
{
	AttrNumber	att = InvalidAttrNumber;

	for (int i = 0; i < r->ncolumns; i++)
		if (r->column_names[i] == column || strcmp(r->column_names[i], column) == 0)
		{
			att = r->column_nums[i];
			break;
		}
	if (att == InvalidAttrNumber)
	{
		att = PersonaRequireColumn(RelationGetRelid(r->profiles), column);
		if (r->ncolumns < (int) lengthof(r->column_names))
		{
			r->column_names[r->ncolumns] = MemoryContextStrdup(r->cxt, column);
			r->column_nums[r->ncolumns++] = att;
		}
	}
	return slot_getattr(r->profile, att, isnull);
}

/*
 * The names (text datums, copied into the current memory context) of the
 * segments a profile is a member of now.
 */
Datum *
PersonaProfileSegments(ProfileReader *r, int64 profile_id, int *n)
{
	ScanKeyData key;
	int			max = 8;
	Datum	   *names = palloc(sizeof(Datum) * max);
	MemoryContext caller = MemoryContextSwitchTo(r->cxt);
	ItemPointer tid;

	Assert(r->members != NULL);
	*n = 0;
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(profile_id));
	index_rescan(r->member_scan, &key, 1, NULL, 0);
	r->member_walk.walking = false;
	while ((tid = index_getnext_tid(r->member_scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		Datum		name;

		/* As IndexOnlyNext: the heap only where the page may hide a change. */
		if (r->member_segment_key > 0 &&
			VM_ALL_VISIBLE(r->members, ItemPointerGetBlockNumber(tid), &r->member_vm))
		{
			name = index_getattr(r->member_scan->xs_itup, r->member_segment_key,
								 r->member_scan->xs_itupdesc, &isnull);
			PredicateLockPage(r->members, ItemPointerGetBlockNumber(tid), r->snapshot);
		}
		else if (index_fetch_heap(r->member_scan, r->member))
			name = slot_getattr(r->member, r->member_segment, &isnull);
		else
			continue;

		MemoryContextSwitchTo(caller);
		if (*n == max)
		{
			max *= 2;
			names = repalloc(names, sizeof(Datum) * max);
		}
		names[(*n)++] = PointerGetDatum(DatumGetTextPCopy(name));
		MemoryContextSwitchTo(r->cxt);
	}
	MemoryContextSwitchTo(caller);
	return names;
}

/*
 * The segment name of the member entry the scan is on (a copy, in
 * ``caller``), from the index alone where the visibility map allows, as
 * PersonaProfileSegments reads it; false when its row is not visible.
 */
static bool
WalkedMemberName(ProfileReader *r, MemoryContext caller, Datum *name)
{
	IndexScanDesc scan = r->member_scan;
	BlockNumber block = ItemPointerGetBlockNumber(&scan->xs_heaptid);
	bool		isnull;
	Datum		value;

	if (VM_ALL_VISIBLE(r->members, block, &r->member_vm))
	{
		value = index_getattr(scan->xs_itup, r->member_segment_key, scan->xs_itupdesc, &isnull);
		PredicateLockPage(r->members, block, r->snapshot);
	}
	else if (index_fetch_heap(scan, r->member))
		value = slot_getattr(r->member, r->member_segment, &isnull);
	else
		return false;
	MemoryContextSwitchTo(caller);
	*name = PointerGetDatum(DatumGetTextPCopy(value));
	MemoryContextSwitchTo(r->cxt);
	return true;
}

/*
 * PersonaProfileSegments for profiles asked for in ascending order (a
 * refresh of a statement's profiles): one forward scan of the members'
 * primary key (profile_id, segment), from the first profile, reading each
 * entry's profile id from the index tuple and stepping over the entries of
 * the profiles in between, instead of a descent per profile.  A profile
 * asked for again or below the last one, or far ahead of the entry the scan
 * is on, starts a new scan from it.  Needs the segment in the index (as it
 * is); otherwise it is PersonaProfileSegments.
 */
Datum *
PersonaProfileSegmentsOrdered(ProfileReader *r, int64 profile_id, int *n)
{
	IndexWalk  *w = &r->member_walk;
	int			max = 8;
	Datum	   *names;
	MemoryContext caller;

	Assert(r->members != NULL);
	if (w->scan == NULL)
		return PersonaProfileSegments(r, profile_id, n);
	names = palloc(sizeof(Datum) * max);
	caller = MemoryContextSwitchTo(r->cxt);
	*n = 0;
	PersonaIndexWalkTo(w, profile_id);
	for (; w->entry && w->key == profile_id; (void) PersonaIndexWalkNext(w))
	{
		Datum		name;

		if (!WalkedMemberName(r, caller, &name))
			continue;
		if (*n == max)
		{
			max *= 2;
			names = repalloc(names, sizeof(Datum) * max);
		}
		names[(*n)++] = name;
	}
	MemoryContextSwitchTo(caller);
	return names;
}
