/*
 * experiments.h
 *	  Experiments and holdouts (experiments.c): the running experiments, the
 *	  arm of a person, recorded at the first exposure.
 */
#ifndef PERSONA_EXPERIMENTS_H
#define PERSONA_EXPERIMENTS_H

#include "postgres.h"

#define PERSONA_EXPERIMENT_BUCKETS 10000

/* One row of persona.experiments. */
typedef struct PersonaExperiment
{
	int32		experiment_id;
	char	   *name;
	int			holdout_buckets;	/* buckets 0 .. holdout_buckets - 1 */
	char	   *action;			/* NULL: a global holdout */
	bool		running;
} PersonaExperiment;

typedef struct PersonaExperimentSet
{
	int			n;
	PersonaExperiment *experiments; /* ordered by experiment_id */
	int			nrunning;
	int			nrunning_global;	/* running, with no action */
} PersonaExperimentSet;

extern PersonaExperimentSet *PersonaGetExperiments(void);
extern uint32 PersonaExperimentBucket(const char *experiment, const char *id, int idlen);
extern bool PersonaExperimentHoldout(const PersonaExperiment *e, int64 profile_id,
									 const char *hash_id, int hash_id_len);

/* decide.c: step 1 of persona_decide, for persona_arm (SPI connected) */
extern int64 PersonaDecideProfile(Datum id);

#endif							/* PERSONA_EXPERIMENTS_H */
