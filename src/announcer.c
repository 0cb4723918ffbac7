/*
 * announcer.c
 *	  The announcer: writers never NOTIFY.
 *
 * PostgreSQL takes one cluster-wide lock at the commit of every transaction
 * that notified (async.c, PreCommit_Notify), so a writer that notifies,
 * even once per transaction, serializes its commits with every other
 * notifying writer.  persona's writers instead flag their transaction
 * (PersonaAnnounce); at commit the flag sets the latch of the announcer, a
 * dynamic background worker of the database, which sends the notifications
 * of everything that committed meanwhile: one on persona_segment, payload
 * {"log_id": H}, and one on persona_outbox per channel that got messages,
 * payload the channel.  Only the announcer ever takes the notification
 * lock.
 *
 * Gap safety.  Ids are taken in one order and committed in another: a
 * reader that reads past the last id it saw can miss a row whose
 * transaction took an earlier id and committed later.  H, the horizon, is
 * the sequence's last value A read at some moment, announced only once
 * every transaction that held a write lock on the table at that moment has
 * ended: a transaction inserts a row only under the RowExclusiveLock it
 * takes before drawing the row's id (the executor, and rowwriter.c, open
 * the table first), so every id <= A belongs to a transaction that had
 * ended or held the lock then.  Past H, every row with an id <= H is
 * committed (or never will be): a listener that reads log_id in
 * (last seen, H] misses nothing.  The announcer checks the lockers without
 * waiting (VirtualXactLock, wait = false), and looks again within 2 ms;
 * persona.segment_log_horizon() is the same computation, waiting, for
 * readers that poll.  The sequences have CACHE 1, so that their last value
 * bounds every id handed out.  Vacuum and autovacuum hold a conflicting
 * lock but write no rows: they are not waited for.
 *
 * Lifetime.  No shared memory and no shared_preload_libraries: the
 * announcer of a database is found by scanning the PGPROC array for a
 * background worker of type "persona announcer" connected to it (the result
 * is cached by each backend and checked again by pid); when there is none,
 * the committing writer registers one (RegisterDynamicBackgroundWorker, at
 * most once a second per backend).  Two started at once: the second fails
 * to take the session advisory lock that makes it the database's one, and
 * exits.  The announcer exits after 2 seconds without anything to announce
 * (so that DROP DATABASE, which waits 5 seconds for other sessions, is
 * never blocked), when persona is dropped from the database (DROP
 * EXTENSION), when persona.announce is off for it, and on SIGTERM.  It is
 * never restarted by the postmaster (BGW_NEVER_RESTART): after a crash, or
 * a server restart, the next commit that has something to announce starts
 * it again, and its first round announces everything pending.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid_d.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "access/twophase.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/sinvaladt.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "announcer.h"

#define ANNOUNCER_TYPE "persona announcer"
#define ANNOUNCER_LOCK_KEY INT64CONST(0x50525341414E4E43)	/* "PRSAANNC" */
#define ANNOUNCER_IDLE_MS 2000
#define ANNOUNCER_POLL_MS 1000	/* nothing pending: a look now and then */
#define ANNOUNCER_PENDING_MS 2	/* writers to wait for: look again soon */
#define ANNOUNCER_GAP_MS 4		/* at most one round per gap, however many
								 * commits */

bool		persona_announce = true;

PGDLLEXPORT void persona_announcer_main(Datum main_arg);

/* ---------------------------------------------------------------------
 * The horizon
 * --------------------------------------------------------------------- */

/* The last value a sequence handed out, 0 if none (under SPI). */
static int64
LastId(const char *sequence)
{
	Oid			seq = get_relname_relid(sequence, get_namespace_oid("persona", false));
	Datum		v;
	bool		isnull;

	LOCAL_FCINFO(fcinfo, 1);

	if (!OidIsValid(seq))
		elog(ERROR, "sequence persona.%s does not exist", sequence);
	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = ObjectIdGetDatum(seq);
	fcinfo->args[0].isnull = false;
	v = pg_sequence_last_value(fcinfo);
	isnull = fcinfo->isnull;
	return isnull ? 0 : DatumGetInt64(v);
}

/*
 * The transactions that may be writing rows of persona.<table>: every
 * holder of a lock that conflicts with ShareLock, vacuum left out.  The
 * array ends with an invalid vxid; *n is the count.
 */
static VirtualTransactionId *
Writers(const char *table, int *n)
{
	Oid			relid = get_relname_relid(table, get_namespace_oid("persona", false));
	LOCKTAG		tag;
	VirtualTransactionId *vxids;
	int			m = 0;

	if (!OidIsValid(relid))
		elog(ERROR, "table persona.%s does not exist", table);
	SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
	vxids = GetLockConflicts(&tag, ShareLock, NULL);
	for (int i = 0; VirtualTransactionIdIsValid(vxids[i]); i++)
	{
		PGPROC	   *proc = BackendIdGetProc(vxids[i].backendId);

		if (proc != NULL && (proc->statusFlags & (PROC_IN_VACUUM | PROC_IS_AUTOVACUUM)) != 0)
			continue;
		vxids[m++] = vxids[i];
	}
	SetInvalidVirtualTransactionId(vxids[m]);
	*n = m;
	return vxids;
}

/*
 * persona.segment_log_horizon(): the largest log_id up to which every row
 * of persona.segment_log is committed, or will never be; waits for the
 * transactions that may still write rows below it.  For readers that poll
 * instead of listening: read log_id in (last seen, horizon].
 */
PG_FUNCTION_INFO_V1(persona_segment_log_horizon);
Datum
persona_segment_log_horizon(PG_FUNCTION_ARGS)
{
	int64		last = LastId("segment_log_log_id_seq");
	int			n;
	VirtualTransactionId *vxids = Writers("segment_log", &n);

	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		VirtualXactLock(vxids[i], true);
	}
	PG_RETURN_INT64(last);
}

/* ---------------------------------------------------------------------
 * Writers: flag the transaction, wake the announcer at commit
 * --------------------------------------------------------------------- */

static bool announce_pending = false;
static bool callback_registered = false;
static PGPROC *announcer_proc = NULL;
static int	announcer_pid = 0;
static TimestampTz last_start = 0;

static bool
AnnouncerAlive(void)
{
	return announcer_proc != NULL && announcer_pid != 0 &&
		announcer_proc->pid == announcer_pid && announcer_proc->databaseId == MyDatabaseId;
}

/* Finds this database's announcer; registers one when there is none. */
static void
FindOrStartAnnouncer(void)
{
	BackgroundWorker worker;
	TimestampTz now;

	if (AnnouncerAlive())
		return;
	announcer_proc = NULL;
	announcer_pid = 0;
	for (uint32 i = 0; i < ProcGlobal->allProcCount; i++)
	{
		PGPROC	   *proc = &ProcGlobal->allProcs[i];
		int			pid = proc->pid;
		const char *type;

		if (pid == 0 || !proc->isBackgroundWorker || proc->databaseId != MyDatabaseId)
			continue;
		type = GetBackgroundWorkerTypeByPid(pid);
		if (type != NULL && strcmp(type, ANNOUNCER_TYPE) == 0)
		{
			announcer_proc = proc;
			announcer_pid = pid;
			return;
		}
	}
	now = GetCurrentTimestamp();
	if (last_start != 0 && !TimestampDifferenceExceeds(last_start, now, 1000))
		return;
	last_start = now;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "persona");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "persona_announcer_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "persona announcer for database %u", MyDatabaseId);
	snprintf(worker.bgw_type, BGW_MAXLEN, ANNOUNCER_TYPE);
	worker.bgw_main_arg = ObjectIdGetDatum(MyDatabaseId);
	worker.bgw_notify_pid = 0;
	if (!RegisterDynamicBackgroundWorker(&worker, NULL))
		ereport(LOG,
				(errmsg("could not start the persona announcer: no background worker slot is free"),
				 errhint("Raise max_worker_processes; until then listeners get no notifications.")));
}

static void
AnnounceXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (announce_pending)
				FindOrStartAnnouncer();
			break;
		case XACT_EVENT_COMMIT:

			/*
			 * After ProcArrayEndTransaction: the announcer sees what we
			 * wrote.
			 */
			if (announce_pending && AnnouncerAlive())
				SetLatch(&announcer_proc->procLatch);
			announce_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:

			/*
			 * A prepared transaction is found by the announcer's regular
			 * look.
			 */
			announce_pending = false;
			break;
		default:
			break;
	}
}

void
PersonaAnnounce(void)
{
	if (!persona_announce || announce_pending)
		return;
	if (!callback_registered)
	{
		RegisterXactCallback(AnnounceXactCallback, NULL);
		callback_registered = true;
	}
	announce_pending = true;
}

/* persona.announce(): the SQL paths' PersonaAnnounce. */
PG_FUNCTION_INFO_V1(persona_announce_changes);
Datum
persona_announce_changes(PG_FUNCTION_ARGS)
{
	PersonaAnnounce();
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------
 * The announcer
 * --------------------------------------------------------------------- */

/* One table read by id: its horizon, announced and pending. */
typedef struct Stream
{
	const char *table;
	const char *sequence;
	bool		first;			/* nothing announced yet */
	int64		announced;
	int64		pending;		/* a last id waiting for its writers, or 0 */
	int			nwriters;
	VirtualTransactionId *writers;	/* in TopMemoryContext */
	void		(*announce) (struct Stream *s, int64 horizon);
} Stream;

static SPIPlanPtr channels_plan = NULL;
static SPIPlanPtr ready_plan = NULL;

static void
AnnounceSegments(Stream *s, int64 horizon)
{
	char		payload[64];

	snprintf(payload, sizeof(payload), "{\"log_id\": " INT64_FORMAT "}", horizon);
	Async_Notify("persona_segment", payload);
}

/*
 * The channels of the messages written since the last announcement; on the
 * first round, every channel with messages still to go (a loose scan of
 * the queue's index).
 */
static void
AnnounceOutbox(Stream *s, int64 horizon)
{
	int			rc;

	if (s->first)
	{
		if (ready_plan == NULL)
		{
			ready_plan = SPI_prepare("WITH RECURSIVE c(ch) AS ("
									 " SELECT pg_catalog.min(m.channel) FROM persona.messages AS m"
									 "  WHERE m.ready_at IS NOT NULL"
									 " UNION ALL"
									 " SELECT (SELECT pg_catalog.min(m.channel) FROM persona.messages AS m"
									 "          WHERE m.ready_at IS NOT NULL"
									 "            AND m.channel OPERATOR(pg_catalog.>) c.ch)"
									 "   FROM c WHERE c.ch IS NOT NULL) "
									 "SELECT c.ch FROM c WHERE c.ch IS NOT NULL", 0, NULL);
			if (ready_plan == NULL || SPI_keepplan(ready_plan) != 0)
				elog(ERROR, "preparing the announcer's queries failed");
		}
		rc = SPI_execute_plan(ready_plan, NULL, NULL, true, 0);
	}
	else
	{
		Oid			types[2] = {INT8OID, INT8OID};
		Datum		args[2] = {Int64GetDatum(s->announced), Int64GetDatum(horizon)};

		if (channels_plan == NULL)
		{
			/*
			 * Generic: a custom plan (which the plan cache keeps choosing,
			 * the range of ids being small) was planned again every round, a
			 * third of the announcer's time under load.
			 */
			channels_plan = SPI_prepare_cursor("SELECT DISTINCT m.channel FROM persona.messages AS m"
											   " WHERE m.message_id OPERATOR(pg_catalog.>) $1"
											   "   AND m.message_id OPERATOR(pg_catalog.<=) $2", 2, types,
											   CURSOR_OPT_GENERIC_PLAN);
			if (channels_plan == NULL || SPI_keepplan(channels_plan) != 0)
				elog(ERROR, "preparing the announcer's queries failed");
		}
		rc = SPI_execute_plan(channels_plan, args, NULL, true, 0);
	}
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading the channels of new messages failed");
	for (uint64 r = 0; r < SPI_processed; r++)
		Async_Notify("persona_outbox", SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1));
}

/* One look at a stream; true when something was announced or is pending. */
static bool
Step(Stream *s)
{
	int64		horizon = s->announced;
	bool		any;

	if (s->pending != 0)
	{
		int			m = 0;

		for (int i = 0; i < s->nwriters; i++)
			if (!VirtualXactLock(s->writers[i], false))
				s->writers[m++] = s->writers[i];
		s->nwriters = m;
		if (m == 0)
		{
			horizon = s->pending;
			s->pending = 0;
		}
	}
	if (s->pending == 0)
	{
		int64		last = LastId(s->sequence);

		if (last > horizon || s->first)
		{
			int			n;
			VirtualTransactionId *vxids = Writers(s->table, &n);

			if (n == 0)
				horizon = last;
			else
			{
				s->pending = last;
				s->nwriters = n;
				memcpy(s->writers, vxids, sizeof(VirtualTransactionId) * n);
			}
		}
	}
	any = s->pending != 0;
	if (horizon > s->announced || (s->first && s->pending == 0))
	{
		s->announce(s, horizon);
		s->announced = horizon;
		s->first = false;
		any = true;
	}
	return any;
}

void
persona_announcer_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	Stream		streams[2] = {
		{"segment_log", "segment_log_log_id_seq", true, 0, 0, 0, NULL, AnnounceSegments},
		{"messages", "message_id_seq", true, 0, 0, 0, NULL, AnnounceOutbox},
	};
	TimestampTz last_active = GetCurrentTimestamp();
	bool		active = true;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, BOOTSTRAP_SUPERUSERID, 0);
	for (int k = 0; k < (int) lengthof(streams); k++)
		streams[k].writers = MemoryContextAlloc(TopMemoryContext,
												sizeof(VirtualTransactionId) * (MaxBackends + max_prepared_xacts + 1));

	/* The database's one announcer: a session lock, or another has it. */
	StartTransactionCommand();
	if (!DatumGetBool(DirectFunctionCall1(pg_try_advisory_lock_int8, Int64GetDatum(ANNOUNCER_LOCK_KEY))))
	{
		CommitTransactionCommand();
		proc_exit(0);
	}
	CommitTransactionCommand();

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (!OidIsValid(get_extension_oid("persona", true)) || !persona_announce)
		{
			/* DROP EXTENSION, or announcements turned off for the database. */
			CommitTransactionCommand();
			break;
		}
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "announcing");
		active = false;
		for (int k = 0; k < (int) lengthof(streams); k++)
			active |= Step(&streams[k]);
		PopActiveSnapshot();
		SPI_finish();
		/* The notifications go out at this commit. */
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);

		if (active)
			last_active = GetCurrentTimestamp();
		else if (TimestampDifferenceExceeds(last_active, GetCurrentTimestamp(), ANNOUNCER_IDLE_MS))
			break;

		/*
		 * Under load every commit sets the latch: a round per commit would
		 * take a core.  Rounds are at least a gap apart; each covers every
		 * commit since the last.
		 */
		(void) WaitLatch(NULL, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ANNOUNCER_GAP_MS, PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 (streams[0].pending || streams[1].pending) ? ANNOUNCER_PENDING_MS
						 : Min(ANNOUNCER_POLL_MS, ANNOUNCER_IDLE_MS), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}
