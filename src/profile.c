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

void
PersonaProfileReaderBegin(ProfileReader *r, bool memberships)
{
	const PersonaCatalog *cat = PersonaGetCatalog();
	AttrNumber	member_pid;

	memset(r, 0, sizeof(ProfileReader));
	r->cxt = CurrentMemoryContext;
	CommandCounterIncrement();
	r->snapshot = RegisterSnapshot(GetTransactionSnapshot());
	r->profiles = table_open(cat->profiles, AccessShareLock);
	r->profiles_pkey = index_open(cat->profiles_pkey, AccessShareLock);
	r->profile_scan = index_beginscan(r->profiles, r->profiles_pkey, r->snapshot, 1, 0);
	r->profile = table_slot_create(r->profiles, NULL);
	if (memberships)
	{
		r->members = table_open(cat->segment_members, AccessShareLock);
		r->members_pkey = index_open(cat->segment_members_pkey, AccessShareLock);
		r->member_scan = index_beginscan(r->members, r->members_pkey, r->snapshot, 1, 0);
		r->member = table_slot_create(r->members, NULL);
		r->member_segment = PersonaRequireColumn(cat->segment_members, "segment");
		r->member_vm = InvalidBuffer;
		member_pid = PersonaRequireColumn(cat->segment_members, "profile_id");
		for (int k = 0; k < r->members_pkey->rd_index->indnatts; k++)
		{
			if (r->members_pkey->rd_index->indkey.values[k] == r->member_segment)
				r->member_segment_key = k + 1;
			/* Walked by profile id: it must lead the key. */
			if (k == 0 && r->members_pkey->rd_index->indkey.values[k] == member_pid)
				r->member_pid_key = k + 1;
		}
		r->member_scan->xs_want_itup = r->member_segment_key > 0;
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
	index_endscan(r->profile_scan);
	index_close(r->profiles_pkey, AccessShareLock);
	table_close(r->profiles, AccessShareLock);
	UnregisterSnapshot(r->snapshot);
}

/* Fetches a profile's row into r->profile; false if there is none. */
bool
PersonaProfileFetch(ProfileReader *r, int64 profile_id)
{
	ScanKeyData key;
	MemoryContext old = MemoryContextSwitchTo(r->cxt);
	bool		found;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(profile_id));
	index_rescan(r->profile_scan, &key, 1, NULL, 0);
	r->walking = false;
	found = index_getnext_slot(r->profile_scan, ForwardScanDirection, r->profile);
	MemoryContextSwitchTo(old);
	return found;
}

/* How far ahead PersonaProfileFetchOrdered walks before it descends again. */
#define WALK_MAX_GAP 64

/*
 * PersonaProfileFetch for ids asked for in ascending order (a campaign
 * chunk's recipients): one forward scan of the primary key from the first
 * id, stepping over the ids in between, instead of a descent of the index
 * per profile. An id that goes back, or one far ahead of the scan, starts
 * a new scan from it. Do not mix with PersonaProfileFetch on one reader
 * without expecting a new scan.
 */
bool
PersonaProfileFetchOrdered(ProfileReader *r, int64 profile_id)
{
	MemoryContext old = MemoryContextSwitchTo(r->cxt);
	AttrNumber	pid_att = r->profiles_pkey->rd_index->indkey.values[0];
	bool		isnull;

	if (!r->walking || profile_id < r->walk_asked ||
		(r->walk_row && profile_id - r->walk_pid > WALK_MAX_GAP))
	{
		ScanKeyData key;

		ScanKeyInit(&key, 1, BTGreaterEqualStrategyNumber, F_INT8GE, Int64GetDatum(profile_id));
		index_rescan(r->profile_scan, &key, 1, NULL, 0);
		r->walking = true;
		r->walk_row = true;
		r->walk_pid = PG_INT64_MIN;
	}
	r->walk_asked = profile_id;
	/* No row left (walk_row false): no later id exists in this snapshot. */
	while (r->walk_row && r->walk_pid < profile_id)
	{
		CHECK_FOR_INTERRUPTS();
		r->walk_row = index_getnext_slot(r->profile_scan, ForwardScanDirection, r->profile);
		if (r->walk_row)
			r->walk_pid = DatumGetInt64(slot_getattr(r->profile, pid_att, &isnull));
	}
	MemoryContextSwitchTo(old);
	return r->walk_row && r->walk_pid == profile_id;
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
	r->mwalking = false;
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

/* How far ahead PersonaProfileSegmentsOrdered walks before it descends again. */
#define MEMBERS_WALK_MAX_GAP 16

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
	int			max = 8;
	Datum	   *names;
	MemoryContext caller;

	Assert(r->members != NULL);
	if (r->member_segment_key == 0 || r->member_pid_key == 0)
		return PersonaProfileSegments(r, profile_id, n);
	names = palloc(sizeof(Datum) * max);
	caller = MemoryContextSwitchTo(r->cxt);
	*n = 0;
	if (!r->mwalking || profile_id <= r->mwalk_asked ||
		(r->mwalk_entry && profile_id - r->mwalk_pid > MEMBERS_WALK_MAX_GAP))
	{
		ScanKeyData key;

		ScanKeyInit(&key, r->member_pid_key, BTGreaterEqualStrategyNumber, F_INT8GE,
					Int64GetDatum(profile_id));
		index_rescan(r->member_scan, &key, 1, NULL, 0);
		r->mwalking = true;
		r->mwalk_entry = false;
	}
	r->mwalk_asked = profile_id;
	for (;;)
	{
		bool		isnull;
		Datum		name;

		if (r->mwalk_entry && r->mwalk_pid > profile_id)
			break;				/* the next profile's: kept for it */
		if (r->mwalk_entry && r->mwalk_pid == profile_id &&
			WalkedMemberName(r, caller, &name))
		{
			if (*n == max)
			{
				max *= 2;
				names = repalloc(names, sizeof(Datum) * max);
			}
			names[(*n)++] = name;
		}
		if (index_getnext_tid(r->member_scan, ForwardScanDirection) == NULL)
		{
			/* No entry left: no later profile has members in this snapshot. */
			r->mwalk_entry = false;
			r->mwalking = false;
			break;
		}
		r->mwalk_entry = true;
		r->mwalk_pid = DatumGetInt64(index_getattr(r->member_scan->xs_itup, r->member_pid_key,
												   r->member_scan->xs_itupdesc, &isnull));
	}
	MemoryContextSwitchTo(caller);
	return names;
}
