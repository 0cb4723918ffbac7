/*
 * campaigns.c
 *	  Campaigns: the recipient snapshot (persona_send_campaign's heavy
 *	  part), the claim of chunks (called by persona_claim), and the
 *	  campaign side of ack, fail, feedback, caps and the report.
 *
 * A campaign is one row of persona.campaigns and its recipients, the
 * segment's members at the call in profile_id order, in chunks of up to
 * CHUNK_SIZE (persona.campaign_chunks). Recipient i has message id
 * id_base + i; no row of persona.messages is written for it unless it fails
 * or gets feedback. Each chunk carries, once claimed, one state byte per
 * recipient (STATE_* below). A claim locks due chunks FOR UPDATE SKIP
 * LOCKED, one at a time, splitting one that holds more than it wants, and
 * per recipient checks consent, caps and holdouts, renders the content and
 * leases it. docs/campaigns.md describes the model and its costs.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "campaigns.h"
#include "experiments.h"
#include "outbox.h"
#include "persona.h"
#include "profile.h"
#include "render.h"
#include "traits.h"

#define CHUNK_SIZE 1000
#define FETCH_ROWS 10000
#define CAMPAIGN_ID_FLOOR INT64CONST(281474976710656)	/* 2^48 */

/* A recipient's state byte. */
#define STATE_QUEUED	'q'
#define STATE_CLAIMED	'c'
#define STATE_SENT		's'
#define STATE_ROW		'f'		/* in persona.messages: its row says */
#define STATE_CANCELLED 'x'
#define STATE_DEAD		'd'
#define STATE_CONSENT	'C'
#define STATE_CAP		'K'
#define STATE_HOLDOUT	'H'

int			persona_channel_cap_per_day = 0;

static SPIPlanPtr insert_chunk_plan = NULL;
static SPIPlanPtr lock_chunk_plan = NULL;
static SPIPlanPtr chunk_campaign_plan = NULL;
static SPIPlanPtr lock_campaign_plan = NULL;
static SPIPlanPtr window_plan = NULL;
static SPIPlanPtr throttle_plan = NULL;
static SPIPlanPtr split_plan = NULL;
static SPIPlanPtr write_chunk_plan = NULL;
static SPIPlanPtr cap_plan = NULL;
static SPIPlanPtr holdout_plan = NULL;
static SPIPlanPtr suppress_plan = NULL;
static SPIPlanPtr find_campaign_plan = NULL;
static SPIPlanPtr find_chunk_plan = NULL;
static SPIPlanPtr reached_plan = NULL;
static SPIPlanPtr materialize_plan = NULL;
static SPIPlanPtr deliveries_plan = NULL;
static SPIPlanPtr message_plan = NULL;

/* A campaign, as ack, fail and feedback need it. */
typedef struct CampaignRef
{
	int32		campaign_id;
	int64		id_base;
	int64		recipients;
} CampaignRef;

/* A chunk locked for update, its states decoded. */
typedef struct Chunk
{
	int32		campaign_id;
	int64		first_index;
	int			size;
	int64	   *pids;
	char	   *states;			/* size bytes */
	int32		attempts;
	TimestampTz due_at;
	TimestampTz ready_at;
	bool		ready_null;
	char	   *status;
	bool		dirty;
} Chunk;

static int64
GetInt8(int col, bool *isnull)
{
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, isnull));
}

/* The int8 elements of an array datum, palloc'd. */
static int64 *
Int8Array(Datum d, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int64	   *out;

	deconstruct_array(DatumGetArrayTypeP(d), INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, n);
	out = palloc(sizeof(int64) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		if (nulls[i])
			elog(ERROR, "a null in an array of ids");
		out[i] = DatumGetInt64(elems[i]);
	}
	return out;
}

static Datum
Int8ArrayDatum(const int64 *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(v[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static Datum
BytesDatum(const char *b, int n)
{
	bytea	   *v = palloc(VARHDRSZ + n);

	SET_VARSIZE(v, VARHDRSZ + n);
	memcpy(VARDATA(v), b, n);
	return PointerGetDatum(v);
}

/* The states of a chunk: NULL means every recipient queued. */
static char *
ChunkStates(Datum d, bool isnull, int size)
{
	char	   *s = palloc(Max(size, 1));

	if (isnull)
		memset(s, STATE_QUEUED, size);
	else
	{
		bytea	   *b = DatumGetByteaPP(d);

		if ((int) VARSIZE_ANY_EXHDR(b) != size)
			elog(ERROR, "campaign chunk states do not match its size");
		memcpy(s, VARDATA_ANY(b), size);
	}
	return s;
}

/* The setting persona.channel_cap_per_day (0: no cap), the library loaded. */
PG_FUNCTION_INFO_V1(persona_channel_cap);
Datum
persona_channel_cap(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(persona_channel_cap_per_day);
}

/* ---------------------------------------------------------------------
 * The snapshot
 * --------------------------------------------------------------------- */

static void
InsertChunk(Datum campaign_id, int64 first_index, const int64 *pids, int n,
			Datum channel, Datum due_at)
{
	Oid			types[6] = {INT4OID, INT8OID, INT8OID, TEXTOID, INT8ARRAYOID, TIMESTAMPTZOID};
	Datum		args[6];
	SPIPlanPtr	plan = PersonaKeptPlan(&insert_chunk_plan,
									   "INSERT INTO persona.campaign_chunks "
									   "(campaign_id, first_index, first_profile_id, channel, profile_ids, "
									   " size, due_at, ready_at) "
									   "VALUES ($1, $2, $3, $4, $5, pg_catalog.cardinality($5), $6, $6)",
									   6, types, 0);

	args[0] = campaign_id;
	args[1] = Int64GetDatum(first_index);
	args[2] = Int64GetDatum(pids[0]);
	args[3] = channel;
	args[4] = Int8ArrayDatum(pids, n);
	args[5] = due_at;
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "writing a campaign chunk failed");
}

/*
 * The recipients waiting for a chunk, per due time: one for a campaign sent
 * at one time, one per distinct best time (at most 25 in the 24 hours) for
 * send_at => 'best_time'.
 */
#define MAX_BUCKETS 32

typedef struct Bucket
{
	TimestampTz due_at;
	int			n;
	int64	   *pids;			/* CHUNK_SIZE of them */
} Bucket;

typedef struct RecipientSnapshot
{
	MemoryContext mcxt;			/* of the buckets */
	Datum		campaign_id;
	Datum		channel;
	int64		total;			/* recipients written so far */
	int			nbuckets;
	Bucket		buckets[MAX_BUCKETS];
} RecipientSnapshot;

static void
FlushBucket(RecipientSnapshot *snap, Bucket *b)
{
	if (b->n == 0)
		return;
	InsertChunk(snap->campaign_id, snap->total, b->pids, b->n, snap->channel,
				TimestampTzGetDatum(b->due_at));
	snap->total += b->n;
	b->n = 0;
}

/* Adds a recipient due at due_at, writing a chunk when one is full. */
static void
AddRecipient(RecipientSnapshot *snap, int64 pid, TimestampTz due_at)
{
	Bucket	   *b = NULL;

	for (int i = 0; i < snap->nbuckets; i++)
		if (snap->buckets[i].due_at == due_at)
			b = &snap->buckets[i];
	if (b == NULL)
	{
		if (snap->nbuckets == MAX_BUCKETS)
		{
			/* more distinct times than expected: write the first one out */
			b = &snap->buckets[0];
			FlushBucket(snap, b);
		}
		else
		{
			b = &snap->buckets[snap->nbuckets++];
			b->pids = MemoryContextAlloc(snap->mcxt, sizeof(int64) * CHUNK_SIZE);
		}
		b->due_at = due_at;
		b->n = 0;
	}
	b->pids[b->n++] = pid;
	if (b->n == CHUNK_SIZE)
		FlushBucket(snap, b);
}

/*
 * Writes a campaign's chunks from the segment's members (every profile when
 * the segment is NULL), read in profile_id order through a cursor, a batch
 * at a time in a context reset per batch: memory stays flat however many
 * recipients. With best_time, each recipient is due at its own best time
 * within 24 hours of due_at (persona.best_send_at, sendtime.c), and the
 * chunks are cut per due time. Returns the number of recipients.
 */
PG_FUNCTION_INFO_V1(persona_campaign_snapshot);
Datum
persona_campaign_snapshot(PG_FUNCTION_ARGS)
{
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, TEXTOID};
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	bool		best_time = !PG_ARGISNULL(4) && PG_GETARG_BOOL(4);
	TimestampTz due_at;
	StringInfoData query;
	MemoryContext batch;
	MemoryContext outer;
	Portal		portal;
	RecipientSnapshot snap;
	SPITupleTable *fetched;
	uint64		nfetched;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("campaign_id, channel and due_at must not be null")));
	due_at = PG_GETARG_TIMESTAMPTZ(3);
	memset(&snap, 0, sizeof(snap));
	snap.campaign_id = PG_GETARG_DATUM(0);
	snap.channel = PG_GETARG_DATUM(2);
	args[0] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[0] = PG_ARGISNULL(1) ? 'n' : ' ';
	args[1] = TimestampTzGetDatum(due_at);
	args[2] = PG_GETARG_DATUM(2);

	initStringInfo(&query);
	appendStringInfoString(&query, best_time
						   ? "SELECT r.profile_id, persona.best_send_at(r.profile_id, $2, $3, interval '24 hours') "
						   : "SELECT r.profile_id, $2 ");
	appendStringInfoString(&query, PG_ARGISNULL(1)
						   ? "FROM persona.profiles AS r ORDER BY r.profile_id"
						   : "FROM persona.segment_members AS r "
						   "WHERE r.segment OPERATOR(pg_catalog.=) $1 ORDER BY r.profile_id");

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	portal = SPI_cursor_open_with_args(NULL, query.data, 3, types, args, nulls, true,
									   CURSOR_OPT_NO_SCROLL);
	outer = CurrentMemoryContext;
	snap.mcxt = outer;
	batch = AllocSetContextCreate(CurrentMemoryContext, "persona campaign snapshot",
								  ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(portal, true, FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		/* the inserts below overwrite SPI_tuptable and SPI_processed */
		fetched = SPI_tuptable;
		nfetched = SPI_processed;
		MemoryContextReset(batch);
		MemoryContextSwitchTo(batch);
		for (uint64 r = 0; r < nfetched; r++)
		{
			bool		isnull;
			int64		pid;
			Datum		due;

			pid = DatumGetInt64(SPI_getbinval(fetched->vals[r], fetched->tupdesc, 1, &isnull));
			due = SPI_getbinval(fetched->vals[r], fetched->tupdesc, 2, &isnull);
			AddRecipient(&snap, pid, isnull ? due_at : DatumGetTimestampTz(due));
		}
		MemoryContextSwitchTo(outer);
		SPI_freetuptable(fetched);
	}
	MemoryContextSwitchTo(batch);
	for (int i = 0; i < snap.nbuckets; i++)
		FlushBucket(&snap, &snap.buckets[i]);
	MemoryContextSwitchTo(outer);
	SPI_cursor_close(portal);
	MemoryContextDelete(batch);
	SPI_finish();
	PG_RETURN_INT64(snap.total);
}

/* ---------------------------------------------------------------------
 * The claim
 * --------------------------------------------------------------------- */

/* A chunk locked by a claim and its campaign. */
typedef struct ClaimChunk
{
	Chunk		c;
	int32		action_id;
	bool		action_gone;
	bool		capped;			/* the action has a cap_per_day or cooldown */
	Datum		action;
	Datum		source;
	int32		rate;			/* 0: no throttle */
	int64		id_base;
	TimestampTz chunk_ready_at; /* before the claim: a split's tail keeps it */
	bool		fresh;			/* states were NULL */
} ClaimChunk;

/*
 * Locks the oldest due chunk of the channel, skipping locked ones.
 *
 * The chunk is found by the queue index alone, in ready_at order, its
 * campaign checked by a subquery per chunk: the planner cannot turn that
 * into a join, so the plan is the ordered index scan that stops at the
 * first claimable chunk. A join with persona.campaigns (and persona.actions)
 * here was planned as a hash join of every due chunk and a sort, 3 ms per
 * chunk at 1,000 due chunks, more than claiming and rendering its 1,000
 * messages, and growing with the campaign. The campaign and its action are
 * then read by key.
 */
static bool
LockDueChunk(Datum channel, TimestampTz now, const int32 *skip, int nskip, ClaimChunk *k)
{
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, INT4ARRAYOID};
	Oid			campaign_type = INT4OID;
	Datum		skipped[8];
	Datum		args[3];
	SPIPlanPtr	plan = PersonaKeptPlan(&lock_chunk_plan,
									   "SELECT k.campaign_id, k.first_index, k.profile_ids, k.states, "
									   "  k.attempts, k.due_at, k.ready_at, k.size "
									   "FROM persona.campaign_chunks AS k "
									   "WHERE k.channel OPERATOR(pg_catalog.=) $1 "
									   "  AND k.ready_at OPERATOR(pg_catalog.<=) $2 "
									   "  AND k.campaign_id OPERATOR(pg_catalog.<>) ALL ($3) "
									   "  AND (SELECT (c.throttled_until IS NULL "
									   "               OR c.throttled_until OPERATOR(pg_catalog.<=) $2) "
									   "          AND (c.status OPERATOR(pg_catalog.=) 'running' "
									   "               OR k.status OPERATOR(pg_catalog.=) 'claimed') "
									   "       FROM persona.campaigns AS c "
									   "       WHERE c.campaign_id OPERATOR(pg_catalog.=) k.campaign_id) "
									   "ORDER BY k.ready_at LIMIT 1 "
									   "FOR UPDATE OF k SKIP LOCKED", 3, types, 0);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	bool		states_null;
	Datum		d;
	int			n;

	for (int i = 0; i < nskip; i++)
		skipped[i] = Int32GetDatum(skip[i]);
	args[0] = channel;
	args[1] = TimestampTzGetDatum(now);
	args[2] = PointerGetDatum(construct_array(skipped, nskip, INT4OID, 4, true, TYPALIGN_INT));
	if (SPI_execute_plan(plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "locking a campaign chunk failed");
	if (SPI_processed == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	memset(k, 0, sizeof(*k));
	k->c.campaign_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	k->c.first_index = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	k->c.pids = Int8Array(SPI_getbinval(tup, desc, 3, &isnull), &n);
	k->c.size = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
	if (n != k->c.size)
		elog(ERROR, "campaign chunk size does not match its recipients");
	d = SPI_getbinval(tup, desc, 4, &states_null);
	k->c.states = ChunkStates(d, states_null, n);
	k->fresh = states_null;
	k->c.attempts = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
	k->c.due_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
	k->chunk_ready_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 7, &isnull));

	/* Its campaign (a chunk's campaign is never deleted while it has chunks). */
	args[0] = Int32GetDatum(k->c.campaign_id);
	plan = PersonaKeptPlan(&chunk_campaign_plan,
						   "SELECT c.action_id, c.action, c.source, c.rate_per_minute, c.id_base, "
						   "  a.action_id IS NULL, (a.cap_per_day IS NOT NULL OR a.cooldown IS NOT NULL) "
						   "FROM persona.campaigns AS c "
						   "LEFT JOIN persona.actions AS a ON a.action_id OPERATOR(pg_catalog.=) c.action_id "
						   "WHERE c.campaign_id OPERATOR(pg_catalog.=) $1", 1, &campaign_type, 0);
	if (SPI_execute_plan(plan, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "campaign %d of a chunk not found", k->c.campaign_id);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	k->action_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	k->action = datumCopy(SPI_getbinval(tup, desc, 2, &isnull), false, -1);
	k->source = datumCopy(SPI_getbinval(tup, desc, 3, &isnull), false, -1);
	d = SPI_getbinval(tup, desc, 4, &isnull);
	k->rate = isnull ? 0 : DatumGetInt32(d);
	k->id_base = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
	k->action_gone = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
	d = SPI_getbinval(tup, desc, 7, &isnull);
	k->capped = !isnull && DatumGetBool(d);
	return true;
}

/*
 * The throttle: how many more messages of a rate-limited campaign may be
 * claimed now (its claims of the last minute subtracted). Locks the
 * campaign row, skipping it when locked (-1): claims of one throttled
 * campaign take turns, and a claim never waits for the campaign row while
 * it holds a chunk (persona_cancel_campaign locks them the other way).
 */
static int
ThrottleAllowance(int32 campaign_id, int32 rate, TimestampTz now)
{
	Oid			types[2] = {INT4OID, TIMESTAMPTZOID};
	Datum		args[2] = {Int32GetDatum(campaign_id), TimestampTzGetDatum(now)};
	SPIPlanPtr	plan = PersonaKeptPlan(&lock_campaign_plan,
									   "SELECT 1 FROM persona.campaigns AS c "
									   "WHERE c.campaign_id OPERATOR(pg_catalog.=) $1 FOR UPDATE SKIP LOCKED", 1, types, 0);
	bool		isnull;
	int64		used;

	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "locking a campaign failed");
	if (SPI_processed == 0)
		return -1;
	plan = PersonaKeptPlan(&window_plan,
						   "SELECT coalesce(pg_catalog.sum(u.n), 0)::pg_catalog.int8 "
						   "FROM persona.campaigns AS c, "
						   "  ROWS FROM (pg_catalog.unnest(c.claimed_at), pg_catalog.unnest(c.claimed_n)) AS u(t, n) "
						   "WHERE c.campaign_id OPERATOR(pg_catalog.=) $1 "
						   "  AND u.t OPERATOR(pg_catalog.>) ($2 OPERATOR(pg_catalog.-) interval '1 minute')",
						   2, types, 0);
	if (SPI_execute_plan(plan, args, NULL, true, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading a campaign's throttle failed");
	used = GetInt8(1, &isnull);
	return (int) Max(0, (int64) rate - used);
}

/*
 * Records a claim of n messages of a rate-limited campaign in its window
 * (claims older than a minute dropped); once the window is full, the
 * campaign is skipped by claims until its oldest claim is a minute old.
 */
static void
ThrottleRecord(int32 campaign_id, TimestampTz now, int n)
{
	Oid			types[3] = {INT4OID, TIMESTAMPTZOID, INT4OID};
	Datum		args[3] = {Int32GetDatum(campaign_id), TimestampTzGetDatum(now), Int32GetDatum(n)};
	SPIPlanPtr	plan = PersonaKeptPlan(&throttle_plan,
									   "UPDATE persona.campaigns AS c "
									   "SET claimed_at = w.ts, claimed_n = w.ns, "
									   "    throttled_until = CASE WHEN w.total OPERATOR(pg_catalog.>=) c.rate_per_minute "
									   "      THEN w.first OPERATOR(pg_catalog.+) interval '1 minute' END "
									   "FROM (SELECT pg_catalog.array_agg(u.t ORDER BY u.t) AS ts, "
									   "             pg_catalog.array_agg(u.n ORDER BY u.t) AS ns, "
									   "             pg_catalog.sum(u.n) AS total, pg_catalog.min(u.t) AS first "
									   "        FROM persona.campaigns AS x, "
									   "             ROWS FROM (pg_catalog.unnest(x.claimed_at OPERATOR(pg_catalog.||) $2), "
									   "                        pg_catalog.unnest(x.claimed_n OPERATOR(pg_catalog.||) $3)) AS u(t, n) "
									   "       WHERE x.campaign_id OPERATOR(pg_catalog.=) $1 "
									   "         AND u.t OPERATOR(pg_catalog.>) ($2 OPERATOR(pg_catalog.-) interval '1 minute')) AS w "
									   "WHERE c.campaign_id OPERATOR(pg_catalog.=) $1", 3, types, 0);

	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "recording a campaign's claim failed");
}

/* Whether the action's cap or cooldown, or persona.channel_cap_per_day, holds the message back. */
static bool
CapReached(int64 profile_id, int32 action_id, bool capped)
{
	Oid			types[2] = {INT8OID, INT4OID};
	Datum		args[2] = {Int64GetDatum(profile_id), Int32GetDatum(action_id)};
	SPIPlanPtr	plan;
	bool		isnull;
	Datum		d;

	if (!capped && persona_channel_cap_per_day <= 0)
		return false;
	plan = PersonaKeptPlan(&cap_plan,
						   "SELECT (a.cap_per_day IS NOT NULL "
						   "        AND coalesce(r.last_day, 0) OPERATOR(pg_catalog.>=) a.cap_per_day) "
						   "    OR (a.cooldown IS NOT NULL AND r.latest OPERATOR(pg_catalog.>) "
						   "        (pg_catalog.now() OPERATOR(pg_catalog.-) a.cooldown)) "
						   "    OR persona.channel_cap_reached($1, a.channel) "
						   "FROM persona.actions AS a "
						   "LEFT JOIN LATERAL persona.recent_sends($1, "
						   "  GREATEST(interval '24 hours', a.cooldown), ARRAY[a.action_id]) AS r ON true "
						   "WHERE a.action_id OPERATOR(pg_catalog.=) $2", 2, types, 0);
	PersonaLockProfileSends(profile_id);
	if (SPI_execute_plan(plan, args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "checking a campaign message's caps failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return !isnull && DatumGetBool(d);
}

/* Whether a running experiment holds the person out (the exposure is recorded). */
static bool
HeldOut(int64 profile_id, Datum action)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		args[2] = {Int64GetDatum(profile_id), action};
	SPIPlanPtr	plan;
	bool		isnull;

	if (PersonaGetExperiments()->nrunning == 0)
		return false;
	plan = PersonaKeptPlan(&holdout_plan, "SELECT persona.holdout_suppresses($1, $2)", 2, types, 0);
	if (SPI_execute_plan(plan, args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "checking a holdout failed");
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Counts the suppressions of a chunk's claim in persona.suppressions:
 * counts[] by reason (consent, cap, holdout), one array entry a message.
 */
static void
CountSuppressed(Datum source, const int counts[3])
{
	static const char *const reasons[3] = {"consent", "cap", "holdout"};
	Oid			types[2] = {TEXTARRAYOID, TEXTARRAYOID};
	int			total = counts[0] + counts[1] + counts[2];
	Datum	   *src;
	Datum	   *why;
	Datum		args[2];
	int			k = 0;
	SPIPlanPtr	plan;

	if (total == 0)
		return;
	src = palloc(sizeof(Datum) * total);
	why = palloc(sizeof(Datum) * total);
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < counts[i]; j++)
		{
			src[k] = source;
			why[k++] = CStringGetTextDatum(reasons[i]);
		}
	args[0] = PointerGetDatum(construct_array(src, k, TEXTOID, -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(why, k, TEXTOID, -1, false, TYPALIGN_INT));
	plan = PersonaKeptPlan(&suppress_plan, "SELECT persona.count_suppressions($1, $2)", 2, types, 0);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "counting suppressions failed");
}

/* Writes a chunk's states back: claimed while any recipient is, else done. */
static void
WriteChunk(const Chunk *c, bool claimed_now, TimestampTz lease_until, int keep)
{
	Oid			types[7] = {INT4OID, INT8OID, BYTEAOID, TEXTOID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID};
	Datum		args[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	bool		any_claimed = memchr(c->states, STATE_CLAIMED, keep) != NULL;
	SPIPlanPtr	plan = PersonaKeptPlan(&write_chunk_plan,
									   "UPDATE persona.campaign_chunks AS k "
									   "SET states = $3, status = $4, ready_at = $5, "
									   "    attempts = k.attempts OPERATOR(pg_catalog.+) $6, "
									   "    profile_ids = coalesce($7, k.profile_ids), "
									   "    size = pg_catalog.length($3) "
									   "WHERE k.campaign_id OPERATOR(pg_catalog.=) $1 "
									   "  AND k.first_index OPERATOR(pg_catalog.=) $2", 7, types, 0);

	args[0] = Int32GetDatum(c->campaign_id);
	args[1] = Int64GetDatum(c->first_index);
	args[2] = BytesDatum(c->states, keep);
	if (any_claimed)
	{
		args[3] = CStringGetTextDatum("claimed");
		args[4] = TimestampTzGetDatum(claimed_now ? lease_until : c->ready_at);
		nulls[4] = (!claimed_now && c->ready_null) ? 'n' : ' ';
	}
	else
	{
		args[3] = CStringGetTextDatum("done");
		args[4] = (Datum) 0;
		nulls[4] = 'n';
	}
	args[5] = Int32GetDatum(claimed_now ? 1 : 0);
	if (keep < c->size)
		args[6] = Int8ArrayDatum(c->pids, keep);
	else
	{
		args[6] = (Datum) 0;
		nulls[6] = 'n';
	}
	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "writing a campaign chunk failed");
}

/* The tail of a chunk a claim took only part of: a chunk of its own. */
static void
SplitTail(const ClaimChunk *k, int from)
{
	Oid			types[9] = {INT4OID, INT8OID, INT8OID, TEXTOID, INT8ARRAYOID, BYTEAOID,
	INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		args[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	SPIPlanPtr	plan = PersonaKeptPlan(&split_plan,
									   "INSERT INTO persona.campaign_chunks "
									   "(campaign_id, first_index, first_profile_id, channel, profile_ids, size, "
									   " states, status, attempts, due_at, ready_at) "
									   "SELECT $1, $2, $3, c.channel, $5, pg_catalog.cardinality($5), $6, "
									   "  CASE WHEN $6 IS NULL THEN 'queued' ELSE 'claimed' END, $7, $8, $9 "
									   "FROM persona.campaigns AS c WHERE c.campaign_id OPERATOR(pg_catalog.=) $1",
									   9, types, 0);

	args[0] = Int32GetDatum(k->c.campaign_id);
	args[1] = Int64GetDatum(k->c.first_index + from);
	args[2] = Int64GetDatum(k->c.pids[from]);
	args[3] = (Datum) 0;
	nulls[3] = 'n';
	args[4] = Int8ArrayDatum(k->c.pids + from, k->c.size - from);
	if (k->fresh)
	{
		args[5] = (Datum) 0;
		nulls[5] = 'n';
	}
	else
		args[5] = BytesDatum(k->c.states + from, k->c.size - from);
	args[6] = Int32GetDatum(k->c.attempts);
	args[7] = TimestampTzGetDatum(k->c.due_at);
	args[8] = TimestampTzGetDatum(k->chunk_ready_at);
	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT || SPI_processed != 1)
		elog(ERROR, "splitting a campaign chunk failed");
}

/*
 * One locked chunk: up to take recipients examined in order are decided
 * (cancelled, suppressed, dead or claimed and rendered into the result);
 * returns how many were claimed, *examined how far it got.
 */
static int
ClaimChunkRecipients(ClaimChunk *k, int take, const char *channel, Datum channel_datum,
					 ReturnSetInfo *rsinfo, int *examined)
{
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext tmp = AllocSetContextCreate(CurrentMemoryContext, "persona campaign claim",
											  ALLOCSET_DEFAULT_SIZES);
	Jsonb	   *content = k->action_gone ? NULL : PersonaActionContent(k->action_id);
	int			claimed = 0;
	int			suppressed[3] = {0, 0, 0};
	ProfileReader r;
	int			i;

	PersonaProfileReaderBegin(&r, false);
	for (i = 0; i < k->c.size && claimed < take; i++)
	{
		char	   *st = &k->c.states[i];
		int64		pid = k->c.pids[i];
		bool		first = (*st == STATE_QUEUED);
		bool		isnull;
		Datum		d;

		if (*st != STATE_QUEUED && *st != STATE_CLAIMED)
			continue;
		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tmp);
		MemoryContextSwitchTo(tmp);
		if (content == NULL || !PersonaProfileFetchOrdered(&r, pid))
			*st = STATE_CANCELLED;	/* action dropped; person forgotten or
									 * merged away */
		else
		{
			d = PersonaProfileColumn(&r, "consent", &isnull);
			if (!PersonaConsented(isnull ? NULL : DatumGetJsonbP(d), channel))
				*st = STATE_CONSENT, suppressed[0]++;
			else if (!first && k->c.attempts >= persona_max_attempts)
				*st = STATE_DEAD;
			else if (first && CapReached(pid, k->action_id, k->capped))
				*st = STATE_CAP, suppressed[1]++;
			else if (first && HeldOut(pid, k->action))
				*st = STATE_HOLDOUT, suppressed[2]++;
			else
			{
				Datum		values[8];
				bool		nulls[8] = {false};
				Jsonb	   *declared;
				Jsonb	   *rendered;

				d = PersonaProfileColumn(&r, "traits", &isnull);
				declared = isnull ? NULL : DatumGetJsonbP(d);
				d = PersonaProfileColumn(&r, "computed_state", &isnull);
				rendered = PersonaRenderMessage(content, NULL, declared,
												PersonaTraitsJson(isnull ? NULL : DatumGetByteaPP(d)));
				values[0] = Int64GetDatum(k->id_base + k->c.first_index + i);
				values[1] = Int64GetDatum(pid);
				values[2] = PersonaProfileColumn(&r, "user_id", &nulls[2]);
				values[3] = channel_datum;
				values[4] = k->action;
				values[5] = JsonbPGetDatum(rendered);
				values[6] = Int32GetDatum(k->c.attempts + 1);
				values[7] = k->source;
				MemoryContextSwitchTo(outer);
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
				*st = STATE_CLAIMED;
				claimed++;
			}
		}
		MemoryContextSwitchTo(outer);
	}
	PersonaProfileReaderEnd(&r);
	MemoryContextDelete(tmp);
	CountSuppressed(k->source, suppressed);
	*examined = i;
	return claimed;
}

static bool
AnyClaimable(const char *states, int from, int size)
{
	for (int i = from; i < size; i++)
		if (states[i] == STATE_QUEUED || states[i] == STATE_CLAIMED)
			return true;
	return false;
}

/*
 * Claims up to want campaign messages of the channel into the result of
 * persona_claim, a chunk at a time: due chunks, oldest first, locked FOR
 * UPDATE SKIP LOCKED; a chunk holding more than is wanted is split.
 * Throttled campaigns give at most what their window allows. SPI must be
 * connected. Returns how many were claimed.
 */
int
PersonaClaimCampaigns(Datum channel, int want, TimestampTz now, TimestampTz lease_until,
					  ReturnSetInfo *rsinfo)
{
	char	   *channel_name = TextDatumGetCString(channel);
	int			total = 0;
	int32		skip[8];		/* throttled campaigns whose row is busy */
	int			nskip = 0;

	/* A library newer than the installed SQL (0.1.0): no campaigns yet. */
	if (!OidIsValid(get_relname_relid("campaign_chunks", PersonaGetCatalog()->schema)))
		return 0;
	while (total < want)
	{
		ClaimChunk	k;
		int			take = want - total;
		int			examined;
		int			got;

		CHECK_FOR_INTERRUPTS();
		if (!LockDueChunk(channel, now, skip, nskip, &k))
			break;
		if (k.rate > 0)
		{
			int			allowed = ThrottleAllowance(k.c.campaign_id, k.rate, now);

			if (allowed < 0)
			{
				/* Another claim has its row: leave the campaign to it. */
				if (nskip == lengthof(skip))
					break;
				skip[nskip++] = k.c.campaign_id;
				continue;
			}
			take = Min(take, allowed);
			if (take == 0)
			{
				ThrottleRecord(k.c.campaign_id, now, 0);
				continue;
			}
		}
		got = ClaimChunkRecipients(&k, take, channel_name, channel, rsinfo, &examined);
		if (AnyClaimable(k.c.states, examined, k.c.size))
			SplitTail(&k, examined);
		else
			examined = k.c.size;
		WriteChunk(&k.c, true, lease_until, examined);
		if (k.rate > 0)
			ThrottleRecord(k.c.campaign_id, now, got);
		total += got;
	}
	return total;
}

/* ---------------------------------------------------------------------
 * Ack, fail, feedback: finding a campaign message by id
 * --------------------------------------------------------------------- */

/* The campaign whose block holds the id, if any. */
static bool
FindCampaign(int64 id, CampaignRef *ref)
{
	Oid			type = INT8OID;
	Datum		arg = Int64GetDatum(id);
	SPIPlanPtr	plan;
	bool		isnull;

	if (id < CAMPAIGN_ID_FLOOR)
		return false;
	if (ref->campaign_id != 0 && id >= ref->id_base && id < ref->id_base + ref->recipients)
		return true;
	plan = PersonaKeptPlan(&find_campaign_plan,
						   "SELECT c.campaign_id::pg_catalog.int8, c.id_base, c.recipients "
						   "FROM persona.campaigns AS c WHERE c.id_base OPERATOR(pg_catalog.<=) $1 "
						   "ORDER BY c.id_base DESC LIMIT 1", 1, &type, 0);
	if (SPI_execute_plan(plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "finding a campaign failed");
	if (SPI_processed == 0)
		return false;
	ref->campaign_id = (int32) GetInt8(1, &isnull);
	ref->id_base = GetInt8(2, &isnull);
	ref->recipients = GetInt8(3, &isnull);
	return id < ref->id_base + ref->recipients;
}

/* Locks the chunk holding recipient index of a campaign (FOR UPDATE). */
static void
LockChunkOf(int32 campaign_id, int64 index, Chunk *c)
{
	Oid			types[2] = {INT4OID, INT8OID};
	Datum		args[2] = {Int32GetDatum(campaign_id), Int64GetDatum(index)};
	SPIPlanPtr	plan = PersonaKeptPlan(&find_chunk_plan,
									   "SELECT k.first_index, k.profile_ids, k.states, k.attempts, k.due_at, "
									   "  k.ready_at, k.status, k.size "
									   "FROM persona.campaign_chunks AS k "
									   "WHERE k.campaign_id OPERATOR(pg_catalog.=) $1 "
									   "  AND k.first_index OPERATOR(pg_catalog.<=) $2 "
									   "ORDER BY k.first_index DESC LIMIT 1 FOR UPDATE", 2, types, 0);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	int			n;

	if (SPI_execute_plan(plan, args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "campaign message chunk not found");
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	c->campaign_id = campaign_id;
	c->first_index = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	c->pids = Int8Array(SPI_getbinval(tup, desc, 2, &isnull), &n);
	c->size = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
	d = SPI_getbinval(tup, desc, 3, &isnull);
	c->states = ChunkStates(d, isnull, n);
	c->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	c->due_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
	d = SPI_getbinval(tup, desc, 6, &c->ready_null);
	c->ready_at = c->ready_null ? 0 : DatumGetTimestampTz(d);
	c->status = TextDatumGetCString(SPI_getbinval(tup, desc, 7, &isnull));
	c->dirty = false;
	if (index >= c->first_index + c->size)
		elog(ERROR, "campaign message chunk not found");
}

/* A state byte as a message status, for errors. */
static const char *
StateName(char st)
{
	switch (st)
	{
		case STATE_QUEUED:
			return "queued";
		case STATE_CLAIMED:
			return "claimed";
		case STATE_SENT:
			return "sent";
		case STATE_CANCELLED:
			return "cancelled";
		case STATE_DEAD:
			return "dead";
		case STATE_CONSENT:
			return "suppressed_consent";
		case STATE_CAP:
			return "suppressed_cap";
		case STATE_HOLDOUT:
			return "suppressed_holdout";
	}
	return "in persona.messages";
}

/* A chunk's state byte of a recipient, the chunk locked (cached in *c). */
static char *
RecipientState(const CampaignRef *ref, int64 id, Chunk *c, bool *have)
{
	int64		index = id - ref->id_base;

	if (!*have || c->campaign_id != ref->campaign_id ||
		index < c->first_index || index >= c->first_index + c->size)
	{
		if (*have && c->dirty)
			WriteChunk(c, false, 0, c->size);
		LockChunkOf(ref->campaign_id, index, c);
		*have = true;
	}
	return &c->states[index - c->first_index];
}

/*
 * The campaign messages among ``ids`` (ascending, distinct) are marked
 * sent; an id that is not claimed or was acked already fails the whole call
 * (55000). Puts the ids left for persona_ack's own path (not campaign
 * messages, or with a row) in ``rest``, in order, and returns how many.
 * Needs SPI connected.
 */
int
PersonaCampaignAck(const int64 *ids, int n, int64 *rest)
{
	int			nrest = 0;
	CampaignRef ref = {0};
	Chunk		c;
	bool		have = false;

	/* ids ascending: chunks are locked in order (no deadlock between acks) */
	for (int i = 1; i < n; i++)
		if (ids[i] <= ids[i - 1])
			elog(ERROR, "campaign ack ids must be sorted and distinct");
	for (int i = 0; i < n; i++)
	{
		char	   *st;

		CHECK_FOR_INTERRUPTS();
		if (!FindCampaign(ids[i], &ref))
		{
			rest[nrest++] = ids[i];
			continue;
		}
		st = RecipientState(&ref, ids[i], &c, &have);
		if (*st == STATE_CLAIMED)
			*st = STATE_SENT, c.dirty = true;
		else if (*st == STATE_ROW)
			rest[nrest++] = ids[i];
		else if (*st == STATE_SENT)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("message " INT64_FORMAT " was already acked", ids[i]),
					 errdetail("Another worker acked it first: its lease had expired and it was claimed again."),
					 errhint("Ack the other messages of the batch again without it.")));
		else
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("message " INT64_FORMAT " is not claimed", ids[i]),
					 errdetail("Its status is %s.", StateName(*st)),
					 errhint("Only a claimed message can be acked or failed: claim it with persona_claim.")));
	}
	if (have && c.dirty)
		WriteChunk(&c, false, 0, c.size);
	return nrest;
}

/*
 * Gives a campaign message its row in persona.messages (status claimed, or
 * sent for feedback on a sent one), unless it has one; from then on the
 * row is the message. 55000 when it is in no state to be failed (not
 * claimed) or to get feedback (not claimed or sent).
 */
PG_FUNCTION_INFO_V1(persona_campaign_materialize);
Datum
persona_campaign_materialize(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	bool		for_feedback = PG_GETARG_BOOL(1);
	CampaignRef ref = {0};
	Chunk		c;
	bool		have = false;
	char	   *st;
	Oid			types[4] = {INT8OID, INT4OID, INT8OID, TEXTOID};
	Datum		args[4];
	SPIPlanPtr	plan;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!FindCampaign(id, &ref))
	{
		SPI_finish();
		PG_RETURN_VOID();
	}
	st = RecipientState(&ref, id, &c, &have);
	if (*st == STATE_ROW)
	{
		SPI_finish();
		PG_RETURN_VOID();
	}
	if (!(*st == STATE_CLAIMED || (for_feedback && *st == STATE_SENT)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 for_feedback ? errmsg("message " INT64_FORMAT " was not sent", id)
				 : errmsg("message " INT64_FORMAT " is not claimed", id),
				 errdetail("Its status is %s.", StateName(*st))));
	args[0] = Int64GetDatum(id);
	args[1] = Int32GetDatum(ref.campaign_id);
	args[2] = Int64GetDatum(c.pids[id - ref.id_base - c.first_index]);
	args[3] = CStringGetTextDatum(*st == STATE_CLAIMED ? "claimed" : "sent");
	plan = PersonaKeptPlan(&materialize_plan,
						   "INSERT INTO persona.messages (message_id, profile_id, channel, action, source, "
						   "  status, attempts, due_at, created_at, action_id, ready_at, lease_until) "
						   "SELECT $1, $3, c.channel, c.action, c.source, $4, k.attempts, k.due_at, "
						   "  c.created_at, c.action_id, "
						   "  CASE WHEN $4 OPERATOR(pg_catalog.=) 'claimed' THEN k.due_at END, "
						   "  CASE WHEN $4 OPERATOR(pg_catalog.=) 'claimed' THEN k.ready_at END "
						   "FROM persona.campaigns AS c "
						   "JOIN persona.campaign_chunks AS k ON k.campaign_id OPERATOR(pg_catalog.=) c.campaign_id "
						   "WHERE c.campaign_id OPERATOR(pg_catalog.=) $2 "
						   "  AND k.first_index OPERATOR(pg_catalog.<=) ($1 OPERATOR(pg_catalog.-) c.id_base) "
						   "ORDER BY k.first_index DESC LIMIT 1", 4, types, 0);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT || SPI_processed != 1)
		elog(ERROR, "writing a campaign message's row failed");
	*st = STATE_ROW;
	WriteChunk(&c, false, 0, c.size);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * The chunks that may hold a profile's message in a campaign (CAMPAIGN, an
 * SQL expression; the profile is $1): the chunks of one due time partition
 * the recipients in profile_id order, so the profile can only be in the
 * chunk of each due time that starts at or before it.  The due times are
 * walked by the index on (campaign_id, due_at, first_profile_id) (one for a
 * campaign sent at one time, at most MAX_BUCKETS with best_time), one probe
 * each.  Columns: profile_ids, states.
 */
#define CHUNKS_OF_PROFILE(CAMPAIGN) \
	"WITH RECURSIVE d (due) AS (" \
	"  (SELECT k.due_at FROM persona.campaign_chunks AS k " \
	"    WHERE k.campaign_id OPERATOR(pg_catalog.=) " CAMPAIGN " ORDER BY k.due_at LIMIT 1) " \
	"  UNION ALL " \
	"  SELECT (SELECT k.due_at FROM persona.campaign_chunks AS k " \
	"           WHERE k.campaign_id OPERATOR(pg_catalog.=) " CAMPAIGN " " \
	"             AND k.due_at OPERATOR(pg_catalog.>) d.due ORDER BY k.due_at LIMIT 1) " \
	"    FROM d WHERE d.due IS NOT NULL) " \
	"SELECT x.profile_ids, x.states FROM d CROSS JOIN LATERAL (" \
	"  SELECT k.profile_ids, k.states FROM persona.campaign_chunks AS k " \
	"   WHERE k.campaign_id OPERATOR(pg_catalog.=) " CAMPAIGN " " \
	"     AND k.due_at OPERATOR(pg_catalog.=) d.due " \
	"     AND k.first_profile_id OPERATOR(pg_catalog.<=) $1 " \
	"   ORDER BY k.first_profile_id DESC LIMIT 1) AS x"

/*
 * The state byte of a profile in a chunk (columns ids_col and states_col of
 * row ``row`` of SPI_tuptable), 0 when the chunk does not hold it: a binary
 * search of the ids in place (they have no nulls).  A chunk never claimed
 * (states NULL) holds queued recipients.
 */
static char
StateInChunk(uint64 row, int ids_col, int states_col, int64 profile_id)
{
	HeapTuple	tup = SPI_tuptable->vals[row];
	bool		isnull;
	ArrayType  *ids = DatumGetArrayTypeP(SPI_getbinval(tup, SPI_tuptable->tupdesc, ids_col, &isnull));
	int			n = ArrayGetNItems(ARR_NDIM(ids), ARR_DIMS(ids));
	int			found;
	Datum		d;
	bytea	   *states;

	if (ARR_HASNULL(ids) || ARR_ELEMTYPE(ids) != INT8OID)
		elog(ERROR, "a campaign chunk's ids are not an array of int8 without nulls");
	/* no nulls: the data follow the header (ARR_DATA_PTR without its test) */
	found = PersonaFindInt64((const int64 *) ((const char *) ids + ARR_OVERHEAD_NONULLS(ARR_NDIM(ids))),
							 n, profile_id);
	if (found < 0)
		return 0;
	d = SPI_getbinval(tup, SPI_tuptable->tupdesc, states_col, &isnull);
	if (isnull)
		return STATE_QUEUED;
	states = DatumGetByteaPP(d);
	if ((int) VARSIZE_ANY_EXHDR(states) != n)
		elog(ERROR, "campaign chunk states do not match its size");
	return VARDATA_ANY(states)[found];
}

/* The state byte of a profile's message in a campaign, 0: not a recipient. */
static char
RecipientStateOf(int32 campaign_id, int64 profile_id)
{
	Oid			types[2] = {INT8OID, INT4OID};
	Datum		args[2] = {Int64GetDatum(profile_id), Int32GetDatum(campaign_id)};
	SPIPlanPtr	plan;
	char		state = 0;

	plan = PersonaKeptPlan(&reached_plan, CHUNKS_OF_PROFILE("$2"), 2, types, 0);
	if (SPI_execute_plan(plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading a campaign chunk failed");
	for (uint64 row = 0; row < SPI_processed && state == 0; row++)
	{
		CHECK_FOR_INTERRUPTS();
		state = StateInChunk(row, 1, 2, profile_id);
	}
	SPI_freetuptable(SPI_tuptable);
	return state;
}

/*
 * Whether the campaign's message to the profile counts toward caps: it was
 * claimed or sent (one with a row in persona.messages counts there).
 */
PG_FUNCTION_INFO_V1(persona_campaign_reached);
Datum
persona_campaign_reached(PG_FUNCTION_ARGS)
{
	char		state;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	state = RecipientStateOf(PG_GETARG_INT32(0), PG_GETARG_INT64(1));
	SPI_finish();
	PG_RETURN_BOOL(state == STATE_CLAIMED || state == STATE_SENT);
}

/*
 * Counts the profile's campaign messages delivered (claimed or sent) and
 * held in chunks, per campaign due since ``since``: add(arg, channel) once
 * each.  Messages with a row (feedback, failure) are counted there by the
 * caller.  One query: the chunks that may hold the profile
 * (CHUNKS_OF_PROFILE) of every campaign of the window on one of the
 * channels (NULL: any).  Call within SPI.
 */
void
PersonaCampaignDeliveries(int64 profile_id, TimestampTz since, ArrayType *channels,
						  void (*add) (void *arg, const char *channel), void *arg)
{
	Oid			types[3] = {INT8OID, TIMESTAMPTZOID, TEXTARRAYOID};
	Datum		args[3];
	char		nulls[3] = {' ', ' ', channels ? ' ' : 'n'};
	SPIPlanPtr	plan = PersonaKeptPlan(&deliveries_plan,
									   "SELECT c.channel, y.profile_ids, y.states FROM persona.campaigns AS c "
									   "CROSS JOIN LATERAL (" CHUNKS_OF_PROFILE("c.campaign_id") ") AS y "
									   "WHERE c.due_at OPERATOR(pg_catalog.>) $2 "
									   "  AND c.recipients OPERATOR(pg_catalog.>) 0 "
									   "  AND ($3 IS NULL OR c.channel OPERATOR(pg_catalog.=) ANY ($3))",
									   3, types, 0);

	args[0] = Int64GetDatum(profile_id);
	args[1] = TimestampTzGetDatum(since);
	args[2] = channels ? PointerGetDatum(channels) : (Datum) 0;
	if (SPI_execute_plan(plan, args, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the campaigns failed");
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		char		state;

		CHECK_FOR_INTERRUPTS();
		state = StateInChunk(row, 2, 3, profile_id);
		if (state == STATE_CLAIMED || state == STATE_SENT)
			add(arg, SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 1));
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * The recipient and action of a campaign message held in a chunk (whatever
 * its state), read without a lock; false when the id is no campaign
 * message.  A message with a row in persona.messages is found there first
 * by the caller.  Call within SPI.
 */
bool
PersonaCampaignMessage(int64 message_id, int64 *profile_id, int32 *action_id)
{
	CampaignRef ref = {0};
	Oid			types[2] = {INT4OID, INT8OID};
	Datum		args[2];
	bool		isnull;
	Datum		d;
	SPIPlanPtr	plan;

	if (!FindCampaign(message_id, &ref))
		return false;
	args[0] = Int32GetDatum(ref.campaign_id);
	args[1] = Int64GetDatum(message_id - ref.id_base);
	plan = PersonaKeptPlan(&message_plan,
						   "SELECT k.profile_ids[($2 OPERATOR(pg_catalog.-) k.first_index "
						   "                      OPERATOR(pg_catalog.+) 1)::pg_catalog.int4], c.action_id "
						   "FROM persona.campaign_chunks AS k "
						   "JOIN persona.campaigns AS c ON c.campaign_id OPERATOR(pg_catalog.=) k.campaign_id "
						   "WHERE k.campaign_id OPERATOR(pg_catalog.=) $1 "
						   "  AND k.first_index OPERATOR(pg_catalog.<=) $2 "
						   "ORDER BY k.first_index DESC LIMIT 1", 2, types, 0);
	if (SPI_execute_plan(plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading a campaign chunk failed");
	if (SPI_processed == 0)
		return false;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return false;
	*profile_id = DatumGetInt64(d);
	*action_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/* ---------------------------------------------------------------------
 * The report
 * --------------------------------------------------------------------- */

static const char *const report_statuses[] = {
	"queued", "claimed", "sent", "failed", "dead", "cancelled",
	"suppressed_consent", "suppressed_cap", "suppressed_holdout"
};

#define NSTATUSES lengthof(report_statuses)

static int
StatusSlot(const char *status)
{
	for (int i = 0; i < (int) NSTATUSES; i++)
		if (strcmp(report_statuses[i], status) == 0)
			return i;
	elog(ERROR, "unknown message status \"%s\"", status);
	return -1;
}

/* A campaign's messages by status: its chunks' states and its rows. */
PG_FUNCTION_INFO_V1(persona_campaign_report);
Datum
persona_campaign_report(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		counts[NSTATUSES] = {0};
	Oid			type = TEXTOID;
	Datum		arg;
	Datum		args[2];
	Oid			types[2] = {INT8OID, INT8OID};
	int32		campaign_id;
	int64		base;
	int64		recipients;
	bool		cancelled;		/* queued chunks left behind count as
								 * cancelled */
	bool		isnull;
	Portal		portal;
	Datum		cid;

	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("name must not be null")));
	arg = PG_GETARG_DATUM(0);
	InitMaterializedSRF(fcinfo, 0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT c.campaign_id::pg_catalog.int8, c.id_base, c.recipients, "
							  "  c.status OPERATOR(pg_catalog.=) 'cancelled' "
							  "FROM persona.campaigns AS c WHERE c.name OPERATOR(pg_catalog.=) $1",
							  1, &type, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading a campaign failed");
	if (SPI_processed == 0)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("campaign \"%s\" does not exist", TextDatumGetCString(arg))));
	campaign_id = (int32) GetInt8(1, &isnull);
	base = GetInt8(2, &isnull);
	recipients = GetInt8(3, &isnull);
	cancelled = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
	cid = Int32GetDatum(campaign_id);
	type = INT4OID;
	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT k.status, k.states, k.size FROM persona.campaign_chunks AS k "
									   "WHERE k.campaign_id OPERATOR(pg_catalog.=) $1",
									   1, &type, &cid, NULL, true, CURSOR_OPT_NO_SCROLL);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			char	   *status = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
			bool		states_null;
			Datum		d = SPI_getbinval(tup, desc, 2, &states_null);
			int			size = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));

			CHECK_FOR_INTERRUPTS();
			if (states_null)
				counts[StatusSlot(cancelled || strcmp(status, "cancelled") == 0 ? "cancelled" : "queued")] += size;
			else
			{
				bytea	   *b = DatumGetByteaPP(d);
				const char *s = VARDATA_ANY(b);

				for (int i = 0; i < size; i++)
					if (s[i] != STATE_ROW)
						counts[StatusSlot(StateName(s[i]))]++;
			}
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	args[0] = Int64GetDatum(base);
	args[1] = Int64GetDatum(base + recipients);
	if (SPI_execute_with_args("SELECT m.status, pg_catalog.count(*) FROM persona.messages AS m "
							  "WHERE m.message_id OPERATOR(pg_catalog.>=) $1 "
							  "  AND m.message_id OPERATOR(pg_catalog.<) $2 GROUP BY m.status",
							  2, types, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading a campaign's messages failed");
	for (uint64 r = 0; r < SPI_processed; r++)
		counts[StatusSlot(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[r],
															SPI_tuptable->tupdesc, 1, &isnull)))] +=
			DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull));
	SPI_finish();
	for (int i = 0; i < (int) NSTATUSES; i++)
	{
		Datum		values[2] = {CStringGetTextDatum(report_statuses[i]), Int64GetDatum(counts[i])};
		bool		nulls[2] = {false, false};

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
