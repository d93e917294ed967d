//! End-to-end tests of `sluice-proxy run --dataplane ipvs` (kube-proxy's
//! ipvs mode semantics) on node namespaces. They need a kernel with IPVS,
//! which this project's CI host lacks, so they are ignored there and run in
//! a guest: `cargo xtask vm-test --test proxy_ipvs -- --ignored`.
//!
//! What "no endpoints" means with IPVS (as with kube-proxy's ipvs mode): the
//! virtual service stays, with no real servers, and IPVS answers the first
//! packet with ICMP port unreachable, so a TCP connect fails at once with
//! ECONNREFUSED and a connected UDP socket gets ECONNREFUSED too.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    proxy::{count, probe_json, serve, service_yaml, slice_yaml, write_manifest, Ep, SvcPort},
    require_root, workspace_bin, Node, Outside, Pod, Proc, Topology,
};

const IPVS: &str = "needs a kernel with IP_VS: cargo xtask vm-test";
/// Guests are 12-25x slower than the host: generous, never asserted as timings.
const T: Duration = Duration::from_secs(120);
const SYNC: Duration = Duration::from_secs(60);
const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

struct Cluster {
    topo: Topology,
    a: Node,
    client: Pod,
    out: Outside,
    manifests: PathBuf,
    _servers: Vec<Proc>,
}

/// Nodes a and b, a client pod and be1 on a, be2 on b, an outside client.
fn cluster() -> Cluster {
    let mut topo = Topology::new();
    let a = topo.add_node("a", NODE_A);
    let b = topo.add_node("b", Ipv4Addr::new(192, 0, 2, 2));
    let client = topo.add_pod(&a, "client", Ipv4Addr::new(198, 18, 1, 5), None);
    let be1 = topo.add_pod(&a, "be1", Ipv4Addr::new(198, 18, 1, 10), None);
    let be2 = topo.add_pod(&b, "be2", Ipv4Addr::new(198, 18, 2, 10), None);
    topo.route_pod_cidrs(&[(&a, "198.18.1.0/24", None), (&b, "198.18.2.0/24", None)]);
    let out = topo.add_outside("o1", Ipv4Addr::new(203, 0, 113, 10));
    let servers = vec![serve(&topo, &be1, "be1", &[8080], &[8081]), serve(&topo, &be2, "be2", &[8080], &[8081])];
    let manifests = topo.scratch("manifests");
    Cluster { topo, a, client, out, manifests, _servers: servers }
}

fn web_service() -> String {
    service_yaml(
        "web",
        &["198.19.0.10"],
        &[
            SvcPort { name: "http", port: 80, target: "8080", proto: "TCP" },
            SvcPort { name: "dns", port: 53, target: "8081", proto: "UDP" },
        ],
    )
}

fn web_slice(eps: &[Ep<'_>]) -> String {
    slice_yaml("web", "web-1", "IPv4", &[("http", 8080, "TCP"), ("dns", 8081, "UDP")], eps)
}

fn both() -> Vec<Ep<'static>> {
    vec![Ep::ready("198.18.1.10", "a"), Ep::ready("198.18.2.10", "b")]
}

/// Starts `sluice-proxy run --dataplane ipvs` in node `a`.
fn start_agent(c: &Cluster, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(workspace_bin("sluice-proxy"));
    cmd.args(["run", "--dataplane", "ipvs", "--node-name", "a", "--manifests"])
        .arg(&c.manifests)
        .args(extra)
        .env("RUST_LOG", "info");
    let agent = c.topo.spawn_in_node(&c.a, cmd);
    assert!(
        agent.wait_for_stderr("sluice-proxy running", SYNC),
        "sluice-proxy --dataplane ipvs did not start; stderr:\n{}",
        agent.stderr()
    );
    agent
}

/// `sluice-proxy status --dataplane ipvs --json` in node `a`.
fn status(c: &Cluster) -> Vec<Value> {
    let mut cmd = Command::new(workspace_bin("sluice-proxy"));
    cmd.args(["status", "--dataplane", "ipvs", "--json"]);
    let out = c.topo.run_in_node(&c.a, cmd, T);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn row<'a>(rows: &'a [Value], frontend: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["frontend"] == frontend)
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> =
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default();
    out.sort();
    out
}

/// Waits until virtual service `frontend` has exactly `backends` taking new connections.
fn wait_for(c: &Cluster, agent: &Proc, frontend: &str, backends: &[&str]) -> Value {
    let mut want: Vec<String> = backends.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    let deadline = Instant::now() + SYNC;
    let mut seen = None;
    while Instant::now() < deadline {
        let rows = status(c);
        if let Some(r) = row(&rows, frontend) {
            if strings(&r["backends"]) == want {
                return r.clone();
            }
            seen = Some(r.clone());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("expected virtual service {frontend} with real servers {want:?}, saw {seen:?}; agent stderr:\n{}", agent.stderr());
}

fn ip_in_node(c: &Cluster, args: &[&str]) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = c.topo.run_in_node(&c.a, cmd, T);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs a kernel with IP_VS: cargo xtask vm-test"]
fn clusterip_tcp_and_udp_spread_over_backends_on_both_nodes() {
    if !require_root() {
        return;
    }
    let c = cluster();
    write_manifest(&c.manifests, "web.yaml", &format!("{}---\n{}", web_service(), web_slice(&both())));
    let agent = start_agent(&c, &[]);
    let r = wait_for(&c, &agent, "198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"]);
    assert_eq!(r["scheduler"], "rr", "{r}");
    assert_eq!(r["bound"], true, "the ClusterIP is bound on sluice-ipvs0: {r}");
    wait_for(&c, &agent, "198.19.0.10:53/UDP", &["198.18.1.10:8081", "198.18.2.10:8081"]);
    assert!(ip_in_node(&c, &["-4", "addr", "show", "dev", "sluice-ipvs0"]).contains("198.19.0.10/32"));

    // Round robin over two real servers: 40 connections split 20/20.
    let tcp = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "40"], T);
    assert_eq!(tcp["ok"], 40, "every connection should succeed: {tcp}");
    assert_eq!((count(&tcp, "by_id", "be1"), count(&tcp, "by_id", "be2")), (20, 20), "rr alternates: {tcp}");
    assert_eq!(count(&tcp, "seen_src", "198.18.1.5"), 40, "ClusterIP traffic keeps the pod's source: {tcp}");

    let udp = probe_json(&c.topo, &c.client, &["udp", "198.19.0.10:53", "--count", "20"], T);
    assert_eq!(udp["ok"], 20, "{udp}");
    assert_eq!(count(&udp, "reply_from", "198.19.0.10:53"), 20, "UDP replies come from the VIP: {udp}");
    assert!(count(&udp, "by_id", "be1") > 0 && count(&udp, "by_id", "be2") > 0, "both backends answer UDP: {udp}");
}

#[test]
#[ignore = "needs a kernel with IP_VS: cargo xtask vm-test"]
fn a_service_without_endpoints_is_refused_at_once_by_icmp_port_unreachable() {
    if !require_root() {
        return;
    }
    let c = cluster();
    write_manifest(&c.manifests, "web.yaml", &format!("{}---\n{}", web_service(), web_slice(&[])));
    let agent = start_agent(&c, &[]);
    wait_for(&c, &agent, "198.19.0.10:80/TCP", &[]);
    let out = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "3", "--timeout-ms", "5000"], T);
    assert_eq!(count(&out, "errors", "ECONNREFUSED"), 3, "connect() fails with ECONNREFUSED, not a timeout: {out}");
    let udp = probe_json(&c.topo, &c.client, &["udp", "198.19.0.10:53", "--count", "2", "--connected"], T);
    assert_eq!(udp["ok"], 0, "{udp}");
    assert!(udp.to_string().contains("ECONNREFUSED"), "connected UDP to an empty service is refused: {udp}");
}

#[test]
#[ignore = "needs a kernel with IP_VS: cargo xtask vm-test"]
fn a_removed_endpoint_drains_gets_no_new_connections_and_a_deleted_service_goes() {
    if !require_root() {
        return;
    }
    let c = cluster();
    write_manifest(&c.manifests, "web.yaml", &format!("{}---\n{}", web_service(), web_slice(&both())));
    let agent = start_agent(&c, &[]);
    wait_for(&c, &agent, "198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"]);
    let warm = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "4"], T);
    assert_eq!(warm["ok"], 4, "{warm}");

    write_manifest(&c.manifests, "web.yaml", &format!("{}---\n{}", web_service(), web_slice(&[Ep::ready("198.18.2.10", "b")])));
    let r = wait_for(&c, &agent, "198.19.0.10:80/TCP", &["198.18.2.10:8080"]);
    // TCP real servers leave through weight 0 (or are already gone when they had no connections).
    assert!(strings(&r["draining"]).iter().all(|d| d == "198.18.1.10:8080"), "{r}");
    // UDP real servers are deleted at once (kube-proxy does the same).
    let rows = status(&c);
    let udp = row(&rows, "198.19.0.10:53/UDP").unwrap_or_else(|| panic!("UDP service missing: {rows:?}"));
    assert_eq!(strings(&udp["backends"]), vec!["198.18.2.10:8081"], "{udp}");
    assert!(strings(&udp["draining"]).is_empty(), "{udp}");

    let after = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "20"], T);
    assert_eq!(count(&after, "by_id", "be2"), 20, "new connections only reach be2: {after}");

    // The drained server goes once its connections are gone (TIME_WAIT ones
    // count as inactive connections until IPVS expires them).
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let rows = status(&c);
        let r = row(&rows, "198.19.0.10:80/TCP").cloned().unwrap_or_default();
        if strings(&r["draining"]).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the drained real server was never deleted: {r}\n{}", agent.stderr());
        std::thread::sleep(Duration::from_secs(2));
    }

    // Deleting the Service removes its virtual services and its address.
    write_manifest(&c.manifests, "web.yaml", &web_slice(&both()));
    let deadline = Instant::now() + SYNC;
    while row(&status(&c), "198.19.0.10:80/TCP").is_some() {
        assert!(Instant::now() < deadline, "virtual service not removed: {}", agent.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!ip_in_node(&c, &["-4", "addr", "show", "dev", "sluice-ipvs0"]).contains("198.19.0.10"), "address unbound");
}

#[test]
#[ignore = "needs a kernel with IP_VS: cargo xtask vm-test"]
fn nodeport_from_outside_reaches_local_and_remote_backends_masqueraded() {
    if !require_root() {
        return;
    }
    let c = cluster();
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  type: NodePort\n  \
               clusterIP: 198.19.0.10\n  ports:\n  - {name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}\n";
    let slice = slice_yaml("web", "web-1", "IPv4", &[("http", 8080, "TCP")], &both());
    write_manifest(&c.manifests, "web.yaml", &format!("{svc}---\n{slice}"));
    let agent = start_agent(&c, &["--node-ip", "192.0.2.1"]);
    let np = wait_for(&c, &agent, "192.0.2.1:30080/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"]);
    assert_eq!(np["bound"], false, "a node address is not put on the dummy interface: {np}");
    wait_for(&c, &agent, "198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"]);

    let mut cmd = Command::new(workspace_bin("sluice-probe"));
    cmd.args(["tcp", "192.0.2.1:30080", "--count", "20", "--timeout-ms", "5000"]);
    let out = c.topo.run_in_outside(&c.out, cmd, T);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("probe output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["ok"], 20, "every NodePort connection from outside succeeds: {v}\n{}", agent.stderr());
    assert_eq!((count(&v, "by_id", "be1"), count(&v, "by_id", "be2")), (10, 10), "local and remote backends: {v}");
    assert_eq!(count(&v, "peer_names", "192.0.2.1:30080"), 20, "replies come from the NodePort: {v}");
    assert_eq!(count(&v, "seen_src", "192.0.2.1"), 20, "externalTrafficPolicy Cluster masquerades to the node: {v}");
}

#[test]
#[ignore = "needs a kernel with IP_VS: cargo xtask vm-test"]
fn new_connections_never_fail_across_a_sigkill_restart_and_cleanup_removes_everything() {
    if !require_root() {
        return;
    }
    let c = cluster();
    write_manifest(&c.manifests, "web.yaml", &format!("{}---\n{}", web_service(), web_slice(&both())));
    let agent = start_agent(&c, &[]);
    wait_for(&c, &agent, "198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"]);

    // New connections every 50 ms for 12 s while the agent is SIGKILLed,
    // stays down, and is restarted onto what the kernel holds.
    let mut stream = Command::new(workspace_bin("sluice-probe"));
    stream.args(["stream", "198.19.0.10:80", "--interval-ms", "50", "--duration-ms", "12000"]);
    let streamer = c.topo.spawn_in_pod(&c.client, stream);
    std::thread::sleep(Duration::from_secs(2));
    agent.kill();
    std::thread::sleep(Duration::from_secs(2));
    let restarted = start_agent(&c, &[]);
    let out = streamer.wait_output(T);
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stream output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert!(result["ok"].as_u64().unwrap_or(0) > 20, "the stream should have run: {result}");
    assert_eq!(result["failed"], 0, "no connection may fail across the restart: {result}");
    assert!(
        restarted.wait_for_stderr("adopted programmed state", Duration::from_secs(10)),
        "the restarted agent adopts the virtual services: {}",
        restarted.stderr()
    );

    // The restarted agent still follows changes.
    write_manifest(&c.manifests, "web.yaml", &format!("{}---\n{}", web_service(), web_slice(&[Ep::ready("198.18.2.10", "b")])));
    wait_for(&c, &restarted, "198.19.0.10:80/TCP", &["198.18.2.10:8080"]);

    // SIGTERM without --keep-on-exit removes what the agent made.
    restarted.signal(libc::SIGTERM);
    assert!(restarted.wait_timeout(T).is_some(), "agent should exit on SIGTERM");
    assert!(status(&c).is_empty(), "no virtual service left: {:?}", status(&c));
    assert!(ip_in_node(&c, &["link", "show", "sluice-ipvs0"]).is_empty(), "dummy interface removed");
    let mut nft = Command::new("nft");
    nft.args(["list", "table", "ip", "sluice-ipvs"]);
    assert!(!c.topo.run_in_node(&c.a, nft, T).status.success(), "nft table removed");
}

/// On a kernel without IPVS (this project's CI host), `--dataplane ipvs`
/// refuses at start and names the missing kernel feature. Runs where the
/// kernel's config says IP_VS is not built.
#[test]
fn without_ip_vs_in_the_kernel_the_ipvs_dataplane_refuses_naming_the_feature() {
    if !require_root() {
        return;
    }
    let config = Command::new("sh").args(["-c", "zcat /proc/config.gz 2>/dev/null"]).output().expect("sh");
    let config = String::from_utf8_lossy(&config.stdout);
    if config.is_empty() || config.lines().any(|l| l.starts_with("CONFIG_IP_VS=")) {
        eprintln!("skipping: this kernel has IP_VS or no /proc/config.gz ({IPVS} runs the IPVS tests)");
        return;
    }
    let mut topo = Topology::new();
    let a = topo.add_node("a", NODE_A);
    let manifests = topo.scratch("manifests");
    write_manifest(&manifests, "web.yaml", &web_service());
    let mut cmd = Command::new(workspace_bin("sluice-proxy"));
    cmd.args(["run", "--dataplane", "ipvs", "--node-name", "a", "--manifests"]).arg(&manifests);
    let out = topo.run_in_node(&a, cmd, T);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must refuse to start: {stderr}");
    assert!(stderr.contains("CONFIG_IP_VS") && stderr.contains("ip_vs"), "the message names the kernel feature: {stderr}");
    let mut ip = Command::new("ip");
    ip.args(["link", "show", "sluice-ipvs0"]);
    assert!(!topo.run_in_node(&a, ip, T).status.success(), "nothing is created before refusing");
}
