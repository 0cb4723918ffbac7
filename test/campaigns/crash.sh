#!/usr/bin/env bash
# A server crash in the middle of a campaign (the `campaign-crash` row of
# `make test`): what was acked stays sent and is never handed out again,
# what was claimed and not acked comes back after its lease, nothing is
# lost, and a send that the crash interrupts leaves nothing behind.
# The server is stopped with `pg_ctl -m immediate` (no shutdown checkpoint:
# recovery replays the WAL at the restart).
# Prints "ok N - ..." / "not ok N - ..." lines. Needs PG* from env.sh.
set -uo pipefail

DB=persona_campaign_crash
N=2500
NAME=crash
ROLES=()
# shellcheck source=test/okscript.sh
source "$(dirname "${BASH_SOURCE[0]}")/../okscript.sh"
SPID=
trap '[[ -z $SPID ]] || kill "$SPID" 2>/dev/null; cleanup' EXIT

check() { # description, command...
	local what=$1
	shift
	if "$@"; then ok "$what"; else not_ok "$what"; fi
}
sql() { psql -X -qAt -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
pgctl() {
	if [[ $EUID -eq 0 ]]; then
		(cd "$PERSONA_CLUSTER_DIR" && runuser -u postgres -- pg_ctl -D "$PERSONA_CLUSTER_DIR/data" "$@" >/dev/null)
	else
		pg_ctl -D "$PERSONA_CLUSTER_DIR/data" "$@" >/dev/null
	fi
}
crash_and_restart() {
	pgctl -m immediate -w stop
	pgctl -w -l "$PERSONA_CLUSTER_DIR/postgres.log" start
}
# Claims up to n messages with a lease, one id a line into a file.
claim() { # n lease file
	sql "SELECT message_id FROM persona_claim('push', $1, '$2')" >"$3"
}
ack() { # file
	sql "SELECT persona_ack(ARRAY[$(paste -sd, "$1")]::bigint[])"
}
report() { # status
	sql "SELECT messages FROM persona_campaign_report('crash') WHERE status = '$1'"
}

new_db "$DB"
sql "CREATE EXTENSION persona"
sql "INSERT INTO persona.events (user_id, event_type, occurred_at)
     SELECT 'cr-' || g, 'app_open', now() FROM generate_series(1, $N) AS g"
sql "SELECT persona_create_action('cr_push', 'push', '{\"title\": \"hi\"}')" >/dev/null
check "the campaign is sent to everyone" test "$(sql "SELECT persona_send_campaign('crash', 'cr_push')")" -eq $N

# Two batches acked, one claimed and not acked, then the crash.
claim 1000 '2 seconds' "$WORK/a1"
ack "$WORK/a1" >/dev/null
claim 500 '2 seconds' "$WORK/a2"
ack "$WORK/a2" >/dev/null
claim 500 '2 seconds' "$WORK/held"
cat "$WORK/a1" "$WORK/a2" | sort >"$WORK/acked"
check "1,500 acked and 500 held before the crash" \
	test "$(wc -l <"$WORK/acked")" -eq 1500 -a "$(wc -l <"$WORK/held")" -eq 500
crash_and_restart
check "after the crash, the 1,500 acked are sent" test "$(report sent)" -eq 1500
check "the 500 held are still claimed" test "$(report claimed)" -eq 500
check "the other 500 are queued" test "$(report queued)" -eq 500
check "no message row was written" test "$(sql "SELECT count(*) FROM persona.messages")" -eq 0

# The lease ends: everything not acked comes back, the acked never does.
sleep 2.5
claim 5000 '1 minute' "$WORK/after"
sort "$WORK/after" >"$WORK/after.sorted"
check "the 1,000 not acked are claimed again" test "$(wc -l <"$WORK/after")" -eq 1000
check "none of them was acked before" test "$(comm -12 "$WORK/acked" "$WORK/after.sorted" | wc -l)" -eq 0
check "the held 500 are among them" test "$(sort "$WORK/held" | comm -23 - "$WORK/after.sorted" | wc -l)" -eq 0
check "acked and claimed again make every message, once" \
	test "$(sort -u "$WORK/acked" "$WORK/after" | wc -l)" -eq $N
ack "$WORK/after" >/dev/null
check "all sent in the end" test "$(report sent)" -eq $N

# A send interrupted by the crash leaves no campaign and no chunk.
psql -X -q -d "$DB" -c "BEGIN" -c "SELECT persona_send_campaign('crash2', 'cr_push')" \
	-c "SELECT pg_sleep(60)" -c "COMMIT" >/dev/null 2>&1 &
SPID=$!
for _ in $(seq 100); do
	[[ $(sql "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()") == 1 ]] && break
	sleep 0.1
done
crash_and_restart
wait "$SPID" 2>/dev/null
SPID=
check "an interrupted send left no campaign" \
	test "$(sql "SELECT count(*) FROM persona.campaigns WHERE name = 'crash2'")" -eq 0
check "and no chunk" \
	test "$(sql "SELECT count(*) FROM persona.campaign_chunks AS k
	              WHERE NOT EXISTS (SELECT FROM persona.campaigns AS c WHERE c.campaign_id = k.campaign_id)")" -eq 0
check "the name can be used again" test "$(sql "SELECT persona_send_campaign('crash2', 'cr_push')")" -eq $N

finish
