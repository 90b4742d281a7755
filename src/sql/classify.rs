//! Statement classification from the leading keyword, without parsing.
//!
//! Comments and whitespace before the keyword are skipped; MySQL's executable comments
//! (`/*! ... */`, `/*!40101 ... */`) are entered, because the server runs their content.

/// What kind of statement a query text is, as far as the first keyword(s) tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Replace,
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Set,
    Use,
    Show,
    Ddl,
    Call,
    Other,
}

impl StatementKind {
    pub const ALL: [StatementKind; 15] = [
        StatementKind::Select,
        StatementKind::Insert,
        StatementKind::Update,
        StatementKind::Delete,
        StatementKind::Replace,
        StatementKind::Begin,
        StatementKind::Commit,
        StatementKind::Rollback,
        StatementKind::Savepoint,
        StatementKind::Set,
        StatementKind::Use,
        StatementKind::Show,
        StatementKind::Ddl,
        StatementKind::Call,
        StatementKind::Other,
    ];

    /// Position in [`Self::ALL`], for per-kind metric handles.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Replace => "replace",
            StatementKind::Begin => "begin",
            StatementKind::Commit => "commit",
            StatementKind::Rollback => "rollback",
            StatementKind::Savepoint => "savepoint",
            StatementKind::Set => "set",
            StatementKind::Use => "use",
            StatementKind::Show => "show",
            StatementKind::Ddl => "ddl",
            StatementKind::Call => "call",
            StatementKind::Other => "other",
        }
    }
}

/// Skips whitespace and comments; returns the rest of the text.
pub fn skip_noise(mut s: &[u8]) -> &[u8] {
    loop {
        let before = s.len();
        while let [b, rest @ ..] = s {
            if b.is_ascii_whitespace() || *b == b'(' || *b == b';' {
                s = rest;
            } else {
                break;
            }
        }
        if let Some(rest) = s.strip_prefix(b"/*!") {
            // Executable comment: skip the optional version number and read on inside.
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            s = &rest[digits..];
        } else if let Some(rest) = s.strip_prefix(b"/*") {
            s = match rest.windows(2).position(|w| w == b"*/") {
                Some(end) => &rest[end + 2..],
                None => &[],
            };
        } else if s.starts_with(b"#")
            || s.starts_with(b"-- ")
            || s == b"--"
            || s.starts_with(b"--\t")
            || s.starts_with(b"--\n")
        {
            s = match s.iter().position(|&b| b == b'\n') {
                Some(end) => &s[end + 1..],
                None => &[],
            };
        }
        if s.len() == before {
            return s;
        }
    }
}

/// The next word (ASCII letters and underscores) and the text after it.
fn word(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s
        .iter()
        .take_while(|b| b.is_ascii_alphabetic() || **b == b'_')
        .count();
    (&s[..n], &s[n..])
}

fn is(w: &[u8], kw: &str) -> bool {
    w.eq_ignore_ascii_case(kw.as_bytes())
}

/// Classifies a statement by its leading keyword.
pub fn classify(sql: &[u8]) -> StatementKind {
    let (w, rest) = word(skip_noise(sql));
    let Some(first) = w.first() else {
        return StatementKind::Other;
    };
    use StatementKind::*;
    match first.to_ascii_lowercase() {
        b's' if is(w, "select") => Select,
        b's' if is(w, "set") => Set,
        b's' if is(w, "show") => Show,
        b's' if is(w, "savepoint") => Savepoint,
        b's' if is(w, "start") => Begin,
        b'i' if is(w, "insert") => Insert,
        b'u' if is(w, "update") => Update,
        b'u' if is(w, "use") => Use,
        b'd' if is(w, "delete") => Delete,
        b'd' if is(w, "drop") => Ddl,
        b'd' if is(w, "desc") || is(w, "describe") => Show,
        b'r' if is(w, "replace") => Replace,
        b'r' if is(w, "rollback") => {
            // ROLLBACK [WORK] TO [SAVEPOINT] x undoes only part of the transaction.
            let (next, after) = word(skip_noise(rest));
            let next = if is(next, "work") {
                word(skip_noise(after)).0
            } else {
                next
            };
            if is(next, "to") {
                Savepoint
            } else {
                Rollback
            }
        }
        b'r' if is(w, "release") => Savepoint,
        b'r' if is(w, "rename") => Ddl,
        b'b' if is(w, "begin") => Begin,
        b'c' if is(w, "commit") => Commit,
        b'c' if is(w, "create") => Ddl,
        b'c' if is(w, "call") => Call,
        b'a' if is(w, "alter") => Ddl,
        b't' if is(w, "truncate") => Ddl,
        b't' if is(w, "table") => Select,
        b'w' if is(w, "with") => Select,
        b'v' if is(w, "values") => Select,
        b'e' if is(w, "explain") => Show,
        _ => Other,
    }
}

#[cfg(test)]
mod tests {
    use super::StatementKind::*;
    use super::*;

    #[test]
    fn classifies_leading_keywords() {
        let cases: &[(&str, StatementKind)] = &[
            ("select 1", Select),
            ("  SELECT 1", Select),
            ("(select 1) union (select 2)", Select),
            ("/* hi */ insert into t values (1)", Insert),
            ("/*+ XID('abc') */ UPDATE t SET a=1", Update),
            ("-- note\ndelete from t", Delete),
            ("# note\nreplace into t values (1)", Replace),
            ("/*!40101 SET NAMES utf8mb4 */", Set),
            ("/*!SET x=1*/", Set),
            ("start transaction", Begin),
            ("BEGIN", Begin),
            ("commit", Commit),
            ("rollback", Rollback),
            ("rollback work", Rollback),
            ("ROLLBACK TO SAVEPOINT a", Savepoint),
            ("rollback work to a", Savepoint),
            ("release savepoint a", Savepoint),
            ("savepoint a", Savepoint),
            ("use db", Use),
            ("show tables", Show),
            ("describe t", Show),
            ("create table t (a int)", Ddl),
            ("alter table t add b int", Ddl),
            ("truncate t", Ddl),
            ("call p()", Call),
            ("with x as (select 1) select * from x", Select),
            ("do 1", Other),
            ("", Other),
            ("/* unterminated", Other),
            ("--", Other),
            ("selectx", Other),
        ];
        for (sql, kind) in cases {
            assert_eq!(classify(sql.as_bytes()), *kind, "{sql}");
        }
    }

    #[test]
    fn index_matches_all() {
        for (i, k) in StatementKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
