-- Linked events: persona_create_trigger / persona_drop_trigger, and the
-- messages a trigger queues on every ingest path, in the same transaction.
SET timezone = 'UTC';
\set VERBOSITY default
\set SHOW_CONTEXT never

SELECT persona_identify('t-asha', '{"first_name": "Asha", "city": "Pune"}') > 0 AS identified;
SELECT persona_identify('t-ben', '{"first_name": "Ben", "city": "Oslo"}') > 0 AS identified;
SELECT persona_create_action('t_cart_push', 'push', '{"title": "{{first_name}}, your cart"}');
SELECT persona_create_action('t_thanks_mail', 'email', '{"subject": "Thanks, {{first_name}}"}');
CREATE FUNCTION pg_temp.pid(id text) RETURNS bigint LANGUAGE sql RETURN persona.resolve(id);
CREATE VIEW pg_temp.msgs AS
    SELECT u.user_id, m.action, m.source, m.status, m.due_at
      FROM persona.messages AS m JOIN persona.profiles AS u USING (profile_id)
     WHERE m.source LIKE 'trigger:t\_%'
     ORDER BY m.message_id;

-- A trigger on an event type, with a condition that reads the profile and
-- the triggering event, and a delay: due at the event's time plus delay.
SELECT persona_create_trigger('t_cart_reminder', 'add_to_cart', 't_cart_push',
    condition => $$traits->>'city' = 'Pune' AND (event->'properties'->>'price')::numeric >= 50
                   AND event->'context'->>'channel' = 'app' AND event->>'event_type' = 'add_to_cart'
                   AND context->>'channel' = 'app'$$,
    delay => '1 hour');
SELECT persona_create_trigger('t_thanks', 'purchase', 't_thanks_mail');
SELECT name, on_event, event_type, action, condition_sql IS NOT NULL AS compiled, condition_reads, delay
  FROM persona.triggers WHERE name LIKE 't\_%' ORDER BY name;

-- persona_track: fires when the condition holds, not otherwise.
SELECT persona_track('t-asha', 'add_to_cart', '{"price": 120}', '2026-05-01 10:00+00',
                     '{"channel": "app"}') > 0 AS tracked;
SELECT persona_track('t-asha', 'add_to_cart', '{"price": 10}', '2026-05-01 10:05+00',
                     '{"channel": "app"}') > 0 AS cheap;
SELECT persona_track('t-ben', 'add_to_cart', '{"price": 120}', '2026-05-01 10:10+00',
                     '{"channel": "app"}') > 0 AS elsewhere;
SELECT persona_track('t-asha', 'page_view') > 0 AS other_type;
SELECT * FROM pg_temp.msgs;

-- INSERT, several rows and several people in one statement, and COPY.
INSERT INTO persona.events (user_id, event_type, occurred_at)
VALUES ('t-asha', 'purchase', '2026-05-01 11:00+00'),
       ('t-ben', 'purchase', '2026-05-01 11:01+00'),
       ('t-new', 'purchase', '2026-05-01 11:02+00'),
       ('t-ben', 'page_view', '2026-05-01 11:03+00');
COPY persona.events (user_id, event_type, properties, context, occurred_at) FROM stdin;
t-asha	add_to_cart	{"price": 75}	{"channel": "app"}	2026-05-01 12:00+00
t-asha	add_to_cart	{"price": 75}	{"channel": "web"}	2026-05-01 12:01+00
t-copy	purchase	{}	{}	2026-05-01 12:02+00
\.
SELECT * FROM pg_temp.msgs;

-- Suppressions apply and are counted: consent withdrawn.
SELECT persona_set_consent('t-ben', 'email', false);
SELECT persona_track('t-ben', 'purchase', occurred_at => '2026-05-01 13:00+00') > 0 AS tracked;
SELECT action, status FROM pg_temp.msgs WHERE user_id = 't-ben';
SELECT source, reason, messages FROM persona.suppressions WHERE source LIKE 'trigger:t\_%' ORDER BY 1, 2;

-- A rolled-back statement leaves no message.
BEGIN;
SELECT persona_track('t-asha', 'purchase') > 0 AS tracked;
SELECT count(*) AS inside FROM pg_temp.msgs WHERE user_id = 't-asha' AND action = 't_thanks_mail';
ROLLBACK;
SELECT count(*) AS after_rollback FROM pg_temp.msgs WHERE user_id = 't-asha' AND action = 't_thanks_mail';

-- A condition and the consent are read from the profile as the event's
-- statement left it: the count the event itself raised, a consent withdrawn
-- earlier in the same transaction, a profile the statement created.
SELECT persona_define_trait('t_visits', 'count', 'visit');
SELECT persona_create_action('t_visit_mail', 'email', '{"title": "again"}');
SELECT persona_create_trigger('t_second_visit', 'visit', 't_visit_mail', condition => $$t_visits = 2$$);
SELECT persona_track('t-vi', 'visit') > 0 AS first_visit;
BEGIN;
SELECT persona_set_consent('t-vi', 'email', false);
SELECT persona_track('t-vi', 'visit') > 0 AS second_visit;
SELECT reason, messages FROM persona.suppressions WHERE source = 'trigger:t_second_visit';
ROLLBACK;
SELECT persona_track('t-vi', 'visit') > 0 AS second_visit;
INSERT INTO persona.events (user_id, event_type) VALUES ('t-vo', 'visit'), ('t-vo', 'visit'), ('t-vi', 'visit');
SELECT user_id, count(*) FROM pg_temp.msgs WHERE action = 't_visit_mail' GROUP BY 1 ORDER BY 1;
SELECT persona_drop_trigger('t_second_visit');
SELECT persona_drop_action('t_visit_mail');
SELECT persona_drop_trait('t_visits');

-- A condition that fails on an event skips that firing, with a warning,
-- counted; the event is ingested.
SELECT persona_create_trigger('t_qty', 'restock_request', 't_cart_push',
    condition => $$(event->'properties'->>'qty')::int > 0$$);
SELECT persona_track('t-asha', 'restock_request', '{"qty": "many"}') > 0 AS tracked;
SELECT persona_track('t-asha', 'restock_request', '{"qty": "3"}') > 0 AS tracked;
SELECT s.errors, s.last_error FROM persona.trigger_stats AS s
  JOIN persona.triggers AS t USING (trigger_id) WHERE t.name = 't_qty';
SELECT count(*) AS qty_messages FROM pg_temp.msgs WHERE source = 'trigger:t_qty';

-- An action dropped under its trigger: the firing is counted, not queued.
SELECT persona_create_action('t_gone', 'web', '{"t": "x"}');
SELECT persona_create_trigger('t_orphan', 'wishlist_add', 't_gone');
SELECT persona_drop_action('t_gone');
SELECT persona_track('t-asha', 'wishlist_add') > 0 AS tracked;
SELECT reason, messages FROM persona.suppressions WHERE source = 'trigger:t_orphan';

-- A delayed message is checked again when it is claimed, against the
-- profile as it is then and the triggering event kept with the message:
-- the abandoned-cart reminder does not go to someone who has since bought.
SELECT persona_define_trait('t_orders', 'count', 'order_placed');
SELECT persona_create_action('t_abandon_push', 'tcart', '{"title": "{{first_name}}, still want it?"}');
SELECT persona_create_trigger('t_abandon', 'cart_add', 't_abandon_push',
    condition => $$t_orders = 0 AND event->'properties'->>'sku' IS NOT NULL$$, delay => '30 minutes');
SELECT persona_track(u, 'cart_add', '{"sku": "RUN-PRO"}', now() - interval '2 hours') > 0 AS tracked
  FROM unnest(ARRAY['t-asha', 't-ben']) AS u ORDER BY u;
SELECT user_id, status, m.event FROM persona.messages AS m JOIN persona.profiles USING (profile_id)
 WHERE m.source = 'trigger:t_abandon' ORDER BY user_id;
SELECT persona_track('t-asha', 'order_placed') > 0 AS asha_bought;
SELECT user_id, attempt FROM persona_claim('tcart') ORDER BY user_id;
SELECT user_id, status, last_error FROM persona.messages AS m JOIN persona.profiles USING (profile_id)
 WHERE m.source = 'trigger:t_abandon' ORDER BY user_id;
SELECT reason, messages FROM persona.suppressions WHERE source = 'trigger:t_abandon';
-- Dropped meanwhile, the trigger checks nothing more: its messages go.
SELECT persona_track('t-new', 'cart_add', '{"sku": "RUN-PRO"}', now() - interval '2 hours') > 0 AS tracked;
SELECT persona_drop_trigger('t_abandon');
SELECT persona_track('t-new', 'order_placed') > 0 AS new_bought;
SELECT user_id FROM persona_claim('tcart');
SELECT persona_drop_trait('t_orders');
SELECT persona_drop_action('t_abandon_push');

-- Segment entries and exits fire triggers on every path that makes them:
-- identify (declared traits), ingest (a new profile), the tick. The event
-- is {"event_type": "segment:NAME:enter|exit", "properties": {"segment"}}.
SELECT persona_create_action('t_seg_msg', 'tseg', '{"title": "{{first_name}}"}');
SELECT persona_create_segment('t_gold', $$traits->>'tier' = 'gold'$$);
SELECT persona_create_segment('t_seen', $$event_count >= 1 AND user_id LIKE 't-seg%'$$);
SELECT persona_create_trigger('t_gold_in', 'segment:t_gold:enter', 't_seg_msg',
    condition => $$event->'properties'->>'segment' = 't_gold' AND event->>'event_type' = 'segment:t_gold:enter'$$);
SELECT persona_create_trigger('t_gold_out', 'segment:t_gold:exit', 't_seg_msg');
SELECT persona_create_trigger('t_seen_in', 'segment:t_seen:enter', 't_seg_msg', delay => '1 day');
SELECT name, event_type, segment, direction FROM persona.triggers WHERE segment IS NOT NULL ORDER BY name;
SELECT persona_identify('t-asha', '{"tier": "gold"}') > 0 AS entered;
SELECT persona_track('t-seg1', 'page_view') > 0 AS first_event;
SELECT persona_identify('t-asha', '{"tier": "silver"}') > 0 AS exited;
-- Back in before the exit message is claimed: the exit message is
-- cancelled at claim, the entry messages go.
SELECT persona_identify('t-asha', '{"tier": "gold"}') > 0 AS entered_again;
SELECT user_id, source, status, due_at > now() + interval '23 hours' AS next_day
  FROM pg_temp.msgs WHERE action = 't_seg_msg';
SELECT user_id, source FROM persona_claim('tseg') ORDER BY 1, 2;
SELECT user_id, source, status, last_error FROM persona.messages AS m JOIN persona.profiles USING (profile_id)
 WHERE m.action = 't_seg_msg' ORDER BY m.message_id;
SELECT persona_drop_trigger(t) FROM unnest(ARRAY['t_gold_in', 't_gold_out', 't_seen_in']) AS t;
SELECT persona_drop_segment(s) FROM unnest(ARRAY['t_gold', 't_seen']) AS s;
SELECT persona_drop_action('t_seg_msg');

-- One insert that fires for ten thousand people: an action without cap or
-- cooldown takes no lock per person, so the lock table does not run out.
BEGIN;
SELECT persona_create_action('t_bulk', 'tbulk', '{"t": "hi"}');
SELECT persona_create_trigger('t_bulk', 'bulk_view', 't_bulk');
INSERT INTO persona.events (user_id, event_type)
SELECT 't-bulk-' || g, 'bulk_view' FROM generate_series(1, 10000) AS g;
SELECT count(*) AS bulk_messages, count(DISTINCT profile_id) AS people
  FROM persona.messages WHERE source = 'trigger:t_bulk';
ROLLBACK;

-- One statement's firings are queued as one set (src/enqueue.c) with the
-- rules of one message at a time: the messages queued by earlier rows count
-- toward the cap and the cooldown of later ones; consent is per person.
BEGIN;
SELECT persona_create_action('t_capped', 'tcap', '{"t": "hi"}', cap_per_day => 2);
SELECT persona_create_action('t_cool', 'tcool', '{"t": "hi"}', cooldown => '1 hour');
SELECT persona_create_trigger('t_capped', 'set_view', 't_capped');
SELECT persona_create_trigger('t_cool', 'set_view', 't_cool');
SELECT persona_set_consent('t-set-2', 'tcool', false);
INSERT INTO persona.events (user_id, event_type)
SELECT 't-set-' || (g % 2 + 1), 'set_view' FROM generate_series(1, 6) AS g;
SELECT CASE m.profile_id WHEN persona.resolve('t-set-1') THEN 't-set-1'
                         WHEN persona.resolve('t-set-2') THEN 't-set-2' END AS person,
       action, count(*) AS messages
  FROM persona.messages AS m
 WHERE m.source IN ('trigger:t_capped', 'trigger:t_cool')
 GROUP BY 1, 2 ORDER BY 1, 2;
SELECT source, reason, messages FROM persona.suppressions
 WHERE source IN ('trigger:t_capped', 'trigger:t_cool') ORDER BY 1, 2;
ROLLBACK;

-- A firing reads the actions from a per-backend cache, and writes its
-- message with the outbox's constraints and defaults compiled once per
-- backend (src/rowwriter.c): each follows a change made since, in the same
-- session: a cap given to the action, a constraint added to
-- persona.messages, a default changed, and each undone by a rollback.
BEGIN;
SELECT persona_create_action('t_later', 'tlater', '{"t": "hi"}');
SELECT persona_create_trigger('t_later', 'later_view', 't_later');
SELECT persona_track('t-later', 'later_view') > 0 AS fired;
SELECT persona_update_action('t_later', '{"cap_per_day": 1}');
SELECT persona_track('t-later', 'later_view') > 0 AS fired_over_cap;
SELECT count(*) AS later_messages FROM persona.messages WHERE source = 'trigger:t_later';
SELECT reason, messages FROM persona.suppressions WHERE source = 'trigger:t_later';
SELECT persona_update_action('t_later', '{"cap_per_day": null}');
SAVEPOINT changed;
ALTER TABLE persona.messages ADD CONSTRAINT t_later_check CHECK (attempts < 0) NOT VALID;
\set VERBOSITY terse
SELECT persona_track('t-later', 'later_view') > 0 AS fired_against_check;
\set VERBOSITY default
ROLLBACK TO changed;
ALTER TABLE persona.messages ALTER COLUMN attempts SET DEFAULT 7;
SELECT persona_track('t-later', 'later_view') > 0 AS fired_with_default;
SELECT attempts AS default_attempts FROM persona.messages
 WHERE source = 'trigger:t_later' ORDER BY message_id DESC LIMIT 1;
ROLLBACK TO changed;
SELECT persona_track('t-later', 'later_view') > 0 AS fired_again;
SELECT attempts, count(*) AS later_messages FROM persona.messages
 WHERE source = 'trigger:t_later' GROUP BY attempts ORDER BY attempts;
ROLLBACK;

-- Action conditions cannot name event; trigger conditions can.
SELECT persona_create_action('t_bad', 'web', '{}', condition => $$event IS NULL$$);

-- Bad input: nothing is written.
SELECT persona_create_trigger('t_x', 'add_to_cart', 'no_such_action');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_x', 'segment:nope', 't_cart_push');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_x', 'segment:nope:leave', 't_cart_push');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_x', 'segment:nope:enter', 't_cart_push');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_x', 'add_to_cart', 't_cart_push', delay => '-1 minute');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_x', 'add_to_cart', 't_cart_push', delay => '11 years');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_x', 'add_to_cart', 't_cart_push', condition => $$pg_sleep(1) IS NULL$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_x', 'add_to_cart', 't_cart_push', condition => $$nope > 1$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_x', 'add_to_cart', 't_cart_push', condition => '  ');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_cart_reminder', 'add_to_cart', 't_cart_push');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_x', NULL, 't_cart_push');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('t_x', '', 't_cart_push');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_create_trigger('', 'add_to_cart', 't_cart_push');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A row written by hand is compiled by the table's trigger all the same.
INSERT INTO persona.triggers (name, on_event, event_type, action, condition)
VALUES ('t_x', 'add_to_cart', 'add_to_cart', 't_cart_push', $$pg_sleep(1) IS NULL$$);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) AS t_x FROM persona.triggers WHERE name = 't_x';

-- Dropping: the trigger stops firing; its messages stay.
SELECT persona_drop_trigger('t_thanks');
SELECT persona_track('t-asha', 'purchase') > 0 AS tracked;
SELECT count(*) AS thanks_messages FROM pg_temp.msgs WHERE source = 'trigger:t_thanks';
SELECT persona_drop_trigger('t_thanks');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_drop_trigger(NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT persona_drop_trigger(t) FROM unnest(ARRAY['t_cart_reminder', 't_qty', 't_orphan']) AS t;
SELECT count(*) AS left_over FROM persona.triggers WHERE name LIKE 't\_%';
SELECT persona_drop_action(a) FROM unnest(ARRAY['t_cart_push', 't_thanks_mail']) AS a;
