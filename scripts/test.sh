#!/usr/bin/env bash
# `make test`: build and install persona, start a throwaway cluster, run every
# suite against it (pg_regress, isolation, pgTAP, upgrade, worker, dump, crash,
# fuzz), print a summary and a final "N passed, N failed" line. Exits non-zero when
# anything failed.
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

deps
build_install
cluster_up
cd "$ROOT"

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/persona-test-logs.XXXXXX")
# shellcheck disable=SC2317 # run by the EXIT trap
rm_logs() { rm -rf -- "$LOGS"; }
on_exit rm_logs

SUITES=()
declare -A STATUS PASSED FAILED DIFFS

record() { # suite status passed failed [diff file]
	SUITES+=("$1")
	STATUS[$1]=$2
	PASSED[$1]=$3
	FAILED[$1]=$4
	DIFFS[$1]=${5:-}
	# A failed suite never reports zero failures (e.g. the runner itself broke).
	if [[ $2 == FAILED && $4 -eq 0 ]]; then
		FAILED[$1]=1
	fi
}

# A make variable as the project's Makefile defines it (see mk/harness.mk).
make_var() {
	"$MAKE" -s --no-print-directory PG_CONFIG="$PG_CONFIG" harness-var-"$1"
}

# Counts from pg_regress / pg_isolation_regress output (PG15 and TAP style):
#   All N tests passed. | N of M tests passed, K failed test(s) ignored.
#   N of M tests failed. | N of M tests failed, K of these failures ignored.
parse_regress() { # log rc -> "passed failed"
	local log=$1 rc=$2 line re_all re_ign re_fail
	re_all='All ([0-9]+) tests passed'
	re_ign='([0-9]+) of ([0-9]+) tests passed, ([0-9]+) failed test'
	re_fail='([0-9]+) of ([0-9]+) tests failed'
	line=$(grep -E "$re_all|$re_ign|$re_fail" "$log" | tail -n 1) || line=
	if [[ $line =~ $re_all ]]; then
		echo "${BASH_REMATCH[1]} 0"
	elif [[ $line =~ $re_ign ]]; then
		echo "${BASH_REMATCH[1]} 0"
	elif [[ $line =~ $re_fail ]]; then
		echo "$((BASH_REMATCH[2] - BASH_REMATCH[1])) ${BASH_REMATCH[1]}"
	elif ((rc != 0)); then
		echo "0 1" # died before its summary: count the suite as one failure
	else
		echo "0 0"
	fi
}

# pg_regress or pg_isolation_regress through PGXS's installcheck, one at a
# time (the other variable emptied) so each suite reports its own counts.
run_pgxs_suite() { # suite var other_var diffs
	local suite=$1 var=$2 other=$3 diffs=$4 tests rc=0 passed failed
	tests=$(make_var "$var")
	if [[ -z $tests ]]; then
		say "$suite: no tests defined ($var is empty), skipping"
		record "$suite" skipped 0 0
		return
	fi
	say "$suite: $(wc -w <<<"$tests") tests"
	rm -f -- "$diffs" # never show a stale diff from an earlier run
	"$MAKE" --no-print-directory PG_CONFIG="$PG_CONFIG" "$other=" installcheck 2>&1 |
		tee "$LOGS/$suite.log" || rc=$?
	read -r passed failed < <(parse_regress "$LOGS/$suite.log" "$rc")
	if ((rc == 0)); then
		record "$suite" ok "$passed" "$failed"
	else
		record "$suite" FAILED "$passed" "$failed" "$diffs"
	fi
}

run_pgtap() {
	local suite=pgtap rc=0 files total=0 failed=0 died=0 result='' line
	shopt -s nullglob
	files=(test/pgtap/*.sql)
	shopt -u nullglob
	if ((${#files[@]} == 0)); then
		say "$suite: no test/pgtap/*.sql files yet, skipping"
		record "$suite" skipped 0 0
		return
	fi
	say "$suite: ${#files[@]} files"
	psql_q -d postgres -c 'CREATE DATABASE persona_tap'
	psql_q -d persona_tap -c 'CREATE EXTENSION persona' -c 'CREATE EXTENSION pgtap'
	pg_prove --psql-bin "$(command -v psql)" -d persona_tap "${files[@]}" 2>&1 |
		tee "$LOGS/$suite.log" || rc=$?
	# Files=2, Tests=40, ... / "file (Wstat: 0 Tests: 5 Failed: 2)" / Result: PASS|FAIL
	while IFS= read -r line; do
		if [[ $line =~ ^Files=[0-9]+,\ Tests=([0-9]+) ]]; then
			total=${BASH_REMATCH[1]}
		elif [[ $line =~ \(Wstat:\ .*\ Failed:\ ([0-9]+)\)$ ]]; then
			# A failing file; one that died (bad plan, SQL error) counts once.
			failed=$((failed + BASH_REMATCH[1]))
			died=$((died + (BASH_REMATCH[1] == 0)))
		elif [[ $line =~ ^Result:\ ([A-Z]+) ]]; then
			result=${BASH_REMATCH[1]}
		fi
	done <"$LOGS/$suite.log"
	if ((rc == 0)) && [[ $result == PASS ]]; then
		record "$suite" ok "$total" 0
	else
		record "$suite" FAILED "$((total - failed))" "$((failed + died))"
	fi
}

# A script that prints "ok N - ..." / "not ok N - ..." lines: one suite row.
# A script that checked nothing has failed too.
run_ok_script() { # suite command...
	local suite=$1 rc=0 passed failed
	shift
	"$@" 2>&1 | tee "$LOGS/$suite.log" || rc=$?
	passed=$(grep -c '^ok ' "$LOGS/$suite.log") || passed=0
	failed=$(grep -c '^not ok ' "$LOGS/$suite.log") || failed=0
	if ((rc == 0 && failed == 0 && passed > 0)); then
		record "$suite" ok "$passed" 0
	else
		record "$suite" FAILED "$passed" "$failed"
	fi
}

# test/worker/run.sh: examples/worker.py and examples/worker.c against this cluster.
run_worker() {
	say "worker: examples/worker.py and examples/worker.c"
	run_ok_script worker bash test/worker/run.sh
}

# test/upgrade/run.sh: every released version upgraded to the current one
# equals a fresh install (schema and data); DROP EXTENSION leaves nothing.
run_upgrade() {
	local current released
	current=$(make_var EXTVERSION)
	read -r -a released <<<"$(make_var RELEASED)"
	say "upgrade: ${released[*]:-no released version} -> $current"
	run_ok_script upgrade bash test/upgrade/run.sh "$current" "${released[@]}"
}

# test/dump/run.sh: pg_dump, plain and custom, restored with psql and
# pg_restore, gives an exact and working copy (docs/operations.md).
run_dump() {
	say "dump: pg_dump -Fp / -Fc, restored with psql / pg_restore"
	run_ok_script dump bash test/dump/run.sh
}

# test/campaigns/crash.sh: a server crash in the middle of a campaign loses
# and duplicates nothing that was acked (it restarts the cluster: last).
run_campaign_crash() {
	say "campaign-crash: pg_ctl -m immediate in the middle of a campaign"
	run_ok_script campaign-crash bash test/campaigns/crash.sh
}

# test/crash/run.sh: SIGKILL mid-ingest, merge, backfill, segment creation
# and claim/ack storm, then the data checked (docs/operations.md). Its TAP
# tests start servers of their own from $PG_CONFIG's bindir.
run_crash() {
	say "crash: SIGKILL during ingest, merges, backfills, segment creation, claim/ack"
	run_ok_script crash bash test/crash/run.sh
}

# test/fuzz/run.sh, short: the battery's systematic pass (part of it as
# each role), 5 s of its random calls and 5 s of sqlsmith, seed 1.
run_fuzz() {
	say "fuzz: hostile calls of every persona function, then sqlsmith"
	run_ok_script fuzz env FUZZ_SECONDS="${FUZZ_SECONDS:-5}" FUZZ_SEED="${FUZZ_SEED:-1}" \
		FUZZ_ROLES="${FUZZ_ROLES:-0.3}" bash test/fuzz/run.sh
}

run_pgxs_suite pg_regress REGRESS ISOLATION regression.diffs
run_pgxs_suite isolation ISOLATION REGRESS output_iso/regression.diffs
run_pgtap
run_upgrade
run_worker
run_dump
run_crash
run_fuzz
run_campaign_crash

# Stop the cluster now so the summary is the last thing printed.
cluster_down

total_pass=0 total_fail=0 bad=0
for s in "${SUITES[@]}"; do
	if [[ ${STATUS[$s]} == FAILED && -n ${DIFFS[$s]} && -s ${DIFFS[$s]} ]]; then
		say "$s: ${DIFFS[$s]}"
		cat "${DIFFS[$s]}"
	fi
done

printf '\n%-12s %-8s %8s %8s\n' suite result passed failed
printf '%-12s %-8s %8s %8s\n' ------------ -------- -------- --------
for s in "${SUITES[@]}"; do
	printf '%-12s %-8s %8s %8s\n' "$s" "${STATUS[$s]}" "${PASSED[$s]}" "${FAILED[$s]}"
	total_pass=$((total_pass + PASSED[$s]))
	total_fail=$((total_fail + FAILED[$s]))
	[[ ${STATUS[$s]} != FAILED ]] || bad=1
done
printf '\n%d passed, %d failed\n' "$total_pass" "$total_fail"
exit "$bad"
