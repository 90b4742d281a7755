//! What a `SET` does to the session settings that decide how the server reads statement
//! text: its `sql_mode` and client character set.
//!
//! Tandem keeps them per backend connection. Asking the server for them again runs a query
//! on the session's connection, which a later `FOUND_ROWS()` or `ROW_COUNT()` would see, so
//! the common forms are read from the statement itself (`SET NAMES x`, `SET sql_mode =
//! '…'`); for the others Tandem asks.

use super::lex::{self, Token, TokenKind};

/// A change a `SET` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    SqlMode(String),
    Charset(String),
}

/// Modes that stand for several others (some of them change how text is read): a `SET` of
/// one of these is not read here.
const COMBINATION_MODES: &[&str] = &[
    "ANSI",
    "DB2",
    "MAXDB",
    "MSSQL",
    "MYSQL323",
    "MYSQL40",
    "ORACLE",
    "POSTGRESQL",
    "TRADITIONAL",
];

/// The changes `SET` statement `sql` makes to the session's sql_mode and client character
/// set, in order; `None` when it cannot be told from the text.
pub fn changes(sql: &[u8]) -> Option<Vec<Change>> {
    let tokens = lex::tokenize(sql).ok()?;
    let (first, rest) = tokens.split_first()?;
    if !first.is_word(sql, "set") {
        return None;
    }
    let depths = lex::depths(rest);
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..=rest.len() {
        let end = i == rest.len() || (depths[i] == 0 && rest[i].is_punct(b','));
        if end {
            if let Some(c) = assignment(sql, &rest[start..i])? {
                out.push(c);
            }
            start = i + 1;
        }
    }
    Some(out)
}

/// One assignment of a `SET`: `Some(None)` when it changes neither setting, `None` when
/// what it does to them cannot be told.
fn assignment(sql: &[u8], t: &[Token]) -> Option<Option<Change>> {
    let word = |i: usize, kw: &str| t.get(i).is_some_and(|t| t.is_word(sql, kw));
    let name = |tok: &Token| match tok.kind {
        TokenKind::Word | TokenKind::String => {
            let text = &sql[tok.span.clone()];
            let text = match tok.kind {
                TokenKind::String => text.get(1..text.len().checked_sub(1)?)?,
                _ => text,
            };
            (!text.contains(&b'\\')).then(|| String::from_utf8_lossy(text).into_owned())
        }
        _ => None,
    };
    // SET NAMES x [COLLATE y], SET CHARACTER SET x, SET CHARSET x.
    let charset_at = if word(0, "names") || word(0, "charset") {
        Some(1)
    } else if word(0, "character") && word(1, "set") {
        Some(2)
    } else {
        None
    };
    if let Some(at) = charset_at {
        if word(at, "default") {
            return None;
        }
        let cs = name(t.get(at)?)?;
        let rest = &t[at + 1..];
        let collate_only = rest.is_empty()
            || (rest.len() == 2 && rest[0].is_word(sql, "collate") && name(&rest[1]).is_some());
        return collate_only.then_some(Some(Change::Charset(cs.to_ascii_lowercase())));
    }
    // [SESSION | LOCAL] name = value, @@[session. | local.]name = value, @user = value.
    let mut i = 0;
    if t.first().is_some_and(|a| a.is_punct(b'@')) {
        if !t.get(1).is_some_and(|b| b.is_punct(b'@')) {
            return Some(None);
        }
        i = 2;
        if t.get(i + 1).is_some_and(|d| d.is_punct(b'.')) {
            if word(i, "global") {
                return Some(None);
            }
            if !(word(i, "session") || word(i, "local")) {
                return None;
            }
            i += 2;
        }
    } else if word(0, "global") {
        return Some(None);
    } else if word(0, "session") || word(0, "local") {
        i = 1;
    }
    let var = t.get(i)?;
    if !t.get(i + 1).is_some_and(|e| e.is_punct(b'=')) {
        return None;
    }
    let value = &t[i + 2..];
    if var.is_word(sql, "sql_mode") {
        let [lit] = value else { return None };
        if lit.kind != TokenKind::String {
            return None;
        }
        let mode = name(lit)?.to_ascii_uppercase();
        let combined = mode
            .split(',')
            .any(|m| COMBINATION_MODES.contains(&m.trim()));
        return (!combined).then_some(Some(Change::SqlMode(mode)));
    }
    if var.is_word(sql, "character_set_client") {
        let [cs] = value else { return None };
        if cs.is_word(sql, "default") {
            return None;
        }
        return Some(Some(Change::Charset(name(cs)?.to_ascii_lowercase())));
    }
    if var.kind == TokenKind::Word {
        Some(None)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(sql: &str) -> Option<Vec<Change>> {
        changes(sql.as_bytes())
    }

    #[test]
    fn the_common_forms_are_read_from_the_statement() {
        use Change::*;
        assert_eq!(
            read("SET NAMES latin1"),
            Some(vec![Charset("latin1".into())])
        );
        assert_eq!(
            read("SET NAMES 'UTF8MB4' COLLATE 'utf8mb4_bin'"),
            Some(vec![Charset("utf8mb4".into())])
        );
        assert_eq!(
            read("SET CHARACTER SET utf8"),
            Some(vec![Charset("utf8".into())])
        );
        assert_eq!(
            read("SET SESSION sql_mode = 'ansi_quotes,strict_all_tables'"),
            Some(vec![SqlMode("ANSI_QUOTES,STRICT_ALL_TABLES".into())])
        );
        assert_eq!(
            read("SET @@sql_mode = ''"),
            Some(vec![SqlMode(String::new())])
        );
        assert_eq!(
            read("SET @a = (SELECT 1, 2), @@session.sql_mode = 'NO_BACKSLASH_ESCAPES', autocommit = 0"),
            Some(vec![SqlMode("NO_BACKSLASH_ESCAPES".into())])
        );
        assert_eq!(read("SET autocommit = 0"), Some(vec![]));
        assert_eq!(
            read("SET GLOBAL sql_mode = CONCAT(@@sql_mode, 'x')"),
            Some(vec![])
        );
        assert_eq!(
            read("SET character_set_client = latin1"),
            Some(vec![Charset("latin1".into())])
        );
    }

    #[test]
    fn what_cannot_be_told_from_the_text_is_asked() {
        for sql in [
            "SET sql_mode = 'ANSI'",
            "SET sql_mode = 'traditional'",
            "SET sql_mode = DEFAULT",
            "SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')",
            "SET sql_mode = 'a\\'b'",
            "SET NAMES DEFAULT",
            "SET NAMES latin1, sql_mode = @m",
            "SET @@foo.sql_mode = ''",
            "SET `sql_mode` = ''",
        ] {
            assert_eq!(read(sql), None, "{sql}");
        }
    }
}
