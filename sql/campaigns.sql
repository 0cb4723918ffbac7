-- Campaigns: persona_send_campaign, the claim of its chunks, ack / fail /
-- feedback on campaign messages, suppressions by reason, the throttle,
-- persona_cancel_campaign, persona_campaign_report, and
-- persona.channel_cap_per_day.
SET timezone = 'UTC';
\set VERBOSITY default
\set SHOW_CONTEXT never

SELECT count(*) AS running_experiments FROM persona.experiments WHERE status = 'running';
SELECT count(*) FILTER (WHERE persona_identify('k-' || lpad(g::text, 3, '0'),
                                               jsonb_build_object('first_name', 'P' || g, 'cohort', 'k')) > 0)
       AS identified
  FROM generate_series(1, 30) AS g;
SELECT persona_create_segment('k_cohort', $$traits->>'cohort' = 'k'$$);
SELECT persona_create_segment('k_nobody', $$traits->>'cohort' = 'nobody'$$);
SELECT persona_create_action('k_promo', 'kpush', '{"title": "Hi {{first_name}}"}');
CREATE FUNCTION pg_temp.report(c text) RETURNS text LANGUAGE sql
    RETURN (SELECT string_agg(status || '=' || messages, ' ') FROM persona_campaign_report(c)
             WHERE messages > 0);
-- An error's SQLSTATE and message, the message ids in it elided.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9]{15,}', 'ID', 'g');
END
$$;
CREATE TEMP TABLE claimed (message_id bigint, user_id text, content jsonb, attempt int, source text);

-- A campaign to the 30 members: one row, one chunk, no message rows.
SELECT persona_send_campaign('k_launch', 'k_promo', 'k_cohort');
SELECT name, action, channel, segment, source, id_base >= 2^48 AS above_2_48, recipients, status
  FROM persona.campaigns WHERE name = 'k_launch';
SELECT id_base AS b FROM persona.campaigns WHERE name = 'k_launch' \gset
SELECT count(*) AS chunks, sum(size) AS recipients FROM persona.campaign_chunks AS k
  JOIN persona.campaigns AS c USING (campaign_id) WHERE c.name = 'k_launch';
SELECT count(*) AS message_rows FROM persona.messages WHERE source = 'campaign:k_launch';
SELECT pg_temp.report('k_launch');

-- Claimed by persona_claim like any message: ids id_base + i in profile
-- order, rendered at claim. A claim that wants fewer splits the chunk.
WITH c AS (SELECT * FROM persona_claim('kpush', 12))
INSERT INTO claimed SELECT message_id, user_id, content, attempt, source FROM c;
SELECT message_id - :b AS i, user_id, content, attempt, source FROM claimed ORDER BY 1 LIMIT 3;
SELECT count(*) AS claimed, count(DISTINCT message_id) AS distinct_ids FROM claimed;
SELECT first_index, size, k.status, attempts FROM persona.campaign_chunks AS k
  JOIN persona.campaigns AS c USING (campaign_id) WHERE c.name = 'k_launch' ORDER BY first_index;
SELECT pg_temp.report('k_launch');

-- Ack marks them sent; a second ack of one is refused (55000), all or none.
SELECT persona_ack(ARRAY(SELECT message_id FROM claimed ORDER BY message_id LIMIT 10));
SELECT pg_temp.err(format('SELECT persona_ack(ARRAY[%s, %s])', :b, :b + 11)) AS acked_twice;
SELECT pg_temp.err(format('SELECT persona_ack(ARRAY[%s])', :b + 24)) AS ack_queued;
SELECT pg_temp.report('k_launch');

-- Fail writes the message's row under its id and retries it as any message.
SELECT persona_fail((:b + 10), 'APNs: 429');
SELECT message_id - :b AS i, status, source, attempts, last_error
  FROM persona.messages WHERE source = 'campaign:k_launch';
SELECT persona_fail((:b + 11), 'token unregistered', retry => false);
SELECT pg_temp.err(format('SELECT persona_fail(%s, %L)', :b + 20, 'not claimed')) AS fail_queued;
SELECT pg_temp.report('k_launch');

-- Feedback on a sent campaign message reaches the learning.
SELECT trials, successes FROM persona.action_stats AS s JOIN persona.actions AS a USING (action_id)
 WHERE a.name = 'k_promo';
SELECT persona_message_feedback((:b + 1), 'click');
SELECT persona_message_feedback((:b + 1), 'click');
SELECT trials, successes FROM persona.action_stats AS s JOIN persona.actions AS a USING (action_id)
 WHERE a.name = 'k_promo';
SELECT message_id - :b AS i, status FROM persona.messages
 WHERE source = 'campaign:k_launch' ORDER BY 1;
SELECT pg_temp.err(format('SELECT persona_message_feedback(%s, %L)', :b + 24, 'click')) AS feedback_queued;

-- persona_render renders a campaign message at open time like a row's: from
-- its chunk when it has no row (sent or still queued), from its row when it
-- has one; the person's traits as they are now. Past the recipients: 42704.
SELECT persona_render(:b + 2) AS sent_no_row, persona_render(:b + 24) AS queued_no_row,
       persona_render(:b + 1) AS with_row;
SELECT persona_identify('k-003', '{"first_name": "Tara"}') > 0 AS renamed;
SELECT persona_render(:b + 2) AS after_rename;
SELECT persona_identify('k-003', '{"first_name": "P3"}') > 0 AS restored;
SELECT pg_temp.err(format('SELECT persona_render(%s)', :b + 30)) AS past_recipients;
SELECT pg_temp.err(format('SELECT persona_render(%s)', (2::numeric ^ 48)::bigint - 1)) AS below_campaigns;

-- Consent withdrawn before the claim: suppressed at claim, counted.
SELECT persona_set_consent('k-013', 'kpush', false);
SELECT count(*) AS claimed FROM persona_claim('kpush', 100);
SELECT pg_temp.report('k_launch');
SELECT reason, messages FROM persona.suppressions WHERE source = 'campaign:k_launch' ORDER BY reason;
-- Feedback on a claimed one gives it its row, which acks like any message.
SELECT persona_message_feedback((:b + 14), 'impression');
SELECT persona_ack(ARRAY[(:b + 14), (:b + 15)]);
SELECT message_id - :b AS i, status FROM persona.messages
 WHERE source = 'campaign:k_launch' ORDER BY 1;
SELECT pg_temp.report('k_launch');

-- A lease that expires returns the unacked messages (attempt + 1); the
-- acked ones stay sent.
SELECT persona_send_campaign('k_lease', 'k_promo', 'k_cohort');
SELECT id_base AS l, id_base - :b AS after_k_launch FROM persona.campaigns WHERE name = 'k_lease' \gset
SELECT :after_k_launch AS after_k_launch;
SELECT count(*) AS claimed FROM persona_claim('kpush', 5, '10 milliseconds');
SELECT persona_ack(ARRAY[:l, (:l + 1)]);
SELECT pg_sleep(0.05);
SELECT pg_temp.report('k_lease');

-- Cancel stops what is not yet claimed and returns how many; the claimed
-- ones finish. Then it is cancelled: 55000.
SELECT persona_cancel_campaign('k_lease');
SELECT pg_temp.report('k_lease');
SELECT message_id - :l AS i, attempt FROM persona_claim('kpush', 100) ORDER BY 1;
SELECT persona_ack(ARRAY[(:l + 2), (:l + 3), (:l + 4)]);
SELECT pg_temp.report('k_lease');
SELECT persona_cancel_campaign('k_lease');
SELECT status FROM persona.campaigns WHERE name = 'k_lease';

-- Caps: an action's cap_per_day counts campaign messages once claimed;
-- persona.channel_cap_per_day counts every message of the channel.
SELECT persona_create_action('k_capped', 'kmail', '{"subject": "For {{first_name}}"}', cap_per_day => 1);
SELECT persona_create_action('k_other_mail', 'kmail', '{"subject": "Also"}');
SELECT persona_send_campaign('k_cap1', 'k_capped', 'k_cohort');
SELECT count(*) AS claimed FROM persona_claim('kmail', 10);
SELECT persona_send_campaign('k_cap2', 'k_capped', 'k_cohort');
-- The oldest first: the rest of k_cap1, then k_cap2, which everyone got.
SELECT source, count(*) FROM persona_claim('kmail', 100) GROUP BY source ORDER BY source;
SELECT pg_temp.report('k_cap1') AS k_cap1, pg_temp.report('k_cap2') AS k_cap2;
SELECT persona_identify('k-extra', '{"cohort": "other"}') > 0 AS identified;
SET persona.channel_cap_per_day = 1;
SELECT persona.enqueue_message(persona.resolve('k-001'), 'k_other_mail', 'trigger:k') IS NULL AS capped,
       persona.enqueue_message(persona.resolve('k-extra'), 'k_other_mail', 'trigger:k') IS NULL AS capped_extra;
SELECT persona_send_campaign('k_cap3', 'k_other_mail', 'k_cohort');
SELECT source, count(*) FROM persona_claim('kmail', 100) GROUP BY source ORDER BY source;
SELECT pg_temp.report('k_cap3');
SELECT source, reason, messages FROM persona.suppressions WHERE source IN ('campaign:k_cap3', 'trigger:k') ORDER BY 1;
RESET persona.channel_cap_per_day;
SELECT persona.channel_sends(persona.resolve('k-001'), 'kmail') AS k001_kmail,
       persona.channel_sends(persona.resolve('k-extra'), 'kmail') AS extra_kmail;

-- Holdouts: a running experiment on the action holds people out (counted).
SELECT persona_create_action('k_held', 'kweb', '{"title": "hello"}');
SELECT persona_create_experiment('k_exp', 50, 'k_held');
SELECT persona_send_campaign('k_held1', 'k_held', 'k_cohort');
SELECT count(*) > 0 AS claimed_some FROM persona_claim('kweb', 100);
SELECT status, messages > 0 AS some, messages < 30 AS not_all FROM persona_campaign_report('k_held1')
 WHERE status IN ('claimed', 'suppressed_holdout');
SELECT (SELECT sum(messages) FROM persona_campaign_report('k_held1')) AS total;
SELECT persona_end_experiment('k_exp');

-- The throttle: no more than rate_per_minute claimed in any minute, by all
-- claims together; the rest waits.
SELECT persona_create_action('k_slow', 'ksms', '{"text": "hi"}');
SELECT persona_send_campaign('k_slow1', 'k_slow', 'k_cohort', rate_per_minute => 7);
SELECT count(*) AS first FROM persona_claim('ksms', 5);
SELECT count(*) AS second FROM persona_claim('ksms', 5);
SELECT count(*) AS third FROM persona_claim('ksms', 5);
SELECT throttled_until > now() AS throttled FROM persona.campaigns WHERE name = 'k_slow1';
SELECT pg_temp.report('k_slow1');

-- Everyone (segment NULL), a future send_at, an empty segment.
SELECT persona_send_campaign('k_later', 'k_promo', send_at => (now() + interval '1 hour')::text) >= 30 AS everyone;
SELECT count(*) AS not_due FROM persona_claim('kpush', 100);
SELECT persona_send_campaign('k_empty', 'k_promo', 'k_nobody');
SELECT pg_temp.report('k_empty') AS empty_report;
SELECT persona_cancel_campaign('k_empty');
SELECT persona_cancel_campaign('k_later') >= 30 AS cancelled_all;

-- More than a chunk: chunks of 1,000 in profile order, claimed whole and
-- acked in one batch.
INSERT INTO persona.events (user_id, event_type, occurred_at)
SELECT 'kb-' || g, 'k_bulk', now() FROM generate_series(1, 2100) AS g;
SELECT persona_create_segment('k_bulk', $$user_id LIKE 'kb-%'$$);
SELECT persona_create_action('k_bulk_push', 'kbulk', '{"title": "Hi {{first_name}}"}');
SELECT persona_send_campaign('k_bulk1', 'k_bulk_push', 'k_bulk');
SELECT k.first_index, k.size, k.first_profile_id = k.profile_ids[1] AS first_ok,
       k.profile_ids = ARRAY(SELECT x FROM unnest(k.profile_ids) AS x ORDER BY x) AS ascending,
       k.profile_ids[1] > lag(k.profile_ids[k.size]) OVER (ORDER BY k.first_index) AS after_previous
  FROM persona.campaign_chunks AS k JOIN persona.campaigns AS c USING (campaign_id)
 WHERE c.name = 'k_bulk1' ORDER BY k.first_index;
CREATE TEMP TABLE bulk AS SELECT message_id, user_id FROM persona_claim('kbulk', 3000);
SELECT count(*) AS claimed, count(DISTINCT message_id) AS ids, count(DISTINCT user_id) AS people FROM bulk;
SELECT persona_ack(ARRAY(SELECT message_id FROM bulk));
SELECT pg_temp.report('k_bulk1');

-- A recipient forgotten before the claim is cancelled, not sent.
SELECT count(*) FILTER (WHERE persona_identify('kf-' || g, '{"cohort": "kf"}') > 0) AS identified
  FROM generate_series(1, 3) AS g;
SELECT persona_create_segment('k_kf', $$traits->>'cohort' = 'kf'$$);
SELECT persona_send_campaign('k_forget', 'k_bulk_push', 'k_kf');
SELECT persona_forget('kf-2') > 0 AS forgotten;
SELECT user_id FROM persona_claim('kbulk', 10) ORDER BY 1;
SELECT pg_temp.report('k_forget');

-- The claim reads a chunk's profiles in one forward scan: recipients far
-- apart (a new scan), one forgotten between them and one forgotten last.
SELECT persona_identify('kg-1', '{"cohort": "kg"}') > 0 AS identified;
SELECT count(*) FILTER (WHERE persona_identify('kg-gap-' || g, '{"cohort": "none"}') > 0) AS others
  FROM generate_series(1, 150) AS g;
SELECT count(*) FILTER (WHERE persona_identify('kg-' || g, '{"cohort": "kg"}') > 0) AS identified
  FROM generate_series(2, 4) AS g;
SELECT persona_create_segment('k_kg', $$traits->>'cohort' = 'kg'$$);
SELECT persona_send_campaign('k_gaps', 'k_bulk_push', 'k_kg');
SELECT persona_forget('kg-3') > 0 AS forgotten, persona_forget('kg-4') > 0 AS forgotten_last;
SELECT user_id FROM persona_claim('kbulk', 10) ORDER BY 1;
SELECT pg_temp.report('k_gaps');

-- Bad input: nothing is written.
SELECT persona_send_campaign('k_launch', 'k_promo', 'k_cohort');
SELECT persona_send_campaign('k_bad', 'no_such_action', 'k_cohort');
SELECT persona_send_campaign('k_bad', 'k_promo', 'no_such_segment');
SELECT persona_send_campaign('k_bad', 'k_promo', 'k_cohort', send_at => 'tomorrow-ish');
SELECT persona_send_campaign('k_bad', 'k_promo', 'k_cohort', send_at => '2001-01-01 00:00+00');
SELECT persona_send_campaign('k_bad', 'k_promo', 'k_cohort', rate_per_minute => 0);
SELECT persona_send_campaign('k_bad', 'k_promo', 'k_cohort', rate_per_minute => -5);
SELECT persona_send_campaign('', 'k_promo', 'k_cohort');
SELECT persona_send_campaign(NULL, 'k_promo', 'k_cohort');
SELECT persona_send_campaign('k_bad', 'k_promo', 'k_cohort', send_at => NULL);
SELECT persona_cancel_campaign('no_such_campaign');
SELECT persona_cancel_campaign(NULL);
SELECT * FROM persona_campaign_report('no_such_campaign');
SELECT count(*) AS bad_campaigns FROM persona.campaigns WHERE name = 'k_bad';

-- send_at => 'best_time': each recipient is due at their own best time in
-- the next 24 hours (persona.best_send_at), chunks cut per due time. Two
-- people engaged every week at different hours, five hours and eleven
-- hours from now.
SELECT count(*) FILTER (WHERE persona_identify('kb-' || g, '{"cohort": "kb"}') > 0) AS identified
  FROM generate_series(1, 2) AS g;
SELECT count(*) FILTER (WHERE persona_track('kb-' || g, 'page_view', '{}',
                                            date_trunc('hour', now() + g * interval '6 hours' - interval '1 hour')
                                              - w * interval '7 days') > 0) AS planted
  FROM generate_series(1, 2) AS g, generate_series(1, 6) AS w;
SELECT persona_create_segment('k_kb', $$traits->>'cohort' = 'kb'$$);
SELECT persona_send_campaign('k_best', 'k_bulk_push', 'k_kb', send_at => 'best_time');
SELECT p.user_id,
       k.due_at = persona.best_send_at(p.profile_id, c.due_at, c.channel, interval '24 hours') AS at_best_time,
       k.due_at - date_trunc('hour', c.due_at) AS from_this_hour
  FROM persona.campaigns AS c
  JOIN persona.campaign_chunks AS k USING (campaign_id)
  CROSS JOIN LATERAL unnest(k.profile_ids) AS r(profile_id)
  JOIN persona.profiles AS p ON p.profile_id = r.profile_id
 WHERE c.name = 'k_best'
 ORDER BY 1;
SELECT count(*) AS chunks FROM persona.campaign_chunks AS k JOIN persona.campaigns AS c USING (campaign_id)
 WHERE c.name = 'k_best';
-- Nobody is due yet.
SELECT count(*) AS claimable_now FROM persona_claim('kbulk', 10);
SELECT pg_temp.report('k_best');

-- An action on the channel "best" cannot be a campaign's (one channel per snapshot).
SELECT persona_create_action('k_best_channel', 'best', '{"t": "x"}');
SELECT persona_send_campaign('k_bad', 'k_best_channel', 'k_kb');
SELECT count(*) AS bad_campaigns FROM persona.campaigns WHERE name = 'k_bad';

-- A best-time campaign's chunks interleave by due time: kc-1 and kc-3 are
-- engaged at one hour, kc-2 (between them in profile order) at another, so
-- kc-3 is in the chunk that starts at kc-1, before kc-2's. A recipient is
-- found in the chunk of each due time that starts at or before it
-- (persona.campaign_reached, which caps and the best channel read). Made
-- due now, claimed and acked: all three reached, in their own chunks.
SELECT count(*) FILTER (WHERE persona_identify('kc-' || g, '{"cohort": "kc"}') > 0) AS identified
  FROM generate_series(1, 3) AS g;
SELECT count(*) FILTER (WHERE persona_track('kc-' || g, 'page_view', '{}',
                                            date_trunc('hour', now() + (2 - g % 2) * interval '6 hours' - interval '1 hour')
                                              - w * interval '7 days') > 0) AS planted
  FROM generate_series(1, 3) AS g, generate_series(1, 6) AS w;
SELECT persona_create_segment('k_kc', $$traits->>'cohort' = 'kc'$$);
SELECT persona_send_campaign('k_best_kc', 'k_bulk_push', 'k_kc', send_at => 'best_time');
SELECT k.first_index, k.size, k.profile_ids = ARRAY(SELECT persona.resolve(u) FROM unnest('{kc-1,kc-3}'::text[]) AS u)
       AS first_and_third
  FROM persona.campaign_chunks AS k JOIN persona.campaigns AS c USING (campaign_id)
 WHERE c.name = 'k_best_kc' ORDER BY k.due_at;
UPDATE persona.campaign_chunks AS k SET ready_at = now() FROM persona.campaigns AS c
 WHERE c.campaign_id = k.campaign_id AND c.name = 'k_best_kc';
SELECT p.user_id, persona.campaign_reached(c.campaign_id, p.profile_id) AS reached_before
  FROM persona.campaigns AS c, persona.profiles AS p
 WHERE c.name = 'k_best_kc' AND p.user_id IN ('kc-1', 'kc-2', 'kc-3', 'k-001') ORDER BY 1;
SELECT cardinality(x.ids) AS claimed_and_acked
  FROM (SELECT ARRAY(SELECT m.message_id FROM persona_claim('kbulk', 10) AS m ORDER BY 1) AS ids) AS x,
       LATERAL (SELECT persona_ack(x.ids)) AS a;
SELECT p.user_id, persona.campaign_reached(c.campaign_id, p.profile_id) AS reached_after
  FROM persona.campaigns AS c, persona.profiles AS p
 WHERE c.name = 'k_best_kc' AND p.user_id IN ('kc-1', 'kc-2', 'kc-3', 'k-001') ORDER BY 1;
