//! HTTP endpoints: the admin API (liveness, readiness, metrics).

pub mod admin;
