# shellcheck shell=bash
# Sourced by test/upgrade/run.sh, test/dump/run.sh and test/campaigns/crash.sh: scratch databases and
# roles dropped on exit, "ok N" / "not ok N" lines, and psql as they run it.
# The caller sets ROLES (roles its data grants to) and NAME (for the work
# directory) first.

export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/persona-$NAME.XXXXXX")
DBS=()
cleanup() {
	local db role
	for db in "${DBS[@]}"; do
		psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
	done
	for role in "${ROLES[@]}"; do
		psql -X -q -d postgres -c "DROP ROLE IF EXISTS $role" >/dev/null 2>&1 || true
	done
	rm -rf -- "$WORK"
}
trap cleanup EXIT

n=0 failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }

# psql that stops at the first error; output to the caller.
run_sql() { # db, then psql arguments
	local db=$1
	shift
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" "$@"
}

new_db() { # name
	DBS+=("$1")
	run_sql postgres -c "DROP DATABASE IF EXISTS \"$1\"" -c "CREATE DATABASE \"$1\"" >/dev/null
}

# The roles the test data grant to, made afresh.
make_roles() {
	local role
	for role in "${ROLES[@]}"; do
		run_sql postgres -c "DROP ROLE IF EXISTS $role" -c "CREATE ROLE $role NOLOGIN" >/dev/null
	done
}

# The summary line, and the exit status.
finish() {
	echo "1..$n"
	if ((failed > 0)); then
		echo "# failed $failed of $n"
		exit 1
	fi
}
