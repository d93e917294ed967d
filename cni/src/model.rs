//! The daemon's pure core: Nodes in, the routes, neighbours and FDB entries
//! this node needs out. No kernel, no I/O; the adapter in `daemon` applies it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;

/// How pod traffic between nodes travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Every peer through the VXLAN device.
    Vxlan,
    /// Peers on the same underlay subnet by a direct route via their
    /// address; the others through VXLAN (flannel's DirectRouting).
    HostGw,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vxlan => "vxlan",
            Self::HostGw => "host-gw",
        }
    }
}

/// VXLAN encapsulation overhead on an IPv4 underlay (outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// What the daemon needs of one Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub pod_cidrs: Vec<IpNetwork>,
    /// The underlay address VXLAN and host-gw routes point to.
    pub ip: Ipv4Addr,
    /// An IPv6 underlay address, for host-gw routes of IPv6 pod ranges.
    pub ip6: Option<IpAddr>,
}

/// Reads a Node: `spec.podCIDRs` (else `spec.podCIDR`) and the first IPv4
/// `InternalIP` (else `ExternalIP`) of `status.addresses`.
pub fn node_info(node: &Node) -> Result<NodeInfo, String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let spec = node.spec.as_ref();
    let mut raw: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if raw.is_empty() {
        raw.extend(spec.and_then(|s| s.pod_cidr.clone()));
    }
    if raw.is_empty() {
        return Err(format!("Node {name:?} has no spec.podCIDR(s) yet"));
    }
    let mut pod_cidrs = Vec::new();
    for c in &raw {
        let n: IpNetwork = c.parse().map_err(|e| format!("Node {name:?}: podCIDR {c:?}: {e}"))?;
        pod_cidrs.push(IpNetwork::new(n.network(), n.prefix()).expect("network of a valid prefix"));
    }
    let addrs = node.status.as_ref().and_then(|s| s.addresses.clone()).unwrap_or_default();
    let pick = |kind: &str, v4: bool| {
        addrs
            .iter()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .find(|ip| ip.is_ipv4() == v4)
    };
    let ip = match pick("InternalIP", true).or_else(|| pick("ExternalIP", true)) {
        Some(IpAddr::V4(v4)) => v4,
        _ => return Err(format!("Node {name:?} has no IPv4 InternalIP or ExternalIP in status.addresses")),
    };
    let ip6 = pick("InternalIP", false).or_else(|| pick("ExternalIP", false));
    Ok(NodeInfo { name, pod_cidrs, ip, ip6 })
}

/// A node's VTEP MAC, derived from its underlay address so that peers know it
/// without any annotation: locally administered `0e:5c:` + the IPv4 octets.
pub fn vtep_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0e, 0x5c, o[0], o[1], o[2], o[3]]
}

/// The address a node's VXLAN device carries for a pod range (the range's
/// network address, which IPAM never hands out); peers route the range via it.
pub fn vtep_addr(cidr: &IpNetwork) -> IpAddr {
    cidr.network()
}

/// How one peer pod range is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// `cidr via gw dev <underlay>`.
    Direct { gw: IpAddr },
    /// `cidr via vtep dev <vxlan> onlink`, neighbour `vtep -> mac`, FDB `mac -> remote`.
    Vxlan { vtep: IpAddr, mac: [u8; 6], remote: Ipv4Addr },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRoute {
    pub node: String,
    pub cidr: IpNetwork,
    pub via: Via,
}

/// Everything this node should have programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub local: NodeInfo,
    pub routes: Vec<PeerRoute>,
}

impl Desired {
    pub fn needs_vxlan(&self) -> bool {
        self.routes.iter().any(|r| matches!(r.via, Via::Vxlan { .. }))
    }

    /// Neighbour entries on the VXLAN device (vtep address -> MAC).
    pub fn neighbours(&self) -> BTreeMap<IpAddr, [u8; 6]> {
        self.routes
            .iter()
            .filter_map(|r| match r.via {
                Via::Vxlan { vtep, mac, .. } => Some((vtep, mac)),
                Via::Direct { .. } => None,
            })
            .collect()
    }

    /// FDB entries on the VXLAN device (MAC -> remote underlay address).
    pub fn fdb(&self) -> BTreeMap<[u8; 6], Ipv4Addr> {
        self.routes
            .iter()
            .filter_map(|r| match r.via {
                Via::Vxlan { mac, remote, .. } => Some((mac, remote)),
                Via::Direct { .. } => None,
            })
            .collect()
    }
}

/// Computes the desired state from every Node. `underlay` is the local
/// underlay address with its prefix (host-gw uses it to decide who is
/// on-link). Nodes that cannot be read are skipped with a warning naming
/// them; a peer whose pod range overlaps ours or an earlier peer's is skipped too.
pub fn desired<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    self_name: &str,
    backend: Backend,
    underlay: Option<IpNetwork>,
) -> (Option<Desired>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut infos = Vec::new();
    for node in nodes {
        match node_info(node) {
            Ok(i) => infos.push(i),
            Err(e) => warnings.push(e),
        }
    }
    let Some(local) = infos.iter().find(|i| i.name == self_name).cloned() else {
        warnings.push(format!("this node {self_name:?} is not (yet) usable in the source"));
        return (None, warnings);
    };
    let mut taken: Vec<IpNetwork> = local.pod_cidrs.clone();
    let mut routes = Vec::new();
    for peer in infos.iter().filter(|i| i.name != self_name) {
        let same_subnet = underlay.is_some_and(|u| u.contains(IpAddr::V4(peer.ip)));
        for cidr in &peer.pod_cidrs {
            if let Some(t) = taken.iter().find(|t| overlaps(t, cidr)) {
                warnings.push(format!("Node {:?}: pod range {cidr} overlaps {t}; skipped", peer.name));
                continue;
            }
            taken.push(*cidr);
            let direct_gw = match cidr {
                IpNetwork::V4(_) => Some(IpAddr::V4(peer.ip)),
                IpNetwork::V6(_) => peer.ip6,
            };
            let via = match (backend, direct_gw) {
                (Backend::HostGw, Some(gw)) if same_subnet => Via::Direct { gw },
                _ => Via::Vxlan { vtep: vtep_addr(cidr), mac: vtep_mac(peer.ip), remote: peer.ip },
            };
            routes.push(PeerRoute { node: peer.name.clone(), cidr: *cidr, via });
        }
    }
    (Some(Desired { local, routes }), warnings)
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Pod MTU for a backend over an underlay MTU.
pub fn pod_mtu(backend: Backend, underlay_mtu: u32) -> u32 {
    match backend {
        Backend::Vxlan => underlay_mtu - VXLAN_OVERHEAD,
        // Off-subnet peers still go through VXLAN; path MTU discovery covers
        // them, while on-subnet pods (the point of host-gw) get the full MTU.
        Backend::HostGw => underlay_mtu,
    }
}

/// The nftables ruleset masquerading pod traffic that leaves the cluster
/// ranges. One table, replaced atomically on every change.
pub fn masquerade_ruleset(table: &str, local: &[IpNetwork], cluster: &[IpNetwork]) -> String {
    let set = |v4: bool, nets: &[IpNetwork]| {
        nets.iter().filter(|n| n.is_ipv4() == v4).map(ToString::to_string).collect::<Vec<_>>().join(", ")
    };
    let mut rules = String::new();
    for (v4, fam) in [(true, "ip"), (false, "ip6")] {
        let src = set(v4, local);
        let dst = set(v4, cluster);
        if src.is_empty() {
            continue;
        }
        let dst = if dst.is_empty() { src.clone() } else { dst };
        rules.push_str(&format!(
            "    {fam} saddr {{ {src} }} {fam} daddr != {{ {dst} }} masquerade\n"
        ));
    }
    // The `add table` + `delete table` pair makes the replacement work whether or not the table exists.
    format!(
        "add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{rules}  }}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidrs: &[&str], ip: &str) -> Node {
        Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.first().map(|s| (*s).to_owned()),
                pod_cidrs: Some(cidrs.iter().map(|s| (*s).to_owned()).collect()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress { type_: "Hostname".into(), address: name.into() },
                    NodeAddress { type_: "InternalIP".into(), address: ip.into() },
                ]),
                ..Default::default()
            }),
        }
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn vxlan_routes_every_peer_through_its_vtep() {
        let nodes = [node("a", &["198.18.1.0/24"], "192.0.2.1"), node("b", &["198.18.2.0/24"], "192.0.2.2")];
        let (d, w) = desired(&nodes, "a", Backend::Vxlan, Some(net("192.0.2.1/24")));
        assert!(w.is_empty(), "{w:?}");
        let d = d.unwrap();
        assert_eq!(
            d.routes,
            vec![PeerRoute {
                node: "b".into(),
                cidr: net("198.18.2.0/24"),
                via: Via::Vxlan {
                    vtep: "198.18.2.0".parse().unwrap(),
                    mac: [0x0e, 0x5c, 192, 0, 2, 2],
                    remote: "192.0.2.2".parse().unwrap()
                }
            }]
        );
        assert_eq!(d.fdb().len(), 1);
        assert_eq!(d.neighbours().len(), 1);
    }

    #[test]
    fn host_gw_routes_on_link_peers_directly_and_others_by_vxlan() {
        let nodes = [
            node("a", &["198.18.1.0/24"], "192.0.2.10"),
            node("b", &["198.18.2.0/24"], "192.0.2.20"),
            node("c", &["198.18.3.0/24"], "192.0.2.200"),
        ];
        let (d, _) = desired(&nodes, "a", Backend::HostGw, Some(net("192.0.2.10/25")));
        let d = d.unwrap();
        assert_eq!(d.routes[0].via, Via::Direct { gw: "192.0.2.20".parse().unwrap() });
        assert!(matches!(d.routes[1].via, Via::Vxlan { .. }), "192.0.2.200 is off the /25: {:?}", d.routes[1]);
        assert!(d.needs_vxlan());
    }

    #[test]
    fn vtep_mac_is_locally_administered_unicast_and_derived_from_the_ip() {
        let m = vtep_mac("192.0.2.7".parse().unwrap());
        assert_eq!(m, [0x0e, 0x5c, 192, 0, 2, 7]);
        assert_eq!(m[0] & 0x03, 0x02);
    }

    #[test]
    fn unusable_nodes_are_skipped_with_a_warning_naming_them() {
        let mut bad = node("b", &["198.18.2.0/24"], "192.0.2.2");
        bad.spec = None;
        let nodes = [node("a", &["198.18.1.0/24"], "192.0.2.1"), bad, node("c", &["garbage"], "192.0.2.3")];
        let (d, w) = desired(&nodes, "a", Backend::Vxlan, None);
        assert!(d.unwrap().routes.is_empty());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("\"b\"") && w[1].contains("\"c\""), "{w:?}");
    }

    #[test]
    fn without_its_own_node_the_daemon_programs_nothing() {
        let nodes = [node("b", &["198.18.2.0/24"], "192.0.2.2")];
        let (d, w) = desired(&nodes, "a", Backend::Vxlan, None);
        assert!(d.is_none());
        assert!(w.iter().any(|w| w.contains("\"a\"")));
    }

    #[test]
    fn overlapping_pod_ranges_are_skipped() {
        let nodes = [
            node("a", &["198.18.1.0/24"], "192.0.2.1"),
            node("b", &["198.18.1.128/25"], "192.0.2.2"),
            node("c", &["198.18.0.0/16"], "192.0.2.3"),
        ];
        let (d, w) = desired(&nodes, "a", Backend::Vxlan, None);
        assert!(d.unwrap().routes.is_empty());
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn dual_stack_peer_gets_a_route_per_family() {
        let nodes = [
            node("a", &["198.18.1.0/24", "2001:db8:1:1::/64"], "192.0.2.1"),
            node("b", &["198.18.2.0/24", "2001:db8:1:2::/64"], "192.0.2.2"),
        ];
        let (d, _) = desired(&nodes, "a", Backend::Vxlan, None);
        let d = d.unwrap();
        assert_eq!(d.routes.len(), 2);
        assert_eq!(d.neighbours().len(), 2, "one neighbour per family's vtep address");
        assert_eq!(d.fdb().len(), 1, "one FDB entry per peer");
    }

    #[test]
    fn pod_mtu_subtracts_vxlan_overhead() {
        assert_eq!(pod_mtu(Backend::Vxlan, 1500), 1450);
        assert_eq!(pod_mtu(Backend::HostGw, 1500), 1500);
    }

    #[test]
    fn masquerade_excludes_cluster_destinations() {
        let r = masquerade_ruleset("sluice", &[net("198.18.1.0/24")], &[net("198.18.0.0/16")]);
        assert!(r.contains("ip saddr { 198.18.1.0/24 } ip daddr != { 198.18.0.0/16 }"), "{r}");
        assert!(!r.contains("ip6 saddr"), "no IPv6 rule without an IPv6 range: {r}");
        assert!(r.starts_with("add table inet sluice\ndelete table inet sluice\n"));
    }
}
