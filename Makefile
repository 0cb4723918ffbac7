# persona: PGXS build. `make demo`, `make test` and `make bench` live in
# mk/harness.mk; everything here is the ordinary extension build.

PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)

EXTENSION  = persona
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" persona.control)

MODULE_big = persona
OBJS = src/persona.o src/catalog.o src/defcache.o src/rowwriter.o src/validate.o src/ingest.o src/idmap.o src/ingest_row.o src/ingest_apply.o src/track.o src/traits.o src/predicate.o src/profile.o src/segments.o src/decide.o src/bandit.o src/render.o src/outbox.o src/triggers.o src/enqueue.o src/announcer.o src/experiments.o src/sendtime.o src/models.o src/campaigns.o src/clock.o

# The current version's install script is assembled from the per-concept
# fragments in src/, in this order, so each function's declaration sits
# beside its C body.
SQL_FRAGMENTS = src/schema.sql src/catalog.sql src/validate.sql src/ingest.sql src/retention.sql src/traits.sql src/predicate.sql src/segments.sql src/decide.sql src/render.sql src/campaigns.sql src/outbox.sql src/sendtime.sql src/triggers.sql src/experiments.sql src/models.sql src/identity.sql src/registry.sql src/grants.sql
DATA_built = sql/persona--$(EXTVERSION).sql

# Released versions: their install scripts are frozen, tracked files (never
# generated, never edited), installed beside every upgrade script
# persona--A--B.sql, so that `CREATE EXTENSION persona VERSION '0.1.0'` and
# `ALTER EXTENSION persona UPDATE` work from any of them. Releasing a version
# adds it here (see docs/development.md).
RELEASED = 0.1.0
DATA = $(foreach v,$(RELEASED),sql/persona--$(v).sql) \
       $(sort $(wildcard sql/persona--*--*.sql))
ifneq ($(filter $(EXTVERSION),$(RELEASED)),)
$(error default_version $(EXTVERSION) in persona.control is released (RELEASED): its install script is frozen; set default_version to the next version (docs/development.md))
endif

REGRESS = ingest identity bad_input traits segments decide bandit delivery triggers render experiments sendtime models roles operations cancel campaigns track
REGRESS_OPTS = --load-extension=persona

ISOLATION = $(sort $(basename $(notdir $(wildcard test/specs/*.spec))))
ISOLATION_OPTS = --inputdir=test --load-extension=persona

# -Wno-unused-parameter: PostgreSQL's own headers trip -Wextra's unused-parameter check.
PG_CFLAGS = -std=gnu11 -Wall -Wextra -Wno-unused-parameter \
            -Werror=implicit-function-declaration
# CI turns every warning into an error (.ci/run sets PERSONA_WERROR=1); a
# plain `make` does not, so that a newer compiler's new warning never stops
# a user's build.
ifeq ($(PERSONA_WERROR),1)
PG_CFLAGS += -Werror
endif

EXTRA_CLEAN = $(DATA_built) results output_iso \
              regression.diffs regression.out

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

sql/persona--$(EXTVERSION).sql: $(SQL_FRAGMENTS) persona.control
	@mkdir -p sql
	{ printf '%s\n' '-- Generated from src/*.sql by the Makefile: edit those, not this.' \
	    '\echo Use "CREATE EXTENSION persona" to load this file. \quit'; \
	  for f in $(SQL_FRAGMENTS); do printf '\n-- ---- %s\n' $$f; cat $$f; done; } > $@

# `make worker` builds examples/worker, the outbox worker in C on libpq
# (docs/delivery.md); it is an example, never installed. libpq's headers
# come from libpq-dev (pkg-config), or pg_config's include directory.
WORKER_CFLAGS = -std=gnu11 -O2 -g -Wall -Wextra -Wno-unused-parameter \
                $(if $(filter 1,$(PERSONA_WERROR)),-Werror)
WORKER_CPPFLAGS = $(or $(shell pkg-config --cflags libpq 2>/dev/null),-I$(shell $(PG_CONFIG) --includedir))
WORKER_LIBS = $(or $(shell pkg-config --libs libpq 2>/dev/null),-L$(shell $(PG_CONFIG) --libdir) -lpq)
.PHONY: worker
worker: examples/worker
examples/worker: examples/worker.c
	$(CC) $(WORKER_CFLAGS) $(WORKER_CPPFLAGS) -o $@ $< $(WORKER_LIBS)
EXTRA_CLEAN += examples/worker

# Every object is rebuilt when a header changes (PGXS tracks no headers).
$(OBJS): $(wildcard src/*.h)

-include mk/harness.mk

# `make indent` formats src/*.c and src/*.h as pgindent does, with the
# typedefs list src/typedefs.list regenerated from the objects; `make
# indent-check` only shows what it would change (docs/development.md).
.PHONY: indent indent-check
indent: $(OBJS)
	@bash scripts/indent.sh
indent-check: $(OBJS)
	@bash scripts/indent.sh --check
