#!/usr/bin/env bash
# `make demo`: build and install persona, start a throwaway cluster, load the
# generated shop events (demo/generate.sql, via demo/demo.sql) and walk through
# live profiles. The cluster lives only as long as the demo.
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

deps
build_install
cluster_up

# The cluster already has an empty persona_demo (it is pg_cron's
# cron.database_name, created at start so the cron launcher finds it).
export PGDATABASE=persona_demo
psql_q -c 'CREATE EXTENSION persona'

say "running demo/demo.sql"
cd "$ROOT/demo"
psql -X -v ON_ERROR_STOP=1 -P pager=off -f demo.sql
