//! Parameters of a COM_STMT_EXECUTE, as SQL literals, so a prepared statement that joins a
//! global transaction can be analysed (and its rows read) like the same statement in text.
//!
//! Only the analysis uses the substituted text; the client's own COM_STMT_EXECUTE is what the
//! database runs.

use crate::sql::quote;
use crate::wire::response::read_lenenc_int;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError(pub String);

fn bad(m: &str) -> ParamError {
    ParamError(m.to_string())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParamError> {
        if self.0.len() < n {
            return Err(bad("parameter data ends early"));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }

    fn lenenc_bytes(&mut self) -> Result<&'a [u8], ParamError> {
        let (len, n) = read_lenenc_int(self.0).ok_or_else(|| bad("bad length"))?;
        self.take(n)?;
        self.take(usize::try_from(len).map_err(|_| bad("bad length"))?)
    }
}

/// Decodes the parameters of a COM_STMT_EXECUTE payload (command byte included) into SQL
/// literals; `None` is NULL. `types` holds the types bound by an earlier execute and is
/// updated when this one binds new ones. `charset` is the connection's character set, for
/// string parameters.
pub fn decode(
    payload: &[u8],
    count: usize,
    types: &mut Vec<[u8; 2]>,
    charset: &str,
) -> Result<Vec<Option<String>>, ParamError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut r = Reader(
        payload
            .get(10..)
            .ok_or_else(|| bad("short COM_STMT_EXECUTE"))?,
    );
    let nulls = r.take(count.div_ceil(8))?.to_vec();
    let bound = r.take(1)?[0];
    if bound == 1 {
        types.clear();
        for _ in 0..count {
            let t = r.take(2)?;
            types.push([t[0], t[1]]);
        }
    }
    if types.len() != count {
        return Err(bad("parameter types were never sent"));
    }
    let mut out = Vec::with_capacity(count);
    for (i, [ty, flags]) in types.iter().copied().enumerate() {
        if nulls[i / 8] & (1 << (i % 8)) != 0 || ty == 6 {
            out.push(None);
            continue;
        }
        let unsigned = flags & 0x80 != 0;
        let lit = match ty {
            1 => int(r.take(1)?, unsigned),
            2 | 13 => int(r.take(2)?, unsigned),
            3 | 9 => int(r.take(4)?, unsigned),
            8 => int(r.take(8)?, unsigned),
            4 => {
                let b = r.take(4)?;
                format!("{:?}", f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            }
            5 => {
                let b = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                format!("{:?}", f64::from_le_bytes(a))
            }
            7 | 10 | 12 => datetime(&mut r)?,
            11 => time(&mut r)?,
            0 | 246 => {
                let v = r.lenenc_bytes()?;
                if !v.is_empty()
                    && v.iter().all(|b| {
                        b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')
                    })
                {
                    String::from_utf8_lossy(v).into_owned()
                } else {
                    return Err(bad("a DECIMAL parameter that is not a number"));
                }
            }
            15 | 16 | 245..=255 => {
                let v = r.lenenc_bytes()?;
                let cs: String = charset
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect();
                format!(
                    "_{} {}",
                    if cs.is_empty() { "binary" } else { &cs },
                    quote::hex(v)
                )
            }
            other => {
                return Err(ParamError(format!(
                    "parameter type {other} is not supported"
                )))
            }
        };
        out.push(Some(lit));
    }
    Ok(out)
}

fn int(b: &[u8], unsigned: bool) -> String {
    let mut a = [0u8; 8];
    a[..b.len()].copy_from_slice(b);
    if unsigned {
        u64::from_le_bytes(a).to_string()
    } else {
        // Sign-extend from the parameter's width.
        let shift = 64 - 8 * b.len() as u32;
        ((i64::from_le_bytes(a) << shift) >> shift).to_string()
    }
}

fn datetime(r: &mut Reader<'_>) -> Result<String, ParamError> {
    let len = r.take(1)?[0] as usize;
    let b = r.take(len)?;
    let (mut y, mut mo, mut d, mut h, mut mi, mut s, mut us) =
        (0u16, 0u8, 0u8, 0u8, 0u8, 0u8, 0u32);
    if len >= 4 {
        y = u16::from_le_bytes([b[0], b[1]]);
        mo = b[2];
        d = b[3];
    }
    if len >= 7 {
        h = b[4];
        mi = b[5];
        s = b[6];
    }
    if len >= 11 {
        us = u32::from_le_bytes([b[7], b[8], b[9], b[10]]);
    }
    Ok(quote::text(
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}").as_bytes(),
        "utf8mb4",
    ))
}

fn time(r: &mut Reader<'_>) -> Result<String, ParamError> {
    let len = r.take(1)?[0] as usize;
    let b = r.take(len)?;
    if len < 8 {
        return Ok(quote::text(b"00:00:00", "utf8mb4"));
    }
    let neg = b[0] == 1;
    let days = u64::from(u32::from_le_bytes([b[1], b[2], b[3], b[4]]));
    let hours = days * 24 + u64::from(b[5]);
    let us = if len >= 12 {
        u32::from_le_bytes([b[8], b[9], b[10], b[11]])
    } else {
        0
    };
    let sign = if neg { "-" } else { "" };
    Ok(quote::text(
        format!("{sign}{hours:02}:{:02}:{:02}.{us:06}", b[6], b[7]).as_bytes(),
        "utf8mb4",
    ))
}

/// A parameter as a plain value, for calls Tandem answers itself (`tandem_*` functions):
/// integers as numbers, everything else as its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plain {
    Int(i64),
    Text(String),
}

/// Decodes parameters into plain values (see [`Plain`]); `None` is NULL.
pub fn decode_plain(
    payload: &[u8],
    count: usize,
    types: &mut Vec<[u8; 2]>,
) -> Result<Vec<Option<Plain>>, ParamError> {
    let literals = decode(payload, count, types, "binary")?;
    literals
        .into_iter()
        .zip(types.iter())
        .map(|(lit, [ty, _])| {
            let Some(lit) = lit else { return Ok(None) };
            Ok(Some(match ty {
                // Numbers (some drivers send every number as a DOUBLE): whole ones as integers.
                1 | 2 | 3 | 4 | 5 | 8 | 9 | 13 | 0 | 246 => match lit.parse::<i64>() {
                    Ok(i) => Plain::Int(i),
                    Err(_) => match lit.parse::<f64>() {
                        Ok(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Plain::Int(f as i64),
                        _ => Plain::Text(lit),
                    },
                },
                15 | 16 | 245..=255 => {
                    // `_binary X'…'`: back to the bytes.
                    let hex = lit.trim_start_matches("_binary X'").trim_end_matches('\'');
                    let bytes =
                        super::quote::unhex(hex).ok_or_else(|| bad("bad string parameter"))?;
                    Plain::Text(
                        String::from_utf8(bytes)
                            .map_err(|_| bad("a parameter that is not UTF-8"))?,
                    )
                }
                _ => Plain::Text(lit),
            }))
        })
        .collect()
}

/// Replaces each `?` placeholder (outside strings, quoted names and comments, as
/// [`lex`](super::lex) reads them) with its literal, in order.
pub fn substitute(sql: &str, literals: &[Option<String>]) -> Result<String, ParamError> {
    let tokens = super::lex::tokenize(sql.as_bytes()).map_err(|e| ParamError(e.to_string()))?;
    let mut out = String::with_capacity(sql.len() + 16 * literals.len());
    let mut next = literals.iter();
    let mut start = 0;
    for t in tokens.iter().filter(|t| t.is_punct(b'?')) {
        let lit = next
            .next()
            .ok_or_else(|| bad("more placeholders than parameters"))?;
        out.push_str(&sql[start..t.span.start]);
        out.push_str(lit.as_deref().unwrap_or("NULL"));
        start = t.span.end;
    }
    out.push_str(&sql[start..]);
    if next.next().is_some() {
        return Err(bad("more parameters than placeholders"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execute(count: usize, nulls: u8, types: &[[u8; 2]], values: &[u8]) -> Vec<u8> {
        let mut p = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0];
        p.extend(std::iter::repeat_n(nulls, count.div_ceil(8)));
        p.push(1);
        for t in types {
            p.extend_from_slice(t);
        }
        p.extend_from_slice(values);
        p
    }

    #[test]
    fn decodes_every_kind_of_parameter() {
        let mut values = Vec::new();
        values.extend_from_slice(&(-5i32).to_le_bytes()); // LONG
        values.extend_from_slice(&u64::MAX.to_le_bytes()); // LONGLONG unsigned
        values.extend_from_slice(&2.5f64.to_le_bytes()); // DOUBLE
        values.extend_from_slice(&[3, b'a', b'\'', b'c']); // VAR_STRING
        values.extend_from_slice(&[11, 0xe8, 0x07, 2, 29, 23, 59, 58, 0x40, 0xe2, 0x01, 0]); // DATETIME
        values.extend_from_slice(&[8, 1, 1, 0, 0, 0, 2, 3, 4]); // TIME -26:03:04
        values.extend_from_slice(&[4, b'1', b'.', b'2', b'5']); // NEWDECIMAL
        let types = [
            [3, 0],
            [8, 0x80],
            [5, 0],
            [253, 0],
            [12, 0],
            [11, 0],
            [246, 0],
            [6, 0],
        ];
        let p = execute(8, 0b1000_0000, &types, &values);
        let mut bound = Vec::new();
        let lits = decode(&p, 8, &mut bound, "utf8mb4").unwrap();
        assert_eq!(lits[0].as_deref(), Some("-5"));
        assert_eq!(lits[1].as_deref(), Some("18446744073709551615"));
        assert_eq!(lits[2].as_deref(), Some("2.5"));
        assert_eq!(lits[3].as_deref(), Some("_utf8mb4 X'612763'"));
        assert_eq!(
            lits[4],
            Some(quote::text(b"2024-02-29 23:59:58.123456", "utf8mb4"))
        );
        assert_eq!(lits[5], Some(quote::text(b"-26:03:04.000000", "utf8mb4")));
        assert_eq!(lits[6].as_deref(), Some("1.25"));
        assert_eq!(lits[7], None);
        // A later execute may reuse the bound types.
        let mut again = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        again.extend_from_slice(&values);
        assert_eq!(decode(&again, 8, &mut bound, "utf8mb4").unwrap(), lits);
        assert!(decode(&p[..20], 8, &mut Vec::new(), "utf8mb4").is_err());
    }

    #[test]
    fn substitutes_placeholders_outside_quotes_and_comments() {
        let lits = vec![Some("1".to_string()), None];
        assert_eq!(
            substitute(
                "UPDATE t SET a = ?, b = '?' /* ? */ WHERE c = ? -- ?\n",
                &lits
            )
            .unwrap(),
            "UPDATE t SET a = 1, b = '?' /* ? */ WHERE c = NULL -- ?\n"
        );
        assert!(substitute("SELECT ?", &[]).is_err());
        assert!(substitute("SELECT 1", &lits).is_err());
    }
}
