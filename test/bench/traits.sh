#!/usr/bin/env bash
# Computed traits: what they cost at ingest and when one is defined, against
# plain PostgreSQL measured in the same run.
#
#  1. Bulk ingest with traits: one INSERT ... SELECT of $EVENTS `purchase`
#     events over $USERS users into persona.events, with three traits
#     defined on `purchase`: a count, a sum of `price`, and a count over a
#     7-day window. Every event feeds all three, and every event lies inside
#     the window (they are stamped over the last ~4.6 days; an event already
#     older than a window is not recorded in it, which would flatter the
#     figure). The same rows go into `plain`, a table like persona.events
#     with no triggers (the baseline of ingest.sh), and into persona with no
#     trait defined, so that the cost of the traits shows apart from that of
#     persona's own ingest. Two cases, as in ingest.sh: new users (the
#     insert creates every profile) and known users (every profile exists
#     and already holds the three states, which the insert decodes, merges
#     and writes back). The known case compares with plain only.
#  2. Backfill: $BACKFILL_EVENTS events stored over $USERS profiles (each
#     profile has 10: 4 page_view, 2 each of add_to_cart, search, purchase),
#     then, each from a fresh connection:
#       define: SELECT persona_define_trait('x', 'sum', 'purchase', 'price')
#       plain:  CREATE TEMP TABLE t AS SELECT profile_id,
#                   sum((properties->>'price')::numeric) FROM persona.events
#                   WHERE event_type = 'purchase' GROUP BY profile_id
#       agg:    the backfill's aggregation pass alone, as the definition
#               runs it: CREATE TEMP TABLE t AS SELECT profile_id,
#                   persona.trait_agg(...) ... GROUP BY 1
#     Both baselines are CREATE TEMP TABLE AS, so nothing is sent to the
#     client on any side (the definition too builds a temporary table, then
#     writes the states into persona.profiles and rebuilds the views).
#     define - agg is the time spent writing the states to the profiles
#     (plus the definition's bookkeeping). Between runs the trait is dropped
#     and every profile's computed_state reset, so each run starts alike.
#
# As in ingest.sh: medians of several runs, the sides alternate from run to
# run, each timed statement runs in a fresh session (psql \timing, commit
# included) after a CHECKPOINT, and nothing here asserts a timing: the
# script fails only when something errors or a result is wrong (a wrong
# backfill is reported at once, and fails the script after the timings, so
# that they still print). Connection
# from PGHOST/PGPORT/PGUSER/PGDATABASE (scripts/bench.sh); the database must
# have persona installed; the script leaves persona's tables empty of its
# data and no trait defined.
#
# Knobs (environment): BENCH_USERS (100000), BENCH_RUNS (5 bulk runs per side
# and case), BENCH_BACKFILL_EVENTS (1000000), BENCH_BACKFILL_RUNS (7).
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

USERS=${BENCH_USERS:-100000}
EVENTS=$((2 * USERS))
RUNS=${BENCH_RUNS:-5}
BACKFILL_EVENTS=${BENCH_BACKFILL_EVENTS:-1000000}
BACKFILL_RUNS=${BENCH_BACKFILL_RUNS:-7}

INGEST_TARGET=40  # persona with traits, events/s as a % of plain's (the issue's target)
BACKFILL_TARGET=2 # definition time as a multiple of the plain GROUP BY's


# Fails the benchmark when a result is not what the rows imply.

# Empties persona (definitions too) and restarts the profile ids.
RESET_PERSONA="DO \$\$ BEGIN
	PERFORM persona_drop_trait(d.name) FROM persona.trait_defs AS d;
	PERFORM pg_catalog.set_config('persona.maintenance', 'on', true);
	EXECUTE 'TRUNCATE persona.events, persona.profiles, persona.identities'
		|| CASE WHEN to_regclass('persona.merges') IS NULL THEN '' ELSE ', persona.merges' END
		|| ' CASCADE';
	ALTER SEQUENCE persona.profile_id_seq RESTART;
END \$\$"
DEFINE_TRAITS="SELECT persona_define_trait('orders', 'count', 'purchase');
SELECT persona_define_trait('revenue', 'sum', 'purchase', 'price');
SELECT persona_define_trait('orders_7d', 'count', 'purchase', time_window => '7 days');"

echo "persona computed traits benchmark"
echo "  $(val "SELECT split_part(version(), ' on ', 1)") | $(nproc) CPUs | persona $(val "SELECT extversion FROM pg_extension WHERE extname = 'persona'")"
echo "  shared_buffers=$(val 'SHOW shared_buffers') max_wal_size=$(val 'SHOW max_wal_size')" \
	"work_mem=$(val 'SHOW work_mem') max_parallel_workers_per_gather=$(val 'SHOW max_parallel_workers_per_gather')" \
	"synchronous_commit=$(val 'SHOW synchronous_commit') fsync=$(val 'SHOW fsync')"

# ---------------------------------------------------------------------------
# 1. Bulk ingest with three traits
#
# The users and their order are those of ingest.sh (each pass visits every
# user once, in a scrambled order; `pid` is the profile id persona will
# give the user after a restart of its sequence, which the baseline stores
# so that its primary key sees the same keys in the same order).
# ---------------------------------------------------------------------------
psql_q -c "$RESET_PERSONA"
psql_q -v users="$USERS" -v events="$EVENTS" <<'SQL'
SET client_min_messages = warning;
DROP TABLE IF EXISTS traits_src, plain;
DROP SEQUENCE IF EXISTS plain_event_id_seq;

CREATE TABLE traits_src AS
WITH ev AS (
    SELECT n, (CASE WHEN (n - 1) / :users % 2 = 0 THEN 7919 ELSE 3571 END
               * ((n - 1) % :users)::bigint) % :users + 1 AS u
    FROM generate_series(1, :events) AS n
), first AS (
    SELECT u, min(n) AS pid FROM ev GROUP BY u
)
SELECT ev.n,
       first.pid,
       'user-' || ev.u AS user_id,
       'purchase' AS event_type,
       jsonb_build_object('sku', 'sku-' || ev.n % 5000, 'price', (ev.n % 997) + 0.99,
                          'path', '/products/' || ev.n % 5000) AS properties,
       jsonb_build_object('channel', 'web', 'device', (ARRAY['mobile', 'desktop', 'tablet'])[ev.n % 3 + 1],
                          'session_id', 's-' || ev.n / 7,
                          'geo', jsonb_build_object('country', 'IN', 'city', 'Mumbai')) AS context,
       now() - (:events - ev.n) * interval '2 seconds' AS occurred_at
FROM ev JOIN first USING (u)
ORDER BY ev.n;

CREATE SEQUENCE plain_event_id_seq CACHE 32;  -- as persona.event_id_seq
CREATE TABLE plain (LIKE persona.events_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE plain ALTER COLUMN event_id SET DEFAULT nextval('plain_event_id_seq');
ALTER SEQUENCE plain_event_id_seq OWNED BY plain.event_id;
VACUUM (FREEZE, ANALYZE) traits_src;
SELECT count(*) FROM traits_src \g /dev/null
SQL
expect "distinct users in the source" "SELECT count(DISTINCT user_id) FROM traits_src" "$USERS"
expect "events inside the window" \
	"SELECT count(*) FROM traits_src WHERE occurred_at > now() - interval '6 days'" "$EVENTS"

PERSONA_INSERT="INSERT INTO persona.events (user_id, event_type, properties, context, occurred_at)
	SELECT user_id, event_type, properties, context, occurred_at FROM traits_src"
PLAIN_INSERT="INSERT INTO plain (profile_id, user_id, event_type, properties, context, occurred_at)
	SELECT pid, user_id, event_type, properties, context, occurred_at FROM traits_src"

# The traits as persona maintained them, against the source: every profile
# has been loaded the same number of times (once for new users, once more
# per run for known users), and each load adds the source's counts and sum.
check_traits() {
	local loads
	loads=$(val "SELECT sum(event_count)::bigint / $EVENTS FROM persona.profiles")
	expect "profiles" "SELECT count(*) || '/' || sum(event_count) FROM persona.profiles" "$USERS/$((loads * EVENTS))"
	expect "traits" "SELECT sum(orders) || '/' || sum(orders_7d) || '/' || sum(revenue) FROM persona.traits" \
		"$(val "SELECT $((loads * EVENTS)) || '/' || $((loads * EVENTS)) || '/' || $loads * sum((properties->>'price')::numeric) FROM traits_src")"
}

# One measured run of a side: sets the state up, times the INSERT, checks
# the result, and vacuums so autovacuum stays out of the next run.
bulk_run() { # side case -> ms
	local side=$1 case=$2 ms
	case $side/$case in
	plain/*)
		psql_q -c 'TRUNCATE plain' -c CHECKPOINT
		ms=$(timed "$PLAIN_INSERT")
		expect "plain rows" "SELECT count(*) FROM plain" "$EVENTS"
		psql_q -c 'VACUUM ANALYZE plain'
		;;
	persona/new)
		psql_q -c "$RESET_PERSONA" -c CHECKPOINT
		ms=$(timed "$PERSONA_INSERT")
		expect "profiles" "SELECT count(*) || '/' || sum(event_count) FROM persona.profiles" "$USERS/$EVENTS"
		psql_q -c 'VACUUM ANALYZE persona.events, persona.profiles, persona.identities'
		;;
	traits/new)
		psql_q -c "$RESET_PERSONA" -c "$DEFINE_TRAITS" -c CHECKPOINT >/dev/null
		ms=$(timed "$PERSONA_INSERT")
		check_traits
		psql_q -c 'VACUUM ANALYZE persona.events, persona.profiles, persona.identities'
		;;
	traits/known)
		# Only the events go; profiles and their trait states keep counting up.
		psql_q -c 'SET persona.maintenance = on' -c 'TRUNCATE persona.events' -c 'VACUUM persona.profiles, persona.identities' -c CHECKPOINT
		ms=$(timed "$PERSONA_INSERT")
		check_traits
		psql_q -c 'VACUUM ANALYZE persona.events, persona.profiles'
		;;
	esac
	echo "$ms"
}

declare -A BULK_MS BULK_RATIO
bulk_case() { # case title sides...
	local case=$1 title=$2 r i n side ms line
	shift 2
	local sides=("$@")
	declare -A all=() ratios=()
	n=${#sides[@]}
	echo
	echo "== bulk INSERT ... SELECT, $EVENTS purchase events over $USERS users: $title"
	for ((r = 1; r <= RUNS; r++)); do
		# The order of the sides rotates from run to run, so drift hits all alike.
		declare -A run=()
		for ((i = 0; i < n; i++)); do
			side=${sides[$(((i + r - 1) % n))]}
			run[$side]=$(bulk_run "$side" "$case")
		done
		line=$(printf '  run %d:' "$r")
		for side in "${sides[@]}"; do
			ms=${run[$side]}
			line+=$(printf ' %s %7.1f ms %9s ev/s |' "$side" "$ms" "$(fmt_int "$EVENTS * 1000 / $ms")")
			all[$side]+=" $ms"
			[[ $side == plain ]] || ratios[$side]+=" $(calc "100 * ${run[plain]} / $ms")"
		done
		echo "${line% |}"
	done
	for side in "${sides[@]}"; do
		BULK_MS[$case/$side]=$(median <<<"${all[$side]}")
		[[ $side == plain ]] || BULK_RATIO[$case/$side]=$(calc "100 * $(median <<<"${all[plain]}") / ${BULK_MS[$case/$side]}")
	done
	line="  median:"
	for side in "${sides[@]}"; do
		line+=$(printf ' %s %.1f ms = %s events/s |' "$side" "${BULK_MS[$case/$side]}" \
			"$(fmt_int "$EVENTS * 1000 / ${BULK_MS[$case/$side]}")")
	done
	echo "${line% |}"
	for side in "${sides[@]}"; do
		[[ $side != plain ]] || continue
		printf '  %s/plain %.1f%% (median of the per-run ratios %.1f%%)\n' "$side" \
			"${BULK_RATIO[$case/$side]}" "$(median <<<"${ratios[$side]}")"
	done
	if [[ -n ${BULK_MS[$case/persona]:-} ]]; then
		printf '  traits/persona %.1f%%: the three traits cost %.2f us per event\n' \
			"$(calc "100 * ${BULK_MS[$case/persona]} / ${BULK_MS[$case/traits]}")" \
			"$(calc "1000 * (${BULK_MS[$case/traits]} - ${BULK_MS[$case/persona]}) / $EVENTS")"
	fi
}

echo
echo "sides: traits = persona with the 3 traits defined; persona = persona with no trait; plain = no triggers"
bulk_case new "new users (every profile created by the insert)" traits persona plain

# Known users: load the same events once, so every user has a profile that
# holds the three states.
psql_q -c "$RESET_PERSONA" -c "$DEFINE_TRAITS" -c "$PERSONA_INSERT" >/dev/null
psql_q -c 'VACUUM ANALYZE persona.events, persona.profiles, persona.identities'
check_traits
bulk_case known "known users (all $USERS profiles exist, with their trait states)" traits plain

# ---------------------------------------------------------------------------
# 2. Backfill
# ---------------------------------------------------------------------------
echo
echo "== backfill: persona_define_trait('x', 'sum', 'purchase', 'price') over $BACKFILL_EVENTS stored events, $USERS profiles"
psql_q -c "$RESET_PERSONA" -c 'DROP TABLE IF EXISTS traits_src, plain'
# Event n visits user (7919 n mod users) + 1; the type changes every pass,
# so each profile has 2 events of each type, 4 page views.
psql_q -v users="$USERS" -v events="$BACKFILL_EVENTS" <<'SQL'
INSERT INTO persona.events (user_id, event_type, properties, context, occurred_at)
SELECT 'user-' || (7919 * ((n - 1) % :users)::bigint) % :users + 1,
       (ARRAY['page_view', 'page_view', 'add_to_cart', 'search', 'purchase'])[(n - 1) / :users % 5 + 1],
       jsonb_build_object('sku', 'sku-' || n % 5000, 'price', (n % 997) + 0.99,
                          'path', '/products/' || n % 5000),
       jsonb_build_object('channel', 'web', 'device', (ARRAY['mobile', 'desktop', 'tablet'])[n % 3 + 1],
                          'session_id', 's-' || n / 7,
                          'geo', jsonb_build_object('country', 'IN', 'city', 'Mumbai')),
       timestamptz '2024-01-01 00:00:00+00' + n * interval '13 seconds'
  FROM generate_series(1, :events) AS n;
VACUUM (FREEZE, ANALYZE) persona.events, persona.profiles, persona.identities;
SQL
expect "stored events" "SELECT count(*) || '/' || count(DISTINCT profile_id) FROM persona.events" "$BACKFILL_EVENTS/$USERS"
PURCHASES=$(val "SELECT count(*) FROM persona.events WHERE event_type = 'purchase'")
echo "  $PURCHASES purchase events; persona.events $(val "SELECT pg_size_pretty(pg_table_size('persona.events'))")"

DEFINE="SELECT persona_define_trait('x', 'sum', 'purchase', 'price')"
PLAIN_AGG="CREATE TEMP TABLE t AS SELECT profile_id, sum((properties->>'price')::numeric) AS x
	FROM persona.events WHERE event_type = 'purchase' GROUP BY profile_id"
TRAIT_AGG="CREATE TEMP TABLE t AS SELECT e.profile_id,
	persona.trait_agg(0, 'sum', NULL::interval, 'price', e.occurred_at, e.event_id, e.properties) AS state
	FROM persona.events AS e WHERE e.event_type = 'purchase' GROUP BY 1"

backfill_run() { # side -> ms
	psql_q -c CHECKPOINT
	case $1 in
	define) timed "$DEFINE" ;;
	plain) timed "$PLAIN_AGG" ;;
	agg) timed "$TRAIT_AGG" ;;
	esac
}

# After a definition: checks it (first run), then drops it and resets every
# profile's computed_state, so the next run starts alike.
WRONG=0
after_define() {
	local wrong
	if ((r == 1)); then
		# (serial: the decoders may not read their definitions in parallel mode)
		wrong=$(PGOPTIONS='-c max_parallel_workers_per_gather=0' val "SELECT count(*) FROM persona.traits AS t
			JOIN (SELECT profile_id, sum((properties->>'price')::numeric) AS x FROM persona.events
			       WHERE event_type = 'purchase' GROUP BY 1) AS s USING (profile_id)
			WHERE t.x IS DISTINCT FROM s.x")
		if ((wrong > 0)); then
			# Reported, and the benchmark fails at the end; the timings go on.
			echo "  WRONG: the backfilled trait differs from plain SQL for $wrong of $USERS profiles"
			WRONG=$wrong
		fi
	fi
	psql_q -c "SELECT persona_drop_trait('x')" -c 'SET persona.maintenance = on' -c 'UPDATE persona.profiles SET computed_state = NULL' >/dev/null
	psql_q -c 'VACUUM ANALYZE persona.profiles'
}

sides=(define plain agg)
d_all="" p_all="" a_all="" ratios=""
for ((r = 1; r <= BACKFILL_RUNS; r++)); do
	declare -A run=()
	for ((i = 0; i < 3; i++)); do
		side=${sides[$(((i + r - 1) % 3))]}
		run[$side]=$(backfill_run "$side")
		[[ $side != define ]] || after_define
	done
	printf '  run %d: define %7.1f ms | plain GROUP BY %7.1f ms | aggregation pass %7.1f ms | define/plain %.2fx\n' \
		"$r" "${run[define]}" "${run[plain]}" "${run[agg]}" "$(calc "${run[define]} / ${run[plain]}")"
	d_all+=" ${run[define]}" p_all+=" ${run[plain]}" a_all+=" ${run[agg]}"
	ratios+=" $(calc "${run[define]} / ${run[plain]}")"
done
BF_DEFINE=$(median <<<"$d_all")
BF_PLAIN=$(median <<<"$p_all")
BF_AGG=$(median <<<"$a_all")
BF_RATIO=$(calc "$BF_DEFINE / $BF_PLAIN")
printf '  median: define %.1f ms | plain GROUP BY %.1f ms | aggregation pass %.1f ms\n' "$BF_DEFINE" "$BF_PLAIN" "$BF_AGG"
printf '  define/plain %.2fx (median of the per-run ratios %.2fx; target <= %dx)\n' \
	"$BF_RATIO" "$(median <<<"$ratios")" "$BACKFILL_TARGET"
printf '  of the definition: aggregation %.1f ms (%.2fx plain), writing the states and the rest %.1f ms\n' \
	"$BF_AGG" "$(calc "$BF_AGG / $BF_PLAIN")" "$(calc "$BF_DEFINE - $BF_AGG")"
psql_q -c "$RESET_PERSONA"

# ---------------------------------------------------------------------------
# 3. Summary
# ---------------------------------------------------------------------------
echo
echo "== summary (medians; bulk: $RUNS runs per side and case, backfill: $BACKFILL_RUNS runs per side)"
printf '  %-46s %12s %12s %9s %8s %5s\n' "measure" "persona" "plain" "ratio" "target" "met"
printf '  %-46s %12s %12s %8.1f%% %7s%% %5s\n' "bulk INSERT, new users, 3 traits (events/s)" \
	"$(fmt_int "$EVENTS * 1000 / ${BULK_MS[new/traits]}")" "$(fmt_int "$EVENTS * 1000 / ${BULK_MS[new/plain]}")" \
	"${BULK_RATIO[new/traits]}" ">=$INGEST_TARGET" "$(met "${BULK_RATIO[new/traits]}" "$INGEST_TARGET" min)"
printf '  %-46s %12s %12s %8.1f%%\n' "  same, no trait defined (events/s)" \
	"$(fmt_int "$EVENTS * 1000 / ${BULK_MS[new/persona]}")" "$(fmt_int "$EVENTS * 1000 / ${BULK_MS[new/plain]}")" \
	"${BULK_RATIO[new/persona]}"
printf '  %-46s %12s %12s %8.1f%% %7s%% %5s\n' "bulk INSERT, known users, 3 traits (events/s)" \
	"$(fmt_int "$EVENTS * 1000 / ${BULK_MS[known/traits]}")" "$(fmt_int "$EVENTS * 1000 / ${BULK_MS[known/plain]}")" \
	"${BULK_RATIO[known/traits]}" ">=$INGEST_TARGET" "$(met "${BULK_RATIO[known/traits]}" "$INGEST_TARGET" min)"
printf '  %-46s %10.1f ms %9.1f ms %8.2fx %7sx %5s\n' "backfill, define vs plain GROUP BY" \
	"$BF_DEFINE" "$BF_PLAIN" "$BF_RATIO" "<=$BACKFILL_TARGET" "$(met "$BF_RATIO" "$BACKFILL_TARGET" max)"
printf '  %-46s %10.1f ms %9.1f ms %8.2fx\n' "  its aggregation pass alone" "$BF_AGG" "$BF_PLAIN" "$(calc "$BF_AGG / $BF_PLAIN")"
echo "  (targets are information only: this benchmark never fails on a timing)"
if ((WRONG > 0)); then
	echo "bench: the backfill computed wrong values for $WRONG of $USERS profiles (see above)" >&2
	exit 1
fi
