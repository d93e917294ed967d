//! End-to-end: a connected UDP socket that the socket LB pinned to a backend
//! is destroyed when that backend leaves the Service, so a resolver-style
//! client (which reconnects on error) moves to a live backend instead of
//! talking to the old pod forever. Sockets that did not go through the
//! frontend that dropped the backend are left alone. Needs root; skipped
//! otherwise.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use serde_json::Value;
use tests::{
    proxy::{serve, service_yaml, slice_yaml, write_manifest, Agent, Ep, SvcPort},
    require_root, workspace_bin, Proc, Topology,
};

const T: Duration = Duration::from_secs(60);
const SYNC: Duration = Duration::from_secs(10);

fn dns_service(name: &str, vip: &str) -> String {
    service_yaml(name, &[vip], &[SvcPort { name: "dns", port: 53, target: "8081", proto: "UDP" }])
}

fn dns_slice(service: &str, eps: &[Ep<'_>]) -> String {
    slice_yaml(service, &format!("{service}-1"), "IPv4", &[("dns", 8081, "UDP")], eps)
}

/// `sluice-probe udp ADDR --connected --reuse` with one datagram every 100 ms for 4 s.
fn udp_client(topo: &Topology, pod: &tests::Pod, addr: &str, reconnect: bool) -> Proc {
    let mut cmd = Command::new(workspace_bin("sluice-probe"));
    cmd.args(["udp", addr, "--connected", "--reuse", "--count", "40", "--interval-ms", "100", "--timeout-ms", "1000"]);
    if reconnect {
        cmd.arg("--reconnect");
    }
    topo.spawn_in_pod(pod, cmd)
}

fn output(p: &Proc) -> Value {
    let out = p.wait_output(T);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("probe output is not JSON ({e}): {}; stderr {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

#[test]
fn connected_udp_sockets_balanced_to_a_removed_backend_are_aborted_and_a_reconnect_reaches_a_live_one() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let a = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let b = topo.add_node("b", Ipv4Addr::new(192, 0, 2, 2));
    let client = topo.add_pod(&a, "client", Ipv4Addr::new(198, 18, 1, 5), None);
    let be1 = topo.add_pod(&a, "be1", Ipv4Addr::new(198, 18, 1, 10), None);
    let be2 = topo.add_pod(&b, "be2", Ipv4Addr::new(198, 18, 2, 10), None);
    topo.route_pod_cidrs(&[(&a, "198.18.1.0/24", None), (&b, "198.18.2.0/24", None)]);
    let _servers = [serve(&topo, &be1, "be1", &[], &[8081]), serve(&topo, &be2, "be2", &[], &[8081])];
    let manifests = topo.scratch("manifests");
    // `dns` starts with be1 only, so a connected socket through it is pinned
    // to be1; `other` keeps using be1 throughout.
    write_manifest(&manifests, "dns.yaml", &format!("{}---\n{}", dns_service("dns", "198.19.0.53"), dns_slice("dns", &[Ep::ready("198.18.1.10", "a")])));
    write_manifest(&manifests, "other.yaml", &format!("{}---\n{}", dns_service("other", "198.19.0.54"), dns_slice("other", &[Ep::ready("198.18.1.10", "a")])));
    let agent = Agent::start(&mut topo, &a, &manifests, &[]);
    agent.wait_for("198.19.0.53:53/UDP", &["198.18.1.10:8081"], SYNC);
    agent.wait_for("198.19.0.54:53/UDP", &["198.18.1.10:8081"], SYNC);

    let resolver = udp_client(&topo, &client, "198.19.0.53:53", true);
    let via_other = udp_client(&topo, &client, "198.19.0.54:53", false);
    let direct = udp_client(&topo, &client, "198.18.1.10:8081", false);
    std::thread::sleep(Duration::from_millis(1000));

    // be1 leaves `dns` (be2 takes over); be1 itself keeps running and stays in `other`.
    write_manifest(&manifests, "dns.yaml", &format!("{}---\n{}", dns_service("dns", "198.19.0.53"), dns_slice("dns", &[Ep::ready("198.18.2.10", "b")])));
    agent.wait_for("198.19.0.53:53/UDP", &["198.18.2.10:8081"], SYNC);

    let r = output(&resolver);
    let seq: Vec<String> =
        r["sequence"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default();
    assert_eq!(seq.len(), 40, "{r}");
    let errors: Vec<(usize, &String)> = seq.iter().enumerate().filter(|(_, s)| !s.starts_with("be")).collect();
    assert_eq!(errors.len(), 1, "exactly one operation of the pinned socket should fail, once: {seq:?}");
    let (at, err) = errors[0];
    assert!(err.ends_with("ECONNABORTED"), "the socket pinned to the removed backend must be aborted (ECONNABORTED), saw {err:?}: {seq:?}");
    assert!(at > 0 && seq[..at].iter().all(|s| s == "be1"), "before the removal the pinned socket talks to be1: {seq:?}");
    assert!(
        at + 1 < seq.len() && seq[at + 1..].iter().all(|s| s == "be2"),
        "after reconnecting, the client reaches the remaining backend be2 only: {seq:?}"
    );

    // Not balanced through `dns`: untouched.
    for (what, v) in [("a socket connected through `other`, which still uses be1", output(&via_other)), ("a socket connected to be1's pod address directly", output(&direct))] {
        assert_eq!(v["ok"], 40, "{what} must keep working: {v}");
        assert_eq!(tests::proxy::count(&v, "by_id", "be1"), 40, "{what} stays on be1: {v}");
    }
    assert!(
        agent.proc.stderr().contains("destroyed connected UDP sockets"),
        "the agent should log the sweep: {}",
        agent.proc.stderr()
    );
}

#[test]
fn a_backend_removed_from_every_service_aborts_its_balanced_sockets_in_every_pod_namespace() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let a = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let b = topo.add_node("b", Ipv4Addr::new(192, 0, 2, 2));
    let client = topo.add_pod(&a, "client", Ipv4Addr::new(198, 18, 1, 5), None);
    let client2 = topo.add_pod(&a, "client2", Ipv4Addr::new(198, 18, 1, 6), None);
    let be1 = topo.add_pod(&a, "be1", Ipv4Addr::new(198, 18, 1, 10), None);
    let be2 = topo.add_pod(&b, "be2", Ipv4Addr::new(198, 18, 2, 10), None);
    topo.route_pod_cidrs(&[(&a, "198.18.1.0/24", None), (&b, "198.18.2.0/24", None)]);
    let _servers = [serve(&topo, &be1, "be1", &[], &[8081]), serve(&topo, &be2, "be2", &[], &[8081])];
    let manifests = topo.scratch("manifests");
    write_manifest(&manifests, "dns.yaml", &format!("{}---\n{}", dns_service("dns", "198.19.0.53"), dns_slice("dns", &[Ep::ready("198.18.1.10", "a")])));
    let agent = Agent::start(&mut topo, &a, &manifests, &[]);
    agent.wait_for("198.19.0.53:53/UDP", &["198.18.1.10:8081"], SYNC);

    let clients = [udp_client(&topo, &client, "198.19.0.53:53", true), udp_client(&topo, &client2, "198.19.0.53:53", true)];
    std::thread::sleep(Duration::from_millis(1000));
    write_manifest(&manifests, "dns.yaml", &format!("{}---\n{}", dns_service("dns", "198.19.0.53"), dns_slice("dns", &[Ep::ready("198.18.2.10", "b")])));
    agent.wait_for("198.19.0.53:53/UDP", &["198.18.2.10:8081"], SYNC);
    for (i, p) in clients.iter().enumerate() {
        let r = output(p);
        let seq: Vec<&str> = r["sequence"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let aborted = seq.iter().filter(|s| s.ends_with("ECONNABORTED")).count();
        assert_eq!(aborted, 1, "client {i} (its own network namespace) should be aborted once: {seq:?}");
        assert_eq!(seq.last(), Some(&"be2"), "client {i} should end on be2: {seq:?}");
    }
}
