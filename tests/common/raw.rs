//! A raw protocol client for byte-level checks: Tandem's own backend connection type, which
//! speaks the client side of the protocol, pointed at Tandem or straight at MariaDB.

use mysql_common::constants::CapabilityFlags;
use tandem::backend::{BackendConn, BackendError, ConnKey};
use tandem::config::Dsn;
use tandem::wire::scanner::{Progress, ResponseKind, ResponseScanner};

pub async fn connect(
    port: u16,
    user: &str,
    password: &str,
    db: Option<&str>,
    caps: CapabilityFlags,
    collation: u8,
) -> Result<BackendConn, BackendError> {
    let dsn = Dsn {
        user: user.into(),
        password: password.into(),
        host: "127.0.0.1".into(),
        port,
        database: db.map(Into::into),
        socket: None,
    };
    BackendConn::connect(
        &dsn,
        ConnKey::new(caps, collation),
        std::time::Duration::from_secs(5),
    )
    .await
}

/// Sends one command and returns every packet of its response as (sequence id, payload).
pub async fn command(
    conn: &mut BackendConn,
    payload: &[u8],
    kind: ResponseKind,
) -> Vec<(u8, Vec<u8>)> {
    let deprecate_eof = conn.deprecate_eof();
    let io = conn.io();
    io.write_packet(0, payload);
    io.flush().await.expect("send command");
    let mut scanner = ResponseScanner::new(kind, deprecate_eof);
    let mut out = Vec::new();
    loop {
        let p = io
            .read_packet(1 << 30)
            .await
            .expect("read response")
            .expect("connection open");
        let mut framed = Vec::new();
        let len = (p.payload.len() as u32).to_le_bytes();
        framed.extend_from_slice(&[len[0], len[1], len[2], p.seq]);
        framed.extend_from_slice(&p.payload);
        let progress = scanner.feed(&framed).expect("well-formed response");
        out.push((p.seq, p.payload.to_vec()));
        match progress {
            Progress::NeedMore => {}
            Progress::Done(_) => return out,
            Progress::LocalInfile(_) => panic!("unexpected LOCAL INFILE request"),
        }
    }
}

pub async fn query(conn: &mut BackendConn, sql: &str) -> Vec<(u8, Vec<u8>)> {
    let mut payload = vec![0x03];
    payload.extend_from_slice(sql.as_bytes());
    command(conn, &payload, ResponseKind::Query).await
}

/// The capability sets real drivers use: with and without CLIENT_DEPRECATE_EOF.
pub fn driver_caps(deprecate_eof: bool) -> CapabilityFlags {
    let mut caps = CapabilityFlags::CLIENT_MULTI_STATEMENTS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
        | CapabilityFlags::CLIENT_SESSION_TRACK;
    if deprecate_eof {
        caps |= CapabilityFlags::CLIENT_DEPRECATE_EOF;
    }
    caps
}

/// Connects as the test user with a driver's usual capabilities and utf8mb4.
pub async fn app(port: u16, db: Option<&str>) -> BackendConn {
    connect(
        port,
        super::USER,
        super::PASSWORD,
        db,
        driver_caps(true),
        45,
    )
    .await
    .expect("connect as the test user")
}

/// The error code, when a response is an ERR packet.
pub fn error_code(resp: &[(u8, Vec<u8>)]) -> Option<u16> {
    let p = &resp.first()?.1;
    (p.len() >= 3 && p[0] == 0xff).then(|| u16::from_le_bytes([p[1], p[2]]))
}

/// True when some packet of a response ends with `tail` (a cell at the end of a row).
pub fn has_row_ending(resp: &[(u8, Vec<u8>)], tail: &[u8]) -> bool {
    resp.iter().any(|(_, p)| p.ends_with(tail))
}
