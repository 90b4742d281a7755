//! Checks that need more than one field: references between sections, unique names,
//! parseable addresses and DSNs, sane limits.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{Config, ConfigError, Dsn, Mode, PathMatch, StoreKind};

/// Where a listener accepts clients: a TCP address, or a Unix socket's path
/// (`unix:/path/to/sock`) for applications on the same host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Tcp(a) => write!(f, "{a}"),
            ListenAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parses a listener's address: `ip:port`, `localhost:port` or `unix:/absolute/path`.
pub fn parse_listen_address(s: &str) -> Result<ListenAddress, String> {
    match s.strip_prefix("unix:") {
        Some(path) if path.starts_with('/') => Ok(ListenAddress::Unix(path.into())),
        Some(_) => Err(format!("'{s}': a Unix socket's path must be absolute")),
        None => parse_address(s)
            .map(ListenAddress::Tcp)
            .map_err(|m| format!("{m} (or unix:/path)")),
    }
}

/// Parses `host:port`, accepting `localhost` as a host name.
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in '{s}'"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(format!("'{s}' is not an address of the form ip:port"))
}

fn unique<'a>(section: &str, names: impl Iterator<Item = &'a str>) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            return Err(ConfigError::new(
                format!("{section}[{i}].name"),
                "must not be empty",
            ));
        }
        if !seen.insert(n) {
            return Err(ConfigError::new(
                format!("{section}[{i}].name"),
                format!("'{n}' is used by more than one entry"),
            ));
        }
    }
    Ok(())
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (section, empty) in [
            ("listeners", self.listeners.is_empty()),
            ("executors", self.executors.is_empty()),
            ("data_sources", self.data_sources.is_empty()),
        ] {
            if empty {
                return Err(ConfigError::new(section, "at least one entry is required"));
            }
        }
        unique("listeners", self.listeners.iter().map(|l| l.name.as_str()))?;
        unique("executors", self.executors.iter().map(|e| e.name.as_str()))?;
        unique(
            "data_sources",
            self.data_sources.iter().map(|d| d.name.as_str()),
        )?;

        let mut addresses = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("listeners[{i}].{f}");
            let addr =
                parse_listen_address(&l.address).map_err(|m| ConfigError::new(at("address"), m))?;
            if !addresses.insert(addr.clone()) {
                return Err(ConfigError::new(
                    at("address"),
                    format!("{addr} is used twice"),
                ));
            }
            if l.users.is_empty() {
                return Err(ConfigError::new(
                    at("users"),
                    "at least one user is required",
                ));
            }
            if let Some(u) = l.users.keys().find(|u| u.is_empty() || u.contains('\0')) {
                return Err(ConfigError::new(
                    at("users"),
                    format!("invalid user name '{u}'"),
                ));
            }
            if !self.executors.iter().any(|e| e.name == l.executor) {
                return Err(ConfigError::new(
                    at("executor"),
                    format!("no executor is named '{}'", l.executor),
                ));
            }
            let max = l.max_allowed_packet.0;
            if !(1024..=(1 << 30)).contains(&max) {
                return Err(ConfigError::new(
                    at("max_allowed_packet"),
                    "must be between 1KiB and 1GiB",
                ));
            }
            if let Some(tls) = &l.tls {
                for (f, p) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                    if !p.is_file() {
                        return Err(ConfigError::new(
                            at(f),
                            format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
            }
        }

        for (i, e) in self.executors.iter().enumerate() {
            let at = |f: &str| format!("executors[{i}].{f}");
            let known = |f: &str, ds: &str| {
                if self.data_sources.iter().any(|d| d.name == ds) {
                    Ok(())
                } else {
                    Err(ConfigError::new(
                        at(f),
                        format!("no data source is named '{ds}'"),
                    ))
                }
            };
            let only_for = |f: &str, set: bool, mode: &str| {
                if set {
                    Err(ConfigError::new(at(f), format!("only for mode: {mode}")))
                } else {
                    Ok(())
                }
            };
            if e.mode != Mode::Sharding {
                only_for("database", e.database.is_some(), "sharding")?;
                only_for("shards", !e.shards.is_empty(), "sharding")?;
                only_for("sharded_tables", !e.sharded_tables.is_empty(), "sharding")?;
                only_for(
                    "broadcast_tables",
                    !e.broadcast_tables.is_empty(),
                    "sharding",
                )?;
                only_for("max_merge_rows", e.max_merge_rows.is_some(), "sharding")?;
                only_for("worker_id", e.worker_id.is_some(), "sharding")?;
            }
            match e.mode {
                Mode::Single => {
                    let ds = e.data_source.as_deref().ok_or_else(|| {
                        ConfigError::new(at("data_source"), "required for mode: single")
                    })?;
                    known("data_source", ds)?;
                    only_for("primary", e.primary.is_some(), "rw_split")?;
                    only_for("replicas", !e.replicas.is_empty(), "rw_split")?;
                    only_for("max_replica_lag", e.max_replica_lag.is_some(), "rw_split")?;
                    only_for("read_your_writes", e.read_your_writes.is_some(), "rw_split")?;
                }
                Mode::RwSplit => {
                    only_for("data_source", e.data_source.is_some(), "single")?;
                    let primary = e.primary.as_deref().ok_or_else(|| {
                        ConfigError::new(at("primary"), "required for mode: rw_split")
                    })?;
                    known("primary", primary)?;
                    if e.replicas.is_empty() {
                        return Err(ConfigError::new(
                            at("replicas"),
                            "mode: rw_split needs at least one replica",
                        ));
                    }
                    for (j, r) in e.replicas.iter().enumerate() {
                        let f = format!("replicas[{j}].data_source");
                        known(&f, &r.data_source)?;
                        let again = r.data_source == primary
                            || e.replicas[..j]
                                .iter()
                                .any(|o| o.data_source == r.data_source);
                        if again {
                            return Err(ConfigError::new(
                                at(&f),
                                format!("'{}' is named twice in this executor", r.data_source),
                            ));
                        }
                        if r.weight == 0 {
                            return Err(ConfigError::new(
                                at(&format!("replicas[{j}].weight")),
                                "must be at least 1",
                            ));
                        }
                    }
                }
                Mode::Sharding => {
                    only_for("data_source", e.data_source.is_some(), "single")?;
                    only_for("primary", e.primary.is_some(), "rw_split")?;
                    only_for("replicas", !e.replicas.is_empty(), "rw_split")?;
                    only_for("max_replica_lag", e.max_replica_lag.is_some(), "rw_split")?;
                    only_for("read_your_writes", e.read_your_writes.is_some(), "rw_split")?;
                    for (j, s) in e.shards.iter().enumerate() {
                        known(&format!("shards[{j}]"), s)?;
                    }
                    crate::planner::sharding::Topology::new(e)
                        .map_err(|t| ConfigError::new(at(&t.field), t.message))?;
                }
            }
        }

        for (i, d) in self.data_sources.iter().enumerate() {
            let at = |f: &str| format!("data_sources[{i}].{f}");
            Dsn::parse(&d.dsn).map_err(|m| ConfigError::new(at("dsn"), m))?;
            if d.pool.max == 0 {
                return Err(ConfigError::new(at("pool.max"), "must be at least 1"));
            }
            for (f, v) in [
                ("pool.idle_timeout", d.pool.idle_timeout),
                ("pool.health_check_interval", d.pool.health_check_interval),
                ("pool.connect_timeout", d.pool.connect_timeout),
                ("pool.acquire_timeout", d.pool.acquire_timeout),
            ] {
                if v.0.is_zero() {
                    return Err(ConfigError::new(at(f), "must be greater than zero"));
                }
            }
        }

        let c = &self.coordinator;
        if c.default_timeout.0.is_zero() {
            return Err(ConfigError::new(
                "coordinator.default_timeout",
                "must be greater than zero",
            ));
        }
        if c.lock_retry_attempts == 0 {
            return Err(ConfigError::new(
                "coordinator.lock_retry_attempts",
                "must be at least 1",
            ));
        }
        if let Some(etcd) = &c.etcd {
            if etcd.endpoints.is_empty() {
                return Err(ConfigError::new(
                    "coordinator.etcd.endpoints",
                    "at least one endpoint is required",
                ));
            }
            if !etcd.prefix.starts_with('/') {
                return Err(ConfigError::new(
                    "coordinator.etcd.prefix",
                    "must start with '/'",
                ));
            }
            if etcd.user.is_some() != etcd.password.is_some() {
                return Err(ConfigError::new(
                    "coordinator.etcd.user",
                    "user and password go together",
                ));
            }
            if let Some(tls) = &etcd.tls {
                if tls.cert.is_some() != tls.key.is_some() {
                    return Err(ConfigError::new(
                        "coordinator.etcd.tls.cert",
                        "a client certificate needs its key, and the reverse",
                    ));
                }
            }
        }
        if c.store == StoreKind::Etcd && c.etcd.is_none() {
            return Err(ConfigError::new(
                "coordinator.etcd",
                "store: etcd needs the etcd section (endpoints, prefix)",
            ));
        }

        if let Some(admin) = &self.admin {
            let addr =
                parse_address(&admin.address).map_err(|m| ConfigError::new("admin.address", m))?;
            if addresses.contains(&ListenAddress::Tcp(addr)) {
                return Err(ConfigError::new(
                    "admin.address",
                    format!("{addr} is also a listener address"),
                ));
            }
        }
        unique(
            "http_sidecars",
            self.http_sidecars.iter().map(|h| h.name.as_str()),
        )?;
        for (i, h) in self.http_sidecars.iter().enumerate() {
            let at = |f: &str| format!("http_sidecars[{i}].{f}");
            let addr = parse_address(&h.address).map_err(|m| ConfigError::new(at("address"), m))?;
            if !addresses.insert(ListenAddress::Tcp(addr)) {
                return Err(ConfigError::new(
                    at("address"),
                    format!("{addr} is used twice"),
                ));
            }
            let upstream = h
                .upstream
                .strip_prefix("http://")
                .ok_or_else(|| ConfigError::new(at("upstream"), "must be http://host:port"))?;
            if upstream.trim_end_matches('/').is_empty()
                || upstream.trim_end_matches('/').contains('/')
            {
                return Err(ConfigError::new(
                    at("upstream"),
                    "must be http://host:port, without a path",
                ));
            }
            for (j, r) in h.transactions.iter().enumerate() {
                let at = |f: &str| format!("http_sidecars[{i}].transactions[{j}].{f}");
                if r.method != "*" && axum::http::Method::from_bytes(r.method.as_bytes()).is_err() {
                    return Err(ConfigError::new(at("method"), "not an HTTP method (or *)"));
                }
                match r.matching {
                    PathMatch::Regex => {
                        regex::Regex::new(&r.path)
                            .map_err(|e| ConfigError::new(at("path"), e.to_string()))?;
                    }
                    _ if !r.path.starts_with('/') => {
                        return Err(ConfigError::new(at("path"), "must start with /"));
                    }
                    _ => {}
                }
                if r.timeout.is_some_and(|t| t.0.is_zero()) {
                    return Err(ConfigError::new(at("timeout"), "must be greater than zero"));
                }
            }
            unique(
                &format!("http_sidecars[{i}].tcc"),
                h.tcc.iter().map(|t| t.name.as_str()),
            )?;
            for (j, t) in h.tcc.iter().enumerate() {
                let at = |f: &str| format!("http_sidecars[{i}].tcc[{j}].{f}");
                for (f, e) in [
                    ("prepare", &t.prepare),
                    ("commit", &t.commit),
                    ("cancel", &t.cancel),
                ] {
                    if axum::http::Method::from_bytes(e.method.as_bytes()).is_err() {
                        return Err(ConfigError::new(
                            at(&format!("{f}.method")),
                            "not an HTTP method",
                        ));
                    }
                    if !e.path.starts_with('/') {
                        return Err(ConfigError::new(
                            at(&format!("{f}.path")),
                            "must start with /",
                        ));
                    }
                }
                if t.timeout.0.is_zero() {
                    return Err(ConfigError::new(at("timeout"), "must be greater than zero"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const GOOD: &str = r#"
listeners:
  - name: orders
    address: 127.0.0.1:13306
    users: { app: "${PW}" }
    executor: orders
executors:
  - name: orders
    mode: single
    data_source: orders_db
data_sources:
  - name: orders_db
    dsn: mysql://root:pw@127.0.0.1:3306/orders
    pool: { max: "${POOL}", idle_timeout: 60s }
admin:
  address: 127.0.0.1:18888
"#;

    const SIDECAR: &str = r#"
http_sidecars:
  - name: orders-api
    address: 127.0.0.1:18080
    upstream: http://127.0.0.1:8080
    transactions:
      - { method: POST, path: /orders, timeout: 30s }
"#;

    #[test]
    fn rw_split_fields_are_checked_and_name_the_field() {
        let rw = |executor: &str| {
            GOOD.replace(
                "    mode: single\n    data_source: orders_db\n",
                &format!("    mode: rw_split\n{executor}"),
            )
            .replace(
                "admin:\n",
                "  - { name: r1, dsn: \"mysql://root@127.0.0.1:3307/orders\" }\nadmin:\n",
            )
        };
        let field = |yaml: &str| Config::from_yaml_with_env(yaml, env).unwrap_err().field;
        for (executor, at) in [
            ("    replicas: [{ data_source: r1 }]\n", "executors[0].primary"),
            ("    primary: nope\n    replicas: [{ data_source: r1 }]\n", "executors[0].primary"),
            ("    primary: orders_db\n", "executors[0].replicas"),
            (
                "    primary: orders_db\n    replicas: [{ data_source: nope }]\n",
                "executors[0].replicas[0].data_source",
            ),
            (
                "    primary: orders_db\n    replicas: [{ data_source: r1 }, { data_source: r1 }]\n",
                "executors[0].replicas[1].data_source",
            ),
            (
                "    primary: orders_db\n    replicas: [{ data_source: orders_db }]\n",
                "executors[0].replicas[0].data_source",
            ),
            (
                "    primary: orders_db\n    replicas: [{ data_source: r1, weight: 0 }]\n",
                "executors[0].replicas[0].weight",
            ),
            (
                "    data_source: orders_db\n    primary: orders_db\n    replicas: [{ data_source: r1 }]\n",
                "executors[0].data_source",
            ),
        ] {
            assert_eq!(field(&rw(executor)), at, "{executor}");
        }
        let good = rw("    primary: orders_db\n    replicas: [{ data_source: r1, weight: 2 }]\n    max_replica_lag: 2s\n");
        let c = Config::from_yaml_with_env(&good, env).unwrap();
        assert_eq!(c.executors[0].replicas[0].weight, 2);
        assert!(c.executors[0].read_your_writes());
        let single_with_replicas = GOOD.replace(
            "    data_source: orders_db\n",
            "    data_source: orders_db\n    replicas: [{ data_source: orders_db }]\n",
        );
        assert_eq!(field(&single_with_replicas), "executors[0].replicas");
    }

    #[test]
    fn http_sidecar_loads() {
        let c = Config::from_yaml_with_env(&format!("{GOOD}{SIDECAR}"), env).unwrap();
        let h = &c.http_sidecars[0];
        assert_eq!(h.transactions[0].matching, crate::config::PathMatch::Exact);
        assert_eq!(h.transactions[0].timeout.map(|t| t.0.as_secs()), Some(30));
    }

    fn env(n: &str) -> Option<String> {
        match n {
            "PW" => Some("s3cret: \"x\"".into()),
            "POOL" => Some("16".into()),
            _ => None,
        }
    }

    fn err(text: &str) -> ConfigError {
        Config::from_yaml_with_env(text, env).unwrap_err()
    }

    #[test]
    fn etcd_prefix_as_the_docs_write_it() {
        let etcd = |prefix: &str| {
            format!("{GOOD}coordinator:\n  store: etcd\n  etcd: {{ endpoints: [127.0.0.1:2379], prefix: {prefix} }}\n")
        };
        for (prefix, key_prefix) in [
            ("/tandem/prod", "/tandem/prod/"),
            ("/tandem/prod/", "/tandem/prod/"),
        ] {
            let c = Config::from_yaml_with_env(&etcd(prefix), env).unwrap();
            let e = c.coordinator.etcd.as_ref().unwrap();
            assert_eq!(e.key_prefix(), key_prefix);
        }
        let e = Config::from_yaml_with_env(&etcd("tandem/prod"), env).unwrap_err();
        assert_eq!(e.field, "coordinator.etcd.prefix");
    }

    #[test]
    fn good_config_loads_with_substitution() {
        let c = Config::from_yaml_with_env(GOOD, env).unwrap();
        assert_eq!(c.listeners[0].users["app"], "s3cret: \"x\"");
        assert_eq!(c.data_sources[0].pool.max, 16);
        assert_eq!(c.drain_timeout.0.as_secs(), 30);
    }

    #[test]
    fn every_example_config_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                Config::from_yaml_with_env(&text, |_| Some("x".into()))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n > 0);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("mode: single", "mode: sideways"),
                "executors[0].mode",
            ),
            (
                GOOD.replace("mode: single", "mode: sharding"),
                "executors[0].data_source",
            ),
            (
                GOOD.replace(
                    "data_source: orders_db",
                    "data_source: orders_db\n    shards: [orders_db]",
                ),
                "executors[0].shards",
            ),
            (
                GOOD.replace("data_source: orders_db", "data_source: nope"),
                "executors[0].data_source",
            ),
            (
                GOOD.replace("executor: orders\n", "executor: nope\n"),
                "listeners[0].executor",
            ),
            (
                GOOD.replace("127.0.0.1:13306", "nowhere"),
                "listeners[0].address",
            ),
            (
                GOOD.replace("mysql://root", "postgres://root"),
                "data_sources[0].dsn",
            ),
            (
                GOOD.replace("idle_timeout: 60s", "idle_timeout: 60"),
                "data_sources[0].pool.idle_timeout",
            ),
            (
                GOOD.replace("max: \"${POOL}\"", "max: 0"),
                "data_sources[0].pool.max",
            ),
            (
                GOOD.replace("max: \"${POOL}\"", "max: lots"),
                "data_sources[0].pool.max",
            ),
            (
                GOOD.replace("${PW}", "${MISSING}"),
                "listeners[0].users.app",
            ),
            (
                GOOD.replace("127.0.0.1:18888", "127.0.0.1:13306"),
                "admin.address",
            ),
            (
                format!("{GOOD}{SIDECAR}").replace("http://127.0.0.1:8080", "127.0.0.1:8080"),
                "http_sidecars[0].upstream",
            ),
            (
                format!("{GOOD}{SIDECAR}")
                    .replace("path: /orders", "path: \"/orders[\", match: regex"),
                "http_sidecars[0].transactions[0].path",
            ),
            (
                format!("{GOOD}{SIDECAR}").replace("method: POST", "method: \"PO ST\""),
                "http_sidecars[0].transactions[0].method",
            ),
            (
                format!("{GOOD}{SIDECAR}").replace("127.0.0.1:18080", "127.0.0.1:13306"),
                "http_sidecars[0].address",
            ),
        ];
        for (text, field) in cases {
            assert_eq!(err(&text).field, field, "{}", err(&text));
        }
    }

    #[test]
    fn unknown_fields_are_errors() {
        let e = err(&GOOD.replace(
            "    executor: orders\n",
            "    executor: orders\n    colour: blue\n",
        ));
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        assert!(e.field.starts_with("listeners[0]"), "{e}");
        let e = err(&format!("{GOOD}\nextra: 1\n"));
        assert!(e.message.contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn duplicate_names_and_empty_sections() {
        let dup = GOOD.replace(
            "executors:\n",
            "executors:\n  - name: orders\n    mode: single\n    data_source: orders_db\n",
        );
        assert_eq!(err(&dup).field, "executors[1].name");
        assert_eq!(
            err("listeners: []\nexecutors: []\ndata_sources: []\n").field,
            "listeners"
        );
        assert_eq!(err("").field, "document");
        assert!(err("listeners: [").message.contains("invalid YAML"));
    }
}
