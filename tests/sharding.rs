//! `mode: sharding` against real databases: four shards on the test MariaDB, and beside them
//! one reference database holding every row. The same statements go to both; every answer
//! Tandem gives must equal the reference's (in order under a total ORDER BY, as a multiset
//! otherwise), and what it cannot answer exactly it must refuse with error 1235.

mod common;

use std::collections::BTreeMap;

use common::{mariadb, Tandem};
use mysql_async::prelude::*;
use mysql_async::{Conn, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SHARDS: usize = 4;

const SCHEMA: &str = "
CREATE TABLE t_order (
  id INT PRIMARY KEY,
  user_id INT NOT NULL,
  name VARCHAR(20) COLLATE utf8mb4_general_ci,
  amount DECIMAL(10,2),
  qty INT,
  country INT,
  created DATE
);
CREATE TABLE t_item (
  id INT PRIMARY KEY,
  order_id INT NOT NULL,
  user_id INT NOT NULL,
  sku VARCHAR(10) COLLATE utf8mb4_bin
);
CREATE TABLE t_country (id INT PRIMARY KEY, name VARCHAR(20));
CREATE TABLE t_code (code VARCHAR(10) COLLATE utf8mb4_bin, n INT);
";

/// Four shard databases with the schema, a reference database, and Tandem in front of the
/// shards.
struct World {
    shards: Vec<String>,
    reference: String,
    tandem: Tandem,
}

fn world(name: &str) -> World {
    world_with(name, "")
}

/// A world whose executor has these extra settings (YAML lines, indented as its fields).
fn world_with(name: &str, settings: &str) -> World {
    world_of(name, settings, 1)
}

/// A world whose `t_order` and `t_item` are split into `tables` physical tables on each
/// shard (`t_order_0 …`), when `tables` > 1.
fn world_of(name: &str, settings: &str, tables: usize) -> World {
    let db = mariadb();
    let shards: Vec<String> = (0..SHARDS)
        .map(|i| db.fresh_db(&format!("{name}{i}")))
        .collect();
    let reference = db.fresh_db(&format!("{name}ref"));
    for d in shards.iter().chain([&reference]) {
        db.sql(&format!("USE {d}; {SCHEMA}"));
    }
    if tables > 1 {
        for d in &shards {
            let mut split = String::new();
            for t in ["t_order", "t_item"] {
                for k in 1..tables {
                    split.push_str(&format!("CREATE TABLE {t}_{k} LIKE {t}; "));
                }
                split.push_str(&format!("RENAME TABLE {t} TO {t}_0; "));
            }
            db.sql(&format!("USE {d}; {split}"));
        }
    }
    let split = if tables > 1 {
        format!(", tables: {tables}")
    } else {
        String::new()
    };
    // The single table lives on shard 2 only.
    db.sql(&format!(
        "USE {}; CREATE TABLE t_note (id INT PRIMARY KEY, body TEXT); INSERT INTO t_note VALUES (1, 'on shard 2')",
        shards[2]
    ));
    db.sql(&format!(
        "USE {reference}; CREATE TABLE t_note (id INT PRIMARY KEY, body TEXT); INSERT INTO t_note VALUES (1, 'on shard 2')"
    ));
    let urls: Vec<String> = shards.iter().map(|d| db.url(d)).collect();
    let executor = format!(
        "    sharded_tables:
      - {{ table: t_order, column: user_id, algorithm: mod{split} }}
      - {{ table: t_item, column: user_id, algorithm: mod, binding: t_order{split} }}
      - {{ table: t_code, column: code, algorithm: hash_mod }}
      - {{ table: t_label, column: label, algorithm: hash_mod }}
    broadcast_tables: [t_country]
{settings}"
    );
    let yaml = common::sharding_config(&urls, &executor, "");
    World {
        shards,
        reference,
        tandem: Tandem::start_yaml(&yaml),
    }
}

/// A cell as text (`None` for NULL), as the text protocol carries it.
type Rows = Vec<Vec<Option<String>>>;

fn cell(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => Some(other.as_sql(true)),
    }
}

async fn rows(c: &mut Conn, sql: &str) -> Result<Rows, mysql_async::Error> {
    let rows: Vec<mysql_async::Row> = c.query(sql).await?;
    Ok(rows
        .into_iter()
        .map(|r| r.unwrap().iter().map(cell).collect())
        .collect())
}

fn code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Seeded rows with NULLs, duplicates, mixed-case and space-padded strings, negative
/// sharding values and ties.
fn data(rng: &mut StdRng) -> Vec<String> {
    const NAMES: &[&str] = &[
        "abc", "ABC", "abc ", "b", "B", "ä", "a", "Zed", "zed", "", "x y",
    ];
    let mut out = Vec::new();
    for c in 1..=3 {
        out.push(format!("INSERT INTO t_country VALUES ({c}, 'country {c}')"));
    }
    let mut item = 0;
    for id in 1..=160 {
        let user = rng.random_range(-6..30);
        let name = if rng.random_bool(0.1) {
            "NULL".to_string()
        } else {
            format!("'{}'", NAMES[rng.random_range(0..NAMES.len())])
        };
        let amount = if rng.random_bool(0.1) {
            "NULL".to_string()
        } else {
            format!(
                "{}.{:02}",
                rng.random_range(-20..200),
                rng.random_range(0..100)
            )
        };
        let qty = if rng.random_bool(0.15) {
            "NULL".to_string()
        } else {
            rng.random_range(0..8).to_string()
        };
        let country = rng.random_range(1..=4);
        let created = format!(
            "'2024-{:02}-{:02}'",
            rng.random_range(1..=12),
            rng.random_range(1..=28)
        );
        out.push(format!(
            "INSERT INTO t_order (id, user_id, name, amount, qty, country, created) VALUES ({id}, {user}, {name}, {amount}, {qty}, {country}, {created})"
        ));
        for _ in 0..rng.random_range(0..3) {
            item += 1;
            out.push(format!(
                "INSERT INTO t_item VALUES ({item}, {id}, {user}, 'sku{}')",
                rng.random_range(0..5)
            ));
        }
    }
    out
}

/// Loads the same rows through Tandem and into the reference.
async fn load(w: &World, seed: u64) -> (Conn, Conn) {
    let mut t = common::connect(&w.tandem.url("shop")).await;
    let mut r = common::connect(&mariadb().url(&w.reference)).await;
    let mut rng = StdRng::seed_from_u64(seed);
    for stmt in data(&mut rng) {
        if stmt.starts_with("INSERT INTO t_country") {
            // A broadcast table is written on every shard (a write Tandem refuses for now):
            // the copies are made directly.
            for s in &w.shards {
                mariadb().sql(&format!("USE {s}; {stmt}"));
            }
        } else {
            t.query_drop(&stmt)
                .await
                .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        }
        r.query_drop(&stmt).await.unwrap();
    }
    (t, r)
}

/// `sql` as a prepared statement: the integer literals of its predicates, HAVING and LIMIT
/// become `?` parameters (those of `ORDER BY 2, 1` stay: they name columns).
fn parameterize(sql: &str) -> (String, Vec<Value>) {
    let b = sql.as_bytes();
    let mut out = String::new();
    let mut params = Vec::new();
    let (mut i, mut in_list, mut ordering) = (0, false, false);
    while i < b.len() {
        let c = b[i];
        if c == b'\'' {
            let end = sql[i + 1..].find('\'').map_or(b.len(), |e| i + 2 + e);
            out.push_str(&sql[i..end]);
            i = end;
            continue;
        }
        let before = out.trim_end();
        let upper = before.to_ascii_uppercase();
        let starts_number =
            c.is_ascii_digit() || (c == b'-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()));
        let prev_ok =
            i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'.');
        if starts_number && prev_ok && !ordering {
            let operand = ["=", ">", "<", "BETWEEN", "AND", "LIMIT", "OFFSET"]
                .iter()
                .any(|w| upper.ends_with(w))
                || (in_list && (before.ends_with('(') || before.ends_with(',')))
                || (upper.contains(" LIMIT ") && before.ends_with(','));
            if operand {
                let mut end = i + 1;
                while end < b.len() && b[end].is_ascii_digit() {
                    end += 1;
                }
                if b.get(end) == Some(&b'.') {
                    // A decimal stays a literal.
                    end += 1;
                    while end < b.len() && b[end].is_ascii_digit() {
                        end += 1;
                    }
                    out.push_str(&sql[i..end]);
                    i = end;
                    continue;
                }
                params.push(Value::Int(sql[i..end].parse().unwrap()));
                out.push('?');
                i = end;
                continue;
            }
        }
        if upper.ends_with(" IN") && c == b'(' {
            in_list = true;
        }
        if c == b')' {
            in_list = false;
        }
        if upper.ends_with("ORDER BY") {
            ordering = true;
        }
        if upper.ends_with("LIMIT") {
            ordering = false;
        }
        out.push(c as char);
        i += 1;
    }
    (out, params)
}

async fn exec_rows(c: &mut Conn, sql: &str, params: &[Value]) -> Result<Rows, mysql_async::Error> {
    let rows: Vec<mysql_async::Row> = c.exec(sql, params.to_vec()).await?;
    Ok(rows
        .into_iter()
        .map(|r| r.unwrap().iter().map(cell).collect())
        .collect())
}

/// [`same`] for the prepared statement of `sql` ([`parameterize`]).
async fn same_prepared(
    t: &mut Conn,
    r: &mut Conn,
    sql: &str,
    ordered: bool,
) -> Result<bool, String> {
    let (ps, params) = parameterize(sql);
    let label = format!("{ps} {params:?}");
    let expected = exec_rows(r, &ps, &params).await;
    let got = exec_rows(t, &ps, &params).await;
    compare(&label, got, expected, ordered)
}

/// Tandem's answer `got` against the reference's. `Ok(true)`: the same; `Ok(false)`:
/// Tandem refused (1235).
fn compare(
    label: &str,
    got: Result<Rows, mysql_async::Error>,
    expected: Result<Rows, mysql_async::Error>,
    ordered: bool,
) -> Result<bool, String> {
    let expected = expected.map_err(|e| format!("reference: {label}: {e}"))?;
    let got = match got {
        Ok(g) => g,
        Err(e) if code(&e) == Some(1235) => return Ok(false),
        Err(e) => return Err(format!("{label}: Tandem failed: {e}")),
    };
    // DISTINCT over a case-insensitive, space-padding column keeps one of several equal
    // spellings (`abc`, `ABC`, `abc `; `a`, `ä` in utf8mb4_general_ci), whichever its scan
    // meets first: any of them is a right answer.
    let (got, expected) = if label.starts_with("SELECT DISTINCT") && label.contains("name") {
        let loose = |rows: Rows| -> Rows {
            rows.into_iter()
                .map(|r| {
                    r.into_iter()
                        .map(|c| c.map(|s| s.trim_end().to_lowercase().replace('ä', "a")))
                        .collect()
                })
                .collect()
        };
        (loose(got), loose(expected))
    } else {
        (got, expected)
    };
    let (got, expected) = if ordered {
        (got, expected)
    } else {
        (sorted(got), sorted(expected))
    };
    if got != expected {
        return Err(format!(
            "{label}\n  Tandem:    {got:?}\n  reference: {expected:?}"
        ));
    }
    Ok(true)
}

#[test]
fn literals_become_parameters() {
    let (ps, p) = parameterize(
        "SELECT a, COUNT(*) FROM t WHERE (u = -3 OR u IN (1, 2)) AND d < '2024-01-01' AND q BETWEEN 4 AND 5 GROUP BY a HAVING COUNT(*) > 1 ORDER BY 2 DESC, 1 LIMIT 3, 4",
    );
    assert_eq!(
        ps,
        "SELECT a, COUNT(*) FROM t WHERE (u = ? OR u IN (?, ?)) AND d < '2024-01-01' AND q BETWEEN ? AND ? GROUP BY a HAVING COUNT(*) > ? ORDER BY 2 DESC, 1 LIMIT ?, ?"
    );
    let ints: Vec<i64> = p
        .iter()
        .map(|v| match v {
            Value::Int(i) => *i,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(ints, [-3, 1, 2, 4, 5, 1, 3, 4]);
}

fn sorted(mut rows: Rows) -> Rows {
    rows.sort();
    rows
}

/// Runs `sql` on both sides. `Ok(true)`: same answer; `Ok(false)`: Tandem refused (1235).
async fn same(t: &mut Conn, r: &mut Conn, sql: &str, ordered: bool) -> Result<bool, String> {
    let expected = rows(r, sql).await;
    let got = rows(t, sql).await;
    compare(sql, got, expected, ordered)
}

/// A string sharding column places rows as its collation compares them (trailing spaces
/// do not count), and a number compared with it, which matches strings such as `'07'` and
/// `'7.0'`, goes to every shard. A column whose collation equates different bytes is not
/// placed at all.
#[tokio::test(flavor = "multi_thread")]
async fn string_sharding_values_place_as_their_column_compares() {
    let w = world("code");
    let mut t = common::connect(&w.tandem.url("shop")).await;
    let mut r = common::connect(&mariadb().url(&w.reference)).await;
    let codes = [
        "'abc'", "'abc '", "'abc  '", "'ABC'", "'7'", "'07'", "'7.0'", "' 7'", "''", "' '", "'42'",
    ];
    for (n, c) in codes.iter().enumerate() {
        let stmt = format!("INSERT INTO t_code VALUES ({c}, {n})");
        t.query_drop(&stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        r.query_drop(&stmt).await.unwrap();
    }
    // Several rows in one statement, prepared.
    let stmt = "INSERT INTO t_code VALUES (?, 100), (?, 101), (?, 102)";
    let params = vec![Value::from("abc "), Value::from("7"), Value::from("zz")];
    t.exec_drop(stmt, params.clone()).await.unwrap();
    r.exec_drop(stmt, params).await.unwrap();
    // A number stored in a string column is stored as text the number's digits may not
    // be (`7.50` as '7.50'): Tandem asks for the string.
    let e = t
        .query_drop("INSERT INTO t_code VALUES (7, 0)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1235), "{e}");
    let mut spread = std::collections::BTreeSet::new();
    for s in &w.shards {
        let mut c = common::connect(&mariadb().url(s)).await;
        let n: Vec<i64> = c.query("SELECT COUNT(*) FROM t_code").await.unwrap();
        if n[0] > 0 {
            spread.insert(s.clone());
        }
    }
    assert!(spread.len() > 1, "the rows spread over the shards");
    let queries = [
        "SELECT n FROM t_code WHERE code = 'abc'",
        "SELECT n FROM t_code WHERE code = 'abc   '",
        "SELECT n FROM t_code WHERE code = 'ABC'",
        "SELECT n FROM t_code WHERE code = 7",
        "SELECT n FROM t_code WHERE code = '7'",
        "SELECT n FROM t_code WHERE code = ''",
        "SELECT n FROM t_code WHERE code IN ('abc ', 7, 'zz')",
        "SELECT n FROM t_code WHERE code = 42 OR code = 'x'",
        "SELECT code, COUNT(*) FROM t_code GROUP BY code",
        "SELECT DISTINCT code FROM t_code",
        "SELECT COUNT(DISTINCT code) FROM t_code",
    ];
    for q in queries {
        assert_eq!(same(&mut t, &mut r, q, false).await, Ok(true), "{q}");
        assert_eq!(
            same_prepared(&mut t, &mut r, q, false).await,
            Ok(true),
            "{q}"
        );
    }
    for (q, expected) in [
        // 'abc', 'abc ', 'abc  ' and the prepared 'abc '.
        ("UPDATE t_code SET n = n + 1000 WHERE code = 'abc '", 4),
        // '7', '07', '7.0', ' 7' and the prepared '7'.
        ("DELETE FROM t_code WHERE code = 7", 5),
    ] {
        let before = t.affected_rows();
        t.query_drop(q).await.unwrap();
        r.query_drop(q).await.unwrap();
        assert_eq!(
            (t.affected_rows(), r.affected_rows()),
            (expected, expected),
            "{q} after {before}"
        );
    }
    assert_eq!(
        same(&mut t, &mut r, "SELECT code, n FROM t_code", false).await,
        Ok(true)
    );

    // `'a' = 'A'` under a case-insensitive collation: a hash of bytes cannot place its rows.
    t.query_drop("CREATE TABLE t_label (label VARCHAR(10) COLLATE utf8mb4_general_ci, n INT)")
        .await
        .unwrap();
    let e = t
        .query_drop("INSERT INTO t_label VALUES ('a', 1)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1235), "{e}");
    assert!(e.to_string().contains("t_label"), "{e}");
    let plan: Vec<mysql_async::Row> = t
        .query("EXPLAIN SELECT n FROM t_label WHERE label = 'a'")
        .await
        .unwrap();
    assert_eq!(plan.len(), SHARDS, "a read of t_label goes to every shard");
    let log = w.tandem.log();
    assert!(
        log.contains("t_label") && log.contains("utf8mb4_general_ci"),
        "the log says why t_label's rows cannot be placed"
    );
    // Found at start-up, the column is a configuration error.
    let mut tandem = w.tandem;
    tandem.kill9();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["--config", tandem.dir.join("tandem.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("t_label") && err.contains("utf8mb4_general_ci") && err.contains("_bin"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_live_on_the_shard_their_sharding_value_names() {
    let w = world("place");
    let (mut t, _r) = load(&w, 7).await;
    for (i, s) in w.shards.iter().enumerate() {
        let mut c = common::connect(&mariadb().url(s)).await;
        let users: Vec<i64> = c
            .query("SELECT DISTINCT user_id FROM t_order")
            .await
            .unwrap();
        assert!(!users.is_empty(), "shard {i} holds rows");
        for u in users {
            assert_eq!(
                u.rem_euclid(SHARDS as i64) as usize,
                i,
                "user {u} on shard {i}"
            );
        }
        let items: Vec<i64> = c
            .query("SELECT COUNT(*) FROM t_item i JOIN t_order o ON o.id = i.order_id")
            .await
            .unwrap();
        let all: Vec<i64> = c.query("SELECT COUNT(*) FROM t_item").await.unwrap();
        assert_eq!(items, all, "items sit beside their orders on shard {i}");
    }
    // A single table is found where it is.
    let note: Vec<String> = t.query("SELECT body FROM t_note").await.unwrap();
    assert_eq!(note, vec!["on shard 2".to_string()]);
}

/// Handwritten queries, one per feature: each must be answered and equal the reference's.
#[tokio::test(flavor = "multi_thread")]
async fn handwritten_queries_answer_as_one_database() {
    let w = world("hand");
    let (mut t, mut r) = load(&w, 11).await;
    let ordered = [
        "SELECT * FROM t_order ORDER BY id",
        "SELECT id, name FROM t_order ORDER BY name, id",
        "SELECT id, name FROM t_order ORDER BY name DESC, id DESC",
        "SELECT id, amount FROM t_order ORDER BY amount, id LIMIT 7",
        "SELECT id, amount FROM t_order ORDER BY amount DESC, id LIMIT 5, 10",
        "SELECT id, qty FROM t_order ORDER BY qty, created DESC, id LIMIT 10 OFFSET 3",
        "SELECT id FROM t_order ORDER BY user_id * 2, id LIMIT 9",
        "SELECT id, name n FROM t_order ORDER BY n, 1",
        "SELECT o.id, i.sku FROM t_order o JOIN t_item i ON o.user_id = i.user_id AND i.order_id = o.id ORDER BY i.sku, o.id, i.id",
        "SELECT o.id, c.name FROM t_order o JOIN t_country c ON c.id = o.country ORDER BY o.id",
        "SELECT user_id, COUNT(*), SUM(amount) FROM t_order GROUP BY user_id ORDER BY user_id",
        "SELECT user_id, MAX(qty) m FROM t_order GROUP BY user_id HAVING COUNT(*) > 2 ORDER BY m DESC, user_id",
        "SELECT qty, COUNT(*), SUM(amount), AVG(amount), MIN(created) FROM t_order GROUP BY qty",
        "SELECT qty, COUNT(*) c FROM t_order GROUP BY qty ORDER BY c DESC, qty",
        "SELECT country, SUM(amount) s FROM t_order GROUP BY country HAVING COUNT(*) > 3 AND (s IS NULL OR s < 500) ORDER BY MAX(qty), country LIMIT 1, 3",
        "SELECT country, qty FROM t_order GROUP BY country, qty HAVING MIN(amount) BETWEEN -10 AND 10.5 OR AVG(amount) NOT IN (1, 2) ORDER BY qty DESC, country",
        "SELECT DISTINCT country, qty FROM t_order ORDER BY qty, country DESC",
        "SELECT country, qty, COUNT(*) FROM t_order GROUP BY country, qty ORDER BY country DESC, qty LIMIT 3, 4",
        "SELECT COUNT(*) FROM t_order GROUP BY created ORDER BY created DESC LIMIT 5",
        "SELECT o.country, COUNT(*) FROM t_order o JOIN t_item i ON i.user_id = o.user_id AND i.order_id = o.id GROUP BY o.country",
        "SELECT COUNT(*), COUNT(qty), SUM(amount), MIN(amount), MAX(amount), MIN(created), MAX(qty) FROM t_order",
        "SELECT COUNT(*), SUM(qty) FROM t_order WHERE user_id > 100",
        "SELECT COUNT(DISTINCT user_id) FROM t_order",
        "SELECT AVG(amount), AVG(qty), AVG(user_id) FROM t_order",
        "SELECT AVG(qty) FROM t_order WHERE user_id > 100",
        "SELECT * FROM t_order WHERE user_id = 5 ORDER BY id",
        "SELECT * FROM t_order WHERE user_id IN (1, 2, -3) ORDER BY id",
        "SELECT * FROM t_order WHERE user_id BETWEEN 3 AND 4 OR user_id = 10 ORDER BY id",
        "SELECT * FROM t_order WHERE name = 'abc' ORDER BY id",
        "SELECT id FROM t_order WHERE amount IS NULL ORDER BY id",
        "SELECT status FROM (SELECT 1 AS status) AS x",
        "SELECT body FROM t_note",
    ];
    for sql in ordered {
        match same(&mut t, &mut r, sql, true).await {
            Ok(true) => {}
            Ok(false) => panic!("refused: {sql}"),
            Err(e) => panic!("{e}"),
        }
        match same_prepared(&mut t, &mut r, sql, true).await {
            Ok(true) => {}
            Ok(false) => panic!("prepared, refused: {sql}"),
            Err(e) => panic!("{e}"),
        }
    }
    for sql in [
        "SELECT DISTINCT user_id, name FROM t_order",
        "SELECT DISTINCT qty FROM t_order",
        "SELECT DISTINCT * FROM t_order WHERE qty > 1 ORDER BY id LIMIT 3, 4",
        "SELECT DISTINCT o.*, i.sku FROM t_order o JOIN t_item i ON i.user_id = o.user_id AND i.order_id = o.id",
        "SELECT DISTINCT country, created FROM t_order WHERE qty > 2",
        "SELECT * FROM t_order",
        "SELECT id FROM t_order LIMIT 1000",
    ] {
        assert!(
            same(&mut t, &mut r, sql, false).await.unwrap(),
            "refused: {sql}"
        );
    }
    // MIN and MAX of strings, and groups of strings: the database may return any of
    // several equal spellings.
    for sql in [
        "SELECT MIN(name), MAX(name) FROM t_order",
        "SELECT name, COUNT(*) FROM t_order GROUP BY name ORDER BY name",
        "SELECT DISTINCT name FROM t_order ORDER BY name",
        "SELECT DISTINCT name FROM t_order ORDER BY name DESC LIMIT 2, 3",
    ] {
        let norm = |rows: Rows| -> Rows {
            rows.into_iter()
                .map(|r| {
                    r.into_iter()
                        .map(|c| c.map(|s| s.trim_end().to_lowercase()))
                        .collect()
                })
                .collect()
        };
        assert_eq!(
            norm(rows(&mut t, sql).await.unwrap()),
            norm(rows(&mut r, sql).await.unwrap()),
            "{sql}"
        );
    }
}

/// An ORDER BY over groups that span shards holds their combined rows: at most
/// `max_merge_rows` of them, or the best `offset + count` under a LIMIT.
#[tokio::test(flavor = "multi_thread")]
async fn held_sorts_hold_at_most_their_cap() {
    let w = world_with("held", "    max_merge_rows: 6\n");
    let (mut t, mut r) = load(&w, 5).await;
    let sql = "SELECT created, qty, COUNT(*) c FROM t_order GROUP BY created, qty ORDER BY c DESC, created, qty";
    let groups = rows(&mut r, sql).await.unwrap().len();
    assert!(groups > 6, "{groups} groups");
    let e = t.query_drop(sql).await.unwrap_err();
    assert_eq!(code(&e), Some(1038), "{e}");
    assert!(e.to_string().contains("max_merge_rows"), "{e}");
    // Under a LIMIT only the first rows are held.
    let limited = format!("{sql} LIMIT 2, 3");
    assert!(
        same(&mut t, &mut r, &limited, true).await.unwrap(),
        "{limited}"
    );
    assert!(
        same_prepared(&mut t, &mut r, &limited, true).await.unwrap(),
        "{limited}"
    );
    let one: i64 = t.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
}

/// What Tandem cannot answer exactly is refused with 1235, naming why, and the session
/// goes on.
#[tokio::test(flavor = "multi_thread")]
async fn what_is_not_exact_is_refused() {
    let w = world("refuse");
    let (mut t, _r) = load(&w, 3).await;
    for (sql, why) in [
        (
            "SELECT qty, COUNT(*) c FROM t_order GROUP BY qty ORDER BY MAX(name)",
            "MIN or MAX of a string",
        ),
        (
            "SELECT country, COUNT(*) FROM t_order GROUP BY country HAVING MAX(name) > 'a'",
            "HAVING compares 'a'",
        ),
        (
            "SELECT country, COUNT(*) FROM t_order GROUP BY country HAVING MAX(name) > 1",
            "HAVING compares a value of a type other than a number",
        ),
        ("SELECT DISTINCT COUNT(*) FROM t_order GROUP BY qty", "DISTINCT"),
        ("SELECT DISTINCT c.* FROM t_order o JOIN t_country c ON c.id = o.country", "DISTINCT"),
        ("SELECT AVG(DISTINCT amount) FROM t_order", "AVG"),
        ("SELECT COUNT(DISTINCT name) FROM t_order", "COUNT(DISTINCT"),
        (
            "SELECT * FROM t_order WHERE id IN (SELECT order_id FROM t_item)",
            "subquery",
        ),
        (
            "SELECT * FROM t_order o JOIN t_item i ON o.id = i.order_id",
            "sharding columns",
        ),
        (
            "SELECT * FROM t_order o JOIN t_note n ON n.id = o.id",
            "single table",
        ),
        (
            "UPDATE t_order SET user_id = 2 WHERE user_id = 1",
            "sharding column",
        ),
        ("DELETE FROM t_order ORDER BY id LIMIT 2", "LIMIT"),
        (
            "UPDATE t_country c JOIN t_order o ON o.country = c.id SET c.name = 'x' WHERE o.user_id = 1",
            "broadcast",
        ),
        (
            "INSERT INTO t_order (id, user_id) VALUES (1001, 1) ON DUPLICATE KEY UPDATE user_id = 3",
            "sharding column",
        ),
        ("SELECT 1; SELECT 2", "several statements"),
        // Statements Tandem runs without planning them must be what they seem.
        ("BEGIN; DELETE FROM t_order", "several statements"),
        ("SET @a = 1; DELETE FROM t_order", "several statements"),
        ("SET @a = 1 /*!, @b = 2 */", "executable comment"),
        (
            "SET STATEMENT max_statement_time = 5 FOR UPDATE t_order SET qty = 0",
            "SET STATEMENT",
        ),
    ] {
        let e = t.query_drop(sql).await.expect_err(sql);
        match &e {
            mysql_async::Error::Server(s) => {
                assert_eq!(s.code, 1235, "{sql}: {e}");
                assert!(s.message.contains(why), "{sql}: {}", s.message);
            }
            other => panic!("{sql}: {other}"),
        }
        let one: i64 = t.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1);
    }
    // What a prepared statement cannot plan is refused at execution.
    let e = t
        .exec_drop("SELECT COUNT(*) FROM t_order WHERE id IN (SELECT order_id FROM t_item WHERE user_id > ?)", (1,))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1235));
    let e = t.prep("BEGIN").await.unwrap_err();
    assert_eq!(code(&e), Some(1235));
    // Only the logical database exists.
    let e = t.query_drop("USE somewhere_else").await.unwrap_err();
    assert_eq!(code(&e), Some(1049));
    t.query_drop("USE shop").await.unwrap();
}

/// A transaction commits and rolls back on every shard it wrote on; reads on other shards
/// may join it; session state reaches every shard; prepared writes go where their
/// parameters say.
#[tokio::test(flavor = "multi_thread")]
async fn transactions_and_session_state_span_shards() {
    let w = world("txn");
    let (mut t, _r) = load(&w, 5).await;
    // A single table's lock is taken on its shard; UNLOCK TABLES reaches it wherever the
    // session's statements went since.
    t.query_drop("LOCK TABLES t_note WRITE").await.unwrap();
    let mut other = common::connect(&w.tandem.url("shop")).await;
    other.query_drop("SET lock_wait_timeout = 2").await.unwrap();
    let _: Vec<i64> = other
        .query("SELECT id FROM t_order WHERE user_id = 1")
        .await
        .unwrap();
    let e = other
        .query_drop("UPDATE t_note SET body = body WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1205), "the lock holds: {e}");
    // The session's last statement is on another shard.
    let _: Vec<i64> = t
        .query("SELECT id FROM t_order WHERE user_id = 1")
        .await
        .unwrap();
    t.query_drop("UNLOCK TABLES").await.unwrap();
    other
        .query_drop("UPDATE t_note SET body = body WHERE id = 1")
        .await
        .unwrap();
    let count = |user: i64| format!("SELECT COUNT(*) FROM t_order WHERE user_id = {user}");
    t.query_drop("BEGIN").await.unwrap();
    t.query_drop("INSERT INTO t_order (id, user_id, name) VALUES (5001, 101, 'txn')")
        .await
        .unwrap();
    let _: Vec<i64> = t.query("SELECT COUNT(*) FROM t_order").await.unwrap();
    t.query_drop("INSERT INTO t_order (id, user_id, name) VALUES (5002, 102, 'txn')")
        .await
        .unwrap();
    t.query_drop("ROLLBACK").await.unwrap();
    for user in [101, 102] {
        let n: i64 = t.query_first(count(user)).await.unwrap().unwrap();
        assert_eq!(n, 0, "rolled back on every shard");
    }
    t.query_drop("START TRANSACTION").await.unwrap();
    t.query_drop("INSERT INTO t_order (id, user_id, name) VALUES (5003, 103, 'txn')")
        .await
        .unwrap();
    t.query_drop("UPDATE t_order SET qty = 99 WHERE user_id = 103")
        .await
        .unwrap();
    t.query_drop("COMMIT").await.unwrap();
    let n: i64 = t.query_first(count(103)).await.unwrap().unwrap();
    assert_eq!(n, 1, "committed");
    let shard3 = &w.shards[103 % SHARDS];
    let direct: Vec<i64> = common::connect(&mariadb().url(shard3))
        .await
        .query("SELECT qty FROM t_order WHERE id = 5003")
        .await
        .unwrap();
    assert_eq!(direct, vec![99]);
    // A prepared write goes to the shard its parameters name; one statement serves many.
    let insert = t
        .prep("INSERT INTO t_order (id, user_id, name, created) VALUES (?, ?, ?, ?)")
        .await
        .unwrap();
    for u in 200..208i64 {
        t.exec_drop(&insert, (6000 + u, u, "p", "2024-05-06"))
            .await
            .unwrap();
    }
    t.exec_drop("UPDATE t_order SET qty = ? WHERE user_id = ?", (5, 203))
        .await
        .unwrap();
    for u in 200..208i64 {
        let shard = &w.shards[u as usize % SHARDS];
        let found: Vec<(i64, Option<i64>)> = common::connect(&mariadb().url(shard))
            .await
            .query(format!(
                "SELECT user_id, qty FROM t_order WHERE id = {}",
                6000 + u
            ))
            .await
            .unwrap();
        let qty = (u == 203).then_some(5);
        assert_eq!(found, vec![(u, qty)], "user {u} on its shard");
    }
    // Settings that make the server read text otherwise than the planner does are refused
    // until restored.
    t.query_drop("SET sql_mode = 'ANSI_QUOTES'").await.unwrap();
    let e = t
        .query_drop("SELECT id FROM t_order WHERE user_id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1235), "{e}");
    t.query_drop("SET sql_mode = DEFAULT").await.unwrap();
    t.query_drop("SELECT id FROM t_order WHERE user_id = 1")
        .await
        .unwrap();
    // Session and user variables reach every shard the session uses, now and later.
    t.query_drop("SET @@session.div_precision_increment = 2, @u = 7")
        .await
        .unwrap();
    for user in 0..SHARDS {
        let third: Vec<String> = t
            .query(format!(
                "SELECT 1/3 FROM t_order WHERE user_id = {user} LIMIT 1"
            ))
            .await
            .unwrap();
        assert!(third.iter().all(|v| v == "0.33"), "shard {user}: {third:?}");
    }
    let by_var: Vec<i64> = t
        .query("SELECT COUNT(*) FROM t_order WHERE user_id = @u")
        .await
        .unwrap();
    let by_value: Vec<i64> = t
        .query("SELECT COUNT(*) FROM t_order WHERE user_id = 7")
        .await
        .unwrap();
    assert_eq!(by_var, by_value);
    // A limit every shard would apply on its own is refused, not multiplied.
    let e = t.query_drop("SET sql_select_limit = 3").await.unwrap_err();
    assert_eq!(code(&e), Some(1235));
}

/// DDL reaches every physical table of a sharded table, and a new single table lives on
/// one shard.
#[tokio::test(flavor = "multi_thread")]
async fn ddl_reaches_every_shard() {
    let w = world("ddl");
    let mut t = common::connect(&w.tandem.url("shop")).await;
    t.query_drop("ALTER TABLE t_order ADD COLUMN note VARCHAR(10)")
        .await
        .unwrap();
    for s in &w.shards {
        let cols: Vec<String> = common::connect(&mariadb().url(s))
            .await
            .query("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 't_order' AND COLUMN_NAME = 'note'")
            .await
            .unwrap();
        assert_eq!(cols.len(), 1, "{s}");
    }
    // An INSERT without a column list finds the sharding column by the table's columns.
    t.query_drop("INSERT INTO t_order VALUES (1, 6, 'n', 1.00, 1, 1, '2024-01-01', 'x')")
        .await
        .unwrap();
    let on: Vec<i64> = common::connect(&mariadb().url(&w.shards[6 % SHARDS]))
        .await
        .query("SELECT id FROM t_order")
        .await
        .unwrap();
    assert_eq!(on, vec![1]);
    t.query_drop("CREATE TABLE t_new (id INT PRIMARY KEY)")
        .await
        .unwrap();
    t.query_drop("INSERT INTO t_new VALUES (1), (2)")
        .await
        .unwrap();
    let n: i64 = t
        .query_first("SELECT COUNT(*) FROM t_new")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 2);
    t.query_drop("DROP TABLE t_new").await.unwrap();
}

/// A seeded generator of SELECTs over the sharded tables: predicates on the sharding
/// column and others, joins of bound tables and of the broadcast table, ORDER BY over
/// several columns and directions, LIMIT/OFFSET, aggregates, GROUP BY with HAVING,
/// DISTINCT. Every answer must equal the reference's; refusals are counted and must stay
/// a minority.
#[tokio::test(flavor = "multi_thread")]
async fn random_queries_answer_as_one_database() {
    let seed: u64 = std::env::var("TANDEM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261203);
    let cases: usize = std::env::var("TANDEM_SHARDING_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    eprintln!("sharding generator seed {seed}, {cases} queries");
    let w = world("gen");
    differential(&w, seed, cases).await;
}

/// Loads seeded rows through Tandem and into the reference, then runs `cases` random
/// queries against both, in text and prepared: every answer the same, most answered.
async fn differential(w: &World, seed: u64, cases: usize) {
    let (mut t, mut r) = load(w, seed).await;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for _ in 0..cases {
        let (sql, ordered) = random_select(&mut rng);
        match same(&mut t, &mut r, &sql, ordered).await {
            Ok(true) => *outcomes.entry("same").or_default() += 1,
            Ok(false) => *outcomes.entry("refused").or_default() += 1,
            Err(e) => failures.push(e),
        }
        match same_prepared(&mut t, &mut r, &sql, ordered).await {
            Ok(true) => *outcomes.entry("prepared same").or_default() += 1,
            Ok(false) => *outcomes.entry("prepared refused").or_default() += 1,
            Err(e) => failures.push(e),
        }
    }
    eprintln!("{outcomes:?}");
    assert!(
        failures.is_empty(),
        "{} mismatches (seed {seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    for what in ["same", "prepared same"] {
        let answered = outcomes.get(what).copied().unwrap_or(0);
        assert!(
            answered * 2 > cases,
            "most queries are answered: {outcomes:?}"
        );
    }
}

/// `t_order` and `t_item` split into two physical tables on each of the four shards (eight
/// slots by `mod`): rows land in their slot's physical table, and reads, writes and DDL
/// answer as one database would.
#[tokio::test(flavor = "multi_thread")]
async fn split_tables_answer_as_one_database() {
    let seed: u64 = std::env::var("TANDEM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261205);
    let w = world_of("split", "", 2);
    differential(&w, seed, 150).await;
    // user_id mod 8 = 2 × shard + table.
    for (i, s) in w.shards.iter().enumerate() {
        let mut c = common::connect(&mariadb().url(s)).await;
        for k in 0..2 {
            let users: Vec<i64> = c
                .query(format!("SELECT user_id FROM t_order_{k}"))
                .await
                .unwrap();
            assert!(!users.is_empty(), "t_order_{k} on shard {i} has rows");
            assert!(
                users.iter().all(|u| u.rem_euclid(8) as usize == 2 * i + k),
                "t_order_{k} on shard {i}: {users:?}"
            );
        }
    }
    let mut t = common::connect(&w.tandem.url("shop")).await;
    let mut r = common::connect(&mariadb().url(&w.reference)).await;
    // A split table's definition is shown under its own name, as one database shows it.
    for sql in ["SHOW CREATE TABLE t_order", "show create table `t_item`"] {
        let shown: Option<(String, String)> = t.query_first(sql).await.unwrap();
        let reference: Option<(String, String)> = r.query_first(sql).await.unwrap();
        assert_eq!(shown, reference, "{sql}");
    }
    // Its indexes too (table, key, position, column; the statistics are a shard's).
    let keys = |rows: Rows| -> Rows {
        rows.into_iter()
            .map(|r| [0, 2, 3, 4].iter().map(|&i| r[i].clone()).collect())
            .collect()
    };
    for sql in ["SHOW INDEX FROM t_order", "SHOW KEYS IN t_item"] {
        let shown = keys(rows(&mut t, sql).await.unwrap());
        assert_eq!(shown, keys(rows(&mut r, sql).await.unwrap()), "{sql}");
        assert!(!shown.is_empty(), "{sql}");
    }
    for stmt in [
        "UPDATE t_order SET qty = qty + 1 WHERE user_id IN (3, 4, 11)",
        "UPDATE t_order SET t_order.name = 'upd' WHERE user_id BETWEEN 5 AND 6",
        "DELETE FROM t_order WHERE user_id = 7",
        "DELETE FROM t_item WHERE sku = 'sku1'",
        "INSERT INTO t_order (id, user_id, name) VALUES (1001, 0, 'n0'), (1002, 1, 'n1'), (1003, 9, 'n9'), (1004, 2, 'n2')",
    ] {
        let a = t.query_iter(stmt).await.unwrap().affected_rows();
        let b = r.query_iter(stmt).await.unwrap().affected_rows();
        assert_eq!(a, b, "{stmt}");
    }
    // Slots 0 and 1 are shard 0's two tables: a transaction over both rolls back whole.
    t.query_drop("BEGIN").await.unwrap();
    t.query_drop("INSERT INTO t_order (id, user_id) VALUES (2001, 8), (2002, 17)")
        .await
        .unwrap();
    t.query_drop("UPDATE t_order SET qty = 100 WHERE user_id IN (8, 17)")
        .await
        .unwrap();
    t.query_drop("ROLLBACK").await.unwrap();
    for q in [
        "SELECT id, user_id, name, qty FROM t_order ORDER BY id",
        "SELECT COUNT(*), SUM(qty), MIN(name), MAX(amount) FROM t_order",
        "SELECT user_id, COUNT(*) FROM t_order GROUP BY user_id ORDER BY user_id",
        "SELECT o.id, i.sku FROM t_order o JOIN t_item i ON o.user_id = i.user_id AND o.id = i.order_id ORDER BY o.id, i.id",
        "SELECT t_order.id FROM t_order WHERE t_order.user_id IN (0, 1, 8) ORDER BY t_order.id LIMIT 5",
        "SELECT id FROM t_order WHERE user_id = 9 ORDER BY id",
    ] {
        assert_eq!(same(&mut t, &mut r, q, true).await, Ok(true), "{q}");
    }
    let alter = "ALTER TABLE t_order ADD COLUMN note VARCHAR(10)";
    t.query_drop(alter).await.unwrap();
    r.query_drop(alter).await.unwrap();
    for q in [
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME",
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 't_order%' ORDER BY TABLE_NAME, ORDINAL_POSITION",
    ] {
        assert_eq!(same(&mut t, &mut r, q, true).await, Ok(true), "{q}");
    }
    for s in &w.shards {
        let n: i64 = common::connect(&mariadb().url(s))
            .await
            .query_first(
                "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME IN ('t_order_0', 't_order_1') AND COLUMN_NAME = 'note'",
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 2, "{s}");
    }
    // The logical database shows the table, not its physical tables.
    let tables: Vec<String> = t.query("SHOW TABLES").await.unwrap();
    assert!(tables.contains(&"t_order".to_string()), "{tables:?}");
    assert!(
        !tables.iter().any(|t| t.starts_with("t_order_")),
        "{tables:?}"
    );
    let fields: Vec<mysql_async::Row> = t.query("SHOW COLUMNS FROM t_order").await.unwrap();
    assert!(fields
        .iter()
        .any(|f| f.get::<String, _>(0).as_deref() == Some("note")));
    let explain: Vec<(String, String, String)> = t
        .query("EXPLAIN SELECT * FROM t_order WHERE user_id = 5")
        .await
        .unwrap();
    assert_eq!(
        explain,
        vec![(
            "s2".to_string(),
            "SELECT * FROM t_order_1 AS t_order WHERE user_id = 5".to_string(),
            "relay".to_string()
        )]
    );
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

fn predicate(rng: &mut StdRng, q: &str) -> String {
    let u = |rng: &mut StdRng| rng.random_range(-7..32);
    match rng.random_range(0..9) {
        0 => format!("{q}user_id = {}", u(rng)),
        1 => format!("{q}user_id IN ({}, {}, {})", u(rng), u(rng), u(rng)),
        2 => {
            let a = u(rng);
            format!("{q}user_id BETWEEN {a} AND {}", a + rng.random_range(0..6))
        }
        3 => format!("{q}user_id > {}", u(rng)),
        4 => format!("{q}qty >= {}", rng.random_range(0..8)),
        5 => format!("{q}name = '{}'", pick(rng, &["abc", "B", "zed", "ä", ""])),
        6 => format!("{q}amount IS NULL"),
        7 => format!("{q}created < '2024-{:02}-01'", rng.random_range(1..=12)),
        _ => format!("{q}name LIKE '{}%'", pick(rng, &["a", "Z", "x"])),
    }
}

fn filter(rng: &mut StdRng, q: &str) -> String {
    match rng.random_range(0..5) {
        0 => String::new(),
        1 | 2 => format!(" WHERE {}", predicate(rng, q)),
        3 => format!(" WHERE {} AND {}", predicate(rng, q), predicate(rng, q)),
        _ => format!(" WHERE ({} OR {})", predicate(rng, q), predicate(rng, q)),
    }
}

/// A random SELECT, and whether its rows come in a total order.
/// A HAVING condition over a group's aggregates.
fn having(rng: &mut StdRng) -> String {
    let one = |rng: &mut StdRng| match rng.random_range(0..7) {
        0 => format!("COUNT(*) > {}", rng.random_range(0..4)),
        1 => format!("SUM(o.amount) < {}", rng.random_range(-50..400)),
        2 => format!("MAX(o.qty) >= {}", rng.random_range(0..8)),
        3 => format!(
            "COUNT(*) BETWEEN {} AND {}",
            rng.random_range(0..3),
            rng.random_range(1..6)
        ),
        4 => format!("AVG(o.amount) > {}", rng.random_range(-5..60)),
        5 => "MIN(o.amount) IS NULL".to_string(),
        _ => format!("NOT (COUNT(o.qty) = {})", rng.random_range(0..3)),
    };
    match rng.random_range(0..4) {
        0 => format!("{} AND {}", one(rng), one(rng)),
        1 => format!("{} OR {}", one(rng), one(rng)),
        _ => one(rng),
    }
}

fn random_select(rng: &mut StdRng) -> (String, bool) {
    let kind = rng.random_range(0..10);
    let (from, q) = match rng.random_range(0..6) {
        0 => (
            " FROM t_order o JOIN t_item i ON o.user_id = i.user_id AND i.order_id = o.id"
                .to_string(),
            "o.",
        ),
        1 => (
            " FROM t_order o JOIN t_country c ON c.id = o.country".to_string(),
            "o.",
        ),
        _ => (" FROM t_order o".to_string(), "o."),
    };
    let where_ = filter(rng, q);
    match kind {
        // Aggregates without GROUP BY.
        0 | 1 => {
            let mut items = Vec::new();
            for _ in 0..rng.random_range(1..4) {
                items.push(pick(
                    rng,
                    &[
                        "COUNT(*)",
                        "COUNT(o.qty)",
                        "SUM(o.amount)",
                        "SUM(o.qty)",
                        "MIN(o.amount)",
                        "MAX(o.amount)",
                        "MIN(o.created)",
                        "MAX(o.qty)",
                        "COUNT(DISTINCT o.user_id)",
                        "AVG(o.qty)",
                    ],
                ));
            }
            (format!("SELECT {}{from}{where_}", items.join(", ")), true)
        }
        // GROUP BY the sharding column (with HAVING), or other columns, whose groups
        // span shards; with or without an order and a limit.
        2 | 3 => {
            let aggs = [
                pick(
                    rng,
                    &["COUNT(*)", "SUM(o.amount)", "MAX(o.qty)", "MIN(o.created)"],
                ),
                pick(
                    rng,
                    &[
                        "AVG(o.amount)",
                        "COUNT(o.qty)",
                        "MIN(o.amount)",
                        "SUM(o.qty)",
                    ],
                ),
            ];
            let agg = aggs[..rng.random_range(1..=2)].join(", ");
            let group = pick(
                rng,
                &[
                    "o.user_id",
                    "o.user_id, o.country",
                    "o.qty",
                    "o.country",
                    "o.created, o.qty",
                    "o.country, o.qty",
                ],
            );
            let by_key = group.starts_with("o.user_id");
            let having = if rng.random_bool(0.4) {
                format!(" HAVING {}", having(rng))
            } else {
                String::new()
            };
            let desc = |g: &str| {
                g.split(", ")
                    .map(|c| format!("{c} DESC"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let cols = if rng.random_bool(0.8) {
                format!("{group}, ")
            } else {
                String::new()
            };
            let (order, total) = match rng.random_range(0..4) {
                0 => (format!(" ORDER BY {group}"), true),
                1 => (format!(" ORDER BY {}", desc(group)), true),
                2 if by_key && !group.contains(',') && !cols.is_empty() => {
                    (" ORDER BY 2 DESC, 1".to_string(), true)
                }
                // An aggregate first, then the groups: a total order Tandem sorts by.
                2 => (
                    format!(
                        " ORDER BY {}{}, {group}",
                        pick(
                            rng,
                            &["COUNT(*)", "SUM(o.amount)", "MAX(o.qty)", "AVG(o.qty)"]
                        ),
                        pick(rng, &["", " DESC"])
                    ),
                    true,
                ),
                _ => (String::new(), false),
            };
            let limit = if total && rng.random_bool(0.5) {
                match rng.random_range(0..2) {
                    0 => format!(" LIMIT {}", rng.random_range(0..6)),
                    _ => format!(
                        " LIMIT {}, {}",
                        rng.random_range(0..6),
                        rng.random_range(0..6)
                    ),
                }
            } else {
                String::new()
            };

            (
                format!("SELECT {cols}{agg}{from}{where_} GROUP BY {group}{having}{order}{limit}"),
                total,
            )
        }
        // DISTINCT.
        4 => (
            format!(
                "SELECT DISTINCT {}{from}{where_}",
                pick(
                    rng,
                    &[
                        "o.user_id, o.name",
                        "o.user_id",
                        "o.qty",
                        "o.country, o.created",
                        "o.user_id, o.qty",
                        "o.*"
                    ]
                )
            ),
            false,
        ),
        // Plain rows, ordered by random keys, a total order when id ends it.
        _ => {
            let cols = pick(
                rng,
                &[
                    "o.*",
                    "o.id, o.name",
                    "o.id, o.amount, o.user_id",
                    "o.id, o.created, o.qty",
                    "o.id, o.name AS label",
                ],
            );
            let mut keys = Vec::new();
            for _ in 0..rng.random_range(0..3) {
                keys.push(format!(
                    "{}{}",
                    pick(
                        rng,
                        &[
                            "o.name",
                            "o.amount",
                            "o.qty",
                            "o.created",
                            "o.user_id",
                            "o.country"
                        ]
                    ),
                    pick(rng, &["", " ASC", " DESC"])
                ));
            }
            let total = rng.random_bool(0.8);
            if total {
                keys.push(format!("o.id{}", pick(rng, &["", " DESC"])));
            }
            if from.contains("t_item") && total {
                keys.push("i.id".into());
            }
            let order = if keys.is_empty() {
                String::new()
            } else {
                format!(" ORDER BY {}", keys.join(", "))
            };
            let limit = if total && rng.random_bool(0.6) {
                match rng.random_range(0..3) {
                    0 => format!(" LIMIT {}", rng.random_range(0..20)),
                    1 => format!(
                        " LIMIT {}, {}",
                        rng.random_range(0..30),
                        rng.random_range(0..20)
                    ),
                    _ => format!(
                        " LIMIT {} OFFSET {}",
                        rng.random_range(0..20),
                        rng.random_range(0..30)
                    ),
                }
            } else {
                String::new()
            };
            let cols = if from.contains("t_item") && cols == "o.*" {
                "o.*, i.sku"
            } else {
                cols
            };
            (format!("SELECT {cols}{from}{where_}{order}{limit}"), total)
        }
    }
}

/// The logical database looks like one database: its name, its tables (of every shard,
/// each once), per-table SHOWs answered by a shard that has the table, and EXPLAIN.
#[tokio::test(flavor = "multi_thread")]
async fn the_logical_database_looks_real() {
    let w = world("logical");
    let (mut t, _r) = load(&w, 7).await;
    let db: Option<String> = t.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(db.as_deref(), Some("shop"));
    let dbs: Vec<String> = t.query("SHOW DATABASES").await.unwrap();
    assert_eq!(dbs, ["information_schema", "shop"]);
    let tables: Vec<String> = t.query("SHOW TABLES").await.unwrap();
    assert_eq!(
        tables,
        ["t_code", "t_country", "t_item", "t_note", "t_order"]
    );
    let full: Vec<(String, String)> = t.query("SHOW FULL TABLES LIKE 't\\_o%'").await.unwrap();
    // SHOW TABLE STATUS: the logical database's tables, each once, as one database lists
    // them (Tandem's undo log, split tables' physical tables and other shards' databases
    // not among them).
    let mut reference = common::connect(&mariadb().url(&w.reference)).await;
    let names = |rows: Vec<mysql_async::Row>| -> Vec<String> {
        rows.into_iter()
            .map(|r| r.get::<String, _>("Name").unwrap_or_default())
            .collect()
    };
    for sql in [
        "SHOW TABLE STATUS",
        "SHOW TABLE STATUS FROM shop LIKE 't\\_o%'",
    ] {
        let shown = names(t.query(sql).await.unwrap());
        let sql_ref = sql.replace(" FROM shop", "");
        let one = names(reference.query(&sql_ref).await.unwrap());
        assert_eq!(shown, one, "{sql}");
    }
    assert_eq!(full, [("t_order".to_string(), "BASE TABLE".to_string())]);
    let e = t
        .query_drop("SHOW TABLES FROM elsewhere")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1235), "{e}");
    // The single table lives on shard 2 only: its SHOWs go there.
    for sql in [
        "SHOW COLUMNS FROM t_note",
        "DESCRIBE t_note",
        "SHOW CREATE TABLE t_note",
        "SHOW INDEX FROM t_note",
        "SHOW COLUMNS FROM t_order",
        "DESC t_order",
    ] {
        let rows: Vec<mysql_async::Row> =
            t.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(!rows.is_empty(), "{sql}");
    }
    let columns: Vec<String> = t
        .query("SHOW COLUMNS FROM t_order")
        .await
        .unwrap()
        .into_iter()
        .map(|r: mysql_async::Row| r.get::<String, _>(0).unwrap())
        .collect();
    assert_eq!(columns[..3], ["id", "user_id", "name"]);
    // EXPLAIN: one row per shard statement.
    let plan: Vec<(String, String, String)> = t
        .query("EXPLAIN SELECT id FROM t_order WHERE user_id = 5")
        .await
        .unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].0, "s1");
    let plan: Vec<(String, String, String)> = t
        .query("EXPLAIN SELECT id FROM t_order ORDER BY id LIMIT 3")
        .await
        .unwrap();
    assert_eq!(plan.len(), SHARDS);
    assert!(
        plan[0].2.contains("merge-sort") && plan[0].2.contains("limit 3"),
        "{plan:?}"
    );
    let plan: Vec<(String, String, String)> = t
        .query("EXPLAIN INSERT INTO t_order (id, user_id) VALUES (1, 1), (2, 2)")
        .await
        .unwrap();
    assert_eq!(
        plan.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["s1", "s2"]
    );
    assert!(plan[0].1.ends_with("VALUES (1, 1)"), "{plan:?}");
    let e = t
        .query_drop("EXPLAIN SELECT DISTINCT qty, COUNT(*) FROM t_order GROUP BY qty")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1235), "{e}");
}

/// `information_schema` answers for the logical database: its tables (a sharded or
/// broadcast table once, a single table from its home shard), under its name, as the
/// reference database's catalog does under the reference's; in text and prepared
/// statements. What cannot be answered so is refused.
#[tokio::test(flavor = "multi_thread")]
async fn information_schema_describes_the_logical_database() {
    let w = world("catalog");
    let mut t = common::connect(&w.tandem.url("shop")).await;
    let mut r = common::connect(&mariadb().url(&w.reference)).await;
    // A single table created through Tandem after start-up.
    let memo = "CREATE TABLE t_memo (id INT PRIMARY KEY, note VARCHAR(30), KEY (note))";
    t.query_drop(memo).await.unwrap();
    r.query_drop(memo).await.unwrap();
    // The reference's answers name the reference database where Tandem's name `shop`.
    let logical = |rows: Rows| -> Rows {
        rows.into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|c| match c {
                        Some(v) if v == w.reference => Some("shop".to_string()),
                        other => other,
                    })
                    .collect()
            })
            .collect()
    };
    let queries: &[(&str, bool)] = &[
        ("SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME", true),
        ("SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = {db}", false),
        ("select table_name from information_schema.tables where table_schema = {db} order by table_name limit 2 offset 1", true),
        ("SELECT table_name, column_name, ordinal_position, data_type, column_type, is_nullable, column_key FROM information_schema.columns WHERE table_schema = DATABASE() ORDER BY table_name, ordinal_position", true),
        ("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()", true),
        ("SELECT c.TABLE_NAME, COUNT(*) FROM information_schema.COLUMNS c WHERE c.TABLE_SCHEMA = DATABASE() GROUP BY c.TABLE_NAME ORDER BY c.TABLE_NAME", true),
        ("SELECT DISTINCT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()", false),
        ("SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {db} AND TABLE_NAME = 't_note' ORDER BY ORDINAL_POSITION", true),
        ("SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('t_memo', 't_order') ORDER BY INDEX_NAME, SEQ_IN_INDEX", true),
        ("SELECT * FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = DATABASE()", false),
        ("SELECT CONSTRAINT_SCHEMA, CONSTRAINT_NAME, TABLE_NAME, CONSTRAINT_TYPE FROM information_schema.TABLE_CONSTRAINTS WHERE TABLE_SCHEMA = DATABASE()", false),
        ("SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ({db}, 'information_schema')", false),
        ("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'information_schema'", true),
        ("SELECT CHARACTER_SET_NAME, MAXLEN FROM information_schema.CHARACTER_SETS WHERE CHARACTER_SET_NAME LIKE 'utf8%' ORDER BY 1", true),
        ("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 't\\_%o%' ORDER BY TABLE_NAME DESC", true),
    ];
    for &(sql, ordered) in queries {
        let ours = sql.replace("{db}", "'shop'");
        let theirs = sql.replace("{db}", &format!("'{}'", w.reference));
        let expected = rows(&mut r, &theirs).await.map(logical);
        let got = rows(&mut t, &ours).await;
        assert!(
            compare(&ours, got, expected, ordered).unwrap(),
            "{ours}: refused"
        );
    }
    // Prepared, with the database as a parameter.
    let ps = "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME";
    let got = exec_rows(&mut t, ps, &[Value::from("shop")]).await;
    let expected = exec_rows(&mut r, ps, &[Value::from(w.reference.as_str())]).await;
    assert!(compare(ps, got, expected, true).unwrap());
    let names: Vec<String> = t
        .query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'shop' ORDER BY 1")
        .await
        .unwrap();
    assert_eq!(
        names,
        [
            "t_code",
            "t_country",
            "t_item",
            "t_memo",
            "t_note",
            "t_order"
        ]
    );
    // The first shard and the single table's home read the catalog; nothing names a
    // shard's own database.
    let plan: Vec<(String, String, String)> = t
        .query("EXPLAIN SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")
        .await
        .unwrap();
    assert_eq!(
        plan.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        ["s0", "s2"],
        "{plan:?}"
    );
    assert!(plan.iter().all(|p| !p.1.contains("DATABASE()")), "{plan:?}");
    for sql in [
        "SELECT * FROM information_schema.VIEWS",
        "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()",
        "SELECT t.TABLE_NAME FROM information_schema.TABLES t JOIN information_schema.COLUMNS c ON c.TABLE_NAME = t.TABLE_NAME",
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_NAME IN (SELECT 't_order')",
        "SELECT t_order.id FROM t_order JOIN information_schema.TABLES ON TABLE_NAME = 't_order'",
        "SELECT information_schema.TABLES.TABLE_NAME FROM information_schema.TABLES",
        "INSERT INTO t_memo SELECT ORDINAL_POSITION, COLUMN_NAME FROM information_schema.COLUMNS",
    ] {
        let e = t.query_drop(sql).await.unwrap_err();
        assert_eq!(code(&e), Some(1235), "{sql}: {e}");
        assert!(e.to_string().contains("information_schema"), "{sql}: {e}");
    }
}
