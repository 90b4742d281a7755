//! A lexer that reads statement text the way MariaDB's own lexer does, for the structure
//! Tandem needs inside a global transaction: where statements end, where clauses begin, and
//! the exact source text of each piece.
//!
//! It assumes the default quoting rules: backslash escapes in strings (no
//! `NO_BACKSLASH_ESCAPES`) and `"…"` as a string (no `ANSI_QUOTES`). Sessions with either mode
//! are refused in a global transaction before anything here runs.
//!
//! Tokens carry byte ranges into the original text, so a clause cut from them is the
//! client's own bytes: nothing is re-printed, no literal re-quoted.

use std::ops::Range;

/// What a token is, as coarse as structure needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A keyword, an unquoted identifier or a number: a run of letters, digits, `_`, `$`
    /// and non-ASCII bytes.
    Word,
    /// `'…'` or `"…"`.
    String,
    /// `` `…` ``.
    QuotedIdent,
    /// Any other byte: operators, parentheses, commas, `;`, `@`, `.`.
    Punct(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub span: Range<usize>,
}

impl Token {
    /// True when the token is the word `kw` (ASCII, case-insensitive).
    pub fn is_word(&self, sql: &[u8], kw: &str) -> bool {
        self.kind == TokenKind::Word && sql[self.span.clone()].eq_ignore_ascii_case(kw.as_bytes())
    }

    pub fn is_punct(&self, b: u8) -> bool {
        self.kind == TokenKind::Punct(b)
    }
}

/// Why text cannot be read with certainty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LexError {
    Unterminated(&'static str),
    /// `/*! … */` or `/*M! … */`: the server runs the comment's content, depending on its
    /// version; Tandem does not guess which.
    ExecutableComment,
}

impl std::fmt::Display for LexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LexError::Unterminated(what) => write!(f, "unterminated {what}"),
            LexError::ExecutableComment => f.write_str("an executable comment (/*! … */)"),
        }
    }
}

fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether `word` appears in `sql` as a whole word (ASCII, case-insensitive): a byte scan,
/// no lexing.
pub fn contains_word(sql: &[u8], word: &[u8]) -> bool {
    let n = word.len();
    let edge = |b: Option<&u8>| b.is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
    (0..sql.len().saturating_sub(n - 1)).any(|i| {
        sql[i..i + n].eq_ignore_ascii_case(word)
            && edge(i.checked_sub(1).and_then(|j| sql.get(j)))
            && edge(sql.get(i + n))
    })
}

/// Reads the tokens of `sql`, skipping whitespace and comments.
pub fn tokenize(sql: &[u8]) -> Result<Vec<Token>, LexError> {
    let mut out = Vec::with_capacity(sql.len() / 4);
    let mut i = 0;
    while i < sql.len() {
        let b = sql[i];
        let start = i;
        match b {
            _ if b.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                let body = &sql[i + 2..];
                if body.starts_with(b"!") || body.starts_with(b"M!") {
                    return Err(LexError::ExecutableComment);
                }
                let end = body
                    .windows(2)
                    .position(|w| w == b"*/")
                    .ok_or(LexError::Unterminated("comment"))?;
                i += 2 + end + 2;
                continue;
            }
            b'#' => {
                i = line_end(sql, i);
                continue;
            }
            // `--` starts a comment only when a space or a control character follows.
            b'-' if sql.get(i + 1) == Some(&b'-') && sql.get(i + 2).is_none_or(|c| *c <= b' ') => {
                i = line_end(sql, i);
                continue;
            }
            b'\'' | b'"' => {
                i = string_end(sql, i, b, true)?;
                out.push(Token {
                    kind: TokenKind::String,
                    span: start..i,
                });
            }
            b'`' => {
                i = string_end(sql, i, b, false)?;
                out.push(Token {
                    kind: TokenKind::QuotedIdent,
                    span: start..i,
                });
            }
            _ if word_byte(b) => {
                while i < sql.len() && word_byte(sql[i]) {
                    i += 1;
                }
                out.push(Token {
                    kind: TokenKind::Word,
                    span: start..i,
                });
            }
            _ => {
                i += 1;
                out.push(Token {
                    kind: TokenKind::Punct(b),
                    span: start..i,
                });
            }
        }
    }
    Ok(out)
}

fn line_end(sql: &[u8], from: usize) -> usize {
    sql[from..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(sql.len(), |e| from + e + 1)
}

/// The end (exclusive) of the quoted run opening at `open`: a doubled quote stands for
/// itself, and so does a backslash-escaped byte when `escapes` holds.
fn string_end(sql: &[u8], open: usize, q: u8, escapes: bool) -> Result<usize, LexError> {
    let mut i = open + 1;
    while i < sql.len() {
        let b = sql[i];
        if escapes && b == b'\\' {
            i += 2;
        } else if b == q {
            if sql.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return Ok(i + 1);
            }
        } else {
            i += 1;
        }
    }
    Err(LexError::Unterminated(if q == b'`' {
        "quoted identifier"
    } else {
        "string"
    }))
}

/// The statements of a query, as token slices without their `;`. A trailing `;` (with
/// nothing after it but comments) ends the last statement rather than starting another.
pub fn statements(tokens: &[Token]) -> Vec<&[Token]> {
    tokens
        .split(|t| t.is_punct(b';'))
        .filter(|s| !s.is_empty())
        .collect()
}

/// The positions of the tokens at parenthesis depth 0, with the depth of each token.
pub fn depths(tokens: &[Token]) -> Vec<u32> {
    let mut depth = 0u32;
    tokens
        .iter()
        .map(|t| {
            if t.is_punct(b')') {
                depth = depth.saturating_sub(1);
            }
            let d = depth;
            if t.is_punct(b'(') {
                depth += 1;
            }
            d
        })
        .collect()
}

/// The source text from the first to the last token of `tokens`, comments between them
/// included.
pub fn text<'a>(sql: &'a [u8], tokens: &[Token]) -> Option<&'a [u8]> {
    let (first, last) = (tokens.first()?, tokens.last()?);
    sql.get(first.span.start..last.span.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<String> {
        tokenize(sql.as_bytes())
            .unwrap()
            .iter()
            .map(|t| sql[t.span.clone()].to_string())
            .collect()
    }

    #[test]
    fn strings_comments_and_escapes_as_mariadb_reads_them() {
        assert_eq!(
            words(r"UPDATE t SET a = 'x\'y' WHERE id = 'C:\\temp'"),
            [
                "UPDATE",
                "t",
                "SET",
                "a",
                "=",
                r"'x\'y'",
                "WHERE",
                "id",
                "=",
                r"'C:\\temp'"
            ]
        );
        assert_eq!(
            words("SELECT 'it''s', \"a\"\"b\", `we``ird` /* c */ # x\n-- y\n1"),
            [
                "SELECT",
                "'it''s'",
                ",",
                "\"a\"\"b\"",
                ",",
                "`we``ird`",
                "1"
            ]
        );
        // `--` without a space is two minus signs.
        assert_eq!(words("1--1"), ["1", "-", "-", "1"]);
        assert_eq!(words("1-- 1"), ["1"]);
        assert_eq!(words("a--\tb"), ["a"]);
        // A backtick name takes no backslash escapes.
        assert_eq!(words(r"`a\` b"), [r"`a\`", "b"]);
        assert_eq!(words("/*+ XID('a') */ x"), ["x"]);
    }

    #[test]
    fn what_cannot_be_read_is_an_error() {
        for sql in ["'abc", "`abc", "/* abc", r"'abc\'"] {
            assert!(
                matches!(tokenize(sql.as_bytes()), Err(LexError::Unterminated(_))),
                "{sql}"
            );
        }
        for sql in [
            "SELECT /*! 1 */",
            "UPDATE t SET a = 1 /*M!100100 WHERE 0 */",
        ] {
            assert_eq!(
                tokenize(sql.as_bytes()),
                Err(LexError::ExecutableComment),
                "{sql}"
            );
        }
        // Inside a string it is only text.
        assert!(tokenize(b"SELECT '/*!'").is_ok());
    }

    #[test]
    fn statements_split_on_top_level_semicolons() {
        let sql = b"SELECT 1; UPDATE t SET a = ';' ; ; -- done\n";
        let tokens = tokenize(sql).unwrap();
        let parts = statements(&tokens);
        assert_eq!(parts.len(), 2);
        assert_eq!(text(sql, parts[1]), Some(&b"UPDATE t SET a = ';'"[..]));
        assert_eq!(statements(&tokenize(b"SELECT 1;").unwrap()).len(), 1);
    }

    #[test]
    fn depth_of_each_token() {
        let tokens = tokenize(b"a (b (c) d) e").unwrap();
        assert_eq!(depths(&tokens), [0, 0, 1, 1, 2, 1, 1, 0, 0]);
    }
}
