#!/usr/bin/env bash
# The upgrade test: every released version, upgraded step by step to the
# current one, must end up exactly like a fresh install of the current one.
#
#   test/upgrade/run.sh CURRENT RELEASED...     (scripts/test.sh runs it)
#
# Runs against the server in the PG* environment, with persona installed
# (every released install script and every upgrade script, as `make install`
# puts them). RELEASED lists the released versions oldest first (the
# Makefile's RELEASED).
#
# 1. A fresh database: CREATE EXTENSION persona (CURRENT), load.sql.
# 2. For each released version S older than CURRENT, a database:
#    CREATE EXTENSION persona VERSION 'S', load.sql, then
#    ALTER EXTENSION persona UPDATE TO each later version in turn, the last
#    step as a user runs it (ALTER EXTENSION persona UPDATE). Then
#    - its schema (schema.sql) and data (data.sql) equal the fresh one's;
#    - use.sql, run in both, leaves schema and data equal again (the
#      upgraded install behaves as a fresh one does on the old data);
#    - DROP EXTENSION persona leaves nothing (schema.sql prints nothing, no
#      privileges held by roles in the database, no schema persona).
# 3. The same drop check in the fresh database.
#
# Prints "ok N - ..." / "not ok N - ..." per check, with a unified diff
# (fresh install on the left) under each failed comparison; exits non-zero
# if any check failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
(($# >= 1)) || { echo "usage: $0 CURRENT RELEASED..." >&2; exit 2; }
CURRENT=$1
shift
RELEASED=("$@")
ROLES=(persona_upgrade_ingest persona_upgrade_reader)
FRESH=persona_upgrade_fresh
NAME=upgrade
# shellcheck source=test/okscript.sh
source "$HERE/../okscript.sh"

# As docs/roles.md tells users: an ON ALL TABLES grant covers the tables
# that existed when it ran, so the reader's grant is run again after an
# update that adds tables (and, to compare like with like, in the fresh
# database at the same point).
regrant() { # db
	run_sql "$1" -c 'GRANT SELECT ON ALL TABLES IN SCHEMA persona TO persona_upgrade_reader' >/dev/null
}

# A database's schema and data, as sorted lines, into $WORK/NAME.{schema,data}.
snapshot() { # db name
	run_sql "$1" -At -f "$HERE/schema.sql" >"$WORK/$2.schema"
	run_sql "$1" -At -f "$HERE/data.sql" >"$WORK/$2.data"
}

# One check: the fresh install's file and the upgraded one's are equal.
compare() { # what fresh-file upgraded-file label
	local what=$1 a=$2 b=$3 label=$4
	if [[ ! -s $a ]]; then
		not_ok "$what: the fresh install's snapshot is empty"
	elif diff -u --label "fresh install of $CURRENT" --label "$label" "$a" "$b" >"$WORK/diff"; then
		ok "$what"
	else
		not_ok "$what differs (- fresh install, + upgraded):"
		sed 's/^/    /' "$WORK/diff"
	fi
}

# DROP EXTENSION persona, then nothing persona made may be left.
check_drop() { # db label
	local db=$1 label=$2 left
	if ! run_sql "$db" -c 'DROP EXTENSION persona' >"$WORK/drop.log" 2>&1; then
		not_ok "$label: DROP EXTENSION persona failed:"
		sed 's/^/    /' "$WORK/drop.log"
		return
	fi
	left=$(
		run_sql "$db" -At -f "$HERE/schema.sql"
		run_sql "$db" -At -c "SELECT 'privileges or owners still recorded for roles: ' || count(*)
		                        FROM pg_shdepend WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		                      HAVING count(*) > 0"
		run_sql "$db" -At -c "SELECT 'left behind: ' || p.oid::regprocedure FROM pg_proc AS p WHERE p.proname LIKE 'persona\_%'
		                      UNION ALL SELECT 'left behind: schema ' || nspname FROM pg_namespace WHERE nspname = 'persona'"
	)
	if [[ -z $left ]]; then
		ok "$label: DROP EXTENSION persona leaves nothing behind"
	else
		not_ok "$label: DROP EXTENSION persona left objects behind:"
		sed 's/^/    /' <<<"$left"
	fi
}

extversion() { # db
	run_sql "$1" -At -c "SELECT extversion FROM pg_extension WHERE extname = 'persona'"
}

# Runs a data script, its output kept aside (shown only when it fails).
load() { # db script label
	if run_sql "$1" -f "$HERE/$2" >"$WORK/load.log" 2>&1; then
		return 0
	fi
	not_ok "$3: $2 failed:"
	sed 's/^/    /' "$WORK/load.log"
	return 1
}

# Roles the test data grant to: privileges users granted must survive.
make_roles

# The versions to walk: the released ones older than CURRENT, then CURRENT.
chain=()
for v in "${RELEASED[@]}"; do
	[[ $v == "$CURRENT" ]] || chain+=("$v")
done
chain+=("$CURRENT")

new_db "$FRESH"
run_sql "$FRESH" -c 'CREATE EXTENSION persona' >/dev/null
if [[ $(extversion "$FRESH") != "$CURRENT" ]]; then
	not_ok "fresh install: CREATE EXTENSION persona installed $(extversion "$FRESH"), not $CURRENT"
fi
fresh_ok=1
load "$FRESH" load.sql "fresh install of $CURRENT" || fresh_ok=0
regrant "$FRESH"
snapshot "$FRESH" fresh.loaded
((fresh_ok)) && { load "$FRESH" use.sql "fresh install of $CURRENT" || fresh_ok=0; }
snapshot "$FRESH" fresh.used

for ((i = 0; i < ${#chain[@]} - 1; i++)); do
	from=${chain[i]}
	db=persona_upgrade_from_${from//[^0-9a-zA-Z]/_}
	label="$from upgraded to $CURRENT"
	new_db "$db"
	run_sql "$db" -c "CREATE EXTENSION persona VERSION '$from'" >/dev/null
	load "$db" load.sql "$label" || continue

	# Walk every step; the last one as a user runs it.
	walked=1
	for ((j = i + 1; j < ${#chain[@]}; j++)); do
		to=${chain[j]}
		if ((j == ${#chain[@]} - 1)); then
			sql='ALTER EXTENSION persona UPDATE'
		else
			sql="ALTER EXTENSION persona UPDATE TO '$to'"
		fi
		if run_sql "$db" -c "$sql" >"$WORK/update.log" 2>&1 && [[ $(extversion "$db") == "$to" ]]; then
			ok "$label: $sql (${chain[j - 1]} -> $to)"
		else
			not_ok "$label: $sql (${chain[j - 1]} -> $to) failed or left version $(extversion "$db"):"
			sed 's/^/    /' "$WORK/update.log"
			walked=0
			break
		fi
	done
	((walked)) || continue
	regrant "$db"

	snapshot "$db" upgraded.loaded
	compare "$label: schema" "$WORK/fresh.loaded.schema" "$WORK/upgraded.loaded.schema" "$label"
	compare "$label: data" "$WORK/fresh.loaded.data" "$WORK/upgraded.loaded.data" "$label"
	if ((fresh_ok)) && load "$db" use.sql "$label"; then
		snapshot "$db" upgraded.used
		compare "$label, then used: schema" "$WORK/fresh.used.schema" "$WORK/upgraded.used.schema" "$label, then used"
		compare "$label, then used: data" "$WORK/fresh.used.data" "$WORK/upgraded.used.data" "$label, then used"
	fi
	check_drop "$db" "$label"
done

check_drop "$FRESH" "fresh install of $CURRENT"

finish
