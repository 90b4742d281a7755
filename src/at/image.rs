//! Row images: the rows a statement changes, read before and after it, and the SQL that reads
//! and restores them.
//!
//! Each value is read in a form that writes back exactly: FLOAT as DOUBLE (no digits lost),
//! TIMESTAMP as seconds since the epoch (no time zone involved), character data as the bytes
//! of the column's own character set (no conversion to the client's), everything else as the
//! server prints it. [`literal`] turns a value back into SQL.

use serde::{Deserialize, Serialize};

use super::meta::{Column, TableMeta, ValueKind};
use crate::sql::dml::RowFilter;
use crate::sql::quote;

/// One row: a value per table column, in table order; `None` is NULL.
pub type ImageRow = Vec<Option<Bytes>>;

/// Bytes that serialize as a hex string (compact, and readable in the undo log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            out.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
        }
        s.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::sql::quote::unhex(&s)
            .map(Bytes)
            .ok_or_else(|| serde::de::Error::custom("not pairs of hex digits"))
    }
}

/// The expression that reads `col` of the table named `qualifier` into an image.
fn read_expr(col: &Column, qualifier: &str) -> String {
    let c = format!("{qualifier}.{}", quote::ident(&col.name));
    match col.kind {
        ValueKind::Float => format!("CAST({c} AS DOUBLE)"),
        ValueKind::Timestamp => format!("UNIX_TIMESTAMP({c})"),
        ValueKind::Text => format!("CAST({c} AS BINARY)"),
        ValueKind::Number | ValueKind::Temporal | ValueKind::Bytes => c,
    }
}

/// The select list reading every column of `meta`.
pub fn select_list(meta: &TableMeta, qualifier: &str) -> String {
    meta.columns
        .iter()
        .map(|c| read_expr(c, qualifier))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `schema`.`table`
pub fn table_sql(meta: &TableMeta) -> String {
    format!(
        "{}.{}",
        quote::ident(&meta.schema),
        quote::ident(&meta.name)
    )
}

/// The locking read of the rows an UPDATE or DELETE will change: its own filter, ordering
/// and limit, on its own table (under its alias, which the filter may use).
pub fn rows_by_filter_sql(meta: &TableMeta, alias: Option<&str>, filter: &RowFilter) -> String {
    let qualifier = alias.map_or_else(|| table_sql(meta), quote::ident);
    by_filter_sql(
        meta,
        alias,
        filter,
        &select_list(meta, &qualifier),
        "FOR UPDATE",
    )
}

/// `SELECT {columns} FROM` the table (under its alias) `WHERE … ORDER BY … LIMIT …` of
/// `filter`, then `lock`.
fn by_filter_sql(
    meta: &TableMeta,
    alias: Option<&str>,
    filter: &RowFilter,
    columns: &str,
    lock: &str,
) -> String {
    let mut sql = format!("SELECT {columns} FROM {}", table_sql(meta));
    if let Some(a) = alias {
        sql.push(' ');
        sql.push_str(&quote::ident(a));
    }
    for (clause, text) in [
        (" WHERE ", &filter.where_sql),
        (" ORDER BY ", &filter.order_by_sql),
        (" LIMIT ", &filter.limit_sql),
    ] {
        if let Some(t) = text {
            sql.push_str(clause);
            sql.push_str(t);
        }
    }
    if !lock.is_empty() {
        sql.push(' ');
        sql.push_str(lock);
    }
    sql
}

/// Whether a text column's collation ignores trailing spaces (PAD SPACE; MariaDB names its
/// NO PAD collations `…_nopad_…`).
fn pads(col: &Column) -> bool {
    !col.collation
        .as_deref()
        .is_some_and(|c| c.to_ascii_lowercase().contains("nopad"))
}

/// The expression that reads a primary key column `col` of the table named `qualifier` in
/// the form lock keys use: a text column by its collation's weights, so that two values the
/// database takes for the same key (`'abc'` and `'ABC '` under a case-insensitive PAD SPACE
/// collation) lock the same row; anything else as an image reads it.
fn key_expr(col: &Column, qualifier: &str) -> String {
    let c = format!("{qualifier}.{}", quote::ident(&col.name));
    match col.kind {
        ValueKind::Text if pads(col) => format!("WEIGHT_STRING(RTRIM({c}))"),
        ValueKind::Text => format!("WEIGHT_STRING({c})"),
        _ => read_expr(col, qualifier),
    }
}

/// The lock-key form of an image value of primary key column `col` (see [`key_expr`]), as
/// SQL; `None` when the image value already is that form.
pub fn key_weight_sql(col: &Column, value: &[u8]) -> Option<String> {
    if col.kind != ValueKind::Text {
        return None;
    }
    let v = quote::text(value, col.charset.as_deref().unwrap_or("binary"));
    let v = if pads(col) { format!("RTRIM({v})") } else { v };
    Some(match &col.collation {
        Some(c) => format!("WEIGHT_STRING({v} COLLATE {})", quote::bare_name(c)),
        None => format!("WEIGHT_STRING({v})"),
    })
}

/// The read of the primary keys of the rows a `SELECT … FOR UPDATE` locks, in the form lock
/// keys use, ending with `lock` (the statement's own lock clause, or nothing for a read that
/// locks nothing).
pub fn pks_by_filter_sql(
    meta: &TableMeta,
    alias: Option<&str>,
    filter: &RowFilter,
    lock: &str,
) -> String {
    let qualifier = alias.map_or_else(|| table_sql(meta), quote::ident);
    let cols: Vec<String> = meta
        .primary_key
        .iter()
        .map(|&i| key_expr(&meta.columns[i], &qualifier))
        .collect();
    by_filter_sql(meta, alias, filter, &cols.join(", "), lock)
}

/// The primary key values of an image row.
pub fn pk_of<'a>(meta: &TableMeta, row: &'a ImageRow) -> Vec<Option<&'a Bytes>> {
    meta.primary_key
        .iter()
        .map(|&i| row.get(i).and_then(|v| v.as_ref()))
        .collect()
}

/// An image row's primary key as owned bytes, to match rows of two images.
pub type PkKey = Vec<Option<Vec<u8>>>;

pub fn pk_key(meta: &TableMeta, row: &ImageRow) -> PkKey {
    pk_of(meta, row)
        .into_iter()
        .map(|v| v.map(|b| b.0.clone()))
        .collect()
}

/// `(pk1, pk2) = (v1, v2)` for one row, with literals as [`literal`] writes them.
pub fn pk_match(meta: &TableMeta, pk: &[Option<&Bytes>]) -> String {
    let cols: Vec<String> = meta
        .primary_key
        .iter()
        .map(|&i| quote::ident(&meta.columns[i].name))
        .collect();
    let vals: Vec<String> = meta
        .primary_key
        .iter()
        .zip(pk)
        .map(|(&i, v)| literal(&meta.columns[i], v.map(|b| b.0.as_slice())))
        .collect();
    if cols.len() == 1 {
        format!("{} = {}", cols[0], vals[0])
    } else {
        format!("({}) = ({})", cols.join(", "), vals.join(", "))
    }
}

/// The locking read of rows by primary key (after images, dirty-write checks).
pub fn rows_by_pk_sql(meta: &TableMeta, pks: &[Vec<Option<&Bytes>>]) -> String {
    let conds: Vec<String> = pks.iter().map(|pk| pk_match(meta, pk)).collect();
    format!(
        "SELECT {} FROM {} WHERE {} FOR UPDATE",
        select_list(meta, &table_sql(meta)),
        table_sql(meta),
        if conds.is_empty() {
            "FALSE".to_string()
        } else {
            conds.join(" OR ")
        }
    )
}

/// An image value as SQL that writes it back (or compares with it) exactly.
pub fn literal(col: &Column, value: Option<&[u8]>) -> String {
    let Some(v) = value else {
        return "NULL".to_string();
    };
    let numeric = !v.is_empty()
        && v.iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    match col.kind {
        ValueKind::Number | ValueKind::Float if numeric => String::from_utf8_lossy(v).into_owned(),
        ValueKind::Timestamp if numeric => format!("FROM_UNIXTIME({})", String::from_utf8_lossy(v)),
        ValueKind::Text => {
            let mut s = quote::text(v, col.charset.as_deref().unwrap_or("binary"));
            if let Some(c) = &col.collation {
                s = format!("{s} COLLATE {}", quote::bare_name(c));
            }
            s
        }
        ValueKind::Temporal | ValueKind::Number | ValueKind::Float | ValueKind::Timestamp => {
            quote::text(v, "utf8mb4")
        }
        ValueKind::Bytes => quote::hex(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TableMeta {
        let col = |name: &str, kind, charset: Option<&str>| Column {
            name: name.into(),
            kind,
            charset: charset.map(Into::into),
            collation: charset.map(|c| format!("{c}_general_ci")),
            auto_increment: false,
            generated: false,
            invisible: false,
        };
        TableMeta {
            schema: "shop".into(),
            name: "item".into(),
            columns: vec![
                col("id", ValueKind::Number, None),
                col("code", ValueKind::Text, Some("utf8mb4")),
                col("price", ValueKind::Float, None),
                col("at", ValueKind::Timestamp, None),
                col("raw", ValueKind::Bytes, None),
            ],
            primary_key: vec![0, 1],
            unique_keys: Vec::new(),
            not_undoable: None,
        }
    }

    #[test]
    fn image_queries() {
        let m = meta();
        let filter = RowFilter {
            where_sql: Some("i.price > 3".into()),
            order_by_sql: Some("i.id".into()),
            limit_sql: Some("5".into()),
        };
        assert_eq!(
            rows_by_filter_sql(&m, Some("i"), &filter),
            "SELECT `i`.`id`, CAST(`i`.`code` AS BINARY), CAST(`i`.`price` AS DOUBLE), UNIX_TIMESTAMP(`i`.`at`), `i`.`raw` \
             FROM `shop`.`item` `i` WHERE i.price > 3 ORDER BY i.id LIMIT 5 FOR UPDATE"
        );
        let a = Bytes(b"7".to_vec());
        let b = Bytes(b"x'y".to_vec());
        let sql = rows_by_pk_sql(&m, &[vec![Some(&a), Some(&b)]]);
        assert!(
            sql.ends_with("WHERE (`id`, `code`) = (7, CONVERT(X'782779' USING utf8mb4) COLLATE utf8mb4_general_ci) FOR UPDATE"),
            "{sql}"
        );
        assert!(rows_by_pk_sql(&m, &[]).ends_with("WHERE FALSE FOR UPDATE"));
    }

    #[test]
    fn literals_write_values_back_exactly() {
        let m = meta();
        assert_eq!(literal(&m.columns[0], Some(b"-12")), "-12");
        assert_eq!(literal(&m.columns[0], None), "NULL");
        // Something that is not a number is never spliced in raw.
        assert_eq!(
            literal(&m.columns[0], Some(b"1; DROP")),
            "CONVERT(X'313B2044524F50' USING utf8mb4)"
        );
        assert_eq!(
            literal(&m.columns[3], Some(b"1700000000.123")),
            "FROM_UNIXTIME(1700000000.123)"
        );
        assert_eq!(literal(&m.columns[4], Some(&[0, 255])), "X'00FF'");
    }

    #[test]
    fn bytes_serialize_as_hex() {
        let row: ImageRow = vec![Some(Bytes(vec![0, 0xab])), None];
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(json, r#"["00ab",null]"#);
        assert_eq!(serde_json::from_str::<ImageRow>(&json).unwrap(), row);
        assert!(serde_json::from_str::<ImageRow>(r#"["0"]"#).is_err());
    }
}
