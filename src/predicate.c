/*
 * predicate.c
 *	  Checking and compiling the expressions users store: segment predicates
 *	  and action conditions.
 *
 * A stored expression runs later as the extension's owner, a superuser,
 * inside ingest, decisions and the tick.  So nothing user-defined may run
 * while it is parsed or evaluated, and that is proved in three steps:
 *
 *	1. Before parse analysis (which already runs code: a literal is converted
 *	   by its type's input function, and a composite or array literal runs
 *	   the CHECK constraints of any domain inside it), the raw tree may name
 *	   types, functions and operators of pg_catalog only: a type is looked up
 *	   by name and refused unless it is a built-in base, range or enum type;
 *	   a schema-qualified function or operator must be qualified with
 *	   pg_catalog.  Unqualified functions and operators resolve in the pinned
 *	   search_path (pg_catalog, pg_temp), where PostgreSQL never searches
 *	   pg_temp for them.  Subqueries and parameters are refused here too.
 *	2. After analysis, the tree may hold only the expression nodes of an
 *	   allow-list (no domain coercion, no subquery, no sequence, no XML,
 *	   ...), every node's type must be a built-in type as in step 1, and
 *	   every function an operator, a cast or a call runs must be a
 *	   pg_catalog function that is immutable, or one of the clock and
 *	   date/time functions.  Those read nothing beyond their arguments and
 *	   the clock.
 *	3. What is stored and run is the expression deparsed from the checked
 *	   tree, never the text given.  A trigger on persona.segments and
 *	   persona.actions compiles it again on every write, so a row written
 *	   by hand (the admin role may write those tables) can never hold
 *	   unchecked SQL.
 *
 * Every name the deparsed expression holds is therefore a pg_catalog object
 * or a column of the source view.  pg_catalog is first in the search_path
 * that every evaluation pins (pg_catalog, pg_temp), so those names cannot
 * mean anything else in another session.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_language.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "parser/parse_expr.h"
#include "parser/parse_func.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parse_type.h"
#include "parser/parser.h"
#include "rewrite/rewriteHandler.h"
#include "rewrite/rewriteManip.h"
#include "executor/executor.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "nodes/params.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"

#include "models.h"
#include "persona.h"

#define PREDICATE_PREFIX "SELECT "

/* ---------------------------------------------------------------------
 * The pinned search_path
 * --------------------------------------------------------------------- */

/*
 * Sets search_path to pg_catalog, pg_temp until PersonaUnpinSearchPath:
 * what every SECURITY DEFINER function of persona runs with, for the C
 * paths that parse or plan stored expressions.
 */
int
PersonaPinSearchPath(void)
{
	int			level = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
	return level;
}

void
PersonaUnpinSearchPath(int level)
{
	AtEOXact_GUC(true, level);
}

/* ---------------------------------------------------------------------
 * Errors
 * --------------------------------------------------------------------- */

/* Points errors at the predicate the user wrote, not at our wrapper. */
static void
PredicateErrorCallback(void *arg)
{
	const char *predicate = (const char *) arg;
	int			pos = geterrposition();

	if (pos > (int) strlen(PREDICATE_PREFIX))
	{
		errposition(0);
		internalerrposition(pos - (int) strlen(PREDICATE_PREFIX));
		internalerrquery(predicate);
	}
	errcontext("predicate \"%s\"", predicate);
}

static void
RefusePredicate(const char *what, const char *hint, int location)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("predicates cannot contain %s", what),
			 hint ? errhint("%s", hint) : 0,
			 location >= 0 ? errposition(location + 1) : 0));
}

/* ---------------------------------------------------------------------
 * Types, functions and operators
 * --------------------------------------------------------------------- */

/*
 * Whether values of a type may appear in a predicate: a built-in
 * (pg_catalog) base, range, multirange or enum type, or record and unknown
 * (a ROW(...) and an untyped literal).  Domains (their CHECK constraints
 * are expressions of their owner's) and composite types (whose columns may
 * be domains) are refused, wherever they are defined, and so are the OID
 * alias types (regclass, regproc, ...), whose input reads the catalogs.
 */
static bool
OidAliasType(Oid typid)
{
	switch (typid)
	{
		case REGCLASSOID:
		case REGCOLLATIONOID:
		case REGCONFIGOID:
		case REGDICTIONARYOID:
		case REGNAMESPACEOID:
		case REGOPERATOROID:
		case REGOPEROID:
		case REGPROCEDUREOID:
		case REGPROCOID:
		case REGROLEOID:
		case REGTYPEOID:
			return true;
		default:
			return false;
	}
}

static bool
TypeAllowed(Oid typid)
{
	HeapTuple	tup;
	Form_pg_type t;
	bool		ok;

	if (typid == RECORDOID || typid == UNKNOWNOID)
		return true;
	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	if (!HeapTupleIsValid(tup))
		return false;
	t = (Form_pg_type) GETSTRUCT(tup);
	ok = t->typnamespace == PG_CATALOG_NAMESPACE &&
		(t->typtype == TYPTYPE_BASE || t->typtype == TYPTYPE_RANGE ||
		 t->typtype == TYPTYPE_MULTIRANGE || t->typtype == TYPTYPE_ENUM) &&
		!OidAliasType(OidIsValid(t->typelem) && IsTrueArrayType(t) ? t->typelem : typid);
	ReleaseSysCache(tup);
	return ok;
}

static void
CheckType(Oid typid, int location)
{
	if (!TypeAllowed(typid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("predicates cannot use type %s", format_type_be_qualified(typid)),
				 errdetail("Only built-in types are allowed: no domains, composite types or types of other schemas."),
				 location >= 0 ? errposition(location + 1) : 0));
}

/* A name list (func or operator) is unqualified or qualified with pg_catalog. */
static void
CheckQualifiedName(List *names, const char *what, int location)
{
	char	   *schema;
	char	   *name;

	DeconstructQualifiedName(names, &schema, &name);
	if (schema != NULL && strcmp(schema, "pg_catalog") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("predicates cannot call %s %s.%s", what, schema, name),
				 errdetail("Only built-in functions and operators are allowed."),
				 location >= 0 ? errposition(location + 1) : 0));
}

/*
 * The stable built-ins a predicate may call: the clock and date/time
 * arithmetic, which depend on the time (and the time zone) only.  Other
 * stable built-ins can read what the profile does not hold (settings,
 * statistics, whole tables as XML), and predicates run with persona's
 * privileges, so they are refused.
 */
static bool
ClockFunction(const char *name)
{
	static const char *const names[] = {
		"now", "transaction_timestamp", "statement_timestamp", "date_trunc",
		"date_part", "extract", "date_bin", "age", "timezone", "to_char",
		"to_date", "to_timestamp", "make_timestamptz", "date", "timestamp",
		"timestamptz", "time", "timetz", "overlaps", "isfinite"
	};
	static const char *const prefixes[] = {
		"timestamptz_", "timestamp_", "date_", "interval_", "time_", "timetz_"
	};

	for (size_t i = 0; i < lengthof(names); i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	for (size_t i = 0; i < lengthof(prefixes); i++)
		if (strncmp(name, prefixes[i], strlen(prefixes[i])) == 0)
			return true;
	return false;
}

typedef struct CheckContext
{
	bool		clock;
} CheckContext;

static bool
CheckFunction(Oid funcid, void *context)
{
	CheckContext *cx = (CheckContext *) context;
	char		volatility;

	if (get_func_namespace(funcid) != PG_CATALOG_NAMESPACE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("predicates cannot call function %s",
						format_procedure_qualified(funcid)),
				 errdetail("Only built-in functions and operators are allowed.")));
	volatility = func_volatile(funcid);
	if (volatility == PROVOLATILE_VOLATILE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("predicates cannot call volatile function %s",
						format_procedure(funcid)),
				 errhint("A predicate must give the same answer for the same profile at the same time.")));
	if (volatility != PROVOLATILE_IMMUTABLE)
	{
		if (!ClockFunction(get_func_name(funcid)))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("predicates cannot call function %s",
							format_procedure(funcid)),
					 errdetail("Besides immutable built-ins, only clock and date/time functions are allowed.")));
		cx->clock = true;
	}
	return false;
}

/* ---------------------------------------------------------------------
 * Step 1: the raw tree, before anything runs
 * --------------------------------------------------------------------- */

static bool
CheckRawNode(Node *node, void *context)
{
	if (node == NULL)
		return false;
	switch (nodeTag(node))
	{
		case T_TypeName:
			{
				TypeName   *tn = (TypeName *) node;
				Type		type;

				if (tn->pct_type)
					RefusePredicate("%TYPE references", NULL, tn->location);
				/* A lookup by name only: no typmod input function runs. */
				type = LookupTypeName(NULL, tn, NULL, true);
				if (type == NULL)
					ereport(ERROR,
							(errcode(ERRCODE_UNDEFINED_OBJECT),
							 errmsg("type %s does not exist", TypeNameToString(tn)),
							 errposition(tn->location + 1)));
				CheckType(typeTypeId(type), tn->location);
				ReleaseSysCache(type);
				return false;
			}
		case T_FuncCall:
			CheckQualifiedName(((FuncCall *) node)->funcname, "function",
							   ((FuncCall *) node)->location);
			break;
		case T_A_Expr:
			CheckQualifiedName(((A_Expr *) node)->name, "operator",
							   ((A_Expr *) node)->location);
			break;
		case T_SubLink:
			RefusePredicate("subqueries", "Name columns of persona.profiles and persona.traits.",
							((SubLink *) node)->location);
			break;
		case T_ParamRef:
			RefusePredicate("parameters", NULL, ((ParamRef *) node)->location);
			break;
		default:
			break;
	}
	return raw_expression_tree_walker(node, CheckRawNode, context);
}

/* ---------------------------------------------------------------------
 * Step 2: the analysed tree
 * --------------------------------------------------------------------- */

static bool
CheckPredicateNode(Node *node, void *context)
{
	CheckContext *cx = (CheckContext *) context;

	if (node == NULL)
		return false;
	switch (nodeTag(node))
	{
		case T_List:
		case T_CaseWhen:
			/* No value of their own; their parts are checked. */
			return expression_tree_walker(node, CheckPredicateNode, context);
		case T_SQLValueFunction:
			if (((SQLValueFunction *) node)->op > SVFOP_LOCALTIMESTAMP_N)
				RefusePredicate("session functions such as CURRENT_USER", NULL,
								((SQLValueFunction *) node)->location);
			cx->clock = true;
			break;
		case T_SubscriptingRef:
			CheckType(((SubscriptingRef *) node)->refcontainertype, exprLocation(node));
			break;
		case T_Var:
		case T_Const:
		case T_FuncExpr:
		case T_OpExpr:
		case T_DistinctExpr:
		case T_NullIfExpr:
		case T_ScalarArrayOpExpr:
		case T_BoolExpr:
		case T_RelabelType:
		case T_CoerceViaIO:
		case T_ArrayCoerceExpr:
		case T_CollateExpr:
		case T_CaseExpr:
		case T_CaseTestExpr:
		case T_ArrayExpr:
		case T_RowExpr:
		case T_RowCompareExpr:
		case T_CoalesceExpr:
		case T_MinMaxExpr:
		case T_NullTest:
		case T_BooleanTest:
		case T_FieldSelect:
			break;
		case T_SubLink:
			RefusePredicate("subqueries", "Name columns of persona.profiles and persona.traits.",
							((SubLink *) node)->location);
			break;
		case T_Param:
			RefusePredicate("parameters", NULL, ((Param *) node)->location);
			break;
		case T_NextValueExpr:
			RefusePredicate("sequence functions", NULL, -1);
			break;
		case T_CoerceToDomain:
		case T_CoerceToDomainValue:
			RefusePredicate("domain types", "Cast to the domain's base type instead.",
							exprLocation(node));
			break;
		default:
			RefusePredicate(psprintf("this kind of expression (node %d)", (int) nodeTag(node)),
							NULL, exprLocation(node));
			break;
	}
	(void) check_functions_in_node(node, CheckFunction, context);
	CheckType(exprType(node), exprLocation(node));
	return expression_tree_walker(node, CheckPredicateNode, context);
}

/* The raw expression of "SELECT <predicate>", or an error saying why not. */
static Node *
ParsePredicate(const char *predicate, const char *sql)
{
	List	   *stmts = raw_parser(sql, RAW_PARSE_DEFAULT);
	SelectStmt *select;
	ResTarget  *target;

	if (list_length(stmts) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("a predicate must be exactly one expression"),
				 errdetail("The text given holds %d statements.", list_length(stmts))));
	select = (SelectStmt *) ((RawStmt *) linitial(stmts))->stmt;
	if (!IsA(select, SelectStmt) || select->op != SETOP_NONE ||
		select->fromClause != NIL || select->whereClause != NULL ||
		select->groupClause != NIL || select->havingClause != NULL ||
		select->windowClause != NIL || select->valuesLists != NIL ||
		select->sortClause != NIL || select->limitCount != NULL ||
		select->limitOffset != NULL || select->lockingClause != NIL ||
		select->withClause != NULL || select->intoClause != NULL ||
		select->distinctClause != NIL || list_length(select->targetList) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("a predicate must be exactly one expression"),
				 errdetail("The text given is more than an expression: \"%s\".", predicate),
				 errhint("Write a boolean expression such as traits->>'city' = 'Mumbai' AND cart_value > 5000.")));
	target = linitial_node(ResTarget, select->targetList);
	if (target->name != NULL || target->indirection != NIL ||
		(IsA(target->val, ColumnRef) &&
		 IsA(llast(((ColumnRef *) target->val)->fields), A_Star)))
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("a predicate must be exactly one expression"),
				 errdetail("The text given is more than an expression: \"%s\".", predicate)));
	return target->val;
}

/*
 * Parses and checks a predicate over alias "s" of relation ``relid``
 * (persona.segment_source, or persona.decision_source for action
 * conditions) and returns the checked, analysed expression, with the
 * columns it reads and whether it calls a function of the clock.  The
 * relation stays open (AccessShareLock) in *rel.
 */
static Node *
CheckedTree(const char *predicate, Relation rel, List **reads, bool *clock)
{
	char	   *sql = psprintf("%s%s", PREDICATE_PREFIX, predicate);
	ErrorContextCallback errcallback;
	ParseState *pstate;
	ParseNamespaceItem *nsitem;
	Node	   *raw;
	Node	   *expr;
	CheckContext cx = {false};
	Bitmapset  *attnos = NULL;
	int			k = -1;

	errcallback.callback = PredicateErrorCallback;
	errcallback.arg = (void *) predicate;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	raw = ParsePredicate(predicate, sql);
	(void) CheckRawNode(raw, NULL);

	pstate = make_parsestate(NULL);
	pstate->p_sourcetext = sql;
	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
										   makeAlias("s", NIL), false, true);
	addNSItemToQuery(pstate, nsitem, false, true, true);
	expr = transformExpr(pstate, raw, EXPR_KIND_WHERE);
	expr = coerce_to_boolean(pstate, expr, "predicate");
	assign_expr_collations(pstate, expr);
	(void) CheckPredicateNode(expr, &cx);

	pull_varattnos(expr, 1, &attnos);
	*reads = NIL;
	while ((k = bms_next_member(attnos, k)) >= 0)
	{
		AttrNumber	attno = k + FirstLowInvalidHeapAttributeNumber;

		if (attno <= 0)
			RefusePredicate("system columns or whole rows", NULL, -1);
		*reads = lappend(*reads, pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel), attno - 1)->attname)));
	}
	*clock = cx.clock;
	free_parsestate(pstate);
	error_context_stack = errcallback.previous;
	return expr;
}

/*
 * Checks a predicate and returns it deparsed (over alias "s" of relation
 * ``relid``), with the columns it reads and whether it calls a function of
 * the clock.
 */
char *
PersonaCompilePredicate(const char *predicate, Oid relid, List **reads, bool *clock)
{
	int			pinned = PersonaPinSearchPath();
	Relation	rel = relation_open(relid, AccessShareLock);
	Node	   *expr = CheckedTree(predicate, rel, reads, clock);
	char	   *deparsed;

	deparsed = deparse_expression(expr, deparse_context_for("s", relid), true, false);
	relation_close(rel, AccessShareLock);
	PersonaUnpinSearchPath(pinned);
	/* A model's column reads its features (models.c). */
	PersonaModelReads(reads, clock);
	return deparsed;
}

/*
 * Replaces the columns of a view (Vars of range table entry 1) in an
 * expression by the view's own expressions for them, down to the tables
 * it reads: persona.decision_source over persona.segment_source over
 * persona.profiles.  Columns the view does not define, NULL placeholders,
 * become parameters of their type: decision_source's context is parameter
 * 1, trigger_source's event parameter 2 (PlaceholderParam).
 */
static int
PlaceholderParam(const char *column)
{
	if (strcmp(column, "context") == 0)
		return 1;
	if (strcmp(column, "event") == 0)
		return 2;
	elog(ERROR, "unexpected placeholder column \"%s\" in a source view", column);
	return 0;					/* keep the compiler quiet */
}

static Node *
ExpandView(Node *expr, Relation view)
{
	Query	   *query = get_view_query(view);
	List	   *tlist = NIL;
	ListCell   *lc;

	foreach(lc, query->targetList)
	{
		TargetEntry *tle = lfirst_node(TargetEntry, lc);
		TargetEntry *copy = flatCopyTargetEntry(tle);

		/* A NULL placeholder column (context, event) is a parameter. */
		if (IsA(tle->expr, Const) && ((Const *) tle->expr)->constisnull)
		{
			Param	   *param = makeNode(Param);

			param->paramkind = PARAM_EXTERN;
			param->paramid = PlaceholderParam(tle->resname);
			param->paramtype = exprType((Node *) tle->expr);
			param->paramtypmod = -1;
			param->paramcollid = InvalidOid;
			param->location = -1;
			copy->expr = (Expr *) param;
		}
		tlist = lappend(tlist, copy);
	}
	expr = ReplaceVarsFromTargetList(expr, 1, 0, NULL, tlist,
									 REPLACEVARS_REPORT_ERROR, 0, NULL);

	/* The view's expressions read the range table entries of its query. */
	foreach(lc, query->rtable)
	{
		RangeTblEntry *rte = lfirst_node(RangeTblEntry, lc);
		int			varno = foreach_current_index(lc) + 1;

		/* PostgreSQL 15 keeps the rule's OLD and NEW entries first. */
		if (rte->rtekind == RTE_RELATION && rte->relkind == RELKIND_VIEW &&
			!(rte->alias && (strcmp(rte->alias->aliasname, "old") == 0 ||
							 strcmp(rte->alias->aliasname, "new") == 0)))
		{
			Relation	inner = relation_open(rte->relid, AccessShareLock);

			ChangeVarNodes(expr, varno, 1, 0);
			expr = ExpandView(expr, inner);
			relation_close(inner, AccessShareLock);
		}
	}
	return expr;
}

/* ---------------------------------------------------------------------
 * Predicates that cannot fail on the data
 * --------------------------------------------------------------------- */

/* persona's trait decoders, the calls the views make for trait columns. */
static const char *const trait_decoders[] = {
	"trait_bigint", "trait_numeric", "trait_text"
};

/* Their OIDs in the extension's schema, InvalidOid for one not there. */
typedef struct NoFailContext
{
	Oid			decoders[lengthof(trait_decoders)];
} NoFailContext;

/*
 * The decoder ``name``(bytea, integer) in the extension's schema, or
 * InvalidOid: it must also still be the C function of that name in
 * persona's library, the code this file vouches for.
 */
static Oid
LookupDecoder(Oid schema, const char *name)
{
	Oid			argtypes[2] = {BYTEAOID, INT4OID};
	char	   *nspname = get_namespace_name(schema);
	Oid			func;
	HeapTuple	tuple;
	bool		ours = false;

	if (nspname == NULL)
		return InvalidOid;
	func = LookupFuncName(list_make2(makeString(nspname), makeString(pstrdup(name))),
						  2, argtypes, true);
	if (!OidIsValid(func))
		return InvalidOid;
	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(func));
	if (HeapTupleIsValid(tuple))
	{
		Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tuple);
		bool		isnull;
		Datum		src = SysCacheGetAttr(PROCOID, tuple, Anum_pg_proc_prosrc, &isnull);

		ours = proc->prolang == ClanguageId && !proc->proretset && !isnull &&
			strcmp(TextDatumGetCString(src), psprintf("persona_%s", name)) == 0;
		ReleaseSysCache(tuple);
	}
	return ours ? func : InvalidOid;
}

/*
 * The comparisons of numeric, which PostgreSQL 15 does not mark LEAKPROOF
 * but which raise nothing on any value: cmp_numerics orders NaN and the
 * infinities without an error, and reads nothing but its two arguments.  A
 * trait of sum, avg, min or max is a numeric, compared with a constant.
 */
static const Oid numeric_comparisons[] = {
	F_NUMERIC_EQ, F_NUMERIC_NE, F_NUMERIC_LT, F_NUMERIC_LE, F_NUMERIC_GT, F_NUMERIC_GE,
	F_NUMERIC_CMP
};

/* check_functions_in_node's callback: true for a function that may fail. */
static bool
FunctionMayFail(Oid func, void *arg)
{
	NoFailContext *cxt = (NoFailContext *) arg;

	for (int i = 0; i < (int) lengthof(cxt->decoders); i++)
		if (func == cxt->decoders[i])
			return false;
	for (int i = 0; i < (int) lengthof(numeric_comparisons); i++)
		if (func == numeric_comparisons[i])
			return false;
	return !get_func_leakproof(func);
}

static bool
MayFailWalker(Node *node, void *arg)
{
	if (node == NULL)
		return false;
	switch (nodeTag(node))
	{
		case T_List:
		case T_Var:
		case T_Const:
		case T_Param:
		case T_BoolExpr:
		case T_NullTest:
		case T_BooleanTest:
		case T_RelabelType:
		case T_OpExpr:
		case T_DistinctExpr:
		case T_NullIfExpr:
		case T_CoalesceExpr:
		case T_CaseExpr:
		case T_CaseWhen:
		case T_CaseTestExpr:
			break;
		case T_FuncExpr:
			if (((FuncExpr *) node)->funcretset)
				return true;
			break;
		case T_ScalarArrayOpExpr:
			{
				ScalarArrayOpExpr *saop = (ScalarArrayOpExpr *) node;

				/* A hashed ANY (a long IN list) also runs these. */
				if ((OidIsValid(saop->hashfuncid) && FunctionMayFail(saop->hashfuncid, arg)) ||
					(OidIsValid(saop->negfuncid) && FunctionMayFail(saop->negfuncid, arg)))
					return true;
				break;
			}
		default:
			return true;
	}
	if (check_functions_in_node(node, FunctionMayFail, arg))
		return true;
	return expression_tree_walker(node, MayFailWalker, arg);
}

/*
 * Whether a planned expression may raise an error of class 22 (data
 * exception) or 54 (program limit exceeded) for some profile's data, the
 * errors PersonaTryEvaluation catches.  False only when that is impossible
 * whatever the data, so that its evaluation needs no subtransaction:
 *
 *	- The nodes allowed raise nothing of their own on any value: reading a
 *	  column, a constant or a parameter, AND/OR/NOT, IS [NOT] NULL, IS
 *	  [NOT] TRUE/FALSE/UNKNOWN, a binary-compatible relabeling, COALESCE,
 *	  CASE; operators and calls (also IS DISTINCT FROM, NULLIF, ANY/ALL over
 *	  an array) raise only what their functions raise.  Every other node
 *	  may fail: a cast through text (CoerceViaIO), an array or row
 *	  constructor, a subscript, a set-returning call, ...
 *	- Every function a node runs (check_functions_in_node, which also sees
 *	  the functions an operator, a cast or an I/O coercion runs) is
 *	  LEAKPROOF: a leakproof function may raise no error that depends on its
 *	  arguments (PostgreSQL's definition; the comparisons of integers,
 *	  floats, numerics, timestamps, booleans and text are, casts,
 *	  arithmetic and jsonb operators are not).  What a leakproof function
 *	  may raise whatever its arguments (out of memory, a cancel) is not of
 *	  those classes, and is thrown with or without a subtransaction.  The
 *	  comparisons of numeric are not marked so in PostgreSQL 15, yet raise
 *	  nothing on any value either (numeric_comparisons).
 *	- Or it is one of persona's trait decoders (traits.c): they raise
 *	  nothing of class 22 or 54 on any state.  A malformed state is
 *	  XX001, a decoder called for a trait of another kind 42804, a sum
 *	  beyond numeric's range saturates to infinity, and an average divides
 *	  by a count of at least one.
 */
static bool
PredicateMayFail(Node *expr)
{
	const PersonaCatalog *cat = PersonaGetCatalog();
	NoFailContext cxt;

	for (int i = 0; i < (int) lengthof(trait_decoders); i++)
		cxt.decoders[i] = LookupDecoder(cat->schema, trait_decoders[i]);
	return MayFailWalker(expr, &cxt);
}

/*
 * A predicate that was checked and stored (predicate_sql, condition_sql)
 * prepared for evaluation in C against one row of persona.profiles: the
 * view columns it names are replaced by the view's expressions over the
 * profile (so a trait column is the same decoder call the view makes), and
 * a condition's context is parameter 1, a trigger condition's event
 * parameter 2.  The text is checked again
 * on the way, as it is compiled on every write.  The result lives in the
 * current memory context; evaluate it with the profile row as the scan
 * tuple.  ``may_fail``, unless NULL, is set to whether its evaluation may
 * raise an error PersonaTryEvaluation catches (PredicateMayFail).
 */
ExprState *
PersonaPreparePredicate(const char *sql, Oid relid, bool *may_fail)
{
	int			pinned = PersonaPinSearchPath();
	Relation	rel = relation_open(relid, AccessShareLock);
	List	   *reads;
	bool		clock;
	Node	   *expr = CheckedTree(sql, rel, &reads, &clock);
	ExprState  *state;

	expr = ExpandView(expr, rel);
	relation_close(rel, AccessShareLock);
	expr = (Node *) expression_planner((Expr *) expr);
	if (may_fail != NULL)
		*may_fail = PredicateMayFail(expr);
	state = ExecInitExpr((Expr *) expr, NULL);
	PersonaUnpinSearchPath(pinned);
	return state;
}

static Datum
ReadsArray(List *reads)
{
	Datum	   *names = palloc(sizeof(Datum) * Max(list_length(reads), 1));
	int			i = 0;
	ListCell   *lc;

	foreach(lc, reads)
		names[i++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(names, i, TEXTOID, -1, false, TYPALIGN_INT));
}

static char *
RequirePredicateText(text *t)
{
	char	   *predicate = text_to_cstring(t);

	if (strspn(predicate, " \t\r\n") == strlen(predicate))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("predicate must not be empty")));
	return predicate;
}

/* Checks a predicate over a source relation; returns (sql, reads, clock). */
PG_FUNCTION_INFO_V1(persona_compile_predicate);
Datum
persona_compile_predicate(PG_FUNCTION_ARGS)
{
	List	   *reads;
	bool		clock;
	char	   *deparsed;
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("predicate must not be null")));
	deparsed = PersonaCompilePredicate(RequirePredicateText(PG_GETARG_TEXT_PP(0)),
									   PG_GETARG_OID(1), &reads, &clock);

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "persona_compile_predicate must return a record");
	values[0] = CStringGetTextDatum(deparsed);
	values[1] = ReadsArray(reads);
	values[2] = BoolGetDatum(clock);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/*
 * Whether a predicate over a source relation, prepared as the definitions
 * caches prepare it, may fail on a profile's data (PredicateMayFail): its
 * evaluation then runs in a subtransaction.  For tests and diagnosis.
 */
PG_FUNCTION_INFO_V1(persona_predicate_may_fail);
Datum
persona_predicate_may_fail(PG_FUNCTION_ARGS)
{
	List	   *reads;
	bool		clock;
	bool		may_fail;
	char	   *sql;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	sql = PersonaCompilePredicate(RequirePredicateText(PG_GETARG_TEXT_PP(0)),
								  PG_GETARG_OID(1), &reads, &clock);
	(void) PersonaPreparePredicate(sql, PG_GETARG_OID(1), &may_fail);
	PG_RETURN_BOOL(may_fail);
}

/*
 * BEFORE INSERT OR UPDATE row trigger of the definition tables: compiles
 * the expression column again and overwrites what is derived from it, so
 * that the stored SQL is always the checked compilation of the stored
 * text, however the row was written (an owner's restored row aside, see
 * below).  Arguments: the source view, the
 * text column, the SQL column, the reads column, and the clock column or ''.
 * A NULL text (an action without condition) gives NULL SQL and no reads.
 */
PG_FUNCTION_INFO_V1(persona_compile_definition);
Datum
persona_compile_definition(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	TupleDesc	desc;
	HeapTuple	tuple;
	Oid			source;
	int			attnums[4];
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	int			ncols = 3;
	bool		isnull;
	Datum		text_datum;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) ||
		trigdata->tg_trigger->tgnargs != 5)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("persona_compile_definition must be fired BEFORE INSERT OR UPDATE ... FOR EACH ROW with 5 arguments")));
	trigger = trigdata->tg_trigger;
	desc = RelationGetDescr(trigdata->tg_relation);
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple
		: trigdata->tg_trigtuple;
	source = DatumGetObjectId(DirectFunctionCall1(regclassin,
												  CStringGetDatum(trigger->tgargs[0])));
	for (int i = 1; i < 5; i++)
		attnums[i - 1] = trigger->tgargs[i][0] == '\0' ? InvalidAttrNumber
			: PersonaRequireColumn(RelationGetRelid(trigdata->tg_relation), trigger->tgargs[i]);
	if (attnums[3] != InvalidAttrNumber)
		ncols = 4;

	/*
	 * A row inserted with its SQL already written, by the owner, is a
	 * restored one (pg_dump's COPY): stored as is.  Its predicate may read
	 * traits whose columns come back only when persona.trait_defs is
	 * restored, later in the dump.  persona's own functions insert the text
	 * alone, so this trigger compiles it; so it does for anyone else, and on
	 * every UPDATE.
	 */
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) &&
		!heap_attisnull(tuple, attnums[1], desc) &&
		pg_class_ownercheck(RelationGetRelid(trigdata->tg_relation), GetUserId()))
		return PointerGetDatum(tuple);

	text_datum = heap_getattr(tuple, attnums[0], desc, &isnull);
	if (isnull)
	{
		nulls[1] = true;
		values[2] = ReadsArray(NIL);
		values[3] = BoolGetDatum(false);
	}
	else
	{
		List	   *reads;
		bool		clock;
		char	   *predicate = RequirePredicateText(DatumGetTextPP(text_datum));

		char	   *sql = PersonaCompilePredicate(predicate, source, &reads, &clock);

		/*
		 * Prepared as the definitions cache will prepare it, so that what
		 * fails whatever the profile (1 / 0, folded as a constant) is refused
		 * here, when the definition is written, and never when the cache
		 * loads it in the middle of ingest.
		 */
		(void) PersonaPreparePredicate(sql, source, NULL);
		values[1] = CStringGetTextDatum(sql);
		values[2] = ReadsArray(reads);
		values[3] = BoolGetDatum(clock);
	}
	tuple = heap_modify_tuple_by_cols(tuple, desc, ncols - 1, &attnums[1], &values[1], &nulls[1]);
	return PointerGetDatum(tuple);
}

/*
 * Runs ``body`` (evaluations of stored predicates or conditions) inside one
 * subtransaction.  Returns true when it completed, or false when it failed
 * on the data it read (a data exception, class 22: a failed cast, a
 * division by zero; or a program limit, class 54: an over-long string):
 * the subtransaction is rolled back and the error is returned in
 * ``error``, in the caller's memory context.  Any other error (a cancel,
 * out of memory) is thrown.  The caller's memory context and resource
 * owner are current again on return: what ``body`` allocates in that
 * context survives a rollback, and what it acquires from the resource owner
 * inside (buffer pins, relations, snapshots) does not, so a body that opens
 * scans must also close them.  A definition a marketer wrote must not stop
 * valid data from going in: callers count the error and go on
 * (segments.c, decide.c).
 *
 * ``may_fail`` false: the caller knows that every expression ``body``
 * evaluates was prepared cannot-fail (PersonaPreparePredicate), so that no
 * error of those classes can arise; ``body`` then runs as is, without the
 * subtransaction (which costs a begin, a release and a pass over the GUCs
 * per call), and any error it raises is thrown as it would have been.
 */
bool
PersonaTryEvaluation(void (*body) (void *arg), void *arg, bool may_fail, ErrorData **error)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;

	if (!may_fail)
	{
		body(arg);
		return true;
	}
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		body(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		int			category;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		category = ERRCODE_TO_CATEGORY(edata->sqlerrcode);
		if (category != ERRCODE_DATA_EXCEPTION && category != ERRCODE_PROGRAM_LIMIT_EXCEEDED)
			ReThrowError(edata);
		*error = edata;
		ok = false;
	}
	PG_END_TRY();
	return ok;
}
