/*
 * profile.h
 *	  Reading one profile at a time in C (profile.c): its row by primary
 *	  key and its segment memberships, for segments.c and decide.c.
 */
#ifndef PERSONA_PROFILE_H
#define PERSONA_PROFILE_H

#include "postgres.h"

#include "access/genam.h"
#include "executor/tuptable.h"
#include "nodes/execnodes.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"

typedef struct ProfileReader
{
	MemoryContext cxt;			/* where the scans began: they allocate there */
	Relation	profiles;
	Relation	profiles_pkey;
	IndexScanDesc profile_scan;
	TupleTableSlot *profile;	/* the last profile fetched */
	Relation	members;		/* NULL: memberships are not read */
	Relation	members_pkey;
	IndexScanDesc member_scan;
	TupleTableSlot *member;
	AttrNumber	member_segment;
	Snapshot	snapshot;
	ExprContext *econtext;		/* scan tuple: the profile */
} ProfileReader;

extern void PersonaProfileReaderBegin(ProfileReader *r, bool memberships);
extern void PersonaProfileReaderEnd(ProfileReader *r);
extern bool PersonaProfileFetch(ProfileReader *r, int64 profile_id);
extern Datum *PersonaProfileSegments(ProfileReader *r, int64 profile_id, int *n);
extern Datum PersonaProfileColumn(ProfileReader *r, const char *column, bool *isnull);

#endif							/* PERSONA_PROFILE_H */
