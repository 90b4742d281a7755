//! Global (AT) transactions on a sharding session: each shard's local transaction is a
//! branch of the global transaction, as a data source's is in `single` mode.
//!
//! A statement is part of a global transaction when it carries `/*+ XID('…') */`, the
//! session set `tandem_xid`, or the session's transaction already is part of one. Such a
//! transaction opens a plain local transaction (`BEGIN`, not `XA START`) on each shard it
//! reaches. Every write is planned as usual, and each shard's statement (the text that
//! runs there) is imaged and checked against the server's own counts, as in `single` mode
//! ([`crate::at::branch`]). At COMMIT each written shard's branch is registered with its
//! undo log, then every shard commits; the global transaction's own commit or rollback
//! (phase 2, by the coordinator) ends the branches. A write outside a transaction is a
//! transaction of its own, committed before the client hears of it.
//!
//! Fail closed, as in `single` mode: reads are checked (one statement, no executable
//! comments, no stored functions), locking reads, DDL and anything Tandem cannot undo are
//! refused, and a change that cannot be undone exactly rolls the whole transaction back.

use super::super::global::{
    analyze_error, at_error, ends_transaction, outcome, run_captured, Captured,
};
use super::super::session::{Flow, Session};
use super::{refusal, COM_QUERY};
use crate::at::branch::{self, BranchWork};
use crate::planner::sharding::plan::{Affected, Plan, Write};
use crate::sql::dml::{self, Dml};
use crate::sql::{hints, StatementKind};
use crate::wire::scanner::{ResponseKind, Summary};
use crate::wire::MysqlError;
use mysql_common::constants::StatusFlags;

/// The global transaction a sharding session's transaction is part of.
pub(super) struct GlobalPart {
    pub xid: String,
    /// The store said the global transaction is open, when the part began or since.
    active: bool,
    /// The branch of each shard the transaction changed rows on, in the order it did.
    pub works: Vec<(usize, BranchWork)>,
}

impl GlobalPart {
    pub fn new(xid: String) -> GlobalPart {
        GlobalPart {
            xid,
            active: false,
            works: Vec::new(),
        }
    }

    fn work(&mut self, shard: usize) -> &mut BranchWork {
        let at = match self.works.iter().position(|(s, _)| *s == shard) {
            Some(i) => i,
            None => {
                let work = BranchWork {
                    xid: self.xid.clone(),
                    ..BranchWork::default()
                };
                self.works.push((shard, work));
                self.works.len() - 1
            }
        };
        &mut self.works[at].1
    }
}

/// How one shard's statement of a write went.
pub(super) enum Step {
    /// It ran: the server's summary.
    Ran(Summary),
    /// It changed nothing (it failed, or was refused before it ran): the client's error.
    Failed(MysqlError),
    /// It ran, but Tandem cannot undo it exactly, or the database rolled the shard's
    /// transaction back: the whole transaction must roll back.
    Undone(MysqlError),
    /// The shard's connection broke.
    Lost,
}

impl Session {
    /// The global transaction a statement with text `text` is part of, if any: its XID
    /// hint, the transaction's, or the session's `tandem_xid`. Cheap when there is none.
    pub(super) fn statement_xid(&mut self, text: &str) -> Result<Option<String>, MysqlError> {
        if hints::has_hint(text.as_bytes()) {
            match hints::xid_hint(text.as_bytes()) {
                Some(Ok(x)) => return Ok(Some(x)),
                Some(Err(e)) => {
                    return Err(MysqlError::new(
                        1210,
                        "HY000",
                        format!("Incorrect XID hint: {}", e.0),
                    ))
                }
                None => {}
            }
        }
        let part = self.shard_session().global.as_ref().map(|g| g.xid.clone());
        Ok(part.or_else(|| self.xid.clone()))
    }

    /// `SET tandem_xid = 'X' | NULL` on a sharding session.
    pub(super) async fn shard_set_xid(
        &mut self,
        reply_seq: u8,
        value: Result<Option<String>, hints::HintError>,
    ) -> Flow {
        let xid = match self.xid_value(value).await {
            Ok(x) => x,
            Err(e) => return self.reply_error(reply_seq, e).await,
        };
        let other = self.shard_session().global.as_ref().map(|g| g.xid.clone());
        if other.is_some_and(|g| xid.as_ref().is_some_and(|x| x != &g)) {
            let e = MysqlError::not_supported(
                "changing tandem_xid while the transaction is part of another global transaction: COMMIT or ROLLBACK it first",
            );
            return self.reply_error(reply_seq, e).await;
        }
        self.xid = xid;
        let ok = self.shard_ok();
        self.reply(reply_seq, &ok).await
    }

    /// A statement of global transaction `xid`: a write runs as a branch on each shard it
    /// changes; anything else is checked, then planned as usual, or refused.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn shard_global(
        &mut self,
        reply_seq: u8,
        payload: &[u8],
        text: &str,
        kind: StatementKind,
        planned: Plan,
        protocol: crate::exec::sharding::Protocol,
        xid: String,
    ) -> Flow {
        use StatementKind::*;
        let refuse = |what: &str| MysqlError::not_supported(what);
        let checked = match dml::shape(text.as_bytes()) {
            Err(e) => Err(analyze_error(e)),
            Ok(s) if s.set_statement => Err(refuse(
                "SET STATEMENT … FOR inside a global transaction",
            )),
            Ok(_) if matches!(kind, Insert | Update | Delete | Replace) => {
                let write = match planned {
                    Plan::One(s) => Write {
                        statements: vec![(s, text.to_string())],
                        affected: Affected::Sum,
                    },
                    Plan::Any => Write {
                        statements: vec![(self.shard_session().last, text.to_string())],
                        affected: Affected::Sum,
                    },
                    Plan::Write(w) => *w,
                    Plan::Refuse(why) => return self.reply_error(reply_seq, refusal(&why)).await,
                    _ => {
                        let e = refuse("this statement inside a global transaction on a sharded executor");
                        return self.reply_error(reply_seq, e).await;
                    }
                };
                return self.shard_write(reply_seq, &write, kind, Some(xid)).await;
            }
            Ok(s) if s.locking_read => {
                // One shard's rows, read as that shard runs the statement.
                let target = match &planned {
                    Plan::One(shard) => Some((*shard, text.to_string())),
                    Plan::Scatter(sc) if sc.shards.len() == 1 && sc.merges_nothing() => sc
                        .shards
                        .first()
                        .map(|shard| (shard, sc.sql_for(shard).to_string())),
                    _ => None,
                };
                match target {
                    Some((shard, sql)) => self.check_shard_locks(shard, &sql, &xid).await,
                    None => Err(refuse(
                        "a locking read (FOR UPDATE, LOCK IN SHARE MODE) over several shards inside a global transaction",
                    )),
                }
            }
            Ok(_) => match kind {
                Select => dml::check_read(text).map_err(analyze_error),
                Show => dml::check_show(text.as_bytes()).map_err(analyze_error),
                Ddl => Err(refuse(
                    "DDL inside a global transaction (it commits the local transaction, and Tandem cannot undo it)",
                )),
                _ => Err(refuse(
                    "this statement inside a global transaction (Tandem cannot undo what it does)",
                )),
            },
        };
        match checked {
            Ok(()) => {
                self.shard_plan_run(reply_seq, payload, text, kind, planned, protocol)
                    .await
            }
            Err(e) => self.reply_error(reply_seq, e).await,
        }
    }

    /// Before a locking read (`SELECT … FOR UPDATE`) of global transaction `xid` on
    /// `shard`, whose statement there is `sql`: waits until no other global transaction
    /// holds a lock on the rows it reads (read committed), as in `single` mode.
    async fn check_shard_locks(
        &mut self,
        shard: usize,
        sql: &str,
        xid: &str,
    ) -> Result<(), MysqlError> {
        let select = dml::analyze_locking_select(sql).map_err(analyze_error)?;
        match self.shard_ready(shard).await {
            Ok(()) => {}
            Err(super::Ready::Refused(e)) => return Err(e),
            Err(super::Ready::Lost) => {
                return Err(MysqlError::backend_lost(&self.shard_name(shard)))
            }
        }
        let Some(at) = self.sharding().at.get(shard).cloned() else {
            return Err(MysqlError::not_supported("a shard that does not exist"));
        };
        let coordinator = self.ctx.coordinator.clone();
        let in_transaction = self.shard_session().in_transaction();
        let Some(sc) = self.shard.as_mut().and_then(|s| s.conns[shard].as_mut()) else {
            return Err(MysqlError::backend_lost(&self.shard_name(shard)));
        };
        let checked = branch::check_global_locks(
            &mut sc.conn,
            &coordinator,
            &at,
            xid,
            &select,
            in_transaction,
        )
        .await;
        if let Err(e) = checked {
            let e = at_error(e);
            // The key read itself may have hit a deadlock.
            self.after_shard_error(Some(e.code)).await;
            return Err(e);
        }
        Ok(())
    }

    /// Makes the session's transaction part of global transaction `xid` before one of its
    /// writes; true when the write is a transaction of its own (autocommit).
    pub(super) async fn join_global(&mut self, xid: &str) -> Result<bool, MysqlError> {
        let sh = self.shard_session();
        match &sh.global {
            Some(g) if g.xid == xid && g.active => return Ok(false),
            Some(g) if g.xid == xid => {
                // Begun by BEGIN under tandem_xid: its first write checks the XID.
                self.check_active(xid).await?;
                if let Some(g) = self.shard_session().global.as_mut() {
                    g.active = true;
                }
                return Ok(false);
            }
            Some(g) => {
                return Err(MysqlError::not_supported(&format!(
                    "a statement for global transaction {xid} in a transaction that is part of {}",
                    g.xid
                )))
            }
            None => {}
        }
        if sh.in_transaction() && !sh.touched.is_empty() {
            return Err(MysqlError::not_supported(
                "joining a global transaction in a transaction that already ran statements on shards (Tandem cannot undo them): set tandem_xid before BEGIN, or give the transaction's first statement the XID hint",
            ));
        }
        self.check_active(xid).await?;
        let sh = self.shard_session();
        let own = !sh.in_transaction();
        sh.xa = None;
        sh.statement_txn |= own;
        let mut part = GlobalPart::new(xid.to_string());
        part.active = true;
        sh.global = Some(part);
        Ok(own)
    }

    /// Runs one shard's statement `sql` of a write in the global transaction: its images
    /// around it, its undo item added to the shard's branch.
    pub(super) async fn at_on_shard(&mut self, shard: usize, sql: &str, dml: &Dml) -> Step {
        let Some(at) = self.sharding().at.get(shard).cloned() else {
            return Step::Failed(MysqlError::not_supported("a shard that does not exist"));
        };
        let name = self.shard_name(shard);
        let max = self.ctx.max_allowed_packet;
        let on_shard = |mut e: MysqlError| {
            e.message = format!("on shard {name}: {}", e.message);
            e
        };
        let Some(sh) = self.shard.as_mut() else {
            return Step::Lost;
        };
        let (Some(sc), Some(global)) = (sh.conns[shard].as_mut(), sh.global.as_mut()) else {
            return Step::Lost;
        };
        let conn = &mut sc.conn;
        let mut pending = match branch::before(conn, &at, dml, false).await {
            Ok(p) => p,
            Err(e) => {
                let fatal = matches!(&e, crate::at::branch::AtError::Backend(b) if b.is_fatal());
                if fatal {
                    sh.conns[shard] = None;
                    return Step::Lost;
                }
                let e = on_shard(at_error(e));
                // An image read may be what hit a deadlock or a lock wait that ended the
                // local transaction.
                return if transaction_gone(conn, e.code).await {
                    Step::Undone(e)
                } else {
                    Step::Failed(e)
                };
            }
        };
        let mut payload = Vec::with_capacity(1 + sql.len());
        payload.push(COM_QUERY);
        payload.extend_from_slice(sql.as_bytes());
        let Some(Captured { summary, bytes, .. }) =
            run_captured(conn, &payload, &mut pending, ResponseKind::Query, max).await
        else {
            sh.conns[shard] = None;
            return Step::Lost;
        };
        if let Some(code) = summary.error {
            if pending.discard(conn).await.is_err() {
                sh.conns[shard] = None;
                return Step::Lost;
            }
            let e = first_packet(&bytes)
                .and_then(MysqlError::decode)
                .unwrap_or_else(|| MysqlError::new(code, "HY000", format!("error {code}")));
            let e = on_shard(e);
            return if transaction_gone(conn, code).await {
                Step::Undone(e)
            } else {
                Step::Failed(e)
            };
        }
        if !conn.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS) {
            // The statement ended the local transaction: it cannot be a branch's.
            return Step::Undone(on_shard(MysqlError::branch_rolled_back(
                "the statement ended the shard's local transaction",
            )));
        }
        let outcome = outcome(&bytes, conn.caps, &summary);
        match branch::after(conn, &at.server, pending, outcome, global.work(shard)).await {
            Ok(()) => Step::Ran(summary),
            Err(e) => {
                let e = on_shard(at_error(e));
                tracing::warn!(xid = %global.xid, shard, error = %e.message, "statement refused after it ran; rolling the transaction back");
                Step::Undone(e)
            }
        }
    }

    /// Ends a transaction that is part of global transaction `global`: on COMMIT each
    /// written shard's branch is registered (its undo log written in its local
    /// transaction), then every shard commits. Any failure before a shard committed rolls
    /// every shard back.
    pub(super) async fn finish_global(
        &mut self,
        global: GlobalPart,
        touched: crate::planner::sharding::ShardSet,
        commit: bool,
    ) -> Result<(), MysqlError> {
        if !commit {
            self.rollback_shards(touched).await;
            return Ok(());
        }
        let coordinator = self.ctx.coordinator.clone();
        let written: Vec<usize> = global.works.iter().map(|(s, _)| *s).collect();
        for (shard, work) in global.works {
            let Some(at) = self.sharding().at.get(shard).cloned() else {
                continue;
            };
            let name = self.shard_name(shard);
            let Some(sc) = self.shard.as_mut().and_then(|s| s.conns[shard].as_mut()) else {
                self.rollback_shards(touched).await;
                return Err(MysqlError::backend_lost(&name));
            };
            if let Err(e) = branch::register(&mut sc.conn, &coordinator, &at, work).await {
                let mut e = at_error(e);
                e.message = format!(
                    "on shard {name}: {}; the transaction was rolled back on every shard",
                    e.message
                );
                self.rollback_shards(touched).await;
                return Err(e);
            }
        }
        // Shards it only read first; once one written shard failed to commit, the rest roll
        // back.
        let order = touched
            .iter()
            .filter(|s| !written.contains(s))
            .chain(touched.iter().filter(|s| written.contains(s)));
        let mut committed = Vec::new();
        let mut failure: Option<MysqlError> = None;
        for shard in order.collect::<Vec<_>>() {
            let verb = if failure.is_some() {
                "ROLLBACK"
            } else {
                "COMMIT"
            };
            match self.on_shard(shard, verb).await {
                Ok(_) if failure.is_none() && written.contains(&shard) => committed.push(shard),
                Ok(_) => {}
                Err(e) if failure.is_none() && written.contains(&shard) => {
                    failure = Some(self.shard_error(shard, e));
                    // A COMMIT that failed did not take effect, unless its connection
                    // broke (then it is closed, and whether it did is unknown).
                    let _ = self.on_shard(shard, "ROLLBACK").await;
                }
                Err(e) => {
                    tracing::debug!(id = self.connection_id(), shard, error = %e, "ending a shard's transaction failed");
                }
            }
        }
        let Some(mut e) = failure else {
            return Ok(());
        };
        let names: Vec<String> = committed.iter().map(|&s| self.shard_name(s)).collect();
        let done = if names.is_empty() {
            String::new()
        } else {
            format!("shards {} committed their part; ", names.join(", "))
        };
        tracing::warn!(xid = %global.xid, error = %e.message, "a shard of a global transaction's branches did not commit");
        e.message = format!(
            "{}; the transaction's branches of global transaction {} are registered, {done}roll the global transaction back to undo them",
            e.message, global.xid
        );
        Err(e)
    }
}

impl Session {
    /// After error `code` of a statement relayed to `shard` in a global transaction's
    /// part: when the database ended the shard's local transaction, the part can only roll
    /// back (its branch there is gone, and what came next would run outside it).
    pub(super) async fn check_part_after_error(&mut self, shard: usize, code: u16) {
        let name = self.shard_name(shard);
        let Some(sh) = self.shard.as_mut() else {
            return;
        };
        if sh.global.is_none() || !sh.touched.contains(shard) || sh.aborted.is_some() {
            return;
        }
        let Some(sc) = sh.conns[shard].as_mut() else {
            return;
        };
        if transaction_gone(&mut sc.conn, code).await {
            sh.aborted = Some(format!(
                "the database ended the local transaction on shard {name} (error {code})"
            ));
        }
    }

    /// Rolls back the local transaction of each of `shards` (one whose connection is gone
    /// was rolled back by the database).
    async fn rollback_shards(&mut self, shards: crate::planner::sharding::ShardSet) {
        for shard in shards.iter() {
            let _ = self.on_shard(shard, "ROLLBACK").await;
        }
    }
}

/// After error `code` in a shard's local transaction: whether the database rolled the
/// whole transaction back. An error packet carries no status, so unless the code says so
/// (a deadlock), the server is asked (a lock wait timeout may, by its settings).
pub(super) async fn transaction_gone(conn: &mut crate::backend::BackendConn, code: u16) -> bool {
    ends_transaction(code)
        || conn.ping().await.is_err()
        || !conn.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS)
}

/// The payload of the first packet of a captured response.
fn first_packet(bytes: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes([*bytes.first()?, *bytes.get(1)?, *bytes.get(2)?, 0]) as usize;
    bytes.get(4..4 + len)
}
