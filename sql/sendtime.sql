-- Best send time and best channel (docs/sendtime.md): planted histories,
-- local hours, the population fallback, consent, the channel "best", bad
-- input and privileges. Times are relative to the start of this week, so
-- the expected output holds on any day.
SET timezone = 'UTC';
\set SHOW_CONTEXT never

CREATE FUNCTION pg_temp.week() RETURNS timestamptz LANGUAGE sql STABLE
    RETURN date_trunc('week', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
-- The local hour of the week (Monday 00:00 = 0) of a moment.
CREATE FUNCTION pg_temp.how(t timestamptz, tz text DEFAULT 'UTC') RETURNS int LANGUAGE sql STABLE
    RETURN (extract(isodow FROM t AT TIME ZONE tz)::int - 1) * 24 + extract(hour FROM t AT TIME ZONE tz)::int;
-- n events of a person at local hour of the week h (minute m), one a week
-- over the last n weeks.
CREATE FUNCTION pg_temp.plant(id text, h int, n int, tz text DEFAULT 'UTC', m int DEFAULT 20) RETURNS bigint
    LANGUAGE sql
    RETURN (SELECT count(persona_track(id, 'open', '{}',
                   ((date_trunc('week', now() AT TIME ZONE tz) - k * interval '1 week')
                    + h * interval '1 hour' + m * interval '1 minute') AT TIME ZONE tz))
              FROM generate_series(1, n) AS k);
-- A message of an action to a person, claimed and acked; clicked if asked.
CREATE FUNCTION pg_temp.deliver(id text, action text, clicked boolean) RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint := persona.enqueue_message(persona_identify(id), action, 'test');
    v_channel text := (SELECT m.channel FROM persona.messages AS m WHERE m.message_id = v_id);
BEGIN
    PERFORM persona_ack(ARRAY(SELECT c.message_id FROM persona_claim(v_channel, 1000) AS c));
    IF clicked THEN
        PERFORM persona_message_feedback(v_id, 'click');
    END IF;
    RETURN v_id;
END $$;

-- ---------------------------------------------------------------------
-- Best time
-- ---------------------------------------------------------------------

-- Tuesdays at 09:20 UTC six times, and once a Friday evening: Tuesday 09.
SELECT pg_temp.plant('st-tue', 33, 6) + pg_temp.plant('st-tue', 4 * 24 + 20, 1) AS planted;
SELECT persona.refresh_engagement() ? 'channels' AS refreshed;
-- From a Wednesday: the next Tuesday, at 09:00; the answer is at or after
-- "after", and in its hour it is "after" itself.
SELECT persona_best_send_time('st-tue', pg_temp.week() + interval '2 days 10:30') - pg_temp.week() AS from_wednesday;
SELECT persona_best_send_time('st-tue', pg_temp.week() + interval '1 day 08:59') - pg_temp.week() AS just_before;
SELECT persona_best_send_time('st-tue', pg_temp.week() + interval '1 day 09:40') - pg_temp.week() AS within_the_hour;
-- The default "after" is now: the answer is within the coming week.
SELECT persona_best_send_time('st-tue') - now() BETWEEN interval '0' AND interval '7 days' AS within_a_week,
       pg_temp.how(persona_best_send_time('st-tue')) IN (33, pg_temp.how(now())) AS in_the_hour;

-- Local hours: Tuesdays at 09:20 in Kolkata are 03:50 UTC; persona answers
-- Tuesday 09:00 Kolkata time, 03:30 UTC.
SELECT persona_identify('st-ist', '{"timezone": "Asia/Kolkata"}') > 0 AS identified;
SELECT pg_temp.plant('st-ist', 33, 6, 'Asia/Kolkata') AS planted;
SELECT persona_best_send_time('st-ist', pg_temp.week() + interval '2 days') - pg_temp.week() AS kolkata_in_utc;
-- New York: the local hour holds across daylight saving time.
SELECT persona_identify('st-ny', '{"timezone": "America/New_York"}') > 0 AS identified;
SELECT pg_temp.plant('st-ny', 10, 8, 'America/New_York') AS planted;
SELECT pg_temp.how(persona_best_send_time('st-ny', pg_temp.week() + interval '3 days'), 'America/New_York') AS ny_local_hour,
       pg_temp.how(persona_best_send_time('st-ny', pg_temp.week() + interval '3 days' + interval '20 weeks'),
                   'America/New_York') AS twenty_weeks_later;
-- A timezone PostgreSQL does not know counts as UTC: the same events in
-- UTC hours.
SELECT persona_identify('st-mars', '{"timezone": "Mars/Olympus_Mons"}') > 0 AS identified;
SELECT pg_temp.plant('st-mars', 50, 6) AS planted;
SELECT pg_temp.how(persona_best_send_time('st-mars', pg_temp.week())) AS bad_zone_utc_hour;
SELECT persona_identify('st-mars', '{"timezone": 42}') > 0 AS identified;
SELECT pg_temp.how(persona_best_send_time('st-mars', pg_temp.week())) AS number_zone_utc_hour;

-- Clicks on messages are engagement too; with a channel, that channel's
-- clicks weigh 3. st-clicker: 3 events on Thursday 15h, 2 email clicks on
-- Saturday 11h.
SELECT persona_create_action('st_push', 'push', '{"title": "hi"}'),
       persona_create_action('st_email', 'email', '{"subject": "hi"}'),
       persona_create_action('st_sms', 'sms', '{"text": "hi"}');
SELECT pg_temp.plant('st-clicker', 3 * 24 + 15, 3) AS planted;
SELECT count(pg_temp.deliver('st-clicker', 'st_email', true)) AS clicked FROM generate_series(1, 2);
SET persona.maintenance = on;
UPDATE persona.message_feedback AS f SET at = pg_temp.week() - interval '2 weeks' + interval '5 days 11:10'
 WHERE f.profile_id = persona.resolve('st-clicker');
RESET persona.maintenance;
SELECT pg_temp.how(persona_best_send_time('st-clicker', pg_temp.week())) AS all_engagement,
       pg_temp.how(persona_best_send_time('st-clicker', pg_temp.week(), 'email')) AS email_clicks_weigh_more,
       pg_temp.how(persona_best_send_time('st-clicker', pg_temp.week(), 'push')) AS push;

-- Within a horizon (a campaign's '24 hours'): the best hour among those
-- starting before after + within. From Thursday 00:00, email's best hour
-- (Saturday 11h) is too far: Thursday 15h; within 30 minutes: "after".
SELECT persona.best_send_at(persona.resolve('st-clicker'), pg_temp.week() + interval '3 days', 'email', '24 hours')
       - pg_temp.week() AS within_a_day,
       persona.best_send_at(persona.resolve('st-clicker'), pg_temp.week() + interval '3 days', 'email')
       - pg_temp.week() AS within_the_week,
       persona.best_send_at(persona.resolve('st-clicker'), pg_temp.week() + interval '3 days 00:10', 'email', '30 minutes')
       - pg_temp.week() AS within_half_an_hour,
       persona.best_send_at(persona.resolve('st-clicker'), pg_temp.week() + interval '3 days', 'email', '1 year')
       - pg_temp.week() AS within_a_year;
SELECT persona.best_send_at(1, now(), NULL, '0 seconds');
SELECT persona.best_send_at(1, now(), NULL, '-1 day');

-- Below 5 engagements in 180 days, and for an unknown id (no profile is
-- made), the population's best hour, in UTC for the unknown id.
SELECT pg_temp.plant('st-few', 100, 4) AS planted;
SELECT pg_temp.plant('st-old', 100, 6) AS planted;
SET persona.maintenance = on;
UPDATE persona.events AS e SET occurred_at = occurred_at - interval '200 days'
 WHERE e.profile_id = persona.resolve('st-old');
RESET persona.maintenance;
-- (The population is a sample of the profiles of this database, so the
-- expected hour is the one persona gives nobody in particular.)
SELECT persona.refresh_engagement() ? 'best_hour_of_week' AS refreshed;
SELECT pg_temp.how(persona.best_send_at(NULL, pg_temp.week())) AS population_hour \gset
SELECT pg_temp.how(persona_best_send_time('st-few', pg_temp.week())) = :population_hour AS few_gets_population,
       pg_temp.how(persona_best_send_time('st-old', pg_temp.week())) = :population_hour AS old_gets_population,
       pg_temp.how(persona_best_send_time('st-nobody', pg_temp.week())) = :population_hour AS unknown_gets_population,
       persona.resolve('st-nobody') IS NULL AS no_profile_made,
       :population_hour <> 100 AS not_their_own_hour;
SELECT pg_temp.how(persona.best_send_at(-1, pg_temp.week())) = :population_hour AS missing_profile;

-- A merge brings the absorbed profile's events; forget takes them away.
SELECT count(persona_track(NULL, 'open', '{}', pg_temp.week() - k * interval '1 week' + interval '4 days 07:20',
                           '{}', 'st-anon')) AS planted_anonymous
  FROM generate_series(1, 6) AS k;
SELECT persona_alias('st-few', 'st-anon') > 0 AS merged;
SELECT pg_temp.how(persona_best_send_time('st-few', pg_temp.week())) AS after_merge;
SELECT persona_forget('st-few') > 0 AS forgotten;
SELECT pg_temp.how(persona_best_send_time('st-few', pg_temp.week())) = :population_hour AS forgotten_gets_population;

-- Bad input.
SELECT persona_best_send_time(NULL);
SELECT persona_best_send_time('');
SELECT persona_best_send_time('st-tue', NULL);
SELECT persona_best_send_time('st-tue', now(), 'Email');
SELECT persona.best_send_at(1, NULL);
SELECT persona_best_send_time('st-tue', 'infinity') AS infinite_after;

-- ---------------------------------------------------------------------
-- Best channel
-- ---------------------------------------------------------------------

-- st-mailer clicks email (6 of 8), never push (0 of 8): email. A push
-- lover the other way round, who ignores sms too (without that, sms would
-- be judged by the population's prior alone, which the other tests'
-- people make: it may beat 6 of 8): push.
SELECT count(pg_temp.deliver('st-mailer', 'st_email', k % 4 <> 0)) + count(pg_temp.deliver('st-mailer', 'st_push', false))
       AS delivered FROM generate_series(1, 8) AS k;
SELECT count(pg_temp.deliver('st-pusher', 'st_push', k % 4 <> 0)) + count(pg_temp.deliver('st-pusher', 'st_email', false))
       + count(pg_temp.deliver('st-pusher', 'st_sms', false)) AS delivered FROM generate_series(1, 8) AS k;
SELECT persona.refresh_engagement() ? 'channels' AS refreshed;
SELECT persona_best_channel('st-mailer') AS mailer, persona_best_channel('st-pusher') AS pusher,
       persona_best_channel('st-mailer', '{push,sms}') AS mailer_without_email,
       persona_best_channel('st-mailer', '{push}') AS only_push,
       persona_best_channel('st-mailer', '{}') AS no_candidates;
-- Consent: a withdrawn channel is never chosen; an opt-in channel only
-- with a grant.
SELECT persona_set_consent('st-mailer', 'email', false);
SELECT persona_best_channel('st-mailer', '{email,push}') AS email_withdrawn,
       persona_best_channel('st-mailer', '{email}') AS nothing_consented;
SET persona.opt_in_channels = 'push,sms';
SELECT persona_best_channel('st-mailer', '{email,push,sms}') AS nothing_without_grants;
SELECT persona_set_consent('st-mailer', 'sms', true);
SELECT persona_best_channel('st-mailer', '{email,push,sms}') AS granted_sms;
RESET persona.opt_in_channels;
-- With no data of their own, people get the population's best channel
-- among the candidates (one with no data at all: the overall rate).
SELECT persona.best_channel_of(NULL, '{push,email}') AS population_best \gset
SELECT persona_best_channel('st-tue', '{push,email}') = :'population_best' AS no_own_data,
       persona_best_channel('st-nobody-2', '{push,email}') = :'population_best' AS unknown,
       persona.resolve('st-nobody-2') IS NULL AS no_profile_made;
-- Little data is not trusted: one click out of one email does not beat
-- eight pushes clicked 7 times.
SELECT count(pg_temp.deliver('st-new', 'st_push', k % 8 <> 0)) AS delivered FROM generate_series(1, 8) AS k;
SELECT pg_temp.deliver('st-new', 'st_email', true) > 0 AS delivered;
SELECT persona_best_channel('st-new', '{push,email}') AS one_lucky_email;
-- Campaign messages held in chunks (no row in persona.messages) count as
-- delivered once claimed or sent: st-camp clicked 2 pushes of 2 and 1 email
-- of 2 (push), then got ten push campaigns without clicking (email).
SELECT persona_identify('st-camp', '{"cohort": "st-camp"}') > 0 AS identified;
SELECT persona_create_segment('st_camp', $$traits->>'cohort' = 'st-camp'$$);
SELECT count(pg_temp.deliver('st-camp', 'st_push', true)) + count(pg_temp.deliver('st-camp', 'st_email', k = 1))
       AS delivered FROM generate_series(1, 2) AS k;
SELECT persona.refresh_engagement() ? 'channels' AS refreshed;
SELECT persona_best_channel('st-camp', '{push,email}') AS before_campaigns;
SELECT sum(persona_send_campaign('st_camp_' || k, 'st_push', 'st_camp')) AS campaign_recipients
  FROM generate_series(1, 10) AS k;
-- Queued: not delivered yet.
SELECT persona_best_channel('st-camp', '{push,email}') AS campaigns_queued;
SELECT cardinality(x.ids) AS claimed_and_acked
  FROM (SELECT ARRAY(SELECT c.message_id FROM persona_claim('push', 1000) AS c ORDER BY 1) AS ids) AS x,
       LATERAL (SELECT persona_ack(x.ids)) AS a;
SELECT count(*) AS rows_of_campaign_messages FROM persona.messages AS m
 WHERE m.profile_id = persona.resolve('st-camp') AND m.source LIKE 'campaign:%';
SELECT persona_best_channel('st-camp', '{push,email}') AS after_campaigns;
SELECT bool_and(persona.campaign_reached(c.campaign_id, persona.resolve('st-camp'))) AS reached,
       bool_or(persona.campaign_reached(c.campaign_id, persona.resolve('st-mailer'))) AS others_not
  FROM persona.campaigns AS c WHERE c.name LIKE 'st\_camp\_%';
DELETE FROM persona.campaign_chunks AS k USING persona.campaigns AS c
 WHERE k.campaign_id = c.campaign_id AND c.name LIKE 'st\_camp\_%';
DELETE FROM persona.campaigns AS c WHERE c.name LIKE 'st\_camp\_%';
SELECT persona_drop_segment('st_camp');


-- Bad input.
SELECT persona_best_channel(NULL);
SELECT persona_best_channel('st-mailer', '{Email}');
SELECT persona_best_channel('st-mailer', '{best}');
SELECT persona_best_channel('st-mailer', '{push,NULL}');
SELECT persona_best_channel('st-mailer', '{{push},{email}}');

-- ---------------------------------------------------------------------
-- The channel "best": chosen per person when the message is queued
-- ---------------------------------------------------------------------
SELECT persona_create_action('st_best', 'best', '{"title": "{{first_name}}"}');
SELECT persona_create_trigger('st_best_on_signup', 'st_signup', 'st_best');
SELECT persona_set_consent('st-mailer', 'email', true);
SELECT persona_track(id, 'st_signup') > 0 AS tracked FROM unnest('{st-mailer,st-pusher}'::text[]) AS id;
SELECT i.id, m.channel, m.action FROM persona.messages AS m JOIN persona.identities AS i USING (profile_id)
 WHERE m.action = 'st_best' ORDER BY i.id;
-- Nobody consented: suppressed for consent, counted.
SET persona.opt_in_channels = 'push,email,sms,web';
SELECT persona_track('st-closed', 'st_signup') > 0 AS tracked;
RESET persona.opt_in_channels;
SELECT count(*) AS queued FROM persona.messages AS m WHERE m.profile_id = persona.resolve('st-closed');
SELECT reason, messages FROM persona.suppressions WHERE source = 'trigger:st_best_on_signup';
-- persona_decide: an action on "best" comes on the person's best channel,
-- and only for that channel when one is asked for.
SELECT action, channel FROM persona_decide('st-mailer', n => 10) WHERE action LIKE 'st\_%' ORDER BY action;
SELECT action, channel FROM persona_decide('st-pusher', channel => 'push', n => 10) ORDER BY action;
SELECT action, channel FROM persona_decide('st-mailer', channel => 'push', n => 10) ORDER BY action;
SELECT d.channel FROM persona.decisions AS d WHERE d.action = 'st_best' ORDER BY d.decision_id;

-- ---------------------------------------------------------------------
-- Privileges: the decider role of docs/roles.md may ask, ingest may not
-- ---------------------------------------------------------------------
CREATE ROLE st_decider NOLOGIN;
CREATE ROLE st_ingest NOLOGIN;
GRANT USAGE ON SCHEMA persona TO st_decider, st_ingest;
GRANT EXECUTE ON FUNCTION persona_best_send_time(text, timestamptz, text),
                          persona_best_channel(text, text[]) TO st_decider;
SELECT pg_temp.week() AS week \gset
SET ROLE st_decider;
SELECT persona_best_send_time('st-tue', :'week'::timestamptz + interval '2 days 10:30') - :'week'::timestamptz AS as_decider,
       persona_best_channel('st-mailer') AS channel_as_decider;
SELECT persona.best_send_at(1, now());
RESET ROLE;
SET ROLE st_ingest;
SELECT persona_best_send_time('st-tue');
SELECT persona_best_channel('st-tue');
SELECT persona.refresh_engagement();
RESET ROLE;
REVOKE ALL ON FUNCTION persona_best_send_time(text, timestamptz, text),
                       persona_best_channel(text, text[]) FROM st_decider;
REVOKE USAGE ON SCHEMA persona FROM st_decider, st_ingest;
DROP ROLE st_decider;
DROP ROLE st_ingest;

-- Leave no actions behind for the suites that follow.
SELECT persona_drop_trigger('st_best_on_signup');
SELECT persona_drop_action(a) FROM unnest('{st_best,st_push,st_email,st_sms}'::text[]) AS a;

-- ---------------------------------------------------------------------
-- Activity: people whose events come mostly through the app click pushes,
-- people on the web click emails. Nothing maps "app" to push: the
-- population's clicks say it. Newcomers without messages get the channel
-- of their activity's group (candidates ordered so that a tie would go
-- the other way); an unknown id gets the population's. In a database of
-- its own, so that the population's sample holds every profile.
-- ---------------------------------------------------------------------
SELECT current_database() AS regress_db \gset
SET client_min_messages = warning;
DROP DATABASE IF EXISTS persona_sendtime_activity;
CREATE DATABASE persona_sendtime_activity;
\c persona_sendtime_activity
SET client_min_messages = warning;
CREATE EXTENSION persona;
RESET client_min_messages;
SELECT persona_create_action('sa_' || c, c, '{"title": "hi"}') FROM unnest('{push,email}'::text[]) AS c;
SELECT count(*) AS events FROM generate_series(1, 10) AS g, generate_series(1, 4) AS k,
       LATERAL (SELECT persona_track('sa-app-' || g, 'session', '{}', now() - k * interval '1 day',
                                     '{"channel": "app"}')
                UNION ALL
                SELECT persona_track('sa-web-' || g, 'visit', '{}', now() - k * interval '1 day',
                                     '{"channel": "web"}')) AS t;
-- Three pushes and three emails each; app people click two pushes, web
-- people two emails.
CREATE TEMP TABLE sa_sent AS
SELECT persona.enqueue_message(persona.resolve(p.u), 'sa_' || c.c, 'test') AS message_id,
       (p.u LIKE 'sa-app-%') = (c.c = 'push') AND k > 1 AS clicked
  FROM (SELECT 'sa-' || s || '-' || g AS u FROM unnest('{app,web}'::text[]) AS s, generate_series(1, 10) AS g) AS p,
       unnest('{push,email}'::text[]) AS c (c), generate_series(1, 3) AS k;
SELECT sum(cardinality(x.ids)) AS claimed_and_acked
  FROM unnest('{push,email}'::text[]) AS c (c),
       LATERAL (SELECT ARRAY(SELECT m.message_id FROM persona_claim(c.c, 1000) AS m ORDER BY 1) AS ids) AS x,
       LATERAL (SELECT persona_ack(x.ids)) AS a;
SELECT count(persona_message_feedback(s.message_id, 'click')) AS clicks FROM sa_sent AS s WHERE s.clicked;
SELECT persona_track(u, 'session', '{}', now() - interval '1 hour', jsonb_build_object('channel', c)) > 0 AS tracked
  FROM (VALUES ('sa-app-new', 'app'), ('sa-app-new', 'app'), ('sa-app-new', 'web'), ('sa-web-new', 'web')) AS v (u, c);
SELECT jsonb_path_query_array(persona.refresh_engagement(), '$.activity[*].channel') AS activity_channels;
SELECT persona_best_channel('sa-app-new', '{email,push}') AS app_user,
       persona_best_channel('sa-web-new', '{push,email}') AS web_user,
       persona_best_channel('sa-nobody', '{push,email}') = persona.best_channel_of(NULL, '{push,email}') AS unknown_gets_population;
\c :regress_db
DROP DATABASE persona_sendtime_activity WITH (FORCE);
