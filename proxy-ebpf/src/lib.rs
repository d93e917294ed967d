//! Empty on purpose: the programs are the `sluice-proxy-ebpf` binary, built
//! for `bpfel-unknown-none` by proxy-user's build script.
#![no_std]
