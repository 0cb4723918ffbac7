-- The registry of person data (src/registry.sql, docs/identity.md#person-data):
-- every persona table of rows about a person is in it, and merge and forget
-- treat each table as its entry says. The checks read the registry, so a
-- new entry is tested without editing this file.
-- Run by pg_prove in a database where CREATE EXTENSION persona and pgtap ran.
BEGIN;
SELECT plan(28);
SET LOCAL TimeZone = 'UTC';

-- ---------------------------------------------------------------------
-- Helpers (temporary, gone at ROLLBACK)
-- ---------------------------------------------------------------------

-- Tables of schema persona with a profile_id column and no registry entry.
-- A partition (of persona.events) is covered by its partitioned table's
-- entry: merge and forget write the rows through it.
CREATE FUNCTION pg_temp.unregistered() RETURNS SETOF text
    LANGUAGE sql AS
$$
SELECT c.oid::regclass::text
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_attribute AS a
    ON a.attrelid = c.oid AND a.attname = 'profile_id' AND NOT a.attisdropped
 WHERE c.relnamespace = 'persona'::regnamespace AND c.relkind IN ('r', 'p')
   AND NOT c.relispartition
   AND NOT EXISTS (SELECT FROM persona.person_tables AS t WHERE t.relation = c.oid)
 ORDER BY 1
$$;

-- Rows of the given profiles in every registered table, one row per entry.
CREATE FUNCTION pg_temp.rows_of(pids bigint[])
    RETURNS TABLE (relation text, merge_rule text, n bigint)
    LANGUAGE plpgsql AS
$$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT t.relation, t.merge_rule FROM persona.person_tables AS t ORDER BY t.step LOOP
        relation := r.relation::text;
        merge_rule := r.merge_rule;
        EXECUTE format('SELECT count(*) FROM %s WHERE profile_id = ANY ($1)', r.relation)
           INTO n USING pids;
        RETURN NEXT;
    END LOOP;
END
$$;

-- The profile an id resolves to.
CREATE FUNCTION pg_temp.pid(id text) RETURNS bigint
    LANGUAGE sql AS
$$ SELECT i.profile_id FROM persona.identities AS i WHERE i.id = pid.id $$;

-- ---------------------------------------------------------------------
-- Every table of person data is registered, and every entry is sound
-- ---------------------------------------------------------------------

SELECT is(ARRAY(SELECT pg_temp.unregistered()), '{}'::text[],
    'every table of schema persona with a profile_id column has an entry in persona.person_tables');

SELECT is(
    ARRAY(SELECT t.relation::text FROM persona.person_tables AS t
           WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_class AS c
                               JOIN pg_catalog.pg_attribute AS a
                                 ON a.attrelid = c.oid AND a.attname = 'profile_id'
                                AND a.atttypid = 'bigint'::regtype AND NOT a.attisdropped
                              WHERE c.oid = t.relation AND c.relkind IN ('r', 'p')
                                AND c.relnamespace = 'persona'::regnamespace)
           ORDER BY 1),
    '{}'::text[],
    'every entry names an existing table of schema persona with a bigint profile_id');

SELECT is(
    ARRAY(SELECT t.relation::text || ': ' || f.fn FROM persona.person_tables AS t,
                 LATERAL (VALUES (t.combine_function, 2, 'void'::regtype),
                                 (t.erase_function, 1, 'bigint'::regtype)) AS f (fn, nargs, result)
           WHERE f.fn IS NOT NULL
             AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc AS p
                              WHERE p.oid = pg_catalog.to_regprocedure(f.fn)
                                AND p.pronamespace = 'persona'::regnamespace
                                AND p.prorettype = f.result
                                AND p.proargtypes = (CASE f.nargs WHEN 2 THEN '20 20' ELSE '20' END)::oidvector)
           ORDER BY 1),
    '{}'::text[],
    'every combine function is persona.f(bigint, bigint) RETURNS void, every erase function persona.f(bigint) RETURNS bigint');

-- One step order serves both walks; these are the constraints it must meet.
SELECT ok((SELECT step FROM persona.person_tables WHERE relation = 'persona.profiles'::regclass)
          < (SELECT step FROM persona.person_tables WHERE relation = 'persona.segment_members'::regclass),
    'merge combines persona.profiles before persona.segment_members evaluates the survivor');
SELECT ok((SELECT step FROM persona.person_tables WHERE relation = 'persona.identities'::regclass)
          < (SELECT step FROM persona.person_tables WHERE relation = 'persona.profiles'::regclass),
    'forget erases persona.identities (which reads the profile''s user_id) before persona.profiles');
SELECT ok((SELECT step FROM persona.person_tables WHERE relation = 'persona.segment_log'::regclass)
          < (SELECT step FROM persona.person_tables WHERE relation = 'persona.segment_members'::regclass),
    'forget erases persona.segment_log before persona.segment_members logs the exits, which stay');
SELECT is(
    ARRAY(SELECT t.relation::text FROM persona.person_tables AS t
           WHERE t.forget_rule = 'delete_with_absorbed'
             AND t.step > (SELECT p.step FROM persona.person_tables AS p
                            WHERE p.relation = 'persona.profiles'::regclass)
           ORDER BY 1),
    '{}'::text[],
    'every delete_with_absorbed entry comes before persona.profiles, whose erase deletes the persona.merges rows it reads');

-- ---------------------------------------------------------------------
-- Bad entries are refused
-- ---------------------------------------------------------------------

CREATE TABLE persona.tap_no_profile (person bigint);
SELECT throws_ok($$INSERT INTO persona.person_tables (relation, step, merge_rule, forget_rule)
                   VALUES ('persona.tap_no_profile', 1000, 'repoint', 'delete')$$,
    '42703', NULL, 'an entry for a table without a bigint profile_id: 42703');
DROP TABLE persona.tap_no_profile;

CREATE TABLE pg_temp.tap_elsewhere (profile_id bigint);
SELECT throws_ok($$INSERT INTO persona.person_tables (relation, step, merge_rule, forget_rule)
                   VALUES ('pg_temp.tap_elsewhere', 1000, 'repoint', 'delete')$$,
    '22023', NULL, 'an entry for a table outside schema persona: 22023');

CREATE TABLE persona.tap_scores (profile_id bigint NOT NULL, score int NOT NULL);
CREATE TABLE persona.tap_notes (profile_id bigint NOT NULL, note text NOT NULL);

SELECT throws_ok($$INSERT INTO persona.person_tables (relation, step, merge_rule, forget_rule)
                   VALUES ('persona.tap_scores', 1000, 'combine', 'delete')$$,
    '23514', NULL, 'merge rule combine without a combine function: 23514');
SELECT throws_ok($$INSERT INTO persona.person_tables (relation, step, merge_rule, combine_function, forget_rule)
                   VALUES ('persona.tap_scores', 1000, 'combine', 'persona.erase_profile(bigint)', 'delete')$$,
    '42883', NULL, 'a combine function that does not take (bigint, bigint): 42883');
SELECT throws_ok($$INSERT INTO persona.person_tables (relation, step, merge_rule, forget_rule)
                   VALUES ('persona.tap_scores', 1000, 'history', 'delete')$$,
    '23514', NULL, 'merge rule history with a forget that cannot find the absorbed rows: 23514');
SELECT throws_ok($$INSERT INTO persona.person_tables (relation, step, merge_rule, forget_rule)
                   VALUES ('persona.tap_scores', 1000, 'move', 'delete')$$,
    '23514', NULL, 'an unknown merge rule: 23514');

-- ---------------------------------------------------------------------
-- A new table of person data is one entry
-- ---------------------------------------------------------------------

SELECT is(ARRAY(SELECT pg_temp.unregistered()), ARRAY['persona.tap_notes', 'persona.tap_scores'],
    'new tables with a profile_id column and no entry are reported as unregistered');

INSERT INTO persona.person_tables (relation, step, merge_rule, forget_rule)
VALUES ('persona.tap_scores', 1000, 'keep_survivor', 'delete'),
       ('persona.tap_notes', 1010, 'repoint', 'delete');

SELECT is(ARRAY(SELECT pg_temp.unregistered()), '{}'::text[],
    'one entry each registers them');

-- ---------------------------------------------------------------------
-- Merge and forget, checked table by table against the registry
-- ---------------------------------------------------------------------

-- Two people, the second linked to the first later, and a bystander, each
-- with rows in every registered table.
DO $$
BEGIN
    PERFORM persona_create_segment('tap_reg_seen', 'event_count >= 1');
    PERFORM persona_create_action('tap_reg_offer', 'web', '{"title": "Offer"}');
    PERFORM persona_track('tap-reg-u', 'view', '{}', '2024-01-01 10:00+00');
    PERFORM persona_track(NULL, 'view', '{}', '2024-01-02 10:00+00', anonymous_id => 'tap-reg-a');
    PERFORM persona_track(NULL, 'view', '{}', '2024-01-03 10:00+00', anonymous_id => 'tap-reg-a2');
    PERFORM persona_alias('tap-reg-a', 'tap-reg-a2');       -- an earlier merge of the anonymous side
    PERFORM persona_track('tap-reg-other', 'view', '{}', '2024-01-02 10:00+00');
    PERFORM persona_feedback(d.decision_id, 'click')
       FROM unnest(ARRAY['tap-reg-u', 'tap-reg-a', 'tap-reg-other']) AS u (id),
            LATERAL persona_decide(u.id, '{}') AS d;
    -- A message each, sent, with feedback (the outbox's two tables).
    PERFORM persona.enqueue_message(pg_temp.pid(u.id), 'tap_reg_offer', 'trigger:tap')
       FROM unnest(ARRAY['tap-reg-u', 'tap-reg-a', 'tap-reg-other']) AS u (id);
    PERFORM persona_ack(ARRAY(SELECT c.message_id FROM persona_claim('web', 10) AS c));
    PERFORM persona_message_feedback(m.message_id, 'click') FROM persona.messages AS m;
    -- An experiment of its own, so that a decision above is not withheld.
    PERFORM persona_create_experiment('tap_reg_exp', 50);
    PERFORM persona_arm('tap_reg_exp', u.id)
       FROM unnest(ARRAY['tap-reg-u', 'tap-reg-a', 'tap-reg-other']) AS u (id);
    INSERT INTO persona.tap_scores (profile_id, score)
    SELECT pg_temp.pid(u.id), 1 FROM unnest(ARRAY['tap-reg-u', 'tap-reg-a', 'tap-reg-other']) AS u (id);
    INSERT INTO persona.tap_notes (profile_id, note)
    SELECT pg_temp.pid(u.id), u.id FROM unnest(ARRAY['tap-reg-u', 'tap-reg-a', 'tap-reg-other']) AS u (id);
END
$$;

CREATE TEMP TABLE people AS
SELECT pg_temp.pid('tap-reg-u') AS survivor, pg_temp.pid('tap-reg-a') AS absorbed,
       pg_temp.pid('tap-reg-other') AS bystander;

SELECT is(
    ARRAY(SELECT r.relation FROM people AS p, pg_temp.rows_of(ARRAY[p.survivor]) AS r WHERE r.n = 0
          UNION
          SELECT r.relation FROM people AS p, pg_temp.rows_of(ARRAY[p.absorbed]) AS r WHERE r.n = 0
          ORDER BY 1),
    '{}'::text[],
    'before the merge both profiles have rows in every registered table (so the checks below are not empty)');

CREATE TEMP TABLE before_merge AS
SELECT s.relation, s.merge_rule, s.n AS survivor_n, a.n AS absorbed_n, o.n AS bystander_n
  FROM people AS p,
       pg_temp.rows_of(ARRAY[p.survivor]) AS s
  JOIN pg_temp.rows_of(ARRAY[p.absorbed]) AS a USING (relation)
  JOIN pg_temp.rows_of(ARRAY[p.bystander]) AS o USING (relation);

SELECT is(persona_alias('tap-reg-u', 'tap-reg-a'), (SELECT survivor FROM people),
    'the merge keeps the known user''s profile');

CREATE TEMP TABLE after_merge AS
SELECT s.relation, s.merge_rule, s.n AS survivor_n, a.n AS absorbed_n, o.n AS bystander_n
  FROM people AS p,
       pg_temp.rows_of(ARRAY[p.survivor]) AS s
  JOIN pg_temp.rows_of(ARRAY[p.absorbed]) AS a USING (relation)
  JOIN pg_temp.rows_of(ARRAY[p.bystander]) AS o USING (relation);

SELECT is(
    ARRAY(SELECT a.relation FROM after_merge AS a WHERE a.merge_rule <> 'history' AND a.absorbed_n > 0 ORDER BY 1),
    '{}'::text[],
    'after the merge no registered table holds a row of the absorbed profile, history aside');

SELECT is(
    ARRAY(SELECT a.relation FROM after_merge AS a JOIN before_merge AS b USING (relation)
           WHERE a.merge_rule = 'history' AND a.absorbed_n < b.absorbed_n ORDER BY 1),
    '{}'::text[],
    'history tables keep the absorbed profile''s rows');

SELECT is(
    ARRAY(SELECT a.relation FROM after_merge AS a JOIN before_merge AS b USING (relation)
           WHERE a.merge_rule = 'repoint' AND a.survivor_n <> b.survivor_n + b.absorbed_n ORDER BY 1),
    '{}'::text[],
    'repoint tables give the survivor the rows of both profiles');

SELECT is(
    ARRAY(SELECT a.relation FROM after_merge AS a JOIN before_merge AS b USING (relation)
           WHERE a.merge_rule = 'keep_survivor' AND a.survivor_n <> b.survivor_n ORDER BY 1),
    '{}'::text[],
    'keep_survivor tables keep the survivor''s rows as they were');

SELECT is(
    ARRAY(SELECT a.relation FROM after_merge AS a
           WHERE a.merge_rule = 'combine' AND a.survivor_n = 0 ORDER BY 1),
    '{}'::text[],
    'combine tables leave the survivor its combined rows');

SELECT is(
    ARRAY(SELECT a.relation FROM after_merge AS a JOIN before_merge AS b USING (relation)
           WHERE a.bystander_n <> b.bystander_n ORDER BY 1),
    '{}'::text[],
    'the merge touched no row of anyone else');

-- Forget: the rows of the person, of both profiles, in every registered
-- table, plus the persona.merges rows and the feedback on the decisions.
CREATE TEMP TABLE person AS
SELECT ARRAY[p.survivor] || ARRAY(SELECT m.from_profile_id FROM persona.merges AS m
                                   WHERE m.into_profile_id = p.survivor ORDER BY 1) AS pids
  FROM people AS p;

SELECT ok((SELECT cardinality(pids) FROM person) = 3,
    'the person has three profiles: the survivor, the absorbed one and the one it had absorbed');

CREATE TEMP TABLE expected_forget AS
SELECT ((SELECT sum(r.n) FROM person AS p, pg_temp.rows_of(p.pids) AS r)
     + (SELECT count(*) FROM people AS p, persona.merges AS m WHERE m.into_profile_id = p.survivor)
     + (SELECT count(*) FROM people AS p, persona.feedback AS f
          JOIN persona.decisions AS d USING (decision_id) WHERE d.profile_id = p.survivor))::bigint AS n;

SELECT is(persona_forget('tap-reg-a'), (SELECT n FROM expected_forget),
    'persona_forget returns the number of rows it erased');

SELECT is(
    ARRAY(SELECT r.relation FROM person AS p, pg_temp.rows_of(p.pids) AS r
           WHERE r.n > 0 AND r.relation <> 'persona.segment_log' ORDER BY 1),
    '{}'::text[],
    'after forget no registered table holds a row of the person''s profiles, absorbed ones included');

SELECT is(
    ARRAY(SELECT l.op || ' ' || l.segment FROM person AS p, persona.segment_log AS l
           WHERE l.profile_id = ANY (p.pids) ORDER BY l.log_id),
    ARRAY['exit tap_reg_seen'],
    'of its segment log, only its exits stay: one per segment it was in, so listeners drop it');

SELECT is(
    ARRAY(SELECT b.relation FROM before_merge AS b, people AS p, pg_temp.rows_of(ARRAY[p.bystander]) AS r
           WHERE r.relation = b.relation AND r.n <> b.bystander_n ORDER BY 1),
    '{}'::text[],
    'forget touched no row of anyone else');

SELECT * FROM finish();
ROLLBACK;
