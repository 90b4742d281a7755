//! Whether a replica may take reads, as a monitor of its own sees it.
//!
//! One monitor per replica asks the replica, every interval on a connection of its own, how its
//! replication stands (`SHOW SLAVE STATUS`, read by column name: the columns differ between
//! versions). A replica takes reads only while it answers, both replication threads run, and
//! it is no further behind than the executor's `max_replica_lag`. `Seconds_Behind_Master`
//! reads NULL when the SQL thread is stopped or the connection to the primary is broken, and
//! counts as not replicating: a replica that does not apply changes has no lag to speak of.

use std::time::Duration;

use tokio::sync::watch;

use super::{BackendError, Pool, PooledConn};

/// What the last look at a replica found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not looked at yet.
    Unknown,
    /// It did not answer, or answered with an error.
    Down(String),
    /// It answers, but does not apply the primary's changes (or is no replica at all).
    NotReplicating(String),
    /// It replicates, further behind than allowed.
    Lagging(Duration),
    /// It may take reads.
    Usable { lag: Duration },
}

impl Health {
    pub fn usable(&self) -> bool {
        matches!(self, Health::Usable { .. })
    }

    /// How far behind it was last seen, when it replicates.
    pub fn lag(&self) -> Option<Duration> {
        match self {
            Health::Usable { lag } | Health::Lagging(lag) => Some(*lag),
            _ => None,
        }
    }
}

/// How long one look may take: a replica that does not answer within it is down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Looks at the replica behind `pool` once, on the monitor's own connection `conn` (opened
/// when there is none; dropped when it fails, so the next look opens another).
async fn check(pool: &Pool, conn: &mut Option<PooledConn>, max_lag: Duration) -> Health {
    let look = async {
        if conn.is_none() {
            *conn = Some(pool.acquire_control().await.map_err(|e| e.to_string())?);
        }
        let c = conn.as_mut().ok_or_else(|| "no connection".to_string())?;
        match c.query_named("SHOW SLAVE STATUS").await {
            Ok((names, rows)) => Ok(judge(&names, rows.first(), max_lag)),
            Err(BackendError::Server(e)) => Ok(Health::Down(e.to_string())),
            Err(e) => Err(e.to_string()),
        }
    };
    match tokio::time::timeout(CHECK_TIMEOUT, look).await {
        Ok(Ok(health)) => health,
        Ok(Err(e)) => {
            drop_conn(conn);
            Health::Down(e)
        }
        Err(_) => {
            drop_conn(conn);
            Health::Down(format!("no answer within {CHECK_TIMEOUT:?}"))
        }
    }
}

fn drop_conn(conn: &mut Option<PooledConn>) {
    if let Some(mut c) = conn.take() {
        c.mark_broken();
    }
}

/// What one row of `SHOW SLAVE STATUS` (columns `names`) says of a replica.
fn judge(names: &[String], row: Option<&Vec<Option<String>>>, max_lag: Duration) -> Health {
    let Some(row) = row else {
        return Health::NotReplicating("it is not a replica (SHOW SLAVE STATUS is empty)".into());
    };
    let field = |name: &str| {
        names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .and_then(|i| row.get(i).cloned().flatten())
    };
    for thread in ["Slave_IO_Running", "Slave_SQL_Running"] {
        let state = field(thread).unwrap_or_default();
        if state != "Yes" {
            let error = field(if thread == "Slave_IO_Running" {
                "Last_IO_Error"
            } else {
                "Last_SQL_Error"
            })
            .filter(|e| !e.is_empty());
            return Health::NotReplicating(match error {
                Some(e) => format!("{thread}: {state} ({e})"),
                None => format!("{thread}: {state}"),
            });
        }
    }
    match field("Seconds_Behind_Master").and_then(|s| s.parse::<u64>().ok()) {
        None => Health::NotReplicating("Seconds_Behind_Master is NULL".into()),
        Some(s) if Duration::from_secs(s) > max_lag => Health::Lagging(Duration::from_secs(s)),
        Some(s) => Health::Usable {
            lag: Duration::from_secs(s),
        },
    }
}

/// Looks at the replica behind `pool` every `interval` until `shutdown` turns true; the
/// receiver holds the last look's finding, and `lag` shows how far behind the replica is
/// (-1 while it is down or not replicating).
pub fn monitor(
    pool: Pool,
    max_lag: Duration,
    interval: Duration,
    lag: prometheus::Gauge,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<Health> {
    let (tx, rx) = watch::channel(Health::Unknown);
    tokio::spawn(async move {
        // A connection of the monitor's own, kept between looks: sessions that fill the
        // replica's pool do not make it look down.
        let mut conn = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            let found = check(&pool, &mut conn, max_lag).await;
            lag.set(found.lag().map_or(-1.0, |l| l.as_secs_f64()));
            if *tx.borrow() != found {
                tracing::info!(data_source = %pool.name(), health = ?found, "replica health changed");
            }
            if tx.send(found).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(io: &str, sql: &str, behind: Option<&str>) -> (Vec<String>, Vec<Option<String>>) {
        let names = [
            "Slave_IO_State",
            "Slave_IO_Running",
            "Slave_SQL_Running",
            "Last_SQL_Error",
            "Seconds_Behind_Master",
        ];
        let row = vec![
            Some(String::new()),
            Some(io.into()),
            Some(sql.into()),
            Some("Duplicate entry".into()),
            behind.map(String::from),
        ];
        (names.iter().map(|n| n.to_string()).collect(), row)
    }

    #[test]
    fn a_replica_takes_reads_only_while_it_replicates_close_behind() {
        let max = Duration::from_secs(5);
        let judge_of = |io, sql, behind| {
            let (names, row) = status(io, sql, behind);
            judge(&names, Some(&row), max)
        };
        assert_eq!(
            judge_of("Yes", "Yes", Some("2")),
            Health::Usable {
                lag: Duration::from_secs(2)
            }
        );
        assert_eq!(
            judge_of("Yes", "Yes", Some("9")),
            Health::Lagging(Duration::from_secs(9))
        );
        assert!(matches!(
            judge_of("Yes", "Yes", None),
            Health::NotReplicating(_)
        ));
        assert_eq!(
            judge_of("Yes", "No", None),
            Health::NotReplicating("Slave_SQL_Running: No (Duplicate entry)".into())
        );
        assert!(matches!(
            judge_of("Connecting", "Yes", Some("0")),
            Health::NotReplicating(_)
        ));
        assert!(matches!(judge(&[], None, max), Health::NotReplicating(_)));
    }
}
