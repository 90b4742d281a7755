//! From one statement to a [`Plan`]: the shards it runs on and how their answers merge.
//!
//! The statement is parsed once (sqlparser) to understand it and lexed once
//! ([`crate::sql::lex`]) to edit it. A statement that stays on one shard runs there as the
//! client wrote it. A read over several shards runs as the client wrote it too, but for two
//! kinds of edits cut at token boundaries of the client's own text: columns Tandem needs
//! for its merge are added at the end of the select list, and a LIMIT is widened to
//! `offset + count`. Nothing is ever printed back from the syntax tree.
//!
//! What cannot be answered exactly is a [`Plan::Refuse`] naming why.

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_relations, BinaryOperator, Distinct, Expr, FunctionArg,
    FunctionArgExpr, FunctionArguments, GroupByExpr, Join, JoinConstraint, JoinOperator,
    LimitClause, ObjectName, ObjectNamePart, ObjectType, OrderByKind, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    Value,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use super::algorithm::ColumnKind;
use super::condition::{self, KeyColumn, Params};
use super::grouped::{Added, Combined};
use super::{Placement, ShardSet, TableRule, Topology};
use crate::sql::lex::{self, Token, TokenKind};

use std::sync::Arc;

/// A write over several shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Each shard's statement, in shard order: the client's text, or for a multi-row INSERT
    /// the client's text with only that shard's rows.
    pub statements: Vec<(usize, String)>,
    pub affected: Affected,
}

/// How the client's affected-row count comes from the shards'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affected {
    /// Each row is on one shard: the shards' counts add up.
    Sum,
    /// A broadcast table: every shard changes its own copy alike; the first shard's count.
    First,
}

/// What to do with a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The statement names no table Tandem places (`SELECT 1`, `SELECT LAST_INSERT_ID()`, a
    /// read of broadcast tables alone): any one shard answers, the session's last.
    Any,
    /// The client's text, unchanged, on one shard, whose answer is the client's.
    One(usize),
    /// The client's text on every shard connection the session has open, the session's
    /// last shard's answer the client's: `UNLOCK TABLES` (the session's locks are on the
    /// shards it took them on).
    Open,
    /// DDL, the client's text unchanged on each of these shards; the answer is the last
    /// shard's, or the first error.
    Ddl(Ddl),
    /// A read over several shards, merged.
    Scatter(Box<Scatter>),
    /// A write that changes rows on several shards, each its own statement; the session
    /// makes them one atomic change (a distributed commit).
    Write(Box<Write>),
    /// Tandem answers itself (statements about the logical database).
    Answer(super::show::Answer),
    /// Not answerable exactly: the reason, for the client.
    Refuse(String),
}

/// DDL and what it changes in where tables live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ddl {
    pub shards: ShardSet,
    /// A single table it creates (on its one shard).
    pub creates: Option<String>,
    /// Single tables it drops.
    pub drops: Vec<String>,
    /// Each shard's statements in order, when they are not the client's text (a split
    /// table's DDL runs once per physical table); empty: the client's text on each shard.
    pub statements: Vec<(usize, String)>,
}

/// A column of a shard's result: one the client sees, or one Tandem added after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Visible(usize),
    Hidden(usize),
}

/// One key of an ORDER BY merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// The key's value (its type and collation come from this column's definition).
    pub value: Col,
    /// `WEIGHT_STRING` of the value: how the collation orders a string.
    pub weight: Col,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub offset: u64,
    pub count: u64,
}

/// How one column of an aggregate without GROUP BY combines over the shards' rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// COUNT: the sum of the counts.
    Count,
    /// SUM: the sum of the sums, NULL when every shard's is.
    Sum,
    Min {
        weight: Col,
    },
    Max {
        weight: Col,
    },
    /// AVG: the sum of the shards' SUMs over the sum of their COUNTs, rounded as the
    /// database rounds it to the AVG column's scale.
    Avg {
        sum: Col,
        count: Col,
    },
    /// A GROUP BY column: every row of the group has its value.
    Group,
}

/// A HAVING condition over groups that span shards, evaluated by Tandem on each combined
/// row (the shards cannot: each sees only part of a group). Three-valued, as SQL is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    And(Box<Predicate>, Box<Predicate>),
    Or(Box<Predicate>, Box<Predicate>),
    Not(Box<Predicate>),
    Compare {
        left: Operand,
        op: CompareOp,
        right: Operand,
    },
    IsNull {
        operand: Operand,
        negated: bool,
    },
}

/// A value a [`Predicate`] compares: a combined row's column (`Visible(i)` the select
/// list's, `Hidden(k)` the k-th of [`Scatter::extra`]), a number literal, or NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Column(Col),
    Number(String),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    /// `<=>`: equal, NULL equal to NULL, never NULL itself.
    NullSafeEq,
}

/// A key of an ORDER BY over combined rows that their groups' order does not give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldKey {
    /// A column of the combined row (as in [`Operand::Column`]).
    pub value: Col,
    /// Its collation weight, for a GROUP BY column.
    pub weight: Option<Col>,
    pub descending: bool,
}

/// A read over several shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scatter {
    pub shards: ShardSet,
    /// What each shard runs, unless `per_shard` says otherwise.
    pub sql: String,
    /// What each shard of `shards` runs, in shard order, when shards run different
    /// statements (empty: every one runs `sql`).
    pub per_shard: Vec<String>,
    /// How many columns Tandem added at the end of the select list (never shown).
    pub hidden: usize,
    /// Merge the shards' ordered rows by these keys (empty: one shard after the other).
    pub order: Vec<SortKey>,
    /// Applied after the merge.
    pub limit: Option<Limit>,
    /// The query aggregates: its rows combine column by column, into one row without
    /// GROUP BY, one per group with it.
    pub aggregates: Option<Vec<Aggregate>>,
    /// GROUP BY columns without the sharding column: a group's rows come from several
    /// shards, each shard's rows ordered by these keys, and combine where they agree.
    pub group: Vec<SortKey>,
    /// Values Tandem combines for HAVING and ORDER BY beyond the select list: each a
    /// shard-row column and how it combines. A combined row carries them after its
    /// visible columns; the client never sees them.
    pub extra: Vec<(Col, Aggregate)>,
    /// HAVING over groups that span shards: only combined rows it holds for are sent.
    pub having: Option<Predicate>,
    /// An ORDER BY the groups' order cannot give: combined rows are held (at most
    /// `max_merge_rows`), sorted by these keys, and then limited.
    pub sort: Vec<HeldKey>,
}

impl Scatter {
    /// One shard's statement, as it runs unchanged: its answer is the client's.
    pub fn relay(shard: usize, sql: String) -> Scatter {
        Scatter {
            shards: ShardSet::one(shard),
            sql,
            per_shard: Vec::new(),
            hidden: 0,
            order: Vec::new(),
            limit: None,
            aggregates: None,
            group: Vec::new(),
            extra: Vec::new(),
            having: None,
            sort: Vec::new(),
        }
    }

    /// Whether the shards' rows go to the client as they come.
    /// Whether the shards' answers reach the client as they are (nothing is merged).
    pub fn merges_nothing(&self) -> bool {
        self.hidden == 0
            && self.order.is_empty()
            && self.limit.is_none()
            && self.aggregates.is_none()
            && self.group.is_empty()
            && self.extra.is_empty()
            && self.having.is_none()
            && self.sort.is_empty()
    }

    /// What shard `shard` (one of `shards`) runs.
    pub fn sql_for(&self, shard: usize) -> &str {
        let nth = self.shards.iter().position(|s| s == shard);
        match nth.and_then(|i| self.per_shard.get(i)) {
            Some(sql) => sql,
            None => &self.sql,
        }
    }

    /// How the shards' answers merge, for `EXPLAIN`.
    pub fn describe(&self) -> String {
        if self.shards.len() == 1 && self.merges_nothing() {
            return "relay".to_string();
        }
        let mut ops = Vec::new();
        let keys = if self.group.is_empty() {
            &self.order
        } else {
            &self.group
        };
        ops.push(if keys.is_empty() {
            "concatenate".to_string()
        } else {
            format!("merge-sort by {} key(s)", keys.len())
        });
        let combined = self.aggregates.as_ref().map(|a| a.len() + self.extra.len());
        match (combined, self.group.is_empty()) {
            (Some(n), true) => ops.push(format!("aggregate {n} column(s)")),
            (Some(n), false) => ops.push(format!("group, aggregate {n} column(s)")),
            (None, _) => {}
        }
        if self.having.is_some() {
            ops.push("filter by HAVING".to_string());
        }
        if !self.sort.is_empty() {
            ops.push(format!("hold and sort by {} key(s)", self.sort.len()));
        }
        if let Some(l) = self.limit {
            ops.push(format!("limit {} offset {}", l.count, l.offset));
        }
        if self.hidden > 0 {
            ops.push(format!("hide {} added column(s)", self.hidden));
        }
        ops.join(", then ")
    }
}

fn refuse(what: impl Into<String>) -> Plan {
    Plan::Refuse(what.into())
}

/// Plans `sql` (a COM_QUERY's text). `params` gives the values of `?` markers, when the
/// statement is an execution of a prepared one.
pub fn plan(sql: &str, topo: &Topology, params: Params) -> Plan {
    let tokens = match lex::tokenize(sql.as_bytes()) {
        Ok(t) => t,
        Err(e) => return refuse(format!("{e} in a sharded database")),
    };
    if lex::statements(&tokens).len() > 1 {
        return refuse("several statements in one query on a sharded database");
    }
    if let Some(s) = super::point::route(sql, &tokens, topo) {
        return Plan::One(s);
    }
    plan_tokens(sql, &tokens, topo, params)
}

/// The text a shard prepares for a prepared statement `sql`, when it is not `sql`: a
/// statement over split tables names their first physical tables (the columns and
/// parameters are the same; each execution is planned again with its parameters).
pub fn prepared_text(sql: &str, topo: &Topology) -> Option<String> {
    let statement = match Parser::parse_sql(&MySqlDialect {}, sql) {
        Ok(mut s) if s.len() == 1 => s.remove(0),
        _ => return None,
    };
    let tables = Tables::of(&statement, topo).ok()?;
    let (_, names) = tables.split()?;
    match statement {
        Statement::Query(_) => super::split::read(sql, &names, &[0]).ok(),
        _ => super::split::write(sql, &names, 0).ok(),
    }
}

/// [`plan`] without its hot path ([`super::point`]): every statement parsed. The hot path's
/// test compares the two.
#[cfg(test)]
pub fn plan_parsed(sql: &str, topo: &Topology, params: Params) -> Plan {
    match lex::tokenize(sql.as_bytes()) {
        Ok(tokens) => plan_tokens(sql, &tokens, topo, params),
        Err(e) => refuse(format!("{e} in a sharded database")),
    }
}

fn plan_tokens(sql: &str, tokens: &[Token], topo: &Topology, params: Params) -> Plan {
    if let Some(p) = super::show::plan_show(sql, tokens, topo) {
        return p;
    }
    let statement = match Parser::parse_sql(&MySqlDialect {}, sql) {
        Ok(mut s) if s.len() == 1 => s.remove(0),
        Ok(_) => return refuse("several statements in one query on a sharded database"),
        Err(_) => return unparsed(sql, tokens, topo, "a statement Tandem cannot read"),
    };
    let tables = match Tables::of(&statement, topo) {
        Ok(t) => t,
        Err(p) => return p,
    };
    if let Some(name) = tables.catalog.first() {
        return match &statement {
            Statement::Query(q) => super::catalog::plan(q, sql, tokens, topo, &tables),
            _ => refuse(format!(
                "information_schema.{name} in a statement other than a query on a sharded database"
            )),
        };
    }
    match &statement {
        Statement::Query(q) => plan_query(q, sql, tokens, topo, &tables, params),
        Statement::Insert(insert) => {
            let text = Text::new(sql, tokens);
            plan_insert(insert, &text, topo, &tables, params)
        }
        Statement::Update(u) => {
            if u.from.is_some() || !u.table.joins.is_empty() {
                if let Some(b) = tables.broadcast() {
                    return refuse(format!(
                        "a multi-table UPDATE over the broadcast table {}",
                        b.name
                    ));
                }
                return tables.colocated("a multi-table UPDATE");
            }
            let columns: Vec<&str> = tables
                .sharded
                .iter()
                .map(|r| r.rule.column.as_str())
                .collect();
            if let Some(p) = changes_sharding_column(&u.assignments, &columns) {
                return p;
            }
            let text = Text::new(sql, tokens);
            plan_write(&text, topo, &tables, u.selection.as_ref(), params, "UPDATE")
        }
        Statement::Delete(d) => {
            if d.using.is_some() || !d.tables.is_empty() || tables.refs.len() > 1 {
                if let Some(b) = tables.broadcast() {
                    return refuse(format!(
                        "a multi-table DELETE over the broadcast table {}",
                        b.name
                    ));
                }
                return tables.colocated("a multi-table DELETE");
            }
            let text = Text::new(sql, tokens);
            plan_write(&text, topo, &tables, d.selection.as_ref(), params, "DELETE")
        }
        Statement::CreateTable(c) => {
            if c.query.is_some() && tables.refs.len() > 1 {
                return refuse("CREATE TABLE … SELECT on a sharded database");
            }
            plan_ddl(sql, tokens, topo, &tables, true)
        }
        Statement::AlterTable(_) | Statement::Truncate(_) | Statement::CreateIndex(_) => {
            plan_ddl(sql, tokens, topo, &tables, false)
        }
        Statement::Drop {
            object_type: ObjectType::Table | ObjectType::Index,
            ..
        } => plan_ddl(sql, tokens, topo, &tables, false),
        // Statements whose tables the parser does not show are read by their words.
        Statement::LockTables { .. } | Statement::RenameTable(_) => {
            unparsed(sql, tokens, topo, "this kind of statement")
        }
        Statement::UnlockTables => Plan::Open,
        _ => tables.colocated("this statement"),
    }
}

/// A statement sqlparser cannot read: it may run only where no sharded or broadcast table
/// is named, on the shard of the single tables its words name.
/// Tandem's own undo log on each shard is not a table of the logical database: a statement
/// on one shard's would break the global transactions whose rollback reads it.
fn undo_log() -> String {
    format!(
        "the table {}, which is Tandem's undo log on each shard, not a table of the logical database",
        crate::at::undo::UNDO_TABLE
    )
}

fn unparsed(sql: &str, tokens: &[Token], topo: &Topology, what: &str) -> Plan {
    let mut shard = None;
    for t in tokens {
        let word = match t.kind {
            TokenKind::Word => &sql[t.span.clone()],
            TokenKind::QuotedIdent => sql[t.span.clone()].trim_matches('`'),
            _ => continue,
        };
        if topo.split_of(word).is_some() {
            return refuse(format!("{what} that names the table {word}"));
        }
        if word.eq_ignore_ascii_case(crate::at::undo::UNDO_TABLE) {
            return refuse(undo_log());
        }
        match topo.placement(word) {
            Placement::Sharded(_) | Placement::Broadcast => {
                return refuse(format!("{what} that names the table {word}"))
            }
            Placement::Single(s) => match shard {
                Some(other) if other != s => {
                    return refuse("a statement over single tables on different shards")
                }
                _ => shard = Some(s),
            },
            Placement::Unknown => {}
        }
    }
    shard.map_or(Plan::Any, Plan::One)
}

/// A table the statement names, where it lives.
#[derive(Debug, Clone)]
pub(super) struct TableRef {
    pub(super) name: String,
    placement: Placement,
}

#[derive(Debug, Clone)]
struct ShardedRef {
    qualifiers: Vec<String>,
    rule: Arc<TableRule>,
}

/// Every table a statement names, subqueries included.
#[derive(Debug, Default)]
pub(super) struct Tables {
    pub(super) refs: Vec<TableRef>,
    sharded: Vec<ShardedRef>,
    /// The `information_schema` tables named, as written.
    pub(super) catalog: Vec<String>,
    /// The statement holds a subquery, a derived table, a CTE or a set operation.
    pub(super) nested: bool,
}

impl Tables {
    fn of(statement: &Statement, topo: &Topology) -> Result<Tables, Plan> {
        let mut names: Vec<ObjectName> = Vec::new();
        let _ = visit_relations(statement, |n| {
            names.push(n.clone());
            ControlFlow::<()>::Continue(())
        });
        // DDL names its tables outside the relations a visitor sees.
        match statement {
            Statement::Drop {
                names: n, table, ..
            } => {
                names.extend(n.iter().cloned());
                names.extend(table.iter().cloned());
            }
            Statement::Truncate(t) => names.extend(t.table_names.iter().map(|t| t.name.clone())),
            Statement::CreateTable(c) => names.push(c.name.clone()),
            Statement::AlterTable(a) => names.push(a.name.clone()),
            Statement::CreateIndex(c) => names.push(c.table_name.clone()),
            _ => {}
        }
        if !matches!(
            statement,
            Statement::Query(_)
                | Statement::Insert(_)
                | Statement::Update(_)
                | Statement::Delete(_)
        ) {
            let mut seen = std::collections::HashSet::new();
            names.retain(|n| seen.insert(n.to_string().to_lowercase()));
        }
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        collect_aliases(statement, &mut aliases);
        let mut tables = Tables {
            nested: is_nested(statement),
            ..Tables::default()
        };
        for n in names {
            let parts: Vec<String> =
                n.0.iter()
                    .map(|p| match p {
                        ObjectNamePart::Identifier(i) => i.value.clone(),
                        other => other.to_string(),
                    })
                    .collect();
            if parts
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(crate::at::undo::UNDO_TABLE))
            {
                return Err(refuse(undo_log()));
            }
            let name = match parts.as_slice() {
                [t] => {
                    if let Some(rule) = topo.split_of(t) {
                        return Err(refuse(format!(
                            "the physical table {t} of the split table {}: name {} instead",
                            rule.name, rule.name
                        )));
                    }
                    t.clone()
                }
                [db, t] if db.eq_ignore_ascii_case(&topo.database) => {
                    return Err(refuse(format!(
                        "a table named with its database ({db}.{t}): name it without the database"
                    )))
                }
                [db, t] if db.eq_ignore_ascii_case("information_schema") => {
                    // Answered for the logical database ([`super::catalog`]).
                    tables.catalog.push(t.clone());
                    continue;
                }
                [db, _] => {
                    // Another database of the server (mysql, …): the first shard's.
                    tables.refs.push(TableRef {
                        name: format!("{db}.{}", parts[1]),
                        placement: Placement::Single(0),
                    });
                    continue;
                }
                _ => return Err(refuse(format!("the table name {n}"))),
            };
            let key = name.to_lowercase();
            let qualifiers = aliases
                .get(&key)
                .cloned()
                .unwrap_or_else(|| vec![key.clone()]);
            let placement = topo.placement(&name);
            if let Placement::Sharded(rule) = &placement {
                tables.sharded.push(ShardedRef {
                    qualifiers: qualifiers.clone(),
                    rule: rule.clone(),
                });
            }
            tables.refs.push(TableRef { name, placement });
        }
        Ok(tables)
    }

    /// A statement Tandem does not split: it runs on the one shard that holds all its
    /// tables, or is refused.
    fn colocated(&self, what: &str) -> Plan {
        if let Some(s) = self.sharded.first() {
            return refuse(format!(
                "{what} over the sharded table {} without a WHERE that picks one shard",
                s.rule.name
            ));
        }
        self.home(what)
    }

    /// The shard that holds every table named, none being sharded.
    fn home(&self, what: &str) -> Plan {
        let mut home: Option<(usize, &str)> = None;
        for r in &self.refs {
            if let Placement::Single(s) = r.placement {
                match home {
                    Some((other, name)) if other != s => {
                        return refuse(format!(
                            "{what} over {name} and {} (single tables on different shards)",
                            r.name
                        ))
                    }
                    _ => home = Some((s, &r.name)),
                }
            }
        }
        match home {
            Some((s, _)) => Plan::One(s),
            None => Plan::Any,
        }
    }

    /// The split tables named (`tables` > 1; lower case) and their rule, when there are
    /// any: they are all of one binding group, or the statement is refused on other grounds.
    fn split(&self) -> Option<(&TableRule, Vec<String>)> {
        let first = self.sharded.iter().find(|r| r.rule.split())?;
        let mut names: Vec<String> = Vec::new();
        for r in &self.sharded {
            let name = r.rule.name.to_lowercase();
            if r.rule.split() && !names.contains(&name) {
                names.push(name);
            }
        }
        Some((&first.rule, names))
    }

    fn broadcast(&self) -> Option<&TableRef> {
        self.refs
            .iter()
            .find(|r| matches!(r.placement, Placement::Broadcast))
    }
}

/// Table name (lower case) → the names its columns are qualified with (the aliases given
/// to it, or its own name).
fn collect_aliases(statement: &Statement, out: &mut HashMap<String, Vec<String>>) {
    fn factor(f: &TableFactor, out: &mut HashMap<String, Vec<String>>) {
        if let TableFactor::Table { name, alias, .. } = f {
            let key = name
                .0
                .last()
                .map(|p| match p {
                    ObjectNamePart::Identifier(i) => i.value.to_lowercase(),
                    other => other.to_string().to_lowercase(),
                })
                .unwrap_or_default();
            let q = match alias {
                Some(a) => a.name.value.to_lowercase(),
                None => key.clone(),
            };
            let list = out.entry(key).or_default();
            if !list.contains(&q) {
                list.push(q);
            }
        }
    }
    fn with_joins(t: &TableWithJoins, out: &mut HashMap<String, Vec<String>>) {
        factor(&t.relation, out);
        for j in &t.joins {
            factor(&j.relation, out);
        }
    }
    match statement {
        Statement::Query(q) => {
            if let SetExpr::Select(s) = q.body.as_ref() {
                for t in &s.from {
                    with_joins(t, out);
                }
            }
        }
        Statement::Update(u) => with_joins(&u.table, out),
        Statement::Delete(d) => {
            let from = match &d.from {
                sqlparser::ast::FromTable::WithFromKeyword(f)
                | sqlparser::ast::FromTable::WithoutKeyword(f) => f,
            };
            for t in from {
                with_joins(t, out);
            }
        }
        _ => {}
    }
}

/// Whether a statement nests queries: a subquery, a derived table, a CTE, a UNION.
fn is_nested(statement: &Statement) -> bool {
    let mut nested = false;
    let _ = visit_expressions(statement, |e| {
        if matches!(
            e,
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. }
        ) {
            nested = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if let Statement::Query(q) = statement {
        if q.with.is_some() || !matches!(q.body.as_ref(), SetExpr::Select(_)) {
            nested = true;
        }
        if let SetExpr::Select(s) = q.body.as_ref() {
            let derived = |f: &TableFactor| !matches!(f, TableFactor::Table { .. });
            if s.from
                .iter()
                .any(|t| derived(&t.relation) || t.joins.iter().any(|j| derived(&j.relation)))
            {
                nested = true;
            }
        }
    }
    nested
}

/// The slots a statement's sharded tables can touch, from its WHERE (shards, unless the
/// tables are split inside them: [`TableRule::shards_of_slots`]); `Err` when its sharded
/// tables are not all bound to one another on their sharding columns.
fn shards_of(
    tables: &Tables,
    select: Option<&Select>,
    filter: Option<&Expr>,
    topo: &Topology,
    params: Params,
) -> Result<ShardSet, String> {
    let Some(first) = tables.sharded.first() else {
        return Ok(topo.all());
    };
    // Sharded tables must be joined on their sharding columns, within one binding group.
    if tables.sharded.len() > 1 {
        let mut links: Vec<(usize, usize)> = Vec::new();
        let mut equalities = Vec::new();
        if let Some(f) = filter {
            conjuncts(f, &mut equalities);
        }
        if let Some(s) = select {
            for t in &s.from {
                for j in &t.joins {
                    if let Some(on) = join_on(j) {
                        conjuncts(on, &mut equalities);
                    }
                }
            }
        }
        for e in equalities {
            if let Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } = e
            {
                let side = |x: &Expr| {
                    tables.sharded.iter().position(|r| {
                        KeyColumn {
                            qualifiers: &r.qualifiers,
                            column: &r.rule.column,
                            bare: false,
                        }
                        .matches(x)
                    })
                };
                if let (Some(a), Some(b)) = (side(left), side(right)) {
                    links.push((a, b));
                }
            }
        }
        let mut linked = vec![false; tables.sharded.len()];
        linked[0] = true;
        let mut changed = true;
        while changed {
            changed = false;
            for &(a, b) in &links {
                if linked[a] != linked[b] {
                    linked[a] = true;
                    linked[b] = true;
                    changed = true;
                }
            }
        }
        if let Some(i) = linked.iter().position(|l| !l) {
            let (a, b) = (&first.rule, &tables.sharded[i].rule);
            return Err(if a.group != b.group {
                format!(
                    "a join of the sharded tables {} and {}, which are not bound to each other",
                    a.name, b.name
                )
            } else {
                format!(
                    "a join of {} and {} that is not on their sharding columns ({} = {})",
                    a.name, b.name, a.column, b.column
                )
            });
        }
        if tables
            .sharded
            .iter()
            .any(|r| r.rule.group != first.rule.group)
        {
            return Err("a join of sharded tables that are not bound to each other".into());
        }
    }
    // Slots of the first table's rule: shards, unless its table is split inside them.
    let mut set = ShardSet::all(first.rule.sharder.shards());
    if let Some(f) = filter {
        let bare = tables.refs.len() == 1;
        for r in &tables.sharded {
            let col = KeyColumn {
                qualifiers: &r.qualifiers,
                column: &r.rule.column,
                bare,
            };
            set = set.intersect(condition::shards(f, &col, &r.rule.sharder, params));
        }
    }
    Ok(set)
}

fn join_on(j: &Join) -> Option<&Expr> {
    let c = match &j.join_operator {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c) => c,
        _ => return None,
    };
    match c {
        JoinConstraint::On(e) => Some(e),
        _ => None,
    }
}

fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        other => out.push(other),
    }
}

impl KeyColumn<'_> {
    fn matches(&self, e: &Expr) -> bool {
        match e {
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                self.qualifiers
                    .iter()
                    .any(|q| q.eq_ignore_ascii_case(&parts[0].value))
                    && parts[1].value.eq_ignore_ascii_case(self.column)
            }
            Expr::Identifier(id) => self.bare && id.value.eq_ignore_ascii_case(self.column),
            Expr::Nested(inner) => self.matches(inner),
            _ => false,
        }
    }
}

/// Broadcast tables join locally only where each shard's join gives its own share of the
/// answer: inner joins. An outer join that keeps a broadcast table's rows would give them
/// once per shard.
fn check_broadcast_joins(select: &Select) -> Result<(), String> {
    for t in &select.from {
        for j in &t.joins {
            if !matches!(
                j.join_operator,
                JoinOperator::Join(_)
                    | JoinOperator::Inner(_)
                    | JoinOperator::CrossJoin(_)
                    | JoinOperator::Left(_)
                    | JoinOperator::LeftOuter(_)
            ) {
                return Err("a RIGHT, FULL or other outer join across shards".into());
            }
        }
    }
    Ok(())
}

fn plan_query(
    q: &Query,
    sql: &str,
    tokens: &[Token],
    topo: &Topology,
    tables: &Tables,
    params: Params,
) -> Plan {
    let select = match q.body.as_ref() {
        SetExpr::Select(s) => Some(s.as_ref()),
        _ => None,
    };
    if tables.sharded.is_empty() {
        return tables.home("this query");
    }
    if tables.nested {
        return refuse(format!(
            "a subquery, derived table, WITH or UNION over the sharded table {}",
            tables.sharded[0].rule.name
        ));
    }
    let Some(select) = select else {
        return refuse("this query over a sharded table");
    };
    if let Some(single) = tables
        .refs
        .iter()
        .find(|r| matches!(r.placement, Placement::Single(_)))
    {
        return refuse(format!(
            "a join of the single table {} with the sharded table {}",
            single.name, tables.sharded[0].rule.name
        ));
    }
    let slots = match shards_of(
        tables,
        Some(select),
        select.selection.as_ref(),
        topo,
        params,
    ) {
        Ok(s) => s,
        Err(e) => return refuse(e),
    };
    let split = tables.split();
    let shards = match &split {
        Some((rule, _)) => rule.shards_of_slots(slots),
        None => slots,
    };
    if shards.len() <= 1 {
        let shard = shards.first().unwrap_or(0);
        let Some((rule, names)) = split else {
            return Plan::One(shard);
        };
        let suffixes = read_suffixes(rule, slots, shard);
        if suffixes.len() > 1 {
            if let Some(why) = union_refusal(q, tokens, sql, topo, &names) {
                return refuse(why);
            }
        }
        return match super::split::read(sql, &names, &suffixes) {
            Ok(sql) => Plan::Scatter(Box::new(Scatter::relay(shard, sql))),
            Err(e) => refuse(e),
        };
    }
    if tables.broadcast().is_some() {
        if let Err(e) = check_broadcast_joins(select) {
            return refuse(e);
        }
        // The first table of the FROM is the one whose rows an outer join keeps.
        if let Some(first) = select.from.first() {
            if let TableFactor::Table { name, .. } = &first.relation {
                let name = name.to_string();
                let name = name.trim_matches('`');
                let keeps_broadcast = matches!(topo.placement(name), Placement::Broadcast)
                    && first.joins.iter().any(|j| {
                        matches!(
                            j.join_operator,
                            JoinOperator::Left(_) | JoinOperator::LeftOuter(_)
                        )
                    });
                if keeps_broadcast {
                    return refuse(format!(
                        "an outer join that keeps the rows of the broadcast table {name} across shards"
                    ));
                }
            }
        }
    }
    let mut scatter = match scatter(q, select, sql, tokens, tables, shards) {
        Ok(s) => s,
        Err(e) => return refuse(e),
    };
    if let Some((rule, names)) = split {
        let several = shards
            .iter()
            .any(|shard| read_suffixes(rule, slots, shard).len() > 1);
        if several {
            if let Some(why) = union_refusal(q, tokens, sql, topo, &names) {
                return refuse(why);
            }
        }
        // Each shard reads its own physical tables.
        let per_shard: Result<Vec<String>, String> = shards
            .iter()
            .map(|shard| {
                super::split::read(&scatter.sql, &names, &read_suffixes(rule, slots, shard))
            })
            .collect();
        match per_shard {
            Ok(p) => scatter.per_shard = p,
            Err(e) => return refuse(e),
        }
    }
    Plan::Scatter(Box::new(scatter))
}

/// Why a read cannot read several physical tables of a split table through their UNION
/// ([`super::split::read`]), if it cannot: a locking read would lock nothing (the UNION is
/// materialised), and an ENUM or SET column would be read as a string (sorted and compared
/// as text, not by its members' order).
fn union_refusal(
    q: &Query,
    tokens: &[Token],
    sql: &str,
    topo: &Topology,
    names: &[String],
) -> Option<String> {
    let text = Text::new(sql, tokens);
    let locking = !q.locks.is_empty()
        || text.top_level_word("LOCK").is_some()
        || text.top_level_word("FOR").is_some();
    if locking {
        return Some(format!(
            "a locking read over several physical tables of the split table {} on one shard",
            names[0]
        ));
    }
    if let Some(name) = names.iter().find(|n| topo.enumerated(n)) {
        return Some(format!(
            "a read over several physical tables of the split table {name}, which has an ENUM              or SET column, on one shard"
        ));
    }
    None
}

/// The physical tables a read of `slots` reads on `shard`; a read that can match no row
/// (its slots are none) reads the first, which answers as any would.
fn read_suffixes(rule: &TableRule, slots: ShardSet, shard: usize) -> Vec<usize> {
    let mine = super::split::suffixes(rule, slots, shard);
    if mine.is_empty() {
        vec![0]
    } else {
        mine
    }
}

/// Aggregate functions: a call of one combines rows.
fn aggregate_name(name: &str) -> bool {
    const AGGREGATES: &[&str] = &[
        "count",
        "sum",
        "min",
        "max",
        "avg",
        "group_concat",
        "std",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "variance",
        "var_pop",
        "var_samp",
        "bit_and",
        "bit_or",
        "bit_xor",
        "json_arrayagg",
        "json_objectagg",
        "percentile_cont",
        "percentile_disc",
        "median",
    ];
    AGGREGATES.iter().any(|a| a.eq_ignore_ascii_case(name))
}

pub(super) fn has_aggregate(e: &Expr) -> bool {
    let mut found = false;
    let _ = visit_expressions(e, |x| {
        if let Expr::Function(f) = x {
            if f.over.is_none() && aggregate_name(&f.name.to_string()) {
                found = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    found
}

fn has_window(e: &Expr) -> bool {
    let mut found = false;
    let _ = visit_expressions(e, |x| {
        if let Expr::Function(f) = x {
            if f.over.is_some() {
                found = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    found
}

fn item_expr(item: &SelectItem) -> Option<&Expr> {
    match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
        _ => None,
    }
}

/// Whether `e` is the sharding column of one of the statement's sharded tables: rows that
/// agree on it live on one shard.
fn is_sharding_column(e: &Expr, tables: &Tables) -> bool {
    let bare = tables.refs.len() == 1;
    tables.sharded.iter().any(|r| {
        KeyColumn {
            qualifiers: &r.qualifiers,
            column: &r.rule.column,
            bare,
        }
        .matches(e)
    })
}

/// Whether `item` is a `*` (or `t.*`) whose columns hold a sharded table's sharding column.
fn wildcard_of_sharded(item: &SelectItem, tables: &Tables) -> bool {
    match item {
        SelectItem::Wildcard(_) => !tables.sharded.is_empty(),
        SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
            let name = name.to_string();
            let name = name.trim_matches('`');
            tables
                .sharded
                .iter()
                .any(|r| r.qualifiers.iter().any(|q| q.eq_ignore_ascii_case(name)))
        }
        _ => false,
    }
}

/// The edits of a scatter read, and its merge.
pub(super) fn scatter(
    q: &Query,
    select: &Select,
    sql: &str,
    tokens: &[Token],
    tables: &Tables,
    shards: ShardSet,
) -> Result<Scatter, String> {
    let text = Text::new(sql, tokens);
    if select.into.is_some() {
        return Err("SELECT … INTO across shards".into());
    }
    if text.top_word("INTO").is_some() {
        return Err("SELECT … INTO across shards".into());
    }
    if text.top_word("SQL_CALC_FOUND_ROWS").is_some() {
        return Err("SQL_CALC_FOUND_ROWS across shards".into());
    }
    if q.fetch.is_some() || q.order_by.as_ref().is_some_and(|o| o.interpolate.is_some()) {
        return Err("this query across shards".into());
    }
    let projection_exprs: Vec<&Expr> = select.projection.iter().filter_map(item_expr).collect();
    if projection_exprs.iter().any(|e| has_window(e)) {
        return Err("a window function across shards".into());
    }
    // Rows that differ in the sharding column live on different shards: a GROUP BY or a
    // DISTINCT that keeps it sees each group whole on one shard.
    let group_by = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) => {
            if !modifiers.is_empty() {
                return Err("GROUP BY … WITH ROLLUP across shards".into());
            }
            exprs.as_slice()
        }
        GroupByExpr::All(_) => return Err("GROUP BY ALL across shards".into()),
    };
    let grouped = !group_by.is_empty() && !group_by.iter().any(|e| is_sharding_column(e, tables));
    if grouped && !q.locks.is_empty() {
        return Err("a locking read with GROUP BY across shards".into());
    }
    // A DISTINCT without the sharding column merges as a GROUP BY of all its columns: each
    // shard sorts its distinct rows, and rows equal across shards combine into one.
    let mut distinct = false;
    match &select.distinct {
        None | Some(Distinct::All) => {}
        Some(_) => {
            let keeps_sharding_column = projection_exprs
                .iter()
                .any(|e| is_sharding_column(e, tables))
                || select
                    .projection
                    .iter()
                    .any(|item| wildcard_of_sharded(item, tables));
            if !keeps_sharding_column {
                let plain = group_by.is_empty()
                    && projection_exprs.len() == select.projection.len()
                    && !projection_exprs.iter().any(|e| has_aggregate(e));
                if !plain {
                    return Err(
                        "SELECT DISTINCT with *, aggregates or GROUP BY across shards without the sharding column among its columns"
                            .into(),
                    );
                }
                if !q.locks.is_empty() {
                    return Err("a locking read with DISTINCT across shards".into());
                }
                distinct = true;
            }
        }
    }
    let aggregating = grouped
        || distinct
        || (group_by.is_empty() && projection_exprs.iter().any(|e| has_aggregate(e)));
    if select.having.is_some() && group_by.is_empty() {
        return Err("HAVING without GROUP BY across shards".into());
    }

    let items = text.projection(select.projection.len())?;
    let mut added = Added::default();

    let aggregates = if aggregating {
        let mut out = Vec::new();
        for (i, (item, piece)) in select.projection.iter().zip(&items).enumerate() {
            let Some(e) = item_expr(item) else {
                return Err("a * beside aggregates across shards".into());
            };
            let is_key = group_by.iter().any(|g| {
                g == e || matches!(g, Expr::Value(v) if matches!(&v.value, Value::Number(n, _) if n.parse::<usize>().ok() == Some(i + 1)))
            });
            if (grouped && is_key) || distinct {
                out.push(Aggregate::Group);
            } else {
                out.push(aggregate_of(e, &piece.expr, tables, &mut |x| {
                    added.hide(x)
                })?);
            }
        }
        Some(out)
    } else {
        None
    };

    let mut group = Vec::new();
    if distinct {
        for (i, piece) in items.iter().enumerate() {
            let weight = added.hide(format!("WEIGHT_STRING({})", piece.expr));
            group.push(SortKey {
                value: Col::Visible(i),
                weight,
                descending: false,
            });
        }
    }
    if grouped {
        let pieces = text.clause(&["GROUP", "BY"], group_by.len())?;
        for (g, piece) in group_by.iter().zip(&pieces) {
            let (value, source) = match order_column(g, select, &items) {
                Some((i, source)) => (Col::Visible(i), source),
                None => (added.hide(piece.clone()), piece.clone()),
            };
            let weight = added.hide(format!("WEIGHT_STRING({source})"));
            group.push(SortKey {
                value,
                weight,
                descending: false,
            });
        }
    }

    let descending = |o: &sqlparser::ast::OrderByExpr| {
        matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Desc))
    };
    let mut order = Vec::new();
    let mut extra = Vec::new();
    let mut sort = Vec::new();
    if let Some(ob) = &q.order_by {
        let OrderByKind::Expressions(exprs) = &ob.kind else {
            return Err("ORDER BY ALL across shards".into());
        };
        if grouped || distinct {
            // Each shard sorts its groups by the GROUP BY columns; the merge keeps that
            // order, in the directions the ORDER BY gives them, when the ORDER BY is those
            // columns. Any other order sorts the combined rows, held.
            let streams = exprs.len() == group.len()
                && exprs.iter().zip(&group).all(|(o, g)| {
                    let at = order_column(&o.expr, select, &items).map(|(i, _)| Col::Visible(i));
                    let matches = at == Some(g.value)
                        || group_by
                            .iter()
                            .position(|e| e == &o.expr)
                            .is_some_and(|_| matches!(g.value, Col::Hidden(_)) && at.is_none());
                    matches && o.options.nulls_first.is_none()
                });
            if streams {
                for (o, g) in exprs.iter().zip(group.iter_mut()) {
                    g.descending = descending(o);
                }
            } else {
                let pieces = text.order_by(exprs.len())?;
                let mut combined = Combined {
                    select,
                    items: &items,
                    group_by,
                    group: &group,
                    aggregates: aggregates.as_deref().unwrap_or_default(),
                    tables,
                    extra: &mut extra,
                    added: &mut added,
                };
                for (o, piece) in exprs.iter().zip(&pieces) {
                    if o.with_fill.is_some() || o.options.nulls_first.is_some() {
                        return Err("ORDER BY … NULLS FIRST/LAST".into());
                    }
                    let (value, weight) = combined.column(&o.expr, piece, true)?;
                    sort.push(HeldKey {
                        value,
                        weight,
                        descending: descending(o),
                    });
                }
            }
        } else if aggregates.is_none() {
            let pieces = text.order_by(exprs.len())?;
            for (o, piece) in exprs.iter().zip(&pieces) {
                if o.with_fill.is_some() || o.options.nulls_first.is_some() {
                    return Err("ORDER BY … NULLS FIRST/LAST".into());
                }
                let descending = descending(o);
                let (value, source) = match order_column(&o.expr, select, &items) {
                    Some((i, source)) => (Col::Visible(i), source),
                    None => {
                        if has_window(&o.expr) {
                            return Err("ORDER BY a window function across shards".into());
                        }
                        (added.hide(piece.clone()), piece.clone())
                    }
                };
                let weight = added.hide(format!("WEIGHT_STRING({source})"));
                order.push(SortKey {
                    value,
                    weight,
                    descending,
                });
            }
        }
    }

    // A HAVING over groups that span shards: Tandem's to evaluate, cut from the shards'.
    let mut having = None;
    let mut having_span = None;
    if let (Some(h), true) = (&select.having, grouped) {
        let span = text
            .clause_span(&["HAVING"], &HAVING_ENDS)
            .ok_or("a HAVING Tandem cannot read")?;
        let mut combined = Combined {
            select,
            items: &items,
            group_by,
            group: &group,
            aggregates: aggregates.as_deref().unwrap_or_default(),
            tables,
            extra: &mut extra,
            added: &mut added,
        };
        having = Some(combined.predicate(h, &sql[span.clone()])?);
        having_span = Some(span);
    }

    let limit = match &q.limit_clause {
        None => None,
        Some(l) => Some(limit_of(l)?),
    };
    if matches!(&q.limit_clause, Some(LimitClause::LimitOffset { limit_by, .. }) if !limit_by.is_empty())
    {
        return Err("LIMIT … BY across shards".into());
    }

    // The edits, cut from the client's own text.
    let hidden = added.hidden;
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    if !hidden.is_empty() {
        let at = items.last().map(|p| p.end).ok_or("an empty select list")?;
        edits.push((at..at, format!(", {}", hidden.join(", "))));
    }
    if let Some(span) = having_span {
        edits.push((span, " ".into()));
    }
    if let Some(l) = limit {
        let span = text.limit_span().ok_or("a LIMIT Tandem cannot read")?;
        let widened = if aggregates.is_some() {
            // Rows combine across shards: the LIMIT applies to the combined rows only.
            String::new()
        } else {
            let n = l
                .offset
                .checked_add(l.count)
                .ok_or("a LIMIT that overflows")?;
            format!("LIMIT {n}")
        };
        edits.push((span, widened));
    }
    if (grouped || distinct) && (q.order_by.is_none() || !sort.is_empty()) {
        // The groups' order, which MariaDB gives a GROUP BY without ORDER BY too, and
        // which a held sort combines groups in.
        let sources: Vec<String> = if distinct {
            items.iter().map(|p| p.expr.clone()).collect()
        } else {
            group_by
                .iter()
                .zip(text.clause(&["GROUP", "BY"], group_by.len())?)
                .map(|(_, piece)| piece)
                .collect()
        };
        let order_by = format!(" ORDER BY {} ", sources.join(", "));
        match text.clause_span(&["ORDER", "BY"], &ORDER_ENDS) {
            Some(span) if !sort.is_empty() => edits.push((span, order_by)),
            _ => {
                let at = match text.limit_span() {
                    Some(span) => span.start,
                    None => text.end(),
                };
                edits.push((at..at, order_by));
            }
        }
    }
    // An insertion before a replacement at the same place.
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    let mut out = String::with_capacity(sql.len() + 64);
    let mut at = 0;
    for (r, replacement) in &edits {
        out.push_str(&sql[at..r.start]);
        out.push_str(replacement);
        at = r.end;
    }
    out.push_str(&sql[at..]);
    Ok(Scatter {
        shards,
        sql: out,
        per_shard: Vec::new(),
        hidden: hidden.len(),
        order,
        limit,
        aggregates,
        group,
        extra,
        having,
        sort,
    })
}

/// Words that end a HAVING clause, and an ORDER BY clause.
const HAVING_ENDS: [&str; 7] = [
    "ORDER",
    "WINDOW",
    "LIMIT",
    "FOR",
    "LOCK",
    "INTO",
    "PROCEDURE",
];
const ORDER_ENDS: [&str; 5] = ["LIMIT", "FOR", "LOCK", "INTO", "PROCEDURE"];

/// An ORDER BY key that names a column of the select list: by position, by alias, or as
/// the same expression. Only items before which no `*` stands have a known position.
pub(super) fn order_column(key: &Expr, select: &Select, items: &[Item]) -> Option<(usize, String)> {
    let known = select
        .projection
        .iter()
        .position(|i| item_expr(i).is_none())
        .unwrap_or(select.projection.len());
    if let Expr::Value(v) = key {
        if let Value::Number(n, _) = &v.value {
            let i: usize = n.parse().ok()?;
            let i = i.checked_sub(1)?;
            if i < known {
                return Some((i, items[i].expr.clone()));
            }
            return None;
        }
    }
    if let Expr::Identifier(id) = key {
        for (i, item) in select.projection.iter().enumerate().take(known) {
            if let SelectItem::ExprWithAlias { alias, .. } = item {
                if alias.value.eq_ignore_ascii_case(&id.value) {
                    return Some((i, items[i].expr.clone()));
                }
            }
        }
    }
    for (i, item) in select.projection.iter().enumerate().take(known) {
        if item_expr(item) == Some(key) {
            return Some((i, items[i].expr.clone()));
        }
    }
    None
}

/// How a select-list item of an aggregate query combines over shards.
pub(super) fn aggregate_of(
    e: &Expr,
    source: &str,
    tables: &Tables,
    hide: &mut dyn FnMut(String) -> Col,
) -> Result<Aggregate, String> {
    let Expr::Function(f) = e else {
        return Err(format!(
            "{source} beside aggregates across shards (only COUNT, SUM, MIN, MAX and AVG calls combine)"
        ));
    };
    let name = f.name.to_string().to_lowercase();
    let FunctionArguments::List(list) = &f.args else {
        return Err(format!("{source} across shards"));
    };
    if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() {
        return Err(format!("{source} across shards"));
    }
    let distinct = matches!(
        list.duplicate_treatment,
        Some(sqlparser::ast::DuplicateTreatment::Distinct)
    );
    let arg_is_key = list.args.len() == 1
        && matches!(&list.args[0], FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) if is_sharding_column(a, tables));
    let args_plain = list.args.iter().all(|a| match a {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) => !has_aggregate(a),
        FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => true,
        _ => false,
    });
    if !args_plain || !list.clauses.is_empty() {
        return Err(format!("{source} across shards"));
    }
    match name.as_str() {
        "count" if !distinct || arg_is_key => Ok(Aggregate::Count),
        "count" => Err(format!(
            "{source} across shards (COUNT(DISTINCT …) combines only over the sharding column)"
        )),
        "sum" if !distinct || arg_is_key => Ok(Aggregate::Sum),
        "min" => Ok(Aggregate::Min {
            weight: hide(format!("WEIGHT_STRING({source})")),
        }),
        "max" => Ok(Aggregate::Max {
            weight: hide(format!("WEIGHT_STRING({source})")),
        }),
        "avg" if !distinct => {
            let inner = source
                .find('(')
                .zip(source.rfind(')'))
                .and_then(|(open, close)| source.get(open + 1..close))
                .filter(|a| !a.trim().is_empty())
                .ok_or_else(|| format!("{source} across shards"))?;
            Ok(Aggregate::Avg {
                sum: hide(format!("SUM({inner})")),
                count: hide(format!("COUNT({inner})")),
            })
        }
        _ => Err(format!(
            "{source} across shards (only COUNT, SUM, MIN, MAX and AVG combine)"
        )),
    }
}

fn limit_of(l: &LimitClause) -> Result<Limit, String> {
    let number = |e: &Expr| -> Result<u64, String> {
        match e {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n.parse().map_err(|_| format!("LIMIT {n}")),
                _ => Err("a LIMIT that is not a number across shards".into()),
            },
            _ => Err("a LIMIT that is not a number across shards".into()),
        }
    };
    match l {
        LimitClause::LimitOffset { limit, offset, .. } => Ok(Limit {
            count: match limit {
                Some(e) => number(e)?,
                None => u64::MAX,
            },
            offset: match offset {
                Some(o) => number(&o.value)?,
                None => 0,
            },
        }),
        LimitClause::OffsetCommaLimit { offset, limit } => Ok(Limit {
            offset: number(offset)?,
            count: number(limit)?,
        }),
    }
}

/// A select-list item's source text.
#[derive(Debug, Clone)]
pub(super) struct Item {
    /// The expression, without its alias.
    expr: String,
    /// Where the item ends in the statement.
    end: usize,
}

/// The statement's tokens at parenthesis depth 0, to find its clauses.
struct Text<'a> {
    sql: &'a str,
    tokens: &'a [Token],
    depths: Vec<u32>,
}

/// Words that may stand between SELECT and its first item.
const SELECT_MODIFIERS: &[&str] = &[
    "ALL",
    "DISTINCT",
    "DISTINCTROW",
    "HIGH_PRIORITY",
    "STRAIGHT_JOIN",
    "SQL_SMALL_RESULT",
    "SQL_BIG_RESULT",
    "SQL_BUFFER_RESULT",
    "SQL_CACHE",
    "SQL_NO_CACHE",
];

impl<'a> Text<'a> {
    fn new(sql: &'a str, tokens: &'a [Token]) -> Text<'a> {
        let tokens = lex::statements(tokens).into_iter().next().unwrap_or(&[]);
        Text {
            sql,
            tokens,
            depths: lex::depths(tokens),
        }
    }

    /// The first token at depth 0 that is the word `w`.
    fn top_level_word(&self, w: &str) -> Option<usize> {
        (0..self.tokens.len()).find(|&i| self.depths[i] == 0 && self.word(i, w))
    }

    /// The byte ranges of an INSERT's rows, `(…)` each, after its top-level `VALUES`.
    fn values_rows(&self) -> Option<Vec<std::ops::Range<usize>>> {
        let start = self
            .top_level_word("VALUES")
            .or_else(|| self.top_level_word("VALUE"))?;
        let mut rows = Vec::new();
        let mut i = start + 1;
        loop {
            let open = self.tokens.get(i)?;
            if !open.is_punct(b'(') || self.depths[i] != 0 {
                return None;
            }
            let close = (i + 1..self.tokens.len())
                .find(|&j| self.depths[j] == 0 && self.tokens[j].is_punct(b')'))?;
            rows.push(open.span.start..self.tokens[close].span.end);
            match self.tokens.get(close + 1) {
                Some(t) if t.is_punct(b',') => i = close + 2,
                _ => return Some(rows),
            }
        }
    }

    fn word(&self, i: usize, w: &str) -> bool {
        self.tokens[i].is_word(self.sql.as_bytes(), w)
    }

    fn top_word(&self, w: &str) -> Option<usize> {
        (0..self.tokens.len()).find(|&i| self.depths[i] == 0 && self.word(i, w))
    }

    fn piece(&self, range: std::ops::Range<usize>) -> &'a str {
        let (first, last) = (&self.tokens[range.start], &self.tokens[range.end - 1]);
        &self.sql[first.span.start..last.span.end]
    }

    /// Token ranges between top-level commas.
    fn split(&self, from: usize, to: usize) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut start = from;
        for i in from..to {
            if self.depths[i] == 0 && self.tokens[i].is_punct(b',') {
                out.push(start..i);
                start = i + 1;
            }
        }
        out.push(start..to);
        out
    }

    /// The select list's items; `n` is how many the parser found.
    fn projection(&self, n: usize) -> Result<Vec<Item>, String> {
        let unreadable = || "a select list Tandem cannot read".to_string();
        if self.tokens.is_empty() || !self.word(0, "SELECT") {
            return Err(unreadable());
        }
        let mut start = 1;
        while start < self.tokens.len() && SELECT_MODIFIERS.iter().any(|m| self.word(start, m)) {
            start += 1;
        }
        let end = (start..self.tokens.len())
            .find(|&i| self.depths[i] == 0 && self.word(i, "FROM"))
            .ok_or_else(unreadable)?;
        let ranges = self.split(start, end);
        if ranges.len() != n || ranges.iter().any(|r| r.is_empty()) {
            return Err(unreadable());
        }
        Ok(ranges
            .into_iter()
            .map(|r| {
                let end = self.tokens[r.end - 1].span.end;
                let expr_end = self.without_alias(r.clone());
                Item {
                    expr: self.piece(r.start..expr_end).to_string(),
                    end,
                }
            })
            .collect())
    }

    /// The end of an item's expression: before `[AS] alias` when it has one.
    fn without_alias(&self, r: std::ops::Range<usize>) -> usize {
        let last = r.end - 1;
        if r.len() >= 3 && self.word(last - 1, "AS") {
            return last - 1;
        }
        if r.len() >= 2 {
            let alias_like = match self.tokens[last].kind {
                TokenKind::QuotedIdent | TokenKind::String => true,
                TokenKind::Word => {
                    let prev = &self.tokens[last - 1];
                    // `a b` (alias), not `a.b`, `f(x)` or `- 1`.
                    matches!(
                        prev.kind,
                        TokenKind::Word | TokenKind::QuotedIdent | TokenKind::String
                    ) || prev.is_punct(b')')
                }
                TokenKind::Punct(_) => false,
            };
            if alias_like && !self.tokens[last - 1].is_punct(b'.') {
                return last;
            }
        }
        r.end
    }

    /// The ORDER BY keys' source texts, without ASC/DESC; `n` is how many the parser found.
    fn order_by(&self, n: usize) -> Result<Vec<String>, String> {
        self.clause(&["ORDER", "BY"], n)
    }

    /// Where the statement's last token ends.
    fn end(&self) -> usize {
        self.tokens.last().map_or(self.sql.len(), |t| t.span.end)
    }

    /// The items of the top-level clause opened by `opener` (`ORDER BY`, `GROUP BY`), as
    /// source texts without ASC/DESC; `n` is how many the parser found.
    fn clause(&self, opener: &[&str; 2], n: usize) -> Result<Vec<String>, String> {
        let unreadable = || format!("a {} {} Tandem cannot read", opener[0], opener[1]);
        let start = (0..self.tokens.len().saturating_sub(1))
            .rev()
            .find(|&i| {
                self.depths[i] == 0 && self.word(i, opener[0]) && self.word(i + 1, opener[1])
            })
            .ok_or_else(unreadable)?
            + 2;
        let end = (start..self.tokens.len())
            .find(|&i| {
                self.depths[i] == 0
                    && [
                        "HAVING",
                        "ORDER",
                        "WINDOW",
                        "LIMIT",
                        "FOR",
                        "LOCK",
                        "INTO",
                        "PROCEDURE",
                    ]
                    .iter()
                    .any(|w| self.word(i, w))
            })
            .unwrap_or(self.tokens.len());
        let ranges = self.split(start, end);
        if ranges.len() != n || ranges.iter().any(|r| r.is_empty()) {
            return Err(unreadable());
        }
        Ok(ranges
            .into_iter()
            .map(|mut r| {
                if r.len() > 1 && (self.word(r.end - 1, "ASC") || self.word(r.end - 1, "DESC")) {
                    r.end -= 1;
                }
                self.piece(r).to_string()
            })
            .collect())
    }

    /// The byte range of the last top-level clause opened by the words `opener`, up to
    /// the next top-level word of `ends` or the statement's end.
    fn clause_span(&self, opener: &[&str], ends: &[&str]) -> Option<std::ops::Range<usize>> {
        let n = opener.len();
        let start = (0..self.tokens.len().saturating_sub(n - 1))
            .rev()
            .find(|&i| {
                self.depths[i] == 0 && opener.iter().enumerate().all(|(k, w)| self.word(i + k, w))
            })?;
        let end = (start + n..self.tokens.len())
            .find(|&i| self.depths[i] == 0 && ends.iter().any(|w| self.word(i, w)))
            .unwrap_or(self.tokens.len());
        Some(self.tokens[start].span.start..self.tokens[end - 1].span.end)
    }

    /// The byte range of the top-level LIMIT clause (`LIMIT n`, `LIMIT o, n`,
    /// `LIMIT n OFFSET o`).
    fn limit_span(&self) -> Option<std::ops::Range<usize>> {
        let i = (0..self.tokens.len())
            .rev()
            .find(|&i| self.depths[i] == 0 && self.word(i, "LIMIT"))?;
        let number = |j: usize| {
            self.tokens.get(j).is_some_and(|t| {
                t.kind == TokenKind::Word
                    && self.sql.as_bytes()[t.span.clone()]
                        .iter()
                        .all(u8::is_ascii_digit)
            })
        };
        if !number(i + 1) {
            return None;
        }
        let mut last = i + 1;
        let comma = self.tokens.get(i + 2).is_some_and(|t| t.is_punct(b','));
        let offset = self.tokens.get(i + 2).is_some() && self.word(i + 2, "OFFSET");
        if (comma || offset) && number(i + 3) {
            last = i + 3;
        }
        if self
            .tokens
            .get(last + 1)
            .is_some_and(|_| self.word(last + 1, "ROWS"))
        {
            return None;
        }
        Some(self.tokens[i].span.start..self.tokens[last].span.end)
    }
}

/// The same statement on every shard, for a broadcast table (when it reads nothing but
/// the table: another table's rows differ from shard to shard).
fn broadcast_write(text: &Text, topo: &Topology, tables: &Tables, name: &str) -> Plan {
    if let Some(p) = returning(text) {
        return p;
    }
    if tables.refs.len() > 1 || tables.nested {
        return refuse(format!(
            "a write to the broadcast table {name} that reads other tables"
        ));
    }
    Plan::Write(Box::new(Write {
        statements: topo
            .all()
            .iter()
            .map(|s| (s, text.sql.to_string()))
            .collect(),
        affected: Affected::First,
    }))
}

/// An INSERT that leaves out its table's generated column, planned with the column and a
/// snowflake id per row added to its text; the first row's id is set as the connection's
/// `LAST_INSERT_ID()` (and the OK packet's insert id), as an AUTO_INCREMENT's first id is.
fn with_generated_keys(
    text: &Text,
    column: &str,
    rows: usize,
    topo: &Topology,
    params: Params,
) -> Plan {
    let cannot = || {
        refuse(format!(
            "an INSERT whose {column} Tandem cannot add (write the column list and VALUES plainly)"
        ))
    };
    let Some(values_at) = text
        .top_level_word("VALUES")
        .or_else(|| text.top_level_word("VALUE"))
    else {
        return cannot();
    };
    let Some(close) = values_at
        .checked_sub(1)
        .filter(|&i| text.tokens[i].is_punct(b')'))
    else {
        return cannot();
    };
    let Some(spans) = text.values_rows().filter(|r| r.len() == rows) else {
        return cannot();
    };
    let mut edits = vec![(text.tokens[close].span.start, format!(", `{column}`"))];
    for (i, r) in spans.iter().enumerate() {
        let id = topo.snowflake.next();
        let value = if i == 0 {
            format!(", LAST_INSERT_ID({id})")
        } else {
            format!(", {id}")
        };
        edits.push((r.end - 1, value));
    }
    let mut sql = String::with_capacity(text.sql.len() + 24 * (rows + 1));
    let mut at = 0;
    for (pos, add) in &edits {
        sql.push_str(&text.sql[at..*pos]);
        sql.push_str(add);
        at = *pos;
    }
    sql.push_str(&text.sql[at..]);
    match plan(&sql, topo, params) {
        // The edited text, not the client's, is what the shard runs.
        Plan::One(s) => Plan::Write(Box::new(Write {
            statements: vec![(s, sql)],
            affected: Affected::Sum,
        })),
        other => other,
    }
}

/// The refusal of assignments that change a sharding column (one of `columns`, lower case):
/// the row may belong on another shard then.
fn changes_sharding_column(
    assignments: &[sqlparser::ast::Assignment],
    columns: &[&str],
) -> Option<Plan> {
    assignments.iter().find_map(|a| {
        let target = a.target.to_string().to_lowercase();
        let column = target
            .rsplit('.')
            .next()
            .unwrap_or(&target)
            .trim_matches('`');
        columns.contains(&column).then(|| {
            refuse(format!(
                "changing the sharding column {column} (it may move the row to another shard)"
            ))
        })
    })
}

/// A write over several shards answers with one OK: its `RETURNING` rows are refused.
fn returning(text: &Text) -> Option<Plan> {
    text.top_level_word("RETURNING")
        .map(|_| refuse("a write with RETURNING over several shards"))
}

fn plan_insert(
    insert: &sqlparser::ast::Insert,
    text: &Text,
    topo: &Topology,
    tables: &Tables,
    params: Params,
) -> Plan {
    let TableObject::TableName(name) = &insert.table else {
        return refuse("INSERT into a table function");
    };
    let name = name.to_string();
    let name = name.trim_matches('`');
    let rule = match topo.placement(name) {
        Placement::Sharded(rule) => rule,
        Placement::Broadcast => return broadcast_write(text, topo, tables, name),
        _ => return tables.colocated("INSERT"),
    };
    if let Some(sqlparser::ast::OnInsert::DuplicateKeyUpdate(assignments)) = &insert.on {
        if let Some(p) = changes_sharding_column(assignments, &[rule.column.as_str()]) {
            return p;
        }
    }
    if tables.refs.len() > 1 || tables.nested {
        return refuse(format!("INSERT … SELECT into the sharded table {name}"));
    }
    let Some(source) = &insert.source else {
        return refuse(format!(
            "INSERT … SET into the sharded table {name} (give the columns and VALUES)"
        ));
    };
    let SetExpr::Values(values) = source.body.as_ref() else {
        return refuse(format!("INSERT … SELECT into the sharded table {name}"));
    };
    if let Some(generated) = &rule.generated {
        let given = insert.columns.iter().any(|c| {
            c.to_string()
                .trim_matches('`')
                .eq_ignore_ascii_case(generated)
        });
        if !insert.columns.is_empty() && !given {
            return with_generated_keys(text, generated, values.rows.len(), topo, params);
        }
    }
    let at = if insert.columns.is_empty() {
        topo.key_position(name)
    } else {
        insert.columns.iter().position(|c| {
            c.to_string()
                .trim_matches('`')
                .eq_ignore_ascii_case(&rule.column)
        })
    };
    let Some(at) = at else {
        return refuse(format!(
            "INSERT into the sharded table {name} without its sharding column {} in the column list",
            rule.column
        ));
    };
    if rule.sharder.kind() == ColumnKind::Unusable {
        return refuse(format!(
            "INSERT into {name}, whose sharding column {} its algorithm cannot place rows by \
             (Tandem's log says why)",
            rule.column
        ));
    }
    // Slots: shards, or the physical tables of a split table.
    let mut slots = ShardSet::EMPTY;
    let mut row_slots = Vec::with_capacity(values.rows.len());
    for row in &values.rows {
        let Some(v) = row.get(at) else {
            return refuse("a VALUES row shorter than its column list");
        };
        let key = condition::literal(v).or_else(|| params(v));
        match key.and_then(|k| rule.sharder.shard_of(&k)) {
            Some(s) => {
                slots.insert(s);
                row_slots.push(s);
            }
            None => {
                return refuse(format!(
                    "INSERT into {name} with a value of {} that is not a constant Tandem can place ({v})",
                    rule.column
                ))
            }
        }
    }
    if !rule.split() {
        if let Some(s) = slots.single() {
            return Plan::One(s);
        }
    }
    if let Some(p) = returning(text) {
        return p;
    }
    // Each shard (or physical table) gets the statement with its own rows: the client's
    // text with the other rows cut out.
    let Some(rows) = text.values_rows().filter(|r| r.len() == row_slots.len()) else {
        return refuse(format!(
            "an INSERT into {name} whose rows go to several shards, written in a form Tandem cannot split"
        ));
    };
    let (head, tail) = match (rows.first(), rows.last()) {
        (Some(f), Some(l)) => (&text.sql[..f.start], &text.sql[l.end..]),
        _ => return refuse("an INSERT without rows"),
    };
    let names = [rule.name.to_lowercase()];
    let mut statements = Vec::with_capacity(slots.len());
    for slot in slots.iter() {
        let mine: Vec<&str> = rows
            .iter()
            .zip(&row_slots)
            .filter(|(_, &rs)| rs == slot)
            .map(|(r, _)| &text.sql[r.clone()])
            .collect();
        let sql = format!("{head}{}{tail}", mine.join(", "));
        let sql = if rule.split() {
            match super::split::write(&sql, &names, slot % rule.tables) {
                Ok(sql) => sql,
                Err(e) => return refuse(e),
            }
        } else {
            sql
        };
        statements.push((rule.shard_of_slot(slot), sql));
    }
    Plan::Write(Box::new(Write {
        statements,
        affected: Affected::Sum,
    }))
}

fn plan_write(
    text: &Text,
    topo: &Topology,
    tables: &Tables,
    filter: Option<&Expr>,
    params: Params,
    what: &str,
) -> Plan {
    let Some(r) = tables.sharded.first() else {
        if let Some(b) = tables.broadcast() {
            return broadcast_write(text, topo, tables, &b.name);
        }
        return tables.home(what);
    };
    if tables.nested {
        return refuse(format!(
            "{what} with a subquery on the sharded table {}",
            r.rule.name
        ));
    }
    // Slots: shards, or the physical tables of a split table.
    let n = r.rule.sharder.shards();
    let set = match filter {
        None => ShardSet::all(n),
        Some(f) => {
            let col = KeyColumn {
                qualifiers: &r.qualifiers,
                column: &r.rule.column,
                bare: true,
            };
            condition::shards(f, &col, &r.rule.sharder, params)
        }
    };
    if let Some((rule, names)) = tables.split() {
        return split_write(text, rule, &names, set, what);
    }
    match set.len() {
        0 => Plan::One(0),
        1 => Plan::One(set.first().unwrap_or(0)),
        k => {
            if let Some(p) = returning(text) {
                return p;
            }
            // Which rows an ORDER BY … LIMIT picks depends on all shards' rows together.
            if text.top_level_word("LIMIT").is_some() {
                return refuse(format!(
                    "{what} … LIMIT of the sharded table {} on {k} shards",
                    r.rule.name
                ));
            }
            Plan::Write(Box::new(Write {
                statements: set.iter().map(|s| (s, text.sql.to_string())).collect(),
                affected: Affected::Sum,
            }))
        }
    }
}

/// An UPDATE or DELETE of a split table: one statement per physical table it can touch.
fn split_write(
    text: &Text,
    rule: &TableRule,
    names: &[String],
    slots: ShardSet,
    what: &str,
) -> Plan {
    if let Some(p) = returning(text) {
        return p;
    }
    // A write that can match no row runs on one physical table, which says so.
    let slots = if slots.is_empty() {
        ShardSet::one(0)
    } else {
        slots
    };
    if slots.len() > 1 && text.top_level_word("LIMIT").is_some() {
        return refuse(format!(
            "{what} … LIMIT of the split table {} on {} physical tables",
            rule.name,
            slots.len()
        ));
    }
    let mut statements = Vec::with_capacity(slots.len());
    for slot in slots.iter() {
        match super::split::write(text.sql, names, slot % rule.tables) {
            Ok(sql) => statements.push((rule.shard_of_slot(slot), sql)),
            Err(e) => return refuse(e),
        }
    }
    Plan::Write(Box::new(Write {
        statements,
        affected: Affected::Sum,
    }))
}

fn plan_ddl(text: &str, tokens: &[Token], topo: &Topology, tables: &Tables, creates: bool) -> Plan {
    let mut shards: Option<ShardSet> = None;
    let mut single_names = Vec::new();
    for r in &tables.refs {
        let here = match &r.placement {
            Placement::Sharded(_) | Placement::Broadcast => topo.all(),
            Placement::Single(s) => {
                single_names.push(r.name.clone());
                ShardSet::one(*s)
            }
            Placement::Unknown => {
                single_names.push(r.name.clone());
                ShardSet::one(0)
            }
        };
        match shards {
            Some(s) if s != here => {
                return refuse("DDL over tables placed differently (name one table at a time)")
            }
            _ => shards = Some(here),
        }
    }
    let Some(shards) = shards else {
        return Plan::Any;
    };
    if let Some((rule, names)) = tables.split() {
        if tables.refs.len() > 1 {
            return refuse(format!(
                "DDL over the split table {} and other tables (name one table at a time)",
                rule.name
            ));
        }
        // Names one database holds once (constraints), a table it names elsewhere (its
        // new name, a reference): the physical tables' statements would collide or miss.
        let b = text.as_bytes();
        for word in ["RENAME", "CONSTRAINT", "FOREIGN", "REFERENCES"] {
            if tokens.iter().any(|t| t.is_word(b, word)) {
                return refuse(format!(
                    "DDL with {word} over the split table {}",
                    rule.name
                ));
            }
        }
        let mut statements = Vec::new();
        for shard in shards.iter() {
            for k in 0..rule.tables {
                match super::split::write(text, &names, k) {
                    Ok(sql) => statements.push((shard, sql)),
                    Err(e) => return refuse(e),
                }
            }
        }
        return Plan::Ddl(Ddl {
            shards,
            creates: None,
            drops: Vec::new(),
            statements,
        });
    }
    let is_single = shards.len() == 1 && !single_names.is_empty();
    Plan::Ddl(Ddl {
        shards,
        creates: (creates && is_single).then(|| single_names[0].clone()),
        drops: if creates { Vec::new() } else { single_names },
        statements: Vec::new(),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::Executor;

    pub(in crate::planner::sharding) fn topology() -> Topology {
        let e: Executor = serde_norway::from_str(
            "
name: shop
mode: sharding
database: shop
shards: [s0, s1, s2, s3]
sharded_tables:
  - { table: t_order, column: user_id, algorithm: mod }
  - { table: t_item, column: user_id, algorithm: mod, binding: t_order }
  - { table: t_user, column: id, algorithm: mod }
broadcast_tables: [t_country]
",
        )
        .unwrap();
        let t = Topology::new(&e).unwrap();
        t.learn_tables(&[vec!["t_note".into()], vec!["t_log".into()]])
            .unwrap();
        t
    }

    fn p(sql: &str) -> Plan {
        let no_params = |_: &Expr| None;
        plan(sql, &topology(), &no_params)
    }

    fn scatter_of(sql: &str) -> Scatter {
        match p(sql) {
            Plan::Scatter(s) => *s,
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn refused(sql: &str) -> String {
        match p(sql) {
            Plan::Refuse(why) => why,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn point_statements_go_to_one_shard_unchanged() {
        assert_eq!(p("SELECT * FROM t_order WHERE user_id = 5"), Plan::One(1));
        assert_eq!(
            p("select * from T_ORDER o where o.user_id in (2, 6)"),
            Plan::One(2)
        );
        assert_eq!(
            p("SELECT o.id, i.sku FROM t_order o JOIN t_item i ON o.user_id = i.user_id WHERE o.user_id = 3"),
            Plan::One(3)
        );
        assert_eq!(
            p("SELECT user_id, count(*) FROM t_order WHERE user_id = 7 GROUP BY status ORDER BY 2 LIMIT 3"),
            Plan::One(3)
        );
        assert_eq!(
            p("UPDATE t_order SET status = 'x' WHERE user_id = 4"),
            Plan::One(0)
        );
        assert_eq!(
            p("DELETE FROM t_order WHERE user_id = 1 AND id = 3"),
            Plan::One(1)
        );
        assert_eq!(
            p("INSERT INTO t_order (id, user_id) VALUES (1, 5), (2, 9)"),
            Plan::One(1)
        );
        assert_eq!(p("SELECT * FROM t_log"), Plan::One(1));
        assert_eq!(p("SELECT 1"), Plan::Any);
        assert_eq!(p("SELECT * FROM t_country"), Plan::Any);
    }

    #[test]
    fn scatters_keep_the_clients_text_but_for_their_own_columns_and_limit() {
        let s = scatter_of("SELECT id, user_id FROM t_order ORDER BY id DESC LIMIT 5, 10");
        assert_eq!(
            s.sql,
            "SELECT id, user_id, WEIGHT_STRING(id) FROM t_order ORDER BY id DESC LIMIT 15"
        );
        assert_eq!(
            s.limit,
            Some(Limit {
                offset: 5,
                count: 10
            })
        );
        assert_eq!(
            s.order,
            vec![SortKey {
                value: Col::Visible(0),
                weight: Col::Hidden(0),
                descending: true
            }]
        );
        let s =
            scatter_of("SELECT o.id AS `k` FROM t_order o ORDER BY name, k, 1 LIMIT 3 OFFSET 1");
        assert_eq!(
            s.sql,
            "SELECT o.id AS `k`, name, WEIGHT_STRING(name), WEIGHT_STRING(o.id) FROM t_order o ORDER BY name, k, 1 LIMIT 4"
        );
        assert_eq!(s.hidden, 3);
        let s = scatter_of("SELECT COUNT(*), max(name) m FROM t_order WHERE id > 3 LIMIT 1");
        assert_eq!(
            s.sql,
            "SELECT COUNT(*), max(name) m, WEIGHT_STRING(max(name)) FROM t_order WHERE id > 3 "
        );
        assert_eq!(
            s.aggregates,
            Some(vec![
                Aggregate::Count,
                Aggregate::Max {
                    weight: Col::Hidden(0)
                }
            ])
        );
        let s = scatter_of("SELECT * FROM t_order WHERE user_id IN (1, 2) FOR UPDATE");
        assert_eq!(s.shards.iter().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            s.sql,
            "SELECT * FROM t_order WHERE user_id IN (1, 2) FOR UPDATE"
        );
        let s = scatter_of("SELECT user_id, COUNT(*) FROM t_order GROUP BY user_id");
        assert_eq!(s.aggregates, None);
        let s = scatter_of("SELECT DISTINCT user_id, status FROM t_order");
        assert_eq!(s.hidden, 0);
    }

    #[test]
    fn having_and_orders_over_spanning_groups_are_tandems() {
        let s = scatter_of(
            "SELECT status, SUM(amount) s FROM t_order GROUP BY status \
             HAVING count(*) > 1 AND s BETWEEN -2 AND 3.5 ORDER BY max(qty) DESC, status LIMIT 2",
        );
        assert_eq!(
            s.sql,
            "SELECT status, SUM(amount) s, WEIGHT_STRING(status), max(qty), WEIGHT_STRING(max(qty)), count(*) \
             FROM t_order GROUP BY status    ORDER BY status  "
        );
        // Extras: max(qty), status's weight, count(*).
        assert_eq!(
            s.extra,
            vec![
                (
                    Col::Hidden(1),
                    Aggregate::Max {
                        weight: Col::Hidden(2)
                    }
                ),
                (Col::Hidden(0), Aggregate::Group),
                (Col::Hidden(3), Aggregate::Count),
            ]
        );
        let cmp = |left, op, n: &str| Predicate::Compare {
            left,
            op,
            right: Operand::Number(n.into()),
        };
        assert_eq!(
            s.having,
            Some(Predicate::And(
                Box::new(cmp(Operand::Column(Col::Hidden(2)), CompareOp::Gt, "1")),
                Box::new(Predicate::And(
                    Box::new(cmp(Operand::Column(Col::Visible(1)), CompareOp::GtEq, "-2")),
                    Box::new(cmp(
                        Operand::Column(Col::Visible(1)),
                        CompareOp::LtEq,
                        "3.5"
                    )),
                )),
            ))
        );
        assert_eq!(
            s.sort,
            vec![
                HeldKey {
                    value: Col::Hidden(0),
                    weight: None,
                    descending: true
                },
                HeldKey {
                    value: Col::Visible(0),
                    weight: Some(Col::Hidden(1)),
                    descending: false
                },
            ]
        );
        assert_eq!(
            s.limit,
            Some(Limit {
                offset: 0,
                count: 2
            })
        );
        // The groups' own order, in other directions, still streams.
        let s = scatter_of("SELECT status, COUNT(*) FROM t_order GROUP BY status ORDER BY 1 DESC");
        assert!(s.sort.is_empty() && s.group[0].descending);
        // A DISTINCT sorted by its second column.
        let s = scatter_of("SELECT DISTINCT status, qty FROM t_order ORDER BY qty DESC, 1");
        assert_eq!(s.sort.len(), 2);
        assert!(s.sql.ends_with("ORDER BY status, qty "), "{}", s.sql);
    }

    #[test]
    fn what_cannot_be_exact_is_refused() {
        assert!(refused(
            "SELECT status, COUNT(*) FROM t_order GROUP BY status HAVING COUNT(*) > 1 + 1"
        )
        .contains("1 + 1 over groups that span shards"));
        assert!(
            refused("SELECT status, COUNT(*) FROM t_order GROUP BY status HAVING name > 1")
                .contains("name over groups that span shards")
        );
        assert!(
            refused("SELECT status, COUNT(*) c FROM t_order GROUP BY status ORDER BY name")
                .contains("only selected columns")
        );
        let s = scatter_of("SELECT status, COUNT(*) FROM t_order GROUP BY status LIMIT 2");
        assert_eq!(
            s.sql,
            "SELECT status, COUNT(*), WEIGHT_STRING(status) FROM t_order GROUP BY status  ORDER BY status "
        );
        assert_eq!(s.aggregates, Some(vec![Aggregate::Group, Aggregate::Count]));
        assert_eq!(
            s.limit,
            Some(Limit {
                offset: 0,
                count: 2
            })
        );
        let s = scatter_of("SELECT DISTINCT status FROM t_order");
        assert_eq!(s.aggregates, Some(vec![Aggregate::Group]));
        assert_eq!(
            s.sql,
            "SELECT DISTINCT status, WEIGHT_STRING(status) FROM t_order ORDER BY status "
        );
        // Rows that differ in the sharding column are on different shards: a `*` keeps it,
        // so each shard's distinct rows are distinct from every other shard's.
        let s = scatter_of("SELECT DISTINCT * FROM t_order");
        assert_eq!(s.aggregates, None);
        assert_eq!(s.sql, "SELECT DISTINCT * FROM t_order");
        let s =
            scatter_of("SELECT DISTINCT o.* FROM t_order o JOIN t_country c ON c.id = o.country");
        assert_eq!(s.aggregates, None);
        assert!(
            refused("SELECT DISTINCT c.* FROM t_order o JOIN t_country c ON c.id = o.country")
                .contains("DISTINCT")
        );
        assert!(
            refused("SELECT DISTINCT status FROM t_order ORDER BY id").contains("id over groups")
        );
        assert!(refused("SELECT AVG(DISTINCT id) FROM t_order").contains("AVG"));
        let s = scatter_of("SELECT AVG(o.amount) FROM t_order o");
        assert_eq!(
            s.sql,
            "SELECT AVG(o.amount), SUM(o.amount), COUNT(o.amount) FROM t_order o"
        );
        assert!(refused("SELECT COUNT(DISTINCT status) FROM t_order").contains("COUNT(DISTINCT"));
        assert!(
            refused("SELECT * FROM t_order WHERE id IN (SELECT id FROM t_item)")
                .contains("subquery")
        );
        assert!(
            refused("SELECT * FROM t_order o JOIN t_user u ON o.user_id = u.id")
                .contains("not bound")
        );
        assert!(
            refused("SELECT * FROM t_order o JOIN t_item i ON o.id = i.id")
                .contains("not on their sharding columns")
        );
        assert!(
            refused("SELECT * FROM t_order o JOIN t_note n ON o.id = n.id")
                .contains("single table")
        );
        assert!(refused("SELECT * FROM t_note, t_log").contains("different shards"));
        assert!(refused("SELECT * FROM shop.t_order").contains("without the database"));
        assert!(refused("SELECT 1; SELECT 2").contains("several statements"));
        assert!(refused("SELECT /*! 1 */ 2 FROM t_order").contains("executable comment"));
        // Statements whose tables the parser does not list are read by their words.
        assert!(refused("LOCK TABLES t_order WRITE").contains("t_order"));
        assert!(refused("LOCK TABLES t_note READ, t_country WRITE").contains("t_country"));
        assert_eq!(p("LOCK TABLES t_note WRITE"), Plan::One(0));
        assert!(refused("RENAME TABLE t_order TO t_old").contains("t_order"));
        assert_eq!(p("UNLOCK TABLES"), Plan::Open);
        assert!(refused("DELETE FROM undo_log").contains("undo log"));
        assert!(refused("SELECT * FROM UNDO_LOG").contains("undo log"));
        assert!(refused("DELETE FROM shop_0.undo_log").contains("undo log"));
        assert!(
            refused("UPDATE t_order SET user_id = 3 WHERE user_id = 2").contains("sharding column")
        );
        refused("SELECT * FROM t_order LIMIT 1 ROWS EXAMINED 5");
        assert!(
            refused("SELECT id, ROW_NUMBER() OVER (ORDER BY id) FROM t_order").contains("window")
        );
        assert!(
            refused("SELECT * FROM t_country c LEFT JOIN t_order o ON o.country = c.id")
                .contains("broadcast")
        );
        assert!(refused("INSERT INTO t_order (id) VALUES (1)").contains("sharding column"));
        assert!(refused("INSERT INTO t_order VALUES (1, 1)").contains("sharding column"));
        let write = |sql: &str| match p(sql) {
            Plan::Write(w) => (w.statements, w.affected),
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(
            write("INSERT INTO t_order (id, user_id) VALUES (1, 1), (2, 2), (3, 5) ON DUPLICATE KEY UPDATE id = id"),
            (
                vec![
                    (1, "INSERT INTO t_order (id, user_id) VALUES (1, 1), (3, 5) ON DUPLICATE KEY UPDATE id = id".to_string()),
                    (2, "INSERT INTO t_order (id, user_id) VALUES (2, 2) ON DUPLICATE KEY UPDATE id = id".to_string()),
                ],
                Affected::Sum
            )
        );
        let (statements, affected) = write("DELETE FROM t_order WHERE id = 1");
        assert_eq!(statements.len(), 4);
        assert_eq!(affected, Affected::Sum);
        let (statements, affected) = write("UPDATE t_country SET name = 'x'");
        assert_eq!(statements.len(), 4);
        assert_eq!(affected, Affected::First);
        assert!(refused("DELETE FROM t_order ORDER BY id LIMIT 3").contains("LIMIT"));
        assert!(refused("DELETE FROM t_order WHERE id > 3 RETURNING id").contains("RETURNING"));
        assert!(refused(
            "INSERT INTO t_order (id, user_id) VALUES (1, 1) ON DUPLICATE KEY UPDATE user_id = 2"
        )
        .contains("sharding column"));
        assert!(refused("UPDATE t_country c JOIN t_order o ON o.country = c.id SET c.name = 'x' WHERE o.user_id = 1").contains("broadcast"));
    }

    #[test]
    fn ddl_reaches_every_physical_table() {
        let all = topology().all();
        assert_eq!(
            p("ALTER TABLE t_order ADD COLUMN note TEXT"),
            Plan::Ddl(Ddl {
                shards: all,
                creates: None,
                drops: vec![],
                statements: vec![]
            })
        );
        assert_eq!(
            p("CREATE TABLE t_new (id INT PRIMARY KEY)"),
            Plan::Ddl(Ddl {
                shards: ShardSet::one(0),
                creates: Some("t_new".into()),
                drops: vec![],
                statements: vec![]
            })
        );
        assert_eq!(
            p("DROP TABLE t_log"),
            Plan::Ddl(Ddl {
                shards: ShardSet::one(1),
                creates: None,
                drops: vec!["t_log".into()],
                statements: vec![]
            })
        );
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use crate::config::Executor;

    /// Four shards, `t_split` in two physical tables on each: eight slots by `mod`.
    fn topology() -> Topology {
        let e: Executor = serde_norway::from_str(
            "
name: shop
mode: sharding
database: shop
shards: [s0, s1, s2, s3]
sharded_tables:
  - { table: t_split, column: user_id, algorithm: mod, tables: 2 }
  - { table: t_split_item, column: user_id, algorithm: mod, tables: 2, binding: t_split }
broadcast_tables: [t_country]
",
        )
        .unwrap();
        let t = Topology::new(&e).unwrap();
        t.learn_tables(&[
            vec!["t_split_0".into(), "t_split_1".into(), "t_note".into()],
            vec!["t_split_0".into(), "t_split_1".into()],
        ])
        .unwrap();
        t
    }

    fn p(sql: &str) -> Plan {
        let no_params = |_: &Expr| None;
        plan(sql, &topology(), &no_params)
    }

    fn statements(plan: Plan) -> Vec<(usize, String)> {
        match plan {
            Plan::Write(w) => w.statements,
            Plan::Ddl(d) => d.statements,
            Plan::Scatter(s) => s
                .shards
                .iter()
                .map(|i| (i, s.sql_for(i).to_string()))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    fn on(list: &[(usize, &str)]) -> Vec<(usize, String)> {
        list.iter().map(|(s, q)| (*s, q.to_string())).collect()
    }

    #[test]
    fn physical_tables_are_found_as_their_table() {
        let t = topology();
        assert_eq!(t.placement("t_note"), Placement::Single(0));
        assert!(t.split_of("T_SPLIT_1").is_some());
        assert!(t.split_of("t_split_2").is_none() && t.split_of("t_split_01").is_none());
        assert_eq!(t.logical_name("t_split_0"), "t_split");
        let two = t.learn_tables(&[vec!["t_split_2".into()], vec!["t_split_2".into()]]);
        assert!(two.is_err(), "t_split_2 is no physical table of t_split");
    }

    #[test]
    fn reads_name_the_physical_tables_of_their_slots() {
        // 5 mod 8 = slot 5: shard 2, table 1.
        assert_eq!(
            statements(p("SELECT * FROM t_split WHERE user_id = 5")),
            on(&[(2, "SELECT * FROM t_split_1 AS t_split WHERE user_id = 5")])
        );
        // Slots 4 and 5 are both shard 2's.
        assert_eq!(
            statements(p("SELECT id FROM t_split s WHERE s.user_id IN (4, 5)")),
            on(&[(
                2,
                "SELECT id FROM (SELECT * FROM t_split_0 UNION ALL SELECT * FROM t_split_1) s \
                 WHERE s.user_id IN (4, 5)"
            )])
        );
        let all = statements(p(
            "SELECT s.id, i.sku FROM t_split s JOIN t_split_item i ON s.user_id = i.user_id \
             ORDER BY s.id",
        ));
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|(_, q)| q
            .contains("(SELECT * FROM t_split_item_0 UNION ALL SELECT * FROM t_split_item_1) i")));
    }

    #[test]
    fn writes_run_once_per_physical_table() {
        assert_eq!(
            statements(p(
                "INSERT INTO t_split (id, user_id) VALUES (1, 1), (2, 2), (3, 9)"
            )),
            on(&[
                (
                    0,
                    "INSERT INTO t_split_1 (id, user_id) VALUES (1, 1), (3, 9)"
                ),
                (1, "INSERT INTO t_split_0 (id, user_id) VALUES (2, 2)"),
            ])
        );
        assert_eq!(
            statements(p("UPDATE t_split SET t_split.qty = 2 WHERE user_id = 3")),
            on(&[(
                1,
                "UPDATE t_split_1 SET t_split_1.qty = 2 WHERE user_id = 3"
            )])
        );
        assert_eq!(statements(p("DELETE FROM t_split")).len(), 8);
        assert!(matches!(
            p("DELETE FROM t_split WHERE user_id IN (1, 2) LIMIT 1"),
            Plan::Refuse(_)
        ));
        let ddl = statements(p("ALTER TABLE t_split ADD COLUMN note TEXT"));
        assert_eq!(ddl.len(), 8);
        assert_eq!(
            ddl[1],
            (0, "ALTER TABLE t_split_1 ADD COLUMN note TEXT".into())
        );
        assert!(matches!(p("DROP TABLE t_split, t_note"), Plan::Refuse(_)));
        for ddl in [
            "ALTER TABLE t_split RENAME TO t_other",
            "ALTER TABLE t_split ADD CONSTRAINT c_qty CHECK (qty > 0)",
            "ALTER TABLE t_split ADD FOREIGN KEY (user_id) REFERENCES t_user (id)",
        ] {
            assert!(matches!(p(ddl), Plan::Refuse(_)), "{ddl}");
        }
    }

    #[test]
    fn physical_tables_are_not_named_directly() {
        for sql in [
            "INSERT INTO t_split_1 (id, user_id) VALUES (9, 9)",
            "SELECT * FROM t_split_0",
            "DELETE FROM t_split_0",
            "DROP TABLE t_split_1",
            "SHOW CREATE TABLE t_split_1",
        ] {
            match p(sql) {
                Plan::Refuse(why) => assert!(why.contains("t_split"), "{sql}: {why}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn unions_that_would_change_the_answer_are_refused() {
        // One physical table per shard: a locking read locks as the client's would.
        assert!(matches!(
            p("SELECT qty FROM t_split WHERE user_id = 5 FOR UPDATE"),
            Plan::Scatter(_)
        ));
        for sql in [
            "SELECT qty FROM t_split WHERE user_id IN (4, 5) FOR UPDATE",
            "SELECT qty FROM t_split WHERE user_id IN (4, 5) LOCK IN SHARE MODE",
            "SELECT qty FROM t_split FOR UPDATE",
        ] {
            assert!(matches!(p(sql), Plan::Refuse(_)), "{sql}");
        }
        let t = topology();
        let column = |name: &str, data_type: &str| super::super::Column {
            name: name.into(),
            data_type: data_type.into(),
            collation: None,
        };
        t.learn_columns(
            "t_split",
            &[
                column("id", "int"),
                column("user_id", "int"),
                column("size", "enum"),
            ],
        )
        .unwrap();
        let no_params = |_: &Expr| None;
        let sql = "SELECT id FROM t_split WHERE user_id IN (4, 5) ORDER BY size";
        assert!(matches!(plan(sql, &t, &no_params), Plan::Refuse(_)));
        let one = "SELECT id FROM t_split WHERE user_id = 4 ORDER BY size";
        assert!(matches!(plan(one, &t, &no_params), Plan::Scatter(_)));
    }

    #[test]
    fn a_configured_table_named_as_a_physical_one_is_refused() {
        let e: Executor = serde_norway::from_str(
            "
name: shop
mode: sharding
database: shop
shards: [s0, s1]
sharded_tables:
  - { table: t_log, column: id, algorithm: mod, tables: 2 }
broadcast_tables: [t_log_1]
",
        )
        .unwrap();
        let e = Topology::new(&e).unwrap_err();
        assert!(e.message.contains("'t_log_1'"), "{e}");
    }
}
