/*
 * enqueue.h
 *	  The outbox's entry (enqueue.c): queueing a set of messages at once,
 *	  with consent, caps, cooldowns and holdouts applied to each.
 */
#ifndef PERSONA_ENQUEUE_H
#define PERSONA_ENQUEUE_H

#include "postgres.h"

#include "access/htup.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* One message to queue. */
typedef struct EnqueueItem
{
	int64		profile_id;
	const char *action;
	const char *source;			/* trigger:NAME, campaign:NAME */
	TimestampTz due_at;
	Jsonb	   *event;			/* kept for the check at claim, or NULL */
	HeapTuple	profile_row;	/* the profile's row as this transaction wrote
								 * it, or NULL: it is read */
} EnqueueItem;

/*
 * Queues items[0 .. n), in order, under SPI (the caller is connected).
 * An action that does not exist is an error (42704), or, when
 * ``dropped_counts``, a suppression counted as action_dropped (a trigger
 * whose action was dropped since).  ids (may be NULL) receives each item's
 * message_id, 0 when it was suppressed.  Returns the number queued.
 */
extern int64 PersonaEnqueue(const EnqueueItem *items, int n, bool dropped_counts, int64 *ids);

#endif							/* PERSONA_ENQUEUE_H */
