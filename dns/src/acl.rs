//! Who may use this server for names outside the cluster (forwarding,
//! recursion). Cluster names are answered to everyone: they are this
//! server's authoritative data. Forwarding for anyone would make the server
//! an open resolver and a reflection amplifier.
//!
//! The default, `cluster`, allows loopback plus what the Node objects say
//! the cluster is made of: every Node's `spec.podCIDRs` (where pods query
//! from) and every Node's `status.addresses` of type InternalIP and
//! ExternalIP (hostNetwork pods, and pods whose queries to the DNS
//! Service's address leave their node masqueraded). It follows Node changes.
//! Clusters whose CNI does not fill `spec.podCIDRs` (per-pod IPAM pools)
//! name their pod networks with `--allow-recursion CIDR`.

use std::{net::IpAddr, str::FromStr};

use ipnetwork::IpNetwork;
use sluice_k8s::Snapshot;

/// One `--allow-recursion` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowRecursion {
    /// Loopback and the Nodes' pod CIDRs and addresses.
    Cluster,
    /// Every client (an open resolver: only behind a network policy).
    Any,
    /// A client network.
    Network(IpNetwork),
}

impl FromStr for AllowRecursion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cluster" => Ok(Self::Cluster),
            "any" => Ok(Self::Any),
            _ => s
                .parse::<IpNetwork>()
                .map(Self::Network)
                .map_err(|e| format!("{s:?}: expected `cluster`, `any` or a CIDR ({e})")),
        }
    }
}

/// The client networks allowed to use forwarding, as of one snapshot.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    any: bool,
    networks: Vec<IpNetwork>,
}

impl Acl {
    /// The networks `policy` allows, reading Nodes from `snapshot` when it says `cluster`.
    pub fn new(policy: &[AllowRecursion], snapshot: &Snapshot) -> Self {
        let mut acl = Self::default();
        for p in policy {
            match p {
                AllowRecursion::Any => acl.any = true,
                AllowRecursion::Network(n) => acl.networks.push(*n),
                AllowRecursion::Cluster => acl.add_cluster(snapshot),
            }
        }
        acl.networks.sort_unstable_by_key(|n| (n.ip(), n.prefix()));
        acl.networks.dedup();
        acl
    }

    fn add_cluster(&mut self, snapshot: &Snapshot) {
        self.networks.push(IpNetwork::V4(ipnetwork::Ipv4Network::new([127, 0, 0, 0].into(), 8).expect("valid prefix")));
        self.networks.push(IpNetwork::V6(ipnetwork::Ipv6Network::new(std::net::Ipv6Addr::LOCALHOST, 128).expect("valid prefix")));
        for node in snapshot.nodes.values() {
            let spec = node.spec.as_ref();
            let cidrs = spec.and_then(|s| s.pod_cidrs.as_deref()).unwrap_or_default().iter();
            for cidr in cidrs.chain(spec.and_then(|s| s.pod_cidr.as_ref())) {
                match cidr.parse::<IpNetwork>() {
                    Ok(n) => self.networks.push(n),
                    Err(e) => tracing::warn!(node = ?node.metadata.name, %cidr, error = %e, "skipped a pod CIDR: not a CIDR"),
                }
            }
            let addrs = node.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or_default();
            for a in addrs.iter().filter(|a| matches!(a.type_.as_str(), "InternalIP" | "ExternalIP")) {
                if let Ok(ip) = a.address.parse::<IpAddr>() {
                    self.networks.push(IpNetwork::from(ip));
                }
            }
        }
    }

    /// Whether `client` may have names outside the cluster resolved.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.any || self.networks.iter().any(|n| n.contains(client))
    }

    /// The allowed networks (for logs).
    pub fn networks(&self) -> &[IpNetwork] {
        &self.networks
    }

    pub fn allows_any(&self) -> bool {
        self.any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str) -> Snapshot {
        let (objects, warnings) = sluice_k8s::manifests::parse_documents("acl.yaml", yaml);
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut b = sluice_k8s::SnapshotBuilder::new();
        for o in objects {
            if let sluice_k8s::manifests::Object::Node(n) = o {
                b.node(n);
            }
        }
        b.build()
    }

    const NODES: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n\
        spec: {podCIDR: 198.18.1.0/24, podCIDRs: [198.18.1.0/24, '2001:db8:1:1::/64']}\n\
        status: {addresses: [{type: InternalIP, address: 192.0.2.11}, {type: Hostname, address: a}]}\n---\n\
        apiVersion: v1\nkind: Node\nmetadata: {name: b}\nspec: {podCIDRs: [198.18.2.0/24]}\n";

    #[test]
    fn cluster_default_allows_loopback_pod_cidrs_and_node_addresses_only() {
        let acl = Acl::new(&[AllowRecursion::Cluster], &snapshot(NODES));
        for (ip, want) in [
            ("127.0.0.1", true),
            ("127.0.0.53", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("198.18.1.7", true),
            ("198.18.2.250", true),
            ("2001:db8:1:1::5", true),
            ("192.0.2.11", true),
            ("::ffff:198.18.2.3", true),
            ("192.0.2.12", false),
            ("198.18.3.1", false),
            ("203.0.113.5", false),
            ("2001:db8:1:2::5", false),
        ] {
            assert_eq!(acl.allows(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn explicit_networks_and_any() {
        let net: AllowRecursion = "203.0.113.0/24".parse().unwrap();
        let acl = Acl::new(&[net], &snapshot(NODES));
        assert!(acl.allows("203.0.113.9".parse().unwrap()));
        assert!(!acl.allows("127.0.0.1".parse().unwrap()), "without `cluster`, loopback is not implied");
        let acl = Acl::new(&[AllowRecursion::Any], &Snapshot::default());
        assert!(acl.allows("198.51.100.1".parse().unwrap()));
        assert!("banana".parse::<AllowRecursion>().unwrap_err().contains("banana"));
    }
}
