//! The map ABI shared by the eBPF programs and the agent.
//!
//! Every key and value is `#[repr(C)]` with explicit padding so the layout is
//! the same on both sides and a `Pod` type has no uninitialised bytes.
//! Addresses and ports are stored exactly as the kernel hands them to
//! sock_addr programs: network byte order in memory (so a `u32` address is
//! `u32::from_ne_bytes(ip.octets())` and a port is `port.to_be()`).
#![no_std]

/// Map names, shared so the loader, `status` and the programs agree.
pub mod maps {
    pub const SERVICES4: &str = "SLC_SVC4";
    pub const SERVICES6: &str = "SLC_SVC6";
    pub const BACKENDS4: &str = "SLC_BE4";
    pub const BACKENDS6: &str = "SLC_BE6";
    pub const REVNAT4: &str = "SLC_RNAT4";
    pub const REVNAT6: &str = "SLC_RNAT6";
    pub const SOCK_REVNAT4: &str = "SLC_SKRNAT4";
    pub const SOCK_REVNAT6: &str = "SLC_SKRNAT6";
    pub const AFFINITY: &str = "SLC_AFF";
    pub const ALL: [&str; 9] = [
        SERVICES4,
        SERVICES6,
        BACKENDS4,
        BACKENDS6,
        REVNAT4,
        REVNAT6,
        SOCK_REVNAT4,
        SOCK_REVNAT6,
        AFFINITY,
    ];
}

/// Program names (the eBPF function names), one per cgroup sock_addr hook.
pub const PROGRAMS: [&str; 8] = [
    "slc_connect4",
    "slc_sendmsg4",
    "slc_recvmsg4",
    "slc_getpeername4",
    "slc_connect6",
    "slc_sendmsg6",
    "slc_recvmsg6",
    "slc_getpeername6",
];

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Scope of a service entry. External scopes (NodePort, LB) are for the tc path.
pub const SCOPE_CLUSTER: u8 = 0;

/// Frontend flags.
pub const SVC_FLAG_AFFINITY: u32 = 1 << 0;

/// Backend states.
pub const BACKEND_ACTIVE: u8 = 0;
pub const BACKEND_TERMINATING: u8 = 1;

/// Key of the services map. Slot 0 is the frontend, slots 1..=count hold backend ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey4 {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
    pub slot: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
    pub slot: u16,
    pub _pad: u16,
}

/// Value of the services map. In slot 0: `count`, `revnat_id`, `flags`,
/// `affinity_timeout` (seconds). In slots 1..: `backend_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    pub backend_id: u32,
    pub count: u32,
    pub revnat_id: u32,
    pub flags: u32,
    pub affinity_timeout: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend4 {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub state: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub state: u8,
}

/// revnat id -> the frontend a translated socket shows to its owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat4 {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

/// (socket cookie, backend) -> revnat id, written at connect/sendmsg so
/// recvmsg and getpeername can show the VIP again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatKey4 {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatKey6 {
    pub cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNat {
    pub revnat_id: u32,
    pub _pad: u32,
}

/// Session affinity: (client network-namespace cookie, revnat id) -> backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client_cookie: u64,
    pub revnat_id: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// The slot the backend was picked from: the entry counts only while
    /// that slot of the Service still holds this backend, so a backend
    /// removed from the Service (even if another Service still uses it)
    /// loses its clients at once.
    pub slot: u32,
    /// bpf_ktime_get_ns() of the last use.
    pub last_used_ns: u64,
}

// ---------------------------------------------------------------------------
// External traffic (NodePort, LoadBalancer IPs, ExternalIPs) at tc/XDP.
// Appended: nothing above changes layout.

/// Map and program names of the external path.
pub mod external {
    /// Connection tracking: both directions of every external flow (LRU).
    pub const CONNTRACK4: &str = "SLC_CT4";
    /// Maglev lookup tables: (revnat id, index) -> backend id.
    pub const MAGLEV4: &str = "SLC_MAGLEV4";
    /// loadBalancerSourceRanges: LPM trie over (revnat id, source address).
    pub const SOURCE_RANGES4: &str = "SLC_SRCR4";
    /// NodePorts a host socket may not bind: (port, proto) -> 1.
    pub const NODEPORT_BIND: &str = "SLC_NPBIND";
    /// One [`super::ExternalConfig`] at index 0.
    pub const CONFIG: &str = "SLC_EXTCFG";
    /// LoadBalancer IPs and ExternalIPs that are not node addresses:
    /// address -> 1. A packet to one of them matching no frontend (another
    /// port, or UDP to a TCP-only port) is rejected rather than left to a
    /// stack that would drop or forward it.
    pub const EXTERNAL_IPS4: &str = "SLC_EXTIP4";
    /// Per-CPU packet counters of the XDP program, indexed by `XDP_STAT_*`.
    pub const XDP_STATS: &str = "SLC_XDPSTAT";
    pub const MAPS: [&str; 7] = [CONNTRACK4, MAGLEV4, SOURCE_RANGES4, NODEPORT_BIND, CONFIG, EXTERNAL_IPS4, XDP_STATS];

    pub const PROG_TC_INGRESS: &str = "slc_tc_ingress";
    pub const PROG_TC_EGRESS: &str = "slc_tc_egress";
    pub const PROG_XDP: &str = "slc_xdp";
    pub const PROG_BIND4: &str = "slc_bind4";
}

/// Scope of external frontends in the services map, looked up by the tc
/// program. NodePort frontends are keyed by each node address that answers
/// (`nodePortAddresses`); LoadBalancer ingress IPs and ExternalIPs by their
/// own address.
pub const SCOPE_EXTERNAL: u8 = 1;

/// Backend selection of the external path, in [`ExternalConfig::lb_algorithm`].
pub const LB_RANDOM: u32 = 0;
pub const LB_MAGLEV: u32 = 1;

/// Node-wide settings of the external path, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ExternalConfig {
    /// Network-namespace cookie of the host: the bind4 hook only guards
    /// NodePorts there (pods may bind any port in their own namespace).
    pub host_netns_cookie: u64,
    pub lb_algorithm: u32,
    /// Size of every Maglev table (a prime).
    pub maglev_size: u32,
    /// Idle timeouts of conntrack entries, seconds.
    pub tcp_timeout: u32,
    pub udp_timeout: u32,
    /// 1 once the agent has written this entry.
    pub enabled: u32,
    /// `EXT_F_*` bits.
    pub flags: u32,
}

/// Every external interface is a veth: a packet leaving through the
/// interface it came in on is handed straight to the ingress of the veth's
/// peer (`bpf_redirect_peer`), skipping a pass through the CPU's backlog.
pub const EXT_F_PEER_REDIRECT: u32 = 1 << 0;

/// Slots of the XDP program's per-CPU counters: packets it forwarded, and
/// packets it passed on to the stack (and tc).
pub const XDP_STAT_FORWARDED: u32 = 0;
pub const XDP_STAT_PASSED: u32 = 1;

/// Direction of a conntrack entry.
pub const CT_FORWARD: u8 = 0;
pub const CT_REPLY: u8 = 1;

/// Conntrack entry flags.
/// The forward direction was SNATed to a node address (backend elsewhere).
pub const CT_F_SNAT: u32 = 1 << 0;

/// A packet's tuple as seen on the wire (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: u16,
}

/// The tuple a matching packet is rewritten to, plus bookkeeping.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtEntry4 {
    pub nat_saddr: u32,
    pub nat_daddr: u32,
    pub nat_sport: u16,
    pub nat_dport: u16,
    /// Backend id of the flow (forward entries), to notice a removed backend.
    pub backend_id: u32,
    pub flags: u32,
    pub revnat_id: u32,
    /// bpf_ktime_get_ns() of the last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevKey {
    pub revnat_id: u32,
    pub index: u32,
}

/// Data part of the source-range LPM key: the first 32 bits (the revnat id)
/// always match in full, so a range a.b.c.d/n is inserted with prefix
/// length 32 + n. A bare (32, revnat id) entry with value 0 marks "this
/// frontend has ranges": a source that matches only it is dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRangeKey4 {
    pub revnat_id: u32,
    pub addr: u32,
}

pub const SOURCE_RANGE_DENY: u32 = 0;
pub const SOURCE_RANGE_ALLOW: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodePortBindKey {
    /// Network byte order, as sock_addr programs see it.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

// The ABI, pinned at compile time on both sides (the programs build this
// crate without `user`, the agent with it): a field added, removed or
// resized fails the build instead of shifting what the other side reads.
// Sizes are the sums of the fields, so there is no implicit padding.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<ServiceKey4>() == 12 && align_of::<ServiceKey4>() == 4);
    assert!(size_of::<ServiceKey6>() == 24 && align_of::<ServiceKey6>() == 2);
    assert!(size_of::<ServiceValue>() == 24 && align_of::<ServiceValue>() == 4);
    assert!(size_of::<Backend4>() == 8 && align_of::<Backend4>() == 4);
    assert!(size_of::<Backend6>() == 20 && align_of::<Backend6>() == 2);
    assert!(size_of::<RevNat4>() == 8 && align_of::<RevNat4>() == 4);
    assert!(size_of::<RevNat6>() == 20 && align_of::<RevNat6>() == 2);
    assert!(size_of::<SockRevNatKey4>() == 16 && align_of::<SockRevNatKey4>() == 8);
    assert!(size_of::<SockRevNatKey6>() == 32 && align_of::<SockRevNatKey6>() == 8);
    assert!(size_of::<SockRevNat>() == 8 && align_of::<SockRevNat>() == 4);
    assert!(size_of::<AffinityKey>() == 16 && align_of::<AffinityKey>() == 8);
    assert!(size_of::<AffinityValue>() == 16 && align_of::<AffinityValue>() == 8);
    assert!(size_of::<ExternalConfig>() == 32 && align_of::<ExternalConfig>() == 8);
    assert!(size_of::<CtKey4>() == 16 && align_of::<CtKey4>() == 4);
    assert!(size_of::<CtEntry4>() == 32 && align_of::<CtEntry4>() == 8);
    assert!(size_of::<MaglevKey>() == 8 && align_of::<MaglevKey>() == 4);
    assert!(size_of::<SourceRangeKey4>() == 8 && align_of::<SourceRangeKey4>() == 4);
    assert!(size_of::<NodePortBindKey>() == 4 && align_of::<NodePortBindKey>() == 2);
};

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)] of integers with explicit padding fields.
    unsafe impl aya::Pod for ServiceKey4 {}
    unsafe impl aya::Pod for ServiceKey6 {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend4 {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for RevNat4 {}
    unsafe impl aya::Pod for RevNat6 {}
    unsafe impl aya::Pod for SockRevNatKey4 {}
    unsafe impl aya::Pod for SockRevNatKey6 {}
    unsafe impl aya::Pod for SockRevNat {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for ExternalConfig {}
    unsafe impl aya::Pod for CtKey4 {}
    unsafe impl aya::Pod for CtEntry4 {}
    unsafe impl aya::Pod for MaglevKey {}
    unsafe impl aya::Pod for SourceRangeKey4 {}
    unsafe impl aya::Pod for NodePortBindKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey4>(), 12);
        assert_eq!(size_of::<ServiceKey6>(), 24);
        assert_eq!(size_of::<ServiceValue>(), 24);
        assert_eq!(size_of::<Backend4>(), 8);
        assert_eq!(size_of::<Backend6>(), 20);
        assert_eq!(size_of::<RevNat4>(), 8);
        assert_eq!(size_of::<RevNat6>(), 20);
        assert_eq!(size_of::<SockRevNatKey4>(), 16);
        assert_eq!(size_of::<SockRevNatKey6>(), 32);
        assert_eq!(size_of::<SockRevNat>(), 8);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<ExternalConfig>(), 32);
        assert_eq!(size_of::<CtKey4>(), 16);
        assert_eq!(size_of::<CtEntry4>(), 32);
        assert_eq!(size_of::<MaglevKey>(), 8);
        assert_eq!(size_of::<SourceRangeKey4>(), 8);
        assert_eq!(size_of::<NodePortBindKey>(), 4);
    }
}
