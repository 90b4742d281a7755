-- Statements and what the sharding planner makes of them (tests/planner_golden.rs).
-- Topology: t_order and t_item by user_id mod 4 (bound), t_user by id hash_mod 4,
-- t_event by day interval over 4 shards, t_account by range [1000, 2000, 3000],
-- t_country broadcast, t_note single on shard 2, t_split by user_id mod 8 over two
-- physical tables per shard (slot s: t_split_{s mod 2} of shard s div 2).
SELECT * FROM t_order WHERE user_id = 5
SELECT * FROM t_order WHERE user_id IN (1, 5, 9)
SELECT * FROM t_order WHERE user_id IN (1, 2)
SELECT * FROM t_order WHERE user_id BETWEEN 4 AND 5
SELECT * FROM t_order WHERE user_id = 1 OR user_id = 6
SELECT * FROM t_order WHERE user_id = 1 AND qty > 3
SELECT * FROM t_order
SELECT id, name FROM t_order ORDER BY name DESC, id LIMIT 10, 5
SELECT COUNT(*), SUM(amount), AVG(qty), MIN(created), MAX(qty) FROM t_order
SELECT user_id, COUNT(*) FROM t_order GROUP BY user_id HAVING COUNT(*) > 2 ORDER BY user_id
SELECT country, COUNT(*) FROM t_order GROUP BY country
SELECT DISTINCT user_id FROM t_order
SELECT DISTINCT name FROM t_order
SELECT COUNT(DISTINCT user_id) FROM t_order
SELECT o.id, i.sku FROM t_order o JOIN t_item i ON o.user_id = i.user_id WHERE o.user_id = 3
SELECT o.id, i.sku FROM t_order o JOIN t_item i ON o.user_id = i.user_id
SELECT o.id FROM t_order o JOIN t_item i ON o.id = i.order_id
SELECT o.id, c.name FROM t_order o JOIN t_country c ON c.id = o.country ORDER BY o.id
SELECT * FROM t_order WHERE id IN (SELECT order_id FROM t_item)
SELECT * FROM t_user WHERE id = 12345
SELECT * FROM t_account WHERE id < 1500
SELECT * FROM t_account WHERE id >= 3000
SELECT * FROM t_event WHERE at = '2024-01-02'
SELECT * FROM t_note
SELECT * FROM t_country
SELECT 1
SELECT DATABASE()
INSERT INTO t_order (id, user_id, name) VALUES (1, 1, 'a')
INSERT INTO t_order (id, user_id, name) VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 5, 'c')
INSERT INTO t_order (id, name) VALUES (1, 'a')
INSERT INTO t_country VALUES (1, 'x')
UPDATE t_order SET qty = qty + 1 WHERE user_id = 9
UPDATE t_order SET qty = 0
UPDATE t_order SET user_id = 2 WHERE user_id = 1
DELETE FROM t_order WHERE user_id IN (1, 2)
DELETE FROM t_order ORDER BY id LIMIT 1
UPDATE t_country SET name = 'y' WHERE id = 1
CREATE TABLE t_new (id INT PRIMARY KEY)
ALTER TABLE t_order ADD COLUMN note TEXT
SHOW TABLES
SHOW COLUMNS FROM t_note
EXPLAIN SELECT * FROM t_order ORDER BY id LIMIT 3
SELECT 1; SELECT 2
SELECT /*! 1 */ 2 FROM t_order
SELECT country, COUNT(*) c FROM t_order GROUP BY country HAVING c > 1 AND MAX(qty) IS NOT NULL
SELECT country, SUM(amount) FROM t_order GROUP BY country ORDER BY 2 DESC, country LIMIT 3
SELECT DISTINCT country, qty FROM t_order ORDER BY qty, country
SELECT country FROM t_order GROUP BY country HAVING name = 'x'
SELECT * FROM t_split WHERE user_id = 5
SELECT * FROM t_split WHERE user_id IN (4, 5)
SELECT user_id, COUNT(*) FROM t_split GROUP BY user_id ORDER BY user_id LIMIT 3
INSERT INTO t_split (id, user_id) VALUES (1, 0), (2, 1), (3, 8)
UPDATE t_split SET qty = 0 WHERE user_id BETWEEN 2 AND 3
ALTER TABLE t_split ADD COLUMN note TEXT
SHOW COLUMNS FROM t_split
SELECT * FROM t_country WHERE id IN (SELECT country FROM t_split)
