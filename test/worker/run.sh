#!/usr/bin/env bash
# examples/worker.py against the test cluster (the `worker` row of `make
# test`): it drains the outbox (sent rows acked, a refused one dead with the
# sender's error), picks up what is queued while it listens, survives a
# server restart, and exits 0 on SIGTERM after acking what it sent.
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
	if "$@"; then echo "ok $n - $what"; else echo "not ok $n - $what"; fi
}
sql() { psql -X -qAt -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
# A simple command, so that "$!" of "${WORKER[@]} &" is the worker itself.
WORKER=(env PYTHONPATH="$ROOT/test/worker" "$PY" "$ROOT/examples/worker.py" --channel push
	--sender sender:send --batch 7 --poll 0.2 "dbname=$DB")
# Waits (at most 20 s) until the SQL returns t.
wait_for() {
	for _ in $(seq 200); do
		[[ $(sql "$1") == t ]] && return 0
		sleep 0.1
	done
	return 1
}

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
sql "CREATE EXTENSION persona"
sql "SELECT persona_identify('wk-' || i, jsonb_build_object('first_name', 'P' || i)) FROM generate_series(1, 20) AS i" >/dev/null
sql "SELECT persona_create_action('wk_push', 'push', '{\"title\": \"Hi {{first_name}}\"}')"
sql "SELECT persona_create_action('wk_refused', 'push', '{\"title\": \"refuse {{first_name}}\"}')"
enqueue() { # action, from, to
	sql "SELECT count(persona.enqueue_message(persona.resolve('wk-' || i), '$1', 'trigger:test'))
	       FROM generate_series($2, $3) AS i" >/dev/null
}

# 1. A backlog: drained in batches, then the worker exits when idle.
enqueue wk_push 1 20
enqueue wk_refused 1 1
"${WORKER[@]}" --exit-when-idle 1 >"$WORK/out1" 2>"$WORK/err1"
check "the worker exits 0 when idle" test $? -eq 0
check "every message was printed once, rendered" \
	test "$(grep -c '"title": "Hi P' "$WORK/out1")" -eq 20
check "every sent message is acked" \
	test "$(sql "SELECT count(*) FROM persona.messages WHERE status = 'sent' AND sent_at IS NOT NULL")" -eq 20
check "the refused message is dead with the sender's error" \
	test "$(sql "SELECT status || ': ' || last_error FROM persona.messages WHERE action = 'wk_refused'")" \
	== "dead: Refused: device token unregistered"

# 2. Listening: what is queued later is sent; a restart of the server is
# survived; SIGTERM stops it cleanly.
"${WORKER[@]}" >"$WORK/out2" 2>"$WORK/err2" &
WPID=$!
wait_for "SELECT true FROM pg_stat_activity WHERE datname = '$DB' AND query = 'LISTEN persona_outbox' LIMIT 1" ||
	wait_for "SELECT count(*) > 1 FROM pg_stat_activity WHERE datname = '$DB'"
enqueue wk_push 1 5
check "messages queued while it listens are sent" \
	wait_for "SELECT count(*) = 25 FROM persona.messages WHERE status = 'sent'"
if [[ $EUID -eq 0 ]]; then
	(cd "$PERSONA_CLUSTER_DIR" && runuser -u postgres -- pg_ctl -D "$PERSONA_CLUSTER_DIR/data" -m fast -w restart >/dev/null)
else
	pg_ctl -D "$PERSONA_CLUSTER_DIR/data" -m fast -w restart >/dev/null
fi
check "the server restarted" wait_for "SELECT true"
enqueue wk_push 6 10
check "after the restart it reconnects and sends" \
	wait_for "SELECT count(*) = 30 FROM persona.messages WHERE status = 'sent'"
check "it said it reconnected" grep -q reconnecting "$WORK/err2"
kill -TERM "$WPID"
wait "$WPID"
rc=$?
WPID=
check "SIGTERM: it exits 0" test "$rc" -eq 0
check "nothing is left claimed or queued" \
	test "$(sql "SELECT count(*) FROM persona.messages WHERE status IN ('queued', 'claimed', 'failed')")" -eq 0
check "every sent message was printed exactly once" \
	test "$(cat "$WORK/out1" "$WORK/out2" | grep -o '"message_id": [0-9]*' | sort | uniq -d | wc -l)" -eq 0

psql -X -q -d postgres -c "DROP DATABASE $DB"
