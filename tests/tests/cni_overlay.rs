//! sluice-cni daemon end to end (needs root): nodes in namespaces on one
//! underlay, a daemon per node reading Node manifests, pods added with the
//! conflist the daemon wrote, traffic across nodes over VXLAN and host-gw.

mod cni_common;

use std::fs;
use std::net::Ipv4Addr;
use std::process::Command;

use cni_common::*;
use tests::{require_root, Node, Topology};

struct Cluster {
    topo: Topology,
    nodes: Vec<(Node, NodeDirs, String)>,
    manifests: std::path::PathBuf,
    _daemons: Vec<tests::Proc>,
}

/// `specs`: (name, underlay address, prefix length, pod CIDR). Nodes on a
/// shorter-than-/24 prefix still reach each other through an on-link /24 route,
/// so "another subnet" differs only in what the daemon sees. `ebpf`: the
/// daemons run with `--host-routing ebpf`.
fn cluster(specs: &[(&str, Ipv4Addr, u8, &str)], backend: &str, ebpf: bool) -> Cluster {
    let mut topo = Topology::new();
    let manifests = topo.scratch("manifests");
    let mut nodes = Vec::new();
    for (name, addr, prefix, cidr) in specs {
        let node = topo.add_node(name, *addr);
        if *prefix != 24 {
            ip(&node.netns, &["addr", "del", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&node.netns, &["addr", "add", &format!("{addr}/{prefix}"), "dev", "eth0"]);
            ip(&node.netns, &["route", "add", "192.0.2.0/24", "dev", "eth0", "scope", "link"]);
        }
        fs::write(manifests.join(format!("node-{name}.yaml")), node_yaml(name, *addr, cidr)).unwrap();
        let dirs = NodeDirs::new(&topo, name);
        nodes.push((node, dirs, (*cidr).to_owned()));
    }
    let mut daemons = Vec::new();
    for (node, dirs, _) in &nodes {
        let extra: Vec<std::ffi::OsString> = if ebpf {
            vec!["--host-routing".into(), "ebpf".into(), "--bpffs".into(), topo.bpffs().join(&node.name).into()]
        } else {
            Vec::new()
        };
        daemons.push(start_daemon_with(&topo, node, backend, &manifests, dirs, &extra));
    }
    for ((node, dirs, _), d) in nodes.iter().zip(&daemons) {
        eventually(&format!("daemon on {} publishes its subnet (stderr: see below)", node.name), || {
            dirs.state_dir.join("subnet.json").exists() && dirs.conf_dir.join("10-sluice.conflist").exists()
                || d.try_wait().is_some_and(|s| panic!("daemon on {} exited {s:?}: {}", node.name, d.stderr()))
        });
    }
    Cluster { topo, nodes, manifests, _daemons: daemons }
}

/// Adds one pod to node `i` with the daemon's conflist; returns (netns, IPv4).
fn add_pod(c: &Cluster, ns: &mut PodNetns, i: usize, name: &str) -> (String, String) {
    let (node, dirs, _) = &c.nodes[i];
    let netns = ns.add(&format!("{}-{name}", c.topo.id()));
    let a = Attach { node, container: name.into(), netns: netns.clone(), ifname: "eth0".into() };
    let r = a.run("ADD", &dirs.plugin_conf()).expect_ok(&format!("ADD {name}")).json();
    let addr = r["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").to_owned();
    (netns, addr)
}

/// A 2 MB iperf3 transfer from pod netns `client` to `server_ip` in pod netns
/// `server`: it completes, both ends of each handshake advertise the full MSS
/// of the pod MTU (MTU - 40, seen in the client pod after crossing the path:
/// nothing clamps it), the live connections run at that MSS (`ss -tni`), and
/// no smaller path MTU is learnt on the way.
///
/// Two figures, both right: the MSS option on the SYN and SYN/ACK is MTU - 40
/// (1410 over VXLAN, 1460 host-gw); what `ss -tni` shows as `mss:` (and
/// iperf3 as `tcp_mss_default`, from TCP_MAXSEG) is the sender's effective
/// segment size, 12 bytes less because Linux negotiates TCP timestamps by
/// default (1398 / 1448), next to `pmtu:` = the pod MTU.
fn full_mss_transfer(c: &Cluster, client: &str, server: &str, server_ip: &str, mtu: u64) {
    let (syn_mss, eff_mss) = (mtu - 40, mtu - 40 - 12);
    let mut srv = Command::new("iperf3");
    srv.args(["-s", "-1", "-p", "5201", "--forceflush"]);
    let srv = c.topo.spawn_in_netns(server, None, srv);
    assert!(srv.wait_for_stdout("listening", T), "iperf3 server in {server}: {}", srv.stderr());
    // The handshakes (iperf3's control and data connections: 2 SYNs, 2 SYN/ACKs).
    let mut dump = Command::new("tcpdump");
    dump.args(["-l", "-nn", "-v", "-c", "4", "-i", "eth0"])
        .arg(format!("host {server_ip} and tcp port 5201 and tcp[tcpflags] & tcp-syn != 0"));
    let dump = c.topo.spawn_in_netns(client, None, dump);
    assert!(dump.wait_for_stderr("listening on", T), "tcpdump in {client}: {}", dump.stderr());
    // Paced to about a second (2 MB at 16 Mbit/s) so `ss` sees the connections up.
    let mut cli = Command::new("iperf3");
    cli.args(["-c", server_ip, "-p", "5201", "-n", "2M", "-b", "16M", "-J"]);
    let cli = c.topo.spawn_in_netns(client, None, cli);
    let mut seen = None;
    for _ in 0..40 {
        let mut ss = Command::new("ss");
        ss.args(["-tni", "state", "established", "dst", server_ip, "dport", "=", ":5201"]);
        let text = String::from_utf8_lossy(&c.topo.run_in_netns(client, None, ss, T).stdout).into_owned();
        // One info line (indented, after its socket line) per connection.
        let infos: Vec<Vec<String>> = text
            .lines()
            .filter(|l| l.starts_with(char::is_whitespace) && l.contains(" mss:"))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect();
        if !infos.is_empty() {
            seen = Some((text, infos));
            break;
        }
        if cli.try_wait().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (ss_text, infos) = seen.unwrap_or_else(|| panic!("ss never showed {client} -> {server_ip}:5201 established"));
    for info in &infos {
        assert!(info.contains(&format!("mss:{eff_mss}")), "ss -tni in {client}: want mss:{eff_mss} (MTU {mtu} - 40 - 12 timestamps):\n{ss_text}");
        assert!(info.contains(&format!("pmtu:{mtu}")), "ss -tni in {client}: want pmtu:{mtu}:\n{ss_text}");
    }
    let out = cli.wait_output(T);
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 output ({e}): {text}"));
    assert!(json.get("error").is_none(), "iperf3 {client} -> {server_ip}: {text}");
    assert_eq!(json["start"]["tcp_mss_default"].as_u64(), Some(eff_mss), "MSS {client} -> {server_ip}");
    // (The receiver's count in the client's report can stop short of a
    // transfer this short: iperf3 ends its interval at TEST_END.)
    assert!(out.status.success() && json["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0) >= 2 << 20, "transfer incomplete: {text}");
    // tcpdump has its 4 packets by now; the bound only matters on failure.
    let dump = dump.wait_output(std::time::Duration::from_secs(3));
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    let option = format!("mss {syn_mss},");
    let (syns, synacks): (Vec<&str>, Vec<&str>) =
        dump.lines().filter(|l| l.contains("Flags [S")).partition(|l| l.contains("Flags [S]"));
    assert!(!syns.is_empty() && !synacks.is_empty(), "no SYN or SYN/ACK captured in {client}:\n{dump}");
    assert!(syns.iter().chain(&synacks).all(|l| l.contains(&option)), "want the MSS option {syn_mss} both ways:\n{dump}");
    let route = ip(client, &["route", "get", server_ip]);
    assert!(!route.contains(" mtu "), "a smaller path MTU was learnt: {route}");
}

/// A pod reaches itself through a Service-style DNAT on its node, as with
/// kube-proxy's iptables mode when a pod calls its own Service (hairpin):
/// out of its veth, DNATed back to itself, masqueraded (so the reply also
/// goes through the node and is translated back). The rules' counters show
/// the connection did take that path.
fn hairpin(c: &Cluster, node: usize, pod: &str, pod_ip: &str) {
    let rules = format!(
        "table ip hairpin {{\n\
           chain pre {{ type nat hook prerouting priority dstnat; ip daddr 198.51.100.10 tcp dport 80 counter dnat to {pod_ip}:8080; }}\n\
           chain post {{ type nat hook postrouting priority srcnat; ip saddr {pod_ip} ip daddr {pod_ip} counter masquerade; }}\n\
         }}\n"
    );
    let file = c.topo.scratch("hairpin").join("rules.nft");
    fs::write(&file, rules).unwrap();
    let mut nft = Command::new("nft");
    nft.arg("-f").arg(&file);
    let out = c.topo.run_in_node(&c.nodes[node].0, nft, T);
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    let mut srv = Command::new("iperf3");
    srv.args(["-s", "-1", "-p", "8080", "--forceflush"]);
    let srv = c.topo.spawn_in_netns(pod, None, srv);
    assert!(srv.wait_for_stdout("listening", T), "iperf3 server in {pod}: {}", srv.stderr());
    let mut cli = Command::new("iperf3");
    cli.args(["-c", "198.51.100.10", "-p", "80", "-n", "100K", "-J"]);
    let out = c.topo.run_in_netns(pod, None, cli, T);
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 output ({e}): {text}"));
    assert!(
        out.status.success() && json.get("error").is_none() && json["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0) >= 100 << 10,
        "hairpin {pod} -> 198.51.100.10:80 -> itself: {text}"
    );
    let mut list = Command::new("nft");
    list.args(["list", "table", "ip", "hairpin"]);
    let listed = String::from_utf8_lossy(&c.topo.run_in_node(&c.nodes[node].0, list, T).stdout).into_owned();
    let hits = listed.lines().filter(|l| l.contains("counter packets") && !l.contains("counter packets 0 ")).count();
    assert_eq!(hits, 2, "both the DNAT and the masquerade rule matched:\n{listed}");
}

#[test]
fn vxlan_pods_reach_each_other_across_nodes_with_full_size_packets() {
    if !require_root() {
        return;
    }
    // STATUS before any daemon: 50.
    {
        let mut topo = Topology::new();
        let node = topo.add_node("z", Ipv4Addr::new(192, 0, 2, 9));
        let dirs = NodeDirs::new(&topo, "z");
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni",
            "subnetFile": dirs.state_dir.join("subnet.json"), "dataDir": dirs.ipam_dir,
        });
        invoke(&cni_bin(), &node.netns, &[("CNI_COMMAND", "STATUS")], &conf.to_string())
            .expect_code(50, "STATUS before the daemon published the subnet");
        let manifests = topo.scratch("m");
        fs::write(manifests.join("z.yaml"), node_yaml("z", node.underlay, "198.18.9.0/24")).unwrap();
        let d = start_daemon(&topo, &node, "vxlan", &manifests, &dirs);
        eventually("subnet published", || dirs.state_dir.join("subnet.json").exists());
        invoke(&cni_bin(), &node.netns, &[("CNI_COMMAND", "STATUS")], &conf.to_string())
            .expect_ok(&format!("STATUS after publication; daemon: {}", d.stderr()));
    }

    let c = cluster(
        &[("a", Ipv4Addr::new(192, 0, 2, 1), 24, "198.18.1.0/24"), ("b", Ipv4Addr::new(192, 0, 2, 2), 24, "198.18.2.0/24")],
        "vxlan",
        false,
    );
    let mut ns = PodNetns::new();
    let (a1, a1_ip) = add_pod(&c, &mut ns, 0, "a1");
    let (_a2, a2_ip) = add_pod(&c, &mut ns, 0, "a2");
    let (b1, b1_ip) = add_pod(&c, &mut ns, 1, "b1");
    assert!(ip(&a1, &["link", "show", "eth0"]).contains("mtu 1450"), "VXLAN pod MTU is underlay - 50");

    // The VXLAN device: VNI 1, port 8472, MAC derived from the node address.
    let dev = ip(&c.nodes[0].0.netns, &["-d", "link", "show", "sluice.vxlan"]);
    assert!(dev.contains("vxlan id 1") && dev.contains("dstport 8472"), "{dev}");
    assert!(dev.contains("0e:5c:c0:00:02:01"), "VTEP MAC derived from 192.0.2.1: {dev}");
    let fdb = ip(&c.nodes[0].0.netns, &["-d", "neigh", "show", "dev", "sluice.vxlan", "nud", "permanent"]);
    assert!(fdb.contains("0e:5c:c0:00:02:02"), "neighbour for b's VTEP: {fdb}");

    ping_eventually(&c.topo, &a1, &a2_ip, &[]);
    ping_eventually(&c.topo, &a1, &b1_ip, &[]);
    ping(&c.topo, &b1, &a1_ip, &[]).unwrap();
    // 1400 bytes of payload with DF set cross VXLAN (1428 < pod MTU 1450).
    ping(&c.topo, &a1, &b1_ip, &["-M", "do", "-s", "1400"]).unwrap();
    // ... and one above the pod MTU does not fragment silently.
    assert!(ping(&c.topo, &a1, &b1_ip, &["-M", "do", "-s", "1430"]).is_err());
    // TCP across VXLAN runs at the full MSS of the 1450-byte pod MTU.
    full_mss_transfer(&c, &a1, &b1, &b1_ip, 1450);
    // A pod reaches itself through its node (hairpin).
    hairpin(&c, 0, &a1, &a1_ip);

    // Masquerade only in the node namespace, for traffic leaving the cluster range.
    let rules = c.topo.run_in_node(&c.nodes[0].0, {
        let mut cmd = std::process::Command::new("nft");
        cmd.args(["list", "table", "inet", "sluice"]);
        cmd
    }, T);
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert!(rules.contains("masquerade") && rules.contains("198.18.0.0/16"), "{rules}");
    // Pod -> another node's underlay address leaves the cluster range: masqueraded, works.
    ping(&c.topo, &a1, "192.0.2.2", &[]).unwrap();

    // Node b leaves: a drops its route, neighbour and FDB entry.
    fs::remove_file(c.manifests.join("node-b.yaml")).unwrap();
    let a_ns = c.nodes[0].0.netns.clone();
    eventually("a removes b's route", || !ip(&a_ns, &["route"]).contains("198.18.2.0/24"));
    eventually("a removes b's FDB entry", || !ip(&a_ns, &["neigh", "show", "dev", "sluice.vxlan"]).contains("0e:5c:c0:00:02:02")
        && !std::process::Command::new("bridge").args(["-n", &a_ns, "fdb", "show", "dev", "sluice.vxlan"]).output().map(|o| String::from_utf8_lossy(&o.stdout).contains("0e:5c:c0:00:02:02")).unwrap_or(true));
    // Same-node traffic is unaffected.
    ping(&c.topo, &a1, &a2_ip, &[]).unwrap();
}

/// Mixed host-gw and VXLAN, with the kernel forwarding and with
/// `--host-routing ebpf` (whose programs pick encapsulation per packet from
/// the FIB's answer: the VXLAN device or the underlay).
#[test]
fn host_gw_routes_directly_and_mixed_subnets_fall_back_to_vxlan() {
    if !require_root() {
        return;
    }
    for ebpf in [false, true] {
        mixed_host_gw_and_vxlan(ebpf);
    }
}

fn mixed_host_gw_and_vxlan(ebpf: bool) {
    // a and b share 192.0.2.0/25; c sits at 192.0.2.200/25, "another subnet".
    let c = cluster(
        &[
            ("a", Ipv4Addr::new(192, 0, 2, 10), 25, "198.18.1.0/24"),
            ("b", Ipv4Addr::new(192, 0, 2, 20), 25, "198.18.2.0/24"),
            ("c", Ipv4Addr::new(192, 0, 2, 200), 25, "198.18.3.0/24"),
        ],
        "host-gw",
        ebpf,
    );
    let mut ns = PodNetns::new();
    let (a1, a1_ip) = add_pod(&c, &mut ns, 0, "a1");
    let (b1, b1_ip) = add_pod(&c, &mut ns, 1, "b1");
    let (c1, c1_ip) = add_pod(&c, &mut ns, 2, "c1");
    assert!(ip(&a1, &["link", "show", "eth0"]).contains("mtu 1500"), "host-gw pods get the underlay MTU");
    let routes = ip(&c.nodes[0].0.netns, &["route"]);
    assert!(routes.contains("198.18.2.0/24 via 192.0.2.20 dev eth0"), "direct route to b: {routes}");
    assert!(routes.contains("198.18.3.0/24 via 198.18.3.0 dev sluice.vxlan"), "c through VXLAN: {routes}");
    for (from, to) in [(&a1, &b1_ip), (&b1, &a1_ip), (&a1, &c1_ip), (&c1, &b1_ip)] {
        ping_eventually(&c.topo, from, to, &[]);
    }
    if ebpf {
        // From here on: the underlay neighbours are known (until then the
        // programs leave a packet to the VXLAN device, which resolves them).
        count_forwarded(&c, 0);
    }
    // Full-size packets between on-link nodes: no encapsulation.
    ping(&c.topo, &a1, &b1_ip, &["-M", "do", "-s", "1472"]).unwrap();
    full_mss_transfer(&c, &a1, &b1, &b1_ip, 1500);
    // To c, through VXLAN: DF pings up to what the VXLAN device's MTU
    // allows, and bulk TCP (the pods' MTU is the underlay's in host-gw mode,
    // so path MTU discovery brings the segments down to fit).
    ping(&c.topo, &a1, &c1_ip, &["-M", "do", "-s", "1422"]).unwrap();
    bulk(&c, &c1, &a1, &a1_ip);
    bulk(&c, &a1, &c1, &c1_ip);
    if ebpf {
        assert_eq!(forwarded(&c, 0), 0, "ebpf: node a forwarded nothing in the kernel, host-gw or VXLAN");
        assert_eq!(counted(&c, 0, "vxlan_out"), 0, "ebpf: VXLAN to c encapsulated at tc");
    }
}

/// `nft` in node `node`'s namespace; its output, panicking on failure.
fn nft(c: &Cluster, node: usize, args: &[&str]) -> String {
    let mut cmd = Command::new("nft");
    cmd.args(args);
    let out = c.topo.run_in_node(&c.nodes[node].0, cmd, T);
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Counts what node `node`'s forward hook sees, and the VXLAN packets its
/// input hook delivers to the VXLAN device's socket and its output hook
/// sees the device send, in a table of the test's own.
fn count_forwarded(c: &Cluster, node: usize) {
    nft(c, node, &["add table ip fwcount"]);
    nft(c, node, &["add chain ip fwcount fw { type filter hook forward priority 0 ; policy accept ; }"]);
    nft(c, node, &["add rule ip fwcount fw counter"]);
    nft(c, node, &["add chain ip fwcount vxlan_in { type filter hook input priority 0 ; policy accept ; }"]);
    nft(c, node, &["add rule ip fwcount vxlan_in udp dport 8472 counter"]);
    nft(c, node, &["add chain ip fwcount vxlan_out { type filter hook output priority 0 ; policy accept ; }"]);
    nft(c, node, &["add rule ip fwcount vxlan_out udp dport 8472 counter"]);
}

/// Packets the forward hook of node `node` has seen since [`count_forwarded`].
fn forwarded(c: &Cluster, node: usize) -> u64 {
    counted(c, node, "fw")
}

/// The counter of chain `chain` in the test's table.
fn counted(c: &Cluster, node: usize, chain: &str) -> u64 {
    let text = nft(c, node, &["list chain ip fwcount", chain]);
    let words: Vec<&str> = text.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "packets").unwrap_or_else(|| panic!("no counter: {text}"));
    words[i + 1].parse().unwrap_or_else(|e| panic!("counter {text}: {e}"))
}

/// A bulk transfer (iperf3, 20 MB) from pod `client` to `server_ip`.
fn bulk(c: &Cluster, client: &str, server: &str, server_ip: &str) {
    let mut srv = Command::new("iperf3");
    srv.args(["-s", "-1", "-p", "5202", "--forceflush"]);
    let srv = c.topo.spawn_in_netns(server, None, srv);
    assert!(srv.wait_for_stdout("listening", T), "iperf3 server in {server}: {}", srv.stderr());
    let mut cli = Command::new("iperf3");
    cli.args(["-c", server_ip, "-p", "5202", "-n", "20M"]);
    let out = c.topo.run_in_netns(client, None, cli, T);
    assert!(out.status.success(), "iperf3 {client} -> {server_ip}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// `--host-routing ebpf`: pod-to-pod traffic, on one node and across nodes
/// over VXLAN and host-gw, flows with full-size packets while the nodes'
/// forward hooks see none of it; traffic leaving the cluster range still
/// takes the kernel path and is masqueraded; TTL is decremented per node as
/// forwarding does; DEL takes the program off with the veth.
#[test]
fn ebpf_host_routing_bypasses_the_forward_path() {
    if !require_root() {
        return;
    }
    for backend in ["vxlan", "host-gw"] {
        let c = cluster(
            &[("a", Ipv4Addr::new(192, 0, 2, 31), 24, "198.18.31.0/24"), ("b", Ipv4Addr::new(192, 0, 2, 32), 24, "198.18.32.0/24")],
            backend,
            true,
        );
        let mtu = if backend == "vxlan" { 1450 } else { 1500 };
        let mut ns = PodNetns::new();
        let (a1, a1_ip) = add_pod(&c, &mut ns, 0, "a1");
        let (a2, a2_ip) = add_pod(&c, &mut ns, 0, "a2");
        let (b1, b1_ip) = add_pod(&c, &mut ns, 1, "b1");
        let subnet: serde_json::Value =
            serde_json::from_slice(&fs::read(c.nodes[0].1.state_dir.join("subnet.json")).unwrap()).unwrap();
        assert!(subnet["hostRouting"].as_str().is_some_and(|p| p.ends_with("slc_from_pod")), "{subnet}");
        ping_eventually(&c.topo, &a1, &b1_ip, &[]);
        ping_eventually(&c.topo, &a1, &a2_ip, &[]);
        count_forwarded(&c, 0);
        count_forwarded(&c, 1);
        // Across nodes both ways, and on one node; full-size packets with DF.
        ping(&c.topo, &a1, &b1_ip, &["-M", "do", "-s", &(mtu - 28).to_string()]).unwrap();
        ping(&c.topo, &b1, &a1_ip, &[]).unwrap();
        ping(&c.topo, &a2, &a1_ip, &[]).unwrap();
        bulk(&c, &a1, &b1, &b1_ip);
        bulk(&c, &b1, &a2, &a2_ip);
        full_mss_transfer(&c, &a1, &b1, &b1_ip, mtu);
        assert_eq!((forwarded(&c, 0), forwarded(&c, 1)), (0, 0), "{backend}: pod-to-pod traffic skipped both forward hooks");
        // VXLAN: encapsulated at tc on the pod's veth and decapsulated at tc on
        // the underlay, so the VXLAN device neither sends nor receives a packet.
        assert_eq!((counted(&c, 0, "vxlan_in"), counted(&c, 1, "vxlan_in")), (0, 0), "{backend}: VXLAN decapsulated at tc");
        assert_eq!((counted(&c, 0, "vxlan_out"), counted(&c, 1, "vxlan_out")), (0, 0), "{backend}: VXLAN encapsulated at tc");
        // TTL: 64 at the sender, minus one per node crossed (two), as the kernel path does.
        let mut p = Command::new("ping");
        p.args(["-c", "1", "-W", "2", &a1_ip]);
        let out = String::from_utf8_lossy(&c.topo.run_in_netns(&b1, None, p, T).stdout).into_owned();
        assert!(out.contains("ttl=62"), "{backend}: {out}");
        // Leaving the cluster range: the kernel path, masqueraded.
        ping(&c.topo, &a1, "192.0.2.32", &[]).unwrap();
        assert!(forwarded(&c, 0) > 0, "{backend}: traffic to a node address is forwarded by the kernel");
        // DEL: the veth and its program go.
        let (node, dirs, _) = &c.nodes[0];
        let del = Attach { node, container: "a2".into(), netns: a2.clone(), ifname: "eth0".into() };
        del.run("DEL", &dirs.plugin_conf()).expect_ok("DEL a2");
        assert!(ping(&c.topo, &a1, &a2_ip, &[]).is_err(), "{backend}: a deleted pod is unreachable");
        ping(&c.topo, &a1, &b1_ip, &[]).unwrap();
    }
}
