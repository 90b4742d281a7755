//! Global row lock keys.
//!
//! A key names one physical row: the data source's identity (`host:port/db`), the table in
//! canonical lower case, and the primary key values in key-column order:
//! `127.0.0.1:3306/shop/account/42` or, for a composite key, `…/order_item/7,3`.
//! Every part is percent-encoded, so `/` and `,` only ever separate parts and no key is a
//! prefix of another row's key.

use std::fmt::Write;

/// Bytes that stand for themselves in a key; everything else is `%XX`.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@')
}

fn encode(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if plain(b) {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The lock key of the row of `table` in data source `identity` whose primary key columns
/// hold `pk` (each value as the database prints it in the text protocol).
pub fn lock_key(identity: &str, table: &str, pk: &[&[u8]]) -> String {
    let mut out = String::with_capacity(identity.len() + table.len() + 16);
    encode(&mut out, identity.as_bytes());
    out.push('/');
    encode(&mut out, table.to_lowercase().as_bytes());
    out.push('/');
    for (i, v) in pk.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        encode(&mut out, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_rows_unambiguously() {
        assert_eq!(
            lock_key("127.0.0.1:3306/shop", "Account", &[b"42"]),
            "127.0.0.1:3306%2Fshop/account/42"
        );
        assert_eq!(lock_key("h:1/db", "t", &[b"7", b"3"]), "h:1%2Fdb/t/7,3");
        // Separators inside values are encoded, so these rows get different keys.
        let a = lock_key("h:1/db", "t", &[b"1,2"]);
        let b = lock_key("h:1/db", "t", &[b"1", b"2"]);
        assert_ne!(a, b);
        let c = lock_key("h:1/db", "t/x", &[b"1"]);
        let d = lock_key("h:1/db", "t", &[b"x/1"]);
        assert_ne!(c, d);
        // Arbitrary bytes, NUL and non-ASCII included, stay printable.
        let k = lock_key("h:1/db", "t", &[&[0, 0xff, b'%']]);
        assert_eq!(k, "h:1%2Fdb/t/%00%FF%25");
        // Table names are case-insensitive; values are not.
        assert_eq!(
            lock_key("h:1/db", "T", &[b"a"]),
            lock_key("h:1/db", "t", &[b"a"])
        );
        assert_ne!(
            lock_key("h:1/db", "t", &[b"A"]),
            lock_key("h:1/db", "t", &[b"a"])
        );
    }
}
