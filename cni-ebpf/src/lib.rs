//! The host-routing programs are the `sluice-cni-ebpf` binary, built for
//! `bpfel-unknown-none` by sluice-cni's build script. This library holds
//! what the programs and the daemon share: their configuration.
#![no_std]

/// How many IPv4 cluster ranges the programs know.
pub const MAX_CLUSTER: usize = 4;

/// The programs' configuration, set by the daemon at load time
/// (`EbpfLoader::override_global` of `SLC_CNI_CFG`). Addresses, masks, the
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

// SAFETY: plain old data, repr(C), no padding (sixteen u32).
#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
