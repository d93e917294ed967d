//! Self-tests of the namespace topology harness (need root; skipped otherwise).

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::{cleanup_leftovers, require_root, workspace_bin, Node, Pod, Topology};

const T: Duration = Duration::from_secs(20);

fn probe() -> Command {
    Command::new(workspace_bin("sluice-probe"))
}

fn json_of(out: &std::process::Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what}: expected success, got {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Two nodes with one pod each, pod CIDRs routed host-gw style.
fn two_node_cluster(topo: &mut Topology) -> (Node, Node, Pod, Pod) {
    let a = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let b = topo.add_node("b", Ipv4Addr::new(192, 0, 2, 2));
    let pa = topo.add_pod(
        &a,
        "p1",
        Ipv4Addr::new(198, 18, 1, 10),
        Some("2001:db8:1:1::10".parse().unwrap()),
    );
    let pb = topo.add_pod(
        &b,
        "p2",
        Ipv4Addr::new(198, 18, 2, 10),
        Some("2001:db8:1:2::10".parse().unwrap()),
    );
    topo.route_pod_cidrs(&[
        (&a, "198.18.1.0/24", Some("2001:db8:1:1::/64")),
        (&b, "198.18.2.0/24", Some("2001:db8:1:2::/64")),
    ]);
    (a, b, pa, pb)
}

fn serve_in_pod(topo: &Topology, pod: &Pod, id: &str) -> tests::Proc {
    let mut cmd = probe();
    cmd.args(["serve", "--id", id, "--tcp", "8080", "--udp", "8081"]);
    let server = topo.spawn_in_pod(pod, cmd);
    assert!(
        server.wait_for_stdout("ready", T),
        "server in {} did not print ready; stderr: {}",
        pod.name,
        server.stderr()
    );
    server
}

#[test]
fn pods_on_different_nodes_reach_each_other_over_v4_and_v6() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let (_a, _b, pa, pb) = two_node_cluster(&mut topo);
    let _server = serve_in_pod(&topo, &pb, "p2");

    for target in [pb.ip.to_string(), pb.ip6.unwrap().to_string()] {
        let mut cmd = Command::new("ping");
        cmd.args(["-c", "1", "-W", "2", &target]);
        let out = topo.run_in_pod(&pa, cmd, T);
        assert!(
            out.status.success(),
            "ping {target} from pod p1 should succeed (ping comes from `cargo xtask setup`), got {:?}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    for (target, src) in [
        (format!("{}:8080", pb.ip), pa.ip.to_string()),
        (
            format!("[{}]:8080", pb.ip6.unwrap()),
            pa.ip6.unwrap().to_string(),
        ),
    ] {
        let mut cmd = probe();
        cmd.args(["tcp", &target, "--count", "3"]);
        let v = json_of(&topo.run_in_pod(&pa, cmd, T), "tcp probe");
        assert_eq!(v["ok"], 3, "tcp to {target}: expected 3 answers, got {v}");
        assert_eq!(
            v["by_id"]["p2"], 3,
            "tcp to {target}: expected p2 to answer, got {v}"
        );
        assert_eq!(
            v["seen_src"][&src], 3,
            "tcp to {target}: server should see the pod address {src} unmodified, got {v}"
        );
        assert_eq!(
            v["peer_names"][&target], 3,
            "getpeername should be {target}, got {v}"
        );

        let udp_target = target.replace(":8080", ":8081");
        let mut cmd = probe();
        cmd.args(["udp", &udp_target, "--count", "2"]);
        let v = json_of(&topo.run_in_pod(&pa, cmd, T), "udp probe");
        assert_eq!(
            v["ok"], 2,
            "udp to {udp_target}: expected 2 answers, got {v}"
        );
        assert_eq!(
            v["reply_from"][&udp_target], 2,
            "udp replies should come from {udp_target}, got {v}"
        );
    }
}

#[test]
fn outside_client_reaches_node_underlay_and_node_reaches_its_pods() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let (a, _b, pa, _pb) = two_node_cluster(&mut topo);
    let out = topo.add_outside("client", Ipv4Addr::new(203, 0, 113, 10));
    let mut cmd = probe();
    cmd.args(["serve", "--id", "node-a", "--tcp", "9000"]);
    let node_server = topo.spawn_in_node(&a, cmd);
    assert!(
        node_server.wait_for_stdout("ready", T),
        "node server: {}",
        node_server.stderr()
    );

    for target in [
        format!("{}:9000", a.underlay),
        format!("[{}]:9000", a.underlay6),
    ] {
        let mut cmd = probe();
        cmd.args(["tcp", &target, "--count", "1"]);
        let v = json_of(&topo.run_in_outside(&out, cmd, T), "outside tcp probe");
        assert_eq!(
            v["by_id"]["node-a"], 1,
            "outside -> {target}: expected node-a to answer, got {v}"
        );
    }

    let _pod_server = serve_in_pod(&topo, &pa, "p1");
    let mut cmd = probe();
    cmd.args(["tcp", &format!("{}:8080", pa.ip), "--count", "1"]);
    let v = json_of(&topo.run_in_node(&a, cmd, T), "node -> pod probe");
    assert_eq!(
        v["by_id"]["p1"], 1,
        "node a -> its pod: expected p1 to answer, got {v}"
    );
    assert_eq!(
        v["seen_src"][&a.underlay.to_string()],
        1,
        "node-originated traffic should use the underlay address {} as source, got {v}",
        a.underlay
    );
}

#[test]
fn pod_process_runs_in_node_cgroup_and_pod_netns() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let node = topo.add_node("n", Ipv4Addr::new(192, 0, 2, 5));
    let pod = topo.add_pod(&node, "web", Ipv4Addr::new(198, 18, 5, 2), None);
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let p = topo.spawn_in_pod(&pod, cmd);

    let procs =
        fs::read_to_string(node.cgroup.join("cgroup.procs")).expect("read node cgroup.procs");
    assert!(
        procs.lines().any(|l| l.trim() == p.pid().to_string()),
        "pid {} should be in {}/cgroup.procs, which holds {procs:?}",
        p.pid(),
        node.cgroup.display()
    );
    let ns_of_pid = fs::metadata(format!("/proc/{}/ns/net", p.pid()))
        .expect("stat /proc/pid/ns/net")
        .ino();
    let pod_ns = fs::metadata(Path::new("/run/netns").join(&pod.netns))
        .expect("stat pod netns")
        .ino();
    assert_eq!(
        ns_of_pid, pod_ns,
        "process should be in the pod's network namespace"
    );
    // Only the network namespace changes: the cgroup mount stays visible.
    let mut cmd = Command::new("cat");
    cmd.arg(node.cgroup.join("cgroup.procs"));
    let out = topo.run_in_pod(&pod, cmd, T);
    assert!(
        out.status.success(),
        "cgroup fs should be visible inside the pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_in_kills_on_timeout() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let node = topo.add_node("n", Ipv4Addr::new(192, 0, 2, 6));
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    let out = topo.run_in_node(&node, cmd, Duration::from_millis(300));
    assert!(
        !out.status.success(),
        "a command past its timeout should be killed, got {:?}",
        out.status
    );
}

fn assert_gone(id: &str, cgroup: &Path, pid: u32) {
    let list = tests::ip(&["netns", "list"]).expect("ip netns list");
    assert!(
        !list.contains(id),
        "no netns of {id} should remain, ip netns list: {list}"
    );
    assert!(
        !cgroup.exists(),
        "cgroup {} should be removed",
        cgroup.display()
    );
    assert!(
        !Path::new("/tmp").join(id).exists(),
        "/tmp/{id} should be removed"
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/tmp/{id}")),
        "no mount under /tmp/{id} should remain"
    );
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "process {pid} should be dead, /proc/{pid}/stat: {stat}"
    );
}

fn busy_topology() -> (Topology, String, std::path::PathBuf, tests::Proc) {
    let mut topo = Topology::new();
    let (a, _b, pa, _pb) = two_node_cluster(&mut topo);
    topo.add_outside("client", Ipv4Addr::new(203, 0, 113, 20));
    let bpffs = topo.bpffs();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&format!(" {} ", bpffs.display())) && l.contains(" - bpf ")),
        "{} should be a bpf mount",
        bpffs.display()
    );
    fs::write(topo.scratch("work").join("f"), "x").unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    let p = topo.spawn_in_pod(&pa, cmd);
    assert!(a.cgroup.exists());
    let id = topo.id().to_string();
    let cgroup = a.cgroup.parent().unwrap().to_path_buf();
    (topo, id, cgroup, p)
}

#[test]
fn drop_removes_namespaces_cgroups_mounts_and_processes() {
    if !require_root() {
        return;
    }
    let (topo, id, cgroup, p) = busy_topology();
    let pid = p.pid();
    // The topology kills the process even while the handle is still alive.
    drop(topo);
    assert_gone(&id, &cgroup, pid);
    assert!(
        p.try_wait().is_some(),
        "the process should have been reaped by the topology"
    );
}

#[test]
fn cleanup_leftovers_removes_a_leaked_topology() {
    if !require_root() {
        return;
    }
    let (topo, id, cgroup, p) = busy_topology();
    let pid = p.pid();
    // Simulate a crash: nothing of the topology's Drop runs.
    std::mem::forget(p);
    std::mem::forget(topo);
    // The topology's own id as prefix, so concurrent tests are untouched.
    let log = cleanup_leftovers(&id);
    assert!(
        !log.iter().any(|l| l.starts_with("error")),
        "cleanup reported errors: {log:#?}"
    );
    assert_gone(&id, &cgroup, pid);
}

#[test]
fn ipv6_only_pod_is_optional() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let n = topo.add_node("n", Ipv4Addr::new(192, 0, 2, 7));
    let p = topo.add_pod(&n, "v4only", Ipv4Addr::new(198, 18, 7, 2), None);
    let q = topo.add_pod(
        &n,
        "dual",
        Ipv4Addr::new(198, 18, 7, 3),
        Some(Ipv6Addr::new(0x2001, 0xdb8, 1, 7, 0, 0, 0, 3)),
    );
    let _s = serve_in_pod(&topo, &q, "dual");
    let mut cmd = probe();
    cmd.args(["tcp", &format!("{}:8080", q.ip), "--count", "1"]);
    let v = json_of(&topo.run_in_pod(&p, cmd, T), "same-node pod probe");
    assert_eq!(
        v["by_id"]["dual"], 1,
        "pods on one node should reach each other, got {v}"
    );
}

#[test]
fn a_panicking_test_still_tears_down() {
    if !require_root() {
        return;
    }
    let seen = std::panic::catch_unwind(|| {
        let (topo, id, cgroup, p) = busy_topology();
        let pid = p.pid();
        // Leak the handle so only the topology's Drop, during unwinding, can stop the process.
        std::mem::forget(p);
        std::panic::resume_unwind(Box::new((id, cgroup, pid, topo.id().to_string())));
    });
    let payload = seen.expect_err("the closure panics");
    let (id, cgroup, pid, _) = *payload
        .downcast::<(String, std::path::PathBuf, u32, String)>()
        .expect("payload");
    assert_gone(&id, &cgroup, pid);
}
