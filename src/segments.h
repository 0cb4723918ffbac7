/*
 * segments.h
 *	  Real-time segments (segments.c).
 */
#ifndef PERSONA_SEGMENTS_H
#define PERSONA_SEGMENTS_H

#include "postgres.h"

#include "access/htup.h"
#include "nodes/pg_list.h"

extern uint64 PersonaSegmentsRefresh(const int64 *profile_ids, int nprofiles, bool created,
									 const char *const *changed, int nchanged);
extern uint64 PersonaSegmentsRefreshRows(const int64 *profile_ids, const HeapTuple *rows,
										 int nprofiles, bool created,
										 const char *const *changed, int nchanged);
extern bool PersonaSegmentsExist(void);
extern bool PersonaClockSegmentsExist(void);

#endif							/* PERSONA_SEGMENTS_H */
