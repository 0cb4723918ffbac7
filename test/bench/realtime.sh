#!/usr/bin/env bash
# The real-time path: one event per transaction, as an application sends
# them, with computed traits and segments, against a one-row INSERT into a
# plain table in the same run.
#
# $USERS known users, each with a profile and two add_to_cart events worth
# 600 to 1,398 in all, so that every user is in all 4 segments and stays
# there: the steady state of a running site, where an event re-evaluates
# the segments it can change and rarely changes a membership. (Entries and
# exits cost a member row, a log row and a notification each: segments.sh
# measures them in bulk.)
# pgbench, $CLIENTS clients: persona_track('user-N', 'add_to_cart',
# '{"price": P}') against INSERT INTO plain (same columns, defaults and
# indexes as persona.events, no triggers). Setups, each measured durable
# (synchronous_commit = on) and without the fsync wait (off, for both
# sides: the CPU cost shows):
#   - no traits, no segments;
#   - 3 traits (count, sum(price), 7-day count);
#   - 4 segments over those traits (the 4 of segments.sh's bulk case);
#   - 3 traits + 4 segments.
# Every figure is the median of $RUNS runs per side, the sides alternating
# (ABBA). Nothing asserts a timing; the script fails only when something
# errors or persona's tables end up wrong. Connection from
# PGHOST/PGPORT/PGUSER/PGDATABASE (scripts/bench.sh); the database must
# have persona installed. It empties persona's tables and leaves no trait or
# segment behind.
#
# Knobs (environment): BENCH_RT_USERS (100000), BENCH_RT_RUNS (3 per side and
# setup), BENCH_RT_SECONDS (8 s per pgbench run), BENCH_RT_CLIENTS (2),
# BENCH_RT_SETUPS ("none traits segments both"), BENCH_RT_COMMIT ("on off").
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

USERS=${BENCH_RT_USERS:-100000}
RUNS=${BENCH_RT_RUNS:-3}
SECONDS_PER_RUN=${BENCH_RT_SECONDS:-8}
CLIENTS=${BENCH_RT_CLIENTS:-2}
SETUPS=${BENCH_RT_SETUPS:-none traits segments both}
COMMITS=${BENCH_RT_COMMIT:-on off}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/persona-bench-rt.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT

TRAITS="SELECT persona_define_trait('rt_carts', 'count', 'add_to_cart');
SELECT persona_define_trait('rt_cart_value', 'sum', 'add_to_cart', 'price');
SELECT persona_define_trait('rt_carts_7d', 'count', 'add_to_cart', time_window => '7 days');"
SEGMENTS="SELECT persona_create_segment('rt_frequent', 'rt_carts >= 2');
SELECT persona_create_segment('rt_big_cart', 'rt_cart_value > 500');
SELECT persona_create_segment('rt_recent', 'rt_carts_7d >= 2');
SELECT persona_create_segment('rt_warm', 'rt_cart_value > 200 AND rt_carts_7d >= 1');"
# Segments over traits, without traits: the same shapes over profile columns.
SEGMENTS_ONLY="SELECT persona_create_segment('rt_frequent', 'event_count >= 2');
SELECT persona_create_segment('rt_big_cart', \$\$(traits->>'score')::int > 500\$\$);
SELECT persona_create_segment('rt_recent', \$\$last_seen > now() - interval '7 days' AND event_count >= 2\$\$);
SELECT persona_create_segment('rt_warm', \$\$event_count >= 1 AND first_seen > timestamptz '2020-01-01'\$\$);"
CLEAN="DO \$\$ BEGIN
  PERFORM persona_drop_segment(s.name) FROM persona.segments AS s WHERE s.name LIKE 'rt\\_%';
  PERFORM persona_drop_trait(d.name) FROM persona.trait_defs AS d WHERE d.name LIKE 'rt\\_%';
END \$\$;
SET persona.maintenance = on;
TRUNCATE persona.events, persona.profiles, persona.identities, persona.merges,
         persona.segment_members, persona.segment_log;"

# persona's events go to a monthly time partition, as in production.
psql_q -c "SELECT persona.add_event_partitions(now() + interval '1 month', '1 month', now() - interval '1 month')" >/dev/null
psql_q -c 'DROP TABLE IF EXISTS plain' \
	-c 'CREATE TABLE plain (LIKE persona.events_default INCLUDING DEFAULTS INCLUDING INDEXES)' >/dev/null

cat >"$WORK/persona.sql" <<'EOF'
\set uid random(1, :users)
\set price random(1, 400)
SELECT persona_track('user-' || :uid, 'add_to_cart', jsonb_build_object('price', (:price)::int));
EOF
cat >"$WORK/plain.sql" <<'EOF'
\set uid random(1, :users)
\set price random(1, 400)
INSERT INTO plain (profile_id, user_id, event_type, properties) VALUES (:uid, 'user-' || :uid, 'add_to_cart', jsonb_build_object('price', (:price)::int)) RETURNING event_id;
EOF

setup() { # none|traits|segments|both
	local sql="$CLEAN"
	case $1 in
	traits) sql+="$TRAITS" ;;
	segments) sql+="$SEGMENTS_ONLY" ;;
	both) sql+="$TRAITS$SEGMENTS" ;;
	esac
	psql_q -c "$sql" >/dev/null
	psql_q -c 'TRUNCATE plain' \
		-c "INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
		    SELECT 'user-' || u, 'add_to_cart', jsonb_build_object('price', 300 + u % 400), now() - interval '1 hour'
		      FROM generate_series(1, $USERS) AS u, generate_series(1, 2)" \
		-c 'VACUUM ANALYZE persona.events, persona.profiles, persona.identities, persona.segment_members, plain' >/dev/null
}

tps_run() { # side commit -> tps
	local out tps
	psql_q -c CHECKPOINT
	out=$(PGOPTIONS="-c synchronous_commit=$2" pgbench -n -M prepared -c "$CLIENTS" -j "$CLIENTS" \
		-T "$SECONDS_PER_RUN" -D users="$USERS" -f "$WORK/$1.sql" 2>&1) ||
		{ printf 'bench: pgbench (%s) failed:\n%s\n' "$1" "$out" >&2; exit 1; }
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -n 1)
	[[ -n $tps ]] || { printf 'bench: no tps in pgbench output:\n%s\n' "$out" >&2; exit 1; }
	echo "$tps"
}

declare -A P B R
echo "== real-time path: single-event transactions, $CLIENTS clients, $USERS known users, ${SECONDS_PER_RUN} s per run, $RUNS runs per side"
for s in $SETUPS; do
	setup "$s"
	for c in $COMMITS; do
		pa="" ba="" ra=""
		for ((r = 1; r <= RUNS; r++)); do
			if ((r % 2)); then order="persona plain"; else order="plain persona"; fi
			for side in $order; do
				t=$(tps_run "$side" "$c")
				if [[ $side == persona ]]; then tp=$t; else tb=$t; fi
			done
			pa+=" $tp" ba+=" $tb" ra+=" $(calc "$tp / $tb")"
		done
		P[$s.$c]=$(median <<<"$pa")
		B[$s.$c]=$(median <<<"$ba")
		R[$s.$c]=$(median <<<"$ra")
		printf '  %-9s synchronous_commit=%-3s persona %8.1f tps | plain %8.1f tps | ratio %.2f (per run:%s)\n' \
			"$s" "$c" "${P[$s.$c]}" "${B[$s.$c]}" "${R[$s.$c]}" "$ra"
	done
	expect "event counts ($s)" \
		"SELECT (SELECT sum(event_count) FROM persona.profiles) = (SELECT count(*) FROM persona.events)" t
	if [[ $s == both ]]; then
		expect "members of rt_big_cart equal the predicate" \
			"SELECT (SELECT count(*) FROM persona.segment_members WHERE segment = 'rt_big_cart')
			      = (SELECT count(*) FROM persona.traits WHERE rt_cart_value > 500)" t
	fi
done
psql_q -c "$CLEAN" >/dev/null

echo
echo "== summary (medians of per-run persona/plain ratios)"
printf '  %-12s %-22s %12s %12s %7s\n' setup synchronous_commit "persona tps" "plain tps" ratio
for s in $SETUPS; do
	for c in $COMMITS; do
		printf '  %-12s %-22s %12.1f %12.1f %7.2f\n' "$s" "$c" "${P[$s.$c]}" "${B[$s.$c]}" "${R[$s.$c]}"
	done
done
echo "  (issue floors for traits + segments: >= 0.8 durable, >= 0.6 without the fsync wait; information only)"
