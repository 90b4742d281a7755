//! Starts Tandem from a validated config and runs it until shutdown.
//!
//! Shutdown is a drain: listeners stop accepting, idle sessions close at once, sessions in the
//! middle of a statement finish it, and after `drain_timeout` whatever remains is dropped.

use std::future::Future;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::at::branch::{AtSource, LockRetry};
use crate::at::meta::MetaCache;
use crate::at::rm::AtResource;
use crate::backend::{health, Pool};
use crate::config::{self, AuthPlugin, Config, Dsn, Mode, StoreKind};
use crate::coordinator::mesh::{Mesh, NodeInfo};
use crate::coordinator::store::any::AnyStore;
use crate::coordinator::store::embedded::EmbeddedStore;
use crate::coordinator::store::etcd::EtcdStore;
use crate::coordinator::Coordinator;
use crate::exec::rw_split::{Replica, Replicas};
use crate::exec::sharding::xa::{self, XaResource};
use crate::exec::sharding::Sharding;
use crate::frontend::{self, ListenerContext};
use crate::http::admin::{self, AdminState};
use crate::http::sidecar::{self, Sidecar};
use crate::http::tcc::TccResource;
use crate::metrics::{CoordinatorMetrics, Metrics};
use crate::planner::sharding::Topology;
use crate::wire::auth::AuthMethod;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{field}: cannot listen on {address}: {source}")]
    Bind {
        field: String,
        address: String,
        source: std::io::Error,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// Runs Tandem until `shutdown` completes, then drains.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());

    let mut pools = Vec::new();
    for (i, ds) in config.data_sources.iter().enumerate() {
        let dsn = Dsn::parse(&ds.dsn).map_err(|message| StartError::Invalid {
            field: format!("data_sources[{i}].dsn"),
            message,
        })?;
        let pool = Pool::new(&ds.name, dsn, ds.pool.clone(), metrics.pool(&ds.name));
        // Learn the server's version and capabilities now, so the first clients see them;
        // a data source that is down is not fatal: clients get an error until it is back.
        if let Err(e) = pool.check().await {
            tracing::warn!(data_source = %ds.name, error = %e, "data source not reachable at start-up");
        }
        pools.push(pool);
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let coordinator = open_coordinator(&config, metrics.coordinator()).await?;
    let replicas = replica_names(&config);
    let at_sources: Vec<Arc<AtSource>> = pools
        .iter()
        .map(|pool| {
            let resource = Arc::new(AtResource::new(
                pool.clone(),
                config.coordinator.finished_marker_retention.0,
            ));
            if !replicas.contains(pool.name()) {
                coordinator.register_resource(&resource.identity(), resource.clone());
            }
            Arc::new(AtSource {
                server: pool.dsn().server_identity(),
                resource,
                meta: MetaCache::default(),
                lock_retry: LockRetry {
                    interval: config.coordinator.lock_retry_interval.0,
                    attempts: config.coordinator.lock_retry_attempts,
                },
            })
        })
        .collect();
    // Each data source's part in distributed commits of sharded transactions (its XA
    // branches), registered when some sharding executor has it as a shard.
    let shard_names: std::collections::HashSet<&str> = config
        .executors
        .iter()
        .filter(|e| e.mode == Mode::Sharding)
        .flat_map(|e| e.shards.iter().map(String::as_str))
        .collect();
    let store_identity = if shard_names.is_empty() {
        String::new()
    } else {
        coordinator
            .store()
            .identity()
            .await
            .map_err(|e| StartError::Invalid {
                field: "coordinator".into(),
                message: e.to_string(),
            })?
    };
    let xa_resources: Vec<Arc<XaResource>> = pools
        .iter()
        .map(|pool| {
            let r = Arc::new(XaResource::new(pool.clone(), &store_identity));
            if shard_names.contains(pool.name()) {
                coordinator.register_resource(r.identity(), r.clone());
            }
            r
        })
        .collect();
    // The TCC resources of the HTTP sidecars, one list per sidecar.
    let tcc_resources: Vec<Vec<Arc<TccResource>>> = config
        .http_sidecars
        .iter()
        .map(|h| {
            h.tcc
                .iter()
                .map(|t| {
                    let r = Arc::new(TccResource::new(h, t));
                    coordinator.register_resource(r.identity(), r.clone());
                    r
                })
                .collect()
        })
        .collect();
    // With a shared store, phase 2 is run for owned data sources only: join the mesh before
    // the sweep starts.
    let mesh = match (coordinator.store(), &config.coordinator.etcd) {
        (AnyStore::Etcd(store), Some(etcd)) => {
            let info = NodeInfo {
                node: etcd.node_name.clone().unwrap_or_else(node_name),
                admin: config.admin.as_ref().map(|a| a.address.clone()),
                resources: at_sources
                    .iter()
                    .zip(&pools)
                    .filter(|(_, p)| !replicas.contains(p.name()))
                    .map(|(a, _)| a.resource.identity())
                    .chain(
                        tcc_resources
                            .iter()
                            .flatten()
                            .map(|t| t.identity().to_string()),
                    )
                    .chain(
                        xa_resources
                            .iter()
                            .filter(|r| shard_names.contains(r.pool().name()))
                            .map(|r| r.identity().to_string()),
                    )
                    .collect(),
            };
            tracing::info!(node = %info.node, "joining the mesh of sidecars sharing etcd");
            let mesh = Mesh::join(store.clone(), info, etcd.lease_ttl.0, shutdown_rx.clone());
            coordinator.set_ownership(mesh.clone());
            mesh.watch_decisions(&coordinator);
            Some(mesh)
        }
        _ => None,
    };
    // In a mesh, watches bring the work; the sweep is the safety net (and the timeouts).
    let sweep = if mesh.is_some() {
        MESH_SWEEP_INTERVAL
    } else {
        SWEEP_INTERVAL
    };
    coordinator.spawn_sweeper(sweep, shutdown_rx.clone());
    let (sessions_tx, mut sessions_rx) = mpsc::channel::<()>(1);
    let connection_ids = Arc::new(AtomicU32::new(1));
    let sessions = Arc::new(frontend::kill::Registry::default());

    // XA transactions a crash left prepared on the shards, once per shard, before any
    // session can start one.
    for shard in xa_resources
        .iter()
        .filter(|r| shard_names.contains(r.pool().name()))
    {
        match xa::recover(shard, &coordinator, mesh.is_none()).await {
            Ok(r) if r == xa::Recovered::default() => {}
            Ok(r) => tracing::info!(shard = shard.pool().name(), ?r, "recovered XA transactions"),
            Err(e) => {
                tracing::warn!(error = %e, "recovering XA transactions failed; phase 2 retries them")
            }
        }
    }
    for (i, l) in config.listeners.iter().enumerate() {
        let backends = executor_backends(
            &config,
            &pools,
            &at_sources,
            &xa_resources,
            &l.executor,
            &metrics,
            &shutdown_rx,
        )
        .ok_or_else(|| StartError::Invalid {
            field: format!("listeners[{i}].executor"),
            message: format!("no usable executor '{}'", l.executor),
        })?;
        if let Some(sharding) = &backends.sharding {
            let e = config
                .executors
                .iter()
                .position(|e| e.name == l.executor)
                .unwrap_or_default();
            sharding
                .learn_tables()
                .await
                .map_err(|err| StartError::Invalid {
                    field: format!("executors[{e}]"),
                    message: err.to_string(),
                })?;
        }
        let tls =
            match &l.tls {
                Some(t) => Some(frontend::tls::acceptor(&t.cert, &t.key).map_err(|e| {
                    StartError::Invalid {
                        field: format!("listeners[{i}].tls"),
                        message: e.to_string(),
                    }
                })?),
                None => None,
            };
        let address =
            config::parse_listen_address(&l.address).map_err(|message| StartError::Invalid {
                field: format!("listeners[{i}].address"),
                message,
            })?;
        let listener = frontend::listener::Listener::bind(&address)
            .await
            .map_err(|source| StartError::Bind {
                field: format!("listeners[{i}].address"),
                address: l.address.clone(),
                source,
            })?;
        let ctx = Arc::new(ListenerContext {
            name: l.name.clone(),
            users: l.users.clone(),
            pool: backends.pool,
            replicas: backends.replicas,
            read_your_writes: backends.read_your_writes,
            sharding: backends.sharding,
            coordinator: coordinator.clone(),
            at: backends.at,
            tls_required: l.tls.as_ref().is_some_and(|t| t.required),
            tls,
            max_allowed_packet: l.max_allowed_packet.0 as usize,
            auth_method: match l.auth_plugin {
                AuthPlugin::MysqlNativePassword => AuthMethod::Native,
                AuthPlugin::CachingSha2Password => AuthMethod::CachingSha2,
            },
            server_version: l.server_version.clone(),
            socket: own_socket(&config, i),
            metrics: metrics.listener(&l.name),
            connection_ids: connection_ids.clone(),
            sessions: sessions.clone(),
        });
        tracing::info!(listener = %l.name, address = %address, "listening");
        tokio::spawn(frontend::serve(
            listener,
            ctx,
            shutdown_rx.clone(),
            sessions_tx.clone(),
        ));
    }
    drop(sessions_tx);

    let admin_task = match &config.admin {
        Some(a) => {
            let address =
                config::parse_address(&a.address).map_err(|message| StartError::Invalid {
                    field: "admin.address".into(),
                    message,
                })?;
            let listener = TcpListener::bind(address)
                .await
                .map_err(|source| StartError::Bind {
                    field: "admin.address".into(),
                    address: a.address.clone(),
                    source,
                })?;
            tracing::info!(address = %address, "admin API listening");
            let state = Arc::new(AdminState {
                metrics: metrics.clone(),
                pools: pools.clone(),
                coordinator: coordinator.clone(),
                mesh: mesh.clone(),
            });
            Some(tokio::spawn(admin::serve(
                listener,
                state,
                shutdown_rx.clone(),
            )))
        }
        None => None,
    };

    let mut sidecar_tasks = Vec::new();
    for (i, h) in config.http_sidecars.iter().enumerate() {
        let field = |f: &str| format!("http_sidecars[{i}].{f}");
        let address = config::parse_address(&h.address).map_err(|message| StartError::Invalid {
            field: field("address"),
            message,
        })?;
        let sidecar =
            Sidecar::new(h, tcc_resources[i].clone(), coordinator.clone()).map_err(|e| {
                StartError::Invalid {
                    field: field("transactions"),
                    message: e.to_string(),
                }
            })?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| StartError::Bind {
                field: field("address"),
                address: h.address.clone(),
                source,
            })?;
        tracing::info!(sidecar = %h.name, address = %address, upstream = %h.upstream, "HTTP sidecar listening");
        sidecar_tasks.push(tokio::spawn(sidecar::serve(
            listener,
            Arc::new(sidecar),
            shutdown_rx.clone(),
        )));
    }

    tracing::info!("tandem ready");
    shutdown.await;
    tracing::info!(drain_timeout = ?config.drain_timeout.0, "shutting down");
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout(config.drain_timeout.0, sessions_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached with sessions still running");
    }
    for t in admin_task.into_iter().chain(sidecar_tasks) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), t).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// How often the coordinator looks for timed-out transactions and unfinished phase 2.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// The sweep of a sidecar in a mesh, where etcd watches bring phase-2 work at once.
const MESH_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// How often each replica's monitor asks how its replication stands.
const REPLICA_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens the coordinator store. Its background sweep (which first finishes any phase 2 a
/// previous run left undone) is started once the resources are known.
async fn open_coordinator(
    config: &Config,
    metrics: CoordinatorMetrics,
) -> Result<Arc<Coordinator>, StartError> {
    let c = &config.coordinator;
    let store = match (&c.store, &c.etcd) {
        (StoreKind::Embedded, _) => {
            AnyStore::Embedded(EmbeddedStore::open(&c.embedded.path).map_err(|e| {
                StartError::Invalid {
                    field: "coordinator.embedded.path".into(),
                    message: e.to_string(),
                }
            })?)
        }
        (StoreKind::Etcd, Some(etcd)) => AnyStore::Etcd(EtcdStore::connect(etcd).await.map_err(
            |e| StartError::Invalid {
                field: "coordinator.etcd.endpoints".into(),
                message: e.to_string(),
            },
        )?),
        (StoreKind::Etcd, None) => {
            return Err(StartError::Invalid {
                field: "coordinator.etcd".into(),
                message: "store: etcd needs the etcd section".into(),
            })
        }
    };
    Ok(Coordinator::new(store, c.default_timeout.0, metrics))
}

/// A node name for this process: the host name and a random suffix.
fn node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tandem".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// What a listener's executor gives its sessions: the pool every session's statements use
/// (the single data source, or the primary), its AT state, and for `rw_split` the replicas.
struct Backends {
    pool: Pool,
    at: Arc<AtSource>,
    replicas: Option<Arc<Replicas>>,
    read_your_writes: bool,
    sharding: Option<Arc<Sharding>>,
}

fn executor_backends(
    config: &Config,
    pools: &[Pool],
    at: &[Arc<AtSource>],
    xa_resources: &[Arc<XaResource>],
    executor: &str,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Option<Backends> {
    let e = config.executors.iter().find(|e| e.name == executor)?;
    let pool_of = |name: &str| pools.iter().position(|p| p.name() == name);
    match e.mode {
        Mode::Single => {
            let i = pool_of(e.data_source.as_deref()?)?;
            Some(Backends {
                pool: pools[i].clone(),
                at: at.get(i)?.clone(),
                replicas: None,
                read_your_writes: false,
                sharding: None,
            })
        }
        Mode::RwSplit => {
            let i = pool_of(e.primary.as_deref()?)?;
            let mut replicas = Vec::new();
            for r in &e.replicas {
                let pool = pools[pool_of(&r.data_source)?].clone();
                let health = health::monitor(
                    pool.clone(),
                    e.max_replica_lag().0,
                    REPLICA_CHECK_INTERVAL,
                    metrics.replica_lag(&r.data_source),
                    shutdown.clone(),
                );
                replicas.push(Replica {
                    pool,
                    weight: r.weight,
                    health,
                });
            }
            Some(Backends {
                pool: pools[i].clone(),
                at: at.get(i)?.clone(),
                replicas: Some(Arc::new(Replicas { replicas })),
                read_your_writes: e.read_your_writes(),
                sharding: None,
            })
        }
        Mode::Sharding => {
            let mut shards = Vec::new();
            let (mut xa, mut at_shards) = (Vec::new(), Vec::new());
            for name in &e.shards {
                let i = pool_of(name)?;
                shards.push(pools[i].clone());
                xa.push(xa_resources[i].clone());
                at_shards.push(at.get(i)?.clone());
            }
            let first = pool_of(e.shards.first()?)?;
            let topology = Topology::new(e).ok()?;
            Some(Backends {
                pool: pools[first].clone(),
                at: at.get(first)?.clone(),
                replicas: None,
                read_your_writes: false,
                sharding: Some(Arc::new(Sharding::new(topology, shards, xa, at_shards))),
            })
        }
    }
}

/// The data sources that are replicas of an `rw_split` executor: they take no branches
/// (read-only, and written only by replication).
fn replica_names(config: &Config) -> std::collections::HashSet<&str> {
    config
        .executors
        .iter()
        .flat_map(|e| e.replicas.iter().map(|r| r.data_source.as_str()))
        .collect()
}

/// The Unix socket `@@socket` answers on listener `i`: its own, or else that of another
/// listener in front of the same executor.
fn own_socket(config: &Config, i: usize) -> Option<String> {
    let this = &config.listeners[i];
    let socket = |l: &config::Listener| match config::parse_listen_address(&l.address) {
        Ok(config::ListenAddress::Unix(path)) => Some(path.display().to_string()),
        _ => None,
    };
    socket(this).or_else(|| {
        config
            .listeners
            .iter()
            .filter(|l| l.executor == this.executor)
            .find_map(socket)
    })
}
