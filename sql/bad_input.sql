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

-- The same rule, the same SQLSTATE and message, at every entry point (C and
-- PL/pgSQL alike): each call's SQLSTATE and message, side by side.
CREATE FUNCTION pg_temp.error_of(call text) RETURNS text
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE call;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ' ' || SQLERRM;
END
$$;
SELECT rule, pg_temp.error_of(call) AS error, call
  FROM (VALUES
    ('id NULL', $$SELECT persona_identify(NULL)$$),
    ('id NULL', $$SELECT persona_alias(NULL, 'anon-bad')$$),
    ('id NULL', $$SELECT persona_forget(NULL)$$),
    ('id NULL', $$SELECT persona_decide(NULL)$$),
    ('id NULL', $$SELECT persona_in_segment(NULL, 'seg')$$),
    ('id empty', $$SELECT persona_track('', 'page_view')$$),
    ('id empty', $$INSERT INTO persona.events (user_id, event_type) VALUES ('', 'page_view')$$),
    ('id empty', $$SELECT persona_identify('')$$),
    ('id empty', $$SELECT persona_alias('', 'anon-bad')$$),
    ('id empty', $$SELECT persona_forget('')$$),
    ('id empty', $$SELECT persona_decide('')$$),
    ('id empty', $$SELECT persona_in_segment('', 'seg')$$),
    ('id too long', $$SELECT persona_track(repeat('x', 256), 'page_view')$$),
    ('id too long', $$INSERT INTO persona.events (user_id, event_type) VALUES (repeat('x', 256), 'page_view')$$),
    ('id too long', $$SELECT persona_identify(repeat('x', 256))$$),
    ('id too long', $$SELECT persona_alias('u-bad', repeat('x', 256))$$),
    ('id too long', $$SELECT persona_forget(repeat('x', 256))$$),
    ('id too long', $$SELECT persona_decide(repeat('x', 256))$$),
    ('id too long', $$SELECT persona_in_segment(repeat('x', 256), 'seg')$$),
    ('event type NULL', $$SELECT persona_track('u-bad', NULL)$$),
    ('event type NULL', $$SELECT persona_define_trait('t_bad', 'count', NULL)$$),
    ('event type empty', $$SELECT persona_track('u-bad', '')$$),
    ('event type empty', $$SELECT persona_define_trait('t_bad', 'count', '')$$),
    ('event type too long', $$SELECT persona_track('u-bad', repeat('e', 129))$$),
    ('event type too long', $$INSERT INTO persona.events (user_id, event_type) VALUES ('u-bad', repeat('e', 129))$$),
    ('event type too long', $$SELECT persona_define_trait('t_bad', 'count', repeat('e', 129))$$),
    ('name NULL', $$SELECT persona_create_segment(NULL, 'true')$$),
    ('name NULL', $$SELECT persona_in_segment('u-bad', NULL)$$),
    ('name NULL', $$SELECT persona_create_action(NULL, 'web', '{}')$$),
    ('name empty', $$SELECT persona_create_segment('', 'true')$$),
    ('name empty', $$SELECT persona_in_segment('u-bad', '')$$),
    ('name empty', $$SELECT persona_create_action('', 'web', '{}')$$),
    ('name too long', $$SELECT persona_create_segment(repeat('s', 201), 'true')$$),
    ('name too long', $$SELECT persona_in_segment('u-bad', repeat('s', 201))$$),
    ('name too long', $$SELECT persona_create_action(repeat('s', 201), 'web', '{}')$$),
    ('object NULL', $$SELECT persona_track('u-bad', 'page_view', NULL)$$),
    ('object NULL', $$SELECT persona_identify('u-bad', NULL)$$),
    ('object NULL', $$SELECT persona_decide('u-bad', NULL)$$),
    ('object NULL', $$SELECT persona_create_action('a_bad', 'web', NULL)$$),
    ('object NULL', $$SELECT persona_update_action('a_bad', NULL)$$),
    ('not an object', $$SELECT persona_track('u-bad', 'page_view', '[1]')$$),
    ('not an object', $$INSERT INTO persona.events (user_id, event_type, context) VALUES ('u-bad', 'page_view', '"x"')$$),
    ('not an object', $$SELECT persona_identify('u-bad', '[1]')$$),
    ('not an object', $$SELECT persona_decide('u-bad', '"x"')$$),
    ('not an object', $$SELECT persona_create_action('a_bad', 'web', '[1]')$$),
    ('not an object', $$SELECT persona_update_action('a_bad', '42')$$)
  ) AS c(rule, call);

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

-- A trait state that is not one is refused, whoever passes it: the text of
-- a first/last trait that is not valid in the database's encoding (found by
-- the fuzz battery, test/fuzz) is as corrupt as a short read.
SELECT persona_define_trait('bi_sku', 'last', 'bi_cart', 'sku');
SELECT persona_track('u-bi', 'bi_cart', '{"sku": "zzzzzz"}') > 0 AS tracked;
SELECT t.trait_id AS bi_trait, p.computed_state AS bi_state
  FROM persona.profiles AS p, persona.trait_defs AS t
 WHERE p.user_id = 'u-bi' AND t.name = 'bi_sku' \gset
SELECT persona.trait_text(:'bi_state', :bi_trait);
SELECT persona.trait_text(decode(replace(encode(:'bi_state', 'hex'), '7a7a7a7a7a7a', 'c328c328c328'), 'hex'), :bi_trait);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona.trait_text(decode(replace(encode(:'bi_state', 'hex'), '7a7a7a7a7a7a', '7a007a7a7a7a'), 'hex'), :bi_trait);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona.traits_json(decode(replace(encode(:'bi_state', 'hex'), '7a7a7a7a7a7a', 'c328c328c328'), 'hex'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_drop_trait('bi_sku');
