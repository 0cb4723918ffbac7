-- Decisions: eligibility, ranking, exploration, caps, rendering, feedback.
SET timezone = 'UTC';
\set SHOW_CONTEXT never

-- The shopper who looks at running shoes, puts a premium pair in the cart
-- and hesitates.
SELECT persona_define_trait('d_cart_value', 'sum', 'add_to_cart', 'price', '7 days');
SELECT persona_define_trait('d_last_product', 'last', 'add_to_cart', 'name');
SELECT persona_identify('d-asha', '{"city": "Mumbai", "first_name": "Asha"}') > 0 AS identified;
SELECT persona_track('d-asha', 'product_view', '{"sku": "RUN-1", "category": "running-shoes"}') > 0 AS tracked;
SELECT persona_track('d-asha', 'add_to_cart', '{"sku": "RUN-PRO", "name": "Pegasus \"Pro\"", "price": 15999}') > 0 AS tracked;
SELECT persona_create_segment('d_big_cart', $$traits->>'city' = 'Mumbai' AND d_cart_value > 5000$$);

SELECT persona_create_action('cart_recovery', 'web',
    '{"title": "{{first_name}}, your {{d_last_product}} is waiting", "discount": "10%",
      "page": "{{context.page}}", "city": "{{context.geo.city}}", "unknown": "[{{nope}}]",
      "items": ["{{d_cart_value}}", 1, true]}',
    segment => 'd_big_cart', condition => $$context->>'page' = 'checkout'$$,
    priority => 10, cap_per_day => 1);
SELECT persona_create_action('new_arrivals', 'web', '{"title": "New arrivals"}');
SELECT persona_create_action('weekly_news', 'email', '{"subject": "News for {{first_name}}"}',
    cooldown => '1 day');
SELECT persona_create_action('winter_sale', 'web', '{"title": "Winter sale"}',
    starts_at => now() + interval '30 days');

-- At checkout the rule wins, rendered with live data; valid JSON whatever
-- the values hold (the quotes in the product name).
SELECT action, channel, content, reason
  FROM persona_decide('d-asha', '{"page": "checkout", "geo": {"city": "Mumbai"}}');
-- n > 1: distinct actions in rank order (scores fall within a priority);
-- the future sale is not active yet; the capped rule is gone.
WITH d AS (SELECT row_number() OVER () AS rank, * FROM persona_decide('d-asha', '{"page": "checkout"}', n => 10))
SELECT array_agg(action ORDER BY action) AS actions,
       count(DISTINCT action) = count(*) AS distinct_actions,
       bool_and(score >= coalesce(next_score, 0)) AS ranked
  FROM (SELECT action, score, lead(score) OVER (ORDER BY rank) AS next_score FROM d) AS ranked;
-- The cap of one a day now holds; the cooldown of the email holds.
SELECT action FROM persona_decide('d-asha', '{"page": "checkout"}', n => 10) ORDER BY 1;
-- channel restricts; a condition not met excludes.
SELECT action FROM persona_decide('d-asha', '{"page": "home"}', 'email');
SELECT count(*) FROM persona_decide('d-ravi', '{"page": "checkout"}', 'email');

-- Every returned row is recorded.
SELECT action, channel, context->>'page' AS page, content->>'title' AS title
  FROM persona.decisions d JOIN persona.profiles p USING (profile_id)
 WHERE p.user_id = 'd-asha' ORDER BY decision_id LIMIT 1;
SELECT count(*) AS recorded FROM persona.decisions d JOIN persona.profiles p USING (profile_id)
 WHERE p.user_id = 'd-asha';

-- An unknown id gets a decision for a new anonymous profile.
SELECT action, reason LIKE 'exploring%' AS exploring FROM persona_decide('d-stranger', '{}', 'web');
SELECT user_id IS NULL AS anonymous, event_count
  FROM persona.profiles WHERE profile_id = (SELECT profile_id FROM persona.identities WHERE id = 'd-stranger');

-- Feedback is idempotent per (decision, outcome) and counts a decision once.
SELECT decision_id AS first_decision FROM persona.decisions ORDER BY decision_id LIMIT 1 \gset
SELECT persona_feedback(:first_decision, 'impression');
SELECT persona_feedback(:first_decision, 'click');
SELECT persona_feedback(:first_decision, 'click');
SELECT persona_feedback(:first_decision, 'conversion', 15999);
SELECT a.name, s.trials, s.successes, s.conversions, s.revenue
  FROM persona.action_stats s JOIN persona.actions a USING (action_id) WHERE a.name = 'cart_recovery';
SELECT outcome, value FROM persona.feedback WHERE decision_id = :first_decision ORDER BY outcome;

-- Learning is online: two equal-priority actions, one clicked every time,
-- one ignored every time; the next decision follows the feedback.
SELECT persona_create_action('hero_a', 'app', '{"title": "A"}');
SELECT persona_create_action('hero_b', 'app', '{"title": "B"}');
DO $$
DECLARE
    d record;
BEGIN
    FOR i IN 1..40 LOOP
        FOR d IN SELECT * FROM persona_decide('d-learner-' || i, '{}', 'app', 2) LOOP
            PERFORM persona_feedback(d.decision_id, CASE d.action WHEN 'hero_a' THEN 'click' ELSE 'ignore' END);
        END LOOP;
    END LOOP;
END
$$;
SELECT a.name, s.trials, s.successes FROM persona.action_stats s JOIN persona.actions a USING (action_id)
 WHERE a.name LIKE 'hero_%' ORDER BY 1;
SELECT action, reason LIKE 'learned: 100.0% success over 40%' AS learned
  FROM persona_decide('d-newcomer', '{}', 'app');

-- Pause, update, drop.
SELECT persona_pause_action('hero_a');
SELECT action FROM persona_decide('d-newcomer-2', '{}', 'app');
SELECT persona_update_action('hero_b', '{"priority": 3, "content": {"title": "B2"}}');
SELECT action, content, reason LIKE 'learned: 0.0% success over 40 decisions with feedback%' AS learned
  FROM persona_decide('d-newcomer-3', '{}', 'app');
SELECT persona_pause_action('hero_a', false);
SELECT persona_drop_action('hero_b');
SELECT action FROM persona_decide('d-newcomer-4', '{}', 'app');

-- A merge carries decisions along.
SELECT count(*) AS decisions FROM persona_decide('d-anon', '{}', 'web');
SELECT persona_identify('d-meera', '{}', 'd-anon') > 0 AS merged;
SELECT count(*) AS decisions_on_meera FROM persona.decisions
 WHERE profile_id = (SELECT profile_id FROM persona.identities WHERE id = 'd-meera');

-- Bad input: each a clear error, nothing written.
SELECT count(*) AS decisions_before FROM persona.decisions \gset
SELECT * FROM persona_decide('d-asha', '{}', n => 0);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM persona_decide('d-asha', '{}', n => 1000);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM persona_decide('d-asha', '{}', 'Web Push');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM persona_decide('d-asha', '[1]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM persona_decide(NULL, '{}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) = :decisions_before AS nothing_recorded FROM persona.decisions;
SELECT persona_feedback(:first_decision, 'love');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_feedback(-1, 'click');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_feedback(:first_decision, 'click', 5);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_feedback(:first_decision, 'conversion', 'NaN');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('new_arrivals', 'web', '{}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('bad', 'Web Push', '{}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('bad', 'web', '[]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('bad', 'web', '{}', condition => 'random() > 0.5');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('bad', 'web', '{}', condition => $$context->>'page' = 'x'; DROP TABLE persona.events$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('bad', 'web', '{}', segment => 'no_such_segment');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('bad', 'web', '{}', cap_per_day => 0);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('bad', 'web', '{}', cooldown => '-1 hour');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('bad', 'web', '{}', value => 0);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('bad', 'web', '{}', value => 'NaN');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_action('bad', 'web', '{}', starts_at => '2026-02-01', ends_at => '2026-01-01');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_update_action('new_arrivals', '{"colour": "red"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_update_action('no_such_action', '{"priority": 1}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_drop_action('no_such_action');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) AS actions FROM persona.actions;

-- A condition that cannot fail on the data (comparisons of traits) is
-- evaluated without a subtransaction; one that may (a cast of the context)
-- keeps it, and when it fails only its action is out, counted and warned
-- about (src/predicate.c PredicateMayFail).
SELECT persona_create_action('nf_rich', 'web', '{"title": "Rich"}', condition => 'd_cart_value > 10000');
SELECT persona_create_action('nf_poor', 'web', '{"title": "Poor"}', condition => 'd_cart_value < 10000 OR d_cart_value IS NULL');
SELECT persona_create_action('nf_qty', 'web', '{"title": "Qty"}', condition => $$(context->>'qty')::int > 1$$);
SELECT a.name, persona.predicate_may_fail(a.condition, 'persona.decision_source') AS may_fail
  FROM persona.actions a WHERE a.name LIKE 'nf\_%' ORDER BY 1;
SELECT action FROM persona_decide('d-asha', '{"qty": "2"}', 'web', n => 20) WHERE action LIKE 'nf\_%' ORDER BY 1;
SELECT action FROM persona_decide('d-asha', '{"qty": "many"}', 'web', n => 20) WHERE action LIKE 'nf\_%' ORDER BY 1;
SELECT a.name, s.errors, s.last_error FROM persona.action_stats s JOIN persona.actions a USING (action_id)
 WHERE a.name LIKE 'nf\_%' ORDER BY 1;

-- Clean up for the files that follow.
SELECT persona_drop_action(name) FROM persona.actions ORDER BY action_id;
SELECT persona_drop_segment('d_big_cart');
SELECT persona_drop_trait(name) FROM persona.trait_defs ORDER BY trait_id;
