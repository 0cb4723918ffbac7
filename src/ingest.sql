-- Ingest: persona_track and the triggers that maintain profiles for every
-- insert into persona.events (src/ingest.c).

-- event_id's default. It is nextval() of persona.event_id_seq (with its
-- privilege check), and tells the row trigger that the id is fresh: such a
-- row cannot meet a unique conflict, so the trigger may fold it at once.
-- PUBLIC may run it: it checks the sequence privilege like nextval().
CREATE FUNCTION persona.next_event_id() RETURNS bigint
    LANGUAGE C VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'persona_next_event_id';
COMMENT ON FUNCTION persona.next_event_id() IS
    'the default of persona.events.event_id: nextval of persona.event_id_seq';
ALTER TABLE persona.events ALTER COLUMN event_id SET DEFAULT persona.next_event_id();

-- The WHEN condition of events_confirm, run as whoever inserts: PUBLIC may
-- run it, it reads one number of the backend's own.
CREATE FUNCTION persona.event_folded(event_id bigint) RETURNS boolean
    LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'persona_event_folded';
COMMENT ON FUNCTION persona.event_folded(bigint) IS
    'whether the BEFORE ROW trigger already folded the row just inserted (WHEN condition of events_confirm)';

CREATE FUNCTION persona.check_ingest_idle(what text) RETURNS void
    LANGUAGE C STRICT
    AS 'MODULE_PATHNAME', 'persona_check_ingest_idle';
COMMENT ON FUNCTION persona.check_ingest_idle(text) IS
    'raises an error while an insert into persona.events of this backend has rows not applied yet';

CREATE FUNCTION persona.events_resolve() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_events_resolve';
COMMENT ON FUNCTION persona.events_resolve() IS
    'checks an incoming event, resolves its profile_id and folds it for its profile (BEFORE INSERT FOR EACH ROW on persona.events)';

CREATE FUNCTION persona.events_confirm() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_events_confirm';
COMMENT ON FUNCTION persona.events_confirm() IS
    'folds an inserted event the BEFORE ROW trigger could not (AFTER INSERT FOR EACH ROW on persona.events)';

CREATE FUNCTION persona.events_apply() RETURNS trigger
    LANGUAGE C
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS 'MODULE_PATHNAME', 'persona_events_apply';
COMMENT ON FUNCTION persona.events_apply() IS
    'writes new identities and updates each touched profile once per statement (AFTER INSERT FOR EACH STATEMENT on persona.events)';

CREATE FUNCTION persona.events_begin() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_events_begin';
COMMENT ON FUNCTION persona.events_begin() IS
    'marks an insert into persona.events in progress, so that a new event inserted into a partition directly is refused (BEFORE INSERT FOR EACH STATEMENT on persona.events)';

-- The row trigger folds a row itself only when no BEFORE ROW trigger sorts
-- after it; the AFTER ROW trigger folds every other row as inserted.
CREATE TRIGGER events_resolve
    BEFORE INSERT ON persona.events
    FOR EACH ROW EXECUTE FUNCTION persona.events_resolve();

CREATE TRIGGER events_confirm
    AFTER INSERT ON persona.events
    FOR EACH ROW WHEN (NOT persona.event_folded(NEW.event_id))
    EXECUTE FUNCTION persona.events_confirm();

-- Statement triggers fire for statements on persona.events, not on its
-- partitions (row triggers are cloned to them): events_begin and
-- events_apply bracket every insert that goes through the parent.
CREATE TRIGGER events_begin
    BEFORE INSERT ON persona.events
    FOR EACH STATEMENT EXECUTE FUNCTION persona.events_begin();

CREATE TRIGGER events_apply
    AFTER INSERT ON persona.events
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
