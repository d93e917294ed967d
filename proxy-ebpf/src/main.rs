//! The proxy's eBPF programs.
//!
//! - `sock_lb`: socket-level load balancing for ClusterIP traffic.
//!   connect/sendmsg translate a (VIP, port, protocol) to one backend before
//!   the socket ever emits a packet, so established traffic pays nothing per
//!   packet; recvmsg/getpeername translate back so the application only ever
//!   sees the VIP.
//! - `tc`: external traffic (NodePort, LoadBalancer IPs, ExternalIPs) at tc;
//!   `xdp`: its fast path for tracked flows; `bind`: the NodePort bind guard.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

// Programs (siblings: each uses the shared modules below, never another program).
#[cfg(target_arch = "bpf")]
mod bind;
#[cfg(target_arch = "bpf")]
mod sock_lb;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod xdp;

// Shared: every map, packet access and checksums, conntrack rules, refusals.
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod reject;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
