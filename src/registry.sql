-- The registry of person data: every persona table that holds rows about a
-- person, keyed by profile_id, with how a merge moves its rows and how
-- forget erases them.  persona.merge and persona_forget (src/identity.sql)
-- walk it through persona.merge_rows and persona.forget_rows, which are
-- written from it; a new table of person data is one entry below.  docs/identity.md#person-data says
-- what each rule means.

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
--    persona.profiles (whose erase deletes the persona.merges rows it reads),
--    and persona.segment_log before persona.segment_members (whose erase
--    logs the person's exits, which stay).
INSERT INTO persona.person_tables
       (relation, step, merge_rule, combine_function, forget_rule, erase_function)
VALUES ('persona.identities', 10, 'combine', 'persona.combine_identities(bigint,bigint)',
        'erase', 'persona.erase_identities(bigint)'),
       ('persona.events', 20, 'repoint', NULL, 'delete', NULL),
       ('persona.decisions', 30, 'repoint', NULL, 'erase', 'persona.erase_decisions(bigint)'),
       ('persona.messages', 32, 'repoint', NULL, 'delete', NULL),
       ('persona.message_feedback', 34, 'repoint', NULL, 'delete', NULL),
       ('persona.assignments', 35, 'combine', 'persona.combine_assignments(bigint,bigint)',
        'delete', NULL),
       ('persona.segment_log', 40, 'history', NULL, 'delete_with_absorbed', NULL),
       ('persona.profiles', 50, 'combine', 'persona.combine_profiles(bigint,bigint)',
        'erase', 'persona.erase_profile(bigint)'),
       ('persona.segment_members', 60, 'combine', 'persona.combine_segment_members(bigint,bigint)',
        'erase', 'persona.leave_segments(bigint)');
