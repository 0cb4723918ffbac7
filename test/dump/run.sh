#!/usr/bin/env bash
# The backup test: pg_dump of a database using persona, restored with psql
# (plain format) and pg_restore (custom format) into fresh databases, with no
# special flag, gives an exact, working copy (docs/operations.md).
#
#   test/dump/run.sh          (scripts/test.sh runs it)
#
# Runs against the server in the PG* environment, with persona installed.
#
# 1. A source database: CREATE EXTENSION persona, then the data of the
#    upgrade test (test/upgrade/load.sql: every path in, merges, traits,
#    segments, actions, decisions, feedback, forget), with the events in
#    two time partitions made by persona.add_event_partitions; linked
#    content (test/dump/content.sql: a table linked, a message that renders
#    it); and a model with a segment on its score.
# 2. pg_dump -Fp and -Fc; each restored into a new, empty database, by psql
#    -f and by pg_restore -d. Then, for each copy:
#    - the restore printed no error;
#    - its schema (test/upgrade/schema.sql: persona.traits and the views
#      with their trait columns, triggers, privileges) equals the source's;
#    - its data, every row of every table and every sequence, unmasked
#      (test/upgrade/data.sql -v exact=1), and every row of persona.traits,
#      equal the source's: no event went through ingest a second time;
#    - the linked content's message renders with the linked row;
#    - the same work done in both (test/upgrade/use.sql: new events of known
#      and new people, merges, a new trait and segment, decisions, forget)
#      leaves both equal again (wall-clock times masked), and a new event
#      of a known person counted once on its profile, traits and segments.
#
# Prints "ok N - ..." / "not ok N - ..." per check, with a unified diff
# (source on the left) under each failed comparison; exits non-zero if any
# check failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
UPGRADE=$HERE/../upgrade
# test/upgrade/load.sql grants to these roles.
ROLES=(persona_upgrade_ingest persona_upgrade_reader)
SOURCE=persona_dump_source
NAME=dump
# shellcheck source=test/okscript.sh
source "$HERE/../okscript.sh"

# A database's schema, exact data and persona.traits rows, as sorted lines,
# into $WORK/NAME.{schema,data}; with "masked", the data masked as for the
# upgrade test (wall-clock times, sampled scores).
snapshot() { # db name [masked]
	local exact=(-v exact=1)
	[[ ${3:-} != masked ]] || exact=()
	# A failed query leaves its error in the snapshot, for the diff to show.
	run_sql "$1" -At -f "$UPGRADE/schema.sql" >"$WORK/$2.schema" 2>&1 || true
	{
		run_sql "$1" -At "${exact[@]}" -f "$UPGRADE/data.sql"
		# shellcheck disable=SC2016 # $$ quotes SQL, not the shell
		run_sql "$1" -At -c "SET timezone = 'UTC'" \
			-c 'SELECT $$persona.traits|$$ || x.r FROM (SELECT to_jsonb(t)::text AS r FROM persona.traits AS t) AS x ORDER BY x.r COLLATE "C"'
	} >"$WORK/$2.data" 2>&1 || true
}

compare() { # what source-file copy-file label
	local what=$1 a=$2 b=$3 label=$4
	if [[ ! -s $a ]]; then
		not_ok "$what: the source's snapshot is empty"
	elif diff -u --label source --label "$label" "$a" "$b" >"$WORK/diff"; then
		ok "$what"
	else
		not_ok "$what differs (- source, + $label):"
		sed 's/^/    /' "$WORK/diff"
	fi
}

# One value from a database.
value() { # db sql
	run_sql "$1" -At -c "$2"
}

# A new event of a known person in the copy: counted once on the profile,
# on its traits, and its segment entered (anon-late-5, seen once by use.sql).
check_new_event() { # db label
	local db=$1 label=$2 before after
	local probe="SELECT p.event_count || ' ' || coalesce(t.u_orders, 0) || ' ' || coalesce(t.u_revenue, 0)
	                    || ' ' || persona_in_segment('anon-late-5', 'u_big_spenders')
	               FROM persona.identities AS i
	               JOIN persona.profiles AS p USING (profile_id) JOIN persona.traits AS t USING (profile_id)
	              WHERE i.id = 'anon-late-5'"
	before=$(value "$db" "$probe" 2>&1) || true
	value "$db" "SELECT persona_track(NULL, 'purchase', '{\"revenue\": 20000}', '2025-07-03 10:00+00', '{}', 'anon-late-5')" \
		>/dev/null 2>&1 || true
	after=$(value "$db" "$probe" 2>&1) || true
	if [[ $before == '1 0 0 false' && $after == '2 1 20000 true' ]]; then
		ok "$label: a new event counts once on its profile, traits and segments"
	else
		not_ok "$label: a new event of anon-late-5: before '$before' (want '1 0 0 false'), after '$after' (want '2 1 20000 true')"
	fi
}

# Linked content works in the copy: the queued message of test/dump/content.sql
# renders with the row of the linked table (persona_render).
check_linked_content() { # db label
	local db=$1 label=$2 got
	got=$(value "$db" "SELECT persona_render(m.message_id)->>'title' FROM persona.messages AS m
	                    WHERE m.source = 'trigger:dump_cart'" 2>&1) || true
	if [[ $got == 'Cloudrunner: 3 left' ]]; then
		ok "$label: linked content renders"
	else
		not_ok "$label: persona_render of the linked content gave '$got' (want 'Cloudrunner: 3 left')"
	fi
}

make_roles

new_db "$SOURCE"
run_sql "$SOURCE" -c 'CREATE EXTENSION persona' >/dev/null
if ! run_sql "$SOURCE" -f "$UPGRADE/load.sql" >"$WORK/load.log" 2>&1; then
	not_ok "loading test/upgrade/load.sql failed:"
	sed 's/^/    /' "$WORK/load.log"
	finish
fi
if ! run_sql "$SOURCE" -f "$HERE/content.sql" >"$WORK/content.log" 2>&1; then
	not_ok "loading test/dump/content.sql failed:"
	sed 's/^/    /' "$WORK/content.log"
	finish
fi
# A model and a segment on its score: the model's column of persona.traits
# comes back with the restore (persona.models_restored), and the segment
# reads it. The cutoff falls inside load.sql's events (June 2025).
if ! run_sql "$SOURCE" \
	-c "SELECT persona_train_model('u_buyer', 'purchase', now() - timestamptz '2025-06-03 12:00+00',
	                               ARRAY['u_orders', 'u_skus', 'event_count'])" \
	-c "SELECT persona_create_segment('u_likely_buyers', 'u_buyer > 0.2')" >>"$WORK/load.log" 2>&1; then
	not_ok "training a model on test/upgrade/load.sql's events failed:"
	sed 's/^/    /' "$WORK/load.log"
	finish
fi
# Time partitions made after CREATE EXTENSION (not extension members: dumped
# as tables of their own, rows and all), holding the events of June and
# July 2025; the rest stay in the default partition (docs/operations.md).
run_sql "$SOURCE" -c "SELECT persona.add_event_partitions('2025-07-31', '1 month', '2025-06-01')" >/dev/null
snapshot "$SOURCE" source
pg_dump -Fp -d "$SOURCE" -f "$WORK/dump.sql"
pg_dump -Fc -d "$SOURCE" -f "$WORK/dump.custom"

for format in plain custom; do
	db=persona_dump_$format
	label="restored from pg_dump -F${format:0:1}"
	new_db "$db"
	if [[ $format == plain ]]; then
		psql -X -q -d "$db" -f "$WORK/dump.sql" >"$WORK/restore.log" 2>&1 || true
	else
		pg_restore -d "$db" "$WORK/dump.custom" >"$WORK/restore.log" 2>&1 || true
	fi
	if grep -q 'ERROR' "$WORK/restore.log"; then
		not_ok "$label: the restore failed:"
		sed 's/^/    /' "$WORK/restore.log"
	else
		ok "$label: the restore printed no error"
	fi
	snapshot "$db" "$format"
	compare "$label: schema" "$WORK/source.schema" "$WORK/$format.schema" "$label"
	compare "$label: every row and sequence" "$WORK/source.data" "$WORK/$format.data" "$label"
	check_linked_content "$db" "$label"
done

# The same work in the source and in each copy leaves them equal.
run_sql "$SOURCE" -f "$UPGRADE/use.sql" >/dev/null
snapshot "$SOURCE" source.used masked
for format in plain custom; do
	db=persona_dump_$format
	label="restored from pg_dump -F${format:0:1}"
	if run_sql "$db" -f "$UPGRADE/use.sql" >"$WORK/use.log" 2>&1; then
		snapshot "$db" "$format.used" masked
		compare "$label, then used: schema" "$WORK/source.used.schema" "$WORK/$format.used.schema" "$label, then used"
		compare "$label, then used: data" "$WORK/source.used.data" "$WORK/$format.used.data" "$label, then used"
	else
		not_ok "$label: test/upgrade/use.sql failed:"
		sed 's/^/    /' "$WORK/use.log"
	fi
	check_new_event "$db" "$label"
done

finish
