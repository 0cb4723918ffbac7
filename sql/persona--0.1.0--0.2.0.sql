\echo Use "ALTER EXTENSION persona UPDATE TO '0.2.0'" to load this file. \quit

-- persona 0.1.0 -> 0.2.0. Every change to an SQL object in src/*.sql since
-- 0.1.0 appends its upgrade statements here, under a comment naming the
-- change (docs/development.md has the rules). `make test` checks that 0.1.0
-- upgraded with this script equals a fresh install of 0.2.0, schema and
-- data (test/upgrade/run.sh).
