-- persona_track inserts its event and applies it itself, without SQL
-- (src/track.c), and goes through INSERT INTO persona.events instead when
-- something would make that INSERT do more (docs/ingest.md, "persona_track
-- without SQL"). Which path ran shows in an error: one raised under the
-- INSERT carries the statement as its CONTEXT, one of the direct path does
-- not.
SET timezone = 'UTC';
\set VERBOSITY default

-- The direct path: each event lands in the partition of its occurred_at (or
-- the default one), with the column defaults (event_id from its sequence,
-- received_at), resolved and counted.
SELECT persona.add_event_partitions('2025-02-28', '1 month', '2025-01-01') AS created;
SELECT persona_track('u-track-1', 'page_view', '{"n": 1}', '2025-01-15 10:00+00',
                     '{"channel": "web"}') AS first_id \gset
SELECT persona_track('u-track-1', 'page_view', '{"n": 2}', '2025-02-15 10:00+00') > 0 AS tracked;
SELECT persona_track('u-track-1', 'page_view', '{"n": 3}', '2030-01-01 10:00+00') > 0 AS tracked;
SELECT e.tableoid::regclass AS part, e.event_id - :first_id AS id_after_first,
       e.profile_id = p.profile_id AS resolved, e.properties, e.context,
       e.received_at <= now() AS received
  FROM persona.events AS e JOIN persona.profiles AS p ON p.user_id = e.user_id
 WHERE e.user_id = 'u-track-1' ORDER BY e.event_id;
SELECT event_count, first_seen, last_seen FROM persona.profiles WHERE user_id = 'u-track-1';
-- Bad input fails as it does under INSERT, with nothing written.
SELECT persona_track(NULL, 'page_view');
SELECT persona_track('u-track-1', 'page_view', '[1]', '2025-01-16 10:00+00');
SELECT count(*) AS events FROM persona.events WHERE user_id = 'u-track-1';

-- A constraint of your own on persona.events is checked as INSERT checks
-- it (here a CHECK constraint, in a transaction rolled back).
BEGIN;
ALTER TABLE persona.events ADD CONSTRAINT track_no_forbidden CHECK (event_type <> 'forbidden');
\set VERBOSITY terse
SELECT persona_track('u-track-1', 'forbidden', occurred_at => '2025-01-17 10:00+00');
\set VERBOSITY default
ROLLBACK;

-- A column you add gets its default (in a transaction rolled back).
BEGIN;
ALTER TABLE persona.events ADD COLUMN track_source text DEFAULT 'app';
SELECT persona_track('u-track-1', 'page_view', occurred_at => '2025-01-18 10:00+00') AS added \gset
SELECT track_source FROM persona.events WHERE event_id = :added;
ROLLBACK;

-- An event no partition takes is refused by the INSERT, as before (here
-- without the default partition, in a transaction rolled back).
BEGIN;
ALTER TABLE persona.events DETACH PARTITION persona.events_default;
SELECT persona_track('u-track-1', 'page_view', occurred_at => '2025-01-19 10:00+00') > 0 AS tracked;
SELECT persona_track('u-track-1', 'page_view', occurred_at => '2031-01-01 10:00+00');
ROLLBACK;

-- A row trigger of your own on persona.events (here AFTER INSERT, auditing
-- events) sends persona_track through the INSERT, which fires it: it sees
-- the event as stored, resolved.
CREATE TABLE track_audit (event_id bigint, event_type text, profile_id bigint);
CREATE FUNCTION track_audit_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.track_audit VALUES (NEW.event_id, NEW.event_type, NEW.profile_id);
    RETURN NULL;
END $$;
CREATE TRIGGER audit AFTER INSERT ON persona.events
    FOR EACH ROW EXECUTE FUNCTION track_audit_event();
SELECT persona_track('u-track-2', 'signup', occurred_at => '2025-01-20 10:00+00') AS audited \gset
SELECT a.event_id = :audited AS same_event, a.event_type, a.profile_id = p.profile_id AS resolved
  FROM track_audit AS a, persona.profiles AS p WHERE p.user_id = 'u-track-2';
SELECT persona_track('u-track-2', NULL);
DROP TRIGGER audit ON persona.events;
-- Without it, the direct path again.
SELECT persona_track('u-track-2', NULL);

-- A statement trigger of your own fires too.
CREATE FUNCTION track_audit_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.track_audit VALUES (NULL, 'statement', NULL);
    RETURN NULL;
END $$;
CREATE TRIGGER audit_statement AFTER INSERT ON persona.events
    FOR EACH STATEMENT EXECUTE FUNCTION track_audit_statement();
SELECT persona_track('u-track-2', 'page_view') > 0 AS tracked;
SELECT count(*) AS statements FROM track_audit WHERE event_type = 'statement';
DROP TRIGGER audit_statement ON persona.events;

-- A trigger on one partition only: its events go through the INSERT, the
-- other partitions' do not.
CREATE TRIGGER audit AFTER INSERT ON persona.events_p20250101
    FOR EACH ROW EXECUTE FUNCTION track_audit_event();
SELECT persona_track('u-track-3', 'page_view', occurred_at => '2025-01-20 10:00+00') > 0 AS tracked;
SELECT persona_track('u-track-3', 'page_view', occurred_at => '2025-02-20 10:00+00') > 0 AS tracked;
SELECT count(*) AS audited FROM track_audit AS a JOIN persona.profiles AS p USING (profile_id)
 WHERE p.user_id = 'u-track-3';
SELECT persona_track('u-track-3', NULL, occurred_at => '2025-01-21 10:00+00');
SELECT persona_track('u-track-3', NULL, occurred_at => '2025-02-21 10:00+00');
SELECT event_count FROM persona.profiles WHERE user_id = 'u-track-3';
DROP TRIGGER audit ON persona.events_p20250101;

-- A rule on persona.events is the INSERT's to apply.
CREATE RULE track_also AS ON INSERT TO persona.events
    DO ALSO INSERT INTO public.track_audit VALUES (NULL, 'rule: ' || NEW.event_type, NULL);
SELECT persona_track('u-track-3', 'purchase') > 0 AS tracked;
SELECT event_type FROM track_audit WHERE event_type LIKE 'rule:%';
DROP RULE track_also ON persona.events;

-- A disabled trigger of persona's is the INSERT's to skip: with
-- session_replication_role = replica none of persona's triggers fire, and
-- the event is stored as it comes, unresolved (rolled back here).
BEGIN;
SET LOCAL session_replication_role = replica;
SELECT persona_track('u-track-4', 'page_view') > 0 AS tracked;
SELECT profile_id FROM persona.events WHERE user_id = 'u-track-4';
SELECT count(*) AS profiles FROM persona.profiles WHERE user_id = 'u-track-4';
ROLLBACK;

-- A read-only transaction gets the INSERT's error.
BEGIN READ ONLY;
SELECT persona_track('u-track-4', 'page_view');
ROLLBACK;

-- Several events in one statement: each call sees the ones before it, as
-- each INSERT did.
SELECT count(persona_track('u-track-5', 'page_view', jsonb_build_object('n', n)))
  FROM generate_series(1, 5) AS n;
SELECT event_count FROM persona.profiles WHERE user_id = 'u-track-5';

-- A profile updated by event after event, each in its transaction, stays
-- on its page: the update prunes the page's dead versions when the room
-- runs out (rowwriter.c PruneIfFull), so the updates stay HOT.  Without
-- pruning, a new page every 70 or so versions: about 14 updates in 1,000
-- would not be HOT.
SELECT pg_stat_force_next_flush();
SELECT persona_track('u-track-hot', 'page_view') > 0 AS tracked;
SELECT pg_stat_clear_snapshot();
SELECT n_tup_upd AS upd0, n_tup_hot_upd AS hot0
  FROM pg_stat_user_tables WHERE relid = 'persona.profiles'::regclass \gset
\set ECHO none
\o /dev/null
SELECT format('SELECT persona_track(%L, %L)', 'u-track-hot', 'page_view')
  FROM generate_series(1, 1000) \gexec
\o
\set ECHO all
SELECT pg_stat_force_next_flush();
SELECT event_count FROM persona.profiles WHERE user_id = 'u-track-hot';
SELECT pg_stat_clear_snapshot();
SELECT n_tup_upd - :upd0 AS updates,
       (n_tup_upd - :upd0) - (n_tup_hot_upd - :hot0) <= 3 AS nearly_all_hot
  FROM pg_stat_user_tables WHERE relid = 'persona.profiles'::regclass;

DROP TABLE track_audit;
DROP FUNCTION track_audit_event();
DROP FUNCTION track_audit_statement();

-- The test's partitions go (their events with them; profiles keep them).
SELECT persona.drop_events_before('2025-03-01') AS dropped;
