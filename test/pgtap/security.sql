-- Attacks on persona as the roles of docs/roles.md would try them, and
-- their siblings: each must be refused, or be harmless.  The escalation
-- attacks run a function that makes the attacker superuser; each test checks
-- both the refusal and that the attacker is still not a superuser.
-- Run by pg_prove in a database where CREATE EXTENSION persona and pgtap ran.
BEGIN;
SELECT plan(67);

-- The recipe of docs/roles.md, under names of this test's own.
CREATE ROLE sec_ingest NOLOGIN;
GRANT USAGE ON SCHEMA persona TO sec_ingest;
GRANT INSERT ON persona.events TO sec_ingest;
GRANT USAGE ON SEQUENCE persona.event_id_seq TO sec_ingest;
GRANT EXECUTE ON FUNCTION persona_track(text, text, jsonb, timestamptz, jsonb, text),
                          persona_identify(text, jsonb, text),
                          persona_alias(text, text),
                          persona_set_consent(text, text, boolean) TO sec_ingest;
CREATE ROLE sec_decider NOLOGIN;
GRANT USAGE ON SCHEMA persona TO sec_decider;
GRANT EXECUTE ON FUNCTION persona_decide(text, jsonb, text, int),
                          persona_feedback(bigint, text, float8),
                          persona_message_feedback(bigint, text, float8),
                          persona_render(bigint),
                          persona_arm(text, text),
                          persona_best_send_time(text, timestamptz, text),
                          persona_best_channel(text, text[]) TO sec_decider;
CREATE ROLE sec_worker NOLOGIN;
GRANT USAGE ON SCHEMA persona TO sec_worker;
GRANT EXECUTE ON FUNCTION persona_claim(text, int, interval),
                          persona_ack(bigint[]),
                          persona_fail(bigint, text, boolean),
                          persona_message_feedback(bigint, text, float8),
                          persona_render(bigint) TO sec_worker;
CREATE ROLE sec_reader NOLOGIN;
GRANT USAGE ON SCHEMA persona TO sec_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA persona TO sec_reader;
GRANT EXECUTE ON FUNCTION persona_profile(text), persona_in_segment(text, text) TO sec_reader;
CREATE ROLE sec_admin NOLOGIN;
GRANT sec_ingest, sec_decider, sec_reader, sec_worker TO sec_admin;
-- More than the recipe grants: GRANT ALL includes TRIGGER and REFERENCES.
GRANT ALL ON ALL TABLES IN SCHEMA persona TO sec_admin;
GRANT ALL ON ALL SEQUENCES IN SCHEMA persona TO sec_admin;
GRANT EXECUTE ON FUNCTION persona_forget(text),
                          persona_define_trait(text, text, text, text, interval),
                          persona_drop_trait(text),
                          persona_create_segment(text, text),
                          persona_drop_segment(text),
                          persona_tick(),
                          persona_create_action(text, text, jsonb, text, text, int, float8, int, interval, timestamptz, timestamptz),
                          persona_update_action(text, jsonb),
                          persona_drop_action(text),
                          persona_create_trigger(text, text, text, text, interval),
                          persona_drop_trigger(text),
                          persona_link_content(text, regclass, text),
                          persona_send_campaign(text, text, text, text, int),
                          persona_cancel_campaign(text),
                          persona_campaign_report(text) TO sec_admin;
CREATE ROLE sec_nobody NOLOGIN;
-- The attacker: an administrator's login role, who may create functions.
CREATE ROLE sec_dba NOLOGIN;
GRANT sec_admin TO sec_dba;
GRANT CREATE ON SCHEMA public TO sec_dba;

CREATE FUNCTION pg_temp.is_super() RETURNS boolean LANGUAGE sql
    AS $$SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'sec_dba'$$;

SELECT persona_track('sec-u1', 'page_view', '{"n": "x"}', '2026-04-01 10:00+00');
SELECT persona_identify('sec-u1', '{"city": "Pune"}');

-- ---------------------------------------------------------------------
-- Escalation through what a predicate or condition can make run
-- ---------------------------------------------------------------------
SET ROLE sec_dba;
CREATE FUNCTION pg_temp.escalate(int) RETURNS boolean LANGUAGE plpgsql
    AS $$BEGIN EXECUTE 'ALTER ROLE sec_dba SUPERUSER'; RETURN true; END$$;
CREATE DOMAIN pg_temp.evil AS int CHECK (pg_temp.escalate(VALUE));
CREATE TYPE pg_temp.evil_row AS (a pg_temp.evil);
CREATE FUNCTION public.sec_evil_fn(int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
    AS $$BEGIN EXECUTE 'ALTER ROLE sec_dba SUPERUSER'; RETURN true; END$$;
CREATE FUNCTION public.sec_evil_row(pg_temp.evil_row) RETURNS boolean LANGUAGE sql IMMUTABLE
    AS 'SELECT true';
CREATE FUNCTION public.sec_evil_op(int, int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
    AS $$BEGIN EXECUTE 'ALTER ROLE sec_dba SUPERUSER'; RETURN true; END$$;
CREATE OPERATOR public.=== (leftarg = int, rightarg = int, function = public.sec_evil_op);

SELECT throws_ok($$SELECT persona_create_segment('x', $p$'1'::pg_temp.evil IS NOT NULL$p$)$$,
    '0A000', NULL, 'a segment predicate cannot cast to a domain (its CHECK runs user code)');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$'1'::evil IS NOT NULL$p$)$$,
    '0A000', NULL, 'nor to a domain named without its schema (found in pg_temp)');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$CAST(event_count AS pg_temp.evil) > 0$p$)$$,
    '0A000', NULL, 'nor with CAST ( AS )');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$'(1)'::pg_temp.evil_row IS NOT NULL$p$)$$,
    '0A000', NULL, 'nor to a composite type holding a domain (its input would run the CHECK while parsing)');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$'{1}'::pg_temp.evil[] IS NOT NULL$p$)$$,
    '0A000', NULL, 'nor to an array of a domain');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$public.sec_evil_row('(1)')$p$)$$,
    '0A000', NULL, 'nor call a function of another schema (its argument would be converted while parsing)');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$public.sec_evil_fn(1)$p$)$$,
    '0A000', NULL, 'nor an immutable function of its own');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$1 OPERATOR(public.===) 1$p$)$$,
    '0A000', NULL, 'nor an operator of its own');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$ROW(1)::pg_temp.evil_row IS NOT NULL$p$)$$,
    '0A000', NULL, 'nor a ROW() cast to its composite type');
SELECT throws_ok($$SELECT persona_create_action('x', 'web', '{}', condition => $p$'1'::pg_temp.evil IS NOT NULL$p$)$$,
    '0A000', NULL, 'an action condition cannot cast to a domain either');
SELECT throws_ok($$SELECT persona_create_action('x', 'web', '{}', condition => $p$(context->>'n')::pg_temp.evil > 0$p$)$$,
    '0A000', NULL, 'nor cast the context to one');
SELECT ok(NOT pg_temp.is_super(), 'after all of that, the administrator is still not a superuser');

-- Stored SQL written by hand is compiled again, never trusted.
SELECT persona_create_segment('sec_seg', 'event_count > 0');
UPDATE persona.segments SET predicate_sql = 'pg_temp.escalate(1)' WHERE name = 'sec_seg';
SELECT is((SELECT predicate_sql FROM persona.segments WHERE name = 'sec_seg'),
          '(s.event_count > 0)',
          'an UPDATE of a segment''s compiled SQL is replaced by the compilation of its predicate');
SELECT throws_ok($$UPDATE persona.segments SET predicate = 'pg_temp.escalate(1)' WHERE name = 'sec_seg'$$,
    '0A000', NULL, 'an UPDATE of a segment''s predicate is checked like a new one');
SELECT throws_ok($$INSERT INTO persona.segments (name, predicate, predicate_sql, reads, clock)
                   VALUES ('sec_hand', 'pg_temp.escalate(1)', 'true', '{}', false)$$,
    '0A000', NULL, 'so is a segment inserted by hand');
SELECT persona_create_action('sec_act', 'web', '{"t": "hi"}');
SELECT throws_ok($$SELECT persona_create_trigger('x', 'page_view', 'sec_act', condition => $p$(event->>'n')::pg_temp.evil > 0$p$)$$,
    '0A000', NULL, 'a trigger condition cannot cast the event to a domain');
SELECT throws_ok($$SELECT persona_create_trigger('x', 'page_view', 'sec_act', condition => $p$public.sec_evil_fn(1) > 0$p$)$$,
    '0A000', NULL, 'nor call a function of its own');
SELECT persona_create_trigger('sec_trig', 'page_view', 'sec_act', condition => 'event_count > 0');
UPDATE persona.triggers SET condition_sql = 'pg_temp.escalate(1)' WHERE name = 'sec_trig';
SELECT is((SELECT condition_sql FROM persona.triggers WHERE name = 'sec_trig'),
          '(s.event_count > 0)',
          'a trigger''s compiled condition written by hand is replaced by the compilation of its condition');
UPDATE persona.actions SET condition = 'event_count > 0', condition_sql = 'pg_temp.escalate(1)'
 WHERE name = 'sec_act';
SELECT is((SELECT condition_sql FROM persona.actions WHERE name = 'sec_act'),
          '(s.event_count > 0)',
          'an action''s compiled condition written by hand is replaced by the compilation of its condition');
SELECT throws_ok($$UPDATE persona.actions SET condition = 'pg_temp.escalate(1)' WHERE name = 'sec_act'$$,
    '0A000', NULL, 'an action''s condition written by hand is checked');

-- A trigger on persona's tables would run as the owner inside persona's functions.
CREATE FUNCTION pg_temp.evil_trigger() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN EXECUTE 'ALTER ROLE sec_dba SUPERUSER'; RETURN NEW; END$$;
SELECT throws_ok($$CREATE TRIGGER sec_evil BEFORE UPDATE ON persona.profiles
                   FOR EACH ROW EXECUTE FUNCTION pg_temp.evil_trigger()$$,
    '42501', NULL, 'an administrator granted ALL (TRIGGER included) cannot put a trigger on persona.profiles');
SELECT throws_ok($$CREATE TRIGGER sec_evil AFTER INSERT ON persona.events
                   FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.evil_trigger()$$,
    '42501', NULL, 'nor on persona.events');
SELECT persona_track('sec-u1', 'page_view', '{}', '2026-04-01 10:01+00');
SELECT ok(NOT pg_temp.is_super(), 'ingest as the owner ran no trigger of the administrator''s');
RESET ROLE;

-- ---------------------------------------------------------------------
-- Names that could mean something else in another session
-- ---------------------------------------------------------------------
SET ROLE sec_dba;
CREATE DOMAIN pg_temp.score AS int;
SELECT throws_ok($$SELECT persona_create_segment('x', '(1)::score::integer > 0')$$,
    '0A000', NULL, 'a temporary type is refused, so no stored predicate names one');
SELECT is((SELECT count(*) FROM persona.segments
            WHERE predicate_sql ~ 'pg_temp|score'), 0::bigint,
          'no stored predicate names a temporary object');
RESET ROLE;
-- (persona_create_segment also writes the clock segments' flip times into
-- persona.profiles, which persona.maintenance allows.)
SELECT is((SELECT p.proconfig FROM pg_proc AS p
            WHERE p.oid = 'persona_create_segment(text, text)'::regprocedure),
          ARRAY['search_path=pg_catalog, pg_temp', 'persona.maintenance=on'],
          'evaluating functions pin pg_catalog first and pg_temp last');
SELECT is((SELECT count(*) FROM pg_proc AS p
             JOIN pg_depend AS d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
             JOIN pg_extension AS x ON x.oid = d.refobjid AND x.extname = 'persona'
            WHERE p.prosecdef
              AND p.proconfig[1] IS DISTINCT FROM 'search_path=pg_catalog, pg_temp'
              OR p.prosecdef AND p.proconfig[2:] <> '{}'::text[]
                 AND p.proconfig[2:] <> ARRAY['persona.maintenance=on']),
          0::bigint, 'every SECURITY DEFINER function of persona pins that search_path (and may set persona.maintenance)');

-- ---------------------------------------------------------------------
-- What a predicate may read
-- ---------------------------------------------------------------------
SET ROLE sec_dba;
SELECT throws_ok($$SELECT persona_create_segment('x', $p$(SELECT count(*) FROM persona.identities) > 0$p$)$$,
    '0A000', NULL, 'no subquery');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$pg_read_file('/etc/passwd') <> ''$p$)$$,
    '0A000', NULL, 'no pg_read_file');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$set_config('search_path', 'public', false) <> ''$p$)$$,
    '0A000', NULL, 'no set_config');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$current_setting('data_directory') <> ''$p$)$$,
    '0A000', NULL, 'no current_setting');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$pg_sleep(1) IS NULL$p$)$$,
    '0A000', NULL, 'no pg_sleep');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$table_to_xml('pg_authid', true, false, '') IS NOT NULL$p$)$$,
    '0A000', NULL, 'no table_to_xml');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$xmlparse(document '<a/>') IS NOT NULL$p$)$$,
    '0A000', NULL, 'no XML expressions');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$current_user = 'postgres'$p$)$$,
    '0A000', NULL, 'no session functions');
SELECT throws_ok($$SELECT persona_create_segment('x', $p$'pg_authid'::regclass IS NOT NULL$p$)$$,
    '0A000', NULL, 'no catalog lookups');
SELECT throws_ok($$SELECT persona_create_segment('x', 'true; DROP TABLE persona.events')$$,
    '42601', NULL, 'one expression, never a second statement');
SELECT lives_ok($$SELECT persona_create_segment($n$it's "x"; DROP TABLE persona.events; --$n$, 'event_count > 0')$$,
    'a name is data: any text is a name, never SQL');
SELECT is((SELECT count(*) FROM persona.segment_members AS m
            WHERE m.segment = $n$it's "x"; DROP TABLE persona.events; --$n$), 1::bigint,
          'and its members are recorded under that very name');
RESET ROLE;

-- ---------------------------------------------------------------------
-- Reads through functions: the ingest role reads no profile
-- ---------------------------------------------------------------------
SELECT set_eq(
    $$SELECT p.oid::regprocedure::text
        FROM pg_proc AS p
        JOIN pg_depend AS d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
        JOIN pg_extension AS x ON x.oid = d.refobjid AND x.extname = 'persona'
       WHERE has_function_privilege('sec_ingest', p.oid, 'EXECUTE')$$,
    $$VALUES ('persona_track(text,text,jsonb,timestamp with time zone,jsonb,text)'),
             ('persona_identify(text,jsonb,text)'), ('persona_alias(text,text)'),
             ('persona_set_consent(text,text,boolean)'),
             ('persona.next_event_id()'), ('persona.event_folded(bigint)'),
             ('persona.trait_bigint(bytea,integer)'), ('persona.trait_numeric(bytea,integer)'),
             ('persona.trait_text(bytea,integer)'),
             ('persona.model_score(bytea,bigint,timestamp with time zone,timestamp with time zone,integer[],double precision[])'),
             ('persona.model_held_out(bigint)')$$,
    'the ingest role can execute the write API and the public helpers only');
SELECT set_eq(
    $$SELECT p.oid::regprocedure::text
        FROM pg_proc AS p
        JOIN pg_depend AS d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
        JOIN pg_extension AS x ON x.oid = d.refobjid AND x.extname = 'persona'
       WHERE has_function_privilege('sec_nobody', p.oid, 'EXECUTE')$$,
    $$VALUES ('persona.next_event_id()'), ('persona.event_folded(bigint)'),
             ('persona.trait_bigint(bytea,integer)'), ('persona.trait_numeric(bytea,integer)'),
             ('persona.trait_text(bytea,integer)'),
             ('persona.model_score(bytea,bigint,timestamp with time zone,timestamp with time zone,integer[],double precision[])'),
             ('persona.model_held_out(bigint)')$$,
    'a role with no grant can execute only the helpers PUBLIC needs, which read no profile');
SET ROLE sec_ingest;
SELECT throws_ok($$SELECT * FROM persona_decide('sec-u1')$$, '42501', NULL,
    'the ingest role cannot decide (a decision renders traits and reveals segments)');
SELECT throws_ok($$SELECT persona_profile('sec-u1')$$, '42501', NULL, 'nor read a profile');
SELECT throws_ok($$SELECT persona_in_segment('sec-u1', 'sec_seg')$$, '42501', NULL,
    'nor ask about a segment');
SELECT throws_ok($$SELECT count(*) FROM persona.profiles$$, '42501', NULL, 'nor read the tables');
SELECT persona_identify('sec-u2', '{}');
SELECT throws_matching($$SELECT persona_alias('sec-u2', 'sec-u1')$$,
    '^id "sec-u1" already belongs to another known user$',
    'a refused merge does not name the user the other id belongs to');
RESET ROLE;
SET ROLE sec_decider;
SELECT is((SELECT count(*) FROM persona_decide('sec-u1')), 1::bigint, 'the decider role decides');
SELECT throws_ok($$SELECT persona_profile('sec-u1')$$, '42501', NULL, 'and reads nothing else');
RESET ROLE;

-- ---------------------------------------------------------------------
-- Quoted role names keep their grants when traits change
-- ---------------------------------------------------------------------
CREATE ROLE "BI Team" NOLOGIN;
GRANT USAGE ON SCHEMA persona TO "BI Team";
GRANT SELECT ON persona.traits, persona.trait_defs TO "BI Team";
SELECT lives_ok($$SELECT persona_define_trait('sec_views', 'count', 'page_view')$$,
    'a trait can be defined while a role whose name needs quotes reads persona.traits');
SELECT ok(has_table_privilege('BI Team', 'persona.traits', 'SELECT'),
    'and that role keeps its grant on the rebuilt view');

-- ---------------------------------------------------------------------
-- One definition must not take decisions down
-- ---------------------------------------------------------------------
SET ROLE sec_dba;
SELECT throws_ok($$SELECT persona_create_action('x', 'web', '{}', cooldown => '7000 years')$$,
    '22023', NULL, 'a cooldown that cannot be subtracted from now() is refused');
SELECT throws_ok($$UPDATE persona.actions SET cooldown = '7000 years' WHERE name = 'sec_act'$$,
    '23514', NULL, 'and cannot be written by hand');
SELECT throws_ok($$UPDATE persona.trait_defs SET time_window = '7000 years' WHERE name = 'sec_views'$$,
    '23514', NULL, 'nor can a trait window');
SELECT persona_create_action('sec_fragile', 'web', '{"t": "fragile"}',
                             condition => $$(context->>'n')::int > 0$$, priority => 5);
SET LOCAL client_min_messages = error;
SELECT results_eq($$SELECT action FROM persona_decide('sec-u1', '{"n": "x"}')$$,
    $$VALUES ('sec_act')$$,
    'a condition that fails on the context makes its action ineligible, and the others are decided');
SELECT results_eq($$SELECT action FROM persona_decide('sec-u1', '{"n": "3"}')$$,
    $$VALUES ('sec_fragile')$$,
    'with a context it can read, the same action wins by priority');
RESET client_min_messages;
SELECT is((SELECT s.errors FROM persona.action_stats AS s JOIN persona.actions AS a USING (action_id)
            WHERE a.name = 'sec_fragile'), 1::bigint,
          'the failure is counted on the action for an operator to see');
SELECT matches((SELECT s.last_error FROM persona.action_stats AS s JOIN persona.actions AS a USING (action_id)
                 WHERE a.name = 'sec_fragile'), '^22P02: ',
          'with its SQLSTATE and message');
RESET ROLE;

-- ---------------------------------------------------------------------
-- Linked content is read as the caller, never as the owner
-- ---------------------------------------------------------------------
SET ROLE sec_dba;
SELECT throws_ok($$SELECT persona_link_content('sec_auth', 'pg_catalog.pg_authid', 'rolname')$$,
    '42501', NULL, 'an administrator cannot link a table it cannot read');
RESET ROLE;
SELECT persona_link_content('sec_auth', 'pg_catalog.pg_authid', 'rolname');
SELECT persona_create_action('sec_leak', 'seclink', '{"t": "{{sec_auth[context.r].rolpassword}}"}');
SET ROLE sec_decider;
SELECT throws_ok($$SELECT * FROM persona_decide('sec-u1', '{"r": "sec_dba"}', 'seclink')$$,
    '42501', NULL, 'a decision reads a linked table as the caller, not as the extension''s owner');
RESET ROLE;
SET ROLE sec_dba;
CREATE TABLE public.sec_linked (k text PRIMARY KEY, v text);
INSERT INTO public.sec_linked VALUES ('a', 'A');
CREATE FUNCTION public.sec_evil_policy(text) RETURNS boolean LANGUAGE plpgsql
    AS $$BEGIN EXECUTE 'ALTER ROLE sec_dba SUPERUSER'; RETURN true; END$$;
ALTER TABLE public.sec_linked ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.sec_linked FORCE ROW LEVEL SECURITY;
CREATE POLICY sec_evil ON public.sec_linked USING (public.sec_evil_policy(k));
SELECT persona_link_content('sec_linked', 'public.sec_linked', 'k');
SELECT persona_create_action('sec_link_act', 'seclink2', '{"t": "{{sec_linked[context.k].v}}"}');
SELECT throws_ok($$SELECT * FROM persona_decide('sec-u1', '{"k": "a"}', 'seclink2')$$,
    '42501', NULL,
    'code that reading linked content runs (a row-level security policy) runs as the caller: it cannot escalate');
RESET ROLE;

-- ---------------------------------------------------------------------
-- Campaigns: the admin sends; a worker only claims
-- ---------------------------------------------------------------------
SET ROLE sec_worker;
SELECT throws_ok($$SELECT persona_send_campaign('sec_camp', 'sec_act')$$,
    '42501', NULL, 'a worker cannot send a campaign');
SELECT throws_ok($$SELECT persona_campaign_report('sec_camp')$$,
    '42501', NULL, 'nor read a campaign''s report');
RESET ROLE;
SET ROLE sec_dba;
SELECT is(persona_send_campaign($n$sec'); DROP TABLE persona.events; --$n$, 'sec_act') > 0, true,
          'the admin sends a campaign; its name is a value, never SQL');
SELECT is((SELECT source FROM persona.campaigns WHERE name LIKE 'sec%DROP%'),
          $n$campaign:sec'); DROP TABLE persona.events; --$n$, 'stored as given');
RESET ROLE;
SET ROLE sec_worker;
SELECT ok((SELECT count(*) FROM persona_claim('web', 100) WHERE source LIKE 'campaign:sec%') > 0,
          'a worker claims the campaign''s messages');
SELECT throws_ok($$SELECT persona_cancel_campaign($n$sec'); DROP TABLE persona.events; --$n$)$$,
    '42501', NULL, 'but cannot cancel it');
RESET ROLE;
SELECT ok(NOT pg_temp.is_super(), 'at the end, the administrator is still not a superuser');

SELECT * FROM finish();
ROLLBACK;
