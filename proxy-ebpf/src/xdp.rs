//! XDP acceleration of the external path (`--external-xdp`).
//!
//! The tc program (tc.rs) stays the authority: it admits new flows (backend
//! choice, SNAT port, conntrack entries), rejects, and handles everything
//! unusual. This program, run before an skb exists, forwards the packets of
//! flows tc already tracks — both directions — with the same translation:
//! a reply of a SNATed flow, or a packet to an external frontend whose
//! conntrack entry is alive and whose backend still exists, is rewritten
//! (addresses, ports, incremental checksums, MACs from a FIB lookup) and
//! sent with `XDP_TX` when it leaves through the interface it came in on
//! (a NodePort whose backend is on another node, and that flow's replies).
//! Anything else — IP options, fragments, a TCP SYN, no conntrack entry, a
//! FIB answer other than success (unresolved neighbour, needs fragmenting)
//! — passes to the stack untouched, where tc sees it.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup, bpf_redirect},
    macros::xdp,
    programs::XdpContext,
    EbpfContext as _,
};
use proxy_common::{
    CtKey4, ServiceKey4, CT_FORWARD, CT_REPLY, EXT_F_PEER_REDIRECT, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
    XDP_STAT_FORWARDED, XDP_STAT_PASSED,
};

use crate::conntrack::{live_forward, now, refresh, source_denied};
use crate::maps::{SLC_CT4, SLC_EXTCFG, SLC_SVC4, SLC_XDPSTAT};
use crate::packet::{
    csum_replace2, csum_replace4, l4_csum_off, ptr_at, read, AF_INET, ETH_HLEN, ETH_P_IP, L4_NO_OPTIONS as L4,
    TCP_FLAG_ACK, TCP_FLAG_SYN,
};

#[inline(always)]
fn count(i: u32) {
    if let Some(c) = SLC_XDPSTAT.get_ptr_mut(i) {
        // SAFETY: a per-CPU slot: no one else writes it concurrently.
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn slc_xdp(ctx: XdpContext) -> u32 {
    match fast_path(&ctx) {
        Some(action) => {
            count(XDP_STAT_FORWARDED);
            action
        }
        None => {
            count(XDP_STAT_PASSED);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn fast_path(ctx: &XdpContext) -> Option<u32> {
    let cfg = SLC_EXTCFG.get(0)?;
    if cfg.enabled == 0 {
        return None;
    }
    // SAFETY (all raw reads/writes below): `ptr_at` checked the bounds.
    // Only option-less IPv4 headers: the transport header then sits at a
    // constant offset the verifier can follow.
    if u16::from_be(read::<u16, _>(ctx, 12)?) != ETH_P_IP {
        return None;
    }
    let ip = ptr_at::<[u8; 20], _>(ctx, ETH_HLEN)?;
    let iph = unsafe { *ip };
    if iph[0] != 0x45 || u16::from_be_bytes([iph[6], iph[7]]) & 0x3fff != 0 {
        return None; // options, or a fragment
    }
    let proto = iph[9];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let ports = ptr_at::<[u16; 2], _>(ctx, L4)?;
    let check = ptr_at::<u16, _>(ctx, l4_csum_off(proto, L4))?;
    if proto == PROTO_TCP {
        let flags = read::<u8, _>(ctx, L4 + 13)?;
        if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
            return None; // a new flow: tc chooses its backend
        }
    }
    let saddr = u32::from_ne_bytes([iph[12], iph[13], iph[14], iph[15]]);
    let daddr = u32::from_ne_bytes([iph[16], iph[17], iph[18], iph[19]]);
    let [sport, dport] = unsafe { *ports };
    let t = now();

    // The same order as tc: a reply of a SNATed flow, else a tracked flow of
    // an external frontend that tc would still accept.
    let mut key = CtKey4 { saddr, daddr, sport, dport, proto, dir: CT_REPLY, _pad: 0 };
    let e = match SLC_CT4.get_ptr_mut(&key) {
        Some(e) => e,
        None => {
            let fkey = ServiceKey4 { addr: daddr, port: dport, proto, scope: SCOPE_EXTERNAL, slot: 0, _pad: 0 };
            let fe = unsafe { SLC_SVC4.get(&fkey) }?;
            if source_denied(fe.revnat_id, saddr) {
                return None; // tc drops it
            }
            key.dir = CT_FORWARD;
            live_forward(&key, cfg, t)? // else tc picks a new backend
        }
    };
    let ent = unsafe { *e };

    // SAFETY: a zeroed bpf_fib_lookup is a valid input.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.__bindgen_anon_1.tot_len = u16::from_be_bytes([iph[2], iph[3]]);
    // SAFETY: the context of an XDP program.
    let fib_in = unsafe { (*ctx.ctx).ingress_ifindex };
    fib.ifindex = fib_in;
    fib.__bindgen_anon_3.ipv4_src = ent.nat_saddr;
    fib.__bindgen_anon_4.ipv4_dst = ent.nat_daddr;
    // SAFETY: fib is valid for the call.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut fib, size_of::<FibParams>() as i32, 0) };
    // Only what leaves through the interface it came in on (the backend or
    // the client is behind it: another node, the outside): XDP_TX. A local
    // backend's veth may not take XDP frames (a veth needs NAPI on the far
    // side); tc's bpf_redirect_peer serves those.
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || fib.ifindex != fib_in {
        return None; // untouched: the stack (and tc) resolve, fragment or refuse
    }
    refresh(e, t);

    // Rewrite: IP header checksum over the addresses, L4 checksum over the
    // addresses (pseudo-header) and ports. A UDP checksum of 0 means none.
    let mut ip_check = u16::from_ne_bytes([iph[10], iph[11]]);
    let mut l4 = unsafe { check.read_unaligned() };
    let l4_on = proto == PROTO_TCP || l4 != 0;
    if ent.nat_saddr != saddr {
        ip_check = csum_replace4(ip_check, saddr, ent.nat_saddr);
        l4 = csum_replace4(l4, saddr, ent.nat_saddr);
    }
    if ent.nat_daddr != daddr {
        ip_check = csum_replace4(ip_check, daddr, ent.nat_daddr);
        l4 = csum_replace4(l4, daddr, ent.nat_daddr);
    }
    if ent.nat_sport != sport {
        l4 = csum_replace2(l4, sport, ent.nat_sport);
    }
    if ent.nat_dport != dport {
        l4 = csum_replace2(l4, dport, ent.nat_dport);
    }
    if proto == PROTO_UDP && l4 == 0 {
        l4 = 0xffff;
    }
    unsafe {
        let ipw = ip as *mut u8;
        (ipw.add(10) as *mut u16).write_unaligned(ip_check);
        (ipw.add(12) as *mut u32).write_unaligned(ent.nat_saddr);
        (ipw.add(16) as *mut u32).write_unaligned(ent.nat_daddr);
        *ports = [ent.nat_sport, ent.nat_dport];
        if l4_on {
            check.write_unaligned(l4);
        }
        let mac = ptr_at::<[u8; 12], _>(ctx, 0)?;
        let (d, s) = (fib.dmac, fib.smac);
        *mac = [d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5]];
    }
    if cfg.flags & EXT_F_PEER_REDIRECT != 0 {
        // A veth: XDP_TX frames land in the peer's ring but only a peer
        // with an XDP program of its own gets its NAPI kicked for them,
        // while a redirect (ndo_xdp_xmit) flushes to any peer with NAPI
        // (GRO on). Same device, same result.
        // SAFETY: plain helper call.
        return Some(unsafe { bpf_redirect(fib_in, 0) } as u32);
    }
    Some(xdp_action::XDP_TX)
}
