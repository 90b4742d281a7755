//! Text-protocol row values re-encoded as a binary-protocol row, for answers Tandem merges
//! from text results but owes a prepared statement's client.
//!
//! ```text
//! 0x00 | NULL bitmap ((n + 9) / 8, offset by 2 bits) | each non-NULL value, by its type
//! ```
//!
//! Integers, DOUBLE and temporal values have fixed binary forms; every other type (DECIMAL,
//! strings, BIT, JSON, …) is sent as the same length-encoded bytes the text row holds. A FLOAT
//! is refused: its text is rounded to six digits, so the exact value is no longer there.

use mysql_common::constants::ColumnType;

use super::response::put_lenenc_bytes;

/// `UNSIGNED_FLAG` of a column definition.
const UNSIGNED: u16 = 0x20;

/// A value whose text Tandem cannot turn back into the binary form exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {0} value in a prepared statement's merged answer")]
pub struct Unencodable(pub String);

/// What the encoding needs of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryColumn {
    pub column_type: u8,
    pub flags: u16,
}

impl BinaryColumn {
    /// Whether its values can be encoded at all (see [`Unencodable`]).
    pub fn check(&self) -> Result<(), Unencodable> {
        if self.column_type == ColumnType::MYSQL_TYPE_FLOAT as u8 {
            return Err(Unencodable("FLOAT".into()));
        }
        Ok(())
    }
}

/// Encodes one row: `cells` are the text values (`None` for NULL), one per column.
pub fn encode<'a>(
    cells: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
    columns: &[BinaryColumn],
) -> Result<Vec<u8>, Unencodable> {
    let n = cells.len();
    let bitmap = (n + 9) / 8;
    let mut out = vec![0u8; 1 + bitmap];
    for (i, (cell, col)) in cells.zip(columns).enumerate() {
        let Some(v) = cell else {
            let bit = i + 2;
            out[1 + bit / 8] |= 1 << (bit % 8);
            continue;
        };
        value(&mut out, v, *col)?;
    }
    Ok(out)
}

fn value(out: &mut Vec<u8>, v: &[u8], col: BinaryColumn) -> Result<(), Unencodable> {
    use ColumnType::*;
    let unsigned = col.flags & UNSIGNED != 0;
    let bad = |what: &str| Unencodable(format!("{what} ({})", String::from_utf8_lossy(v)));
    let Ok(ty) = ColumnType::try_from(col.column_type) else {
        put_lenenc_bytes(out, v);
        return Ok(());
    };
    match ty {
        MYSQL_TYPE_TINY => int(out, v, 1, unsigned).ok_or_else(|| bad("TINYINT"))?,
        MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR => {
            int(out, v, 2, unsigned).ok_or_else(|| bad("SMALLINT"))?
        }
        MYSQL_TYPE_LONG | MYSQL_TYPE_INT24 => int(out, v, 4, unsigned).ok_or_else(|| bad("INT"))?,
        MYSQL_TYPE_LONGLONG => int(out, v, 8, unsigned).ok_or_else(|| bad("BIGINT"))?,
        MYSQL_TYPE_DOUBLE => {
            let f: f64 = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("DOUBLE"))?;
            out.extend_from_slice(&f.to_le_bytes());
        }
        MYSQL_TYPE_FLOAT => return Err(Unencodable("FLOAT".into())),
        MYSQL_TYPE_DATE
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIMESTAMP2 => datetime(out, v).ok_or_else(|| bad("date"))?,
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => time(out, v).ok_or_else(|| bad("TIME"))?,
        _ => put_lenenc_bytes(out, v),
    }
    Ok(())
}

fn int(out: &mut Vec<u8>, v: &[u8], width: usize, unsigned: bool) -> Option<()> {
    let s = std::str::from_utf8(v).ok()?;
    let bytes = if unsigned {
        let n: u64 = s.parse().ok()?;
        if width < 8 && n >> (8 * width) != 0 {
            return None;
        }
        n.to_le_bytes()
    } else {
        let n: i64 = s.parse().ok()?;
        let bits = 8 * width as u32;
        if width < 8 && (n < -(1i64 << (bits - 1)) || n >= 1i64 << (bits - 1)) {
            return None;
        }
        n.to_le_bytes()
    };
    out.extend_from_slice(&bytes[..width]);
    Some(())
}

/// The digits of `s` as a number, all of them digits.
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `.ffffff` → microseconds (fewer digits are tenths, hundredths, …).
fn micros(frac: &str) -> Option<u32> {
    if frac.len() > 6 {
        return None;
    }
    Some(digits(frac)? * 10u32.pow(6 - frac.len() as u32))
}

/// `YYYY-MM-DD[ HH:MM:SS[.ffffff]]`, with the shortest length MariaDB itself sends.
fn datetime(out: &mut Vec<u8>, v: &[u8]) -> Option<()> {
    let s = std::str::from_utf8(v).ok()?;
    let (date, clock) = match s.split_once(' ') {
        Some((d, c)) => (d, Some(c)),
        None => (s, None),
    };
    let mut d = date.splitn(3, '-');
    let year = u16::try_from(digits(d.next()?)?).ok()?;
    let month = u8::try_from(digits(d.next()?)?).ok()?;
    let day = u8::try_from(digits(d.next()?)?).ok()?;
    let (mut h, mut mi, mut sec, mut us) = (0u8, 0u8, 0u8, 0u32);
    if let Some(c) = clock {
        let (hms, frac) = match c.split_once('.') {
            Some((a, f)) => (a, Some(f)),
            None => (c, None),
        };
        let mut t = hms.splitn(3, ':');
        h = u8::try_from(digits(t.next()?)?).ok()?;
        mi = u8::try_from(digits(t.next()?)?).ok()?;
        sec = u8::try_from(digits(t.next()?)?).ok()?;
        if let Some(f) = frac {
            us = micros(f)?;
        }
    }
    let len: u8 = if us != 0 {
        11
    } else if h != 0 || mi != 0 || sec != 0 {
        7
    } else if year != 0 || month != 0 || day != 0 {
        4
    } else {
        0
    };
    out.push(len);
    if len >= 4 {
        out.extend_from_slice(&year.to_le_bytes());
        out.extend_from_slice(&[month, day]);
    }
    if len >= 7 {
        out.extend_from_slice(&[h, mi, sec]);
    }
    if len == 11 {
        out.extend_from_slice(&us.to_le_bytes());
    }
    Some(())
}

/// `[-]H…H:MM:SS[.ffffff]`.
fn time(out: &mut Vec<u8>, v: &[u8]) -> Option<()> {
    let s = std::str::from_utf8(v).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (hms, frac) = match s.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    let mut t = hms.splitn(3, ':');
    let hours = digits(t.next()?)?;
    let mi = u8::try_from(digits(t.next()?)?).ok()?;
    let sec = u8::try_from(digits(t.next()?)?).ok()?;
    let us = match frac {
        Some(f) => micros(f)?,
        None => 0,
    };
    let (days, h) = (hours / 24, (hours % 24) as u8);
    let len: u8 = if us != 0 {
        12
    } else if days != 0 || h != 0 || mi != 0 || sec != 0 {
        8
    } else {
        0
    };
    out.push(len);
    if len >= 8 {
        out.push(u8::from(negative));
        out.extend_from_slice(&days.to_le_bytes());
        out.extend_from_slice(&[h, mi, sec]);
    }
    if len == 12 {
        out.extend_from_slice(&us.to_le_bytes());
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_common::constants::ColumnType::*;

    fn col(t: ColumnType, flags: u16) -> BinaryColumn {
        BinaryColumn {
            column_type: t as u8,
            flags,
        }
    }

    fn one(v: &[u8], c: BinaryColumn) -> Result<Vec<u8>, Unencodable> {
        let row = encode([Some(v)].into_iter(), &[c])?;
        Ok(row[2..].to_vec())
    }

    #[test]
    fn integers_keep_their_width_and_sign() {
        assert_eq!(one(b"-2", col(MYSQL_TYPE_TINY, 0)).unwrap(), [0xfe]);
        assert_eq!(one(b"200", col(MYSQL_TYPE_TINY, UNSIGNED)).unwrap(), [200]);
        assert!(one(b"200", col(MYSQL_TYPE_TINY, 0)).is_err());
        assert_eq!(one(b"-1", col(MYSQL_TYPE_LONG, 0)).unwrap(), [0xff; 4]);
        assert_eq!(
            one(b"18446744073709551615", col(MYSQL_TYPE_LONGLONG, UNSIGNED)).unwrap(),
            [0xff; 8]
        );
        assert_eq!(one(b"2024", col(MYSQL_TYPE_YEAR, 0)).unwrap(), [0xe8, 0x07]);
        assert_eq!(
            one(b"0.1", col(MYSQL_TYPE_DOUBLE, 0)).unwrap(),
            0.1f64.to_le_bytes()
        );
        assert!(one(b"0.1", col(MYSQL_TYPE_FLOAT, 0)).is_err());
    }

    #[test]
    fn temporal_values_take_the_shortest_form() {
        assert_eq!(one(b"0000-00-00", col(MYSQL_TYPE_DATE, 0)).unwrap(), [0]);
        assert_eq!(
            one(b"2024-02-29", col(MYSQL_TYPE_DATE, 0)).unwrap(),
            [4, 0xe8, 0x07, 2, 29]
        );
        assert_eq!(
            one(b"2024-02-29 00:00:00", col(MYSQL_TYPE_DATETIME, 0)).unwrap(),
            [4, 0xe8, 0x07, 2, 29]
        );
        assert_eq!(
            one(b"2024-02-29 23:59:58.5", col(MYSQL_TYPE_DATETIME, 0)).unwrap(),
            [11, 0xe8, 0x07, 2, 29, 23, 59, 58, 0x20, 0xa1, 0x07, 0]
        );
        assert_eq!(
            one(b"-26:03:04", col(MYSQL_TYPE_TIME, 0)).unwrap(),
            [8, 1, 1, 0, 0, 0, 2, 3, 4]
        );
        assert_eq!(one(b"00:00:00", col(MYSQL_TYPE_TIME, 0)).unwrap(), [0]);
        assert!(one(b"12:xx:00", col(MYSQL_TYPE_TIME, 0)).is_err());
    }

    #[test]
    fn nulls_go_to_the_bitmap_and_other_types_stay_bytes() {
        let cols = [col(MYSQL_TYPE_VAR_STRING, 0), col(MYSQL_TYPE_NEWDECIMAL, 0)];
        let row = encode([None, Some(&b"1.50"[..])].into_iter(), &cols).unwrap();
        assert_eq!(row, [0, 0b100, 4, b'1', b'.', b'5', b'0']);
        let eight: Vec<Option<&[u8]>> = vec![None; 7];
        let cols = vec![col(MYSQL_TYPE_LONG, 0); 7];
        let row = encode(eight.into_iter(), &cols).unwrap();
        assert_eq!(row, [0, 0xfc, 0x01]);
    }
}
