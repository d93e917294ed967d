//! The two classifiers and their shared forwarding step.

use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_ADJ_ROOM_ENCAP_L2_SHIFT,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::{bpf_fib_lookup, bpf_get_hash_recalc, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
    EbpfContext as _,
};

use cni_common::{Config, MAX_CLUSTER};

/// Set by the daemon at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static SLC_CNI_CFG: Config = Config::ZERO;

/// "Not mine": TCX runs the next program (or the stack) on the unchanged packet.
const TC_ACT_UNSPEC: i32 = -1;
/// Drop: only after the packet was changed beyond handing back.
const TC_ACT_SHOT: i32 = 2;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_TTL: usize = ETH_HLEN + 8;
const IP_CHECK: usize = ETH_HLEN + 10;
const AF_INET: u8 = 2;
const IPPROTO_UDP: u8 = 17;
/// Outer IPv4 (no options) + UDP + VXLAN + inner Ethernet: what decapsulation removes.
const VXLAN_OUTER: usize = 20 + 8 + 8 + ETH_HLEN;
const UDP_OFF: usize = ETH_HLEN + 20;
const VXLAN_OFF: usize = UDP_OFF + 8;
const VXLAN_FLAG_VNI: u8 = 0x08;
const ECN_MASK: u8 = 0x03;
const ECN_CE: u8 = 0x03;
/// The first two bytes of every VTEP MAC; the other four are the node's IPv4 address.
const VTEP_OUI: [u8; 2] = [0x0e, 0x5c];
const OUTER_TTL: u8 = 64;
/// The kernel's default ephemeral range, which VXLAN source ports come from.
const SPORT_MIN: u32 = 32_768;
const SPORT_SPAN: u32 = 28_232;

/// Zeroes `v` in place with word stores and hands it out initialised.
/// `core::mem::zeroed`, `[0; N]` and zeroing a temporary that is then moved
/// all become calls to the object's `memset`, a byte loop, on every packet.
#[inline(always)]
fn zeroed<T>(v: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>() % 4 == 0 && core::mem::align_of::<T>() >= 4) };
    let p = v.as_mut_ptr() as *mut u32;
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: in bounds of v, 4-aligned (asserted above).
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte is written; all-zero is valid for the plain-data
    // types used here.
    unsafe { v.assume_init_mut() }
}

/// The outer headers [`vxlan_encap`] writes, aligned for [`zeroed`].
#[repr(C, align(4))]
struct Headers([u8; VXLAN_OUTER + ETH_HLEN]);

/// One field of [`SLC_CNI_CFG`], read volatile so the loader's value is used
/// rather than the compile-time zero.
macro_rules! conf {
    ($($field:tt)+) => {
        // SAFETY: a read of our own .rodata.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(SLC_CNI_CFG.$($field)+)) }
    };
}

#[inline(always)]
fn in_cluster(addr: u32) -> bool {
    let n = conf!(cluster_count) as usize;
    let mut i = 0;
    while i < MAX_CLUSTER {
        if i < n && addr & conf!(cluster[i][1]) == conf!(cluster[i][0]) {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn is_local_pod(addr: u32) -> bool {
    let mask = conf!(local[1]);
    mask != 0 && addr & mask == conf!(local[0])
}

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + size_of::<T>() > end {
        return None;
    }
    // SAFETY: bounds checked above; unaligned read of plain bytes.
    Some(unsafe { ((start + off) as *const T).read_unaligned() })
}

/// (source, destination, TTL) of an IPv4 packet, or None for anything else.
#[inline(always)]
fn ipv4(ctx: &TcContext) -> Option<(u32, u32, u8)> {
    if u16::from_be(load::<u16>(ctx, 12)?) != ETH_P_IP || load::<u8>(ctx, ETH_HLEN)? >> 4 != 4 {
        return None;
    }
    Some((load::<u32>(ctx, ETH_HLEN + 12)?, load::<u32>(ctx, ETH_HLEN + 16)?, load::<u8>(ctx, IP_TTL)?))
}

/// Looks `saddr -> daddr` up in the FIB as a packet arriving on this
/// interface and, when the kernel would forward it, does what forwarding
/// does (TTL - 1, MACs of the next hop) and hands it to the output device:
/// to its peer's ingress when `peer` (a pod's veth), else to its egress.
#[inline(always)]
fn forward(ctx: &TcContext, saddr: u32, daddr: u32, ttl: u8, peer: bool) -> i32 {
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
fn vxlan_encap(ctx: &TcContext, fib: &FibParams) -> Option<i32> {
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

/// Tc ingress of a pod's host-side veth: what the pod sends.
#[classifier]
pub fn slc_from_pod(ctx: TcContext) -> i32 {
    let Some((saddr, daddr, ttl)) = ipv4(&ctx) else { return TC_ACT_UNSPEC };
    if !is_local_pod(saddr) || !in_cluster(daddr) {
        return TC_ACT_UNSPEC; // leaving the cluster: the stack masquerades it
    }
    forward(&ctx, saddr, daddr, ttl, is_local_pod(daddr))
}

/// A VXLAN packet from another node to one of our pods, seen on the
/// underlay: decapsulated here (outer IPv4, UDP, VXLAN and inner Ethernet
/// headers removed, GSO size kept) so that neither the outer packet's local
/// delivery nor the VXLAN device's receive path runs. Returns the inner
/// (source, destination, TTL), or None with the packet untouched: anything
/// unusual (IP options, fragments, another port, VNI, destination or inner
/// protocol) is left to the kernel's VXLAN device.
#[inline(always)]
fn vxlan_decap(ctx: &TcContext) -> Option<(u32, u32, u8)> {
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

/// Tc ingress of the VXLAN device and the underlay: what other nodes send.
#[classifier]
pub fn slc_to_pod(ctx: TcContext) -> i32 {
    if let Some((saddr, daddr, ttl)) = vxlan_decap(&ctx) {
        // Should the FIB not say, the stack routes the now plain inner
        // packet to the pod as if it had come in unencapsulated.
        return forward(&ctx, saddr, daddr, ttl, true);
    }
    let Some((saddr, daddr, ttl)) = ipv4(&ctx) else { return TC_ACT_UNSPEC };
    if !is_local_pod(daddr) || !in_cluster(saddr) {
        return TC_ACT_UNSPEC;
    }
    forward(&ctx, saddr, daddr, ttl, true)
}
