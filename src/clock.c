/*
 * clock.c
 *	  When a clock segment's predicate next flips, so that persona_tick visits
 *	  only the profiles whose membership time may have changed.
 *
 * A clock predicate calls now() or another clock function: time alone can
 * change its answer.  For a predicate built, with AND, OR and NOT, from
 * expressions that do not depend on the clock and from comparisons
 *
 *	  E op C	(or C op E), op one of < <= > >=, over timestamptz,
 *
 * where E does not depend on the clock and C is now(), CURRENT_TIMESTAMP or
 * transaction_timestamp(), alone or plus or minus a constant interval K
 * without months, each comparison changes at most once as time passes (C
 * only grows), near the time L = E - K; the predicate can change only when
 * one of them does.  persona.clock_flip(predicate_sql) writes, as SQL over
 * persona.segment_source AS s, the earliest of those times still ahead for
 * a profile (NULL: none): for each comparison that will change,
 * GREATEST(L, now()).  L is exact when K has no days, or when E and L have
 * the same UTC offset; across a change of offset (daylight saving time) it
 * is made earlier by that change, so that it is never later than the true
 * change.  A flip time that has come while the comparison has not changed
 * yet reads now(): the profile is looked at again at the next tick.
 *
 * E may read first_seen, last_seen and created_at, and nothing else (a
 * computed trait would need a cast of text, which reads 'now' and 'today';
 * other columns change without marking the profile, below).  Any other use
 * of the clock (CURRENT_DATE, age(x), date_trunc over now(), a cast of text
 * to a timestamp), = and <> against the clock, or a comparison with
 * timestamp without time zone, make the predicate underived: clock_flip
 * returns NULL and the tick reads every profile for that segment, as
 * before.
 *
 * Marking.  A profile whose first_seen or last_seen changes, or that is
 * new, may flip at another time: while a clock segment exists, those writes
 * set its next_change_at to now, so that the next tick computes its flip
 * time again: ingest (ingest_apply.c, PersonaClockSegmentsExist in
 * segments.c), merges
 * and new profiles without events (identity.sql).
 */
#include "postgres.h"

#include "access/sysattr.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/analyze.h"
#include "parser/parser.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/ruleutils.h"
#include "utils/timestamp.h"

#include "persona.h"

/* ---------------------------------------------------------------------
 * Flip times
 * --------------------------------------------------------------------- */

typedef struct FlipContext
{
	Oid			source;			/* persona.segment_source */
	List	   *dpcontext;		/* deparse context: alias s */
	List	   *terms;			/* SQL texts, one per comparison */
	bool		underived;
} FlipContext;

static bool
ClockCall(Node *node)
{
	if (node == NULL)
		return false;
	if (IsA(node, FuncExpr))
	{
		Oid			f = ((FuncExpr *) node)->funcid;

		return f == F_NOW || f == F_TRANSACTION_TIMESTAMP;
	}
	if (IsA(node, SQLValueFunction))
		return ((SQLValueFunction *) node)->op == SVFOP_CURRENT_TIMESTAMP;
	return false;
}

/*
 * Is the node the clock, or the clock plus or minus a constant interval
 * without months?  Sets *k to the interval (sign included), NULL for none.
 */
static bool
ClockTerm(Node *node, Interval **k)
{
	OpExpr	   *op;
	Const	   *c;
	Interval   *iv;

	*k = NULL;
	if (ClockCall(node))
		return true;
	if (!IsA(node, OpExpr))
		return false;
	op = (OpExpr *) node;
	if ((op->opfuncid != F_TIMESTAMPTZ_PL_INTERVAL && op->opfuncid != F_TIMESTAMPTZ_MI_INTERVAL) ||
		list_length(op->args) != 2 || !ClockCall(linitial(op->args)) ||
		!IsA(lsecond(op->args), Const))
		return false;
	c = lsecond_node(Const, op->args);
	if (c->constisnull || c->consttype != INTERVALOID)
		return false;
	iv = palloc(sizeof(Interval));
	*iv = *DatumGetIntervalP(c->constvalue);
	if (iv->month != 0)
		return false;
	if (op->opfuncid == F_TIMESTAMPTZ_MI_INTERVAL)
	{
		iv->day = -iv->day;
		iv->time = -iv->time;
	}
	*k = iv;
	return true;
}

/*
 * Does the expression read a column other than first_seen, last_seen and
 * created_at?  Only writes of those mark the profile (see the top).
 */
static bool
ReadsUnmarked(Node *node, Oid source)
{
	Bitmapset  *attnos = NULL;
	int			k = -1;

	pull_varattnos(node, 1, &attnos);
	while ((k = bms_next_member(attnos, k)) >= 0)
	{
		AttrNumber	attno = k + FirstLowInvalidHeapAttributeNumber;
		char	   *name;

		if (attno <= 0)
			return true;
		name = get_attname(source, attno, false);
		if (strcmp(name, "first_seen") != 0 && strcmp(name, "last_seen") != 0 &&
			strcmp(name, "created_at") != 0)
			return true;
	}
	return false;
}

static const char *
Deparse(FlipContext *cx, Node *node)
{
	return deparse_expression(node, cx->dpcontext, true, false);
}

/* One comparison E op C (clock on the right after commuting). */
static void
FlipOfComparison(FlipContext *cx, OpExpr *op)
{
	Node	   *left = linitial(op->args);
	Node	   *right = lsecond(op->args);
	Interval   *k;
	Oid			f = op->opfuncid;
	bool		rises;			/* E op C true before, false after */
	const char *e;
	const char *atom;
	char	   *l;

	if (ClockTerm(left, &k) && !contain_mutable_functions(right))
	{
		Node	   *t = left;

		left = right;
		right = t;
		/* C op E is E op' C */
		f = f == F_TIMESTAMPTZ_LT ? F_TIMESTAMPTZ_GT :
			f == F_TIMESTAMPTZ_LE ? F_TIMESTAMPTZ_GE :
			f == F_TIMESTAMPTZ_GT ? F_TIMESTAMPTZ_LT : F_TIMESTAMPTZ_LE;
	}
	else if (!ClockTerm(right, &k) || contain_mutable_functions(left))
	{
		cx->underived = true;
		return;
	}
	if (ReadsUnmarked(left, cx->source))
	{
		cx->underived = true;
		return;
	}
	/* E > C and E >= C hold until C passes E; E < C and E <= C from then. */
	rises = (f == F_TIMESTAMPTZ_GT || f == F_TIMESTAMPTZ_GE);
	e = Deparse(cx, left);
	atom = Deparse(cx, (Node *) op);
	if (k == NULL)
		l = psprintf("(%s)", e);
	else if (k->day == 0)
		l = psprintf("((%s) - '%lld microseconds'::interval)", e, (long long) k->time);
	else
	{
		/*
		 * Days in the session's time zone: across a change of UTC offset,
		 * earlier by that change.
		 */
		char	   *k_text = psprintf("'%d days %lld microseconds'::interval", k->day,
									  (long long) k->time);

		l = psprintf("((%s) - %s - make_interval(secs => abs(date_part('timezone', (%s))"
					 " - date_part('timezone', (%s) - %s))))", e, k_text, e, e, k_text);
	}
	cx->terms = lappend(cx->terms,
						psprintf("CASE WHEN (%s) IS %s THEN GREATEST(%s, now()) END",
								 atom, rises ? "TRUE" : "FALSE", l));
}

static void
FlipWalk(FlipContext *cx, Node *node)
{
	if (cx->underived || node == NULL)
		return;
	if (!contain_mutable_functions(node))
		return;					/* the same at any time */
	if (IsA(node, BoolExpr))
	{
		ListCell   *lc;

		foreach(lc, ((BoolExpr *) node)->args)
			FlipWalk(cx, lfirst(lc));
		return;
	}
	if (IsA(node, OpExpr))
	{
		OpExpr	   *op = (OpExpr *) node;
		Oid			f = op->opfuncid;

		if (list_length(op->args) == 2 &&
			(f == F_TIMESTAMPTZ_LT || f == F_TIMESTAMPTZ_LE ||
			 f == F_TIMESTAMPTZ_GT || f == F_TIMESTAMPTZ_GE))
		{
			FlipOfComparison(cx, op);
			return;
		}
	}
	cx->underived = true;
}

/*
 * The next flip time of a clock segment's predicate (its predicate_sql,
 * over persona.segment_source AS s) as SQL over the same alias, or NULL
 * when it cannot be derived (see the top of the file).
 */
PG_FUNCTION_INFO_V1(persona_clock_flip);
Datum
persona_clock_flip(PG_FUNCTION_ARGS)
{
	char	   *sql = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *query = psprintf("SELECT (%s) FROM persona.segment_source AS s", sql);
	int			pinned = PersonaPinSearchPath();
	List	   *raw = raw_parser(query, RAW_PARSE_DEFAULT);
	Query	   *q;
	FlipContext cx = {0};
	StringInfoData buf;
	ListCell   *lc;

	if (list_length(raw) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("a predicate must be exactly one expression")));
	q = parse_analyze_fixedparams(linitial_node(RawStmt, raw), query, NULL, 0, NULL);
	if (q->commandType != CMD_SELECT || list_length(q->targetList) != 1 ||
		list_length(q->rtable) != 1 || q->hasSubLinks || q->hasAggs || q->hasWindowFuncs ||
		q->hasTargetSRFs || q->jointree->quals != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("a predicate must be exactly one expression")));
	cx.source = PersonaGetCatalog()->segment_source;
	cx.dpcontext = deparse_context_for("s", cx.source);
	FlipWalk(&cx, (Node *) linitial_node(TargetEntry, q->targetList)->expr);
	PersonaUnpinSearchPath(pinned);
	if (cx.underived || cx.terms == NIL)
		PG_RETURN_NULL();
	initStringInfo(&buf);
	appendStringInfoString(&buf, "LEAST(");
	foreach(lc, cx.terms)
	{
		if (lc != list_head(cx.terms))
			appendStringInfoString(&buf, ", ");
		appendStringInfoString(&buf, lfirst(lc));
	}
	appendStringInfoChar(&buf, ')');
	PG_RETURN_TEXT_P(cstring_to_text(buf.data));
}
