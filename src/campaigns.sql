-- Campaigns: persona_send_campaign, persona_cancel_campaign,
-- persona_campaign_report, and the per-channel frequency cap
-- (persona.channel_cap_per_day). A campaign is one row of
-- persona.campaigns and a snapshot of its recipients in chunks
-- (persona.campaign_chunks), claimed by persona_claim (src/campaigns.c).
-- docs/campaigns.md describes the model and its costs.

-- Campaign message ids live above 2^48 (281,474,976,710,656): the sequence
-- persona.message_id_seq, which numbers every other message, would need
-- 77,000 years at 10 million messages a day to reach it. Recipient i of a
-- campaign has message id id_base + i; blocks are handed out in order by
-- persona_send_campaign under a table lock.
CREATE SEQUENCE persona.campaign_id_seq;
COMMENT ON SEQUENCE persona.campaign_id_seq IS 'numbers campaigns';

CREATE TABLE persona.campaigns (
    campaign_id     int         NOT NULL PRIMARY KEY DEFAULT nextval('persona.campaign_id_seq'),
    name            text        NOT NULL UNIQUE,
    action_id       int         NOT NULL,
    action          text        NOT NULL,
    channel         text        NOT NULL,
    segment         text,
    source          text        NOT NULL,
    id_base         bigint      NOT NULL UNIQUE CHECK (id_base >= 281474976710656),
    recipients      bigint      NOT NULL DEFAULT 0 CHECK (recipients >= 0),
    due_at          timestamptz NOT NULL,
    rate_per_minute int         CHECK (rate_per_minute > 0),
    status          text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'cancelled')),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    cancelled_at    timestamptz,
    -- The throttle: the claims of the last minute (when, how many).
    claimed_at      timestamptz[] NOT NULL DEFAULT '{}',
    claimed_n       int[]       NOT NULL DEFAULT '{}',
    throttled_until timestamptz
);
ALTER SEQUENCE persona.campaign_id_seq OWNED BY persona.campaigns.campaign_id;
COMMENT ON TABLE persona.campaigns IS
    'campaigns (persona_send_campaign): one row each; the recipients are in persona.campaign_chunks';
COMMENT ON COLUMN persona.campaigns.segment IS 'the segment sent to; NULL: every profile';
COMMENT ON COLUMN persona.campaigns.source IS 'campaign:NAME, the source of its messages';
COMMENT ON COLUMN persona.campaigns.id_base IS 'recipient i (from 0) has message id id_base + i';
COMMENT ON COLUMN persona.campaigns.recipients IS 'members of the segment at the call';
COMMENT ON COLUMN persona.campaigns.claimed_at IS 'the throttle: when each claim of the last minute was made';
COMMENT ON COLUMN persona.campaigns.claimed_n IS 'the throttle: how many messages each claim of the last minute took';
COMMENT ON COLUMN persona.campaigns.throttled_until IS 'no claim takes a message of the campaign before this';

-- The recipient snapshot. A chunk is a run of recipients in profile_id
-- order (recipient first_index onwards), claimed whole by one claim (a
-- claim that wants fewer splits it). Campaign data, not rows about one
-- person: docs/campaigns.md says why it is keyed by campaign.
CREATE TABLE persona.campaign_chunks (
    campaign_id      int         NOT NULL,
    first_index      bigint      NOT NULL,
    first_profile_id bigint      NOT NULL,
    channel          text        NOT NULL,
    profile_ids      bigint[]    NOT NULL,
    size             int         NOT NULL,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'claimed', 'done', 'cancelled')),
    states           bytea,
    attempts         int         NOT NULL DEFAULT 0,
    due_at           timestamptz NOT NULL,
    ready_at         timestamptz,
    PRIMARY KEY (campaign_id, first_index),
    CHECK ((ready_at IS NULL) = (status IN ('done', 'cancelled'))),
    CHECK (size > 0),
    CHECK (states IS NULL OR length(states) = size)
);
-- Sorted ids change little from one to the next, but pglz's gain does not
-- pay for its time at send: stored out of line, uncompressed.
ALTER TABLE persona.campaign_chunks ALTER COLUMN profile_ids SET STORAGE EXTERNAL;
CREATE INDEX campaign_chunks_ready_idx ON persona.campaign_chunks (channel, ready_at)
    WHERE ready_at IS NOT NULL;
-- A profile's message in a campaign (caps, best channel): the chunks of one
-- due time partition the recipients in profile_id order, so it is in the
-- chunk of each due time that starts at or before it.
CREATE INDEX campaign_chunks_profile_idx ON persona.campaign_chunks (campaign_id, due_at, first_profile_id);
COMMENT ON TABLE persona.campaign_chunks IS
    'the recipients of each campaign, in chunks claimed by persona_claim; one state byte per recipient once claimed';
COMMENT ON COLUMN persona.campaign_chunks.first_index IS 'the recipient index of profile_ids[1] (message id: id_base + index)';
COMMENT ON COLUMN persona.campaign_chunks.profile_ids IS 'the recipients, ascending';
COMMENT ON COLUMN persona.campaign_chunks.size IS 'cardinality(profile_ids), read without the array';
COMMENT ON COLUMN persona.campaign_chunks.states IS
    'NULL: all queued; else one byte per recipient: q queued, c claimed, s sent, f in persona.messages, x cancelled, d dead, C/K/H suppressed (consent, cap, holdout)';
COMMENT ON COLUMN persona.campaign_chunks.attempts IS 'claims of the chunk so far';
COMMENT ON COLUMN persona.campaign_chunks.due_at IS 'when its messages are meant to go';
COMMENT ON COLUMN persona.campaign_chunks.ready_at IS
    'when a worker may claim it next (due or lease end); NULL once done or cancelled';

SELECT pg_catalog.pg_extension_config_dump('persona.campaigns', '');
SELECT pg_catalog.pg_extension_config_dump('persona.campaign_chunks', '');
SELECT pg_catalog.pg_extension_config_dump('persona.campaign_id_seq', '');

-- Writes the recipient snapshot of a campaign: the members of the segment
-- (every profile when NULL) as of the statement, in chunks. Returns how many.
CREATE FUNCTION persona.campaign_snapshot(campaign_id int, segment text, channel text, due_at timestamptz,
                                          best_time boolean DEFAULT false)
    RETURNS bigint
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'persona_campaign_snapshot';
COMMENT ON FUNCTION persona.campaign_snapshot(int, text, text, timestamptz, boolean) IS
    'writes the chunks of a campaign from the segment''s members, each due at due_at or (best_time) at its best time in the 24 hours after it; returns the number of recipients';

-- Whether a profile was reached by a campaign: a recipient claimed or sent
-- (a recipient with a row in persona.messages counts there).
CREATE FUNCTION persona.campaign_reached(campaign_id int, profile_id bigint) RETURNS boolean
    LANGUAGE C STABLE STRICT
    AS 'MODULE_PATHNAME', 'persona_campaign_reached';
COMMENT ON FUNCTION persona.campaign_reached(int, bigint) IS
    'whether the campaign''s message to the profile was claimed or sent (it then counts toward caps)';

-- Gives a claimed (for feedback: or sent) campaign message its row in
-- persona.messages, so that persona_fail and persona_message_feedback
-- treat it as any message. Nothing for other ids.
CREATE FUNCTION persona.campaign_materialize(message_id bigint, for_feedback boolean) RETURNS void
    LANGUAGE C VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'persona_campaign_materialize';
COMMENT ON FUNCTION persona.campaign_materialize(bigint, boolean) IS
    'writes the persona.messages row of a campaign message on its first failure or feedback';

-- Messages of a channel that count toward persona.channel_cap_per_day for a
-- profile: its messages due in the 24 hours before now (or later), unless
-- cancelled or dead, and the claimed or sent messages of campaigns of the
-- channel due then.
-- (PL/pgSQL: this file comes before src/outbox.sql, whose persona.recent_sends
-- reads persona.campaigns.)
CREATE FUNCTION persona.channel_sends(profile_id bigint, channel text) RETURNS bigint
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RETURN (SELECT count(*)
              FROM persona.messages AS m
             WHERE m.profile_id = $1 AND m.channel = $2
               AND m.due_at > now() - interval '24 hours'
               AND m.status <> ALL ('{cancelled,dead}'::text[]))
         + (SELECT count(*)
              FROM persona.campaigns AS c
             WHERE c.channel = $2 AND c.due_at > now() - interval '24 hours'
               AND persona.campaign_reached(c.campaign_id, $1));
END
$$;
COMMENT ON FUNCTION persona.channel_sends(bigint, text) IS
    'messages of a channel to a profile in the last 24 hours (or due later), campaigns included: what persona.channel_cap_per_day counts';

-- The setting persona.channel_cap_per_day (0: no cap), read in C so that it
-- is defined (the library loaded) in any session.
CREATE FUNCTION persona.channel_cap() RETURNS int
    LANGUAGE C STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_channel_cap';
COMMENT ON FUNCTION persona.channel_cap() IS
    'the setting persona.channel_cap_per_day: messages per person, channel and rolling day; 0: no cap';

-- Whether persona.channel_cap_per_day forbids one more message of the
-- channel to the profile. The caller holds the profile's send lock.
CREATE FUNCTION persona.channel_cap_reached(profile_id bigint, channel text) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    RETURN persona.channel_cap() > 0
       AND persona.channel_sends(profile_id, channel) >= persona.channel_cap();
COMMENT ON FUNCTION persona.channel_cap_reached(bigint, text) IS
    'whether persona.channel_cap_per_day (0: none) is reached for the profile on the channel';

-- ---------------------------------------------------------------------
-- The API
-- ---------------------------------------------------------------------

CREATE FUNCTION @extschema@.persona_send_campaign(name text, action text, segment text DEFAULT NULL,
                                                 send_at text DEFAULT 'now',
                                                 rate_per_minute int DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_name  text := $1;
    v_rate  int  := $5;
    v_due   timestamptz;
    a       persona.actions;
    v_id    int;
    v_base  bigint;
    v_n     bigint;
    v_best  boolean := false;
BEGIN
    IF v_name IS NULL OR $2 IS NULL OR $4 IS NULL THEN
        RAISE EXCEPTION 'name, action and send_at must not be null' USING ERRCODE = '22004';
    END IF;
    IF v_name = '' OR octet_length(v_name) > 200 THEN
        RAISE EXCEPTION 'a campaign name must be 1 to 200 bytes' USING ERRCODE = '22023';
    END IF;
    IF v_rate IS NOT NULL AND v_rate <= 0 THEN
        RAISE EXCEPTION 'rate_per_minute must be positive' USING ERRCODE = '22023',
            DETAIL = format('The rate_per_minute given was %s.', v_rate),
            HINT = 'Pass NULL for no throttle.';
    END IF;
    IF lower(btrim($4)) = 'now' THEN
        v_due := clock_timestamp();
    ELSIF lower(btrim($4)) = 'best_time' THEN
        -- Each recipient at their own best time in [now, now + 24 hours).
        v_due := clock_timestamp();
        v_best := true;
    ELSE
        BEGIN
            v_due := $4::timestamptz;
        EXCEPTION WHEN data_exception THEN
            RAISE EXCEPTION 'invalid send_at "%"', $4 USING ERRCODE = '22007',
                HINT = 'Use ''now'', ''best_time'' or a timestamp such as ''2026-12-24 18:00+05:30''.';
        END;
        IF v_due < now() THEN
            RAISE EXCEPTION 'send_at is in the past' USING ERRCODE = '22023',
                DETAIL = format('The send_at given was %s.', v_due),
                HINT = 'Use ''now'' to send at once.';
        END IF;
    END IF;
    SELECT * INTO a FROM persona.actions AS x WHERE x.name = $2;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action "%" does not exist', $2 USING ERRCODE = '42704';
    END IF;
    IF a.channel = 'best' THEN
        -- Chunks are claimed per channel; a channel per person would need a
        -- snapshot per channel (not done).
        RAISE EXCEPTION 'a campaign cannot send an action on the channel "best"' USING ERRCODE = '0A000',
            HINT = 'Send one campaign per channel, or use a trigger, which chooses the channel per person.';
    END IF;
    IF $3 IS NOT NULL AND NOT EXISTS (SELECT FROM persona.segments AS s WHERE s.name = $3) THEN
        RAISE EXCEPTION 'segment "%" does not exist', $3 USING ERRCODE = '42704';
    END IF;
    -- Serializes sends: the blocks of message ids are handed out in order.
    LOCK TABLE persona.campaigns IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM persona.campaigns AS c WHERE c.name = v_name) THEN
        RAISE EXCEPTION 'campaign "%" already exists', v_name USING ERRCODE = '42710';
    END IF;
    -- An empty campaign keeps one id, so that every block starts elsewhere.
    SELECT coalesce(max(c.id_base + greatest(c.recipients, 1)), 281474976710656) INTO v_base
      FROM persona.campaigns AS c;
    INSERT INTO persona.campaigns (name, action_id, action, channel, segment, source, id_base,
                                   due_at, rate_per_minute)
    VALUES (v_name, a.action_id, a.name, a.channel, $3, 'campaign:' || v_name, v_base, v_due, v_rate)
    RETURNING campaign_id INTO v_id;
    v_n := persona.campaign_snapshot(v_id, $3, a.channel, v_due, v_best);
    UPDATE persona.campaigns AS c SET recipients = v_n WHERE c.campaign_id = v_id;
    IF v_n > 0 THEN
        -- One wake-up per send, not per message: an administrator's call,
        -- not a hot writer (the announcer, src/announcer.c, knows only
        -- persona.messages).
        PERFORM pg_notify('persona_outbox', a.channel);
    END IF;
    RETURN v_n;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_send_campaign(text, text, text, text, int) IS
    'sends an action to the members of a segment (NULL: everyone) as they are now; returns the number of recipients queued';

CREATE FUNCTION @extschema@.persona_cancel_campaign(name text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    c     persona.campaigns;
    v_n   bigint;
    v_m   bigint;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'name must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT * INTO c FROM persona.campaigns AS x WHERE x.name = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'campaign "%" does not exist', $1 USING ERRCODE = '42704';
    END IF;
    IF c.status = 'cancelled' THEN
        RAISE EXCEPTION 'campaign "%" is already cancelled', $1 USING ERRCODE = '55000';
    END IF;
    -- The campaign first: claims stop taking its queued chunks once this
    -- commits (a claim never waits for the campaign row while it holds a
    -- chunk). Then its queued chunks, waiting for a claim that holds one;
    -- twice, so that the rest a claim split off and committed meanwhile is
    -- cancelled too (any later rest is never claimed, and is reported
    -- cancelled).
    UPDATE persona.campaigns AS x SET status = 'cancelled', cancelled_at = clock_timestamp()
     WHERE x.campaign_id = c.campaign_id AND x.status = 'running';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'campaign "%" is already cancelled', $1 USING ERRCODE = '55000';
    END IF;
    v_n := 0;
    FOR pass IN 1..2 LOOP
        WITH k AS (
            UPDATE persona.campaign_chunks AS k
               SET status = 'cancelled', ready_at = NULL
             WHERE k.campaign_id = c.campaign_id AND k.status = 'queued'
            RETURNING k.size)
        SELECT v_n + coalesce(sum(k.size), 0) INTO v_n FROM k;
    END LOOP;
    UPDATE persona.messages AS m
       SET status = 'cancelled', ready_at = NULL, last_error = 'campaign cancelled'
     WHERE m.message_id >= c.id_base AND m.message_id < c.id_base + c.recipients
       AND m.status IN ('queued', 'failed');
    GET DIAGNOSTICS v_m = ROW_COUNT;
    IF v_n + v_m = 0 AND NOT EXISTS (
            SELECT FROM persona.campaign_chunks AS k
             WHERE k.campaign_id = c.campaign_id AND k.status = 'claimed')
       AND NOT EXISTS (
            SELECT FROM persona.messages AS m
             WHERE m.message_id >= c.id_base AND m.message_id < c.id_base + c.recipients
               AND m.status = 'claimed') THEN
        RAISE EXCEPTION 'campaign "%" is finished', $1 USING ERRCODE = '55000',
            DETAIL = 'Every message of it was sent, suppressed or is dead.';
    END IF;
    RETURN v_n + v_m;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_cancel_campaign(text) IS
    'cancels what of a campaign is not yet claimed; returns how many messages';

CREATE FUNCTION @extschema@.persona_campaign_report(name text)
    RETURNS TABLE (status text, messages bigint)
    LANGUAGE C STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_campaign_report';
COMMENT ON FUNCTION @extschema@.persona_campaign_report(text) IS
    'a campaign''s messages by status: queued, claimed, sent, failed, dead, cancelled, suppressed_consent, suppressed_cap, suppressed_holdout';
