//! External traffic (NodePort, LoadBalancer IPs, ExternalIPs) at tc.
//!
//! Ingress on a node's external interface: a reply of a tracked flow is
//! translated back and forwarded; a packet to an external frontend is DNATed
//! to a backend (and SNATed to the node's address when the backend sits
//! behind the same interface, i.e. on another node), recorded in the LRU
//! conntrack map in both directions, and forwarded with `bpf_redirect` after
//! a FIB lookup, so it never walks the stack's forwarding path (where a
//! local source address would count as martian). Egress: replies of local
//! backends, routed by the kernel, are translated back to the frontend.
//!
//! A frontend without backends answers a TCP packet with a RST and a UDP
//! datagram with ICMP port unreachable, both built in place and sent back
//! out of the interface the packet came in on; so does a LoadBalancer IP or
//! ExternalIP (not a node address) for a port or protocol it does not serve.
//! A node address leaves unknown ports to the stack (where `slc_bind4`
//! keeps NodePorts closed to host sockets). The refusals are built in
//! reject.rs; what tc and XDP share about flows is in conntrack.rs.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SRC, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_fib_lookup, bpf_get_prandom_u32, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
    EbpfContext as _,
};
use proxy_common::{
    Backend4, CtEntry4, CtKey4, ExternalConfig, MaglevKey, ServiceKey4, ServiceValue, CT_FORWARD, CT_F_SNAT,
    CT_REPLY, EXT_F_PEER_REDIRECT, LB_MAGLEV, PROTO_UDP, SCOPE_EXTERNAL,
};

use crate::conntrack::{config, live_forward, now, refresh, source_denied};
use crate::maps::{SLC_BE4, SLC_CT4, SLC_EXTIP4, SLC_MAGLEV4, SLC_SVC4};
use crate::packet::{l4_csum_off, parse, Packet, AF_INET, IP_CHECK, IP_DADDR, IP_SADDR};
use crate::reject::reject;

/// Rewrites the four tuple fields that differ, fixing the IP and L4 checksums.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Packet, saddr: u32, daddr: u32, sport: u16, dport: u16) -> Option<()> {
    let csum_off = l4_csum_off(p.proto, p.l4_off);
    // A UDP checksum of 0 means "none" and must stay so.
    let mangled = if p.proto == PROTO_UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    if saddr != p.saddr {
        ctx.l4_csum_replace(csum_off, u64::from(p.saddr), u64::from(saddr), u64::from(BPF_F_PSEUDO_HDR) | mangled | 4).ok()?;
        ctx.l3_csum_replace(IP_CHECK, u64::from(p.saddr), u64::from(saddr), 4).ok()?;
        ctx.store(IP_SADDR, &saddr, 0).ok()?;
    }
    if daddr != p.daddr {
        ctx.l4_csum_replace(csum_off, u64::from(p.daddr), u64::from(daddr), u64::from(BPF_F_PSEUDO_HDR) | mangled | 4).ok()?;
        ctx.l3_csum_replace(IP_CHECK, u64::from(p.daddr), u64::from(daddr), 4).ok()?;
        ctx.store(IP_DADDR, &daddr, 0).ok()?;
    }
    if sport != p.sport {
        ctx.l4_csum_replace(csum_off, u64::from(p.sport), u64::from(sport), mangled | 2).ok()?;
        ctx.store(p.l4_off, &sport, 0).ok()?;
    }
    if dport != p.dport {
        ctx.l4_csum_replace(csum_off, u64::from(p.dport), u64::from(dport), mangled | 2).ok()?;
        ctx.store(p.l4_off + 2, &dport, 0).ok()?;
    }
    Some(())
}

#[inline(always)]
fn fib_params(saddr: u32, daddr: u32, ifindex: u32, p: &Packet) -> FibParams {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    let mut f: FibParams = unsafe { core::mem::zeroed() };
    f.family = AF_INET;
    f.l4_protocol = p.proto;
    f.ifindex = ifindex;
    // tot_len stays 0: a GSO super-packet's ip_len exceeds the MTU and would
    // get FRAG_NEEDED, yet it is segmented on the way out anyway.
    let _ = p.ip_len;
    f.__bindgen_anon_3.ipv4_src = saddr;
    f.__bindgen_anon_4.ipv4_dst = daddr;
    f
}

/// Sends the (already rewritten) packet toward `fib`'s destination without
/// the stack's forwarding path; falls back to the stack when the FIB cannot
/// say. `peer`: the interfaces are veths (see `EXT_F_PEER_REDIRECT`); a
/// packet leaving through `in_ifindex`, the one it came in on, then goes
/// straight to the ingress of that veth's peer.
#[inline(always)]
fn forward(ctx: &TcContext, fib: &mut FibParams, daddr: u32, looked_up: Option<i64>, peer: bool, in_ifindex: u32) -> i32 {
    let rc = match looked_up {
        Some(rc) => rc,
        None => {
            // SAFETY: fib points to a valid, initialised struct on our stack.
            unsafe { bpf_fib_lookup(ctx.as_ptr(), fib, size_of::<FibParams>() as i32, 0) }
        }
    };
    let routed = rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH);
    if routed && delivered_here(fib, daddr, in_ifindex) {
        return TC_ACT_OK as i32;
    }
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&fib.dmac);
        macs[6..].copy_from_slice(&fib.smac);
        if ctx.store(0, &macs, 0).is_err() {
            return TC_ACT_SHOT;
        }
        if peer && fib.ifindex == in_ifindex {
            // SAFETY: plain helper call (tc ingress only: where this runs).
            return unsafe { bpf_redirect_peer(fib.ifindex, 0) } as i32;
        }
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(fib.ifindex, 0) } as i32;
    }
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        // The lookup left the next hop in ipv4_dst; let the kernel resolve it.
        // SAFETY: zeroed then filled; a plain-data union.
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        nh.nh_family = u32::from(AF_INET);
        nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
        // SAFETY: nh is valid for the call.
        return unsafe { bpf_redirect_neigh(fib.ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) } as i32;
    }
    TC_ACT_OK as i32
}

/// The FIB sends `daddr` out of another interface than the one the packet
/// came in on, without a gateway: a pod (or address) of this node. Such
/// packets go up the node's stack instead of being redirected, so the node's
/// netfilter conntrack sees the flow in its original direction; otherwise
/// it would pick up the pod's replies as new flows and a masquerade rule
/// (sluice-cni's, flannel's) would rewrite them before the egress program's
/// reverse translation.
#[inline(always)]
fn delivered_here(fib: &FibParams, daddr: u32, in_ifindex: u32) -> bool {
    // SAFETY: plain-data union, filled by the lookup.
    let nexthop = unsafe { fib.__bindgen_anon_4.ipv4_dst };
    fib.ifindex != in_ifindex && nexthop == daddr
}

/// Picks a backend for a new flow: the Maglev table when configured (same
/// choice on every node for the same client tuple), else a random slot.
#[inline(always)]
fn select_backend(cfg: &ExternalConfig, key: &ServiceKey4, fe: &ServiceValue, p: &Packet) -> Option<(u32, Backend4)> {
    let mut id = None;
    if cfg.lb_algorithm == LB_MAGLEV && cfg.maglev_size != 0 {
        let h = flow_hash(p);
        let mk = MaglevKey { revnat_id: fe.revnat_id, index: h % cfg.maglev_size };
        // SAFETY: value copied out at once.
        id = unsafe { SLC_MAGLEV4.get(&mk) }.copied();
    }
    if id.is_none() {
        // SAFETY: helper without arguments.
        let r = unsafe { bpf_get_prandom_u32() };
        let mut k = *key;
        k.slot = ((r % fe.count) + 1) as u16;
        id = unsafe { SLC_SVC4.get(&k) }.or_else(|| {
            k.slot = 1;
            unsafe { SLC_SVC4.get(&k) }
        })
        .map(|s| s.backend_id);
    }
    let id = id?;
    let be = unsafe { SLC_BE4.get(&id) }.copied()?;
    Some((id, be))
}

/// A hash of what the client chose (address, port, protocol): nodes agree on
/// it, so with identical Maglev tables they agree on the backend.
#[inline(always)]
fn flow_hash(p: &Packet) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    h = mix(h ^ u32::from_be(p.saddr));
    h = mix(h ^ (u32::from(u16::from_be(p.sport)) << 8 | u32::from(p.proto)));
    h
}

#[inline(always)]
fn mix(mut x: u32) -> u32 {
    // murmur3's finaliser.
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x
}

/// A port for the SNATed side of a flow that no other flow to the same
/// backend uses: the client's own port when free, else a few hashed tries.
#[inline(always)]
fn snat_port(rkey: &mut CtKey4, p: &Packet) -> Option<u16> {
    let mut port = p.sport;
    let mut i = 0u32;
    while i < 4 {
        rkey.dport = port;
        // SAFETY: copied out at once.
        match unsafe { SLC_CT4.get(&*rkey) } {
            None => return Some(port),
            Some(e) if e.nat_daddr == p.saddr && e.nat_dport == p.sport => return Some(port),
            Some(_) => {}
        }
        let h = mix(u32::from_be(p.saddr) ^ u32::from(port) ^ (i << 20));
        port = ((h % 28_000) as u16 + 32_768).to_be();
        i += 1;
    }
    None
}

#[inline(always)]
fn ingress(ctx: &TcContext) -> i32 {
    let Some(p) = parse(ctx) else { return TC_ACT_OK as i32 };
    let cfg = config();
    if cfg.enabled == 0 {
        return TC_ACT_OK as i32;
    }
    let t = now();
    // SAFETY: reading ifindex from the valid skb context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let peer = cfg.flags & EXT_F_PEER_REDIRECT != 0;

    // 1. A reply of a SNATed flow coming back from a backend on another node.
    let rkey = CtKey4 { saddr: p.saddr, daddr: p.daddr, sport: p.sport, dport: p.dport, proto: p.proto, dir: CT_REPLY, _pad: 0 };
    if let Some(e) = SLC_CT4.get_ptr_mut(&rkey) {
        // SAFETY: copied out of the map value.
        let ent = unsafe { *e };
        refresh(e, t);
        if rewrite(ctx, &p, ent.nat_saddr, ent.nat_daddr, ent.nat_sport, ent.nat_dport).is_none() {
            return TC_ACT_SHOT as i32;
        }
        let mut fib = fib_params(ent.nat_saddr, ent.nat_daddr, ifindex, &p);
        return forward(ctx, &mut fib, ent.nat_daddr, None, peer, ifindex);
    }

    // 2. A packet to an external frontend.
    let key = ServiceKey4 { addr: p.daddr, port: p.dport, proto: p.proto, scope: SCOPE_EXTERNAL, slot: 0, _pad: 0 };
    // SAFETY: copied out at once.
    let Some(fe) = (unsafe { SLC_SVC4.get(&key) }).copied() else {
        // SAFETY: presence check only.
        if unsafe { SLC_EXTIP4.get(&p.daddr) }.is_some() {
            return reject(ctx, &p);
        }
        return TC_ACT_OK as i32;
    };
    if source_denied(fe.revnat_id, p.saddr) {
        return TC_ACT_SHOT as i32;
    }

    // 3. A packet of a tracked flow keeps its backend while that backend exists.
    let fkey = CtKey4 { saddr: p.saddr, daddr: p.daddr, sport: p.sport, dport: p.dport, proto: p.proto, dir: CT_FORWARD, _pad: 0 };
    if !p.is_new_syn() {
        if let Some(e) = live_forward(&fkey, &cfg, t) {
            let ent = unsafe { *e };
            refresh(e, t);
            if rewrite(ctx, &p, ent.nat_saddr, ent.nat_daddr, ent.nat_sport, ent.nat_dport).is_none() {
                return TC_ACT_SHOT as i32;
            }
            let mut fib = fib_params(ent.nat_saddr, ent.nat_daddr, ifindex, &p);
            return forward(ctx, &mut fib, ent.nat_daddr, None, peer, ifindex);
        }
    }

    // 4. A new flow.
    if fe.count == 0 {
        return reject(ctx, &p);
    }
    let Some((backend_id, be)) = select_backend(&cfg, &key, &fe, &p) else {
        return reject(ctx, &p);
    };
    let mut fib = fib_params(p.saddr, be.addr, ifindex, &p);
    // SAFETY: fib is valid for the call.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut fib, size_of::<FibParams>() as i32, BPF_FIB_LOOKUP_SRC) };
    // The backend is on another node: behind the interface the packet came
    // in on, or behind a gateway on another one (an overlay such as VXLAN).
    // Its reply must come back through us, so SNAT to the address this node
    // has toward the client: the backend's node reaches it over the underlay
    // and the reply arrives here, on the interface the flow came in on.
    let routed = rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH);
    let snat = routed && (fib.ifindex == ifindex || !delivered_here(&fib, be.addr, ifindex));
    let (nat_saddr, nat_sport) = if snat {
        let node = if fib.ifindex == ifindex {
            unsafe { fib.__bindgen_anon_3.ipv4_src }
        } else {
            let mut back = fib_params(0, p.saddr, ifindex, &p);
            // SAFETY: back is valid for the call.
            let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut back, size_of::<FibParams>() as i32, BPF_FIB_LOOKUP_SRC) };
            if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) && rc != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
                return TC_ACT_SHOT as i32;
            }
            unsafe { back.__bindgen_anon_3.ipv4_src }
        };
        let mut rk = CtKey4 { saddr: be.addr, daddr: node, sport: be.port, dport: 0, proto: p.proto, dir: CT_REPLY, _pad: 0 };
        let Some(port) = snat_port(&mut rk, &p) else { return TC_ACT_SHOT as i32 };
        (node, port)
    } else {
        (p.saddr, p.sport)
    };
    let fwd = CtEntry4 {
        nat_saddr,
        nat_daddr: be.addr,
        nat_sport,
        nat_dport: be.port,
        backend_id,
        flags: if snat { CT_F_SNAT } else { 0 },
        revnat_id: fe.revnat_id,
        last_seen_ns: t,
    };
    let rk = CtKey4 { saddr: be.addr, daddr: nat_saddr, sport: be.port, dport: nat_sport, proto: p.proto, dir: CT_REPLY, _pad: 0 };
    let rev = CtEntry4 {
        nat_saddr: p.daddr,
        nat_daddr: p.saddr,
        nat_sport: p.dport,
        nat_dport: p.sport,
        backend_id,
        flags: fwd.flags,
        revnat_id: fe.revnat_id,
        last_seen_ns: t,
    };
    if SLC_CT4.insert(&rk, &rev, 0).is_err() || SLC_CT4.insert(&fkey, &fwd, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    if rewrite(ctx, &p, nat_saddr, be.addr, nat_sport, be.port).is_none() {
        return TC_ACT_SHOT as i32;
    }
    // The FIB answer for the backend still holds (the source only changes
    // when it became the address the FIB itself chose).
    forward(ctx, &mut fib, be.addr, Some(rc), peer, ifindex)
}

#[inline(always)]
fn egress(ctx: &TcContext) -> i32 {
    let Some(p) = parse(ctx) else { return TC_ACT_OK as i32 };
    let rkey = CtKey4 { saddr: p.saddr, daddr: p.daddr, sport: p.sport, dport: p.dport, proto: p.proto, dir: CT_REPLY, _pad: 0 };
    let Some(e) = SLC_CT4.get_ptr_mut(&rkey) else { return TC_ACT_OK as i32 };
    // SAFETY: copied out of the map value.
    let ent = unsafe { *e };
    refresh(e, now());
    if rewrite(ctx, &p, ent.nat_saddr, ent.nat_daddr, ent.nat_sport, ent.nat_dport).is_none() {
        return TC_ACT_SHOT as i32;
    }
    TC_ACT_OK as i32
}

#[classifier]
pub fn slc_tc_ingress(ctx: TcContext) -> i32 {
    ingress(&ctx)
}

#[classifier]
pub fn slc_tc_egress(ctx: TcContext) -> i32 {
    egress(&ctx)
}
