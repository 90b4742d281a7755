//! Accepts client connections and runs a session task for each.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::at::branch::AtSource;
use crate::backend::Pool;
use crate::coordinator::Coordinator;
use crate::exec::rw_split::Replicas;
use crate::metrics::ListenerMetrics;
use crate::wire::auth::AuthMethod;

use super::handshake;

/// Everything a session needs from its listener, shared by all its clients.
pub struct ListenerContext {
    pub name: String,
    pub users: BTreeMap<String, String>,
    /// The executor's one data source (mode: single), or its primary (mode: rw_split).
    pub pool: Pool,
    /// `rw_split`: the replicas reads may go to. `None` in single mode, whose sessions never
    /// ask the planner.
    pub replicas: Option<Arc<Replicas>>,
    /// `rw_split`: a session's reads see its earlier writes.
    pub read_your_writes: bool,
    pub coordinator: Arc<Coordinator>,
    /// AT-mode state of the data source.
    pub at: Arc<AtSource>,
    pub tls: Option<TlsAcceptor>,
    pub tls_required: bool,
    pub max_allowed_packet: usize,
    pub auth_method: AuthMethod,
    /// Overrides the version string learned from the data source.
    pub server_version: Option<String>,
    pub metrics: ListenerMetrics,
    /// Connection ids shown to clients, unique across the whole Tandem process.
    pub connection_ids: Arc<AtomicU32>,
    /// Every live session of the process, for `KILL`.
    pub sessions: Arc<super::kill::Registry>,
}

impl ListenerContext {
    pub fn next_connection_id(&self) -> u32 {
        self.connection_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// The sessions to close when draining. Each session waits on a oneshot receiver, which costs
/// one atomic check per command; dropping the sender wakes it.
#[derive(Default)]
struct Closers {
    draining: bool,
    senders: HashMap<u32, oneshot::Sender<()>>,
}

/// Accepts clients until `shutdown` turns true. Each session holds a clone of `sessions`, so
/// the caller knows all sessions ended when the channel closes.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    mut shutdown: watch::Receiver<bool>,
    sessions: mpsc::Sender<()>,
) {
    let closers = Arc::new(Mutex::new(Closers::default()));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let closers = closers.clone();
        let guard = sessions.clone();
        tokio::spawn(async move {
            let _guard = guard;
            ctx.metrics.connections.inc();
            ctx.metrics.connections_total.inc();
            match handshake::accept(&ctx, tcp, peer).await {
                Ok(Some(session)) => {
                    let id = session.connection_id();
                    let (tx, rx) = oneshot::channel();
                    {
                        let mut c = lock(&closers);
                        if !c.draining {
                            c.senders.insert(id, tx);
                        }
                    }
                    session.run(rx).await;
                    lock(&closers).senders.remove(&id);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(listener = %ctx.name, %peer, error = %e, "handshake failed")
                }
            }
            ctx.metrics.connections.dec();
        });
    }
    let mut c = lock(&closers);
    c.draining = true;
    c.senders.clear();
    drop(c);
    tracing::info!(listener = %ctx.name, "stopped accepting connections");
}

fn lock(m: &Mutex<Closers>) -> std::sync::MutexGuard<'_, Closers> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
