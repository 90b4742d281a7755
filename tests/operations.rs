//! Operations: the admin API, backend outages and recovery, pool limits, and graceful
//! shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{error_code, mariadb, raw, single_config, Tandem};
use mysql_async::prelude::*;

#[tokio::test(flavor = "multi_thread")]
async fn admin_live_ready_and_metrics() {
    let db = mariadb().fresh_db("admin");
    let tandem = Tandem::start(&db);
    assert_eq!(tandem.admin("/live").0, 200);
    let (status, body) = tandem.admin("/ready");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""ready":true"#), "{body}");

    let mut c = common::connect(&tandem.url(&db)).await;
    c.query_drop("CREATE TABLE t (a INT)").await.unwrap();
    c.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    let _: Vec<i64> = c.query("SELECT a FROM t").await.unwrap();
    let _: Vec<i64> = c.exec("SELECT a FROM t WHERE a = ?", (1,)).await.unwrap();
    let _ = c.query_drop("SELECT * FROM missing").await;
    let _ = mysql_async::Conn::from_url(&format!("mysql://app:bad@127.0.0.1:{}/{db}", tandem.port))
        .await;

    let (status, m) = tandem.admin("/metrics");
    assert_eq!(status, 200);
    let value = |needle: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric line starting with {needle}:\n{m}"))
    };
    assert_eq!(value(r#"tandem_client_connections{listener="main"}"#), 1.0);
    assert!(value(r#"tandem_client_connections_total{listener="main"}"#) >= 2.0);
    assert_eq!(
        value(r#"tandem_statements_total{kind="ddl",listener="main"}"#),
        1.0
    );
    assert_eq!(
        value(r#"tandem_statements_total{kind="insert",listener="main"}"#),
        1.0
    );
    // Two selects by text (the prepared one is counted at prepare and execute) and one failed.
    assert!(value(r#"tandem_statements_total{kind="select",listener="main"}"#) >= 3.0);
    assert_eq!(
        value(r#"tandem_errors_total{code="1146",listener="main"}"#),
        1.0
    );
    assert_eq!(
        value(r#"tandem_errors_total{code="1045",listener="main"}"#),
        1.0
    );
    assert!(
        value(r#"tandem_statement_duration_seconds_count{kind="select",listener="main"}"#) >= 3.0
    );
    assert_eq!(
        value(r#"tandem_backend_connections{data_source="db",state="in_use"}"#),
        1.0
    );
    assert!(m.contains(r#"tandem_backend_connections{data_source="db",state="idle"}"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn database_down_gives_prompt_errors_and_service_resumes() {
    let dir = common::scratch("outage-db");
    let port = common::start_mariadb_on_a_free_port(&dir);
    let dsn = format!("mysql://root@127.0.0.1:{port}/mysql");
    let tandem = Tandem::start_yaml(&single_config(
        &dsn,
        "",
        "{ max: 4, connect_timeout: 1s, health_check_interval: 1s }",
    ));
    let mut c = common::connect(&tandem.url_no_db()).await;
    let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);

    common::stop_mariadb(&dir);

    // The pinned connection lost its backend: the client hears about it at once.
    let started = Instant::now();
    let e = c.query_drop("SELECT 1").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(c);
    // New sessions get a clear error, promptly, not a hang.
    let started = Instant::now();
    let e2 = mysql_async::Conn::from_url(&tandem.url_no_db())
        .await
        .expect_err("refused");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(error_code(&e2), Some(2003), "{e} / {e2}");
    assert!(
        e2.to_string().contains("Can't connect to data source 'db'"),
        "{e2}"
    );
    // A session that has not touched the database yet keeps its connection to Tandem.
    let mut fresh = raw::app(tandem.port, None).await;
    let resp = raw::query(&mut fresh, "SELECT 1").await;
    assert_eq!(raw::error_code(&resp), Some(2003));
    let (status, body) = tandem.admin("/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""ok":false"#), "{body}");
    // The same client session recovers once the database is back: it held no state.
    common::start_mariadb(&dir, port);
    let resp = raw::query(&mut fresh, "SELECT 1").await;
    assert!(resp.iter().any(|(_, p)| p == b"\x011"), "{resp:?}");
    let mut again = common::connect(&tandem.url_no_db()).await;
    let two: i64 = again.query_first("SELECT 2").await.unwrap().unwrap();
    assert_eq!(two, 2);
    assert_eq!(tandem.admin("/ready").0, 200);
    common::stop_mariadb(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_pool_fails_after_the_acquire_timeout() {
    let db = mariadb().fresh_db("poolmax");
    let tandem = Tandem::start_yaml(&single_config(
        &mariadb().url(&db),
        "",
        "{ max: 2, acquire_timeout: 500ms }",
    ));
    let mut a = common::connect(&tandem.url(&db)).await;
    let mut b = common::connect(&tandem.url(&db)).await;
    a.query_drop("SELECT 1").await.unwrap();
    b.query_drop("SELECT 1").await.unwrap();
    // A third session needs a backend connection and none comes free.
    let e = mysql_async::Conn::from_url(&tandem.url(&db))
        .await
        .expect_err("refused");
    assert_eq!(error_code(&e), Some(1040), "{e}");
    let mut c = raw::app(tandem.port, None).await;
    let resp = raw::query(&mut c, "SELECT 1").await;
    assert_eq!(raw::error_code(&resp), Some(1040));
    // When a session ends, its connection goes to the waiting client.
    let waiter = tokio::spawn(async move { raw::query(&mut c, "SELECT 3").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(a);
    let resp = waiter.await.unwrap();
    assert!(resp.iter().any(|(_, p)| p == b"\x013"), "{resp:?}");
    b.query_drop("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_statements_then_exits_zero() {
    let db = mariadb().fresh_db("drain");
    let mut tandem = Tandem::start(&db);
    let url = tandem.url(&db);
    let mut idle = common::connect(&url).await;
    idle.query_drop("SELECT 1").await.unwrap();
    let busy = tokio::spawn(async move {
        let mut c = common::connect(&url).await;
        let r: Option<i64> = c.query_first("SELECT SLEEP(1.5) + 7").await.unwrap();
        r
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    tandem.signal("TERM");
    // New connections are refused once draining starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", tandem.port)).is_err());
    // The statement in flight completes with its result.
    assert_eq!(busy.await.unwrap(), Some(7));
    let status = tandem.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "exit status {status}");
    // The idle session was closed.
    assert!(idle.query_drop("SELECT 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_checked_and_expire() {
    let db = mariadb().fresh_db("idle");
    let tandem = Tandem::start_yaml(&single_config(
        &mariadb().url(&db),
        "",
        "{ max: 4, idle_timeout: 3s, health_check_interval: 1s }",
    ));
    let metric = |state: &str| -> i64 {
        let (_, m) = tandem.admin("/metrics");
        let needle = format!(r#"tandem_backend_connections{{data_source="db",state="{state}"}} "#);
        m.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    let wait_for = |state: &str, want: i64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if metric(state) == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{state} connections never reached {want} (now {})",
            metric(state)
        );
    };
    // Two sessions at once end: their two connections go back to the pool, idle.
    let mut thread_ids = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let mut c = common::connect(&tandem.url(&db)).await;
        let id: u64 = c
            .query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap();
        thread_ids.push(id);
        sessions.push(c);
    }
    assert_ne!(thread_ids[0], thread_ids[1]);
    drop(sessions);
    wait_for("idle", 2);
    // One dies behind Tandem's back; the health check notices and drops it.
    mariadb().sql(&format!("KILL {}", thread_ids[0]));
    wait_for("idle", 1);
    // The other expires after the idle timeout.
    wait_for("idle", 0);
    assert_eq!(metric("in_use"), 0);
    // And the pool still serves.
    let mut c = common::connect(&tandem.url(&db)).await;
    let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
}
