/*
 * experiments.c
 *	  Experiments and holdouts: the bucket of a person, their arm, recorded
 *	  at the first exposure, persona_arm, and the hook that triggers and
 *	  campaigns call.
 *
 * The bucket of an id in an experiment is FNV-1a (32 bits) of the bytes of
 * the experiment's name, a colon and the id, modulo 10,000; buckets below
 * round(holdout_pct * 100) are the holdout (docs/experiments.md, with the
 * code to recompute it elsewhere).  The id hashed is the profile's user_id
 * when it has one, else the id the call named.  Once recorded in
 * persona.assignments, the arm is read from there: that, not the hash,
 * makes it sticky across merges and ids.
 *
 * persona_decide enforces experiments as one of its steps (decide.c,
 * ApplyHoldouts), through PersonaExperimentHoldout below.
 */
#include "postgres.h"

#include <math.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "defcache.h"
#include "experiments.h"
#include "persona.h"

static SPIPlanPtr record_arm_plan = NULL;
static SPIPlanPtr user_id_plan = NULL;
static SPIPlanPtr anonymous_id_plan = NULL;

/* ---------------------------------------------------------------------
 * Definitions cache
 * --------------------------------------------------------------------- */

static const char *const experiment_columns[] = {
	"experiment_id", "name", "holdout_pct", "action", "status"
};

static void
ReadExperimentDef(void *entry, const Datum *values, const bool *nulls)
{
	PersonaExperiment *e = (PersonaExperiment *) entry;

	e->experiment_id = DatumGetInt32(values[0]);
	e->name = TextDatumGetCString(values[1]);
	/* As the CHECK constraint and the report compute it: round() is rint(). */
	e->holdout_buckets = (int) rint(DatumGetFloat8(values[2]) * 100.0);
	e->action = nulls[3] ? NULL : TextDatumGetCString(values[3]);
	e->running = strcmp(TextDatumGetCString(values[4]), "running") == 0;
}

static void *
BuildExperimentSet(void *entries, int n)
{
	PersonaExperimentSet *set = palloc0(sizeof(PersonaExperimentSet));

	set->experiments = (PersonaExperiment *) entries;
	set->n = n;
	for (int i = 0; i < n; i++)
		if (set->experiments[i].running)
		{
			set->nrunning++;
			if (set->experiments[i].action == NULL)
				set->nrunning_global++;
		}
	return set;
}

/* The experiment definitions, read again after persona.experiments changed. */
static DefinitionCache experiment_cache = {
	.name = "persona experiments",
	.relation = offsetof(PersonaCatalog, experiments),
	.columns = experiment_columns,
	.ncolumns = lengthof(experiment_columns),
	.entry_size = sizeof(PersonaExperiment),
	.read_row = ReadExperimentDef,
	.build = BuildExperimentSet,
};

/*
 * Every experiment, running or ended.  A database still at 0.1.0's SQL (no
 * persona.experiments) has none.
 */
PersonaExperimentSet *
PersonaGetExperiments(void)
{
	static PersonaExperimentSet none;

	if (!OidIsValid(PersonaGetCatalog()->experiments))
		return &none;
	return (PersonaExperimentSet *) PersonaDefinitions(&experiment_cache);
}

static const PersonaExperiment *
FindExperiment(const char *name)
{
	PersonaExperimentSet *set = PersonaGetExperiments();

	for (int i = 0; i < set->n; i++)
		if (strcmp(set->experiments[i].name, name) == 0)
			return &set->experiments[i];
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("experiment \"%s\" does not exist", name)));
	return NULL;				/* keep compiler quiet */
}

/* ---------------------------------------------------------------------
 * Hashing
 * --------------------------------------------------------------------- */

#define FNV32_OFFSET 2166136261u
#define FNV32_PRIME 16777619u

static inline uint32
Fnv1a(uint32 h, const char *bytes, int len)
{
	for (int i = 0; i < len; i++)
	{
		h ^= (unsigned char) bytes[i];
		h *= FNV32_PRIME;
	}
	return h;
}

/* The bucket, 0 .. 9999, of an id in an experiment. */
uint32
PersonaExperimentBucket(const char *experiment, const char *id, int idlen)
{
	uint32		h = Fnv1a(FNV32_OFFSET, experiment, strlen(experiment));

	h = Fnv1a(h, ":", 1);
	h = Fnv1a(h, id, idlen);
	return h % PERSONA_EXPERIMENT_BUCKETS;
}

/* The bucket of an id in an experiment (0 .. 9999). */
PG_FUNCTION_INFO_V1(persona_experiment_bucket);
Datum
persona_experiment_bucket(PG_FUNCTION_ARGS)
{
	char	   *experiment = text_to_cstring(PG_GETARG_TEXT_PP(0));
	text	   *id = PG_GETARG_TEXT_PP(1);

	PG_RETURN_INT32((int32) PersonaExperimentBucket(experiment, VARDATA_ANY(id),
													VARSIZE_ANY_EXHDR(id)));
}

/* The two-sided p-value of a standard normal statistic. */
PG_FUNCTION_INFO_V1(persona_two_sided_p);
Datum
persona_two_sided_p(PG_FUNCTION_ARGS)
{
	float8		z = PG_GETARG_FLOAT8(0);

	PG_RETURN_FLOAT8(erfc(fabs(z) / M_SQRT2));
}

/* ---------------------------------------------------------------------
 * Assignment
 * --------------------------------------------------------------------- */

/*
 * The recorded arm of a profile, read under the latest snapshot: an
 * assignment another session committed while this one waited counts,
 * whatever the isolation level.  Returns false when there is none.
 */
static bool
ReadArm(int64 profile_id, const char *experiment, bool *holdout)
{
	const PersonaCatalog *cat = PersonaGetCatalog();
	Relation	rel = table_open(cat->assignments, AccessShareLock);
	ScanKeyData keys[2];
	Snapshot	latest = RegisterSnapshot(GetLatestSnapshot());
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	/* By the primary key (profile_id, experiment), without a query. */
	ScanKeyInit(&keys[0], PersonaRequireColumn(cat->assignments, "profile_id"),
				BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(profile_id));
	ScanKeyInit(&keys[1], PersonaRequireColumn(cat->assignments, "experiment"),
				BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(experiment));
	keys[1].sk_collation = DEFAULT_COLLATION_OID;
	scan = systable_beginscan(rel, cat->assignments_pkey, true, latest, 2, keys);
	if ((tup = systable_getnext(scan)) != NULL)
	{
		bool		isnull;
		Datum		arm = heap_getattr(tup, PersonaRequireColumn(cat->assignments, "arm"),
									   RelationGetDescr(rel), &isnull);

		*holdout = !isnull && strcmp(TextDatumGetCString(arm), "holdout") == 0;
		found = true;
	}
	systable_endscan(scan);
	UnregisterSnapshot(latest);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * Whether the profile is in the holdout of a running experiment: its
 * recorded arm, or, at its first exposure, the arm of its bucket, recorded
 * now.  Two sessions exposing the same person at once record one row: the
 * second waits on the first's key and reads what it wrote.  SPI must be
 * connected.
 */
bool
PersonaExperimentHoldout(const PersonaExperiment *e, int64 profile_id,
						 const char *hash_id, int hash_id_len)
{
	Oid			types[3] = {INT8OID, TEXTOID, TEXTOID};
	Datum		args[3];
	bool		holdout;
	SPIPlanPtr	plan;

	if (ReadArm(profile_id, e->name, &holdout))
		return holdout;
	holdout = (int) PersonaExperimentBucket(e->name, hash_id, hash_id_len) < e->holdout_buckets;
	plan = PersonaKeptPlan(&record_arm_plan,
						   "INSERT INTO persona.assignments (profile_id, experiment, arm) "
						   "VALUES ($1, $2, $3) ON CONFLICT (profile_id, experiment) DO NOTHING",
						   3, types, 0);
	args[0] = Int64GetDatum(profile_id);
	args[1] = CStringGetTextDatum(e->name);
	args[2] = CStringGetTextDatum(holdout ? "holdout" : "treatment");
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "recording an assignment failed");
	if (SPI_processed == 0 && !ReadArm(profile_id, e->name, &holdout))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access due to a concurrent assignment"),
				 errhint("Retry the transaction.")));
	return holdout;
}

/*
 * The id a profile is hashed by: its user_id; else ``id`` (the id the call
 * named); else, when that is NULL, its least anonymous id (bytewise).
 * SPI must be connected.
 */
static text *
HashId(int64 profile_id, text *id)
{
	Oid			type = INT8OID;
	Datum		arg = Int64GetDatum(profile_id);
	bool		isnull;
	Datum		d;
	SPIPlanPtr	plan = PersonaKeptPlan(&user_id_plan,
									   "SELECT p.user_id FROM persona.profiles AS p "
									   "WHERE p.profile_id OPERATOR(pg_catalog.=) $1",
									   1, &type, 0);

	if (SPI_execute_plan(plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading a profile failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("profile " INT64_FORMAT " does not exist", profile_id)));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		return DatumGetTextPCopy(d);
	if (id != NULL)
		return id;
	plan = PersonaKeptPlan(&anonymous_id_plan,
						   "SELECT pg_catalog.min(i.id) FROM persona.identities AS i "
						   "WHERE i.kind OPERATOR(pg_catalog.=) 'anonymous' "
						   "  AND i.profile_id OPERATOR(pg_catalog.=) $1",
						   1, &type, 0);
	if (SPI_execute_plan(plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading a profile's ids failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		elog(ERROR, "profile " INT64_FORMAT " has no id", profile_id);
	return DatumGetTextPCopy(d);
}

static char *
RequireName(FunctionCallInfo fcinfo, int arg, const char *what)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(arg));
}

/*
 * The arm of a person in an experiment, 'holdout' or 'treatment'.  Asking
 * is an exposure: the arm is recorded if it was not.  For an ended
 * experiment, the recorded arm, or NULL: nobody is assigned any more.
 */
PG_FUNCTION_INFO_V1(persona_arm);
Datum
persona_arm(PG_FUNCTION_ARGS)
{
	char	   *experiment = RequireName(fcinfo, 0, "experiment");
	char	   *id = RequireName(fcinfo, 1, "user_id");
	const PersonaExperiment *e;
	int64		pid;
	bool		holdout;
	bool		found = true;

	if (id[0] == '\0' || strlen(id) > PERSONA_MAX_ID_BYTES)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("user_id must be 1 to %d bytes", PERSONA_MAX_ID_BYTES)));
	e = FindExperiment(experiment);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pid = PersonaDecideProfile(CStringGetTextDatum(id));
	if (e->running)
	{
		text	   *hid = HashId(pid, cstring_to_text(id));

		holdout = PersonaExperimentHoldout(e, pid, VARDATA_ANY(hid), VARSIZE_ANY_EXHDR(hid));
	}
	else
		found = ReadArm(pid, e->name, &holdout);
	SPI_finish();
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(holdout ? "holdout" : "treatment"));
}

/*
 * The hook for what sends an action outside persona_decide (triggers,
 * campaigns): whether a running experiment holds the profile out of the
 * action, its own or a global one.  Every such experiment records the
 * exposure, in either arm.  The caller holds the profile against merges.
 */
PG_FUNCTION_INFO_V1(persona_holdout_suppresses);
Datum
persona_holdout_suppresses(PG_FUNCTION_ARGS)
{
	PersonaExperimentSet *set;
	int64		pid;
	char	   *action;
	text	   *hid = NULL;
	bool		suppressed = false;

	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("profile_id must not be null")));
	pid = PG_GETARG_INT64(0);
	action = RequireName(fcinfo, 1, "action");
	set = PersonaGetExperiments();
	if (set->nrunning == 0)
		PG_RETURN_BOOL(false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	for (int i = 0; i < set->n; i++)
	{
		const PersonaExperiment *e = &set->experiments[i];

		CHECK_FOR_INTERRUPTS();
		if (!e->running || (e->action != NULL && strcmp(e->action, action) != 0))
			continue;
		if (hid == NULL)
			hid = HashId(pid, PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2));
		if (PersonaExperimentHoldout(e, pid, VARDATA_ANY(hid), VARSIZE_ANY_EXHDR(hid)))
			suppressed = true;
	}
	SPI_finish();
	PG_RETURN_BOOL(suppressed);
}
