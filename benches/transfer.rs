//! The transfer workload: 16 clients move money between accounts in two databases, as global
//! transactions through Tandem, and, in the same run, as the same two updates in plain local
//! transactions straight to MariaDB. Run by `scripts/bench_transfer.sh`, which starts the
//! servers and passes their addresses in the environment.
//!
//! A third kind of run sends MariaDB, straight from the client, the statements AT mode itself
//! needs for a transfer (before image, update, after image, undo log, commit, the undo log's
//! later deletion), pipelined as Tandem pipelines them, with no proxy and no coordinator store:
//! the most any AT implementation that keeps its undo log in the business database can reach
//! on this machine. With `BENCH_PROCESSES` (`name=pid …`) each run's CPU time per transfer is
//! printed for every process named and for the client, which shows where a transfer's cost
//! goes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use rand::{Rng, SeedableRng};
use tandem::at::image::Bytes;
use tandem::at::meta::{Column, TableMeta, ValueKind};
use tandem::at::undo::{self, ChangeKind, UndoItem, UndoLog};

const ACCOUNTS: u32 = 1000;

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run scripts/bench_transfer.sh"))
}

struct Run {
    kind: Kind,
    done: u64,
    failed: u64,
    latencies: Vec<Duration>,
    /// Of each global transfer that succeeded: begin, update a, update b, commit.
    steps: Vec<Steps>,
    elapsed: Duration,
    /// CPU seconds each process of `BENCH_PROCESSES` (then the client) spent in the run.
    cpu: Vec<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The two updates as plain local transactions, straight to MariaDB.
    Plain,
    /// AT mode's own statements, straight to MariaDB.
    AtStatements,
    /// A global transaction through Tandem.
    Global,
}

type Steps = [Duration; 4];

async fn run(clients: u64, seconds: u64, kind: Kind, a: &str, b: &str) -> Run {
    let cpu_before = cpu_seconds();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (a, b) = (a.to_string(), b.to_string());
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(client);
            let mut ca = mysql_async::Conn::from_url(&a).await.expect("connect a");
            let mut cb = mysql_async::Conn::from_url(&b).await.expect("connect b");
            let mut latencies = Vec::new();
            let mut steps = Vec::new();
            let mut undo = UndoBacklog::default();
            while Instant::now() < deadline {
                let (from, to) = (
                    rng.random_range(1..=ACCOUNTS),
                    rng.random_range(1..=ACCOUNTS),
                );
                let t = Instant::now();
                let ok = match kind {
                    Kind::Global => transfer_global(&mut ca, &mut cb, from, to)
                        .await
                        .map(|s| steps.push(s))
                        .is_some(),
                    Kind::Plain => transfer_plain(&mut ca, &mut cb, from, to).await,
                    Kind::AtStatements => {
                        transfer_at_statements(&mut ca, &mut cb, from, to, &mut undo).await
                    }
                };
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                    latencies.push(t.elapsed());
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            if kind == Kind::AtStatements {
                let _ = undo.flush(&mut ca, &mut cb).await;
            }
            (latencies, steps)
        }));
    }
    let mut latencies = Vec::new();
    let mut steps = Vec::new();
    for t in tasks {
        let (l, s) = t.await.expect("client task");
        latencies.extend(l);
        steps.extend(s);
    }
    latencies.sort();
    let cpu = cpu_seconds()
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after - before)
        .collect();
    Run {
        kind,
        cpu,
        done: done.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        latencies,
        steps,
        elapsed: started.elapsed(),
    }
}

async fn transfer_plain(
    a: &mut mysql_async::Conn,
    b: &mut mysql_async::Conn,
    from: u32,
    to: u32,
) -> bool {
    let r: Result<(), mysql_async::Error> = async {
        a.query_drop("BEGIN").await?;
        a.query_drop(format!(
            "UPDATE account SET balance = balance - 1 WHERE id = {from}"
        ))
        .await?;
        a.query_drop("COMMIT").await?;
        b.query_drop("BEGIN").await?;
        b.query_drop(format!(
            "UPDATE account SET balance = balance + 1 WHERE id = {to}"
        ))
        .await?;
        b.query_drop("COMMIT").await?;
        Ok(())
    }
    .await;
    r.is_ok()
}

/// Undo logs written by one client's AT-statement transfers and not yet deleted: deleted a
/// batch at a time, as Tandem's phase 2 deletes them.
#[derive(Default)]
struct UndoBacklog {
    a: Vec<(String, u64)>,
    b: Vec<(String, u64)>,
}

impl UndoBacklog {
    const BATCH: usize = 16;

    async fn flush(
        &mut self,
        a: &mut mysql_async::Conn,
        b: &mut mysql_async::Conn,
    ) -> Result<(), mysql_async::Error> {
        for (conn, keys) in [(a, &mut self.a), (b, &mut self.b)] {
            if !keys.is_empty() {
                let refs: Vec<(&str, u64)> = keys.iter().map(|(x, id)| (x.as_str(), *id)).collect();
                conn.query_drop(undo::delete_many_sql(&refs)).await?;
                keys.clear();
            }
        }
        Ok(())
    }
}

/// The undo log Tandem writes for `UPDATE account SET balance = … WHERE id = …`.
fn undo_log(schema: &str, id: u32, before: i64, after: i64) -> UndoLog {
    let column = |name: &str| Column {
        name: name.into(),
        kind: ValueKind::Number,
        charset: None,
        collation: None,
        auto_increment: false,
        generated: false,
        invisible: false,
    };
    let meta = TableMeta {
        schema: schema.into(),
        name: "account".into(),
        columns: vec![column("id"), column("balance")],
        primary_key: vec![0],
        unique_keys: Vec::new(),
        not_undoable: None,
    };
    let row = |balance: i64| {
        vec![
            Some(Bytes(id.to_string().into_bytes())),
            Some(Bytes(balance.to_string().into_bytes())),
        ]
    };
    UndoLog {
        items: vec![UndoItem::new(
            ChangeKind::Update,
            &meta,
            vec![row(before)],
            vec![row(after)],
        )],
    }
}

/// One branch of an AT-statement transfer, in Tandem's round trips: BEGIN with the before
/// image; the update with the after image; the undo log with COMMIT.
async fn at_branch(
    conn: &mut mysql_async::Conn,
    schema: &str,
    id: u32,
    delta: i64,
    xid: &str,
    branch_id: u64,
) -> Result<(), mysql_async::Error> {
    let image = format!(
        "SELECT `account`.`id`, `account`.`balance` FROM `{schema}`.`account` WHERE (`id`) = ({id}) FOR UPDATE"
    );
    let mut began = conn.query_iter(format!("BEGIN; {image}")).await?;
    began.collect::<mysql_async::Row>().await?; // BEGIN's (empty) result
    let rows: Vec<(u32, i64)> = began.collect_and_drop().await?;
    let Some(&(_, before)) = rows.first() else {
        conn.query_drop("ROLLBACK").await?;
        return Err(mysql_async::Error::Other(
            format!("account {id} not found in {schema}").into(),
        ));
    };
    conn.query_drop(format!(
        "UPDATE account SET balance = balance + {delta} WHERE id = {id}; {image}"
    ))
    .await?;
    let log = undo_log(schema, id, before, before + delta);
    conn.query_drop(format!(
        "{}; COMMIT",
        undo::insert_sql("undo_log", xid, branch_id, &log)
    ))
    .await
}

async fn transfer_at_statements(
    a: &mut mysql_async::Conn,
    b: &mut mysql_async::Conn,
    from: u32,
    to: u32,
    undo: &mut UndoBacklog,
) -> bool {
    let xid = format!(
        "{:013x}-{:016x}",
        rand::random::<u64>() >> 12,
        rand::random::<u64>()
    );
    let (branch_a, branch_b) = (rand::random::<u64>() >> 1, rand::random::<u64>() >> 1);
    let r: Result<(), mysql_async::Error> = async {
        at_branch(a, "bank_a", from, -1, &xid, branch_a).await?;
        at_branch(b, "bank_b", to, 1, &xid, branch_b).await?;
        undo.a.push((xid.clone(), branch_a));
        undo.b.push((xid, branch_b));
        if undo.a.len() >= UndoBacklog::BATCH {
            undo.flush(a, b).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = &r {
        let _ = FIRST_STATEMENTS_FAILURE.set(e.to_string());
    }
    r.is_ok()
}

/// One global transfer; on success, how long each of its four steps took.
async fn transfer_global(
    a: &mut mysql_async::Conn,
    b: &mut mysql_async::Conn,
    from: u32,
    to: u32,
) -> Option<Steps> {
    let mut steps = [Duration::ZERO; 4];
    let mut t = Instant::now();
    let mut lap = |i: usize| {
        steps[i] = t.elapsed();
        t = Instant::now();
    };
    let Ok(Some(xid)) = a.query_first::<String, _>("SELECT tandem_begin()").await else {
        return None;
    };
    lap(0);
    let r: Result<(), mysql_async::Error> = async {
        a.query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE account SET balance = balance - 1 WHERE id = {from}"
        ))
        .await?;
        lap(1);
        b.query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE account SET balance = balance + 1 WHERE id = {to}"
        ))
        .await?;
        lap(2);
        Ok(())
    }
    .await;
    let end = if r.is_ok() { "commit" } else { "rollback" };
    let status = a
        .query_first::<String, _>(format!("SELECT tandem_{end}('{xid}')"))
        .await;
    lap(3);
    let ok = r.is_ok() && matches!(&status, Ok(Some(s)) if s == "Committed");
    if !ok {
        let why = match (&r, &status) {
            (Err(e), _) => format!("a statement failed: {e}"),
            (Ok(()), s) => format!("tandem_commit answered {s:?}"),
        };
        let _ = FIRST_FAILURE.set(why);
    }
    ok.then_some(steps)
}

/// The processes named in `BENCH_PROCESSES` (`name=pid`, space-separated).
fn processes() -> Vec<(String, u32)> {
    std::env::var("BENCH_PROCESSES")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| {
            let (name, pid) = p.split_once('=')?;
            Some((name.to_string(), pid.parse().ok()?))
        })
        .collect()
}

/// CPU seconds (user + system) of each of [`processes`], then of this client.
fn cpu_seconds() -> Vec<f64> {
    let of = |pid: &str| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        (ticks(11) + ticks(12)) / 100.0
    };
    processes()
        .iter()
        .map(|(_, pid)| of(&pid.to_string()))
        .chain([of("self")])
        .collect()
}

/// Why the first failed transfer failed, to print with the results.
static FIRST_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static FIRST_STATEMENTS_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn metric(admin: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Transfers per second over all runs of one kind.
fn tps(runs: &[Run]) -> f64 {
    runs.iter().map(|r| r.done as f64).sum::<f64>()
        / runs.iter().map(|r| r.elapsed.as_secs_f64()).sum::<f64>()
}

/// One line for the runs of one kind: throughput, latency, failures.
fn print_runs(label: &str, runs: &[Run]) {
    let mut all: Vec<Duration> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
    all.sort();
    let (p50, p99) = (percentile(&all, 0.5), percentile(&all, 0.99));
    let failed: u64 = runs.iter().map(|r| r.failed).sum();
    println!(
        "{label:<36}{:>8.1} transfers/s   p50 {p50:.2} ms  p99 {p99:.2} ms  ({failed} failed)",
        tps(runs)
    );
}

/// CPU milliseconds per transfer of each process, for each kind of run.
fn print_cpu(kinds: &[&Vec<Run>]) {
    let mut names: Vec<String> = processes().into_iter().map(|(n, _)| n).collect();
    if names.is_empty() {
        return;
    }
    names.push("client".into());
    print!("CPU ms per transfer:               ");
    for n in &names {
        print!(" {n:>9}");
    }
    println!("     total");
    for runs in kinds {
        let label = match runs[0].kind {
            Kind::Plain => "plain (direct)",
            Kind::AtStatements => "AT's statements alone",
            Kind::Global => "global (Tandem)",
        };
        let done = runs.iter().map(|r| r.done).sum::<u64>().max(1) as f64;
        print!("  {label:<33}");
        let mut total = 0.0;
        for i in 0..names.len() {
            let ms = runs.iter().map(|r| r.cpu[i]).sum::<f64>() * 1000.0 / done;
            total += ms;
            print!(" {ms:>9.3}");
        }
        println!(" {total:>9.3}");
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` asks; this benchmark needs the servers of its script
    }
    let clients: u64 = env("BENCH_CLIENTS").parse().expect("number");
    let seconds: u64 = env("BENCH_SECONDS").parse().expect("number");
    let (direct_a, direct_b) = (env("DIRECT_A"), env("DIRECT_B"));
    let (tandem_a, tandem_b) = (env("TANDEM_A"), env("TANDEM_B"));
    let admin = env("TANDEM_ADMIN");

    for url in [&direct_a, &direct_b] {
        let mut conn = mysql_async::Conn::from_url(url).await.expect("connect");
        conn.query_drop(undo::UNDO_TABLE_DDL)
            .await
            .expect("create undo_log");
        conn.disconnect().await.expect("disconnect");
    }
    // Alternate the kinds of run; keep the sums.
    let (mut plain, mut statements, mut global) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        plain.push(run(clients, seconds, Kind::Plain, &direct_a, &direct_b).await);
        statements.push(run(clients, seconds, Kind::AtStatements, &direct_a, &direct_b).await);
        global.push(run(clients, seconds, Kind::Global, &tandem_a, &tandem_b).await);
    }
    println!(
        "clients: {clients}, {seconds} s per run, 2 runs each, {ACCOUNTS} accounts per database"
    );
    print_runs("plain local transactions (direct):", &plain);
    print_runs("global transactions (Tandem):", &global);
    println!(
        "ratio global/plain:                 {:>8.3}",
        tps(&global) / tps(&plain)
    );
    print_runs("AT's statements alone (direct):", &statements);
    println!(
        "ratio AT's statements alone/plain:  {:>8.3}   (the ceiling for AT with undo logs in the database, on this machine)",
        tps(&statements) / tps(&plain)
    );
    print_cpu(&[&plain, &statements, &global]);
    let steps: Vec<Steps> = global
        .iter()
        .flat_map(|r| r.steps.iter().copied())
        .collect();
    let p50 = |i: usize| {
        let mut d: Vec<Duration> = steps.iter().map(|s| s[i]).collect();
        d.sort();
        percentile(&d, 0.50)
    };
    println!(
        "global transfer steps, p50:         begin {:.2} ms, update a {:.2} ms, update b {:.2} ms, commit {:.2} ms",
        p50(0),
        p50(1),
        p50(2),
        p50(3)
    );
    if let Some(why) = FIRST_STATEMENTS_FAILURE.get() {
        println!("first failure of AT's statements alone: {why}");
    }
    if let Some(why) = FIRST_FAILURE.get() {
        println!("first failure: {why}");
    }
    let begun: u64 = global.iter().map(|r| r.done + r.failed).sum();
    println!("global transactions begun: {begun}");
    match std::env::var("TANDEM_B_ADMIN") {
        Err(_) => {
            if let Some(w) = metric(&admin, "tandem_store_writes_per_global_transaction") {
                println!("store writes per global transaction: {w:.2} (2 branches: target <= 6)");
            }
        }
        // Two sidecars: each counts the store writes it made.
        Ok(admin_b) => {
            let per_transaction = |name: &str| {
                [&admin, &admin_b]
                    .iter()
                    .filter_map(|a| metric(a, name))
                    .sum::<f64>()
                    / begun.max(1) as f64
            };
            println!(
                "store writes per global transaction: {:.2} (both sidecars; 2 branches: target about 6)",
                per_transaction("tandem_coordinator_store_writes")
            );
            println!(
                "store operations run again after a conflict, per global transaction: {:.3}",
                per_transaction("tandem_coordinator_store_retries")
            );
        }
    }
}
