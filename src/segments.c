/*
 * segments.c
 *	  Real-time segments: keeping persona.segment_members current for the
 *	  profiles a change touched.  Predicates are checked and compiled by
 *	  predicate.c when a segment is created.
 *
 * Refreshing.  PersonaSegmentsRefresh(profiles, changed columns) evaluates, in one
 * query, every segment that reads one of the changed columns for those
 * profiles, compares with the current members, and writes the entries and
 * exits (persona.segment_members, persona.segment_log); the transaction's
 * commit wakes the announcer (announcer.c), which notifies
 * persona_segment: writers never NOTIFY.  Callers hold the profiles' row locks,
 * so changes to one profile's memberships are serialized.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/bitmapset.h"
#include "storage/proc.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "announcer.h"
#include "defcache.h"
#include "persona.h"
#include "profile.h"
#include "rowwriter.h"
#include "segments.h"
#include "triggers.h"

/* One row of persona.segments, as the C code needs it. */
typedef struct SegmentDef
{
	int32		segment_id;
	char	   *name;
	Datum		name_text;		/* the name as text (member and log rows) */
	char	   *sql;			/* the checked, deparsed predicate */
	ExprState  *state;			/* it, compiled over a persona.profiles row */
	bool		may_fail;		/* it may fail on a profile's data (class 22
								 * or 54): evaluated in a subtransaction */
	int			nreads;
	char	  **reads;			/* columns of persona.segment_source it reads */
	bool		clock;			/* calls a function of the clock */
} SegmentDef;

typedef struct SegmentCatalog
{
	int			nsegments;
	SegmentDef *segments;		/* ordered by segment_id */
	bool		any_clock;		/* one of them is a clock segment */
} SegmentCatalog;

static SPIPlanPtr exit_plan = NULL;

/* ---------------------------------------------------------------------
 * Definitions cache
 * --------------------------------------------------------------------- */

static const char *const segment_columns[] = {
	"segment_id", "name", "predicate_sql", "reads", "clock"
};

static void
ReadSegmentDef(void *entry, const Datum *values, const bool *nulls)
{
	SegmentDef *d = (SegmentDef *) entry;
	Datum	   *reads;
	int			nreads;

	d->segment_id = DatumGetInt32(values[0]);
	d->name = TextDatumGetCString(values[1]);
	d->name_text = CStringGetTextDatum(d->name);
	d->sql = TextDatumGetCString(values[2]);
	deconstruct_array(DatumGetArrayTypeP(values[3]), TEXTOID, -1, false,
					  TYPALIGN_INT, &reads, NULL, &nreads);
	d->nreads = nreads;
	d->reads = palloc(sizeof(char *) * Max(nreads, 1));
	for (int i = 0; i < nreads; i++)
		d->reads[i] = TextDatumGetCString(reads[i]);
	d->clock = DatumGetBool(values[4]);
}

/*
 * Each predicate is compiled once per load into an expression over a row of
 * persona.profiles (predicate.c), kept in the cache's memory.
 */
static void *
BuildSegmentCatalog(void *entries, int n)
{
	SegmentCatalog *sc = palloc0(sizeof(SegmentCatalog));
	Oid			source = PersonaGetCatalog()->segment_source;

	sc->segments = (SegmentDef *) entries;
	sc->nsegments = n;
	for (int k = 0; k < n; k++)
	{
		sc->segments[k].state = PersonaPreparePredicate(sc->segments[k].sql, source,
														&sc->segments[k].may_fail);
		sc->any_clock |= sc->segments[k].clock;
	}
	return sc;
}

/*
 * The segment definitions, read and compiled again after persona.segments
 * changed, or persona.segment_source was rebuilt (a trait defined or
 * dropped: the compiled expressions call the view's decoders).  A trait a
 * segment reads cannot be dropped.
 */
static DefinitionCache segment_cache = {
	.name = "persona segments",
	.relation = offsetof(PersonaCatalog, segments),
	.columns = segment_columns,
	.ncolumns = lengthof(segment_columns),
	.entry_size = sizeof(SegmentDef),
	.read_row = ReadSegmentDef,
	.build = BuildSegmentCatalog,
	.depends = offsetof(PersonaCatalog, segment_source),
};

static SegmentCatalog *
GetSegmentCatalog(void)
{
	return (SegmentCatalog *) PersonaDefinitions(&segment_cache);
}

/* Does a segment exist? */
bool
PersonaSegmentsExist(void)
{
	return GetSegmentCatalog()->nsegments > 0;
}

/*
 * Does a clock segment exist?  Then a profile written must be looked at by
 * the next tick (its flip times may have moved: clock.c).
 */
bool
PersonaClockSegmentsExist(void)
{
	return GetSegmentCatalog()->any_clock;
}

/* ---------------------------------------------------------------------
 * Refreshing memberships
 * --------------------------------------------------------------------- */

/* Entries or exits: which segment (an index in the catalog), which profile. */
typedef struct ChangeList
{
	int			n;
	int			max;
	int		   *segments;
	Datum	   *pids;
} ChangeList;

static void
AddChange(ChangeList *list, int segment, int64 pid)
{
	if (list->n == list->max)
	{
		list->max = Max(16, list->max * 2);
		list->segments = list->segments ? repalloc(list->segments, sizeof(int) * list->max)
			: palloc(sizeof(int) * list->max);
		list->pids = list->pids ? repalloc(list->pids, sizeof(Datum) * list->max)
			: palloc(sizeof(Datum) * list->max);
	}
	list->segments[list->n] = segment;
	list->pids[list->n] = Int64GetDatum(pid);
	list->n++;
}

/*
 * Writes entries: a member row and a log row each, through RowWriters, and
 * announces them.  The callers hold the profiles' row locks and segment
 * definitions wait for them, so no one else changes these memberships
 * meanwhile: plain inserts suffice.
 */
static uint64
WriteEntries(const SegmentCatalog *sc, const ChangeList *entries)
{
	static const char *const member_columns[] = {"segment", "profile_id"};
	static const char *const log_columns[] = {"segment", "profile_id", "op"};
	const PersonaCatalog *cat = PersonaGetCatalog();
	RowWriter  *members;
	RowWriter  *log;
	Datum		op = CStringGetTextDatum("enter");

	if (entries->n == 0)
		return 0;
	members = PersonaRowWriterOpen(cat->segment_members, member_columns, lengthof(member_columns));
	log = PersonaRowWriterOpen(cat->segment_log, log_columns, lengthof(log_columns));
	for (int i = 0; i < entries->n; i++)
	{
		const SegmentDef *seg = &sc->segments[entries->segments[i]];
		Datum		values[3] = {seg->name_text, entries->pids[i], op};

		CHECK_FOR_INTERRUPTS();
		(void) PersonaRowWriterInsert(members, values, NULL);
		(void) PersonaRowWriterInsert(log, values, NULL);
	}
	PersonaRowWriterClose(log);
	PersonaRowWriterClose(members);
	CommandCounterIncrement();
	PersonaAnnounce();
	return entries->n;
}

/*
 * Deletes the member rows of exits, logs and announces them (one SPI
 * statement: exits are few next to entries).
 */
static uint64
WriteExits(const SegmentCatalog *sc, const ChangeList *exits)
{
	Oid			types[2] = {TEXTARRAYOID, INT8ARRAYOID};
	Datum		args[2];
	Datum	   *segments;
	SPIPlanPtr	plan;
	uint64		done;

	if (exits->n == 0)
		return 0;
	segments = palloc(sizeof(Datum) * exits->n);
	for (int i = 0; i < exits->n; i++)
		segments[i] = sc->segments[exits->segments[i]].name_text;
	args[0] = PointerGetDatum(construct_array(segments, exits->n, TEXTOID, -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(exits->pids, exits->n, INT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	plan = PersonaKeptPlan(&exit_plan,
						   "WITH changed AS ("
						   " DELETE FROM persona.segment_members AS m"
						   " USING ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(segment, profile_id)"
						   " WHERE m.segment OPERATOR(pg_catalog.=) u.segment"
						   "   AND m.profile_id OPERATOR(pg_catalog.=) u.profile_id"
						   " RETURNING m.segment, m.profile_id) "
						   "INSERT INTO persona.segment_log (segment, profile_id, op, at) "
						   "SELECT c.segment, c.profile_id, 'exit', pg_catalog.now() FROM changed AS c "
						   "RETURNING log_id", 2, types, 0);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "writing segment exits failed");
	done = SPI_processed;
	if (done > 0)
		PersonaAnnounce();
	return done;
}

/* The linked events of entries or exits, once they are written (triggers.c). */
static void
FireSegmentTriggers(const SegmentCatalog *sc, const ChangeList *changes, bool entered)
{
	const char **names;

	if (changes->n == 0)
		return;
	names = palloc(sizeof(char *) * changes->n);
	for (int i = 0; i < changes->n; i++)
		names[i] = sc->segments[changes->segments[i]].name;
	PersonaTriggersFireSegments(names, changes->pids, changes->n, entered);
}

/* Byte equality of two text datums (segment names). */
static inline bool
TextEquals(Datum a, Datum b)
{
	text	   *ta = DatumGetTextPP(a);
	text	   *tb = DatumGetTextPP(b);

	return VARSIZE_ANY_EXHDR(ta) == VARSIZE_ANY_EXHDR(tb) &&
		memcmp(VARDATA_ANY(ta), VARDATA_ANY(tb), VARSIZE_ANY_EXHDR(ta)) == 0;
}

static bool
ReadsAny(const SegmentDef *seg, const char *const *changed, int nchanged)
{
	if (changed == NULL)
		return true;
	for (int r = 0; r < seg->nreads; r++)
		for (int c = 0; c < nchanged; c++)
			if (strcmp(seg->reads[r], changed[c]) == 0)
				return true;
	return false;
}

/* Whether the profile is now a member of each segment (by name). */
static void
ReadMemberships(ProfileReader *r, const SegmentCatalog *sc, int64 profile_id, bool *was_in)
{
	int			n;
	Datum	   *names = PersonaProfileSegmentsOrdered(r, profile_id, &n);

	memset(was_in, 0, sizeof(bool) * sc->nsegments);
	for (int m = 0; m < n; m++)
		for (int k = 0; k < sc->nsegments; k++)
			if (!was_in[k] && TextEquals(names[m], sc->segments[k].name_text))
			{
				was_in[k] = true;
				break;
			}
}

/*
 * One refresh: the segments evaluated, the profiles, and what was found.
 * Everything here is allocated in the caller's memory context, so it
 * survives a subtransaction that is rolled back.
 */
typedef struct Refresh
{
	const SegmentCatalog *sc;
	const bool *evaluate;		/* per segment: whether it is evaluated */
	const int64 *profile_ids;
	const HeapTuple *rows;		/* per profile: its row, NULL: fetch it */
	int			nprofiles;
	bool		created;		/* the profiles are in no segment yet */
	ChangeList	changes[2];		/* 0: exits, 1: entries */
	int			next;			/* the batch: the profile it is at */
	bool	   *was_in;			/* per segment, for the current profile */
	bool	   *is_in;
	ProfileReader *r;			/* the reader of one profile redone alone */
	int			only;			/* that redo: the one segment evaluated */
	int64	   *errors;			/* per segment: profiles whose predicate
								 * failed */
	ErrorData **last_error;		/* per segment: the last of those errors */
} Refresh;

/*
 * Evaluates the segments of the refresh (only segment rf->only when it is
 * not negative) for the profile in the reader, into rf->is_in.
 */
static void
EvaluatePredicates(Refresh *rf, ProfileReader *r)
{
	for (int k = 0; k < rf->sc->nsegments; k++)
	{
		bool		isnull;
		Datum		v;

		if (rf->only >= 0 ? k != rf->only : !rf->evaluate[k])
			continue;
		v = ExecEvalExprSwitchContext(rf->sc->segments[k].state, r->econtext, &isnull);
		rf->is_in[k] = !isnull && DatumGetBool(v);
	}
}

/* Notes the segments the current profile enters or leaves. */
static void
AddChanges(Refresh *rf, int64 pid)
{
	for (int k = 0; k < rf->sc->nsegments; k++)
		if ((rf->only >= 0 ? k == rf->only : rf->evaluate[k]) && rf->is_in[k] != rf->was_in[k])
			AddChange(&rf->changes[rf->is_in[k] ? 1 : 0], k, pid);
}

/*
 * Whether the reader holds the profile (the row its caller wrote, when it
 * passed it, else fetched), with its memberships in rf->was_in.  Profiles
 * come in ascending order (ingest sorts them), so both reads walk their
 * index forward (PersonaProfileFetchOrdered, PersonaProfileSegmentsOrdered);
 * any other order is read correctly, a descent per profile.
 */
static bool
ReadProfile(Refresh *rf, ProfileReader *r, int64 pid)
{
	MemoryContext old;

	if (rf->rows != NULL && rf->rows[rf->next] != NULL)
		ExecForceStoreHeapTuple(rf->rows[rf->next], r->profile, false);
	else if (!PersonaProfileFetchOrdered(r, pid))
		return false;
	old = MemoryContextSwitchTo(r->econtext->ecxt_per_tuple_memory);
	if (rf->created)
		memset(rf->was_in, 0, sizeof(bool) * rf->sc->nsegments);
	else
		ReadMemberships(r, rf->sc, pid, rf->was_in);
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * The batch, from profile rf->next on, run inside one subtransaction
 * (PersonaTryEvaluation): its reader is begun and ended inside, so that a
 * rollback releases what its scans hold.  When a predicate fails, rf->next
 * is the profile it failed on, and the changes noted for the profiles
 * before it stand.
 */
static void
EvaluateBatch(void *arg)
{
	Refresh    *rf = (Refresh *) arg;
	ProfileReader r;

	PersonaProfileReaderBegin(&r, !rf->created);
	for (; rf->next < rf->nprofiles; rf->next++)
	{
		int64		pid = rf->profile_ids[rf->next];

		CHECK_FOR_INTERRUPTS();
		if (!ReadProfile(rf, &r, pid))
			continue;
		EvaluatePredicates(rf, &r);
		AddChanges(rf, pid);
		ResetExprContext(r.econtext);
	}
	PersonaProfileReaderEnd(&r);
}

/* The evaluation of one profile redone alone, in a subtransaction of its own. */
static void
EvaluateAlone(void *arg)
{
	Refresh    *rf = (Refresh *) arg;

	EvaluatePredicates(rf, rf->r);
}

/*
 * Redoes the profile a predicate failed on, segment by segment, each in its
 * own subtransaction, with a reader begun outside them (its row, fetched
 * outside, keeps its buffer pin through a rollback; it is fetched again
 * after one all the same, as the evaluation may have left the expression
 * context half-used).  A segment whose predicate fails for the profile
 * changes nothing: the profile does not enter it, and a membership it has
 * stays, since the predicate's answer is unknown.  The error is counted.
 */
static void
RedoProfile(Refresh *rf, int64 pid)
{
	ProfileReader *r = rf->r;

	if (!ReadProfile(rf, r, pid))
		return;
	for (int k = 0; k < rf->sc->nsegments; k++)
	{
		ErrorData  *error;

		if (!rf->evaluate[k])
			continue;
		rf->only = k;
		if (PersonaTryEvaluation(EvaluateAlone, rf, rf->sc->segments[k].may_fail, &error))
			AddChanges(rf, pid);
		else
		{
			rf->errors[k]++;
			rf->last_error[k] = error;
			ResetExprContext(r->econtext);
			if (!PersonaProfileFetch(r, pid))
				elog(ERROR, "profile " INT64_FORMAT " is gone", pid);
		}
		ResetExprContext(r->econtext);
	}
	rf->only = -1;
}

/*
 * Segments already warned about in the current statement: a predicate that
 * fails is logged once per statement and segment, not once per profile.
 * The set lives in the transaction's memory, and is only read while the
 * transaction and statement it was made in are current.
 */
static LocalTransactionId warned_lxid = InvalidLocalTransactionId;
static TimestampTz warned_statement = 0;
static Bitmapset *warned = NULL;

/*
 * Counts the failures of each segment's predicate on its row of
 * persona.segment_stats (errors, last_error, last_error_at; written if a
 * segment has none, as one written by hand) and warns.  The rows are
 * written in segment_id order.  Needs SPI.
 */
static void
RecordPredicateErrors(const Refresh *rf)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[3] = {INT4OID, INT8OID, TEXTOID};

	if (warned_lxid != MyProc->lxid || warned_statement != GetCurrentStatementStartTimestamp())
	{
		warned_lxid = MyProc->lxid;
		warned_statement = GetCurrentStatementStartTimestamp();
		warned = NULL;
	}
	PersonaKeptPlan(&plan,
					"INSERT INTO persona.segment_stats AS s "
					"    (segment_id, errors, last_error, last_error_at) "
					"VALUES ($1, $2, $3, pg_catalog.clock_timestamp()) "
					"ON CONFLICT (segment_id) DO UPDATE "
					"SET errors = s.errors OPERATOR(pg_catalog.+) excluded.errors, "
					"    last_error = excluded.last_error, last_error_at = excluded.last_error_at",
					3, types, 0);
	for (int k = 0; k < rf->sc->nsegments; k++)
	{
		const SegmentDef *seg = &rf->sc->segments[k];
		ErrorData  *edata = rf->last_error[k];
		Datum		args[3];
		MemoryContext old;

		if (rf->errors[k] == 0)
			continue;
		args[0] = Int32GetDatum(seg->segment_id);
		args[1] = Int64GetDatum(rf->errors[k]);
		args[2] = CStringGetTextDatum(psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode),
											   edata->message));
		if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "counting a predicate error failed");
		if (bms_is_member(seg->segment_id, warned))
			continue;
		old = MemoryContextSwitchTo(TopTransactionContext);
		warned = bms_add_member(warned, seg->segment_id);
		MemoryContextSwitchTo(old);
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("predicate of segment \"%s\" failed: %s", seg->name, edata->message),
				 errdetail("The profiles it failed for neither enter nor leave the segment; the change and the other segments are applied as usual."),
				 errhint("persona.segment_stats counts the errors of each segment.")));
	}
}

/*
 * Evaluates the segments flagged in ``evaluate`` for the given profiles and
 * applies the differences.  ``created``: the profiles were created by the
 * calling statement, so they are in no segment yet.  Each predicate runs
 * as an expression compiled once per definitions load, over the profile's
 * row fetched by primary key: no query is planned or executed per call.
 *
 * A definition never blocks ingest: the whole batch is evaluated inside
 * one subtransaction, and only when a predicate fails on a profile's data
 * (PersonaTryEvaluation) is that profile redone alone, segment by segment
 * (RedoProfile), before the batch goes on after it in a new
 * subtransaction.  When every predicate evaluated is one that cannot fail
 * (SegmentDef.may_fail false, predicate.c), the batch runs without one.
 * Nothing is written inside them: the changes are noted in memory and
 * written afterwards.  Returns the number of entries and exits.
 */
static uint64
RefreshSegments(const SegmentCatalog *sc, const bool *evaluate, const int64 *profile_ids,
				const HeapTuple *rows, int nprofiles, bool created)
{
	Refresh		rf = {0};
	ProfileReader alone;
	bool		failed = false;
	bool		may_fail = false;
	uint64		nchanges = 0;

	rf.sc = sc;
	rf.evaluate = evaluate;
	rf.profile_ids = profile_ids;
	rf.rows = rows;
	rf.nprofiles = nprofiles;
	rf.created = created;
	rf.only = -1;
	rf.was_in = palloc0(sizeof(bool) * sc->nsegments);
	rf.is_in = palloc0(sizeof(bool) * sc->nsegments);
	rf.errors = palloc0(sizeof(int64) * sc->nsegments);
	rf.last_error = palloc0(sizeof(ErrorData *) * sc->nsegments);
	for (int k = 0; k < sc->nsegments; k++)
		may_fail |= evaluate[k] && sc->segments[k].may_fail;
	for (;;)
	{
		ErrorData  *error;

		/*
		 * A profile's changes are noted once all its predicates answered.
		 * When none of them can fail, no subtransaction: the batch then
		 * completes or throws.
		 */
		if (PersonaTryEvaluation(EvaluateBatch, &rf, may_fail, &error))
			break;
		if (!failed)
		{
			PersonaProfileReaderBegin(&alone, !created);
			rf.r = &alone;
			failed = true;
		}
		RedoProfile(&rf, profile_ids[rf.next]);
		rf.next++;
	}
	if (failed)
		PersonaProfileReaderEnd(&alone);

	/* Exits first, then entries. */
	if (rf.changes[0].n > 0 || failed)
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		nchanges += WriteExits(sc, &rf.changes[0]);
		if (failed)
			RecordPredicateErrors(&rf);
		SPI_finish();
	}
	nchanges += WriteEntries(sc, &rf.changes[1]);
	FireSegmentTriggers(sc, &rf.changes[0], false);
	FireSegmentTriggers(sc, &rf.changes[1], true);
	return nchanges;
}

/*
 * Re-evaluates the segments that read any of ``changed`` (NULL: all; the
 * pseudo-column "now()" selects the segments that call clock functions) for
 * the given profiles and applies the differences (RefreshSegments).
 */
uint64
PersonaSegmentsRefresh(const int64 *profile_ids, int nprofiles, bool created,
					   const char *const *changed, int nchanged)
{
	return PersonaSegmentsRefreshRows(profile_ids, NULL, nprofiles, created, changed, nchanged);
}

/*
 * PersonaSegmentsRefresh over rows the caller just wrote (``rows``, per
 * profile: its persona.profiles row as stored, or NULL to fetch it), which
 * saves a fetch by primary key per profile.  The caller holds the rows'
 * locks, so they are the rows a fetch would find.
 */
uint64
PersonaSegmentsRefreshRows(const int64 *profile_ids, const HeapTuple *rows, int nprofiles,
						   bool created, const char *const *changed, int nchanged)
{
	SegmentCatalog *sc;
	bool	   *evaluate;
	int			nevaluate = 0;
	bool		clock_requested = false;

	if (nprofiles == 0)
		return 0;
	sc = GetSegmentCatalog();
	if (sc->nsegments == 0)
		return 0;

	for (int c = 0; changed != NULL && c < nchanged; c++)
		if (strcmp(changed[c], "now()") == 0)
			clock_requested = true;
	evaluate = palloc0(sizeof(bool) * sc->nsegments);
	for (int k = 0; k < sc->nsegments; k++)
	{
		const SegmentDef *seg = &sc->segments[k];

		evaluate[k] = ReadsAny(seg, changed, nchanged) || (clock_requested && seg->clock);
		if (evaluate[k])
			nevaluate++;
	}
	if (nevaluate == 0)
		return 0;
	return RefreshSegments(sc, evaluate, profile_ids, rows, nprofiles, created);
}

/* The non-null ids of a bigint[] argument. */
static int64 *
ProfileIdsArg(FunctionCallInfo fcinfo, int argno, int *n)
{
	Datum	   *ids;
	bool	   *ids_null;
	int			nids;
	int64	   *pids;

	deconstruct_array(PG_GETARG_ARRAYTYPE_P(argno), INT8OID, 8, FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &ids, &ids_null, &nids);
	pids = palloc(sizeof(int64) * Max(nids, 1));
	*n = 0;
	for (int i = 0; i < nids; i++)
		if (!ids_null[i])
			pids[(*n)++] = DatumGetInt64(ids[i]);
	return pids;
}

/*
 * Evaluates one segment, by name, for profiles (persona_create_segment, when
 * its set-based evaluation failed on some profile's data): the profiles
 * whose predicate fails are not members, and counted.
 */
PG_FUNCTION_INFO_V1(persona_evaluate_segment);
Datum
persona_evaluate_segment(PG_FUNCTION_ARGS)
{
	SegmentCatalog *sc;
	bool	   *evaluate;
	char	   *name;
	int64	   *pids;
	int			n;
	bool		found = false;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_INT64(0);
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	pids = ProfileIdsArg(fcinfo, 1, &n);
	sc = GetSegmentCatalog();
	evaluate = palloc0(sizeof(bool) * Max(sc->nsegments, 1));
	for (int k = 0; k < sc->nsegments; k++)
		if (strcmp(sc->segments[k].name, name) == 0)
			evaluate[k] = found = true;
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("segment \"%s\" does not exist", name)));
	if (n == 0)
		PG_RETURN_INT64(0);
	PG_RETURN_INT64((int64) RefreshSegments(sc, evaluate, pids, NULL, n, false));
}

/* Re-evaluates segments for profiles; changed NULL means every segment. */
PG_FUNCTION_INFO_V1(persona_refresh_segments);
Datum
persona_refresh_segments(PG_FUNCTION_ARGS)
{
	int64	   *pids;
	char	  **changed = NULL;
	int			nchanged = 0;
	int			n;

	if (PG_ARGISNULL(0))
		PG_RETURN_INT64(0);
	pids = ProfileIdsArg(fcinfo, 0, &n);
	if (!PG_ARGISNULL(1))
	{
		Datum	   *names;
		bool	   *names_null;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, -1, false,
						  TYPALIGN_INT, &names, &names_null, &nchanged);
		changed = palloc(sizeof(char *) * Max(nchanged, 1));
		for (int i = 0; i < nchanged; i++)
			changed[i] = names_null[i] ? "" : TextDatumGetCString(names[i]);
	}
	PG_RETURN_INT64((int64) PersonaSegmentsRefresh(pids, n, false, (const char *const *) changed,
												   nchanged));
}
