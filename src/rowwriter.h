/*
 * rowwriter.h
 *	  Inserting rows into persona's tables without SQL (rowwriter.c).
 */
#ifndef PERSONA_ROWWRITER_H
#define PERSONA_ROWWRITER_H

#include "postgres.h"

#include "executor/tuptable.h"

typedef struct RowWriter RowWriter;

extern RowWriter *RowWriterOpen(Oid relid, const char *const *columns, int ncolumns);
extern TupleTableSlot *RowWriterInsert(RowWriter *w, const Datum *values, const bool *nulls);
extern void RowWriterClose(RowWriter *w);

#endif							/* PERSONA_ROWWRITER_H */
