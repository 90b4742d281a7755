//! AT mode fails closed: inside a global transaction Tandem either undoes a statement exactly
//! or refuses it. One regression test per way a rollback once left data changed, or could.

mod common;

use common::{error_code, mariadb, Tandem};
use mysql_async::prelude::*;
use mysql_async::{Conn, Value};

/// Every row of `db.table`, in primary key order, as the server prints it.
async fn snapshot(db: &str, table: &str) -> Vec<Vec<Value>> {
    let mut c = common::connect(&mariadb().url(db)).await;
    let rows: Vec<mysql_async::Row> = c
        .query(format!("SELECT * FROM `{table}` ORDER BY 1"))
        .await
        .unwrap();
    rows.into_iter().map(|r| r.unwrap()).collect()
}

fn setup(prefix: &str, ddl: &str) -> (String, Tandem) {
    let db = mariadb().fresh_db(prefix);
    mariadb().sql(&format!(
        "USE {db}; {ddl}; {}",
        tandem::at::undo::UNDO_TABLE_DDL
    ));
    let yaml = common::single_config(&mariadb().url(&db), "", "{ max: 8 }").replace(
        "coordinator:",
        "coordinator:\n  lock_retry_interval: 20ms\n  lock_retry_attempts: 10",
    );
    (db, Tandem::start_yaml(&yaml))
}

async fn rollback(c: &mut Conn, xid: &str) {
    assert_eq!(common::end_global(c, "rollback", xid).await, "Rollbacked");
}

fn refused(r: Result<(), mysql_async::Error>, code: u16, what: &str) {
    match r {
        Err(e) => assert_eq!(error_code(&e), Some(code), "{what}: {e}"),
        Ok(()) => panic!("{what}: was not refused"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn literals_with_escapes_select_the_rows_the_statement_changes() {
    // Two keys that a re-printed literal would confuse: a backslash, and the tab `\t` means.
    let (db, tandem) = setup(
        "esc",
        r"CREATE TABLE acct (id VARCHAR(40) PRIMARY KEY, bal INT NOT NULL);
          INSERT INTO acct VALUES ('C:\\temp', 100), ('C:\temp', 100), ('it''s', 100),
            ('x'' OR ''1''=''1', 100), ('quote\'d', 100), ('naïve ✓', 100), ('-- not', 100);",
    );
    let before = snapshot(&db, "acct").await;
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    for id in [
        r"'C:\\temp'",
        r"'it\'s'",
        r"'x'' OR ''1''=''1'",
        r#""quote\'d""#,
        "'naïve ✓'",
        "'-- not' /* a comment */",
        "_utf8mb4'C:\\ttemp' OR id = 'x' -- trailing\n",
    ] {
        c.query_drop(format!(
            "UPDATE /*+ XID('{xid}') */ acct SET bal = bal - 10 WHERE id = {id}"
        ))
        .await
        .unwrap();
    }
    // An injection through a literal cannot widen the image query: one row each.
    c.query_drop(format!(
        "/*+ XID('{xid}') */ DELETE FROM acct WHERE id = 'a'' OR 1=1 -- '"
    ))
    .await
    .unwrap();
    assert_eq!(c.affected_rows(), 0);
    c.query_drop(format!(
        r"/*+ XID('{xid}') */ INSERT INTO acct VALUES ('D:\\new', 1), ('tab\there', 2)"
    ))
    .await
    .unwrap();
    assert_ne!(snapshot(&db, "acct").await, before);
    rollback(&mut c, &xid).await;
    assert_eq!(snapshot(&db, "acct").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_statement_of_a_branch_belongs_to_it() {
    let (db, tandem) = setup(
        "whole",
        "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL);
         INSERT INTO acct VALUES (1, 100), (2, 100), (3, 100);",
    );
    let before = snapshot(&db, "acct").await;
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    // Only the first statement carries the hint; the rest are the same local transaction.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "UPDATE /*+ XID('{xid}') */ acct SET bal = bal - 10 WHERE id = 1"
    ))
    .await
    .unwrap();
    c.query_drop("UPDATE acct SET bal = bal + 10 WHERE id = 2")
        .await
        .unwrap();
    c.exec_drop("DELETE FROM acct WHERE id = ?", (3,))
        .await
        .unwrap();
    // COMMIT as a prepared statement registers the branch all the same.
    let commit = c.prep("COMMIT").await.unwrap();
    c.exec_drop(&commit, ()).await.unwrap();
    assert_eq!(common::undo_rows(&db).await, 1);
    rollback(&mut c, &xid).await;
    assert_eq!(snapshot(&db, "acct").await, before);

    // A local transaction that changed data before joining cannot become a branch.
    let xid = common::begin_global(&mut c).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE acct SET bal = 0 WHERE id = 3")
        .await
        .unwrap();
    let r = c
        .query_drop(format!(
            "UPDATE /*+ XID('{xid}') */ acct SET bal = 1 WHERE id = 1"
        ))
        .await;
    refused(r, 1235, "joining after unimaged writes");
    c.query_drop("ROLLBACK").await.unwrap();
    rollback(&mut c, &xid).await;
    assert_eq!(snapshot(&db, "acct").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_would_run_unseen_is_refused() {
    let (db, tandem) = setup(
        "unseen",
        "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL);
         INSERT INTO acct VALUES (1, 100), (2, 100);
         CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20));
         CREATE TABLE trig (id INT PRIMARY KEY, v INT);
         CREATE TRIGGER trig_ai AFTER UPDATE ON trig FOR EACH ROW INSERT INTO audit (note) VALUES ('t');
         INSERT INTO trig VALUES (1, 1);
         CREATE TABLE parent (id INT PRIMARY KEY) ENGINE=InnoDB;
         CREATE TABLE child (id INT PRIMARY KEY, p INT, FOREIGN KEY (p) REFERENCES parent (id) ON DELETE CASCADE);
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
         CREATE TABLE plain (id INT PRIMARY KEY, v INT) ENGINE=MyISAM;
         CREATE PROCEDURE p() INSERT INTO audit (note) VALUES ('p');",
    );
    let mut direct = common::connect(&mariadb().url(&db)).await;
    direct
        .query_drop(
            "CREATE FUNCTION bump() RETURNS INT MODIFIES SQL DATA \
             BEGIN INSERT INTO audit (note) VALUES ('f'); RETURN 1; END",
        )
        .await
        .unwrap();
    let tables = ["acct", "audit", "trig", "parent", "child", "plain"];
    let mut before = Vec::new();
    for t in tables {
        before.push(snapshot(&db, t).await);
    }
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    let hinted = |sql: &str| sql.replacen("/*X*/", &format!("/*+ XID('{xid}') */"), 1);
    for (sql, code) in [
        ("CREATE /*X*/ TABLE made (id INT PRIMARY KEY)", 1235),
        ("ALTER /*X*/ TABLE acct ADD COLUMN n INT", 1235),
        ("DROP /*X*/ TABLE audit", 1235),
        ("CALL /*X*/ p()", 1235),
        ("UPDATE /*X*/ acct SET bal = 0 /*! WHERE id = 2 */", 1235),
        (
            "UPDATE /*X*/ acct SET bal = 0 /*M!100100 WHERE id = 2 */",
            1235,
        ),
        ("UPDATE /*X*/ acct SET bal = bump() WHERE id = 1", 1235),
        ("SELECT /*X*/ bump()", 1235),
        (
            "UPDATE /*X*/ acct SET bal = 0 WHERE id = 1; UPDATE acct SET bal = 0 WHERE id = 2",
            1235,
        ),
        (
            "SET STATEMENT max_statement_time = 10 FOR UPDATE /*X*/ acct SET bal = 0",
            1235,
        ),
        ("UPDATE /*X*/ trig SET v = 2 WHERE id = 1", 1235),
        ("DELETE /*X*/ FROM parent WHERE id = 1", 1235),
        ("UPDATE /*X*/ plain SET v = 2 WHERE id = 1", 1235),
    ] {
        let r = c.query_drop(hinted(sql)).await;
        refused(r, code, sql);
    }
    // A session joined with SET tandem_xid: a second statement in one query is refused, even
    // behind a harmless first one.
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    for sql in [
        "SELECT 1; UPDATE acct SET bal = 0 WHERE id = 1",
        "DO 1",
        "SELECT bump() FROM acct",
    ] {
        let r = c.query_drop(sql).await;
        refused(r, 1235, sql);
    }
    // ANSI quoting would read literals differently: refused.
    c.query_drop("SET sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        .await
        .unwrap();
    let r = c.query_drop("UPDATE acct SET bal = 0 WHERE id = 1").await;
    refused(r, 1235, "NO_BACKSLASH_ESCAPES");
    // Every statement is, until the session leaves the global transaction.
    let r = c.query_drop("SET sql_mode = @@GLOBAL.sql_mode").await;
    refused(r, 1235, "any statement under NO_BACKSLASH_ESCAPES");
    c.query_drop("SET tandem_xid = NULL").await.unwrap();
    c.query_drop("SET sql_mode = @@GLOBAL.sql_mode")
        .await
        .unwrap();
    rollback(&mut c, &xid).await;
    for (t, b) in tables.iter().zip(before) {
        assert_eq!(snapshot(&db, t).await, b, "{t}");
    }
}

/// A local transaction that changed data before joining cannot join: those changes have no
/// undo. Reads and SETs count as changes when they may have made some (a stored function, a
/// second statement behind a harmless first one), in text and prepared statements.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_transaction_that_may_have_written_does_not_join() {
    let (db, tandem) = setup(
        "wrote",
        "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL);
         INSERT INTO acct VALUES (1, 100), (2, 100);
         CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20))",
    );
    let mut direct = common::connect(&mariadb().url(&db)).await;
    direct
        .query_drop(
            "CREATE FUNCTION bump() RETURNS INT MODIFIES SQL DATA \
             BEGIN INSERT INTO audit (note) VALUES ('f'); RETURN 1; END",
        )
        .await
        .unwrap();
    let accounts = snapshot(&db, "acct").await;
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    let join = format!("UPDATE /*+ XID('{xid}') */ acct SET bal = bal - 1 WHERE id = 1");
    for (before, what) in [
        ("SELECT bump()", "bump()"),
        ("SET @n = bump()", "bump()"),
        ("SELECT 1; DELETE FROM audit", "several statements"),
        ("INSERT INTO audit (note) VALUES ('x')", "a data change"),
    ] {
        c.query_drop("BEGIN").await.unwrap();
        c.query_drop(before).await.unwrap();
        let e = c.query_drop(&join).await.expect_err(before);
        assert_eq!(error_code(&e), Some(1235), "{before}: {e}");
        assert!(e.to_string().contains(what), "{before}: {e}");
        c.query_drop("ROLLBACK").await.unwrap();
    }
    // Prepared, the text is read once, at prepare.
    let stmt = c
        .prep("SELECT bump() FROM acct WHERE id = ?")
        .await
        .unwrap();
    c.query_drop("BEGIN").await.unwrap();
    c.exec_drop(&stmt, (1,)).await.unwrap();
    let e = c.query_drop(&join).await.expect_err("prepared");
    assert!(e.to_string().contains("bump()"), "{e}");
    c.query_drop("ROLLBACK").await.unwrap();
    // Plain reads, built-in functions and locking reads before joining are fine.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("SELECT COUNT(*), MAX(bal) FROM acct WHERE id IN (1, 2) FOR UPDATE")
        .await
        .unwrap();
    c.query_drop(&join).await.unwrap();
    c.query_drop("COMMIT").await.unwrap();
    rollback(&mut c, &xid).await;
    assert_eq!(snapshot(&db, "acct").await, accounts);
    assert_eq!(snapshot(&db, "audit").await, Vec::<Vec<Value>>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_increment_keys_are_the_ones_the_server_assigned() {
    let (db, tandem) = setup(
        "autoinc",
        "CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20));
         INSERT INTO log VALUES (5, 'old');",
    );
    let before = snapshot(&db, "log").await;
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    // 0 and NULL both mean "assign one", as do a missing column and DEFAULT.
    for sql in [
        "INSERT /*X*/ INTO log VALUES (0, 'zero')",
        "INSERT /*X*/ INTO log VALUES (NULL, 'null'), (NULL, 'null 2')",
        "INSERT /*X*/ INTO log (note) VALUES ('none')",
        "INSERT /*X*/ INTO log VALUES (DEFAULT, 'default')",
        "INSERT /*X*/ INTO log VALUES (100, 'given')",
    ] {
        c.query_drop(sql.replace("/*X*/", &format!("/*+ XID('{xid}') */")))
            .await
            .unwrap();
    }
    assert_eq!(snapshot(&db, "log").await.len(), 7);
    rollback(&mut c, &xid).await;
    assert_eq!(snapshot(&db, "log").await, before);

    // Mixed given and assigned keys in one INSERT: the assigned ones cannot be known exactly.
    // The statement ran, so its local transaction is rolled back, and the session says so
    // until the client rolls back.
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("INSERT INTO log (note) VALUES ('first')")
        .await
        .unwrap();
    let r = c
        .query_drop("INSERT INTO log VALUES (NULL, 'a'), (500, 'b'), (NULL, 'c')")
        .await;
    refused(r, 1402, "mixed keys");
    let r = c.query_drop("SELECT 1").await;
    refused(r, 1402, "after the rollback");
    c.query_drop("ROLLBACK").await.unwrap();
    c.query_drop("SELECT 1").await.unwrap();
    // With NO_AUTO_VALUE_ON_ZERO, 0 is a key of its own.
    c.query_drop("SET sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')")
        .await
        .unwrap();
    c.query_drop("INSERT INTO log VALUES (0, 'zero')")
        .await
        .unwrap();
    c.query_drop("SET tandem_xid = NULL").await.unwrap();
    let mut direct = common::connect(&mariadb().url(&db)).await;
    let zero: Option<String> = direct
        .query_first("SELECT note FROM log WHERE id = 0")
        .await
        .unwrap();
    assert_eq!(zero.as_deref(), Some("zero"));
    rollback(&mut c, &xid).await;
    assert_eq!(snapshot(&db, "log").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_whose_rows_differ_from_its_image_is_rolled_back() {
    let (db, tandem) = setup(
        "nondet",
        "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL);
         INSERT INTO t SELECT seq, 0 FROM seq_1_to_40;",
    );
    let before = snapshot(&db, "t").await;
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    let (mut ran, mut refused_n) = (0, 0);
    for _ in 0..20 {
        // The image query and the statement each pick their own random row.
        let r = c
            .query_drop(format!(
                "UPDATE /*+ XID('{xid}') */ t SET v = v + 1 ORDER BY RAND() LIMIT 1"
            ))
            .await;
        match r {
            Ok(()) => ran += 1,
            Err(e) => {
                assert_eq!(error_code(&e), Some(1402), "{e}");
                refused_n += 1;
            }
        }
    }
    assert!(
        refused_n > 0,
        "a random row differs from the image's most of the time"
    );
    rollback(&mut c, &xid).await;
    assert_eq!(
        snapshot(&db, "t").await,
        before,
        "{ran} ran, {refused_n} refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadlock_abandons_the_branch_until_the_client_rolls_back() {
    let (db, tandem) = setup(
        "deadlock",
        "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL);
         INSERT INTO acct VALUES (1, 100), (2, 100);
         CREATE TABLE big (id INT PRIMARY KEY, v INT);
         INSERT INTO big SELECT seq, 0 FROM seq_1_to_200;",
    );
    let before = snapshot(&db, "acct").await;
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "UPDATE /*+ XID('{xid}') */ acct SET bal = 0 WHERE id = 1"
    ))
    .await
    .unwrap();
    // A heavier transaction on a direct connection, so InnoDB picks the branch as the victim.
    let mut other = common::connect(&mariadb().url(&db)).await;
    other.query_drop("BEGIN").await.unwrap();
    other.query_drop("UPDATE big SET v = 1").await.unwrap();
    other
        .query_drop("UPDATE acct SET bal = 5 WHERE id = 2")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let r = c.query_drop("UPDATE acct SET bal = 0 WHERE id = 2").await;
        (c, r)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = other
        .query_drop("UPDATE acct SET bal = 5 WHERE id = 1")
        .await;
    let (mut c, mine) = waiting.await.unwrap();
    r.unwrap();
    refused(mine, 1213, "the branch is the deadlock victim");
    other.query_drop("ROLLBACK").await.unwrap();
    // The local transaction is gone: statements are refused, and COMMIT says so.
    refused(
        c.query_drop("UPDATE acct SET bal = 7 WHERE id = 2").await,
        1402,
        "after the deadlock",
    );
    refused(
        c.query_drop("COMMIT").await,
        1402,
        "commit after the deadlock",
    );
    // COMMIT ended it: the session works again, and nothing was registered.
    c.query_drop("SELECT 1").await.unwrap();
    assert_eq!(common::undo_rows(&db).await, 0);
    rollback(&mut c, &xid).await;
    assert_eq!(snapshot(&db, "acct").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_connection_ends_the_branch() {
    let (db, tandem) = setup(
        "reset",
        "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL);
         INSERT INTO acct VALUES (1, 100);",
    );
    let before = snapshot(&db, "acct").await;
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE acct SET bal = 0 WHERE id = 1")
        .await
        .unwrap();
    c.reset().await.unwrap();
    // The database rolled the transaction back; tandem_xid is gone with the session.
    assert_eq!(snapshot(&db, "acct").await, before);
    c.query_drop("UPDATE acct SET bal = 1 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        common::undo_rows(&db).await,
        0,
        "not part of the global transaction"
    );
    rollback(&mut c, &xid).await;
    let mut direct = common::connect(&mariadb().url(&db)).await;
    let bal: i64 = direct
        .query_first("SELECT bal FROM acct WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bal, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_the_database_refuses_waits_for_a_person() {
    let (db, tandem) = setup(
        "refuse",
        "CREATE TABLE t (id INT PRIMARY KEY, code VARCHAR(10) UNIQUE, g INT AS (id * 2) VIRTUAL);
         INSERT INTO t (id, code) VALUES (1, 'a'), (2, 'b');",
    );
    let before = snapshot(&db, "t").await;
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!("/*+ XID('{xid}') */ DELETE FROM t WHERE id = 1"))
        .await
        .unwrap();
    // Another writer takes the unique value the deleted row had.
    mariadb().sql(&format!("INSERT INTO {db}.t (id, code) VALUES (3, 'a')"));
    let s = common::end_global(&mut c, "rollback", &xid).await;
    assert_eq!(
        s, "Rollbacking",
        "re-inserting row 1 collides on the unique key"
    );
    let (code, body) = tandem.admin(&format!("/v1/transactions/{xid}"));
    assert_eq!(code, 200);
    assert!(body.contains("NeedsAttention"), "{body}");
    assert!(
        body.contains("1062"),
        "the database's error is shown: {body}"
    );
    // Not retried in a loop, and the row's lock is kept: a global writer of row 1 waits.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        !tandem.log().contains("it will be retried"),
        "{}",
        tandem.log()
    );
    let other = common::begin_global(&mut c).await;
    let r = c
        .query_drop(format!(
            "/*+ XID('{other}') */ INSERT INTO t (id, code) VALUES (1, 'z')"
        ))
        .await;
    refused(r, 1205, "row 1 is still locked");
    rollback(&mut c, &other).await;
    // A person clears the way and retries: the row comes back, its generated column computed.
    mariadb().sql(&format!("DELETE FROM {db}.t WHERE id = 3"));
    let (code, body) = tandem.admin_post(&format!("/v1/transactions/{xid}/retry"), "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Rollbacked"), "{body}");
    assert_eq!(snapshot(&db, "t").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_the_database_takes_for_one_row_share_one_lock() {
    let (db, tandem) = setup(
        "collate",
        "CREATE TABLE ci (k VARCHAR(10) COLLATE utf8mb4_general_ci PRIMARY KEY, v INT);
         INSERT INTO ci VALUES ('abc', 1);",
    );
    let before = snapshot(&db, "ci").await;
    let mut c1 = common::connect(&tandem.url(&db)).await;
    let mut c2 = common::connect(&tandem.url(&db)).await;
    let x1 = common::begin_global(&mut c1).await;
    c1.query_drop(format!("/*+ XID('{x1}') */ DELETE FROM ci WHERE k = 'abc'"))
        .await
        .unwrap();
    // 'ABC ' is the same key under this collation: the deleted row's lock covers it.
    let x2 = common::begin_global(&mut c2).await;
    let r = c2
        .query_drop(format!(
            "/*+ XID('{x2}') */ INSERT INTO ci VALUES ('ABC ', 2)"
        ))
        .await;
    refused(r, 1205, "an insert of the same key under another spelling");
    rollback(&mut c2, &x2).await;
    rollback(&mut c1, &x1).await;
    assert_eq!(snapshot(&db, "ci").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locking_read_waits_without_holding_the_rows() {
    let db = mariadb().fresh_db("lockread");
    mariadb().sql(&format!(
        "USE {db}; CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL);
         INSERT INTO acct VALUES (1, 100), (2, 100);"
    ));
    let yaml = common::single_config(&mariadb().url(&db), "", "{ max: 8 }").replace(
        "coordinator:",
        "coordinator:\n  lock_retry_interval: 50ms\n  lock_retry_attempts: 100",
    );
    let tandem = Tandem::start_yaml(&yaml);
    for lock in [
        "FOR UPDATE /* trailing */",
        "LOCK IN SHARE MODE",
        "FOR UPDATE -- c\n",
    ] {
        let mut c1 = common::connect(&tandem.url(&db)).await;
        let mut c2 = common::connect(&tandem.url(&db)).await;
        let x1 = common::begin_global(&mut c1).await;
        c1.query_drop(format!(
            "/*+ XID('{x1}') */ UPDATE acct SET bal = 0 WHERE id = 1"
        ))
        .await
        .unwrap();
        let x2 = common::begin_global(&mut c2).await;
        c2.query_drop(format!("SET tandem_xid = '{x2}'"))
            .await
            .unwrap();
        c2.query_drop("BEGIN").await.unwrap();
        let read = format!("SELECT bal FROM acct WHERE id = 1 {lock}");
        let reader = tokio::spawn(async move {
            let bal: Result<Option<i64>, _> = c2.query_first(read).await;
            (c2, bal)
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // The holder's rollback restores the row while the reader waits for its lock.
        let started = std::time::Instant::now();
        assert_eq!(
            common::end_global(&mut c1, "rollback", &x1).await,
            "Rollbacked"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{lock}: the rollback waited {:?} for the reader's row locks",
            started.elapsed()
        );
        let (mut c2, bal) = reader.await.unwrap();
        assert_eq!(
            bal.unwrap(),
            Some(100),
            "{lock}: the reader sees the restored row"
        );
        c2.query_drop("COMMIT").await.unwrap();
        c2.query_drop("SET tandem_xid = NULL").await.unwrap();
        rollback(&mut c2, &x2).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn session_state_that_would_mislead_the_images_is_refused() {
    let (db, tandem) = setup(
        "session",
        "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL);
         INSERT INTO acct VALUES (1, 100), (6, 100);
         CREATE TABLE hid (h INT INVISIBLE DEFAULT 0, id INT PRIMARY KEY, v INT);
         INSERT INTO hid (id, v) VALUES (6, 1);
         CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20));",
    );
    let tables = ["acct", "hid", "audit"];
    let mut before = Vec::new();
    for t in tables {
        before.push(snapshot(&db, t).await);
    }
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    let hint = format!("/*+ XID('{xid}') */");

    // A positional INSERT skips the invisible column: the key is 5, not 6.
    c.query_drop(format!("INSERT {hint} INTO hid VALUES (5, 2)"))
        .await
        .unwrap();
    // A character set whose multi-byte characters may end in a backslash.
    c.query_drop("SET NAMES gbk").await.unwrap();
    refused(
        c.query_drop(format!("UPDATE {hint} acct SET bal = 0 WHERE id = 1"))
            .await,
        1235,
        "character_set_client gbk",
    );
    c.query_drop("SET NAMES utf8mb4").await.unwrap();
    // A temporary table hides the base table the images would read.
    c.query_drop(format!(
        "CREATE TEMPORARY TABLE acct (id INT PRIMARY KEY, bal INT) SELECT * FROM {db}.acct"
    ))
    .await
    .unwrap();
    refused(
        c.query_drop(format!("DELETE {hint} FROM acct WHERE id = 1"))
            .await,
        1235,
        "temporary table",
    );
    c.query_drop("DROP TEMPORARY TABLE acct").await.unwrap();
    // Inside XA.
    c.query_drop("XA START 'x1'").await.unwrap();
    refused(
        c.query_drop(format!("UPDATE {hint} acct SET bal = 0 WHERE id = 1"))
            .await,
        1235,
        "XA",
    );
    c.query_drop("XA END 'x1'").await.unwrap();
    c.query_drop("XA ROLLBACK 'x1'").await.unwrap();
    // In a branch: SET PASSWORD would commit it.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!("UPDATE {hint} acct SET bal = 1 WHERE id = 6"))
        .await
        .unwrap();
    refused(
        c.query_drop("SET PASSWORD = PASSWORD('x')").await,
        1235,
        "SET PASSWORD in a branch",
    );
    c.query_drop("COMMIT").await.unwrap();
    rollback(&mut c, &xid).await;
    for (t, b) in tables.iter().zip(before) {
        assert_eq!(snapshot(&db, t).await, b, "{t}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn autocommit_off_and_the_way_out_of_a_bad_setting() {
    let (db, tandem) = setup(
        "acoff",
        "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL);
         INSERT INTO acct VALUES (1, 100);",
    );
    let before = snapshot(&db, "acct").await;
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid = common::begin_global(&mut c).await;
    // JDBC's setAutoCommit(false): the first statement opens the local transaction.
    c.query_drop("SET autocommit = 0").await.unwrap();
    c.query_drop(format!("SET tandem_xid = '{xid}'"))
        .await
        .unwrap();
    c.query_drop("INSERT INTO acct VALUES (7, 1)")
        .await
        .unwrap();
    c.query_drop("UPDATE acct SET bal = 0 WHERE id = 1")
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    assert_eq!(common::undo_rows(&db).await, 1, "one branch, registered");
    // A setting Tandem cannot read under: everything is refused but a bare ROLLBACK.
    c.query_drop("UPDATE acct SET bal = 5 WHERE id = 1")
        .await
        .unwrap();
    c.query_drop("SET NAMES sjis").await.unwrap();
    refused(
        c.query_drop("UPDATE acct SET bal = 6 WHERE id = 1").await,
        1235,
        "sjis",
    );
    c.query_drop("ROLLBACK").await.unwrap();
    c.query_drop("SET tandem_xid = NULL").await.unwrap();
    c.query_drop("SET NAMES utf8mb4").await.unwrap();
    c.query_drop("SET autocommit = 1").await.unwrap();
    rollback(&mut c, &xid).await;
    assert_eq!(snapshot(&db, "acct").await, before);
}
