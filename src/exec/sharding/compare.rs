//! Orders the values of a merge as the database orders them.
//!
//! Each shard sends a key's value and, beside it, `WEIGHT_STRING` of it: what the column's
//! collation sorts strings by. Numbers compare as numbers, dates and times by their fixed
//! text forms, strings by their weights, padded with the weight of a space for the PAD
//! SPACE collations (where `'a'` equals `'a '`). A value Tandem cannot order exactly (ENUM,
//! SET, JSON, geometry) makes the merge refuse before any row is sent.

use std::cmp::Ordering;

use mysql_common::constants::{ColumnFlags, ColumnType};

use super::route::ColumnInfo;

/// The binary collation: strings of it compare byte by byte.
pub const BINARY: u16 = 63;

/// How values of one key compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    Integer,
    Decimal,
    Float,
    /// DATE, DATETIME, TIMESTAMP, YEAR: their text sorts as they do.
    Text,
    Time,
    /// Bytes as they are (binary strings, BIT).
    Bytes,
    /// By collation weight; `pad` is a space's weight for a PAD SPACE collation.
    Weight {
        pad: Option<Vec<u8>>,
    },
}

/// Why values of a column cannot be merged exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ordering by a value of type {0} across shards")]
pub struct Unorderable(pub &'static str);

/// The collation facts a string key needs; `None` until Tandem has asked a shard.
pub enum Pad {
    /// The collation pads with this weight (PAD SPACE).
    Space(Vec<u8>),
    NoPad,
}

impl Order {
    /// How values of column `c` compare; `pad` looks up a collation's padding.
    pub fn of(c: &ColumnInfo, pad: impl FnOnce(u16) -> Pad) -> Result<Order, Unorderable> {
        use ColumnType::*;
        let flags = ColumnFlags::from_bits_truncate(c.flags);
        if flags.intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG) {
            return Err(Unorderable("ENUM or SET"));
        }
        let t = ColumnType::try_from(c.column_type).map_err(|_| Unorderable("unknown"))?;
        Ok(match t {
            MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG
            | MYSQL_TYPE_INT24 | MYSQL_TYPE_YEAR => Order::Integer,
            MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => Order::Decimal,
            MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => Order::Float,
            MYSQL_TYPE_DATE
            | MYSQL_TYPE_NEWDATE
            | MYSQL_TYPE_DATETIME
            | MYSQL_TYPE_TIMESTAMP
            | MYSQL_TYPE_DATETIME2
            | MYSQL_TYPE_TIMESTAMP2 => Order::Text,
            MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => Order::Time,
            MYSQL_TYPE_BIT => Order::Bytes,
            MYSQL_TYPE_VARCHAR
            | MYSQL_TYPE_VAR_STRING
            | MYSQL_TYPE_STRING
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
            | MYSQL_TYPE_BLOB => {
                if c.charset == BINARY {
                    Order::Bytes
                } else {
                    match pad(c.charset) {
                        Pad::Space(w) => Order::Weight { pad: Some(w) },
                        Pad::NoPad => Order::Weight { pad: None },
                    }
                }
            }
            MYSQL_TYPE_JSON => return Err(Unorderable("JSON")),
            MYSQL_TYPE_GEOMETRY => return Err(Unorderable("geometry")),
            _ => return Err(Unorderable("this")),
        })
    }

    /// Compares two non-NULL values, given as their text and, for weighted strings, their
    /// weights.
    pub fn compare(&self, a: &[u8], b: &[u8], wa: Option<&[u8]>, wb: Option<&[u8]>) -> Ordering {
        match self {
            Order::Integer => match (int(a), int(b)) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => a.cmp(b),
            },
            Order::Decimal => decimal_cmp(a, b),
            Order::Float => {
                let f = |v: &[u8]| {
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                };
                match (f(a), f(b)) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    _ => a.cmp(b),
                }
            }
            Order::Text | Order::Bytes => a.cmp(b),
            Order::Time => time_cmp(a, b),
            Order::Weight { pad } => {
                let (wa, wb) = (wa.unwrap_or(a), wb.unwrap_or(b));
                weight_cmp(wa, wb, pad.as_deref())
            }
        }
    }
}

fn int(v: &[u8]) -> Option<i128> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Weights compared as the collation compares strings: a shorter one goes on with the
/// weight of spaces under PAD SPACE.
pub fn weight_cmp(a: &[u8], b: &[u8], pad: Option<&[u8]>) -> Ordering {
    let n = a.len().min(b.len());
    match a[..n].cmp(&b[..n]) {
        Ordering::Equal => {}
        other => return other,
    }
    let Some(pad) = pad.filter(|p| !p.is_empty()) else {
        return a.len().cmp(&b.len());
    };
    let (rest, flip) = if a.len() > b.len() {
        (&a[n..], false)
    } else {
        (&b[n..], true)
    };
    let padded = pad.iter().cycle().take(rest.len());
    let o = rest.iter().cmp(padded);
    if flip {
        o.reverse()
    } else {
        o
    }
}

/// A decimal number's text compared by value: sign, then digits before the point, then
/// after it.
pub fn decimal_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (na, ia, fa) = split_decimal(a);
    let (nb, ib, fb) = split_decimal(b);
    let zero = |i: &[u8], f: &[u8]| i.iter().chain(f).all(|&d| d == b'0');
    let (na, nb) = (na && !zero(ia, fa), nb && !zero(ib, fb));
    let magnitude = || {
        ia.len()
            .cmp(&ib.len())
            .then_with(|| ia.cmp(ib))
            .then_with(|| {
                let n = fa.len().max(fb.len());
                let digit = |f: &[u8], i: usize| f.get(i).copied().unwrap_or(b'0');
                (0..n)
                    .map(|i| digit(fa, i).cmp(&digit(fb, i)))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            })
    };
    match (na, nb) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => magnitude(),
        (true, true) => magnitude().reverse(),
    }
}

/// (negative, integer digits without leading zeros, fraction digits).
fn split_decimal(v: &[u8]) -> (bool, &[u8], &[u8]) {
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v.strip_prefix(b"+").unwrap_or(v)),
    };
    let (int, frac) = match v.iter().position(|&c| c == b'.') {
        Some(p) => (&v[..p], &v[p + 1..]),
        None => (v, &v[v.len()..]),
    };
    let lead = int.iter().take_while(|&&c| c == b'0').count();
    (neg, &int[lead..], frac)
}

/// TIME values (`-838:59:59` to `838:59:59`, with an optional fraction).
fn time_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let key = |v: &[u8]| {
        let (neg, v) = match v.strip_prefix(b"-") {
            Some(r) => (true, r),
            None => (false, v),
        };
        let hours_len = v.iter().position(|&c| c == b':').unwrap_or(v.len());
        (neg, hours_len, v.to_vec())
    };
    let (na, la, va) = key(a);
    let (nb, lb, vb) = key(b);
    let magnitude = la.cmp(&lb).then_with(|| va.cmp(&vb));
    match (na, nb) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_compare_by_value() {
        let c = |a: &str, b: &str| decimal_cmp(a.as_bytes(), b.as_bytes());
        assert_eq!(c("10.5", "9.75"), Ordering::Greater);
        assert_eq!(c("-10.5", "-9.75"), Ordering::Less);
        assert_eq!(c("0.10", "0.1"), Ordering::Equal);
        assert_eq!(c("-0.00", "0"), Ordering::Equal);
        assert_eq!(c("-1", "0.5"), Ordering::Less);
        assert_eq!(c("007", "7.000"), Ordering::Equal);
    }

    #[test]
    fn pad_space_weights_compare_as_if_padded() {
        let pad = Some(&[0x00, 0x20][..]);
        // 'ab' against 'ab\t': padded, 'ab ' is greater than 'ab\t'.
        assert_eq!(
            weight_cmp(&[0, 0x41, 0, 0x42], &[0, 0x41, 0, 0x42, 0, 0x09], pad),
            Ordering::Greater
        );
        assert_eq!(
            weight_cmp(&[0, 0x41], &[0, 0x41, 0, 0x20, 0, 0x20], pad),
            Ordering::Equal
        );
        assert_eq!(
            weight_cmp(&[0, 0x41], &[0, 0x41, 0, 0x20], None),
            Ordering::Less
        );
    }

    #[test]
    fn times_and_integers() {
        assert_eq!(time_cmp(b"-01:00:00", b"00:30:00"), Ordering::Less);
        assert_eq!(time_cmp(b"100:00:00", b"99:00:00"), Ordering::Greater);
        assert_eq!(time_cmp(b"-100:00:00", b"-99:00:00"), Ordering::Less);
        assert_eq!(
            Order::Integer.compare(b"10", b"9", None, None),
            Ordering::Greater
        );
    }
}
