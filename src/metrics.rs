//! Prometheus metrics.
//!
//! One [`Metrics`] per Tandem instance, passed by handle (tests run several instances in one
//! process). Per-listener handles are resolved once, so counting a statement on the hot path
//! is an atomic add, not a label lookup.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::sql::StatementKind;

pub struct Metrics {
    registry: Registry,
    client_connections: IntGaugeVec,
    client_connections_total: IntCounterVec,
    statements: IntCounterVec,
    statement_seconds: HistogramVec,
    backend_connections: IntGaugeVec,
    backend_connects: IntCounterVec,
    errors: IntCounterVec,
    reads: IntCounterVec,
    primary_fallbacks: IntCounterVec,
    gtid_wait_seconds: HistogramVec,
    replica_lag: prometheus::GaugeVec,
    coordinator: CoordinatorMetrics,
}

/// Handles for the global transaction coordinator.
#[derive(Clone)]
pub struct CoordinatorMetrics {
    /// Global transactions that reached a final status, by status.
    pub outcomes: IntCounterVec,
    /// Time of one branch's phase 2, by action (commit, rollback).
    pub phase2_seconds: HistogramVec,
    /// Branch registrations refused because another global transaction held a row.
    pub lock_conflicts: IntCounter,
    /// Coordinator store writes so far.
    pub store_writes: IntGauge,
    /// Store writes divided by finished global transactions.
    pub store_writes_per_transaction: prometheus::Gauge,
    /// Store operations run again because another writer changed what they read (etcd).
    pub store_retries: IntGauge,
}

/// Handles for one listener.
pub struct ListenerMetrics {
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    statements: Vec<IntCounter>,
    latency: Vec<Histogram>,
    name: String,
    errors: IntCounterVec,
    reads: IntCounterVec,
    primary_fallbacks: IntCounterVec,
    gtid_waits: Histogram,
}

impl ListenerMetrics {
    /// `rw_split`: a read ran on `backend` (a replica's data source, or `primary`).
    pub fn read_on(&self, backend: &str) {
        self.reads
            .with_label_values(&[self.name.as_str(), backend])
            .inc();
    }

    /// `rw_split`: a read a replica could have answered ran on the primary, and why.
    pub fn primary_fallback(&self, why: &str) {
        self.primary_fallbacks
            .with_label_values(&[self.name.as_str(), why])
            .inc();
    }

    /// `rw_split`: a read waited for its replica to apply the session's writes.
    pub fn gtid_wait(&self, seconds: f64) {
        self.gtid_waits.observe(seconds);
    }

    /// Records one statement and how long its response took.
    pub fn statement(&self, kind: StatementKind, seconds: f64) {
        self.statements[kind.index()].inc();
        self.latency[kind.index()].observe(seconds);
    }

    /// Records an error sent to a client, by MySQL error code.
    pub fn error(&self, code: u16) {
        // Errors are rare: a label lookup here costs nothing that matters.
        self.errors
            .with_label_values(&[self.name.as_str(), code.to_string().as_str()])
            .inc();
    }
}

/// Handles for one data source's pool.
#[derive(Clone)]
pub struct PoolMetrics {
    pub in_use: IntGauge,
    pub idle: IntGauge,
    pub connects_ok: IntCounter,
    pub connects_failed: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let client_connections = IntGaugeVec::new(
            Opts::new("tandem_client_connections", "Client connections open now"),
            &["listener"],
        )
        .expect("valid metric");
        let client_connections_total = IntCounterVec::new(
            Opts::new(
                "tandem_client_connections_total",
                "Client connections accepted",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let statements = IntCounterVec::new(
            Opts::new(
                "tandem_statements_total",
                "Statements and commands handled, by kind",
            ),
            &["listener", "kind"],
        )
        .expect("valid metric");
        let statement_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tandem_statement_duration_seconds",
                "Time from a statement's arrival to the end of its response",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.5, 14).expect("valid buckets")),
            &["listener", "kind"],
        )
        .expect("valid metric");
        let backend_connections = IntGaugeVec::new(
            Opts::new("tandem_backend_connections", "Backend connections by state"),
            &["data_source", "state"],
        )
        .expect("valid metric");
        let backend_connects = IntCounterVec::new(
            Opts::new(
                "tandem_backend_connects_total",
                "Backend connection attempts",
            ),
            &["data_source", "result"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "tandem_errors_total",
                "Errors sent to clients, by MySQL error code",
            ),
            &["listener", "code"],
        )
        .expect("valid metric");
        let reads = IntCounterVec::new(
            Opts::new(
                "tandem_reads_total",
                "rw_split: reads by the backend that answered (a replica's data source, or primary)",
            ),
            &["listener", "backend"],
        )
        .expect("valid metric");
        let primary_fallbacks = IntCounterVec::new(
            Opts::new(
                "tandem_primary_fallbacks_total",
                "rw_split: reads a replica could have answered that ran on the primary, by reason",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let gtid_wait_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tandem_gtid_wait_seconds",
                "rw_split: time a read waited for its replica to apply the session's writes",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.5, 14).expect("valid buckets")),
            &["listener"],
        )
        .expect("valid metric");
        let replica_lag = prometheus::GaugeVec::new(
            Opts::new(
                "tandem_replica_lag_seconds",
                "rw_split: how far behind each replica was last seen (-1: not replicating or down)",
            ),
            &["data_source"],
        )
        .expect("valid metric");
        let coordinator = CoordinatorMetrics {
            outcomes: IntCounterVec::new(
                Opts::new(
                    "tandem_global_transactions_total",
                    "Global transactions finished, by outcome",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            phase2_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "tandem_branch_phase2_seconds",
                    "Time of one branch's phase 2",
                )
                .buckets(prometheus::exponential_buckets(0.0005, 2.5, 12).expect("valid buckets")),
                &["action"],
            )
            .expect("valid metric"),
            lock_conflicts: IntCounter::new(
                "tandem_global_lock_conflicts_total",
                "Branch registrations that found a row locked by another global transaction",
            )
            .expect("valid metric"),
            store_writes: IntGauge::new(
                "tandem_coordinator_store_writes",
                "Coordinator store writes since start",
            )
            .expect("valid metric"),
            store_writes_per_transaction: prometheus::Gauge::new(
                "tandem_store_writes_per_global_transaction",
                "Coordinator store writes since start divided by global transactions finished",
            )
            .expect("valid metric"),
            store_retries: IntGauge::new(
                "tandem_coordinator_store_retries",
                "Coordinator store operations run again since start because another writer changed what they read",
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(coordinator.outcomes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(coordinator.phase2_seconds.clone()),
            Box::new(coordinator.lock_conflicts.clone()),
            Box::new(coordinator.store_writes.clone()),
            Box::new(coordinator.store_writes_per_transaction.clone()),
            Box::new(coordinator.store_retries.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        for c in [
            Box::new(client_connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(client_connections_total.clone()),
            Box::new(statements.clone()),
            Box::new(statement_seconds.clone()),
            Box::new(backend_connections.clone()),
            Box::new(backend_connects.clone()),
            Box::new(errors.clone()),
            Box::new(reads.clone()),
            Box::new(primary_fallbacks.clone()),
            Box::new(gtid_wait_seconds.clone()),
            Box::new(replica_lag.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            client_connections,
            client_connections_total,
            statements,
            statement_seconds,
            backend_connections,
            backend_connects,
            errors,
            reads,
            primary_fallbacks,
            gtid_wait_seconds,
            replica_lag,
            coordinator,
        }
    }

    /// `rw_split`: the gauge of how far behind replica `data_source` is.
    pub fn replica_lag(&self, data_source: &str) -> prometheus::Gauge {
        self.replica_lag.with_label_values(&[data_source])
    }

    pub fn coordinator(&self) -> CoordinatorMetrics {
        self.coordinator.clone()
    }

    pub fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics {
            connections: self.client_connections.with_label_values(&[name]),
            connections_total: self.client_connections_total.with_label_values(&[name]),
            statements: StatementKind::ALL
                .iter()
                .map(|k| self.statements.with_label_values(&[name, k.label()]))
                .collect(),
            latency: StatementKind::ALL
                .iter()
                .map(|k| self.statement_seconds.with_label_values(&[name, k.label()]))
                .collect(),
            name: name.to_string(),
            errors: self.errors.clone(),
            reads: self.reads.clone(),
            primary_fallbacks: self.primary_fallbacks.clone(),
            gtid_waits: self.gtid_wait_seconds.with_label_values(&[name]),
        }
    }

    pub fn pool(&self, data_source: &str) -> PoolMetrics {
        PoolMetrics {
            in_use: self
                .backend_connections
                .with_label_values(&[data_source, "in_use"]),
            idle: self
                .backend_connections
                .with_label_values(&[data_source, "idle"]),
            connects_ok: self
                .backend_connects
                .with_label_values(&[data_source, "ok"]),
            connects_failed: self
                .backend_connects
                .with_label_values(&[data_source, "failed"]),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let m = Metrics::new();
        let l = m.listener("orders");
        l.connections.inc();
        l.statement(StatementKind::Select, 0.001);
        l.statement(StatementKind::Select, 0.002);
        l.error(1045);
        let p = m.pool("orders_db");
        p.in_use.set(3);
        let text = m.render();
        assert!(
            text.contains(r#"tandem_statements_total{kind="select",listener="orders"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tandem_errors_total{code="1045",listener="orders"} 1"#),
            "{text}"
        );
        assert!(text
            .contains(r#"tandem_backend_connections{data_source="orders_db",state="in_use"} 3"#));
        assert!(text.contains(r#"tandem_client_connections{listener="orders"} 1"#));
        assert!(text.contains("tandem_statement_duration_seconds_bucket"));
    }
}
