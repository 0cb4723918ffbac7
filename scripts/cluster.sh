#!/usr/bin/env bash
# Throwaway PostgreSQL 15 cluster for tests, demo and benchmarks.
#
#   cluster.sh start [OWNER_PID]  initdb + start; prints the cluster dir on stdout
#   cluster.sh env DIR            prints the env file (PGHOST, PGPORT, PGUSER, PATH)
#   cluster.sh stop DIR           stops the server and removes DIR
#   cluster.sh reap               stops clusters whose owner process is gone
#
# Every cluster lives in its own mktemp dir under $PERSONA_TMP (default /tmp),
# owned by the server's OS user: `postgres` when invoked as root (PostgreSQL
# refuses to run as root), the current user otherwise. The dir holds the data
# directory, the unix socket, the server log and env.sh for callers to source.
# The database persona_demo (cron.database_name) is created at start, empty.
# OWNER_PID (default: the parent) is recorded; `start` first reaps clusters
# left behind by owners that have died, so an aborted run never blocks a new one.
# PERSONA_PG_SETTINGS, when set, is appended to postgresql.conf as is (one
# `name = value` a line), e.g. the benchmark settings of scripts/bench.sh.
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PERSONA_TMP=${PERSONA_TMP:-/tmp}
PREFIX=persona-pg.
MARKER=.persona-cluster
FIRST_PORT=${PERSONA_FIRST_PORT:-54330}
PORT_TRIES=100

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

pgbin() { "$PG_CONFIG" --bindir; }

# Run a command as the server's OS user, from inside DIR (the caller's cwd may
# be unreadable for that user, e.g. under /root).
as_server() {
	local dir=$1
	shift
	if [[ $EUID -eq 0 ]]; then
		(cd "$dir" && runuser -u postgres -- "$@")
	else
		(cd "$dir" && "$@")
	fi
}

# "pid starttime" of a live process, so a recycled pid is not mistaken for it.
proc_id() {
	local pid=$1 stat
	stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	# After "pid (comm) " the fields are state ppid ...; starttime is field 22 overall.
	read -r -a f <<<"$stat"
	[[ ${f[0]} != Z ]] || return 1 # a zombie is gone too
	printf '%s %s\n' "$pid" "${f[19]}"
}

is_cluster_dir() {
	[[ -n $1 && -d $1 && -f $1/$MARKER ]]
}

stop_cluster() {
	local dir=$1
	is_cluster_dir "$dir" || { log "not a persona cluster dir: $dir"; return 0; }
	if [[ -f $dir/data/postmaster.pid ]]; then
		as_server "$dir" "$(pgbin)/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
			as_server "$dir" "$(pgbin)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 ||
			log "could not stop the server in $dir (removing it anyway)"
	fi
	rm -rf -- "$dir"
}

# Stop and remove clusters whose recorded owner process no longer exists.
reap() {
	local dir owner now
	shopt -s nullglob
	for dir in "$PERSONA_TMP"/"$PREFIX"*; do
		is_cluster_dir "$dir" || continue
		owner=$(cat "$dir/$MARKER" 2>/dev/null) || continue
		now=$(proc_id "${owner%% *}" 2>/dev/null) || now=
		if [[ $now != "$owner" ]]; then
			log "removing stale cluster $dir (owner ${owner%% *} is gone)"
			stop_cluster "$dir" || true
		fi
	done
}

# True when nothing answers on 127.0.0.1:PORT.
port_free() {
	local port=$1 rc=0
	if command -v ss >/dev/null && [[ -n $(ss -Htln "sport = :$port" 2>/dev/null) ]]; then
		return 1
	fi
	"$(pgbin)/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2 || rc=$?
	[[ $rc -eq 2 ]]
}

start() {
	local owner_pid=${1:-$PPID} owner dir port bin
	owner=$(proc_id "$owner_pid") || die "owner process $owner_pid does not exist"
	bin=$(pgbin)
	[[ -x $bin/initdb ]] || die "no initdb in $bin (run scripts/deps.sh)"
	if [[ $EUID -eq 0 ]]; then
		id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' OS user"
	fi

	reap

	dir=$(mktemp -d "$PERSONA_TMP/${PREFIX}XXXXXX")
	printf '%s\n' "$owner" >"$dir/$MARKER"
	# Remove our own half-made cluster if anything below fails.
	trap 'stop_cluster "$dir"' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	chmod 755 "$dir"
	if [[ $EUID -eq 0 ]]; then
		chown postgres: "$dir"
	fi

	as_server "$dir" "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
		--locale=C.UTF-8 --no-instructions >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; die "initdb failed"; }

	cat >>"$dir/data/postgresql.conf" <<-EOF

		# persona harness
		listen_addresses = '127.0.0.1'
		unix_socket_directories = '$dir'
		max_connections = 50
		shared_preload_libraries = 'pg_cron'
		cron.database_name = 'persona_demo'
		log_line_prefix = '%m [%p] %q%u@%d '
	EOF
	if [[ -n ${PERSONA_PG_SETTINGS:-} ]]; then
		printf '\n# caller settings (PERSONA_PG_SETTINGS)\n%s\n' "$PERSONA_PG_SETTINGS" >>"$dir/data/postgresql.conf"
	fi

	for ((port = FIRST_PORT; port < FIRST_PORT + PORT_TRIES; port++)); do
		port_free "$port" || continue
		if as_server "$dir" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" \
			-o "-p $port" -w -t 120 start >/dev/null 2>&1; then
			break
		fi
		# Lost a race for the port: try the next one; anything else is fatal.
		grep -q 'could not \(bind\|create\|create any\)' "$dir/postgres.log" 2>/dev/null ||
			{ tail -n 30 "$dir/postgres.log" >&2 || true; die "server did not start"; }
		log "port $port taken, trying the next one"
	done
	((port < FIRST_PORT + PORT_TRIES)) || die "no free port in $FIRST_PORT..$((FIRST_PORT + PORT_TRIES - 1))"
	# Persist the port so a manual pg_ctl restart keeps it.
	printf 'port = %s\n' "$port" >>"$dir/data/postgresql.conf"
	# pg_cron's launcher retries every second until its database exists.
	"$bin/createdb" -h "$dir" -p "$port" -U postgres persona_demo

	cat >"$dir/env.sh" <<-EOF
		# persona throwaway cluster ($dir)
		unset PGHOSTADDR PGSERVICE PGDATABASE PGPASSWORD PGOPTIONS
		export PERSONA_CLUSTER_DIR='$dir'
		export PGHOST='$dir'
		export PGPORT='$port'
		export PGUSER=postgres
		export PATH='$bin':"\$PATH"
	EOF
	chmod 644 "$dir/env.sh"
	trap - EXIT INT TERM
	log "PostgreSQL $("$bin/postgres" -V | awk '{print $3}') on port $port, socket dir $dir, log $dir/postgres.log"
	printf '%s\n' "$dir"
}

cmd=${1:-}
case $cmd in
start)
	start "${2:-$PPID}"
	;;
env)
	is_cluster_dir "${2:-}" || die "usage: $0 env DIR (a dir printed by 'start')"
	cat "$2/env.sh"
	;;
stop)
	[[ -n ${2:-} ]] || die "usage: $0 stop DIR"
	stop_cluster "$2"
	;;
reap)
	reap
	;;
*)
	die "usage: $0 start [OWNER_PID] | env DIR | stop DIR | reap"
	;;
esac
