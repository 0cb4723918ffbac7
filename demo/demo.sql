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

\echo 'Asha puts a premium pair in the cart: her traits move in the same transaction.'
SELECT persona_profile('user-asha')->'computed' AS before;
SELECT persona_track('user-asha', 'add_to_cart',
                     '{"sku": "SKU-RUN-PRO-1", "category": "running-shoes", "price": 15999, "quantity": 1}',
                     context => '{"channel": "app", "device": "mobile", "session_id": "s-asha-app",
                                  "geo": {"country": "IN", "city": "Mumbai"}}') AS event_id;
SELECT persona_profile('user-asha')->'computed' AS after;
