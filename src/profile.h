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
	int			member_segment_key; /* its column in members_pkey, 0: none */
	int			member_pid_key; /* profile_id's, if it leads the key, else 0 */
	Buffer		member_vm;		/* visibility map page of the members */
	Snapshot	snapshot;
	ExprContext *econtext;		/* scan tuple: the profile */
	/* PersonaProfileFetchOrdered: the forward scan and the row it is on */
	bool		walking;		/* the scan runs forward from a lower id */
	bool		walk_row;		/* r->profile holds the row at walk_pid */
	int64		walk_pid;
	int64		walk_asked;		/* the last id asked for */
	/* PersonaProfileSegmentsOrdered: the forward scan and its entry */
	bool		mwalking;		/* the scan runs forward from a lower id */
	bool		mwalk_entry;	/* the scan is on an entry, of mwalk_pid */
	int64		mwalk_pid;
	int64		mwalk_asked;	/* the last id asked for */
	/* PersonaProfileColumn: the columns asked for so far */
	int			ncolumns;
	const char *column_names[8];
	AttrNumber	column_nums[8];
} ProfileReader;

extern void PersonaProfileReaderBegin(ProfileReader *r, bool memberships);
extern void PersonaProfileReaderEnd(ProfileReader *r);
extern bool PersonaProfileFetch(ProfileReader *r, int64 profile_id);
extern bool PersonaProfileFetchOrdered(ProfileReader *r, int64 profile_id);
extern Datum *PersonaProfileSegments(ProfileReader *r, int64 profile_id, int *n);
extern Datum *PersonaProfileSegmentsOrdered(ProfileReader *r, int64 profile_id, int *n);
extern Datum PersonaProfileColumn(ProfileReader *r, const char *column, bool *isnull);

#endif							/* PERSONA_PROFILE_H */
