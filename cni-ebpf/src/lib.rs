//! Empty on purpose: the programs are the `sluice-cni-ebpf` binary, built
//! for `bpfel-unknown-none` by sluice-cni's build script.
#![no_std]
