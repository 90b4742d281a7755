//! Results stream: a million-row SELECT flows through without Tandem holding the result set.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{mariadb, Tandem};
use mysql_async::prelude::*;

const ROWS: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn million_row_select_streams_in_bounded_memory() {
    let db = mariadb().fresh_db("stream");
    common::mariadb_cli(
        mariadb().port,
        "root",
        "",
        Some(&db),
        &format!(
            "CREATE TABLE big (id INT PRIMARY KEY, pad VARCHAR(100)) ENGINE=InnoDB;
             INSERT INTO big SELECT seq, REPEAT(CHAR(65 + seq % 26), 100) FROM seq_1_to_{ROWS};"
        ),
    )
    .unwrap();
    let tandem = Tandem::start(&db);
    let mut c = common::connect(&tandem.url(&db)).await;
    c.query_drop("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle_kib = tandem.rss_kib();

    // Sample Tandem's resident memory while the result flows.
    let peak = Arc::new(AtomicU64::new(idle_kib));
    let done = Arc::new(AtomicBool::new(false));
    let pid = tandem.pid();
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let mut result = c
        .query_iter("SELECT id, pad FROM big ORDER BY id")
        .await
        .unwrap();
    let mut count = 0u64;
    let mut sum = 0u64;
    let mut stream = result
        .stream::<(u64, String)>()
        .await
        .unwrap()
        .expect("a result set");
    use futures_util::StreamExt;
    while let Some(row) = stream.next().await {
        let (id, pad) = row.unwrap();
        count += 1;
        sum += id;
        assert_eq!(pad.len(), 100);
    }
    drop(stream);
    drop(result);
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    assert_eq!(count, ROWS);
    assert_eq!(sum, ROWS * (ROWS + 1) / 2);
    let peak_kib = peak.load(Ordering::Relaxed);
    let growth_mib = (peak_kib.saturating_sub(idle_kib)) as f64 / 1024.0;
    println!("tandem RSS: idle {idle_kib} KiB, peak while streaming {peak_kib} KiB (+{growth_mib:.1} MiB)");
    // The result is ~110 MB on the wire; a proxy that buffered it would grow by that much.
    assert!(
        growth_mib < 64.0,
        "RSS grew by {growth_mib:.1} MiB while streaming"
    );

    // The session is fine afterwards.
    let n: i64 = c
        .query_first("SELECT COUNT(*) FROM big WHERE id <= 10")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 10);
}
