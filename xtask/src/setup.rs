//! `cargo xtask setup`: brings a fresh machine to what ENVIRONMENT.md lists.
//! Every step checks first and does nothing when already satisfied.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use crate::util;

/// Debian packages the tests, demo and benchmarks use, and what the eBPF
/// toolchain links against (LLVM 22, matching nightly rustc's LLVM).
pub const PACKAGES: &[&str] = &[
    "iperf3",
    "dnsperf",
    "knot-dnsutils",
    "bind9-dnsutils",
    "containernetworking-plugins",
    "iproute2",
    "iputils-ping",
    "nftables",
    "iptables",
    "conntrack",
    "bpftool",
    "hyperfine",
    "sockperf",
    "tcpdump",
    // The XDP test makes veth frames wire-like (checksums, NAPI).
    "ethtool",
    // The benchmark plots draw text with this font (no fontconfig needed).
    "fonts-dejavu-core",
    // `cargo xtask image` archives are checked with skopeo; the least-privilege test runs them under podman.
    "podman",
    "skopeo",
    // podman's own crun refuses hybrid cgroup v1/v2 hosts such as these.
    "runc",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // cargo xtask vm-test: the emulator, the guest's busybox initramfs, depmod for the guest's modules.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    util::require_root("cargo xtask setup")?;
    packages().context("setup step `Debian packages` failed")?;
    nightly().context("setup step `nightly toolchain` failed")?;
    rust_src().context("setup step `rust-src for nightly` failed")?;
    bpf_linker().context("setup step `bpf-linker` failed")?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    util::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("setup: Debian packages: all {} present", PACKAGES.len());
        return Ok(());
    }
    println!("setup: Debian packages: installing {}", missing.join(" "));
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !installed(p)).collect();
    anyhow::ensure!(
        still.is_empty(),
        "still not installed after apt-get: {}",
        still.join(" ")
    );
    Ok(())
}

fn nightly() -> anyhow::Result<()> {
    let list = util::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed: is rustup installed?")?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: nightly toolchain: present");
        return Ok(());
    }
    println!("setup: nightly toolchain: installing");
    util::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
}

fn rust_src() -> anyhow::Result<()> {
    let sysroot = util::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("`rustc +nightly --print sysroot` failed")?;
    let library = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library");
    if library.is_dir() {
        println!("setup: rust-src for nightly: present");
        return Ok(());
    }
    println!("setup: rust-src for nightly: installing");
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = util::output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    println!("setup: bpf-linker {BPF_LINKER_VERSION}: installing (about a minute)");
    util::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            // Without it bpf-linker looks for LLVM in /usr/lib64 and fails to link.
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}
