//! Builds the eBPF programs (proxy-ebpf) for the BPF target with the nightly
//! toolchain and bpf-linker, so a plain `cargo build -p proxy-user` embeds them.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "proxy-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../proxy-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
}
