//! Routing for `mode: rw_split`: which statements a replica may answer.
//!
//! A replica answers a read only when its answer is the one the primary would give, up to
//! replication delay (which read-your-writes bounds): a plain `SELECT` or `SHOW` outside any
//! transaction that reads nothing only the primary's connection has. Everything else runs on
//! the primary. Session state that must hold on every connection (session variables, the
//! current database) runs everywhere; state that cannot be copied exactly (a user variable
//! set from a query, a named lock, a temporary table) keeps the session's reads on the
//! primary while it lasts.
//!
//! The rules read the statement's tokens ([`crate::sql::lex`]); they err towards the primary:
//! anything they cannot read goes there.

use super::{Previous, Route, Target};
use crate::sql::lex::{self, Token, TokenKind};
use crate::sql::{hints, StatementKind};

/// What the session holds when a statement is routed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// An explicit transaction is open, or autocommit is off.
    pub transaction: bool,
    /// The session is in a global transaction (its images are read on the primary).
    pub global: bool,
    /// Why the session's reads stay on the primary for now, when they do: state only the
    /// primary's connection has (temporary tables, named locks, `LOCK TABLES`, a session
    /// variable set in a way that cannot be repeated elsewhere).
    pub pinned: Option<&'static str>,
}

/// A routing decision for one statement, and what the statement leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub route: Route,
    /// From this statement on, the session's reads stay on the primary, for this reason
    /// (the session decides when the state is gone).
    pub pins: Option<&'static str>,
}

impl Decision {
    const fn to(target: Target, why: &'static str) -> Decision {
        Decision {
            route: Route::new(target, why),
            pins: None,
        }
    }

    const fn pinning(target: Target, why: &'static str, pins: &'static str) -> Decision {
        Decision {
            route: Route::new(target, why),
            pins: Some(pins),
        }
    }
}

/// Functions whose answer depends on what the session's own connection did before
/// (`LAST_INSERT_ID()`, `FOUND_ROWS()`, …), that change or depend on state of the primary
/// (named locks, sequences), or that wait on replication: a replica's connection would
/// answer differently.
const PRIMARY_FUNCTIONS: &[&str] = &[
    "BINLOG_GTID_POS",
    "CONNECTION_ID",
    "FOUND_ROWS",
    "GET_LOCK",
    "IS_FREE_LOCK",
    "IS_USED_LOCK",
    "LASTVAL",
    "LAST_INSERT_ID",
    "MASTER_GTID_WAIT",
    "MASTER_POS_WAIT",
    "NEXTVAL",
    "RELEASE_ALL_LOCKS",
    "RELEASE_LOCK",
    "ROW_COUNT",
    "SETVAL",
    "UUID_SHORT",
];

/// Functions that take a named lock, which then holds on the primary's connection.
const LOCKING_FUNCTIONS: &[&str] = &["GET_LOCK"];

/// What a `SHOW` may ask a replica: the schema, which replication makes the same. Every
/// other `SHOW` is about the server or the connection (`PROCESSLIST`, `STATUS`, `VARIABLES`,
/// replication, grants), which differ between servers.
const SCHEMA_SHOWS: &[&str] = &[
    "CHARACTER",
    "CHARSET",
    "COLLATION",
    "COLUMNS",
    "CREATE",
    "DATABASES",
    "FIELDS",
    "INDEX",
    "INDEXES",
    "KEYS",
    "SCHEMAS",
    "TABLE",
    "TABLES",
    "TRIGGERS",
];

/// System variables about the previous statement, answered where it ran.
const PREVIOUS_STATEMENT_VARIABLES: &[&str] = &["error_count", "warning_count"];

/// Functions about the previous statement, answered where it ran.
const PREVIOUS_FUNCTIONS: &[&str] = &["FOUND_ROWS", "ROW_COUNT"];

/// Schemas whose tables describe the server itself (its threads, status, variables,
/// replication), which differ between a primary and its replicas.
const SERVER_SCHEMAS: &[&str] = &["information_schema", "performance_schema", "mysql", "sys"];

/// Functions, callable without parentheses too, whose answer differs between servers or
/// between the connections' users.
const SERVER_WORDS: &[&str] = &[
    "current_role",
    "current_user",
    "session_user",
    "system_user",
    "user",
    "version",
];

/// Built-in functions a session-variable `SET` may call and still be repeated exactly on
/// another connection later: deterministic, reading no data and no clock.
const REPEATABLE_FUNCTIONS: &[&str] = &[
    "CONCAT",
    "CONCAT_WS",
    "IF",
    "IFNULL",
    "COALESCE",
    "LOWER",
    "LCASE",
    "UPPER",
    "UCASE",
    "REPLACE",
    "TRIM",
    "LTRIM",
    "RTRIM",
    "SUBSTRING",
    "SUBSTR",
    "LEFT",
    "RIGHT",
];

/// Why a session's reads stay on the primary after `LOCK TABLES` (until `UNLOCK TABLES`).
pub const TABLES_LOCKED: &str = "tables are locked (LOCK TABLES)";

/// Where a statement of `kind` with text `sql` runs, given what the session holds.
pub fn route(kind: StatementKind, sql: &[u8], facts: &Facts) -> Decision {
    use StatementKind::*;
    // A read in a transaction runs on the primary whatever it says, unless it takes a lock
    // or hides another statement (which pin the session), or asks about an earlier
    // statement (which may have run on a replica before the transaction): a `SELECT`
    // without `;`, `lock`, `_count` or `found_rows` in it is known to be neither without
    // reading it further.
    let has = |word: &[u8]| {
        sql.windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word))
    };
    if kind == Select
        && (facts.global || facts.transaction)
        && memchr::memchr(b';', sql).is_none()
        && !has(b"lock")
        && !has(b"_count")
        && !has(b"found_rows")
    {
        let why = if facts.global {
            "a global transaction"
        } else {
            "a transaction"
        };
        return Decision::to(Target::Primary, why);
    }
    let Ok(tokens) = lex::tokenize(sql) else {
        return Decision::pinning(
            Target::Primary,
            "a text the planner cannot read",
            "a statement the planner could not read",
        );
    };
    let word = |i: usize, kw: &str| tokens.get(i).is_some_and(|t| t.is_word(sql, kw));
    // Locks the primary's connection holds from now on, whatever the statement.
    if called(sql, &tokens, LOCKING_FUNCTIONS).is_some() {
        return Decision::pinning(Target::Primary, "a named lock", "a named lock is held");
    }
    if word(0, "lock") && (word(1, "tables") || word(1, "table")) {
        return Decision::pinning(Target::Primary, "LOCK TABLES", TABLES_LOCKED);
    }
    if word(0, "flush") && tokens.iter().any(|t| t.is_word(sql, "lock")) {
        return Decision::pinning(Target::Primary, "FLUSH … LOCK", TABLES_LOCKED);
    }
    // What else a query of several statements, a procedure or dynamic SQL changes in the
    // session is not followed: the session's reads stay on the primary.
    if lex::statements(&tokens).len() > 1 {
        return Decision::pinning(
            Target::Primary,
            "several statements in one query",
            "a query of several statements ran",
        );
    }
    if kind == Call || word(0, "execute") || word(0, "prepare") {
        return Decision::pinning(
            Target::Primary,
            "a procedure or dynamic SQL",
            "a procedure or dynamic SQL ran",
        );
    }
    match kind {
        Set => return set(sql, &tokens),
        Use => return Decision::to(Target::Everywhere, "the current database"),
        Select | Show => {}
        _ => return Decision::to(Target::Primary, "not a read"),
    }
    let on_primary = |why| Decision::to(Target::Primary, why);
    // What the previous statement left is on its own connection, transaction or not.
    if let Some(about) = previous_statement(sql, &tokens) {
        return match needs_primary(sql, &tokens, true) {
            None => Decision::to(Target::Previous(about), "about an earlier statement"),
            Some(why) => on_primary(why),
        };
    }
    if facts.global {
        return on_primary("a global transaction");
    }
    if facts.transaction {
        return on_primary("a transaction");
    }
    if let Some(why) = facts.pinned {
        return on_primary(why);
    }
    if hints::primary_hint(sql) {
        return on_primary("the primary hint");
    }
    if kind == Show && !schema_show(sql, &tokens) {
        return on_primary("a SHOW about the server or the connection");
    }
    if let Some(why) = needs_primary(sql, &tokens, false) {
        return on_primary(why);
    }
    Decision::to(Target::Replica, "a plain read")
}

/// Whether a `SHOW` asks about the schema (see [`SCHEMA_SHOWS`]).
fn schema_show(sql: &[u8], tokens: &[Token]) -> bool {
    let what = tokens
        .iter()
        .skip(1)
        .find(|t| !(t.is_word(sql, "full") || t.is_word(sql, "extended")));
    what.is_some_and(|t| SCHEMA_SHOWS.iter().any(|kw| t.is_word(sql, kw)))
}

/// Why a read outside any transaction must run on the primary, if it must. With
/// `previous_ok`, what asks about the previous statement (`@@warning_count`, `FOUND_ROWS()`)
/// does not count: the caller sends it where that statement ran.
fn needs_primary(sql: &[u8], tokens: &[Token], previous_ok: bool) -> Option<&'static str> {
    let word = |t: &Token, kw: &str| t.is_word(sql, kw);
    for (i, t) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1);
        if next.is_some_and(|n| n.is_punct(b'.'))
            && SERVER_SCHEMAS.iter().any(|schema| t.is_word(sql, schema))
        {
            return Some("a table of the server's own (they differ between servers)");
        }
        if word(t, "previous") && next.is_some_and(|n| word(n, "value")) {
            return Some("a sequence");
        }
        if SERVER_WORDS.iter().any(|w| word(t, w)) {
            return Some("a function whose answer differs between servers");
        }
        if word(t, "for") && next.is_some_and(|n| word(n, "update") || word(n, "share")) {
            return Some("a locking read");
        }
        if word(t, "lock") && next.is_some_and(|n| word(n, "in")) {
            return Some("a locking read");
        }
        if word(t, "into") {
            return Some("a read that stores its result (INTO)");
        }
        if word(t, "sql_calc_found_rows") {
            return Some("SQL_CALC_FOUND_ROWS (a later FOUND_ROWS() asks the primary)");
        }
        if word(t, "next") && next.is_some_and(|n| word(n, "value")) {
            return Some("a sequence");
        }
        if t.is_punct(b'@') {
            if next.is_some_and(|n| n.is_punct(b'@')) {
                let about_previous = previous_ok
                    && system_variable(sql, &tokens[i + 2..], PREVIOUS_STATEMENT_VARIABLES);
                if !about_previous {
                    return Some(
                        "a system variable (servers differ in some, connections in others)",
                    );
                }
            } else if !(i > 0 && tokens[i - 1].is_punct(b'@')) {
                return Some("a user variable (they live on the primary's connection)");
            }
        }
    }
    if let Some(name) = called(sql, tokens, PRIMARY_FUNCTIONS) {
        if !(previous_ok && PREVIOUS_FUNCTIONS.contains(&name.as_str())) {
            return Some("a function that answers from the session's own connection");
        }
    }
    if stored_call(sql, tokens) {
        return Some("a call of a function that is not a built-in (it may write)");
    }
    None
}

/// `SET`: session variables run everywhere, so every connection of the session behaves
/// alike; user variables live on the primary (reads that use them go there). A session
/// variable set from something that cannot be repeated exactly on another connection later
/// (a query, the clock, a user variable, the server's `DEFAULT`), or one that changes what
/// reaches the replicas (`sql_log_bin`, `skip_replication`), pins the session's reads to the
/// primary.
fn set(sql: &[u8], tokens: &[Token]) -> Decision {
    let word = |i: usize, kw: &str| tokens.get(i).is_some_and(|t| t.is_word(sql, kw));
    // `SET STATEMENT … FOR <statement>` runs that statement; `SET TRANSACTION` (without
    // SESSION) is about the next transaction only.
    if word(1, "statement") || word(1, "transaction") {
        return Decision::to(Target::Primary, "a statement with its own settings");
    }
    // `SET GLOBAL`, `SET PASSWORD`, `SET DEFAULT ROLE` change the server, not the session.
    let server = tokens.iter().any(|t| t.is_word(sql, "global"))
        || word(1, "password")
        || word(1, "default");
    let replication = tokens
        .iter()
        .any(|t| t.is_word(sql, "sql_log_bin") || t.is_word(sql, "skip_replication"));
    let user_variable = tokens.windows(2).enumerate().any(|(i, w)| {
        w[0].is_punct(b'@') && !w[1].is_punct(b'@') && (i == 0 || !tokens[i - 1].is_punct(b'@'))
    });
    let session = sets_session_variables(sql, tokens);
    if !session {
        return Decision::to(Target::Primary, "user variables");
    }
    if replication {
        return Decision::pinning(
            Target::Primary,
            "a SET of what reaches the replicas",
            "the session's writes may not reach the replicas",
        );
    }
    if server {
        return Decision::pinning(
            Target::Primary,
            "a SET of the server",
            "a SET of the server with the session's variables",
        );
    }
    let default = tokens.iter().skip(1).any(|t| t.is_word(sql, "default"));
    if user_variable || default || !repeatable(sql, tokens) {
        return Decision::pinning(
            Target::Primary,
            "a session variable set from what another connection cannot repeat",
            "a session variable that cannot be repeated on a replica",
        );
    }
    Decision::to(Target::Everywhere, "session variables")
}

/// Whether a `SET` assigns anything but user variables: `SET NAMES`, `SET CHARACTER SET`,
/// `SET [SESSION|LOCAL|GLOBAL] name = …`, `SET @@name = …`, `SET TRANSACTION …`.
fn sets_session_variables(sql: &[u8], tokens: &[Token]) -> bool {
    // Targets follow `SET` and each `,` at depth 0.
    let depths = lex::depths(tokens);
    let mut expect_target = false;
    for (i, t) in tokens.iter().enumerate() {
        if i == 0 {
            expect_target = t.is_word(sql, "set");
            continue;
        }
        if depths[i] == 0 && t.is_punct(b',') {
            expect_target = true;
            continue;
        }
        if expect_target {
            expect_target = false;
            let user = t.is_punct(b'@') && !tokens.get(i + 1).is_some_and(|n| n.is_punct(b'@'));
            if !user {
                return true;
            }
        }
    }
    false
}

/// Whether the values of a session-variable `SET` can be computed again, to the same
/// result, on another connection at another time: literals, other session variables, and
/// the few built-ins in [`REPEATABLE_FUNCTIONS`]; no query, no clock, no user variable.
fn repeatable(sql: &[u8], tokens: &[Token]) -> bool {
    for (i, t) in tokens.iter().enumerate() {
        if t.is_word(sql, "select") {
            return false;
        }
        if tokens.get(i + 1).is_some_and(|n| n.is_punct(b'('))
            && matches!(t.kind, TokenKind::Word | TokenKind::QuotedIdent)
        {
            let name = upper(sql, t);
            let qualified = i > 0 && tokens[i - 1].is_punct(b'.');
            if qualified || !REPEATABLE_FUNCTIONS.contains(&name.as_str()) {
                return false;
            }
        }
    }
    true
}

/// `SHOW WARNINGS`, `SHOW ERRORS`, `SHOW COUNT(*) WARNINGS`, `@@warning_count`,
/// `@@error_count`: about the previous statement.
fn previous_statement(sql: &[u8], tokens: &[Token]) -> Option<Previous> {
    let show = tokens.first().is_some_and(|t| t.is_word(sql, "show"));
    if show
        && tokens
            .iter()
            .any(|t| t.is_word(sql, "warnings") || t.is_word(sql, "errors"))
    {
        return Some(Previous::Diagnostics);
    }
    // A read that asks about several earlier statements at once is answered where the
    // diagnostics are, then the previous statement.
    let diagnostics = tokens.windows(2).enumerate().any(|(i, w)| {
        w[0].is_punct(b'@')
            && w[1].is_punct(b'@')
            && system_variable(sql, &tokens[i + 2..], PREVIOUS_STATEMENT_VARIABLES)
    });
    if diagnostics {
        return Some(Previous::Diagnostics);
    }
    match called(sql, tokens, PREVIOUS_FUNCTIONS).as_deref() {
        Some("FOUND_ROWS") if called(sql, tokens, &["ROW_COUNT"]).is_none() => {
            Some(Previous::Select)
        }
        Some(_) => Some(Previous::Statement),
        None => None,
    }
}

/// Whether a statement of `kind` with text `sql` that ran without raising a condition
/// replaced the session's diagnostics (the list `SHOW WARNINGS` shows): MariaDB clears it
/// for a statement that uses a table, and keeps it across the others (`SET @a = 1`,
/// `SELECT 1`, `BEGIN`). Errs towards "replaced": any `FROM` in the text counts.
pub fn replaces_diagnostics(kind: StatementKind, sql: &[u8]) -> bool {
    use StatementKind::*;
    match kind {
        Begin | Commit | Rollback | Savepoint | Use => false,
        Show => !(lex::contains_word(sql, b"warnings") || lex::contains_word(sql, b"errors")),
        Select | Set => lex::contains_word(sql, b"from"),
        // `DO`, `XA`, `FLUSH`, … name no table; `ANALYZE TABLE`, `HANDLER t`, `LOAD DATA`
        // do.
        Other => [&b"from"[..], b"table", b"tables", b"into", b"handler"]
            .iter()
            .any(|w| lex::contains_word(sql, w)),
        _ => true,
    }
}

/// Whether the tokens after `@@` name one of `names` (`@@x`, `@@session.x`).
fn system_variable(sql: &[u8], after: &[Token], names: &[&str]) -> bool {
    let name = match after {
        [scope, dot, name, ..]
            if dot.is_punct(b'.')
                && (scope.is_word(sql, "session") || scope.is_word(sql, "local")) =>
        {
            name
        }
        [name, ..] => name,
        [] => return false,
    };
    names.iter().any(|n| name.is_word(sql, n))
}

/// The first of `names` the tokens call as a function.
fn called(sql: &[u8], tokens: &[Token], names: &[&str]) -> Option<String> {
    tokens.windows(2).find_map(|w| {
        (w[0].kind == TokenKind::Word && w[1].is_punct(b'('))
            .then(|| upper(sql, &w[0]))
            .filter(|n| names.contains(&n.as_str()))
    })
}

/// Whether the tokens call a function that is not a MariaDB built-in (a stored or loadable
/// one, which may write; a replica is read-only).
fn stored_call(sql: &[u8], tokens: &[Token]) -> bool {
    crate::sql::dml::named_call(sql, tokens).is_some()
}

fn upper(sql: &[u8], t: &Token) -> String {
    String::from_utf8_lossy(&sql[t.span.clone()]).to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::classify;

    fn target(sql: &str, facts: Facts) -> Target {
        let kind = classify::classify(sql.as_bytes());
        route(kind, sql.as_bytes(), &facts).route.target
    }

    fn alone(sql: &str) -> Target {
        target(sql, Facts::default())
    }

    #[test]
    fn plain_reads_outside_transactions_go_to_a_replica() {
        for sql in [
            "SELECT * FROM orders WHERE id = 1",
            "select count(*), max(total) from orders where id in (1, 2)",
            "SELECT a.id FROM a JOIN (SELECT id FROM b) x USING (id)",
            "SHOW TABLES",
            "SHOW FULL COLUMNS FROM t",
            "SHOW CREATE TABLE t",
            "SELECT 'LAST_INSERT_ID()', `for` FROM t",
            "SELECT CAST(x AS DATETIME(6)) FROM t",
        ] {
            assert_eq!(alone(sql), Target::Replica, "{sql}");
        }
    }

    #[test]
    fn reads_that_need_the_primary_go_there() {
        for sql in [
            "SELECT * FROM t WHERE id = 1 FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t LOCK IN SHARE MODE",
            "SELECT id INTO @x FROM t LIMIT 1",
            "SELECT LAST_INSERT_ID()",
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST",
            "SELECT * FROM mysql.gtid_slave_pos",
            "SELECT PREVIOUS VALUE FOR s",
            "SELECT CURRENT_USER()",
            "SELECT CURRENT_USER",
            "SELECT USER(), VERSION()",
            "SELECT @@warning_count INTO @w",
            "SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1",
            "SELECT @x",
            "SELECT * FROM t WHERE id = @id",
            "SELECT @@last_insert_id",
            "SELECT @@session.identity",
            "SELECT @@server_id, @@read_only",
            "SELECT CONNECTION_ID()",
            "SHOW PROCESSLIST",
            "SHOW SESSION STATUS",
            "SHOW VARIABLES LIKE 'read_only'",
            "SHOW SLAVE STATUS",
            "SELECT NEXTVAL(s)",
            "SELECT NEXT VALUE FOR s",
            "SELECT shop.drain()",
            "SELECT archive(1)",
            "SELECT 1; SELECT 2",
            "SELECT /*+ PRIMARY */ * FROM t",
            "SELECT 1 /*! , 2 */",
            "SELECT 'unterminated",
        ] {
            assert_eq!(alone(sql), Target::Primary, "{sql}");
        }
    }

    #[test]
    fn transactions_and_pinned_sessions_read_on_the_primary() {
        let sql = "SELECT * FROM t";
        let tx = Facts {
            transaction: true,
            ..Facts::default()
        };
        let global = Facts {
            global: true,
            ..Facts::default()
        };
        let pinned = Facts {
            pinned: Some("a temporary table exists"),
            ..Facts::default()
        };
        for facts in [tx, global, pinned] {
            assert_eq!(target(sql, facts), Target::Primary, "{facts:?}");
        }
        // A named lock taken in a transaction still holds after it: the session is pinned.
        for sql in ["SELECT GET_LOCK('m', 1)", "SELECT 1; SELECT 2"] {
            let d = route(classify::classify(sql.as_bytes()), sql.as_bytes(), &tx);
            assert!(d.pins.is_some(), "{sql}");
        }
        // What an earlier statement left may be a replica's, transaction or not.
        for sql in [
            "SHOW WARNINGS",
            "SELECT @@warning_count",
            "SELECT found_rows()",
        ] {
            assert!(matches!(target(sql, tx), Target::Previous(_)), "{sql}");
        }
    }

    #[test]
    fn what_is_not_a_read_goes_to_the_primary() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "CREATE TABLE x (id INT)",
            "BEGIN",
            "COMMIT",
            "CALL p()",
            "DO 1",
        ] {
            assert_eq!(alone(sql), Target::Primary, "{sql}");
        }
    }

    #[test]
    fn about_the_previous_statement_goes_where_it_ran() {
        for (sql, about) in [
            ("SHOW WARNINGS", Previous::Diagnostics),
            ("SHOW COUNT(*) ERRORS", Previous::Diagnostics),
            ("SELECT @@warning_count", Previous::Diagnostics),
            (
                "SELECT FOUND_ROWS(), @@warning_count",
                Previous::Diagnostics,
            ),
            ("SELECT FOUND_ROWS()", Previous::Select),
            ("SELECT ROW_COUNT()", Previous::Statement),
            ("SELECT ROW_COUNT(), FOUND_ROWS()", Previous::Statement),
        ] {
            assert_eq!(alone(sql), Target::Previous(about), "{sql}");
        }
    }

    #[test]
    fn statements_that_use_a_table_replace_the_diagnostics() {
        use StatementKind::*;
        for (kind, sql, replaces) in [
            (Select, "SELECT v FROM t", true),
            (Select, "select v\nfrom t", true),
            (Select, "SELECT @a + 1", false),
            (Select, "SELECT fromage()", false),
            (Set, "SET @a = 1", false),
            (Set, "SET @b = (SELECT COUNT(*) FROM t)", true),
            (Show, "SHOW WARNINGS", false),
            (Show, "SHOW TABLES", true),
            (Begin, "BEGIN", false),
            (Insert, "INSERT INTO t VALUES (1)", true),
            (Ddl, "CREATE TABLE t (x INT)", true),
            (Other, "DO 1", false),
            (Other, "ANALYZE TABLE t", true),
        ] {
            assert_eq!(
                replaces_diagnostics(kind, sql.as_bytes()),
                replaces,
                "{sql}"
            );
        }
    }

    #[test]
    fn session_state_runs_everywhere_or_pins_the_session() {
        let set = |sql: &str| {
            route(
                classify::classify(sql.as_bytes()),
                sql.as_bytes(),
                &Facts::default(),
            )
        };
        for sql in [
            "SET NAMES utf8mb4",
            "SET SESSION sql_mode = 'ANSI'",
            "SET sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')",
            "SET @@session.time_zone = '+00:00', autocommit = 1",
            "SET CHARACTER SET latin1",
            "USE shop",
        ] {
            let d = set(sql);
            assert_eq!(
                (d.route.target, d.pins),
                (Target::Everywhere, None),
                "{sql}"
            );
        }
        for sql in ["SET @a = 1", "SET @a = (SELECT MAX(id) FROM t), @b = NOW()"] {
            let d = set(sql);
            assert_eq!((d.route.target, d.pins), (Target::Primary, None), "{sql}");
        }
        for sql in [
            "SET timestamp = UNIX_TIMESTAMP()",
            "SET sql_mode = (SELECT 'ANSI')",
            "SET sql_mode = @saved",
            "SET @a = 1, sql_mode = 'ANSI'",
            "SET time_zone = shop.zone()",
            "SET GLOBAL max_connections = 10",
            "SET PASSWORD = PASSWORD('x')",
            "SET sql_mode = DEFAULT",
            "SET sql_log_bin = 0",
            "SET SESSION skip_replication = 1",
            "LOCK TABLES t WRITE",
            "DO GET_LOCK('m', 5)",
            "SET @l = GET_LOCK('m', 5)",
            "SELECT @@warning_count, GET_LOCK('x', 1)",
            "SELECT 1; SET sql_mode = 'ANSI_QUOTES'",
            "CALL p()",
            "EXECUTE IMMEDIATE @stmt",
            "PREPARE s FROM @stmt",
        ] {
            let d = set(sql);
            assert_eq!(d.route.target, Target::Primary, "{sql}");
            assert!(d.pins.is_some(), "{sql}");
        }
        let d = set("SELECT GET_LOCK('a', 1)");
        assert_eq!((d.route.target, d.pins.is_some()), (Target::Primary, true));
        assert_eq!(set("LOCK TABLES t READ").pins, Some(TABLES_LOCKED));
        for sql in [
            "SET STATEMENT foreign_key_checks = 0 FOR INSERT INTO t VALUES (1)",
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ] {
            let d = set(sql);
            assert_eq!((d.route.target, d.pins), (Target::Primary, None), "{sql}");
        }
    }
}
