//! AT mode through Tandem: statements that join a global transaction record undo logs and
//! take global row locks; global commit keeps the changes, global rollback restores the rows.

mod common;

use common::{error_code, mariadb, Tandem, PASSWORD, USER};
use mysql_async::prelude::*;

/// Tandem with two listeners, one in front of each of two databases.
fn two_databases(prefix: &str) -> (String, String, Tandem, u16) {
    let a = mariadb().fresh_db(&format!("{prefix}_a"));
    let b = mariadb().fresh_db(&format!("{prefix}_b"));
    for db in [&a, &b] {
        mariadb().sql(&format!(
            "CREATE TABLE {db}.account (id INT PRIMARY KEY, owner VARCHAR(20), balance DECIMAL(12,2));
             INSERT INTO {db}.account VALUES (1, 'ann', 100.00), (2, 'bob', 50.00);
             CREATE TABLE {db}.log (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(50));
             CREATE TABLE {db}.nokey (a INT);"
        ));
    }
    let port_b = common::free_port();
    let yaml = format!(
        r#"
listeners:
  - name: a
    address: 127.0.0.1:{{PORT}}
    users: {{ {USER}: "{PASSWORD}" }}
    executor: a
  - name: b
    address: 127.0.0.1:{port_b}
    users: {{ {USER}: "{PASSWORD}" }}
    executor: b
executors:
  - {{ name: a, mode: single, data_source: a }}
  - {{ name: b, mode: single, data_source: b }}
data_sources:
  - {{ name: a, dsn: "{}" }}
  - {{ name: b, dsn: "{}" }}
admin:
  address: 127.0.0.1:{{ADMIN}}
coordinator:
  embedded: {{ path: "{{DIR}}/tandem.db" }}
  lock_retry_interval: 20ms
  lock_retry_attempts: 10
"#,
        mariadb().url(&a),
        mariadb().url(&b)
    );
    let t = Tandem::start_yaml(&yaml);
    (a, b, t, port_b)
}

async fn balances(db: &str) -> Vec<(i32, String)> {
    let mut c = common::connect(&mariadb().url(db)).await;
    c.query("SELECT id, CAST(balance AS CHAR) FROM account ORDER BY id")
        .await
        .unwrap()
}

async fn undo_rows(db: &str) -> i64 {
    let mut c = common::connect(&mariadb().url(db)).await;
    c.query_first("SELECT COUNT(*) FROM undo_log")
        .await
        .unwrap()
        .unwrap_or(0)
}

fn url(port: u16, db: &str) -> String {
    format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{port}/{db}")
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_commits_and_rolls_back_across_two_databases() {
    let (a, b, tandem, port_b) = two_databases("xfer");
    let mut ca = common::connect(&tandem.url(&a)).await;
    let mut cb = common::connect(&url(port_b, &b)).await;

    // Commit: one side by hint in autocommit, the other by SET tandem_xid in BEGIN…COMMIT.
    let xid: String = ca
        .query_first("SELECT tandem_begin()")
        .await
        .unwrap()
        .unwrap();
    ca.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance - 30 WHERE id = 1"
    ))
    .await
    .unwrap();
    assert_eq!(ca.affected_rows(), 1);
    cb.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    cb.query_drop("BEGIN").await.unwrap();
    cb.query_drop("UPDATE account SET balance = balance + 30 WHERE id = 2")
        .await
        .unwrap();
    cb.query_drop("COMMIT").await.unwrap();
    cb.query_drop("SET tandem_xid = NULL").await.unwrap();
    assert_eq!(undo_rows(&a).await, 1, "phase 1 wrote the undo log");
    let s: String = ca
        .query_first(format!("SELECT tandem_commit('{xid}')"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, "Committed");
    assert_eq!(
        balances(&a).await,
        vec![(1, "70.00".into()), (2, "50.00".into())]
    );
    assert_eq!(
        balances(&b).await,
        vec![(1, "100.00".into()), (2, "80.00".into())]
    );
    assert_eq!(
        (undo_rows(&a).await, undo_rows(&b).await),
        (0, 0),
        "phase 2 deleted the undo logs"
    );

    // Rollback restores both sides.
    let xid: String = ca
        .query_first("SELECT tandem_begin()")
        .await
        .unwrap()
        .unwrap();
    ca.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance - 5, owner = 'x' WHERE id = 1"
    ))
    .await
    .unwrap();
    ca.query_drop(format!(
        "/*+ XID('{xid}') */ INSERT INTO log (note) VALUES ('a'), ('b')"
    ))
    .await
    .unwrap();
    ca.query_drop(format!(
        "/*+ XID('{xid}') */ DELETE FROM account WHERE id = 2"
    ))
    .await
    .unwrap();
    cb.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance + 5 WHERE id = 2"
    ))
    .await
    .unwrap();
    assert_eq!(balances(&a).await, vec![(1, "65.00".into())]);
    let s: String = cb
        .query_first(format!("SELECT tandem_rollback('{xid}')"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, "Rollbacked");
    assert_eq!(
        balances(&a).await,
        vec![(1, "70.00".into()), (2, "50.00".into())]
    );
    assert_eq!(
        balances(&b).await,
        vec![(1, "100.00".into()), (2, "80.00".into())]
    );
    let mut direct = common::connect(&mariadb().url(&a)).await;
    let owner: String = direct
        .query_first("SELECT owner FROM account WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner, "ann");
    let logs: i64 = direct
        .query_first("SELECT COUNT(*) FROM log")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(logs, 0, "inserted rows are deleted again");
    assert_eq!((undo_rows(&a).await, undo_rows(&b).await), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn global_locks_block_other_global_writers_until_commit() {
    let (a, _b, tandem, _) = two_databases("lock");
    let mut c1 = common::connect(&tandem.url(&a)).await;
    let mut c2 = common::connect(&tandem.url(&a)).await;
    let x1: String = c1
        .query_first("SELECT tandem_begin()")
        .await
        .unwrap()
        .unwrap();
    let x2: String = c2
        .query_first("SELECT tandem_begin()")
        .await
        .unwrap()
        .unwrap();
    c1.query_drop(format!(
        "/*+ XID('{x1}') */ UPDATE account SET balance = 1 WHERE id = 1"
    ))
    .await
    .unwrap();
    // The second writer waits for the lock, then fails with 1205 naming the holder.
    let e = c2
        .query_drop(format!(
            "/*+ XID('{x2}') */ UPDATE account SET balance = 2 WHERE id = 1"
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1205), "{e}");
    assert!(e.to_string().contains(&x1), "{e}");
    // Its local change was rolled back; the session is usable.
    let mut direct = common::connect(&mariadb().url(&a)).await;
    let bal: String = direct
        .query_first("SELECT CAST(balance AS CHAR) FROM account WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bal, "1.00");
    // Once the holder commits, the lock is free.
    let s: String = c1
        .query_first(format!("SELECT tandem_commit('{x1}')"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, "Committed");
    c2.query_drop(format!(
        "/*+ XID('{x2}') */ UPDATE account SET balance = 2 WHERE id = 1"
    ))
    .await
    .unwrap();
    let s: String = c2
        .query_first(format!("SELECT tandem_rollback('{x2}')"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, "Rollbacked");
    let bal: String = direct
        .query_first("SELECT CAST(balance AS CHAR) FROM account WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bal, "1.00");
}

#[tokio::test(flavor = "multi_thread")]
async fn dirty_write_stops_the_rollback_for_a_person() {
    let (a, _b, tandem, _) = two_databases("dirty");
    let mut c = common::connect(&tandem.url(&a)).await;
    let xid: String = c
        .query_first("SELECT tandem_begin()")
        .await
        .unwrap()
        .unwrap();
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = 0 WHERE id = 1"
    ))
    .await
    .unwrap();
    // Someone writes the row behind the global transaction's back.
    mariadb().sql(&format!("UPDATE {a}.account SET balance = 42 WHERE id = 1"));
    let s: String = c
        .query_first(format!("SELECT tandem_rollback('{xid}')"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, "Rollbacking", "stuck, not rolled back");
    let (code, body) = tandem.admin(&format!("/v1/transactions/{xid}"));
    assert_eq!(code, 200);
    assert!(body.contains("NeedsAttention"), "{body}");
    let mut direct = common::connect(&mariadb().url(&a)).await;
    let bal: String = direct
        .query_first("SELECT CAST(balance AS CHAR) FROM account WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bal, "42.00", "the other writer's value is left alone");
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_that_cannot_be_undone_are_refused() {
    let (a, _b, tandem, _) = two_databases("refuse");
    let mut c = common::connect(&tandem.url(&a)).await;
    let xid: String = c
        .query_first("SELECT tandem_begin()")
        .await
        .unwrap()
        .unwrap();
    let cases = [
        (
            format!("/*+ XID('{xid}') */ INSERT INTO nokey VALUES (1)"),
            1173,
        ),
        (
            format!("/*+ XID('{xid}') */ UPDATE account SET id = 9 WHERE id = 1"),
            1235,
        ),
        (
            format!("/*+ XID('{xid}') */ INSERT INTO log (note) SELECT owner FROM account"),
            1235,
        ),
        (
            format!("/*+ XID('{xid}') */ REPLACE INTO account VALUES (1, 'z', 1)"),
            1235,
        ),
        (
            format!("/*+ XID('{xid}') */ UPDATE missing SET a = 1"),
            1146,
        ),
        (
            "/*+ XID('no-such') */ UPDATE account SET balance = 1".to_string(),
            1397,
        ),
    ];
    for (sql, code) in &cases {
        let e = c.query_drop(sql).await.unwrap_err();
        assert_eq!(error_code(&e), Some(*code), "{sql}: {e}");
    }
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    let e = c
        .query_drop("CREATE TABLE t2 (a INT PRIMARY KEY)")
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1235), "{e}");
    let e = c
        .exec_drop("UPDATE account SET balance = ? WHERE id = 1", (5,))
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&e),
        Some(1235),
        "prepared statements are refused, not passed through: {e}"
    );
    c.query_drop("SET tandem_xid = NULL").await.unwrap();
    // Nothing changed.
    let mut direct = common::connect(&mariadb().url(&a)).await;
    let n: i64 = direct
        .query_first("SELECT COUNT(*) FROM account WHERE balance = 100")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
}
