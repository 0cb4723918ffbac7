-- demo/demo.sql: persona, live, in one psql session.
--
-- `make demo` runs this in a throwaway database persona_demo with persona
-- installed (scripts/demo.sh). By hand:
--   psql -X -v ON_ERROR_STOP=1 -d DB -f demo/demo.sql     (DB has persona)
--
-- Each section is headed "== N. Title ==" and stands alone after section 1,
-- so new features get a new section at the end.

\set ON_ERROR_STOP 1
\pset pager off
\pset null '(null)'
\timing on

\echo
\echo '== 1. Load a month of shop events (demo/generate.sql) =='
\echo 'Thousands of shoppers browse anonymously, most log in later; the events'
\echo 'go in through INSERT ... SELECT, COPY and persona_track. Every path keeps'
\echo 'the profiles current in the same transaction.'
\ir generate.sql

\echo
\echo '== 2. What persona maintains =='
SELECT (SELECT count(*) FROM persona.profiles) AS profiles,
       (SELECT count(*) FROM persona.profiles WHERE user_id IS NOT NULL) AS known_users,
       (SELECT count(*) FROM persona.profiles WHERE user_id IS NULL) AS anonymous_only,
       (SELECT count(*) FROM persona.events) AS events,
       (SELECT count(*) FROM persona.identities) AS identities,
       (SELECT count(*) FROM persona.merges) AS merges;

\echo 'profiles.event_count adds up to the event log:'
SELECT (SELECT sum(event_count) FROM persona.profiles) AS sum_event_count,
       (SELECT count(*) FROM persona.events) AS events,
       (SELECT sum(event_count) FROM persona.profiles) = (SELECT count(*) FROM persona.events) AS consistent;

\echo
\echo '== 3. The event stream by type and channel =='
SELECT event_type,
       count(*) FILTER (WHERE context->>'channel' = 'web') AS web,
       count(*) FILTER (WHERE context->>'channel' = 'app') AS app,
       count(*) FILTER (WHERE context->>'channel' = 'email') AS email,
       count(*) AS total
  FROM persona.events
 GROUP BY event_type
 ORDER BY total DESC;

\echo
\echo '== 4. One shopper: an anonymous session, then login =='
\echo '4a. Asha is a known customer with two events on the web shop.'
SELECT persona_identify('user-asha', '{"name": "Asha Rao", "city": "Mumbai", "country": "IN"}') AS profile_id;
SELECT persona_track('user-asha', 'page_view', '{"path": "/"}',
                     context => '{"channel": "web", "device": "desktop", "session_id": "s-asha-web",
                                  "geo": {"country": "IN", "city": "Mumbai"}}') AS event_id;
SELECT persona_track('user-asha', 'product_view',
                     '{"sku": "SKU-RUN-008", "category": "running-shoes", "price": 8999}',
                     context => '{"channel": "web", "device": "desktop", "session_id": "s-asha-web",
                                  "geo": {"country": "IN", "city": "Mumbai"}}') AS event_id;
SELECT jsonb_pretty(persona_profile('user-asha')) AS "persona_profile('user-asha')";

\echo '4b. On her phone, not logged in, the app only knows a device id.'
INSERT INTO persona.events (anonymous_id, event_type, properties, context)
SELECT 'anon-asha-phone', e.event_type, e.properties,
       '{"channel": "app", "device": "mobile", "session_id": "s-asha-app",
         "geo": {"country": "IN", "city": "Mumbai"}}'
  FROM (VALUES ('page_view', '{"path": "/c/running-shoes"}'::jsonb),
               ('product_view', '{"sku": "SKU-RUN-016", "category": "running-shoes", "price": 10499}'),
               ('add_to_cart', '{"sku": "SKU-RUN-016", "category": "running-shoes", "price": 10499, "quantity": 1}'))
       AS e(event_type, properties);
SELECT jsonb_pretty(persona_profile('anon-asha-phone')) AS "persona_profile('anon-asha-phone')";

\echo '4c. She logs in on the phone: identify merges the anonymous profile into hers.'
SELECT persona_identify('user-asha', '{"plan": "member"}', 'anon-asha-phone') AS profile_id;
SELECT jsonb_pretty(persona_profile('user-asha')) AS "persona_profile('user-asha')";
\echo 'Either id now finds the same profile, and the merge is on record:'
SELECT persona_profile('anon-asha-phone')->'profile_id' = persona_profile('user-asha')->'profile_id' AS same_profile,
       persona_profile('user-asha')->'event_count' AS event_count,
       (SELECT count(*) FROM persona.merges
         WHERE into_profile_id = (persona_profile('user-asha')->>'profile_id')::bigint) AS merges_into_it;

\echo
\echo '== 5. An event and its profile update share one transaction =='
BEGIN;
SELECT user_id, event_count, last_seen FROM persona.profiles WHERE user_id = 'user-asha';
SELECT persona_track('user-asha', 'purchase',
                     '{"order_id": "o-asha-1", "sku": "SKU-RUN-016", "category": "running-shoes",
                       "revenue": 10499, "currency": "INR"}',
                     context => '{"channel": "app", "device": "mobile", "session_id": "s-asha-app",
                                  "geo": {"country": "IN", "city": "Mumbai"}, "currency": "INR"}') AS event_id;
\echo 'Still inside the transaction, the profile already counts the purchase:'
SELECT user_id, event_count, last_seen FROM persona.profiles WHERE user_id = 'user-asha';
COMMIT;

\echo
\echo '== 6. Top 10 profiles by event_count =='
SELECT p.profile_id,
       p.user_id,
       p.traits->>'name' AS name,
       p.traits->>'city' AS city,
       p.event_count,
       (SELECT count(*) FROM persona.identities AS i WHERE i.profile_id = p.profile_id) AS ids,
       p.first_seen::date AS first_seen,
       date_trunc('second', p.last_seen) AS last_seen
  FROM persona.profiles AS p
 ORDER BY p.event_count DESC, p.profile_id
 LIMIT 10;

\echo
\echo '== 7. BI straight off the tables: revenue by city =='
SELECT e.context->'geo'->>'city' AS city,
       e.properties->>'currency' AS currency,
       count(*) AS orders,
       count(DISTINCT e.profile_id) AS buyers,
       round(sum((e.properties->>'revenue')::numeric)) AS revenue
  FROM persona.events AS e
 WHERE e.event_type = 'purchase'
 GROUP BY 1, 2
 ORDER BY orders DESC, city;

\echo
\echo '== 8. Computed traits: defined after the fact, backfilled, then live =='
\echo 'Each definition backfills from every stored event in one (parallel) pass.'
SELECT persona_define_trait('product_views_7d', 'count', 'product_view', time_window => '7 days');
SELECT persona_define_trait('cart_value_7d', 'sum', 'add_to_cart', 'price', '7 days');
SELECT persona_define_trait('purchases', 'count', 'purchase');
SELECT persona_define_trait('revenue', 'sum', 'purchase', 'revenue');
SELECT persona_define_trait('last_category', 'last', 'product_view', 'category');
SELECT persona_define_trait('categories_seen', 'count_distinct', 'product_view', 'category');

\echo 'persona.traits has one typed column per trait, for BI joins:'
SELECT p.user_id, p.traits->>'city' AS city, t.purchases, t.revenue, t.product_views_7d,
       t.cart_value_7d, t.last_category, t.categories_seen
  FROM persona.traits AS t JOIN persona.profiles AS p USING (profile_id)
 WHERE p.user_id IS NOT NULL
 ORDER BY t.revenue DESC, p.user_id
 LIMIT 5;

\echo 'Asha adds running socks to her cart: her traits move in the same transaction.'
SELECT persona_profile('user-asha')->'computed' AS before;
SELECT persona_track('user-asha', 'add_to_cart',
                     '{"sku": "SKU-RUN-SOCK-1", "category": "running-shoes", "price": 1299, "quantity": 1}',
                     context => '{"channel": "app", "device": "mobile", "session_id": "s-asha-app",
                                  "geo": {"country": "IN", "city": "Mumbai"}}') AS event_id;
SELECT persona_profile('user-asha')->'computed' AS after;

\echo
\echo '== 9. Real-time segments =='
\echo 'A segment is one boolean predicate over a profile and its computed traits.'
\echo 'Creating it evaluates every profile; from then on, each change keeps it'
\echo 'current in its own transaction.'
SELECT persona_create_segment('mumbai_big_cart',
                              $$traits->>'city' = 'Mumbai' AND cart_value_7d > 15000$$);
\echo 'Every profile was evaluated; the members match the predicate run by hand:'
SELECT (SELECT count(*) FROM persona.profiles) AS profiles_evaluated,
       (SELECT count(*) FROM persona.segment_members WHERE segment = 'mumbai_big_cart') AS members,
       (SELECT count(*) FROM persona.profiles AS p JOIN persona.traits AS t USING (profile_id)
         WHERE p.traits->>'city' = 'Mumbai' AND t.cart_value_7d > 15000) AS by_hand;
\echo 'What is stored, and ever executed, is the checked predicate, deparsed:'
SELECT name, predicate_sql, reads, clock FROM persona.segments;

\echo 'This session listens on channel persona_segment from now on.'
LISTEN persona_segment;
\echo 'Asha lives in Mumbai, but her cart this week is below 15000: not a member.'
SELECT t.cart_value_7d, persona_in_segment('user-asha', 'mumbai_big_cart') AS member
  FROM persona.traits AS t JOIN persona.profiles AS p USING (profile_id)
 WHERE p.user_id = 'user-asha';
\echo 'She adds a trail jacket. The announcer notifies {"log_id": N} a few ms after the commit'
\echo '(psql shows it after the next command): read persona.segment_log up to N.'
SELECT persona_track('user-asha', 'add_to_cart',
                     '{"sku": "SKU-JAC-TRAIL-1", "category": "jackets", "price": 4499, "quantity": 1}',
                     context => '{"channel": "app", "device": "mobile", "session_id": "s-asha-app",
                                  "geo": {"country": "IN", "city": "Mumbai"}}') AS event_id;
SELECT persona_in_segment('user-asha', 'mumbai_big_cart') AS member,
       persona_profile('user-asha')->'segments' AS segments;
\echo 'The entry is on record in persona.segment_log (and persona.segment_members):'
SELECT l.log_id, l.segment, l.op, l.profile_id
  FROM persona.segment_log AS l
 WHERE l.profile_id = (persona_profile('user-asha')->>'profile_id')::bigint;
\echo 'More cart events keep her in: no new log row.'
SELECT persona_track('user-asha', 'add_to_cart',
                     '{"sku": "SKU-YOG-002", "category": "yoga-mats", "price": 2499, "quantity": 1}') AS event_id;
UNLISTEN persona_segment;

\echo
\echo 'Time moves segments too. A predicate calling now() is a clock segment;'
\echo 'persona_tick() re-evaluates clock segments for every profile, and segments'
\echo 'on windowed traits (cart_value_7d) for the profiles whose window moved.'
SELECT persona_create_segment('active_today', $$last_seen > now() - interval '1 day'$$);
SELECT name, reads, clock,
       (SELECT count(*) FROM persona.segment_members AS m WHERE m.segment = s.name) AS members
  FROM persona.segments AS s ORDER BY s.segment_id;
\echo 'One tick. It returns the entries plus exits it made; its time is mostly the'
\echo 'clock segment''s pass over every profile, which pg_cron will repeat every minute.'
SELECT persona_tick() AS changes;
\echo 'pg_cron is preloaded in this cluster; create its extension here (persona_demo'
\echo 'is its cron.database_name) and let persona_schedule() register the tick:'
CREATE EXTENSION IF NOT EXISTS pg_cron;
SELECT persona_schedule() AS jobid;
SELECT jobid, jobname, schedule, command, database, username FROM cron.job;

\echo
\echo '== 10. Decisions: the next best action, in the same breath =='
\echo 'Asha hesitates at checkout. Three actions compete: a cart-recovery banner'
\echo 'for the Mumbai big-cart segment at checkout (a rule: priority 10, once a'
\echo 'day), a generic web banner, and a push reminder. The banner template pulls'
\echo 'her first name, her last cart item and the live context into the content.'
SELECT persona_identify('user-asha', '{"first_name": "Asha"}') AS profile_id;
SELECT persona_define_trait('last_cart_item', 'last', 'add_to_cart', 'sku');
SELECT persona_create_action('cart_recovery_banner', 'web',
    '{"title": "{{first_name}}, your {{last_cart_item}} is waiting",
      "body": "10% off your {{cart_value_7d}} cart if you check out in {{context.geo.city}} today",
      "cta": "/checkout?coupon=STAY10"}',
    segment => 'mumbai_big_cart', condition => $$context->>'page' = 'checkout'$$,
    priority => 10, cap_per_day => 1);
SELECT persona_create_action('new_arrivals_banner', 'web', '{"title": "New this week: trail running"}');
SELECT persona_create_action('cart_push', 'push', '{"text": "Still thinking about it, {{first_name}}?"}',
    cooldown => '4 hours');

\echo 'The decision, rendered with live data and recorded (database time is shown):'
SELECT decision_id, action, channel, jsonb_pretty(content) AS content, round(score::numeric, 3) AS score, reason
  FROM persona_decide('user-asha', '{"page": "checkout", "geo": {"city": "Mumbai"}}');
\echo 'Asking again: the rule is capped at once a day, so the learned ranking decides'
\echo 'between the others (no feedback yet: both are explored).'
SELECT action, channel, reason
  FROM persona_decide('user-asha', '{"page": "checkout", "geo": {"city": "Mumbai"}}', n => 3);
\echo 'She clicks the banner and buys: feedback is recorded and learned at once.'
SELECT persona_feedback(d.decision_id, 'click'),
       persona_feedback(d.decision_id, 'conversion', 26297)
  FROM persona.decisions AS d
 WHERE d.action = 'cart_recovery_banner'
 ORDER BY d.decision_id LIMIT 1;
SELECT a.name, s.trials, s.successes, s.conversions, s.revenue
  FROM persona.action_stats AS s JOIN persona.actions AS a USING (action_id)
 ORDER BY a.action_id;
\echo 'A shopper persona has never seen gets a decision too, as a new anonymous profile:'
SELECT action, reason FROM persona_decide('anon-first-visit', '{"page": "home"}', 'web');

\echo
\echo '== 11. Would these shoppers have bought anyway? =='
\echo 'The banner looks good, but some of the people who saw it would have bought'
\echo 'anyway. A 10% holdout on the cart-recovery banner: one shopper in ten, by a'
\echo 'hash of their id, gets the next best action instead, and the report'
\echo 'compares the two groups (docs/experiments.md).'
SELECT persona_create_experiment('cart_recovery_holdout', 10, 'cart_recovery_banner');
\echo '1,500 simulated shoppers in Mumbai with a big cart reach the checkout page.'
SELECT count(persona_identify('shopper-' || i, '{"city": "Mumbai"}')) AS shoppers
  FROM generate_series(1, 1500) AS i;
SELECT count(persona_track('shopper-' || i, 'add_to_cart',
                           jsonb_build_object('sku', 'SKU-' || i % 40, 'price', 16000 + i % 5000))) AS carts
  FROM generate_series(1, 1500) AS i;
SELECT count(*) AS decisions
  FROM generate_series(1, 1500) AS i,
       LATERAL persona_decide('shopper-' || i, '{"page": "checkout", "geo": {"city": "Mumbai"}}', 'web');
\echo 'Every shopper the banner would have reached is assigned, in either arm; the'
\echo 'holdout got the next best action instead:'
SELECT a.arm, d.action, count(*) AS shoppers
  FROM persona.assignments AS a
  JOIN persona.decisions AS d ON d.profile_id = a.profile_id AND d.decided_at >= a.assigned_at
 WHERE a.experiment = 'cart_recovery_holdout'
 GROUP BY 1, 2 ORDER BY 1, 2;
\echo 'The shoppers buy: 30% of those who saw the banner, 15% of the others'
\echo '(simulated, deterministic with setseed).'
SELECT setseed(0.14);
SELECT count(persona_track(s.user_id, 'purchase',
                           jsonb_build_object('revenue', 20000 + floor(random() * 10000)))) AS purchases
  FROM (SELECT p.user_id, a.arm
          FROM persona.assignments AS a JOIN persona.profiles AS p USING (profile_id)
         WHERE a.experiment = 'cart_recovery_holdout'
         ORDER BY p.user_id) AS s
 WHERE random() < CASE s.arm WHEN 'treatment' THEN 0.30 ELSE 0.15 END;
\echo 'The answer: the conversion rate of the holdout is who would have bought'
\echo 'anyway; lift is what the banner added, with its 95% interval and p-value;'
\echo 'srm_p_value checks that the split itself is sound (below 0.001: broken).'
SELECT arm, users, converters, round(conversion_rate::numeric, 3) AS conversion_rate,
       round(revenue_per_user::numeric) AS revenue_per_user, round(lift::numeric, 2) AS lift,
       round(ci_low::numeric, 2) AS ci_low, round(ci_high::numeric, 2) AS ci_high,
       round(p_value::numeric, 5) AS p_value, round(srm_p_value::numeric, 3) AS srm_p_value
  FROM persona_experiment_report('cart_recovery_holdout', 'purchase');

\echo
\echo '== 12. The abandoned cart: a reminder with live stock, cancelled by a purchase =='
\echo 'The shop''s own products table becomes linked content: any template can'
\echo 'show a row of it, {{products[KEY].COLUMN}}, read when the message is rendered.'
CREATE SCHEMA shop;
CREATE TABLE shop.products (sku text PRIMARY KEY, name text NOT NULL, price numeric NOT NULL,
                            stock int NOT NULL);
INSERT INTO shop.products VALUES
    ('SHOE-CR9', 'Cloudrunner 9 premium running shoes', 14999, 7),
    ('SOCK-3P', 'Running socks, 3 pairs', 899, 120);
SELECT persona_link_content('products', 'shop.products', 'sku');
\echo 'A push reminder that names the product and its stock, and a trigger: an'
\echo 'add_to_cart of 10,000 or more queues it, due 3 seconds later (hours, in real'
\echo 'life), unless the person has bought within the hour; checked again at claim.'
SELECT persona_define_trait('purchases_1h', 'count', 'purchase', time_window => '1 hour');
SELECT persona_create_action('cart_reminder_push', 'push',
    '{"title": "{{first_name}}, your {{products[event.properties.sku].name}} are waiting",
      "body": "Only {{products[last_cart_item].stock}} left in size {{event.properties.size}}, at Rs {{products[last_cart_item].price}}"}');
SELECT persona_create_trigger('abandoned_cart', 'add_to_cart', 'cart_reminder_push',
    condition => $$purchases_1h = 0 AND (event->'properties'->>'price')::numeric >= 10000$$,
    delay => '3 seconds');
\echo 'Meera and Kabir both leave the premium shoes in their carts:'
SELECT persona_identify('user-meera', '{"first_name": "Meera"}') > 0 AS meera,
       persona_identify('user-kabir', '{"first_name": "Kabir"}') > 0 AS kabir;
SELECT persona_track('user-meera', 'add_to_cart', '{"sku": "SHOE-CR9", "price": 14999, "size": 38}') > 0 AS meera_cart,
       persona_track('user-kabir', 'add_to_cart', '{"sku": "SHOE-CR9", "price": 14999, "size": 44}') > 0 AS kabir_cart;
SELECT p.user_id, m.action, m.status, m.due_at - m.created_at > interval '2 seconds' AS delayed
  FROM persona.messages AS m JOIN persona.profiles AS p USING (profile_id)
 WHERE m.source = 'trigger:abandoned_cart' ORDER BY p.user_id;
\echo 'Kabir buys in the meantime; the shop sells five more pairs elsewhere.'
SELECT persona_track('user-kabir', 'purchase', '{"sku": "SHOE-CR9", "revenue": 14999}') > 0 AS kabir_bought;
UPDATE shop.products SET stock = stock - 5 WHERE sku = 'SHOE-CR9';
SELECT pg_sleep(3);
\echo 'A worker claims the due push messages (examples/worker.py does the same'
\echo 'in a loop): Meera''s reminder, rendered now with the live stock; Kabir''s is'
\echo 'cancelled at the claim, as he no longer qualifies.'
CREATE ROLE demo_worker NOLOGIN;
GRANT USAGE ON SCHEMA persona, shop TO demo_worker;
GRANT EXECUTE ON FUNCTION persona_claim(text, int, interval), persona_ack(bigint[]),
                          persona_render(bigint) TO demo_worker;
GRANT SELECT ON shop.products TO demo_worker;
SET ROLE demo_worker;
SELECT message_id AS reminder_id, user_id, jsonb_pretty(content) AS content, attempt, source
  FROM persona_claim('push', 100, '30 seconds') \gset
\echo 'Claimed for' :user_id ':'
\echo :content
SELECT persona_ack(ARRAY[:reminder_id]) AS acked;
RESET ROLE;
SELECT p.user_id, m.status, m.last_error
  FROM persona.messages AS m JOIN persona.profiles AS p USING (profile_id)
 WHERE m.source = 'trigger:abandoned_cart' ORDER BY p.user_id;
SELECT source, reason, messages FROM persona.suppressions WHERE source = 'trigger:abandoned_cart';
\echo 'Rendered again when Meera opens it, an hour later: the stock is what it is then.'
UPDATE shop.products SET stock = 1 WHERE sku = 'SHOE-CR9';
SET ROLE demo_worker;
SELECT jsonb_pretty(persona_render(:reminder_id)) AS at_open_time;
RESET ROLE;
DROP OWNED BY demo_worker;
DROP ROLE demo_worker;

\echo
\echo '== 13. Predictions: who is drifting away, and a win-back offer for them =='
\echo 'A model of whether a shopper comes back (any page view) within 7 days,'
\echo 'trained on the month: every shopper as they were 7 days ago, their features'
\echo 'computed from the events before then with the same trait states that serve'
\echo 'the live traits, labelled by what they did since. No leakage: nothing of'
\echo 'the last 7 days is a feature. A fifth of the shoppers, by a hash of their id,'
\echo 'is held out of the fit and scored (AUC, log loss). The shoppers here visit'
\echo 'at random moments, so the signal is modest; the weights say what it is.'
SELECT jsonb_pretty(persona_train_model('will_return', 'page_view', '7 days',
                                        ARRAY['purchases', 'categories_seen', 'event_count',
                                              'days_since_last_seen'])) AS model;
\echo 'The probability is a live column of persona.traits and a key of her profile:'
SELECT round((persona_profile('user-asha')->'computed'->>'will_return')::numeric, 3) AS asha_will_return,
       round(persona_predict('will_return', 'user-asha')::numeric, 3) AS predicted;
\echo 'A segment on the score: shoppers who bought before but are unlikely to come'
\echo 'back. It is current now and moves on every event and tick, like any segment.'
SELECT persona_create_segment('churn_risk_high', 'will_return < 0.25 AND purchases > 0');
SELECT count(*) AS at_risk,
       round(avg(t.will_return)::numeric, 3) AS their_avg_score,
       (SELECT round(avg(will_return)::numeric, 3) FROM persona.traits) AS everyone_avg_score
  FROM persona.segment_members AS m JOIN persona.traits AS t USING (profile_id)
 WHERE m.segment = 'churn_risk_high';
\echo 'A win-back offer that only they get: an at-risk shopper gets it; Asha, not at'
\echo 'risk, gets no email action at all (no row for her):'
SELECT persona_create_action('winback_offer', 'email',
                             '{"subject": "We miss you: 15% off your next order"}',
                             segment => 'churn_risk_high', priority => 5);
SELECT p.user_id AS at_risk_shopper
  FROM persona.segment_members AS m JOIN persona.profiles AS p USING (profile_id)
 WHERE m.segment = 'churn_risk_high' AND p.user_id IS NOT NULL
 ORDER BY p.user_id LIMIT 1 \gset
SELECT 'at risk' AS who, action, reason FROM persona_decide(:'at_risk_shopper', '{}', 'email')
UNION ALL
SELECT 'Asha', action, reason FROM persona_decide('user-asha', '{}', 'email');
\echo 'Retraining is calling persona_train_model again (the column and the segments'
\echo 'on it move to the new weights); with pg_cron, nightly:'
\echo '  SELECT cron.schedule(''retrain will_return'', ''0 3 * * *'','
\echo '    $$SELECT persona_train_model(''will_return'', ''page_view'', ''7 days'','
\echo '      ARRAY[''purchases'', ''categories_seen'', ''event_count'', ''days_since_last_seen''])$$);'

\echo
\echo '== 14. A campaign to every past buyer, each at their own best time =='
\echo 'Recipients are the segment as it is now (no predicate runs at send time), in'
\echo 'chunks of 1,000 with fixed message ids: no row per message is written. With'
\echo 'send_at => best_time each one is due in the hour of the week they engage most'
\echo '(their events and clicks, in their local time), within the next 24 hours.'
SELECT persona_create_segment('past_buyers', 'purchases > 0');
SELECT persona_create_action('weekend_sale', 'email',
    '{"subject": "{{first_name}}, the weekend sale starts now"}');
SELECT persona_best_send_time('user-asha') AS asha_best_time,
       persona_best_channel('user-asha', ARRAY['email', 'push']) AS asha_best_channel;
SELECT persona_send_campaign('weekend_sale', 'weekend_sale', 'past_buyers',
                             send_at => 'best_time') AS recipients;
\echo 'When they are due, by hours from now (the chunks a worker will claim then):'
SELECT round(extract(epoch FROM k.due_at - c.due_at) / 3600) AS hours_from_now,
       sum(k.size) AS recipients
  FROM persona.campaign_chunks AS k JOIN persona.campaigns AS c USING (campaign_id)
 WHERE c.name = 'weekend_sale'
 GROUP BY 1 ORDER BY 1 LIMIT 6;
\echo 'A worker claims what is due now and acks it; the report counts every'
\echo 'recipient by status (suppressions by reason: consent, caps, holdouts).'
SELECT persona_ack(ARRAY(SELECT message_id FROM persona_claim('email', 1000)
                          WHERE source = 'campaign:weekend_sale')) AS sent_now;
SELECT * FROM persona_campaign_report('weekend_sale');
