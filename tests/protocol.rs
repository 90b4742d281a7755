//! The frontend protocol: authentication with both plugins, the initial database, and the
//! commands besides COM_QUERY.

mod common;

use common::{error_code, mariadb, raw, single_config, Tandem, PASSWORD, USER};
use mysql_async::prelude::*;
use tandem::backend::BackendError;
use tandem::wire::scanner::ResponseKind;

fn server_error(e: BackendError) -> (u16, String) {
    match e {
        BackendError::Server(e) => (e.code, e.message),
        other => panic!("expected a server error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_with_both_plugins() {
    let db = mariadb().fresh_db("auth");
    for plugin in ["mysql_native_password", "caching_sha2_password"] {
        let yaml = single_config(
            &mariadb().url(&db),
            &format!("    auth_plugin: {plugin}"),
            "{ max: 8 }",
        );
        let tandem = Tandem::start_yaml(&yaml);
        // A driver that follows the announced plugin.
        let mut c = common::connect(&tandem.url(&db)).await;
        let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1, "{plugin}");
        // The raw client answers with the plugin it was greeted with.
        let mut r = raw::app(tandem.port, Some(&db)).await;
        assert!(raw::query(&mut r, "SELECT 1").await.len() > 1);
        // An account with an empty password.
        let mut e = raw::connect(tandem.port, "other", "", None, raw::driver_caps(false), 45)
            .await
            .unwrap();
        assert!(raw::query(&mut e, "SELECT 1").await.len() > 1);

        // Wrong password and unknown user: 1045.
        let bad = raw::connect(tandem.port, USER, "wrong", None, raw::driver_caps(true), 45).await;
        let (code, msg) = server_error(bad.expect_err("wrong password refused"));
        assert_eq!(code, 1045, "{plugin}");
        assert!(msg.contains("Access denied for user 'app'"), "{msg}");
        let bad = raw::connect(tandem.port, "nobody", "x", None, raw::driver_caps(true), 45).await;
        assert_eq!(server_error(bad.expect_err("unknown user refused")).0, 1045);
        let url = format!("mysql://{USER}:nope@127.0.0.1:{}/{db}", tandem.port);
        let e = mysql_async::Conn::from_url(&url)
            .await
            .expect_err("refused");
        assert_eq!(error_code(&e), Some(1045));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn initial_database_and_init_db() {
    let db = mariadb().fresh_db("initdb");
    let tandem = Tandem::start(&db);
    // No database in the handshake: the data source's database is current.
    let mut c = common::connect(&tandem.url_no_db()).await;
    let cur: Option<String> = c.query_first("SELECT DATABASE()").await.unwrap().unwrap();
    assert_eq!(cur.as_deref(), Some(db.as_str()));
    // An unknown database in the handshake is refused like the database refuses it.
    let e = mysql_async::Conn::from_url(&tandem.url("no_such_db_x"))
        .await
        .expect_err("refused");
    assert_eq!(error_code(&e), Some(1049));
    // COM_INIT_DB.
    let mut r = raw::app(tandem.port, None).await;
    let mut init = vec![0x02];
    init.extend_from_slice(b"information_schema");
    let resp = raw::command(&mut r, &init, ResponseKind::Single).await;
    assert_eq!(resp[0].1[0], 0x00, "OK");
    let mut bad = vec![0x02];
    bad.extend_from_slice(b"no_such_db_y");
    let resp = raw::command(&mut r, &bad, ResponseKind::Single).await;
    assert_eq!(resp[0].1[0], 0xff);
    assert_eq!(raw::error_code(&resp), Some(1049));
    let rows = raw::query(&mut r, "SELECT DATABASE()").await;
    assert!(rows.iter().any(|(_, p)| p.ends_with(b"information_schema")));
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_field_list_reset_and_statistics() {
    let db = mariadb().fresh_db("cmds");
    mariadb().sql(&format!("CREATE TABLE {db}.t (a INT, b VARCHAR(5))"));
    let tandem = Tandem::start(&db);
    for deprecate_eof in [false, true] {
        let caps = raw::driver_caps(deprecate_eof);
        let mut direct = raw::connect(mariadb().port, "root", "", Some(&db), caps, 45)
            .await
            .unwrap();
        let mut r = raw::connect(tandem.port, USER, PASSWORD, Some(&db), caps, 45)
            .await
            .unwrap();
        // COM_PING
        let resp = raw::command(&mut r, &[0x0e], ResponseKind::Single).await;
        assert_eq!(resp[0].1[0], 0x00);
        // COM_FIELD_LIST: identical to the database's answer.
        let a = raw::command(&mut direct, b"\x04t\0", ResponseKind::FieldList).await;
        let b = raw::command(&mut r, b"\x04t\0", ResponseKind::FieldList).await;
        assert_eq!(a, b);
        assert_eq!(b.len(), 3, "two columns and EOF");
        // COM_STATISTICS answers with a string.
        let resp = raw::command(&mut r, &[0x09], ResponseKind::Single).await;
        assert!(String::from_utf8_lossy(&resp[0].1).contains("Uptime"));
        // COM_RESET_CONNECTION clears session state.
        raw::query(&mut r, "SET @v = 5").await;
        let resp = raw::command(&mut r, &[0x1f], ResponseKind::Single).await;
        assert_eq!(resp[0].1[0], 0x00);
        let rows = raw::query(&mut r, "SELECT @v IS NULL").await;
        assert!(rows.iter().any(|(_, p)| p == b"\x011"), "{rows:?}");
    }
    // Through a driver: ping and reset.
    let mut c = common::connect(&tandem.url(&db)).await;
    c.ping().await.unwrap();
    c.query_drop("SET @w = 1").await.unwrap();
    c.reset().await.unwrap();
    let w: Option<i64> = c.query_first("SELECT @w").await.unwrap().unwrap();
    assert_eq!(w, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statement_commands() {
    let db = mariadb().fresh_db("stmtcmd");
    mariadb().sql(&format!(
        "CREATE TABLE {db}.blobs (id INT PRIMARY KEY, b LONGBLOB)"
    ));
    let tandem = Tandem::start(&db);
    let mut r = raw::app(tandem.port, Some(&db)).await;
    let resp = raw::command(
        &mut r,
        b"\x16INSERT INTO blobs VALUES (?, ?)",
        ResponseKind::Prepare,
    )
    .await;
    assert_eq!(resp[0].1[0], 0x00);
    let id = resp[0].1[1..5].to_vec();
    assert_eq!(
        u16::from_le_bytes([resp[0].1[7], resp[0].1[8]]),
        2,
        "two parameters"
    );
    // COM_STMT_SEND_LONG_DATA for parameter 1, in two pieces; no response.
    for piece in [&b"hello "[..], &b"world"[..]] {
        let mut p = vec![0x18];
        p.extend_from_slice(&id);
        p.extend_from_slice(&1u16.to_le_bytes());
        p.extend_from_slice(piece);
        let io = r.io();
        io.write_packet(0, &p);
        io.flush().await.unwrap();
    }
    // COM_STMT_EXECUTE with id = 7 and the long-data parameter.
    let mut exec = vec![0x17];
    exec.extend_from_slice(&id);
    exec.push(0);
    exec.extend_from_slice(&1u32.to_le_bytes());
    exec.push(0); // null bitmap
    exec.push(1);
    exec.extend_from_slice(&[0x03, 0x00, 0xfc, 0x00]); // LONG, BLOB
    exec.extend_from_slice(&7i32.to_le_bytes());
    let resp = raw::command(&mut r, &exec, ResponseKind::Execute).await;
    assert_eq!(resp[0].1[0], 0x00, "{resp:?}");
    let rows = raw::query(&mut r, "SELECT b FROM blobs WHERE id = 7").await;
    assert!(
        rows.iter().any(|(_, p)| p.ends_with(b"hello world")),
        "{rows:?}"
    );
    // COM_STMT_RESET answers OK; COM_STMT_CLOSE answers nothing and the id is gone.
    let mut reset = vec![0x1a];
    reset.extend_from_slice(&id);
    assert_eq!(
        raw::command(&mut r, &reset, ResponseKind::Single).await[0].1[0],
        0x00
    );
    let mut close = vec![0x19];
    close.extend_from_slice(&id);
    r.io().write_packet(0, &close);
    r.io().flush().await.unwrap();
    let resp = raw::command(&mut r, &exec, ResponseKind::Execute).await;
    assert_eq!(resp[0].1[0], 0xff, "executing a closed statement fails");
    assert_eq!(raw::error_code(&resp), Some(1243));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_character_set_is_honoured() {
    let db = mariadb().fresh_db("charset");
    let tandem = Tandem::start(&db);
    // latin1_swedish_ci (8), utf8mb3_general_ci (33), utf8mb4_unicode_ci (224), binary (63).
    for (collation, cs, coll) in [
        (8u8, "latin1", "latin1_swedish_ci"),
        (33, "utf8mb3", "utf8mb3_general_ci"),
        (224, "utf8mb4", "utf8mb4_unicode_ci"),
        (63, "binary", "binary"),
    ] {
        let mut r = raw::connect(
            tandem.port,
            USER,
            PASSWORD,
            Some(&db),
            raw::driver_caps(true),
            collation,
        )
        .await
        .unwrap();
        let rows = raw::query(
            &mut r,
            "SELECT CONCAT(@@character_set_client, ' ', @@collation_connection)",
        )
        .await;
        let want = format!("{cs} {coll}");
        assert!(
            rows.iter().any(|(_, p)| p.ends_with(want.as_bytes())),
            "collation {collation}: {:?}",
            rows.iter()
                .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
        );
    }
    // A latin1 client's SET NAMES does not leak to the next client on a reused connection.
    {
        let mut c = common::connect(&tandem.url(&db)).await;
        c.query_drop("SET NAMES latin1").await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut c = common::connect(&tandem.url(&db)).await;
    let cs: String = c
        .query_first("SELECT @@character_set_client")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cs, "utf8mb4");
}

#[tokio::test(flavor = "multi_thread")]
async fn change_user_starts_a_fresh_session() {
    use mysql_async::ChangeUserOpts;
    let db = mariadb().fresh_db("chuser");
    mariadb().sql(&format!("CREATE DATABASE IF NOT EXISTS {db}_b"));
    let tandem = Tandem::start(&db);
    let mut c = common::connect(&tandem.url(&db)).await;
    c.query_drop("SET @x = 1").await.unwrap();
    c.query_drop("CREATE TEMPORARY TABLE tmp (a INT)")
        .await
        .unwrap();
    let opts = ChangeUserOpts::default()
        .with_user(Some("other".into()))
        .with_pass(Some(String::new()))
        .with_db_name(Some(format!("{db}_b")));
    c.change_user(opts).await.unwrap();
    let (x, cur): (Option<i64>, String) = c
        .query_first("SELECT @x, DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(x, None, "user variables are gone");
    assert_eq!(cur, format!("{db}_b"));
    assert_eq!(
        error_code(&c.query_drop("SELECT * FROM tmp").await.unwrap_err()),
        Some(1146)
    );

    // A wrong password ends the session with 1045.
    let opts = ChangeUserOpts::default()
        .with_user(Some(USER.into()))
        .with_pass(Some("wrong".into()));
    let e = c.change_user(opts).await.unwrap_err();
    assert_eq!(error_code(&e), Some(1045), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn quit_closes_the_connection() {
    let db = mariadb().fresh_db("quit");
    let tandem = Tandem::start(&db);
    let mut r = raw::app(tandem.port, Some(&db)).await;
    let io = r.io();
    io.write_packet(0, &[0x01]);
    io.flush().await.unwrap();
    assert!(
        io.read_packet(1 << 20).await.unwrap().is_none(),
        "closed without a reply"
    );
}
