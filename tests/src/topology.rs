//! Nodes, pods and outside clients built from network namespaces on one
//! shared underlay bridge. Everything is torn down when the `Topology` drops.
//!
//! Address plan (see ENVIRONMENT.md):
//! - underlay: nodes `192.0.2.x/24` and `2001:db8:ff::x/64` on `eth0`, bridged
//!   by `br0` in the namespace `<id>-ul`;
//! - outside clients: `203.0.113.x/24` and `2001:db8:ff::1:x/64` on the same
//!   bridge. The two IPv4 subnets share the L2 segment through on-link routes
//!   (`192.0.2.0/24 dev eth0` in outside clients, `203.0.113.0/24 dev eth0` in
//!   nodes), so no router namespace is needed and an outside client's packets
//!   reach a node's `eth0` unchanged (what NodePort/XDP tests want);
//! - pods: `/32` (and `/128`) on their `eth0`, default route via the
//!   link-local gateway `169.254.1.1` / `fe80::1`, both statically resolved to
//!   the node-side veth MAC `ee:ee:ee:ee:ee:ee` (no proxy ARP, no NDP proxy);
//!   the node routes the pod address `dev <host_veth>` with its underlay
//!   address as preferred source.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::process::{self, Proc, Shared};
use crate::sys;

/// MAC of every node-side pod veth; pods resolve their gateway to it statically.
pub const HOST_VETH_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// Pods' IPv4 default gateway (resolved statically, never assigned anywhere).
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Pods' IPv6 default gateway (resolved statically, never assigned anywhere).
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The underlay bridge inside the `<id>-ul` namespace.
pub const UNDERLAY_BRIDGE: &str = "br0";

/// A simulated node: a network namespace on the underlay plus a cgroup v2
/// directory in which its pods' processes run.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub underlay: Ipv4Addr,
    /// `2001:db8:ff::<last octet of underlay>`, on the same `eth0`.
    pub underlay6: Ipv6Addr,
    /// `<v2 mount>/sluice-tests/<id>/<name>`: attach cgroup programs here.
    pub cgroup: PathBuf,
}

/// A pod: its own network namespace, a veth to its node, processes in the
/// node's cgroup.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    /// Name of the node (not its netns).
    pub node: String,
    pub node_netns: String,
    /// The node-side veth, in `node_netns`.
    pub host_veth: String,
    /// The node's cgroup, where the pod's processes are placed.
    pub cgroup: PathBuf,
}

/// A client outside the cluster, on the underlay bridge.
#[derive(Clone, Debug)]
pub struct Outside {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// `2001:db8:ff::1:<last octet of ip>`, on-link with the nodes' `underlay6`.
    pub ip6: Ipv6Addr,
    pub cgroup: PathBuf,
}

/// RAII owner of a test topology. Drop kills the processes it spawned, deletes
/// its namespaces, cgroups, bpffs mount and scratch directories, and never panics.
pub struct Topology {
    id: String,
    underlay_netns: String,
    tmp: PathBuf,
    cgroup: PathBuf,
    netns: Vec<String>,
    bpffs: Option<PathBuf>,
    procs: Mutex<Vec<Arc<Shared>>>,
    next_link: usize,
}

fn must<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("topology setup failed: {e}"))
}

/// Interface names are limited to 15 bytes (IFNAMSIZ - 1).
fn ifname(prefix: &str, name: &str) -> String {
    let mut s = format!("{prefix}{name}");
    s.retain(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    s.truncate(15);
    s
}

fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 5];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    let tail: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("slc{tail}")
}

fn v6_host(prefix: [u16; 7], last: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        prefix[0],
        prefix[1],
        prefix[2],
        prefix[3],
        prefix[4],
        prefix[5],
        prefix[6],
        u16::from(last),
    )
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    /// Creates the underlay (`<id>-ul` with bridge `br0`), the topology's
    /// cgroup directory and `/tmp/<id>`.
    ///
    /// # Panics
    /// When not root, or when the kernel refuses a step (the message names it).
    pub fn new() -> Topology {
        // SAFETY: geteuid(2) cannot fail.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "Topology::new needs root: guard tests with tests::require_root()"
        );
        let cgroup_parent = must(sys::cgroup_parent());
        let mut id = random_id();
        for _ in 0..16 {
            if !Path::new("/run/netns").join(format!("{id}-ul")).exists()
                && !Path::new("/tmp").join(&id).exists()
                && !cgroup_parent.join(&id).exists()
            {
                break;
            }
            id = random_id();
        }
        let mut topo = Topology {
            underlay_netns: format!("{id}-ul"),
            tmp: Path::new("/tmp").join(&id),
            cgroup: cgroup_parent.join(&id),
            id,
            netns: Vec::new(),
            bpffs: None,
            procs: Mutex::new(Vec::new()),
            next_link: 0,
        };
        must(
            fs::create_dir_all(&topo.tmp).map_err(|e| format!("mkdir {}: {e}", topo.tmp.display())),
        );
        must(
            fs::create_dir_all(&topo.cgroup)
                .map_err(|e| format!("mkdir {}: {e}", topo.cgroup.display())),
        );
        let ul = topo.underlay_netns.clone();
        topo.add_netns(&ul);
        must(sys::ip_in(
            &ul,
            &[
                "link",
                "add",
                UNDERLAY_BRIDGE,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        ));
        // The bridge stands for a switch, which costs the nodes nothing.
        // Where br_netfilter is present (built into these kernels), every
        // new namespace starts with bridge-nf-call-* = 1: each bridged frame
        // would get an skb extension and a pass through the IPv4/IPv6 hooks
        // here, on the same CPUs the nodes use, once per crossing.
        if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            must(sys::sysctls(
                &ul,
                &[
                    ("net.bridge.bridge-nf-call-iptables", "0"),
                    ("net.bridge.bridge-nf-call-ip6tables", "0"),
                    ("net.bridge.bridge-nf-call-arptables", "0"),
                ],
            ));
        }
        must(sys::ip_in(&ul, &["link", "set", UNDERLAY_BRIDGE, "up"]));
        topo
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace holding the underlay bridge `br0` (for captures, faults).
    pub fn underlay_netns(&self) -> &str {
        &self.underlay_netns
    }

    fn add_netns(&mut self, name: &str) {
        must(sys::ip(&["netns", "add", name]));
        // Registered before anything else can fail, so Drop removes it.
        self.netns.push(name.to_string());
        must(sys::ip_in(name, &["link", "set", "lo", "up"]));
    }

    fn add_cgroup(&self, name: &str) -> PathBuf {
        let dir = self.cgroup.join(name);
        must(fs::create_dir(&dir).map_err(|e| format!("mkdir cgroup {}: {e}", dir.display())));
        dir
    }

    fn link_index(&mut self) -> usize {
        self.next_link += 1;
        self.next_link
    }

    /// Plugs `eth0` of `netns` into the underlay bridge.
    fn attach_underlay(&mut self, netns: &str, port_prefix: &str, name: &str) {
        let idx = self.link_index();
        let port = ifname(&format!("{port_prefix}{idx}-"), name);
        let ul = self.underlay_netns.clone();
        must(sys::ip_in(
            netns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &ul,
            ],
        ));
        must(sys::ip_in(
            &ul,
            &["link", "set", &port, "master", UNDERLAY_BRIDGE, "up"],
        ));
    }

    /// A node namespace `<id>-<name>` with `underlay`/24 on `eth0`, forwarding
    /// on, rp_filter off, and a cgroup `<v2>/sluice-tests/<id>/<name>`.
    pub fn add_node(&mut self, name: &str, underlay: Ipv4Addr) -> Node {
        let netns = format!("{}-{name}", self.id);
        self.add_netns(&netns);
        must(sys::sysctls(
            &netns,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ],
        ));
        self.attach_underlay(&netns, "n", name);
        let underlay6 = v6_host([0x2001, 0xdb8, 0xff, 0, 0, 0, 0], underlay.octets()[3]);
        must(sys::ip_in(
            &netns,
            &["addr", "add", &format!("{underlay}/24"), "dev", "eth0"],
        ));
        must(sys::ip_in(
            &netns,
            &[
                "addr",
                "add",
                &format!("{underlay6}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        ));
        must(sys::ip_in(&netns, &["link", "set", "eth0", "up"]));
        must(sys::ip_in(
            &netns,
            &[
                "route",
                "add",
                "203.0.113.0/24",
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        ));
        let cgroup = self.add_cgroup(name);
        Node {
            name: name.to_string(),
            netns,
            underlay,
            underlay6,
            cgroup,
        }
    }

    /// A pod namespace `<id>-<node>-<name>` wired to `node` by a veth.
    pub fn add_pod(&mut self, node: &Node, name: &str, ip: Ipv4Addr, ip6: Option<Ipv6Addr>) -> Pod {
        let netns = format!("{}-{}-{name}", self.id, node.name);
        self.add_netns(&netns);
        must(sys::sysctls(
            &netns,
            &[
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ],
        ));
        let idx = self.link_index();
        let host_veth = ifname(&format!("vp{idx}-"), name);
        let n = node.netns.as_str();
        must(sys::ip_in(
            n,
            &[
                "link",
                "add",
                &host_veth,
                "address",
                HOST_VETH_MAC,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &netns,
            ],
        ));
        must(sys::ip_in(n, &["link", "set", &host_veth, "up"]));
        let gw4 = POD_GATEWAY_V4.to_string();
        let gw6 = POD_GATEWAY_V6.to_string();
        must(sys::ip_in(
            &netns,
            &["addr", "add", &format!("{ip}/32"), "dev", "eth0"],
        ));
        if let Some(ip6) = ip6 {
            must(sys::ip_in(
                &netns,
                &["addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"],
            ));
        }
        must(sys::ip_in(&netns, &["link", "set", "eth0", "up"]));
        must(sys::ip_in(
            &netns,
            &[
                "neigh",
                "replace",
                &gw4,
                "lladdr",
                HOST_VETH_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        ));
        must(sys::ip_in(
            &netns,
            &["route", "add", &gw4, "dev", "eth0", "scope", "link"],
        ));
        must(sys::ip_in(
            &netns,
            &["route", "add", "default", "via", &gw4, "dev", "eth0"],
        ));
        must(sys::ip_in(
            n,
            &[
                "route",
                "add",
                &format!("{ip}/32"),
                "dev",
                &host_veth,
                "src",
                &node.underlay.to_string(),
            ],
        ));
        if let Some(ip6) = ip6 {
            must(sys::ip_in(
                &netns,
                &[
                    "-6",
                    "neigh",
                    "replace",
                    &gw6,
                    "lladdr",
                    HOST_VETH_MAC,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ],
            ));
            must(sys::ip_in(
                &netns,
                &["-6", "route", "add", "default", "via", &gw6, "dev", "eth0"],
            ));
            must(sys::ip_in(
                n,
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{ip6}/128"),
                    "dev",
                    &host_veth,
                    "src",
                    &node.underlay6.to_string(),
                ],
            ));
        }
        Pod {
            name: name.to_string(),
            netns,
            ip,
            ip6,
            node: node.name.clone(),
            node_netns: node.netns.clone(),
            host_veth,
            cgroup: node.cgroup.clone(),
        }
    }

    /// Host-gw style static routes: every node reaches every other node's pod
    /// CIDR (`"198.18.1.0/24"`, optional `"2001:db8:1:1::/64"`) via that node's
    /// underlay address.
    pub fn route_pod_cidrs(&self, cidrs: &[(&Node, &str, Option<&str>)]) {
        for (node, _, _) in cidrs {
            for (other, cidr, cidr6) in cidrs {
                if other.netns == node.netns {
                    continue;
                }
                must(sys::ip_in(
                    &node.netns,
                    &[
                        "route",
                        "replace",
                        cidr,
                        "via",
                        &other.underlay.to_string(),
                        "dev",
                        "eth0",
                    ],
                ));
                if let Some(cidr6) = cidr6 {
                    must(sys::ip_in(
                        &node.netns,
                        &[
                            "-6",
                            "route",
                            "replace",
                            cidr6,
                            "via",
                            &other.underlay6.to_string(),
                            "dev",
                            "eth0",
                        ],
                    ));
                }
            }
        }
    }

    /// An outside client `<id>-<name>` on the underlay bridge with `ip`/24
    /// (203.0.113.x) and an on-link route to the node underlay 192.0.2.0/24.
    pub fn add_outside(&mut self, name: &str, ip: Ipv4Addr) -> Outside {
        let netns = format!("{}-{name}", self.id);
        self.add_netns(&netns);
        must(sys::sysctls(
            &netns,
            &[
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ],
        ));
        self.attach_underlay(&netns, "o", name);
        let ip6 = v6_host([0x2001, 0xdb8, 0xff, 0, 0, 0, 1], ip.octets()[3]);
        must(sys::ip_in(
            &netns,
            &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        ));
        must(sys::ip_in(
            &netns,
            &["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"],
        ));
        must(sys::ip_in(&netns, &["link", "set", "eth0", "up"]));
        must(sys::ip_in(
            &netns,
            &[
                "route",
                "add",
                "192.0.2.0/24",
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        ));
        let cgroup = self.add_cgroup(name);
        Outside {
            name: name.to_string(),
            netns,
            ip,
            ip6,
            cgroup,
        }
    }

    /// A bpffs private to this topology at `/tmp/<id>/bpffs`, unmounted on drop.
    pub fn bpffs(&mut self) -> PathBuf {
        if let Some(p) = &self.bpffs {
            return p.clone();
        }
        let p = self.tmp.join("bpffs");
        must(sys::mount_bpffs(&p));
        self.bpffs = Some(p.clone());
        p
    }

    /// A scratch directory `/tmp/<id>/<name>` (created if needed), removed on drop.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.tmp.join(name);
        must(fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display())));
        p
    }

    fn track(&self, p: Proc) -> Proc {
        self.procs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::clone(&p.shared));
        p
    }

    /// Spawns `cmd` in any namespace of this topology, optionally in a cgroup.
    /// stdin is /dev/null, stdout/stderr are captured (see [`Proc`]).
    pub fn spawn_in_netns(&self, netns: &str, cgroup: Option<&Path>, cmd: Command) -> Proc {
        let p = process::spawn(cmd, Some(netns), cgroup)
            .unwrap_or_else(|e| panic!("spawn in {netns}: {e}"));
        self.track(p)
    }

    /// Spawns `cmd` in the pod's network namespace and its node's cgroup.
    pub fn spawn_in_pod(&self, pod: &Pod, cmd: Command) -> Proc {
        self.spawn_in_netns(&pod.netns, Some(&pod.cgroup), cmd)
    }

    /// Spawns `cmd` in the node's network namespace and cgroup.
    pub fn spawn_in_node(&self, node: &Node, cmd: Command) -> Proc {
        self.spawn_in_netns(&node.netns, Some(&node.cgroup), cmd)
    }

    /// Spawns `cmd` in the outside client's network namespace and cgroup.
    pub fn spawn_in_outside(&self, o: &Outside, cmd: Command) -> Proc {
        self.spawn_in_netns(&o.netns, Some(&o.cgroup), cmd)
    }

    /// Runs `cmd` to completion in `netns` (and `cgroup`), killed after `timeout`.
    pub fn run_in_netns(
        &self,
        netns: &str,
        cgroup: Option<&Path>,
        cmd: Command,
        timeout: Duration,
    ) -> Output {
        self.spawn_in_netns(netns, cgroup, cmd).wait_output(timeout)
    }

    pub fn run_in_pod(&self, pod: &Pod, cmd: Command, timeout: Duration) -> Output {
        self.run_in_netns(&pod.netns, Some(&pod.cgroup), cmd, timeout)
    }

    pub fn run_in_node(&self, node: &Node, cmd: Command, timeout: Duration) -> Output {
        self.run_in_netns(&node.netns, Some(&node.cgroup), cmd, timeout)
    }

    pub fn run_in_outside(&self, o: &Outside, cmd: Command, timeout: Duration) -> Output {
        self.run_in_netns(&o.netns, Some(&o.cgroup), cmd, timeout)
    }

    /// Tears everything down; what `Drop` does. Returns the lines it would log.
    fn teardown(&mut self) -> Vec<String> {
        let mut log = Vec::new();
        let procs = std::mem::take(
            &mut *self
                .procs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let verbose = std::thread::panicking() || std::env::var_os("SLUICE_TEST_LOG").is_some();
        for p in &procs {
            p.kill();
            if verbose {
                log.push(p.summary());
            }
        }
        for ns in self.netns.drain(..).rev() {
            if let Err(e) = sys::delete_netns(&ns, &mut Vec::new()) {
                log.push(format!("error: {e}"));
            }
        }
        if let Err(e) = sys::remove_cgroup_tree(&self.cgroup, &mut Vec::new()) {
            log.push(format!("error: {e}"));
        }
        // The shared parent goes with the last topology: rmdir fails while a
        // concurrent test still has its own directory in it, which is fine.
        if let Some(parent) = self.cgroup.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        if let Err(e) = sys::umount_below(&self.tmp, &mut Vec::new()) {
            log.push(format!("error: {e}"));
        }
        self.bpffs = None;
        if let Err(e) = sys::remove_tree(&self.tmp, &mut Vec::new()) {
            log.push(format!("error: {e}"));
        }
        log
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for line in self.teardown() {
            eprintln!("[topology {}] {line}", self.id);
        }
    }
}
