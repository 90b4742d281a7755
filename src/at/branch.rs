//! Phase 1 of an AT branch, on the session's own backend connection: row images around each
//! statement, then at local COMMIT the branch registration (with its row locks) and the undo
//! log, in that order, inside the local transaction.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::image::{self, pk_key, ImageRow, PkKey};
use super::lock_key::lock_key;
use super::meta::{MetaCache, MetaError, TableMeta};
use super::rm::AtResource;
use super::undo::{self, ChangeKind, UndoItem, UndoLog};
use crate::backend::{BackendConn, BackendError};
use crate::coordinator::{Branch, BranchKind, BranchStatus, Coordinator, RegisterError};
use crate::sql::dml::{Dml, Insert, InsertValue};

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
    /// The statement ran, but what it changed differs from what Tandem can undo: the local
    /// transaction must be rolled back.
    #[error("{0}")]
    Mismatch(String),
}

/// A local transaction that is a branch of a global transaction, while it runs.
#[derive(Debug, Default)]
pub struct BranchWork {
    pub xid: String,
    pub log: UndoLog,
    pub lock_keys: BTreeSet<String>,
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
    /// Returns whether a query was queued.
    pub fn queue_after(&mut self, conn: &mut BackendConn) -> bool {
        if let Some(sql) = &self.after_sql {
            conn.queue(sql);
            self.after_queued = true;
        }
        self.after_queued
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

/// A primary key value of an inserted row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyValue {
    /// As the client wrote it.
    Given(String),
    /// Assigned by AUTO_INCREMENT.
    Auto,
    /// An explicit 0 for an AUTO_INCREMENT column: assigned unless the session's sql_mode
    /// holds NO_AUTO_VALUE_ON_ZERO.
    Zero,
}

/// The primary key of each inserted row.
struct InsertKeys {
    rows: Vec<Vec<KeyValue>>,
    /// INSERT … ON DUPLICATE KEY UPDATE: rows in the before image were updated, not inserted.
    upsert: bool,
}

fn unsupported<T>(what: &str) -> Result<T, AtError> {
    Err(AtError::Unsupported(format!(
        "{what} is not supported inside a global transaction"
    )))
}

/// Where column `name`'s value stands in each row of an INSERT: by its column list, or by
/// the order of the table's visible columns when it lists none.
fn value_index(meta: &TableMeta, ins: &Insert, name: &str) -> Option<usize> {
    if ins.columns.is_empty() {
        meta.columns
            .iter()
            .filter(|c| !c.invisible)
            .position(|c| c.name.eq_ignore_ascii_case(name))
    } else {
        ins.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
    }
}

/// The value an INSERT row gives column `name`, if it names one.
fn row_value<'a>(
    meta: &TableMeta,
    ins: &Insert,
    row: &'a [InsertValue],
    name: &str,
) -> Option<&'a InsertValue> {
    value_index(meta, ins, name).and_then(|p| row.get(p))
}

fn insert_keys(meta: &TableMeta, ins: &Insert) -> Result<InsertKeys, AtError> {
    let mut rows = Vec::with_capacity(ins.rows.len());
    for row in &ins.rows {
        let mut key = Vec::with_capacity(meta.primary_key.len());
        for &pk in &meta.primary_key {
            let col = &meta.columns[pk];
            let value =
                match (row_value(meta, ins, row, &col.name), col.auto_increment) {
                    (None | Some(InsertValue::Null | InsertValue::Default), true) => KeyValue::Auto,
                    (Some(InsertValue::Literal { sql, digits: true }), true) => {
                        if sql.bytes().all(|b| b == b'0') {
                            KeyValue::Zero
                        } else {
                            KeyValue::Given(sql.clone())
                        }
                    }
                    (Some(InsertValue::Literal { .. }), true) => return unsupported(
                        "an AUTO_INCREMENT key that is not NULL, DEFAULT or an unsigned integer",
                    ),
                    (Some(InsertValue::Literal { sql, .. }), false) => KeyValue::Given(sql.clone()),
                    (None | Some(InsertValue::Null | InsertValue::Default), false) => {
                        return unsupported("an INSERT without a value for primary key column")
                    }
                    (Some(InsertValue::Expression), _) => {
                        return unsupported("a primary key value that is not a literal")
                    }
                };
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
    let mut conds = Vec::new();
    for row in &ins.rows {
        for key in std::iter::once(&meta.primary_key).chain(&meta.unique_keys) {
            let mut cols = Vec::with_capacity(key.len());
            let mut vals = Vec::with_capacity(key.len());
            for &i in key {
                let col = &meta.columns[i];
                match row_value(meta, ins, row, &col.name) {
                    Some(InsertValue::Literal { sql, .. }) => {
                        cols.push(crate::sql::quote::ident(&col.name));
                        vals.push(sql.clone());
                    }
                    // NULL never conflicts on a unique key.
                    Some(InsertValue::Null) => {
                        cols.clear();
                        break;
                    }
                    _ => return unsupported("INSERT … ON DUPLICATE KEY UPDATE without a literal for every unique key column"),
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
    meta.check_undoable().map_err(AtError::Unsupported)?;
    let filter = match dml {
        Dml::Insert(ins) => {
            let mut keys = insert_keys(&meta, ins)?;
            let mut before = Vec::new();
            if let Some(assigned) = &ins.on_duplicate {
                if assigned.iter().any(|c| meta.is_primary_key(c)) {
                    return unsupported("an ON DUPLICATE KEY UPDATE of a primary key column");
                }
                if !keys
                    .rows
                    .iter()
                    .flatten()
                    .all(|k| matches!(k, KeyValue::Given(_)))
                {
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
            if u.assigned.iter().any(|c| meta.is_primary_key(c)) {
                return unsupported("an UPDATE of a primary key column");
            }
            if let Some(c) = u.assigned.iter().find(|c| meta.is_generated(c)) {
                return unsupported(&format!("assigning the generated column {c}"));
            }
            &u.filter
        }
        Dml::Delete(d) => &d.filter,
    };
    let sql = image::rows_by_filter_sql(&meta, table.alias.as_deref(), filter);
    let before = read_rows_after(conn, begin, &sql).await?;
    // The rows of the before image, read again by primary key once the statement ran: what
    // an UPDATE made of them, or which of them a DELETE removed. Known in advance, so the
    // query travels right behind the statement.
    let after_sql = (!before.is_empty()).then(|| {
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

/// What the server said a successful statement did (its OK packet).
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    /// The connection has CLIENT_FOUND_ROWS: an UPDATE's affected rows count the rows it
    /// matched, not the ones it changed.
    pub found_rows: bool,
    /// An UPDATE's "Rows matched: … Changed: …" counts, when the server sent them.
    pub matched_changed: Option<(u64, u64)>,
}

impl Outcome {
    /// The rows an UPDATE changed, as the server counts them.
    fn changed(&self) -> Option<u64> {
        match (self.found_rows, self.matched_changed) {
            (false, _) => Some(self.affected_rows),
            (true, Some((_, changed))) => Some(changed),
            (true, None) => None,
        }
    }
}

/// The statement ran, but what it changed is not what its images show: the branch cannot be
/// undone exactly, so the caller rolls the local transaction back.
fn differs(what: String) -> AtError {
    AtError::Mismatch(what)
}

/// Reads the after image once the statement succeeded, checks it against what the server
/// says the statement did, and adds the statement's undo item and row locks to the branch.
pub async fn after(
    conn: &mut BackendConn,
    server: &str,
    pending: Pending,
    outcome: Outcome,
    work: &mut BranchWork,
) -> Result<(), AtError> {
    let meta = pending.meta.clone();
    let table = format!("{}.{}", meta.schema, meta.name);
    let mut before = pending.before;
    let after = match pending.kind {
        ChangeKind::Update | ChangeKind::Delete => match (&pending.after_sql, pending.after_queued)
        {
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
            let rows = inserted_keys(conn, keys, outcome.last_insert_id).await?;
            let sql = inserted_rows_sql(&meta, &rows, &before);
            read_rows(conn, &sql).await?
        }
    };
    match pending.kind {
        ChangeKind::Update => {
            // Every row the statement changed must be in the before image. The image's rows
            // are locked by this transaction, so any of them that differs now was changed by
            // the statement: when that count is the server's, no other row was changed.
            let after_by_pk: std::collections::HashMap<PkKey, &ImageRow> =
                after.iter().map(|r| (pk_key(&meta, r), r)).collect();
            let changed = before
                .iter()
                .filter(|b| after_by_pk.get(&pk_key(&meta, b)).is_none_or(|a| *a != *b))
                .count() as u64;
            let Some(server_changed) = outcome.changed() else {
                return Err(differs(format!(
                    "the server did not say how many rows of {table} the UPDATE changed"
                )));
            };
            if after.len() != before.len() || changed != server_changed {
                return Err(differs(format!(
                    "the UPDATE changed {server_changed} rows of {table}, but {changed} of the {} rows Tandem read before it",
                    before.len()
                )));
            }
        }
        ChangeKind::Delete => {
            // Rows of the before image still there were not deleted; the rest were, and they
            // must be all the server deleted.
            let left: std::collections::HashSet<PkKey> =
                after.iter().map(|r| pk_key(&meta, r)).collect();
            before.retain(|b| !left.contains(&pk_key(&meta, b)));
            if before.len() as u64 != outcome.affected_rows {
                return Err(differs(format!(
                    "the DELETE removed {} rows of {table}, but {} of the rows Tandem read before it",
                    outcome.affected_rows,
                    before.len()
                )));
            }
        }
        ChangeKind::Insert => {
            let before_keys: std::collections::HashSet<PkKey> =
                before.iter().map(|r| pk_key(&meta, r)).collect();
            let inserted = after
                .iter()
                .filter(|a| !before_keys.contains(&pk_key(&meta, a)))
                .count() as u64;
            let (mut updated, mut same) = (0u64, 0u64);
            for b in &before {
                match after.iter().find(|a| pk_key(&meta, a) == pk_key(&meta, b)) {
                    Some(a) if a == b => same += 1,
                    Some(_) => updated += 1,
                    None => {}
                }
            }
            // MariaDB counts 1 per inserted row, 2 per updated row and, with
            // CLIENT_FOUND_ROWS, 1 per row left as it was.
            let expected = inserted + 2 * updated + if outcome.found_rows { same } else { 0 };
            if expected != outcome.affected_rows {
                return Err(differs(format!(
                    "the INSERT affected {} rows of {table}, but Tandem found {inserted} inserted and {updated} updated",
                    outcome.affected_rows
                )));
            }
        }
    }
    let identity = format!("{server}/{}", meta.schema);
    let rows: Vec<&ImageRow> = before.iter().chain(&after).collect();
    work.lock_keys
        .extend(lock_keys(conn, &identity, &meta, &rows).await?);
    if pending.kind == ChangeKind::Insert && !before.is_empty() {
        // An upsert: rows that existed were updated (update-undo), the rest inserted.
        let mut updated_before = Vec::new();
        let mut updated_after = Vec::new();
        let mut inserted = Vec::new();
        for row in after {
            match before
                .iter()
                .find(|b| pk_key(&meta, b) == pk_key(&meta, &row))
            {
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
    let after = if pending.kind == ChangeKind::Delete {
        Vec::new()
    } else {
        after
    };
    if !(before.is_empty() && after.is_empty()) {
        work.log
            .items
            .push(UndoItem::new(pending.kind, &meta, before, after));
    }
    Ok(())
}

/// The lock keys of image rows: their primary key values as the database compares them. Text
/// key columns go by their collation's weights, which the server computes for all the rows
/// in one query.
async fn lock_keys(
    conn: &mut BackendConn,
    identity: &str,
    meta: &TableMeta,
    rows: &[&ImageRow],
) -> Result<Vec<String>, AtError> {
    let mut keys: Vec<Vec<Vec<u8>>> = rows
        .iter()
        .map(|row| {
            image::pk_of(meta, row)
                .into_iter()
                .map(|v| v.map_or_else(Vec::new, |b| b.0.clone()))
                .collect()
        })
        .collect();
    // (row, key column) of each value the server must weigh, and the expression for it.
    let mut weighed = Vec::new();
    for (r, key) in keys.iter().enumerate() {
        for (k, &col) in meta.primary_key.iter().enumerate() {
            if let Some(sql) = image::key_weight_sql(&meta.columns[col], &key[k]) {
                weighed.push(((r, k), sql));
            }
        }
    }
    for chunk in weighed.chunks(500) {
        let exprs: Vec<&str> = chunk.iter().map(|(_, e)| e.as_str()).collect();
        let row = conn
            .query_raw(&format!("SELECT {}", exprs.join(", ")))
            .await?
            .into_iter()
            .next()
            .filter(|row| row.len() == chunk.len())
            .ok_or_else(|| {
                AtError::Mismatch("the server did not weigh the primary key values".into())
            })?;
        for (((r, k), _), w) in chunk.iter().zip(row) {
            keys[*r][*k] = w.unwrap_or_default();
        }
    }
    Ok(keys
        .iter()
        .map(|key| {
            let parts: Vec<&[u8]> = key.iter().map(Vec::as_slice).collect();
            lock_key(identity, &meta.name, &parts)
        })
        .collect())
}

/// The primary keys of the rows an INSERT wrote, with the ones AUTO_INCREMENT assigned
/// worked out from the server's LAST_INSERT_ID. Refused where that cannot be exact: several
/// rows mixing assigned and given keys, or several assigned keys under
/// `innodb_autoinc_lock_mode = 2`, which may interleave them with other transactions'.
async fn inserted_keys(
    conn: &mut BackendConn,
    keys: Vec<Vec<KeyValue>>,
    last_insert_id: u64,
) -> Result<Vec<Vec<String>>, AtError> {
    let assigned = |k: &KeyValue| matches!(k, KeyValue::Auto | KeyValue::Zero);
    if !keys.iter().flatten().any(assigned) {
        return Ok(keys
            .into_iter()
            .map(|k| {
                k.into_iter()
                    .map(|v| match v {
                        KeyValue::Given(s) => s,
                        KeyValue::Auto | KeyValue::Zero => String::new(),
                    })
                    .collect()
            })
            .collect());
    }
    let settings = conn
        .query_rows(
            "SELECT @@auto_increment_increment, FIND_IN_SET('NO_AUTO_VALUE_ON_ZERO', @@sql_mode) > 0, @@innodb_autoinc_lock_mode",
        )
        .await?;
    let cell = |i: usize| {
        settings
            .first()
            .and_then(|r| r.get(i).cloned().flatten())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (Some(step), Some(zero_is_value), Some(lock_mode)) = (cell(0), cell(1), cell(2)) else {
        return Err(differs(
            "the server's AUTO_INCREMENT settings could not be read".into(),
        ));
    };
    let resolved: Vec<Vec<KeyValue>> = keys
        .into_iter()
        .map(|k| {
            k.into_iter()
                .map(|v| match v {
                    KeyValue::Zero if zero_is_value == 1 => KeyValue::Given("0".into()),
                    KeyValue::Zero => KeyValue::Auto,
                    other => other,
                })
                .collect()
        })
        .collect();
    let autos = resolved
        .iter()
        .filter(|k| k.contains(&KeyValue::Auto))
        .count();
    if resolved.len() > 1 && autos > 0 {
        if autos != resolved.len() {
            return Err(differs(
                "an INSERT of several rows mixing AUTO_INCREMENT keys with given ones (the keys the server assigned cannot be known exactly)".into(),
            ));
        }
        if lock_mode == 2 {
            return Err(differs(
                "an INSERT of several rows with AUTO_INCREMENT keys under innodb_autoinc_lock_mode = 2 (the keys the server assigned cannot be known exactly)".into(),
            ));
        }
    }
    let mut next = last_insert_id;
    Ok(resolved
        .into_iter()
        .map(|k| {
            k.into_iter()
                .map(|v| match v {
                    KeyValue::Given(s) => s,
                    KeyValue::Auto | KeyValue::Zero => {
                        let id = next;
                        next += step;
                        id.to_string()
                    }
                })
                .collect()
        })
        .collect())
}

/// The locking read of an INSERT's rows: by the keys it wrote, and, for an upsert, by the
/// keys of the rows it may have updated instead.
fn inserted_rows_sql(meta: &TableMeta, keys: &[Vec<String>], before: &[ImageRow]) -> String {
    let cols: Vec<String> = meta
        .primary_key
        .iter()
        .map(|&i| crate::sql::quote::ident(&meta.columns[i].name))
        .collect();
    let mut conds: Vec<String> = keys
        .iter()
        .map(|vals| format!("({}) = ({})", cols.join(", "), vals.join(", ")))
        .collect();
    for row in before {
        conds.push(image::pk_match(meta, &image::pk_of(meta, row)));
    }
    format!(
        "SELECT {} FROM {} WHERE {} FOR UPDATE",
        image::select_list(meta, &image::table_sql(meta)),
        image::table_sql(meta),
        if conds.is_empty() {
            "FALSE".into()
        } else {
            conds.join(" OR ")
        }
    )
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
        attention: None,
        seq: 0,
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
///
/// Inside a local transaction the wait happens first on a connection of Tandem's own, which
/// reads the committed rows' keys without locking them: the session's transaction holds no
/// lock on them while it waits, so the lock holder's rollback can restore them. The
/// session's own locking read then checks again, and decides.
pub async fn check_global_locks(
    conn: &mut BackendConn,
    coordinator: &Arc<Coordinator>,
    source: &AtSource,
    xid: &str,
    select: &crate::sql::dml::LockingSelect,
    in_transaction: bool,
) -> Result<(), AtError> {
    let meta = source
        .meta
        .get(conn, select.table.schema.as_deref(), &select.table.name)
        .await?;
    let alias = select.table.alias.as_deref();
    let identity = format!("{}/{}", source.server, meta.schema);
    let keys_of = |rows: Vec<crate::backend::Row>| -> Vec<String> {
        rows.into_iter()
            .map(|row| {
                let pk: Vec<&[u8]> = row.iter().map(|v| v.as_deref().unwrap_or(b"")).collect();
                lock_key(&identity, &meta.name, &pk)
            })
            .collect()
    };
    if in_transaction {
        let unlocked = image::pks_by_filter_sql(&meta, alias, &select.filter, "");
        // A filter that needs the session (its variables, temporary tables) cannot be read
        // elsewhere; the session's locking read below still checks.
        if let Ok(mut c) = source.resource.control_conn().await {
            if let Ok(rows) = c.query_raw(&unlocked).await {
                c.keep_clean();
                wait_for_locks(coordinator, source, xid, &keys_of(rows)).await?;
            }
        }
    }
    let sql = image::pks_by_filter_sql(&meta, alias, &select.filter, &select.lock_sql);
    let keys = keys_of(conn.query_raw(&sql).await?);
    wait_for_locks(coordinator, source, xid, &keys).await
}

/// Waits while another global transaction holds the lock on one of `keys`.
async fn wait_for_locks(
    coordinator: &Arc<Coordinator>,
    source: &AtSource,
    xid: &str,
    keys: &[String],
) -> Result<(), AtError> {
    let mut attempt = 0;
    loop {
        match coordinator.store().lock_holder(xid, keys).await {
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
