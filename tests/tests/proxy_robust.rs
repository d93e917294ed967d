//! End-to-end: what a new user or a crash meets, as the binary says it.
//! Two agents on one bpffs (the second refuses), the agent under the
//! DaemonSet's capabilities (UDP sockets of removed backends are still
//! destroyed; without SYS_ADMIN it warns at start), no bpffs mounted (it
//! mounts one, or says what to do), `status` without an agent, not root,
//! and wrong flags. Needs root; skipped otherwise.

use std::{
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;
use tests::{
    proxy::{serve, service_yaml, slice_yaml, write_manifest, Agent, Ep, SvcPort},
    require_root, workspace_bin, Node, Proc, Topology,
};

const T: Duration = Duration::from_secs(60);
const SYNC: Duration = Duration::from_secs(10);

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
/// What proxy-user/deploy/sluice-proxy.yaml grants, before SYS_ADMIN was added.
const DAEMONSET_CAPS_BEFORE: &[u32] = &[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_RESOURCE];
/// What it grants now.
const DAEMONSET_CAPS: &[u32] = &[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_RESOURCE, CAP_SYS_ADMIN];

/// Limits the capabilities `cmd` runs with to `keep`, as a container runtime
/// does: the bounding set loses every other capability, so the exec'd
/// program (uid 0) gets exactly `keep` as permitted and effective.
fn with_caps(cmd: &mut Command, keep: &[u32]) {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let keep_mask = keep.iter().fold(0u64, |m, c| m | 1 << c);
    // SAFETY: the closure only calls prctl(2), async-signal-safe, and
    // builds io::Error from errno without allocating.
    unsafe {
        cmd.pre_exec(move || {
            for cap in 0..=last {
                if keep_mask >> cap & 1 == 0 && libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

fn proxy_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_bin("sluice-proxy"));
    cmd.args(args).env("RUST_LOG", "info").env_remove("NODE_NAME");
    cmd
}

/// `sluice-proxy run` on `node` with `bpffs`, without waiting for it to start.
fn spawn_agent(topo: &Topology, node: &Node, manifests: &Path, bpffs: &Path, caps: Option<&[u32]>, extra: &[&str]) -> Proc {
    let mut cmd = proxy_cmd(&["run", "--node-name", &node.name, "--metrics-addr", "127.0.0.1:0"]);
    cmd.arg("--manifests").arg(manifests).arg("--cgroup").arg(&node.cgroup).arg("--bpffs").arg(bpffs).args(extra);
    if let Some(caps) = caps {
        with_caps(&mut cmd, caps);
    }
    topo.spawn_in_node(node, cmd)
}

fn started(proc: Proc, bpffs: &Path, manifests: &Path) -> Agent {
    assert!(
        proc.wait_for_stderr("sluice-proxy running", Duration::from_secs(20)),
        "sluice-proxy did not start; stderr:\n{}",
        proc.stderr()
    );
    Agent { proc, bpffs: bpffs.to_owned(), manifests: manifests.to_owned() }
}

fn exits_with_error(p: &Proc) -> String {
    let status = p.wait_timeout(Duration::from_secs(20)).unwrap_or_else(|| panic!("still running: {}", p.stderr()));
    assert!(!status.success(), "expected a failure, it succeeded: {}", p.stderr());
    p.stderr()
}

fn assert_says(what: &str, text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{what}: expected {n:?} in:\n{text}");
    }
}

fn web(manifests: &Path) {
    let svc = service_yaml("web", &["198.19.0.10"], &[SvcPort { name: "http", port: 80, target: "8080", proto: "TCP" }]);
    let slice = slice_yaml("web", "web-1", "IPv4", &[("http", 8080, "TCP")], &[Ep::ready("198.18.1.10", "a")]);
    write_manifest(manifests, "web.yaml", &format!("{svc}---\n{slice}"));
}

#[test]
fn a_second_agent_on_the_same_bpffs_refuses_and_names_the_first() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let a = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let manifests = topo.scratch("manifests");
    web(&manifests);
    let bpffs = topo.bpffs().join("sluice-a");
    let first = started(spawn_agent(&topo, &a, &manifests, &bpffs, None, &[]), &bpffs, &manifests);
    first.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080"], SYNC);

    let second = spawn_agent(&topo, &a, &manifests, &bpffs, None, &[]);
    let err = exits_with_error(&second);
    assert_says(
        "the second agent",
        &err,
        &[&format!("another sluice-proxy already uses {} (pid {})", bpffs.display(), first.proc.pid()), "--bpffs"],
    );
    assert!(!err.contains("sluice-proxy running"), "the second agent must not start: {err}");
    assert!(first.proc.try_wait().is_none(), "the first agent keeps running: {}", first.proc.stderr());
    first.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080"], SYNC);

    // Once the first is gone (even killed), the lock is free.
    first.proc.kill();
    let third = started(spawn_agent(&topo, &a, &manifests, &bpffs, None, &[]), &bpffs, &manifests);
    third.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080"], SYNC);
}

fn dns_service(vip: &str) -> String {
    service_yaml("dns", &[vip], &[SvcPort { name: "dns", port: 53, target: "8081", proto: "UDP" }])
}

fn dns_slice(ip: &str, node: &str) -> String {
    slice_yaml("dns", "dns-1", "IPv4", &[("dns", 8081, "UDP")], &[Ep::ready(ip, node)])
}

/// The DaemonSet's capabilities (BPF, NET_ADMIN, PERFMON, SYS_RESOURCE,
/// SYS_ADMIN), no CAP_SYS_PTRACE, pods found through `--netns-dir`: a
/// connected UDP socket balanced to a removed backend is aborted.
#[test]
fn under_the_daemonset_capabilities_a_removed_udp_backend_still_aborts_its_sockets() {
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
    write_manifest(&manifests, "dns.yaml", &format!("{}---\n{}", dns_service("198.19.0.53"), dns_slice("198.18.1.10", "a")));
    // The runtime's netns directory, holding only this test's client pod.
    let netns_dir = topo.scratch("netns");
    std::os::unix::fs::symlink(format!("/run/netns/{}", client.netns), netns_dir.join(&client.netns)).unwrap();
    let bpffs = topo.bpffs().join("sluice-a");
    let dir_flag = format!("--netns-dir={}", netns_dir.display());
    let agent = started(spawn_agent(&topo, &a, &manifests, &bpffs, Some(DAEMONSET_CAPS), &[&dir_flag]), &bpffs, &manifests);
    agent.wait_for("198.19.0.53:53/UDP", &["198.18.1.10:8081"], SYNC);
    assert!(
        !agent.proc.stderr().contains("cannot be destroyed"),
        "with SYS_ADMIN and a netns directory the sweep can work: {}",
        agent.proc.stderr()
    );

    let mut cmd = Command::new(workspace_bin("sluice-probe"));
    cmd.args(["udp", "198.19.0.53:53", "--connected", "--reuse", "--reconnect", "--count", "40", "--interval-ms", "100", "--timeout-ms", "1000"]);
    let resolver = topo.spawn_in_pod(&client, cmd);
    std::thread::sleep(Duration::from_millis(1000));
    write_manifest(&manifests, "dns.yaml", &format!("{}---\n{}", dns_service("198.19.0.53"), dns_slice("198.18.2.10", "b")));
    agent.wait_for("198.19.0.53:53/UDP", &["198.18.2.10:8081"], SYNC);

    let out = resolver.wait_output(T);
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("probe output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let seq: Vec<&str> = r["sequence"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let aborted = seq.iter().filter(|s| s.ends_with("ECONNABORTED")).count();
    assert_eq!(aborted, 1, "the socket pinned to the removed backend is aborted once: {seq:?}; agent:\n{}", agent.proc.stderr());
    assert_eq!(seq.last(), Some(&"be2"), "after reconnecting the client reaches be2: {seq:?}");
}

/// With the capabilities the DaemonSet granted before (no SYS_ADMIN), the
/// agent runs and says at start, at warn level, that the sweep cannot work.
#[test]
fn without_sys_admin_the_agent_warns_at_start_that_udp_sockets_cannot_be_destroyed() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let a = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let manifests = topo.scratch("manifests");
    web(&manifests);
    let bpffs = topo.bpffs().join("sluice-a");
    let agent = started(spawn_agent(&topo, &a, &manifests, &bpffs, Some(DAEMONSET_CAPS_BEFORE), &[]), &bpffs, &manifests);
    agent.wait_for("198.19.0.10:80/TCP", &["198.18.1.10:8080"], SYNC);
    let log = agent.proc.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("connected UDP sockets of removed backends cannot be destroyed"))
        .unwrap_or_else(|| panic!("expected the startup warning: {log}"));
    assert!(line.contains("WARN") && line.contains("CAP_SYS_ADMIN"), "at warn level, naming the capability: {line}");
}

/// `run` with no bpffs at /sys/fs/bpf (in a private mount namespace, so the
/// host's mounts are untouched): it mounts one; without CAP_SYS_ADMIN it
/// says what to do.
#[test]
fn without_a_mounted_bpffs_run_mounts_one_or_says_what_to_do() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let a = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let manifests = topo.scratch("manifests");
    web(&manifests);
    let run = |drop_admin: bool| {
        let proxy = workspace_bin("sluice-proxy");
        let script = format!(
            "umount /sys/fs/bpf 2>/dev/null; exec {}{} run --node-name a --metrics-addr 127.0.0.1:0 --manifests {} --cgroup {} --bpffs /sys/fs/bpf/sluice",
            if drop_admin { "capsh --drop=cap_sys_admin -- -c 'exec \"$0\" \"$@\"' " } else { "" },
            proxy.display(),
            manifests.display(),
            a.cgroup.display(),
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]).env("RUST_LOG", "info");
        topo.spawn_in_node(&a, cmd)
    };
    let mounted = run(false);
    assert!(
        mounted.wait_for_stderr("sluice-proxy running", Duration::from_secs(20)),
        "the agent should mount a bpffs and start: {}",
        mounted.stderr()
    );
    assert_says("mounting", &mounted.stderr(), &["mounted a bpf filesystem", "at=/sys/fs/bpf"]);
    mounted.signal(libc::SIGTERM);
    assert!(mounted.wait_timeout(Duration::from_secs(10)).is_some(), "agent should exit on SIGTERM");

    let refused = run(true);
    let err = exits_with_error(&refused);
    assert_says(
        "no bpffs and no CAP_SYS_ADMIN",
        &err,
        &["/sys/fs/bpf/sluice is not on a bpf filesystem and mounting one on /sys/fs/bpf failed", "mount -t bpf bpf /sys/fs/bpf", "--bpffs"],
    );
    assert_eq!(err.matches("Operation not permitted").count(), 1, "the cause is said once: {err}");
}

fn output(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("running sluice-proxy");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

#[test]
fn status_without_an_agent_says_what_is_missing_and_what_to_check() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let empty = topo.bpffs().join("nobody-here");
    std::fs::create_dir_all(&empty).unwrap();
    let (out, err) = output(proxy_cmd(&["status", "--bpffs"]).arg(&empty));
    assert!(!out.status.success());
    assert_says(
        "status on an empty bpffs dir",
        &err,
        &[&format!("no agent has pinned maps under {}", empty.display()), "is not pinned there", "Is sluice-proxy running on this node?", "--bpffs"],
    );
    assert!(!err.contains("BPF_OBJ_GET"), "no syscall names: {err}");
    let (out, err) = output(&mut proxy_cmd(&["status", "--bpffs", "/nonexistent/sluice"]));
    assert!(!out.status.success());
    assert_says("status on a missing dir", &err, &["no agent has pinned maps under /nonexistent/sluice: the directory does not exist"]);
}

#[test]
fn run_as_an_ordinary_user_names_the_missing_capabilities_and_the_fix() {
    if !require_root() {
        return;
    }
    // A copy an ordinary user may execute: the build tree can sit in a
    // directory only root may enter (a CI clone under `mktemp -d`).
    let dir = tempfile_dir("slc-robust-user");
    let bin = dir.join("sluice-proxy");
    std::fs::copy(workspace_bin("sluice-proxy"), &bin).expect("copy sluice-proxy");
    let mut cmd = Command::new(&bin);
    cmd.args(["run", "--node-name", "a", "--manifests", "/tmp", "--bpffs", "/nonexistent/sluice"])
        .env("RUST_LOG", "info")
        .env_remove("NODE_NAME");
    cmd.uid(65534).gid(65534);
    let (out, err) = output(&mut cmd);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert_says(
        "not root",
        &err,
        &["needs the capabilities BPF, NET_ADMIN and PERFMON", "(missing: BPF, NET_ADMIN, PERFMON)", "sudo sluice-proxy run"],
    );
}

#[test]
fn wrong_or_missing_flags_name_the_flag_and_the_fix() {
    if !require_root() {
        return;
    }
    let (out, err) = output(&mut proxy_cmd(&["run", "--manifests", "/tmp"]));
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_says("no --node-name", &err, &["--node-name"]);
    let (out, err) = output(&mut proxy_cmd(&["run", "--node-name", "a", "--manifests", "/nonexistent/dir"]));
    assert!(!out.status.success());
    assert_says("missing manifests dir", &err, &["--manifests /nonexistent/dir: no such directory"]);
    let (out, err) = output(&mut proxy_cmd(&["run", "--node-name", "a", "--kubeconfig", "/nonexistent/kubeconfig"]));
    assert!(!out.status.success());
    assert_says("missing kubeconfig", &err, &["--kubeconfig /nonexistent/kubeconfig: no such file", "--manifests DIR"]);
}

#[test]
fn an_unusable_kubeconfig_is_named_with_what_to_check() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new();
    let a = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let dir = topo.scratch("kube");
    let kubeconfig = dir.join("config");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\nclusters: not-a-list\n").unwrap();
    let bpffs = topo.bpffs().join("sluice-a");
    let mut cmd = proxy_cmd(&["run", "--node-name", "a", "--metrics-addr", "127.0.0.1:0"]);
    cmd.arg("--kubeconfig").arg(&kubeconfig).arg("--cgroup").arg(&a.cgroup).arg("--bpffs").arg(&bpffs);
    let p = topo.spawn_in_node(&a, cmd);
    let err = exits_with_error(&p);
    assert_says("bad kubeconfig", &err, &[&format!("kubeconfig {}", kubeconfig.display()), "the kubeconfig is unusable"]);
}

/// A fresh directory under /tmp that every user may enter (0755).
fn tempfile_dir(prefix: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod scratch dir");
    dir
}
