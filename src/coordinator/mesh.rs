//! Membership and ownership when several Tandem processes share an etcd store.
//!
//! Each process is a node. It holds an etcd lease, kept alive in the background, and under it
//! registers itself (`{prefix}nodes/{node}`: its admin address and data sources) and claims
//! the data sources it serves (`{prefix}owners/{resource}` = its node name). A claim is a
//! create-if-absent: of several replicas serving one data source, one owns it and runs its
//! phase 2; the others try again every second and take over when the owner's lease ends (the
//! owner died or lost etcd for longer than the lease). Phase-2 writes carry a [`Fence`]: the
//! store applies them only while the owners key still names this node, so a node that lost
//! its lease cannot record phase 2 after a successor took over. When the keep-alive fails,
//! the node drops every claim at once and stops taking phase-2 work until it has a new lease;
//! phase 2 under way checks ownership before each branch and stops.
//!
//! Phase 2 is event-driven: the store's watch (which keeps its cache current) tells each node
//! when a decision appears in `globals/`, and when a branch goes from `branches/` (another
//! owner finished it, so a rollback may go on); the node runs phase 2 for its own branches.
//! After a lost connection the watch resumes from the revision after the last one applied,
//! so no event is missed; running phase 2 twice is harmless (it is idempotent and one run per
//! transaction is in flight at a time). The coordinator's periodic sweep stays as the safety
//! net, for events older than etcd's compaction.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::model::{Fence, GlobalTx};
use super::service::{Coordinator, Ownership};
use super::store::etcd::EtcdStore;
use super::store::kv::Table;
use super::store::StoreError;

/// What a node says about itself in `{prefix}nodes/{node}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    /// Its admin API, when it has one.
    pub admin: Option<String>,
    /// The data sources it serves (identities `host:port/db`).
    pub resources: Vec<String>,
}

/// One node's view of the mesh: its lease and the data sources it owns now.
pub struct Mesh {
    store: EtcdStore,
    info: NodeInfo,
    lease_ttl: Duration,
    owned: Mutex<HashSet<String>>,
}

fn etcd_err(e: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

impl Ownership for Mesh {
    fn fence(&self, resource: &str) -> Option<Fence> {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(resource)
            .then(|| Fence {
                resource: resource.to_string(),
                node: self.info.node.clone(),
            })
    }
}

impl Mesh {
    /// Joins the mesh: starts the lease, registration and claims in the background; they
    /// stop when `shutdown` turns true (the lease is then revoked, so successors take over
    /// at once).
    pub fn join(
        store: EtcdStore,
        info: NodeInfo,
        lease_ttl: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Mesh> {
        let mesh = Arc::new(Mesh {
            store,
            info,
            lease_ttl,
            owned: Mutex::new(HashSet::new()),
        });
        tokio::spawn(mesh.clone().run(shutdown));
        mesh
    }

    pub fn node(&self) -> &str {
        &self.info.node
    }

    /// Runs phase 2 as decisions and finished branches appear in the store (as the store's
    /// watch brings them).
    pub fn watch_decisions(&self, coordinator: &Arc<Coordinator>) {
        // Weak: the store holds its subscribers, and the coordinator holds the store.
        let c = Arc::downgrade(coordinator);
        self.store
            .subscribe(Arc::new(move |table, key, value, rev| {
                let Some(c) = c.upgrade() else { return };
                match (table, value) {
                    (Table::Globals, Some(v)) => {
                        if let Ok(tx) = serde_json::from_slice::<GlobalTx>(v) {
                            c.changed(&tx, rev);
                        }
                    }
                    // A branch record goes when its phase 2 is done: in a rollback, the
                    // branch before it may go now.
                    (Table::Branches, None) => {
                        if let Some(xid) = key.split('\0').next() {
                            c.nudge(xid, rev);
                        }
                    }
                    _ => {}
                }
            }));
    }

    fn set_owned(&self, owned: HashSet<String>) {
        *self.owned.lock().unwrap_or_else(|e| e.into_inner()) = owned;
    }

    /// Lease after lease: register, claim, keep alive; on any failure drop every claim and
    /// start again.
    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let session = self.session();
            let stop = async {
                let _ = shutdown.wait_for(|s| *s).await;
            };
            tokio::select! {
                r = session => {
                    self.set_owned(HashSet::new());
                    if let Err(e) = r {
                        tracing::warn!(node = %self.info.node, error = %e, "lost the etcd lease; data sources released until a new one");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ = stop => {
                    self.set_owned(HashSet::new());
                    return;
                }
            }
        }
    }

    /// One lease's life. Returns when the lease cannot be kept.
    async fn session(&self) -> Result<(), StoreError> {
        let mut client = self.store.client();
        let ttl = self.lease_ttl.as_secs().max(2) as i64;
        let lease = client.lease_grant(ttl, None).await.map_err(etcd_err)?.id();
        // Revokes the lease however this session ends, so claims go at once.
        let _revoke = RevokeOnDrop {
            client: client.clone(),
            lease,
        };
        let node_key = self.store.key(Table::Nodes, &self.info.node);
        let info = serde_json::to_vec(&self.info).unwrap_or_default();
        client
            .put(node_key, info, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(etcd_err)?;
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.map_err(etcd_err)?;
        let every = Duration::from_secs((ttl / 3).max(1) as u64);
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            keeper.keep_alive().await.map_err(etcd_err)?;
            let alive = tokio::time::timeout(every, answers.message())
                .await
                .map_err(|_| StoreError::Backend("etcd: lease keep-alive timed out".into()))?
                .map_err(etcd_err)?;
            if alive.is_none_or(|a| a.ttl() <= 0) {
                return Err(StoreError::Backend("etcd: the lease expired".into()));
            }
            let owned = self.claim(&mut client, lease).await?;
            self.set_owned(owned);
        }
    }

    /// Claims every data source that has no owner, and reports which this node owns.
    async fn claim(&self, client: &mut Client, lease: i64) -> Result<HashSet<String>, StoreError> {
        let me = serde_json::to_vec(&self.info.node).unwrap_or_default();
        let mut owned = HashSet::new();
        for resource in &self.info.resources {
            let key = self.store.key(Table::Owners, resource);
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key.clone(),
                    me.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else(vec![TxnOp::get(key.clone(), None)]);
            let resp = client.txn(txn).await.map_err(etcd_err)?;
            let mine = resp.succeeded() || {
                let current = client.get(key, None).await.map_err(etcd_err)?;
                current
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.value() == me.as_slice() && kv.lease() == lease)
            };
            if mine {
                owned.insert(resource.clone());
            }
        }
        Ok(owned)
    }

    /// Every live node, and what each owns: the mesh as etcd sees it now.
    pub async fn members(&self) -> Result<Vec<(NodeInfo, Vec<String>)>, StoreError> {
        let mut client = self.store.client();
        let nodes_prefix = self.store.key(Table::Nodes, "");
        let owners_prefix = self.store.key(Table::Owners, "");
        let nodes = client
            .get(nodes_prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err)?;
        let owners = client
            .get(owners_prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err)?;
        let mut out = Vec::new();
        for kv in nodes.kvs() {
            let Ok(info) = serde_json::from_slice::<NodeInfo>(kv.value()) else {
                continue;
            };
            let owns = owners
                .kvs()
                .iter()
                .filter(|o| {
                    serde_json::from_slice::<String>(o.value()).ok().as_ref() == Some(&info.node)
                })
                .filter_map(|o| o.key().get(owners_prefix.len()..))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            out.push((info, owns));
        }
        Ok(out)
    }
}

/// Revokes the session's lease when the session ends, so its claims go at once.
struct RevokeOnDrop {
    client: Client,
    lease: i64,
}

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        let (mut client, lease) = (self.client.clone(), self.lease);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = client.lease_revoke(lease).await;
            });
        }
    }
}
