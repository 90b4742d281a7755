//! Accepts client connections and runs a session task for each.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::net::SocketAddr;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::at::branch::AtSource;
use crate::backend::Pool;
use crate::config::ListenAddress;
use crate::coordinator::Coordinator;
use crate::exec::rw_split::Replicas;
use crate::metrics::ListenerMetrics;
use crate::wire::auth::AuthMethod;
use crate::wire::stream::ClientStream;

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
    /// `sharding`: the logical database and its shards. The session's statements are
    /// planned by it; `pool` is its first shard's.
    pub sharding: Option<Arc<crate::exec::sharding::Sharding>>,
    pub coordinator: Arc<Coordinator>,
    /// AT-mode state of the data source.
    pub at: Arc<AtSource>,
    pub tls: Option<TlsAcceptor>,
    pub tls_required: bool,
    pub max_allowed_packet: usize,
    pub auth_method: AuthMethod,
    /// Overrides the version string learned from the data source.
    pub server_version: Option<String>,
    /// The Unix socket of a listener of Tandem in front of the same executor (this one's,
    /// when it is on a socket): what `@@socket` answers.
    pub socket: Option<String>,
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

/// Where a client connected from.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A Unix socket: a process on Tandem's host.
    Unix,
}

impl Peer {
    /// The client's host as accounts and error messages name it (`localhost` over a
    /// socket, as the database says).
    pub fn host(&self) -> String {
        match self {
            Peer::Tcp(a) => a.ip().to_string(),
            Peer::Unix => "localhost".into(),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix => f.write_str("unix socket"),
        }
    }
}

/// A bound listener: TCP, or a Unix socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl Listener {
    /// Binds `address`. A Unix socket's file left behind by a process that is gone is
    /// replaced; one that a live process still accepts on is an address in use.
    pub async fn bind(address: &ListenAddress) -> std::io::Result<Listener> {
        match address {
            ListenAddress::Tcp(a) => TcpListener::bind(a).await.map(Listener::Tcp),
            ListenAddress::Unix(path) => {
                if std::fs::symlink_metadata(path).is_ok() {
                    if tokio::net::UnixStream::connect(path).await.is_ok() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            "another process accepts connections on this socket",
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                UnixListener::bind(path).map(|l| Listener::Unix(l, path.clone()))
            }
        }
    }

    async fn accept(&self) -> std::io::Result<(ClientStream, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (tcp, peer) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok((ClientStream::Plain(tcp), Peer::Tcp(peer)))
            }
            Listener::Unix(l, _) => {
                let (unix, _) = l.accept().await?;
                Ok((ClientStream::Unix(unix), Peer::Unix))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
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
    listener: Listener,
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
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let closers = closers.clone();
        let guard = sessions.clone();
        tokio::spawn(async move {
            let _guard = guard;
            ctx.metrics.connections.inc();
            ctx.metrics.connections_total.inc();
            match handshake::accept(&ctx, stream, peer).await {
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
