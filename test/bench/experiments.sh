#!/usr/bin/env bash
# Experiments: what a running experiment costs persona_decide, and the
# report against a hand-written GROUP BY of the same numbers.
#
#  1. persona_decide tps with one experiment (a 10% holdout) over the
#     action it chooses, against persona_decide without one, in the same
#     run: two channels with the same actions (a priority-5 banner and a
#     fallback each), the experiment over the web banner only; "with"
#     decides on web, "without" on app. Everyone was exposed beforehand
#     (the arms persona_arm gives), so this is the steady state: one index read of
#     persona.assignments per decision (a first exposure adds one insert).
#     pgbench, $CLIENTS clients, runs alternating (ABBA), medians.
#  2. persona_experiment_report over $PEOPLE assigned people and $EVENTS
#     events (a tenth of them conversions with a revenue) against the
#     GROUP BY an analyst would write for the same users, converters and
#     revenue per arm; each the median of $REPORT_RUNS runs, alternating.
#     The figures of both are checked equal.
#
# Targets (issue 14, information only: nothing here fails on a timing):
# decide with >= 90% of the tps without; report <= 2x the GROUP BY.
#
# Knobs (environment): BENCH_EXP_PROFILES (20000 people deciding),
# BENCH_EXP_TPS_RUNS (4 per side), BENCH_EXP_SECONDS (8 s per run),
# BENCH_EXP_PEOPLE (200000; the issue's size is 1000000),
# BENCH_EXP_EVENTS (1000000; the issue's size is 5000000),
# BENCH_EXP_REPORT_RUNS (5). The defaults take a few minutes; the issue's
# size takes about a quarter of an hour and 3 GB.
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

PROFILES=${BENCH_EXP_PROFILES:-20000}
TPS_RUNS=${BENCH_EXP_TPS_RUNS:-4}
SECONDS_PER_RUN=${BENCH_EXP_SECONDS:-8}
PEOPLE=${BENCH_EXP_PEOPLE:-200000}
EVENTS=${BENCH_EXP_EVENTS:-1000000}
REPORT_RUNS=${BENCH_EXP_REPORT_RUNS:-5}
CLIENTS=2

DB=${PGDATABASE:-persona_bench}_experiments
WORK=$(mktemp -d "${TMPDIR:-/tmp}/persona-bench-exp.XXXXXX")
cleanup() {
	rm -rf -- "$WORK"
	psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "persona experiments benchmark"
echo "  $(val "SELECT split_part(version(), ' on ', 1)" -d postgres) | $(nproc) CPUs"
psql_q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
export PGDATABASE=$DB
psql_q -c 'CREATE EXTENSION persona'

# ---------------------------------------------------------------------------
# 1. persona_decide with and without an experiment over the chosen action
# ---------------------------------------------------------------------------
t0=$(date +%s.%N)
psql_q -v n="$PROFILES" <<'SQL'
SET client_min_messages = warning;
INSERT INTO persona.events (user_id, event_type, occurred_at)
SELECT 'user-' || u, 'page_view', now() - interval '1 day' FROM generate_series(1, :n) AS u;
SELECT persona_create_action('banner_web', 'web', '{"title": "Your cart is waiting"}', priority => 5) \g /dev/null
SELECT persona_create_action('fallback_web', 'web', '{"title": "New arrivals"}') \g /dev/null
SELECT persona_create_action('banner_app', 'app', '{"title": "Your cart is waiting"}', priority => 5) \g /dev/null
SELECT persona_create_action('fallback_app', 'app', '{"title": "New arrivals"}') \g /dev/null
SELECT persona_create_experiment('bench_banner', 10, 'banner_web') \g /dev/null
-- Everyone exposed, as persona_arm would have (one call per person would
-- take one decision lock per person in one transaction).
INSERT INTO persona.assignments (profile_id, experiment, arm)
SELECT p.profile_id, 'bench_banner',
       CASE WHEN persona.experiment_bucket('bench_banner', p.user_id) < 1000 THEN 'holdout' ELSE 'treatment' END
  FROM persona.profiles AS p;
VACUUM ANALYZE;
SQL
expect "assignments" "SELECT count(*) FROM persona.assignments" "$PROFILES"
printf '  %s people deciding, all exposed (%.1f%% held out); built in %.0f s\n' "$(fmt_int "$PROFILES")" \
	"$(val "SELECT 100.0 * avg((arm = 'holdout')::int) FROM persona.assignments")" "$(calc "$(date +%s.%N) - $t0")"

for side in web app; do
	printf '\\set uid random(1, :users)\nSELECT count(*) FROM persona_decide('"'"'user-'"'"' || :uid, channel => '"'"'%s'"'"');\n' \
		"$side" >"$WORK/$side.sql"
done
tps_run() { # channel -> tps
	local out tps
	out=$(pgbench -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_PER_RUN" \
		-D users="$PROFILES" -f "$WORK/$1.sql" 2>&1) ||
		{ printf 'bench: pgbench (%s) failed:\n%s\n' "$1" "$out" >&2; exit 1; }
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -n 1)
	[[ -n $tps ]] || { printf 'bench: no tps in pgbench output:\n%s\n' "$out" >&2; exit 1; }
	echo "$tps"
}
echo
echo "== persona_decide, $CLIENTS clients, ${SECONDS_PER_RUN} s per run, after one warm-up run per side"
echo "   with:    persona_decide('user-' || :uid, channel => 'web')   (experiment over banner_web)"
echo "   without: persona_decide('user-' || :uid, channel => 'app')   (no experiment over banner_app)"
tps_run web >/dev/null
tps_run app >/dev/null
with_all="" without_all="" ratios=""
for ((r = 1; r <= TPS_RUNS; r++)); do
	if ((r % 2)); then order="web app"; else order="app web"; fi
	for side in $order; do
		t=$(tps_run "$side")
		if [[ $side == web ]]; then tw=$t; else ta=$t; fi
	done
	printf '  run %d: with %8.1f tps | without %8.1f tps | ratio %5.1f%%\n' "$r" "$tw" "$ta" "$(calc "100 * $tw / $ta")"
	with_all+=" $tw" without_all+=" $ta" ratios+=" $(calc "100 * $tw / $ta")"
done
TPS_WITH=$(median <<<"$with_all")
TPS_WITHOUT=$(median <<<"$without_all")
# The holdout was withheld the banner, the treatment got it, nobody new was assigned.
expect "holdout never got banner_web" \
	"SELECT count(*) FROM persona.decisions d JOIN persona.assignments a USING (profile_id)
	  WHERE a.arm = 'holdout' AND d.action = 'banner_web'" 0
expect "treatment got banner_web" \
	"SELECT count(*) > 0 FROM persona.decisions d JOIN persona.assignments a USING (profile_id)
	  WHERE a.arm = 'treatment' AND d.action = 'banner_web'" t
expect "assignments after the runs" "SELECT count(*) FROM persona.assignments" "$PROFILES"

# ---------------------------------------------------------------------------
# 2. The report against a hand-written GROUP BY
# ---------------------------------------------------------------------------
t0=$(date +%s.%N)
psql_q -v people="$PEOPLE" -v events="$EVENTS" <<'SQL'
SET client_min_messages = warning;
SELECT persona_drop_experiment('bench_banner') \g /dev/null
SET persona.maintenance = on;   -- persona's tables refuse TRUNCATE otherwise
TRUNCATE persona.events, persona.profiles, persona.identities, persona.decisions, persona.assignments;
-- events / people events a person: page views, and a purchase (with a
-- revenue) for one event in ten; all after the assignment.
INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
SELECT 'p-' || (k % :people),
       CASE WHEN (k / :people) % 10 = (k * 7) % 10 THEN 'purchase' ELSE 'page_view' END,
       CASE WHEN (k / :people) % 10 = (k * 7) % 10
            THEN jsonb_build_object('revenue', ((k * 7919) % 20000) / 100.0)
            ELSE '{}'::jsonb END,
       timestamptz '2026-03-01 00:00+00' + (k % 1000) * interval '1 minute'
  FROM generate_series(0::bigint, :events - 1) AS k;
SELECT persona_create_experiment('bench_report', 10) \g /dev/null
-- Everyone assigned, as persona_decide would have, by the hash of their user_id.
INSERT INTO persona.assignments (profile_id, experiment, arm, assigned_at)
SELECT p.profile_id, 'bench_report',
       CASE WHEN persona.experiment_bucket('bench_report', p.user_id) < 1000 THEN 'holdout' ELSE 'treatment' END,
       timestamptz '2026-02-28 00:00+00'
  FROM persona.profiles AS p;
VACUUM ANALYZE;

CREATE FUNCTION bench_report_ms() RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); n bigint;
BEGIN
    SELECT count(*) INTO n FROM persona_experiment_report('bench_report', 'purchase');
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
-- What an analyst writes for the same users, converters and revenue per arm.
CREATE FUNCTION bench_hand() RETURNS TABLE (arm text, users bigint, converters bigint, revenue float8)
    LANGUAGE sql STABLE AS $$
    SELECT a.arm, count(*), count(c.pid), coalesce(sum(c.rev), 0)
      FROM persona.assignments AS a
      LEFT JOIN (SELECT e.profile_id AS pid,
                        sum(CASE WHEN jsonb_typeof(e.properties -> 'revenue') = 'number'
                                 THEN (e.properties ->> 'revenue')::float8 END) AS rev
                   FROM persona.events AS e
                   JOIN persona.assignments AS a2
                     ON a2.profile_id = e.profile_id AND a2.experiment = 'bench_report'
                  WHERE e.event_type = 'purchase' AND e.occurred_at >= a2.assigned_at
                  GROUP BY 1) AS c ON c.pid = a.profile_id
     WHERE a.experiment = 'bench_report'
     GROUP BY a.arm $$;
CREATE FUNCTION bench_hand_ms() RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); n float8;
BEGIN
    -- Every column read, so that the planner cannot drop the join.
    SELECT sum(h.users + h.converters + h.revenue) INTO n FROM bench_hand() AS h;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
SQL
expect "assigned people" "SELECT count(*) FROM persona.assignments" "$(val 'SELECT count(*) FROM persona.profiles')"
expect "events" "SELECT count(*) FROM persona.events" "$EVENTS"
expect "report = GROUP BY" \
	"SELECT count(*) FROM persona_experiment_report('bench_report', 'purchase') r JOIN bench_hand() h USING (arm)
	  WHERE r.users = h.users AND r.converters = h.converters
	    AND abs(r.revenue_per_user * r.users - h.revenue) < 1e-6 * greatest(h.revenue, 1)" 2
printf '  %s assigned people, %s events (%s conversions), %s MB; built in %.0f s\n' \
	"$(fmt_int "$(val 'SELECT count(*) FROM persona.assignments')")" "$(fmt_int "$EVENTS")" \
	"$(fmt_int "$(val "SELECT count(*) FROM persona.events WHERE event_type = 'purchase'")")" \
	"$(fmt_int "$(val 'SELECT pg_database_size(current_database()) / 1048576')")" "$(calc "$(date +%s.%N) - $t0")"

echo
echo "== persona_experiment_report vs the hand-written GROUP BY, $REPORT_RUNS runs each, alternating (one warm-up each)"
val "SELECT bench_report_ms(), bench_hand_ms()" >/dev/null
rep_all="" hand_all=""
for ((r = 1; r <= REPORT_RUNS; r++)); do
	if ((r % 2)); then
		rm_=$(val "SELECT bench_report_ms()"); hm=$(val "SELECT bench_hand_ms()")
	else
		hm=$(val "SELECT bench_hand_ms()"); rm_=$(val "SELECT bench_report_ms()")
	fi
	printf '  run %d: report %8.1f ms | GROUP BY %8.1f ms\n' "$r" "$rm_" "$hm"
	rep_all+=" $rm_" hand_all+=" $hm"
done
REP=$(median <<<"$rep_all")
HAND=$(median <<<"$hand_all")
echo
echo "  the report:"
psql -X -q -c "SELECT arm, users, converters, round(conversion_rate::numeric, 4) AS rate,
	round(revenue_per_user::numeric, 2) AS rpu, round(lift::numeric, 4) AS lift,
	round(ci_low::numeric, 4) AS ci_low, round(ci_high::numeric, 4) AS ci_high,
	round(p_value::numeric, 4) AS p, round(srm_p_value::numeric, 4) AS srm_p
	FROM persona_experiment_report('bench_report', 'purchase')"

echo "== summary (medians)"
printf '  %-58s %10s %10s %8s %8s\n' "measure" "persona" "baseline" "ratio" "target"
printf '  %-58s %10.1f %10.1f %7.1f%% %8s\n' "decide tps, experiment over the chosen action vs none" \
	"$TPS_WITH" "$TPS_WITHOUT" "$(calc "100 * $TPS_WITH / $TPS_WITHOUT")" ">=90%"
printf '  %-58s %10.1f %10.1f %7.2fx %8s\n' \
	"report ms, $(fmt_int "$PEOPLE") people, $(fmt_int "$EVENTS") events vs GROUP BY" \
	"$REP" "$HAND" "$(calc "$REP / $HAND")" "<=2x"
echo "  (targets are information only: this benchmark never fails on a timing)"
