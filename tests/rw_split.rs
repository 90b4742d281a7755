//! Read/write splitting, against a real MariaDB primary and a GTID replica of it that the
//! project's own script starts (`scripts/mariadb.sh start-primary` / `start-replica`).

mod common;

use common::ReplicatedPair;

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
