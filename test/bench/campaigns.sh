#!/usr/bin/env bash
# Campaigns: sending an action to a whole segment, and draining it with
# real workers, against the naive way on plain PostgreSQL, in one run.
#
#  1. persona_send_campaign to a segment of all $PROFILES profiles, and to
#     one of $SMALL of them, each from a fresh connection: the time it
#     takes to return, and the sending backend's peak RSS (VmHWM of
#     /proc/PID/status) and private memory (RssAnon) after it, at both
#     sizes. No row per message is written: the recipients are a snapshot
#     in chunks of 1,000.
#  2. 4 worker processes claim chunks of 1,000 (persona_claim renders one
#     trait and one content field of each), read what they send, and ack
#     each batch, until the campaign is drained: python3 psycopg workers
#     (examples/worker.py's code: a json_agg per column, one json.loads
#     each) and/or examples/worker.c (`make worker`, text rows of a
#     prepared claim, its null sender), each draining its own campaign.
#     Phase time and messages/s.
#  3. The naive way, in the same run: INSERT ... SELECT of every rendered
#     message (the same trait and field) into a queue table, then the same
#     4 workers draining it with FOR UPDATE SKIP LOCKED batches of 1,000
#     (claim: UPDATE ... RETURNING; ack: UPDATE by id), in python (its
#     backends' CPU dwarfs its workers'). Phase times and messages/s.
#  Phases 2 and 3 alternate ($RUNS runs each, medians); every run sends a
#  new campaign / refills the queue, and the counts are checked. Each
#  drain also prints the CPU it cost per message, in the backends and in
#  the workers, and the shortest drain that CPU allows on this machine's
#  CPUs (also scaled to 10,000,000): on a shared machine the wall time
#  varies with others' load, the CPU much less.
#
# Targets (issue 16, information only: nothing here fails on a timing):
# send < 5 s and drain < 30 s at 10,000,000 recipients; the sending backend
# flat from 1,000,000 to 10,000,000.
#
# Knobs (environment): BENCH_CAMP_PROFILES (200000; the issue's size is
# 10000000), BENCH_CAMP_SMALL (a tenth of it; the issue's is 1000000),
# BENCH_CAMP_RUNS (2), BENCH_CAMP_WORKERS (4), BENCH_CAMP_BATCH (1000),
# BENCH_CAMP_WORKER (both: persona drained by python and by C workers;
# python or c: only those).
# The defaults take a few minutes; 10 million needs about 15 GB of disk.
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

PROFILES=${BENCH_CAMP_PROFILES:-200000}
SMALL=${BENCH_CAMP_SMALL:-$((PROFILES / 10))}
RUNS=${BENCH_CAMP_RUNS:-2}
WORKERS=${BENCH_CAMP_WORKERS:-4}
BATCH=${BENCH_CAMP_BATCH:-1000}
case ${BENCH_CAMP_WORKER:-both} in
python) KINDS=(py) ;;
c) KINDS=(c) ;;
both) KINDS=(py c) ;;
*) echo "bench: BENCH_CAMP_WORKER is python, c or both, not ${BENCH_CAMP_WORKER}" >&2; exit 1 ;;
esac

DB=${PGDATABASE:-persona_bench}_campaigns
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
EXAMPLES=$ROOT/examples
if [[ " ${KINDS[*]} " == *" c "* ]]; then
	"${MAKE:-make}" -s -C "$ROOT" worker PG_CONFIG="${PG_CONFIG:-pg_config}" >/dev/null
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/persona-bench-camp.XXXXXX")
cleanup() {
	rm -rf -- "$WORK"
	psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "persona campaigns benchmark"
echo "  $(val "SELECT split_part(version(), ' on ', 1)" -d postgres) | $(nproc) CPUs"
psql_q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
export PGDATABASE=$DB
psql_q -c 'CREATE EXTENSION persona'

t0=$(date +%s.%N)
psql_q -v n="$PROFILES" -v small="$SMALL" <<'SQL'
SET client_min_messages = warning;
INSERT INTO persona.events (user_id, event_type, occurred_at)
SELECT 'user-' || u, 'app_open', now() - interval '1 day' FROM generate_series(1, :n) AS u;
SET persona.maintenance = on;
UPDATE persona.profiles SET traits = jsonb_build_object('first_name', 'P' || profile_id, 'n', profile_id);
RESET persona.maintenance;
SELECT persona_create_segment('everyone', 'event_count >= 1') \g /dev/null
SELECT persona_create_segment('some', format($$(traits->>'n')::bigint <= %s$$, :small)) \g /dev/null
SELECT persona_create_action('toss_push', 'push',
    '{"title": "{{first_name}}, the toss is done", "body": "Pick your team now"}') \g /dev/null
CREATE TABLE naive_queue (id bigserial PRIMARY KEY, profile_id bigint NOT NULL, user_id text,
                          content jsonb NOT NULL, status text NOT NULL DEFAULT 'queued');
CREATE INDEX naive_queue_ready ON naive_queue (id) WHERE status = 'queued';
VACUUM ANALYZE;
SQL
expect "members of everyone" "SELECT count(*) FROM persona.segment_members WHERE segment = 'everyone'" "$PROFILES"
expect "members of some" "SELECT count(*) FROM persona.segment_members WHERE segment = 'some'" "$SMALL"
printf '  %s profiles, segments of %s and %s; built in %.0f s\n' "$(fmt_int "$PROFILES")" \
	"$(fmt_int "$PROFILES")" "$(fmt_int "$SMALL")" "$(calc "$(date +%s.%N) - $t0")"

# ---------------------------------------------------------------------------
# 1. The send, and the sending backend's memory
# ---------------------------------------------------------------------------
send() { # name segment -> "seconds recipients vmhwm_kb rssanon_kb"
	psql -X -q -v ON_ERROR_STOP=1 -At -F ' ' <<SQL
SET client_min_messages = warning;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT persona_send_campaign('$1', 'toss_push', '$2') AS n \gset
SELECT round((extract(epoch FROM clock_timestamp()) - :t0)::numeric, 3), :n,
       (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'VmHWM:\s+(\d+)'))[1],
       (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'RssAnon:\s+(\d+)'))[1];
SQL
}
echo
echo "== 1. persona_send_campaign, each from a fresh connection"
read -r s_small n_small hwm_small anon_small <<<"$(send send_small some)"
read -r s_big n_big hwm_big anon_big <<<"$(send send_big everyone)"
[[ $n_small == "$SMALL" && $n_big == "$PROFILES" ]] ||
	{ echo "bench: sent $n_small and $n_big recipients, expected $SMALL and $PROFILES" >&2; exit 1; }
expect "no message rows" "SELECT count(*) FROM persona.messages" 0
printf '  %12s recipients: %7.3f s  (%s recipients/s)  peak RSS %s kB, private %s kB\n' \
	"$(fmt_int "$SMALL")" "$s_small" "$(fmt_int "$(calc "$SMALL / $s_small")")" "$(fmt_int "$hwm_small")" "$(fmt_int "$anon_small")"
printf '  %12s recipients: %7.3f s  (%s recipients/s)  peak RSS %s kB, private %s kB\n' \
	"$(fmt_int "$PROFILES")" "$s_big" "$(fmt_int "$(calc "$PROFILES / $s_big")")" "$(fmt_int "$hwm_big")" "$(fmt_int "$anon_big")"
printf '  (peak RSS counts the shared buffers the backend touched; private is its own memory)\n'
psql_q -c "SELECT persona_cancel_campaign('send_small')" -c "SELECT persona_cancel_campaign('send_big')" >/dev/null

# ---------------------------------------------------------------------------
# 2 and 3. Draining: persona's chunks against a naive queue table
# ---------------------------------------------------------------------------
cat >"$WORK/worker.py" <<'PY'
import os
import sys
import psycopg

# Both sides fetch a batch as examples/worker.py does (its own code, for
# persona): json_agg of each column, each decoded by one json.loads; the
# ids go back as a bigint[] literal.
sys.path.insert(0, os.environ["PERSONA_EXAMPLES"])
from worker import CLAIM, id_array, messages

NAIVE_FIELDS = ("id", "profile_id", "user_id", "content")
NAIVE_CLAIM = (
    "WITH u AS (UPDATE naive_queue AS q SET status = 'claimed' FROM ("
    "  SELECT id FROM naive_queue WHERE status = 'queued' ORDER BY id LIMIT %s"
    "  FOR UPDATE SKIP LOCKED) AS c WHERE q.id = c.id RETURNING q.*) "
    "SELECT " + ", ".join(f"json_agg(u.{f})" for f in NAIVE_FIELDS) + " FROM u")

mode, batch = sys.argv[1], int(sys.argv[2])
done = 0
with psycopg.connect("", autocommit=True) as conn:
    while True:
        with conn.transaction():
            if mode == "persona":
                rows = messages(conn.execute(CLAIM, ("push", batch, "5 minutes")).fetchone())
            else:
                cols = conn.execute(NAIVE_CLAIM, (batch,)).fetchone()
                rows = [] if cols[0] is None else [dict(zip(NAIVE_FIELDS, v)) for v in zip(*cols)]
        if not rows:
            break
        for m in rows:   # what a sender reads
            content = m["content"]
            if not content["title"] or not content["body"]:
                sys.exit("empty content")
        if mode == "persona":
            conn.execute("SELECT persona_ack(%s::bigint[])", (id_array(m["message_id"] for m in rows),))
        else:
            conn.execute("UPDATE naive_queue SET status = 'sent' WHERE id = ANY(%s::bigint[])",
                         (id_array(m["id"] for m in rows),))
        done += len(rows)
t = os.times()
print(done, round(t.user + t.system, 2))   # and this worker's CPU seconds
PY

drain() { # mode (py, c, naive) -> "seconds server_cpu_s workers_cpu_s" (counts checked by the caller)
	local t0 t1 c0 pids=() i
	c0=$(server_cpu)
	t0=$(date +%s.%N)
	for ((i = 0; i < WORKERS; i++)); do
		case $1 in
		c) # exits at its first empty claim; its last log line has its counts and CPU
			"$EXAMPLES/worker" --channel push --batch "$BATCH" --lease '5 minutes' --sender null \
				--drain "" 2>"$WORK/w$i.err" &
			;;
		py) PERSONA_EXAMPLES="$EXAMPLES" /usr/bin/python3 "$WORK/worker.py" persona "$BATCH" >"$WORK/w$i.out" & ;;
		*) PERSONA_EXAMPLES="$EXAMPLES" /usr/bin/python3 "$WORK/worker.py" naive "$BATCH" >"$WORK/w$i.out" & ;;
		esac
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || { echo "bench: a $1 worker failed" >&2; exit 1; }; done
	t1=$(date +%s.%N)
	if [[ $1 == c ]]; then # "worker: stopped: N sent, M failed, X s CPU" -> "N X"
		for ((i = 0; i < WORKERS; i++)); do
			sed -n 's/^worker: stopped: \([0-9]*\) sent, 0 failed, \([0-9.]*\) s CPU$/\1 \2/p' "$WORK/w$i.err" >"$WORK/w$i.out"
		done
	fi
	backends_gone
	echo "$(calc "$t1 - $t0") $(calc "$(server_cpu) - $c0") $(cat "$WORK"/w*.out | awk '{ s += $2 } END { print s }')"
}
timed() { # statement -> seconds it took, by the server's clock
	psql -X -q -v ON_ERROR_STOP=1 -At <<SQL
SET client_min_messages = warning;
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$1 \g /dev/null
SELECT round((extract(epoch FROM clock_timestamp()) - :t0)::numeric, 3);
SQL
}
claimed_by_workers() { # what: the workers' counts add up to every message
	local sum
	sum=$(cat "$WORK"/w*.out | awk '{ s += $1 } END { print s }')
	[[ $sum == "$PROFILES" ]] || { echo "bench: $1: workers handled $sum, expected $PROFILES" >&2; exit 1; }
}
persona_run() { # kind r -> "send_s drain_s server_cpu_s workers_cpu_s"
	local s d
	s=$(timed "SELECT persona_send_campaign('run_$1_$2', 'toss_push', 'everyone')")
	d=$(drain "$1")
	expect "persona ($1 workers) run $2 sent" \
		"SELECT messages FROM persona_campaign_report('run_$1_$2') WHERE status = 'sent'" "$PROFILES"
	claimed_by_workers "persona ($1 workers) run $2"
	echo "$s $d"
}
naive_run() { # r -> "insert_s drain_s server_cpu_s workers_cpu_s"
	local s d
	psql_q -c "TRUNCATE naive_queue" -c "VACUUM ANALYZE naive_queue"
	s=$(timed "INSERT INTO naive_queue (profile_id, user_id, content)
SELECT p.profile_id, p.user_id,
       jsonb_build_object('title', (p.traits->>'first_name') || ', the toss is done', 'body', 'Pick your team now')
  FROM persona.segment_members AS m JOIN persona.profiles AS p USING (profile_id)
 WHERE m.segment = 'everyone'")
	d=$(drain naive)
	expect "naive run $1 sent" "SELECT count(*) FROM naive_queue WHERE status = 'sent'" "$PROFILES"
	claimed_by_workers "naive run $1"
	echo "$s $d"
}

# The sides, and their labels: persona with each kind of worker, then naive.
SIDES=("${KINDS[@]}" naive)
declare -A LABEL=([py]="persona, python workers" [c]="persona, C workers" [naive]="naive, python workers")
declare -A HEAD=([py]="persona/py" [c]="persona/C" [naive]="naive")
declare -A SEND DRAIN TOTAL SCPU WCPU

echo
echo "== 2/3. $(fmt_int "$PROFILES") messages, $WORKERS workers, batches of $BATCH, $RUNS runs alternating"
echo "   persona: persona_send_campaign, then claim (rendered at claim) + ack of chunks"
echo "   naive:   INSERT ... SELECT of rendered rows, then SKIP LOCKED claim + ack of the queue table"
for ((r = 1; r <= RUNS; r++)); do
	order=("${SIDES[@]}")
	if ((r % 2 == 0)); then # reversed
		order=()
		for ((i = ${#SIDES[@]} - 1; i >= 0; i--)); do order+=("${SIDES[i]}"); done
	fi
	for side in "${order[@]}"; do
		psql_q -c "CHECKPOINT"
		if [[ $side == naive ]]; then
			read -r s d sc wc <<<"$(naive_run "$r")"
		else
			read -r s d sc wc <<<"$(persona_run "$side" "$r")"
		fi
		SEND[$side]+=" $s" DRAIN[$side]+=" $d" TOTAL[$side]+=" $(calc "$s + $d")"
		SCPU[$side]+=" $sc" WCPU[$side]+=" $wc"
		printf '  run %d, %-24s %s %6.2f s + drain %6.2f s = %6.2f s (%s msg/s drain); drain CPU: server %6.2f s + workers %6.2f s (%.2f + %.2f us/msg)\n' \
			"$r" "${LABEL[$side]}:" "$([[ $side == naive ]] && echo "insert" || echo "send  ")" "$s" "$d" "$(calc "$s + $d")" \
			"$(fmt_int "$(calc "$PROFILES / $d")")" "$sc" "$wc" \
			"$(calc "$sc * 1000000 / $PROFILES")" "$(calc "$wc * 1000000 / $PROFILES")"
	done
done

# Per side: the medians, and what the summary prints of them.
declare -A M_SEND M_DRAIN M_TOTAL RATE_TOTAL RATE_DRAIN US_SERVER US_WORKERS FLOOR FLOOR_10M
# shellcheck disable=SC2034 # row reads them through a nameref
for side in "${SIDES[@]}"; do
	M_SEND[$side]=$(median <<<"${SEND[$side]}") M_DRAIN[$side]=$(median <<<"${DRAIN[$side]}")
	M_TOTAL[$side]=$(median <<<"${TOTAL[$side]}")
	scpu=$(median <<<"${SCPU[$side]}") wcpu=$(median <<<"${WCPU[$side]}")
	RATE_TOTAL[$side]=$(fmt_int "$(calc "$PROFILES / ${M_TOTAL[$side]}")")
	RATE_DRAIN[$side]=$(fmt_int "$(calc "$PROFILES / ${M_DRAIN[$side]}")")
	US_SERVER[$side]=$(calc "$scpu * 1000000 / $PROFILES") US_WORKERS[$side]=$(calc "$wcpu * 1000000 / $PROFILES")
	FLOOR[$side]=$(calc "($scpu + $wcpu) / $(nproc)")
	FLOOR_10M[$side]=$(calc "($scpu + $wcpu) / $(nproc) * 10000000 / $PROFILES")
done
row() { # label, printf format of a value, name of the array of values by side, [ratio]
	local label=$1 fmt=$2 ratio=${4:-} side line
	local -n vals=$3
	line=$(printf '  %-34s' "$label")
	# shellcheck disable=SC2059 # the format is the caller's
	for side in "${SIDES[@]}"; do line+=$(printf " $fmt" "${vals[$side]}"); done
	if [[ $ratio ]]; then
		for side in "${KINDS[@]}"; do line+=$(printf ' %9.2fx' "$(calc "${vals[naive]} / ${vals[$side]}")"); done
	fi
	echo "$line"
}

echo
echo "== Summary (medians of $RUNS runs; $(fmt_int "$PROFILES") recipients)"
line=$(printf '  %-34s' "phase")
for side in "${SIDES[@]}"; do line+=$(printf ' %10s' "${HEAD[$side]}"); done
for side in "${KINDS[@]}"; do line+=$(printf ' %10s' "naive/${HEAD[$side]#persona/}"); done
echo "$line"
row "send / INSERT ... SELECT" '%9.2fs' M_SEND ratio
row "drain ($WORKERS workers)" '%9.2fs' M_DRAIN ratio
row "first send to last ack" '%9.2fs' M_TOTAL ratio
row "messages/s, end to end" '%10s' RATE_TOTAL
row "messages/s, drain" '%10s' RATE_DRAIN
row "drain CPU per message: server" '%8.2fus' US_SERVER
row "drain CPU per message: workers" '%8.2fus' US_WORKERS
row "drain CPU / $(nproc) CPUs (wall floor)" '%9.2fs' FLOOR
row "  the same at 10,000,000" '%9.2fs' FLOOR_10M
printf '  %-34s %10s kB at %s, %s kB at %s (private %s kB, %s kB)\n' "sending backend peak RSS" \
	"$(fmt_int "$hwm_small")" "$(fmt_int "$SMALL")" "$(fmt_int "$hwm_big")" "$(fmt_int "$PROFILES")" \
	"$(fmt_int "$anon_small")" "$(fmt_int "$anon_big")"
