#!/usr/bin/env bash
# The example workers against the test cluster (the `worker` row of `make
# test`): examples/worker.py and examples/worker.c (built by `make worker`)
# go through the same checks, one after the other, each on a fresh
# database: it drains the outbox (sent rows acked, a refused one dead with
# the sender's error, a flaky one failed with its error and sent on its
# retry), picks up what is queued while it listens, survives a server
# restart, exits 0 on SIGTERM after acking what it sent, and its default
# sender prints each message as a JSON line.
#
#   run.sh [python|c]...   (default: both)
#
# Prints "ok N - ..." / "not ok N - ..." lines. Needs PG* from env.sh.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=/usr/bin/python3
DB=persona_worker
WORK=$(mktemp -d "${TMPDIR:-/tmp}/persona-worker.XXXXXX")
chmod 755 "$WORK"
WPID=
cleanup() {
	[[ -z $WPID ]] || kill "$WPID" 2>/dev/null
	rm -rf -- "$WORK"
}
trap cleanup EXIT

n=0
check() { # description, command...
	local what=$1
	shift
	n=$((n + 1))
	if "$@"; then echo "ok $n - $IMPL: $what"; else echo "not ok $n - $IMPL: $what"; fi
}
sql() { psql -X -qAt -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
# Waits (at most 20 s) until the SQL returns t.
wait_for() {
	for _ in $(seq 200); do
		[[ $(sql "$1") == t ]] && return 0
		sleep 0.1
	done
	return 1
}
enqueue() { # action, from, to
	sql "SELECT count(persona.enqueue_message(persona.resolve('wk-' || i), '$1', 'trigger:test'))
	       FROM generate_series($2, $3) AS i" >/dev/null
}
restart_server() {
	if [[ $EUID -eq 0 ]]; then
		(cd "$PERSONA_CLUSTER_DIR" && runuser -u postgres -- pg_ctl -D "$PERSONA_CLUSTER_DIR/data" -m fast -w restart >/dev/null)
	else
		pg_ctl -D "$PERSONA_CLUSTER_DIR/data" -m fast -w restart >/dev/null
	fi
}
# Whether every line of the file is a JSON message of the given titles and user ids.
json_lines() { # file, expected "user_id:title" lines, sorted
	"$PY" - "$@" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
got = sorted(f'{m["user_id"]}:{m["content"]["title"]}' for m in lines)
keys = {"message_id", "profile_id", "user_id", "channel", "action", "content", "attempt", "source"}
sys.exit(not (got == sys.argv[2:] and all(set(m) == keys for m in lines)))
PY
}

build_c_worker() {
	"${MAKE:-make}" -s -C "$ROOT" worker PG_CONFIG="${PG_CONFIG:-pg_config}" >/dev/null
}

# One implementation's checks. WORKER runs it with the test's sender (a
# simple command, so that "$!" of "${WORKER[@]} &" is the worker itself),
# the messages it sent going to $WORK/sentN, its stdout to $WORK/outN.
suite() {
	IMPL=$1
	local sender_stdout rc
	case $IMPL in
	python)
		WORKER=(env PYTHONPATH="$ROOT/test/worker" "$PY" "$ROOT/examples/worker.py" --sender sender:send)
		PLAIN=("$PY" "$ROOT/examples/worker.py")
		sender_stdout=1 # sender.py prints what it sends
		;;
	c)
		check "make worker builds examples/worker" build_c_worker
		WORKER=("$ROOT/examples/worker" --sender "command:$ROOT/test/worker/sender.sh")
		PLAIN=("$ROOT/examples/worker")
		sender_stdout=
		;;
	*)
		echo "run.sh: unknown worker $IMPL (python or c)" >&2
		exit 2
		;;
	esac
	WORKER+=(--channel push --batch 7 --poll 0.2 "dbname=$DB")
	PLAIN+=(--channel push --poll 0.2 "dbname=$DB")
	out() { if [[ $sender_stdout ]]; then echo "$WORK/sent$1"; else echo "$WORK/out$1"; fi; }
	rm -f "$WORK"/sent* "$WORK"/out* "$WORK"/err*

	psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
	sql "CREATE EXTENSION persona"
	sql "SELECT persona_identify('wk-' || i, jsonb_build_object('first_name', 'P' || i)) FROM generate_series(1, 20) AS i" >/dev/null
	sql "SELECT persona_identify('wk-\"21\\', '{\"first_name\": \"P21\"}')" >/dev/null
	sql "SELECT persona_create_action('wk_push', 'push', '{\"title\": \"Hi {{first_name}}\"}')"
	sql "SELECT persona_create_action('wk_refused', 'push', '{\"title\": \"refuse {{first_name}}\"}')"
	sql "SELECT persona_create_action('wk_flaky', 'push', '{\"title\": \"flaky {{first_name}}\"}')"

	# 1. A backlog: drained in batches, then the worker exits when idle.
	enqueue wk_push 1 20
	enqueue wk_refused 1 1
	enqueue wk_flaky 2 2
	SENDER_OUT=$WORK/sent1 "${WORKER[@]}" --exit-when-idle 1 >"$(out 1)" 2>"$WORK/err1"
	check "the worker exits 0 when idle" test $? -eq 0
	check "every message was sent once, rendered" \
		test "$(grep -c '"title": "Hi P' "$WORK/sent1")" -eq 20
	check "every sent message is acked" \
		test "$(sql "SELECT count(*) FROM persona.messages WHERE status = 'sent' AND sent_at IS NOT NULL")" -eq 20
	check "the refused message is dead with the sender's error" \
		test "$(sql "SELECT status || ': ' || last_error FROM persona.messages WHERE action = 'wk_refused'")" \
		== "dead: Refused: device token unregistered"
	check "the flaky message failed with the sender's error, to be retried" \
		test "$(sql "SELECT status || ' ' || attempts || ': ' || last_error FROM persona.messages WHERE action = 'wk_flaky'")" \
		== "failed 1: Flaky: try again"
	# Its retry falls due now rather than after persona.retry_delay (5-10 s).
	sql "UPDATE persona.messages SET ready_at = now() WHERE action = 'wk_flaky'"

	# 2. Listening: the retry and what is queued later are sent; a restart
	# of the server is survived; SIGTERM stops it cleanly.
	SENDER_OUT=$WORK/sent2 "${WORKER[@]}" >"$(out 2)" 2>"$WORK/err2" &
	WPID=$!
	wait_for "SELECT true FROM pg_stat_activity WHERE datname = '$DB' AND query = 'LISTEN persona_outbox' LIMIT 1" ||
		wait_for "SELECT count(*) > 1 FROM pg_stat_activity WHERE datname = '$DB'"
	check "the flaky message is sent on its retry" \
		wait_for "SELECT status = 'sent' AND attempts = 2 FROM persona.messages WHERE action = 'wk_flaky'"
	enqueue wk_push 1 5
	check "messages queued while it listens are sent" \
		wait_for "SELECT count(*) = 26 FROM persona.messages WHERE status = 'sent'"
	restart_server
	check "the server restarted" wait_for "SELECT true"
	enqueue wk_push 6 10
	check "after the restart it reconnects and sends" \
		wait_for "SELECT count(*) = 31 FROM persona.messages WHERE status = 'sent'"
	check "it said it reconnected" grep -q reconnecting "$WORK/err2"
	kill -TERM "$WPID"
	wait "$WPID"
	rc=$?
	WPID=
	check "SIGTERM: it exits 0" test "$rc" -eq 0
	check "nothing is left claimed or queued" \
		test "$(sql "SELECT count(*) FROM persona.messages WHERE status IN ('queued', 'claimed', 'failed')")" -eq 0
	check "every sent message was sent exactly once" \
		test "$(cat "$WORK/sent1" "$WORK/sent2" | grep -o '"message_id": [0-9]*' | sort | uniq -d | wc -l)" -eq 0

	# 3. The default sender: a JSON line per message on stdout (a user id
	# with a quote and a backslash included).
	enqueue wk_push 11 12
	sql "SELECT persona.enqueue_message(persona.resolve('wk-\"21\\'), 'wk_push', 'trigger:test')" >/dev/null
	"${PLAIN[@]}" --exit-when-idle 0.5 >"$WORK/out3" 2>"$WORK/err3"
	check "the default sender prints each message as one JSON line" \
		json_lines "$WORK/out3" 'wk-"21\:Hi P21' 'wk-11:Hi P11' 'wk-12:Hi P12'
	check "and acks them" \
		test "$(sql "SELECT count(*) FROM persona.messages WHERE status = 'sent'")" -eq 34

	psql -X -q -d postgres -c "DROP DATABASE $DB"
}

IMPLS=("$@")
((${#IMPLS[@]})) || IMPLS=(python c)
for impl in "${IMPLS[@]}"; do
	suite "$impl"
done
