-- Predictions: model definitions, the point-in-time feature aggregate, the
-- fit and the live score (src/models.c), persona_train_model /
-- persona_predict / persona_drop_model. A model's score is a column of
-- persona.traits (persona.rebuild_traits_view, src/traits.sql).

CREATE SEQUENCE persona.model_id_seq AS int;
COMMENT ON SEQUENCE persona.model_id_seq IS 'allocates model ids';

CREATE TABLE persona.models (
    model_id     int         PRIMARY KEY DEFAULT nextval('persona.model_id_seq'),
    name         text        NOT NULL UNIQUE,
    target_event text        NOT NULL,
    horizon      interval    NOT NULL CHECK (horizon > interval '0'),
    features     text[]      NOT NULL,
    feature_ids  int[]       NOT NULL,
    params       float8[]    NOT NULL,
    reads        text[]      NOT NULL,
    clock        boolean     NOT NULL,
    metrics      jsonb       NOT NULL,
    trained_at   timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE persona.model_id_seq OWNED BY persona.models.model_id;
COMMENT ON TABLE persona.models IS 'trained models (persona_train_model): one row per model, not per person';
COMMENT ON COLUMN persona.models.features IS 'the feature names, in the order of feature_ids';
COMMENT ON COLUMN persona.models.feature_ids IS 'per feature: its trait_id, or -1 event_count, -2 days_since_last_seen, -3 days_since_first_seen';
COMMENT ON COLUMN persona.models.params IS 'intercept, then one weight per standardized feature, then the features'' training means, then their standard deviations';
COMMENT ON COLUMN persona.models.reads IS 'the columns of persona.segment_source the score depends on (segments on it are refreshed when they change)';
COMMENT ON COLUMN persona.models.clock IS 'whether the score changes with the clock alone (days since last or first seen)';
COMMENT ON COLUMN persona.models.metrics IS 'what persona_train_model returned: rows, positives, held_out, auc, log_loss, weights';
SELECT pg_catalog.pg_extension_config_dump('persona.models', '');
SELECT pg_catalog.pg_extension_config_dump('persona.model_id_seq', '');

-- A model's weights are also constants of persona.traits: a change by hand
-- would leave the two apart (src/catalog.sql).
CREATE TRIGGER models_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.models
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();

CREATE FUNCTION persona.model_score(computed_state bytea, event_count bigint, first_seen timestamptz,
                                    last_seen timestamptz, feature_ids int[], params float8[])
    RETURNS float8
    LANGUAGE C STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_model_score';
COMMENT ON FUNCTION persona.model_score(bytea, bigint, timestamptz, timestamptz, int[], float8[]) IS
    'a model''s probability now, from a profile''s trait states and columns (the model''s column of persona.traits)';

CREATE FUNCTION persona.model_scores(computed_state bytea, event_count bigint, first_seen timestamptz,
                                     last_seen timestamptz)
    RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL RESTRICTED
    SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT coalesce(jsonb_object_agg(m.name, persona.model_score($1, $2, $3, $4, m.feature_ids, m.params)
                                     ORDER BY m.model_id), '{}'::jsonb)
      FROM persona.models AS m
$$;
COMMENT ON FUNCTION persona.model_scores(bytea, bigint, timestamptz, timestamptz) IS
    'every model''s probability now for a profile, as a JSON object (persona_profile()->''computed'')';

CREATE FUNCTION persona.model_held_out(profile_id bigint) RETURNS boolean
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_model_held_out';
COMMENT ON FUNCTION persona.model_held_out(bigint) IS
    'whether persona_train_model holds the profile out of training, to evaluate on it (one in five, by a hash of the id)';

-- The point-in-time aggregate: the trait states of ingest, folded up to the
-- cutoff; the label from the events after it.
CREATE FUNCTION persona.model_row_add(internal, int[], text, timestamptz, timestamptz, text, bigint, jsonb)
    RETURNS internal
    LANGUAGE C STABLE
    AS 'MODULE_PATHNAME', 'persona_model_row_add';
COMMENT ON FUNCTION persona.model_row_add(internal, int[], text, timestamptz, timestamptz, text, bigint, jsonb) IS
    'transition function of persona.model_row';

CREATE FUNCTION persona.model_row_final(internal)
    RETURNS float8[]
    LANGUAGE C STABLE
    AS 'MODULE_PATHNAME', 'persona_model_row_final';
COMMENT ON FUNCTION persona.model_row_final(internal) IS
    'final function of persona.model_row';

CREATE AGGREGATE persona.model_row(int[], text, timestamptz, timestamptz, text, bigint, jsonb) (
    SFUNC = persona.model_row_add,
    STYPE = internal,
    FINALFUNC = persona.model_row_final
);
COMMENT ON AGGREGATE persona.model_row(int[], text, timestamptz, timestamptz, text, bigint, jsonb) IS
    'one profile''s training row: {label, features...} as of the cutoff, from (feature_ids, target_event, cutoff, occurred_at, event_type, event_id, properties); NULL without events up to the cutoff';

CREATE FUNCTION persona.model_fit(feature_ids int[], target_event text, cutoff timestamptz, upto timestamptz,
                                  OUT rows bigint, OUT positives bigint, OUT held_out bigint,
                                  OUT auc float8, OUT log_loss float8, OUT params float8[])
    RETURNS record
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'persona_model_fit';
COMMENT ON FUNCTION persona.model_fit(int[], text, timestamptz, timestamptz) IS
    'fits an L2-regularized logistic regression on the point-in-time rows of every profile and evaluates it on the held-out ones';

-- The features a model may read: numeric traits, and these profile columns.
CREATE FUNCTION persona.model_features(features text[],
                                       OUT names text[], OUT ids int[], OUT reads text[], OUT clock boolean)
    RETURNS record
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_profile CONSTANT text[] := ARRAY['event_count', 'days_since_last_seen', 'days_since_first_seen'];
    v_f       text;
    v_trait   record;
BEGIN
    names := '{}'; ids := '{}'; reads := '{}'; clock := false;
    IF features IS NULL THEN
        -- Every numeric one: the numeric traits, then the profile columns.
        SELECT coalesce(array_agg(d.name ORDER BY d.trait_id), '{}') INTO features
          FROM persona.trait_defs AS d WHERE d.aggregate NOT IN ('first', 'last');
        features := features || v_profile;
    END IF;
    IF cardinality(features) = 0 THEN
        RAISE EXCEPTION 'features must not be empty' USING ERRCODE = '22023',
            HINT = 'Pass NULL for every numeric trait and profile column.';
    END IF;
    IF cardinality(features) > 64 THEN
        RAISE EXCEPTION 'a model reads at most 64 features' USING ERRCODE = '54000';
    END IF;
    FOREACH v_f IN ARRAY features LOOP
        IF v_f IS NULL THEN
            RAISE EXCEPTION 'features must not contain null' USING ERRCODE = '22004';
        END IF;
        IF v_f = ANY (names) THEN
            RAISE EXCEPTION 'feature "%" is listed twice', v_f USING ERRCODE = '42701';
        END IF;
        SELECT d.trait_id, d.aggregate INTO v_trait FROM persona.trait_defs AS d WHERE d.name = v_f;
        IF FOUND THEN
            IF v_trait.aggregate IN ('first', 'last') THEN
                RAISE EXCEPTION 'feature "%" is not numeric', v_f USING ERRCODE = '42804',
                    DETAIL = format('Trait "%s" is a %s: its values are text.', v_f, v_trait.aggregate),
                    HINT = 'Use count, sum, min, max, avg or count_distinct traits.';
            END IF;
            ids := ids || v_trait.trait_id;
            reads := reads || v_f;
        ELSIF v_f = ANY (v_profile) THEN
            ids := ids || (-array_position(v_profile, v_f));
            reads := reads || CASE v_f WHEN 'event_count' THEN 'event_count'
                                       WHEN 'days_since_last_seen' THEN 'last_seen'
                                       ELSE 'first_seen' END;
            clock := clock OR v_f <> 'event_count';
        ELSIF EXISTS (SELECT FROM persona.models AS m WHERE m.name = v_f) THEN
            RAISE EXCEPTION 'feature "%" is a model', v_f USING ERRCODE = '42809',
                HINT = 'A model reads traits and profile columns, not other models.';
        ELSIF EXISTS (SELECT FROM pg_attribute AS a
                       WHERE a.attrelid = 'persona.profiles'::regclass AND a.attnum > 0
                         AND NOT a.attisdropped AND a.attname = v_f) THEN
            RAISE EXCEPTION 'feature "%" is not numeric', v_f USING ERRCODE = '42804',
                HINT = 'Use event_count, days_since_last_seen, days_since_first_seen or numeric traits.';
        ELSE
            RAISE EXCEPTION 'unknown feature "%"', v_f USING ERRCODE = '42703',
                HINT = 'Use a numeric computed trait, event_count, days_since_last_seen or days_since_first_seen.';
        END IF;
        names := names || v_f;
    END LOOP;
    IF cardinality(names) = 0 THEN
        RAISE EXCEPTION 'there are no numeric features' USING ERRCODE = '22023';
    END IF;
END
$$;
COMMENT ON FUNCTION persona.model_features(text[]) IS
    'checks a model''s features (NULL: every numeric one) and returns their names, ids, the columns they read and whether they change with the clock';

-- Memberships of segments on a model, after its weights changed: every
-- profile, in batches locked in profile order as persona_tick does.
CREATE FUNCTION persona.refresh_model_segments(model text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_changes bigint := 0;
    v_batch   bigint[];
BEGIN
    IF NOT EXISTS (SELECT FROM persona.segments AS s WHERE model = ANY (s.reads)) THEN
        RETURN 0;
    END IF;
    PERFORM persona.lock_order();
    -- Ingest waits, so none of it is evaluated with the old weights after
    -- this evaluation.
    LOCK TABLE persona.events IN SHARE MODE;
    FOR v_batch IN
        SELECT array_agg(b.profile_id ORDER BY b.profile_id)
          FROM (SELECT p.profile_id, (row_number() OVER (ORDER BY p.profile_id) - 1) / 10000 AS n
                  FROM persona.profiles AS p) AS b
         GROUP BY b.n ORDER BY b.n
    LOOP
        PERFORM 1 FROM persona.profiles AS p
         WHERE p.profile_id = ANY (v_batch) ORDER BY p.profile_id FOR NO KEY UPDATE;
        v_changes := v_changes + persona.refresh_segments(v_batch, ARRAY[model]);
    END LOOP;
    RETURN v_changes;
END
$$;
COMMENT ON FUNCTION persona.refresh_model_segments(text) IS
    're-evaluates for every profile the segments that read a model''s score; returns entries plus exits';

-- Models restored by pg_dump: as for persona.trait_defs (src/traits.sql),
-- rows whose ids the sequence has not handed out rebuild the views.
CREATE FUNCTION persona.models_restored() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'STATEMENT' OR TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'persona.models_restored must run AFTER INSERT ... FOR EACH STATEMENT'
            USING ERRCODE = '39P01';
    END IF;
    IF EXISTS (SELECT FROM new_models AS d, persona.model_id_seq AS s
                WHERE NOT s.is_called OR d.model_id > s.last_value) THEN
        PERFORM persona.rebuild_traits_view();
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION persona.models_restored() IS
    'rebuilds persona.traits and the views on it for models written with ids of their own, as a restore does (AFTER INSERT FOR EACH STATEMENT)';

CREATE TRIGGER models_restored
    AFTER INSERT ON persona.models
    REFERENCING NEW TABLE AS new_models
    FOR EACH STATEMENT EXECUTE FUNCTION persona.models_restored();

CREATE FUNCTION @extschema@.persona_train_model(name text, target_event text, horizon interval,
                                                features text[] DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS $$
#variable_conflict use_column
DECLARE
    v_name    text     := $1;
    v_target  text     := $2;
    v_horizon interval := $3;
    v_f       record;
    v_fit     record;
    v_now     timestamptz := now();
    v_weights jsonb := '{}';
    v_metrics jsonb;
    v_k       int;
    v_old     record;
BEGIN
    PERFORM persona.check_column_name(v_name, 'model');
    PERFORM persona.check_event_type(v_target, 'target_event');
    IF v_horizon IS NULL THEN
        RAISE EXCEPTION 'horizon must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_horizon <= interval '0' OR v_horizon > interval '10 years' THEN
        RAISE EXCEPTION 'horizon must be positive and at most 10 years' USING ERRCODE = '22023',
            DETAIL = format('The horizon given was "%s".', v_horizon),
            HINT = 'Use an interval such as ''30 days'': the label is the target event within it.';
    END IF;
    -- The view is rebuilt at the end: refuse now, not after the fit.
    PERFORM persona.check_traits_view_free();

    -- Definitions and models change one at a time (persona_define_trait and
    -- persona_drop_trait take this lock too); ingest goes on meanwhile.
    LOCK TABLE persona.trait_defs IN EXCLUSIVE MODE;
    LOCK TABLE persona.models IN EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM persona.trait_defs AS d WHERE d.name = v_name) THEN
        RAISE EXCEPTION 'model name "%" collides with a trait', v_name USING ERRCODE = '42710',
            HINT = 'A model is a column of persona.traits beside the traits: choose another name.';
    END IF;
    -- Segments on the model are evaluated again at the end, which must see
    -- every profile committed before the lock, as persona_create_segment's
    -- evaluation: a transaction-wide snapshot would not.
    IF current_setting('transaction_isolation') <> 'read committed'
       AND EXISTS (SELECT FROM persona.segments AS s WHERE v_name = ANY (s.reads)) THEN
        RAISE EXCEPTION 'retraining a model that segments read must run at READ COMMITTED'
            USING ERRCODE = '25000',
                  DETAIL = format('The transaction runs at %s.', current_setting('transaction_isolation'));
    END IF;
    v_f := persona.model_features($4);
    -- An event type that was never tracked is a typo more often than not.
    IF NOT EXISTS (SELECT FROM persona.events AS e WHERE e.event_type = v_target) THEN
        RAISE EXCEPTION 'event type "%" has never been tracked', v_target USING ERRCODE = '42704',
            HINT = 'The target event must occur in the events: a model needs examples of it.';
    END IF;

    v_fit := persona.model_fit(v_f.ids, v_target, v_now - v_horizon, v_now);
    v_k := cardinality(v_f.ids);
    FOR i IN 1 .. v_k LOOP
        v_weights := v_weights || jsonb_build_object(v_f.names[i], v_fit.params[i + 1]);
    END LOOP;
    v_metrics := jsonb_build_object('rows', v_fit.rows, 'positives', v_fit.positives,
                                    'held_out', v_fit.held_out, 'auc', v_fit.auc,
                                    'log_loss', v_fit.log_loss, 'intercept', v_fit.params[1],
                                    'weights', v_weights);

    SELECT m.model_id, m.reads INTO v_old FROM persona.models AS m WHERE m.name = v_name;
    IF FOUND THEN
        UPDATE persona.models AS m
           SET target_event = v_target, horizon = v_horizon, features = v_f.names,
               feature_ids = v_f.ids, params = v_fit.params, reads = v_f.reads,
               clock = v_f.clock, metrics = v_metrics, trained_at = v_now
         WHERE m.model_id = v_old.model_id;
    ELSE
        INSERT INTO persona.models (name, target_event, horizon, features, feature_ids, params,
                                    reads, clock, metrics, trained_at)
        VALUES (v_name, v_target, v_horizon, v_f.names, v_f.ids, v_fit.params,
                v_f.reads, v_f.clock, v_metrics, v_now);
    END IF;
    PERFORM persona.rebuild_traits_view();

    -- Expressions over the score read its features: compile them again
    -- (their reads and clock follow the new features), then move the
    -- segments on it to the new weights.
    UPDATE persona.segments AS s SET predicate = s.predicate WHERE v_name = ANY (s.reads);
    UPDATE persona.actions AS a SET condition = a.condition WHERE v_name = ANY (a.condition_reads);
    UPDATE persona.triggers AS t SET condition = t.condition WHERE v_name = ANY (t.condition_reads);
    PERFORM persona.refresh_model_segments(v_name);
    RETURN v_metrics;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_train_model(text, text, interval, text[]) IS
    'trains (or retrains) a model of whether target_event happens within horizon, from each profile as it was at now() - horizon; its probability becomes a column of persona.traits';

CREATE FUNCTION @extschema@.persona_predict(name text, user_id text) RETURNS float8
    LANGUAGE plpgsql STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_m  record;
    v_id text := persona.check_id($2, 'user_id');
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT m.feature_ids, m.params INTO v_m FROM persona.models AS m WHERE m.name = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', $1 USING ERRCODE = '42704';
    END IF;
    RETURN (SELECT persona.model_score(p.computed_state, p.event_count, p.first_seen, p.last_seen,
                                       v_m.feature_ids, v_m.params)
              FROM persona.identities AS i
              JOIN persona.profiles AS p ON p.profile_id = i.profile_id
             WHERE i.id = v_id);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_predict(text, text) IS
    'a model''s probability now for the profile any id names; NULL for an unknown id';

CREATE FUNCTION @extschema@.persona_drop_model(name text) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS $$
#variable_conflict use_column
DECLARE
    v_name text := $1;
BEGIN
    IF v_name IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    PERFORM persona.check_traits_view_free();
    LOCK TABLE persona.trait_defs IN EXCLUSIVE MODE;
    LOCK TABLE persona.models IN EXCLUSIVE MODE;
    IF NOT EXISTS (SELECT FROM persona.models AS m WHERE m.name = v_name) THEN
        RAISE EXCEPTION 'model "%" does not exist', v_name USING ERRCODE = '42704';
    END IF;
    IF EXISTS (SELECT FROM persona.segments AS s WHERE v_name = ANY (s.reads)) THEN
        RAISE EXCEPTION 'cannot drop model "%" because segments read it', v_name
            USING ERRCODE = '2BP01',
                  DETAIL = (SELECT format('Segments reading it: %s.', string_agg(quote_literal(s.name), ', ' ORDER BY s.name))
                              FROM persona.segments AS s WHERE v_name = ANY (s.reads)),
                  HINT = 'Drop those segments first.';
    END IF;
    IF EXISTS (SELECT FROM persona.actions AS a WHERE v_name = ANY (a.condition_reads))
       OR EXISTS (SELECT FROM persona.triggers AS t WHERE v_name = ANY (t.condition_reads)) THEN
        RAISE EXCEPTION 'cannot drop model "%" because conditions read it', v_name
            USING ERRCODE = '2BP01',
                  DETAIL = (SELECT format('Actions and triggers reading it: %s.', string_agg(quote_literal(x.name), ', ' ORDER BY x.name))
                              FROM (SELECT a.name FROM persona.actions AS a WHERE v_name = ANY (a.condition_reads)
                                    UNION ALL
                                    SELECT t.name FROM persona.triggers AS t WHERE v_name = ANY (t.condition_reads)) AS x),
                  HINT = 'Change or drop those first.';
    END IF;
    DELETE FROM persona.models AS m WHERE m.name = v_name;
    PERFORM persona.rebuild_traits_view();
END
$$;
COMMENT ON FUNCTION @extschema@.persona_drop_model(text) IS
    'drops a model and its column of persona.traits';
