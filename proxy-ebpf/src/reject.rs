//! Refusals built in place by the tc ingress program: a RST for a TCP
//! segment, ICMP port unreachable for a UDP datagram, sent back out of the
//! interface the packet came in on.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use proxy_common::{PROTO_TCP, PROTO_UDP};

use crate::packet::{
    csum_fold, ptr_at, sum16, Packet, ETH_HLEN, PROTO_ICMP, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST,
    TCP_FLAG_SYN,
};

/// Refuses a packet no backend will take: RST for TCP, ICMP port
/// unreachable for UDP.
#[inline(always)]
pub(crate) fn reject(ctx: &TcContext, p: &Packet) -> i32 {
    if p.proto == PROTO_TCP {
        reset(ctx, p)
    } else {
        port_unreachable(ctx, p)
    }
}

/// Replaces the packet with `out` and sends it back out of the interface
/// it came in on.
#[inline(always)]
fn send_back<const N: usize>(ctx: &TcContext, out: &[u8; N]) -> i32 {
    // SAFETY: plain helper call on our own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, N as u32, 0) } != 0 {
        return TC_ACT_SHOT as i32;
    }
    if ctx.store(0, out, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: the skb context is valid; ifindex is a plain read.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// The reply's Ethernet header: the packet's MACs swapped, IPv4.
#[inline(always)]
fn swapped_macs<const N: usize>(ctx: &TcContext, out: &mut [u8; N]) -> Option<()> {
    // SAFETY: bounds checked by ptr_at.
    let macs = ptr_at::<[u8; 12], _>(ctx, 0).map(|m| unsafe { *m })?;
    out[0..6].copy_from_slice(&macs[6..12]);
    out[6..12].copy_from_slice(&macs[0..6]);
    out[12] = 0x08;
    out[13] = 0x00;
    Some(())
}

/// Answers a UDP datagram with ICMP port unreachable from the address it
/// was sent to (carrying its IP header and first 8 bytes, as RFC 792 asks).
#[inline(always)]
fn port_unreachable(ctx: &TcContext, p: &Packet) -> i32 {
    const ICMP_LEN: usize = 8 + 28;
    const LEN: usize = ETH_HLEN + 20 + ICMP_LEN;
    if p.proto != PROTO_UDP || p.l4_off != ETH_HLEN + 20 {
        return TC_ACT_SHOT as i32;
    }
    let mut out = [0u8; LEN];
    if swapped_macs(ctx, &mut out).is_none() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: bounds checked by ptr_at.
    let Some(orig) = ptr_at::<[u8; 28], _>(ctx, ETH_HLEN).map(|o| unsafe { *o }) else { return TC_ACT_SHOT as i32 };
    let ip = [0x45u8, 0xc0, 0, (20 + ICMP_LEN) as u8, 0, 0, 0, 0, 64, PROTO_ICMP, 0, 0];
    out[14..26].copy_from_slice(&ip);
    out[26..30].copy_from_slice(&p.daddr.to_ne_bytes());
    out[30..34].copy_from_slice(&p.saddr.to_ne_bytes());
    // type 3 (destination unreachable), code 3 (port unreachable)
    out[34] = 3;
    out[35] = 3;
    out[42..70].copy_from_slice(&orig);
    let ip_sum = csum_fold(sum16(&out, 14, 20));
    out[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let icmp_sum = csum_fold(sum16(&out, 34, ICMP_LEN));
    out[36..38].copy_from_slice(&icmp_sum.to_be_bytes());
    send_back(ctx, &out)
}

/// Answers a TCP segment with a RST from the frontend (RFC 9293 3.10.7.1:
/// seq = their ack if they sent one, else ack = their seq + length).
#[inline(always)]
fn reset(ctx: &TcContext, p: &Packet) -> i32 {
    if p.proto != PROTO_TCP || p.tcp_flags & TCP_FLAG_RST != 0 || p.l4_off != ETH_HLEN + 20 {
        return TC_ACT_SHOT as i32;
    }
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
    if swapped_macs(ctx, &mut out).is_none() {
        return TC_ACT_SHOT as i32;
    }
    let ip = [0x45u8, 0, 0, 40, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0];
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
    let ip_sum = csum_fold(sum16(&out, 14, 20));
    out[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let pseudo = sum16(&out, 26, 8) + u32::from(PROTO_TCP) + 20;
    let tcp_sum = csum_fold(pseudo + sum16(&out, 34, 20));
    out[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
    send_back(ctx, &out)
}
