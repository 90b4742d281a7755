//! Crash safety: Tandem killed with SIGKILL between phase 1 and the decision, and between the
//! decision and phase 2; after a restart each global transaction converges by itself.

mod common;

use std::time::{Duration, Instant};

use common::{single_config, Tandem};
use mysql_async::prelude::*;

async fn balance(url: &str) -> i64 {
    let mut c = common::connect(url).await;
    c.query_first("SELECT balance FROM account WHERE id = 1")
        .await
        .unwrap()
        .unwrap()
}

async fn wait_status(tandem: &Tandem, xid: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        let (_, body) = tandem.admin(&format!("/v1/transactions/{xid}"));
        if body.contains(&format!("\"status\":\"{want}\"")) {
            return;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{xid} never reached {want}: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_between_phase_one_and_the_decision_rolls_back_after_restart() {
    let db = common::mariadb().fresh_db("crash1");
    common::mariadb().sql(&format!(
        "CREATE TABLE {db}.account (id INT PRIMARY KEY, balance INT); INSERT INTO {db}.account VALUES (1, 100)"
    ));
    let mut tandem = Tandem::start(&db);
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid: String = c
        .query_first("SELECT tandem_begin(1500)")
        .await
        .unwrap()
        .unwrap();
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = 1 WHERE id = 1"
    ))
    .await
    .unwrap();
    drop(c);
    tandem.restart(); // SIGKILL, then start again with the same store
                      // Nobody decides: the transaction times out and its branch is rolled back.
    wait_status(&tandem, &xid, "TimeoutRollbacked").await;
    assert_eq!(balance(&common::mariadb().url(&db)).await, 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_between_the_decision_and_phase_two_finishes_after_restart() {
    // A database of its own, so it can be down while the decision is taken.
    let dir = common::scratch("crash2-db");
    let port = common::start_mariadb_on_a_free_port(&dir);
    let root = format!("mysql://root@127.0.0.1:{port}/mysql");
    {
        let mut r = common::connect(&root).await;
        r.query_drop("CREATE DATABASE bank").await.unwrap();
        r.query_drop("CREATE TABLE bank.account (id INT PRIMARY KEY, balance INT)")
            .await
            .unwrap();
        r.query_drop("INSERT INTO bank.account VALUES (1, 100)")
            .await
            .unwrap();
    }
    let direct = format!("mysql://root@127.0.0.1:{port}/bank");
    let mut tandem = Tandem::start_yaml(&single_config(
        &direct,
        "",
        "{ max: 8, connect_timeout: 500ms, acquire_timeout: 1s }",
    ));
    let mut c = common::connect(&tandem.url("bank")).await;
    let committed = common::begin_global(&mut c).await;
    c.query_drop(format!(
        "/*+ XID('{committed}') */ UPDATE account SET balance = balance - 10 WHERE id = 1"
    ))
    .await
    .unwrap();
    let rolled = common::begin_global(&mut c).await;
    drop(c);

    // The database goes down; both decisions are recorded but phase 2 cannot run.
    common::stop_mariadb(&dir);
    let (code, body) = tandem.admin_post(&format!("/v1/transactions/{committed}/commit"), "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Committed"), "the outcome is decided: {body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_status(&tandem, &committed, "Committing").await; // phase 2 cannot run yet
    let (_, body) = tandem.admin_post(&format!("/v1/transactions/{rolled}/rollback"), "");
    assert!(body.contains("Rollback"), "{body}");

    // Tandem dies; the database comes back; Tandem restarts and finishes phase 2 itself.
    tandem.kill9();
    common::start_mariadb(&dir, port);
    tandem.restart();
    wait_status(&tandem, &committed, "Committed").await;
    wait_status(&tandem, &rolled, "Rollbacked").await;
    assert_eq!(balance(&direct).await, 90);
    let mut r = common::connect(&direct).await;
    let undo: i64 = r
        .query_first("SELECT COUNT(*) FROM undo_log WHERE log_status = 0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(undo, 0);
    common::stop_mariadb(&dir);
}
