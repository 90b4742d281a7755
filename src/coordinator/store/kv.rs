//! The coordinator's rules as operations on a key-value transaction.
//!
//! Four tables: `globals` (xid → [`GlobalTx`]), `branches` (`xid` NUL `branch id` →
//! [`Branch`]), `locks` (lock key → [`LockOwner`]) and `owners` (resource → the node that
//! runs its phase 2, when several processes share the store). Values are JSON, so a store can be
//! read with ordinary tools when something needs a person.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{RegisterError, StoreError, Transition};
use crate::coordinator::model::{
    Branch, BranchStatus, Fence, GlobalStatus, GlobalTx, Intervention, LockKey,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Globals,
    Branches,
    Locks,
    Owners,
    Nodes,
    /// Facts about the store itself: its identity.
    Meta,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Globals,
        Table::Branches,
        Table::Locks,
        Table::Owners,
        Table::Nodes,
        Table::Meta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Globals => "globals",
            Table::Branches => "branches",
            Table::Locks => "locks",
            Table::Owners => "owners",
            Table::Nodes => "nodes",
            Table::Meta => "meta",
        }
    }
}

/// A consistent view of the tables.
pub trait KvRead {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries whose key starts with `prefix`, in key order.
    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// Whether a conditional write ([`KvTxn::put_if_alone`]) applied: known once the store
/// committed the operation that made it.
#[derive(Clone, Debug, Default)]
pub struct Applied(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Applied {
    pub fn known(applied: bool) -> Applied {
        let a = Applied::default();
        a.set(applied);
        a
    }

    pub fn set(&self, applied: bool) {
        self.0.store(applied, std::sync::atomic::Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A read-write transaction: reads see the transaction's own writes; nothing is visible to
/// others until the store commits it, and nothing is kept if the operation fails.
pub trait KvTxn: KvRead {
    fn put(&mut self, table: Table, key: &str, value: Vec<u8>) -> Result<(), StoreError>;
    fn delete(&mut self, table: Table, key: &str) -> Result<(), StoreError>;

    /// Puts `value` at `key` of `table` if, where the write lands, `under` holds no key that
    /// starts with `prefix` besides `except` (keys this transaction deletes). Unlike a scan
    /// followed by a put, the range is not part of what the transaction read: a concurrent
    /// writer of the range makes the put not apply instead of making the whole transaction
    /// run again. A store that runs operations one at a time decides at once.
    fn put_if_alone(
        &mut self,
        table: Table,
        key: &str,
        value: Vec<u8>,
        under: Table,
        prefix: &str,
        except: &[String],
    ) -> Result<Applied, StoreError> {
        let alone = self
            .scan(under, prefix)?
            .iter()
            .all(|(k, _)| except.contains(k));
        if alone {
            self.put(table, key, value)?;
        }
        Ok(Applied::known(alone))
    }
}

/// A key-value store with transactions.
///
/// The operations are plain functions over a transaction, so each store runs them its own
/// way: the embedded store reads memory-mapped pages on the caller's thread and hands writes
/// to its writer thread, which wakes the caller when the batch holding them is on disk; the
/// etcd store runs them optimistically and runs them again when another writer got there
/// first (so they may run more than once, hence `Fn`).
pub trait KvStore: Clone + Send + Sync + 'static {
    /// Runs `f` on a consistent snapshot.
    fn read<R: Send + 'static>(
        &self,
        f: impl Fn(&dyn KvRead) -> Result<R, StoreError> + Send + Sync + 'static,
    ) -> impl std::future::Future<Output = Result<R, StoreError>> + Send;

    /// Runs `f` in a transaction, committed when `f` returns `Ok`, discarded when it returns
    /// `Err`. Counts one store write when it committed changes. A store may commit several
    /// callers' operations together (group commit); each still sees all or nothing.
    ///
    /// An operation that fails must fail before it writes, unless the failure is the store's
    /// own (unreadable data, I/O): every operation in this module checks first.
    ///
    /// `durable: false` lets the store answer before the change reaches the disk: for writes
    /// whose loss in a crash only makes work be done again (a begin that nobody joined yet, a
    /// final status whose phase 2 is simply re-run). The next durable write persists it.
    fn write<R, E>(
        &self,
        durable: bool,
        f: impl Fn(&mut dyn KvTxn) -> Result<R, E> + Send + Sync + 'static,
    ) -> impl std::future::Future<Output = Result<R, E>> + Send
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static;

    /// Committed writes so far.
    fn writes(&self) -> u64;

    /// The most keys one write may read and change, when the store has such a limit (etcd
    /// does). A branch with more row locks registers in several writes, see
    /// [`begin_registration`].
    fn keys_per_write(&self) -> Option<usize> {
        None
    }
}

/// Who holds a row lock: one transaction, possibly through several of its branches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub xid: String,
    pub branches: Vec<u64>,
}

/// The `branches` key of one branch. Ids are zero-padded so key order is registration order;
/// NUL cannot occur in an XID, so one transaction's prefix never matches another's.
pub fn branch_key(xid: &str, branch_id: u64) -> String {
    format!("{xid}\0{branch_id:020}")
}

pub fn branch_prefix(xid: &str) -> String {
    format!("{xid}\0")
}

pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.replace('\0', "/"),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Whether a `globals` record holds a transaction not yet final (one that does not read
/// counts as finished: nothing can drive it). The caches of unfinished transactions that the
/// stores keep for the sweep hold exactly these.
pub fn is_unfinished(value: &[u8]) -> bool {
    serde_json::from_slice::<GlobalTx>(value).is_ok_and(|tx| !tx.status.is_final())
}

pub fn get_global(t: &(impl KvRead + ?Sized), xid: &str) -> Result<Option<GlobalTx>, StoreError> {
    t.get(Table::Globals, xid)?
        .map(|b| decode(xid, &b))
        .transpose()
}

pub fn list_globals(t: &(impl KvRead + ?Sized)) -> Result<Vec<GlobalTx>, StoreError> {
    t.scan(Table::Globals, "")?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

pub fn create(t: &mut (impl KvTxn + ?Sized), tx: &GlobalTx) -> Result<(), StoreError> {
    if let Some(existing) = get_global(t, &tx.xid)? {
        // The same record again (a retried write that had landed): nothing to do.
        if &existing == tx {
            return Ok(());
        }
        return Err(StoreError::Exists(tx.xid.clone()));
    }
    t.put(Table::Globals, &tx.xid, encode(tx))
}

/// Records a new global transaction with its first branches (see [`register_branch`]).
pub fn create_with_branches(
    t: &mut (impl KvTxn + ?Sized),
    tx: &GlobalTx,
    branches: &[Branch],
) -> Result<(), RegisterError> {
    // Every check before any write: an operation that fails leaves its write untouched.
    if let Some(b) = branches.iter().find(|b| b.xid != tx.xid) {
        return Err(RegisterError::UnknownXid(b.xid.clone()));
    }
    if get_global(t, &tx.xid)?.is_some_and(|existing| &existing != tx) {
        return Err(StoreError::Exists(tx.xid.clone()).into());
    }
    for b in branches {
        if let Some((key, holder)) = lock_holder(t, &tx.xid, &b.lock_keys)? {
            return Err(RegisterError::LockConflict { key, holder });
        }
    }
    create(t, tx)?;
    for b in branches {
        register_branch(t, b)?;
    }
    Ok(())
}

/// Compare-and-set of the status; optionally releases every lock of the transaction.
pub fn transition(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    from: GlobalStatus,
    to: GlobalStatus,
    release_locks: bool,
) -> Result<Transition, StoreError> {
    if !from.can_move_to(to) {
        return Err(StoreError::InvalidTransition { from, to });
    }
    let Some(mut tx) = get_global(t, xid)? else {
        return Ok(Transition::NotFound);
    };
    if tx.status != from {
        return Ok(Transition::Found(tx.status));
    }
    tx.status = to;
    t.put(Table::Globals, xid, encode(&tx))?;
    if release_locks {
        for b in branches(t, xid)? {
            release(t, xid, &b.lock_keys, None)?;
        }
    }
    Ok(Transition::Moved)
}

/// Decides a `Begin` transaction: `decision`, or `TimeoutRollbacking` when it asks to commit
/// past the timeout. Returns what happened and the decision applied. The commit decision
/// releases every lock in the same write, when `release_locks`.
pub fn decide(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    decision: GlobalStatus,
    release_locks: bool,
) -> Result<(Transition, GlobalStatus), StoreError> {
    let expired = get_global(t, xid)?
        .is_some_and(|tx| tx.status == GlobalStatus::Begin && tx.is_expired(now_ms()));
    let to = if decision == GlobalStatus::Committing && expired {
        GlobalStatus::TimeoutRollbacking
    } else {
        decision
    };
    let release = release_locks && to == GlobalStatus::Committing;
    Ok((transition(t, xid, GlobalStatus::Begin, to, release)?, to))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn branches(t: &(impl KvRead + ?Sized), xid: &str) -> Result<Vec<Branch>, StoreError> {
    t.scan(Table::Branches, &branch_prefix(xid))?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

/// Fails unless `xid` exists and takes branches: it is `Begin` and within its timeout.
fn check_begin(t: &(impl KvRead + ?Sized), xid: &str) -> Result<(), RegisterError> {
    let tx = get_global(t, xid)?.ok_or_else(|| RegisterError::UnknownXid(xid.to_string()))?;
    if tx.status != GlobalStatus::Begin {
        return Err(RegisterError::NotActive {
            xid: xid.to_string(),
            status: tx.status,
        });
    }
    if tx.is_expired(now_ms()) {
        return Err(RegisterError::Expired(xid.to_string()));
    }
    Ok(())
}

/// The branch as stored: lock keys sorted, each once.
fn stored(branch: &Branch, status: BranchStatus) -> Branch {
    let mut stored = branch.clone();
    stored.lock_keys.sort();
    stored.lock_keys.dedup();
    stored.status = status;
    stored
}

/// The branch's place in its transaction's registration order: after every branch already
/// recorded (a retried write of the same branch keeps its place).
fn registration_seq(t: &(impl KvRead + ?Sized), branch: &Branch) -> Result<u64, StoreError> {
    let mut next = 1;
    for (key, value) in t.scan(Table::Branches, &branch_prefix(&branch.xid))? {
        let b: Branch = decode(&key, &value)?;
        if b.branch_id == branch.branch_id {
            return Ok(b.seq);
        }
        next = next.max(b.seq + 1);
    }
    Ok(next)
}

pub fn register_branch(
    t: &mut (impl KvTxn + ?Sized),
    branch: &Branch,
) -> Result<(), RegisterError> {
    check_begin(t, &branch.xid)?;
    take_locks(t, &branch.xid, branch.branch_id, &branch.lock_keys)?;
    let mut record = stored(branch, branch.status);
    record.seq = registration_seq(t, branch)?;
    t.put(
        Table::Branches,
        &branch_key(&branch.xid, branch.branch_id),
        encode(&record),
    )?;
    Ok(())
}

/// The first of the writes that register a branch with more row locks than one write holds:
/// records the branch as `Registering` with all its keys, so whatever locks it gets are
/// released with the transaction even if the registration never ends. Then
/// [`take_locks_of`] for each slice of the keys, then [`complete_registration`]; on a
/// conflict, [`abandon_registration`].
pub fn begin_registration(
    t: &mut (impl KvTxn + ?Sized),
    branch: &Branch,
) -> Result<(), RegisterError> {
    check_begin(t, &branch.xid)?;
    let mut record = stored(branch, BranchStatus::Registering);
    record.seq = registration_seq(t, branch)?;
    t.put(
        Table::Branches,
        &branch_key(&branch.xid, branch.branch_id),
        encode(&record),
    )?;
    Ok(())
}

/// Takes some of a registering branch's locks, all or nothing.
pub fn take_locks_of(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    branch_id: u64,
    keys: &[LockKey],
) -> Result<(), RegisterError> {
    check_begin(t, xid)?;
    take_locks(t, xid, branch_id, keys)
}

/// Ends a registration in several writes: the branch becomes `Registered`.
pub fn complete_registration(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    branch_id: u64,
) -> Result<(), RegisterError> {
    check_begin(t, xid)?;
    let key = branch_key(xid, branch_id);
    let bytes = t
        .get(Table::Branches, &key)?
        .ok_or_else(|| RegisterError::UnknownXid(xid.to_string()))?;
    let mut branch: Branch = decode(&key, &bytes)?;
    branch.status = BranchStatus::Registered;
    t.put(Table::Branches, &key, encode(&branch))?;
    Ok(())
}

/// Removes a registration that failed part way: the branch record (its locks are released
/// first, with [`release`]).
pub fn abandon_registration(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    branch_id: u64,
) -> Result<(), StoreError> {
    t.delete(Table::Branches, &branch_key(xid, branch_id))
}

/// Takes `keys` for branch `branch_id` of `xid`, all or nothing; keys `xid` already holds
/// are re-entered.
fn take_locks(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    branch_id: u64,
    keys: &[LockKey],
) -> Result<(), RegisterError> {
    let mut keys: Vec<&LockKey> = keys.iter().collect();
    keys.sort();
    keys.dedup();
    // Check every key before writing any, so a conflict leaves nothing behind.
    let mut owners = Vec::with_capacity(keys.len());
    for key in &keys {
        let owner = match t.get(Table::Locks, key)? {
            Some(b) => {
                let o: LockOwner = decode(key, &b)?;
                if o.xid != xid {
                    return Err(RegisterError::LockConflict {
                        key: (*key).clone(),
                        holder: o.xid,
                    });
                }
                o
            }
            None => LockOwner {
                xid: xid.to_string(),
                branches: Vec::new(),
            },
        };
        owners.push(owner);
    }
    for (key, mut owner) in keys.into_iter().zip(owners) {
        if !owner.branches.contains(&branch_id) {
            owner.branches.push(branch_id);
        }
        t.put(Table::Locks, key, encode(&owner))?;
    }
    Ok(())
}

/// Releases `keys` held by `xid`: only those taken through `branch` when given, else all.
/// Releasing is safe to split across writes (each key is free once its own write lands),
/// which is how a release too large for one write is done.
pub fn release(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    keys: &[LockKey],
    branch: Option<u64>,
) -> Result<(), StoreError> {
    for key in keys {
        let Some(b) = t.get(Table::Locks, key)? else {
            continue;
        };
        let mut owner: LockOwner = decode(key, &b)?;
        if owner.xid != xid {
            continue;
        }
        match branch {
            Some(id) => owner.branches.retain(|b| *b != id),
            None => owner.branches.clear(),
        }
        if owner.branches.is_empty() {
            t.delete(Table::Locks, key)?;
        } else {
            t.put(Table::Locks, key, encode(&owner))?;
        }
    }
    Ok(())
}

/// Records a branch's phase-2 outcome; a rolled-back branch's locks are released in the
/// same write unless `locks_released` says a split release did it already.
pub fn branch_done(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    branch_id: u64,
    status: BranchStatus,
    attention: Option<String>,
    locks_released: bool,
) -> Result<(), StoreError> {
    let key = branch_key(xid, branch_id);
    let Some(bytes) = t.get(Table::Branches, &key)? else {
        return Ok(());
    };
    let mut branch: Branch = decode(&key, &bytes)?;
    if status == BranchStatus::RolledBack && !locks_released {
        release(t, xid, &branch.lock_keys, Some(branch_id))?;
    }
    branch.status = status;
    branch.attention = attention;
    t.put(Table::Branches, &key, encode(&branch))
}

/// Moves a decided transaction to its final status and deletes its branches, releasing any
/// locks left unless `locks_released` says a split release did it already.
pub fn finish(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    from: GlobalStatus,
    to: GlobalStatus,
    locks_released: bool,
) -> Result<Transition, StoreError> {
    let moved = transition(t, xid, from, to, false)?;
    if moved == Transition::Moved {
        for b in branches(t, xid)? {
            if !locks_released {
                release(t, xid, &b.lock_keys, None)?;
            }
            t.delete(Table::Branches, &branch_key(xid, b.branch_id))?;
        }
    }
    Ok(moved)
}

/// Fails unless `fence.node` owns `fence.resource` now. Inside an operation this makes the
/// operation's write conditional on the ownership it read.
fn check_owner(t: &(impl KvRead + ?Sized), fence: &Fence) -> Result<(), StoreError> {
    let owner: Option<String> = t
        .get(Table::Owners, &fence.resource)?
        .map(|b| decode(&fence.resource, &b))
        .transpose()?;
    if owner.as_deref() == Some(fence.node.as_str()) {
        Ok(())
    } else {
        Err(StoreError::NotOwner(fence.resource.clone()))
    }
}

/// Phase 2 of branches `ids` is done: deletes them and releases their locks (unless
/// `locks_released` says a split release did); when no branch is left, moves the decided
/// transaction to its final status. Returns that status, with whether this write set it.
/// With fences, only while each fence's node owns its resource.
///
/// Whether branches are left is a condition of the final-status write alone
/// ([`KvTxn::put_if_alone`]), not something this operation reads: sidecars finishing their
/// own branches of one transaction at the same time do not make each other run again, and
/// the last of them sets the final status.
pub fn finish_branches(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    ids: &[u64],
    fences: &[Fence],
    locks_released: bool,
) -> Result<Option<(GlobalStatus, Applied)>, StoreError> {
    for f in fences {
        check_owner(t, f)?;
    }
    let Some(mut tx) = get_global(t, xid)? else {
        return Ok(None);
    };
    let Some(done) = tx.status.outcome() else {
        return Ok(None);
    };
    // The commit decision released every lock already.
    let locks_released = locks_released || tx.status == GlobalStatus::Committing;
    let mut deleted = Vec::with_capacity(ids.len());
    for id in ids {
        let key = branch_key(xid, *id);
        let Some(bytes) = t.get(Table::Branches, &key)? else {
            continue;
        };
        if !locks_released {
            let b: Branch = decode(&key, &bytes)?;
            release(t, xid, &b.lock_keys, Some(*id))?;
        }
        t.delete(Table::Branches, &key)?;
        deleted.push(key);
    }
    tx.status = done;
    let applied = t.put_if_alone(
        Table::Globals,
        xid,
        encode(&tx),
        Table::Branches,
        &branch_prefix(xid),
        &deleted,
    )?;
    Ok(Some((done, applied)))
}

/// Records a person's request about a decided transaction not yet final (see
/// [`Intervention`]), with the change of its record that tells every node: `Retry` returns
/// the branches that need attention to `Registered` and counts the request; `ForceFinish`
/// marks the transaction forced. Returns the transaction as it is now; one that is not
/// decided, or already final, is returned unchanged.
pub fn intervene(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    what: Intervention,
) -> Result<Option<GlobalTx>, StoreError> {
    let Some(mut tx) = get_global(t, xid)? else {
        return Ok(None);
    };
    if tx.status.outcome().is_none() {
        return Ok(Some(tx));
    }
    match what {
        Intervention::Retry => {
            for mut b in branches(t, xid)? {
                if b.status == BranchStatus::NeedsAttention {
                    b.status = BranchStatus::Registered;
                    b.attention = None;
                    t.put(Table::Branches, &branch_key(xid, b.branch_id), encode(&b))?;
                }
            }
            tx.retries = tx.retries.saturating_add(1);
        }
        Intervention::ForceFinish => tx.forced = true,
    }
    t.put(Table::Globals, xid, encode(&tx))?;
    Ok(Some(tx))
}

pub fn forget(
    t: &mut (impl KvTxn + ?Sized),
    xid: &str,
    locks_released: bool,
) -> Result<(), StoreError> {
    for b in branches(t, xid)? {
        if !locks_released {
            release(t, xid, &b.lock_keys, None)?;
        }
        t.delete(Table::Branches, &branch_key(xid, b.branch_id))?;
    }
    t.delete(Table::Globals, xid)
}

pub fn lock_holder(
    t: &(impl KvRead + ?Sized),
    xid: &str,
    keys: &[LockKey],
) -> Result<Option<(LockKey, String)>, StoreError> {
    for key in keys {
        if let Some(b) = t.get(Table::Locks, key)? {
            let owner: LockOwner = decode(key, &b)?;
            if owner.xid != xid {
                return Ok(Some((key.clone(), owner.xid)));
            }
        }
    }
    Ok(None)
}
