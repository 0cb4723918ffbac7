-- Identity: identify, alias, profile, forget, and merge semantics.
SET timezone = 'UTC';
\set SHOW_CONTEXT never

-- An anonymous visitor browses on a phone.
SELECT persona_track(NULL, 'page_view', '{"sku": "shoe-1"}', '2026-02-01 10:00+00',
                     anonymous_id => 'anon-phone') > 0 AS tracked;
SELECT persona_track(NULL, 'add_to_cart', '{"sku": "shoe-1", "price": 180}',
                     '2026-02-01 10:05+00', anonymous_id => 'anon-phone') > 0 AS tracked;
-- The known user has history of their own.
SELECT persona_track('asha', 'purchase', '{"revenue": 40}', '2026-01-15 09:00+00') > 0 AS tracked;
SELECT persona_identify('asha', '{"city": "Mumbai", "tier": "silver"}') =
       (SELECT profile_id FROM persona.identities WHERE id = 'asha') AS same_profile;

-- Logging in links the phone and merges its profile into the user's.
SELECT persona_identify('asha', '{"tier": "gold", "plan": null}', 'anon-phone') =
       (SELECT profile_id FROM persona.identities WHERE id = 'asha') AS merged_into_user;
SELECT persona_profile('anon-phone') - 'profile_id' AS profile;
SELECT persona_profile('asha') = persona_profile('anon-phone') AS same_document;

-- Exactly as if every event had been tracked under the known id.
SELECT p.event_count = count(e.*) AS count_exact,
       p.first_seen = min(e.occurred_at) AS first_exact,
       p.last_seen = max(e.occurred_at) AS last_exact
  FROM persona.profiles p JOIN persona.events e USING (profile_id)
 WHERE p.user_id = 'asha'
 GROUP BY p.profile_id;
SELECT count(*) AS profiles_left FROM persona.profiles WHERE user_id IS NULL
   AND profile_id IN (SELECT from_profile_id FROM persona.merges);

-- Later events under the anonymous id land on the merged profile.
SELECT persona_track(NULL, 'checkout_started', occurred_at => '2026-02-01 10:10+00',
                     anonymous_id => 'anon-phone') > 0 AS tracked;
SELECT event_count, last_seen FROM persona.profiles WHERE user_id = 'asha';

-- A key set to JSON null removes the trait; other keys stay.
SELECT persona_identify('anon-phone', '{"city": null, "vip": true}') > 0 AS identified;
SELECT traits FROM persona.profiles WHERE user_id = 'asha';

-- alias links an unknown anonymous id without a merge, and is idempotent.
SELECT persona_alias('asha', 'anon-laptop') = persona_alias('asha', 'anon-laptop') AS idempotent;
SELECT persona_profile('asha')->'anonymous_ids' AS anonymous_ids;

-- Two anonymous profiles merge; the profile named first survives.
SELECT persona_track(NULL, 'page_view', occurred_at => '2026-02-02 10:00+00', anonymous_id => 'anon-a') > 0 AS tracked;
SELECT persona_track(NULL, 'page_view', occurred_at => '2026-02-02 11:00+00', anonymous_id => 'anon-b') > 0 AS tracked;
SELECT persona_alias('anon-a', 'anon-b') = (SELECT profile_id FROM persona.identities WHERE id = 'anon-a') AS first_survives;
SELECT user_id, event_count FROM persona.profiles
 WHERE profile_id = (SELECT profile_id FROM persona.identities WHERE id = 'anon-b');

-- Linking anonymous ids to a new user makes one profile of them all.
SELECT persona_identify('ravi', '{}', 'anon-a') AS ravi_pid \gset
SELECT :ravi_pid = ALL (SELECT profile_id FROM persona.identities
                         WHERE id IN ('anon-a', 'anon-b', 'ravi')) AS linked;
SELECT user_id, event_count, persona_profile('ravi')->'anonymous_ids' AS anonymous_ids
  FROM persona.profiles WHERE user_id = 'ravi';

-- Linking an id that belongs to a different known user is an error and
-- changes nothing.
SELECT persona_identify('ravi', '{"city": "Delhi"}', 'anon-phone');
SELECT persona_alias('asha', 'ravi');
SELECT i.id, p.user_id FROM persona.identities i JOIN persona.profiles p USING (profile_id)
 WHERE i.id IN ('anon-phone', 'ravi') ORDER BY i.id;
SELECT traits FROM persona.profiles WHERE user_id = 'ravi';

-- Unknown ids: no profile.
SELECT persona_profile('nobody') IS NULL AS unknown;
SELECT persona_profile(NULL) IS NULL AS null_id;

-- identify creates a profile for a new user, with no events yet.
SELECT persona_identify('meera', '{"city": "Berlin"}') > 0 AS created;
SELECT persona_profile('meera') - 'profile_id' AS profile;

-- forget erases every row about the person, under any of their ids.
SELECT persona_profile('asha')->>'profile_id' AS asha_pid \gset
SELECT (SELECT count(*) FROM persona.events WHERE profile_id = :asha_pid)
     + (SELECT count(*) FROM persona.identities WHERE profile_id = :asha_pid)
     + (SELECT count(*) FROM persona.merges WHERE into_profile_id = :asha_pid)
     + 1 AS expected_rows;
SELECT persona_forget('anon-laptop') AS erased;
SELECT (SELECT count(*) FROM persona.events WHERE profile_id = :asha_pid) AS events,
       (SELECT count(*) FROM persona.identities WHERE profile_id = :asha_pid) AS identities,
       (SELECT count(*) FROM persona.merges WHERE into_profile_id = :asha_pid) AS merges,
       (SELECT count(*) FROM persona.profiles WHERE profile_id = :asha_pid) AS profiles,
       (SELECT count(*) FROM persona.events WHERE user_id = 'asha' OR anonymous_id IN ('anon-phone', 'anon-laptop')) AS by_id;
SELECT persona_forget('asha') AS erased_again;
-- Others are untouched.
SELECT user_id, event_count FROM persona.profiles WHERE user_id IN ('ravi', 'meera') ORDER BY 1;

-- The same id tracked after forget starts a new, empty profile.
SELECT persona_track('asha', 'page_view', occurred_at => '2026-03-01 10:00+00') > 0 AS tracked;
SELECT persona_profile('asha') - 'profile_id' - 'first_seen' - 'last_seen' AS profile;

-- A profile's one user id is its user_id: merge and forget find a profile's
-- ids as its anonymous ids plus that (persona.identities_anonymous_idx).
SELECT count(*) AS user_ids_elsewhere
  FROM persona.identities i LEFT JOIN persona.profiles p USING (profile_id)
 WHERE i.kind = 'user' AND i.id IS DISTINCT FROM p.user_id;
SELECT count(*) AS user_ids_missing
  FROM persona.profiles p
 WHERE p.user_id IS NOT NULL
   AND NOT EXISTS (SELECT FROM persona.identities i
                    WHERE i.id = p.user_id AND i.profile_id = p.profile_id AND i.kind = 'user');
