//! Building SQL text safely: identifiers in backticks, values as hex literals.
//!
//! Values are never spliced in as quoted strings: a hex literal needs no escaping and means
//! the same under every `sql_mode` (with or without NO_BACKSLASH_ESCAPES or ANSI_QUOTES).

use std::fmt::Write;

/// `name` as a quoted identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `X'…'`: the bytes as a binary string literal.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(3 + 2 * bytes.len());
    out.push_str("X'");
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02X}");
    }
    out.push('\'');
    out
}

/// The bytes of hex digits (the inside of `X'…'`), or `None` if they are not pairs of hex
/// digits.
pub fn unhex(digits: &str) -> Option<Vec<u8>> {
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A character set or collation name as SQL: its letters, digits and underscores only (names
/// come from the server, but never reach SQL unfiltered).
pub fn bare_name(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// A text value in character set `charset`, from its bytes.
pub fn text(bytes: &[u8], charset: &str) -> String {
    let cs = bare_name(charset);
    format!(
        "CONVERT({} USING {})",
        hex(bytes),
        if cs.is_empty() { "binary" } else { &cs }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(hex(b"\x00'\\"), "X'00275C'");
        assert_eq!(hex(b""), "X''");
        assert_eq!(text(b"hi", "utf8mb4"), "CONVERT(X'6869' USING utf8mb4)");
        assert_eq!(text(b"hi", "x; DROP"), "CONVERT(X'6869' USING xDROP)");
    }

    #[test]
    fn unhex_reads_what_hex_writes() {
        let bytes = b"\x00'\\\xff";
        let written = hex(bytes);
        assert_eq!(unhex(&written[2..written.len() - 1]), Some(bytes.to_vec()));
        assert_eq!(unhex(""), Some(Vec::new()));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é0"), None);
    }
}
