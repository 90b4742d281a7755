//! Statements about the logical database itself: `SHOW DATABASES`, `SHOW TABLES`,
//! `SELECT DATABASE()`, the per-table `SHOW`s and `DESCRIBE`, and `EXPLAIN`.
//!
//! The shards' databases have names of their own, and a single table lives on one shard
//! only, so these cannot simply go to some shard: Tandem answers the first three itself
//! ([`Answer`]), sends a per-table `SHOW` to a shard that has the table, and answers
//! `EXPLAIN` with the plan: which shards run what, and how their answers merge.

use super::plan::{self, Affected, Plan};
use super::{Placement, Topology};
use crate::sql::lex::{Token, TokenKind};

/// What Tandem answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `SHOW DATABASES`: `information_schema` and the logical database, filtered by LIKE.
    Databases { like: Option<String> },
    /// `SHOW [FULL] TABLES`: the tables of every shard, each once.
    Tables { full: bool, like: Option<String> },
    /// `SELECT DATABASE()` (or `SCHEMA()`): the logical database.
    Database,
    /// `EXPLAIN`: one row per statement a shard runs: the shard, the statement, and what
    /// Tandem does with the answers.
    Explain(Vec<[String; 3]>),
    /// `SHOW CREATE TABLE` or `SHOW INDEX` of a split table: `sql`, the statement about
    /// its first physical table `physical`, run on the first shard, whose answer Tandem
    /// gives under the table's name `table`.
    Renamed {
        sql: String,
        table: String,
        physical: String,
    },
}

/// The plan of a statement about the logical database, or `None` for any other.
pub fn plan_show(sql: &str, tokens: &[Token], topo: &Topology) -> Option<Plan> {
    let tokens = match tokens.last() {
        Some(t) if t.is_punct(b';') => &tokens[..tokens.len() - 1],
        _ => tokens,
    };
    let b = sql.as_bytes();
    let word = |i: usize, w: &str| tokens.get(i).is_some_and(|t| t.is_word(b, w));
    let name = |i: usize| -> Option<String> {
        let t = tokens.get(i)?;
        let text = &sql[t.span.clone()];
        match t.kind {
            TokenKind::Word => Some(text.to_string()),
            TokenKind::QuotedIdent => Some(text.trim_matches('`').replace("``", "`")),
            _ => None,
        }
    };
    // `LIKE 'pattern'` at `i`, the statement's end after it.
    let like_at = |i: usize| -> Result<Option<String>, Plan> {
        match tokens.get(i) {
            None => Ok(None),
            Some(_) if word(i, "LIKE") => match tokens.get(i + 1) {
                Some(t) if t.kind == TokenKind::String && tokens.len() == i + 2 => {
                    let s = &sql[t.span.clone()];
                    Ok(Some(s[1..s.len() - 1].replace("''", "'")))
                }
                _ => Err(refuse("this form of SHOW … LIKE")),
            },
            Some(_) => Err(refuse("SHOW … WHERE and other forms of SHOW")),
        }
    };
    if word(0, "SHOW") {
        if word(1, "DATABASES") || word(1, "SCHEMAS") {
            return Some(match like_at(2) {
                Ok(like) => Plan::Answer(Answer::Databases { like }),
                Err(p) => p,
            });
        }
        let full = word(1, "FULL");
        let at = 1 + usize::from(full);
        if word(at, "TABLES") {
            let mut i = at + 1;
            if word(i, "FROM") || word(i, "IN") {
                match name(i + 1) {
                    Some(db) if db.eq_ignore_ascii_case(&topo.database) => i += 2,
                    Some(db) => return Some(unknown_database(&db)),
                    None => return Some(refuse("this form of SHOW TABLES")),
                }
            }
            return Some(match like_at(i) {
                Ok(like) => Plan::Answer(Answer::Tables { full, like }),
                Err(p) => p,
            });
        }
        if word(1, "TABLE") && word(2, "STATUS") {
            let mut i = 3;
            if word(i, "FROM") || word(i, "IN") {
                match name(i + 1) {
                    Some(db) if db.eq_ignore_ascii_case(&topo.database) => i += 2,
                    Some(db) => return Some(unknown_database(&db)),
                    None => return Some(refuse("this form of SHOW TABLE STATUS")),
                }
            }
            return Some(match like_at(i) {
                Ok(like) => table_status(like.as_deref(), topo),
                Err(p) => p,
            });
        }
        // SHOW [FULL] COLUMNS|FIELDS FROM t, SHOW INDEX|INDEXES|KEYS FROM t, SHOW CREATE TABLE t.
        let table_at = if ["COLUMNS", "FIELDS", "INDEX", "INDEXES", "KEYS"]
            .iter()
            .any(|w| word(at, w))
            && (word(at + 1, "FROM") || word(at + 1, "IN"))
        {
            Some(at + 2)
        } else if word(1, "CREATE") && word(2, "TABLE") {
            Some(3)
        } else {
            None
        };
        if let Some(p) = table_at.and_then(|i| renamed_split(tokens, i, sql, topo)) {
            return Some(p);
        }
        return table_at.map(|i| table_home(tokens, i, sql, topo));
    }
    if word(0, "DESCRIBE") || word(0, "DESC") || word(0, "EXPLAIN") {
        let statement = ["SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH"]
            .iter()
            .any(|w| word(1, w))
            || tokens.get(1).is_some_and(|t| t.is_punct(b'('));
        if statement {
            let rest = &sql[tokens[1].span.start..];
            return Some(explain(rest, topo));
        }
        if tokens
            .get(1)
            .is_some_and(|t| matches!(t.kind, TokenKind::Word | TokenKind::QuotedIdent))
        {
            if ["EXTENDED", "PARTITIONS", "FORMAT", "ANALYZE"]
                .iter()
                .any(|w| word(1, w))
            {
                return Some(refuse("EXPLAIN EXTENDED, PARTITIONS, FORMAT and ANALYZE"));
            }
            return Some(table_home(tokens, 1, sql, topo));
        }
        return None;
    }
    if word(0, "SELECT")
        && (word(1, "DATABASE") || word(1, "SCHEMA"))
        && tokens.get(2).is_some_and(|t| t.is_punct(b'('))
        && tokens.get(3).is_some_and(|t| t.is_punct(b')'))
        && tokens.len() == 4
    {
        return Some(Plan::Answer(Answer::Database));
    }
    None
}

fn refuse(what: &str) -> Plan {
    Plan::Refuse(format!("{what} on a sharded database"))
}

fn unknown_database(db: &str) -> Plan {
    Plan::Refuse(format!(
        "the database '{db}', which this sharded executor does not have"
    ))
}

/// A statement about the table named at token `i`: on a shard that has the table (the
/// database qualifier, if any, must be the logical database's, and is refused: the shard's
/// database has another name).
fn table_home(tokens: &[Token], i: usize, sql: &str, topo: &Topology) -> Plan {
    let Some(t) = tokens.get(i) else {
        return refuse("this form of SHOW");
    };
    let b = sql.as_bytes();
    if tokens.get(i + 1).is_some_and(|t| t.is_punct(b'.'))
        || tokens
            .get(i + 1)
            .is_some_and(|t| t.is_word(b, "FROM") || t.is_word(b, "IN"))
    {
        return refuse("a table named with its database");
    }
    let name = sql[t.span.clone()].trim_matches('`').to_string();
    if let Some(rule) = topo.split_of(&name) {
        return refuse(&format!(
            "the physical table {name} of the split table {}: name {} instead",
            rule.name, rule.name
        ));
    }
    match topo.placement(&name) {
        Placement::Sharded(rule) if rule.split() => {
            // The first physical table answers for the table (`SHOW CREATE TABLE` and
            // `SHOW INDEX` then show its name).
            let physical = super::split::quoted(&sql[t.span.clone()], 0);
            let text = format!("{}{physical}{}", &sql[..t.span.start], &sql[t.span.end..]);
            Plan::Scatter(Box::new(plan::Scatter::relay(0, text)))
        }
        Placement::Sharded(_) | Placement::Broadcast => Plan::One(0),
        Placement::Single(s) => Plan::One(s),
        Placement::Unknown => Plan::One(0),
    }
}

/// `SHOW TABLE STATUS [LIKE 'pattern']`: the logical database's tables as
/// `information_schema.TABLES` describes them for it (see [`super::catalog`]), under the
/// columns SHOW TABLE STATUS gives them.
fn table_status(like: Option<&str>, topo: &Topology) -> Plan {
    const COLUMNS: [(&str, &str); 20] = [
        ("TABLE_NAME", "Name"),
        ("ENGINE", "Engine"),
        ("VERSION", "Version"),
        ("ROW_FORMAT", "Row_format"),
        ("TABLE_ROWS", "Rows"),
        ("AVG_ROW_LENGTH", "Avg_row_length"),
        ("DATA_LENGTH", "Data_length"),
        ("MAX_DATA_LENGTH", "Max_data_length"),
        ("INDEX_LENGTH", "Index_length"),
        ("DATA_FREE", "Data_free"),
        ("AUTO_INCREMENT", "Auto_increment"),
        ("CREATE_TIME", "Create_time"),
        ("UPDATE_TIME", "Update_time"),
        ("CHECK_TIME", "Check_time"),
        ("TABLE_COLLATION", "Collation"),
        ("CHECKSUM", "Checksum"),
        ("CREATE_OPTIONS", "Create_options"),
        ("TABLE_COMMENT", "Comment"),
        ("MAX_INDEX_LENGTH", "Max_index_length"),
        ("TEMPORARY", "Temporary"),
    ];
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|(c, alias)| format!("{c} AS {}", crate::sql::quote::ident(alias)))
        .collect();
    let mut sql = format!(
        "SELECT {} FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
        columns.join(", ")
    );
    if let Some(p) = like {
        sql.push_str(&format!(
            " AND TABLE_NAME LIKE _utf8mb3 {}",
            crate::sql::quote::hex(p.as_bytes())
        ));
    }
    sql.push_str(" ORDER BY TABLE_NAME");
    let no_params = |_: &sqlparser::ast::Expr| None;
    plan::plan(&sql, topo, &no_params)
}

/// `SHOW CREATE TABLE t` or `SHOW INDEX FROM t` of a split table `t`, the table named
/// last at token `i`: answered under its name (`SHOW COLUMNS` names no table in its answer,
/// and is relayed).
fn renamed_split(tokens: &[Token], i: usize, sql: &str, topo: &Topology) -> Option<Plan> {
    let b = sql.as_bytes();
    let shows_name = tokens.get(1).is_some_and(|t| {
        ["CREATE", "INDEX", "INDEXES", "KEYS"]
            .iter()
            .any(|w| t.is_word(b, w))
    });
    let t = tokens.get(i)?;
    if !shows_name || tokens.len() != i + 1 {
        return None;
    }
    let name = sql[t.span.clone()].trim_matches('`');
    match topo.placement(name) {
        Placement::Sharded(rule) if rule.split() => {
            let physical = format!("{}_0", rule.name);
            let text = format!(
                "{}{}",
                &sql[..t.span.start],
                crate::sql::quote::ident(&physical)
            );
            Some(Plan::Answer(Answer::Renamed {
                sql: text,
                table: rule.name.clone(),
                physical,
            }))
        }
        _ => None,
    }
}

/// `EXPLAIN` of `statement`: its plan as rows.
fn explain(statement: &str, topo: &Topology) -> Plan {
    let no_params = |_: &sqlparser::ast::Expr| None;
    let name = |s: usize| topo.shards.get(s).cloned().unwrap_or_default();
    let rows = match plan::plan(statement, topo, &no_params) {
        Plan::Any => vec![[
            "(the session's last)".to_string(),
            statement.to_string(),
            "relay".to_string(),
        ]],
        Plan::One(s) => vec![[name(s), statement.to_string(), "relay".to_string()]],
        Plan::Ddl(d) if !d.statements.is_empty() => d
            .statements
            .iter()
            .map(|(s, sql)| {
                [
                    name(*s),
                    sql.clone(),
                    "ddl, one physical table after another".to_string(),
                ]
            })
            .collect(),
        Plan::Ddl(d) => d
            .shards
            .iter()
            .map(|s| {
                [
                    name(s),
                    statement.to_string(),
                    "ddl, one shard after another".to_string(),
                ]
            })
            .collect(),
        Plan::Scatter(s) => {
            let merge = s.describe();
            s.shards
                .iter()
                .map(|i| [name(i), s.sql_for(i).to_string(), merge.clone()])
                .collect()
        }
        Plan::Write(w) => {
            let how = match w.affected {
                Affected::Sum => "write, distributed commit, affected rows summed",
                Affected::First => "write, distributed commit, affected rows of one copy",
            };
            w.statements
                .iter()
                .map(|(s, sql)| [name(*s), sql.clone(), how.to_string()])
                .collect()
        }
        Plan::Open => vec![[
            "(every shard the session has open)".to_string(),
            statement.to_string(),
            "relay the last shard's answer".to_string(),
        ]],
        Plan::Answer(_) => vec![[
            "(Tandem)".to_string(),
            statement.to_string(),
            "answered by Tandem".to_string(),
        ]],
        refused @ Plan::Refuse(_) => return refused,
    };
    Plan::Answer(Answer::Explain(rows))
}

/// SQL `LIKE` with `%`, `_` and `\` escapes, ASCII case-insensitive (as the default
/// collation compares names).
pub fn like(pattern: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'%', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some((b'_', rest)) => !s.is_empty() && go(rest, &s[1..]),
            Some((b'\\', rest)) if !rest.is_empty() => {
                !s.is_empty() && rest[0].eq_ignore_ascii_case(&s[0]) && go(&rest[1..], &s[1..])
            }
            Some((c, rest)) => !s.is_empty() && c.eq_ignore_ascii_case(&s[0]) && go(rest, &s[1..]),
        }
    }
    go(pattern.as_bytes(), s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_matches_as_sql_does() {
        assert!(like("t%", "T_ORDER"));
        assert!(like("t\\_o%", "t_order"));
        assert!(!like("t\\_o%", "txorder"));
        assert!(like("_", "a"));
        assert!(!like("a", "ab"));
        assert!(like("%", ""));
    }
}
