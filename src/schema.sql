-- The persona schema: where the data lives. API functions are created in
-- @extschema@ by the fragments that implement them.

CREATE SCHEMA persona;
COMMENT ON SCHEMA persona IS 'persona data: events, profiles, identities';

CREATE SEQUENCE persona.profile_id_seq CACHE 32;
COMMENT ON SEQUENCE persona.profile_id_seq IS 'allocates profile ids';

-- One row per live profile. A profile absorbed by a merge disappears from
-- here and leaves a row in persona.merges.
--
-- Every ingest statement updates each profile it touches once, and a bulk
-- statement updates every row of a page: a fill factor of 50 leaves room for
-- a HOT copy of each, so no index is touched. user_id is unique through
-- persona.identities (an id names one profile, and two known users never
-- merge); it has no index of its own, so updates stay cheap: look a user up
-- through persona.identities or persona_profile().
--
-- Ids are opaque byte strings: "C" collation compares them bytewise, which
-- is both the right semantics and the cheapest index descent.
CREATE TABLE persona.profiles (
    profile_id  bigint      PRIMARY KEY,
    user_id     text        COLLATE "C",
    traits      jsonb       NOT NULL DEFAULT '{}',
    first_seen  timestamptz,
    last_seen   timestamptz,
    event_count bigint      NOT NULL DEFAULT 0,
    computed_state bytea,
    next_change_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    consent     jsonb       NOT NULL DEFAULT '{}'
) WITH (fillfactor = 50);
COMMENT ON TABLE persona.profiles IS 'one row per person: declared traits and event statistics, maintained by persona';
COMMENT ON COLUMN persona.profiles.user_id IS 'the known user id, NULL while the person is anonymous';
COMMENT ON COLUMN persona.profiles.traits IS 'declared traits (persona_identify), a JSON object (persona_identify checks it)';
COMMENT ON COLUMN persona.profiles.computed_state IS 'the state of every computed trait (read them in persona.traits)';
COMMENT ON COLUMN persona.profiles.next_change_at IS 'when a windowed trait of the profile next changes by the clock alone (persona_tick)';
COMMENT ON COLUMN persona.profiles.consent IS 'channel -> granted (persona_set_consent); a merge keeps a withdrawal over a grant';
COMMENT ON COLUMN persona.profiles.first_seen IS 'earliest occurred_at of the profile''s events';
COMMENT ON COLUMN persona.profiles.last_seen IS 'latest occurred_at of the profile''s events';

CREATE INDEX profiles_next_change_at_idx ON persona.profiles (next_change_at)
    WHERE next_change_at IS NOT NULL;

-- Every id a person is known by, known user ids and anonymous ids alike, in
-- one namespace.
--
-- The primary key carries profile_id, so that resolving an id (every event
-- of a person the backend has not cached) reads the index alone.
CREATE TABLE persona.identities (
    id          text        COLLATE "C",
    profile_id  bigint      NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('user', 'anonymous')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id) INCLUDE (profile_id)
);
-- A profile's ids are looked up by profile only for merge, forget and
-- persona_profile, and always by equality: a hash index serves that, with
-- one bucket page per entry and no descent or comparisons. It holds the
-- anonymous ids alone: a profile has at most one user id (two known users
-- never merge), and it is the profile's user_id, reached through the
-- primary key. So a person first seen under a known user id, the common
-- case of logged-in traffic, costs no entry here.
CREATE INDEX identities_anonymous_idx ON persona.identities USING hash (profile_id)
    WHERE kind = 'anonymous';
COMMENT ON TABLE persona.identities IS 'every id (user or anonymous) and the profile it resolves to';

-- The event stream, range-partitioned by occurred_at so that old events can
-- be dropped by time (docs/operations.md, "Events age out"). profile_id is
-- set by persona on insert. Row triggers are cloned to every partition,
-- whoever creates it (persona.add_event_partitions, CREATE TABLE ...
-- PARTITION OF); statement triggers stay on the parent.
--
-- Each partition has the primary key (profile_id, occurred_at, event_id):
-- it leads with profile_id (the natural distribution column, and how merge,
-- forget and backfill read a person's events) and contains occurred_at, the
-- partition key. The key is the partitions', not the partitioned table's:
-- pg_dump writes a partition made after CREATE EXTENSION as a table of its
-- own, attached to persona.events and then given its key, and a key on
-- persona.events (made again by CREATE EXTENSION on restore) would already
-- have given it one, so the restore would fail.
CREATE SEQUENCE persona.event_id_seq CACHE 32;
COMMENT ON SEQUENCE persona.event_id_seq IS 'allocates event ids';

CREATE TABLE persona.events (
    event_id     bigint      NOT NULL DEFAULT nextval('persona.event_id_seq'),
    profile_id   bigint      NOT NULL DEFAULT 0,
    user_id      text,
    anonymous_id text,
    event_type   text        NOT NULL,
    properties   jsonb       NOT NULL DEFAULT '{}',
    context      jsonb       NOT NULL DEFAULT '{}',
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    received_at  timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (occurred_at);
ALTER SEQUENCE persona.event_id_seq OWNED BY persona.events.event_id;
COMMENT ON TABLE persona.events IS 'every tracked event; insert here, through persona_track, INSERT or COPY';
COMMENT ON COLUMN persona.events.profile_id IS 'the profile the event belongs to, resolved from user_id or anonymous_id on insert';
COMMENT ON COLUMN persona.events.context IS 'channel, device, session_id, geo, currency';

-- Every event has a partition: those that fall in no range partition land
-- here. Time partitions are added by persona.add_event_partitions.
CREATE TABLE persona.events_default PARTITION OF persona.events (
    PRIMARY KEY (profile_id, occurred_at, event_id)
) DEFAULT;
COMMENT ON TABLE persona.events_default IS 'the events that fall in no time partition of persona.events';

-- Merge history: profiles that were absorbed into another one.
CREATE TABLE persona.merges (
    from_profile_id bigint      PRIMARY KEY,
    into_profile_id bigint      NOT NULL,
    merged_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX merges_into_profile_id_idx ON persona.merges (into_profile_id);
COMMENT ON TABLE persona.merges IS 'profiles absorbed by identity merges, and where they went';

SELECT pg_catalog.pg_extension_config_dump('persona.profiles', '');
SELECT pg_catalog.pg_extension_config_dump('persona.identities', '');
SELECT pg_catalog.pg_extension_config_dump('persona.events_default', '');
SELECT pg_catalog.pg_extension_config_dump('persona.merges', '');
SELECT pg_catalog.pg_extension_config_dump('persona.profile_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('persona.event_id_seq', '');
