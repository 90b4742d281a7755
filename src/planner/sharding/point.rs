//! The hot path: statements on one row of a sharded table, by its sharding value, routed
//! from the lexer's tokens without parsing.
//!
//! A statement relayed to one shard is exact whatever it holds, so all that must be known
//! is that every row it can touch lives on that shard. These shapes tell it from their
//! tokens alone:
//!
//! ```text
//! SELECT <names> FROM t WHERE k = <integer> [LIMIT <n>] [FOR UPDATE]
//! UPDATE t SET c = <expr>, … WHERE k = <integer>
//! DELETE FROM t WHERE k = <integer>
//! INSERT INTO t (<names>) VALUES (<literals>)
//! ```
//!
//! where `k` is `t`'s sharding column, `<names>` are column names (`*`, `a`, `t.a`), and
//! `<expr>` holds no parenthesis (so no subquery or function call) and does not assign `k`.
//! Any other statement, or any token outside these shapes, goes to the full planner
//! ([`super::plan`]); a test checks that both agree on every statement this path routes.

use std::borrow::Cow;

use super::algorithm::Key;
use super::{Placement, Topology};
use crate::sql::lex::{Token, TokenKind};

/// The shard of a one-row statement of one of the shapes above, or `None`.
pub fn route(sql: &str, tokens: &[Token], topo: &Topology) -> Option<usize> {
    let tokens = match tokens.last() {
        Some(t) if t.is_punct(b';') => &tokens[..tokens.len() - 1],
        _ => tokens,
    };
    let p = Point { sql, tokens };
    let first = tokens.first()?;
    if first.is_word(sql.as_bytes(), "SELECT") {
        p.select(topo)
    } else if first.is_word(sql.as_bytes(), "UPDATE") {
        p.update(topo)
    } else if first.is_word(sql.as_bytes(), "DELETE") {
        p.delete(topo)
    } else if first.is_word(sql.as_bytes(), "INSERT") {
        p.insert(topo)
    } else {
        None
    }
}

struct Point<'a> {
    sql: &'a str,
    tokens: &'a [Token],
}

impl<'a> Point<'a> {
    fn word(&self, i: usize, w: &str) -> bool {
        self.tokens
            .get(i)
            .is_some_and(|t| t.is_word(self.sql.as_bytes(), w))
    }

    fn punct(&self, i: usize, b: u8) -> bool {
        self.tokens.get(i).is_some_and(|t| t.is_punct(b))
    }

    /// A name at `i` (a word or a quoted name), lower case: borrowed when it is written so.
    fn name(&self, i: usize) -> Option<Cow<'a, str>> {
        let t = self.tokens.get(i)?;
        let text: &'a str = &self.sql[t.span.clone()];
        let name = match t.kind {
            TokenKind::Word if !text.as_bytes()[0].is_ascii_digit() => text,
            TokenKind::QuotedIdent => text.trim_matches('`'),
            _ => return None,
        };
        Some(
            if name
                .bytes()
                .any(|b| b.is_ascii_uppercase() || !b.is_ascii())
            {
                Cow::Owned(name.to_lowercase())
            } else {
                Cow::Borrowed(name)
            },
        )
    }

    /// An integer literal at `i` (`5`, `-5`); the index after it.
    fn integer(&self, i: usize) -> Option<(Key, usize)> {
        let (negative, at) = if self.punct(i, b'-') {
            (true, i + 1)
        } else {
            (false, i)
        };
        let t = self.tokens.get(at)?;
        let text = &self.sql[t.span.clone()];
        if t.kind != TokenKind::Word || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let v: i128 = text.parse().ok()?;
        Some((Key::Int(if negative { -v } else { v }), at + 1))
    }

    /// The sharded table named at `i`, not qualified by a database: its rule.
    fn table(&self, i: usize, topo: &Topology) -> Option<std::sync::Arc<super::TableRule>> {
        if self.punct(i + 1, b'.') {
            return None;
        }
        match topo.placement(&self.name(i)?) {
            // A split table's statement names its physical table: the planner edits it.
            Placement::Sharded(rule) if !rule.split() => Some(rule),
            _ => None,
        }
    }

    /// `WHERE k = <integer>` at `i`, with `k` bare or qualified by the table's name: the
    /// shard, and the index after it.
    fn where_key(&self, i: usize, rule: &super::TableRule, table: &str) -> Option<(usize, usize)> {
        if !self.word(i, "WHERE") {
            return None;
        }
        let mut at = i + 1;
        if self.punct(at + 1, b'.') {
            if self.name(at)? != table {
                return None;
            }
            at += 2;
        }
        if self.name(at)? != rule.column || !self.punct(at + 1, b'=') {
            return None;
        }
        let (key, next) = self.integer(at + 2)?;
        Some((rule.sharder.shard_of(&key)?, next))
    }

    fn select(&self, topo: &Topology) -> Option<usize> {
        // The select list: names, `*`, `.` and `,` only, up to FROM.
        let from = (1..self.tokens.len()).find(|&i| self.word(i, "FROM"))?;
        if from == 1 {
            return None;
        }
        for i in 1..from {
            let t = &self.tokens[i];
            let ok = match t.kind {
                TokenKind::Word | TokenKind::QuotedIdent => self.name(i).is_some(),
                TokenKind::Punct(b) => matches!(b, b',' | b'.' | b'*'),
                TokenKind::String => false,
            };
            if !ok {
                return None;
            }
        }
        let table = self.name(from + 1)?;
        let rule = self.table(from + 1, topo)?;
        let (shard, mut at) = self.where_key(from + 2, &rule, &table)?;
        if self.word(at, "LIMIT") {
            self.integer(at + 1)
                .filter(|(k, _)| matches!(k, Key::Int(n) if *n >= 0))?;
            at += 2;
        }
        let rest: Vec<&str> = self.tokens[at..]
            .iter()
            .map(|t| &self.sql[t.span.clone()])
            .collect();
        let tail = rest.join(" ").to_ascii_uppercase();
        matches!(tail.as_str(), "" | "FOR UPDATE").then_some(shard)
    }

    fn update(&self, topo: &Topology) -> Option<usize> {
        let table = self.name(1)?;
        let rule = self.table(1, topo)?;
        if !self.word(2, "SET") {
            return None;
        }
        let where_at = (3..self.tokens.len()).find(|&i| self.word(i, "WHERE"))?;
        // Assignments: `c = <expr>` separated by commas, no parenthesis anywhere.
        let mut expect_target = true;
        let mut i = 3;
        while i < where_at {
            let t = &self.tokens[i];
            if t.is_punct(b'(') || t.is_punct(b')') || t.is_punct(b'@') {
                return None;
            }
            if expect_target {
                let target = self.name(i)?;
                if target == rule.column || !self.punct(i + 1, b'=') {
                    return None;
                }
                expect_target = false;
                i += 2;
                continue;
            }
            if t.is_punct(b',') {
                expect_target = true;
            }
            i += 1;
        }
        if expect_target {
            return None;
        }
        let (shard, at) = self.where_key(where_at, &rule, &table)?;
        (at == self.tokens.len()).then_some(shard)
    }

    fn delete(&self, topo: &Topology) -> Option<usize> {
        if !self.word(1, "FROM") {
            return None;
        }
        let table = self.name(2)?;
        let rule = self.table(2, topo)?;
        let (shard, at) = self.where_key(3, &rule, &table)?;
        (at == self.tokens.len()).then_some(shard)
    }

    fn insert(&self, topo: &Topology) -> Option<usize> {
        if !self.word(1, "INTO") {
            return None;
        }
        let rule = self.table(2, topo)?;
        if !self.punct(3, b'(') {
            return None;
        }
        let mut columns = Vec::new();
        let mut i = 4;
        loop {
            columns.push(self.name(i)?);
            if self.punct(i + 1, b')') {
                i += 2;
                break;
            }
            if !self.punct(i + 1, b',') {
                return None;
            }
            i += 2;
        }
        if !(self.word(i, "VALUES") || self.word(i, "VALUE")) || !self.punct(i + 1, b'(') {
            return None;
        }
        let key_at = columns.iter().position(|c| *c == rule.column)?;
        // A generated column left out is added by the planner.
        if rule
            .generated
            .as_ref()
            .is_some_and(|g| !columns.iter().any(|c| c == g.as_str()))
        {
            return None;
        }
        // One row of literals: numbers, strings, NULL, signs.
        let mut at = i + 2;
        let mut key = None;
        for n in 0..columns.len() {
            if n == key_at {
                let (k, next) = self.integer(at)?;
                key = Some(k);
                at = next;
            } else {
                if self.punct(at, b'-') {
                    at += 1;
                }
                let t = self.tokens.get(at)?;
                let text = &self.sql[t.span.clone()];
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                match t.kind {
                    TokenKind::String => at += 1,
                    TokenKind::Word if text.eq_ignore_ascii_case("NULL") => at += 1,
                    TokenKind::Word if digits(text) => {
                        at += 1;
                        // A fraction: `1.50` is three tokens.
                        if self.punct(at, b'.') {
                            let frac = self.tokens.get(at + 1)?;
                            if frac.kind != TokenKind::Word || !digits(&self.sql[frac.span.clone()])
                            {
                                return None;
                            }
                            at += 2;
                        }
                    }
                    _ => return None,
                }
            }
            let last = n + 1 == columns.len();
            if !self.punct(at, if last { b')' } else { b',' }) {
                return None;
            }
            at += 1;
        }
        if at != self.tokens.len() {
            return None;
        }
        rule.sharder.shard_of(&key?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::tests::topology;
    use super::super::plan::{plan_parsed, Plan};
    use super::*;
    use crate::sql::lex;

    fn fast(sql: &str, topo: &Topology) -> Option<usize> {
        route(sql, &lex::tokenize(sql.as_bytes()).unwrap(), topo)
    }

    #[test]
    fn one_row_statements_are_routed_as_the_planner_routes_them() {
        let topo = topology();
        let no_params = |_: &sqlparser::ast::Expr| None;
        let routed = [
            "SELECT * FROM t_order WHERE user_id = 5",
            "select c, t_order.id from T_ORDER where t_order.user_id=-3 limit 1",
            "SELECT c FROM t_order WHERE user_id = 7 FOR UPDATE",
            "SELECT `c` FROM `t_order` WHERE `user_id` = 2;",
            "SELECT c FROM t_user WHERE id = 12345",
            "UPDATE t_order SET qty = qty + 1 WHERE user_id = 9",
            "UPDATE t_order SET name = 'a,b', qty = -1 WHERE user_id = 10",
            "DELETE FROM t_order WHERE user_id = 11",
            "INSERT INTO t_order (id, user_id, name) VALUES (1, 6, 'x')",
            "INSERT INTO t_order (user_id, amount, name) VALUES (-6, 1.50, NULL)",
        ];
        for sql in routed {
            let shard = fast(sql, &topo).unwrap_or_else(|| panic!("not routed: {sql}"));
            assert_eq!(
                plan_parsed(sql, &topo, &no_params),
                Plan::One(shard),
                "{sql}"
            );
        }
        let not_routed = [
            "SELECT COUNT(*) FROM t_order WHERE user_id = 5",
            "SELECT c FROM t_order WHERE user_id = 5 OR 1 = 1",
            "SELECT c FROM t_order WHERE user_id = 5 AND qty = 1",
            "SELECT c FROM t_order WHERE user_id = 5.5",
            "SELECT c FROM t_order WHERE user_id = '5'",
            "SELECT c FROM t_order o WHERE o.user_id = 5",
            "SELECT c FROM shop.t_order WHERE user_id = 5",
            "SELECT c FROM t_order WHERE user_id = 5 UNION SELECT c FROM t_order",
            "SELECT c FROM t_order WHERE user_id = 5 ORDER BY c",
            "SELECT c FROM t_country WHERE id = 5",
            "SELECT c INTO @x FROM t_order WHERE user_id = 5",
            "UPDATE t_order SET user_id = 2 WHERE user_id = 1",
            "UPDATE t_order SET qty = (SELECT 1) WHERE user_id = 1",
            "UPDATE t_order SET qty = 1 WHERE user_id = 1 LIMIT 1",
            "DELETE FROM t_order WHERE user_id = 1 OR qty = 2",
            "INSERT INTO t_order (id, user_id) VALUES (1, 1), (2, 2)",
            "INSERT INTO t_order (id, user_id) VALUES (1, 1) ON DUPLICATE KEY UPDATE id = 2",
            "INSERT INTO t_order (id, user_id) VALUES (NOW(), 1)",
            "INSERT INTO t_order VALUES (1, 1)",
        ];
        for sql in not_routed {
            assert_eq!(fast(sql, &topo), None, "{sql}");
        }
    }
}
