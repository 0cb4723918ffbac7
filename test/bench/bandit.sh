#!/usr/bin/env bash
# The per-person bandit: what it learns and what it costs, against an oracle,
# against 0.1.0's context-free Thompson sampling and against plain
# PostgreSQL, in the same run.
#
# The world: $PEOPLE people of 10 kinds (declared trait kind = k0..k9, a
# category feature: persona.bandit_categories = 'kind') and 10 actions
# a0..a9 on one channel. The planted click rate of action a for a person of
# kind k is 0.03 + 0.005 a, plus 0.12 when a = k: each kind has its own best
# action (rate 0.15 + 0.005 k), while on average over the kinds a9 is best
# (0.087), which is all a context-free bandit can learn.
#
#  1. Learning. $DECISIONS simulated decisions, in blocks of $STEP (one
#     call each): a random person, persona_decide, a click drawn from the
#     planted rate of the action returned, persona_feedback ('click' or
#     'ignore'), commit (so each decision sees the feedback before it, as
#     an application's would). Once with the per-person bandit (persona.bandit = on, the
#     default, persona.bandit_min_feedback at its default), once with it off
#     (the action's average only: 0.1.0's context-free Thompson sampling),
#     each from no feedback at all. Printed: click-through of each block
#     (the learning curve) and overall, beside the oracle's (each person
#     given their best action: the expected rate of their kind's best, over
#     the same people), and the ratios: persona/oracle (issue target >= 85%)
#     and persona/context-free (target >= 1.2x). Also the planted rate of
#     the actions chosen (the expected click-through, free of the noise of
#     the draws).
#  2. Cost. pgbench, 2 clients, persona_decide over the same people with the
#     models learned in part 1 (past the threshold: every decision is
#     personal), against the same call with persona.bandit = off (the
#     context-free path), against the same call in a database created at
#     0.1.0's SQL (CREATE EXTENSION persona VERSION '0.1.0', the same
#     library: no features are read or recorded), and against a one-row
#     INSERT into a plain table. tps, medians of $TPS_RUNS runs per side
#     (alternating order), ratios of the medians and medians of the per-run
#     ratios (issue target: personal >= 85% of 0.1.0's decide). Then the
#     same four as the server's time per call: $CALLS calls in a PL/pgSQL
#     loop, one transaction, timed with clock_timestamp() (no commit, no
#     client), median of $TPS_RUNS loops per side, in turn.
#
# Nothing here asserts a figure; the script fails only when something errors
# or a check of persona's rows fails. Connection from PGHOST/PGPORT/PGUSER
# (scripts/bench.sh); it works in databases of its own,
# ${PGDATABASE}_bandit and ${PGDATABASE}_bandit_010, dropped at the end.
#
# Knobs (environment): BENCH_BANDIT_DECISIONS (100000 per side),
# BENCH_BANDIT_STEP (10000, the learning curve's block), BENCH_BANDIT_PEOPLE
# (1000), BENCH_BANDIT_TPS_RUNS (5 pgbench runs per side),
# BENCH_BANDIT_SECONDS (10 s per pgbench run), BENCH_BANDIT_CALLS (2000
# calls per timed loop).
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

DECISIONS=${BENCH_BANDIT_DECISIONS:-100000}
STEP=${BENCH_BANDIT_STEP:-10000}
PEOPLE=${BENCH_BANDIT_PEOPLE:-1000}
TPS_RUNS=${BENCH_BANDIT_TPS_RUNS:-5}
SECONDS_PER_RUN=${BENCH_BANDIT_SECONDS:-10}
CALLS=${BENCH_BANDIT_CALLS:-2000}
CLIENTS=2
((STEP > DECISIONS)) && STEP=$DECISIONS

DB=${PGDATABASE:-persona_bench}_bandit
DB010=${DB}_010
WORK=$(mktemp -d "${TMPDIR:-/tmp}/persona-bench-bandit.XXXXXX")
cleanup() {
	rm -rf -- "$WORK"
	psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
	psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB010" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "persona per-person bandit benchmark"
echo "  $(val "SELECT split_part(version(), ' on ', 1)" -d postgres) | $(nproc) CPUs"

# A database with the world: people, actions, the planted rates, the
# simulation and the baseline table.
newdb() { # name [version]
	psql_q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"
	psql_q -d "$1" -c "CREATE EXTENSION persona ${2:+VERSION '$2'}"
	psql_q -d "$1" -v people="$PEOPLE" <<'SQL'
SET client_min_messages = warning;
CREATE TABLE bench_plain (
    id         bigserial   PRIMARY KEY,
    profile_id bigint      NOT NULL,
    action     text        NOT NULL,
    context    jsonb       NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);
SELECT count(persona_identify('bu-' || i, jsonb_build_object('kind', 'k' || i % 10)))
  FROM generate_series(0, :people - 1) AS i \g /dev/null

-- The planted click rate of action a (0..9) for kind k (0..9).
CREATE FUNCTION planted(k int, a int) RETURNS float8 LANGUAGE sql IMMUTABLE
    RETURN 0.03 + 0.005 * a + CASE WHEN a = k THEN 0.12 ELSE 0 END;

CREATE FUNCTION reset_actions() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM persona_drop_action(a.name) FROM persona.actions AS a;
    FOR a IN 0..9 LOOP
        PERFORM persona_create_action('a' || a, 'web', jsonb_build_object('title', 'offer ' || a));
    END LOOP;
END
$$;
SELECT reset_actions() \g /dev/null

-- Microseconds per call of `calls` decisions (or one-row INSERTs), in one
-- transaction: the server's time, without the commit and the client.
CREATE FUNCTION decide_us(calls int, people int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    c  bigint;
BEGIN
    FOR i IN 1..calls LOOP
        SELECT count(*) INTO c FROM persona_decide('bu-' || (i * 7919 % people), '{}', 'web');
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / calls;
END
$$;
CREATE FUNCTION insert_us(calls int, people int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    FOR i IN 1..calls LOOP
        INSERT INTO bench_plain (profile_id, action, context) VALUES (i * 7919 % people, 'x', '{}');
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / calls;
END
$$;

-- `calls` simulated decisions with feedback, each committed as an
-- application's would be; returns the clicks, the planted rate of the
-- actions chosen and the oracle's expected clicks.
CREATE PROCEDURE simulate(calls int, people int, INOUT clicks int DEFAULT 0,
                          INOUT chosen float8 DEFAULT 0, INOUT oracle float8 DEFAULT 0)
    LANGUAGE plpgsql AS $$
DECLARE
    u  int;
    k  int;
    d  record;
    p  float8;
BEGIN
    clicks := 0; chosen := 0; oracle := 0;
    FOR i IN 1..calls LOOP
        u := floor(random() * people)::int;
        k := u % 10;
        SELECT x.decision_id, x.action INTO d FROM persona_decide('bu-' || u, '{}', 'web') AS x;
        p := planted(k, substr(d.action, 2)::int);
        chosen := chosen + p;
        oracle := oracle + planted(k, k);
        IF random() < p THEN
            clicks := clicks + 1;
            PERFORM persona_feedback(d.decision_id, 'click');
        ELSE
            PERFORM persona_feedback(d.decision_id, 'ignore');
        END IF;
        COMMIT;
    END LOOP;
END
$$;
SQL
}

newdb "$DB"
export PGDATABASE=$DB
psql_q -c "ALTER DATABASE $DB SET persona.bandit_categories = 'kind'"

# ---------------------------------------------------------------------------
# 1. Learning
# ---------------------------------------------------------------------------
learn() { # on|off -> lines "block clicks chosen oracle"
	local done=0 n b=0
	psql_q -c "SET persona.maintenance = on" -c "TRUNCATE persona.decisions, persona.feedback" \
		-c "SELECT reset_actions()" -c "VACUUM ANALYZE persona.action_stats" >/dev/null
	while ((done < DECISIONS)); do
		n=$((DECISIONS - done < STEP ? DECISIONS - done : STEP))
		b=$((b + 1))
		# Each block draws its own people and clicks, the same in both runs.
		echo "$((done + n)) $(psql_q -At -F ' ' -c "SELECT setseed(0.$((b * 7919 % 1000000)))" \
			-c "SET persona.decide_seed = $b" -c "SET persona.bandit = $1" \
			-c "CALL simulate($n, $PEOPLE)" | tail -n 1)"
		done=$((done + n))
	done
}

echo
echo "== learning: $(fmt_int "$DECISIONS") decisions per side, $(fmt_int "$PEOPLE") people of 10 kinds, 10 actions;" \
	"persona.bandit_min_feedback = $(val "SELECT persona.check_name('x', 'x') IS NULL; SHOW persona.bandit_min_feedback" | tail -n 1)"
t0=$(date +%s.%N)
learn off >"$WORK/off"
t1=$(date +%s.%N)
learn on >"$WORK/on"
t2=$(date +%s.%N)
printf '  (%.0f s context-free, %.0f s per-person, %.2f ms per decision with its feedback)\n' \
	"$(calc "$t1 - $t0")" "$(calc "$t2 - $t1")" "$(calc "1000 * ($t2 - $t1) / $DECISIONS")"
# Every decision's feedback taught its action, and (after the per-person
# run) every action's model counts its observations.
expect "feedback counted" "SELECT sum(trials) FROM persona.action_stats" "$DECISIONS"
expect "every observation in a model" "SELECT sum((model->>'n')::int) FROM persona.action_stats" "$DECISIONS"

printf '  %-16s %14s %14s %14s %12s %12s\n' "decisions" "persona" "context-free" "oracle" "vs oracle" "vs ctx-free"
paste -d ' ' "$WORK/on" "$WORK/off" | awk -v step="$STEP" '
	{ n = $1 - prev; prev = $1
	  p = $2 / n; c = $6 / n; o = $4 / n
	  printf "  %-16s %13.2f%% %13.2f%% %13.2f%% %11.1f%% %11.2fx\n",
	         sprintf("%d-%d", $1 - n + 1, $1), 100 * p, 100 * c, 100 * o, 100 * p / o, (c > 0 ? p / c : 0)
	  P += $2; C += $6; O += $4; PE += $3; CE += $7; N += n }
	END {
	  printf "  %-16s %13.2f%% %13.2f%% %13.2f%% %11.1f%% %11.2fx\n", "all", 100 * P / N, 100 * C / N, 100 * O / N,
	         100 * P / O, P / C
	  printf "  planted rate of the actions chosen (expected click-through): persona %.2f%%, context-free %.2f%%, oracle %.2f%%\n",
	         100 * PE / N, 100 * CE / N, 100 * O / N
	  printf "  click-through: persona/oracle %.1f%% (target >= 85%%), persona/context-free %.2fx (target >= 1.2x)\n",
	         100 * P / O, P / C }'
echo "  where the models stand (per action: observations, posterior mean of the weight of the kind it suits):"
val "SELECT string_agg(format('%s n=%s %s=%s', a.name, s.model->>'n', 'kind=k' || substr(a.name, 2),
                               round((s.model->'w'->('kind=k' || substr(a.name, 2))->>0)::numeric, 2)), '; ' ORDER BY a.name)
       FROM persona.actions AS a JOIN persona.action_stats AS s USING (action_id)" | fold -w 110 -s | sed 's/^/    /'

# ---------------------------------------------------------------------------
# 2. Cost
# ---------------------------------------------------------------------------
psql_q -c "VACUUM ANALYZE"
expect "a decision after learning is personal" \
	"SELECT reason LIKE 'personal:%' FROM persona_decide('bu-1', '{}', 'web')" t
newdb "$DB010" 0.1.0
cat >"$WORK/decide.sql" <<'PGB'
\set uid random(0, :people - 1)
SELECT count(*) FROM persona_decide('bu-' || :uid, '{}', 'web');
PGB
cat >"$WORK/plain.sql" <<'PGB'
\set uid random(0, :people - 1)
INSERT INTO bench_plain (profile_id, action, context) VALUES (:uid, 'x', '{}');
PGB
tps_run() { # side -> tps
	local db=$DB file=decide opts=""
	case $1 in
	personal) ;;
	ctxfree) opts="-c persona.bandit=off" ;;
	v010) db=$DB010 ;;
	plain) file=plain ;;
	esac
	psql_q -d "$db" -c CHECKPOINT
	PGOPTIONS="$opts" pgbench_tps "$1" -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_PER_RUN" \
		-D people="$PEOPLE" -f "$WORK/$file.sql" "$db"
}
sides=(personal ctxfree v010 plain)
echo
echo "== decide transactions: $CLIENTS clients, ${SECONDS_PER_RUN} s per run, $TPS_RUNS runs per side (after one warm-up run each), pgbench -M prepared"
echo "   personal: SELECT count(*) FROM persona_decide('bu-' || :uid, '{}', 'web'), with the models of part 1"
echo "   context-free: the same with persona.bandit = off; 0.1.0: the same in a database at 0.1.0's SQL"
echo "   plain: INSERT INTO bench_plain (profile_id, action, context) VALUES (:uid, 'x', '{}')"
for s in "${sides[@]}"; do tps_run "$s" >/dev/null; done
declare -A ALL RUN
ratio_pv="" ratio_pc=""
for ((r = 1; r <= TPS_RUNS; r++)); do
	order=("${sides[@]}")
	((r % 2)) || order=(plain v010 ctxfree personal)
	line="  run $r:"
	for s in "${order[@]}"; do
		t=$(tps_run "$s")
		ALL[$s]+=" $t"
		RUN[$s]=$t
		line+=" $s $(printf '%.1f' "$t")"
	done
	ratio_pv+=" $(calc "100 * ${RUN[personal]} / ${RUN[v010]}")"
	ratio_pc+=" $(calc "100 * ${RUN[personal]} / ${RUN[ctxfree]}")"
	echo "$line"
done
declare -A MED
for s in "${sides[@]}"; do MED[$s]=$(median <<<"${ALL[$s]}"); done
printf '  median tps: personal %.1f | context-free %.1f | 0.1.0 %.1f | plain INSERT %.1f\n' \
	"${MED[personal]}" "${MED[ctxfree]}" "${MED[v010]}" "${MED[plain]}"
printf '  personal/0.1.0 %.1f%% (target >= 85%%), personal/context-free %.1f%%, personal/plain %.1f%%, 0.1.0/plain %.1f%%\n' \
	"$(calc "100 * ${MED[personal]} / ${MED[v010]}")" "$(calc "100 * ${MED[personal]} / ${MED[ctxfree]}")" \
	"$(calc "100 * ${MED[personal]} / ${MED[plain]}")" "$(calc "100 * ${MED[v010]} / ${MED[plain]}")"
printf '  medians of the per-run ratios: personal/0.1.0 %.1f%%, personal/context-free %.1f%%\n' \
	"$(median <<<"$ratio_pv")" "$(median <<<"$ratio_pc")"

us_run() { # side -> microseconds per call
	case $1 in
	personal) val "SELECT decide_us($CALLS, $PEOPLE)" -d "$DB" ;;
	ctxfree) PGOPTIONS="-c persona.bandit=off" val "SELECT decide_us($CALLS, $PEOPLE)" -d "$DB" ;;
	v010) val "SELECT decide_us($CALLS, $PEOPLE)" -d "$DB010" ;;
	plain) val "SELECT insert_us($CALLS, $PEOPLE)" -d "$DB" ;;
	esac
}
echo
echo "== server time per call: $(fmt_int "$CALLS") calls per loop, one transaction, $TPS_RUNS loops per side in turn"
declare -A US
for s in "${sides[@]}"; do us_run "$s" >/dev/null; done
for ((r = 1; r <= TPS_RUNS; r++)); do
	for s in "${sides[@]}"; do US[$s]+=" $(us_run "$s")"; done
done
for s in "${sides[@]}"; do US[$s]=$(median <<<"${US[$s]}"); done
printf '  median: personal %.1f us | context-free %.1f us | 0.1.0 %.1f us | plain INSERT %.1f us\n' \
	"${US[personal]}" "${US[ctxfree]}" "${US[v010]}" "${US[plain]}"
printf '  0.1.0/personal %.1f%% (the throughput ratio, server side), context-free/personal %.1f%%\n' \
	"$(calc "100 * ${US[v010]} / ${US[personal]}")" "$(calc "100 * ${US[ctxfree]} / ${US[personal]}")"
