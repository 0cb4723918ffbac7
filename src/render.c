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
 * Linked content is read when the template is rendered, by one index probe
 * per placeholder (a plan prepared once per source and column and kept),
 * and each (name, key, column) once per render call.  It is read with the
 * privileges of the role calling persona (GetOuterUserId: the session's
 * current role, whatever SECURITY DEFINER function persona runs in), with
 * its row-level security policies, inside a security-restricted operation
 * whose setting changes are undone.  A source dropped or altered since it
 * was linked is an error at render, naming it.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

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

/* A kept plan reading one column of one source by its key. */
typedef struct LinkPlanKey
{
	Oid			relid;
	AttrNumber	key_att;
	AttrNumber	column_att;
} LinkPlanKey;

typedef struct LinkPlan
{
	LinkPlanKey key;
	char	   *sql;			/* in TopMemoryContext */
	Oid			key_type;
	SPIPlanPtr	plan;
} LinkPlan;

static HTAB *link_plans = NULL;

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
 * The source of a link: its table and key column, as persona's owner reads
 * persona.content_links.  42704 when no such link exists.  Runs inside an
 * SPI connection.
 */
static void
FindLink(const char *link, Oid *relid, char **key_column)
{
	Oid			type = TEXTOID;
	Datum		arg = CStringGetTextDatum(link);
	bool		isnull;
	SPIPlanPtr	plan;

	if (!OidIsValid(get_relname_relid("content_links", PersonaGetCatalog()->schema)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("linked content \"%s\" does not exist", link),
				 errhint("Run ALTER EXTENSION persona UPDATE, then link a table with persona_link_content.")));
	plan = PersonaKeptPlan(&find_link_plan,
						   "SELECT l.relation, l.key_column FROM persona.content_links AS l "
						   "WHERE l.name OPERATOR(pg_catalog.=) $1", 1, &type, 0);
	if (SPI_execute_plan(plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading persona.content_links failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("linked content \"%s\" does not exist", link),
				 errhint("Link a table under that name with persona_link_content(name, relation, key_column).")));
	*relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*key_column = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
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
 * The kept plan that reads ``column_att`` of the source by its key column,
 * prepared (as the current user) when there is none or when the source's
 * names or key type changed since.
 */
static SPIPlanPtr
LinkPlanFor(Oid relid, AttrNumber key_att, AttrNumber column_att, Oid key_type)
{
	LinkPlanKey key;
	LinkPlan   *entry;
	bool		found;
	TypeCacheEntry *tc = lookup_type_cache(key_type, TYPECACHE_EQ_OPR);
	char	   *sql;
	SPIPlanPtr	plan;

	if (!OidIsValid(tc->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("the key column's type %s has no equality operator", format_type_be(key_type))));
	sql = psprintf("SELECT t.%s FROM %s AS t WHERE t.%s OPERATOR(%s) $1 LIMIT 2",
				   quote_identifier(get_attname(relid, column_att, false)),
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											  get_rel_name(relid)),
				   quote_identifier(get_attname(relid, key_att, false)),
				   QualifiedOperator(tc->eq_opr));
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
	entry = hash_search(link_plans, &key, HASH_FIND, &found);
	if (found && entry->key_type == key_type && strcmp(entry->sql, sql) == 0)
		return entry->plan;

	plan = SPI_prepare(sql, 1, &key_type);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	if (found)
	{
		SPI_freeplan(entry->plan);
		pfree(entry->sql);
	}
	entry = hash_search(link_plans, &key, HASH_ENTER, &found);
	entry->sql = MemoryContextStrdup(TopMemoryContext, sql);
	entry->key_type = key_type;
	entry->plan = plan;
	return entry->plan;
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
	SPIPlanPtr	plan;
	char	   *value = NULL;
	bool		convertible = true;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	FindLink(link, &relid, &key_column);
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
	aclresult = pg_namespace_aclcheck(nsp, GetUserId(), ACL_USAGE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_SCHEMA, get_namespace_name(nsp));
	plan = LinkPlanFor(relid, key_att, column_att, k.type);

	/*
	 * A key the key column's type cannot hold (a word for an integer key)
	 * finds no row; a text key always converts.
	 */
	if (k.type == TEXTOID || k.type == VARCHAROID || k.type == BPCHAROID || k.type == NAMEOID)
		ConvertKey(&k);
	else
	{
		ErrorData  *error;

		convertible = PersonaTryEvaluation(ConvertKey, &k, &error);
	}
	if (convertible)
	{
		if (SPI_execute_plan(plan, &k.value, NULL, true, 2) != SPI_OK_SELECT)
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
	}
	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	SPI_finish();
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

static Jsonb *
EmptyObject(void)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
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

/*
 * Whether a valid unique index of the relation has exactly the column as
 * its key, with no predicate or expression, in an operator family of the
 * column type's equality (so that the lookup's = can use it).
 */
static bool
HasUniqueIndexOn(Relation rel, AttrNumber att, Oid type)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			eq = lookup_type_cache(type, TYPECACHE_EQ_OPR)->eq_opr;
	bool		found = false;

	foreach(lc, indexes)
	{
		Relation	irel = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index ix = irel->rd_index;

		if (ix->indisunique && ix->indisvalid && ix->indnkeyatts == 1 &&
			ix->indkey.values[0] == att &&
			heap_attisnull(irel->rd_indextuple, Anum_pg_index_indpred, NULL) &&
			heap_attisnull(irel->rd_indextuple, Anum_pg_index_indexprs, NULL) &&
			OidIsValid(eq) && op_in_opfamily(eq, irel->rd_opfamily[0]))
			found = true;
		index_close(irel, AccessShareLock);
	}
	list_free(indexes);
	return found;
}

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
	if (!HasUniqueIndexOn(rel, att, get_atttype(relid, att)))
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
 * person's traits as they are now, linked content read now.
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
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("message " INT64_FORMAT " does not exist", message_id)));
	profile_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	action_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	if (!isnull)
		event = DatumGetJsonbPCopy(d);
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
