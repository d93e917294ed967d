//! Packet access and checksums, written once for the tc and XDP programs.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use proxy_common::{PROTO_TCP, PROTO_UDP};

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
/// Offsets of IPv4 header fields behind an Ethernet header.
pub(crate) const IP_CHECK: usize = ETH_HLEN + 10;
pub(crate) const IP_SADDR: usize = ETH_HLEN + 12;
pub(crate) const IP_DADDR: usize = ETH_HLEN + 16;
/// Where the transport header starts behind an option-less IPv4 header.
pub(crate) const L4_NO_OPTIONS: usize = ETH_HLEN + 20;

pub(crate) const TCP_FLAG_FIN: u8 = 0x01;
pub(crate) const TCP_FLAG_SYN: u8 = 0x02;
pub(crate) const TCP_FLAG_RST: u8 = 0x04;
pub(crate) const TCP_FLAG_ACK: u8 = 0x10;
pub(crate) const PROTO_ICMP: u8 = 1;
pub(crate) const AF_INET: u8 = 2;

/// A context whose packet bytes lie between `data` and `data_end`.
pub(crate) trait Frame {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// A pointer to a `T` at `off` bytes into the packet, if the packet is that long
/// (the bounds check the verifier wants to see before every access).
#[inline(always)]
pub(crate) fn ptr_at<T, C: Frame>(ctx: &C, off: usize) -> Option<*mut T> {
    let start = ctx.start();
    if start + off + size_of::<T>() > ctx.end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// A copy of the `T` at `off` bytes into the packet.
#[inline(always)]
pub(crate) fn read<T: Copy, C: Frame>(ctx: &C, off: usize) -> Option<T> {
    // SAFETY: bounds checked by ptr_at; unaligned read of plain bytes.
    ptr_at::<T, C>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

/// The parts of an IPv4 TCP/UDP packet the NAT needs (network byte order).
#[derive(Clone, Copy)]
pub(crate) struct Packet {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub l4_off: usize,
    pub ip_len: u16,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_doff: u8,
}

impl Packet {
    /// A TCP segment opening a new flow (SYN without ACK).
    #[inline(always)]
    pub(crate) fn is_new_syn(&self) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }
}

/// Parses an Ethernet + IPv4 + TCP/UDP packet; None for anything else,
/// including every fragment but the first (only it carries ports).
#[inline(always)]
pub(crate) fn parse<C: Frame>(ctx: &C) -> Option<Packet> {
    if u16::from_be(read::<u16, C>(ctx, 12)?) != ETH_P_IP {
        return None;
    }
    let vihl = read::<u8, C>(ctx, ETH_HLEN)?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let frag = u16::from_be(read::<u16, C>(ctx, ETH_HLEN + 6)?);
    if frag & 0x3fff != 0 {
        return None;
    }
    let proto = read::<u8, C>(ctx, ETH_HLEN + 9)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let l4_off = ETH_HLEN + ihl;
    let mut p = Packet {
        saddr: read(ctx, IP_SADDR)?,
        daddr: read(ctx, IP_DADDR)?,
        sport: read(ctx, l4_off)?,
        dport: read(ctx, l4_off + 2)?,
        proto,
        tcp_flags: 0,
        l4_off,
        ip_len: u16::from_be(read::<u16, C>(ctx, ETH_HLEN + 2)?),
        tcp_seq: 0,
        tcp_ack: 0,
        tcp_doff: 0,
    };
    if proto == PROTO_TCP {
        p.tcp_seq = u32::from_be(read::<u32, C>(ctx, l4_off + 4)?);
        p.tcp_ack = u32::from_be(read::<u32, C>(ctx, l4_off + 8)?);
        p.tcp_doff = read::<u8, C>(ctx, l4_off + 12)? >> 4;
        p.tcp_flags = read::<u8, C>(ctx, l4_off + 13)?;
    }
    Some(p)
}

/// Offset of the TCP or UDP checksum field.
#[inline(always)]
pub(crate) fn l4_csum_off(proto: u8, l4_off: usize) -> usize {
    if proto == PROTO_TCP {
        l4_off + 16
    } else {
        l4_off + 6
    }
}

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
fn fold16(mut s: u32) -> u32 {
    s = (s & 0xffff) + (s >> 16);
    (s & 0xffff) + (s >> 16)
}

/// Incremental update of a checksum (as it sits in memory) for a 32-bit
/// field changing from `old` to `new`, both as they sit in memory (RFC 1624).
#[inline(always)]
pub(crate) fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!check) + (!old >> 16) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    !(fold16(s) as u16)
}

/// [`csum_replace4`] for a 16-bit field.
#[inline(always)]
pub(crate) fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!check) + u32::from(!old) + u32::from(new);
    !(fold16(s) as u16)
}

/// One's-complement sum of the big-endian 16-bit words of `buf[start..start + len]`.
#[inline(always)]
pub(crate) fn sum16<const N: usize>(buf: &[u8; N], start: usize, len: usize) -> u32 {
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

/// The checksum (host order) of a [`sum16`] total.
#[inline(always)]
pub(crate) fn csum_fold(s: u32) -> u16 {
    !(fold16(s) as u16)
}
