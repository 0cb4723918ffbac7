-- The GRANT recipe of docs/roles.md, and what each role can and cannot do.
\set VERBOSITY terse
SET timezone = 'UTC';

CREATE ROLE persona_ingest NOLOGIN;
GRANT USAGE ON SCHEMA persona TO persona_ingest;
GRANT INSERT ON persona.events TO persona_ingest;
GRANT USAGE ON SEQUENCE persona.event_id_seq TO persona_ingest;
GRANT EXECUTE ON FUNCTION persona_track(text, text, jsonb, timestamptz, jsonb, text),
                          persona_identify(text, jsonb, text),
                          persona_alias(text, text) TO persona_ingest;

CREATE ROLE persona_decider NOLOGIN;
GRANT USAGE ON SCHEMA persona TO persona_decider;
GRANT EXECUTE ON FUNCTION persona_decide(text, jsonb, text, int),
                          persona_feedback(bigint, text, float8),
                          persona_render(bigint),
                          persona_arm(text, text),
                          persona_best_send_time(text, timestamptz, text),
                          persona_best_channel(text, text[]) TO persona_decider;

CREATE ROLE persona_reader NOLOGIN;
GRANT USAGE ON SCHEMA persona TO persona_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA persona TO persona_reader;
GRANT EXECUTE ON FUNCTION persona_profile(text), persona_in_segment(text, text),
                          persona_predict(text, text),
                          persona_experiment_report(text, text, timestamptz),
                          persona_experiment_daily(text, text, timestamptz),
                          persona.experiment_bucket(text, text) TO persona_reader;

CREATE ROLE persona_admin NOLOGIN;
GRANT persona_ingest, persona_decider, persona_reader TO persona_admin;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA persona TO persona_admin;
GRANT ALL ON ALL SEQUENCES IN SCHEMA persona TO persona_admin;
GRANT EXECUTE ON FUNCTION persona_forget(text),
                          persona_define_trait(text, text, text, text, interval),
                          persona_drop_trait(text),
                          persona_create_segment(text, text),
                          persona_drop_segment(text),
                          persona_tick(),
                          persona_schedule(),
                          persona_create_action(text, text, jsonb, text, text, int, float8, int, interval, timestamptz, timestamptz),
                          persona_update_action(text, jsonb),
                          persona_pause_action(text, boolean),
                          persona_drop_action(text),
                          persona_create_trigger(text, text, text, text, interval),
                          persona_drop_trigger(text),
                          persona_link_content(text, regclass, text),
                          persona_create_experiment(text, float8, text),
                          persona_end_experiment(text),
                          persona_drop_experiment(text),
                          persona_send_campaign(text, text, text, text, int),
                          persona_cancel_campaign(text),
                          persona_campaign_report(text),
                          persona_train_model(text, text, interval, text[]),
                          persona_drop_model(text),
                          persona.refresh_engagement(),
                          persona.add_event_partitions(timestamptz, interval, timestamptz),
                          persona.drop_events_before(timestamptz) TO persona_admin;

CREATE ROLE persona_nobody NOLOGIN;

-- The ingest role tracks, inserts, copies, identifies and aliases ...
SET ROLE persona_ingest;
SELECT persona_track('u-role', 'page_view', occurred_at => '2026-04-01 10:00+00') > 0 AS tracked;
INSERT INTO persona.events (anonymous_id, event_type, occurred_at)
VALUES ('anon-role', 'page_view', '2026-04-01 09:00+00');
COPY persona.events (user_id, event_type, occurred_at) FROM stdin;
u-role	add_to_cart	2026-04-01 10:01:00+00
\.
SELECT persona_identify('u-role', '{"city": "Pune"}', 'anon-role') > 0 AS identified;
-- ... but cannot read events or profiles, read profiles through the API
-- (a decision renders traits into its content: deciding is a read),
-- change or delete anything directly, or forget.
SELECT count(*) FROM persona.events;
SELECT count(*) FROM persona.profiles;
SELECT persona_profile('u-role');
SELECT count(*) FROM persona_decide('u-role', '{}');
UPDATE persona.profiles SET event_count = 0;
DELETE FROM persona.events;
SELECT persona_forget('u-role');
RESET ROLE;

-- The decider decides and reports feedback, and reads nothing else.
SELECT persona_create_action('role_banner', 'web', '{"title": "Hi {{city}}"}');
SET ROLE persona_decider;
SELECT decision_id AS role_decision, content FROM persona_decide('u-role', '{}') \gset
SELECT :'content' AS rendered;
SELECT persona_feedback(:role_decision, 'click');
SELECT persona_best_channel('u-role', '{web}') AS best_channel,
       persona_best_send_time('u-role') >= now() AS best_time;
SELECT persona_profile('u-role');
SELECT count(*) FROM persona.profiles;
SELECT persona_track('u-role', 'page_view');
RESET ROLE;

-- The reader reads, computed traits included, and cannot write.
SELECT persona_define_trait('role_views', 'count', 'page_view');
SET ROLE persona_reader;
SELECT user_id, event_count, traits FROM persona.profiles WHERE user_id = 'u-role';
SELECT t.role_views FROM persona.traits t JOIN persona.profiles p USING (profile_id)
 WHERE p.user_id = 'u-role';
SELECT persona_define_trait('role_views_2', 'count', 'page_view');
SELECT persona_create_segment('role_seg', 'event_count > 0');
SELECT persona_profile('anon-role')->>'event_count' AS event_count;
SELECT persona_track('u-role', 'page_view');
INSERT INTO persona.events (user_id, event_type) VALUES ('u-role', 'page_view');
SELECT persona_identify('u-role', '{}');
UPDATE persona.profiles SET traits = '{}';
SELECT persona_forget('u-role');
RESET ROLE;

-- Experiments: the admin creates them; the decider asks for an arm (an
-- exposure, a write); the reader reads the report and cannot expose anyone.
SET ROLE persona_admin;
SELECT persona_create_experiment('role_exp', 10);
RESET ROLE;
SET ROLE persona_decider;
SELECT persona_arm('role_exp', 'u-role') IN ('holdout', 'treatment') AS armed;
SELECT persona_create_experiment('role_exp_2', 10);
RESET ROLE;
SET ROLE persona_reader;
SELECT arm, users FROM persona_experiment_report('role_exp', 'page_view');
SELECT persona_arm('role_exp', 'u-role');
SELECT persona_end_experiment('role_exp');
RESET ROLE;
SET ROLE persona_admin;
SELECT persona_end_experiment('role_exp');
SELECT persona_drop_experiment('role_exp');
RESET ROLE;

-- Models: training and dropping are the admin's (reaching the check of the
-- target event shows the call ran); the reader predicts.
SET ROLE persona_reader;
SELECT persona_train_model('role_model', 'role_never', '30 days');
SELECT persona_drop_model('role_model');
SELECT persona_predict('role_model', 'u-role');
RESET ROLE;
SET ROLE persona_decider;
SELECT persona_predict('role_model', 'u-role');
RESET ROLE;
SET ROLE persona_admin;
SELECT persona_train_model('role_model', 'role_never', '30 days');
SELECT persona_drop_model('role_model');
RESET ROLE;

-- A role with no grant can do nothing at all.
SET ROLE persona_nobody;
SELECT persona_track('u-role', 'page_view');
SELECT persona_profile('u-role');
SELECT count(*) FROM persona.profiles;
RESET ROLE;

-- Linked content: the admin links a table it can read; the decider cannot
-- link, and renders with its own privileges on the table.
CREATE TABLE public.role_products (sku text PRIMARY KEY, name text);
INSERT INTO public.role_products VALUES ('S1', 'Shoe');
GRANT SELECT ON public.role_products TO persona_admin;
SET ROLE persona_decider;
SELECT persona_link_content('role_products', 'public.role_products', 'sku');
RESET ROLE;
SET ROLE persona_admin;
SELECT persona_link_content('role_products', 'public.role_products', 'sku');
RESET ROLE;
SELECT persona_update_action('role_banner', '{"content": {"title": "{{role_products[context.sku].name}}"}}');
SET ROLE persona_decider;
SELECT content FROM persona_decide('u-role', '{"sku": "S1"}');
RESET ROLE;
GRANT SELECT ON public.role_products TO persona_decider;
SET ROLE persona_decider;
SELECT content FROM persona_decide('u-role', '{"sku": "S1"}');
RESET ROLE;
DELETE FROM persona.content_links WHERE name = 'role_products';
DROP TABLE public.role_products;

-- The admin does everything, forget included.
SET ROLE persona_decider;
SELECT persona_create_trigger('role_trig', 'page_view', 'role_banner');
RESET ROLE;
SET ROLE persona_admin;
SELECT persona_create_trigger('role_trig', 'page_view', 'role_banner', delay => '1 minute');
SELECT persona_drop_trigger('role_trig');
RESET ROLE;
-- Campaigns are the admin's: a decider can neither send nor cancel one.
SET ROLE persona_decider;
SELECT persona_send_campaign('role_camp', 'role_banner');
RESET ROLE;
SET ROLE persona_admin;
SELECT persona_send_campaign('role_camp', 'role_banner') >= 1 AS sent;
SELECT status, messages > 0 AS any FROM persona_campaign_report('role_camp') WHERE status = 'queued';
SELECT persona_cancel_campaign('role_camp') >= 1 AS cancelled;
SELECT persona_drop_action('role_banner');
SELECT persona_create_segment('role_seg', 'role_views > 1');
SELECT persona_tick() >= 0 AS ticked;
RESET ROLE;
SET ROLE persona_reader;
SELECT persona_in_segment('u-role', 'role_seg') AS in_segment;
RESET ROLE;
SET ROLE persona_admin;
SELECT persona_drop_segment('role_seg');
SELECT persona_drop_trait('role_views');
SELECT persona_forget('u-role') AS erased;
SELECT count(*) AS left_behind FROM persona.identities WHERE id IN ('u-role', 'anon-role');
RESET ROLE;

-- Functions that write persona's tables run as definer with a pinned path.
SELECT p.proname, p.prosecdef, p.proconfig
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'persona'
 WHERE p.proname LIKE 'persona\_%'
 ORDER BY 1;
-- PUBLIC may run only the decoders persona.traits calls, which write nothing,
-- and the two helpers INSERT INTO persona.events runs as the inserting role.
SELECT p.oid::regprocedure AS public_executable
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'persona'
 WHERE has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY 1::text;

DROP OWNED BY persona_ingest, persona_decider, persona_reader, persona_admin, persona_nobody;
DROP ROLE persona_ingest, persona_decider, persona_reader, persona_admin, persona_nobody;
