//! Prepared statements (the binary protocol) on a sharding session.
//!
//! A statement is prepared on the shard it would go to with its parameters unknown (its
//! "home"), whose answer, under Tandem's own statement id, is the client's. Each execution
//! is planned from the statement's text with the parameters filled in as literals (see
//! [`crate::sql::params`]):
//! - one that stays on one shard runs the client's own COM_STMT_EXECUTE there, under that
//!   shard's id for the statement (prepared there the first time), its answer relayed as is;
//! - a read over several shards runs the filled-in text on them and merges it as a text
//!   query is merged, its rows re-encoded in the binary protocol
//!   ([`crate::wire::binary_row`]).
//!
//! Long data (COM_STMT_SEND_LONG_DATA) and cursors are refused: neither can be planned.

use super::super::session::{statement_id, Flow, PreparedStmt, Session};
use super::{refusal, ShardConn};
use crate::backend::BackendError;
use crate::exec::sharding::Protocol;
use crate::planner::sharding::plan::{self, Plan};
use crate::sql::{classify, functions as sql_functions, params, StatementKind};
use crate::wire::execute;
use crate::wire::scanner::ResponseKind;
use crate::wire::MysqlError;

const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_CLOSE: u8 = 0x19;

/// Largest packet of a prepare answer Tandem reads.
const MAX_PACKET: usize = 1 << 24;

fn unknown_statement(id: u32) -> MysqlError {
    MysqlError::new(
        1243,
        "HY000",
        format!("Unknown prepared statement handler ({id}) given to mysqld_stmt_execute"),
    )
}

impl Session {
    pub(in crate::frontend) async fn shard_prepare(
        &mut self,
        reply_seq: u8,
        payload: &[u8],
    ) -> Flow {
        let sql = &payload[1..];
        let kind = classify(sql);
        if kind == StatementKind::Select {
            if let Some(call) = sql_functions::parse(sql) {
                return self.prepare_tandem_function(reply_seq, call).await;
            }
        }
        use StatementKind::*;
        if matches!(kind, Set | Use | Begin | Commit | Rollback | Savepoint) {
            let e = MysqlError::not_supported(&format!(
                "a prepared {kind:?} statement on a sharded executor; send it as a text query"
            ));
            return self.reply_error(reply_seq, e).await;
        }
        let text = match super::statement_text(sql) {
            Ok(t) => t,
            Err(e) => return self.reply_error(reply_seq, e).await,
        };
        if let Some(flow) = self.shard_check_text(reply_seq).await {
            return flow;
        }
        // Home: where the statement goes with its parameters unknown. A statement on a
        // single table goes to the table's shard whatever its parameters are.
        let no_params = |_: &sqlparser::ast::Expr| None;
        let home = match plan::plan(text, &self.sharding().topology, &no_params) {
            Plan::One(s) => s,
            Plan::Scatter(s) => s.shards.first().unwrap_or(0),
            Plan::Ddl(d) => d.shards.first().unwrap_or(0),
            Plan::Write(w) => w.statements.first().map_or(0, |s| s.0),
            Plan::Any | Plan::Open | Plan::Answer(_) | Plan::Refuse(_) => self.shard_session().last,
        };
        if let Some(flow) = self.ready_outside(reply_seq, home).await {
            return flow;
        }
        let ours = {
            // Ids count from 1 and wrap below Tandem's own functions' range, skipping those
            // still in use.
            let mut id = self.shard_session().next_statement;
            while self.prepared.contains_key(&id) {
                id = if id >= 0x7fff_ffff { 1 } else { id + 1 };
            }
            let sh = self.shard_session();
            sh.next_statement = if id >= 0x7fff_ffff { 1 } else { id + 1 };
            sh.last_statement = id;
            id
        };
        let own;
        let payload = match plan::prepared_text(text, &self.sharding().topology) {
            Some(sql) => {
                own = [&payload[..1], sql.as_bytes()].concat();
                &own[..]
            }
            None => payload,
        };
        let Some(sc) = self.shard.as_mut().and_then(|s| s.conns[home].as_mut()) else {
            return Flow::Close;
        };
        match relay_prepare(sc, payload, ours, &mut self.client).await {
            Ok(Some(params)) => {
                self.prepared.insert(
                    ours,
                    PreparedStmt {
                        kind,
                        sql: Some(text.to_string()),
                        params,
                        types: Vec::new(),
                        long_data: false,
                        has_hint: false,
                        may_write: None,
                        replica_read: false,
                    },
                );
                Flow::Continue
            }
            Ok(None) => Flow::Continue,
            Err(PrepareError::Client) => Flow::Close,
            Err(PrepareError::Backend { forwarded }) => {
                if let Some(sh) = self.shard.as_mut() {
                    sh.conns[home] = None;
                }
                self.backend_lost(reply_seq, forwarded).await
            }
        }
    }

    pub(in crate::frontend) async fn shard_execute(
        &mut self,
        reply_seq: u8,
        payload: &[u8],
    ) -> Flow {
        let Some(mut id) = statement_id(payload) else {
            let e = MysqlError::malformed_packet("COM_STMT_EXECUTE without a statement id");
            return self.reply_error(reply_seq, e).await;
        };
        if id == u32::MAX {
            // MariaDB's "the statement prepared last" (a prepare and its execution sent
            // together).
            id = self.shard_session().last_statement;
        }
        if let Some(call) = self.tandem_stmts.get(&id) {
            let call = call.clone();
            return self.execute_tandem_function(reply_seq, call, payload).await;
        }
        let Some(p) = self.prepared.get_mut(&id) else {
            return self.reply_error(reply_seq, unknown_statement(id)).await;
        };
        let count = usize::from(p.params);
        match execute::bound_types(payload, count) {
            Ok(Some(types)) => p.types = types,
            Ok(None) => {}
            Err(e) => {
                let e = MysqlError::malformed_packet(&e.to_string());
                return self.reply_error(reply_seq, e).await;
            }
        }
        if p.long_data {
            // The long data goes with this execution.
            p.long_data = false;
            let e = refusal("a parameter sent as long data (COM_STMT_SEND_LONG_DATA)");
            return self.reply_error(reply_seq, e).await;
        }
        if execute::opens_cursor(payload) {
            let e = refusal("an execution that opens a cursor");
            return self.reply_error(reply_seq, e).await;
        }
        let kind = p.kind;
        let sql = p.sql.clone().unwrap_or_default();
        let mut types = p.types.clone();
        if let Some(flow) = self.shard_check_text(reply_seq).await {
            return flow;
        }
        let charset = match self.shard_charset().await {
            Some(c) => c,
            None => {
                let e = MysqlError::backend_lost(&self.shard_name_of_last());
                return self.reply_error(reply_seq, e).await;
            }
        };
        let text = params::decode(payload, count, &mut types, &charset)
            .and_then(|literals| params::substitute(&sql, &literals));
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let e = MysqlError::wrong_arguments("mysqld_stmt_execute", &e.0);
                return self.reply_error(reply_seq, e).await;
            }
        };
        let no_params = |_: &sqlparser::ast::Expr| None;
        let planned = plan::plan(&text, &self.sharding().topology, &no_params);
        if let Plan::One(_) | Plan::Any = planned {
            let shard = match planned {
                Plan::One(s) => s,
                _ => self.shard_session().last,
            };
            // The shard runs the client's own execution, under its id for the statement.
            let theirs = match self.prepared_on(reply_seq, shard, id).await {
                Ok(theirs) => theirs,
                Err(flow) => return flow,
            };
            let Some(p) = self.prepared.get(&id) else {
                return Flow::Close;
            };
            let rebound = match execute::rebind(payload, theirs, count, &p.types) {
                Ok(r) => r,
                Err(e) => {
                    let e = MysqlError::malformed_packet(&e.to_string());
                    return self.reply_error(reply_seq, e).await;
                }
            };
            let planned = Plan::One(shard);
            return self
                .shard_run(reply_seq, &rebound, &text, kind, planned, Protocol::Binary)
                .await;
        }
        let mut query = vec![super::COM_QUERY];
        query.extend_from_slice(text.as_bytes());
        self.shard_run(reply_seq, &query, &text, kind, planned, Protocol::Binary)
            .await
    }

    /// The client character set of the session (its shard connections share it), for
    /// string parameters.
    async fn shard_charset(&mut self) -> Option<String> {
        let sh = self.shard_session();
        let open = sh.conns.iter().position(|c| c.is_some()).unwrap_or(sh.last);
        let sc = self.shard.as_mut().and_then(|s| s.conns[open].as_mut())?;
        sc.conn
            .session_settings_ref()
            .await
            .ok()
            .map(|s| s.charset.clone())
    }

    fn shard_name_of_last(&mut self) -> String {
        let last = self.shard_session().last;
        self.sharding()
            .topology
            .shards
            .get(last)
            .cloned()
            .unwrap_or_default()
    }

    /// Shard `shard`'s id for the client's statement `id`, prepared there first when it was
    /// not yet.
    async fn prepared_on(&mut self, reply_seq: u8, shard: usize, id: u32) -> Result<u32, Flow> {
        if let Some(flow) = self.ready_outside(reply_seq, shard).await {
            return Err(flow);
        }
        let Some(p) = self.prepared.get(&id) else {
            return Err(Flow::Close);
        };
        let (sql, params) = (p.sql.clone().unwrap_or_default(), p.params);
        let Some(sc) = self.shard.as_mut().and_then(|s| s.conns[shard].as_mut()) else {
            return Err(Flow::Close);
        };
        if let Some(theirs) = sc.statements.get(&id) {
            return Ok(*theirs);
        }
        match sc
            .conn
            .command(COM_STMT_PREPARE, sql.as_bytes(), ResponseKind::Prepare)
            .await
        {
            Ok(summary) => match summary.prepared {
                Some((theirs, n, _)) if n == params => {
                    sc.statements.insert(id, theirs);
                    Ok(theirs)
                }
                _ => {
                    let name = &self.sharding().topology.shards[shard];
                    let e = MysqlError::not_supported(&format!(
                        "a statement that shard {name} prepares with other parameters"
                    ));
                    Err(self.reply_error(reply_seq, e).await)
                }
            },
            Err(BackendError::Server(mut e)) => {
                let name = &self.sharding().topology.shards[shard];
                e.message = format!("on shard {name}: {}", e.message);
                Err(self.reply_error(reply_seq, e).await)
            }
            Err(_) => {
                if let Some(sh) = self.shard.as_mut() {
                    sh.conns[shard] = None;
                }
                Err(self.backend_lost(reply_seq, false).await)
            }
        }
    }

    /// COM_STMT_CLOSE: the statement is closed on every shard that prepared it.
    pub(in crate::frontend) async fn shard_close(&mut self, payload: &[u8]) {
        let Some(id) = statement_id(payload) else {
            return;
        };
        if self.tandem_stmts.remove(&id).is_some() || self.prepared.remove(&id).is_none() {
            return;
        }
        let Some(sh) = self.shard.as_mut() else {
            return;
        };
        for sc in sh.conns.iter_mut().flatten() {
            let Some(theirs) = sc.statements.remove(&id) else {
                continue;
            };
            let mut close = vec![COM_STMT_CLOSE];
            close.extend_from_slice(&theirs.to_le_bytes());
            let io = sc.conn.io();
            io.write_packet(0, &close);
            if io.flush().await.is_err() {
                sc.conn.mark_broken();
            }
        }
    }
}

enum PrepareError {
    Client,
    Backend { forwarded: bool },
}

/// Sends COM_STMT_PREPARE to a shard and relays its answer to the client, the statement
/// id replaced by `ours`. Returns the statement's parameter count, or `None` when the
/// shard refused it (its error went to the client).
async fn relay_prepare<C>(
    sc: &mut ShardConn,
    payload: &[u8],
    ours: u32,
    client: &mut crate::wire::PacketIo<C>,
) -> Result<Option<u16>, PrepareError>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deprecate_eof = sc.conn.deprecate_eof();
    let io = sc.conn.io();
    io.write_packet(0, payload);
    let broken = |forwarded| PrepareError::Backend { forwarded };
    io.flush().await.map_err(|_| broken(false))?;
    let first = io
        .read_packet(MAX_PACKET)
        .await
        .map_err(|_| broken(false))?
        .ok_or(broken(false))?;
    let mut ok = first.payload.to_vec();
    if ok.first() != Some(&0x00) || ok.len() < 12 {
        client.write_packet(first.seq, &ok);
        client.flush().await.map_err(|_| PrepareError::Client)?;
        return Ok(None);
    }
    let theirs = u32::from_le_bytes([ok[1], ok[2], ok[3], ok[4]]);
    let columns = u16::from_le_bytes([ok[5], ok[6]]);
    let params = u16::from_le_bytes([ok[7], ok[8]]);
    ok[1..5].copy_from_slice(&ours.to_le_bytes());
    client.write_packet(first.seq, &ok);
    let eof = usize::from(!deprecate_eof);
    let mut rest = 0usize;
    for n in [params, columns] {
        if n > 0 {
            rest += usize::from(n) + eof;
        }
    }
    for _ in 0..rest {
        let p = io
            .read_packet(MAX_PACKET)
            .await
            .map_err(|_| broken(true))?
            .ok_or(broken(true))?;
        client.write_packet(p.seq, &p.payload);
    }
    client.flush().await.map_err(|_| PrepareError::Client)?;
    sc.statements.insert(ours, theirs);
    Ok(Some(params))
}
