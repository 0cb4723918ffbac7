-- Cache invalidation for the per-backend caches of src/catalog.c's users.

CREATE FUNCTION persona.announce_change() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_announce_change';
COMMENT ON FUNCTION persona.announce_change() IS
    'tells every backend to drop what it cached from the trigger''s table (AFTER ... FOR EACH STATEMENT)';

-- The tables persona maintains refuse UPDATE, DELETE and TRUNCATE unless
-- persona.maintenance is on: persona's functions that write them set it
-- (SET clause), so a change by hand can never leave profiles, traits or
-- segments silently inconsistent (docs/operations.md). Statement-level, and
-- never fired by ingest (it inserts, and writes profiles without SQL).
CREATE FUNCTION persona.refuse_direct_change() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_refuse_direct_change';
COMMENT ON FUNCTION persona.refuse_direct_change() IS
    'refuses UPDATE, DELETE and TRUNCATE of a table persona maintains unless persona.maintenance is on (BEFORE ... FOR EACH STATEMENT)';

CREATE TRIGGER events_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.events
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
-- Statement triggers of persona.events do not fire for a statement that
-- names one of its partitions: this row trigger, cloned to every partition,
-- refuses such an UPDATE or DELETE. Dropping, detaching or truncating a
-- partition deletes no row: that is retention, and leaves profiles as they
-- are (docs/operations.md, "Events age out").
CREATE TRIGGER events_guard_row
    BEFORE UPDATE OR DELETE ON persona.events
    FOR EACH ROW EXECUTE FUNCTION persona.refuse_direct_change();
CREATE TRIGGER profiles_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.profiles
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
CREATE TRIGGER identities_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.identities
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
CREATE TRIGGER merges_guard
    BEFORE UPDATE OR DELETE OR TRUNCATE ON persona.merges
    FOR EACH STATEMENT EXECUTE FUNCTION persona.refuse_direct_change();
