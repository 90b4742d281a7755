//! Test hosts: network namespaces of the test's own, joined to this one by veth pairs.
//!
//! A process started on a [`Host`] reaches servers here only over its links, through the
//! kernel's network stack, so a test can cut one link as a network partition does: the link
//! goes down on this side, and what the host sends over it is dropped without an answer
//! (no reset, no "unreachable"), until the link is healed. The namespace, and with it every
//! link, is deleted when the host is dropped.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Host {
    name: String,
    /// Third octet of this host's addresses, `10.213.{subnet}.x`.
    subnet: u8,
    links: Vec<Veth>,
}

/// One veth pair: `outside` here, its peer inside the host.
pub struct Veth {
    device: String,
    /// This side's address: what the host connects to.
    pub outside: Ipv4Addr,
    /// The host's address on the link: what this side connects to.
    pub inside: Ipv4Addr,
}

/// Runs `ip` with `args`; panics with its error output when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root, or CAP_NET_ADMIN)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Host {
    /// A new namespace with its loopback up and no link yet.
    pub fn new() -> Host {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("tandem-test-{pid}-{n}");
        // A namespace of that name is left from a run that died before its clean-up.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Host {
            name,
            subnet: ((pid % 32) * 8 + n % 8) as u8,
            links: Vec::new(),
        }
    }

    /// Adds a link (a /30 of its own) and returns its index.
    pub fn link(&mut self) -> usize {
        let i = self.links.len();
        assert!(i < 64, "at most 64 links per host");
        let base = (i * 4) as u8;
        let outside = Ipv4Addr::new(10, 213, self.subnet, base + 1);
        let inside = Ipv4Addr::new(10, 213, self.subnet, base + 2);
        // Interface names hold 15 bytes: the subnet and index make them unique here.
        let device = format!("tdm{}x{i}", self.subnet);
        let peer = format!("tdm{}y{i}", self.subnet);
        let _ = Command::new("ip").args(["link", "del", &device]).output();
        ip(&[
            "link", "add", &device, "type", "veth", "peer", "name", &peer, "netns", &self.name,
        ]);
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &device]);
        ip(&["link", "set", &device, "up"]);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            &peer,
        ]);
        ip(&["-n", &self.name, "link", "set", &peer, "up"]);
        self.links.push(Veth {
            device,
            outside,
            inside,
        });
        i
    }

    pub fn veth(&self, i: usize) -> &Veth {
        &self.links[i]
    }

    /// Cuts link `i`: from now on nothing crosses it, in either direction.
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.links[i].device, "down"]);
    }

    /// Brings link `i` back.
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.links[i].device, "up"]);
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth ends inside it, and so their peers here.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
