//! The pure core: Kubernetes objects to the desired load-balancing state.
//!
//! Nothing here touches the kernel. `service_frontends` translates one
//! Service and its EndpointSlices; [`Translator::compute`] keeps the desired
//! state of every Service and re-translates only the changed ones, so an
//! update costs O(changed Services).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use sluice_k8s::{
    semantics,
    slice::{Endpoint, EndpointSlice},
    ObjectKey, OrdMap, Snapshot,
};

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

/// A frontend's backends: sorted, distinct, shared by every copy of it.
pub type Backends = Arc<[BackendAddr]>;

/// What one frontend should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ObjectKey,
    pub port_name: String,
    /// Backends taking new connections, sorted and distinct. Empty means
    /// "refuse". Shared: the translation, the desired state and the
    /// planner's last view hold one list per frontend between them.
    pub backends: Backends,
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
) -> Backends {
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
            let addr = match raw.ip() {
                Some(a) if a.is_ipv4() == v4 => a,
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
    let mut usable: Vec<BackendAddr> =
        candidates.iter().filter(|c| semantics::is_usable(c.ep, any_ready)).map(|c| c.addr).collect();
    usable.sort_unstable();
    usable.into()
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

/// The desired state of every frontend.
///
/// A persistent map ([`OrdMap`]): the translator keeps one and changes only
/// the frontends of changed Services, and handing it to the planner is an
/// O(1) clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: OrdMap<FrontendKey, Frontend>,
}

/// Which frontends one [`Translator::compute`] may have changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Everything must be compared (first run, node or configuration change).
    All,
    /// Only these keys (added, changed or removed); every other frontend is
    /// as the previous call left it.
    Keys(BTreeSet<FrontendKey>),
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        matches!(self, Changed::Keys(k) if k.is_empty())
    }
}

/// The result of one [`Translator::compute`].
#[derive(Clone, Debug)]
pub struct Computed {
    pub state: DesiredState,
    pub changed: Changed,
    /// Warnings this call raised: those of re-translated Services that their
    /// previous translation did not have, and conflicts on touched frontends
    /// (each a sentence naming the object it skipped).
    pub new_warnings: Vec<String>,
    /// How many warnings hold now (all Services, all conflicts).
    pub warning_count: usize,
}

/// What the translator last saw, to find the changed Services.
#[derive(Clone, Default)]
struct Seen {
    services: OrdMap<ObjectKey, Arc<Service>>,
    slices: OrdMap<ObjectKey, sluice_k8s::SliceGroup>,
    node: NodeInfo,
}

/// Computes desired states incrementally: it compares each snapshot with the
/// previous one (persistent maps, so unchanged subtrees are skipped by
/// pointer), re-translates only the Services whose Service object or slices
/// changed, and patches its persistent desired state. An update costs
/// O(changed Services x log n).
///
/// When two Services claim the same frontend, the first in (namespace, name)
/// order owns it and the other gets a warning, whatever order they arrived in.
#[derive(Default)]
pub struct Translator {
    seen: Option<Seen>,
    memo: HashMap<ObjectKey, Arc<ServiceTranslation>>,
    state: DesiredState,
    /// The Service owning each frontend.
    owners: HashMap<FrontendKey, ObjectKey>,
    /// Services claiming a frontend another Service owns.
    losers: BTreeMap<FrontendKey, BTreeSet<ObjectKey>>,
    external: Option<Arc<crate::external::ExternalConfig>>,
    recomputed: Vec<ObjectKey>,
    /// Warnings of all translations in `memo`.
    service_warnings: usize,
    /// Service warnings raised during the current compute.
    fresh_warnings: Vec<String>,
}

impl Translator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also translate NodePorts, LoadBalancer IPs and ExternalIPs (see
    /// [`crate::external::external_frontends`]); `None` turns that off.
    pub fn set_external(&mut self, cfg: Option<crate::external::ExternalConfig>) {
        self.external = cfg.map(Arc::new);
        self.seen = None;
    }

    /// The Services whose translation the last [`Translator::compute`] redid
    /// (new, changed or deleted objects).
    pub fn recomputed(&self) -> &[ObjectKey] {
        &self.recomputed
    }

    /// Lets go of the list [`Translator::recomputed`] returns (after a cold
    /// start it names every Service).
    pub fn forget_recomputed(&mut self) {
        self.recomputed = Vec::new();
    }

    /// The desired state of `snap`, what changed since the previous call, and
    /// the current warnings.
    pub fn compute(&mut self, snap: &Snapshot, node: &NodeInfo) -> Computed {
        self.recomputed.clear();
        let mut touched = BTreeSet::new();
        let changed = match self.seen.take() {
            Some(seen) if seen.node == *node => {
                let mut keys = BTreeSet::new();
                for item in seen.services.diff(&snap.services) {
                    keys.insert(diff_key(item).clone());
                }
                for item in seen.slices.diff(&snap.slices) {
                    keys.insert(diff_key(item).clone());
                }
                for key in &keys {
                    self.retranslate(key, snap, node, &mut touched);
                }
                Changed::Keys(touched)
            }
            _ => {
                *self = Self { external: self.external.take(), ..Self::default() };
                let keys: Vec<ObjectKey> = snap.services.keys().cloned().collect();
                for key in &keys {
                    self.retranslate(key, snap, node, &mut touched);
                }
                Changed::All
            }
        };
        self.seen = Some(Seen { services: snap.services.clone(), slices: snap.slices.clone(), node: node.clone() });
        let new_warnings = std::mem::take(&mut self.fresh_warnings);
        let warning_count = self.service_warnings + self.losers.values().map(BTreeSet::len).sum::<usize>();
        Computed { state: self.state.clone(), changed, new_warnings, warning_count }
    }

    /// Every current warning: the Services' own and the frontend conflicts
    /// (walks every Service; for tests and diagnostics).
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.memo.values().flat_map(|t| t.warnings.iter().cloned()).collect();
        for (fk, losers) in &self.losers {
            let owner = self.owners.get(fk).map(ToString::to_string).unwrap_or_default();
            out.extend(losers.iter().map(|l| conflict(fk, l, &owner)));
        }
        out
    }

    /// Translates Service `key` again (or drops it when it is gone) and
    /// patches the state, adding every frontend key it touched to `touched`.
    fn retranslate(&mut self, key: &ObjectKey, snap: &Snapshot, node: &NodeInfo, touched: &mut BTreeSet<FrontendKey>) {
        self.recomputed.push(key.clone());
        let new = snap.services.get(key).map(|svc| {
            let slices: Vec<&EndpointSlice> = snap.slices_of(key).map(|s| &**s).collect();
            let mut result = service_frontends(key, svc, &slices, node);
            if let Some(cfg) = &self.external {
                let ext = crate::external::external_frontends(key, svc, &slices, node, cfg);
                result.frontends.extend(ext.frontends);
                result.warnings.extend(ext.warnings);
            }
            Arc::new(result)
        });
        let old = match &new {
            Some(n) => self.memo.insert(key.clone(), n.clone()),
            None => self.memo.remove(key),
        };
        let old_warnings = old.as_ref().map_or(&[][..], |t| &t.warnings[..]);
        self.service_warnings -= old_warnings.len();
        if let Some(n) = &new {
            self.service_warnings += n.warnings.len();
            self.fresh_warnings.extend(n.warnings.iter().filter(|w| !old_warnings.contains(w)).cloned());
        }
        let mut vacated = Vec::new();
        for (fk, _) in old.iter().flat_map(|t| t.frontends.iter()) {
            if self.owners.get(fk) == Some(key) {
                self.owners.remove(fk);
                self.state.frontends.remove(fk);
                touched.insert(*fk);
                vacated.push(*fk);
            } else if let Some(l) = self.losers.get_mut(fk) {
                l.remove(key);
                if l.is_empty() {
                    self.losers.remove(fk);
                }
            }
        }
        for (fk, fe) in new.iter().flat_map(|t| t.frontends.iter()) {
            self.claim(*fk, key, fe, touched);
        }
        // A frontend this Service gave up goes to the first other claimant.
        for fk in vacated {
            if self.owners.contains_key(&fk) {
                continue;
            }
            let Some(next) = self.losers.get_mut(&fk).and_then(|l| l.pop_first()) else { continue };
            if self.losers.get(&fk).is_some_and(BTreeSet::is_empty) {
                self.losers.remove(&fk);
            }
            if let Some(fe) = self.memo.get(&next).and_then(|t| t.frontends.iter().find(|(k, _)| *k == fk)) {
                self.state.frontends.insert(fk, fe.1.clone());
                self.owners.insert(fk, next);
            }
        }
    }

    fn claim(&mut self, fk: FrontendKey, key: &ObjectKey, fe: &Frontend, touched: &mut BTreeSet<FrontendKey>) {
        match self.owners.get(&fk) {
            Some(owner) if owner == key => {
                // The same Service lists a frontend twice: the first wins.
                return;
            }
            Some(owner) if owner < key => {
                self.fresh_warnings.push(conflict(&fk, key, &owner.to_string()));
                self.losers.entry(fk).or_default().insert(key.clone());
                return;
            }
            Some(owner) => {
                let demoted = owner.clone();
                self.fresh_warnings.push(conflict(&fk, &demoted, &key.to_string()));
                self.losers.entry(fk).or_default().insert(demoted);
            }
            None => {}
        }
        self.owners.insert(fk, key.clone());
        self.state.frontends.insert(fk, fe.clone());
        touched.insert(fk);
    }
}

/// The warning of a Service that claims a frontend another one owns.
fn conflict(fk: &FrontendKey, loser: &ObjectKey, owner: &str) -> String {
    format!("Service {loser}: frontend {fk} is already used by Service {owner}; skipped")
}

/// The key of one entry of an [`OrdMap::diff`].
fn diff_key<'a, V>(item: sluice_k8s::snapshot::DiffItem<'a, 'a, ObjectKey, V>) -> &'a ObjectKey {
    use sluice_k8s::snapshot::DiffItem;
    match item {
        DiffItem::Add(k, _) | DiffItem::Remove(k, _) => k,
        DiffItem::Update { new: (k, _), .. } => k,
    }
}

#[cfg(test)]
mod tests;
