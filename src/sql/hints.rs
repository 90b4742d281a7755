//! Hints in comments. The XID hint: `/*+ XID('…') */` anywhere in a statement
//! (DBPack-compatible) makes the statement's local transaction a branch of that global
//! transaction. The primary hint, `/*+ PRIMARY */`, sends a read to the primary.
//!
//! Read from the raw text with a byte scan; no parsing.

/// Why a hint that names an XID could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintError(pub String);

/// True when the statement carries an XID hint (well-formed or not). Cheap when it has
/// none: a vectorised search for `/*+`, and the full scan only behind a match.
pub fn has_hint(sql: &[u8]) -> bool {
    memchr::memmem::find(sql, b"/*+").is_some() && xid_hint(sql).is_some()
}

/// Finds the XID hint. `None` when the statement has none. Text inside quotes (strings,
/// quoted identifiers) is skipped, so a literal that looks like a hint is not one.
pub fn xid_hint(sql: &[u8]) -> Option<Result<String, HintError>> {
    hint_bodies(sql).find_map(xid_in)
}

/// True when a hint comment asks for the primary: `/*+ PRIMARY */` (`mode: rw_split` sends
/// that read to the primary instead of a replica). Cheap when there is no hint at all.
pub fn primary_hint(sql: &[u8]) -> bool {
    memchr::memmem::find(sql, b"/*+").is_some()
        && hint_bodies(sql).any(|body| {
            body.split(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                .any(|w| w.eq_ignore_ascii_case(b"primary"))
        })
}

/// The bodies of the statement's hint comments (`/*+ … */`, after the `+`), in order. Text
/// inside quotes (strings, quoted identifiers) is skipped, so a literal that looks like a
/// hint is not one.
fn hint_bodies(sql: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = 0;
    let mut quote: Option<u8> = None;
    std::iter::from_fn(move || {
        while i < sql.len() {
            let b = sql[i];
            match quote {
                Some(q) => {
                    if b == b'\\' && q != b'`' {
                        i += 1;
                    } else if b == q {
                        quote = None;
                    }
                }
                None if b == b'\'' || b == b'"' || b == b'`' => quote = Some(b),
                None if sql[i..].starts_with(b"/*") => {
                    let body_start = i + 2;
                    let end = sql[body_start..]
                        .windows(2)
                        .position(|w| w == b"*/")
                        .map_or(sql.len(), |e| body_start + e);
                    i = end + 2;
                    if sql.get(body_start) == Some(&b'+') {
                        return Some(&sql[body_start + 1..end]);
                    }
                    continue;
                }
                None => {}
            }
            i += 1;
        }
        None
    })
}

/// Reads `XID('…')` (or `XID("…")`) inside one hint comment.
fn xid_in(body: &[u8]) -> Option<Result<String, HintError>> {
    let mut i = 0;
    while i + 3 <= body.len() {
        let word_start = i == 0 || !(body[i - 1].is_ascii_alphanumeric() || body[i - 1] == b'_');
        if word_start && body[i..i + 3].eq_ignore_ascii_case(b"xid") {
            let mut p = &body[i + 3..];
            p = trim_start(p);
            if p.first() != Some(&b'(') {
                i += 3;
                continue;
            }
            p = trim_start(&p[1..]);
            let Some(&q @ (b'\'' | b'"')) = p.first() else {
                return Some(Err(HintError("XID(...) takes a quoted string".into())));
            };
            let Some(close) = p[1..].iter().position(|&b| b == q) else {
                return Some(Err(HintError("unterminated XID string in hint".into())));
            };
            let value = &p[1..1 + close];
            let after = trim_start(&p[2 + close..]);
            if after.first() != Some(&b')') {
                return Some(Err(HintError("expected ')' after the XID".into())));
            }
            return Some(
                String::from_utf8(value.to_vec())
                    .map_err(|_| HintError("the XID is not UTF-8".into())),
            );
        }
        i += 1;
    }
    None
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(sql: &str) -> Option<Result<String, HintError>> {
        xid_hint(sql.as_bytes())
    }

    #[test]
    fn finds_the_hint_wherever_it_stands() {
        assert_eq!(
            hint("/*+ XID('abc') */ UPDATE t SET a = 1"),
            Some(Ok("abc".into()))
        );
        assert_eq!(
            hint("UPDATE /*+XID(\"x-1\")*/ t SET a = 1"),
            Some(Ok("x-1".into()))
        );
        assert_eq!(
            hint("INSERT /*+ MAX_EXECUTION_TIME(10) xid( 'q' ) */ INTO t VALUES (1)"),
            Some(Ok("q".into()))
        );
        assert_eq!(
            hint("/*+ NO_INDEX(t) */ /*+ XID('second') */ DELETE FROM t"),
            Some(Ok("second".into()))
        );
    }

    #[test]
    fn statements_without_a_hint() {
        for sql in [
            "SELECT 1",
            "/* XID('not a hint') */ SELECT 1",
            "/*+ NOXID('a') */ SELECT 1",
            "SELECT '/*+'",
            "SELECT '/*+ XID(''a'') */'",
            "SELECT 'it\\'s /*+ XID(\"a\") */'",
            "",
        ] {
            assert_eq!(hint(sql), None, "{sql}");
        }
    }

    #[test]
    fn malformed_hints_are_errors() {
        for sql in [
            "/*+ XID(abc) */ SELECT 1",
            "/*+ XID('abc */ SELECT 1",
            "/*+ XID('abc' */ SELECT 1",
        ] {
            assert!(matches!(hint(sql), Some(Err(_))), "{sql}");
        }
    }
}

/// `SET tandem_xid = 'X'` (`Some(Some(X))`) or `SET tandem_xid = NULL` (`Some(None)`);
/// `None` when the statement is some other SET.
pub fn set_xid(sql: &[u8]) -> Option<Result<Option<String>, HintError>> {
    let s = super::classify::skip_noise(sql);
    let rest = s
        .get(..3)
        .filter(|h| h.eq_ignore_ascii_case(b"set"))
        .map(|_| &s[3..])?;
    let rest = trim_start(rest);
    let name = b"tandem_xid";
    if rest.len() < name.len() || !rest[..name.len()].eq_ignore_ascii_case(name) {
        return None;
    }
    let rest = trim_start(&rest[name.len()..]);
    let rest = rest
        .strip_prefix(b":=")
        .or_else(|| rest.strip_prefix(b"="))?;
    let rest = trim_start(rest);
    let end = |tail: &[u8]| {
        let t = trim_start(tail);
        let t = t.strip_prefix(b";").map_or(t, trim_start);
        t.is_empty()
    };
    if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case(b"null") && end(&rest[4..]) {
        return Some(Ok(None));
    }
    let Some(&q @ (b'\'' | b'"')) = rest.first() else {
        return Some(Err(HintError(
            "tandem_xid is set to a quoted XID or NULL".into(),
        )));
    };
    let Some(close) = rest[1..].iter().position(|&b| b == q) else {
        return Some(Err(HintError("unterminated XID string".into())));
    };
    if !end(&rest[2 + close..]) {
        return Some(Err(HintError(
            "SET tandem_xid takes one value and nothing else".into(),
        )));
    }
    Some(
        String::from_utf8(rest[1..1 + close].to_vec())
            .map(Some)
            .map_err(|_| HintError("the XID is not UTF-8".into())),
    )
}

#[cfg(test)]
mod set_tests {
    use super::*;

    #[test]
    fn set_tandem_xid() {
        assert_eq!(
            set_xid(b"SET tandem_xid = 'abc'"),
            Some(Ok(Some("abc".into())))
        );
        assert_eq!(
            set_xid(b"set TANDEM_XID:=\"x\";"),
            Some(Ok(Some("x".into())))
        );
        assert_eq!(set_xid(b"SET tandem_xid = NULL"), Some(Ok(None)));
        assert_eq!(set_xid(b"SET autocommit = 0"), None);
        assert_eq!(set_xid(b"SET tandem_xidx = 1"), None);
        assert!(matches!(set_xid(b"SET tandem_xid = abc"), Some(Err(_))));
        assert!(matches!(
            set_xid(b"SET tandem_xid = 'a', autocommit = 0"),
            Some(Err(_))
        ));
    }
}
