-- Ingest: persona_track, INSERT and COPY all maintain the profile in the
-- same transaction.
SET timezone = 'UTC';

-- persona_track returns the event id and creates the profile.
SELECT persona_track('u-ingest-1', 'page_view', '{"sku": "shoe-1"}',
                     '2026-01-01 10:00+00', '{"channel": "web"}') > 0 AS tracked;
SELECT user_id, event_count, first_seen, last_seen
  FROM persona.profiles WHERE user_id = 'u-ingest-1';

-- An anonymous event creates an anonymous profile.
SELECT persona_track(NULL, 'page_view', anonymous_id => 'anon-ingest-1',
                     occurred_at => '2026-01-01 09:00+00') > 0 AS tracked;
SELECT p.user_id, p.event_count, i.kind
  FROM persona.identities i JOIN persona.profiles p USING (profile_id)
 WHERE i.id = 'anon-ingest-1';

-- A known user id wins over the anonymous id; the anonymous id is kept on
-- the event but not linked.
SELECT persona_track('u-ingest-1', 'add_to_cart', '{"price": 120}',
                     '2026-01-01 11:00+00', '{}', 'anon-ingest-2') > 0 AS tracked;
SELECT e.anonymous_id, p.user_id
  FROM persona.events e JOIN persona.profiles p USING (profile_id)
 WHERE e.event_type = 'add_to_cart';
SELECT count(*) AS linked FROM persona.identities WHERE id = 'anon-ingest-2';

-- A multi-row INSERT: one profile per id, counts and first/last by occurred_at.
INSERT INTO persona.events (user_id, anonymous_id, event_type, occurred_at)
VALUES ('u-ingest-2', NULL, 'page_view', '2026-01-02 10:00+00'),
       ('u-ingest-2', NULL, 'page_view', '2026-01-02 08:00+00'),
       ('u-ingest-1', NULL, 'purchase',  '2026-01-03 12:00+00'),
       (NULL, 'anon-ingest-1', 'page_view', '2026-01-01 07:00+00');
SELECT i.id, p.event_count, p.first_seen, p.last_seen
  FROM persona.identities i JOIN persona.profiles p USING (profile_id)
 WHERE i.id IN ('u-ingest-1', 'u-ingest-2', 'anon-ingest-1')
 ORDER BY i.id;

-- A late event never moves last_seen back.
SELECT persona_track('u-ingest-2', 'page_view', occurred_at => '2025-12-31 00:00+00') > 0 AS tracked;
SELECT event_count, first_seen, last_seen FROM persona.profiles WHERE user_id = 'u-ingest-2';

-- COPY takes the same path.
COPY persona.events (user_id, anonymous_id, event_type, properties, context, occurred_at) FROM stdin;
u-ingest-3	\N	page_view	{"sku": "shoe-2"}	{"geo": {"city": "Mumbai"}}	2026-01-04 10:00:00+00
u-ingest-3	\N	purchase	{"revenue": 99.5}	{}	2026-01-04 10:05:00+00
\N	anon-ingest-3	page_view	{}	{}	2026-01-04 09:00:00+00
\.
SELECT i.id, p.event_count, p.last_seen
  FROM persona.identities i JOIN persona.profiles p USING (profile_id)
 WHERE i.id IN ('u-ingest-3', 'anon-ingest-3') ORDER BY i.id;

-- Every event carries the profile it resolved to, and the profile's count
-- equals its events.
SELECT count(*) AS mismatched
  FROM persona.profiles p
 WHERE p.event_count <> (SELECT count(*) FROM persona.events e WHERE e.profile_id = p.profile_id);

-- A rolled-back insert leaves no trace: no event, no identity, no profile.
BEGIN;
SELECT persona_track('u-ingest-rollback', 'page_view') > 0 AS tracked;
ROLLBACK;
SELECT count(*) AS left_behind FROM persona.identities WHERE id = 'u-ingest-rollback';

-- A failed statement inside a savepoint: counts stay exact.
BEGIN;
SELECT persona_track('u-ingest-4', 'page_view', occurred_at => '2026-01-05 10:00+00') > 0 AS tracked;
SAVEPOINT s;
INSERT INTO persona.events (user_id, event_type) VALUES ('u-ingest-4', 'ok'), ('u-ingest-4', '');
ROLLBACK TO SAVEPOINT s;
SELECT persona_track('u-ingest-4', 'page_view', occurred_at => '2026-01-05 11:00+00') > 0 AS tracked;
COMMIT;
SELECT event_count FROM persona.profiles WHERE user_id = 'u-ingest-4';

-- A new id first seen inside a rolled-back savepoint is created for real later.
BEGIN;
SAVEPOINT s;
SELECT persona_track('u-ingest-5', 'page_view') > 0 AS tracked;
ROLLBACK TO SAVEPOINT s;
SELECT persona_track('u-ingest-5', 'page_view') > 0 AS tracked;
COMMIT;
SELECT p.event_count, (SELECT count(*) FROM persona.events e WHERE e.profile_id = p.profile_id) AS events
  FROM persona.identities i JOIN persona.profiles p USING (profile_id) WHERE i.id = 'u-ingest-5';

-- INSERT ... ON CONFLICT DO NOTHING on a replayed event counts it once.
INSERT INTO persona.events (event_id, user_id, event_type, occurred_at)
VALUES (900001, 'u-ingest-6', 'page_view', '2026-01-06 10:00+00');
INSERT INTO persona.events (event_id, user_id, event_type, occurred_at)
VALUES (900001, 'u-ingest-6', 'page_view', '2026-01-06 10:00+00')
ON CONFLICT DO NOTHING;
SELECT event_count FROM persona.profiles WHERE user_id = 'u-ingest-6';

-- Same-transaction visibility: the profile is current right after the event.
BEGIN;
SELECT persona_track('u-ingest-7', 'page_view') > 0 AS tracked;
SELECT event_count FROM persona.profiles WHERE user_id = 'u-ingest-7';
SELECT persona_track('u-ingest-7', 'page_view') > 0 AS tracked;
SELECT event_count FROM persona.profiles WHERE user_id = 'u-ingest-7';
COMMIT;

-- persona writes its rows without SQL, but row triggers of your own on its
-- tables still fire: here an audit of profile inserts and updates, for a
-- bulk statement that creates 10 people (identities written directly) and
-- one that updates them. (Such a trigger runs with persona's pinned
-- search_path: it names its tables with their schema.)
CREATE TABLE profile_audit (op text, profile_id bigint, event_count bigint);
CREATE FUNCTION audit_profile() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.profile_audit VALUES (TG_OP, NEW.profile_id, NEW.event_count);
    RETURN NEW;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE ON persona.profiles
    FOR EACH ROW EXECUTE FUNCTION audit_profile();
INSERT INTO persona.events (user_id, event_type)
SELECT 'u-audit-' || n, 'page_view' FROM generate_series(1, 10) AS n;
INSERT INTO persona.events (user_id, event_type)
SELECT 'u-audit-' || n, 'page_view' FROM generate_series(1, 10) AS n, generate_series(1, 2);
SELECT op, count(*), sum(event_count) FROM profile_audit GROUP BY op ORDER BY op;
DROP TRIGGER audit ON persona.profiles;
DROP TABLE profile_audit;
DROP FUNCTION audit_profile();

-- A row trigger of your own on persona.events that fires after persona's
-- (triggers fire in name order) may change or drop the row: the profile
-- counts the rows as inserted. Here one rewrites the event type and one
-- drops test events, for single rows and a bulk statement.
CREATE FUNCTION rewrite_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_type = 'test' THEN
        RETURN NULL;
    END IF;
    NEW.event_type := 'seen_' || NEW.event_type;
    RETURN NEW;
END $$;
CREATE TRIGGER zz_rewrite BEFORE INSERT ON persona.events
    FOR EACH ROW EXECUTE FUNCTION rewrite_event();
SELECT persona_define_trait('seen_views', 'count', 'seen_page_view');
SELECT persona_track('u-late-trigger', 'page_view') > 0 AS tracked;
INSERT INTO persona.events (user_id, event_type)
SELECT 'u-late-trigger', CASE WHEN n % 3 = 0 THEN 'test' ELSE 'page_view' END
  FROM generate_series(1, 9) AS n;
SELECT p.event_count, t.seen_views,
       (SELECT count(*) FROM persona.events e WHERE e.profile_id = p.profile_id) AS events
  FROM persona.profiles p JOIN persona.traits t USING (profile_id)
 WHERE p.user_id = 'u-late-trigger';
DROP TRIGGER zz_rewrite ON persona.events;
DROP FUNCTION rewrite_event();

-- A row trigger of your own that fires before persona's (and reads the row
-- in its WHEN condition) sees profile_id 0; the row as stored, and its
-- index entry, carry the resolved profile.
CREATE FUNCTION tag_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.context := NEW.context || '{"tagged": true}';
    RETURN NEW;
END $$;
CREATE TRIGGER aa_tag BEFORE INSERT ON persona.events
    FOR EACH ROW WHEN (NEW.profile_id = 0 AND NEW.event_type <> 'x') EXECUTE FUNCTION tag_event();
INSERT INTO persona.events (user_id, event_type)
SELECT 'u-early-trigger', 'page_view' FROM generate_series(1, 3);
SET enable_seqscan = off;
SELECT count(*) AS by_index, bool_and((e.context->>'tagged')::boolean) AS tagged
  FROM persona.events e
 WHERE e.profile_id = (SELECT profile_id FROM persona.identities WHERE id = 'u-early-trigger');
RESET enable_seqscan;
SELECT event_count FROM persona.profiles WHERE user_id = 'u-early-trigger';
DROP TRIGGER aa_tag ON persona.events;
DROP FUNCTION tag_event();

-- Explicit event ids, partly replayed, with a trait: each row counts once.
INSERT INTO persona.events (event_id, user_id, event_type, occurred_at)
SELECT 910000 + n, 'u-explicit', 'seen_page_view', '2026-01-07 10:00+00' FROM generate_series(1, 5) AS n;
INSERT INTO persona.events (event_id, user_id, event_type, occurred_at)
SELECT 910000 + n, 'u-explicit', 'seen_page_view', '2026-01-07 10:00+00' FROM generate_series(4, 8) AS n
ON CONFLICT DO NOTHING;
SELECT p.event_count, t.seen_views
  FROM persona.profiles p JOIN persona.traits t USING (profile_id)
 WHERE p.user_id = 'u-explicit';

-- Events tracked inside a statement that inserts events too, some in a
-- subtransaction that rolls back: the profiles count the rows that stay,
-- the enclosing statement's included.
CREATE FUNCTION track_nested(n int) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM persona_track('u-nested-' || n, 'page_view');
        PERFORM persona_track('u-outer', 'page_view');
        IF n % 2 = 0 THEN
            RAISE EXCEPTION 'undo';
        END IF;
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
    RETURN 'u-outer';
END $$;
INSERT INTO persona.events (user_id, event_type)
SELECT track_nested(n), 'seen_page_view' FROM generate_series(1, 6) AS n;
SELECT i.id, p.event_count, t.seen_views,
       (SELECT count(*) FROM persona.events e WHERE e.profile_id = p.profile_id) AS events
  FROM persona.identities i JOIN persona.profiles p USING (profile_id)
  JOIN persona.traits t USING (profile_id)
 WHERE i.id = 'u-outer' OR i.id LIKE 'u-nested-%'
 ORDER BY i.id;
-- The enclosing statement saw the id first, then a rolled-back
-- subtransaction wrote its identity and profile: the statement writes them
-- again, for its own rows.
CREATE FUNCTION track_undone(id text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM persona_track(id, 'page_view');
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
    RETURN id;
END $$;
INSERT INTO persona.events (user_id, event_type)
VALUES ('u-first-outer', 'seen_page_view'), (track_undone('u-first-outer'), 'seen_page_view');
SELECT p.event_count, t.seen_views,
       (SELECT count(*) FROM persona.events e WHERE e.profile_id = p.profile_id) AS events
  FROM persona.identities i JOIN persona.profiles p USING (profile_id)
  JOIN persona.traits t USING (profile_id)
 WHERE i.id = 'u-first-outer';
DROP FUNCTION track_nested(int);
DROP FUNCTION track_undone(text);
SELECT persona_drop_trait('seen_views');
-- A bulk insert for many known people reads persona.identities whole into
-- the id map once it has looked up as many ids one by one as reading the
-- table costs (ingest_row.c, LoadIdentities).  ANALYZE invalidates what
-- the map holds, so that the second insert starts from an empty map.
-- Known user ids in scrambled order, anonymous ids, and new ids after the
-- load, each on its own profile; rolled back.
BEGIN;
INSERT INTO persona.events (user_id, event_type)
SELECT 'bulk-' || n, 'page_view' FROM generate_series(1, 3000) AS n;
INSERT INTO persona.events (anonymous_id, event_type)
SELECT 'bulk-anon-' || n, 'page_view' FROM generate_series(1, 60) AS n;
ANALYZE persona.identities;
INSERT INTO persona.events (user_id, anonymous_id, event_type)
SELECT CASE WHEN n % 100 = 0 THEN NULL
            WHEN n % 97 = 0 THEN 'bulk-new-' || n
            ELSE 'bulk-' || (n * 7919 % 3000 + 1) END,
       CASE WHEN n % 100 = 0 THEN 'bulk-anon-' || (n / 100) END,
       'page_view'
  FROM generate_series(1, 6000) AS n;
-- The table was read once, in sequence.
SELECT seq_scan FROM pg_stat_xact_all_tables WHERE relid = 'persona.identities'::regclass;
SELECT count(*) FILTER (WHERE e.profile_id = i.profile_id) AS on_their_profile, count(*) AS events
  FROM persona.events e JOIN persona.identities i ON i.id = coalesce(e.user_id, e.anonymous_id)
 WHERE coalesce(e.user_id, e.anonymous_id) LIKE 'bulk-%';
SELECT count(*) AS profiles, sum(p.event_count) AS events,
       count(*) FILTER (WHERE p.event_count <> (SELECT count(*) FROM persona.events e
                                                 WHERE e.profile_id = p.profile_id)) AS miscounted
  FROM persona.profiles p
 WHERE p.profile_id IN (SELECT i.profile_id FROM persona.identities i WHERE i.id LIKE 'bulk-%');
ROLLBACK;
