-- Linked content: persona_link_content, {{name[key].column}} rendered with
-- live rows by persona_decide, persona_claim and persona_render, read with
-- the caller's privileges; a trigger's message renders with its event.
SET timezone = 'UTC';
\set VERBOSITY default
\set SHOW_CONTEXT never

CREATE SCHEMA r_shop;
CREATE TABLE r_shop.products (sku text PRIMARY KEY, name text, stock int, secret text);
INSERT INTO r_shop.products VALUES ('SHOE-1', 'Cloudrunner', 3, 'cost 40'),
                                   ('SHOE-2', 'Trailblazer', 0, 'cost 55'),
                                   ('SOCK-1', NULL, 12, NULL);
CREATE TABLE r_shop.stores (store_id int PRIMARY KEY, city text);
INSERT INTO r_shop.stores VALUES (7, 'Pune');
CREATE TABLE r_shop.loose (sku text, note text);
CREATE TABLE r_shop.pairs (a text, b text, UNIQUE (a, b));
CREATE TABLE r_shop.partial (sku text, live boolean);
CREATE UNIQUE INDEX ON r_shop.partial (sku) WHERE live;
CREATE TABLE r_shop.lowered (sku text);
CREATE UNIQUE INDEX ON r_shop.lowered (lower(sku));
CREATE VIEW r_shop.product_view AS SELECT * FROM r_shop.products;
CREATE TEMP TABLE r_temp (sku text PRIMARY KEY);

-- Bad input: a clear error each, and nothing written.
SELECT persona_link_content(NULL, 'r_shop.products', 'sku');
SELECT persona_link_content('r_products', NULL, 'sku');
SELECT persona_link_content('r_products', 'r_shop.products', NULL);
SELECT persona_link_content('', 'r_shop.products', 'sku');
SELECT persona_link_content('r products', 'r_shop.products', 'sku');
SELECT persona_link_content('9lives', 'r_shop.products', 'sku');
SELECT persona_link_content('r_products', 'r_shop.nothing', 'sku');
SELECT persona_link_content('r_products', 12345678::oid::regclass, 'sku');
SELECT persona_link_content('r_products', 'r_shop.products', 'nope');
SELECT persona_link_content('r_products', 'r_shop.products', 'ctid');
SELECT persona_link_content('r_products', 'r_shop.products', 'name');
SELECT persona_link_content('r_loose', 'r_shop.loose', 'sku');
SELECT persona_link_content('r_pairs', 'r_shop.pairs', 'a');
SELECT persona_link_content('r_partial', 'r_shop.partial', 'sku');
SELECT persona_link_content('r_lowered', 'r_shop.lowered', 'sku');
SELECT persona_link_content('r_view', 'r_shop.product_view', 'sku');
SELECT persona_link_content('r_temp', 'r_temp', 'sku');
SELECT count(*) AS links FROM persona.content_links;
DROP VIEW r_shop.product_view;

-- Linking: by a primary key, or any unique key; again, to re-point a name.
SELECT persona_link_content('r_products', 'r_shop.stores', 'store_id');
SELECT persona_link_content('r_products', 'r_shop.products', 'sku');
SELECT persona_link_content('r_stores', 'r_shop.stores', 'store_id');
SELECT name, relation, key_column FROM persona.content_links ORDER BY name;

-- At decision time: the key is a trait (computed or declared) or a path in
-- the call's context; a missing key, row or value renders empty.
SELECT persona_define_trait('r_last_sku', 'last', 'r_cart_add', 'sku');
SELECT persona_identify('r-asha', '{"first_name": "Asha", "store": 7, "fav": "SHOE-2"}') > 0 AS identified;
SELECT persona_track('r-asha', 'r_cart_add', '{"sku": "SHOE-1"}', '2026-06-01 10:00+00') > 0 AS tracked;
SELECT persona_create_action('r_banner', 'rweb',
    '{"title": "{{first_name}}: {{ r_products[r_last_sku].name }} ({{r_products[r_last_sku].stock}} left)",
      "also": ["{{r_products[fav].name}}", "{{r_products[context.sku].name}}/{{r_products[context.sku].stock}}"],
      "store": "{{r_stores[store].city}}", "none": "[{{r_products[nothing].name}}][{{r_products[context.gone].name}}]",
      "null": "[{{r_products[context.sock].name}}]", "not_a_link": "{{r_products[r_last_sku]}}|{{x[y]z}}"}',
    priority => 100);
SELECT content FROM persona_decide('r-asha', '{"sku": "SOCK-1", "sock": "SOCK-1"}', 'rweb');
-- Live: the row as it is when the content is rendered.
UPDATE r_shop.products SET stock = 2 WHERE sku = 'SHOE-1';
SELECT content->>'title' AS title FROM persona_decide('r-asha', '{}', 'rweb');
-- An integer key: a number or a numeric string finds the row, a word none.
SELECT persona_update_action('r_banner', '{"content": {"a": "{{r_stores[context.id].city}}"}}');
SELECT content FROM persona_decide('r-asha', '{"id": 7}', 'rweb');
SELECT content FROM persona_decide('r-asha', '{"id": "7"}', 'rweb');
SELECT content FROM persona_decide('r-asha', '{"id": "seven"}', 'rweb');
SELECT content FROM persona_decide('r-asha', '{"id": {"n": 7}}', 'rweb');
-- A name that is not linked is an error, as is a column the source lacks.
SELECT persona_update_action('r_banner', '{"content": {"a": "{{r_nothing[r_last_sku].name}}"}}');
SELECT content FROM persona_decide('r-asha', '{}', 'rweb');
SELECT persona_update_action('r_banner', '{"content": {"a": "{{r_products[r_last_sku].colour}}"}}');
SELECT content FROM persona_decide('r-asha', '{}', 'rweb');

-- Reads run with the caller's privileges: the decider needs SELECT on the
-- source (or on the columns it renders) and USAGE on its schema; row-level
-- security applies.
SELECT persona_update_action('r_banner', '{"content": {"a": "{{r_products[r_last_sku].name}}"}}');
CREATE ROLE r_decider NOLOGIN;
GRANT USAGE ON SCHEMA persona TO r_decider;
GRANT EXECUTE ON FUNCTION persona_decide(text, jsonb, text, int) TO r_decider;
SET ROLE r_decider;
SELECT content FROM persona_decide('r-asha', '{}', 'rweb');
RESET ROLE;
GRANT USAGE ON SCHEMA r_shop TO r_decider;
SET ROLE r_decider;
SELECT content FROM persona_decide('r-asha', '{}', 'rweb');
RESET ROLE;
GRANT SELECT (sku, name) ON r_shop.products TO r_decider;
SET ROLE r_decider;
SELECT content FROM persona_decide('r-asha', '{}', 'rweb');
RESET ROLE;
SELECT persona_update_action('r_banner', '{"content": {"a": "{{r_products[r_last_sku].secret}}"}}');
SET ROLE r_decider;
SELECT content FROM persona_decide('r-asha', '{}', 'rweb');
RESET ROLE;
SELECT persona_update_action('r_banner', '{"content": {"a": "{{r_products[r_last_sku].name}}"}}');
ALTER TABLE r_shop.products ENABLE ROW LEVEL SECURITY;
CREATE POLICY r_in_stock ON r_shop.products FOR SELECT TO r_decider USING (stock > 2);
SET ROLE r_decider;
SELECT content FROM persona_decide('r-asha', '{}', 'rweb');
RESET ROLE;
UPDATE r_shop.products SET stock = 5 WHERE sku = 'SHOE-1';
SET ROLE r_decider;
SELECT content FROM persona_decide('r-asha', '{}', 'rweb');
RESET ROLE;
ALTER TABLE r_shop.products DISABLE ROW LEVEL SECURITY;
DROP POLICY r_in_stock ON r_shop.products;
-- What the read runs as the caller (here a policy's function) cannot change
-- the session's settings.
CREATE FUNCTION r_shop.sneaky(text) RETURNS boolean LANGUAGE plpgsql STABLE
    AS $$BEGIN PERFORM set_config('work_mem', '1234kB', false); RETURN true; END$$;
CREATE TABLE r_shop.with_policy (k text PRIMARY KEY, v text);
INSERT INTO r_shop.with_policy VALUES ('a', 'A');
GRANT SELECT ON r_shop.with_policy TO r_decider;
ALTER TABLE r_shop.with_policy ENABLE ROW LEVEL SECURITY;
CREATE POLICY r_sneaky ON r_shop.with_policy FOR SELECT USING (r_shop.sneaky(k));
SELECT persona_link_content('r_sneaky', 'r_shop.with_policy', 'k');
SELECT persona_update_action('r_banner', '{"content": {"a": "{{r_sneaky[context.k].v}}"}}');
SET work_mem = '4MB';
SET ROLE r_decider;
SELECT content FROM persona_decide('r-asha', '{"k": "a"}', 'rweb');
SHOW work_mem;
RESET ROLE;
RESET work_mem;
SELECT persona_update_action('r_banner', '{"content": {"a": "{{r_products[r_last_sku].name}}"}}');

-- A trigger's message: rendered at claim with the person's traits, the
-- triggering event (event.*, and its context as context.*) and the linked
-- row as it is then; purchase in between cancels it (see sql/triggers.sql).
SELECT persona_define_trait('r_orders', 'count', 'r_order');
SELECT persona_create_action('r_cart_push', 'rpush',
    '{"title": "{{first_name}}, {{r_products[event.properties.sku].name}} is waiting",
      "body": "Only {{r_products[r_last_sku].stock}} left in size {{event.properties.size}}, via {{context.channel}}"}');
SELECT persona_create_trigger('r_abandoned', 'r_cart_add', 'r_cart_push', condition => 'r_orders = 0');
SELECT persona_create_trigger('r_plain', 'r_wish', 'r_cart_push');
SELECT persona_track('r-asha', 'r_cart_add', '{"sku": "SHOE-2", "size": 42}', '2026-06-01 11:00+00',
                     '{"channel": "app"}') > 0 AS tracked;
SELECT persona_track('r-asha', 'r_wish', '{"sku": "SHOE-1", "size": 40}', '2026-06-01 11:01+00',
                     '{"channel": "web"}') > 0 AS tracked;
SELECT persona_identify('r-ben', '{"first_name": "Ben"}') > 0 AS identified;
SELECT persona_track('r-ben', 'r_cart_add', '{"sku": "SHOE-1", "size": 44}', '2026-06-01 11:02+00',
                     '{"channel": "app"}') > 0 AS tracked;
SELECT persona_track('r-ben', 'r_order', occurred_at => '2026-06-01 11:03+00') > 0 AS bought;
SELECT source, event->'properties' AS kept_event FROM persona.messages WHERE channel = 'rpush' ORDER BY message_id;
UPDATE r_shop.products SET stock = 1 WHERE sku = 'SHOE-2';
SELECT user_id, content, source FROM persona_claim('rpush', 10, '1 minute') ORDER BY message_id;
SELECT user_id, content, source FROM persona.messages JOIN persona.profiles USING (profile_id)
 WHERE channel = 'rpush' ORDER BY message_id;
SELECT status, last_error FROM persona.messages WHERE channel = 'rpush' ORDER BY message_id;

-- persona_render: the content rendered now, at open time.
SELECT message_id AS r_first FROM persona.messages WHERE channel = 'rpush' ORDER BY message_id LIMIT 1 \gset
UPDATE r_shop.products SET name = 'Trailblazer II', stock = 9 WHERE sku = 'SHOE-2';
SELECT persona_identify('r-asha', '{"first_name": "Asha K"}') > 0 AS identified;
SELECT persona_render(:r_first);
SELECT content->>'title' AS claimed_title FROM persona.messages WHERE message_id = :r_first;
SELECT persona_render(-1);
SELECT persona_render(NULL);
-- Who may render: the worker and the decider, as granted (docs/roles.md).
CREATE ROLE r_worker NOLOGIN;
GRANT USAGE ON SCHEMA persona TO r_worker;
GRANT EXECUTE ON FUNCTION persona_claim(text, int, interval), persona_render(bigint) TO r_worker;
SET ROLE r_worker;
SELECT persona_render(:r_first);
RESET ROLE;
-- A worker that cannot read the source claims nothing: the claim fails
-- whole, and the message stays queued for a worker that can.
SELECT persona_track('r-asha', 'r_wish', '{"sku": "SHOE-1"}', '2026-06-01 12:00+00') > 0 AS tracked;
SET ROLE r_worker;
SELECT count(*) FROM persona_claim('rpush', 10, '1 minute');
RESET ROLE;
SELECT status, count(*) FROM persona.messages WHERE channel = 'rpush' GROUP BY 1 ORDER BY 1;
GRANT USAGE ON SCHEMA r_shop TO r_worker;
GRANT SELECT ON r_shop.products TO r_worker;
SET ROLE r_worker;
SELECT user_id, content->>'title' AS title FROM persona_claim('rpush', 10, '1 minute');
SELECT persona_render(:r_first)->>'title' AS title;
SELECT persona_link_content('r_products', 'r_shop.products', 'sku');
RESET ROLE;

-- A source dropped or altered since it was linked: a clear error at render.
ALTER TABLE r_shop.products RENAME COLUMN stock TO on_hand;
SELECT persona_render(:r_first);
ALTER TABLE r_shop.products RENAME COLUMN on_hand TO stock;
ALTER TABLE r_shop.products RENAME COLUMN sku TO code;
SELECT persona_render(:r_first);
ALTER TABLE r_shop.products RENAME COLUMN code TO sku;
-- Renaming the table keeps the link; a type change of the key is followed.
ALTER TABLE r_shop.products RENAME TO goods;
SELECT persona_render(:r_first)->>'title' AS title;
ALTER TABLE r_shop.goods RENAME TO products;
ALTER TABLE r_shop.products ALTER COLUMN sku TYPE varchar(20);
SELECT persona_render(:r_first)->>'title' AS title;
-- A key that lost its unique index and has duplicates.
ALTER TABLE r_shop.products DROP CONSTRAINT products_pkey;
INSERT INTO r_shop.products VALUES ('SHOE-2', 'Copy', 1, NULL);
SELECT persona_render(:r_first);
DELETE FROM r_shop.products WHERE name = 'Copy';
ALTER TABLE r_shop.products DROP COLUMN stock;
SELECT persona_render(:r_first);
DROP TABLE r_shop.products CASCADE;
SELECT persona_render(:r_first);
SELECT content FROM persona_decide('r-asha', '{}', 'rweb');
-- Linking the name again mends it.
CREATE TABLE r_shop.products (sku text PRIMARY KEY, name text, stock int);
INSERT INTO r_shop.products VALUES ('SHOE-2', 'Trailblazer III', 4);
SELECT persona_link_content('r_products', 'r_shop.products', 'sku');
SELECT persona_render(:r_first);
-- A dropped action: its content is gone.
SELECT persona_drop_trigger('r_abandoned');
SELECT persona_drop_trigger('r_plain');
SELECT persona_drop_action('r_cart_push');
SELECT set_config('r.first', :'r_first', false) IS NOT NULL AS set;
DO $$BEGIN PERFORM persona_render(current_setting('r.first')::bigint);
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE '%: %', SQLSTATE, replace(SQLERRM, current_setting('r.first'), 'N');
END$$;

SELECT persona_drop_action('r_banner');
SELECT persona_drop_trait('r_last_sku');
SELECT persona_drop_trait('r_orders');
DELETE FROM persona.content_links;
DROP SCHEMA r_shop CASCADE;
DROP OWNED BY r_decider, r_worker;
DROP ROLE r_decider, r_worker;
