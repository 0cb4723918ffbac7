#!/usr/bin/env bash
# Make sure the Debian packages persona builds and tests with are installed.
# Silent when they all are; installs them as root (CI: no stdin, no prompts);
# otherwise prints the command to run and fails.
set -euo pipefail

PACKAGES=(
	postgresql-15                          # server, client, pg_ctl, pgbench
	postgresql-server-dev-15               # PGXS, pg_regress, pg_isolation_regress
	postgresql-15-cron                     # pg_cron (preloaded by the test cluster)
	postgresql-15-pgtap                    # pgTAP
	libtap-parser-sourcehandler-pgtap-perl # pg_prove
	python3-psycopg                        # examples/worker.py and its test, the fuzz battery
	libpq-dev                              # examples/worker.c (`make worker`)
	libipc-run-perl                        # PostgreSQL::Test::Cluster (the crash suite)
	sqlsmith                               # make fuzz and the fuzz suite
	python3-sklearn                        # test/bench/models.sh: the AUC beside scikit-learn's
	pg-bsd-indent                          # make indent / indent-check (CI checks the format)
	make
	gcc
)

missing=()
for pkg in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) || status=
	[[ $status == installed ]] || missing+=("$pkg")
done
((${#missing[@]} == 0)) && exit 0

if [[ $EUID -ne 0 ]]; then
	echo "deps: missing Debian packages: ${missing[*]}" >&2
	echo "deps: install them with:" >&2
	echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
	exit 1
fi

echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update </dev/null
apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
