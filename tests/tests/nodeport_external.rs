//! End-to-end tests of traffic from outside the cluster (NodePort,
//! LoadBalancer IPs, externalTrafficPolicy, source ranges, rejects, Maglev)
//! through `sluice-proxy --external-interfaces eth0` on two node namespaces.
//! Need root; skipped otherwise. tc programs attach only to `eth0` inside the
//! node namespaces these tests create.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{in_netns, require_root, workspace_bin, Node, Outside, Pod, Proc, Topology};

const T: Duration = Duration::from_secs(20);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const NODE_A2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
const LB_RANGED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 201);
/// A LoadBalancer IP of a Service without endpoints.
const LB_EMPTY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 202);

struct Cluster {
    topo: Topology,
    a: Node,
    b: Node,
    pods: Vec<Pod>,
    out: Outside,
    out2: Outside,
    manifests: PathBuf,
    agents: Vec<Proc>,
    _servers: Vec<Proc>,
}

fn probe() -> Command {
    Command::new(workspace_bin("sluice-probe"))
}

/// Two nodes, pods p1 (a), p2 (b), p3 (a), p4 (b) serving TCP 8080 / UDP
/// 8081, two outside clients, LB IPs routed to node a.
fn cluster() -> Cluster {
    let mut topo = Topology::new();
    let a = topo.add_node("a", NODE_A);
    let b = topo.add_node("b", NODE_B);
    tests::ip_in(&a.netns, &["addr", "add", &format!("{NODE_A2}/24"), "dev", "eth0"]).expect("second node address");
    let pods = vec![
        topo.add_pod(&a, "p1", Ipv4Addr::new(198, 18, 1, 10), None),
        topo.add_pod(&b, "p2", Ipv4Addr::new(198, 18, 2, 10), None),
        topo.add_pod(&a, "p3", Ipv4Addr::new(198, 18, 1, 11), None),
        topo.add_pod(&b, "p4", Ipv4Addr::new(198, 18, 2, 11), None),
    ];
    topo.route_pod_cidrs(&[(&a, "198.18.1.0/24", None), (&b, "198.18.2.0/24", None)]);
    let out = topo.add_outside("o1", CLIENT);
    let out2 = topo.add_outside("o2", CLIENT2);
    for o in [&out, &out2] {
        for lb in [LB_IP, LB_RANGED, LB_EMPTY] {
            tests::ip_in(&o.netns, &["route", "add", &format!("{lb}/32"), "via", &NODE_A.to_string()]).expect("LB route");
        }
    }
    let mut servers = Vec::new();
    for p in &pods {
        let mut cmd = probe();
        cmd.args(["serve", "--id", &p.name, "--tcp", "8080", "--udp", "8081", "--max-lifetime-s", "300"]);
        let s = topo.spawn_in_pod(p, cmd);
        assert!(s.wait_for_stdout("ready", T), "server {} not ready: {}", p.name, s.stderr());
        servers.push(s);
    }
    let manifests = topo.scratch("manifests");
    Cluster { topo, a, b, pods, out, out2, manifests, agents: Vec::new(), _servers: servers }
}

/// A Service (NodePort or LoadBalancer) with TCP 80->8080 and UDP 81->8081 on `node_port`.
fn service(name: &str, ty: &str, node_port: u16, extra_spec: &str, status: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: {ty}\n  clusterIP: 198.19.0.{np}\n{extra_spec}  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, nodePort: {node_port}, protocol: TCP}}\n  - {{name: udp, port: 81, targetPort: 8081, nodePort: {node_port}, protocol: UDP}}\n{status}---\n",
        np = node_port % 250
    )
}

/// An EndpointSlice for `name` with (pod, node, ready) endpoints.
fn slice(name: &str, eps: &[(&Pod, bool)]) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports:\n- {{name: tcp, port: 8080, protocol: TCP}}\n- {{name: udp, port: 8081, protocol: UDP}}\nendpoints:\n"
    );
    if eps.is_empty() {
        s = s.replace("endpoints:\n", "endpoints: []\n");
    }
    for (p, ready) in eps {
        s.push_str(&format!("- {{addresses: [{}], nodeName: {}, conditions: {{ready: {ready}}}}}\n", p.ip, p.node));
    }
    s.push_str("---\n");
    s
}

fn write_manifests(dir: &Path, file: &str, text: &str) {
    // Write-then-rename, so the watcher never reads half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, dir.join(file)).expect("rename manifest");
}

fn start_agents(c: &mut Cluster, extra: &[&str]) {
    for node in [c.a.clone(), c.b.clone()] {
        let agent = start_agent(c, &node, extra);
        c.agents.push(agent);
    }
}

/// One node's agent, started and checked as [`start_agents`] does.
fn start_agent(c: &mut Cluster, node: &Node, extra: &[&str]) -> Proc {
    let bpffs = c.topo.bpffs();
    {
        let mut cmd = Command::new(workspace_bin("sluice-proxy"));
        cmd.env("RUST_LOG", "info,proxy_user=debug")
            .arg("run")
            .arg("--manifests")
            .arg(&c.manifests)
            .args(["--node-name", &node.name])
            .arg("--cgroup")
            .arg(&node.cgroup)
            .arg("--bpffs")
            .arg(bpffs.join(&node.name))
            .args(["--external-interfaces", "eth0"])
            .args(extra);
        let agent = c.topo.spawn_in_netns(&node.netns, None, cmd);
        assert!(
            agent.wait_for_stderr("external datapath on", T),
            "agent on {} did not start the external datapath: {}",
            node.name,
            agent.stderr()
        );
        // The nodes' eth0 are veths: replies and cross-node packets bounced
        // back out of eth0 go to its peer directly (bpf_redirect_peer), so
        // every test here runs that path.
        assert!(agent.stderr().contains("peer_redirect=true"), "eth0 not seen as a veth: {}", agent.stderr());
        agent
    }
}

fn json_of(out: &std::process::Output, what: &str) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{what}: stdout is not JSON ({e}): {} / stderr {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn tcp_from(c: &Cluster, o: &Outside, addr: SocketAddr, count: u32, timeout_ms: u32) -> Value {
    let mut cmd = probe();
    cmd.args(["tcp", &addr.to_string(), "--count", &count.to_string(), "--timeout-ms", &timeout_ms.to_string()]);
    json_of(&c.topo.run_in_outside(o, cmd, T), &format!("tcp {addr}"))
}

fn udp_from(c: &Cluster, o: &Outside, addr: SocketAddr, count: u32, connected: bool) -> Value {
    let mut cmd = probe();
    cmd.args(["udp", &addr.to_string(), "--count", &count.to_string(), "--timeout-ms", "1000"]);
    if connected {
        cmd.arg("--connected");
    }
    json_of(&c.topo.run_in_outside(o, cmd, T), &format!("udp {addr}"))
}

/// Polls `f` (at most 40 tries, 250 ms apart) until it returns Some.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..40 {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what}: never happened; last: {last}");
}

fn ok_count(v: &Value) -> u64 {
    v["ok"].as_u64().unwrap_or(0)
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn dump(c: &Cluster) -> String {
    c.agents.iter().map(|a| a.stderr()).collect::<Vec<_>>().join("\n----\n")
}

#[test]
fn nodeport_and_lb_ip_reach_local_and_remote_backends_with_the_right_reply_source() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let (p1, p2) = (c.pods[0].clone(), c.pods[1].clone());
    let status = format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n");
    write_manifests(
        &c.manifests,
        "web.yaml",
        &(service("web", "LoadBalancer", 30080, "", &status) + &slice("web", &[(&p1, true), (&p2, true)])),
    );
    start_agents(&mut c, &[]);

    for (front, want_peer) in [(sa(NODE_A, 30080), "192.0.2.1:30080"), (sa(NODE_B, 30080), "192.0.2.2:30080"), (sa(LB_IP, 80), "203.0.113.200:80")] {
        let v = eventually(&format!("TCP to {front} reaching both backends"), || {
            let v = tcp_from(&c, &c.out, front, 24, 2000);
            let ids = keys(&v["by_id"]);
            (ok_count(&v) == 24 && ids == ["p1", "p2"]).then_some(v.clone()).ok_or_else(|| format!("{v}"))
        });
        assert_eq!(keys(&v["peer_names"]), [want_peer], "the client must see the frontend as its peer: {v}");
        // A backend on the node that got the packet sees the client; one on
        // the other node sees the SNAT address of the receiving node.
        let srcs = keys(&v["seen_src"]);
        let receiving = if front.ip() == std::net::IpAddr::V4(NODE_B) { NODE_B } else { NODE_A };
        let mut want = vec![CLIENT.to_string(), receiving.to_string()];
        want.sort();
        assert_eq!(srcs, want, "sources seen by backends via {front}: {v}");

        let u = udp_from(&c, &c.out, SocketAddr::new(front.ip(), if front.port() == 80 { 81 } else { 30080 }), 12, false);
        assert_eq!(ok_count(&u), 12, "UDP via {front}: {u}");
        assert_eq!(keys(&u["reply_from"]).len(), 1, "UDP replies must come from the frontend: {u}");
        assert!(keys(&u["reply_from"])[0].starts_with(&front.ip().to_string()), "{u}");
    }

    // Pods and the host reach the NodePort through socket LB.
    let mut cmd = probe();
    cmd.args(["tcp", "192.0.2.2:30080", "--count", "6"]);
    let v = json_of(&c.topo.run_in_pod(&p1, cmd, T), "pod -> NodePort");
    assert_eq!(ok_count(&v), 6, "a pod reaching a NodePort: {v}");
    let mut cmd = probe();
    cmd.args(["tcp", "203.0.113.200:80", "--count", "6"]);
    let v = json_of(&c.topo.run_in_node(&c.a, cmd, T), "host -> LB IP");
    assert_eq!(ok_count(&v), 6, "the host reaching an LB IP: {v}");

    // bind() to a NodePort on the node fails.
    let mut cmd = probe();
    cmd.args(["serve", "--id", "x", "--tcp", "30080", "--bind", "0.0.0.0", "--max-lifetime-s", "2"]);
    let out = c.topo.run_in_node(&c.a, cmd, T);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("os error 98"), "bind to a NodePort must fail with EADDRINUSE; got {:?}: {err}", out.status);
    let _ = dump(&c);
}

#[test]
fn long_lived_tcp_flows_keep_their_backend_across_an_endpoint_change() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let (p1, p2, p3, p4) = (c.pods[0].clone(), c.pods[1].clone(), c.pods[2].clone(), c.pods[3].clone());
    let svc = service("web", "NodePort", 30080, "", "");
    write_manifests(&c.manifests, "web.yaml", &(svc.clone() + &slice("web", &[(&p1, true), (&p2, true)])));
    start_agents(&mut c, &[]);
    eventually("NodePort serving", || {
        let v = tcp_from(&c, &c.out, sa(NODE_A, 30080), 4, 1000);
        (ok_count(&v) == 4).then_some(()).ok_or_else(|| format!("{v}"))
    });
    let netns = c.out.netns.clone();
    let manifests = c.manifests.clone();
    let replies = in_netns(&netns, || {
        // Eight connections open before the change; they talk after it.
        let conns: Vec<TcpStream> = (0..8)
            .map(|_| TcpStream::connect_timeout(&sa(NODE_A, 30080), Duration::from_secs(2)).expect("connect"))
            .collect();
        write_manifests(&manifests, "web.yaml", &(svc.clone() + &slice("web", &[(&p1, true), (&p2, true), (&p3, true), (&p4, true)])));
        std::thread::sleep(Duration::from_millis(2500));
        conns
            .into_iter()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.write_all(b"hi\n").map_err(|e| e.to_string())?;
                let mut buf = String::new();
                s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
                Ok::<String, String>(buf)
            })
            .collect::<Vec<_>>()
    })
    .expect("outside netns");
    for r in &replies {
        let r = r.as_ref().unwrap_or_else(|e| panic!("a flow broke across the endpoint change: {e}; all: {replies:?}\n{}", dump(&c)));
        assert!(r.starts_with("p1 ") || r.starts_with("p2 "), "flow answered by {r:?}: only p1/p2 existed when it started");
    }
    // New flows do follow the change.
    let v = eventually("new flows reaching the new endpoints", || {
        let v = tcp_from(&c, &c.out, sa(NODE_A, 30080), 32, 1000);
        (keys(&v["by_id"]).len() == 4).then_some(v.clone()).ok_or_else(|| format!("{v}"))
    });
    assert_eq!(ok_count(&v), 32, "{v}");
}

fn http_get(c: &Cluster, addr: SocketAddr) -> Result<(u16, String), String> {
    in_netns(&c.out.netns, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
        let code = buf.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad response {buf:?}"))?;
        let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        Ok((code, body))
    })
    .map_err(|e| e.to_string())?
}

#[test]
fn external_traffic_policy_local_keeps_the_client_ip_rejects_elsewhere_and_reports_health() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let (p1, p2, p3) = (c.pods[0].clone(), c.pods[1].clone(), c.pods[2].clone());
    let spec = "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32081\n";
    let svc = service("local", "NodePort", 30081, spec, "");
    write_manifests(&c.manifests, "local.yaml", &(svc.clone() + &slice("local", &[(&p1, true), (&p3, true)])));
    start_agents(&mut c, &[]);

    let v = eventually("ETP Local NodePort on node a", || {
        let v = tcp_from(&c, &c.out, sa(NODE_A, 30081), 16, 1000);
        (ok_count(&v) == 16).then_some(v.clone()).ok_or_else(|| format!("{v}"))
    });
    assert_eq!(keys(&v["by_id"]), ["p1", "p3"], "only local endpoints: {v}");
    assert_eq!(keys(&v["seen_src"]), [CLIENT.to_string()], "the client address must be preserved: {v}");

    let started = Instant::now();
    let v = tcp_from(&c, &c.out, sa(NODE_B, 30081), 3, 2000);
    let took = started.elapsed();
    assert_eq!(v["errors"]["ECONNREFUSED"].as_u64(), Some(3), "node b has no local endpoint and must reject: {v}");
    assert!(took < Duration::from_millis(1500), "the reject must be immediate, took {took:?}");

    let (code, body) = eventually("health check on a", || http_get(&c, sa(NODE_A, 32081)));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"localEndpoints\":2"), "{body}");
    let (code, body) = eventually("health check on b", || http_get(&c, sa(NODE_B, 32081)));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"localEndpoints\":0"), "{body}");

    // The endpoints move to node b: the answers flip.
    write_manifests(&c.manifests, "local.yaml", &(svc + &slice("local", &[(&p1, false), (&p2, true)])));
    eventually("health check flip", || {
        let a = http_get(&c, sa(NODE_A, 32081))?;
        let b = http_get(&c, sa(NODE_B, 32081))?;
        (a.0 == 503 && b.0 == 200).then_some(()).ok_or_else(|| format!("a {a:?} b {b:?}"))
    });
    let v = eventually("ETP Local NodePort on node b", || {
        let v = tcp_from(&c, &c.out, sa(NODE_B, 30081), 6, 1000);
        (ok_count(&v) == 6).then_some(v.clone()).ok_or_else(|| format!("{v}"))
    });
    assert_eq!(keys(&v["by_id"]), ["p2"], "{v}");
    assert_eq!(keys(&v["seen_src"]), [CLIENT.to_string()], "{v}");
}

#[test]
fn source_ranges_block_and_allow_and_frontends_without_endpoints_reject_at_once() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let (p1, p2) = (c.pods[0].clone(), c.pods[1].clone());
    let spec = format!("  loadBalancerSourceRanges: [{CLIENT}/32]\n");
    let status = format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_RANGED}}}]\n");
    let ranged = service("ranged", "LoadBalancer", 30083, &spec, &status) + &slice("ranged", &[(&p1, true), (&p2, true)]);
    let tcp_only = "apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 198.19.0.82\n  ports:\n  - {name: tcp, port: 80, targetPort: 8080, nodePort: 30082, protocol: TCP}\n---\n";
    let empty_slice = slice("empty", &[]);
    let lb_empty = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb-empty, namespace: default}}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: 198.19.0.83\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, nodePort: 30084, protocol: TCP}}\n  \
         - {{name: dns, port: 53, targetPort: 5353, nodePort: 30085, protocol: UDP}}\n\
         status:\n  loadBalancer:\n    ingress: [{{ip: {LB_EMPTY}}}]\n---\n"
    );
    write_manifests(&c.manifests, "svc.yaml", &(ranged + tcp_only + &empty_slice + &lb_empty));
    start_agents(&mut c, &[]);

    let v = eventually("allowed source reaching the LB IP", || {
        let v = tcp_from(&c, &c.out, sa(LB_RANGED, 80), 4, 1000);
        (ok_count(&v) == 4).then_some(v.clone()).ok_or_else(|| format!("{v}"))
    });
    assert_eq!(ok_count(&v), 4);
    let v = tcp_from(&c, &c.out2, sa(LB_RANGED, 80), 2, 800);
    assert_eq!(ok_count(&v), 0, "203.0.113.11 is outside loadBalancerSourceRanges: {v}");
    let v = tcp_from(&c, &c.out2, sa(NODE_A, 30083), 4, 1000);
    assert_eq!(ok_count(&v), 4, "source ranges must not restrict the NodePort: {v}");

    // Rejections are answers (RST, ICMP port unreachable): a dropped packet
    // would show as a timeout error instead.
    let refused = |v: &serde_json::Value| {
        v["errors"]["ECONNREFUSED"].as_u64().unwrap_or(0) + v["errors"]["ECONNRESET"].as_u64().unwrap_or(0)
    };
    let v = tcp_from(&c, &c.out, sa(NODE_A, 30082), 3, 2000);
    assert_eq!(refused(&v), 3, "no endpoints must reject TCP: {v}");
    let u = udp_from(&c, &c.out, sa(NODE_A, 30082), 2, true);
    assert_eq!(ok_count(&u), 0, "{u}");
    assert_eq!(u["errors"]["recv:ECONNREFUSED"].as_u64(), Some(2), "UDP to a TCP-only NodePort is rejected (ICMP port unreachable): {u}");

    // A LoadBalancer IP is not a node address: the stack would drop or
    // forward what its frontends do not take, so tc answers itself.
    let v = tcp_from(&c, &c.out, sa(LB_EMPTY, 80), 3, 2000);
    assert_eq!(refused(&v), 3, "an LB IP without endpoints must reject TCP: {v}");
    let u = udp_from(&c, &c.out, sa(LB_EMPTY, 53), 2, true);
    assert_eq!(u["errors"]["recv:ECONNREFUSED"].as_u64(), Some(2), "an LB IP without endpoints rejects UDP (ICMP port unreachable): {u}");
    let u = udp_from(&c, &c.out, sa(LB_RANGED, 80), 2, true);
    assert_eq!(u["errors"]["recv:ECONNREFUSED"].as_u64(), Some(2), "UDP to a TCP-only port of an LB IP is rejected: {u}");
    let v = tcp_from(&c, &c.out, sa(LB_RANGED, 81), 2, 2000);
    assert_eq!(refused(&v), 2, "a port the LB IP does not serve is rejected: {v}");
}

/// UDP request/replies from fixed client ports: port -> backend id.
fn udp_fixed_ports(c: &Cluster, to: SocketAddr, ports: std::ops::Range<u16>) -> Vec<(u16, String)> {
    in_netns(&c.out.netns, || {
        ports
            .map(|p| {
                let s = UdpSocket::bind((CLIENT, p)).expect("bind client port");
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.connect(to).unwrap();
                s.send(b"hi\n").unwrap();
                let mut buf = [0u8; 256];
                let n = s.recv(&mut buf).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                (p, text.split_whitespace().next().unwrap_or("none").to_owned())
            })
            .collect()
    })
    .expect("outside netns")
}

#[test]
fn maglev_picks_the_same_backend_on_every_node_and_a_removal_moves_only_its_flows() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let pods = c.pods.clone();
    let svc = service("mg", "NodePort", 30090, "", "");
    let all: Vec<(&Pod, bool)> = pods.iter().map(|p| (p, true)).collect();
    write_manifests(&c.manifests, "mg.yaml", &(svc.clone() + &slice("mg", &all)));
    start_agents(&mut c, &["--lb-algorithm", "maglev", "--maglev-table-size", "251"]);
    eventually("NodePort serving", || {
        let v = udp_from(&c, &c.out, sa(NODE_A, 30090), 4, false);
        (ok_count(&v) == 4).then_some(()).ok_or_else(|| format!("{v}"))
    });
    let via_a = udp_fixed_ports(&c, sa(NODE_A, 30090), 41000..41048);
    let via_b = udp_fixed_ports(&c, sa(NODE_B, 30090), 41000..41048);
    assert_eq!(via_a, via_b, "both nodes must pick the same backend for the same client tuple");
    let used: std::collections::BTreeSet<&str> = via_a.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(used.len(), 4, "48 flows should spread over the 4 backends: {via_a:?}");

    // Remove p4; flows to p1..p3 keep their backend on fresh tuples (another node address).
    let kept: Vec<(&Pod, bool)> = pods[..3].iter().map(|p| (p, true)).collect();
    write_manifests(&c.manifests, "mg.yaml", &(svc + &slice("mg", &kept)));
    let after = eventually("p4 gone from new flows", || {
        let r = udp_fixed_ports(&c, sa(NODE_A2, 30090), 41000..41048);
        (!r.iter().any(|(_, id)| id == "p4" || id == "none")).then_some(r.clone()).ok_or_else(|| format!("{r:?}"))
    });
    for ((port, before), (_, now)) in via_a.iter().zip(&after) {
        if before != "p4" {
            assert_eq!(before, now, "client port {port}: its backend {before} survived, the flow must stay on it");
        }
    }
}

/// Runs `program args` in `netns`, panicking with its output on failure.
fn must_run(c: &Cluster, netns: &str, program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = c.topo.run_in_netns(netns, None, cmd, T);
    assert!(out.status.success(), "{program} {args:?} in {netns}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The XDP program's per-CPU counter `slot` (0 forwarded, 1 passed on),
/// summed, read from node `node`'s pinned map with bpftool.
fn xdp_count(bpffs: &Path, node: &str, slot: u64) -> u64 {
    let map = bpffs.join(node).join("SLC_XDPSTAT");
    let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&map).output().expect("bpftool");
    assert!(out.status.success(), "bpftool map dump {}: {}", map.display(), String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    // Without BTF, bpftool prints keys and values as little-endian byte lists.
    let num = |bytes: &Value| -> u64 {
        bytes.as_array().map_or(0, |b| {
            b.iter().rev().fold(0, |acc, x| (acc << 8) | u64::from_str_radix(x.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16).unwrap_or(0))
        })
    };
    let entry = v.as_array().and_then(|a| a.iter().find(|e| num(&e["key"]) == slot)).unwrap_or_else(|| panic!("slot {slot}: {v}"));
    entry["values"].as_array().map_or(0, |cpus| cpus.iter().map(|c| num(&c["value"])).sum())
}

/// `--external-xdp`: node a's XDP program forwards the packets of NodePort
/// flows tc admitted — client to the backend on node b and the replies
/// back — with XDP_TX, while new flows still get their backend (and SNAT)
/// from tc; TCP, bulk TCP and UDP all see the right peer. The frames are
/// made wire-like first: on veths a sender may leave checksums to "the
/// NIC" (CHECKSUM_PARTIAL), which a real wire never carries and XDP cannot
/// see, and a veth only takes XDP_TX frames into a peer with NAPI (GRO on).
#[test]
fn xdp_fast_path_forwards_the_packets_of_tracked_flows() {
    if !require_root() {
        return;
    }
    let mut c = cluster();
    let p2 = c.pods[1].clone();
    let ul = c.topo.underlay_netns().to_string();
    must_run(&c, &c.out.netns.clone(), "ethtool", &["-K", "eth0", "tx", "off", "sg", "off", "gso", "off"]);
    must_run(&c, &p2.netns, "ethtool", &["-K", "eth0", "tx", "off", "sg", "off", "gso", "off"]);
    // NAPI (GRO) on the switch port facing node a, and only there: GRO on
    // the port of a sender would merge its frames into a CHECKSUM_PARTIAL
    // super-packet that node a's port, which cannot pass GSO packets to an
    // XDP device, would split again into frames without checksums.
    let ports = must_run(&c, &ul, "ip", &["-o", "link", "show", "master", "br0"]);
    let port_a = ports
        .lines()
        .find(|l| l.contains(&format!("link-netns {} ", c.a.netns)) || l.ends_with(&format!("link-netns {}", c.a.netns)))
        .and_then(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no switch port of node a in {ports}"));
    must_run(&c, &ul, "ethtool", &["-K", &port_a, "gro", "off"]);
    must_run(&c, &ul, "ethtool", &["-K", &port_a, "gro", "on"]);
    let bulk = "apiVersion: v1\nkind: Service\nmetadata: {name: bulk, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 198.19.0.90\n  ports:\n  - {name: tcp, port: 5201, targetPort: 5201, nodePort: 30090, protocol: TCP}\n---\n";
    write_manifests(
        &c.manifests,
        "web.yaml",
        &(service("web", "NodePort", 30080, "", "") + &slice("web", &[(&p2, true)]) + bulk + &slice("bulk", &[(&p2, true)]).replace("name: tcp, port: 8080", "name: tcp, port: 5201")),
    );
    start_agents(&mut c, &["--external-xdp", "--keep-on-exit"]);
    assert!(c.agents[0].stderr().contains("attached (native XDP)"), "{}", c.agents[0].stderr());

    let v = eventually("TCP to the NodePort through node a", || {
        let v = tcp_from(&c, &c.out, sa(NODE_A, 30080), 8, 1000);
        (ok_count(&v) == 8).then_some(v.clone()).ok_or_else(|| format!("{v}"))
    });
    assert_eq!(keys(&v["peer_names"]), ["192.0.2.1:30080"], "{v}");
    assert_eq!(keys(&v["seen_src"]), [NODE_A.to_string()], "SNAT to node a for the backend on node b: {v}");
    let u = udp_from(&c, &c.out, sa(NODE_A, 30080), 12, false);
    assert_eq!(ok_count(&u), 12, "UDP through XDP: {u}");
    assert!(keys(&u["reply_from"]).iter().all(|k| k.starts_with("192.0.2.1:30080")), "{u}");

    let bpffs = c.topo.bpffs();
    let before = xdp_count(&bpffs, "a", 0);
    let mut srv = Command::new("iperf3");
    srv.args(["-s", "-1", "-p", "5201", "--forceflush"]);
    let srv = c.topo.spawn_in_pod(&p2, srv);
    assert!(srv.wait_for_stdout("listening", T), "iperf3 server: {}", srv.stderr());
    let mut cli = Command::new("iperf3");
    cli.args(["-c", &NODE_A.to_string(), "-p", "30090", "-n", "20M", "-J"]);
    let cli = c.topo.run_in_outside(&c.out, cli, T);
    let report = json_of(&cli, "iperf3");
    assert!(report["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0) >= 20_000_000, "{report}");
    assert!(report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 0, "{report}");
    // 20 MB in segments of at most 1448 bytes, plus the ACKs coming back:
    // most of them must have gone through XDP rather than tc.
    let forwarded = xdp_count(&bpffs, "a", 0) - before;
    assert!(forwarded > 10_000, "XDP forwarded only {forwarded} packets of a 20 MB transfer; passed {}\n{}", xdp_count(&bpffs, "a", 1), dump(&c));

    // An upgrade: the agent exits keeping the dataplane, and its successor
    // swaps its program in behind the pinned XDP link.
    let a = c.a.clone();
    let xdp_on = |c: &Cluster| must_run(c, &c.a.netns, "ip", &["link", "show", "eth0"]).contains("prog/xdp");
    c.agents[0].signal(libc::SIGTERM);
    assert!(c.agents[0].wait_timeout(Duration::from_secs(10)).is_some(), "agent a did not exit on SIGTERM");
    assert!(xdp_on(&c), "--keep-on-exit leaves the XDP program attached");
    let next = start_agent(&mut c, &a, &["--external-xdp", "--keep-on-exit"]);
    assert!(next.stderr().contains("replaced program behind pinned XDP link"), "{}", next.stderr());
    let v = tcp_from(&c, &c.out, sa(NODE_A, 30080), 8, 2000);
    assert_eq!(ok_count(&v), 8, "after the swap: {v}");
    // Without the flag, the next agent takes XDP off and tc serves alone.
    next.signal(libc::SIGTERM);
    assert!(next.wait_timeout(Duration::from_secs(10)).is_some(), "agent a did not exit on SIGTERM");
    let plain = start_agent(&mut c, &a, &[]);
    assert!(plain.stderr().contains("XDP fast path off: detached"), "{}", plain.stderr());
    assert!(!xdp_on(&c), "the XDP link is gone");
    let v = tcp_from(&c, &c.out, sa(NODE_A, 30080), 8, 2000);
    assert_eq!(ok_count(&v), 8, "tc alone: {v}");
    c.agents.push(plain);
}
