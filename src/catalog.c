/*
 * catalog.c
 *	  OIDs of persona's relations, cached per backend and forgotten on any
 *	  relcache invalidation (DROP/CREATE EXTENSION, ALTER TABLE ...).
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"

#include "persona.h"

static PersonaCatalog catalog;
static bool catalog_valid = false;

static void
InvalidateCatalog(Datum arg, Oid relid)
{
	catalog_valid = false;
}

static Oid
RequireRelation(Oid schema, const char *name)
{
	Oid			relid = get_relname_relid(name, schema);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("relation \"persona.%s\" does not exist", name),
				 errhint("Is the persona extension installed in this database?")));
	return relid;
}

/*
 * Returns the OIDs of persona's relations, looking them up on first use
 * after an invalidation.
 */
const PersonaCatalog *
PersonaGetCatalog(void)
{
	if (!catalog_valid)
	{
		Oid			schema = get_namespace_oid("persona", true);

		if (!OidIsValid(schema))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_SCHEMA),
					 errmsg("schema \"persona\" does not exist"),
					 errhint("Is the persona extension installed in this database?")));
		catalog.schema = schema;
		catalog.events = RequireRelation(schema, "events");
		catalog.profiles = RequireRelation(schema, "profiles");
		catalog.identities = RequireRelation(schema, "identities");
		catalog.identities_pkey = RequireRelation(schema, "identities_pkey");
		catalog.profile_id_seq = RequireRelation(schema, "profile_id_seq");
		catalog_valid = true;
	}
	return &catalog;
}

void
PersonaCatalogInit(void)
{
	CacheRegisterRelcacheCallback(InvalidateCatalog, (Datum) 0);
}
