//! Helpers for driving `sluice-proxy` in end-to-end tests, the demo and the
//! benchmarks: manifest builders (ordinary Kubernetes YAML) and an [`Agent`]
//! handle running the real binary inside a node.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{workspace_bin, Node, Pod, Proc, Topology};

/// A Service port: (name, port, targetPort, protocol). A targetPort that is
/// not a number is written as a named port.
pub struct SvcPort<'a> {
    pub name: &'a str,
    pub port: u16,
    pub target: &'a str,
    pub proto: &'a str,
}

/// YAML of a ClusterIP Service in namespace `default`.
pub fn service_yaml(name: &str, cluster_ips: &[&str], ports: &[SvcPort<'_>]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {}\n  clusterIPs: [{}]\n  ports:\n",
        cluster_ips[0],
        cluster_ips.join(", ")
    );
    for p in ports {
        let target = if p.target.parse::<u16>().is_ok() { p.target.to_owned() } else { format!("\"{}\"", p.target) };
        let _ = writeln!(
            y,
            "  - {{name: \"{}\", port: {}, targetPort: {target}, protocol: {}}}",
            p.name, p.port, p.proto
        );
    }
    y
}

/// One endpoint of a slice.
#[derive(Clone)]
pub struct Ep<'a> {
    pub ip: &'a str,
    pub node: &'a str,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl<'a> Ep<'a> {
    pub fn ready(ip: &'a str, node: &'a str) -> Self {
        Self { ip, node, ready: true, serving: true, terminating: false }
    }
}

/// YAML of an EndpointSlice for Service `service`; ports are (name, port, protocol).
pub fn slice_yaml(service: &str, name: &str, family: &str, ports: &[(&str, u16, &str)], eps: &[Ep<'_>]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: {family}\nports:\n"
    );
    for (n, p, proto) in ports {
        let _ = writeln!(y, "- {{name: \"{n}\", port: {p}, protocol: {proto}}}");
    }
    y.push_str("endpoints:\n");
    if eps.is_empty() {
        y = y.replace("endpoints:\n", "endpoints: []\n");
    }
    for e in eps {
        let _ = writeln!(
            y,
            "- addresses: [\"{}\"]\n  nodeName: {}\n  conditions: {{ready: {}, serving: {}, terminating: {}}}",
            e.ip, e.node, e.ready, e.serving, e.terminating
        );
    }
    y
}

/// Writes `text` to `dir/name` atomically (write + rename), as a
/// configuration manager would, so the agent never reads half a file.
pub fn write_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, dir.join(name)).unwrap_or_else(|e| panic!("renaming into {name}: {e}"));
}

/// A running `sluice-proxy run` inside a node (its netns and cgroup).
pub struct Agent {
    pub proc: Proc,
    pub bpffs: PathBuf,
    /// The manifest directory it follows, or the kubeconfig it was given
    /// ([`Agent::start_kube`]).
    pub manifests: PathBuf,
}

impl Agent {
    /// Starts the agent on `node` following `manifests`, with extra flags.
    pub fn start(topo: &mut Topology, node: &Node, manifests: &Path, extra: &[&str]) -> Agent {
        let bpffs = topo.bpffs().join(format!("sluice-{}", node.name));
        Self::start_with_bpffs(topo, node, manifests, &bpffs, extra)
    }

    /// Starts the agent with an explicit bpffs directory (to restart onto the same pins).
    pub fn start_with_bpffs(topo: &Topology, node: &Node, manifests: &Path, bpffs: &Path, extra: &[&str]) -> Agent {
        Self::spawn(topo, node, "--manifests", manifests, bpffs, extra)
    }

    /// Starts the agent on `node` following an API server through an
    /// ordinary kubeconfig (see [`crate::apiserver::ApiServer::write_kubeconfig`]).
    pub fn start_kube(topo: &mut Topology, node: &Node, kubeconfig: &Path, extra: &[&str]) -> Agent {
        let bpffs = topo.bpffs().join(format!("sluice-{}", node.name));
        Self::start_kube_with_bpffs(topo, node, kubeconfig, &bpffs, extra)
    }

    /// [`Agent::start_kube`] with an explicit bpffs directory (to restart onto the same pins).
    pub fn start_kube_with_bpffs(topo: &Topology, node: &Node, kubeconfig: &Path, bpffs: &Path, extra: &[&str]) -> Agent {
        Self::spawn(topo, node, "--kubeconfig", kubeconfig, bpffs, extra)
    }

    fn spawn(topo: &Topology, node: &Node, source_flag: &str, source: &Path, bpffs: &Path, extra: &[&str]) -> Agent {
        let manifests = source;
        let mut cmd = Command::new(workspace_bin("sluice-proxy"));
        cmd.arg("run")
            .arg(source_flag)
            .arg(source)
            .args(["--node-name", &node.name])
            .arg("--cgroup")
            .arg(&node.cgroup)
            .arg("--bpffs")
            .arg(bpffs)
            .args(extra)
            .env("RUST_LOG", "info");
        let proc = topo.spawn_in_node(node, cmd);
        assert!(
            proc.wait_for_stderr("sluice-proxy running", Duration::from_secs(20)),
            "sluice-proxy did not start; stderr:\n{}",
            proc.stderr()
        );
        Agent { proc, bpffs: bpffs.to_owned(), manifests: manifests.to_owned() }
    }

    /// `sluice-proxy status --json` as parsed JSON rows.
    pub fn status(&self) -> Vec<Value> {
        status(&self.bpffs)
    }

    /// Waits until `frontend` (e.g. "198.19.0.10:80/TCP") is programmed with
    /// exactly `backends` (sorted "ip:port"), or panics after `timeout`.
    pub fn wait_for(&self, frontend: &str, backends: &[&str], timeout: Duration) {
        let want: Vec<String> = {
            let mut v: Vec<String> = backends.iter().map(|s| (*s).to_owned()).collect();
            v.sort();
            v
        };
        let deadline = Instant::now() + timeout;
        let mut seen = None;
        while Instant::now() < deadline {
            seen = programmed_backends(&self.status(), frontend);
            if seen.as_ref() == Some(&want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "expected frontend {frontend} with backends {want:?}, saw {seen:?}; agent stderr:\n{}",
            self.proc.stderr()
        );
    }

    /// Waits until `frontend` is no longer programmed.
    pub fn wait_gone(&self, frontend: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if programmed_backends(&self.status(), frontend).is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("expected frontend {frontend} to be removed; agent stderr:\n{}", self.proc.stderr());
    }
}

/// `sluice-proxy status --bpffs DIR --json`.
pub fn status(bpffs: &Path) -> Vec<Value> {
    let out = Command::new(workspace_bin("sluice-proxy"))
        .args(["status", "--json", "--bpffs"])
        .arg(bpffs)
        .output()
        .expect("running sluice-proxy status");
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default()
}

fn programmed_backends(rows: &[Value], frontend: &str) -> Option<Vec<String>> {
    rows.iter().find(|r| r["frontend"] == frontend).map(|r| {
        let mut v: Vec<String> = r["backends"]
            .as_array()
            .map(|a| a.iter().filter_map(|b| b.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        v.sort();
        v
    })
}

/// Runs `sluice-probe ARGS` in `pod` and parses its JSON.
pub fn probe_json(topo: &Topology, pod: &Pod, args: &[&str], timeout: Duration) -> Value {
    let mut cmd = Command::new(workspace_bin("sluice-probe"));
    cmd.args(args);
    let out = topo.run_in_pod(pod, cmd, timeout);
    assert!(
        out.status.success(),
        "sluice-probe {args:?} failed: {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("sluice-probe {args:?}: stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Starts `sluice-probe serve --id ID --tcp 8080 --udp 8081` in `pod`.
pub fn serve(topo: &Topology, pod: &Pod, id: &str, tcp: &[u16], udp: &[u16]) -> Proc {
    let mut cmd = Command::new(workspace_bin("sluice-probe"));
    cmd.args(["serve", "--id", id]);
    for p in tcp {
        cmd.args(["--tcp", &p.to_string()]);
    }
    for p in udp {
        cmd.args(["--udp", &p.to_string()]);
    }
    let proc = topo.spawn_in_pod(pod, cmd);
    assert!(
        proc.wait_for_stdout("ready", Duration::from_secs(10)),
        "probe server {id} did not start: {}",
        proc.stderr()
    );
    proc
}

/// The count under `field` for `key` in a probe JSON answer (0 when absent).
pub fn count(v: &Value, field: &str, key: &str) -> u64 {
    v[field][key].as_u64().unwrap_or(0)
}
