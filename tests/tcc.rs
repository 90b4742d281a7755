//! TCC branches over HTTP through the sidecar, beside AT branches in the same global
//! transaction: idempotent phase 2, empty rollback, anti-suspension, retries.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{mariadb, Tandem};
use mysql_async::prelude::*;

/// What the stock service saw, per XID.
#[derive(Default)]
struct Seen {
    prepares: HashMap<String, u32>,
    confirms: HashMap<String, u32>,
    cancels: HashMap<String, u32>,
    /// Body and `x-order` header of each phase-2 call.
    phase2_context: Vec<(String, String)>,
    /// XIDs whose next cancel fails once.
    fail_cancel_once: Vec<String>,
    /// XIDs whose next commit takes longer than the resource's timeout, once.
    slow_confirm_once: Vec<String>,
    /// When each commit call arrived, per XID.
    confirm_calls: HashMap<String, Vec<Instant>>,
}

/// How long a slow commit takes: well past the resource's 2 s timeout.
const SLOW_CONFIRM: Duration = Duration::from_secs(5);

type Svc = Arc<Mutex<Seen>>;

fn xid_of(h: &HeaderMap) -> String {
    h.get("x-tandem-xid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[derive(serde::Deserialize)]
struct Slow {
    #[serde(default)]
    slow_ms: u64,
}

async fn reserve(State(s): State<Svc>, Query(q): Query<Slow>, h: HeaderMap) -> StatusCode {
    tokio::time::sleep(Duration::from_millis(q.slow_ms)).await;
    *s.lock().unwrap().prepares.entry(xid_of(&h)).or_default() += 1;
    StatusCode::OK
}

fn phase2(s: &Svc, h: &HeaderMap, body: &Bytes, confirm: bool) -> StatusCode {
    let mut seen = s.lock().unwrap();
    let xid = xid_of(h);
    if !confirm {
        if let Some(i) = seen.fail_cancel_once.iter().position(|x| *x == xid) {
            seen.fail_cancel_once.remove(i);
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let order = h
        .get("x-order")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    seen.phase2_context
        .push((String::from_utf8_lossy(body).into_owned(), order));
    let map = if confirm {
        &mut seen.confirms
    } else {
        &mut seen.cancels
    };
    *map.entry(xid).or_default() += 1;
    StatusCode::OK
}

async fn confirm(State(s): State<Svc>, h: HeaderMap, body: Bytes) -> StatusCode {
    let slow = {
        let mut seen = s.lock().unwrap();
        let xid = xid_of(&h);
        seen.confirm_calls
            .entry(xid.clone())
            .or_default()
            .push(Instant::now());
        let slow = seen.slow_confirm_once.iter().position(|x| *x == xid);
        slow.map(|i| seen.slow_confirm_once.remove(i)).is_some()
    };
    if slow {
        tokio::time::sleep(SLOW_CONFIRM).await;
    }
    phase2(&s, &h, &body, true)
}

async fn cancel(State(s): State<Svc>, h: HeaderMap, body: Bytes) -> StatusCode {
    phase2(&s, &h, &body, false)
}

fn count(s: &Svc, pick: fn(&Seen) -> &HashMap<String, u32>, xid: &str) -> u32 {
    pick(&s.lock().unwrap()).get(xid).copied().unwrap_or(0)
}

/// POST to the sidecar; returns the status.
async fn post_to(port: u16, path: &str, xid: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = r#"{"sku": 7, "qty": 2}"#;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: stock\r\nConnection: close\r\nx-tandem-xid: {xid}\r\nx-order: o-17\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    resp[9..12].parse().unwrap()
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tcc_branches_beside_at_branches() {
    let db = mariadb().fresh_db("tcc");
    mariadb().sql(&format!(
        "CREATE TABLE {db}.account (id INT PRIMARY KEY, balance BIGINT NOT NULL);
         INSERT INTO {db}.account VALUES (1, 100);"
    ));
    let svc: Svc = Arc::default();
    let app = Router::new()
        .route("/reserve", post(reserve))
        .route("/reserve/confirm", post(confirm))
        .route("/reserve/cancel", post(cancel))
        .with_state(svc.clone());
    let upstream = common::serve(app).await;
    let yaml = common::single_config(&mariadb().url(&db), "", "{ max: 8 }").replace(
        "drain_timeout: 10s\n",
        &format!(
            "drain_timeout: 10s
http_sidecars:
  - name: stock
    address: 127.0.0.1:{{PORT_B}}
    upstream: http://{upstream}
    tcc:
      - name: reserve
        prepare: {{ method: POST, path: /reserve }}
        commit: {{ method: POST, path: /reserve/confirm }}
        cancel: {{ method: POST, path: /reserve/cancel }}
        timeout: 2s
"
        ),
    );
    let tandem = Tandem::start_yaml(&yaml);
    let sidecar = tandem.port_b;
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", sidecar)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sidecar never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = common::connect(&tandem.url(&db)).await;
    let balance = || async {
        let mut d = common::connect(&mariadb().url(&db)).await;
        d.query_first::<i64, _>("SELECT balance FROM account WHERE id = 1")
            .await
            .unwrap()
            .unwrap()
    };

    // Commit: the AT update stays, the service's commit endpoint is called once, with the
    // prepare's body and headers.
    let xid = common::begin_global(&mut c).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance - 10 WHERE id = 1"
    ))
    .await
    .unwrap();
    assert_eq!(post_to(sidecar, "/reserve", &xid).await, 200);
    assert_eq!(
        common::end_global(&mut c, "commit", &xid).await,
        "Committed"
    );
    wait_until("confirm called", || count(&svc, |s| &s.confirms, &xid) == 1).await;
    assert_eq!(balance().await, 90);
    assert_eq!(count(&svc, |s| &s.cancels, &xid), 0);
    assert_eq!(
        svc.lock().unwrap().phase2_context[0],
        (r#"{"sku": 7, "qty": 2}"#.to_string(), "o-17".to_string()),
        "phase 2 carries the original request"
    );

    // A commit slower than the resource's timeout (2 s): Tandem stops waiting when the
    // timeout ends and calls again, while the first call is still under way; the second
    // answers, and there is no third.
    let xid = common::begin_global(&mut c).await;
    svc.lock().unwrap().slow_confirm_once.push(xid.clone());
    assert_eq!(post_to(sidecar, "/reserve", &xid).await, 200);
    assert_eq!(
        common::end_global(&mut c, "commit", &xid).await,
        "Committed"
    );
    wait_until("the commit is called again", || {
        svc.lock()
            .unwrap()
            .confirm_calls
            .get(&xid)
            .is_some_and(|c| c.len() == 2)
    })
    .await;
    let calls = svc.lock().unwrap().confirm_calls[&xid].clone();
    let gap = calls[1] - calls[0];
    assert!(
        gap >= Duration::from_secs(2) && gap < SLOW_CONFIRM,
        "the second call came {gap:?} after the first: not at the timeout"
    );
    wait_until("the transaction ends", || {
        count(&svc, |s| &s.confirms, &xid) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        svc.lock().unwrap().confirm_calls[&xid].len(),
        2,
        "no call after the one that answered"
    );

    // Rollback, with the first cancel failing: retried until it succeeds, then never again;
    // the AT update is undone too.
    let xid = common::begin_global(&mut c).await;
    svc.lock().unwrap().fail_cancel_once.push(xid.clone());
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance - 10 WHERE id = 1"
    ))
    .await
    .unwrap();
    assert_eq!(post_to(sidecar, "/reserve", &xid).await, 200);
    common::end_global(&mut c, "rollback", &xid).await;
    wait_until("cancel retried until it succeeds", || {
        count(&svc, |s| &s.cancels, &xid) == 1
    })
    .await;
    let mut status = String::new();
    let start = Instant::now();
    while status != "Rollbacked" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never rolled back: {status}"
        );
        status = c
            .query_first(format!("SELECT tandem_status('{xid}')"))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(balance().await, 90);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&svc, |s| &s.cancels, &xid),
        1,
        "no call after success"
    );
    assert_eq!(count(&svc, |s| &s.confirms, &xid), 0);

    // Anti-suspension: a prepare that arrives after the rollback never reaches the service.
    let xid = common::begin_global(&mut c).await;
    common::end_global(&mut c, "rollback", &xid).await;
    assert_eq!(post_to(sidecar, "/reserve", &xid).await, 409);
    assert_eq!(count(&svc, |s| &s.prepares, &xid), 0);

    // Empty rollback: the rollback comes while the prepare is still at the service; it ends
    // without calling cancel, and the prepare, once answered, is cancelled by Tandem.
    let xid = common::begin_global(&mut c).await;
    let slow = tokio::spawn({
        let xid = xid.clone();
        async move { post_to(sidecar, "/reserve?slow_ms=1500", &xid).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        common::end_global(&mut c, "rollback", &xid).await,
        "Rollbacked"
    );
    assert_eq!(count(&svc, |s| &s.cancels, &xid), 0, "nothing prepared yet");
    assert_eq!(slow.await.unwrap(), 409, "the late prepare is refused");
    assert_eq!(count(&svc, |s| &s.prepares, &xid), 1);
    wait_until("the late prepare is cancelled", || {
        count(&svc, |s| &s.cancels, &xid) == 1
    })
    .await;
}
