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
#  2. Best channel. $CH_PEOPLE measured people with planted click rates on
#     push, email and sms (one preferred channel at $PREF_LO to $PREF_HI, the
#     others at 0.02 to 0.10; the preferred channel is email for half of
#     them, push for 3 in 10, sms for 2 in 10), and 0 to 30 events each in
#     the last 90 days from the sources (context channel) app, email and
#     web. The planted correlation, said in the output: with probability
#     $ACT_SIGNAL an event comes from the source tied to the person's
#     preferred channel (push: app, email: email, sms: web), otherwise from
#     any source alike; every run is made twice, with that signal and with
#     none (activity independent of the preferred channel). By default the
#     population is established: as many earlier people got their 20
#     messages first ($WARM = 0: everyone starts at once). Each round every
#     person in their 20 messages gets one, on the channel
#     persona_best_channel picks among the three; workers claim and ack it; a
#     click is drawn with the planted rate and reported with
#     persona_message_feedback; persona.refresh_engagement() recomputes the
#     population between rounds. The rule before this change (a prior of 5
#     messages at the population's rate, no activity) is replayed in plain
#     SQL on draws of its own. Printed per seed and as means: the expected
#     clicks of the measured people's 20 messages as % of an oracle's that
#     always uses each person's best channel (floor 90%), of the previous
#     rule's and of always-push; after the 20, how often the channel chosen
#     is the planted best and its rate as % of the best; the population's
#     priors; the time of persona.refresh_engagement(); and the time of one
#     persona.best_channel_of against a plain query over the same messages.
#  3. The same people then get $CAMPAIGNS campaigns (all claimed and acked, so
#     no rows per message): the time of one persona.best_channel_of and of
#     persona.refresh_engagement() again.
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
# click rate), BENCH_SENDTIME_ACTIVITY_SIGNAL (0.5), BENCH_SENDTIME_SEEDS (3
# runs of each population), BENCH_SENDTIME_WARM (1: an established
# population; 0: a cold start), BENCH_SENDTIME_CAMPAIGNS (60).
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
ACT_SIGNAL=${BENCH_SENDTIME_ACTIVITY_SIGNAL:-0.5}
SEEDS=${BENCH_SENDTIME_SEEDS:-3}
WARM=${BENCH_SENDTIME_WARM:-1}
CAMPAIGNS=${BENCH_SENDTIME_CAMPAIGNS:-60}

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
# One simulation: a fresh install, $CH_PEOPLE people with planted click rates
# and activity, 20 rounds. Prints "achieved previous oracle push clicks
# last_hit after_ratio" (expected clicks; the previous rule replayed in plain
# SQL on clicks of its own).
channel_run() { # seed activity_signal
	psql_q -c 'DROP EXTENSION IF EXISTS persona CASCADE' -c 'CREATE EXTENSION persona' \
		-c 'DROP TABLE IF EXISTS rates, sent, sent_prev, shadow' -c 'DROP PROCEDURE IF EXISTS play_round(int)' >/dev/null 2>&1
	psql_q -v people="$CH_PEOPLE" -v lo="$PREF_LO" -v hi="$PREF_HI" -v seed="$1" -v signal="$2" -v warm="$WARM" <<'SQL'
SET client_min_messages = warning;
SELECT setseed(:seed) \g /dev/null
CREATE TABLE rates AS
SELECT u, 'ch-' || u AS user_id, pref, floor(r5 * 31)::int AS n,
       CASE WHEN u > :people * :warm THEN 1 + 20 * :warm ELSE 1 END AS start,
       u > :people * :warm AS measured,
       CASE WHEN pref = 'push' THEN :lo + (:hi - :lo) * r1 ELSE 0.02 + 0.08 * r2 END AS push,
       CASE WHEN pref = 'email' THEN :lo + (:hi - :lo) * r1 ELSE 0.02 + 0.08 * r3 END AS email,
       CASE WHEN pref = 'sms' THEN :lo + (:hi - :lo) * r1 ELSE 0.02 + 0.08 * r4 END AS sms
  FROM (SELECT u, CASE WHEN x < 0.5 THEN 'email' WHEN x < 0.8 THEN 'push' ELSE 'sms' END AS pref,
               random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5
          FROM (SELECT u, random() AS x FROM generate_series(1, :people * (1 + :warm)) AS u) AS s) AS t;
SELECT count(persona_identify(r.user_id)) FROM rates AS r \g /dev/null
-- Activity: 0 to 30 events each in the last 90 days, each from one source
-- (context channel app, email or web). With probability :signal an event
-- comes from the source tied to the person's preferred channel (push: app,
-- email: email, sms: web), otherwise from any of the three alike; with
-- :signal = 0 activity says nothing about the preferred channel.
INSERT INTO persona.events (user_id, event_type, context, occurred_at)
SELECT r.user_id, 'session',
       jsonb_build_object('channel',
           CASE WHEN random() < :signal
                THEN CASE r.pref WHEN 'push' THEN 'app' WHEN 'email' THEN 'email' ELSE 'web' END
                ELSE (ARRAY['app', 'email', 'web'])[1 + floor(random() * 3)::int] END),
       now() - random() * interval '90 days'
  FROM rates AS r, LATERAL generate_series(1, r.n) AS k;
SELECT persona_create_action('m_' || c, c, '{"title": "hello"}') FROM unnest('{push,email,sms}'::text[]) AS c \g /dev/null
CREATE TABLE sent (round int, user_id text, channel text, rate float8, clicked boolean);
CREATE TABLE sent_prev (round int, user_id text, channel text, rate float8, clicked boolean);
CREATE TABLE shadow (user_id text, channel text, d float8, e float8, PRIMARY KEY (user_id, channel));

-- One round: choose, queue, claim, ack, draw clicks, report them; and the
-- previous rule (score (engaged + 5 p) / (delivered + 5), p the
-- population's rate of the channel shrunk with 20 messages toward the
-- overall rate) replayed in plain SQL on its own draws.
CREATE PROCEDURE play_round(r int) LANGUAGE plpgsql AS $$
DECLARE
    c text;
    ids bigint[];
BEGIN
    PERFORM setseed(0.5 + r / 100.0);   -- each round's clicks repeatable
    PERFORM persona.refresh_engagement();
    INSERT INTO sent (round, user_id, channel)
    SELECT r, x.user_id, persona_best_channel(x.user_id, '{push,email,sms}') FROM rates AS x
     WHERE r BETWEEN x.start AND x.start + 19;
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
    WITH tot AS (SELECT (coalesce(sum(sh.e), 0) + 1) / (coalesce(sum(sh.d), 0) + 2) AS overall FROM shadow AS sh),
    pop AS (SELECT sh.channel, sum(sh.e) AS e, sum(sh.d) AS d FROM shadow AS sh GROUP BY sh.channel),
    prior AS (SELECT k.ch, k.ord, (coalesce(p.e, 0) + 20 * t.overall) / (coalesce(p.d, 0) + 20) AS p
                FROM unnest('{push,email,sms}'::text[]) WITH ORDINALITY AS k (ch, ord)
                CROSS JOIN tot AS t LEFT JOIN pop AS p ON p.channel = k.ch)
    INSERT INTO sent_prev (round, user_id, channel)
    SELECT r, x.user_id,
           (SELECT pr.ch FROM prior AS pr
              LEFT JOIN shadow AS sh ON sh.user_id = x.user_id AND sh.channel = pr.ch
             ORDER BY (coalesce(sh.e, 0) + 5 * pr.p) / (coalesce(sh.d, 0) + 5) DESC, pr.ord LIMIT 1)
      FROM rates AS x WHERE r BETWEEN x.start AND x.start + 19;
    UPDATE sent_prev AS s
       SET rate = CASE s.channel WHEN 'push' THEN x.push WHEN 'email' THEN x.email ELSE x.sms END
      FROM rates AS x WHERE x.user_id = s.user_id AND s.round = r;
    UPDATE sent_prev AS s SET clicked = random() < s.rate WHERE s.round = r;
    INSERT INTO shadow AS sh (user_id, channel, d, e)
    SELECT s.user_id, s.channel, 1, s.clicked::int FROM sent_prev AS s WHERE s.round = r
    ON CONFLICT (user_id, channel) DO UPDATE SET d = sh.d + 1, e = sh.e + excluded.e;
    COMMIT;
END $$;
SQL
	for ((r = 1; r <= 20 * (1 + WARM); r++)); do
		psql_q -c "CALL play_round($r)"
	done
	val "
WITH r AS (SELECT persona.refresh_engagement()),
c AS (SELECT x.*, persona_best_channel(x.user_id, '{push,email,sms}') AS ch FROM rates AS x, r WHERE x.measured)
SELECT round((SELECT sum(s.rate) FROM sent AS s JOIN rates AS x USING (user_id) WHERE x.measured)::numeric, 1),
       round((SELECT sum(s.rate) FROM sent_prev AS s JOIN rates AS x USING (user_id) WHERE x.measured)::numeric, 1),
       round((SELECT sum(greatest(x.push, x.email, x.sms)) * 20 FROM rates AS x WHERE x.measured)::numeric, 1),
       round((SELECT sum(x.push) * 20 FROM rates AS x WHERE x.measured)::numeric, 1),
       (SELECT count(*) FILTER (WHERE s.clicked) FROM sent AS s JOIN rates AS x USING (user_id) WHERE x.measured),
       round(100.0 * count(*) FILTER (WHERE ch = pref) / count(*), 1),
       round((100.0 * sum(CASE ch WHEN 'push' THEN push WHEN 'email' THEN email ELSE sms END)
              / sum(greatest(push, email, sms)))::numeric, 1)
  FROM c" -F ' '
}

pct() { calc "int(1000 * $1 / $2 + 0.5) / 10"; }

echo
echo "2. best channel: $CH_PEOPLE people x 20 messages, planted click rates on push, email, sms"
echo "   (one preferred channel at $PREF_LO-$PREF_HI, the others 0.02-0.10; email preferred by 5 in 10,"
echo "   push 3, sms 2), and 0-30 events each from the sources app, email, web. Planted correlation:"
echo "   with probability ACTIVITY_SIGNAL an event comes from the source tied to the preferred"
echo "   channel (push: app, email: email, sms: web), else from any source alike. The rule is not"
echo "   told this tie: it fits the rate of each channel per dominant source from the population."
echo "   Percentages are expected clicks over the 20 messages, as % of the oracle's (each"
echo "   person's planted best channel every time); 'previous' is the rule before this change"
echo "   (fixed prior of 5 messages, no activity, campaign deliveries uncounted) replayed in SQL."
if ((WARM)); then
	echo "   An established population: $CH_PEOPLE earlier people get 20 messages first, then the"
	echo "   $CH_PEOPLE measured people join and get theirs (BENCH_SENDTIME_WARM=0: all start at once)."
else
	echo "   A cold start: all $CH_PEOPLE people start at once, with no population history."
fi
printf '  %-30s %6s %9s %9s %9s %9s %9s %9s\n' "population, seed" "oracle" "persona" "previous" "push" "clicks" "after:hit" "after:%"
declare -A sum_p sum_prev sum_push n_runs
for signal in "$ACT_SIGNAL" 0; do
	for ((k = 1; k <= SEEDS; k++)); do
		seed=$(calc "0.6 + $k / 100")
		read -r achieved prev oracle push clicks last_hit after_ratio <<<"$(channel_run "$seed" "$signal")"
		if [[ $signal == 0 ]]; then label="no signal"; else label="signal $signal"; fi
		printf '  %-30s %6s %8s%% %8s%% %8s%% %9s %8s%% %8s%%\n' "$label, seed $seed" "$oracle" \
			"$(pct "$achieved" "$oracle")" "$(pct "$prev" "$oracle")" "$(pct "$push" "$oracle")" \
			"$clicks" "$last_hit" "$after_ratio"
		sum_p[$signal]=$(calc "${sum_p[$signal]:-0} + $achieved / $oracle")
		sum_prev[$signal]=$(calc "${sum_prev[$signal]:-0} + $prev / $oracle")
		sum_push[$signal]=$(calc "${sum_push[$signal]:-0} + $push / $oracle")
		n_runs[$signal]=$((${n_runs[$signal]:-0} + 1))
	done
done
for signal in "$ACT_SIGNAL" 0; do
	if [[ $signal == 0 ]]; then label="no signal"; else label="signal $signal"; fi
	printf '  %-30s %6s %8s%% %8s%% %8s%%   floor (persona >= 90%% and above push): %s\n' "$label, mean of $SEEDS" "100" \
		"$(pct "${sum_p[$signal]}" "${n_runs[$signal]}")" "$(pct "${sum_prev[$signal]}" "${n_runs[$signal]}")" \
		"$(pct "${sum_push[$signal]}" "${n_runs[$signal]}")" \
		"$(awk -v a="${sum_p[$signal]}" -v p="${sum_push[$signal]}" -v n="${n_runs[$signal]}" \
			'BEGIN { print ((a / n >= 0.9 && a > p) ? "yes" : "NO") }')"
done
refresh_ms=$(timed "SELECT persona.refresh_engagement()")
echo "  the population's priors after the last run (no signal; people fitted on), by dominant source:"
val "WITH r AS (SELECT persona.refresh_engagement() AS j)
SELECT '    all: ' || string_agg(format('%s %s (%s)', c.key, c.value->>'prior', c.value->>'fitted_on'), ', ' ORDER BY c.key)
  FROM r, jsonb_each(r.j->'channels') AS c
UNION ALL
SELECT format('    %s (%s people): ', coalesce(g->>'channel', 'none'), g->>'people')
       || (SELECT string_agg(format('%s %s', p.key, p.value), ', ' ORDER BY p.key) FROM jsonb_each(g->'priors') AS p)
  FROM r, jsonb_array_elements(r.j->'activity') AS g"
printf '  %-52s %8s ms\n' "persona.refresh_engagement(), $(val "SELECT count(*) FROM rates") sampled people" "$refresh_ms"

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
printf '  %-52s %8s %8s %8s\n' "one call, server side (us, median of $RUNS x $CALLS)" "persona" "plain" "ratio"
printf '  %-52s %8s %8s %8s\n' "persona.best_channel_of vs the plain rate query" "$p_med" "$b_med" "$(calc "$p_med / $b_med")"

# ---------------------------------------------------------------------------
# 3. A person in many campaigns: their campaign messages without a row are
#    found by one index probe per campaign of the window.
# ---------------------------------------------------------------------------
psql_q -v n="$CAMPAIGNS" <<'SQL'
SET client_min_messages = warning;
SELECT count(persona_send_campaign('bench_c' || k, 'm_' || (ARRAY['push', 'email', 'sms'])[1 + k % 3]))
  FROM generate_series(1, :n) AS k \g /dev/null
CREATE PROCEDURE drain() LANGUAGE plpgsql AS $$
DECLARE
    c text;
    ids bigint[];
BEGIN
    FOREACH c IN ARRAY '{push,email,sms}'::text[] LOOP
        LOOP
            SELECT array_agg(m.message_id ORDER BY m.message_id) INTO ids FROM persona_claim(c, 1000) AS m;
            EXIT WHEN ids IS NULL;
            PERFORM persona_ack(ids);
            COMMIT;
        END LOOP;
    END LOOP;
END $$;
CALL drain();
SQL
time_pair time_channel
refresh_ms=$(timed "SELECT persona.refresh_engagement()")
echo
echo "3. the same people after $CAMPAIGNS campaigns to everyone, claimed and acked (no rows per message)"
printf '  %-52s %8s %8s %8s\n' "one call, server side (us, median of $RUNS x $CALLS)" "persona" "plain" "ratio"
printf '  %-52s %8s %8s %8s\n' "persona.best_channel_of vs the plain rate query" "$p_med" "$b_med" "$(calc "$p_med / $b_med")"
printf '  %-52s %8s ms\n' "persona.refresh_engagement()" "$refresh_ms"
echo "  (the plain query reads persona.messages only: it does not see the campaigns)"
