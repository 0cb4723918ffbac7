/*
 * catalog.c
 *	  OIDs of persona's relations, cached per backend and forgotten on any
 *	  relcache invalidation (DROP/CREATE EXTENSION, ALTER TABLE ...).
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "fmgr.h"
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
		catalog.trait_defs = RequireRelation(schema, "trait_defs");
		catalog.segments = RequireRelation(schema, "segments");
		catalog.segment_source = RequireRelation(schema, "segment_source");
		catalog.actions = RequireRelation(schema, "actions");
		catalog_valid = true;
	}
	return &catalog;
}

void
PersonaCatalogInit(void)
{
	CacheRegisterRelcacheCallback(InvalidateCatalog, (Datum) 0);
}

/*
 * Tells every backend that rows its caches are built from changed (id
 * mappings after a merge or forget, trait definitions): a relcache
 * invalidation of the trigger's table, sent at commit.
 */
PG_FUNCTION_INFO_V1(persona_announce_change);
Datum
persona_announce_change(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("persona_announce_change must be fired AFTER ... FOR EACH STATEMENT")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}
