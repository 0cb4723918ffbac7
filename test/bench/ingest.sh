#!/usr/bin/env bash
# Ingest throughput: persona against plain PostgreSQL, measured in the same run.
#
#  1. Bulk: one INSERT ... SELECT of $EVENTS events over $USERS users into
#     persona.events, and the same rows into `plain`, a table with the same
#     columns, defaults and indexes but no triggers.  Two cases: "new users"
#     (the insert creates every profile) and "known users" (every profile
#     exists already).  The statement alone is timed (psql \timing, commit
#     included), each from a fresh connection.
#  2. Single-event transactions from 2 pgbench clients: persona_track() against
#     a one-row INSERT INTO plain of the same shape, each in autocommit.
#
# The machine may be shared and noisy: every figure is the median of several
# runs, persona and plain alternate (ABBA), and nothing here asserts a timing.
# The script fails only when something errors or persona's tables end up
# wrong.  Connection from PGHOST/PGPORT/PGUSER/PGDATABASE (scripts/bench.sh);
# the database must have persona installed and is left with the bench tables.
#
# Knobs (environment): BENCH_USERS (100000; each user gets 2 bulk events),
# BENCH_RUNS (5 bulk runs per side and case), BENCH_TPS_RUNS (5 pgbench runs
# per side), BENCH_SECONDS (12 s per pgbench run), BENCH_TPS_USERS (10000).
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

USERS=${BENCH_USERS:-100000}
EVENTS=$((2 * USERS))
RUNS=${BENCH_RUNS:-5}
TPS_RUNS=${BENCH_TPS_RUNS:-5}
SECONDS_PER_RUN=${BENCH_SECONDS:-12}
TPS_USERS=${BENCH_TPS_USERS:-10000}
CLIENTS=2

BULK_TARGET=50 # persona events/s as a % of plain's (the issue's target)
TPS_TARGET=80  # persona tps as a % of plain's

WORK=$(mktemp -d "${TMPDIR:-/tmp}/persona-bench.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT


# Runs one statement in a fresh session; prints its duration in ms and the
# WAL written meanwhile, in bytes (read before and after, outside the timing).
timed() {
	local out ms lsn
	lsn=$(val 'SELECT pg_current_wal_insert_lsn()')
	out=$(psql_q -c '\timing on' -c "$1")
	ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out" | tail -n 1)
	[[ -n $ms ]] || { printf 'bench: no timing from psql:\n%s\n' "$out" >&2; exit 1; }
	echo "$ms $(val "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$lsn')")"
}

met() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t ? "yes" : "NO") }'; }

# Fails the benchmark when persona's bookkeeping is not what the rows imply.

echo "persona ingest benchmark"
echo "  $(val "SELECT split_part(version(), ' on ', 1)") | $(nproc) CPUs | persona $(val "SELECT extversion FROM pg_extension WHERE extname = 'persona'")"
echo "  shared_buffers=$(val 'SHOW shared_buffers') max_wal_size=$(val 'SHOW max_wal_size')" \
	"checkpoint_timeout=$(val 'SHOW checkpoint_timeout') work_mem=$(val 'SHOW work_mem')" \
	"synchronous_commit=$(val 'SHOW synchronous_commit') fsync=$(val 'SHOW fsync')"

# ---------------------------------------------------------------------------
# Setup (untimed): the source rows and the plain table.
#
# Event n belongs to pass (n-1)/USERS; each pass visits every user once, in a
# scrambled order (a different one per pass).  persona hands out profile ids
# in order of first appearance, so `pid` (the number of the event where the
# user first appears) is what persona's profile id will be after a restart
# of its sequence: the baseline stores it as profile_id and its primary key
# sees the same keys in the same order as persona's.
# ---------------------------------------------------------------------------
psql_q -v users="$USERS" -v events="$EVENTS" <<'SQL'
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_src, plain;
DROP SEQUENCE IF EXISTS plain_event_id_seq;

CREATE TABLE bench_src AS
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
       (ARRAY['page_view', 'page_view', 'add_to_cart', 'search', 'purchase'])[ev.n % 5 + 1] AS event_type,
       jsonb_build_object('sku', 'sku-' || ev.n % 5000, 'price', (ev.n % 997) + 0.99,
                          'path', '/products/' || ev.n % 5000) AS properties,
       jsonb_build_object('channel', 'web', 'device', (ARRAY['mobile', 'desktop', 'tablet'])[ev.n % 3 + 1],
                          'session_id', 's-' || ev.n / 7,
                          'geo', jsonb_build_object('country', 'IN', 'city', 'Mumbai')) AS context,
       timestamptz '2024-01-01 00:00:00+00' + ev.n * interval '13 seconds' AS occurred_at
FROM ev JOIN first USING (u)
ORDER BY ev.n;

-- persona's events go to a monthly time partition, as in production (docs/operations.md).
SELECT persona.add_event_partitions(now() + interval '1 month', '1 month', now() - interval '1 month');
CREATE SEQUENCE plain_event_id_seq CACHE 32;  -- as persona.event_id_seq
CREATE TABLE plain (LIKE persona.events_default INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE plain ALTER COLUMN event_id SET DEFAULT nextval('plain_event_id_seq');
ALTER SEQUENCE plain_event_id_seq OWNED BY plain.event_id;
VACUUM (FREEZE, ANALYZE) bench_src;
SELECT count(*) FROM bench_src \g /dev/null
SQL
expect "distinct users in the source" "SELECT count(DISTINCT user_id) FROM bench_src" "$USERS"
expect "first appearance of each user" \
	"SELECT count(DISTINCT pid) = $USERS AND max(pid) = $USERS FROM bench_src" t

PERSONA_INSERT="INSERT INTO persona.events (user_id, event_type, properties, context, occurred_at)
	SELECT user_id, event_type, properties, context, occurred_at FROM bench_src"
PLAIN_INSERT="INSERT INTO plain (profile_id, user_id, event_type, properties, context, occurred_at)
	SELECT pid, user_id, event_type, properties, context, occurred_at FROM bench_src"
# Empties persona (merge history too, where there is one) and restarts the
# profile ids, so every "new users" run allocates the same ids.
RESET_PERSONA="DO \$\$ BEGIN
	PERFORM pg_catalog.set_config('persona.maintenance', 'on', true);
	EXECUTE 'TRUNCATE persona.events, persona.profiles, persona.identities'
		|| CASE WHEN to_regclass('persona.merges') IS NULL THEN '' ELSE ', persona.merges' END
		|| ' CASCADE';
	ALTER SEQUENCE persona.profile_id_seq RESTART;
END \$\$"

# ---------------------------------------------------------------------------
# 1. Bulk ingest
# ---------------------------------------------------------------------------
# One measured run of a side: sets the state up, times the INSERT, checks
# what persona maintained, and vacuums so autovacuum stays out of the next run.
bulk_run() { # side case -> "ms wal_bytes"
	local side=$1 case=$2 res
	if [[ $side == plain ]]; then
		psql_q -c 'TRUNCATE plain' -c CHECKPOINT
		res=$(timed "$PLAIN_INSERT")
		expect "plain rows" "SELECT count(*) FROM plain" "$EVENTS"
		psql_q -c 'VACUUM ANALYZE plain'
	elif [[ $case == new ]]; then
		psql_q -c "$RESET_PERSONA" -c CHECKPOINT
		res=$(timed "$PERSONA_INSERT")
		expect "profiles created" "SELECT count(*) || '/' || sum(event_count) FROM persona.profiles" "$USERS/$EVENTS"
		expect "identities created" "SELECT count(*) FROM persona.identities" "$USERS"
		psql_q -c 'VACUUM ANALYZE persona.events, persona.profiles, persona.identities'
	else
		# Known users: only the events go; profiles keep counting up.
		psql_q -c 'SET persona.maintenance = on' -c 'TRUNCATE persona.events' -c 'VACUUM persona.profiles, persona.identities' -c CHECKPOINT
		res=$(timed "$PERSONA_INSERT")
		expect "profiles (known users)" "SELECT count(*) FROM persona.profiles" "$USERS"
		expect "identities (known users)" "SELECT count(*) FROM persona.identities" "$USERS"
		expect "events of known users" \
			"SELECT count(*) FROM persona.events e JOIN persona.identities i ON i.id = e.user_id AND i.profile_id = e.profile_id" \
			"$EVENTS"
		psql_q -c 'VACUUM ANALYZE persona.events, persona.profiles'
	fi
	echo "$res"
}

declare -A BULK_PERSONA BULK_PLAIN BULK_RATIO
bulk_case() { # case title
	local case=$1 r side res ms_p ms_b wal_p wal_b order
	local p_all="" b_all="" wp_all="" wb_all="" ratios="" mp mb
	echo
	echo "== bulk INSERT ... SELECT, $EVENTS events over $USERS users: $2"
	for ((r = 1; r <= RUNS; r++)); do
		# ABBA: which side goes first alternates, so drift hits both alike.
		if ((r % 2)); then order="persona plain"; else order="plain persona"; fi
		for side in $order; do
			res=$(bulk_run "$side" "$case")
			if [[ $side == persona ]]; then read -r ms_p wal_p <<<"$res"; else read -r ms_b wal_b <<<"$res"; fi
		done
		printf '  run %d: persona %7.1f ms %9s ev/s | plain %7.1f ms %9s ev/s | ratio %5.1f%%\n' \
			"$r" "$ms_p" "$(fmt_int "$EVENTS * 1000 / $ms_p")" "$ms_b" "$(fmt_int "$EVENTS * 1000 / $ms_b")" \
			"$(calc "100 * $ms_b / $ms_p")"
		p_all+=" $ms_p" b_all+=" $ms_b" wp_all+=" $wal_p" wb_all+=" $wal_b"
		ratios+=" $(calc "100 * $ms_b / $ms_p")"
	done
	mp=$(median <<<"$p_all")
	mb=$(median <<<"$b_all")
	BULK_PERSONA[$case]=$(calc "$EVENTS * 1000 / $mp")
	BULK_PLAIN[$case]=$(calc "$EVENTS * 1000 / $mb")
	BULK_RATIO[$case]=$(calc "100 * $mb / $mp")
	printf '  median: persona %.1f ms = %s events/s | plain %.1f ms = %s events/s\n' \
		"$mp" "$(fmt_int "${BULK_PERSONA[$case]}")" "$mb" "$(fmt_int "${BULK_PLAIN[$case]}")"
	printf '  persona/plain %.1f%% (median of the per-run ratios %.1f%%; target >= %d%%)\n' \
		"${BULK_RATIO[$case]}" "$(median <<<"$ratios")" "$BULK_TARGET"
	printf '  WAL per event (median): persona %s bytes | plain %s bytes\n' \
		"$(fmt_int "$(median <<<"$wp_all") / $EVENTS")" "$(fmt_int "$(median <<<"$wb_all") / $EVENTS")"
}

bulk_case new "new users (every profile created by the insert)"

# Known users: load the same events once, so every user has a profile.
psql_q -c "$RESET_PERSONA" -c "$PERSONA_INSERT" -c 'VACUUM ANALYZE persona.events, persona.profiles, persona.identities'
bulk_case known "known users (all $USERS profiles exist)"

# ---------------------------------------------------------------------------
# 2. Single-event transactions, $CLIENTS clients
# ---------------------------------------------------------------------------
cat >"$WORK/persona.sql" <<'EOF'
\set uid random(1, :users)
SELECT persona_track('user-' || :uid, 'page_view', '{"sku":"x"}');
EOF
cat >"$WORK/plain.sql" <<'EOF'
\set uid random(1, :users)
INSERT INTO plain (profile_id, user_id, event_type, properties) VALUES (:uid, 'user-' || :uid, 'page_view', '{"sku":"x"}') RETURNING event_id;
EOF

# Steady state: the $TPS_USERS users are known, as on a site that is running.
psql_q -c "$RESET_PERSONA" -c 'TRUNCATE plain' \
	-c "INSERT INTO persona.events (user_id, event_type, occurred_at)
	    SELECT 'user-' || u, 'signup', timestamptz '2024-01-01 00:00:00+00' FROM generate_series(1, $TPS_USERS) AS u" \
	-c 'VACUUM ANALYZE persona.events, persona.profiles, persona.identities, plain'

tps_run() { # side -> "tps latency_ms"
	local out tps lat
	psql_q -c CHECKPOINT
	out=$(pgbench -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_PER_RUN" \
		-D users="$TPS_USERS" -f "$WORK/$1.sql" 2>&1) ||
		{ printf 'bench: pgbench (%s) failed:\n%s\n' "$1" "$out" >&2; exit 1; }
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -n 1)
	lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out")
	[[ -n $tps && -n $lat ]] || { printf 'bench: no tps in pgbench output:\n%s\n' "$out" >&2; exit 1; }
	echo "$tps $lat"
}

echo
echo "== single-event transactions: $CLIENTS clients, ${SECONDS_PER_RUN} s per run, $TPS_USERS users, pgbench -M prepared"
echo "   persona: SELECT persona_track('user-' || :uid, 'page_view', '{\"sku\":\"x\"}')"
echo "   plain:   INSERT INTO plain (profile_id, user_id, event_type, properties) VALUES (...) RETURNING event_id"
tp_all="" tb_all="" lp_all="" lb_all="" tratios=""
for ((r = 1; r <= TPS_RUNS; r++)); do
	if ((r % 2)); then order="persona plain"; else order="plain persona"; fi
	for side in $order; do
		res=$(tps_run "$side")
		read -r tps lat <<<"$res"
		if [[ $side == persona ]]; then tp=$tps lp=$lat; else tb=$tps lb=$lat; fi
	done
	printf '  run %d: persona %8.1f tps %6.3f ms | plain %8.1f tps %6.3f ms | ratio %5.1f%%\n' \
		"$r" "$tp" "$lp" "$tb" "$lb" "$(calc "100 * $tp / $tb")"
	tp_all+=" $tp" tb_all+=" $tb" lp_all+=" $lp" lb_all+=" $lb"
	tratios+=" $(calc "100 * $tp / $tb")"
done
TPS_P=$(median <<<"$tp_all")
TPS_B=$(median <<<"$tb_all")
LAT_P=$(median <<<"$lp_all")
LAT_B=$(median <<<"$lb_all")
TPS_RATIO=$(calc "100 * $TPS_P / $TPS_B")
printf '  median: persona %.1f tps (mean latency %.3f ms) | plain %.1f tps (mean latency %.3f ms)\n' \
	"$TPS_P" "$LAT_P" "$TPS_B" "$LAT_B"
printf '  persona/plain %.1f%% (median of the per-run ratios %.1f%%; target >= %d%%)\n' \
	"$TPS_RATIO" "$(median <<<"$tratios")" "$TPS_TARGET"
expect "profiles after pgbench" "SELECT count(*) FROM persona.profiles" "$TPS_USERS"
expect "event counts after pgbench" \
	"SELECT (SELECT sum(event_count) FROM persona.profiles) = (SELECT count(*) FROM persona.events)" t

# ---------------------------------------------------------------------------
# 3. Summary
# ---------------------------------------------------------------------------
echo
echo "== summary (medians; bulk: $RUNS runs per side and case, single-event: $TPS_RUNS x ${SECONDS_PER_RUN} s per side)"
printf '  %-40s %14s %14s %9s %8s %5s\n' "measure" "persona" "plain" "ratio" "target" "met"
for case in new known; do
	printf '  %-40s %14s %14s %8.1f%% %7s%% %5s\n' "bulk INSERT, $case users (events/s)" \
		"$(fmt_int "${BULK_PERSONA[$case]}")" "$(fmt_int "${BULK_PLAIN[$case]}")" \
		"${BULK_RATIO[$case]}" ">=$BULK_TARGET" "$(met "${BULK_RATIO[$case]}" "$BULK_TARGET")"
done
printf '  %-40s %14.1f %14.1f %8.1f%% %7s%% %5s\n' "single-event tx, $CLIENTS clients (tps)" \
	"$TPS_P" "$TPS_B" "$TPS_RATIO" ">=$TPS_TARGET" "$(met "$TPS_RATIO" "$TPS_TARGET")"
printf '  %-40s %14.3f %14.3f\n' "  mean latency (ms)" "$LAT_P" "$LAT_B"
echo "  (targets are information only: this benchmark never fails on a timing)"
