//! The namespace topology harness for Sluice's privileged end-to-end tests.
//!
//! A [`Topology`] builds nodes, pods and outside clients out of network
//! namespaces (addresses only from the documentation/benchmark ranges), gives
//! each node a cgroup v2 directory, runs processes inside them and removes all
//! of it on drop. [`cleanup_leftovers`] removes what a crashed run left behind.

pub mod bench;
mod process;
mod sys;
mod topology;
pub mod apiserver;
pub mod cni;
pub mod proxy;

use std::path::PathBuf;

pub use process::Proc;
pub use sys::{cgroup2_root, cleanup_leftovers, in_netns, ip, ip_in, sysctls, ThreadNetns, CGROUP_PARENT};
pub use topology::{
    Node, Outside, Pod, Topology, HOST_VETH_MAC, POD_GATEWAY_V4, POD_GATEWAY_V6, UNDERLAY_BRIDGE,
};

/// Prefix of every name (netns, cgroup, /tmp dir) a topology creates.
pub const NAME_PREFIX: &str = "slc";

/// Privileged tests start with `if !tests::require_root() { return; }`.
/// Without root such a test fails with the reason: a green run must mean
/// every counted test ran (`cargo xtask test` runs them as root).
pub fn require_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "this test needs root (network namespaces, cgroups, bpffs): run `cargo xtask test` as root");
    root
}

/// The environment variable that overrides a workspace binary's path:
/// `sluice-proxy` -> `SLUICE_PROXY_BIN`, `sluice-probe` -> `SLUICE_PROBE_BIN`.
pub fn bin_env_var(name: &str) -> String {
    let stem = name.strip_prefix("sluice-").unwrap_or(name);
    format!("SLUICE_{}_BIN", stem.to_ascii_uppercase().replace('-', "_"))
}

/// Path of a workspace binary: the `SLUICE_<NAME>_BIN` variable, else
/// `<target>/<profile>/<name>` found next to the running test executable
/// (`target/debug/deps/<test>` -> `target/debug/<name>`).
///
/// # Panics
/// When neither exists, with a message saying how to build it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let var = bin_env_var(name);
    if let Some(p) = std::env::var_os(&var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} does not name a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().unwrap_or_default();
    if let Some(found) = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
    {
        return found;
    }
    panic!(
        "binary {name} not found: set {var} or build the workspace first (`cargo xtask test` does both); \
         looked next to {}",
        exe.display()
    );
}
