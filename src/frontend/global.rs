//! The session's side of global transactions: `SET tandem_xid`, DML that joins a global
//! transaction as an AT branch, and the local COMMIT that registers the branch.
//!
//! A statement joins when it carries `/*+ XID('…') */` or the session set `tandem_xid`. One
//! local transaction is one branch: an explicit BEGIN … COMMIT, or one autocommit statement,
//! which Tandem wraps in its own BEGIN … COMMIT so the undo log commits with the change and
//! the client hears of success only once the branch is registered.

use mysql_common::constants::StatusFlags;
use tokio::io::Empty;

use super::relay::{relay, RelayError};
use super::session::{Flow, Session};
use crate::at::branch::{self, AtError, BranchWork};
use crate::at::meta::MetaError;
use crate::backend::BackendError;
use crate::coordinator::{CoordinatorError, GlobalStatus};
use crate::sql::dml::{self, AnalyzeError};
use crate::sql::StatementKind;
use crate::sql::{hints, params};
use crate::wire::response::set_ok_status;
use crate::wire::scanner::ResponseKind;
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
            .map_err(|_| {
                MysqlError::not_supported(
                    "a statement that is not UTF-8 inside a global transaction",
                )
            });
        GlobalStatement {
            payload,
            sql,
            response: ResponseKind::Query,
        }
    }
}

/// What a statement means for the session's global transaction.
pub(super) enum Global {
    /// Nothing: forward it as usual.
    Plain,
    /// A DML statement that joins this XID.
    Join(String),
    /// A `SELECT … FOR UPDATE` that must first wait for this XID's competitors' locks.
    LockingRead(String),
    /// Refused before reaching the database.
    Refuse(MysqlError),
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// True when a statement ends with `FOR UPDATE` (a constant-time look at its tail).
fn ends_with_for_update(sql: &[u8]) -> bool {
    let end = sql
        .iter()
        .rposition(|b| !b.is_ascii_whitespace() && *b != b';')
        .map_or(0, |p| p + 1);
    let tail = &sql[..end];
    tail.len() >= 10 && tail[tail.len() - 10..].eq_ignore_ascii_case(b"for update")
}

pub(super) fn at_error(e: AtError) -> MysqlError {
    match e {
        AtError::Unsupported(m) => MysqlError::new(1235, "42000", m),
        AtError::Meta(MetaError::NoSuchTable(t)) => MysqlError::no_such_table(&t),
        AtError::Meta(MetaError::NoPrimaryKey(t)) => MysqlError::requires_primary_key(&t),
        AtError::Meta(MetaError::Backend(BackendError::Server(e)))
        | AtError::Backend(BackendError::Server(e)) => e,
        AtError::Meta(MetaError::Backend(e)) | AtError::Backend(e) => MysqlError::new(
            2013,
            "HY000",
            format!("Lost connection to the backend: {e}"),
        ),
        AtError::LockTimeout { key, holder } => MysqlError::global_lock_timeout(&key, &holder),
        AtError::NotActive { xid, why } => MysqlError::global_not_active(&xid, &why),
        AtError::Coordinator(m) => MysqlError::coordinator_unavailable(&m),
    }
}

impl Session {
    /// Decides how a COM_QUERY of `kind` relates to global transactions. Cheap for
    /// statements outside one: a hint scan for DML only.
    pub(super) fn classify_global(&self, kind: StatementKind, sql: &[u8]) -> Global {
        let dml = matches!(
            kind,
            StatementKind::Insert
                | StatementKind::Update
                | StatementKind::Delete
                | StatementKind::Replace
        );
        let in_global = self.xid.is_some() || self.branch.is_some();
        if kind == StatementKind::Select && ends_with_for_update(sql) {
            return match hints::xid_hint(sql) {
                Some(Ok(x)) => Global::LockingRead(x),
                Some(Err(e)) => Global::Refuse(MysqlError::new(
                    1210,
                    "HY000",
                    format!("Incorrect XID hint: {}", e.0),
                )),
                None => match self
                    .branch
                    .as_ref()
                    .map(|b| b.xid.clone())
                    .or_else(|| self.xid.clone())
                {
                    Some(x) => Global::LockingRead(x),
                    None => Global::Plain,
                },
            };
        }
        if !dml {
            return match kind {
                StatementKind::Ddl if in_global => Global::Refuse(MysqlError::not_supported(
                    "DDL inside a global transaction (it would commit the local transaction)",
                )),
                StatementKind::Begin if self.branch.is_some() => Global::Refuse(MysqlError::not_supported(
                    "BEGIN while a branch of a global transaction is open: COMMIT or ROLLBACK it first",
                )),
                StatementKind::Savepoint if self.branch.is_some() => Global::Refuse(MysqlError::not_supported(
                    "savepoints inside a branch of a global transaction",
                )),
                // A procedure or other statement could change data with no undo log.
                StatementKind::Call | StatementKind::Other if in_global => Global::Refuse(MysqlError::not_supported(
                    "this statement inside a global transaction (Tandem cannot undo what it does)",
                )),
                // SET autocommit = 1 would commit the open branch behind Tandem's back.
                StatementKind::Set if self.branch.is_some() && contains_ignore_case(sql, b"autocommit") => {
                    Global::Refuse(MysqlError::not_supported(
                        "changing autocommit while a branch of a global transaction is open: COMMIT or ROLLBACK it first",
                    ))
                }
                _ => Global::Plain,
            };
        }
        let xid = match hints::xid_hint(sql) {
            Some(Ok(x)) => Some(x),
            Some(Err(e)) => {
                return Global::Refuse(MysqlError::new(
                    1210,
                    "HY000",
                    format!("Incorrect XID hint: {}", e.0),
                ))
            }
            None => self.xid.clone(),
        };
        match xid {
            Some(x) => Global::Join(x),
            None => Global::Plain,
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
            let select = dml::analyze_locking_select(&sql).map_err(|e| match e {
                AnalyzeError::Parse(m) => MysqlError::cannot_parse(&m),
                AnalyzeError::Unsupported(m) => MysqlError::new(1235, "42000", m),
            })?;
            self.pin_backend(None).await?;
            let (at, coordinator) = (self.ctx.at.clone(), self.ctx.coordinator.clone());
            let Some(backend) = self.backend.as_mut() else {
                return Err(MysqlError::backend_lost(self.ctx.pool.name()));
            };
            branch::check_global_locks(backend, &coordinator, &at, &xid, &select)
                .await
                .map_err(at_error)
        }
        .await;
        match checked {
            Ok(()) => {
                self.forward(reply_seq, payload, StatementKind::Select, response)
                    .await
            }
            Err(e) => self.reply_error(reply_seq, e).await,
        }
    }

    /// COM_STMT_EXECUTE of a prepared statement that joins a global transaction (or must
    /// check global locks): runs it as an AT statement and returns how the session goes on;
    /// `None` when the execution is an ordinary one.
    pub(super) async fn global_execute(&mut self, reply_seq: u8, payload: &[u8]) -> Option<Flow> {
        let id = super::session::statement_id(payload)?;
        let p = self.prepared.get(&id)?;
        // The hot path: an execution outside any global transaction costs one lookup.
        if self.xid.is_none() && self.branch.is_none() && !p.has_hint {
            return None;
        }
        let sql = p.sql.clone()?;
        let charset = mysql_common::collations::Collation::from(
            mysql_common::collations::CollationId::from(self.key.collation as u16),
        )
        .charset
        .to_string();
        let kind = p.kind;
        let global = self.classify_global(kind, sql.as_bytes());
        let xid = match global {
            Global::Plain => return None,
            Global::Refuse(e) => return Some(self.reply_error(reply_seq, e).await),
            Global::Join(ref x) | Global::LockingRead(ref x) => x.clone(),
        };
        let p = self.prepared.get_mut(&id)?;
        let text = if p.long_data {
            Err(MysqlError::not_supported(
                "parameters sent with COM_STMT_SEND_LONG_DATA in a global transaction",
            ))
        } else {
            params::decode(payload, p.params as usize, &mut p.types, &charset)
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
        Some(match global {
            Global::LockingRead(_) => self.global_locking_read(reply_seq, stmt, xid).await,
            _ => self.global_dml(reply_seq, stmt, xid).await,
        })
    }

    /// `SET tandem_xid = 'X' | NULL`.
    pub(super) async fn set_xid(
        &mut self,
        reply_seq: u8,
        value: Result<Option<String>, hints::HintError>,
    ) -> Flow {
        let xid = match value {
            Ok(x) => x,
            Err(e) => {
                return self
                    .reply_error(reply_seq, MysqlError::new(1210, "HY000", e.0))
                    .await
            }
        };
        if let Some(x) = &xid {
            if let Err(e) = self.check_active(x).await {
                return self.reply_error(reply_seq, e).await;
            }
        }
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
    async fn check_active(&self, xid: &str) -> Result<(), MysqlError> {
        if self.ctx.coordinator.store().cached_status(xid) == Some(GlobalStatus::Begin) {
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
            Err(e) => self.reply_error(reply_seq, e).await,
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
        let dml = dml::analyze(&sql).map_err(|e| match e {
            AnalyzeError::Parse(m) => MysqlError::cannot_parse(&m),
            AnalyzeError::Unsupported(m) => MysqlError::new(1235, "42000", m),
        })?;
        self.pin_backend(None).await?;
        let at = self.ctx.at.clone();
        let Some(backend) = self.backend.as_mut() else {
            return Ok(Flow::Close);
        };
        let status = backend.status;
        let wrap = !status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
            && status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        let mut pending = match branch::before(backend, &at, &dml, wrap).await {
            Ok(p) => p,
            Err(e) => {
                if wrap {
                    let _ = backend.execute("ROLLBACK").await;
                }
                return Err(at_error(e));
            }
        };

        // The statement itself: the client's own text, and behind it the after-image query
        // when that is known in advance.
        backend.io().write_packet(0, payload);
        pending.queue_after(backend);
        if backend.send_queued().await.is_err() {
            return Ok(self.backend_lost(reply_seq, false).await);
        }
        let max = self.ctx.max_allowed_packet;
        let outcome = if wrap {
            let mut sink = PacketIo::new(tokio::io::join(tokio::io::empty(), Vec::new()));
            relay(backend, &mut sink, response, max)
                .await
                .map(|s| (s, Some(sink)))
        } else {
            relay(backend, &mut self.client, response, max)
                .await
                .map(|s| (s, None))
        };
        let (summary, captured) = match outcome {
            Ok(v) => v,
            Err(RelayError::Backend { forwarded, .. }) => {
                return Ok(self.backend_lost(reply_seq, forwarded).await)
            }
            Err(RelayError::Client(_)) => {
                backend.mark_broken();
                return Ok(Flow::Close);
            }
        };
        if let Some(st) = summary.status {
            backend.status = st;
        }
        if summary.error.is_some() {
            // The statement failed and changed nothing: no undo item.
            if pending.discard(backend).await.is_err() {
                return Ok(self.backend_lost(reply_seq, captured.is_none()).await);
            }
            if let Some(sink) = captured {
                let _ = backend.execute("ROLLBACK").await;
                return Ok(self.send_captured(sink, None).await);
            }
            return Ok(Flow::Continue);
        }

        let work = self.branch.get_or_insert_with(|| BranchWork {
            xid: xid.clone(),
            ..BranchWork::default()
        });
        let recorded =
            branch::after(backend, &at.server, pending, summary.last_insert_id, work).await;
        let Some(sink) = captured else {
            // Inside the client's own transaction the client already has its answer; a
            // failure here must stop the branch from committing.
            if let Err(e) = recorded {
                tracing::warn!(%xid, error = %e, "could not record the undo log; the branch will refuse to commit");
                work.poisoned = Some(e.to_string());
            }
            return Ok(Flow::Continue);
        };
        // Autocommit: register, write the undo log, commit, then answer.
        let work = self.branch.take().unwrap_or_default();
        let result = match recorded {
            Ok(()) => branch::register(backend, &self.ctx.coordinator, &at, work).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let _ = backend.execute("ROLLBACK").await;
            return Err(at_error(e));
        }
        let committed = backend
            .execute("COMMIT")
            .await
            .map_err(|e| at_error(e.into()))?;
        Ok(self.send_captured(sink, committed.status).await)
    }

    /// Sends a response captured while Tandem wrapped the statement in its own transaction,
    /// with the status flags of after that transaction.
    async fn send_captured(
        &mut self,
        sink: PacketIo<tokio::io::Join<Empty, Vec<u8>>>,
        status: Option<StatusFlags>,
    ) -> Flow {
        let (join, _) = sink.into_parts();
        let (_, mut bytes) = join.into_inner();
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

    /// The client's COMMIT of a local transaction that is a branch: register the branch and
    /// write its undo log, then let the COMMIT through. On failure the local transaction is
    /// rolled back and the client gets the error.
    pub(super) async fn global_commit(&mut self, reply_seq: u8, payload: &[u8]) -> Flow {
        let Some(work) = self.branch.take() else {
            return self
                .forward(
                    reply_seq,
                    payload,
                    StatementKind::Commit,
                    ResponseKind::Query,
                )
                .await;
        };
        let at = self.ctx.at.clone();
        let Some(backend) = self.backend.as_mut() else {
            return Flow::Close;
        };
        let result = match work.poisoned.clone() {
            Some(why) => Err(AtError::Unsupported(format!(
                "the branch cannot commit: {why}"
            ))),
            None => branch::register(backend, &self.ctx.coordinator, &at, work).await,
        };
        if let Err(e) = result {
            let _ = backend.execute("ROLLBACK").await;
            return self.reply_error(reply_seq, at_error(e)).await;
        }
        self.forward(
            reply_seq,
            payload,
            StatementKind::Commit,
            ResponseKind::Query,
        )
        .await
    }
}
