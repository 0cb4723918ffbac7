-- Identity: persona_identify, persona_alias, persona_profile, persona_forget.
--
-- Merge protocol (shared with the ingest trigger, src/ingest_apply.c): a merge
-- locks both profile rows in profile_id order, re-reads the identities under
-- the lock, then walks the registry of person data (src/registry.sql): it
-- moves identities and events of the absorbed profile to the survivor, folds
-- its statistics in, records the move in persona.merges and deletes the
-- absorbed row, in that order.  An ingest statement that resolved rows to the
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
COMMENT ON FUNCTION persona.ensure_profile(text, text) IS
    'the profile of an id, created with its identity when the id is new';

-- Registry steps for persona.identities and persona.profiles (src/registry.sql).

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
-- survivor's winning, computed trait states merged, consent merged with a
-- withdrawal winning), leaves its forwarding
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

CREATE FUNCTION @extschema@.persona_alias(user_id text, anonymous_id text)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
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

CREATE FUNCTION @extschema@.persona_forget(user_id text)
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
COMMENT ON FUNCTION @extschema@.persona_forget(text) IS
    'erases every persona row about the person any id of theirs names; returns the number of rows erased';
