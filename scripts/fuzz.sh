#!/usr/bin/env bash
# `make fuzz`: build and install persona, start a throwaway cluster and run
# test/fuzz/run.sh against it: the battery of hostile calls of every persona
# function, then sqlsmith. FUZZ_SECONDS (default 300) is the time of each
# part after the battery's systematic pass; FUZZ_SEED (default: the time)
# the seed of both, printed so that a run can be repeated.
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

deps
build_install
cluster_up
cd "$ROOT"
export FUZZ_SECONDS=${FUZZ_SECONDS:-300}
export FUZZ_SEED=${FUZZ_SEED:-$(date +%s)}
say "fuzz: ${FUZZ_SECONDS}s of random calls and ${FUZZ_SECONDS}s of sqlsmith, seed $FUZZ_SEED"
rc=0
bash test/fuzz/run.sh || rc=$?
cluster_down
if ((rc == 0)); then
	say "fuzz: no crash, no internal error (seed $FUZZ_SEED)"
else
	say "fuzz: FAILED (seed $FUZZ_SEED: FUZZ_SEED=$FUZZ_SEED make fuzz repeats it)"
fi
exit "$rc"
