/*
 * ingest.c
 *	  The event path: what its phases share.
 *
 * Every way an event comes in (INSERT, COPY) runs the same triggers on
 * persona.events, and persona_track does their work itself, one file per
 * phase, as pgvector splits an index by lifecycle:
 *
 *	- idmap.c: what this backend knows about ids (the id map) and the
 *	  transaction callbacks that keep it true;
 *	- ingest_row.c: the row triggers: checks, identity lookup, folding each
 *	  row into its profile's delta;
 *	- ingest_apply.c: the statement trigger: new identities, new profiles,
 *	  profile updates, segment refresh;
 *	- track.c: persona_track, which inserts its event and runs both phases
 *	  without SQL (or, when it cannot honour all an INSERT would do, by SQL).
 *
 * Their internal declarations are in ingest.h.
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "utils/fmgrprotos.h"

#include "ingest.h"
#include "persona.h"

/*
 * The trigger data of a trigger function that must be fired by INSERT, at
 * the given timing and level (``usage`` says which, for the error).
 */
TriggerData *
PersonaIngestRequireInsertTrigger(FunctionCallInfo fcinfo, bool before, bool row, const char *usage)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		(TRIGGER_FIRED_BEFORE(trigdata->tg_event) != 0) != before ||
		(TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) != 0) != row ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s", usage)));
	return trigdata;
}

void
PersonaIngestInit(void)
{
	PersonaIdMapInit();
	PersonaTrackInit();
}
