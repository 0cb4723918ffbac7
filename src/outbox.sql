-- Delivery: consent (persona_set_consent), the outbox (persona.messages),
-- the worker protocol (persona_claim in src/outbox.c, persona_ack,
-- persona_fail) and feedback on messages. docs/delivery.md describes them.

-- ---------------------------------------------------------------------
-- Consent
-- ---------------------------------------------------------------------

CREATE FUNCTION persona.check_channel(channel text) RETURNS text
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_check_channel';
COMMENT ON FUNCTION persona.check_channel(text) IS
    'rejects an invalid channel name (22023); returns it';

-- The rule (src/outbox.c, PersonaConsented): withdrawn -> no; granted ->
-- yes; otherwise yes unless persona.opt_in_channels names the channel.
CREATE FUNCTION persona.consented(consent jsonb, channel text) RETURNS boolean
    LANGUAGE C STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'persona_consented';
COMMENT ON FUNCTION persona.consented(jsonb, text) IS
    'whether a consent object (channel -> granted) lets the channel reach the person, persona.opt_in_channels considered';

-- Consent of a merged profile: every channel of either, a withdrawal winning.
CREATE FUNCTION persona.merge_consent(a jsonb, b jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
    RETURN (SELECT coalesce(jsonb_object_agg(c.channel, c.granted), '{}'::jsonb)
              FROM (SELECT e.key AS channel, bool_and(e.value::boolean) AS granted
                      FROM (SELECT * FROM jsonb_each(a) UNION ALL SELECT * FROM jsonb_each(b)) AS e
                     GROUP BY e.key) AS c);
COMMENT ON FUNCTION persona.merge_consent(jsonb, jsonb) IS
    'the consent of two merged profiles: a withdrawal (false) wins over a grant';

-- Serializes the decisions and messages of one profile (caps hold under
-- concurrency); the same lock persona_decide takes.
CREATE FUNCTION persona.lock_profile_sends(profile_id bigint) RETURNS void
    LANGUAGE C VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'persona_lock_profile_sends';
COMMENT ON FUNCTION persona.lock_profile_sends(bigint) IS
    'takes the transaction-level advisory lock that serializes a profile''s decisions and messages';

-- ---------------------------------------------------------------------
-- The outbox
-- ---------------------------------------------------------------------

-- CACHE 1: the announcer's horizon (src/announcer.c) needs the last value
-- to bound every id handed out.
CREATE SEQUENCE persona.message_id_seq;
COMMENT ON SEQUENCE persona.message_id_seq IS 'allocates message ids';

-- One row per message. Keyed so that it can be distributed by profile_id:
-- the primary key carries it, and every lookup by message_id alone (ack,
-- fail) reads the primary key's leading column. ready_at is when the row
-- became claimable (due_at, or the retry time after a failure), NULL once
-- it is final: the partial index on it is the queue, and holds only the
-- messages that are still to go. A claim leaves ready_at as it is and
-- writes the lease's end in lease_until, which no index holds, so that
-- the claim's update is HOT (no index entry; the fillfactor of 40 leaves
-- the page room for the claimed versions of all its rows, each bigger by
-- its rendered content: 50 left 16% of them without); a claimer skips a
-- row whose lease holds. Only the final update (ack, dead, cancelled) leaves the queue's
-- index (docs/delivery.md, "Costs").
CREATE TABLE persona.messages (
    message_id  bigint      NOT NULL DEFAULT nextval('persona.message_id_seq'),
    profile_id  bigint      NOT NULL,
    channel     text        NOT NULL,
    action      text        NOT NULL,
    source      text        NOT NULL,
    status      text        NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'claimed', 'sent', 'failed', 'dead', 'cancelled')),
    attempts    int         NOT NULL DEFAULT 0,
    due_at      timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at     timestamptz,
    last_error  text,
    content     jsonb,
    action_id   int         NOT NULL,
    ready_at    timestamptz,
    event       jsonb,
    lease_until timestamptz,
    PRIMARY KEY (message_id, profile_id),
    CHECK ((ready_at IS NULL) = (status IN ('sent', 'dead', 'cancelled'))),
    CONSTRAINT messages_lease_check CHECK ((lease_until IS NULL) = (status <> 'claimed'))
) WITH (fillfactor = 40);
ALTER SEQUENCE persona.message_id_seq OWNED BY persona.messages.message_id;
CREATE INDEX messages_ready_idx ON persona.messages (channel, ready_at)
    WHERE ready_at IS NOT NULL;
-- Caps and cooldowns (persona.recent_sends), merge, forget and the
-- cancellation of a withdrawn channel read a profile's messages.
CREATE INDEX messages_profile_idx ON persona.messages (profile_id, action_id, due_at);
COMMENT ON TABLE persona.messages IS
    'the outbox: one row per message, the durable record of what persona sends (claim, ack, fail)';
COMMENT ON COLUMN persona.messages.source IS 'what queued it: trigger:NAME, campaign:NAME';
COMMENT ON COLUMN persona.messages.status IS
    'queued, claimed (leased to a worker), sent (acked), failed (waiting to retry), dead (out of attempts), cancelled';
COMMENT ON COLUMN persona.messages.attempts IS 'claims so far';
COMMENT ON COLUMN persona.messages.due_at IS 'when it is meant to go; it counts toward caps and cooldowns at this time';
COMMENT ON COLUMN persona.messages.content IS 'the action''s content as rendered at the last claim';
COMMENT ON COLUMN persona.messages.ready_at IS
    'when it became claimable (due, or the retry after a failure); NULL once sent, dead or cancelled';
COMMENT ON COLUMN persona.messages.lease_until IS
    'while claimed: the end of the lease, after which a worker may claim it again; NULL otherwise';
COMMENT ON COLUMN persona.messages.event IS
    'the triggering event of a trigger''s message: its condition is checked again against it at claim, and its content renders with it (event, and its context as context)';

CREATE TABLE persona.message_feedback (
    profile_id  bigint      NOT NULL,
    message_id  bigint      NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('impression', 'click', 'conversion', 'dismiss', 'ignore')),
    value       float8,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, message_id, outcome)
);
COMMENT ON TABLE persona.message_feedback IS
    'outcomes of messages (persona_message_feedback), at most one per message and outcome';

-- Messages not queued or cancelled, by source and reason, for operators.
CREATE TABLE persona.suppressions (
    source   text        NOT NULL,
    reason   text        NOT NULL CHECK (reason IN ('consent', 'cap', 'cooldown', 'holdout', 'action_dropped',
                                                    'condition')),
    messages bigint      NOT NULL,
    last_at  timestamptz NOT NULL,
    PRIMARY KEY (source, reason)
);
COMMENT ON TABLE persona.suppressions IS
    'messages suppressed before queueing or cancelled before sending, counted by source and reason';

SELECT pg_catalog.pg_extension_config_dump('persona.messages', '');
SELECT pg_catalog.pg_extension_config_dump('persona.message_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.message_feedback', '');
SELECT pg_catalog.pg_extension_config_dump('persona.suppressions', '');

-- Counts suppressed messages: sources[i] for reasons[i].
CREATE FUNCTION persona.count_suppressions(sources text[], reasons text[]) RETURNS void
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
    BEGIN ATOMIC
        INSERT INTO persona.suppressions AS s (source, reason, messages, last_at)
        SELECT u.source, u.reason, count(*), clock_timestamp()
          FROM ROWS FROM (unnest(count_suppressions.sources), unnest(count_suppressions.reasons))
               AS u(source, reason)
         GROUP BY u.source, u.reason
        ON CONFLICT (source, reason) DO UPDATE
           SET messages = s.messages + excluded.messages, last_at = excluded.last_at;
    END;
COMMENT ON FUNCTION persona.count_suppressions(text[], text[]) IS
    'adds suppressed messages to persona.suppressions, by source and reason';

-- What counts toward an action's cap_per_day and cooldown for a profile:
-- its decisions at decided_at, its messages at due_at unless cancelled
-- or dead (a message queued for later counts already), and its campaign
-- messages once claimed (src/campaigns.sql). last_day counts the
-- 24 hours before now(); latest is the latest of them within span.
-- Not SECURITY DEFINER and without SET, so that persona_decide's query
-- inlines it; every name is qualified.
CREATE FUNCTION persona.recent_sends(profile_id bigint, span interval, actions int[])
    RETURNS TABLE (action_id int, last_day bigint, latest timestamptz)
    LANGUAGE sql STABLE
    AS $$
    SELECT x.action_id,
           pg_catalog.count(*) FILTER (WHERE x.at OPERATOR(pg_catalog.>)
                                       (pg_catalog.now() OPERATOR(pg_catalog.-) interval '24 hours')),
           pg_catalog.max(x.at)
      FROM (SELECT d.action_id, d.decided_at AS at
              FROM persona.decisions AS d
             WHERE d.profile_id OPERATOR(pg_catalog.=) $1
               AND d.decided_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)
               AND d.action_id OPERATOR(pg_catalog.=) ANY ($3)
            UNION ALL
            SELECT m.action_id, m.due_at
              FROM persona.messages AS m
             WHERE m.profile_id OPERATOR(pg_catalog.=) $1
               AND m.action_id OPERATOR(pg_catalog.=) ANY ($3)
               AND m.due_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)
               AND m.status OPERATOR(pg_catalog.<>) ALL ('{cancelled,dead}'::pg_catalog.text[])
            UNION ALL
            SELECT c.action_id, c.due_at
              FROM persona.campaigns AS c
             WHERE c.action_id OPERATOR(pg_catalog.=) ANY ($3)
               AND c.due_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)
               AND persona.campaign_reached(c.campaign_id, $1)) AS x
     GROUP BY x.action_id
$$;
COMMENT ON FUNCTION persona.recent_sends(bigint, interval, int[]) IS
    'per action: decisions and live messages (campaigns'' included) of a profile in the last 24 hours, and the latest within span (caps and cooldowns)';

-- The outbox's entry: queues one message of an action for a profile, due
-- at due_at (default: now), unless consent, the action's cap or cooldown,
-- persona.channel_cap_per_day or a holdout suppresses it (counted in
-- persona.suppressions; returns NULL). An action on the channel "best"
-- takes the person's best consented channel (src/sendtime.c). event: a
-- trigger's triggering event, kept for the check and the rendering at
-- claim. Triggers queue their firings as one set through the same C code
-- (src/enqueue.c, PersonaEnqueue); the announcer (src/announcer.c), not
-- the writer, notifies persona_outbox once it commits.
CREATE FUNCTION persona.enqueue_message(profile_id bigint, action text, source text,
                                        due_at timestamptz DEFAULT NULL, event jsonb DEFAULT NULL)
    RETURNS bigint
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_enqueue_message';
COMMENT ON FUNCTION persona.enqueue_message(bigint, text, text, timestamptz, jsonb) IS
    'queues a message of an action for a profile unless consent, cap, cooldown or a holdout suppresses it (counted); returns the message_id or NULL';

-- ---------------------------------------------------------------------
-- The API
-- ---------------------------------------------------------------------

CREATE FUNCTION @extschema@.persona_set_consent(user_id text, channel text, granted boolean)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    SET persona.maintenance = on
    AS $$
#variable_conflict use_column
DECLARE
    v_id      text := persona.check_id($1, 'user_id');
    v_channel text;
    v_pid     bigint;
    v_sources text[];
BEGIN
    IF $2 IS NULL OR $3 IS NULL THEN
        RAISE EXCEPTION 'channel and granted must not be null' USING ERRCODE = '22004';
    END IF;
    v_channel := persona.check_channel($2);
    -- An unknown id gets a new anonymous profile (as persona_decide does), so
    -- that a choice made before the first event is kept. A merge that
    -- absorbs the profile meanwhile: resolve again.
    FOR attempt IN 1..20 LOOP
        v_pid := persona.ensure_profile(v_id, 'anonymous');
        UPDATE persona.profiles AS p
           SET consent = p.consent || jsonb_build_object(v_channel, $3),
               updated_at = now()
         WHERE p.profile_id = v_pid;
        EXIT WHEN FOUND;
        v_pid := NULL;
    END LOOP;
    IF v_pid IS NULL THEN
        RAISE EXCEPTION 'could not serialize access due to concurrent merges'
            USING ERRCODE = '40001', HINT = 'Retry the transaction.';
    END IF;
    IF NOT $3 THEN
        -- Unclaimed messages of the channel are cancelled; claimed ones
        -- finish (their worker holds them).
        WITH c AS (
            UPDATE persona.messages AS m
               SET status = 'cancelled', ready_at = NULL, last_error = 'consent withdrawn'
             WHERE m.profile_id = v_pid AND m.channel = v_channel
               AND m.status IN ('queued', 'failed')
            RETURNING m.source)
        SELECT array_agg(c.source) INTO v_sources FROM c;
        IF v_sources IS NOT NULL THEN
            PERFORM persona.count_suppressions(v_sources, array_fill('consent'::text, ARRAY[cardinality(v_sources)]));
        END IF;
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_set_consent(text, text, boolean) IS
    'records a person''s consent to a channel; withdrawing cancels the channel''s unclaimed messages to them';

CREATE FUNCTION @extschema@.persona_claim(channel text, n int DEFAULT 100,
                                         lease interval DEFAULT '30 seconds')
    RETURNS TABLE (message_id bigint, profile_id bigint, user_id text, channel text,
                   action text, content jsonb, attempt int, source text)
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_claim';
COMMENT ON FUNCTION @extschema@.persona_claim(text, int, interval) IS
    'leases up to n due messages of a channel to the caller, content rendered now; call it in its own transaction';

-- In C (src/outbox.c): each claimed message of the batch updated by its
-- primary key in id order, campaign messages in their chunks
-- (src/campaigns.c); all or none.
CREATE FUNCTION @extschema@.persona_ack(message_ids bigint[])
    RETURNS bigint
    LANGUAGE C VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'persona_ack';
COMMENT ON FUNCTION @extschema@.persona_ack(bigint[]) IS
    'marks claimed messages sent (all or none); returns how many';

-- The wait before retry number n + 1 after n failed tries: 10 seconds
-- doubled per try, at most an hour, with "equal jitter": half of it fixed,
-- half uniformly random, so that a burst of failures spreads out.
CREATE FUNCTION persona.retry_delay(attempts int) RETURNS interval
    LANGUAGE sql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
    RETURN make_interval(secs => least(3600, 10 * power(2, greatest(attempts, 1) - 1))
                                 * (0.5 + 0.5 * random()));
COMMENT ON FUNCTION persona.retry_delay(int) IS
    'the backoff before the next try: 10 s doubled per failed try, capped at 1 h, between half and all of it at random';

CREATE FUNCTION @extschema@.persona_fail(message_id bigint, error text, retry boolean DEFAULT true)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_id  bigint := $1;
    m     record;
BEGIN
    IF v_id IS NULL OR $2 IS NULL OR $3 IS NULL THEN
        RAISE EXCEPTION 'message_id, error and retry must not be null' USING ERRCODE = '22004';
    END IF;
    PERFORM persona.campaign_materialize(v_id, false);   -- a campaign message gets its row
    SELECT x.status, x.attempts INTO m FROM persona.messages AS x
     WHERE x.message_id = v_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'message % does not exist', v_id USING ERRCODE = '42704';
    END IF;
    IF m.status <> 'claimed' THEN
        RAISE EXCEPTION 'message % is not claimed', v_id USING ERRCODE = '55000',
            DETAIL = format('Its status is %s.', m.status),
            HINT = 'Only a claimed message can be acked or failed: claim it with persona_claim.';
    END IF;
    IF NOT $3 OR m.attempts >= current_setting('persona.max_attempts')::int THEN
        UPDATE persona.messages AS x
           SET status = 'dead', ready_at = NULL, lease_until = NULL, last_error = left($2, 1000)
         WHERE x.message_id = v_id;
    ELSE
        UPDATE persona.messages AS x
           SET status = 'failed', ready_at = clock_timestamp() + persona.retry_delay(m.attempts),
               lease_until = NULL, last_error = left($2, 1000)
         WHERE x.message_id = v_id;
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.persona_fail(bigint, text, boolean) IS
    'records a failed send: retried after a backoff, or dead after persona.max_attempts tries or when retry is false';

CREATE FUNCTION @extschema@.persona_message_feedback(message_id bigint, outcome text,
                                                    value float8 DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_id      bigint := $1;
    v_outcome text;
    v_value   float8 := $3;
    m         record;
BEGIN
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'message_id must not be null' USING ERRCODE = '22004';
    END IF;
    v_outcome := persona.check_outcome($2, v_value);
    PERFORM persona.campaign_materialize(v_id, true);    -- a campaign message gets its row
    SELECT x.profile_id, x.action_id, x.status INTO m FROM persona.messages AS x
     WHERE x.message_id = v_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'message % does not exist', v_id USING ERRCODE = '42704';
    END IF;
    IF m.status NOT IN ('claimed', 'sent') THEN
        RAISE EXCEPTION 'message % was not sent', v_id USING ERRCODE = '55000',
            DETAIL = format('Its status is %s.', m.status);
    END IF;
    -- The lock order of persona_feedback: the action's statistics, then the item.
    PERFORM 1 FROM persona.action_stats AS s WHERE s.action_id = m.action_id FOR UPDATE;
    PERFORM 1 FROM persona.messages AS x
     WHERE x.message_id = v_id AND x.profile_id = m.profile_id FOR KEY SHARE;
    INSERT INTO persona.message_feedback (profile_id, message_id, outcome, value)
    VALUES (m.profile_id, v_id, v_outcome, v_value)
    ON CONFLICT (profile_id, message_id, outcome) DO NOTHING;
    IF NOT FOUND THEN
        RETURN;                     -- already recorded: idempotent
    END IF;
    PERFORM persona.learn(m.action_id,
                          ARRAY(SELECT f.outcome FROM persona.message_feedback AS f
                                 WHERE f.profile_id = m.profile_id AND f.message_id = v_id
                                   AND f.outcome <> v_outcome),
                          v_outcome, v_value, NULL);
END
$$;
COMMENT ON FUNCTION @extschema@.persona_message_feedback(bigint, text, float8) IS
    'records an outcome of a message (impression, click, conversion, dismiss, ignore); idempotent; teaches the action''s statistics as persona_feedback does';
