#!/usr/bin/env bash
# persona_tick at scale: a clock segment over $PROFILES profiles, against the
# same work done in plain SQL in the same run.
#
# $PROFILES people, one page_view each an hour ago, and a clock segment on
# last_seen > now() - interval '1 day': everyone is a member. Then, per run,
# two days "pass" for 1% of them: their first_seen, last_seen and
# next_change_at are moved two days back, by hand, as they would be had two
# days passed for them alone. They are stale members, and the tick must take
# them out. The same predicate twice, one after the other:
#   - "derived": as written; its flip times are derived (src/clock.c), and
#     the tick visits only the profiles due (an index range);
#   - "read in full": written (...) IS TRUE, which is not derived, so the
#     tick reads every profile to find the stale ones (the tick of before).
# Two measures for each, each the median of $RUNS runs:
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

echo "== persona_tick: a clock segment over $(fmt_int "$PROFILES") profiles, 1% of them due per run, $RUNS runs, derived and read in full"
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
DROP TABLE IF EXISTS plain_profiles, plain_members;
CREATE TABLE plain_profiles (profile_id bigint PRIMARY KEY, last_seen timestamptz) WITH (fillfactor = 50);
INSERT INTO plain_profiles SELECT p.profile_id, p.last_seen FROM persona.profiles AS p;
CREATE TABLE plain_members (profile_id bigint PRIMARY KEY);
SQL

PLAIN_TICK="DELETE FROM plain_members AS m USING plain_profiles AS p
             WHERE p.profile_id = m.profile_id AND NOT (p.last_seen > now() - interval '1 day')"
declare -A med

# One phase: the segment created (everyone a member), $RUNS runs, medians
# into med[$1.*], the segment dropped.
phase() { # label predicate first-run
	local label=$1 r order side ta tb ti tj due_a="" due_b="" idle_a="" idle_b=""
	psql_q -c "SELECT persona_create_segment('tick_active', \$p\$$2\$p\$)" -c 'TRUNCATE plain_members' \
		-c "INSERT INTO plain_members SELECT p.profile_id FROM plain_profiles AS p
		     WHERE p.last_seen > now() - interval '1 day'" \
		-c 'VACUUM ANALYZE persona.profiles, persona.segment_members, plain_profiles, plain_members' >/dev/null
	expect "members after creation" "SELECT count(*) FROM persona.segment_members WHERE segment = 'tick_active'" \
		"$(val "SELECT count(*) FROM persona.profiles WHERE last_seen > now() - interval '1 day'")"
	for ((r = $3; r < $3 + RUNS; r++)); do
		# Two days pass for 1% of the people (a different 1% each run,
		# and each phase).
		psql_q -c "SET persona.maintenance = on" \
			-c "UPDATE persona.profiles SET first_seen = first_seen - interval '2 days',
			           last_seen = last_seen - interval '2 days', next_change_at = next_change_at - interval '2 days'
			     WHERE profile_id % 100 = $r" \
			-c "UPDATE plain_profiles SET last_seen = last_seen - interval '2 days' WHERE profile_id % 100 = $r" \
			-c 'CHECKPOINT' >/dev/null
		if ((r % 2)); then order="persona plain"; else order="plain persona"; fi
		for side in $order; do
			if [[ $side == persona ]]; then ta=$(timed 'SELECT persona_tick()'); else tb=$(timed "$PLAIN_TICK"); fi
		done
		expect "members after run $r ($label)" \
			"SELECT count(*) FILTER (WHERE m.profile_id IS NULL) + count(*) FILTER (WHERE NOT s.in_segment)
			   FROM (SELECT p.profile_id, p.last_seen > now() - interval '1 day' AS in_segment
			           FROM persona.profiles AS p) AS s
			   LEFT JOIN persona.segment_members AS m ON m.profile_id = s.profile_id AND m.segment = 'tick_active'
			  WHERE s.in_segment <> (m.profile_id IS NOT NULL)" "0"
		for side in $order; do
			if [[ $side == persona ]]; then ti=$(timed 'SELECT persona_tick()'); else tj=$(timed "$PLAIN_TICK"); fi
		done
		printf '  %s, run %d: 1%% due: persona %9.1f ms | plain %8.1f ms | ratio %6.1fx   nothing due: persona %9.1f ms | plain %8.1f ms\n' \
			"$label" "$r" "$ta" "$tb" "$(calc "$ta / $tb")" "$ti" "$tj"
		due_a+=" $ta" due_b+=" $tb" idle_a+=" $ti" idle_b+=" $tj"
	done
	med[$label.due_a]=$(median <<<"$due_a") med[$label.due_b]=$(median <<<"$due_b")
	med[$label.idle_a]=$(median <<<"$idle_a") med[$label.idle_b]=$(median <<<"$idle_b")
	psql_q -c "SELECT persona_drop_segment('tick_active')" >/dev/null
}

phase "read in full" "(last_seen > now() - interval '1 day') IS TRUE" 1
phase "derived" "last_seen > now() - interval '1 day'" $((RUNS + 1))

echo "== summary (medians of $RUNS runs, $(fmt_int "$PROFILES") profiles)"
printf '  %-48s %12s %12s %9s\n' "measure" "persona" "plain" "ratio"
for label in "read in full" "derived"; do
	printf '  %-48s %9.1f ms %9.1f ms %8.1fx\n' "tick, $label, 1% due ($(fmt_int $((PROFILES / 100))) exits)" \
		"${med[$label.due_a]}" "${med[$label.due_b]}" "$(calc "${med[$label.due_a]} / ${med[$label.due_b]}")"
	printf '  %-48s %9.1f ms %9.1f ms %8.1fx\n' "tick, $label, nothing due" \
		"${med[$label.idle_a]}" "${med[$label.idle_b]}" "$(calc "${med[$label.idle_a]} / ${med[$label.idle_b]}")"
done
printf '  %-48s %8.1fx\n' "derived vs read in full, 1% due" "$(calc "${med[read in full.due_a]} / ${med[derived.due_a]}")"
psql_q -c 'DROP TABLE plain_profiles, plain_members' >/dev/null
