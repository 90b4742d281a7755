//! Global transactions with the coordinator's state in a real 3-member etcd cluster.

mod common;

use common::etcd::EtcdCluster;
use common::netns;
use common::{mariadb, Tandem, PASSWORD, USER};
use mysql_async::prelude::*;
use std::time::Duration;

fn databases(prefix: &str) -> (String, String) {
    let a = mariadb().fresh_db(&format!("{prefix}_a"));
    let b = mariadb().fresh_db(&format!("{prefix}_b"));
    for db in [&a, &b] {
        mariadb().sql(&format!(
            "CREATE TABLE {db}.account (id INT PRIMARY KEY, balance BIGINT NOT NULL);
             INSERT INTO {db}.account VALUES (1, 100), (2, 100);"
        ));
    }
    (a, b)
}

async fn balance(db: &str, id: i32) -> i64 {
    let mut c = common::connect(&mariadb().url(db)).await;
    c.query_first(format!("SELECT balance FROM account WHERE id = {id}"))
        .await
        .unwrap()
        .unwrap()
}

/// Moves `amount` from a.account 1 to b.account 2 in one global transaction, ending it with
/// `end` (commit or rollback); returns the status Tandem answered.
async fn transfer(tandem: &Tandem, a: &str, b: &str, amount: i64, end: &str) -> String {
    let mut ca = common::connect(&tandem.url(a)).await;
    let mut cb = common::connect(&format!(
        "mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{b}",
        tandem.port_b
    ))
    .await;
    let xid = two_branches(&mut ca, &mut cb, amount, 30_000).await;
    common::end_global(&mut ca, end, &xid).await
}

#[tokio::test(flavor = "multi_thread")]
async fn global_transactions_on_an_etcd_cluster_survive_losing_the_leader() {
    let mut etcd = EtcdCluster::start(3);
    let (a, b) = databases("etcd");
    let yaml = common::two_databases_config(&mariadb().url(&a), &mariadb().url(&b), "").replace(
        "coordinator:\n",
        &format!(
            "coordinator:\n  store: etcd\n  etcd: {{ endpoints: {}, prefix: /tandem/test }}\n",
            etcd.endpoints_yaml()
        ),
    );
    let tandem = Tandem::start_yaml(&yaml);

    assert_eq!(transfer(&tandem, &a, &b, 10, "commit").await, "Committed");
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (90, 110));
    assert_eq!(transfer(&tandem, &a, &b, 7, "rollback").await, "Rollbacked");
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (90, 110));

    // The state is in etcd under the prefix; finished transactions hold no locks.
    let keys = etcd.get_prefix("/tandem/test/");
    assert!(
        keys.iter().any(|k| k.starts_with("/tandem/test/globals/")),
        "{keys:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while etcd
        .get_prefix("/tandem/test/locks/")
        .iter()
        .any(|k| k.starts_with("/tandem/test/locks/"))
    {
        assert!(std::time::Instant::now() < deadline, "locks left behind");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The leader down: the other two elect a new one, and Tandem carries on.
    let leader = etcd.leader();
    etcd.kill(leader);
    assert_eq!(transfer(&tandem, &a, &b, 5, "commit").await, "Committed");
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (85, 115));
    etcd.restart(leader);
    etcd.wait_healthy();
    assert_eq!(transfer(&tandem, &a, &b, 5, "rollback").await, "Rollbacked");
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (85, 115));
}

/// A sidecar in front of one database, sharing the etcd cluster's store.
fn sidecar(etcd: &EtcdCluster, db: &str, name: &str) -> Tandem {
    sidecar_with(etcd, db, name, "")
}

/// A sidecar with `extra` appended to its configuration.
fn sidecar_with(etcd: &EtcdCluster, db: &str, name: &str, extra: &str) -> Tandem {
    sidecar_on(&etcd.endpoints_yaml(), db, name, extra)
}

/// A sidecar that reaches etcd at `endpoints` (YAML list).
fn sidecar_on(endpoints: &str, db: &str, name: &str, extra: &str) -> Tandem {
    Tandem::start_yaml(&(sidecar_config(endpoints, &mariadb().url(db), name) + extra))
}

/// The config of sidecar `name` in front of `dsn`, sharing the etcd cluster at `endpoints`.
fn sidecar_config(endpoints: &str, dsn: &str, name: &str) -> String {
    let yaml = common::single_config(dsn, "", "{ max: 8 }");
    let yaml = yaml.replace(
        "coordinator:\n  embedded: { path: \"{DIR}/tandem.db\" }\n",
        &format!(
            "coordinator:\n  store: etcd\n  etcd: {{ endpoints: {endpoints}, prefix: /tandem/mesh/, node_name: {name}, lease_ttl: 3s }}\n"
        ),
    );
    assert!(yaml.contains("store: etcd"), "{yaml}");
    yaml
}

/// Fails the test if `start` is more than 20 s ago: for polling loops.
fn within_20s(start: std::time::Instant, what: &str) {
    assert!(start.elapsed().as_secs() < 20, "never: {what}");
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// One global transaction, two sidecars, each in front of its own database: each runs phase
/// 2 for its own branch, rollback goes backwards across them, and the cluster API shows who
/// owns what.
#[tokio::test(flavor = "multi_thread")]
async fn two_sidecars_finish_one_transaction() {
    let etcd = EtcdCluster::start(3);
    let (a, b) = databases("mesh");
    let sa = sidecar(&etcd, &a, "sidecar-a");
    let sb = sidecar(&etcd, &b, "sidecar-b");

    // Each owns its own data source.
    let start = std::time::Instant::now();
    loop {
        let (status, body) = sa.admin("/v1/cluster");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let owned = |n: &serde_json::Value| n["owns"].as_array().map_or(0, Vec::len);
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        if status == 200 && nodes.len() == 2 && nodes.iter().all(|n| owned(n) == 1) {
            break;
        }
        within_20s(
            start,
            &format!("both sidecars own their data source: {body}"),
        );
    }

    let mut ca = common::connect(&sa.url(&a)).await;
    let mut cb = common::connect(&sb.url(&b)).await;
    for (end, want, amount) in [("commit", "Committed", 10), ("rollback", "Rollbacked", 3)] {
        let revision = etcd.revision();
        let xid = two_branches(&mut ca, &mut cb, amount, 30_000).await;
        let status = common::end_global(&mut ca, end, &xid).await;
        assert_eq!(status, want);
        // Sidecar b finishes its branch by itself; both see the final status.
        let start = std::time::Instant::now();
        loop {
            let s: Option<String> = cb
                .query_first(format!("SELECT tandem_status('{xid}')"))
                .await
                .unwrap();
            if s.as_deref() == Some(want)
                && common::undo_rows(&a).await == 0
                && common::undo_rows(&b).await == 0
            {
                break;
            }
            within_20s(
                start,
                &format!("{xid} {want} with no undo log left (now {s:?})"),
            );
        }
        // Begin, a registration per branch, the decision, and one phase-2 record per sidecar
        // (commit) or per branch (rollback): 2 × branches + 2.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let writes = etcd.revision() - revision;
        assert!(writes <= 6, "{end}: {writes} etcd writes");
    }
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (90, 110));
}

/// A branch on the other sidecar needs a person (a dirty write): the retry and the
/// force-finish asked of the first sidecar are carried out by the branch's owner at once,
/// not after its back-off, and leave no undo log and no lock in either database.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_repairs_a_rollback_across_sidecars() {
    let etcd = EtcdCluster::start(1);
    let (a, b) = databases("repair");
    let sa = sidecar(&etcd, &a, "repair-a");
    let sb = sidecar(&etcd, &b, "repair-b");
    let mut ca = common::connect(&sa.url(&a)).await;
    let mut cb = common::connect(&sb.url(&b)).await;
    // Retry: the person puts b's row back as the transaction left it.
    let xid = stuck_rollback(&sa, &mut ca, &mut cb, &b, 10).await;
    mariadb().sql(&format!(
        "UPDATE {b}.account SET balance = 110 WHERE id = 2"
    ));
    let asked = std::time::Instant::now();
    let (code, body) = sa.admin_post(&format!("/v1/transactions/{xid}/retry"), "");
    assert_eq!(code, 200, "{body}");
    wait_status(&mut ca, &xid, "Rollbacked").await;
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "carried out when asked, not after a back-off: {:?}",
        asked.elapsed()
    );
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (100, 100));
    common::wait_no_undo(&[&a, &b]).await;

    // Force-finish: the person restores b by hand; nothing is undone any more.
    let xid = stuck_rollback(&sa, &mut ca, &mut cb, &b, 7).await;
    mariadb().sql(&format!(
        "UPDATE {b}.account SET balance = 100 WHERE id = 2"
    ));
    let (code, body) = sa.admin_post(&format!("/v1/transactions/{xid}/finish"), "");
    assert_eq!(code, 200, "{body}");
    wait_status(&mut ca, &xid, "Rollbacked").await;
    let (_, shown) = sb.admin(&format!("/v1/transactions/{xid}"));
    assert!(shown.contains(r#""force_finished":true"#), "{shown}");
    common::wait_no_undo(&[&a, &b]).await;
    assert_eq!(
        (balance(&a, 1).await, balance(&b, 2).await),
        (93, 100),
        "the remaining branch ends as it was, not undone"
    );
    assert_eq!(etcd.get_prefix("/tandem/mesh/locks/"), Vec::<String>::new());
    // The rows are free for the next global transaction.
    let xid = two_branches(&mut ca, &mut cb, 3, 30_000).await;
    assert_eq!(
        common::end_global(&mut ca, "commit", &xid).await,
        "Committed"
    );
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (90, 103));
}

/// Rolls back a transfer whose row in `b` someone else changed meanwhile: the rollback stops
/// there, the branch needing a person. Returns the XID.
async fn stuck_rollback(
    sa: &Tandem,
    ca: &mut mysql_async::Conn,
    cb: &mut mysql_async::Conn,
    b: &str,
    amount: i64,
) -> String {
    let xid = two_branches(ca, cb, amount, 60_000).await;
    mariadb().sql(&format!(
        "UPDATE {b}.account SET balance = 1000 WHERE id = 2"
    ));
    let status = common::end_global(ca, "rollback", &xid).await;
    assert_eq!(status, "Rollbacking", "{xid}");
    let start = std::time::Instant::now();
    loop {
        let (_, body) = sa.admin(&format!("/v1/transactions/{xid}"));
        if body.contains("NeedsAttention") {
            return xid;
        }
        within_20s(start, &format!("{xid}: branch b needs a person: {body}"));
    }
}

/// Two replicas in front of one database: one owns it; when the owner is killed after the
/// decision, the other takes its phase 2 over once the owner's lease runs out.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_takes_over_phase_two_from_a_dead_owner() {
    let etcd = EtcdCluster::start(3);
    let (a, b) = databases("takeover");
    let mut a1 = sidecar(&etcd, &a, "replica-1");
    let start = std::time::Instant::now();
    loop {
        let (_, body) = a1.admin("/v1/cluster");
        if body.contains("\"owns\":[\"127.0.0.1") {
            break;
        }
        within_20s(start, &format!("replica-1 owns its data source: {body}"));
    }
    let a2 = sidecar(&etcd, &a, "replica-2");
    let sb = sidecar(&etcd, &b, "sidecar-b");

    let mut c1 = common::connect(&a1.url(&a)).await;
    let mut cb = common::connect(&sb.url(&b)).await;
    let xid = common::begin_global(&mut cb).await;
    c1.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance - 4 WHERE id = 1"
    ))
    .await
    .unwrap();
    cb.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance + 4 WHERE id = 2"
    ))
    .await
    .unwrap();
    drop(c1);
    // The owner of database a dies; then the transaction is rolled back from sidecar b,
    // which can only roll back its own branch until replica-2 owns database a.
    a1.kill9();
    let status = common::end_global(&mut cb, "rollback", &xid).await;
    assert!(
        status == "Rollbacked" || status == "Rollbacking",
        "{status}"
    );
    let start = std::time::Instant::now();
    loop {
        let s: Option<String> = cb
            .query_first(format!("SELECT tandem_status('{xid}')"))
            .await
            .unwrap();
        if s.as_deref() == Some("Rollbacked") {
            break;
        }
        within_20s(
            start,
            &format!("{xid} rolled back by the surviving replica (now {s:?})"),
        );
    }
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (100, 100));
    assert_eq!(common::undo_rows(&a).await, 0);
    let (_, body) = a2.admin("/v1/cluster");
    assert!(body.contains("replica-2"), "{body}");
    assert!(
        !body.contains("replica-1"),
        "the dead replica left the cluster: {body}"
    );
}

/// The money-transfer invariant across two sidecars on etcd, with a sidecar and the etcd
/// leader killed and restarted while clients transfer: in the end the total is unchanged
/// and every account equals its start plus exactly the transfers whose transaction ended
/// Committed.
#[tokio::test(flavor = "multi_thread")]
async fn transfers_across_sidecars_survive_crashes() {
    use rand::{Rng, SeedableRng};
    use std::sync::{Arc, Mutex};

    const ACCOUNTS: i64 = 8;
    const START: i64 = 1_000;
    let mut etcd = EtcdCluster::start(3);
    let a = common::bank("minv_a", ACCOUNTS, START);
    let b = common::bank("minv_b", ACCOUNTS, START);
    let sa = sidecar(&etcd, &a, "inv-a");
    let mut sb = sidecar(&etcd, &b, "inv-b");
    let (url_a, url_b) = (sa.url(&a), sb.url(&b));

    // Every transaction begun, with the deltas it would apply.
    type Ledger = Vec<(String, [(char, i64, i64); 2])>;
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..6u64 {
        let (url_a, url_b, ledger, stop) =
            (url_a.clone(), url_b.clone(), ledger.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(client);
            let mut ca = common::connect(&url_a).await;
            let mut cb: Option<mysql_async::Conn> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (from, to) = (rng.random_range(1..=ACCOUNTS), rng.random_range(1..=ACCOUNTS));
                let amount = rng.random_range(1..=20i64);
                let fate = rng.random_range(0..100);
                let timeout = if fate >= 85 { 500 } else { 30_000 };
                let Ok(Some(xid)) = ca
                    .query_first::<String, _>(format!("SELECT tandem_begin({timeout})"))
                    .await
                else {
                    continue;
                };
                ledger
                    .lock()
                    .unwrap()
                    .push((xid.clone(), [('a', from, -amount), ('b', to, amount)]));
                let debit = ca
                    .query_drop(format!("/*+ XID('{xid}') */ UPDATE account SET balance = balance - {amount} WHERE id = {from}"))
                    .await;
                if cb.is_none() {
                    cb = mysql_async::Conn::from_url(&url_b).await.ok();
                }
                let credit = match cb.as_mut() {
                    Some(c) => c
                        .query_drop(format!("/*+ XID('{xid}') */ UPDATE account SET balance = balance + {amount} WHERE id = {to}"))
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("sidecar b is down".into()),
                };
                if credit.is_err() {
                    cb = None;
                }
                let end = if debit.is_ok() && credit.is_ok() && fate < 60 {
                    "commit"
                } else if fate < 85 || debit.is_err() || credit.is_err() {
                    "rollback"
                } else {
                    continue; // abandoned: a sidecar times it out
                };
                let _ = ca
                    .query_first::<String, _>(format!("SELECT tandem_{end}('{xid}')"))
                    .await;
            }
        }));
    }

    // Chaos: sidecar b dies and comes back; then the etcd leader does.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sb.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sb.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = etcd.leader();
    etcd.kill(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // Every transaction reaches its final status; then count what committed.
    let mut c = common::connect(&url_a).await;
    let ledger = ledger.lock().unwrap().clone();
    let mut expected = std::collections::HashMap::new();
    let mut outcomes = std::collections::HashMap::<String, u32>::new();
    for (xid, deltas) in &ledger {
        let start = std::time::Instant::now();
        let status = loop {
            let s: Option<String> = c
                .query_first(format!("SELECT tandem_status('{xid}')"))
                .await
                .unwrap();
            let s = s.unwrap_or_default();
            if ["Committed", "Rollbacked", "TimeoutRollbacked"].contains(&s.as_str()) {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{xid} stuck in {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if status == "Committed" {
            for (db, id, delta) in deltas {
                *expected.entry((*db, *id)).or_insert(0) += delta;
            }
        }
        *outcomes.entry(status).or_default() += 1;
    }
    assert!(
        outcomes.len() == 3,
        "commits, rollbacks and timeouts all happened: {outcomes:?}"
    );
    common::assert_accounts(
        &a,
        &b,
        ACCOUNTS,
        START,
        &expected,
        &format!("({outcomes:?})"),
    )
    .await;
}

async fn status_of(c: &mut mysql_async::Conn, xid: &str) -> String {
    c.query_first(format!("SELECT tandem_status('{xid}')"))
        .await
        .unwrap()
        .unwrap_or_default()
}

async fn wait_status(c: &mut mysql_async::Conn, xid: &str, want: &str) {
    let start = std::time::Instant::now();
    loop {
        let s = status_of(c, xid).await;
        if s == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{xid}: {s}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Begins on sidecar a and moves `amount` from a's account 1 to b's account 2: one branch
/// on each sidecar. Returns the XID.
async fn two_branches(
    ca: &mut mysql_async::Conn,
    cb: &mut mysql_async::Conn,
    amount: i64,
    timeout_ms: u64,
) -> String {
    let xid: String = ca
        .query_first(format!("SELECT tandem_begin({timeout_ms})"))
        .await
        .unwrap()
        .unwrap();
    ca.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance - {amount} WHERE id = 1"
    ))
    .await
    .unwrap();
    cb.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance + {amount} WHERE id = 2"
    ))
    .await
    .unwrap();
    xid
}

/// Sidecars killed with kill -9 at each point of a transaction, then restarted: the
/// transaction always finishes, with the outcome that was decided.
#[tokio::test(flavor = "multi_thread")]
async fn killed_sidecars_finish_their_part_after_a_restart() {
    let etcd = EtcdCluster::start(3);
    let (a, b) = databases("crash");
    let mut sa = sidecar(&etcd, &a, "crash-a");
    let mut sb = sidecar(&etcd, &b, "crash-b");

    // b dies after phase 1; the commit is decided without it; b restarts and commits its part.
    let mut ca = common::connect(&sa.url(&a)).await;
    let mut cb = common::connect(&sb.url(&b)).await;
    let xid = two_branches(&mut ca, &mut cb, 10, 30_000).await;
    sb.kill9();
    let s = common::end_global(&mut ca, "commit", &xid).await;
    assert_eq!(s, "Committed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_of(&mut ca, &xid).await,
        "Committing",
        "b's branch waits for b"
    );
    sb.restart();
    wait_status(&mut ca, &xid, "Committed").await;
    assert_eq!(common::undo_rows(&b).await, 0);
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (90, 110));

    // b dies, then the rollback is decided: a waits for b's branch (the last one), and
    // once b is back both are rolled back, in order.
    let mut cb = common::connect(&sb.url(&b)).await;
    let xid = two_branches(&mut ca, &mut cb, 7, 30_000).await;
    sb.kill9();
    let rollback = {
        let url = sa.url(&a);
        let xid = xid.clone();
        tokio::spawn(async move {
            let mut c = common::connect(&url).await;
            c.query_first::<String, _>(format!("SELECT tandem_rollback('{xid}')"))
                .await
                .unwrap()
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(&mut ca, &xid).await, "Rollbacking");
    assert_eq!(
        balance(&a, 1).await,
        83,
        "a's branch waits for b's, registered after it"
    );
    sb.restart();
    wait_status(&mut ca, &xid, "Rollbacked").await;
    let _ = rollback.await.unwrap();
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (90, 110));

    // a, which began the transaction, dies after phase 1: b times the transaction out and
    // rolls back its branch; a, restarted, rolls back its own.
    let mut cb = common::connect(&sb.url(&b)).await;
    let xid = two_branches(&mut ca, &mut cb, 5, 1_500).await;
    sa.kill9();
    wait_status(&mut cb, &xid, "TimeoutRollbacking").await;
    // The status is recorded first; b's rollback of its branch follows.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while balance(&b, 2).await != 110 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(balance(&b, 2).await, 110, "b rolled back its own branch");
    sa.restart();
    wait_status(&mut cb, &xid, "TimeoutRollbacked").await;
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (90, 110));
    assert_eq!(
        (common::undo_rows(&a).await, common::undo_rows(&b).await),
        (0, 0)
    );
}

/// Which sidecars own data source `db`, as sidecar `t` sees the cluster.
fn owners_of(t: &Tandem, db: &str) -> Vec<String> {
    let (_, body) = t.admin("/v1/cluster");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["owns"].as_array().is_some_and(|o| {
                o.iter()
                    .any(|r| r.as_str().is_some_and(|r| r.ends_with(&format!("/{db}"))))
            })
        })
        .filter_map(|n| n["node"].as_str().map(str::to_string))
        .collect()
}

/// Waits until `node` alone owns `db`, as `t` sees the cluster.
fn wait_owner(t: &Tandem, db: &str, node: &str) {
    let start = std::time::Instant::now();
    while owners_of(t, db) != vec![node.to_string()] {
        within_20s(start, &format!("{node} owns {db}"));
    }
}

/// The owner of database b stops (SIGSTOP, as in a long GC pause or a frozen VM) for longer
/// than its lease: a replica takes b over and runs its phase 2 meanwhile; the old owner,
/// resumed, does not take b back.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_owner_loses_its_data_source_to_a_replica() {
    let etcd = EtcdCluster::start(3);
    let (a, b) = databases("pause");
    let sa = sidecar(&etcd, &a, "pause-a");
    let b1 = sidecar(&etcd, &b, "pause-b1");
    wait_owner(&sa, &b, "pause-b1");
    let b2 = sidecar(&etcd, &b, "pause-b2");

    // Pause b1 past its 3 s lease.
    assert_ne!(b1.pid(), 0, "b1 runs");
    b1.signal("STOP");
    wait_owner(&sa, &b, "pause-b2");
    // A transaction through b2 meanwhile: b2 runs its phase 2.
    let mut ca = common::connect(&sa.url(&a)).await;
    let mut cb = common::connect(&b2.url(&b)).await;
    let xid = two_branches(&mut ca, &mut cb, 10, 30_000).await;
    let s = common::end_global(&mut ca, "rollback", &xid).await;
    assert_eq!(s, "Rollbacked");
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (100, 100));

    // b1 resumes: it finds its lease gone and leaves database b to b2.
    b1.signal("CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        owners_of(&sa, &b),
        vec!["pause-b2"],
        "one owner, the replica"
    );
    let xid = two_branches(&mut ca, &mut cb, 4, 30_000).await;
    let s = common::end_global(&mut ca, "commit", &xid).await;
    assert_eq!(s, "Committed");
    wait_status(&mut ca, &xid, "Committed").await;
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (96, 104));
}

/// A real network partition. The owner of database b runs on a test host (a network
/// namespace) of its own, and reaches MariaDB and its clients over one link, etcd over
/// another. The etcd link is cut, for longer than the lease:
/// - a global write through the cut-off sidecar fails, and nothing of it is committed;
/// - a replica takes b over and rolls back a transaction in which the cut-off sidecar had
///   registered a branch;
/// - healed, the old owner leaves b to the replica and serves global transactions again,
///   and no undo log and no lock is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn an_owner_partitioned_from_etcd_loses_its_data_source_to_a_replica() {
    let mut host = netns::Host::new();
    let (db_link, etcd_link) = (host.link(), host.link());
    let here = host.veth(db_link).outside;
    let etcd = EtcdCluster::start_reachable_at(3, &host.veth(etcd_link).outside.to_string());
    // A MariaDB of the test's own, which the host reaches over its database link. Every
    // sidecar names it by that address, so b's replicas share one data source identity.
    let port = common::start_mariadb_listening(
        &common::scratch("partition-mariadb"),
        &format!("127.0.0.1,{here}"),
    );
    let root = |db: &str| format!("mysql://root@127.0.0.1:{port}/{db}");
    let mut setup = common::connect(&root("mysql")).await;
    setup
        .query_drop(
            "CREATE USER tandem@'%' IDENTIFIED BY 'tandem-secret';
             GRANT ALL ON *.* TO tandem@'%';
             CREATE DATABASE part_a; CREATE DATABASE part_b;
             CREATE TABLE part_a.account (id INT PRIMARY KEY, balance BIGINT NOT NULL);
             CREATE TABLE part_b.account LIKE part_a.account;
             INSERT INTO part_a.account VALUES (1, 100), (2, 100);
             INSERT INTO part_b.account VALUES (1, 100), (2, 100);",
        )
        .await
        .unwrap();
    let dsn = |db: &str| format!("mysql://tandem:tandem-secret@{here}:{port}/{db}");
    let balances = || {
        let url = root("mysql");
        async move {
            let mut c = common::connect(&url).await;
            let rows: Vec<(i64, i64, i64)> = c
                .query(
                    "SELECT (SELECT balance FROM part_a.account WHERE id = 1),
                            (SELECT balance FROM part_b.account WHERE id = 1),
                            (SELECT balance FROM part_b.account WHERE id = 2)",
                )
                .await
                .unwrap();
            rows[0]
        }
    };
    let undo_logs = || {
        let url = root("mysql");
        async move {
            let mut c = common::connect(&url).await;
            let n: Option<i64> = c
                .query_first(
                    "SELECT (SELECT COUNT(*) FROM part_a.undo_log)
                          + (SELECT COUNT(*) FROM part_b.undo_log)",
                )
                .await
                .unwrap();
            n.unwrap_or(-1)
        }
    };

    let sa = Tandem::start_yaml(&sidecar_config(
        &etcd.endpoints_yaml(),
        &dsn("part_a"),
        "part-a",
    ));
    let b1 = Tandem::start_yaml_on(
        &sidecar_config(&etcd.endpoints_yaml_at_also(), &dsn("part_b"), "part-b1"),
        &host,
        db_link,
    );
    wait_owner(&sa, "part_b", "part-b1");
    let b2 = Tandem::start_yaml(&sidecar_config(
        &etcd.endpoints_yaml(),
        &dsn("part_b"),
        "part-b2",
    ));
    let mut ca = common::connect(&sa.url("part_a")).await;
    let mut cb1 = common::connect(&b1.url("part_b")).await;
    // A branch through b1 (account 2), the transaction undecided.
    let xid = two_branches(&mut ca, &mut cb1, 10, 120_000).await;

    host.cut(etcd_link);
    let cut = std::time::Instant::now();
    // A global write through b1 now (account 1) cannot register its branch.
    let other = common::begin_global(&mut ca).await;
    let write = tokio::spawn(async move {
        let r = cb1
            .query_drop(format!(
                "/*+ XID('{other}') */ UPDATE account SET balance = balance + 1 WHERE id = 1"
            ))
            .await;
        (r, cb1)
    });
    // Meanwhile b2 takes b over, and undoes b1's branch when the transaction rolls back.
    wait_owner(&sa, "part_b", "part-b2");
    assert_eq!(
        common::end_global(&mut ca, "rollback", &xid).await,
        "Rollbacked"
    );
    assert_eq!(balances().await, (100, 100, 100));
    let (written, mut cb1) = write.await.unwrap();
    let e = written.expect_err("a branch that cannot register must not commit");
    assert!(
        e.to_string().contains("coordinator"),
        "a clear error about the coordinator store: {e}"
    );
    assert_eq!(balances().await, (100, 100, 100), "nothing of it committed");
    assert!(
        cut.elapsed() > Duration::from_secs(3),
        "cut off for longer than the lease"
    );

    // Healed: b1 leaves b to b2, and works again.
    host.heal(etcd_link);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        owners_of(&sa, "part_b"),
        vec!["part-b2"],
        "one owner, the replica"
    );
    let xid = two_branches(&mut ca, &mut cb1, 4, 30_000).await;
    assert_eq!(
        common::end_global(&mut ca, "commit", &xid).await,
        "Committed"
    );
    wait_status(&mut ca, &xid, "Committed").await;
    assert_eq!(balances().await, (96, 100, 104));
    let start = std::time::Instant::now();
    while undo_logs().await != 0 {
        within_20s(start, "no undo log left");
    }
    assert_eq!(etcd.get_prefix("/tandem/mesh/locks/"), Vec::<String>::new());
    drop((b1, b2, sa));
}

/// One global transaction with AT branches on two sidecars and a TCC branch on a service
/// behind the second one's HTTP sidecar: all commit, or all roll back.
#[tokio::test(flavor = "multi_thread")]
async fn at_branches_on_two_sidecars_and_a_tcc_branch_end_together() {
    use axum::http::HeaderMap;
    use std::sync::{Arc, Mutex};

    type Calls = Arc<Mutex<Vec<(String, String)>>>; // (action, xid)
    let calls: Calls = Arc::default();
    let record = |action: &'static str| {
        move |axum::extract::State(c): axum::extract::State<Calls>, h: HeaderMap| async move {
            let xid = h
                .get("x-tandem-xid")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            c.lock().unwrap().push((action.to_string(), xid));
            axum::http::StatusCode::OK
        }
    };
    let app = axum::Router::new()
        .route("/ship", axum::routing::post(record("prepare")))
        .route("/ship/confirm", axum::routing::post(record("commit")))
        .route("/ship/cancel", axum::routing::post(record("cancel")))
        .with_state(calls.clone());
    let upstream = common::serve(app).await;

    let etcd = EtcdCluster::start(3);
    let (a, b) = databases("mixed");
    let sa = sidecar(&etcd, &a, "mixed-a");
    let sb = sidecar_with(
        &etcd,
        &b,
        "mixed-b",
        &format!(
            "http_sidecars:
  - name: shipping
    address: 127.0.0.1:{{PORT_B}}
    upstream: http://{upstream}
    tcc:
      - name: ship
        prepare: {{ method: POST, path: /ship }}
        commit: {{ method: POST, path: /ship/confirm }}
        cancel: {{ method: POST, path: /ship/cancel }}
"
        ),
    );
    let http = sb.port_b;
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        within_20s(start, "the HTTP sidecar listens");
    }
    let prepare = |xid: String| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http))
            .await
            .unwrap();
        s.write_all(
            format!("POST /ship HTTP/1.1\r\nHost: s\r\nConnection: close\r\nx-tandem-xid: {xid}\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        resp[9..12].to_string()
    };

    let mut ca = common::connect(&sa.url(&a)).await;
    let mut cb = common::connect(&sb.url(&b)).await;
    for (end, want) in [("commit", "Committed"), ("rollback", "Rollbacked")] {
        let xid = two_branches(&mut ca, &mut cb, 10, 30_000).await;
        assert_eq!(prepare(xid.clone()).await, "200");
        let s = common::end_global(&mut ca, end, &xid).await;
        assert_eq!(s, want);
        wait_status(&mut ca, &xid, want).await;
        let phase2 = if end == "commit" { "commit" } else { "cancel" };
        let start = std::time::Instant::now();
        while !calls
            .lock()
            .unwrap()
            .contains(&(phase2.to_string(), xid.clone()))
        {
            within_20s(
                start,
                &format!("the service's {phase2} is called for {xid}"),
            );
        }
    }
    // The commit kept both AT updates; the rollback undid both.
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (90, 110));
    assert_eq!(
        (common::undo_rows(&a).await, common::undo_rows(&b).await),
        (0, 0)
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.iter().filter(|(a, _)| a == "commit").count(), 1);
    assert_eq!(calls.iter().filter(|(a, _)| a == "cancel").count(), 1);
}

/// The etcd store over TLS (server and client certificates) with etcd authentication on.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_tls_with_authentication() {
    use std::process::{Command, Stdio};
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let dir = scratch.path();
    // One certificate for everything: the member's, the client's, and the trust anchor.
    let (cert, key) = common::self_signed_cert(
        dir,
        &[
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth,clientAuth",
        ],
    );
    let [client, peer] = common::free_ports::<2>();
    let url = format!("https://127.0.0.1:{client}");
    /// The member, stopped however the test ends.
    struct Member(std::process::Child);
    impl Drop for Member {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _etcd = Member(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key)
            .arg("--trusted-ca-file")
            .arg(&cert)
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed"),
    );
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={url}"))
            .arg(format!("--cacert={}", cert.display()))
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .args(args)
            .output()
            .expect("run etcdctl")
    };
    let start = std::time::Instant::now();
    while !etcdctl(&["endpoint", "health"]).status.success() {
        within_20s(start, "etcd with TLS answers");
    }
    for args in [
        &["user", "add", "root:root-pw"][..],
        &["user", "add", "tandem:tandem-pw"],
        &["role", "add", "tandem"],
        &[
            "role",
            "grant-permission",
            "tandem",
            "--prefix=true",
            "readwrite",
            "/tandem/tls/",
        ],
        &["user", "grant-role", "tandem", "tandem"],
        &["auth", "enable"],
    ] {
        let out = etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let (a, b) = databases("etcdtls");
    let config = |password: &str| {
        common::two_databases_config(&mariadb().url(&a), &mariadb().url(&b), "").replace(
            "coordinator:\n  embedded: { path: \"{DIR}/tandem.db\" }\n",
            &format!(
                "coordinator:\n  store: etcd\n  etcd:\n    endpoints: [\"{url}\"]\n    prefix: /tandem/tls/\n    user: tandem\n    password: {password}\n    tls: {{ ca: \"{c}\", cert: \"{c}\", key: \"{k}\" }}\n",
                c = cert.display(),
                k = key.display()
            ),
        )
    };
    let tandem = Tandem::start_yaml(&config("tandem-pw"));
    assert_eq!(transfer(&tandem, &a, &b, 10, "commit").await, "Committed");
    assert_eq!(transfer(&tandem, &a, &b, 5, "rollback").await, "Rollbacked");
    assert_eq!((balance(&a, 1).await, balance(&b, 2).await), (90, 110));
    let stored = etcdctl(&[
        "--user=root:root-pw",
        "get",
        "--prefix",
        "--keys-only",
        "/tandem/tls/globals/",
    ]);
    assert!(
        String::from_utf8_lossy(&stored.stdout).contains("/tandem/tls/globals/"),
        "the transactions are in etcd"
    );

    // A wrong password: Tandem refuses to start, and says why.
    let yaml = config("wrong");
    let started = std::panic::catch_unwind(|| Tandem::start_yaml(&yaml));
    let Err(panic) = started else {
        panic!("started with a wrong etcd password");
    };
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("coordinator.etcd") && message.contains("authentication failed"),
        "{message}"
    );
}
