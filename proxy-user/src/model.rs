//! The pure core: Kubernetes objects to the desired load-balancing state.
//!
//! Nothing here touches the kernel. `service_frontends` translates one
//! Service and its EndpointSlices; `DesiredState::compute` does every Service
//! and memoises per Service by object identity, so an update costs
//! O(changed Services).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort},
    discovery::v1::{Endpoint, EndpointSlice},
};
use sluice_k8s::{semantics, ObjectKey, Snapshot};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => proxy_common::PROTO_TCP,
            Proto::Udp => proxy_common::PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            proxy_common::PROTO_TCP => Some(Proto::Tcp),
            proxy_common::PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// Where a frontend answers. `Cluster` frontends are served at the socket
/// (ClusterIPs, and the node/LB/external addresses pods and the host reach);
/// `External` ones at tc for packets from outside (see [`crate::external`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Cluster,
    External,
}

impl Scope {
    pub fn number(self) -> u8 {
        match self {
            Scope::Cluster => proxy_common::SCOPE_CLUSTER,
            Scope::External => proxy_common::SCOPE_EXTERNAL,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            proxy_common::SCOPE_CLUSTER => Some(Scope::Cluster),
            proxy_common::SCOPE_EXTERNAL => Some(Scope::External),
            _ => None,
        }
    }
}

/// (VIP, port, protocol, scope): what a client addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub scope: Scope,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.proto)?,
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.proto)?,
        }
        if self.scope == Scope::External {
            f.write_str(" (external)")?;
        }
        Ok(())
    }
}

/// A backend address: (pod IP, target port, protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// What one frontend should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ObjectKey,
    pub port_name: String,
    /// Backends taking new connections, sorted. Empty means "refuse".
    pub backends: BTreeSet<BackendAddr>,
    /// ClientIP session affinity timeout in seconds, when enabled.
    pub affinity_timeout: Option<u32>,
}

/// This node, as the model needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub zone: Option<String>,
}

impl NodeInfo {
    /// Reads the node's zone from the snapshot's Node object, if present.
    pub fn from_snapshot(name: &str, snap: &Snapshot) -> Self {
        let zone = snap
            .nodes
            .get(name)
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(semantics::ZONE_LABEL))
            .cloned();
        Self { name: name.to_owned(), zone }
    }
}

/// The result of translating one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTranslation {
    pub frontends: Vec<(FrontendKey, Frontend)>,
    /// Problems that skipped a part of the Service, each naming it.
    pub warnings: Vec<String>,
}

pub(crate) fn parse_proto(p: &str) -> Option<Proto> {
    match p {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        _ => None,
    }
}

/// Translates one Service and its slices into frontends.
pub fn service_frontends(
    key: &ObjectKey,
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
) -> ServiceTranslation {
    let mut out = ServiceTranslation::default();
    if semantics::proxy_ignores(svc).is_some() {
        return out;
    }
    let Some(spec) = svc.spec.as_ref() else { return out };
    let what = semantics::describe("Service", &svc.metadata);
    let mut vips = Vec::new();
    for ip in semantics::cluster_ips(svc) {
        match ip.parse::<IpAddr>() {
            Ok(ip) => vips.push(ip),
            Err(_) => out.warnings.push(format!("{what}: invalid clusterIP {ip:?}, skipped")),
        }
    }
    if vips.is_empty() {
        return out;
    }
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let local_only = spec.internal_traffic_policy.as_deref() == Some("Local");
    let distribution = spec.traffic_distribution.as_deref();
    for port in spec.ports.iter().flatten() {
        let proto_name = semantics::service_port_protocol(port);
        let Some(proto) = parse_proto(proto_name) else {
            out.warnings.push(format!(
                "{what}: port {} uses protocol {proto_name}, which sluice-proxy does not support; skipped",
                port.port
            ));
            continue;
        };
        let Ok(svc_port) = u16::try_from(port.port) else {
            out.warnings.push(format!("{what}: port {} out of range, skipped", port.port));
            continue;
        };
        for vip in &vips {
            let backends = port_backends(key, port, proto, vip.is_ipv4(), slices, node, local_only, distribution, &mut out.warnings);
            out.frontends.push((
                FrontendKey { addr: *vip, port: svc_port, proto, scope: Scope::Cluster },
                Frontend {
                    service: key.clone(),
                    port_name: port.name.clone().unwrap_or_default(),
                    backends,
                    affinity_timeout,
                },
            ));
        }
    }
    out
}

struct Candidate<'a> {
    ep: &'a Endpoint,
    addr: BackendAddr,
}

#[expect(clippy::too_many_arguments, reason = "two call sites; a struct would only rename them")]
pub(crate) fn port_backends(
    key: &ObjectKey,
    port: &ServicePort,
    proto: Proto,
    v4: bool,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
    local_only: bool,
    distribution: Option<&str>,
    warnings: &mut Vec<String>,
) -> BTreeSet<BackendAddr> {
    let family = if v4 { "IPv4" } else { "IPv6" };
    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    let mut seen = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        let Some(slice_port) = semantics::slice_port_for(slice, port) else { continue };
        let Some(target) = slice_port.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            // kube-proxy uses the first address of an endpoint.
            let Some(raw) = ep.addresses.first() else { continue };
            let addr = match raw.parse::<IpAddr>() {
                Ok(a) if a.is_ipv4() == v4 => a,
                _ => {
                    warnings.push(format!(
                        "{} of Service {key}: invalid {family} address {raw:?}, endpoint skipped",
                        semantics::describe("EndpointSlice", &slice.metadata)
                    ));
                    continue;
                }
            };
            let addr = BackendAddr { addr, port: target, proto };
            if seen.insert(addr) {
                candidates.push(Candidate { ep, addr });
            }
        }
    }
    if local_only {
        candidates.retain(|c| c.ep.node_name.as_deref() == Some(node.name.as_str()));
    } else if let Some(filtered) = topology_filter(&candidates, node, distribution) {
        candidates = filtered;
    }
    let any_ready = candidates.iter().any(|c| semantics::is_ready(c.ep));
    candidates
        .iter()
        .filter(|c| semantics::is_usable(c.ep, any_ready))
        .map(|c| c.addr)
        .collect()
}

/// kube-proxy's topology rules: hints are used only when every ready endpoint
/// carries them and at least one matches this node; otherwise every endpoint
/// is used. `PreferSameNode` first looks at node hints, then at zone hints.
fn topology_filter<'a>(
    candidates: &[Candidate<'a>],
    node: &NodeInfo,
    distribution: Option<&str>,
) -> Option<Vec<Candidate<'a>>> {
    let ready: Vec<&Candidate<'a>> =
        candidates.iter().filter(|c| semantics::is_ready(c.ep)).collect();
    if ready.is_empty() {
        return None;
    }
    let pick = |matches: &dyn Fn(&Endpoint) -> Option<bool>| -> Option<Vec<Candidate<'a>>> {
        let mut any = false;
        for c in &ready {
            any |= matches(c.ep)?;
        }
        any.then(|| {
            candidates
                .iter()
                .filter(|c| matches(c.ep) == Some(true))
                .map(|c| Candidate { ep: c.ep, addr: c.addr })
                .collect()
        })
    };
    if distribution == Some("PreferSameNode") {
        let by_node = |ep: &Endpoint| {
            let hints = ep.hints.as_ref()?.for_nodes.as_ref().filter(|h| !h.is_empty())?;
            Some(hints.iter().any(|h| h.name == node.name))
        };
        if let Some(v) = pick(&by_node) {
            return Some(v);
        }
    }
    let zone = node.zone.as_deref()?;
    let by_zone = |ep: &Endpoint| {
        let hints = ep.hints.as_ref()?.for_zones.as_ref().filter(|h| !h.is_empty())?;
        Some(hints.iter().any(|h| h.name == zone))
    };
    pick(&by_zone)
}

#[derive(Clone)]
struct Memo {
    svc: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    node: NodeInfo,
    result: Arc<ServiceTranslation>,
}

/// The desired state of every frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
}

/// Computes desired states, reusing the translation of every Service whose
/// objects did not change since the last call.
#[derive(Default)]
pub struct Translator {
    memo: HashMap<ObjectKey, Memo>,
    external: Option<Arc<crate::external::ExternalConfig>>,
    recomputed: Vec<ObjectKey>,
}

impl Translator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also translate NodePorts, LoadBalancer IPs and ExternalIPs (see
    /// [`crate::external::external_frontends`]); `None` turns that off.
    pub fn set_external(&mut self, cfg: Option<crate::external::ExternalConfig>) {
        self.external = cfg.map(Arc::new);
        self.memo.clear();
    }

    /// The Services whose translation the last [`Translator::compute`] redid
    /// (new or changed objects).
    pub fn recomputed(&self) -> &[ObjectKey] {
        &self.recomputed
    }

    /// Returns the desired state and the warnings of this snapshot (each a
    /// sentence naming the object it skipped).
    pub fn compute(&mut self, snap: &Snapshot, node: &NodeInfo) -> (DesiredState, Vec<String>) {
        let mut state = DesiredState::default();
        let mut warnings = Vec::new();
        let mut owners: HashMap<FrontendKey, ObjectKey> = HashMap::new();
        let mut next_memo = HashMap::with_capacity(snap.services.len());
        self.recomputed.clear();
        for (key, svc) in &snap.services {
            let slices: Vec<Arc<EndpointSlice>> = snap.slices_of(key).cloned().collect();
            let memo = match self.memo.remove(key) {
                Some(m)
                    if Arc::ptr_eq(&m.svc, svc)
                        && m.node == *node
                        && m.slices.len() == slices.len()
                        && m.slices.iter().zip(&slices).all(|(a, b)| Arc::ptr_eq(a, b)) =>
                {
                    m
                }
                _ => {
                    self.recomputed.push(key.clone());
                    let refs: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
                    let mut result = service_frontends(key, svc, &refs, node);
                    if let Some(cfg) = &self.external {
                        let ext = crate::external::external_frontends(key, svc, &refs, node, cfg);
                        result.frontends.extend(ext.frontends);
                        result.warnings.extend(ext.warnings);
                    }
                    let result = Arc::new(result);
                    Memo { svc: svc.clone(), slices, node: node.clone(), result }
                }
            };
            warnings.extend(memo.result.warnings.iter().cloned());
            for (fk, fe) in &memo.result.frontends {
                if let Some(owner) = owners.get(fk) {
                    warnings.push(format!(
                        "Service {key}: frontend {fk} is already used by Service {owner}; skipped"
                    ));
                    continue;
                }
                owners.insert(*fk, key.clone());
                state.frontends.insert(*fk, fe.clone());
            }
            next_memo.insert(key.clone(), memo);
        }
        self.memo = next_memo;
        (state, warnings)
    }
}

#[cfg(test)]
mod tests;
