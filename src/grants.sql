-- Privileges: nothing is left to PUBLIC. docs/roles.md has the GRANT recipe
-- for the ingest, reader and admin roles.

REVOKE ALL ON FUNCTION @extschema@.persona_track(text, text, jsonb, timestamptz, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_identify(text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_alias(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_profile(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_forget(text) FROM PUBLIC;

REVOKE ALL ON FUNCTION persona.events_resolve() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.events_apply() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_id(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.apply_traits(jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.resolve(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.ensure_profile(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.merge(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.link(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.max_event_bytes() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.identities_changed() FROM PUBLIC;
