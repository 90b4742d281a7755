//! Nothing is rewritten that need not be: column definitions, rows, warnings and status flags
//! reach the client exactly as MariaDB sent them, in the text and the binary protocol, and
//! every column type round-trips.

mod common;

use common::{mariadb, raw, Tandem, PASSWORD, USER};
use tandem::wire::scanner::ResponseKind;

const TYPES_TABLE: &str = r#"
CREATE TABLE types (
  id INT PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, t1 TINYINT(1),
  si SMALLINT, siu SMALLINT UNSIGNED, mi MEDIUMINT, miu MEDIUMINT UNSIGNED,
  i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  d DECIMAL(65,30), d2 DECIMAL(10,2), f FLOAT, db DOUBLE,
  dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(3) NULL, y YEAR,
  c CHAR(10), vc VARCHAR(100), tx TEXT, lt LONGTEXT,
  bn BINARY(4), vb VARBINARY(50), bl BLOB,
  bt BIT(10), js JSON, en ENUM('a','b','c'), st SET('x','y','z')
) CHARACTER SET utf8mb4;
INSERT INTO types VALUES
 (1, -128, 255, 1, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
  -9223372036854775808, 18446744073709551615,
  '-12345678901234567890123456789012345.123456789012345678901234567890', 12.34,
  3.5, -2.2250738585072014e-308, '2024-02-29', '-838:59:59.000000', '9999-12-31 23:59:59.999999',
  '2038-01-19 03:14:07.999', 2155,
  'ab', 'héllo wörld 😀', 'text 𝄞 with 4-byte chars', REPEAT('x', 70000),
  X'00FF7F80', X'000102FEFF', X'DEADBEEF00', b'1010101010', '{"a": [1, 2, {"b": null}]}', 'b', 'x,z'),
 (2, 127, 0, 0, 32767, 0, 8388607, 0, 2147483647, 0, 9223372036854775807, 0,
  '0.000000000000000000000000000001', -0.01, -1.5e38, 1.7976931348623157e308,
  '1000-01-01', '-00:00:00.500000', '1000-01-01 00:00:00.000001', '1970-01-01 00:00:01.000', 1901,
  '', '', '', '', X'00000000', X'', X'', b'0', 'null', 'a', ''),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

fn setup() -> (String, Tandem) {
    let db = mariadb().fresh_db("fidelity");
    common::mariadb_cli(mariadb().port, "root", "", Some(&db), TYPES_TABLE).expect("create table");
    let t = Tandem::start(&db);
    (db, t)
}

/// The same statement, direct and through Tandem, must produce the same packets.
#[tokio::test(flavor = "multi_thread")]
async fn text_protocol_results_are_byte_identical() {
    let (db, tandem) = setup();
    for deprecate_eof in [false, true] {
        let caps = raw::driver_caps(deprecate_eof);
        for collation in [45u8, 33, 8, 63] {
            let mut direct = raw::connect(mariadb().port, "root", "", Some(&db), caps, collation)
                .await
                .unwrap();
            let mut proxied = raw::connect(tandem.port, USER, PASSWORD, Some(&db), caps, collation)
                .await
                .unwrap();
            for sql in [
                "SELECT * FROM types ORDER BY id",
                "SELECT 1/0, CAST('x' AS SIGNED)",
                "SHOW WARNINGS",
                "SELECT * FROM types WHERE id = 1; SELECT 'second', NULL; SELECT id FROM types WHERE id > 100",
                // Writes go to a temporary table: each connection has its own.
                "CREATE TEMPORARY TABLE tt (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(10))",
                "INSERT INTO tt (v) VALUES ('a'), ('b'), ('c')",
                "INSERT INTO tt (id, v) VALUES (1, 'dup')",
                "UPDATE tt SET v = 'changed' WHERE id >= 2",
                "INSERT INTO tt (v) VALUES ('toolongvalue')",
                "DELETE FROM tt WHERE id >= 2",
                "DROP TEMPORARY TABLE tt",
                "BEGIN",
                "SELECT @@in_transaction",
                "COMMIT",
                "SELECT no_such_column FROM types",
                "SELECT CONVERT('é' USING latin1), _utf8mb4'😀' AS emoji",
            ] {
                let a = raw::query(&mut direct, sql).await;
                let b = raw::query(&mut proxied, sql).await;
                assert_eq!(a, b, "deprecate_eof={deprecate_eof} collation={collation}: {sql}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_protocol_results_are_byte_identical() {
    let (db, tandem) = setup();
    for deprecate_eof in [false, true] {
        let caps = raw::driver_caps(deprecate_eof);
        let mut direct = raw::connect(mariadb().port, "root", "", Some(&db), caps, 45)
            .await
            .unwrap();
        let mut proxied = raw::connect(tandem.port, USER, PASSWORD, Some(&db), caps, 45)
            .await
            .unwrap();
        for sql in [
            "SELECT * FROM types WHERE id >= ? ORDER BY id",
            "SELECT ? + 1, ?",
        ] {
            let mut prep = vec![0x16];
            prep.extend_from_slice(sql.as_bytes());
            let a = raw::command(&mut direct, &prep, ResponseKind::Prepare).await;
            let b = raw::command(&mut proxied, &prep, ResponseKind::Prepare).await;
            // Statement ids may differ between connections; everything else must not.
            assert_eq!(a.len(), b.len());
            assert_eq!(a[0].1[5..], b[0].1[5..], "prepare OK for {sql}");
            assert_eq!(a[1..], b[1..], "parameter and column definitions for {sql}");
            let id_a = &a[0].1[1..5];
            let id_b = &b[0].1[1..5];
            let params = u16::from_le_bytes([a[0].1[7], a[0].1[8]]);
            // COM_STMT_EXECUTE: id, flags, iteration count, null bitmap, new-params flag,
            // types (LONGLONG), values.
            let exec = |id: &[u8]| {
                let mut p = vec![0x17];
                p.extend_from_slice(id);
                p.push(0);
                p.extend_from_slice(&1u32.to_le_bytes());
                p.extend(std::iter::repeat_n(0u8, (params as usize).div_ceil(8)));
                p.push(1);
                for _ in 0..params {
                    p.extend_from_slice(&[0x08, 0x00]);
                }
                for _ in 0..params {
                    p.extend_from_slice(&1i64.to_le_bytes());
                }
                p
            };
            let a = raw::command(&mut direct, &exec(id_a), ResponseKind::Execute).await;
            let b = raw::command(&mut proxied, &exec(id_b), ResponseKind::Execute).await;
            assert_eq!(a, b, "execute of {sql}");
            assert!(a.len() > 3, "the execute returned rows");
        }
    }
}

/// Typed round trip through a real driver, text and binary protocol.
#[tokio::test(flavor = "multi_thread")]
async fn every_type_round_trips_through_a_driver() {
    use mysql_async::prelude::*;
    let (db, tandem) = setup();
    let mut direct = common::connect(&mariadb().url(&db)).await;
    let mut proxied = common::connect(&tandem.url(&db)).await;
    let q = "SELECT * FROM types ORDER BY id";
    let a: Vec<mysql_async::Row> = direct.query(q).await.unwrap();
    let b: Vec<mysql_async::Row> = proxied.query(q).await.unwrap();
    assert_eq!(a.len(), 3);
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!(ra.clone().unwrap(), rb.clone().unwrap());
    }
    let a: Vec<mysql_async::Row> = direct.exec(q, ()).await.unwrap();
    let b: Vec<mysql_async::Row> = proxied.exec(q, ()).await.unwrap();
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!(ra.clone().unwrap(), rb.clone().unwrap());
    }
    // Extremes read back exactly through the binary protocol.
    let (biu, bi, d): (u64, i64, String) = proxied
        .exec_first(
            "SELECT biu, bi, CAST(d AS CHAR) FROM types WHERE id = ?",
            (1,),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(biu, u64::MAX);
    assert_eq!(bi, i64::MIN);
    assert_eq!(
        d,
        "-12345678901234567890123456789012345.123456789012345678901234567890"
    );
    // Arbitrary bytes and 4-byte characters written through Tandem come back unchanged.
    let bytes: Vec<u8> = (0u8..=255).collect();
    proxied
        .exec_drop(
            "INSERT INTO types (id, vb, bl, vc) VALUES (?, ?, ?, ?)",
            (50, &bytes[..50], &bytes, "𝄞😀"),
        )
        .await
        .unwrap();
    let (vb, bl, vc): (Vec<u8>, Vec<u8>, String) = direct
        .query_first("SELECT vb, bl, vc FROM types WHERE id = 50")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(vb, &bytes[..50]);
    assert_eq!(bl, bytes);
    assert_eq!(vc, "𝄞😀");
}
