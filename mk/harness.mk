# Harness targets: throwaway-cluster test, demo and benchmark runs.
# Included by the top-level Makefile after $(PGXS); the work is in scripts/.
# The leading + marks the recipes recursive, so the scripts' own make calls
# share this make's jobserver and flags.

HARNESS_PG_CONFIG = $(or $(PG_CONFIG),/usr/lib/postgresql/15/bin/pg_config)
HARNESS_RUN = +@MAKE='$(MAKE)' PG_CONFIG='$(HARNESS_PG_CONFIG)' bash

.PHONY: demo test bench fuzz

# Every suite (pg_regress, isolation, pgTAP) against a throwaway cluster;
# ends with a summary table and "N passed, N failed".
test:
	$(HARNESS_RUN) scripts/test.sh

# Loads demo/generate.sql and walks through demo/demo.sql (under a minute).
demo:
	$(HARNESS_RUN) scripts/demo.sh

# The fuzz battery and sqlsmith against a throwaway cluster, FUZZ_SECONDS
# (default 300) each; FUZZ_SEED repeats a run.
fuzz:
	$(HARNESS_RUN) scripts/fuzz.sh

# Runs test/bench/*.sh against a throwaway cluster.
bench:
	$(HARNESS_RUN) scripts/bench.sh

# For scripts/test.sh: the value of a make variable, e.g. `make -s harness-var-REGRESS`.
harness-var-%:
	@echo '$($*)'
