//! Empty on purpose: the host-routing programs are the `sluice-cni-ebpf`
//! binary, built for `bpfel-unknown-none` by sluice-cni's build script; what
//! they share with the daemon is `cni-common` (`cni-ebpf/common`).
#![no_std]
