-- Run after the upgrade in the upgraded database, and in the fresh one: the
-- upgraded install must go on behaving as a fresh install does (ingest,
-- merges, traits, segments, decisions, forget), on the data loaded before.
SET timezone = 'UTC';

SELECT persona_track('u-asha', 'add_to_cart', '{"sku": "RUN-7", "price": 8999}', '2025-07-01 10:00+00') > 0;
INSERT INTO persona.events (user_id, anonymous_id, event_type, properties, occurred_at)
SELECT NULL, 'anon-late-' || i, 'product_view', jsonb_build_object('sku', 'SKU-' || i),
       timestamptz '2025-07-02 00:00+00' + i * interval '1 minute'
  FROM generate_series(1, 12) AS i;
SELECT persona_identify('u-late-1', '{"city": "Mumbai"}', 'anon-late-1') > 0;
SELECT persona_identify('u-ravi', '{"city": "Mumbai"}') > 0;      -- enters u_mumbai again
SELECT persona_alias('u-kiran', 'anon-late-2') > 0;

SELECT persona_define_trait('u_views', 'count', 'product_view');
SELECT persona_create_segment('u_engaged', 'u_views >= 2 AND event_count > 2');
SELECT persona_update_action('u_default', '{"priority": 1}');

SELECT action FROM persona_decide('u-asha', '{"page": "checkout"}', 'email');
SELECT action FROM persona_decide('u-late-1', '{}', 'web');
SELECT persona_feedback(max(d.decision_id), 'click') FROM persona.decisions AS d;
SELECT persona_tick() >= 0;

SELECT persona_forget('anon-meera') > 0;
