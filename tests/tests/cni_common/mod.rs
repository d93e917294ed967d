//! Helpers shared by the sluice-cni end-to-end tests: running the plugin
//! binary exactly as a container runtime does (env vars, config on stdin,
//! inside the node's network namespace), bare pod namespaces, the daemon.

#![allow(dead_code, reason = "each test file uses a subset")]

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{ip_in, Node, Topology};

pub const T: Duration = Duration::from_secs(20);

/// The plugin binary: `SLUICE_CNI_BIN`, else next to the test executable.
pub fn cni_bin() -> PathBuf {
    tests::workspace_bin("sluice-cni")
}

/// The reference plugins' directory (Debian's containernetworking-plugins).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// CNI_PATH for chained invocations: our binary's directory then the reference plugins.
pub fn cni_path() -> String {
    format!("{}:{REFERENCE_PLUGINS}", cni_bin().parent().unwrap().display())
}

pub use tests::cni::{Outcome, PodNetns};

/// [`tests::cni::invoke`] with the tests' timeout [`T`].
pub fn invoke(plugin: &Path, node_netns: &str, env: &[(&str, &str)], stdin: &str) -> Outcome {
    tests::cni::invoke(plugin, node_netns, env, stdin, T)
}

/// A runtime's view of one attachment.
pub struct Attach<'a> {
    pub node: &'a Node,
    pub container: String,
    pub netns: String,
    pub ifname: String,
}

impl Attach<'_> {
    pub fn run(&self, command: &str, conf: &Value) -> Outcome {
        self.run_plugin(&cni_bin(), command, conf)
    }

    pub fn run_plugin(&self, plugin: &Path, command: &str, conf: &Value) -> Outcome {
        let netns = format!("/run/netns/{}", self.netns);
        let path = cni_path();
        invoke(
            plugin,
            &self.node.netns,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", &self.container),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", &self.ifname),
                ("CNI_PATH", &path),
            ],
            &conf.to_string(),
        )
    }
}


/// A plugin config with the built-in IPAM on a fixed range (no daemon).
pub fn static_conf(version: &str, data_dir: &Path, cidrs: &[&str]) -> Value {
    json!({
        "cniVersion": version,
        "name": "sluice",
        "type": "sluice-cni",
        "podCidrs": cidrs,
        "dataDir": data_dir,
        "mtu": 1450,
        "logLevel": "debug",
    })
}

/// The addresses the built-in IPAM store holds.
pub fn store_allocations(data_dir: &Path, network: &str) -> Vec<String> {
    match fs::read(data_dir.join(network).join("state.json")) {
        Ok(b) => {
            let v: Value = serde_json::from_slice(&b).unwrap();
            v["allocations"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
        }
        Err(_) => Vec::new(),
    }
}

/// Pings `dst` from `netns` once; `extra` adds flags (`-M do -s 1400`).
pub fn ping(topo: &Topology, netns: &str, dst: &str, extra: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("ping");
    cmd.args(["-c", "1", "-W", "2"]).args(extra).arg(dst);
    let out = topo.run_in_netns(netns, None, cmd, T);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// Pings until it works or `T` passes (for state a daemon converges to).
pub fn ping_eventually(topo: &Topology, netns: &str, dst: &str, extra: &[&str]) {
    let deadline = Instant::now() + T;
    let mut last = String::new();
    while Instant::now() < deadline {
        match ping(topo, netns, dst, extra) {
            Ok(()) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("ping {dst} {extra:?} from {netns} never succeeded within {T:?}: {last}");
}

/// Waits until `f` holds, polling; panics with `what` after `T`.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not true within {T:?}");
}

/// A v1 Node manifest.
pub fn node_yaml(name: &str, ip: Ipv4Addr, cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDR: {cidr}, podCIDRs: [{cidr}]}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}, {{type: Hostname, address: {name}}}]}}\n"
    )
}

/// Where a node's daemon keeps its files.
pub struct NodeDirs {
    pub conf_dir: PathBuf,
    pub state_dir: PathBuf,
    pub ipam_dir: PathBuf,
}

impl NodeDirs {
    pub fn new(topo: &Topology, node: &str) -> Self {
        Self {
            conf_dir: topo.scratch(&format!("{node}-net.d")),
            state_dir: topo.scratch(&format!("{node}-run")),
            ipam_dir: topo.scratch(&format!("{node}-ipam")),
        }
    }

    /// The plugin config the daemon wrote, as the runtime hands it to the
    /// first plugin of the conflist.
    pub fn plugin_conf(&self) -> Value {
        let list: Value =
            serde_json::from_slice(&fs::read(self.conf_dir.join("10-sluice.conflist")).unwrap()).unwrap();
        let mut p = list["plugins"][0].clone();
        p["name"] = list["name"].clone();
        p["cniVersion"] = list["cniVersion"].clone();
        p
    }
}

/// Starts `sluice-cni daemon` inside the node's namespace.
pub fn start_daemon(topo: &Topology, node: &Node, backend: &str, manifests: &Path, dirs: &NodeDirs) -> tests::Proc {
    start_daemon_with(topo, node, backend, manifests, dirs, &[])
}

/// [`start_daemon`] with more daemon flags.
pub fn start_daemon_with(
    topo: &Topology,
    node: &Node,
    backend: &str,
    manifests: &Path,
    dirs: &NodeDirs,
    extra: &[std::ffi::OsString],
) -> tests::Proc {
    let mut cmd = Command::new(cni_bin());
    cmd.args(["daemon", "--backend", backend, "--node-name", &node.name, "--cluster-cidr", "198.18.0.0/16"])
        .arg("--manifests")
        .arg(manifests)
        .arg("--cni-conf-dir")
        .arg(&dirs.conf_dir)
        .arg("--state-dir")
        .arg(&dirs.state_dir)
        .arg("--ipam-dir")
        .arg(&dirs.ipam_dir)
        .args(["--resync", "1s"])
        .args(extra)
        .env("RUST_LOG", "debug");
    topo.spawn_in_node(node, cmd)
}

/// `ip -n NS ...` output, panicking with the command on failure.
pub fn ip(netns: &str, args: &[&str]) -> String {
    ip_in(netns, args).unwrap_or_else(|e| panic!("{e}"))
}
