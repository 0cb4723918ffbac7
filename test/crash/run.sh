#!/usr/bin/env bash
# The crash-safety suite (the `crash` row of `make test`, docs/operations.md
# "Crash safety"): test/crash/t/*.pl, TAP tests on PostgreSQL::Test::Cluster,
# each starting its own server, killing it with SIGKILL mid-work and checking
# the data after recovery.
#
#   test/crash/run.sh              (scripts/test.sh runs it)
#   CRASH_SCALE=4 test/crash/run.sh
#
# Uses the PostgreSQL of $PG_CONFIG (its bindir first on PATH, so the servers
# run the persona that `make install` put there) and the TAP modules of its
# PGXS (Debian: postgresql-server-dev-15; IPC::Run: libipc-run-perl). As
# root, prove runs as the `postgres` OS user (initdb refuses root), in a work
# directory that user owns. Prints prove's verbose TAP output: one
# "ok N - ..." / "not ok N - ..." line per check.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
BINDIR=$("$PG_CONFIG" --bindir)
PGXS_DIR=$(cd "$(dirname "$("$PG_CONFIG" --pgxs)")/../.." && pwd)
PERL_DIR=$PGXS_DIR/src/test/perl
PG_REGRESS=$PGXS_DIR/src/test/regress/pg_regress
[[ -f $PERL_DIR/PostgreSQL/Test/Cluster.pm ]] ||
	{ echo "crash: no PostgreSQL::Test::Cluster under $PERL_DIR (postgresql-server-dev-15)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/persona-crash.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT
cp -r "$HERE/t" "$WORK/"
chmod -R a+rX "$WORK"

RUN=()
if [[ $EUID -eq 0 ]]; then
	chown -R postgres: "$WORK"
	RUN=(runuser -u postgres --)
fi

cd "$WORK"
"${RUN[@]}" env PATH="$BINDIR:$PATH" PG_REGRESS="$PG_REGRESS" TESTDIR="$WORK" \
	CRASH_SCALE="${CRASH_SCALE:-1}" PERL5LIB="$PERL_DIR${PERL5LIB:+:$PERL5LIB}" \
	prove -v t/*.pl || {
	rc=$?
	# The servers' logs and the clients' output say why.
	find "$WORK/tmp_check/log" -name '*.log' -exec tail -n 40 {} + 2>/dev/null || true
	exit "$rc"
}
