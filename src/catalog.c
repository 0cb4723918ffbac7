/*
 * catalog.c
 *	  OIDs of persona's relations (and a few column numbers), cached per
 *	  backend and forgotten on any relcache invalidation (DROP/CREATE
 *	  EXTENSION, ALTER TABLE ...).
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "executor/spi.h"
#include "utils/inval.h"
#include "utils/rel.h"
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
		catalog.profiles_pkey = RequireRelation(schema, "profiles_pkey");
		catalog.identities = RequireRelation(schema, "identities");
		catalog.identities_pkey = RequireRelation(schema, "identities_pkey");
		catalog.profile_id_seq = RequireRelation(schema, "profile_id_seq");
		catalog.event_id_seq = RequireRelation(schema, "event_id_seq");
		catalog.trait_defs = RequireRelation(schema, "trait_defs");
		catalog.segments = RequireRelation(schema, "segments");
		catalog.segment_members = RequireRelation(schema, "segment_members");
		catalog.segment_members_pkey = RequireRelation(schema, "segment_members_pkey");
		catalog.member_segment = PersonaRequireColumn(catalog.segment_members, "segment");
		catalog.member_profile_id = PersonaRequireColumn(catalog.segment_members, "profile_id");
		catalog.segment_log = RequireRelation(schema, "segment_log");
		catalog.segment_source = RequireRelation(schema, "segment_source");
		catalog.decision_source = RequireRelation(schema, "decision_source");
		catalog.actions = RequireRelation(schema, "actions");
		/* New in 0.2.0: a database not yet updated has none. */
		catalog.experiments = get_relname_relid("experiments", schema);
		catalog.assignments = get_relname_relid("assignments", schema);
		catalog.assignments_pkey = get_relname_relid("assignments_pkey", schema);
		catalog.triggers = get_relname_relid("triggers", schema);
		catalog.trigger_source = get_relname_relid("trigger_source", schema);
		catalog.messages = get_relname_relid("messages", schema);
		catalog.profile_consent = get_attnum(catalog.profiles, "consent");
		catalog_valid = true;
	}
	return &catalog;
}

/*
 * The number of a column of one of persona's relations, looked up by name
 * (columns may have moved, as after a dropped column).  Missing is a
 * can't-happen: the install script creates them all.
 */
AttrNumber
PersonaRequireColumn(Oid relid, const char *name)
{
	AttrNumber	attnum = get_attnum(relid, name);

	if (attnum <= 0)
		elog(ERROR, "relation \"%s\" has no column \"%s\"", get_rel_name(relid), name);
	return attnum;
}

/*
 * Whether the current user may store a row of one of persona's tables as
 * it comes, with a column that persona otherwise computes: the owner of the
 * table (or a member of its role, or a superuser), as a restore of pg_dump
 * runs.  Anyone else gets an error naming the column (docs/operations.md).
 * For a partition, the owner of its root table: a restore writes the rows
 * of persona.events into the partitions they were dumped from.
 */
void
PersonaRequireRestorer(Relation rel, const char *column, const char *detail)
{
	Oid			relid = RelationGetRelid(rel);

	/* A partition's rows are its partitioned table's (persona.events). */
	if (rel->rd_rel->relispartition)
		relid = llast_oid(get_partition_ancestors(relid));
	if (!pg_class_ownercheck(relid, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only the owner of table %s may set column \"%s\"",
						get_rel_name(relid), column),
				 errdetail("%s", detail),
				 errhint("Leave \"%s\" out; rows that carry it are restored rows, stored as they come.",
						 column)));
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

/*
 * BEFORE UPDATE OR DELETE OR TRUNCATE FOR EACH STATEMENT on the tables
 * persona maintains (and BEFORE UPDATE OR DELETE FOR EACH ROW on
 * persona.events, whose partitions a statement may name directly): refuses
 * the statement unless persona.maintenance is on, as persona's own functions
 * set it (SET clause) for their writes, or persona_track is applying its
 * event (persona_applying, set in C: see track.c).  A
 * hand-written change would leave profiles, traits and segments silently
 * inconsistent with the events (docs/operations.md).  Ingest never runs it:
 * it inserts events and writes profiles with no SQL UPDATE.
 */
PG_FUNCTION_INFO_V1(persona_refuse_direct_change);
Datum
persona_refuse_direct_change(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *verb;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		(TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) &&
		 TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("persona_refuse_direct_change must be fired BEFORE UPDATE OR DELETE OR TRUNCATE")));
	if (persona_maintenance || persona_applying)
	{
		/* A row trigger lets the row through as it is. */
		if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
			return PointerGetDatum(NULL);
		return PointerGetDatum(TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event)
							   ? trigdata->tg_newtuple : trigdata->tg_trigtuple);
	}
	verb = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? "UPDATE" :
		TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) ? "DELETE" : "TRUNCATE";
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s %s.%s directly", verb,
					get_namespace_name(RelationGetNamespace(trigdata->tg_relation)),
					RelationGetRelationName(trigdata->tg_relation)),
			 errdetail("persona maintains this table: a change by hand would leave profiles, traits or segments inconsistent."),
			 errhint("Use persona_forget to erase a person, and persona's functions for everything else; a superuser repairing by hand may SET persona.maintenance = on.")));
	return PointerGetDatum(NULL);	/* not reached */
}

/* An SPI plan prepared on first use and kept for the backend's life. */
SPIPlanPtr
PersonaKeptPlan(SPIPlanPtr *cache, const char *sql, int nargs, Oid *types,
				int cursor_options)
{
	if (*cache == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, types, cursor_options);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*cache = plan;
	}
	return *cache;
}
