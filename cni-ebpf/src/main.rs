//! eBPF host routing for `sluice-cni daemon --host-routing ebpf`.
//!
//! Pod-to-pod IPv4 traffic inside the cluster ranges skips the node's IP
//! forwarding path (routing decision, netfilter hooks, one backlog queue per
//! veth hop): the kernel FIB still decides where a packet goes
//! (`bpf_fib_lookup`), but the packet is handed straight to that device.
//!
//! - `slc_from_pod`, tc ingress of every pod's host-side veth (attached by
//!   the plugin at ADD): a packet for a pod on this node goes to the ingress
//!   of that pod's interface in its namespace (`bpf_redirect_peer`); one for a
//!   pod on another node goes out of the VXLAN device or the underlay
//!   (host-gw), MACs filled from the neighbour table.
//! - `slc_to_pod`, tc ingress of the VXLAN device and of the underlay
//!   interface (attached by the daemon): a packet for a pod on this node goes
//!   straight into that pod's namespace.
//!
//! Anything else (another family, a destination outside the cluster ranges,
//! an expiring TTL, a FIB answer other than "forward") is left to the stack
//! unchanged, so the fast path can only ever be a shortcut of the route the
//! kernel would have taken. What it skips is netfilter: NAT done by
//! conntrack (kube-proxy's iptables/nftables DNAT of ClusterIP traffic) would
//! not be undone on the replies, which is why this mode is opt-in and meant
//! for nodes whose service load balancing is done at the socket (sluice-proxy).
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

// First: its `conf!` macro is used by the modules below.
#[cfg(target_arch = "bpf")]
#[macro_use]
mod config;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod prog;
#[cfg(target_arch = "bpf")]
mod vxlan;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
