-- Linked content (render.c): tables whose rows content templates read when
-- they are rendered, as {{name[key].column}}, and rendering a message now.

CREATE TABLE persona.content_links (
    name       text        COLLATE "C" PRIMARY KEY
               CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$'),
    relation   regclass    NOT NULL,
    key_column text        NOT NULL,
    linked_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE persona.content_links IS
    'linked content: name -> the table and unique key column that {{name[key].column}} placeholders read (persona_link_content)';
COMMENT ON COLUMN persona.content_links.relation IS
    'the source table; it follows a rename, and a dropped one is an error at render';
COMMENT ON COLUMN persona.content_links.key_column IS
    'the unique column the key is matched against, by name';
SELECT pg_catalog.pg_extension_config_dump('persona.content_links', '');
-- Rendering caches the links per backend; changes reach every backend.
CREATE TRIGGER content_links_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON persona.content_links
    FOR EACH STATEMENT EXECUTE FUNCTION persona.announce_change();

CREATE FUNCTION @extschema@.persona_link_content(name text, relation regclass, key_column text)
    RETURNS void
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_link_content';
COMMENT ON FUNCTION @extschema@.persona_link_content(text, regclass, text) IS
    'makes a table with a unique key column a source of linked content, read as {{name[key].column}} in content templates; linking a name again points it at the new source';

CREATE FUNCTION @extschema@.persona_render(message_id bigint)
    RETURNS jsonb
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_render';
COMMENT ON FUNCTION @extschema@.persona_render(bigint) IS
    'a message''s content rendered now (open time): its action''s content with the person''s current traits, its triggering event and linked content read now as the caller';
