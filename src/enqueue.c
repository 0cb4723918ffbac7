/*
 * enqueue.c
 *	  The outbox's entry: queueing messages as a set.
 *
 * A statement that fires triggers for thousands of events queues their
 * messages here in a fixed number of queries, whatever their number: the
 * actions come from a per-backend definitions cache (defcache.c), the
 * consent of every profile is read by its primary key (rows this
 * transaction did not write are read again FOR KEY SHARE, against merges,
 * in one query), what counts toward caps and cooldowns once per profile
 * and capped action (persona.recent_sends), and the messages are written
 * by a RowWriter (rowwriter.c: heap_multi_insert and the index entries
 * directly, the CHECK constraints compiled once per statement, the
 * caller's INSERT privilege checked as the INSERT it replaced did) and
 * the suppressions by one call of
 * persona.count_suppressions.  The rules are those of the one-message
 * entry it replaced, applied to the items in order, as if queued one by
 * one: consent, then the action's cap_per_day and cooldown (messages
 * queued by earlier items of the same call count), then the holdouts of
 * running experiments (experiments.c's hook, which records the exposure).
 * The decision lock of a profile (PersonaLockProfileSends) is taken only
 * for capped actions, in profile order, so that two bulk statements cannot
 * deadlock on it and a bulk insert does not fill the lock table.
 *
 * persona.enqueue_message, the SQL entry for one message, is this with
 * one item.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/acl.h"

#include "announcer.h"
#include "campaigns.h"
#include "defcache.h"
#include "enqueue.h"
#include "experiments.h"
#include "outbox.h"
#include "persona.h"
#include "profile.h"
#include "rowwriter.h"
#include "sendtime.h"

extern Datum persona_holdout_suppresses(PG_FUNCTION_ARGS);

/*
 * One row of persona.actions, as enqueueing needs it; kept per backend in
 * a definitions cache (defcache.c) until persona.actions changes.
 */
typedef struct EnqueueAction
{
	int32		action_id;		/* first: defcache.c sorts by it */
	char	   *name;
	char	   *channel;
	bool		capped;			/* a cap_per_day or a cooldown */
	int32		cap_per_day;	/* 0: none */
	Interval	cooldown;		/* zero: none */
	bool		has_cooldown;
	Interval	span;			/* greatest(24 hours, cooldown): recent_sends'
								 * span */
} EnqueueAction;

/* The cached actions, ordered by name. */
typedef struct EnqueueActions
{
	EnqueueAction *actions;
	int			n;
} EnqueueActions;

/* What counts toward the caps of one profile and capped action. */
typedef struct SendCount
{
	int64		profile_id;
	int			action;			/* index into the actions */
	int64		last_day;
	TimestampTz latest;			/* DT_NOBEGIN: none */
} SendCount;

static SPIPlanPtr consent_lock_plan = NULL;
static SPIPlanPtr recent_plan = NULL;
static SPIPlanPtr suppress_plan = NULL;

static int
CompareSendCount(const void *a, const void *b)
{
	const SendCount *x = a;
	const SendCount *y = b;

	if (x->profile_id != y->profile_id)
		return (x->profile_id > y->profile_id) - (x->profile_id < y->profile_id);
	return (x->action > y->action) - (x->action < y->action);
}

/* values[0 .. n) sorted and without duplicates; returns how many remain. */
static int
SortUnique(int64 *values, int n)
{
	int			m = 0;

	qsort(values, n, sizeof(int64), PersonaCompareInt64);
	for (int i = 0; i < n; i++)
		if (m == 0 || values[m - 1] != values[i])
			values[m++] = values[i];
	return m;
}

static Datum
TextArray(const char *const *values, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = CStringGetTextDatum(values[i]);
	return PointerGetDatum(construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT));
}

static Datum
Int64Array(const int64 *values, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(values[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static const char *const action_columns[] = {
	"action_id", "name", "channel", "cap_per_day", "cooldown"
};

static void
ReadActionRow(void *entry, const Datum *values, const bool *nulls)
{
	EnqueueAction *a = (EnqueueAction *) entry;

	a->action_id = DatumGetInt32(values[0]);
	a->name = TextDatumGetCString(values[1]);
	a->channel = TextDatumGetCString(values[2]);
	a->cap_per_day = nulls[3] ? 0 : DatumGetInt32(values[3]);
	a->has_cooldown = !nulls[4];
	if (!nulls[4])
		a->cooldown = *DatumGetIntervalP(values[4]);
	a->capped = a->cap_per_day > 0 || a->has_cooldown;
	a->span.time = USECS_PER_DAY;
	if (a->has_cooldown &&
		DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(&a->cooldown),
										  IntervalPGetDatum(&a->span))) > 0)
		a->span = a->cooldown;
}

static int
CompareActionNames(const void *a, const void *b)
{
	return strcmp(((const EnqueueAction *) a)->name, ((const EnqueueAction *) b)->name);
}

static void *
BuildActions(void *entries, int n)
{
	EnqueueActions *ea = palloc(sizeof(EnqueueActions));

	ea->actions = (EnqueueAction *) entries;
	ea->n = n;
	if (n > 1)
		qsort(ea->actions, n, sizeof(EnqueueAction), CompareActionNames);
	return ea;
}

static DefinitionCache action_cache = {
	.name = "persona enqueue actions",
	.relation = offsetof(PersonaCatalog, actions),
	.columns = action_columns,
	.ncolumns = lengthof(action_columns),
	.entry_size = sizeof(EnqueueAction),
	.read_row = ReadActionRow,
	.build = BuildActions,
};

/*
 * The actions named by the items, from the cached definitions (no query
 * per call): item_action[i] is the index of items[i]'s action in the
 * returned array, -1 when there is no such action.
 */
static EnqueueAction *
ReadActions(const EnqueueItem *items, int n, int *nactions, int *item_action)
{
	EnqueueActions *ea = (EnqueueActions *) PersonaDefinitions(&action_cache);

	*nactions = ea->n;
	for (int i = 0; i < n; i++)
	{
		EnqueueAction key = {.name = (char *) items[i].action};
		EnqueueAction *a;

		if (i > 0 && strcmp(items[i].action, items[i - 1].action) == 0)
		{
			item_action[i] = item_action[i - 1];
			continue;
		}
		a = ea->n == 0 ? NULL
			: bsearch(&key, ea->actions, ea->n, sizeof(EnqueueAction), CompareActionNames);
		item_action[i] = a == NULL ? -1 : (int) (a - ea->actions);
	}
	return ea->actions;
}

/* persona.profiles' consent column. */
static AttrNumber
ConsentColumn(void)
{
	const PersonaCatalog *cat = PersonaGetCatalog();

	return cat->profile_consent != InvalidAttrNumber ? cat->profile_consent
		: PersonaRequireColumn(cat->profiles, "consent");
}

/*
 * The consents of the profile rows the caller passed (rows[k] for pids[k],
 * or NULL), versions this transaction wrote (ingest's, for the profile of
 * the event just applied: EnqueueItem.profile_row), into consents[], marked
 * found.  Returns how many are left to read.
 */
static int
ConsentsOfRows(const HeapTuple *rows, int npids, Jsonb **consents, bool *found)
{
	Relation	profiles = NULL;
	AttrNumber	att = InvalidAttrNumber;
	int			left = 0;

	for (int k = 0; k < npids; k++)
	{
		bool		isnull;
		Datum		v;

		if (rows[k] == NULL)
		{
			left++;
			continue;
		}
		if (profiles == NULL)
		{
			profiles = table_open(PersonaGetCatalog()->profiles, AccessShareLock);
			att = ConsentColumn();
		}
		v = heap_getattr(rows[k], att, RelationGetDescr(profiles), &isnull);
		consents[k] = isnull ? NULL : DatumGetJsonbPCopy(v);
		found[k] = true;
	}
	if (profiles != NULL)
		table_close(profiles, AccessShareLock);
	return left;
}

/*
 * Reads the consent of every profile (pids, sorted and unique; rows[k], the
 * row of pids[k] when the caller has it, or NULL) into consents[], the rows
 * locked FOR KEY SHARE against merges and forget.  A row version this
 * transaction wrote (ingest updated the profile of the event just before)
 * is used as it is: no one else can change it before this transaction
 * ends, and the lock would cost a WAL record per profile.  The rows not
 * passed are first read by their primary key, without SQL, for the same
 * test; the others are read again, locked, in one query.  A profile that
 * does not exist is an error.
 */
static void
ReadConsents(const int64 *pids, const HeapTuple *rows, int npids, Jsonb **consents)
{
	Oid			types[1] = {INT8ARRAYOID};
	bool	   *found = palloc0(sizeof(bool) * npids);
	int64	   *others = palloc(sizeof(int64) * npids);
	int			nothers = 0;
	ProfileReader r;

	if (ConsentsOfRows(rows, npids, consents, found) > 0)
	{
		AttrNumber	att = ConsentColumn();

		PersonaProfileReaderBegin(&r, false);
		for (int k = 0; k < npids; k++)
		{
			bool		isnull;
			Datum		v;

			CHECK_FOR_INTERRUPTS();
			if (found[k])
				continue;
			if (PersonaProfileFetch(&r, pids[k]))
				v = slot_getsysattr(r.profile, MinTransactionIdAttributeNumber, &isnull);
			else
				v = TransactionIdGetDatum(InvalidTransactionId);
			if (!TransactionIdIsCurrentTransactionId(DatumGetTransactionId(v)))
			{
				others[nothers++] = pids[k];
				continue;
			}
			found[k] = true;
			v = slot_getattr(r.profile, att, &isnull);
			consents[k] = isnull ? NULL : DatumGetJsonbPCopy(v);
		}
		PersonaProfileReaderEnd(&r);
	}
	if (nothers > 0)
	{
		SPIPlanPtr	plan = PersonaKeptPlan(&consent_lock_plan,
										   "SELECT p.profile_id, p.consent FROM persona.profiles AS p "
										   " WHERE p.profile_id OPERATOR(pg_catalog.=) ANY ($1) "
										   " FOR KEY SHARE OF p", 1, types, CURSOR_OPT_GENERIC_PLAN);
		Datum		args[1];

		args[0] = Int64Array(others, nothers);
		if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "reading the consent of profiles failed");
		for (uint64 row = 0; row < SPI_processed; row++)
		{
			HeapTuple	t = SPI_tuptable->vals[row];
			bool		isnull;
			int			k = PersonaFindInt64(pids, npids,
											 DatumGetInt64(SPI_getbinval(t, SPI_tuptable->tupdesc, 1, &isnull)));
			Datum		v = SPI_getbinval(t, SPI_tuptable->tupdesc, 2, &isnull);

			CHECK_FOR_INTERRUPTS();
			if (k < 0)
				continue;
			found[k] = true;
			consents[k] = isnull ? NULL : DatumGetJsonbPCopy(v);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	for (int k = 0; k < npids; k++)
		if (!found[k])
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("profile " INT64_FORMAT " does not exist", pids[k])));
}

/*
 * What already counts toward the caps of counts[0 .. n) (sorted, unique):
 * persona.recent_sends for each profile and action, in one query.
 */
static void
ReadSendCounts(SendCount *counts, int n, const EnqueueAction *actions, int nactions)
{
	Oid			types[3] = {INT8ARRAYOID, INT4ARRAYOID, INTERVALARRAYOID};
	Datum		args[3];
	Datum	   *pids = palloc(sizeof(Datum) * n);
	Datum	   *aids = palloc(sizeof(Datum) * n);
	Datum	   *spans = palloc(sizeof(Datum) * n);
	SPIPlanPtr	plan = PersonaKeptPlan(&recent_plan,
									   "SELECT u.profile_id, u.action_id, r.last_day, r.latest "
									   "  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
									   "                  pg_catalog.unnest($3)) AS u(profile_id, action_id, span), "
									   "       LATERAL persona.recent_sends(u.profile_id, u.span, "
									   "                                    ARRAY[u.action_id]) AS r",
									   3, types, CURSOR_OPT_GENERIC_PLAN);

	for (int i = 0; i < n; i++)
	{
		const EnqueueAction *a = &actions[counts[i].action];

		pids[i] = Int64GetDatum(counts[i].profile_id);
		aids[i] = Int32GetDatum(a->action_id);
		spans[i] = IntervalPGetDatum(&a->span);
		counts[i].last_day = 0;
		TIMESTAMP_NOBEGIN(counts[i].latest);
	}
	args[0] = PointerGetDatum(construct_array(pids, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(aids, n, INT4OID, 4, true, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(spans, n, INTERVALOID, sizeof(Interval), false,
											  TYPALIGN_DOUBLE));
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the recent sends of profiles failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	t = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		pid = DatumGetInt64(SPI_getbinval(t, desc, 1, &isnull));
		int32		aid = DatumGetInt32(SPI_getbinval(t, desc, 2, &isnull));
		Datum		latest;

		SendCount	key = {.profile_id = pid,.action = -1};
		SendCount  *c;

		for (int k = 0; k < nactions; k++)
			if (actions[k].action_id == aid)
				key.action = k;
		c = bsearch(&key, counts, n, sizeof(SendCount), CompareSendCount);
		if (c == NULL)
			continue;
		c->last_day = DatumGetInt64(SPI_getbinval(t, desc, 3, &isnull));
		latest = SPI_getbinval(t, desc, 4, &isnull);
		if (!isnull)
			c->latest = DatumGetTimestampTz(latest);
	}
}

/* The cap or cooldown that suppresses a message now, else NULL; counts it if not. */
static const char *
CheckCaps(SendCount *c, const EnqueueAction *a, TimestampTz due, TimestampTz now)
{
	TimestampTz since;
	Interval	day = {.time = USECS_PER_DAY};

	if (a->cap_per_day > 0 && c->last_day >= a->cap_per_day)
		return "cap";
	if (a->has_cooldown)
	{
		since = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
														TimestampTzGetDatum(now),
														IntervalPGetDatum(&a->cooldown)));
		if (!TIMESTAMP_NOT_FINITE(c->latest) && c->latest > since)
			return "cooldown";
	}

	/*
	 * Queued: it counts for the items after it, as recent_sends would count
	 * it.
	 */
	since = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
													TimestampTzGetDatum(now),
													IntervalPGetDatum(&day)));
	if (due > since)
		c->last_day++;
	since = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
													TimestampTzGetDatum(now),
													IntervalPGetDatum(&a->span)));
	if (due > since && (TIMESTAMP_NOT_FINITE(c->latest) || due > c->latest))
		c->latest = due;
	return NULL;
}

/* The holdout hook (experiments.c), which records the exposure. */
static bool
HeldOut(int64 profile_id, const char *action)
{
	LOCAL_FCINFO(fcinfo, 3);
	Datum		result;

	InitFunctionCallInfoData(*fcinfo, NULL, 3, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = Int64GetDatum(profile_id);
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = CStringGetTextDatum(action);
	fcinfo->args[1].isnull = false;
	fcinfo->args[2].value = (Datum) 0;
	fcinfo->args[2].isnull = true;
	result = persona_holdout_suppresses(fcinfo);
	return !fcinfo->isnull && DatumGetBool(result);
}

/*
 * persona.channel_cap_per_day: the messages of one person on one channel in
 * the last day (persona.channel_sends, campaigns included), read once per
 * pair and counted on as this call queues more.
 */
typedef struct ChannelSends
{
	int64		profile_id;
	char		channel[NAMEDATALEN];	/* the hash key with profile_id */
	int64		sends;
} ChannelSends;

static bool
ChannelCapReached(HTAB *seen, int64 profile_id, const char *channel, ChannelSends **entry)
{
	ChannelSends key;
	ChannelSends *e;
	bool		found;

	memset(&key, 0, sizeof(key));
	key.profile_id = profile_id;
	strlcpy(key.channel, channel, NAMEDATALEN);
	e = hash_search(seen, &key, HASH_ENTER, &found);
	if (!found)
	{
		Oid			types[2] = {INT8OID, TEXTOID};
		Datum		args[2] = {Int64GetDatum(profile_id), CStringGetTextDatum(channel)};
		bool		isnull;

		if (SPI_execute_with_args("SELECT persona.channel_sends($1, $2)", 2, types, args,
								  NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "reading a person's messages of a channel failed");
		e->sends = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											   1, &isnull));
	}
	*entry = e;
	return e->sends >= persona_channel_cap_per_day;
}

static void
InsertMessages(const EnqueueItem *items, const int *item_action, char *const *channels,
			   const bool *queued, int n, const EnqueueAction *actions, int64 *ids)
{
	static const char *const columns[] = {"profile_id", "channel", "action", "source",
	"due_at", "action_id", "ready_at", "event"};
	Oid			relid;
	AclResult	aclresult;
	AttrNumber	id_attnum;
	RowWriter  *w;

	if (ids != NULL)
		memset(ids, 0, sizeof(int64) * n);
	relid = PersonaGetCatalog()->messages;
	if (!OidIsValid(relid))
		elog(ERROR, "persona.messages is missing");
	/* As the INSERT this replaces: the caller must be allowed to insert. */
	aclresult = pg_class_aclcheck(relid, GetUserId(), ACL_INSERT);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_TABLE, "messages");
	id_attnum = ids != NULL ? PersonaRequireColumn(relid, "message_id") : InvalidAttrNumber;
	w = NULL;
	for (int i = 0; i < n; i++)
	{
		const EnqueueAction *a;
		Datum		values[lengthof(columns)];
		bool		nulls[lengthof(columns)] = {false};
		TupleTableSlot *slot;

		CHECK_FOR_INTERRUPTS();
		if (!queued[i])
			continue;
		if (w == NULL)
			w = PersonaRowWriterOpen(relid, columns, lengthof(columns));
		a = &actions[item_action[i]];
		values[0] = Int64GetDatum(items[i].profile_id);
		values[1] = CStringGetTextDatum(channels[i]);
		values[2] = CStringGetTextDatum(a->name);
		values[3] = CStringGetTextDatum(items[i].source);
		values[4] = TimestampTzGetDatum(items[i].due_at);
		values[5] = Int32GetDatum(a->action_id);
		values[6] = TimestampTzGetDatum(items[i].due_at);
		values[7] = items[i].event ? JsonbPGetDatum(items[i].event) : (Datum) 0;
		nulls[7] = items[i].event == NULL;
		/* message_id is the sequence's default, taken as the row is made. */
		slot = PersonaRowWriterInsert(w, values, nulls);
		if (ids != NULL)
		{
			bool		isnull;

			ids[i] = DatumGetInt64(slot_getattr(slot, id_attnum, &isnull));
		}
	}
	if (w != NULL)
		PersonaRowWriterClose(w);
}

static void
CountSuppressions(const char **sources, const char **reasons, int n)
{
	Oid			types[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum		args[2];
	SPIPlanPtr	plan;

	if (n == 0)
		return;
	plan = PersonaKeptPlan(&suppress_plan, "SELECT persona.count_suppressions($1, $2)",
						   2, types, CURSOR_OPT_GENERIC_PLAN);
	args[0] = TextArray(sources, n);
	args[1] = TextArray(reasons, n);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "counting suppressed messages failed");
}

int64
PersonaEnqueue(const EnqueueItem *items, int n, bool dropped_counts, int64 *ids)
{
	int		   *item_action;
	EnqueueAction *actions;
	int			nactions;
	int64	   *pids;
	int			npids = 0;
	int64	   *locks;
	int			nlocks = 0;
	Jsonb	  **consents;
	HeapTuple  *rows;
	SendCount  *counts;
	int			ncounts = 0;
	const char **reasons;
	const char **sup_sources;
	const char **sup_reasons;
	int			nsup = 0;
	bool	   *queued;
	int64		nqueued = 0;
	bool		holdouts;
	char	  **channels;
	HTAB	   *channel_sends = NULL;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	if (n == 0)
		return 0;
	item_action = palloc(sizeof(int) * n);
	actions = ReadActions(items, n, &nactions, item_action);
	reasons = palloc0(sizeof(char *) * n);
	for (int i = 0; i < n; i++)
		if (item_action[i] < 0)
		{
			if (!dropped_counts)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("action \"%s\" does not exist", items[i].action)));
			reasons[i] = "action_dropped";
		}

	/* The decision locks of capped actions' profiles, in profile order. */
	pids = palloc(sizeof(int64) * n);
	locks = palloc(sizeof(int64) * n);
	for (int i = 0; i < n; i++)
	{
		if (reasons[i] != NULL)
			continue;
		pids[npids++] = items[i].profile_id;
		if (actions[item_action[i]].capped || persona_channel_cap_per_day > 0)
			locks[nlocks++] = items[i].profile_id;
	}
	nlocks = SortUnique(locks, nlocks);
	for (int k = 0; k < nlocks; k++)
	{
		CHECK_FOR_INTERRUPTS();
		PersonaLockProfileSends(locks[k]);
	}
	npids = SortUnique(pids, npids);
	consents = palloc0(sizeof(Jsonb *) * Max(npids, 1));
	rows = palloc0(sizeof(HeapTuple) * Max(npids, 1));
	for (int i = 0; i < n; i++)
	{
		int			k = PersonaFindInt64(pids, npids, items[i].profile_id);

		if (items[i].profile_row != NULL && k >= 0)
			rows[k] = items[i].profile_row;
	}
	if (npids > 0)
		ReadConsents(pids, rows, npids, consents);

	/*
	 * The channel (an action on the channel "best": the person's best
	 * consented channel now, sendtime.c; none consented is a consent
	 * suppression), then consent; the capped pairs that remain need their
	 * recent sends.
	 */
	counts = palloc(sizeof(SendCount) * n);
	channels = palloc0(sizeof(char *) * n);
	for (int i = 0; i < n; i++)
	{
		const EnqueueAction *a;

		CHECK_FOR_INTERRUPTS();
		if (reasons[i] != NULL)
			continue;
		a = &actions[item_action[i]];
		channels[i] = strcmp(a->channel, PERSONA_BEST_CHANNEL) == 0
			? PersonaBestChannel(items[i].profile_id, true, NULL)
			: a->channel;
		if (channels[i] == NULL ||
			!PersonaConsented(consents[PersonaFindInt64(pids, npids, items[i].profile_id)], channels[i]))
			reasons[i] = "consent";
		else if (a->capped)
		{
			counts[ncounts].profile_id = items[i].profile_id;
			counts[ncounts].action = item_action[i];
			ncounts++;
		}
	}
	if (ncounts > 0)
	{
		int			m = 0;

		qsort(counts, ncounts, sizeof(SendCount), CompareSendCount);
		for (int i = 0; i < ncounts; i++)
			if (m == 0 || CompareSendCount(&counts[m - 1], &counts[i]) != 0)
				counts[m++] = counts[i];
		ncounts = m;
		ReadSendCounts(counts, ncounts, actions, nactions);
	}

	/*
	 * In order: caps and cooldowns, the channel cap, then holdouts, as one
	 * message at a time would.
	 */
	holdouts = PersonaGetExperiments()->nrunning > 0;
	if (persona_channel_cap_per_day > 0)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = offsetof(ChannelSends, sends);
		ctl.entrysize = sizeof(ChannelSends);
		ctl.hcxt = CurrentMemoryContext;
		channel_sends = hash_create("persona channel sends", 64, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	queued = palloc0(sizeof(bool) * n);
	sup_sources = palloc(sizeof(char *) * n);
	sup_reasons = palloc(sizeof(char *) * n);
	for (int i = 0; i < n; i++)
	{
		const EnqueueAction *a = item_action[i] < 0 ? NULL : &actions[item_action[i]];
		ChannelSends *sends;

		CHECK_FOR_INTERRUPTS();
		if (reasons[i] == NULL && a->capped)
		{
			SendCount	key = {.profile_id = items[i].profile_id,.action = item_action[i]};
			SendCount  *c = bsearch(&key, counts, ncounts, sizeof(SendCount), CompareSendCount);

			reasons[i] = CheckCaps(c, a, items[i].due_at, now);
		}
		sends = NULL;
		if (reasons[i] == NULL && channel_sends != NULL &&
			ChannelCapReached(channel_sends, items[i].profile_id, channels[i], &sends))
			reasons[i] = "cap";
		if (reasons[i] == NULL && holdouts && HeldOut(items[i].profile_id, a->name))
			reasons[i] = "holdout";
		if (reasons[i] != NULL)
		{
			sup_sources[nsup] = items[i].source;
			sup_reasons[nsup++] = reasons[i];
			continue;
		}
		queued[i] = true;
		nqueued++;
		if (sends != NULL)
			sends->sends++;
	}

	InsertMessages(items, item_action, channels, queued, n, actions, ids);
	CountSuppressions(sup_sources, sup_reasons, nsup);
	/* The announcer notifies persona_outbox once this commits. */
	if (nqueued > 0)
		PersonaAnnounce();
	return nqueued;
}

/*
 * persona.enqueue_message(profile_id, action, source, due_at DEFAULT now,
 * event DEFAULT NULL): one message; its message_id, or NULL when suppressed.
 */
PG_FUNCTION_INFO_V1(persona_enqueue_message);
Datum
persona_enqueue_message(PG_FUNCTION_ARGS)
{
	EnqueueItem item;
	int64		id;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("profile_id, action and source must not be null")));
	item.profile_id = PG_GETARG_INT64(0);
	item.action = text_to_cstring(PG_GETARG_TEXT_PP(1));
	item.source = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (item.source[0] == '\0' || strlen(item.source) > 300)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a message source must be 1 to 300 bytes")));
	item.due_at = PG_ARGISNULL(3) ? GetCurrentTimestamp() : PG_GETARG_TIMESTAMPTZ(3);
	item.event = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
	item.profile_row = NULL;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PersonaEnqueue(&item, 1, false, &id);
	SPI_finish();
	if (id == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(id);
}
