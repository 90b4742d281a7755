//! Property test of AT mode against the real MariaDB: seeded random global transactions over
//! tables of varied shapes, through Tandem. After a global rollback every table must equal its
//! snapshot exactly; after a global commit, the twin database where the same statements ran
//! directly. Statements Tandem must refuse have to be refused.
//!
//! `TANDEM_PROPERTY_SEED` and `TANDEM_PROPERTY_CASES` choose the run (`scripts/property.sh`
//! runs a longer one with a random seed). A failing case prints its seed and every statement,
//! ready to become a regression test.

mod common;

use common::{error_code, mariadb, Tandem};
use mysql_async::prelude::*;
use mysql_async::{Conn, Params, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TABLES: &[&str] = &[
    "t_auto", "t_ci", "t_comp", "t_uniq", "parent", "child", "t_trig",
];

const SCHEMA: &str = "
CREATE TABLE t_auto (id INT AUTO_INCREMENT PRIMARY KEY, n INT NOT NULL, d DECIMAL(10,2), s VARCHAR(40));
CREATE TABLE t_ci (k VARCHAR(20) COLLATE utf8mb4_general_ci PRIMARY KEY, v INT, t TEXT, j JSON);
CREATE TABLE t_comp (a INT, b VARCHAR(10), x DOUBLE, dt DATETIME(6), PRIMARY KEY (a, b));
CREATE TABLE t_uniq (id INT PRIMARY KEY, code VARCHAR(10) UNIQUE, bl BLOB, g INT AS (id * 2) VIRTUAL);
CREATE TABLE parent (id INT PRIMARY KEY);
CREATE TABLE child (id INT PRIMARY KEY, p INT, FOREIGN KEY (p) REFERENCES parent (id) ON DELETE CASCADE);
CREATE TABLE t_trig (id INT PRIMARY KEY, v INT);
CREATE TRIGGER t_trig_bu BEFORE UPDATE ON t_trig FOR EACH ROW SET NEW.v = NEW.v + 1;
CREATE PROCEDURE p() UPDATE t_auto SET n = n + 1;
INSERT INTO t_auto (n, d, s) SELECT seq, seq / 4, CONCAT('s', seq) FROM seq_1_to_12;
INSERT INTO t_ci VALUES ('abc', 1, 'C:\\\\temp', '{\"a\": 1}'), ('Key\\\\1', 2, 'it''s', '[]'),
  ('naïve', 3, '✓', '{}'), ('b', 4, NULL, NULL);
INSERT INTO t_comp VALUES (1, 'x', 0.1, '2024-01-01 00:00:00.000001'), (1, 'y', 1e300, '2024-02-29 23:59:59.999999'),
  (2, 'x', -3.3333333333333335, NULL);
INSERT INTO t_uniq (id, code, bl) VALUES (1, 'c1', X'00FF'), (2, 'c2', NULL), (3, NULL, 'text');
INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (1, 1), (2, 2);
INSERT INTO t_trig VALUES (1, 1);
";

/// Strings that have broken proxies: escapes, quotes, comment openers, unicode.
const STRINGS: &[&str] = &[
    r"C:\temp",
    "it's",
    "say \"hi\"",
    "naïve ✓",
    "-- not a comment",
    "/* nor this */",
    "# hash",
    "a;b",
    r"back\\slash",
    "tab\there",
    "%_like",
    "`tick`",
    "ABC",
    "abc",
    "abc ",
    r"Key\1",
    "",
];

/// A string as an SQL literal, in one of the forms MariaDB reads by default.
fn literal(rng: &mut StdRng, s: &str) -> String {
    match rng.random_range(0..4) {
        0 => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        1 => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''")),
        2 => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        _ => format!(
            "_utf8mb4 X'{}'",
            s.bytes().map(|b| format!("{b:02X}")).collect::<String>()
        ),
    }
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

/// Whitespace, or now and then a comment where whitespace may stand.
fn gap(rng: &mut StdRng) -> &'static str {
    match rng.random_range(0..10) {
        0 => " /* c */ ",
        1 => " -- c\n ",
        2 => " # c\n ",
        _ => " ",
    }
}

#[derive(Debug, Clone)]
struct Stmt {
    sql: String,
    /// Parameters: the statement is prepared and executed with them.
    params: Option<Vec<Value>>,
    /// Tandem must refuse it.
    must_refuse: bool,
}

fn stmt(sql: String) -> Stmt {
    Stmt {
        sql,
        params: None,
        must_refuse: false,
    }
}

fn int_filter(rng: &mut StdRng, col: &str, max: i64) -> String {
    let a = rng.random_range(0..=max);
    match rng.random_range(0..5) {
        0 => format!("{col} = {a}"),
        1 => format!("{col} IN ({a}, {})", rng.random_range(0..=max)),
        2 => format!("{col} BETWEEN {a} AND {}", a + rng.random_range(0..3)),
        3 => format!("{col} > {a} AND {col} < {}", a + 3),
        _ => format!("({col} = {a} OR {col} = {})", a + 1),
    }
}

/// One random data-changing statement (without its XID hint).
fn random_dml(rng: &mut StdRng) -> Stmt {
    let s = pick(rng, STRINGS).to_string();
    let lit = literal(rng, &s);
    let g = gap(rng);
    let sql = match rng.random_range(0..16) {
        0 => format!(
            "UPDATE t_auto SET n = n + 1,{g}s = {lit} WHERE {}",
            int_filter(rng, "id", 14)
        ),
        1 => format!(
            "UPDATE t_auto SET d = d * 2 WHERE {} ORDER BY id DESC LIMIT {}",
            int_filter(rng, "n", 14),
            rng.random_range(1..3)
        ),
        2 => format!("DELETE FROM t_auto WHERE {}{g}", int_filter(rng, "id", 14)),
        3 => match rng.random_range(0..4) {
            0 => format!("INSERT INTO t_auto (n, s) VALUES (7, {lit})"),
            1 => format!("INSERT INTO t_auto VALUES (NULL, 1, 2.5, {lit}), (0, 2, NULL, 'x')"),
            2 => format!("INSERT INTO t_auto VALUES (DEFAULT, 3, 1, {lit})"),
            _ => format!(
                "INSERT INTO t_auto VALUES ({}, 4, 0, {lit})",
                rng.random_range(1..30)
            ),
        },
        4 => format!("UPDATE t_ci SET v = v + 1, t = {lit} WHERE k = {g}{}", {
            let k = pick(rng, STRINGS);
            literal(rng, k)
        }),
        5 => format!(
            "UPDATE t_ci SET j = JSON_SET(COALESCE(j, '{{}}'), '$.n', {}) WHERE v >= {}",
            rng.random_range(0..100),
            rng.random_range(0..5)
        ),
        6 => format!("DELETE FROM t_ci WHERE k = {lit}"),
        7 => format!(
            "INSERT INTO t_ci (k, v, t) VALUES ({lit}, 9, {})",
            literal(rng, "v")
        ),
        8 => {
            format!("INSERT INTO t_ci (k, v) VALUES ({lit}, 1) ON DUPLICATE KEY UPDATE v = v + 10")
        }
        9 => format!(
            "UPDATE t_comp SET x = x / 3, dt = dt + INTERVAL 1 SECOND WHERE a = {}",
            rng.random_range(0..3)
        ),
        10 => format!(
            "INSERT INTO t_comp VALUES ({}, {lit}, {}, '2025-05-05 05:05:05.5')",
            rng.random_range(0..4),
            rng.random_range(-5..5) as f64 / 7.0
        ),
        11 => format!("DELETE FROM t_comp WHERE b = {lit} OR (a, b) = (2, 'x')"),
        12 => format!(
            "UPDATE t_uniq SET code = {}, bl = X'{:02X}00' WHERE id = {}",
            {
                let code = format!("c{}", rng.random_range(1..5));
                literal(rng, &code)
            },
            rng.random_range(0..256),
            rng.random_range(1..5)
        ),
        13 => format!(
            "INSERT INTO t_uniq (id, code) VALUES ({}, {}) ON DUPLICATE KEY UPDATE bl = 'dup'",
            rng.random_range(1..6),
            {
                let code = format!("c{}", rng.random_range(1..6));
                literal(rng, &code)
            }
        ),
        14 => match rng.random_range(0..2) {
            0 => format!("DELETE FROM child WHERE id = {}", rng.random_range(1..3)),
            // Re-inserted by a rollback: the generated column is computed again, not written.
            _ => format!("DELETE FROM t_uniq WHERE id = {}", rng.random_range(1..5)),
        },
        _ => format!("UPDATE t_uniq SET bl = {lit} WHERE code IS NULL OR id = 2"),
    };
    stmt(sql)
}

/// A statement Tandem must refuse inside a global transaction.
fn refused_statement(rng: &mut StdRng) -> Stmt {
    let sql = pick(
        rng,
        &[
            "DELETE FROM parent WHERE id = 1",
            "UPDATE t_trig SET v = v + 1 WHERE id = 1",
            "CREATE TABLE made (id INT PRIMARY KEY)",
            "CALL p()",
            "UPDATE t_auto SET n = 0 /*! WHERE id = 1 */",
            "UPDATE t_auto SET n = 0 WHERE id = 1; UPDATE t_auto SET n = 0 WHERE id = 2",
            "REPLACE INTO t_auto VALUES (1, 1, 1, 'r')",
            "INSERT INTO t_auto (n) SELECT n FROM t_auto",
            "UPDATE t_auto SET id = id + 100 WHERE id = 1",
            "UPDATE t_auto SET n = 1 WHERE id = 1 /*M!100000 OR 1 = 1 */",
            "DELETE t_auto FROM t_auto JOIN t_ci ON t_auto.n = t_ci.v",
            "TRUNCATE t_auto",
        ],
    );
    Stmt {
        sql: sql.to_string(),
        params: None,
        must_refuse: true,
    }
}

/// A random prepared statement with parameters.
fn prepared(rng: &mut StdRng) -> Stmt {
    let s = pick(rng, STRINGS).to_string();
    let (sql, params) = match rng.random_range(0..4) {
        0 => (
            "UPDATE t_auto SET s = ?, n = n + ? WHERE id = ?",
            vec![
                Value::from(s),
                Value::from(rng.random_range(1..5)),
                Value::from(rng.random_range(1..14)),
            ],
        ),
        1 => ("DELETE FROM t_ci WHERE k = ?", vec![Value::from(s)]),
        2 => (
            "INSERT INTO t_comp (a, b, x) VALUES (?, ?, ?)",
            vec![
                Value::from(rng.random_range(5..9)),
                Value::from(s.chars().take(10).collect::<String>()),
                Value::from(rng.random_range(0..1000) as f64 / 3.0),
            ],
        ),
        _ => (
            "INSERT INTO t_auto (n, s) VALUES (?, ?)",
            vec![Value::from(rng.random_range(0..9)), Value::from(s)],
        ),
    };
    Stmt {
        sql: sql.to_string(),
        params: Some(params),
        must_refuse: false,
    }
}

fn random_stmt(rng: &mut StdRng, allow_prepared: bool) -> Stmt {
    match rng.random_range(0..10) {
        0 => refused_statement(rng),
        1 | 2 if allow_prepared => prepared(rng),
        _ => random_dml(rng),
    }
}

/// One local transaction of a global transaction.
#[derive(Debug, Clone)]
enum Step {
    /// Autocommit statements, each with the XID hint.
    Hinted(Vec<Stmt>),
    /// BEGIN, the first statement hinted, the rest not; then COMMIT (or a local ROLLBACK).
    Explicit { stmts: Vec<Stmt>, commit: bool },
    /// `SET tandem_xid`, then BEGIN … COMMIT or autocommit statements, prepared ones too.
    Session { stmts: Vec<Stmt>, explicit: bool },
}

#[derive(Debug, Clone)]
struct Case {
    steps: Vec<Step>,
    commit: bool,
}

fn random_case(rng: &mut StdRng) -> Case {
    let mut left = rng.random_range(1..=6);
    let mut steps = Vec::new();
    while left > 0 {
        let n = rng.random_range(1..=left);
        left -= n;
        let step = match rng.random_range(0..3) {
            0 => Step::Hinted((0..n).map(|_| random_stmt(rng, false)).collect()),
            1 => Step::Explicit {
                stmts: (0..n).map(|_| random_stmt(rng, false)).collect(),
                commit: rng.random_range(0..6) != 0,
            },
            _ => Step::Session {
                stmts: (0..n).map(|_| random_stmt(rng, true)).collect(),
                explicit: rng.random_bool(0.5),
            },
        };
        steps.push(step);
    }
    Case {
        steps,
        commit: rng.random_bool(0.5),
    }
}

fn hinted(sql: &str, xid: &str) -> String {
    // The hint goes right after the first keyword, as DBPack's clients write it.
    match sql.split_once(' ') {
        Some((kw, rest)) => format!("{kw} /*+ XID('{xid}') */ {rest}"),
        None => sql.to_string(),
    }
}

async fn run(c: &mut Conn, sql: &str, params: &Option<Vec<Value>>) -> Result<(), u16> {
    let r = match params {
        None => c.query_drop(sql).await,
        Some(p) => c.exec_drop(sql, Params::Positional(p.clone())).await,
    };
    r.map_err(|e| error_code(&e).unwrap_or(0))
}

/// Tandem's own refusals: nothing ran (1235, 1064, 1173), or what ran was rolled back (1402).
fn tandem_refused(code: u16) -> bool {
    matches!(code, 1235 | 1064 | 1173 | 1402)
}

#[derive(Default, Debug)]
struct Figures {
    cases: u32,
    statements: u32,
    refused: u32,
    server_errors: u32,
    restored: u32,
    committed_equal: u32,
    wrong: u32,
}

/// What the twin must run to match: the statements that reached the database, in their
/// local transactions, each ended as it was through Tandem.
#[derive(Default)]
struct Replay {
    script: Vec<Stmt>,
}

impl Replay {
    /// An autocommit statement: what ran and was rolled back by Tandem (1402) still moved
    /// the AUTO_INCREMENT counter, so the twin runs it too, and rolls it back.
    fn autocommit(&mut self, s: &Stmt, r: &Result<(), u16>) {
        match r {
            Err(1402) => {
                self.script.push(stmt("BEGIN".into()));
                self.script.push(s.clone());
                self.script.push(stmt("ROLLBACK".into()));
            }
            Err(code) if tandem_refused(*code) => {}
            _ => self.script.push(s.clone()),
        }
    }
}

struct World {
    db: String,
    twin: String,
    tandem: Tandem,
}

async fn tables(db: &str) -> Vec<Vec<Vec<Value>>> {
    let mut c = common::connect(&mariadb().url(db)).await;
    let mut out = Vec::new();
    for t in TABLES {
        let order = if *t == "t_comp" { "a, b" } else { "1" };
        let rows: Vec<mysql_async::Row> = c
            .query(format!("SELECT * FROM {t} ORDER BY {order}"))
            .await
            .unwrap();
        out.push(rows.into_iter().map(|r| r.unwrap()).collect());
    }
    out
}

/// Makes the twin equal to the main database, AUTO_INCREMENT counter included.
async fn sync_twin(w: &World) {
    let mut c = common::connect(&mariadb().url(&w.twin)).await;
    let next: Option<u64> = c
        .query_first(format!(
            "SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = 't_auto'",
            w.db
        ))
        .await
        .unwrap()
        .flatten();
    let mut sql = String::from("SET FOREIGN_KEY_CHECKS = 0;");
    for t in TABLES {
        let cols = if *t == "t_uniq" { "id, code, bl" } else { "*" };
        let list = if *t == "t_uniq" { "(id, code, bl)" } else { "" };
        sql.push_str(&format!(
            "DELETE FROM {t}; INSERT INTO {t} {list} SELECT {cols} FROM {}.{t};",
            w.db
        ));
    }
    if let Some(n) = next {
        sql.push_str(&format!("ALTER TABLE t_auto AUTO_INCREMENT = {n};"));
    }
    sql.push_str("SET FOREIGN_KEY_CHECKS = 1;");
    c.query_drop(sql).await.unwrap();
}

/// Runs one case through Tandem; returns what the twin must replay, or a description of
/// what went wrong.
async fn run_case(
    w: &World,
    case: &Case,
    f: &mut Figures,
    log: &mut Vec<String>,
) -> Result<Replay, String> {
    let mut c = common::connect(&w.tandem.url(&w.db)).await;
    let xid = common::begin_global(&mut c).await;
    let mut replay = Replay::default();
    let mut record = |s: &Stmt, r: &Result<(), u16>, log: &mut Vec<String>| {
        log.push(format!("{:?} -> {r:?}", s.sql));
        f.statements += 1;
        match r {
            Ok(()) if s.must_refuse => {
                return Err(format!("not refused: {}", s.sql));
            }
            Ok(()) => {}
            Err(code) if tandem_refused(*code) => f.refused += 1,
            Err(code) if s.must_refuse => {
                return Err(format!(
                    "refused by the server ({code}), not by Tandem: {}",
                    s.sql
                ))
            }
            Err(_) => f.server_errors += 1,
        }
        Ok(())
    };
    let ran = |r: &Result<(), u16>| !matches!(r, Err(c) if *c != 1402 && tandem_refused(*c));
    for step in &case.steps {
        match step {
            Step::Hinted(stmts) => {
                for s in stmts {
                    let r = run(&mut c, &hinted(&s.sql, &xid), &s.params).await;
                    record(s, &r, log)?;
                    replay.autocommit(s, &r);
                }
            }
            Step::Explicit { stmts, commit } => {
                c.query_drop("BEGIN").await.unwrap();
                replay.script.push(stmt("BEGIN".into()));
                let mut first = true;
                let mut gone = false;
                for s in stmts {
                    let sql = if first {
                        hinted(&s.sql, &xid)
                    } else {
                        s.sql.clone()
                    };
                    let r = run(&mut c, &sql, &s.params).await;
                    record(s, &r, log)?;
                    if ran(&r) {
                        first = false;
                        replay.script.push(s.clone());
                    }
                    if r == Err(1402) || r == Err(1213) {
                        gone = true;
                        break;
                    }
                }
                let end = if *commit && !gone {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                let r = c.query_drop(end).await;
                log.push(format!("{end} -> {r:?}"));
                if let Err(e) = r {
                    // A COMMIT Tandem could not register rolls back.
                    log.push(format!("{end} failed: {e}"));
                    replay.script.push(stmt("ROLLBACK".into()));
                } else {
                    replay.script.push(stmt(end.into()));
                }
            }
            Step::Session { stmts, explicit } => {
                c.query_drop(format!("SET tandem_xid = '{xid}'"))
                    .await
                    .unwrap();
                if *explicit {
                    c.query_drop("BEGIN").await.unwrap();
                    replay.script.push(stmt("BEGIN".into()));
                }
                let mut gone = false;
                for s in stmts {
                    let r = run(&mut c, &s.sql, &s.params).await;
                    record(s, &r, log)?;
                    if *explicit {
                        if ran(&r) {
                            replay.script.push(s.clone());
                        }
                    } else {
                        replay.autocommit(s, &r);
                    }
                    if *explicit && (r == Err(1402) || r == Err(1213)) {
                        gone = true;
                        break;
                    }
                }
                if *explicit {
                    let end = if gone { "ROLLBACK" } else { "COMMIT" };
                    let r = c.query_drop(end).await;
                    log.push(format!("{end} -> {r:?}"));
                    let end = if r.is_ok() { end } else { "ROLLBACK" };
                    replay.script.push(stmt(end.into()));
                }
                c.query_drop("SET tandem_xid = NULL").await.unwrap();
            }
        }
    }
    let how = if case.commit { "commit" } else { "rollback" };
    let status = common::end_global(&mut c, how, &xid).await;
    log.push(format!("tandem_{how} -> {status}"));
    let want = if case.commit {
        "Committed"
    } else {
        "Rollbacked"
    };
    if status != want {
        return Err(format!("tandem_{how} answered {status}"));
    }
    Ok(replay)
}

/// Runs the twin's script on a direct connection. Statements that failed through Tandem fail
/// here too; the twin only has to end in the same state.
async fn replay_on_twin(w: &World, replay: &Replay) {
    let mut c = common::connect(&mariadb().url(&w.twin)).await;
    for s in &replay.script {
        let _ = run(&mut c, &s.sql, &s.params).await;
    }
}

async fn world(prefix: &str) -> World {
    let db = mariadb().fresh_db(prefix);
    let twin = mariadb().fresh_db(&format!("{prefix}_twin"));
    for d in [&db, &twin] {
        mariadb().sql(&format!("USE {d}; {SCHEMA}"));
    }
    let yaml = common::single_config(&mariadb().url(&db), "", "{ max: 8 }").replace(
        "coordinator:",
        "coordinator:\n  lock_retry_interval: 20ms\n  lock_retry_attempts: 5",
    );
    World {
        db,
        twin,
        tandem: Tandem::start_yaml(&yaml),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_global_transactions_are_undone_exactly_or_refused() {
    let seed: u64 = std::env::var("TANDEM_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261202);
    let cases: u32 = std::env::var("TANDEM_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let w = world("prop").await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = Figures::default();
    let mut failures = Vec::new();
    for n in 0..cases {
        let case = random_case(&mut rng);
        sync_twin(&w).await;
        let snapshot = tables(&w.db).await;
        let mut log = Vec::new();
        f.cases += 1;
        let verdict = match run_case(&w, &case, &mut f, &mut log).await {
            Err(e) => Err(e),
            Ok(replay) if case.commit => {
                replay_on_twin(&w, &replay).await;
                if tables(&w.db).await == tables(&w.twin).await {
                    f.committed_equal += 1;
                    Ok(())
                } else {
                    Err("after commit the tables differ from the twin's".to_string())
                }
            }
            Ok(_) => {
                if tables(&w.db).await == snapshot {
                    f.restored += 1;
                    Ok(())
                } else {
                    Err("after rollback the tables differ from the snapshot".to_string())
                }
            }
        };
        if let Err(why) = verdict {
            f.wrong += 1;
            failures.push(format!(
                "seed {seed}, case {n}: {why}\n  {}",
                log.join("\n  ")
            ));
            // The database no longer is in a known state: the rest would only repeat it.
            break;
        }
    }
    println!("AT property test, seed {seed}: {f:?}");
    assert!(failures.is_empty(), "{f:?}\n{}", failures.join("\n\n"));
    assert!(
        f.restored > 0 && f.committed_equal > 0 && f.refused > 0,
        "{f:?}"
    );
}
