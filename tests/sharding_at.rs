//! Global (AT) transactions through `mode: sharding`: each shard's local transaction is a
//! branch. A global rollback restores every shard's rows exactly; a global commit keeps
//! what one database would hold; what Tandem cannot undo is refused with nothing changed.

mod common;

use common::{error_code, mariadb, Tandem};
use mysql_async::prelude::*;
use mysql_async::{Conn, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SCHEMA: &str = "
CREATE TABLE t_order (id INT PRIMARY KEY, user_id INT NOT NULL, qty INT, name VARCHAR(20));
CREATE TABLE t_item (id INT PRIMARY KEY, user_id INT NOT NULL, sku VARCHAR(10));
CREATE TABLE t_country (id INT PRIMARY KEY, name VARCHAR(20));
CREATE TABLE t_event (id BIGINT PRIMARY KEY, user_id INT NOT NULL, note VARCHAR(20));
";

/// The physical tables of each shard, and of the reference database.
const TABLES: [&str; 6] = [
    "t_order",
    "t_item_0",
    "t_item_1",
    "t_country",
    "t_auto",
    "t_event",
];

/// Two shards (`user_id` mod 2; `t_item` split into two tables on each), a broadcast
/// table, and a reference database holding every row as one database would.
struct World {
    shards: Vec<String>,
    reference: String,
    tandem: Tandem,
}

fn world(name: &str) -> World {
    let db = mariadb();
    let shards: Vec<String> = (0..2).map(|i| db.fresh_db(&format!("{name}{i}"))).collect();
    let reference = db.fresh_db(&format!("{name}ref"));
    for d in shards.iter().chain([&reference]) {
        db.sql(&format!(
            "USE {d}; {SCHEMA} CREATE TABLE t_item_1 LIKE t_item; RENAME TABLE t_item TO t_item_0;"
        ));
    }
    // A single table, on shard 1 only.
    for d in [&shards[1], &reference] {
        db.sql(&format!(
            "USE {d}; CREATE TABLE t_auto (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"
        ));
    }
    let urls: Vec<String> = shards.iter().map(|d| db.url(d)).collect();
    let yaml = common::sharding_config(
        &urls,
        "    sharded_tables:
      - { table: t_order, column: user_id, algorithm: mod }
      - { table: t_item, column: user_id, algorithm: mod, tables: 2 }
      - { table: t_event, column: user_id, algorithm: mod, key_generator: { column: id, type: snowflake } }
    broadcast_tables: [t_country]
",
        "  lock_retry_interval: 20ms\n  lock_retry_attempts: 5\n",
    );
    World {
        shards,
        reference,
        tandem: Tandem::start_yaml(&yaml),
    }
}

impl World {
    async fn client(&self) -> Conn {
        common::connect(&self.tandem.url("shop")).await
    }

    /// Every row of every physical table of every shard, as the shards hold them.
    async fn snapshot(&self) -> Vec<Vec<String>> {
        let mut all = Vec::new();
        for d in &self.shards {
            all.push(dump(d).await);
        }
        all
    }

    /// The logical tables' rows as one database would hold them: the shards' together
    /// (`t_item` from both physical tables, the broadcast table once, the same on both).
    async fn logical(&self) -> Vec<String> {
        let mut rows = Vec::new();
        let mut countries = Vec::new();
        for d in &self.shards {
            for r in dump(d).await {
                match r.strip_prefix("t_country ") {
                    Some(c) => countries.push(c.to_string()),
                    None => rows.push(
                        r.replace("t_item_0 ", "t_item ")
                            .replace("t_item_1 ", "t_item "),
                    ),
                }
            }
        }
        let half = countries.len() / 2;
        assert_eq!(
            countries[..half],
            countries[half..],
            "the broadcast table differs between shards"
        );
        rows.extend(countries[..half].iter().map(|c| format!("t_country {c}")));
        rows.sort();
        rows
    }

    async fn reference_rows(&self) -> Vec<String> {
        let mut rows: Vec<String> = dump(&self.reference)
            .await
            .into_iter()
            .map(|r| {
                r.replace("t_item_0 ", "t_item ")
                    .replace("t_item_1 ", "t_item ")
            })
            .collect();
        rows.sort();
        rows
    }
}

/// Rolls global transaction `xid` back and checks every shard holds `before` again.
async fn rolls_back(w: &World, c: &mut Conn, xid: &str, before: &[Vec<String>]) {
    assert_eq!(common::end_global(c, "rollback", xid).await, "Rollbacked");
    assert_eq!(
        w.snapshot().await,
        before,
        "the rollback restored every shard"
    );
}

async fn dump(db: &str) -> Vec<String> {
    let mut c = common::connect(&mariadb().url(db)).await;
    let mut out = Vec::new();
    for t in TABLES {
        let exists: Option<String> = c
            .query_first(format!("SHOW TABLES LIKE '{t}'"))
            .await
            .unwrap();
        if exists.is_none() {
            continue;
        }
        let rows: Vec<mysql_async::Row> = c
            .query(format!("SELECT * FROM {t} ORDER BY id"))
            .await
            .unwrap();
        for r in rows {
            let cells: Vec<String> = (0..r.len())
                .map(|i| match r.as_ref(i) {
                    Some(Value::NULL) | None => "NULL".to_string(),
                    Some(v) => v.as_sql(true),
                })
                .collect();
            out.push(format!("{t} {}", cells.join(",")));
        }
    }
    out
}

async fn seed_rows(w: &World) {
    let mut c = w.client().await;
    let mut r = common::connect(&mariadb().url(&w.reference)).await;
    for sql in [
        "INSERT INTO t_order VALUES (1, 1, 10, 'a'), (2, 2, 20, 'b'), (3, 3, 30, NULL), (4, 4, 40, 'd')",
        "INSERT INTO t_country VALUES (1, 'de'), (2, 'fr')",
    ] {
        c.query_drop(sql).await.unwrap();
        r.query_drop(sql).await.unwrap();
    }
    c.query_drop("INSERT INTO t_item VALUES (1, 1, 'x'), (2, 2, 'y'), (3, 3, 'z'), (4, 4, 'w')")
        .await
        .unwrap();
    // The reference has t_item as t_item_0 (one physical table holds every row).
    r.query_drop("INSERT INTO t_item_0 VALUES (1, 1, 'x'), (2, 2, 'y'), (3, 3, 'z'), (4, 4, 'w')")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn global_transactions_span_shards() {
    let w = world("gat");
    seed_rows(&w).await;
    let before = w.snapshot().await;
    let mut c = w.client().await;
    let mut other = w.client().await;

    // Rollback: autocommit writes over both shards, a transaction over both, a hint from
    // another connection; every shard gets its rows back.
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    c.query_drop("INSERT INTO t_order VALUES (5, 5, 50, 'e'), (6, 6, 60, 'f')")
        .await
        .unwrap();
    assert_eq!(c.affected_rows(), 2);
    c.query_drop("UPDATE t_order SET qty = qty + 1 WHERE qty >= 20")
        .await
        .unwrap();
    assert_eq!(c.affected_rows(), 5);
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("DELETE FROM t_order WHERE user_id IN (1, 2)")
        .await
        .unwrap();
    c.query_drop("UPDATE t_country SET name = 'xx' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        c.affected_rows(),
        1,
        "a broadcast write counts one table's rows"
    );
    c.query_drop("INSERT INTO t_item VALUES (5, 5, 'v'), (6, 6, 'u'), (7, 7, 't')")
        .await
        .unwrap();
    c.query_drop("UPDATE t_item SET sku = 'changed' WHERE user_id > 2")
        .await
        .unwrap();
    assert_eq!(c.affected_rows(), 5);
    // Keys Tandem generates are imaged as the numbers they are.
    c.query_drop("INSERT INTO t_event (user_id, note) VALUES (1, 'a'), (2, 'b')")
        .await
        .unwrap();
    let id: Option<u64> = c.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert!(id.is_some_and(|i| i > 0), "a generated key: {id:?}");
    let inside: Option<i64> = c.query_first("SELECT COUNT(*) FROM t_order").await.unwrap();
    assert_eq!(inside, Some(4), "the transaction reads its own writes");
    c.query_drop("COMMIT").await.unwrap();
    c.query_drop("SET tandem_xid = NULL").await.unwrap();
    other
        .query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE t_order SET name = 'hint' WHERE user_id = 3"
        ))
        .await
        .unwrap();
    assert_ne!(w.snapshot().await, before);
    for d in &w.shards {
        assert!(
            common::undo_rows(d).await > 0,
            "each shard holds an undo log"
        );
    }
    let tables: Vec<String> = c.query("SHOW TABLES").await.unwrap();
    assert!(
        !tables.iter().any(|t| t == "undo_log"),
        "Tandem's undo log is not a table of the logical database: {tables:?}"
    );
    rolls_back(&w, &mut c, &xid, &before).await;

    // Commit keeps the changes, and the shards hold what one database would.
    let xid = common::begin_global(&mut c).await;
    let statements = [
        "INSERT INTO t_order VALUES (7, 7, 70, 'g'), (8, 8, 80, 'h')",
        "UPDATE t_order SET qty = qty * 2 WHERE user_id BETWEEN 2 AND 7",
        "DELETE FROM t_order WHERE id = 1",
        "UPDATE t_country SET name = 'es' WHERE id = 2",
    ];
    let mut r = common::connect(&mariadb().url(&w.reference)).await;
    for sql in statements {
        c.query_drop(format!("/*+ XID('{xid}') */ {sql}"))
            .await
            .unwrap();
        r.query_drop(sql).await.unwrap();
    }
    c.query_drop(format!(
        "/*+ XID('{xid}') */ DELETE FROM t_item WHERE user_id = 2"
    ))
    .await
    .unwrap();
    r.query_drop("DELETE FROM t_item_0 WHERE user_id = 2")
        .await
        .unwrap();
    assert_eq!(
        common::end_global(&mut c, "commit", &xid).await,
        "Committed"
    );
    assert_eq!(w.logical().await, w.reference_rows().await);
    let dbs: Vec<&str> = w.shards.iter().map(String::as_str).collect();
    common::wait_no_undo(&dbs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_global_transaction_cannot_undo_is_refused() {
    let w = world("gatno");
    seed_rows(&w).await;
    let before = w.snapshot().await;
    let mut c = w.client().await;
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    let refused = [
        "CREATE TABLE t_new (id INT PRIMARY KEY)",
        "SELECT * FROM t_order WHERE qty > 0 FOR UPDATE",
        "UPDATE t_order SET qty = 1 /*!50000 , name = 'sneaky' */ WHERE user_id = 1",
        "UPDATE t_order SET qty = 1 WHERE user_id = 1; UPDATE t_order SET qty = 2 WHERE user_id = 2",
        "UPDATE t_order SET qty = (SELECT 5) WHERE user_id = 1",
        "SET STATEMENT max_statement_time = 1 FOR UPDATE t_order SET qty = 1 WHERE user_id = 1",
        "SELECT * FROM t_order WHERE user_id = 1 /*!50000 UNION SELECT * FROM t_order */",
    ];
    for sql in refused {
        let e = c.query_drop(sql).await.expect_err(sql);
        assert!(
            matches!(error_code(&e), Some(1235 | 1064 | 1149)),
            "{sql}: {e}"
        );
        // The connection goes on.
        let one: Option<i64> = c.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1));
    }
    assert_eq!(w.snapshot().await, before, "nothing refused changed a row");

    // A transaction that reached a shard outside the global transaction cannot join it.
    c.query_drop("SET tandem_xid = NULL").await.unwrap();
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE t_order SET qty = 0 WHERE user_id = 1")
        .await
        .unwrap();
    let e = c
        .query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE t_order SET qty = 0 WHERE user_id = 2"
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1235), "{e}");
    c.query_drop("ROLLBACK").await.unwrap();

    // A write Tandem can only check after it ran (AUTO_INCREMENT keys mixed with given
    // ones) rolls the whole transaction back, on every shard, and the client hears of it
    // until it ends the transaction.
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE t_order SET qty = 0 WHERE user_id IN (1, 2)")
        .await
        .unwrap();
    let e = c
        .query_drop("INSERT INTO t_auto VALUES (NULL, 1), (10, 2)")
        .await
        .unwrap_err();
    eprintln!("mixed keys: {e}");
    assert!(matches!(error_code(&e), Some(1402 | 1235)), "{e}");
    if error_code(&e) == Some(1402) {
        assert_eq!(w.snapshot().await, before, "every shard rolled back");
        let e = c.query_drop("SELECT 1").await.unwrap_err();
        assert_eq!(error_code(&e), Some(1402), "{e}");
        let e = c.query_drop("COMMIT").await.unwrap_err();
        assert_eq!(error_code(&e), Some(1402), "{e}");
    } else {
        c.query_drop("ROLLBACK").await.unwrap();
    }
    let one: Option<i64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(
        one,
        Some(1),
        "the session goes on after the transaction ends"
    );
    // SET PASSWORD would commit the transaction on one shard (once it reached one).
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE t_order SET qty = 5 WHERE user_id = 1")
        .await
        .unwrap();
    let e = c
        .query_drop("SET PASSWORD = PASSWORD('x')")
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1235), "{e}");
    c.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(w.snapshot().await, before);

    // A temporary table hides the table a write names: refused until it is dropped, and
    // dropping it leaves the logical database's own table where it was.
    c.query_drop("SET tandem_xid = NULL").await.unwrap();
    c.query_drop("CREATE TEMPORARY TABLE t_auto (id INT PRIMARY KEY, v INT)")
        .await
        .unwrap();
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    let e = c
        .query_drop("INSERT INTO t_auto VALUES (1, 1)")
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1235), "{e}");
    c.query_drop("SET tandem_xid = NULL").await.unwrap();
    c.query_drop("DROP TEMPORARY TABLE t_auto").await.unwrap();
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM t_auto").await.unwrap();
    assert_eq!(n, Some(0), "t_auto is still found on its shard");
    rolls_back(&w, &mut c, &xid, &before).await;
}

/// The ways a session joins a global transaction, and what ends its part: autocommit off
/// with a read first, the hint inside BEGIN, a prepared write, an implicit commit, a local
/// ROLLBACK; a second global transaction waits for the first one's rows and gives up.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_join_and_leave_global_transactions() {
    let w = world("gatjoin");
    seed_rows(&w).await;
    let before = w.snapshot().await;
    let mut c = w.client().await;
    let xid = common::begin_global(&mut c).await;

    // autocommit off, a read before the first write.
    let mut a = w.client().await;
    a.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    a.query_drop("SET autocommit = 0").await.unwrap();
    let n: Option<i64> = a.query_first("SELECT COUNT(*) FROM t_order").await.unwrap();
    assert_eq!(n, Some(4));
    a.query_drop("UPDATE t_order SET qty = 1 WHERE user_id = 1")
        .await
        .unwrap();
    // A local ROLLBACK leaves nothing of the part.
    a.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(w.snapshot().await, before);
    a.query_drop("UPDATE t_order SET qty = 2 WHERE user_id IN (1, 2)")
        .await
        .unwrap();
    // SET tandem_xid = NULL inside the part leaves the part as it is.
    a.query_drop("SET tandem_xid = NULL").await.unwrap();
    a.query_drop("UPDATE t_order SET qty = 3 WHERE user_id = 3")
        .await
        .unwrap();
    a.query_drop("COMMIT").await.unwrap();
    a.query_drop("SET autocommit = 1").await.unwrap();

    // The hint inside BEGIN, on a fresh connection; a prepared write; BEGIN ends the part
    // (an implicit commit), registering its branches first.
    let mut b = w.client().await;
    b.query_drop("BEGIN").await.unwrap();
    b.query_drop(format!(
        "/*+ XID('{xid}') */ DELETE FROM t_item WHERE user_id IN (1, 4)"
    ))
    .await
    .unwrap();
    assert_eq!(b.affected_rows(), 2);
    b.exec_drop(
        format!("/*+ XID('{xid}') */ UPDATE t_country SET name = ? WHERE id = ?"),
        ("prepared", 2),
    )
    .await
    .unwrap();
    b.query_drop("BEGIN").await.unwrap();
    b.query_drop("ROLLBACK").await.unwrap();
    assert_ne!(w.snapshot().await, before);

    // Another global transaction waits for these rows, gives up, and changes nothing;
    // its locking reads wait for them too, and read rows no one holds.
    let other = common::begin_global(&mut c).await;
    let mut d = w.client().await;
    d.query_drop(format!("SET tandem_xid = '{other}'"))
        .await
        .unwrap();
    let e = d
        .query_drop("SELECT * FROM t_order WHERE user_id = 1 FOR UPDATE")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("lock"), "{e}");
    let free: Vec<i64> = d
        .query("SELECT id FROM t_order WHERE user_id = 4 FOR UPDATE")
        .await
        .unwrap();
    assert_eq!(free, [4]);
    let own: Vec<i64> = b
        .query(format!(
            "/*+ XID('{xid}') */ SELECT id FROM t_order WHERE user_id = 1 FOR UPDATE"
        ))
        .await
        .unwrap();
    assert_eq!(own, [1], "a transaction's own locks do not hold it back");
    d.query_drop("BEGIN").await.unwrap();
    d.query_drop("UPDATE t_order SET qty = 99 WHERE user_id IN (1, 4)")
        .await
        .unwrap();
    let e = d.query_drop("COMMIT").await.unwrap_err();
    assert!(e.to_string().contains("lock"), "{e}");
    let after = w.snapshot().await;
    assert!(
        !after.concat().iter().any(|r| r.contains(",99,")),
        "the refused transaction left no row: {after:?}"
    );
    d.query_drop("SET tandem_xid = NULL").await.unwrap();
    assert_eq!(
        common::end_global(&mut c, "rollback", &other).await,
        "Rollbacked"
    );

    rolls_back(&w, &mut c, &xid, &before).await;
    // (The refused transaction's first branch registered before the second met the
    // lock: its rollback found no undo log and left a marker row, kept for a while.)
}

/// A random write over the tables; `next_id` numbers inserted rows, so no insert collides.
fn random_write(rng: &mut StdRng, next_id: &mut i64) -> (String, String) {
    let users = |rng: &mut StdRng| -> String {
        let n = rng.random_range(1..4);
        (0..n)
            .map(|_| rng.random_range(1..9).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let predicate = |rng: &mut StdRng| -> String {
        match rng.random_range(0..5) {
            0 => format!("user_id = {}", rng.random_range(1..9)),
            1 => format!("user_id IN ({})", users(rng)),
            2 => {
                let a = rng.random_range(1..9);
                format!("user_id BETWEEN {a} AND {}", a + rng.random_range(0..4))
            }
            3 => format!("id > {}", rng.random_range(0..12)),
            _ => format!(
                "user_id = {} OR id < {}",
                rng.random_range(1..9),
                rng.random_range(1..6)
            ),
        }
    };
    let same = |s: String| (s.clone(), s);
    match rng.random_range(0..7) {
        0 | 1 => {
            let n = rng.random_range(1..4);
            let rows: Vec<String> = (0..n)
                .map(|_| {
                    *next_id += 1;
                    format!(
                        "({}, {}, {}, 'n{}')",
                        next_id,
                        rng.random_range(1..9),
                        rng.random_range(0..100),
                        next_id
                    )
                })
                .collect();
            same(format!("INSERT INTO t_order VALUES {}", rows.join(", ")))
        }
        2 => same(format!(
            "UPDATE t_order SET qty = qty + {}, name = CONCAT(LEFT(name, 8), 'u') WHERE {}",
            rng.random_range(1..5),
            predicate(rng)
        )),
        3 => same(format!("DELETE FROM t_order WHERE {}", predicate(rng))),
        4 => {
            *next_id += 1;
            let user = rng.random_range(1..9);
            (
                format!("INSERT INTO t_item VALUES ({next_id}, {user}, 's{next_id}')"),
                format!("INSERT INTO t_item_0 VALUES ({next_id}, {user}, 's{next_id}')"),
            )
        }
        5 => {
            let p = predicate(rng);
            (
                format!("UPDATE t_item SET sku = CONCAT(LEFT(sku, 6), 'i') WHERE {p}"),
                format!("UPDATE t_item_0 SET sku = CONCAT(LEFT(sku, 6), 'i') WHERE {p}"),
            )
        }
        _ => same(format!(
            "UPDATE t_country SET name = CONCAT(LEFT(name, 8), '{}') WHERE id = {}",
            rng.random_range(0..10),
            rng.random_range(1..3)
        )),
    }
}

/// Seeded rounds of random writes in global transactions, as autocommit statements or in
/// BEGIN … COMMIT, in the text and the binary protocol: a rolled-back round leaves every
/// shard as it was; a committed round leaves the shards holding what the reference
/// database holds after the same statements.
#[tokio::test(flavor = "multi_thread")]
async fn random_global_writes_undo_exactly() {
    let seed: u64 = std::env::var("TANDEM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: usize = std::env::var("TANDEM_SHARDING_AT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    eprintln!("random_global_writes_undo_exactly: TANDEM_TEST_SEED={seed}, {rounds} rounds");
    let mut rng = StdRng::seed_from_u64(seed);
    let w = world("gatrnd");
    seed_rows(&w).await;
    let mut c = w.client().await;
    let mut r = common::connect(&mariadb().url(&w.reference)).await;
    let mut next_id = 100;
    let (mut statements, mut refused) = (0, 0);
    for round in 0..rounds {
        let before = w.snapshot().await;
        let xid = common::begin_global(&mut c).await;
        c.query_drop(format!("SET tandem_xid = '{xid}'"))
            .await
            .unwrap();
        // The reference runs each statement that ran, in a transaction that ends as the
        // global one does; a block Tandem rolled back, it rolls back to a savepoint.
        r.query_drop("BEGIN").await.unwrap();
        for _ in 0..rng.random_range(1..4) {
            let block: Vec<(String, String)> = (0..rng.random_range(1..5))
                .map(|_| random_write(&mut rng, &mut next_id))
                .collect();
            let explicit = rng.random_bool(0.5);
            let prepared = rng.random_bool(0.3);
            if explicit {
                c.query_drop("BEGIN").await.unwrap();
            }
            r.query_drop("SAVEPOINT block").await.unwrap();
            let mut ok = true;
            for (sql, reference) in &block {
                statements += 1;
                let ran = if prepared {
                    c.exec_drop(sql.as_str(), ()).await
                } else {
                    c.query_drop(sql.as_str()).await
                };
                match ran {
                    Ok(()) => {
                        let affected = c.affected_rows();
                        r.query_drop(reference.as_str()).await.unwrap();
                        assert_eq!(
                            affected,
                            r.affected_rows(),
                            "seed {seed} round {round}: affected rows of {sql}"
                        );
                    }
                    Err(e) => {
                        refused += 1;
                        let code = error_code(&e);
                        assert!(
                            matches!(code, Some(1235)),
                            "seed {seed} round {round}: {sql}: {e}"
                        );
                        ok = false;
                        if explicit {
                            break;
                        }
                    }
                }
            }
            if explicit {
                if ok {
                    c.query_drop("COMMIT").await.unwrap();
                } else {
                    c.query_drop("ROLLBACK").await.unwrap();
                    r.query_drop("ROLLBACK TO SAVEPOINT block").await.unwrap();
                }
            }
        }
        c.query_drop("SET tandem_xid = NULL").await.unwrap();
        if rng.random_bool(0.5) {
            let s = common::end_global(&mut c, "rollback", &xid).await;
            assert_eq!(s, "Rollbacked");
            r.query_drop("ROLLBACK").await.unwrap();
            assert_eq!(
                w.snapshot().await,
                before,
                "seed {seed} round {round}: the rollback left the shards changed"
            );
        } else {
            let s = common::end_global(&mut c, "commit", &xid).await;
            assert_eq!(s, "Committed");
            r.query_drop("COMMIT").await.unwrap();
            assert_eq!(
                w.logical().await,
                w.reference_rows().await,
                "seed {seed} round {round}: the shards differ from one database"
            );
        }
    }
    eprintln!("{statements} statements, {refused} refused");
    assert!(statements > rounds, "the rounds ran statements");
    assert!(
        refused * 10 < statements,
        "most statements ran: {refused} of {statements} refused"
    );
}
