//! What the tc and XDP programs agree on about external flows: the node's
//! settings, source ranges, and when a conntrack entry still holds.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use proxy_common::{CtEntry4, CtKey4, ExternalConfig, SourceRangeKey4, PROTO_TCP, SOURCE_RANGE_DENY};

use crate::maps::{SLC_BE4, SLC_CT4, SLC_EXTCFG, SLC_SRCR4};

pub(crate) const NSEC_PER_SEC: u64 = 1_000_000_000;

/// The agent's settings; all zero (disabled) until it wrote them.
#[inline(always)]
pub(crate) fn config() -> ExternalConfig {
    SLC_EXTCFG.get(0).copied().unwrap_or_default()
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn timeout_ns(cfg: &ExternalConfig, proto: u8) -> u64 {
    let s = if proto == PROTO_TCP { cfg.tcp_timeout } else { cfg.udp_timeout };
    let s = if s == 0 { 60 } else { s };
    u64::from(s) * NSEC_PER_SEC
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
    // SAFETY: copied out at once.
    let be = unsafe { SLC_BE4.get(&ent.backend_id) }?;
    let alive = t.wrapping_sub(ent.last_seen_ns) <= timeout_ns(cfg, key.proto);
    (alive && be.addr == ent.nat_daddr && be.port == ent.nat_dport).then_some(e)
}

/// Marks an entry as used now (at most once a second, to spare the cache line).
#[inline(always)]
pub(crate) fn refresh(entry: *mut CtEntry4, t: u64) {
    // SAFETY: entry points into a map value; a racy u64 store is harmless.
    unsafe {
        if t.wrapping_sub((*entry).last_seen_ns) > NSEC_PER_SEC {
            (*entry).last_seen_ns = t;
        }
    }
}
