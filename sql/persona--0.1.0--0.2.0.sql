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

-- ---------------------------------------------------------------------
-- One registry of person data (issue 12): persona.person_tables lists every
-- table of rows about a person and how merge and forget treat it; merge
-- and persona_forget walk it (src/registry.sql).
-- ---------------------------------------------------------------------

-- The steps of the existing tables (src/identity.sql, src/segments.sql,
-- src/decide.sql).
-- A merge step: the absorbed profile's ids resolve to the survivor. Its
-- ids are its anonymous ids and its user id (see
-- persona.identities_anonymous_idx), both reached through an index; a bare
-- profile_id predicate would read the whole table.
CREATE FUNCTION persona.combine_identities(into_profile_id bigint, from_profile_id bigint)
    RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_into bigint := $1;
    v_from bigint := $2;
    v_user text;
BEGIN
    -- Read first, not as a subquery: NULL (the known user's profile always
    -- survives) then leaves the hash index scan alone in the plan.
    SELECT p.user_id INTO v_user FROM persona.profiles AS p WHERE p.profile_id = v_from;
    UPDATE persona.identities AS i SET profile_id = v_into
     WHERE (i.kind = 'anonymous' AND i.profile_id = v_from)
        OR i.id = v_user;
END
$$;
COMMENT ON FUNCTION persona.combine_identities(bigint, bigint) IS
    'merge step of persona.identities: every id of the absorbed profile resolves to the survivor';

-- A forget step: deletes a profile's ids; returns how many.
CREATE FUNCTION persona.erase_identities(profile_id bigint)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_pid bigint := $1;
    v_n   bigint;
BEGIN
    DELETE FROM persona.identities AS i
     WHERE (i.kind = 'anonymous' AND i.profile_id = v_pid)
        OR i.id = (SELECT p.user_id FROM persona.profiles AS p WHERE p.profile_id = v_pid);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION persona.erase_identities(bigint) IS
    'forget step of persona.identities: deletes every id of a profile; returns the number of rows';

-- A merge step: folds the absorbed profile row into the survivor's (events
-- counted, first and last seen widened, declared traits combined with the
-- survivor's winning, computed trait states merged), leaves its forwarding
-- address in persona.merges for ingest to follow, and deletes it.
CREATE FUNCTION persona.combine_profiles(into_profile_id bigint, from_profile_id bigint)
    RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_into bigint := $1;
    v_from bigint := $2;
BEGIN
    UPDATE persona.profiles AS p
       SET traits      = f.traits || p.traits,
           first_seen  = LEAST(p.first_seen, f.first_seen),
           last_seen   = GREATEST(p.last_seen, f.last_seen),
           event_count = p.event_count + f.event_count,
           computed_state = persona.state_merge(p.computed_state, f.computed_state),
           next_change_at = LEAST(p.next_change_at, f.next_change_at),
           updated_at  = now()
      FROM persona.profiles AS f
     WHERE p.profile_id = v_into AND f.profile_id = v_from;
    UPDATE persona.merges AS m SET into_profile_id = v_into
     WHERE m.into_profile_id = v_from;
    INSERT INTO persona.merges (from_profile_id, into_profile_id) VALUES (v_from, v_into);
    DELETE FROM persona.profiles AS p WHERE p.profile_id = v_from;
END
$$;
COMMENT ON FUNCTION persona.combine_profiles(bigint, bigint) IS
    'merge step of persona.profiles: folds the absorbed profile into the survivor, records the move in persona.merges and deletes it';

-- A forget step: deletes a profile row and the persona.merges rows of the
-- profiles it absorbed; returns how many rows.
CREATE FUNCTION persona.erase_profile(profile_id bigint)
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
    DELETE FROM persona.merges AS m WHERE m.into_profile_id = v_pid;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    DELETE FROM persona.profiles AS p WHERE p.profile_id = v_pid;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_rows + v_n;
END
$$;
COMMENT ON FUNCTION persona.erase_profile(bigint) IS
    'forget step of persona.profiles: deletes the profile row and the persona.merges rows of the profiles it absorbed; returns the number of rows';

-- A merge step of the registry (src/registry.sql): the absorbed profile
-- leaves its segments; the survivor changed in every column, so every
-- segment is evaluated for it.
CREATE FUNCTION persona.combine_segment_members(into_profile_id bigint, from_profile_id bigint)
    RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    PERFORM persona.leave_segments($2);
    PERFORM persona.refresh_segments(ARRAY[$1], NULL);
END
$$;
COMMENT ON FUNCTION persona.combine_segment_members(bigint, bigint) IS
    'merge step of persona.segment_members: the absorbed profile exits its segments, the survivor is evaluated against every segment';

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

-- The registry (src/registry.sql); its INSERT writes persona.merge_rows
-- and persona.forget_rows.
CREATE TABLE persona.person_tables (
    relation         regclass NOT NULL PRIMARY KEY,
    step             int      NOT NULL UNIQUE,
    merge_rule       text     NOT NULL
                     CHECK (merge_rule IN ('repoint', 'combine', 'keep_survivor', 'history')),
    -- text, not regprocedure: pg_upgrade refuses tables with reg* columns
    -- other than regclass, regtype and regrole (function oids change).
    combine_function text,
    forget_rule      text     NOT NULL
                     CHECK (forget_rule IN ('delete', 'delete_with_absorbed', 'erase')),
    erase_function   text,
    CONSTRAINT person_tables_combine_function_check
        CHECK ((merge_rule = 'combine') = (combine_function IS NOT NULL)),
    CONSTRAINT person_tables_erase_function_check
        CHECK ((forget_rule = 'erase') = (erase_function IS NOT NULL)),
    -- Rows left under an absorbed profile are found again through persona.merges.
    CONSTRAINT person_tables_history_check
        CHECK (merge_rule <> 'history' OR forget_rule = 'delete_with_absorbed')
);
COMMENT ON TABLE persona.person_tables IS
    'every persona table of rows about a person (keyed by profile_id), and how merge and forget treat them; filled by the install script';
COMMENT ON COLUMN persona.person_tables.step IS
    'the order of the entry in both walks, merge and forget (ascending)';
COMMENT ON COLUMN persona.person_tables.merge_rule IS
    'repoint: rows move to the survivor; combine: combine_function(into, from) merges them; keep_survivor: the absorbed profile''s rows are deleted; history: they stay under the absorbed profile';
COMMENT ON COLUMN persona.person_tables.combine_function IS
    'for merge_rule combine: a function of schema persona (into_profile_id bigint, from_profile_id bigint) RETURNS void that leaves no row of from_profile_id, as regprocedure text';
COMMENT ON COLUMN persona.person_tables.forget_rule IS
    'delete: the profile''s rows are deleted; delete_with_absorbed: also those of the profiles merged into it (persona.merges); erase: erase_function(profile_id) deletes them';
COMMENT ON COLUMN persona.person_tables.erase_function IS
    'for forget_rule erase: a function of schema persona (profile_id bigint) RETURNS bigint that deletes the profile''s rows and returns how many, as regprocedure text';

-- The canonical regprocedure text of the function an entry names for a
-- rule, checked: a function of schema persona taking args, returning result.
CREATE FUNCTION persona.check_step_function(fn text, args regtype[], result regtype,
                                            rule text, relation regclass)
    RETURNS text
    LANGUAGE plpgsql STABLE STRICT
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_fn regprocedure := to_regprocedure(fn);
BEGIN
    IF v_fn IS NULL OR NOT EXISTS (
            SELECT FROM pg_proc AS p
             WHERE p.oid = v_fn AND p.pronamespace = 'persona'::regnamespace
               AND p.proargtypes = array_to_string(args::oid[], ' ')::oidvector
               AND p.prorettype = result) THEN
        RAISE EXCEPTION '% function "%" of person table % is not a function persona.f(%) returning %',
            rule, fn, relation, array_to_string(args, ', '), result
            USING ERRCODE = '42883';
    END IF;
    RETURN v_fn::text;
END
$$;
COMMENT ON FUNCTION persona.check_step_function(text, regtype[], regtype, text, regclass) IS
    'the canonical text of a function named by an entry of persona.person_tables, checked against the signature its rule calls';

-- Checks an entry: a table of schema persona with a bigint profile_id, and
-- functions of schema persona with the signature their rule calls them with.
-- Stores the functions in their canonical regprocedure form.
CREATE FUNCTION persona.check_person_table() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_WHEN <> 'BEFORE' OR TG_LEVEL <> 'ROW' OR TG_OP NOT IN ('INSERT', 'UPDATE') THEN
        RAISE EXCEPTION 'persona.check_person_table must run BEFORE INSERT OR UPDATE FOR EACH ROW'
            USING ERRCODE = '39P01';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_class AS c
                    WHERE c.oid = NEW.relation AND c.relkind IN ('r', 'p')
                      AND c.relnamespace = 'persona'::regnamespace) THEN
        RAISE EXCEPTION 'person table % is not a table of schema persona', NEW.relation
            USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute AS a
                    WHERE a.attrelid = NEW.relation AND a.attname = 'profile_id'
                      AND a.atttypid = 'bigint'::regtype AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'person table % has no bigint column profile_id', NEW.relation
            USING ERRCODE = '42703',
                  HINT = 'Rows about a person are keyed by profile_id, the distribution column.';
    END IF;
    NEW.combine_function := persona.check_step_function(
        NEW.combine_function, ARRAY['bigint', 'bigint']::regtype[], 'void', 'combine', NEW.relation);
    NEW.erase_function := persona.check_step_function(
        NEW.erase_function, ARRAY['bigint']::regtype[], 'bigint', 'erase', NEW.relation);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION persona.check_person_table() IS
    'checks an entry of persona.person_tables (BEFORE INSERT OR UPDATE FOR EACH ROW)';

CREATE TRIGGER person_tables_check
    BEFORE INSERT OR UPDATE ON persona.person_tables
    FOR EACH ROW EXECUTE FUNCTION persona.check_person_table();

-- Writes persona.merge_rows and persona.forget_rows, the two walks over the
-- registry, as static statements in step order, so that PL/pgSQL prepares
-- their plans once per backend and keeps them, as in hand-written code (a
-- walk that built and EXECUTEd each statement would plan it on every merge
-- and forget).  Runs whenever the registry changes (person_tables_changed).
-- Identifiers come from regclass and regproc output, which quotes them;
-- the body is passed as a literal.
-- CREATE OR REPLACE is safe here: schema persona is the extension's own
-- (created by its install script), so nothing planted in it can be adopted.
CREATE FUNCTION persona.build_person_walks() RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_merge  text := '';
    v_forget text := '';
    r        record;
BEGIN
    FOR r IN
        SELECT t.relation, t.merge_rule, t.forget_rule,
               t.combine_function::regprocedure::oid::regproc AS combine_fn,
               t.erase_function::regprocedure::oid::regproc AS erase_fn
          FROM persona.person_tables AS t
         ORDER BY t.step
    LOOP
        v_merge := v_merge || format('    -- %s: %s
', r.relation, r.merge_rule) ||
            CASE r.merge_rule
                WHEN 'repoint' THEN format('    UPDATE %s SET profile_id = $1 WHERE profile_id = $2;
', r.relation)
                WHEN 'combine' THEN format('    PERFORM %s($1, $2);
', r.combine_fn)
                WHEN 'keep_survivor' THEN format('    DELETE FROM %s WHERE profile_id = $2;
', r.relation)
                WHEN 'history' THEN '    -- (the rows stay under the absorbed profile)
'
            END;
        v_forget := v_forget || format('    -- %s: %s
', r.relation, r.forget_rule) ||
            CASE r.forget_rule
                WHEN 'delete' THEN format('    DELETE FROM %s WHERE profile_id = $1;
    GET DIAGNOSTICS v_n = ROW_COUNT;
', r.relation)
                WHEN 'delete_with_absorbed' THEN format('    DELETE FROM %s
     WHERE profile_id = $1
        OR profile_id IN (SELECT m.from_profile_id FROM persona.merges AS m
                           WHERE m.into_profile_id = $1);
    GET DIAGNOSTICS v_n = ROW_COUNT;
', r.relation)
                WHEN 'erase' THEN format('    v_n := %s($1);
', r.erase_fn)
            END || '    v_rows := v_rows + v_n;
';
    END LOOP;

    EXECUTE format($f$
CREATE OR REPLACE FUNCTION persona.merge_rows(into_profile_id bigint, from_profile_id bigint)
    RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS %L$f$,
        '
-- Generated from persona.person_tables by persona.build_person_walks().
#variable_conflict use_column
BEGIN
' || v_merge || 'END
');
    COMMENT ON FUNCTION persona.merge_rows(bigint, bigint) IS
        'moves the rows of an absorbed profile in every table of persona.person_tables, by its merge rule (generated)';

    EXECUTE format($f$
CREATE OR REPLACE FUNCTION persona.forget_rows(profile_id bigint)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    AS %L$f$,
        '
-- Generated from persona.person_tables by persona.build_person_walks().
#variable_conflict use_column
DECLARE
    v_rows bigint := 0;
    v_n    bigint;
BEGIN
' || v_forget || '    RETURN v_rows;
END
');
    COMMENT ON FUNCTION persona.forget_rows(bigint) IS
        'erases the rows of a profile in every table of persona.person_tables, by its forget rule; returns the number of rows (generated)';
END
$$;
COMMENT ON FUNCTION persona.build_person_walks() IS
    'writes persona.merge_rows and persona.forget_rows from persona.person_tables';

CREATE FUNCTION persona.person_tables_changed() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'STATEMENT' THEN
        RAISE EXCEPTION 'persona.person_tables_changed must run AFTER ... FOR EACH STATEMENT'
            USING ERRCODE = '39P01';
    END IF;
    PERFORM persona.build_person_walks();
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION persona.person_tables_changed() IS
    'rewrites the walks of merge and forget when persona.person_tables changes (AFTER ... FOR EACH STATEMENT)';

CREATE TRIGGER person_tables_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON persona.person_tables
    FOR EACH STATEMENT EXECUTE FUNCTION persona.person_tables_changed();

-- The entries.  step orders both walks, so it must suit both:
--  - merge: persona.profiles combines before persona.segment_members, whose
--    refresh evaluates the combined survivor;
--  - forget: persona.identities before persona.profiles (its erase reads the
--    profile's user_id), and every delete_with_absorbed entry before
--    persona.profiles (whose erase deletes the persona.merges rows it reads).
INSERT INTO persona.person_tables
       (relation, step, merge_rule, combine_function, forget_rule, erase_function)
VALUES ('persona.identities', 10, 'combine', 'persona.combine_identities(bigint,bigint)',
        'erase', 'persona.erase_identities(bigint)'),
       ('persona.events', 20, 'repoint', NULL, 'delete', NULL),
       ('persona.decisions', 30, 'repoint', NULL, 'erase', 'persona.erase_decisions(bigint)'),
       ('persona.segment_log', 40, 'history', NULL, 'delete_with_absorbed', NULL),
       ('persona.profiles', 50, 'combine', 'persona.combine_profiles(bigint,bigint)',
        'erase', 'persona.erase_profile(bigint)'),
       ('persona.segment_members', 60, 'combine', 'persona.combine_segment_members(bigint,bigint)',
        'delete', NULL);

-- persona.merge and persona_forget walk the registry (src/identity.sql).

CREATE OR REPLACE FUNCTION @extschema@.persona_forget(user_id text)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_id    text := persona.check_id($1, 'user_id');
    v_pid   bigint;
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

    -- Every table of person data, in the registry's order (src/registry.sql).
    RETURN persona.forget_rows(v_pid);
END
$$;

-- Privileges (src/grants.sql).
REVOKE ALL ON FUNCTION persona.combine_identities(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.erase_identities(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.combine_profiles(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.erase_profile(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_step_function(text, regtype[], regtype, text, regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_person_table() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.build_person_walks() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.person_tables_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.merge_rows(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.forget_rows(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.combine_segment_members(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.erase_decisions(bigint) FROM PUBLIC;

-- persona.merge: the registry walk (issue 12), and a refused merge names no
-- user (issue 11).
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

    -- Every table of person data, in the registry's order (src/registry.sql):
    -- identities, events and decisions move to the survivor, the profile
    -- rows combine, and the absorbed profile leaves its segments.
    PERFORM persona.merge_rows(v_into.profile_id, v_from.profile_id);
    RETURN v_into.profile_id;
END
$$;


-- ---------------------------------------------------------------------
-- Backup and restore (issue 15): pg_dump restores into an exact, working
-- copy with psql / pg_restore and no flag (docs/operations.md).
-- ---------------------------------------------------------------------

-- The segment log's ids go into the dump, so the first entry after a
-- restore does not take an id the restored log holds.
SELECT pg_catalog.pg_extension_config_dump('persona.segment_log_log_id_seq', '');

-- A definition row that comes with its SQL, written by the owner, is a
-- restored one and is stored as is (persona.compile_definition, in C): the
-- API functions now insert the text alone and let the trigger compile it.
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
    -- The text alone: segments_compile writes what is derived from it (a
    -- row that comes with its SQL is a restored one, docs/operations.md).
    INSERT INTO persona.segments (name, predicate) VALUES (v_name, $2);

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

CREATE OR REPLACE FUNCTION @extschema@.persona_create_action(
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

-- Trait definitions restored with ids of their own rebuild persona.traits
-- and the views on it.
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
REVOKE ALL ON FUNCTION persona.trait_defs_restored() FROM PUBLIC;

-- ---------------------------------------------------------------------
-- Exits are never silent (issue 15): persona_forget and
-- persona_drop_segment log every exit in persona.segment_log and announce
-- them (docs/segments.md).
-- ---------------------------------------------------------------------

-- The forget step of persona.segment_members is persona.leave_segments:
-- the person exits its segments, logged and announced, after its earlier
-- log rows are erased.
UPDATE persona.person_tables
   SET forget_rule = 'erase', erase_function = 'persona.leave_segments(bigint)'
 WHERE relation = 'persona.segment_members'::regclass;

-- Every member of a dropped segment exits, logged; one 'drop' announces them.
CREATE OR REPLACE FUNCTION @extschema@.persona_drop_segment(name text)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_name  text := $1;
    v_exits bigint;
    v_last  bigint;
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
    -- Every member exits, logged, so a listener replaying the log drops
    -- them; one notification announces them all (one per member would fill
    -- the notification queue for a large segment): it carries the number of
    -- exits and the last one's log_id.
    WITH gone AS (
        DELETE FROM persona.segment_members AS m WHERE m.segment = v_name
        RETURNING m.segment, m.profile_id),
    logged AS (
        INSERT INTO persona.segment_log (segment, profile_id, op)
        SELECT g.segment, g.profile_id, 'exit' FROM gone AS g ORDER BY g.profile_id
        RETURNING log_id)
    SELECT count(*), max(l.log_id) INTO v_exits, v_last FROM logged AS l;
    PERFORM pg_notify('persona_segment',
                      jsonb_build_object('op', 'drop', 'exits', v_exits, 'log_id', v_last,
                                         'segment', v_name)::text);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_drop_segment(text) IS
    'drops a segment: every member exits (logged), announced once as op "drop"; its log stays';

-- ---------------------------------------------------------------------
-- No silent inconsistency (issue 15): UPDATE, DELETE and TRUNCATE of the
-- tables persona maintains are refused unless persona.maintenance is on,
-- which persona's own writing functions set (docs/operations.md).
-- ---------------------------------------------------------------------

-- The tables persona maintains refuse UPDATE, DELETE and TRUNCATE unless
-- persona.maintenance is on: persona's functions that write them set it
-- (SET clause), so a change by hand can never leave profiles, traits or
-- segments silently inconsistent (docs/operations.md). Statement-level, and
-- never fired by ingest (it inserts, and writes profiles without SQL).
CREATE FUNCTION persona.refuse_direct_change() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_refuse_direct_change';
COMMENT ON FUNCTION persona.refuse_direct_change() IS
    'refuses UPDATE, DELETE and TRUNCATE of a table persona maintains unless persona.maintenance is on (BEFORE ... FOR EACH STATEMENT)';

CREATE TRIGGER events_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.events
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
CREATE TRIGGER profiles_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.profiles
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
CREATE TRIGGER identities_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.identities
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
CREATE TRIGGER merges_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.merges
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
CREATE TRIGGER segment_members_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.segment_members
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
CREATE TRIGGER segment_log_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.segment_log
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
REVOKE ALL ON FUNCTION persona.refuse_direct_change() FROM PUBLIC;
ALTER FUNCTION persona.events_apply() SET persona.maintenance = on;
ALTER FUNCTION @extschema@.persona_identify(text, jsonb, text) SET persona.maintenance = on;
ALTER FUNCTION @extschema@.persona_alias(text, text) SET persona.maintenance = on;
ALTER FUNCTION @extschema@.persona_forget(text) SET persona.maintenance = on;
ALTER FUNCTION @extschema@.persona_define_trait(text, text, text, text, interval) SET persona.maintenance = on;
ALTER FUNCTION @extschema@.persona_drop_segment(text) SET persona.maintenance = on;
ALTER FUNCTION @extschema@.persona_tick() SET persona.maintenance = on;
