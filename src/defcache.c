/*
 * defcache.c
 *	  The definitions cache: trait, segment and action definitions, read
 *	  once per backend and kept until their table changes.
 *
 * Each concept (traits.c, segments.c, decide.c) declares a DefinitionCache
 * and calls PersonaDefinitions() for the current list.  A change to the
 * table (persona.announce_change, a statement trigger) sends a relcache
 * invalidation at commit, and the next call loads the rows again.  The
 * callback only clears a flag: it may run in the middle of a statement,
 * and whoever holds the old list keeps using it until its next call.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "defcache.h"
#include "persona.h"

static DefinitionCache *caches = NULL;

static void
DefCacheRelcacheCallback(Datum arg, Oid relid)
{
	for (DefinitionCache *c = caches; c != NULL; c = c->next)
		if (!OidIsValid(relid) || relid == c->relid)
			c->relid = InvalidOid;
}

static int
CompareIds(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

/*
 * Reads every row of the cache's table, under the latest snapshot rather
 * than the transaction's: a REPEATABLE READ transaction must not cache, and
 * act on, definitions that are no longer current.  No privileges are
 * checked: whoever may read what the definitions produce may know them.
 * Returns the entries, ordered by id.
 */
static void *
ReadEntries(DefinitionCache *cache, Oid relid, int *n)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	AttrNumber *attnums = palloc(sizeof(AttrNumber) * cache->ncolumns);
	Datum	   *all_values = palloc(sizeof(Datum) * desc->natts);
	bool	   *all_nulls = palloc(sizeof(bool) * desc->natts);
	Datum	   *values = palloc(sizeof(Datum) * cache->ncolumns);
	bool	   *nulls = palloc(sizeof(bool) * cache->ncolumns);
	int			max = 8;
	char	   *entries = palloc0(cache->entry_size * max);
	Snapshot	snapshot;
	TableScanDesc scan;
	HeapTuple	tup;

	for (int i = 0; i < cache->ncolumns; i++)
		attnums[i] = PersonaRequireColumn(relid, cache->columns[i]);
	/* A parallel query cannot take a new snapshot: its own is as fresh. */
	snapshot = RegisterSnapshot(IsInParallelMode() ? GetActiveSnapshot() : GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	*n = 0;
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		CHECK_FOR_INTERRUPTS();
		heap_deform_tuple(tup, desc, all_values, all_nulls);
		for (int i = 0; i < cache->ncolumns; i++)
		{
			values[i] = all_values[attnums[i] - 1];
			nulls[i] = all_nulls[attnums[i] - 1];
		}
		if (*n == max)
		{
			entries = repalloc(entries, cache->entry_size * max * 2);
			memset(entries + cache->entry_size * max, 0, cache->entry_size * max);
			max *= 2;
		}
		cache->read_row(entries + cache->entry_size * (*n)++, values, nulls);
	}
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	if (*n > 1)
		qsort(entries, *n, cache->entry_size, CompareIds);
	return entries;
}

/*
 * The current definitions of a cache, as its build function made them:
 * loaded again when the table changed since the last call.
 */
void *
PersonaDefinitions(DefinitionCache *cache)
{
	const PersonaCatalog *cat = PersonaGetCatalog();
	Oid			relid = *(const Oid *) ((const char *) cat + cache->relation);
	Oid			depends = cache->depends == 0 ? InvalidOid
	: *(const Oid *) ((const char *) cat + cache->depends);
	MemoryContext cxt;
	MemoryContext old;
	void	   *entries;
	void	   *built;
	int			n;

	if (cache->built != NULL && cache->relid == relid && cache->depends_relid == depends)
		return cache->built;
	if (cache->cxt == NULL)
	{
		/* First use: from now on the callback knows this cache. */
		cache->next = caches;
		caches = cache;
	}

	cxt = AllocSetContextCreate(TopMemoryContext, "persona definitions", ALLOCSET_SMALL_SIZES);
	MemoryContextSetIdentifier(cxt, cache->name);
	old = MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		entries = ReadEntries(cache, relid, &n);
		built = cache->build(entries, n);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		MemoryContextDelete(cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);

	if (cache->built != NULL && cache->release != NULL)
		cache->release(cache->built);
	if (cache->cxt != NULL)
		MemoryContextDelete(cache->cxt);
	cache->cxt = cxt;
	cache->built = built;
	cache->relid = relid;
	cache->depends_relid = depends;
	return built;
}

void
PersonaDefCacheInit(void)
{
	CacheRegisterRelcacheCallback(DefCacheRelcacheCallback, (Datum) 0);
}
