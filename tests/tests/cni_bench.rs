//! CNI ADD latency: sluice-cni against Debian's reference bridge + host-local
//! (needs root; ignored by default, it is a benchmark, not a test).
//!
//! ```text
//! SLUICE_CNI_BIN=target/release/sluice-cni SLUICE_CNI_BENCH_N=100 \
//!   cargo test -p tests --test cni_bench -- --ignored --nocapture
//! ```
//!
//! Each variant does N ADDs into N fresh pod namespaces of one node
//! namespace, alternating the variants pod by pod so both see the same
//! machine noise; only the plugin process's wall time is measured (spawn to
//! exit, as a runtime sees it). Prints and writes
//! `target/bench/cni_add.json` (p50, p99, mean, ADDs per second).

mod cni_common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use cni_common::*;
use serde_json::{json, Value};
use tests::{require_root, Topology};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut d: Vec<Duration>) -> Value {
    d.sort();
    let total: Duration = d.iter().sum();
    let ms = |x: Duration| (x.as_secs_f64() * 1e6).round() / 1e3;
    json!({
        "n": d.len(),
        "p50_ms": ms(percentile(&d, 0.5)),
        "p99_ms": ms(percentile(&d, 0.99)),
        "mean_ms": ms(total / d.len() as u32),
        "adds_per_s": (d.len() as f64 / total.as_secs_f64() * 10.0).round() / 10.0,
    })
}

#[test]
#[ignore = "benchmark: run with --ignored"]
fn cni_add_latency_against_reference_bridge_host_local() {
    if !require_root() {
        return;
    }
    let n: usize = std::env::var("SLUICE_CNI_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(50).clamp(5, 250);
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let ours = static_conf("1.0.0", &topo.scratch("ipam"), &["198.18.1.0/24"]);
    let mut ours = ours;
    ours["logLevel"] = json!("warn");
    let reference = json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cni0", "isGateway": true, "mtu": 1450,
        "ipam": {"type": "host-local", "dataDir": topo.scratch("host-local"), "ranges": [[{"subnet": "198.18.2.0/24"}]]},
    });
    let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
    let (mut t_ours, mut t_ref) = (Vec::new(), Vec::new());
    for i in 0..n {
        for variant in [0, 1] {
            let netns = ns.add(&format!("{}-{variant}-{i}", topo.id()));
            let a = Attach { node: &node, container: format!("b{variant}-{i}"), netns, ifname: "eth0".into() };
            let start = Instant::now();
            let out = if variant == 0 { a.run("ADD", &ours) } else { a.run_plugin(&bridge, "ADD", &reference) };
            let took = start.elapsed();
            assert!(out.ok, "ADD variant {variant} #{i} failed: {out:?}");
            if variant == 0 { t_ours.push(took) } else { t_ref.push(took) }
        }
    }
    let (s_ours, s_ref) = (summary(t_ours), summary(t_ref));
    let ratio = s_ours["adds_per_s"].as_f64().unwrap() / s_ref["adds_per_s"].as_f64().unwrap();
    let report = json!({
        "what": "CNI ADD wall time per invocation (nsenter + plugin), one node namespace, fresh pod namespace per ADD",
        "sluice_cni": s_ours,
        "reference_bridge_host_local": s_ref,
        "adds_per_s_ratio": (ratio * 100.0).round() / 100.0,
        "binary": cni_bin(),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if std::fs::create_dir_all(&out_dir).is_ok() {
        let _ = std::fs::write(out_dir.join("cni_add.json"), serde_json::to_vec_pretty(&report).unwrap());
    }
}
