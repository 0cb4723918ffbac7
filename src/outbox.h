/*
 * outbox.h
 *	  Consent and the outbox (outbox.c), and what they share with
 *	  persona_decide (decide.c): the action definitions.
 */
#ifndef PERSONA_OUTBOX_H
#define PERSONA_OUTBOX_H

#include "postgres.h"

#include "utils/guc.h"
#include "utils/jsonb.h"

/* GUCs (outbox.c) */
extern char *persona_opt_in_channels;
extern int	persona_max_attempts;

/* outbox.c */
extern void PersonaCheckChannel(const char *channel);
extern bool PersonaConsented(Jsonb *consent, const char *channel);
extern bool PersonaCheckOptInChannels(char **newval, void **extra, GucSource source);
extern void PersonaLockProfileSends(int64 profile_id);

/* decide.c */
extern Jsonb *PersonaActionContent(int32 action_id);

#endif							/* PERSONA_OUTBOX_H */
