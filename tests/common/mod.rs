//! Test harness: a real MariaDB (started by `scripts/mariadb.sh`) and Tandem run as a process
//! with a generated config.
//!
//! `scripts/test.sh` starts one MariaDB for the whole run and passes its port in
//! `TANDEM_TEST_MARIADB_PORT`; without it, the first test of a binary starts its own, and a
//! watchdog stops it when the test process exits.
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod etcd;
pub mod netns;
pub mod raw;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory under target/, unique to this test process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = root()
        .join("target/test-scratch")
        .join(format!("{}-{}", std::process::id(), name));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports: every listener is held until all are chosen, so the kernel cannot
/// hand the same port out twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let ports = free_port_list(N);
    std::array::from_fn(|i| ports[i])
}

/// `n` distinct free ports, chosen as [`free_ports`] does.
pub fn free_port_list(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("free port").port())
        .collect()
}

pub struct MariaDb {
    pub port: u16,
}

static MARIADB: OnceLock<MariaDb> = OnceLock::new();

/// The MariaDB server for this test run.
pub fn mariadb() -> &'static MariaDb {
    MARIADB.get_or_init(|| {
        if let Some(port) = std::env::var("TANDEM_TEST_MARIADB_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
        {
            return MariaDb { port };
        }
        let dir = scratch("mariadb");
        let port = start_mariadb_on_a_free_port(&dir);
        MariaDb { port }
    })
}

/// Starts a MariaDB in `dir` on a port free a moment ago, and on another one when some
/// other process took that port first; returns the port.
pub fn start_mariadb_on_a_free_port(dir: &Path) -> u16 {
    start_mariadb_listening(dir, "127.0.0.1")
}

/// [`start_mariadb_on_a_free_port`], the server listening on `addresses` (comma-separated,
/// 127.0.0.1 among them).
pub fn start_mariadb_listening(dir: &Path, addresses: &str) -> u16 {
    start_mariadb_as(dir, addresses, Role::Alone)
}

/// What a test's MariaDB is to the others.
#[derive(Clone, Copy)]
pub enum Role {
    Alone,
    /// Writes a binary log that replicas follow.
    Primary,
    /// A read-only GTID replica of the primary on this port, caught up when started.
    ReplicaOf(u16),
}

fn start_mariadb_as(dir: &Path, addresses: &str, role: Role) -> u16 {
    for _ in 0..5 {
        let port = free_port();
        if try_start_mariadb(dir, port, addresses, role) {
            return port;
        }
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        assert!(
            log.contains("Address already in use"),
            "MariaDB failed to start in {}",
            dir.display()
        );
    }
    panic!("MariaDB found no free port in {}", dir.display());
}

/// Starts a MariaDB in `dir` (again, after [`stop_mariadb`]) on `port`.
pub fn start_mariadb(dir: &Path, port: u16) {
    assert!(
        try_start_mariadb(dir, port, "127.0.0.1", Role::Alone),
        "MariaDB failed to start in {}",
        dir.display()
    );
}

/// Starts a MariaDB in `dir` and arranges for it to stop when this process exits; false when
/// it did not start.
// The watchdog outlives this function on purpose: it waits for the test process to end.
#[allow(clippy::zombie_processes)]
fn try_start_mariadb(dir: &Path, port: u16, addresses: &str, role: Role) -> bool {
    let script = root().join("scripts/mariadb.sh");
    let command = match role {
        Role::Alone => "start",
        Role::Primary => "start-primary",
        Role::ReplicaOf(_) => "start-replica",
    };
    let status = Command::new("bash")
        .env("MARIADB_BIND_ADDRESS", addresses)
        .arg(&script)
        .args([
            command,
            dir.to_str().expect("utf-8 path"),
            &port.to_string(),
        ])
        .args(match role {
            Role::ReplicaOf(primary) => Some(primary.to_string()),
            _ => None,
        })
        .status()
        .expect("run scripts/mariadb.sh");
    if !status.success() {
        return false;
    }
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; bash '{script}' stop '{dir}'",
        pid = std::process::id(),
        script = script.display(),
        dir = dir.display()
    );
    Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start watchdog");
    true
}

/// Runs a client program that prints a line with `: ok` when its checks pass.
pub fn run_client(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); scripts/test.sh installs the client libraries")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    assert!(
        text.contains(": ok"),
        "{program} printed no success line:\n{text}"
    );
}

/// A MariaDB primary and a GTID replica of it, for the tests of read/write splitting.
/// Each test that changes replication (stops it, lags it) starts a pair of its own.
pub struct ReplicatedPair {
    pub primary: u16,
    pub replica: u16,
    pub replica_dir: PathBuf,
}

impl ReplicatedPair {
    pub fn start(name: &str) -> ReplicatedPair {
        let primary = start_mariadb_as(
            &scratch(&format!("{name}-primary")),
            "127.0.0.1",
            Role::Primary,
        );
        let replica_dir = scratch(&format!("{name}-replica"));
        let replica = start_mariadb_as(&replica_dir, "127.0.0.1", Role::ReplicaOf(primary));
        ReplicatedPair {
            primary,
            replica,
            replica_dir,
        }
    }

    /// Runs SQL as root on the primary.
    pub fn primary_sql(&self, sql: &str) -> String {
        mariadb_cli(self.primary, "root", "", None, sql).expect("SQL on the primary")
    }

    /// Runs SQL as root on the replica.
    pub fn replica_sql(&self, sql: &str) -> String {
        mariadb_cli(self.replica, "root", "", None, sql).expect("SQL on the replica")
    }

    /// Stops the replica's server.
    pub fn stop_replica(&self) {
        stop_mariadb(&self.replica_dir);
    }

    /// Starts the replica's server again, on its port, replicating and caught up.
    pub fn restart_replica(&self) {
        assert!(
            try_start_mariadb(
                &self.replica_dir,
                self.replica,
                "127.0.0.1",
                Role::ReplicaOf(self.primary)
            ),
            "the replica did not start again"
        );
    }

    /// A Tandem with one `rw_split` listener over the pair, in front of database `db`.
    pub fn tandem(&self, db: &str) -> Tandem {
        self.tandem_with(db, "")
    }

    /// [`ReplicatedPair::tandem`], `extra` appended to the executor's fields.
    pub fn tandem_with(&self, db: &str, extra: &str) -> Tandem {
        let yaml = format!(
            r#"
listeners:
  - name: main
    address: 127.0.0.1:{{PORT}}
    users: {{ {USER}: "{PASSWORD}" }}
    executor: main
executors:
  - name: main
    mode: rw_split
    primary: primary
    replicas: [{{ data_source: replica }}]
{extra}
data_sources:
  - {{ name: primary, dsn: "mysql://root@127.0.0.1:{p}/{db}" }}
  - {{ name: replica, dsn: "mysql://root@127.0.0.1:{r}/{db}" }}
admin:
  address: 127.0.0.1:{{ADMIN}}
coordinator:
  embedded: {{ path: "{{DIR}}/tandem.db" }}
"#,
            p = self.primary,
            r = self.replica,
        );
        Tandem::start_yaml(&yaml)
    }

    /// Waits until the replica has applied everything the primary has written.
    pub fn caught_up(&self) {
        let pos = self.primary_sql("SELECT @@gtid_binlog_pos");
        let waited = self.replica_sql(&format!("SELECT MASTER_GTID_WAIT('{}', 30)", pos.trim()));
        assert_eq!(
            waited.trim(),
            "0",
            "the replica did not catch up with {pos}"
        );
    }
}

pub fn stop_mariadb(dir: &Path) {
    let status = Command::new("bash")
        .arg(root().join("scripts/mariadb.sh"))
        .args(["stop", dir.to_str().expect("utf-8 path")])
        .status()
        .expect("run scripts/mariadb.sh");
    assert!(status.success());
}

impl MariaDb {
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{}", self.port, db)
    }

    /// Runs SQL with the `mariadb` command-line client as root.
    pub fn sql(&self, sql: &str) {
        mariadb_cli(self.port, "root", "", None, sql).expect("mariadb CLI");
    }

    /// Creates an empty database with a unique name.
    pub fn fresh_db(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.sql(&format!(
            "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"
        ));
        name
    }
}

/// Runs the `mariadb` CLI in batch mode; returns stdout, or stderr on failure.
pub fn mariadb_cli(
    port: u16,
    user: &str,
    password: &str,
    db: Option<&str>,
    sql: &str,
) -> Result<String, String> {
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "--no-defaults",
        "-h127.0.0.1",
        "--batch",
        "--skip-column-names",
        "--default-character-set=utf8mb4",
    ])
    .arg(format!("-P{port}"))
    .arg(format!("-u{user}"));
    if !password.is_empty() {
        cmd.arg(format!("-p{password}"));
    }
    if let Some(db) = db {
        cmd.arg(db);
    }
    let out = cmd.arg("-e").arg(sql).output().expect("run mariadb CLI");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A running Tandem process, killed on drop.
pub struct Tandem {
    child: Option<Child>,
    /// Where its listeners are: loopback, or its address on a test host's link.
    pub host: String,
    /// The network namespace it runs in, when it runs on a test host.
    netns: Option<String>,
    pub port: u16,
    /// The port of a second listener, when the config has `{PORT_B}`.
    pub port_b: u16,
    pub admin_port: u16,
    pub dir: PathBuf,
    /// Environment variables the process starts with (test hooks such as
    /// `TANDEM_TEST_CRASH`), for the next start too.
    pub env: Vec<(String, String)>,
}

pub const USER: &str = "app";
pub const PASSWORD: &str = "app-secret";

/// A config with one listener in front of `dsn`; `extra` is appended to the listener entry
/// and `pool` replaces the pool settings.
pub fn single_config(dsn: &str, extra_listener: &str, pool: &str) -> String {
    format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:{{PORT}}
    users: {{ {USER}: "{PASSWORD}", other: "" }}
    executor: main
{extra_listener}
executors:
  - name: main
    mode: single
    data_source: db
data_sources:
  - name: db
    dsn: {dsn}
    pool: {pool}
admin:
  address: 127.0.0.1:{{ADMIN}}
coordinator:
  embedded: {{ path: "{{DIR}}/tandem.db" }}
drain_timeout: 10s
"#
    )
}

/// A `sharding` listener and executor over logical database `shop`, its shards the
/// databases `urls` name (data sources `s0`, `s1`, …); `executor` holds the executor's
/// fields after `shards` (`sharded_tables`, `broadcast_tables`, …), indented as they are,
/// and `coordinator` lines of the coordinator's after its embedded store.
pub fn sharding_config(urls: &[String], executor: &str, coordinator: &str) -> String {
    let names: Vec<String> = (0..urls.len()).map(|i| format!("s{i}")).collect();
    let sources: String = urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("  - {{ name: s{i}, dsn: \"{u}\" }}\n"))
        .collect();
    format!(
        r#"
listeners:
  - name: shop
    address: 127.0.0.1:{{PORT}}
    users: {{ {USER}: "{PASSWORD}" }}
    executor: shop
executors:
  - name: shop
    mode: sharding
    database: shop
    shards: [{shards}]
{executor}data_sources:
{sources}admin:
  address: 127.0.0.1:{{ADMIN}}
coordinator:
  embedded: {{ path: "{{DIR}}/tandem.db" }}
{coordinator}"#,
        shards = names.join(", "),
    )
}

/// A config with listener `a` (on `{PORT}`) in front of `dsn_a` and listener `b` (on
/// `{PORT_B}`) in front of `dsn_b`; `coordinator` adds lines to the coordinator section.
pub fn two_databases_config(dsn_a: &str, dsn_b: &str, coordinator: &str) -> String {
    format!(
        r#"
listeners:
  - {{ name: a, address: "127.0.0.1:{{PORT}}", users: {{ {USER}: "{PASSWORD}" }}, executor: a }}
  - {{ name: b, address: "127.0.0.1:{{PORT_B}}", users: {{ {USER}: "{PASSWORD}" }}, executor: b }}
executors:
  - {{ name: a, mode: single, data_source: a }}
  - {{ name: b, mode: single, data_source: b }}
data_sources:
  - {{ name: a, dsn: "{dsn_a}" }}
  - {{ name: b, dsn: "{dsn_b}" }}
admin:
  address: 127.0.0.1:{{ADMIN}}
coordinator:
  embedded: {{ path: "{{DIR}}/tandem.db" }}
{coordinator}
"#
    )
}

impl Tandem {
    /// Starts Tandem in front of database `db` of the test MariaDB.
    pub fn start(db: &str) -> Tandem {
        Self::start_yaml(&single_config(&mariadb().url(db), "", "{ max: 32 }"))
    }

    /// Starts Tandem with a YAML config; `{PORT}` and `{ADMIN}` are replaced by free ports.
    ///
    /// `{PORT_B}` names a second listener's port. A port another process took between its
    /// choice and Tandem's bind is chosen again.
    pub fn start_yaml(yaml: &str) -> Tandem {
        Self::start_yaml_at(yaml, None)
    }

    /// Starts Tandem on test host `on`, its listeners on the host's address on link `link`
    /// (every `127.0.0.1:` listener address of the config is moved there).
    pub fn start_yaml_on(yaml: &str, on: &netns::Host, link: usize) -> Tandem {
        let inside = on.veth(link).inside.to_string();
        let yaml = yaml
            .replace("127.0.0.1:{PORT", &format!("{inside}:{{PORT"))
            .replace("127.0.0.1:{ADMIN}", &format!("{inside}:{{ADMIN}}"));
        Self::start_yaml_at(&yaml, Some((on.name(), inside)))
    }

    fn start_yaml_at(yaml: &str, on: Option<(&str, String)>) -> Tandem {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = scratch(&format!("tandem-{}", N.fetch_add(1, Ordering::Relaxed)));
        for attempt in 0.. {
            let [port, port_b, admin_port] = free_ports::<3>();
            let text = yaml
                .replace("{PORT}", &port.to_string())
                .replace("{PORT_B}", &port_b.to_string())
                .replace("{ADMIN}", &admin_port.to_string())
                .replace("{DIR}", &dir.display().to_string());
            std::fs::write(dir.join("tandem.yaml"), text).expect("write config");
            let mut t = Tandem {
                child: None,
                host: on
                    .as_ref()
                    .map_or_else(|| "127.0.0.1".to_string(), |(_, a)| a.clone()),
                netns: on.as_ref().map(|(n, _)| n.to_string()),
                port,
                port_b,
                admin_port,
                dir: dir.clone(),
                env: Vec::new(),
            };
            match t.try_spawn() {
                Ok(()) => return t,
                Err(log) if attempt < 5 && log.contains("Address already in use") => continue,
                Err(log) => panic!("tandem did not start:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Starts the process with the config in its directory, logging to `tandem.log` there,
    /// and waits until it listens.
    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("tandem did not start:\n{log}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tandem.log"))
            .expect("log file");
        let bin = env!("CARGO_BIN_EXE_tandem");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(self.dir.join("tandem.yaml"))
            .arg("--log-level")
            .arg("tandem=debug,info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn tandem");
        self.child = Some(child);
        self.wait_listening()
    }

    /// Waits until the client and admin ports accept connections; the log if the process
    /// exits first or never listens.
    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let up = |p: u16| TcpStream::connect((self.host.as_str(), p)).is_ok();
            if up(self.port) && up(self.admin_port) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("did not start listening:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("tandem.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn url(&self, db: &str) -> String {
        format!("mysql://{USER}:{PASSWORD}@{}:{}/{db}", self.host, self.port)
    }

    pub fn url_no_db(&self) -> String {
        format!("mysql://{USER}:{PASSWORD}@{}:{}", self.host, self.port)
    }

    pub fn admin(&self, path: &str) -> (u16, String) {
        http_to(&self.host, self.admin_port, "GET", path, "")
    }

    pub fn admin_post(&self, path: &str, body: &str) -> (u16, String) {
        http_to(&self.host, self.admin_port, "POST", path, body)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts Tandem again with the same configuration and directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Resident memory of the Tandem process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET; returns status and body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path, "")
}

/// A minimal HTTP/1.1 request with a JSON body; returns status and body.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    http_to("127.0.0.1", port, method, path, body)
}

/// [`http`] to a server at `host`.
pub fn http_to(host: &str, port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = TcpStream::connect((host, port)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A mysql_async connection; panics with the error if it cannot connect.
pub async fn connect(url: &str) -> mysql_async::Conn {
    mysql_async::Conn::from_url(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// The MySQL error code of a mysql_async error, if it is a server error.
/// Writes a self-signed certificate and its key to `dir` (`cert.pem`, `key.pem`), with
/// `subject`: `openssl req` arguments such as `-subj` and `-addext`. Returns (cert, key).
pub fn self_signed_cert(dir: &Path, subject: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(subject)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A fresh database named after `prefix` with `account` rows 1 to `accounts`, each holding
/// `start`: the money-transfer tests' bank.
pub fn bank(prefix: &str, accounts: i64, start: i64) -> String {
    let db = mariadb().fresh_db(prefix);
    let rows: Vec<String> = (1..=accounts).map(|i| format!("({i}, {start})")).collect();
    mariadb().sql(&format!(
        "CREATE TABLE {db}.account (id INT PRIMARY KEY, balance BIGINT NOT NULL);
         INSERT INTO {db}.account VALUES {};",
        rows.join(", ")
    ));
    db
}

/// Serves `app` (a test's stand-in for a service behind an HTTP sidecar) on a free loopback
/// port for the rest of the test; returns its address.
pub async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// Begins a global transaction with `tandem_begin()` and returns its XID.
pub async fn begin_global(c: &mut mysql_async::Conn) -> String {
    use mysql_async::prelude::Queryable;
    c.query_first("SELECT tandem_begin()")
        .await
        .unwrap()
        .unwrap()
}

/// Ends global transaction `xid` with `tandem_{how}` (commit or rollback) and returns the
/// status Tandem answered.
pub async fn end_global(c: &mut mysql_async::Conn, how: &str, xid: &str) -> String {
    use mysql_async::prelude::Queryable;
    c.query_first(format!("SELECT tandem_{how}('{xid}')"))
        .await
        .unwrap()
        .unwrap()
}

/// Rows in a database's undo_log table.
pub async fn undo_rows(db: &str) -> i64 {
    use mysql_async::prelude::Queryable;
    let mut c = connect(&mariadb().url(db)).await;
    c.query_first("SELECT COUNT(*) FROM undo_log")
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Waits until no undo row is left in any of `dbs`: commit answers once the decision is
/// recorded and deletes undo logs in the background (in batches, a short while later).
pub async fn wait_no_undo(dbs: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for db in dbs {
            left.push(undo_rows(db).await);
        }
        if left.iter().all(|n| *n == 0) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "undo rows still in {dbs:?} after 10 s: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub fn error_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// The end of a money-transfer invariant test: every account in `a` and `b` equals `start`
/// plus the committed deltas (keyed by `('a' | 'b', id)`), no undo log is left, and the total
/// is what it was (`accounts` per database). `context` goes into the failure messages.
pub async fn assert_accounts(
    a: &str,
    b: &str,
    accounts: i64,
    start: i64,
    committed: &std::collections::HashMap<(char, i64), i64>,
    context: &str,
) {
    use mysql_async::prelude::*;
    let mut total = 0;
    for (name, db) in [('a', a), ('b', b)] {
        let mut c = connect(&mariadb().url(db)).await;
        let rows: Vec<(i64, i64)> = c
            .query("SELECT id, balance FROM account ORDER BY id")
            .await
            .unwrap();
        for (id, balance) in rows {
            let want = start + committed.get(&(name, id)).copied().unwrap_or(0);
            assert_eq!(balance, want, "account {name}{id} {context}");
            total += balance;
        }
        let undo: i64 = c
            .query_first("SELECT COUNT(*) FROM undo_log WHERE log_status = 0")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(undo, 0, "no undo log left behind in {name}");
    }
    assert_eq!(
        total,
        2 * accounts * start,
        "money is neither made nor lost"
    );
}
