//! Table metadata for AT mode: columns with their types and the primary key, read from
//! information_schema on the session's own backend connection and cached per data source.
//!
//! The cache is dropped whenever DDL passes through Tandem on that data source, and entries
//! expire after a minute, so a table changed elsewhere is read again soon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{BackendConn, BackendError};
use crate::sql::quote;

const TTL: Duration = Duration::from_secs(60);

/// How a column's values are read into images and written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// Integers, DECIMAL, DOUBLE, YEAR: ASCII numbers, written back as they are.
    Number,
    /// FLOAT: read as DOUBLE so no digit is lost, written back as a number.
    Float,
    /// DATE, TIME, DATETIME: text in the server's format.
    Temporal,
    /// TIMESTAMP: read as seconds since the epoch, independent of the session time zone.
    Timestamp,
    /// Character data (CHAR, VARCHAR, TEXT, ENUM, SET, JSON): bytes in the column's charset.
    Text,
    /// BINARY, VARBINARY, BLOB, BIT and everything else: raw bytes.
    Bytes,
}

impl ValueKind {
    fn of(data_type: &str) -> Self {
        match data_type.to_ascii_lowercase().as_str() {
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "decimal"
            | "numeric" | "double" | "real" | "year" => ValueKind::Number,
            "float" => ValueKind::Float,
            "date" | "time" | "datetime" => ValueKind::Temporal,
            "timestamp" => ValueKind::Timestamp,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum"
            | "set" | "json" => ValueKind::Text,
            _ => ValueKind::Bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    pub kind: ValueKind,
    /// Character set and collation of a text column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation: Option<String>,
    pub auto_increment: bool,
    /// A generated column: images read it, restores never write it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generated: bool,
    /// An INVISIBLE column: an INSERT without a column list gives it no value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invisible: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order.
    pub primary_key: Vec<usize>,
    /// The other unique keys, each as indexes into `columns` (for INSERT … ON DUPLICATE KEY
    /// UPDATE, which may hit any of them).
    pub unique_keys: Vec<Vec<usize>>,
    /// Why a write to this table cannot be undone from its row images alone (a trigger, a
    /// cascading foreign key, an engine without transactions), if it cannot.
    pub not_undoable: Option<String>,
}

impl TableMeta {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    }

    pub fn is_primary_key(&self, name: &str) -> bool {
        self.column_index(name)
            .is_some_and(|i| self.primary_key.contains(&i))
    }

    pub fn is_generated(&self, name: &str) -> bool {
        self.column_index(name)
            .is_some_and(|i| self.columns[i].generated)
    }

    /// Refuses a table whose changes reach further than its own rows, or outlive a rollback.
    pub fn check_undoable(&self) -> Result<(), String> {
        match &self.not_undoable {
            None => Ok(()),
            Some(why) => Err(format!(
                "writing to {}.{} inside a global transaction is not supported: {why}",
                self.schema, self.name
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("table '{0}' does not exist")]
    NoSuchTable(String),
    #[error("table '{0}' has no primary key, which a global transaction needs")]
    NoPrimaryKey(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// (schema, table) → when it was read, and what.
type Entries = HashMap<(String, String), (Instant, Arc<TableMeta>)>;

/// Metadata of one data source's tables.
#[derive(Default)]
pub struct MetaCache {
    tables: Mutex<Entries>,
}

impl MetaCache {
    /// Forgets everything (after DDL).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The metadata of `schema.table` (`schema` defaults to the connection's database).
    pub async fn get(
        &self,
        conn: &mut BackendConn,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Arc<TableMeta>, MetaError> {
        let schema = match schema {
            Some(s) => s.to_string(),
            None => conn
                .current_database()
                .await?
                .ok_or_else(|| MetaError::NoSuchTable(table.to_string()))?,
        };
        // MariaDB table names are case-sensitive on Linux unless lower_case_table_names is set;
        // information_schema comparisons below follow the server's own rule.
        let key = (schema.clone(), table.to_string());
        if let Some((at, meta)) = self.lock().get(&key) {
            if at.elapsed() < TTL {
                return Ok(meta.clone());
            }
        }
        let meta = Arc::new(load(conn, &schema, table).await?);
        self.lock().insert(key, (Instant::now(), meta.clone()));
        Ok(meta)
    }
}

async fn load(conn: &mut BackendConn, schema: &str, table: &str) -> Result<TableMeta, MetaError> {
    let s = quote::text(schema.as_bytes(), "utf8mb4");
    let t = quote::text(table.as_bytes(), "utf8mb4");
    let rows = conn
        .query_rows(&format!(
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, COLUMN_KEY, EXTRA, COLLATION_NAME, \
             IS_GENERATED, TABLE_SCHEMA, TABLE_NAME \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {s} AND TABLE_NAME = {t} \
             ORDER BY ORDINAL_POSITION"
        ))
        .await?;
    if rows.is_empty() {
        return Err(MetaError::NoSuchTable(format!("{schema}.{table}")));
    }
    // The names as the server keeps them (under lower_case_table_names, not as typed): lock
    // keys and undo logs must name a table one way only.
    let canonical = |n: usize| rows[0].get(n).cloned().flatten().unwrap_or_default();
    let (schema_name, table_name) = (canonical(7), canonical(8));
    let mut columns = Vec::with_capacity(rows.len());
    let mut primary_key = Vec::new();
    for (i, r) in rows.into_iter().enumerate() {
        let cell = |n: usize| r.get(n).cloned().flatten().unwrap_or_default();
        let kind = ValueKind::of(&cell(1));
        if cell(3) == "PRI" {
            primary_key.push(i);
        }
        columns.push(Column {
            name: cell(0),
            kind,
            charset: (kind == ValueKind::Text)
                .then(|| cell(2))
                .filter(|c| !c.is_empty()),
            collation: (kind == ValueKind::Text)
                .then(|| cell(5))
                .filter(|c| !c.is_empty()),
            auto_increment: cell(4).contains("auto_increment"),
            generated: cell(6) == "ALWAYS",
            invisible: cell(4).to_ascii_uppercase().contains("INVISIBLE"),
        });
    }
    if primary_key.is_empty() {
        return Err(MetaError::NoPrimaryKey(format!("{schema}.{table}")));
    }
    // COLUMN_KEY lists key columns in table order; the key's own order comes from
    // KEY_COLUMN_USAGE.
    if primary_key.len() > 1 {
        let order = conn
            .query_rows(&format!(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = {s} AND TABLE_NAME = {t} AND CONSTRAINT_NAME = 'PRIMARY' \
                 ORDER BY ORDINAL_POSITION"
            ))
            .await?;
        let names: Vec<String> = order
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        let ordered: Vec<usize> = names
            .iter()
            .filter_map(|n| columns.iter().position(|c| &c.name == n))
            .collect();
        if ordered.len() == primary_key.len() {
            primary_key = ordered;
        }
    }
    let uniques = conn
        .query_rows(&format!(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = {s} AND TABLE_NAME = {t} AND NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY' \
             ORDER BY INDEX_NAME, SEQ_IN_INDEX"
        ))
        .await?;
    let mut unique_keys: Vec<(String, Vec<usize>)> = Vec::new();
    for r in uniques {
        let (Some(Some(index)), Some(Some(column))) = (r.first().cloned(), r.get(1).cloned())
        else {
            continue;
        };
        let Some(i) = columns.iter().position(|c| c.name == column) else {
            continue;
        };
        match unique_keys.last_mut() {
            Some((name, cols)) if *name == index => cols.push(i),
            _ => unique_keys.push((index, vec![i])),
        }
    }
    let not_undoable = not_undoable(conn, &s, &t).await?;
    Ok(TableMeta {
        schema: schema_name,
        name: table_name,
        columns,
        primary_key,
        unique_keys: unique_keys.into_iter().map(|(_, c)| c).collect(),
        not_undoable,
    })
}

/// Why the table's changes cannot be undone from its own row images: a trigger (it may
/// write elsewhere), a foreign key that cascades a change of this table into another one,
/// or an engine without transactions (the change would outlive a local rollback).
async fn not_undoable(
    conn: &mut BackendConn,
    s: &str,
    t: &str,
) -> Result<Option<String>, MetaError> {
    let rows = conn
        .query_rows(&format!(
            "SELECT tb.ENGINE, e.TRANSACTIONS, \
             (SELECT COUNT(*) FROM information_schema.TRIGGERS \
              WHERE EVENT_OBJECT_SCHEMA = {s} AND EVENT_OBJECT_TABLE = {t}), \
             (SELECT GROUP_CONCAT(CONCAT(CONSTRAINT_SCHEMA, '.', TABLE_NAME)) \
              FROM information_schema.REFERENTIAL_CONSTRAINTS \
              WHERE UNIQUE_CONSTRAINT_SCHEMA = {s} AND REFERENCED_TABLE_NAME = {t} \
              AND (DELETE_RULE NOT IN ('RESTRICT', 'NO ACTION') OR UPDATE_RULE NOT IN ('RESTRICT', 'NO ACTION'))) \
             FROM information_schema.TABLES tb LEFT JOIN information_schema.ENGINES e ON e.ENGINE = tb.ENGINE \
             WHERE tb.TABLE_SCHEMA = {s} AND tb.TABLE_NAME = {t}"
        ))
        .await?;
    let row = rows.into_iter().next().unwrap_or_default();
    let cell = |n: usize| row.get(n).cloned().flatten();
    Ok(if cell(1).as_deref() != Some("YES") {
        Some(format!(
            "its engine ({}) is not transactional",
            cell(0).unwrap_or_else(|| "none: a view".into())
        ))
    } else if cell(2).is_some_and(|n| n != "0") {
        Some("it has triggers, whose effects Tandem cannot undo".into())
    } else {
        cell(3).map(|children| {
            format!("foreign keys of {children} cascade its changes (ON DELETE/UPDATE CASCADE, SET NULL or SET DEFAULT)")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_kinds_by_type() {
        assert_eq!(ValueKind::of("BIGINT"), ValueKind::Number);
        assert_eq!(ValueKind::of("decimal"), ValueKind::Number);
        assert_eq!(ValueKind::of("float"), ValueKind::Float);
        assert_eq!(ValueKind::of("timestamp"), ValueKind::Timestamp);
        assert_eq!(ValueKind::of("datetime"), ValueKind::Temporal);
        assert_eq!(ValueKind::of("longtext"), ValueKind::Text);
        assert_eq!(ValueKind::of("enum"), ValueKind::Text);
        assert_eq!(ValueKind::of("bit"), ValueKind::Bytes);
        assert_eq!(ValueKind::of("varbinary"), ValueKind::Bytes);
    }
}
