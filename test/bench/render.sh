#!/usr/bin/env bash
# Linked content: what {{name[key].column}} costs when a message is
# rendered, against the same lookups written in plain PostgreSQL.
#
# $MESSAGES queued trigger messages, half of an action whose template
# reads two columns of a linked products table ($PRODUCTS rows) by the
# sku of the triggering event, half of an action whose template shows two
# values of the event only. Timed, each the median of $RUNS runs in
# alternating order (one warm-up each), in one statement over all the
# messages of an action:
#   linked:   persona_render of each message of the linked action
#             (two index probes per message, as persona_claim renders);
#   event:    persona_render of each message of the other action (the
#             rendering without linked content);
#   plain:    plain PostgreSQL, no persona: per message, the product's name
#             and stock looked up by its sku through a prepared plan (a SQL
#             function), as a worker would write it: one probe per message.
# Then one persona_claim of every message of each action (claim also
# writes each message), linked and not.
#
# No target in the issue; information only: nothing here fails on a timing.
#
# Knobs (environment): BENCH_RENDER_MESSAGES (20000), BENCH_RENDER_PRODUCTS
# (10000), BENCH_RENDER_RUNS (5). The defaults take well under a minute.
set -euo pipefail
# shellcheck source=test/bench/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

MESSAGES=${BENCH_RENDER_MESSAGES:-20000}
PRODUCTS=${BENCH_RENDER_PRODUCTS:-10000}
RUNS=${BENCH_RENDER_RUNS:-5}

DB=${PGDATABASE:-persona_bench}_render
cleanup() { psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "persona linked content benchmark"
echo "  $(val "SELECT split_part(version(), ' on ', 1)" -d postgres) | $(nproc) CPUs"
psql_q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
export PGDATABASE=$DB
psql_q -c 'CREATE EXTENSION persona'

t0=$(date +%s.%N)
psql_q -v messages="$MESSAGES" -v products="$PRODUCTS" <<'SQL'
SET client_min_messages = warning;
CREATE SCHEMA shop;
CREATE TABLE shop.products (sku text PRIMARY KEY, name text NOT NULL, stock int NOT NULL);
INSERT INTO shop.products SELECT 'SKU-' || i, 'Product ' || i, i % 50 FROM generate_series(1, :products) AS i;
SELECT persona_link_content('products', 'shop.products', 'sku') \g /dev/null
SELECT persona_create_action('linked', 'linked',
    '{"title": "{{first_name}}, {{products[event.properties.sku].name}} is waiting",
      "body": "Only {{products[event.properties.sku].stock}} left"}') \g /dev/null
SELECT persona_create_action('event', 'event',
    '{"title": "{{first_name}}, {{event.properties.sku}} is waiting",
      "body": "Only {{event.properties.n}} left"}') \g /dev/null
SELECT persona_create_trigger('cart_linked', 'cart_linked', 'linked') \g /dev/null
SELECT persona_create_trigger('cart_event', 'cart_event', 'event') \g /dev/null
INSERT INTO persona.events (user_id, event_type, properties, occurred_at)
SELECT 'user-' || i, CASE WHEN i % 2 = 0 THEN 'cart_linked' ELSE 'cart_event' END,
       jsonb_build_object('sku', 'SKU-' || (i * 7919 % :products + 1), 'n', i % 50),
       now() - interval '1 hour'
  FROM generate_series(1, :messages) AS i;
-- Plain PostgreSQL: the lookup a worker would write, one prepared probe.
CREATE FUNCTION bench_lookup(sku text) RETURNS text LANGUAGE sql STABLE
    AS $$SELECT p.name || ' ' || p.stock FROM shop.products AS p WHERE p.sku = $1$$;
CREATE FUNCTION bench_ms(what text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); n bigint;
BEGIN
    IF what = 'plain' THEN
        SELECT count(bench_lookup(m.event -> 'properties' ->> 'sku')) INTO n
          FROM persona.messages AS m WHERE m.action = 'linked';
    ELSE
        SELECT count(persona_render(m.message_id)) INTO n
          FROM persona.messages AS m WHERE m.action = what;
    END IF;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
VACUUM ANALYZE;
SQL
half=$((MESSAGES / 2))
expect "linked messages" "SELECT count(*) FROM persona.messages WHERE action = 'linked'" "$half"
expect "rendered with the linked row" \
	"SELECT count(*) FROM persona.messages AS m JOIN shop.products AS p ON p.sku = m.event->'properties'->>'sku'
	  WHERE m.action = 'linked' AND persona_render(m.message_id)->>'body' = 'Only ' || p.stock || ' left'" "$half"
printf '  %s messages (%s of each action), %s products; built in %.0f s\n' "$(fmt_int "$MESSAGES")" \
	"$(fmt_int "$half")" "$(fmt_int "$PRODUCTS")" "$(calc "$(date +%s.%N) - $t0")"

echo
echo "== rendering $half messages in one statement, $RUNS runs each, alternating (one warm-up each)"
echo "   linked: persona_render, 2 linked placeholders (2 probes) | event: persona_render, no linked content"
echo "   plain:  no persona, one prepared probe of shop.products per message (name and stock)"
for w in linked event plain; do val "SELECT bench_ms('$w')" >/dev/null; done
l_all="" e_all="" p_all=""
for ((r = 1; r <= RUNS; r++)); do
	if ((r % 2)); then order="linked event plain"; else order="plain event linked"; fi
	for w in $order; do
		t=$(val "SELECT bench_ms('$w')")
		case $w in linked) l=$t ;; event) e=$t ;; plain) p=$t ;; esac
	done
	printf '  run %d: linked %8.1f ms | event %8.1f ms | plain %8.1f ms\n' "$r" "$l" "$e" "$p"
	l_all+=" $l" e_all+=" $e" p_all+=" $p"
done
L=$(median <<<"$l_all")
E=$(median <<<"$e_all")
P=$(median <<<"$p_all")

echo
echo "== one persona_claim of all $half messages of each action (renders, checks and writes each)"
claim_ms() { # channel
	val "SELECT extract(epoch FROM clock_timestamp() - t0) * 1000
	       FROM (SELECT clock_timestamp() AS t0) AS s,
	            LATERAL (SELECT count(*) FROM persona_claim('$1', 10000, '1 hour')) AS c" | tail -n 1
}
CL=0 CE=0
for ((left = half; left > 0; left -= 10000)); do
	CL=$(calc "$CL + $(claim_ms linked)")
	CE=$(calc "$CE + $(claim_ms event)")
done
expect "claimed" "SELECT count(*) FROM persona.messages WHERE status = 'claimed'" "$MESSAGES"

echo
echo "== summary (medians)"
printf '  render, linked:             %8.1f ms  %6.2f us/message\n' "$L" "$(calc "1000 * $L / $half")"
printf '  render, no linked content:  %8.1f ms  %6.2f us/message\n' "$E" "$(calc "1000 * $E / $half")"
printf '  plain PostgreSQL lookup:    %8.1f ms  %6.2f us/message\n' "$P" "$(calc "1000 * $P / $half")"
printf '  linked content adds %.2f us per message (2 placeholders) = %.2fx the plain lookup of the same row\n' \
	"$(calc "1000 * ($L - $E) / $half")" "$(calc "($L - $E) / $P")"
printf '  claim, linked:            %8.1f ms  %6.2f us/message\n' "$CL" "$(calc "1000 * $CL / $half")"
printf '  claim, no linked content: %8.1f ms  %6.2f us/message\n' "$CE" "$(calc "1000 * $CE / $half")"
