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

/*
 * A forward walk of a btree index whose key leads with a bigint column, for
 * keys asked for in ascending order: one scan from the first key instead of
 * a descent from the root per key.  The key of each entry is read from the
 * index tuple, so entries are stepped over without visiting the heap.
 */
typedef struct IndexWalk
{
	IndexScanDesc scan;			/* xs_want_itup set by PersonaIndexWalkInit */
	AttrNumber	key_att;		/* the bigint column in the index tuple */
	int64		max_gap;		/* descend again for a key this far ahead */
	bool		walking;		/* the scan runs forward from a lower key */
	bool		exact;			/* ... or is the first key's lookup (=) */
	bool		restarted;		/* a scan began since PersonaIndexWalkInit */
	bool		entry;			/* the scan is on an entry, of key ``key`` */
	int64		key;
	int64		asked;			/* the last key asked for */
} IndexWalk;

extern void PersonaIndexWalkInit(IndexWalk *w, IndexScanDesc scan, AttrNumber key_att,
								 int64 max_gap);
extern void PersonaIndexWalkTo(IndexWalk *w, int64 key);
extern bool PersonaIndexWalkNext(IndexWalk *w);
extern bool PersonaIndexWalkFetch(IndexWalk *w, int64 key, TupleTableSlot *slot);

typedef struct ProfileReader
{
	MemoryContext cxt;			/* where the scans began: they allocate there */
	Relation	profiles;
	Relation	profiles_pkey;	/* with profile_scan: NULL until a fetch */
	IndexScanDesc profile_scan;
	TupleTableSlot *profile;	/* the last profile fetched */
	Relation	members;		/* NULL: memberships are not read */
	Relation	members_pkey;
	IndexScanDesc member_scan;
	TupleTableSlot *member;
	AttrNumber	member_segment;
	int			member_segment_key; /* its column in members_pkey, 0: none */
	int			member_pid_key; /* profile_id's, if it leads the key, else 0 */
	IndexWalk	member_walk;	/* PersonaProfileSegmentsOrdered's */
	Buffer		member_vm;		/* visibility map page of the members */
	Snapshot	snapshot;
	ExprContext *econtext;		/* scan tuple: the profile */
	IndexWalk	profile_walk;	/* PersonaProfileFetchOrdered's */
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
