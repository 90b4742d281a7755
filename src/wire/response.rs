//! Packets Tandem writes itself: OK, EOF, and small text result sets for its own SQL
//! functions. Everything the database sends is forwarded as it came and never passes here.

use mysql_common::constants::{CapabilityFlags, ColumnType, StatusFlags};

use super::packet::PacketIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Appends a length-encoded integer.
pub fn put_lenenc_int(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=250 => out.push(v as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_lenenc_int(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Reads a length-encoded integer; returns the value and the bytes it took.
/// `None` for the NULL marker (0xFB), the undefined 0xFF, or too few bytes.
pub fn read_lenenc_int(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let take = |n: usize| -> Option<u64> {
        let s = b.get(1..1 + n)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(s);
        Some(u64::from_le_bytes(v))
    };
    match first {
        0..=250 => Some((first as u64, 1)),
        0xfc => Some((take(2)?, 3)),
        0xfd => Some((take(3)?, 4)),
        0xfe => Some((take(8)?, 9)),
        _ => None,
    }
}

/// An OK packet payload.
pub fn ok_packet(
    affected_rows: u64,
    last_insert_id: u64,
    status: StatusFlags,
    warnings: u16,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.push(0x00);
    put_lenenc_int(&mut out, affected_rows);
    put_lenenc_int(&mut out, last_insert_id);
    out.extend_from_slice(&status.bits().to_le_bytes());
    out.extend_from_slice(&warnings.to_le_bytes());
    out
}

/// What an OK packet says: affected rows, last insert id and the human-readable info text
/// (for an UPDATE, MariaDB's "Rows matched: … Changed: … Warnings: …").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OkInfo<'a> {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub info: &'a [u8],
}

/// Reads an OK packet payload; `session_track` when the connection has CLIENT_SESSION_TRACK
/// (the info is then a length-encoded string).
pub fn parse_ok(payload: &[u8], session_track: bool) -> Option<OkInfo<'_>> {
    if payload.first() != Some(&0x00) {
        return None;
    }
    let (affected_rows, a) = read_lenenc_int(payload.get(1..)?)?;
    let (last_insert_id, b) = read_lenenc_int(payload.get(1 + a..)?)?;
    let rest = payload.get(5 + a + b..)?;
    let info = if !session_track || rest.is_empty() {
        rest
    } else {
        let (len, n) = read_lenenc_int(rest)?;
        rest.get(n..n + usize::try_from(len).ok()?)?
    };
    Some(OkInfo {
        affected_rows,
        last_insert_id,
        info,
    })
}

/// Replaces the status flags of an OK packet payload in place. Returns false when the payload
/// is not an OK packet.
pub fn set_ok_status(payload: &mut [u8], status: StatusFlags) -> bool {
    if payload.first() != Some(&0x00) {
        return false;
    }
    let Some((_, a)) = payload.get(1..).and_then(read_lenenc_int) else {
        return false;
    };
    let Some((_, b)) = payload.get(1 + a..).and_then(read_lenenc_int) else {
        return false;
    };
    match payload.get_mut(1 + a + b..3 + a + b) {
        Some(s) => {
            s.copy_from_slice(&status.bits().to_le_bytes());
            true
        }
        None => false,
    }
}

/// The packet that ends a result set: an EOF packet, or an OK packet with the 0xFE header
/// when the client set CLIENT_DEPRECATE_EOF.
pub fn end_of_rows(caps: CapabilityFlags, status: StatusFlags) -> Vec<u8> {
    if caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF) {
        let mut p = ok_packet(0, 0, status, 0);
        p[0] = 0xfe;
        p
    } else {
        eof_packet(status)
    }
}

/// A classic EOF packet payload.
pub fn eof_packet(status: StatusFlags) -> Vec<u8> {
    let mut out = vec![0xfe, 0, 0];
    out.extend_from_slice(&status.bits().to_le_bytes());
    out
}

/// A column definition (protocol 4.1) for a result Tandem builds itself.
pub fn column_definition(name: &str, ty: ColumnType, length: u32, charset: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + name.len());
    put_lenenc_bytes(&mut out, b"def");
    put_lenenc_bytes(&mut out, b"");
    put_lenenc_bytes(&mut out, b"");
    put_lenenc_bytes(&mut out, b"");
    put_lenenc_bytes(&mut out, name.as_bytes());
    put_lenenc_bytes(&mut out, b"");
    out.push(0x0c);
    out.extend_from_slice(&charset.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out.push(ty as u8);
    out.extend_from_slice(&0u16.to_le_bytes()); // flags
    out.push(0); // decimals
    out.extend_from_slice(&[0, 0]);
    out
}

/// utf8mb4_general_ci: Tandem's own results are always UTF-8 text.
const UTF8MB4: u16 = 45;

/// How the rows of a result Tandem builds itself are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// COM_QUERY: length-encoded text cells, 0xFB for NULL.
    Text,
    /// COM_STMT_EXECUTE: a 0x00 header, a NULL bitmap offset by two bits, then the non-NULL
    /// values.
    Binary,
}

fn encode_row(format: RowFormat, row: &[Option<String>]) -> Vec<u8> {
    let mut out = Vec::new();
    match format {
        RowFormat::Text => {
            for cell in row {
                match cell {
                    Some(v) => put_lenenc_bytes(&mut out, v.as_bytes()),
                    None => out.push(0xfb),
                }
            }
        }
        RowFormat::Binary => {
            out.push(0x00);
            let mut bitmap = vec![0u8; (row.len() + 7 + 2) / 8];
            for (i, cell) in row.iter().enumerate() {
                if cell.is_none() {
                    bitmap[(i + 2) / 8] |= 1 << ((i + 2) % 8);
                }
            }
            out.extend_from_slice(&bitmap);
            for v in row.iter().flatten() {
                put_lenenc_bytes(&mut out, v.as_bytes());
            }
        }
    }
    out
}

/// Writes a complete result set of string (or NULL) cells, starting at sequence id 1.
pub async fn write_result<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut PacketIo<S>,
    caps: CapabilityFlags,
    status: StatusFlags,
    format: RowFormat,
    columns: &[&str],
    rows: &[Vec<Option<String>>],
) -> Result<(), std::io::Error> {
    let mut count = Vec::new();
    put_lenenc_int(&mut count, columns.len() as u64);
    let mut seq = io.write_packet(1, &count);
    for name in columns {
        seq = io.write_packet(
            seq,
            &column_definition(name, ColumnType::MYSQL_TYPE_VAR_STRING, 1024, UTF8MB4),
        );
    }
    if !caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF) {
        seq = io.write_packet(seq, &eof_packet(status));
    }
    for row in rows {
        seq = io.write_packet(seq, &encode_row(format, row));
    }
    io.write_packet(seq, &end_of_rows(caps, status));
    io.flush().await
}

/// The answer to a COM_STMT_PREPARE that Tandem handles itself: `params` parameters and
/// string columns named `columns`.
pub async fn write_prepare_ok<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut PacketIo<S>,
    caps: CapabilityFlags,
    stmt_id: u32,
    params: u16,
    columns: &[&str],
) -> Result<(), std::io::Error> {
    let mut ok = vec![0x00];
    ok.extend_from_slice(&stmt_id.to_le_bytes());
    ok.extend_from_slice(&(columns.len() as u16).to_le_bytes());
    ok.extend_from_slice(&params.to_le_bytes());
    ok.extend_from_slice(&[0, 0, 0]);
    let mut seq = io.write_packet(1, &ok);
    let eof = !caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
    if params > 0 {
        for _ in 0..params {
            seq = io.write_packet(
                seq,
                &column_definition("?", ColumnType::MYSQL_TYPE_VAR_STRING, 0, UTF8MB4),
            );
        }
        if eof {
            seq = io.write_packet(seq, &eof_packet(StatusFlags::empty()));
        }
    }
    if !columns.is_empty() {
        for name in columns {
            seq = io.write_packet(
                seq,
                &column_definition(name, ColumnType::MYSQL_TYPE_VAR_STRING, 1024, UTF8MB4),
            );
        }
        if eof {
            io.write_packet(seq, &eof_packet(StatusFlags::empty()));
        }
    }
    io.flush().await
}

#[cfg(test)]
mod ok_tests {
    use super::*;

    #[test]
    fn ok_packets_with_and_without_session_tracking() {
        let mut p = ok_packet(3, 7, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 0);
        p.extend_from_slice(b"Rows matched: 4  Changed: 3  Warnings: 0");
        let ok = parse_ok(&p, false).unwrap();
        assert_eq!((ok.affected_rows, ok.last_insert_id), (3, 7));
        assert_eq!(ok.info, b"Rows matched: 4  Changed: 3  Warnings: 0");
        let mut p = ok_packet(1, 0, StatusFlags::empty(), 0);
        put_lenenc_bytes(&mut p, b"info");
        assert_eq!(parse_ok(&p, true).unwrap().info, b"info");
        let p = ok_packet(1, 0, StatusFlags::empty(), 0);
        assert_eq!(parse_ok(&p, true).unwrap().info, b"");
        assert!(parse_ok(&[0xff, 1, 2], false).is_none());
        assert!(parse_ok(&[0x00, 0xfc], false).is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_round_trips_at_every_width() {
        for v in [
            0u64,
            250,
            251,
            0xffff,
            0x1_0000,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_lenenc_int(&mut b, v);
            assert_eq!(read_lenenc_int(&b), Some((v, b.len())), "value {v}");
        }
        assert_eq!(read_lenenc_int(&[0xfb]), None);
        assert_eq!(read_lenenc_int(&[0xfc, 1]), None);
    }

    #[test]
    fn ok_status_is_replaced_in_place() {
        let mut p = ok_packet(300, 7, StatusFlags::SERVER_STATUS_IN_TRANS, 2);
        p.extend_from_slice(b"Rows matched: 1");
        assert!(set_ok_status(&mut p, StatusFlags::SERVER_STATUS_AUTOCOMMIT));
        let mut want = ok_packet(300, 7, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 2);
        want.extend_from_slice(b"Rows matched: 1");
        assert_eq!(p, want);
        assert!(!set_ok_status(&mut [0xff, 1, 2], StatusFlags::empty()));
        assert!(!set_ok_status(&mut [0x00, 1], StatusFlags::empty()));
    }

    #[test]
    fn ok_packet_layout() {
        let p = ok_packet(3, 300, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 1);
        assert_eq!(p, vec![0, 3, 0xfc, 0x2c, 0x01, 2, 0, 1, 0]);
    }
}
