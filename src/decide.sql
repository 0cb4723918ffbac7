-- Decisions: actions, persona_decide (src/decide.c), feedback and the
-- per-action statistics the decisions learn from.

CREATE SEQUENCE persona.action_id_seq AS int;
COMMENT ON SEQUENCE persona.action_id_seq IS 'allocates action ids';

CREATE TABLE persona.actions (
    action_id       int         PRIMARY KEY DEFAULT nextval('persona.action_id_seq'),
    name            text        NOT NULL UNIQUE,
    channel         text        NOT NULL,
    content         jsonb       NOT NULL,
    segment         text,
    condition       text,
    condition_sql   text,
    condition_reads text[]      NOT NULL DEFAULT '{}',
    priority        int         NOT NULL DEFAULT 0,
    -- Bounded, so that whatever is stored always evaluates.
    value           float8      NOT NULL DEFAULT 1
                                CHECK (value > 0 AND value < 'Infinity'::float8),
    cap_per_day     int         CHECK (cap_per_day > 0),
    cooldown        interval    CHECK (cooldown > interval '0' AND cooldown <= interval '10 years'),
    starts_at       timestamptz,
    ends_at         timestamptz,
    paused          boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE persona.action_id_seq OWNED BY persona.actions.action_id;
COMMENT ON TABLE persona.actions IS 'what persona_decide can choose from (persona_create_action)';
COMMENT ON COLUMN persona.actions.condition_sql IS 'the checked condition, deparsed: what is evaluated';

-- Learned from feedback; kept apart from the definitions, which are cached.
CREATE TABLE persona.action_stats (
    action_id   int    PRIMARY KEY,
    trials      bigint NOT NULL DEFAULT 0,
    successes   bigint NOT NULL DEFAULT 0,
    conversions bigint NOT NULL DEFAULT 0,
    revenue     float8 NOT NULL DEFAULT 0,
    errors        bigint      NOT NULL DEFAULT 0,
    last_error    text,
    last_error_at timestamptz,
    model         jsonb
);
COMMENT ON TABLE persona.action_stats IS
    'per action: decisions with feedback (trials), clicked or converted (successes), conversions, revenue, and condition errors';
COMMENT ON COLUMN persona.action_stats.errors IS
    'calls of persona_decide in which the condition failed (the action was not eligible for that call)';
COMMENT ON COLUMN persona.action_stats.last_error IS 'SQLSTATE and message of the last condition error';
COMMENT ON COLUMN persona.action_stats.model IS
    'the per-person bandit: a Bayesian logistic model of success over the features of decisions, {"n": observations, "w": {feature: [mean, precision]}} (docs/decisions.md)';

CREATE SEQUENCE persona.decision_id_seq CACHE 32;
COMMENT ON SEQUENCE persona.decision_id_seq IS 'allocates decision ids';

CREATE TABLE persona.decisions (
    decision_id bigint      PRIMARY KEY DEFAULT nextval('persona.decision_id_seq'),
    profile_id  bigint      NOT NULL,
    action_id   int         NOT NULL,
    action      text        NOT NULL,
    channel     text        NOT NULL,
    score       float8      NOT NULL,
    reason      text        NOT NULL,
    context     jsonb       NOT NULL,
    content     jsonb       NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    features    jsonb
);
ALTER SEQUENCE persona.decision_id_seq OWNED BY persona.decisions.decision_id;
CREATE INDEX decisions_profile_action_idx ON persona.decisions (profile_id, action_id, decided_at);
COMMENT ON TABLE persona.decisions IS 'every action persona_decide returned, with the content as rendered';
COMMENT ON COLUMN persona.decisions.features IS
    'the person''s features the decision saw ({feature: value}), which feedback on it teaches the action''s model';

CREATE TABLE persona.feedback (
    decision_id bigint      NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('impression', 'click', 'conversion', 'dismiss', 'ignore')),
    value       float8,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (decision_id, outcome)
);
COMMENT ON TABLE persona.feedback IS 'outcomes of decisions (persona_feedback), at most one per decision and outcome';

-- A forget step of the registry (src/registry.sql): a profile's decisions
-- and their feedback (keyed by decision, so it goes with them).
CREATE FUNCTION persona.erase_decisions(profile_id bigint)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_pid  bigint := $1;
    v_rows bigint;
    v_n    bigint;
BEGIN
    DELETE FROM persona.feedback AS f
     USING persona.decisions AS d
     WHERE d.decision_id = f.decision_id AND d.profile_id = v_pid;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    DELETE FROM persona.decisions AS d WHERE d.profile_id = v_pid;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_rows + v_n;
END
$$;
COMMENT ON FUNCTION persona.erase_decisions(bigint) IS
    'forget step of persona.decisions: deletes the decisions of a profile and their feedback; returns the number of rows';

SELECT pg_catalog.pg_extension_config_dump('persona.actions', '');
SELECT pg_catalog.pg_extension_config_dump('persona.action_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.action_stats', '');
SELECT pg_catalog.pg_extension_config_dump('persona.decisions', '');
SELECT pg_catalog.pg_extension_config_dump('persona.decision_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.feedback', '');

-- However a row is written, its SQL is the checked compilation of its text.
CREATE TRIGGER actions_compile
    BEFORE INSERT OR UPDATE ON persona.actions
    FOR EACH ROW EXECUTE FUNCTION persona.compile_definition(
        'persona.decision_source', 'condition', 'condition_sql', 'condition_reads', '');

-- persona_decide caches the definitions; changes reach every backend.
CREATE TRIGGER actions_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON persona.actions
    FOR EACH STATEMENT EXECUTE FUNCTION persona.announce_change();

-- Checks an action's definition (all fields, as they would be stored).
CREATE FUNCTION persona.check_action(a persona.actions) RETURNS persona.actions
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_c record;
BEGIN
    PERFORM persona.check_name(a.name, 'name');
    IF a.channel IS NULL THEN
        RAISE EXCEPTION 'channel must not be null' USING ERRCODE = '22004';
    END IF;
    IF a.channel !~ '^[a-z][a-z0-9_]{0,31}$' THEN
        RAISE EXCEPTION 'invalid channel name "%"', a.channel USING ERRCODE = '22023',
            HINT = 'Use up to 32 lower-case letters, digits and underscores, starting with a letter, such as web, email or push.';
    END IF;
    PERFORM persona.check_object(a.content, 'content');
    IF a.segment IS NOT NULL AND NOT EXISTS (SELECT FROM persona.segments AS s WHERE s.name = a.segment) THEN
        RAISE EXCEPTION 'segment "%" does not exist', a.segment USING ERRCODE = '42704';
    END IF;
    IF a.priority IS NULL OR a.value IS NULL OR a.paused IS NULL THEN
        RAISE EXCEPTION 'priority, value and paused must not be null' USING ERRCODE = '22004';
    END IF;
    IF NOT (a.value > 0) OR a.value IN ('Infinity'::float8, 'NaN'::float8) THEN
        RAISE EXCEPTION 'value must be a positive finite number' USING ERRCODE = '22023',
            DETAIL = format('The value given was %s.', a.value);
    END IF;
    IF a.cap_per_day IS NOT NULL AND a.cap_per_day <= 0 THEN
        RAISE EXCEPTION 'cap_per_day must be positive' USING ERRCODE = '22023',
            HINT = 'Use NULL for no cap.';
    END IF;
    IF a.cooldown IS NOT NULL AND (a.cooldown <= interval '0' OR a.cooldown > interval '10 years') THEN
        RAISE EXCEPTION 'cooldown must be positive and at most 10 years' USING ERRCODE = '22023',
            DETAIL = format('The cooldown given was "%s".', a.cooldown),
            HINT = 'Use NULL for no cooldown.';
    END IF;
    IF a.starts_at IS NOT NULL AND a.ends_at IS NOT NULL AND a.ends_at <= a.starts_at THEN
        RAISE EXCEPTION 'ends_at must be after starts_at' USING ERRCODE = '22023',
            DETAIL = format('The action would run from %s to %s.', a.starts_at, a.ends_at);
    END IF;
    IF a.condition IS NOT NULL THEN
        v_c := persona.compile_predicate(a.condition, 'persona.decision_source');
        a.condition_sql := v_c.sql;
        a.condition_reads := v_c.reads;
    ELSE
        a.condition_sql := NULL;
        a.condition_reads := '{}';
    END IF;
    RETURN a;
END
$$;
COMMENT ON FUNCTION persona.check_action(persona.actions) IS
    'checks an action definition and compiles its condition; returns it ready to store';

CREATE FUNCTION @extschema@.persona_create_action(
        name        text,
        channel     text,
        content     jsonb,
        segment     text        DEFAULT NULL,
        condition   text        DEFAULT NULL,
        priority    int         DEFAULT 0,
        value       float8      DEFAULT 1,
        cap_per_day int         DEFAULT NULL,
        cooldown    interval    DEFAULT NULL,
        starts_at   timestamptz DEFAULT NULL,
        ends_at     timestamptz DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    a persona.actions;
BEGIN
    a.name := $1; a.channel := $2; a.content := $3; a.segment := $4; a.condition := $5;
    a.priority := $6; a.value := $7; a.cap_per_day := $8; a.cooldown := $9;
    a.starts_at := $10; a.ends_at := $11; a.paused := false;
    a := persona.check_action(a);
    LOCK TABLE persona.actions IN EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM persona.actions AS x WHERE x.name = a.name) THEN
        RAISE EXCEPTION 'action "%" already exists', a.name USING ERRCODE = '42710';
    END IF;
    -- The condition's text alone: actions_compile writes what is derived
    -- from it (a row that comes with its SQL is a restored one,
    -- docs/operations.md).
    INSERT INTO persona.actions (name, channel, content, segment, condition,
                                 priority, value, cap_per_day, cooldown,
                                 starts_at, ends_at)
    VALUES (a.name, a.channel, a.content, a.segment, a.condition,
            a.priority, a.value, a.cap_per_day, a.cooldown,
            a.starts_at, a.ends_at)
    RETURNING action_id INTO a.action_id;
    INSERT INTO persona.action_stats (action_id) VALUES (a.action_id);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_create_action(text, text, jsonb, text, text, int, float8, int, interval, timestamptz, timestamptz) IS
    'defines an action persona_decide can choose: channel, content template, eligibility (segment, condition, caps, cooldown, schedule), priority and value';

CREATE FUNCTION @extschema@.persona_update_action(name text, changes jsonb)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    a      persona.actions;
    v_key  text;
    v_allowed text[] := ARRAY['channel', 'content', 'segment', 'condition', 'priority', 'value',
                              'cap_per_day', 'cooldown', 'starts_at', 'ends_at', 'paused'];
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    PERFORM persona.check_object($2, 'changes');
    FOR v_key IN SELECT jsonb_object_keys($2) LOOP
        IF NOT v_key = ANY (v_allowed) THEN
            RAISE EXCEPTION 'unknown action field "%"', v_key USING ERRCODE = '22023',
                HINT = 'Change any of: ' || array_to_string(v_allowed, ', ') || '.';
        END IF;
    END LOOP;
    LOCK TABLE persona.actions IN EXCLUSIVE MODE;
    SELECT * INTO a FROM persona.actions AS x WHERE x.name = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action "%" does not exist', $1 USING ERRCODE = '42704';
    END IF;
    -- A key set to JSON null clears the field; absent keys keep it.
    a := jsonb_populate_record(a, $2);
    a := persona.check_action(a);
    UPDATE persona.actions AS x
       SET channel = a.channel, content = a.content, segment = a.segment,
           condition = a.condition, condition_sql = a.condition_sql,
           condition_reads = a.condition_reads, priority = a.priority, value = a.value,
           cap_per_day = a.cap_per_day, cooldown = a.cooldown, starts_at = a.starts_at,
           ends_at = a.ends_at, paused = a.paused, updated_at = now()
     WHERE x.action_id = a.action_id;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_update_action(text, jsonb) IS
    'changes fields of an action ({"priority": 5, "paused": true, "ends_at": null, ...}); JSON null clears a field';

CREATE FUNCTION @extschema@.persona_pause_action(name text, paused boolean DEFAULT true)
    RETURNS void
    LANGUAGE sql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    RETURN @extschema@.persona_update_action(name, jsonb_build_object('paused', paused));
COMMENT ON FUNCTION @extschema@.persona_pause_action(text, boolean) IS
    'pauses (or, with false, resumes) an action: a paused action is never decided';

CREATE FUNCTION @extschema@.persona_drop_action(name text)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_id int;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    LOCK TABLE persona.actions IN EXCLUSIVE MODE;
    DELETE FROM persona.actions AS a WHERE a.name = $1 RETURNING a.action_id INTO v_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action "%" does not exist', $1 USING ERRCODE = '42704';
    END IF;
    DELETE FROM persona.action_stats AS s WHERE s.action_id = v_id;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_drop_action(text) IS
    'drops an action and its statistics; its past decisions and feedback stay';

CREATE FUNCTION @extschema@.persona_decide(
        user_id text,
        context jsonb DEFAULT '{}',
        channel text  DEFAULT NULL,
        n       int   DEFAULT 1)
    RETURNS TABLE (decision_id bigint, action text, channel text, content jsonb,
                   score float8, reason text)
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_decide';
COMMENT ON FUNCTION @extschema@.persona_decide(text, jsonb, text, int) IS
    'the next best actions for a person now: eligible by schedule, segment, condition, caps and cooldown; ranked by priority, then Thompson-sampled success (the person''s own, from the action''s per-person model, once it has enough feedback) times value; rendered and recorded';

-- The outcome of a feedback call, checked and lower-cased (persona_feedback
-- and persona_message_feedback).
CREATE FUNCTION persona.check_outcome(outcome text, value float8) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_outcome text := lower(outcome);
BEGIN
    IF v_outcome IS NULL THEN
        RAISE EXCEPTION 'outcome must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_outcome NOT IN ('impression', 'click', 'conversion', 'dismiss', 'ignore') THEN
        RAISE EXCEPTION 'unknown outcome "%"', outcome USING ERRCODE = '22023',
            HINT = 'Use impression, click, conversion, dismiss or ignore.';
    END IF;
    IF value IS NOT NULL AND (v_outcome <> 'conversion'
                              OR value IN ('Infinity', '-Infinity', 'NaN')) THEN
        RAISE EXCEPTION 'only a conversion carries a value, and it must be finite' USING ERRCODE = '22023';
    END IF;
    RETURN v_outcome;
END
$$;
COMMENT ON FUNCTION persona.check_outcome(text, float8) IS
    'checks a feedback outcome and its value; returns the outcome lower-cased';

-- One observation for an action's per-person model (src/bandit.c).
CREATE FUNCTION persona.bandit_learn(model jsonb, features jsonb, change text)
    RETURNS jsonb
    LANGUAGE C IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_bandit_learn';
COMMENT ON FUNCTION persona.bandit_learn(jsonb, jsonb, text) IS
    'the per-person model after one more observation of features: success, failure, or flip (a success after a first outcome that was not one); NULL features or change: unchanged';

-- What one new outcome teaches an action (persona.action_stats): a trial at
-- the first outcome of a decision or message, a success at its first click
-- or conversion. earlier: the outcomes it had before. features: what the
-- decision saw, for the action's per-person model (NULL: counts only).
CREATE FUNCTION persona.learn(action_id int, earlier text[], outcome text, value float8,
                              features jsonb)
    RETURNS void
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
    BEGIN ATOMIC
        UPDATE persona.action_stats AS s
           SET trials = s.trials + (cardinality(learn.earlier) = 0)::int,
               successes = s.successes
                   + (learn.outcome IN ('click', 'conversion')
                      AND NOT learn.earlier && ARRAY['click', 'conversion'])::int,
               conversions = s.conversions + (learn.outcome = 'conversion')::int,
               revenue = s.revenue + coalesce(learn.value, 0),
               model = persona.bandit_learn(s.model, learn.features,
                   CASE WHEN cardinality(learn.earlier) = 0
                        THEN CASE WHEN learn.outcome IN ('click', 'conversion')
                                  THEN 'success' ELSE 'failure' END
                        WHEN learn.outcome IN ('click', 'conversion')
                             AND NOT learn.earlier && ARRAY['click', 'conversion']
                        THEN 'flip' END)
         WHERE s.action_id = learn.action_id;
    END;
COMMENT ON FUNCTION persona.learn(int, text[], text, float8, jsonb) IS
    'counts a new feedback outcome in persona.action_stats (trials, successes, conversions, revenue) and teaches the action''s per-person model';

CREATE FUNCTION @extschema@.persona_feedback(decision_id bigint, outcome text, value float8 DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_id      bigint := $1;
    v_outcome text;
    v_value   float8 := $3;
    v_action  int;
    v_features jsonb;
BEGIN
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'decision_id and outcome must not be null' USING ERRCODE = '22004';
    END IF;
    v_outcome := persona.check_outcome($2, v_value);
    SELECT d.action_id, d.features INTO v_action, v_features
      FROM persona.decisions AS d WHERE d.decision_id = v_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'decision % does not exist', v_id USING ERRCODE = '42704';
    END IF;
    -- One action's feedback at a time, then one decision's: its counts stay
    -- exact, and every caller takes the two locks in the same order.
    PERFORM 1 FROM persona.action_stats AS s WHERE s.action_id = v_action FOR UPDATE;
    PERFORM 1 FROM persona.decisions AS d WHERE d.decision_id = v_id FOR UPDATE;
    INSERT INTO persona.feedback (decision_id, outcome, value)
    VALUES (v_id, v_outcome, v_value)
    ON CONFLICT (decision_id, outcome) DO NOTHING;
    IF NOT FOUND THEN
        RETURN;                     -- already recorded: idempotent
    END IF;
    PERFORM persona.learn(v_action,
                          ARRAY(SELECT f.outcome FROM persona.feedback AS f
                                 WHERE f.decision_id = v_id AND f.outcome <> v_outcome),
                          v_outcome, v_value, v_features);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_feedback(bigint, text, float8) IS
    'records an outcome of a decision (impression, click, conversion, dismiss, ignore); idempotent; the next decisions learn from it';
