\echo Use "ALTER EXTENSION persona UPDATE TO '0.2.0'" to load this file. \quit

-- persona 0.1.0 -> 0.2.0. Every change to an SQL object in src/*.sql since
-- 0.1.0 appends its upgrade statements here, under a comment naming the
-- change (docs/development.md has the rules). `make test` checks that 0.1.0
-- upgraded with this script equals a fresh install of 0.2.0, schema and
-- data (test/upgrade/run.sh).

-- ---------------------------------------------------------------------
-- Events age out: persona.events range-partitioned by occurred_at (issue 15)
--
-- First in this script, so that every later statement naming
-- persona.events (triggers, functions) meets the partitioned table. The
-- 0.1.0 table, rows and all, becomes its default partition
-- persona.events_default: no row is moved or ingested again, and every
-- profile stays as it was.
-- ---------------------------------------------------------------------

DROP TRIGGER events_resolve ON persona.events;
DROP TRIGGER events_confirm ON persona.events;
DROP TRIGGER events_apply ON persona.events;
ALTER TABLE persona.events RENAME TO events_default;
ALTER INDEX persona.events_pkey RENAME TO events_default_pkey;
COMMENT ON COLUMN persona.events_default.profile_id IS NULL;
COMMENT ON COLUMN persona.events_default.context IS NULL;
COMMENT ON TABLE persona.events_default IS 'the events that fall in no time partition of persona.events';

CREATE TABLE persona.events (
    event_id     bigint      NOT NULL DEFAULT persona.next_event_id(),
    profile_id   bigint      NOT NULL DEFAULT 0,
    user_id      text,
    anonymous_id text,
    event_type   text        NOT NULL,
    properties   jsonb       NOT NULL DEFAULT '{}',
    context      jsonb       NOT NULL DEFAULT '{}',
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    received_at  timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (occurred_at);
ALTER SEQUENCE persona.event_id_seq OWNED BY persona.events.event_id;
COMMENT ON TABLE persona.events IS 'every tracked event; insert here, through persona_track, INSERT or COPY';
COMMENT ON COLUMN persona.events.profile_id IS 'the profile the event belongs to, resolved from user_id or anonymous_id on insert';
COMMENT ON COLUMN persona.events.context IS 'channel, device, session_id, geo, currency';
ALTER TABLE persona.events ATTACH PARTITION persona.events_default DEFAULT;

-- What roles were granted on the 0.1.0 table they now need on the
-- partitioned one (statements name it); those grants are the users', not
-- privileges the extension starts with, so they are not recorded as such.
-- INSERT stays on the partitioned table alone: a new event inserted into a
-- partition directly is refused.
DO $$
DECLARE
    v_acl record;
BEGIN
    FOR v_acl IN
        SELECT a.privilege_type, a.grantee, a.is_grantable
          FROM pg_catalog.pg_class AS c, pg_catalog.aclexplode(c.relacl) AS a
         WHERE c.oid = 'persona.events_default'::regclass AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON persona.events TO %s%s', v_acl.privilege_type,
                       CASE WHEN v_acl.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_catalog.pg_get_userbyid(v_acl.grantee)) END,
                       CASE WHEN v_acl.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    FOR v_acl IN
        SELECT a.grantee
          FROM pg_catalog.pg_class AS c, pg_catalog.aclexplode(c.relacl) AS a
         WHERE c.oid = 'persona.events_default'::regclass AND a.grantee <> c.relowner
           AND a.privilege_type = 'INSERT'
    LOOP
        EXECUTE format('REVOKE INSERT ON persona.events_default FROM %s',
                       CASE WHEN v_acl.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_catalog.pg_get_userbyid(v_acl.grantee)) END);
    END LOOP;
    DELETE FROM pg_catalog.pg_init_privs AS ip
     WHERE ip.classoid = 'pg_catalog.pg_class'::regclass
       AND ip.objoid IN ('persona.events'::regclass, 'persona.events_default'::regclass);
END
$$;

CREATE FUNCTION persona.events_begin() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_events_begin';
COMMENT ON FUNCTION persona.events_begin() IS
    'marks an insert into persona.events in progress, so that a new event inserted into a partition directly is refused (BEFORE INSERT FOR EACH STATEMENT on persona.events)';
REVOKE ALL ON FUNCTION persona.events_begin() FROM PUBLIC;

CREATE TRIGGER events_resolve
    BEFORE INSERT ON persona.events
    FOR EACH ROW EXECUTE FUNCTION persona.events_resolve();
CREATE TRIGGER events_confirm
    AFTER INSERT ON persona.events
    FOR EACH ROW WHEN (NOT persona.event_folded(NEW.event_id))
    EXECUTE FUNCTION persona.events_confirm();
CREATE TRIGGER events_begin
    BEFORE INSERT ON persona.events
    FOR EACH STATEMENT EXECUTE FUNCTION persona.events_begin();
CREATE TRIGGER events_apply
    AFTER INSERT ON persona.events
    FOR EACH STATEMENT EXECUTE FUNCTION persona.events_apply();

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
           -- With clock segments, first and last seen moved: the next tick
           -- computes when it flips in them (src/clock.c).
           next_change_at = LEAST(p.next_change_at, f.next_change_at,
                                  CASE WHEN EXISTS (SELECT FROM persona.segments AS s WHERE s.clock)
                                       THEN now() END),
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

-- The profile document carries its consent: persona_profile is replaced
-- below, where the models' scores join it (issue 17).


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

-- CACHE 1: the announcer's horizon (src/announcer.c) needs the last value
-- to bound every id handed out.
CREATE SEQUENCE persona.message_id_seq;
COMMENT ON SEQUENCE persona.message_id_seq IS 'allocates message ids';

-- One row per message. Keyed so that it can be distributed by profile_id:
-- the primary key carries it, and every lookup by message_id alone (ack,
-- fail) reads the primary key's leading column. ready_at is when the row
-- became claimable (due_at, or the retry time after a failure), NULL once
-- it is final: the partial index on it is the queue, and holds only the
-- messages that are still to go. A claim leaves ready_at as it is and
-- writes the lease's end in lease_until, which no index holds, so that
-- the claim's update is HOT (no index entry; the fillfactor of 40 leaves
-- the page room for the claimed versions of all its rows, each bigger by
-- its rendered content: 50 left 16% of them without); a claimer skips a
-- row whose lease holds. Only the final update (ack, dead, cancelled) leaves the queue's
-- index (docs/delivery.md, "Costs").
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
    lease_until timestamptz,
    PRIMARY KEY (message_id, profile_id),
    CHECK ((ready_at IS NULL) = (status IN ('sent', 'dead', 'cancelled'))),
    CONSTRAINT messages_lease_check CHECK ((lease_until IS NULL) = (status <> 'claimed'))
) WITH (fillfactor = 40);
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
    'when it became claimable (due, or the retry after a failure); NULL once sent, dead or cancelled';
COMMENT ON COLUMN persona.messages.lease_until IS
    'while claimed: the end of the lease, after which a worker may claim it again; NULL otherwise';
COMMENT ON COLUMN persona.messages.event IS
    'the triggering event of a trigger''s message: its condition is checked again against it at claim, and its content renders with it (event, and its context as context)';

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
               AND m.status OPERATOR(pg_catalog.<>) ALL ('{cancelled,dead}'::pg_catalog.text[])
            UNION ALL
            SELECT c.action_id, c.due_at
              FROM persona.campaigns AS c
             WHERE c.action_id OPERATOR(pg_catalog.=) ANY ($3)
               AND c.due_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)
               AND persona.campaign_reached(c.campaign_id, $1)) AS x
     GROUP BY x.action_id
$$;
COMMENT ON FUNCTION persona.recent_sends(bigint, interval, int[]) IS
    'per action: decisions and live messages of a profile in the last 24 hours, and the latest within span (caps and cooldowns)';

-- The outbox's entry: queues one message of an action for a profile, due
-- at due_at (default: now), unless consent, the action's cap or its
-- cooldown suppresses it (counted in persona.suppressions; returns NULL).
-- event: a trigger's triggering event, kept for the check at claim.
-- Campaigns call it; triggers queue their firings as one set through the
-- same C code (src/enqueue.c, PersonaEnqueue), which notifies
-- persona_outbox with the channel once per channel.
CREATE FUNCTION persona.enqueue_message(profile_id bigint, action text, source text,
                                        due_at timestamptz DEFAULT NULL, event jsonb DEFAULT NULL)
    RETURNS bigint
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_enqueue_message';
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

-- In C (src/outbox.c): each claimed message of the batch updated by its
-- primary key in id order, campaign messages in their chunks
-- (src/campaigns.c); all or none.
CREATE FUNCTION @extschema@.persona_ack(message_ids bigint[])
    RETURNS bigint
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_ack';
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
    PERFORM persona.campaign_materialize(v_id, false);   -- a campaign message gets its row
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
           SET status = 'dead', ready_at = NULL, lease_until = NULL, last_error = left($2, 1000)
         WHERE x.message_id = v_id;
    ELSE
        UPDATE persona.messages AS x
           SET status = 'failed', ready_at = clock_timestamp() + persona.retry_delay(m.attempts),
               lease_until = NULL, last_error = left($2, 1000)
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
    PERFORM persona.campaign_materialize(v_id, true);    -- a campaign message gets its row
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
    SET persona.maintenance = on
    AS $$
#variable_conflict use_column
DECLARE
    v_name  text := $1;
    v_c     record;
    v_batch bigint[];
    v_flip  text;
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
            SELECT count(*) FROM logged AS l$q$, v_c.sql)
        USING v_name;
        PERFORM persona.announce();
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

    -- A clock segment: when each profile's membership may next change by
    -- the clock, for persona_tick (src/clock.c); not derived, the tick
    -- reads every profile for it.
    IF v_c.clock THEN
        v_flip := persona.clock_flip(v_c.sql);
    END IF;
    IF v_flip IS NOT NULL THEN
        BEGIN
            EXECUTE format($q$
                UPDATE persona.profiles AS p SET next_change_at = LEAST(p.next_change_at, f.at)
                  FROM (SELECT s.profile_id, (%s) AS at FROM persona.segment_source AS s) AS f
                 WHERE p.profile_id = f.profile_id AND f.at IS NOT NULL$q$, v_flip);
        EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
            -- Out of range for some profile: every profile is due.
            UPDATE persona.profiles AS p SET next_change_at = now()
             WHERE p.next_change_at IS NULL OR p.next_change_at > now();
        END;
    END IF;
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
    -- them; the announcer (src/announcer.c) announces them with the rest.
    WITH gone AS (
        DELETE FROM persona.segment_members AS m WHERE m.segment = v_name
        RETURNING m.segment, m.profile_id),
    logged AS (
        INSERT INTO persona.segment_log (segment, profile_id, op)
        SELECT g.segment, g.profile_id, 'exit' FROM gone AS g ORDER BY g.profile_id
        RETURNING log_id)
    SELECT count(*), max(l.log_id) INTO v_exits, v_last FROM logged AS l;
    PERFORM persona.announce();
END
$$;
COMMENT ON FUNCTION @extschema@.persona_drop_segment(text) IS
    'drops a segment: every member exits (logged and announced); its log stays';

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

-- ---------------------------------------------------------------------
-- Linked content (issue 13): persona.content_links, persona_link_content
-- and persona_render (src/render.sql, src/render.c); a trigger's message
-- keeps its triggering event whatever the trigger, to render with it at
-- claim (the comment on persona.messages.event is changed above).
-- ---------------------------------------------------------------------
CREATE TABLE persona.content_links (
    name       text        COLLATE "C" PRIMARY KEY
               CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$'),
    relation   regclass    NOT NULL,
    key_column text        NOT NULL,
    linked_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE persona.content_links IS
    'linked content: name -> the table and unique key column that {{name[key].column}} placeholders read (persona_link_content)';
COMMENT ON COLUMN persona.content_links.relation IS
    'the source table; it follows a rename, and a dropped one is an error at render';
COMMENT ON COLUMN persona.content_links.key_column IS
    'the unique column the key is matched against, by name';
SELECT pg_catalog.pg_extension_config_dump('persona.content_links', '');
-- Rendering caches the links per backend; changes reach every backend.
CREATE TRIGGER content_links_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON persona.content_links
    FOR EACH STATEMENT EXECUTE FUNCTION persona.announce_change();

CREATE FUNCTION @extschema@.persona_link_content(name text, relation regclass, key_column text)
    RETURNS void
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_link_content';
COMMENT ON FUNCTION @extschema@.persona_link_content(text, regclass, text) IS
    'makes a table with a unique key column a source of linked content, read as {{name[key].column}} in content templates; linking a name again points it at the new source';

CREATE FUNCTION @extschema@.persona_render(message_id bigint)
    RETURNS jsonb
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_render';
COMMENT ON FUNCTION @extschema@.persona_render(bigint) IS
    'a message''s content rendered now (open time): its action''s content with the person''s current traits, its triggering event and linked content read now as the caller';

REVOKE ALL ON FUNCTION @extschema@.persona_link_content(text, regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_render(bigint) FROM PUBLIC;
-- Campaigns (issue 16): persona_send_campaign, persona_cancel_campaign,
-- persona_campaign_report and persona.channel_cap_per_day
-- (src/campaigns.sql, src/campaigns.c, docs/campaigns.md). persona_ack,
-- persona_fail, persona_message_feedback and persona.enqueue_message are
-- edited in place above; persona.recent_sends is replaced here, as it
-- reads persona.campaigns.
-- ---------------------------------------------------------------------

-- Campaign message ids live above 2^48 (281,474,976,710,656): the sequence
-- persona.message_id_seq, which numbers every other message, would need
-- 77,000 years at 10 million messages a day to reach it. Recipient i of a
-- campaign has message id id_base + i; blocks are handed out in order by
-- persona_send_campaign under a table lock.
CREATE SEQUENCE persona.campaign_id_seq;
COMMENT ON SEQUENCE persona.campaign_id_seq IS 'numbers campaigns';

CREATE TABLE persona.campaigns (
    campaign_id     int         NOT NULL PRIMARY KEY DEFAULT nextval('persona.campaign_id_seq'),
    name            text        NOT NULL UNIQUE,
    action_id       int         NOT NULL,
    action          text        NOT NULL,
    channel         text        NOT NULL,
    segment         text,
    source          text        NOT NULL,
    id_base         bigint      NOT NULL UNIQUE CHECK (id_base >= 281474976710656),
    recipients      bigint      NOT NULL DEFAULT 0 CHECK (recipients >= 0),
    due_at          timestamptz NOT NULL,
    rate_per_minute int         CHECK (rate_per_minute > 0),
    status          text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'cancelled')),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    cancelled_at    timestamptz,
    -- The throttle: the claims of the last minute (when, how many).
    claimed_at      timestamptz[] NOT NULL DEFAULT '{}',
    claimed_n       int[]       NOT NULL DEFAULT '{}',
    throttled_until timestamptz
);
ALTER SEQUENCE persona.campaign_id_seq OWNED BY persona.campaigns.campaign_id;
COMMENT ON TABLE persona.campaigns IS
    'campaigns (persona_send_campaign): one row each; the recipients are in persona.campaign_chunks';
COMMENT ON COLUMN persona.campaigns.segment IS 'the segment sent to; NULL: every profile';
COMMENT ON COLUMN persona.campaigns.source IS 'campaign:NAME, the source of its messages';
COMMENT ON COLUMN persona.campaigns.id_base IS 'recipient i (from 0) has message id id_base + i';
COMMENT ON COLUMN persona.campaigns.recipients IS 'members of the segment at the call';
COMMENT ON COLUMN persona.campaigns.claimed_at IS 'the throttle: when each claim of the last minute was made';
COMMENT ON COLUMN persona.campaigns.claimed_n IS 'the throttle: how many messages each claim of the last minute took';
COMMENT ON COLUMN persona.campaigns.throttled_until IS 'no claim takes a message of the campaign before this';

-- The recipient snapshot. A chunk is a run of recipients in profile_id
-- order (recipient first_index onwards), claimed whole by one claim (a
-- claim that wants fewer splits it). Campaign data, not rows about one
-- person: docs/campaigns.md says why it is keyed by campaign.
CREATE TABLE persona.campaign_chunks (
    campaign_id      int         NOT NULL,
    first_index      bigint      NOT NULL,
    first_profile_id bigint      NOT NULL,
    channel          text        NOT NULL,
    profile_ids      bigint[]    NOT NULL,
    size             int         NOT NULL,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'claimed', 'done', 'cancelled')),
    states           bytea,
    attempts         int         NOT NULL DEFAULT 0,
    due_at           timestamptz NOT NULL,
    ready_at         timestamptz,
    PRIMARY KEY (campaign_id, first_index),
    CHECK ((ready_at IS NULL) = (status IN ('done', 'cancelled'))),
    CHECK (size > 0),
    CHECK (states IS NULL OR length(states) = size)
);
-- Sorted ids change little from one to the next, but pglz's gain does not
-- pay for its time at send: stored out of line, uncompressed.
ALTER TABLE persona.campaign_chunks ALTER COLUMN profile_ids SET STORAGE EXTERNAL;
CREATE INDEX campaign_chunks_ready_idx ON persona.campaign_chunks (channel, ready_at)
    WHERE ready_at IS NOT NULL;
-- A profile's message in a campaign (caps, best channel): the chunks of one
-- due time partition the recipients in profile_id order, so it is in the
-- chunk of each due time that starts at or before it.
CREATE INDEX campaign_chunks_profile_idx ON persona.campaign_chunks (campaign_id, due_at, first_profile_id);
COMMENT ON TABLE persona.campaign_chunks IS
    'the recipients of each campaign, in chunks claimed by persona_claim; one state byte per recipient once claimed';
COMMENT ON COLUMN persona.campaign_chunks.first_index IS 'the recipient index of profile_ids[1] (message id: id_base + index)';
COMMENT ON COLUMN persona.campaign_chunks.profile_ids IS 'the recipients, ascending';
COMMENT ON COLUMN persona.campaign_chunks.size IS 'cardinality(profile_ids), read without the array';
COMMENT ON COLUMN persona.campaign_chunks.states IS
    'NULL: all queued; else one byte per recipient: q queued, c claimed, s sent, f in persona.messages, x cancelled, d dead, C/K/H suppressed (consent, cap, holdout)';
COMMENT ON COLUMN persona.campaign_chunks.attempts IS 'claims of the chunk so far';
COMMENT ON COLUMN persona.campaign_chunks.due_at IS 'when its messages are meant to go';
COMMENT ON COLUMN persona.campaign_chunks.ready_at IS
    'when a worker may claim it next (due or lease end); NULL once done or cancelled';

SELECT pg_catalog.pg_extension_config_dump('persona.campaigns', '');
SELECT pg_catalog.pg_extension_config_dump('persona.campaign_chunks', '');
SELECT pg_catalog.pg_extension_config_dump('persona.campaign_id_seq', '');

-- Writes the recipient snapshot of a campaign: the members of the segment
-- (every profile when NULL) as of the statement, in chunks. Returns how many.
CREATE FUNCTION persona.campaign_snapshot(campaign_id int, segment text, channel text, due_at timestamptz,
                                          best_time boolean DEFAULT false)
    RETURNS bigint
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'persona_campaign_snapshot';
COMMENT ON FUNCTION persona.campaign_snapshot(int, text, text, timestamptz, boolean) IS
    'writes the chunks of a campaign from the segment''s members, each due at due_at or (best_time) at its best time in the 24 hours after it; returns the number of recipients';

-- Whether a profile was reached by a campaign: a recipient claimed or sent
-- (a recipient with a row in persona.messages counts there).
CREATE FUNCTION persona.campaign_reached(campaign_id int, profile_id bigint) RETURNS boolean
    LANGUAGE C STABLE STRICT
    AS 'MODULE_PATHNAME', 'persona_campaign_reached';
COMMENT ON FUNCTION persona.campaign_reached(int, bigint) IS
    'whether the campaign''s message to the profile was claimed or sent (it then counts toward caps)';

-- Gives a claimed (for feedback: or sent) campaign message its row in
-- persona.messages, so that persona_fail and persona_message_feedback
-- treat it as any message. Nothing for other ids.
CREATE FUNCTION persona.campaign_materialize(message_id bigint, for_feedback boolean) RETURNS void
    LANGUAGE C VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'persona_campaign_materialize';
COMMENT ON FUNCTION persona.campaign_materialize(bigint, boolean) IS
    'writes the persona.messages row of a campaign message on its first failure or feedback';

-- Messages of a channel that count toward persona.channel_cap_per_day for a
-- profile: its messages due in the 24 hours before now (or later), unless
-- cancelled or dead, and the claimed or sent messages of campaigns of the
-- channel due then.
-- (PL/pgSQL: this file comes before src/outbox.sql, whose persona.recent_sends
-- reads persona.campaigns.)
CREATE FUNCTION persona.channel_sends(profile_id bigint, channel text) RETURNS bigint
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RETURN (SELECT count(*)
              FROM persona.messages AS m
             WHERE m.profile_id = $1 AND m.channel = $2
               AND m.due_at > now() - interval '24 hours'
               AND m.status <> ALL ('{cancelled,dead}'::text[]))
         + (SELECT count(*)
              FROM persona.campaigns AS c
             WHERE c.channel = $2 AND c.due_at > now() - interval '24 hours'
               AND persona.campaign_reached(c.campaign_id, $1));
END
$$;
COMMENT ON FUNCTION persona.channel_sends(bigint, text) IS
    'messages of a channel to a profile in the last 24 hours (or due later), campaigns included: what persona.channel_cap_per_day counts';

-- The setting persona.channel_cap_per_day (0: no cap), read in C so that it
-- is defined (the library loaded) in any session.
CREATE FUNCTION persona.channel_cap() RETURNS int
    LANGUAGE C STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_channel_cap';
COMMENT ON FUNCTION persona.channel_cap() IS
    'the setting persona.channel_cap_per_day: messages per person, channel and rolling day; 0: no cap';

-- Whether persona.channel_cap_per_day forbids one more message of the
-- channel to the profile. The caller holds the profile's send lock.
CREATE FUNCTION persona.channel_cap_reached(profile_id bigint, channel text) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    RETURN persona.channel_cap() > 0
       AND persona.channel_sends(profile_id, channel) >= persona.channel_cap();
COMMENT ON FUNCTION persona.channel_cap_reached(bigint, text) IS
    'whether persona.channel_cap_per_day (0: none) is reached for the profile on the channel';

-- ---------------------------------------------------------------------
-- The API
-- ---------------------------------------------------------------------

CREATE FUNCTION @extschema@.persona_send_campaign(name text, action text, segment text DEFAULT NULL,
                                                 send_at text DEFAULT 'now',
                                                 rate_per_minute int DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_name  text := $1;
    v_rate  int  := $5;
    v_due   timestamptz;
    a       persona.actions;
    v_id    int;
    v_base  bigint;
    v_n     bigint;
    v_best  boolean := false;
BEGIN
    IF v_name IS NULL OR $2 IS NULL OR $4 IS NULL THEN
        RAISE EXCEPTION 'name, action and send_at must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_name = '' OR octet_length(v_name) > 200 THEN
        RAISE EXCEPTION 'a campaign name must be 1 to 200 bytes' USING ERRCODE = '22023';
    END IF;
    IF v_rate IS NOT NULL AND v_rate <= 0 THEN
        RAISE EXCEPTION 'rate_per_minute must be positive' USING ERRCODE = '22023',
            DETAIL = format('The rate_per_minute given was %s.', v_rate),
            HINT = 'Pass NULL for no throttle.';
    END IF;
    IF lower(btrim($4)) = 'now' THEN
        v_due := clock_timestamp();
    ELSIF lower(btrim($4)) = 'best_time' THEN
        -- Each recipient at their own best time in [now, now + 24 hours).
        v_due := clock_timestamp();
        v_best := true;
    ELSE
        BEGIN
            v_due := $4::timestamptz;
        EXCEPTION WHEN data_exception THEN
            RAISE EXCEPTION 'invalid send_at "%"', $4 USING ERRCODE = '22007',
                HINT = 'Use ''now'', ''best_time'' or a timestamp such as ''2026-12-24 18:00+05:30''.';
        END;
        IF v_due < now() THEN
            RAISE EXCEPTION 'send_at is in the past' USING ERRCODE = '22023',
                DETAIL = format('The send_at given was %s.', v_due),
                HINT = 'Use ''now'' to send at once.';
        END IF;
    END IF;
    SELECT * INTO a FROM persona.actions AS x WHERE x.name = $2;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action "%" does not exist', $2 USING ERRCODE = '42704';
    END IF;
    IF a.channel = 'best' THEN
        -- Chunks are claimed per channel; a channel per person would need a
        -- snapshot per channel (not done).
        RAISE EXCEPTION 'a campaign cannot send an action on the channel "best"' USING ERRCODE = '0A000',
            HINT = 'Send one campaign per channel, or use a trigger, which chooses the channel per person.';
    END IF;
    IF $3 IS NOT NULL AND NOT EXISTS (SELECT FROM persona.segments AS s WHERE s.name = $3) THEN
        RAISE EXCEPTION 'segment "%" does not exist', $3 USING ERRCODE = '42704';
    END IF;
    -- Serializes sends: the blocks of message ids are handed out in order.
    LOCK TABLE persona.campaigns IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM persona.campaigns AS c WHERE c.name = v_name) THEN
        RAISE EXCEPTION 'campaign "%" already exists', v_name USING ERRCODE = '42710';
    END IF;
    -- An empty campaign keeps one id, so that every block starts elsewhere.
    SELECT coalesce(max(c.id_base + greatest(c.recipients, 1)), 281474976710656) INTO v_base
      FROM persona.campaigns AS c;
    INSERT INTO persona.campaigns (name, action_id, action, channel, segment, source, id_base,
                                   due_at, rate_per_minute)
    VALUES (v_name, a.action_id, a.name, a.channel, $3, 'campaign:' || v_name, v_base, v_due, v_rate)
    RETURNING campaign_id INTO v_id;
    v_n := persona.campaign_snapshot(v_id, $3, a.channel, v_due, v_best);
    UPDATE persona.campaigns AS c SET recipients = v_n WHERE c.campaign_id = v_id;
    IF v_n > 0 THEN
        -- One wake-up per send, not per message: an administrator's call,
        -- not a hot writer (the announcer, src/announcer.c, knows only
        -- persona.messages).
        PERFORM pg_notify('persona_outbox', a.channel);
    END IF;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_send_campaign(text, text, text, text, int) IS
    'sends an action to the members of a segment (NULL: everyone) as they are now; returns the number of recipients queued';

CREATE FUNCTION @extschema@.persona_cancel_campaign(name text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    c     persona.campaigns;
    v_n   bigint;
    v_m   bigint;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO c FROM persona.campaigns AS x WHERE x.name = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'campaign "%" does not exist', $1 USING ERRCODE = '42704';
    END IF;
    IF c.status = 'cancelled' THEN
        RAISE EXCEPTION 'campaign "%" is already cancelled', $1 USING ERRCODE = '55000';
    END IF;
    -- The campaign first: claims stop taking its queued chunks once this
    -- commits (a claim never waits for the campaign row while it holds a
    -- chunk). Then its queued chunks, waiting for a claim that holds one;
    -- twice, so that the rest a claim split off and committed meanwhile is
    -- cancelled too (any later rest is never claimed, and is reported
    -- cancelled).
    UPDATE persona.campaigns AS x SET status = 'cancelled', cancelled_at = clock_timestamp()
     WHERE x.campaign_id = c.campaign_id AND x.status = 'running';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'campaign "%" is already cancelled', $1 USING ERRCODE = '55000';
    END IF;
    v_n := 0;
    FOR pass IN 1..2 LOOP
        WITH k AS (
            UPDATE persona.campaign_chunks AS k
               SET status = 'cancelled', ready_at = NULL
             WHERE k.campaign_id = c.campaign_id AND k.status = 'queued'
            RETURNING k.size)
        SELECT v_n + coalesce(sum(k.size), 0) INTO v_n FROM k;
    END LOOP;
    UPDATE persona.messages AS m
       SET status = 'cancelled', ready_at = NULL, last_error = 'campaign cancelled'
     WHERE m.message_id >= c.id_base AND m.message_id < c.id_base + c.recipients
       AND m.status IN ('queued', 'failed');
    GET DIAGNOSTICS v_m = ROW_COUNT;
    IF v_n + v_m = 0 AND NOT EXISTS (
            SELECT FROM persona.campaign_chunks AS k
             WHERE k.campaign_id = c.campaign_id AND k.status = 'claimed')
       AND NOT EXISTS (
            SELECT FROM persona.messages AS m
             WHERE m.message_id >= c.id_base AND m.message_id < c.id_base + c.recipients
               AND m.status = 'claimed') THEN
        RAISE EXCEPTION 'campaign "%" is finished', $1 USING ERRCODE = '55000',
            DETAIL = 'Every message of it was sent, suppressed or is dead.';
    END IF;
    RETURN v_n + v_m;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_cancel_campaign(text) IS
    'cancels what of a campaign is not yet claimed; returns how many messages';

CREATE FUNCTION @extschema@.persona_campaign_report(name text)
    RETURNS TABLE (status text, messages bigint)
    LANGUAGE C STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_campaign_report';
COMMENT ON FUNCTION @extschema@.persona_campaign_report(text) IS
    'a campaign''s messages by status: queued, claimed, sent, failed, dead, cancelled, suppressed_consent, suppressed_cap, suppressed_holdout';

-- What counts toward an action's cap_per_day and cooldown for a profile:
-- its decisions at decided_at, its messages at due_at unless cancelled
-- or dead (a message queued for later counts already), and its campaign
-- messages once claimed (src/campaigns.sql). last_day counts the
-- 24 hours before now(); latest is the latest of them within span.
-- Not SECURITY DEFINER and without SET, so that persona_decide's query
-- inlines it; every name is qualified.
CREATE OR REPLACE FUNCTION persona.recent_sends(profile_id bigint, span interval, actions int[])
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
               AND m.status OPERATOR(pg_catalog.<>) ALL ('{cancelled,dead}'::pg_catalog.text[])
            UNION ALL
            SELECT c.action_id, c.due_at
              FROM persona.campaigns AS c
             WHERE c.action_id OPERATOR(pg_catalog.=) ANY ($3)
               AND c.due_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)
               AND persona.campaign_reached(c.campaign_id, $1)) AS x
     GROUP BY x.action_id
$$;
COMMENT ON FUNCTION persona.recent_sends(bigint, interval, int[]) IS
    'per action: decisions and live messages (campaigns'' included) of a profile in the last 24 hours, and the latest within span (caps and cooldowns)';

REVOKE ALL ON FUNCTION @extschema@.persona_send_campaign(text, text, text, text, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_cancel_campaign(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_campaign_report(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.campaign_snapshot(int, text, text, timestamptz, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.campaign_reached(int, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.campaign_materialize(bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.channel_sends(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.channel_cap_reached(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.channel_cap() FROM PUBLIC;


-- ---------------------------------------------------------------------
-- Predictions (issue 17): persona.models, the point-in-time aggregate, the
-- fit and the live score (src/models.sql, src/models.c); a model's score
-- is a column of persona.traits (persona.rebuild_traits_view, replaced
-- above) and a key of persona_profile()->'computed'; trait names and model
-- names exclude each other (persona_define_trait, replaced above), and a
-- trait a model reads cannot be dropped.
-- ---------------------------------------------------------------------

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

CREATE OR REPLACE FUNCTION @extschema@.persona_drop_trait(name text) RETURNS void
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

-- The profile document carries its consent (issue 13) and every model's
-- score under computed.
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
                   'computed',      persona.traits_json(p.computed_state)
                                    || persona.model_scores(p.computed_state, p.event_count,
                                                            p.first_seen, p.last_seen),
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
COMMENT ON FUNCTION @extschema@.persona_profile(text) IS
    'the whole profile of any id it is known by, as one JSON document; NULL for an unknown id';

-- Privileges (src/grants.sql).
REVOKE ALL ON FUNCTION persona.check_column_name(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_train_model(text, text, interval, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_predict(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_model(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_scores(bytea, bigint, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_row_add(internal, int[], text, timestamptz, timestamptz, text, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_row_final(internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_row(int[], text, timestamptz, timestamptz, text, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_fit(int[], text, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_features(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.refresh_model_segments(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.models_restored() FROM PUBLIC;

-- ---------------------------------------------------------------------
-- Best send time and best channel (issue 16): persona_best_send_time,
-- persona_best_channel and their internal entries by profile id
-- (src/sendtime.sql, src/sendtime.c); the channel "best" of an action is
-- resolved per person in persona.enqueue_message (edited in place above).
-- ---------------------------------------------------------------------


-- The internal entries, by profile id, for campaigns and the outbox: a NULL
-- or unknown profile gets the population's answer. within: only hours
-- starting before after + within count (a campaign's '24 hours').
CREATE FUNCTION persona.best_send_at(profile_id bigint, after timestamptz, channel text DEFAULT NULL,
                                     within interval DEFAULT NULL)
    RETURNS timestamptz
    LANGUAGE C VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_best_send_at';
COMMENT ON FUNCTION persona.best_send_at(bigint, timestamptz, text, interval) IS
    'the first moment at or after "after" in the local hour of the week (of those starting within "within", default a week) in which the profile engages most (the population''s below 5 engagements in 180 days)';

CREATE FUNCTION persona.best_channel_of(profile_id bigint, channels text[] DEFAULT NULL)
    RETURNS text
    LANGUAGE C VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_best_channel_of';
COMMENT ON FUNCTION persona.best_channel_of(bigint, text[]) IS
    'the consented channel (of channels, default the actions'' channels) with the best engagement rate for the profile, shrunk toward the population''s; NULL when none is consented';

CREATE FUNCTION persona.refresh_engagement() RETURNS jsonb
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'persona_refresh_engagement';
COMMENT ON FUNCTION persona.refresh_engagement() IS
    'recomputes this session''s population figures (best hour, channel rates) from a sample of profiles now, and returns them';

-- The API.
CREATE FUNCTION @extschema@.persona_best_send_time(user_id text, after timestamptz DEFAULT now(),
                                                  channel text DEFAULT NULL)
    RETURNS timestamptz
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF $2 IS NULL THEN
        RAISE EXCEPTION 'after must not be null' USING ERRCODE = '22004';
    END IF;
    RETURN persona.best_send_at(persona.resolve(persona.check_id($1, 'user_id')), $2, $3);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_best_send_time(text, timestamptz, text) IS
    'the next moment at or after "after" in the person''s most engaged local hour of the week; an unknown id gets the population''s';

CREATE FUNCTION @extschema@.persona_best_channel(user_id text, channels text[] DEFAULT NULL)
    RETURNS text
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RETURN persona.best_channel_of(persona.resolve(persona.check_id($1, 'user_id')), $2);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_best_channel(text, text[]) IS
    'the consented channel with the best engagement rate for the person (a prior toward the population''s rates); NULL when none is consented';

REVOKE ALL ON FUNCTION @extschema@.persona_best_send_time(text, timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_best_channel(text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.best_send_at(bigint, timestamptz, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.best_channel_of(bigint, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.refresh_engagement() FROM PUBLIC;

-- ---------------------------------------------------------------------
-- Events age out (issue 15), continued: the row guard of the partitions
-- (persona.refuse_direct_change is created above), and retention.
-- ---------------------------------------------------------------------

CREATE TRIGGER events_guard_row
    BEFORE UPDATE OR DELETE ON persona.events
    FOR EACH ROW EXECUTE FUNCTION persona.refuse_direct_change();

-- The partitions [lo, lo + step) that cover since .. through, aligned on
-- whole months (a step of months) or on multiples of step from 2000-01-01
-- UTC (any other step), named events_pYYYYMMDD[_HH24MI] after lo in UTC,
-- each with the primary key every partition has (src/schema.sql).
CREATE FUNCTION persona.add_event_partitions(through timestamptz,
                                             step interval DEFAULT '1 month',
                                             since timestamptz DEFAULT now())
    RETURNS int
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS $$
DECLARE
    v_months int;
    v_lo     timestamptz;
    v_hi     timestamptz;
    v_name   text;
    v_made   int := 0;
BEGIN
    IF through IS NULL OR step IS NULL OR since IS NULL THEN
        RAISE EXCEPTION 'through, step and since must not be null' USING ERRCODE = '22004';
    END IF;
    IF NOT isfinite(through) OR NOT isfinite(since) THEN
        RAISE EXCEPTION 'through and since must be finite' USING ERRCODE = '22008';
    END IF;
    v_months := extract(year FROM step)::int * 12 + extract(month FROM step)::int;
    IF v_months > 0 AND step = make_interval(months => v_months) THEN
        v_lo := date_trunc('month', since AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    ELSIF v_months = 0 AND step >= interval '1 minute' AND step <= interval '366 days'
          AND extract(second FROM step) = 0 THEN
        v_lo := date_bin(step, since, timestamptz '2000-01-01 00:00:00+00');
    ELSE
        RAISE EXCEPTION 'step must be whole months, or whole minutes from 1 minute to 366 days'
            USING ERRCODE = '22023',
                  DETAIL = format('The step given was "%s".', step),
                  HINT = 'Use a step such as ''1 month'', ''7 days'' or ''1 day''.';
    END IF;
    IF through > since + 1000 * step THEN
        RAISE EXCEPTION 'add_event_partitions would create more than 1000 partitions'
            USING ERRCODE = '54000',
                  DETAIL = format('From %s to %s by %s.', since, through, step);
    END IF;

    WHILE v_lo <= through LOOP
        v_hi := (v_lo AT TIME ZONE 'UTC' + step) AT TIME ZONE 'UTC';
        v_name := 'events_p' || to_char(v_lo AT TIME ZONE 'UTC', 'YYYYMMDD')
                  || CASE WHEN v_months = 0 AND (step < interval '1 day'
                                                 OR date_trunc('day', v_lo AT TIME ZONE 'UTC') <> v_lo AT TIME ZONE 'UTC')
                          THEN to_char(v_lo AT TIME ZONE 'UTC', '_HH24MI') ELSE '' END;
        IF to_regclass(format('persona.%I', v_name)) IS NULL THEN
            -- Creating or attaching a partition locks persona.events
            -- exclusively anyway; taken first, the lock waits for ingest in
            -- flight, so the default partition's rows checked below are all
            -- there are, and locks go in ingest's order (persona.events,
            -- then its partitions): no deadlock with it.
            LOCK TABLE ONLY persona.events IN ACCESS EXCLUSIVE MODE;
            IF EXISTS (SELECT FROM persona.events_default AS d
                        WHERE d.occurred_at >= v_lo AND d.occurred_at < v_hi) THEN
                -- Rows of that range wait in the default partition: they
                -- move, as stored (a table that is not yet a partition has
                -- no trigger), before the new one is attached.
                EXECUTE format('CREATE TABLE persona.%I (LIKE persona.events INCLUDING DEFAULTS,
                                                          PRIMARY KEY (profile_id, occurred_at, event_id))', v_name);
                EXECUTE format('WITH moved AS (DELETE FROM persona.events_default AS d
                                                WHERE d.occurred_at >= $1 AND d.occurred_at < $2
                                            RETURNING d.*)
                                INSERT INTO persona.%I SELECT * FROM moved', v_name)
                  USING v_lo, v_hi;
                EXECUTE format('ALTER TABLE persona.events ATTACH PARTITION persona.%I FOR VALUES FROM (%L) TO (%L)',
                               v_name, v_lo, v_hi);
            ELSE
                EXECUTE format('CREATE TABLE persona.%I PARTITION OF persona.events (
                                    PRIMARY KEY (profile_id, occurred_at, event_id)) FOR VALUES FROM (%L) TO (%L)',
                               v_name, v_lo, v_hi);
            END IF;
            v_made := v_made + 1;
        END IF;
        v_lo := v_hi;
    END LOOP;
    RETURN v_made;
END
$$;
COMMENT ON FUNCTION persona.add_event_partitions(timestamptz, interval, timestamptz) IS
    'creates the time partitions of persona.events from since through through, step long (rows waiting in the default partition move in); returns how many it created';

-- Retention: drops every time partition that ends at or before the cutoff,
-- and deletes the default partition's events older than it.
CREATE FUNCTION persona.drop_events_before(cutoff timestamptz)
    RETURNS int
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS $$
DECLARE
    v_part    record;
    v_dropped int := 0;
BEGIN
    IF cutoff IS NULL THEN
        RAISE EXCEPTION 'cutoff must not be null' USING ERRCODE = '22004';
    END IF;
    -- Dropping a partition locks persona.events exclusively: taken first,
    -- in ingest's order (persona.events, then its partitions).
    LOCK TABLE ONLY persona.events IN ACCESS EXCLUSIVE MODE;
    FOR v_part IN
        SELECT c.relname, b.upper
          FROM pg_inherits AS i
          JOIN pg_class AS c ON c.oid = i.inhrelid
          CROSS JOIN LATERAL (
              SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                   'TO \(''([^'']*)''\)'))[1]::timestamptz AS upper) AS b
         WHERE i.inhparent = 'persona.events'::regclass
           AND b.upper IS NOT NULL AND b.upper <= cutoff
         ORDER BY b.upper
    LOOP
        EXECUTE format('DROP TABLE persona.%I', v_part.relname);
        v_dropped := v_dropped + 1;
    END LOOP;
    DELETE FROM persona.events_default AS d WHERE d.occurred_at < cutoff;
    RETURN v_dropped;
END
$$;
COMMENT ON FUNCTION persona.drop_events_before(timestamptz) IS
    'drops the partitions of persona.events that end at or before cutoff and the default partition''s older events; profiles and traits keep them counted; returns partitions dropped';

REVOKE ALL ON FUNCTION persona.add_event_partitions(timestamptz, interval, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.drop_events_before(timestamptz) FROM PUBLIC;

-- ---------------------------------------------------------------------
-- The clock scales (issue 15): persona_tick locks and evaluates only the
-- profiles a clock segment's predicate now contradicts, not every profile.
-- ---------------------------------------------------------------------

CREATE OR REPLACE FUNCTION @extschema@.persona_tick()
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS $$
DECLARE
    v_changes  bigint := 0;
    v_windowed text[];
    v_seg      record;
    v_flip     text;
    v_flips    text[] := '{}';
    v_found    bigint[];
    v_stale    bigint[] := '{}';
    v_every    boolean := false;
    v_batch    bigint[];
    v_due      bigint[];
    v_ids      bigint[];
    v_at       timestamptz[];
    v_changed  text[];
BEGIN
    PERFORM persona.lock_order();
    SELECT array_agg(d.name) INTO v_windowed
      FROM persona.trait_defs AS d WHERE d.time_window IS NOT NULL;

    -- Clock segments. Where the time the predicate next flips can be
    -- derived (src/clock.c), each profile's is kept in next_change_at and
    -- the profiles due are visited below with the others. For the others,
    -- one pass per segment, without locks, finds the profiles whose
    -- membership the predicate now contradicts (the stale ones); only they
    -- are locked and evaluated again below. That pass reads every profile
    -- (time can change anyone's answer) but locks and writes only what
    -- changed. A predicate that fails on some profile's data makes that
    -- segment's pass fail: then every profile is visited, as
    -- evaluate_segment does, so that the failures are counted.
    FOR v_seg IN
        SELECT s.name, s.predicate_sql FROM persona.segments AS s WHERE s.clock ORDER BY s.segment_id
    LOOP
        v_flip := persona.clock_flip(v_seg.predicate_sql);
        IF v_flip IS NOT NULL THEN
            v_flips := v_flips || v_flip;
            CONTINUE;
        END IF;
        BEGIN
            -- predicate_sql is the checked expression deparsed from its
            -- parse tree; the name is only ever a parameter.
            EXECUTE format($q$
                SELECT array_agg(s.profile_id)
                  FROM persona.segment_source AS s
                  LEFT JOIN persona.segment_members AS m
                    ON m.profile_id = s.profile_id AND m.segment = $1
                 WHERE coalesce((%s), false) <> (m.profile_id IS NOT NULL)$q$, v_seg.predicate_sql)
               INTO v_found USING v_seg.name;
            v_stale := v_stale || coalesce(v_found, '{}');
        EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
            v_every := true;
        END;
    END LOOP;

    -- Batches in profile order, each locked before it is touched, so the
    -- tick takes profile locks in the one order ingest and merges take them:
    -- the profiles due (an index range on next_change_at: a windowed trait
    -- changes by the clock alone, a clock segment's predicate may flip, or
    -- the profile changed since the last tick while clock segments exist)
    -- and the stale members of the other clock segments; every profile when
    -- a clock predicate failed above.
    FOR v_batch IN
        SELECT array_agg(b.profile_id ORDER BY b.profile_id)
          FROM (SELECT d.profile_id, (row_number() OVER (ORDER BY d.profile_id) - 1) / 10000 AS n
                  FROM (SELECT p.profile_id FROM persona.profiles AS p
                         WHERE v_every OR p.next_change_at <= now()
                        UNION
                        SELECT u.id FROM unnest(v_stale) AS u(id)) AS d) AS b
         GROUP BY b.n ORDER BY b.n
    LOOP
        PERFORM 1 FROM persona.profiles AS p
         WHERE p.profile_id = ANY (v_batch) ORDER BY p.profile_id FOR NO KEY UPDATE;
        -- When the due profiles next flip in the derived clock segments.
        v_ids := NULL;
        v_at := NULL;
        IF cardinality(v_flips) > 0 THEN
            BEGIN
                EXECUTE format($q$
                    SELECT array_agg(s.profile_id), array_agg(LEAST(%s))
                      FROM persona.segment_source AS s
                      JOIN persona.profiles AS p ON p.profile_id = s.profile_id
                     WHERE p.profile_id = ANY ($1) AND p.next_change_at <= now()$q$,
                    array_to_string(v_flips, ', '))
                   INTO v_ids, v_at USING v_batch;
            EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
                -- Out of range for some profile: look again at the next tick.
                SELECT array_agg(p.profile_id), array_agg(now()) INTO v_ids, v_at
                  FROM persona.profiles AS p
                 WHERE p.profile_id = ANY (v_batch) AND p.next_change_at <= now();
            END;
        END IF;
        -- Prune the due states and note when each changes next.
        WITH pruned AS (
            UPDATE persona.profiles AS p
               SET (computed_state, next_change_at) =
                   (SELECT q.s, LEAST(persona.next_change(q.s), f.at)
                      FROM (SELECT persona.state_merge(p.computed_state, NULL) AS s) AS q)
              FROM unnest(v_batch) AS b(id)
              LEFT JOIN unnest(v_ids, v_at) AS f(id, at) ON f.id = b.id
             WHERE p.profile_id = b.id AND p.next_change_at <= now()
            RETURNING p.profile_id)
        SELECT array_agg(pruned.profile_id ORDER BY pruned.profile_id) INTO v_due FROM pruned;
        -- The due profiles: the segments reading a windowed trait, and the
        -- clock segments unless the whole batch is evaluated for them next.
        v_changed := v_windowed;
        IF cardinality(v_flips) > 0 AND NOT v_every AND cardinality(v_stale) = 0 THEN
            v_changed := coalesce(v_changed, '{}') || ARRAY['now()'];
        END IF;
        IF v_due IS NOT NULL AND v_changed IS NOT NULL THEN
            v_changes := v_changes + persona.refresh_segments(v_due, v_changed);
        END IF;
        IF v_every OR cardinality(v_stale) > 0 THEN
            v_changes := v_changes + persona.refresh_segments(v_batch, ARRAY['now()']);
        END IF;
    END LOOP;
    RETURN v_changes;
END
$$;

-- ---------------------------------------------------------------------
-- Writers never NOTIFY: the announcer (src/announcer.c) notifies
-- persona_segment ({"log_id": horizon}) and persona_outbox for everything
-- committed; persona.segment_log_horizon() for readers that poll.
-- ---------------------------------------------------------------------
COMMENT ON TABLE persona.segment_log IS 'every entry into and exit from a segment, announced on NOTIFY channel persona_segment by the announcer';

-- Writers never NOTIFY (the lock PostgreSQL takes at the commit of a
-- transaction that notified would serialize them): persona.announce()
-- flags the transaction, whose commit wakes the announcer, a background
-- worker that notifies for everything committed meanwhile (src/announcer.c,
-- docs/segments.md "Listening").
CREATE FUNCTION persona.announce() RETURNS void
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'persona_announce_changes';
COMMENT ON FUNCTION persona.announce() IS
    'wakes (or starts) the announcer when the transaction commits: it wrote segment log rows or messages';

-- For readers that poll: every log row with a log_id up to it is
-- committed, or never will be (it waits for the writers that may still
-- hold a smaller id).
CREATE FUNCTION persona.segment_log_horizon() RETURNS bigint
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_segment_log_horizon';
COMMENT ON FUNCTION persona.segment_log_horizon() IS
    'the log_id up to which persona.segment_log is complete: read log_id in (last seen, horizon]';

CREATE OR REPLACE FUNCTION persona.leave_segments(profile_id bigint) RETURNS bigint
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
    SELECT count(*) INTO v_n FROM logged AS l;
    IF v_n > 0 THEN
        PERFORM persona.announce();
    END IF;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION persona.leave_segments(bigint) IS
    'removes a profile from every segment, logging and announcing the exits';

REVOKE ALL ON FUNCTION persona.announce() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.segment_log_horizon() FROM PUBLIC;

-- Windowed count_distinct (src/traits.c): a state keeps each value's span
-- of occurrences (state version 3), no longer its last occurrence only,
-- which read 0 for a value also seen after now.  Version 2 states are still
-- read, and are exact but for a value whose last occurrence is after now:
-- the states of profiles with such future-dated events are computed again
-- from the events here, as persona_define_trait computes them.
DO $$
DECLARE
    d record;
BEGIN
    PERFORM set_config('persona.maintenance', 'on', true);
    FOR d IN SELECT t.trait_id, t.aggregate, t.time_window, t.property, t.event_type
               FROM persona.trait_defs AS t
              WHERE t.aggregate = 'count_distinct' AND t.time_window IS NOT NULL
              ORDER BY t.trait_id LOOP
        UPDATE persona.profiles AS p
           SET computed_state = persona.state_put(p.computed_state, b.state),
               next_change_at = LEAST(p.next_change_at, persona.next_change(b.state))
          FROM (SELECT e.profile_id,
                       persona.trait_agg(d.trait_id, d.aggregate, d.time_window, d.property,
                                         e.occurred_at, e.event_id, e.properties) AS state
                  FROM persona.events AS e
                 WHERE e.event_type = d.event_type
                   AND e.occurred_at > now() - 2 * d.time_window - interval '1 day'
                   AND e.profile_id IN (SELECT f.profile_id FROM persona.events AS f
                                         WHERE f.event_type = d.event_type AND f.occurred_at > now())
                 GROUP BY e.profile_id) AS b
         WHERE p.profile_id = b.profile_id;
    END LOOP;
    PERFORM set_config('persona.maintenance', 'off', true);
END
$$;

-- persona_tick visits only the profiles whose membership time may have
-- changed (src/clock.c): the flip time of a clock segment's predicate, where
-- it can be derived, is kept in next_change_at; ingest, merges and new
-- profiles mark a profile due while a clock segment exists.
CREATE FUNCTION persona.clock_flip(predicate_sql text) RETURNS text
    LANGUAGE C STABLE STRICT
    AS 'MODULE_PATHNAME', 'persona_clock_flip';
COMMENT ON FUNCTION persona.clock_flip(text) IS
    'for a clock segment''s predicate_sql, SQL over persona.segment_source AS s giving when a profile''s membership may next change by the clock (NULL: not derived, the tick reads every profile)';
REVOKE ALL ON FUNCTION persona.clock_flip(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION persona.ensure_profile(id text, kind text) RETURNS bigint
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
    -- With clock segments, the next tick computes when it flips in them
    -- (src/clock.c).
    INSERT INTO persona.profiles (profile_id, user_id, next_change_at)
    VALUES (v_pid, CASE WHEN v_kind = 'user' THEN v_id END,
            CASE WHEN EXISTS (SELECT FROM persona.segments AS s WHERE s.clock) THEN now() END);
    -- A new profile is new to every segment.
    PERFORM persona.refresh_segments(ARRAY[v_pid], NULL);
    RETURN v_pid;
END
$$;

-- The clock segments of 0.1.0: every profile's next flip time.
DO $$
DECLARE
    v_flip text;
BEGIN
    PERFORM set_config('persona.maintenance', 'on', true);
    FOR v_flip IN SELECT persona.clock_flip(s.predicate_sql) FROM persona.segments AS s
                   WHERE s.clock ORDER BY s.segment_id LOOP
        CONTINUE WHEN v_flip IS NULL;
        EXECUTE format($q$
            UPDATE persona.profiles AS p SET next_change_at = LEAST(p.next_change_at, f.at)
              FROM (SELECT s.profile_id, (%s) AS at FROM persona.segment_source AS s) AS f
             WHERE p.profile_id = f.profile_id AND f.at IS NOT NULL$q$, v_flip);
    END LOOP;
    PERFORM set_config('persona.maintenance', 'off', true);
END
$$;

-- ---------------------------------------------------------------------
-- Predicates that cannot fail
-- ---------------------------------------------------------------------
-- A predicate, condition or trigger condition that provably raises no data
-- exception or program limit on any profile is evaluated without a
-- subtransaction (src/predicate.c PredicateMayFail); this internal function
-- tells which (docs/segments.md).
CREATE FUNCTION persona.predicate_may_fail(predicate text, source regclass) RETURNS boolean
    LANGUAGE C STABLE
    AS 'MODULE_PATHNAME', 'persona_predicate_may_fail';
COMMENT ON FUNCTION persona.predicate_may_fail(text, regclass) IS
    'whether a predicate over a source relation may fail on a profile''s data (a data exception or a program limit), so that its evaluation runs in a subtransaction';
REVOKE ALL ON FUNCTION persona.predicate_may_fail(text, regclass) FROM PUBLIC;
