//! AT mode through Tandem: statements that join a global transaction record undo logs and
//! take global row locks; global commit keeps the changes, global rollback restores the rows.

mod common;

use common::{error_code, mariadb, Tandem, PASSWORD, USER};
use mysql_async::prelude::*;

/// Tandem with two listeners, one in front of each of two databases.
fn two_databases(prefix: &str) -> (String, String, Tandem, u16) {
    two_databases_with(prefix, "")
}

fn two_databases_with(prefix: &str, coordinator: &str) -> (String, String, Tandem, u16) {
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
    let yaml = common::two_databases_config(
        &mariadb().url(&a),
        &mariadb().url(&b),
        &format!("  lock_retry_interval: 20ms\n  lock_retry_attempts: 10\n{coordinator}"),
    );
    let t = Tandem::start_yaml(&yaml);
    let port_b = t.port_b;
    (a, b, t, port_b)
}

async fn balances(db: &str) -> Vec<(i32, String)> {
    let mut c = common::connect(&mariadb().url(db)).await;
    c.query("SELECT id, CAST(balance AS CHAR) FROM account ORDER BY id")
        .await
        .unwrap()
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
    let xid = common::begin_global(&mut ca).await;
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
    assert_eq!(common::undo_rows(&a).await, 1, "phase 1 wrote the undo log");
    let s = common::end_global(&mut ca, "commit", &xid).await;
    assert_eq!(s, "Committed");
    assert_eq!(
        balances(&a).await,
        vec![(1, "70.00".into()), (2, "50.00".into())]
    );
    assert_eq!(
        balances(&b).await,
        vec![(1, "100.00".into()), (2, "80.00".into())]
    );
    common::wait_no_undo(&[&a, &b]).await; // phase 2 deletes the undo logs

    // Rollback restores both sides.
    let xid = common::begin_global(&mut ca).await;
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
    let s = common::end_global(&mut cb, "rollback", &xid).await;
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
    assert_eq!(
        (common::undo_rows(&a).await, common::undo_rows(&b).await),
        (0, 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn global_locks_block_other_global_writers_until_commit() {
    let (a, _b, tandem, _) = two_databases("lock");
    let mut c1 = common::connect(&tandem.url(&a)).await;
    let mut c2 = common::connect(&tandem.url(&a)).await;
    let x1 = common::begin_global(&mut c1).await;
    let x2 = common::begin_global(&mut c2).await;
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
    let s = common::end_global(&mut c1, "commit", &x1).await;
    assert_eq!(s, "Committed");
    c2.query_drop(format!(
        "/*+ XID('{x2}') */ UPDATE account SET balance = 2 WHERE id = 1"
    ))
    .await
    .unwrap();
    let s = common::end_global(&mut c2, "rollback", &x2).await;
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
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = 0 WHERE id = 1"
    ))
    .await
    .unwrap();
    // Someone writes the row behind the global transaction's back.
    mariadb().sql(&format!("UPDATE {a}.account SET balance = 42 WHERE id = 1"));
    let s = common::end_global(&mut c, "rollback", &xid).await;
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

    // A person puts the row back as the global transaction left it, and retries.
    mariadb().sql(&format!("UPDATE {a}.account SET balance = 0 WHERE id = 1"));
    let (code, body) = tandem.admin_post(&format!("/v1/transactions/{xid}/retry"), "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Rollbacked"), "{body}");
    let bal: String = direct
        .query_first("SELECT CAST(balance AS CHAR) FROM account WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bal, "100.00");

    // Another one stuck for good: a person fixes the data by hand and force-finishes it.
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = 5 WHERE id = 2"
    ))
    .await
    .unwrap();
    mariadb().sql(&format!("UPDATE {a}.account SET balance = 6 WHERE id = 2"));
    let s = common::end_global(&mut c, "rollback", &xid).await;
    assert_eq!(s, "Rollbacking");
    let (code, body) = tandem.admin_post(&format!("/v1/transactions/{xid}/finish"), "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Rollbacked"), "{body}");
    assert_eq!(common::undo_rows(&a).await, 0, "its undo log is gone");
    // The row is free for other global transactions again.
    let other = common::begin_global(&mut c).await;
    c.query_drop(format!(
        "/*+ XID('{other}') */ UPDATE account SET balance = 7 WHERE id = 2"
    ))
    .await
    .unwrap();
    let _ = common::end_global(&mut c, "commit", &other).await;

    // The commit's phase 2 ends in the background.
    let mut m = String::new();
    for _ in 0..100 {
        m = tandem.admin("/metrics").1;
        if m.contains(r#"tandem_global_transactions_total{outcome="Committed"} 1"#) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        m.contains(r#"tandem_global_transactions_total{outcome="Rollbacked"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"tandem_global_transactions_total{outcome="Committed"} 1"#),
        "{m}"
    );
    assert!(
        m.contains("tandem_branch_phase2_seconds_count{action=\"rollback\"}"),
        "{m}"
    );
    assert!(
        m.contains("tandem_store_writes_per_global_transaction"),
        "{m}"
    );
    // The embedded store never runs an operation twice.
    assert!(m.contains("tandem_coordinator_store_retries 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_that_cannot_be_undone_are_refused() {
    let (a, _b, tandem, _) = two_databases("refuse");
    let mut c = common::connect(&tandem.url(&a)).await;
    let xid = common::begin_global(&mut c).await;
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
    for sql in [
        "CALL some_proc()",
        "LOCK TABLES account WRITE",
        "DO 1",
        "PREPARE p FROM 'DELETE FROM account'",
    ] {
        let e = c.query_drop(sql).await.unwrap_err();
        assert_eq!(error_code(&e), Some(1235), "{sql}: {e}");
    }
    // Inside an open branch, autocommit cannot be switched on behind Tandem's back.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE account SET owner = 'ann' WHERE id = 1")
        .await
        .unwrap();
    let e = c.query_drop("SET autocommit = 1").await.unwrap_err();
    assert_eq!(error_code(&e), Some(1235), "{e}");
    c.query_drop("ROLLBACK").await.unwrap();
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

/// Every column type survives update, delete and insert rollbacks exactly, through a client
/// whose character set differs from the table's.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_exact_before_images_for_every_type() {
    let (a, _b, tandem, _) = two_databases("types");
    let ddl = "CREATE TABLE t (
        id INT, k VARCHAR(10), ti TINYINT, biu BIGINT UNSIGNED, d DECIMAL(65,30), f FLOAT,
        db DOUBLE, dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(3) NULL, y YEAR,
        c CHAR(5), vc VARCHAR(50), tx TEXT, bn BINARY(4), vb VARBINARY(20), bl BLOB, bt BIT(10),
        js JSON, en ENUM('a','b'), st SET('x','y'), PRIMARY KEY (id, k)
    ) CHARACTER SET utf8mb4";
    let row1 = "(1, 'é1', -128, 18446744073709551615, '-1234567890123456789012345678901234.123456789012345678901234567890', \
        3.1415927, 2.718281828459045, '2024-02-29', '-838:59:59.999999', '9999-12-31 23:59:59.999999', \
        '2038-01-19 03:14:07.999', 2155, 'ab', 'héllo 😀', 'long text 𝄞', X'00FF7F80', X'000102FEFF', X'DEADBEEF00', \
        b'1010101010', '{\"a\": [1, null]}', 'b', 'x,y')";
    let row2 = "(2, 'k2', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";
    common::mariadb_cli(
        mariadb().port,
        "root",
        "",
        Some(&a),
        &format!("{ddl}; INSERT INTO t VALUES {row1}, {row2}"),
    )
    .unwrap();
    let snapshot = || async {
        let mut c = common::connect(&mariadb().url(&a)).await;
        let rows: Vec<mysql_async::Row> = c.query("SELECT * FROM t ORDER BY id").await.unwrap();
        rows.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>()
    };
    let original = snapshot().await;

    // A latin1 client: images must not pass through its character set.
    let opts =
        mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&tandem.url(&a)).unwrap())
            .setup(vec!["SET NAMES latin1"]);
    let mut c = mysql_async::Conn::new(opts).await.unwrap();
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE t SET ti = 1, biu = 0, d = 0, f = 0, db = 0, dt = '2000-01-01', tm = '00:00:00', dtm = NOW(), ts = NOW(), y = 2000, c = 'z', vc = 'z', tx = 'z', bn = X'01', vb = X'01', bl = X'01', bt = b'1', js = '[]', en = 'a', st = '' WHERE id = 1").await.unwrap();
    c.query_drop("UPDATE t SET vc = 'twice' WHERE id = 1")
        .await
        .unwrap();
    c.query_drop("DELETE FROM t WHERE id = 2").await.unwrap();
    c.query_drop("INSERT INTO t (id, k, vc) VALUES (3, 'new', 'inserted'), (4, 'new', 'inserted')")
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    c.query_drop("SET tandem_xid = NULL").await.unwrap();
    assert_ne!(snapshot().await, original);
    let s = common::end_global(&mut c, "rollback", &xid).await;
    assert_eq!(s, "Rollbacked");
    assert_eq!(snapshot().await, original, "every value restored exactly");
}

/// Two branches of one global transaction change the same row; rollback undoes the later
/// branch first, so the row ends as it began.
#[tokio::test(flavor = "multi_thread")]
async fn two_branches_on_one_row_roll_back_in_reverse() {
    let (a, _b, tandem, _) = two_databases("samerow");
    let mut c1 = common::connect(&tandem.url(&a)).await;
    let mut c2 = common::connect(&tandem.url(&a)).await;
    let xid = common::begin_global(&mut c1).await;
    c1.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = 1 WHERE id = 1"
    ))
    .await
    .unwrap();
    // Same XID from another session: the lock is re-entrant.
    c2.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = 2 WHERE id = 1"
    ))
    .await
    .unwrap();
    let s = common::end_global(&mut c1, "rollback", &xid).await;
    assert_eq!(s, "Rollbacked");
    assert_eq!(balances(&a).await[0], (1, "100.00".to_string()));
}

/// A statement on an unqualified table changes the session's current database, whatever
/// switched it (`USE`, a `USE` after another statement in one query); its undo log still goes
/// to the data source's own database, where phase 2 reads it.
#[tokio::test(flavor = "multi_thread")]
async fn statements_follow_the_current_database() {
    let (a, b, tandem, _) = two_databases("usedb");
    let mut c = common::connect(&tandem.url(&a)).await;
    let xid = common::begin_global(&mut c).await;
    let update = |id: i32, by: i32| {
        format!("/*+ XID('{xid}') */ UPDATE account SET balance = balance - {by} WHERE id = {id}")
    };
    c.query_drop(update(1, 1)).await.unwrap();
    c.query_drop(format!("USE {b}")).await.unwrap();
    c.query_drop(update(2, 7)).await.unwrap();
    c.query_drop(format!("SELECT 1; USE {a}")).await.unwrap();
    c.query_drop(update(2, 5)).await.unwrap();
    assert_eq!(
        (balances(&a).await, balances(&b).await),
        (
            vec![(1, "99.00".to_string()), (2, "45.00".to_string())],
            vec![(1, "100.00".to_string()), (2, "43.00".to_string())]
        )
    );
    assert_eq!(common::undo_rows(&a).await, 3, "every undo log in a");
    let s = common::end_global(&mut c, "rollback", &xid).await;
    assert_eq!(s, "Rollbacked");
    let start = vec![(1, "100.00".to_string()), (2, "50.00".to_string())];
    assert_eq!(
        (balances(&a).await, balances(&b).await),
        (start.clone(), start)
    );
}

/// A branch whose local COMMIT arrives after the global rollback fails and commits nothing.
/// (Its registration is refused; a branch registered just before the rollback would instead
/// collide with the "global finished" marker the rollback leaves when it finds no undo log.)
#[tokio::test(flavor = "multi_thread")]
async fn late_phase_one_commit_fails_after_rollback() {
    let (a, _b, tandem, _) = two_databases("late");
    let mut c = common::connect(&tandem.url(&a)).await;
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE account SET balance = 0 WHERE id = 2")
        .await
        .unwrap();
    // The global transaction is rolled back while this branch has not committed locally.
    let mut other = common::connect(&tandem.url(&a)).await;
    let s = common::end_global(&mut other, "rollback", &xid).await;
    assert_eq!(s, "Rollbacked");
    let e = c.query_drop("COMMIT").await.unwrap_err();
    assert_eq!(error_code(&e), Some(1402), "{e}");
    assert_eq!(
        balances(&a).await[1],
        (2, "50.00".to_string()),
        "nothing committed after the rollback"
    );
}

/// A rollback that finds a registered branch without its undo log (its phase-1 commit not
/// landed yet) leaves the "global finished" marker: the late commit's undo-log insert then
/// collides with it, so the local transaction cannot commit. Old markers are deleted.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_marker_stops_a_late_commit_and_expires() {
    let (a, _b, tandem, _) = two_databases_with("marker", "  finished_marker_retention: 2s");
    let mut c = common::connect(&tandem.url(&a)).await;
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = 1 WHERE id = 1"
    ))
    .await
    .unwrap();
    // Take the undo log away, as if the branch's local commit were still on its way.
    let mut direct = common::connect(&mariadb().url(&a)).await;
    let branch_id: u64 = direct
        .query_first(format!(
            "SELECT branch_id FROM undo_log WHERE xid = '{xid}'"
        ))
        .await
        .unwrap()
        .expect("the branch's undo log");
    direct
        .query_drop(format!("DELETE FROM undo_log WHERE xid = '{xid}'"))
        .await
        .unwrap();

    let s = common::end_global(&mut c, "rollback", &xid).await;
    assert_eq!(s, "Rollbacked");
    let status: Option<i32> = direct
        .query_first(format!(
            "SELECT log_status FROM undo_log WHERE xid = '{xid}' AND branch_id = {branch_id}"
        ))
        .await
        .unwrap();
    assert_eq!(status, Some(1), "the global-finished marker");
    // The late phase-1 commit writes its undo log in its local transaction: it fails there.
    let e = direct
        .query_drop(format!(
            "INSERT INTO undo_log (branch_id, xid, context, rollback_info, log_status, log_created, log_modified) \
             VALUES ({branch_id}, '{xid}', 'serializer=json', '{{}}', 0, NOW(6), NOW(6))"
        ))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1062), "{e}");

    // Past the retention, the marker goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while common::undo_rows(&a).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the marker outlived its retention"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Inside a global transaction, SELECT … FOR UPDATE waits for other global transactions'
/// locks; a plain SELECT does not (Seata AT's read-uncommitted default).
#[tokio::test(flavor = "multi_thread")]
async fn select_for_update_checks_global_locks() {
    let (a, _b, tandem, _) = two_databases("sfu");
    let mut c1 = common::connect(&tandem.url(&a)).await;
    let mut c2 = common::connect(&tandem.url(&a)).await;
    let x1 = common::begin_global(&mut c1).await;
    let x2 = common::begin_global(&mut c2).await;
    c1.query_drop(format!(
        "/*+ XID('{x1}') */ UPDATE account SET balance = 7 WHERE id = 1"
    ))
    .await
    .unwrap();

    c2.query_drop(format!("SET tandem_xid = '{x2}'"))
        .await
        .unwrap();
    let seen: String = c2
        .query_first("SELECT CAST(balance AS CHAR) FROM account WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen, "7.00",
        "a plain read sees the uncommitted global change"
    );
    let e = c2
        .query_drop("SELECT * FROM account WHERE id = 1 FOR UPDATE")
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1205), "{e}");
    assert!(e.to_string().contains(&x1), "{e}");
    // Rows nobody holds, and the holder itself, are not blocked.
    let n: Vec<mysql_async::Row> = c2
        .query("SELECT * FROM account WHERE id = 2 FOR UPDATE")
        .await
        .unwrap();
    assert_eq!(n.len(), 1);
    let own: Vec<mysql_async::Row> = c1
        .query(format!(
            "SELECT /*+ XID('{x1}') */ * FROM account WHERE id = 1 FOR UPDATE"
        ))
        .await
        .unwrap();
    assert_eq!(own.len(), 1);
    // Once the holder ends, the locking read goes through.
    let _ = common::end_global(&mut c1, "rollback", &x1).await;
    let v: String = c2
        .query_first("SELECT CAST(balance AS CHAR) FROM account WHERE id = 1 FOR UPDATE")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, "100.00");
}

/// Prepared statements join global transactions too: their parameters are read from the
/// COM_STMT_EXECUTE to build the images, and the client's own execution is what runs.
#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_join_global_transactions() {
    let (a, _b, tandem, _) = two_databases("prep");
    let mut c = common::connect(&tandem.url(&a)).await;
    let before_log: Vec<(i64, String)> = Vec::new();

    // Rollback: UPDATE, INSERT (AUTO_INCREMENT) and DELETE with parameters of several types.
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    c.exec_drop(
        "UPDATE account SET balance = balance - ?, owner = ? WHERE id = ?",
        ("12.50", "zoë 😀", 1),
    )
    .await
    .unwrap();
    c.exec_drop("INSERT INTO log (note) VALUES (?), (?)", ("x", "y"))
        .await
        .unwrap();
    c.exec_drop("DELETE FROM account WHERE id = ? AND owner = ?", (2, "bob"))
        .await
        .unwrap();
    assert_eq!(balances(&a).await, vec![(1, "87.50".into())]);
    c.query_drop("SET tandem_xid = NULL").await.unwrap();
    let s = common::end_global(&mut c, "rollback", &xid).await;
    assert_eq!(s, "Rollbacked");
    assert_eq!(
        balances(&a).await,
        vec![(1, "100.00".into()), (2, "50.00".into())]
    );
    let mut direct = common::connect(&mariadb().url(&a)).await;
    let logs: Vec<(i64, String)> = direct.query("SELECT id, note FROM log").await.unwrap();
    assert_eq!(logs, before_log);
    let owner: String = direct
        .query_first("SELECT owner FROM account WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner, "ann");

    // Commit, with the XID as a hint inside the prepared text, in an explicit transaction.
    let xid = common::begin_global(&mut c).await;
    let stmt = c
        .prep(format!(
            "UPDATE /*+ XID('{xid}') */ account SET balance = ? WHERE id = ?"
        ))
        .await
        .unwrap();
    c.query_drop("BEGIN").await.unwrap();
    c.exec_drop(&stmt, (1, 1)).await.unwrap();
    c.exec_drop(&stmt, (2, 2)).await.unwrap();
    c.query_drop("COMMIT").await.unwrap();
    let s = common::end_global(&mut c, "commit", &xid).await;
    assert_eq!(s, "Committed");
    assert_eq!(
        balances(&a).await,
        vec![(1, "1.00".into()), (2, "2.00".into())]
    );
    // A prepared locking read checks global locks as well.
    let holder = common::begin_global(&mut c).await;
    c.query_drop(format!(
        "/*+ XID('{holder}') */ UPDATE account SET balance = 3 WHERE id = 1"
    ))
    .await
    .unwrap();
    let other = common::begin_global(&mut c).await;
    c.query_drop(format!("SET tandem_xid = '{other}'"))
        .await
        .unwrap();
    let e = c
        .exec_drop("SELECT * FROM account WHERE id = ? FOR UPDATE", (1,))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1205), "{e}");
}

/// INSERT … ON DUPLICATE KEY UPDATE: rows that existed (by primary key or another unique
/// key) get update-undo, new rows insert-undo.
#[tokio::test(flavor = "multi_thread")]
async fn upsert_rolls_back_updates_and_inserts() {
    let (a, _b, tandem, _) = two_databases("upsert");
    mariadb().sql(&format!(
        "CREATE TABLE {a}.item (id INT PRIMARY KEY, code VARCHAR(10) UNIQUE, qty INT);
         INSERT INTO {a}.item VALUES (1, 'a', 10), (2, 'b', 20);"
    ));
    let snapshot = || async {
        let mut c = common::connect(&mariadb().url(&a)).await;
        c.query::<(i32, String, i32), _>("SELECT id, code, qty FROM item ORDER BY id")
            .await
            .unwrap()
    };
    let original = snapshot().await;
    let mut c = common::connect(&tandem.url(&a)).await;
    let xid = common::begin_global(&mut c).await;
    // id 1 exists; code 'b' exists under id 2; id 7 is new.
    c.query_drop(format!(
        "/*+ XID('{xid}') */ INSERT INTO item (id, code, qty) VALUES (1, 'x', 1), (9, 'b', 2), (7, 'n', 3) \
         ON DUPLICATE KEY UPDATE qty = qty + VALUES(qty)"
    ))
    .await
    .unwrap();
    assert_eq!(
        snapshot().await,
        vec![(1, "a".into(), 11), (2, "b".into(), 22), (7, "n".into(), 3)]
    );
    let s = common::end_global(&mut c, "rollback", &xid).await;
    assert_eq!(s, "Rollbacked");
    assert_eq!(snapshot().await, original);

    // With an AUTO_INCREMENT key left to the database, Tandem cannot know the rows: refused.
    let xid = common::begin_global(&mut c).await;
    let e = c
        .query_drop(format!("/*+ XID('{xid}') */ INSERT INTO log (note) VALUES ('z') ON DUPLICATE KEY UPDATE note = 'y'"))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1235), "{e}");
}
