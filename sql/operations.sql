-- Operations (docs/operations.md): how restored rows are recognized, and
-- what no one else can do with the same means.
\set VERBOSITY terse
SET timezone = 'UTC';

SELECT persona_define_trait('op_orders', 'count', 'purchase');
SELECT persona_create_segment('op_buyers', 'op_orders >= 1');
SELECT persona_track('u-op-1', 'purchase', occurred_at => '2026-05-01 10:00+00') > 0 AS tracked;
SELECT persona_track('u-op-2', 'page_view', occurred_at => '2026-05-01 10:00+00') > 0 AS tracked;

CREATE ROLE persona_op_ingest NOLOGIN;
GRANT USAGE ON SCHEMA persona TO persona_op_ingest;
GRANT INSERT ON persona.events TO persona_op_ingest;
GRANT USAGE ON SEQUENCE persona.event_id_seq TO persona_op_ingest;
CREATE ROLE persona_op_admin NOLOGIN;
GRANT USAGE ON SCHEMA persona TO persona_op_admin;
GRANT SELECT, INSERT ON persona.segments, persona.trait_defs TO persona_op_admin;
GRANT USAGE ON SEQUENCE persona.segment_id_seq TO persona_op_admin;

-- The ingest role cannot attach an event to a profile of its choice: a row
-- with profile_id set is a restored row, which only the owner writes.
SET ROLE persona_op_ingest;
INSERT INTO persona.events (profile_id, user_id, event_type)
SELECT i.profile_id, 'u-op-2', 'purchase' FROM (VALUES (1::bigint)) AS i(profile_id);
COPY persona.events (profile_id, user_id, event_type, occurred_at) FROM stdin;
1	u-op-2	purchase	2026-05-01 11:00:00+00
\.
-- profile_id 0 is the column's default: resolved as usual.
INSERT INTO persona.events (profile_id, user_id, event_type, occurred_at)
VALUES (0, 'u-op-2', 'purchase', '2026-05-01 11:00+00');
RESET ROLE;
SELECT p.user_id, p.event_count, t.op_orders, persona_in_segment(p.user_id, 'op_buyers') AS buyer
  FROM persona.profiles AS p JOIN persona.traits AS t USING (profile_id)
 WHERE p.user_id LIKE 'u-op-%' ORDER BY p.user_id;

-- The owner's row with its profile_id, as pg_dump writes it, is stored as
-- it comes: the restored profile already counts it.
INSERT INTO persona.events (event_id, profile_id, user_id, event_type, occurred_at)
SELECT 1000000, p.profile_id, 'u-op-1', 'purchase', '2026-05-01 12:00+00'
  FROM persona.profiles AS p WHERE p.user_id = 'u-op-1';
SELECT p.user_id, p.event_count, t.op_orders,
       (SELECT count(*) FROM persona.events AS e WHERE e.profile_id = p.profile_id) AS events
  FROM persona.profiles AS p JOIN persona.traits AS t USING (profile_id)
 WHERE p.user_id LIKE 'u-op-%' ORDER BY p.user_id;
SET persona.maintenance = on;
DELETE FROM persona.events WHERE event_id = 1000000;
RESET persona.maintenance;

-- A definition with its SQL: stored as is from the owner (a restore) ...
INSERT INTO persona.segments (segment_id, name, predicate, predicate_sql, reads, clock)
VALUES (1000, 'op_restored', 'op_orders >= 2', '(s.op_orders >= 2)', '{op_orders}', false);
-- ... compiled again from anyone else, whatever SQL they give.
SET ROLE persona_op_admin;
INSERT INTO persona.segments (name, predicate, predicate_sql, reads, clock)
VALUES ('op_planted', 'event_count > 5', 'pg_sleep(1) IS NULL', '{}', true);
RESET ROLE;
SELECT name, predicate, predicate_sql, reads, clock FROM persona.segments WHERE name LIKE 'op\_%' ORDER BY name;
DELETE FROM persona.segments WHERE name IN ('op_restored', 'op_planted');

-- Trait definitions written with ids of their own (a restore) bring their
-- columns back to persona.traits; persona_define_trait is unchanged.
INSERT INTO persona.trait_defs (trait_id, name, aggregate, event_type)
VALUES (100, 'op_restored_views', 'count', 'page_view');
SELECT a.attname FROM pg_attribute AS a
 WHERE a.attrelid = 'persona.traits'::regclass AND a.attname LIKE 'op\_%' ORDER BY a.attnum;
SELECT persona_define_trait('op_views', 'count', 'page_view');
SELECT a.attname FROM pg_attribute AS a
 WHERE a.attrelid = 'persona.traits'::regclass AND a.attname LIKE 'op\_%' ORDER BY a.attnum;
SELECT persona_drop_trait('op_restored_views');

-- UPDATE, DELETE and TRUNCATE of the tables persona maintains are refused,
-- from anyone (the owner included), ...
UPDATE persona.profiles SET event_count = 0;
DELETE FROM persona.events WHERE user_id = 'u-op-1';
TRUNCATE persona.identities;
DELETE FROM persona.merges;
UPDATE persona.segment_members SET segment = 'op_buyers';
DELETE FROM persona.segment_log;
-- ... unless a superuser sets persona.maintenance, to repair by hand.
SET ROLE persona_op_admin;
SET persona.maintenance = on;
RESET ROLE;
BEGIN;
SET LOCAL persona.maintenance = on;
UPDATE persona.profiles SET updated_at = updated_at WHERE user_id = 'u-op-1';
ROLLBACK;
-- persona's own functions set it for their writes: forget deletes.
SELECT persona_forget('u-op-1') > 0 AS forgotten;
SELECT count(*) AS left_behind FROM persona.profiles WHERE user_id = 'u-op-1';

DROP OWNED BY persona_op_ingest, persona_op_admin;
DROP ROLE persona_op_ingest, persona_op_admin;

-- Events age out: persona.events is range-partitioned by occurred_at, with
-- a default partition, so no event is ever refused for lack of a partition.
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
  FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'persona.events'::regclass ORDER BY c.relname;
SELECT persona_define_trait('op_age_lifetime', 'count', 'page_view');
SELECT persona_define_trait('op_age_window', 'count', 'page_view', time_window => '1500 days');
INSERT INTO persona.events (user_id, event_type, occurred_at)
VALUES ('u-op-age', 'page_view', '2024-01-10 10:00+00'),
       ('u-op-age', 'page_view', '2024-02-10 10:00+00'),
       ('u-op-age', 'page_view', '2024-03-10 10:00+00');
-- Monthly partitions for the first quarter: January's and February's events
-- move out of the default partition as stored (not ingested again).
SELECT persona.add_event_partitions('2024-03-31', '1 month', '2024-01-01') AS created;
SELECT persona.add_event_partitions('2024-03-31', '1 month', '2024-01-01') AS created_again;
SELECT e.tableoid::regclass AS part, count(*) FROM persona.events AS e
 WHERE e.user_id = 'u-op-age' GROUP BY 1 ORDER BY 1;
-- Each partition has the primary key; the ingest row triggers are cloned.
SELECT count(*) AS keyed FROM pg_index AS x
 WHERE x.indrelid = 'persona.events_p20240101'::regclass AND x.indisprimary;
SELECT t.tgname FROM pg_trigger AS t
 WHERE t.tgrelid = 'persona.events_p20240201'::regclass ORDER BY t.tgname;
-- An event routed to a new partition is ingested as any other.
SELECT persona_track('u-op-age', 'page_view', occurred_at => '2024-02-20 10:00+00') > 0 AS tracked;
SELECT p.event_count, t.op_age_lifetime, t.op_age_window
  FROM persona.profiles AS p JOIN persona.traits AS t USING (profile_id) WHERE p.user_id = 'u-op-age';
-- A new event straight into a partition is refused (the statement triggers
-- that apply it are persona.events'); row UPDATE and DELETE on a partition
-- are refused as on persona.events.
INSERT INTO persona.events_p20240101 (user_id, event_type, occurred_at)
VALUES ('u-op-age', 'page_view', '2024-01-11 10:00+00');
DELETE FROM persona.events_p20240101;
UPDATE persona.events_p20240301 SET event_type = 'x' WHERE user_id = 'u-op-age';
-- Retention: the partitions that end by the cutoff are dropped, and the
-- default partition's older events deleted. Profiles and lifetime traits
-- keep what those events counted.
SELECT persona.drop_events_before('2024-03-01') AS dropped;
SELECT e.tableoid::regclass AS part, count(*) FROM persona.events AS e
 WHERE e.user_id = 'u-op-age' GROUP BY 1 ORDER BY 1;
SELECT p.event_count, t.op_age_lifetime, t.op_age_window
  FROM persona.profiles AS p JOIN persona.traits AS t USING (profile_id) WHERE p.user_id = 'u-op-age';
-- A trait defined afterwards backfills from the events still stored.
SELECT persona_define_trait('op_age_after', 'count', 'page_view');
SELECT t.op_age_after FROM persona.traits AS t JOIN persona.profiles AS p USING (profile_id)
 WHERE p.user_id = 'u-op-age';
-- Bad input.
SELECT persona.add_event_partitions('2024-03-31', '1 month 2 days', '2024-01-01');
SELECT persona.add_event_partitions('2124-03-31', '1 day', '2024-01-01');
SELECT persona.add_event_partitions(NULL, '1 day');
SELECT persona.drop_events_before(NULL);
SELECT persona_forget('u-op-age') > 0 AS forgotten;
SELECT persona_drop_trait('op_age_lifetime'), persona_drop_trait('op_age_window'),
       persona_drop_trait('op_age_after');
SELECT persona.drop_events_before('2024-04-01') AS dropped;
