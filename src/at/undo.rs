//! The undo log: what a branch changed, kept in the business database's `undo_log` table in
//! the same local transaction as the change, and read back by phase 2.
//!
//! The table has Seata's columns. `rollback_info` holds the branch's [`UndoLog`] as JSON;
//! `context` says so (`serializer=json`). A row with `log_status = 1` and no items is the
//! "global finished" marker a rollback leaves when it finds no undo log: a phase-1 commit that
//! arrives later then collides with it on `(xid, branch_id)` and fails.

use serde::{Deserialize, Serialize};

use super::image::ImageRow;
use super::meta::{Column, TableMeta};
use crate::sql::quote;

/// The undo log table's name in each data source's database. It is Tandem's own: a
/// sharded logical database does not show it.
pub const UNDO_TABLE: &str = "undo_log";

/// The table, created on first use in each data source's database.
pub const UNDO_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS undo_log (\
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
    branch_id BIGINT NOT NULL, \
    xid VARCHAR(128) NOT NULL, \
    context VARCHAR(128) NOT NULL, \
    rollback_info LONGBLOB NOT NULL, \
    log_status INT NOT NULL, \
    log_created DATETIME(6) NOT NULL, \
    log_modified DATETIME(6) NOT NULL, \
    UNIQUE KEY ux_undo_log (xid, branch_id)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

pub const STATUS_NORMAL: i64 = 0;
pub const STATUS_GLOBAL_FINISHED: i64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// One statement's change to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoItem {
    pub kind: ChangeKind,
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<usize>,
    pub before: Vec<ImageRow>,
    pub after: Vec<ImageRow>,
}

impl UndoItem {
    pub fn new(
        kind: ChangeKind,
        meta: &TableMeta,
        before: Vec<ImageRow>,
        after: Vec<ImageRow>,
    ) -> Self {
        UndoItem {
            kind,
            schema: meta.schema.clone(),
            table: meta.name.clone(),
            columns: meta.columns.clone(),
            primary_key: meta.primary_key.clone(),
            before,
            after,
        }
    }

    /// The table as this item saw it: phase 2 needs no live metadata.
    pub fn meta(&self) -> TableMeta {
        TableMeta {
            schema: self.schema.clone(),
            name: self.table.clone(),
            columns: self.columns.clone(),
            primary_key: self.primary_key.clone(),
            unique_keys: Vec::new(),
            not_undoable: None,
        }
    }
}

/// Everything one branch changed, in statement order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoLog {
    pub items: Vec<UndoItem>,
}

fn xid_literal(xid: &str) -> String {
    quote::text(xid.as_bytes(), "utf8mb4")
}

/// Inserts the branch's undo log into `table` (run in the branch's local transaction,
/// before COMMIT).
pub fn insert_sql(table: &str, xid: &str, branch_id: u64, log: &UndoLog) -> String {
    let info = serde_json::to_vec(log).unwrap_or_default();
    format!(
        "INSERT INTO {table} (branch_id, xid, context, rollback_info, log_status, log_created, log_modified) \
         VALUES ({branch_id}, {}, 'serializer=json', {}, {STATUS_NORMAL}, NOW(6), NOW(6))",
        xid_literal(xid),
        quote::hex(&info)
    )
}

/// The "global finished" marker.
pub fn finished_marker_sql(xid: &str, branch_id: u64) -> String {
    format!(
        "INSERT INTO undo_log (branch_id, xid, context, rollback_info, log_status, log_created, log_modified) \
         VALUES ({branch_id}, {}, 'serializer=json', X'7B7D', {STATUS_GLOBAL_FINISHED}, NOW(6), NOW(6))",
        xid_literal(xid)
    )
}

pub fn select_sql(xid: &str, branch_id: u64) -> String {
    format!(
        "SELECT rollback_info, log_status FROM undo_log WHERE xid = {} AND branch_id = {branch_id} FOR UPDATE",
        xid_literal(xid)
    )
}

pub fn delete_sql(xid: &str, branch_id: u64) -> String {
    format!(
        "DELETE FROM undo_log WHERE xid = {} AND branch_id = {branch_id}",
        xid_literal(xid)
    )
}

/// Deletes "global finished" markers older than `age` (markers are written in UTC), a
/// thousand at a time.
pub fn delete_old_markers_sql(age: std::time::Duration) -> String {
    format!(
        "DELETE FROM undo_log WHERE log_status = {STATUS_GLOBAL_FINISHED} \
         AND log_created < UTC_TIMESTAMP(6) - INTERVAL {} MICROSECOND LIMIT 1000",
        age.as_micros()
    )
}

/// Deletes the undo logs of several branches: one equality pair per branch, which the range
/// optimizer serves from the `(xid, branch_id)` index.
pub fn delete_many_sql(keys: &[(&str, u64)]) -> String {
    let conds: Vec<String> = keys
        .iter()
        .map(|(xid, id)| format!("(xid = {} AND branch_id = {id})", xid_literal(xid)))
        .collect();
    format!("DELETE FROM undo_log WHERE {}", conds.join(" OR "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::at::image::Bytes;
    use crate::at::meta::ValueKind;

    #[test]
    fn undo_log_round_trips_through_json() {
        let meta = TableMeta {
            schema: "s".into(),
            name: "t".into(),
            columns: vec![Column {
                name: "id".into(),
                kind: ValueKind::Number,
                charset: None,
                collation: None,
                auto_increment: true,
                generated: false,
                invisible: false,
            }],
            primary_key: vec![0],
            unique_keys: Vec::new(),
            not_undoable: None,
        };
        let log = UndoLog {
            items: vec![UndoItem::new(
                ChangeKind::Update,
                &meta,
                vec![vec![Some(Bytes(b"1".to_vec()))]],
                vec![vec![None]],
            )],
        };
        let json = serde_json::to_vec(&log).unwrap();
        assert_eq!(serde_json::from_slice::<UndoLog>(&json).unwrap(), log);
        assert_eq!(log.items[0].meta(), meta);
        let sql = insert_sql("undo_log", "x'1", 7, &log);
        assert!(
            sql.contains("VALUES (7, CONVERT(X'782731' USING utf8mb4), 'serializer=json', X'"),
            "{sql}"
        );
    }
}
