/*
 * triggers.h
 *	  Linked events (triggers.c): the trigger definitions and their firing
 *	  at the end of an ingest statement.
 */
#ifndef PERSONA_TRIGGERS_H
#define PERSONA_TRIGGERS_H

#include "postgres.h"

#include "access/htup.h"
#include "access/tupdesc.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/*
 * The event types that have triggers, as the row phase needs them: copied
 * into the statement's memory when its folds begin, so that a reload of
 * the definitions meanwhile cannot pull them away.
 */
typedef struct TriggerEventTypes
{
	int			n;
	int32	   *trigger_ids;
	char	  **event_types;
} TriggerEventTypes;

/* One event that matched a trigger's event type, to fire at statement end. */
typedef struct TriggerFiring
{
	int32		trigger_id;
	int64		profile_id;
	TimestampTz occurred_at;
	Jsonb	   *context;
	Jsonb	   *event;			/* event_type, properties, context */
} TriggerFiring;

extern TriggerEventTypes *PersonaTriggerEventTypes(void);
extern Jsonb *PersonaTriggerEventObject(text *event_type, Jsonb *properties, Jsonb *context);
extern void PersonaTriggersFire(const TriggerFiring *firings, const HeapTuple *rows, int n);
extern void PersonaTriggersFireSegments(const char *const *segments, const Datum *pids, int n,
										bool entered);
extern bool PersonaTriggerStillHolds(const char *source, HeapTuple profile, TupleDesc desc,
									 Jsonb *event, const char **why);

#endif							/* PERSONA_TRIGGERS_H */
