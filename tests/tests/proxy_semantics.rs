//! End-to-end: the ClusterIP behaviours of issue 3 through real sockets in
//! pod namespaces, with `sluice-proxy` following the test API server through
//! an ordinary kubeconfig (the kube-rs list/watch path). Needs root; skipped
//! otherwise.
//!
//! The API server runs inside node a's network namespace (listening on that
//! namespace's 127.0.0.1), where the agent runs too: nothing leaves the
//! namespaces the test created.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use tests::{
    apiserver::ApiServer,
    in_netns,
    proxy::{count, probe_json, serve, service_yaml, status, Agent, SvcPort},
    require_root, workspace_bin, Node, Pod, Proc, Topology,
};

const T: Duration = Duration::from_secs(60);
/// Programming through the API includes a watch round trip and, after an
/// outage, the watcher's backoff.
const SYNC: Duration = Duration::from_secs(30);
const VIP: &str = "198.19.0.10:80";
const FRONTEND: &str = "198.19.0.10:80/TCP";
const BE1: &str = "198.18.1.10:8080";
const BE2: &str = "198.18.2.10:8080";

/// Two nodes; clients and be1 on node a (where the agent runs), be2 on node b.
struct Cluster {
    // The API server goes last: the agent (in `topo`) is stopped before it.
    topo: Topology,
    a: Node,
    client: Pod,
    client2: Pod,
    kubeconfig: PathBuf,
    _servers: Vec<Proc>,
    api: ApiServer,
}

fn cluster() -> Cluster {
    let mut topo = Topology::new();
    let a = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let b = topo.add_node("b", Ipv4Addr::new(192, 0, 2, 2));
    let client = topo.add_pod(&a, "client", Ipv4Addr::new(198, 18, 1, 5), Some("2001:db8:1:1::5".parse().unwrap()));
    let client2 = topo.add_pod(&a, "client2", Ipv4Addr::new(198, 18, 1, 6), Some("2001:db8:1:1::6".parse().unwrap()));
    let be1 = topo.add_pod(&a, "be1", Ipv4Addr::new(198, 18, 1, 10), Some("2001:db8:1:1::10".parse().unwrap()));
    let be2 = topo.add_pod(&b, "be2", Ipv4Addr::new(198, 18, 2, 10), Some("2001:db8:1:2::10".parse().unwrap()));
    topo.route_pod_cidrs(&[
        (&a, "198.18.1.0/24", Some("2001:db8:1:1::/64")),
        (&b, "198.18.2.0/24", Some("2001:db8:1:2::/64")),
    ]);
    let servers = vec![serve(&topo, &be1, "be1", &[8080], &[]), serve(&topo, &be2, "be2", &[8080], &[])];
    // Threads inherit their creator's network namespace: the server's thread
    // (and every listener it opens, also after stop/resume) lives in node a.
    let api = in_netns(&a.netns, ApiServer::start).expect("entering node a's namespace to start the API server");
    let kubeconfig = topo.scratch("kube").join("kubeconfig.yaml");
    api.write_kubeconfig(&kubeconfig);
    Cluster { topo, a, client, client2, kubeconfig, _servers: servers, api }
}

impl Cluster {
    fn agent(&mut self) -> Agent {
        let kubeconfig = self.kubeconfig.clone();
        let a = self.a.clone();
        Agent::start_kube(&mut self.topo, &a, &kubeconfig, &[])
    }

    fn tcp(&self, pod: &Pod, vip: &str, n: u64) -> Value {
        probe_json(&self.topo, pod, &["tcp", vip, "--count", &n.to_string()], T)
    }
}

/// `web` on 198.19.0.10:80 -> 8080/TCP, with extra `spec` lines.
fn web(spec_extra: &str) -> String {
    let mut y = service_yaml("web", &["198.19.0.10"], &[SvcPort { name: "http", port: 80, target: "8080", proto: "TCP" }]);
    y.push_str(spec_extra);
    y
}

/// One endpoint: address, node, (ready, serving, terminating), zone hint.
#[derive(Clone, Copy)]
struct E<'a> {
    ip: &'a str,
    node: &'a str,
    cond: (bool, bool, bool),
    zone_hint: Option<&'a str>,
    node_hint: Option<&'a str>,
}

const READY: (bool, bool, bool) = (true, true, false);
const TERMINATING: (bool, bool, bool) = (false, true, true);

fn e<'a>(ip: &'a str, node: &'a str) -> E<'a> {
    E { ip, node, cond: READY, zone_hint: None, node_hint: None }
}

/// An EndpointSlice of `service` with port "http" 8080/TCP.
fn slice(service: &str, name: &str, family: &str, eps: &[E<'_>]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  \
         labels: {{kubernetes.io/service-name: {service}}}\naddressType: {family}\n\
         ports:\n- {{name: http, port: 8080, protocol: TCP}}\nendpoints:{}\n",
        if eps.is_empty() { " []" } else { "" }
    );
    for ep in eps {
        let (ready, serving, terminating) = ep.cond;
        let _ = writeln!(
            y,
            "- addresses: [\"{}\"]\n  nodeName: {}\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}",
            ep.ip, ep.node
        );
        match (ep.zone_hint, ep.node_hint) {
            (Some(z), None) => {
                let _ = writeln!(y, "  hints: {{forZones: [{{name: {z}}}]}}");
            }
            (Some(z), Some(n)) => {
                let _ = writeln!(y, "  hints: {{forZones: [{{name: {z}}}], forNodes: [{{name: {n}}}]}}");
            }
            (None, Some(n)) => {
                let _ = writeln!(y, "  hints: {{forNodes: [{{name: {n}}}]}}");
            }
            (None, None) => {}
        }
    }
    y
}

fn node_yaml(name: &str, zone: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{topology.kubernetes.io/zone: {zone}}}\n")
}

/// Waits until `frontend`'s programmed affinity timeout is `want`.
fn wait_affinity(agent: &Agent, frontend: &str, want: Option<u64>) {
    let deadline = Instant::now() + SYNC;
    let mut seen = None;
    while Instant::now() < deadline {
        seen = status(&agent.bpffs).into_iter().find(|r| r["frontend"] == frontend);
        if seen.as_ref().is_some_and(|r| r["affinity_timeout"].as_u64() == want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("expected {frontend} with affinity timeout {want:?}, saw {seen:?}; agent stderr:\n{}", agent.proc.stderr());
}

fn only(v: &Value, id: &str, n: u64, what: &str) {
    assert_eq!(count(v, "by_id", id), n, "{what}: expected all {n} answers from {id}: {v}");
}

#[test]
fn session_affinity_client_ip_pins_each_client_netns_and_can_be_switched_off_and_on() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let affinity = "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n";
    // `keep` also uses be1, so be1 stays an active backend (same id) while
    // it is out of `web`: the affinity check below must not follow it.
    let keep = service_yaml("keep", &["198.19.0.11"], &[SvcPort { name: "http", port: 80, target: "8080", proto: "TCP" }]);
    c.api.apply_yaml_str(&format!(
        "{}---\n{}---\n{keep}---\n{}",
        web(affinity),
        slice("web", "web-1", "IPv4", &[e("198.18.1.10", "a")]),
        slice("keep", "keep-1", "IPv4", &[e("198.18.1.10", "a")])
    ));
    let agent = c.agent();
    agent.wait_for(FRONTEND, &[BE1], SYNC);
    wait_affinity(&agent, FRONTEND, Some(600));
    // client's affinity entry now names be1.
    only(&c.tcp(&c.client, VIP, 1), "be1", 1, "client with be1 as the only endpoint");
    c.api.apply_yaml_str(&slice("web", "web-1", "IPv4", &[e("198.18.2.10", "b")]));
    agent.wait_for(FRONTEND, &[BE2], SYNC);
    only(
        &c.tcp(&c.client, VIP, 5),
        "be2",
        5,
        "client's affine backend left the Service (still active for `keep`): it must not be used",
    );
    // client2 (another network namespace) gets its own entry.
    only(&c.tcp(&c.client2, VIP, 1), "be2", 1, "client2 with be2 as the only endpoint");

    // A backend added: both clients keep be2.
    c.api.apply_yaml_str(&slice("web", "web-1", "IPv4", &[e("198.18.1.10", "a"), e("198.18.2.10", "b")]));
    agent.wait_for(FRONTEND, &[BE1, BE2], SYNC);
    only(&c.tcp(&c.client, VIP, 50), "be2", 50, "client keeps its affine backend when another one is added");
    only(&c.tcp(&c.client2, VIP, 50), "be2", 50, "client2 keeps its affine backend when another one is added");

    // Off: spread again. 200 connections, two backends: both get some (p of
    // failing by chance 2^-199).
    c.api.apply_yaml_str(&web(""));
    wait_affinity(&agent, FRONTEND, None);
    let spread = c.tcp(&c.client, VIP, 200);
    assert_eq!(spread["ok"], 200, "{spread}");
    assert!(
        count(&spread, "by_id", "be1") > 0 && count(&spread, "by_id", "be2") > 0,
        "without affinity, connections must spread over both backends: {spread}"
    );

    // On again: every connection of one client goes to one backend.
    c.api.apply_yaml_str(&web(affinity));
    wait_affinity(&agent, FRONTEND, Some(600));
    for pod in [&c.client, &c.client2] {
        let pinned = c.tcp(pod, VIP, 50);
        let (n1, n2) = (count(&pinned, "by_id", "be1"), count(&pinned, "by_id", "be2"));
        assert!(
            (n1, n2) == (50, 0) || (n1, n2) == (0, 50),
            "with affinity switched back on, all 50 connections of one client go to one backend: {pinned}"
        );
    }
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints_and_refuses_without_one() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let local = "  internalTrafficPolicy: Local\n";
    c.api.apply_yaml_str(&format!(
        "{}---\n{}",
        web(local),
        slice("web", "web-1", "IPv4", &[e("198.18.1.10", "a"), e("198.18.2.10", "b")])
    ));
    let agent = c.agent();
    agent.wait_for(FRONTEND, &[BE1], SYNC);
    only(&c.tcp(&c.client, VIP, 100), "be1", 100, "internalTrafficPolicy Local on node a");

    c.api.apply_yaml_str(&slice("web", "web-1", "IPv4", &[e("198.18.2.10", "b")]));
    agent.wait_for(FRONTEND, &[], SYNC);
    let refused = probe_json(&c.topo, &c.client, &["tcp", VIP, "--count", "5", "--timeout-ms", "3000"], T);
    assert_eq!(
        count(&refused, "errors", "ECONNREFUSED"),
        5,
        "with no endpoint on this node connect() must be refused at once, although node b has one: {refused}"
    );

    // Cluster policy again: node b's endpoint is used.
    c.api.apply_yaml_str(&web(""));
    agent.wait_for(FRONTEND, &[BE2], SYNC);
    only(&c.tcp(&c.client, VIP, 20), "be2", 20, "internalTrafficPolicy Cluster");
}

#[test]
fn topology_hints_keep_traffic_in_the_nodes_zone_or_on_the_node_unless_an_endpoint_has_no_hint() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let hinted = [
        E { zone_hint: Some("z1"), ..e("198.18.1.10", "a") },
        E { zone_hint: Some("z2"), ..e("198.18.2.10", "b") },
    ];
    c.api.apply_yaml_str(&format!(
        "{}---\n{}---\n{}",
        node_yaml("a", "z1"),
        web("  trafficDistribution: PreferClose\n"),
        slice("web", "web-1", "IPv4", &hinted)
    ));
    let agent = c.agent();
    agent.wait_for(FRONTEND, &[BE1], SYNC);
    only(&c.tcp(&c.client, VIP, 100), "be1", 100, "node a in zone z1, be1 hinted for z1");

    // The node moves to z2 (its Node object, through the API): be2 now.
    c.api.apply_yaml_str(&node_yaml("a", "z2"));
    agent.wait_for(FRONTEND, &[BE2], SYNC);
    only(&c.tcp(&c.client, VIP, 100), "be2", 100, "node a relabelled to zone z2");

    // One endpoint without hints: hints are ignored, every endpoint is used.
    let partly = [hinted[0], E { zone_hint: None, ..hinted[1] }];
    c.api.apply_yaml_str(&slice("web", "web-1", "IPv4", &partly));
    agent.wait_for(FRONTEND, &[BE1, BE2], SYNC);
    let all = c.tcp(&c.client, VIP, 200);
    assert_eq!(all["ok"], 200, "{all}");
    assert!(
        count(&all, "by_id", "be1") > 0 && count(&all, "by_id", "be2") > 0,
        "with one endpoint lacking hints both backends must be used: {all}"
    );

    // PreferSameNode: the endpoint hinted for this node wins over the zone
    // (node a is in z2 now, be1 is hinted for z1 but also for node a).
    let by_node = [
        E { zone_hint: Some("z1"), node_hint: Some("a"), ..e("198.18.1.10", "a") },
        E { zone_hint: Some("z2"), node_hint: Some("b"), ..e("198.18.2.10", "b") },
    ];
    c.api.apply_yaml_str(&format!(
        "{}---\n{}",
        web("  trafficDistribution: PreferSameNode\n"),
        slice("web", "web-1", "IPv4", &by_node)
    ));
    agent.wait_for(FRONTEND, &[BE1], SYNC);
    only(&c.tcp(&c.client, VIP, 100), "be1", 100, "PreferSameNode: be1 is hinted for node a");
    // No endpoint hinted for node a: fall back to the zone hints (z2: be2).
    let elsewhere = [E { node_hint: Some("c"), ..by_node[0] }, by_node[1]];
    c.api.apply_yaml_str(&slice("web", "web-1", "IPv4", &elsewhere));
    agent.wait_for(FRONTEND, &[BE2], SYNC);
    only(&c.tcp(&c.client, VIP, 100), "be2", 100, "PreferSameNode without a node match falls back to the zone");
}

#[test]
fn a_terminating_endpoint_keeps_its_connections_gets_no_new_ones_and_serves_only_as_a_last_resort() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    c.api.apply_yaml_str(&format!("{}---\n{}", web(""), slice("web", "web-1", "IPv4", &[e("198.18.1.10", "a")])));
    let agent = c.agent();
    agent.wait_for(FRONTEND, &[BE1], SYNC);

    // A long-lived connection through the VIP (to be1, the only endpoint):
    // a line every 200 ms for 8 s, each answered.
    let mut hold = Command::new(workspace_bin("sluice-probe"));
    hold.args(["hold", VIP, "--interval-ms", "200", "--duration-ms", "8000"]);
    let holder = c.topo.spawn_in_pod(&c.client, hold);
    std::thread::sleep(Duration::from_millis(500));

    // be1 terminates (still serving), be2 is ready: new connections go to be2 only.
    let be1_terminating = E { cond: TERMINATING, ..e("198.18.1.10", "a") };
    c.api.apply_yaml_str(&slice("web", "web-1", "IPv4", &[be1_terminating, e("198.18.2.10", "b")]));
    agent.wait_for(FRONTEND, &[BE2], SYNC);
    only(&c.tcp(&c.client, VIP, 100), "be2", 100, "be1 terminating, be2 ready");

    // be2 gone, be1 still terminating and serving: the fallback uses be1.
    c.api.apply_yaml_str(&slice("web", "web-1", "IPv4", &[be1_terminating]));
    agent.wait_for(FRONTEND, &[BE1], SYNC);
    only(&c.tcp(&c.client, VIP, 20), "be1", 20, "only a terminating endpoint left");

    let out = holder.wait_output(T);
    let held: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("hold output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(held["failed"], 0, "the established connection must keep working while be1 terminates: {held}");
    assert!(held["ok"].as_u64().unwrap_or(0) >= 30, "the connection should have run for the whole test: {held}");
    assert_eq!(held["by_id"].as_object().map(|m| m.len()), Some(1), "one connection, one backend: {held}");
    assert!(count(&held, "by_id", "be1") > 0, "the held connection went to be1: {held}");
}

#[test]
fn dual_stack_service_through_the_api_on_both_families() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let svc = service_yaml(
        "dual",
        &["198.19.0.30", "2001:db8:2::30"],
        &[SvcPort { name: "http", port: 80, target: "8080", proto: "TCP" }],
    );
    let svc = svc.replace("spec:\n", "spec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n");
    c.api.apply_yaml_str(&format!(
        "{svc}---\n{}---\n{}",
        slice("dual", "dual-4", "IPv4", &[e("198.18.1.10", "a")]),
        slice("dual", "dual-6", "IPv6", &[e("2001:db8:1:2::10", "b")])
    ));
    let agent = c.agent();
    agent.wait_for("198.19.0.30:80/TCP", &[BE1], SYNC);
    agent.wait_for("[2001:db8:2::30]:80/TCP", &["[2001:db8:1:2::10]:8080"], SYNC);
    let v4 = c.tcp(&c.client, "198.19.0.30:80", 20);
    only(&v4, "be1", 20, "IPv4 ClusterIP");
    let v6 = c.tcp(&c.client, "[2001:db8:2::30]:80", 20);
    only(&v6, "be2", 20, "IPv6 ClusterIP");
    assert_eq!(count(&v6, "peer_names", "[2001:db8:2::30]:80"), 20, "getpeername() must show the v6 VIP: {v6}");
    assert_eq!(count(&v6, "seen_src", "2001:db8:1:1::5"), 20, "be2 must see the client's IPv6 address: {v6}");

    // The IPv6 slice changes alone: the IPv4 frontend is untouched.
    c.api.apply_yaml_str(&slice("dual", "dual-6", "IPv6", &[e("2001:db8:1:1::10", "a")]));
    agent.wait_for("[2001:db8:2::30]:80/TCP", &["[2001:db8:1:1::10]:8080"], SYNC);
    only(&c.tcp(&c.client, "[2001:db8:2::30]:80", 20), "be1", 20, "IPv6 ClusterIP after the v6 slice changed");
    only(&c.tcp(&c.client, "198.19.0.30:80", 20), "be1", 20, "IPv4 ClusterIP unchanged");
}

#[test]
fn new_connections_never_fail_while_the_api_server_is_down_and_changes_after_it_returns_apply() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    c.api.apply_yaml_str(&format!(
        "{}---\n{}",
        web(""),
        slice("web", "web-1", "IPv4", &[e("198.18.1.10", "a"), e("198.18.2.10", "b")])
    ));
    let agent = c.agent();
    agent.wait_for(FRONTEND, &[BE1, BE2], SYNC);

    // A new connection every 10 ms for 6 s; the API server is gone for 3 s of it.
    let mut stream = Command::new(workspace_bin("sluice-probe"));
    stream.args(["stream", VIP, "--interval-ms", "10", "--duration-ms", "6000"]);
    let streamer = c.topo.spawn_in_pod(&c.client, stream);
    std::thread::sleep(Duration::from_millis(1000));
    c.api.stop();
    std::thread::sleep(Duration::from_millis(3000));
    c.api.resume();
    let out = streamer.wait_output(T);
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stream output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert!(result["ok"].as_u64().unwrap_or(0) > 100, "the stream should have run: {result}");
    assert_eq!(result["failed"], 0, "no connection may fail while the API server is down: {result}");
    assert!(agent.proc.try_wait().is_none(), "the agent must survive the outage: {}", agent.proc.stderr());
    agent.wait_for(FRONTEND, &[BE1, BE2], SYNC);

    // After the outage the agent follows changes again.
    c.api.apply_yaml_str(&slice("web", "web-1", "IPv4", &[e("198.18.2.10", "b")]));
    agent.wait_for(FRONTEND, &[BE2], SYNC);
    only(&c.tcp(&c.client, VIP, 50), "be2", 50, "the change made after the API server returned");
}

#[test]
fn a_relist_after_a_missed_delete_removes_the_stale_backend() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    c.api.apply_yaml_str(&format!(
        "{}---\n{}---\n{}",
        web(""),
        slice("web", "web-1", "IPv4", &[e("198.18.1.10", "a")]),
        slice("web", "web-2", "IPv4", &[e("198.18.2.10", "b")])
    ));
    let agent = c.agent();
    agent.wait_for(FRONTEND, &[BE1, BE2], SYNC);

    // While the agent cannot watch, web-2 is deleted and the history that
    // would have told it so is compacted away: its watch resumes into 410
    // Gone, and only the relist can reveal the delete.
    c.api.stop();
    c.api.delete::<EndpointSlice>(Some("default"), "web-2");
    c.api.compact();
    let lists_before = c.api.list_requests();
    c.api.resume();
    agent.wait_for(FRONTEND, &[BE1], SYNC);
    assert!(c.api.list_requests() > lists_before, "the agent should have relisted after 410 Gone");
    only(&c.tcp(&c.client, VIP, 50), "be1", 50, "after the relist the deleted slice's backend is gone");
}
