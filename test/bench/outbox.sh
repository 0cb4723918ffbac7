#!/usr/bin/env bash
# The outbox: linked events queueing messages, workers draining them, the
# announcer waking them, each beside plain PostgreSQL in the same run.
#
#   1. single-event ingest where every event fires a trigger (persona_track
#      of a known user, $CLIENTS clients) vs a one-row INSERT transaction;
#   2. bulk: $BULK events in one INSERT, 10% of a type with a trigger, vs
#      the same bulk with no trigger defined;
#   3. workers: $WMSGS queued messages drained by $WORKERS worker processes
#      (persona_claim, batches of $BATCH, content rendered, persona_ack) vs
#      a pgmq-style table drained the same way (FOR UPDATE SKIP LOCKED,
#      delete by id); and each side's CPU per message, in the backends and
#      in the workers;
#   4. wake-up latency: events that each fire a trigger at $RATE/s, from
#      the commit to the persona_outbox notification in a LISTENing
#      worker's hands (p50, p99);
#   5. 8 clients ingesting events that each fire a trigger vs the same
#      with the trigger dropped (the notification lock must not serialize
#      them);
#   6. bloat: dead tuples and vacuum of persona.messages after the workers
#      drained $WMSGS messages (a day of 10 million at 1/$((10000000 / 100000))
#      scale with the default).
# Medians of $RUNS runs, sides alternating. Nothing asserts a timing.
# Connection from PGHOST/PGPORT/PGUSER/PGDATABASE (scripts/bench.sh), the
# database with persona installed; it empties persona's tables.
#
# Knobs: BENCH_OB_USERS (20000), BENCH_OB_RUNS (3), BENCH_OB_SECONDS (8),
# BENCH_OB_CLIENTS (2), BENCH_OB_BULK (200000), BENCH_OB_WMSGS (100000),
# BENCH_OB_WORKERS (4), BENCH_OB_BATCH (500), BENCH_OB_RATE (500),
# BENCH_OB_LAT_SECONDS (10), BENCH_OB_PARTS ("single bulk workers latency
# clients8").
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

USERS=${BENCH_OB_USERS:-20000}
RUNS=${BENCH_OB_RUNS:-3}
SECONDS_PER_RUN=${BENCH_OB_SECONDS:-8}
CLIENTS=${BENCH_OB_CLIENTS:-2}
BULK=${BENCH_OB_BULK:-200000}
WMSGS=${BENCH_OB_WMSGS:-100000}
WORKERS=${BENCH_OB_WORKERS:-4}
BATCH=${BENCH_OB_BATCH:-500}
RATE=${BENCH_OB_RATE:-500}
LAT_SECONDS=${BENCH_OB_LAT_SECONDS:-10}
PARTS=${BENCH_OB_PARTS:-single bulk workers latency clients8}
PY=/usr/bin/python3
HELPER="$(dirname "${BASH_SOURCE[0]}")/lib/outbox_workers.py"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/persona-bench-ob.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT

CLEAN="DO \$\$ BEGIN
  PERFORM persona_drop_trigger(t.name) FROM persona.triggers AS t WHERE t.name LIKE 'bench\\_%';
  PERFORM persona_drop_action(a.name) FROM persona.actions AS a WHERE a.name LIKE 'bench\\_%';
END \$\$;
SET persona.maintenance = on;
TRUNCATE persona.events, persona.profiles, persona.identities, persona.merges,
         persona.segment_members, persona.segment_log, persona.messages, persona.suppressions;"
ACTION="SELECT persona_create_action('bench_push', 'bench', '{\"title\": \"hi {{first_name}}\"}');"
TRIGGER="SELECT persona_create_trigger('bench_fire', 'bench_fire', 'bench_push');"
NOTRIGGER="SELECT persona_drop_trigger('bench_fire');"

now_s() { date +%s.%N; }

seed_users() { # known users, one event each, no trigger firing
	psql_q -c "$CLEAN" -c "$ACTION" \
		-c "INSERT INTO persona.events (user_id, event_type)
		    SELECT 'user-' || u, 'seed' FROM generate_series(1, $USERS) AS u" \
		-c 'VACUUM ANALYZE persona.events, persona.profiles, persona.identities' >/dev/null
}

cat >"$WORK/fire.sql" <<'EOF2'
\set uid random(1, :users)
SELECT persona_track('user-' || :uid, 'bench_fire');
EOF2
cat >"$WORK/plain.sql" <<'EOF2'
\set uid random(1, :users)
INSERT INTO plain (profile_id, user_id, event_type, properties) VALUES (:uid, 'user-' || :uid, 'bench_fire', '{}') RETURNING event_id;
EOF2

tps_run() { # script clients -> tps
	local out tps
	out=$(pgbench -n -M prepared -c "$2" -j "$2" -T "$SECONDS_PER_RUN" -D users="$USERS" \
		-f "$WORK/$1.sql" 2>&1) ||
		{ printf 'bench: pgbench (%s) failed:\n%s\n' "$1" "$out" >&2; exit 1; }
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -n 1)
	[[ -n $tps ]] || { printf 'bench: no tps in pgbench output:\n%s\n' "$out" >&2; exit 1; }
	echo "$tps"
}

declare -A SUM
summary() { SUM[$1]=$2; printf '  %s\n' "$2"; }

# 1. ------------------------------------------------------------------
if [[ " $PARTS " == *" single "* ]]; then
	echo "== 1. single-event ingest, every event fires a trigger, $CLIENTS clients, $USERS users, ${SECONDS_PER_RUN} s runs"
	seed_users
	psql_q -c "$TRIGGER" -c 'DROP TABLE IF EXISTS plain' \
		-c 'CREATE TABLE plain (LIKE persona.events INCLUDING DEFAULTS INCLUDING INDEXES)' >/dev/null
	pa="" ba="" ra=""
	for ((r = 1; r <= RUNS; r++)); do
		if ((r % 2)); then order="fire plain"; else order="plain fire"; fi
		for side in $order; do
			t=$(tps_run "$side" "$CLIENTS")
			if [[ $side == fire ]]; then tp=$t; else tb=$t; fi
		done
		pa+=" $tp" ba+=" $tb" ra+=" $(calc "$tp / $tb")"
	done
	expect "one message per event fired" \
		"SELECT (SELECT count(*) FROM persona.messages) = (SELECT count(*) FROM persona.events WHERE event_type = 'bench_fire')" t
	summary single "$(printf 'single-event + trigger: persona %.1f tps | plain INSERT %.1f tps | ratio %.2f (floor 0.70; per run:%s)' \
		"$(median <<<"$pa")" "$(median <<<"$ba")" "$(median <<<"$ra")" "$ra")"
fi

# 2. ------------------------------------------------------------------
if [[ " $PARTS " == *" bulk "* ]]; then
	echo "== 2. bulk: $BULK events in one INSERT, 10% fire a trigger, vs no trigger defined"
	bulk_run() { # with|without -> seconds
		local t0 t1
		psql_q -c "$CLEAN" -c "$ACTION" >/dev/null
		[[ $1 == with ]] && psql_q -c "$TRIGGER" >/dev/null
		psql_q -c CHECKPOINT >/dev/null
		t0=$(now_s)
		psql_q -c "INSERT INTO persona.events (user_id, event_type)
		           SELECT 'bulk-' || (g % $((BULK / 4))), CASE WHEN g % 10 = 0 THEN 'bench_fire' ELSE 'bench_view' END
		             FROM generate_series(1, $BULK) AS g" >/dev/null
		t1=$(now_s)
		if [[ $1 == with ]]; then
			expect "bulk: one message per firing" "SELECT count(*) FROM persona.messages" "$((BULK / 10))" >/dev/null
		fi
		calc "$t1 - $t0"
	}
	wa="" na="" ra=""
	for ((r = 1; r <= RUNS; r++)); do
		if ((r % 2)); then order="with without"; else order="without with"; fi
		for side in $order; do
			t=$(bulk_run "$side")
			if [[ $side == with ]]; then tw=$t; else tn=$t; fi
		done
		wa+=" $tw" na+=" $tn" ra+=" $(calc "$tn / $tw")"
	done
	summary bulk "$(printf 'bulk %s events, 10%% firing: %.2f s (%s ev/s) | no trigger %.2f s | ratio %.2f (floor 0.80; per run:%s)' \
		"$BULK" "$(median <<<"$wa")" "$(fmt_int "$BULK / $(median <<<"$wa")")" "$(median <<<"$na")" "$(median <<<"$ra")" "$ra")"
fi

# 3. + 6. -------------------------------------------------------------
if [[ " $PARTS " == *" workers "* ]]; then
	echo "== 3. workers: $WMSGS messages, $WORKERS worker processes, batches of $BATCH"
	psql_q -c 'DROP TABLE IF EXISTS bench_q' \
		-c "CREATE TABLE bench_q (id bigserial PRIMARY KEY, vt timestamptz NOT NULL DEFAULT now(),
		                          read_ct int NOT NULL DEFAULT 0, enqueued_at timestamptz NOT NULL DEFAULT now(),
		                          message jsonb)" >/dev/null
	pa="" ba="" ra="" dead="" vac="" psc="" pwc="" bsc="" bwc=""
	for ((r = 1; r <= RUNS; r++)); do
		psql_q -c "$CLEAN" -c "$ACTION" -c "$TRIGGER" \
			-c "INSERT INTO persona.events (user_id, event_type)
			    SELECT 'w-' || g, 'bench_fire' FROM generate_series(1, $WMSGS) AS g" \
			-c 'TRUNCATE bench_q' \
			-c "INSERT INTO bench_q (message) SELECT jsonb_build_object('title', 'hi ' || g) FROM generate_series(1, $WMSGS) AS g" \
			-c 'VACUUM ANALYZE persona.messages, bench_q' -c CHECKPOINT >/dev/null
		if ((r % 2)); then order="persona plain"; else order="plain persona"; fi
		for side in $order; do
			c0=$(server_cpu)
			read -r n secs wcpu < <("$PY" "$HELPER" "$side" "$WORKERS" "$BATCH" bench)
			[[ $n == "$WMSGS" ]] || { echo "bench: $side drained $n of $WMSGS" >&2; exit 1; }
			backends_gone
			scpu=$(calc "$(server_cpu) - $c0")
			if [[ $side == persona ]]; then
				tp=$(calc "$n / $secs") psc+=" $scpu" pwc+=" $wcpu"
			else
				tb=$(calc "$n / $secs") bsc+=" $scpu" bwc+=" $wcpu"
			fi
		done
		pa+=" $tp" ba+=" $tb" ra+=" $(calc "$tp / $tb")"
		# 6. what the drain left to vacuum
		psql_q -c 'SELECT pg_stat_force_next_flush()' >/dev/null
		sleep 1
		dead+=" $(val "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'persona.messages'::regclass")"
		t0=$(now_s); psql_q -c 'VACUUM persona.messages' >/dev/null; t1=$(now_s)
		vac+=" $(calc "$t1 - $t0")"
	done
	expect "every message sent" "SELECT count(*) FROM persona.messages WHERE status = 'sent'" "$WMSGS"
	summary workers "$(printf 'workers: persona %s msg/s | pgmq-style %s msg/s | ratio %.2f (floor 2.0; per run:%s)' \
		"$(fmt_int "$(median <<<"$pa")")" "$(fmt_int "$(median <<<"$ba")")" "$(median <<<"$ra")" "$ra")"
	summary workers_cpu "$(printf 'workers: CPU per message: persona server %.1f us + workers %.1f us | pgmq-style server %.1f us + workers %.1f us' \
		"$(calc "$(median <<<"$psc") * 1000000 / $WMSGS")" "$(calc "$(median <<<"$pwc") * 1000000 / $WMSGS")" \
		"$(calc "$(median <<<"$bsc") * 1000000 / $WMSGS")" "$(calc "$(median <<<"$bwc") * 1000000 / $WMSGS")")"
	summary bloat "$(printf 'bloat after draining %s messages: %s dead tuples in persona.messages (%.2f per message), VACUUM %.2f s, table %s' \
		"$WMSGS" "$(median <<<"$dead")" "$(calc "$(median <<<"$dead") / $WMSGS")" "$(median <<<"$vac")" \
		"$(val "SELECT pg_size_pretty(pg_total_relation_size('persona.messages'))")")"
	psql_q -c 'DROP TABLE bench_q' >/dev/null
fi

# 4. ------------------------------------------------------------------
if [[ " $PARTS " == *" latency "* ]]; then
	echo "== 4. wake-up latency: $RATE events/s for $LAT_SECONDS s, each firing a trigger"
	seed_users
	psql_q -c "$TRIGGER" >/dev/null
	read -r p50 p99 n < <("$PY" "$HELPER" latency "$RATE" "$LAT_SECONDS" "$USERS")
	summary latency "$(printf 'commit -> notification in a listening worker: p50 %s ms, p99 %s ms over %s commits (floor p99 < 20 ms)' "$p50" "$p99" "$n")"
fi

# 5. ------------------------------------------------------------------
if [[ " $PARTS " == *" clients8 "* ]]; then
	echo "== 5. 8 clients, every event fires a trigger vs the trigger dropped"
	seed_users
	pa="" ba="" ra=""
	for ((r = 1; r <= RUNS; r++)); do
		if ((r % 2)); then order="with without"; else order="without with"; fi
		for side in $order; do
			if [[ $side == with ]]; then psql_q -c "$TRIGGER" >/dev/null; fi
			t=$(tps_run fire 8)
			if [[ $side == with ]]; then psql_q -c "$NOTRIGGER" >/dev/null; tp=$t; else tb=$t; fi
		done
		pa+=" $tp" ba+=" $tb" ra+=" $(calc "$tp / $tb")"
	done
	summary clients8 "$(printf '8 clients: trigger %.1f tps | no trigger %.1f tps | ratio %.2f (floor 0.80; per run:%s)' \
		"$(median <<<"$pa")" "$(median <<<"$ba")" "$(median <<<"$ra")" "$ra")"
fi

psql_q -c "$CLEAN" -c 'DROP TABLE IF EXISTS plain' >/dev/null
echo
echo "== summary"
for k in single bulk workers workers_cpu bloat latency clients8; do
	[[ -n ${SUM[$k]:-} ]] && printf '  %s\n' "${SUM[$k]}"
done
exit 0
