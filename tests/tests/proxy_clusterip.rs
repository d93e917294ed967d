//! End-to-end: ClusterIP load balancing at the socket, through the real
//! `sluice-proxy` binary following a manifest directory, with real clients in
//! pod namespaces (needs root; skipped otherwise).

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use tests::{
    proxy::{count, probe_json, serve, service_yaml, slice_yaml, write_manifest, Agent, Ep, SvcPort},
    require_root, Node, Pod, Proc, Topology,
};

const T: Duration = Duration::from_secs(30);
const SYNC: Duration = Duration::from_secs(10);

/// Two nodes; a client pod and backend be1 on node a, backend be2 on node b.
struct Cluster {
    topo: Topology,
    a: Node,
    client: Pod,
    be1: Pod,
    be2: Pod,
    manifests: PathBuf,
    _servers: Vec<Proc>,
}

fn cluster() -> Cluster {
    let mut topo = Topology::new();
    let a = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let b = topo.add_node("b", Ipv4Addr::new(192, 0, 2, 2));
    let client = topo.add_pod(&a, "client", Ipv4Addr::new(198, 18, 1, 5), Some("2001:db8:1:1::5".parse().unwrap()));
    let be1 = topo.add_pod(&a, "be1", Ipv4Addr::new(198, 18, 1, 10), Some("2001:db8:1:1::10".parse().unwrap()));
    let be2 = topo.add_pod(&b, "be2", Ipv4Addr::new(198, 18, 2, 10), Some("2001:db8:1:2::10".parse().unwrap()));
    topo.route_pod_cidrs(&[
        (&a, "198.18.1.0/24", Some("2001:db8:1:1::/64")),
        (&b, "198.18.2.0/24", Some("2001:db8:1:2::/64")),
    ]);
    let servers = vec![serve(&topo, &be1, "be1", &[8080], &[8081]), serve(&topo, &be2, "be2", &[8080], &[8081])];
    let manifests = topo.scratch("manifests");
    Cluster { topo, a, client, be1, be2, manifests, _servers: servers }
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

fn both_backends() -> Vec<Ep<'static>> {
    vec![Ep::ready("198.18.1.10", "a"), Ep::ready("198.18.2.10", "b")]
}

#[test]
fn tcp_and_udp_reach_backends_on_both_nodes_with_a_fair_spread_and_the_vip_shown() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    write_manifest(&c.manifests, "web.yaml", &format!("{}---\n{}", web_service(), web_slice(&both_backends())));
    let agent = Agent::start(&mut c.topo, &c.a, &c.manifests, &[]);
    agent.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"], SYNC);

    // 1000 connections, two backends: each count is Binomial(1000, 0.5) with
    // sd 15.8; 420..=580 is +-5 sd, so a fair picker fails this with p < 1e-6.
    let tcp = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "1000"], T);
    assert_eq!(tcp["ok"], 1000, "every connection should succeed: {tcp}");
    for id in ["be1", "be2"] {
        let n = count(&tcp, "by_id", id);
        assert!((420..=580).contains(&n), "{id} got {n} of 1000 connections; expected a fair share: {tcp}");
    }
    assert_eq!(count(&tcp, "peer_names", "198.19.0.10:80"), 1000, "getpeername() must show the VIP: {tcp}");
    assert_eq!(count(&tcp, "seen_src", "198.18.1.5"), 1000, "backends must see the client pod's address: {tcp}");

    let udp = probe_json(&c.topo, &c.client, &["udp", "198.19.0.10:53", "--count", "200"], T);
    assert_eq!(udp["ok"], 200, "{udp}");
    assert_eq!(count(&udp, "reply_from", "198.19.0.10:53"), 200, "UDP replies must come from the VIP: {udp}");
    assert!(count(&udp, "by_id", "be1") > 0 && count(&udp, "by_id", "be2") > 0, "both backends should answer UDP: {udp}");

    let connected = probe_json(&c.topo, &c.client, &["udp", "198.19.0.10:53", "--count", "50", "--connected"], T);
    assert_eq!(connected["ok"], 50, "{connected}");
    assert_eq!(count(&connected, "reply_from", "198.19.0.10:53"), 50, "connected UDP peer must be the VIP: {connected}");
}

#[test]
fn a_service_without_endpoints_refuses_at_once() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    write_manifest(&c.manifests, "web.yaml", &format!("{}---\n{}", web_service(), web_slice(&[])));
    let agent = Agent::start(&mut c.topo, &c.a, &c.manifests, &[]);
    agent.wait_for("198.19.0.10:80/TCP", &[], SYNC);
    let out = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "5", "--timeout-ms", "3000"], T);
    assert_eq!(count(&out, "errors", "ECONNREFUSED"), 5, "connect() must fail with ECONNREFUSED, not time out: {out}");
    let udp = probe_json(&c.topo, &c.client, &["udp", "198.19.0.10:53", "--count", "3", "--connected"], T);
    assert_eq!(udp["ok"], 0, "{udp}");
    assert!(udp.to_string().contains("ECONNREFUSED"), "connected UDP to an empty service must be refused: {udp}");
}

#[test]
fn removed_or_unready_endpoints_get_no_new_connections_and_a_deleted_service_stops_translating() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    write_manifest(&c.manifests, "svc.yaml", &web_service());
    write_manifest(&c.manifests, "slice.yaml", &web_slice(&both_backends()));
    let agent = Agent::start(&mut c.topo, &c.a, &c.manifests, &[]);
    agent.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"], SYNC);

    // be2 not ready: one second after the file change no new connection goes there.
    let mut unready = both_backends();
    unready[1].ready = false;
    unready[1].serving = false;
    write_manifest(&c.manifests, "slice.yaml", &web_slice(&unready));
    std::thread::sleep(Duration::from_secs(1));
    let out = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "200"], T);
    assert_eq!(count(&out, "by_id", "be1"), 200, "a not-ready endpoint must get no new connections: {out}");

    // be2 back, then be1 removed from the slice.
    write_manifest(&c.manifests, "slice.yaml", &web_slice(&[Ep::ready("198.18.2.10", "b")]));
    std::thread::sleep(Duration::from_secs(1));
    let out = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "200"], T);
    assert_eq!(count(&out, "by_id", "be2"), 200, "a removed endpoint must get no new connections: {out}");

    // Service deleted: the VIP is no longer translated (nothing routes it).
    std::fs::remove_file(c.manifests.join("svc.yaml")).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    agent.wait_gone("198.19.0.10:80/TCP", SYNC);
    let out = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "3", "--timeout-ms", "500"], T);
    assert_eq!(out["ok"], 0, "a deleted Service's VIP must stop reaching backends: {out}");
}

#[test]
fn named_target_port_port_change_and_two_services_sharing_a_backend() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let named = |port: u16| {
        service_yaml("named", &["198.19.0.20"], &[SvcPort { name: "http", port, target: "web", proto: "TCP" }])
    };
    let named_slice = slice_yaml("named", "named-1", "IPv4", &[("http", 8080, "TCP")], &[Ep::ready("198.18.2.10", "b")]);
    let other = service_yaml("other", &["198.19.0.21"], &[SvcPort { name: "", port: 9000, target: "8080", proto: "TCP" }]);
    let other_slice = slice_yaml("other", "other-1", "IPv4", &[("", 8080, "TCP")], &[Ep::ready("198.18.2.10", "b")]);
    write_manifest(&c.manifests, "named.yaml", &format!("{}---\n{named_slice}", named(80)));
    write_manifest(&c.manifests, "other.yaml", &format!("{other}---\n{other_slice}"));
    let agent = Agent::start(&mut c.topo, &c.a, &c.manifests, &[]);
    agent.wait_for("198.19.0.20:80/TCP", &["198.18.2.10:8080"], SYNC);
    agent.wait_for("198.19.0.21:9000/TCP", &["198.18.2.10:8080"], SYNC);
    for vip in ["198.19.0.20:80", "198.19.0.21:9000"] {
        let out = probe_json(&c.topo, &c.client, &["tcp", vip, "--count", "20"], T);
        assert_eq!(count(&out, "by_id", "be2"), 20, "{vip} should reach the shared backend: {out}");
    }

    write_manifest(&c.manifests, "named.yaml", &format!("{}---\n{named_slice}", named(81)));
    agent.wait_for("198.19.0.20:81/TCP", &["198.18.2.10:8080"], SYNC);
    agent.wait_gone("198.19.0.20:80/TCP", SYNC);
    let out = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.20:81", "--count", "10"], T);
    assert_eq!(count(&out, "by_id", "be2"), 10, "the new port must work: {out}");
    let out = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.21:9000", "--count", "10"], T);
    assert_eq!(count(&out, "by_id", "be2"), 10, "the other Service keeps its shared backend: {out}");
}

#[test]
fn ipv6_clusterip_of_a_dual_stack_service() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let svc = service_yaml(
        "dual",
        &["198.19.0.30", "2001:db8:2::30"],
        &[SvcPort { name: "http", port: 80, target: "8080", proto: "TCP" }],
    );
    let s4 = slice_yaml("dual", "dual-4", "IPv4", &[("http", 8080, "TCP")], &[Ep::ready("198.18.1.10", "a")]);
    let s6 = slice_yaml("dual", "dual-6", "IPv6", &[("http", 8080, "TCP")], &[Ep::ready("2001:db8:1:2::10", "b")]);
    write_manifest(&c.manifests, "dual.yaml", &format!("{svc}---\n{s4}---\n{s6}"));
    let agent = Agent::start(&mut c.topo, &c.a, &c.manifests, &[]);
    agent.wait_for("[2001:db8:2::30]:80/TCP", &["[2001:db8:1:2::10]:8080"], SYNC);
    let v6 = probe_json(&c.topo, &c.client, &["tcp", "[2001:db8:2::30]:80", "--count", "20"], T);
    assert_eq!(count(&v6, "by_id", "be2"), 20, "{v6}");
    assert_eq!(count(&v6, "peer_names", "[2001:db8:2::30]:80"), 20, "getpeername() must show the v6 VIP: {v6}");
    let v4 = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.30:80", "--count", "20"], T);
    assert_eq!(count(&v4, "by_id", "be1"), 20, "{v4}");
}

#[test]
fn bad_input_is_named_in_warnings_and_every_valid_object_still_works() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    write_manifest(&c.manifests, "broken.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x\n  spec: [\n");
    write_manifest(
        &c.manifests,
        "badip.yaml",
        &service_yaml("badip", &["198.19.0.999"], &[SvcPort { name: "", port: 80, target: "80", proto: "TCP" }]),
    );
    write_manifest(&c.manifests, "deploy.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, namespace: default}\n");
    write_manifest(&c.manifests, "web.yaml", &format!("{}---\n{}", web_service(), web_slice(&both_backends())));
    let agent = Agent::start(&mut c.topo, &c.a, &c.manifests, &[]);
    agent.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"], SYNC);
    let out = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "20"], T);
    assert_eq!(out["ok"], 20, "valid objects must keep working next to bad ones: {out}");
    let log = agent.proc.stderr();
    for needle in ["broken.yaml", "badip.yaml", "default/badip", "198.19.0.999", "deploy.yaml", "Deployment default/app"] {
        assert!(log.contains(needle), "agent warnings should name {needle:?}; stderr:\n{log}");
    }
    assert!(agent.proc.try_wait().is_none(), "bad input must not crash the agent");
}

#[test]
fn sigterm_detaches_and_removes_everything_pinned() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    write_manifest(&c.manifests, "web.yaml", &format!("{}---\n{}", web_service(), web_slice(&both_backends())));
    let agent = Agent::start(&mut c.topo, &c.a, &c.manifests, &[]);
    agent.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"], SYNC);
    agent.proc.signal(libc::SIGTERM);
    let status = agent.proc.wait_timeout(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "agent should exit cleanly on SIGTERM: {status:?}\n{}", agent.proc.stderr());
    let left: Vec<_> = std::fs::read_dir(&agent.bpffs)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing may stay pinned after SIGTERM, found {left:?}");
    let out = probe_json(&c.topo, &c.client, &["tcp", "198.19.0.10:80", "--count", "2", "--timeout-ms", "500"], T);
    assert_eq!(out["ok"], 0, "with the programs detached the VIP must no longer be translated: {out}");
    let _ = (&c.be1, &c.be2);
}
