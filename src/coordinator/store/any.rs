//! The store chosen by configuration, as one concrete type (static dispatch: the coordinator's
//! futures stay `Send` without boxing).

use super::embedded::EmbeddedStore;
use super::etcd::EtcdStore;
use super::memory::MemoryStore;
use super::{RegisterError, Store, StoreError, Transition};
use crate::coordinator::model::{
    Branch, BranchStatus, Fence, GlobalStatus, GlobalTx, Intervention, LockKey,
};

#[derive(Clone)]
pub enum AnyStore {
    Embedded(EmbeddedStore),
    Etcd(EtcdStore),
    Memory(MemoryStore),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Embedded($s) => $e,
            AnyStore::Etcd($s) => $e,
            AnyStore::Memory($s) => $e,
        }
    };
}

impl AnyStore {
    pub async fn create(&self, tx: &GlobalTx) -> Result<(), StoreError> {
        each!(self, s => s.create(tx).await)
    }

    pub async fn get(&self, xid: &str) -> Result<Option<GlobalTx>, StoreError> {
        each!(self, s => s.get(xid).await)
    }

    pub async fn list(&self) -> Result<Vec<GlobalTx>, StoreError> {
        each!(self, s => s.list().await)
    }

    /// The transactions not yet final. The etcd store answers from its copy and the
    /// embedded store from a table of its own, which keep no others: the sweep then reads
    /// neither etcd nor the finished transactions kept for late questions (at hundreds of
    /// transactions a second, hundreds of thousands of records).
    pub async fn unfinished(&self) -> Result<Vec<GlobalTx>, StoreError> {
        match self {
            AnyStore::Etcd(s) => {
                if let Some(txs) = s.cached_unfinished() {
                    return Ok(txs);
                }
            }
            AnyStore::Embedded(s) => return s.unfinished(),
            AnyStore::Memory(_) => {}
        }
        let all = self.list().await?;
        Ok(all.into_iter().filter(|t| !t.status.is_final()).collect())
    }

    pub async fn transition(
        &self,
        xid: &str,
        from: GlobalStatus,
        to: GlobalStatus,
        release_locks: bool,
    ) -> Result<Transition, StoreError> {
        each!(self, s => s.transition(xid, from, to, release_locks).await)
    }

    pub async fn decide(
        &self,
        xid: &str,
        decision: GlobalStatus,
    ) -> Result<(Transition, GlobalStatus), StoreError> {
        each!(self, s => s.decide(xid, decision).await)
    }

    /// The branches of `xid` from the etcd store's cache when it has applied every change up
    /// to revision `seen` (a decision seen there: no branch registers after it); from the
    /// store otherwise.
    pub async fn branches_seen(
        &self,
        xid: &str,
        seen: Option<i64>,
    ) -> Result<Vec<Branch>, StoreError> {
        match (self, seen) {
            (AnyStore::Etcd(s), Some(rev)) => match s.cached_branches(xid, rev) {
                Some(b) => Ok(b),
                None => s.branches(xid).await,
            },
            _ => self.branches(xid).await,
        }
    }

    /// A transaction as the etcd store's cache last saw it (`None` elsewhere, and for
    /// finished transactions): a hint of what to look at, not an answer.
    pub fn cached(&self, xid: &str) -> Option<GlobalTx> {
        match self {
            AnyStore::Etcd(s) => s.cached_global(xid),
            _ => None,
        }
    }

    pub async fn register_branch(&self, branch: &Branch) -> Result<(), RegisterError> {
        each!(self, s => s.register_branch(branch).await)
    }

    pub async fn create_with_branches(
        &self,
        tx: &GlobalTx,
        branches: &[Branch],
    ) -> Result<(), RegisterError> {
        each!(self, s => s.create_with_branches(tx, branches).await)
    }

    pub async fn complete_registration(
        &self,
        xid: &str,
        branch_id: u64,
    ) -> Result<(), RegisterError> {
        each!(self, s => s.complete_registration(xid, branch_id).await)
    }

    pub async fn abandon_registration(&self, xid: &str, branch_id: u64) -> Result<(), StoreError> {
        each!(self, s => s.abandon_registration(xid, branch_id).await)
    }

    pub async fn branches(&self, xid: &str) -> Result<Vec<Branch>, StoreError> {
        each!(self, s => s.branches(xid).await)
    }

    pub async fn branch_done(
        &self,
        xid: &str,
        branch_id: u64,
        status: BranchStatus,
        attention: Option<String>,
    ) -> Result<(), StoreError> {
        each!(self, s => s.branch_done(xid, branch_id, status, attention).await)
    }

    pub async fn finish(
        &self,
        xid: &str,
        from: GlobalStatus,
        to: GlobalStatus,
    ) -> Result<Transition, StoreError> {
        each!(self, s => s.finish(xid, from, to).await)
    }

    pub async fn finish_branches(
        &self,
        xid: &str,
        ids: &[u64],
        fences: &[Fence],
    ) -> Result<Option<GlobalStatus>, StoreError> {
        each!(self, s => s.finish_branches(xid, ids, fences).await)
    }

    pub async fn intervene(
        &self,
        xid: &str,
        what: Intervention,
    ) -> Result<Option<GlobalTx>, StoreError> {
        each!(self, s => s.intervene(xid, what).await)
    }

    pub async fn forget(&self, xid: &str) -> Result<(), StoreError> {
        each!(self, s => s.forget(xid).await)
    }

    pub async fn release_orphan_locks(&self) -> Result<usize, StoreError> {
        each!(self, s => s.release_orphan_locks().await)
    }

    pub async fn lock_holder(
        &self,
        xid: &str,
        keys: &[LockKey],
    ) -> Result<Option<(LockKey, String)>, StoreError> {
        each!(self, s => s.lock_holder(xid, keys).await)
    }

    pub async fn identity(&self) -> Result<String, StoreError> {
        each!(self, s => Store::identity(s).await)
    }

    pub fn writes(&self) -> u64 {
        each!(self, s => Store::writes(s))
    }

    /// Operations run again because another writer changed what they read: only the etcd
    /// store runs operations optimistically.
    pub fn retries(&self) -> u64 {
        match self {
            AnyStore::Etcd(s) => s.retries(),
            _ => 0,
        }
    }
}
