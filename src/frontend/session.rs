//! One client's session: its command loop and the backend connection pinned to it.
//!
//! The session takes a backend connection on its first statement and keeps it until the
//! client leaves, so everything the database keeps per connection (session variables, user
//! variables, temporary tables, prepared statements, transactions, LAST_INSERT_ID) means
//! exactly what it would mean on a direct connection.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use mysql_common::constants::{CapabilityFlags, StatusFlags};
use tokio::sync::oneshot;

use super::functions;
use super::global::{Global, GlobalStatement};
use super::handshake::{authenticate, Credentials};
use super::kill;
use super::listener::{ListenerContext, Peer};
use super::relay::{relay, RelayError};
use super::route::{LeftOn, ReplicaConn};
use super::shard::ShardSession;
use crate::at::branch::BranchWork;
use crate::backend::pool::AcquireError;
use crate::backend::{BackendError, ConnKey, PooledConn};
use crate::exec::session_state::SessionState;
use crate::sql::dml::{self, SessionEffect};
use crate::sql::functions::{self as sql_functions, Arg, Call, CallError};
use crate::sql::params;
use crate::sql::{classify, hints, lex, settings, sysvars, StatementKind};
use crate::wire::handshake::ChangeUser;
use crate::wire::response::{ok_packet, write_prepare_ok, write_result, RowFormat};
use crate::wire::scanner::{ResponseKind, Summary};
use crate::wire::stream::ClientStream;
use crate::wire::{MysqlError, PacketIo, WireError};

// Command bytes (COM_*).
pub(super) const COM_QUIT: u8 = 0x01;
pub(super) const COM_INIT_DB: u8 = 0x02;
pub(super) const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_REFRESH: u8 = 0x07;
pub(super) const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_INFO: u8 = 0x0a;
pub(super) const COM_PROCESS_KILL: u8 = 0x0c;
const COM_DEBUG: u8 = 0x0d;
pub(super) const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
pub(super) const COM_STMT_PREPARE: u8 = 0x16;
pub(super) const COM_STMT_EXECUTE: u8 = 0x17;
pub(super) const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub(super) const COM_STMT_CLOSE: u8 = 0x19;
pub(super) const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
pub(super) const COM_STMT_FETCH: u8 = 0x1c;
pub(super) const COM_RESET_CONNECTION: u8 = 0x1f;

/// Whether the session goes on after a command.
pub(super) enum Flow {
    Continue,
    Close,
}

/// A statement the client prepared: enough to classify its executions and, when one joins a
/// global transaction, to analyse it with its parameters filled in.
pub(super) struct PreparedStmt {
    pub kind: StatementKind,
    /// The statement's text (`None` when it is not UTF-8).
    pub sql: Option<String>,
    pub params: u16,
    /// Parameter types bound by the last execution.
    pub types: Vec<[u8; 2]>,
    /// COM_STMT_SEND_LONG_DATA sent a parameter since the last execution or reset.
    pub long_data: bool,
    /// The text carries an XID hint (read once, at prepare).
    pub has_hint: bool,
    /// What in the text may change data although it is a read or a `SET` (see
    /// [`dml::may_write`]), read once, at prepare.
    pub may_write: Option<String>,
    /// `rw_split`: a replica may run its executions (a read that reads nothing only the
    /// primary's connection has), when the session holds nothing that keeps reads on the
    /// primary. Decided at prepare.
    pub replica_read: bool,
}

/// What the handshake established about a client.
pub(super) struct Authenticated {
    pub caps: CapabilityFlags,
    pub key: ConnKey,
    pub user: String,
    pub peer: Peer,
    pub connection_id: u32,
    pub nonce: [u8; 20],
}

pub struct Session {
    pub(super) ctx: Arc<ListenerContext>,
    pub(super) client: PacketIo<ClientStream>,
    caps: CapabilityFlags,
    pub(super) key: ConnKey,
    user: String,
    peer: Peer,
    connection_id: u32,
    /// The greeting's nonce; COM_CHANGE_USER answers it again.
    nonce: [u8; 20],
    pub(super) backend: Option<PooledConn>,
    /// Prepared statement id → kind of statement, for metrics.
    pub(super) prepared: HashMap<u32, PreparedStmt>,
    /// Prepared calls of Tandem's own SQL functions, answered without the backend, under ids
    /// from the top half of the range (the database counts its own from 1).
    pub(super) tandem_stmts: HashMap<u32, Call>,
    next_tandem_stmt: u32,
    /// The global transaction this session joins (`SET tandem_xid`).
    pub(super) xid: Option<String>,
    /// The AT branch the current local transaction is, while it runs.
    pub(super) branch: Option<BranchWork>,
    /// Why the local transaction that was a branch is gone (rolled back by the database, or
    /// by Tandem when a statement could not be undone exactly): until the client's ROLLBACK,
    /// its statements are refused rather than run outside the transaction it believes open.
    pub(super) aborted: Option<String>,
    /// The open local transaction changed data (or may have: a read that called a stored
    /// function) before any statement of it joined a global transaction, and what did: such
    /// a transaction cannot become a branch, as those changes have no undo.
    pub(super) local_writes: Option<String>,
    /// An XA transaction is open (`XA START` seen, no `XA COMMIT`/`ROLLBACK` yet): its local
    /// transaction cannot become a branch.
    pub(super) xa: bool,
    /// Temporary tables the session created (lower case): they hide base tables of the same
    /// name, which Tandem's images would read instead.
    pub(super) temporary: HashSet<String>,
    /// A statement failed inside a local transaction outside any global one, so whether the
    /// transaction is still open is unknown until asked (see `enter_global`).
    pub(super) status_stale: bool,
    /// The error code of the last statement relayed from the primary, if it failed.
    pub(super) last_error: Option<u16>,
    /// `rw_split`: the session's connection to a replica, for reads.
    pub(super) replica: Option<ReplicaConn>,
    /// `rw_split`: the session-variable statements to carry to a replica connection.
    pub(super) state: SessionState,
    /// `rw_split`: why the session's reads stay on the primary, when they do.
    pub(super) pinned: Option<&'static str>,
    /// `rw_split`: which connection holds what earlier statements left (`ROW_COUNT()`,
    /// `FOUND_ROWS()`, warnings).
    pub(super) left_on: LeftOn,
    /// `rw_split`: how many statements that may have written the session ran on the
    /// primary (a replica connection that has applied fewer waits before a read).
    pub(super) writes: u64,
    /// `rw_split`: whether the statement being prepared may run on a replica (see
    /// [`PreparedStmt::replica_read`]), until the primary answers the prepare.
    preparing_replica_read: bool,
    /// `sharding`: the session's shard connections and transaction.
    pub(super) shard: Option<ShardSession>,
}

impl Session {
    pub(super) fn new(
        ctx: Arc<ListenerContext>,
        client: PacketIo<ClientStream>,
        who: Authenticated,
    ) -> Self {
        Session {
            ctx: ctx.clone(),
            client,
            caps: who.caps,
            key: who.key,
            user: who.user,
            peer: who.peer,
            connection_id: who.connection_id,
            nonce: who.nonce,
            backend: None,
            prepared: HashMap::new(),
            tandem_stmts: HashMap::new(),
            next_tandem_stmt: 0x8000_0000,
            xid: None,
            branch: None,
            aborted: None,
            local_writes: None,
            xa: false,
            temporary: HashSet::new(),
            status_stale: false,
            last_error: None,
            replica: None,
            state: SessionState::default(),
            pinned: None,
            left_on: LeftOn::default(),
            writes: 0,
            preparing_replica_read: false,
            shard: ctx
                .sharding
                .as_ref()
                .map(|s| ShardSession::new(s.pools.len())),
        }
    }

    pub(super) fn caps(&self) -> CapabilityFlags {
        self.caps
    }

    pub fn client(&mut self) -> &mut PacketIo<ClientStream> {
        &mut self.client
    }

    /// Takes a backend connection for this session, switching it to `database` if given.
    pub async fn pin_backend(&mut self, database: Option<&str>) -> Result<(), MysqlError> {
        if self.backend.is_some() {
            return Ok(());
        }
        if let Some(sharding) = &self.ctx.sharding {
            // The logical database is the only one; shard connections open per statement.
            return match database {
                Some(db) if db != sharding.topology.database => Err(MysqlError::new(
                    1049,
                    "42000",
                    format!("Unknown database '{db}'"),
                )),
                _ => Ok(()),
            };
        }
        let pool = &self.ctx.pool;
        let mut conn = pool
            .acquire_for(self.key, self.connection_id)
            .await
            .map_err(|e| match e {
                AcquireError::Exhausted(_) => MysqlError::too_many_connections(pool.name()),
                AcquireError::Connect(BackendError::Server(e)) => e,
                AcquireError::Connect(e) => {
                    MysqlError::backend_unavailable(pool.name(), &e.to_string())
                }
            })?;
        if let Some(db) = database {
            conn.init_db(db).await.map_err(|e| match e {
                BackendError::Server(e) => e,
                other => MysqlError::backend_unavailable(pool.name(), &other.to_string()),
            })?;
        }
        if self.ctx.replicas.is_some() {
            // rw_split's planner needs them for every statement: learnt now, before the
            // client's first statement, asking does not come between two of them.
            let _ = conn.session_settings().await;
        }
        self.backend = Some(conn);
        Ok(())
    }

    pub fn connection_id(&self) -> u32 {
        self.connection_id
    }

    pub(super) fn user(&self) -> &str {
        &self.user
    }

    /// COM_RESET_CONNECTION and COM_CHANGE_USER end the local transaction and the session's
    /// variables, `tandem_xid` among them.
    fn end_global_session(&mut self) {
        // The session's variables are gone too: what a replica connection holds is stale.
        self.replica = None;
        self.state.reset(None);
        self.pinned = None;
        self.left_on = LeftOn::default();
        self.xid = None;
        self.branch = None;
        self.aborted = None;
        self.local_writes = None;
        self.xa = false;
        self.temporary.clear();
    }

    /// Runs the command loop until the client quits, the connection fails, or `close`
    /// resolves (Tandem is draining; a statement in progress finishes first).
    pub async fn run(mut self, mut close: oneshot::Receiver<()>) {
        tracing::debug!(listener = %self.ctx.name, user = %self.user, peer = %self.peer, id = self.connection_id, "session started");
        let (_registered, killed) =
            self.ctx
                .sessions
                .register(self.connection_id, &self.user, self.pools());
        loop {
            let read = tokio::select! {
                biased;
                _ = &mut close => break,
                _ = killed.notified() => break,
                _ = server_spoke(self.backend.as_deref()) => {
                    self.backend_went_away().await;
                    break;
                }
                r = self.client.read_packet(self.ctx.max_allowed_packet) => r,
            };
            let packet = match read {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    self.on_read_error(e).await;
                    break;
                }
            };
            if packet.seq != 0 {
                // Every command starts a new exchange at sequence id 0.
                let e = MysqlError::packets_out_of_order();
                let _ = self.send_error(packet.last_seq.wrapping_add(1), e).await;
                break;
            }
            match self.dispatch(packet.last_seq, &packet.payload).await {
                Flow::Continue => {}
                Flow::Close => break,
            }
        }
        let _ = self.client.shutdown().await;
        tracing::debug!(listener = %self.ctx.name, id = self.connection_id, "session ended");
    }

    /// The database spoke on the session's connection while no command was under way: it
    /// is closing it (its `wait_timeout`, a `KILL`, a shutdown). The client's connection
    /// closes too, as a direct connection would, after what the server said last (an error
    /// packet, when it sent one), so drivers see a stale connection for what it is.
    async fn backend_went_away(&mut self) {
        let Some(mut b) = self.backend.take() else {
            return;
        };
        b.mark_broken();
        let said = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            b.io().read_packet(crate::wire::packet::MAX_CHUNK),
        )
        .await;
        tracing::debug!(id = self.connection_id, data_source = %self.ctx.pool.name(), "the database closed the session's connection");
        if let Ok(Ok(Some(p))) = said {
            if p.payload.first() == Some(&0xff) {
                self.client.write_packet(p.seq, &p.payload);
                let _ = self.client.flush().await;
            }
        }
    }

    async fn on_read_error(&mut self, e: WireError) {
        let reply = match &e {
            WireError::TooLarge { .. } => Some(MysqlError::packet_too_large()),
            WireError::OutOfOrder { .. } => Some(MysqlError::packets_out_of_order()),
            _ => None,
        };
        tracing::debug!(id = self.connection_id, error = %e, "client read failed");
        if let Some(err) = reply {
            let _ = self.send_error(1, err).await;
        }
    }

    async fn dispatch(&mut self, last_seq: u8, payload: &[u8]) -> Flow {
        let reply_seq = last_seq.wrapping_add(1);
        let Some(&cmd) = payload.first() else {
            return self
                .reply_error(reply_seq, MysqlError::malformed_packet("empty command"))
                .await;
        };
        if self.ctx.sharding.is_some() {
            return self.shard_dispatch(reply_seq, payload).await;
        }
        if !matches!(
            cmd,
            COM_QUERY
                | COM_PING
                | COM_QUIT
                | COM_INIT_DB
                | COM_STMT_PREPARE
                | COM_STMT_EXECUTE
                | COM_STMT_FETCH
                | COM_STMT_CLOSE
                | COM_STMT_RESET
                | COM_STMT_SEND_LONG_DATA
                | COM_STATISTICS
                | COM_FIELD_LIST
        ) {
            // rw_split: a reset, a refresh, … may write (or make Tandem write).
            self.possible_write();
        }
        let (kind, response) = match cmd {
            COM_QUIT => return Flow::Close,
            COM_QUERY => {
                let sql = &payload[1..];
                let kind = classify(sql);
                match kind {
                    StatementKind::Select => {
                        if let Some(call) = sql_functions::parse(sql) {
                            // A commit or rollback writes (phase 2, on Tandem's connections).
                            self.possible_write();
                            return self.tandem_function(reply_seq, call).await;
                        }
                        if let Some(columns) = sysvars::socket_query(sql) {
                            return self.answer_socket(reply_seq, sql, &columns).await;
                        }
                    }
                    StatementKind::Other => match kill::parse(sql) {
                        Some(Ok(k)) => return self.kill(reply_seq, k).await,
                        Some(Err(e)) => return self.reply_error(reply_seq, e).await,
                        None => {}
                    },
                    StatementKind::Set => {
                        if let Some(value) = hints::set_xid(sql) {
                            return self.set_xid(reply_seq, value).await;
                        }
                    }
                    StatementKind::Ddl => self.ctx.at.meta.clear(),
                    _ => {}
                }
                let global = self.in_global_context(sql);
                if self.ctx.replicas.is_some() {
                    if !global {
                        return self.route_query(reply_seq, payload, kind).await;
                    }
                    self.possible_write();
                    self.left_on.all_on_primary();
                }
                if global {
                    let settings = match self.enter_global().await {
                        Ok(s) => s,
                        Err(e) => return self.reply_error(reply_seq, e).await,
                    };
                    match self.plan_global(kind, sql, &settings) {
                        Global::Plain => {}
                        Global::Rollback => {
                            self.branch = None;
                            self.aborted = None;
                        }
                        Global::Join(xid) => {
                            let stmt = GlobalStatement::text(payload);
                            return self.global_dml(reply_seq, stmt, xid).await;
                        }
                        Global::LockingRead(xid) => {
                            let stmt = GlobalStatement::text(payload);
                            return self.global_locking_read(reply_seq, stmt, xid).await;
                        }
                        Global::Commit => {
                            return self
                                .global_commit(reply_seq, payload, ResponseKind::Query)
                                .await;
                        }
                        Global::Refuse(e) => return self.reply_error(reply_seq, e).await,
                        Global::EndAborted(e) => {
                            self.aborted = None;
                            return self.reply_error(reply_seq, e).await;
                        }
                    }
                }
                (kind, ResponseKind::Query)
            }
            COM_STMT_PREPARE => {
                let sql = &payload[1..];
                let kind = classify(sql);
                if kind == StatementKind::Select {
                    if let Some(call) = sql_functions::parse(sql) {
                        return self.prepare_tandem_function(reply_seq, call).await;
                    }
                }
                // What cannot run in a global context is refused already when prepared there;
                // every execution is checked again.
                if self.in_global_context(sql) {
                    let refused = match self.enter_global().await {
                        Ok(settings) => match self.plan_global(kind, sql, &settings) {
                            Global::Refuse(e) => Some(e),
                            _ => None,
                        },
                        Err(e) => Some(e),
                    };
                    if let Some(e) = refused {
                        return self.reply_error(reply_seq, e).await;
                    }
                }
                self.preparing_replica_read =
                    self.ctx.replicas.is_some() && self.replica_may_execute(kind, sql).await;
                (kind, ResponseKind::Prepare)
            }
            COM_STMT_EXECUTE => {
                if let Some(call) = statement_id(payload).and_then(|id| self.tandem_stmts.get(&id))
                {
                    let call = call.clone();
                    return self.execute_tandem_function(reply_seq, call, payload).await;
                }
                let harmless = statement_id(payload)
                    .and_then(|id| self.prepared.get(&id))
                    .is_some_and(|p| {
                        matches!(p.kind, StatementKind::Select | StatementKind::Show)
                            && p.may_write.is_none()
                    });
                if !harmless {
                    // rw_split: the execution may write (or make Tandem write).
                    self.possible_write();
                }
                if let Some(flow) = self.global_execute(reply_seq, payload).await {
                    return flow;
                }
                if self.ctx.replicas.is_some() {
                    if let Some(flow) = self.route_execute(payload).await {
                        return flow;
                    }
                }
                (self.statement_kind(payload), ResponseKind::Execute)
            }
            COM_STMT_FETCH => (self.statement_kind(payload), ResponseKind::Fetch),
            COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA => {
                if let Some(id) =
                    statement_id(payload).filter(|id| self.tandem_stmts.contains_key(id))
                {
                    if cmd == COM_STMT_CLOSE {
                        self.tandem_stmts.remove(&id);
                    }
                    return Flow::Continue;
                }
                if let Some(id) = statement_id(payload) {
                    if cmd == COM_STMT_CLOSE {
                        self.prepared.remove(&id);
                        self.close_on_replica(id).await;
                    } else if let Some(p) = self.prepared.get_mut(&id) {
                        p.long_data = true;
                    }
                }
                return self.forward_no_reply(payload).await;
            }
            COM_STMT_RESET
                if statement_id(payload).is_some_and(|id| self.tandem_stmts.contains_key(&id)) =>
            {
                let ok = self.ok();
                return self.reply(reply_seq, &ok).await;
            }
            COM_PING if self.backend.is_none() => {
                let ok = self.ok();
                return self.reply(reply_seq, &ok).await;
            }
            COM_REFRESH if self.branch.is_some() => {
                let e = MysqlError::not_supported(
                    "COM_REFRESH inside a branch of a global transaction (it commits the local transaction)",
                );
                return self.reply_error(reply_seq, e).await;
            }
            COM_PING | COM_INIT_DB | COM_STMT_RESET | COM_SET_OPTION | COM_RESET_CONNECTION
            | COM_STATISTICS | COM_DEBUG | COM_REFRESH => {
                if cmd == COM_RESET_CONNECTION {
                    // The database rolls back the local transaction and resets the session.
                    self.prepared.clear();
                    self.end_global_session();
                }
                if cmd == COM_STMT_RESET {
                    if let Some(p) = statement_id(payload).and_then(|id| self.prepared.get_mut(&id))
                    {
                        p.long_data = false;
                    }
                }
                (StatementKind::Other, ResponseKind::Single)
            }
            COM_FIELD_LIST => (StatementKind::Other, ResponseKind::FieldList),
            COM_PROCESS_INFO => (StatementKind::Show, ResponseKind::Query),
            COM_CHANGE_USER => return self.change_user(&payload[1..]).await,
            COM_PROCESS_KILL => {
                let Some(id) = statement_id(payload) else {
                    let e =
                        MysqlError::malformed_packet("COM_PROCESS_KILL without a connection id");
                    return self.reply_error(reply_seq, e).await;
                };
                return self.kill(reply_seq, kill::Kill { query: false, id }).await;
            }
            _ => {
                // Replication commands, and the commands the database has retired.
                return self
                    .reply_error(reply_seq, MysqlError::unknown_command(cmd))
                    .await;
            }
        };
        self.forward(reply_seq, payload, kind, response).await
    }

    /// Answers one of Tandem's own SQL functions.
    pub(super) async fn tandem_function(
        &mut self,
        reply_seq: u8,
        call: Result<Call, CallError>,
    ) -> Flow {
        let started = Instant::now();
        let call = match call {
            Ok(c) => c,
            Err(e) => return self.reply_error(reply_seq, functions::call_error(&e)).await,
        };
        self.answer_tandem_function(reply_seq, &call, false, started)
            .await
    }

    /// Runs a Tandem function call and answers with its one-row result, in the text or the
    /// binary protocol.
    async fn answer_tandem_function(
        &mut self,
        reply_seq: u8,
        call: &Call,
        binary: bool,
        started: Instant,
    ) -> Flow {
        let value = match functions::run(&self.ctx.coordinator, call).await {
            Ok(v) => v,
            Err(e) => return self.reply_error(reply_seq, e).await,
        };
        let status = self
            .backend
            .as_ref()
            .map_or(StatusFlags::SERVER_STATUS_AUTOCOMMIT, |b| b.status);
        let row = vec![Some(value)];
        let (io, caps, columns) = (&mut self.client, self.caps, [call.text.as_str()]);
        let format = if binary {
            RowFormat::Binary
        } else {
            RowFormat::Text
        };
        let written = write_result(io, caps, status, format, &columns, &[row]).await;
        self.ctx
            .metrics
            .statement(StatementKind::Select, started.elapsed().as_secs_f64());
        match written {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// A query of system variables among which `@@socket` (see [`sysvars`]): the session's
    /// connection answers, and `@@socket` is Tandem's own socket in front of the same
    /// executor, or NULL when it has none, never the database's.
    async fn answer_socket(
        &mut self,
        reply_seq: u8,
        sql: &[u8],
        columns: &[(bool, String)],
    ) -> Flow {
        let started = Instant::now();
        if let Err(e) = self.pin_backend(None).await {
            return self.reply_error(reply_seq, e).await;
        }
        let Some(backend) = self.backend.as_mut() else {
            return Flow::Close;
        };
        // The lexer read the text, which is ASCII outside its names.
        let text = String::from_utf8_lossy(sql);
        let row = match backend.query_rows(&text).await {
            Ok(rows) => rows.into_iter().next().unwrap_or_default(),
            Err(BackendError::Server(e)) => return self.reply_error(reply_seq, e).await,
            Err(_) => return self.backend_lost(reply_seq, false).await,
        };
        let status = backend.status;
        let row: Vec<Option<String>> = columns
            .iter()
            .enumerate()
            .map(|(i, (socket, _))| match socket {
                true => self.ctx.socket.clone(),
                false => row.get(i).cloned().flatten(),
            })
            .collect();
        let names: Vec<&str> = columns.iter().map(|(_, name)| name.as_str()).collect();
        let written = write_result(
            &mut self.client,
            self.caps,
            status,
            RowFormat::Text,
            &names,
            &[row],
        )
        .await;
        self.ctx
            .metrics
            .statement(StatementKind::Select, started.elapsed().as_secs_f64());
        match written {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// COM_STMT_PREPARE of one of Tandem's SQL functions: answered here, with `?` arguments
    /// as parameters.
    pub(super) async fn prepare_tandem_function(
        &mut self,
        reply_seq: u8,
        call: Result<Call, CallError>,
    ) -> Flow {
        let call = match call {
            Ok(c) => c,
            Err(e) => return self.reply_error(reply_seq, functions::call_error(&e)).await,
        };
        let id = self.next_tandem_stmt;
        self.next_tandem_stmt = self.next_tandem_stmt.wrapping_add(1).max(0x8000_0000);
        let params = call.args.iter().filter(|a| matches!(a, Arg::Param)).count() as u16;
        let written =
            write_prepare_ok(&mut self.client, self.caps, id, params, &[&call.text]).await;
        self.tandem_stmts.insert(id, call);
        match written {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// COM_STMT_EXECUTE of a prepared Tandem function: binds the parameters and answers with
    /// a binary-protocol row.
    pub(super) async fn execute_tandem_function(
        &mut self,
        reply_seq: u8,
        mut call: Call,
        payload: &[u8],
    ) -> Flow {
        let started = Instant::now();
        let params = call.args.iter().filter(|a| matches!(a, Arg::Param)).count();
        let mut types = Vec::new();
        let values = match params::decode_plain(payload, params, &mut types) {
            Ok(v) => v,
            Err(e) => {
                let e = MysqlError::wrong_arguments(call.function.name(), &e.0);
                return self.reply_error(reply_seq, e).await;
            }
        };
        let mut values = values.into_iter();
        for arg in call.args.iter_mut().filter(|a| matches!(a, Arg::Param)) {
            *arg = match values.next().flatten() {
                Some(params::Plain::Int(i)) => Arg::Int(i),
                Some(params::Plain::Text(t)) => Arg::Str(t),
                None => Arg::Param,
            };
        }
        self.answer_tandem_function(reply_seq, &call, true, started)
            .await
    }

    /// COM_CHANGE_USER: authenticate as a listener user again and start a fresh session, as
    /// the database would: session state is dropped (the backend connection is reset and
    /// returned to the pool) and the requested database becomes current.
    async fn change_user(&mut self, body: &[u8]) -> Flow {
        let req = match ChangeUser::parse(body, self.caps) {
            Ok(r) => r,
            Err(_) => {
                let _ = self
                    .send_error(1, MysqlError::malformed_packet("COM_CHANGE_USER"))
                    .await;
                return Flow::Close;
            }
        };
        let host = self.peer.host();
        let creds = Credentials {
            user: &req.user,
            plugin: req.auth_plugin.as_deref(),
            answer: req.auth_response.clone(),
        };
        let nonce = self.nonce;
        let verdict = authenticate(
            &self.ctx,
            &mut self.client,
            self.caps,
            &nonce,
            creds,
            1,
            &host,
        )
        .await;
        let seq = match verdict {
            Ok((seq, Ok(()))) => seq,
            Ok((seq, Err(e))) => {
                // A failed change of user leaves no session to go back to.
                let _ = self.send_error(seq, e).await;
                return Flow::Close;
            }
            Err(_) => return Flow::Close,
        };
        self.backend = None;
        self.prepared.clear();
        self.end_global_session();
        self.user = req.user;
        if let Some(collation) = req.collation {
            self.key = ConnKey::new(self.caps, collation);
        }
        if let Some(db) = req.database.as_deref() {
            if let Err(e) = self.pin_backend(Some(db)).await {
                return self.reply_error(seq, e).await;
            }
        }
        let ok = self.ok();
        self.reply(seq, &ok).await
    }

    /// Forwards a command and relays its response.
    pub(super) async fn forward(
        &mut self,
        reply_seq: u8,
        payload: &[u8],
        kind: StatementKind,
        response: ResponseKind,
    ) -> Flow {
        let started = Instant::now();
        if let Err(e) = self.pin_backend(None).await {
            return self.reply_error(reply_seq, e).await;
        }
        let Some(backend) = self.backend.as_mut() else {
            return Flow::Close;
        };
        if may_change_database(payload, kind) {
            backend.forget_database();
        }
        let settings = settings_after(payload, kind);
        if matches!(settings, SettingsAfter::Unknown) || may_change_database(payload, kind) {
            backend.forget_session_settings();
        }
        let io = backend.io();
        io.write_packet(0, payload);
        if io.flush().await.is_err() {
            return self.backend_lost(reply_seq, false).await;
        }
        match relay(
            backend,
            &mut self.client,
            response,
            self.ctx.max_allowed_packet,
        )
        .await
        {
            Ok(summary) => {
                self.ctx
                    .metrics
                    .statement(kind, started.elapsed().as_secs_f64());
                if let SettingsAfter::Changes(changes) = &settings {
                    match summary.error {
                        None => backend.apply_settings(changes),
                        Some(_) => backend.forget_session_settings(),
                    }
                }
                if self.ctx.replicas.is_some() {
                    self.left_by(payload, kind, &summary);
                }
                let committed = self.after_response(payload, kind, &summary);
                if let Some(code) = summary.error {
                    self.after_error(code, false).await;
                }
                if committed {
                    self.register_committed_branch().await;
                }
                Flow::Continue
            }
            Err(RelayError::Backend { reason, forwarded }) => {
                tracing::warn!(id = self.connection_id, data_source = %self.ctx.pool.name(), %reason, "backend failed during a statement");
                self.backend_lost(reply_seq, forwarded).await
            }
            Err(RelayError::Client(e)) => {
                tracing::debug!(id = self.connection_id, error = %e, "client failed during a response");
                backend.mark_broken();
                Flow::Close
            }
        }
    }

    /// Bookkeeping after a relayed response. Returns true when the branch's local transaction
    /// was committed by the statement (implicitly: a statement that succeeds does not roll
    /// back), so the branch must be registered after the fact.
    fn after_response(&mut self, payload: &[u8], kind: StatementKind, summary: &Summary) -> bool {
        self.last_error = summary.error;
        if let Some(code) = summary.error {
            self.ctx.metrics.error(code);
        }
        let mut committed = false;
        if let (Some(status), Some(b)) = (summary.status, self.backend.as_mut()) {
            b.status = status;
            if !status.contains(StatusFlags::SERVER_STATUS_IN_TRANS) {
                self.local_writes = None;
                if self.branch.is_some() {
                    // Only a statement that commits implicitly ends a transaction with
                    // success; anything else found it ended already (rolled back unseen).
                    if matches!(kind, StatementKind::Set | StatementKind::Other) {
                        committed = true;
                    } else {
                        self.abandon_branch(
                            "the local transaction had ended; the branch of the global transaction was abandoned"
                                .into(),
                        );
                    }
                }
            } else if summary.error.is_none()
                && self.branch.is_none()
                && self.local_writes.is_none()
            {
                self.local_writes = self.wrote(payload, kind);
            }
        }
        if summary.error.is_none() {
            self.note_session_effects(payload, kind);
        }
        if payload.first() == Some(&COM_STMT_PREPARE) {
            if let Some((id, params, _)) = summary.prepared {
                let stmt = PreparedStmt {
                    kind,
                    sql: String::from_utf8(payload[1..].to_vec()).ok(),
                    params,
                    types: Vec::new(),
                    long_data: false,
                    has_hint: hints::xid_hint(&payload[1..]).is_some(),
                    may_write: dml::may_write(&payload[1..]),
                    replica_read: std::mem::take(&mut self.preparing_replica_read),
                };
                self.prepared.insert(id, stmt);
            }
        }
        committed
    }

    /// Follows what a relayed statement did to the session that matters once it joins a
    /// global transaction: XA transactions and temporary tables. Only DDL, statements of
    /// other kinds and queries of several statements are read.
    fn note_session_effects(&mut self, payload: &[u8], kind: StatementKind) {
        let ddl_or_other = matches!(kind, StatementKind::Ddl | StatementKind::Other);
        let effects = match payload.first() {
            Some(&COM_QUERY) if ddl_or_other || memchr::memchr(b';', payload).is_some() => {
                crate::sql::dml::session_effects(&payload[1..])
            }
            Some(&COM_STMT_EXECUTE) if ddl_or_other => {
                match statement_id(payload)
                    .and_then(|id| self.prepared.get(&id))
                    .and_then(|p| p.sql.as_deref())
                {
                    Some(sql) => crate::sql::dml::session_effects(sql.as_bytes()),
                    None => return,
                }
            }
            _ => return,
        };
        for effect in effects {
            match effect {
                SessionEffect::XaStart => self.xa = true,
                SessionEffect::XaEnd => self.xa = false,
                SessionEffect::CreateTemporary(name) => {
                    self.temporary.insert(name);
                }
                SessionEffect::DropTables(names) => {
                    for n in names {
                        self.temporary.remove(&n);
                    }
                }
                SessionEffect::None => {}
            }
        }
    }

    /// Forwards a command that has no response (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    async fn forward_no_reply(&mut self, payload: &[u8]) -> Flow {
        let Some(backend) = self.backend.as_mut() else {
            // No backend yet means no statement was prepared: nothing to close.
            return Flow::Continue;
        };
        let io = backend.io();
        io.write_packet(0, payload);
        if io.flush().await.is_err() {
            backend.mark_broken();
            return Flow::Close;
        }
        Flow::Continue
    }

    /// The backend connection broke: its session state is gone, so the client's is too.
    /// Tell the client if the protocol still allows it, then close, as the database would.
    pub(super) async fn backend_lost(&mut self, reply_seq: u8, forwarded: bool) -> Flow {
        if let Some(mut b) = self.backend.take() {
            b.mark_broken();
        }
        if !forwarded {
            let e = MysqlError::backend_lost(self.ctx.pool.name());
            let _ = self.send_error(reply_seq, e).await;
        }
        Flow::Close
    }

    fn statement_kind(&self, payload: &[u8]) -> StatementKind {
        statement_id(payload)
            .and_then(|id| self.prepared.get(&id).map(|p| p.kind))
            .unwrap_or(StatementKind::Other)
    }

    pub(super) fn ok(&self) -> Vec<u8> {
        let status = self
            .backend
            .as_ref()
            .map_or(StatusFlags::SERVER_STATUS_AUTOCOMMIT, |b| b.status);
        let mut ok = ok_packet(0, 0, status, 0);
        if self.caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK) {
            ok.push(0);
        }
        ok
    }

    pub(super) async fn reply(&mut self, seq: u8, payload: &[u8]) -> Flow {
        self.client.write_packet(seq, payload);
        match self.client.flush().await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    pub(super) async fn reply_error(&mut self, seq: u8, e: MysqlError) -> Flow {
        match self.send_error(seq, e).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn send_error(&mut self, seq: u8, e: MysqlError) -> Result<(), std::io::Error> {
        self.ctx.metrics.error(e.code);
        self.client.write_packet(seq, &e.encode());
        self.client.flush().await
    }
}

/// Whether a statement of `kind` may change data (and so makes a local transaction one that
/// cannot become a branch).
impl Session {
    /// Whether statement `payload` (of `kind`), run in a local transaction outside any
    /// global one, changed data or may have, and how. One of a kind that changes nothing may
    /// have all the same (see [`dml::may_write`]): its text is looked at (a prepared
    /// statement's once, at prepare).
    fn wrote(&self, payload: &[u8], kind: StatementKind) -> Option<String> {
        if writes(kind) {
            return Some("a data change".into());
        }
        match payload.first() {
            Some(&COM_QUERY) => dml::may_write(&payload[1..]),
            Some(&COM_STMT_EXECUTE) => statement_id(payload)
                .and_then(|id| self.prepared.get(&id))
                .and_then(|p| p.may_write.clone()),
            _ => None,
        }
    }
}

impl Session {
    /// `rw_split`: a query or an execution ran on the primary (see [`LeftOn`]).
    fn left_by(&mut self, payload: &[u8], kind: StatementKind, summary: &Summary) {
        let sql = match payload.first() {
            Some(&COM_QUERY) => payload.get(1..),
            Some(&COM_STMT_EXECUTE) => statement_id(payload)
                .and_then(|id| self.prepared.get(&id))
                .and_then(|p| p.sql.as_deref())
                .map(str::as_bytes),
            _ => return,
        };
        self.left_on.ran(false, kind, sql, summary);
    }
}

/// Resolves when the server sends something on `backend` (or closes it); never without one.
async fn server_spoke(backend: Option<&crate::backend::BackendConn>) {
    match backend {
        Some(b) => b.stream().spoke().await,
        None => std::future::pending().await,
    }
}

fn writes(kind: StatementKind) -> bool {
    use StatementKind::*;
    !matches!(
        kind,
        Select | Show | Set | Use | Begin | Commit | Rollback | Savepoint
    )
}

/// The statement id at the start of a COM_STMT_* payload.
pub(super) fn statement_id(payload: &[u8]) -> Option<u32> {
    let b = payload.get(1..5)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// What relaying a command does to how the server reads statement text (its sql_mode and
/// client character set; see [`crate::backend::SessionSettings`]).
enum SettingsAfter {
    Same,
    /// What the changes are is told by the statement's text.
    Changes(Vec<settings::Change>),
    /// Tandem has to ask again. Asking runs a statement on the session's connection, which
    /// a later `ROW_COUNT()` or `FOUND_ROWS()` would see: the common forms of `SET` are read.
    Unknown,
}

fn settings_after(payload: &[u8], kind: StatementKind) -> SettingsAfter {
    const WORDS: &[&[u8]] = &[
        b"sql_mode",
        b"names",
        b"character",
        b"charset",
        b"character_set_client",
        // `EXECUTE` runs a statement prepared from any text.
        b"execute",
    ];
    match kind {
        StatementKind::Call => SettingsAfter::Unknown,
        StatementKind::Set | StatementKind::Other => match payload.first() {
            Some(&COM_QUERY) => {
                let sql = &payload[1..];
                if memchr::memchr(b';', sql).is_some() {
                    SettingsAfter::Unknown
                } else if !WORDS.iter().any(|w| lex::contains_word(sql, w)) {
                    SettingsAfter::Same
                } else if kind == StatementKind::Set {
                    settings::changes(sql).map_or(SettingsAfter::Unknown, SettingsAfter::Changes)
                } else {
                    SettingsAfter::Unknown
                }
            }
            _ => SettingsAfter::Unknown,
        },
        _ => SettingsAfter::Same,
    }
}

/// Whether relaying `payload` may change the backend connection's current database, which
/// Tandem then has to ask for again. A query holding a `;` may hold a `USE` after its first
/// statement; `USE` cannot be prepared, nor run inside a stored routine.
fn may_change_database(payload: &[u8], kind: StatementKind) -> bool {
    match payload.first() {
        Some(&COM_QUERY) => kind == StatementKind::Use || payload.contains(&b';'),
        Some(&(COM_INIT_DB | COM_RESET_CONNECTION | COM_CHANGE_USER)) => true,
        _ => kind == StatementKind::Use,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_that_may_change_the_database() {
        let query = |sql: &str| [&[COM_QUERY][..], sql.as_bytes()].concat();
        let changes = |sql: &str| may_change_database(&query(sql), classify(sql.as_bytes()));
        assert!(changes("USE bank_b"));
        assert!(changes("use `bank_b`"));
        assert!(changes("SELECT 1; USE bank_b"));
        assert!(!changes("UPDATE account SET balance = 0 WHERE id = 1"));
        assert!(!changes("SELECT * FROM users"));
        assert!(may_change_database(
            &[COM_INIT_DB, b'b'],
            StatementKind::Other
        ));
        assert!(may_change_database(
            &[COM_RESET_CONNECTION],
            StatementKind::Other
        ));
        assert!(!may_change_database(&[COM_PING], StatementKind::Other));
    }

    #[test]
    fn statements_that_may_change_how_text_is_read() {
        let query = |sql: &str| [&[COM_QUERY][..], sql.as_bytes()].concat();
        let changes = |sql: &str| {
            !matches!(
                settings_after(&query(sql), classify(sql.as_bytes())),
                SettingsAfter::Same
            )
        };
        assert!(changes("SET sql_mode = 'ANSI_QUOTES'"));
        assert!(changes("SET @@SESSION.SQL_MODE = DEFAULT"));
        assert!(changes("SET NAMES latin1"));
        assert!(changes("SET CHARACTER SET utf8mb4"));
        assert!(changes("SET character_set_client = latin1"));
        assert!(changes("SET @a = 1; SET sql_mode = ''"));
        assert!(changes("CALL p()"));
        assert!(!changes("SET @a = 1"));
        assert!(!changes("SET autocommit = 0"));
        assert!(!changes("SET SESSION group_concat_max_len = 10"));
        assert!(changes("EXECUTE stmt"));
        assert!(!changes("DO 1"));
        assert!(!changes("SELECT 1"));
    }
}
