//! Aggregate: the one row of an aggregate query without GROUP BY, from each shard's one
//! row. COUNTs add up, SUMs add up exactly (decimal arithmetic on the digits the shards
//! sent), MIN and MAX keep the least or greatest value as the database orders it.

use std::cmp::Ordering;

use mysql_common::constants::ColumnType;

use super::compare::Order;
use super::route::{ColumnInfo, Row};
use crate::planner::sharding::plan::Aggregate;
use crate::wire::response::put_lenenc_bytes;

/// One column's combination, resolved against the result's columns.
#[derive(Debug, Clone)]
pub enum Combine {
    /// A GROUP BY column: the first row's value.
    First,
    Count,
    /// `float`: a FLOAT or DOUBLE sum (added as a double, as the database adds them).
    Sum {
        float: bool,
        scale: u8,
    },
    Min {
        weight: usize,
        order: Order,
    },
    Max {
        weight: usize,
        order: Order,
    },
    /// `sum` and `count` are the hidden SUM and COUNT columns; `sum_scale` the SUM's scale
    /// and `scale` the AVG's.
    Avg {
        sum: usize,
        count: usize,
        sum_scale: u8,
        scale: u8,
    },
}

impl Combine {
    pub fn of(a: Aggregate, info: &ColumnInfo, weight: usize, order: Option<Order>) -> Combine {
        match a {
            Aggregate::Group => Combine::First,
            Aggregate::Count => Combine::Count,
            Aggregate::Sum => Combine::Sum {
                float: matches!(
                    ColumnType::try_from(info.column_type),
                    Ok(ColumnType::MYSQL_TYPE_DOUBLE | ColumnType::MYSQL_TYPE_FLOAT)
                ),
                scale: info.decimals,
            },
            Aggregate::Min { .. } => Combine::Min {
                weight,
                order: order.unwrap_or(Order::Bytes),
            },
            Aggregate::Max { .. } => Combine::Max {
                weight,
                order: order.unwrap_or(Order::Bytes),
            },
            // Resolved by the executor, which knows the hidden columns' scales.
            Aggregate::Avg { .. } => Combine::Avg {
                sum: weight,
                count: 0,
                sum_scale: 0,
                scale: info.decimals,
            },
        }
    }
}

/// A value the combination cannot give exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CombineError(pub String);

/// The combined row (text protocol) of the shards' rows: one cell per column, each the
/// combination of the shard rows' cells of its source column.
pub fn combine(rows: &[Row], columns: &[(usize, Combine)]) -> Result<Vec<u8>, CombineError> {
    let mut out = Vec::new();
    for &(i, ref c) in columns {
        let cells = || rows.iter().filter_map(move |r| r.cell(i));
        let value: Option<Vec<u8>> = match c {
            Combine::Count => {
                let mut n: i128 = 0;
                for v in cells() {
                    n += std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i128>().ok())
                        .ok_or_else(|| CombineError("a COUNT Tandem cannot read".into()))?;
                }
                Some(n.to_string().into_bytes())
            }
            Combine::Sum { float: true, .. } => {
                let mut any = false;
                let mut sum = 0f64;
                for v in cells() {
                    any = true;
                    sum += std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                        .ok_or_else(|| CombineError("a SUM Tandem cannot read".into()))?;
                }
                any.then(|| format!("{sum}").into_bytes())
            }
            Combine::Sum { scale, .. } => {
                let mut sum: Option<i128> = None;
                for v in cells() {
                    let x = scaled(v, *scale)
                        .ok_or_else(|| CombineError("a SUM too large to add up exactly".into()))?;
                    sum =
                        Some(sum.unwrap_or(0).checked_add(x).ok_or_else(|| {
                            CombineError("a SUM too large to add up exactly".into())
                        })?);
                }
                sum.map(|s| unscaled(s, *scale).into_bytes())
            }
            Combine::Avg { .. } => None,
            Combine::First => rows.first().and_then(|r| r.cell(i)).map(<[u8]>::to_vec),
            Combine::Min { weight, order } | Combine::Max { weight, order } => {
                let want = if matches!(c, Combine::Min { .. }) {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
                let mut best: Option<&Row> = None;
                for r in rows.iter().filter(|r| r.cell(i).is_some()) {
                    best = match best {
                        None => Some(r),
                        Some(b) => {
                            let (x, y) =
                                (r.cell(i).unwrap_or_default(), b.cell(i).unwrap_or_default());
                            if order.compare(x, y, r.cell(*weight), b.cell(*weight)) == want {
                                Some(r)
                            } else {
                                Some(b)
                            }
                        }
                    };
                }
                best.and_then(|r| r.cell(i)).map(<[u8]>::to_vec)
            }
        };
        let value = match c {
            Combine::Avg {
                sum,
                count,
                sum_scale,
                scale,
            } => average(rows, *sum, *count, *sum_scale, *scale)?,
            _ => value,
        };
        match value {
            Some(v) => put_lenenc_bytes(&mut out, &v),
            None => out.push(0xfb),
        }
    }
    Ok(out)
}

/// The average of the shards' SUMs and COUNTs, rounded half away from zero to `scale`
/// places, as MariaDB rounds a decimal AVG.
fn average(
    rows: &[Row],
    sum: usize,
    count: usize,
    sum_scale: u8,
    scale: u8,
) -> Result<Option<Vec<u8>>, CombineError> {
    let too_large = || CombineError("an AVG too large to compute exactly".into());
    let (mut total, mut n) = (0i128, 0i128);
    for r in rows {
        if let Some(v) = r.cell(sum) {
            let v = scaled(v, sum_scale).ok_or_else(too_large)?;
            total = total.checked_add(v).ok_or_else(too_large)?;
        }
        if let Some(c) = r.cell(count) {
            n += std::str::from_utf8(c)
                .ok()
                .and_then(|s| s.parse::<i128>().ok())
                .ok_or_else(|| CombineError("a COUNT Tandem cannot read".into()))?;
        }
    }
    if n == 0 {
        return Ok(None);
    }
    let shift = scale.checked_sub(sum_scale).ok_or_else(too_large)?;
    let twice = 10i128
        .checked_pow(u32::from(shift))
        .and_then(|p| total.checked_mul(p))
        .and_then(|x| x.checked_mul(2))
        .ok_or_else(too_large)?;
    // x / n rounded half away from zero is sign(x) · floor((2|x| + n) / 2n).
    let q = (twice.abs() + n) / (2 * n);
    let q = if twice < 0 { -q } else { q };
    Ok(Some(unscaled(q, scale).into_bytes()))
}

/// A decimal's text as an integer count of `10^-scale`.
fn scaled(v: &[u8], scale: u8) -> Option<i128> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > scale as usize || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = String::with_capacity(int.len() + scale as usize);
    digits.push_str(int);
    digits.push_str(frac);
    digits.extend(std::iter::repeat_n('0', scale as usize - frac.len()));
    let n: i128 = digits.parse().ok()?;
    Some(if neg { -n } else { n })
}

fn unscaled(n: i128, scale: u8) -> String {
    let neg = n < 0;
    let digits = n.unsigned_abs().to_string();
    let scale = scale as usize;
    let digits = if digits.len() <= scale {
        format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
    } else {
        digits
    };
    let (int, frac) = digits.split_at(digits.len() - scale);
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    out.push_str(int);
    if scale > 0 {
        out.push('.');
        out.push_str(frac);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn row(cells: &[Option<&str>]) -> Row {
        let mut p = Vec::new();
        for c in cells {
            match c {
                Some(v) => put_lenenc_bytes(&mut p, v.as_bytes()),
                None => p.push(0xfb),
            }
        }
        Row::parse(Bytes::from(p)).unwrap()
    }

    #[test]
    fn counts_sums_and_extremes_combine() {
        let rows = [
            row(&[Some("3"), Some("10.25"), Some("b"), None]),
            row(&[Some("0"), None, Some("a"), None]),
            row(&[Some("4"), Some("-0.30"), Some("c"), None]),
        ];
        let columns = [
            (0, Combine::Count),
            (
                1,
                Combine::Sum {
                    float: false,
                    scale: 2,
                },
            ),
            (
                2,
                Combine::Min {
                    weight: 2,
                    order: Order::Bytes,
                },
            ),
            (
                3,
                Combine::Sum {
                    float: false,
                    scale: 0,
                },
            ),
            (0, Combine::First),
        ];
        let out = Row::parse(Bytes::from(combine(&rows, &columns).unwrap())).unwrap();
        assert_eq!(out.cell(0), Some(&b"7"[..]));
        assert_eq!(out.cell(1), Some(&b"9.95"[..]));
        assert_eq!(out.cell(2), Some(&b"a"[..]));
        assert_eq!(out.cell(3), None);
        assert_eq!(out.cell(4), Some(&b"3"[..]));
    }

    #[test]
    fn averages_round_half_away_from_zero() {
        let rows = [row(&[Some("1"), Some("16")]), row(&[Some("0"), Some("16")])];
        assert_eq!(
            average(&rows, 0, 1, 0, 4).unwrap(),
            Some(b"0.0313".to_vec())
        );
        let rows = [row(&[Some("-1"), Some("32")])];
        assert_eq!(
            average(&rows, 0, 1, 0, 4).unwrap(),
            Some(b"-0.0313".to_vec())
        );
        let rows = [row(&[Some("0.01"), Some("2")])];
        assert_eq!(
            average(&rows, 0, 1, 2, 6).unwrap(),
            Some(b"0.005000".to_vec())
        );
        let rows = [row(&[None, Some("0")])];
        assert_eq!(average(&rows, 0, 1, 0, 4).unwrap(), None);
    }

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(scaled(b"-0.05", 2), Some(-5));
        assert_eq!(unscaled(-5, 2), "-0.05");
        assert_eq!(unscaled(12345, 0), "12345");
        assert_eq!(unscaled(7, 3), "0.007");
        assert_eq!(scaled(b"1.234", 2), None);
    }
}
