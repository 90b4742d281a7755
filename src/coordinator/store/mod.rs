//! Where coordinator state lives, behind one interface.
//!
//! [`Store`] is what the coordinator uses. The embedded store ([`embedded::EmbeddedStore`],
//! a redb file) and the in-memory store used in tests are both key-value stores with
//! transactions, so they share every rule through [`kv`]: the rules are written once, as
//! operations on a transaction, and each store only supplies transactions.

pub mod any;
pub mod embedded;
pub mod kv;
pub mod memory;

#[cfg(test)]
mod conformance;

use std::future::Future;

use super::model::{Branch, BranchStatus, GlobalStatus, GlobalTx, LockKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("coordinator store failed: {0}")]
    Backend(String),
    #[error("coordinator store holds unreadable data at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("global transaction {0} already exists")]
    Exists(String),
    #[error("global transaction status cannot move from {from:?} to {to:?}")]
    InvalidTransition {
        from: GlobalStatus,
        to: GlobalStatus,
    },
}

/// Why a branch could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("global transaction {0} does not exist")]
    UnknownXid(String),
    #[error("global transaction {xid} is {} and takes no new branches", .status.name())]
    NotActive { xid: String, status: GlobalStatus },
    #[error("row {key} is locked by global transaction {holder}")]
    LockConflict { key: LockKey, holder: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a compare-and-set of a global status found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The status was `from` and is now `to`.
    Moved,
    /// The status was something else (returned); nothing changed.
    Found(GlobalStatus),
    /// No such global transaction.
    NotFound,
}

/// Coordinator state: global transactions, branches, global row locks.
///
/// Every method is one atomic store operation; the doc of each says what it writes.
pub trait Store: Send + Sync + 'static {
    /// Records a new global transaction (its status is `tx.status`, normally `Begin`).
    fn create(&self, tx: &GlobalTx) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn get(&self, xid: &str) -> impl Future<Output = Result<Option<GlobalTx>, StoreError>> + Send;

    /// Every global transaction the store holds.
    fn list(&self) -> impl Future<Output = Result<Vec<GlobalTx>, StoreError>> + Send;

    /// Compare-and-set of the global status. With `release_locks`, every lock of the
    /// transaction is released in the same write (the commit decision).
    fn transition(
        &self,
        xid: &str,
        from: GlobalStatus,
        to: GlobalStatus,
        release_locks: bool,
    ) -> impl Future<Output = Result<Transition, StoreError>> + Send;

    /// Registers a branch with all of `branch.lock_keys`, all or nothing, only while the
    /// global transaction is `Begin`. Locks already held by the same XID are re-entrant.
    fn register_branch(
        &self,
        branch: &Branch,
    ) -> impl Future<Output = Result<(), RegisterError>> + Send;

    /// The branches of a transaction, in registration order.
    fn branches(&self, xid: &str) -> impl Future<Output = Result<Vec<Branch>, StoreError>> + Send;

    /// Records a branch's phase-2 outcome. A rolled-back branch's locks are released in the
    /// same write; a branch that needs attention keeps them.
    fn branch_done(
        &self,
        xid: &str,
        branch_id: u64,
        status: BranchStatus,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves a decided transaction to its final status, deleting its branches and any locks
    /// left, in one write. Compare-and-set like [`Store::transition`].
    fn finish(
        &self,
        xid: &str,
        from: GlobalStatus,
        to: GlobalStatus,
    ) -> impl Future<Output = Result<Transition, StoreError>> + Send;

    /// Deletes a transaction's record entirely (after its final status was kept long enough
    /// to answer late queries).
    fn forget(&self, xid: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The first of `keys` that some transaction other than `xid` holds, with its holder.
    fn lock_holder(
        &self,
        xid: &str,
        keys: &[LockKey],
    ) -> impl Future<Output = Result<Option<(LockKey, String)>, StoreError>> + Send;

    /// Write operations performed so far (for the store-writes-per-transaction metric).
    fn writes(&self) -> u64;
}

impl<K: kv::KvStore> Store for K {
    fn create(&self, tx: &GlobalTx) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (s, tx) = (self.clone(), tx.clone());
        async move { s.write(false, move |t| kv::create(t, &tx)).await }
    }

    fn get(&self, xid: &str) -> impl Future<Output = Result<Option<GlobalTx>, StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move { s.read(|t| kv::get_global(t, &xid)) }
    }

    fn list(&self) -> impl Future<Output = Result<Vec<GlobalTx>, StoreError>> + Send {
        let s = self.clone();
        async move { s.read(|t| kv::list_globals(t)) }
    }

    fn transition(
        &self,
        xid: &str,
        from: GlobalStatus,
        to: GlobalStatus,
        release_locks: bool,
    ) -> impl Future<Output = Result<Transition, StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move {
            s.write(true, move |t| {
                kv::transition(t, &xid, from, to, release_locks)
            })
            .await
        }
    }

    fn register_branch(
        &self,
        branch: &Branch,
    ) -> impl Future<Output = Result<(), RegisterError>> + Send {
        let (s, branch) = (self.clone(), branch.clone());
        async move {
            s.write(true, move |t| kv::register_branch(t, &branch))
                .await
        }
    }

    fn branches(&self, xid: &str) -> impl Future<Output = Result<Vec<Branch>, StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move { s.read(|t| kv::branches(t, &xid)) }
    }

    fn branch_done(
        &self,
        xid: &str,
        branch_id: u64,
        status: BranchStatus,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move {
            s.write(false, move |t| kv::branch_done(t, &xid, branch_id, status))
                .await
        }
    }

    fn finish(
        &self,
        xid: &str,
        from: GlobalStatus,
        to: GlobalStatus,
    ) -> impl Future<Output = Result<Transition, StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move { s.write(false, move |t| kv::finish(t, &xid, from, to)).await }
    }

    fn forget(&self, xid: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move { s.write(false, move |t| kv::forget(t, &xid)).await }
    }

    fn lock_holder(
        &self,
        xid: &str,
        keys: &[LockKey],
    ) -> impl Future<Output = Result<Option<(LockKey, String)>, StoreError>> + Send {
        let (s, xid, keys) = (self.clone(), xid.to_string(), keys.to_vec());
        async move { s.read(|t| kv::lock_holder(t, &xid, &keys)) }
    }

    fn writes(&self) -> u64 {
        kv::KvStore::writes(self)
    }
}
