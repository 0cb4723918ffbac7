-- Computed traits: every aggregate, windows, backfill, merges, the view.
SET timezone = 'UTC';
\set SHOW_CONTEXT never

-- History stored before any trait exists: defining a trait backfills it.
INSERT INTO persona.events (user_id, event_type, properties, occurred_at) VALUES
  ('t-asha', 'page_view',   '{"sku": "shoe-1", "price": 120}',   now() - interval '10 days'),
  ('t-asha', 'page_view',   '{"sku": "shoe-2", "price": "80.5"}', now() - interval '3 days'),
  ('t-asha', 'page_view',   '{"sku": "shoe-1", "price": "n/a"}', now() - interval '2 hours'),
  ('t-asha', 'add_to_cart', '{"sku": "shoe-2", "price": 80.5}',   now() - interval '1 hour'),
  ('t-ravi', 'page_view',   '{"sku": "bag-1"}',                   now() - interval '1 day');

SELECT persona_define_trait('t_views', 'count', 'page_view');
SELECT persona_define_trait('t_views_7d', 'count', 'page_view', time_window => '7 days');
SELECT persona_define_trait('t_spend', 'sum', 'page_view', 'price');
SELECT persona_define_trait('t_avg_price', 'avg', 'page_view', 'price');
SELECT persona_define_trait('t_min_price', 'min', 'page_view', 'price');
SELECT persona_define_trait('t_max_price', 'max', 'page_view', 'price');
SELECT persona_define_trait('t_first_sku', 'first', 'page_view', 'sku');
SELECT persona_define_trait('t_last_sku', 'last', 'page_view', 'sku');
SELECT persona_define_trait('t_skus', 'count_distinct', 'page_view', 'sku');
SELECT persona_define_trait('t_cart_7d', 'sum', 'add_to_cart', 'price', '7 days');

-- One typed column per trait.
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a WHERE a.attrelid = 'persona.traits'::regclass AND a.attnum > 0
 ORDER BY a.attnum;

-- Backfilled values: the 10-day-old view is out of the 7-day window, the
-- price "n/a" is skipped, the bag has no price.
SELECT p.user_id, t.t_views, t.t_views_7d, t.t_spend, t.t_avg_price, t.t_min_price,
       t.t_max_price, t.t_first_sku, t.t_last_sku, t.t_skus, t.t_cart_7d
  FROM persona.traits t JOIN persona.profiles p USING (profile_id)
 WHERE p.user_id IN ('t-asha', 't-ravi') ORDER BY 1;

-- Live maintenance: persona_track, a multi-row INSERT and COPY.
SELECT persona_track('t-asha', 'page_view', '{"sku": "shoe-3", "price": 99.5}') > 0 AS tracked;
INSERT INTO persona.events (user_id, event_type, properties, occurred_at) VALUES
  ('t-ravi', 'page_view', '{"sku": "bag-2", "price": 40}', now() - interval '5 minutes'),
  ('t-ravi', 'page_view', '{"sku": "bag-1", "price": 60}', now() - interval '4 minutes'),
  ('t-meera', 'add_to_cart', '{"price": 5000}', now());
COPY persona.events (user_id, event_type, properties) FROM stdin;
t-meera	page_view	{"sku": "saree-1", "price": 7000}
\.
SELECT p.user_id, t.t_views, t.t_views_7d, t.t_spend, t.t_avg_price, t.t_min_price,
       t.t_max_price, t.t_first_sku, t.t_last_sku, t.t_skus, t.t_cart_7d
  FROM persona.traits t JOIN persona.profiles p USING (profile_id)
 WHERE p.user_id IN ('t-asha', 't-ravi', 't-meera') ORDER BY 1;

-- A late event never becomes "last"; an early one becomes "first".
SELECT persona_track('t-asha', 'page_view', '{"sku": "late"}', now() - interval '20 days') > 0 AS tracked;
SELECT t.t_first_sku, t.t_last_sku, t.t_views, t.t_views_7d
  FROM persona.traits t JOIN persona.profiles p USING (profile_id) WHERE p.user_id = 't-asha';

-- A profile with no matching events reads 0 for count and sum, NULL otherwise.
SELECT persona_identify('t-nobody') > 0 AS created;
SELECT t.t_views, t.t_views_7d, t.t_spend, t.t_avg_price, t.t_min_price, t.t_first_sku, t.t_skus
  FROM persona.traits t JOIN persona.profiles p USING (profile_id) WHERE p.user_id = 't-nobody';

-- persona_profile shows the same values under "computed".
SELECT (persona_profile('t-asha')->'computed') - 't_avg_price'::text AS computed;

-- Merging an anonymous profile combines trait states exactly.
INSERT INTO persona.events (anonymous_id, event_type, properties, occurred_at) VALUES
  ('t-anon', 'page_view', '{"sku": "shoe-9", "price": 10}', now() - interval '30 days'),
  ('t-anon', 'page_view', '{"sku": "shoe-1", "price": 500}', now() - interval '1 minute'),
  ('t-anon', 'add_to_cart', '{"price": 1.5}', now() - interval '2 days');
SELECT persona_identify('t-asha', '{}', 't-anon') > 0 AS merged;
SELECT t.t_views, t.t_views_7d, t.t_spend, t.t_min_price, t.t_max_price, t.t_first_sku,
       t.t_last_sku, t.t_skus, t.t_cart_7d
  FROM persona.traits t JOIN persona.profiles p USING (profile_id) WHERE p.user_id = 't-asha';

-- Ground truth: every live-maintained trait equals a trait backfilled now
-- from the stored events, for every profile.
SELECT persona_define_trait('c_views', 'count', 'page_view');
SELECT persona_define_trait('c_views_7d', 'count', 'page_view', time_window => '7 days');
SELECT persona_define_trait('c_spend', 'sum', 'page_view', 'price');
SELECT persona_define_trait('c_avg_price', 'avg', 'page_view', 'price');
SELECT persona_define_trait('c_min_price', 'min', 'page_view', 'price');
SELECT persona_define_trait('c_max_price', 'max', 'page_view', 'price');
SELECT persona_define_trait('c_first_sku', 'first', 'page_view', 'sku');
SELECT persona_define_trait('c_last_sku', 'last', 'page_view', 'sku');
SELECT persona_define_trait('c_skus', 'count_distinct', 'page_view', 'sku');
SELECT persona_define_trait('c_cart_7d', 'sum', 'add_to_cart', 'price', '7 days');
SELECT count(*) >= 4 AS several_profiles,
       count(*) = count(*) FILTER (WHERE (t_views, t_views_7d, t_spend, t_avg_price, t_min_price, t_max_price,
                               t_first_sku, t_last_sku, t_skus, t_cart_7d)
                        IS NOT DISTINCT FROM
                              (c_views, c_views_7d, c_spend, c_avg_price, c_min_price, c_max_price,
                               c_first_sku, c_last_sku, c_skus, c_cart_7d)) AS all_equal
  FROM persona.traits;
-- ... and lifetime traits equal plain SQL over the events.
SELECT count(*) AS mismatched FROM persona.traits t
  JOIN (SELECT e.profile_id, count(*) AS views,
               sum((e.properties->>'price')::numeric) FILTER (WHERE e.properties->>'price' ~ '^[0-9.]+$') AS spend,
               count(DISTINCT e.properties->>'sku') AS skus
          FROM persona.events e WHERE e.event_type = 'page_view' GROUP BY 1) r USING (profile_id)
 WHERE (t.t_views, t.t_spend, t.t_skus) IS DISTINCT FROM (r.views, coalesce(r.spend, 0), r.skus);

-- The backfill runs as a parallel aggregate where the planner allows it (here
-- forced), and is exact there too: partial states are combined, not mixed up.
INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
SELECT 't-par-' || (g % 200), 'purchase', jsonb_build_object('price', g % 97, 'sku', 'p' || g),
       now() - (g || ' minutes')::interval
  FROM generate_series(1, 5000) AS g;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SELECT persona_define_trait('p_spend', 'sum', 'purchase', 'price');
SELECT persona_define_trait('p_min', 'min', 'purchase', 'price');
SELECT persona_define_trait('p_last', 'last', 'purchase', 'sku');
SELECT count(*) AS profiles, count(*) FILTER (WHERE (t.p_spend, t.p_min, t.p_last) IS DISTINCT FROM (r.s, r.m, r.l)) AS mismatched
  FROM persona.traits t
  JOIN (SELECT e.profile_id, sum((e.properties->>'price')::numeric) AS s,
               min((e.properties->>'price')::numeric) AS m,
               (array_agg(e.properties->>'sku' ORDER BY e.occurred_at DESC, e.event_id DESC))[1] AS l
          FROM persona.events e WHERE e.event_type = 'purchase' GROUP BY 1) r USING (profile_id)
  JOIN persona.profiles p USING (profile_id)
 WHERE p.user_id LIKE 't-par-%';
-- The aggregate on its own, for a trait id no definition has (0), in a
-- plan whose workers send partial states to the leader (serialized and
-- deserialized: that must work for any id).
BEGIN;
SET LOCAL parallel_tuple_cost = 0.5;
SET LOCAL enable_hashagg = off;
EXPLAIN (COSTS OFF)
SELECT e.profile_id,
       persona.trait_agg(0, 'sum', NULL::interval, 'price', e.occurred_at, e.event_id, e.properties) AS state
  FROM persona.events e WHERE e.event_type = 'purchase' GROUP BY 1;
CREATE TEMP TABLE agg0 AS
SELECT e.profile_id,
       persona.trait_agg(0, 'sum', NULL::interval, 'price', e.occurred_at, e.event_id, e.properties) AS state
  FROM persona.events e WHERE e.event_type = 'purchase' GROUP BY 1;
SELECT count(*) = (SELECT count(DISTINCT profile_id) FROM persona.events
                    WHERE event_type = 'purchase') AS one_per_profile,
       bool_and(state IS NOT NULL) AS all_set
  FROM agg0;
ROLLBACK;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;

-- Dropping a trait removes its column.
SELECT persona_drop_trait('t_max_price');
SELECT count(*) AS t_max_price_columns FROM pg_attribute
 WHERE attrelid = 'persona.traits'::regclass AND attname = 't_max_price';

-- count_distinct is exact up to 128 values, then an estimate.
INSERT INTO persona.events (user_id, event_type, properties)
SELECT 't-many', 'page_view', jsonb_build_object('sku', 'sku-' || g) FROM generate_series(1, 128) g;
SELECT t.t_skus FROM persona.traits t JOIN persona.profiles p USING (profile_id) WHERE p.user_id = 't-many';
INSERT INTO persona.events (user_id, event_type, properties)
SELECT 't-many', 'page_view', jsonb_build_object('sku', 'sku-' || g) FROM generate_series(1, 5000) g;
SELECT t.t_skus BETWEEN 4500 AND 5500 AS estimate_close
  FROM persona.traits t JOIN persona.profiles p USING (profile_id) WHERE p.user_id = 't-many';

-- A window moves with the clock: with a 1-minute window (1-second buckets),
-- an event 58.5 s old counts now and not 3 s later, with no new event.
SELECT persona_define_trait('t_views_1m', 'count', 'page_view', time_window => '1 minute');
SELECT persona_track('t-clock', 'page_view', occurred_at => now() - interval '58.5 seconds') > 0 AS tracked;
SELECT t.t_views_1m FROM persona.traits t JOIN persona.profiles p USING (profile_id) WHERE p.user_id = 't-clock';
SELECT pg_sleep(3);
SELECT t.t_views_1m FROM persona.traits t JOIN persona.profiles p USING (profile_id) WHERE p.user_id = 't-clock';

-- Year-long windows: backfill and ingest count a year the same way.
SELECT persona_define_trait('t_views_1y', 'count', 'page_view', time_window => '1 year');
SELECT persona_track('t-asha', 'page_view', '{"sku": "shoe-4"}') > 0 AS tracked;
SELECT t.t_views_1y = t.t_views AS year_counts_all
  FROM persona.traits t JOIN persona.profiles p USING (profile_id) WHERE p.user_id = 't-asha';

-- A windowed count_distinct counts a value while any of its occurrences is
-- in the window, whatever other occurrences lie in the future: a value seen
-- yesterday and again (future-dated) in three days counts today.
SELECT persona_define_trait('t_skus_7d', 'count_distinct', 'page_view', 'sku', '7 days');
INSERT INTO persona.events (user_id, event_type, properties, occurred_at) VALUES
  ('t-future', 'page_view', '{"sku": "a"}', now() + interval '3 days'),
  ('t-future', 'page_view', '{"sku": "a"}', now() - interval '1 day'),
  ('t-future', 'page_view', '{"sku": "b"}', now() - interval '2 days'),
  ('t-future', 'page_view', '{"sku": "b"}', now() + interval '20 days'),
  ('t-future', 'page_view', '{"sku": "c"}', now() + interval '1 hour'),
  ('t-future', 'page_view', '{"sku": "d"}', now() - interval '10 days'),
  ('t-future', 'page_view', '{"sku": "e"}', now() - interval '8 days'),
  ('t-future', 'page_view', '{"sku": "e"}', now() - interval '2 days'),
  ('t-future', 'page_view', '{"sku": "e"}', now() + interval '4 days');
-- ... and, event by event, with the future one first.
SELECT persona_track('t-future-1', 'page_view', '{"sku": "a"}', occurred_at => now() + interval '3 days') > 0 AS tracked;
SELECT persona_track('t-future-1', 'page_view', '{"sku": "a"}', occurred_at => now() - interval '1 day') > 0 AS tracked;
-- ... and through a merge: the future occurrence in the anonymous profile.
SELECT persona_track('t-future-2', 'page_view', '{"sku": "a"}', occurred_at => now() - interval '1 day') > 0 AS tracked;
SELECT persona_track(NULL, 'page_view', '{"sku": "a"}', anonymous_id => 't-future-anon',
                     occurred_at => now() + interval '3 days') > 0 AS tracked;
SELECT persona_identify('t-future-2', '{}', 't-future-anon') > 0 AS merged;
-- Live maintenance, a backfill of the same definition, and plain SQL agree.
SELECT persona_define_trait('c_skus_7d', 'count_distinct', 'page_view', 'sku', '7 days');
SELECT p.user_id, t.t_skus_7d, t.c_skus_7d,
       (SELECT count(DISTINCT e.properties->>'sku') FROM persona.events e
         WHERE e.profile_id = p.profile_id AND e.event_type = 'page_view'
           AND e.occurred_at > now() - interval '7 days' AND e.occurred_at <= now()) AS by_sql
  FROM persona.traits t JOIN persona.profiles p USING (profile_id)
 WHERE p.user_id LIKE 't-future%' ORDER BY 1;
-- Every profile: the live windowed distinct count equals the backfilled one,
-- and plain SQL's below the bound of 128 values (t-many is past it).
SELECT p.user_id, t.t_skus_7d, t.c_skus_7d, r.by_sql
  FROM persona.traits t JOIN persona.profiles p USING (profile_id)
  LEFT JOIN (SELECT e.profile_id, count(DISTINCT e.properties->>'sku') AS by_sql
               FROM persona.events e
              WHERE e.event_type = 'page_view' AND e.occurred_at > now() - interval '7 days'
                AND e.occurred_at <= now() GROUP BY 1) r USING (profile_id)
 WHERE t.t_skus_7d IS DISTINCT FROM t.c_skus_7d
    OR t.t_skus_7d IS DISTINCT FROM coalesce(r.by_sql, 0);
SELECT persona_drop_trait('c_skus_7d');
-- States written by 0.1.0 (version 2) kept only each value's last occurrence;
-- they are still read, each value as one occurrence, and written again in
-- the current version.  Here two values last seen in 2100, 30 s apart.
SELECT '\x02012ee70708808ece1cc0843d00000200000000000012348080df9cb4899b0b000000000000004280f29080b4899b0b00'::bytea AS v2 \gset
SELECT persona.trait_bigint(:'v2', 999) AS distinct_now,
       persona.next_change(:'v2') AT TIME ZONE 'UTC' AS enters,
       get_byte(persona.state_merge(:'v2', NULL), 0) AS version_written,
       persona.next_change(persona.state_merge(:'v2', NULL)) AT TIME ZONE 'UTC' AS enters_rewritten;
-- ... and a version 2 state holding one value twice is corrupt.
SELECT persona.trait_bigint('\x02012ee70708808ece1cc0843d00000200000000000012348080df9cb4899b0b000000000000123480f29080b4899b0b00', 999);
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- A numeric in a state that numeric_recv would refuse (a bad sign, a digit
-- beyond 9999) makes the state corrupt too, never a data exception: the
-- decoders raise nothing of class 22, so that predicates over traits need no
-- subtransaction (src/predicate.c PredicateMayFail).
SELECT persona.trait_numeric('\x02011502020000000100020a000100000000000000780000', 2) AS sum_120;
SELECT persona.trait_numeric('\x02011502020000000100020a000100001234000000780000', 2);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona.trait_numeric('\x02011502020000000100020a000100000000000027100000', 2);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A windowed sum whose buckets add up beyond numeric's range (each bucket
-- fitted) reads Infinity, and so does its average.
SELECT persona.trait_numeric('\x02012f020280808ebeeb85cd0580c084a1d9f90b000200010a00017fff00000000270f02010a00017fff00000000270f0000', 2) AS sum_beyond,
       persona.trait_numeric('\x02012f020580808ebeeb85cd0580c084a1d9f90b000200010a00017fff00000000270f02010a00017fff00000000270f0000', 2) AS avg_beyond;
-- A trait state stays small: a dozen traits over a busy profile.
SELECT octet_length(computed_state) < 4096 AS compact
  FROM persona.profiles WHERE user_id = 't-asha';

-- Bad input: each a clear error, and nothing changed.
SELECT count(*) AS defs_before FROM persona.trait_defs \gset
SELECT persona_define_trait('t_bad', 'median', 'page_view', 'price');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('t_bad', NULL, 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('t_bad', 'sum', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('t_bad', 'first', 'page_view', '');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('t_views', 'count', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('event_count', 'count', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('Bad Name', 'count', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('x"; DROP TABLE persona.events;--', 'count', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('9lives', 'count', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait(NULL, 'count', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('t_bad', 'count', NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('t_bad', 'count', '');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('t_bad', 'count', 'page_view', time_window => '0 seconds');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('t_bad', 'count', 'page_view', time_window => '-7 days');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('t_bad', 'count', 'page_view', time_window => '1 second');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_define_trait('t_bad', 'count', 'page_view', time_window => '500 years');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_drop_trait('no_such_trait');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A backfill needs READ COMMITTED: a transaction snapshot would miss events.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT persona_define_trait('t_bad', 'count', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK;
-- A view built on persona.traits is refused before any work is done.
CREATE VIEW t_dependent AS SELECT profile_id, t_views FROM persona.traits;
SELECT persona_define_trait('t_bad', 'count', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_drop_trait('t_views');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
DROP VIEW t_dependent;
SELECT persona_drop_trait(NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A function an INSERT into persona.events calls between its rows cannot
-- define a trait once rows are folded (the trait would miss them)...
CREATE FUNCTION define_midway(n int, at int) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF n = at THEN
        PERFORM persona_define_trait('t_midway', 'count', 'click');
    END IF;
    RETURN 'u-midway';
END $$;
INSERT INTO persona.events (user_id, event_type)
SELECT define_midway(n, 3), 'click' FROM generate_series(1, 4) AS n;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) = :defs_before AS nothing_changed FROM persona.trait_defs;
SELECT count(*) AS events_table_intact FROM pg_class WHERE oid = 'persona.events'::regclass;
-- ...but may before the first row: every row then feeds it.
INSERT INTO persona.events (user_id, event_type)
SELECT define_midway(n, 1), 'click' FROM generate_series(1, 4) AS n;
SELECT p.event_count, t.t_midway
  FROM persona.profiles p JOIN persona.traits t USING (profile_id) WHERE p.user_id = 'u-midway';
DROP FUNCTION define_midway(int, int);
-- Dropping a trait between the rows is allowed: the rows before and after
-- are folded under two sets of definitions, and both count.
SELECT persona_define_trait('t_gone', 'count', 'page_view');
CREATE FUNCTION drop_midway(n int) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF n = 3 THEN
        PERFORM persona_drop_trait('t_gone');
    END IF;
    RETURN 'u-dropway-' || n % 2;
END $$;
INSERT INTO persona.events (user_id, event_type)
SELECT drop_midway(n), 'click' FROM generate_series(1, 6) AS n;
SELECT p.user_id, p.event_count, t.t_midway,
       (SELECT count(*) FROM persona.identities i WHERE i.profile_id = p.profile_id) AS ids
  FROM persona.profiles p JOIN persona.traits t USING (profile_id)
 WHERE p.user_id LIKE 'u-dropway-%' ORDER BY 1;
DROP FUNCTION drop_midway(int);

-- Window buckets are numbered from PostgreSQL's epoch, 2000-01-01 00:00
-- UTC (timestamptz counts microseconds from it), not the Unix epoch: for a
-- 7-day window (buckets of 2 h 48 min) the edges sit 24 minutes apart from
-- where Unix-epoch buckets would. An event's bucket stops counting at its
-- end plus the window: next_change_at minus 7 days is a bucket edge.
SELECT persona_define_trait('t_week_views', 'count', 'week_view', time_window => '7 days');
SELECT persona_track('u-week', 'week_view', occurred_at => now() - interval '1 day') > 0 AS tracked;
SELECT extract(epoch FROM p.next_change_at - interval '7 days'
                            - timestamptz '2000-01-01 00:00+00')::bigint % 10080 AS from_2000,
       extract(epoch FROM p.next_change_at - interval '7 days')::bigint % 10080 AS from_1970
  FROM persona.profiles AS p WHERE p.user_id = 'u-week';

-- Clean up for the files that follow.
SELECT persona_drop_trait(name) FROM persona.trait_defs ORDER BY trait_id;
SELECT count(*) AS trait_columns FROM pg_attribute
 WHERE attrelid = 'persona.traits'::regclass AND attnum > 1;
