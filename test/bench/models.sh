#!/usr/bin/env bash
# Predictions: what training costs, how good the fit is, and what a model
# costs at ingest, against plain PostgreSQL and scikit-learn measured in the
# same run.
#
#  1. Training: $PROFILES profiles and 10x as many events over 90 days
#     (page_view, add_to_cart, search, purchase, with a price), each
#     person's activity and recency drawn from a planted propensity, so that
#     a purchase in the last 30 days depends on their history. Six features:
#     four traits (views, carts, spend, 7-day views), event_count and
#     days_since_last_seen. Timed, each from a fresh session:
#       train: SELECT persona_train_model('bench_buyer', 'purchase', '30 days', <the six>)
#       plain: CREATE TEMP TABLE t AS SELECT profile_id, <the same six
#              features up to the cutoff and the label after it> FROM
#              persona.events GROUP BY profile_id: one GROUP BY pass over
#              the same events, the lower bound for point-in-time features
#       rows:  persona's own pass alone (the aggregate persona.model_row,
#              CREATE TEMP TABLE AS, which also writes the rows: the
#              training streams them to the fit instead, so it can take
#              less than this side on a noisy machine)
#  2. Quality: the same feature matrix and held-out split (persona's rows,
#     persona.model_held_out) exported to scikit-learn's LogisticRegression
#     (C = 1, the same L2 penalty, on StandardScaler'd features, the
#     training part only): its held-out AUC and log loss beside persona's.
#  3. Ingest: one INSERT ... SELECT of 2 x $INGEST_USERS purchase events for
#     $INGEST_USERS new users, with three traits (a count, a sum of price, a
#     7-day count), as in traits.sh: without a model ("traits"), with one
#     model over the three traits ("model"), and with that model and a
#     segment on its score ("segment", which evaluates the score of every
#     touched profile), beside plain PostgreSQL (a table like
#     persona.events with no triggers).
#
# Nothing here asserts a timing; the script fails only when something
# errors or a result is wrong. Connection from PGHOST/PGPORT/PGUSER/
# PGDATABASE (scripts/bench.sh); the database must have persona installed;
# the script leaves persona's tables empty of its data.
#
# Knobs (environment): BENCH_PROFILES (100000; the issue's figure is
# 1000000, with 10000000 events), BENCH_TRAIN_RUNS (3),
# BENCH_INGEST_USERS (100000), BENCH_RUNS (3 bulk runs per side).
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

PROFILES=${BENCH_PROFILES:-100000}
EVENTS=$((10 * PROFILES))
TRAIN_RUNS=${BENCH_TRAIN_RUNS:-3}
INGEST_USERS=${BENCH_INGEST_USERS:-100000}
INGEST_EVENTS=$((2 * INGEST_USERS))
RUNS=${BENCH_RUNS:-3}
PYTHON=${PYTHON:-/usr/bin/python3}

TRAIN_TARGET=3     # training time as a multiple of the plain GROUP BY's
AUC_TARGET=0.01    # persona's AUC at most this far from scikit-learn's
INGEST_TARGET=90   # ingest with the model, % of the same ingest without

"$PYTHON" -c 'import sklearn' 2>/dev/null || {
	echo "bench: scikit-learn is missing: apt-get install python3-sklearn (scripts/deps.sh)" >&2
	exit 1
}

RESET_PERSONA="DO \$\$ BEGIN
	PERFORM persona_drop_segment(s.name) FROM persona.segments AS s;
	PERFORM persona_drop_model(m.name) FROM persona.models AS m;
	PERFORM persona_drop_trait(d.name) FROM persona.trait_defs AS d;
	PERFORM pg_catalog.set_config('persona.maintenance', 'on', true);
	TRUNCATE persona.events, persona.profiles, persona.identities, persona.merges,
	         persona.segment_log CASCADE;
	ALTER SEQUENCE persona.profile_id_seq RESTART;
END \$\$"

echo "persona predictions benchmark"
echo "  $(val "SELECT split_part(version(), ' on ', 1)") | $(nproc) CPUs | persona $(val "SELECT extversion FROM pg_extension WHERE extname = 'persona'") | scikit-learn $("$PYTHON" -c 'import sklearn; print(sklearn.__version__)')"
echo "  shared_buffers=$(val 'SHOW shared_buffers') work_mem=$(val 'SHOW work_mem')" \
	"max_parallel_workers_per_gather=$(val 'SHOW max_parallel_workers_per_gather')"

# ---------------------------------------------------------------------------
# 1. Training
# ---------------------------------------------------------------------------
echo
echo "== training: $PROFILES profiles, $EVENTS events over 90 days, 6 features, horizon 30 days"
psql_q -c "$RESET_PERSONA"
psql_q -v profiles="$PROFILES" -v events="$EVENTS" <<'SQL'
SELECT persona_define_trait('views', 'count', 'page_view');
SELECT persona_define_trait('carts', 'count', 'add_to_cart');
SELECT persona_define_trait('spend', 'sum', 'purchase', 'price');
SELECT persona_define_trait('views_7d', 'count', 'page_view', time_window => '7 days');
SELECT setseed(0.17);
-- Person u's propensity a in [0, 1): more purchases among their events,
-- and events nearer now.
INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
SELECT 'u' || s.u,
       CASE WHEN s.r < 0.5 THEN 'page_view' WHEN s.r < 0.7 THEN 'add_to_cart'
            WHEN s.r < 0.74 + 0.16 * s.a THEN 'purchase' ELSE 'search' END,
       jsonb_build_object('price', 100 + (s.n % 50) * 20),
       now() - interval '90 days' * power(random(), 1 + 2 * s.a)
  FROM (SELECT n, (n * 7919) % :profiles + 1 AS u,
               ((((n * 7919) % :profiles + 1) * 2654435761) % 1000) / 1000.0 AS a,
               random() AS r
          FROM generate_series(1::bigint, :events) AS n) AS s;
VACUUM (FREEZE, ANALYZE) persona.events, persona.profiles, persona.identities;
SQL
expect "profiles" "SELECT count(*) FROM persona.profiles" "$PROFILES"
echo "  persona.events $(val "SELECT pg_size_pretty(pg_table_size('persona.events'))")," \
	"$(val "SELECT count(*) FROM persona.events WHERE event_type = 'purchase' AND occurred_at > now() - interval '30 days'") purchases in the horizon"

FEATURES="ARRAY['views', 'carts', 'spend', 'views_7d', 'event_count', 'days_since_last_seen']"
TRAIN="SELECT persona_train_model('bench_buyer', 'purchase', '30 days', $FEATURES)"
# The same six features and the label in plain SQL, one pass.
PLAIN="CREATE TEMP TABLE t AS
SELECT e.profile_id,
       count(*) FILTER (WHERE e.event_type = 'page_view' AND e.occurred_at <= (now() - interval '30 days')) AS views,
       count(*) FILTER (WHERE e.event_type = 'add_to_cart' AND e.occurred_at <= (now() - interval '30 days')) AS carts,
       coalesce(sum((e.properties->>'price')::numeric) FILTER (WHERE e.event_type = 'purchase' AND e.occurred_at <= (now() - interval '30 days')), 0) AS spend,
       count(*) FILTER (WHERE e.event_type = 'page_view' AND e.occurred_at <= (now() - interval '30 days')
                          AND e.occurred_at > (now() - interval '30 days') - interval '7 days') AS views_7d,
       count(*) FILTER (WHERE e.occurred_at <= (now() - interval '30 days')) AS event_count,
       extract(epoch FROM (now() - interval '30 days') - max(e.occurred_at) FILTER (WHERE e.occurred_at <= (now() - interval '30 days'))) / 86400 AS days_since_last_seen,
       bool_or(e.event_type = 'purchase' AND e.occurred_at > (now() - interval '30 days')) AS label
  FROM persona.events AS e
 WHERE e.occurred_at <= now()
 GROUP BY e.profile_id"
ROWS_SQL="SELECT e.profile_id, persona.model_row(m.feature_ids, 'purchase', now() - interval '30 days',
                  e.occurred_at, e.event_type, e.event_id, e.properties) AS r
  FROM persona.events AS e, persona.models AS m
 WHERE m.name = 'bench_buyer' AND e.occurred_at <= now()
 GROUP BY e.profile_id"
ROWS="CREATE TEMP TABLE t AS $ROWS_SQL"

psql_q -c "$TRAIN" >/dev/null  # the model must exist for the rows side
sides=(train plain rows)
t_all="" p_all="" r_all="" ratios=""
for ((r = 1; r <= TRAIN_RUNS; r++)); do
	declare -A run=()
	for ((i = 0; i < 3; i++)); do
		side=${sides[$(((i + r - 1) % 3))]}
		psql_q -c CHECKPOINT
		case $side in
		train) run[train]=$(timed "$TRAIN") ;;
		plain) run[plain]=$(timed "$PLAIN") ;;
		rows) run[rows]=$(timed "$ROWS") ;;
		esac
	done
	printf '  run %d: train %8.1f ms | plain GROUP BY %8.1f ms | persona rows alone %8.1f ms | train/plain %.2fx\n' \
		"$r" "${run[train]}" "${run[plain]}" "${run[rows]}" "$(calc "${run[train]} / ${run[plain]}")"
	t_all+=" ${run[train]}" p_all+=" ${run[plain]}" r_all+=" ${run[rows]}"
	ratios+=" $(calc "${run[train]} / ${run[plain]}")"
done
TR_TRAIN=$(median <<<"$t_all")
TR_PLAIN=$(median <<<"$p_all")
TR_ROWS=$(median <<<"$r_all")
TR_RATIO=$(calc "$TR_TRAIN / $TR_PLAIN")
printf '  median: train %.1f ms | plain GROUP BY %.1f ms | persona rows alone %.1f ms\n' \
	"$TR_TRAIN" "$TR_PLAIN" "$TR_ROWS"
printf '  train/plain %.2fx (median of the per-run ratios %.2fx; target <= %dx)\n' \
	"$TR_RATIO" "$(median <<<"$ratios")" "$TRAIN_TARGET"

# ---------------------------------------------------------------------------
# 2. Quality against scikit-learn
# ---------------------------------------------------------------------------
echo
echo "== quality: the same rows and held-out split in scikit-learn"
FIT=$(val "SELECT metrics FROM persona.models WHERE name = 'bench_buyer'")
echo "  persona: $FIT"
EXPORT=$(mktemp "${TMPDIR:-/tmp}/persona-bench-models.XXXXXX")
trap 'rm -f -- "$EXPORT"' EXIT
psql_q -c "COPY (SELECT persona.model_held_out(x.profile_id)::int, x.r[1], array_to_string(x.r[2:], ',')
                   FROM ($ROWS_SQL) AS x WHERE x.r IS NOT NULL) TO STDOUT WITH (FORMAT csv)" >"$EXPORT"
SK=$("$PYTHON" - "$EXPORT" <<'PY'
import csv, sys, time
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import StandardScaler
held, y, x = [], [], []
with open(sys.argv[1]) as f:
    for h, label, feats in csv.reader(f):
        held.append(h == '1'); y.append(float(label)); x.append([float(v) for v in feats.split(',')])
held, y, x = np.array(held), np.array(y), np.array(x)
t = time.perf_counter()
scaler = StandardScaler().fit(x[~held])
model = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(x[~held]), y[~held])
ms = (time.perf_counter() - t) * 1000
p = model.predict_proba(scaler.transform(x[held]))[:, 1]
print(f"{roc_auc_score(y[held], p):.6f} {log_loss(y[held], p):.6f} {ms:.1f} {len(y)} {int(held.sum())}")
PY
)
read -r SK_AUC SK_LOSS SK_MS SK_ROWS SK_HELD <<<"$SK"
P_AUC=$(val "SELECT metrics->>'auc' FROM persona.models WHERE name = 'bench_buyer'")
P_LOSS=$(val "SELECT metrics->>'log_loss' FROM persona.models WHERE name = 'bench_buyer'")
expect "rows exported" "SELECT metrics->>'rows' FROM persona.models WHERE name = 'bench_buyer'" "$SK_ROWS"
expect "held out" "SELECT metrics->>'held_out' FROM persona.models WHERE name = 'bench_buyer'" "$SK_HELD"
AUC_DIFF=$(calc "($P_AUC - $SK_AUC) < 0 ? $SK_AUC - $P_AUC : $P_AUC - $SK_AUC")
printf '  persona AUC %.4f log loss %.4f | scikit-learn AUC %.4f log loss %.4f (fit %.1f ms on %d rows, %d held out)\n' \
	"$P_AUC" "$P_LOSS" "$SK_AUC" "$SK_LOSS" "$SK_MS" "$SK_ROWS" "$SK_HELD"
printf '  |AUC difference| %.4f (target <= %s)\n' "$AUC_DIFF" "$AUC_TARGET"

# ---------------------------------------------------------------------------
# 3. Ingest with a model
# ---------------------------------------------------------------------------
echo
echo "== bulk INSERT ... SELECT, $INGEST_EVENTS purchase events over $INGEST_USERS new users, 3 traits"
psql_q -c "$RESET_PERSONA"
psql_q -v users="$INGEST_USERS" -v events="$INGEST_EVENTS" <<'SQL'
SET client_min_messages = warning;
DROP TABLE IF EXISTS models_src, plain;
CREATE TABLE models_src AS
SELECT 'user-' || ((n * 7919) % :users + 1) AS user_id, 'purchase' AS event_type,
       jsonb_build_object('sku', 'sku-' || n % 5000, 'price', (n % 997) + 0.99) AS properties,
       now() - (:events - n) * interval '2 seconds' AS occurred_at
  FROM generate_series(1::bigint, :events) AS n;
CREATE TABLE plain (LIKE persona.events INCLUDING DEFAULTS INCLUDING INDEXES);
VACUUM (FREEZE, ANALYZE) models_src;
SQL
PERSONA_INSERT="INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
	SELECT user_id, event_type, properties, occurred_at FROM models_src"
PLAIN_INSERT="INSERT INTO plain (profile_id, user_id, event_type, properties, occurred_at)
	SELECT 0, user_id, event_type, properties, occurred_at FROM models_src"
# The model is trained on a small history of its own, then the history goes
# (definitions stay): every side starts from empty tables.
SETUP_TRAITS="SELECT persona_define_trait('orders', 'count', 'purchase');
SELECT persona_define_trait('revenue', 'sum', 'purchase', 'price');
SELECT persona_define_trait('orders_7d', 'count', 'purchase', time_window => '7 days');
INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
SELECT 'seed-' || (n % 2000), 'purchase', jsonb_build_object('price', n % 300),
       now() - interval '60 days' * ((n * 7) % 997) / 997.0
  FROM generate_series(1, 10000) AS n;"
SETUP_MODEL="SELECT persona_train_model('buyer', 'purchase', '30 days', ARRAY['orders', 'revenue', 'orders_7d']);"
SETUP_SEGMENT="SELECT persona_create_segment('likely_buyers', 'buyer > 0.5');"
EMPTY="SET persona.maintenance = on; TRUNCATE persona.events, persona.profiles, persona.identities, persona.segment_log CASCADE;"

ingest_run() { # side -> ms
	local ms
	case $1 in
	plain)
		psql_q -c 'TRUNCATE plain' -c CHECKPOINT
		ms=$(timed "$PLAIN_INSERT")
		;;
	traits | model | segment)
		psql_q -c "$RESET_PERSONA" >/dev/null
		psql_q -c "$SETUP_TRAITS" >/dev/null
		[[ $1 == traits ]] || psql_q -c "$SETUP_MODEL" >/dev/null
		psql_q -c "$EMPTY" >/dev/null
		[[ $1 != segment ]] || psql_q -c "$SETUP_SEGMENT" >/dev/null
		psql_q -c CHECKPOINT
		ms=$(timed "$PERSONA_INSERT")
		expect "profiles" "SELECT count(*) || '/' || sum(event_count) FROM persona.profiles" "$INGEST_USERS/$INGEST_EVENTS"
		if [[ $1 == segment ]]; then
			expect "segment members" "SELECT count(*) FROM persona.segment_members WHERE segment = 'likely_buyers'" \
				"$(PGOPTIONS='-c max_parallel_workers_per_gather=0' val "SELECT count(*) FROM persona.traits WHERE buyer > 0.5")"
		fi
		;;
	esac
	echo "$ms"
}

sides=(traits model segment plain)
declare -A all=()
for ((r = 1; r <= RUNS; r++)); do
	declare -A run=()
	for ((i = 0; i < 4; i++)); do
		side=${sides[$(((i + r - 1) % 4))]}
		run[$side]=$(ingest_run "$side")
	done
	line=$(printf '  run %d:' "$r")
	for side in "${sides[@]}"; do
		line+=$(printf ' %s %7.1f ms %9s ev/s |' "$side" "${run[$side]}" "$(fmt_int "$INGEST_EVENTS * 1000 / ${run[$side]}")")
		all[$side]+=" ${run[$side]}"
	done
	echo "${line% |}"
done
declare -A MS=()
for side in "${sides[@]}"; do
	MS[$side]=$(median <<<"${all[$side]}")
done
MODEL_RATIO=$(calc "100 * ${MS[traits]} / ${MS[model]}")
SEGMENT_RATIO=$(calc "100 * ${MS[traits]} / ${MS[segment]}")
printf '  median: traits %s ev/s | model %s ev/s | segment %s ev/s | plain %s ev/s\n' \
	"$(fmt_int "$INGEST_EVENTS * 1000 / ${MS[traits]}")" "$(fmt_int "$INGEST_EVENTS * 1000 / ${MS[model]}")" \
	"$(fmt_int "$INGEST_EVENTS * 1000 / ${MS[segment]}")" "$(fmt_int "$INGEST_EVENTS * 1000 / ${MS[plain]}")"
psql_q -c "$RESET_PERSONA" -c 'DROP TABLE IF EXISTS models_src, plain'

# ---------------------------------------------------------------------------
# 4. Summary
# ---------------------------------------------------------------------------
echo
echo "== summary (medians: training $TRAIN_RUNS runs per side, ingest $RUNS runs per side)"
printf '  %-52s %12s %12s %9s %8s %5s\n' "measure" "persona" "baseline" "ratio" "target" "met"
printf '  %-52s %10.1f ms %9.1f ms %8.2fx %7sx %5s\n' "training vs one plain GROUP BY pass" \
	"$TR_TRAIN" "$TR_PLAIN" "$TR_RATIO" "<=$TRAIN_TARGET" "$(met "$TR_RATIO" "$TRAIN_TARGET" max)"
printf '  %-52s %12.4f %12.4f %9.4f %8s %5s\n' "held-out AUC vs scikit-learn (difference)" \
	"$P_AUC" "$SK_AUC" "$AUC_DIFF" "<=$AUC_TARGET" "$(met "$AUC_DIFF" "$AUC_TARGET" max)"
printf '  %-52s %12s %12s %8.1f%% %7s%% %5s\n' "bulk INSERT with a model over 3 traits vs without (ev/s)" \
	"$(fmt_int "$INGEST_EVENTS * 1000 / ${MS[model]}")" "$(fmt_int "$INGEST_EVENTS * 1000 / ${MS[traits]}")" \
	"$MODEL_RATIO" ">=$INGEST_TARGET" "$(met "$MODEL_RATIO" "$INGEST_TARGET" min)"
printf '  %-52s %12s %12s %8.1f%%\n' "  and a segment on the score vs without (ev/s)" \
	"$(fmt_int "$INGEST_EVENTS * 1000 / ${MS[segment]}")" "$(fmt_int "$INGEST_EVENTS * 1000 / ${MS[traits]}")" "$SEGMENT_RATIO"
printf '  %-52s %12s %12s %8.1f%%\n' "  without the model vs plain PostgreSQL (ev/s)" \
	"$(fmt_int "$INGEST_EVENTS * 1000 / ${MS[traits]}")" "$(fmt_int "$INGEST_EVENTS * 1000 / ${MS[plain]}")" \
	"$(calc "100 * ${MS[plain]} / ${MS[traits]}")"
echo "  (targets are information only: this benchmark never fails on a timing)"
