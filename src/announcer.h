/*
 * announcer.h
 *	  The announcer (announcer.c): a background worker per database that
 *	  sends the notifications of persona_segment and persona_outbox, so
 *	  that writers never NOTIFY.
 */
#ifndef PERSONA_ANNOUNCER_H
#define PERSONA_ANNOUNCER_H

#include "postgres.h"

/* GUC persona.announce */
extern bool persona_announce;

/* The transaction wrote rows to announce: wake (or start) the announcer at commit. */
extern void PersonaAnnounce(void);

#endif							/* PERSONA_ANNOUNCER_H */
