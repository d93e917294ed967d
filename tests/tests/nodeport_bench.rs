//! Benchmark: iperf3 from an outside client through a NodePort on node a to
//! a pod on node b, against the same client reaching the pod's IP routed
//! directly (via node b), in one run. Ignored by default (it takes about a
//! minute); `cargo xtask bench` runs it with
//! `cargo test -p tests --test nodeport_bench -- --ignored --nocapture`.
//!
//! Method (ENVIRONMENT.md): client pinned to CPU 0, server to CPU 1, the two
//! variants in alternating back-to-back pairs, the median of the per-pair
//! ratios, and an A/A run (direct vs direct) beside it for the noise floor.
//! Knobs: `SLUICE_BENCH_PAIRS` (default 7), `SLUICE_BENCH_SECS` (default 3,
//! at most 10). Writes `target/bench/nodeport.json` when
//! `SLUICE_BENCH_OUT` names a file.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tests::{require_root, workspace_bin, Topology};

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const POD: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// One iperf3 run from the outside client; bits per second received.
fn iperf(topo: &Topology, o: &tests::Outside, host: &str, port: u16, secs: u64) -> f64 {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "iperf3", "-c", host, "-p", &port.to_string(), "-t", &secs.to_string(), "-J"]);
    let out = topo.run_in_outside(o, cmd, Duration::from_secs(secs + 20));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("iperf3 to {host}:{port}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr))
    });
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    assert!(bps > 0.0, "iperf3 to {host}:{port} moved nothing: {}", v["error"]);
    bps
}

/// The measurement: returns the JSON report (also printed).
fn nodeport_vs_direct(pairs: u64, secs: u64) -> Value {
    let secs = secs.clamp(1, 10);
    let mut topo = Topology::new();
    let a = topo.add_node("a", NODE_A);
    let b = topo.add_node("b", NODE_B);
    let pod = topo.add_pod(&b, "srv", POD, None);
    topo.route_pod_cidrs(&[(&a, "198.18.1.0/24", None), (&b, "198.18.2.0/24", None)]);
    let out = topo.add_outside("cl", CLIENT);
    // The direct path: the outside client routes the pod CIDR to node b.
    tests::ip_in(&out.netns, &["route", "add", "198.18.2.0/24", "via", &NODE_B.to_string()]).expect("route");

    let mut server = Command::new("taskset");
    server.args(["-c", "1", "iperf3", "-s", "-p", "5201"]);
    let _server = topo.spawn_in_pod(&pod, server);
    std::thread::sleep(Duration::from_millis(300));

    let manifests = topo.scratch("manifests");
    std::fs::write(
        manifests.join("iperf.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: iperf, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 198.19.0.52\n  ports:\n  - {name: tcp, port: 5201, targetPort: 5201, nodePort: 30520, protocol: TCP}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: iperf-1, namespace: default, labels: {kubernetes.io/service-name: iperf}}\naddressType: IPv4\nports:\n- {name: tcp, port: 5201, protocol: TCP}\nendpoints:\n- {addresses: [198.18.2.10], nodeName: b, conditions: {ready: true}}\n",
    )
    .expect("manifest");
    let bpffs = topo.bpffs();
    let mut agents = Vec::new();
    for node in [&a, &b] {
        let mut cmd = Command::new(workspace_bin("sluice-proxy"));
        cmd.arg("run")
            .arg("--manifests")
            .arg(&manifests)
            .args(["--node-name", &node.name])
            .arg("--cgroup")
            .arg(&node.cgroup)
            .arg("--bpffs")
            .arg(bpffs.join(&node.name))
            .args(["--external-interfaces", "eth0"]);
        let agent = topo.spawn_in_netns(&node.netns, None, cmd);
        assert!(agent.wait_for_stderr("dataplane synced", Duration::from_secs(20)), "agent: {}", agent.stderr());
        agents.push(agent);
    }
    let node_a = NODE_A.to_string();
    let pod_ip = POD.to_string();
    // Warm-up (ARP, caches) of both paths.
    iperf(&topo, &out, &node_a, 30520, 1);
    iperf(&topo, &out, &pod_ip, 5201, 1);

    let mut ratios = Vec::new();
    let mut aa = Vec::new();
    let (mut np_all, mut direct_all) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        // Alternate which variant goes first, so drift hits both alike.
        let (np, direct) = if i % 2 == 0 {
            let np = iperf(&topo, &out, &node_a, 30520, secs);
            (np, iperf(&topo, &out, &pod_ip, 5201, secs))
        } else {
            let d = iperf(&topo, &out, &pod_ip, 5201, secs);
            (iperf(&topo, &out, &node_a, 30520, secs), d)
        };
        ratios.push(np / direct);
        np_all.push(np);
        direct_all.push(direct);
        let d1 = iperf(&topo, &out, &pod_ip, 5201, secs);
        let d2 = iperf(&topo, &out, &pod_ip, 5201, secs);
        aa.push(d2 / d1);
    }
    let report = json!({
        "benchmark": "nodeport_vs_direct",
        "pairs": pairs,
        "secs": secs,
        "nodeport_gbps_median": median(&mut np_all.clone()) / 1e9,
        "direct_gbps_median": median(&mut direct_all.clone()) / 1e9,
        "ratio_median": median(&mut ratios.clone()),
        "ratios": ratios,
        "aa_ratio_median": median(&mut aa.clone()),
        "aa_ratios": aa,
        "aa_spread": aa.iter().cloned().fold(f64::MIN, f64::max) - aa.iter().cloned().fold(f64::MAX, f64::min),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    if let Some(path) = std::env::var_os("SLUICE_BENCH_OUT") {
        let _ = std::fs::write(path, report.to_string());
    }
    report
}

#[test]
#[ignore = "benchmark: run with --ignored (cargo xtask bench)"]
fn nodeport_to_remote_pod_vs_direct_pod_ip() {
    if !require_root() {
        return;
    }
    let report = nodeport_vs_direct(env_u64("SLUICE_BENCH_PAIRS", 7), env_u64("SLUICE_BENCH_SECS", 3));
    let r = report["ratio_median"].as_f64().unwrap_or(0.0);
    eprintln!("NodePort/direct median ratio {r:.3} (A/A {:.3})", report["aa_ratio_median"].as_f64().unwrap_or(0.0));
}
