//! Unix sockets on both sides of Tandem: a listener for applications on the same host
//! (`address: unix:/path`), and data sources reached over the database's own socket (the
//! DSN's `socket`), against the test MariaDB.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{mariadb, Tandem, PASSWORD, USER};
use mysql_async::prelude::*;
use tandem::config::ListenAddress;
use tandem::frontend::listener::Listener;

/// The test MariaDB's own socket (`@@socket`).
async fn mariadb_socket() -> String {
    let mut c = common::connect(&mariadb().url("mysql")).await;
    c.query_first("SELECT @@socket")
        .await
        .unwrap()
        .expect("MariaDB listens on a socket")
}

/// Tandem with a TCP listener and a Unix-socket one in front of database `db`, which it
/// reaches over the database's socket.
async fn tandem_over_sockets(db: &str) -> (Tandem, PathBuf) {
    let socket = mariadb_socket().await;
    let dsn = format!(
        "mysql://root@127.0.0.1:{}/{db}?socket={socket}",
        mariadb().port
    );
    let unix_listener = r#"  - name: local
    address: unix:{DIR}/tandem.sock
    users: { app: "app-secret" }
    executor: main"#;
    let tandem = Tandem::start_yaml(&common::single_config(&dsn, unix_listener, "{ max: 8 }"));
    let path = tandem.dir.join("tandem.sock");
    (tandem, path)
}

async fn connect_unix(path: &Path, db: &str) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(path.display().to_string()))
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .db_name(Some(db));
    mysql_async::Conn::new(opts)
        .await
        .unwrap_or_else(|e| panic!("connect over {}: {e}", path.display()))
}

/// How the database sees the session's backend connection: `localhost` over its socket,
/// `127.0.0.1:port` over TCP.
async fn backend_host(c: &mut mysql_async::Conn) -> String {
    c.query_first("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap_or_default()
}

/// An application connects over Tandem's socket, and Tandem over the database's: both
/// sessions (socket and TCP clients) reach the database over its socket, and text and
/// prepared statements, transactions and the session's state work as over TCP.
#[tokio::test(flavor = "multi_thread")]
async fn clients_and_data_sources_over_unix_sockets() {
    let db = mariadb().fresh_db("unix");
    mariadb().sql(&format!(
        "CREATE TABLE {db}.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20))"
    ));
    let (tandem, path) = tandem_over_sockets(&db).await;
    let mut over_tcp = common::connect(&tandem.url(&db)).await;
    assert_eq!(backend_host(&mut over_tcp).await, "localhost");
    let mut c = connect_unix(&path, &db).await;
    assert_eq!(backend_host(&mut c).await, "localhost");
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("INSERT INTO t (v) VALUES ('one')")
        .await
        .unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    c.query_drop("SET @who = 'socket'").await.unwrap();
    let insert = c.prep("INSERT INTO t (v) VALUES (?)").await.unwrap();
    c.exec_drop(&insert, ("two",)).await.unwrap();
    let id: Option<u64> = c.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    let find = c.prep("SELECT v, @who FROM t WHERE id = ?").await.unwrap();
    let row: Option<(String, String)> = c.exec_first(&find, (id,)).await.unwrap();
    assert_eq!(row, Some(("two".into(), "socket".into())));
    let count: Option<i64> = over_tcp
        .query_first("SELECT COUNT(*) FROM t")
        .await
        .unwrap();
    assert_eq!(
        count,
        Some(1),
        "the rolled-back row is gone, the committed one is there"
    );

    // The database closes an idle session's connection: over a socket too, the client's
    // connection closes with it.
    c.query_drop("SET SESSION wait_timeout = 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    match c.query_drop("SELECT 1").await {
        Err(mysql_async::Error::Server(e)) => {
            panic!("a proxy's error instead of a closed connection: {e}")
        }
        Err(_) => {}
        Ok(()) => panic!("the connection outlived the database's wait_timeout"),
    }
    let mut again = connect_unix(&path, &db).await;
    let one: Option<i64> = again.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    drop(tandem);
}

/// A socket's file left behind by a process that is gone is replaced; one that a live
/// listener accepts on is in use; the file goes when its listener does.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_file_is_taken_over_only_from_a_dead_listener() {
    let dir = common::scratch("socket-file");
    let path = dir.join("tandem.sock");
    let _ = std::fs::remove_file(&path);
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket file");
    // A child that a concurrent test forks holds a copy of every descriptor until it execs, so
    // the dropped listener may accept for a moment longer: wait until nothing does.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::os::unix::net::UnixStream::connect(&path).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped listener still accepts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let address = ListenAddress::Unix(path.clone());
    let first = Listener::bind(&address)
        .await
        .expect("the stale file is replaced");
    match Listener::bind(&address).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}"),
        Ok(_) => panic!("a second listener took a live socket"),
    }
    assert!(path.exists(), "the live listener's file stays");
    drop(first);
    assert!(!path.exists(), "the file goes with its listener");
}

/// `tandem check` reads Unix listener addresses and DSN sockets, and names what is wrong.
#[test]
fn check_reads_socket_addresses() {
    let dir = common::scratch("socket-check");
    let check = |listener: &str, dsn: &str| {
        let yaml = format!(
            r#"
listeners:
  - name: main
    address: {listener}
    users: {{ app: "" }}
    executor: main
executors:
  - name: main
    mode: single
    data_source: db
data_sources:
  - name: db
    dsn: {dsn}
coordinator:
  embedded: {{ path: "{}/tandem.db" }}
"#,
            dir.display()
        );
        let file = dir.join("tandem.yaml");
        std::fs::write(&file, yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("check")
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = check(
        "unix:/run/tandem/app.sock",
        "mysql://u@localhost/x?socket=/run/mysqld/mysqld.sock",
    );
    assert!(ok, "{text}");
    let (ok, text) = check("unix:run/app.sock", "mysql://u@localhost/x");
    assert!(
        !ok && text.contains("listeners[0].address") && text.contains("absolute"),
        "{text}"
    );
    let (ok, text) = check("127.0.0.1:3306", "mysql://u@localhost/x?sock=/tmp/s");
    assert!(
        !ok && text.contains("unknown DSN option 'sock=/tmp/s'"),
        "{text}"
    );
}

/// Whether `c` talks to Tandem: only Tandem knows its own SQL functions (the database says
/// 1305, no such function).
async fn on_tandem(c: &mut mysql_async::Conn) -> bool {
    match c.query_drop("SELECT tandem_status('no-such-xid')").await {
        Err(e) => common::error_code(&e) != Some(1305),
        Ok(()) => true,
    }
}

/// mysql_async, connected over loopback TCP, reads `@@socket` and reconnects to it: the
/// database's answer would take it around Tandem, straight to the database (with the same
/// user there). `@@socket` is Tandem's own socket in front of the same executor, or NULL
/// when it has none, so such a driver stays on Tandem.
#[tokio::test(flavor = "multi_thread")]
async fn a_driver_that_follows_socket_stays_on_tandem() {
    let db = mariadb().fresh_db("follow");
    let dsn = mariadb().url(&db);
    // The client's user is the database's too: a reconnect to the database's socket would
    // succeed.
    let as_root = |yaml: String| yaml.replace(r#"other: """#, r#"root: """#);
    let unix_listener = r#"  - name: local
    address: unix:{DIR}/tandem.sock
    users: { root: "" }
    executor: main"#;
    let with_socket = Tandem::start_yaml(&as_root(common::single_config(
        &dsn,
        unix_listener,
        "{ max: 8 }",
    )));
    let without = Tandem::start_yaml(&as_root(common::single_config(&dsn, "", "{ max: 8 }")));
    let url = |t: &Tandem| format!("mysql://root@127.0.0.1:{}/{db}", t.port);

    let mut c = common::connect(&url(&with_socket)).await;
    assert!(on_tandem(&mut c).await, "the driver left Tandem");
    let socket: Option<String> = c.query_first("SELECT @@socket").await.unwrap();
    let own = with_socket.dir.join("tandem.sock").display().to_string();
    assert_eq!(socket.as_deref(), Some(own.as_str()));
    let (socket, timeout): (Option<String>, Option<u64>) = c
        .query_first("SELECT @@global.socket, @@wait_timeout")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (socket.as_deref(), timeout.is_some()),
        (Some(own.as_str()), true)
    );

    let mut c = common::connect(&url(&without)).await;
    assert!(on_tandem(&mut c).await, "the driver left Tandem");
    let socket: Option<Option<String>> = c.query_first("SELECT @@socket").await.unwrap();
    assert_eq!(socket, Some(None), "no socket of Tandem's: NULL");
}
