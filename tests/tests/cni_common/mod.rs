//! Helpers shared by the sluice-cni end-to-end tests: running the plugin
//! binary exactly as a container runtime does (env vars, config on stdin,
//! inside the node's network namespace), bare pod namespaces, the daemon.

#![allow(dead_code, reason = "each test file uses a subset")]

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// One plugin invocation's outcome.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}; stderr: {}", self.stdout, self.stderr))
    }

    pub fn expect_ok(self, what: &str) -> Self {
        assert!(self.ok, "{what}: expected success, got stdout {:?} stderr {}", self.stdout, self.stderr);
        self
    }

    /// Asserts a spec error object with this code.
    pub fn expect_code(&self, code: u64, what: &str) -> Value {
        assert!(!self.ok, "{what}: expected error code {code}, but it succeeded: {}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "{what}: expected code {code}, got {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: error without msg: {v}");
        assert!(v["cniVersion"].is_string(), "{what}: error without cniVersion: {v}");
        v
    }
}

/// Runs `plugin` (a path) in `node_netns` with the CNI environment and
/// `stdin`, killed after [`T`].
pub fn invoke(plugin: &Path, node_netns: &str, env: &[(&str, &str)], stdin: &str) -> Outcome {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{node_netns}")).arg(plugin);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", plugin.display()));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let ereader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} did not finish within {T:?}", plugin.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Outcome { ok: status.success(), stdout: reader.join().unwrap(), stderr: ereader.join().unwrap() }
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

/// Bare pod namespaces (the runtime's sandbox), deleted on drop.
pub struct PodNetns {
    pub names: Vec<String>,
}

impl PodNetns {
    pub fn new() -> Self {
        Self { names: Vec::new() }
    }

    pub fn add(&mut self, name: &str) -> String {
        let out = Command::new("ip").args(["netns", "add", name]).output().unwrap();
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        self.names.push(name.to_owned());
        let lo = Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]).output().unwrap();
        assert!(lo.status.success());
        name.to_owned()
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        for n in self.names.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
        }
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
        .env("RUST_LOG", "debug");
    topo.spawn_in_node(node, cmd)
}

/// `ip -n NS ...` output, panicking with the command on failure.
pub fn ip(netns: &str, args: &[&str]) -> String {
    ip_in(netns, args).unwrap_or_else(|e| panic!("{e}"))
}
