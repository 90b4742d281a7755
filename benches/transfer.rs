//! The transfer workload: 16 clients move money between accounts in two databases, as global
//! transactions through Tandem, and, in the same run, as the same two updates in plain local
//! transactions straight to MariaDB. Run by `scripts/bench_transfer.sh`, which starts the
//! servers and passes their addresses in the environment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use rand::{Rng, SeedableRng};

const ACCOUNTS: u32 = 1000;

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run scripts/bench_transfer.sh"))
}

struct Run {
    done: u64,
    failed: u64,
    latencies: Vec<Duration>,
    /// Of each global transfer that succeeded: begin, update a, update b, commit.
    steps: Vec<Steps>,
    elapsed: Duration,
}

type Steps = [Duration; 4];

async fn run(clients: u64, seconds: u64, global: bool, a: &str, b: &str) -> Run {
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
            while Instant::now() < deadline {
                let (from, to) = (
                    rng.random_range(1..=ACCOUNTS),
                    rng.random_range(1..=ACCOUNTS),
                );
                let t = Instant::now();
                let ok = if global {
                    transfer_global(&mut ca, &mut cb, from, to)
                        .await
                        .map(|s| steps.push(s))
                        .is_some()
                } else {
                    transfer_plain(&mut ca, &mut cb, from, to).await
                };
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                    latencies.push(t.elapsed());
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
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
    Run {
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

/// Why the first failed transfer failed, to print with the results.
static FIRST_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

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

    // Alternate plain and global runs; keep the sums.
    let (mut plain, mut global) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        plain.push(run(clients, seconds, false, &direct_a, &direct_b).await);
        global.push(run(clients, seconds, true, &tandem_a, &tandem_b).await);
    }
    let tps = |runs: &[Run]| {
        runs.iter().map(|r| r.done as f64).sum::<f64>()
            / runs.iter().map(|r| r.elapsed.as_secs_f64()).sum::<f64>()
    };
    let lat = |runs: &[Run]| {
        let mut all: Vec<Duration> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
        all.sort();
        (percentile(&all, 0.5), percentile(&all, 0.99))
    };
    let (p50, p99) = lat(&global);
    let (pp50, pp99) = lat(&plain);
    println!(
        "clients: {clients}, {seconds} s per run, 2 runs each, {ACCOUNTS} accounts per database"
    );
    println!(
        "plain local transactions (direct):  {:>8.1} transfers/s   p50 {pp50:.2} ms  p99 {pp99:.2} ms",
        tps(&plain)
    );
    println!(
        "global transactions (Tandem):       {:>8.1} transfers/s   p50 {p50:.2} ms  p99 {p99:.2} ms  ({} failed)",
        tps(&global),
        global.iter().map(|r| r.failed).sum::<u64>()
    );
    println!(
        "ratio global/plain:                 {:>8.3}",
        tps(&global) / tps(&plain)
    );
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
            let writes = [&admin, &admin_b]
                .iter()
                .filter_map(|a| metric(a, "tandem_coordinator_store_writes"))
                .sum::<f64>();
            println!(
                "store writes per global transaction: {:.2} (both sidecars; 2 branches: target about 6)",
                writes / begun.max(1) as f64
            );
        }
    }
}
