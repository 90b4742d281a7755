//! A session of a `sharding` listener: one logical database over the shards.
//!
//! The session opens a connection to a shard the first time a statement goes there, and
//! brings it to the session's state first: the session-variable statements it ran (see
//! [`crate::exec::session_state`]) and, inside a transaction, the transaction's `BEGIN`.
//! Each statement is planned ([`crate::planner::sharding::plan`]): one that stays on one
//! shard is relayed unchanged, as in `single` mode; a read over several shards is merged
//! by [`crate::exec::sharding::scatter`]; what cannot be answered exactly is refused.
//!
//! A transaction runs on each shard it reaches as an XA transaction, and ends atomically
//! on all of them (see [`txn`] and [`crate::exec::sharding::xa`]).
//!
//! The planner reads statement text as MariaDB does by default; a session whose settings
//! make the server read it otherwise (see [`unreadable`]) has its statements refused until
//! it sets them back. Prepared statements are in [`prepared`].

mod global;
mod prepared;
mod txn;

use std::collections::HashMap;
use std::time::Instant;

use mysql_common::constants::StatusFlags;

use super::relay::{relay, RelayError};
use super::session::{
    Flow, Session, COM_INIT_DB, COM_PING, COM_PROCESS_KILL, COM_QUERY, COM_QUIT,
    COM_RESET_CONNECTION, COM_STATISTICS, COM_STMT_CLOSE, COM_STMT_EXECUTE, COM_STMT_FETCH,
    COM_STMT_PREPARE, COM_STMT_RESET, COM_STMT_SEND_LONG_DATA,
};
use crate::backend::pool::AcquireError;
use crate::backend::{BackendError, PooledConn, SessionSettings};
use crate::exec::session_state::Applied;
use crate::exec::sharding::route::Route;
use crate::exec::sharding::{self, Protocol, ScatterError};
use crate::planner::sharding::plan::{self, Plan};
use crate::planner::sharding::show::{self, Answer};
use crate::planner::sharding::ShardSet;
use crate::sql::{classify, hints, lex, quote, StatementKind};
use crate::wire::response::{ok_packet, write_result, RowFormat};
use crate::wire::scanner::{ResponseKind, Summary};
use crate::wire::MysqlError;

/// One shard connection of a session.
pub(super) struct ShardConn {
    conn: PooledConn,
    /// How far it has come along the session's state.
    applied: Applied,
    /// The session's prepared statements this connection prepared too: the client's id →
    /// the shard's.
    statements: HashMap<u32, u32>,
}

/// What a sharding session holds beyond a single one.
pub(super) struct ShardSession {
    conns: Vec<Option<ShardConn>>,
    /// The shard of the last statement: a statement that names no table goes there, so
    /// `LAST_INSERT_ID()`, `ROW_COUNT()` and warnings are those of the statement before.
    last: usize,
    /// The open explicit transaction's `BEGIN` (its text, for shards it reaches later).
    begin: Option<String>,
    /// The XID of the open transaction, which runs as an XA transaction on each shard it
    /// reaches; `None` for one begun with characteristics (`START TRANSACTION READ ONLY`,
    /// `WITH CONSISTENT SNAPSHOT`), which XA cannot take: it may write on one shard only.
    xa: Option<String>,
    /// One statement that writes on several shards outside a transaction runs as one.
    statement_txn: bool,
    /// The global (AT) transaction the transaction is part of: then it runs as a plain
    /// local transaction on each shard, a branch of the global one (see [`global`]).
    global: Option<global::GlobalPart>,
    /// Shards where the session's transaction is open.
    touched: ShardSet,
    /// The shards the transaction wrote on.
    wrote: ShardSet,
    /// Why the transaction can only roll back (a write on several shards failed part-way).
    aborted: Option<String>,
    /// Why Tandem rolled back the client's transaction under it (a change inside a global
    /// transaction it could not undo): every statement is refused until the client's
    /// ROLLBACK (or COMMIT, which is told so), as the client still thinks it is open.
    rolled_back: Option<String>,
    /// The statement under way (a `SET`) opens no transaction on the shards it reaches.
    outside: bool,
    autocommit: bool,
    /// The id the next prepared statement gets, and the last one given.
    next_statement: u32,
    last_statement: u32,
}

impl ShardSession {
    pub fn new(shards: usize) -> ShardSession {
        ShardSession {
            conns: (0..shards).map(|_| None).collect(),
            last: 0,
            begin: None,
            xa: None,
            statement_txn: false,
            global: None,
            touched: ShardSet::EMPTY,
            wrote: ShardSet::EMPTY,
            aborted: None,
            rolled_back: None,
            outside: false,
            autocommit: true,
            next_statement: 1,
            last_statement: 0,
        }
    }

    fn in_transaction(&self) -> bool {
        self.begin.is_some() || !self.autocommit || self.statement_txn
    }

    fn status(&self) -> StatusFlags {
        let mut s = StatusFlags::empty();
        if self.autocommit {
            s |= StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        }
        if self.begin.is_some() {
            s |= StatusFlags::SERVER_STATUS_IN_TRANS;
        }
        s
    }

    fn end_transaction(&mut self) {
        self.begin = None;
        self.xa = None;
        self.statement_txn = false;
        self.global = None;
        self.touched = ShardSet::EMPTY;
        self.wrote = ShardSet::EMPTY;
        self.aborted = None;
    }
}

/// Why a shard connection could not be made ready.
enum Ready {
    /// An error for the client; the session goes on.
    Refused(MysqlError),
    /// The connection broke: the session's state on it is gone.
    Lost,
}

/// Why the server would read statement text otherwise than Tandem's planner does, if it
/// would: backslash escapes off, `"…"` as names, or a character set in which a byte below
/// 0x80 may be part of another character.
pub(super) fn unreadable(settings: &SessionSettings) -> Option<String> {
    for m in ["NO_BACKSLASH_ESCAPES", "ANSI_QUOTES"] {
        if settings
            .sql_mode
            .split(',')
            .any(|x| x.eq_ignore_ascii_case(m))
        {
            return Some(format!(
                "sql_mode has {m} (Tandem reads statements with the default quoting rules)"
            ));
        }
    }
    // Asked before every statement: no copy.
    let charset = settings.charset.as_str();
    let readable = ["utf8mb4", "utf8mb3", "utf8", "latin1", "ascii", "binary"]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(charset));
    if !readable {
        return Some(format!(
            "character_set_client is {} (Tandem reads statements in utf8mb4, utf8mb3, latin1, ascii or binary)",
            charset.to_ascii_lowercase()
        ));
    }
    None
}

/// A statement's text, as the planner may read it: UTF-8, and no `XA …` statement (Tandem
/// runs the shards' XA transactions itself).
pub(super) fn statement_text(sql: &[u8]) -> Result<&str, MysqlError> {
    let text = std::str::from_utf8(sql).map_err(|_| {
        MysqlError::not_supported("statement text that is not UTF-8 on a sharded executor")
    })?;
    // The first word, past comments, without lexing the whole statement (the planner does).
    let start = crate::sql::classify::skip_noise(sql);
    let xa = start.len() >= 2
        && start[..2].eq_ignore_ascii_case(b"XA")
        && start
            .get(2)
            .is_none_or(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | 0x80..)));
    if xa {
        return Err(MysqlError::not_supported(
            "XA statements on a sharded executor (Tandem runs the shards' XA transactions itself; use BEGIN and COMMIT)",
        ));
    }
    Ok(text)
}

fn refusal(why: &str) -> MysqlError {
    MysqlError::not_supported(&format!(
        "{why}, which Tandem cannot answer exactly across shards"
    ))
}

/// The error of a statement after Tandem rolled the client's transaction back under it.
fn rolled_back(why: &str) -> MysqlError {
    MysqlError::branch_rolled_back(&format!("{why}; send ROLLBACK before anything else"))
}

fn one_shard_only(why: &str) -> MysqlError {
    MysqlError::not_supported(&format!(
        "{why}: a transaction begun with characteristics (READ ONLY, WITH CONSISTENT SNAPSHOT) \
         runs without a distributed commit and writes on one shard; begin it with BEGIN"
    ))
}

impl Session {
    fn sharding(&self) -> &sharding::Sharding {
        self.ctx
            .sharding
            .as_deref()
            .expect("a sharding session has its executor")
    }

    fn shard_session(&mut self) -> &mut ShardSession {
        self.shard.get_or_insert_with(|| ShardSession::new(0))
    }

    fn shard_ok(&mut self) -> Vec<u8> {
        let status = self.shard_session().status();
        let mut ok = ok_packet(0, 0, status, 0);
        if self
            .caps()
            .contains(mysql_common::constants::CapabilityFlags::CLIENT_SESSION_TRACK)
        {
            ok.push(0);
        }
        ok
    }

    /// Every command of a sharding session.
    pub(super) async fn shard_dispatch(&mut self, reply_seq: u8, payload: &[u8]) -> Flow {
        let cmd = payload[0];
        match cmd {
            COM_QUIT => Flow::Close,
            COM_PING => {
                let ok = self.shard_ok();
                self.reply(reply_seq, &ok).await
            }
            COM_INIT_DB => self.shard_use(reply_seq, &payload[1..]).await,
            COM_QUERY => self.shard_query(reply_seq, payload).await,
            COM_STMT_PREPARE => self.shard_prepare(reply_seq, payload).await,
            COM_STMT_EXECUTE => self.shard_execute(reply_seq, payload).await,
            COM_STMT_CLOSE => {
                self.shard_close(payload).await;
                Flow::Continue
            }
            COM_STMT_SEND_LONG_DATA | COM_STMT_RESET => {
                let id = super::session::statement_id(payload);
                if let Some(p) = id.and_then(|id| self.prepared.get_mut(&id)) {
                    p.long_data = cmd == COM_STMT_SEND_LONG_DATA;
                }
                if cmd == COM_STMT_SEND_LONG_DATA {
                    return Flow::Continue;
                }
                let ok = self.shard_ok();
                self.reply(reply_seq, &ok).await
            }
            COM_PROCESS_KILL => match super::session::statement_id(payload) {
                Some(id) => {
                    self.kill(reply_seq, super::kill::Kill { query: false, id })
                        .await
                }
                None => {
                    let e =
                        MysqlError::malformed_packet("COM_PROCESS_KILL without a connection id");
                    self.reply_error(reply_seq, e).await
                }
            },
            COM_RESET_CONNECTION => {
                let mut lost = false;
                if let Some(sh) = self.shard.as_mut() {
                    for c in sh.conns.iter_mut() {
                        if let Some(sc) = c {
                            if sc.conn.reset().await.is_err() {
                                lost = true;
                                *c = None;
                            } else {
                                sc.applied = Applied::default();
                                sc.statements.clear();
                            }
                        }
                    }
                    sh.end_transaction();
                    sh.rolled_back = None;
                    sh.autocommit = true;
                }
                self.state.reset(None);
                self.xid = None;
                self.temporary.clear();
                self.prepared.clear();
                if lost {
                    return self.backend_lost(reply_seq, false).await;
                }
                let ok = self.shard_ok();
                self.reply(reply_seq, &ok).await
            }
            COM_STATISTICS => {
                let last = self.shard_session().last;
                self.shard_forward(
                    reply_seq,
                    payload,
                    last,
                    StatementKind::Other,
                    ResponseKind::Single,
                )
                .await
            }
            COM_STMT_FETCH => {
                let e = MysqlError::not_supported("cursors (COM_STMT_FETCH) on a sharded executor");
                self.reply_error(reply_seq, e).await
            }
            _ => {
                let e = MysqlError::not_supported(&format!(
                    "command 0x{cmd:02x} on a sharded executor"
                ));
                self.reply_error(reply_seq, e).await
            }
        }
    }

    /// `USE db` and COM_INIT_DB: only the logical database exists.
    async fn shard_use(&mut self, reply_seq: u8, db: &[u8]) -> Flow {
        let name = String::from_utf8_lossy(db);
        let name = name.trim().trim_matches('`');
        if name != self.sharding().topology.database {
            let e = MysqlError::new(1049, "42000", format!("Unknown database '{name}'"));
            return self.reply_error(reply_seq, e).await;
        }
        let ok = self.shard_ok();
        self.reply(reply_seq, &ok).await
    }

    async fn shard_query(&mut self, reply_seq: u8, payload: &[u8]) -> Flow {
        let sql = &payload[1..];
        if let Some(call) = crate::sql::functions::parse(sql) {
            return self.tandem_function(reply_seq, call).await;
        }
        match super::kill::parse(sql) {
            Some(Ok(k)) => return self.kill(reply_seq, k).await,
            Some(Err(e)) => return self.reply_error(reply_seq, e).await,
            None => {}
        }
        if let Some(value) = hints::set_xid(sql) {
            return self.shard_set_xid(reply_seq, value).await;
        }
        let text = match statement_text(sql) {
            Ok(t) => t,
            Err(e) => return self.reply_error(reply_seq, e).await,
        };
        let kind = classify(sql);
        use StatementKind::{Begin, Commit, Rollback, Savepoint, Set, Use};
        if matches!(kind, Set | Use | Begin | Commit | Rollback | Savepoint) {
            // These do not reach the planner, which refuses the same.
            let why = match lex::tokenize(sql) {
                Err(e) => Some(format!("{e} in a sharded database")),
                Ok(t) if lex::statements(&t).len() > 1 => {
                    Some("several statements in one query on a sharded database".to_string())
                }
                Ok(_) => None,
            };
            if let Some(why) = why {
                return self.reply_error(reply_seq, refusal(&why)).await;
            }
        }
        // A ROLLBACK that `shard_end` refuses (… AND CHAIN) leaves the client's view as it was.
        let plain_rollback = kind == Rollback
            && !["CHAIN", "RELEASE"]
                .iter()
                .any(|w| lex::contains_word(sql, w.as_bytes()));
        if let Some(why) = self.shard_session().rolled_back.take() {
            match kind {
                Rollback if plain_rollback => {}
                Commit => {
                    let e = MysqlError::branch_rolled_back(&why);
                    return self.reply_error(reply_seq, e).await;
                }
                _ => {
                    let e = rolled_back(&why);
                    self.shard_session().rolled_back = Some(why);
                    return self.reply_error(reply_seq, e).await;
                }
            }
        }
        match kind {
            StatementKind::Set => return self.shard_set(reply_seq, payload, text).await,
            StatementKind::Use => {
                let name = text.trim().trim_end_matches(';');
                let name = name.get(3..).unwrap_or("").trim();
                return self.shard_use(reply_seq, name.as_bytes()).await;
            }
            StatementKind::Begin => {
                return self.shard_begin(reply_seq, text).await;
            }
            StatementKind::Commit | StatementKind::Rollback => {
                return self.shard_end(reply_seq, text).await
            }
            StatementKind::Savepoint => {
                return self.reply_error(reply_seq, refusal("a savepoint")).await
            }
            _ => {}
        }
        if let Some(flow) = self.shard_check_text(reply_seq).await {
            return flow;
        }
        let no_params = |_: &sqlparser::ast::Expr| None;
        let planned = plan::plan(text, &self.sharding().topology, &no_params);
        self.shard_run(reply_seq, payload, text, kind, planned, Protocol::Text)
            .await
    }

    /// Carries out the plan of a statement from the client (`payload`, whose text, its
    /// parameters filled in, is `text`), as part of the global transaction it belongs to,
    /// if any.
    async fn shard_run(
        &mut self,
        reply_seq: u8,
        payload: &[u8],
        text: &str,
        kind: StatementKind,
        planned: Plan,
        protocol: Protocol,
    ) -> Flow {
        if let Some(why) = &self.shard_session().rolled_back {
            let e = rolled_back(why);
            return self.reply_error(reply_seq, e).await;
        }
        match self.statement_xid(text) {
            Ok(None) => {
                self.shard_plan_run(reply_seq, payload, text, kind, planned, protocol)
                    .await
            }
            Ok(Some(xid)) => {
                self.shard_global(reply_seq, payload, text, kind, planned, protocol, xid)
                    .await
            }
            Err(e) => self.reply_error(reply_seq, e).await,
        }
    }

    /// Carries out a statement's plan.
    async fn shard_plan_run(
        &mut self,
        reply_seq: u8,
        payload: &[u8],
        text: &str,
        kind: StatementKind,
        planned: Plan,
        protocol: Protocol,
    ) -> Flow {
        // Anything but a read may change data (a CALL, a DO of a function): the shard it
        // runs on takes part in the commit as a writer.
        let writes = !matches!(kind, StatementKind::Select | StatementKind::Show);
        if let Some(why) = self.shard_session().aborted.clone() {
            if self.shard_session().in_transaction() {
                return self.reply_error(reply_seq, txn::aborted(&why)).await;
            }
        }
        let response = match protocol {
            Protocol::Text => ResponseKind::Query,
            Protocol::Binary => ResponseKind::Execute,
        };
        match planned {
            Plan::Any | Plan::One(_) => {
                let s = match planned {
                    Plan::One(s) => s,
                    _ => self.shard_session().last,
                };
                if writes {
                    let sh = self.shard_session();
                    if sh.in_transaction() {
                        if let Some(other) = sh.wrote.first().filter(|&w| w != s && sh.xa.is_none())
                        {
                            let names = &self.sharding().topology.shards;
                            let why = format!(
                                "a write on shard {} in a transaction that wrote on shard {}",
                                names[s], names[other]
                            );
                            return self.reply_error(reply_seq, one_shard_only(&why)).await;
                        }
                        self.shard_session().wrote.insert(s);
                    }
                }
                self.shard_forward(reply_seq, payload, s, kind, response)
                    .await
            }
            Plan::Ddl(d) => {
                let mut query = vec![COM_QUERY];
                query.extend_from_slice(text.as_bytes());
                self.shard_ddl(reply_seq, &query, text, d).await
            }
            Plan::Scatter(s) => self.shard_scatter(reply_seq, &s, kind, protocol).await,
            Plan::Write(w) => self.shard_write(reply_seq, &w, kind, None).await,
            Plan::Open => {
                let (open, last) = {
                    let sh = self.shard_session();
                    let open: Vec<usize> = (0..sh.conns.len())
                        .filter(|&i| i != sh.last && sh.conns[i].is_some())
                        .collect();
                    (open, sh.last)
                };
                for shard in open {
                    if let Err(e) = self.on_shard(shard, text).await {
                        return match e {
                            BackendError::Server(_) => {
                                let e = self.shard_error(shard, e);
                                self.reply_error(reply_seq, e).await
                            }
                            _ => self.backend_lost(reply_seq, false).await,
                        };
                    }
                }
                self.shard_forward(reply_seq, payload, last, kind, response)
                    .await
            }
            Plan::Answer(a) => self.shard_answer(reply_seq, a, protocol).await,
            Plan::Refuse(why) => self.reply_error(reply_seq, refusal(&why)).await,
        }
    }

    /// Opens (or reuses) the session's connection to `shard` and brings it to the
    /// session's state and transaction.
    async fn shard_ready(&mut self, shard: usize) -> Result<(), Ready> {
        if self.shard_session().conns.get(shard).is_none() {
            return Err(Ready::Refused(MysqlError::not_supported(
                "a shard that does not exist",
            )));
        }
        if self.shard_session().conns[shard].is_none() {
            let sh = self.shard_session();
            if sh.touched.contains(shard) && sh.in_transaction() {
                // The transaction's part there went with the connection.
                let why = format!(
                    "the connection to shard {} was lost, with the transaction's part there",
                    self.sharding().topology.shards[shard]
                );
                let sh = self.shard_session();
                sh.touched.remove(shard);
                sh.aborted = Some(why.clone());
                return Err(Ready::Refused(txn::aborted(&why)));
            }
            let pool = self.sharding().pools[shard].clone();
            let conn = pool
                .acquire_for(self.key, self.connection_id())
                .await
                .map_err(|e| {
                    Ready::Refused(match e {
                        AcquireError::Exhausted(_) => MysqlError::too_many_connections(pool.name()),
                        AcquireError::Connect(BackendError::Server(e)) => e,
                        AcquireError::Connect(e) => {
                            MysqlError::backend_unavailable(pool.name(), &e.to_string())
                        }
                    })
                })?;
            self.shard_session().conns[shard] = Some(ShardConn {
                conn,
                applied: Applied::default(),
                statements: HashMap::new(),
            });
        }
        let catch_up: Vec<String> = {
            let applied = match &self.shard.as_ref().and_then(|s| s.conns[shard].as_ref()) {
                Some(c) => c.applied.clone(),
                None => return Err(Ready::Lost),
            };
            self.state.catch_up(&applied).statements.to_vec()
        };
        let state_applied = self.state.applied();
        let xid = self
            .ctx
            .sharding
            .as_deref()
            .and_then(|s| s.xa.get(shard).cloned());
        let session_xid = self.xid.clone();
        let sh = self.shard.as_mut().ok_or(Ready::Lost)?;
        let implicit = sh.in_transaction() && !sh.outside;
        if let Some(x) = session_xid.filter(|_| implicit && sh.global.is_none()) {
            if sh.touched.is_empty() {
                // A transaction autocommit off opens in the session's global transaction
                // is part of it from its first statement, a read included.
                sh.xa = None;
                sh.global = Some(global::GlobalPart::new(x));
            }
        }
        if implicit && sh.xa.is_none() && sh.begin.is_none() && sh.global.is_none() {
            // A transaction that autocommit off opens, or one statement's.
            sh.xa = Some(crate::coordinator::service::new_xid());
        }
        let begin = match (&sh.xa, xid) {
            _ if !implicit || sh.touched.contains(shard) => None,
            // A branch of a global transaction is a plain local transaction.
            _ if sh.global.is_some() => sh.begin.clone().or_else(|| Some("BEGIN".into())),
            (Some(gtrid), Some(xa)) => Some(format!("XA START {}", xa.xid(gtrid))),
            _ => sh.begin.clone(),
        };
        let Some(sc) = sh.conns[shard].as_mut() else {
            return Err(Ready::Lost);
        };
        for stmt in catch_up.iter().chain(begin.iter()) {
            match sc.conn.execute(stmt).await {
                Ok(_) => {}
                Err(BackendError::Server(e)) => return Err(Ready::Refused(e)),
                Err(_) => {
                    sh.conns[shard] = None;
                    return Err(Ready::Lost);
                }
            }
        }
        if !catch_up.is_empty() {
            sc.conn.forget_session_settings();
        }
        sc.applied = state_applied;
        if implicit {
            sh.touched.insert(shard);
        }
        Ok(())
    }

    /// Answers a statement about the logical database (see
    /// [`crate::planner::sharding::show`]).
    async fn shard_answer(&mut self, reply_seq: u8, answer: Answer, protocol: Protocol) -> Flow {
        let db = self.sharding().topology.database.clone();
        let (columns, rows): (Vec<String>, Vec<Vec<Option<String>>>) = match answer {
            Answer::Databases { like } => (
                vec!["Database".into()],
                ["information_schema", db.as_str()]
                    .iter()
                    .filter(|d| like.as_deref().is_none_or(|p| show::like(p, d)))
                    .map(|d| vec![Some(d.to_string())])
                    .collect(),
            ),
            Answer::Database => (vec!["DATABASE()".into()], vec![vec![Some(db)]]),
            Answer::Tables { full, like } => {
                let tables = match self.sharding().table_list().await {
                    Ok(t) => t,
                    Err(e) => return self.reply_error(reply_seq, e).await,
                };
                let mut columns = vec![format!("Tables_in_{db}")];
                if full {
                    columns.push("Table_type".into());
                }
                let rows = tables
                    .into_iter()
                    .filter(|(t, _)| like.as_deref().is_none_or(|p| show::like(p, t)))
                    .map(|(t, kind)| {
                        let mut row = vec![Some(t)];
                        if full {
                            row.push(Some(kind));
                        }
                        row
                    })
                    .collect();
                (columns, rows)
            }
            Answer::Explain(rows) => (
                vec!["shard".into(), "statement".into(), "merge".into()],
                rows.into_iter()
                    .map(|r| r.into_iter().map(Some).collect())
                    .collect(),
            ),
            Answer::Renamed {
                sql,
                table,
                physical,
            } => {
                if let Some(flow) = self.ready_outside(reply_seq, 0).await {
                    return flow;
                }
                let Some(sc) = self.shard.as_mut().and_then(|s| s.conns[0].as_mut()) else {
                    return Flow::Close;
                };
                let (from, to) = (quote::ident(&physical), quote::ident(&table));
                let (names, rows) = match sc.conn.query_named(&sql).await {
                    Ok(answer) => answer,
                    Err(BackendError::Server(e)) => return self.reply_error(reply_seq, e).await,
                    Err(_) => {
                        if let Some(sh) = self.shard.as_mut() {
                            sh.conns[0] = None;
                        }
                        return self.backend_lost(reply_seq, false).await;
                    }
                };
                // The first physical table's answer, under the table's name: a cell that
                // is its name, and its quoted name in a definition.
                let rows = rows
                    .into_iter()
                    .map(|r| {
                        r.into_iter()
                            .map(|c| {
                                c.map(|c| match c == physical {
                                    true => table.clone(),
                                    false => c.replacen(&from, &to, 1),
                                })
                            })
                            .collect()
                    })
                    .collect();
                (names, rows)
            }
        };
        let format = match protocol {
            Protocol::Text => RowFormat::Text,
            Protocol::Binary => RowFormat::Binary,
        };
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        let status = self.shard_session().status();
        let caps = self.caps();
        // A command's answer starts at sequence id 1, where `write_result` starts (as
        // Tandem's own functions answer).
        let _ = reply_seq;
        match write_result(&mut self.client, caps, status, format, &names, &rows).await {
            Ok(()) => {
                self.last_error = None;
                Flow::Continue
            }
            Err(_) => Flow::Close,
        }
    }

    /// Refuses the statement when the session's settings make the server read its text
    /// otherwise than the planner does (see [`unreadable`]). Every open shard connection has
    /// the session's settings; they are asked for once and again after a `SET`.
    async fn shard_check_text(&mut self, reply_seq: u8) -> Option<Flow> {
        let (open, last) = {
            let sh = self.shard_session();
            (sh.conns.iter().position(|c| c.is_some()), sh.last)
        };
        let shard = match open {
            Some(s) => s,
            None => {
                if let Some(flow) = self.ready_outside(reply_seq, last).await {
                    return Some(flow);
                }
                last
            }
        };
        let sc = self.shard.as_mut()?.conns[shard].as_mut()?;
        let why = match sc.conn.session_settings_ref().await {
            Ok(s) => unreadable(s)?,
            Err(BackendError::Server(e)) => return Some(self.reply_error(reply_seq, e).await),
            Err(_) => {
                if let Some(sh) = self.shard.as_mut() {
                    sh.conns[shard] = None;
                }
                return Some(self.backend_lost(reply_seq, false).await);
            }
        };
        let e = MysqlError::not_supported(&format!(
            "statements on a sharded executor in a session whose {why}; restore the setting"
        ));
        Some(self.reply_error(reply_seq, e).await)
    }

    /// [`Session::ready_or_reply`] for something that is no statement of the transaction
    /// (reading settings, preparing): the transaction reaches the shard with its next
    /// statement there.
    async fn ready_outside(&mut self, reply_seq: u8, shard: usize) -> Option<Flow> {
        let was = std::mem::replace(&mut self.shard_session().outside, true);
        let flow = self.ready_or_reply(reply_seq, shard).await;
        if let Some(sh) = self.shard.as_mut() {
            sh.outside = was;
        }
        flow
    }

    async fn ready_or_reply(&mut self, reply_seq: u8, shard: usize) -> Option<Flow> {
        match self.shard_ready(shard).await {
            Ok(()) => None,
            Err(Ready::Refused(e)) => Some(self.reply_error(reply_seq, e).await),
            Err(Ready::Lost) => Some(self.backend_lost(reply_seq, false).await),
        }
    }

    /// Relays a command to one shard, unchanged.
    async fn shard_forward(
        &mut self,
        reply_seq: u8,
        payload: &[u8],
        shard: usize,
        kind: StatementKind,
        response: ResponseKind,
    ) -> Flow {
        let started = Instant::now();
        if let Some(flow) = self.ready_or_reply(reply_seq, shard).await {
            return flow;
        }
        let max = self.ctx.max_allowed_packet;
        let Some(sh) = self.shard.as_mut() else {
            return Flow::Close;
        };
        sh.last = shard;
        let Some(sc) = sh.conns[shard].as_mut() else {
            return Flow::Close;
        };
        let io = sc.conn.io();
        io.write_packet(0, payload);
        if io.flush().await.is_err() {
            sh.conns[shard] = None;
            return self.backend_lost(reply_seq, false).await;
        }
        match relay(&mut sc.conn, &mut self.client, response, max).await {
            Ok(summary) => {
                self.ctx
                    .metrics
                    .statement(kind, started.elapsed().as_secs_f64());
                self.after_shard_reply(shard, &summary);
                self.after_shard_error(summary.error).await;
                if let Some(code) = summary.error {
                    self.check_part_after_error(shard, code).await;
                }
                Flow::Continue
            }
            Err(RelayError::Backend { reason, forwarded }) => {
                tracing::warn!(id = self.connection_id(), shard, %reason, "shard failed during a statement");
                if let Some(sh) = self.shard.as_mut() {
                    sh.conns[shard] = None;
                }
                self.backend_lost(reply_seq, forwarded).await
            }
            Err(RelayError::Client(_)) => {
                sc.conn.mark_broken();
                Flow::Close
            }
        }
    }

    /// A deadlock made the database roll back the shard's part of the transaction; the
    /// database would have rolled back all of it, and so does Tandem, on every shard.
    async fn after_shard_error(&mut self, code: Option<u16>) {
        let sh = self.shard_session();
        if code == Some(txn::DEADLOCK) && (sh.xa.is_some() || sh.global.is_some()) {
            self.rollback_everywhere().await;
        }
    }

    fn after_shard_reply(&mut self, shard: usize, summary: &Summary) {
        self.last_error = summary.error;
        if let Some(code) = summary.error {
            self.ctx.metrics.error(code);
        }
        let Some(sh) = self.shard.as_mut() else {
            return;
        };
        if let Some(status) = summary.status {
            if let Some(sc) = sh.conns[shard].as_mut() {
                sc.conn.status = status;
            }
            if sh.global.is_some()
                && sh.touched.contains(shard)
                && !status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
                && sh.aborted.is_none()
            {
                // The database ended the shard's local transaction, a branch: what it
                // changed there is committed without its undo log, or gone.
                tracing::error!(
                    shard,
                    "a shard's local transaction in a global transaction ended outside Tandem"
                );
                sh.aborted = Some(format!(
                    "the local transaction on shard number {shard} ended outside Tandem"
                ));
            }
            sh.autocommit = status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
            if !status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
                && sh.begin.is_none()
                && sh.xa.is_none()
                && sh.global.is_none()
            {
                // The shard's transaction ended (a statement that commits implicitly).
                sh.touched = ShardSet::EMPTY;
                sh.wrote = ShardSet::EMPTY;
            }
        }
    }

    /// `SET`: runs on the shard that answers and on every other open connection; shards
    /// opened later run it when they catch up.
    async fn shard_set(&mut self, reply_seq: u8, payload: &[u8], text: &str) -> Flow {
        self.shard_session().outside = true;
        let flow = self.shard_set_outside(reply_seq, payload, text).await;
        if let Some(sh) = self.shard.as_mut() {
            sh.outside = false;
        }
        flow
    }

    async fn shard_set_outside(&mut self, reply_seq: u8, payload: &[u8], text: &str) -> Flow {
        let reads_tables = ["FROM", "SELECT"]
            .iter()
            .any(|w| lex::contains_word(text.as_bytes(), w.as_bytes()));
        if reads_tables {
            return self
                .reply_error(reply_seq, refusal("a SET that reads tables"))
                .await;
        }
        let shape = crate::sql::dml::shape(text.as_bytes()).ok();
        // The statement it runs would reach one shard unplanned.
        if shape.is_some_and(|s| s.set_statement) {
            return self
                .reply_error(reply_seq, refusal("SET STATEMENT … FOR"))
                .await;
        }
        // SET PASSWORD commits the transaction, on the one shard that runs it.
        let autocommit = lex::contains_word(text.as_bytes(), b"autocommit");
        let open = !self.shard_session().touched.is_empty();
        if shape.is_some_and(|s| s.commits) && !autocommit && open {
            let e = refusal(
                "SET PASSWORD inside a transaction (it commits the transaction on one shard)",
            );
            return self.reply_error(reply_seq, e).await;
        }
        // In a global transaction, nothing may change data without an undo log (a stored
        // function in a SET could).
        let global = match self.statement_xid(text) {
            Ok(x) => x.is_some(),
            Err(e) => return self.reply_error(reply_seq, e).await,
        };
        if global {
            if let Err(e) = crate::sql::dml::check_read(text) {
                let e = super::global::analyze_error(e);
                return self.reply_error(reply_seq, e).await;
            }
        }
        // Each shard would apply it to its own part of a scatter's answer.
        if lex::contains_word(text.as_bytes(), b"sql_select_limit") {
            return self
                .reply_error(reply_seq, refusal("SET sql_select_limit"))
                .await;
        }
        // `SET autocommit` commits an open transaction, as in the database (and an XA
        // transaction takes no change of it).
        if self.shard_session().in_transaction() && autocommit {
            if let Err(flow) = self.implicit_commit(reply_seq).await {
                return flow;
            }
        }
        if !self.state.has_room() {
            let e =
                MysqlError::not_supported(&crate::exec::session_state::TooMuchState.to_string());
            return self.reply_error(reply_seq, e).await;
        }
        let answering = self.shard_session().last;
        if let Some(flow) = self.ready_or_reply(reply_seq, answering).await {
            return flow;
        }
        let flow = self
            .shard_forward(
                reply_seq,
                payload,
                answering,
                StatementKind::Set,
                ResponseKind::Query,
            )
            .await;
        if !matches!(flow, Flow::Continue) {
            return flow;
        }
        // Only a SET that succeeded is carried to the other shards.
        if self.last_error.is_some() {
            return Flow::Continue;
        }
        let _ = self.state.record(text);
        let applied = self.state.applied();
        if let Some(sc) = self
            .shard
            .as_mut()
            .and_then(|s| s.conns[answering].as_mut())
        {
            sc.applied = applied;
            match crate::sql::settings::changes(text.as_bytes()) {
                Some(changes) => sc.conn.apply_settings(&changes),
                None => sc.conn.forget_session_settings(),
            }
        }
        let open: Vec<usize> = self
            .shard
            .as_ref()
            .map(|s| {
                s.conns
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| c.is_some() && *i != answering)
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        for shard in open {
            if let Err(Ready::Lost) = self.shard_ready(shard).await {
                tracing::debug!(
                    id = self.connection_id(),
                    shard,
                    "shard connection lost while setting"
                );
            }
        }
        Flow::Continue
    }

    /// DDL on every shard its table is on.
    async fn shard_ddl(&mut self, reply_seq: u8, payload: &[u8], text: &str, d: plan::Ddl) -> Flow {
        if let Err(flow) = self.implicit_commit(reply_seq).await {
            return flow;
        }
        // DDL commits implicitly: it opens no transaction on the shards (which it could not
        // run inside an XA one), autocommit off or not.
        self.shard_session().outside = true;
        let flow = self.shard_ddl_outside(reply_seq, payload, text, d).await;
        if let Some(sh) = self.shard.as_mut() {
            sh.outside = false;
        }
        flow
    }

    async fn shard_ddl_outside(
        &mut self,
        reply_seq: u8,
        payload: &[u8],
        text: &str,
        d: plan::Ddl,
    ) -> Flow {
        let statements: Vec<(usize, &str)> = if d.statements.is_empty() {
            d.shards.iter().map(|s| (s, text)).collect()
        } else {
            d.statements
                .iter()
                .map(|(s, sql)| (*s, sql.as_str()))
                .collect()
        };
        let Some((&(last, last_sql), rest)) = statements.split_last() else {
            let ok = self.shard_ok();
            return self.reply(reply_seq, &ok).await;
        };
        for &(shard, sql) in rest {
            if let Some(flow) = self.ready_or_reply(reply_seq, shard).await {
                return flow;
            }
            let Some(sc) = self.shard.as_mut().and_then(|s| s.conns[shard].as_mut()) else {
                return Flow::Close;
            };
            match sc.conn.execute(sql).await {
                Ok(_) => {}
                Err(BackendError::Server(mut e)) => {
                    let name = &self.sharding().topology.shards[shard];
                    e.message = format!("on shard {name}: {}", e.message);
                    return self.reply_error(reply_seq, e).await;
                }
                Err(_) => {
                    if let Some(sh) = self.shard.as_mut() {
                        sh.conns[shard] = None;
                    }
                    return self.backend_lost(reply_seq, false).await;
                }
            }
        }
        let own;
        let payload = if d.statements.is_empty() {
            payload
        } else {
            own = [&[COM_QUERY][..], last_sql.as_bytes()].concat();
            &own[..]
        };
        let flow = self
            .shard_forward(
                reply_seq,
                payload,
                last,
                StatementKind::Ddl,
                ResponseKind::Query,
            )
            .await;
        // A temporary table is the session's: the logical database's tables stay as they are.
        let temporary = lex::contains_word(text.as_bytes(), b"TEMPORARY");
        if matches!(flow, Flow::Continue) && self.last_error.is_none() {
            // A temporary table may hide a table a global transaction writes.
            for effect in crate::sql::dml::session_effects(text.as_bytes()) {
                match effect {
                    crate::sql::dml::SessionEffect::CreateTemporary(name) => {
                        self.temporary.insert(name);
                    }
                    crate::sql::dml::SessionEffect::DropTables(names) => {
                        for n in names {
                            self.temporary.remove(&n);
                        }
                    }
                    _ => {}
                }
            }
            let topology = &self.sharding().topology;
            if let Some(t) = d.creates.as_ref().filter(|_| !temporary) {
                topology.single_table(t, Some(last));
            }
            for t in d.drops.iter().filter(|_| !temporary) {
                topology.single_table(t, None);
            }
            if !temporary && (d.shards.len() > 1 || !d.statements.is_empty()) {
                // A sharded table's columns may have changed.
                if let Err(e) = self.sharding().learn_columns().await {
                    tracing::warn!(error = %e, "reading the sharded tables' columns failed");
                }
            }
        }
        flow
    }

    /// A read over several shards.
    async fn shard_scatter(
        &mut self,
        reply_seq: u8,
        s: &plan::Scatter,
        kind: StatementKind,
        protocol: Protocol,
    ) -> Flow {
        let started = Instant::now();
        let shards: Vec<usize> = s.shards.iter().collect();
        for &shard in &shards {
            if let Some(flow) = self.ready_or_reply(reply_seq, shard).await {
                return flow;
            }
        }
        let ctx = self.ctx.clone();
        let caps = self.caps();
        let id = self.connection_id();
        let Some(sharding) = ctx.sharding.as_deref() else {
            return Flow::Close;
        };
        let Some(sh) = self.shard.as_mut() else {
            return Flow::Close;
        };
        let mut routes = Vec::with_capacity(shards.len());
        for (i, c) in sh.conns.iter_mut().enumerate() {
            if !s.shards.contains(i) {
                continue;
            }
            let Some(sc) = c.as_mut() else {
                return Flow::Close;
            };
            let sql = s.sql_for(i);
            let mut payload = Vec::with_capacity(1 + sql.len());
            payload.push(COM_QUERY);
            payload.extend_from_slice(sql.as_bytes());
            let io = sc.conn.io();
            io.write_packet(0, &payload);
            if io.flush().await.is_err() {
                sc.conn.mark_broken();
                return Flow::Close;
            }
            routes.push(Route::new(i, &mut sc.conn));
        }
        let result = sharding::scatter(
            sharding,
            s,
            &mut routes,
            &mut self.client,
            caps,
            reply_seq,
            protocol,
        )
        .await;
        drop(routes);
        match result {
            Ok(outcome) => {
                self.ctx
                    .metrics
                    .statement(kind, started.elapsed().as_secs_f64());
                self.last_error = outcome.error;
                if let Some(code) = outcome.error {
                    self.ctx.metrics.error(code);
                }
                self.after_shard_error(outcome.error).await;
                if let Some(code) = outcome.error {
                    for shard in shards {
                        self.check_part_after_error(shard, code).await;
                    }
                }
                Flow::Continue
            }
            Err(ScatterError::Client(_)) => {
                for c in sh.conns.iter_mut().flatten() {
                    c.conn.mark_broken();
                }
                Flow::Close
            }
            Err(ScatterError::Backend {
                shard,
                error,
                forwarded,
            }) => {
                tracing::warn!(id, shard, %error, "shard failed during a scatter read");
                for c in sh.conns.iter_mut().flatten() {
                    c.conn.mark_broken();
                }
                sh.conns[shard] = None;
                self.backend_lost(reply_seq, forwarded).await
            }
        }
    }
}
