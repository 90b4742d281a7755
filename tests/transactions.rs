//! Global transactions through the SQL functions and the admin HTTP API: begin, commit,
//! rollback, status, timeouts, and durability of decisions across a crash.

mod common;

use std::time::Duration;

use common::{error_code, mariadb, Tandem};
use mysql_async::prelude::*;

fn json_field(body: &str, field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_functions_begin_and_end_global_transactions() {
    let db = mariadb().fresh_db("gtx");
    let tandem = Tandem::start(&db);
    let mut c = common::connect(&tandem.url(&db)).await;

    let xid = common::begin_global(&mut c).await;
    assert!(!xid.is_empty() && xid.len() <= 128, "{xid}");
    let status: String = c
        .query_first(format!("SELECT tandem_status('{xid}')"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, "Begin");
    let status = common::end_global(&mut c, "commit", &xid).await;
    assert_eq!(status, "Committed");
    // Asking again is harmless, and a committed transaction cannot be rolled back.
    let again: String = c
        .query_first(format!("select TANDEM_COMMIT('{xid}');"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, "Committed");
    let rb = common::end_global(&mut c, "rollback", &xid).await;
    assert_eq!(rb, "Committed");

    let other: String = c
        .query_first("SELECT tandem_begin(30000)")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(other, xid);
    let rb = common::end_global(&mut c, "rollback", &other).await;
    assert_eq!(rb, "Rollbacked");
    let late = common::end_global(&mut c, "commit", &other).await;
    assert_eq!(late, "Rollbacked");

    // The result has one column named after the call, like any SELECT of an expression.
    let row: mysql_async::Row = c
        .query_first("SELECT tandem_begin()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.columns_ref()[0].name_str(), "tandem_begin()");
    // Through the prepared-statement protocol too, with `?` arguments.
    let px: String = c
        .exec_first("SELECT tandem_begin(?)", (60_000,))
        .await
        .unwrap()
        .unwrap();
    let s: String = c
        .exec_first("SELECT tandem_status(?)", (&px,))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, "Begin");
    let stmt = c.prep("SELECT tandem_commit(?)").await.unwrap();
    assert_eq!(stmt.num_params(), 1);
    let s: String = c.exec_first(&stmt, (&px,)).await.unwrap().unwrap();
    assert_eq!(s, "Committed");
    let again: String = c.exec_first(&stmt, (&px,)).await.unwrap().unwrap();
    assert_eq!(again, "Committed");
    c.close(stmt).await.unwrap();
    let e = c
        .exec_drop("SELECT tandem_commit(?)", ("no-such",))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1397), "{e}");
    let e = c
        .exec_drop("SELECT tandem_begin(?)", ("soon",))
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(1210), "{e}");
    let no_params: String = c
        .exec_first("SELECT tandem_begin()", ())
        .await
        .unwrap()
        .unwrap();
    assert!(!no_params.is_empty());

    // Bad calls get clear errors and the session goes on.
    let cases = [
        ("SELECT tandem_commit('no-such-xid')", 1397),
        ("SELECT tandem_begin('soon')", 1210),
        ("SELECT tandem_begin(0)", 1210),
        ("SELECT tandem_commit()", 1582),
        ("SELECT tandem_commit('a', 'b')", 1582),
        ("SELECT tandem_commit(42)", 1210),
        ("SELECT tandem_status('unterminated)", 1210),
    ];
    for (sql, code) in cases {
        let e = c.query_drop(sql).await.unwrap_err();
        assert_eq!(error_code(&e), Some(code), "{sql}: {e}");
    }
    let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_time_out() {
    let db = mariadb().fresh_db("gtxto");
    let tandem = Tandem::start(&db);
    let mut c = common::connect(&tandem.url(&db)).await;
    let xid: String = c
        .query_first("SELECT tandem_begin(200)")
        .await
        .unwrap()
        .unwrap();
    // The sweep rolls it back without anyone asking.
    let mut status = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = c
            .query_first(format!("SELECT tandem_status('{xid}')"))
            .await
            .unwrap()
            .unwrap();
        if status == "TimeoutRollbacked" {
            break;
        }
    }
    assert_eq!(status, "TimeoutRollbacked");
    let late = common::end_global(&mut c, "commit", &xid).await;
    assert_eq!(
        late, "TimeoutRollbacked",
        "a late commit reports the timeout outcome"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_api_begins_ends_and_lists_transactions() {
    let db = mariadb().fresh_db("gtxhttp");
    let tandem = Tandem::start(&db);
    let (code, body) = tandem.admin_post("/v1/transactions", r#"{"timeout_ms": 60000}"#);
    assert_eq!(code, 200, "{body}");
    let xid = json_field(&body, "xid");
    let (code, body) = tandem.admin(&format!("/v1/transactions/{xid}"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_field(&body, "status"), "Begin");
    assert!(body.contains(r#""timeout_ms":60000"#), "{body}");

    // SQL and HTTP see the same transactions.
    let mut c = common::connect(&tandem.url(&db)).await;
    let s: String = c
        .query_first(format!("SELECT tandem_status('{xid}')"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, "Begin");

    let (code, body) = tandem.admin_post(&format!("/v1/transactions/{xid}/commit"), "");
    assert_eq!(
        (code, json_field(&body, "status")),
        (200, "Committed".to_string()),
        "{body}"
    );
    let (_, body) = tandem.admin_post("/v1/transactions", "");
    let xid2 = json_field(&body, "xid");
    let (code, body) = tandem.admin_post(&format!("/v1/transactions/{xid2}/rollback"), "");
    assert_eq!(
        (code, json_field(&body, "status")),
        (200, "Rollbacked".to_string()),
        "{body}"
    );

    let (code, body) = tandem.admin("/v1/transactions?status=Committed");
    assert_eq!(code, 200);
    assert!(body.contains(&xid) && !body.contains(&xid2), "{body}");
    let (code, _) = tandem.admin("/v1/transactions?status=Sideways");
    assert_eq!(code, 400);

    assert_eq!(tandem.admin("/v1/transactions/nope").0, 404);
    assert_eq!(tandem.admin_post("/v1/transactions/nope/commit", "").0, 404);
    assert_eq!(tandem.admin_post("/v1/transactions", "{not json").0, 400);
    assert_eq!(
        tandem
            .admin_post("/v1/transactions", r#"{"timeout_ms": 0}"#)
            .0,
        400
    );
    assert_eq!(
        tandem.admin_post("/v1/transactions", r#"{"timeout": 5}"#).0,
        400
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn decisions_survive_kill_9() {
    let db = mariadb().fresh_db("gtxcrash");
    let mut tandem = Tandem::start(&db);
    let mut c = common::connect(&tandem.url(&db)).await;
    let open: String = c
        .query_first("SELECT tandem_begin(60000)")
        .await
        .unwrap()
        .unwrap();
    let done: String = c
        .query_first("SELECT tandem_begin(60000)")
        .await
        .unwrap()
        .unwrap();
    let s = common::end_global(&mut c, "commit", &done).await;
    assert_eq!(s, "Committed");
    drop(c);
    tandem.restart();
    let mut c = common::connect(&tandem.url(&db)).await;
    let s: String = c
        .query_first(format!("SELECT tandem_status('{done}')"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, "Committed");
    let s: String = c
        .query_first(format!("SELECT tandem_status('{open}')"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, "Begin");
    let s = common::end_global(&mut c, "rollback", &open).await;
    assert_eq!(s, "Rollbacked");
}
