-- Data loaded into a database at the OLDEST released version, before its
-- upgrade, and the same way into a fresh install of the current version
-- (test/upgrade/run.sh). Uses only the 0.1.0 API, through every path:
-- persona_track, plain INSERT (one row and a batch of new people), COPY,
-- identify and alias merges, traits defined before and after the events,
-- segments with entries and exits, actions, decisions and feedback, forget.
--
-- Everything is deterministic: fixed occurred_at times (inside a 10-year
-- window, so windowed traits hold values), distinct priorities wherever
-- persona_decide has more than one eligible action (within one priority it
-- samples at random), one session per script (sequences cache per session).
SET timezone = 'UTC';

-- The GRANT recipe of docs/roles.md, under this test's own role names: an
-- upgrade must keep the privileges users granted on persona's objects.
GRANT USAGE ON SCHEMA persona TO persona_upgrade_ingest;
GRANT INSERT ON persona.events TO persona_upgrade_ingest;
GRANT USAGE ON SEQUENCE persona.event_id_seq TO persona_upgrade_ingest;
GRANT EXECUTE ON FUNCTION persona_track(text, text, jsonb, timestamptz, jsonb, text),
    persona_identify(text, jsonb, text), persona_alias(text, text) TO persona_upgrade_ingest;
GRANT USAGE ON SCHEMA persona TO persona_upgrade_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA persona TO persona_upgrade_reader;
GRANT EXECUTE ON FUNCTION persona_profile(text), persona_in_segment(text, text) TO persona_upgrade_reader;

-- Traits defined before any event: kept current by ingest.
SELECT persona_define_trait('u_orders', 'count', 'purchase');
SELECT persona_define_trait('u_revenue', 'sum', 'purchase', 'revenue');
SELECT persona_define_trait('u_cart_10y', 'sum', 'add_to_cart', 'price', '10 years');
SELECT persona_define_trait('u_skus', 'count_distinct', 'product_view', 'sku');
SELECT persona_define_trait('u_scratch', 'max', 'purchase', 'revenue');

SELECT persona_create_segment('u_big_spenders', 'u_revenue > 10000');
SELECT persona_create_segment('u_mumbai', $$traits->>'city' = 'Mumbai'$$);

-- persona_track, known and anonymous.
SELECT persona_track('u-asha', 'product_view', '{"sku": "RUN-1"}', '2025-06-01 10:00+00') > 0;
SELECT persona_track('u-asha', 'product_view', '{"sku": "RUN-2"}', '2025-06-01 10:05+00', '{"geo": {"city": "Mumbai"}}') > 0;
SELECT persona_track('u-asha', 'purchase', '{"order_id": "o-1", "revenue": 7999}', '2025-06-01 10:20+00') > 0;
SELECT persona_track(NULL, 'product_view', '{"sku": "RUN-3"}', '2025-06-02 09:00+00', '{}', 'anon-ravi') > 0;
SELECT persona_track(NULL, 'add_to_cart', '{"sku": "RUN-3", "price": 4999}', '2025-06-02 09:03+00', '{}', 'anon-ravi') > 0;
SELECT persona_track(NULL, 'product_view', '{"sku": "RUN-9"}', '2025-06-02 11:00+00', '{}', 'anon-meera') > 0;

-- A plain INSERT of one row, and a batch of new people (the row writer's
-- batch path takes 8 or more new ids).
INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
VALUES ('u-asha', 'purchase', '{"order_id": "o-2", "revenue": 3500}', '2025-06-03 12:00+00');
INSERT INTO persona.events (user_id, anonymous_id, event_type, properties, context, occurred_at)
SELECT CASE WHEN i % 3 = 0 THEN NULL ELSE 'u-bulk-' || i END,
       CASE WHEN i % 3 = 0 THEN 'anon-bulk-' || i END,
       (ARRAY['product_view', 'add_to_cart', 'purchase'])[1 + i % 3],
       jsonb_build_object('sku', 'SKU-' || (i % 7), 'price', 100 * i, 'revenue', 1000 * i),
       jsonb_build_object('channel', 'web'),
       timestamptz '2025-06-04 00:00+00' + i * interval '1 minute'
  FROM generate_series(1, 40) AS i;

COPY persona.events (user_id, anonymous_id, event_type, properties, occurred_at) FROM STDIN;
u-kiran	\N	product_view	{"sku": "RUN-4"}	2025-06-05 08:00:00+00
u-kiran	\N	purchase	{"order_id": "o-3", "revenue": 12999}	2025-06-05 08:30:00+00
\N	anon-kiran-phone	product_view	{"sku": "RUN-5"}	2025-06-05 07:00:00+00
\.

-- Identity: identify with declared traits merges the anonymous profile into
-- the user's; alias merges another; a trait set to JSON null is removed.
SELECT persona_identify('u-ravi', '{"city": "Mumbai", "name": "Ravi"}', 'anon-ravi') > 0;
SELECT persona_identify('u-asha', '{"city": "Mumbai", "tier": "gold"}') > 0;
SELECT persona_identify('u-asha', '{"tier": null}') > 0;
SELECT persona_alias('u-kiran', 'anon-kiran-phone') > 0;
SELECT persona_alias('u-bulk-1', 'anon-bulk-3') > 0;
SELECT persona_track('u-ravi', 'purchase', '{"order_id": "o-4", "revenue": 15999}', '2025-06-06 10:00+00') > 0;

-- Traits defined over stored events: backfilled.
SELECT persona_define_trait('u_last_sku', 'last', 'product_view', 'sku');
SELECT persona_define_trait('u_first_order', 'first', 'purchase', 'order_id');
SELECT persona_define_trait('u_avg_price', 'avg', 'add_to_cart', 'price');
SELECT persona_define_trait('u_min_rev', 'min', 'purchase', 'revenue');
SELECT persona_drop_trait('u_scratch');

-- A segment created over existing profiles, one that members leave, and
-- one dropped.
SELECT persona_create_segment('u_viewers', 'u_skus >= 2');
-- (Dropped while empty: 0.1.0 logged no exit for the members of a dropped
-- segment, 0.2.0 logs one each, so the two histories would differ.)
SELECT persona_create_segment('u_scratch_seg', 'event_count > 1000');
SELECT persona_drop_segment('u_scratch_seg');
SELECT persona_identify('u-ravi', '{"city": "Pune"}') > 0;   -- exits u_mumbai

-- Actions, decisions (distinct priorities: no sampling decides), feedback.
SELECT persona_create_action('u_vip', 'web', '{"title": "Thanks {{name}}, {{u_orders}} orders"}',
    segment => 'u_big_spenders', priority => 10);
SELECT persona_create_action('u_default', 'web', '{"title": "Hello"}', priority => 0);
SELECT persona_create_action('u_checkout', 'email', '{"subject": "Your cart: {{u_last_sku}}"}',
    condition => $$context->>'page' = 'checkout'$$, priority => 5, cap_per_day => 2,
    cooldown => '1 hour');
SELECT persona_create_action('u_paused', 'web', '{"title": "Paused"}', priority => 20);
SELECT persona_pause_action('u_paused');
SELECT action FROM persona_decide('u-ravi', '{"page": "home"}', 'web');
SELECT action FROM persona_decide('u-asha', '{"page": "checkout"}', 'email');
SELECT action FROM persona_decide('u-meera-new', '{}', 'web');   -- unknown: a new profile
SELECT persona_feedback(d.decision_id, 'impression') FROM persona.decisions AS d;
SELECT persona_feedback(d.decision_id, 'click') FROM persona.decisions AS d WHERE d.action = 'u_vip';
SELECT persona_feedback(d.decision_id, 'conversion', 15999) FROM persona.decisions AS d WHERE d.action = 'u_vip';

-- Forget erases a person everywhere.
SELECT persona_forget('u-bulk-2') > 0;
