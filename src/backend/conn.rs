//! One backend connection: connect, authenticate, run control statements, and expose its
//! packet stream to the relay.

use std::time::{Duration, Instant};

use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakePacket;
use mysql_common::proto::MyDeserialize;

use super::BackendStream;
use crate::config::Dsn;
use crate::wire::auth::{AuthMethod, FAST_AUTH_OK, PERFORM_FULL_AUTH};
use crate::wire::packet::MAX_CHUNK;
use crate::wire::response::{put_lenenc_bytes, read_lenenc_int};
use crate::wire::scanner::{Progress, ResponseKind, ResponseScanner, Summary};
use crate::wire::{MysqlError, PacketIo, WireError};

/// Capabilities whose setting changes the bytes of responses. A backend connection is only
/// handed to a client whose choice of these matches its own, so relayed bytes are exactly
/// what the client expects.
pub const WIRE_CAPS: CapabilityFlags = CapabilityFlags::from_bits_truncate(
    CapabilityFlags::CLIENT_FOUND_ROWS.bits()
        | CapabilityFlags::CLIENT_LOCAL_FILES.bits()
        | CapabilityFlags::CLIENT_IGNORE_SPACE.bits()
        | CapabilityFlags::CLIENT_INTERACTIVE.bits()
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS.bits()
        | CapabilityFlags::CLIENT_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_SESSION_TRACK.bits()
        | CapabilityFlags::CLIENT_DEPRECATE_EOF.bits()
        | CapabilityFlags::CLIENT_ODBC.bits(),
);

/// Capabilities Tandem always uses toward the backend, when the server has them.
const BASE_CAPS: CapabilityFlags = CapabilityFlags::from_bits_truncate(
    CapabilityFlags::CLIENT_LONG_PASSWORD.bits()
        | CapabilityFlags::CLIENT_LONG_FLAG.bits()
        | CapabilityFlags::CLIENT_PROTOCOL_41.bits()
        | CapabilityFlags::CLIENT_TRANSACTIONS.bits()
        | CapabilityFlags::CLIENT_SECURE_CONNECTION.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA.bits(),
);

/// What a backend connection must match to serve a client: the response-shaping
/// capabilities and the connection collation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub caps: CapabilityFlags,
    pub collation: u8,
}

impl ConnKey {
    pub fn new(client_caps: CapabilityFlags, collation: u8) -> Self {
        ConnKey {
            caps: client_caps & WIRE_CAPS,
            collation,
        }
    }
}

/// Largest packet Tandem will receive from a backend (the protocol maximum is 1GiB).
const BACKEND_MAX_PACKET: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    #[error("{0}")]
    Server(MysqlError),
    #[error("backend connection failed: {0}")]
    Wire(#[from] WireError),
    #[error("backend connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected reply from the backend: {0}")]
    Protocol(String),
}

impl BackendError {
    /// True when the connection can no longer be used.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, BackendError::Server(_))
    }
}

/// Facts about the server learned from its greeting.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub capabilities: CapabilityFlags,
}

/// How the server reads a session's statement text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSettings {
    pub sql_mode: String,
    /// `@@character_set_client`: the character set of statement text and string parameters.
    pub charset: String,
}

pub struct BackendConn {
    io: PacketIo<BackendStream>,
    pub key: ConnKey,
    /// Capabilities in force on this connection.
    pub caps: CapabilityFlags,
    pub thread_id: u32,
    pub server: ServerInfo,
    pub status: StatusFlags,
    pub last_used: Instant,
    broken: bool,
    /// The current database as Tandem last learned it (connecting with one, COM_INIT_DB, a
    /// `SELECT DATABASE()`); `None` when it may have changed since, see
    /// [`Self::forget_database`].
    database: Option<String>,
    /// The session's sql_mode and client character set as Tandem last read them; `None` when
    /// they may have changed since (a relayed SET, a query of several statements, a reset).
    session: Option<SessionSettings>,
}

impl std::fmt::Debug for BackendConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConn")
            .field("thread_id", &self.thread_id)
            .field("key", &self.key)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl BackendConn {
    /// Opens and authenticates a connection for clients with `key`.
    pub async fn connect(dsn: &Dsn, key: ConnKey, timeout: Duration) -> Result<Self, BackendError> {
        let addr = match &dsn.socket {
            Some(path) => format!("unix:{path}"),
            None => format!("{}:{}", dsn.host, dsn.port),
        };
        match tokio::time::timeout(timeout, Self::connect_inner(dsn, key, &addr)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::ConnectTimeout(addr)),
        }
    }

    async fn connect_inner(dsn: &Dsn, key: ConnKey, addr: &str) -> Result<Self, BackendError> {
        let stream = match &dsn.socket {
            Some(path) => BackendStream::connect_unix(std::path::Path::new(path)).await,
            None => BackendStream::connect_tcp(addr).await,
        }
        .map_err(|source| BackendError::Connect {
            addr: addr.to_string(),
            source,
        })?;
        let mut io = PacketIo::new(stream);
        let greeting = io
            .read_packet(BACKEND_MAX_PACKET)
            .await?
            .ok_or(WireError::Truncated)?;
        if let Some(e) = MysqlError::decode(&greeting.payload) {
            return Err(BackendError::Server(e));
        }
        let hs = HandshakePacket::deserialize((), &mut ParseBuf(&greeting.payload))
            .map_err(|e| BackendError::Protocol(format!("bad greeting: {e}")))?;
        let server = ServerInfo {
            version: hs.server_version_str().into_owned(),
            capabilities: hs.capabilities(),
        };
        let nonce = hs.nonce();
        let mut caps = (BASE_CAPS | key.caps) & hs.capabilities();
        if dsn.database.is_some() {
            caps |= CapabilityFlags::CLIENT_CONNECT_WITH_DB & hs.capabilities();
        }
        let method = hs
            .auth_plugin_name_ref()
            .and_then(AuthMethod::from_name)
            .unwrap_or(AuthMethod::Native);
        let password = dsn.password.as_bytes();

        let mut resp = Vec::with_capacity(128);
        resp.extend_from_slice(&caps.bits().to_le_bytes());
        resp.extend_from_slice(&(BACKEND_MAX_PACKET as u32).to_le_bytes());
        resp.push(key.collation);
        resp.extend_from_slice(&[0; 23]);
        resp.extend_from_slice(dsn.user.as_bytes());
        resp.push(0);
        put_lenenc_bytes(&mut resp, &method.scramble(&nonce, password));
        if let Some(db) = dsn
            .database
            .as_deref()
            .filter(|_| caps.contains(CapabilityFlags::CLIENT_CONNECT_WITH_DB))
        {
            resp.extend_from_slice(db.as_bytes());
            resp.push(0);
        }
        resp.extend_from_slice(method.name().as_bytes());
        resp.push(0);
        io.write_packet(greeting.last_seq.wrapping_add(1), &resp);
        io.flush().await?;

        let mut method = method;
        let mut nonce = nonce;
        let status = loop {
            let p = io
                .read_packet(BACKEND_MAX_PACKET)
                .await?
                .ok_or(WireError::Truncated)?;
            let mut seq = p.last_seq.wrapping_add(1);
            match p.payload.first() {
                Some(0x00) => {
                    break ok_status(&p.payload).unwrap_or(StatusFlags::SERVER_STATUS_AUTOCOMMIT)
                }
                Some(0xff) => {
                    return Err(BackendError::Server(
                        MysqlError::decode(&p.payload).unwrap_or_else(MysqlError::bad_handshake),
                    ))
                }
                Some(0xfe) => {
                    // Auth switch: plugin name, NUL, new nonce.
                    let body = &p.payload[1..];
                    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                    method = AuthMethod::from_name(&body[..end]).ok_or_else(|| {
                        BackendError::Protocol(format!(
                            "the backend asks for auth plugin '{}', which Tandem does not speak",
                            String::from_utf8_lossy(&body[..end])
                        ))
                    })?;
                    let mut n = body.get(end + 1..).unwrap_or(&[]).to_vec();
                    if n.last() == Some(&0) {
                        n.pop();
                    }
                    nonce = n;
                    io.write_packet(seq, &method.scramble(&nonce, password));
                    io.flush().await?;
                }
                Some(0x01) if method == AuthMethod::CachingSha2 => match p.payload.get(1) {
                    Some(&FAST_AUTH_OK) => {}
                    Some(&PERFORM_FULL_AUTH) => {
                        // Plain TCP: fetch the server's RSA key and send the password
                        // encrypted with it.
                        io.write_packet(seq, &[0x02]);
                        io.flush().await?;
                        let key = io
                            .read_packet(BACKEND_MAX_PACKET)
                            .await?
                            .ok_or(WireError::Truncated)?;
                        seq = key.last_seq.wrapping_add(1);
                        let pem = key.payload.get(1..).unwrap_or(&[]);
                        let mut pass = password.to_vec();
                        pass.push(0);
                        for (i, b) in pass.iter_mut().enumerate() {
                            *b ^= nonce[i % nonce.len()];
                        }
                        let encrypted = mysql_common::crypto::encrypt(&pass, pem);
                        io.write_packet(seq, &encrypted);
                        io.flush().await?;
                    }
                    _ => return Err(BackendError::Protocol("bad caching_sha2 reply".into())),
                },
                _ => {
                    return Err(BackendError::Protocol(
                        "unexpected packet during authentication".into(),
                    ))
                }
            }
        };
        let thread_id = hs.connection_id();
        let database = dsn
            .database
            .clone()
            .filter(|_| caps.contains(CapabilityFlags::CLIENT_CONNECT_WITH_DB));
        Ok(BackendConn {
            database,
            io,
            key,
            caps,
            thread_id,
            server,
            status,
            last_used: Instant::now(),
            broken: false,
            session: None,
        })
    }

    /// The packet stream, for relaying. A caller that leaves it mid-response must call
    /// [`Self::mark_broken`].
    pub fn io(&mut self) -> &mut PacketIo<BackendStream> {
        &mut self.io
    }

    /// The connection's socket, to learn (while no command is under way) that the server
    /// closed it.
    pub fn stream(&self) -> &BackendStream {
        self.io.get_ref()
    }

    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn deprecate_eof(&self) -> bool {
        self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
    }

    /// Sends a command and reads its whole response, returning what the scanner saw. A server
    /// error is returned as [`BackendError::Server`]; the connection stays usable.
    pub async fn command(
        &mut self,
        cmd: u8,
        arg: &[u8],
        kind: ResponseKind,
    ) -> Result<Summary, BackendError> {
        let r = self.command_inner(cmd, arg, kind, None, None).await;
        self.settle(r)
    }

    /// Runs a query and collects its text rows (for small control-plane results).
    pub async fn query_rows(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        let rows = self.query_raw(sql).await?;
        Ok(text_rows(rows))
    }

    /// Runs a query and collects its rows as the bytes the server sent (text protocol).
    pub async fn query_raw(&mut self, sql: &str) -> Result<Vec<Row>, BackendError> {
        self.collect(sql, None).await
    }

    /// Runs a query and collects its text rows with the columns' names: for results whose
    /// columns differ between server versions (`SHOW SLAVE STATUS`).
    pub async fn query_named(
        &mut self,
        sql: &str,
    ) -> Result<(Vec<String>, Vec<Vec<Option<String>>>), BackendError> {
        let mut names = Vec::new();
        let rows = self.collect(sql, Some(&mut names)).await?;
        Ok((names, text_rows(rows)))
    }

    /// Runs a query, collecting its rows, and its column names when `names` asks for them.
    async fn collect(
        &mut self,
        sql: &str,
        names: Option<&mut Vec<String>>,
    ) -> Result<Vec<Row>, BackendError> {
        let mut rows = Vec::new();
        let r = self
            .command_inner(
                0x03,
                sql.as_bytes(),
                ResponseKind::Query,
                Some(&mut rows),
                names,
            )
            .await;
        self.settle(r).map(|_| rows)
    }

    /// Runs a statement, discarding any result.
    pub async fn execute(&mut self, sql: &str) -> Result<Summary, BackendError> {
        self.command(0x03, sql.as_bytes(), ResponseKind::Query)
            .await
    }

    pub async fn ping(&mut self) -> Result<(), BackendError> {
        self.command(0x0e, &[], ResponseKind::Single)
            .await
            .map(|_| ())
    }

    /// COM_RESET_CONNECTION: ends any transaction, drops temporary tables, prepared
    /// statements and user variables, and restores session variables.
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        self.database = None;
        self.session = None;
        self.command(0x1f, &[], ResponseKind::Single)
            .await
            .map(|_| ())
    }

    pub async fn init_db(&mut self, db: &str) -> Result<(), BackendError> {
        self.database = None;
        self.command(0x02, db.as_bytes(), ResponseKind::Single)
            .await?;
        self.database = Some(db.to_string());
        Ok(())
    }

    /// The connection's current database (`None`: no database selected). Asks the server only
    /// when Tandem does not know it, which saves AT mode a round trip per statement on an
    /// unqualified table.
    pub async fn current_database(&mut self) -> Result<Option<String>, BackendError> {
        if self.database.is_none() {
            self.database = self
                .query_rows("SELECT DATABASE()")
                .await?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next().flatten());
        }
        Ok(self.database.clone())
    }

    /// Called before relaying a command that may change the current database (`USE`, a
    /// query of several statements, COM_INIT_DB, COM_CHANGE_USER, COM_RESET_CONNECTION).
    pub fn forget_database(&mut self) {
        self.database = None;
    }

    /// The session settings that decide how the server reads statement text, asked of the
    /// server only when Tandem does not know them.
    pub async fn session_settings(&mut self) -> Result<SessionSettings, BackendError> {
        self.session_settings_ref().await.cloned()
    }

    /// [`Self::session_settings`], borrowed: what a statement's hot path reads.
    pub async fn session_settings_ref(&mut self) -> Result<&SessionSettings, BackendError> {
        if self.session.is_none() {
            let row = self
                .query_rows("SELECT @@SESSION.sql_mode, @@SESSION.character_set_client")
                .await?
                .into_iter()
                .next()
                .unwrap_or_default();
            let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            self.session = Some(SessionSettings {
                sql_mode: cell(0),
                charset: cell(1),
            });
        }
        Ok(self.session.get_or_insert_with(SessionSettings::default))
    }

    /// Whether [`Self::session_settings`] would answer without asking the server.
    pub fn session_settings_known(&self) -> bool {
        self.session.is_some()
    }

    /// A relayed `SET` made these changes (read from its text; see
    /// [`crate::sql::settings`]).
    pub fn apply_settings(&mut self, changes: &[crate::sql::settings::Change]) {
        use crate::sql::settings::Change;
        if let Some(s) = self.session.as_mut() {
            for c in changes {
                match c {
                    Change::SqlMode(m) => s.sql_mode = m.clone(),
                    Change::Charset(c) => s.charset = c.clone(),
                }
            }
        }
    }

    /// Called before relaying a command that may change session variables.
    pub fn forget_session_settings(&mut self) {
        self.session = None;
    }

    fn settle(
        &mut self,
        r: Result<(Summary, Option<MysqlError>), BackendError>,
    ) -> Result<Summary, BackendError> {
        match r {
            Ok((s, None)) => {
                if let Some(st) = s.status {
                    self.status = st;
                }
                self.last_used = Instant::now();
                Ok(s)
            }
            Ok((_, Some(e))) => Err(BackendError::Server(e)),
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Queues a query without waiting for its reply: it is sent with the next flush, and its
    /// reply must be read with [`read_reply`](Self::read_reply), replies in the order the
    /// queries were queued. The server runs pipelined queries one after another, exactly as
    /// if each had waited: this only saves round trips.
    pub fn queue(&mut self, sql: &str) {
        self.write_command(0x03, sql.as_bytes());
    }

    /// Sends whatever is queued.
    pub async fn send_queued(&mut self) -> Result<(), BackendError> {
        let r = self.io.flush().await.map_err(BackendError::from);
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// Sends whatever is queued, then reads the oldest unread reply (a text-protocol query's),
    /// collecting its rows when `rows` asks for them.
    pub async fn read_reply(
        &mut self,
        rows: Option<&mut Vec<Row>>,
    ) -> Result<Summary, BackendError> {
        let r = self.read_response(ResponseKind::Query, rows, None).await;
        self.settle(r)
    }

    fn write_command(&mut self, cmd: u8, arg: &[u8]) {
        let mut payload = Vec::with_capacity(1 + arg.len());
        payload.push(cmd);
        payload.extend_from_slice(arg);
        self.io.write_packet(0, &payload);
    }

    /// Sends one command and reads its response.
    async fn command_inner(
        &mut self,
        cmd: u8,
        arg: &[u8],
        kind: ResponseKind,
        rows: Option<&mut Vec<Row>>,
        names: Option<&mut Vec<String>>,
    ) -> Result<(Summary, Option<MysqlError>), BackendError> {
        self.write_command(cmd, arg);
        self.read_response(kind, rows, names).await
    }

    /// Flushes, then reads one response packet by packet. Rows are decoded only when `rows`
    /// asks for them, column names only when `names` does; an ERR packet's content is
    /// returned beside the summary.
    async fn read_response(
        &mut self,
        kind: ResponseKind,
        mut rows: Option<&mut Vec<Row>>,
        mut names: Option<&mut Vec<String>>,
    ) -> Result<(Summary, Option<MysqlError>), BackendError> {
        self.io.flush().await?;
        let mut scanner = ResponseScanner::new(kind, self.deprecate_eof());
        let mut columns = 0u64;
        // Column definitions still to come after a column count.
        let mut definitions = 0u64;
        loop {
            let p = self
                .io
                .read_packet(BACKEND_MAX_PACKET)
                .await?
                .ok_or(WireError::Truncated)?;
            if p.payload.len() >= MAX_CHUNK {
                return Err(BackendError::Protocol(
                    "control-plane reply too large".into(),
                ));
            }
            // The scanner reads framed bytes: give it this packet's header and payload.
            let mut framed = Vec::with_capacity(4 + p.payload.len());
            let len = (p.payload.len() as u32).to_le_bytes();
            framed.extend_from_slice(&[len[0], len[1], len[2], p.seq]);
            framed.extend_from_slice(&p.payload);
            let (rows_before, sets_before) =
                (scanner.summary().rows, scanner.summary().result_sets);
            let progress = scanner
                .feed(&framed)
                .map_err(|e| BackendError::Protocol(e.to_string()))?;
            if let Some(rows) = rows.as_deref_mut() {
                if scanner.summary().result_sets > sets_before {
                    columns = read_lenenc_int(&p.payload).map_or(0, |(n, _)| n);
                    definitions = columns;
                } else if scanner.summary().rows > rows_before {
                    rows.push(decode_text_row(&p.payload, columns)?);
                } else if definitions > 0 {
                    definitions -= 1;
                    if let Some(names) = names.as_deref_mut() {
                        names.push(column_name(&p.payload)?);
                    }
                }
            }
            match progress {
                Progress::NeedMore => {}
                Progress::Done(_) => {
                    let err = MysqlError::decode(&p.payload);
                    return Ok((scanner.into_summary(), err));
                }
                Progress::LocalInfile(_) => {
                    // Tandem never sends LOAD DATA LOCAL itself; answer with an empty file.
                    self.io.write_packet(p.seq.wrapping_add(1), &[]);
                    self.io.flush().await?;
                    scanner.resume_after_infile();
                }
            }
        }
    }
}

fn ok_status(payload: &[u8]) -> Option<StatusFlags> {
    let (_, a) = read_lenenc_int(payload.get(1..)?)?;
    let (_, b) = read_lenenc_int(payload.get(1 + a..)?)?;
    let s = payload.get(1 + a + b..3 + a + b)?;
    Some(StatusFlags::from_bits_truncate(u16::from_le_bytes([
        s[0], s[1],
    ])))
}

/// One text-protocol row: each cell's bytes, or `None` for NULL.
pub type Row = Vec<Option<Vec<u8>>>;

/// Rows as text (control-plane results are small and textual).
fn text_rows(rows: Vec<Row>) -> Vec<Vec<Option<String>>> {
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .collect()
        })
        .collect()
}

/// The name of a column definition (protocol 4.1: catalog, schema, table, original table,
/// then name, each a length-encoded string).
fn column_name(payload: &[u8]) -> Result<String, BackendError> {
    let bad = || BackendError::Protocol("bad column definition".into());
    let mut rest = payload;
    for field in 0..5 {
        let (len, n) = read_lenenc_int(rest).ok_or_else(bad)?;
        let end = n
            .checked_add(usize::try_from(len).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        let value = rest.get(n..end).ok_or_else(bad)?;
        if field == 4 {
            return Ok(String::from_utf8_lossy(value).into_owned());
        }
        rest = &rest[end..];
    }
    Err(bad())
}

fn decode_text_row(payload: &[u8], columns: u64) -> Result<Row, BackendError> {
    let mut out = Vec::with_capacity(columns as usize);
    let mut rest = payload;
    for _ in 0..columns {
        if rest.first() == Some(&0xfb) {
            out.push(None);
            rest = &rest[1..];
            continue;
        }
        let (len, n) =
            read_lenenc_int(rest).ok_or_else(|| BackendError::Protocol("bad row".into()))?;
        let len = len as usize;
        let cell = rest
            .get(n..n + len)
            .ok_or_else(|| BackendError::Protocol("row shorter than its cells".into()))?;
        out.push(Some(cell.to_vec()));
        rest = &rest[n + len..];
    }
    Ok(out)
}
