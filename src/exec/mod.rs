//! Executors: what carries a planner's decision out on a session's connections.
//!
//! `single` is today's session: one data source, one pinned connection, no planner on the
//! way. `rw_split` ([`rw_split`]) adds replicas: it picks the replica a read goes to, and
//! keeps what a session must carry to each connection it opens ([`session_state`]).
//! `sharding` ([`sharding`]) runs a statement on the shards its plan names and merges their
//! answers.

pub mod rw_split;
pub mod session_state;
pub mod sharding;
