#!/usr/bin/env bash
# Backup and restore of a database using persona, against the same data in
# plain tables, in the same run.
#
# $EVENTS events ($EVENTS / 10 people, 10 events each over 60 days: page
# views and purchases), ingested through persona with two computed traits
# (a lifetime count and a 7-day sum) and a segment on them. The plain side
# is a second database, $PLAIN, holding a copy of every non-empty persona
# table as an ordinary table of the same columns, rows (COPY) and indexes:
# the same bytes to dump and restore, with no extension, no trigger, no
# view. Per run and side, each timed on its own (wall clock):
#   - pg_dump -Fc (custom) and pg_dump -Fp (plain) of the database;
#   - the custom dump restored with pg_restore -d into a new database, and
#     the plain dump with psql -f into another, each with no special flag.
# Each restored copy is checked (events and profiles as many as the
# source's; persona's restore ran no event through ingest again: the
# profiles' event counts add up to the events), then dropped. Medians of
# $RUNS runs; dump sizes beside. Nothing asserts a timing.
#
# Connection from PGHOST/PGPORT/PGUSER/PGDATABASE (scripts/bench.sh); the
# database must have persona installed. It empties persona's tables, and
# creates and drops the databases $PLAIN and persona_bench_restore_*.
#
# Knobs (environment): BENCH_DUMP_EVENTS (1000000), BENCH_DUMP_RUNS (3).
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

EVENTS=${BENCH_DUMP_EVENTS:-1000000}
RUNS=${BENCH_DUMP_RUNS:-3}
PEOPLE=$((EVENTS / 10))
SRC=${PGDATABASE:?PGDATABASE must name a database with persona installed}
PLAIN=persona_bench_plain
WORK=$(mktemp -d "${TMPDIR:-/tmp}/persona-bench-dump.XXXXXX")
# The server's OS user (root runs it as postgres) must not need to read it:
# every file is written and read by this script's own pg_dump and psql.
cleanup() {
	rm -rf -- "$WORK"
	psql_q -d postgres -c 'SET client_min_messages = warning' -c "DROP DATABASE IF EXISTS $PLAIN" \
		-c 'DROP DATABASE IF EXISTS persona_bench_restore_c' \
		-c 'DROP DATABASE IF EXISTS persona_bench_restore_p' >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Seconds a command takes (wall clock).
seconds() { # command...
	local t0 t1
	t0=$(date +%s.%N)
	"$@"
	t1=$(date +%s.%N)
	calc "$t1 - $t0"
}

echo "== dump and restore: $(fmt_int "$EVENTS") events, $(fmt_int "$PEOPLE") people, persona vs the same data in plain tables, $RUNS runs"
psql_q <<SQL >/dev/null
SET client_min_messages = warning;
DO \$\$ BEGIN
  PERFORM persona_drop_segment(s.name) FROM persona.segments AS s;
  PERFORM persona_drop_trait(d.name) FROM persona.trait_defs AS d;
END \$\$;
SET persona.maintenance = on;
TRUNCATE persona.events, persona.profiles, persona.identities, persona.merges,
         persona.segment_members, persona.segment_log;
SELECT persona_define_trait('dump_orders', 'count', 'purchase');
SELECT persona_define_trait('dump_spend_7d', 'sum', 'purchase', 'price', '7 days');
SELECT persona_create_segment('dump_buyers', 'dump_orders >= 2 OR dump_spend_7d > 100');
SQL
# Ingest in statements of 100,000 events.
for ((lo = 0; lo < EVENTS; lo += 100000)); do
	hi=$((lo + 100000 < EVENTS ? lo + 100000 : EVENTS))
	psql_q -c "INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
		SELECT 'dump-' || (g % $PEOPLE),
		       CASE WHEN g % 5 = 0 THEN 'purchase' ELSE 'page_view' END,
		       jsonb_build_object('sku', 'sku-' || (g % 997), 'price', g % 200),
		       now() - (g % 60) * interval '1 day' - (g % 1440) * interval '1 minute'
		  FROM generate_series($lo, $((hi - 1))) AS g" >/dev/null
done
psql_q -c 'VACUUM ANALYZE' >/dev/null
expect "events ingested" "SELECT count(*) FROM persona.events" "$EVENTS"
expect "profiles" "SELECT count(*) FROM persona.profiles" "$PEOPLE"

# The plain side: every non-empty persona table (partitions, not their
# parents) as an ordinary table of public, its rows copied and its indexes
# built after (a column of a persona type or a reg* type held as text).
psql_q -d postgres -c 'SET client_min_messages = warning' -c "DROP DATABASE IF EXISTS $PLAIN" \
	-c "CREATE DATABASE $PLAIN" >/dev/null
mapfile -t tables < <(val "SELECT c.relname FROM pg_class AS c
	JOIN pg_namespace AS n ON n.oid = c.relnamespace
	WHERE n.nspname = 'persona' AND c.relkind = 'r'
	  AND EXISTS (SELECT FROM pg_stat_user_tables AS s WHERE s.relid = c.oid AND s.n_live_tup > 0)
	ORDER BY 1")
for t in "${tables[@]}"; do
	val "SELECT format('CREATE TABLE public.%I (%s)', c.relname,
	        string_agg(format('%I %s%s', a.attname,
	                          CASE WHEN ty.typnamespace = 'persona'::regnamespace
	                                 OR format_type(a.atttypid, NULL) LIKE 'reg%' THEN 'text'
	                               ELSE format_type(a.atttypid, a.atttypmod) END,
	                          CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END), ', ' ORDER BY a.attnum))
	       FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid
	       JOIN pg_type AS ty ON ty.oid = a.atttypid
	      WHERE c.oid = 'persona.$t'::regclass AND a.attnum > 0 AND NOT a.attisdropped
	      GROUP BY c.relname" | psql_q -d "$PLAIN" >/dev/null
	psql_q -c "COPY persona.$t TO STDOUT" | psql_q -d "$PLAIN" -c "COPY public.$t FROM STDIN"
	val "SELECT replace(i.indexdef, ' ON persona.', ' ON public.') || ';'
	       FROM pg_indexes AS i WHERE i.schemaname = 'persona' AND i.tablename = '$t'" |
		psql_q -d "$PLAIN" >/dev/null
done
psql_q -d "$PLAIN" -c 'VACUUM ANALYZE' >/dev/null
[[ $(val "SELECT count(*) FROM public.profiles" -d "$PLAIN") == "$PEOPLE" ]] ||
	{ echo "bench: the plain copy lacks profiles" >&2; exit 1; }
plain_rows=$(val "SELECT sum(n_live_tup) FROM pg_stat_user_tables" -d "$PLAIN")
echo "  plain copy: ${#tables[@]} tables, $(fmt_int "$plain_rows") rows"

# A restored copy has the source's events and profiles, and its profiles
# count every event once.
check_copy() { # db side label
	local db=$1 events profiles
	if [[ $2 == persona ]]; then
		events=$(val "SELECT count(*) FROM persona.events" -d "$db")
		profiles=$(val "SELECT count(*) || '/' || sum(event_count) FROM persona.profiles" -d "$db")
		[[ $events == "$EVENTS" && $profiles == "$PEOPLE/$EVENTS" ]] ||
			{ echo "bench: $3: $events events, profiles/event counts $profiles" >&2; exit 1; }
	else
		profiles=$(val "SELECT count(*) FROM public.profiles" -d "$db")
		[[ $profiles == "$PEOPLE" ]] || { echo "bench: $3: $profiles profiles" >&2; exit 1; }
	fi
}

declare -A all
for ((r = 1; r <= RUNS; r++)); do
	if ((r % 2)); then order="persona plain"; else order="plain persona"; fi
	line="  run $r:"
	for side in $order; do
		if [[ $side == persona ]]; then db=$SRC; else db=$PLAIN; fi
		psql_q -d postgres -c 'SET client_min_messages = warning' \
			-c 'DROP DATABASE IF EXISTS persona_bench_restore_c' \
			-c 'DROP DATABASE IF EXISTS persona_bench_restore_p' \
			-c 'CREATE DATABASE persona_bench_restore_c' \
			-c 'CREATE DATABASE persona_bench_restore_p' -c 'CHECKPOINT' >/dev/null
		dc=$(seconds pg_dump -Fc -f "$WORK/$side.dump" -d "$db")
		dp=$(seconds pg_dump -Fp -f "$WORK/$side.sql" -d "$db")
		rc=$(seconds pg_restore -d persona_bench_restore_c "$WORK/$side.dump")
		rp=$(seconds psql -X -q -v ON_ERROR_STOP=1 -o /dev/null -d persona_bench_restore_p -f "$WORK/$side.sql")
		check_copy persona_bench_restore_c "$side" "$side, custom format, run $r"
		check_copy persona_bench_restore_p "$side" "$side, plain format, run $r"
		all[$side.dc]+=" $dc" all[$side.dp]+=" $dp" all[$side.rc]+=" $rc" all[$side.rp]+=" $rp"
		all[$side.sc]=$(stat -c %s "$WORK/$side.dump") all[$side.sp]=$(stat -c %s "$WORK/$side.sql")
		line+=$(printf ' %s: dump -Fc %.2f s, -Fp %.2f s, pg_restore %.2f s, psql -f %.2f s;' \
			"$side" "$dc" "$dp" "$rc" "$rp")
	done
	echo "$line"
done
psql_q -d postgres -c 'DROP DATABASE persona_bench_restore_c' -c 'DROP DATABASE persona_bench_restore_p' >/dev/null

echo "== summary (medians of $RUNS runs, $(fmt_int "$EVENTS") events)"
printf '  %-34s %12s %12s %9s\n' "measure" "persona" "plain" "ratio"
for m in dc:"pg_dump -Fc (custom)" dp:"pg_dump -Fp (plain)" rc:"pg_restore -d (custom)" rp:"psql -f (plain)"; do
	k=${m%%:*} label=${m#*:}
	a=$(median <<<"${all[persona.$k]}") b=$(median <<<"${all[plain.$k]}")
	printf '  %-34s %10.2f s %10.2f s %8.2fx\n' "$label" "$a" "$b" "$(calc "$a / $b")"
done
for k in sc sp; do
	a=${all[persona.$k]} b=${all[plain.$k]}
	printf '  %-34s %9.1f MB %9.1f MB %8.2fx\n' "size, $([[ $k == sc ]] && echo custom || echo plain) format" \
		"$(calc "$a / 1048576")" "$(calc "$b / 1048576")" "$(calc "$a / $b")"
done
