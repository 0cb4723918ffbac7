-- Linked events: triggers that turn an ingested event, or an entry into or
-- exit from a segment, into a message in the outbox (persona_create_trigger,
-- persona_drop_trigger). The firing is in src/triggers.c, called by the
-- ingest apply phase (src/ingest_apply.c) and the segment refresh
-- (src/segments.c); docs/delivery.md, "Linked events", describes them.

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
