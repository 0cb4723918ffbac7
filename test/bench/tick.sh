#!/usr/bin/env bash
# persona_tick at scale: a clock segment over $PROFILES profiles, against the
# same work done in plain SQL in the same run.
#
# $PROFILES people, one page_view each an hour ago, and the clock segment
# tick_active (last_seen > now() - interval '1 day'): everyone is a member.
# Then, per run, a day "passes" for 1% of them (their last_seen moved two
# days back, by hand): they are stale members, and the tick must take them
# out. Two measures, each the median of $RUNS runs:
#   - "1% due": persona_tick() with 1% stale, against plain SQL that finds
#     and deletes the stale rows of a members table (plain_members) by
#     joining it to a copy of the profiles' last_seen (plain_profiles);
#   - "nothing due": persona_tick() again, with nothing left to change,
#     against the plain query that finds nothing to delete.
# Each run checks the result (who is a member) against the predicate. Nothing
# asserts a timing. Connection from PGHOST/PGPORT/PGUSER/PGDATABASE
# (scripts/bench.sh); the database must have persona installed. It empties
# persona's tables and leaves no segment behind.
#
# Knobs (environment): BENCH_TICK_PROFILES (1000000; the issue's figure is
# 10000000), BENCH_TICK_RUNS (3).
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

PROFILES=${BENCH_TICK_PROFILES:-1000000}
RUNS=${BENCH_TICK_RUNS:-3}

# Milliseconds a statement takes (psql \timing, from a fresh connection).
timed() { # sql -> ms
	psql -X -q -v ON_ERROR_STOP=1 -c '\timing on' -c "$1" |
		sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -n 1
}

echo "== persona_tick: a clock segment over $(fmt_int "$PROFILES") profiles, 1% of them due per run, $RUNS runs"
psql_q <<SQL >/dev/null
SET client_min_messages = warning;
DO \$\$ BEGIN
  PERFORM persona_drop_segment(s.name) FROM persona.segments AS s;
END \$\$;
SET persona.maintenance = on;
TRUNCATE persona.events, persona.profiles, persona.identities, persona.merges,
         persona.segment_members, persona.segment_log;
INSERT INTO persona.events (user_id, event_type, occurred_at)
SELECT 'tick-' || u, 'page_view', now() - interval '1 hour' FROM generate_series(1, $PROFILES) AS u;
SELECT persona_create_segment('tick_active', \$p\$last_seen > now() - interval '1 day'\$p\$);
DROP TABLE IF EXISTS plain_profiles, plain_members;
CREATE TABLE plain_profiles (profile_id bigint PRIMARY KEY, last_seen timestamptz) WITH (fillfactor = 50);
INSERT INTO plain_profiles SELECT p.profile_id, p.last_seen FROM persona.profiles AS p;
CREATE TABLE plain_members (profile_id bigint PRIMARY KEY);
INSERT INTO plain_members SELECT p.profile_id FROM plain_profiles AS p;
VACUUM ANALYZE persona.profiles, persona.segment_members, plain_profiles, plain_members;
SQL
expect "members after creation" "SELECT count(*) FROM persona.segment_members WHERE segment = 'tick_active'" "$PROFILES"

PLAIN_TICK="DELETE FROM plain_members AS m USING plain_profiles AS p
             WHERE p.profile_id = m.profile_id AND NOT (p.last_seen > now() - interval '1 day')"
due_a="" due_b="" idle_a="" idle_b=""
for ((r = 1; r <= RUNS; r++)); do
	# A day passes for 1% of the people (a different 1% each run).
	psql_q -c "SET persona.maintenance = on" \
		-c "UPDATE persona.profiles SET last_seen = last_seen - interval '2 days' WHERE profile_id % 100 = $r" \
		-c "UPDATE plain_profiles SET last_seen = last_seen - interval '2 days' WHERE profile_id % 100 = $r" \
		-c 'CHECKPOINT' >/dev/null
	if ((r % 2)); then order="persona plain"; else order="plain persona"; fi
	for side in $order; do
		if [[ $side == persona ]]; then ta=$(timed 'SELECT persona_tick()'); else tb=$(timed "$PLAIN_TICK"); fi
	done
	expect "members after run $r" \
		"SELECT count(*) FILTER (WHERE m.profile_id IS NULL) + count(*) FILTER (WHERE NOT s.in_segment)
		   FROM (SELECT p.profile_id, p.last_seen > now() - interval '1 day' AS in_segment
		           FROM persona.profiles AS p) AS s
		   LEFT JOIN persona.segment_members AS m ON m.profile_id = s.profile_id AND m.segment = 'tick_active'
		  WHERE s.in_segment <> (m.profile_id IS NOT NULL)" "0"
	for side in $order; do
		if [[ $side == persona ]]; then ti=$(timed 'SELECT persona_tick()'); else tj=$(timed "$PLAIN_TICK"); fi
	done
	printf '  run %d: 1%% due: persona %9.1f ms | plain %8.1f ms | ratio %6.1fx   nothing due: persona %9.1f ms | plain %8.1f ms\n' \
		"$r" "$ta" "$tb" "$(calc "$ta / $tb")" "$ti" "$tj"
	due_a+=" $ta" due_b+=" $tb" idle_a+=" $ti" idle_b+=" $tj"
done
ma=$(median <<<"$due_a") mb=$(median <<<"$due_b") ia=$(median <<<"$idle_a") ib=$(median <<<"$idle_b")
echo "== summary (medians of $RUNS runs, $(fmt_int "$PROFILES") profiles)"
printf '  %-34s %12s %12s %9s\n' "measure" "persona" "plain" "ratio"
printf '  %-34s %9.1f ms %9.1f ms %8.1fx\n' "tick, 1% due ($(fmt_int $((PROFILES / 100))) exits)" "$ma" "$mb" "$(calc "$ma / $mb")"
printf '  %-34s %9.1f ms %9.1f ms %8.1fx\n' "tick, nothing due" "$ia" "$ib" "$(calc "$ia / $ib")"
psql_q -c "SELECT persona_drop_segment('tick_active')" -c 'DROP TABLE plain_profiles, plain_members' >/dev/null
