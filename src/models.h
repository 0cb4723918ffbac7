/*
 * models.h
 *	  Predictions: point-in-time features, the logistic fit, live scores.
 */
#ifndef PERSONA_MODELS_H
#define PERSONA_MODELS_H

#include "postgres.h"

#include "nodes/pg_list.h"

/*
 * A feature is a trait (its trait_id, > 0) or one of these numeric profile
 * columns, as persona.models.feature_ids stores them.
 */
#define MODEL_EVENT_COUNT			(-1)
#define MODEL_DAYS_SINCE_LAST_SEEN	(-2)
#define MODEL_DAYS_SINCE_FIRST_SEEN (-3)

/* At most this many features per model. */
#define MODEL_MAX_FEATURES			64

extern void PersonaModelReads(List **reads, bool *clock);

#endif							/* PERSONA_MODELS_H */
