//! What the coordinator records: global transactions, their branches, and lock keys.

use serde::{Deserialize, Serialize};

/// A global row lock key: data source identity, table and primary key, built by the branch
/// kind that owns the row (see `at::lock_key`). The coordinator compares keys only for
/// equality and sorts them.
pub type LockKey = String;

/// Status of a global transaction.
///
/// `Begin` moves to exactly one decision (`Committing`, `Rollbacking` or
/// `TimeoutRollbacking`), and each decision to its one final status. The commit family and
/// the rollback family never cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GlobalStatus {
    Begin,
    Committing,
    Rollbacking,
    TimeoutRollbacking,
    Committed,
    Rollbacked,
    TimeoutRollbacked,
}

impl GlobalStatus {
    pub const ALL: [GlobalStatus; 7] = [
        GlobalStatus::Begin,
        GlobalStatus::Committing,
        GlobalStatus::Rollbacking,
        GlobalStatus::TimeoutRollbacking,
        GlobalStatus::Committed,
        GlobalStatus::Rollbacked,
        GlobalStatus::TimeoutRollbacked,
    ];

    /// Whether a transition from `self` to `next` is allowed.
    /// The final status a decided transaction reaches once its phase 2 is done.
    pub fn outcome(self) -> Option<GlobalStatus> {
        match self {
            GlobalStatus::Committing => Some(GlobalStatus::Committed),
            GlobalStatus::Rollbacking => Some(GlobalStatus::Rollbacked),
            GlobalStatus::TimeoutRollbacking => Some(GlobalStatus::TimeoutRollbacked),
            _ => None,
        }
    }

    pub fn can_move_to(self, next: GlobalStatus) -> bool {
        use GlobalStatus::*;
        matches!(
            (self, next),
            (Begin, Committing)
                | (Begin, Rollbacking)
                | (Begin, TimeoutRollbacking)
                | (Committing, Committed)
                | (Rollbacking, Rollbacked)
                | (TimeoutRollbacking, TimeoutRollbacked)
        )
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            GlobalStatus::Committed | GlobalStatus::Rollbacked | GlobalStatus::TimeoutRollbacked
        )
    }

    /// True for the statuses in which phase 2 rolls branches back.
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            GlobalStatus::Rollbacking
                | GlobalStatus::TimeoutRollbacking
                | GlobalStatus::Rollbacked
                | GlobalStatus::TimeoutRollbacked
        )
    }

    /// The name users see (`tandem_status()`, the admin API).
    pub fn name(self) -> &'static str {
        match self {
            GlobalStatus::Begin => "Begin",
            GlobalStatus::Committing => "Committing",
            GlobalStatus::Rollbacking => "Rollbacking",
            GlobalStatus::TimeoutRollbacking => "TimeoutRollbacking",
            GlobalStatus::Committed => "Committed",
            GlobalStatus::Rollbacked => "Rollbacked",
            GlobalStatus::TimeoutRollbacked => "TimeoutRollbacked",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// How a branch is carried out in phase 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BranchKind {
    /// A local MySQL transaction with undo log (Seata AT).
    At,
    /// An HTTP resource with prepare/commit/cancel (TCC).
    Tcc,
    /// A shard's part of a sharded transaction that wrote on several shards: a MariaDB XA
    /// transaction, prepared before the decision and committed or rolled back by its XID.
    Xa,
}

/// Status of one branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BranchStatus {
    /// Its row locks are being taken in several store writes (more rows than the store
    /// takes in one). Until it is `Registered` its local transaction cannot commit, so phase
    /// 2 has nothing to do for it; its locks are released with the transaction's.
    Registering,
    /// Phase 1 is done: the local transaction committed with its undo log.
    Registered,
    /// Phase 2 committed (undo log deleted).
    Committed,
    /// Phase 2 rolled back (rows restored).
    RolledBack,
    /// Rollback found data changed by someone else since phase 1 (dirty write): a person
    /// must look. The branch keeps its locks.
    NeedsAttention,
}

/// Proof, checked inside a store write, that `node` owns `resource`: only the owner of a
/// data source records phase 2 of its branches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub resource: String,
    pub node: String,
}

/// A global transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalTx {
    pub xid: String,
    pub status: GlobalStatus,
    /// Milliseconds since the Unix epoch when it began.
    pub begun_at_ms: u64,
    pub timeout_ms: u64,
    /// A person force-finished it (the admin API): phase 2 ends its remaining branches
    /// without undoing them, deleting their undo logs as a commit does, and records the
    /// decision's own final status.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forced: bool,
    /// How many times a person asked phase 2 to run again (the admin API's retry). Each
    /// request changes this record, so every node that owns one of its branches hears of it
    /// through the store's watch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

impl GlobalTx {
    /// A transaction that begins at `begun_at_ms` (milliseconds since the Unix epoch).
    pub fn begun(xid: String, begun_at_ms: u64, timeout_ms: u64) -> GlobalTx {
        GlobalTx {
            xid,
            status: GlobalStatus::Begin,
            begun_at_ms,
            timeout_ms,
            forced: false,
            retries: 0,
        }
    }

    /// True when the transaction is still open and past its timeout at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.status == GlobalStatus::Begin
            && now_ms >= self.begun_at_ms.saturating_add(self.timeout_ms)
    }
}

/// One branch of a global transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub xid: String,
    /// Unique within the store; increases in registration order, so phase-2 rollback can run
    /// branches in reverse order.
    pub branch_id: u64,
    pub kind: BranchKind,
    /// The resource that runs phase 2 (for AT, the data source identity `host:port/db`).
    pub resource: String,
    pub status: BranchStatus,
    /// The row locks the branch holds (sorted).
    pub lock_keys: Vec<LockKey>,
    /// Kind-specific data phase 2 needs (for TCC, the original request context).
    #[serde(default)]
    pub application_data: Option<String>,
    /// Registration order within the transaction, as the store counts it (1, 2, …; 0 in
    /// records written before it was kept). Rollback goes in reverse of it, whatever the
    /// clocks of the sidecars that chose the branch ids.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// Why the branch needs a person, when its phase 2 stopped (a dirty write, or an error
    /// of the database's that retrying cannot fix), as phase 2 found it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a person asks of a decided transaction whose phase 2 stopped (the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intervention {
    /// The data was fixed by hand: the branches that needed attention are rolled back again.
    Retry,
    /// The data was restored by hand: the remaining branches end without being undone.
    ForceFinish,
}

#[cfg(test)]
mod tests {
    use super::GlobalStatus::*;
    use super::*;

    #[test]
    fn status_moves_only_forward_and_never_crosses_families() {
        let allowed = [
            (Begin, Committing),
            (Begin, Rollbacking),
            (Begin, TimeoutRollbacking),
            (Committing, Committed),
            (Rollbacking, Rollbacked),
            (TimeoutRollbacking, TimeoutRollbacked),
        ];
        for from in GlobalStatus::ALL {
            for to in GlobalStatus::ALL {
                assert_eq!(
                    from.can_move_to(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
        for s in GlobalStatus::ALL {
            assert_eq!(GlobalStatus::from_name(s.name()), Some(s));
            if s.is_final() {
                assert!(GlobalStatus::ALL.iter().all(|n| !s.can_move_to(*n)));
            }
        }
    }

    #[test]
    fn expiry_applies_to_open_transactions_only() {
        let mut tx = GlobalTx::begun("x".into(), 1_000, 500);
        assert!(!tx.is_expired(1_499));
        assert!(tx.is_expired(1_500));
        tx.status = Committing;
        assert!(!tx.is_expired(10_000));
    }
}
