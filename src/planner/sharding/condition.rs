//! The shards a WHERE clause can touch, read from its conditions on the sharding column.
//!
//! `=`, `<=>`, `IN`, `BETWEEN` and the comparisons narrow the set; `AND` intersects, `OR`
//! unites; anything else (a function of the column, `NOT`, a subquery, a value Tandem
//! cannot read) leaves every shard in. The result may hold shards no row matches, never
//! miss one that does: the database still evaluates the whole WHERE on each shard.

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};

use super::algorithm::{Key, Sharder};
use super::ShardSet;

/// The sharding column as a statement may name it.
#[derive(Debug, Clone)]
pub struct KeyColumn<'a> {
    /// Names that qualify it: the table's name and its alias, lower case.
    pub qualifiers: &'a [String],
    /// The column, lower case.
    pub column: &'a str,
    /// An unqualified name means it (the statement has one table).
    pub bare: bool,
}

impl KeyColumn<'_> {
    fn is(&self, e: &Expr) -> bool {
        match e {
            Expr::Identifier(id) => self.bare && id.value.eq_ignore_ascii_case(self.column),
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                self.qualifiers
                    .iter()
                    .any(|q| q.eq_ignore_ascii_case(&parts[0].value))
                    && parts[1].value.eq_ignore_ascii_case(self.column)
            }
            Expr::Nested(inner) => self.is(inner),
            _ => false,
        }
    }
}

/// The value of a parameter marker (`?`, by its place among the statement's markers).
pub type Params<'p> = &'p dyn Fn(&Expr) -> Option<Key>;

/// The shards `filter` can touch.
pub fn shards(filter: &Expr, col: &KeyColumn, sharder: &Sharder, params: Params) -> ShardSet {
    let all = ShardSet::all(sharder.shards());
    let key = |e: &Expr| literal(e).or_else(|| params(e));
    let point = |e: &Expr| key(e).and_then(|k| sharder.shard_of(&k)).map(ShardSet::one);
    match filter {
        Expr::Nested(inner) => shards(inner, col, sharder, params),
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And => {
                shards(left, col, sharder, params).intersect(shards(right, col, sharder, params))
            }
            BinaryOperator::Or => {
                shards(left, col, sharder, params).union(shards(right, col, sharder, params))
            }
            BinaryOperator::Eq | BinaryOperator::Spaceship => {
                let value = if col.is(left) {
                    right
                } else if col.is(right) {
                    left
                } else {
                    return all;
                };
                point(value).unwrap_or(all)
            }
            BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq => {
                // Put the column on the left: `5 < c` is `c > 5`.
                let (value, below) = if col.is(left) {
                    (
                        right,
                        matches!(op, BinaryOperator::Lt | BinaryOperator::LtEq),
                    )
                } else if col.is(right) {
                    (
                        left,
                        matches!(op, BinaryOperator::Gt | BinaryOperator::GtEq),
                    )
                } else {
                    return all;
                };
                let Some(k) = key(value) else { return all };
                if below {
                    sharder.shards_between(None, Some(&k))
                } else {
                    sharder.shards_between(Some(&k), None)
                }
            }
            _ => all,
        },
        Expr::Between {
            expr,
            negated: false,
            low,
            high,
        } if col.is(expr) => match (key(low), key(high)) {
            (Some(lo), Some(hi)) => sharder.shards_between(Some(&lo), Some(&hi)),
            _ => all,
        },
        Expr::InList {
            expr,
            list,
            negated: false,
        } if col.is(expr) => {
            let mut set = ShardSet::EMPTY;
            for v in list {
                match point(v) {
                    Some(s) => set = set.union(s),
                    None => return all,
                }
            }
            set
        }
        _ => all,
    }
}

/// A constant the statement spells out: a number or a string.
pub fn literal(e: &Expr) -> Option<Key> {
    match e {
        Expr::Nested(inner) => literal(inner),
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => number(n, false),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                Some(Key::Text(s.as_bytes().to_vec()))
            }
            _ => None,
        },
        // A string with its character set, as a prepared statement's parameter is filled
        // in (`_utf8mb4 X'616263'`): its bytes, in a character set whose bytes are the ones
        // a column of the session's character set holds.
        Expr::Prefixed { prefix, value }
            if ["_utf8mb4", "_utf8mb3", "_utf8", "_binary"]
                .iter()
                .any(|c| prefix.value.eq_ignore_ascii_case(c)) =>
        {
            match value.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::HexStringLiteral(h) => crate::sql::quote::unhex(h).map(Key::Text),
                    Value::SingleQuotedString(s) => Some(Key::Text(s.as_bytes().to_vec())),
                    _ => None,
                },
                _ => None,
            }
        }
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => number(n, true),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// A number literal that is an integer: digits, or digits with a fraction of zeros
/// (`5.00` equals 5). Others (`5.5`, `5e0`) are not read.
fn number(n: &str, negative: bool) -> Option<Key> {
    let (int, frac) = n.split_once('.').unwrap_or((n, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b == b'0')
    {
        return None;
    }
    let v: i128 = int.parse().ok()?;
    Some(Key::Int(if negative { -v } else { v }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ShardAlgorithm, ShardedTable};
    use sqlparser::dialect::MySqlDialect;
    use sqlparser::parser::Parser;

    fn sharder(algorithm: ShardAlgorithm, boundaries: Vec<i64>) -> Sharder {
        let t = ShardedTable {
            table: "t".into(),
            column: "k".into(),
            algorithm,
            boundaries,
            unit: None,
            start: None,
            binding: None,
            key_generator: None,
            tables: None,
        };
        Sharder::new(&t, 4).unwrap()
    }

    fn route(where_sql: &str, s: &Sharder) -> Vec<usize> {
        let expr = Parser::new(&MySqlDialect {})
            .try_with_sql(where_sql)
            .unwrap()
            .parse_expr()
            .unwrap();
        let qualifiers = ["t".to_string(), "x".to_string()];
        let col = KeyColumn {
            qualifiers: &qualifiers,
            column: "k",
            bare: true,
        };
        let no_params = |_: &Expr| None;
        shards(&expr, &col, s, &no_params).iter().collect()
    }

    #[test]
    fn equalities_and_lists_narrow_mod() {
        let s = sharder(ShardAlgorithm::Mod, vec![]);
        assert_eq!(route("k = 5", &s), vec![1]);
        assert_eq!(route("5 = x.k", &s), vec![1]);
        assert_eq!(route("(K) = '6'", &s), vec![2]);
        assert_eq!(route("k = -1", &s), vec![3]);
        assert_eq!(route("k = 5.00", &s), vec![1]);
        assert_eq!(route("k = 5.5", &s), vec![0, 1, 2, 3]);
        assert_eq!(route("k IN (1, 5, 2)", &s), vec![1, 2]);
        assert_eq!(route("k IN (1, k2)", &s), vec![0, 1, 2, 3]);
        assert_eq!(route("k NOT IN (1)", &s), vec![0, 1, 2, 3]);
        assert_eq!(route("k = 1 AND name = 'x'", &s), vec![1]);
        assert_eq!(route("k = 1 OR k = 2", &s), vec![1, 2]);
        assert_eq!(route("k = 1 OR name = 'x'", &s), vec![0, 1, 2, 3]);
        assert_eq!(route("(k = 1 OR k = 2) AND k IN (2, 3)", &s), vec![2]);
        assert_eq!(route("k = 1 AND k = 2", &s), Vec::<usize>::new());
        assert_eq!(route("other.k = 1", &s), vec![0, 1, 2, 3]);
        assert_eq!(route("k + 0 = 1", &s), vec![0, 1, 2, 3]);
        assert_eq!(route("NOT (k = 1)", &s), vec![0, 1, 2, 3]);
        assert_eq!(route("k BETWEEN 5 AND 6", &s), vec![1, 2]);
        assert_eq!(route("k NOT BETWEEN 5 AND 6", &s), vec![0, 1, 2, 3]);
        assert_eq!(route("k > 5", &s), vec![0, 1, 2, 3]);
    }

    #[test]
    fn comparisons_narrow_range() {
        let s = sharder(ShardAlgorithm::Range, vec![100, 200, 300]);
        assert_eq!(route("k < 150", &s), vec![0, 1]);
        assert_eq!(route("150 < k", &s), vec![1, 2, 3]);
        assert_eq!(route("k >= 200 AND k < 250", &s), vec![2]);
        assert_eq!(route("k BETWEEN 99 AND 100", &s), vec![0, 1]);
        assert_eq!(route("k < 50 OR k > 350", &s), vec![0, 3]);
    }
}
