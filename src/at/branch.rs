//! Phase 1 of an AT branch, on the session's own backend connection: row images around each
//! statement, then at local COMMIT the branch registration (with its row locks) and the undo
//! log, in that order, inside the local transaction.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sqlparser::ast::{Expr, UnaryOperator, Value};

use super::image::{self, ImageRow};
use super::lock_key::lock_key;
use super::meta::{MetaCache, MetaError, TableMeta};
use super::rm::AtResource;
use super::undo::{self, ChangeKind, UndoItem, UndoLog};
use crate::backend::{BackendConn, BackendError};
use crate::coordinator::{Branch, BranchKind, BranchStatus, Coordinator, RegisterError};
use crate::sql::dml::{Dml, Insert};

/// How long a writer waits for a global row lock: `attempts` tries, `interval` apart.
#[derive(Debug, Clone, Copy)]
pub struct LockRetry {
    pub interval: Duration,
    pub attempts: u32,
}

/// AT state of one data source, shared by the sessions that use it.
pub struct AtSource {
    /// The server's `host:port`, the first part of this source's lock keys.
    pub server: String,
    pub resource: Arc<AtResource>,
    pub meta: MetaCache,
    pub lock_retry: LockRetry,
}

#[derive(Debug, thiserror::Error)]
pub enum AtError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("global row lock on {key} is held by global transaction {holder}")]
    LockTimeout { key: String, holder: String },
    #[error("global transaction {xid} takes no new branches: {why}")]
    NotActive { xid: String, why: String },
    #[error("coordinator unavailable: {0}")]
    Coordinator(String),
}

/// A local transaction that is a branch of a global transaction, while it runs.
#[derive(Debug, Default)]
pub struct BranchWork {
    pub xid: String,
    pub log: UndoLog,
    pub lock_keys: BTreeSet<String>,
    /// Set when a statement's undo could not be recorded: the branch must not commit.
    pub poisoned: Option<String>,
}

/// What was read before a statement, to finish its undo item after it.
pub struct Pending {
    kind: ChangeKind,
    meta: Arc<TableMeta>,
    before: Vec<ImageRow>,
    insert: Option<InsertKeys>,
    /// An UPDATE's after image is read by primary key, known before the statement runs:
    /// the query can travel right behind the statement.
    after_sql: Option<String>,
    after_queued: bool,
}

impl Pending {
    /// Queues the after-image query, when it can be known in advance, to go out with the
    /// statement. Its reply must then be consumed by [`after`] or [`Pending::discard`].
    pub fn queue_after(&mut self, conn: &mut BackendConn) {
        if let Some(sql) = &self.after_sql {
            conn.queue(sql);
            self.after_queued = true;
        }
    }

    /// Drops the statement's undo item (it failed), reading any reply still due.
    pub async fn discard(self, conn: &mut BackendConn) -> Result<(), AtError> {
        if self.after_queued {
            match conn.read_reply(None).await {
                Err(e) if e.is_fatal() => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The primary key of each inserted row: as written in the statement, or assigned by
/// AUTO_INCREMENT.
struct InsertKeys {
    rows: Vec<Vec<Option<String>>>,
    /// INSERT … ON DUPLICATE KEY UPDATE: rows in the before image were updated, not inserted.
    upsert: bool,
}

fn unsupported<T>(what: &str) -> Result<T, AtError> {
    Err(AtError::Unsupported(format!(
        "{what} is not supported inside a global transaction"
    )))
}

/// A literal as SQL, or `None` for NULL/DEFAULT (a value AUTO_INCREMENT assigns).
fn literal_sql(e: &Expr) -> Result<Option<String>, AtError> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Null => Ok(None),
            Value::Number(..) | Value::SingleQuotedString(_) | Value::DoubleQuotedString(_) => {
                Ok(Some(e.to_string()))
            }
            _ => unsupported("a primary key value that is not a literal"),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } if matches!(expr.as_ref(), Expr::Value(_)) => Ok(Some(e.to_string())),
        Expr::Identifier(i) if i.value.eq_ignore_ascii_case("default") => Ok(None),
        _ => unsupported("a primary key value that is not a literal"),
    }
}

/// Where column `name`'s value stands in each row of an INSERT: by its column list, or by
/// table order when it lists none.
fn value_index(meta: &TableMeta, ins: &Insert, name: &str) -> Option<usize> {
    if ins.columns.is_empty() {
        meta.column_index(name)
    } else {
        ins.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
    }
}

fn insert_keys(meta: &TableMeta, ins: &Insert) -> Result<InsertKeys, AtError> {
    let position = |name: &str| value_index(meta, ins, name);
    let mut rows = Vec::with_capacity(ins.rows.len());
    for row in &ins.rows {
        let mut key = Vec::with_capacity(meta.primary_key.len());
        for &pk in &meta.primary_key {
            let col = &meta.columns[pk];
            let value = match position(&col.name).and_then(|p| row.get(p)) {
                Some(e) => literal_sql(e)?,
                None => None,
            };
            if value.is_none() && !col.auto_increment {
                return unsupported("an INSERT without a value for primary key column");
            }
            key.push(value);
        }
        rows.push(key);
    }
    Ok(InsertKeys {
        rows,
        upsert: false,
    })
}

/// The rows an INSERT … ON DUPLICATE KEY UPDATE may hit: any row sharing the primary key or
/// another unique key with one of the inserted rows. Every key column must be a literal.
fn upsert_conflicts(meta: &TableMeta, ins: &Insert) -> Result<String, AtError> {
    let position = |name: &str| value_index(meta, ins, name);
    let mut conds = Vec::new();
    for row in &ins.rows {
        for key in std::iter::once(&meta.primary_key).chain(&meta.unique_keys) {
            let mut cols = Vec::with_capacity(key.len());
            let mut vals = Vec::with_capacity(key.len());
            for &i in key {
                let col = &meta.columns[i];
                let Some(e) = position(&col.name).and_then(|p| row.get(p)) else {
                    return unsupported("INSERT … ON DUPLICATE KEY UPDATE without a value for every unique key column");
                };
                match literal_sql(e)? {
                    Some(v) => {
                        cols.push(crate::sql::quote::ident(&col.name));
                        vals.push(v);
                    }
                    // NULL never conflicts on a unique key.
                    None => {
                        cols.clear();
                        break;
                    }
                }
            }
            if !cols.is_empty() {
                conds.push(format!("({}) = ({})", cols.join(", "), vals.join(", ")));
            }
        }
    }
    Ok(if conds.is_empty() {
        "FALSE".into()
    } else {
        conds.join(" OR ")
    })
}

/// Reads the before image of a statement (locking its rows) and what is needed for the after
/// image. With `begin`, first opens the local transaction, in the same round trip as the
/// before image.
pub async fn before(
    conn: &mut BackendConn,
    source: &AtSource,
    dml: &Dml,
    begin: bool,
) -> Result<Pending, AtError> {
    let (table, kind) = match dml {
        Dml::Insert(i) => (&i.table, ChangeKind::Insert),
        Dml::Update(u) => (&u.table, ChangeKind::Update),
        Dml::Delete(d) => (&d.table, ChangeKind::Delete),
    };
    let meta = source
        .meta
        .get(conn, table.schema.as_deref(), &table.name)
        .await?;
    let filter = match dml {
        Dml::Insert(ins) => {
            let mut keys = insert_keys(&meta, ins)?;
            let mut before = Vec::new();
            if let Some(assignments) = &ins.on_duplicate {
                if assignments.iter().any(|(c, _)| meta.is_primary_key(c)) {
                    return unsupported("an ON DUPLICATE KEY UPDATE of a primary key column");
                }
                if keys.rows.iter().flatten().any(Option::is_none) {
                    return unsupported(
                        "INSERT … ON DUPLICATE KEY UPDATE with AUTO_INCREMENT keys",
                    );
                }
                let sql = format!(
                    "SELECT {} FROM {} WHERE {} FOR UPDATE",
                    image::select_list(&meta, &image::table_sql(&meta)),
                    image::table_sql(&meta),
                    upsert_conflicts(&meta, ins)?
                );
                before = read_rows_after(conn, begin, &sql).await?;
                keys.upsert = true;
            } else if begin {
                conn.execute("BEGIN").await?;
            }
            return Ok(Pending {
                kind,
                meta,
                before,
                insert: Some(keys),
                after_sql: None,
                after_queued: false,
            });
        }
        Dml::Update(u) => {
            if u.assignments.iter().any(|(c, _)| meta.is_primary_key(c)) {
                return unsupported("an UPDATE of a primary key column");
            }
            &u.filter
        }
        Dml::Delete(d) => &d.filter,
    };
    let sql = image::rows_by_filter_sql(&meta, table.alias.as_deref(), filter);
    let before = read_rows_after(conn, begin, &sql).await?;
    let after_sql = (kind == ChangeKind::Update && !before.is_empty()).then(|| {
        let pks: Vec<_> = before.iter().map(|r| image::pk_of(&meta, r)).collect();
        image::rows_by_pk_sql(&meta, &pks)
    });
    Ok(Pending {
        kind,
        meta,
        before,
        insert: None,
        after_sql,
        after_queued: false,
    })
}

async fn read_rows(conn: &mut BackendConn, sql: &str) -> Result<Vec<ImageRow>, AtError> {
    Ok(into_image(conn.query_raw(sql).await?))
}

/// Runs `sql`, preceded by BEGIN in the same round trip when `begin` asks.
async fn read_rows_after(
    conn: &mut BackendConn,
    begin: bool,
    sql: &str,
) -> Result<Vec<ImageRow>, AtError> {
    if !begin {
        return read_rows(conn, sql).await;
    }
    conn.queue("BEGIN");
    conn.queue(sql);
    let began = conn.read_reply(None).await;
    let mut rows = Vec::new();
    let read = conn.read_reply(Some(&mut rows)).await;
    began?;
    read?;
    Ok(into_image(rows))
}

fn into_image(rows: Vec<crate::backend::Row>) -> Vec<ImageRow> {
    rows.into_iter()
        .map(|r| r.into_iter().map(|v| v.map(image::Bytes)).collect())
        .collect()
}

/// Reads the after image once the statement succeeded and adds the statement's undo item
/// and row locks to the branch.
pub async fn after(
    conn: &mut BackendConn,
    server: &str,
    pending: Pending,
    last_insert_id: u64,
    work: &mut BranchWork,
) -> Result<(), AtError> {
    let meta = pending.meta;
    let after = match pending.kind {
        ChangeKind::Delete => Vec::new(),
        ChangeKind::Update => match (&pending.after_sql, pending.after_queued) {
            (_, true) => {
                let mut rows = Vec::new();
                conn.read_reply(Some(&mut rows)).await?;
                into_image(rows)
            }
            (Some(sql), false) => read_rows(conn, sql).await?,
            (None, false) => Vec::new(),
        },
        ChangeKind::Insert => {
            let keys = pending.insert.map(|k| k.rows).unwrap_or_default();
            let step = if keys.iter().flatten().any(|v| v.is_none()) {
                auto_increment_increment(conn).await?
            } else {
                1
            };
            let cols: Vec<String> = meta
                .primary_key
                .iter()
                .map(|&i| crate::sql::quote::ident(&meta.columns[i].name))
                .collect();
            let mut next_auto = last_insert_id;
            let mut conds = Vec::with_capacity(keys.len() + pending.before.len());
            for key in keys {
                let vals: Vec<String> = key
                    .into_iter()
                    .map(|v| {
                        v.unwrap_or_else(|| {
                            let id = next_auto;
                            next_auto += step;
                            id.to_string()
                        })
                    })
                    .collect();
                conds.push(format!("({}) = ({})", cols.join(", "), vals.join(", ")));
            }
            // Rows an upsert updated keep their own keys, which may differ from the VALUES.
            for row in &pending.before {
                conds.push(image::pk_match(&meta, &image::pk_of(&meta, row)));
            }
            let sql = format!(
                "SELECT {} FROM {} WHERE {} FOR UPDATE",
                image::select_list(&meta, &image::table_sql(&meta)),
                image::table_sql(&meta),
                if conds.is_empty() {
                    "FALSE".into()
                } else {
                    conds.join(" OR ")
                }
            );
            read_rows(conn, &sql).await?
        }
    };
    let identity = format!("{server}/{}", meta.schema);
    for row in pending.before.iter().chain(&after) {
        let pk: Vec<&[u8]> = image::pk_of(&meta, row)
            .into_iter()
            .map(|v| v.map_or(&b""[..], |b| b.0.as_slice()))
            .collect();
        work.lock_keys.insert(lock_key(&identity, &meta.name, &pk));
    }
    if pending.kind == ChangeKind::Insert && !pending.before.is_empty() {
        // An upsert: rows that existed were updated (update-undo), the rest inserted.
        let key = |r: &ImageRow| -> Vec<Option<image::Bytes>> {
            image::pk_of(&meta, r)
                .into_iter()
                .map(|v| v.cloned())
                .collect()
        };
        let mut updated_before = Vec::new();
        let mut updated_after = Vec::new();
        let mut inserted = Vec::new();
        for row in after {
            match pending.before.iter().find(|b| key(b) == key(&row)) {
                Some(b) => {
                    updated_before.push(b.clone());
                    updated_after.push(row);
                }
                None => inserted.push(row),
            }
        }
        work.log.items.push(UndoItem::new(
            ChangeKind::Update,
            &meta,
            updated_before,
            updated_after,
        ));
        if !inserted.is_empty() {
            work.log.items.push(UndoItem::new(
                ChangeKind::Insert,
                &meta,
                Vec::new(),
                inserted,
            ));
        }
        return Ok(());
    }
    if !(pending.before.is_empty() && after.is_empty()) {
        work.log
            .items
            .push(UndoItem::new(pending.kind, &meta, pending.before, after));
    }
    Ok(())
}

async fn auto_increment_increment(conn: &mut BackendConn) -> Result<u64, AtError> {
    let rows = conn.query_rows("SELECT @@auto_increment_increment").await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1))
}

/// At local COMMIT: registers the branch with all its row locks (retrying while another
/// global transaction holds one), then writes the undo log in the local transaction. The
/// caller then commits locally, or rolls back on error.
pub async fn register(
    conn: &mut BackendConn,
    coordinator: &Arc<Coordinator>,
    source: &AtSource,
    work: BranchWork,
) -> Result<u64, AtError> {
    if work.log.items.is_empty() {
        // Nothing changed: nothing to undo, no branch needed.
        return Ok(0);
    }
    source.resource.ensure_undo_table().await?;
    let branch = Branch {
        xid: work.xid.clone(),
        branch_id: coordinator.new_branch_id(),
        kind: BranchKind::At,
        resource: source.resource.identity(),
        status: BranchStatus::Registered,
        lock_keys: work.lock_keys.into_iter().collect(),
        application_data: None,
    };
    // The undo log goes out first and is written while the coordinator records the branch;
    // the local COMMIT, which makes both count, waits for both.
    conn.queue(&undo::insert_sql(
        source.resource.undo_table(),
        &branch.xid,
        branch.branch_id,
        &work.log,
    ));
    conn.send_queued().await?;
    let registered = register_with_retry(coordinator, source, &branch).await;
    let inserted = conn.read_reply(None).await;
    registered?;
    inserted?;
    Ok(branch.branch_id)
}

/// Registers `branch`, retrying while another global transaction holds one of its rows.
async fn register_with_retry(
    coordinator: &Arc<Coordinator>,
    source: &AtSource,
    branch: &Branch,
) -> Result<(), AtError> {
    let mut attempt = 0;
    loop {
        match coordinator.register_branch(branch).await {
            Ok(()) => return Ok(()),
            Err(RegisterError::LockConflict { key, holder }) => {
                attempt += 1;
                if attempt >= source.lock_retry.attempts {
                    return Err(AtError::LockTimeout { key, holder });
                }
                tokio::time::sleep(source.lock_retry.interval).await;
            }
            Err(RegisterError::NotActive { xid, status }) => {
                return Err(AtError::NotActive {
                    xid,
                    why: format!("it is {}", status.name()),
                })
            }
            Err(RegisterError::UnknownXid(xid)) => {
                return Err(AtError::NotActive {
                    xid,
                    why: "it does not exist".into(),
                })
            }
            Err(RegisterError::Expired(xid)) => {
                return Err(AtError::NotActive {
                    xid,
                    why: "it has timed out".into(),
                })
            }
            Err(RegisterError::Store(e)) => return Err(AtError::Coordinator(e.to_string())),
        }
    }
}

/// `SELECT … FOR UPDATE` inside a global transaction reads committed data: it waits while
/// another global transaction holds a global lock on one of the rows, then fails with the
/// lock error. Locks `xid` itself holds do not count.
pub async fn check_global_locks(
    conn: &mut BackendConn,
    coordinator: &Arc<Coordinator>,
    source: &AtSource,
    xid: &str,
    select: &crate::sql::dml::LockingSelect,
) -> Result<(), AtError> {
    let meta = source
        .meta
        .get(conn, select.table.schema.as_deref(), &select.table.name)
        .await?;
    let sql = image::pks_by_filter_sql(&meta, select.table.alias.as_deref(), &select.filter);
    let identity = format!("{}/{}", source.server, meta.schema);
    let keys: Vec<String> = conn
        .query_raw(&sql)
        .await?
        .into_iter()
        .map(|row| {
            let pk: Vec<&[u8]> = row.iter().map(|v| v.as_deref().unwrap_or(b"")).collect();
            lock_key(&identity, &meta.name, &pk)
        })
        .collect();
    let mut attempt = 0;
    loop {
        match coordinator.store().lock_holder(xid, &keys).await {
            Ok(None) => return Ok(()),
            Ok(Some((key, holder))) => {
                attempt += 1;
                if attempt >= source.lock_retry.attempts {
                    return Err(AtError::LockTimeout { key, holder });
                }
                tokio::time::sleep(source.lock_retry.interval).await;
            }
            Err(e) => return Err(AtError::Coordinator(e.to_string())),
        }
    }
}
