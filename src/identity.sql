-- Identity: persona_identify, persona_alias, persona_profile, persona_forget.
--
-- Merge protocol (shared with the ingest trigger, src/ingest_apply.c): a merge
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
