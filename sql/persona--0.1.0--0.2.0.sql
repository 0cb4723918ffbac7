\echo Use "ALTER EXTENSION persona UPDATE TO '0.2.0'" to load this file. \quit

-- ---- One set of input rules for every entry point (issue 12: "the same
-- rule, the same SQLSTATE"). persona.check_id becomes C, beside the new
-- checks of event types, names and JSON objects (src/validate.sql), and the
-- PL/pgSQL entry points call them: an over-long id or event type is 22001
-- everywhere, an empty one 22023, a value that is not a JSON object 22023.
CREATE OR REPLACE FUNCTION persona.check_id(id text, what text) RETURNS text
    LANGUAGE C IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_check_id';
COMMENT ON FUNCTION persona.check_id(text, text) IS
    'rejects a NULL (22004), empty (22023) or over-long (22001, over 255 bytes) id';

CREATE FUNCTION persona.check_event_type(event_type text, what text) RETURNS text
    LANGUAGE C IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_check_event_type';
COMMENT ON FUNCTION persona.check_event_type(text, text) IS
    'rejects a NULL (22004), empty (22023) or over-long (22001, over 128 bytes) event type';

CREATE FUNCTION persona.check_name(name text, what text) RETURNS text
    LANGUAGE C IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_check_name';
COMMENT ON FUNCTION persona.check_name(text, text) IS
    'rejects a NULL (22004), empty (22023) or over-long (22001, over 200 bytes) segment or action name';

CREATE FUNCTION persona.check_object(value jsonb, what text) RETURNS jsonb
    LANGUAGE C IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_check_object';
COMMENT ON FUNCTION persona.check_object(jsonb, text) IS
    'rejects a NULL (22004) or a JSON value other than an object (22023)';

REVOKE ALL ON FUNCTION persona.check_event_type(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_name(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_object(jsonb, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@.persona_identify(
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
    v_traits jsonb := persona.check_object($2, 'traits');
    v_anon   text  := $3;
    v_pid    bigint;
BEGIN
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

CREATE OR REPLACE FUNCTION @extschema@.persona_create_segment(name text, predicate text)
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
    PERFORM persona.check_name(v_name, 'name');
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

CREATE OR REPLACE FUNCTION @extschema@.persona_in_segment(user_id text, segment text)
    RETURNS boolean
    LANGUAGE plpgsql STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
BEGIN
    PERFORM persona.check_id($1, 'user_id');
    PERFORM persona.check_name($2, 'segment');
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

CREATE OR REPLACE FUNCTION @extschema@.persona_define_trait(
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

CREATE OR REPLACE FUNCTION persona.check_action(a persona.actions) RETURNS persona.actions
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

CREATE OR REPLACE FUNCTION @extschema@.persona_update_action(name text, changes jsonb)
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
