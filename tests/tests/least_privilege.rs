//! Least privilege, proven by running it: the sluice-proxy image, loaded into
//! podman from the archive `cargo xtask image` writes, runs with exactly what
//! the DaemonSet grants (capabilities read from the manifest, not privileged,
//! no privilege escalation, read-only root, the manifest's host mounts mapped
//! onto the test's bpffs and node cgroup, the ConfigMap as its config file,
//! the node's network namespace as host network) and load-balances a
//! ClusterIP for a pod of that node.
//!
//! One deviation from the cluster: the agent follows a manifest directory
//! (`--manifests`, mounted read-only) instead of the API server.
//!
//! Seccomp: Kubernetes' `RuntimeDefault` is the runtime's profile. This test
//! uses podman's own profile with one change, the one containerd (>= 1.7)
//! and Docker (>= 23) made: `bpf` is allowed with CAP_BPF and
//! `perf_event_open` with CAP_PERFMON. Debian 12's podman profile
//! (containers-common 0.50) still asks for CAP_SYS_ADMIN for both, as
//! CRI-O's default does.
//!
//! Needs root, podman, and the image archive (`cargo xtask image --debug
//! --only sluice-proxy`; `cargo xtask test` builds it and sets
//! `SLUICE_IMAGES_DIR`).

mod deploy_common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use deploy_common::*;
use k8s_openapi::api::core::v1::Container;
use serde_json::Value;
use tests::{
    in_netns,
    proxy::{count, probe_json, serve, service_yaml, slice_yaml, write_manifest, Ep, SvcPort},
    require_root, Node, Topology,
};

const T: Duration = Duration::from_secs(30);
const IMAGE: &str = "sluice-proxy";

/// The image archive: `$SLUICE_IMAGES_DIR`, else `<target>/images`, found
/// from the test executable (`target/debug/deps/<test>`).
fn archive() -> PathBuf {
    let name = format!("{IMAGE}-{VERSION}.oci.tar");
    let dir = std::env::var_os("SLUICE_IMAGES_DIR").map(PathBuf::from).or_else(|| {
        let exe = std::env::current_exe().ok()?;
        exe.ancestors().nth(3).map(|target| target.join("images"))
    });
    let path = dir.map(|d| d.join(&name));
    match path {
        Some(p) if p.is_file() => p,
        p => panic!(
            "image archive {name} not found (looked at {p:?}): build it with `cargo xtask image --debug --only {IMAGE}` \
             (`cargo xtask test` does) or set SLUICE_IMAGES_DIR"
        ),
    }
}

/// What the DaemonSet grants the agent's container, read from the manifest.
struct Grant {
    image: String,
    command: Vec<String>,
    args: Vec<String>,
    caps: Vec<String>,
    read_only_root: bool,
    /// (mountPath, host path or "configMap:NAME", readOnly, propagation)
    mounts: Vec<(String, String, bool, Option<String>)>,
    config_yaml: String,
}

fn grant() -> Grant {
    let objects = kustomize("deploy/overlays/kube-proxy-replacement");
    let template = workload(&objects, "sluice-proxy");
    let spec = template.spec.as_ref().expect("pod spec");
    assert_eq!(spec.host_network, Some(true), "the test stands the node's namespace in for the host network");
    let c: &Container = spec.containers.iter().find(|c| c.name == "sluice-proxy").expect("container sluice-proxy");
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = spec.volumes.iter().flatten().find(|v| v.name == m.name).expect("volume of mount");
        let source = if let Some(h) = &v.host_path {
            h.path.clone()
        } else if let Some(cm) = &v.config_map {
            format!("configMap:{}", cm.name)
        } else {
            panic!("volume {} is neither a hostPath nor a ConfigMap: teach this test to map it", v.name);
        };
        mounts.push((m.mount_path.clone(), source, m.read_only == Some(true), m.mount_propagation.clone()));
    }
    Grant {
        image: c.image.clone().expect("image"),
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        caps: caps.add.clone().unwrap_or_default(),
        read_only_root: sc.read_only_root_filesystem == Some(true),
        mounts,
        config_yaml: config_map_data(&objects, "sluice-proxy", "config.yaml"),
    }
}

/// podman with its storage, state and runtime files in the test's own
/// directory, so nothing is shared with other users of podman here.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn cmd(&self) -> Command {
        let conf = self.dir.join("containers.conf");
        if !conf.exists() {
            // podman's default sysctl (net.ipv4.ping_group_range) is refused
            // by runc in a namespace that is not the container's own; a
            // kubelet sets none for a host-network pod.
            std::fs::write(&conf, "[containers]\ndefault_sysctls = []\n").expect("writing containers.conf");
        }
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", conf);
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            // runc: crun refuses hosts with cgroup v1 and v2 controllers mixed
            // ("cgroups in hybrid mode not supported"), as this machine has.
            .args(["--runtime", "runc"]);
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("running podman");
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Removes the container (conmon keeps it alive without its client) before
/// the topology takes the namespace and mounts away.
struct ContainerGuard<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        let _ = self.podman.cmd().args(["rm", "--force", "--time", "0", &self.name]).output();
    }
}

/// Podman's default seccomp profile with `bpf`/`perf_event_open` gated by
/// CAP_BPF/CAP_PERFMON (as containerd's and Docker's RuntimeDefault).
fn runtime_default_seccomp(dest: &Path) {
    let src = "/usr/share/containers/seccomp.json";
    let mut profile: Value = serde_json::from_str(
        &std::fs::read_to_string(src).unwrap_or_else(|e| panic!("reading podman's default profile {src}: {e}")),
    )
    .expect("seccomp profile JSON");
    let gated = ["bpf", "perf_event_open"];
    for rule in profile["syscalls"].as_array_mut().expect("syscalls") {
        let denies_without_sys_admin = rule["action"] == "SCMP_ACT_ERRNO"
            && rule["excludes"]["caps"].as_array().is_some_and(|c| c.iter().any(|c| c == "CAP_SYS_ADMIN"));
        if denies_without_sys_admin {
            rule["names"].as_array_mut().unwrap().retain(|n| !gated.iter().any(|g| n == g));
        }
    }
    for (name, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        profile["syscalls"].as_array_mut().unwrap().push(serde_json::json!({
            "names": [name], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {"caps": [cap]}, "excludes": {}
        }));
    }
    std::fs::write(dest, serde_json::to_vec_pretty(&profile).unwrap()).unwrap();
}

/// `NAME=N:N` with N this process's soft limit `resource`, at most `max`
/// (lowering a limit needs no privilege; runc could not set 96369 processes
/// here although that was the caller's own limit).
fn rlimit(name: &str, resource: libc::__rlimit_resource_t, max: u64) -> String {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one rlimit into `r`.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut r) }, 0, "getrlimit {name}");
    let n = r.rlim_cur.min(max);
    format!("{name}={n}:{n}")
}

/// The bit of each capability (linux/capability.h) named in the manifest.
fn cap_bit(name: &str) -> u32 {
    match name {
        "NET_BIND_SERVICE" => 10,
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other}: add its bit to this test"),
    }
}

/// An HTTP GET from the node's network namespace; None when nothing listens.
fn http_get(node: &Node, addr: &str, path: &str) -> Option<String> {
    let addr = addr.to_owned();
    let path = path.to_owned();
    in_netns(&node.netns, move || {
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .expect("entering the node's namespace")
}

#[test]
fn the_proxy_image_serves_a_cluster_ip_with_exactly_the_daemonsets_privileges() {
    if !require_root() {
        return;
    }
    let archive = archive();
    let g = grant();
    assert!(g.read_only_root, "the manifest must ask for a read-only root (checked in manifests.rs too)");

    let mut topo = Topology::new();
    let a = topo.add_node("a", Ipv4Addr::new(192, 0, 2, 1));
    let b = topo.add_node("b", Ipv4Addr::new(192, 0, 2, 2));
    let client = topo.add_pod(&a, "client", Ipv4Addr::new(198, 18, 1, 5), None);
    let be1 = topo.add_pod(&a, "be1", Ipv4Addr::new(198, 18, 1, 10), None);
    let be2 = topo.add_pod(&b, "be2", Ipv4Addr::new(198, 18, 2, 10), None);
    topo.route_pod_cidrs(&[(&a, "198.18.1.0/24", None), (&b, "198.18.2.0/24", None)]);
    let _servers = [serve(&topo, &be1, "be1", &[8080], &[8081]), serve(&topo, &be2, "be2", &[8080], &[8081])];
    let manifests = topo.scratch("manifests");
    write_manifest(
        &manifests,
        "web.yaml",
        &format!(
            "{}---\n{}",
            service_yaml(
                "web",
                &["198.19.0.10"],
                &[
                    SvcPort { name: "http", port: 80, target: "8080", proto: "TCP" },
                    SvcPort { name: "dns", port: 53, target: "8081", proto: "UDP" }
                ]
            ),
            slice_yaml(
                "web",
                "web-1",
                "IPv4",
                &[("http", 8080, "TCP"), ("dns", 8081, "UDP")],
                &[Ep::ready("198.18.1.10", "a"), Ep::ready("198.18.2.10", "b")]
            )
        ),
    );

    // The manifest's host paths, mapped onto this node.
    let bpffs = topo.bpffs();
    let config_dir = topo.scratch("config");
    std::fs::write(config_dir.join("config.yaml"), &g.config_yaml).unwrap();
    let mut host_for = BTreeMap::new();
    host_for.insert("/sys/fs/bpf".to_owned(), bpffs.clone());
    host_for.insert("/sys/fs/cgroup".to_owned(), a.cgroup.clone());
    host_for.insert("configMap:sluice-proxy".to_owned(), config_dir.clone());
    // The runtime's netns directory (the UDP socket sweep enters pods' namespaces through it).
    host_for.insert("/var/run/netns".to_owned(), std::path::PathBuf::from("/run/netns"));

    let podman = Podman { dir: topo.scratch("podman") };
    let seccomp = podman.dir.join("seccomp.json");
    runtime_default_seccomp(&seccomp);
    let loaded = podman.run(&["load", "--input", archive.to_str().unwrap()]);
    assert!(loaded.contains(&g.image), "podman load must name the image as the manifest does ({}): {loaded}", g.image);

    let name = format!("{}-proxy", topo.id());
    let mut run = podman.cmd();
    run.args(["run", "--rm", "--name", &name, "--pull", "never"])
        .arg(format!("--network=ns:/run/netns/{}", a.netns))
        .args(["--cap-drop", "ALL"])
        .args(["--security-opt", "no-new-privileges"])
        .arg(format!("--security-opt=seccomp={}", seccomp.display()))
        .args(["--read-only", "--read-only-tmpfs=false"])
        // podman's default limits (open files 1048576) are above this
        // machine's hard limits, which root cannot raise here (no
        // CAP_SYS_RESOURCE in its bounding set): give the caller's own.
        .args(["--ulimit", &rlimit("nofile", libc::RLIMIT_NOFILE, 65_536), "--ulimit", &rlimit("nproc", libc::RLIMIT_NPROC, 4096)])
        .args(["--env", &format!("NODE_NAME={}", a.name), "--env", "RUST_LOG=info"]);
    for cap in &g.caps {
        run.args(["--cap-add", &format!("CAP_{cap}")]);
    }
    for (target, source, ro, propagation) in &g.mounts {
        let host = host_for
            .get(source)
            .unwrap_or_else(|| panic!("the manifest mounts {source} at {target}: teach this test where that is on a test node"));
        let mut opts = vec![if *ro { "ro" } else { "rw" }];
        match propagation.as_deref() {
            Some("HostToContainer") => opts.push("rslave"),
            Some("Bidirectional") => panic!("Bidirectional propagation needs privileged mode"),
            _ => {}
        }
        run.arg("--volume").arg(format!("{}:{target}:{}", host.display(), opts.join(",")));
    }
    run.arg("--volume").arg(format!("{}:/etc/sluice-test/manifests:ro", manifests.display()));
    let (entry, rest) = g.command.split_first().expect("the manifest names the command");
    run.args(["--entrypoint", entry]).arg(&g.image).args(rest).args(&g.args);
    run.args(["--manifests", "/etc/sluice-test/manifests"]);
    let guard = ContainerGuard { podman: &podman, name: name.clone() };
    let agent = topo.spawn_in_netns(&a.netns, None, run);
    assert!(
        agent.wait_for_stderr("sluice-proxy running", T),
        "sluice-proxy did not start under the manifest's privileges: {}",
        agent.stderr()
    );

    // The container runs with exactly the manifest's capabilities.
    let pid = podman.run(&["inspect", "--format", "{{.State.Pid}}", &name]).trim().to_owned();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| {
        let hex = status.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {status}"));
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    let want: u64 = g.caps.iter().map(|c| 1u64 << cap_bit(c)).fold(0, |a, b| a | b);
    assert_eq!(field("CapEff:"), want, "effective capabilities must be exactly the manifest's {:?}", g.caps);
    assert_eq!(field("CapBnd:"), want, "bounding set must be exactly the manifest's {:?}", g.caps);
    assert_eq!(field("NoNewPrivs:"), 1, "no_new_privs must be set (allowPrivilegeEscalation: false)");
    assert_eq!(field("Seccomp:"), 2, "a seccomp filter must be active");

    let pinned = bpffs.join("sluice");
    let deadline = Instant::now() + T;
    let frontend = loop {
        let rows = tests::proxy::status(&pinned);
        if let Some(row) = rows.iter().find(|r| r["frontend"] == "198.19.0.10:80/TCP") {
            if row["backends"].as_array().is_some_and(|b| b.len() == 2) {
                break row.clone();
            }
        }
        assert!(Instant::now() < deadline, "frontend not programmed in time; agent stderr: {}", agent.stderr());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(frontend["backends"].as_array().unwrap().len(), 2, "{frontend}");

    let tcp = probe_json(&topo, &client, &["tcp", "198.19.0.10:80", "--count", "200"], T);
    assert_eq!(tcp["ok"], 200, "every connection through the ClusterIP must succeed: {tcp}");
    assert!(count(&tcp, "by_id", "be1") > 0 && count(&tcp, "by_id", "be2") > 0, "both backends must be reached: {tcp}");
    assert_eq!(count(&tcp, "peer_names", "198.19.0.10:80"), 200, "getpeername() must show the VIP: {tcp}");
    let udp = probe_json(&topo, &client, &["udp", "198.19.0.10:53", "--count", "50"], T);
    assert_eq!(udp["ok"], 50, "UDP through the ClusterIP: {udp}");

    // Health and metrics on the node's loopback, not on its address.
    let health = http_get(&a, "127.0.0.1:10249", "/healthz").expect("the agent must serve /healthz on 127.0.0.1:10249");
    assert!(health.starts_with("HTTP/1.1 200") || health.starts_with("HTTP/1.0 200"), "/healthz: {health}");
    assert!(
        http_get(&a, "192.0.2.1:10249", "/metrics").is_none(),
        "metrics must not be served on the node's address"
    );

    drop(guard);
    assert!(agent.wait_timeout(T).is_some(), "the podman client must exit once its container is removed");
}
