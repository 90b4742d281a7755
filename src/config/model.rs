//! The configuration model. Field documentation here is the reference for
//! `docs/configuration.md`; defaults are stated beside each field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::units::{count, ByteSize, Seconds};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// MySQL-protocol endpoints that applications connect to.
    pub listeners: Vec<Listener>,
    /// How statements from a listener reach data sources.
    pub executors: Vec<Executor>,
    /// Databases behind Tandem.
    pub data_sources: Vec<DataSource>,
    /// Global transaction coordinator.
    #[serde(default)]
    pub coordinator: Coordinator,
    /// Admin HTTP API and metrics. Absent: no admin endpoint.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// Inbound HTTP proxies that begin and end global transactions.
    #[serde(default)]
    pub http_sidecars: Vec<HttpSidecar>,
    /// On SIGTERM, how long in-flight statements may run before Tandem exits. Default 30s.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Seconds,
}

fn default_drain_timeout() -> Seconds {
    Seconds::secs(30)
}

/// An inbound HTTP proxy in front of a service's own HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSidecar {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// `ip:port` the proxy listens on.
    pub address: String,
    /// The service: `http://host:port`.
    pub upstream: String,
    /// Requests that run in a global transaction of their own.
    #[serde(default)]
    pub transactions: Vec<HttpTxRule>,
    /// TCC resources the service offers: each prepare request that carries an XID becomes a
    /// branch, and phase 2 calls the service's commit or cancel.
    #[serde(default)]
    pub tcc: Vec<TccResource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TccResource {
    /// Unique within the sidecar; the branch's resource is `tcc:{sidecar}/{name}`.
    pub name: String,
    pub prepare: HttpEndpoint,
    pub commit: HttpEndpoint,
    pub cancel: HttpEndpoint,
    /// Limit for each commit or cancel call; a call that fails or takes longer is tried
    /// again with backoff. Default 10s.
    #[serde(default = "default_tcc_timeout")]
    pub timeout: Seconds,
}

fn default_tcc_timeout() -> Seconds {
    Seconds::secs(10)
}

/// A method and an exact path of the service's API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpEndpoint {
    pub method: String,
    pub path: String,
}

/// Which requests begin a global transaction, and its timeout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTxRule {
    /// An HTTP method (`POST`), or `*` for any.
    pub method: String,
    pub path: String,
    /// How `path` is compared with the request's path. Default exact.
    #[serde(default, rename = "match")]
    pub matching: PathMatch,
    /// The global transaction's timeout. Default: `coordinator.default_timeout`.
    #[serde(default)]
    pub timeout: Option<Seconds>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    #[default]
    Exact,
    Prefix,
    /// A regular expression that must match the whole path.
    Regex,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// `host:port` to listen on.
    pub address: String,
    /// Frontend accounts: user name → password.
    pub users: BTreeMap<String, String>,
    /// Name of the executor that runs this listener's statements.
    pub executor: String,
    /// TLS for clients. Absent: plain TCP only.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Largest packet a client may send. Default 64MiB.
    #[serde(default = "default_max_allowed_packet")]
    pub max_allowed_packet: ByteSize,
    /// Auth plugin announced in the greeting; clients may answer with either plugin.
    /// Default mysql_native_password.
    #[serde(default)]
    pub auth_plugin: AuthPlugin,
    /// Version string sent to clients. Default: the data source's own version.
    #[serde(default)]
    pub server_version: Option<String>,
}

fn default_max_allowed_packet() -> ByteSize {
    ByteSize(64 << 20)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthPlugin {
    #[default]
    MysqlNativePassword,
    CachingSha2Password,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Refuse clients that do not switch to TLS. Default false.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Executor {
    pub name: String,
    pub mode: Mode,
    /// For `mode: single`: the one data source.
    #[serde(default)]
    pub data_source: Option<String>,
    /// For `mode: rw_split`: the data source that takes writes.
    #[serde(default)]
    pub primary: Option<String>,
    /// For `mode: rw_split`: data sources replicating from the primary, which take reads.
    #[serde(default)]
    pub replicas: Vec<Replica>,
    /// For `mode: rw_split`: a replica further behind than this takes no reads until it
    /// catches up. Default 5s.
    #[serde(default)]
    pub max_replica_lag: Option<Seconds>,
    /// For `mode: rw_split`: a session's read sees that session's earlier writes (it waits,
    /// briefly, for the replica to apply them, or goes to the primary). Default true.
    #[serde(default)]
    pub read_your_writes: Option<bool>,
    /// For `mode: sharding`: the one logical database clients see.
    #[serde(default)]
    pub database: Option<String>,
    /// For `mode: sharding`: the data sources holding the rows; a shard's number is its
    /// place in this list.
    #[serde(default)]
    pub shards: Vec<String>,
    /// For `mode: sharding`: tables whose rows are spread over the shards.
    #[serde(default)]
    pub sharded_tables: Vec<ShardedTable>,
    /// For `mode: sharding`: tables with a full copy on every shard.
    #[serde(default)]
    pub broadcast_tables: Vec<String>,
    /// For `mode: sharding`: most rows a merge may hold at once (GROUP BY without a usable
    /// order, DISTINCT). Default 100000.
    #[serde(default)]
    pub max_merge_rows: Option<u64>,
    /// `sharding`: this sidecar's worker id in the snowflake ids it generates (0 to 1023;
    /// every sidecar that inserts into the same tables needs its own).
    pub worker_id: Option<u16>,
}

impl Executor {
    pub fn max_replica_lag(&self) -> Seconds {
        self.max_replica_lag.unwrap_or(Seconds::secs(5))
    }

    pub fn read_your_writes(&self) -> bool {
        self.read_your_writes.unwrap_or(true)
    }

    pub fn max_merge_rows(&self) -> u64 {
        self.max_merge_rows.unwrap_or(100_000)
    }
}

/// A table of a `sharding` executor whose rows are spread over the shards by one column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedTable {
    pub table: String,
    /// The sharding column: its value in a row decides the row's shard.
    pub column: String,
    pub algorithm: ShardAlgorithm,
    /// `range`: shard i holds values below `boundaries[i]` (and at or above the one before);
    /// the last shard the rest. One fewer than the shards, ascending.
    #[serde(default)]
    pub boundaries: Vec<i64>,
    /// `interval`: the width of each shard's span of time.
    #[serde(default)]
    pub unit: Option<IntervalUnit>,
    /// `interval`: where shard 0's span starts (`YYYY-MM-DD`); earlier values are shard 0's
    /// too, and values past the last span the last shard's.
    #[serde(default)]
    pub start: Option<String>,
    /// Another sharded table whose placement this one shares: rows with the same sharding
    /// value live on the same shard, so joins on it stay on one shard.
    #[serde(default)]
    pub binding: Option<String>,
    /// Ids Tandem assigns to rows inserted without one.
    #[serde(default)]
    pub key_generator: Option<KeyGenerator>,
    /// Tables per shard: the table is split further inside each shard into physical tables
    /// `<table>_0 … <table>_{tables-1}`. The algorithm places a row among `shards × tables`
    /// slots; slot s is table `s mod tables` of shard `s / tables`. 1 (the default): one
    /// physical table per shard, under the table's own name.
    #[serde(default)]
    pub tables: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardAlgorithm {
    /// An integer value mod the number of shards.
    Mod,
    /// A stable hash of the value mod the number of shards.
    HashMod,
    /// Integer ranges between `boundaries`.
    Range,
    /// Spans of time of one `unit` each from `start`.
    Interval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalUnit {
    Day,
    Month,
    Year,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyGenerator {
    pub column: String,
    #[serde(rename = "type")]
    pub kind: KeyGeneratorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyGeneratorKind {
    Snowflake,
}

/// A replica of an `rw_split` executor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    pub data_source: String,
    /// Its share of the reads, against the other replicas' weights. Default 1.
    #[serde(default = "default_weight", deserialize_with = "count")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Single,
    RwSplit,
    Sharding,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    pub name: String,
    /// `mysql://user:password@host:port/database`.
    pub dsn: String,
    #[serde(default)]
    pub pool: Pool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Most backend connections open at once. Default 64.
    #[serde(default = "default_pool_max", deserialize_with = "count")]
    pub max: u32,
    /// Idle connections older than this are closed. Default 60s.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Seconds,
    /// Idle connections are pinged this often; broken ones are dropped. Default 10s.
    #[serde(default = "default_health_check_interval")]
    pub health_check_interval: Seconds,
    /// Limit for opening a backend connection. Default 3s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Seconds,
    /// How long a client waits for a free connection when the pool is full. Default 5s.
    #[serde(default = "default_acquire_timeout")]
    pub acquire_timeout: Seconds,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            max: default_pool_max(),
            idle_timeout: default_idle_timeout(),
            health_check_interval: default_health_check_interval(),
            connect_timeout: default_connect_timeout(),
            acquire_timeout: default_acquire_timeout(),
        }
    }
}

fn default_pool_max() -> u32 {
    64
}
fn default_idle_timeout() -> Seconds {
    Seconds::secs(60)
}
fn default_health_check_interval() -> Seconds {
    Seconds::secs(10)
}
fn default_connect_timeout() -> Seconds {
    Seconds::secs(3)
}
fn default_acquire_timeout() -> Seconds {
    Seconds::secs(5)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coordinator {
    /// Where global transaction state lives. Default embedded.
    #[serde(default)]
    pub store: StoreKind,
    #[serde(default)]
    pub embedded: Embedded,
    #[serde(default)]
    pub etcd: Option<Etcd>,
    /// Timeout of a global transaction begun without one. Default 60s.
    #[serde(default = "default_tx_timeout")]
    pub default_timeout: Seconds,
    /// A writer that finds a row locked by another global transaction tries again this
    /// often… Default 10ms.
    #[serde(default = "default_lock_retry_interval")]
    pub lock_retry_interval: Seconds,
    /// …this many times in all, then fails with error 1205. Default 30.
    #[serde(default = "default_lock_retry_attempts", deserialize_with = "count")]
    pub lock_retry_attempts: u32,
    /// "Global finished" rows (left in `undo_log` by a rollback that found no undo log, to
    /// stop a late phase-1 commit) are deleted once this old. Default 24h.
    #[serde(default = "default_marker_retention")]
    pub finished_marker_retention: Seconds,
}

fn default_marker_retention() -> Seconds {
    Seconds(std::time::Duration::from_secs(24 * 3600))
}

fn default_lock_retry_interval() -> Seconds {
    Seconds(std::time::Duration::from_millis(10))
}

fn default_lock_retry_attempts() -> u32 {
    30
}

impl Default for Coordinator {
    fn default() -> Self {
        Coordinator {
            store: StoreKind::default(),
            embedded: Embedded::default(),
            etcd: None,
            default_timeout: default_tx_timeout(),
            lock_retry_interval: default_lock_retry_interval(),
            lock_retry_attempts: default_lock_retry_attempts(),
            finished_marker_retention: default_marker_retention(),
        }
    }
}

fn default_tx_timeout() -> Seconds {
    Seconds::secs(60)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Embedded,
    Etcd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embedded {
    /// File of the embedded store. Default ./data/tandem.db.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
}

impl Etcd {
    /// The prefix every key starts with, ending with '/', so that no prefix matches another
    /// (`/tandem/prod` must not see `/tandem/prod2`'s keys).
    pub fn key_prefix(&self) -> String {
        if self.prefix.ends_with('/') {
            self.prefix.clone()
        } else {
            format!("{}/", self.prefix)
        }
    }
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded {
            path: default_store_path(),
        }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from("./data/tandem.db")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// Client URLs (`http://host:port`, `https://…`, or `host:port`).
    pub endpoints: Vec<String>,
    /// Key prefix; must start with '/'. Tandem adds the separator after it when it does not
    /// end with one (`/tandem/prod` and `/tandem/prod/` are the same prefix); see
    /// [`Etcd::key_prefix`].
    pub prefix: String,
    /// etcd user and password, when the cluster has authentication enabled.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// TLS towards etcd: the CA that signed the members' certificates, and a client
    /// certificate and key when the cluster asks for one (PEM files).
    #[serde(default)]
    pub tls: Option<EtcdTls>,
    /// This process's name among the sidecars sharing the cluster. Default: the host name
    /// and a random suffix, new at each start.
    #[serde(default)]
    pub node_name: Option<String>,
    /// How long the cluster waits for a silent sidecar before its data sources pass to
    /// another replica. Default 10s.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: Seconds,
}

fn default_lease_ttl() -> Seconds {
    Seconds(std::time::Duration::from_secs(10))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    pub ca: PathBuf,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `host:port` of the admin HTTP API.
    pub address: String,
}
