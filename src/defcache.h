/*
 * defcache.h
 *	  One cache of definition rows (traits, segments, actions) per backend:
 *	  loaded on first use, dropped when its table changes (defcache.c).
 */
#ifndef PERSONA_DEFCACHE_H
#define PERSONA_DEFCACHE_H

#include "postgres.h"

/*
 * What a concept declares, as a static struct: its table, the columns it
 * reads (by name; a row's values arrive in this order), and how a row
 * becomes an entry.  Entries start with their int32 id and are handed to
 * ``build`` ordered by it.  ``build`` and ``read_row`` run in the cache's
 * own memory context, which lives until the next load; ``release`` (may be
 * NULL) frees what that context does not hold, such as kept SPI plans.
 */
typedef struct DefinitionCache
{
	const char *name;			/* of its memory context */
	size_t		relation;		/* offsetof(PersonaCatalog, its table) */
	size_t		depends;		/* 0, or offsetof another relation whose
								 * replacement (a new OID) also reloads */
	const char *const *columns;
	int			ncolumns;
	Size		entry_size;
	void		(*read_row) (void *entry, const Datum *values, const bool *nulls);
	void	   *(*build) (void *entries, int n);
	void		(*release) (void *built);

	/* Kept by defcache.c. */
	MemoryContext cxt;
	void	   *built;			/* what build returned */
	Oid			relid;			/* InvalidOid: load again */
	Oid			depends_relid;	/* the other relation's OID at the load */
	struct DefinitionCache *next;
} DefinitionCache;

extern void *PersonaDefinitions(DefinitionCache *cache);
extern void PersonaDefCacheInit(void);

#endif							/* PERSONA_DEFCACHE_H */
