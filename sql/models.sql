-- Predictions: training at a point in time, the held-out evaluation, the
-- score as a live trait (persona.traits, persona_profile, segments,
-- conditions), retraining, dropping, and bad input.
--
-- It runs in a database of its own: training reads every profile, so the
-- other tests' profiles would change its figures.
\set VERBOSITY default
\set SHOW_CONTEXT never
\set regress_db :DBNAME
SET client_min_messages = warning;
DROP DATABASE IF EXISTS persona_models;
CREATE DATABASE persona_models;
\c persona_models
SET client_min_messages = warning;
CREATE EXTENSION persona;
RESET client_min_messages;
SET timezone = 'UTC';

SELECT persona_define_trait('m_views', 'count', 'm_view');
SELECT persona_define_trait('m_spend', 'sum', 'm_buy', 'price');
SELECT persona_define_trait('m_last_sku', 'last', 'm_view', 'sku');
SELECT persona_define_trait('m_views_7d', 'count', 'm_view', time_window => '7 days');

-- 500 people. Everyone signed up 60 days ago; person i viewed i % 10
-- products 45 days ago. In the last 30 days, most of those with 5 or more
-- views bought, and a few of the others (the label depends on views, with
-- noise). Views after the cutoff must not leak into the features: the
-- buyers viewed once more before buying.
INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
SELECT 'm' || i, 'm_signup', '{}', now() - interval '60 days' FROM generate_series(1, 500) AS i;
INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
SELECT 'm' || i, 'm_view', jsonb_build_object('sku', 'sku-' || j), now() - interval '45 days' + j * interval '1 hour'
  FROM generate_series(1, 500) AS i, generate_series(1, 9) AS j WHERE j <= i % 10;
INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
SELECT 'm' || i, e.type, e.props, now() - e.ago
  FROM generate_series(1, 500) AS i,
       (VALUES ('m_view', '{"sku": "sku-late"}'::jsonb, interval '11 days'),
               ('m_buy', '{"price": 40}'::jsonb, interval '10 days')) AS e(type, props, ago)
 WHERE (i % 10 >= 5 AND i % 7 <> 0) OR (i % 10 < 5 AND i % 13 = 0);

INSERT INTO persona.events (user_id, event_type, occurred_at)
SELECT 'm' || i, 'm_login', now() - interval '5 days' FROM generate_series(1, 500) AS i;

-- Bad input: each a clear error, and nothing written.
SELECT persona_train_model(NULL, 'm_buy', '30 days');
SELECT persona_train_model('Buyer', 'm_buy', '30 days');
SELECT persona_train_model('event_count', 'm_buy', '30 days');
SELECT persona_train_model('m_views', 'm_buy', '30 days');
SELECT persona_train_model('m_buyer', NULL, '30 days');
SELECT persona_train_model('m_buyer', '', '30 days');
SELECT persona_train_model('m_buyer', 'm_never', '30 days');
SELECT persona_train_model('m_buyer', 'm_buy', NULL);
SELECT persona_train_model('m_buyer', 'm_buy', '0');
SELECT persona_train_model('m_buyer', 'm_buy', '-1 day');
SELECT persona_train_model('m_buyer', 'm_buy', '30 days', '{}');
SELECT persona_train_model('m_buyer', 'm_buy', '30 days', '{m_nope}');
SELECT persona_train_model('m_buyer', 'm_buy', '30 days', '{m_last_sku}');
SELECT persona_train_model('m_buyer', 'm_buy', '30 days', '{traits}');
SELECT persona_train_model('m_buyer', 'm_buy', '30 days', '{m_views,m_views}');
SELECT persona_train_model('m_buyer', 'm_buy', '30 days', ARRAY['m_views', NULL]);
-- No positives: nobody signed up in the last 30 days.
SELECT persona_train_model('m_buyer', 'm_signup', '30 days', '{m_views}');
-- No negatives: everyone logged in in the last 30 days.
SELECT persona_train_model('m_buyer', 'm_login', '30 days', '{m_views}');
-- Nobody had an event before a cutoff 70 days ago.
SELECT persona_train_model('m_buyer', 'm_signup', '70 days', '{m_views}');
SELECT count(*) AS models FROM persona.models;
SELECT count(*) AS columns FROM pg_attribute WHERE attrelid = 'persona.traits'::regclass AND attnum > 0;

-- Training. Rows are the profiles that existed at the cutoff; one in five
-- is held out (a hash of the profile id) and scored.
SELECT persona_train_model('m_buyer', 'm_buy', '30 days', '{m_views, m_spend, days_since_first_seen}') AS fit \gset
SELECT (:'fit'::jsonb)->'rows' AS rows, (:'fit'::jsonb)->'positives' AS positives,
       (:'fit'::jsonb)->'held_out' AS held_out,
       ((:'fit'::jsonb)->>'held_out')::int = (SELECT count(*) FROM persona.profiles AS p WHERE persona.model_held_out(p.profile_id)) AS held_out_by_hash,
       round(((:'fit'::jsonb)->>'auc')::numeric, 3) AS auc,
       round(((:'fit'::jsonb)->>'log_loss')::numeric, 3) AS log_loss,
       ((:'fit'::jsonb)->>'auc')::float8 > 0.8 AS auc_above_0_8;
-- More views, more buying: a positive weight. The spend before the cutoff
-- was 0 for everyone (the purchases came after it: no leakage), and every
-- profile is equally old: those weigh nothing.
SELECT round(((:'fit'::jsonb)->'weights'->>'m_views')::numeric, 3) AS w_views,
       ((:'fit'::jsonb)->'weights'->>'m_views')::float8 > 0 AS views_raise_it,
       ((:'fit'::jsonb)->'weights'->>'m_spend')::float8 = 0 AS spend_weighs_nothing,
       abs(((:'fit'::jsonb)->'weights'->>'days_since_first_seen')::float8) < 1e-6 AS age_weighs_nothing;
SELECT name, target_event, horizon, features, feature_ids = ARRAY[1, 2, -3] AS ids, reads, clock
  FROM persona.models;

-- The score is a float8 column of persona.traits, after the traits.
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a WHERE a.attrelid = 'persona.traits'::regclass AND a.attnum > 0
 ORDER BY a.attnum;
-- Now, the buyers' spend is 40 and their views one more: the score reads
-- the profile as it is now. More views, a higher score.
SELECT p.user_id, t.m_views, t.m_spend, round(t.m_buyer::numeric, 4) AS m_buyer,
       round(persona_predict('m_buyer', p.user_id)::numeric, 4) AS predicted,
       round((persona_profile(p.user_id)->'computed'->>'m_buyer')::numeric, 4) AS in_profile
  FROM persona.traits AS t JOIN persona.profiles AS p USING (profile_id)
 WHERE p.user_id IN ('m10', 'm13', 'm14', 'm18', 'm19') ORDER BY t.m_buyer;
SELECT persona_predict('m_buyer', 'm-unknown') AS unknown_person;
SELECT persona_predict('m_nothing', 'm10');
SELECT persona_predict(NULL, 'm10');

-- A segment on the score: members are those above it now; it moves on ingest.
SELECT persona_create_segment('m_likely_buyers', 'm_buyer > 0.7');
SELECT reads, clock FROM persona.segments WHERE name = 'm_likely_buyers';
SELECT count(*) AS members,
       count(*) = (SELECT count(*) FROM persona.traits AS t WHERE t.m_buyer > 0.7) AS as_the_view_says
  FROM persona.segment_members WHERE segment = 'm_likely_buyers';
SELECT persona_in_segment('m20', 'm_likely_buyers') AS m20_in;
INSERT INTO persona.events (user_id, event_type, properties)
SELECT 'm20', 'm_view', '{"sku": "sku-new"}' FROM generate_series(1, 9);
SELECT persona_in_segment('m20', 'm_likely_buyers') AS m20_in,
       round(persona_predict('m_buyer', 'm20')::numeric, 4) AS m20_score;
SELECT l.op, p.user_id FROM persona.segment_log AS l JOIN persona.profiles AS p USING (profile_id)
 WHERE l.segment = 'm_likely_buyers' AND p.user_id = 'm20';

-- An action condition on the score: a win-back offer for the unlikely.
SELECT persona_create_action('m_winback', 'web', '{"title": "We miss you"}', condition => 'm_buyer < 0.3');
SELECT p.user_id, d.action
  FROM (VALUES ('m10'), ('m19')) AS p(user_id), LATERAL persona_decide(p.user_id) AS d
 ORDER BY 1;

-- A segment on a model that reads days since last seen changes with the
-- clock: persona_tick re-evaluates it (clock).
SELECT persona_train_model('m_lapsing', 'm_buy', '30 days', '{m_views, days_since_last_seen}') IS NOT NULL AS trained;
SELECT persona_create_segment('m_lapsing_high', 'm_lapsing > 0.5');
SELECT reads, clock FROM persona.segments WHERE name = 'm_lapsing_high';

-- Retraining a model that segments read re-evaluates them for every
-- profile, which must see every committed change: READ COMMITTED only.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT persona_train_model('m_lapsing', 'm_buy', '30 days', '{m_views_7d}');
ROLLBACK;

-- Retraining replaces the weights in place: same column, segments on it
-- re-read with the new features and re-evaluated.
SELECT persona_train_model('m_lapsing', 'm_buy', '30 days', '{m_views_7d}') IS NOT NULL AS retrained;
SELECT name, features, clock FROM persona.models ORDER BY model_id;
SELECT reads, clock FROM persona.segments WHERE name = 'm_lapsing_high';
SELECT count(*) AS members,
       count(*) = (SELECT count(*) FROM persona.traits AS t WHERE t.m_lapsing > 0.5) AS as_the_view_says
  FROM persona.segment_members WHERE segment = 'm_lapsing_high';
SELECT count(*) AS columns FROM pg_attribute WHERE attrelid = 'persona.traits'::regclass AND attnum > 0;

-- The weights are constants of persona.traits too: not changed by hand.
UPDATE persona.models SET params = params;
DELETE FROM persona.models;

-- What reads a model or what a model reads cannot be dropped under it.
SELECT persona_drop_trait('m_views');
SELECT persona_drop_model('m_buyer');
SELECT persona_drop_action('m_winback');
SELECT persona_drop_model('m_buyer');
SELECT persona_define_trait('m_buyer', 'count', 'm_view');
SELECT persona_drop_segment('m_likely_buyers');
SELECT persona_drop_model('m_buyer');
SELECT persona_drop_model('m_buyer');
SELECT persona_drop_model(NULL);
SELECT persona_predict('m_buyer', 'm10');
SELECT persona_profile('m10')->'computed' ? 'm_buyer' AS still_there,
       persona_profile('m10')->'computed' ? 'm_lapsing' AS other_there;

\c :regress_db
DROP DATABASE persona_models WITH (FORCE);
