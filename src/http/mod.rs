//! HTTP endpoints: the admin API (liveness, readiness, metrics, transactions, cluster) and
//! the HTTP sidecars in front of services' own APIs.

pub mod admin;
pub mod sidecar;
pub mod tcc;
