#!/usr/bin/env bash
# `make bench`: build and install persona, start a throwaway cluster with a
# persona_bench database and run every test/bench/*.sh against it, in order.
# Each benchmark gets the connection through PGHOST/PGPORT/PGUSER/PGDATABASE
# and finds psql and pgbench on PATH.
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

shopt -s nullglob
benches=("$ROOT"/test/bench/*.sh)
shopt -u nullglob
# BENCH="traits decide" runs only those benchmarks.
if [[ -n ${BENCH:-} ]]; then
	chosen=()
	for b in "${benches[@]}"; do
		name=$(basename "$b" .sh)
		[[ " $BENCH " == *" $name "* ]] && chosen+=("$b")
	done
	benches=("${chosen[@]}")
fi
if ((${#benches[@]} == 0)); then
	echo "bench: no benchmarks yet (test/bench/*.sh)"
	exit 0
fi

# Settings for throughput: room for the working set, and no checkpoint in
# the middle of a measurement (the benchmarks issue their own).
export PERSONA_PG_SETTINGS="shared_buffers = 1GB
max_wal_size = 4GB
checkpoint_timeout = 30min"

deps
build_install
cluster_up

export PGDATABASE=persona_bench
psql_q -d postgres -c 'CREATE DATABASE persona_bench'
psql_q -c 'CREATE EXTENSION persona'

failed=()
cd "$ROOT"
for b in "${benches[@]}"; do
	say "bench: ${b#"$ROOT"/}"
	bash "$b" || failed+=("${b#"$ROOT"/}")
done

if ((${#failed[@]} > 0)); then
	echo "bench: failed: ${failed[*]}" >&2
	exit 1
fi
