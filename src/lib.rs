//! Tandem: a MySQL-protocol sidecar proxy.
//!
//! An application connects with its ordinary MySQL driver; Tandem authenticates it, keeps one
//! backend connection per client session, and forwards statements and results byte for byte,
//! stepping in only where it must.
//!
//! * [`at`]: AT-mode branches: table metadata, row images, undo log, lock keys, phase 2.
//! * [`wire`]: Tandem's own MySQL protocol layer: packet framing, handshake and auth,
//!   response scanning, error packets. Imports nothing above it.
//! * [`config`]: the YAML model, `${NAME}` substitution and validation, pure and testable.
//! * [`coordinator`]: global transaction state, branches and global row locks behind a
//!   store interface (embedded redb file; in memory for tests). Knows nothing of SQL.
//! * [`frontend`]: listeners, client handshake, the per-client session loop and the relay
//!   that streams responses back.
//! * [`sql`]: cheap statement classification (no parsing on the hot path), and inside global
//!   transactions a lexer that reads text as MariaDB does and the analysis built on it.
//! * [`planner`]: per statement, which of an executor's backends runs it (`rw_split`'s
//!   rules: what a replica may answer).
//! * [`exec`]: what carries a routing decision out (`rw_split`'s replicas and the session
//!   state a session carries to each connection it opens).
//! * [`backend`]: backend connections (raw packets, so results stream untouched) and the
//!   per-data-source pools with health checks.
//! * [`http`]: the admin API (liveness, readiness, Prometheus metrics).
//! * [`metrics`]: the Prometheus registry, passed by handle rather than held in a global.
//! * [`server`]: wires the pieces together and runs until shutdown.

pub mod at;
pub mod backend;
pub mod config;
pub mod coordinator;
pub mod exec;
pub mod frontend;
pub mod http;
pub mod metrics;
pub mod planner;
pub mod server;
pub mod sql;
pub mod wire;
