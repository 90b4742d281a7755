//! Bad input never takes Tandem down: malformed, truncated and oversized packets, garbage
//! after the handshake, unknown commands. Each gets an error packet or a clean disconnect,
//! and other sessions carry on.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{mariadb, raw, single_config, Tandem, PASSWORD, USER};
use mysql_async::prelude::*;
use tandem::wire::scanner::ResponseKind;

fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut v = vec![len[0], len[1], len[2], seq];
    v.extend_from_slice(payload);
    v
}

/// Reads whatever the server sends until it closes or goes quiet.
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Connects and reads the greeting packet.
fn greet(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    assert_eq!(body[0], 10, "protocol version 10");
    s
}

fn error_code_of(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= 7 && bytes[4] == 0xff).then(|| u16::from_le_bytes([bytes[5], bytes[6]]))
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_handshakes_get_an_error_and_others_are_unaffected() {
    let db = mariadb().fresh_db("bad");
    let tandem = Tandem::start(&db);
    let mut healthy = common::connect(&tandem.url(&db)).await;

    // Garbage instead of a handshake response: 1043 Bad handshake.
    let mut s = greet(tandem.port);
    s.write_all(&frame(1, b"this is not a handshake")).unwrap();
    assert_eq!(error_code_of(&read_all(&mut s)), Some(1043));

    // A truncated packet, then close: no reply needed, no crash.
    let mut s = greet(tandem.port);
    s.write_all(&[50, 0, 0, 1, 1, 2, 3]).unwrap();
    drop(s);

    // Random bytes straight after connecting.
    let mut s = greet(tandem.port);
    s.write_all(&[0xff; 300]).unwrap();
    let _ = read_all(&mut s);

    // A handshake packet far over the limit is refused without being read.
    let mut s = greet(tandem.port);
    s.write_all(&[0xff, 0xff, 0xff, 1]).unwrap();
    let _ = read_all(&mut s);

    // An SSL request on a listener without TLS: treated as a bad handshake.
    let mut s = greet(tandem.port);
    let mut ssl = vec![0u8; 32];
    ssl[..4].copy_from_slice(&(0x0000_0800u32 | 0x0000_0200 | 0x0000_8000).to_le_bytes());
    s.write_all(&frame(1, &ssl)).unwrap();
    assert_eq!(error_code_of(&read_all(&mut s)), Some(1043));

    let n: i64 = healthy.query_first("SELECT 41 + 1").await.unwrap().unwrap();
    assert_eq!(n, 42);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_commands_after_the_handshake() {
    let db = mariadb().fresh_db("badcmd");
    let tandem = Tandem::start_yaml(&single_config(
        &mariadb().url(&db),
        "    max_allowed_packet: 64KiB",
        "{ max: 8 }",
    ));
    let mut healthy = common::connect(&tandem.url(&db)).await;
    let mut r = raw::app(tandem.port, Some(&db)).await;

    // Unknown and refused commands: 1047, and the connection stays usable.
    for cmd in [0x00u8, 0x05, 0x12, 0x20, 0x99, 0xfe] {
        let resp = raw::command(&mut r, &[cmd, 1, 2, 3], ResponseKind::Single).await;
        assert_eq!(resp[0].1[0], 0xff, "command {cmd:#x}");
        assert_eq!(
            raw::error_code(&resp).unwrap_or(0),
            1047,
            "command {cmd:#x}"
        );
    }
    // COM_PROCESS_KILL without a whole connection id: malformed.
    let resp = raw::command(&mut r, &[0x0c, 1, 2, 3], ResponseKind::Single).await;
    assert_eq!(raw::error_code(&resp), Some(1835));
    // An empty command packet: malformed.
    let resp = raw::command(&mut r, &[], ResponseKind::Single).await;
    assert_eq!(raw::error_code(&resp), Some(1835));
    // SQL that does not parse: the database's own syntax error.
    let resp = raw::query(&mut r, "SELEKT garbage ((").await;
    assert_eq!(raw::error_code(&resp), Some(1064));
    // Binary junk as SQL text.
    let mut junk = vec![0x03];
    junk.extend((0..200u32).map(|i| (i * 37 % 256) as u8));
    let resp = raw::command(&mut r, &junk, ResponseKind::Query).await;
    assert_eq!(resp[0].1[0], 0xff);
    // Executing a statement id that was never prepared.
    let resp = raw::command(
        &mut r,
        &[0x17, 9, 9, 9, 9, 0, 1, 0, 0, 0],
        ResponseKind::Execute,
    )
    .await;
    assert_eq!(resp[0].1[0], 0xff);
    let rows = raw::query(&mut r, "SELECT 'still here'").await;
    assert!(rows.iter().any(|(_, p)| p.ends_with(b"still here")));

    // A packet over max_allowed_packet: 1153, then the connection closes.
    let big = format!("SELECT '{}'", "x".repeat(70 * 1024));
    let mut p = vec![0x03];
    p.extend_from_slice(big.as_bytes());
    let io = r.io();
    io.write_packet(0, &p);
    let _ = io.flush().await;
    let reply = io
        .read_packet(1 << 20)
        .await
        .unwrap()
        .expect("an error packet");
    assert_eq!(reply.payload[0], 0xff);
    assert_eq!(
        u16::from_le_bytes([reply.payload[1], reply.payload[2]]),
        1153
    );

    // A command that does not start at sequence id 0: 1156, then the connection closes.
    let mut r2 = raw::app(tandem.port, Some(&db)).await;
    let io = r2.io();
    io.write_packet(5, b"\x03SELECT 1");
    io.flush().await.unwrap();
    let reply = io
        .read_packet(1 << 20)
        .await
        .unwrap()
        .expect("an error packet");
    assert_eq!(
        u16::from_le_bytes([reply.payload[1], reply.payload[2]]),
        1156
    );
    assert!(
        io.read_packet(1 << 20).await.unwrap().is_none(),
        "closed after the error"
    );

    let n: i64 = healthy.query_first("SELECT 6 * 7").await.unwrap().unwrap();
    assert_eq!(n, 42);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_abrupt_disconnects_leave_tandem_healthy() {
    let db = mariadb().fresh_db("abrupt");
    mariadb().sql(&format!(
        "CREATE TABLE {db}.big (id INT PRIMARY KEY, pad CHAR(200))"
    ));
    common::mariadb_cli(
        mariadb().port,
        "root",
        "",
        Some(&db),
        "INSERT INTO big SELECT seq, REPEAT('p', 200) FROM seq_1_to_20000",
    )
    .unwrap();
    let tandem = Tandem::start(&db);
    for i in 0..30 {
        if i % 3 == 0 {
            // Connect and vanish before the handshake.
            drop(TcpStream::connect(("127.0.0.1", tandem.port)).unwrap());
            continue;
        }
        // Authenticate, start a big result, then vanish in the middle of it.
        let mut r = raw::connect(
            tandem.port,
            USER,
            PASSWORD,
            Some(&db),
            raw::driver_caps(i % 2 == 0),
            45,
        )
        .await
        .unwrap();
        let io = r.io();
        io.write_packet(0, b"\x03SELECT * FROM big");
        io.flush().await.unwrap();
        let _ = io.fill().await;
        drop(r);
    }
    let mut c = common::connect(&tandem.url(&db)).await;
    let n: i64 = c
        .query_first("SELECT COUNT(*) FROM big")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 20000);
    let (status, body) = tandem.admin("/live");
    assert_eq!(status, 200, "{body}");
}
