-- Linked content in the database test/dump/run.sh dumps: a table of the
-- user's linked as content, and a trigger's message whose content reads it
-- (after test/upgrade/load.sql, with the current version's API).
CREATE SCHEMA dump_shop;
CREATE TABLE dump_shop.products (sku text PRIMARY KEY, name text, stock int);
INSERT INTO dump_shop.products VALUES ('SHOE-1', 'Cloudrunner', 3);
SELECT persona_link_content('products', 'dump_shop.products', 'sku');
SELECT persona_create_action('dump_cart_push', 'push',
    '{"title": "{{products[event.properties.sku].name}}: {{products[event.properties.sku].stock}} left"}');
SELECT persona_create_trigger('dump_cart', 'dump_cart_add', 'dump_cart_push', delay => '1 day');
SELECT persona_track('dump-shopper', 'dump_cart_add', '{"sku": "SHOE-1"}', '2025-07-01 10:00+00');
