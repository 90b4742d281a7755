//! Writes over several shards of `mode: sharding`, made atomic by XA: a statement or a
//! transaction that writes on several shards commits on all of them or on none, also when
//! Tandem or a shard's MariaDB is killed between `XA PREPARE` and `XA COMMIT`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{mariadb, Tandem};
use mysql_async::prelude::*;

const SCHEMA: &str = "CREATE TABLE t_order (id INT PRIMARY KEY, user_id INT NOT NULL, qty INT);
CREATE TABLE t_country (id INT PRIMARY KEY, name VARCHAR(20));
CREATE TABLE t_event (id BIGINT PRIMARY KEY, user_id INT NOT NULL, note VARCHAR(20));";

/// Two shards (`user_id` mod 2), each a database `url` names.
struct World {
    shards: Vec<String>,
    tandem: Tandem,
}

fn config(urls: &[String]) -> String {
    common::sharding_config(
        urls,
        "    sharded_tables:
      - { table: t_order, column: user_id, algorithm: mod }
      - { table: t_event, column: user_id, algorithm: mod, key_generator: { column: id, type: snowflake } }
    broadcast_tables: [t_country]
    worker_id: 7
",
        "",
    )
}

/// Both shards on the test MariaDB.
fn world(name: &str) -> World {
    let db = mariadb();
    let shards: Vec<String> = (0..2)
        .map(|i| {
            let d = db.fresh_db(&format!("{name}{i}"));
            db.sql(&format!("USE {d}; {SCHEMA}"));
            db.url(&d)
        })
        .collect();
    World {
        tandem: Tandem::start_yaml(&config(&shards)),
        shards,
    }
}

async fn ids(url: &str) -> Vec<i64> {
    common::connect(url)
        .await
        .query("SELECT id FROM t_order ORDER BY id")
        .await
        .unwrap()
}

/// The XA transactions prepared under the shard's database (Tandem's branch qualifier,
/// `tandem:<store>:<database>`).
async fn prepared(url: &str) -> Vec<String> {
    let db = url.rsplit('/').next().unwrap().to_string();
    let rows: Vec<(i64, i64, i64, Vec<u8>)> = common::connect(url)
        .await
        .query("XA RECOVER")
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| String::from_utf8_lossy(&r.3).into_owned())
        .filter(|d| d.contains("tandem:") && d.ends_with(&format!(":{db}")))
        .collect()
}

fn code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Waits until `check` holds, for up to `secs` seconds.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_over_several_shards_is_one_statement() {
    let w = world("xaw");
    let mut t = common::connect(&w.tandem.url("shop")).await;
    t.query_drop(
        "INSERT INTO t_order (id, user_id, qty) VALUES (1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 4, 1)",
    )
    .await
    .unwrap();
    assert_eq!(t.affected_rows(), 4);
    assert_eq!(ids(&w.shards[0]).await, [2, 4]);
    assert_eq!(ids(&w.shards[1]).await, [1, 3]);
    t.query_drop("UPDATE t_order SET qty = qty + 1")
        .await
        .unwrap();
    assert_eq!(t.affected_rows(), 4);
    t.query_drop("UPDATE t_order SET qty = 5 WHERE id > 2")
        .await
        .unwrap();
    assert_eq!(t.affected_rows(), 2);
    let qty: Vec<(i64, i64)> = t
        .query("SELECT id, qty FROM t_order ORDER BY id")
        .await
        .unwrap();
    assert_eq!(qty, [(1, 2), (2, 2), (3, 5), (4, 5)]);
    t.query_drop("DELETE FROM t_order WHERE qty = 5")
        .await
        .unwrap();
    assert_eq!(t.affected_rows(), 2);
    // A broadcast table is written on every shard; the count is one copy's.
    t.query_drop("INSERT INTO t_country VALUES (1, 'a'), (2, 'b')")
        .await
        .unwrap();
    assert_eq!(t.affected_rows(), 2);
    for s in &w.shards {
        let n: i64 = common::connect(s)
            .await
            .query_first("SELECT COUNT(*) FROM t_country")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 2, "{s}");
    }
    // A prepared multi-row INSERT splits the same way.
    t.exec_drop(
        "INSERT INTO t_order (id, user_id, qty) VALUES (?, ?, 0), (?, ?, 0)",
        (7, 7, 8, 8),
    )
    .await
    .unwrap();
    assert_eq!(t.affected_rows(), 2);
    // One shard refuses its part: no shard keeps its own.
    let e = t
        .query_drop("INSERT INTO t_order (id, user_id, qty) VALUES (6, 2, 0), (1, 1, 0)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1062), "{e}");
    assert!(e.to_string().contains("on shard s1"), "{e}");
    assert_eq!(ids(&w.shards[0]).await, [2, 8]);
    assert_eq!(ids(&w.shards[1]).await, [1, 7]);
    // What an ORDER BY … LIMIT picks depends on every shard's rows: refused.
    let e = t
        .query_drop("DELETE FROM t_order ORDER BY id LIMIT 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1235), "{e}");
    for s in &w.shards {
        assert!(prepared(s).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_commits_on_every_shard_or_on_none() {
    let w = world("xat");
    let mut t = common::connect(&w.tandem.url("shop")).await;
    t.query_drop("BEGIN").await.unwrap();
    t.query_drop("INSERT INTO t_order VALUES (1, 1, 0)")
        .await
        .unwrap();
    t.query_drop("INSERT INTO t_order VALUES (2, 2, 0)")
        .await
        .unwrap();
    let n: i64 = t
        .query_first("SELECT COUNT(*) FROM t_order")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 2, "the transaction reads its own writes");
    t.query_drop("COMMIT").await.unwrap();
    assert_eq!(ids(&w.shards[0]).await, [2]);
    assert_eq!(ids(&w.shards[1]).await, [1]);

    t.query_drop("BEGIN").await.unwrap();
    t.query_drop("INSERT INTO t_order VALUES (11, 1, 0), (12, 2, 0)")
        .await
        .unwrap();
    t.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(ids(&w.shards[0]).await, [2]);
    assert_eq!(ids(&w.shards[1]).await, [1]);

    // A write over several shards that fails part-way leaves a transaction that can only
    // roll back.
    t.query_drop("BEGIN").await.unwrap();
    t.query_drop("INSERT INTO t_order VALUES (21, 1, 0)")
        .await
        .unwrap();
    let e = t
        .query_drop("INSERT INTO t_order VALUES (22, 2, 0), (1, 1, 0)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1062), "{e}");
    let e = t
        .query_drop("INSERT INTO t_order VALUES (23, 3, 0)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1180), "{e}");
    let e = t.query_drop("COMMIT").await.unwrap_err();
    assert_eq!(code(&e), Some(1180), "{e}");
    assert_eq!(ids(&w.shards[0]).await, [2]);
    assert_eq!(ids(&w.shards[1]).await, [1]);

    // Autocommit off: each transaction ends with COMMIT, on every shard.
    t.query_drop("SET autocommit = 0").await.unwrap();
    t.query_drop("INSERT INTO t_order VALUES (31, 1, 0)")
        .await
        .unwrap();
    t.query_drop("INSERT INTO t_order VALUES (32, 2, 0)")
        .await
        .unwrap();
    t.query_drop("COMMIT").await.unwrap();
    t.query_drop("INSERT INTO t_order VALUES (33, 3, 0)")
        .await
        .unwrap();
    t.query_drop("ROLLBACK").await.unwrap();
    // A write over several shards may open the transaction; DDL commits and runs outside.
    t.query_drop("INSERT INTO t_order VALUES (35, 5, 0), (36, 6, 0)")
        .await
        .unwrap();
    t.query_drop("CREATE TABLE t_extra (id INT PRIMARY KEY)")
        .await
        .unwrap();
    t.query_drop("DROP TABLE t_extra").await.unwrap();
    t.query_drop("SET autocommit = 1").await.unwrap();
    assert_eq!(ids(&w.shards[0]).await, [2, 32, 36]);
    assert_eq!(ids(&w.shards[1]).await, [1, 31, 35]);

    // A transaction with characteristics XA cannot take writes on one shard.
    t.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .await
        .unwrap();
    t.query_drop("INSERT INTO t_order VALUES (41, 1, 0)")
        .await
        .unwrap();
    let e = t
        .query_drop("INSERT INTO t_order VALUES (42, 2, 0)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(1235), "{e}");
    t.query_drop("COMMIT").await.unwrap();
    assert_eq!(ids(&w.shards[1]).await, [1, 31, 35, 41]);
    for s in &w.shards {
        assert!(prepared(s).await.is_empty());
    }
}

/// Kills Tandem at `point` of a distributed commit of rows 101 (shard 1) and 102 (shard 0),
/// starts it again, and returns once nothing is left prepared.
async fn crash_at(w: &mut World, point: &str) {
    w.tandem.env = vec![("TANDEM_TEST_CRASH".into(), point.into())];
    w.tandem.restart();
    let mut t = common::connect(&w.tandem.url("shop")).await;
    t.query_drop("BEGIN").await.unwrap();
    t.query_drop("INSERT INTO t_order VALUES (101, 1, 0), (102, 2, 0)")
        .await
        .unwrap();
    t.query_drop("COMMIT").await.expect_err("Tandem dies");
    assert!(w.tandem.wait_exit(Duration::from_secs(10)).is_some());
    for s in &w.shards {
        assert_eq!(prepared(s).await.len(), 1, "left prepared on {s}");
    }
    w.tandem.env.clear();
    w.tandem.restart();
    let shards = w.shards.clone();
    eventually(30, "every prepared part ended", || {
        let shards = shards.clone();
        async move {
            for s in &shards {
                if !prepared(s).await.is_empty() {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

/// Another deployment, with a coordinator store of its own, over the same shards: its
/// recovery, which knows nothing of this one's transactions, leaves them prepared instead
/// of presuming them aborted, and this one commits them when it is back.
#[tokio::test(flavor = "multi_thread")]
async fn another_deployments_recovery_leaves_this_ones_transactions_alone() {
    let mut w = world("xao");
    w.tandem.env = vec![("TANDEM_TEST_CRASH".into(), "xa-decided".into())];
    w.tandem.restart();
    let mut t = common::connect(&w.tandem.url("shop")).await;
    t.query_drop("BEGIN").await.unwrap();
    t.query_drop("INSERT INTO t_order VALUES (101, 1, 0), (102, 2, 0)")
        .await
        .unwrap();
    t.query_drop("COMMIT").await.expect_err("Tandem dies");
    assert!(w.tandem.wait_exit(Duration::from_secs(10)).is_some());
    let other = Tandem::start_yaml(&config(&w.shards));
    // Its recovery has run: it runs before the listeners open.
    let mut o = common::connect(&other.url("shop")).await;
    let n: Vec<i64> = o.query("SELECT COUNT(*) FROM t_order").await.unwrap();
    assert_eq!(n, [0], "nothing committed yet");
    for s in &w.shards {
        assert_eq!(prepared(s).await.len(), 1, "still prepared on {s}");
    }
    drop(o);
    drop(other);
    w.tandem.env.clear();
    w.tandem.restart();
    let shards = w.shards.clone();
    eventually(30, "every prepared part committed", || {
        let shards = shards.clone();
        async move {
            for s in &shards {
                if !prepared(s).await.is_empty() {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert_eq!(ids(&w.shards[0]).await, [102]);
    assert_eq!(ids(&w.shards[1]).await, [101]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_before_the_decision_rolls_back_every_shard() {
    let mut w = world("xac");
    crash_at(&mut w, "xa-prepared").await;
    assert!(ids(&w.shards[0]).await.is_empty());
    assert!(ids(&w.shards[1]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_the_decision_commits_every_shard() {
    let mut w = world("xad");
    crash_at(&mut w, "xa-decided").await;
    assert_eq!(ids(&w.shards[0]).await, [102]);
    assert_eq!(ids(&w.shards[1]).await, [101]);
}

/// Shard 1 on a MariaDB of its own, killed (-9) after the decision and before it commits:
/// the client's COMMIT succeeds, and the shard commits its part once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_shard_killed_before_it_commits_commits_when_it_is_back() {
    let dir: PathBuf = common::scratch("xa-shard-crash");
    let port = common::start_mariadb_on_a_free_port(&dir);
    common::mariadb_cli(
        port,
        "root",
        "",
        None,
        &format!("CREATE DATABASE xa_alone; USE xa_alone; {SCHEMA}"),
    )
    .unwrap();
    let db = mariadb();
    let first = db.fresh_db("xak0");
    db.sql(&format!("USE {first}; {SCHEMA}"));
    let urls = vec![
        db.url(&first),
        format!("mysql://root@127.0.0.1:{port}/xa_alone"),
    ];
    let mut tandem = Tandem::start_yaml(&config(&urls));
    tandem.env = vec![("TANDEM_TEST_PAUSE".into(), "xa-decided".into())];
    tandem.restart();
    let url = tandem.url("shop");
    let commit = tokio::spawn(async move {
        let mut t = common::connect(&url).await;
        t.query_drop("BEGIN").await.unwrap();
        t.query_drop("INSERT INTO t_order VALUES (201, 1, 0), (202, 2, 0)")
            .await
            .unwrap();
        t.query_drop("COMMIT").await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = std::fs::read_to_string(dir.join("pid")).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::start_mariadb(&dir, port);
    commit
        .await
        .unwrap()
        .expect("the decision was recorded: the commit stands");
    assert_eq!(ids(&urls[0]).await, [202]);
    let alone = urls[1].clone();
    eventually(60, "the restarted shard committed its part", || {
        let alone = alone.clone();
        async move { ids(&alone).await == [201] && prepared(&alone).await.is_empty() }
    })
    .await;
    drop(tandem);
    common::stop_mariadb(&dir);
}

/// What the database does on its own after a deadlock (rolls the whole transaction back),
/// XA statements of the client's, and writes of other kinds take part in the commit.
#[tokio::test(flavor = "multi_thread")]
async fn deadlocks_and_xa_statements_are_handled_as_one_database_would() {
    let w = world("xadl");
    let url = w.tandem.url("shop");
    let mut a = common::connect(&url).await;
    let mut b = common::connect(&url).await;
    a.query_drop("INSERT INTO t_order VALUES (1, 1, 0), (2, 2, 0), (3, 3, 0)")
        .await
        .unwrap();
    // a: writes row 2 (shard 0) and locks row 1 (shard 1); b: locks row 3 (shard 1), then
    // waits for 1; a then waits for 3: one of them deadlocks. (Rows are found by their
    // primary key, so each statement locks its one row.)
    a.query_drop("BEGIN").await.unwrap();
    a.query_drop("UPDATE t_order SET qty = 1 WHERE id = 2 AND user_id = 2")
        .await
        .unwrap();
    a.query_drop("UPDATE t_order SET qty = 1 WHERE id = 1 AND user_id = 1")
        .await
        .unwrap();
    b.query_drop("BEGIN").await.unwrap();
    b.query_drop("UPDATE t_order SET qty = 2 WHERE id = 3 AND user_id = 3")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let r = b
            .query_drop("UPDATE t_order SET qty = 2 WHERE id = 1 AND user_id = 1")
            .await;
        (b, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ra = a
        .query_drop("UPDATE t_order SET qty = 1 WHERE id = 3 AND user_id = 3")
        .await;
    let (mut b, rb) = waiting.await.unwrap();
    let (loser, winner) = match (&ra, &rb) {
        (Err(e), Ok(())) => {
            assert_eq!(code(e), Some(1213), "{e}");
            (&mut a, &mut b)
        }
        (Ok(()), Err(e)) => {
            assert_eq!(code(e), Some(1213), "{e}");
            (&mut b, &mut a)
        }
        other => panic!("one deadlock expected: {other:?}"),
    };
    // The loser's whole transaction is gone, on every shard: a new one begins cleanly.
    loser.query_drop("COMMIT").await.unwrap();
    winner.query_drop("COMMIT").await.unwrap();
    let qty: Vec<(i64, i64)> = winner
        .query("SELECT id, qty FROM t_order ORDER BY id")
        .await
        .unwrap();
    let mine = if ra.is_ok() { 1 } else { 2 };
    let expected: Vec<(i64, i64)> = if mine == 1 {
        vec![(1, 1), (2, 1), (3, 1)]
    } else {
        vec![(1, 2), (2, 0), (3, 2)]
    };
    assert_eq!(qty, expected, "only the winner's writes, all of them");
    // The client's own XA statements would meddle with Tandem's.
    for sql in ["XA RECOVER", "/* c */ xa recover"] {
        let e = a.query_drop(sql).await.unwrap_err();
        assert_eq!(code(&e), Some(1235), "{sql}: {e}");
    }
    for s in &w.shards {
        assert!(prepared(s).await.is_empty());
    }
}

/// A generated column left out of an INSERT gets a snowflake id per row, increasing in row
/// order; the first is the statement's insert id and the session's LAST_INSERT_ID().
#[tokio::test(flavor = "multi_thread")]
async fn generated_keys_are_snowflake_ids_and_the_last_insert_id() {
    let w = world("xag");
    let mut t = common::connect(&w.tandem.url("shop")).await;
    t.query_drop("INSERT INTO t_event (user_id, note) VALUES (1, 'a')")
        .await
        .unwrap();
    let first = t.last_insert_id().expect("an insert id");
    let last: u64 = t
        .query_first("SELECT LAST_INSERT_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last, first);
    let stored: Vec<(u64, i64)> = common::connect(&w.shards[1])
        .await
        .query("SELECT id, user_id FROM t_event")
        .await
        .unwrap();
    assert_eq!(stored, [(first, 1)]);
    assert_eq!((first >> 12) & 1023, 7, "the worker id is in the id");

    t.query_drop("INSERT INTO t_event (user_id, note) VALUES (2, 'b'), (3, 'c'), (4, 'd')")
        .await
        .unwrap();
    assert_eq!(t.affected_rows(), 3);
    let batch = t.last_insert_id().expect("an insert id");
    let rows: Vec<(u64, i64)> = t
        .query("SELECT id, user_id FROM t_event ORDER BY id")
        .await
        .unwrap();
    let users: Vec<i64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(users, [1, 2, 3, 4], "ids increase in row order");
    assert_eq!(rows[1].0, batch, "the first row's id is the insert id");
    let last: u64 = t
        .query_first("SELECT LAST_INSERT_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last, batch);
    // Prepared, and with the column given: the client's value stands.
    t.exec_drop(
        "INSERT INTO t_event (user_id, note) VALUES (?, ?)",
        (5, "e"),
    )
    .await
    .unwrap();
    t.query_drop("INSERT INTO t_event (id, user_id, note) VALUES (42, 6, 'f')")
        .await
        .unwrap();
    let ids: Vec<u64> = t
        .query("SELECT id FROM t_event WHERE user_id IN (5, 6) ORDER BY user_id")
        .await
        .unwrap();
    assert!(ids[0] > batch, "{ids:?}");
    assert_eq!(ids[1], 42);
}
