/*
 * outbox.c
 *	  Consent and the outbox: the consent rule shared by persona_decide,
 *	  the outbox's enqueue and persona_claim, and persona_claim itself.
 *
 * persona_claim runs in three statements whatever n is:
 *	1. lock: the due messages of the channel, oldest first, FOR UPDATE SKIP
 *	   LOCKED, so that concurrent claimers never take the same row;
 *	2. in C, per message: the profile read by primary key (traits and
 *	   consent), consent checked again, a trigger's condition checked again
 *	   (PersonaTriggerStillHolds, triggers.c), the action's content rendered
 *	   by PersonaRenderMessage (render.c), with a trigger's event as its
 *	   context;
 *	3. one UPDATE of all of them from arrays: claimed with a lease, or
 *	   cancelled (consent withdrawn, action dropped, trigger condition no
 *	   longer holding), or dead (its last
 *	   lease expired).
 * A claimed row keeps its ready_at, and so its place in the queue's index:
 * the lease is lease_until, a column no index holds, so that the claim's
 * UPDATE is HOT and writes no index entry. Step 1 skips the rows whose
 * lease holds (the other workers' batches in hand, a few thousand rows at
 * most); the ack takes the row out of the index.
 * docs/delivery.md describes the protocol and its costs.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "campaigns.h"
#include "outbox.h"
#include "persona.h"
#include "profile.h"
#include "render.h"
#include "traits.h"
#include "triggers.h"

#define MAX_CLAIM 10000
#define ADVISORY_CLASS 0x50525341	/* "PRSA": persona's advisory locks */

char	   *persona_opt_in_channels = NULL;
int			persona_max_attempts = 5;

/*
 * The claim's plans stay custom (planned per call, about 1% of a claim):
 * a generic plan made while the queue is empty, as when a worker connects
 * first, is a sequential scan with a sort or hash join, and it would be
 * kept for the backend's life however the queue grows.
 */
static SPIPlanPtr claim_lock_plan = NULL;
static SPIPlanPtr claim_update_plan = NULL;
static SPIPlanPtr suppress_plan = NULL;

/* A channel name's syntax: 1 to 32 of [a-z0-9_], starting with a letter. */
static inline bool
ChannelNameValid(const char *channel, int len)
{
	if (len < 1 || len > 32 || channel[0] < 'a' || channel[0] > 'z')
		return false;
	for (int i = 0; i < len; i++)
	{
		char		c = channel[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
			return false;
	}
	return true;
}

/* Errors (22023) unless the channel name is valid. */
void
PersonaCheckChannel(const char *channel)
{
	if (!ChannelNameValid(channel, strlen(channel)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid channel name \"%s\"", channel),
				 errhint("Channels are lower-case letters, digits and underscores, such as web or email.")));
}

/*
 * Calls fn for each entry of a non-empty comma list, spaces trimmed (an
 * empty entry too); stops at the first false.
 */
static bool
ForEachListed(const char *list, bool (*fn) (const char *name, int len, void *arg), void *arg)
{
	const char *p = list;

	for (;;)
	{
		const char *end = strchr(p, ',');
		const char *stop = end ? end : p + strlen(p);
		const char *a = p;
		const char *b = stop;

		while (a < b && (*a == ' ' || *a == '\t'))
			a++;
		while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
			b--;
		if (!fn(a, b - a, arg))
			return false;
		if (end == NULL)
			return true;
		p = end + 1;
	}
}

static bool
ListedValid(const char *name, int len, void *arg)
{
	*(const char **) arg = name;
	return ChannelNameValid(name, len);
}

/* GUC check hook of persona.opt_in_channels: a comma list of channel names. */
bool
PersonaCheckOptInChannels(char **newval, void **extra, GucSource source)
{
	const char *bad = NULL;

	if (*newval == NULL || **newval == '\0')
		return true;
	if (!ForEachListed(*newval, ListedValid, &bad))
	{
		GUC_check_errdetail("\"%s\" is not a comma-separated list of channel names.", *newval);
		GUC_check_errhint("Channels are up to 32 lower-case letters, digits and underscores, such as email or sms.");
		return false;
	}
	return true;
}

typedef struct ChannelMatch
{
	const char *channel;
	int			len;
} ChannelMatch;

static bool
ListedDiffers(const char *name, int len, void *arg)
{
	ChannelMatch *m = (ChannelMatch *) arg;

	return !(len == m->len && memcmp(name, m->channel, len) == 0);
}

/*
 * The consent rule: a channel the person withdrew (false) gets nothing; a
 * channel they granted (true) is open; any other channel is open unless
 * persona.opt_in_channels names it.
 */
bool
PersonaConsented(Jsonb *consent, const char *channel)
{
	ChannelMatch m = {channel, strlen(channel)};

	if (consent != NULL && JB_ROOT_IS_OBJECT(consent) && !JB_ROOT_IS_SCALAR(consent))
	{
		JsonbValue	k;
		JsonbValue *v;

		k.type = jbvString;
		k.val.string.val = (char *) channel;
		k.val.string.len = m.len;
		v = findJsonbValueFromContainer(&consent->root, JB_FOBJECT, &k);
		if (v != NULL)
			return v->type == jbvBool && v->val.boolean;
	}
	return persona_opt_in_channels == NULL || persona_opt_in_channels[0] == '\0' ||
		ForEachListed(persona_opt_in_channels, ListedDiffers, &m);
}

/*
 * Serializes what counts toward one profile's caps (decisions and queued
 * messages) until the transaction ends: a transaction-level advisory lock.
 */
void
PersonaLockProfileSends(int64 profile_id)
{
	DirectFunctionCall2(pg_advisory_xact_lock_int4, Int32GetDatum(ADVISORY_CLASS),
						Int32GetDatum((int32) (profile_id ^ (profile_id >> 32))));
}

/* Checks a channel name (22023 when invalid); returns it. */
PG_FUNCTION_INFO_V1(persona_check_channel);
Datum
persona_check_channel(PG_FUNCTION_ARGS)
{
	PersonaCheckChannel(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_DATUM(PG_GETARG_DATUM(0));
}

/* Whether a person's consent object lets a channel reach them now. */
PG_FUNCTION_INFO_V1(persona_consented);
Datum
persona_consented(PG_FUNCTION_ARGS)
{
	Jsonb	   *consent = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);

	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	PG_RETURN_BOOL(PersonaConsented(consent, text_to_cstring(PG_GETARG_TEXT_PP(1))));
}

/* Takes the advisory lock that serializes a profile's decisions and messages. */
PG_FUNCTION_INFO_V1(persona_lock_profile_sends);
Datum
persona_lock_profile_sends(PG_FUNCTION_ARGS)
{
	PersonaLockProfileSends(PG_GETARG_INT64(0));
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------
 * persona_claim
 * --------------------------------------------------------------------- */

/* One locked message and what becomes of it. */
typedef struct ClaimItem
{
	int64		message_id;
	int64		profile_id;
	int32		action_id;
	int32		attempts;
	bool		was_claimed;	/* its lease expired */
	Datum		source;
	const char *status;			/* claimed, cancelled, dead */
	Datum		content;		/* rendered, when claimed */
	Datum		user_id;
	bool		user_id_null;
	const char *error;			/* cancelled or dead: why */
	const char *reason;			/* cancelled: the persona.suppressions reason */
	Jsonb	   *event;			/* a trigger's triggering event, or NULL */
} ClaimItem;

static void
CheckClaimArgs(FunctionCallInfo fcinfo, TimestampTz now, TimestampTz *lease_until)
{
	int32		n;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("channel, n and lease must not be null")));
	PersonaCheckChannel(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	n = PG_GETARG_INT32(1);
	if (n <= 0 || n > MAX_CLAIM)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("n must be between 1 and %d", MAX_CLAIM),
						errdetail("The n given was %d.", n)));
	*lease_until = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														   TimestampTzGetDatum(now),
														   PG_GETARG_DATUM(2)));
	if (*lease_until <= now || *lease_until > now + USECS_PER_DAY)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("lease must be positive and at most 1 day"),
						errdetail("The lease given was \"%s\".",
								  DatumGetCString(DirectFunctionCall1(interval_out, PG_GETARG_DATUM(2)))),
						errhint("Use the time a worker needs to send a batch, such as '30 seconds'.")));
}

/* Step 1: the due messages of the channel, locked, skipping those locked. */
static ClaimItem *
LockDueMessages(Datum channel, int32 n, TimestampTz now, int *nitems)
{
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, INT4OID};
	Datum		args[3] = {channel, TimestampTzGetDatum(now), Int32GetDatum(n)};
	SPIPlanPtr	plan = PersonaKeptPlan(&claim_lock_plan,
									   "SELECT m.message_id, m.profile_id, m.action_id, m.attempts, "
									   "       m.status OPERATOR(pg_catalog.=) 'claimed', m.source, m.event "
									   "FROM persona.messages AS m "
									   "WHERE m.channel OPERATOR(pg_catalog.=) $1 "
									   "  AND m.ready_at OPERATOR(pg_catalog.<=) $2 "
									   "  AND (m.lease_until IS NULL "
									   "       OR m.lease_until OPERATOR(pg_catalog.<=) $2) "
									   "ORDER BY m.ready_at LIMIT $3 "
									   "FOR UPDATE OF m SKIP LOCKED", 3, types, 0);
	ClaimItem  *items;

	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "locking due messages failed");
	*nitems = (int) SPI_processed;
	items = palloc0(sizeof(ClaimItem) * Max(*nitems, 1));
	for (int i = 0; i < *nitems; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		d;

		items[i].message_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		items[i].profile_id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		items[i].action_id = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		items[i].attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		items[i].was_claimed = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		items[i].source = datumCopy(SPI_getbinval(tup, desc, 6, &isnull), false, -1);
		d = SPI_getbinval(tup, desc, 7, &isnull);
		items[i].event = isnull ? NULL : DatumGetJsonbPCopy(d);
	}
	return items;
}

/*
 * Step 2: what becomes of each message, and its content rendered with the
 * profile's traits as they are now.
 */
static void
DecideClaims(ClaimItem *items, int nitems, const char *channel)
{
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext tmp = AllocSetContextCreate(CurrentMemoryContext, "persona claim",
											  ALLOCSET_DEFAULT_SIZES);
	ProfileReader r;

	PersonaProfileReaderBegin(&r, false);
	for (int i = 0; i < nitems; i++)
	{
		ClaimItem  *it = &items[i];
		Jsonb	   *content = PersonaActionContent(it->action_id);
		Jsonb	   *consent;
		Jsonb	   *declared;
		Jsonb	   *rendered;
		bool		isnull;
		Datum		d;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tmp);
		MemoryContextSwitchTo(tmp);
		it->user_id_null = true;
		if (content == NULL)
			it->status = "cancelled", it->error = "action dropped", it->reason = "action_dropped";
		else if (!PersonaProfileFetch(&r, it->profile_id))
			it->status = "cancelled", it->error = "profile gone", it->reason = "action_dropped";
		else
		{
			d = PersonaProfileColumn(&r, "consent", &isnull);
			consent = isnull ? NULL : DatumGetJsonbP(d);
			if (!PersonaConsented(consent, channel))
				it->status = "cancelled", it->error = "consent", it->reason = "consent";
			else if (it->was_claimed && it->attempts >= persona_max_attempts)
				it->status = "dead", it->error = "lease expired on the last attempt";
			else if (it->event != NULL &&
					 !PersonaTriggerStillHolds(TextDatumGetCString(it->source),
											   ExecCopySlotHeapTuple(r.profile),
											   RelationGetDescr(r.profiles), it->event,
											   &it->error))
			{
				/*
				 * A delayed trigger's message whose person no longer
				 * qualifies.
				 */
				it->status = "cancelled";
				it->reason = "condition";
				MemoryContextSwitchTo(outer);
				it->error = pstrdup(it->error);
			}
			else
			{
				it->status = "claimed";
				d = PersonaProfileColumn(&r, "traits", &isnull);
				declared = isnull ? NULL : DatumGetJsonbP(d);
				d = PersonaProfileColumn(&r, "computed_state", &isnull);
				rendered = PersonaRenderMessage(content, it->event, declared,
												PersonaTraitsJson(isnull ? NULL : DatumGetByteaPP(d)));
				d = PersonaProfileColumn(&r, "user_id", &it->user_id_null);
				MemoryContextSwitchTo(outer);
				it->content = datumCopy(JsonbPGetDatum(rendered), false, -1);
				if (!it->user_id_null)
					it->user_id = datumCopy(d, false, -1);
			}
		}
		MemoryContextSwitchTo(outer);
	}
	PersonaProfileReaderEnd(&r);
	MemoryContextDelete(tmp);
}

/* Counts the messages cancelled at claim by reason (persona.suppressions). */
static void
CountCancelled(const ClaimItem *items, int nitems)
{
	Datum	   *sources = palloc(sizeof(Datum) * Max(nitems, 1));
	Datum	   *reasons = palloc(sizeof(Datum) * Max(nitems, 1));
	int			k = 0;
	Oid			types[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum		args[2];
	SPIPlanPtr	plan;

	for (int i = 0; i < nitems; i++)
		if (strcmp(items[i].status, "cancelled") == 0)
		{
			sources[k] = items[i].source;
			reasons[k++] = CStringGetTextDatum(items[i].reason);
		}
	if (k == 0)
		return;
	args[0] = PointerGetDatum(construct_array(sources, k, TEXTOID, -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(reasons, k, TEXTOID, -1, false, TYPALIGN_INT));
	plan = PersonaKeptPlan(&suppress_plan, "SELECT persona.count_suppressions($1, $2)",
						   2, types, 0);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "counting suppressions failed");
}

static int
ItemIdCmp(const void *a, const void *b)
{
	int64		x = (*(const ClaimItem *const *) a)->message_id;
	int64		y = (*(const ClaimItem *const *) b)->message_id;

	return (x > y) - (x < y);
}

/* The item of a message id, by binary search over items sorted by id. */
static const ClaimItem *
FindItem(const ClaimItem **byid, int nitems, int64 id)
{
	int			lo = 0;
	int			hi = nitems - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (byid[mid]->message_id == id)
			return byid[mid];
		if (byid[mid]->message_id < id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	elog(ERROR, "claimed message " INT64_FORMAT " was not locked", id);
	return NULL;				/* not reached */
}

/* Step 3: every message's new state in one UPDATE; the claimed ones returned. */
static void
WriteClaims(const ClaimItem *items, int nitems, TimestampTz lease_until,
			ReturnSetInfo *rsinfo)
{
	Datum	   *ids = palloc(sizeof(Datum) * nitems);
	Datum	   *pids = palloc(sizeof(Datum) * nitems);
	Datum	   *status = palloc(sizeof(Datum) * nitems);
	Datum	   *content = palloc(sizeof(Datum) * nitems);
	bool	   *content_null = palloc(sizeof(bool) * nitems);
	Datum	   *error = palloc(sizeof(Datum) * nitems);
	bool	   *error_null = palloc(sizeof(bool) * nitems);
	int			dims[1] = {nitems};
	int			lbs[1] = {1};
	Oid			types[6] = {INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID, JSONBARRAYOID,
	TEXTARRAYOID, TIMESTAMPTZOID};
	Datum		args[6];
	SPIPlanPtr	plan;
	const ClaimItem **byid;

	for (int i = 0; i < nitems; i++)
	{
		ids[i] = Int64GetDatum(items[i].message_id);
		pids[i] = Int64GetDatum(items[i].profile_id);
		status[i] = CStringGetTextDatum(items[i].status);
		content[i] = items[i].content;
		content_null[i] = items[i].content == (Datum) 0;
		error[i] = items[i].error ? CStringGetTextDatum(items[i].error) : (Datum) 0;
		error_null[i] = items[i].error == NULL;
	}
	args[0] = PointerGetDatum(construct_array(ids, nitems, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(pids, nitems, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[2] = PointerGetDatum(construct_array(status, nitems, TEXTOID, -1, false, TYPALIGN_INT));
	args[3] = PointerGetDatum(construct_md_array(content, content_null, 1, dims, lbs,
												 JSONBOID, -1, false, TYPALIGN_INT));
	args[4] = PointerGetDatum(construct_md_array(error, error_null, 1, dims, lbs,
												 TEXTOID, -1, false, TYPALIGN_INT));
	args[5] = TimestampTzGetDatum(lease_until);
	plan = PersonaKeptPlan(&claim_update_plan,
						   "UPDATE persona.messages AS m "
						   "SET status = u.status, "
						   "    attempts = m.attempts OPERATOR(pg_catalog.+) "
						   "      (u.status OPERATOR(pg_catalog.=) 'claimed')::pg_catalog.int4, "
						   "    ready_at = CASE WHEN u.status OPERATOR(pg_catalog.=) 'claimed' THEN m.ready_at END, "
						   "    lease_until = CASE WHEN u.status OPERATOR(pg_catalog.=) 'claimed' THEN $6 END, "
						   "    content = coalesce(u.content, m.content), "
						   "    last_error = coalesce(u.error, m.last_error) "
						   "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
						   "  pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5)) "
						   "  AS u(message_id, profile_id, status, content, error) "
						   "WHERE m.message_id OPERATOR(pg_catalog.=) u.message_id "
						   "  AND m.profile_id OPERATOR(pg_catalog.=) u.profile_id "
						   "RETURNING m.message_id, m.channel, m.action, m.content, m.attempts, "
						   "  m.source, m.status", 6, types, 0);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_UPDATE_RETURNING ||
		SPI_processed != (uint64) nitems)
		elog(ERROR, "claiming messages failed");
	byid = palloc(sizeof(ClaimItem *) * nitems);
	for (int i = 0; i < nitems; i++)
		byid[i] = &items[i];
	qsort(byid, nitems, sizeof(ClaimItem *), ItemIdCmp);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		Datum		values[8];
		bool		nulls[8] = {false};
		const ClaimItem *it;
		char	   *st = TextDatumGetCString(SPI_getbinval(tup, desc, 7, &isnull));

		if (strcmp(st, "claimed") != 0)
			continue;
		it = FindItem(byid, nitems, id);
		values[0] = Int64GetDatum(id);
		values[1] = Int64GetDatum(it->profile_id);
		values[2] = it->user_id;
		nulls[2] = it->user_id_null;
		values[3] = SPI_getbinval(tup, desc, 2, &isnull);
		values[4] = SPI_getbinval(tup, desc, 3, &isnull);
		values[5] = SPI_getbinval(tup, desc, 4, &isnull);
		values[6] = SPI_getbinval(tup, desc, 5, &isnull);
		values[7] = SPI_getbinval(tup, desc, 6, &isnull);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
}

/* Leases up to n due messages of a channel, rendered now, to the caller. */
PG_FUNCTION_INFO_V1(persona_claim);
Datum
persona_claim(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz lease_until;
	ClaimItem  *items;
	int			nitems;

	CheckClaimArgs(fcinfo, now, &lease_until);
	InitMaterializedSRF(fcinfo, 0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	items = LockDueMessages(PG_GETARG_DATUM(0), PG_GETARG_INT32(1), now, &nitems);
	if (nitems > 0)
	{
		DecideClaims(items, nitems, text_to_cstring(PG_GETARG_TEXT_PP(0)));
		CountCancelled(items, nitems);
		WriteClaims(items, nitems, lease_until, rsinfo);
	}
	/* Then the chunks of campaigns (campaigns.c), up to n in all. */
	if (nitems < PG_GETARG_INT32(1))
		PersonaClaimCampaigns(PG_GETARG_DATUM(0), PG_GETARG_INT32(1) - nitems, now,
							  lease_until, rsinfo);
	SPI_finish();
	return (Datum) 0;
}
