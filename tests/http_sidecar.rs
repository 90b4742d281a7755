//! The HTTP sidecar in front of a service's own HTTP API: matching requests run in a global
//! transaction that commits on 2xx and rolls back otherwise.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use common::{mariadb, Tandem};
use http_body_util::BodyExt;
use mysql_async::prelude::*;

/// The service behind the sidecar: it moves money in its database through Tandem's MySQL
/// listener, joining whatever global transaction the sidecar hands it.
#[derive(Clone)]
struct Service {
    /// Tandem's MySQL URL, known once Tandem runs.
    mysql: Arc<OnceLock<String>>,
}

#[derive(serde::Deserialize)]
struct Transfer {
    amount: i64,
    #[serde(default)]
    fail: bool,
}

async fn transfer(
    State(svc): State<Service>,
    headers: HeaderMap,
    Query(t): Query<Transfer>,
) -> (StatusCode, String) {
    let xid = headers
        .get("x-tandem-xid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let url = svc.mysql.get().expect("tandem started").clone();
    let mut c = common::connect(&url).await;
    let r = c
        .query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE account SET balance = balance - {} WHERE id = 1",
            t.amount
        ))
        .await;
    match (r, t.fail) {
        (Err(e), _) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        (Ok(()), true) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed in {xid}"),
        ),
        (Ok(()), false) => (StatusCode::OK, xid),
    }
}

/// Streams the request body back, a chunk at a time.
async fn echo(body: Body) -> Body {
    Body::from_stream(body.into_data_stream())
}

async fn plain(headers: HeaderMap) -> String {
    format!(
        "xid:{}",
        headers
            .get("x-tandem-xid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
    )
}

async fn balance(db: &str) -> i64 {
    let mut c = common::connect(&mariadb().url(db)).await;
    c.query_first("SELECT balance FROM account WHERE id = 1")
        .await
        .unwrap()
        .unwrap()
}

/// One HTTP/1.1 request on an open connection; returns status, headers and body (the
/// service's plain answers carry a Content-Length).
fn request(s: &mut TcpStream, method: &str, path: &str, extra: &str) -> (u16, String, String) {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n{extra}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_run_in_global_transactions_that_follow_the_status() {
    let db = mariadb().fresh_db("sidecar");
    mariadb().sql(&format!(
        "CREATE TABLE {db}.account (id INT PRIMARY KEY, balance BIGINT NOT NULL);
         INSERT INTO {db}.account VALUES (1, 100);"
    ));

    // The service, on a port of its own.
    let svc = Service {
        mysql: Arc::new(OnceLock::new()),
    };
    let app = Router::new()
        .route("/transfer", post(transfer))
        .route("/echo", post(echo))
        .route("/plain", get(plain))
        .with_state(svc.clone());
    let upstream = common::serve(app).await;

    let yaml = common::single_config(&mariadb().url(&db), "", "{ max: 8 }")
        .replace(
            "drain_timeout: 10s\n",
            &format!(
                "drain_timeout: 10s\nhttp_sidecars:\n  - name: svc\n    address: 127.0.0.1:{{PORT_B}}\n    upstream: http://{upstream}\n    transactions:\n      - {{ method: POST, path: /transfer, timeout: 20s }}\n      - {{ method: POST, path: /ec+ho, match: regex }}\n"
            ),
        );
    let tandem = Tandem::start_yaml(&yaml);
    svc.mysql.set(tandem.url(&db)).unwrap();
    let sidecar = ("127.0.0.1", tandem.port_b);
    let started = Instant::now();
    let mut s = loop {
        if let Ok(s) = TcpStream::connect(sidecar) {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "sidecar never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    // All on one kept-alive connection: a 2xx commits, anything else rolls back.
    let (status, head, xid) = request(&mut s, "POST", "/transfer?amount=10", "");
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "x-tandem-status"), Some("Committed"));
    assert_eq!(
        header(&head, "x-tandem-xid"),
        Some(xid.as_str()),
        "the service saw the XID"
    );
    assert_eq!(balance(&db).await, 90);

    let (status, head, _) = request(&mut s, "POST", "/transfer?amount=5&fail=true", "");
    assert_eq!(status, 500, "{head}");
    assert_eq!(header(&head, "x-tandem-status"), Some("Rollbacked"));
    assert_eq!(balance(&db).await, 90, "the service's update was undone");

    // Requests no rule matches pass through without a transaction.
    let (status, head, body) = request(&mut s, "GET", "/plain", "");
    assert_eq!((status, body.as_str()), (200, "xid:none"));
    assert_eq!(header(&head, "x-tandem-status"), None);
    let (status, _, _) = request(&mut s, "GET", "/transfer?amount=1", "");
    assert_eq!(
        status, 405,
        "GET is not the rule's method: passed to the service as is"
    );

    // A request that already carries an XID joins that transaction, which the sidecar
    // leaves to its owner.
    let mut c = common::connect(&tandem.url(&db)).await;
    let outer = common::begin_global(&mut c).await;
    let (status, head, seen) = request(
        &mut s,
        "POST",
        "/transfer?amount=30",
        &format!("x-tandem-xid: {outer}\r\n"),
    );
    assert_eq!((status, seen.as_str()), (200, outer.as_str()), "{head}");
    assert_eq!(header(&head, "x-tandem-status"), None);
    assert_eq!(balance(&db).await, 60);
    let st = common::end_global(&mut c, "rollback", &outer).await;
    assert_eq!(st, "Rollbacked");
    assert_eq!(balance(&db).await, 90);

    // Bodies stream both ways (chunked, larger than any buffer on the way).
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        payload.chunks(65_536).map(|c| Ok(c.to_vec())).collect();
    let req = axum::http::Request::post(format!("http://127.0.0.1:{}/echo", tandem.port_b))
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("x-tandem-status").unwrap(),
        "Committed",
        "a matching request with no database work commits an empty transaction"
    );
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(echoed == payload, "the body came back whole");
}
