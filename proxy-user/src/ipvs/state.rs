//! The pure layer of the IPVS dataplane: what the planner's frontends mean
//! as IPVS virtual services, real servers, dummy-interface addresses and
//! nftables set elements, and the kernel operations that take one to the
//! other. Nothing here touches the kernel.
//!
//! Semantics follow kube-proxy's ipvs mode:
//! - every frontend address:port/proto is one virtual service; a Cluster
//!   and an External frontend at the same key share it, and the External
//!   one's backends win (externalTrafficPolicy applies to it);
//! - a Service with no usable endpoints keeps its virtual service with no
//!   real servers: IPVS then answers ICMP port unreachable, so TCP connects
//!   fail at once with ECONNREFUSED and UDP senders see the same error;
//! - a real server leaving a TCP service is drained: weight 0 (no new
//!   connections, existing ones continue) and deleted once it has no
//!   connections; UDP real servers are deleted at once (kube-proxy does the
//!   same: there is nothing to drain, and `expire_nodest_conn` ends flows);
//! - ClientIP session affinity is IPVS persistence with the Service's timeout.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnetwork::Ipv4Network;

use super::genl::{Dest, Service, ServiceId, IP_VS_SVC_F_PERSISTENT};
use crate::{
    model::{BackendAddr, FrontendKey, Proto, Scope},
    plan::{BackendId, Diff, Programmed, ProgrammedFrontend},
};

/// The IPVS schedulers kube-proxy offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    #[default]
    Rr,
    Wrr,
    Lc,
    Sh,
    Mh,
}

impl Scheduler {
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Sh => "sh",
            Scheduler::Mh => "mh",
        }
    }
}

/// This node's settings for the IPVS dataplane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub scheduler: Scheduler,
    /// The node's own addresses: virtual services there (NodePorts) are not
    /// bound on the dummy interface.
    pub node_ips: BTreeSet<IpAddr>,
    /// kube-proxy's `--cluster-cidr`: traffic to a ClusterIP from outside it
    /// is masqueraded. Without it ClusterIP traffic keeps its source.
    pub cluster_cidr: Option<Ipv4Network>,
}

/// One virtual service as it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualService {
    pub service: Service,
    /// Real servers taking new connections (weight 1).
    pub real_servers: BTreeSet<(IpAddr, u16)>,
    /// Reached from outside (NodePort, LB IP, ExternalIP): masqueraded.
    pub external: bool,
}

/// One virtual service as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub service: Service,
    /// Real servers by (address, port); weight 0 means draining.
    pub dests: BTreeMap<(IpAddr, u16), Dest>,
    /// Whether its set elements are in the `external` / `cluster-ips` sets.
    pub external: bool,
}

pub fn service_id(key: &FrontendKey) -> ServiceId {
    ServiceId { addr: key.addr, port: key.port, protocol: u16::from(key.proto.number()) }
}

fn proto_of(id: &ServiceId) -> Option<Proto> {
    u8::try_from(id.protocol).ok().and_then(Proto::from_number)
}

fn frontend_key(id: &ServiceId, scope: Scope) -> Option<FrontendKey> {
    Some(FrontendKey { addr: id.addr, port: id.port, proto: proto_of(id)?, scope })
}

/// The virtual service the programmed frontends at `id` ask for, if any.
pub fn desired_service(p: &Programmed, id: &ServiceId, s: &Settings) -> Option<VirtualService> {
    let cluster = frontend_key(id, Scope::Cluster).and_then(|k| p.frontends.get(&k));
    let external = frontend_key(id, Scope::External).and_then(|k| p.frontends.get(&k));
    let chosen = external.or(cluster)?;
    let affinity = chosen.affinity_timeout.or(cluster.and_then(|c| c.affinity_timeout));
    let real_servers = chosen
        .slots
        .iter()
        .filter_map(|b| p.backends.get(b))
        .map(|b| (b.addr, b.port))
        .collect();
    Some(VirtualService {
        service: Service {
            id: *id,
            scheduler: s.scheduler.name().to_owned(),
            flags: if affinity.is_some() { IP_VS_SVC_F_PERSISTENT } else { 0 },
            timeout: affinity.unwrap_or(0),
        },
        real_servers,
        external: external.is_some(),
    })
}

/// One kernel operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddService(Service),
    UpdateService(Service),
    DelService(ServiceId),
    AddDest(ServiceId, Dest),
    SetDest(ServiceId, Dest),
    DelDest(ServiceId, Dest),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddService(s) => write!(f, "add virtual service {}", show(&s.id)),
            Op::UpdateService(s) => write!(f, "update virtual service {}", show(&s.id)),
            Op::DelService(id) => write!(f, "delete virtual service {}", show(id)),
            Op::AddDest(id, d) => write!(f, "add real server {} to {}", show_rs(d), show(id)),
            Op::SetDest(id, d) => write!(f, "set weight {} of real server {} of {}", d.weight, show_rs(d), show(id)),
            Op::DelDest(id, d) => write!(f, "delete real server {} of {}", show_rs(d), show(id)),
        }
    }
}

/// `198.19.0.10:80/TCP`, as `status` shows frontends.
pub fn show(id: &ServiceId) -> String {
    let proto = proto_of(id).map_or_else(|| format!("proto {}", id.protocol), |p| p.to_string());
    match id.addr {
        IpAddr::V4(a) => format!("{a}:{}/{proto}", id.port),
        IpAddr::V6(a) => format!("[{a}]:{}/{proto}", id.port),
    }
}

pub fn show_rs(d: &Dest) -> String {
    match d.addr {
        IpAddr::V4(a) => format!("{a}:{}", d.port),
        IpAddr::V6(a) => format!("[{a}]:{}", d.port),
    }
}

fn dest(addr: IpAddr, port: u16, weight: u32) -> Dest {
    Dest { addr, port, weight, active_conns: 0, inactive_conns: 0 }
}

/// The operations that take `held` to `want` (either may be absent).
pub fn service_ops(held: Option<&Held>, want: Option<&VirtualService>) -> Vec<Op> {
    let mut ops = Vec::new();
    match (held, want) {
        (None, None) => {}
        (Some(h), None) => ops.push(Op::DelService(h.service.id)),
        (None, Some(w)) => {
            ops.push(Op::AddService(w.service.clone()));
            ops.extend(w.real_servers.iter().map(|(a, p)| Op::AddDest(w.service.id, dest(*a, *p, 1))));
        }
        (Some(h), Some(w)) => {
            let id = w.service.id;
            if h.service != w.service {
                ops.push(Op::UpdateService(w.service.clone()));
            }
            for (a, p) in &w.real_servers {
                match h.dests.get(&(*a, *p)) {
                    Some(d) if d.weight == 1 => {}
                    // Draining (weight 0) or weighted by hand: back to 1.
                    Some(_) => ops.push(Op::SetDest(id, dest(*a, *p, 1))),
                    None => ops.push(Op::AddDest(id, dest(*a, *p, 1))),
                }
            }
            for (rs, d) in &h.dests {
                if w.real_servers.contains(rs) || d.weight == 0 {
                    continue;
                }
                if id.protocol == u16::from(Proto::Tcp.number()) {
                    ops.push(Op::SetDest(id, dest(rs.0, rs.1, 0)));
                } else {
                    ops.push(Op::DelDest(id, dest(rs.0, rs.1, 0)));
                }
            }
        }
    }
    ops
}

/// Draining real servers (weight 0, not wanted) whose connections are all
/// gone: delete them. `dests` carries fresh counters from the kernel.
pub fn drained(id: &ServiceId, dests: &[Dest], want: Option<&VirtualService>) -> Vec<Op> {
    dests
        .iter()
        .filter(|d| d.weight == 0 && !want.is_some_and(|w| w.real_servers.contains(&(d.addr, d.port))))
        .filter(|d| d.active_conns == 0 && d.inactive_conns == 0)
        .map(|d| Op::DelDest(*id, dest(d.addr, d.port, 0)))
        .collect()
}

/// Applies one operation to the kernel's state as cached.
pub fn record(held: &mut BTreeMap<ServiceId, Held>, op: &Op, external: bool) {
    match op {
        Op::AddService(s) | Op::UpdateService(s) => {
            let h = held.entry(s.id).or_insert_with(|| Held { service: s.clone(), dests: BTreeMap::new(), external });
            h.service = s.clone();
        }
        Op::DelService(id) => {
            held.remove(id);
        }
        Op::AddDest(id, d) | Op::SetDest(id, d) => {
            if let Some(h) = held.get_mut(id) {
                h.dests.insert((d.addr, d.port), *d);
            }
        }
        Op::DelDest(id, d) => {
            if let Some(h) = held.get_mut(id) {
                h.dests.remove(&(d.addr, d.port));
            }
        }
    }
}

/// The virtual services a diff touches.
pub fn touched(diff: &Diff) -> BTreeSet<ServiceId> {
    diff.frontends_changed
        .iter()
        .map(|c| service_id(&c.key))
        .chain(diff.frontends_removed.iter().map(|(k, _)| service_id(k)))
        .collect()
}

/// The planner's view after `diff` (as [`crate::dataplane::MemoryDataplane`] keeps it).
pub fn apply_to(p: &mut Programmed, diff: &Diff) {
    for (id, addr) in &diff.backends_added {
        p.backends.insert(*id, *addr);
    }
    for c in &diff.frontends_changed {
        p.frontends.insert(c.key, c.new.clone());
    }
    for (key, _) in &diff.frontends_removed {
        p.frontends.remove(key);
    }
    for (id, _) in &diff.backends_removed {
        p.backends.remove(id);
    }
}

/// Whether `addr` must be bound on the dummy interface: some virtual service
/// uses it and it is not one of the node's own addresses.
pub fn wants_binding(held: &BTreeMap<ServiceId, Held>, addr: IpAddr, s: &Settings) -> bool {
    if s.node_ips.contains(&addr) {
        return false;
    }
    let lo = ServiceId { addr, port: 0, protocol: 0 };
    let hi = ServiceId { addr, port: u16::MAX, protocol: u16::MAX };
    held.range(lo..=hi).next().is_some()
}

/// The planner's view of what the kernel holds, for adoption after a
/// restart. `ours` says which virtual services this dataplane made (their
/// address is on the dummy interface or is a node address). Backend and
/// revnat ids are assigned afresh in address order (the planner only needs
/// them stable from here on); draining real servers are left out, so the
/// planner never asks for them again.
pub fn adopt(held: &BTreeMap<ServiceId, Held>, on_dummy: &BTreeSet<IpAddr>, s: &Settings) -> Programmed {
    let mut p = Programmed::default();
    let mut ids: BTreeMap<BackendAddr, BackendId> = BTreeMap::new();
    let mut all = BTreeSet::new();
    for (id, h) in held {
        let Some(proto) = proto_of(id) else { continue };
        for d in h.dests.values().filter(|d| d.weight > 0) {
            all.insert(BackendAddr { addr: d.addr, port: d.port, proto });
        }
    }
    for (i, b) in all.into_iter().enumerate() {
        let id = BackendId::try_from(i + 1).unwrap_or(BackendId::MAX);
        ids.insert(b, id);
        p.backends.insert(id, b);
    }
    let mut revnat = 0;
    for (id, h) in held {
        let Some(proto) = proto_of(id) else { continue };
        let scope = if on_dummy.contains(&id.addr) {
            Scope::Cluster
        } else if s.node_ips.contains(&id.addr) {
            Scope::External
        } else {
            continue;
        };
        revnat += 1;
        let slots = h
            .dests
            .values()
            .filter(|d| d.weight > 0)
            .filter_map(|d| ids.get(&BackendAddr { addr: d.addr, port: d.port, proto }).copied())
            .collect();
        let affinity_timeout = (h.service.flags & IP_VS_SVC_F_PERSISTENT != 0).then_some(h.service.timeout);
        p.frontends.insert(
            FrontendKey { addr: id.addr, port: id.port, proto, scope },
            ProgrammedFrontend { revnat_id: revnat, slots, affinity_timeout },
        );
    }
    p
}

/// Whether a held virtual service is this dataplane's.
pub fn is_ours(id: &ServiceId, on_dummy: &BTreeSet<IpAddr>, s: &Settings) -> bool {
    proto_of(id).is_some() && (on_dummy.contains(&id.addr) || s.node_ips.contains(&id.addr))
}

// ---- nftables: a table of our own with sets of VIP:port, as kube-proxy's ipsets ----

pub const NFT_TABLE: &str = "sluice-ipvs";
/// kube-proxy's masquerade mark.
pub const MASQ_MARK: u32 = 0x4000;

fn proto_word(protocol: u16) -> &'static str {
    if protocol == u16::from(Proto::Udp.number()) {
        "udp"
    } else {
        "tcp"
    }
}

/// `198.19.0.10 . tcp . 80`, or `None` for IPv6 (the table is IPv4 only).
pub fn vs_element(id: &ServiceId) -> Option<String> {
    match id.addr {
        IpAddr::V4(a) => Some(format!("{a} . {} . {}", proto_word(id.protocol), id.port)),
        IpAddr::V6(_) => None,
    }
}

/// `198.18.1.10 . tcp . 8080 . 198.18.1.10`: a pod reaching itself through a VIP.
pub fn loopback_element(b: &BackendAddr) -> Option<String> {
    match b.addr {
        IpAddr::V4(a) => Some(format!("{a} . {} . {} . {a}", proto_word(u16::from(b.proto.number())), b.port)),
        IpAddr::V6(_) => None,
    }
}

/// Which set a virtual service's element belongs in.
pub fn vs_set(external: bool) -> &'static str {
    if external {
        "external"
    } else {
        "cluster-ips"
    }
}

/// The whole table, replaced atomically (at start and after a failed update).
pub fn nft_table(held: &BTreeMap<ServiceId, Held>, backends: &BTreeMap<BackendId, BackendAddr>, s: &Settings) -> String {
    let elems = |items: Vec<String>| {
        if items.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", items.join(", "))
        }
    };
    let cluster: Vec<String> = held.iter().filter(|(_, h)| !h.external).filter_map(|(id, _)| vs_element(id)).collect();
    let external: Vec<String> = held.iter().filter(|(_, h)| h.external).filter_map(|(id, _)| vs_element(id)).collect();
    let loopback: Vec<String> = backends.values().filter_map(loopback_element).collect();
    let cidr_rule = s.cluster_cidr.map_or(String::new(), |c| {
        format!("    ip daddr . meta l4proto . th dport @cluster-ips ip saddr != {c} meta mark set meta mark | {MASQ_MARK:#x}\n")
    });
    let mark_rules =
        format!("    ip daddr . meta l4proto . th dport @external meta mark set meta mark | {MASQ_MARK:#x}\n{cidr_rule}");
    format!(
        "table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n\
         \x20 set cluster-ips {{ type ipv4_addr . inet_proto . inet_service;{} }}\n\
         \x20 set external {{ type ipv4_addr . inet_proto . inet_service;{} }}\n\
         \x20 set loopback {{ type ipv4_addr . inet_proto . inet_service . ipv4_addr;{} }}\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n{mark_rules}  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n{mark_rules}  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n\
         \x20   meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark & {:#x} masquerade\n\
         \x20   ip daddr . meta l4proto . th dport . ip saddr @loopback masquerade\n  }}\n}}\n",
        elems(cluster),
        elems(external),
        elems(loopback),
        !MASQ_MARK,
    )
}

/// Incremental set updates, one line each.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NftDelta {
    pub lines: Vec<String>,
}

impl NftDelta {
    pub fn add(&mut self, set: &str, elem: Option<String>) {
        if let Some(e) = elem {
            self.lines.push(format!("add element ip {NFT_TABLE} {set} {{ {e} }}"));
        }
    }
    pub fn delete(&mut self, set: &str, elem: Option<String>) {
        if let Some(e) = elem {
            self.lines.push(format!("delete element ip {NFT_TABLE} {set} {{ {e} }}"));
        }
    }
    pub fn script(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
}

/// Set changes for one virtual service going from `before` (membership
/// held, if any) to `after`.
pub fn vs_nft(delta: &mut NftDelta, id: &ServiceId, before: Option<bool>, after: Option<bool>) {
    if before == after {
        return;
    }
    if let Some(ext) = before {
        delta.delete(vs_set(ext), vs_element(id));
    }
    if let Some(ext) = after {
        delta.add(vs_set(ext), vs_element(id));
    }
}

/// Set changes for the backends a diff adds and removes (the loopback set
/// holds every backend in use, which is exactly the planner's backends).
pub fn backend_nft(delta: &mut NftDelta, diff: &Diff) {
    for (_, b) in &diff.backends_added {
        delta.add("loopback", loopback_element(b));
    }
    for (_, b) in &diff.backends_removed {
        delta.delete("loopback", loopback_element(b));
    }
}

#[cfg(test)]
mod tests;
