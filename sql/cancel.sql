-- Cancellation: a statement cancelled in the middle of one of persona's long
-- phases (bulk apply, backfill, segment creation, segment refresh in ingest
-- and in persona_tick) ends with 57014 and leaves nothing half-written.
--
-- How the cancel lands where it should, every run: a row trigger of the
-- test's own (cancel_here) on a table the phase writes one row at a time
-- sends pg_cancel_backend() to its own backend while its RETURN expression
-- is evaluated. PL/pgSQL checks for interrupts before each statement, not
-- after the last, so the cancel is still pending when the trigger returns:
-- the next CHECK_FOR_INTERRUPTS() that runs is the one that lands it. The
-- trigger's WHEN picks one row that the phase writes before others (and
-- that the next rows do not fire it again), so that next check is the
-- phase's own loop in C (UpdateProfiles, InsertNewProfiles, WriteEntries),
-- or the executor's for the phases that run SQL (backfill, segment
-- creation). Without the loop's CHECK_FOR_INTERRUPTS the bulk cases do not
-- fail at all: the statement finishes and commits, and the cancel is
-- dropped once the backend is idle.
--
-- It runs in a database of its own, so that no segment or trait of the
-- other tests adds SQL (and its interrupt checks) after the loops.
\set VERBOSITY default
\set SHOW_CONTEXT never
\set regress_db :DBNAME
SET client_min_messages = warning;
DROP DATABASE IF EXISTS persona_cancel;
CREATE DATABASE persona_cancel;
\c persona_cancel
SET client_min_messages = warning;
CREATE EXTENSION persona;
RESET client_min_messages;
SET timezone = 'UTC';

CREATE FUNCTION cancel_here() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN CASE WHEN pg_cancel_backend(pg_backend_pid()) THEN NEW END;
END
$$;

-- What must hold after every cancel: counts as before, every profile's
-- event_count equal to its events, no identity or event without a profile.
CREATE FUNCTION cancel_state(
        OUT profiles bigint, OUT events bigint, OUT identities bigint,
        OUT miscounted bigint, OUT orphan_identities bigint, OUT orphan_events bigint)
    LANGUAGE sql AS $$
SELECT (SELECT count(*) FROM persona.profiles),
       (SELECT count(*) FROM persona.events),
       (SELECT count(*) FROM persona.identities),
       (SELECT count(*) FROM persona.profiles AS p
         WHERE p.event_count <> (SELECT count(*) FROM persona.events AS e
                                  WHERE e.profile_id = p.profile_id)),
       (SELECT count(*) FROM persona.identities AS i
         WHERE NOT EXISTS (SELECT FROM persona.profiles AS p WHERE p.profile_id = i.profile_id)),
       (SELECT count(*) FROM persona.events AS e
         WHERE NOT EXISTS (SELECT FROM persona.profiles AS p WHERE p.profile_id = e.profile_id))
$$;

-- 200 known people, the first 20 with two events.
INSERT INTO persona.events (user_id, event_type, occurred_at)
SELECT 'cx-' || g, 'page_view', '2024-01-01'::timestamptz + g * interval '1 minute'
  FROM generate_series(1, 200) AS g, generate_series(1, CASE WHEN g <= 20 THEN 2 ELSE 1 END);
SELECT * FROM cancel_state();

-- 1. Bulk apply, profile updates: cancelled while UpdateProfiles walks the
-- 200 known profiles (in a subtransaction of its own).
CREATE TRIGGER cancel_here BEFORE UPDATE ON persona.profiles
    FOR EACH ROW WHEN (OLD.user_id = 'cx-100') EXECUTE FUNCTION cancel_here();
INSERT INTO persona.events (user_id, event_type)
SELECT 'cx-' || g, 'purchase' FROM generate_series(1, 200) AS g;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
DROP TRIGGER cancel_here ON persona.profiles;
SELECT * FROM cancel_state();

-- 2. Bulk apply, new profiles: cancelled while InsertNewProfiles writes the
-- profiles of 100 new ids, after their identities.
CREATE TRIGGER cancel_here BEFORE INSERT ON persona.profiles
    FOR EACH ROW WHEN (NEW.user_id = 'new-50') EXECUTE FUNCTION cancel_here();
INSERT INTO persona.events (user_id, event_type)
SELECT 'new-' || g, 'page_view' FROM generate_series(1, 100) AS g;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
DROP TRIGGER cancel_here ON persona.profiles;
SELECT * FROM cancel_state();

-- 3. The same inside a transaction that goes on: a savepoint catches the
-- cancel (after the statement wrote 30 new identities), and the same rows
-- are sent again. The id map must have forgotten the identities the
-- rollback undid, or the second statement resolves them to profiles that
-- do not exist.
BEGIN;
CREATE TRIGGER cancel_here BEFORE UPDATE ON persona.profiles
    FOR EACH ROW WHEN (OLD.user_id = 'cx-100') EXECUTE FUNCTION cancel_here();
SAVEPOINT before_insert;
INSERT INTO persona.events (user_id, event_type)
SELECT 'cx-' || g, 'page_view' FROM generate_series(1, 230) AS g;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT before_insert;
DROP TRIGGER cancel_here ON persona.profiles;
INSERT INTO persona.events (user_id, event_type)
SELECT 'cx-' || g, 'page_view' FROM generate_series(1, 230) AS g;
COMMIT;
SELECT * FROM cancel_state();
SELECT count(*) AS new_identities FROM persona.identities
 WHERE id IN (SELECT 'cx-' || g FROM generate_series(201, 230) AS g);

-- 4. Backfill: persona_define_trait cancelled while it writes the states.
-- The definition, the view and every profile's states stay as they were.
CREATE TEMP TABLE states_before AS
    SELECT profile_id, computed_state FROM persona.profiles;
CREATE TRIGGER cancel_here BEFORE UPDATE ON persona.profiles
    FOR EACH ROW WHEN (OLD.user_id = 'cx-100') EXECUTE FUNCTION cancel_here();
SELECT persona_define_trait('views', 'count', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
DROP TRIGGER cancel_here ON persona.profiles;
SELECT count(*) AS trait_defs FROM persona.trait_defs;
SELECT count(*) AS view_columns FROM information_schema.columns
 WHERE table_schema = 'persona' AND table_name = 'traits';
SELECT count(*) AS states_changed
  FROM persona.profiles AS p JOIN states_before AS b USING (profile_id)
 WHERE p.computed_state IS DISTINCT FROM b.computed_state;
SELECT * FROM cancel_state();

-- 5. Segment creation: persona_create_segment cancelled while it enters the
-- members. No definition, member or log row is left.
CREATE TRIGGER cancel_here BEFORE INSERT ON persona.segment_members
    FOR EACH ROW WHEN (NEW.segment = 'busy') EXECUTE FUNCTION cancel_here();
SELECT persona_create_segment('busy', 'event_count >= 2');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
DROP TRIGGER cancel_here ON persona.segment_members;
SELECT (SELECT count(*) FROM persona.segments) AS segments,
       (SELECT count(*) FROM persona.segment_members) AS members,
       (SELECT count(*) FROM persona.segment_log) AS log;

-- 6. Segment refresh in bulk apply: two segments that 30 more people enter;
-- cancelled while WriteEntries writes the entries. Members stay what the
-- predicate gives, evaluated by hand; nothing is logged.
SELECT persona_create_segment('busy_a', 'event_count >= 3');
SELECT persona_create_segment('busy_b', 'event_count >= 3');
CREATE TEMP TABLE log_before AS SELECT count(*) AS n FROM persona.segment_log;
CREATE TRIGGER cancel_here BEFORE INSERT ON persona.segment_members
    FOR EACH ROW WHEN (NEW.segment = 'busy_a'
                       AND NEW.profile_id = persona.resolve('cx-30'))
    EXECUTE FUNCTION cancel_here();
INSERT INTO persona.events (user_id, event_type)
SELECT 'cx-' || g, 'purchase' FROM generate_series(21, 50) AS g;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
DROP TRIGGER cancel_here ON persona.segment_members;
SELECT s.name,
       (SELECT array_agg(m.profile_id ORDER BY m.profile_id)
          FROM persona.segment_members AS m WHERE m.segment = s.name)
       IS NOT DISTINCT FROM
       (SELECT array_agg(p.profile_id ORDER BY p.profile_id)
          FROM persona.profiles AS p WHERE p.event_count >= 3) AS members_match,
       (SELECT count(*) FROM persona.segment_members AS m WHERE m.segment = s.name) AS members
  FROM persona.segments AS s ORDER BY s.name;
SELECT (SELECT count(*) FROM persona.segment_log) - n AS logged FROM log_before;
SELECT * FROM cancel_state();

-- 7. persona_tick: two clock segments that everyone enters at the tick
-- (statement_timestamp() runs ahead of now() only in a later statement of
-- the transaction); cancelled while the clock pass writes the entries.
SELECT persona_create_segment('tick_a', 'event_count >= 1 AND statement_timestamp() > now()');
SELECT persona_create_segment('tick_b', 'event_count >= 1 AND statement_timestamp() > now()');
CREATE TRIGGER cancel_here BEFORE INSERT ON persona.segment_members
    FOR EACH ROW WHEN (NEW.segment = 'tick_a'
                       AND NEW.profile_id = persona.resolve('cx-30'))
    EXECUTE FUNCTION cancel_here();
BEGIN;
SELECT count(*) AS members FROM persona.segment_members WHERE segment LIKE 'tick%';
SELECT persona_tick();
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK;
DROP TRIGGER cancel_here ON persona.segment_members;
SELECT (SELECT count(*) FROM persona.segment_members WHERE segment LIKE 'tick%') AS members,
       (SELECT count(*) FROM persona.segment_log) - n AS logged
  FROM log_before;
-- Without the trigger the same tick enters everyone.
BEGIN;
SELECT count(*) AS members FROM persona.segment_members WHERE segment LIKE 'tick%';
SELECT persona_tick() AS changes;
COMMIT;
SELECT * FROM cancel_state();

\c :regress_db
DROP DATABASE persona_cancel WITH (FORCE);
