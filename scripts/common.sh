# shellcheck shell=bash
# Sourced by test.sh, demo.sh and bench.sh: paths, build + install, and a
# throwaway cluster that is stopped on any exit (error, Ctrl-C, success).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPTS=$ROOT/scripts
if [[ -z ${PG_CONFIG:-} ]]; then
	PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
	[[ -x $PG_CONFIG ]] || PG_CONFIG=pg_config
fi
export PG_CONFIG
MAKE=${MAKE:-make}
CLUSTER_DIR=

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

deps() {
	bash "$SCRIPTS/deps.sh"
}

# True when the built control file, module and install scripts are already
# installed byte for byte (lets a non-root user go on after a sudo install).
installed_current() {
	local f dest ext lib
	ext=$("$PG_CONFIG" --sharedir)/extension
	lib=$("$PG_CONFIG" --pkglibdir)
	for f in "$ROOT"/persona.control "$ROOT"/*.so "$ROOT"/sql/persona--*.sql "$ROOT"/persona--*.sql; do
		[[ -e $f ]] || continue
		case $f in
		*.so) dest=$lib/${f##*/} ;;
		*) dest=$ext/${f##*/} ;;
		esac
		cmp -s "$f" "$dest" || return 1
	done
}

# make, quietly: its output is shown only when it fails, or warns.
quiet_make() {
	local log rc=0
	log=$(mktemp "${TMPDIR:-/tmp}/persona-make.XXXXXX")
	"$MAKE" -C "$ROOT" --no-print-directory PG_CONFIG="$PG_CONFIG" "$@" >"$log" 2>&1 || rc=$?
	if ((rc != 0)) || grep -q 'warning:' "$log"; then
		cat "$log" >&2
	fi
	rm -f -- "$log"
	return "$rc"
}

# Build and install the extension into $PG_CONFIG's installation.
build_install() {
	local dir
	say "building persona"
	quiet_make || die "the build failed (its output is above)"
	if [[ $EUID -ne 0 ]]; then
		for dir in "$("$PG_CONFIG" --pkglibdir)" "$("$PG_CONFIG" --sharedir)/extension"; do
			[[ -w $dir ]] && continue
			if installed_current; then
				say "persona is installed and current ($dir is not writable: not reinstalling)"
				return
			fi
			printf 'error: %s is not writable; install persona with:\n  sudo %s -C %q install PG_CONFIG=%q\nthen run this again (or run it as root).\n' \
				"$dir" "$MAKE" "$ROOT" "$PG_CONFIG" >&2
			exit 1
		done
	fi
	say "installing persona"
	quiet_make install || die "make install failed (its output is above)"
}

cluster_down() {
	if [[ -n $CLUSTER_DIR ]]; then
		say "stopping cluster"
		bash "$SCRIPTS/cluster.sh" stop "$CLUSTER_DIR" || true
		CLUSTER_DIR=
	fi
}

# Start a cluster owned by this shell and export its PG* variables. The EXIT
# trap stops it; INT/TERM turn into an exit so the trap runs. Extra cleanup
# can be chained with on_exit.
EXIT_HOOKS=()
on_exit() { EXIT_HOOKS+=("$1"); }
run_exit_hooks() {
	local rc=$? hook
	for hook in "${EXIT_HOOKS[@]}"; do "$hook" || true; done
	cluster_down
	return "$rc"
}

cluster_up() {
	trap run_exit_hooks EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	say "starting a throwaway cluster"
	CLUSTER_DIR=$(bash "$SCRIPTS/cluster.sh" start "$$")
	# shellcheck source=/dev/null
	source "$CLUSTER_DIR/env.sh"
}

# psql as the harness uses it: no psqlrc, stop at the first error.
psql_q() {
	psql -X -q -v ON_ERROR_STOP=1 "$@"
}
