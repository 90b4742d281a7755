//! Tables split inside each shard (`tables: n`): a statement planned over the logical
//! table runs, on each shard, over that shard's physical tables `<table>_<k>`.
//!
//! Only the table's name is edited, at the place sqlparser found it in the client's text;
//! the rest of the text runs as written. A read over one physical table names it in the
//! table's place (`t_order_1 AS t_order`, so the client's qualifiers still hold); a read
//! over several reads their `UNION ALL` as a derived table under the same name, so that
//! the shard answers for its whole part of the table and every merge above stays as it is.
//! A write or DDL runs once per physical table, renamed (qualifiers too).

use std::ops::{ControlFlow, Range};

use sqlparser::ast::{
    visit_relations, ObjectName, ObjectNamePart, SetExpr, Statement, TableFactor, TableWithJoins,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Location;

use super::TableRule;
use crate::sql::lex::{self, TokenKind};

/// The physical tables (`k` of `<table>_<k>`) of shard `shard` among `slots`.
pub fn suffixes(rule: &TableRule, slots: super::ShardSet, shard: usize) -> Vec<usize> {
    slots
        .iter()
        .filter(|&s| rule.shard_of_slot(s) == shard)
        .map(|s| s % rule.tables)
        .collect()
}

/// Where `sql` names one of `names` (split tables of one binding group, lower case) as a
/// table, with the alias the FROM gives it, if it is in one.
struct Place {
    span: Range<usize>,
    /// The name as the client wrote it.
    written: String,
    aliased: bool,
}

fn parse(sql: &str) -> Result<Statement, String> {
    match Parser::parse_sql(&MySqlDialect {}, sql) {
        Ok(mut s) if s.len() == 1 => Ok(s.remove(0)),
        _ => Err("a statement Tandem cannot read over a split table".into()),
    }
}

/// The byte offset of a sqlparser location (1-based line and column, in characters).
fn offset(sql: &str, at: Location) -> Option<usize> {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in sql.char_indices() {
        if line == at.line && column == at.column {
            return Some(i);
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line == at.line && column == at.column).then_some(sql.len())
}

/// The split table a one-part name names, and where it is written.
fn place_of(sql: &str, name: &ObjectName, names: &[String]) -> Option<Result<Place, String>> {
    let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
        return None;
    };
    if !names.iter().any(|n| n.eq_ignore_ascii_case(&ident.value)) {
        return None;
    }
    let span = match (offset(sql, ident.span.start), offset(sql, ident.span.end)) {
        (Some(a), Some(b)) if a < b => a..b,
        _ => return Some(Err(format!("the split table {} here", ident.value))),
    };
    Some(Ok(Place {
        written: sql[span.clone()].to_string(),
        span,
        aliased: false,
    }))
}

/// Every place `statement` names a split table, as its visitor sees tables (and DDL's
/// own names).
fn places(sql: &str, statement: &Statement, names: &[String]) -> Result<Vec<Place>, String> {
    let mut found: Vec<ObjectName> = Vec::new();
    let _ = visit_relations(statement, |n| {
        found.push(n.clone());
        ControlFlow::<()>::Continue(())
    });
    match statement {
        Statement::Drop { names: n, .. } => found.extend(n.iter().cloned()),
        Statement::Truncate(t) => found.extend(t.table_names.iter().map(|t| t.name.clone())),
        Statement::CreateTable(c) => found.push(c.name.clone()),
        Statement::AlterTable(a) => found.push(a.name.clone()),
        Statement::CreateIndex(c) => found.push(c.table_name.clone()),
        _ => {}
    }
    let mut out: Vec<Place> = Vec::new();
    for n in &found {
        if let Some(p) = place_of(sql, n, names) {
            let p = p?;
            if !out.iter().any(|o| o.span == p.span) {
                out.push(p);
            }
        }
    }
    out.sort_by_key(|p| p.span.start);
    Ok(out)
}

fn edit(sql: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(sql.len() + 64);
    let mut at = 0;
    for (r, replacement) in edits {
        out.push_str(&sql[at..r.start]);
        out.push_str(&replacement);
        at = r.end;
    }
    out.push_str(&sql[at..]);
    out
}

/// A read (`sql`, a SELECT whose FROM names the split tables of `rule`'s group) as a
/// shard runs it over its physical tables `suffixes`.
pub fn read(sql: &str, names: &[String], suffixes: &[usize]) -> Result<String, String> {
    let statement = parse(sql)?;
    let all = places(sql, &statement, names)?;
    let Statement::Query(q) = &statement else {
        return Err("this statement over a split table".into());
    };
    let SetExpr::Select(select) = q.body.as_ref() else {
        return Err("this query over a split table".into());
    };
    let mut from: Vec<Place> = Vec::new();
    let mut factor = |f: &TableFactor| -> Result<(), String> {
        if let TableFactor::Table { name, alias, .. } = f {
            if let Some(p) = place_of(sql, name, names) {
                let mut p = p?;
                p.aliased = alias.is_some();
                from.push(p);
            }
        }
        Ok(())
    };
    let mut with_joins = |t: &TableWithJoins| -> Result<(), String> {
        factor(&t.relation)?;
        for j in &t.joins {
            factor(&j.relation)?;
        }
        Ok(())
    };
    for t in &select.from {
        with_joins(t)?;
    }
    if from.len() != all.len() {
        return Err("a split table named outside the FROM of the query".into());
    }
    if suffixes.is_empty() {
        return Err("a read over no physical table".into());
    }
    let edits = from
        .into_iter()
        .map(|p| {
            let mut text = match suffixes {
                [k] => quoted(&p.written, *k),
                ks => {
                    let parts: Vec<String> = ks
                        .iter()
                        .map(|k| format!("SELECT * FROM {}", quoted(&p.written, *k)))
                        .collect();
                    format!("({})", parts.join(" UNION ALL "))
                }
            };
            if !p.aliased {
                text.push_str(" AS ");
                text.push_str(&p.written);
            }
            (p.span, text)
        })
        .collect();
    Ok(edit(sql, edits))
}

/// `<table>_<k>`, quoted as the client quoted the table's name.
pub(super) fn quoted(written: &str, k: usize) -> String {
    match written.strip_prefix('`').and_then(|w| w.strip_suffix('`')) {
        Some(inner) => format!("`{inner}_{k}`"),
        None => format!("{written}_{k}"),
    }
}

/// A write or DDL (`sql`) as it runs on the physical table `k` of each split table of
/// `names`: the tables renamed where they are named, and where they qualify a column.
pub fn write(sql: &str, names: &[String], k: usize) -> Result<String, String> {
    let statement = parse(sql)?;
    let mut edits: Vec<(Range<usize>, String)> = places(sql, &statement, names)?
        .into_iter()
        .map(|p| (p.span, quoted(&p.written, k)))
        .collect();
    let tokens = lex::tokenize(sql.as_bytes()).map_err(|e| e.to_string())?;
    for (i, t) in tokens.iter().enumerate() {
        let word = match t.kind {
            TokenKind::Word => &sql[t.span.clone()],
            TokenKind::QuotedIdent => sql[t.span.clone()].trim_matches('`'),
            _ => continue,
        };
        let qualifies = tokens.get(i + 1).is_some_and(|n| n.is_punct(b'.'))
            && !(i > 0 && tokens[i - 1].is_punct(b'.'));
        if qualifies
            && names.iter().any(|n| n.eq_ignore_ascii_case(word))
            && !edits.iter().any(|(r, _)| r.start == t.span.start)
        {
            edits.push((t.span.clone(), quoted(&sql[t.span.clone()], k)));
        }
    }
    Ok(edit(sql, edits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["t_order".into(), "t_item".into()]
    }

    #[test]
    fn a_read_names_the_physical_tables_of_its_shard() {
        let n = names();
        assert_eq!(
            read("SELECT * FROM t_order WHERE user_id = 5", &n, &[1]).unwrap(),
            "SELECT * FROM t_order_1 AS t_order WHERE user_id = 5"
        );
        assert_eq!(
            read(
                "SELECT o.id FROM `T_Order` o JOIN t_item i ON o.user_id = i.user_id",
                &n,
                &[0, 2]
            )
            .unwrap(),
            "SELECT o.id FROM (SELECT * FROM `T_Order_0` UNION ALL SELECT * FROM `T_Order_2`) o \
             JOIN (SELECT * FROM t_item_0 UNION ALL SELECT * FROM t_item_2) i ON o.user_id = i.user_id"
        );
        assert_eq!(
            read("SELECT t_order.id\nFROM  t_order, t_country", &n, &[3]).unwrap(),
            "SELECT t_order.id\nFROM  t_order_3 AS t_order, t_country"
        );
        assert_eq!(
            read("SELECT 'é', id FROM t_order", &n, &[0]).unwrap(),
            "SELECT 'é', id FROM t_order_0 AS t_order"
        );
        assert!(read(
            "SELECT * FROM t_country WHERE id IN (SELECT id FROM t_order)",
            &n,
            &[0]
        )
        .is_err());
    }

    #[test]
    fn a_write_renames_its_table_and_qualifiers() {
        let n = names();
        assert_eq!(
            write(
                "UPDATE t_order SET t_order.status = 'x' WHERE user_id = 4",
                &n,
                1
            )
            .unwrap(),
            "UPDATE t_order_1 SET t_order_1.status = 'x' WHERE user_id = 4"
        );
        assert_eq!(
            write("INSERT INTO `t_order` (id, user_id) VALUES (1, 2)", &n, 0).unwrap(),
            "INSERT INTO `t_order_0` (id, user_id) VALUES (1, 2)"
        );
        assert_eq!(
            write(
                "CREATE TABLE t_order (id INT PRIMARY KEY, user_id INT)",
                &n,
                2
            )
            .unwrap(),
            "CREATE TABLE t_order_2 (id INT PRIMARY KEY, user_id INT)"
        );
        assert_eq!(
            write("DROP TABLE IF EXISTS t_order", &n, 1).unwrap(),
            "DROP TABLE IF EXISTS t_order_1"
        );
        assert_eq!(
            write("CREATE INDEX i_status ON t_order (status)", &n, 1).unwrap(),
            "CREATE INDEX i_status ON t_order_1 (status)"
        );
        assert_eq!(
            write(
                "DELETE FROM t_order WHERE t_order.id = 'shop.t_order'",
                &n,
                0
            )
            .unwrap(),
            "DELETE FROM t_order_0 WHERE t_order_0.id = 'shop.t_order'"
        );
    }
}
