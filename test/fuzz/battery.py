#!/usr/bin/python3
"""The fuzz battery (docs/operations.md, "Fuzzing"): every persona function
that an API user can call, called with hostile arguments, as a superuser and
as each role of the docs/roles.md recipe that may execute it.

    battery.py --db DB --log SERVER_LOG [--seconds N] [--seed S]

The functions are read from pg_proc (members of the extension named
persona_*, any other member some role of the recipe may execute, and the
members that decode trait states, with a bytea argument), so a new function
is fuzzed without a change here. For each function:

  1. a systematic pass: the function with well-formed arguments (chosen by
     argument name and type), then each argument in turn replaced by every
     hostile value of its type (NULL, empty and 1 MB strings, quotes and
     semicolons, JSON of the wrong type, NaN and Infinity, extreme and
     negative intervals and timestamps, predicates and conditions that try
     subqueries, other tables, pg_sleep, set_config, pg_read_file...), and
     all arguments NULL;
  2. then, for --seconds more, random combinations (seeded: the
     same seed gives the same calls in the same order).

Each call is its own transaction, under statement_timeout. Pass criteria:
  - no call crashes its backend (the connection survives; the server log
    has no "terminated by signal", PANIC or TRAP);
  - every failure is a clean ERROR with a SQLSTATE that is not XX000 (an
    internal error: an elog(ERROR) or a failed check in C) and not a
    statement timeout (a pg_sleep that ran); the decoders of trait states
    given bytes that are not one raise XX001 (data_corrupted) by design;
  - a failed call changed nothing: a fingerprint of every persona table is
    the same before and after it;
  - at the end, every profile's event_count equals its events, and amcheck
    finds nothing on any persona relation.

The fixtures (traits, segments, actions, triggers, an experiment, people
with events, consent, decisions, messages) are made again before each
function, since a successful call may drop or forget them.

Prints "ok N - ..." / "not ok N - ..." lines; exits non-zero on a failure.
"""

import argparse
import json
import os
import random
import re
import sys
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ROLE_PREFIX = "fuzz_"

MB = "x" * (1 << 20)

# Hostile text, by what the argument names.
PREDICATES = [
    "purchases >= 1",
    "(SELECT true)",
    "EXISTS (SELECT 1 FROM pg_authid)",
    "profile_id IN (SELECT profile_id FROM persona.events)",
    "pg_sleep(10) IS NOT NULL",
    "set_config('persona.maintenance', 'on', false) = 'on'",
    "pg_read_file('/etc/passwd') <> ''",
    "lo_import('/etc/passwd') > 0",
    "pg_terminate_backend(pg_backend_pid())",
    "query_to_xml('SELECT 1', true, true, '') IS NOT NULL",
    "nextval('persona.event_id_seq') > 0",
    "random() < 0.5",
    "now() > '2000-01-01'",
    "current_setting('is_superuser') = 'on'",
    "persona.events.event_id > 0",
    "pg_catalog.pg_authid.rolname = 'postgres'",
    "true; DROP TABLE persona.events",
    "true) OR (true",
    "true --",
    "/* */ true",
    "$$x$$ = 'x'",
    "spent / 0 > 1",
    "(traits->>'city')::int > 1",
    "traits->>'city' = 'Mumbai' AND spent > 10",
    "context->>'page' = 'checkout'",
    "event->>'event_type' = 'cart'",
    "(event->'properties'->>'amount')::numeric > 1",
    "persona_forget(user_id) > 0",
    "persona_track('x', 'y') > 0",
    "ROW(1, 2) IS NOT NULL",
    "ARRAY[purchases] = ARRAY[1]",
    "CASE WHEN purchases > 0 THEN true END",
    "purchases",
    "NULL",
    "1",
    "'t'",
    "unknown_column > 1",
    "(" * 5000 + "true" + ")" * 5000,
    " AND ".join(["purchases >= 1"] * 5000),
    "NOT " * 9000 + "true",
    "1" + " + 1" * 9000 + " > 0",
    "coalesce(" * 3000 + "true" + ")" * 3000,
    "CASE WHEN true THEN " * 3000 + "true" + " END" * 3000,
    "purchases >= 1 " + MB,
]
NAMES = ["x", "a'b", 'a"b', "x; DROP TABLE persona.events; --", " ", "ü名", "n" * 200,
         "segment:vip:enter", "persona.events", "%", "_"]
USER_IDS = ["u1", "new-" + "x", "a'b", "", " ", "x" * 300, "anon1", MB]
EVENT_TYPES = ["purchase", "cart", "", "a'b", "segment:vip:enter", "segment:vip:exit",
               "segment:nope:enter", "segment::enter", "segment:vip", "x" * 300]
AGGREGATES = ["count", "sum", "avg", "min", "max", "first", "last", "count_distinct", "COUNT",
              "sum; DROP TABLE persona.events", "percentile"]
CHANNELS = ["push", "email", "sms", "", "a'b", "x" * 300]
OUTCOMES = ["impression", "click", "conversion", "dismiss", "ignore", "CLICK", "buy", ""]
PROPERTIES = ["amount", "sku", "", "a'b", "a.b", "{a,b}", "x" * 300]
ACTIONS = ["remind", "banner", "nope", "a'b"]
SEGMENTS = ["vip", "nope", "a'b"]
EXPERIMENTS = ["exp1", "nope", "a'b"]
TRIGGERS = ["cart_remind", "nope", "a'b"]
TRAITS = ["purchases", "spent", "nope", "profile_id", "a'b"]
GENERIC_TEXT = [None, "", MB, "a'b", "x; SELECT pg_sleep(10); --", "\\", "$$", "{{", "ü名"]

JSON = [None, "null", "[]", '"s"', "1", "true", "{}", '{"a": null}', "[" * 5000 + "]" * 5000,
        '{"k": "' + MB + '"}', '{"amount": "NaN"}', '{"amount": 1e300}', '{"amount": -1e-300}',
        '{"amount": {"nested": [1, 2]}}', '{"": ""}', '{"first_name": null, "city": "Mumbai"}',
        '{"text": "{{"}', '{"text": "{{purchases}} {{nope}} {{p[x].y}} {{}}"}',
        '{"text": "' + "{{purchases}}" * 20000 + '"}', '{"timezone": "Mars/Olympus"}',
        '{"geo": {"country": 1}}', '{"priority": "high", "channel": 7}',
        '{"page": "checkout", "text": "{{context.page}}"}']
# persona_update_action's changes: every field, with values of every wrong kind.
CHANGES = [
    json.dumps({field: value})
    for field in ("channel", "content", "segment", "condition", "priority", "value", "cap_per_day",
                  "cooldown", "starts_at", "ends_at", "paused", "action_id", "name", "")
    for value in (None, "", "x", "a'b", 1e300, -1, 2147483648, "NaN", "infinity", "-178000000 years",
                  {"text": "{{"}, [1], True, "pg_sleep(10) IS NOT NULL", "(SELECT true)", "spent > 1")
] + ['{"priority": 1, "priority": "x"}', '{"paused": "yes", "ends_at": "2000-01-01"}']

TIMESTAMPS = [None, "infinity", "-infinity", "4713-01-01 00:00 BC", "294276-12-31 23:59:59",
              "epoch", "2000-01-01", "2100-01-01"]
INTERVALS = [None, "0", "-1 day", "-178000000 years", "178000000 years", "1 microsecond",
             "10 years", "1 minute", "2147483647 days", "-2147483648 days",
             "2562047788 hours", "1 month -30 days"]
INTS = [None, 0, -1, 1, 3, 2147483647, -2147483648]
BIGINTS = [None, 0, -1, 1, 9223372036854775807, -9223372036854775808]
FLOATS = [None, "NaN", "Infinity", "-Infinity", "-0", "1e308", "-1e308", "5e-324", "0.5", "1", "100"]
BOOLS = [None, True, False]
BIGINT_ARRAYS = [None, "{}", "{NULL}", "{-1}", "{1,1,1}", "{9223372036854775807}",
                 "{" + ",".join(str(i) for i in range(1, 100001)) + "}"]
TEXT_ARRAYS = [None, "{}", "{NULL}", '{"",""}', "{push,email}", "{" + "x," * 10000 + "x}"]

# Hostile values by argument name, then by type.
BY_NAME = {
    "user_id": USER_IDS, "anonymous_id": USER_IDS, "id": USER_IDS,
    "event_type": EVENT_TYPES, "on_event": EVENT_TYPES, "conversion_event": EVENT_TYPES,
    "target_event": EVENT_TYPES,
    "aggregate": AGGREGATES, "channel": CHANNELS, "outcome": OUTCOMES,
    "property": PROPERTIES, "key_column": PROPERTIES,
    "predicate": PREDICATES, "condition": PREDICATES,
    "action": ACTIONS, "segment": SEGMENTS, "experiment": EXPERIMENTS,
    "name": NAMES + TRAITS + SEGMENTS + ACTIONS + EXPERIMENTS + TRIGGERS,
    "changes": CHANGES,
}
BY_TYPE = {
    "text": GENERIC_TEXT, "jsonb": JSON, "json": JSON,
    "timestamp with time zone": TIMESTAMPS, "interval": INTERVALS,
    "integer": INTS, "bigint": BIGINTS, "smallint": [None, 0, -1, 32767],
    "double precision": FLOATS, "numeric": [None, "NaN", "1e100", "-1"],
    "boolean": BOOLS, "bigint[]": BIGINT_ARRAYS, "text[]": TEXT_ARRAYS,
}

# Well-formed values, by argument name and function, then by type.
GOOD_BY_NAME = {
    "user_id": "u1", "anonymous_id": None, "id": "u1", "event_type": "purchase",
    "on_event": "cart", "conversion_event": "purchase", "aggregate": "count",
    "channel": "push", "outcome": "click", "property": None, "predicate": "purchases >= 1",
    "condition": None, "action": "remind", "segment": "vip", "experiment": "exp1",
    "properties": '{"amount": 5}', "traits": '{"city": "Pune"}', "context": "{}",
    "content": '{"text": "hi {{first_name}}"}', "granted": True, "message_ids": "{1,2}",
    "message_id": 1, "decision_id": 1, "n": 1, "lease": "30 seconds", "delay": "0",
    "time_window": None, "retry": True, "error": "boom", "value": None,
    "holdout_pct": "0.1", "priority": 0, "paused": True, "changes": '{"priority": 1}',
    "since": None,
}
GOOD_BY_TYPE = {
    "text": "x", "jsonb": "{}", "json": "{}", "timestamp with time zone": None,
    "interval": "1 day", "integer": 1, "bigint": 1, "smallint": 1,
    "double precision": "1", "numeric": "1", "boolean": True, "bigint[]": "{1}",
    "text[]": "{push}", "bytea": None,
}
# Names that create or drop an object of the function's own kind.
GOOD_NAME = {
    "trait": "t_fuzz", "segment": "s_fuzz", "action": "a_fuzz", "trigger": "g_fuzz",
    "experiment": "e_fuzz",
}

# Functions that drop events on purpose (never committed by the random pass).
RETENTION = {"persona.drop_events_before"}

FIXTURES = """
SET client_min_messages = warning;
SELECT persona_define_trait('purchases', 'count', 'purchase')
 WHERE NOT EXISTS (SELECT FROM persona.trait_defs WHERE name = 'purchases');
SELECT persona_define_trait('spent', 'sum', 'purchase', 'amount')
 WHERE NOT EXISTS (SELECT FROM persona.trait_defs WHERE name = 'spent');
SELECT persona_define_trait('last_sku', 'last', 'cart', 'sku', '7 days')
 WHERE NOT EXISTS (SELECT FROM persona.trait_defs WHERE name = 'last_sku');
SELECT persona_create_segment('vip', 'purchases >= 2 AND spent > 10')
 WHERE NOT EXISTS (SELECT FROM persona.segments WHERE name = 'vip');
SELECT persona_create_action('remind', 'push', '{"text": "{{last_sku}} waits, {{first_name}}"}')
 WHERE NOT EXISTS (SELECT FROM persona.actions WHERE name = 'remind');
SELECT persona_create_action('banner', 'web', '{"text": "hi"}', 'vip', 'spent > 1', 1, 2, 5, '1 hour')
 WHERE NOT EXISTS (SELECT FROM persona.actions WHERE name = 'banner');
SELECT persona_create_trigger('cart_remind', 'cart', 'remind', NULL, '0')
 WHERE NOT EXISTS (SELECT FROM persona.triggers WHERE name = 'cart_remind');
SELECT persona_create_trigger('vip_hello', 'segment:vip:enter', 'remind')
 WHERE NOT EXISTS (SELECT FROM persona.triggers WHERE name = 'vip_hello');
SELECT persona_create_experiment('exp1', 0.2, 'banner')
 WHERE NOT EXISTS (SELECT FROM persona.experiments WHERE name = 'exp1');
SELECT persona_track('u' || i, CASE WHEN i % 3 = 0 THEN 'cart' ELSE 'purchase' END,
                     jsonb_build_object('amount', i, 'sku', 's' || i), now() - i * interval '1 hour')
  FROM generate_series(1, 20) AS i
 WHERE NOT EXISTS (SELECT FROM persona.identities WHERE id = 'u' || i);
SELECT persona_identify('u1', '{"first_name": "Ann", "city": "Mumbai"}', 'anon1');
SELECT persona_set_consent('u2', 'push', false);
SELECT count(*) FROM persona_decide('u1', '{"page": "checkout"}');
"""


def sql_literal(v):
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def show(v):
    s = "NULL" if v is None else repr(v)
    return s if len(s) <= 60 else s[:40] + "...(%d chars)" % len(s)


class Battery:
    def __init__(self, args):
        self.args = args
        self.n = 0
        self.failed = 0
        self.findings = []
        self.calls = 0
        self.errors = {}
        self.conn = None
        self.log = args.log
        self.log_start = os.path.getsize(args.log) if args.log and os.path.exists(args.log) else 0
        self.rng = random.Random(args.seed)
        self.baseline = None

    def ok(self, cond, what):
        self.n += 1
        if cond:
            print("ok %d - %s" % (self.n, what), flush=True)
        else:
            self.failed += 1
            print("not ok %d - %s" % (self.n, what), flush=True)
        return cond

    def connect(self):
        for _ in range(600):
            try:
                self.conn = psycopg.connect(dbname=self.args.db, autocommit=True)
                self.conn.execute("SET statement_timeout = '%ds'" % self.args.timeout)
                self.conn.execute("SET client_min_messages = error")
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise SystemExit("fuzz: cannot connect to %s" % self.args.db)

    def fixtures(self):
        """Makes the fixtures again; a statement that fails (the random pass
        may have linked anon1 elsewhere) is skipped."""
        for stmt in FIXTURES.split(";\n"):
            if not stmt.strip():
                continue
            try:
                self.conn.execute(stmt)
            except psycopg.Error:
                if self.conn.broken:
                    self.connect()

    def q(self, text):
        return self.conn.execute(text).fetchall()

    def setup(self):
        self.connect()
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS persona")
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        self.fixtures()
        # The roles of the docs/roles.md recipe, under names of this test's own.
        doc = open(os.path.join(ROOT, "docs", "roles.md")).read()
        recipe = re.search(r"## The recipe.*?```sql\n(.*?)```", doc, re.S).group(1)
        recipe = re.sub(r"\bpersona_(ingest|decider|worker|reader|admin)\b", ROLE_PREFIX + r"\1", recipe)
        self.roles = re.findall(r"CREATE ROLE (\w+)", recipe)
        for r in self.roles:
            self.conn.execute("DROP ROLE IF EXISTS %s" % r)
        self.conn.execute(recipe)
        # bytea arguments are trait states: real ones of the fixtures, cut
        # short, with bits flipped and bytes replaced, and random bytes
        # (seeded).
        states = [bytes(r[0]) for r in self.q(
            "SELECT computed_state FROM persona.profiles WHERE computed_state IS NOT NULL"
            " ORDER BY length(computed_state) DESC LIMIT 3")]
        pool = [None, b"", b"\x00", b"\xff" * 64]
        for st in states:
            pool.append(st)
            pool += [st[:k] for k in sorted({1, 2, 4, 8, len(st) // 2, len(st) - 1}) if 0 < k < len(st)]
            for _ in range(12):
                b = bytearray(st)
                b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
                pool.append(bytes(b))
            for _ in range(12):
                b = bytearray(st)
                for _ in range(self.rng.choice([1, 2, 4])):
                    b[self.rng.randrange(len(b))] = self.rng.randrange(256)
                pool.append(bytes(b))
            pool.append(st + st)
        pool += [bytes(self.rng.randrange(256) for _ in range(self.rng.choice([3, 16, 100, 5000])))
                 for _ in range(10)]
        BY_TYPE["bytea"] = ["\\x" + v.hex() if v is not None else None for v in pool]
        GOOD_BY_TYPE["bytea"] = BY_TYPE["bytea"][4] if states else None
        self.ok(True, "setup: persona, fixtures and the roles of docs/roles.md (%s)" % ", ".join(self.roles))

    def functions(self):
        rows = self.q("""
            SELECT p.oid::regprocedure::text, p.oid::regproc::text,
                   coalesce(p.proargnames, '{}'),
                   array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, i) ORDER BY i),
                   array(SELECT r FROM unnest(%s::text[]) AS r
                          WHERE has_function_privilege(r, p.oid, 'EXECUTE'))
              FROM pg_proc AS p
              JOIN pg_depend AS d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
              JOIN pg_extension AS x ON x.oid = d.refobjid AND x.extname = 'persona'
             WHERE p.prokind = 'f' AND p.prorettype <> 'trigger'::regtype
               AND (p.proname LIKE 'persona\\_%%'
                    OR 'bytea'::regtype = ANY (p.proargtypes)
                    OR EXISTS (SELECT FROM unnest(%s::text[]) AS r
                                WHERE has_function_privilege(r, p.oid, 'EXECUTE')))
             ORDER BY 1""".replace("%s", sql_literal("{" + ",".join(self.roles) + "}")).replace("%%", "%"))
        fns = []
        for sig, name, argnames, types, roles in rows:
            if any(t in ("internal", "anyelement", "anyarray", "cstring") for t in types):
                continue
            if self.args.only and not re.search(self.args.only, name):
                continue
            argnames = list(argnames) + [""] * (len(types) - len(argnames))
            fns.append((sig, name, argnames, types, roles))
        return fns

    def good(self, fname, argname, typ, pos):
        kind = next((k for k in GOOD_NAME if k in fname), None)
        if argname == "name" and kind and ("create" in fname or "define" in fname):
            return GOOD_NAME[kind]
        if argname == "name":
            return {"trait": "purchases", "segment": "vip", "action": "remind", "trigger": "cart_remind",
                    "experiment": "exp1"}.get(kind, "exp1")
        if argname in GOOD_BY_NAME:
            return GOOD_BY_NAME[argname]
        return GOOD_BY_TYPE.get(typ)

    def hostile(self, argname, typ):
        vals = list(BY_NAME.get(argname, [])) if typ in ("text", "jsonb") else []
        vals += BY_TYPE.get(typ, [None])
        return vals

    def fingerprint(self):
        tables = self.q("""SELECT c.oid::regclass::text FROM pg_class AS c
                            WHERE c.relnamespace = 'persona'::regnamespace AND c.relkind IN ('r', 'p')
                              AND NOT c.relispartition ORDER BY 1""")
        parts = ["(SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)), 0) FROM %s AS t)" % t for (t,) in tables]
        return self.q("SELECT " + " || '/' || ".join(parts))[0][0]

    def alive(self):
        try:
            self.conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def call(self, fn, args, role, tx):
        """One call. tx: inside BEGIN ... ROLLBACK (the systematic pass, so
        that one call's success does not change what the next one meets);
        otherwise its own committed transaction."""
        sig, name, argnames, types, roles = fn
        text = "SELECT * FROM %s(%s)" % (name, ", ".join(
            "%s::%s" % (sql_literal(v), t) for v, t in zip(args, types)))
        desc = "%s(%s)%s" % (name, ", ".join(show(v) for v in args), " as " + role if role else "")
        self.calls += 1
        before = None
        if self.args.check_writes:
            if not tx or self.baseline is None:
                self.baseline = self.fingerprint()
            before = self.baseline
        try:
            if tx:
                self.conn.execute("BEGIN")
            if role:
                self.conn.execute("SET LOCAL ROLE " + role if tx else "SET ROLE " + role)
            self.conn.execute(text).fetchall()
            state = "ok"
        except psycopg.Error as e:
            state = "lost" if self.conn.broken else "error"
            err = e
        except ValueError as e:
            # The result could not be decoded (UnicodeDecodeError): the
            # function returned text that is not valid UTF-8.
            self.findings.append("undecodable result (invalid text?): %s: %s" % (desc, e))
            state = "ok"
        if state != "lost":
            try:
                if tx:
                    self.conn.execute("ROLLBACK")
                elif role:
                    self.conn.execute("RESET ROLE")
            except psycopg.Error:
                pass
        if state == "lost" or not self.alive():
            self.findings.append("backend lost: %s: %s" % (desc, err if state == "lost" else "connection broken"))
            self.connect()
            self.baseline = None
            return
        if state == "ok":
            return
        code = err.sqlstate
        if code is None:
            # Raised by the client, not the server: a timestamp beyond
            # Python's year 9999 is a valid PostgreSQL value (to 294276 AD)
            # that psycopg cannot represent; anything else is a finding.
            if isinstance(err, psycopg.DataError) and "year" in str(err):
                return
            self.findings.append("result the client cannot read: %s: %s" % (desc, err))
            return
        self.errors[(name, code)] = self.errors.get((name, code), 0) + 1
        msg = (err.diag.message_primary or str(err)).strip()
        if code is None:
            self.findings.append("no SQLSTATE: %s: %s" % (desc, msg))
        elif code == "XX000":
            self.findings.append("internal error %s: %s: %s" % (code, desc, msg))
        elif code == "57014":
            self.findings.append("timed out (a pg_sleep ran?): %s" % desc)
        if before is not None and self.fingerprint() != before:
            self.findings.append("a failed call changed data: %s: %s %s" % (desc, code, msg))
            self.baseline = None

    def run(self):
        fns = self.functions()
        self.ok(len(fns) > 0, "%d functions to fuzz, read from pg_proc" % len(fns))
        # 1. Systematic: one argument at a time, as the superuser and each role that may call.
        for fn in fns:
            sig, name, argnames, types, roles = fn
            self.fixtures()
            self.baseline = None
            base = [self.good(name, a, t, i) for i, (a, t) in enumerate(zip(argnames, types))]
            for role in [None] + list(roles):
                self.call(fn, base, role, True)
                self.call(fn, [None] * len(types), role, True)
                for i, (a, t) in enumerate(zip(argnames, types)):
                    for v in self.hostile(a, t):
                        if role and self.rng.random() > self.args.role_share:
                            continue
                        args = list(base)
                        args[i] = v
                        self.call(fn, args, role, True)
        systematic = self.calls
        deadline = time.time() + self.args.seconds
        # 2. Random combinations until the time is up.
        # Retention drops events and leaves profiles as they were, by design
        # (docs/operations.md): committed, it would void the event_count
        # check at the end. Its hostile arguments had the pass above, in
        # transactions rolled back.
        committable = [f for f in fns if f[1] not in RETENTION]
        while time.time() < deadline:
            fn = self.rng.choice(committable)
            sig, name, argnames, types, roles = fn
            if self.rng.random() < 0.05:
                self.fixtures()
            args = []
            for i, (a, t) in enumerate(zip(argnames, types)):
                pool = self.hostile(a, t)
                args.append(self.rng.choice(pool) if self.rng.random() < 0.6
                            else self.good(name, a, t, i))
            role = self.rng.choice([None] + list(roles))
            self.call(fn, args, role, False)
        self.ok(True, "%d calls (%d systematic, %d random, seed %d), %d clean errors" % (
            self.calls, systematic, self.calls - systematic, self.args.seed,
            sum(self.errors.values())))
        for (name, code), k in sorted(self.errors.items()):
            print("# %-32s %s x %d" % (name, code, k))

    def finish(self):
        crashes = [f for f in self.findings if f.startswith("backend lost")]
        internal = [f for f in self.findings if not f.startswith("backend lost")]
        for f in self.findings[:100]:
            print("# finding: " + f[:2000])
        if len(self.findings) > 100:
            print("# ... and %d more findings" % (len(self.findings) - 100))
        self.ok(not crashes, "no call crashed its backend (%d did)" % len(crashes))
        self.ok(not internal, "every failure a clean ERROR with a SQLSTATE, none internal, "
                "no timeout, nothing half-written (%d findings)" % len(internal))
        if self.log:
            with open(self.log, errors="replace") as f:
                f.seek(self.log_start)
                bad = [l for l in f if re.search(r"terminated by signal|PANIC|TRAP:", l)]
            for l in bad[:20]:
                print("# log: " + l.rstrip()[:500])
            self.ok(not bad, "the server log shows no backend terminated by a signal, PANIC or TRAP")
        self.connect()
        self.ok(self.q("""SELECT count(*) FROM persona.profiles AS p
                           WHERE p.event_count <> (SELECT count(*) FROM persona.events AS e
                                                    WHERE e.profile_id = p.profile_id)""")[0][0] == 0,
                "after the battery, every profile's event_count equals its events")
        bad = self.q("""
            SELECT c.relname || ': ' || v.msg
              FROM pg_class AS c, LATERAL verify_heapam(c.oid, check_toast => true) AS v
             WHERE c.relnamespace = 'persona'::regnamespace AND c.relkind IN ('r', 'm')""")
        self.q("""SELECT count(bt_index_check(c.oid, true))
                    FROM pg_class AS c JOIN pg_am AS a ON a.oid = c.relam
                   WHERE c.relnamespace = 'persona'::regnamespace AND c.relkind = 'i'
                     AND a.amname = 'btree'""")
        self.ok(not bad, "amcheck finds nothing on any persona relation %s" % bad[:5])
        print("1..%d" % self.n)
        return 1 if self.failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True)
    p.add_argument("--log", help="the server log, checked for crashes from its current end")
    p.add_argument("--seconds", type=float, default=10, help="time for random calls after the systematic pass")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=int, default=5, help="statement_timeout, seconds")
    p.add_argument("--role-share", type=float, default=1.0,
                   help="share of the systematic hostile calls repeated as each role (0..1)")
    p.add_argument("--only", help="fuzz only the functions whose name matches this regular expression")
    p.add_argument("--no-check-writes", dest="check_writes", action="store_false",
                   help="skip the before/after fingerprint of failed calls")
    b = Battery(p.parse_args())
    b.setup()
    b.run()
    sys.exit(b.finish())


if __name__ == "__main__":
    main()
