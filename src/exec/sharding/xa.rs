//! Distributed commit across shards with the database's XA transactions.
//!
//! A transaction of a sharding session runs on each shard as an XA transaction, whose XID
//! is the global transaction's (`gtrid`) and, as `bqual`, the coordinator store's identity
//! and the shard's database (so that shards on one server never share an XID, and a
//! deployment with a store of its own never takes another's XA transactions for its own:
//! its recovery would presume them aborted). Ending it:
//! - when it wrote on one shard or none, each shard commits in one phase
//!   (`XA COMMIT … ONE PHASE`), which costs what a plain `COMMIT` does;
//! - when it wrote on several, the coordinator store gets a global transaction with one
//!   [`BranchKind::Xa`](crate::coordinator::BranchKind::Xa) branch per written shard, every
//!   shard is prepared (`XA PREPARE`), the commit decision is recorded, and only then does
//!   any shard commit (`XA COMMIT`).
//!
//! After a crash, a prepared XA transaction stays in its database (`XA RECOVER`) until it
//! is told its outcome: the coordinator's phase 2 commits or rolls back the branches of a
//! decided transaction through [`XaResource`] and times out an undecided one, and
//! [`recover`] ends those whose global transaction the store no longer knows (presumed
//! abort: a committed transaction is forgotten only once all its branches committed).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{BackendError, Pool, PooledConn};
use crate::coordinator::service::{BoxFuture, Phase2Error};
use crate::coordinator::{
    Branch, Coordinator, CoordinatorError, GlobalStatus, ResourceManager, RollbackOutcome,
};

/// `XAER_NOTA`: the database knows no XA transaction of this XID (on this connection).
const XAER_NOTA: u16 = 1397;

/// How long phase 2 waits for a session that still holds a prepared XA transaction on its
/// connection (it is committing it itself) before it tries again later.
const HELD_WAIT: Duration = Duration::from_secs(2);

/// How many settled entries make [`XaResource::settled`] drop the old ones, and how old.
const SETTLED_PRUNE_AT: usize = 4096;
const SETTLED_KEPT: Duration = Duration::from_secs(600);

/// One shard's part in distributed commits: the phase 2 of its XA branches.
pub struct XaResource {
    pool: Pool,
    identity: String,
    bqual: String,
    /// XA transactions a session ended itself after the decision (and when): phase 2 has
    /// nothing to do for them but record it. Entries phase 2 never asks about (it finished
    /// first, in a mesh) are dropped once old.
    settled: Mutex<HashMap<String, Instant>>,
}

impl XaResource {
    /// `store` is the coordinator store's identity: a deployment with a store of its own
    /// neither sees nor ends this one's XA transactions in a database they share.
    pub fn new(pool: Pool, store: &str) -> XaResource {
        let db = pool.dsn().database.clone().unwrap_or_default();
        let mut bqual = format!("tandem:{store}:{db}");
        // An XID's branch qualifier is at most 64 bytes.
        while bqual.len() > 64 {
            bqual.pop();
        }
        XaResource {
            identity: format!("xa:{}", pool.dsn().identity()),
            pool,
            bqual,
            settled: Mutex::new(HashMap::new()),
        }
    }

    /// The coordinator's name for this resource (branches carry it).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The XID, as SQL, of this shard's part in global transaction `gtrid`.
    pub fn xid(&self, gtrid: &str) -> String {
        format!("'{}','{}'", quote(gtrid), quote(&self.bqual))
    }

    /// A session ended this shard's XA transaction of `gtrid` itself.
    pub fn settled(&self, gtrid: &str) {
        let mut settled = lock(&self.settled);
        if settled.len() >= SETTLED_PRUNE_AT {
            settled.retain(|_, at| at.elapsed() < SETTLED_KEPT);
        }
        settled.insert(gtrid.to_string(), Instant::now());
    }

    /// Tells this shard's XA transaction of `gtrid` its outcome (`COMMIT` or `ROLLBACK`),
    /// from a connection of Tandem's own. Done when the database no longer has it prepared.
    async fn end(&self, gtrid: &str, verb: &str) -> Result<(), Phase2Error> {
        if lock(&self.settled).remove(gtrid).is_some() {
            return Ok(());
        }
        let err = |e: BackendError| Phase2Error(format!("{}: {e}", self.pool.name()));
        let mut conn = self
            .pool
            .acquire_control()
            .await
            .map_err(|e| Phase2Error(format!("{}: {e}", self.pool.name())))?;
        let deadline = std::time::Instant::now() + HELD_WAIT;
        loop {
            match conn
                .execute(&format!("XA {verb} {}", self.xid(gtrid)))
                .await
            {
                Ok(_) => return Ok(()),
                Err(BackendError::Server(e)) if e.code == XAER_NOTA => {
                    if !prepared(&mut conn, &self.bqual)
                        .await
                        .map_err(err)?
                        .contains(gtrid)
                    {
                        // Ended already, or never prepared (its connection's end rolled it back).
                        return Ok(());
                    }
                    // Prepared, and still held by the session that prepared it.
                    if std::time::Instant::now() >= deadline {
                        return Err(Phase2Error(format!(
                            "{}: the XA transaction is still held by a session",
                            self.pool.name()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(err(e)),
            }
        }
    }
}

impl ResourceManager for XaResource {
    fn commit<'a>(&'a self, branch: &'a Branch) -> BoxFuture<'a, Result<(), Phase2Error>> {
        Box::pin(self.end(&branch.xid, "COMMIT"))
    }

    fn rollback<'a>(
        &'a self,
        branch: &'a Branch,
    ) -> BoxFuture<'a, Result<RollbackOutcome, Phase2Error>> {
        Box::pin(async move {
            self.end(&branch.xid, "ROLLBACK").await?;
            Ok(RollbackOutcome::RolledBack)
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// XIDs are Tandem's own (hex digits, `-`, `:` and database names); quotes are doubled all
/// the same.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "''")
}

/// The global transaction ids of the XA transactions prepared in the connection's server
/// under branch qualifier `bqual`.
async fn prepared(conn: &mut PooledConn, bqual: &str) -> Result<HashSet<String>, BackendError> {
    let rows = conn.query_raw("XA RECOVER").await?;
    let mut out = HashSet::new();
    for row in rows {
        let cell = |i: usize| row.get(i).cloned().flatten();
        let (Some(g), Some(b), Some(data)) = (cell(1), cell(2), cell(3)) else {
            continue;
        };
        let parse = |v: Vec<u8>| {
            String::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
        };
        let (Some(g), Some(b)) = (parse(g), parse(b)) else {
            continue;
        };
        if data.len() != g + b || &data[g..] != bqual.as_bytes() {
            continue;
        }
        if let Ok(gtrid) = String::from_utf8(data[..g].to_vec()) {
            out.insert(gtrid);
        }
    }
    Ok(out)
}

/// What recovery did on one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub committed: usize,
    pub rolled_back: usize,
    /// Undecided, left to the coordinator (which times them out).
    pub left: usize,
}

/// Ends the XA transactions left prepared on `shard` whose outcome the store tells, or
/// whose global transaction it no longer knows (rolled back). `alone`: no other process
/// shares the store, so an undecided one has lost its session and is rolled back now.
pub async fn recover(
    shard: &XaResource,
    coordinator: &Arc<Coordinator>,
    alone: bool,
) -> Result<Recovered, Phase2Error> {
    let err = |e: BackendError| Phase2Error(format!("{}: {e}", shard.pool.name()));
    let mut conn = shard
        .pool
        .acquire_control()
        .await
        .map_err(|e| Phase2Error(format!("{}: {e}", shard.pool.name())))?;
    let mut done = Recovered::default();
    for gtrid in prepared(&mut conn, &shard.bqual).await.map_err(err)? {
        let status = match coordinator.get(&gtrid).await {
            Ok(tx) => Some(tx.status),
            Err(CoordinatorError::UnknownXid(_)) => None,
            Err(e) => return Err(Phase2Error(e.to_string())),
        };
        let verb = match status {
            Some(GlobalStatus::Committing | GlobalStatus::Committed) => "COMMIT",
            Some(GlobalStatus::Begin) if alone => {
                // Its session is gone with the process that ran it: decide, and let phase
                // 2 roll every branch back.
                coordinator
                    .rollback(&gtrid)
                    .await
                    .map_err(|e| Phase2Error(e.to_string()))?;
                done.rolled_back += 1;
                continue;
            }
            Some(GlobalStatus::Begin) => {
                done.left += 1;
                continue;
            }
            _ => "ROLLBACK",
        };
        match conn
            .execute(&format!("XA {verb} {}", shard.xid(&gtrid)))
            .await
        {
            Ok(_) | Err(BackendError::Server(_)) => {}
            Err(e) => return Err(err(e)),
        }
        if verb == "COMMIT" {
            done.committed += 1;
        } else {
            done.rolled_back += 1;
        }
        tracing::info!(shard = shard.pool.name(), %gtrid, verb, "ended an XA transaction left prepared");
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn xids_are_quoted() {
        assert_eq!(quote("a'b\\c"), "a''b\\\\c");
    }
}
