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
COMMENT ON TABLE persona.segment_log IS 'every entry into and exit from a segment, announced on NOTIFY channel persona_segment by the announcer';
COMMENT ON SEQUENCE persona.segment_log_log_id_seq IS 'allocates segment log ids';

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

-- Counted as ingest goes; kept apart from the definitions, which are cached
-- (a write to persona.segments makes every backend read them again).
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

SELECT pg_catalog.pg_extension_config_dump('persona.segments', '');
SELECT pg_catalog.pg_extension_config_dump('persona.segment_stats', '');
SELECT pg_catalog.pg_extension_config_dump('persona.segment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.segment_members', '');
SELECT pg_catalog.pg_extension_config_dump('persona.segment_log', '');
SELECT pg_catalog.pg_extension_config_dump('persona.segment_log_log_id_seq', '');

-- Members and their log are maintained too (src/catalog.sql).
CREATE TRIGGER segment_members_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.segment_members
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
CREATE TRIGGER segment_log_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.segment_log
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();

-- However a row is written, its SQL is the checked compilation of its text.
CREATE TRIGGER segments_compile
    BEFORE INSERT OR UPDATE ON persona.segments
    FOR EACH ROW EXECUTE FUNCTION persona.compile_definition(
        'persona.segment_source', 'predicate', 'predicate_sql', 'reads', 'clock');

-- Ingest caches the definitions; changes reach every backend.
CREATE TRIGGER segments_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON persona.segments
    FOR EACH STATEMENT EXECUTE FUNCTION persona.announce_change();

CREATE FUNCTION persona.refresh_segments(profile_ids bigint[], changed text[]) RETURNS bigint
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'persona_refresh_segments';
COMMENT ON FUNCTION persona.refresh_segments(bigint[], text[]) IS
    're-evaluates for these profiles the segments that read a changed column (NULL: all); returns entries plus exits';

CREATE FUNCTION persona.clock_flip(predicate_sql text) RETURNS text
    LANGUAGE C STABLE STRICT
    AS 'MODULE_PATHNAME', 'persona_clock_flip';
COMMENT ON FUNCTION persona.clock_flip(text) IS
    'for a clock segment''s predicate_sql, SQL over persona.segment_source AS s giving when a profile''s membership may next change by the clock (NULL: not derived, the tick reads every profile)';

CREATE FUNCTION persona.evaluate_segment(segment text, profile_ids bigint[]) RETURNS bigint
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'persona_evaluate_segment';
COMMENT ON FUNCTION persona.evaluate_segment(text, bigint[]) IS
    'evaluates one segment for these profiles, each alone when the predicate fails on one (not a member, counted); returns entries plus exits';

-- Leaves every segment of a profile that is going away (absorbed by a
-- merge, or forgotten), logged and announced as exits. It is also the
-- forget step of persona.segment_members in the registry (src/registry.sql):
-- a listener keeping its own copy of a segment drops a forgotten person
-- too. Forget erases the person's earlier log rows first (their step comes
-- first), so what stays of the person is one 'exit' per segment, under a
-- profile id that no longer resolves to anyone.
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
    SELECT count(*) INTO v_n FROM logged AS l;
    IF v_n > 0 THEN
        PERFORM persona.announce();
    END IF;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION persona.leave_segments(bigint) IS
    'removes a profile from every segment, logging and announcing the exits';

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

CREATE FUNCTION @extschema@.persona_create_segment(name text, predicate text)
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

CREATE FUNCTION @extschema@.persona_drop_segment(name text)
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

CREATE FUNCTION @extschema@.persona_in_segment(user_id text, segment text)
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

CREATE FUNCTION @extschema@.persona_tick()
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
