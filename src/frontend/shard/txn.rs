//! Transactions of a sharding session, and writes over several shards.
//!
//! A transaction reaches a shard lazily, with its first statement there, as an XA
//! transaction under the transaction's XID (`XA START`). Its end depends on what it wrote:
//! on one shard or none, every shard commits in one phase; on several, the distributed
//! commit of [`crate::exec::sharding::xa`]: a global transaction in the coordinator store
//! with a branch per written shard, `XA PREPARE` everywhere, the decision recorded, then
//! `XA COMMIT` everywhere. A write over several shards outside a transaction is one such
//! transaction of its own.
//!
//! A write over several shards that fails part-way inside a transaction leaves the other
//! shards' part done: the transaction can then only roll back, and says so until it does.

use std::sync::Arc;

use super::super::session::{Flow, Session};
use super::global::{GlobalPart, Step};
use super::Ready;
use crate::backend::BackendError;
use crate::coordinator::{Branch, BranchKind, BranchStatus, GlobalStatus};
use crate::exec::sharding::xa::XaResource;
use crate::planner::sharding::plan::{Affected, Write};
use crate::planner::sharding::ShardSet;
use crate::sql::{lex, StatementKind};
use crate::wire::response::ok_packet;
use crate::wire::MysqlError;

/// `XAER_NOTA`: the connection has no XA transaction of that XID.
const XAER_NOTA: u16 = 1397;

/// `ER_LOCK_DEADLOCK`: the database rolled the whole transaction back.
pub(super) const DEADLOCK: u16 = 1213;

/// The error of a statement in a transaction that can only roll back.
pub(super) fn aborted(why: &str) -> MysqlError {
    MysqlError::new(
        1180,
        "HY000",
        format!("{why}; the transaction can only roll back: send ROLLBACK"),
    )
}

/// The end of a transaction that could only roll back: a COMMIT of it fails, saying why.
fn rolled_back_commit(aborted: Option<String>, commit: bool) -> Result<(), EndError> {
    match aborted {
        Some(why) if commit => Err(EndError::Failed(MysqlError::new(
            1180,
            "HY000",
            format!("{why}; the transaction was rolled back"),
        ))),
        _ => Ok(()),
    }
}

/// A transaction could not end as asked.
enum EndError {
    /// The client's error; the session goes on.
    Failed(MysqlError),
    /// A shard connection broke.
    Lost,
}

/// Test hooks of the distributed commit, for crash tests: `TANDEM_TEST_CRASH=<point>`
/// makes the process abort there, `TANDEM_TEST_PAUSE=<point>` makes the session wait 3 s.
/// Points: `xa-prepared` (every shard prepared, no decision yet) and `xa-decided` (the
/// decision recorded, no shard committed yet).
async fn test_hook(point: &str) {
    static HOOKS: std::sync::OnceLock<(Option<String>, Option<String>)> =
        std::sync::OnceLock::new();
    let (crash, pause) = HOOKS.get_or_init(|| {
        (
            std::env::var("TANDEM_TEST_CRASH").ok(),
            std::env::var("TANDEM_TEST_PAUSE").ok(),
        )
    });
    if crash.as_deref() == Some(point) {
        tracing::error!(point, "aborting at a crash point (TANDEM_TEST_CRASH)");
        std::process::abort();
    }
    if pause.as_deref() == Some(point) {
        tracing::warn!(point, "pausing at a test point (TANDEM_TEST_PAUSE)");
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
}

/// Whether `BEGIN`/`START TRANSACTION` text asks for characteristics an XA transaction
/// cannot have (`READ ONLY`, `WITH CONSISTENT SNAPSHOT`).
fn has_characteristics(text: &str) -> bool {
    ["ONLY", "SNAPSHOT"]
        .iter()
        .any(|w| lex::contains_word(text.as_bytes(), w.as_bytes()))
}

impl Session {
    fn xa_of(&self, shard: usize) -> Option<Arc<XaResource>> {
        self.ctx.sharding.as_deref()?.xa.get(shard).cloned()
    }

    pub(super) fn shard_name(&self, shard: usize) -> String {
        self.sharding()
            .topology
            .shards
            .get(shard)
            .cloned()
            .unwrap_or_default()
    }

    /// Runs `sql` on the session's open connection to `shard`.
    pub(super) async fn on_shard(
        &mut self,
        shard: usize,
        sql: &str,
    ) -> Result<crate::wire::scanner::Summary, BackendError> {
        let Some(sc) = self.shard.as_mut().and_then(|s| s.conns[shard].as_mut()) else {
            return Err(BackendError::Protocol("no connection to the shard".into()));
        };
        let r = sc.conn.execute(sql).await;
        if let Err(e) = &r {
            if e.is_fatal() {
                if let Some(sh) = self.shard.as_mut() {
                    sh.conns[shard] = None;
                }
            }
        }
        r
    }

    /// `BEGIN` / `START TRANSACTION`: ends the open transaction (as the database does) and
    /// opens one that reaches shards as statements go there.
    pub(super) async fn shard_begin(&mut self, reply_seq: u8, text: &str) -> Flow {
        if let Err(flow) = self.implicit_commit(reply_seq).await {
            return flow;
        }
        let xid = self.xid.clone();
        let sh = self.shard_session();
        sh.begin = Some(text.to_string());
        match xid {
            // The session's global transaction: each shard's part is a branch of it.
            Some(x) => sh.global = Some(GlobalPart::new(x)),
            None => sh.xa = (!has_characteristics(text)).then(crate::coordinator::service::new_xid),
        }
        let ok = self.shard_ok();
        self.reply(reply_seq, &ok).await
    }

    /// `COMMIT` / `ROLLBACK` of the client.
    pub(super) async fn shard_end(&mut self, reply_seq: u8, text: &str) -> Flow {
        for w in ["CHAIN", "RELEASE", "TO"] {
            if lex::contains_word(text.as_bytes(), w.as_bytes()) {
                let e = super::refusal(&format!("COMMIT or ROLLBACK … {w}"));
                return self.reply_error(reply_seq, e).await;
            }
        }
        let commit = crate::sql::classify(text.as_bytes()) == StatementKind::Commit;
        let started = std::time::Instant::now();
        let kind = if commit {
            StatementKind::Commit
        } else {
            StatementKind::Rollback
        };
        match self.finish(commit).await {
            Ok(()) => {
                self.ctx
                    .metrics
                    .statement(kind, started.elapsed().as_secs_f64());
                self.last_error = None;
                let ok = self.shard_ok();
                self.reply(reply_seq, &ok).await
            }
            Err(EndError::Failed(e)) => {
                self.last_error = Some(e.code);
                self.reply_error(reply_seq, e).await
            }
            Err(EndError::Lost) => self.backend_lost(reply_seq, false).await,
        }
    }

    /// Rolls the open transaction back on every shard it reached (after a deadlock).
    pub(super) async fn rollback_everywhere(&mut self) {
        let _ = self.finish(false).await;
    }

    /// A statement that commits the open transaction first (`BEGIN` in a transaction, DDL,
    /// `SET autocommit`), as the database does.
    pub(super) async fn implicit_commit(&mut self, reply_seq: u8) -> Result<(), Flow> {
        match self.finish(true).await {
            Ok(()) => Ok(()),
            Err(EndError::Failed(e)) => Err(self.reply_error(reply_seq, e).await),
            Err(EndError::Lost) => Err(self.backend_lost(reply_seq, false).await),
        }
    }

    /// Ends the open transaction on every shard it reached.
    async fn finish(&mut self, commit: bool) -> Result<(), EndError> {
        let sh = self.shard_session();
        let (touched, wrote, xa, aborted) =
            (sh.touched, sh.wrote, sh.xa.clone(), sh.aborted.clone());
        let global = sh.global.take();
        sh.end_transaction();
        if let Some(g) = global {
            let ok = commit && aborted.is_none();
            self.finish_global(g, touched, ok)
                .await
                .map_err(EndError::Failed)?;
            return rolled_back_commit(aborted, commit);
        }
        let Some(gtrid) = xa else {
            return self.finish_plain(touched, wrote, commit).await;
        };
        if !commit || aborted.is_some() {
            for shard in touched.iter() {
                let _ = self.xa_rollback(shard, &gtrid).await;
            }
            return rolled_back_commit(aborted, commit);
        }
        let writers: Vec<usize> = touched.iter().filter(|&s| wrote.contains(s)).collect();
        // Shards it only read end first, in one phase (a read may hold locks till then).
        for shard in touched.iter().filter(|s| !wrote.contains(*s)) {
            if let Err(e) = self.one_phase(shard, &gtrid).await {
                tracing::debug!(id = self.connection_id(), shard, error = %e.message, "ending a read-only shard transaction failed");
            }
        }
        match writers.as_slice() {
            [] => Ok(()),
            [only] => self
                .one_phase(*only, &gtrid)
                .await
                .map_err(EndError::Failed),
            _ => self.two_phase(&gtrid, &writers).await,
        }
    }

    /// A transaction begun with characteristics: a plain `COMMIT`/`ROLLBACK` on each shard,
    /// the one it wrote on last, whose error is the client's.
    async fn finish_plain(
        &mut self,
        touched: ShardSet,
        wrote: ShardSet,
        commit: bool,
    ) -> Result<(), EndError> {
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        let last = wrote.first();
        for shard in touched.iter().filter(|&s| Some(s) != last).chain(last) {
            match self.on_shard(shard, verb).await {
                Ok(_) => {}
                Err(BackendError::Server(e)) if Some(shard) == last => {
                    return Err(EndError::Failed(e))
                }
                Err(e) if Some(shard) == last && e.is_fatal() => return Err(EndError::Lost),
                Err(e) => {
                    tracing::debug!(id = self.connection_id(), shard, error = %e, "ending a read-only shard transaction failed");
                }
            }
        }
        Ok(())
    }

    /// `XA END` and `XA COMMIT … ONE PHASE` on `shard`; on failure the shard's part is
    /// rolled back and the error, naming the shard, returned.
    async fn one_phase(&mut self, shard: usize, gtrid: &str) -> Result<(), MysqlError> {
        let Some(xa) = self.xa_of(shard) else {
            return Err(MysqlError::not_supported("a shard that does not exist"));
        };
        let xid = xa.xid(gtrid);
        let mut result = self.on_shard(shard, &format!("XA END {xid}")).await;
        if result.is_ok() {
            result = self
                .on_shard(shard, &format!("XA COMMIT {xid} ONE PHASE"))
                .await;
        }
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = self.xa_rollback(shard, gtrid).await;
                Err(self.shard_error(shard, e))
            }
        }
    }

    /// Rolls back the shard's part of `gtrid`, whatever state it is in. True when it is
    /// gone from the database for sure: rolled back here, or unknown to the session's own
    /// connection (the database ended it). Otherwise the connection is closed, which
    /// leaves a prepared part to the coordinator's phase 2 (and an unprepared one rolled
    /// back by the database).
    async fn xa_rollback(&mut self, shard: usize, gtrid: &str) -> bool {
        let Some(xa) = self.xa_of(shard) else {
            return true;
        };
        if self.shard.as_ref().is_none_or(|s| s.conns[shard].is_none()) {
            return false;
        }
        let xid = xa.xid(gtrid);
        // Ending an ended or rolled-back part fails harmlessly.
        let _ = self.on_shard(shard, &format!("XA END {xid}")).await;
        match self.on_shard(shard, &format!("XA ROLLBACK {xid}")).await {
            Ok(_) => true,
            Err(BackendError::Server(e)) if e.code == XAER_NOTA => true,
            Err(e) => {
                tracing::debug!(id = self.connection_id(), shard, error = %e, "XA ROLLBACK failed; closing the connection");
                self.release_prepared(&[shard]);
                false
            }
        }
    }

    /// A shard's failure as the client's error, naming the shard.
    pub(super) fn shard_error(&self, shard: usize, e: BackendError) -> MysqlError {
        let name = self.shard_name(shard);
        match e {
            BackendError::Server(mut e) => {
                e.message = format!("on shard {name}: {}", e.message);
                e
            }
            other => MysqlError::backend_unavailable(&name, &other.to_string()),
        }
    }

    /// The distributed commit of a transaction that wrote on `writers` (two or more).
    async fn two_phase(&mut self, gtrid: &str, writers: &[usize]) -> Result<(), EndError> {
        let coordinator = self.ctx.coordinator.clone();
        let unavailable = |e: &dyn std::fmt::Display| {
            MysqlError::coordinator_unavailable(&format!(
                "{e}; the transaction was rolled back on every shard"
            ))
        };
        // 1. The global transaction and its branches, in one store write, before any shard
        //    prepares: after a crash, every prepared part is then found from the store.
        let branches: Vec<Branch> = writers
            .iter()
            .filter_map(|&shard| {
                let xa = self.xa_of(shard)?;
                Some(Branch {
                    xid: gtrid.to_string(),
                    branch_id: coordinator.new_branch_id(),
                    kind: BranchKind::Xa,
                    resource: xa.identity().to_string(),
                    status: BranchStatus::Registered,
                    lock_keys: Vec::new(),
                    application_data: None,
                    seq: 0,
                    attention: None,
                })
            })
            .collect();
        let recorded = coordinator
            .begin_with_branches(gtrid, None, &branches)
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&e));
        if let Err(e) = recorded {
            self.abort_distributed(gtrid, writers).await;
            return Err(EndError::Failed(e));
        }
        // 2. Every shard prepares, all at once.
        let prepares = self.per_shard(writers, gtrid, &["XA END", "XA PREPARE"]);
        let failed = self
            .on_shards(prepares)
            .await
            .into_iter()
            .find_map(|(shard, r)| r.err().map(|e| (shard, e)));
        if let Some((shard, e)) = failed {
            let e = self.shard_error(shard, e);
            tracing::warn!(id = self.connection_id(), %gtrid, shard, error = %e.message, "a shard could not prepare; rolling back");
            self.abort_distributed(gtrid, writers).await;
            return Err(EndError::Failed(e));
        }
        test_hook("xa-prepared").await;
        // 3. The decision.
        match coordinator.decide_commit(gtrid).await {
            Ok(GlobalStatus::Committing | GlobalStatus::Committed) => {}
            Ok(status) => {
                // Past its timeout: the coordinator rolled it back.
                self.abort_distributed(gtrid, writers).await;
                coordinator.drive_decided(gtrid, status);
                return Err(EndError::Failed(MysqlError::new(
                    1180,
                    "HY000",
                    format!("the distributed commit of {gtrid} took longer than its timeout and was rolled back on every shard"),
                )));
            }
            Err(e) => {
                // Whether the decision was recorded is unknown: the prepared parts stay for
                // the coordinator to end as the store says. The connections holding them
                // close, which hands them over.
                self.release_prepared(writers);
                return Err(EndError::Failed(MysqlError::coordinator_unavailable(&format!(
                    "{e}; the outcome of {gtrid} is decided by the coordinator store, and the shards follow it"
                ))));
            }
        }
        test_hook("xa-decided").await;
        // 4. Every shard commits, all at once. One that fails now commits later, by phase
        //    2: the transaction is committed.
        let commits = self.per_shard(writers, gtrid, &["XA COMMIT"]);
        for (shard, r) in self.on_shards(commits).await {
            match r {
                Ok(()) => {
                    if let Some(xa) = self.xa_of(shard) {
                        xa.settled(gtrid);
                    }
                }
                Err(e) => {
                    tracing::warn!(id = self.connection_id(), %gtrid, shard, error = %e, "a shard did not commit its prepared part; phase 2 will");
                    self.release_prepared(&[shard]);
                }
            }
        }
        coordinator.drive_decided(gtrid, GlobalStatus::Committing);
        Ok(())
    }

    /// For each of `shards`, the statements `verbs` of its part of `gtrid` (`XA END
    /// '…','…'`, …).
    fn per_shard(
        &self,
        shards: &[usize],
        gtrid: &str,
        verbs: &[&str],
    ) -> Vec<(usize, Vec<String>)> {
        shards
            .iter()
            .filter_map(|&s| {
                let xid = self.xa_of(s)?.xid(gtrid);
                Some((s, verbs.iter().map(|v| format!("{v} {xid}")).collect()))
            })
            .collect()
    }

    /// Runs each shard's statements, in order on each shard and on all shards at once; the
    /// first error of each. A shard whose connection failed loses it.
    async fn on_shards(
        &mut self,
        work: Vec<(usize, Vec<String>)>,
    ) -> Vec<(usize, Result<(), BackendError>)> {
        let no_connection = || BackendError::Protocol("no connection to the shard".into());
        let Some(sh) = self.shard.as_mut() else {
            return work
                .into_iter()
                .map(|(s, _)| (s, Err(no_connection())))
                .collect();
        };
        let mut missing = Vec::new();
        let mut runs = Vec::new();
        for (i, c) in sh.conns.iter_mut().enumerate() {
            let Some((_, statements)) = work.iter().find(|(s, _)| *s == i) else {
                continue;
            };
            let Some(sc) = c.as_mut() else {
                missing.push(i);
                continue;
            };
            runs.push(async move {
                for s in statements {
                    if let Err(e) = sc.conn.execute(s).await {
                        return (i, Err(e));
                    }
                }
                (i, Ok(()))
            });
        }
        let mut out = futures_util::future::join_all(runs).await;
        for (i, r) in &out {
            if r.as_ref().is_err_and(|e| e.is_fatal()) {
                sh.conns[*i] = None;
            }
        }
        out.extend(missing.into_iter().map(|i| (i, Err(no_connection()))));
        out
    }

    /// Rolls back every writer's part of a distributed commit that will not commit, then
    /// records the decision (when the store has the transaction; otherwise its timeout
    /// does).
    async fn abort_distributed(&mut self, gtrid: &str, writers: &[usize]) {
        for &shard in writers {
            if self.xa_rollback(shard, gtrid).await {
                if let Some(xa) = self.xa_of(shard) {
                    xa.settled(gtrid);
                }
            }
        }
        if let Err(e) = self.ctx.coordinator.rollback(gtrid).await {
            tracing::debug!(%gtrid, error = %e, "recording the rollback failed; the coordinator times it out");
        }
    }

    /// Closes the connections that hold prepared parts whose outcome phase 2 will carry
    /// out: the database keeps a prepared part when its connection ends.
    fn release_prepared(&mut self, shards: &[usize]) {
        if let Some(sh) = self.shard.as_mut() {
            for &shard in shards {
                if let Some(mut sc) = sh.conns[shard].take() {
                    sc.conn.mark_broken();
                }
            }
        }
    }

    /// Before a write outside any global transaction: the XA transaction it runs in, and
    /// whether it is one of its own (a statement over several shards outside a
    /// transaction). Refused when it needs a distributed commit the transaction cannot have.
    fn begin_write(&mut self, w: &Write) -> Result<bool, MysqlError> {
        let sh = self.shard_session();
        let own = !sh.in_transaction();
        if !own && sh.xa.is_none() && sh.begin.is_none() {
            // A transaction that autocommit off opens.
            sh.xa = Some(crate::coordinator::service::new_xid());
        }
        let mut shards = crate::planner::sharding::ShardSet::EMPTY;
        for (s, _) in &w.statements {
            shards.insert(*s);
        }
        let elsewhere = sh.wrote.union(shards).len() > 1;
        if !own && sh.xa.is_none() && elsewhere {
            return Err(super::one_shard_only(&format!(
                "a write on {} shards",
                shards.len()
            )));
        }
        // One statement on one shard outside a transaction is atomic by itself.
        let own = own && w.statements.len() > 1;
        if own {
            sh.statement_txn = true;
            sh.xa = Some(crate::coordinator::service::new_xid());
        }
        Ok(own)
    }

    /// A write over several shards: each shard's statement in the transaction (one of its
    /// own outside a transaction), one OK for the client.
    ///
    /// In global transaction `xid`, each shard's statement runs as part of its branch (see
    /// [`super::global`]).
    pub(super) async fn shard_write(
        &mut self,
        reply_seq: u8,
        w: &Write,
        kind: StatementKind,
        xid: Option<String>,
    ) -> Flow {
        let started = std::time::Instant::now();
        if let Some(why) = self.shard_session().aborted.clone() {
            return self.reply_error(reply_seq, aborted(&why)).await;
        }
        // A global transaction's statements are parsed before any runs (one Tandem cannot
        // read is refused with nothing changed); what each shard's table allows is checked
        // there, before its statement runs.
        let mut analysed = Vec::new();
        if xid.is_some() {
            for (_, sql) in &w.statements {
                let d = match crate::sql::dml::analyze(sql) {
                    Ok(d) => d,
                    Err(e) => {
                        let e = super::super::global::analyze_error(e);
                        return self.reply_error(reply_seq, e).await;
                    }
                };
                let table = self
                    .sharding()
                    .topology
                    .logical_name(&d.table().name)
                    .to_lowercase();
                if self.temporary.contains(&table) {
                    let e = MysqlError::not_supported(&format!(
                        "writing to {table} inside a global transaction while a temporary table of that name hides the table"
                    ));
                    return self.reply_error(reply_seq, e).await;
                }
                analysed.push(d);
            }
        }
        let own = match &xid {
            Some(x) => match self.join_global(x).await {
                Ok(own) => own,
                Err(e) => return self.reply_error(reply_seq, e).await,
            },
            None => match self.begin_write(w) {
                Ok(own) => own,
                Err(e) => return self.reply_error(reply_seq, e).await,
            },
        };
        let mut insert_id = 0u64;
        let (mut affected, mut warnings) = (0u64, 0u16);
        let mut failed: Option<MysqlError> = None;
        let (mut first_failed, mut undone) = (false, false);
        for (i, (shard, sql)) in w.statements.iter().enumerate() {
            let shard = *shard;
            match self.shard_ready(shard).await {
                Ok(()) => {}
                Err(Ready::Refused(e)) => {
                    failed = Some(e);
                    first_failed = i == 0;
                    break;
                }
                Err(Ready::Lost) => {
                    failed = Some(MysqlError::backend_lost(&self.shard_name(shard)));
                    first_failed = i == 0;
                    break;
                }
            }
            self.shard_session().wrote.insert(shard);
            let step = match analysed.get(i) {
                Some(dml) => self.at_on_shard(shard, sql, dml).await,
                None => match self.on_shard(shard, sql).await {
                    Ok(summary) => Step::Ran(summary),
                    Err(e) => Step::Failed(self.shard_error(shard, e)),
                },
            };
            match step {
                Step::Ran(summary) => {
                    warnings = warnings.saturating_add(summary.warnings);
                    // The session's next statement without tables (`SELECT
                    // LAST_INSERT_ID()`) goes to the shard that set an insert id, or the
                    // last one written.
                    if insert_id == 0 {
                        insert_id = summary.last_insert_id;
                        self.shard_session().last = shard;
                    }
                    match w.affected {
                        Affected::Sum => affected += summary.affected_rows,
                        Affected::First if i == 0 => affected = summary.affected_rows,
                        Affected::First => {}
                    }
                }
                Step::Failed(e) => {
                    failed = Some(e);
                    // At the first shard, nothing changed anywhere yet.
                    first_failed = i == 0;
                    break;
                }
                Step::Undone(e) => {
                    failed = Some(e);
                    undone = true;
                    break;
                }
                Step::Lost => {
                    failed = Some(MysqlError::backend_lost(&self.shard_name(shard)));
                    undone = true;
                    break;
                }
            }
        }
        let result = match failed {
            Some(e) if own || undone || e.code == DEADLOCK => {
                // A deadlock rolled back the shard's part, as the database rolls back the
                // whole transaction: so does Tandem, on every shard.
                let _ = self.finish(false).await;
                if undone && !own {
                    // The client's transaction is gone, which it must hear of before it
                    // goes on as if it were open.
                    self.shard_session().rolled_back = Some(format!(
                        "{}; the transaction was rolled back on every shard",
                        e.message
                    ));
                }
                Err(e)
            }
            Some(e) if first_failed => Err(e),
            Some(e) => {
                let why = format!("a write on several shards failed part-way ({})", e.message);
                self.shard_session().aborted = Some(why);
                Err(e)
            }
            None if own => match self.finish(true).await {
                Ok(()) => Ok(()),
                Err(EndError::Failed(e)) => Err(e),
                Err(EndError::Lost) => return self.backend_lost(reply_seq, false).await,
            },
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                self.ctx
                    .metrics
                    .statement(kind, started.elapsed().as_secs_f64());
                self.last_error = None;
                let status = self.shard_session().status();
                let mut ok = ok_packet(affected, insert_id, status, warnings);
                if self
                    .caps()
                    .contains(mysql_common::constants::CapabilityFlags::CLIENT_SESSION_TRACK)
                {
                    ok.push(0);
                }
                self.reply(reply_seq, &ok).await
            }
            Err(e) => {
                self.last_error = Some(e.code);
                self.ctx.metrics.error(e.code);
                self.reply_error(reply_seq, e).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::has_characteristics;

    #[test]
    fn characteristics_keep_a_transaction_off_xa() {
        assert!(!has_characteristics("BEGIN"));
        assert!(!has_characteristics("START TRANSACTION READ WRITE"));
        assert!(has_characteristics("START TRANSACTION READ ONLY"));
        assert!(has_characteristics(
            "start transaction with consistent snapshot"
        ));
    }
}
