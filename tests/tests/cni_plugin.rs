//! sluice-cni plugin end to end (needs root): the binary driven exactly as a
//! container runtime drives it, inside node and pod network namespaces.

mod cni_common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use cni_common::*;
use serde_json::{json, Value};
use tests::Topology;

fn host_links(node_netns: &str) -> Vec<String> {
    ip(node_netns, &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_owned()))
        .collect()
}

fn pod_veths(node_netns: &str) -> Vec<String> {
    host_links(node_netns).into_iter().filter(|n| n.starts_with("sl")).collect()
}

#[test]
fn add_check_del_on_one_node_and_pods_reach_each_other() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let data = topo.scratch("ipam");
    let conf = static_conf("1.1.0", &data, &["198.18.1.0/24", "2001:db8:1:1::/64"]);
    let p1 = Attach { node: &node, container: "c1".into(), netns: ns.add(&format!("{}-p1", topo.id())), ifname: "eth0".into() };
    let p2 = Attach { node: &node, container: "c2".into(), netns: ns.add(&format!("{}-p2", topo.id())), ifname: "eth0".into() };

    let r1 = p1.run("ADD", &conf).expect_ok("ADD p1").json();
    let r2 = p2.run("ADD", &conf).expect_ok("ADD p2").json();
    assert_eq!(r1["cniVersion"], "1.1.0");
    assert_eq!(r1["ips"][0]["address"], "198.18.1.1/32", "first pod gets the first host: {r1}");
    assert_eq!(r1["ips"][1]["address"], "2001:db8:1:1::1/128", "{r1}");
    assert_eq!(r1["interfaces"][1]["mtu"], 1450, "{r1}");
    assert_eq!(r2["ips"][0]["address"], "198.18.1.2/32", "{r2}");
    assert_eq!(ip(&p1.netns, &["link", "show", "eth0"]).contains("mtu 1450"), true);

    // pod <-> pod on one node, both families; node -> pod; pod -> node.
    ping(&topo, &p1.netns, "198.18.1.2", &[]).unwrap();
    ping(&topo, &p2.netns, "2001:db8:1:1::1", &[]).unwrap();
    ping(&topo, &node.netns, "198.18.1.1", &[]).unwrap();
    ping(&topo, &p1.netns, "192.0.2.1", &[]).unwrap();

    // CHECK with the ADD result as prevResult.
    let mut check = conf.clone();
    check["prevResult"] = r1.clone();
    p1.run("CHECK", &check).expect_ok("CHECK p1");

    // A second ADD of the same attachment: the interface exists.
    let e = p1.run("ADD", &conf).expect_code(101, "second ADD");
    assert!(e["details"].as_str().unwrap().contains("eth0"), "{e}");

    // DEL leaves nothing behind, and succeeds again.
    p1.run("DEL", &conf).expect_ok("DEL p1");
    assert!(!ip(&p1.netns, &["-o", "link"]).contains("eth0"), "pod eth0 left behind");
    assert!(!ip(&node.netns, &["route"]).contains("198.18.1.1 "), "host route left behind");
    assert!(!ip(&node.netns, &["-6", "route"]).contains("2001:db8:1:1::1 "), "host v6 route left behind");
    assert_eq!(pod_veths(&node.netns).len(), 1, "only p2's veth remains");
    let held = store_allocations(&data, "sluice");
    assert!(!held.contains(&"198.18.1.1".to_owned()) && held.len() == 2, "p1's addresses released, p2's kept: {held:?}");
    p1.run("DEL", &conf).expect_ok("second DEL");
    // DEL without a netns (the sandbox is already gone) succeeds too.
    let gone = Attach { node: &node, container: "c2".into(), netns: "does-not-exist".into(), ifname: "eth0".into() };
    gone.run("DEL", &conf).expect_ok("DEL with a vanished netns");
    assert!(pod_veths(&node.netns).is_empty());
    assert!(store_allocations(&data, "sluice").is_empty());

    // CHECK after DEL fails.
    assert!(!p2.run("CHECK", &{
        let mut c = conf.clone();
        c["prevResult"] = r2;
        c
    })
    .ok);
}

#[test]
fn old_versions_get_results_in_their_format() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let data = topo.scratch("ipam");
    for (i, v) in ["0.4.0", "1.0.0"].iter().enumerate() {
        let conf = static_conf(v, &data, &["198.18.1.0/24"]);
        let p = Attach { node: &node, container: format!("c{i}"), netns: ns.add(&format!("{}-p{i}", topo.id())), ifname: "eth0".into() };
        let r = p.run("ADD", &conf).expect_ok(v).json();
        assert_eq!(r["cniVersion"], *v);
        assert_eq!(r["ips"][0].get("version").is_some(), *v == "0.4.0", "ips[].version only before 1.0.0: {r}");
        assert!(r["interfaces"][1].get("mtu").is_none(), "no interface mtu before 1.1.0: {r}");
    }
    let v = invoke(&cni_bin(), &node.netns, &[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#)
        .expect_ok("VERSION")
        .json();
    assert_eq!(v["cniVersion"], "1.0.0");
    let all: Vec<&str> = v["supportedVersions"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for want in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(all.contains(&want), "VERSION lists {want}: {v}");
    }
}

#[test]
fn bad_input_returns_spec_errors_and_changes_nothing() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let data = topo.scratch("ipam");
    let pod = Attach { node: &node, container: "c1".into(), netns: ns.add(&format!("{}-p", topo.id())), ifname: "eth0".into() };
    let links_before = host_links(&node.netns);
    let bin = cni_bin();
    let netns_path = format!("/run/netns/{}", pod.netns);
    let env = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", netns_path.as_str()), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/usr/lib/cni")];

    invoke(&bin, &node.netns, &env, "{ not json").expect_code(6, "invalid JSON");
    let mut conf = static_conf("1.1.0", &data, &["198.18.1.0/24"]);
    conf["cniVersion"] = json!("7.0.0");
    invoke(&bin, &node.netns, &env, &conf.to_string()).expect_code(1, "unknown cniVersion");
    conf["cniVersion"] = json!("1.1.0");
    conf["mtu"] = json!("big");
    invoke(&bin, &node.netns, &env, &conf.to_string()).expect_code(7, "wrongly typed mtu");
    let good = static_conf("1.1.0", &data, &["198.18.1.0/24"]);
    let e = invoke(&bin, &node.netns, &env[..3], &good.to_string()).expect_code(4, "missing CNI_IFNAME");
    assert!(e["details"].as_str().unwrap().contains("CNI_IFNAME"), "{e}");
    invoke(&bin, &node.netns, &[("CNI_CONTAINERID", "c1")], &good.to_string()).expect_code(4, "missing CNI_COMMAND");
    let bad_netns = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/run/netns/nope-nope"), ("CNI_IFNAME", "eth0")];
    invoke(&bin, &node.netns, &bad_netns, &good.to_string()).expect_code(4, "netns that does not exist");

    assert_eq!(host_links(&node.netns), links_before, "no link may appear after bad input");
    assert!(store_allocations(&data, "sluice").is_empty(), "no address may be allocated after bad input");
    assert!(!ip(&pod.netns, &["-o", "link"]).contains("eth0"));

    // An exhausted range: a /30 holds two pods; the third gets code 102 and nothing.
    let small = static_conf("1.1.0", &data, &["198.18.9.0/30"]);
    let a = Attach { node: &node, container: "x1".into(), netns: ns.add(&format!("{}-x1", topo.id())), ifname: "eth0".into() };
    let b = Attach { node: &node, container: "x2".into(), netns: ns.add(&format!("{}-x2", topo.id())), ifname: "eth0".into() };
    a.run("ADD", &small).expect_ok("x1");
    b.run("ADD", &small).expect_ok("x2");
    pod.run("ADD", &small).expect_code(102, "exhausted range");
    assert!(!ip(&pod.netns, &["-o", "link"]).contains("eth0"), "failed ADD left an interface");
    assert_eq!(store_allocations(&data, "sluice").len(), 2);
    assert_eq!(pod_veths(&node.netns).len(), 2, "failed ADD left a host veth");
}

#[test]
fn two_hundred_concurrent_adds_never_share_an_address_and_dels_leak_nothing() {
    must_be_root();
    const N: usize = 200;
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let data = topo.scratch("ipam");
    let conf = Arc::new(static_conf("1.1.0", &data, &["198.18.1.0/24"]));
    let names: Vec<String> = (0..N).map(|i| ns.add(&format!("{}-c{i}", topo.id()))).collect();
    let node = Arc::new(node);

    let run_all = |command: &'static str| -> Vec<Outcome> {
        // 200 runtimes at once, in waves of 50 threads each spawning one plugin.
        let mut outs = Vec::new();
        for wave in names.chunks(50) {
            let handles: Vec<_> = wave
                .iter()
                .map(|n| {
                    let (n, node, conf) = (n.clone(), Arc::clone(&node), Arc::clone(&conf));
                    std::thread::spawn(move || {
                        let a = Attach { node: &node, container: n.clone(), netns: n, ifname: "eth0".into() };
                        a.run(command, &conf)
                    })
                })
                .collect();
            outs.extend(handles.into_iter().map(|h| h.join().unwrap()));
        }
        outs
    };
    let adds = run_all("ADD");
    let mut ips = BTreeSet::new();
    for o in &adds {
        assert!(o.ok, "every ADD succeeds: {o:?}");
        let ip = o.json()["ips"][0]["address"].as_str().unwrap().to_owned();
        assert!(ips.insert(ip.clone()), "address {ip} handed out twice");
    }
    assert_eq!(ips.len(), N);
    assert_eq!(store_allocations(&data, "sluice").len(), N);
    assert_eq!(pod_veths(&node.netns).len(), N);
    for o in run_all("DEL") {
        assert!(o.ok, "every DEL succeeds: {o:?}");
    }
    assert!(store_allocations(&data, "sluice").is_empty(), "addresses leaked");
    assert!(pod_veths(&node.netns).is_empty(), "veths leaked");
    assert!(!ip(&node.netns, &["route"]).contains("198.18.1."), "routes leaked");
}

#[test]
fn gc_frees_what_the_runtime_no_longer_lists() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let data = topo.scratch("ipam");
    let conf = static_conf("1.1.0", &data, &["198.18.1.0/24"]);
    for i in 0..3 {
        let a = Attach { node: &node, container: format!("g{i}"), netns: ns.add(&format!("{}-g{i}", topo.id())), ifname: "eth0".into() };
        a.run("ADD", &conf).expect_ok("ADD");
    }
    let gc_with = |key: &str, valid: Value| {
        let mut c = conf.clone();
        c[key] = valid;
        invoke(&cni_bin(), &node.netns, &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")], &c.to_string())
    };
    gc_with("cni.dev/valid-attachments", json!([{"containerID": "g0", "ifname": "eth0"}, {"containerID": "g1", "ifname": "eth0"}]))
        .expect_ok("GC");
    assert_eq!(store_allocations(&data, "sluice").len(), 2, "g2's address reclaimed");
    assert_eq!(pod_veths(&node.netns).len(), 2, "g2's veth removed");
    // The older key works too.
    gc_with("cni.dev/attachments", json!([{"containerID": "g0", "ifname": "eth0"}])).expect_ok("GC (old key)");
    assert_eq!(store_allocations(&data, "sluice"), vec!["198.18.1.1".to_owned()]);
    assert_eq!(pod_veths(&node.netns).len(), 1);
    // GC is 1.1 only.
    let mut old = conf.clone();
    old["cniVersion"] = json!("1.0.0");
    old["cni.dev/valid-attachments"] = json!([]);
    invoke(&cni_bin(), &node.netns, &[("CNI_COMMAND", "GC")], &old.to_string()).expect_code(1, "GC with 1.0.0");
}

#[test]
fn delegated_host_local_ipam_keeps_working() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let hl = topo.scratch("host-local");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "hl", "type": "sluice-cni", "mtu": 1400,
        "dataDir": topo.scratch("locks"),
        "ipam": {"type": "host-local", "dataDir": hl, "ranges": [[{"subnet": "198.18.5.0/24"}]]},
    });
    let a = Attach { node: &node, container: "h1".into(), netns: ns.add(&format!("{}-h1", topo.id())), ifname: "eth0".into() };
    let b = Attach { node: &node, container: "h2".into(), netns: ns.add(&format!("{}-h2", topo.id())), ifname: "eth0".into() };
    let ra = a.run("ADD", &conf).expect_ok("ADD via host-local").json();
    b.run("ADD", &conf).expect_ok("ADD via host-local");
    let addr = ra["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(addr.starts_with("198.18.5."), "{ra}");
    let ip_a = addr.trim_end_matches("/32");
    let rb_ip = {
        let out = ip(&b.netns, &["-4", "-o", "addr", "show", "eth0"]);
        out.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap().split('/').next().unwrap().to_owned()
    };
    ping(&topo, &b.netns, ip_a, &[]).unwrap();
    assert_ne!(ip_a, rb_ip);
    a.run("DEL", &conf).expect_ok("DEL via host-local");
    let left: Vec<String> = std::fs::read_dir(hl.join("hl")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.contains(&ip_a.to_owned()), "host-local still holds {ip_a}: {left:?}");
    a.run("DEL", &conf).expect_ok("second DEL via host-local");
}

#[test]
fn chained_portmap_and_bandwidth_work_after_sluice_cni() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let client = topo.add_node("b", Ipv4Addr::new(192, 0, 2, 2));
    let mut ns = PodNetns::new();
    let data = topo.scratch("ipam");
    // Debian's plugins speak up to 1.0.0.
    let list = json!({
        "cniVersion": "1.0.0", "name": "chain",
        "plugins": [
            {"type": "sluice-cni", "podCidrs": ["198.18.1.0/24"], "dataDir": data, "mtu": 1450},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
        ],
    });
    let pod = Attach { node: &node, container: "pm".into(), netns: ns.add(&format!("{}-pm", topo.id())), ifname: "eth0".into() };
    let runtime_config = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000u64, "ingressBurst": 1_000_000u64, "egressRate": 100_000_000u64, "egressBurst": 1_000_000u64},
    });
    // What libcni does: each plugin gets name, cniVersion, runtimeConfig, and the previous result.
    let conf_of = |i: usize, prev: Option<&Value>| {
        let mut c = list["plugins"][i].clone();
        c["name"] = list["name"].clone();
        c["cniVersion"] = list["cniVersion"].clone();
        c["runtimeConfig"] = runtime_config.clone();
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    };
    let plugin = |i: usize| -> std::path::PathBuf {
        if i == 0 {
            cni_bin()
        } else {
            Path::new(REFERENCE_PLUGINS).join(list["plugins"][i]["type"].as_str().unwrap())
        }
    };
    let mut prev: Option<Value> = None;
    for i in 0..3 {
        let out = pod.run_plugin(&plugin(i), "ADD", &conf_of(i, prev.as_ref())).expect_ok(&format!("ADD plugin {i}"));
        prev = Some(out.json());
    }
    let result = prev.unwrap();
    assert_eq!(result["ips"][0]["address"], "198.18.1.1/32", "the chain's final result keeps our address: {result}");
    // bandwidth put a TBF on the host veth (ingress of the pod).
    let host_veth = result["interfaces"][0]["name"].as_str().unwrap().to_owned();
    assert!(ip_tc(&node.netns, &host_veth).contains("tbf"), "bandwidth shaped {host_veth}");

    // hostPort: a client on another node reaches the pod through the node's address.
    let mut serve = Command::new(tests::workspace_bin("sluice-probe"));
    serve.args(["serve", "--id", "pm", "--tcp", "8080"]);
    let server = topo.spawn_in_netns(&pod.netns, None, serve);
    assert!(server.wait_for_stdout("ready", T), "server not ready: {}", server.stderr());
    let mut probe = Command::new(tests::workspace_bin("sluice-probe"));
    probe.args(["tcp", "192.0.2.1:18080", "--count", "2"]);
    let out = topo.run_in_node(&client, probe, T);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("probe output ({e}): {out:?}"));
    assert_eq!(v["by_id"]["pm"], 2, "hostPort 18080 should reach the pod: {v}");

    // CHECK and DEL go through the chain in reverse. Debian's portmap fails its
    // own CHECK without an IPv6 address ("ipv6 dnat chain not found"), so CHECK
    // covers bandwidth and sluice-cni.
    for i in [2, 0] {
        pod.run_plugin(&plugin(i), "CHECK", &conf_of(i, Some(&result))).expect_ok(&format!("CHECK plugin {i}"));
    }
    for i in (0..3).rev() {
        pod.run_plugin(&plugin(i), "DEL", &conf_of(i, Some(&result))).expect_ok(&format!("DEL plugin {i}"));
    }
    assert!(pod_veths(&node.netns).is_empty());
    assert!(store_allocations(&data, "chain").is_empty());
}

fn ip_tc(netns: &str, dev: &str) -> String {
    let out = Command::new("tc").args(["-n", netns, "qdisc", "show", "dev", dev]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host veth the runtime was told about in an ADD result.
fn host_veth_of(result: &Value) -> String {
    result["interfaces"][0]["name"].as_str().unwrap_or_else(|| panic!("no host interface in {result}")).to_owned()
}

#[test]
fn a_failed_add_removes_only_what_it_made() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let data = topo.scratch("ipam");
    let conf = static_conf("1.1.0", &data, &["198.18.1.0/24", "2001:db8:1:1::/64"]);
    let first = Attach { node: &node, container: "c1".into(), netns: ns.add(&format!("{}-p1", topo.id())), ifname: "eth0".into() };
    let r = first.run("ADD", &conf).expect_ok("first ADD").json();
    let veth = host_veth_of(&r);
    let held = store_owners(&data, "sluice");

    // The same attachment into another sandbox (a runtime that lost track of
    // the first one): the host veth's name is taken, so it fails, and must
    // leave the first attachment exactly as it was.
    let other = Attach { node: &node, container: "c1".into(), netns: ns.add(&format!("{}-p2", topo.id())), ifname: "eth0".into() };
    other.run("ADD", &conf).expect_code(101, "ADD of an attachment whose host veth exists");
    assert!(pod_veths(&node.netns).contains(&veth), "the failed ADD deleted the first attachment's host veth {veth}");
    assert_eq!(store_owners(&data, "sluice"), held, "the failed ADD changed the first attachment's addresses");
    assert_eq!(addrs_on(&first.netns, "eth0").len(), 2, "first pod lost addresses: {:?}", addrs_on(&first.netns, "eth0"));
    assert!(!ip(&other.netns, &["-o", "link"]).contains("eth0"), "the failed ADD left eth0 in its sandbox");
    ping(&topo, &node.netns, "198.18.1.1", &[]).unwrap_or_else(|e| panic!("the first pod is unreachable after the failed ADD: {e}"));

    // A failure after the veth exists (IPv6 disabled in the sandbox, so the
    // IPv6 address cannot be added): its own veth and both of its addresses go,
    // nothing else.
    let no6 = Attach { node: &node, container: "c3".into(), netns: ns.add(&format!("{}-p3", topo.id())), ifname: "eth0".into() };
    tests::sysctls(&no6.netns, &[("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1")]).unwrap();
    no6.run("ADD", &conf).expect_code(100, "ADD into a sandbox without IPv6");
    assert_eq!(pod_veths(&node.netns), vec![veth.clone()], "only the first attachment's veth may remain");
    assert_eq!(store_owners(&data, "sluice"), held, "the failed ADD must release its own addresses and only those");
    assert!(!ip(&no6.netns, &["-o", "link"]).contains("eth0"));
    ping(&topo, &node.netns, "198.18.1.1", &[]).unwrap();
    first.run("DEL", &conf).expect_ok("DEL");
    assert!(pod_veths(&node.netns).is_empty() && store_owners(&data, "sluice").is_empty());
}

#[test]
fn concurrent_duplicate_adds_leave_one_working_attachment() {
    must_be_root();
    const ROUNDS: usize = 12;
    const RACERS: usize = 6;
    let mut topo = Topology::new();
    let node = Arc::new(topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1)));
    let mut ns = PodNetns::new();
    let data = topo.scratch("ipam");
    let conf = Arc::new(static_conf("1.1.0", &data, &["198.18.1.0/24"]));
    for round in 0..ROUNDS {
        let netns = ns.add(&format!("{}-d{round}", topo.id()));
        let container = format!("dup{round}");
        let barrier = Arc::new(std::sync::Barrier::new(RACERS));
        let outs: Vec<Outcome> = (0..RACERS)
            .map(|_| {
                let (node, conf, barrier) = (Arc::clone(&node), Arc::clone(&conf), Arc::clone(&barrier));
                let (netns, container) = (netns.clone(), container.clone());
                std::thread::spawn(move || {
                    let a = Attach { node: &node, container, netns, ifname: "eth0".into() };
                    barrier.wait();
                    a.run("ADD", &conf)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let ok: Vec<&Outcome> = outs.iter().filter(|o| o.ok).collect();
        assert_eq!(ok.len(), 1, "round {round}: exactly one of {RACERS} racing ADDs succeeds: {outs:#?}");
        for o in outs.iter().filter(|o| !o.ok) {
            o.expect_code(101, &format!("round {round}: a losing duplicate ADD"));
        }
        let r = ok[0].json();
        let addr = r["ips"][0]["address"].as_str().unwrap().to_owned();
        let have = addrs_on(&netns, "eth0");
        assert_eq!(have, vec![addr.clone()], "round {round}: the pod must have the address the successful ADD reported");
        assert!(pod_veths(&node.netns).contains(&host_veth_of(&r)), "round {round}: host veth missing");
        let ip_only = addr.trim_end_matches("/32").to_owned();
        assert!(
            store_owners(&data, "sluice").iter().any(|(a, c, i)| *a == ip_only && *c == container && i == "eth0"),
            "round {round}: the store must hold {ip_only} for {container}: {:?}",
            store_owners(&data, "sluice")
        );
        ping(&topo, &node.netns, &ip_only, &[]).unwrap_or_else(|e| panic!("round {round}: pod unreachable: {e}"));
    }
    assert_eq!(pod_veths(&node.netns).len(), ROUNDS);
    assert_eq!(store_owners(&data, "sluice").len(), ROUNDS);
}

#[test]
fn gc_removes_only_its_own_networks_attachments() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let (data_a, data_b) = (topo.scratch("ipam-a"), topo.scratch("ipam-b"));
    let mut conf_a = static_conf("1.1.0", &data_a, &["198.18.1.0/24"]);
    conf_a["name"] = json!("net-a");
    let mut conf_b = static_conf("1.1.0", &data_b, &["198.18.2.0/24"]);
    conf_b["name"] = json!("net-b");
    let attach = |c: &str, tag: &str, ns: &mut PodNetns| Attach {
        node: &node,
        container: c.into(),
        netns: ns.add(&format!("{}-{tag}", topo.id())),
        ifname: "eth0".into(),
    };
    let a1 = attach("a1", "a1", &mut ns);
    let a2 = attach("a2", "a2", &mut ns);
    let b1 = attach("b1", "b1", &mut ns);
    let va1 = host_veth_of(&a1.run("ADD", &conf_a).expect_ok("ADD a1").json());
    let va2 = host_veth_of(&a2.run("ADD", &conf_a).expect_ok("ADD a2").json());
    let vb1 = host_veth_of(&b1.run("ADD", &conf_b).expect_ok("ADD b1").json());
    let gc = |conf: &Value, valid: Value| {
        let mut c = conf.clone();
        c["cni.dev/valid-attachments"] = valid;
        invoke(&cni_bin(), &node.netns, &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")], &c.to_string())
    };
    // net-a's runtime only knows a1: a2 is stale; b1 is not net-a's business.
    gc(&conf_a, json!([{"containerID": "a1", "ifname": "eth0"}])).expect_ok("GC net-a");
    let left = pod_veths(&node.netns);
    assert!(!left.contains(&va2), "GC of net-a must remove its stale a2 ({va2}): {left:?}");
    assert!(left.contains(&va1), "GC of net-a removed its valid a1: {left:?}");
    assert!(left.contains(&vb1), "GC of net-a removed net-b's veth {vb1}: {left:?}");
    assert_eq!(store_owners(&data_b, "net-b").len(), 1, "GC of net-a touched net-b's store");
    ping(&topo, &node.netns, "198.18.2.1", &[]).unwrap_or_else(|e| panic!("net-b's pod lost connectivity: {e}"));
    // And the other way round.
    gc(&conf_b, json!([{"containerID": "b1", "ifname": "eth0"}])).expect_ok("GC net-b");
    let left = pod_veths(&node.netns);
    assert!(left.contains(&va1) && left.contains(&vb1), "GC of net-b removed a valid veth: {left:?}");
    gc(&conf_b, json!([])).expect_ok("GC net-b with nothing valid");
    assert_eq!(pod_veths(&node.netns), vec![va1.clone()], "GC of net-b removes b1 and only b1");
    assert_eq!(store_owners(&data_a, "net-a").len(), 1);
}

#[test]
fn del_succeeds_once_the_container_is_gone_even_with_a_corrupt_store() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let data = topo.scratch("ipam");
    let conf = static_conf("1.1.0", &data, &["198.18.1.0/24"]);
    let pod = Attach { node: &node, container: "c1".into(), netns: ns.add(&format!("{}-p", topo.id())), ifname: "eth0".into() };
    pod.run("ADD", &conf).expect_ok("ADD");
    std::fs::write(data.join("sluice").join("state.json"), b"{\"allocations\": {\"198.18.1").unwrap();
    pod.run("DEL", &conf).expect_ok("DEL with a corrupt store");
    assert!(pod_veths(&node.netns).is_empty(), "DEL must remove the veth");
    assert!(!ip(&pod.netns, &["-o", "link"]).contains("eth0"));
    pod.run("DEL", &conf).expect_ok("DEL again with a corrupt store");
    let gone = Attach { node: &node, container: "c1".into(), netns: "does-not-exist".into(), ifname: "eth0".into() };
    gone.run("DEL", &conf).expect_ok("DEL without a sandbox and with a corrupt store");
    // ADD still refuses to allocate from a store it cannot read, and changes nothing.
    let next = Attach { node: &node, container: "c2".into(), netns: ns.add(&format!("{}-q", topo.id())), ifname: "eth0".into() };
    next.run("ADD", &conf).expect_code(6, "ADD with a corrupt store");
    assert!(pod_veths(&node.netns).is_empty());
}

#[test]
fn del_succeeds_once_the_container_is_gone_even_on_a_full_disk() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let mut ns = PodNetns::new();
    let disk = TinyTmpfs::mount(topo.scratch("tiny"), 64 * 1024);
    let conf = static_conf("1.1.0", &disk.dir, &["198.18.1.0/24"]);
    let pods: Vec<Attach> = (0..3)
        .map(|i| Attach { node: &node, container: format!("c{i}"), netns: ns.add(&format!("{}-p{i}", topo.id())), ifname: "eth0".into() })
        .collect();
    // One pod, then a full disk: the store's next version has nowhere to go.
    pods[0].run("ADD", &conf).expect_ok("ADD");
    disk.fill();
    pods[0].run("DEL", &conf).expect_ok("DEL on a full disk");
    assert!(pod_veths(&node.netns).is_empty(), "DEL on a full disk must remove the veth");
    pods[0].run("DEL", &conf).expect_ok("DEL again on a full disk");
    // More pods, then a full disk again.
    std::fs::remove_file(disk.dir.join("filler")).unwrap();
    pods[1].run("ADD", &conf).expect_ok("ADD");
    pods[2].run("ADD", &conf).expect_ok("ADD");
    disk.fill();
    pods[1].run("DEL", &conf).expect_ok("DEL on a full disk");
    assert_eq!(pod_veths(&node.netns).len(), 1);
    // Space back: the next DEL and a GC bring the store in line.
    std::fs::remove_file(disk.dir.join("filler")).unwrap();
    pods[2].run("DEL", &conf).expect_ok("DEL");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    invoke(&cni_bin(), &node.netns, &[("CNI_COMMAND", "GC")], &gc.to_string()).expect_ok("GC");
    assert!(store_owners(&disk.dir, "sluice").is_empty(), "GC reclaims what the DELs on a full disk could not release");
    assert!(pod_veths(&node.netns).is_empty());
}

#[test]
fn status_turns_51_when_the_daemon_keeps_failing_or_stops() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let dirs = NodeDirs::new(&topo, "a");
    let manifests = topo.scratch("m");
    std::fs::write(manifests.join("a.yaml"), node_yaml("a", node.underlay, "198.18.1.0/24")).unwrap();
    let conf = json!({
        "cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni",
        "subnetFile": dirs.state_dir.join("subnet.json"), "dataDir": dirs.ipam_dir,
    });
    let status = || invoke(&cni_bin(), &node.netns, &[("CNI_COMMAND", "STATUS")], &conf.to_string());
    status().expect_code(50, "STATUS before the daemon");
    let d = start_daemon(&topo, &node, "vxlan", &manifests, &dirs);
    eventually("STATUS ready once the daemon has reconciled", || status().ok);

    // The node's address goes: every reconcile fails (no underlay), and after
    // a few the daemon says so.
    ip(&node.netns, &["addr", "del", "192.0.2.1/24", "dev", "eth0"]);
    eventually("STATUS 51 while reconciles keep failing", || !status().ok && status().json()["code"] == 51);
    assert!(d.stderr().contains("marked this node not ready"), "daemon log: {}", d.stderr());
    // Back: the next reconcile publishes ready again.
    ip(&node.netns, &["addr", "add", "192.0.2.1/24", "dev", "eth0"]);
    eventually("STATUS ready again after a successful reconcile", || status().ok);

    // Stopping the daemon: not ready, and the pod subnet stays published.
    d.signal(libc::SIGTERM);
    assert!(d.wait_timeout(T).is_some_and(|s| s.success()), "daemon did not stop cleanly: {}", d.stderr());
    status().expect_code(51, "STATUS after the daemon stopped");
    let subnet: Value = serde_json::from_slice(&std::fs::read(dirs.state_dir.join("subnet.json")).unwrap()).unwrap();
    assert_eq!((subnet["ready"].clone(), subnet["podCidrs"][0].clone()), (json!(false), json!("198.18.1.0/24")), "{subnet}");
}

#[test]
fn the_daemon_refuses_a_zero_resync_with_a_clear_error() {
    must_be_root();
    let mut topo = Topology::new();
    let node = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let manifests = topo.scratch("m");
    let mut cmd = Command::new(cni_bin());
    cmd.args(["daemon", "--node-name", "a", "--resync", "0"]).arg("--manifests").arg(&manifests);
    let out = topo.run_in_node(&node, cmd, T);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error exits 2: {stderr}");
    assert!(stderr.contains("--resync") && stderr.contains("must be more than zero"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
