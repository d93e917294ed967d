//! Builds the host-routing eBPF programs (cni-ebpf) for the BPF target with
//! the nightly toolchain and bpf-linker, so a plain `cargo build -p
//! sluice-cni` embeds them.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "cni-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../cni-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
}
