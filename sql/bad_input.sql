-- Bad input: each a clear error with a precise SQLSTATE, and nothing written.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET timezone = 'UTC';

-- No id at all (22004).
SELECT persona_track(NULL, 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
INSERT INTO persona.events (event_type) VALUES ('page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Empty and over-long ids (22023, 22001).
SELECT persona_track('', 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_track(NULL, 'page_view', anonymous_id => '');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_track(repeat('x', 256), 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Empty, NULL and over-long event_type (22023, 22004, 22001).
SELECT persona_track('u-bad', '');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_track('u-bad', NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_track('u-bad', repeat('e', 129));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- properties / context that are not JSON objects (22023) or NULL (22004).
SELECT persona_track('u-bad', 'page_view', '[1, 2]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_track('u-bad', 'page_view', '"text"');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_track('u-bad', 'page_view', '{}', now(), '42');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_track('u-bad', 'page_view', NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_track('u-bad', 'page_view', '{}', now(), NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- NULL or infinite occurred_at (22004, 22008).
SELECT persona_track('u-bad', 'page_view', '{}', NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_track('u-bad', 'page_view', '{}', 'infinity');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- An oversized payload (54000).
SELECT persona_track('u-bad', 'page_view', jsonb_build_object('blob', repeat('x', 70000)));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- One bad row fails the whole statement: the good rows are not written.
INSERT INTO persona.events (user_id, event_type)
VALUES ('u-bad', 'page_view'), ('u-bad', 'page_view'), (NULL, 'page_view');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
COPY persona.events (user_id, event_type, properties) FROM stdin;
u-bad	page_view	{}
u-bad	page_view	[]
\.

-- identify: NULL user_id (22004), empty (22023), traits not an object
-- (22023) or NULL (22004), oversized traits (54000), bad anonymous id.
SELECT persona_identify(NULL, '{"a": 1}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_identify('', '{"a": 1}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_identify('u-bad', '[1]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_identify('u-bad', NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_identify('u-bad', jsonb_build_object('blob', repeat('x', 70000)));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_identify('u-bad', '{}', '');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_identify('u-bad', '{}', repeat('a', 300));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- alias and forget need their ids (22004).
SELECT persona_alias(NULL, 'anon-bad');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_alias('u-bad', NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_forget(NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Nothing of the above was written.
SELECT (SELECT count(*) FROM persona.events WHERE user_id = 'u-bad' OR anonymous_id = 'anon-bad') AS events,
       (SELECT count(*) FROM persona.profiles WHERE user_id = 'u-bad') AS profiles,
       (SELECT count(*) FROM persona.identities WHERE id IN ('u-bad', 'anon-bad')) AS identities;

-- The payload limit is a setting.
SET persona.max_event_bytes = '256kB';
SELECT persona_track('u-big', 'page_view', jsonb_build_object('blob', repeat('x', 70000))) > 0 AS tracked;
RESET persona.max_event_bytes;
-- The persona.* prefix is reserved: a typo is an error, not a silent no-op.
SET persona.max_event_byte = 1;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
