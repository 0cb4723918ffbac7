-- Experiments and holdouts: definitions, sticky assignments, the report
-- (src/experiments.c hashes, assigns and enforces; docs/experiments.md).

CREATE SEQUENCE persona.experiment_id_seq AS int;
COMMENT ON SEQUENCE persona.experiment_id_seq IS 'allocates experiment ids';

CREATE TABLE persona.experiments (
    experiment_id int         PRIMARY KEY DEFAULT nextval('persona.experiment_id_seq'),
    name          text        NOT NULL UNIQUE,
    -- A percentage with two decimals: round(holdout_pct * 100) of the
    -- 10,000 buckets are held out, at least one and at most 9,999.
    holdout_pct   float8      NOT NULL
                  CHECK (round(holdout_pct * 100) >= 1 AND round(holdout_pct * 100) <= 9999),
    action        text,
    status        text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'ended')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz,
    CONSTRAINT experiments_ended_at_check CHECK ((status = 'ended') = (ended_at IS NOT NULL))
);
ALTER SEQUENCE persona.experiment_id_seq OWNED BY persona.experiments.experiment_id;
COMMENT ON TABLE persona.experiments IS
    'experiments and holdouts (persona_create_experiment): with an action, that action is withheld from the holdout arm; without, the holdout gets nothing';
COMMENT ON COLUMN persona.experiments.holdout_pct IS
    'the holdout share in percent, to two decimals: buckets 0 .. round(holdout_pct * 100) - 1 of 10,000 are held out';
COMMENT ON COLUMN persona.experiments.action IS 'the action withheld from the holdout; NULL: a global holdout (every action)';
COMMENT ON COLUMN persona.experiments.status IS 'running: enforced and assigning; ended: neither, its assignments stay for the report';

-- One row per person and experiment, written at the first exposure.
CREATE TABLE persona.assignments (
    profile_id  bigint      NOT NULL,
    experiment  text        NOT NULL,
    arm         text        NOT NULL CHECK (arm IN ('holdout', 'treatment')),
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, experiment)
);
CREATE INDEX assignments_experiment_idx ON persona.assignments (experiment);
COMMENT ON TABLE persona.assignments IS
    'the arm of each person exposed to an experiment, recorded at the first exposure and kept (sticky); join it on profile_id';

SELECT pg_catalog.pg_extension_config_dump('persona.experiments', '');
SELECT pg_catalog.pg_extension_config_dump('persona.experiment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.assignments', '');

-- persona_decide caches the definitions; changes reach every backend.
CREATE TRIGGER experiments_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON persona.experiments
    FOR EACH STATEMENT EXECUTE FUNCTION persona.announce_change();

-- The split is what the assignments were made with: it never changes.
CREATE FUNCTION persona.check_experiment_update() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_WHEN <> 'BEFORE' OR TG_LEVEL <> 'ROW' OR TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'persona.check_experiment_update must run BEFORE UPDATE FOR EACH ROW'
            USING ERRCODE = '39P01';
    END IF;
    IF NEW.name IS DISTINCT FROM OLD.name OR NEW.holdout_pct IS DISTINCT FROM OLD.holdout_pct
       OR NEW.action IS DISTINCT FROM OLD.action
       OR NEW.experiment_id IS DISTINCT FROM OLD.experiment_id THEN
        RAISE EXCEPTION 'cannot change the split of experiment "%"', OLD.name
            USING ERRCODE = '55000',
                  DETAIL = 'Its people were assigned with this name, holdout_pct and action; a new split would move them between arms.',
                  HINT = 'End it (persona_end_experiment) and create a new experiment under a new name.';
    END IF;
    IF OLD.status = 'ended' AND NEW.status = 'running' THEN
        RAISE EXCEPTION 'experiment "%" has ended', OLD.name USING ERRCODE = '55000',
            HINT = 'Create a new experiment under a new name.';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION persona.check_experiment_update() IS
    'refuses a change of an experiment''s name, split or action, and restarting an ended one (BEFORE UPDATE FOR EACH ROW)';

CREATE TRIGGER experiments_check_update
    BEFORE UPDATE ON persona.experiments
    FOR EACH ROW EXECUTE FUNCTION persona.check_experiment_update();

-- A merge step of the registry (src/registry.sql): one assignment per
-- person and experiment. The survivor's stays; where the survivor has
-- none, the absorbed profile's moves to it.
CREATE FUNCTION persona.combine_assignments(into_profile_id bigint, from_profile_id bigint)
    RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM persona.assignments AS a
     WHERE a.profile_id = $2
       AND EXISTS (SELECT FROM persona.assignments AS s
                    WHERE s.profile_id = $1 AND s.experiment = a.experiment);
    UPDATE persona.assignments AS a SET profile_id = $1 WHERE a.profile_id = $2;
END
$$;
COMMENT ON FUNCTION persona.combine_assignments(bigint, bigint) IS
    'merge step of persona.assignments: the survivor keeps its assignments; the absorbed profile''s move where the survivor has none';

-- ---------------------------------------------------------------------
-- Hashing (C): the bucket and the arm, recomputable anywhere
-- ---------------------------------------------------------------------

CREATE FUNCTION persona.experiment_bucket(experiment text, id text) RETURNS int
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_experiment_bucket';
COMMENT ON FUNCTION persona.experiment_bucket(text, text) IS
    'the bucket (0 .. 9999) of an id in an experiment: FNV-1a 32-bit of the UTF-8 bytes of experiment || '':'' || id, modulo 10,000';

CREATE FUNCTION persona.two_sided_p(z float8) RETURNS float8
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_two_sided_p';
COMMENT ON FUNCTION persona.two_sided_p(float8) IS
    'the two-sided p-value of a standard normal statistic z: erfc(|z| / sqrt(2)); for a chi-square x with 1 degree of freedom, two_sided_p(sqrt(x))';

-- The hook for whatever sends an action outside persona_decide (triggers,
-- campaigns): true when the person is held out of the action by a running
-- experiment, the exposure recorded in either arm.
CREATE FUNCTION persona.holdout_suppresses(profile_id bigint, action text, id text DEFAULT NULL)
    RETURNS boolean
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_holdout_suppresses';
COMMENT ON FUNCTION persona.holdout_suppresses(bigint, text, text) IS
    'the hook for triggers and campaigns: true when a running experiment holds the profile out of the action (or out of everything); records the exposure in either arm';

-- ---------------------------------------------------------------------
-- The API
-- ---------------------------------------------------------------------

CREATE FUNCTION @extschema@.persona_create_experiment(name text, holdout_pct float8, action text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_name   text   := $1;
    v_pct    float8 := $2;
    v_action text   := $3;
BEGIN
    IF v_name IS NULL OR v_pct IS NULL THEN
        RAISE EXCEPTION 'name and holdout_pct must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_name = '' OR octet_length(v_name) > 200 THEN
        RAISE EXCEPTION 'an experiment name must be 1 to 200 bytes' USING ERRCODE = '22023';
    END IF;
    IF NOT (v_pct > 0 AND v_pct < 100) OR v_pct = 'NaN'::float8 THEN
        RAISE EXCEPTION 'holdout_pct must be between 0 and 100, exclusive' USING ERRCODE = '22023',
            DETAIL = format('The holdout_pct given was %s.', v_pct),
            HINT = 'It is a percentage: 10 holds out one person in ten.';
    END IF;
    IF round(v_pct * 100) < 1 OR round(v_pct * 100) > 9999 THEN
        RAISE EXCEPTION 'holdout_pct must be between 0.01 and 99.99' USING ERRCODE = '22023',
            DETAIL = format('The holdout_pct given was %s; the split has 10,000 buckets of 0.01%%.', v_pct);
    END IF;
    IF v_action IS NOT NULL AND NOT EXISTS (SELECT FROM persona.actions AS a WHERE a.name = v_action) THEN
        RAISE EXCEPTION 'action "%" does not exist', v_action USING ERRCODE = '42704',
            HINT = 'Create it with persona_create_action, or pass NULL for a global holdout.';
    END IF;
    LOCK TABLE persona.experiments IN EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM persona.experiments AS e WHERE e.name = v_name) THEN
        RAISE EXCEPTION 'experiment "%" already exists', v_name USING ERRCODE = '42710',
            HINT = 'An experiment''s split never changes: use a new name, or drop the old one first.';
    END IF;
    INSERT INTO persona.experiments (name, holdout_pct, action) VALUES (v_name, v_pct, v_action);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_create_experiment(text, float8, text) IS
    'starts an experiment: holdout_pct percent of the people exposed are held out of the action (or, without one, of every action)';

CREATE FUNCTION @extschema@.persona_end_experiment(name text)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_status text;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    LOCK TABLE persona.experiments IN EXCLUSIVE MODE;
    SELECT e.status INTO v_status FROM persona.experiments AS e WHERE e.name = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'experiment "%" does not exist', $1 USING ERRCODE = '42704';
    END IF;
    IF v_status = 'ended' THEN
        RAISE EXCEPTION 'experiment "%" has already ended', $1 USING ERRCODE = '55000';
    END IF;
    UPDATE persona.experiments AS e SET status = 'ended', ended_at = now() WHERE e.name = $1;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_end_experiment(text) IS
    'ends an experiment: nothing is withheld or assigned any more; its assignments stay for the report';

CREATE FUNCTION @extschema@.persona_drop_experiment(name text)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    LOCK TABLE persona.experiments IN EXCLUSIVE MODE;
    DELETE FROM persona.experiments AS e WHERE e.name = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'experiment "%" does not exist', $1 USING ERRCODE = '42704';
    END IF;
    DELETE FROM persona.assignments AS a WHERE a.experiment = $1;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_drop_experiment(text) IS
    'drops an experiment and its assignments';

CREATE FUNCTION @extschema@.persona_arm(experiment text, user_id text)
    RETURNS text
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_arm';
COMMENT ON FUNCTION @extschema@.persona_arm(text, text) IS
    'the arm of a person in an experiment, holdout or treatment; asking is an exposure: the arm is recorded (for an ended experiment: the recorded arm, or NULL)';

-- The per-person figures of an experiment (persona_experiment_daily): each
-- assigned person, their arm, and their conversions (events of the type at
-- or after the assignment and since, before the end) with their revenue.
-- The conversions are grouped by person first, then joined to the
-- assignments: persona_experiment_report aggregates the same shape by arm.
CREATE FUNCTION persona.experiment_people(experiment text, conversion_event text,
                                          since timestamptz, until timestamptz)
    RETURNS TABLE (profile_id bigint, arm text, assigned_at timestamptz,
                   first_conversion timestamptz, revenue float8)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RETURN QUERY
    SELECT a.profile_id, a.arm, a.assigned_at, c.first_conversion, c.revenue
      FROM persona.assignments AS a
      LEFT JOIN (SELECT e.profile_id, min(e.occurred_at) AS first_conversion,
                        sum(CASE WHEN jsonb_typeof(e.properties -> 'revenue') = 'number'
                                 THEN (e.properties ->> 'revenue')::float8 END) AS revenue
                   FROM persona.events AS e
                   JOIN persona.assignments AS x
                     ON x.profile_id = e.profile_id AND x.experiment = $1
                  WHERE e.event_type = $2 AND e.occurred_at >= x.assigned_at
                    AND e.occurred_at >= $3 AND e.occurred_at < $4
                  GROUP BY e.profile_id) AS c ON c.profile_id = a.profile_id
     WHERE a.experiment = $1;
END
$$;
COMMENT ON FUNCTION persona.experiment_people(text, text, timestamptz, timestamptz) IS
    'each person assigned to an experiment: arm, assignment, first conversion and revenue of the conversion events in the window';

-- The experiment of a report: its row, or 42704; and the window of its
-- conversions, [greatest(since, -infinity), its end or infinity).
CREATE FUNCTION persona.report_experiment(name text, conversion_event text)
    RETURNS persona.experiments
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    e persona.experiments;
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION 'name and conversion_event must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO e FROM persona.experiments AS x WHERE x.name = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'experiment "%" does not exist', $1 USING ERRCODE = '42704';
    END IF;
    RETURN e;
END
$$;
COMMENT ON FUNCTION persona.report_experiment(text, text) IS
    'the experiment a report is asked about; 42704 when there is none';

-- An event type nobody tracked is a typo, not a zero: 42704. Only asked
-- when no conversion was found, so a report with conversions pays nothing.
CREATE FUNCTION persona.check_conversion_event(conversion_event text) RETURNS void
    LANGUAGE plpgsql STABLE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM persona.events AS e WHERE e.event_type = $1) THEN
        RAISE EXCEPTION 'event type "%" has never been tracked', $1 USING ERRCODE = '42704',
            HINT = 'conversion_event is an event_type of persona.events, such as purchase.';
    END IF;
END
$$;
COMMENT ON FUNCTION persona.check_conversion_event(text) IS
    'raises 42704 when no event of the type exists';

CREATE FUNCTION @extschema@.persona_experiment_report(name text, conversion_event text,
                                                      since timestamptz DEFAULT NULL)
    RETURNS TABLE (arm text, users bigint, converters bigint, conversion_rate float8,
                   revenue_per_user float8, lift float8, ci_low float8, ci_high float8,
                   p_value float8, srm_p_value float8)
    LANGUAGE plpgsql STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    e     persona.experiments;
    n_h   bigint := 0;          -- users, converters and revenue per arm
    x_h   bigint := 0;
    r_h   float8 := 0;
    n_t   bigint := 0;
    x_t   bigint := 0;
    r_t   float8 := 0;
    p_h   float8;
    p_t   float8;
    q     float8;               -- the configured holdout share
    pp    float8;
    se    float8;
    v     float8;
    chi2  float8;
    z95   constant float8 := 1.959963984540054;   -- the 0.975 normal quantile
    r     record;
BEGIN
    e := persona.report_experiment($1, $2);
    -- One pass: the conversions of the assigned people grouped by person
    -- (a hash join of the experiment's assignments to the events of the
    -- type), then the assignments counted by arm (persona.experiment_people
    -- has the same shape, per person).
    FOR r IN
        SELECT a.arm, count(*) AS users, count(c.profile_id) AS converters,
               coalesce(sum(c.revenue), 0) AS revenue
          FROM persona.assignments AS a
          LEFT JOIN (SELECT ev.profile_id,
                            sum(CASE WHEN jsonb_typeof(ev.properties -> 'revenue') = 'number'
                                     THEN (ev.properties ->> 'revenue')::float8 END) AS revenue
                       FROM persona.events AS ev
                       JOIN persona.assignments AS x
                         ON x.profile_id = ev.profile_id AND x.experiment = e.name
                      WHERE ev.event_type = $2 AND ev.occurred_at >= x.assigned_at
                        AND ev.occurred_at >= coalesce($3, '-infinity')
                        AND ev.occurred_at < coalesce(e.ended_at, 'infinity')
                      GROUP BY ev.profile_id) AS c ON c.profile_id = a.profile_id
         WHERE a.experiment = e.name
         GROUP BY a.arm
    LOOP
        IF r.arm = 'holdout' THEN
            n_h := r.users; x_h := r.converters; r_h := r.revenue;
        ELSE
            n_t := r.users; x_t := r.converters; r_t := r.revenue;
        END IF;
    END LOOP;
    IF x_h + x_t = 0 THEN
        PERFORM persona.check_conversion_event($2);
    END IF;
    p_h := CASE WHEN n_h > 0 THEN x_h::float8 / n_h END;
    p_t := CASE WHEN n_t > 0 THEN x_t::float8 / n_t END;

    arm := 'holdout'; users := n_h; converters := x_h; conversion_rate := p_h;
    revenue_per_user := CASE WHEN n_h > 0 THEN r_h / n_h END;
    RETURN NEXT;

    arm := 'treatment'; users := n_t; converters := x_t; conversion_rate := p_t;
    revenue_per_user := CASE WHEN n_t > 0 THEN r_t / n_t END;
    -- Lift and its interval: the delta method for the ratio p_t / p_h.
    IF p_h > 0 AND p_t IS NOT NULL THEN
        lift := p_t / p_h - 1;
        v := p_t * (1 - p_t) / (n_t * p_h ^ 2) + p_t ^ 2 * (1 - p_h) / (n_h * p_h ^ 3);
        ci_low := lift - z95 * sqrt(v);
        ci_high := lift + z95 * sqrt(v);
    END IF;
    -- Two-sided two-proportion z-test, pooled variance.
    IF n_h > 0 AND n_t > 0 THEN
        pp := (x_h + x_t)::float8 / (n_h + n_t);
        se := sqrt(pp * (1 - pp) * (1.0 / n_t + 1.0 / n_h));
        IF se > 0 THEN
            p_value := persona.two_sided_p((p_t - p_h) / se);
        END IF;
    END IF;
    -- Sample ratio mismatch: chi-square, 1 degree of freedom, against the
    -- configured split (the share of buckets held out).
    IF n_h + n_t > 0 THEN
        q := round(e.holdout_pct * 100) / 10000;
        chi2 := (n_h - (n_h + n_t) * q) ^ 2 / ((n_h + n_t) * q)
              + (n_t - (n_h + n_t) * (1 - q)) ^ 2 / ((n_h + n_t) * (1 - q));
        srm_p_value := persona.two_sided_p(sqrt(chi2));
    END IF;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_experiment_report(text, text, timestamptz) IS
    'per arm: exposed users, converters, conversion rate, revenue per user; on the treatment row lift with its 95% interval (delta method), the two-proportion z-test p-value and the sample-ratio-mismatch p-value';

CREATE FUNCTION @extschema@.persona_experiment_daily(name text, conversion_event text,
                                                     since timestamptz DEFAULT NULL)
    RETURNS TABLE (day date, arm text, users bigint, converters bigint,
                   conversion_rate float8, revenue_per_user float8)
    LANGUAGE plpgsql STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    e persona.experiments;
BEGIN
    e := persona.report_experiment($1, $2);
    RETURN QUERY
    WITH p AS MATERIALIZED (
        SELECT * FROM persona.experiment_people(e.name, $2, coalesce($3, '-infinity'),
                                                coalesce(e.ended_at, 'infinity'))),
    -- Revenue by the day of each conversion event.
    rev AS (
        SELECT a.arm, ev.occurred_at::date AS day,
               sum(CASE WHEN jsonb_typeof(ev.properties -> 'revenue') = 'number'
                        THEN (ev.properties ->> 'revenue')::float8 END) AS revenue
          FROM persona.assignments AS a
          JOIN persona.events AS ev
            ON ev.profile_id = a.profile_id AND ev.event_type = $2
           AND ev.occurred_at >= a.assigned_at AND ev.occurred_at >= coalesce($3, '-infinity')
           AND ev.occurred_at < coalesce(e.ended_at, 'infinity')
         WHERE a.experiment = e.name
           AND a.profile_id IN (SELECT p.profile_id FROM p WHERE p.first_conversion IS NOT NULL)
         GROUP BY 1, 2),
    days AS (
        SELECT d::date AS day
          FROM generate_series((SELECT min(p.assigned_at)::date FROM p),
                               least(now(), coalesce(e.ended_at, now()))::date,
                               interval '1 day') AS d),
    arms AS (SELECT unnest(ARRAY['holdout', 'treatment']) AS arm),
    assigned AS (SELECT p.arm, p.assigned_at::date AS day, count(*) AS n FROM p GROUP BY 1, 2),
    converted AS (SELECT p.arm, p.first_conversion::date AS day, count(*) AS n FROM p
                   WHERE p.first_conversion IS NOT NULL GROUP BY 1, 2),
    daily AS (
        SELECT d.day, a.arm,
               sum(coalesce(u.n, 0)) OVER w AS users,
               sum(coalesce(c.n, 0)) OVER w AS converters,
               sum(coalesce(r.revenue, 0)) OVER w AS revenue
          FROM days AS d CROSS JOIN arms AS a
          LEFT JOIN assigned AS u ON u.arm = a.arm AND u.day = d.day
          LEFT JOIN converted AS c ON c.arm = a.arm AND c.day = d.day
          LEFT JOIN rev AS r ON r.arm = a.arm AND r.day = d.day
        WINDOW w AS (PARTITION BY a.arm ORDER BY d.day))
    SELECT x.day, x.arm, x.users::bigint, x.converters::bigint,
           CASE WHEN x.users > 0 THEN x.converters::float8 / x.users END,
           CASE WHEN x.users > 0 THEN x.revenue / x.users END
      FROM daily AS x
     ORDER BY x.day, x.arm;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_experiment_daily(text, text, timestamptz) IS
    'for a BI chart: per day and arm, cumulative to the end of the day (session time zone), users assigned, converters, conversion rate and revenue per user';
