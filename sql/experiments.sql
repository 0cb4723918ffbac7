-- Experiments and holdouts (docs/experiments.md): the hash, enforcement in
-- persona_decide, sticky assignment, merge and forget, the report's every
-- figure against a hand computation, and bad input.
\set VERBOSITY terse
SET timezone = 'UTC';

-- ---------------------------------------------------------------------
-- The hash, recomputed here in plain SQL as any other system would:
-- FNV-1a 32-bit over the UTF-8 bytes of name || ':' || id, modulo 10,000.
-- ---------------------------------------------------------------------
CREATE FUNCTION pg_temp.fnv_bucket(s text) RETURNS int LANGUAGE sql AS $$
    WITH RECURSIVE b (i, h) AS (
        SELECT 0, 2166136261::bigint
        UNION ALL
        SELECT b.i + 1, ((b.h # get_byte(convert_to(s, 'UTF8'), b.i)) * 16777619) % 4294967296
          FROM b WHERE b.i < octet_length(convert_to(s, 'UTF8')))
    SELECT (h % 10000)::int FROM b ORDER BY i DESC LIMIT 1
$$;
SELECT count(*) AS ids,
       count(*) FILTER (WHERE persona.experiment_bucket('cart_holdout', id)
                              <> pg_temp.fnv_bucket('cart_holdout:' || id)) AS mismatches
  FROM (SELECT 'user-' || i AS id FROM generate_series(1, 300) AS i
        UNION ALL VALUES ('Ünïcödé ✓'), ('a:b'), ('x')) AS ids;
-- Reference values for other implementations (docs/experiments.md).
SELECT persona.experiment_bucket('e1', 'user-1') AS e1_user_1,
       persona.experiment_bucket('cart_holdout', 'user-42') AS cart_user_42;
-- Buckets spread evenly: 10% of 20,000 ids fall below 1,000.
SELECT round(avg((persona.experiment_bucket('spread', 'id-' || i) < 1000)::int), 2) AS share_below_1000
  FROM generate_series(1, 20000) AS i;

-- ---------------------------------------------------------------------
-- Enforcement in persona_decide
-- ---------------------------------------------------------------------
SELECT persona_create_action('banner', 'web', '{"t": "banner"}', priority => 5);
SELECT persona_create_action('fallback', 'web', '{"t": "fallback"}', priority => 1);
SELECT persona_create_action('mail', 'email', '{"t": "mail"}');
SELECT persona_create_experiment('banner_test', 50, 'banner');
-- One id of each arm, by the hash (on the user_id: these are known users).
SELECT min(id) FILTER (WHERE persona.experiment_bucket('banner_test', id) < 5000) AS h,
       min(id) FILTER (WHERE persona.experiment_bucket('banner_test', id) >= 5000) AS t
  FROM (SELECT 'u' || i AS id FROM generate_series(1, 20) AS i) AS x \gset
SELECT persona_identify(:'h', '{}') > 0 AS h_known, persona_identify(:'t', '{}') > 0 AS t_known;
-- Nothing is recorded before the first exposure; an email-only decision
-- never reaches the banner, so it exposes nobody.
SELECT count(*) AS email_rows FROM persona_decide(:'h', channel => 'email');
SELECT count(*) AS assignments FROM persona.assignments;
-- The holdout gets the next best, the treatment the banner; both exposed.
SELECT action FROM persona_decide(:'h');
SELECT action FROM persona_decide(:'t');
SELECT i.id = :'h' AS is_h, a.experiment, a.arm
  FROM persona.assignments AS a JOIN persona.identities AS i USING (profile_id)
 ORDER BY 1 DESC;
-- With n = 3 the holdout gets everything but the banner.
SELECT action FROM persona_decide(:'h', n => 3) ORDER BY action;
-- persona_arm agrees and is sticky; asking again writes nothing new.
SELECT persona_arm('banner_test', :'h') AS h_arm, persona_arm('banner_test', :'t') AS t_arm,
       persona_arm('banner_test', :'h') AS h_again;
SELECT count(*) AS assignments FROM persona.assignments;
-- The hook for triggers and campaigns.
SELECT persona.holdout_suppresses(persona.resolve(:'h'), 'banner') AS h_suppressed,
       persona.holdout_suppresses(persona.resolve(:'t'), 'banner') AS t_suppressed,
       persona.holdout_suppresses(persona.resolve(:'h'), 'fallback') AS other_action;
-- The outbox uses it: a message of the banner is not queued for the
-- holdout, and is counted as suppressed by the holdout.
SELECT persona.enqueue_message(persona.resolve(:'h'), 'banner', 'trigger:exp') IS NULL AS h_not_queued,
       persona.enqueue_message(persona.resolve(:'t'), 'banner', 'trigger:exp') IS NOT NULL AS t_queued;
SELECT reason, messages FROM persona.suppressions WHERE source = 'trigger:exp';

-- An anonymous visitor is hashed on the id of the call; asking is exposure.
SELECT persona_arm('banner_test', 'anon-v1') =
       CASE WHEN persona.experiment_bucket('banner_test', 'anon-v1') < 5000
            THEN 'holdout' ELSE 'treatment' END AS hashed_on_anonymous_id;

-- ---------------------------------------------------------------------
-- Merge: one assignment per person, the survivor's
-- ---------------------------------------------------------------------
-- An anonymous id in the other arm than a user: after the merge, the user's.
SELECT min(id) FILTER (WHERE persona.experiment_bucket('banner_test', id) < 5000) AS anon_h
  FROM (SELECT 'anon-' || i AS id FROM generate_series(1, 20) AS i) AS x \gset
SELECT persona_arm('banner_test', :'anon_h') AS anon_arm;
SELECT persona_identify(:'t', '{}', :'anon_h') = persona.resolve(:'t') AS merged;
SELECT a.arm, count(*) FROM persona.assignments AS a
 WHERE a.profile_id = persona.resolve(:'t') GROUP BY 1;
-- A survivor with no assignment takes the absorbed profile's.
SELECT persona_arm('banner_test', 'anon-m2') IS NOT NULL AS anon_assigned;
SELECT persona_identify('user-m2', '{}', 'anon-m2') > 0 AS merged;
SELECT count(*) AS kept FROM persona.assignments WHERE profile_id = persona.resolve('user-m2');
-- Forget erases them.
SELECT persona_forget('user-m2') > 0 AS forgotten;
SELECT count(*) AS left_behind FROM persona.assignments AS a
 WHERE NOT EXISTS (SELECT FROM persona.profiles AS p WHERE p.profile_id = a.profile_id);

-- ---------------------------------------------------------------------
-- A global holdout, ended and dropped
-- ---------------------------------------------------------------------
SELECT persona_create_experiment('global', 50);
SELECT min(id) FILTER (WHERE persona.experiment_bucket('global', id) < 5000) AS gh,
       min(id) FILTER (WHERE persona.experiment_bucket('global', id) >= 5000) AS gt
  FROM (SELECT 'g' || i AS id FROM generate_series(1, 20) AS i) AS x \gset
SELECT count(*) AS holdout_rows FROM persona_decide(:'gh');
SELECT count(*) AS treatment_rows FROM persona_decide(:'gt');
SELECT i.id = :'gh' AS is_gh, a.arm FROM persona.assignments AS a
  JOIN persona.identities AS i USING (profile_id)
 WHERE a.experiment = 'global' ORDER BY 1 DESC;
SELECT persona.holdout_suppresses(persona.resolve(:'gh'), 'mail') AS every_action_suppressed;
-- Ended: nothing withheld, nobody new assigned, the assignments kept.
SELECT persona_end_experiment('global');
SELECT count(*) AS holdout_rows_after_end FROM persona_decide(:'gh');
SELECT persona_arm('global', :'gh') AS recorded, persona_arm('global', 'g-new') AS never_assigned;
SELECT count(*) AS global_assignments FROM persona.assignments WHERE experiment = 'global';
SELECT persona_end_experiment('global');
UPDATE persona.experiments SET status = 'running', ended_at = NULL WHERE name = 'global';
-- Dropped: with its assignments.
SELECT persona_drop_experiment('global');
SELECT count(*) AS global_assignments FROM persona.assignments WHERE experiment = 'global';

-- ---------------------------------------------------------------------
-- Bad input: a clear SQLSTATE, nothing written
-- ---------------------------------------------------------------------
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT persona_create_experiment('bad', 0, 'banner');
SELECT persona_create_experiment('bad', 100);
SELECT persona_create_experiment('bad', -5);
SELECT persona_create_experiment('bad', 'NaN');
SELECT persona_create_experiment('bad', 0.001);
SELECT persona_create_experiment('bad', 10, 'no_such_action');
SELECT persona_create_experiment('banner_test', 10, 'banner');
SELECT persona_create_experiment(NULL, 10);
SELECT persona_create_experiment('', 10);
UPDATE persona.experiments SET holdout_pct = 20 WHERE name = 'banner_test';
UPDATE persona.experiments SET action = 'fallback' WHERE name = 'banner_test';
SELECT persona_arm('no_such_experiment', 'u1');
SELECT persona_arm('banner_test', '');
SELECT persona_arm('banner_test', NULL);
SELECT * FROM persona_experiment_report('no_such_experiment', 'purchase');
SELECT * FROM persona_experiment_report('banner_test', 'no_such_event');
SELECT persona_end_experiment('no_such_experiment');
SELECT persona_drop_experiment('no_such_experiment');
\set VERBOSITY terse
SELECT name, holdout_pct, action, status FROM persona.experiments ORDER BY name;

-- ---------------------------------------------------------------------
-- The report, every figure against a hand computation
-- ---------------------------------------------------------------------
-- 50 people in the holdout, 150 in the treatment (a 20% split, so the
-- sample ratio is off: 25% held out), assigned on 1 February.
SELECT persona_create_experiment('rep', 20, 'fallback');
SELECT count(persona_track(id, 'page_view', occurred_at => '2026-01-01 00:00+00'))
  FROM (SELECT 'r-h-' || i AS id FROM generate_series(1, 50) AS i
        UNION ALL SELECT 'r-t-' || i FROM generate_series(1, 150) AS i) AS x;
INSERT INTO persona.assignments (profile_id, experiment, arm, assigned_at)
SELECT persona.resolve(id), 'rep', CASE WHEN id LIKE 'r-h-%' THEN 'holdout' ELSE 'treatment' END,
       '2026-02-01 00:00+00'
  FROM (SELECT 'r-h-' || i AS id FROM generate_series(1, 50) AS i
        UNION ALL SELECT 'r-t-' || i FROM generate_series(1, 150) AS i) AS x;
-- Converters: r-h-1..10 and r-t-1..45 buy for 100 on 10 February; r-t-1
-- buys again for 50 on the 11th (one converter, revenue 150); r-t-46 buys
-- on the 12th with a revenue that is not a number (a converter, no
-- revenue). Not conversions: r-h-11 bought before its assignment, r-h-12
-- sent a refund.
SELECT count(persona_track(id, 'purchase', '{"revenue": 100}', '2026-02-10 12:00+00'))
  FROM (SELECT 'r-h-' || i AS id FROM generate_series(1, 10) AS i
        UNION ALL SELECT 'r-t-' || i FROM generate_series(1, 45) AS i) AS x;
SELECT persona_track('r-t-1', 'purchase', '{"revenue": 50}', '2026-02-11 12:00+00') > 0,
       persona_track('r-t-46', 'purchase', '{"revenue": "abc"}', '2026-02-12 12:00+00') > 0,
       persona_track('r-h-11', 'purchase', '{"revenue": 100}', '2026-01-15 12:00+00') > 0,
       persona_track('r-h-12', 'refund', '{"revenue": 100}', '2026-02-10 12:00+00') > 0;

SELECT arm, users, converters, conversion_rate, round(revenue_per_user::numeric, 6) AS rpu,
       round(lift::numeric, 6) AS lift, round(ci_low::numeric, 6) AS ci_low,
       round(ci_high::numeric, 6) AS ci_high, round(p_value::numeric, 6) AS p_value,
       round(srm_p_value::numeric, 6) AS srm_p_value
  FROM persona_experiment_report('rep', 'purchase');

-- By hand: the counts from a plain GROUP BY, the formulas of
-- docs/experiments.md written out again. n_h = 50, x_h = 10, n_t = 150,
-- x_t = 46; p_h = 0.2, p_t = 0.30667; revenue 1000 and 4550.
-- lift = 0.306667 / 0.2 - 1 = 0.533333
-- var = p_t(1 - p_t) / (n_t p_h^2) + p_t^2 (1 - p_h) / (n_h p_h^3)
-- The p-values need erfc, which PostgreSQL 15's SQL lacks: computed with
-- Python's math.erfc from the same counts,
--   z = (p_t - p_h) / sqrt(p(1 - p)(1/n_t + 1/n_h)), p = 56/200:
--   z = 1.4547859349066152, p_value = erfc(|z| / sqrt 2) = 0.1457285332020406
--   chi2 = (50 - 40)^2 / 40 + (150 - 160)^2 / 160 = 3.125,
--   srm_p_value = erfc(sqrt(3.125 / 2)) = 0.07709987174354177
WITH hand AS (
    SELECT count(*) FILTER (WHERE a.arm = 'holdout') AS n_h,
           count(*) FILTER (WHERE a.arm = 'holdout' AND c.pid IS NOT NULL) AS x_h,
           coalesce(sum(c.rev) FILTER (WHERE a.arm = 'holdout'), 0) AS r_h,
           count(*) FILTER (WHERE a.arm = 'treatment') AS n_t,
           count(*) FILTER (WHERE a.arm = 'treatment' AND c.pid IS NOT NULL) AS x_t,
           coalesce(sum(c.rev) FILTER (WHERE a.arm = 'treatment'), 0) AS r_t
      FROM persona.assignments AS a
      LEFT JOIN (SELECT e.profile_id AS pid, sum(CASE WHEN jsonb_typeof(e.properties->'revenue') = 'number'
                                                      THEN (e.properties->>'revenue')::float8 END) AS rev
                   FROM persona.events AS e JOIN persona.assignments AS a2
                     ON a2.profile_id = e.profile_id AND a2.experiment = 'rep'
                  WHERE e.event_type = 'purchase' AND e.occurred_at >= a2.assigned_at
                  GROUP BY 1) AS c ON c.pid = a.profile_id
     WHERE a.experiment = 'rep'),
f AS (SELECT *, x_h::float8 / n_h AS p_h, x_t::float8 / n_t AS p_t FROM hand),
g AS (SELECT *, p_t / p_h - 1 AS lift,
             sqrt(p_t * (1 - p_t) / (n_t * p_h ^ 2) + p_t ^ 2 * (1 - p_h) / (n_h * p_h ^ 3)) AS se
        FROM f),
r AS (SELECT * FROM persona_experiment_report('rep', 'purchase') WHERE arm = 'treatment'),
h AS (SELECT * FROM persona_experiment_report('rep', 'purchase') WHERE arm = 'holdout')
SELECT g.n_h, g.x_h, g.r_h, g.n_t, g.x_t, g.r_t,
       h.users = g.n_h AND h.converters = g.x_h AND h.conversion_rate = g.p_h
         AND abs(h.revenue_per_user - g.r_h / g.n_h) < 1e-12 AS holdout_row_ok,
       r.users = g.n_t AND r.converters = g.x_t AND r.conversion_rate = g.p_t
         AND abs(r.revenue_per_user - g.r_t / g.n_t) < 1e-12 AS treatment_row_ok,
       abs(r.lift - g.lift) < 1e-12 AS lift_ok,
       abs(r.ci_low - (g.lift - 1.959963984540054 * g.se)) < 1e-12
         AND abs(r.ci_high - (g.lift + 1.959963984540054 * g.se)) < 1e-12 AS ci_ok,
       abs(r.p_value - 0.1457285332020406) < 1e-12 AS p_value_ok,
       abs(r.srm_p_value - 0.07709987174354177) < 1e-12 AS srm_ok,
       h.lift IS NULL AND h.p_value IS NULL AND h.srm_p_value IS NULL AS holdout_row_has_no_test
  FROM g, r, h;

-- since: only r-t-1's second purchase and r-t-46's count. No holdout
-- converter, so no lift; the z-test still has a pooled variance
-- (python: z = 0.8206099398622183, p = 0.4118684840579512).
SELECT arm, users, converters, round(revenue_per_user::numeric, 6) AS rpu, lift,
       round(p_value::numeric, 10) AS p_value, round(srm_p_value::numeric, 10) AS srm_p_value
  FROM persona_experiment_report('rep', 'purchase', '2026-02-11 00:00+00');

-- Per day, for a BI chart: cumulative by the end of each day.
SELECT day, arm, users, converters, conversion_rate, round(revenue_per_user::numeric, 4) AS rpu
  FROM persona_experiment_daily('rep', 'purchase', '2026-02-09 00:00+00')
 WHERE day BETWEEN '2026-02-09' AND '2026-02-13'
 ORDER BY day, arm;

-- An ended experiment counts conversions until its end only.
UPDATE persona.assignments SET assigned_at = now() - interval '1 hour' WHERE experiment = 'banner_test';
SELECT persona_track(:'t', 'purchase', '{"revenue": 10}') > 0 AS bought;
SELECT persona_end_experiment('banner_test');
SELECT persona_track(:'h', 'purchase', '{"revenue": 10}', now() + interval '1 minute') > 0 AS bought_later;
SELECT arm, users, converters FROM persona_experiment_report('banner_test', 'purchase');

SELECT persona_drop_experiment('rep');
SELECT persona_drop_experiment('banner_test');
SELECT count(*) AS assignments_left FROM persona.assignments;
SELECT persona_drop_action('banner'), persona_drop_action('fallback'), persona_drop_action('mail');
