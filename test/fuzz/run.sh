#!/usr/bin/env bash
# Fuzzing (docs/operations.md, "Fuzzing"): the battery of hostile calls of
# every persona function (test/fuzz/battery.py), then sqlsmith's random
# queries, against a database with persona installed and data loaded.
#
#   test/fuzz/run.sh                     (the `fuzz` row of `make test`: short)
#   FUZZ_SECONDS=600 test/fuzz/run.sh    (`make fuzz`: as long as you like)
#
# Runs against the server in the PG* environment (scripts/cluster.sh's
# env.sh), whose log is $PERSONA_CLUSTER_DIR/postgres.log or FUZZ_LOG.
# Knobs:
#   FUZZ_SECONDS  time for each part: the battery's random calls after its
#                 systematic pass, then sqlsmith (default 10)
#   FUZZ_SEED     the seed of both (default 1): the same seed makes the same
#                 calls and queries in the same order
#   FUZZ_ROLES    share of the systematic hostile calls repeated as each role
#                 of docs/roles.md (default 1; make test uses less)
# Prints "ok N - ..." / "not ok N - ..." lines; exits non-zero on a failure:
# a backend that crashed (the server log's "terminated by signal", PANIC,
# TRAP, or a lost connection), an XX000 internal error, a statement that
# timed out, a failed call that changed data, or amcheck findings.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECONDS_EACH=${FUZZ_SECONDS:-10}
SEED=${FUZZ_SEED:-1}
LOG=${FUZZ_LOG:-${PERSONA_CLUSTER_DIR:-}/postgres.log}
DB=persona_fuzz
SMITH=fuzz_smith
PY=/usr/bin/python3

[[ -r $LOG ]] || { echo "fuzz: cannot read the server log '$LOG' (set FUZZ_LOG)" >&2; exit 1; }
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
psql_q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

cleanup() {
	psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1
	for role in $SMITH fuzz_admin fuzz_ingest fuzz_decider fuzz_worker fuzz_reader; do
		psql -X -q -d postgres -c "DROP ROLE IF EXISTS $role" >/dev/null 2>&1
	done
}
trap cleanup EXIT
cleanup
psql_q -d postgres -c "CREATE DATABASE $DB" || exit 1
start=$(stat -c %s "$LOG")

# 1. The battery: prints its own ok lines and "1..N".
rc=0
out=$("$PY" "$HERE/battery.py" --db "$DB" --log "$LOG" --seconds "$SECONDS_EACH" \
	--seed "$SEED" --role-share "${FUZZ_ROLES:-1}" 2>&1) || rc=$?
printf '%s\n' "$out" | grep -v '^1\.\.'
n=$(printf '%s\n' "$out" | sed -n 's/^1\.\.\([0-9]*\)$/\1/p')
n=${n:-0}
failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
((rc == 0)) || not_ok "the battery ran to its end and passed (exit status $rc)"

# 2. sqlsmith, as a login role with the recipe's persona_admin rights (a
#    superuser would let it call pg_terminate_backend, lo_export and the
#    like), with its own seed, for FUZZ_SECONDS.
psql_q -d postgres -c "CREATE ROLE $SMITH LOGIN IN ROLE fuzz_admin" || exit 1
# The SQLSTATE and the C source location of every error go to the log.
psql_q -d postgres -c "ALTER ROLE $SMITH SET log_error_verbosity = verbose" || exit 1
smith_out=$(mktemp "${TMPDIR:-/tmp}/persona-sqlsmith.XXXXXX")
trap 'cleanup; rm -f -- "$smith_out"' EXIT
before=$(psql -X -At -d "$DB" -c 'SELECT count(*) FROM persona.events')
timeout --signal=INT --kill-after=10 "$SECONDS_EACH" \
	sqlsmith --target="host=$PGHOST port=$PGPORT dbname=$DB user=$SMITH" \
	--seed="$SEED" --exclude-catalog --max-queries=1000000 --verbose >"$smith_out" 2>&1
# --verbose: on SIGINT it prints "queries: N" and the errors it met, by count.
queries=$(sed -n 's/^queries: \([0-9]*\)$/\1/p' "$smith_out" | tail -n 1)
if [[ ${queries:-0} -gt 0 ]]; then
	ok "sqlsmith ran for ${SECONDS_EACH}s, seed $SEED: $queries queries"
else
	tail -n 20 "$smith_out" | sed 's/^/# /'
	not_ok "sqlsmith ran and sent queries"
fi
# Its last summary: the errors it met, by count.
awk '/^queries: / { buf = ""; next } /^[0-9]+\t/ { buf = buf $0 "\n" } END { printf "%s", buf }' "$smith_out" |
	sort -rn | head -n 15 | sed 's/^/# /'
after=$(psql -X -At -d "$DB" -c 'SELECT count(*) FROM persona.events')
echo "# persona.events: $before rows before sqlsmith, $after after"

# An internal error (XX000) raised in persona's C code is a finding; one of
# PostgreSQL's own (sqlsmith finds those too) is only shown.
internal=$(tail -c +"$((start + 1))" "$LOG" |
	awk '/ERROR:  XX000:/ { want = 1 } want && /LOCATION:/ { sub(/.*LOCATION: +/, ""); print; want = 0 }' |
	sort | uniq -c)
ours=$(cd "$HERE/../../src" && printf '%s|' *.c)
ours=${ours%|}
if [[ -n $internal ]]; then
	while read -r line; do echo "# XX000 (times, where): $line"; done <<<"$internal"
fi
if grep -qE ", ($ours):[0-9]+$" <<<"$internal"; then
	not_ok "sqlsmith met no internal error (XX000) raised in persona's C code"
else
	ok "sqlsmith met no internal error (XX000) raised in persona's C code"
fi

if pg_isready -q -t 30; then
	ok "the server is up after the fuzzing"
else
	not_ok "the server is up after the fuzzing"
fi
bad=$(tail -c +"$((start + 1))" "$LOG" | grep -E 'terminated by signal|PANIC|TRAP:' | head -n 20)
if [[ -z $bad ]]; then
	ok "the server log shows no backend terminated by a signal, PANIC or TRAP (battery and sqlsmith)"
else
	printf '# log: %s\n' "$bad"
	not_ok "the server log shows no backend terminated by a signal, PANIC or TRAP (battery and sqlsmith)"
fi
# shellcheck disable=SC2016 # SQL, not the shell
# Equal, unless sqlsmith happened to call persona.drop_events_before (events
# fewer than before): retention leaves profiles as they were, so then no
# profile counts fewer events than it has.
if ((after < before)); then cmp='<' what='at least its events (events were dropped by retention)'; else cmp='<>' what='its events'; fi
res=$(psql -X -At -v ON_ERROR_STOP=1 -d "$DB" -c "
SELECT count(*) FROM persona.profiles AS p
 WHERE p.event_count $cmp (SELECT count(*) FROM persona.events AS e WHERE e.profile_id = p.profile_id)" 2>&1)
if [[ $res == 0 ]]; then
	ok "after sqlsmith, every profile's event_count equals $what"
else
	not_ok "after sqlsmith, every profile's event_count equals $what: $res"
fi
res=$(psql -X -At -v ON_ERROR_STOP=1 -d "$DB" -c "
SELECT c.relname || ': ' || v.msg
  FROM pg_class AS c, LATERAL verify_heapam(c.oid, check_toast => true) AS v
 WHERE c.relnamespace = 'persona'::regnamespace AND c.relkind IN ('r', 'm')" -c "
SELECT count(bt_index_check(c.oid, true)) FILTER (WHERE false)
  FROM pg_class AS c JOIN pg_am AS a ON a.oid = c.relam
 WHERE c.relnamespace = 'persona'::regnamespace AND c.relkind = 'i' AND a.amname = 'btree'" 2>&1)
if [[ $res == 0 ]]; then
	ok "after sqlsmith, amcheck finds nothing on any persona relation"
else
	not_ok "after sqlsmith, amcheck finds nothing on any persona relation: $res"
fi

echo "1..$n"
((failed == 0))
