//! A pool of backend connections per data source.
//!
//! A client session holds one connection for its whole life (session state — variables,
//! temporary tables, prepared statements, transactions — lives on it), taking it on its first
//! statement. When the session ends, the connection is reset in the background and returned.
//! The pool bounds the total number of connections, waits a bounded time for one to come free,
//! pings idle connections, and closes those idle too long.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::conn::{BackendConn, BackendError, ConnKey, ServerInfo};
use crate::config::{self, Dsn};
use crate::metrics::PoolMetrics;

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("no connection came free within {0:?}")]
    Exhausted(Duration),
    #[error(transparent)]
    Connect(#[from] BackendError),
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    dsn: Dsn,
    cfg: config::Pool,
    state: Mutex<State>,
    notify: Notify,
    metrics: PoolMetrics,
    server: Mutex<Option<ServerInfo>>,
    /// Collation id → (character set, collation) names, for restoring a connection's
    /// character set after a reset.
    collations: Mutex<HashMap<u8, (String, String)>>,
    /// Server thread id → the client session holding that connection now (a `KILL` finds a
    /// session's threads here, and nothing once a connection went back to the pool).
    owners: Mutex<HashMap<u32, u32>>,
}

#[derive(Default)]
struct State {
    idle: Vec<BackendConn>,
    /// Connections open: idle, in use, or being recycled.
    total: u32,
}

impl Pool {
    /// Creates the pool and starts its health-check task (which ends when the pool is dropped).
    pub fn new(name: &str, dsn: Dsn, cfg: config::Pool, metrics: PoolMetrics) -> Pool {
        let inner = Arc::new(Inner {
            name: name.to_string(),
            dsn,
            cfg,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            metrics,
            server: Mutex::new(None),
            collations: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
        });
        tokio::spawn(health_loop(Arc::downgrade(&inner)));
        Pool { inner }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn dsn(&self) -> &Dsn {
        &self.inner.dsn
    }

    /// What the server said about itself on the most recent connection, if any.
    pub fn server_info(&self) -> Option<ServerInfo> {
        lock(&self.inner.server).clone()
    }

    /// Takes a connection for a client whose session needs `key`.
    pub async fn acquire(&self, key: ConnKey) -> Result<PooledConn, AcquireError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.cfg.acquire_timeout.0;
        loop {
            let notified = inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let slot = {
                let mut st = lock(&inner.state);
                if let Some(i) = st.idle.iter().rposition(|c| c.key == key) {
                    let conn = st.idle.swap_remove(i);
                    inner.update_gauges(&st);
                    return Ok(PooledConn::new(conn, inner.clone()));
                }
                if st.total < inner.cfg.max {
                    st.total += 1;
                    true
                } else if !st.idle.is_empty() {
                    // Full of connections for other kinds of clients: replace one.
                    st.idle.remove(0);
                    true
                } else {
                    false
                }
            };
            if slot {
                self.inner.update_gauges(&lock(&inner.state));
                return match inner.open(key).await {
                    Ok(conn) => Ok(PooledConn::new(conn, inner.clone())),
                    Err(e) => {
                        inner.release_slot();
                        Err(e.into())
                    }
                };
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(AcquireError::Exhausted(inner.cfg.acquire_timeout.0));
            }
        }
    }

    /// Takes a connection for client session `session` (Tandem's connection id): the pool
    /// knows it holds the connection until it comes back (see [`Pool::threads_of`]).
    pub async fn acquire_for(
        &self,
        key: ConnKey,
        session: u32,
    ) -> Result<PooledConn, AcquireError> {
        let mut conn = self.acquire(key).await?;
        lock(&self.inner.owners).insert(conn.thread_id, session);
        conn.owner = Some(session);
        Ok(conn)
    }

    /// The server threads of the connections session `session` holds now.
    pub fn threads_of(&self, session: u32) -> Vec<u32> {
        lock(&self.inner.owners)
            .iter()
            .filter(|(_, s)| **s == session)
            .map(|(t, _)| *t)
            .collect()
    }

    /// The session holding the connection of server thread `thread`, if one does.
    pub fn owner_of(&self, thread: u32) -> Option<u32> {
        lock(&self.inner.owners).get(&thread).copied()
    }

    /// Takes a connection for Tandem's own statements (phase 2, housekeeping).
    pub async fn acquire_control(&self) -> Result<PooledConn, AcquireError> {
        self.acquire(default_key()).await
    }

    /// Readiness: the data source answers a ping within the connect timeout.
    pub async fn check(&self) -> Result<(), String> {
        let idle = {
            let mut st = lock(&self.inner.state);
            let c = st.idle.pop();
            self.inner.update_gauges(&st);
            c
        };
        let conn = idle.map(|c| PooledConn::new(c, self.inner.clone()));
        let timeout = self.inner.cfg.connect_timeout.0;
        let result = match conn {
            Some(mut c) => {
                c.keep_clean();
                probe(&mut c, timeout).await
            }
            None => BackendConn::connect(&self.inner.dsn, default_key(), timeout)
                .await
                .map(|c| *lock(&self.inner.server) = Some(c.server.clone()))
                .map_err(|e| e.to_string()),
        };
        result
    }

    /// Connections open now, and how many are idle.
    pub fn stats(&self) -> (u32, usize) {
        let st = lock(&self.inner.state);
        (st.total, st.idle.len())
    }
}

/// Connections for Tandem's own statements: utf8mb4, plain result sets.
fn default_key() -> ConnKey {
    ConnKey::new(
        mysql_common::constants::CapabilityFlags::CLIENT_MULTI_RESULTS
            | mysql_common::constants::CapabilityFlags::CLIENT_FOUND_ROWS,
        45,
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a pool lock cannot leave the state half-updated in a way that
    // matters more than stopping the whole pool would, so recover the guard.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    async fn open(&self, key: ConnKey) -> Result<BackendConn, BackendError> {
        match BackendConn::connect(&self.dsn, key, self.cfg.connect_timeout.0).await {
            Ok(c) => {
                self.metrics.connects_ok.inc();
                *lock(&self.server) = Some(c.server.clone());
                Ok(c)
            }
            Err(e) => {
                self.metrics.connects_failed.inc();
                tracing::warn!(data_source = %self.name, error = %e, "backend connect failed");
                Err(e)
            }
        }
    }

    fn release_slot(&self) {
        let mut st = lock(&self.state);
        st.total = st.total.saturating_sub(1);
        self.update_gauges(&st);
        drop(st);
        self.notify.notify_one();
    }

    fn put_idle(&self, conn: BackendConn) {
        let mut st = lock(&self.state);
        st.idle.push(conn);
        self.update_gauges(&st);
        drop(st);
        self.notify.notify_one();
    }

    fn update_gauges(&self, st: &State) {
        self.metrics.idle.set(st.idle.len() as i64);
        self.metrics
            .in_use
            .set(st.total as i64 - st.idle.len() as i64);
    }

    /// Brings a connection a client used back to a fresh session state.
    async fn recycle(&self, conn: &mut BackendConn) -> Result<(), BackendError> {
        conn.reset().await?;
        let names = lock(&self.collations).get(&conn.key.collation).cloned();
        let names = match names {
            Some(n) => Some(n),
            None => {
                let rows = conn
                    .query_rows(&format!(
                        "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLLATIONS WHERE ID = {}",
                        conn.key.collation
                    ))
                    .await?;
                let found = rows
                    .into_iter()
                    .next()
                    .and_then(|r| match (r.first(), r.get(1)) {
                        (Some(Some(cs)), Some(Some(co))) => Some((cs.clone(), co.clone())),
                        _ => None,
                    });
                if let Some(f) = &found {
                    lock(&self.collations).insert(conn.key.collation, f.clone());
                }
                found
            }
        };
        if let Some((cs, co)) = names {
            conn.execute(&format!("SET NAMES '{cs}' COLLATE '{co}'"))
                .await?;
        }
        if let Some(db) = &self.dsn.database {
            conn.init_db(db).await?;
        }
        Ok(())
    }
}

/// A connection taken from the pool. Dropping it returns it: reset first when a client used it,
/// closed instead when it broke.
pub struct PooledConn {
    conn: Option<BackendConn>,
    pool: Arc<Inner>,
    /// A client session ran statements on it, so its session state must be reset.
    dirty: bool,
    /// The client session holding it, when one does (see [`Pool::acquire_for`]).
    owner: Option<u32>,
}

impl PooledConn {
    fn new(conn: BackendConn, pool: Arc<Inner>) -> Self {
        PooledConn {
            conn: Some(conn),
            pool,
            dirty: true,
            owner: None,
        }
    }

    /// Declares that this use changed no session state, so the connection goes back to the
    /// pool without a reset.
    pub fn keep_clean(&mut self) {
        self.dirty = false;
    }

    pub fn data_source(&self) -> &str {
        &self.pool.name
    }
}

impl Deref for PooledConn {
    type Target = BackendConn;
    fn deref(&self) -> &BackendConn {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut BackendConn {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.owner.is_some() {
            lock(&self.pool.owners).remove(&conn.thread_id);
        }
        let pool = self.pool.clone();
        if conn.is_broken() {
            pool.release_slot();
            return;
        }
        if !self.dirty {
            pool.put_idle(conn);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    match pool.recycle(&mut conn).await {
                        Ok(()) => pool.put_idle(conn),
                        Err(e) => {
                            tracing::debug!(data_source = %pool.name, error = %e, "closing backend connection that failed to reset");
                            pool.release_slot();
                        }
                    }
                });
            }
            Err(_) => pool.release_slot(),
        }
    }
}

/// Pings an idle connection. A health check is not use, so the idle clock keeps running.
async fn probe(conn: &mut BackendConn, timeout: Duration) -> Result<(), String> {
    let last_used = conn.last_used;
    let r = match tokio::time::timeout(timeout, conn.ping()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => {
            conn.mark_broken();
            Err("ping timed out".to_string())
        }
    };
    conn.last_used = last_used;
    r
}

/// Pings idle connections and closes those idle longer than the idle timeout.
async fn health_loop(pool: Weak<Inner>) {
    let interval = match pool.upgrade() {
        Some(p) => p.cfg.health_check_interval.0,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let due: Vec<BackendConn> = {
            let mut st = lock(&pool.state);
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.idle)
                .into_iter()
                .partition(|c| now.duration_since(c.last_used) >= interval);
            st.idle = keep;
            pool.update_gauges(&st);
            due
        };
        for mut conn in due {
            if now.duration_since(conn.last_used) >= pool.cfg.idle_timeout.0 {
                pool.release_slot();
                continue;
            }
            if probe(&mut conn, pool.cfg.connect_timeout.0).await.is_ok() {
                pool.put_idle(conn);
            } else {
                tracing::info!(data_source = %pool.name, "dropping idle backend connection that failed its health check");
                pool.release_slot();
            }
        }
    }
}
