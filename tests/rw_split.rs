//! Read/write splitting, against a real MariaDB primary and a GTID replica of it that the
//! project's own script starts (`scripts/mariadb.sh start-primary` / `start-replica`).

mod common;

use std::time::Duration;

use common::ReplicatedPair;
use tandem::backend::health::{self, Health};
use tandem::backend::Pool;

/// The pair the tests route over behaves as a primary and its replica do: writes reach the
/// replica, the replica refuses writes of its own (read-only), a marker row written on the
/// replica alone (`sql_log_bin = 0`) tells which server answered, and a stopped SQL thread
/// makes the replica lag until it starts again.
#[test]
fn the_test_servers_replicate() {
    let pair = ReplicatedPair::start("pair");
    pair.primary_sql(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20));
         INSERT INTO shop.t VALUES (1, 'primary')",
    );
    pair.caught_up();
    assert_eq!(
        pair.replica_sql("SELECT v FROM shop.t WHERE id = 1").trim(),
        "primary"
    );
    assert_eq!(pair.replica_sql("SELECT @@read_only").trim(), "1");
    // As a test marks the replica: root may write there with the binary log off.
    pair.replica_sql("SET sql_log_bin = 0; INSERT INTO shop.t VALUES (2, 'replica')");
    assert_eq!(pair.primary_sql("SELECT COUNT(*) FROM shop.t").trim(), "1");

    pair.replica_sql("STOP SLAVE SQL_THREAD");
    pair.primary_sql("INSERT INTO shop.t VALUES (3, 'late')");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        pair.replica_sql("SELECT COUNT(*) FROM shop.t WHERE id = 3")
            .trim(),
        "0",
        "a stopped SQL thread applies nothing"
    );
    pair.replica_sql("START SLAVE SQL_THREAD");
    pair.caught_up();
    assert_eq!(
        pair.replica_sql("SELECT v FROM shop.t WHERE id = 3").trim(),
        "late"
    );
}

/// The replica monitor sees what the replica does: usable while it replicates, not when its
/// SQL thread stops or the server is down, and usable again once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn the_replica_monitor_sees_replication_stop_and_the_server_go() {
    let pair = ReplicatedPair::start("health");
    let dsn = tandem::config::Dsn::parse(&format!("mysql://root@127.0.0.1:{}/mysql", pair.replica))
        .unwrap();
    let pool = Pool::new(
        "replica",
        dsn,
        tandem::config::Pool::default(),
        tandem::metrics::Metrics::new().pool("replica"),
    );
    let max_lag = Duration::from_secs(5);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let metrics = tandem::metrics::Metrics::new();
    let seen = health::monitor(
        pool.clone(),
        max_lag,
        Duration::from_millis(100),
        metrics.replica_lag("replica"),
        shutdown,
    );
    let until = |want: fn(&Health) -> bool, what: &'static str| {
        let mut seen = seen.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), seen.wait_for(want))
                .await
                .unwrap_or_else(|_| panic!("the monitor never saw {what}"))
                .map(|h| h.clone())
                .unwrap()
        }
    };
    assert!(until(Health::usable, "a usable replica").await.lag() <= Some(max_lag));

    pair.replica_sql("STOP SLAVE SQL_THREAD");
    let found = until(
        |h| matches!(h, Health::NotReplicating(_)),
        "replication stop",
    )
    .await;
    assert!(
        format!("{found:?}").contains("Slave_SQL_Running"),
        "{found:?}"
    );
    pair.replica_sql("START SLAVE SQL_THREAD");
    until(Health::usable, "replication start again").await;

    pair.stop_replica();
    until(|h| matches!(h, Health::Down(_)), "the server gone").await;
    pair.restart_replica();
    until(Health::usable, "the server back").await;
}

/// `whoami` answers which server a read ran on: its one row differs on each (written with
/// the binary log off).
fn mark_servers(pair: &ReplicatedPair, db: &str) {
    pair.primary_sql(&format!(
        "CREATE DATABASE IF NOT EXISTS {db};
         CREATE TABLE {db}.whoami (server VARCHAR(10));
         CREATE TABLE {db}.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20));"
    ));
    pair.caught_up();
    pair.primary_sql(&format!(
        "SET sql_log_bin = 0; INSERT INTO {db}.whoami VALUES ('primary')"
    ));
    pair.replica_sql(&format!(
        "SET sql_log_bin = 0; INSERT INTO {db}.whoami VALUES ('replica')"
    ));
}

async fn who(c: &mut mysql_async::Conn, sql: &str) -> String {
    use mysql_async::prelude::*;
    c.query_first::<String, _>(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_default()
}

/// Waits until `sql` (a read of `whoami`) is answered by the replica: a freshly started
/// Tandem sends reads there once its monitor has seen the replica replicate, which on a
/// loaded machine may come after the first read.
async fn replica_taken(c: &mut mysql_async::Conn, sql: &str) {
    let start = std::time::Instant::now();
    while who(c, sql).await != "replica" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the replica never took reads"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads outside transactions go to the replica; writes, transactions, locking reads, the
/// primary hint and reads of the session's own state go to the primary; the session's
/// database and session variables hold on the replica too.
#[tokio::test(flavor = "multi_thread")]
async fn reads_go_to_the_replica_and_everything_else_to_the_primary() {
    use mysql_async::prelude::*;
    let pair = ReplicatedPair::start("routing");
    mark_servers(&pair, "shop");
    mark_servers(&pair, "other");
    let tandem = pair.tandem("shop");
    let mut c = common::connect(&tandem.url("shop")).await;
    let ask = "SELECT server FROM whoami";
    replica_taken(&mut c, ask).await;
    assert_eq!(
        who(&mut c, "SELECT /*+ PRIMARY */ server FROM whoami").await,
        "primary"
    );
    assert_eq!(
        who(&mut c, "SELECT server FROM whoami FOR UPDATE").await,
        "primary"
    );
    c.query_drop("BEGIN").await.unwrap();
    assert_eq!(who(&mut c, ask).await, "primary", "in a transaction");
    c.query_drop("COMMIT").await.unwrap();
    // A write goes to the primary: the read-only replica would refuse it (1290).
    c.query_drop("INSERT INTO t (v) VALUES ('a')")
        .await
        .unwrap();
    let id: u64 = c
        .query_first("SELECT LAST_INSERT_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, 1);
    c.query_drop("SET @x = 41").await.unwrap();
    let x: i64 = c.query_first("SELECT @x + 1").await.unwrap().unwrap();
    assert_eq!(x, 42);
    // Session variables reach the replica.
    c.query_drop("SET SESSION div_precision_increment = 8")
        .await
        .unwrap();
    let third = "SELECT CONCAT(server, ' ', 1/3) FROM whoami";
    assert_eq!(who(&mut c, third).await, "replica 0.33333333");
    c.query_drop("SET SESSION div_precision_increment = 2")
        .await
        .unwrap();
    assert_eq!(who(&mut c, third).await, "replica 0.33");
    // Under ANSI_QUOTES the planner does not read text: reads stay on the primary.
    c.query_drop("SET sql_mode = 'ANSI_QUOTES'").await.unwrap();
    assert_eq!(who(&mut c, ask).await, "primary");
    c.query_drop("SET sql_mode = ''").await.unwrap();
    assert_eq!(who(&mut c, ask).await, "replica");
    // So does the current database.
    c.query_drop("USE other").await.unwrap();
    assert_eq!(who(&mut c, ask).await, "replica");
    let db: String = c.query_first("SELECT DATABASE()").await.unwrap().unwrap();
    assert_eq!(db, "other");
    c.query_drop("USE shop").await.unwrap();
    // A temporary table lives on the primary's connection: reads stay there while it does.
    c.query_drop("CREATE TEMPORARY TABLE scratch (id INT)")
        .await
        .unwrap();
    assert_eq!(who(&mut c, ask).await, "primary");
    c.query_drop("DROP TEMPORARY TABLE scratch").await.unwrap();
    assert_eq!(who(&mut c, ask).await, "replica");
    // LOCK TABLES holds on the primary's connection: reads stay there until UNLOCK TABLES.
    c.query_drop("LOCK TABLES whoami READ").await.unwrap();
    assert_eq!(who(&mut c, ask).await, "primary");
    c.query_drop("UNLOCK TABLES").await.unwrap();
    assert_eq!(who(&mut c, ask).await, "replica");
    // SHOW WARNINGS answers about the statement before it, where it ran.
    c.query_drop("SELECT CAST('1x' AS SIGNED) FROM whoami")
        .await
        .unwrap();
    let warnings: Vec<mysql_async::Row> = c.query("SHOW WARNINGS").await.unwrap();
    assert_eq!(warnings.len(), 1);

    let (_, metrics) = tandem.admin("/metrics");
    assert!(
        metrics.contains(r#"tandem_reads_total{backend="replica",listener="main"}"#),
        "{metrics}"
    );
}

/// Read-your-writes: with the replica's SQL thread stopped, a read after a write waits a
/// moment and runs on the primary, so it sees the write; once the replica has applied the
/// write, reads go back to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_after_a_write_sees_it() {
    use mysql_async::prelude::*;
    let pair = ReplicatedPair::start("ryw");
    mark_servers(&pair, "shop");
    let tandem = pair.tandem("shop");
    let mut c = common::connect(&tandem.url("shop")).await;
    replica_taken(&mut c, "SELECT server FROM whoami").await;
    pair.replica_sql("STOP SLAVE SQL_THREAD");
    c.query_drop("INSERT INTO t (v) VALUES ('mine')")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let v: Option<String> = c
        .query_first("SELECT v FROM t WHERE v = 'mine'")
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("mine"), "the session sees its own write");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it waited for the replica first"
    );
    // A write through a prepared statement counts the same.
    let insert = c.prep("INSERT INTO t (v) VALUES (?)").await.unwrap();
    c.exec_drop(&insert, ("prepared",)).await.unwrap();
    let v: Option<String> = c
        .query_first("SELECT v FROM t WHERE v = 'prepared'")
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("prepared"));
    pair.replica_sql("START SLAVE SQL_THREAD");
    pair.caught_up();
    // Once the replica's monitor sees it replicate again, reads go back to it.
    let start = std::time::Instant::now();
    while who(&mut c, "SELECT server FROM whoami").await != "replica" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the replica was never taken back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replicating, it applies the next write within the wait: the read is the replica's.
    c.query_drop("INSERT INTO t (v) VALUES ('again')")
        .await
        .unwrap();
    let seen: Option<(String, String)> = c
        .query_first("SELECT t.v, w.server FROM t, whoami w WHERE t.v = 'again'")
        .await
        .unwrap();
    assert_eq!(seen, Some(("again".into(), "replica".into())));
    let (_, metrics) = tandem.admin("/metrics");
    assert!(
        metrics.contains("tandem_primary_fallbacks_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_gtid_wait_seconds_count"),
        "{metrics}"
    );
}

/// A replica that goes down takes no reads (they go to the primary) and is taken back once
/// it is up and replicating again.
#[tokio::test(flavor = "multi_thread")]
async fn reads_leave_a_replica_that_is_down_and_come_back() {
    let pair = ReplicatedPair::start("down");
    mark_servers(&pair, "shop");
    let tandem = pair.tandem("shop");
    let mut c = common::connect(&tandem.url("shop")).await;
    let ask = "SELECT server FROM whoami";
    replica_taken(&mut c, ask).await;
    pair.stop_replica();
    // The session's replica connection is dead: the read, of which nothing reached the
    // client, runs on the primary instead of failing.
    assert_eq!(who(&mut c, ask).await, "primary");
    // Every read is answered, by the primary once the monitor has seen the replica go.
    let start = std::time::Instant::now();
    loop {
        let mut fresh = common::connect(&tandem.url("shop")).await;
        if who(&mut fresh, ask).await == "primary" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "reads never left the replica"
        );
    }
    pair.restart_replica();
    let start = std::time::Instant::now();
    loop {
        let mut fresh = common::connect(&tandem.url("shop")).await;
        if who(&mut fresh, ask).await == "replica" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the replica was never taken back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A global transaction through an `rw_split` listener runs on the primary (its images are
/// read there) and commits and rolls back as through `single`; prepared statements keep
/// their meaning.
#[tokio::test(flavor = "multi_thread")]
async fn global_transactions_and_prepared_statements_through_rw_split() {
    use mysql_async::prelude::*;
    let pair = ReplicatedPair::start("global");
    mark_servers(&pair, "shop");
    pair.primary_sql(&format!(
        "CREATE TABLE shop.acct (id INT PRIMARY KEY, bal INT NOT NULL);
         INSERT INTO shop.acct VALUES (1, 100);
         USE shop; {}",
        tandem::at::undo::UNDO_TABLE_DDL
    ));
    pair.caught_up();
    let tandem = pair.tandem("shop");
    let mut c = common::connect(&tandem.url("shop")).await;
    for (end, want, bal) in [("rollback", "Rollbacked", 100), ("commit", "Committed", 90)] {
        let xid = common::begin_global(&mut c).await;
        c.query_drop(format!(
            "UPDATE /*+ XID('{xid}') */ acct SET bal = bal - 10 WHERE id = 1"
        ))
        .await
        .unwrap();
        assert_eq!(common::end_global(&mut c, end, &xid).await, want);
        let on_primary: i64 = c
            .query_first("SELECT /*+ PRIMARY */ bal FROM acct WHERE id = 1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(on_primary, bal, "{end}");
    }
    let stmt = c
        .prep("SELECT server FROM whoami WHERE server <> ?")
        .await
        .unwrap();
    let server: Option<String> = c.exec_first(&stmt, ("nobody",)).await.unwrap();
    assert_eq!(server.as_deref(), Some("replica"));
    c.query_drop("SET @n = 7").await.unwrap();
    let stmt = c.prep("SELECT @n * ?").await.unwrap();
    let n: Option<i64> = c.exec_first(&stmt, (6,)).await.unwrap();
    assert_eq!(n, Some(42));
}

/// A replica further behind than `max_replica_lag` takes no reads until it catches up. The
/// replica is made to lag for real: it applies events only 4 s after the primary wrote them
/// (`MASTER_DELAY`), so `Seconds_Behind_Master` climbs past the 1 s limit while an event
/// waits.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_too_far_behind_takes_no_reads_until_it_catches_up() {
    let pair = ReplicatedPair::start("lag");
    mark_servers(&pair, "shop");
    let tandem = pair.tandem_with("shop", "    max_replica_lag: 1s");
    let ask = "SELECT server FROM whoami";
    let read = || async {
        let mut c = common::connect(&tandem.url("shop")).await;
        who(&mut c, ask).await
    };
    replica_taken(&mut common::connect(&tandem.url("shop")).await, ask).await;
    assert_eq!(read().await, "replica");
    pair.replica_sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 4; START SLAVE");
    // Replicating again (the restart of its threads is not what this test is about).
    let start = std::time::Instant::now();
    while read().await != "replica" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the replica did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pair.primary_sql("INSERT INTO shop.t (v) VALUES ('late')");
    let lag = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(r#"tandem_replica_lag_seconds{data_source="replica"} "#))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let start = std::time::Instant::now();
    let (mut seen_primary, mut seen_lag) = (false, 0.0f64);
    while start.elapsed() < Duration::from_secs(4) && !(seen_primary && seen_lag > 1.0) {
        seen_primary |= read().await == "primary";
        seen_lag = seen_lag.max(lag(&tandem.admin("/metrics").1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_primary, "reads never left the lagging replica");
    assert!(seen_lag > 1.0, "the monitor saw a lag of {seen_lag} s");
    pair.replica_sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE");
    pair.caught_up();
    let start = std::time::Instant::now();
    while read().await != "replica" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the replica was never taken back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many prepared statements a server holds now.
fn prepared_on(out: &str) -> u64 {
    out.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Prepared_stmt_count in {out:?}"))
}

/// A statement prepared once runs wherever each execution goes: a read outside a
/// transaction on the replica (prepared there under an id of its own, the first time), the
/// rest on the primary; read-your-writes holds for prepared reads; closing the statement
/// closes the replica's copy.
#[tokio::test(flavor = "multi_thread")]
async fn prepared_reads_run_on_the_replica() {
    use mysql_async::prelude::*;
    let pair = ReplicatedPair::start("prepared");
    mark_servers(&pair, "shop");
    let tandem = pair.tandem("shop");
    let mut c = common::connect(&tandem.url("shop")).await;
    let stmt = c
        .prep("SELECT server FROM whoami WHERE server <> ?")
        .await
        .unwrap();
    for _ in 0..3 {
        let server: Option<String> = c.exec_first(&stmt, ("nobody",)).await.unwrap();
        assert_eq!(server.as_deref(), Some("replica"));
    }
    let count = "SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'";
    assert_eq!(
        prepared_on(&pair.replica_sql(count)),
        1,
        "one copy on the replica"
    );
    // A locking read, a read of the session's own connection, and any read in a
    // transaction run on the primary.
    let locking = c
        .prep("SELECT server FROM whoami WHERE server <> ? FOR UPDATE")
        .await
        .unwrap();
    let server: Option<String> = c.exec_first(&locking, ("nobody",)).await.unwrap();
    assert_eq!(server.as_deref(), Some("primary"));
    c.query_drop("INSERT INTO t (v) VALUES ('first')")
        .await
        .unwrap();
    let last = c.prep("SELECT LAST_INSERT_ID() + ?").await.unwrap();
    let id: Option<i64> = c.exec_first(&last, (0,)).await.unwrap();
    assert_eq!(id, Some(1));
    c.query_drop("BEGIN").await.unwrap();
    let server: Option<String> = c.exec_first(&stmt, ("nobody",)).await.unwrap();
    assert_eq!(server.as_deref(), Some("primary"));
    c.query_drop("COMMIT").await.unwrap();
    // A write the replica has not applied: the prepared read waits, then the primary answers.
    pair.replica_sql("STOP SLAVE SQL_THREAD");
    let insert = c.prep("INSERT INTO t (v) VALUES (?)").await.unwrap();
    c.exec_drop(&insert, ("mine",)).await.unwrap();
    let find = c.prep("SELECT COUNT(*) FROM t WHERE v = ?").await.unwrap();
    let n: Option<i64> = c.exec_first(&find, ("mine",)).await.unwrap();
    assert_eq!(n, Some(1), "the session sees its own prepared write");
    pair.replica_sql("START SLAVE SQL_THREAD");
    pair.caught_up();
    c.close(stmt).await.unwrap();
    c.close(find).await.unwrap();
    // mysql_async closes statements as it goes; whatever it kept, the replica holds no more
    // copies than the session has statements open, and none once the session is gone.
    drop(c);
    let start = std::time::Instant::now();
    while prepared_on(&pair.replica_sql(count)) != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the replica still holds the session's statements"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An execution that does not bind its parameter types again (a driver sends them once)
/// runs on a replica connection that never saw them: Tandem binds them for it.
#[tokio::test(flavor = "multi_thread")]
async fn an_execution_reusing_its_types_runs_on_the_replica() {
    use tandem::wire::scanner::ResponseKind;
    let pair = ReplicatedPair::start("types");
    mark_servers(&pair, "shop");
    let tandem = pair.tandem("shop");
    let mut r = common::raw::app(tandem.port, Some("shop")).await;
    let mut prepare = vec![0x16];
    prepare.extend_from_slice(b"SELECT server FROM whoami WHERE server <> ?");
    let resp = common::raw::command(&mut r, &prepare, ResponseKind::Prepare).await;
    assert_eq!(resp[0].1[0], 0x00, "{resp:?}");
    let id = resp[0].1[1..5].to_vec();
    let execute = |bind: bool| {
        let mut p = vec![0x17];
        p.extend_from_slice(&id);
        p.push(0);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(0); // null bitmap
        p.push(u8::from(bind));
        if bind {
            p.extend_from_slice(&[0xfe, 0x00]); // STRING
        }
        p.push(6);
        p.extend_from_slice(b"nobody");
        p
    };
    // The first execution, in a transaction, binds the types on the primary.
    common::raw::query(&mut r, "BEGIN").await;
    let resp = common::raw::command(&mut r, &execute(true), ResponseKind::Execute).await;
    assert!(common::raw::has_row_ending(&resp, b"primary"), "{resp:?}");
    common::raw::query(&mut r, "COMMIT").await;
    // The next ones reuse them, on the replica.
    for _ in 0..2 {
        let resp = common::raw::command(&mut r, &execute(false), ResponseKind::Execute).await;
        assert!(common::raw::has_row_ending(&resp, b"replica"), "{resp:?}");
    }
}

/// The replica's server process, by its pid file.
fn replica_pid(pair: &ReplicatedPair) -> String {
    std::fs::read_to_string(pair.replica_dir.join("pid"))
        .expect("the replica's pid file")
        .trim()
        .to_string()
}

fn signal(pid: &str, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Reads through fresh sessions until one is answered by `want`.
async fn until_answered_by(tandem: &common::Tandem, want: &str, what: &str) {
    let start = std::time::Instant::now();
    loop {
        let mut fresh = common::connect(&tandem.url("shop")).await;
        if who(&mut fresh, "SELECT server FROM whoami").await == want {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica paused (SIGSTOP: its connections stay open and never answer) holds no read:
/// a read already sent to it goes to the primary once its monitor finds it down, and reads
/// stay there until it answers again. A replica killed (SIGKILL) the same, and both are
/// taken back when they recover.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_or_killed_replica_holds_no_read() {
    let pair = ReplicatedPair::start("paused");
    mark_servers(&pair, "shop");
    let tandem = pair.tandem("shop");
    let mut c = common::connect(&tandem.url("shop")).await;
    let ask = "SELECT server FROM whoami";
    replica_taken(&mut c, ask).await;
    let pid = replica_pid(&pair);
    signal(&pid, "-STOP");
    let started = std::time::Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(15), who(&mut c, ask)).await;
    signal(&pid, "-CONT");
    assert_eq!(
        answered.as_deref().ok(),
        Some("primary"),
        "a read sent to the paused replica was answered by the primary"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited for the replica's monitor first"
    );
    until_answered_by(
        &tandem,
        "replica",
        "the resumed replica was never taken back",
    )
    .await;
    // The session goes on, and its reads go back to the replica too.
    let start = std::time::Instant::now();
    while who(&mut c, ask).await != "replica" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the session stayed on the primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    signal(&replica_pid(&pair), "-KILL");
    assert_eq!(who(&mut c, ask).await, "primary", "the read after the kill");
    until_answered_by(&tandem, "primary", "reads never left the killed replica").await;
    pair.restart_replica();
    until_answered_by(
        &tandem,
        "replica",
        "the restarted replica was never taken back",
    )
    .await;
}

/// One step of a random session: text SQL, or an execution of a prepared statement.
#[derive(Debug, Clone)]
enum Step {
    Text(String),
    Prepared(&'static str, Vec<mysql_async::Value>),
}

/// A random session program over table `t`: writes, reads of every routing class, session
/// state (variables, user variables, temporary tables, sql_mode, character set), reads about
/// earlier statements (warnings, `ROW_COUNT()`, `FOUND_ROWS()`), transactions and prepared
/// statements.
fn random_program(rng: &mut rand::rngs::StdRng) -> Vec<Step> {
    use rand::Rng;
    let mut steps = Vec::new();
    for _ in 0..rng.random_range(10..40) {
        let n: u32 = rng.random_range(1..30);
        let text = match rng.random_range(0..36) {
            26 => "SELECT FOUND_ROWS()".into(),
            27 => "SELECT SQL_CALC_FOUND_ROWS v FROM t ORDER BY id LIMIT 1".into(),
            28 => "SELECT CAST('x' AS SIGNED), 1".into(),
            29 => "SELECT @@warning_count, @@error_count".into(),
            30 => [
                "SET SESSION sql_mode = 'ANSI_QUOTES'",
                "SET SESSION sql_mode = ''",
            ][rng.random_range(0..2)]
            .into(),
            31 => "SELECT \"v\" FROM t ORDER BY id LIMIT 1".into(),
            32 => ["SHOW TABLES", "SHOW COLUMNS FROM t"][rng.random_range(0..2)].into(),
            33 => ["SET NAMES latin1", "SET NAMES utf8mb4"][rng.random_range(0..2)].into(),
            34 => "SELECT 'é', CHARSET('a'), LENGTH('é')".into(),
            35 => "DO 1".into(),
            0 | 1 => format!("INSERT INTO t (v, n) VALUES ('x{n}', {n})"),
            2 => format!("UPDATE t SET v = CONCAT(v, 'u'), n = n + 1 WHERE id = {n}"),
            3 => format!("DELETE FROM t WHERE id = {n}"),
            4 | 5 => "SELECT id, v, n FROM t ORDER BY id".into(),
            6 => format!("SELECT COUNT(*), SUM(n) FROM t WHERE n > {n}"),
            7 => "SELECT LAST_INSERT_ID()".into(),
            8 => "SELECT ROW_COUNT()".into(),
            9 => format!("SET @a = {n}"),
            10 => "SELECT @a + 1, @a IS NULL".into(),
            11 => "SET @b = (SELECT COUNT(*) FROM t)".into(),
            12 => "SELECT @b".into(),
            13 => format!("SET SESSION group_concat_max_len = {}", 4 + n),
            14 => "SELECT GROUP_CONCAT(v ORDER BY id) FROM t".into(),
            15 => [
                "BEGIN",
                "COMMIT",
                "ROLLBACK",
                "SET autocommit = 0",
                "SET autocommit = 1",
            ][rng.random_range(0..5)]
            .into(),
            16 => "CREATE TEMPORARY TABLE IF NOT EXISTS tmp (x INT)".into(),
            17 => format!("INSERT INTO tmp VALUES ({n})"),
            18 => "SELECT COUNT(*) FROM tmp".into(),
            19 => "DROP TEMPORARY TABLE IF EXISTS tmp".into(),
            20 => format!("SELECT /*+ PRIMARY */ v FROM t WHERE id = {n}"),
            21 => format!("SELECT v FROM t WHERE id = {n} FOR UPDATE"),
            22 => "SELECT CAST(v AS SIGNED) FROM t ORDER BY id LIMIT 2".into(),
            23 => "SHOW WARNINGS".into(),
            24 => {
                steps.push(Step::Prepared(
                    "SELECT v, n FROM t WHERE id = ? OR n > ? ORDER BY id",
                    vec![n.into(), (n + 10).into()],
                ));
                continue;
            }
            _ => {
                steps.push(Step::Prepared(
                    "INSERT INTO t (v, n) VALUES (?, ?)",
                    vec![format!("p{n}").into(), n.into()],
                ));
                continue;
            }
        };
        steps.push(Step::Text(text));
    }
    steps
}

/// What one step answered: its rows, affected rows and last insert id, or its error.
async fn answer(c: &mut mysql_async::Conn, step: &Step) -> String {
    use mysql_async::prelude::*;
    let rows = match step {
        Step::Text(sql) => c.query::<mysql_async::Row, _>(sql.as_str()).await,
        Step::Prepared(sql, params) => c.exec::<mysql_async::Row, _, _>(*sql, params.clone()).await,
    };
    match rows {
        Ok(rows) => {
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|r| {
                    r.unwrap()
                        .into_iter()
                        .map(|v| match v {
                            mysql_async::Value::Bytes(b) => {
                                String::from_utf8_lossy(&b).into_owned()
                            }
                            other => format!("{other:?}"),
                        })
                        .collect()
                })
                .collect();
            // The two sides' databases differ in name only.
            format!(
                "rows {rows:?}, affected {}, id {:?}",
                c.affected_rows(),
                c.last_insert_id()
            )
            .replace("'twin.", "'shop.")
        }
        Err(e) => format!("error {:?}", common::error_code(&e)),
    }
}

/// Seeded random sessions run through `rw_split` and, step by step, on a direct connection
/// to the primary over a twin database holding the same rows: every step answers the same
/// (rows, affected rows, insert ids, errors), whichever backend Tandem sent it to. A read
/// routed to a replica that had not applied the session's writes, session state lost on the
/// way, or a read of the primary's connection's state answered elsewhere shows as a
/// difference. `TANDEM_RW_SPLIT_SEED` and `TANDEM_RW_SPLIT_CASES` choose the run.
#[tokio::test(flavor = "multi_thread")]
async fn random_sessions_answer_as_a_direct_connection_would() {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("TANDEM_RW_SPLIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261202);
    let cases: u32 = std::env::var("TANDEM_RW_SPLIT_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let pair = ReplicatedPair::start("random");
    mark_servers(&pair, "shop");
    let table = "(id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40), n INT)";
    pair.primary_sql(&format!(
        "DROP TABLE shop.t; CREATE TABLE shop.t {table};
         CREATE DATABASE twin; CREATE TABLE twin.t {table};
         CREATE TABLE twin.whoami (server VARCHAR(10));
         INSERT INTO shop.t (v, n) VALUES ('a', 1), ('b', 2), ('c3', 3);
         INSERT INTO twin.t (v, n) VALUES ('a', 1), ('b', 2), ('c3', 3);"
    ));
    let tandem = pair.tandem("shop");
    let direct_url = format!("mysql://root@127.0.0.1:{}/twin", pair.primary);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut steps_run = 0;
    for case in 0..cases {
        let program = random_program(&mut rng);
        // Each session starts with the replica holding what earlier sessions wrote; within
        // a session, read-your-writes is Tandem's to keep.
        pair.caught_up();
        let mut routed = common::connect(&tandem.url("shop")).await;
        let mut direct = common::connect(&direct_url).await;
        for (i, step) in program.iter().enumerate() {
            let (got, want) = (
                answer(&mut routed, step).await,
                answer(&mut direct, step).await,
            );
            assert_eq!(
                got,
                want,
                "seed {seed}, case {case}, step {i}: {step:?} answered differently through \
                 rw_split; the session so far:\n{:#?}",
                &program[..=i]
            );
            steps_run += 1;
        }
    }
    let (_, metrics) = tandem.admin("/metrics");
    let replica_reads = metrics
        .lines()
        .find(|l| l.starts_with("tandem_reads_total{backend=\"replica\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    println!("rw_split differential, seed {seed}: {cases} sessions, {steps_run} steps, {replica_reads} reads on the replica");
    assert!(
        replica_reads > 50.0,
        "the replica answered too few reads to tell anything: {replica_reads}"
    );
}
