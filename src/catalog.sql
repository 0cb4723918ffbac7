-- Cache invalidation for the per-backend caches of src/catalog.c's users.

CREATE FUNCTION persona.announce_change() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_announce_change';
COMMENT ON FUNCTION persona.announce_change() IS
    'tells every backend to drop what it cached from the trigger''s table (AFTER ... FOR EACH STATEMENT)';
