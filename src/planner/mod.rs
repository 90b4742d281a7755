//! Where each statement goes.
//!
//! A session hands every statement to the planner of its listener's executor, which decides
//! from the statement's class and what the session holds (an open transaction, a global
//! transaction, state only one backend has) which backend runs it. The executors in
//! `crate::exec` carry the decision out on the session's connections. Deciding is cheap: the
//! class comes from the first keyword, and only a read that might go to a replica is lexed,
//! never parsed.

pub mod rw_split;
pub mod sharding;

/// Which of an executor's backends runs a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary: writes, transactions, and every read that must see what only the
    /// primary has.
    Primary,
    /// A replica, chosen by the executor (by weight, among the healthy ones).
    Replica,
    /// Session state (`SET` of session variables, `USE`): run on the primary, which answers,
    /// and on every other connection of the session, now and when it opens one later.
    Everywhere,
    /// Whichever backend holds what an earlier statement left on its connection (see
    /// [`Previous`]).
    Previous(Previous),
}

/// What an earlier statement left on the connection it ran on, and which statement that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    /// `ROW_COUNT()`: the previous statement's.
    Statement,
    /// `FOUND_ROWS()`: the last `SELECT`'s (or `SHOW`'s).
    Select,
    /// `SHOW WARNINGS`, `SHOW ERRORS`, `@@warning_count`, `@@error_count`: the last
    /// statement that used a table or raised a condition (the others leave the list alone).
    Diagnostics,
}

/// A routing decision and why it was taken (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub target: Target,
    pub why: &'static str,
}

impl Route {
    pub const fn new(target: Target, why: &'static str) -> Route {
        Route { target, why }
    }
}
