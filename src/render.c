/*
 * render.c
 *	  Content templates: every string of an action's content with its
 *	  {{...}} placeholders filled, and linked content (persona_link_content,
 *	  persona_render).
 *
 * A placeholder is one of
 *	{{trait}}					a computed trait, else a declared trait;
 *	{{context.a.b}}				a path in the context: the call's
 *								(persona_decide) or the triggering event's
 *								(a trigger's message);
 *	{{event.a.b}}				a path in the triggering event of a trigger's
 *								message ({"event_type", "properties",
 *								"context"});
 *	{{name[key].column}}		column of the row of linked content ``name``
 *								whose key column equals ``key``, itself a
 *								trait, context.path or event.path.
 * A missing value renders as the empty string.
 *
 * Linked content is read when the template is rendered, by one probe of
 * the source's unique index per placeholder (the index, the key type's =
 * and the column's output function looked up once per source and column
 * and kept until the source changes; a source with row-level security for
 * the caller is read through a kept SPI plan instead, so that its policies
 * apply), and each (name, key, column) once per render call.  It is read with the
 * privileges of the role calling persona (GetOuterUserId: the session's
 * current role, whatever SECURITY DEFINER function persona runs in), with
 * its row-level security policies, inside a security-restricted operation
 * whose setting changes are undone.  A source dropped or altered since it
 * was linked is an error at render, naming it.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/nbtree.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/inval.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "campaigns.h"
#include "outbox.h"
#include "persona.h"
#include "profile.h"
#include "render.h"
#include "traits.h"
#include "validate.h"

#define MAX_LINK_NAME_BYTES 63

/* What one render call fills its placeholders from. */
typedef struct RenderInput
{
	Jsonb	   *context;		/* never NULL */
	Jsonb	   *event;			/* NULL: not a trigger's message */
	Jsonb	   *declared;		/* NULL: none */
	Jsonb	   *computed;		/* NULL: none */
	List	   *fetched;		/* LinkedValue: linked rows read by this call */
} RenderInput;

/* One linked value read during a render call. */
typedef struct LinkedValue
{
	char	   *link;
	char	   *column;
	char	   *key;
	char	   *value;			/* NULL: no row */
} LinkedValue;

/* How one column of one source is read by its key. */
typedef struct LinkPlanKey
{
	Oid			relid;
	AttrNumber	key_att;
	AttrNumber	column_att;
} LinkPlanKey;

typedef struct LinkPlan
{
	LinkPlanKey key;
	bool		valid;			/* false once the relation changed */
	Oid			key_type;
	Oid			index;			/* the unique index on the key, or InvalidOid */
	Oid			collation;		/* its collation */
	Oid			eq_proc;		/* the function of the key type's = */
	FmgrInfo	output;			/* the column type's output function */
	char	   *sql;			/* the SPI path's query, in TopMemoryContext */
	SPIPlanPtr	plan;			/* its kept plan */
} LinkPlan;

/* A link of persona.content_links, cached per backend. */
typedef struct LinkDef
{
	char		name[MAX_LINK_NAME_BYTES + 1];	/* hash key */
	Oid			relid;
	char	   *key_column;		/* in TopMemoryContext */
} LinkDef;

static HTAB *link_plans = NULL;
static uint64 link_plans_invalidations = 0;
static HTAB *link_defs = NULL;
static MemoryContext link_defs_cxt = NULL;	/* holds link_defs */
static bool link_defs_valid = false;
static bool link_defs_registered = false;
static Oid	link_defs_relid = InvalidOid;

static char *QualifiedOperator(Oid opr);
static SPIPlanPtr find_link_plan = NULL;
static SPIPlanPtr write_link_plan = NULL;
static SPIPlanPtr message_plan = NULL;

/* ---------------------------------------------------------------------
 * Values
 * --------------------------------------------------------------------- */

/* A JSON value as the text a template shows. */
static void
AppendValue(StringInfo out, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			appendBinaryStringInfo(out, v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			appendStringInfoString(out, DatumGetCString(DirectFunctionCall1(numeric_out,
																			NumericGetDatum(v->val.numeric))));
			break;
		case jbvBool:
			appendStringInfoString(out, v->val.boolean ? "true" : "false");
			break;
		case jbvBinary:
			appendStringInfoString(out, JsonbToCString(NULL, v->val.binary.data, v->val.binary.len));
			break;
		default:
			break;				/* null renders empty */
	}
}

static bool
LookupKey(JsonbContainer *obj, const char *key, int len, JsonbValue *out)
{
	JsonbValue	k;
	JsonbValue *v;

	if (obj == NULL || !JsonContainerIsObject(obj))
		return false;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = len;
	v = findJsonbValueFromContainer(obj, JB_FOBJECT, &k);
	if (v == NULL)
		return false;
	*out = *v;
	return true;
}

/* The value at path "a.b.c" (len bytes) in a JSON object; false when missing. */
static bool
LookupPath(Jsonb *root, const char *p, int len, JsonbValue *v)
{
	JsonbContainer *at = root ? &root->root : NULL;
	const char *end = p + len;

	for (;;)
	{
		const char *dot = memchr(p, '.', end - p);
		int			part = dot ? dot - p : end - p;

		if (!LookupKey(at, p, part, v))
			return false;
		if (dot == NULL)
			return true;
		if (v->type != jbvBinary)
			return false;
		at = v->val.binary.data;
		p = dot + 1;
	}
}

/*
 * The value a reference names: context.a.b, event.a.b, a computed trait, a
 * declared trait.  False when there is none.
 */
static bool
ResolveReference(const RenderInput *in, const char *name, int len, JsonbValue *v)
{
	if (len > 8 && strncmp(name, "context.", 8) == 0)
		return LookupPath(in->context, name + 8, len - 8, v);
	if (len > 6 && strncmp(name, "event.", 6) == 0)
		return LookupPath(in->event, name + 6, len - 6, v);
	return LookupKey(in->computed ? &in->computed->root : NULL, name, len, v) ||
		LookupKey(in->declared ? &in->declared->root : NULL, name, len, v);
}

/* Trims spaces off both ends of [*s, *s + *len). */
static inline void
Trim(const char **s, int *len)
{
	while (*len > 0 && (*s)[0] == ' ')
		(*s)++, (*len)--;
	while (*len > 0 && (*s)[*len - 1] == ' ')
		(*len)--;
}

/* ---------------------------------------------------------------------
 * Linked content
 * --------------------------------------------------------------------- */

/*
 * A valid btree unique index of the relation that has exactly the column
 * as its key, with no predicate or expression, in an operator family of
 * the equality ``eq`` (so that a lookup by = can probe it); InvalidOid
 * when there is none.  Its collation in ``collation``.
 */
static Oid
UniqueIndexOn(Relation rel, AttrNumber att, Oid eq, Oid *collation)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			found = InvalidOid;

	foreach(lc, indexes)
	{
		Relation	irel = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index ix = irel->rd_index;

		if (!OidIsValid(found) && ix->indisunique && ix->indisvalid && ix->indnkeyatts == 1 &&
			ix->indkey.values[0] == att && irel->rd_rel->relam == BTREE_AM_OID &&
			heap_attisnull(irel->rd_indextuple, Anum_pg_index_indpred, NULL) &&
			heap_attisnull(irel->rd_indextuple, Anum_pg_index_indexprs, NULL) &&
			OidIsValid(eq) && op_in_opfamily(eq, irel->rd_opfamily[0]))
		{
			found = RelationGetRelid(irel);
			*collation = irel->rd_indcollation[0];
		}
		index_close(irel, AccessShareLock);
	}
	list_free(indexes);
	return found;
}

/* A link name's syntax: 1 to 63 letters, digits and underscores, not starting with a digit. */
static inline bool
LinkNameValid(const char *name, int len)
{
	if (len < 1 || len > MAX_LINK_NAME_BYTES || (name[0] >= '0' && name[0] <= '9'))
		return false;
	for (int i = 0; i < len; i++)
	{
		char		c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') || c == '_'))
			return false;
	}
	return true;
}

/*
 * Splits "name[key].column" into its parts (trimmed); false when the
 * placeholder does not have that shape.
 */
static bool
ParseLinked(const char *s, int len, char **link, const char **key, int *keylen,
			char **column)
{
	const char *open = memchr(s, '[', len);
	const char *close;
	const char *col;
	int			namelen,
				collen;

	if (open == NULL)
		return false;
	close = memchr(open, ']', s + len - open);
	if (close == NULL || close + 1 >= s + len || close[1] != '.')
		return false;
	namelen = open - s;
	Trim(&s, &namelen);
	if (!LinkNameValid(s, namelen))
		return false;
	*key = open + 1;
	*keylen = close - open - 1;
	Trim(key, keylen);
	col = close + 2;
	collen = s + len - col;
	Trim(&col, &collen);
	if (*keylen == 0 || collen == 0)
		return false;
	*link = pnstrdup(s, namelen);
	*column = pnstrdup(col, collen);
	return true;
}

/* A key as text, or NULL when it cannot find a row (null, an object, an array). */
static char *
KeyText(JsonbValue *v)
{
	StringInfoData s;

	if (v->type != jbvString && v->type != jbvNumeric && v->type != jbvBool)
		return NULL;
	initStringInfo(&s);
	AppendValue(&s, v);
	return s.data;
}

/*
 * A change to persona.content_links (its content_links_changed trigger
 * sends a relcache invalidation) empties the cache of links at the next
 * lookup.
 */
static void
LinkDefsCallback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	LinkPlan   *entry;

	if (!OidIsValid(relid) || relid == link_defs_relid)
		link_defs_valid = false;
	if (link_plans == NULL)
		return;
	link_plans_invalidations++;
	hash_seq_init(&status, link_plans);
	while ((entry = hash_seq_search(&status)) != NULL)
		if (!OidIsValid(relid) || entry->key.relid == relid)
			entry->valid = false;
}

/*
 * The source of a link: its table and key column, from the backend's cache
 * of persona.content_links, read as persona's owner under the latest
 * snapshot (a definition, as the definitions cache reads them: a REPEATABLE
 * READ transaction must not cache one that is no longer current).  42704
 * when no such link exists.
 */
static void
FindLink(const char *link, Oid *relid, char **key_column)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			type = TEXTOID;
	Datum		arg = CStringGetTextDatum(link);
	bool		isnull;
	bool		found;
	SPIPlanPtr	plan;
	Snapshot	latest;
	int			rc;
	LinkDef    *def;
	char		key[MAX_LINK_NAME_BYTES + 1];

	if (!link_defs_registered)
	{
		CacheRegisterRelcacheCallback(LinkDefsCallback, (Datum) 0);
		link_defs_registered = true;
	}
	if (!link_defs_valid || link_defs == NULL)
	{
		HASHCTL		ctl;

		if (link_defs_cxt == NULL)
			link_defs_cxt = AllocSetContextCreate(TopMemoryContext, "persona linked content",
												  ALLOCSET_SMALL_SIZES);
		MemoryContextReset(link_defs_cxt);
		link_defs = NULL;
		link_defs_relid = get_relname_relid("content_links", PersonaGetCatalog()->schema);
		if (!OidIsValid(link_defs_relid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("linked content \"%s\" does not exist", link),
					 errhint("Run ALTER EXTENSION persona UPDATE, then link a table with persona_link_content.")));
		ctl.keysize = sizeof(key);
		ctl.entrysize = sizeof(LinkDef);
		ctl.hcxt = link_defs_cxt;
		link_defs = hash_create("persona linked content", 16, &ctl,
								HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		link_defs_valid = true;
	}
	memset(key, 0, sizeof(key));
	strlcpy(key, link, sizeof(key));
	def = hash_search(link_defs, key, HASH_FIND, &found);
	if (found)
	{
		*relid = def->relid;
		*key_column = def->key_column;
		return;
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = PersonaKeptPlan(&find_link_plan,
						   "SELECT l.relation, l.key_column FROM persona.content_links AS l "
						   "WHERE l.name OPERATOR(pg_catalog.=) $1", 1, &type, 0);
	latest = RegisterSnapshot(GetLatestSnapshot());
	rc = SPI_execute_snapshot(plan, &arg, NULL, latest, InvalidSnapshot, true, false, 1);
	UnregisterSnapshot(latest);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading persona.content_links failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("linked content \"%s\" does not exist", link),
				 errhint("Link a table under that name with persona_link_content(name, relation, key_column).")));
	*relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*key_column = MemoryContextStrdup(caller,
									  TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
																		SPI_tuptable->tupdesc, 2, &isnull)));
	SPI_finish();

	/* An invalidation while reading leaves the next lookup to start over. */
	if (link_defs_valid)
	{
		def = hash_search(link_defs, key, HASH_ENTER, &found);
		def->relid = *relid;
		def->key_column = MemoryContextStrdup(link_defs_cxt, *key_column);
	}
}

/* A column of a linked source by name; 42703 when it is gone. */
static AttrNumber
LinkedColumn(const char *link, Oid relid, const char *column, const char *what)
{
	AttrNumber	att = get_attnum(relid, column);

	if (att <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("%s \"%s\" of linked content \"%s\" does not exist", what, column, link),
				 errdetail("Relation %s has no column \"%s\".",
						   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													  get_rel_name(relid)), column),
				 strcmp(what, "key column") == 0 ?
				 errhint("The key column was dropped or renamed since the link was made: link the name again with persona_link_content.") : 0));
	return att;
}

/*
 * How ``column_att`` of the source is read by its key column: the unique
 * index to probe and the functions to use, looked up again after the
 * relation changed (a relcache invalidation, LinkDefsCallback).
 */
static LinkPlan *
LinkPlanFor(Oid relid, AttrNumber key_att, AttrNumber column_att, Oid key_type)
{
	LinkPlanKey key;
	LinkPlan   *entry;
	bool		found;
	TypeCacheEntry *tc;
	Relation	rel;
	Oid			output;
	bool		isvarlena;
	Oid			index;
	Oid			collation = InvalidOid;
	uint64		seen;

	if (link_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(LinkPlanKey);
		ctl.entrysize = sizeof(LinkPlan);
		link_plans = hash_create("persona linked content plans", 16, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	memset(&key, 0, sizeof(key));
	key.relid = relid;
	key.key_att = key_att;
	key.column_att = column_att;
	entry = hash_search(link_plans, &key, HASH_ENTER, &found);
	if (!found)
	{
		entry->valid = false;
		entry->sql = NULL;
		entry->plan = NULL;
	}
	if (entry->valid && entry->key_type == key_type)
		return entry;

	/*
	 * Looked up into locals, so that an error leaves the entry invalid; an
	 * invalidation while looking up leaves the next call to start over.
	 */
	entry->valid = false;
	seen = link_plans_invalidations;
	tc = lookup_type_cache(key_type, TYPECACHE_EQ_OPR);
	if (!OidIsValid(tc->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("the key column's type %s has no equality operator", format_type_be(key_type))));
	rel = table_open(relid, AccessShareLock);
	index = UniqueIndexOn(rel, key_att, tc->eq_opr, &collation);
	table_close(rel, NoLock);
	getTypeOutputInfo(get_atttype(relid, column_att), &output, &isvarlena);
	fmgr_info_cxt(output, &entry->output, TopMemoryContext);
	entry->key_type = key_type;
	entry->eq_proc = get_opcode(tc->eq_opr);
	entry->index = index;
	entry->collation = collation;
	entry->valid = seen == link_plans_invalidations;
	return entry;
}

/*
 * The SPI path (a source with row-level security for the caller, or that
 * lost its unique index): the kept plan of the query reading the column by
 * the key, prepared as the caller, again when the source's names changed.
 */
static SPIPlanPtr
LinkQueryFor(LinkPlan *lp)
{
	Oid			relid = lp->key.relid;
	char	   *sql;
	SPIPlanPtr	plan;

	sql = psprintf("SELECT t.%s FROM %s AS t WHERE t.%s OPERATOR(%s) $1 LIMIT 2",
				   quote_identifier(get_attname(relid, lp->key.column_att, false)),
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											  get_rel_name(relid)),
				   quote_identifier(get_attname(relid, lp->key.key_att, false)),
				   QualifiedOperator(lookup_type_cache(lp->key_type, TYPECACHE_EQ_OPR)->eq_opr));
	if (lp->plan != NULL && strcmp(lp->sql, sql) == 0)
		return lp->plan;
	plan = SPI_prepare(sql, 1, &lp->key_type);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	if (lp->plan != NULL)
	{
		SPI_freeplan(lp->plan);
		pfree(lp->sql);
	}
	lp->sql = MemoryContextStrdup(TopMemoryContext, sql);
	lp->plan = plan;
	return plan;
}

/*
 * The direct path: one probe of the unique index under the statement's
 * snapshot; the column's text, or NULL when no row has the key.
 */
static char *
ScanLinked(LinkPlan *lp, Datum key, MemoryContext outer)
{
	Relation	rel = table_open(lp->key.relid, AccessShareLock);
	Relation	irel = index_open(lp->index, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(ActiveSnapshotSet() ? GetActiveSnapshot() :
											GetTransactionSnapshot());
	IndexScanDesc scan = index_beginscan(rel, irel, snapshot, 1, 0);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	ScanKeyData skey;
	char	   *value = NULL;

	ScanKeyEntryInitialize(&skey, 0, 1, BTEqualStrategyNumber, InvalidOid, lp->collation,
						   lp->eq_proc, key);
	index_rescan(scan, &skey, 1, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		d = slot_getattr(slot, lp->key.column_att, &isnull);

		value = MemoryContextStrdup(outer, isnull ? "" : OutputFunctionCall(&lp->output, d));
	}
	ExecDropSingleTupleTableSlot(slot);
	index_endscan(scan);
	UnregisterSnapshot(snapshot);
	index_close(irel, NoLock);
	table_close(rel, NoLock);
	return value;
}

/* The operator's schema-qualified name, as OPERATOR() takes it. */
static char *
QualifiedOperator(Oid opr)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opr));
	Form_pg_operator form;
	char	   *result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opr);
	form = (Form_pg_operator) GETSTRUCT(tup);
	result = psprintf("%s.%s", quote_identifier(get_namespace_name(form->oprnamespace)),
					  NameStr(form->oprname));
	ReleaseSysCache(tup);
	return result;
}

/* What ConvertKey converts. */
typedef struct KeyInput
{
	Oid			type;
	const char *text;
	Datum		value;
} KeyInput;

static void
ConvertKey(void *arg)
{
	KeyInput   *k = arg;
	Oid			infunc;
	Oid			ioparam;

	getTypeInputInfo(k->type, &infunc, &ioparam);
	k->value = OidInputFunctionCall(infunc, (char *) k->text, ioparam, -1);
}

/*
 * Reads one column of the row of a linked source whose key is ``key``, as
 * the role calling persona; NULL when there is no such row.  The result is
 * allocated in the caller's memory context.
 */
static char *
FetchLinked(const char *link, const char *column, const char *key)
{
	MemoryContext outer = CurrentMemoryContext;
	Oid			relid;
	char	   *key_column;
	char	   *relname;
	Oid			nsp;
	AttrNumber	key_att;
	AttrNumber	column_att;
	KeyInput	k;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	AclResult	aclresult;
	LinkPlan   *lp;
	Oid			user;
	char	   *value = NULL;
	bool		convertible = true;

	FindLink(link, &relid, &key_column);

	/*
	 * Locked (until the transaction ends, as a query would) before anything
	 * about it is looked up: no DDL changes it from here on.
	 */
	LockRelationOid(relid, AccessShareLock);
	relname = get_rel_name(relid);
	if (relname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the source of linked content \"%s\" no longer exists", link),
				 errdetail("Its table was dropped."),
				 errhint("Link the name again with persona_link_content.")));
	nsp = get_rel_namespace(relid);
	key_att = LinkedColumn(link, relid, key_column, "key column");
	column_att = LinkedColumn(link, relid, column, "column");
	k.type = get_atttype(relid, key_att);
	k.text = key;

	/* As the caller, in a security-restricted operation. */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(GetOuterUserId(), save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	user = GetUserId();
	aclresult = pg_namespace_aclcheck(nsp, user, ACL_USAGE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_SCHEMA, get_namespace_name(nsp));
	if (pg_class_aclcheck(relid, user, ACL_SELECT) != ACLCHECK_OK &&
		(pg_attribute_aclcheck(relid, key_att, user, ACL_SELECT) != ACLCHECK_OK ||
		 pg_attribute_aclcheck(relid, column_att, user, ACL_SELECT) != ACLCHECK_OK))
		aclcheck_error(ACLCHECK_NO_PRIV, get_relkind_objtype(get_rel_relkind(relid)), relname);
	lp = LinkPlanFor(relid, key_att, column_att, k.type);

	/*
	 * A key the key column's type cannot hold (a word for an integer key)
	 * finds no row; a text key always converts.
	 */
	if (k.type == TEXTOID || k.type == VARCHAROID || k.type == BPCHAROID || k.type == NAMEOID)
		ConvertKey(&k);
	else
	{
		ErrorData  *error;

		convertible = PersonaTryEvaluation(ConvertKey, &k, true, &error);
	}
	if (convertible && OidIsValid(lp->index) &&
		check_enable_rls(relid, InvalidOid, false) != RLS_ENABLED)
		value = ScanLinked(lp, k.value, outer);
	else if (convertible)
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_plan(LinkQueryFor(lp), &k.value, NULL, true, 2) != SPI_OK_SELECT)
			elog(ERROR, "reading linked content \"%s\" failed", link);
		if (SPI_processed > 1)
			ereport(ERROR,
					(errcode(ERRCODE_CARDINALITY_VIOLATION),
					 errmsg("linked content \"%s\" has more than one row with %s = '%s'", link,
							key_column, key),
					 errhint("The key column must be unique: it lost its unique index since the link was made.")));
		if (SPI_processed == 1)
		{
			char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

			value = v ? MemoryContextStrdup(outer, v) : MemoryContextStrdup(outer, "");
		}
		SPI_finish();
	}
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	return value;
}

/* The error context of a linked placeholder. */
static void
LinkedErrorContext(void *arg)
{
	errcontext("rendering placeholder {{%s}}", (const char *) arg);
}

/* A {{name[key].column}} placeholder; false when it does not have that shape. */
static bool
AppendLinked(StringInfo out, const char *s, int len, RenderInput *in)
{
	char	   *link;
	char	   *column;
	const char *ref;
	int			reflen;
	JsonbValue	v;
	char	   *key;
	ListCell   *lc;
	LinkedValue *lv;
	ErrorContextCallback callback;

	if (!ParseLinked(s, len, &link, &ref, &reflen, &column))
		return false;
	if (!ResolveReference(in, ref, reflen, &v) || (key = KeyText(&v)) == NULL)
		return true;			/* no key: no row */
	foreach(lc, in->fetched)
	{
		lv = lfirst(lc);
		if (strcmp(lv->link, link) == 0 && strcmp(lv->column, column) == 0 &&
			strcmp(lv->key, key) == 0)
		{
			if (lv->value)
				appendStringInfoString(out, lv->value);
			return true;
		}
	}
	callback.callback = LinkedErrorContext;
	callback.arg = pnstrdup(s, len);
	callback.previous = error_context_stack;
	error_context_stack = &callback;
	lv = palloc(sizeof(LinkedValue));
	lv->link = link;
	lv->column = column;
	lv->key = key;
	lv->value = FetchLinked(link, column, key);
	error_context_stack = callback.previous;
	in->fetched = lappend(in->fetched, lv);
	if (lv->value)
		appendStringInfoString(out, lv->value);
	return true;
}

/* ---------------------------------------------------------------------
 * Rendering
 * --------------------------------------------------------------------- */

/* The value of one placeholder, appended. */
static void
AppendPlaceholder(StringInfo out, const char *name, int len, RenderInput *in)
{
	JsonbValue	v;

	Trim(&name, &len);
	if (memchr(name, '[', len) != NULL && AppendLinked(out, name, len, in))
		return;
	if (ResolveReference(in, name, len, &v))
		AppendValue(out, &v);
}

/* A string with its {{...}} placeholders filled. */
static void
RenderString(JsonbValue *v, RenderInput *in)
{
	const char *s = v->val.string.val;
	int			len = v->val.string.len;
	StringInfoData out;
	int			i = 0;

	if (len < 4 || memchr(s, '{', len) == NULL)
		return;
	initStringInfo(&out);
	while (i < len)
	{
		if (i + 1 < len && s[i] == '{' && s[i + 1] == '{')
		{
			int			j = i + 2;

			while (j + 1 < len && !(s[j] == '}' && s[j + 1] == '}'))
				j++;
			if (j + 1 < len)
			{
				AppendPlaceholder(&out, s + i + 2, j - i - 2, in);
				i = j + 2;
				continue;
			}
		}
		appendStringInfoChar(&out, s[i++]);
	}
	v->val.string.val = out.data;
	v->val.string.len = out.len;
}

static Jsonb *
RenderContent(Jsonb *content, RenderInput *in)
{
	JsonbIterator *it = JsonbIteratorInit(&content->root);
	JsonbParseState *state = NULL;
	JsonbValue	v;
	JsonbIteratorToken tok;
	JsonbValue *res = NULL;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if ((tok == WJB_VALUE || tok == WJB_ELEM) && v.type == jbvString)
			RenderString(&v, in);
		res = pushJsonbValue(&state, tok, tok < WJB_BEGIN_ARRAY ? &v : NULL);
	}
	return JsonbValueToJsonb(res);
}

/*
 * {}, built once per backend: a claim renders every message with it, and
 * parsing "{}" each time was 5% of a campaign claim. Read only.
 */
static Jsonb *
EmptyObject(void)
{
	static Jsonb *empty = NULL;

	if (empty == NULL)
	{
		JsonbParseState *state = NULL;
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
		empty = JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
		MemoryContextSwitchTo(old);
	}
	return empty;
}

/*
 * The content with every string's placeholders filled; always valid JSON.
 * persona_decide renders with the call's context.
 */
Jsonb *
PersonaRender(Jsonb *content, Jsonb *context, Jsonb *declared, Jsonb *computed)
{
	RenderInput in = {context ? context : EmptyObject(), NULL, declared, computed, NIL};

	return RenderContent(content, &in);
}

/*
 * A message's content rendered: a trigger's message with its triggering
 * event (as event, and its context as context), any other with none.
 */
Jsonb *
PersonaRenderMessage(Jsonb *content, Jsonb *event, Jsonb *declared, Jsonb *computed)
{
	RenderInput in = {NULL, event, declared, computed, NIL};
	JsonbValue	v;

	if (event != NULL && LookupKey(&event->root, "context", 7, &v) && v.type == jbvBinary &&
		JsonContainerIsObject(v.val.binary.data))
		in.context = JsonbValueToJsonb(&v);
	else
		in.context = EmptyObject();
	return RenderContent(content, &in);
}

/* ---------------------------------------------------------------------
 * The API
 * --------------------------------------------------------------------- */


/* Makes a table a source of linked content, under a name templates use. */
PG_FUNCTION_INFO_V1(persona_link_content);
Datum
persona_link_content(PG_FUNCTION_ARGS)
{
	text	   *name;
	Oid			relid;
	char	   *key_column;
	char	   *relname;
	Relation	rel;
	AttrNumber	att;
	Oid			collation;
	Oid			caller = GetOuterUserId();
	Oid			types[3] = {TEXTOID, REGCLASSOID, TEXTOID};
	Datum		args[3];
	SPIPlanPtr	plan;

	PersonaCheckNotNull(PG_ARGISNULL(0), "name");
	PersonaCheckNotNull(PG_ARGISNULL(1), "relation");
	PersonaCheckNotNull(PG_ARGISNULL(2), "key_column");
	name = PG_GETARG_TEXT_PP(0);
	relid = PG_GETARG_OID(1);
	key_column = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (!LinkNameValid(VARDATA_ANY(name), VARSIZE_ANY_EXHDR(name)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid linked content name \"%s\"", text_to_cstring(name)),
				 errhint("A name is 1 to %d letters, digits and underscores, not starting with a digit, such as products.",
						 MAX_LINK_NAME_BYTES)));
	relname = get_rel_name(relid);
	if (relname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	rel = table_open(relid, AccessShareLock);
	relname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)), relname);
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE &&
		rel->rd_rel->relkind != RELKIND_MATVIEW)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table or materialized view", relname),
				 errdetail("Linked content is read by a unique key, which only tables and materialized views can have.")));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("linked content cannot be a temporary table"),
				 errdetail("A link outlives the session that made the table.")));
	att = get_attnum(relid, key_column);
	if (att <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation %s does not exist", key_column, relname)));
	if (pg_class_aclcheck(relid, caller, ACL_SELECT) != ACLCHECK_OK &&
		pg_attribute_aclcheck(relid, att, caller, ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", relname),
				 errdetail("Linking a table takes SELECT on its key column.")));
	if (!OidIsValid(UniqueIndexOn(rel, att, lookup_type_cache(get_atttype(relid, att),
															  TYPECACHE_EQ_OPR)->eq_opr,
								  &collation)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_COLUMN_REFERENCE),
				 errmsg("column \"%s\" of relation %s is not a unique key", key_column, relname),
				 errdetail("No valid unique index has that column alone as its key, without a predicate."),
				 errhint("Linked content is looked up by a unique key: add a primary key or a UNIQUE constraint on that column.")));
	table_close(rel, AccessShareLock);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = PersonaKeptPlan(&write_link_plan,
						   "INSERT INTO persona.content_links AS l (name, relation, key_column) "
						   "VALUES ($1, $2, $3) "
						   "ON CONFLICT (name) DO UPDATE SET relation = excluded.relation, "
						   "  key_column = excluded.key_column, linked_at = pg_catalog.now()",
						   3, types, 0);
	args[0] = PointerGetDatum(name);
	args[1] = ObjectIdGetDatum(relid);
	args[2] = CStringGetTextDatum(key_column);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "writing persona.content_links failed");
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * A message's content rendered now: its action's current content, the
 * person's traits as they are now, linked content read now.  A campaign
 * message without a row in persona.messages is found in its chunk.
 */
PG_FUNCTION_INFO_V1(persona_render);
Datum
persona_render(PG_FUNCTION_ARGS)
{
	MemoryContext outer = CurrentMemoryContext;
	int64		message_id;
	Oid			type = INT8OID;
	Datum		arg;
	bool		isnull;
	int64		profile_id;
	int32		action_id;
	Jsonb	   *event = NULL;
	Jsonb	   *content;
	Jsonb	   *declared;
	Jsonb	   *rendered;
	Jsonb	   *result;
	ProfileReader r;
	Datum		d;
	SPIPlanPtr	plan;

	PersonaCheckNotNull(PG_ARGISNULL(0), "message_id");
	message_id = PG_GETARG_INT64(0);
	arg = Int64GetDatum(message_id);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = PersonaKeptPlan(&message_plan,
						   "SELECT m.profile_id, m.action_id, m.event FROM persona.messages AS m "
						   "WHERE m.message_id OPERATOR(pg_catalog.=) $1", 1, &type, 0);
	if (SPI_execute_plan(plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading the message failed");
	if (SPI_processed > 0)
	{
		profile_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		action_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		if (!isnull)
			event = DatumGetJsonbPCopy(d);
	}
	else if (!PersonaCampaignMessage(message_id, &profile_id, &action_id))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("message " INT64_FORMAT " does not exist", message_id)));
	content = PersonaActionContent(action_id);
	if (content == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the action of message " INT64_FORMAT " no longer exists", message_id),
				 errdetail("It was dropped after the message was queued; persona.messages.content keeps what was claimed.")));

	PersonaProfileReaderBegin(&r, false);
	if (!PersonaProfileFetch(&r, profile_id))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the person of message " INT64_FORMAT " no longer exists", message_id)));
	d = PersonaProfileColumn(&r, "traits", &isnull);
	declared = isnull ? NULL : DatumGetJsonbPCopy(d);
	d = PersonaProfileColumn(&r, "computed_state", &isnull);
	rendered = PersonaRenderMessage(content, event, declared,
									PersonaTraitsJson(isnull ? NULL : DatumGetByteaPP(d)));
	PersonaProfileReaderEnd(&r);
	result = (Jsonb *) MemoryContextAlloc(outer, VARSIZE(rendered));
	memcpy(result, rendered, VARSIZE(rendered));
	SPI_finish();
	PG_RETURN_JSONB_P(result);
}
