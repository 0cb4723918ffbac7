-- Checking and compiling stored expressions (src/predicate.c): segment
-- predicates and action conditions.

CREATE FUNCTION persona.compile_predicate(predicate text, source regclass,
                                          OUT sql text, OUT reads text[], OUT clock boolean)
    LANGUAGE C STABLE
    AS 'MODULE_PATHNAME', 'persona_compile_predicate';
COMMENT ON FUNCTION persona.compile_predicate(text, regclass) IS
    'checks a predicate over a source relation; returns it deparsed, the columns it reads, and whether it calls clock functions';

-- Internal, for tests and diagnosis: whether a predicate's evaluation runs in
-- a subtransaction (docs/segments.md).
CREATE FUNCTION persona.predicate_may_fail(predicate text, source regclass) RETURNS boolean
    LANGUAGE C STABLE
    AS 'MODULE_PATHNAME', 'persona_predicate_may_fail';
COMMENT ON FUNCTION persona.predicate_may_fail(text, regclass) IS
    'whether a predicate over a source relation may fail on a profile''s data (a data exception or a program limit), so that its evaluation runs in a subtransaction';

-- BEFORE INSERT OR UPDATE of persona.segments and persona.actions: the
-- stored SQL is always the checked compilation of the stored text.
CREATE FUNCTION persona.compile_definition() RETURNS trigger
    LANGUAGE C
    AS 'MODULE_PATHNAME', 'persona_compile_definition';
COMMENT ON FUNCTION persona.compile_definition() IS
    'compiles a definition row''s expression again (arguments: source view, text, sql, reads and clock columns), so no row holds unchecked SQL';
