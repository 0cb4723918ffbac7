#!/usr/bin/env bash
# Best send time and best channel (docs/sendtime.md): how often persona
# finds a planted preference, and what one answer costs, beside a plain
# PostgreSQL query doing the same reads.
#
#  1. Best time. $PEOPLE people, a third each in UTC, Asia/Kolkata and
#     America/New_York (declared trait timezone), each with a planted local
#     hour of the week and 0 to 30 events in the last 170 days: each event
#     falls in the planted hour with probability $SIGNAL, anywhere in the
#     170 days otherwise. Printed: the hit rate (the local hour of the week
#     of persona_best_send_time is the planted one) for people with >= 10
#     events (floor 90%) and with 5 to 9, the fallback rate (people below
#     the 5 engagements of the rule, who get the population's hour), and the
#     server-side time of one call of persona.best_send_at (the entry
#     campaigns call per recipient) against a plain query that reads the
#     same events and picks the most frequent local hour, in the same
#     session; medians of $RUNS loops.
#  2. Best channel. $CH_PEOPLE people with planted click rates on push,
#     email and sms (one preferred channel at $PREF_LO to $PREF_HI, the others at
#     0.02 to 0.10; the preferred channel is email for half of them, push
#     for 3 in 10, sms for 2 in 10). 20 rounds: each person gets one
#     message on the channel persona_best_channel picks among the three;
#     workers claim and ack it; a click is drawn with the planted rate and
#     reported with persona_message_feedback; persona.refresh_engagement()
#     recomputes the population between rounds. Printed: the expected
#     clicks of the channels chosen against an oracle that always uses each
#     person's best channel (floor 90%) and against always-push, plus the
#     clicks actually drawn; and the time of one persona_best_channel
#     against a plain query over the same messages.
#
# Random draws are seeded (the planted moments move with the clock, so the
# hit rates may move by a few tenths between runs). Nothing here asserts a
# timing; the script fails only when something errors. Connection from
# PGHOST/PGPORT/PGUSER (scripts/bench.sh); it works in a database of its
# own, ${PGDATABASE}_sendtime, dropped at the end.
#
# Knobs (environment): BENCH_SENDTIME_PEOPLE (3000; the issue's figure:
# 100000), BENCH_SENDTIME_SIGNAL (0.6), BENCH_SENDTIME_CH_PEOPLE (300),
# BENCH_SENDTIME_CALLS (1000 calls per timed loop), BENCH_SENDTIME_RUNS (5),
# BENCH_SENDTIME_PREF_LO and _HI (0.25 and 0.45: the preferred channel's
# click rate).
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

PEOPLE=${BENCH_SENDTIME_PEOPLE:-3000}
SIGNAL=${BENCH_SENDTIME_SIGNAL:-0.6}
CH_PEOPLE=${BENCH_SENDTIME_CH_PEOPLE:-300}
CALLS=${BENCH_SENDTIME_CALLS:-1000}
RUNS=${BENCH_SENDTIME_RUNS:-5}
PREF_LO=${BENCH_SENDTIME_PREF_LO:-0.25}
PREF_HI=${BENCH_SENDTIME_PREF_HI:-0.45}

# Medians of $RUNS timed loops of FN('persona') and FN('plain'), the sides
# alternating, into p_med and b_med (microseconds per call).
time_pair() { # fn
	local p_us=() b_us=() r
	for ((r = 0; r < RUNS; r++)); do
		p_us+=("$(val "SELECT round($1('persona', $CALLS)::numeric, 1)")")
		b_us+=("$(val "SELECT round($1('plain', $CALLS)::numeric, 1)")")
	done
	p_med=$(echo "${p_us[*]}" | median)
	b_med=$(echo "${b_us[*]}" | median)
}

DB=${PGDATABASE:-persona_bench}_sendtime
cleanup() { psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "persona send time and channel benchmark"
echo "  $(val "SELECT split_part(version(), ' on ', 1)" -d postgres) | $(nproc) CPUs"
psql_q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql_q -d "$DB" -c 'CREATE EXTENSION persona'
export PGDATABASE=$DB

# ---------------------------------------------------------------------------
# 1. Best time
# ---------------------------------------------------------------------------
psql_q -v people="$PEOPLE" -v signal="$SIGNAL" <<'SQL'
SELECT setseed(0.16) \g /dev/null
CREATE TABLE planted AS
SELECT u, 'st-' || u AS user_id,
       (ARRAY['UTC', 'Asia/Kolkata', 'America/New_York'])[u % 3 + 1] AS tz,
       floor(random() * 168)::int AS how,
       floor(random() * 31)::int AS n
  FROM generate_series(1, :people) AS u;
SELECT count(persona_identify(p.user_id, jsonb_build_object('timezone', p.tz))) FROM planted AS p \g /dev/null
-- A Monday 00:00 local, 25 weeks back at most; the planted hour plus a
-- random minute, or a random moment of the 170 days.
INSERT INTO persona.events (user_id, event_type, occurred_at)
SELECT p.user_id, 'open',
       CASE WHEN random() < :signal
            THEN ((date_trunc('week', now() AT TIME ZONE p.tz) - (1 + floor(random() * 24)) * interval '1 week'
                   + p.how * interval '1 hour' + random() * interval '59 minutes') AT TIME ZONE p.tz)
            ELSE now() - random() * interval '170 days' END
  FROM planted AS p, LATERAL generate_series(1, p.n) AS k;
ANALYZE;
-- The plain query: the person's events of 180 days, the most frequent
-- local hour of the week.
CREATE FUNCTION plain_best_hour(pid bigint, tz text) RETURNS int LANGUAGE sql STABLE AS $$
    SELECT (extract(isodow FROM e.occurred_at AT TIME ZONE tz)::int - 1) * 24
           + extract(hour FROM e.occurred_at AT TIME ZONE tz)::int AS h
      FROM persona.events AS e
     WHERE e.profile_id = pid AND e.occurred_at > now() - interval '180 days'
     GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1
$$;
CREATE FUNCTION time_calls(which text, calls int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    ids bigint[];
    tzs text[];
    x timestamptz;
    h int;
BEGIN
    SELECT array_agg(pr.profile_id ORDER BY pl.u), array_agg(pl.tz ORDER BY pl.u) INTO ids, tzs
      FROM planted AS pl JOIN persona.profiles AS pr ON pr.user_id = pl.user_id;
    PERFORM persona.refresh_engagement();   -- the session's population figures, as a warm backend has them
    t0 := clock_timestamp();
    FOR i IN 1..calls LOOP
        IF which = 'persona' THEN
            x := persona.best_send_at(ids[1 + (i * 7919) % cardinality(ids)], now());
        ELSE
            h := plain_best_hour(ids[1 + (i * 7919) % cardinality(ids)], tzs[1 + (i * 7919) % cardinality(ids)]);
        END IF;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / calls;
END $$;
SQL

read -r hit10 n10 hit5 n5 fallback <<<"$(val "
WITH r AS (SELECT persona.refresh_engagement()),
a AS (
    SELECT p.n, p.how,
           (SELECT count(*) FROM persona.events AS e JOIN persona.identities AS i ON i.profile_id = e.profile_id
             WHERE i.id = p.user_id AND e.occurred_at > now() - interval '180 days') AS have,
           (SELECT (extract(isodow FROM t AT TIME ZONE p.tz)::int - 1) * 24 + extract(hour FROM t AT TIME ZONE p.tz)::int
              FROM persona_best_send_time(p.user_id, now()) AS t) AS got
      FROM planted AS p, r)
SELECT round(100.0 * count(*) FILTER (WHERE have >= 10 AND got = how) / nullif(count(*) FILTER (WHERE have >= 10), 0), 1),
       count(*) FILTER (WHERE have >= 10),
       round(100.0 * count(*) FILTER (WHERE have BETWEEN 5 AND 9 AND got = how) / nullif(count(*) FILTER (WHERE have BETWEEN 5 AND 9), 0), 1),
       count(*) FILTER (WHERE have BETWEEN 5 AND 9),
       round(100.0 * count(*) FILTER (WHERE have < 5) / count(*), 1)
  FROM a" -F ' ')"

time_pair time_calls

echo
echo "1. best send time: $PEOPLE people, planted local hour of the week, signal $SIGNAL, 0-30 events each"
printf '  %-52s %8s   (%s people)\n' "hit rate, >= 10 events (floor 90%)" "$hit10%" "$n10"
printf '  %-52s %8s   (%s people)\n' "hit rate, 5-9 events" "$hit5%" "$n5"
printf '  %-52s %8s\n' "fallback to the population (< 5 engagements)" "$fallback%"
printf '  %-52s %8s %8s %8s\n' "one call, server side (us, median of $RUNS x $CALLS)" "persona" "plain" "ratio"
printf '  %-52s %8s %8s %8s\n' "persona.best_send_at vs the plain mode query" "$p_med" "$b_med" "$(calc "$p_med / $b_med")"
echo "  floor met: $(awk -v h="$hit10" 'BEGIN { print (h >= 90 ? "yes" : "NO") }')"

# ---------------------------------------------------------------------------
# 2. Best channel
# ---------------------------------------------------------------------------
psql_q -v people="$CH_PEOPLE" -v lo="$PREF_LO" -v hi="$PREF_HI" <<'SQL'
SELECT setseed(0.61) \g /dev/null
CREATE TABLE rates AS
SELECT u, 'ch-' || u AS user_id, pref,
       CASE WHEN pref = 'push' THEN :lo + (:hi - :lo) * r1 ELSE 0.02 + 0.08 * r2 END AS push,
       CASE WHEN pref = 'email' THEN :lo + (:hi - :lo) * r1 ELSE 0.02 + 0.08 * r3 END AS email,
       CASE WHEN pref = 'sms' THEN :lo + (:hi - :lo) * r1 ELSE 0.02 + 0.08 * r4 END AS sms
  FROM (SELECT u, CASE WHEN x < 0.5 THEN 'email' WHEN x < 0.8 THEN 'push' ELSE 'sms' END AS pref,
               random() AS r1, random() AS r2, random() AS r3, random() AS r4
          FROM (SELECT u, random() AS x FROM generate_series(1, :people) AS u) AS s) AS t;
SELECT count(persona_identify(r.user_id)) FROM rates AS r \g /dev/null
SELECT persona_create_action('m_' || c, c, '{"title": "hello"}') FROM unnest('{push,email,sms}'::text[]) AS c \g /dev/null
CREATE TABLE sent (round int, user_id text, channel text, rate float8, clicked boolean);

-- One round: choose, queue, claim, ack, draw clicks, report them.
CREATE PROCEDURE play_round(r int) LANGUAGE plpgsql AS $$
DECLARE
    c text;
    ids bigint[];
BEGIN
    PERFORM setseed(0.5 + r / 100.0);   -- each round's clicks repeatable
    PERFORM persona.refresh_engagement();
    INSERT INTO sent (round, user_id, channel)
    SELECT r, x.user_id, persona_best_channel(x.user_id, '{push,email,sms}') FROM rates AS x;
    PERFORM persona.enqueue_message(i.profile_id, 'm_' || s.channel, 'bench')
       FROM sent AS s JOIN persona.identities AS i ON i.id = s.user_id WHERE s.round = r;
    COMMIT;
    FOREACH c IN ARRAY '{push,email,sms}'::text[] LOOP
        SELECT array_agg(m.message_id) INTO ids FROM persona_claim(c, 10000) AS m;
        IF ids IS NOT NULL THEN
            PERFORM persona_ack(ids);
        END IF;
        COMMIT;
    END LOOP;
    UPDATE sent AS s
       SET rate = CASE s.channel WHEN 'push' THEN x.push WHEN 'email' THEN x.email ELSE x.sms END
      FROM rates AS x WHERE x.user_id = s.user_id AND s.round = r;
    UPDATE sent AS s SET clicked = random() < s.rate WHERE s.round = r;
    PERFORM persona_message_feedback(m.message_id, 'click')
       FROM sent AS s JOIN persona.identities AS i ON i.id = s.user_id
       JOIN persona.messages AS m ON m.profile_id = i.profile_id AND m.channel = s.channel
      WHERE s.round = r AND s.clicked AND m.status = 'sent'
        AND NOT EXISTS (SELECT FROM persona.message_feedback AS f WHERE f.message_id = m.message_id)
        AND m.message_id = (SELECT max(m2.message_id) FROM persona.messages AS m2
                             WHERE m2.profile_id = i.profile_id AND m2.channel = s.channel);
    COMMIT;
END $$;
SQL
for ((r = 1; r <= 20; r++)); do
	psql_q -c "CALL play_round($r)"
done

read -r achieved oracle push clicks <<<"$(val "
SELECT round(sum(s.rate)::numeric, 1),
       round((SELECT sum(greatest(x.push, x.email, x.sms)) * 20 FROM rates AS x)::numeric, 1),
       round((SELECT sum(x.push) * 20 FROM rates AS x)::numeric, 1),
       count(*) FILTER (WHERE s.clicked)
  FROM sent AS s" -F ' ')"
# After the 20 messages: the channel persona picks now, against the oracle's.
read -r last_hit after_ratio <<<"$(val "
WITH r AS (SELECT persona.refresh_engagement()),
c AS (SELECT x.*, persona_best_channel(x.user_id, '{push,email,sms}') AS ch FROM rates AS x, r)
SELECT round(100.0 * count(*) FILTER (WHERE ch = pref) / count(*), 1),
       round((100.0 * sum(CASE ch WHEN 'push' THEN push WHEN 'email' THEN email ELSE sms END)
              / sum(greatest(push, email, sms)))::numeric, 1)
  FROM c" -F ' ')"

psql_q <<'SQL'
CREATE FUNCTION plain_best_channel(pid bigint) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT m.channel FROM persona.messages AS m
     WHERE m.profile_id = pid AND m.status = 'sent'
     GROUP BY m.channel
     ORDER BY avg((EXISTS (SELECT FROM persona.message_feedback AS f
                            WHERE f.profile_id = m.profile_id AND f.message_id = m.message_id
                              AND f.outcome = 'click'))::int) DESC, 1
     LIMIT 1
$$;
CREATE FUNCTION time_channel(which text, calls int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    ids bigint[];
    c text;
BEGIN
    SELECT array_agg(i.profile_id ORDER BY x.u) INTO ids FROM rates AS x JOIN persona.identities AS i ON i.id = x.user_id;
    PERFORM persona.refresh_engagement();
    t0 := clock_timestamp();
    FOR i IN 1..calls LOOP
        IF which = 'persona' THEN
            c := persona.best_channel_of(ids[1 + (i * 7919) % cardinality(ids)], '{push,email,sms}');
        ELSE
            c := plain_best_channel(ids[1 + (i * 7919) % cardinality(ids)]);
        END IF;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / calls;
END $$;
SQL
time_pair time_channel

echo
echo "2. best channel: $CH_PEOPLE people x 20 messages, planted click rates on push, email, sms"
printf '  %-52s %10s\n' "expected clicks, channels persona chose" "$achieved"
printf '  %-52s %10s   (%s%% of it)\n' "expected clicks, oracle (each person's best channel)" "$oracle" "$(calc "int(1000 * $achieved / $oracle) / 10")"
printf '  %-52s %10s   (%s%% of the oracle)\n' "expected clicks, always push" "$push" "$(calc "int(1000 * $push / $oracle) / 10")"
printf '  %-52s %10s\n' "clicks drawn" "$clicks"
printf '  %-52s %9s%%\n' "after the 20: the planted best channel chosen" "$last_hit"
printf '  %-52s %9s%%\n' "after the 20: its click rate, % of the oracle's" "$after_ratio"
printf '  %-52s %8s %8s %8s\n' "one call, server side (us, median of $RUNS x $CALLS)" "persona" "plain" "ratio"
printf '  %-52s %8s %8s %8s\n' "persona.best_channel_of vs the plain rate query" "$p_med" "$b_med" "$(calc "$p_med / $b_med")"
echo "  floor (the 20 messages >= 90% of the oracle, and above always-push) met:" \
	"$(awk -v a="$achieved" -v o="$oracle" -v p="$push" 'BEGIN { print ((a >= 0.9 * o && a > p) ? "yes" : "NO") }')"
