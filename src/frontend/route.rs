//! A session of an `rw_split` listener: each text query goes where the planner says.
//!
//! The session's primary connection is the one every other path of the session uses
//! (`Session::backend`): writes, transactions, global transactions, prepared statements.
//! A read the planner sends to a replica runs on a second connection, to one replica at a
//! time, which the session brings to its own state first (current database, session
//! variables; see [`crate::exec::session_state`]) and, with read-your-writes, waits on until
//! it has applied the session's last write. When no replica is usable, or the wait runs out,
//! or the replica fails before anything reached the client, the read runs on the primary.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mysql_common::constants::StatusFlags;

use super::relay::{relay, RelayError};
use super::session::{statement_id, Flow, Session};
use crate::backend::PooledConn;
use crate::exec::session_state::Applied;
use crate::planner::rw_split::{self, Facts};
use crate::planner::{Previous, Target};
use crate::sql::{dml, lex, StatementKind};
use crate::wire::execute;
use crate::wire::scanner::{ResponseKind, Summary};

/// How long a read waits for a replica to apply the session's last write before it goes to
/// the primary instead.
pub const GTID_WAIT: Duration = Duration::from_secs(1);

/// How long bringing a replica connection to the session's state may take before the read
/// goes to the primary instead.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// The session's connection to one replica.
pub(super) struct ReplicaConn {
    pub index: usize,
    pub conn: PooledConn,
    /// How far the connection has come along the session's state.
    pub applied: Applied,
    /// How many of the session's possible writes the replica is known to have applied (see
    /// `Session::writes`).
    pub synced: u64,
    /// The session's prepared statements this connection prepared too: the client's id (the
    /// primary's) → the replica's.
    pub statements: HashMap<u32, u32>,
}

/// A read to run on a replica.
#[derive(Clone, Copy)]
enum Read<'a> {
    /// A COM_QUERY payload.
    Query(&'a [u8]),
    /// A COM_STMT_EXECUTE payload of the client's prepared statement `id`.
    Execute { id: u32, payload: &'a [u8] },
}

/// Which connection holds what earlier statements left for later ones to ask about
/// (`ROW_COUNT()`, `FOUND_ROWS()`, `SHOW WARNINGS`): for each, whether it is the replica's.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LeftOn {
    statement: bool,
    select: bool,
    diagnostics: bool,
}

impl LeftOn {
    pub fn on_replica(&self, about: Previous) -> bool {
        match about {
            Previous::Statement => self.statement,
            Previous::Select => self.select,
            Previous::Diagnostics => self.diagnostics,
        }
    }

    /// A statement of `kind` (text `sql`, when it has one) ran on the replica connection or
    /// the primary's, and answered `summary`.
    pub fn ran(
        &mut self,
        replica: bool,
        kind: StatementKind,
        sql: Option<&[u8]>,
        summary: &Summary,
    ) {
        self.statement = replica;
        // A `SHOW` counts its rows for `FOUND_ROWS()` as a `SELECT` does, and so does a
        // subquery (`SET @n = (SELECT …)`); a statement that fails leaves the count as it
        // was.
        let selects = match kind {
            StatementKind::Select => true,
            // `SHOW WARNINGS` and `SHOW ERRORS` leave it.
            StatementKind::Show => sql.is_some_and(|sql| {
                !(lex::contains_word(sql, b"warnings") || lex::contains_word(sql, b"errors"))
            }),
            _ => sql.is_some_and(|sql| lex::contains_word(sql, b"select")),
        };
        if selects && summary.error.is_none() {
            self.select = replica;
        }
        let replaces = summary.error.is_some()
            || summary.warnings > 0
            || sql.is_some_and(|sql| rw_split::replaces_diagnostics(kind, sql));
        if replaces {
            self.diagnostics = replica;
        }
    }

    /// Something ran on the primary that Tandem does not follow statement by statement
    /// (a global transaction's): everything is the primary's.
    pub fn all_on_primary(&mut self) {
        *self = LeftOn::default();
    }
}

/// Why a read did not run on a replica.
enum NotThere {
    /// No replica is usable, or the wait for the session's writes ran out: the primary
    /// answers.
    Primary(&'static str),
    /// The client saw part of an answer and the replica failed: the session ends, as it would
    /// on a direct connection.
    Broken,
}

impl Session {
    /// Runs text query `payload` (of `kind`) where `rw_split`'s planner says.
    pub(super) async fn route_query(
        &mut self,
        reply_seq: u8,
        payload: &[u8],
        kind: StatementKind,
    ) -> Flow {
        let sql = &payload[1..];
        if let Err(e) = self.pin_backend(None).await {
            return self.reply_error(reply_seq, e).await;
        }
        let mut facts = Facts {
            transaction: self.in_local_transaction(),
            global: self.xid.is_some() || self.branch.is_some(),
            pinned: self
                .pinned
                .or_else(|| (!self.temporary.is_empty()).then_some("a temporary table exists")),
        };
        let mut decision = rw_split::route(kind, sql, &facts);
        // The planner reads text with the default quoting rules: under others, the session's
        // reads stay on the primary. Learning the session's rules runs a query on the
        // primary's connection, which would change what a `ROW_COUNT()` or `FOUND_ROWS()`
        // there answers: Tandem asks only when the answer can send a read elsewhere than
        // it goes already (a pinned session's reads stay on the primary anyway), and
        // routes a read about an earlier statement without it.
        let settings_known = self
            .backend
            .as_ref()
            .is_some_and(|b| b.session_settings_known());
        let may_move = facts.pinned.is_none() || decision.pins.is_some();
        if settings_known || (may_move && !matches!(decision.route.target, Target::Previous(_))) {
            if let Some(why) = self.unreadable_text().await {
                facts.pinned = facts.pinned.or(Some(why));
                decision = rw_split::route(kind, sql, &facts);
            }
        }
        if let Some(why) = decision.pins {
            self.pin_primary(why);
        }
        if self.pinned == Some(rw_split::TABLES_LOCKED) && unlocks_tables(sql) {
            self.pinned = None;
        }
        let harmless = match kind {
            StatementKind::Use
            | StatementKind::Begin
            | StatementKind::Rollback
            | StatementKind::Savepoint => true,
            StatementKind::Select | StatementKind::Show => dml::may_write(sql).is_none(),
            StatementKind::Set => decision.route.target == Target::Everywhere,
            _ => false,
        };
        if !harmless {
            self.possible_write();
        }
        match decision.route.target {
            Target::Replica => {
                match self.read_on_replica(Read::Query(payload), kind).await {
                    Ok(flow) => return flow,
                    Err(NotThere::Broken) => return Flow::Close,
                    Err(NotThere::Primary(why)) => {
                        tracing::debug!(id = self.connection_id(), why, "read on the primary");
                        self.ctx.metrics.primary_fallback(why);
                    }
                }
                self.on_primary(reply_seq, payload, kind).await
            }
            Target::Previous(about) if self.left_on.on_replica(about) && self.replica.is_some() => {
                match self.relay_on_replica(Read::Query(payload), kind).await {
                    Ok(flow) => flow,
                    Err(NotThere::Broken) => Flow::Close,
                    Err(NotThere::Primary(_)) => self.on_primary(reply_seq, payload, kind).await,
                }
            }
            Target::Everywhere => {
                let flow = self.on_primary(reply_seq, payload, kind).await;
                if matches!(flow, Flow::Continue) && self.last_error.is_none() {
                    self.carry_state(sql, kind).await;
                }
                flow
            }
            Target::Primary | Target::Previous(_) => {
                self.on_primary(reply_seq, payload, kind).await
            }
        }
    }

    /// Why the planner cannot read the session's statement text, if it cannot: it reads
    /// text with the default quoting rules, so under others the session's reads stay on the
    /// primary (whose connection tells which mode is on).
    async fn unreadable_text(&mut self) -> Option<&'static str> {
        match self.backend.as_mut() {
            Some(b) => match b.session_settings().await {
                Ok(s) => s
                    .sql_mode
                    .split(',')
                    .any(|m| {
                        m.eq_ignore_ascii_case("ANSI_QUOTES")
                            || m.eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES")
                    })
                    .then_some("an sql_mode the planner does not read text under"),
                Err(_) => Some("the session's settings could not be read"),
            },
            None => Some("no primary connection"),
        }
    }

    /// Whether executions of `sql` (of `kind`), about to be prepared, may run on a replica
    /// when the session holds nothing that keeps them on the primary. Decided once, with the
    /// text read as the server reads it now, when it prepares it.
    pub(super) async fn replica_may_execute(&mut self, kind: StatementKind, sql: &[u8]) -> bool {
        if !matches!(kind, StatementKind::Select | StatementKind::Show) {
            return false;
        }
        if self.pin_backend(None).await.is_err() || self.unreadable_text().await.is_some() {
            return false;
        }
        let decision = rw_split::route(kind, sql, &Facts::default());
        decision.route.target == Target::Replica && decision.pins.is_none()
    }

    /// COM_STMT_EXECUTE of the client's prepared statement: runs it on a replica when it is
    /// a read one may answer now. `None`: the primary runs it, as any other command.
    pub(super) async fn route_execute(&mut self, payload: &[u8]) -> Option<Flow> {
        let id = statement_id(payload)?;
        let held = self.in_local_transaction()
            || self.xid.is_some()
            || self.branch.is_some()
            || self.pinned.is_some()
            || !self.temporary.is_empty();
        let p = self.prepared.get_mut(&id)?;
        match execute::bound_types(payload, usize::from(p.params)) {
            Ok(Some(types)) => p.types = types,
            Ok(None) => {}
            // The primary answers a malformed execution.
            Err(_) => return None,
        }
        let kind = p.kind;
        let readable = p.replica_read
            && !p.long_data
            && !execute::opens_cursor(payload)
            && p.types.len() == usize::from(p.params);
        if !readable || held {
            if readable {
                self.ctx.metrics.read_on("primary");
            }
            return None;
        }
        match self
            .read_on_replica(Read::Execute { id, payload }, kind)
            .await
        {
            Ok(flow) => Some(flow),
            Err(NotThere::Broken) => Some(Flow::Close),
            Err(NotThere::Primary(why)) => {
                tracing::debug!(id = self.connection_id(), why, "execution on the primary");
                self.ctx.metrics.primary_fallback(why);
                self.ctx.metrics.read_on("primary");
                None
            }
        }
    }

    /// COM_STMT_CLOSE of the client's statement `id`: the replica connection closes its
    /// copy too.
    pub(super) async fn close_on_replica(&mut self, id: u32) {
        let Some(r) = self.replica.as_mut() else {
            return;
        };
        let Some(theirs) = r.statements.remove(&id) else {
            return;
        };
        let mut close = vec![0x19];
        close.extend_from_slice(&theirs.to_le_bytes());
        let io = r.conn.io();
        io.write_packet(0, &close);
        if io.flush().await.is_err() {
            self.drop_replica();
        }
    }

    /// Whether the primary connection is inside a local transaction (or autocommit is off,
    /// so the next statement opens one).
    fn in_local_transaction(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| {
            b.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
                || !b.status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT)
        })
    }

    /// From now on, the session's reads run on the primary (state a replica cannot share).
    pub(super) fn pin_primary(&mut self, why: &'static str) {
        if self.pinned.is_none() {
            tracing::debug!(id = self.connection_id(), why, "reads stay on the primary");
        }
        self.pinned = Some(why);
        self.replica = None;
    }

    async fn on_primary(&mut self, reply_seq: u8, payload: &[u8], kind: StatementKind) -> Flow {
        let flow = self
            .forward(reply_seq, payload, kind, ResponseKind::Query)
            .await;
        if kind == StatementKind::Select || kind == StatementKind::Show {
            self.ctx.metrics.read_on("primary");
        }
        flow
    }

    /// A statement of the session's state ran on the primary: the session carries it to its
    /// replica connection, now if one is open, and to every one it opens later.
    async fn carry_state(&mut self, sql: &[u8], kind: StatementKind) {
        if kind == StatementKind::Use {
            // The database itself is read from the primary when a replica catches up.
            if let Some(r) = self.replica.as_mut() {
                r.applied.database = None;
            }
            return;
        }
        let Ok(text) = std::str::from_utf8(sql) else {
            self.pin_primary("a session variable set in text that is not UTF-8");
            return;
        };
        if self.state.record(text).is_err() {
            self.pin_primary("more session variables than a replica connection is given");
            return;
        }
        if self.replica.is_some() {
            let caught_up = tokio::time::timeout(CONTROL_TIMEOUT, self.catch_up()).await;
            if !matches!(caught_up, Ok(Ok(()))) {
                self.drop_replica();
            }
        }
    }

    /// Brings the replica connection to the session's state. A statement the replica refuses
    /// pins the session to the primary.
    async fn catch_up(&mut self) -> Result<(), ()> {
        let database = match self.backend.as_mut() {
            Some(primary) => primary.current_database().await.map_err(|_| ())?,
            None => None,
        };
        let Some(r) = self.replica.as_mut() else {
            return Err(());
        };
        if let Some(db) = database.as_deref() {
            if r.applied.database.as_deref() != Some(db) {
                r.conn.init_db(db).await.map_err(|_| ())?;
                r.applied.database = Some(db.to_string());
            }
        }
        let missing = self.state.catch_up(&r.applied).statements.to_vec();
        for sql in missing {
            if let Err(e) = r.conn.execute(&sql).await {
                tracing::debug!(id = self.connection_id(), error = %e, %sql, "a replica refused the session's state");
                self.pin_primary("session state a replica refused");
                return Err(());
            }
            r.applied.statements += 1;
        }
        Ok(())
    }

    /// Runs a read on a replica: the session's one, or a newly chosen one.
    async fn read_on_replica(
        &mut self,
        read: Read<'_>,
        kind: StatementKind,
    ) -> Result<Flow, NotThere> {
        let Some(replicas) = self.ctx.replicas.clone() else {
            return Err(NotThere::Primary("no replicas"));
        };
        if self
            .replica
            .as_ref()
            .is_some_and(|r| !replicas.usable(r.index))
        {
            self.replica = None;
        }
        if self.replica.is_none() {
            let index = replicas
                .pick(rand::random())
                .ok_or(NotThere::Primary("no usable replica"))?;
            let conn = replicas.replicas[index]
                .pool
                .acquire_for(self.key, self.connection_id())
                .await
                .map_err(|_| NotThere::Primary("the replica did not give a connection"))?;
            self.replica = Some(ReplicaConn {
                index,
                conn,
                applied: Applied::default(),
                synced: 0,
                statements: HashMap::new(),
            });
        }
        // Cheap when nothing changed: the primary's current database is known already.
        let caught_up = tokio::time::timeout(CONTROL_TIMEOUT, self.catch_up()).await;
        if !matches!(caught_up, Ok(Ok(()))) {
            self.drop_replica();
            return Err(NotThere::Primary(
                "the replica could not take the session's state",
            ));
        }
        let behind = self
            .replica
            .as_ref()
            .is_some_and(|r| r.synced < self.writes);
        if self.ctx.read_your_writes && behind {
            match tokio::time::timeout(GTID_WAIT + CONTROL_TIMEOUT, self.wait_for_writes()).await {
                Ok(Ok(())) => {}
                Ok(Err(not_there)) => return Err(not_there),
                Err(_) => {
                    self.drop_replica();
                    return Err(NotThere::Primary(
                        "the wait for the session's writes took too long",
                    ));
                }
            }
        }
        self.relay_on_replica(read, kind).await
    }

    /// Waits until the replica has applied everything the primary had written by now (its
    /// `@@gtid_binlog_pos`, which covers the session's own writes and those Tandem made for
    /// it on connections of its own, such as a global rollback's), for at most
    /// [`GTID_WAIT`].
    async fn wait_for_writes(&mut self) -> Result<(), NotThere> {
        let started = Instant::now();
        let writes = self.writes;
        // The position is the server's, not the session's: it is read on a connection of
        // Tandem's own, as a query on the session's would change what its next
        // `FOUND_ROWS()` answers.
        let mut control =
            self.ctx.pool.acquire_control().await.map_err(|_| {
                NotThere::Primary("no connection to ask the primary for its position")
            })?;
        let position = control
            .query_rows("SELECT @@gtid_binlog_pos")
            .await
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .and_then(|row| row.into_iter().next())
            .ok_or(NotThere::Primary(
                "the primary's position could not be read",
            ))?
            .unwrap_or_default();
        control.keep_clean();
        drop(control);
        if !position.is_empty() {
            let wait = format!(
                "SELECT MASTER_GTID_WAIT('{}', {})",
                position.replace(['\'', '\\'], ""),
                GTID_WAIT.as_secs_f64()
            );
            // The wait, too, runs on a connection of Tandem's own: what the replica applied
            // is the server's, and the session's connection keeps its `FOUND_ROWS()`.
            let Some(pool) = self.current_replica().map(|r| r.pool.clone()) else {
                return Err(NotThere::Primary("no replica connection"));
            };
            let Ok(mut control) = pool.acquire_control().await else {
                self.drop_replica();
                return Err(NotThere::Primary(
                    "the replica gave no connection to wait on",
                ));
            };
            let answer = control.query_rows(&wait).await;
            self.ctx.metrics.gtid_wait(started.elapsed().as_secs_f64());
            let caught_up = match answer {
                Ok(rows) => {
                    control.keep_clean();
                    rows.into_iter()
                        .next()
                        .and_then(|row| row.into_iter().next().flatten())
                }
                Err(_) => {
                    self.drop_replica();
                    return Err(NotThere::Primary("the replica failed while waiting"));
                }
            };
            drop(control);
            if caught_up.as_deref() != Some("0") {
                return Err(NotThere::Primary(
                    "the replica did not apply the session's writes in time",
                ));
            }
        }
        if let Some(r) = self.replica.as_mut() {
            r.synced = writes;
        }
        Ok(())
    }

    /// The execution of the client's statement `id` as the replica connection runs it: under
    /// the replica's id for the statement (prepared there first, the first time), binding the
    /// statement's parameter types.
    async fn execution_on_replica(&mut self, id: u32, payload: &[u8]) -> Result<Vec<u8>, NotThere> {
        let Some(p) = self.prepared.get(&id) else {
            return Err(NotThere::Primary("a statement the session did not prepare"));
        };
        let Some(r) = self.replica.as_mut() else {
            return Err(NotThere::Primary("no replica connection"));
        };
        let theirs = match r.statements.get(&id) {
            Some(theirs) => *theirs,
            None => {
                let sql = p.sql.as_deref().unwrap_or_default();
                match r
                    .conn
                    .command(0x16, sql.as_bytes(), ResponseKind::Prepare)
                    .await
                {
                    Ok(summary) => match summary.prepared {
                        Some((theirs, params, _)) if params == p.params => {
                            r.statements.insert(id, theirs);
                            theirs
                        }
                        _ => {
                            self.drop_replica();
                            return Err(NotThere::Primary(
                                "the replica prepared the statement differently",
                            ));
                        }
                    },
                    Err(e) if !e.is_fatal() => {
                        return Err(NotThere::Primary(
                            "the replica could not prepare the statement",
                        ))
                    }
                    Err(_) => {
                        self.drop_replica();
                        return Err(NotThere::Primary(
                            "the replica failed preparing the statement",
                        ));
                    }
                }
            }
        };
        execute::rebind(payload, theirs, usize::from(p.params), &p.types)
            .map_err(|_| NotThere::Primary("an execution the replica could not be given"))
    }

    /// The replica the session's replica connection is to.
    fn current_replica(&self) -> Option<&crate::exec::rw_split::Replica> {
        let r = self.replica.as_ref()?;
        self.ctx.replicas.as_ref()?.replicas.get(r.index)
    }

    /// Gives the replica connection up (broken, or of no use any more).
    fn drop_replica(&mut self) {
        if let Some(mut r) = self.replica.take() {
            r.conn.mark_broken();
        }
    }

    /// Relays a read on the session's replica connection. A failure before anything reached
    /// the client sends the read to the primary.
    async fn relay_on_replica(
        &mut self,
        read: Read<'_>,
        kind: StatementKind,
    ) -> Result<Flow, NotThere> {
        let started = Instant::now();
        let id = self.connection_id();
        let (payload, response) = match read {
            Read::Query(payload) => (std::borrow::Cow::Borrowed(payload), ResponseKind::Query),
            Read::Execute { id, payload } => (
                std::borrow::Cow::Owned(self.execution_on_replica(id, payload).await?),
                ResponseKind::Execute,
            ),
        };
        let Some(mut health) = self.current_replica().map(|r| r.health.clone()) else {
            return Err(NotThere::Primary("no replica connection"));
        };
        let Some(r) = self.replica.as_mut() else {
            return Err(NotThere::Primary("no replica connection"));
        };
        let io = r.conn.io();
        io.write_packet(0, &payload);
        if io.flush().await.is_err() {
            r.conn.mark_broken();
            self.replica = None;
            return Err(NotThere::Primary("the replica connection failed"));
        }
        // Until the replica's first bytes arrive nothing has reached the client: a replica
        // that stops answering meanwhile (paused, cut off: its monitor finds it down) hands
        // the read to the primary instead of holding the client. The relay goes on from
        // the bytes read here.
        let first = tokio::select! {
            biased;
            read = r.conn.io().fill() => read.ok().filter(|n| *n > 0),
            _ = health.wait_for(|h| !h.usable()) => None,
        };
        if first.is_none() {
            tracing::warn!(id, data_source = %r.conn.data_source(), "replica stopped answering before a read's reply");
            r.conn.mark_broken();
            self.replica = None;
            return Err(NotThere::Primary("the replica stopped answering"));
        }
        let name = r.conn.data_source().to_string();
        match relay(
            &mut r.conn,
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
                if let Some(code) = summary.error {
                    self.ctx.metrics.error(code);
                }
                self.ctx.metrics.read_on(&name);
                let sql = match read {
                    Read::Query(payload) => payload.get(1..),
                    Read::Execute { id, .. } => self
                        .prepared
                        .get(&id)
                        .and_then(|p| p.sql.as_deref())
                        .map(str::as_bytes),
                };
                self.left_on.ran(true, kind, sql, &summary);
                Ok(Flow::Continue)
            }
            Err(RelayError::Backend { reason, forwarded }) => {
                tracing::warn!(id, data_source = %name, %reason, "replica failed during a read");
                r.conn.mark_broken();
                self.replica = None;
                if forwarded {
                    Err(NotThere::Broken)
                } else {
                    Err(NotThere::Primary("the replica failed before answering"))
                }
            }
            Err(RelayError::Client(_)) => {
                r.conn.mark_broken();
                Err(NotThere::Broken)
            }
        }
    }
}

impl Session {
    /// The session did something on the primary that may have written (or made Tandem
    /// write for it): its next replica read waits until the replica has applied it.
    pub(super) fn possible_write(&mut self) {
        if self.ctx.replicas.is_some() {
            self.writes += 1;
        }
    }
}

/// `UNLOCK TABLES` (or `UNLOCK TABLE`).
fn unlocks_tables(sql: &[u8]) -> bool {
    let mut words = sql
        .split(|b| b.is_ascii_whitespace() || *b == b';')
        .filter(|w| !w.is_empty());
    words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(b"unlock"))
        && words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(b"tables") || w.eq_ignore_ascii_case(b"table"))
}
