-- Privileges: nothing is left to PUBLIC. docs/roles.md has the GRANT recipe
-- for the ingest, reader and admin roles.

REVOKE ALL ON FUNCTION @extschema@.persona_track(text, text, jsonb, timestamptz, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_identify(text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_alias(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_profile(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_forget(text) FROM PUBLIC;

REVOKE ALL ON FUNCTION persona.events_resolve() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.events_confirm() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_ingest_idle(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.events_apply() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.events_begin() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_id(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_event_type(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_name(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_object(jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.lock_order() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.apply_traits(jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.resolve(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.ensure_profile(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.merge(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.link(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.max_event_bytes() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.announce_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.combine_identities(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.erase_identities(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.combine_profiles(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.erase_profile(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_step_function(text, regtype[], regtype, text, regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_person_table() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.build_person_walks() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.person_tables_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.merge_rows(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.forget_rows(bigint) FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.persona_define_trait(text, text, text, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_trait(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.state_merge(bytea, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.state_put(bytea, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.rebuild_traits_view() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_defs_restored() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.refuse_direct_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.traits_json(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_traits_view_free() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg_add(internal, int, text, interval, text, timestamptz, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg_combine(internal, internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg_serialize(internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg_deserialize(bytea, internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg_final(internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.trait_agg(int, text, interval, text, timestamptz, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_create_segment(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_segment(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_in_segment(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_tick() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_schedule() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.compile_predicate(text, regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.compile_definition() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.predicate_may_fail(text, regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.refresh_segments(bigint[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.evaluate_segment(text, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.clock_flip(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.leave_segments(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.announce() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.segment_log_horizon() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.combine_segment_members(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.next_change(bytea) FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.persona_create_action(text, text, jsonb, text, text, int, float8, int, interval, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_update_action(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_pause_action(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_action(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_decide(text, jsonb, text, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_feedback(bigint, text, float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_action(persona.actions) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.erase_decisions(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_outcome(text, float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.learn(int, text[], text, float8, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.bandit_learn(jsonb, jsonb, text) FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.persona_link_content(text, regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_render(bigint) FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.persona_set_consent(text, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_claim(text, int, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_ack(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_fail(bigint, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_message_feedback(bigint, text, float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_channel(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.consented(jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.merge_consent(jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.lock_profile_sends(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.count_suppressions(text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.recent_sends(bigint, interval, int[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.enqueue_message(bigint, text, text, timestamptz, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.retry_delay(int) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_create_trigger(text, text, text, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_trigger(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.count_trigger_error(int, text) FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.persona_send_campaign(text, text, text, text, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_cancel_campaign(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_campaign_report(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.campaign_snapshot(int, text, text, timestamptz, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.campaign_reached(int, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.campaign_materialize(bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.channel_sends(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.channel_cap_reached(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.channel_cap() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_best_send_time(text, timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_best_channel(text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.best_send_at(bigint, timestamptz, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.best_channel_of(bigint, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.refresh_engagement() FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.persona_create_experiment(text, float8, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_end_experiment(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_experiment(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_arm(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_experiment_report(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_experiment_daily(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_experiment_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.combine_assignments(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.experiment_bucket(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.two_sided_p(float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.holdout_suppresses(bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.experiment_people(text, text, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.report_experiment(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.check_conversion_event(text) FROM PUBLIC;

REVOKE ALL ON FUNCTION persona.check_column_name(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_train_model(text, text, interval, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_predict(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.persona_drop_model(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_scores(bytea, bigint, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_row_add(internal, int[], text, timestamptz, timestamptz, text, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_row_final(internal) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_row(int[], text, timestamptz, timestamptz, text, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_fit(int[], text, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.model_features(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.refresh_model_segments(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.models_restored() FROM PUBLIC;

-- Not revoked: persona.trait_bigint, trait_numeric and trait_text. Whoever
-- may SELECT persona.traits runs them as themselves; they decode bytes
-- (checking every one) and write nothing, and without USAGE on schema
-- persona nobody can name them. The same holds for persona.model_score (a
-- model's column of persona.traits) and persona.model_held_out (a hash).

-- ---------------------------------------------------------------------
-- No trigger of anyone else's on persona's relations
-- ---------------------------------------------------------------------

-- persona writes its tables as the extension's owner (a superuser) inside
-- SECURITY DEFINER functions, and a trigger runs as the user whose statement
-- fires it: a trigger that a role with the TRIGGER privilege (GRANT ALL
-- includes it) put on persona.profiles would run its function as the
-- superuser at the next event. Only superusers may create triggers on
-- persona's relations.
CREATE FUNCTION persona.guard_triggers() RETURNS event_trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    v_rel regclass;
BEGIN
    IF (SELECT r.rolsuper FROM pg_roles AS r WHERE r.rolname = current_user) THEN
        RETURN;
    END IF;
    SELECT t.tgrelid::regclass INTO v_rel
      FROM pg_event_trigger_ddl_commands() AS c
      JOIN pg_trigger AS t ON t.oid = c.objid
      JOIN pg_class AS k ON k.oid = t.tgrelid
     WHERE c.classid = 'pg_trigger'::regclass
       AND k.relnamespace = 'persona'::regnamespace
     LIMIT 1;
    IF v_rel IS NOT NULL THEN
        RAISE EXCEPTION 'permission denied to create a trigger on %', v_rel
            USING ERRCODE = '42501',
                  DETAIL = 'persona writes its relations as the extension''s owner, so a trigger on them would run as a superuser.',
                  HINT = 'Only superusers can create triggers on relations in schema persona.';
    END IF;
END
$$;
COMMENT ON FUNCTION persona.guard_triggers() IS
    'refuses triggers on relations in schema persona created by anyone but a superuser';
REVOKE ALL ON FUNCTION persona.guard_triggers() FROM PUBLIC;

CREATE EVENT TRIGGER persona_guard_triggers ON ddl_command_end
    WHEN TAG IN ('CREATE TRIGGER')
    EXECUTE FUNCTION persona.guard_triggers();
COMMENT ON EVENT TRIGGER persona_guard_triggers IS
    'refuses triggers on relations in schema persona created by anyone but a superuser';

REVOKE ALL ON FUNCTION persona.add_event_partitions(timestamptz, interval, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION persona.drop_events_before(timestamptz) FROM PUBLIC;
