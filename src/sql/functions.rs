//! Tandem's SQL functions for global transactions, answered by Tandem itself:
//! `SELECT tandem_begin([timeout_ms])`, `tandem_commit('xid')`, `tandem_rollback('xid')`,
//! `tandem_status('xid')`.
//!
//! Only a statement that is exactly one such call is recognised (any case, optional trailing
//! `;`). The check costs a prefix comparison for ordinary SELECTs.

use super::classify::skip_noise;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Begin,
    Commit,
    Rollback,
    Status,
}

impl Function {
    pub fn name(self) -> &'static str {
        match self {
            Function::Begin => "tandem_begin",
            Function::Commit => "tandem_commit",
            Function::Rollback => "tandem_rollback",
            Function::Status => "tandem_status",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Int(i64),
    Str(String),
    /// A `?` placeholder of a prepared call, bound at execution.
    Param,
}

/// A recognised call: the function, its arguments, and the call's text (the column name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub function: Function,
    pub args: Vec<Arg>,
    pub text: String,
}

/// Why a `tandem_*` call could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub function: &'static str,
    pub message: String,
}

/// Recognises a statement that is one Tandem function call. `None`: not a Tandem call (the
/// statement goes to the database); `Some(Err)`: a Tandem call that is malformed.
pub fn parse(sql: &[u8]) -> Option<Result<Call, CallError>> {
    let s = skip_noise(sql);
    let rest = strip_keyword(s, b"select")?;
    let start = skip_ws(rest);
    if start.len() < 7 || !start[..7].eq_ignore_ascii_case(b"tandem_") {
        return None;
    }
    let name_len = start
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    let function = match start[..name_len].to_ascii_lowercase().as_slice() {
        b"tandem_begin" => Function::Begin,
        b"tandem_commit" => Function::Commit,
        b"tandem_rollback" => Function::Rollback,
        b"tandem_status" => Function::Status,
        _ => return None,
    };
    let err = |m: &str| {
        Some(Err(CallError {
            function: function.name(),
            message: m.to_string(),
        }))
    };
    let mut p = skip_ws(&start[name_len..]);
    if p.first() != Some(&b'(') {
        // A column that happens to be named like a function.
        return None;
    }
    p = skip_ws(&p[1..]);
    let mut args = Vec::new();
    if p.first() == Some(&b')') {
        p = &p[1..];
    } else {
        loop {
            let (arg, rest) = match read_arg(p) {
                Ok(v) => v,
                Err(m) => return err(&m),
            };
            args.push(arg);
            p = skip_ws(rest);
            match p.first() {
                Some(b',') => p = skip_ws(&p[1..]),
                Some(b')') => {
                    p = &p[1..];
                    break;
                }
                _ => return err("expected ',' or ')'"),
            }
        }
    }
    let call_len = start.len() - p.len();
    let tail = skip_ws(p);
    let tail = tail.strip_prefix(b";").map_or(tail, skip_ws);
    if !tail.is_empty() {
        // Something else follows (another clause or statement): not a plain call.
        return None;
    }
    Some(Ok(Call {
        function,
        args,
        text: String::from_utf8_lossy(&start[..call_len]).into_owned(),
    }))
}

fn strip_keyword<'a>(s: &'a [u8], kw: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    let rest = &s[kw.len()..];
    match rest.first() {
        Some(b) if b.is_ascii_whitespace() || *b == b'/' => Some(skip_noise(rest)),
        _ => None,
    }
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

fn read_arg(p: &[u8]) -> Result<(Arg, &[u8]), String> {
    match p.first() {
        Some(b'?') => Ok((Arg::Param, &p[1..])),
        Some(&q @ (b'\'' | b'"')) => {
            let mut out = Vec::new();
            let mut i = 1;
            while i < p.len() {
                match p[i] {
                    b'\\' if i + 1 < p.len() => {
                        out.push(p[i + 1]);
                        i += 2;
                    }
                    c if c == q && p.get(i + 1) == Some(&q) => {
                        out.push(q);
                        i += 2;
                    }
                    c if c == q => {
                        let s = String::from_utf8(out)
                            .map_err(|_| "argument is not UTF-8".to_string())?;
                        return Ok((Arg::Str(s), &p[i + 1..]));
                    }
                    c => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            Err("unterminated string".into())
        }
        Some(b'-' | b'0'..=b'9') => {
            let n = 1 + p[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            let v = std::str::from_utf8(&p[..n])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| "invalid number".to_string())?;
            Ok((Arg::Int(v), &p[n..]))
        }
        _ => Err("arguments are numbers or quoted strings".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(sql: &str) -> Call {
        parse(sql.as_bytes()).expect("recognised").expect("valid")
    }

    #[test]
    fn recognises_calls() {
        let c = call("SELECT tandem_begin()");
        assert_eq!(
            (c.function, c.args.len(), c.text.as_str()),
            (Function::Begin, 0, "tandem_begin()")
        );
        let c = call("select TANDEM_BEGIN( 5000 );");
        assert_eq!(c.args, vec![Arg::Int(5000)]);
        let c = call("/* app */ SELECT tandem_commit('ab''c\\'d')  ");
        assert_eq!(
            (c.function, c.args.clone()),
            (Function::Commit, vec![Arg::Str("ab'c'd".into())])
        );
        assert_eq!(
            call("SELECT tandem_rollback(\"x\")").function,
            Function::Rollback
        );
        assert_eq!(call("SELECT tandem_status('x')").function, Function::Status);
    }

    #[test]
    fn other_statements_are_not_calls() {
        for sql in [
            "SELECT 1",
            "SELECT tandem_other()",
            "SELECT tandem_begin() FROM t",
            "SELECT tandem_begin(); SELECT 1",
            "UPDATE t SET a = tandem_begin()",
            "SELECTtandem_begin()",
            "",
        ] {
            assert_eq!(parse(sql.as_bytes()), None, "{sql}");
        }
    }

    #[test]
    fn malformed_calls_are_errors() {
        assert_eq!(
            parse(b"SELECT tandem_begin FROM t"),
            None,
            "a column, not a call"
        );
        for sql in [
            "SELECT tandem_begin(",
            "SELECT tandem_commit('x'",
            "SELECT tandem_commit(x)",
            "SELECT tandem_commit('x)",
        ] {
            assert!(matches!(parse(sql.as_bytes()), Some(Err(_))), "{sql}");
        }
    }
}
