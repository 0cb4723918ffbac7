/*
 * outbox.c
 *	  Consent and the outbox: the consent rule shared by persona_decide,
 *	  the outbox's enqueue and persona_claim, and the worker protocol's
 *	  persona_claim and persona_ack.
 *
 * persona_claim writes each message it takes once, with no SQL:
 *	1. it walks the queue's index (messages_ready_idx: the channel's
 *	   messages by ready_at, oldest first) under the statement's snapshot,
 *	   passing over the rows whose lease holds and those another
 *	   transaction is changing (a look at the row's header);
 *	2. per message, in C: the profile read by primary key (traits and
 *	   consent), consent checked again, a trigger's condition checked again
 *	   (PersonaTriggerStillHolds, triggers.c), the action's content rendered
 *	   by PersonaRenderMessage (render.c), with a trigger's event as its
 *	   context;
 *	3. the row updated without waiting (PersonaRowUpdaterTry, rowwriter.c):
 *	   claimed with a lease, or cancelled (consent withdrawn, action dropped,
 *	   trigger condition no longer holding), or dead (its last lease
 *	   expired). A row that another transaction changed or is changing
 *	   meanwhile is skipped, as FOR UPDATE SKIP LOCKED skips it, but no row
 *	   lock is written first: the update is the claim.
 * A claimed row keeps its ready_at, and so its place in the queue's index:
 * the lease is lease_until, a column no index holds, so that the claim's
 * update is HOT and writes no index entry. Step 1 skips the rows whose
 * lease holds (the other workers' batches in hand, a few thousand rows at
 * most); the ack takes the row out of the index.
 *
 * persona_ack updates each claimed message of the batch, in id order, by
 * its primary key (PersonaRowUpdaterUpdateIf): sent, sent_at, out of the
 * queue's index. It waits for a concurrent claim or ack of the same row, as
 * UPDATE does, and checks the latest version again.
 * docs/delivery.md describes the protocol and its costs.
 */
#include "postgres.h"

#include "access/skey.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "campaigns.h"
#include "outbox.h"
#include "persona.h"
#include "profile.h"
#include "render.h"
#include "rowwriter.h"
#include "traits.h"
#include "triggers.h"

#define MAX_CLAIM 10000
#define ADVISORY_CLASS 0x50525341	/* "PRSA": persona's advisory locks */

char	   *persona_opt_in_channels = NULL;
int			persona_max_attempts = 5;

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

/* One claimable message and what becomes of it. */
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

/* The columns of persona.messages that claim, ack and fail read or write. */
typedef struct MessageColumns
{
	AttrNumber	message_id;
	AttrNumber	profile_id;
	AttrNumber	channel;
	AttrNumber	action;
	AttrNumber	source;
	AttrNumber	status;
	AttrNumber	attempts;
	AttrNumber	sent_at;
	AttrNumber	last_error;
	AttrNumber	content;
	AttrNumber	action_id;
	AttrNumber	ready_at;
	AttrNumber	event;
	AttrNumber	lease_until;
} MessageColumns;

/* The outbox's relation and its columns, looked up per call. */
static Oid
MessagesRelation(MessageColumns *c)
{
	Oid			relid = PersonaGetCatalog()->messages;

	if (!OidIsValid(relid))
		elog(ERROR, "persona.messages is missing");
	c->message_id = PersonaRequireColumn(relid, "message_id");
	c->profile_id = PersonaRequireColumn(relid, "profile_id");
	c->channel = PersonaRequireColumn(relid, "channel");
	c->action = PersonaRequireColumn(relid, "action");
	c->source = PersonaRequireColumn(relid, "source");
	c->status = PersonaRequireColumn(relid, "status");
	c->attempts = PersonaRequireColumn(relid, "attempts");
	c->sent_at = PersonaRequireColumn(relid, "sent_at");
	c->last_error = PersonaRequireColumn(relid, "last_error");
	c->content = PersonaRequireColumn(relid, "content");
	c->action_id = PersonaRequireColumn(relid, "action_id");
	c->ready_at = PersonaRequireColumn(relid, "ready_at");
	c->event = PersonaRequireColumn(relid, "event");
	c->lease_until = PersonaRequireColumn(relid, "lease_until");
	return relid;
}

/* An index of persona.messages by name. */
static Oid
MessagesIndex(const char *name)
{
	Oid			relid = get_relname_relid(name, PersonaGetCatalog()->schema);

	if (!OidIsValid(relid))
		elog(ERROR, "index persona.%s is missing", name);
	return relid;
}

/*
 * Makes a new snapshot active, one that sees what the transaction wrote so
 * far (a claim earlier in the same statement, say), as each statement of a
 * PL/pgSQL function gets one; the caller pops it.
 */
static void
FreshSnapshot(void)
{
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	UpdateActiveSnapshotCommandId();
}

/* Whether a text datum equals a C string. */
static inline bool
TextIs(Datum d, const char *s)
{
	text	   *t = DatumGetTextPP(d);
	int			len = strlen(s);

	return (int) VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), s, len) == 0;
}

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

/*
 * What becomes of a message: claimed with its content rendered with the
 * profile's traits as they are now, or cancelled, or dead.  Allocates in
 * the current context; what the item keeps is copied to ``outer``.
 */
static void
DecideClaim(ClaimItem *it, ProfileReader *r, const char *channel, MemoryContext outer)
{
	Jsonb	   *content = PersonaActionContent(it->action_id);
	Jsonb	   *consent;
	Jsonb	   *declared;
	Jsonb	   *rendered;
	bool		isnull;
	Datum		d;

	it->user_id_null = true;
	it->content = (Datum) 0;
	it->error = NULL;
	if (content == NULL)
		it->status = "cancelled", it->error = "action dropped", it->reason = "action_dropped";
	else if (!PersonaProfileFetch(r, it->profile_id))
		it->status = "cancelled", it->error = "profile gone", it->reason = "action_dropped";
	else
	{
		d = PersonaProfileColumn(r, "consent", &isnull);
		consent = isnull ? NULL : DatumGetJsonbP(d);
		if (!PersonaConsented(consent, channel))
			it->status = "cancelled", it->error = "consent", it->reason = "consent";
		else if (it->was_claimed && it->attempts >= persona_max_attempts)
			it->status = "dead", it->error = "lease expired on the last attempt";
		else if (it->event != NULL &&
				 !PersonaTriggerStillHolds(TextDatumGetCString(it->source),
										   ExecCopySlotHeapTuple(r->profile),
										   RelationGetDescr(r->profiles), it->event,
										   &it->error))
		{
			/* A delayed trigger's message whose person no longer qualifies. */
			it->status = "cancelled";
			it->reason = "condition";
			it->error = MemoryContextStrdup(outer, it->error);
		}
		else
		{
			it->status = "claimed";
			d = PersonaProfileColumn(r, "traits", &isnull);
			declared = isnull ? NULL : DatumGetJsonbP(d);
			d = PersonaProfileColumn(r, "computed_state", &isnull);
			rendered = PersonaRenderMessage(content, it->event, declared,
											PersonaTraitsJson(isnull ? NULL : DatumGetByteaPP(d)));
			d = PersonaProfileColumn(r, "user_id", &it->user_id_null);
			it->content = PointerGetDatum(rendered);
			if (!it->user_id_null)
				it->user_id = d;
		}
	}
}

/* Counts the messages cancelled at claim by reason (persona.suppressions). */
static void
CountCancelled(const Datum *sources, const Datum *reasons, int k)
{
	Oid			types[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum		args[2];
	SPIPlanPtr	plan;

	if (k == 0)
		return;
	args[0] = PointerGetDatum(construct_array((Datum *) sources, k, TEXTOID, -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array((Datum *) reasons, k, TEXTOID, -1, false, TYPALIGN_INT));
	plan = PersonaKeptPlan(&suppress_plan, "SELECT persona.count_suppressions($1, $2)",
						   2, types, 0);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "counting suppressions failed");
}

/* The claim's change of a message row (PersonaRowUpdaterTry). */
typedef struct ClaimChange
{
	const MessageColumns *col;
	const ClaimItem *it;
	TimestampTz lease_until;
} ClaimChange;

static void
ClaimRow(TupleTableSlot *current, Datum *values, bool *nulls, void *arg)
{
	const ClaimChange *c = (const ClaimChange *) arg;
	const MessageColumns *col = c->col;
	const ClaimItem *it = c->it;
	bool		claimed = strcmp(it->status, "claimed") == 0;

	values[col->status - 1] = CStringGetTextDatum(it->status);
	if (claimed)
	{
		/* ready_at stays: the row keeps its place in the queue's index */
		values[col->attempts - 1] = Int32GetDatum(it->attempts + 1);
		values[col->lease_until - 1] = TimestampTzGetDatum(c->lease_until);
		nulls[col->lease_until - 1] = false;
		values[col->content - 1] = it->content;
		nulls[col->content - 1] = false;
	}
	else
	{
		nulls[col->ready_at - 1] = true;
		nulls[col->lease_until - 1] = true;
		values[col->last_error - 1] = CStringGetTextDatum(it->error);
		nulls[col->last_error - 1] = false;
	}
}

/*
 * Claims up to n due messages of the channel: walks the queue's index
 * (messages_ready_idx: channel, then ready_at, oldest first) and updates
 * each due message that no lease holds, without waiting, skipping those
 * another transaction is changing or changed since the snapshot (as SKIP
 * LOCKED would, with no row lock first). Returns how many it took
 * (claimed, cancelled or dead); the claimed ones go to the caller.
 */
static int
ClaimMessages(Datum channel, int32 n, TimestampTz now, TimestampTz lease_until,
			  ReturnSetInfo *rsinfo)
{
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext tmp = AllocSetContextCreate(CurrentMemoryContext, "persona claim",
											  ALLOCSET_DEFAULT_SIZES);
	const char *chan = TextDatumGetCString(channel);
	MessageColumns col;
	Oid			relid = MessagesRelation(&col);
	RowUpdater *u;
	ScanKeyData keys[2];
	ProfileReader r;
	TupleTableSlot *slot;
	Datum	   *sources = palloc(sizeof(Datum) * n);
	Datum	   *reasons = palloc(sizeof(Datum) * n);
	int			ncancelled = 0;
	int			taken = 0;

	/*
	 * The queue as committed now (FreshSnapshot), then the profiles from a
	 * snapshot taken after it: a message the queue's snapshot sees was
	 * committed with its profile or after it, so the reader sees that
	 * profile.  (Begun the other way round, the reader missed the new profile
	 * of a message committed in between, and the claim cancelled it as
	 * "profile gone".)
	 */
	FreshSnapshot();
	PersonaProfileReaderBegin(&r, false);
	u = PersonaRowUpdaterOpen(relid, MessagesIndex("messages_ready_idx"));
	ScanKeyEntryInitialize(&keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   DEFAULT_COLLATION_OID, F_TEXTEQ, channel);
	ScanKeyEntryInitialize(&keys[1], 0, 2, BTLessEqualStrategyNumber, InvalidOid,
						   InvalidOid, F_TIMESTAMPTZ_LE, TimestampTzGetDatum(now));
	PersonaRowUpdaterScan(u, keys, 2);
	while (taken < n && (slot = PersonaRowUpdaterNext(u)) != NULL)
	{
		ClaimItem	it;
		ClaimChange change = {&col, &it, lease_until};
		bool		isnull;
		Datum		d;

		CHECK_FOR_INTERRUPTS();
		/* A lease that holds: another worker has it in hand. */
		d = slot_getattr(slot, col.lease_until, &isnull);
		if (!isnull && DatumGetTimestampTz(d) > now)
			continue;
		if (!PersonaRowUpdaterLooksFree(u))
			continue;
		MemoryContextReset(tmp);
		MemoryContextSwitchTo(tmp);
		memset(&it, 0, sizeof(it));
		it.message_id = DatumGetInt64(slot_getattr(slot, col.message_id, &isnull));
		it.profile_id = DatumGetInt64(slot_getattr(slot, col.profile_id, &isnull));
		it.action_id = DatumGetInt32(slot_getattr(slot, col.action_id, &isnull));
		it.attempts = DatumGetInt32(slot_getattr(slot, col.attempts, &isnull));
		it.was_claimed = TextIs(slot_getattr(slot, col.status, &isnull), "claimed");
		it.source = datumCopy(slot_getattr(slot, col.source, &isnull), false, -1);
		d = slot_getattr(slot, col.event, &isnull);
		it.event = isnull ? NULL : DatumGetJsonbPCopy(d);
		DecideClaim(&it, &r, chan, outer);
		if (!PersonaRowUpdaterTry(u, ClaimRow, &change))
		{
			MemoryContextSwitchTo(outer);
			continue;			/* taken by another claimer meanwhile */
		}
		taken++;
		slot = PersonaRowUpdaterCurrent(u); /* channel and action unchanged */
		if (strcmp(it.status, "claimed") == 0)
		{
			Datum		values[8];
			bool		nulls[8] = {false};

			values[0] = Int64GetDatum(it.message_id);
			values[1] = Int64GetDatum(it.profile_id);
			values[2] = it.user_id;
			nulls[2] = it.user_id_null;
			values[3] = slot->tts_values[col.channel - 1];
			values[4] = slot->tts_values[col.action - 1];
			values[5] = it.content;
			values[6] = Int32GetDatum(it.attempts + 1);
			values[7] = it.source;
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		MemoryContextSwitchTo(outer);
		if (strcmp(it.status, "cancelled") == 0)
		{
			sources[ncancelled] = datumCopy(it.source, false, -1);
			reasons[ncancelled++] = CStringGetTextDatum(it.reason);
		}
	}
	PersonaRowUpdaterClose(u);
	PopActiveSnapshot();
	PersonaProfileReaderEnd(&r);
	MemoryContextDelete(tmp);
	CountCancelled(sources, reasons, ncancelled);
	return taken;
}

/* Leases up to n due messages of a channel, rendered now, to the caller. */
PG_FUNCTION_INFO_V1(persona_claim);
Datum
persona_claim(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz lease_until;
	int			nitems;

	CheckClaimArgs(fcinfo, now, &lease_until);
	PreventCommandIfReadOnly("persona_claim()");
	InitMaterializedSRF(fcinfo, 0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	nitems = ClaimMessages(PG_GETARG_DATUM(0), PG_GETARG_INT32(1), now, lease_until, rsinfo);
	/* Then the chunks of campaigns (campaigns.c), up to n in all. */
	if (nitems < PG_GETARG_INT32(1))
		PersonaClaimCampaigns(PG_GETARG_DATUM(0), PG_GETARG_INT32(1) - nitems, now,
							  lease_until, rsinfo);
	SPI_finish();
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * persona_ack
 * --------------------------------------------------------------------- */

#define MAX_ACK 10000

/* The ack's check and change of a message row (PersonaRowUpdaterUpdateIf). */
typedef struct AckChange
{
	const MessageColumns *col;
	TimestampTz sent_at;
} AckChange;

static bool
AckAllowed(TupleTableSlot *current, void *arg)
{
	const AckChange *a = (const AckChange *) arg;
	bool		isnull;

	return TextIs(slot_getattr(current, a->col->status, &isnull), "claimed");
}

static void
AckRow(TupleTableSlot *current, Datum *values, bool *nulls, void *arg)
{
	const AckChange *a = (const AckChange *) arg;
	const MessageColumns *col = a->col;

	values[col->status - 1] = CStringGetTextDatum("sent");
	values[col->sent_at - 1] = TimestampTzGetDatum(a->sent_at);
	nulls[col->sent_at - 1] = false;
	nulls[col->ready_at - 1] = true;	/* out of the queue's index */
	nulls[col->lease_until - 1] = true;
}

/* The ids of a message id array, sorted and distinct; 22004 on a null. */
static int64 *
SortedIds(ArrayType *a, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int64	   *ids;
	int			k = 0;

	deconstruct_array(a, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, n);
	ids = palloc(sizeof(int64) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
							errmsg("message_ids must not be or contain null")));
		ids[i] = DatumGetInt64(elems[i]);
	}
	qsort(ids, *n, sizeof(int64), PersonaCompareInt64);
	for (int i = 0; i < *n; i++)
		if (k == 0 || ids[i] != ids[k - 1])
			ids[k++] = ids[i];
	*n = k;
	return ids;
}

/* Appends an id to a comma list. */
static inline void
AppendId(StringInfo s, int64 id)
{
	appendStringInfo(s, "%s" INT64_FORMAT, s->len > 0 ? ", " : "", id);
}

/*
 * Marks claimed messages sent, all or none; returns how many.  Each row is
 * updated by its primary key, in id order (two acks of overlapping batches
 * lock them in the same order: no deadlock), waiting for a concurrent claim
 * or ack of the same row and checking its latest version, as UPDATE ...
 * WHERE status = 'claimed' does.  An id that is not claimed fails the whole
 * call, naming every such id: 42704 for ids that do not exist, then 55000
 * for those already acked, then 55000 for the others.
 */
PG_FUNCTION_INFO_V1(persona_ack);
Datum
persona_ack(PG_FUNCTION_ARGS)
{
	int			n;
	int64	   *ids;
	int64	   *rest;
	int			nrest;
	int64		done = 0;
	MessageColumns col;
	Oid			relid;
	RowUpdater *u;
	AckChange	change;
	StringInfoData missing,
				acked,
				unclaimed;

	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("message_ids must not be or contain null")));
	ids = SortedIds(PG_GETARG_ARRAYTYPE_P(0), &n);
	if (n == 0)
		PG_RETURN_INT64(0);
	if (n > MAX_ACK)
		ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						errmsg("at most %d messages can be acked at once", MAX_ACK),
						errdetail("%d were given.", n)));
	PreventCommandIfReadOnly("persona_ack()");
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* Campaign messages without a row are acked in their chunks. */
	rest = palloc(sizeof(int64) * n);
	nrest = PersonaCampaignAck(ids, n, rest);
	if (nrest == 0)
	{
		SPI_finish();
		PG_RETURN_INT64(n);
	}
	relid = MessagesRelation(&col);
	change.col = &col;
	change.sent_at = GetCurrentTimestamp();
	initStringInfo(&missing);
	initStringInfo(&acked);
	initStringInfo(&unclaimed);
	FreshSnapshot();
	u = PersonaRowUpdaterOpen(relid, MessagesIndex("messages_pkey"));
	for (int i = 0; i < nrest; i++)
	{
		bool		isnull;

		CHECK_FOR_INTERRUPTS();
		switch (PersonaRowUpdaterUpdateIf(u, rest[i], AckAllowed, AckRow, &change))
		{
			case ROW_UPDATED:
				done++;
				break;
			case ROW_MISSING:
				AppendId(&missing, rest[i]);
				break;
			case ROW_REFUSED:
				if (TextIs(slot_getattr(PersonaRowUpdaterCurrent(u), col.status, &isnull), "sent"))
					AppendId(&acked, rest[i]);
				else
					AppendId(&unclaimed, rest[i]);
				break;
		}
	}
	PersonaRowUpdaterClose(u);
	PopActiveSnapshot();
	/* Some are not claimed: say which and why; the error undoes the rest. */
	if (missing.len > 0)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("message %s does not exist", missing.data)));
	if (acked.len > 0)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("message %s was already acked", acked.data),
						errdetail("Another worker acked it first: its lease had expired and it was claimed again."),
						errhint("Ack the other messages of the batch again without it.")));
	if (unclaimed.len > 0)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("message %s is not claimed", unclaimed.data),
						errhint("Only a claimed message can be acked or failed: claim it with persona_claim.")));
	SPI_finish();
	PG_RETURN_INT64(done + (n - nrest));
}
