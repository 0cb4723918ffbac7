/*
 * ingest.c
 *	  The event path: persona_track, and what its phases share.
 *
 * Every way an event comes in (persona_track, INSERT, COPY) runs the same
 * triggers on persona.events, one file per phase, as pgvector splits an
 * index by lifecycle:
 *
 *	- idmap.c: what this backend knows about ids (the id map) and the
 *	  transaction callbacks that keep it true;
 *	- ingest_row.c: the row triggers: checks, identity lookup, folding each
 *	  row into its profile's delta;
 *	- ingest_apply.c: the statement trigger: new identities, new profiles,
 *	  profile updates, segment refresh.
 *
 * Their internal declarations are in ingest.h.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/fmgrprotos.h"

#include "ingest.h"
#include "persona.h"

static SPIPlanPtr track_plan = NULL;

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

/* ---------------------------------------------------------------------
 * persona_track
 * --------------------------------------------------------------------- */

/* Records one event; returns its event_id. */
PG_FUNCTION_INFO_V1(persona_track);
Datum
persona_track(PG_FUNCTION_ARGS)
{
	Oid			types[6] = {TEXTOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TIMESTAMPTZOID};
	Datum		args[6];
	char		nulls[6];
	SPIPlanPtr	plan;
	bool		isnull;
	int64		event_id;

	/*
	 * Arguments: user_id, event_type, properties, occurred_at, context,
	 * anonymous_id
	 */
	static const int order[6] = {0, 5, 1, 2, 4, 3};

	for (int i = 0; i < 6; i++)
	{
		int			a = order[i];

		nulls[i] = PG_ARGISNULL(a) ? 'n' : ' ';
		args[i] = PG_ARGISNULL(a) ? (Datum) 0 : PG_GETARG_DATUM(a);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = PersonaKeptPlan(&track_plan,
						   "INSERT INTO persona.events "
						   "  (user_id, anonymous_id, event_type, properties, context, occurred_at) "
						   "VALUES ($1, $2, $3, $4, $5, $6) RETURNING event_id",
						   6, types, 0);
	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "inserting the event failed");
	event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	PG_RETURN_INT64(event_id);
}

void
PersonaIngestInit(void)
{
	PersonaIdMapInit();
}
