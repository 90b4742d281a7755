//! Analysis of a data-changing statement inside a global transaction: which table, which rows,
//! and whether Tandem can make it undoable.
//!
//! Parsing happens only here, only for statements that join a global transaction. The
//! client's own text is still what runs; the pieces kept here (the WHERE, ORDER BY and LIMIT
//! clauses, printed back by the parser) only build the image queries around it.

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, AssignmentTarget, Expr, FromTable, ObjectName, ObjectNamePart, OnInsert,
    SetExpr, Statement, TableFactor, TableObject, TableWithJoins, Value,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

/// A table as the statement names it (identifier values, without quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
    /// The alias the statement uses for it, if any.
    pub alias: Option<String>,
}

/// The part of an UPDATE or DELETE that chooses rows, as SQL text for the image queries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowFilter {
    pub where_sql: Option<String>,
    pub order_by_sql: Option<String>,
    pub limit_sql: Option<String>,
    /// `?` placeholders that come before the filter in the statement (in SET).
    pub placeholders_before: usize,
    /// `?` placeholders inside the filter.
    pub placeholders: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    pub table: TableName,
    /// Columns as listed; empty when the statement lists none (all columns, in order).
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Expr>>,
    /// ON DUPLICATE KEY UPDATE assignments (column, value).
    pub on_duplicate: Option<Vec<(String, Expr)>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub table: TableName,
    /// Assigned columns (column, value), in order.
    pub assignments: Vec<(String, Expr)>,
    pub filter: RowFilter,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    pub table: TableName,
    pub filter: RowFilter,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Dml {
    Insert(Insert),
    Update(Update),
    Delete(Delete),
}

/// Why a statement cannot run inside a global transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnalyzeError {
    /// The statement does not parse.
    Parse(String),
    /// It parses, but Tandem cannot make it undoable.
    Unsupported(String),
}

fn unsupported<T>(what: &str) -> Result<T, AnalyzeError> {
    Err(AnalyzeError::Unsupported(format!(
        "{what} is not supported inside a global transaction"
    )))
}

/// A `SELECT … FOR UPDATE` on one table: which rows it locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockingSelect {
    pub table: TableName,
    pub filter: RowFilter,
}

/// Analyses a `SELECT … FOR UPDATE` inside a global transaction. Only single-table selects
/// are understood; ORDER BY and LIMIT are ignored, so the rows checked are a superset.
pub fn analyze_locking_select(sql: &str) -> Result<LockingSelect, AnalyzeError> {
    let mut statements =
        Parser::parse_sql(&MySqlDialect {}, sql).map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    if statements.len() != 1 {
        return unsupported("more than one statement in one query");
    }
    let Statement::Query(q) = statements.remove(0) else {
        return unsupported("this statement");
    };
    let SetExpr::Select(select) = *q.body else {
        return unsupported("a SELECT … FOR UPDATE with set operations");
    };
    let [from] = select.from.as_slice() else {
        return unsupported("a SELECT … FOR UPDATE over several tables");
    };
    let table = single_table(from)?;
    Ok(LockingSelect {
        table,
        filter: filter(select.selection.as_ref(), &[], None, 0),
    })
}

/// Analyses one INSERT, UPDATE or DELETE.
pub fn analyze(sql: &str) -> Result<Dml, AnalyzeError> {
    let mut statements =
        Parser::parse_sql(&MySqlDialect {}, sql).map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    if statements.len() != 1 {
        return unsupported("more than one statement in one query");
    }
    match statements.remove(0) {
        Statement::Insert(i) => insert(i),
        Statement::Update(u) => update(u),
        Statement::Delete(d) => delete(d),
        Statement::Query(_) => unsupported("a query"),
        _ => unsupported("this statement (DDL and administrative statements)"),
    }
}

fn ident_parts(name: &ObjectName) -> Result<Vec<String>, AnalyzeError> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Ok(i.value.clone()),
            _ => unsupported("a computed object name"),
        })
        .collect()
}

fn table_name(name: &ObjectName, alias: Option<String>) -> Result<TableName, AnalyzeError> {
    let mut parts = ident_parts(name)?;
    match parts.len() {
        1 => Ok(TableName {
            schema: None,
            name: parts.remove(0),
            alias,
        }),
        2 => {
            let name = parts.remove(1);
            Ok(TableName {
                schema: Some(parts.remove(0)),
                name,
                alias,
            })
        }
        _ => unsupported("a table name with more than two parts"),
    }
}

/// The one table of a single-table UPDATE or DELETE.
fn single_table(t: &TableWithJoins) -> Result<TableName, AnalyzeError> {
    if !t.joins.is_empty() {
        return unsupported("a multi-table statement");
    }
    match &t.relation {
        TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } => table_name(name, alias.as_ref().map(|a| a.name.value.clone())),
        _ => unsupported("a statement on a derived table"),
    }
}

fn column_name(target: &AssignmentTarget) -> Result<String, AnalyzeError> {
    match target {
        AssignmentTarget::ColumnName(n) => ident_parts(n)?
            .pop()
            .ok_or_else(|| AnalyzeError::Parse("empty column name".into())),
        AssignmentTarget::Tuple(_) => unsupported("a tuple assignment"),
    }
}

fn count_placeholders(e: &Expr) -> usize {
    let mut n = 0;
    let _ = visit_expressions(e, |e| {
        if let Expr::Value(v) = e {
            if matches!(v.value, Value::Placeholder(_)) {
                n += 1;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    n
}

fn filter(
    selection: Option<&Expr>,
    order_by: &[sqlparser::ast::OrderByExpr],
    limit: Option<&Expr>,
    placeholders_before: usize,
) -> RowFilter {
    let join = |items: &[sqlparser::ast::OrderByExpr]| {
        items
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let placeholders = selection.map_or(0, count_placeholders)
        + order_by
            .iter()
            .map(|o| count_placeholders(&o.expr))
            .sum::<usize>()
        + limit.map_or(0, count_placeholders);
    RowFilter {
        where_sql: selection.map(|e| e.to_string()),
        order_by_sql: (!order_by.is_empty()).then(|| join(order_by)),
        limit_sql: limit.map(|e| e.to_string()),
        placeholders_before,
        placeholders,
    }
}

fn insert(i: sqlparser::ast::Insert) -> Result<Dml, AnalyzeError> {
    if i.replace_into {
        return unsupported("REPLACE");
    }
    if i.ignore {
        return unsupported("INSERT IGNORE");
    }
    if !i.assignments.is_empty() {
        return unsupported("INSERT … SET");
    }
    let TableObject::TableName(name) = &i.table else {
        return unsupported("INSERT into a table function");
    };
    let table = table_name(name, None)?;
    let columns = i
        .columns
        .iter()
        .map(|c| {
            ident_parts(c).and_then(|mut p| {
                p.pop()
                    .ok_or_else(|| AnalyzeError::Parse("empty column".into()))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(source) = i.source else {
        return unsupported("INSERT without VALUES");
    };
    let rows = match *source.body {
        SetExpr::Values(v) => v.rows.into_iter().map(|r| r.content).collect::<Vec<_>>(),
        _ => return unsupported("INSERT … SELECT"),
    };
    let on_duplicate = match i.on {
        None => None,
        Some(OnInsert::DuplicateKeyUpdate(assignments)) => Some(
            assignments
                .into_iter()
                .map(|a| Ok((column_name(&a.target)?, a.value)))
                .collect::<Result<Vec<_>, AnalyzeError>>()?,
        ),
        Some(_) => return unsupported("ON CONFLICT"),
    };
    Ok(Dml::Insert(Insert {
        table,
        columns,
        rows,
        on_duplicate,
    }))
}

fn update(u: sqlparser::ast::Update) -> Result<Dml, AnalyzeError> {
    if u.from.is_some() {
        return unsupported("a multi-table UPDATE");
    }
    let table = single_table(&u.table)?;
    let assignments = u
        .assignments
        .into_iter()
        .map(|a| Ok((column_name(&a.target)?, a.value)))
        .collect::<Result<Vec<_>, AnalyzeError>>()?;
    let before = assignments.iter().map(|(_, e)| count_placeholders(e)).sum();
    let filter = filter(u.selection.as_ref(), &u.order_by, u.limit.as_ref(), before);
    Ok(Dml::Update(Update {
        table,
        assignments,
        filter,
    }))
}

fn delete(d: sqlparser::ast::Delete) -> Result<Dml, AnalyzeError> {
    if !d.tables.is_empty() || d.using.is_some() {
        return unsupported("a multi-table DELETE");
    }
    let from = match &d.from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    };
    let [t] = from.as_slice() else {
        return unsupported("a multi-table DELETE");
    };
    let table = single_table(t)?;
    let filter = filter(d.selection.as_ref(), &d.order_by, d.limit.as_ref(), 0);
    Ok(Dml::Delete(Delete { table, filter }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsupported_msg(sql: &str) -> String {
        match analyze(sql) {
            Err(AnalyzeError::Unsupported(m)) => m,
            other => panic!("{sql}: expected unsupported, got {other:?}"),
        }
    }

    #[test]
    fn update_keeps_table_assignments_and_filter() {
        let Dml::Update(u) = analyze(
            "UPDATE /*+ XID('x') */ `shop`.account a SET balance = balance - ?, note = 'x' WHERE id = ? AND owner <> 'it''s' ORDER BY id DESC LIMIT 2",
        )
        .unwrap() else {
            panic!("not an update")
        };
        assert_eq!(
            u.table,
            TableName {
                schema: Some("shop".into()),
                name: "account".into(),
                alias: Some("a".into())
            }
        );
        let cols: Vec<&str> = u.assignments.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(cols, vec!["balance", "note"]);
        assert_eq!(
            u.filter.where_sql.as_deref(),
            Some("id = ? AND owner <> 'it''s'")
        );
        assert_eq!(u.filter.order_by_sql.as_deref(), Some("id DESC"));
        assert_eq!(u.filter.limit_sql.as_deref(), Some("2"));
        assert_eq!(
            (u.filter.placeholders_before, u.filter.placeholders),
            (1, 1)
        );
    }

    #[test]
    fn delete_and_insert() {
        let Dml::Delete(d) = analyze("DELETE FROM t WHERE a IN (1, 2) LIMIT 10").unwrap() else {
            panic!("not a delete")
        };
        assert_eq!(d.table.name, "t");
        assert_eq!(d.filter.where_sql.as_deref(), Some("a IN (1, 2)"));
        let Dml::Insert(i) = analyze(
            "INSERT INTO t (id, v) VALUES (1, 'a'), (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)",
        )
        .unwrap() else {
            panic!("not an insert")
        };
        assert_eq!(i.columns, vec!["id", "v"]);
        assert_eq!(i.rows.len(), 2);
        assert_eq!(i.on_duplicate.as_ref().map(|a| a[0].0.as_str()), Some("v"));
        let Dml::Insert(i) = analyze("INSERT INTO t VALUES (1)").unwrap() else {
            panic!("not an insert")
        };
        assert!(i.columns.is_empty());
    }

    #[test]
    fn locking_selects() {
        let l = analyze_locking_select(
            "SELECT * FROM acct a WHERE a.id = 3 ORDER BY id LIMIT 1 FOR UPDATE",
        )
        .unwrap();
        assert_eq!(l.table.alias.as_deref(), Some("a"));
        assert_eq!(l.filter.where_sql.as_deref(), Some("a.id = 3"));
        assert!(analyze_locking_select("SELECT * FROM a JOIN b ON a.x = b.x FOR UPDATE").is_err());
    }

    #[test]
    fn what_cannot_be_undone_is_refused() {
        for (sql, what) in [
            ("INSERT INTO t SELECT * FROM u", "INSERT … SELECT"),
            ("REPLACE INTO t VALUES (1)", "REPLACE"),
            ("INSERT IGNORE INTO t VALUES (1)", "INSERT IGNORE"),
            ("UPDATE t JOIN u ON t.id = u.id SET t.a = 1", "multi-table"),
            ("DELETE t FROM t JOIN u ON t.id = u.id", "multi-table"),
            ("DELETE FROM t USING t JOIN u", "multi-table"),
            ("CREATE TABLE t (a INT)", "DDL"),
            ("DROP TABLE t", "DDL"),
            (
                "UPDATE t SET a = 1; DELETE FROM t",
                "more than one statement",
            ),
        ] {
            let m = unsupported_msg(sql);
            assert!(m.contains(what), "{sql}: {m}");
        }
        assert!(matches!(
            analyze("UPDATE SET WHERE"),
            Err(AnalyzeError::Parse(_))
        ));
        // The parser does not read the comma form of a multi-table UPDATE: refused all the same.
        assert!(analyze("UPDATE t, u SET t.a = 1 WHERE t.id = u.id").is_err());
    }
}
