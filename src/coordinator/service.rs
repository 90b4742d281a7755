//! The coordinator service: begins and ends global transactions, registers branches, runs
//! phase 2 through the resource managers, and enforces timeouts.
//!
//! Crash rules, phase by phase:
//! * before the decision is recorded, a crash leaves the transaction `Begin`; it times out
//!   and rolls back;
//! * once the decision is recorded it stands: after a restart [`Coordinator::recover`] (and
//!   the background sweep) drive phase 2 of every decided transaction to its end;
//! * phase-2 actions are idempotent, so one interrupted half-way is simply run again.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::model::{Branch, BranchStatus, Fence, GlobalStatus, GlobalTx, Intervention};
use super::store::any::AnyStore;
use super::store::{RegisterError, StoreError, Transition};
use crate::metrics::CoordinatorMetrics;

/// Longest XID accepted from clients.
pub const MAX_XID_LEN: usize = 128;

/// How long a rollback waits for phase 2 running elsewhere (this process's sweep; in a mesh,
/// the sidecars that own the other branches) before answering with the status it sees.
const ROLLBACK_WAIT: Duration = Duration::from_secs(10);

/// How long a finished transaction's final status stays queryable.
const FINISHED_RETENTION: Duration = Duration::from_secs(600);

/// How often the sweep reads finished transactions too, to forget those past
/// [`FINISHED_RETENTION`]; its other passes read only the unfinished ones.
const FORGET_EVERY: Duration = Duration::from_secs(60);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Phase2Error(pub String);

/// How a branch rollback ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackOutcome {
    RolledBack,
    /// The data changed since phase 1 (dirty write): stop and keep the locks.
    NeedsAttention(String),
}

/// Carries out phase 2 for the branches of one resource (Seata's resource manager). Both
/// calls must be idempotent: after a crash they may run again for the same branch.
pub trait ResourceManager: Send + Sync + 'static {
    fn commit<'a>(&'a self, branch: &'a Branch) -> BoxFuture<'a, Result<(), Phase2Error>>;
    fn rollback<'a>(
        &'a self,
        branch: &'a Branch,
    ) -> BoxFuture<'a, Result<RollbackOutcome, Phase2Error>>;
}

/// A resource whose phase 2 is this process's: its manager, and the fence to present.
type Mine = (Arc<dyn ResourceManager>, Option<Fence>);

/// Which resources this process runs phase 2 for, when several processes share the store
/// (a mesh of sidecars): each resource has one owner at a time.
pub trait Ownership: Send + Sync + 'static {
    /// The fence proving this process owns `resource` now; `None` when it does not.
    fn fence(&self, resource: &str) -> Option<Fence>;

    /// False once the ownership `fence` proves has been lost: work under it stops.
    fn holds(&self, fence: &Fence) -> bool {
        self.fence(&fence.resource).as_ref() == Some(fence)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    #[error("unknown global transaction '{0}'")]
    UnknownXid(String),
    #[error("invalid XID: {0}")]
    InvalidXid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Coordinator {
    store: AnyStore,
    default_timeout: Duration,
    resources: RwLock<HashMap<String, Arc<dyn ResourceManager>>>,
    /// Set when the store is shared: then only owned resources are this process's work.
    ownership: std::sync::OnceLock<Arc<dyn Ownership>>,
    /// Transactions whose phase 2 is running here now, each with the run asked for while it
    /// runs (it follows at once: what it was asked to see may have come too late for this one).
    in_flight: Mutex<HashMap<String, Option<Run>>>,
    /// Phase 2 that failed: when to try again, and how many tries so far.
    backoff: Mutex<HashMap<String, (std::time::Instant, u32)>>,
    /// The next branch id; starts from the clock so ids keep increasing across restarts.
    next_branch: std::sync::atomic::AtomicU64,
    /// When the sweep last read finished transactions to forget old ones.
    last_forget: Mutex<Option<std::time::Instant>>,
    metrics: CoordinatorMetrics,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What phase 2 is asked to carry out for one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// The decision (`Committing`, `Rollbacking` or `TimeoutRollbacking`).
    pub status: GlobalStatus,
    /// A person force-finished it: its branches end without being undone.
    pub forced: bool,
}

impl Decided {
    pub fn of(tx: &GlobalTx) -> Decided {
        Decided {
            status: tx.status,
            forced: tx.forced,
        }
    }

    fn plain(status: GlobalStatus) -> Decided {
        Decided {
            status,
            forced: false,
        }
    }
}

/// One run of phase 2 asked for: what to carry out, and a store revision at or after what
/// it must see, when known.
#[derive(Debug, Clone, Copy)]
struct Run {
    decided: Decided,
    seen: Option<i64>,
}

impl Run {
    /// One run that does what both ask: the later decision, forced if either is, and the
    /// newer revision to see.
    fn and(self, other: Run) -> Run {
        Run {
            decided: Decided {
                status: other.decided.status,
                forced: self.decided.forced || other.decided.forced,
            },
            seen: self.seen.max(other.seen),
        }
    }
}

/// Removes the XID from the in-flight set when phase 2 ends early (a panic, a cancelled
/// future); a run that ends normally hands the XID on or removes it itself.
struct InFlight<'a> {
    set: &'a Mutex<HashMap<String, Option<Run>>>,
    xid: &'a str,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.set).remove(self.xid);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Coordinator {
    pub fn new(
        store: AnyStore,
        default_timeout: Duration,
        metrics: CoordinatorMetrics,
    ) -> Arc<Self> {
        Arc::new(Coordinator {
            store,
            default_timeout,
            resources: RwLock::new(HashMap::new()),
            ownership: std::sync::OnceLock::new(),
            in_flight: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            next_branch: std::sync::atomic::AtomicU64::new(now_ms() << 16),
            last_forget: Mutex::new(None),
            metrics,
        })
    }

    /// A new branch id: unique, and increasing in registration order.
    pub fn new_branch_id(&self) -> u64 {
        self.next_branch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// Makes `rm` the phase-2 executor for branches of `resource`.
    pub fn register_resource(&self, resource: &str, rm: Arc<dyn ResourceManager>) {
        self.resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(resource.to_string(), rm);
    }

    fn resource(&self, resource: &str) -> Option<Arc<dyn ResourceManager>> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(resource)
            .cloned()
    }

    /// Begins a global transaction.
    pub async fn begin(&self, timeout: Option<Duration>) -> Result<GlobalTx, CoordinatorError> {
        let timeout = timeout.unwrap_or(self.default_timeout);
        let timeout_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
        let tx = GlobalTx::begun(new_xid(), now_ms(), timeout_ms);
        self.store.create(&tx).await?;
        Ok(tx)
    }

    /// Begins a global transaction under an XID the caller chose (with [`new_xid`]): one
    /// whose participants already carry it (a sharded transaction's XA transactions).
    pub async fn begin_as(
        &self,
        xid: &str,
        timeout: Option<Duration>,
    ) -> Result<GlobalTx, CoordinatorError> {
        check_xid(xid)?;
        let timeout = timeout.unwrap_or(self.default_timeout);
        let timeout_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
        let tx = GlobalTx::begun(xid.to_string(), now_ms(), timeout_ms);
        self.store.create(&tx).await?;
        Ok(tx)
    }

    /// [`Self::begin_as`] with the transaction's branches registered in the same store
    /// write: a distributed commit's, whose branches are known before it begins.
    pub async fn begin_with_branches(
        &self,
        xid: &str,
        timeout: Option<Duration>,
        branches: &[Branch],
    ) -> Result<GlobalTx, CoordinatorError> {
        check_xid(xid)?;
        let timeout = timeout.unwrap_or(self.default_timeout);
        let timeout_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
        let tx = GlobalTx::begun(xid.to_string(), now_ms(), timeout_ms);
        match self.store.create_with_branches(&tx, branches).await {
            Ok(()) => Ok(tx),
            Err(RegisterError::Store(e)) => Err(CoordinatorError::Store(e)),
            Err(RegisterError::UnknownXid(x)) => Err(CoordinatorError::UnknownXid(x)),
            // A new transaction is open, and these branches' locks are its own.
            Err(e) => Err(CoordinatorError::Store(StoreError::Backend(e.to_string()))),
        }
    }

    /// Records the commit decision of `xid` and returns the status it has then, without
    /// running phase 2: for a caller that ends the branches itself first and then hands
    /// the rest to [`Self::drive_decided`]. A transaction past its timeout, or decided
    /// otherwise already, keeps its status.
    pub async fn decide_commit(&self, xid: &str) -> Result<GlobalStatus, CoordinatorError> {
        check_xid(xid)?;
        match self.store.decide(xid, GlobalStatus::Committing).await? {
            (Transition::Moved, to) => Ok(to),
            (Transition::Found(s), _) => Ok(s),
            (Transition::NotFound, _) => Err(CoordinatorError::UnknownXid(xid.to_string())),
        }
    }

    /// Runs phase 2 of a transaction decided `status` in the background.
    pub fn drive_decided(self: &Arc<Self>, xid: &str, status: GlobalStatus) {
        self.drive(xid, Decided::plain(status), None);
    }

    pub async fn get(&self, xid: &str) -> Result<GlobalTx, CoordinatorError> {
        check_xid(xid)?;
        self.store
            .get(xid)
            .await?
            .ok_or_else(|| CoordinatorError::UnknownXid(xid.to_string()))
    }

    /// Registers a branch with its locks (see [`crate::coordinator::Store::register_branch`]).
    /// A transaction past its timeout is rolled back first, so the registration fails.
    pub async fn register_branch(self: &Arc<Self>, branch: &Branch) -> Result<(), RegisterError> {
        let r = self.store.register_branch(branch).await;
        if let Err(RegisterError::Expired(xid)) = &r {
            // Past its timeout: roll it back now, and refuse the branch.
            let status = self
                .decide(xid, GlobalStatus::TimeoutRollbacking)
                .await
                .map_err(|e| match e {
                    CoordinatorError::Store(s) => RegisterError::Store(s),
                    _ => RegisterError::UnknownXid(xid.clone()),
                })?;
            return Err(RegisterError::NotActive {
                xid: xid.clone(),
                status,
            });
        }
        if matches!(r, Err(RegisterError::LockConflict { .. })) {
            self.metrics.lock_conflicts.inc();
        }
        r
    }

    /// Commits: records the decision (releasing locks) and answers `Committed`; phase 2
    /// cleans up in the background (the status reads `Committing` until it is done). Asking
    /// again is harmless. A transaction past its timeout is rolled
    /// back instead, and the timeout outcome is returned.
    pub async fn commit(self: &Arc<Self>, xid: &str) -> Result<GlobalStatus, CoordinatorError> {
        check_xid(xid)?;
        self.decide(xid, GlobalStatus::Committing).await
    }

    /// Rolls back: records the decision, then rolls branches back in reverse order.
    pub async fn rollback(self: &Arc<Self>, xid: &str) -> Result<GlobalStatus, CoordinatorError> {
        check_xid(xid)?;
        self.decide(xid, GlobalStatus::Rollbacking).await
    }

    pub async fn status(&self, xid: &str) -> Result<GlobalStatus, CoordinatorError> {
        Ok(self.get(xid).await?.status)
    }

    /// Moves a `Begin` transaction to `decision` (a commit past the timeout rolls back
    /// instead) and runs phase 2; when it was already decided, drives that decision instead.
    /// Returns the status afterwards.
    async fn decide(
        self: &Arc<Self>,
        xid: &str,
        decision: GlobalStatus,
    ) -> Result<GlobalStatus, CoordinatorError> {
        let (current, moved) = match self.store.decide(xid, decision).await? {
            (Transition::Moved, to) => (to, true),
            (Transition::Found(s), _) => (s, false),
            (Transition::NotFound, _) => return Err(CoordinatorError::UnknownXid(xid.to_string())),
        };
        if current.is_final() {
            return Ok(current);
        }
        if current == GlobalStatus::Committing {
            // The outcome is fixed the moment the decision is on disk; phase 2 only cleans up
            // (deletes undo logs), so it runs in the background, as Seata's async commit does.
            // In a mesh the store's watch brings the decision to every node, this one too.
            if self.ownership.get().is_none() {
                let me = self.clone();
                let xid = xid.to_string();
                let run = Decided::plain(current);
                tokio::spawn(async move { me.run_phase2(&xid, run, None).await });
            }
            return Ok(GlobalStatus::Committed);
        }
        let decided = if moved {
            Decided::plain(current)
        } else {
            // Decided before: perhaps force-finished meanwhile, which only its record says.
            self.get(xid)
                .await
                .map_or(Decided::plain(current), |tx| Decided::of(&tx))
        };
        self.settle(xid, decided).await
    }

    /// Runs phase 2 of a decided transaction here and gives phase 2 running elsewhere (here,
    /// when the sweep found the decision first; in a mesh, on the sidecars that own the other
    /// branches) a moment, so the answer is usually the final status.
    async fn settle(
        self: &Arc<Self>,
        xid: &str,
        decided: Decided,
    ) -> Result<GlobalStatus, CoordinatorError> {
        self.run_phase2(xid, decided, None).await;
        let current = decided.status;
        let mut status = self.store.get(xid).await?.map_or(current, |t| t.status);
        let deadline = std::time::Instant::now() + ROLLBACK_WAIT;
        while !status.is_final()
            && (self.ownership.get().is_some() || lock(&self.in_flight).contains_key(xid))
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !lock(&self.in_flight).contains_key(xid) {
                // In case an event that would have driven it here was missed.
                self.run_phase2(xid, decided, None).await;
            }
            status = self.store.get(xid).await?.map_or(current, |t| t.status);
        }
        Ok(status)
    }

    /// Runs phase 2 of a decided transaction. When it is running here already, the run
    /// under way is followed by one more, which does what this one was asked.
    async fn run_phase2(&self, xid: &str, decided: Decided, seen: Option<i64>) {
        let mut run = Run { decided, seen };
        {
            let mut runs = lock(&self.in_flight);
            if let Some(next) = runs.get_mut(xid) {
                *next = Some(next.map_or(run, |n| n.and(run)));
                return;
            }
            runs.insert(xid.to_string(), None);
        }
        let mut guard = InFlight {
            set: &self.in_flight,
            xid,
            armed: true,
        };
        loop {
            let outcome = self.phase2(xid, run.decided, run.seen).await;
            self.after_phase2(xid, outcome);
            let mut runs = lock(&self.in_flight);
            match runs.get_mut(xid).and_then(Option::take) {
                Some(next) => run = next,
                None => {
                    runs.remove(xid);
                    guard.armed = false;
                    return;
                }
            }
        }
    }

    /// Notes how a run of phase 2 ended: when to try again, if it must.
    fn after_phase2(&self, xid: &str, outcome: Result<Phase2Run, Phase2Error>) {
        match outcome {
            Ok(Phase2Run::Done) => {
                lock(&self.backoff).remove(xid);
            }
            Ok(Phase2Run::NeedsPerson) => {
                // Nothing to retry until a person has looked (the admin API's retry or
                // force-finish runs it again): sweeps only look in now and then.
                let wait = retry_delay(u32::MAX);
                lock(&self.backoff).insert(
                    xid.to_string(),
                    (std::time::Instant::now() + wait, u32::MAX),
                );
                tracing::debug!(%xid, "phase 2 waits for a person");
            }
            Err(e) => {
                let mut b = lock(&self.backoff);
                let attempts = b.get(xid).map_or(0, |(_, n)| *n).saturating_add(1);
                let wait = retry_delay(attempts);
                b.insert(
                    xid.to_string(),
                    (std::time::Instant::now() + wait, attempts),
                );
                tracing::warn!(%xid, error = %e, attempts, retry_in = ?wait, "phase 2 incomplete; it will be retried");
            }
        }
    }

    /// True when an earlier phase-2 failure asks to wait before trying this XID again.
    fn backing_off(&self, xid: &str) -> bool {
        lock(&self.backoff)
            .get(xid)
            .is_some_and(|(at, _)| std::time::Instant::now() < *at)
    }

    /// Runs phase 2 of `xid` now if it is decided and not yet finished (told by a store event
    /// at revision `seen`), unless an earlier failure asks to wait.
    fn drive(self: &Arc<Self>, xid: &str, decided: Decided, seen: Option<i64>) {
        if decided.status == GlobalStatus::Begin
            || decided.status.is_final()
            || self.backing_off(xid)
        {
            return;
        }
        let (me, xid) = (self.clone(), xid.to_string());
        tokio::spawn(async move { me.run_phase2(&xid, decided, seen).await });
    }

    /// The record of `tx` changed (a store event at revision `seen`): its decision, or a
    /// person's retry or force-finish. Each is work to do now, whatever an earlier failure
    /// asked.
    pub fn changed(self: &Arc<Self>, tx: &GlobalTx, seen: i64) {
        if tx.status.outcome().is_some() {
            lock(&self.backoff).remove(&tx.xid);
        }
        self.drive(&tx.xid, Decided::of(tx), Some(seen));
    }

    /// A branch of `xid` finished its phase 2 (a store event at revision `seen`): if `xid`
    /// is rolling back, the branch before it may be this node's to roll back now. A commit
    /// has nothing to wait for: its decision drove every branch already.
    pub fn nudge(self: &Arc<Self>, xid: &str, seen: i64) {
        if let Some(tx) = self.store.cached(xid) {
            if matches!(
                tx.status,
                GlobalStatus::Rollbacking | GlobalStatus::TimeoutRollbacking
            ) {
                self.drive(xid, Decided::of(&tx), Some(seen));
            }
        }
    }

    /// Makes this process one of several sharing the store: from now on it runs phase 2
    /// only for the resources `ownership` says it owns.
    pub fn set_ownership(&self, ownership: Arc<dyn Ownership>) {
        let _ = self.ownership.set(ownership);
    }

    /// Whether phase 2 of `resource` is this process's to run, and with which fence: alone
    /// with the store, every resource it serves is (an unknown one is an error); in a mesh,
    /// the resources it owns now.
    fn runs(&self, resource: &str) -> Result<Option<Mine>, Phase2Error> {
        let rm = self.resource(resource);
        match (self.ownership.get(), rm) {
            (None, Some(rm)) => Ok(Some((rm, None))),
            (None, None) => Err(Phase2Error(format!(
                "no data source here serves {resource}: is it missing from the config?"
            ))),
            (Some(o), Some(rm)) => Ok(o.fence(resource).map(|f| (rm, Some(f)))),
            (Some(_), None) => Ok(None),
        }
    }

    /// Phase 2 of the branches that are this process's. Commit: every such branch at once,
    /// recorded in one write. Rollback: from the last registered branch backwards, stopping
    /// at a branch that belongs to another process (its owner rolls it back, and this runs
    /// again when it has). Force-finish: like a commit, each branch ends without being undone
    /// (its undo log deleted), its locks released.
    async fn phase2(
        &self,
        xid: &str,
        decided: Decided,
        seen: Option<i64>,
    ) -> Result<Phase2Run, Phase2Error> {
        let store_err = |e: StoreError| Phase2Error(e.to_string());
        let decision = decided.status;
        let branches = self
            .store
            .branches_seen(xid, seen)
            .await
            .map_err(store_err)?;
        let mut open: Vec<&Branch> = branches
            .iter()
            .filter(|b| {
                matches!(
                    b.status,
                    BranchStatus::Registered
                        | BranchStatus::Registering
                        | BranchStatus::NeedsAttention
                )
            })
            .collect();
        // Registration order, as the store counted it (branch ids come from each sidecar's
        // clock, so they order branches of different sidecars by clock, not by time).
        open.sort_by_key(|b| (b.seq, b.branch_id));
        if branches.is_empty() {
            let done = decision.outcome().unwrap_or(decision);
            let t = self
                .store
                .finish(xid, decision, done)
                .await
                .map_err(store_err)?;
            self.finished(t, done);
            return Ok(Phase2Run::Done);
        }
        if decision == GlobalStatus::Committing || decided.forced {
            let mut ids = Vec::new();
            let mut fences = Vec::new();
            for b in open {
                let (rm, fence) = match self.runs(&b.resource) {
                    Ok(Some(mine)) => mine,
                    Ok(None) => continue,
                    Err(e) if decided.forced => {
                        // Alone with the store, and no data source here serves it any more:
                        // the person who finishes the transaction takes its undo log on.
                        tracing::warn!(%xid, branch = b.branch_id, error = %e, "force-finish: the branch's undo log is left in its database");
                        ids.push(b.branch_id);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // A branch still registering never committed locally: nothing to delete.
                if b.status != BranchStatus::Registering {
                    self.still_owner(fence.as_ref())?;
                    let started = std::time::Instant::now();
                    rm.commit(b).await?;
                    self.observe_phase2("commit", started);
                }
                ids.push(b.branch_id);
                fences.extend(fence.filter(|f| !fences.contains(f)));
            }
            if !ids.is_empty() {
                self.record_finished(xid, &ids, &fences).await?;
            }
            return Ok(Phase2Run::Done);
        }
        if open
            .iter()
            .any(|b| b.status == BranchStatus::NeedsAttention)
        {
            return Ok(Phase2Run::NeedsPerson);
        }
        for b in open.iter().rev() {
            let Some((rm, fence)) = self.runs(&b.resource)? else {
                return Ok(Phase2Run::Done);
            };
            let outcome = if b.status == BranchStatus::Registered {
                self.still_owner(fence.as_ref())?;
                let started = std::time::Instant::now();
                let outcome = rm.rollback(b).await?;
                self.observe_phase2("rollback", started);
                outcome
            } else {
                RollbackOutcome::RolledBack
            };
            match outcome {
                RollbackOutcome::RolledBack => {
                    let fences: Vec<Fence> = fence.into_iter().collect();
                    self.record_finished(xid, &[b.branch_id], &fences).await?;
                }
                RollbackOutcome::NeedsAttention(why) => {
                    tracing::error!(%xid, branch = b.branch_id, reason = %why, "rollback stopped: the branch needs a person");
                    self.store
                        .branch_done(
                            xid,
                            b.branch_id,
                            BranchStatus::NeedsAttention,
                            Some(why.clone()),
                        )
                        .await
                        .map_err(store_err)?;
                    return Ok(Phase2Run::NeedsPerson);
                }
            }
        }
        Ok(Phase2Run::Done)
    }

    /// Stops phase-2 work the moment the ownership it runs under is lost.
    fn still_owner(&self, fence: Option<&Fence>) -> Result<(), Phase2Error> {
        match (fence, self.ownership.get()) {
            (Some(f), Some(o)) if !o.holds(f) => Err(Phase2Error(format!(
                "no longer the owner of {}: phase 2 stops here",
                f.resource
            ))),
            _ => Ok(()),
        }
    }

    /// Records branches whose phase 2 is done (releasing their locks), and counts the
    /// transaction when that ended it.
    async fn record_finished(
        &self,
        xid: &str,
        ids: &[u64],
        fences: &[Fence],
    ) -> Result<(), Phase2Error> {
        let ended = self
            .store
            .finish_branches(xid, ids, fences)
            .await
            .map_err(|e| Phase2Error(e.to_string()))?;
        if let Some(status) = ended {
            self.finished(Transition::Moved, status);
        }
        Ok(())
    }

    fn observe_phase2(&self, action: &str, started: std::time::Instant) {
        self.metrics
            .phase2_seconds
            .with_label_values(&[action])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts a transaction that reached its final status here.
    fn finished(&self, t: Transition, status: GlobalStatus) {
        if t != Transition::Moved {
            return;
        }
        let m = &self.metrics;
        m.outcomes.with_label_values(&[status.name()]).inc();
        let writes = self.store.writes();
        m.store_writes.set(writes as i64);
        m.store_retries.set(self.store.retries() as i64);
        let done: u64 = GlobalStatus::ALL
            .iter()
            .filter(|s| s.is_final())
            .map(|s| m.outcomes.with_label_values(&[s.name()]).get())
            .sum();
        if done > 0 {
            m.store_writes_per_transaction
                .set(writes as f64 / done as f64);
        }
    }

    /// Runs phase 2 again for a transaction whose branches stopped as needing a person, once
    /// the person has fixed the data: those branches are rolled back again, by whichever
    /// node owns each (the request is recorded in the store, whose watch tells them).
    pub async fn retry(self: &Arc<Self>, xid: &str) -> Result<GlobalStatus, CoordinatorError> {
        self.intervene(xid, Intervention::Retry).await
    }

    /// Ends a decided transaction without undoing what its remaining branches did (after a
    /// person restored the data by hand): each branch's owner deletes its undo log and
    /// releases its locks, and the last one records the decision's final status. The request
    /// is recorded first, in one write, so no node goes on rolling back afterwards, and a
    /// crash half-way leaves a transaction that still finishes the same way.
    pub async fn force_finish(
        self: &Arc<Self>,
        xid: &str,
    ) -> Result<GlobalStatus, CoordinatorError> {
        self.intervene(xid, Intervention::ForceFinish).await
    }

    async fn intervene(
        self: &Arc<Self>,
        xid: &str,
        what: Intervention,
    ) -> Result<GlobalStatus, CoordinatorError> {
        check_xid(xid)?;
        let tx = self
            .store
            .intervene(xid, what)
            .await?
            .ok_or_else(|| CoordinatorError::UnknownXid(xid.to_string()))?;
        if tx.status.outcome().is_none() {
            return Ok(tx.status);
        }
        lock(&self.backoff).remove(xid);
        self.settle(xid, Decided::of(&tx)).await
    }

    /// Whether this sweep is due to read finished transactions too (see [`FORGET_EVERY`]).
    fn forget_due(&self) -> bool {
        let mut last = lock(&self.last_forget);
        let due = last.is_none_or(|t| t.elapsed() >= FORGET_EVERY);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// One pass of the background work: time out expired transactions, drive decided ones
    /// whose phase 2 is unfinished, and (every [`FORGET_EVERY`]) forget long-finished ones.
    pub async fn sweep(self: &Arc<Self>) {
        let forget_due = self.forget_due();
        if forget_due {
            match self.store.release_orphan_locks().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(locks = n, "released row locks whose transaction had ended")
                }
                Err(e) => tracing::warn!(error = %e, "could not look for row locks left behind"),
            }
        }
        let txs = if forget_due {
            self.store.list().await
        } else {
            self.store.unfinished().await
        };
        let txs = match txs {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "coordinator sweep could not read the store");
                return;
            }
        };
        let now = now_ms();
        for tx in txs {
            if tx.is_expired(now) {
                tracing::info!(xid = %tx.xid, "global transaction timed out; rolling back");
                let _ = self.decide(&tx.xid, GlobalStatus::TimeoutRollbacking).await;
            } else if tx.status.is_final() {
                let age = now.saturating_sub(tx.begun_at_ms.saturating_add(tx.timeout_ms));
                if age > FINISHED_RETENTION.as_millis() as u64 {
                    let _ = self.store.forget(&tx.xid).await;
                }
            } else if tx.status != GlobalStatus::Begin && !self.backing_off(&tx.xid) {
                self.run_phase2(&tx.xid, Decided::of(&tx), None).await;
            }
        }
    }

    /// Sweeps every `interval` until `shutdown` turns true. The first sweep runs at once, so
    /// a restarted Tandem finishes the phase 2 a crash interrupted.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stop = async {
                    let _ = shutdown.wait_for(|s| *s).await;
                };
                tokio::select! {
                    _ = stop => return,
                    _ = tick.tick() => {}
                }
                me.sweep().await;
            }
        });
    }
}

/// How a run of phase 2 ended without failing.
enum Phase2Run {
    Done,
    /// A branch needs a person (a dirty write, or an error retrying cannot fix): phase 2 stops
    /// there, keeping its locks.
    NeedsPerson,
}

/// How long to wait before the `attempts`-th retry of a failed phase 2: doubling from the
/// sweep interval, at most a minute.
fn retry_delay(attempts: u32) -> Duration {
    let ms = 250u64.saturating_mul(1u64 << attempts.min(16));
    Duration::from_millis(ms.min(60_000))
}

fn check_xid(xid: &str) -> Result<(), CoordinatorError> {
    if xid.is_empty() || xid.len() > MAX_XID_LEN || xid.contains('\0') {
        return Err(CoordinatorError::InvalidXid(format!(
            "an XID is 1 to {MAX_XID_LEN} bytes without NUL"
        )));
    }
    Ok(())
}

/// A new XID: time-ordered, with 64 random bits so XIDs from many sidecars never collide.
pub fn new_xid() -> String {
    let r: u64 = rand::random();
    format!("{:013x}-{r:016x}", now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::model::BranchKind;
    use crate::coordinator::store::memory::MemoryStore;

    /// A resource manager that records calls and can be told to fail or report a dirty write.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        fail: Mutex<bool>,
        dirty: Mutex<Option<u64>>,
        /// How long each rollback takes.
        slow: Mutex<Duration>,
    }

    impl ResourceManager for Recorder {
        fn commit<'a>(&'a self, b: &'a Branch) -> BoxFuture<'a, Result<(), Phase2Error>> {
            Box::pin(async move {
                if *lock(&self.fail) {
                    return Err(Phase2Error("down".into()));
                }
                lock(&self.calls).push(format!("commit {}", b.branch_id));
                Ok(())
            })
        }

        fn rollback<'a>(
            &'a self,
            b: &'a Branch,
        ) -> BoxFuture<'a, Result<RollbackOutcome, Phase2Error>> {
            Box::pin(async move {
                let slow = *lock(&self.slow);
                tokio::time::sleep(slow).await;
                if *lock(&self.fail) {
                    return Err(Phase2Error("down".into()));
                }
                lock(&self.calls).push(format!("rollback {}", b.branch_id));
                if *lock(&self.dirty) == Some(b.branch_id) {
                    return Ok(RollbackOutcome::NeedsAttention("row changed".into()));
                }
                Ok(RollbackOutcome::RolledBack)
            })
        }
    }

    fn setup() -> (Arc<Coordinator>, Arc<Recorder>) {
        let metrics = crate::metrics::Metrics::new().coordinator();
        let c = Coordinator::new(
            AnyStore::Memory(MemoryStore::new()),
            Duration::from_secs(60),
            metrics,
        );
        let rm = Arc::new(Recorder::default());
        c.register_resource("db1", rm.clone());
        (c, rm)
    }

    /// Waits for background phase 2 to end.
    async fn settle(c: &Arc<Coordinator>, xid: &str) {
        for _ in 0..100 {
            if c.status(xid).await.unwrap().is_final() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{xid} did not settle");
    }

    fn branch(xid: &str, id: u64, key: &str) -> Branch {
        Branch {
            xid: xid.into(),
            branch_id: id,
            kind: BranchKind::At,
            resource: "db1".into(),
            status: BranchStatus::Registered,
            lock_keys: vec![key.into()],
            application_data: None,
            attention: None,
            seq: 0,
        }
    }

    /// The sweep found the decision first and runs its phase 2: a rollback asked meanwhile
    /// answers the final status once that run is done, and nothing runs twice.
    #[tokio::test]
    async fn a_rollback_waits_for_phase_two_already_running() {
        let (c, rm) = setup();
        *lock(&rm.slow) = Duration::from_millis(200);
        let tx = c.begin(None).await.unwrap();
        c.register_branch(&branch(&tx.xid, 1, "a")).await.unwrap();
        c.store()
            .decide(&tx.xid, GlobalStatus::Rollbacking)
            .await
            .unwrap();
        let sweep = tokio::spawn({
            let c = c.clone();
            async move { c.sweep().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(c.rollback(&tx.xid).await.unwrap(), GlobalStatus::Rollbacked);
        sweep.await.unwrap();
        assert_eq!(*lock(&rm.calls), vec!["rollback 1"]);
    }

    #[tokio::test]
    async fn commit_runs_phase2_and_is_idempotent() {
        let (c, rm) = setup();
        let tx = c.begin(None).await.unwrap();
        c.register_branch(&branch(&tx.xid, 1, "a")).await.unwrap();
        c.register_branch(&branch(&tx.xid, 2, "b")).await.unwrap();
        assert_eq!(c.commit(&tx.xid).await.unwrap(), GlobalStatus::Committed);
        settle(&c, &tx.xid).await;
        assert_eq!(*lock(&rm.calls), vec!["commit 1", "commit 2"]);
        assert_eq!(c.commit(&tx.xid).await.unwrap(), GlobalStatus::Committed);
        assert_eq!(c.rollback(&tx.xid).await.unwrap(), GlobalStatus::Committed);
        assert_eq!(lock(&rm.calls).len(), 2, "no phase 2 ran twice");
        // begin + 2 branches + decision + final
        assert_eq!(c.store().writes(), 5);
    }

    /// Branch ids come from each sidecar's clock: a sidecar whose clock is behind registers
    /// a later branch with a smaller id. Rollback follows the store's registration order.
    #[tokio::test]
    async fn rollback_order_is_registration_order_whatever_the_clocks() {
        let (c, rm) = setup();
        let tx = c.begin(None).await.unwrap();
        for id in [300, 100, 200] {
            c.register_branch(&branch(&tx.xid, id, &format!("k{id}")))
                .await
                .unwrap();
        }
        assert_eq!(c.rollback(&tx.xid).await.unwrap(), GlobalStatus::Rollbacked);
        assert_eq!(
            *lock(&rm.calls),
            vec!["rollback 200", "rollback 100", "rollback 300"]
        );
    }

    #[tokio::test]
    async fn rollback_runs_branches_in_reverse_and_stops_on_dirty_write() {
        let (c, rm) = setup();
        let tx = c.begin(None).await.unwrap();
        for id in 1..=3 {
            c.register_branch(&branch(&tx.xid, id, &format!("k{id}")))
                .await
                .unwrap();
        }
        *lock(&rm.dirty) = Some(2);
        assert_eq!(
            c.rollback(&tx.xid).await.unwrap(),
            GlobalStatus::Rollbacking
        );
        assert_eq!(*lock(&rm.calls), vec!["rollback 3", "rollback 2"]);
        for key in ["k1", "k2"] {
            let holder = c.store().lock_holder("other", &[key.into()]).await.unwrap();
            assert_eq!(
                holder.map(|h| h.1),
                Some(tx.xid.clone()),
                "{key}: branches not rolled back keep locks"
            );
        }
        assert_eq!(
            c.store()
                .lock_holder("other", &["k3".into()])
                .await
                .unwrap(),
            None
        );
        // Sweeps do not retry a branch that needs a person.
        c.sweep().await;
        assert_eq!(lock(&rm.calls).len(), 2);
        // After the person fixed the data, a retry finishes the rollback.
        *lock(&rm.dirty) = None;
        assert_eq!(c.retry(&tx.xid).await.unwrap(), GlobalStatus::Rollbacked);
        assert_eq!(
            *lock(&rm.calls),
            vec!["rollback 3", "rollback 2", "rollback 2", "rollback 1"]
        );
    }

    #[test]
    fn retries_back_off_up_to_a_minute() {
        assert_eq!(retry_delay(1), Duration::from_millis(500));
        assert_eq!(retry_delay(2), Duration::from_secs(1));
        assert_eq!(retry_delay(8), Duration::from_secs(60));
        assert_eq!(retry_delay(40), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn force_finish_ends_a_stuck_transaction() {
        let (c, rm) = setup();
        let tx = c.begin(None).await.unwrap();
        c.register_branch(&branch(&tx.xid, 1, "a")).await.unwrap();
        *lock(&rm.dirty) = Some(1);
        assert_eq!(
            c.rollback(&tx.xid).await.unwrap(),
            GlobalStatus::Rollbacking
        );
        assert_eq!(
            c.force_finish(&tx.xid).await.unwrap(),
            GlobalStatus::Rollbacked
        );
        assert_eq!(
            lock(&rm.calls).last().map(String::as_str),
            Some("commit 1"),
            "undo log dropped"
        );
        assert_eq!(
            c.store().lock_holder("o", &["a".into()]).await.unwrap(),
            None
        );
    }

    /// Owns the resources it names, as node `node` of a mesh.
    struct Owns(&'static str, &'static [&'static str]);

    impl Ownership for Owns {
        fn fence(&self, resource: &str) -> Option<Fence> {
            self.1.contains(&resource).then(|| Fence {
                resource: resource.into(),
                node: self.0.into(),
            })
        }
    }

    /// Two nodes share a store, each owning one data source. A force-finish asked of one
    /// node ends each branch through its owner, without undoing it: the undo log of the
    /// other node's branch is deleted by that node, not left behind.
    #[tokio::test]
    async fn force_finish_in_a_mesh_ends_each_branch_through_its_owner() {
        use crate::coordinator::store::kv::{KvStore, Table};
        let store = MemoryStore::new();
        for (resource, node) in [("db1", "n1"), ("db2", "n2")] {
            store
                .write(true, move |t| {
                    t.put(Table::Owners, resource, serde_json::to_vec(node).unwrap())
                })
                .await
                .unwrap();
        }
        let node = |name: &'static str, owns: &'static [&'static str]| {
            let metrics = crate::metrics::Metrics::new().coordinator();
            let c = Coordinator::new(
                AnyStore::Memory(store.clone()),
                Duration::from_secs(60),
                metrics,
            );
            let rm = Arc::new(Recorder::default());
            c.register_resource(owns[0], rm.clone());
            c.set_ownership(Arc::new(Owns(name, owns)));
            (c, rm)
        };
        let (c1, rm1) = node("n1", &["db1"]);
        let (c2, rm2) = node("n2", &["db2"]);
        let tx = c1.begin(None).await.unwrap();
        c1.register_branch(&branch(&tx.xid, 1, "a")).await.unwrap();
        let mut second = branch(&tx.xid, 2, "b");
        second.resource = "db2".into();
        c2.register_branch(&second).await.unwrap();
        // Branch 2 comes first in the rollback, and its owner finds a dirty write.
        c1.store()
            .decide(&tx.xid, GlobalStatus::Rollbacking)
            .await
            .unwrap();
        *lock(&rm2.dirty) = Some(2);
        c2.sweep().await;
        c1.sweep().await;
        assert_eq!(*lock(&rm2.calls), vec!["rollback 2"]);
        assert!(lock(&rm1.calls).is_empty(), "branch 1 waits for branch 2");

        // The store's watch would tell node 2 of the changed record; here the test does.
        let told = tokio::spawn({
            let c2 = c2.clone();
            let xid = tx.xid.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let tx = c2.store().get(&xid).await.unwrap().unwrap();
                assert!(tx.forced, "the request is on record before any branch ends");
                c2.changed(&tx, 0);
            }
        });
        assert_eq!(
            c1.force_finish(&tx.xid).await.unwrap(),
            GlobalStatus::Rollbacked
        );
        told.await.unwrap();
        assert_eq!(*lock(&rm1.calls), vec!["commit 1"], "never undone");
        assert_eq!(*lock(&rm2.calls), vec!["rollback 2", "commit 2"]);
        assert!(c1.store().branches(&tx.xid).await.unwrap().is_empty());
        assert_eq!(
            c1.store()
                .lock_holder("o", &["a".into(), "b".into()])
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn failed_phase2_is_retried_by_the_sweep() {
        let (c, rm) = setup();
        let tx = c.begin(None).await.unwrap();
        c.register_branch(&branch(&tx.xid, 1, "a")).await.unwrap();
        *lock(&rm.fail) = true;
        assert_eq!(
            c.commit(&tx.xid).await.unwrap(),
            GlobalStatus::Committed,
            "the outcome is fixed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            c.status(&tx.xid).await.unwrap(),
            GlobalStatus::Committing,
            "cleanup pending"
        );
        assert_eq!(
            c.store().lock_holder("o", &["a".into()]).await.unwrap(),
            None,
            "locks go with the decision"
        );
        *lock(&rm.fail) = false;
        // The failure asked for a pause: a sweep right away leaves it alone…
        c.sweep().await;
        assert_eq!(c.status(&tx.xid).await.unwrap(), GlobalStatus::Committing);
        // …and one after the pause finishes it.
        tokio::time::sleep(retry_delay(1)).await;
        c.sweep().await;
        assert_eq!(c.status(&tx.xid).await.unwrap(), GlobalStatus::Committed);
    }

    #[tokio::test]
    async fn timeouts_roll_back_and_refuse_late_work() {
        let (c, rm) = setup();
        // Long enough for the first branch to register on a busy machine.
        let tx = c.begin(Some(Duration::from_millis(500))).await.unwrap();
        c.store()
            .register_branch(&branch(&tx.xid, 1, "a"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        // A late branch fails, and the transaction is rolled back on the spot.
        let late = c.register_branch(&branch(&tx.xid, 2, "b")).await;
        assert!(
            matches!(late, Err(RegisterError::NotActive { .. })),
            "{late:?}"
        );
        assert_eq!(
            c.status(&tx.xid).await.unwrap(),
            GlobalStatus::TimeoutRollbacked
        );
        assert_eq!(*lock(&rm.calls), vec!["rollback 1"]);
        // A late commit reports the timeout outcome.
        assert_eq!(
            c.commit(&tx.xid).await.unwrap(),
            GlobalStatus::TimeoutRollbacked
        );

        let tx = c.begin(Some(Duration::from_millis(1))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            c.commit(&tx.xid).await.unwrap(),
            GlobalStatus::TimeoutRollbacked
        );
        let tx = c.begin(Some(Duration::from_millis(1))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        c.sweep().await;
        assert_eq!(
            c.status(&tx.xid).await.unwrap(),
            GlobalStatus::TimeoutRollbacked
        );
    }

    #[tokio::test]
    async fn unknown_and_invalid_xids() {
        let (c, _) = setup();
        assert_eq!(
            c.commit("nope").await,
            Err(CoordinatorError::UnknownXid("nope".into()))
        );
        assert!(matches!(
            c.status("").await,
            Err(CoordinatorError::InvalidXid(_))
        ));
        assert!(matches!(
            c.rollback(&"x".repeat(129)).await,
            Err(CoordinatorError::InvalidXid(_))
        ));
    }
}
