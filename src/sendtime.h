/*
 * sendtime.h
 *	  Best send time and best channel of a person (sendtime.c), for the
 *	  outbox and campaigns.
 */
#ifndef PERSONA_SENDTIME_H
#define PERSONA_SENDTIME_H

#include "postgres.h"

#include "utils/array.h"
#include "utils/timestamp.h"

/* The channel name that asks for the person's best channel. */
#define PERSONA_BEST_CHANNEL "best"

/* Both run within SPI (the caller connects). */
extern TimestampTz PersonaBestSendAt(int64 profile_id, bool known, TimestampTz after,
									 const char *channel, int hours, bool *fallback);
extern char *PersonaBestChannel(int64 profile_id, bool known, ArrayType *channels);

#endif							/* PERSONA_SENDTIME_H */
