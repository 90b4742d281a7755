//! Phase 2 of AT branches on one data source (the resource manager).
//!
//! Commit deletes the branch's undo log; deletions are batched: while one DELETE runs, the
//! branches committed meanwhile queue up and go out together in the next. Rollback, in one local transaction on a connection
//! of its own: reads the undo log (locking it), checks every row against its after image, and
//! restores the before images, items in reverse order; a row already equal to its before
//! image is skipped; any other difference stops the branch as needing a person. Both are
//! idempotent: run twice, the second finds nothing left to do.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::image::{self, pk_key, ImageRow};
use super::undo::{self, ChangeKind, UndoItem, UndoLog};
use crate::backend::{BackendError, Pool, PooledConn};
use crate::coordinator::service::{BoxFuture, Phase2Error, ResourceManager, RollbackOutcome};
use crate::coordinator::Branch;
use crate::sql::quote;

pub struct AtResource {
    pool: Pool,
    /// The undo_log table, named with the data source's database: a client's connection may
    /// have another database current when its branch writes the undo log.
    undo_table: String,
    undo_table_ready: Arc<AtomicBool>,
    deletions: mpsc::UnboundedSender<Deletion>,
}

/// A committed branch whose undo log is to be deleted, and who waits for it.
struct Deletion {
    xid: String,
    branch_id: u64,
    done: oneshot::Sender<Result<(), Phase2Error>>,
}

/// The most undo logs one DELETE removes.
const DELETE_BATCH: usize = 256;

/// How long the first undo log of a batch waits for others. Each DELETE is a transaction of
/// its own (a commit and a log flush in the database): under load, waiting a little turns one
/// DELETE per couple of branches into one per dozens. Nothing waits on the deletion but the
/// branch's record in the coordinator store.
const DELETE_LINGER: Duration = Duration::from_millis(50);

fn err(e: impl std::fmt::Display) -> Phase2Error {
    Phase2Error(e.to_string())
}

impl AtResource {
    /// Must be called inside the runtime: it starts the task that deletes undo logs, and
    /// "global finished" markers once they are `marker_retention` old.
    pub fn new(pool: Pool, marker_retention: Duration) -> Self {
        let (deletions, rx) = mpsc::unbounded_channel();
        let undo_table_ready = Arc::new(AtomicBool::new(false));
        tokio::spawn(delete_undo_logs(
            pool.clone(),
            undo_table_ready.clone(),
            rx,
            marker_retention,
        ));
        let undo_table = match &pool.dsn().database {
            Some(db) => format!("{}.{}", quote::ident(db), undo::UNDO_TABLE),
            None => undo::UNDO_TABLE.to_string(),
        };
        AtResource {
            undo_table,
            pool,
            undo_table_ready,
            deletions,
        }
    }

    /// A connection of Tandem's own to this data source (autocommit, nothing pinned).
    pub async fn control_conn(&self) -> Result<PooledConn, BackendError> {
        self.pool
            .acquire_control()
            .await
            .map_err(|e| BackendError::Protocol(e.to_string()))
    }

    /// The undo_log table a branch writes to.
    pub fn undo_table(&self) -> &str {
        &self.undo_table
    }

    /// The identity branches of this data source carry.
    pub fn identity(&self) -> String {
        self.pool.dsn().identity()
    }

    /// A connection for restoring rows.
    async fn conn(&self) -> Result<PooledConn, Phase2Error> {
        let mut c = self.pool.acquire_control().await.map_err(err)?;
        // Restored TIMESTAMPs go through FROM_UNIXTIME: UTC avoids daylight-saving folds.
        c.execute("SET time_zone = '+00:00'").await.map_err(err)?;
        Ok(c)
    }

    /// Creates the undo_log table if needed, on a connection of its own (DDL would commit a
    /// client's transaction).
    pub async fn ensure_undo_table(&self) -> Result<(), BackendError> {
        ensure_undo_table(&self.pool, &self.undo_table_ready).await
    }

    async fn rollback_branch(&self, branch: &Branch) -> Result<RollbackOutcome, Phase2Error> {
        self.ensure_undo_table().await.map_err(err)?;
        let mut c = self.conn().await?;
        match restore(&mut c, branch).await {
            Ok(outcome) => Ok(outcome),
            Err(RestoreError::Backend(BackendError::Server(e))) if permanent(e.code) => {
                // The restore's local transaction is undone; the rows stay as phase 1 left
                // them, locked, until a person looks.
                let _ = c.execute("ROLLBACK").await;
                Ok(RollbackOutcome::NeedsAttention(format!(
                    "restoring the rows failed with the database's error {}: {}; retrying cannot fix it",
                    e.code, e.message
                )))
            }
            Err(RestoreError::Backend(e)) => Err(err(e)),
            Err(RestoreError::Unreadable(why)) => Ok(RollbackOutcome::NeedsAttention(format!(
                "unreadable undo log: {why}"
            ))),
        }
    }
}

/// Why a restore stopped short.
enum RestoreError {
    Backend(BackendError),
    Unreadable(String),
}

impl From<BackendError> for RestoreError {
    fn from(e: BackendError) -> Self {
        RestoreError::Backend(e)
    }
}

/// Database errors that come back the same on every attempt: the data or the schema refuses
/// the restore (a duplicate key, a foreign key, a NULL or a value the column refuses, a check
/// constraint, a table or column gone, a privilege missing). Every other error (lock waits,
/// deadlocks, a server away, busy or read-only for a while) is retried with backoff.
fn permanent(code: u16) -> bool {
    matches!(
        code,
        1044 | 1045
            | 1048
            | 1054
            | 1136
            | 1142
            | 1143
            | 1146
            | 1264
            | 1265
            | 1292
            | 1364
            | 1366
            | 1406
            | 1451
            | 1452
            | 1586
            | 1062
            | 3105
            | 4025
    )
}

/// Rolls one branch back in one local transaction on `c`: reads the undo log (locking it),
/// restores every item in reverse order, deletes the log, commits.
async fn restore(c: &mut PooledConn, branch: &Branch) -> Result<RollbackOutcome, RestoreError> {
    c.execute("BEGIN").await?;
    let rows = c
        .query_raw(&undo::select_sql(&branch.xid, branch.branch_id))
        .await?;
    let Some(row) = rows.into_iter().next() else {
        // Phase 1 never committed (or not yet): leave the marker so it cannot.
        c.execute(&undo::finished_marker_sql(&branch.xid, branch.branch_id))
            .await?;
        c.execute("COMMIT").await?;
        return Ok(RollbackOutcome::RolledBack);
    };
    let status = row
        .get(1)
        .cloned()
        .flatten()
        .and_then(|s| String::from_utf8(s).ok())
        .and_then(|s| s.parse::<i64>().ok());
    if status == Some(undo::STATUS_GLOBAL_FINISHED) {
        c.execute("COMMIT").await?;
        return Ok(RollbackOutcome::RolledBack);
    }
    let info = row.first().cloned().flatten().unwrap_or_default();
    let log: UndoLog =
        serde_json::from_slice(&info).map_err(|e| RestoreError::Unreadable(e.to_string()))?;
    for item in log.items.iter().rev() {
        if let Some(why) = undo_item(c, item).await? {
            c.execute("ROLLBACK").await?;
            return Ok(RollbackOutcome::NeedsAttention(why));
        }
    }
    c.execute(&undo::delete_sql(&branch.xid, branch.branch_id))
        .await?;
    c.execute("COMMIT").await?;
    Ok(RollbackOutcome::RolledBack)
}

impl ResourceManager for AtResource {
    fn commit<'a>(&'a self, branch: &'a Branch) -> BoxFuture<'a, Result<(), Phase2Error>> {
        Box::pin(async move {
            let (done, result) = oneshot::channel();
            let deletion = Deletion {
                xid: branch.xid.clone(),
                branch_id: branch.branch_id,
                done,
            };
            if self.deletions.send(deletion).is_err() {
                return Err(err("the undo-log cleaner has stopped"));
            }
            result
                .await
                .unwrap_or_else(|_| Err(err("the undo-log cleaner has stopped")))
        })
    }

    fn rollback<'a>(
        &'a self,
        branch: &'a Branch,
    ) -> BoxFuture<'a, Result<RollbackOutcome, Phase2Error>> {
        Box::pin(self.rollback_branch(branch))
    }
}

async fn ensure_undo_table(pool: &Pool, ready: &AtomicBool) -> Result<(), BackendError> {
    if ready.load(Ordering::Acquire) {
        return Ok(());
    }
    let mut c = pool
        .acquire_control()
        .await
        .map_err(|e| BackendError::Protocol(e.to_string()))?;
    c.execute(undo::UNDO_TABLE_DDL).await?;
    ready.store(true, Ordering::Release);
    Ok(())
}

/// Deletes the undo logs of committed branches: everything queued within [`DELETE_LINGER`]
/// of the first, and while the last DELETE ran, goes out in the next one. Now and then also
/// deletes old "global finished" markers. Ends when the resource is dropped.
async fn delete_undo_logs(
    pool: Pool,
    undo_table_ready: Arc<AtomicBool>,
    mut rx: mpsc::UnboundedReceiver<Deletion>,
    marker_retention: Duration,
) {
    let every = (marker_retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(600));
    let mut markers = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    markers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(DELETE_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, DELETE_BATCH) => if n == 0 { return },
            _ = markers.tick() => {
                delete_old_markers(&pool, marker_retention).await;
                continue;
            }
        }
        let until = tokio::time::Instant::now() + DELETE_LINGER;
        while batch.len() < DELETE_BATCH {
            let room = DELETE_BATCH - batch.len();
            match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                Ok(n) if n > 0 => {}
                _ => break, // the linger is over, or the resource is gone
            }
        }
        let keys: Vec<(&str, u64)> = batch
            .iter()
            .map(|d| (d.xid.as_str(), d.branch_id))
            .collect();
        let result = async {
            ensure_undo_table(&pool, &undo_table_ready)
                .await
                .map_err(err)?;
            let mut c = pool.acquire_control().await.map_err(err)?;
            // One autocommit DELETE leaves no session state: no reset needed.
            c.keep_clean();
            c.execute(&undo::delete_many_sql(&keys))
                .await
                .map_err(err)?;
            Ok::<(), Phase2Error>(())
        }
        .await;
        for d in batch.drain(..) {
            let _ = d.done.send(result.clone());
        }
    }
}

/// Deletes "global finished" markers older than `retention`: by then no phase-1 commit of
/// their branch can still be on its way. A database without an undo_log table has none.
async fn delete_old_markers(pool: &Pool, retention: Duration) {
    let warn = |e: &dyn std::fmt::Display| {
        tracing::warn!(data_source = pool.name(), error = %e, "could not delete old global-finished markers");
    };
    let mut c = match pool.acquire_control().await {
        Ok(c) => c,
        Err(e) => return warn(&e),
    };
    c.keep_clean();
    match c.execute(&undo::delete_old_markers_sql(retention)).await {
        Ok(s) if s.affected_rows > 0 => {
            tracing::info!(
                data_source = pool.name(),
                markers = s.affected_rows,
                "deleted old global-finished markers"
            );
        }
        Ok(_) => {}
        Err(BackendError::Server(e)) if e.code == NO_SUCH_TABLE => {}
        Err(e) => warn(&e),
    }
}

const NO_SUCH_TABLE: u16 = 1146;

/// Undoes one item. Returns why it cannot, when a row changed since phase 1.
async fn undo_item(c: &mut PooledConn, item: &UndoItem) -> Result<Option<String>, BackendError> {
    let meta = item.meta();
    let table = image::table_sql(&meta);
    let keyed = match item.kind {
        ChangeKind::Update | ChangeKind::Insert => &item.after,
        ChangeKind::Delete => &item.before,
    };
    let pks: Vec<_> = keyed.iter().map(|r| image::pk_of(&meta, r)).collect();
    let rows = c.query_raw(&image::rows_by_pk_sql(&meta, &pks)).await?;
    let current: HashMap<Vec<Option<Vec<u8>>>, ImageRow> = rows
        .into_iter()
        .map(|r| {
            let row: ImageRow = r.into_iter().map(|v| v.map(image::Bytes)).collect();
            (pk_key(&meta, &row), row)
        })
        .collect();
    let dirty = |row: &ImageRow| {
        Some(format!(
            "{}.{}: row {:?} changed since the global transaction wrote it",
            meta.schema,
            meta.name,
            pk_key(&meta, row)
                .into_iter()
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .collect::<Vec<_>>()
        ))
    };
    match item.kind {
        ChangeKind::Update => {
            for (after, before) in item.after.iter().zip(&item.before) {
                match current.get(&pk_key(&meta, after)) {
                    Some(cur) if cur == after => {
                        let sets: Vec<String> = meta
                            .columns
                            .iter()
                            .enumerate()
                            .filter(|(i, col)| !meta.primary_key.contains(i) && !col.generated)
                            .map(|(i, col)| {
                                let v = before
                                    .get(i)
                                    .and_then(|v| v.as_ref())
                                    .map(|b| b.0.as_slice());
                                format!("{} = {}", quote::ident(&col.name), image::literal(col, v))
                            })
                            .collect();
                        if sets.is_empty() {
                            continue;
                        }
                        let sql = format!(
                            "UPDATE {table} SET {} WHERE {}",
                            sets.join(", "),
                            image::pk_match(&meta, &image::pk_of(&meta, before))
                        );
                        c.execute(&sql).await?;
                    }
                    Some(cur) if cur == before => {}
                    _ => return Ok(dirty(after)),
                }
            }
        }
        ChangeKind::Insert => {
            for after in &item.after {
                match current.get(&pk_key(&meta, after)) {
                    Some(cur) if cur == after => {
                        let sql = format!(
                            "DELETE FROM {table} WHERE {}",
                            image::pk_match(&meta, &image::pk_of(&meta, after))
                        );
                        c.execute(&sql).await?;
                    }
                    None => {}
                    Some(_) => return Ok(dirty(after)),
                }
            }
        }
        ChangeKind::Delete => {
            for before in &item.before {
                match current.get(&pk_key(&meta, before)) {
                    None => {
                        // Generated columns are computed again by the server.
                        let written = || {
                            meta.columns
                                .iter()
                                .enumerate()
                                .filter(|(_, c)| !c.generated)
                        };
                        let cols: Vec<String> =
                            written().map(|(_, c)| quote::ident(&c.name)).collect();
                        let vals: Vec<String> = written()
                            .map(|(i, col)| {
                                image::literal(
                                    col,
                                    before
                                        .get(i)
                                        .and_then(|v| v.as_ref())
                                        .map(|b| b.0.as_slice()),
                                )
                            })
                            .collect();
                        let sql = format!(
                            "INSERT INTO {table} ({}) VALUES ({})",
                            cols.join(", "),
                            vals.join(", ")
                        );
                        c.execute(&sql).await?;
                    }
                    Some(cur) if cur == before => {}
                    Some(_) => return Ok(dirty(before)),
                }
            }
        }
    }
    Ok(None)
}
