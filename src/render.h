/*
 * render.h
 *	  Content templates (render.c): {{...}} placeholders filled with a
 *	  person's traits, the call's context, the triggering event and linked
 *	  content, for persona_decide (decide.c), persona_claim (outbox.c) and
 *	  persona_render.
 */
#ifndef PERSONA_RENDER_H
#define PERSONA_RENDER_H

#include "postgres.h"

#include "utils/jsonb.h"

extern Jsonb *PersonaRender(Jsonb *content, Jsonb *context, Jsonb *declared,
							Jsonb *computed);
extern Jsonb *PersonaRenderMessage(Jsonb *content, Jsonb *event, Jsonb *declared,
								   Jsonb *computed);

#endif							/* PERSONA_RENDER_H */
