//! `information_schema` read through the logical database.
//!
//! Each shard's server describes its own database, under its own name, and a single table
//! appears only in its home shard's catalog. So a query of an `information_schema` table
//! that describes tables (TABLES, COLUMNS, STATISTICS, …) runs on the first shard and on
//! every shard that holds single tables, each reading the catalog table through a derived
//! table that keeps the rows of the logical database's tables found there — a sharded or
//! broadcast table's from the first shard only, a single table's from its home — and shows
//! the logical database's name where the shard's own stands. The shards' answers then merge
//! as any scatter read's do ([`super::plan::scatter`]), and `DATABASE()` in the query is the
//! logical database. `SCHEMATA` is the first shard's, with the logical database and
//! `information_schema` in it. Server-wide tables (CHARACTER_SETS, COLLATIONS, …) are the
//! same on every shard: the first one answers. Any other catalog table, a join of catalog
//! tables (its pairs may come from tables on different shards) or one with the logical
//! database's tables is refused.

use std::ops::Range;

use sqlparser::ast::{ObjectNamePart, Query, Select, SetExpr, TableFactor};

use super::plan::{self, Plan, Scatter, Tables};
use super::{CatalogColumn, ShardSet, Topology};
use crate::sql::lex::{self, Token, TokenKind};
use crate::sql::quote;

/// What a catalog table's rows are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Rows about tables: the columns that name a row's database and table.
    Tables {
        schema: &'static str,
        table: &'static str,
    },
    /// `SCHEMATA`: one row per database.
    Schemata,
    /// Rows about the server, the same on every shard.
    Server,
}

fn kind(name: &str) -> Option<Kind> {
    let tables = |schema, table| Kind::Tables { schema, table };
    Some(match name.to_ascii_uppercase().as_str() {
        "TABLES" | "COLUMNS" | "STATISTICS" | "KEY_COLUMN_USAGE" | "TABLE_CONSTRAINTS"
        | "PARTITIONS" | "COLUMN_PRIVILEGES" | "TABLE_PRIVILEGES" => {
            tables("TABLE_SCHEMA", "TABLE_NAME")
        }
        "REFERENTIAL_CONSTRAINTS" | "CHECK_CONSTRAINTS" => {
            tables("CONSTRAINT_SCHEMA", "TABLE_NAME")
        }
        "TRIGGERS" => tables("EVENT_OBJECT_SCHEMA", "EVENT_OBJECT_TABLE"),
        "SCHEMATA" => Kind::Schemata,
        "CHARACTER_SETS"
        | "COLLATIONS"
        | "COLLATION_CHARACTER_SET_APPLICABILITY"
        | "ENGINES"
        | "PLUGINS"
        | "KEYWORDS"
        | "SQL_FUNCTIONS"
        | "GLOBAL_VARIABLES"
        | "SESSION_VARIABLES"
        | "SYSTEM_VARIABLES"
        | "GLOBAL_STATUS"
        | "SESSION_STATUS"
        | "USER_PRIVILEGES"
        | "APPLICABLE_ROLES"
        | "ENABLED_ROLES" => Kind::Server,
        _ => return None,
    })
}

/// The plan of a query of `information_schema` (`tables.catalog` is not empty).
pub(super) fn plan(
    q: &Query,
    sql: &str,
    tokens: &[Token],
    topo: &Topology,
    tables: &Tables,
) -> Plan {
    match catalog_plan(q, sql, tokens, topo, tables) {
        Ok(p) => p,
        Err(why) => Plan::Refuse(why),
    }
}

fn catalog_plan(
    q: &Query,
    sql: &str,
    tokens: &[Token],
    topo: &Topology,
    tables: &Tables,
) -> Result<Plan, String> {
    let [name] = tables.catalog.as_slice() else {
        return Err(
            "a query of several information_schema tables on a sharded database (each shard describes only its own tables)"
                .into(),
        );
    };
    if let Some(other) = tables.refs.first() {
        return Err(format!(
            "a query of information_schema.{name} with the table {}",
            other.name
        ));
    }
    if tables.nested {
        return Err(format!(
            "a subquery, derived table, WITH or UNION with information_schema.{name} on a sharded database"
        ));
    }
    let kind =
        kind(name).ok_or_else(|| format!("information_schema.{name} on a sharded database"))?;
    let (schema, table) = match kind {
        Kind::Server => return Ok(Plan::One(0)),
        Kind::Schemata => ("SCHEMA_NAME", None),
        Kind::Tables { schema, table } => (schema, Some(table)),
    };
    let SetExpr::Select(select) = q.body.as_ref() else {
        return Err(format!(
            "this query of information_schema.{name} on a sharded database"
        ));
    };
    let catalog = topo.catalog();
    let unknown = || {
        format!(
            "information_schema.{name} on a sharded database: Tandem could not read how the shards describe it"
        )
    };
    let columns = catalog
        .tables
        .get(&name.to_ascii_uppercase())
        .filter(|c| !c.is_empty())
        .ok_or_else(unknown)?;
    if catalog.databases.len() != topo.shard_count() {
        return Err(unknown());
    }
    let charset = columns
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(schema))
        .and_then(|c| c.charset.clone());
    let singles = topo.singles_by_shard();
    let mut shards = ShardSet::one(0);
    if table.is_some() {
        for (i, list) in singles.iter().enumerate() {
            if !list.is_empty() {
                shards.insert(i);
            }
        }
    }
    let local = Local {
        name,
        columns,
        schema,
        table,
        charset: charset.as_deref(),
        logical: &topo.database,
        databases: &catalog.databases,
        singles: &singles,
        aliased: aliased(select, name),
        split: topo.split_tables(),
    };
    let mut scatter = match shards.single() {
        Some(only) => Scatter::relay(only, sql.to_string()),
        None => plan::scatter(q, select, sql, tokens, tables, shards)?,
    };
    scatter.per_shard = shards
        .iter()
        .map(|i| local.sql(&scatter.sql, i))
        .collect::<Result<_, _>>()?;
    Ok(Plan::Scatter(Box::new(scatter)))
}

/// Whether the FROM gives catalog table `name` an alias.
fn aliased(select: &Select, name: &str) -> bool {
    select
        .from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
        .any(|f| match f {
            TableFactor::Table { name: n, alias, .. } => {
                alias.is_some()
                    && matches!(n.0.last(), Some(ObjectNamePart::Identifier(i)) if i.value.eq_ignore_ascii_case(name))
            }
            _ => false,
        })
}

/// How one shard reads a catalog table for the logical database.
struct Local<'a> {
    /// The catalog table, as the client wrote it.
    name: &'a str,
    columns: &'a [CatalogColumn],
    /// The column naming a row's database, and the one naming its table.
    schema: &'static str,
    table: Option<&'static str>,
    /// The character set of the schema column.
    charset: Option<&'a str>,
    logical: &'a str,
    /// Each shard's own database.
    databases: &'a [String],
    singles: &'a [Vec<String>],
    /// The client's FROM gives the catalog table an alias.
    aliased: bool,
    /// Split tables (as configured) and their physical tables per shard: the first shard's
    /// `<table>_0` answers for the table, under its name, and the others are not shown.
    split: Vec<(String, usize)>,
}

impl Local<'_> {
    /// `sql` (the statement of every shard) as shard `shard` runs it: the catalog table
    /// read through [`Local::derived`], `DATABASE()` the logical database.
    fn sql(&self, sql: &str, shard: usize) -> Result<String, String> {
        let tokens = lex::tokenize(sql.as_bytes()).map_err(|e| e.to_string())?;
        let b = sql.as_bytes();
        let is = |i: usize, w: &str| tokens.get(i).is_some_and(|t| ident(sql, t, w));
        let punct = |i: usize, p: u8| tokens.get(i).is_some_and(|t| t.is_punct(p));
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        let mut reads = 0;
        let mut i = 0;
        while i < tokens.len() {
            let t = &tokens[i];
            if is(i, "information_schema") && punct(i + 1, b'.') && is(i + 2, self.name) {
                if punct(i + 3, b'.') {
                    return Err(format!(
                        "a column named with information_schema.{}: name it by its table alone",
                        self.name
                    ));
                }
                let mut derived = self.derived(shard);
                if !self.aliased {
                    derived.push_str(" AS ");
                    derived.push_str(&sql[tokens[i + 2].span.clone()]);
                }
                edits.push((t.span.start..tokens[i + 2].span.end, derived));
                reads += 1;
                i += 3;
                continue;
            }
            let function = t.is_word(b, "DATABASE") || t.is_word(b, "SCHEMA");
            if function
                && punct(i + 1, b'(')
                && punct(i + 2, b')')
                && !(i > 0 && punct(i - 1, b'.'))
            {
                edits.push((
                    t.span.start..tokens[i + 2].span.end,
                    literal(self.logical, self.charset),
                ));
                i += 3;
                continue;
            }
            i += 1;
        }
        if reads != 1 {
            return Err(format!(
                "this query of information_schema.{} on a sharded database",
                self.name
            ));
        }
        let mut out = String::with_capacity(sql.len() + 256);
        let mut at = 0;
        for (r, replacement) in &edits {
            out.push_str(&sql[at..r.start]);
            out.push_str(replacement);
            at = r.end;
        }
        out.push_str(&sql[at..]);
        Ok(out)
    }

    /// The catalog table's rows that describe the logical database on shard `shard`, with
    /// its name in every column that names a database; on the first shard,
    /// `information_schema`'s own rows too.
    fn derived(&self, shard: usize) -> String {
        let own = &self.databases[shard];
        let table = format!(
            "information_schema.{}",
            quote::ident(&self.name.to_ascii_uppercase())
        );
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let col = quote::ident(&c.name);
                let upper = c.name.to_ascii_uppercase();
                let table_column = self.table.is_some_and(|t| t.eq_ignore_ascii_case(&c.name));
                if table_column && !self.split.is_empty() && shard == 0 {
                    let arms: Vec<String> = self
                        .split
                        .iter()
                        .map(|(name, _)| {
                            format!(
                                "WHEN {col} = {} THEN {}",
                                literal(&format!("{name}_0"), c.charset.as_deref()),
                                literal(name, c.charset.as_deref())
                            )
                        })
                        .collect();
                    format!("CASE {} ELSE {col} END AS {col}", arms.join(" "))
                } else if upper.ends_with("_SCHEMA") || upper == "SCHEMA_NAME" {
                    format!(
                        "IF(BINARY {col} = {}, {}, {col}) AS {col}",
                        quote::hex(own.as_bytes()),
                        literal(self.logical, c.charset.as_deref())
                    )
                } else {
                    col
                }
            })
            .collect();
        let columns = columns.join(", ");
        let schema = quote::ident(self.schema);
        let mut out = format!(
            "(SELECT {columns} FROM {table} WHERE {schema} = {}",
            literal(own, self.charset)
        );
        if let Some(t) = self.table {
            let names = |list: Vec<&String>| {
                list.iter()
                    .map(|n| literal(n, self.charset))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let t = quote::ident(t);
            if shard == 0 {
                // Tandem's undo log is not the logical database's.
                let others: Vec<String> = self
                    .split
                    .iter()
                    .flat_map(|(name, n)| {
                        (1..*n).map(move |k| format!("{}_{k}", name.to_lowercase()))
                    })
                    .chain(std::iter::once(crate::at::undo::UNDO_TABLE.to_string()))
                    .collect();
                let elsewhere: Vec<&String> = self.singles[1..]
                    .iter()
                    .flatten()
                    .chain(others.iter())
                    .collect();
                if !elsewhere.is_empty() {
                    out.push_str(&format!(" AND LOWER({t}) NOT IN ({})", names(elsewhere)));
                }
            } else {
                let here: Vec<&String> = self.singles[shard].iter().collect();
                out.push_str(&format!(" AND LOWER({t}) IN ({})", names(here)));
            }
        }
        if shard == 0 {
            out.push_str(&format!(
                " UNION ALL SELECT {columns} FROM {table} WHERE {schema} = {}",
                literal("information_schema", self.charset)
            ));
        }
        out.push(')');
        out
    }
}

/// Whether token `t` is the identifier `name` (bare or in backticks, ASCII case-insensitive).
fn ident(sql: &str, t: &Token, name: &str) -> bool {
    let text = &sql[t.span.clone()];
    match t.kind {
        TokenKind::Word => text.eq_ignore_ascii_case(name),
        TokenKind::QuotedIdent => text
            .trim_matches('`')
            .replace("``", "`")
            .eq_ignore_ascii_case(name),
        _ => false,
    }
}

/// `text` as a string literal of `charset` (coercible: it takes the collation of what it is
/// compared with).
fn literal(text: &str, charset: Option<&str>) -> String {
    match charset.map(quote::bare_name).filter(|c| !c.is_empty()) {
        Some(cs) => format!("_{cs} {}", quote::hex(text.as_bytes())),
        None => quote::hex(text.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Catalog, Topology};
    use super::*;
    use sqlparser::ast::Expr;
    use std::collections::HashMap;

    fn topology() -> Topology {
        let e = serde_norway::from_str(
            "
name: shop
mode: sharding
database: shop
shards: [s0, s1, s2]
sharded_tables:
  - { table: t_order, column: user_id, algorithm: mod }
",
        )
        .unwrap();
        let t = Topology::new(&e).unwrap();
        t.learn_tables(&[vec!["t_a".into()], vec![], vec!["t_b".into(), "t_c".into()]])
            .unwrap();
        let column = |name: &str, charset: Option<&str>| CatalogColumn {
            name: name.into(),
            charset: charset.map(str::to_string),
        };
        let mut tables = HashMap::new();
        tables.insert(
            "TABLES".to_string(),
            vec![
                column("TABLE_SCHEMA", Some("utf8mb3")),
                column("TABLE_NAME", Some("utf8mb3")),
                column("TABLE_ROWS", None),
            ],
        );
        t.learn_catalog(Catalog {
            databases: vec!["p0".into(), "p1".into(), "p2".into()],
            tables,
        });
        t
    }

    fn p(sql: &str) -> Plan {
        let no_params = |_: &Expr| None;
        plan::plan(sql, &topology(), &no_params)
    }

    #[test]
    fn a_catalog_table_is_read_on_the_shards_that_hold_tables() {
        let Plan::Scatter(s) =
            p("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")
        else {
            panic!("a scatter");
        };
        assert_eq!(s.shards.iter().collect::<Vec<_>>(), [0, 2]);
        let shop = "_utf8mb3 X'73686F70'";
        let columns = format!(
            "IF(BINARY `TABLE_SCHEMA` = X'{{own}}', {shop}, `TABLE_SCHEMA`) AS `TABLE_SCHEMA`, `TABLE_NAME`, `TABLE_ROWS`"
        );
        let first = columns.replace("{own}", "7030");
        assert_eq!(
            s.sql_for(0),
            format!(
                "SELECT TABLE_NAME FROM (SELECT {first} FROM information_schema.`TABLES` \
                 WHERE `TABLE_SCHEMA` = _utf8mb3 X'7030' AND LOWER(`TABLE_NAME`) NOT IN \
                 (_utf8mb3 X'745F62', _utf8mb3 X'745F63', _utf8mb3 X'756E646F5F6C6F67') UNION ALL SELECT {first} FROM \
                 information_schema.`TABLES` WHERE `TABLE_SCHEMA` = \
                 _utf8mb3 X'696E666F726D6174696F6E5F736368656D61') AS TABLES \
                 WHERE TABLE_SCHEMA = {shop}"
            )
        );
        let third = columns.replace("{own}", "7032");
        assert_eq!(
            s.sql_for(2),
            format!(
                "SELECT TABLE_NAME FROM (SELECT {third} FROM information_schema.`TABLES` \
                 WHERE `TABLE_SCHEMA` = _utf8mb3 X'7032' AND LOWER(`TABLE_NAME`) IN \
                 (_utf8mb3 X'745F62', _utf8mb3 X'745F63')) AS TABLES WHERE TABLE_SCHEMA = {shop}"
            )
        );
    }

    #[test]
    fn what_the_catalog_cannot_answer_is_refused() {
        assert_eq!(
            p("SELECT * FROM information_schema.COLLATIONS"),
            Plan::One(0)
        );
        for (sql, why) in [
            (
                "SELECT * FROM information_schema.VIEWS",
                "information_schema.VIEWS",
            ),
            ("SELECT * FROM information_schema.COLUMNS", "could not read"),
            (
                "SELECT * FROM information_schema.TABLES, information_schema.TABLES x",
                "several",
            ),
            (
                "SELECT * FROM information_schema.TABLES JOIN t_order",
                "with the table t_order",
            ),
            (
                "DELETE FROM information_schema.TABLES",
                "other than a query",
            ),
        ] {
            match p(sql) {
                Plan::Refuse(r) => assert!(r.contains(why), "{sql}: {r}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }
}
