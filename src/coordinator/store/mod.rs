//! Where coordinator state lives, behind one interface.
//!
//! [`Store`] is what the coordinator uses. The embedded store ([`embedded::EmbeddedStore`],
//! a redb file), the etcd store ([`etcd::EtcdStore`]) and the in-memory store used in tests
//! are all key-value stores with transactions, so they share every rule through [`kv`]: the
//! rules are written once, as operations on a transaction, and each store only supplies
//! transactions.

pub mod any;
pub mod embedded;
pub mod etcd;
pub mod kv;
pub mod memory;

#[cfg(test)]
mod conformance;

use std::future::Future;

use super::model::{Branch, BranchStatus, Fence, GlobalStatus, GlobalTx, Intervention, LockKey};

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
    /// Another node owns the resource now: its phase 2 is not this node's to record.
    #[error("this node no longer owns {0}")]
    NotOwner(String),
    /// The operation touches more keys than the store applies in one atomic write; the
    /// caller may split it where splitting is safe.
    #[error("coordinator store: one operation touches more keys than one write can hold")]
    TooLarge,
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
    /// The transaction is still `Begin` but past its timeout: it must be rolled back.
    #[error("global transaction {0} has timed out")]
    Expired(String),
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

    /// Decides a `Begin` transaction (see [`kv::decide`]): moves it to `decision`, or to
    /// `TimeoutRollbacking` when that is a commit past the timeout; the commit decision
    /// releases every lock in the same write. Returns what happened and the decision applied.
    fn decide(
        &self,
        xid: &str,
        decision: GlobalStatus,
    ) -> impl Future<Output = Result<(Transition, GlobalStatus), StoreError>> + Send;

    /// Registers a branch with all of `branch.lock_keys`, all or nothing, only while the
    /// global transaction is `Begin`. Locks already held by the same XID are re-entrant.
    fn register_branch(
        &self,
        branch: &Branch,
    ) -> impl Future<Output = Result<(), RegisterError>> + Send;

    /// [`Store::create`] and [`Store::register_branch`] of each of `branches`, in one
    /// durable write when one holds them (a distributed commit's transaction, whose
    /// branches are known when it begins); otherwise one after another.
    fn create_with_branches(
        &self,
        tx: &GlobalTx,
        branches: &[Branch],
    ) -> impl Future<Output = Result<(), RegisterError>> + Send;

    /// Ends a registration begun as `Registering` (a branch whose work is still under way,
    /// such as a TCC prepare): it becomes `Registered`, only while the transaction is `Begin`.
    fn complete_registration(
        &self,
        xid: &str,
        branch_id: u64,
    ) -> impl Future<Output = Result<(), RegisterError>> + Send;

    /// Removes a branch still `Registering` whose work failed, with any locks it took.
    fn abandon_registration(
        &self,
        xid: &str,
        branch_id: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The branches of a transaction, in registration order.
    fn branches(&self, xid: &str) -> impl Future<Output = Result<Vec<Branch>, StoreError>> + Send;

    /// Records a branch's phase-2 outcome, with why it needs attention when it does. A
    /// rolled-back branch's locks are released in the same write; a branch that needs
    /// attention keeps them.
    fn branch_done(
        &self,
        xid: &str,
        branch_id: u64,
        status: BranchStatus,
        attention: Option<String>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves a decided transaction to its final status, deleting its branches and any locks
    /// left, in one write. Compare-and-set like [`Store::transition`].
    fn finish(
        &self,
        xid: &str,
        from: GlobalStatus,
        to: GlobalStatus,
    ) -> impl Future<Output = Result<Transition, StoreError>> + Send;

    /// Records that phase 2 of branches `ids` is done: deletes them and releases their locks
    /// in one write, and when no branch is left moves the transaction to its final status
    /// (returned). With fences, only while each fence's node owns its resource.
    fn finish_branches(
        &self,
        xid: &str,
        ids: &[u64],
        fences: &[Fence],
    ) -> impl Future<Output = Result<Option<GlobalStatus>, StoreError>> + Send;

    /// Records a person's request about a decided, unfinished transaction, in one write (see
    /// [`kv::intervene`]). Returns the transaction as it is now.
    fn intervene(
        &self,
        xid: &str,
        what: Intervention,
    ) -> impl Future<Output = Result<Option<GlobalTx>, StoreError>> + Send;

    /// Deletes a transaction's record entirely (after its final status was kept long enough
    /// to answer late queries).
    fn forget(&self, xid: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The first of `keys` that some transaction other than `xid` holds, with its holder.
    fn lock_holder(
        &self,
        xid: &str,
        keys: &[LockKey],
    ) -> impl Future<Output = Result<Option<(LockKey, String)>, StoreError>> + Send;

    /// Releases every lock whose holder is final or forgotten, and returns how many. Locks go
    /// with the decision or the finish that ends their transaction; a release split over
    /// several writes (more locks than one write holds) that a crash cut short is what
    /// leaves them, and the sweep calls this now and then to find them.
    fn release_orphan_locks(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Write operations performed so far (for the store-writes-per-transaction metric).
    fn writes(&self) -> u64;

    /// The store's identity: random, made by its first user and kept, so that whatever
    /// Tandem leaves in a database under this store's name (a prepared XA transaction) is
    /// told apart from what another deployment with its own store left there.
    fn identity(&self) -> impl Future<Output = Result<String, StoreError>> + Send;
}

impl<K: kv::KvStore> Store for K {
    fn identity(&self) -> impl Future<Output = Result<String, StoreError>> + Send {
        let s = self.clone();
        async move {
            s.write(true, |t| {
                if let Some(v) = t.get(kv::Table::Meta, "identity")? {
                    return String::from_utf8(v).map_err(|_| StoreError::Corrupt {
                        key: "meta/identity".into(),
                        reason: "not UTF-8".into(),
                    });
                }
                let id = format!("{:016x}", rand::random::<u64>());
                t.put(kv::Table::Meta, "identity", id.clone().into_bytes())?;
                Ok(id)
            })
            .await
        }
    }

    fn create(&self, tx: &GlobalTx) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (s, tx) = (self.clone(), tx.clone());
        async move { s.write(false, move |t| kv::create(t, &tx)).await }
    }

    fn get(&self, xid: &str) -> impl Future<Output = Result<Option<GlobalTx>, StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move { s.read(move |t| kv::get_global(t, &xid)).await }
    }

    fn list(&self) -> impl Future<Output = Result<Vec<GlobalTx>, StoreError>> + Send {
        let s = self.clone();
        async move { s.read(move |t| kv::list_globals(t)).await }
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
            let x = xid.clone();
            let one_write = s
                .write(true, move |t| {
                    kv::transition(t, &x, from, to, release_locks)
                })
                .await;
            match one_write {
                Err(StoreError::TooLarge) if release_locks => {
                    let x = xid.clone();
                    let moved = s
                        .write(true, move |t| kv::transition(t, &x, from, to, false))
                        .await?;
                    if moved == Transition::Moved {
                        release_in_slices(&s, &xid, None).await?;
                    }
                    Ok(moved)
                }
                r => r,
            }
        }
    }

    fn decide(
        &self,
        xid: &str,
        decision: GlobalStatus,
    ) -> impl Future<Output = Result<(Transition, GlobalStatus), StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move {
            let x = xid.clone();
            let one_write = s
                .write(true, move |t| kv::decide(t, &x, decision, true))
                .await;
            match one_write {
                Err(StoreError::TooLarge) => {
                    let x = xid.clone();
                    let (moved, to) = s
                        .write(true, move |t| kv::decide(t, &x, decision, false))
                        .await?;
                    if moved == Transition::Moved && to == GlobalStatus::Committing {
                        release_in_slices(&s, &xid, None).await?;
                    }
                    Ok((moved, to))
                }
                r => r,
            }
        }
    }

    fn register_branch(
        &self,
        branch: &Branch,
    ) -> impl Future<Output = Result<(), RegisterError>> + Send {
        let (s, branch) = (self.clone(), branch.clone());
        async move {
            match s.keys_per_write() {
                Some(limit) if branch.lock_keys.len() + KEYS_BESIDE_LOCKS > limit => {
                    register_in_steps(&s, branch, limit.saturating_sub(KEYS_BESIDE_LOCKS).max(1))
                        .await
                }
                _ => {
                    s.write(true, move |t| kv::register_branch(t, &branch))
                        .await
                }
            }
        }
    }

    fn create_with_branches(
        &self,
        tx: &GlobalTx,
        branches: &[Branch],
    ) -> impl Future<Output = Result<(), RegisterError>> + Send {
        let (s, tx, branches) = (self.clone(), tx.clone(), branches.to_vec());
        async move {
            let keys: usize = branches
                .iter()
                .map(|b| b.lock_keys.len() + KEYS_BESIDE_LOCKS)
                .sum::<usize>()
                + KEYS_BESIDE_LOCKS;
            if s.keys_per_write().is_some_and(|limit| keys > limit) {
                Store::create(&s, &tx).await?;
                for b in &branches {
                    Store::register_branch(&s, b).await?;
                }
                return Ok(());
            }
            s.write(true, move |t| kv::create_with_branches(t, &tx, &branches))
                .await
        }
    }

    fn complete_registration(
        &self,
        xid: &str,
        branch_id: u64,
    ) -> impl Future<Output = Result<(), RegisterError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move {
            s.write(true, move |t| kv::complete_registration(t, &xid, branch_id))
                .await
        }
    }

    fn abandon_registration(
        &self,
        xid: &str,
        branch_id: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move {
            release_in_slices(&s, &xid, Some(branch_id)).await?;
            s.write(false, move |t| kv::abandon_registration(t, &xid, branch_id))
                .await
        }
    }

    fn branches(&self, xid: &str) -> impl Future<Output = Result<Vec<Branch>, StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move { s.read(move |t| kv::branches(t, &xid)).await }
    }

    fn branch_done(
        &self,
        xid: &str,
        branch_id: u64,
        status: BranchStatus,
        attention: Option<String>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move {
            let release = async {
                if status == BranchStatus::RolledBack {
                    release_in_slices(&s, &xid, Some(branch_id)).await?;
                }
                Ok(())
            };
            let x = xid.clone();
            or_release_first(&s, false, release, move |t, released| {
                kv::branch_done(t, &x, branch_id, status, attention.clone(), released)
            })
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
        async move {
            let release = async {
                // Only a decided transaction finishes: releasing early is safe.
                if s.get(&xid).await?.map(|t| t.status) == Some(from) {
                    release_in_slices(&s, &xid, None).await?;
                }
                Ok(())
            };
            let x = xid.clone();
            or_release_first(&s, false, release, move |t, released| {
                kv::finish(t, &x, from, to, released)
            })
            .await
        }
    }

    fn finish_branches(
        &self,
        xid: &str,
        ids: &[u64],
        fences: &[Fence],
    ) -> impl Future<Output = Result<Option<GlobalStatus>, StoreError>> + Send {
        let (s, xid, ids, fences) = (self.clone(), xid.to_string(), ids.to_vec(), fences.to_vec());
        async move {
            let release = async {
                for id in &ids {
                    release_in_slices(&s, &xid, Some(*id)).await?;
                }
                Ok(())
            };
            let (x, i) = (xid.clone(), ids.clone());
            let finished = or_release_first(&s, true, release, move |t, released| {
                kv::finish_branches(t, &x, &i, &fences, released)
            })
            .await?;
            Ok(finished.and_then(|(status, applied)| applied.get().then_some(status)))
        }
    }

    fn intervene(
        &self,
        xid: &str,
        what: Intervention,
    ) -> impl Future<Output = Result<Option<GlobalTx>, StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move { s.write(true, move |t| kv::intervene(t, &xid, what)).await }
    }

    fn forget(&self, xid: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (s, xid) = (self.clone(), xid.to_string());
        async move {
            let x = xid.clone();
            let release = release_in_slices(&s, &xid, None);
            or_release_first(&s, false, release, move |t, released| {
                kv::forget(t, &x, released)
            })
            .await
        }
    }

    fn release_orphan_locks(&self) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let s = self.clone();
        async move {
            let locks = s.read(|t| t.scan(kv::Table::Locks, "")).await?;
            let mut by_holder: std::collections::BTreeMap<String, Vec<LockKey>> =
                std::collections::BTreeMap::new();
            for (key, value) in locks {
                let owner: kv::LockOwner = kv::decode(&key, &value)?;
                by_holder.entry(owner.xid).or_default().push(key);
            }
            let slice = s
                .keys_per_write()
                .map_or(usize::MAX, |n| n.saturating_sub(KEYS_BESIDE_LOCKS).max(1));
            let mut released = 0;
            for (xid, keys) in by_holder {
                for part in keys.chunks(slice) {
                    let (x, part) = (xid.clone(), part.to_vec());
                    // Decided inside the write: a holder still running keeps its locks.
                    released += s
                        .write(false, move |t| {
                            let ended = kv::get_global(t, &x)?.is_none_or(|g| g.status.is_final());
                            if !ended {
                                return Ok::<usize, StoreError>(0);
                            }
                            kv::release(t, &x, &part, None)?;
                            Ok(part.len())
                        })
                        .await?;
                }
            }
            Ok(released)
        }
    }

    fn lock_holder(
        &self,
        xid: &str,
        keys: &[LockKey],
    ) -> impl Future<Output = Result<Option<(LockKey, String)>, StoreError>> + Send {
        let (s, xid, keys) = (self.clone(), xid.to_string(), keys.to_vec());
        async move { s.read(move |t| kv::lock_holder(t, &xid, &keys)).await }
    }

    fn writes(&self) -> u64 {
        kv::KvStore::writes(self)
    }
}

/// Keys a registration reads or writes besides its locks (the global transaction, the
/// branch), with room to spare.
const KEYS_BESIDE_LOCKS: usize = 8;

/// Registers a branch with more row locks than one write of `K` holds: the branch first (as
/// `Registering`), then its locks a slice at a time, each slice all or nothing, then the
/// branch becomes `Registered`. On a conflict the slices taken are released and the branch
/// removed, so the outcome is still all or nothing; if the process dies half way, the locks
/// taken are released with the transaction, which cannot commit this branch.
async fn register_in_steps<K: kv::KvStore>(
    s: &K,
    branch: Branch,
    slice: usize,
) -> Result<(), RegisterError> {
    let mut keys = branch.lock_keys.clone();
    keys.sort();
    keys.dedup();
    let (xid, id) = (branch.xid.clone(), branch.branch_id);
    s.write(true, move |t| kv::begin_registration(t, &branch))
        .await?;
    for part in keys.chunks(slice.max(1)) {
        let (x, part) = (xid.clone(), part.to_vec());
        let taken = s
            .write(true, move |t| kv::take_locks_of(t, &x, id, &part))
            .await;
        if let Err(e) = taken {
            abandon(s, &xid, id).await;
            return Err(e);
        }
    }
    let x = xid.clone();
    let done = s
        .write(true, move |t| kv::complete_registration(t, &x, id))
        .await;
    if done.is_err() {
        abandon(s, &xid, id).await;
    }
    done
}

/// Undoes a registration that failed part way. Best effort: what it cannot undo now is
/// released with the transaction.
async fn abandon<K: kv::KvStore>(s: &K, xid: &str, branch_id: u64) {
    if let Err(e) = Store::abandon_registration(s, xid, branch_id).await {
        tracing::warn!(%xid, branch = branch_id, error = %e, "could not undo a partial branch registration; its locks go with the transaction");
    }
}

/// Runs `op` as one write (`op` told the locks are not released yet). When that is more than
/// one write can hold, runs `release` first, which gives the locks back a slice at a time
/// (always safe to split), then `op` again, told they are released.
async fn or_release_first<K: kv::KvStore, R: Send + 'static>(
    s: &K,
    durable: bool,
    release: impl Future<Output = Result<(), StoreError>>,
    op: impl Fn(&mut dyn kv::KvTxn, bool) -> Result<R, StoreError> + Clone + Send + Sync + 'static,
) -> Result<R, StoreError> {
    let first = op.clone();
    match s.write(durable, move |t| first(t, false)).await {
        Err(StoreError::TooLarge) => {
            release.await?;
            s.write(durable, move |t| op(t, true)).await
        }
        r => r,
    }
}

/// Releases `xid`'s locks (only those of `branch`, when given) a slice at a time.
async fn release_in_slices<K: kv::KvStore>(
    s: &K,
    xid: &str,
    branch: Option<u64>,
) -> Result<(), StoreError> {
    let x = xid.to_string();
    let branches = s.read(move |t| kv::branches(t, &x)).await?;
    let mut keys: Vec<LockKey> = branches
        .into_iter()
        .filter(|b| branch.is_none_or(|id| b.branch_id == id))
        .flat_map(|b| b.lock_keys)
        .collect();
    keys.sort();
    keys.dedup();
    let slice = s.keys_per_write().map_or(keys.len().max(1), |n| {
        n.saturating_sub(KEYS_BESIDE_LOCKS).max(1)
    });
    for part in keys.chunks(slice) {
        let (x, part) = (xid.to_string(), part.to_vec());
        s.write(false, move |t| kv::release(t, &x, &part, branch))
            .await?;
    }
    Ok(())
}
