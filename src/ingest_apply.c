/*
 * ingest_apply.c
 *	  The apply phase of the event path: persona_events_apply, the statement
 *	  trigger of persona.events (AFTER INSERT FOR EACH STATEMENT).
 *
 * It takes the deltas the row triggers folded (ingest_row.c) and writes
 * each profile once: the identities of new ids, then their profiles, then
 * updates of the others, following merges that committed meanwhile; then
 * it refreshes the segments that read what changed.
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

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "ingest.h"
#include "persona.h"
#include "rowwriter.h"
#include "segments.h"
#include "traits.h"

/* Plans of the statement-level trigger, prepared once per backend. */
static SPIPlanPtr insert_identities_plan = NULL;
static SPIPlanPtr select_identities_plan = NULL;
static SPIPlanPtr move_events_plan = NULL;
static SPIPlanPtr select_merges_plan = NULL;

/*
 * Profiles the statement's rows moved from and to (lost identity races,
 * concurrent merges), in the batch's memory: a trigger's firing follows its
 * event to the profile it ends on.
 */
typedef struct ProfileMove
{
	int64		from;
	int64		into;
} ProfileMove;

static ProfileMove *moves = NULL;
static int	nmoves = 0;
static int	maxmoves = 0;

static void
RecordMove(int64 from, int64 into)
{
	if (nmoves == maxmoves)
	{
		maxmoves = Max(8, maxmoves * 2);
		moves = moves == NULL ? palloc(sizeof(ProfileMove) * maxmoves)
			: repalloc(moves, sizeof(ProfileMove) * maxmoves);
	}
	moves[nmoves].from = from;
	moves[nmoves++].into = into;
}

/* Where the rows of a profile ended, following every move in order. */
static int64
MovedTo(int64 pid)
{
	for (int i = 0; i < nmoves; i++)
		if (moves[i].from == pid)
			pid = moves[i].into;
	return pid;
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
		placed[list[i]->profile_id - lo] = list[i]; /* ids are distinct */
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
 * rows this statement wrote in it but no id of the map (PersonaIdMap.in_own_subxact
 * keeps IdMapSubXactCallback from forgetting them).  An error inside it (a
 * cancel included) must roll it back before going on (AbortOwnSubxact), so
 * that whoever catches the error finds its own subtransaction current and
 * the map's callbacks listening again.
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
	PersonaIdMap.in_own_subxact = true;
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
	PersonaIdMap.in_own_subxact = false;
}

/* In the PG_CATCH of an own subtransaction: rolls it back, returns the error. */
static ErrorData *
AbortOwnSubxact(const OwnSubxact *sub)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(sub->cxt);
	edata = CopyErrorData();
	FlushErrorState();
	EndOwnSubxact(sub, false);
	return edata;
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
		RowWriter  *w = PersonaRowWriterOpen(relid, columns, lengthof(columns));
		Datum		user = CStringGetTextDatum("user");
		Datum		anonymous = CStringGetTextDatum("anonymous");

		for (int i = 0; i < n; i++)
		{
			Datum		values[3];

			CHECK_FOR_INTERRUPTS();
			values[0] = CStringGetTextDatum(fresh[i].entry->id);
			values[1] = Int64GetDatum(fresh[i].profile_id);
			values[2] = fresh[i].entry->is_user ? user : anonymous;
			PersonaRowWriterInsert(w, values, NULL);
			pfree(DatumGetPointer(values[0]));
		}
		PersonaRowWriterClose(w);
		EndOwnSubxact(&sub, true);
	}
	PG_CATCH();
	{
		ErrorData  *edata = AbortOwnSubxact(&sub);

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
		CHECK_FOR_INTERRUPTS();
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

		CHECK_FOR_INTERRUPTS();
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
		RecordMove(lost->profile_id, winner_pid);
		lost->new_id->profile_id = winner_pid;
		winner = EnterDelta(deltas, winner_pid, &found);
		if (found)
			PersonaIngestCombineDeltas(winner, lost);
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
	PersonaIdMap.pending -= n;
	if (written < (uint64) n)
		JoinWinners(deltas, fresh, n);
}

/*
 * The ids the statement's rows saw first, sorted bytewise: the records the
 * row trigger made, or, when PersonaIngestTakeFolds merged folds (whose records point to
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
			CHECK_FOR_INTERRUPTS();
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

			CHECK_FOR_INTERRUPTS();
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
		*state = PersonaProfileTraitsSerialize(d->traits, now);
		*next = PersonaProfileTraitsNextChange(d->traits, now);
	}
	d->written = true;
}

/*
 * The rows of the profiles a statement wrote are kept for its segment
 * refresh, which then evaluates the predicates over them instead of
 * fetching each profile again by primary key (the row is the one the
 * statement wrote, under its row lock: a fetch would find that one).  At
 * most this many bytes of rows per statement; profiles beyond are fetched.
 */
#define KEPT_ROWS_MAX_BYTES (8 * 1024 * 1024)

static Size kept_rows_bytes = 0;

/*
 * Whether segments exist or rows fired triggers: the rows are kept for the
 * refresh, the trigger conditions and the consent of the messages.
 */
static bool keep_rows = false;

/*
 * Keeps the row just written, from ``slot`` (NULL: it may not be the row
 * stored), for ``d``, within the budget.
 */
static void
KeepRow(ProfileDelta *d, TupleTableSlot *slot, MemoryContext cxt)
{
	MemoryContext old;

	d->row = NULL;
	if (!keep_rows || slot == NULL || kept_rows_bytes >= KEPT_ROWS_MAX_BYTES)
		return;
	old = MemoryContextSwitchTo(cxt);
	d->row = ExecCopySlotHeapTuple(slot);
	MemoryContextSwitchTo(old);
	kept_rows_bytes += HEAPTUPLESIZE + d->row->t_len;
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
	RowWriter  *w = PersonaRowWriterOpen(PersonaGetCatalog()->profiles, columns, lengthof(columns));
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	MemoryContext keep = CurrentMemoryContext;
	bool		clock = PersonaClockSegmentsExist();

	SortByProfileId(list, n);
	for (int i = 0; i < n; i++)
	{
		ProfileDelta *d = list[i];
		Datum		values[7];
		bool		nulls[7] = {false};
		bytea	   *state;
		TimestampTz next;
		TupleTableSlot *slot;

		CHECK_FOR_INTERRUPTS();
		DeltaState(d, now, &state, &next);
		if (clock)				/* its flip times are computed by the tick */
			next = now;
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
		slot = PersonaRowWriterInsert(w, values, nulls);
		KeepRow(d, PersonaRowWriterRowsExact(w) ? slot : NULL, keep);
		if (state != NULL)
			pfree(state);
		if (!nulls[6])
			pfree(DatumGetPointer(values[6]));
	}
	PersonaRowWriterClose(w);
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
	bool		clock;			/* a clock segment exists (clock.c) */
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
		TimestampTz next = PersonaProfileTraitsNextChange(d->traits, change->now);
		ProfileTraits *pt = PersonaProfileTraitsParse(nulls[cs] ? NULL : DatumGetByteaPP(values[cs]));
		bytea	   *state;

		PersonaProfileTraitsCombine(pt, d->traits);
		state = PersonaProfileTraitsSerialize(pt, change->now);
		values[cs] = PointerGetDatum(state);
		nulls[cs] = state == NULL;
		if (next != 0 && (nulls[nc] || next < DatumGetTimestampTz(values[nc])))
		{
			values[nc] = TimestampTzGetDatum(next);
			nulls[nc] = false;
		}
	}

	/*
	 * Clock segments: first and last seen moved, so may their flip times: due
	 * now, unless already due (then the row may stay a HOT update).
	 */
	i = pc->next_change_at - 1;
	if (change->clock && (nulls[i] || DatumGetTimestampTz(values[i]) > change->now))
	{
		values[i] = TimestampTzGetDatum(change->now);
		nulls[i] = false;
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
	MemoryContext keep = CurrentMemoryContext;
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
	u = PersonaRowUpdaterOpen(cat->profiles, cat->profiles_pkey);
	change.now = GetCurrentTransactionStartTimestamp();
	change.clock = PersonaClockSegmentsExist();
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(row_cxt);
		change.delta = list[i];
		if (!PersonaRowUpdaterUpdate(u, list[i]->profile_id, AddDelta, &change))
			orphans[norphans++] = list[i];
		else
			KeepRow(list[i], PersonaRowUpdaterRow(u), keep);
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_cxt);
	}
	PersonaRowUpdaterClose(u);
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
	RecordMove(pid, into);
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
	PG_TRY();
	{
		norphans = UpdateProfiles(list, n, orphans);
	}
	PG_CATCH();
	{
		ReThrowError(AbortOwnSubxact(&sub));
	}
	PG_END_TRY();
	EndOwnSubxact(&sub, norphans == 0);
	if (norphans > 0)
		for (int i = 0; i < n; i++)
		{
			list[i]->written = false;
			list[i]->row = NULL;	/* rolled back */
		}
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
	ProfileDelta **list = palloc(sizeof(ProfileDelta *) * total);
	int64	   *ids = palloc(sizeof(int64) * total);
	HeapTuple  *rows = palloc(sizeof(HeapTuple) * total);
	int			n = 0;
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
		CHECK_FOR_INTERRUPTS();
		list[n++] = slot->delta;
		if (slot->delta->created)
			ncreated++;
	}

	/*
	 * In profile order, not the hash's: the entries are then written in the
	 * key order of persona.segment_members' primary key and of segment_log's
	 * profile_id index, each insert landing on the leaf the last one did (the
	 * rightmost, for new profiles), whose pages are in cache, instead of on a
	 * random one.  The known profiles first, then the created ones.
	 */
	SortByProfileId(list, n);
	{
		int			k = 0;
		int			c = n - ncreated;

		for (int i = 0; i < n; i++)
		{
			int			at = list[i]->created ? c++ : k++;

			ids[at] = list[i]->profile_id;
			rows[at] = list[i]->row;
		}
	}
	(void) PersonaSegmentsRefreshRows(ids, rows, n - ncreated, false, changed, nchanged);
	(void) PersonaSegmentsRefreshRows(ids + n - ncreated, rows + n - ncreated, ncreated, true,
									  NULL, 0);
}

/* Writes each profile the statement's rows touched, once. */
PG_FUNCTION_INFO_V1(persona_events_apply);
Datum
persona_events_apply(PG_FUNCTION_ARGS)
{
	(void) PersonaIngestRequireInsertTrigger(fcinfo, false, false,
											 "persona_events_apply must be fired AFTER INSERT FOR EACH STATEMENT");
	PersonaIngestEndStatement();
	PersonaIngestApply();
	return PointerGetDatum(NULL);
}

/*
 * The apply of an insert into persona.events: the statement trigger's, and
 * persona_track's when it inserts its event itself (track.c), which runs it
 * as the trigger would run, with persona.maintenance on.
 */
void
PersonaIngestApply(void)
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

	PersonaIngestCloseIdentityScan();
	folds = PersonaIngestTakeFolds();
	if (folds == NULL)
	{
		IdMapPrune();
		return;
	}
	deltas = folds->deltas;
	Assert(deltas->members > 0);	/* folds are made for a row */
	batch = AllocSetContextCreate(CurrentMemoryContext, "persona batch",
								  ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(batch);
	moves = NULL;
	nmoves = maxmoves = 0;
	kept_rows_bytes = 0;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	keep_rows = PersonaSegmentsExist() || folds->nfirings > 0;

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
		{
			CHECK_FOR_INTERRUPTS();
			if (!slot->delta->written)
				list[n++] = slot->delta;
		}
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

			CHECK_FOR_INTERRUPTS();
			pidmap_delete(deltas, moved.profile_id);
			d = EnterDelta(deltas, into, &found);
			if (found && !d->written)
				PersonaIngestCombineDeltas(d, &moved);
			else
			{
				/* Only the moved rows are still to be written. */
				*d = moved;
				d->profile_id = into;
				d->new_id = NULL;
				d->written = false;
				d->row = NULL;
			}
		}
	}
	RefreshSegments(deltas, folds->touched_names);
	if (folds->nfirings > 0)
	{
		HeapTuple  *rows = palloc(sizeof(HeapTuple) * folds->nfirings);

		for (int i = 0; i < folds->nfirings; i++)
		{
			PidSlot    *s;

			folds->firings[i].profile_id = MovedTo(folds->firings[i].profile_id);
			s = pidmap_lookup(deltas, folds->firings[i].profile_id);
			rows[i] = s != NULL && s->delta->written ? s->delta->row : NULL;
		}
		PersonaTriggersFire(folds->firings, rows, folds->nfirings);
	}
	SPI_finish();

	MemoryContextSwitchTo(old);
	MemoryContextDelete(batch);
	MemoryContextDelete(folds->cxt);
	IdMapPrune();
}
