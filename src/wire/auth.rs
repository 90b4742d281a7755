//! Password scrambles for `mysql_native_password` and `caching_sha2_password`.
//!
//! Tandem knows its frontend users' passwords, so it verifies a client's scramble by computing
//! the expected one; caching_sha2's fast path therefore always applies and the RSA "full
//! authentication" exchange is never needed on the frontend. On the backend side Tandem is the
//! client and may need it (see `backend::conn`).

use mysql_common::scramble::{scramble_native, scramble_sha256};

pub const NATIVE: &str = "mysql_native_password";
pub const CACHING_SHA2: &str = "caching_sha2_password";

/// caching_sha2_password: "fast authentication succeeded", sent before the OK packet.
pub const FAST_AUTH_OK: u8 = 0x03;
/// caching_sha2_password: the server wants the full password (over TLS or RSA).
pub const PERFORM_FULL_AUTH: u8 = 0x04;

/// The two authentication methods Tandem speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Native,
    CachingSha2,
}

impl AuthMethod {
    pub fn from_name(name: &[u8]) -> Option<Self> {
        match name {
            b"mysql_native_password" => Some(AuthMethod::Native),
            b"caching_sha2_password" => Some(AuthMethod::CachingSha2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Native => NATIVE,
            AuthMethod::CachingSha2 => CACHING_SHA2,
        }
    }

    /// The client's answer to `nonce` for `password`; empty for an empty password.
    pub fn scramble(self, nonce: &[u8], password: &[u8]) -> Vec<u8> {
        match self {
            AuthMethod::Native => scramble_native(nonce, password).map(|s| s.to_vec()),
            AuthMethod::CachingSha2 => scramble_sha256(nonce, password).map(|s| s.to_vec()),
        }
        .unwrap_or_default()
    }

    /// Checks a client's answer in constant time with respect to its content.
    pub fn verify(self, nonce: &[u8], password: &[u8], answer: &[u8]) -> bool {
        let expected = self.scramble(nonce, password);
        // Some clients send a trailing NUL after an empty answer.
        let answer = if expected.is_empty() && answer == [0] {
            &answer[..0]
        } else {
            answer
        };
        expected.len() == answer.len()
            && expected
                .iter()
                .zip(answer)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// A fresh 20-byte nonce of printable bytes (no NUL, which would end the handshake field).
pub fn new_nonce() -> [u8; 20] {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut n = [0u8; 20];
    for b in &mut n {
        *b = rng.random_range(0x21..0x7f);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_the_right_password_only() {
        let nonce = new_nonce();
        for m in [AuthMethod::Native, AuthMethod::CachingSha2] {
            let answer = m.scramble(&nonce, b"s3cret");
            assert!(m.verify(&nonce, b"s3cret", &answer));
            assert!(!m.verify(&nonce, b"s3cres", &answer));
            assert!(!m.verify(&nonce, b"s3cret", &answer[1..]));
            assert!(m.verify(&nonce, b"", b""));
            assert!(m.verify(&nonce, b"", b"\0"));
            assert!(!m.verify(&nonce, b"", &answer));
        }
    }

    #[test]
    fn nonce_has_no_nul() {
        assert!(new_nonce().iter().all(|&b| b != 0));
    }
}
