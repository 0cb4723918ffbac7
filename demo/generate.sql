-- demo/generate.sql: a reproducible month of shop events, in SQL only.
--
-- 5,000 shoppers browse anonymously ('anon-N', one device each); 60% of them
-- log in at some point ('user-N'). Sessions walk a funnel: page_view ->
-- product_view(s) -> add_to_cart -> checkout_started -> purchase, with
-- context {channel, device, session_id, geo {country, city}, currency}.
--
-- The events enter persona through all three ingest paths:
--   1. INSERT ... SELECT   every anonymous session (before login, or never)
--   2. persona_identify    each shopper logs in: the anonymous profile merges
--                          into the user's
--   3. COPY ... FROM STDIN logged-in sessions older than two days
--   4. persona_track       logged-in sessions of the last two days, one call
--                          per event
--
-- Run from psql (demo/demo.sql does: \ir generate.sql) in a database with
-- persona installed. Staging tables live in schema demo_gen, dropped at the end.
-- Variables: shoppers (default 5000), seed (default 0.42).

\if :{?shoppers}
\else
\set shoppers 5000
\endif
\if :{?seed}
\else
\set seed 0.42
\endif

-- Quiet staging; the ingest steps below are timed.
\set QUIET on
\timing off
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS demo_gen CASCADE;
CREATE SCHEMA demo_gen;
SELECT setseed(:seed) AS seeded \gset

-- The catalog: 40 SKUs over 8 categories, prices in USD.
CREATE TABLE demo_gen.products AS
SELECT n AS product_no,
       format('SKU-%s-%s', upper(left(c.category, 3)), lpad(n::text, 3, '0')) AS sku,
       c.category,
       round((c.base_usd * (0.7 + 0.6 * random()))::numeric, 2) AS price_usd
  FROM generate_series(1, 40) AS n
  JOIN (VALUES (0, 'running-shoes', 120), (1, 'sneakers', 90), (2, 't-shirts', 25),
               (3, 'jackets', 150), (4, 'headphones', 200), (5, 'smartwatches', 300),
               (6, 'backpacks', 70), (7, 'yoga-mats', 40))
       AS c(k, category, base_usd) ON c.k = n % 8;

-- Where shoppers live, and the local currency with its rate to USD.
CREATE TABLE demo_gen.cities (city_no, city, country, currency, usd_rate) AS
VALUES (0, 'Mumbai', 'IN', 'INR', 83.0), (1, 'Delhi', 'IN', 'INR', 83.0),
       (2, 'Bengaluru', 'IN', 'INR', 83.0), (3, 'Berlin', 'DE', 'EUR', 0.92),
       (4, 'Munich', 'DE', 'EUR', 0.92), (5, 'London', 'GB', 'GBP', 0.79),
       (6, 'Manchester', 'GB', 'GBP', 0.79), (7, 'New York', 'US', 'USD', 1.0),
       (8, 'San Francisco', 'US', 'USD', 1.0), (9, 'Austin', 'US', 'USD', 1.0);

-- One row per shopper. login_at NULL: stays anonymous all month.
CREATE TABLE demo_gen.shoppers AS
SELECT n AS shopper_no,
       'anon-' || n AS anonymous_id,
       'user-' || n AS user_id,
       CASE WHEN random() < 0.6
            THEN now() - interval '30 days' + random() * interval '29 days' END AS login_at,
       1 + floor(random() * 3)::int AS sessions,
       floor(random() * 10)::int AS city_no,
       (ARRAY['web', 'web', 'app', 'app', 'email'])[1 + floor(random() * 5)::int] AS channel,
       (ARRAY['desktop', 'mobile', 'mobile', 'tablet'])[1 + floor(random() * 4)::int] AS device,
       (ARRAY['Asha', 'Ravi', 'Priya', 'Arjun', 'Lena', 'Jonas', 'Mia', 'Oliver',
              'Amelia', 'Noah', 'Emma', 'Liam', 'Sofia', 'Kabir', 'Zoe'])[1 + floor(random() * 15)::int] AS first_name,
       (ARRAY['Sharma', 'Patel', 'Iyer', 'Müller', 'Schmidt', 'Smith', 'Jones',
              'Brown', 'Garcia', 'Khan', 'Lee', 'Fischer'])[1 + floor(random() * 12)::int] AS last_name
  FROM generate_series(1, :shoppers) AS n;

-- 1 to 3 sessions per shopper over the last 30 days, each walking the funnel
-- as far as its dice say: 40% add to cart, half of those check out, 70% of
-- those buy.
CREATE TABLE demo_gen.sessions AS
SELECT format('s-%s-%s', r.shopper_no, r.k) AS session_id,
       r.shopper_no,
       r.started_at,
       -- The known user once logged in; the device's anonymous id is always sent.
       CASE WHEN r.started_at >= r.login_at THEN r.user_id END AS user_id,
       r.anonymous_id,
       r.channel,
       r.device,
       r.city_no,
       r.product_no,
       r.views,
       r.dice_cart < 0.4 AS cart,
       r.dice_cart < 0.4 AND r.dice_buy < 0.5 AS checkout,
       r.dice_cart < 0.4 AND r.dice_buy < 0.35 AS purchase
  FROM (SELECT s.shopper_no, k, s.user_id, s.anonymous_id, s.login_at, s.device, s.city_no,
               now() - interval '30 days' + random() * (interval '30 days' - interval '10 minutes') AS started_at,
               CASE WHEN random() < 0.8 THEN s.channel
                    ELSE (ARRAY['web', 'app', 'email'])[1 + floor(random() * 3)::int] END AS channel,
               1 + floor(random() * 40)::int AS product_no,
               1 + floor(random() * 5)::int AS views,
               random() AS dice_cart,
               random() AS dice_buy
          FROM demo_gen.shoppers AS s
         CROSS JOIN LATERAL generate_series(1, s.sessions) AS k
        OFFSET 0) AS r;

-- The events of every session, ordered in time within it.
CREATE TABLE demo_gen.events AS
WITH steps AS (
    SELECT ss.*, st.step, st.event_type
      FROM demo_gen.sessions AS ss
     CROSS JOIN LATERAL (
        SELECT 0 AS step, 'page_view' AS event_type
        UNION ALL SELECT v, 'product_view' FROM generate_series(1, ss.views) AS v
        UNION ALL SELECT ss.views + 1, 'add_to_cart' WHERE ss.cart
        UNION ALL SELECT ss.views + 2, 'checkout_started' WHERE ss.checkout
        UNION ALL SELECT ss.views + 3, 'purchase' WHERE ss.purchase) AS st
)
SELECT st.user_id,
       st.anonymous_id,
       st.event_type,
       CASE st.event_type
           WHEN 'page_view' THEN jsonb_build_object('path', '/c/' || p.category, 'title', initcap(replace(p.category, '-', ' ')))
           WHEN 'product_view' THEN jsonb_build_object('sku', p.sku, 'category', p.category, 'price', price.local)
           WHEN 'add_to_cart' THEN jsonb_build_object('sku', p.sku, 'category', p.category, 'price', price.local, 'quantity', 1)
           WHEN 'checkout_started' THEN jsonb_build_object('cart_value', price.local, 'items', 1)
           ELSE jsonb_build_object('order_id', 'o-' || st.session_id, 'sku', p.sku, 'category', p.category,
                                   'revenue', price.local, 'currency', c.currency)
       END AS properties,
       jsonb_build_object('channel', st.channel, 'device', st.device, 'session_id', st.session_id,
                          'geo', jsonb_build_object('country', c.country, 'city', c.city),
                          'currency', c.currency) AS context,
       st.started_at + st.step * interval '45 seconds' AS occurred_at
  FROM steps AS st
  JOIN demo_gen.products AS p USING (product_no)
  JOIN demo_gen.cities AS c USING (city_no)
 CROSS JOIN LATERAL (SELECT round(p.price_usd * c.usd_rate, 2) AS local) AS price;

\echo '-- generated:'
SELECT (SELECT count(*) FROM demo_gen.shoppers) AS shoppers,
       (SELECT count(*) FROM demo_gen.shoppers WHERE login_at IS NOT NULL) AS will_log_in,
       (SELECT count(*) FROM demo_gen.sessions) AS sessions,
       (SELECT count(*) FROM demo_gen.events) AS events;

\timing on
\set QUIET off

-- 1. INSERT ... SELECT: the anonymous browsing, one multi-row statement.
\echo '-- ingest path 1: INSERT INTO persona.events ... SELECT (anonymous sessions)'
INSERT INTO persona.events (user_id, anonymous_id, event_type, properties, context, occurred_at)
SELECT user_id, anonymous_id, event_type, properties, context, occurred_at
  FROM demo_gen.events
 WHERE user_id IS NULL
 ORDER BY occurred_at;

-- 2. Logins: identify merges each device's anonymous profile into the user's.
\echo '-- persona_identify: shoppers log in, anonymous profiles merge into users'
SELECT count(persona_identify(
           s.user_id,
           jsonb_build_object('name', s.first_name || ' ' || s.last_name,
                              'email', lower(s.first_name) || '.' || s.shopper_no || '@example.com',
                              'city', c.city, 'country', c.country,
                              'plan', CASE WHEN s.shopper_no % 10 = 0 THEN 'vip' ELSE 'member' END),
           s.anonymous_id)) AS identified
  FROM (SELECT * FROM demo_gen.shoppers WHERE login_at IS NOT NULL ORDER BY login_at) AS s
  JOIN demo_gen.cities AS c USING (city_no);

-- 3. COPY: logged-in sessions older than two days, streamed through psql's
-- \copy (COPY ... FROM STDIN on the wire) from a second psql that reads them.
\set QUIET on
\timing off
CREATE TABLE demo_gen.copy_batch AS
SELECT user_id, anonymous_id, event_type, properties, context, occurred_at
  FROM demo_gen.events
 WHERE user_id IS NOT NULL AND occurred_at < now() - interval '2 days'
 ORDER BY occurred_at;
\echo '-- ingest path 2: COPY persona.events FROM STDIN (logged-in sessions)'
\setenv PGDATABASE :DBNAME
\setenv PGHOST :HOST
\setenv PGPORT :PORT
\setenv PGUSER :USER
\timing on
\set QUIET off
\copy persona.events (user_id, anonymous_id, event_type, properties, context, occurred_at) FROM PROGRAM 'psql -X -q -c "COPY demo_gen.copy_batch TO STDOUT"'

-- 4. persona_track: the last two days, one call per event.
\echo '-- ingest path 3: persona_track, one call per event (the last two days)'
SELECT count(persona_track(e.user_id, e.event_type, e.properties, e.occurred_at,
                           e.context, e.anonymous_id)) AS tracked
  FROM (SELECT * FROM demo_gen.events
         WHERE user_id IS NOT NULL AND occurred_at >= now() - interval '2 days'
         ORDER BY occurred_at) AS e;

\set QUIET on
\timing off
DROP SCHEMA demo_gen CASCADE;
RESET client_min_messages;
ANALYZE persona.events, persona.profiles, persona.identities;
\timing on
\set QUIET off
