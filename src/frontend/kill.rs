//! `KILL` through Tandem.
//!
//! A client knows two ids for a connection: Tandem's (from its handshake) and its backend
//! thread's (`CONNECTION_ID()`). `KILL [CONNECTION | QUERY] <id>` and COM_PROCESS_KILL name
//! either, and reach the backend threads the session holds now, on each of its data sources
//! (the pools know which threads each session holds). As on the database, a client may kill
//! only sessions of its own user. `KILL` is never passed to the database as written: its
//! id would name a thread Tandem's own connection could kill whoever holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::session::{Flow, Session};
use crate::backend::Pool;
use crate::wire::MysqlError;

/// Every live session of the process, by Tandem's connection id.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u32, Entry>>,
}

struct Entry {
    user: String,
    /// The pools of the session's listener: where its backend threads are.
    pools: Vec<Pool>,
    /// Wakes the session to close it (for a session that holds no backend thread).
    killed: Arc<Notify>,
}

impl Registry {
    /// Registers a session; it is forgotten when the returned guard drops.
    pub fn register(
        self: &Arc<Self>,
        id: u32,
        user: &str,
        pools: Vec<Pool>,
    ) -> (Registered, Arc<Notify>) {
        let killed = Arc::new(Notify::new());
        lock(&self.sessions).insert(
            id,
            Entry {
                user: user.to_string(),
                pools,
                killed: killed.clone(),
            },
        );
        (
            Registered {
                registry: self.clone(),
                id,
            },
            killed,
        )
    }

    /// The session an id names: Tandem's id, or a backend thread one of `pools` lent to it.
    fn resolve(&self, id: u32, pools: &[Pool]) -> Option<u32> {
        if lock(&self.sessions).contains_key(&id) {
            return Some(id);
        }
        pools.iter().find_map(|p| p.owner_of(id))
    }
}

/// Keeps a session registered while it lives.
pub struct Registered {
    registry: Arc<Registry>,
    id: u32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.registry.sessions).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a `KILL` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// Only the statement running, not the connection.
    pub query: bool,
    pub id: u32,
}

/// Reads `KILL [HARD | SOFT] [CONNECTION | QUERY] <id>`. `Err` for the forms Tandem does not
/// pass on (`KILL USER`, `KILL QUERY ID`, anything else after `KILL`).
pub fn parse(sql: &[u8]) -> Option<Result<Kill, MysqlError>> {
    let text = std::str::from_utf8(crate::sql::classify::skip_noise(sql)).ok()?;
    let text = text.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let mut words = text.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("kill") {
        return None;
    }
    let mut query = false;
    let mut rest: Vec<&str> = words.collect();
    if rest
        .first()
        .is_some_and(|w| w.eq_ignore_ascii_case("hard") || w.eq_ignore_ascii_case("soft"))
    {
        rest.remove(0);
    }
    match rest.first() {
        Some(w) if w.eq_ignore_ascii_case("connection") => {
            rest.remove(0);
        }
        Some(w) if w.eq_ignore_ascii_case("query") => {
            query = true;
            rest.remove(0);
        }
        _ => {}
    }
    let refused = || {
        Some(Err(MysqlError::not_supported(
            "this form of KILL through Tandem (only KILL [CONNECTION | QUERY] <connection id>)",
        )))
    };
    match rest.as_slice() {
        [id] => match id.parse::<u32>() {
            Ok(id) => Some(Ok(Kill { query, id })),
            Err(_) => refused(),
        },
        _ => refused(),
    }
}

impl Session {
    /// Carries out a `KILL` (text or COM_PROCESS_KILL) and answers it.
    pub(super) async fn kill(&mut self, reply_seq: u8, kill: Kill) -> Flow {
        let pools = self.pools();
        let target = self.ctx.sessions.resolve(kill.id, &pools);
        let entry = target.and_then(|t| {
            let sessions = lock(&self.ctx.sessions.sessions);
            sessions
                .get(&t)
                .map(|e| (t, e.user.clone(), e.pools.clone(), e.killed.clone()))
        });
        let Some((target, user, pools, killed)) = entry else {
            return self
                .reply_error(reply_seq, MysqlError::no_such_thread(kill.id))
                .await;
        };
        if user != self.user() {
            return self
                .reply_error(reply_seq, MysqlError::kill_denied(kill.id))
                .await;
        }
        let verb = if kill.query {
            "KILL QUERY"
        } else {
            "KILL CONNECTION"
        };
        for pool in &pools {
            for thread in pool.threads_of(target) {
                if target == self.connection_id() && kill.query {
                    // The statement running on this session's threads is this KILL.
                    continue;
                }
                let done = match pool.acquire_control().await {
                    Ok(mut c) => c.execute(&format!("{verb} {thread}")).await.map(|_| ()),
                    Err(e) => Err(crate::backend::BackendError::Protocol(e.to_string())),
                };
                // A thread that ended meanwhile (1094) is what was asked.
                if let Err(e) = done {
                    tracing::debug!(id = self.connection_id(), thread, error = %e, "KILL of a backend thread");
                }
            }
        }
        if !kill.query {
            if target == self.connection_id() {
                let _ = self
                    .reply_error(reply_seq, MysqlError::connection_killed())
                    .await;
                return Flow::Close;
            }
            killed.notify_one();
        }
        let ok = self.ok();
        self.reply(reply_seq, &ok).await
    }

    /// The pools of this session's listener: its data source, or its primary and replicas.
    pub(super) fn pools(&self) -> Vec<Pool> {
        let mut pools = vec![self.ctx.pool.clone()];
        if let Some(r) = &self.ctx.replicas {
            pools.extend(r.replicas.iter().map(|r| r.pool.clone()));
        }
        if let Some(s) = &self.ctx.sharding {
            pools = s.pools.clone();
        }
        pools
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_forms() {
        let k = |s: &str| parse(s.as_bytes()).map(|r| r.map_err(|e| e.code));
        assert_eq!(
            k("KILL 12"),
            Some(Ok(Kill {
                query: false,
                id: 12
            }))
        );
        assert_eq!(
            k("kill connection 7;"),
            Some(Ok(Kill {
                query: false,
                id: 7
            }))
        );
        assert_eq!(
            k("KILL HARD QUERY 7"),
            Some(Ok(Kill { query: true, id: 7 }))
        );
        assert_eq!(
            k("/* c */ KILL QUERY 9"),
            Some(Ok(Kill { query: true, id: 9 }))
        );
        assert_eq!(k("KILL USER app"), Some(Err(1235)));
        assert_eq!(k("KILL QUERY ID 5"), Some(Err(1235)));
        assert_eq!(k("KILL x"), Some(Err(1235)));
        assert_eq!(k("SELECT 1"), None);
        assert_eq!(k("KILLER 1"), None);
    }
}
