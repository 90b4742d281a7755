//! Analysis of a statement inside a global transaction: which table, which rows, and whether
//! Tandem can make it undoable.
//!
//! Parsing happens only here, only for statements that join a global transaction. The
//! client's own text is what runs, and the pieces the image queries are built from (the
//! WHERE, ORDER BY and LIMIT clauses, the VALUES of an INSERT) are cut from that same text by
//! [`lex`](super::lex), never printed back from a syntax tree: MariaDB reads the image query
//! and the statement alike, whatever literals, escapes and comments they hold. Each piece is
//! also parsed on its own and must give the same tree as the parser found in the statement,
//! so the cut and the parse cannot silently disagree.

use std::ops::{ControlFlow, Range};

use sqlparser::ast::{
    visit_expressions, AssignmentTarget, BinaryOperator, Expr, FromTable, FunctionArg,
    FunctionArgExpr, FunctionArguments, ObjectName, ObjectNamePart, OnInsert, OrderByExpr, SetExpr,
    Statement, TableFactor, TableObject, TableWithJoins, UnaryOperator, Value,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token as SqlToken;

use super::builtins;
use super::lex::{self, LexError, Token};

/// A table as the statement names it (identifier values, without quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
    /// The alias the statement uses for it, if any.
    pub alias: Option<String>,
}

/// The part of an UPDATE or DELETE that chooses rows, as the client wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowFilter {
    pub where_sql: Option<String>,
    pub order_by_sql: Option<String>,
    pub limit_sql: Option<String>,
}

/// One value of an INSERT's VALUES row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertValue {
    Null,
    Default,
    /// A constant, as the client wrote it; `digits` when it is an unsigned integer written
    /// with digits alone.
    Literal {
        sql: String,
        digits: bool,
    },
    /// Anything else: its value is known only once the server computed it.
    Expression,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub table: TableName,
    /// Columns as listed; empty when the statement lists none (all columns, in order).
    pub columns: Vec<String>,
    pub rows: Vec<Vec<InsertValue>>,
    /// The columns ON DUPLICATE KEY UPDATE assigns.
    pub on_duplicate: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub table: TableName,
    /// Assigned columns, in order.
    pub assigned: Vec<String>,
    pub filter: RowFilter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub table: TableName,
    pub filter: RowFilter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dml {
    Insert(Insert),
    Update(Update),
    Delete(Delete),
}

impl Dml {
    /// The table the statement writes.
    pub fn table(&self) -> &TableName {
        match self {
            Dml::Insert(i) => &i.table,
            Dml::Update(u) => &u.table,
            Dml::Delete(d) => &d.table,
        }
    }
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

/// A `SELECT … FOR UPDATE` (or another locking read) on one table: which rows it locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockingSelect {
    pub table: TableName,
    pub filter: RowFilter,
    /// The statement's lock clause as written (`FOR UPDATE SKIP LOCKED`, `LOCK IN SHARE
    /// MODE`, …), so the key read waits, or skips, as the statement will.
    pub lock_sql: String,
}

/// How a query in a global context reads, before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// A locking read: `FOR UPDATE`, `FOR SHARE` or `LOCK IN SHARE MODE`.
    pub locking_read: bool,
    /// `SET STATEMENT … FOR <statement>`: a statement run under other session settings.
    pub set_statement: bool,
    /// A SET that commits the local transaction: of `autocommit`, or `SET PASSWORD`.
    pub commits: bool,
}

/// Reads a query that arrives in a global context: one statement (a query of several is
/// refused), no executable comments, and whether it is a locking read.
pub fn shape(sql: &[u8]) -> Result<Shape, AnalyzeError> {
    let tokens = one_statement(sql)?;
    let depth = lex::depths(&tokens);
    let top = |i: usize| depth[i] == 0;
    let word = |i: usize, kw: &str| tokens.get(i).is_some_and(|t| t.is_word(sql, kw));
    let locking_read = word(0, "select")
        && (0..tokens.len()).any(|i| {
            top(i)
                && ((word(i, "for") && (word(i + 1, "update") || word(i + 1, "share")))
                    || (word(i, "lock") && word(i + 1, "in") && word(i + 2, "share")))
        });
    let set_statement = word(0, "set") && word(1, "statement");
    let commits =
        word(0, "set") && (word(1, "password") || (0..tokens.len()).any(|i| word(i, "autocommit")));
    Ok(Shape {
        locking_read,
        set_statement,
        commits,
    })
}

/// What a statement run outside a global context does to session state that matters once
/// the session joins one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    None,
    /// `XA START` / `XA BEGIN`.
    XaStart,
    /// `XA COMMIT` / `XA ROLLBACK`.
    XaEnd,
    /// `CREATE TEMPORARY TABLE name` (lower case).
    CreateTemporary(String),
    /// `DROP [TEMPORARY] TABLE names` (lower case).
    DropTables(Vec<String>),
}

/// The [`SessionEffect`]s of the statements of a query.
pub fn session_effects(sql: &[u8]) -> Vec<SessionEffect> {
    let Ok(tokens) = lex::tokenize(sql) else {
        return Vec::new();
    };
    lex::statements(&tokens)
        .into_iter()
        .map(|s| session_effect(sql, s))
        .filter(|e| *e != SessionEffect::None)
        .collect()
}

/// Reads the [`SessionEffect`] of one statement's tokens.
fn session_effect(sql: &[u8], tokens: &[Token]) -> SessionEffect {
    let word = |i: usize, kw: &str| tokens.get(i).is_some_and(|t| t.is_word(sql, kw));
    // A table name: the last part of `[db.]name`, unquoted, lower case.
    let name_at = |i: usize| -> Option<(String, usize)> {
        let mut i = i;
        let mut name = None;
        loop {
            let t = tokens.get(i)?;
            let text = &sql[t.span.clone()];
            name = Some(match t.kind {
                lex::TokenKind::Word => String::from_utf8_lossy(text).to_lowercase(),
                lex::TokenKind::QuotedIdent => String::from_utf8_lossy(&text[1..text.len() - 1])
                    .replace("``", "`")
                    .to_lowercase(),
                _ => return name.map(|n| (n, i)),
            });
            if tokens.get(i + 1).is_some_and(|t| t.is_punct(b'.')) {
                i += 2;
            } else {
                return name.map(|n| (n, i + 1));
            }
        }
    };
    if word(0, "xa") {
        return if word(1, "start") || word(1, "begin") {
            SessionEffect::XaStart
        } else if word(1, "commit") || word(1, "rollback") {
            SessionEffect::XaEnd
        } else {
            SessionEffect::None
        };
    }
    let or_replace = if word(1, "or") && word(2, "replace") {
        2
    } else {
        0
    };
    if word(0, "create") && word(1 + or_replace, "temporary") && word(2 + or_replace, "table") {
        let at = 3 + or_replace;
        let at = if word(at, "if") { at + 3 } else { at };
        return name_at(at).map_or(SessionEffect::None, |(n, _)| {
            SessionEffect::CreateTemporary(n)
        });
    }
    if word(0, "drop") {
        let mut i = if word(1, "temporary") { 2 } else { 1 };
        if !word(i, "table") && !word(i, "tables") {
            return SessionEffect::None;
        }
        i += 1;
        if word(i, "if") {
            i += 2;
        }
        let mut names = Vec::new();
        while let Some((n, next)) = name_at(i) {
            names.push(n);
            if tokens.get(next).is_some_and(|t| t.is_punct(b',')) {
                i = next + 1;
            } else {
                break;
            }
        }
        return SessionEffect::DropTables(names);
    }
    SessionEffect::None
}

/// The tokens of the one statement in `sql`.
fn one_statement(sql: &[u8]) -> Result<Vec<Token>, AnalyzeError> {
    let tokens = lex::tokenize(sql).map_err(|e| match e {
        LexError::ExecutableComment => AnalyzeError::Unsupported(
            "an executable comment (/*! … */ or /*M! … */) is not supported inside a global \
             transaction: the server runs its content"
                .into(),
        ),
        LexError::Unterminated(what) => AnalyzeError::Parse(format!("unterminated {what}")),
    })?;
    match lex::statements(&tokens).as_slice() {
        [] => Err(AnalyzeError::Parse("empty statement".into())),
        [one] => Ok(one.to_vec()),
        _ => unsupported("more than one statement in one query"),
    }
}

fn parse(sql: &str) -> Result<Statement, AnalyzeError> {
    let mut statements =
        Parser::parse_sql(&MySqlDialect {}, sql).map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    if statements.len() != 1 {
        return unsupported("more than one statement in one query");
    }
    Ok(statements.remove(0))
}

/// Analyses a locking read inside a global transaction. Only single-table selects are
/// understood; ORDER BY and LIMIT are left out, so the rows checked are a superset.
pub fn analyze_locking_select(sql: &str) -> Result<LockingSelect, AnalyzeError> {
    let tokens = one_statement(sql.as_bytes())?;
    let clauses = Clauses::find(sql.as_bytes(), &tokens, 0);
    // The parser does not read `LOCK IN SHARE MODE`: it reads the text before the lock clause.
    let end = clauses.lock.map_or(sql.len(), |i| tokens[i].span.start);
    let statement = parse(&sql[..end])?;
    // The select list, HAVING and ORDER BY may call functions too.
    check_functions(&statement)?;
    let Statement::Query(q) = statement else {
        return unsupported("this statement");
    };
    let sqlparser::ast::Query {
        body,
        order_by,
        limit_clause,
        ..
    } = *q;
    let SetExpr::Select(select) = *body else {
        return unsupported("a locking read with set operations");
    };
    let [from] = select.from.as_slice() else {
        return unsupported("a locking read over several tables");
    };
    let table = single_table(from)?;
    let where_sql = cut_expr(
        sql,
        &tokens,
        clauses.where_.clone(),
        select.selection.as_ref(),
    )?;
    let lock_sql = clauses
        .lock
        .or(clauses.for_lock)
        .and_then(|i| source(sql, &tokens, i..tokens.len()))
        .unwrap_or_else(|| "FOR UPDATE".into());
    let mut filter = RowFilter {
        where_sql,
        ..RowFilter::default()
    };
    // Without SKIP LOCKED the keys of every row the filter matches are checked, a superset.
    // With it, the key read must take the rows the statement will take, not lock them all.
    if lock_sql.to_ascii_lowercase().contains("skip") {
        let order_by = match order_by.map(|o| o.kind) {
            None => Vec::new(),
            Some(sqlparser::ast::OrderByKind::Expressions(e)) => e,
            Some(_) => return unsupported("ORDER BY ALL"),
        };
        filter.order_by_sql = cut_order_by(sql, &tokens, clauses.order_by.clone(), &order_by)?;
        let limit_text = clauses.limit.clone().and_then(|r| source(sql, &tokens, r));
        let same_limit = |text: &str| {
            let Ok(Statement::Query(alone)) = parse(&format!("SELECT 1 LIMIT {text}")) else {
                return false;
            };
            alone.limit_clause == limit_clause
        };
        filter.limit_sql = match (limit_text, &limit_clause) {
            (None, None) => None,
            (Some(t), Some(_)) if same_limit(&t) => Some(t),
            _ => return mismatch("LIMIT clause"),
        };
    }
    Ok(LockingSelect {
        table,
        filter,
        lock_sql,
    })
}

/// Checks a read (or a SET) in a global context: one statement, calling no stored function,
/// which could write what Tandem never sees.
pub fn check_read(sql: &str) -> Result<(), AnalyzeError> {
    let tokens = one_statement(sql.as_bytes())?;
    let clauses = Clauses::find(sql.as_bytes(), &tokens, 0);
    let end = clauses.lock.map_or(sql.len(), |i| tokens[i].span.start);
    check_functions(&parse(&sql[..end])?)
}

/// Checks a SHOW, DESCRIBE or EXPLAIN in a global context: refused when it calls a function
/// that is not a built-in one (`SHOW … WHERE f()`). The statement an EXPLAIN or DESCRIBE
/// names is checked as a read; a SHOW (which the parser reads few of) by its tokens: a name
/// before `(` must be a built-in function or one of the operators that take parentheses.
pub fn check_show(sql: &[u8]) -> Result<(), AnalyzeError> {
    let tokens = one_statement(sql)?;
    let word = |i: usize, kw: &str| tokens.get(i).is_some_and(|t| t.is_word(sql, kw));
    if ["explain", "describe", "desc"].iter().any(|kw| word(0, kw)) {
        let explained = tokens.iter().position(|t| {
            [
                "select", "insert", "update", "delete", "replace", "with", "table", "values",
            ]
            .iter()
            .any(|kw| t.is_word(sql, kw))
        });
        return match explained {
            Some(at) => match std::str::from_utf8(&sql[tokens[at].span.start..]) {
                Ok(text) => check_read(text),
                Err(_) => unsupported("a statement that is not UTF-8"),
            },
            // DESCRIBE t, EXPLAIN t [column]: no expression at all.
            None => Ok(()),
        };
    }
    match named_call(sql, &tokens) {
        Some(name) => unsupported(&format!(
            "calling {name}() (a stored or loadable function may change data Tandem cannot undo)"
        )),
        None => Ok(()),
    }
}

/// Words that stand before `(` without calling a function: operators and clauses that take
/// parentheses, and the reserved words among them (a stored function cannot be named by a
/// reserved word unquoted).
const NOT_CALLS: &[&str] = &[
    "ALL",
    "AND",
    "ANY",
    "AS",
    "BETWEEN",
    "BY",
    "CASE",
    "COLUMNS",
    "DISTINCT",
    "ELSE",
    "EXCEPT",
    "EXISTS",
    "FROM",
    "GROUP",
    "HAVING",
    "IN",
    "INTERSECT",
    "INTO",
    "IS",
    "JOIN",
    "LIKE",
    "LIMIT",
    "NOT",
    "OF",
    "ON",
    "OR",
    "OVER",
    "PARTITION",
    "REGEXP",
    "RLIKE",
    "ROW",
    "SELECT",
    "SET",
    "SOME",
    "THEN",
    "UNION",
    "USING",
    "VALUES",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "XOR",
];

/// The first name in `tokens` called as a function that may be a stored or loadable one:
/// a name before `(` that is qualified (`db.f(`), quoted, or neither a MariaDB built-in nor
/// one of [`NOT_CALLS`]. A type after `AS` (`CAST(x AS DATETIME(6))`) is no call. Read from
/// tokens alone, so it is cheap, and on the safe side: what it cannot tell from a call
/// counts as one.
pub(crate) fn named_call(sql: &[u8], tokens: &[lex::Token]) -> Option<String> {
    for (i, pair) in tokens.windows(2).enumerate() {
        if !pair[1].is_punct(b'(')
            || !matches!(
                pair[0].kind,
                lex::TokenKind::Word | lex::TokenKind::QuotedIdent
            )
        {
            continue;
        }
        let before = i.checked_sub(1).map(|j| &tokens[j]);
        let qualified = before.is_some_and(|t| t.is_punct(b'.'));
        let a_type = before.is_some_and(|t| t.is_word(sql, "as"));
        let known = pair[0].kind == lex::TokenKind::Word && {
            let name = String::from_utf8_lossy(&sql[pair[0].span.clone()]).to_ascii_uppercase();
            builtins::is_builtin(&name) || NOT_CALLS.contains(&name.as_str())
        };
        if qualified || !(known || a_type) {
            return Some(String::from_utf8_lossy(&sql[pair[0].span.clone()]).into_owned());
        }
    }
    None
}

/// Whether a query run outside a global transaction, classified by its first statement as
/// one that changes nothing, may have changed data all the same, and how: it holds more
/// than one statement (the others were not classified), calls a stored or loadable
/// function, or holds an executable comment, whose content the server runs. A local
/// transaction in which one ran cannot join a global transaction, since Tandem could not
/// undo what it did. Cheap for the common case: a text without `(`, `;` or `/*` is none.
pub fn may_write(sql: &[u8]) -> Option<String> {
    if memchr::memchr2(b'(', b';', sql).is_none() && memchr::memmem::find(sql, b"/*").is_none() {
        return None;
    }
    match lex::tokenize(sql) {
        Ok(tokens) if lex::statements(&tokens).len() > 1 => {
            Some("a query of several statements".into())
        }
        Ok(tokens) => named_call(sql, &tokens).map(|name| format!("a call of {name}()")),
        Err(LexError::ExecutableComment) => Some("an executable comment".into()),
        // The server refuses what does not lex.
        Err(LexError::Unterminated(_)) => None,
    }
}

/// Analyses one INSERT, UPDATE or DELETE.
pub fn analyze(sql: &str) -> Result<Dml, AnalyzeError> {
    let tokens = one_statement(sql.as_bytes())?;
    let statement = parse(sql)?;
    check_functions(&statement)?;
    match statement {
        Statement::Insert(i) => insert(sql, &tokens, i),
        Statement::Update(u) => update(sql, &tokens, u),
        Statement::Delete(d) => delete(sql, &tokens, d),
        Statement::Query(_) => unsupported("a query"),
        _ => unsupported("this statement (DDL and administrative statements)"),
    }
}

/// Stored and loadable functions may change data Tandem never sees, and an assignment to a
/// user variable runs once per row the server reads: both are refused.
fn check_functions(node: &impl sqlparser::ast::Visit) -> Result<(), AnalyzeError> {
    let refused = visit_expressions(node, |e| match refused_expression(e) {
        Some(what) => ControlFlow::Break(what),
        None => ControlFlow::Continue(()),
    });
    match refused {
        ControlFlow::Break(what) => unsupported(&what),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn refused_expression(e: &Expr) -> Option<String> {
    match e {
        Expr::Function(f) => {
            let builtin = matches!(f.name.0.as_slice(), [ObjectNamePart::Identifier(i)]
                if builtins::is_builtin(&i.value));
            (!builtin).then(|| {
                format!(
                    "calling {}() (a stored or loadable function may change data Tandem cannot undo)",
                    f.name
                )
            })
        }
        Expr::BinaryOp {
            op: BinaryOperator::Assignment,
            ..
        } => Some("assigning a user variable (:=)".into()),
        _ => None,
    }
}

/// Where the row-choosing clauses of a statement stand: token index ranges of each clause's
/// body, found at parenthesis depth 0 after `from`.
#[derive(Debug, Default)]
struct Clauses {
    where_: Option<Range<usize>>,
    order_by: Option<Range<usize>>,
    limit: Option<Range<usize>>,
    /// Where a `LOCK IN SHARE MODE` clause starts.
    lock: Option<usize>,
    /// Where a `FOR UPDATE` or `FOR SHARE` clause starts.
    for_lock: Option<usize>,
}

/// Words that end a WHERE, ORDER BY or LIMIT clause at depth 0.
const CLAUSE_ENDS: &[&str] = &[
    "where",
    "group",
    "having",
    "window",
    "order",
    "limit",
    "for",
    "lock",
    "into",
    "union",
    "except",
    "intersect",
    "procedure",
    "returning",
];

impl Clauses {
    fn find(sql: &[u8], tokens: &[Token], from: usize) -> Clauses {
        let depth = lex::depths(tokens);
        let word = |i: usize, kw: &str| tokens.get(i).is_some_and(|t| t.is_word(sql, kw));
        let ends: Vec<usize> = (from..tokens.len())
            .filter(|&i| depth[i] == 0 && CLAUSE_ENDS.iter().any(|kw| word(i, kw)))
            .collect();
        let body = |at: usize, skip: usize| {
            let end = ends
                .iter()
                .copied()
                .find(|&e| e > at)
                .unwrap_or(tokens.len());
            at + skip..end
        };
        let mut c = Clauses::default();
        for &i in &ends {
            if word(i, "where") && c.where_.is_none() {
                c.where_ = Some(body(i, 1));
            } else if word(i, "order") && word(i + 1, "by") && c.order_by.is_none() {
                c.order_by = Some(body(i, 2));
            } else if word(i, "limit") && c.limit.is_none() {
                c.limit = Some(body(i, 1));
            } else if word(i, "lock") && word(i + 1, "in") && c.lock.is_none() {
                c.lock = Some(i);
            } else if word(i, "for")
                && (word(i + 1, "update") || word(i + 1, "share"))
                && c.for_lock.is_none()
            {
                c.for_lock = Some(i);
            }
        }
        c
    }
}

/// The source text of the tokens in `range`.
fn source(sql: &str, tokens: &[Token], range: Range<usize>) -> Option<String> {
    let bytes = lex::text(sql.as_bytes(), tokens.get(range)?)?;
    std::str::from_utf8(bytes).ok().map(str::to_string)
}

fn mismatch<T>(clause: &str) -> Result<T, AnalyzeError> {
    Err(AnalyzeError::Unsupported(format!(
        "Tandem could not read the statement's {clause} with certainty; it is not run inside a \
         global transaction"
    )))
}

/// A parser over `text` alone.
fn parser(text: &str) -> Option<Parser<'static>> {
    static DIALECT: MySqlDialect = MySqlDialect {};
    Parser::new(&DIALECT).try_with_sql(text).ok()
}

fn at_end(p: &Parser<'_>) -> bool {
    p.peek_token().token == SqlToken::EOF
}

fn parse_expr_alone(text: &str) -> Option<Expr> {
    let mut p = parser(text)?;
    let e = p.parse_expr().ok()?;
    at_end(&p).then_some(e)
}

/// The source text of an expression clause, checked against the expression the statement
/// parsed to: both absent, or the text parses alone to the same tree.
fn cut_expr(
    sql: &str,
    tokens: &[Token],
    range: Option<Range<usize>>,
    parsed: Option<&Expr>,
) -> Result<Option<String>, AnalyzeError> {
    let text = range.and_then(|r| source(sql, tokens, r));
    match (&text, parsed) {
        (None, None) => Ok(None),
        (Some(t), Some(e)) if parse_expr_alone(t).as_ref() == Some(e) => Ok(text),
        _ => mismatch("WHERE or LIMIT clause"),
    }
}

fn cut_order_by(
    sql: &str,
    tokens: &[Token],
    range: Option<Range<usize>>,
    parsed: &[OrderByExpr],
) -> Result<Option<String>, AnalyzeError> {
    let text = range.and_then(|r| source(sql, tokens, r));
    let Some(t) = &text else {
        return if parsed.is_empty() {
            Ok(None)
        } else {
            mismatch("ORDER BY clause")
        };
    };
    let alone = parser(t).and_then(|mut p| {
        let items = p.parse_comma_separated(Parser::parse_order_by_expr).ok()?;
        at_end(&p).then_some(items)
    });
    if alone.as_deref() == Some(parsed) {
        Ok(text)
    } else {
        mismatch("ORDER BY clause")
    }
}

fn filter(
    sql: &str,
    tokens: &[Token],
    from: usize,
    selection: Option<&Expr>,
    order_by: &[OrderByExpr],
    limit: Option<&Expr>,
) -> Result<RowFilter, AnalyzeError> {
    let c = Clauses::find(sql.as_bytes(), tokens, from);
    Ok(RowFilter {
        where_sql: cut_expr(sql, tokens, c.where_, selection)?,
        order_by_sql: cut_order_by(sql, tokens, c.order_by, order_by)?,
        limit_sql: cut_expr(sql, tokens, c.limit, limit)?,
    })
}

/// The index of the first depth-0 token after `from` that is the word `kw`.
fn find_word(sql: &str, tokens: &[Token], from: usize, kw: &str) -> Option<usize> {
    let depth = lex::depths(tokens);
    (from..tokens.len()).find(|&i| depth[i] == 0 && tokens[i].is_word(sql.as_bytes(), kw))
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
            partitions,
            ..
        } => {
            if !partitions.is_empty() {
                return unsupported("a PARTITION clause");
            }
            table_name(name, alias.as_ref().map(|a| a.name.value.clone()))
        }
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

/// What an INSERT value is, from its parsed tree and its source text.
fn insert_value(text: &str, parsed: &Expr) -> InsertValue {
    let literal = |digits| InsertValue::Literal {
        sql: text.to_string(),
        digits,
    };
    match parsed {
        Expr::Value(v) => match &v.value {
            Value::Null => InsertValue::Null,
            Value::Number(n, _) => literal(n.bytes().all(|b| b.is_ascii_digit())),
            Value::SingleQuotedString(_)
            | Value::DoubleQuotedString(_)
            | Value::HexStringLiteral(_)
            | Value::NationalStringLiteral(_) => literal(false),
            _ => InsertValue::Expression,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } if matches!(expr.as_ref(), Expr::Value(v) if matches!(v.value, Value::Number(..))) => {
            literal(false)
        }
        Expr::Prefixed { value, .. } if matches!(value.as_ref(), Expr::Value(_)) => literal(false),
        // `LAST_INSERT_ID(n)` is n (the sharding planner writes a generated key so).
        Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("LAST_INSERT_ID") => {
            match &f.args {
                FunctionArguments::List(list) if list.args.len() == 1 => match &list.args[0] {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => match &v.value {
                        // A number beyond BIGINT UNSIGNED would be stored otherwise.
                        Value::Number(n, _) if n.parse::<u64>().is_ok() => InsertValue::Literal {
                            sql: n.clone(),
                            digits: true,
                        },
                        _ => InsertValue::Expression,
                    },
                    _ => InsertValue::Expression,
                },
                _ => InsertValue::Expression,
            }
        }
        _ => InsertValue::Expression,
    }
}

/// The VALUES rows of an INSERT as source text, checked value by value against the parse.
fn insert_rows(
    sql: &str,
    tokens: &[Token],
    parsed: &[Vec<Expr>],
) -> Result<Vec<Vec<InsertValue>>, AnalyzeError> {
    let b = sql.as_bytes();
    let depth = lex::depths(tokens);
    // The first VALUES (or VALUE) at depth 0: a later `VALUES(col)` is ON DUPLICATE KEY
    // UPDATE's function.
    let at = (0..tokens.len()).find(|&i| {
        depth[i] == 0 && (tokens[i].is_word(b, "values") || tokens[i].is_word(b, "value"))
    });
    let Some(mut i) = at.map(|v| v + 1) else {
        return mismatch("VALUES");
    };
    let mut rows = Vec::with_capacity(parsed.len());
    while tokens.get(i).is_some_and(|t| t.is_punct(b'(')) {
        let close = (i + 1..tokens.len())
            .find(|&j| depth[j] == 0 && tokens[j].is_punct(b')'))
            .ok_or(AnalyzeError::Parse("unbalanced parentheses".into()))?;
        let mut values = Vec::new();
        let mut start = i + 1;
        for j in i + 1..=close {
            if j == close || (depth[j] == 1 && tokens[j].is_punct(b',')) {
                values.push(start..j);
                start = j + 1;
            }
        }
        rows.push(values);
        i = close + 1;
        if tokens.get(i).is_some_and(|t| t.is_punct(b',')) {
            i += 1;
        } else {
            break;
        }
    }
    if rows.len() != parsed.len() {
        return mismatch("VALUES");
    }
    let mut out = Vec::with_capacity(rows.len());
    for (row, parsed_row) in rows.into_iter().zip(parsed) {
        if row.len() != parsed_row.len() {
            return mismatch("VALUES");
        }
        let mut values = Vec::with_capacity(row.len());
        for (range, e) in row.into_iter().zip(parsed_row) {
            let one = &tokens[range.clone()];
            if let [t] = one {
                if t.is_word(b, "default") {
                    values.push(InsertValue::Default);
                    continue;
                }
            }
            let text = source(sql, tokens, range).unwrap_or_default();
            if parse_expr_alone(&text).as_ref() != Some(e) {
                return mismatch("VALUES");
            }
            values.push(insert_value(&text, e));
        }
        out.push(values);
    }
    Ok(out)
}

fn insert(sql: &str, tokens: &[Token], i: sqlparser::ast::Insert) -> Result<Dml, AnalyzeError> {
    if i.replace_into {
        return unsupported("REPLACE");
    }
    if i.ignore {
        return unsupported("INSERT IGNORE");
    }
    if !i.assignments.is_empty() {
        return unsupported("INSERT … SET");
    }
    if i.returning.is_some() {
        return unsupported("INSERT … RETURNING");
    }
    if i.partitioned.is_some() {
        return unsupported("a PARTITION clause");
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
    let parsed_rows = match *source.body {
        SetExpr::Values(v) => v.rows.into_iter().map(|r| r.content).collect::<Vec<_>>(),
        _ => return unsupported("INSERT … SELECT"),
    };
    let rows = insert_rows(sql, tokens, &parsed_rows)?;
    let on_duplicate = match i.on {
        None => None,
        Some(OnInsert::DuplicateKeyUpdate(assignments)) => Some(
            assignments
                .iter()
                .map(|a| column_name(&a.target))
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

fn update(sql: &str, tokens: &[Token], u: sqlparser::ast::Update) -> Result<Dml, AnalyzeError> {
    if u.from.is_some() {
        return unsupported("a multi-table UPDATE");
    }
    if u.returning.is_some() {
        return unsupported("UPDATE … RETURNING");
    }
    let table = single_table(&u.table)?;
    let assigned = u
        .assignments
        .iter()
        .map(|a| column_name(&a.target))
        .collect::<Result<Vec<_>, AnalyzeError>>()?;
    let Some(set) = find_word(sql, tokens, 0, "set") else {
        return mismatch("SET clause");
    };
    let filter = filter(
        sql,
        tokens,
        set + 1,
        u.selection.as_ref(),
        &u.order_by,
        u.limit.as_ref(),
    )?;
    Ok(Dml::Update(Update {
        table,
        assigned,
        filter,
    }))
}

fn delete(sql: &str, tokens: &[Token], d: sqlparser::ast::Delete) -> Result<Dml, AnalyzeError> {
    if !d.tables.is_empty() || d.using.is_some() {
        return unsupported("a multi-table DELETE");
    }
    if d.returning.is_some() {
        return unsupported("DELETE … RETURNING");
    }
    let from = match &d.from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    };
    let [t] = from.as_slice() else {
        return unsupported("a multi-table DELETE");
    };
    let table = single_table(t)?;
    let Some(from_kw) = find_word(sql, tokens, 0, "from") else {
        return mismatch("FROM clause");
    };
    let filter = filter(
        sql,
        tokens,
        from_kw + 1,
        d.selection.as_ref(),
        &d.order_by,
        d.limit.as_ref(),
    )?;
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

    fn update_of(sql: &str) -> Update {
        match analyze(sql) {
            Ok(Dml::Update(u)) => u,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn update_keeps_table_assignments_and_the_clients_filter_text() {
        let u = update_of(
            "UPDATE /*+ XID('x') */ `shop`.account a SET balance = balance - ?, note = 'x' WHERE id = ? AND owner <> 'it''s' ORDER BY id DESC LIMIT 2",
        );
        assert_eq!(
            u.table,
            TableName {
                schema: Some("shop".into()),
                name: "account".into(),
                alias: Some("a".into())
            }
        );
        assert_eq!(u.assigned, vec!["balance", "note"]);
        assert_eq!(
            u.filter.where_sql.as_deref(),
            Some("id = ? AND owner <> 'it''s'")
        );
        assert_eq!(u.filter.order_by_sql.as_deref(), Some("id DESC"));
        assert_eq!(u.filter.limit_sql.as_deref(), Some("2"));
    }

    #[test]
    fn literals_escapes_and_comments_reach_the_image_query_unchanged() {
        // The parser would print this literal back as 'C:\temp' (a tab): the text is kept.
        let u = update_of(r"UPDATE acct SET bal = bal - 10 WHERE id = 'C:\\temp'");
        assert_eq!(u.filter.where_sql.as_deref(), Some(r"id = 'C:\\temp'"));
        let u = update_of(
            "UPDATE t SET a = 1 WHERE id = 'x'' OR 1=1 -- ' /* c */ AND b = \"q\\\"\" -- end\n",
        );
        assert_eq!(
            u.filter.where_sql.as_deref(),
            Some("id = 'x'' OR 1=1 -- ' /* c */ AND b = \"q\\\"\"")
        );
        // A comment inside the clause stays inside it.
        let u = update_of("UPDATE t SET a = 1 WHERE id = 1 # note\n OR id = 2");
        assert_eq!(
            u.filter.where_sql.as_deref(),
            Some("id = 1 # note\n OR id = 2")
        );
    }

    #[test]
    fn delete_and_insert() {
        let Dml::Delete(d) = analyze("DELETE FROM t WHERE a IN (1, 2) LIMIT 10").unwrap() else {
            panic!("not a delete")
        };
        assert_eq!(d.table.name, "t");
        assert_eq!(d.filter.where_sql.as_deref(), Some("a IN (1, 2)"));
        assert_eq!(d.filter.limit_sql.as_deref(), Some("10"));
        let Dml::Insert(i) = analyze(
            r"INSERT INTO t (id, v) VALUES (1, 'a'), ('C:\\x', DEFAULT), (NULL, 1+1), (-5, 0) ON DUPLICATE KEY UPDATE v = VALUES(v)",
        )
        .unwrap() else {
            panic!("not an insert")
        };
        assert_eq!(i.columns, vec!["id", "v"]);
        let lit = |s: &str, digits| InsertValue::Literal {
            sql: s.into(),
            digits,
        };
        assert_eq!(
            i.rows,
            vec![
                vec![lit("1", true), lit("'a'", false)],
                vec![lit(r"'C:\\x'", false), InsertValue::Default],
                vec![InsertValue::Null, InsertValue::Expression],
                vec![lit("-5", false), lit("0", true)],
            ]
        );
        assert_eq!(i.on_duplicate, Some(vec!["v".to_string()]));
        let Dml::Insert(i) = analyze("INSERT INTO t VALUE (_utf8mb4 X'41')").unwrap() else {
            panic!("not an insert")
        };
        assert!(i.columns.is_empty());
        assert_eq!(i.rows, vec![vec![lit("_utf8mb4 X'41'", false)]]);
        // A generated key as the sharding planner writes it is its number.
        let Dml::Insert(i) =
            analyze("INSERT INTO t (v, id) VALUES (1, LAST_INSERT_ID(77)), (2, LAST_INSERT_ID(v))")
                .unwrap()
        else {
            panic!("not an insert")
        };
        assert_eq!(
            i.rows,
            vec![
                vec![lit("1", true), lit("77", true)],
                vec![lit("2", true), InsertValue::Expression],
            ]
        );
    }

    #[test]
    fn locking_reads() {
        let l = analyze_locking_select(
            "SELECT * FROM acct a WHERE a.id = 'x\\'y' ORDER BY id LIMIT 1 FOR UPDATE /* c */",
        )
        .unwrap();
        assert_eq!(l.table.alias.as_deref(), Some("a"));
        assert_eq!(l.filter.where_sql.as_deref(), Some("a.id = 'x\\'y'"));
        assert_eq!(l.lock_sql, "FOR UPDATE");
        let l =
            analyze_locking_select("SELECT id FROM acct WHERE id > 3 LOCK IN SHARE MODE").unwrap();
        assert_eq!(l.filter.where_sql.as_deref(), Some("id > 3"));
        assert_eq!(l.lock_sql, "LOCK IN SHARE MODE");
        let l = analyze_locking_select("SELECT id FROM acct WHERE id > 3 FOR UPDATE SKIP LOCKED")
            .unwrap();
        assert_eq!(l.lock_sql, "FOR UPDATE SKIP LOCKED");
        let l = analyze_locking_select(
            "SELECT id FROM jobs WHERE state = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .unwrap();
        assert_eq!(
            (
                l.filter.order_by_sql.as_deref(),
                l.filter.limit_sql.as_deref()
            ),
            (Some("id"), Some("1"))
        );
        assert!(analyze_locking_select("SELECT * FROM a JOIN b ON a.x = b.x FOR UPDATE").is_err());
        let s = shape(b"SELECT 1 FROM t WHERE a = 'for update' FOR SHARE NOWAIT -- x").unwrap();
        assert!(s.locking_read);
        assert!(!shape(b"SELECT 'FOR UPDATE' FROM t").unwrap().locking_read);
        assert!(
            !shape(b"SELECT * FROM (SELECT 1 FOR UPDATE) x")
                .unwrap()
                .locking_read
        );
        assert!(
            shape(b"SET STATEMENT max_statement_time=1 FOR UPDATE t SET a = 1")
                .unwrap()
                .set_statement
        );
    }

    #[test]
    fn reads_that_may_have_written() {
        for quiet in [
            "SELECT * FROM acct WHERE id IN (1, 2) FOR UPDATE",
            "SELECT COUNT(*), MAX(bal) FROM acct",
            "SELECT a.id FROM acct a JOIN (SELECT id FROM t) b USING (id)",
            "SELECT CAST(x AS DATETIME(6)), CONVERT(y, CHAR(3)) FROM t",
            "SELECT 'f(1); g()' AS text, `col` FROM t",
            "SELECT ROW(1, 2) = ROW(1, 2), EXISTS (SELECT 1)",
            "SET @a = CONCAT('x', 1)",
            "SELECT 1;",
            "SELECT 1 -- f(2); drop()\n",
        ] {
            assert_eq!(may_write(quiet.as_bytes()), None, "{quiet}");
        }
        for (loud, what) in [
            ("SELECT drain(1)", "a call of drain()"),
            ("SELECT shop.f()", "a call of f()"),
            ("SELECT `count`(1)", "a call of `count`()"),
            ("SET @a = archive()", "a call of archive()"),
            (
                "SELECT 1; UPDATE acct SET bal = 0",
                "a query of several statements",
            ),
            ("SELECT 1 /*!, f() */", "an executable comment"),
        ] {
            assert_eq!(may_write(loud.as_bytes()).as_deref(), Some(what), "{loud}");
        }
    }

    #[test]
    fn show_calling_stored_functions() {
        assert!(check_show(b"SHOW TABLES WHERE Tables_in_db LIKE 'a%'").is_ok());
        assert!(check_show(b"SHOW DATABASES WHERE LENGTH(`Database`) > 3").is_ok());
        assert!(check_show(b"EXPLAIN SELECT * FROM t WHERE id IN (1, 2)").is_ok());
        assert!(check_show(b"SHOW DATABASES WHERE shop.drain() IS NOT NULL").is_err());
        assert!(check_show(b"SHOW DATABASES WHERE drain () IS NOT NULL").is_err());
        assert!(check_show(b"EXPLAIN SELECT `f`(1)").is_err());
        assert!(check_show(b"EXPLAIN INSERT INTO acct (id) VALUES (1)").is_ok());
        assert!(check_show(b"DESCRIBE acct").is_ok());
        assert!(check_show(b"SHOW TABLES WHERE archive(Tables_in_shop)").is_err());
    }

    #[test]
    fn session_effects_of_queries() {
        let one = |sql: &str| session_effects(sql.as_bytes());
        assert_eq!(one("XA START 'x'"), [SessionEffect::XaStart]);
        assert_eq!(one("xa rollback 'x'"), [SessionEffect::XaEnd]);
        assert_eq!(one("XA END 'x'"), []);
        assert_eq!(
            one("CREATE TEMPORARY TABLE IF NOT EXISTS db.`Acct` LIKE acct"),
            [SessionEffect::CreateTemporary("acct".into())]
        );
        assert_eq!(
            one("SELECT 1; CREATE OR REPLACE TEMPORARY TABLE acct (id INT)"),
            [SessionEffect::CreateTemporary("acct".into())]
        );
        assert_eq!(
            one("drop temporary table if exists a, `b``c`"),
            [SessionEffect::DropTables(vec!["a".into(), "b`c".into()])]
        );
        assert_eq!(one("CREATE TABLE t (a INT)"), []);
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
            ("DELETE FROM t WHERE id = 1 RETURNING id", "RETURNING"),
            ("CREATE TABLE t (a INT)", "DDL"),
            ("DROP TABLE t", "DDL"),
            (
                "UPDATE t SET a = 1; DELETE FROM t",
                "more than one statement",
            ),
            (
                "UPDATE t SET a = 1 WHERE id = 1; SELECT 1",
                "more than one statement",
            ),
            (
                "UPDATE t SET a = 1 /*! WHERE id = 2 */",
                "executable comment",
            ),
            (
                "UPDATE t SET a = 1 /*M!100100 WHERE id = 2 */",
                "executable comment",
            ),
            ("UPDATE t SET a = f(1) WHERE id = 1", "f()"),
            ("UPDATE t SET a = 1 WHERE id = db.f(1)", "db.f()"),
            ("DELETE FROM t WHERE id IN (SELECT g(x) FROM u)", "g()"),
            (
                "UPDATE t SET a = 1 WHERE (@x := id) > 0",
                "assigning a user variable",
            ),
        ] {
            let m = unsupported_msg(sql);
            assert!(m.contains(what), "{sql}: {m}");
        }
        assert!(matches!(
            analyze("UPDATE SET WHERE"),
            Err(AnalyzeError::Parse(_))
        ));
        assert!(matches!(
            analyze("UPDATE t SET a = 'x WHERE id = 1"),
            Err(AnalyzeError::Parse(_))
        ));
        // The parser does not read the comma form of a multi-table UPDATE: refused all the same.
        assert!(analyze("UPDATE t, u SET t.a = 1 WHERE t.id = u.id").is_err());
        // A trailing semicolon ends the one statement.
        assert!(analyze("DELETE FROM t WHERE id = 1;").is_ok());
        // Builtins are fine, in any case.
        assert!(
            analyze("UPDATE t SET a = CONCAT(a, 'x'), b = now() WHERE id = lower('A')").is_ok()
        );
    }
}
