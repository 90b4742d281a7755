//! A private etcd cluster on loopback ports, for the tests that share a coordinator store.
//!
//! Each member runs in a directory of its own under the test's scratch directory; members
//! can be killed and restarted (with their data) to test failures. Everything is stopped when
//! the cluster is dropped, and a watchdog stops the members if the test process dies.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{free_port_list, scratch};

pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    /// Unique per cluster, so no member can join another test's cluster.
    token: String,
    /// The members' directories, removed with the cluster.
    base: PathBuf,
    /// An address the members listen on besides loopback (a test host's link).
    also: Option<String>,
}

struct Member {
    name: String,
    dir: PathBuf,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers. Ports are picked free but
    /// taken only when etcd starts, so another test can take one first: a cluster that does
    /// not come up starts again on other ports, up to three times.
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_listening(n, None)
    }

    /// [`EtcdCluster::start`], the members listening for clients on address `also` too.
    pub fn start_reachable_at(n: usize, also: &str) -> EtcdCluster {
        Self::start_listening(n, Some(also))
    }

    fn start_listening(n: usize, also: Option<&str>) -> EtcdCluster {
        let mut why = String::new();
        for _ in 0..3 {
            let mut cluster = EtcdCluster::start_once(n, also);
            match cluster.healthy(Duration::from_secs(60)) {
                Ok(()) => return cluster,
                Err(e) => why = e,
            }
        }
        panic!("etcd did not start: {why}");
    }

    fn start_once(n: usize, also: Option<&str>) -> EtcdCluster {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("etcd-{}", N.fetch_add(1, Ordering::Relaxed));
        let base = scratch(&name);
        let ports = free_port_list(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                dir: base.join(format!("m{i}")),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            token: format!("tandem-test-{}-{name}", std::process::id()),
            base,
            also: also.map(str::to_string),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// The endpoints as a YAML flow list.
    pub fn endpoints_yaml(&self) -> String {
        format!("[{}]", self.endpoints().join(", "))
    }

    /// The endpoints at the second address the members listen on, as a YAML flow list.
    pub fn endpoints_yaml_at_also(&self) -> String {
        let also = self
            .also
            .as_deref()
            .expect("started with start_reachable_at");
        let urls: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("http://{also}:{}", m.client))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    fn spawn(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let token = self.token.clone();
        let also = self.also.clone();
        let m = &mut self.members[i];
        std::fs::create_dir_all(&m.dir).expect("member dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("etcd.log"))
            .expect("etcd log");
        let client = format!("http://127.0.0.1:{}", m.client);
        let listen = match &also {
            Some(a) => format!("{client},http://{a}:{}", m.client),
            None => client.clone(),
        };
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(m.dir.join("data"))
            .args(["--listen-client-urls", &listen])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &token])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("etcd is installed (scripts/setup.sh installs it)");
        watchdog(child.id(), &m.dir);
        m.child = Some(child);
    }

    /// Kills member `i` at once (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again with its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Waits until every running member reports itself healthy.
    pub fn wait_healthy(&mut self) {
        if let Err(e) = self.healthy(Duration::from_secs(60)) {
            panic!("etcd did not become healthy: {e}");
        }
    }

    /// Waits up to `patience` until every running member reports itself healthy; fails at
    /// once when a member has exited, with the end of each member's log.
    fn healthy(&mut self, patience: Duration) -> Result<(), String> {
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect();
        let deadline = Instant::now() + patience;
        loop {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["endpoint", "health", "--command-timeout=2s"])
                .arg(format!("--endpoints={}", running.join(",")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            let exited = self.members.iter_mut().any(|m| {
                m.child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
            });
            if exited || Instant::now() > deadline {
                return Err(self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of every member's log.
    fn log_tails(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(m.dir.join("etcd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "\n{} (client port {}):\n{}",
                    m.name,
                    m.client,
                    tail.join("\n")
                )
            })
            .collect()
    }

    /// The index of the member that is the leader now.
    pub fn leader(&self) -> usize {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["endpoint", "status", "--write-out=json"])
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .output()
            .expect("run etcdctl");
        let statuses: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("etcdctl endpoint status JSON");
        statuses
            .iter()
            .find(|s| {
                let st = &s["Status"];
                st["header"]["member_id"] == st["leader"]
            })
            .and_then(|s| s["Endpoint"].as_str())
            .and_then(|e| self.endpoints().iter().position(|x| x == e))
            .expect("a leader")
    }

    /// The cluster's revision now: it grows by one with every write.
    pub fn revision(&self) -> i64 {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["endpoint", "status", "--write-out=json"])
            .arg(format!("--endpoints={}", self.endpoints()[self.leader()]))
            .output()
            .expect("run etcdctl");
        let statuses: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("etcdctl endpoint status JSON");
        statuses[0]["Status"]["header"]["revision"]
            .as_i64()
            .expect("a revision")
    }

    /// The values under `prefix`, as `etcdctl get --prefix` prints them (key, value, ...).
    pub fn get_prefix(&self, prefix: &str) -> Vec<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["get", "--prefix", prefix])
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .output()
            .expect("run etcdctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // Each member's write-ahead log takes tens of megabytes: keep the disk for the next.
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Kills member process `pid` (running in `dir`) when this test process ends, however it
/// ends. It checks the command line first: by then the pid may belong to another process.
// The watchdog outlives this function on purpose: it waits for the test process to end.
#[allow(clippy::zombie_processes)]
fn watchdog(pid: u32, dir: &std::path::Path) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; \
         tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null | grep -qF -- '{dir}' && kill -9 {pid}",
        me = std::process::id(),
        dir = dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start watchdog");
}
