/*
 * idmap.c
 *	  What this backend knows about ids: the id map of the event path, and
 *	  the transaction, subtransaction and relcache callbacks that keep it
 *	  (and the row phase's folds) true.
 *
 * The row trigger (ingest_row.c) resolves each event's id through the map
 * first, then persona.identities; an id never seen gets a profile id at
 * once and stays "pending" in the map until the statement trigger
 * (ingest_apply.c) writes its identity row.  See IdEntry in ingest.h for
 * when the map is emptied.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/inval.h"
#include "utils/memutils.h"

#include "ingest.h"
#include "persona.h"

IdMapState	PersonaIdMap = {NULL, NULL, 0, false, InvalidOid, false};

void
PersonaIdMapForget(void)
{
	if (PersonaIdMap.cxt != NULL)
		MemoryContextReset(PersonaIdMap.cxt);
	PersonaIdMap.map = NULL;
	PersonaIdMap.pending = 0;
	PersonaIdMap.stale = false;
}

/* Makes an empty map (see IdMapGet). */
void
PersonaIdMapCreate(void)
{
	if (PersonaIdMap.cxt == NULL)
		PersonaIdMap.cxt = AllocSetContextCreate(TopMemoryContext,
												 "persona ingest",
												 ALLOCSET_DEFAULT_SIZES);
	PersonaIdMap.map = idmap_create(PersonaIdMap.cxt, 1024, NULL);
}

static void
IdMapXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			PersonaIngestCloseIdentityScan();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			PersonaIngestForgetIdentityScan(TopSubTransactionId);
			PersonaIngestForgetFolds(); /* freed with TopTransactionContext */
			PersonaIngestForgetStatements(InvalidSubTransactionId);
			PersonaIdMapForget();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:

			/*
			 * Folds left (events_apply disabled) and pending ids are of no
			 * use.
			 */
			PersonaIngestForgetFolds();
			PersonaIngestForgetStatements(InvalidSubTransactionId);
			if (PersonaIdMap.pending > 0)
				PersonaIdMapForget();
			break;
		default:
			break;
	}
}

/*
 * Undoes in the id map what the abort of subtransaction ``subid`` undid in
 * the tables, for the folds of enclosing statements, which point to
 * entries: entries made in it or its children go, identity rows written
 * there are pending again.  Memory is kept (folds may point to an entry
 * that leaves the map).  No CHECK_FOR_INTERRUPTS: this runs inside the
 * abort, which holds interrupts, and must finish to leave the map true.
 */
static void
RollBackIdMap(SubTransactionId subid)
{
	idmap_iterator it;
	IdSlot	   *slot;

	if (PersonaIdMap.map == NULL)
		return;
	idmap_start_iterate(PersonaIdMap.map, &it);
	while ((slot = idmap_iterate(PersonaIdMap.map, &it)) != NULL)
	{
		IdEntry    *entry = slot->entry;

		if (entry->created_in >= subid)
		{
			if (entry->pending)
				PersonaIdMap.pending--;
			entry->pending = false;
			idmap_delete_item(PersonaIdMap.map, slot);
		}
		else if (!entry->pending && entry->written_in >= subid)
		{
			entry->pending = true;
			entry->written_in = InvalidSubTransactionId;
			PersonaIdMap.pending++;
		}
	}
}

static void
IdMapSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	if (PersonaIdMap.in_own_subxact)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
		PersonaIngestCommitFolds(mySubid, parentSubid);
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* The abort released the scan if it was opened there. */
		PersonaIngestForgetIdentityScan(mySubid);
		PersonaIngestForgetStatements(mySubid);
		if (PersonaIngestAbortFolds(mySubid))
			RollBackIdMap(mySubid);
		else
			PersonaIdMapForget();
	}
}

/*
 * Invalidation can arrive in the middle of a statement, while deltas point
 * into the map: it only marks the map stale, and IdMapPrune drops what is
 * stale at the next safe point.
 */
static void
IdMapRelcacheCallback(Datum arg, Oid relid)
{
	if (PersonaIdMap.map != NULL && (!OidIsValid(relid) || relid == PersonaIdMap.relid))
		PersonaIdMap.stale = true;
}

/* Drops every resolved entry of a stale map (see IdMapPrune); pending ones are our own. */
void
PersonaIdMapPruneStale(void)
{
	idmap_iterator it;
	IdSlot	   *slot;

	if (PersonaIdMap.pending == 0 && !PersonaIngestHasFolds())
	{
		PersonaIdMapForget();
		return;
	}
	idmap_start_iterate(PersonaIdMap.map, &it);
	while ((slot = idmap_iterate(PersonaIdMap.map, &it)) != NULL)
	{
		CHECK_FOR_INTERRUPTS();
		if (!slot->entry->pending)
			idmap_delete_item(PersonaIdMap.map, slot);
	}
	/* Only now: a walk cancelled half-way is taken up again next time. */
	PersonaIdMap.stale = false;
}

void
PersonaIdMapInit(void)
{
	RegisterXactCallback(IdMapXactCallback, NULL);
	RegisterSubXactCallback(IdMapSubXactCallback, NULL);
	CacheRegisterRelcacheCallback(IdMapRelcacheCallback, (Datum) 0);
}
