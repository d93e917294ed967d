//! The ABI shared by the host-routing programs (cni-ebpf) and the daemon
//! (`sluice-cni daemon`): their configuration, a global the loader
//! overrides.
//!
//! Every type is `#[repr(C)]` of `u32`s, so the layout is the same on both
//! sides and a `Pod` type has no uninitialised bytes; the sizes are checked
//! at compile time below.
#![no_std]

/// Name of the configuration global in the object (`EbpfLoader::override_global`).
pub const CONFIG: &str = "SLC_CNI_CFG";

/// Program names: tc ingress of a pod's host-side veth, and tc ingress of
/// the VXLAN device and the underlay.
pub const PROG_FROM_POD: &str = "slc_from_pod";
pub const PROG_TO_POD: &str = "slc_to_pod";

/// How many IPv4 cluster ranges the programs know.
pub const MAX_CLUSTER: usize = 4;

/// The programs' configuration, set by the daemon at load time
/// (`EbpfLoader::override_global` of [`CONFIG`]). Addresses, masks, the
/// port and the VNI word are kept as the programs read them from packets
/// (network byte order in a native-endian `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How many entries of `cluster` are used.
    pub cluster_count: u32,
    /// Cluster pod ranges: (address, mask).
    pub cluster: [[u32; 2]; MAX_CLUSTER],
    /// This node's pod range: (address, mask); mask 0 when it has none.
    pub local: [u32; 2],
    /// The VXLAN UDP port as the UDP header holds it; 0: no VXLAN here.
    pub vxlan_port: u32,
    /// The VXLAN header's second word for our VNI (VNI << 8).
    pub vxlan_vni: u32,
    /// This node's underlay address.
    pub node_ip: u32,
    /// The VXLAN device's ifindex.
    pub vxlan_if: u32,
    /// The underlay interface's ifindex.
    pub underlay_if: u32,
}

impl Config {
    pub const ZERO: Config = Config {
        cluster_count: 0,
        cluster: [[0; 2]; MAX_CLUSTER],
        local: [0; 2],
        vxlan_port: 0,
        vxlan_vni: 0,
        node_ip: 0,
        vxlan_if: 0,
        underlay_if: 0,
    };
}

// The ABI, pinned: a field added, removed or resized fails the build of
// both sides instead of silently shifting what the other side reads.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<Config>() == 4 * (1 + 2 * MAX_CLUSTER + 2 + 5));
    assert!(size_of::<Config>() == 64);
    assert!(align_of::<Config>() == 4);
};

// SAFETY: plain old data, repr(C), no padding (sixteen u32, asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
