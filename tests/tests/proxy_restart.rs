//! End-to-end: the dataplane keeps serving while the agent is down, a
//! restarted agent adopts the pinned state without a gap, and `cleanup`
//! removes everything (needs root; skipped otherwise).

use std::{net::Ipv4Addr, process::Command, time::Duration};

use tests::{
    proxy::{count, probe_json, serve, service_yaml, slice_yaml, write_manifest, Agent, Ep, SvcPort},
    require_root, workspace_bin, Topology,
};

const T: Duration = Duration::from_secs(60);
const SYNC: Duration = Duration::from_secs(10);

#[test]
fn new_connections_never_fail_across_sigkill_restart_keep_on_exit_and_cleanup_removes_all() {
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
    let _servers = [serve(&topo, &be1, "be1", &[8080], &[]), serve(&topo, &be2, "be2", &[8080], &[])];
    let manifests = topo.scratch("manifests");
    let svc = service_yaml("web", &["198.19.0.10"], &[SvcPort { name: "http", port: 80, target: "8080", proto: "TCP" }]);
    let slice = slice_yaml(
        "web",
        "web-1",
        "IPv4",
        &[("http", 8080, "TCP")],
        &[Ep::ready("198.18.1.10", "a"), Ep::ready("198.18.2.10", "b")],
    );
    write_manifest(&manifests, "web.yaml", &format!("{svc}---\n{slice}"));
    let agent = Agent::start(&mut topo, &a, &manifests, &[]);
    agent.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"], SYNC);
    let bpffs = agent.bpffs.clone();

    // A steady stream of new connections (one every 10 ms for 6 s) while the
    // agent is SIGKILLed, stays down, and is restarted onto the same pins.
    let mut stream = Command::new(workspace_bin("sluice-probe"));
    stream.args(["stream", "198.19.0.10:80", "--interval-ms", "10", "--duration-ms", "6000"]);
    let streamer = topo.spawn_in_pod(&client, stream);
    std::thread::sleep(Duration::from_millis(1000));
    agent.proc.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let restarted = Agent::start_with_bpffs(&topo, &a, &manifests, &bpffs, &[]);
    let out = streamer.wait_output(T);
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stream output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert!(result["ok"].as_u64().unwrap_or(0) > 100, "the stream should have run: {result}");
    assert_eq!(result["failed"], 0, "no connection may fail while the agent is killed and restarted: {result}");
    assert!(
        restarted.proc.wait_for_stderr("adopted programmed state", Duration::from_secs(5)),
        "the restarted agent should adopt the pinned state: {}",
        restarted.proc.stderr()
    );
    restarted.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080", "198.18.2.10:8080"], SYNC);

    // The restarted agent still follows changes.
    let slice = slice_yaml("web", "web-1", "IPv4", &[("http", 8080, "TCP")], &[Ep::ready("198.18.2.10", "b")]);
    write_manifest(&manifests, "web.yaml", &format!("{svc}---\n{slice}"));
    restarted.wait_for("198.19.0.10:80/TCP", &["198.18.2.10:8080"], SYNC);
    let after = probe_json(&topo, &client, &["tcp", "198.19.0.10:80", "--count", "50"], T);
    assert_eq!(count(&after, "by_id", "be2"), 50, "{after}");

    // --keep-on-exit: SIGTERM leaves the dataplane serving.
    restarted.proc.kill();
    let kept = Agent::start_with_bpffs(&topo, &a, &manifests, &bpffs, &["--keep-on-exit"]);
    kept.proc.signal(libc::SIGTERM);
    assert!(kept.proc.wait_timeout(Duration::from_secs(10)).is_some(), "agent should exit on SIGTERM");
    let still = probe_json(&topo, &client, &["tcp", "198.19.0.10:80", "--count", "20"], T);
    assert_eq!(still["ok"], 20, "with --keep-on-exit the dataplane keeps serving after the agent exits: {still}");

    // `sluice-proxy cleanup` removes every pin and detaches the programs.
    let cleanup = Command::new(workspace_bin("sluice-proxy")).args(["cleanup", "--bpffs"]).arg(&bpffs).output().unwrap();
    assert!(cleanup.status.success(), "cleanup failed: {}", String::from_utf8_lossy(&cleanup.stderr));
    let left: Vec<_> = std::fs::read_dir(&bpffs).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "cleanup must remove every pinned object, found {left:?}");
    let gone = probe_json(&topo, &client, &["tcp", "198.19.0.10:80", "--count", "2", "--timeout-ms", "500"], T);
    assert_eq!(gone["ok"], 0, "after cleanup the VIP is no longer translated: {gone}");
}
