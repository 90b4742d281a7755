//! The global transaction coordinator: global transaction state, branches and global row
//! locks, kept in a [`store::Store`].
//!
//! The coordinator knows nothing of SQL or HTTP. Branch kinds (AT over MySQL, later TCC over
//! HTTP) register branches with it and carry out phase 2 when it tells them; `at` and `http`
//! import this module, never the other way round.
//!
//! The rules every store keeps (see DESIGN.md):
//! * a global status only moves forward, by compare-and-set ([`GlobalStatus::can_move_to`]);
//! * a branch and all its row locks are registered in one atomic write, only while the global
//!   transaction is still `Begin`; locks are re-entrant for the same XID;
//! * locks are released when the commit decision is recorded, or after each branch's rollback.

pub mod model;
pub mod service;
pub mod store;

pub mod mesh;

pub use model::{Branch, BranchKind, BranchStatus, Fence, GlobalStatus, GlobalTx, LockKey};
pub use service::{Coordinator, CoordinatorError, ResourceManager, RollbackOutcome};
pub use store::{RegisterError, Store, StoreError, Transition};
