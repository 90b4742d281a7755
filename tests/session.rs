//! Sessions behave exactly like the database: session state lives for the life of the client
//! connection, and backend errors arrive with their original code, SQLSTATE and message.

mod common;

use common::{error_code, mariadb, Tandem};
use mysql_async::prelude::*;

fn setup(prefix: &str) -> (String, Tandem) {
    let db = mariadb().fresh_db(prefix);
    let t = Tandem::start(&db);
    (db, t)
}

#[tokio::test(flavor = "multi_thread")]
async fn session_state_persists_across_statements() {
    let (db, tandem) = setup("sess");
    let mut c = common::connect(&tandem.url(&db)).await;

    // USE and the current database.
    mariadb().sql(&format!("CREATE DATABASE IF NOT EXISTS {db}_other"));
    c.query_drop(format!("USE {db}_other")).await.unwrap();
    let cur: String = c.query_first("SELECT DATABASE()").await.unwrap().unwrap();
    assert_eq!(cur, format!("{db}_other"));
    c.query_drop(format!("USE {db}")).await.unwrap();

    // Session variables and user variables.
    c.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES', @x = 42")
        .await
        .unwrap();
    let (mode, x): (String, i64) = c
        .query_first("SELECT @@SESSION.sql_mode, @x")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((mode.as_str(), x), ("ANSI_QUOTES", 42));
    c.query_drop("SET SESSION sql_mode = DEFAULT")
        .await
        .unwrap();

    // LAST_INSERT_ID and temporary tables.
    c.query_drop("CREATE TEMPORARY TABLE tmp (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO tmp (v) VALUES (1), (2), (3)")
        .await
        .unwrap();
    assert_eq!(c.last_insert_id(), Some(1));
    let id: u64 = c
        .query_first("SELECT LAST_INSERT_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, 1);
    let n: i64 = c
        .query_first("SELECT COUNT(*) FROM tmp")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 3);

    // Another client does not see this session's temporary table or variables.
    let mut other = common::connect(&tandem.url(&db)).await;
    let e = other.query_drop("SELECT * FROM tmp").await.unwrap_err();
    assert_eq!(error_code(&e), Some(1146));
    let x: Option<i64> = other.query_first("SELECT @x").await.unwrap().unwrap();
    assert_eq!(x, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_savepoints_and_autocommit() {
    let (db, tandem) = setup("tx");
    mariadb().sql(&format!(
        "CREATE TABLE {db}.acct (id INT PRIMARY KEY, bal INT)"
    ));
    let mut c = common::connect(&tandem.url(&db)).await;
    let mut watcher = common::connect(&mariadb().url(&db)).await;

    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("INSERT INTO acct VALUES (1, 100)")
        .await
        .unwrap();
    c.query_drop("SAVEPOINT s1").await.unwrap();
    c.query_drop("INSERT INTO acct VALUES (2, 200)")
        .await
        .unwrap();
    c.query_drop("ROLLBACK TO SAVEPOINT s1").await.unwrap();
    let in_tx: i64 = c
        .query_first("SELECT @@in_transaction")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(in_tx, 1);
    let seen: i64 = watcher
        .query_first("SELECT COUNT(*) FROM acct")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, 0, "uncommitted rows are invisible to others");
    c.query_drop("COMMIT").await.unwrap();
    let ids: Vec<i64> = watcher.query("SELECT id FROM acct").await.unwrap();
    assert_eq!(ids, vec![1]);

    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE acct SET bal = 0").await.unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    let bal: i64 = watcher
        .query_first("SELECT bal FROM acct WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bal, 100);

    c.query_drop("SET autocommit = 0").await.unwrap();
    c.query_drop("UPDATE acct SET bal = 1").await.unwrap();
    let bal: i64 = watcher
        .query_first("SELECT bal FROM acct WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bal, 100, "autocommit=0 keeps the change open");
    c.query_drop("COMMIT").await.unwrap();
    let bal: i64 = watcher
        .query_first("SELECT bal FROM acct WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bal, 1);

    // A client that leaves mid-transaction leaves nothing behind, and the reused backend
    // connection starts clean for the next client.
    c.query_drop("UPDATE acct SET bal = 999").await.unwrap();
    c.query_drop("SET @leak = 'x'").await.unwrap();
    drop(c);
    let mut next = common::connect(&tandem.url(&db)).await;
    let bal: i64 = next
        .query_first("SELECT bal FROM acct WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bal, 1);
    let (leak, ac): (Option<String>, i64) = next
        .query_first("SELECT @leak, @@autocommit")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((leak, ac), (None, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_keep_their_meaning() {
    let (db, tandem) = setup("ps");
    mariadb().sql(&format!(
        "CREATE TABLE {db}.t (id INT PRIMARY KEY, name VARCHAR(20), amount DECIMAL(10,2))"
    ));
    let mut c = common::connect(&tandem.url(&db)).await;
    let ins = c.prep("INSERT INTO t VALUES (?, ?, ?)").await.unwrap();
    assert_eq!(ins.num_params(), 3);
    for i in 0..10 {
        c.exec_drop(&ins, (i, format!("n{i}"), "12.50"))
            .await
            .unwrap();
    }
    let sel = c
        .prep("SELECT id, name, amount FROM t WHERE id >= ? ORDER BY id")
        .await
        .unwrap();
    assert_eq!(sel.num_params(), 1);
    assert_eq!(sel.num_columns(), 3);
    let rows: Vec<(i32, String, String)> = c.exec(&sel, (7,)).await.unwrap();
    assert_eq!(
        rows,
        vec![
            (7, "n7".into(), "12.50".into()),
            (8, "n8".into(), "12.50".into()),
            (9, "n9".into(), "12.50".into())
        ]
    );
    c.close(sel).await.unwrap();
    // Duplicate key through the binary protocol keeps code and message.
    let e = c.exec_drop(&ins, (1, "dup", "1")).await.unwrap_err();
    match e {
        mysql_async::Error::Server(s) => {
            assert_eq!(s.code, 1062);
            assert_eq!(s.state, "23000");
            assert!(s.message.contains("Duplicate entry '1'"), "{}", s.message);
        }
        other => panic!("expected a server error, got {other}"),
    }
    // SQL-level PREPARE/EXECUTE also works, as on a direct connection.
    c.query_drop("PREPARE p FROM 'SELECT COUNT(*) FROM t WHERE id < ?'")
        .await
        .unwrap();
    c.query_drop("SET @lim = 5").await.unwrap();
    let n: i64 = c
        .query_first("EXECUTE p USING @lim")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_errors_arrive_unchanged() {
    let (db, tandem) = setup("errs");
    let mut direct = common::connect(&mariadb().url(&db)).await;
    let mut proxied = common::connect(&tandem.url(&db)).await;
    for sql in [
        "SELEC 1",
        "SELECT * FROM no_such_table",
        "SELECT no_such_fn()",
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'custom failure', MYSQL_ERRNO = 5001",
    ] {
        let a = direct.query_drop(sql).await.unwrap_err();
        let b = proxied.query_drop(sql).await.unwrap_err();
        match (a, b) {
            (mysql_async::Error::Server(a), mysql_async::Error::Server(b)) => {
                assert_eq!((a.code, &a.state), (b.code, &b.state), "{sql}");
                assert_eq!(
                    a.message.replace(&db, "DB"),
                    b.message.replace(&db, "DB"),
                    "{sql}"
                );
            }
            (a, b) => panic!("{sql}: {a} / {b}"),
        }
        // The connection stays usable after the error.
        let one: i64 = proxied.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_statement_strings_return_every_result() {
    let (db, tandem) = setup("multi");
    let mut c = common::connect(&tandem.url(&db)).await;
    let mut result = c
        .query_iter("SELECT 1 AS a; SELECT 'x' AS b, 'y' AS c; CREATE TEMPORARY TABLE z (i INT); INSERT INTO z VALUES (1),(2); SELECT COUNT(*) FROM z")
        .await
        .unwrap();
    let mut sets = Vec::new();
    while !result.is_empty() {
        let rows: Vec<mysql_async::Row> = result.collect().await.unwrap();
        sets.push((rows.len(), result.affected_rows()));
    }
    drop(result);
    assert_eq!(sets.len(), 5, "{sets:?}");
    assert_eq!(sets[0].0, 1);
    assert_eq!(sets[1].0, 1);
    // An error in the middle ends the batch with that error.
    let e = c
        .query_drop("SELECT 1; SELECT * FROM nope; SELECT 2")
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1146));
    let two: i64 = c.query_first("SELECT 2").await.unwrap().unwrap();
    assert_eq!(two, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_procedures_with_several_results() {
    let (db, tandem) = setup("proc");
    let mut c = common::connect(&tandem.url(&db)).await;
    c.query_drop("CREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2, 3; END")
        .await
        .unwrap();
    let mut r = c.query_iter("CALL p()").await.unwrap();
    let first: Vec<i64> = r.collect().await.unwrap();
    let second: Vec<(i64, i64)> = r.collect().await.unwrap();
    drop(r);
    assert_eq!(first, vec![1]);
    assert_eq!(second, vec![(2, 3)]);
    // Through the binary protocol too.
    let rows: Vec<i64> = c.exec("CALL p()", ()).await.unwrap();
    assert_eq!(rows, vec![1]);
    let still: i64 = c.query_first("SELECT 7").await.unwrap().unwrap();
    assert_eq!(still, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn packets_larger_than_16_mib_cross_in_both_directions() {
    let (db, tandem) = setup("large");
    mariadb().sql(&format!(
        "CREATE TABLE {db}.blobs (id INT PRIMARY KEY, b LONGBLOB)"
    ));
    let mut c = common::connect(&tandem.url(&db)).await;
    // 20 MiB: the statement and the row each span two protocol chunks.
    let blob: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    c.exec_drop("INSERT INTO blobs VALUES (1, ?)", (&blob,))
        .await
        .unwrap();
    let text_sql = format!(
        "INSERT INTO blobs VALUES (2, x'{}')",
        "ab".repeat(9 * 1024 * 1024)
    );
    c.query_drop(&text_sql).await.unwrap();
    let back: Vec<u8> = c
        .query_first("SELECT b FROM blobs WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert!(back == blob, "text protocol read back {} bytes", back.len());
    let back: Vec<u8> = c
        .exec_first("SELECT b FROM blobs WHERE id = ?", (1,))
        .await
        .unwrap()
        .unwrap();
    assert!(
        back == blob,
        "binary protocol read back {} bytes",
        back.len()
    );
    let len: i64 = c
        .query_first("SELECT LENGTH(b) FROM blobs WHERE id = 2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(len, 9 * 1024 * 1024);
}

/// When the database closes a session's connection while the session is idle (its
/// `wait_timeout`, a `KILL` of its thread), the client's connection closes too, as a direct
/// connection's would: the client sees an ended connection, not an error from a proxy that
/// still answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_database_closes_closes_for_the_client() {
    let (db, tandem) = setup("gone");
    // The database's idle timeout.
    let mut c = common::connect(&tandem.url(&db)).await;
    c.query_drop("SET SESSION wait_timeout = 1").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    match c.query_drop("SELECT 1").await {
        Err(mysql_async::Error::Server(e)) => {
            panic!("a proxy's error instead of a closed connection: {e}")
        }
        Err(_) => {}
        Ok(()) => panic!("the connection outlived the database's wait_timeout"),
    }

    // A KILL of the session's thread, from another connection straight to the database.
    let mut raw = common::raw::app(tandem.port, Some(&db)).await;
    let resp = common::raw::query(&mut raw, "SELECT CONNECTION_ID()").await;
    let thread = resp
        .iter()
        .find_map(|(_, p)| {
            let text = String::from_utf8_lossy(p.get(1..)?);
            text.trim().parse::<u64>().ok()
        })
        .expect("the backend thread id");
    mariadb().sql(&format!("KILL CONNECTION {thread}"));
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match raw.io().read_packet(1 << 20).await {
                Ok(Some(p)) => assert_eq!(
                    p.payload.first(),
                    Some(&0xff),
                    "only an error packet before the end"
                ),
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the client's connection stayed open after the KILL"
    );
}

/// `KILL` names a connection by Tandem's id (the handshake's) or by its backend thread's
/// (`CONNECTION_ID()`), and reaches that session's backend threads; only the same user's
/// sessions may be killed, and an unknown id is an error, as on the database.
#[tokio::test(flavor = "multi_thread")]
async fn kill_reaches_the_session_a_client_names() {
    let (db, tandem) = setup("kill");
    let mut c1 = common::connect(&tandem.url(&db)).await;
    let mut c2 = common::connect(&tandem.url(&db)).await;
    c2.query_drop("SELECT 1").await.unwrap();
    // KILL QUERY by Tandem's id: the statement running on c2 ends at once.
    let c2_id = c2.id();
    let sleeping = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r: Result<Option<i64>, _> = c2.query_first("SELECT SLEEP(20)").await;
        (r.map_err(|e| e.to_string()), started.elapsed(), c2)
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    c1.query_drop(format!("KILL QUERY {c2_id}")).await.unwrap();
    let (r, took, mut c2) = sleeping.await.unwrap();
    assert!(
        took < std::time::Duration::from_secs(10),
        "{r:?} after {took:?}"
    );
    assert!(
        r.as_ref().is_err_and(|e| e.contains("1317")),
        "the database's 'Query execution was interrupted': {r:?}"
    );
    // KILL CONNECTION by the backend thread's id: c2's connection ends.
    let thread: u64 = c2
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(thread, u64::from(c2_id), "two ids for one connection");
    c1.query_drop(format!("KILL CONNECTION {thread}"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(c2.query_drop("SELECT 1").await.is_err(), "c2 was killed");
    // Errors as the database gives them.
    let e = c1.query_drop("KILL 999999").await.unwrap_err();
    assert_eq!(error_code(&e), Some(1094), "{e}");
    let other_url = format!("mysql://other@127.0.0.1:{}/{db}", tandem.port);
    let other = common::connect(&other_url).await;
    let e = c1
        .query_drop(format!("KILL {}", other.id()))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1095), "{e}");
    let e = c1.query_drop("KILL USER app").await.unwrap_err();
    assert_eq!(error_code(&e), Some(1235), "{e}");
    // COM_PROCESS_KILL, as old clients send it.
    let mut raw = common::raw::app(tandem.port, Some(&db)).await;
    let victim = common::connect(&tandem.url(&db)).await;
    let mut cmd = vec![0x0c];
    cmd.extend_from_slice(&victim.id().to_le_bytes());
    let resp =
        common::raw::command(&mut raw, &cmd, tandem::wire::scanner::ResponseKind::Single).await;
    assert_eq!(resp.first().map(|(_, p)| p[0]), Some(0x00), "OK: {resp:?}");
    // A session killing itself ends with 1927.
    let mut me = common::connect(&tandem.url(&db)).await;
    let e = me
        .query_drop(format!("KILL {}", me.id()))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1927), "{e}");
}
