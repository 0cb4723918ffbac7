-- Input rules shared by every entry point (src/validate.c, src/validate.h):
-- one SQLSTATE and one message per rule, in C and in PL/pgSQL alike.
-- Each check raises on bad input and returns its argument; "what" names it.

CREATE FUNCTION persona.check_id(id text, what text) RETURNS text
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
