//! Having: keeps the combined rows of groups that span shards for which the HAVING
//! holds. Values compare as numbers, exactly: integers and decimals by their digits,
//! and as doubles where a FLOAT or DOUBLE takes part, as the database compares them.

use std::cmp::Ordering;

use super::compare::{decimal_cmp, Order};
use super::route::{ColumnInfo, Row};
use crate::planner::sharding::plan::{Col, CompareOp, Operand, Predicate};

/// How a column's values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    Exact,
    Float,
}

/// A HAVING resolved against the combined row's columns.
#[derive(Debug)]
pub struct Having {
    predicate: Predicate,
    /// The combined row's visible column count: `Col::Hidden(k)` is cell `visible + k`.
    visible: usize,
    /// How each combined column compares, for those the predicate reads.
    kinds: Vec<Option<Number>>,
}

/// A HAVING that compares what Tandem cannot compare exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HAVING compares a value of a type other than a number across shards")]
pub struct NotNumeric;

impl Having {
    /// `infos` are the combined row's column definitions, visible ones first.
    pub fn new(
        predicate: Predicate,
        visible: usize,
        infos: &[Option<ColumnInfo>],
    ) -> Result<Having, NotNumeric> {
        let kinds = infos
            .iter()
            .map(|info| {
                info.and_then(|i| match Order::of(&i, |_| super::compare::Pad::NoPad) {
                    Ok(Order::Integer | Order::Decimal) => Some(Number::Exact),
                    Ok(Order::Float) => Some(Number::Float),
                    _ => None,
                })
            })
            .collect();
        let having = Having {
            predicate,
            visible,
            kinds,
        };
        having.check(&having.predicate)?;
        Ok(having)
    }

    fn check(&self, p: &Predicate) -> Result<(), NotNumeric> {
        match p {
            Predicate::And(a, b) | Predicate::Or(a, b) => {
                self.check(a)?;
                self.check(b)
            }
            Predicate::Not(a) => self.check(a),
            Predicate::Compare { left, right, .. } => {
                self.kind(left)?;
                self.kind(right).map(|_| ())
            }
            Predicate::IsNull { .. } => Ok(()),
        }
    }

    fn index(&self, c: Col) -> usize {
        match c {
            Col::Visible(i) => i,
            Col::Hidden(k) => self.visible + k,
        }
    }

    fn kind(&self, o: &Operand) -> Result<Option<Number>, NotNumeric> {
        Ok(match o {
            Operand::Column(c) => Some(
                self.kinds
                    .get(self.index(*c))
                    .copied()
                    .flatten()
                    .ok_or(NotNumeric)?,
            ),
            Operand::Number(n) if n.contains(['e', 'E']) => Some(Number::Float),
            Operand::Number(_) => Some(Number::Exact),
            Operand::Null => None,
        })
    }

    /// Whether the row is kept: the HAVING is true (not false, not NULL).
    pub fn keeps(&self, row: &Row) -> bool {
        self.eval(&self.predicate, row) == Some(true)
    }

    fn value<'r>(&self, o: &'r Operand, row: &'r Row) -> Option<&'r [u8]> {
        match o {
            Operand::Column(c) => row.cell(self.index(*c)),
            Operand::Number(n) => Some(n.as_bytes()),
            Operand::Null => None,
        }
    }

    fn eval(&self, p: &Predicate, row: &Row) -> Option<bool> {
        match p {
            Predicate::And(a, b) => match (self.eval(a, row), self.eval(b, row)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Predicate::Or(a, b) => match (self.eval(a, row), self.eval(b, row)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Predicate::Not(a) => self.eval(a, row).map(|v| !v),
            Predicate::IsNull { operand, negated } => {
                Some(self.value(operand, row).is_none() != *negated)
            }
            Predicate::Compare { left, op, right } => {
                let (a, b) = (self.value(left, row), self.value(right, row));
                let (Some(a), Some(b)) = (a, b) else {
                    return (*op == CompareOp::NullSafeEq).then_some(a.is_none() && b.is_none());
                };
                let float = [left, right]
                    .iter()
                    .any(|o| matches!(self.kind(o), Ok(Some(Number::Float))));
                let o = if float {
                    let f = |v: &[u8]| {
                        std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.parse::<f64>().ok())
                    };
                    f(a)?.partial_cmp(&f(b)?)?
                } else {
                    decimal_cmp(a, b)
                };
                Some(match op {
                    CompareOp::Eq | CompareOp::NullSafeEq => o == Ordering::Equal,
                    CompareOp::NotEq => o != Ordering::Equal,
                    CompareOp::Lt => o == Ordering::Less,
                    CompareOp::LtEq => o != Ordering::Greater,
                    CompareOp::Gt => o == Ordering::Greater,
                    CompareOp::GtEq => o != Ordering::Less,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::response::put_lenenc_bytes;
    use bytes::Bytes;
    use mysql_common::constants::ColumnType;

    fn row(cells: &[Option<&str>]) -> Row {
        let mut p = Vec::new();
        for c in cells {
            match c {
                Some(v) => put_lenenc_bytes(&mut p, v.as_bytes()),
                None => p.push(0xfb),
            }
        }
        Row::parse(Bytes::from(p)).unwrap()
    }

    fn info(t: ColumnType) -> Option<ColumnInfo> {
        Some(ColumnInfo {
            charset: 63,
            column_type: t as u8,
            flags: 0,
            decimals: 0,
        })
    }

    fn cmp(c: usize, op: CompareOp, n: &str) -> Predicate {
        Predicate::Compare {
            left: Operand::Column(Col::Visible(c)),
            op,
            right: Operand::Number(n.into()),
        }
    }

    #[test]
    fn comparisons_are_three_valued_and_exact() {
        let infos = [
            info(ColumnType::MYSQL_TYPE_LONGLONG),
            info(ColumnType::MYSQL_TYPE_NEWDECIMAL),
            info(ColumnType::MYSQL_TYPE_DOUBLE),
        ];
        let p = Predicate::And(
            Box::new(cmp(0, CompareOp::Gt, "2")),
            Box::new(cmp(1, CompareOp::LtEq, "10.50")),
        );
        let h = Having::new(p, 3, &infos).unwrap();
        assert!(h.keeps(&row(&[Some("3"), Some("10.5"), None])));
        assert!(!h.keeps(&row(&[Some("2"), Some("1"), None])));
        assert!(!h.keeps(&row(&[Some("3"), None, None])));

        // NOT (NULL > 1) is NULL; OR with a true side is true.
        let p = Predicate::Or(
            Box::new(Predicate::Not(Box::new(cmp(1, CompareOp::Gt, "1")))),
            Box::new(cmp(2, CompareOp::Eq, "1e0")),
        );
        let h = Having::new(p, 3, &infos).unwrap();
        assert!(!h.keeps(&row(&[Some("1"), None, Some("2")])));
        assert!(h.keeps(&row(&[Some("1"), None, Some("1")])));

        let p = Predicate::Compare {
            left: Operand::Column(Col::Visible(1)),
            op: CompareOp::NullSafeEq,
            right: Operand::Null,
        };
        let h = Having::new(p, 3, &infos).unwrap();
        assert!(h.keeps(&row(&[Some("1"), None, None])));
        assert!(!h.keeps(&row(&[Some("1"), Some("0"), None])));
    }

    #[test]
    fn only_numbers_compare() {
        let infos = [info(ColumnType::MYSQL_TYPE_VAR_STRING)];
        assert_eq!(
            Having::new(cmp(0, CompareOp::Eq, "1"), 1, &infos).unwrap_err(),
            NotNumeric
        );
        let p = Predicate::IsNull {
            operand: Operand::Column(Col::Visible(0)),
            negated: true,
        };
        assert!(Having::new(p, 1, &infos).unwrap().keeps(&row(&[Some("a")])));
    }
}
