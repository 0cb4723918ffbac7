-- Best send time and best channel of a person (src/sendtime.c;
-- docs/sendtime.md has the rules, thresholds and costs). Nothing is stored
-- per person: both are computed when asked from the events, messages and
-- message feedback already indexed by profile_id.

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
