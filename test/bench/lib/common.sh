# Helpers shared by the benchmarks in test/bench/*.sh (sourced, not run).

# A failing statement inside $(...) must stop the benchmark too: without
# this, set -e does not reach into command substitutions, and a timing of a
# statement that failed would be reported as if it had run.
shopt -s inherit_errexit

# psql for statements whose output is not wanted: stop on the first error.
psql_q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# The median of whitespace-separated numbers on stdin.
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {
	if (NR == 0) exit 1
	if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Arithmetic in awk: calc "1 / 3".
calc() { awk "BEGIN { printf \"%s\", $1 }"; }

# An integer with thousands separators: fmt_int 1234567.8 -> 1,234,568.
fmt_int() { calc "int($1 + 0.5)" | sed ':a; s/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/; ta'; }

# One value from a query: val "SELECT ..." [psql options].
val() { psql -X -q -v ON_ERROR_STOP=1 -At "${@:2}" -c "$1"; }

# Fails the benchmark unless a query returns what is expected:
# expect "what" "SELECT ..." "expected value".
expect() { # what sql expected
	local got
	got=$(val "$2")
	[[ $got == "$3" ]] || { echo "bench: $1: got $got, expected $3" >&2; exit 1; }
}

# Runs one statement in a fresh session; prints its duration in ms.
timed() {
	local out ms
	out=$(psql_q -c '\timing on' -c "$1")
	ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out" | tail -n 1)
	[[ -n $ms ]] || { printf 'bench: no timing from psql:\n%s\n' "$out" >&2; exit 1; }
	echo "$ms"
}

# Whether a ratio meets its target: met RATIO TARGET min|max -> yes / NO.
met() { awk -v r="$1" -v t="$2" -v d="$3" 'BEGIN { print ((d == "min" ? r >= t : r <= t) ? "yes" : "NO") }'; }
# The tps of one pgbench run: pgbench_tps LABEL [pgbench options...]; fails
# the benchmark, showing pgbench's output, when pgbench fails or prints none.
pgbench_tps() { # label options...
	local out tps
	out=$(pgbench "${@:2}" 2>&1) ||
		{ printf 'bench: pgbench (%s) failed:\n%s\n' "$1" "$out" >&2; exit 1; }
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -n 1)
	[[ -n $tps ]] || { printf 'bench: no tps in pgbench output (%s):\n%s\n' "$1" "$out" >&2; exit 1; }
	echo "$tps"
}

# CPU seconds of the server's exited processes: the postmaster's cutime +
# cstime (/proc/PID/stat fields 16 and 17; f[1] is field 3), where a
# backend's CPU lands when it exits. On a machine shared with others the
# wall time of a phase is noisy; the CPU it cost is not. Superuser only.
server_cpu() {
	val "SELECT round((f[14]::numeric + f[15]::numeric) / 100, 2)
	       FROM (SELECT regexp_split_to_array(split_part(pg_read_file('/proc/'
	                || split_part(pg_read_file('postmaster.pid'), E'\n', 1) || '/stat'), ') ', 2), ' ') AS f) AS s"
}
# Waits until the database's other client backends have exited and been
# reaped, so that server_cpu counts their CPU.
backends_gone() {
	for _ in $(seq 100); do
		[[ $(val "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		          AND backend_type = 'client backend' AND pid <> pg_backend_pid()") == 0 ]] && break
		sleep 0.05
	done
	sleep 0.2
}
