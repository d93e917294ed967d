//! `sluice-demo` end to end (needs root): the whole product on two nodes —
//! sluice-cni daemon (VXLAN) and the plugin chain as a runtime runs it,
//! sluice-proxy on both nodes (ClusterIP, and a NodePort reached from
//! outside whose backends are a local pod and a pod across the overlay,
//! with sluice-cni's masquerade table loaded), sluice-dns through the pods'
//! resolv.conf. The demo exits non-zero when any of its checks fails.

use std::process::Command;

use tests::{require_root, workspace_bin};

#[test]
fn demo_runs_the_whole_product() {
    if !require_root() {
        return;
    }
    let out = Command::new(workspace_bin("sluice-demo"))
        .output()
        .expect("run sluice-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sluice-demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "100 of 100 connections ok",
        "100 of 100 from outside ok",
        "3 of 3 removed by DEL",
        "pod -> pod       across nodes: ok",
        "\"198.19.0.10\"",
    ] {
        assert!(
            stdout.contains(line),
            "demo summary lacks {line:?}:\n{stdout}"
        );
    }
}
