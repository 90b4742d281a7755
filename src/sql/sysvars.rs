//! Queries of system variables whose answer must be Tandem's, not the database's.
//!
//! `@@socket` names the socket of the server a client talks to, and some drivers act on it:
//! mysql_async and the `mysql` crate (Rust), connected over loopback TCP, read it at
//! connect and reconnect to that socket. The database's answer would send them around
//! Tandem, straight to the database, with nothing to tell. Tandem answers with its own
//! socket instead (see `Session::answer_socket`).

use super::lex::{self, TokenKind};

/// For a query that selects system variables only (`SELECT @@a, @@session.b, …`), one of
/// them `socket`: which of its columns are `@@socket`, and each column's text (its name in
/// the result). `None` for any other query.
pub fn socket_query(sql: &[u8]) -> Option<Vec<(bool, String)>> {
    // The hot path: one byte scan rules out nearly every query.
    memchr::memchr(b'@', sql)?;
    let tokens = lex::tokenize(sql).ok()?;
    let (first, rest) = tokens.split_first()?;
    if !first.is_word(sql, "select") {
        return None;
    }
    let mut columns = Vec::new();
    for item in rest.split(|t| t.is_punct(b',')) {
        let socket = match item {
            [a, b, name] if a.is_punct(b'@') && b.is_punct(b'@') => {
                name.kind == TokenKind::Word && name.is_word(sql, "socket")
            }
            [a, b, scope, dot, name]
                if a.is_punct(b'@')
                    && b.is_punct(b'@')
                    && dot.is_punct(b'.')
                    && ["global", "session", "local"]
                        .iter()
                        .any(|s| scope.is_word(sql, s))
                    && name.kind == TokenKind::Word =>
            {
                name.is_word(sql, "socket")
            }
            _ => return None,
        };
        let text = lex::text(sql, item)?;
        columns.push((socket, String::from_utf8_lossy(text).into_owned()));
    }
    columns.iter().any(|(socket, _)| *socket).then_some(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockets(sql: &str) -> Option<Vec<bool>> {
        socket_query(sql.as_bytes()).map(|c| c.into_iter().map(|(s, _)| s).collect())
    }

    #[test]
    fn queries_of_the_socket_among_system_variables() {
        assert_eq!(
            sockets("SELECT @@max_allowed_packet,@@wait_timeout,@@socket"),
            Some(vec![false, false, true])
        );
        assert_eq!(sockets("select @@SESSION.socket"), Some(vec![true]));
        assert_eq!(
            socket_query(b"SELECT @@socket , @@port").map(|c| c[0].1.clone()),
            Some("@@socket".to_string())
        );
        assert_eq!(sockets("SELECT @@wait_timeout"), None);
        assert_eq!(sockets("SELECT @@socket FROM t"), None);
        assert_eq!(sockets("SELECT @@socket AS s"), None);
        assert_eq!(sockets("SELECT @@socket; DROP TABLE t"), None);
        assert_eq!(sockets("SELECT @socket"), None);
        assert_eq!(sockets("SELECT 'socket'"), None);
        assert_eq!(sockets("SELECT /*! @@socket */ 1"), None);
    }
}
