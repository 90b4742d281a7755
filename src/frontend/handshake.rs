//! The connection phase with a client: greeting, optional TLS upgrade, authentication, and
//! the initial database.

use std::sync::Arc;
use std::time::Duration;

use super::listener::{ListenerContext, Peer};
use super::session::{Authenticated, Session};
use crate::backend::ConnKey;
use crate::wire::auth::{self, AuthMethod};
use crate::wire::handshake::{auth_switch_request, ssl_request, Greeting, HandshakeResponse};
use crate::wire::response::ok_packet;
use crate::wire::stream::{ClientStream, Rewind};
use crate::wire::{MysqlError, PacketIo, WireError};
use mysql_common::constants::{CapabilityFlags, StatusFlags};

/// A client that has not finished its handshake by then is disconnected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshake packets are small; anything larger is not a handshake.
const HANDSHAKE_MAX_PACKET: usize = 64 * 1024;

/// Used until the data source has been reached once.
const FALLBACK_VERSION: &str = "5.7.99-Tandem";

/// What Tandem can offer a client, before intersecting with the backend's capabilities.
const OFFERED_CAPS: CapabilityFlags = CapabilityFlags::from_bits_truncate(
    CapabilityFlags::CLIENT_LONG_PASSWORD.bits()
        | CapabilityFlags::CLIENT_FOUND_ROWS.bits()
        | CapabilityFlags::CLIENT_LONG_FLAG.bits()
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB.bits()
        | CapabilityFlags::CLIENT_ODBC.bits()
        | CapabilityFlags::CLIENT_LOCAL_FILES.bits()
        | CapabilityFlags::CLIENT_IGNORE_SPACE.bits()
        | CapabilityFlags::CLIENT_PROTOCOL_41.bits()
        | CapabilityFlags::CLIENT_INTERACTIVE.bits()
        | CapabilityFlags::CLIENT_TRANSACTIONS.bits()
        | CapabilityFlags::CLIENT_SECURE_CONNECTION.bits()
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS.bits()
        | CapabilityFlags::CLIENT_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH.bits()
        | CapabilityFlags::CLIENT_CONNECT_ATTRS.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA.bits()
        | CapabilityFlags::CLIENT_SESSION_TRACK.bits()
        | CapabilityFlags::CLIENT_DEPRECATE_EOF.bits(),
);

/// Capabilities that concern only the connection phase, which Tandem handles itself.
const TANDEM_ONLY_CAPS: CapabilityFlags = CapabilityFlags::from_bits_truncate(
    CapabilityFlags::CLIENT_LONG_PASSWORD.bits()
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB.bits()
        | CapabilityFlags::CLIENT_PROTOCOL_41.bits()
        | CapabilityFlags::CLIENT_SECURE_CONNECTION.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH.bits()
        | CapabilityFlags::CLIENT_CONNECT_ATTRS.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA.bits(),
);

#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("handshake timed out")]
    Timeout,
}

/// Runs the connection phase. `Ok(None)` means the client was refused with an error packet
/// (or left) and the connection is done.
pub async fn accept(
    ctx: &Arc<ListenerContext>,
    stream: ClientStream,
    peer: Peer,
) -> Result<Option<Session>, HandshakeFailure> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_inner(ctx, stream, peer)).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeFailure::Timeout),
    }
}

async fn accept_inner(
    ctx: &Arc<ListenerContext>,
    stream: ClientStream,
    peer: Peer,
) -> Result<Option<Session>, HandshakeFailure> {
    let server = ctx.pool.server_info();
    let backend_caps = server.as_ref().map_or(CapabilityFlags::all(), |s| {
        s.capabilities | TANDEM_ONLY_CAPS
    });
    let mut offered = OFFERED_CAPS & backend_caps;
    // A Unix socket is secure transport already.
    if ctx.tls.is_some() && !stream.is_secure() {
        offered |= CapabilityFlags::CLIENT_SSL;
    }
    let version = ctx
        .server_version
        .clone()
        .or_else(|| server.map(|s| s.version))
        .unwrap_or_else(|| FALLBACK_VERSION.to_string());
    let nonce = auth::new_nonce();
    let connection_id = ctx.next_connection_id();
    let greeting = Greeting {
        server_version: &version,
        connection_id,
        nonce,
        capabilities: offered,
        collation: 45,
        method: ctx.auth_method,
    };

    let mut io = PacketIo::new(stream);
    io.write_packet(0, &greeting.encode());
    io.flush().await?;

    let Some(mut first) = io.read_packet(HANDSHAKE_MAX_PACKET).await? else {
        return Ok(None);
    };
    if let (Some(_), Some(acceptor)) = (ssl_request(&first.payload), ctx.tls.as_ref()) {
        let (stream, rest) = io.into_parts();
        let ClientStream::Plain(tcp) = stream else {
            return Ok(None);
        };
        let tls = acceptor
            .accept(Rewind::new(rest, tcp))
            .await
            .map_err(HandshakeFailure::Tls)?;
        io = PacketIo::new(ClientStream::Tls(Box::new(tls)));
        let Some(p) = io.read_packet(HANDSHAKE_MAX_PACKET).await? else {
            return Ok(None);
        };
        first = p;
    }
    let mut seq = first.last_seq.wrapping_add(1);

    let response = match HandshakeResponse::parse(&first.payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "bad handshake response");
            refuse(&mut io, seq, MysqlError::bad_handshake(), ctx).await?;
            return Ok(None);
        }
    };
    if ctx.tls_required && !io.get_ref().is_secure() {
        refuse(&mut io, seq, MysqlError::insecure_transport(), ctx).await?;
        return Ok(None);
    }
    let caps = response.capabilities & offered;
    let host = peer.host();

    let auth = Credentials {
        user: &response.user,
        plugin: response.auth_plugin.as_deref(),
        answer: response.auth_response.clone(),
    };
    let (next, verdict) = authenticate(ctx, &mut io, caps, &nonce, auth, seq, &host).await?;
    seq = next;
    if let Err(e) = verdict {
        refuse(&mut io, seq, e, ctx).await?;
        return Ok(None);
    }

    let key = ConnKey::new(caps, response.collation);
    let who = Authenticated {
        caps,
        key,
        user: response.user.clone(),
        peer,
        connection_id,
        nonce,
    };
    let mut session = Session::new(ctx.clone(), io, who);
    if let Some(db) = &response.database {
        // Like the database itself, refuse the connection when its schema is unusable.
        if let Err(e) = session.pin_backend(Some(db)).await {
            refuse(session.client(), seq, e, ctx).await?;
            return Ok(None);
        }
    }
    let mut ok = ok_packet(0, 0, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 0);
    if caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK) {
        ok.push(0); // empty info string; no session state changes
    }
    session.client().write_packet(seq, &ok);
    session.client().flush().await?;
    Ok(Some(session))
}

/// What a client offers to prove who it is.
pub(super) struct Credentials<'a> {
    pub user: &'a str,
    /// The auth plugin the client used for `answer`, if it named one.
    pub plugin: Option<&'a [u8]>,
    pub answer: Vec<u8>,
}

/// Checks a client's credentials against the listener's users, asking the client to switch
/// plugins when it answered with one Tandem does not speak. Returns the next sequence id and
/// the verdict: the error to refuse the client with, if any.
pub(super) async fn authenticate(
    ctx: &ListenerContext,
    io: &mut PacketIo<ClientStream>,
    caps: CapabilityFlags,
    nonce: &[u8; 20],
    creds: Credentials<'_>,
    mut seq: u8,
    host: &str,
) -> Result<(u8, Result<(), MysqlError>), HandshakeFailure> {
    let Some(password) = ctx.users.get(creds.user) else {
        let e = MysqlError::access_denied(creds.user, host, !creds.answer.is_empty());
        return Ok((seq, Err(e)));
    };
    let (method, answer) = match creds.plugin.and_then(AuthMethod::from_name) {
        Some(m) => (m, creds.answer),
        None if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) => {
            io.write_packet(seq, &auth_switch_request(ctx.auth_method, nonce));
            io.flush().await?;
            let p = io
                .read_packet(HANDSHAKE_MAX_PACKET)
                .await?
                .ok_or(WireError::Truncated)?;
            seq = p.last_seq.wrapping_add(1);
            (ctx.auth_method, p.payload.to_vec())
        }
        None => (AuthMethod::Native, creds.answer),
    };
    if !method.verify(nonce, password.as_bytes(), &answer) {
        let e = MysqlError::access_denied(creds.user, host, !answer.is_empty());
        return Ok((seq, Err(e)));
    }
    if method == AuthMethod::CachingSha2 {
        seq = io.write_packet(seq, &[0x01, auth::FAST_AUTH_OK]);
    }
    Ok((seq, Ok(())))
}

async fn refuse(
    io: &mut PacketIo<ClientStream>,
    seq: u8,
    e: MysqlError,
    ctx: &ListenerContext,
) -> Result<(), HandshakeFailure> {
    ctx.metrics.error(e.code);
    io.write_packet(seq, &e.encode());
    io.flush().await?;
    let _ = io.shutdown().await;
    Ok(())
}
