//! The money-transfer invariant: many clients move money between accounts in two databases
//! through global transactions, some committing, some rolling back, some abandoned to time
//! out. In the end the total is unchanged and every account equals its start plus exactly the
//! committed transfers.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{mariadb, Tandem, PASSWORD, USER};
use mysql_async::prelude::*;
use rand::{Rng, SeedableRng};

const ACCOUNTS: i64 = 16;
const START: i64 = 1_000;
const CLIENTS: u64 = 8;
const TRANSFERS: u64 = 25;

#[tokio::test(flavor = "multi_thread")]
async fn transfers_keep_the_total_and_every_balance() {
    let a = common::bank("inv_a", ACCOUNTS, START);
    let b = common::bank("inv_b", ACCOUNTS, START);
    let tandem = Tandem::start_yaml(&common::two_databases_config(
        &mariadb().url(&a),
        &mariadb().url(&b),
        "  lock_retry_interval: 10ms\n  lock_retry_attempts: 30",
    ));
    let url_a = tandem.url(&a);
    let url_b = format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{b}", tandem.port_b);

    // Committed deltas per (database, account).
    let committed: Arc<Mutex<HashMap<(char, i64), i64>>> = Arc::default();
    let counts: Arc<Mutex<[u32; 4]>> = Arc::default(); // committed, rolled back, abandoned, failed
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (url_a, url_b) = (url_a.clone(), url_b.clone());
        let (committed, counts) = (committed.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(client);
            let mut ca = common::connect(&url_a).await;
            let mut cb = common::connect(&url_b).await;
            for _ in 0..TRANSFERS {
                let from = rng.random_range(1..=ACCOUNTS);
                let to = rng.random_range(1..=ACCOUNTS);
                let amount = rng.random_range(1..=50i64);
                let a_to_b = rng.random_bool(0.5);
                let fate = rng.random_range(0..100);
                let timeout = if fate >= 85 { 300 } else { 30_000 };
                let xid: String = ca
                    .query_first(format!("SELECT tandem_begin({timeout})"))
                    .await
                    .unwrap()
                    .unwrap();
                let (debit, credit) = if a_to_b { (&mut ca, &mut cb) } else { (&mut cb, &mut ca) };
                let d = debit
                    .query_drop(format!("/*+ XID('{xid}') */ UPDATE account SET balance = balance - {amount} WHERE id = {from}"))
                    .await;
                let c = if d.is_ok() {
                    async {
                        credit.query_drop(format!("SET tandem_xid = '{xid}'")).await?;
                        credit.query_drop("BEGIN").await?;
                        credit
                            .query_drop(format!("UPDATE account SET balance = balance + {amount} WHERE id = {to}"))
                            .await?;
                        let r = credit.query_drop("COMMIT").await;
                        if r.is_err() {
                            let _ = credit.query_drop("ROLLBACK").await;
                        }
                        r
                    }
                    .await
                } else {
                    Ok(())
                };
                let _ = credit.query_drop("SET tandem_xid = NULL").await;
                let ok = d.is_ok() && c.is_ok();
                let outcome = if !ok {
                    let _: Option<String> = ca.query_first(format!("SELECT tandem_rollback('{xid}')")).await.unwrap();
                    3
                } else if fate < 60 {
                    let s = common::end_global(&mut ca, "commit", &xid).await;
                    if s == "Committed" {
                        let (src, dst) = if a_to_b { ('a', 'b') } else { ('b', 'a') };
                        let mut m = committed.lock().unwrap();
                        *m.entry((src, from)).or_default() -= amount;
                        *m.entry((dst, to)).or_default() += amount;
                        0
                    } else {
                        3
                    }
                } else if fate < 85 {
                    let _: Option<String> = ca.query_first(format!("SELECT tandem_rollback('{xid}')")).await.unwrap();
                    1
                } else {
                    2 // abandoned: the coordinator times it out
                };
                counts.lock().unwrap()[outcome] += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Wait for the abandoned ones to time out and every phase 2 to finish.
    let mut open = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, body) = tandem.admin("/v1/transactions");
        let busy = ["\"Begin\"", "Committing", "Rollbacking"]
            .iter()
            .any(|s| body.contains(s));
        if !busy {
            open.clear();
            break;
        }
        open = body;
    }
    assert!(open.is_empty(), "transactions still open: {open}");

    let committed = committed.lock().unwrap().clone();
    let counts = *counts.lock().unwrap();
    println!(
        "committed {}, rolled back {}, abandoned {}, failed {}",
        counts[0], counts[1], counts[2], counts[3]
    );
    assert_eq!(counts.iter().sum::<u32>() as u64, CLIENTS * TRANSFERS);
    assert!(
        counts[0] > 0 && counts[1] > 0 && counts[2] > 0,
        "every fate happened: {counts:?}"
    );
    common::assert_accounts(&a, &b, ACCOUNTS, START, &committed, "").await;
}
