-- The identity model (API.md section 2): what application code relies on when
-- it calls persona_identify, persona_alias, persona_profile and persona_forget.
-- Run by pg_prove in a database where CREATE EXTENSION persona and pgtap ran.
BEGIN;
SELECT plan(41);
SET LOCAL TimeZone = 'UTC';

-- ---------------------------------------------------------------------
-- Helpers (temporary, gone at ROLLBACK)
-- ---------------------------------------------------------------------

-- A profile document without the fields that name the person: what must be
-- identical between a merged profile and one that saw every event directly.
CREATE FUNCTION pg_temp.stats(id text) RETURNS jsonb
    LANGUAGE sql AS
$$ SELECT persona_profile(id) - ARRAY['profile_id', 'user_id', 'anonymous_ids', 'traits'] $$;

-- The profile an id resolves to, read from persona.identities (id -> profile_id).
CREATE FUNCTION pg_temp.pid(id text) RETURNS bigint
    LANGUAGE sql AS
$$ SELECT i.profile_id FROM persona.identities AS i WHERE i.id = pid.id $$;

-- Every row of every table in schema persona, as (table, row).
CREATE FUNCTION pg_temp.snapshot() RETURNS TABLE (tbl text, row_data jsonb)
    LANGUAGE plpgsql AS
$$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel
               FROM pg_catalog.pg_class AS c
              WHERE c.relnamespace = 'persona'::regnamespace AND c.relkind IN ('r', 'p')
                AND NOT c.relispartition  -- its rows are read through persona.events
              ORDER BY 1
    LOOP
        RETURN QUERY EXECUTE format('SELECT %L::text, pg_catalog.to_jsonb(t) FROM %s AS t',
                                    r.rel::text, r.rel);
    END LOOP;
END
$$;

-- Rows of every table in schema persona that mention a person: a column
-- named *profile_id equal to one of their profile ids, or a column named id,
-- user_id or anonymous_id equal to one of their ids. One row per table.
CREATE FUNCTION pg_temp.mentions(pids bigint[], ids text[]) RETURNS TABLE (tbl text, n bigint)
    LANGUAGE plpgsql AS
$$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS rel,
               string_agg(CASE WHEN a.attname LIKE '%profile_id' AND a.atttypid = 'int8'::regtype
                                   THEN format('%I = ANY ($1)', a.attname)
                               WHEN a.attname IN ('id', 'user_id', 'anonymous_id')
                                    AND a.atttypid = 'text'::regtype
                                   THEN format('%I = ANY ($2)', a.attname) END,
                          ' OR ') AS pred
          FROM pg_catalog.pg_class AS c
          JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0
                                           AND NOT a.attisdropped
         WHERE c.relnamespace = 'persona'::regnamespace AND c.relkind IN ('r', 'p')
           AND NOT c.relispartition  -- its rows are read through persona.events
         GROUP BY c.oid
    LOOP
        CONTINUE WHEN r.pred IS NULL;
        tbl := r.rel::text;
        EXECUTE format('SELECT count(*) FROM %s WHERE %s', r.rel, r.pred) INTO n USING pids, ids;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Computed traits of every kind, so that "exactly as if" covers them too:
-- first/last and count_distinct are where a careless merge goes wrong.
DO $$
BEGIN
    PERFORM persona_define_trait('tap_views', 'count', 'view');
    PERFORM persona_define_trait('tap_pages', 'count_distinct', 'view', 'page');
    PERFORM persona_define_trait('tap_first_page', 'first', 'view', 'page');
    PERFORM persona_define_trait('tap_last_page', 'last', 'view', 'page');
    PERFORM persona_define_trait('tap_spent', 'sum', 'purchase', 'amount');
    PERFORM persona_define_trait('tap_max_amount', 'max', 'purchase', 'amount');
END
$$;

-- One person's history, replayed for a given user id / anonymous id pair:
-- views and a purchase on the anonymous id first, then logins and a purchase
-- as the known user, interleaved in time. With anon NULL, all of it is
-- tracked under the user id: the reference "as if" profile.
CREATE FUNCTION pg_temp.history(usr text, anon text) RETURNS void
    LANGUAGE plpgsql AS
$$
BEGIN
    IF anon IS NOT NULL THEN
        PERFORM persona_track(NULL, 'view', '{"page": "/home"}', '2024-01-01 10:00+00', anonymous_id => anon);
        INSERT INTO persona.events (anonymous_id, event_type, properties, occurred_at)
        VALUES (anon, 'view', '{"page": "/pricing"}', '2024-01-03 10:00+00'),
               (anon, 'purchase', '{"amount": 40}', '2024-01-05 10:00+00'),
               (anon, 'view', '{"page": "/home"}', '2024-01-09 10:00+00');
    ELSE
        PERFORM persona_track(usr, 'view', '{"page": "/home"}', '2024-01-01 10:00+00');
        INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
        VALUES (usr, 'view', '{"page": "/pricing"}', '2024-01-03 10:00+00'),
               (usr, 'purchase', '{"amount": 40}', '2024-01-05 10:00+00'),
               (usr, 'view', '{"page": "/home"}', '2024-01-09 10:00+00');
    END IF;
    PERFORM persona_track(usr, 'login', '{}', '2024-01-02 10:00+00');
    PERFORM persona_track(usr, 'view', '{"page": "/docs"}', '2024-01-04 10:00+00');
    PERFORM persona_track(usr, 'purchase', '{"amount": 25}', '2024-01-06 10:00+00');
END
$$;

-- ---------------------------------------------------------------------
-- Merge: exactly as if every event had been tracked under the user id
-- ---------------------------------------------------------------------

-- Case A: both ids had a profile of their own before identify.
DO $$
BEGIN
    PERFORM pg_temp.history('tap-u1', 'tap-a1');
    PERFORM pg_temp.history('tap-ref1', NULL);
END
$$;
CREATE TEMP TABLE before_a AS
SELECT pg_temp.pid('tap-u1') AS user_pid, pg_temp.pid('tap-a1') AS anon_pid;

SELECT isnt((SELECT user_pid FROM before_a), (SELECT anon_pid FROM before_a),
    'before identify, the anonymous id and the user id have separate profiles');

SELECT is(persona_identify('tap-u1', '{}', 'tap-a1'), (SELECT user_pid FROM before_a),
    'identify returns the profile_id of the known user, which survives the merge');

SELECT is(pg_temp.pid('tap-a1'), (SELECT user_pid FROM before_a),
    'after identify, the anonymous id resolves to the user''s profile');

SELECT ok(NOT EXISTS (SELECT FROM persona.profiles AS p
                       WHERE p.profile_id = (SELECT anon_pid FROM before_a)),
    'the anonymous profile is gone from persona.profiles');

SELECT is(
    (SELECT count(*) FROM persona.events AS e
      WHERE (e.user_id = 'tap-u1' OR e.anonymous_id = 'tap-a1')
        AND e.profile_id <> (SELECT user_pid FROM before_a)),
    0::bigint,
    'every event of either id is on the merged profile');

SELECT results_eq(
    $$SELECT p.event_count, p.first_seen, p.last_seen FROM persona.profiles AS p
       WHERE p.profile_id = pg_temp.pid('tap-u1')$$,
    $$SELECT count(*), min(e.occurred_at), max(e.occurred_at) FROM persona.events AS e
       WHERE e.user_id = 'tap-u1' OR e.anonymous_id = 'tap-a1'$$,
    'event_count, first_seen and last_seen of the merged profile equal those of its events');

SELECT is(pg_temp.stats('tap-u1'), pg_temp.stats('tap-ref1'),
    'the merged profile (counts, times, computed traits) equals one that saw every event under the user id');

SELECT is(persona_profile('tap-u1')->'computed',
    '{"tap_views": 4, "tap_pages": 3, "tap_first_page": "/home", "tap_last_page": "/home",
      "tap_spent": 65, "tap_max_amount": 40}'::jsonb,
    'computed traits of the merged profile are those of the whole history');

-- Case B: the user id is new at identify time.
DO $$
BEGIN
    PERFORM persona_track(NULL, 'view', '{"page": "/home"}', '2024-01-01 10:00+00', anonymous_id => 'tap-a2');
    PERFORM persona_track(NULL, 'view', '{"page": "/blog"}', '2024-01-07 10:00+00', anonymous_id => 'tap-a2');
    PERFORM persona_track('tap-ref2b', 'view', '{"page": "/home"}', '2024-01-01 10:00+00');
    PERFORM persona_track('tap-ref2b', 'view', '{"page": "/blog"}', '2024-01-07 10:00+00');
END
$$;
CREATE TEMP TABLE identified_b AS SELECT persona_identify('tap-u2', '{}', 'tap-a2') AS pid;

SELECT ok((SELECT pid FROM identified_b) = pg_temp.pid('tap-u2')
          AND (SELECT pid FROM identified_b) = pg_temp.pid('tap-a2'),
    'identify of a new user id returns the one profile both ids now resolve to');

SELECT is(pg_temp.stats('tap-u2'), pg_temp.stats('tap-ref2b'),
    'a new user identified on an anonymous history owns that history exactly');

-- Case C: persona_alias merges the same way.
DO $$ BEGIN PERFORM pg_temp.history('tap-u3', 'tap-a3'); END $$;
CREATE TEMP TABLE before_c AS SELECT pg_temp.pid('tap-u3') AS user_pid;
SELECT is(persona_alias('tap-u3', 'tap-a3'), (SELECT user_pid FROM before_c),
    'persona_alias returns the surviving profile, the user''s');
SELECT is(pg_temp.stats('tap-u3'), pg_temp.stats('tap-ref1'),
    'persona_alias merges exactly as identify does');

-- ---------------------------------------------------------------------
-- Later events under the anonymous id
-- ---------------------------------------------------------------------

CREATE TEMP TABLE later AS
SELECT persona_track(NULL, 'view', '{"page": "/faq"}', '2024-01-10 10:00+00',
                     anonymous_id => 'tap-a1') AS event_id;

SELECT is(
    (SELECT e.profile_id FROM persona.events AS e JOIN later USING (event_id)),
    pg_temp.pid('tap-u1'),
    'persona_track under the anonymous id lands on the merged profile');

INSERT INTO persona.events (anonymous_id, event_type, properties, occurred_at)
VALUES ('tap-a1', 'purchase', '{"amount": 100}', '2024-01-11 10:00+00');
DO $$
BEGIN
    PERFORM persona_track('tap-ref1', 'view', '{"page": "/faq"}', '2024-01-10 10:00+00');
    PERFORM persona_track('tap-ref1', 'purchase', '{"amount": 100}', '2024-01-11 10:00+00');
END
$$;

SELECT is(pg_temp.stats('tap-u1'), pg_temp.stats('tap-ref1'),
    'events tracked or inserted under the anonymous id after the merge count on the merged profile, as if under the user id');

SELECT is((SELECT count(*) FROM persona.events AS e
            WHERE e.anonymous_id = 'tap-a1' AND e.profile_id <> pg_temp.pid('tap-u1')),
    0::bigint,
    'no event of the anonymous id is left on another profile');

-- ---------------------------------------------------------------------
-- Two known users never merge
-- ---------------------------------------------------------------------

DO $$ BEGIN PERFORM persona_track('tap-u4', 'login', '{}', '2024-01-02 10:00+00'); END $$;
CREATE TEMP TABLE before_conflict AS SELECT * FROM pg_temp.snapshot();

SELECT throws_ok($$SELECT persona_identify('tap-u5', '{}', 'tap-a1')$$, '23505', NULL,
    'identify links an anonymous id of user A to a new user B: 23505');
SELECT throws_ok($$SELECT persona_identify('tap-u4', '{"x": 1}', 'tap-a1')$$, '23505', NULL,
    'identify links an anonymous id of user A to existing user B: 23505');
SELECT throws_ok($$SELECT persona_alias('tap-u4', 'tap-a1')$$, '23505', NULL,
    'alias links an anonymous id of user A to existing user B: 23505');
SELECT throws_ok($$SELECT persona_alias('tap-u4', 'tap-u1')$$, '23505', NULL,
    'alias of one known user id to another: 23505');

SELECT set_eq('SELECT * FROM pg_temp.snapshot()', 'SELECT * FROM before_conflict',
    'the refused links changed no row in any persona table');
SELECT is(persona_profile('tap-u5'), NULL,
    'the refused identify left no profile for the new user id');
SELECT is(pg_temp.pid('tap-a1'), pg_temp.pid('tap-u1'),
    'the anonymous id still belongs to its first user');

-- ---------------------------------------------------------------------
-- Declared traits
-- ---------------------------------------------------------------------

DO $$ BEGIN PERFORM persona_identify('tap-t', '{"plan": "free", "city": "Pune", "age": 30}'); END $$;
SELECT is(persona_profile('tap-t')->'traits', '{"plan": "free", "city": "Pune", "age": 30}'::jsonb,
    'identify stores declared traits');

DO $$ BEGIN PERFORM persona_identify('tap-t', '{"plan": "pro", "city": null, "tags": ["a"]}'); END $$;
SELECT is(persona_profile('tap-t')->'traits', '{"plan": "pro", "age": 30, "tags": ["a"]}'::jsonb,
    'identify merges traits: new keys win, a key set to JSON null is removed, others stay');

DO $$ BEGIN PERFORM persona_identify('tap-t'); END $$;
SELECT is(persona_profile('tap-t')->'traits', '{"plan": "pro", "age": 30, "tags": ["a"]}'::jsonb,
    'identify without traits changes none');

DO $$ BEGIN PERFORM persona_identify('tap-t', '{"gone": null}'); END $$;
SELECT is(persona_profile('tap-t')->'traits', '{"plan": "pro", "age": 30, "tags": ["a"]}'::jsonb,
    'a JSON null for a key that is not there adds nothing');

SELECT throws_ok($$SELECT persona_identify('tap-t', '["plan"]')$$, '22023', NULL,
    'traits that are not a JSON object: 22023');
SELECT throws_ok($$SELECT persona_identify('tap-t', NULL)$$, '22004', NULL,
    'NULL traits: 22004');

-- ---------------------------------------------------------------------
-- persona_profile
-- ---------------------------------------------------------------------

SELECT is(
    ARRAY(SELECT k FROM jsonb_object_keys(persona_profile('tap-u1')) AS k ORDER BY 1),
    ARRAY['anonymous_ids', 'computed', 'consent', 'event_count', 'first_seen', 'last_seen',
          'profile_id', 'segments', 'traits', 'user_id'],
    'persona_profile has exactly the documented keys');

SELECT is(persona_profile('tap-a1'), persona_profile('tap-u1'),
    'persona_profile returns the same document for any id of the person');

SELECT is(
    persona_profile('tap-u1') - ARRAY['traits', 'computed', 'segments', 'consent', 'first_seen', 'last_seen'],
    jsonb_build_object('profile_id', pg_temp.pid('tap-u1'), 'user_id', 'tap-u1',
                       'anonymous_ids', '["tap-a1"]'::jsonb,
                       'event_count', (SELECT p.event_count FROM persona.profiles AS p
                                        WHERE p.profile_id = pg_temp.pid('tap-u1'))),
    'profile_id, user_id, anonymous_ids and event_count are those of the profile');

SELECT is(
    (SELECT string_agg(jsonb_typeof(persona_profile('tap-u1')->k), ',' ORDER BY k)
       FROM unnest(ARRAY['anonymous_ids', 'computed', 'consent', 'segments', 'traits']) AS k),
    'array,object,object,array,object',
    'anonymous_ids and segments are arrays; traits, computed and consent are objects');

SELECT is(persona_profile('tap-nobody'), NULL, 'persona_profile of an unknown id is NULL');

DO $$ BEGIN PERFORM persona_track(NULL, 'view', '{}', '2024-01-01 10:00+00', anonymous_id => 'tap-only-anon'); END $$;
SELECT is(persona_profile('tap-only-anon')->'user_id', 'null'::jsonb,
    'an anonymous-only profile has user_id null');

-- ---------------------------------------------------------------------
-- persona_forget
-- ---------------------------------------------------------------------

-- tap-u1 (merged with tap-a1) is forgotten through its anonymous id; tap-u3
-- is someone else and must not be touched.
CREATE TEMP TABLE forget_me AS
SELECT array_agg(DISTINCT x.pid) AS pids, ARRAY['tap-u1', 'tap-a1'] AS ids
  FROM (SELECT pg_temp.pid('tap-u1') AS pid
        UNION ALL
        SELECT m.from_profile_id FROM persona.merges AS m
         WHERE m.into_profile_id = pg_temp.pid('tap-u1')) AS x;
CREATE TEMP TABLE others_before AS
SELECT * FROM pg_temp.snapshot() AS s
 WHERE NOT EXISTS (SELECT FROM forget_me AS f
                    WHERE (s.row_data->>'profile_id')::bigint = ANY (f.pids)
                       OR (s.row_data->>'from_profile_id')::bigint = ANY (f.pids)
                       OR (s.row_data->>'into_profile_id')::bigint = ANY (f.pids));

SELECT is((SELECT m.n FROM forget_me AS f, pg_temp.mentions(f.pids, f.ids) AS m
            WHERE m.tbl = 'persona.events'),
    9::bigint, 'before forget, persona.events holds the person''s 9 events (under both ids)');

CREATE TEMP TABLE mentioned AS
SELECT sum(m.n)::bigint AS n FROM forget_me AS f, pg_temp.mentions(f.pids, f.ids) AS m;
CREATE TEMP TABLE forgotten AS SELECT persona_forget('tap-a1') AS n;

SELECT is((SELECT n FROM forgotten), (SELECT n FROM mentioned),
    'persona_forget (by any id) returns the number of rows about the person it erased');

SELECT is(
    ARRAY(SELECT m.tbl || ': ' || m.n FROM forget_me AS f, pg_temp.mentions(f.pids, f.ids) AS m
           WHERE m.n > 0 ORDER BY 1),
    '{}'::text[],
    'after persona_forget no row in any persona table mentions the person''s profiles or ids');

SELECT ok(persona_profile('tap-u1') IS NULL AND persona_profile('tap-a1') IS NULL,
    'after persona_forget neither id has a profile');

SELECT set_eq('SELECT * FROM pg_temp.snapshot()', 'SELECT * FROM others_before',
    'persona_forget erased nothing about anyone else');

SELECT is(persona_forget('tap-nobody'), 0::bigint, 'persona_forget of an unknown id erases 0 rows');

DO $$ BEGIN PERFORM persona_track('tap-u1', 'login', '{}', '2024-02-01 10:00+00'); END $$;
SELECT is(pg_temp.stats('tap-u1') - ARRAY['computed'],
    jsonb_build_object('segments', '[]'::jsonb, 'consent', '{}'::jsonb,
                       'first_seen', '2024-02-01 10:00+00'::timestamptz,
                       'last_seen', '2024-02-01 10:00+00'::timestamptz, 'event_count', 1),
    'a forgotten user who comes back starts a new profile with no past');

SELECT * FROM finish();
ROLLBACK;
