-- persona 0.1.0 as released (assembled from src/*.sql at commit f1ba452). Frozen: never edit.
\echo Use "CREATE EXTENSION persona" to load this file. \quit

-- ---- src/schema.sql
-- The persona schema: where the data lives. API functions are created in
-- @extschema@ by the fragments that implement them.

CREATE SCHEMA persona;
COMMENT ON SCHEMA persona IS 'persona data: events, profiles, identities';

CREATE SEQUENCE persona.profile_id_seq CACHE 32;
COMMENT ON SEQUENCE persona.profile_id_seq IS 'allocates profile ids';

-- One row per live profile. A profile absorbed by a merge disappears from
-- here and leaves a row in persona.merges.
--
-- Every ingest statement updates each profile it touches once, and a bulk
-- statement updates every row of a page: a fill factor of 50 leaves room for
-- a HOT copy of each, so no index is touched. user_id is unique through
-- persona.identities (an id names one profile, and two known users never
-- merge); it has no index of its own, so updates stay cheap: look a user up
-- through persona.identities or persona_profile().
--
-- Ids are opaque byte strings: "C" collation compares them bytewise, which
-- is both the right semantics and the cheapest index descent.
CREATE TABLE persona.profiles (
    profile_id  bigint      PRIMARY KEY,
    user_id     text        COLLATE "C",
    traits      jsonb       NOT NULL DEFAULT '{}',
    first_seen  timestamptz,
    last_seen   timestamptz,
    event_count bigint      NOT NULL DEFAULT 0,
    computed_state bytea,
    next_change_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);
COMMENT ON TABLE persona.profiles IS 'one row per person: declared traits and event statistics, maintained by persona';
COMMENT ON COLUMN persona.profiles.user_id IS 'the known user id, NULL while the person is anonymous';
COMMENT ON COLUMN persona.profiles.traits IS 'declared traits (persona_identify), a JSON object (persona_identify checks it)';
COMMENT ON COLUMN persona.profiles.computed_state IS 'the state of every computed trait (read them in persona.traits)';
COMMENT ON COLUMN persona.profiles.next_change_at IS 'when a windowed trait of the profile next changes by the clock alone (persona_tick)';
COMMENT ON COLUMN persona.profiles.first_seen IS 'earliest occurred_at of the profile''s events';
COMMENT ON COLUMN persona.profiles.last_seen IS 'latest occurred_at of the profile''s events';

CREATE INDEX profiles_next_change_at_idx ON persona.profiles (next_change_at)
    WHERE next_change_at IS NOT NULL;

-- Every id a person is known by, known user ids and anonymous ids alike, in
-- one namespace.
--
-- The primary key carries profile_id, so that resolving an id (every event
-- of a person the backend has not cached) reads the index alone.
CREATE TABLE persona.identities (
    id          text        COLLATE "C",
    profile_id  bigint      NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('user', 'anonymous')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id) INCLUDE (profile_id)
);
-- A profile's ids are looked up by profile only for merge, forget and
-- persona_profile, and always by equality: a hash index serves that, with
-- one bucket page per entry and no descent or comparisons. It holds the
-- anonymous ids alone: a profile has at most one user id (two known users
-- never merge), and it is the profile's user_id, reached through the
-- primary key. So a person first seen under a known user id, the common
-- case of logged-in traffic, costs no entry here.
CREATE INDEX identities_anonymous_idx ON persona.identities USING hash (profile_id)
    WHERE kind = 'anonymous';
COMMENT ON TABLE persona.identities IS 'every id (user or anonymous) and the profile it resolves to';

-- The event stream. The primary key leads with profile_id (the natural
-- distribution column) and contains occurred_at (the natural partition key),
-- so the table can later be range-partitioned by time and distributed by
-- profile without changing the API. profile_id is set by persona on insert.
CREATE SEQUENCE persona.event_id_seq CACHE 32;
COMMENT ON SEQUENCE persona.event_id_seq IS 'allocates event ids';

CREATE TABLE persona.events (
    event_id     bigint      NOT NULL DEFAULT nextval('persona.event_id_seq'),
    profile_id   bigint      NOT NULL DEFAULT 0,
    user_id      text,
    anonymous_id text,
    event_type   text        NOT NULL,
    properties   jsonb       NOT NULL DEFAULT '{}',
    context      jsonb       NOT NULL DEFAULT '{}',
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, occurred_at, event_id)
);
ALTER SEQUENCE persona.event_id_seq OWNED BY persona.events.event_id;
COMMENT ON TABLE persona.events IS 'every tracked event; insert here, through persona_track, INSERT or COPY';
COMMENT ON COLUMN persona.events.profile_id IS 'the profile the event belongs to, resolved from user_id or anonymous_id on insert';
COMMENT ON COLUMN persona.events.context IS 'channel, device, session_id, geo, currency';

-- Merge history: profiles that were absorbed into another one.
CREATE TABLE persona.merges (
    from_profile_id bigint      PRIMARY KEY,
    into_profile_id bigint      NOT NULL,
    merged_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX merges_into_profile_id_idx ON persona.merges (into_profile_id);
COMMENT ON TABLE persona.merges IS 'profiles absorbed by identity merges, and where they went';

SELECT pg_catalog.pg_extension_config_dump('persona.profiles', '');
SELECT pg_catalog.pg_extension_config_dump('persona.identities', '');
SELECT pg_catalog.pg_extension_config_dump('persona.events', '');
SELECT pg_catalog.pg_extension_config_dump('persona.merges', '');
SELECT pg_catalog.pg_extension_config_dump('persona.profile_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.event_id_seq', '');

-- ---- src/catalog.sql
-- Cache invalidation for the per-backend caches of src/catalog.c's users.

CREATE FUNCTION persona.announce_change() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_announce_change';
COMMENT ON FUNCTION persona.announce_change() IS
    'tells every backend to drop what it cached from the trigger''s table (AFTER ... FOR EACH STATEMENT)';

-- ---- src/ingest.sql
-- Ingest: persona_track and the triggers that maintain profiles for every
-- insert into persona.events (src/ingest.c).

-- event_id's default. It is nextval() of persona.event_id_seq (with its
-- privilege check), and tells the row trigger that the id is fresh: such a
-- row cannot meet a unique conflict, so the trigger may fold it at once.
-- PUBLIC may run it: it checks the sequence privilege like nextval().
CREATE FUNCTION persona.next_event_id() RETURNS bigint
    LANGUAGE C VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'persona_next_event_id';
COMMENT ON FUNCTION persona.next_event_id() IS
    'the default of persona.events.event_id: nextval of persona.event_id_seq';
ALTER TABLE persona.events ALTER COLUMN event_id SET DEFAULT persona.next_event_id();

-- The WHEN condition of events_confirm, run as whoever inserts: PUBLIC may
-- run it, it reads one number of the backend's own.
CREATE FUNCTION persona.event_folded(event_id bigint) RETURNS boolean
    LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_event_folded';
COMMENT ON FUNCTION persona.event_folded(bigint) IS
    'whether the BEFORE ROW trigger already folded the row just inserted (WHEN condition of events_confirm)';

CREATE FUNCTION persona.check_ingest_idle(what text) RETURNS void
    LANGUAGE C STRICT
    AS 'MODULE_PATHNAME', 'persona_check_ingest_idle';
COMMENT ON FUNCTION persona.check_ingest_idle(text) IS
    'raises an error while an insert into persona.events of this backend has rows not applied yet';

CREATE FUNCTION persona.events_resolve() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_events_resolve';
COMMENT ON FUNCTION persona.events_resolve() IS
    'checks an incoming event, resolves its profile_id and folds it for its profile (BEFORE INSERT FOR EACH ROW on persona.events)';

CREATE FUNCTION persona.events_confirm() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_events_confirm';
COMMENT ON FUNCTION persona.events_confirm() IS
    'folds an inserted event the BEFORE ROW trigger could not (AFTER INSERT FOR EACH ROW on persona.events)';

CREATE FUNCTION persona.events_apply() RETURNS trigger
    LANGUAGE C
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_events_apply';
COMMENT ON FUNCTION persona.events_apply() IS
    'writes new identities and updates each touched profile once per statement (AFTER INSERT FOR EACH STATEMENT on persona.events)';

-- The row trigger folds a row itself only when no BEFORE ROW trigger sorts
-- after it; the AFTER ROW trigger folds every other row as inserted.
CREATE TRIGGER events_resolve
    BEFORE INSERT ON persona.events
    FOR EACH ROW EXECUTE FUNCTION persona.events_resolve();

CREATE TRIGGER events_confirm
    AFTER INSERT ON persona.events
    FOR EACH ROW WHEN (NOT persona.event_folded(NEW.event_id))
    EXECUTE FUNCTION persona.events_confirm();

CREATE TRIGGER events_apply
    AFTER INSERT ON persona.events
    FOR EACH STATEMENT EXECUTE FUNCTION persona.events_apply();

-- Merges and forget change id -> profile mappings that backends cache.
CREATE TRIGGER identities_changed
    AFTER UPDATE OR DELETE OR TRUNCATE ON persona.identities
    FOR EACH STATEMENT EXECUTE FUNCTION persona.announce_change();

CREATE FUNCTION @extschema@.persona_track(
        user_id      text,
        event_type   text,
        properties   jsonb       DEFAULT '{}',
        occurred_at  timestamptz DEFAULT now(),
        context      jsonb       DEFAULT '{}',
        anonymous_id text        DEFAULT NULL)
    RETURNS bigint
    LANGUAGE C
    VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_track';
COMMENT ON FUNCTION @extschema@.persona_track(text, text, jsonb, timestamptz, jsonb, text) IS
    'records one event for a user or anonymous id and updates the profile in the same transaction; returns the event_id';

-- ---- src/traits.sql
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
    time_window interval    CHECK (time_window > interval '0'),
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

-- persona.traits is dropped and recreated when traits change: views built on
-- it would block that, so they are refused up front.
CREATE FUNCTION persona.check_traits_view_free() RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_rebuilt  regclass[] := ARRAY['persona.traits', 'persona.segment_source',
                                   'persona.decision_source']::regclass[];
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
    'refuses to go on while views depend on the views a trait change rebuilds (persona.traits, segment_source, decision_source)';

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

    ALTER EXTENSION persona DROP VIEW persona.traits;
    ALTER EXTENSION persona DROP VIEW persona.decision_source;
    ALTER EXTENSION persona DROP VIEW persona.segment_source;
    DROP VIEW persona.traits;
    DROP VIEW persona.decision_source;
    DROP VIEW persona.segment_source;
    EXECUTE format(E'CREATE VIEW persona.traits AS\n    SELECT p.profile_id%s\n      FROM persona.profiles AS p', v_cols);
    EXECUTE format(E'CREATE VIEW persona.segment_source AS\n'
                   '    SELECT p.profile_id, p.user_id, p.traits, p.first_seen, p.last_seen, p.event_count,\n'
                   '           p.created_at, p.updated_at%s\n      FROM persona.profiles AS p', v_cols);
    CREATE VIEW persona.decision_source AS
        SELECT s.*, NULL::jsonb AS context FROM persona.segment_source AS s;
    ALTER EXTENSION persona ADD VIEW persona.traits;
    ALTER EXTENSION persona ADD VIEW persona.segment_source;
    ALTER EXTENSION persona ADD VIEW persona.decision_source;
    COMMENT ON VIEW persona.segment_source IS
        'the columns segment predicates can name: persona.profiles and every computed trait';
    COMMENT ON VIEW persona.decision_source IS
        'the columns action conditions can name: those of persona.segment_source and context (the call''s jsonb)';
    COMMENT ON VIEW persona.traits IS
        'one row per profile, one typed column per computed trait, values as of now()';
    -- The new view keeps the grants of the old one.
    FOR r IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM aclexplode(v_acl) AS a LOOP
        EXECUTE format('GRANT %s ON persona.traits TO %s%s', r.privilege_type,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.grantee::regrole::text) END,
                       CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;
COMMENT ON FUNCTION persona.rebuild_traits_view() IS
    'recreates persona.traits with one typed column per defined trait, keeping its grants';

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
    IF v_name IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_name !~ '^[a-z_][a-z0-9_]*$' OR octet_length(v_name) > 63 THEN
        RAISE EXCEPTION 'invalid trait name "%"', v_name USING ERRCODE = '42602',
            DETAIL = 'A trait name becomes a column of persona.traits.',
            HINT = 'Use at most 63 lower-case letters, digits and underscores, not starting with a digit.';
    END IF;
    IF EXISTS (SELECT FROM pg_attribute AS a
                WHERE a.attrelid = 'persona.profiles'::regclass AND a.attnum > 0
                  AND NOT a.attisdropped AND a.attname = v_name) THEN
        RAISE EXCEPTION 'trait name "%" collides with a column of persona.profiles', v_name
            USING ERRCODE = '42701', HINT = 'Choose another name.';
    END IF;
    IF v_agg IS NULL THEN
        RAISE EXCEPTION 'aggregate must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_agg NOT IN ('count', 'sum', 'min', 'max', 'avg', 'first', 'last', 'count_distinct') THEN
        RAISE EXCEPTION 'unknown aggregate "%"', $2 USING ERRCODE = '22023',
            HINT = 'Use count, sum, min, max, avg, first, last or count_distinct.';
    END IF;
    IF v_type IS NULL THEN
        RAISE EXCEPTION 'event_type must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_type = '' OR octet_length(v_type) > 128 THEN
        RAISE EXCEPTION 'event_type must be 1 to 128 bytes' USING ERRCODE = '22023';
    END IF;
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

-- ---- src/segments.sql
-- Real-time segments: definitions, members and their log, the predicate
-- compiler and the refresh (src/segments.c), and the API.

CREATE SEQUENCE persona.segment_id_seq AS int;
COMMENT ON SEQUENCE persona.segment_id_seq IS 'allocates segment ids';

CREATE TABLE persona.segments (
    segment_id    int         PRIMARY KEY DEFAULT nextval('persona.segment_id_seq'),
    name          text        NOT NULL UNIQUE,
    predicate     text        NOT NULL,
    predicate_sql text        NOT NULL,
    reads         text[]      NOT NULL,
    clock         boolean     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE persona.segment_id_seq OWNED BY persona.segments.segment_id;
COMMENT ON TABLE persona.segments IS 'segment definitions (persona_create_segment)';
COMMENT ON COLUMN persona.segments.predicate IS 'the predicate as given';
COMMENT ON COLUMN persona.segments.predicate_sql IS 'the checked predicate, deparsed: what is evaluated';
COMMENT ON COLUMN persona.segments.reads IS 'the columns of persona.segment_source the predicate reads';
COMMENT ON COLUMN persona.segments.clock IS 'whether the predicate calls a function of the clock (now(), current_date, ...)';

CREATE TABLE persona.segment_members (
    segment    text        NOT NULL,
    profile_id bigint      NOT NULL,
    entered_at timestamptz NOT NULL DEFAULT now(),
    -- persona reads memberships per profile (refresh, decide, forget,
    -- persona_in_segment), so the key leads with profile_id and is the only
    -- index: every entry writes one index entry here, appended in profile
    -- order by bulk ingest. Listing one segment's members scans the table.
    PRIMARY KEY (profile_id, segment)
);
COMMENT ON TABLE persona.segment_members IS 'current members of every segment, as of the last commit that changed them';

CREATE TABLE persona.segment_log (
    log_id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    segment    text        NOT NULL,
    profile_id bigint      NOT NULL,
    op         text        NOT NULL CHECK (op IN ('enter', 'exit')),
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX segment_log_profile_id_idx ON persona.segment_log (profile_id);
COMMENT ON TABLE persona.segment_log IS 'every entry into and exit from a segment, also announced on NOTIFY channel persona_segment';
COMMENT ON SEQUENCE persona.segment_log_log_id_seq IS 'allocates segment log ids';

SELECT pg_catalog.pg_extension_config_dump('persona.segments', '');
SELECT pg_catalog.pg_extension_config_dump('persona.segment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.segment_members', '');
SELECT pg_catalog.pg_extension_config_dump('persona.segment_log', '');

-- Ingest caches the definitions; changes reach every backend.
CREATE TRIGGER segments_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON persona.segments
    FOR EACH STATEMENT EXECUTE FUNCTION persona.announce_change();

CREATE FUNCTION persona.compile_predicate(predicate text, source regclass,
                                          OUT sql text, OUT reads text[], OUT clock boolean)
    LANGUAGE C STABLE
    AS 'MODULE_PATHNAME', 'persona_compile_predicate';
COMMENT ON FUNCTION persona.compile_predicate(text, regclass) IS
    'checks a predicate over a source relation; returns it deparsed, the columns it reads, and whether it calls clock functions';

CREATE FUNCTION persona.refresh_segments(profile_ids bigint[], changed text[]) RETURNS bigint
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'persona_refresh_segments';
COMMENT ON FUNCTION persona.refresh_segments(bigint[], text[]) IS
    're-evaluates for these profiles the segments that read a changed column (NULL: all); returns entries plus exits';

-- Leaves every segment of a profile that is going away (absorbed by a
-- merge), logged and announced as exits.
CREATE FUNCTION persona.leave_segments(profile_id bigint) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_pid bigint := $1;
    v_n   bigint;
BEGIN
    WITH gone AS (
        DELETE FROM persona.segment_members AS m WHERE m.profile_id = v_pid
        RETURNING m.segment, m.profile_id),
    logged AS (
        INSERT INTO persona.segment_log (segment, profile_id, op)
        SELECT g.segment, g.profile_id, 'exit' FROM gone AS g
        RETURNING log_id, segment, profile_id)
    SELECT count(pg_notify('persona_segment',
                           jsonb_build_object('op', 'exit', 'log_id', l.log_id, 'segment', l.segment,
                                              'profile_id', l.profile_id)::text))
      INTO v_n FROM logged AS l;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION persona.leave_segments(bigint) IS
    'removes a profile from every segment, logging and announcing the exits';

CREATE FUNCTION @extschema@.persona_create_segment(name text, predicate text)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_name text := $1;
    v_c    record;
BEGIN
    IF v_name IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_name = '' OR octet_length(v_name) > 200 THEN
        RAISE EXCEPTION 'a segment name must be 1 to 200 bytes' USING ERRCODE = '22023';
    END IF;
    v_c := persona.compile_predicate($2, 'persona.segment_source');
    -- The evaluation must see every profile committed before live
    -- maintenance takes over, which a transaction-wide snapshot would not.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'persona_create_segment must run at READ COMMITTED'
            USING ERRCODE = '25000',
                  DETAIL = format('The transaction runs at %s.', current_setting('transaction_isolation'));
    END IF;

    LOCK TABLE persona.segments IN EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM persona.segments AS s WHERE s.name = v_name) THEN
        RAISE EXCEPTION 'segment "%" already exists', v_name USING ERRCODE = '42710';
    END IF;
    -- Every profile is evaluated now; ingest waits meanwhile, so no change
    -- slips between this evaluation and live maintenance.
    PERFORM persona.lock_order();
    LOCK TABLE persona.events IN SHARE MODE;
    INSERT INTO persona.segments (name, predicate, predicate_sql, reads, clock)
    VALUES (v_name, $2, v_c.sql, v_c.reads, v_c.clock);

    -- v_c.sql is the checked expression deparsed from its parse tree, never
    -- the text given; the name is only ever a parameter.
    EXECUTE format($q$
        WITH entered AS (
            INSERT INTO persona.segment_members (segment, profile_id)
            SELECT $1, s.profile_id FROM persona.segment_source AS s
             WHERE coalesce((%s), false)
            RETURNING segment, profile_id),
        logged AS (
            INSERT INTO persona.segment_log (segment, profile_id, op)
            SELECT e.segment, e.profile_id, 'enter' FROM entered AS e
            RETURNING log_id, segment, profile_id)
        SELECT count(pg_notify('persona_segment',
                               jsonb_build_object('op', 'enter', 'log_id', l.log_id, 'segment', l.segment,
                                                  'profile_id', l.profile_id)::text))
          FROM logged AS l$q$, v_c.sql)
    USING v_name;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_create_segment(text, text) IS
    'defines a segment by a boolean predicate over persona.profiles and persona.traits, and evaluates every profile';

CREATE FUNCTION @extschema@.persona_drop_segment(name text)
    RETURNS void
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
    LOCK TABLE persona.segments IN EXCLUSIVE MODE;
    -- Ingest in flight may still add members: wait for it, as creation does.
    PERFORM persona.lock_order();
    LOCK TABLE persona.events IN SHARE MODE;
    DELETE FROM persona.segments AS s WHERE s.name = v_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'segment "%" does not exist', v_name USING ERRCODE = '42704';
    END IF;
    DELETE FROM persona.segment_members AS m WHERE m.segment = v_name;
    PERFORM pg_notify('persona_segment', jsonb_build_object('segment', v_name, 'op', 'drop')::text);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_drop_segment(text) IS
    'drops a segment and its members (announced once, as op "drop"); its log stays';

CREATE FUNCTION @extschema@.persona_in_segment(user_id text, segment text)
    RETURNS boolean
    LANGUAGE plpgsql STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
BEGIN
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION 'user_id and segment must not be null' USING ERRCODE = '22004';
    END IF;
    IF NOT EXISTS (SELECT FROM persona.segments AS s WHERE s.name = $2) THEN
        RAISE EXCEPTION 'segment "%" does not exist', $2 USING ERRCODE = '42704';
    END IF;
    RETURN EXISTS (SELECT FROM persona.identities AS i
                     JOIN persona.segment_members AS m ON m.profile_id = i.profile_id
                    WHERE i.id = $1 AND m.segment = $2);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_in_segment(text, text) IS
    'whether the profile any id names is a member of the segment now';

CREATE FUNCTION @extschema@.persona_tick()
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_changes  bigint := 0;
    v_windowed text[];
    v_clock    boolean;
    v_batch    bigint[];
    v_due      bigint[];
BEGIN
    PERFORM persona.lock_order();
    SELECT array_agg(d.name) INTO v_windowed
      FROM persona.trait_defs AS d WHERE d.time_window IS NOT NULL;
    v_clock := EXISTS (SELECT FROM persona.segments AS s WHERE s.clock);

    -- Batches in profile order, each locked before it is touched, so the
    -- tick takes profile locks in the one order ingest and merges take them.
    -- Without clock predicates only the profiles whose windowed traits
    -- changed by the clock alone are visited (an index range on
    -- next_change_at); predicates that call clock functions can change for
    -- anyone, so then every profile is.
    FOR v_batch IN
        SELECT array_agg(b.profile_id ORDER BY b.profile_id)
          FROM (SELECT p.profile_id, (row_number() OVER (ORDER BY p.profile_id) - 1) / 10000 AS n
                  FROM persona.profiles AS p
                 WHERE v_clock OR p.next_change_at <= now()) AS b
         GROUP BY b.n ORDER BY b.n
    LOOP
        PERFORM 1 FROM persona.profiles AS p
         WHERE p.profile_id = ANY (v_batch) ORDER BY p.profile_id FOR NO KEY UPDATE;
        -- Prune the due states and note when each changes next.
        WITH pruned AS (
            UPDATE persona.profiles AS p
               SET (computed_state, next_change_at) =
                   (SELECT q.s, persona.next_change(q.s)
                      FROM (SELECT persona.state_merge(p.computed_state, NULL) AS s) AS q)
             WHERE p.profile_id = ANY (v_batch) AND p.next_change_at <= now()
            RETURNING p.profile_id)
        SELECT array_agg(pruned.profile_id ORDER BY pruned.profile_id) INTO v_due FROM pruned;
        IF v_due IS NOT NULL AND v_windowed IS NOT NULL THEN
            v_changes := v_changes + persona.refresh_segments(v_due, v_windowed);
        END IF;
        IF v_clock THEN
            v_changes := v_changes + persona.refresh_segments(v_batch, ARRAY['now()']);
        END IF;
    END LOOP;
    RETURN v_changes;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_tick() IS
    're-evaluates the segments that time alone can change, for the profiles it can change; returns entries plus exits';

CREATE FUNCTION @extschema@.persona_schedule()
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_job bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension AS x WHERE x.extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = '55000',
                  DETAIL = 'persona_schedule registers persona_tick() with pg_cron to run every minute.',
                  HINT = 'Preload pg_cron (shared_preload_libraries), CREATE EXTENSION pg_cron in its cron.database_name, or call persona_tick() every minute from a scheduler of your own.';
    END IF;
    EXECUTE 'SELECT cron.schedule($1, $2, $3)'
       INTO v_job
      USING 'persona_tick', '* * * * *',
            format('SELECT %I.persona_tick()',
                   (SELECT n.nspname FROM pg_extension AS x JOIN pg_namespace AS n ON n.oid = x.extnamespace
                     WHERE x.extname = 'persona'));
    RETURN v_job;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_schedule() IS
    'registers persona_tick() with pg_cron, every minute; returns the job id';

-- ---- src/decide.sql
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
    value           float8      NOT NULL DEFAULT 1,
    cap_per_day     int,
    cooldown        interval,
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
    revenue     float8 NOT NULL DEFAULT 0
);
COMMENT ON TABLE persona.action_stats IS
    'per action: decisions with feedback (trials), clicked or converted (successes), conversions, revenue';

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
    decided_at  timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE persona.decision_id_seq OWNED BY persona.decisions.decision_id;
CREATE INDEX decisions_profile_action_idx ON persona.decisions (profile_id, action_id, decided_at);
COMMENT ON TABLE persona.decisions IS 'every action persona_decide returned, with the content as rendered';

CREATE TABLE persona.feedback (
    decision_id bigint      NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('impression', 'click', 'conversion', 'dismiss', 'ignore')),
    value       float8,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (decision_id, outcome)
);
COMMENT ON TABLE persona.feedback IS 'outcomes of decisions (persona_feedback), at most one per decision and outcome';

SELECT pg_catalog.pg_extension_config_dump('persona.actions', '');
SELECT pg_catalog.pg_extension_config_dump('persona.action_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.action_stats', '');
SELECT pg_catalog.pg_extension_config_dump('persona.decisions', '');
SELECT pg_catalog.pg_extension_config_dump('persona.decision_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.feedback', '');

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
    IF a.name IS NULL OR a.channel IS NULL OR a.content IS NULL THEN
        RAISE EXCEPTION 'name, channel and content must not be null' USING ERRCODE = '22004';
    END IF;
    IF a.name = '' OR octet_length(a.name) > 200 THEN
        RAISE EXCEPTION 'an action name must be 1 to 200 bytes' USING ERRCODE = '22023';
    END IF;
    IF a.channel !~ '^[a-z][a-z0-9_]{0,31}$' THEN
        RAISE EXCEPTION 'invalid channel name "%"', a.channel USING ERRCODE = '22023',
            HINT = 'Use up to 32 lower-case letters, digits and underscores, starting with a letter, such as web, email or push.';
    END IF;
    IF jsonb_typeof(a.content) <> 'object' THEN
        RAISE EXCEPTION 'content must be a JSON object' USING ERRCODE = '22023';
    END IF;
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
    IF a.cooldown IS NOT NULL AND a.cooldown <= interval '0' THEN
        RAISE EXCEPTION 'cooldown must be positive' USING ERRCODE = '22023',
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
    INSERT INTO persona.actions (name, channel, content, segment, condition, condition_sql,
                                 condition_reads, priority, value, cap_per_day, cooldown,
                                 starts_at, ends_at)
    VALUES (a.name, a.channel, a.content, a.segment, a.condition, a.condition_sql,
            a.condition_reads, a.priority, a.value, a.cap_per_day, a.cooldown,
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
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION 'name and changes must not be null' USING ERRCODE = '22004';
    END IF;
    IF jsonb_typeof($2) <> 'object' THEN
        RAISE EXCEPTION 'changes must be a JSON object' USING ERRCODE = '22023';
    END IF;
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
    'the next best actions for a person now: eligible by schedule, segment, condition, caps and cooldown; ranked by priority, then Thompson-sampled success times value; rendered and recorded';

CREATE FUNCTION @extschema@.persona_feedback(decision_id bigint, outcome text, value float8 DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_id      bigint := $1;
    v_outcome text   := lower($2);
    v_value   float8 := $3;
    v_action  int;
    v_first   boolean;
    v_success boolean;
BEGIN
    IF v_id IS NULL OR v_outcome IS NULL THEN
        RAISE EXCEPTION 'decision_id and outcome must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_outcome NOT IN ('impression', 'click', 'conversion', 'dismiss', 'ignore') THEN
        RAISE EXCEPTION 'unknown outcome "%"', $2 USING ERRCODE = '22023',
            HINT = 'Use impression, click, conversion, dismiss or ignore.';
    END IF;
    IF v_value IS NOT NULL AND (v_outcome <> 'conversion'
                                OR v_value IN ('Infinity', '-Infinity', 'NaN')) THEN
        RAISE EXCEPTION 'only a conversion carries a value, and it must be finite' USING ERRCODE = '22023';
    END IF;
    SELECT d.action_id INTO v_action FROM persona.decisions AS d WHERE d.decision_id = v_id;
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
    v_first := NOT EXISTS (SELECT FROM persona.feedback AS f
                            WHERE f.decision_id = v_id AND f.outcome <> v_outcome);
    v_success := v_outcome IN ('click', 'conversion')
                 AND NOT EXISTS (SELECT FROM persona.feedback AS f
                                  WHERE f.decision_id = v_id AND f.outcome <> v_outcome
                                    AND f.outcome IN ('click', 'conversion'));
    UPDATE persona.action_stats AS s
       SET trials = s.trials + v_first::int,
           successes = s.successes + v_success::int,
           conversions = s.conversions + (v_outcome = 'conversion')::int,
           revenue = s.revenue + coalesce(v_value, 0)
     WHERE s.action_id = v_action;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_feedback(bigint, text, float8) IS
    'records an outcome of a decision (impression, click, conversion, dismiss, ignore); idempotent; the next decisions learn from it';

-- ---- src/identity.sql
-- Identity: persona_identify, persona_alias, persona_profile, persona_forget.
--
-- Merge protocol (shared with the ingest trigger, src/ingest.c): a merge
-- locks both profile rows in profile_id order, re-reads the identities under
-- the lock, then moves identities and events of the absorbed profile to the
-- survivor, folds its statistics in, records the move in persona.merges and
-- deletes the absorbed row.  An ingest statement that resolved rows to the
-- absorbed profile before the merge committed finds the row gone when it
-- upserts, looks it up in persona.merges and follows it.

CREATE FUNCTION persona.max_event_bytes() RETURNS int
    LANGUAGE C STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_max_event_bytes_limit';
COMMENT ON FUNCTION persona.max_event_bytes() IS 'the persona.max_event_bytes limit, in bytes';

-- Every writer takes persona.events before persona.profiles: ingest by
-- inserting, persona_define_trait by its SHARE lock, and the identity
-- functions by calling this first. One order, no deadlock between them.
CREATE FUNCTION persona.lock_order() RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    LOCK TABLE persona.events IN ROW EXCLUSIVE MODE;
END
$$;
COMMENT ON FUNCTION persona.lock_order() IS
    'takes persona.events before persona.profiles, the one lock order every writer follows';

-- Checks an id argument; returns it.
CREATE FUNCTION persona.check_id(id text, what text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION '% must not be null', what USING ERRCODE = '22004';
    END IF;
    IF id = '' THEN
        RAISE EXCEPTION '% must not be empty', what USING ERRCODE = '22023';
    END IF;
    IF octet_length(id) > 255 THEN
        RAISE EXCEPTION '% is too long', what USING ERRCODE = '22001',
            DETAIL = format('The id has %s bytes; the limit is 255.', octet_length(id));
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION persona.check_id(text, text) IS 'rejects a NULL, empty or over-long id';

-- Declared traits after an update: new keys win, a key set to JSON null is removed.
CREATE FUNCTION persona.apply_traits(old jsonb, changes jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN (SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}'::jsonb)
              FROM jsonb_each(old || changes) AS e
             WHERE jsonb_typeof(e.value) <> 'null');
COMMENT ON FUNCTION persona.apply_traits(jsonb, jsonb) IS
    'declared traits after an update: new keys win, keys set to JSON null are removed';

-- The profile of an id, or NULL.
CREATE FUNCTION persona.resolve(id text) RETURNS bigint
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN (SELECT i.profile_id FROM persona.identities AS i WHERE i.id = resolve.id);
COMMENT ON FUNCTION persona.resolve(text) IS 'the profile_id an id resolves to, or NULL';

-- The profile of an id, created (with its identity) when the id is new.
CREATE FUNCTION persona.ensure_profile(id text, kind text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_id   text := $1;
    v_kind text := $2;
    v_pid  bigint;
BEGIN
    v_pid := persona.resolve(v_id);
    IF v_pid IS NOT NULL THEN
        RETURN v_pid;
    END IF;
    -- Creating a profile is a write like ingest: same lock order, and a
    -- segment or trait definition in progress is waited for.
    PERFORM persona.lock_order();
    v_pid := nextval('persona.profile_id_seq');
    INSERT INTO persona.identities (id, profile_id, kind)
    VALUES (v_id, v_pid, v_kind)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        -- A concurrent transaction created the id first; it has committed.
        v_pid := persona.resolve(v_id);
        IF v_pid IS NULL THEN
            RAISE EXCEPTION 'could not serialize access due to a concurrently created identity'
                USING ERRCODE = '40001', HINT = 'Retry the transaction.';
        END IF;
        RETURN v_pid;
    END IF;
    INSERT INTO persona.profiles (profile_id, user_id)
    VALUES (v_pid, CASE WHEN v_kind = 'user' THEN v_id END);
    -- A new profile is new to every segment.
    PERFORM persona.refresh_segments(ARRAY[v_pid], NULL);
    RETURN v_pid;
END
$$;
COMMENT ON FUNCTION persona.ensure_profile(text, text) IS
    'the profile of an id, created with its identity when the id is new';

-- Makes one profile of the profiles of two ids; returns the survivor.
CREATE FUNCTION persona.merge(keep_id text, other_id text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_keep_id  text := $1;
    v_other_id text := $2;
    v_keep     bigint;
    v_other    bigint;
    v_locked   int;
    p_keep     persona.profiles;
    p_other    persona.profiles;
    v_into     persona.profiles;
    v_from     persona.profiles;
BEGIN
    FOR attempt IN 1..20 LOOP
        v_keep := persona.resolve(v_keep_id);
        v_other := persona.resolve(v_other_id);
        IF v_keep IS NULL OR v_other IS NULL THEN
            RAISE EXCEPTION 'could not serialize access due to a concurrently erased profile'
                USING ERRCODE = '40001', HINT = 'Retry the transaction.';
        END IF;
        IF v_keep = v_other THEN
            RETURN v_keep;
        END IF;

        -- Lock both rows in key order, then check nothing moved meanwhile.
        -- A failed attempt must not keep its locks (they would be taken out
        -- of order next time): it runs in a subtransaction and rolls back.
        BEGIN
            SELECT count(*) INTO v_locked FROM (
                SELECT 1 FROM persona.profiles AS p
                 WHERE p.profile_id IN (v_keep, v_other)
                 ORDER BY p.profile_id
                   FOR UPDATE) AS l;
            IF v_locked = 2
               AND persona.resolve(v_keep_id) = v_keep
               AND persona.resolve(v_other_id) = v_other THEN
                EXIT;
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'PR001';
        EXCEPTION WHEN SQLSTATE 'PR001' THEN
            v_keep := NULL;
        END;
    END LOOP;
    IF v_keep IS NULL THEN
        RAISE EXCEPTION 'could not serialize access due to concurrent merges'
            USING ERRCODE = '40001', HINT = 'Retry the transaction.';
    END IF;

    SELECT * INTO p_keep FROM persona.profiles AS p WHERE p.profile_id = v_keep;
    SELECT * INTO p_other FROM persona.profiles AS p WHERE p.profile_id = v_other;
    IF p_keep.user_id IS NOT NULL AND p_other.user_id IS NOT NULL THEN
        RAISE EXCEPTION 'id "%" already belongs to user "%"', v_other_id, p_other.user_id
            USING ERRCODE = '23505',
                  DETAIL = format('Profiles of two known users (%L and %L) are never merged.',
                                  p_keep.user_id, p_other.user_id),
                  HINT = 'Use persona_forget or a new anonymous id if the device changed hands.';
    END IF;

    -- The known user's profile survives; otherwise the one named first.
    IF p_keep.user_id IS NULL AND p_other.user_id IS NOT NULL THEN
        v_into := p_other;
        v_from := p_keep;
    ELSE
        v_into := p_keep;
        v_from := p_other;
    END IF;

    -- A profile's ids: its anonymous ids, and its user id (see
    -- persona.identities_anonymous_idx). The absorbed profile has none.
    UPDATE persona.identities AS i SET profile_id = v_into.profile_id
     WHERE (i.kind = 'anonymous' AND i.profile_id = v_from.profile_id)
        OR i.id = v_from.user_id;
    UPDATE persona.events AS e SET profile_id = v_into.profile_id
     WHERE e.profile_id = v_from.profile_id;
    UPDATE persona.decisions AS d SET profile_id = v_into.profile_id
     WHERE d.profile_id = v_from.profile_id;
    UPDATE persona.profiles AS p
       SET traits      = v_from.traits || p.traits,
           first_seen  = LEAST(p.first_seen, v_from.first_seen),
           last_seen   = GREATEST(p.last_seen, v_from.last_seen),
           event_count = p.event_count + v_from.event_count,
           computed_state = persona.state_merge(p.computed_state, v_from.computed_state),
           next_change_at = LEAST(p.next_change_at, v_from.next_change_at),
           updated_at  = now()
     WHERE p.profile_id = v_into.profile_id;
    UPDATE persona.merges AS m SET into_profile_id = v_into.profile_id
     WHERE m.into_profile_id = v_from.profile_id;
    INSERT INTO persona.merges (from_profile_id, into_profile_id)
    VALUES (v_from.profile_id, v_into.profile_id);
    DELETE FROM persona.profiles AS p WHERE p.profile_id = v_from.profile_id;
    -- The absorbed profile leaves its segments; the survivor changed in
    -- every column, so every segment is evaluated for it.
    PERFORM persona.leave_segments(v_from.profile_id);
    PERFORM persona.refresh_segments(ARRAY[v_into.profile_id], NULL);
    RETURN v_into.profile_id;
END
$$;
COMMENT ON FUNCTION persona.merge(text, text) IS
    'makes one profile of the profiles of two ids (the known user''s survives) and returns it';

-- Links other_id to the profile of id, merging when other_id has a profile.
CREATE FUNCTION persona.link(id text, other_id text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_id    text := $1;
    v_other text := $2;
    v_pid   bigint;
BEGIN
    IF persona.resolve(v_other) IS NULL THEN
        -- Hold the profile (against a concurrent merge or forget) while the
        -- new id is pointed at it.
        FOR attempt IN 1..20 LOOP
            v_pid := persona.ensure_profile(v_id, 'user');
            PERFORM 1 FROM persona.profiles AS p WHERE p.profile_id = v_pid FOR KEY SHARE;
            EXIT WHEN FOUND AND persona.resolve(v_id) = v_pid;
            v_pid := NULL;
        END LOOP;
        IF v_pid IS NULL THEN
            RAISE EXCEPTION 'could not serialize access due to concurrent merges'
                USING ERRCODE = '40001', HINT = 'Retry the transaction.';
        END IF;
        INSERT INTO persona.identities (id, profile_id, kind)
        VALUES (v_other, v_pid, 'anonymous')
        ON CONFLICT (id) DO NOTHING;
        IF FOUND THEN
            RETURN v_pid;
        END IF;
    END IF;
    PERFORM persona.ensure_profile(v_id, 'user');
    RETURN persona.merge(v_id, v_other);
END
$$;
COMMENT ON FUNCTION persona.link(text, text) IS
    'links an anonymous id to the profile of an id, merging the two profiles when both exist';

CREATE FUNCTION @extschema@.persona_identify(
        user_id      text,
        traits       jsonb DEFAULT '{}',
        anonymous_id text  DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_user   text  := persona.check_id($1, 'user_id');
    v_traits jsonb := $2;
    v_anon   text  := $3;
    v_pid    bigint;
BEGIN
    IF v_traits IS NULL THEN
        RAISE EXCEPTION 'traits must not be null' USING ERRCODE = '22004',
            HINT = 'Pass ''{}'' to change no trait.';
    END IF;
    IF jsonb_typeof(v_traits) <> 'object' THEN
        RAISE EXCEPTION 'traits must be a JSON object' USING ERRCODE = '22023',
            DETAIL = format('The value given is a JSON %s.', jsonb_typeof(v_traits));
    END IF;
    IF pg_column_size(v_traits) > persona.max_event_bytes() THEN
        RAISE EXCEPTION 'traits are too large' USING ERRCODE = '54000',
            DETAIL = format('They take %s bytes; the limit is %s.', pg_column_size(v_traits),
                            persona.max_event_bytes()),
            HINT = 'Raise persona.max_event_bytes or declare fewer traits at once.';
    END IF;

    PERFORM persona.lock_order();
    IF v_anon IS NULL THEN
        v_pid := persona.ensure_profile(v_user, 'user');
    ELSE
        v_pid := persona.link(v_user, persona.check_id(v_anon, 'anonymous_id'));
    END IF;

    IF v_traits <> '{}' THEN
        UPDATE persona.profiles AS p
           SET traits = persona.apply_traits(p.traits, v_traits),
               updated_at = now()
         WHERE p.profile_id = v_pid;
        IF NOT FOUND THEN
            -- Merged or erased by a transaction that committed meanwhile.
            RAISE EXCEPTION 'could not serialize access due to a concurrent merge or forget'
                USING ERRCODE = '40001', HINT = 'Retry the transaction.';
        END IF;
        PERFORM persona.refresh_segments(ARRAY[v_pid], ARRAY['traits', 'updated_at']);
    END IF;
    RETURN v_pid;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_identify(text, jsonb, text) IS
    'resolves or creates the profile of a user id, merges declared traits into it and links an anonymous id; returns the profile_id';

CREATE FUNCTION @extschema@.persona_alias(user_id text, anonymous_id text)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_user text := persona.check_id($1, 'user_id');
    v_anon text := persona.check_id($2, 'anonymous_id');
BEGIN
    PERFORM persona.lock_order();
    RETURN persona.link(v_user, v_anon);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_alias(text, text) IS
    'links an anonymous id to the profile of an id (merging profiles when both exist); returns the profile_id';

CREATE FUNCTION @extschema@.persona_profile(user_id text)
    RETURNS jsonb
    LANGUAGE sql STABLE STRICT
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    RETURN (
        SELECT jsonb_build_object(
                   'profile_id',    p.profile_id,
                   'user_id',       p.user_id,
                   'anonymous_ids', coalesce((SELECT jsonb_agg(a.id ORDER BY a.id)
                                                FROM persona.identities AS a
                                               WHERE a.profile_id = p.profile_id
                                                 AND a.kind = 'anonymous'), '[]'::jsonb),
                   'traits',        p.traits,
                   'computed',      persona.traits_json(p.computed_state),
                   'segments',      coalesce((SELECT jsonb_agg(m.segment ORDER BY m.segment)
                                                FROM persona.segment_members AS m
                                               WHERE m.profile_id = p.profile_id), '[]'::jsonb),
                   'consent',       '{}'::jsonb,
                   'first_seen',    p.first_seen,
                   'last_seen',     p.last_seen,
                   'event_count',   p.event_count)
          FROM persona.identities AS i
          JOIN persona.profiles AS p ON p.profile_id = i.profile_id
         WHERE i.id = persona_profile.user_id);
COMMENT ON FUNCTION @extschema@.persona_profile(text) IS
    'the whole profile of any id it is known by, as one JSON document; NULL for an unknown id';

CREATE FUNCTION @extschema@.persona_forget(user_id text)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_id    text := persona.check_id($1, 'user_id');
    v_pid   bigint;
    v_rows  bigint := 0;
    v_n     bigint;
BEGIN
    PERFORM persona.lock_order();
    -- Lock the profile first: ingest that resolved to it waits, then retries.
    FOR attempt IN 1..20 LOOP
        v_pid := persona.resolve(v_id);
        IF v_pid IS NULL THEN
            RETURN 0;
        END IF;
        PERFORM 1 FROM persona.profiles AS p WHERE p.profile_id = v_pid FOR UPDATE;
        EXIT WHEN FOUND AND persona.resolve(v_id) = v_pid;
        v_pid := NULL;
    END LOOP;
    IF v_pid IS NULL THEN
        RAISE EXCEPTION 'could not serialize access due to concurrent merges'
            USING ERRCODE = '40001', HINT = 'Retry the transaction.';
    END IF;

    DELETE FROM persona.events AS e WHERE e.profile_id = v_pid;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;
    DELETE FROM persona.identities AS i
     WHERE (i.kind = 'anonymous' AND i.profile_id = v_pid)
        OR i.id = (SELECT p.user_id FROM persona.profiles AS p WHERE p.profile_id = v_pid);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;
    DELETE FROM persona.segment_members AS m WHERE m.profile_id = v_pid;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;
    DELETE FROM persona.feedback AS f
     USING persona.decisions AS d
     WHERE d.decision_id = f.decision_id AND d.profile_id = v_pid;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;
    DELETE FROM persona.decisions AS d WHERE d.profile_id = v_pid;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;
    -- The log of this profile and of every profile it absorbed.
    DELETE FROM persona.segment_log AS l
     WHERE l.profile_id = v_pid
        OR l.profile_id IN (SELECT m.from_profile_id FROM persona.merges AS m
                             WHERE m.into_profile_id = v_pid);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;
    DELETE FROM persona.merges AS m WHERE m.into_profile_id = v_pid;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;
    DELETE FROM persona.profiles AS p WHERE p.profile_id = v_pid;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;
    RETURN v_rows;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_forget(text) IS
    'erases every persona row about the person any id of theirs names; returns the number of rows erased';

-- ---- src/grants.sql
-- Privileges: nothing is left to PUBLIC. docs/roles.md has the GRANT recipe
-- for the ingest, reader and admin roles.

REVOKE ALL ON FUNCTION @extschema@.persona_track(text, text, jsonb, timestamptz, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_identify(text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_alias(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_profile(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_forget(text) FROM PUBLIC;

REVOKE ALL ON FUNCTION persona.events_resolve() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.events_confirm() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_ingest_idle(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.events_apply() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_id(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.lock_order() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.apply_traits(jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.resolve(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.ensure_profile(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.merge(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.link(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.max_event_bytes() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.announce_change() FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.persona_define_trait(text, text, text, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_trait(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.state_merge(bytea, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.state_put(bytea, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.rebuild_traits_view() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.traits_json(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_traits_view_free() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg_add(internal, int, text, interval, text, timestamptz, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg_combine(internal, internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg_serialize(internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg_deserialize(bytea, internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg_final(internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg(int, text, interval, text, timestamptz, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_create_segment(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_segment(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_in_segment(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_tick() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_schedule() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.compile_predicate(text, regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.refresh_segments(bigint[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.leave_segments(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.next_change(bytea) FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.persona_create_action(text, text, jsonb, text, text, int, float8, int, interval, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_update_action(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_pause_action(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_action(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_decide(text, jsonb, text, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_feedback(bigint, text, float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_action(persona.actions) FROM PUBLIC;

-- Not revoked: persona.trait_bigint, trait_numeric and trait_text. Whoever
-- may SELECT persona.traits runs them as themselves; they decode bytes
-- (checking every one) and write nothing, and without USAGE on schema
-- persona nobody can name them.
