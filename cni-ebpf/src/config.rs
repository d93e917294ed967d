//! What the daemon sets at load time: the one global of the object (the
//! programs keep no maps), and the questions the programs ask of it.

use cni_common::{Config, MAX_CLUSTER};

/// Set by the daemon at load time (`EbpfLoader::override_global` of
/// `cni_common::CONFIG`): do not rename.
#[unsafe(no_mangle)]
pub(crate) static SLC_CNI_CFG: Config = Config::ZERO;

/// One field of [`SLC_CNI_CFG`], read volatile so the loader's value is used
/// rather than the compile-time zero.
macro_rules! conf {
    ($($field:tt)+) => {
        // SAFETY: a read of our own .rodata.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::config::SLC_CNI_CFG.$($field)+)) }
    };
}

#[inline(always)]
pub(crate) fn in_cluster(addr: u32) -> bool {
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
pub(crate) fn is_local_pod(addr: u32) -> bool {
    let mask = conf!(local[1]);
    mask != 0 && addr & mask == conf!(local[0])
}
