//! Every map of the object, in one place: the programs (sock_lb, tc, xdp,
//! bind) are siblings that share these, never each other.
//!
//! The statics' names are the map names the agent opens and pins
//! (`proxy_common::maps`, `proxy_common::external`): do not rename them.
//! Sizes are defaults; the agent overrides them from its flags.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, CtEntry4, CtKey4, ExternalConfig, MaglevKey,
    NodePortBindKey, RevNat4, RevNat6, ServiceKey4, ServiceKey6, ServiceValue, SockRevNat,
    SockRevNatKey4, SockRevNatKey6, SourceRangeKey4,
};

// Socket LB. The services and backends maps also hold the external
// frontends (scope SCOPE_EXTERNAL) the tc and XDP programs look up.

#[map]
pub(crate) static SLC_SVC4: HashMap<ServiceKey4, ServiceValue> = HashMap::pinned(65536, 0);
#[map]
pub(crate) static SLC_SVC6: HashMap<ServiceKey6, ServiceValue> = HashMap::pinned(65536, 0);
#[map]
pub(crate) static SLC_BE4: HashMap<u32, Backend4> = HashMap::pinned(65536, 0);
#[map]
pub(crate) static SLC_BE6: HashMap<u32, Backend6> = HashMap::pinned(65536, 0);
#[map]
pub(crate) static SLC_RNAT4: HashMap<u32, RevNat4> = HashMap::pinned(65536, 0);
#[map]
pub(crate) static SLC_RNAT6: HashMap<u32, RevNat6> = HashMap::pinned(65536, 0);
#[map]
pub(crate) static SLC_SKRNAT4: LruHashMap<SockRevNatKey4, SockRevNat> = LruHashMap::pinned(262_144, 0);
#[map]
pub(crate) static SLC_SKRNAT6: LruHashMap<SockRevNatKey6, SockRevNat> = LruHashMap::pinned(262_144, 0);
#[map]
pub(crate) static SLC_AFF: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(65536, 0);

// External traffic (tc, XDP, the NodePort bind guard).

#[map]
pub(crate) static SLC_CT4: LruHashMap<CtKey4, CtEntry4> = LruHashMap::pinned(262_144, 0);
#[map]
pub(crate) static SLC_MAGLEV4: HashMap<MaglevKey, u32> = HashMap::pinned(65_536, 0);
#[map]
pub(crate) static SLC_SRCR4: LpmTrie<SourceRangeKey4, u32> = LpmTrie::pinned(16_384, 0);
#[map]
pub(crate) static SLC_NPBIND: HashMap<NodePortBindKey, u32> = HashMap::pinned(16_384, 0);
#[map]
pub(crate) static SLC_EXTCFG: Array<ExternalConfig> = Array::pinned(1, 0);
#[map]
pub(crate) static SLC_EXTIP4: HashMap<u32, u32> = HashMap::pinned(16_384, 0);
/// Packets the XDP program forwarded and passed on to tc, per CPU (`XDP_STAT_*`).
#[map]
pub(crate) static SLC_XDPSTAT: PerCpuArray<u64> = PerCpuArray::pinned(2, 0);
