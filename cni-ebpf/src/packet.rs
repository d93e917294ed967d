//! Packet access, written once for both classifiers.

use core::mem::{size_of, MaybeUninit};

use aya_ebpf::programs::TcContext;

/// "Not mine": TCX runs the next program (or the stack) on the unchanged packet.
pub(crate) const TC_ACT_UNSPEC: i32 = -1;
/// Drop: only after the packet was changed beyond handing back.
pub(crate) const TC_ACT_SHOT: i32 = 2;
pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const IP_TTL: usize = ETH_HLEN + 8;
pub(crate) const IP_CHECK: usize = ETH_HLEN + 10;
pub(crate) const AF_INET: u8 = 2;
pub(crate) const IPPROTO_UDP: u8 = 17;

/// Zeroes `v` in place with word stores and hands it out initialised.
/// `core::mem::zeroed`, `[0; N]` and zeroing a temporary that is then moved
/// all become calls to the object's `memset`, a byte loop, on every packet.
#[inline(always)]
pub(crate) fn zeroed<T>(v: &mut MaybeUninit<T>) -> &mut T {
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

#[inline(always)]
pub(crate) fn load<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + size_of::<T>() > end {
        return None;
    }
    // SAFETY: bounds checked above; unaligned read of plain bytes.
    Some(unsafe { ((start + off) as *const T).read_unaligned() })
}

/// (source, destination, TTL) of an IPv4 packet, or None for anything else.
#[inline(always)]
pub(crate) fn ipv4(ctx: &TcContext) -> Option<(u32, u32, u8)> {
    if u16::from_be(load::<u16>(ctx, 12)?) != ETH_P_IP || load::<u8>(ctx, ETH_HLEN)? >> 4 != 4 {
        return None;
    }
    Some((load::<u32>(ctx, ETH_HLEN + 12)?, load::<u32>(ctx, ETH_HLEN + 16)?, load::<u8>(ctx, IP_TTL)?))
}
