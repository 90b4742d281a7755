//! HAVING and ORDER BY over groups that span shards.
//!
//! When a GROUP BY (or a DISTINCT) leaves the sharding column out, a group's rows come
//! from several shards and only Tandem sees the whole group: its combined row. A HAVING
//! is then Tandem's to evaluate, and an ORDER BY other than the groups' own order is
//! Tandem's to sort by. Both read columns of the combined row: the select list's, or
//! values Tandem asks every shard for and combines alongside ([`Scatter::extra`]), such
//! as a `COUNT(*)` that only the HAVING names.
//!
//! The shards' text is edited as elsewhere in the planner: the HAVING is cut out, an
//! added aggregate is the client's own source text of it (found by re-parsing candidate
//! spans and comparing them with the parsed expression), never text printed from the tree.
//!
//! [`Scatter::extra`]: super::plan::Scatter::extra

use sqlparser::ast::{BinaryOperator, Expr, Select, UnaryOperator, Value};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use super::plan::{
    aggregate_of, has_aggregate, order_column, Aggregate, Col, CompareOp, Item, Operand, Predicate,
    SortKey, Tables,
};
use crate::sql::lex::{self, TokenKind};

/// Columns Tandem adds at the end of every shard's select list.
#[derive(Debug, Default)]
pub(super) struct Added {
    pub(super) hidden: Vec<String>,
}

impl Added {
    /// Adds `expr` (source text) to the shards' select list: its column of a shard row.
    pub(super) fn hide(&mut self, expr: String) -> Col {
        if let Some(k) = self.hidden.iter().position(|h| *h == expr) {
            return Col::Hidden(k);
        }
        self.hidden.push(expr);
        Col::Hidden(self.hidden.len() - 1)
    }
}

/// What the columns of a combined row are, and the values added to it.
pub(super) struct Combined<'a> {
    pub(super) select: &'a Select,
    pub(super) items: &'a [Item],
    pub(super) group_by: &'a [Expr],
    /// The groups' keys (shard-row columns), one per GROUP BY column, or per selected
    /// column for a DISTINCT.
    pub(super) group: &'a [SortKey],
    /// How each selected column combines.
    pub(super) aggregates: &'a [Aggregate],
    pub(super) tables: &'a Tables,
    pub(super) extra: &'a mut Vec<(Col, Aggregate)>,
    pub(super) added: &'a mut Added,
}

impl Combined<'_> {
    /// A value of the combined row computed from shard-row column `source`.
    fn extra(&mut self, source: Col, a: Aggregate) -> Col {
        let k = match self.extra.iter().position(|x| *x == (source, a)) {
            Some(k) => k,
            None => {
                self.extra.push((source, a));
                self.extra.len() - 1
            }
        };
        Col::Hidden(k)
    }

    /// The combined row's column holding `e`, with its collation weight when it is a
    /// GROUP BY column: a selected column (by alias, by position when `positions`, or as
    /// the same expression), a GROUP BY column, or an aggregate whose source is in
    /// `region` (the clause's text).
    pub(super) fn column(
        &mut self,
        e: &Expr,
        region: &str,
        positions: bool,
    ) -> Result<(Col, Option<Col>), String> {
        let by_position = matches!(e, Expr::Value(v) if matches!(v.value, Value::Number(..)));
        if positions || !by_position {
            if let Some((i, _)) = order_column(e, self.select, self.items) {
                let weight = match self.aggregates.get(i) {
                    Some(Aggregate::Group) => self
                        .group
                        .iter()
                        .find(|g| g.value == Col::Visible(i))
                        .map(|g| g.weight),
                    _ => None,
                };
                let weight = weight.map(|w| self.extra(w, Aggregate::Group));
                return Ok((Col::Visible(i), weight));
            }
        }
        if let Some(k) = self.group_by.iter().position(|g| g == e) {
            if let Some(key) = self.group.get(k).copied() {
                let value = self.extra(key.value, Aggregate::Group);
                let weight = self.extra(key.weight, Aggregate::Group);
                return Ok((value, Some(weight)));
            }
        }
        if matches!(e, Expr::Function(_)) && has_aggregate(e) {
            let source = source_of(region, e)
                .ok_or_else(|| format!("{e} across shards (Tandem cannot find its text)"))?;
            let added = &mut *self.added;
            let value = added.hide(source.clone());
            let a = aggregate_of(e, &source, self.tables, &mut |x| added.hide(x))?;
            return Ok((self.extra(value, a), None));
        }
        Err(format!(
            "{e} over groups that span shards (only selected columns, GROUP BY columns and aggregates combine)"
        ))
    }

    /// HAVING `e` as a [`Predicate`]: comparisons of columns and numbers, IS [NOT] NULL,
    /// BETWEEN and IN, joined by AND, OR and NOT.
    pub(super) fn predicate(&mut self, e: &Expr, region: &str) -> Result<Predicate, String> {
        let unsupported = || {
            format!("HAVING {e} across shards (only comparisons with numbers, IS NULL, BETWEEN and IN, joined by AND, OR and NOT)")
        };
        Ok(match e {
            Expr::Nested(inner) => self.predicate(inner, region)?,
            Expr::BinaryOp { left, op, right } => {
                let op = match op {
                    BinaryOperator::And => {
                        return Ok(Predicate::And(
                            Box::new(self.predicate(left, region)?),
                            Box::new(self.predicate(right, region)?),
                        ))
                    }
                    BinaryOperator::Or => {
                        return Ok(Predicate::Or(
                            Box::new(self.predicate(left, region)?),
                            Box::new(self.predicate(right, region)?),
                        ))
                    }
                    BinaryOperator::Eq => CompareOp::Eq,
                    BinaryOperator::NotEq => CompareOp::NotEq,
                    BinaryOperator::Lt => CompareOp::Lt,
                    BinaryOperator::LtEq => CompareOp::LtEq,
                    BinaryOperator::Gt => CompareOp::Gt,
                    BinaryOperator::GtEq => CompareOp::GtEq,
                    BinaryOperator::Spaceship => CompareOp::NullSafeEq,
                    _ => return Err(unsupported()),
                };
                Predicate::Compare {
                    left: self.operand(left, region)?,
                    op,
                    right: self.operand(right, region)?,
                }
            }
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Predicate::Not(Box::new(self.predicate(expr, region)?)),
            Expr::IsNull(x) | Expr::IsNotNull(x) => Predicate::IsNull {
                operand: self.operand(x, region)?,
                negated: matches!(e, Expr::IsNotNull(_)),
            },
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let x = self.operand(expr, region)?;
                let both = Predicate::And(
                    Box::new(Predicate::Compare {
                        left: x.clone(),
                        op: CompareOp::GtEq,
                        right: self.operand(low, region)?,
                    }),
                    Box::new(Predicate::Compare {
                        left: x,
                        op: CompareOp::LtEq,
                        right: self.operand(high, region)?,
                    }),
                );
                if *negated {
                    Predicate::Not(Box::new(both))
                } else {
                    both
                }
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let x = self.operand(expr, region)?;
                let mut any: Option<Predicate> = None;
                for v in list {
                    let eq = Predicate::Compare {
                        left: x.clone(),
                        op: CompareOp::Eq,
                        right: self.operand(v, region)?,
                    };
                    any = Some(match any {
                        None => eq,
                        Some(p) => Predicate::Or(Box::new(p), Box::new(eq)),
                    });
                }
                let any = any.ok_or_else(unsupported)?;
                if *negated {
                    Predicate::Not(Box::new(any))
                } else {
                    any
                }
            }
            _ => return Err(unsupported()),
        })
    }

    fn operand(&mut self, e: &Expr, region: &str) -> Result<Operand, String> {
        match e {
            Expr::Nested(inner) => self.operand(inner, region),
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => number(n),
                Value::Null => Ok(Operand::Null),
                _ => Err(format!(
                    "HAVING compares {e} across shards (only numbers and NULL)"
                )),
            },
            Expr::UnaryOp {
                op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
                expr,
            } => match expr.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::Number(n, _) if *op == UnaryOperator::Minus => number(&format!("-{n}")),
                    Value::Number(n, _) => number(n),
                    _ => Err(format!("HAVING compares {e} across shards")),
                },
                _ => Err(format!("HAVING compares {e} across shards")),
            },
            _ => Ok(Operand::Column(self.column(e, region, false)?.0)),
        }
    }
}

/// A number literal, as its digits (with a sign, a point and an exponent at most).
fn number(n: &str) -> Result<Operand, String> {
    let plain = n.strip_prefix('-').unwrap_or(n);
    let ok = !plain.is_empty()
        && plain.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && plain
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if ok {
        Ok(Operand::Number(n.to_string()))
    } else {
        Err(format!("the number {n} in HAVING across shards"))
    }
}

/// The client's text of the call `e` inside `region`: the span `name(…)` that parses to
/// the same expression.
pub(super) fn source_of(region: &str, e: &Expr) -> Option<String> {
    let tokens = lex::tokenize(region.as_bytes()).ok()?;
    let depths = lex::depths(&tokens);
    for (i, t) in tokens.iter().enumerate() {
        if t.kind != TokenKind::Word || !tokens.get(i + 1).is_some_and(|n| n.is_punct(b'(')) {
            continue;
        }
        let close =
            (i + 2..tokens.len()).find(|&j| depths[j] == depths[i] && tokens[j].is_punct(b')'))?;
        let candidate = &region[t.span.start..tokens[close].span.end];
        let parsed = Parser::new(&MySqlDialect {})
            .try_with_sql(candidate)
            .ok()
            .and_then(|mut p| p.parse_expr().ok());
        if parsed.as_ref() == Some(e) {
            return Some(candidate.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(s: &str) -> Expr {
        Parser::new(&MySqlDialect {})
            .try_with_sql(s)
            .unwrap()
            .parse_expr()
            .unwrap()
    }

    #[test]
    fn an_aggregate_is_found_as_the_client_wrote_it() {
        let region = "HAVING  count( * ) > 2 AND Sum(o.amount)<=max(qty )";
        assert_eq!(
            source_of(region, &expr("count(*)")).as_deref(),
            Some("count( * )")
        );
        assert_eq!(
            source_of(region, &expr("Sum(o.amount)")).as_deref(),
            Some("Sum(o.amount)")
        );
        assert_eq!(
            source_of(region, &expr("max(qty)")).as_deref(),
            Some("max(qty )")
        );
        // Another call, or the same one written in other case, is not it.
        assert_eq!(source_of(region, &expr("min(qty)")), None);
        assert_eq!(source_of(region, &expr("MAX(qty)")), None);
    }

    #[test]
    fn numbers_are_only_numbers() {
        assert!(number("12").is_ok());
        assert!(number("-1.5e3").is_ok());
        assert!(number(".5").is_ok());
        assert!(number("0x1f").is_err());
        assert!(number("").is_err());
    }
}
