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

/// Privileged tests fail, never pass silently, when not run as root.
pub fn must_be_root() {
    assert!(
        tests::require_root(),
        "this test needs root (network and mount namespaces); run it as root or through `cargo xtask test`"
    );
}

/// The store's allocations with their owners: `ip -> (containerID, ifname)`.
pub fn store_owners(data_dir: &Path, network: &str) -> Vec<(String, String, String)> {
    let Ok(b) = fs::read(data_dir.join(network).join("state.json")) else { return Vec::new() };
    let v: Value = serde_json::from_slice(&b).unwrap();
    v["allocations"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(ip, o)| {
                    (ip.clone(), o["containerID"].as_str().unwrap_or("").to_owned(), o["ifname"].as_str().unwrap_or("").to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The addresses (`a.b.c.d/len`) on `dev` in `netns`, both families, global scope.
pub fn addrs_on(netns: &str, dev: &str) -> Vec<String> {
    let Ok(out) = ip_in(netns, &["-o", "addr", "show", "dev", dev, "scope", "global"]) else { return Vec::new() };
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "inet" && *w != "inet6");
            w.next()?;
            w.next().map(str::to_owned)
        })
        .collect()
}

/// A tmpfs of `size` bytes mounted at a fresh directory inside a private
/// mount namespace of the calling thread: the plugins this thread spawns see
/// it, nothing else on the machine does, and it goes when the thread ends
/// (it is also unmounted on drop).
pub struct TinyTmpfs {
    pub dir: PathBuf,
}

impl TinyTmpfs {
    pub fn mount(dir: PathBuf, size: usize) -> Self {
        use std::ffi::CString;
        fs::create_dir_all(&dir).unwrap();
        // SAFETY: unshare(2) of this thread's mount namespace (threads do not
        // share fs attributes after this), then mount(2) calls with valid
        // NUL-terminated strings.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
            let root = CString::new("/").unwrap();
            let none = CString::new("none").unwrap();
            // Nothing mounted here may propagate back to the machine's namespace.
            assert_eq!(
                libc::mount(none.as_ptr(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()),
                0,
                "make / private: {}",
                std::io::Error::last_os_error()
            );
            let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
            let fstype = CString::new("tmpfs").unwrap();
            let opts = CString::new(format!("size={size},mode=0755")).unwrap();
            assert_eq!(
                libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, opts.as_ptr().cast()),
                0,
                "mount tmpfs on {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
        Self { dir }
    }

    /// Writes a file until the filesystem is full.
    pub fn fill(&self) {
        use std::io::Write as _;
        let mut f = fs::File::create(self.dir.join("filler")).unwrap();
        let chunk = vec![0xa5u8; 4096];
        for _ in 0..100_000 {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
                Err(e) => panic!("filling {}: {e}", self.dir.display()),
            }
        }
        panic!("{} never filled up", self.dir.display());
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2(2) with a valid path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
