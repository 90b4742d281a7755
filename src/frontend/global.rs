//! The session's side of global transactions: `SET tandem_xid`, the statements of a session
//! in a global context, DML that joins a global transaction as an AT branch, and the local
//! COMMIT that registers the branch.
//!
//! A statement joins when it carries `/*+ XID('…') */`, the session set `tandem_xid`, or its
//! local transaction already is a branch. One local transaction is one branch: an explicit
//! BEGIN … COMMIT, or one autocommit statement, which Tandem wraps in its own BEGIN … COMMIT
//! so the undo log commits with the change and the client hears of success only once the
//! branch is registered.
//!
//! Fail closed: in a global context every statement is read (one statement per query, no
//! executable comments, no stored functions); DML is imaged from the client's own text and
//! checked against the server's own counts of what it changed. When a change cannot be
//! undone exactly after it ran, the local transaction is rolled back and the session refuses
//! everything but ROLLBACK until the client has heard of it.

use mysql_common::constants::{CapabilityFlags, StatusFlags};

use super::relay::relay;
use super::session::{Flow, Session};
use crate::at::branch::{self, AtError, BranchWork, Outcome, Pending};
use crate::at::meta::MetaError;
use crate::backend::{BackendConn, BackendError, SessionSettings};
use crate::coordinator::{CoordinatorError, GlobalStatus};
use crate::sql::dml::{self, AnalyzeError};
use crate::sql::StatementKind;
use crate::sql::{hints, params};
use crate::wire::response::{parse_ok, set_ok_status};
use crate::wire::scanner::{ResponseKind, Summary};
use crate::wire::{MysqlError, PacketIo};

/// A statement that joins a global transaction: the client's packet (what runs), the text
/// Tandem analyses (for a prepared statement, its SQL with the parameters filled in), and the
/// response's shape.
pub(super) struct GlobalStatement<'a> {
    pub payload: &'a [u8],
    pub sql: Result<String, MysqlError>,
    pub response: ResponseKind,
}

impl<'a> GlobalStatement<'a> {
    /// A COM_QUERY: its own text.
    pub fn text(payload: &'a [u8]) -> Self {
        let sql = std::str::from_utf8(&payload[1..])
            .map(str::to_string)
            .map_err(|_| not_utf8());
        GlobalStatement {
            payload,
            sql,
            response: ResponseKind::Query,
        }
    }
}

fn not_utf8() -> MysqlError {
    MysqlError::not_supported("a statement that is not UTF-8 inside a global transaction")
}

/// What a statement in a global context means.
pub(super) enum Global {
    /// Nothing special: forward it as usual.
    Plain,
    /// A DML statement that joins this XID.
    Join(String),
    /// A locking read that must first wait for other global transactions' locks.
    LockingRead(String),
    /// The COMMIT of a local transaction that is a branch.
    Commit,
    /// A ROLLBACK: the branch (or the memory of one rolled back) ends; forward it.
    Rollback,
    /// Refused before reaching the database.
    Refuse(MysqlError),
    /// A COMMIT after the branch's local transaction was rolled back: the client hears so,
    /// and the session is usable again.
    EndAborted(MysqlError),
}

pub(super) fn analyze_error(e: AnalyzeError) -> MysqlError {
    match e {
        AnalyzeError::Parse(m) => MysqlError::cannot_parse(&m),
        AnalyzeError::Unsupported(m) => MysqlError::new(1235, "42000", m),
    }
}

fn backend_error(e: BackendError) -> MysqlError {
    match e {
        BackendError::Server(e) => e,
        e => MysqlError::new(
            2013,
            "HY000",
            format!("Lost connection to the backend: {e}"),
        ),
    }
}

pub(super) fn at_error(e: AtError) -> MysqlError {
    match e {
        AtError::Unsupported(m) => MysqlError::new(1235, "42000", m),
        AtError::Meta(MetaError::NoSuchTable(t)) => MysqlError::no_such_table(&t),
        AtError::Meta(MetaError::NoPrimaryKey(t)) => MysqlError::requires_primary_key(&t),
        AtError::Meta(MetaError::Backend(e)) | AtError::Backend(e) => backend_error(e),
        AtError::LockTimeout { key, holder } => MysqlError::global_lock_timeout(&key, &holder),
        AtError::NotActive { xid, why } => MysqlError::global_not_active(&xid, &why),
        AtError::Coordinator(m) => MysqlError::coordinator_unavailable(&m),
        AtError::Mismatch(m) => MysqlError::branch_rolled_back(&format!(
            "{m}; Tandem cannot undo the statement exactly"
        )),
    }
}

/// Errors after which the database has rolled back the whole local transaction, not only
/// the statement (1205 only with `innodb_rollback_on_timeout`, asked separately).
pub(super) fn ends_transaction(code: u16) -> bool {
    matches!(code, 1213 | 1206 | 1180 | 1181 | 1614)
}

/// Tandem reads statement text as MariaDB does by default: backslash escapes and `"…"`
/// strings, in a character set where a byte below 0x80 is always that ASCII character. A
/// session that changed either is refused in a global context (but for a plain COMMIT or
/// ROLLBACK, see [`Session::plan_global`]).
fn check_session(settings: &SessionSettings) -> Result<(), MysqlError> {
    let leave = "; leave the global transaction (SET tandem_xid = NULL, COMMIT or ROLLBACK) and restore the setting";
    for m in ["NO_BACKSLASH_ESCAPES", "ANSI_QUOTES"] {
        if settings
            .sql_mode
            .split(',')
            .any(|x| x.eq_ignore_ascii_case(m))
        {
            return Err(MysqlError::not_supported(&format!(
                "a global transaction in a session whose sql_mode has {m} (Tandem reads statements with the default quoting rules){leave}"
            )));
        }
    }
    let charset = settings.charset.to_ascii_lowercase();
    if !matches!(
        charset.as_str(),
        "utf8mb4" | "utf8mb3" | "utf8" | "latin1" | "ascii" | "binary"
    ) {
        return Err(MysqlError::not_supported(&format!(
            "a global transaction in a session whose character_set_client is {charset} (Tandem reads statements in utf8mb4, utf8mb3, latin1, ascii or binary){leave}"
        )));
    }
    Ok(())
}

/// A statement that is one bare keyword or two (`COMMIT`, `ROLLBACK WORK`): nothing in it
/// depends on how quotes, escapes or characters are read.
fn bare(sql: &[u8]) -> bool {
    sql.iter()
        .all(|b| b.is_ascii_alphabetic() || b.is_ascii_whitespace() || *b == b'_')
}

/// A statement's response, held back until Tandem has checked what the statement did.
pub(super) struct Captured {
    pub summary: Summary,
    /// The response as the server sent it.
    pub bytes: Vec<u8>,
    /// An after-image query went out behind the statement.
    pub pipelined: bool,
}

/// Sends the statement `payload` with `pending`'s after-image query, when it is known in
/// advance, behind it, and reads the statement's response into memory. `None` when the
/// backend failed (the connection is then broken).
pub(super) async fn run_captured(
    backend: &mut BackendConn,
    payload: &[u8],
    pending: &mut Pending,
    response: ResponseKind,
    max_packet: usize,
) -> Option<Captured> {
    backend.io().write_packet(0, payload);
    let pipelined = pending.queue_after(backend);
    backend.send_queued().await.ok()?;
    let mut sink = PacketIo::new(tokio::io::join(tokio::io::empty(), Vec::new()));
    let summary = relay(backend, &mut sink, response, max_packet).await.ok()?;
    let (join, _) = sink.into_parts();
    let (_, bytes) = join.into_inner();
    if let Some(st) = summary.status {
        backend.status = st;
    }
    Some(Captured {
        summary,
        bytes,
        pipelined,
    })
}

/// What the server's OK packet (the first packet of `bytes`) says a statement did.
pub(super) fn outcome(bytes: &[u8], caps: CapabilityFlags, summary: &Summary) -> Outcome {
    let len = bytes
        .get(..3)
        .map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize);
    let ok = bytes
        .get(4..4 + len)
        .and_then(|p| parse_ok(p, caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK)));
    let matched_changed = ok.and_then(|ok| {
        let numbers: Vec<u64> = ok
            .info
            .split(|b| !b.is_ascii_digit())
            .filter_map(|n| std::str::from_utf8(n).ok()?.parse().ok())
            .collect();
        match numbers.as_slice() {
            [matched, changed, _warnings] => Some((*matched, *changed)),
            _ => None,
        }
    });
    Outcome {
        affected_rows: summary.affected_rows,
        last_insert_id: summary.last_insert_id,
        found_rows: caps.contains(CapabilityFlags::CLIENT_FOUND_ROWS),
        matched_changed,
    }
}

impl Session {
    /// True when a query must be read as part of a global transaction: the session joined
    /// one, its local transaction is a branch (or was one, rolled back), or the text carries
    /// an XID hint. Cheap for the rest: a vectorised search for the hint's opening.
    pub(super) fn in_global_context(&self, sql: &[u8]) -> bool {
        self.xid.is_some()
            || self.branch.is_some()
            || self.aborted.is_some()
            || hints::has_hint(sql)
    }

    /// Before anything in a global context is read: the session's backend, and its settings
    /// checked (see [`check_session`]).
    pub(super) async fn enter_global(&mut self) -> Result<SessionSettings, MysqlError> {
        self.pin_backend(None).await?;
        let stale = std::mem::take(&mut self.status_stale);
        let Some(backend) = self.backend.as_mut() else {
            return Err(MysqlError::backend_lost(self.ctx.pool.name()));
        };
        // An error outside any global context left the transaction's state unknown.
        if stale
            && backend.ping().await.is_ok()
            && !backend.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
        {
            self.local_writes = None;
        }
        backend.session_settings().await.map_err(backend_error)
    }

    /// Decides what a statement of `kind` means in a global context; `session` says whether
    /// the session's settings let Tandem read statement text (see [`check_session`]).
    pub(super) fn plan_global(
        &self,
        kind: StatementKind,
        sql: &[u8],
        session: &SessionSettings,
    ) -> Global {
        use StatementKind::*;
        if let Some(why) = &self.aborted {
            return match kind {
                Rollback => Global::Rollback,
                Commit => Global::EndAborted(MysqlError::branch_rolled_back(why)),
                _ => Global::Refuse(MysqlError::branch_rolled_back(&format!(
                    "{why}; send ROLLBACK before anything else"
                ))),
            };
        }
        if let Err(e) = check_session(session) {
            // A bare COMMIT or ROLLBACK still ends the branch: its statements were all read
            // under settings that passed.
            return match kind {
                Rollback if bare(sql) => Global::Rollback,
                Commit if bare(sql) && self.branch.is_some() => Global::Commit,
                Commit if bare(sql) => Global::Plain,
                _ => Global::Refuse(e),
            };
        }
        let shape = match dml::shape(sql) {
            Ok(s) => s,
            Err(e) => return Global::Refuse(analyze_error(e)),
        };
        if shape.set_statement {
            return Global::Refuse(MysqlError::not_supported(
                "SET STATEMENT … FOR inside a global transaction",
            ));
        }
        let hint = match hints::xid_hint(sql) {
            Some(Ok(x)) => Some(x),
            Some(Err(e)) => {
                return Global::Refuse(MysqlError::new(
                    1210,
                    "HY000",
                    format!("Incorrect XID hint: {}", e.0),
                ))
            }
            None => None,
        };
        let in_branch = self.branch.is_some();
        let xid = hint
            .or_else(|| self.branch.as_ref().map(|b| b.xid.clone()))
            .or_else(|| self.xid.clone());
        let refuse = |what: &str| Global::Refuse(MysqlError::not_supported(what));
        let read = |sql: &[u8]| match std::str::from_utf8(sql) {
            Ok(text) => match dml::check_read(text) {
                Ok(()) => Global::Plain,
                Err(e) => Global::Refuse(analyze_error(e)),
            },
            Err(_) => Global::Refuse(not_utf8()),
        };
        match kind {
            Insert | Update | Delete | Replace => xid.map_or(Global::Plain, Global::Join),
            Select if shape.locking_read => xid.map_or(Global::Plain, Global::LockingRead),
            Select => read(sql),
            // SET autocommit = 1 and SET PASSWORD would commit the open branch behind
            // Tandem's back.
            Set if in_branch && shape.commits => refuse(
                "changing autocommit or a password while a branch of a global transaction is open (it commits the local transaction): COMMIT or ROLLBACK it first",
            ),
            Set => read(sql),
            Show => match dml::check_show(sql) {
                Ok(()) => Global::Plain,
                Err(e) => Global::Refuse(analyze_error(e)),
            },
            Use => Global::Plain,
            Commit if in_branch => Global::Commit,
            Commit => Global::Plain,
            Rollback => Global::Rollback,
            Begin if in_branch => refuse(
                "BEGIN while a branch of a global transaction is open: COMMIT or ROLLBACK it first",
            ),
            Savepoint if in_branch => refuse("savepoints inside a branch of a global transaction"),
            Begin | Savepoint => Global::Plain,
            Ddl => refuse(
                "DDL inside a global transaction (it commits the local transaction, and Tandem cannot undo it)",
            ),
            // A procedure or another statement could change data with no undo log.
            Call | Other => refuse(
                "this statement inside a global transaction (Tandem cannot undo what it does)",
            ),
        }
    }

    /// The branch's local transaction ended without Tandem's COMMIT (the database rolled it
    /// back): nothing of it will commit, so the branch is dropped, and the session refuses
    /// statements until the client rolls back, as its transaction is gone.
    pub(super) fn abandon_branch(&mut self, why: String) {
        if let Some(work) = self.branch.take() {
            tracing::warn!(xid = %work.xid, id = self.connection_id(), %why, "branch abandoned: its local transaction was rolled back");
        }
        self.aborted = Some(why);
    }

    /// After a statement failed inside a local transaction: the error packet carries no
    /// status, so Tandem finds out whether the database rolled the whole transaction back,
    /// and if so forgets it, abandoning the branch it was. `pipelined` when a query went out
    /// behind the statement (its status flags then tell nothing of the statement).
    pub(super) async fn after_error(&mut self, code: u16, pipelined: bool) {
        let global = self.xid.is_some() || self.branch.is_some();
        let Some(backend) = self.backend.as_mut() else {
            return;
        };
        if !backend.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS) {
            return;
        }
        let mut ended = ends_transaction(code);
        if !global && !ended {
            // Outside a global transaction it matters only once the session joins one:
            // asked then (see `enter_global`), not on every error.
            self.status_stale = true;
            return;
        }
        if code == 1205 {
            ended |= backend
                .query_rows("SELECT @@innodb_rollback_on_timeout")
                .await
                .ok()
                .and_then(|r| r.into_iter().next()?.into_iter().next()?)
                .is_some_and(|v| v == "1");
        }
        if !ended && !pipelined && backend.ping().await.is_ok() {
            ended = !backend.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS);
        }
        if !ended {
            return;
        }
        backend.status.remove(StatusFlags::SERVER_STATUS_IN_TRANS);
        self.local_writes = None;
        if self.branch.is_some() {
            self.abandon_branch(format!(
                "the database ended the local transaction with error {code}; the branch of the global transaction was abandoned"
            ));
        }
    }

    /// A statement Tandem relayed committed the branch's local transaction (an implicit
    /// commit that slipped through): its changes are in, without their undo log. The undo log
    /// is written now, on its own, and the branch registered, so that a global rollback can
    /// still restore the rows; failing that, the damage is logged for a person.
    pub(super) async fn register_committed_branch(&mut self) {
        let Some(work) = self.branch.take() else {
            return;
        };
        let xid = work.xid.clone();
        tracing::error!(%xid, id = self.connection_id(), "a relayed statement committed the local transaction of a branch; registering the branch after the fact");
        let at = self.ctx.at.clone();
        let Some(backend) = self.backend.as_mut() else {
            return;
        };
        if let Err(e) = branch::register(backend, &self.ctx.coordinator, &at, work).await {
            tracing::error!(%xid, error = %e, "a committed branch could not be registered: a global rollback will not restore its rows");
        }
    }

    /// `SELECT … FOR UPDATE` in a global transaction: wait for other global transactions'
    /// locks on the rows (read committed), then run the statement as usual.
    pub(super) async fn global_locking_read(
        &mut self,
        reply_seq: u8,
        stmt: GlobalStatement<'_>,
        xid: String,
    ) -> Flow {
        let GlobalStatement {
            payload,
            sql,
            response,
        } = stmt;
        let checked = async {
            let sql = sql?;
            let select = dml::analyze_locking_select(&sql).map_err(analyze_error)?;
            self.pin_backend(None).await?;
            let (at, coordinator) = (self.ctx.at.clone(), self.ctx.coordinator.clone());
            let Some(backend) = self.backend.as_mut() else {
                return Err(MysqlError::backend_lost(self.ctx.pool.name()));
            };
            let in_transaction = backend.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
                || !backend
                    .status
                    .contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
            branch::check_global_locks(backend, &coordinator, &at, &xid, &select, in_transaction)
                .await
                .map_err(at_error)
        }
        .await;
        match checked {
            Ok(()) => {
                self.forward(reply_seq, payload, StatementKind::Select, response)
                    .await
            }
            Err(e) => {
                // The key read itself may have hit a deadlock.
                let code = e.code;
                let flow = self.reply_error(reply_seq, e).await;
                self.after_error(code, false).await;
                flow
            }
        }
    }

    /// COM_STMT_EXECUTE of a prepared statement in a global context: runs it as an AT
    /// statement, or refuses it, and returns how the session goes on; `None` when the
    /// execution is an ordinary one.
    pub(super) async fn global_execute(&mut self, reply_seq: u8, payload: &[u8]) -> Option<Flow> {
        let id = super::session::statement_id(payload)?;
        let p = self.prepared.get(&id)?;
        // The hot path: an execution outside any global transaction costs one lookup.
        if self.xid.is_none() && self.branch.is_none() && self.aborted.is_none() && !p.has_hint {
            return None;
        }
        let kind = p.kind;
        let Some(sql) = p.sql.clone() else {
            return Some(self.reply_error(reply_seq, not_utf8()).await);
        };
        let settings = match self.enter_global().await {
            Ok(settings) => settings,
            Err(e) => return Some(self.reply_error(reply_seq, e).await),
        };
        let xid = match self.plan_global(kind, sql.as_bytes(), &settings) {
            Global::Plain => return None,
            Global::Rollback => {
                self.branch = None;
                self.aborted = None;
                return None;
            }
            Global::Refuse(e) => return Some(self.reply_error(reply_seq, e).await),
            Global::EndAborted(e) => {
                self.aborted = None;
                return Some(self.reply_error(reply_seq, e).await);
            }
            Global::Commit => {
                return Some(
                    self.global_commit(reply_seq, payload, ResponseKind::Execute)
                        .await,
                )
            }
            Global::Join(x) => (x, false),
            Global::LockingRead(x) => (x, true),
        };
        let p = self.prepared.get_mut(&id)?;
        let text = if p.long_data {
            Err(MysqlError::not_supported(
                "parameters sent with COM_STMT_SEND_LONG_DATA in a global transaction",
            ))
        } else {
            // String parameters are in the session's client character set.
            params::decode(payload, p.params as usize, &mut p.types, &settings.charset)
                .and_then(|lits| params::substitute(&sql, &lits))
                .map_err(|e| {
                    MysqlError::not_supported(&format!(
                        "this prepared statement in a global transaction ({})",
                        e.0
                    ))
                })
        };
        let stmt = GlobalStatement {
            payload,
            sql: text,
            response: ResponseKind::Execute,
        };
        Some(match xid {
            (x, true) => self.global_locking_read(reply_seq, stmt, x).await,
            (x, false) => self.global_dml(reply_seq, stmt, x).await,
        })
    }

    /// The value of `SET tandem_xid`: NULL, or the XID of a global transaction that is
    /// still open.
    pub(super) async fn xid_value(
        &self,
        value: Result<Option<String>, hints::HintError>,
    ) -> Result<Option<String>, MysqlError> {
        let xid = value.map_err(|e| MysqlError::new(1210, "HY000", e.0))?;
        if let Some(x) = &xid {
            self.check_active(x).await?;
        }
        Ok(xid)
    }

    /// `SET tandem_xid = 'X' | NULL`.
    pub(super) async fn set_xid(
        &mut self,
        reply_seq: u8,
        value: Result<Option<String>, hints::HintError>,
    ) -> Flow {
        let xid = match self.xid_value(value).await {
            Ok(x) => x,
            Err(e) => return self.reply_error(reply_seq, e).await,
        };
        if let (Some(work), Some(x)) = (&self.branch, &xid) {
            if &work.xid != x {
                let e = MysqlError::not_supported(
                    "changing tandem_xid while a branch of another global transaction is open",
                );
                return self.reply_error(reply_seq, e).await;
            }
        }
        self.xid = xid;
        let ok = self.ok();
        self.reply(reply_seq, &ok).await
    }

    /// The XID must name a global transaction that is still open. A transaction this
    /// sidecar saw begin and not end passes without asking the store (the branch's
    /// registration checks again, in the store); any other answer comes from the store.
    pub(super) async fn check_active(&self, xid: &str) -> Result<(), MysqlError> {
        if self.ctx.coordinator.store().cached(xid).map(|t| t.status) == Some(GlobalStatus::Begin) {
            return Ok(());
        }
        match self.ctx.coordinator.status(xid).await {
            Ok(GlobalStatus::Begin) => Ok(()),
            Ok(s) => Err(MysqlError::global_not_active(
                xid,
                &format!("it is {}", s.name()),
            )),
            Err(CoordinatorError::UnknownXid(x)) => Err(MysqlError::unknown_xid(&x)),
            Err(CoordinatorError::InvalidXid(m)) => Err(MysqlError::new(
                1210,
                "HY000",
                format!("Incorrect XID: {m}"),
            )),
            Err(CoordinatorError::Store(e)) => {
                Err(MysqlError::coordinator_unavailable(&e.to_string()))
            }
        }
    }

    /// Runs a DML statement as part of global transaction `xid`.
    pub(super) async fn global_dml(
        &mut self,
        reply_seq: u8,
        stmt: GlobalStatement<'_>,
        xid: String,
    ) -> Flow {
        match self.global_dml_inner(reply_seq, stmt, xid).await {
            Ok(flow) => flow,
            Err(e) => {
                // An image query may be what hit a deadlock.
                let code = e.code;
                let flow = self.reply_error(reply_seq, e).await;
                self.after_error(code, false).await;
                flow
            }
        }
    }

    async fn global_dml_inner(
        &mut self,
        reply_seq: u8,
        stmt: GlobalStatement<'_>,
        xid: String,
    ) -> Result<Flow, MysqlError> {
        let GlobalStatement {
            payload,
            sql,
            response,
        } = stmt;
        let sql = sql?;
        if let Some(work) = &self.branch {
            if work.xid != xid {
                return Err(MysqlError::not_supported(&format!(
                    "a statement for global transaction {xid} in a local transaction that is a branch of {}",
                    work.xid
                )));
            }
        } else {
            self.check_active(&xid).await?;
        }
        let dml = dml::analyze(&sql).map_err(analyze_error)?;
        if self.branch.is_none() && self.xa {
            return Err(MysqlError::not_supported(
                "joining a global transaction inside an XA transaction",
            ));
        }
        let table = dml.table();
        if self.temporary.contains(&table.name.to_lowercase()) {
            return Err(MysqlError::not_supported(&format!(
                "writing to {} inside a global transaction while a temporary table of that name hides the table",
                table.name
            )));
        }
        self.pin_backend(None).await?;
        let at = self.ctx.at.clone();
        let joining = self.branch.is_none();
        let wrote_before = self.local_writes.clone();
        let Some(backend) = self.backend.as_mut() else {
            return Ok(Flow::Close);
        };
        let status = backend.status;
        let in_trans = status.contains(StatusFlags::SERVER_STATUS_IN_TRANS);
        if let Some(what) = wrote_before.filter(|_| joining && in_trans) {
            return Err(MysqlError::not_supported(&format!(
                "joining a global transaction in a local transaction that already changed data outside it ({what}; Tandem cannot undo those changes): start the local transaction with a statement of the global transaction"
            )));
        }
        let wrap = !in_trans && status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        if !wrap {
            // The local transaction joins now, whatever becomes of this statement: every
            // later statement of it belongs to the branch.
            self.branch.get_or_insert_with(|| BranchWork {
                xid: xid.clone(),
                ..BranchWork::default()
            });
        }
        let Some(backend) = self.backend.as_mut() else {
            return Ok(Flow::Close);
        };
        let mut pending = match branch::before(backend, &at, &dml, wrap).await {
            Ok(p) => p,
            Err(e) => {
                if wrap {
                    let _ = backend.execute("ROLLBACK").await;
                }
                return Err(at_error(e));
            }
        };
        if in_trans && !backend.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS) {
            // The client's transaction is gone (the before image ran outside it): nothing of
            // the branch can commit any more.
            self.abandon_branch(
                "the local transaction ended before this statement; the branch of the global transaction was abandoned"
                    .into(),
            );
            return Err(MysqlError::branch_rolled_back(
                "the local transaction had already ended",
            ));
        }

        // The statement itself: the client's own packet, and behind it the after-image query
        // when that is known in advance.
        let max = self.ctx.max_allowed_packet;
        let Some(Captured {
            summary,
            bytes: captured,
            pipelined,
        }) = run_captured(backend, payload, &mut pending, response, max).await
        else {
            return Ok(self.backend_lost(reply_seq, false).await);
        };
        if let Some(code) = summary.error {
            // The statement failed and changed nothing: no undo item.
            if pending.discard(backend).await.is_err() {
                return Ok(self.backend_lost(reply_seq, false).await);
            }
            if wrap {
                let _ = backend.execute("ROLLBACK").await;
            }
            let flow = self.send_captured(captured, None).await;
            if !wrap {
                self.after_error(code, pipelined).await;
            }
            return Ok(flow);
        }

        let outcome = outcome(&captured, backend.caps, &summary);
        let work = self.branch.get_or_insert_with(|| BranchWork {
            xid: xid.clone(),
            ..BranchWork::default()
        });
        if let Err(e) = branch::after(backend, &at.server, pending, outcome, work).await {
            // The statement ran, but Tandem cannot undo it exactly: none of it may commit.
            let rolled_back = backend.execute("ROLLBACK").await;
            self.branch = None;
            if rolled_back.as_ref().is_err_and(BackendError::is_fatal) {
                return Ok(self.backend_lost(reply_seq, false).await);
            }
            let err = at_error(e);
            tracing::warn!(%xid, error = %err.message, "statement refused after it ran; local transaction rolled back");
            if !wrap {
                self.aborted = Some(err.message.clone());
            }
            return Err(err);
        }
        if !wrap {
            return Ok(self.send_captured(captured, None).await);
        }
        // Autocommit: register, write the undo log, commit, then answer.
        let work = self.branch.take().unwrap_or_default();
        if let Err(e) = branch::register(backend, &self.ctx.coordinator, &at, work).await {
            let _ = backend.execute("ROLLBACK").await;
            return Err(at_error(e));
        }
        let committed = backend
            .execute("COMMIT")
            .await
            .map_err(|e| at_error(e.into()))?;
        Ok(self.send_captured(captured, committed.status).await)
    }

    /// Sends a response held back while Tandem checked the statement, with the status flags
    /// of after Tandem's own transaction when it wrapped the statement in one.
    async fn send_captured(&mut self, mut bytes: Vec<u8>, status: Option<StatusFlags>) -> Flow {
        if let Some(st) = status {
            let one_packet = bytes.len() >= 4
                && u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]) as usize
                    == bytes.len() - 4;
            if one_packet {
                set_ok_status(&mut bytes[4..], st);
            }
        }
        self.client.write_raw(&bytes);
        match self.client.flush().await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// The client's COMMIT of a local transaction that is a branch (a COM_QUERY or the
    /// execution of a prepared COMMIT): register the branch and write its undo log, then let
    /// the COMMIT through. On failure the local transaction is rolled back and the client
    /// gets the error.
    pub(super) async fn global_commit(
        &mut self,
        reply_seq: u8,
        payload: &[u8],
        response: ResponseKind,
    ) -> Flow {
        let Some(work) = self.branch.take() else {
            return self
                .forward(reply_seq, payload, StatementKind::Commit, response)
                .await;
        };
        let at = self.ctx.at.clone();
        let Some(backend) = self.backend.as_mut() else {
            return Flow::Close;
        };
        if let Err(e) = branch::register(backend, &self.ctx.coordinator, &at, work).await {
            let _ = backend.execute("ROLLBACK").await;
            return self.reply_error(reply_seq, at_error(e)).await;
        }
        self.forward(reply_seq, payload, StatementKind::Commit, response)
            .await
    }
}
