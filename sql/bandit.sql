-- The per-person bandit: each action learns, from feedback, its success as
-- a function of the person's features, and persona_decide ranks by the
-- person's own prediction once the action's model has enough feedback.
SET persona.decide_seed = 17;             -- reproducible samples
SET persona.bandit_min_feedback = 30;
SET persona.bandit_categories = 'kind';

-- Two actions; kind "a" people click offer_x and never offer_y, kind "b"
-- people the reverse: on average both succeed half the time, so only a
-- model of the person can tell them apart.
SELECT persona_create_action('offer_x', 'app', '{"title": "X"}');
SELECT persona_create_action('offer_y', 'app', '{"title": "Y"}');
-- (@bias is a built-in feature's name: a trait of that name is no feature.)
SELECT count(*) AS people FROM (
    SELECT persona_identify('bk-' || k || '-' || i, jsonb_build_object('kind', k, 'visits', i, '@bias', 5))
      FROM unnest(ARRAY['a', 'b']) AS k, generate_series(1, 10) AS i) AS x;

-- What a decision records: the person's features (@bias, the numeric trait
-- visits as ln(1 + visits), the category kind=a).
SELECT decision_id AS first FROM persona_decide('bk-a-3', '{}', 'app') \gset
SELECT features FROM persona.decisions WHERE decision_id = :first;

-- Feedback on both actions of each decision (n => 2: both are returned).
CREATE FUNCTION bandit_rounds(rounds int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d record;
    k text;
BEGIN
    FOR r IN 1..rounds LOOP
        FOREACH k IN ARRAY ARRAY['a', 'b'] LOOP
            FOR d IN SELECT * FROM persona_decide('bk-' || k || '-' || (r % 10 + 1), '{}', 'app', 2) LOOP
                PERFORM persona_feedback(d.decision_id,
                    CASE WHEN (k = 'a') = (d.action = 'offer_x') THEN 'click' ELSE 'ignore' END);
            END LOOP;
        END LOOP;
    END LOOP;
END
$$;

-- Before the threshold: the action's average ranks, and the reason says so.
SELECT bandit_rounds(5);
SELECT action, regexp_replace(reason, 'sampled [0-9.]+', 'sampled #') AS reason
  FROM persona_decide('bk-a-1', '{}', 'app', 2) ORDER BY action;

-- Past it (30 observations a model): kind a gets offer_x, kind b offer_y,
-- each by their own predicted success.
SELECT bandit_rounds(20);
SELECT a.name, s.trials, s.successes, (s.model->>'n')::int AS observed,
       ARRAY(SELECT jsonb_object_keys(s.model->'w') ORDER BY 1) AS features
  FROM persona.action_stats AS s JOIN persona.actions AS a USING (action_id) ORDER BY 1;
SELECT d.action, d.reason LIKE 'personal: %% success predicted for this person by a model of 5_ decisions with feedback, sampled %' AS personal
  FROM persona_decide('bk-a-7', '{}', 'app') AS d;
SELECT d.action, substring(d.reason FROM '^personal: ([0-9.]+)%')::float8 > 80 AS confident
  FROM persona_decide('bk-b-7', '{}', 'app') AS d;
-- A newcomer of each kind, never decided for before: the same.
SELECT persona_identify('bk-a-new', '{"kind": "a"}') > 0 AS created;
SELECT persona_identify('bk-b-new', '{"kind": "b"}') > 0 AS created;
SELECT id, (SELECT d.action FROM persona_decide(id, '{}', 'app') AS d) AS action
  FROM unnest(ARRAY['bk-a-new', 'bk-b-new']) AS id;
-- And every one of 20 more decisions of each kind follows the person.
SELECT k, string_agg(DISTINCT d.action, ',') AS actions, bool_and(d.reason LIKE 'personal:%') AS personal
  FROM unnest(ARRAY['a', 'b']) AS k, generate_series(1, 20) AS i,
       LATERAL persona_decide('bk-' || k || '-' || (i % 10 + 1), '{}', 'app') AS d
 GROUP BY k ORDER BY k;

-- A kind the models never saw: no evidence either way, the averages'
-- tie is broken by the samples, and the reason is still personal.
SELECT persona_identify('bk-c-1', '{"kind": "c"}') > 0 AS created;
SELECT d.reason LIKE 'personal: 5_._% success predicted%' AS uncertain
  FROM persona_decide('bk-c-1', '{}', 'app') AS d;

-- persona.bandit = off: the action's average, as 0.1.0 ranked.
SET persona.bandit = off;
SELECT d.reason LIKE 'learned: 50.0% success over % decisions with feedback, sampled %' AS average
  FROM persona_decide('bk-a-7', '{}', 'app') AS d;
RESET persona.bandit;

-- Without the category setting, kind is not a feature: the models cannot
-- tell the kinds apart and predict about one half for everyone.
RESET persona.bandit_categories;
SELECT d.reason ~ '^personal: [45]\d\.\d% success' AS undecided
  FROM persona_decide('bk-a-7', '{}', 'app') AS d;
SET persona.bandit_categories = 'kind';

-- The samples are reproducible: the same seed, the same scores.
SET persona.decide_seed = 99;
SELECT round(d.score::numeric, 6) AS first FROM persona_decide('bk-c-1', '{}', 'app') AS d \gset
SET persona.decide_seed = 99;
SELECT round(d.score::numeric, 6) = :first AS same FROM persona_decide('bk-c-1', '{}', 'app') AS d;

-- Feedback is idempotent for the model too: a second click changes nothing,
-- and a conversion after a click is not a second success.
SELECT s.model AS before FROM persona.action_stats AS s
  JOIN persona.actions AS a USING (action_id) WHERE a.name = 'offer_x' \gset
SELECT max(decision_id) AS last_x FROM persona.decisions AS d
  JOIN persona.feedback AS f USING (decision_id)
 WHERE d.action = 'offer_x' AND f.outcome = 'click' \gset
SELECT persona_feedback(:last_x, 'click');
SELECT persona_feedback(:last_x, 'conversion', 10);
SELECT s.model = :'before'::jsonb AS unchanged FROM persona.action_stats AS s
  JOIN persona.actions AS a USING (action_id) WHERE a.name = 'offer_x';

-- One observation, by hand (persona.bandit_learn): a failure lowers the
-- mean of each feature it has and raises its precision; a flip (a click
-- after an impression) moves the mean up by x / precision and counts no
-- new observation; a new feature joins at the prior N(0, 1).
SELECT persona.bandit_learn(NULL, '{"@bias": 1}', 'failure') AS failure;
SELECT persona.bandit_learn(persona.bandit_learn(NULL, '{"@bias": 1}', 'failure'),
                            '{"@bias": 1}', 'flip') AS flip;
SELECT persona.bandit_learn('{"n": 1, "w": {"@bias": [-0.4, 1.2]}}', '{"@bias": 1, "x": 2}', 'success') AS success;
SELECT persona.bandit_learn('{"n": 1, "w": {}}', '{"x": 1}', NULL) AS no_change;
SELECT persona.bandit_learn('{"n": 1, "w": {}}', NULL, 'success') AS no_features;
-- An impression then a click on one decision: one observation, a success.
SELECT d.decision_id AS imp FROM persona_decide('bk-a-new', '{}', 'app') AS d \gset
SELECT (s.model->>'n')::int AS n_before FROM persona.action_stats AS s
  JOIN persona.decisions AS d USING (action_id) WHERE d.decision_id = :imp \gset
SELECT persona_feedback(:imp, 'impression');
SELECT persona_feedback(:imp, 'click');
SELECT (s.model->>'n')::int - :n_before AS observations FROM persona.action_stats AS s
  JOIN persona.decisions AS d USING (action_id) WHERE d.decision_id = :imp;

-- Bad input.
SELECT persona.bandit_learn(NULL, '{"x": 1}', 'maybe');
SELECT persona.bandit_learn(NULL, '[1]', 'success');
SELECT persona.bandit_learn(NULL, '{"x": "1"}', 'success');
SELECT persona.bandit_learn('{"n": 1, "w": {"x": [0, 0]}}', '{"x": 1}', 'success');
SELECT persona.bandit_learn('{"w": {}}', '{"x": 1}', 'success');
SELECT persona.bandit_learn('[]', '{"x": 1}', 'success');
SET persona.bandit_min_feedback = 0;
SET persona.bandit_categories = 'kind,';
SET persona.decide_seed = -1;

DROP FUNCTION bandit_rounds(int);
SELECT persona_drop_action('offer_x');
SELECT persona_drop_action('offer_y');
