//! The forwarding step both classifiers end in.

use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
    EbpfContext as _,
};

use crate::packet::{zeroed, AF_INET, IP_CHECK, IP_TTL, TC_ACT_UNSPEC};
use crate::vxlan::{vxlan_encap, VTEP_OUI};

/// Looks `saddr -> daddr` up in the FIB as a packet arriving on this
/// interface and, when the kernel would forward it, does what forwarding
/// does (TTL - 1, MACs of the next hop) and hands it to the output device:
/// to its peer's ingress when `peer` (a pod's veth), else to its egress.
#[inline(always)]
pub(crate) fn forward(ctx: &TcContext, saddr: u32, daddr: u32, ttl: u8, peer: bool) -> i32 {
    if ttl <= 1 {
        return TC_ACT_UNSPEC; // the stack answers with ICMP time exceeded
    }
    let mut fib_slot = MaybeUninit::<FibParams>::uninit();
    let fib = zeroed(&mut fib_slot);
    fib.family = AF_INET;
    // SAFETY: reading ifindex from the valid skb context.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // tot_len stays 0: the helper then checks the skb itself against the
    // output MTU, which accepts GSO super-packets (segmented on the way out).
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: fib is a valid, initialised struct on our stack.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), fib, size_of::<FibParams>() as i32, 0) };
    let resolved = rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS);
    if !resolved && rc != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return TC_ACT_UNSPEC; // local, blackhole, unreachable, needs fragmenting...
    }
    // TTL - 1 with the checksum fixed: the helper takes the 16-bit word
    // holding it (TTL, protocol) as it sits in memory, protocol unchanged.
    let new_ttl = ttl - 1;
    let word = |t: u8| u64::from(u16::from_ne_bytes([t, 0]));
    if ctx.l3_csum_replace(IP_CHECK, word(ttl), word(new_ttl), 2).is_err()
        || ctx.store(IP_TTL, &new_ttl, 0).is_err()
    {
        return TC_ACT_UNSPEC;
    }
    if !resolved {
        // The next hop's MAC is not known yet: the neighbour subsystem resolves it.
        let mut nh_slot = MaybeUninit::<bpf_redir_neigh>::uninit();
        let nh = zeroed(&mut nh_slot);
        nh.nh_family = u32::from(AF_INET);
        nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
        // SAFETY: nh is valid for the call.
        return unsafe { bpf_redirect_neigh(fib.ifindex, nh, size_of::<bpf_redir_neigh>() as i32, 0) } as i32;
    }
    if !peer && conf!(vxlan_port) != 0 && fib.ifindex == conf!(vxlan_if) && fib.dmac[..2] == VTEP_OUI {
        if let Some(rc) = vxlan_encap(ctx, fib) {
            return rc;
        }
    }
    let (d, s) = (fib.dmac, fib.smac);
    let macs = [d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5]];
    if ctx.store(0, &macs, 0).is_err() {
        return TC_ACT_UNSPEC;
    }
    if peer {
        // SAFETY: plain helper call, from tc ingress (the only place this runs).
        return unsafe { bpf_redirect_peer(fib.ifindex, 0) } as i32;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(fib.ifindex, 0) as i32 }
}
