/*
 * rowwriter.h
 *	  Writing rows of persona's tables without SQL (rowwriter.c).
 */
#ifndef PERSONA_ROWWRITER_H
#define PERSONA_ROWWRITER_H

#include "postgres.h"

#include "access/skey.h"
#include "executor/tuptable.h"
#include "nodes/execnodes.h"
#include "utils/relcache.h"

typedef struct RowWriter RowWriter;

extern RowWriter *PersonaRowWriterOpen(Oid relid, const char *const *columns, int ncolumns);
extern TupleTableSlot *PersonaRowWriterInsert(RowWriter *w, const Datum *values, const bool *nulls);
extern bool PersonaRowWriterRowsExact(const RowWriter *w);
extern void PersonaRowWriterClose(RowWriter *w);
extern ExprState **PersonaCompiledChecks(Relation rel);
extern ExprState *PersonaCompiledDefault(Relation rel, AttrNumber attnum, bool *isvolatile);

typedef struct RowUpdater RowUpdater;

/* Computes a new row from the current one (values and nulls in place). */
typedef void (*RowChangeFunc) (TupleTableSlot *current, Datum *values, bool *nulls,
							   void *arg);

/* Whether a change may be made to this version of the row. */
typedef bool (*RowCheckFunc) (TupleTableSlot *current, void *arg);

typedef enum RowUpdateResult
{
	ROW_UPDATED,
	ROW_MISSING,				/* no such row (any more) */
	ROW_REFUSED					/* the check refused it: nothing written */
} RowUpdateResult;

extern RowUpdater *PersonaRowUpdaterOpen(Oid relid, Oid indexid);
extern bool PersonaRowUpdaterUpdate(RowUpdater *u, int64 key, RowChangeFunc change, void *arg);
extern RowUpdateResult PersonaRowUpdaterUpdateIf(RowUpdater *u, int64 key, RowCheckFunc check,
												 RowChangeFunc change, void *arg);
extern TupleTableSlot *PersonaRowUpdaterRow(RowUpdater *u);
extern TupleTableSlot *PersonaRowUpdaterCurrent(RowUpdater *u);
extern void PersonaRowUpdaterScan(RowUpdater *u, ScanKey keys, int nkeys);
extern TupleTableSlot *PersonaRowUpdaterNext(RowUpdater *u);
extern bool PersonaRowUpdaterLooksFree(RowUpdater *u);
extern bool PersonaRowUpdaterTry(RowUpdater *u, RowChangeFunc change, void *arg);
extern void PersonaRowUpdaterClose(RowUpdater *u);

#endif							/* PERSONA_ROWWRITER_H */
