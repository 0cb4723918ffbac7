/*
 * clock.h
 *	  Flip times of clock segments, for persona_tick (clock.c).
 */
#ifndef PERSONA_CLOCK_H
#define PERSONA_CLOCK_H

extern bool PersonaClockSegmentsExist(void);

#endif							/* PERSONA_CLOCK_H */
