-- Ingest: persona_track and the triggers that maintain profiles for every
-- insert into persona.events (src/ingest.c).

CREATE FUNCTION persona.events_resolve() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_events_resolve';
COMMENT ON FUNCTION persona.events_resolve() IS
    'checks an incoming event and resolves its profile_id (BEFORE INSERT FOR EACH ROW on persona.events)';

CREATE FUNCTION persona.events_apply() RETURNS trigger
    LANGUAGE C
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_events_apply';
COMMENT ON FUNCTION persona.events_apply() IS
    'writes new identities and updates each touched profile once per statement (AFTER INSERT FOR EACH STATEMENT on persona.events)';

CREATE TRIGGER events_resolve
    BEFORE INSERT ON persona.events
    FOR EACH ROW EXECUTE FUNCTION persona.events_resolve();

CREATE TRIGGER events_apply
    AFTER INSERT ON persona.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION persona.events_apply();

-- Merges and forget change id -> profile mappings that backends cache.
CREATE TRIGGER identities_changed
    AFTER UPDATE OR DELETE OR TRUNCATE ON persona.identities
    FOR EACH STATEMENT EXECUTE FUNCTION persona.announce_change();

CREATE FUNCTION @extschema@.persona_track(
        user_id      text,
        event_type   text,
        properties   jsonb       DEFAULT '{}',
        occurred_at  timestamptz DEFAULT now(),
        context      jsonb       DEFAULT '{}',
        anonymous_id text        DEFAULT NULL)
    RETURNS bigint
    LANGUAGE C
    VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_track';
COMMENT ON FUNCTION @extschema@.persona_track(text, text, jsonb, timestamptz, jsonb, text) IS
    'records one event for a user or anonymous id and updates the profile in the same transaction; returns the event_id';
