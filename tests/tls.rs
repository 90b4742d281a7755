//! TLS for clients: a listener with a certificate serves clients that require SSL, and a
//! listener that requires TLS refuses plain connections.

mod common;

use std::process::Command;

use common::{error_code, mariadb, single_config, Tandem, PASSWORD, USER};
use mysql_async::prelude::*;
use mysql_async::{OptsBuilder, SslOpts};

fn tls_opts(port: u16, db: &str) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .db_name(Some(db))
        .ssl_opts(SslOpts::default().with_danger_accept_invalid_certs(true))
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_connect_over_tls() {
    let db = mariadb().fresh_db("tls");
    let dir = common::scratch("tls-certs");
    common::self_signed_cert(&dir, &["-subj", "/CN=localhost"]);
    let listener_tls = format!(
        "    tls: {{ cert: {}, key: {}, required: true }}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let tandem = Tandem::start_yaml(&single_config(
        &mariadb().url(&db),
        &listener_tls,
        "{ max: 8 }",
    ));

    // A Rust client that requires SSL, using both protocols.
    let mut c = mysql_async::Conn::new(tls_opts(tandem.port, &db))
        .await
        .unwrap();
    c.query_drop("CREATE TABLE t (id INT PRIMARY KEY, s MEDIUMTEXT)")
        .await
        .unwrap();
    let big = "z".repeat(200_000);
    c.exec_drop("INSERT INTO t VALUES (?, ?)", (1, &big))
        .await
        .unwrap();
    let s: String = c
        .exec_first("SELECT s FROM t WHERE id = ?", (1,))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, big);
    let wrong = tls_opts(tandem.port, &db).pass(Some("wrong"));
    let e = mysql_async::Conn::new(wrong).await.expect_err("refused");
    assert_eq!(error_code(&e), Some(1045), "{e:?}");

    // The mariadb CLI with --ssl.
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            "--batch",
            "--skip-column-names",
            "--ssl",
            "--ssl-verify-server-cert=0",
        ])
        .arg(format!("-P{}", tandem.port))
        .arg(format!("-u{USER}"))
        .arg(format!("-p{PASSWORD}"))
        .arg(&db)
        .args(["-e", "SELECT COUNT(*) FROM t"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");

    // Plain TCP is refused on a listener that requires TLS.
    let e = mysql_async::Conn::from_url(&tandem.url(&db))
        .await
        .expect_err("refused");
    assert_eq!(error_code(&e), Some(3159), "{e}");
}

#[test]
fn tandem_check_rejects_a_missing_certificate() {
    let dir = common::scratch("tls-missing");
    let yaml = single_config(
        "mysql://root@127.0.0.1:3306/x",
        "    tls: { cert: /nonexistent/cert.pem, key: /nonexistent/key.pem }",
        "{ max: 8 }",
    )
    .replace("{PORT}", "1")
    .replace("{ADMIN}", "2")
    .replace("{DIR}", &dir.display().to_string());
    let path = dir.join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners[0].tls.cert"), "{err}");
}
