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
    let seen = health::monitor(pool.clone(), max_lag, Duration::from_millis(100), shutdown);
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
