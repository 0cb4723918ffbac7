-- Delivery: consent, the outbox, claim / ack / fail, message feedback.
SET timezone = 'UTC';
\set SHOW_CONTEXT never

SELECT persona_identify('o-ravi', '{"first_name": "Ravi", "city": "Pune"}') > 0 AS identified;
SELECT persona_track('o-ravi', 'add_to_cart', '{"sku": "RUN-PRO"}') > 0 AS tracked;
SELECT persona_create_action('o_cart_push', 'push', '{"title": "{{first_name}}, your cart in {{city}}", "n": "[{{nope}}]"}',
    cap_per_day => 2);
SELECT persona_create_action('o_news_mail', 'email', '{"subject": "News for {{first_name}}"}',
    cooldown => '1 hour');
SELECT persona_create_action('o_web', 'web', '{"title": "hello"}');
CREATE FUNCTION pg_temp.pid(id text) RETURNS bigint LANGUAGE sql RETURN persona.resolve(id);

-- Consent: open channels by default, a withdrawal closes one.
SELECT persona_profile('o-ravi')->'consent' AS consent;
SELECT action FROM persona_decide('o-ravi', n => 3) ORDER BY action;
SELECT persona_set_consent('o-ravi', 'email', false);
SELECT persona_profile('o-ravi')->'consent' AS consent;
SELECT action FROM persona_decide('o-ravi', n => 3) ORDER BY action;
SELECT persona_set_consent('o-ravi', 'email', true);
-- An opt-in channel needs a grant; the setting is a list of channel names.
SET persona.opt_in_channels = 'sms, push';
SELECT action FROM persona_decide('o-ravi', n => 3) ORDER BY action;
SELECT persona.consented('{}', 'push') AS push, persona.consented('{"push": true}', 'push') AS granted,
       persona.consented('{}', 'web') AS web, persona.consented('{"web": false}', 'web') AS withdrawn;
SET persona.opt_in_channels = 'push,';
SET persona.opt_in_channels = 'Push';
SELECT persona_set_consent('o-ravi', 'push', true);
SELECT action FROM persona_decide('o-ravi', n => 3) ORDER BY action;
RESET persona.opt_in_channels;

-- An unknown id gets an anonymous profile, so that the choice is kept for
-- when it first shows up; a merge keeps a withdrawal over a grant.
SELECT persona_set_consent('o-anon', 'sms', true);
SELECT persona_set_consent('o-anon', 'push', false);
SELECT persona_profile('o-anon')->'consent' AS anon_consent;
SELECT persona_alias('o-ravi', 'o-anon') > 0 AS merged;
SELECT persona_profile('o-ravi')->'consent' AS merged_consent;
SELECT persona_set_consent('o-ravi', 'push', true);

-- Bad input: nothing is written.
SELECT persona_set_consent('o-ravi', 'E-mail', false);
SELECT persona_set_consent('o-ravi', '', false);
SELECT persona_set_consent('o-ravi', 'email', NULL);
SELECT persona_set_consent(NULL, 'email', false);
SELECT persona_set_consent('', 'email', false);
SELECT persona_profile('o-ravi')->'consent' AS unchanged;

-- The outbox: messages count toward caps and cooldowns like decisions;
-- a suppressed message is counted by reason, not queued.
SELECT persona_pause_action(a) FROM unnest(ARRAY['o_cart_push', 'o_news_mail', 'o_web']) AS a;
SELECT persona_create_action('o_cart', 'push', '{"title": "{{first_name}}, your cart in {{city}}", "n": "[{{nope}}]"}',
    cap_per_day => 2);
SELECT persona_create_action('o_mail', 'email', '{"subject": "News for {{first_name}}"}',
    cooldown => '1 hour');
SELECT persona_create_action('o_webmsg', 'web', '{"title": "hello"}');
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'o_cart', 'trigger:cart') AS m1;
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'o_cart', 'trigger:cart', now() + interval '1 hour') AS m2;
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'o_cart', 'trigger:cart') AS over_cap;
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'o_mail', 'trigger:news') AS m3;
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'o_mail', 'trigger:news') AS in_cooldown;
SELECT action FROM persona_decide('o-ravi', n => 3) ORDER BY action;
SELECT persona_set_consent('o-ravi', 'sms', false);
SELECT persona_create_action('o_sms', 'sms', '{"text": "hi"}');
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'o_sms', 'campaign:spring') AS no_consent;
SELECT source, reason, messages FROM persona.suppressions ORDER BY source, reason;
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'nope', 'trigger:x');
SELECT persona.enqueue_message(-1, 'o_sms', 'trigger:x');
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'o_sms', '');
SELECT message_id, channel, action, source, status, attempts, due_at > created_at AS later
  FROM persona.messages ORDER BY message_id;

-- claim: due messages only, rendered with the profile's traits now.
SELECT persona_identify('o-ravi', '{"city": "Mumbai"}') > 0 AS moved;
SELECT message_id, user_id, channel, action, content, attempt, source FROM persona_claim('push', 10);
SELECT message_id, user_id, action, content, attempt FROM persona_claim('email');
SELECT count(*) AS nothing_due FROM persona_claim('push');
SELECT message_id, status, attempts, content FROM persona.messages ORDER BY message_id;

-- ack in a batch; fail with backoff; dead after persona.max_attempts.
SELECT persona_ack(ARRAY[1, 1]) AS acked;
SELECT persona_fail(3, 'smtp 451: try later');
SELECT status, attempts, last_error,
       ready_at > clock_timestamp() AND ready_at < clock_timestamp() + interval '11 seconds' AS backed_off
  FROM persona.messages WHERE message_id = 3;
SELECT count(*) AS not_yet FROM persona_claim('email');
UPDATE persona.messages SET ready_at = now() WHERE message_id = 3;   -- the retry falls due
SELECT message_id, attempt FROM persona_claim('email');
SET persona.max_attempts = 2;
SELECT persona_fail(3, 'smtp 550: no such user');
SELECT status, attempts, last_error, ready_at FROM persona.messages WHERE message_id = 3;
RESET persona.max_attempts;
-- retry => false: dead at once.
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'o_webmsg', 'trigger:web') AS m4;
SELECT message_id FROM persona_claim('web');
SELECT persona_fail(4, 'bad token', retry => false);
SELECT status, attempts, last_error FROM persona.messages WHERE message_id = 4;
-- The backoff: 10 s doubled per try, capped at an hour, half of it jittered.
SELECT a, min(d) >= make_interval(secs => least(3600, 10 * 2 ^ (a - 1)) / 2) AS at_least_half,
          max(d) <= make_interval(secs => least(3600, 10 * 2 ^ (a - 1))) AS at_most_all
  FROM generate_series(1, 10) AS a, LATERAL (SELECT persona.retry_delay(a) AS d FROM generate_series(1, 50)) AS r
 GROUP BY a ORDER BY a;

-- A lease that expires returns the message, attempt + 1; the late ack of
-- the first worker then marks it sent, and the second worker's ack is
-- refused as already acked (at-least-once: both sent it).
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'o_webmsg', 'trigger:web') AS m5;
SELECT message_id, attempt FROM persona_claim('web', 1, '1 millisecond');
SELECT pg_sleep(0.01);
SELECT message_id, attempt FROM persona_claim('web', 1, '1 minute');
SELECT persona_ack(ARRAY[5]) AS late_ack;
SELECT persona_ack(ARRAY[5]);
SELECT status, attempts FROM persona.messages WHERE message_id = 5;
-- A lease that expires on the last attempt makes the message dead.
SET persona.max_attempts = 1;
SELECT persona.enqueue_message(pg_temp.pid('o-ravi'), 'o_webmsg', 'trigger:web') AS m6;
SELECT message_id, attempt FROM persona_claim('web', 1, '1 millisecond');
SELECT pg_sleep(0.01);
SELECT count(*) AS reclaimed FROM persona_claim('web');
SELECT status, attempts, last_error FROM persona.messages WHERE message_id = 6;
RESET persona.max_attempts;

-- Bad input: a clear error, nothing written.
SELECT persona_claim('push', 0);
SELECT persona_claim('push', 10001);
SELECT persona_claim('push', 10, '0 seconds');
SELECT persona_claim('push', 10, '-1 second');
SELECT persona_claim('push', 10, '2 days');
SELECT persona_claim('Push');
SELECT persona_claim(NULL);
SELECT persona_ack(ARRAY[1, 999]);
SELECT persona_ack(ARRAY[1]);
SELECT persona_ack(ARRAY[2]);
SELECT persona_ack(ARRAY[NULL]::bigint[]);
SELECT persona_ack('{}') AS none;
SELECT persona_ack(ARRAY(SELECT g FROM generate_series(1, 10001) AS g));
-- Claim and ack write their rows directly: a read-only transaction refuses
-- them as it refuses UPDATE (25006).
BEGIN READ ONLY;
SELECT persona_claim('push');
ROLLBACK;
BEGIN READ ONLY;
SELECT persona_ack(ARRAY[2]);
ROLLBACK;
SELECT persona_fail(999, 'x');
SELECT persona_fail(1, 'x');
SELECT persona_fail(2, 'x');
SELECT persona_fail(2, NULL);
SELECT message_id, status, attempts FROM persona.messages ORDER BY message_id;

-- Feedback on a message teaches the action's statistics, as on a decision.
SELECT trials, successes, conversions, revenue FROM persona.action_stats AS s
  JOIN persona.actions AS a USING (action_id) WHERE a.name = 'o_cart';
SELECT persona_message_feedback(1, 'impression');
SELECT persona_message_feedback(1, 'click');
SELECT persona_message_feedback(1, 'click');       -- idempotent
SELECT persona_message_feedback(1, 'conversion', 1999);
SELECT trials, successes, conversions, revenue FROM persona.action_stats AS s
  JOIN persona.actions AS a USING (action_id) WHERE a.name = 'o_cart';
SELECT persona_message_feedback(2, 'click');       -- queued: not sent
SELECT persona_message_feedback(999, 'click');
SELECT persona_message_feedback(1, 'kiss');
SELECT persona_message_feedback(1, 'click', 5);

-- Withdrawing consent cancels the channel's unclaimed messages.
SELECT persona_set_consent('o-ravi', 'push', false);
SELECT message_id, status, last_error FROM persona.messages WHERE channel = 'push' ORDER BY message_id;
SELECT source, reason, messages FROM persona.suppressions ORDER BY source, reason;

-- A merge moves messages to the survivor; forget erases them and consent.
SELECT persona_set_consent('o-anon2', 'web', true);
SELECT persona.enqueue_message(pg_temp.pid('o-anon2'), 'o_webmsg', 'trigger:web') AS m7;
SELECT persona_alias('o-ravi', 'o-anon2') > 0 AS merged;
SELECT count(*) AS ravi_messages FROM persona.messages WHERE profile_id = pg_temp.pid('o-ravi');
SELECT persona_forget('o-ravi') > 0 AS forgotten;
SELECT count(*) AS messages_left, (SELECT count(*) FROM persona.message_feedback) AS feedback_left
  FROM persona.messages;

-- The actions of this file go, for the files after it.
DO $$ BEGIN PERFORM persona_drop_action(a.name) FROM persona.actions AS a WHERE a.name LIKE 'o\_%'; END $$;
