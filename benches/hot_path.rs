//! Micro-benchmarks of the per-statement hot path: classifying a statement, and scanning a
//! result set as it is relayed; and what a statement of a global transaction costs to read
//! (lexing, parsing, cutting its clauses from the client's text). `cargo bench --bench hot_path` prints nanoseconds per
//! operation; end-to-end ratios against MariaDB come from `scripts/bench.sh`.

use std::hint::black_box;
use std::time::Instant;

use mysql_common::constants::StatusFlags;
use tandem::sql::classify;
use tandem::wire::response::{eof_packet, put_lenenc_bytes};
use tandem::wire::scanner::{Progress, ResponseKind, ResponseScanner};

fn frame(out: &mut Vec<u8>, seq: &mut u8, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&[len[0], len[1], len[2], *seq]);
    out.extend_from_slice(payload);
    *seq = seq.wrapping_add(1);
}

/// A text result set of `rows` rows of (int, 100-byte string), as MariaDB frames it.
fn result_set(rows: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seq = 1;
    frame(&mut out, &mut seq, &[2]);
    frame(
        &mut out,
        &mut seq,
        b"\x03def\x00\x00\x00\x02id\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00",
    );
    frame(
        &mut out,
        &mut seq,
        b"\x03def\x00\x00\x00\x03pad\x00\x0c\x2d\x00\x90\x01\x00\x00\xfd\x00\x00\x00\x00\x00",
    );
    frame(
        &mut out,
        &mut seq,
        &eof_packet(StatusFlags::SERVER_STATUS_AUTOCOMMIT),
    );
    let pad = [b'x'; 100];
    for i in 0..rows {
        let mut row = Vec::with_capacity(110);
        put_lenenc_bytes(&mut row, i.to_string().as_bytes());
        put_lenenc_bytes(&mut row, &pad);
        frame(&mut out, &mut seq, &row);
    }
    frame(
        &mut out,
        &mut seq,
        &eof_packet(StatusFlags::SERVER_STATUS_AUTOCOMMIT),
    );
    out
}

fn bench<F: FnMut()>(name: &str, per: u64, iterations: u64, mut f: F) {
    f();
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    let ns = start.elapsed().as_nanos() as f64 / (iterations * per) as f64;
    println!("{name:<48} {ns:>10.1} ns");
}

fn main() {
    let statements: [&[u8]; 4] = [
        b"SELECT c FROM sbtest1 WHERE id=?",
        b"/*+ XID('abc') */ UPDATE t SET a = 1 WHERE id = 2",
        b"  -- comment\n  INSERT INTO t VALUES (1)",
        b"COMMIT",
    ];
    bench(
        "classify (per statement)",
        statements.len() as u64,
        2_000_000,
        || {
            for s in statements {
                black_box(classify(black_box(s)));
            }
        },
    );

    let update = "/*+ XID('001a2-3b4c') */ UPDATE account SET balance = balance - 5 WHERE id = 17";
    bench("shape of a global UPDATE (lex)", 1, 200_000, || {
        black_box(tandem::sql::dml::shape(black_box(update.as_bytes())).expect("one statement"));
    });
    bench(
        "analysis of a global UPDATE (lex, parse, clauses)",
        1,
        100_000,
        || {
            black_box(tandem::sql::dml::analyze(black_box(update)).expect("an UPDATE"));
        },
    );

    let one_row = result_set(1);
    bench("scan a one-row result (per response)", 1, 2_000_000, || {
        let mut s = ResponseScanner::new(ResponseKind::Query, false);
        let p = s.feed(black_box(&one_row)).expect("valid");
        assert!(matches!(p, Progress::Done(_)));
    });

    let rows = 100_000;
    let big = result_set(rows);
    bench(
        "scan a 100,000-row result in 64 KiB reads (per row)",
        rows as u64,
        20,
        || {
            let mut s = ResponseScanner::new(ResponseKind::Query, false);
            for chunk in big.chunks(64 * 1024) {
                black_box(s.feed(chunk).expect("valid"));
            }
        },
    );
}
