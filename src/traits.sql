-- Computed traits: definitions, the state functions and backfill aggregate
-- (src/traits.c), persona_define_trait / persona_drop_trait and the
-- persona.traits view they keep current.

CREATE SEQUENCE persona.trait_id_seq AS int;
COMMENT ON SEQUENCE persona.trait_id_seq IS 'allocates trait ids';

CREATE TABLE persona.trait_defs (
    trait_id    int         PRIMARY KEY DEFAULT nextval('persona.trait_id_seq'),
    name        text        NOT NULL UNIQUE,
    aggregate   text        NOT NULL CHECK (aggregate IN ('count', 'sum', 'min', 'max', 'avg',
                                                          'first', 'last', 'count_distinct')),
    event_type  text        NOT NULL,
    property    text,
    time_window interval    CHECK (time_window >= interval '1 minute' AND time_window <= interval '10 years'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE persona.trait_id_seq OWNED BY persona.trait_defs.trait_id;
COMMENT ON TABLE persona.trait_defs IS 'computed trait definitions (persona_define_trait)';
SELECT pg_catalog.pg_extension_config_dump('persona.trait_defs', '');
SELECT pg_catalog.pg_extension_config_dump('persona.trait_id_seq', '');

-- Ingest caches the definitions; changes reach every backend.
CREATE TRIGGER trait_defs_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON persona.trait_defs
    FOR EACH STATEMENT EXECUTE FUNCTION persona.announce_change();

CREATE FUNCTION persona.state_merge(a bytea, b bytea) RETURNS bytea
    LANGUAGE C STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_state_merge';
COMMENT ON FUNCTION persona.state_merge(bytea, bytea) IS
    'the trait states of two sets of events as one (ingest and identity merges)';

CREATE FUNCTION persona.next_change(states bytea) RETURNS timestamptz
    LANGUAGE C STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_next_change';
COMMENT ON FUNCTION persona.next_change(bytea) IS
    'when a windowed trait of these states next reads differently by the clock alone, or NULL';

CREATE FUNCTION persona.state_put(states bytea, one bytea) RETURNS bytea
    LANGUAGE C STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_state_put';
COMMENT ON FUNCTION persona.state_put(bytea, bytea) IS
    'a profile''s trait states with one trait''s state replaced (backfill)';

CREATE FUNCTION persona.trait_bigint(states bytea, trait_id int) RETURNS bigint
    LANGUAGE C STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_trait_bigint';
COMMENT ON FUNCTION persona.trait_bigint(bytea, int) IS
    'the value now of a count or count_distinct trait, from a profile''s trait states';

CREATE FUNCTION persona.trait_numeric(states bytea, trait_id int) RETURNS numeric
    LANGUAGE C STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_trait_numeric';
COMMENT ON FUNCTION persona.trait_numeric(bytea, int) IS
    'the value now of a sum, avg, min or max trait, from a profile''s trait states';

CREATE FUNCTION persona.trait_text(states bytea, trait_id int) RETURNS text
    LANGUAGE C STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_trait_text';
COMMENT ON FUNCTION persona.trait_text(bytea, int) IS
    'the value now of a first or last trait, from a profile''s trait states';

CREATE FUNCTION persona.traits_json(states bytea) RETURNS jsonb
    LANGUAGE C STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_traits_json';
COMMENT ON FUNCTION persona.traits_json(bytea) IS
    'every defined trait''s value now, as a JSON object, from a profile''s trait states';

-- The backfill aggregate: the same state code as ingest, in parallel.
CREATE FUNCTION persona.trait_agg_add(internal, int, text, interval, text, timestamptz, bigint, jsonb)
    RETURNS internal
    LANGUAGE C STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_trait_agg_add';
COMMENT ON FUNCTION persona.trait_agg_add(internal, int, text, interval, text, timestamptz, bigint, jsonb) IS
    'transition function of persona.trait_agg';

CREATE FUNCTION persona.trait_agg_combine(internal, internal) RETURNS internal
    LANGUAGE C STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_trait_agg_combine';
COMMENT ON FUNCTION persona.trait_agg_combine(internal, internal) IS
    'combine function of persona.trait_agg';

CREATE FUNCTION persona.trait_agg_serialize(internal) RETURNS bytea
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_trait_agg_serialize';
COMMENT ON FUNCTION persona.trait_agg_serialize(internal) IS
    'serialize function of persona.trait_agg';

CREATE FUNCTION persona.trait_agg_deserialize(bytea, internal) RETURNS internal
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_trait_agg_deserialize';
COMMENT ON FUNCTION persona.trait_agg_deserialize(bytea, internal) IS
    'deserialize function of persona.trait_agg';

CREATE FUNCTION persona.trait_agg_final(internal) RETURNS bytea
    LANGUAGE C IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_trait_agg_final';
COMMENT ON FUNCTION persona.trait_agg_final(internal) IS
    'final function of persona.trait_agg';

CREATE AGGREGATE persona.trait_agg(int, text, interval, text, timestamptz, bigint, jsonb) (
    SFUNC = persona.trait_agg_add,
    STYPE = internal,
    COMBINEFUNC = persona.trait_agg_combine,
    SERIALFUNC = persona.trait_agg_serialize,
    DESERIALFUNC = persona.trait_agg_deserialize,
    FINALFUNC = persona.trait_agg_final,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE persona.trait_agg(int, text, interval, text, timestamptz, bigint, jsonb) IS
    'one trait''s state over a profile''s events: (trait_id, aggregate, time_window, property, occurred_at, event_id, properties)';

-- One typed column per trait; rebuilt by persona.rebuild_traits_view().
CREATE VIEW persona.traits AS
    SELECT p.profile_id FROM persona.profiles AS p;
COMMENT ON VIEW persona.traits IS
    'one row per profile, one typed column per computed trait, values as of now()';

-- What segment predicates see: the columns of persona.profiles and one per
-- computed trait, in one relation. Rebuilt with persona.traits.
CREATE VIEW persona.segment_source AS
    SELECT p.profile_id, p.user_id, p.traits, p.first_seen, p.last_seen, p.event_count,
           p.created_at, p.updated_at
      FROM persona.profiles AS p;
COMMENT ON VIEW persona.segment_source IS
    'the columns segment predicates can name: persona.profiles and every computed trait';

-- What action conditions see: the same, and the call's context.
CREATE VIEW persona.decision_source AS
    SELECT s.*, NULL::jsonb AS context FROM persona.segment_source AS s;
COMMENT ON VIEW persona.decision_source IS
    'the columns action conditions can name: those of persona.segment_source and context (the call''s jsonb)';

-- What trigger conditions see: the same, and the triggering event.
CREATE VIEW persona.trigger_source AS
    SELECT d.*, NULL::jsonb AS event FROM persona.decision_source AS d;
COMMENT ON VIEW persona.trigger_source IS
    'the columns trigger conditions can name: those of persona.decision_source and event (event_type, properties, context)';

-- persona.traits is dropped and recreated when traits change: views built on
-- it would block that, so they are refused up front.
CREATE FUNCTION persona.check_traits_view_free() RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_rebuilt  regclass[] := ARRAY['persona.traits', 'persona.segment_source',
                                   'persona.decision_source', 'persona.trigger_source']::regclass[];
    v_read     text;
    v_dependent text;
BEGIN
    -- Views of one's own on any view the rebuild drops, persona's own aside.
    SELECT string_agg(DISTINCT d.refobjid::regclass::text, ', '),
           string_agg(DISTINCT r.ev_class::regclass::text, ', ')
      INTO v_read, v_dependent
      FROM pg_depend AS d JOIN pg_rewrite AS r ON r.oid = d.objid
     WHERE d.classid = 'pg_rewrite'::regclass
       AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = ANY (v_rebuilt)
       AND NOT r.ev_class = ANY (v_rebuilt);
    IF v_dependent IS NOT NULL THEN
        RAISE EXCEPTION 'cannot change the traits while other views depend on %', v_read
            USING ERRCODE = '2BP01',
                  DETAIL = format('Dependent views: %s.', v_dependent),
                  HINT = 'Drop them first and create them again afterwards, in the same transaction.';
    END IF;
END
$$;
COMMENT ON FUNCTION persona.check_traits_view_free() IS
    'refuses to go on while views depend on the views a trait change rebuilds (persona.traits, segment_source, decision_source, trigger_source)';

CREATE FUNCTION persona.rebuild_traits_view() RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_cols text := '';
    v_acl  aclitem[];
    r      record;
BEGIN
    SELECT c.relacl INTO v_acl FROM pg_class AS c WHERE c.oid = 'persona.traits'::regclass;
    FOR r IN SELECT d.trait_id, d.name, d.aggregate FROM persona.trait_defs AS d ORDER BY d.trait_id LOOP
        v_cols := v_cols || format(E',\n           persona.%s(p.computed_state, %s) AS %I',
            CASE WHEN r.aggregate IN ('count', 'count_distinct') THEN 'trait_bigint'
                 WHEN r.aggregate IN ('first', 'last') THEN 'trait_text'
                 ELSE 'trait_numeric' END,
            r.trait_id, r.name);
    END LOOP;
    -- A model's probability, computed from the same states (src/models.c);
    -- its weights are constants of the view, which a retraining rebuilds.
    FOR r IN SELECT m.name, m.feature_ids, m.params FROM persona.models AS m ORDER BY m.model_id LOOP
        v_cols := v_cols || format(E',\n           persona.model_score(p.computed_state, p.event_count, p.first_seen, p.last_seen, %L::integer[], %L::double precision[]) AS %I',
            r.feature_ids, r.params, r.name);
    END LOOP;

    ALTER EXTENSION persona DROP VIEW persona.traits;
    ALTER EXTENSION persona DROP VIEW persona.trigger_source;
    ALTER EXTENSION persona DROP VIEW persona.decision_source;
    ALTER EXTENSION persona DROP VIEW persona.segment_source;
    DROP VIEW persona.traits;
    DROP VIEW persona.trigger_source;
    DROP VIEW persona.decision_source;
    DROP VIEW persona.segment_source;
    EXECUTE format(E'CREATE VIEW persona.traits AS\n    SELECT p.profile_id%s\n      FROM persona.profiles AS p', v_cols);
    EXECUTE format(E'CREATE VIEW persona.segment_source AS\n'
                   '    SELECT p.profile_id, p.user_id, p.traits, p.first_seen, p.last_seen, p.event_count,\n'
                   '           p.created_at, p.updated_at%s\n      FROM persona.profiles AS p', v_cols);
    CREATE VIEW persona.decision_source AS
        SELECT s.*, NULL::jsonb AS context FROM persona.segment_source AS s;
    CREATE VIEW persona.trigger_source AS
        SELECT d.*, NULL::jsonb AS event FROM persona.decision_source AS d;
    ALTER EXTENSION persona ADD VIEW persona.traits;
    ALTER EXTENSION persona ADD VIEW persona.segment_source;
    ALTER EXTENSION persona ADD VIEW persona.decision_source;
    ALTER EXTENSION persona ADD VIEW persona.trigger_source;
    COMMENT ON VIEW persona.segment_source IS
        'the columns segment predicates can name: persona.profiles and every computed trait';
    COMMENT ON VIEW persona.decision_source IS
        'the columns action conditions can name: those of persona.segment_source and context (the call''s jsonb)';
    COMMENT ON VIEW persona.trigger_source IS
        'the columns trigger conditions can name: those of persona.decision_source and event (event_type, properties, context)';
    COMMENT ON VIEW persona.traits IS
        'one row per profile, one typed column per computed trait, values as of now()';
    -- The new view keeps the grants of the old one (regrole's output is
    -- already quoted as an identifier).
    FOR r IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM aclexplode(v_acl) AS a LOOP
        EXECUTE format('GRANT %s ON persona.traits TO %s%s', r.privilege_type,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE r.grantee::regrole::text END,
                       CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;
COMMENT ON FUNCTION persona.rebuild_traits_view() IS
    'recreates persona.traits with one typed column per defined trait, keeping its grants';

-- Definitions restored by pg_dump: CREATE EXTENSION made the views with no
-- trait column, and the restore copies persona.trait_defs back with their
-- ids, before it sets persona.trait_id_seq. Rows whose ids the sequence has
-- not handed out did not come through persona_define_trait (which rebuilds
-- the views itself, once its backfill is done): the views are rebuilt for
-- them (docs/operations.md).
CREATE FUNCTION persona.trait_defs_restored() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'STATEMENT' OR TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'persona.trait_defs_restored must run AFTER INSERT ... FOR EACH STATEMENT'
            USING ERRCODE = '39P01';
    END IF;
    IF EXISTS (SELECT FROM new_defs AS d, persona.trait_id_seq AS s
                WHERE NOT s.is_called OR d.trait_id > s.last_value) THEN
        PERFORM persona.rebuild_traits_view();
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION persona.trait_defs_restored() IS
    'rebuilds persona.traits and the views on it for trait definitions written with ids of their own, as a restore does (AFTER INSERT FOR EACH STATEMENT)';

CREATE TRIGGER trait_defs_restored
    AFTER INSERT ON persona.trait_defs
    REFERENCING NEW TABLE AS new_defs
    FOR EACH STATEMENT EXECUTE FUNCTION persona.trait_defs_restored();

-- The name of a column of persona.traits (a trait or a model): checked the
-- same way for both.
CREATE FUNCTION persona.check_column_name(name text, what text) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    IF name !~ '^[a-z_][a-z0-9_]*$' OR octet_length(name) > 63 THEN
        RAISE EXCEPTION 'invalid % name "%"', what, name USING ERRCODE = '42602',
            DETAIL = format('A %s name becomes a column of persona.traits.', what),
            HINT = 'Use at most 63 lower-case letters, digits and underscores, not starting with a digit.';
    END IF;
    IF EXISTS (SELECT FROM pg_attribute AS a
                WHERE a.attrelid = 'persona.profiles'::regclass AND a.attnum > 0
                  AND NOT a.attisdropped AND a.attname = name) THEN
        RAISE EXCEPTION '% name "%" collides with a column of persona.profiles', what, name
            USING ERRCODE = '42701', HINT = 'Choose another name.';
    END IF;
END
$$;
COMMENT ON FUNCTION persona.check_column_name(text, text) IS
    'rejects a NULL (22004), malformed (42602) or profile-column (42701) name of a trait or model';

CREATE FUNCTION @extschema@.persona_define_trait(
        name        text,
        aggregate   text,
        event_type  text,
        property    text     DEFAULT NULL,
        time_window interval DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS $$
#variable_conflict use_column
DECLARE
    v_name   text     := $1;
    v_agg    text     := lower($2);
    v_type   text     := $3;
    v_prop   text     := $4;
    v_window interval := $5;
    v_id     int;
BEGIN
    PERFORM persona.check_column_name(v_name, 'trait');
    IF v_agg IS NULL THEN
        RAISE EXCEPTION 'aggregate must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_agg NOT IN ('count', 'sum', 'min', 'max', 'avg', 'first', 'last', 'count_distinct') THEN
        RAISE EXCEPTION 'unknown aggregate "%"', $2 USING ERRCODE = '22023',
            HINT = 'Use count, sum, min, max, avg, first, last or count_distinct.';
    END IF;
    PERFORM persona.check_event_type(v_type, 'event_type');
    IF v_prop IS NULL AND v_agg <> 'count' THEN
        RAISE EXCEPTION 'aggregate % needs a property', v_agg USING ERRCODE = '22004',
            HINT = 'Name the key of properties to aggregate, e.g. ''price''.';
    END IF;
    IF v_prop = '' THEN
        RAISE EXCEPTION 'property must not be empty' USING ERRCODE = '22023';
    END IF;
    IF v_window IS NOT NULL AND (v_window < interval '1 minute' OR v_window > interval '10 years') THEN
        RAISE EXCEPTION 'time_window must be between 1 minute and 10 years' USING ERRCODE = '22023',
            DETAIL = format('The window given was "%s".', v_window),
            HINT = 'Use an interval such as ''7 days'', or NULL for the whole lifetime.';
    END IF;

    -- The backfill must see every event committed before live maintenance
    -- takes over, which a transaction-wide snapshot would not.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'persona_define_trait must run at READ COMMITTED'
            USING ERRCODE = '25000',
                  DETAIL = format('The transaction runs at %s.', current_setting('transaction_isolation'));
    END IF;
    -- The view is rebuilt at the end: refuse now, not after the backfill.
    PERFORM persona.check_traits_view_free();
    -- Rows an INSERT of this transaction has folded but not applied would
    -- be missed by both the backfill and live maintenance.
    PERFORM persona.check_ingest_idle('persona_define_trait');

    -- One definition at a time; ingest waits while the backfill runs, so no
    -- event is missed between the backfill and live maintenance. persona
    -- always locks events before profiles, so this cannot deadlock.
    LOCK TABLE persona.trait_defs IN EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM persona.trait_defs AS d WHERE d.name = v_name) THEN
        RAISE EXCEPTION 'trait "%" already exists', v_name USING ERRCODE = '42710';
    END IF;
    -- persona_train_model takes the same lock before it checks trait names.
    IF EXISTS (SELECT FROM persona.models AS m WHERE m.name = v_name) THEN
        RAISE EXCEPTION 'trait name "%" collides with a model', v_name
            USING ERRCODE = '42710', HINT = 'A model is a column of persona.traits beside the traits: choose another name.';
    END IF;
    INSERT INTO persona.trait_defs (name, aggregate, event_type, property, time_window)
    VALUES (v_name, v_agg, v_type, v_prop, v_window)
    RETURNING trait_id INTO v_id;
    LOCK TABLE persona.events IN SHARE MODE;

    -- Backfill in one pass; the aggregate runs in parallel where it can.
    CREATE TEMP TABLE persona_backfill ON COMMIT DROP AS
        SELECT e.profile_id,
               persona.trait_agg(v_id, v_agg, v_window, v_prop, e.occurred_at, e.event_id, e.properties) AS state
          FROM persona.events AS e
         WHERE e.event_type = v_type
           -- A generous cut (calendar months and DST days vary); the state
           -- code drops what is really out of the window.
           AND (v_window IS NULL OR e.occurred_at > now() - 2 * v_window - interval '1 day')
         GROUP BY e.profile_id;
    -- A profile's first trait needs no merging of states, and only a
    -- window makes a state change by the clock alone.
    UPDATE persona.profiles AS p
       SET computed_state = CASE WHEN p.computed_state IS NULL THEN b.state
                                 ELSE persona.state_put(p.computed_state, b.state) END,
           next_change_at = CASE WHEN v_window IS NULL THEN p.next_change_at
                                 ELSE LEAST(p.next_change_at, persona.next_change(b.state)) END
      FROM pg_temp.persona_backfill AS b
     WHERE p.profile_id = b.profile_id;
    DROP TABLE pg_temp.persona_backfill;

    PERFORM persona.rebuild_traits_view();
END
$$;
COMMENT ON FUNCTION @extschema@.persona_define_trait(text, text, text, text, interval) IS
    'defines a computed trait, backfills it from the stored events and adds its column to persona.traits';

CREATE FUNCTION @extschema@.persona_drop_trait(name text) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
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
    IF EXISTS (SELECT FROM persona.models AS m WHERE v_name = ANY (m.features)) THEN
        RAISE EXCEPTION 'cannot drop trait "%" because models read it', v_name
            USING ERRCODE = '2BP01',
                  DETAIL = (SELECT format('Models reading it: %s.', string_agg(quote_literal(m.name), ', ' ORDER BY m.name))
                              FROM persona.models AS m WHERE v_name = ANY (m.features)),
                  HINT = 'Drop those models, or train them again without it, first.';
    END IF;
    IF EXISTS (SELECT FROM persona.segments AS s WHERE v_name = ANY (s.reads)) THEN
        RAISE EXCEPTION 'cannot drop trait "%" because segments read it', v_name
            USING ERRCODE = '2BP01',
                  DETAIL = (SELECT format('Segments reading it: %s.', string_agg(quote_literal(s.name), ', ' ORDER BY s.name))
                              FROM persona.segments AS s WHERE v_name = ANY (s.reads)),
                  HINT = 'Drop those segments first.';
    END IF;
    IF EXISTS (SELECT FROM persona.actions AS a WHERE v_name = ANY (a.condition_reads)) THEN
        RAISE EXCEPTION 'cannot drop trait "%" because action conditions read it', v_name
            USING ERRCODE = '2BP01',
                  DETAIL = (SELECT format('Actions reading it: %s.', string_agg(quote_literal(a.name), ', ' ORDER BY a.name))
                              FROM persona.actions AS a WHERE v_name = ANY (a.condition_reads)),
                  HINT = 'Change or drop those actions first.';
    END IF;
    DELETE FROM persona.trait_defs AS d WHERE d.name = v_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'trait "%" does not exist', v_name USING ERRCODE = '42704';
    END IF;
    -- Profiles drop the trait's state the next time they are written.
    PERFORM persona.rebuild_traits_view();
END
$$;
COMMENT ON FUNCTION @extschema@.persona_drop_trait(text) IS
    'drops a computed trait and its column of persona.traits';
