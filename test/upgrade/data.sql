-- The data of a database as lines "table|row", for test/upgrade/run.sh to
-- diff between an upgraded and a fresh install: every row of every table
-- in scope (oid >= 16384, as in schema.sql: every table persona created),
-- as JSON, sorted, and every sequence's position.
--
-- Left out, because they differ between two databases by construction:
-- - wall-clock times written with now() when a row is written, replaced by
--   whether they are set (the list below; a new such column is added here);
-- - persona.decisions.score and the number sampled in its reason: a
--   Thompson sample, random by design (which action wins is compared: the
--   test data give competing actions distinct priorities);
-- - persona.decisions.features and persona.action_stats.model: a 0.1.0
--   database records no features with its decisions, so feedback given
--   before the upgrade teaches the counts only, not the per-person models
--   (nor the count of a model a decision's reason quotes).
--
-- With the psql variable exact set (psql -v exact=1), nothing is masked:
-- test/dump/run.sh compares a database with its restored copy, where every
-- value must come back as it was.
SET timezone = 'UTC';
SET search_path = pg_catalog;
\if :{?exact}
\set mask false
\else
\set mask true
\endif

WITH masked(rel, col, expr) AS (
    VALUES ('persona.profiles',        'created_at',  'wall clock'),
           ('persona.profiles',        'updated_at',  'wall clock'),
           ('persona.identities',      'created_at',  'wall clock'),
           ('persona.events',          'received_at', 'wall clock'),  -- in each partition
           ('persona.merges',          'merged_at',   'wall clock'),
           ('persona.trait_defs',      'created_at',  'wall clock'),
           ('persona.segments',        'created_at',  'wall clock'),
           ('persona.segment_members', 'entered_at',  'wall clock'),
           ('persona.segment_log',     'at',          'wall clock'),
           ('persona.actions',         'created_at',  'wall clock'),
           ('persona.actions',         'updated_at',  'wall clock'),
           ('persona.decisions',       'decided_at',  'wall clock'),
           ('persona.feedback',        'at',          'wall clock'),
           ('persona.content_links',   'linked_at',   'wall clock'),
           ('persona.decisions',       'score',       'sampled'),
           ('persona.decisions',       'reason',      'sampled'),
           ('persona.decisions',       'features',    'learned'),
           ('persona.action_stats',    'model',       'learned')
),
tables AS (
    SELECT c.oid, c.oid::regclass::text AS name
      FROM pg_class AS c
     WHERE c.oid >= 16384 AND c.relkind IN ('r', 'S')  -- a partitioned table's rows are its partitions'
       AND c.relnamespace <> 'pg_toast'::regnamespace
       AND c.relnamespace NOT IN (SELECT n.oid FROM pg_namespace AS n WHERE n.nspname LIKE 'pg\_temp\_%')
)
SELECT CASE WHEN c.relkind = 'S'
            THEN format($q$SELECT %L, format('last_value=%%s is_called=%%s', last_value, is_called) FROM %s$q$,
                        t.name, t.name)
            ELSE format($q$SELECT %L, r FROM (SELECT (to_jsonb(t)%s)::text AS r FROM %s AS t) AS x ORDER BY r COLLATE "C"$q$,
                        t.name,
                        (SELECT coalesce(string_agg(format(' || jsonb_build_object(%L, %s)', m.col,
                                    CASE WHEN m.expr = 'wall clock'
                                         THEN format($e$CASE WHEN t.%I IS NOT NULL THEN '(wall clock: set)' END$e$, m.col)
                                         WHEN m.col = 'reason'
                                         THEN $e$regexp_replace(regexp_replace(t.reason, 'sampled -?[0-9.]+', 'sampled (random)', 'g'),
                                                               '\(it has [0-9]+\)', '(it has (learned since the upgrade))')$e$
                                         WHEN m.expr = 'learned'
                                         THEN $e$'(learned since the upgrade)'$e$
                                         ELSE $e$'(random)'$e$ END), '' ORDER BY m.col), '')
                           FROM masked AS m
                          WHERE :mask
                            AND m.rel IN (t.name, (SELECT i.inhparent::regclass::text FROM pg_inherits AS i
                                                    WHERE i.inhrelid = t.oid))
                            AND EXISTS (SELECT FROM pg_attribute AS a
                                         WHERE a.attrelid = t.oid AND a.attname = m.col AND NOT a.attisdropped)),
                        t.name)
       END
  FROM tables AS t JOIN pg_class AS c ON c.oid = t.oid
 ORDER BY t.name COLLATE "C"
\gexec
