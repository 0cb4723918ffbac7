-- The installed shape of persona: what BI queries, application code and a
-- DBA's security review rely on (docs: API.md sections 1, 2 and 8).
-- Run by pg_prove in a database where CREATE EXTENSION persona and pgtap ran.
BEGIN;
SELECT plan(27);

-- The schema the API functions were installed into (default public).
CREATE TEMP TABLE ext AS
SELECT e.oid AS ext_oid, e.extnamespace AS ext_schema
  FROM pg_catalog.pg_extension AS e
 WHERE e.extname = 'persona';

-- ---------------------------------------------------------------------
-- Relations for BI joins
-- ---------------------------------------------------------------------

SELECT has_schema('persona', 'data lives in the schema persona');

SELECT set_has(
    $$SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
        FROM pg_catalog.pg_attribute AS a
       WHERE a.attrelid = 'persona.events'::regclass AND a.attnum > 0 AND NOT a.attisdropped$$,
    $$VALUES ('event_id', 'bigint'), ('profile_id', 'bigint'), ('user_id', 'text'),
             ('anonymous_id', 'text'), ('event_type', 'text'), ('properties', 'jsonb'),
             ('context', 'jsonb'), ('occurred_at', 'timestamp with time zone')$$,
    'persona.events has the columns of persona_track, with their types, plus event_id and profile_id');

SELECT set_has(
    $$SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
        FROM pg_catalog.pg_attribute AS a
       WHERE a.attrelid = 'persona.profiles'::regclass AND a.attnum > 0 AND NOT a.attisdropped$$,
    $$VALUES ('profile_id', 'bigint'), ('user_id', 'text'), ('traits', 'jsonb'),
             ('first_seen', 'timestamp with time zone'), ('last_seen', 'timestamp with time zone'),
             ('event_count', 'bigint')$$,
    'persona.profiles has profile_id, user_id, traits, first_seen, last_seen, event_count with the documented types');

SELECT set_has(
    $$SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
        FROM pg_catalog.pg_attribute AS a
       WHERE a.attrelid = 'persona.identities'::regclass AND a.attnum > 0 AND NOT a.attisdropped$$,
    $$VALUES ('id', 'text'), ('profile_id', 'bigint')$$,
    'persona.identities maps id (text) to profile_id (bigint)');

SELECT col_is_pk('persona', 'profiles', 'profile_id',
    'persona.profiles has one row per profile_id');

SELECT col_is_pk('persona', 'identities', 'id',
    'an id (user or anonymous, one namespace) resolves to exactly one profile');

SELECT is(pg_catalog.pg_get_partkeydef('persona.events'::regclass), 'RANGE (occurred_at)',
    'persona.events is range-partitioned by occurred_at (old events are dropped by time)');
SELECT is(
    (SELECT count(*) FROM pg_catalog.pg_inherits AS h
      WHERE h.inhparent = 'persona.events'::regclass
        AND NOT EXISTS (
            SELECT FROM pg_catalog.pg_index AS i
             WHERE i.indrelid = h.inhrelid AND i.indisprimary
               AND ARRAY['profile_id', 'occurred_at']::name[] <@
                   (SELECT array_agg(a.attname) FROM pg_catalog.pg_attribute AS a
                     WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)))),
    0::bigint,
    'every partition of persona.events has a primary key containing profile_id and occurred_at (distribution and partition keys)');

-- ---------------------------------------------------------------------
-- The API functions, exactly as documented (names matter: callers use
-- named arguments such as anonymous_id => ...)
-- ---------------------------------------------------------------------

CREATE TEMP TABLE api (name text, signature text);
INSERT INTO api VALUES
    ('persona_track',
     'user_id text, event_type text, properties jsonb DEFAULT ''{}''::jsonb, '
     'occurred_at timestamp with time zone DEFAULT now(), context jsonb DEFAULT ''{}''::jsonb, '
     'anonymous_id text DEFAULT NULL::text -> bigint'),
    ('persona_identify',
     'user_id text, traits jsonb DEFAULT ''{}''::jsonb, anonymous_id text DEFAULT NULL::text -> bigint'),
    ('persona_alias', 'user_id text, anonymous_id text -> bigint'),
    ('persona_profile', 'user_id text -> jsonb'),
    ('persona_forget', 'user_id text -> bigint');

-- One test per function: all its overloads in the extension schema, as text.
SELECT is(
    (SELECT string_agg(pg_catalog.pg_get_function_arguments(p.oid) || ' -> '
                       || pg_catalog.pg_get_function_result(p.oid), ' | ')
       FROM pg_catalog.pg_proc AS p, ext
      WHERE p.pronamespace = ext.ext_schema AND p.proname = api.name),
    api.signature,
    format('%s exists once in the extension schema with the API signature', api.name))
  FROM api
 ORDER BY api.name;

-- ---------------------------------------------------------------------
-- Security: what a caller with EXECUTE only can and cannot do
-- ---------------------------------------------------------------------

-- The functions that write, by the contract.
SELECT is(
    ARRAY(SELECT p.proname::text
            FROM pg_catalog.pg_proc AS p, ext
           WHERE p.pronamespace = ext.ext_schema
             AND p.proname IN ('persona_track', 'persona_identify', 'persona_alias', 'persona_forget')
             AND p.prosecdef
             AND 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig)
           ORDER BY 1),
    ARRAY['persona_alias', 'persona_forget', 'persona_identify', 'persona_track'],
    'track, identify, alias and forget are SECURITY DEFINER with search_path pinned to pg_catalog, pg_temp');

-- Every VOLATILE API function (anything that may write), present and future.
SELECT is(
    ARRAY(SELECT p.oid::regprocedure::text
            FROM pg_catalog.pg_proc AS p, ext
           WHERE p.pronamespace = ext.ext_schema
             AND p.proname LIKE 'persona\_%'
             AND p.provolatile = 'v'
             AND NOT (p.prosecdef AND 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig))
           ORDER BY 1),
    '{}'::text[],
    'no VOLATILE persona_* function runs without SECURITY DEFINER and a pinned search_path');

-- A SECURITY DEFINER function with a caller-controlled search_path can be
-- hijacked: every one in the extension (either schema) pins it.
SELECT is(
    ARRAY(SELECT p.oid::regprocedure::text
            FROM pg_catalog.pg_depend AS d
            JOIN pg_catalog.pg_proc AS p ON p.oid = d.objid, ext
           WHERE d.classid = 'pg_proc'::regclass
             AND d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.ext_oid
             AND d.deptype = 'e'
             AND p.prosecdef
             AND NOT ('search_path=pg_catalog, pg_temp' = ANY (coalesce(p.proconfig, '{}')))
           ORDER BY 1),
    '{}'::text[],
    'every SECURITY DEFINER function of the extension pins search_path = pg_catalog, pg_temp');

SELECT is(
    ARRAY(SELECT p.oid::regprocedure::text
            FROM pg_catalog.pg_proc AS p, ext
           WHERE p.pronamespace = ext.ext_schema
             AND p.proname LIKE 'persona\_%'
             AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE')
           ORDER BY 1),
    '{}'::text[],
    'PUBLIC cannot EXECUTE any persona_* function (access goes through the roles in docs/)');

SELECT is(
    ARRAY(SELECT p.oid::regprocedure::text
            FROM pg_catalog.pg_depend AS d
            JOIN pg_catalog.pg_proc AS p ON p.oid = d.objid, ext
           WHERE d.classid = 'pg_proc'::regclass
             AND d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.ext_oid
             AND d.deptype = 'e'
             AND p.prosecdef
             AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE')
           ORDER BY 1),
    '{}'::text[],
    'PUBLIC cannot EXECUTE any SECURITY DEFINER function of the extension');

SELECT is(
    ARRAY(SELECT c.oid::regclass::text
            FROM pg_catalog.pg_class AS c
           WHERE c.relnamespace = 'persona'::regnamespace
             AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
             AND pg_catalog.has_table_privilege('public', c.oid,
                                                'INSERT, UPDATE, DELETE, TRUNCATE')
           ORDER BY 1),
    '{}'::text[],
    'PUBLIC cannot write to any persona relation');

-- ---------------------------------------------------------------------
-- Catalog hygiene
-- ---------------------------------------------------------------------

SELECT is(
    ARRAY(SELECT pg_catalog.pg_describe_object(d.classid, d.objid, 0)
            FROM pg_catalog.pg_depend AS d, ext
           WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.ext_oid
             AND d.deptype = 'e'
             AND pg_catalog.obj_description(d.objid, d.classid::regclass::name) IS NULL
           ORDER BY 1),
    '{}'::text[],
    'every object of the extension has a COMMENT');

-- Objects in schema persona, and persona_* functions in the extension schema,
-- that are not members of the extension (DROP EXTENSION would leave them, or
-- refuse to run, and pg_dump would dump them as user objects).
CREATE TEMP VIEW not_owned AS
SELECT pg_catalog.pg_describe_object(o.classid, o.objid, 0) AS object
  FROM (SELECT 'pg_class'::regclass AS classid, c.oid AS objid
          FROM pg_catalog.pg_class AS c
         WHERE c.relnamespace = 'persona'::regnamespace
           AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
        UNION ALL
        SELECT 'pg_proc'::regclass, p.oid
          FROM pg_catalog.pg_proc AS p, ext
         WHERE p.pronamespace = 'persona'::regnamespace
            OR (p.pronamespace = ext.ext_schema AND p.proname LIKE 'persona\_%')
        UNION ALL
        SELECT 'pg_type'::regclass, t.oid
          FROM pg_catalog.pg_type AS t
         WHERE t.typnamespace = 'persona'::regnamespace
           AND t.typrelid = 0            -- not a table's row type
           AND t.typelem = 0             -- not an array type
       ) AS o, ext
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_depend AS d
                    WHERE d.classid = o.classid AND d.objid = o.objid
                      AND d.refclassid = 'pg_extension'::regclass
                      AND d.refobjid = ext.ext_oid AND d.deptype = 'e');

SELECT is(ARRAY(SELECT object FROM not_owned ORDER BY 1), '{}'::text[],
    'the extension owns every object in schema persona and every persona_* function');

-- Run-time generation keeps that true: ingest, merge, and a computed trait
-- (which regenerates the persona.traits view).
SELECT lives_ok($$
    SELECT persona_track(NULL, 'view', anonymous_id => 'tap-anon');
    SELECT persona_track('tap-user', 'purchase', '{"amount": 10}');
    SELECT persona_identify('tap-user', '{"plan": "pro"}', 'tap-anon');
    SELECT persona_define_trait('tap_purchases', 'count', 'purchase');
$$, 'ingest, identify and persona_define_trait run');

SELECT is(ARRAY(SELECT object FROM not_owned ORDER BY 1), '{}'::text[],
    'after run-time generation the extension still owns everything in schema persona');

-- ---------------------------------------------------------------------
-- DROP EXTENSION leaves nothing behind (last: the final ROLLBACK undoes
-- it; a savepoint would also roll back pgTAP's own record of these tests)
-- ---------------------------------------------------------------------

DROP VIEW not_owned;   -- it names schema persona: ours, not the extension's

SELECT lives_ok('DROP EXTENSION persona',
    'DROP EXTENSION persona succeeds without CASCADE, with data and generated objects present');

SELECT hasnt_schema('persona', 'DROP EXTENSION removes the schema persona');

SELECT is(
    ARRAY(SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc AS p
           WHERE p.proname LIKE 'persona\_%' ORDER BY 1),
    '{}'::text[],
    'DROP EXTENSION removes every persona_* function');

SELECT is(
    ARRAY(SELECT n.nspname || '.' || c.relname
            FROM pg_catalog.pg_class AS c
            JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
           WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
             AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
             AND c.relname LIKE '%persona%'
           ORDER BY 1),
    '{}'::text[],
    'DROP EXTENSION leaves no relation named after persona in any schema');

SELECT * FROM finish();
ROLLBACK;
