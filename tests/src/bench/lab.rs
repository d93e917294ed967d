//! The benchmark topology: one two-node cluster per datapath variant on one
//! underlay, so every variant runs on identical namespaces and none sees
//! another's rules or programs:
//!
//! - `direct`: no service translation at all (clients address pod IPs);
//! - `sluice`: sluice-proxy on node a, attached to node a's cgroup, where the
//!   client pod's processes run;
//! - `iptables`: kube-proxy's iptables-mode ruleset loaded in the node netns;
//! - `nftables`: kube-proxy's nftables-mode ruleset loaded in the node netns.
//!
//! [`Lab::new_external`] adds an outside client (203.0.113.10) on the same
//! underlay for NodePort measurements: there sluice-proxy runs on both nodes
//! with `--external-interfaces eth0` (the tc path serves NodePorts), the
//! netfilter rulesets carry the NodePort rules on both nodes, and the
//! outside client routes the `direct` cluster's node-b pod /24 via node b.
//! Nodes forward (`Topology::add_node` turns `ip_forward` on in each node
//! netns), which the netfilter variants' DNAT back out of `eth0` needs.
//!
//! Keeping the variants in separate node namespaces (instead of loading and
//! unloading rules in one) also means that netfilter's conntrack and nat hooks,
//! once registered by a ruleset, never tax the sluice and direct runs.

use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use super::workload::{self, ServiceSpec};
use crate::{Node, Outside, Pod, Proc, Topology};

pub const CLUSTER_CIDR: &str = "198.18.0.0/16";
pub const IPERF_PORT: u16 = 5201;
/// direct's second iperf3 server (the A/A half of head-to-head runs).
pub const IPERF_PORT_AA: u16 = 5202;
pub const RATE_TCP_PORT: u16 = 8080;
pub const RATE_UDP_PORT: u16 = 8081;
pub const RATE_BACKENDS: usize = 10;

/// The iptables backend of the `iptables` variant. kube-proxy drives whichever
/// the host uses; iptables-nft 1.8.9 needs over ten minutes to restore the
/// 10,000-Service ruleset (430,000 lines) on this machine, legacy about ten
/// seconds, so the baseline uses legacy (rules are walked linearly in both).
pub const IPTABLES_RESTORE: &str = "iptables-legacy-restore";

/// VIPs of the benchmark's real Services (fillers use 198.19.0.0-198.19.39.255).
pub const VIP_RATE: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
pub const VIP_PERF_SAME: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 2);
pub const VIP_PERF_CROSS: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 3);
/// ClusterIP of the NodePort Service in front of the node-b iperf3 pod.
pub const VIP_PERF_NODEPORT: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 4);
/// Its NodePort, on every node address.
pub const PERF_NODE_PORT: u16 = 30520;
/// The outside client of [`Lab::new_external`].
pub const OUTSIDE_CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Direct,
    Sluice,
    Iptables,
    Nftables,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Direct,
        Variant::Sluice,
        Variant::Iptables,
        Variant::Nftables,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Sluice => "sluice",
            Variant::Iptables => "iptables",
            Variant::Nftables => "nftables",
        }
    }
}

/// What the measurements need built.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    pub perf: bool,
    pub rate: bool,
}

pub struct Cluster {
    pub variant: Variant,
    pub a: Node,
    pub b: Node,
    /// Node b's pod /24.
    pub pod_cidr_b: String,
    pub client: Pod,
    pub perf_same: Option<Pod>,
    pub perf_cross: Option<Pod>,
    pub rate_pods: Vec<Pod>,
    /// sluice only: the agent, its manifest dir and bpffs dir.
    pub agent: Option<Agent>,
    /// sluice in [`Lab::new_external`] only: the agent on node b.
    pub agent_b: Option<Agent>,
    servers: Vec<Proc>,
    /// iptables only: whether the builtin-chain jumps are installed per node netns.
    base_loaded: Vec<String>,
}

/// A running sluice-proxy in standalone mode.
pub struct Agent {
    pub proc: Proc,
    pub manifests: PathBuf,
    pub bpffs: PathBuf,
    /// Length of stderr already consumed by `wait_synced`.
    mark: usize,
    /// Node addresses it serves NodePorts on (0 without an external datapath).
    node_ips: usize,
}

pub struct Lab {
    pub topo: Topology,
    pub clusters: Vec<Cluster>,
    /// [`Lab::new_external`] only: the client outside the cluster.
    pub outside: Option<Outside>,
    pub proxy_bin: PathBuf,
    pub probe_bin: PathBuf,
    scratch_n: usize,
}

/// Runs `cmd` on a thread inside `netns` (its children inherit the thread's
/// network namespace), killed after `limit`; returns the wall time and output.
pub fn timed_in_netns(netns: &str, mut cmd: Command, limit: Duration) -> anyhow::Result<(Duration, Output)> {
    let what = format!("{cmd:?} in {netns}");
    let r = crate::in_netns(netns, move || -> std::io::Result<(Duration, Output)> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let start = Instant::now();
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id()).unwrap_or(0);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(limit).is_err() && pid > 0 {
                // SAFETY: kill(2) on our own child, which is not reaped before `done` is sent.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let out = child.wait_with_output();
        let elapsed = start.elapsed();
        let _ = done_tx.send(());
        let _ = watchdog.join();
        Ok((elapsed, out?))
    })
    .with_context(|| format!("enter netns for {what}"))?
    .with_context(|| format!("run {what}"))?;
    Ok(r)
}

/// [`timed_in_netns`] that fails unless the command succeeded.
pub fn run_ok_in_netns(netns: &str, cmd: Command, limit: Duration) -> anyhow::Result<Duration> {
    let what = format!("{:?}", cmd.get_program());
    let (t, out) = timed_in_netns(netns, cmd, limit)?;
    if !out.status.success() {
        bail!(
            "{what} in {netns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).chars().take(2000).collect::<String>()
        );
    }
    Ok(t)
}

pub(super) fn pinned(cpu: u32, program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpu.to_string()).arg(program).args(args);
    c
}

impl Lab {
    /// Builds one cluster per variant in `variants` with what `needs` asks for.
    pub fn new(variants: &[Variant], needs: Needs, proxy_bin: PathBuf, probe_bin: PathBuf) -> anyhow::Result<Lab> {
        Lab::build(variants, needs, false, proxy_bin, probe_bin)
    }

    /// [`Lab::new`] plus an outside client and an external datapath on both
    /// nodes of every cluster (see the module documentation).
    pub fn new_external(variants: &[Variant], needs: Needs, proxy_bin: PathBuf, probe_bin: PathBuf) -> anyhow::Result<Lab> {
        Lab::build(variants, needs, true, proxy_bin, probe_bin)
    }

    fn build(variants: &[Variant], needs: Needs, external: bool, proxy_bin: PathBuf, probe_bin: PathBuf) -> anyhow::Result<Lab> {
        let mut topo = Topology::new();
        let mut clusters = Vec::new();
        for (c, &variant) in variants.iter().enumerate() {
            let c8 = u8::try_from(c).expect("few clusters");
            let tag = &variant.name()[..2];
            let a = topo.add_node(&format!("{tag}a"), Ipv4Addr::new(192, 0, 2, 10 + 2 * c8 + 1));
            let b = topo.add_node(&format!("{tag}b"), Ipv4Addr::new(192, 0, 2, 10 + 2 * c8 + 2));
            let net_a = 2 * c8 + 1;
            let net_b = 2 * c8 + 2;
            let client = topo.add_pod(&a, "client", Ipv4Addr::new(198, 18, net_a, 10), None);
            let (perf_same, perf_cross) = if needs.perf {
                (
                    Some(topo.add_pod(&a, "psame", Ipv4Addr::new(198, 18, net_a, 20), None)),
                    Some(topo.add_pod(&b, "pcross", Ipv4Addr::new(198, 18, net_b, 20), None)),
                )
            } else {
                (None, None)
            };
            let rate_pods = if needs.rate {
                (0..RATE_BACKENDS)
                    .map(|k| {
                        let k8 = u8::try_from(k).expect("10");
                        topo.add_pod(&a, &format!("r{k}"), Ipv4Addr::new(198, 18, net_a, 30 + k8), None)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let pod_cidr_b = format!("198.18.{net_b}.0/24");
            topo.route_pod_cidrs(&[(&a, &format!("198.18.{net_a}.0/24"), None), (&b, &pod_cidr_b, None)]);
            // Connection-rate runs open many short connections: let the client
            // reuse TIME_WAIT ports and use the whole port range.
            crate::sysctls(
                &client.netns,
                &[
                    ("net.ipv4.tcp_tw_reuse", "1"),
                    ("net.ipv4.ip_local_port_range", "1024 65000"),
                ],
            )
            .map_err(anyhow::Error::msg)?;
            clusters.push(Cluster {
                variant,
                a,
                b,
                pod_cidr_b,
                client,
                perf_same,
                perf_cross,
                rate_pods,
                agent: None,
                agent_b: None,
                servers: Vec::new(),
                base_loaded: Vec::new(),
            });
        }
        let outside = if external {
            let o = topo.add_outside("out", OUTSIDE_CLIENT);
            // The direct path: node b of the direct cluster routes its pod /24.
            if let Some(c) = clusters.iter().find(|c| c.variant == Variant::Direct) {
                crate::ip_in(&o.netns, &["route", "add", &c.pod_cidr_b, "via", &c.b.underlay.to_string()])
                    .map_err(anyhow::Error::msg)?;
            }
            Some(o)
        } else {
            None
        };
        let mut lab = Lab {
            topo,
            clusters,
            outside,
            proxy_bin,
            probe_bin,
            scratch_n: 0,
        };
        lab.start_servers(needs)?;
        if variants.contains(&Variant::Sluice) {
            let i = lab.index(Variant::Sluice).expect("just built");
            let (a, b) = (lab.clusters[i].a.clone(), lab.clusters[i].b.clone());
            if external {
                let agent = lab.start_agent_external(&a, "sluice")?;
                lab.clusters[i].agent = Some(agent);
                let agent_b = lab.start_agent_external(&b, "sluice-b")?;
                lab.clusters[i].agent_b = Some(agent_b);
            } else {
                let agent = lab.start_agent(&a, "sluice")?;
                lab.clusters[i].agent = Some(agent);
            }
        }
        Ok(lab)
    }

    pub fn index(&self, v: Variant) -> Option<usize> {
        self.clusters.iter().position(|c| c.variant == v)
    }

    pub fn cluster(&self, v: Variant) -> &Cluster {
        &self.clusters[self.index(v).expect("variant built")]
    }

    fn start_servers(&mut self, needs: Needs) -> anyhow::Result<()> {
        for i in 0..self.clusters.len() {
            let mut servers = Vec::new();
            let c = &self.clusters[i];
            if needs.perf {
                // direct's pods also serve the A/A half of head-to-head runs
                // (a second iperf3 server: one serves one test at a time).
                let ports: &[u16] = if c.variant == Variant::Direct { &[IPERF_PORT, IPERF_PORT_AA] } else { &[IPERF_PORT] };
                for pod in [c.perf_same.as_ref(), c.perf_cross.as_ref()].into_iter().flatten() {
                    for port in ports {
                        let cmd = pinned(1, Path::new("iperf3"), &["-s", "-p", &port.to_string(), "--forceflush"]);
                        let p = self.topo.spawn_in_pod(pod, cmd);
                        ensure!(
                            p.wait_for_stdout("listening", Duration::from_secs(10)),
                            "iperf3 server in {} did not start: {}",
                            pod.netns,
                            p.stderr()
                        );
                        servers.push(p);
                    }
                }
            }
            for pod in &c.rate_pods {
                let cmd = pinned(
                    1,
                    &self.probe_bin,
                    &[
                        "serve",
                        "--id",
                        &pod.name,
                        "--tcp",
                        &RATE_TCP_PORT.to_string(),
                        "--udp",
                        &RATE_UDP_PORT.to_string(),
                        "--bind",
                        &pod.ip.to_string(),
                        "--max-lifetime-s",
                        "3600",
                    ],
                );
                let p = self.topo.spawn_in_pod(pod, cmd);
                ensure!(
                    p.wait_for_stdout("ready", Duration::from_secs(10)),
                    "probe server in {} did not start: {}",
                    pod.netns,
                    p.stderr()
                );
                servers.push(p);
            }
            self.clusters[i].servers = servers;
        }
        Ok(())
    }

    /// A fresh scratch directory.
    pub fn scratch(&mut self, name: &str) -> PathBuf {
        self.scratch_n += 1;
        self.topo.scratch(&format!("{name}-{}", self.scratch_n))
    }

    /// Starts sluice-proxy on `node` following an empty manifest directory.
    pub fn start_agent(&mut self, node: &Node, name: &str) -> anyhow::Result<Agent> {
        let manifests = self.scratch(&format!("manifests-{name}"));
        self.start_agent_with(node, name, "--manifests", &manifests, false)
    }

    /// [`Lab::start_agent`] that also serves NodePorts at tc on the node's
    /// `eth0` (its one underlay address).
    pub fn start_agent_external(&mut self, node: &Node, name: &str) -> anyhow::Result<Agent> {
        let manifests = self.scratch(&format!("manifests-{name}"));
        self.start_agent_with(node, name, "--manifests", &manifests, true)
    }

    /// Starts sluice-proxy on `node` following the API server of `kubeconfig`.
    pub fn start_agent_kube(&mut self, node: &Node, name: &str, kubeconfig: &Path) -> anyhow::Result<Agent> {
        self.start_agent_with(node, name, "--kubeconfig", kubeconfig, false)
    }

    fn start_agent_with(&mut self, node: &Node, name: &str, flag: &str, source: &Path, external: bool) -> anyhow::Result<Agent> {
        let manifests = source.to_path_buf();
        let bpffs = self.topo.bpffs().join(name);
        fs::create_dir_all(&bpffs).with_context(|| format!("mkdir {}", bpffs.display()))?;
        // SLUICE_BENCH_AGENT_WRAP="heaptrack -o /tmp/agent" runs the agent
        // under a profiler (its figures then include the wrapper's cost).
        let wrap = std::env::var("SLUICE_BENCH_AGENT_WRAP").unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let mut cmd = match wrap.next() {
            Some(tool) => {
                let mut c = Command::new(tool);
                c.args(wrap).arg(&self.proxy_bin);
                c
            }
            None => Command::new(&self.proxy_bin),
        };
        cmd.arg("run")
            .arg(flag)
            .arg(&manifests)
            .arg("--node-name")
            .arg(&node.name)
            .arg("--cgroup")
            .arg(&node.cgroup)
            .arg("--bpffs")
            .arg(&bpffs)
            // No periodic full resync in the middle of a measurement.
            .args(["--resync-secs", "86400"])
            // Extra agent flags for experiments, e.g. a smaller map.
            .args(std::env::var("SLUICE_BENCH_AGENT_ARGS").unwrap_or_default().split_whitespace())
            .env("RUST_LOG", "info");
        if external {
            cmd.args(["--external-interfaces", "eth0"]);
        }
        let proc = self.topo.spawn_in_node(node, cmd);
        ensure!(
            proc.wait_for_stderr("sluice-proxy running", Duration::from_secs(30)),
            "sluice-proxy did not start on {}: {}",
            node.name,
            proc.stderr()
        );
        let mark = proc.stderr().len();
        Ok(Agent {
            proc,
            manifests,
            bpffs,
            mark,
            node_ips: usize::from(external),
        })
    }

    /// Programs `services` into cluster `v` (the whole set replaces the previous one).
    pub fn program(&mut self, v: Variant, services: &[ServiceSpec], both_nodes: bool) -> anyhow::Result<()> {
        let i = self.index(v).context("variant not built")?;
        let limit = Duration::from_secs(300);
        match v {
            Variant::Direct => {}
            Variant::Sluice => {
                let c = &mut self.clusters[i];
                ensure!(c.agent.is_some(), "no agent");
                for agent in [c.agent.as_mut(), c.agent_b.as_mut()].into_iter().flatten() {
                    agent.replace_services(services)?;
                }
                for agent in [c.agent.as_mut(), c.agent_b.as_mut()].into_iter().flatten() {
                    let frontends = services.iter().map(|s| s.frontends_on(agent.node_ips)).sum();
                    agent.wait_synced(frontends, limit)?;
                }
            }
            Variant::Iptables => {
                let text = workload::iptables_ruleset(services, CLUSTER_CIDR);
                let file = self.scratch("ipt").join("rules.txt");
                fs::write(&file, text)?;
                let nodes = self.nodes(i, both_nodes);
                for ns in nodes {
                    self.iptables_base(i, &ns)?;
                    let mut cmd = Command::new(IPTABLES_RESTORE);
                    cmd.arg("--noflush").arg(&file);
                    run_ok_in_netns(&ns, cmd, limit)?;
                }
            }
            Variant::Nftables => {
                // Batches of 500 Services: the same rules in seconds instead
                // of minutes (see workload::nft_ruleset_batches).
                let mut files = Vec::new();
                for (k, batch) in workload::nft_ruleset_batches(services, CLUSTER_CIDR, 500).into_iter().enumerate() {
                    let text = if k == 0 { nft_reset() + &batch } else { batch };
                    let file = self.scratch("nft").join(format!("rules-{k}.nft"));
                    fs::write(&file, text)?;
                    files.push(file);
                }
                for ns in self.nodes(i, both_nodes) {
                    for file in &files {
                        let mut cmd = Command::new("nft");
                        cmd.arg("-f").arg(file);
                        run_ok_in_netns(&ns, cmd, limit)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn nodes(&self, i: usize, both: bool) -> Vec<String> {
        let c = &self.clusters[i];
        if both {
            vec![c.a.netns.clone(), c.b.netns.clone()]
        } else {
            vec![c.a.netns.clone()]
        }
    }

    fn iptables_base(&mut self, i: usize, netns: &str) -> anyhow::Result<()> {
        if self.clusters[i].base_loaded.iter().any(|n| n == netns) {
            return Ok(());
        }
        load_iptables_base(netns)?;
        self.clusters[i].base_loaded.push(netns.to_string());
        Ok(())
    }

    /// Empties conntrack in the cluster's node namespaces (between rate runs,
    /// so no variant inherits another run's entries).
    pub fn flush_conntrack(&self, v: Variant) {
        let c = self.cluster(v);
        for ns in [&c.a.netns, &c.b.netns] {
            let mut cmd = Command::new("conntrack");
            cmd.arg("-F");
            let _ = timed_in_netns(ns, cmd, Duration::from_secs(10));
        }
    }

    /// Runs a command in cluster `v`'s client pod (node a's cgroup) pinned to CPU 0.
    pub fn run_client(&self, v: Variant, program: &Path, args: &[&str], timeout: Duration) -> Output {
        let c = self.cluster(v);
        self.topo.run_in_pod(&c.client, pinned(0, program, args), timeout)
    }

    /// Runs a command in the outside client ([`Lab::new_external`]) pinned to CPU 0.
    pub fn run_outside(&self, program: &Path, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        let o = self.outside.as_ref().context("no outside client: build the lab with Lab::new_external")?;
        Ok(self.topo.run_in_outside(o, pinned(0, program, args), timeout))
    }

    /// Where the outside client sends to reach cluster `v`'s node-b iperf3
    /// pod: node a's address and the NodePort, or for `direct` the pod
    /// itself (routed via node b).
    pub fn nodeport_target(&self, v: Variant) -> anyhow::Result<(Ipv4Addr, u16)> {
        let c = self.cluster(v);
        Ok(match v {
            Variant::Direct => (c.perf_cross.as_ref().context("perf pod")?.ip, IPERF_PORT),
            _ => (c.a.underlay, PERF_NODE_PORT),
        })
    }
}

/// Loads the builtin-chain jumps of kube-proxy's iptables mode into `netns`.
pub fn load_iptables_base(netns: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new(IPTABLES_RESTORE);
    cmd.arg("--noflush");
    let text = workload::iptables_base();
    let dir = std::env::temp_dir();
    let file = dir.join(format!("{netns}-ipt-base.txt"));
    fs::File::create(&file)?.write_all(text.as_bytes())?;
    cmd.arg(&file);
    let r = run_ok_in_netns(netns, cmd, Duration::from_secs(60));
    let _ = fs::remove_file(&file);
    r.map(|_| ())
}

/// An `nft -f` prefix that removes kube-proxy's table if present (nft 1.0.6
/// has no `destroy`; adding first makes the delete always succeed).
pub fn nft_reset() -> String {
    "add table ip kube-proxy\ndelete table ip kube-proxy\n".to_string()
}

impl Agent {
    /// Makes the manifest directory hold exactly `services` (see
    /// [`workload::manifest_files`]; written atomically via a hidden temporary file and rename).
    pub fn replace_services(&mut self, services: &[ServiceSpec]) -> anyhow::Result<()> {
        let files = workload::manifest_files(services);
        let wanted: std::collections::HashSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        for e in fs::read_dir(&self.manifests)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !wanted.contains(name.as_str()) {
                fs::remove_file(e.path())?;
            }
        }
        for (name, text) in &files {
            self.write_file(name, text)?;
        }
        Ok(())
    }

    pub fn write_file(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.manifests.join(name))?;
        Ok(())
    }

    /// Forgets the log written so far; `wait_synced` only looks at what follows.
    pub fn mark(&mut self) {
        self.mark = self.proc.stderr().len();
    }

    /// Waits for a "dataplane synced" line with `frontends=N` after the mark;
    /// returns the instant it was seen and the sum of `micros` of every synced
    /// line since the mark (the agent's own time for the change).
    pub fn wait_synced(&mut self, frontends: usize, limit: Duration) -> anyhow::Result<(Instant, u64)> {
        let deadline = Instant::now() + limit;
        let want = format!("frontends={frontends} ");
        loop {
            let log = self.proc.stderr();
            let new = log.get(self.mark..).unwrap_or("");
            if let Some(pos) = new
                .lines()
                .position(|l| l.contains("dataplane synced") && l.contains(&want))
            {
                let seen = Instant::now();
                let lines: Vec<&str> = new.lines().take(pos + 1).collect();
                let micros = lines
                    .iter()
                    .filter(|l| l.contains("dataplane synced"))
                    .filter_map(|l| field(l, "micros"))
                    .sum();
                let consumed: usize = lines.iter().map(|l| l.len() + 1).sum();
                self.mark += consumed.min(new.len());
                return Ok((seen, micros));
            }
            if let Some(st) = self.proc.try_wait() {
                bail!("sluice-proxy exited ({st}): {}", tail(&log));
            }
            if Instant::now() >= deadline {
                bail!(
                    "sluice-proxy did not report frontends={frontends} within {limit:?}; log since mark: {}",
                    tail(new)
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The agent's resident set size in MiB (VmRSS).
    pub fn rss_mib(&self) -> Option<f64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.proc.pid())).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }
}

/// `key=value` from a tracing line.
fn field(line: &str, key: &str) -> Option<u64> {
    let pat = format!("{key}=");
    let start = line.find(&pat)? + pat.len();
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn tail(s: &str) -> String {
    let start = s.len().saturating_sub(3000);
    let start = (start..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
    s[start..].to_string()
}

/// The measured Services: the iperf3 targets (one endpoint each) and the
/// connection-rate target (TCP and UDP, 10 real endpoints).
pub fn perf_services(c: &Cluster) -> Vec<ServiceSpec> {
    let mut v = Vec::new();
    if let Some(p) = &c.perf_same {
        v.push(ServiceSpec::tcp("perf-same", VIP_PERF_SAME, IPERF_PORT, IPERF_PORT, vec![p.ip]));
    }
    if let Some(p) = &c.perf_cross {
        v.push(ServiceSpec::tcp("perf-cross", VIP_PERF_CROSS, IPERF_PORT, IPERF_PORT, vec![p.ip]));
    }
    v
}

/// The NodePort Service in front of the node-b iperf3 pod, when there is one.
pub fn nodeport_service(c: &Cluster) -> Option<ServiceSpec> {
    let p = c.perf_cross.as_ref()?;
    Some(ServiceSpec::tcp("perf-nodeport", VIP_PERF_NODEPORT, IPERF_PORT, IPERF_PORT, vec![p.ip]).with_node_port(PERF_NODE_PORT))
}

pub fn rate_service(c: &Cluster) -> ServiceSpec {
    ServiceSpec {
        name: "rate".into(),
        vip: VIP_RATE,
        ports: vec![
            workload::PortSpec {
                name: "tcp".into(),
                proto: workload::Proto::Tcp,
                port: 80,
                target: RATE_TCP_PORT,
                node_port: None,
            },
            workload::PortSpec {
                name: "udp".into(),
                proto: workload::Proto::Udp,
                port: 81,
                target: RATE_UDP_PORT,
                node_port: None,
            },
        ],
        endpoints: c.rate_pods.iter().map(|p| p.ip).collect(),
    }
}
