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
//! keeps NodePorts closed to host sockets).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
        TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{
        bpf_fib_lookup, bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect,
        bpf_redirect_neigh, bpf_redirect_peer, bpf_set_retval, bpf_skb_change_tail,
    },
    macros::{cgroup_sock_addr, classifier, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap},
    programs::{SockAddrContext, TcContext},
    EbpfContext as _,
};
use proxy_common::{
    Backend4, CtEntry4, CtKey4, ExternalConfig, MaglevKey, NodePortBindKey, ServiceKey4,
    ServiceValue, SourceRangeKey4, CT_FORWARD, CT_F_SNAT, CT_REPLY, EXT_F_PEER_REDIRECT, LB_MAGLEV,
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SOURCE_RANGE_DENY,
};

use crate::sock_lb::{SLC_BE4, SLC_SVC4};

#[map]
pub(crate) static SLC_CT4: LruHashMap<CtKey4, CtEntry4> = LruHashMap::pinned(262_144, 0);
#[map]
static SLC_MAGLEV4: HashMap<MaglevKey, u32> = HashMap::pinned(65_536, 0);
#[map]
static SLC_SRCR4: LpmTrie<SourceRangeKey4, u32> = LpmTrie::pinned(16_384, 0);
#[map]
static SLC_NPBIND: HashMap<NodePortBindKey, u32> = HashMap::pinned(16_384, 0);
#[map]
pub(crate) static SLC_EXTCFG: Array<ExternalConfig> = Array::pinned(1, 0);
#[map]
static SLC_EXTIP4: HashMap<u32, u32> = HashMap::pinned(16_384, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_SADDR: usize = ETH_HLEN + 12;
const IP_DADDR: usize = ETH_HLEN + 16;
const IP_CHECK: usize = ETH_HLEN + 10;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
const AF_INET: u8 = 2;
const PROTO_ICMP: u8 = 1;
const NSEC_PER_SEC: u64 = 1_000_000_000;

/// The parts of an IPv4 TCP/UDP packet the NAT needs (network byte order).
#[derive(Clone, Copy)]
struct Packet {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    l4_off: usize,
    ip_len: u16,
    tcp_seq: u32,
    tcp_ack: u32,
    tcp_doff: u8,
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn byte(ctx: &TcContext, off: usize) -> Option<u8> {
    // SAFETY: bounds checked by ptr_at.
    ptr_at::<u8>(ctx, off).map(|p| unsafe { *p })
}

#[inline(always)]
fn be16(ctx: &TcContext, off: usize) -> Option<u16> {
    // SAFETY: bounds checked by ptr_at; unaligned read of plain bytes.
    ptr_at::<u16>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
fn be32(ctx: &TcContext, off: usize) -> Option<u32> {
    // SAFETY: as above.
    ptr_at::<u32>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    if u16::from_be(be16(ctx, 12)?) != ETH_P_IP {
        return None;
    }
    let vihl = byte(ctx, ETH_HLEN)?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    // Fragments: only a first fragment carries ports; leave the rest alone.
    let frag = u16::from_be(be16(ctx, ETH_HLEN + 6)?);
    if frag & 0x3fff != 0 {
        return None;
    }
    let proto = byte(ctx, ETH_HLEN + 9)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let l4_off = ETH_HLEN + ihl;
    let mut p = Packet {
        saddr: be32(ctx, IP_SADDR)?,
        daddr: be32(ctx, IP_DADDR)?,
        sport: be16(ctx, l4_off)?,
        dport: be16(ctx, l4_off + 2)?,
        proto,
        tcp_flags: 0,
        l4_off,
        ip_len: u16::from_be(be16(ctx, ETH_HLEN + 2)?),
        tcp_seq: 0,
        tcp_ack: 0,
        tcp_doff: 0,
    };
    if proto == PROTO_TCP {
        p.tcp_seq = u32::from_be(be32(ctx, l4_off + 4)?);
        p.tcp_ack = u32::from_be(be32(ctx, l4_off + 8)?);
        p.tcp_doff = byte(ctx, l4_off + 12)? >> 4;
        p.tcp_flags = byte(ctx, l4_off + 13)?;
    }
    Some(p)
}

#[inline(always)]
fn config() -> ExternalConfig {
    SLC_EXTCFG.get(0).copied().unwrap_or_default()
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn timeout_ns(cfg: &ExternalConfig, proto: u8) -> u64 {
    let s = if proto == PROTO_TCP { cfg.tcp_timeout } else { cfg.udp_timeout };
    let s = if s == 0 { 60 } else { s };
    u64::from(s) * NSEC_PER_SEC
}

/// Rewrites the four tuple fields that differ, fixing the IP and L4 checksums.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Packet, saddr: u32, daddr: u32, sport: u16, dport: u16) -> Option<()> {
    let csum_off = if p.proto == PROTO_TCP { p.l4_off + 16 } else { p.l4_off + 6 };
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

/// Sends the (already rewritten) packet toward its destination without the
/// stack's forwarding path. Falls back to the stack when the FIB cannot say.
#[inline(always)]
/// Sends the packet on towards `fib`'s destination. `peer`: the
/// interfaces are veths (see `EXT_F_PEER_REDIRECT`); a packet leaving
/// through `in_ifindex`, the one it came in on, then goes straight to the
/// ingress of that veth's peer.
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

/// Refuses a packet no backend will take: RST for TCP, ICMP port
/// unreachable for UDP.
#[inline(always)]
fn reject(ctx: &TcContext, p: &Packet) -> i32 {
    if p.proto == PROTO_TCP {
        reset(ctx, p)
    } else {
        port_unreachable(ctx, p)
    }
}

/// Answers a UDP datagram with ICMP port unreachable from the address it
/// was sent to (carrying its IP header and first 8 bytes, as RFC 792 asks),
/// built in place and sent back out of the interface it came in on.
#[inline(always)]
fn port_unreachable(ctx: &TcContext, p: &Packet) -> i32 {
    const ICMP_LEN: usize = 8 + 28;
    const LEN: usize = ETH_HLEN + 20 + ICMP_LEN;
    if p.proto != PROTO_UDP || p.l4_off != ETH_HLEN + 20 {
        return TC_ACT_SHOT as i32;
    }
    let Some(macs) = ptr_at::<[u8; 12]>(ctx, 0).map(|m| unsafe { *m }) else { return TC_ACT_SHOT as i32 };
    let Some(orig) = ptr_at::<[u8; 28]>(ctx, ETH_HLEN).map(|o| unsafe { *o }) else { return TC_ACT_SHOT as i32 };
    let mut out = [0u8; LEN];
    out[0..6].copy_from_slice(&macs[6..12]);
    out[6..12].copy_from_slice(&macs[0..6]);
    out[12] = 0x08;
    out[13] = 0x00;
    let ip = [0x45u8, 0xc0, 0, (20 + ICMP_LEN) as u8, 0, 0, 0, 0, 64, PROTO_ICMP, 0, 0];
    out[14..26].copy_from_slice(&ip);
    out[26..30].copy_from_slice(&p.daddr.to_ne_bytes());
    out[30..34].copy_from_slice(&p.saddr.to_ne_bytes());
    // type 3 (destination unreachable), code 3 (port unreachable)
    out[34] = 3;
    out[35] = 3;
    out[42..70].copy_from_slice(&orig);
    let ip_sum = fold(sum16(&out, 14, 20));
    out[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let icmp_sum = fold(sum16(&out, 34, ICMP_LEN));
    out[36..38].copy_from_slice(&icmp_sum.to_be_bytes());
    // SAFETY: plain helper call on our own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, LEN as u32, 0) } != 0 {
        return TC_ACT_SHOT as i32;
    }
    if ctx.store(0, &out, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: the skb context is valid; ifindex is a plain read.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Answers a TCP segment with a RST from the frontend, in place, and sends
/// it back out of the interface it came in on.
#[inline(always)]
fn reset(ctx: &TcContext, p: &Packet) -> i32 {
    if p.proto != PROTO_TCP || p.tcp_flags & TCP_FLAG_RST != 0 || p.l4_off != ETH_HLEN + 20 {
        return TC_ACT_SHOT as i32;
    }
    let Some(macs) = ptr_at::<[u8; 12]>(ctx, 0).map(|m| unsafe { *m }) else { return TC_ACT_SHOT as i32 };
    let payload = u32::from(p.ip_len).saturating_sub(20 + u32::from(p.tcp_doff) * 4);
    let (seq, ack, flags) = if p.tcp_flags & TCP_FLAG_ACK != 0 {
        (p.tcp_ack, 0, TCP_FLAG_RST)
    } else {
        let mut ack = p.tcp_seq.wrapping_add(payload);
        if p.tcp_flags & TCP_FLAG_SYN != 0 {
            ack = ack.wrapping_add(1);
        }
        if p.tcp_flags & TCP_FLAG_FIN != 0 {
            ack = ack.wrapping_add(1);
        }
        (0, ack, TCP_FLAG_RST | TCP_FLAG_ACK)
    };
    let mut out = [0u8; 54];
    out[0..6].copy_from_slice(&macs[6..12]);
    out[6..12].copy_from_slice(&macs[0..6]);
    out[12] = 0x08;
    out[13] = 0x00;
    let ip = [
        0x45u8, 0, 0, 40, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0,
    ];
    out[14..26].copy_from_slice(&ip);
    out[26..30].copy_from_slice(&p.daddr.to_ne_bytes());
    out[30..34].copy_from_slice(&p.saddr.to_ne_bytes());
    out[34..36].copy_from_slice(&p.dport.to_ne_bytes());
    out[36..38].copy_from_slice(&p.sport.to_ne_bytes());
    out[38..42].copy_from_slice(&seq.to_be_bytes());
    out[42..46].copy_from_slice(&ack.to_be_bytes());
    out[46] = 5 << 4;
    out[47] = flags;
    // window, checksum, urgent pointer stay 0.
    let ip_sum = fold(sum16(&out, 14, 20));
    out[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let pseudo = sum16(&out, 26, 8) + u32::from(PROTO_TCP) + 20;
    let tcp_sum = fold(pseudo + sum16(&out, 34, 20));
    out[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
    // SAFETY: plain helper call on our own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, 54, 0) } != 0 {
        return TC_ACT_SHOT as i32;
    }
    if ctx.store(0, &out, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: the skb context is valid; ifindex is a plain read.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

#[inline(always)]
fn sum16<const N: usize>(buf: &[u8; N], start: usize, len: usize) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i < len {
        let a = start + i;
        if a + 1 < buf.len() {
            s += u32::from(u16::from_be_bytes([buf[a], buf[a + 1]]));
        }
        i += 2;
    }
    s
}

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Whether `loadBalancerSourceRanges` of frontend `revnat_id` exclude `saddr`.
#[inline(always)]
pub(crate) fn source_denied(revnat_id: u32, saddr: u32) -> bool {
    let src = Key::new(64, SourceRangeKey4 { revnat_id, addr: saddr });
    SLC_SRCR4.get(&src).is_some_and(|v| *v == SOURCE_RANGE_DENY)
}

/// The forward entry of a tracked flow while it holds: not idle past its
/// timeout, and its backend still the one the flow was translated to.
#[inline(always)]
pub(crate) fn live_forward(key: &CtKey4, cfg: &ExternalConfig, t: u64) -> Option<*mut CtEntry4> {
    let e = SLC_CT4.get_ptr_mut(key)?;
    // SAFETY: copied out of the map value.
    let ent = unsafe { *e };
    let be = unsafe { SLC_BE4.get(&ent.backend_id) }?;
    let alive = t.wrapping_sub(ent.last_seen_ns) <= timeout_ns(cfg, key.proto);
    (alive && be.addr == ent.nat_daddr && be.port == ent.nat_dport).then_some(e)
}

#[inline(always)]
pub(crate) fn refresh(entry: *mut CtEntry4, t: u64) {
    // SAFETY: entry points into a map value; a racy u64 store is harmless.
    unsafe {
        if t.wrapping_sub((*entry).last_seen_ns) > NSEC_PER_SEC {
            (*entry).last_seen_ns = t;
        }
    }
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
    let new_syn = p.proto == PROTO_TCP && p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if !new_syn {
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

/// bind() of a host socket to a NodePort fails with EADDRINUSE, so no host
/// process can shadow a NodePort and a closed NodePort stays closed (the
/// stack's RST/ICMP for frontends without endpoints depends on it).
#[cgroup_sock_addr(bind4)]
pub fn slc_bind4(ctx: SockAddrContext) -> i32 {
    const ALLOW: i32 = 1;
    const EADDRINUSE: i32 = 98;
    let cfg = config();
    if cfg.enabled == 0 {
        return ALLOW;
    }
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol;
    if proto != u32::from(PROTO_TCP) && proto != u32::from(PROTO_UDP) {
        return ALLOW;
    }
    // SAFETY: sock_addr programs may ask for their netns cookie.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != cfg.host_netns_cookie {
        return ALLOW;
    }
    let key = NodePortBindKey { port: sa.user_port as u16, proto: proto as u8, _pad: 0 };
    // SAFETY: presence check only.
    if unsafe { SLC_NPBIND.get(&key) }.is_some() {
        unsafe { bpf_set_retval(-EADDRINUSE) };
        return 0;
    }
    ALLOW
}
