//! The connection-phase packets: the server greeting (protocol version 10), the client's
//! SSL request and handshake response (protocol 4.1), and the auth-switch request.
//!
//! Tandem writes and reads these itself: they are short, and owning them means every field a
//! client sends (collation, capabilities, database) is kept exactly.

use mysql_common::constants::{CapabilityFlags, StatusFlags};

use super::auth::AuthMethod;
use super::response::read_lenenc_int;

/// The greeting Tandem sends to a new client.
#[derive(Debug, Clone)]
pub struct Greeting<'a> {
    pub server_version: &'a str,
    pub connection_id: u32,
    pub nonce: [u8; 20],
    pub capabilities: CapabilityFlags,
    pub collation: u8,
    pub method: AuthMethod,
}

impl Greeting<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let caps = self.capabilities.bits();
        let mut out = Vec::with_capacity(96);
        out.push(10);
        out.extend_from_slice(self.server_version.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        out.extend_from_slice(&self.nonce[..8]);
        out.push(0);
        out.extend_from_slice(&(caps as u16).to_le_bytes());
        out.push(self.collation);
        out.extend_from_slice(&StatusFlags::SERVER_STATUS_AUTOCOMMIT.bits().to_le_bytes());
        out.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        out.push(21);
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&self.nonce[8..]);
        out.push(0);
        out.extend_from_slice(self.method.name().as_bytes());
        out.push(0);
        out
    }
}

/// The client's handshake response, protocol 4.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub capabilities: CapabilityFlags,
    pub max_packet_size: u32,
    pub collation: u8,
    pub user: String,
    pub auth_response: Vec<u8>,
    pub database: Option<String>,
    pub auth_plugin: Option<Vec<u8>>,
}

/// Length of an SSL request payload: the fixed head of a handshake response.
pub const SSL_REQUEST_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed handshake response: {0}")]
pub struct HandshakeError(pub &'static str);

/// Reads the capabilities of an SSL request, if the payload is one.
pub fn ssl_request(payload: &[u8]) -> Option<CapabilityFlags> {
    if payload.len() != SSL_REQUEST_LEN {
        return None;
    }
    let caps = CapabilityFlags::from_bits_truncate(u32::from_le_bytes([
        payload[0], payload[1], payload[2], payload[3],
    ]));
    caps.contains(CapabilityFlags::CLIENT_SSL).then_some(caps)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HandshakeError> {
        if self.0.len() < n {
            return Err(HandshakeError("packet too short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn null_terminated(&mut self, what: &'static str) -> Result<&'a [u8], HandshakeError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or(HandshakeError(what))?;
        let s = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated string that may also simply run to the end of the packet.
    fn null_or_rest(&mut self) -> &'a [u8] {
        match self.0.iter().position(|&b| b == 0) {
            Some(end) => {
                let s = &self.0[..end];
                self.0 = &self.0[end + 1..];
                s
            }
            None => std::mem::take(&mut self.0),
        }
    }

    fn lenenc(&mut self) -> Result<u64, HandshakeError> {
        let (v, n) = read_lenenc_int(self.0).ok_or(HandshakeError("bad length"))?;
        self.0 = &self.0[n..];
        Ok(v)
    }
}

fn utf8(b: &[u8], what: &'static str) -> Result<String, HandshakeError> {
    String::from_utf8(b.to_vec()).map_err(|_| HandshakeError(what))
}

impl HandshakeResponse {
    pub fn parse(payload: &[u8]) -> Result<Self, HandshakeError> {
        let mut r = Reader(payload);
        let head = r.take(SSL_REQUEST_LEN)?;
        let capabilities = CapabilityFlags::from_bits_truncate(u32::from_le_bytes([
            head[0], head[1], head[2], head[3],
        ]));
        if !capabilities.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
            return Err(HandshakeError(
                "clients older than protocol 4.1 are not supported",
            ));
        }
        let max_packet_size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let collation = head[8];
        let user = utf8(
            r.null_terminated("user name not terminated")?,
            "user name is not UTF-8",
        )?;
        let auth_response =
            if capabilities.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) {
                let n = r.lenenc()?;
                let n = usize::try_from(n).map_err(|_| HandshakeError("auth response too long"))?;
                r.take(n)?.to_vec()
            } else if capabilities.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
                let n = r.take(1)?[0] as usize;
                r.take(n)?.to_vec()
            } else {
                r.null_terminated("auth response not terminated")?.to_vec()
            };
        let database = if capabilities.contains(CapabilityFlags::CLIENT_CONNECT_WITH_DB) {
            let db = r.null_or_rest();
            (!db.is_empty())
                .then(|| utf8(db, "database name is not UTF-8"))
                .transpose()?
        } else {
            None
        };
        let auth_plugin = if capabilities.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) {
            Some(r.null_or_rest().to_vec())
        } else {
            None
        };
        // Connection attributes are accepted and not used.
        Ok(HandshakeResponse {
            capabilities,
            max_packet_size,
            collation,
            user,
            auth_response,
            database,
            auth_plugin,
        })
    }
}

/// COM_CHANGE_USER: the payload after the command byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeUser {
    pub user: String,
    pub auth_response: Vec<u8>,
    pub database: Option<String>,
    /// The new connection collation, when the client sent one.
    pub collation: Option<u8>,
    pub auth_plugin: Option<Vec<u8>>,
}

impl ChangeUser {
    pub fn parse(payload: &[u8], caps: CapabilityFlags) -> Result<Self, HandshakeError> {
        let mut r = Reader(payload);
        let user = utf8(
            r.null_terminated("user name not terminated")?,
            "user name is not UTF-8",
        )?;
        let auth_response = if caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
            let n = r.take(1)?[0] as usize;
            r.take(n)?.to_vec()
        } else {
            r.null_terminated("auth response not terminated")?.to_vec()
        };
        let db = r.null_or_rest();
        let database = (!db.is_empty())
            .then(|| utf8(db, "database name is not UTF-8"))
            .transpose()?;
        let collation = if r.0.len() >= 2 {
            let c = r.take(2)?;
            Some(c[0])
        } else {
            None
        };
        let auth_plugin = (caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) && !r.0.is_empty())
            .then(|| r.null_or_rest().to_vec());
        Ok(ChangeUser {
            user,
            auth_response,
            database,
            collation,
            auth_plugin,
        })
    }
}

/// An auth-switch request asking the client to answer `nonce` with `method`.
pub fn auth_switch_request(method: AuthMethod, nonce: &[u8; 20]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.push(0xfe);
    out.extend_from_slice(method.name().as_bytes());
    out.push(0);
    out.extend_from_slice(nonce);
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(
        caps: CapabilityFlags,
        user: &str,
        auth: &[u8],
        db: Option<&str>,
        plugin: Option<&str>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&caps.bits().to_le_bytes());
        out.extend_from_slice(&(1u32 << 24).to_le_bytes());
        out.push(45);
        out.extend_from_slice(&[0; 23]);
        out.extend_from_slice(user.as_bytes());
        out.push(0);
        out.push(auth.len() as u8);
        out.extend_from_slice(auth);
        if let Some(db) = db {
            out.extend_from_slice(db.as_bytes());
            out.push(0);
        }
        if let Some(p) = plugin {
            out.extend_from_slice(p.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn parses_a_full_response() {
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_CONNECT_WITH_DB
            | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        let p = response(
            caps,
            "app",
            &[1; 20],
            Some("orders"),
            Some("mysql_native_password"),
        );
        let r = HandshakeResponse::parse(&p).unwrap();
        assert_eq!(r.user, "app");
        assert_eq!(r.auth_response, vec![1; 20]);
        assert_eq!(r.database.as_deref(), Some("orders"));
        assert_eq!(
            r.auth_plugin.as_deref(),
            Some(&b"mysql_native_password"[..])
        );
        assert_eq!(r.collation, 45);
    }

    #[test]
    fn truncated_and_garbage_responses_are_errors() {
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41 | CapabilityFlags::CLIENT_SECURE_CONNECTION;
        let p = response(caps, "app", &[1; 20], None, None);
        for n in 0..p.len() - 1 {
            // Every strict prefix short of the auth data is rejected, never a panic.
            let _ = HandshakeResponse::parse(&p[..n]);
        }
        assert!(HandshakeResponse::parse(&p[..40]).is_err());
        assert!(HandshakeResponse::parse(b"garbage").is_err());
        let old = response(
            CapabilityFlags::CLIENT_SECURE_CONNECTION,
            "a",
            &[],
            None,
            None,
        );
        assert!(HandshakeResponse::parse(&old).is_err());
    }

    #[test]
    fn parses_change_user() {
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        let mut p = b"bob\0".to_vec();
        p.push(20);
        p.extend_from_slice(&[7; 20]);
        p.extend_from_slice(b"shop\0");
        p.extend_from_slice(&[33, 0]);
        p.extend_from_slice(b"mysql_native_password\0");
        let c = ChangeUser::parse(&p, caps).unwrap();
        assert_eq!(c.user, "bob");
        assert_eq!(c.auth_response, vec![7; 20]);
        assert_eq!(c.database.as_deref(), Some("shop"));
        assert_eq!(c.collation, Some(33));
        assert_eq!(
            c.auth_plugin.as_deref(),
            Some(&b"mysql_native_password"[..])
        );
        assert!(ChangeUser::parse(b"no-terminator", caps).is_err());
        assert!(ChangeUser::parse(b"bob\0\x05ab", caps).is_err());
    }

    #[test]
    fn greeting_carries_nonce_and_plugin() {
        let g = Greeting {
            server_version: "10.11.6-MariaDB",
            connection_id: 7,
            nonce: [b'a'; 20],
            capabilities: CapabilityFlags::CLIENT_PROTOCOL_41
                | CapabilityFlags::CLIENT_SECURE_CONNECTION
                | CapabilityFlags::CLIENT_PLUGIN_AUTH,
            collation: 45,
            method: AuthMethod::CachingSha2,
        };
        let bytes = g.encode();
        let parsed: mysql_common::packets::HandshakePacket<'_> =
            mysql_common::proto::MyDeserialize::deserialize(
                (),
                &mut mysql_common::io::ParseBuf(&bytes),
            )
            .unwrap();
        assert_eq!(parsed.connection_id(), 7);
        assert_eq!(parsed.nonce(), vec![b'a'; 20]);
        assert_eq!(
            parsed.auth_plugin_name_ref(),
            Some(&b"caching_sha2_password"[..])
        );
        assert_eq!(parsed.server_version_ref(), b"10.11.6-MariaDB");
    }
}
