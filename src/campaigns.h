/*
 * campaigns.h
 *	  Campaigns (campaigns.c): what persona_claim and persona_ack
 *	  (outbox.c) call to hand out and ack the chunks of campaigns, and the
 *	  per-channel frequency cap.
 */
#ifndef PERSONA_CAMPAIGNS_H
#define PERSONA_CAMPAIGNS_H

#include "postgres.h"

#include "nodes/execnodes.h"
#include "utils/array.h"
#include "utils/timestamp.h"

/* GUC (campaigns.c): messages per person, channel and rolling day; 0: none */
extern int	persona_channel_cap_per_day;

extern int	PersonaClaimCampaigns(Datum channel, int want, TimestampTz now,
								  TimestampTz lease_until, ReturnSetInfo *rsinfo);
extern void PersonaCampaignDeliveries(int64 profile_id, TimestampTz since, ArrayType *channels,
									  void (*add) (void *arg, const char *channel), void *arg);
extern bool PersonaCampaignMessage(int64 message_id, int64 *profile_id, int32 *action_id);
extern int	PersonaCampaignAck(const int64 *ids, int n, int64 *rest);

#endif							/* PERSONA_CAMPAIGNS_H */
