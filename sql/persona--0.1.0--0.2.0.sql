\echo Use "ALTER EXTENSION persona UPDATE TO '0.2.0'" to load this file. \quit

-- persona 0.1.0 -> 0.2.0. Every change to an SQL object in src/*.sql since
-- 0.1.0 appends its upgrade statements here, under a comment naming the
-- change (docs/development.md has the rules). `make test` checks that 0.1.0
-- upgraded with this script equals a fresh install of 0.2.0, schema and
-- data (test/upgrade/run.sh).

-- ---------------------------------------------------------------------
-- Security: stored predicates and conditions are checked on every write
-- (issue 11)
-- ---------------------------------------------------------------------

CREATE FUNCTION persona.compile_definition() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_compile_definition';
COMMENT ON FUNCTION persona.compile_definition() IS
    'compiles a definition row''s expression again (arguments: source view, text, sql, reads and clock columns), so no row holds unchecked SQL';
REVOKE ALL ON FUNCTION persona.compile_definition() FROM PUBLIC;

CREATE TRIGGER segments_compile
    BEFORE INSERT OR UPDATE ON persona.segments
    FOR EACH ROW EXECUTE FUNCTION persona.compile_definition(
        'persona.segment_source', 'predicate', 'predicate_sql', 'reads', 'clock');
CREATE TRIGGER actions_compile
    BEFORE INSERT OR UPDATE ON persona.actions
    FOR EACH ROW EXECUTE FUNCTION persona.compile_definition(
        'persona.decision_source', 'condition', 'condition_sql', 'condition_reads', '');

-- Every stored predicate and condition goes through the 0.2.0 checker now
-- (the triggers compile them again). One that 0.2.0 refuses could run code
-- as the owner: the update stops, naming it.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT s.segment_id, s.name FROM persona.segments AS s ORDER BY s.segment_id LOOP
        BEGIN
            UPDATE persona.segments AS s SET predicate = s.predicate WHERE s.segment_id = r.segment_id;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'segment "%" has a predicate that persona 0.2.0 refuses: %', r.name, SQLERRM
                USING ERRCODE = SQLSTATE,
                      HINT = 'Drop the segment with persona 0.1.0 (persona_drop_segment), then update.';
        END;
    END LOOP;
    FOR r IN SELECT a.action_id, a.name FROM persona.actions AS a
              WHERE a.condition IS NOT NULL ORDER BY a.action_id LOOP
        BEGIN
            UPDATE persona.actions AS a SET condition = a.condition WHERE a.action_id = r.action_id;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'action "%" has a condition that persona 0.2.0 refuses: %', r.name, SQLERRM
                USING ERRCODE = SQLSTATE,
                      HINT = 'Change the condition with persona_update_action, or drop the action, then update.';
        END;
    END LOOP;
END
$$;

-- Bounds, so that whatever is stored always evaluates. A cooldown over 10
-- years took every decision down in 0.1.0 (timestamp out of range): such
-- cooldowns become 10 years.
UPDATE persona.actions SET cooldown = interval '10 years' WHERE cooldown > interval '10 years';
ALTER TABLE persona.actions
    ADD CONSTRAINT actions_value_check CHECK (value > 0 AND value < 'Infinity'::float8),
    ADD CONSTRAINT actions_cap_per_day_check CHECK (cap_per_day > 0),
    ADD CONSTRAINT actions_cooldown_check CHECK (cooldown > interval '0' AND cooldown <= interval '10 years');
ALTER TABLE persona.trait_defs
    DROP CONSTRAINT trait_defs_time_window_check,
    ADD CONSTRAINT trait_defs_time_window_check
        CHECK (time_window >= interval '1 minute' AND time_window <= interval '10 years');

-- A condition that fails for one call is counted on its action.
ALTER TABLE persona.action_stats
    ADD COLUMN errors        bigint      NOT NULL DEFAULT 0,
    ADD COLUMN last_error    text,
    ADD COLUMN last_error_at timestamptz;
COMMENT ON TABLE persona.action_stats IS
    'per action: decisions with feedback (trials), clicked or converted (successes), conversions, revenue, and condition errors';
COMMENT ON COLUMN persona.action_stats.errors IS
    'calls of persona_decide in which the condition failed (the action was not eligible for that call)';
COMMENT ON COLUMN persona.action_stats.last_error IS 'SQLSTATE and message of the last condition error';

-- No trigger of anyone else's on persona's relations.
CREATE FUNCTION persona.guard_triggers() RETURNS event_trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_rel regclass;
BEGIN
    IF (SELECT r.rolsuper FROM pg_roles AS r WHERE r.rolname = current_user) THEN
        RETURN;
    END IF;
    SELECT t.tgrelid::regclass INTO v_rel
      FROM pg_event_trigger_ddl_commands() AS c
      JOIN pg_trigger AS t ON t.oid = c.objid
      JOIN pg_class AS k ON k.oid = t.tgrelid
     WHERE c.classid = 'pg_trigger'::regclass
       AND k.relnamespace = 'persona'::regnamespace
     LIMIT 1;
    IF v_rel IS NOT NULL THEN
        RAISE EXCEPTION 'permission denied to create a trigger on %', v_rel
            USING ERRCODE = '42501',
                  DETAIL = 'persona writes its relations as the extension''s owner, so a trigger on them would run as a superuser.',
                  HINT = 'Only superusers can create triggers on relations in schema persona.';
    END IF;
END
$$;
COMMENT ON FUNCTION persona.guard_triggers() IS
    'refuses triggers on relations in schema persona created by anyone but a superuser';
REVOKE ALL ON FUNCTION persona.guard_triggers() FROM PUBLIC;
CREATE EVENT TRIGGER persona_guard_triggers ON ddl_command_end
    WHEN TAG IN ('CREATE TRIGGER')
    EXECUTE FUNCTION persona.guard_triggers();
COMMENT ON EVENT TRIGGER persona_guard_triggers IS
    'refuses triggers on relations in schema persona created by anyone but a superuser';

-- Role names that need quotes; cooldown bounds; a refused merge names no user.
CREATE OR REPLACE FUNCTION persona.rebuild_traits_view() RETURNS void
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
    -- The new view keeps the grants of the old one (regrole's output is
    -- already quoted as an identifier).
    FOR r IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM aclexplode(v_acl) AS a LOOP
        EXECUTE format('GRANT %s ON persona.traits TO %s%s', r.privilege_type,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE r.grantee::regrole::text END,
                       CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION persona.check_action(a persona.actions) RETURNS persona.actions
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

CREATE OR REPLACE FUNCTION persona.merge(keep_id text, other_id text) RETURNS bigint
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
        -- Says neither user id: the ingest role may call this, and must not
        -- learn which user an id belongs to.
        RAISE EXCEPTION 'id "%" already belongs to another known user', v_other_id
            USING ERRCODE = '23505',
                  DETAIL = 'Profiles of two known users are never merged.',
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

