//! Traffic from outside the cluster: NodePorts, LoadBalancer ingress IPs and
//! ExternalIPs, as pure functions of the Kubernetes objects and this node's
//! settings.
//!
//! Every external address yields two frontends: one of [`Scope::External`]
//! that the tc program serves to packets from outside (honouring
//! `externalTrafficPolicy`), and one of [`Scope::Cluster`] at the same
//! address, so pods and the host reaching a NodePort or LB IP are balanced at
//! the socket like a ClusterIP (kube-proxy's short-circuit of in-cluster
//! traffic to external addresses). [`ExternalExtras`] holds what the tc path
//! needs beyond frontends: source ranges, the NodePorts to keep unbound, and
//! the health checks of `externalTrafficPolicy: Local` Services.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::{IpNetwork, Ipv4Network};
use k8s_openapi::api::core::v1::Service;
use sluice_k8s::EndpointSlice;
use sluice_k8s::{semantics, ObjectKey, Snapshot};

use crate::model::{
    parse_proto, port_backends, Frontend, FrontendKey, NodeInfo, Proto, Scope, ServiceTranslation,
};

/// Backend selection for external traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbAlgorithm {
    #[default]
    Random,
    /// Consistent hashing: every node picks the same backend for a client
    /// tuple, and a backend change moves only that backend's share.
    Maglev,
}

/// Default Maglev table size (a prime; Maglev wants M >> backends).
pub const DEFAULT_MAGLEV_SIZE: u32 = 1021;

/// This node's settings for external traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalConfig {
    /// The node's addresses (IPv4 for the tc path).
    pub node_ips: Vec<Ipv4Addr>,
    /// `nodePortAddresses`: which node addresses answer NodePorts; empty
    /// means all of them.
    pub nodeport_addresses: Vec<Ipv4Network>,
    pub lb_algorithm: LbAlgorithm,
    pub maglev_size: u32,
}

impl ExternalConfig {
    /// The node addresses that answer NodePorts.
    pub fn nodeport_ips(&self) -> Vec<Ipv4Addr> {
        self.node_ips
            .iter()
            .copied()
            .filter(|ip| self.nodeport_addresses.is_empty() || self.nodeport_addresses.iter().any(|n| n.contains(*ip)))
            .collect()
    }
}

/// Whether the Service's type asks for NodePorts and external policies.
fn is_node_port_type(svc: &Service) -> bool {
    matches!(svc.spec.as_ref().and_then(|s| s.type_.as_deref()), Some("NodePort" | "LoadBalancer"))
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// `externalTrafficPolicy: Local` (meaningful for NodePort and LoadBalancer).
pub fn external_policy_local(svc: &Service) -> bool {
    is_node_port_type(svc)
        && svc.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local")
}

/// The LoadBalancer ingress IPs and ExternalIPs of a Service, parsed, with a
/// warning for each one skipped.
fn extra_addresses(key: &ObjectKey, svc: &Service, warnings: &mut Vec<String>) -> Vec<Ipv4Addr> {
    let mut raw: Vec<(&str, &str)> = Vec::new();
    if let Some(spec) = &svc.spec {
        for ip in spec.external_ips.iter().flatten() {
            raw.push(("externalIP", ip));
        }
    }
    if is_load_balancer(svc) {
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
        for ing in ingress.into_iter().flatten() {
            if let Some(ip) = ing.ip.as_deref() {
                raw.push(("loadBalancer ingress IP", ip));
            }
        }
    }
    let mut out = Vec::new();
    for (what, ip) in raw {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            Ok(IpAddr::V6(_)) => warnings.push(format!(
                "Service {key}: {what} {ip} is IPv6, which the external datapath does not serve yet; skipped"
            )),
            Err(_) => warnings.push(format!("Service {key}: invalid {what} {ip:?}, skipped")),
        }
    }
    out
}

/// Translates the external side of one Service: NodePorts on the node
/// addresses that answer them, LoadBalancer ingress IPs and ExternalIPs.
pub fn external_frontends(
    key: &ObjectKey,
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
    cfg: &ExternalConfig,
) -> ServiceTranslation {
    let mut out = ServiceTranslation::default();
    if semantics::proxy_ignores(svc).is_some() {
        return out;
    }
    let Some(spec) = svc.spec.as_ref() else { return out };
    let node_ports = is_node_port_type(svc);
    let extra = extra_addresses(key, svc, &mut out.warnings);
    if !node_ports && extra.is_empty() {
        return out;
    }
    let etp_local = external_policy_local(svc);
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let distribution = spec.traffic_distribution.as_deref();
    let np_ips = cfg.nodeport_ips();
    for port in spec.ports.iter().flatten() {
        let Some(proto) = parse_proto(semantics::service_port_protocol(port)) else { continue };
        let Ok(svc_port) = u16::try_from(port.port) else { continue };
        let mut addrs: Vec<(Ipv4Addr, u16)> = extra.iter().map(|a| (*a, svc_port)).collect();
        if node_ports {
            match port.node_port.map(u16::try_from) {
                Some(Ok(np)) if np != 0 => addrs.extend(np_ips.iter().map(|ip| (*ip, np))),
                Some(_) => out.warnings.push(format!("Service {key}: nodePort of port {} out of range, skipped", port.port)),
                None => {}
            }
        }
        if addrs.is_empty() {
            continue;
        }
        let external = port_backends(key, port, proto, true, slices, node, etp_local, distribution, &mut out.warnings);
        let internal = port_backends(key, port, proto, true, slices, node, itp_local, distribution, &mut Vec::new());
        for (addr, p) in addrs {
            for (scope, backends) in [(Scope::External, &external), (Scope::Cluster, &internal)] {
                out.frontends.push((
                    FrontendKey { addr: IpAddr::V4(addr), port: p, proto, scope },
                    Frontend {
                        service: key.clone(),
                        port_name: port.name.clone().unwrap_or_default(),
                        backends: backends.clone(),
                        affinity_timeout: None,
                    },
                ));
            }
        }
    }
    out
}

/// An `externalTrafficPolicy: Local` Service's health check on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ObjectKey,
    /// Ready endpoints of the Service on this node.
    pub local_endpoints: usize,
}

/// What the external datapath needs beyond frontends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalExtras {
    /// Every external frontend, with the source ranges it admits (empty:
    /// every source).
    pub frontends: BTreeMap<FrontendKey, Vec<Ipv4Network>>,
    /// NodePorts no host socket may bind.
    pub node_ports: BTreeSet<(u16, Proto)>,
    /// healthCheckNodePort -> the Service it reports on.
    pub health_checks: BTreeMap<u16, HealthCheck>,
    pub warnings: Vec<String>,
}

/// Ready endpoints of a Service on `node` (distinct addresses).
fn local_ready_endpoints(slices: &[&EndpointSlice], node: &str) -> usize {
    let mut seen = BTreeSet::new();
    for s in slices {
        for ep in &s.endpoints {
            if ep.node_name.as_deref() == Some(node) && semantics::is_ready(ep) {
                if let Some(a) = ep.addresses.first() {
                    seen.insert(a.clone());
                }
            }
        }
    }
    seen.len()
}

impl ExternalExtras {
    pub fn compute(snap: &Snapshot, node: &NodeInfo, cfg: &ExternalConfig) -> Self {
        let mut out = Self::default();
        for (key, svc) in &snap.services {
            let Some(spec) = svc.spec.as_ref() else { continue };
            if semantics::proxy_ignores(svc).is_some() {
                continue;
            }
            let slices: Vec<&EndpointSlice> = snap.slices_of(key).map(|s| &**s).collect();
            let t = external_frontends(key, svc, &slices, node, cfg);
            let mut ranges = Vec::new();
            if is_load_balancer(svc) {
                for r in spec.load_balancer_source_ranges.iter().flatten() {
                    match r.trim().parse::<IpNetwork>() {
                        Ok(IpNetwork::V4(n)) => ranges.push(n),
                        Ok(IpNetwork::V6(_)) => {}
                        Err(_) => out.warnings.push(format!(
                            "Service {key}: invalid loadBalancerSourceRange {r:?}, skipped"
                        )),
                    }
                }
            }
            // Source ranges restrict the LoadBalancer IPs only; NodePorts and
            // ExternalIPs of the same Service stay open.
            let lb_ips: BTreeSet<Ipv4Addr> = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect();
            for (fk, _) in &t.frontends {
                if fk.scope != Scope::External {
                    continue;
                }
                let IpAddr::V4(a) = fk.addr else { continue };
                let r = if lb_ips.contains(&a) { ranges.clone() } else { Vec::new() };
                out.frontends.insert(*fk, r);
            }
            if is_node_port_type(svc) {
                for port in spec.ports.iter().flatten() {
                    let Some(proto) = parse_proto(semantics::service_port_protocol(port)) else { continue };
                    if let Some(np) = port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) {
                        out.node_ports.insert((np, proto));
                    }
                }
            }
            if external_policy_local(svc) {
                if let Some(hc) = spec.health_check_node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) {
                    out.health_checks.insert(
                        hc,
                        HealthCheck { service: key.clone(), local_endpoints: local_ready_endpoints(&slices, &node.name) },
                    );
                }
            }
        }
        out
    }
}

/// The health-check answer: kube-proxy's status codes and body shape.
pub fn health_response(hc: &HealthCheck) -> (u16, String) {
    let body = serde_json::json!({
        "service": { "namespace": hc.service.namespace, "name": hc.service.name },
        "localEndpoints": hc.local_endpoints,
        "serviceProxyHealthy": true,
    })
    .to_string();
    (if hc.local_endpoints > 0 { 200 } else { 503 }, body)
}

fn fnv1a(seed: u8, data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(&seed).chain(data) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Maglev's lookup table (Eisenbud et al., NSDI '16): entry i names the
/// backend (an index into `names`) serving hash bucket i. Depends only on the
/// names and `size`, so every node computes the same table for the same
/// backends; removing a backend reassigns mostly its own buckets.
///
/// `size` should be a prime larger than `names.len()`; `names` must not be
/// empty.
pub fn maglev_table(names: &[Vec<u8>], size: u32) -> Vec<usize> {
    let m = u64::from(size.max(2));
    let n = names.len();
    if n == 0 {
        return Vec::new();
    }
    let perm: Vec<(u64, u64)> = names
        .iter()
        .map(|name| (fnv1a(0x5a, name) % m, fnv1a(0xa5, name) % (m - 1) + 1))
        .collect();
    let mut next = vec![0u64; n];
    let mut table = vec![usize::MAX; m as usize];
    let mut filled = 0u64;
    'outer: loop {
        for (i, (offset, skip)) in perm.iter().enumerate() {
            // Each backend's permutation visits every bucket within m steps.
            let mut c = ((offset + next[i] * skip) % m) as usize;
            while table[c] != usize::MAX {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m) as usize;
            }
            table[c] = i;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'outer;
            }
        }
    }
    table
}

/// Whether `n` is prime (for validating `--maglev-table-size`).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests;
