//! `cargo xtask demo`: the whole product on a two-node cluster in network
//! namespaces. `sluice-cni daemon` joins the nodes (VXLAN, or host-gw with
//! `--backend host-gw`); pods are created by running the CNI conflist the
//! daemon wrote exactly as a container runtime does (sluice-cni, then the
//! reference portmap plugin, CNI_* variables, config on stdin, prevResult
//! chained); `sluice-proxy` runs on both nodes (ClusterIP at the socket,
//! NodePort at tc, reached from an outside namespace); `sluice-dns` answers
//! the pods through their resolv.conf; iperf3 runs through the ClusterIP head
//! to head against the pod IP. Everything it creates is removed when it ends.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tests::{
    cni::{invoke, PodNetns},
    proxy::{count, probe_json, serve, write_manifest, Agent},
    workspace_bin, Node, Pod, Proc, Topology,
};

const PAIRS: usize = 5;
const SECONDS: u32 = 3;
const T: Duration = Duration::from_secs(20);
const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const WEB_VIP: &str = "198.19.0.10";
const IPERF_VIP: &str = "198.19.0.11";
const DNS_VIP: &str = "198.19.0.53";
const NODE_PORT: u16 = 30080;
/// The reference plugins (Debian's containernetworking-plugins).
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn step(msg: &str) {
    println!("==> {msg}");
}

fn node_yaml(name: &str, ip: Ipv4Addr, cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDR: {cidr}, podCIDRs: [{cidr}]}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}, {{type: Hostname, address: {name}}}]}}\n"
    )
}

/// The Services of the demo and their EndpointSlices, with the addresses the
/// CNI plugin's IPAM gave the pods.
fn services_yaml(web: &[&Pod], iperf: &Pod, dns_node: &Node) -> String {
    let mut s = String::new();
    s.push_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system}\n---\n");
    s.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: {WEB_VIP}\n  clusterIPs: [{WEB_VIP}]\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, nodePort: {NODE_PORT}, protocol: TCP}}\n---\n"
    ));
    s.push_str("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\nendpoints:\n");
    for p in web {
        s.push_str(&format!(
            "- {{addresses: [{}], nodeName: {}, conditions: {{ready: true, serving: true, terminating: false}}, targetRef: {{kind: Pod, namespace: default, name: {}}}}}\n",
            p.ip, p.node, p.name
        ));
    }
    s.push_str("---\n");
    s.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: iperf, namespace: default}}\nspec:\n  clusterIP: {IPERF_VIP}\n  ports:\n  - {{name: iperf, port: 5201, targetPort: 5201, protocol: TCP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: iperf-1, namespace: default, labels: {{kubernetes.io/service-name: iperf}}}}\naddressType: IPv4\nports:\n- {{name: iperf, port: 5201, protocol: TCP}}\nendpoints:\n- {{addresses: [{}], nodeName: {}, conditions: {{ready: true}}}}\n---\n",
        iperf.ip, iperf.node
    ));
    // sluice-dns runs on node-a's host network, as a hostNetwork Deployment would.
    s.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: kube-dns, namespace: kube-system}}\nspec:\n  clusterIP: {DNS_VIP}\n  ports:\n  - {{name: dns, port: 53, targetPort: 53, protocol: UDP}}\n  - {{name: dns-tcp, port: 53, targetPort: 53, protocol: TCP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: kube-dns-1, namespace: kube-system, labels: {{kubernetes.io/service-name: kube-dns}}}}\naddressType: IPv4\nports:\n- {{name: dns, port: 53, protocol: UDP}}\n- {{name: dns-tcp, port: 53, protocol: TCP}}\nendpoints:\n- {{addresses: [{}], nodeName: {}, conditions: {{ready: true}}}}\n---\n",
        dns_node.underlay, dns_node.name
    ));
    s
}

/// A node's sluice-cni daemon and the files it shares with the plugin.
struct CniNode {
    node: Node,
    conf_dir: PathBuf,
    daemon: Proc,
}

fn start_cni_daemon(topo: &Topology, node: Node, backend: &str, manifests: &Path) -> CniNode {
    let conf_dir = topo.scratch(&format!("{}-net.d", node.name));
    let state_dir = topo.scratch(&format!("{}-run", node.name));
    let ipam_dir = topo.scratch(&format!("{}-ipam", node.name));
    let mut cmd = Command::new(workspace_bin("sluice-cni"));
    cmd.args([
        "daemon",
        "--backend",
        backend,
        "--node-name",
        &node.name,
        "--cluster-cidr",
        "198.18.0.0/16",
    ])
    // Debian 12's portmap (chained after sluice-cni) knows CNI 1.0.0 at most.
    .args(["--cni-version", "1.0.0"])
    .args(
        std::env::var("DEMO_DAEMON_EXTRA")
            .ok()
            .as_deref()
            .map(str::split_whitespace)
            .into_iter()
            .flatten(),
    )
    .arg("--manifests")
    .arg(manifests)
    .arg("--cni-conf-dir")
    .arg(&conf_dir)
    .arg("--state-dir")
    .arg(&state_dir)
    .arg("--ipam-dir")
    .arg(&ipam_dir)
    .env("RUST_LOG", "info");
    let daemon = topo.spawn_in_node(&node, cmd);
    CniNode {
        node,
        conf_dir,
        daemon,
    }
}

impl CniNode {
    fn conflist(&self) -> Result<Value, String> {
        let path = self.conf_dir.join("10-sluice.conflist");
        let deadline = Instant::now() + T;
        loop {
            if let Ok(bytes) = fs::read(&path) {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()));
            }
            if let Some(s) = self.daemon.try_wait() {
                return Err(format!(
                    "sluice-cni daemon on {} exited ({s}): {}",
                    self.node.name,
                    self.daemon.stderr()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sluice-cni daemon on {} wrote no conflist within {T:?}: {}",
                    self.node.name,
                    self.daemon.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs every plugin of `conflist` for one attachment, as a container
/// runtime does: ADD in order with each result passed on as `prevResult`,
/// DEL in reverse order. Returns the last plugin's result.
fn run_conflist(
    node: &Node,
    conflist: &Value,
    command: &str,
    container: &str,
    netns: &str,
) -> Result<Value, String> {
    let plugins = conflist["plugins"]
        .as_array()
        .ok_or("conflist without plugins")?;
    let cni_path = format!(
        "{}:{REFERENCE_PLUGINS}",
        workspace_bin("sluice-cni").parent().unwrap().display()
    );
    let netns_path = format!("/run/netns/{netns}");
    let order: Vec<&Value> = if command == "DEL" {
        plugins.iter().rev().collect()
    } else {
        plugins.iter().collect()
    };
    let mut prev: Option<Value> = None;
    for plugin in order {
        let ty = plugin["type"].as_str().ok_or("plugin without type")?;
        let mut conf = plugin.clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        if let Some(p) = &prev {
            conf["prevResult"] = p.clone();
        }
        let bin = if ty == "sluice-cni" {
            workspace_bin("sluice-cni")
        } else {
            Path::new(REFERENCE_PLUGINS).join(ty)
        };
        let out = invoke(
            &bin,
            &node.netns,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", &netns_path),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &cni_path),
            ],
            &conf.to_string(),
            T,
        );
        if !out.ok {
            return Err(format!(
                "{command} {container}: plugin {ty} failed: {} {}",
                out.stdout, out.stderr
            ));
        }
        if command == "ADD" {
            prev = Some(out.json());
        }
    }
    Ok(prev.unwrap_or(Value::Null))
}

/// A pod made through the CNI plugin: its sandbox and its address.
fn cni_pod(
    topo: &Topology,
    sandboxes: &mut PodNetns,
    cni: &CniNode,
    name: &str,
) -> Result<Pod, String> {
    let netns = sandboxes.add(&format!("{}-pod-{name}", topo.id()));
    let result = run_conflist(&cni.node, &cni.conflist()?, "ADD", name, &netns)?;
    let addr = result["ips"][0]["address"]
        .as_str()
        .ok_or_else(|| format!("ADD {name}: no address in {result}"))?;
    let ip: Ipv4Addr = addr
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("ADD {name}: address {addr}: {e}"))?;
    let host_veth = result["interfaces"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!(
        "    {name} on {}: {addr} (host side {host_veth})",
        cni.node.name
    );
    Ok(Pod {
        name: name.to_owned(),
        netns,
        ip,
        ip6: None,
        node: cni.node.name.clone(),
        node_netns: cni.node.netns.clone(),
        host_veth,
        cgroup: cni.node.cgroup.clone(),
    })
}

/// /etc/netns/<pod>/resolv.conf, which `ip netns exec` shows a process as
/// /etc/resolv.conf (the runtime's job for a pod); removed on drop.
struct ResolvConf(PathBuf);

impl ResolvConf {
    fn write(netns: &str) -> Result<Self, String> {
        let dir = PathBuf::from("/etc/netns").join(netns);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let text = format!("search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {DNS_VIP}\noptions ndots:5\n");
        fs::write(dir.join("resolv.conf"), text).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One iperf3 client run: (bits/s, or an error).
fn iperf_client(topo: &Topology, pod: &Pod, target: &str, port: u16) -> Proc {
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        "0",
        "iperf3",
        "-c",
        target,
        "-p",
        &port.to_string(),
        "-t",
        &SECONDS.to_string(),
        "-J",
    ]);
    topo.spawn_in_pod(pod, cmd)
}

fn iperf_result(p: &Proc, what: &str) -> Result<f64, String> {
    let out = p.wait_output(Duration::from_secs(u64::from(SECONDS) + 20));
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 {what}: no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| format!("iperf3 {what} failed: {}", v["error"]))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn backend_from_args() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let mut backend = "vxlan".to_owned();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--backend" => backend = args.next().ok_or("--backend needs vxlan or host-gw")?,
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: sluice-demo [--backend vxlan|host-gw])"
                ))
            }
        }
    }
    if backend != "vxlan" && backend != "host-gw" {
        return Err(format!("--backend {backend:?}: expected vxlan or host-gw"));
    }
    Ok(backend)
}

#[expect(
    clippy::too_many_lines,
    reason = "the demo reads as one script, step by step"
)]
fn run() -> Result<(), String> {
    let backend = backend_from_args()?;
    if unsafe { libc::geteuid() } != 0 {
        return Err("the demo builds network namespaces and needs root".into());
    }
    let started = Instant::now();
    step("building two nodes and an outside client in network namespaces (underlay 192.0.2.0/24, outside 203.0.113.0/24)");
    let mut topo = Topology::new();
    let a = topo.add_node("node-a", NODE_A);
    let b = topo.add_node("node-b", NODE_B);
    let outside = topo.add_outside("client", OUTSIDE);
    let manifests = topo.scratch("manifests");
    write_manifest(
        &manifests,
        "node-a.yaml",
        &node_yaml("node-a", NODE_A, "198.18.1.0/24"),
    );
    write_manifest(
        &manifests,
        "node-b.yaml",
        &node_yaml("node-b", NODE_B, "198.18.2.0/24"),
    );

    step(&format!("sluice-cni daemon on each node, --backend {backend}: pod subnets 198.18.1.0/24 and 198.18.2.0/24 from the Node objects"));
    let cni_a = start_cni_daemon(&topo, a.clone(), &backend, &manifests);
    let cni_b = start_cni_daemon(&topo, b.clone(), &backend, &manifests);
    cni_a.conflist()?;
    cni_b.conflist()?;

    step("pods created through the daemon's conflist exactly as a runtime runs it (CNI_* env, config on stdin)");
    let mut sandboxes = PodNetns::new();
    let client = cni_pod(&topo, &mut sandboxes, &cni_a, "client")?;
    let web1 = cni_pod(&topo, &mut sandboxes, &cni_a, "web-1")?;
    let web2 = cni_pod(&topo, &mut sandboxes, &cni_b, "web-2")?;
    let pods = [&client, &web1, &web2];

    step("backends: echo server on 8080 in web-1 (node-a) and web-2 (node-b); iperf3 servers on web-2");
    let _echo = [
        serve(&topo, &web1, "web-1", &[8080], &[]),
        serve(&topo, &web2, "web-2", &[8080], &[]),
    ];
    let mut iperf_servers = Vec::new();
    for port in ["5201", "5202"] {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "1", "iperf3", "-s", "-p", port]);
        iperf_servers.push(topo.spawn_in_pod(&web2, cmd));
    }

    write_manifest(
        &manifests,
        "services.yaml",
        &services_yaml(&[&web1, &web2], &web2, &a),
    );
    step("sluice-proxy on both nodes (--external-interfaces eth0 for the NodePort)");
    let agent_a = Agent::start(
        &mut topo,
        &a,
        &manifests,
        &["--external-interfaces", "eth0"],
    );
    let _agent_b = Agent::start(
        &mut topo,
        &b,
        &manifests,
        &["--external-interfaces", "eth0"],
    );
    let web_backends = [format!("{}:8080", web1.ip), format!("{}:8080", web2.ip)];
    let web_backends: Vec<&str> = web_backends.iter().map(String::as_str).collect();
    agent_a.wait_for(&format!("{WEB_VIP}:80/TCP"), &web_backends, T);
    let status = Command::new(workspace_bin("sluice-proxy"))
        .args(["status", "--bpffs"])
        .arg(&agent_a.bpffs)
        .output()
        .map_err(|e| e.to_string())?;
    print!("{}", String::from_utf8_lossy(&status.stdout));

    step("pod -> pod across nodes (client on node-a -> web-2 on node-b)");
    let mut ping = Command::new("ping");
    ping.args(["-c", "3", "-i", "0.2", "-W", "2", &web2.ip.to_string()]);
    let out = topo.run_in_pod(&client, ping, T);
    let cross = out.status.success();
    println!(
        "    ping {}: {}",
        web2.ip,
        if cross { "3 of 3 answered" } else { "FAILED" }
    );

    let mut dns_line = "sluice-dns: not built, skipped".to_owned();
    let dns_bin = std::env::var_os("SLUICE_DNS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .unwrap_or_default()
                .with_file_name("sluice-dns")
        });
    let mut _dns = None;
    let mut _resolv = Vec::new();
    if dns_bin.is_file() {
        step(&format!("sluice-dns on node-a's host network (192.0.2.1:53), Service kube-dns {DNS_VIP}; pods resolve through their resolv.conf"));
        let upstream = topo.scratch("dns").join("resolv.conf");
        // No upstream outside the demo: names outside the zone are refused rather than leaked.
        fs::write(&upstream, "nameserver 192.0.2.1\n").map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&dns_bin);
        cmd.arg("--manifests")
            .arg(&manifests)
            .args(["--listen", "192.0.2.1:53", "--upstream"])
            .arg(&upstream);
        _dns = Some(topo.spawn_in_node(&a, cmd));
        for p in pods {
            _resolv.push(ResolvConf::write(&p.netns)?);
        }
        let mut answer = String::new();
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            // `ip netns exec` re-enters the pod's namespace and shows its resolv.conf; the process stays in the node's cgroup.
            let mut dig = Command::new("ip");
            dig.args([
                "netns",
                "exec",
                &client.netns,
                "dig",
                "+search",
                "+short",
                "+time=1",
                "+tries=1",
                "web",
            ]);
            let out = topo.run_in_pod(&client, dig, T);
            answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if answer == WEB_VIP {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        dns_line =
            format!("`dig +search web` in the client pod (resolv.conf -> {DNS_VIP}): {answer:?}");
        println!("    {dns_line}");
    }

    step(&format!(
        "100 connections from the client pod to web.default ({WEB_VIP}:80)"
    ));
    let spread = probe_json(
        &topo,
        &client,
        &["tcp", &format!("{WEB_VIP}:80"), "--count", "100"],
        Duration::from_secs(30),
    );
    println!(
        "    ok {} | web-1 {} | web-2 {} | getpeername() showed {WEB_VIP}:80 {} times",
        spread["ok"],
        count(&spread, "by_id", "web-1"),
        count(&spread, "by_id", "web-2"),
        count(&spread, "peer_names", &format!("{WEB_VIP}:80"))
    );

    step(&format!(
        "100 connections from the outside client to NodePort {NODE_A}:{NODE_PORT}"
    ));
    let mut cmd = Command::new(workspace_bin("sluice-probe"));
    cmd.args([
        "tcp",
        &format!("{NODE_A}:{NODE_PORT}"),
        "--count",
        "100",
        "--timeout-ms",
        "500",
    ]);
    let out = topo.run_in_outside(&outside, cmd, Duration::from_secs(90));
    let nodeport: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        println!(
            "    probe: no JSON ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        json!({"ok": 0})
    });
    if nodeport["ok"] != 100 {
        println!("    probe said: {nodeport}");
        println!("    agent on node-a:\n{}", agent_a.proc.stderr());
    }
    println!(
        "    ok {} | web-1 (node-a, local) {} | web-2 (node-b, SNAT) {}",
        nodeport["ok"],
        count(&nodeport, "by_id", "web-1"),
        count(&nodeport, "by_id", "web-2")
    );

    step(&format!(
        "iperf3 head to head, {PAIRS} pairs of {SECONDS}s: client -> ClusterIP {IPERF_VIP}:5201 (-> web-2 on node-b) at the same time as client -> pod IP {}:5202",
        web2.ip
    ));
    let (mut vip, mut direct, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..PAIRS {
        let v = iperf_client(&topo, &client, IPERF_VIP, 5201);
        let d = iperf_client(&topo, &client, &web2.ip.to_string(), 5202);
        let (v, d) = (
            iperf_result(&v, "via ClusterIP")?,
            iperf_result(&d, "to pod IP")?,
        );
        println!(
            "    pair {}: ClusterIP {:.2} Gbit/s, pod IP {:.2} Gbit/s",
            i + 1,
            v / 1e9,
            d / 1e9
        );
        vip.push(v);
        direct.push(d);
        ratios.push(v / d);
    }
    let (v, d, r) = (median(&mut vip), median(&mut direct), median(&mut ratios));

    step("removing the pods through the conflist (DEL, reverse order), as the runtime does");
    let mut deleted = 0;
    for (p, cni) in [(&client, &cni_a), (&web1, &cni_a), (&web2, &cni_b)] {
        if run_conflist(&cni.node, &cni.conflist()?, "DEL", &p.name, &p.netns).is_ok() {
            deleted += 1;
        }
    }

    println!();
    println!("Summary ({:.0} s)", started.elapsed().as_secs_f64());
    println!("  nodes            node-a, node-b joined by sluice-cni daemon ({backend})");
    println!("  pods             3 made by the CNI plugin chain (sluice-cni + portmap), {deleted} of 3 removed by DEL");
    println!(
        "  pod -> pod       across nodes: {}",
        if cross { "ok" } else { "FAILED" }
    );
    println!(
        "  ClusterIP        {} of 100 connections ok, spread web-1/web-2 = {}/{}",
        spread["ok"],
        count(&spread, "by_id", "web-1"),
        count(&spread, "by_id", "web-2")
    );
    println!(
        "  NodePort         {} of 100 from outside ok, web-1/web-2 = {}/{}",
        nodeport["ok"],
        count(&nodeport, "by_id", "web-1"),
        count(&nodeport, "by_id", "web-2")
    );
    println!("  dns              {dns_line}");
    println!(
        "  iperf3 ClusterIP {:.2} Gbit/s (median of {PAIRS}, run beside the direct one)",
        v / 1e9
    );
    println!(
        "  iperf3 pod IP    {:.2} Gbit/s (median of {PAIRS})",
        d / 1e9
    );
    println!("  head to head     ClusterIP / pod IP {r:.3} (median of per-pair ratios; the socket is connected to the pod, so 1.0 is the aim)");
    step("cleaning up (namespaces, cgroups, pinned maps)");
    drop(iperf_servers);
    drop(agent_a);
    drop(topo);
    let ok = cross && spread["ok"] == 100 && nodeport["ok"] == 100 && deleted == 3;
    if ok {
        Ok(())
    } else {
        Err("some step above failed (see its line)".into())
    }
}
