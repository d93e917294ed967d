//! VXLAN done here rather than by the device: encapsulation toward a peer
//! node's VTEP, and decapsulation of what peers send to our pods.

use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup as FibParams, BPF_ADJ_ROOM_ENCAP_L2_SHIFT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::{bpf_fib_lookup, bpf_get_hash_recalc, bpf_redirect},
    programs::TcContext,
    EbpfContext as _,
};

use crate::config::{in_cluster, is_local_pod};
use crate::packet::{load, zeroed, AF_INET, ETH_HLEN, ETH_P_IP, IPPROTO_UDP, IP_CHECK, TC_ACT_SHOT};

/// Outer IPv4 (no options) + UDP + VXLAN + inner Ethernet: what decapsulation removes.
const VXLAN_OUTER: usize = 20 + 8 + 8 + ETH_HLEN;
const UDP_OFF: usize = ETH_HLEN + 20;
const VXLAN_OFF: usize = UDP_OFF + 8;
const VXLAN_FLAG_VNI: u8 = 0x08;
const ECN_MASK: u8 = 0x03;
const ECN_CE: u8 = 0x03;
/// The first two bytes of every VTEP MAC; the other four are the node's IPv4 address.
pub(crate) const VTEP_OUI: [u8; 2] = [0x0e, 0x5c];
const OUTER_TTL: u8 = 64;
/// The kernel's default ephemeral range, which VXLAN source ports come from.
const SPORT_MIN: u32 = 32_768;
const SPORT_SPAN: u32 = 28_232;

/// The outer headers [`vxlan_encap`] writes, aligned for [`zeroed`].
#[repr(C, align(4))]
struct Headers([u8; VXLAN_OUTER + ETH_HLEN]);

/// Sends a packet the FIB routes through the VXLAN device (next hop: a
/// peer's VTEP, `fib.dmac` its MAC) out of the underlay, encapsulated here
/// as the device would (outer TTL 64, no DF, UDP checksum 0, source port
/// from the flow hash, ECN copied outward), so neither the device's transmit
/// path nor the outer packet's output path and netfilter hooks run. The
/// peer's address is the VTEP MAC's last four bytes (the daemon derives
/// every VTEP MAC from its node's address). None with the packet untouched
/// when the peer's MAC on the underlay is not known yet, the outer length
/// would not fit 16 bits, or the helper cannot grow this packet: the device
/// then sends it. The inner TTL was decremented by the caller.
#[inline(always)]
pub(crate) fn vxlan_encap(ctx: &TcContext, fib: &FibParams) -> Option<i32> {
    let remote = u32::from_ne_bytes([fib.dmac[2], fib.dmac[3], fib.dmac[4], fib.dmac[5]]);
    let mut out_slot = MaybeUninit::<FibParams>::uninit();
    let out = zeroed(&mut out_slot);
    out.family = AF_INET;
    out.l4_protocol = IPPROTO_UDP;
    out.ifindex = conf!(underlay_if);
    out.__bindgen_anon_3.ipv4_src = conf!(node_ip);
    out.__bindgen_anon_4.ipv4_dst = remote;
    // The outer packet: the inner one behind IPv4, UDP, VXLAN and Ethernet headers.
    let outer_len = ctx.len() - ETH_HLEN as u32 + VXLAN_OUTER as u32;
    if outer_len > 0xffff {
        return None; // no room in the outer length fields: the device's GSO handles it
    }
    // SAFETY: reading gso_size from the valid skb context.
    if unsafe { (*ctx.skb.skb).gso_size } == 0 {
        // A single packet must fit the underlay once encapsulated.
        out.__bindgen_anon_1.tot_len = outer_len as u16;
    }
    // SAFETY: out is a valid, initialised struct on our stack.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), out, size_of::<FibParams>() as i32, BPF_FIB_LOOKUP_OUTPUT) };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || out.ifindex != conf!(underlay_if) {
        return None;
    }
    let tos = load::<u8>(ctx, ETH_HLEN + 1)?;
    // SAFETY: plain helper call on the valid skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.as_ptr() as *mut _) };
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO
        | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH;
    let flags = u64::from(flags) | ((ETH_HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    ctx.adjust_room(VXLAN_OUTER as i32, BPF_ADJ_ROOM_MAC, flags).ok()?;
    // From here on the packet is committed to this path.
    let mut hdr = MaybeUninit::<Headers>::uninit();
    let h = &mut zeroed(&mut hdr).0;
    h[..6].copy_from_slice(&out.dmac);
    h[6..12].copy_from_slice(&out.smac);
    h[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    let ip_len = outer_len as u16;
    let ip = ETH_HLEN;
    h[ip] = 0x45;
    h[ip + 1] = if tos & ECN_MASK == ECN_CE { 0x02 } else { tos & ECN_MASK };
    h[ip + 2..ip + 4].copy_from_slice(&ip_len.to_be_bytes());
    h[ip + 4..ip + 6].copy_from_slice(&(hash as u16).to_be_bytes());
    h[ip + 8] = OUTER_TTL;
    h[ip + 9] = IPPROTO_UDP;
    h[ip + 12..ip + 16].copy_from_slice(&conf!(node_ip).to_ne_bytes());
    h[ip + 16..ip + 20].copy_from_slice(&remote.to_ne_bytes());
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([h[ip + i], h[ip + i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    h[ip + 10..ip + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp = ip + 20;
    let sport = (SPORT_MIN + (hash >> 16) % SPORT_SPAN) as u16;
    h[udp..udp + 2].copy_from_slice(&sport.to_be_bytes());
    h[udp + 2..udp + 4].copy_from_slice(&(conf!(vxlan_port) as u16).to_ne_bytes());
    h[udp + 4..udp + 6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    let vx = udp + 8;
    h[vx] = VXLAN_FLAG_VNI;
    h[vx + 4..vx + 8].copy_from_slice(&conf!(vxlan_vni).to_ne_bytes());
    let inner = vx + 8;
    h[inner..inner + 6].copy_from_slice(&fib.dmac);
    h[inner + 6..inner + 12].copy_from_slice(&fib.smac);
    h[inner + 12..inner + 14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    if ctx.store(0, h, 0).is_err() {
        return Some(TC_ACT_SHOT);
    }
    // SAFETY: plain helper call.
    Some(unsafe { bpf_redirect(out.ifindex, 0) } as i32)
}

/// A VXLAN packet from another node to one of our pods, seen on the
/// underlay: decapsulated here (outer IPv4, UDP, VXLAN and inner Ethernet
/// headers removed, GSO size kept) so that neither the outer packet's local
/// delivery nor the VXLAN device's receive path runs. Returns the inner
/// (source, destination, TTL), or None with the packet untouched: anything
/// unusual (IP options, fragments, another port, VNI, destination or inner
/// protocol) is left to the kernel's VXLAN device.
#[inline(always)]
pub(crate) fn vxlan_decap(ctx: &TcContext) -> Option<(u32, u32, u8)> {
    let port = conf!(vxlan_port);
    if port == 0
        || u16::from_be(load::<u16>(ctx, 12)?) != ETH_P_IP
        || load::<u8>(ctx, ETH_HLEN)? != 0x45
        || u16::from_be(load::<u16>(ctx, ETH_HLEN + 6)?) & 0x3fff != 0
        || load::<u8>(ctx, ETH_HLEN + 9)? != IPPROTO_UDP
        || load::<u32>(ctx, ETH_HLEN + 16)? != conf!(node_ip)
        || u32::from(load::<u16>(ctx, UDP_OFF + 2)?) != port
        || load::<u8>(ctx, VXLAN_OFF)? & VXLAN_FLAG_VNI == 0
        || load::<u32>(ctx, VXLAN_OFF + 4)? & u32::from_ne_bytes([0xff, 0xff, 0xff, 0]) != conf!(vxlan_vni)
    {
        return None;
    }
    let inner = VXLAN_OUTER + ETH_HLEN;
    if u16::from_be(load::<u16>(ctx, VXLAN_OUTER + 12)?) != ETH_P_IP || load::<u8>(ctx, inner)? >> 4 != 4 {
        return None;
    }
    let (saddr, daddr, ttl) = (load::<u32>(ctx, inner + 12)?, load::<u32>(ctx, inner + 16)?, load::<u8>(ctx, inner + 8)?);
    if !is_local_pod(daddr) || !in_cluster(saddr) || ttl <= 1 {
        return None;
    }
    // ECN (RFC 6040, as the kernel's decapsulation does): congestion marked
    // on the outer header is carried to an ECN-capable inner one; for an
    // inner header that is not ECN-capable the kernel decides (it drops).
    let (outer_tos, inner_tos) = (load::<u8>(ctx, ETH_HLEN + 1)?, load::<u8>(ctx, inner + 1)?);
    let mark_ce = outer_tos & ECN_MASK == ECN_CE && inner_tos & ECN_MASK != ECN_CE;
    if mark_ce && inner_tos & ECN_MASK == 0 {
        return None;
    }
    ctx.adjust_room(-(VXLAN_OUTER as i32), BPF_ADJ_ROOM_MAC, u64::from(BPF_F_ADJ_ROOM_FIXED_GSO)).ok()?;
    if mark_ce {
        // TOS shares its checksum word with the (unchanged) version/IHL byte.
        let new_tos = inner_tos | ECN_CE;
        let vihl = load::<u8>(ctx, ETH_HLEN)?;
        let word = |tos: u8| u64::from(u16::from_ne_bytes([vihl, tos]));
        let _ = ctx.l3_csum_replace(IP_CHECK, word(inner_tos), word(new_tos), 2);
        let _ = ctx.store(ETH_HLEN + 1, &new_tos, 0);
    }
    Some((saddr, daddr, ttl))
}
