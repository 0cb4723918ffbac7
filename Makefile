# persona: PGXS build. `make demo`, `make test` and `make bench` live in
# mk/harness.mk; everything here is the ordinary extension build.

PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)

EXTENSION  = persona
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" persona.control)

MODULE_big = persona
OBJS = src/persona.o src/catalog.o src/rowwriter.o src/ingest.o src/idmap.o src/ingest_row.o src/ingest_apply.o src/validate.o src/traits.o src/segments.o src/decide.o

# The install script is assembled from the per-concept fragments in src/,
# in this order, so each function's declaration sits beside its C body.
SQL_FRAGMENTS = src/schema.sql src/catalog.sql src/validate.sql src/ingest.sql src/traits.sql src/segments.sql src/decide.sql src/identity.sql src/grants.sql
DATA_built = sql/persona--$(EXTVERSION).sql

REGRESS = ingest identity bad_input traits segments decide roles cancel
REGRESS_OPTS = --load-extension=persona

ISOLATION = $(sort $(basename $(notdir $(wildcard test/specs/*.spec))))
ISOLATION_OPTS = --inputdir=test --load-extension=persona

# -Wno-unused-parameter: PostgreSQL's own headers trip -Wextra's unused-parameter check.
PG_CFLAGS = -std=gnu11 -Wall -Wextra -Wno-unused-parameter \
            -Werror=implicit-function-declaration

EXTRA_CLEAN = sql/persona--$(EXTVERSION).sql results output_iso \
              regression.diffs regression.out

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

sql/persona--$(EXTVERSION).sql: $(SQL_FRAGMENTS) persona.control
	@mkdir -p sql
	{ printf '%s\n' '-- Generated from src/*.sql by the Makefile: edit those, not this.' \
	    '\echo Use "CREATE EXTENSION persona" to load this file. \quit'; \
	  for f in $(SQL_FRAGMENTS); do printf '\n-- ---- %s\n' $$f; cat $$f; done; } > $@

# Every object is rebuilt when a header changes (PGXS tracks no headers).
$(OBJS): $(wildcard src/*.h)

-include mk/harness.mk
