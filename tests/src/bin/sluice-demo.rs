//! `cargo xtask demo`: a two-node cluster in network namespaces, pods, a
//! Service followed by `sluice-proxy` from bundled example manifests, DNS by
//! `sluice-dns` when it is built, and iperf3 through the ClusterIP against the
//! pod IP directly. Everything it creates is removed when it ends.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, ExitCode},
    time::Duration,
};

use tests::{
    proxy::{count, probe_json, serve, write_manifest, Agent},
    workspace_bin, Pod, Topology,
};

/// Manifests the demo ships with (proxy-user/deploy/examples).
const EXAMPLE: &str = include_str!("../../../proxy-user/deploy/examples/demo.yaml");

const PAIRS: usize = 5;
const SECONDS: u32 = 3;

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

/// iperf3 from `client` to `target` for SECONDS, client on CPU 0 and server on CPU 1.
fn iperf(topo: &Topology, client: &Pod, target: &str) -> Result<f64, String> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "iperf3", "-c", target, "-p", "5201", "-t", &SECONDS.to_string(), "-J"]);
    let out = topo.run_in_pod(client, cmd, Duration::from_secs(u64::from(SECONDS) + 20));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("iperf3 to {target}: no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| format!("iperf3 to {target} failed: {}", v["error"]))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run() -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("the demo builds network namespaces and needs root".into());
    }
    step("building a two-node cluster in network namespaces (underlay 192.0.2.0/24, pods 198.18.0.0/16)");
    let mut topo = Topology::new();
    let a = topo.add_node("node-a", Ipv4Addr::new(192, 0, 2, 1));
    let b = topo.add_node("node-b", Ipv4Addr::new(192, 0, 2, 2));
    let client = topo.add_pod(&a, "client", Ipv4Addr::new(198, 18, 1, 5), None);
    let web1 = topo.add_pod(&a, "web-1", Ipv4Addr::new(198, 18, 1, 10), None);
    let web2 = topo.add_pod(&b, "web-2", Ipv4Addr::new(198, 18, 2, 10), None);
    topo.route_pod_cidrs(&[(&a, "198.18.1.0/24", None), (&b, "198.18.2.0/24", None)]);

    step("starting backend pods web-1 (node-a) and web-2 (node-b): echo on 8080, iperf3 server on 5201");
    let _echo = [serve(&topo, &web1, "web-1", &[8080], &[8081]), serve(&topo, &web2, "web-2", &[8080], &[8081])];
    let mut iperf_servers = Vec::new();
    for pod in [&web1, &web2] {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "1", "iperf3", "-s", "-p", "5201"]);
        iperf_servers.push(topo.spawn_in_pod(pod, cmd));
    }

    let manifests: PathBuf = topo.scratch("manifests");
    write_manifest(&manifests, "demo.yaml", EXAMPLE);
    step("starting sluice-proxy on node-a with the bundled manifests (proxy-user/deploy/examples/demo.yaml)");
    let agent = Agent::start(&mut topo, &a, &manifests, &[]);
    agent.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"], Duration::from_secs(15));
    let status = Command::new(workspace_bin("sluice-proxy"))
        .args(["status", "--bpffs"])
        .arg(&agent.bpffs)
        .output()
        .map_err(|e| e.to_string())?;
    print!("{}", String::from_utf8_lossy(&status.stdout));

    let mut dns_line = "sluice-dns: not built, skipped".to_owned();
    let dns_bin = std::env::var_os("SLUICE_DNS_BIN").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe().unwrap_or_default().with_file_name("sluice-dns")
    });
    let mut _dns = None;
    if dns_bin.is_file() {
        step("starting sluice-dns on node-a (listening 192.0.2.1:53, zone cluster.local)");
        let upstream = topo.scratch("dns").join("resolv.conf");
        // No upstream outside the demo: names outside the zone are refused rather than leaked.
        std::fs::write(&upstream, "nameserver 192.0.2.1\n").map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&dns_bin);
        cmd.arg("--manifests").arg(&manifests).args(["--listen", "192.0.2.1:53", "--upstream"]).arg(&upstream);
        _dns = Some(topo.spawn_in_node(&a, cmd));
        std::thread::sleep(Duration::from_millis(800));
        let mut dig = Command::new("dig");
        dig.args(["+short", "+time=2", "+tries=2", "@192.0.2.1", "web.default.svc.cluster.local", "A"]);
        let out = topo.run_in_pod(&client, dig, Duration::from_secs(10));
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        dns_line = format!("dig web.default.svc.cluster.local from the client pod: {answer:?}");
        println!("    {dns_line}");
    }

    step("100 connections from the client pod to web.default (198.19.0.10:80)");
    let spread = probe_json(&topo, &client, &["tcp", "198.19.0.10:80", "--count", "100"], Duration::from_secs(30));
    println!(
        "    ok {} | web-1 {} | web-2 {} | getpeername() showed 198.19.0.10:80 {} times",
        spread["ok"],
        count(&spread, "by_id", "web-1"),
        count(&spread, "by_id", "web-2"),
        count(&spread, "peer_names", "198.19.0.10:80")
    );

    // Point the throughput Service at the remote pod only, so both runs cross nodes.
    step(&format!("iperf3 client -> ClusterIP 198.19.0.11:5201 (-> web-2 on node-b) vs client -> pod IP 198.18.2.10, {PAIRS} alternating pairs of {SECONDS}s"));
    agent.wait_for("198.19.0.11:5201/TCP", &["198.18.2.10:5201"], Duration::from_secs(10));
    let (mut vip, mut direct, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..PAIRS {
        let (v, d) = if i % 2 == 0 {
            let v = iperf(&topo, &client, "198.19.0.11")?;
            (v, iperf(&topo, &client, "198.18.2.10")?)
        } else {
            let d = iperf(&topo, &client, "198.18.2.10")?;
            (iperf(&topo, &client, "198.19.0.11")?, d)
        };
        println!("    pair {}: ClusterIP {:.2} Gbit/s, pod IP {:.2} Gbit/s", i + 1, v / 1e9, d / 1e9);
        vip.push(v);
        direct.push(d);
        ratios.push(v / d);
    }
    let (v, d, r) = (median(&mut vip), median(&mut direct), median(&mut ratios));
    println!();
    println!("Summary");
    println!("  cluster        2 nodes, 3 pods, Services from proxy-user/deploy/examples/demo.yaml");
    println!("  load balancing {} of 100 connections ok, spread web-1/web-2 = {}/{}", spread["ok"], count(&spread, "by_id", "web-1"), count(&spread, "by_id", "web-2"));
    println!("  dns            {dns_line}");
    println!("  iperf3 via ClusterIP  {:.2} Gbit/s (median of {PAIRS})", v / 1e9);
    println!("  iperf3 to pod IP      {:.2} Gbit/s (median of {PAIRS})", d / 1e9);
    println!("  ratio ClusterIP / direct  {r:.3} (median of per-pair ratios; socket LB translates once at connect())");
    step("cleaning up (namespaces, cgroups, pinned maps)");
    drop(iperf_servers);
    drop(agent);
    drop(topo);
    Ok(())
}
