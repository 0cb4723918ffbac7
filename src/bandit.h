/*
 * bandit.h
 *	  The per-person bandit (bandit.c): a person's features, and each
 *	  action's Bayesian logistic model over them, learned online from
 *	  feedback and Thompson-sampled by persona_decide.
 */
#ifndef PERSONA_BANDIT_H
#define PERSONA_BANDIT_H

#include "postgres.h"

#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* At most this many features describe one person. */
#define PERSONA_BANDIT_MAX_PERSON_FEATURES 64

/* A person's features, as one decision sees them. */
typedef struct PersonaBanditFeatures
{
	int			n;
	char	   *names[PERSONA_BANDIT_MAX_PERSON_FEATURES];
	double		x[PERSONA_BANDIT_MAX_PERSON_FEATURES];
} PersonaBanditFeatures;

/* GUCs */
extern bool persona_bandit;
extern int	persona_bandit_min_feedback;

extern void PersonaBanditInit(void);
extern void PersonaBanditExtract(PersonaBanditFeatures *f, Jsonb *declared, Jsonb *computed,
								 int64 event_count, TimestampTz last_seen, TimestampTz now);
extern Jsonb *PersonaBanditFeaturesJsonb(const PersonaBanditFeatures *f);
extern bool PersonaBanditPredict(int32 action_id, Jsonb *model, const PersonaBanditFeatures *f,
								 double *mean, double *sd, int64 *n);
extern double PersonaBanditLogistic(double s);

/* decide.c: restarts persona_decide's random sequence (persona.decide_seed) */
extern void PersonaDecideSeedAssign(int newval, void *extra);
extern int	persona_decide_seed;

#endif							/* PERSONA_BANDIT_H */
