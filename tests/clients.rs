//! Real clients in other languages, through Tandem: the `mariadb` command-line client,
//! Python (PyMySQL, mysql-connector-python with a prepared cursor) and Node's mysql2 (`query`
//! and `execute`). `scripts/test.sh` installs the libraries; the scripts under
//! `tests/clients/` assert the behaviour and exit non-zero on the first failure.

mod common;

use std::process::Command;

use common::{mariadb, mariadb_cli, root, run_client, ReplicatedPair, Tandem, PASSWORD, USER};

#[test]
fn mariadb_command_line_client() {
    let db = mariadb().fresh_db("cli");
    let tandem = Tandem::start(&db);
    let out = mariadb_cli(
        tandem.port,
        USER,
        PASSWORD,
        Some(&db),
        "CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(20));
         INSERT INTO t VALUES (1, 'uno'), (2, 'dos');
         SELECT id, s FROM t ORDER BY id;
         SELECT DATABASE(), @@autocommit;",
    )
    .unwrap();
    assert_eq!(out, format!("1\tuno\n2\tdos\n{db}\t1\n"));
    let e = mariadb_cli(
        tandem.port,
        USER,
        PASSWORD,
        Some(&db),
        "SELECT * FROM missing",
    )
    .unwrap_err();
    assert!(e.contains("ERROR 1146 (42S02)"), "{e}");
    let e = mariadb_cli(tandem.port, USER, "nope", None, "SELECT 1").unwrap_err();
    assert!(e.contains("ERROR 1045 (28000)"), "{e}");
}

#[test]
fn python_drivers() {
    let db = mariadb().fresh_db("python");
    let tandem = Tandem::start(&db);
    let python = std::env::var("TANDEM_TEST_PYTHON")
        .unwrap_or_else(|_| root().join("target/py/bin/python").display().to_string());
    let script = root().join("tests/clients/python/check_clients.py");
    let port = tandem.port.to_string();
    run_client(
        &python,
        &[script.to_str().unwrap(), &port, USER, PASSWORD, &db],
    );
}

#[test]
fn node_mysql2_query_and_execute() {
    let db = mariadb().fresh_db("node");
    let tandem = Tandem::start(&db);
    let script = root().join("tests/clients/node/check_clients.js");
    let port = tandem.port.to_string();
    run_client(
        "node",
        &[script.to_str().unwrap(), &port, USER, PASSWORD, &db],
    );
}

#[test]
fn load_data_local_infile_is_relayed() {
    let db = mariadb().fresh_db("infile");
    let tandem = Tandem::start(&db);
    let dir = common::scratch("infile");
    let file = dir.join("rows.csv");
    let rows: String = (1..=5000).map(|i| format!("{i},name-{i}\n")).collect();
    std::fs::write(&file, rows).unwrap();
    let sql = format!(
        "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20));
         LOAD DATA LOCAL INFILE '{}' INTO TABLE t FIELDS TERMINATED BY ',';
         SELECT COUNT(*), SUM(id) FROM t;",
        file.display()
    );
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            "--batch",
            "--skip-column-names",
            "--local-infile=1",
        ])
        .arg(format!("-P{}", tandem.port))
        .arg(format!("-u{USER}"))
        .arg(format!("-p{PASSWORD}"))
        .arg(&db)
        .arg("-e")
        .arg(&sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "5000\t12502500\n");
    // The session goes on after the transfer, and a missing file is the client's own error.
    let out = mariadb_cli(
        tandem.port,
        USER,
        PASSWORD,
        Some(&db),
        "SELECT name FROM t WHERE id = 4999",
    )
    .unwrap();
    assert_eq!(out, "name-4999\n");
}

/// The same clients through an `rw_split` listener over a primary and a GTID replica: their
/// reads right after their writes see them (read-your-writes), prepared statements keep
/// their meaning, and results arrive as through `single`.
#[test]
fn clients_through_rw_split() {
    let pair = ReplicatedPair::start("clients");
    pair.primary_sql("CREATE DATABASE clients");
    pair.caught_up();
    let tandem = pair.tandem("clients");
    let port = tandem.port.to_string();
    let python = std::env::var("TANDEM_TEST_PYTHON")
        .unwrap_or_else(|_| root().join("target/py/bin/python").display().to_string());
    let script = root().join("tests/clients/python/check_clients.py");
    run_client(
        &python,
        &[script.to_str().unwrap(), &port, USER, PASSWORD, "clients"],
    );
    let script = root().join("tests/clients/node/check_clients.js");
    run_client(
        "node",
        &[script.to_str().unwrap(), &port, USER, PASSWORD, "clients"],
    );
    let out = mariadb_cli(
        tandem.port,
        USER,
        PASSWORD,
        Some("clients"),
        "CREATE TABLE cli (id INT PRIMARY KEY, s VARCHAR(20));
         INSERT INTO cli VALUES (1, 'uno'), (2, 'dos');
         SELECT id, s FROM cli ORDER BY id;",
    )
    .unwrap();
    assert_eq!(out, "1\tuno\n2\tdos\n");
    let (_, metrics) = tandem.admin("/metrics");
    assert!(
        metrics.contains(r#"tandem_reads_total{backend="replica",listener="main"}"#),
        "some reads went to the replica: {metrics}"
    );
}
