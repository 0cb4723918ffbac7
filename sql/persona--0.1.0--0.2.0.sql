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
           consent     = persona.merge_consent(p.consent, f.consent),
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
    SET persona.maintenance = on
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
    SET persona.maintenance = on
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

-- ---------------------------------------------------------------------
-- Delivery (issue 13): consent, the outbox persona.messages, claim, ack,
-- fail and message feedback (src/outbox.sql, src/outbox.c).
-- ---------------------------------------------------------------------

-- Consent lives on the profile (a merge keeps a withdrawal over a grant).
ALTER TABLE persona.profiles ADD COLUMN consent jsonb NOT NULL DEFAULT '{}';
COMMENT ON COLUMN persona.profiles.consent IS 'channel -> granted (persona_set_consent); a merge keeps a withdrawal over a grant';

-- Feedback on decisions and on messages teaches the same statistics.
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

-- Per-person bandit (issue 17): each action's Bayesian logistic model over
-- the person's features (persona.action_stats.model), learned from
-- feedback on decisions, which record the features they saw
-- (persona.decisions.features); src/bandit.c. Here, ahead of persona.learn,
-- which updates the model.
ALTER TABLE persona.action_stats ADD COLUMN model jsonb;
COMMENT ON COLUMN persona.action_stats.model IS
    'the per-person bandit: a Bayesian logistic model of success over the features of decisions, {"n": observations, "w": {feature: [mean, precision]}} (docs/decisions.md)';
ALTER TABLE persona.decisions ADD COLUMN features jsonb;
COMMENT ON COLUMN persona.decisions.features IS
    'the person''s features the decision saw ({feature: value}), which feedback on it teaches the action''s model';
COMMENT ON FUNCTION @extschema@.persona_decide(text, jsonb, text, int) IS
    'the next best actions for a person now: eligible by schedule, segment, condition, caps and cooldown; ranked by priority, then Thompson-sampled success (the person''s own, from the action''s per-person model, once it has enough feedback) times value; rendered and recorded';
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

REVOKE ALL ON FUNCTION persona.bandit_learn(jsonb, jsonb, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION @extschema@.persona_feedback(decision_id bigint, outcome text, value float8 DEFAULT NULL)
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

-- The profile document carries its consent.
CREATE OR REPLACE FUNCTION @extschema@.persona_profile(user_id text)
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
                   'consent',       p.consent,
                   'first_seen',    p.first_seen,
                   'last_seen',     p.last_seen,
                   'event_count',   p.event_count)
          FROM persona.identities AS i
          JOIN persona.profiles AS p ON p.profile_id = i.profile_id
         WHERE i.id = persona_profile.user_id);


-- ---------------------------------------------------------------------
-- Consent
-- ---------------------------------------------------------------------

CREATE FUNCTION persona.check_channel(channel text) RETURNS text
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_check_channel';
COMMENT ON FUNCTION persona.check_channel(text) IS
    'rejects an invalid channel name (22023); returns it';

-- The rule (src/outbox.c, PersonaConsented): withdrawn -> no; granted ->
-- yes; otherwise yes unless persona.opt_in_channels names the channel.
CREATE FUNCTION persona.consented(consent jsonb, channel text) RETURNS boolean
    LANGUAGE C STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_consented';
COMMENT ON FUNCTION persona.consented(jsonb, text) IS
    'whether a consent object (channel -> granted) lets the channel reach the person, persona.opt_in_channels considered';

-- Consent of a merged profile: every channel of either, a withdrawal winning.
CREATE FUNCTION persona.merge_consent(a jsonb, b jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN (SELECT coalesce(jsonb_object_agg(c.channel, c.granted), '{}'::jsonb)
              FROM (SELECT e.key AS channel, bool_and(e.value::boolean) AS granted
                      FROM (SELECT * FROM jsonb_each(a) UNION ALL SELECT * FROM jsonb_each(b)) AS e
                     GROUP BY e.key) AS c);
COMMENT ON FUNCTION persona.merge_consent(jsonb, jsonb) IS
    'the consent of two merged profiles: a withdrawal (false) wins over a grant';

-- Serializes the decisions and messages of one profile (caps hold under
-- concurrency); the same lock persona_decide takes.
CREATE FUNCTION persona.lock_profile_sends(profile_id bigint) RETURNS void
    LANGUAGE C VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'persona_lock_profile_sends';
COMMENT ON FUNCTION persona.lock_profile_sends(bigint) IS
    'takes the transaction-level advisory lock that serializes a profile''s decisions and messages';

-- ---------------------------------------------------------------------
-- The outbox
-- ---------------------------------------------------------------------

CREATE SEQUENCE persona.message_id_seq CACHE 32;
COMMENT ON SEQUENCE persona.message_id_seq IS 'allocates message ids';

-- One row per message. Keyed so that it can be distributed by profile_id:
-- the primary key carries it, and every lookup by message_id alone (ack,
-- fail) reads the primary key's leading column. ready_at is when a worker
-- may next claim the row (due_at, the retry time after a failure, or the
-- end of a lease), NULL once it is final: the partial index on it is the
-- queue, and holds only the messages that are still to go.
CREATE TABLE persona.messages (
    message_id  bigint      NOT NULL DEFAULT nextval('persona.message_id_seq'),
    profile_id  bigint      NOT NULL,
    channel     text        NOT NULL,
    action      text        NOT NULL,
    source      text        NOT NULL,
    status      text        NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'claimed', 'sent', 'failed', 'dead', 'cancelled')),
    attempts    int         NOT NULL DEFAULT 0,
    due_at      timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at     timestamptz,
    last_error  text,
    content     jsonb,
    action_id   int         NOT NULL,
    ready_at    timestamptz,
    event       jsonb,
    PRIMARY KEY (message_id, profile_id),
    CHECK ((ready_at IS NULL) = (status IN ('sent', 'dead', 'cancelled')))
);
ALTER SEQUENCE persona.message_id_seq OWNED BY persona.messages.message_id;
CREATE INDEX messages_ready_idx ON persona.messages (channel, ready_at)
    WHERE ready_at IS NOT NULL;
-- Caps and cooldowns (persona.recent_sends), merge, forget and the
-- cancellation of a withdrawn channel read a profile's messages.
CREATE INDEX messages_profile_idx ON persona.messages (profile_id, action_id, due_at);
COMMENT ON TABLE persona.messages IS
    'the outbox: one row per message, the durable record of what persona sends (claim, ack, fail)';
COMMENT ON COLUMN persona.messages.source IS 'what queued it: trigger:NAME, campaign:NAME';
COMMENT ON COLUMN persona.messages.status IS
    'queued, claimed (leased to a worker), sent (acked), failed (waiting to retry), dead (out of attempts), cancelled';
COMMENT ON COLUMN persona.messages.attempts IS 'claims so far';
COMMENT ON COLUMN persona.messages.due_at IS 'when it is meant to go; it counts toward caps and cooldowns at this time';
COMMENT ON COLUMN persona.messages.content IS 'the action''s content as rendered at the last claim';
COMMENT ON COLUMN persona.messages.ready_at IS
    'when a worker may claim it next (due, retry or lease end); NULL once sent, dead or cancelled';
COMMENT ON COLUMN persona.messages.event IS
    'the triggering event of a trigger with a condition, which is checked again against it at claim';

CREATE TABLE persona.message_feedback (
    profile_id  bigint      NOT NULL,
    message_id  bigint      NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('impression', 'click', 'conversion', 'dismiss', 'ignore')),
    value       float8,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, message_id, outcome)
);
COMMENT ON TABLE persona.message_feedback IS
    'outcomes of messages (persona_message_feedback), at most one per message and outcome';

-- Messages not queued or cancelled, by source and reason, for operators.
CREATE TABLE persona.suppressions (
    source   text        NOT NULL,
    reason   text        NOT NULL CHECK (reason IN ('consent', 'cap', 'cooldown', 'holdout', 'action_dropped',
                                                    'condition')),
    messages bigint      NOT NULL,
    last_at  timestamptz NOT NULL,
    PRIMARY KEY (source, reason)
);
COMMENT ON TABLE persona.suppressions IS
    'messages suppressed before queueing or cancelled before sending, counted by source and reason';

SELECT pg_catalog.pg_extension_config_dump('persona.messages', '');
SELECT pg_catalog.pg_extension_config_dump('persona.message_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.message_feedback', '');
SELECT pg_catalog.pg_extension_config_dump('persona.suppressions', '');

-- Counts suppressed messages: sources[i] for reasons[i].
CREATE FUNCTION persona.count_suppressions(sources text[], reasons text[]) RETURNS void
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
    BEGIN ATOMIC
        INSERT INTO persona.suppressions AS s (source, reason, messages, last_at)
        SELECT u.source, u.reason, count(*), clock_timestamp()
          FROM ROWS FROM (unnest(count_suppressions.sources), unnest(count_suppressions.reasons))
               AS u(source, reason)
         GROUP BY u.source, u.reason
        ON CONFLICT (source, reason) DO UPDATE
           SET messages = s.messages + excluded.messages, last_at = excluded.last_at;
    END;
COMMENT ON FUNCTION persona.count_suppressions(text[], text[]) IS
    'adds suppressed messages to persona.suppressions, by source and reason';

-- What counts toward an action's cap_per_day and cooldown for a profile:
-- its decisions at decided_at, and its messages at due_at unless cancelled
-- or dead (a message queued for later counts already). last_day counts the
-- 24 hours before now(); latest is the latest of them within span.
-- Not SECURITY DEFINER and without SET, so that persona_decide's query
-- inlines it; every name is qualified.
CREATE FUNCTION persona.recent_sends(profile_id bigint, span interval, actions int[])
    RETURNS TABLE (action_id int, last_day bigint, latest timestamptz)
    LANGUAGE sql STABLE
    AS $$
    SELECT x.action_id,
           pg_catalog.count(*) FILTER (WHERE x.at OPERATOR(pg_catalog.>)
                                       (pg_catalog.now() OPERATOR(pg_catalog.-) interval '24 hours')),
           pg_catalog.max(x.at)
      FROM (SELECT d.action_id, d.decided_at AS at
              FROM persona.decisions AS d
             WHERE d.profile_id OPERATOR(pg_catalog.=) $1
               AND d.decided_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)
               AND d.action_id OPERATOR(pg_catalog.=) ANY ($3)
            UNION ALL
            SELECT m.action_id, m.due_at
              FROM persona.messages AS m
             WHERE m.profile_id OPERATOR(pg_catalog.=) $1
               AND m.action_id OPERATOR(pg_catalog.=) ANY ($3)
               AND m.due_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)
               AND m.status OPERATOR(pg_catalog.<>) ALL ('{cancelled,dead}'::pg_catalog.text[])) AS x
     GROUP BY x.action_id
$$;
COMMENT ON FUNCTION persona.recent_sends(bigint, interval, int[]) IS
    'per action: decisions and live messages of a profile in the last 24 hours, and the latest within span (caps and cooldowns)';

-- The outbox's entry: queues one message of an action for a profile, due
-- at due_at (default: now), unless consent, the action's cap or its
-- cooldown suppresses it (counted in persona.suppressions; returns NULL).
-- event: a trigger's triggering event, kept for the check at claim.
-- Triggers and campaigns call it; it notifies persona_outbox with the
-- channel (PostgreSQL delivers one notification per channel and payload
-- per transaction, however many messages).
CREATE FUNCTION persona.enqueue_message(profile_id bigint, action text, source text,
                                        due_at timestamptz DEFAULT NULL, event jsonb DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_pid     bigint := $1;
    v_source  text := $3;
    v_due     timestamptz := coalesce($4, clock_timestamp());
    a         persona.actions;
    v_consent jsonb;
    v_reason  text;
    v_id      bigint;
    r         record;
BEGIN
    IF v_pid IS NULL OR $2 IS NULL OR v_source IS NULL THEN
        RAISE EXCEPTION 'profile_id, action and source must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_source = '' OR octet_length(v_source) > 300 THEN
        RAISE EXCEPTION 'a message source must be 1 to 300 bytes' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO a FROM persona.actions AS x WHERE x.name = $2;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action "%" does not exist', $2 USING ERRCODE = '42704';
    END IF;
    -- The decision lock serializes what counts toward caps and cooldowns;
    -- an action without either needs none (a bulk insert that fires a
    -- trigger for thousands of people would otherwise take a lock each, and
    -- could run out of lock table space).
    IF a.cap_per_day IS NOT NULL OR a.cooldown IS NOT NULL THEN
        PERFORM persona.lock_profile_sends(v_pid);
    END IF;
    SELECT p.consent INTO v_consent FROM persona.profiles AS p
     WHERE p.profile_id = v_pid FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'profile % does not exist', v_pid USING ERRCODE = '42704';
    END IF;
    IF NOT persona.consented(v_consent, a.channel) THEN
        v_reason := 'consent';
    ELSIF a.cap_per_day IS NOT NULL OR a.cooldown IS NOT NULL THEN
        SELECT * INTO r
          FROM persona.recent_sends(v_pid, greatest(interval '24 hours', a.cooldown),
                                    ARRAY[a.action_id]);
        IF FOUND AND r.last_day >= a.cap_per_day THEN
            v_reason := 'cap';
        ELSIF FOUND AND r.latest > now() - a.cooldown THEN
            v_reason := 'cooldown';
        END IF;
    END IF;
    -- Last: a holdout records the exposure of someone the message would
    -- otherwise have reached (experiments.c), in either arm.
    IF v_reason IS NULL AND persona.holdout_suppresses(v_pid, a.name) THEN
        v_reason := 'holdout';
    END IF;
    IF v_reason IS NOT NULL THEN
        PERFORM persona.count_suppressions(ARRAY[v_source], ARRAY[v_reason]);
        RETURN NULL;
    END IF;
    INSERT INTO persona.messages (profile_id, channel, action, source, due_at, action_id, ready_at, event)
    VALUES (v_pid, a.channel, a.name, v_source, v_due, a.action_id, v_due, $5)
    RETURNING message_id INTO v_id;
    PERFORM pg_notify('persona_outbox', a.channel);
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION persona.enqueue_message(bigint, text, text, timestamptz, jsonb) IS
    'queues a message of an action for a profile unless consent, cap, cooldown or a holdout suppresses it (counted); returns the message_id or NULL';

-- ---------------------------------------------------------------------
-- The API
-- ---------------------------------------------------------------------

CREATE FUNCTION @extschema@.persona_set_consent(user_id text, channel text, granted boolean)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS $$
#variable_conflict use_column
DECLARE
    v_id      text := persona.check_id($1, 'user_id');
    v_channel text;
    v_pid     bigint;
    v_sources text[];
BEGIN
    IF $2 IS NULL OR $3 IS NULL THEN
        RAISE EXCEPTION 'channel and granted must not be null' USING ERRCODE = '22004';
    END IF;
    v_channel := persona.check_channel($2);
    -- An unknown id gets a new anonymous profile (as persona_decide does), so
    -- that a choice made before the first event is kept. A merge that
    -- absorbs the profile meanwhile: resolve again.
    FOR attempt IN 1..20 LOOP
        v_pid := persona.ensure_profile(v_id, 'anonymous');
        UPDATE persona.profiles AS p
           SET consent = p.consent || jsonb_build_object(v_channel, $3),
               updated_at = now()
         WHERE p.profile_id = v_pid;
        EXIT WHEN FOUND;
        v_pid := NULL;
    END LOOP;
    IF v_pid IS NULL THEN
        RAISE EXCEPTION 'could not serialize access due to concurrent merges'
            USING ERRCODE = '40001', HINT = 'Retry the transaction.';
    END IF;
    IF NOT $3 THEN
        -- Unclaimed messages of the channel are cancelled; claimed ones
        -- finish (their worker holds them).
        WITH c AS (
            UPDATE persona.messages AS m
               SET status = 'cancelled', ready_at = NULL, last_error = 'consent withdrawn'
             WHERE m.profile_id = v_pid AND m.channel = v_channel
               AND m.status IN ('queued', 'failed')
            RETURNING m.source)
        SELECT array_agg(c.source) INTO v_sources FROM c;
        IF v_sources IS NOT NULL THEN
            PERFORM persona.count_suppressions(v_sources, array_fill('consent'::text, ARRAY[cardinality(v_sources)]));
        END IF;
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_set_consent(text, text, boolean) IS
    'records a person''s consent to a channel; withdrawing cancels the channel''s unclaimed messages to them';

CREATE FUNCTION @extschema@.persona_claim(channel text, n int DEFAULT 100,
                                         lease interval DEFAULT '30 seconds')
    RETURNS TABLE (message_id bigint, profile_id bigint, user_id text, channel text,
                   action text, content jsonb, attempt int, source text)
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_claim';
COMMENT ON FUNCTION @extschema@.persona_claim(text, int, interval) IS
    'leases up to n due messages of a channel to the caller, content rendered now; call it in its own transaction';

CREATE FUNCTION @extschema@.persona_ack(message_ids bigint[])
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_ids  bigint[];
    v_bad  bigint[];
    v_n    bigint;
BEGIN
    IF $1 IS NULL OR array_position($1, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'message_ids must not be or contain null' USING ERRCODE = '22004';
    END IF;
    SELECT array_agg(DISTINCT x.id ORDER BY x.id) INTO v_ids FROM unnest($1) AS x(id);
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    IF cardinality(v_ids) > 10000 THEN
        RAISE EXCEPTION 'at most 10000 messages can be acked at once' USING ERRCODE = '54000',
            DETAIL = format('%s were given.', cardinality(v_ids));
    END IF;
    -- In id order, so that two acks of overlapping batches cannot deadlock.
    PERFORM 1 FROM persona.messages AS m WHERE m.message_id = ANY (v_ids)
     ORDER BY m.message_id FOR UPDATE;
    SELECT array_agg(x.id) INTO v_bad FROM unnest(v_ids) AS x(id)
     WHERE NOT EXISTS (SELECT FROM persona.messages AS m WHERE m.message_id = x.id);
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'message % does not exist', array_to_string(v_bad, ', ') USING ERRCODE = '42704';
    END IF;
    SELECT array_agg(m.message_id ORDER BY m.message_id) INTO v_bad FROM persona.messages AS m
     WHERE m.message_id = ANY (v_ids) AND m.status = 'sent';
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'message % was already acked', array_to_string(v_bad, ', ')
            USING ERRCODE = '55000',
                  DETAIL = 'Another worker acked it first: its lease had expired and it was claimed again.',
                  HINT = 'Ack the other messages of the batch again without it.';
    END IF;
    SELECT array_agg(m.message_id ORDER BY m.message_id) INTO v_bad FROM persona.messages AS m
     WHERE m.message_id = ANY (v_ids) AND m.status <> 'claimed';
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'message % is not claimed', array_to_string(v_bad, ', ')
            USING ERRCODE = '55000',
                  HINT = 'Only a claimed message can be acked or failed: claim it with persona_claim.';
    END IF;
    UPDATE persona.messages AS m
       SET status = 'sent', sent_at = clock_timestamp(), ready_at = NULL
     WHERE m.message_id = ANY (v_ids);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_ack(bigint[]) IS
    'marks claimed messages sent (all or none); returns how many';

-- The wait before retry number n + 1 after n failed tries: 10 seconds
-- doubled per try, at most an hour, with "equal jitter": half of it fixed,
-- half uniformly random, so that a burst of failures spreads out.
CREATE FUNCTION persona.retry_delay(attempts int) RETURNS interval
    LANGUAGE sql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    RETURN make_interval(secs => least(3600, 10 * power(2, greatest(attempts, 1) - 1))
                                 * (0.5 + 0.5 * random()));
COMMENT ON FUNCTION persona.retry_delay(int) IS
    'the backoff before the next try: 10 s doubled per failed try, capped at 1 h, between half and all of it at random';

CREATE FUNCTION @extschema@.persona_fail(message_id bigint, error text, retry boolean DEFAULT true)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_id  bigint := $1;
    m     record;
BEGIN
    IF v_id IS NULL OR $2 IS NULL OR $3 IS NULL THEN
        RAISE EXCEPTION 'message_id, error and retry must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT x.status, x.attempts INTO m FROM persona.messages AS x
     WHERE x.message_id = v_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'message % does not exist', v_id USING ERRCODE = '42704';
    END IF;
    IF m.status <> 'claimed' THEN
        RAISE EXCEPTION 'message % is not claimed', v_id USING ERRCODE = '55000',
            DETAIL = format('Its status is %s.', m.status),
            HINT = 'Only a claimed message can be acked or failed: claim it with persona_claim.';
    END IF;
    IF NOT $3 OR m.attempts >= current_setting('persona.max_attempts')::int THEN
        UPDATE persona.messages AS x
           SET status = 'dead', ready_at = NULL, last_error = left($2, 1000)
         WHERE x.message_id = v_id;
    ELSE
        UPDATE persona.messages AS x
           SET status = 'failed', ready_at = clock_timestamp() + persona.retry_delay(m.attempts),
               last_error = left($2, 1000)
         WHERE x.message_id = v_id;
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_fail(bigint, text, boolean) IS
    'records a failed send: retried after a backoff, or dead after persona.max_attempts tries or when retry is false';

CREATE FUNCTION @extschema@.persona_message_feedback(message_id bigint, outcome text,
                                                    value float8 DEFAULT NULL)
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
    m         record;
BEGIN
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'message_id must not be null' USING ERRCODE = '22004';
    END IF;
    v_outcome := persona.check_outcome($2, v_value);
    SELECT x.profile_id, x.action_id, x.status INTO m FROM persona.messages AS x
     WHERE x.message_id = v_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'message % does not exist', v_id USING ERRCODE = '42704';
    END IF;
    IF m.status NOT IN ('claimed', 'sent') THEN
        RAISE EXCEPTION 'message % was not sent', v_id USING ERRCODE = '55000',
            DETAIL = format('Its status is %s.', m.status);
    END IF;
    -- The lock order of persona_feedback: the action's statistics, then the item.
    PERFORM 1 FROM persona.action_stats AS s WHERE s.action_id = m.action_id FOR UPDATE;
    PERFORM 1 FROM persona.messages AS x
     WHERE x.message_id = v_id AND x.profile_id = m.profile_id FOR KEY SHARE;
    INSERT INTO persona.message_feedback (profile_id, message_id, outcome, value)
    VALUES (m.profile_id, v_id, v_outcome, v_value)
    ON CONFLICT (profile_id, message_id, outcome) DO NOTHING;
    IF NOT FOUND THEN
        RETURN;                     -- already recorded: idempotent
    END IF;
    PERFORM persona.learn(m.action_id,
                          ARRAY(SELECT f.outcome FROM persona.message_feedback AS f
                                 WHERE f.profile_id = m.profile_id AND f.message_id = v_id
                                   AND f.outcome <> v_outcome),
                          v_outcome, v_value, NULL);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_message_feedback(bigint, text, float8) IS
    'records an outcome of a message (impression, click, conversion, dismiss, ignore); idempotent; teaches the action''s statistics as persona_feedback does';

-- Messages and their feedback are person data (src/registry.sql).
INSERT INTO persona.person_tables
       (relation, step, merge_rule, combine_function, forget_rule, erase_function)
VALUES ('persona.messages', 32, 'repoint', NULL, 'delete', NULL),
       ('persona.message_feedback', 34, 'repoint', NULL, 'delete', NULL);

REVOKE ALL ON FUNCTION persona.check_outcome(text, float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.learn(int, text[], text, float8, jsonb) FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.persona_set_consent(text, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_claim(text, int, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_ack(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_fail(bigint, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_message_feedback(bigint, text, float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_channel(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.consented(jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.merge_consent(jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.lock_profile_sends(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.count_suppressions(text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.recent_sends(bigint, interval, int[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.enqueue_message(bigint, text, text, timestamptz, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.retry_delay(int) FROM PUBLIC;

-- ---------------------------------------------------------------------
-- Experiments and holdouts (issue 14): persona.experiments,
-- persona.assignments (a table of person data), persona_create_experiment,
-- persona_end_experiment, persona_drop_experiment, persona_arm,
-- persona_experiment_report, persona_experiment_daily
-- (src/experiments.sql; enforcement in persona_decide is C).
-- ---------------------------------------------------------------------
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

INSERT INTO persona.person_tables
       (relation, step, merge_rule, combine_function, forget_rule, erase_function)
VALUES ('persona.assignments', 35, 'combine', 'persona.combine_assignments(bigint,bigint)',
        'delete', NULL);

REVOKE ALL ON FUNCTION @extschema@.persona_create_experiment(text, float8, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_end_experiment(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_experiment(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_arm(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_experiment_report(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_experiment_daily(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_experiment_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.combine_assignments(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.experiment_bucket(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.two_sided_p(float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.holdout_suppresses(bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.experiment_people(text, text, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.report_experiment(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_conversion_event(text) FROM PUBLIC;

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
    v_name  text := $1;
    v_c     record;
    v_batch bigint[];
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
    -- The text alone: segments_compile writes what is derived from it (a
    -- row that comes with its SQL is a restored one, docs/operations.md).
    INSERT INTO persona.segments (name, predicate) VALUES (v_name, $2);

    INSERT INTO persona.segment_stats (segment_id)
    SELECT s.segment_id FROM persona.segments AS s WHERE s.name = v_name;

    -- v_c.sql is the checked expression deparsed from its parse tree, never
    -- the text given; the name is only ever a parameter. All profiles in one
    -- statement; if the predicate fails on some profile's data, that is
    -- undone and the profiles are evaluated in C by batches, where only
    -- those it fails for are left out (counted in persona.segment_stats).
    BEGIN
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
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
        FOR v_batch IN
            SELECT array_agg(b.profile_id ORDER BY b.profile_id)
              FROM (SELECT p.profile_id, (row_number() OVER (ORDER BY p.profile_id) - 1) / 10000 AS n
                      FROM persona.profiles AS p) AS b
             GROUP BY b.n ORDER BY b.n
        LOOP
            PERFORM persona.evaluate_segment(v_name, v_batch);
        END LOOP;
    END;
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
    SET persona.maintenance = on
    AS $$
#variable_conflict use_column
DECLARE
    v_name  text := $1;
    v_id    int;
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
    DELETE FROM persona.segments AS s WHERE s.name = v_name RETURNING s.segment_id INTO v_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'segment "%" does not exist', v_name USING ERRCODE = '42704';
    END IF;
    DELETE FROM persona.segment_stats AS s WHERE s.segment_id = v_id;
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


-- ---------------------------------------------------------------------
-- Linked events (issue 13): persona.triggers, persona_create_trigger,
-- persona_drop_trigger (src/triggers.sql); trigger conditions read the
-- triggering event through persona.trigger_source (src/traits.sql).
-- ---------------------------------------------------------------------

-- What trigger conditions see: the same, and the triggering event.
CREATE VIEW persona.trigger_source AS
    SELECT d.*, NULL::jsonb AS event FROM persona.decision_source AS d;
COMMENT ON VIEW persona.trigger_source IS
    'the columns trigger conditions can name: those of persona.decision_source and event (event_type, properties, context)';

CREATE OR REPLACE FUNCTION persona.check_traits_view_free() RETURNS void
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

CREATE SEQUENCE persona.trigger_id_seq AS int;
COMMENT ON SEQUENCE persona.trigger_id_seq IS 'allocates trigger ids';

CREATE TABLE persona.triggers (
    trigger_id      int         PRIMARY KEY DEFAULT nextval('persona.trigger_id_seq'),
    name            text        NOT NULL UNIQUE,
    on_event        text        NOT NULL,
    event_type      text,
    segment         text,
    direction       text        CHECK (direction IN ('enter', 'exit')),
    action          text        NOT NULL,
    condition       text,
    condition_sql   text,
    condition_reads text[]      NOT NULL DEFAULT '{}',
    delay           interval    NOT NULL DEFAULT '0'
                    CHECK (delay >= interval '0' AND delay <= interval '10 years'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((event_type IS NULL) <> (segment IS NULL)),
    CHECK ((segment IS NULL) = (direction IS NULL))
);
ALTER SEQUENCE persona.trigger_id_seq OWNED BY persona.triggers.trigger_id;
COMMENT ON TABLE persona.triggers IS 'linked events: what turns an event into a message (persona_create_trigger)';
COMMENT ON COLUMN persona.triggers.on_event IS 'as given: an event type, or segment:NAME:enter / segment:NAME:exit';
COMMENT ON COLUMN persona.triggers.event_type IS 'the event type that fires it; NULL for a segment trigger';
COMMENT ON COLUMN persona.triggers.condition_sql IS 'the checked condition, deparsed: what is evaluated';
COMMENT ON COLUMN persona.triggers.condition_reads IS 'the columns of persona.trigger_source the condition reads';
COMMENT ON COLUMN persona.triggers.delay IS 'the message is due this long after the event';

-- Conditions that failed on a firing, per trigger (the firing is skipped).
CREATE TABLE persona.trigger_stats (
    trigger_id    int         PRIMARY KEY,
    errors        bigint      NOT NULL DEFAULT 0,
    last_error    text,
    last_error_at timestamptz
);
COMMENT ON TABLE persona.trigger_stats IS
    'per trigger: firings skipped because the condition failed (class 22 or 54), and the last error';

SELECT pg_catalog.pg_extension_config_dump('persona.triggers', '');
SELECT pg_catalog.pg_extension_config_dump('persona.trigger_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.trigger_stats', '');

-- However a row is written, its SQL is the checked compilation of its text.
CREATE TRIGGER triggers_compile
    BEFORE INSERT OR UPDATE ON persona.triggers
    FOR EACH ROW EXECUTE FUNCTION persona.compile_definition(
        'persona.trigger_source', 'condition', 'condition_sql', 'condition_reads', '');

-- Ingest caches the definitions; changes reach every backend.
CREATE TRIGGER triggers_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON persona.triggers
    FOR EACH STATEMENT EXECUTE FUNCTION persona.announce_change();

-- One firing that held its condition: the action's message, unless the
-- action was dropped since (counted as action_dropped) or consent, caps,
-- cooldown or a holdout suppress it (persona.enqueue_message counts those).
-- event (NULL when the trigger has no condition) is kept with the message
-- for the check at claim. Called by src/triggers.c.
CREATE FUNCTION persona.fire_trigger(profile_id bigint, action text, source text,
                                     due_at timestamptz, event jsonb)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM persona.actions AS a WHERE a.name = $2) THEN
        PERFORM persona.count_suppressions(ARRAY[$3], ARRAY['action_dropped']);
        RETURN NULL;
    END IF;
    RETURN persona.enqueue_message($1, $2, $3, $4, $5);
END
$$;
COMMENT ON FUNCTION persona.fire_trigger(bigint, text, text, timestamptz, jsonb) IS
    'queues the message of a trigger''s firing (persona.enqueue_message), or counts it as action_dropped';

-- Counts a firing skipped because its condition failed.
CREATE FUNCTION persona.count_trigger_error(trigger_id int, error text)
    RETURNS void
    LANGUAGE sql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    BEGIN ATOMIC
        INSERT INTO persona.trigger_stats AS s (trigger_id, errors, last_error, last_error_at)
        VALUES (count_trigger_error.trigger_id, 1, count_trigger_error.error, clock_timestamp())
        ON CONFLICT (trigger_id) DO UPDATE
           SET errors = s.errors + 1, last_error = excluded.last_error,
               last_error_at = excluded.last_error_at;
    END;
COMMENT ON FUNCTION persona.count_trigger_error(int, text) IS
    'counts a firing skipped because the trigger''s condition failed';

CREATE FUNCTION @extschema@.persona_create_trigger(name text, on_event text, action text,
                                                  condition text DEFAULT NULL,
                                                  delay interval DEFAULT '0')
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_name  text;
    v_type  text;
    v_seg   text;
    v_dir   text;
    v_parts text[];
BEGIN
    IF $2 IS NULL OR $3 IS NULL OR $5 IS NULL THEN
        RAISE EXCEPTION 'on_event, action and delay must not be null' USING ERRCODE = '22004';
    END IF;
    v_name := persona.check_name($1, 'name');
    IF $2 LIKE 'segment:%' THEN
        v_parts := regexp_match($2, '^segment:(.+):(enter|exit)$');
        IF v_parts IS NULL THEN
            RAISE EXCEPTION 'invalid on_event "%"', $2 USING ERRCODE = '22023',
                HINT = 'Use an event type, or segment:NAME:enter or segment:NAME:exit.';
        END IF;
        v_seg := v_parts[1];
        v_dir := v_parts[2];
        IF NOT EXISTS (SELECT FROM persona.segments AS s WHERE s.name = v_seg) THEN
            RAISE EXCEPTION 'segment "%" does not exist', v_seg USING ERRCODE = '42704';
        END IF;
    ELSE
        -- An event type never ingested yet is fine: it fires from its first event.
        v_type := persona.check_event_type($2, 'on_event');
    END IF;
    IF NOT EXISTS (SELECT FROM persona.actions AS a WHERE a.name = $3) THEN
        RAISE EXCEPTION 'action "%" does not exist', $3 USING ERRCODE = '42704';
    END IF;
    IF $5 < interval '0' OR $5 > interval '10 years' THEN
        RAISE EXCEPTION 'delay must be between 0 and 10 years' USING ERRCODE = '22023',
            DETAIL = format('The delay given was "%s".', $5);
    END IF;
    LOCK TABLE persona.triggers IN EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM persona.triggers AS t WHERE t.name = v_name) THEN
        RAISE EXCEPTION 'trigger "%" already exists', v_name USING ERRCODE = '42710';
    END IF;
    -- The compile trigger checks the condition (0A000 and friends).
    INSERT INTO persona.triggers (name, on_event, event_type, segment, direction, action,
                                  condition, delay)
    VALUES (v_name, $2, v_type, v_seg, v_dir, $3, $4, $5);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_create_trigger(text, text, text, text, interval) IS
    'creates a linked event: each event of type on_event (or entry into or exit from a segment) whose condition holds queues the action''s message, due delay after it';

CREATE FUNCTION @extschema@.persona_drop_trigger(name text)
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
    LOCK TABLE persona.triggers IN EXCLUSIVE MODE;
    DELETE FROM persona.triggers AS t WHERE t.name = $1 RETURNING t.trigger_id INTO v_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'trigger "%" does not exist', $1 USING ERRCODE = '42704';
    END IF;
    DELETE FROM persona.trigger_stats AS s WHERE s.trigger_id = v_id;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_drop_trigger(text) IS
    'drops a linked event; the messages it queued stay';

-- Privileges (src/grants.sql).
REVOKE ALL ON FUNCTION @extschema@.persona_create_trigger(text, text, text, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_trigger(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.fire_trigger(bigint, text, text, timestamptz, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.count_trigger_error(int, text) FROM PUBLIC;

-- ---------------------------------------------------------------------
-- A definition never blocks ingest (issue 15): a segment predicate that
-- fails on a profile's data leaves that profile out of that segment for the
-- change, counted in persona.segment_stats (docs/segments.md). The
-- functions persona_create_segment and persona_drop_segment are replaced
-- above, where the restore change replaces them.
-- ---------------------------------------------------------------------

CREATE TABLE persona.segment_stats (
    segment_id    int         PRIMARY KEY,
    errors        bigint      NOT NULL DEFAULT 0,
    last_error    text,
    last_error_at timestamptz
);
COMMENT ON TABLE persona.segment_stats IS 'per segment: the evaluations in which its predicate failed';
COMMENT ON COLUMN persona.segment_stats.errors IS
    'profiles for which the predicate failed with a data exception (class 22) or a program limit (class 54): they neither entered nor left the segment';
COMMENT ON COLUMN persona.segment_stats.last_error IS 'SQLSTATE and message of the last predicate error';
SELECT pg_catalog.pg_extension_config_dump('persona.segment_stats', '');
INSERT INTO persona.segment_stats (segment_id)
SELECT s.segment_id FROM persona.segments AS s;

CREATE FUNCTION persona.evaluate_segment(segment text, profile_ids bigint[]) RETURNS bigint
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'persona_evaluate_segment';
COMMENT ON FUNCTION persona.evaluate_segment(text, bigint[]) IS
    'evaluates one segment for these profiles, each alone when the predicate fails on one (not a member, counted); returns entries plus exits';
REVOKE ALL ON FUNCTION persona.evaluate_segment(text, bigint[]) FROM PUBLIC;
