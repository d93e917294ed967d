//! The pure record model: a cluster [`Snapshot`] in, the answer to any
//! question about the cluster zone out. No I/O here; every rule of the
//! Kubernetes DNS specification (schema 1.1.0) and the CoreDNS behaviours
//! that fill its gaps are decided in this module and pinned by its tests.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use hickory_proto::rr::{
    rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT},
    DNSClass, LowerName, Name, RData, Record, RecordType,
};
use hickory_proto::op::ResponseCode;
use k8s_openapi::api::core::v1::Service;
use sluice_k8s::EndpointSlice;
use sluice_k8s::{semantics, ObjectKey, Snapshot};

/// The schema version answered at `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// How many CNAMEs are chased inside the zone before giving up.
const MAX_CNAME_CHAIN: usize = 8;

/// Whether `a-b-c-d.<ns>.pod.<zone>` names are answered (CoreDNS `pods`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PodsMode {
    /// Answer any well-formed dashed address without checking it (CoreDNS `pods insecure`).
    Insecure,
    /// No pod records: such names do not exist (CoreDNS `pods disabled`).
    Disabled,
}

/// What the model is built with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster zone, lower case and fully qualified (`cluster.local.`).
    pub zone: Name,
    /// TTL of every record of the zone, and the SOA minimum (negative TTL).
    pub ttl: u32,
    pub pods: PodsMode,
    /// The Service whose ClusterIPs are the zone's name server address (`ns.dns.<zone>`).
    pub dns_service: ObjectKey,
}

impl Config {
    /// A configuration for `zone` with CoreDNS's defaults (TTL 5, pods insecure, kube-system/kube-dns).
    ///
    /// # Errors
    /// When `zone` is not a valid domain name.
    pub fn new(zone: &str) -> Result<Self, crate::Error> {
        Ok(Self {
            zone: parse_fqdn(zone).map_err(|e| crate::Error::Config(format!("zone {zone:?}: {e}")))?,
            ttl: 5,
            pods: PodsMode::Insecure,
            dns_service: ObjectKey::new("kube-system", "kube-dns"),
        })
    }
}

/// A domain name from text, lower-cased and made fully qualified.
///
/// # Errors
/// When the text is not a valid domain name.
pub fn parse_fqdn(text: &str) -> Result<Name, hickory_proto::ProtoError> {
    let mut name = Name::from_ascii(text)?.to_lowercase();
    name.set_fqdn(true);
    Ok(name)
}

/// The model's answer for one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The name is the cluster's: this is the authoritative answer.
    Authoritative(Answer),
    /// The name is in the cluster zone but no full sync has happened yet.
    NotSynced,
    /// Not the cluster's name: forward it.
    NotInZone,
}

/// The sections of a response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The last CNAME of the answer points outside the zone: its target still
    /// has to be resolved upstream and appended (ExternalName Services).
    pub external_target: Option<Name>,
}

impl Answer {
    /// An empty answer with `rcode`.
    pub fn error(rcode: ResponseCode) -> Self {
        Self { rcode, ..Self::default() }
    }
}

/// Records at one owner name. An empty list is an empty non-terminal: the
/// name exists (NODATA for every type), it just owns nothing.
#[derive(Clone, Debug, Default)]
struct Node {
    records: Vec<Record>,
}

/// Records one Service contributes. Built once per (Service, slices) and
/// reused while their allocations stay the same.
#[derive(Debug, Default)]
struct ServiceRecords {
    records: Vec<Record>,
    /// Empty non-terminals (`_tcp.<svc>...`) and record-less Services.
    names: Vec<Name>,
}

#[derive(Default)]
struct MemoEntry {
    service: usize,
    slices: Vec<usize>,
    records: Arc<ServiceRecords>,
}

/// Keeps per-Service records between rebuilds so a snapshot where one Service
/// changed costs one Service's work plus the merge.
#[derive(Default)]
pub struct Memo {
    services: HashMap<ObjectKey, MemoEntry>,
    serial: u32,
}

/// The whole cluster zone (and the reverse names of its addresses) at one moment.
#[derive(Debug)]
pub struct ClusterModel {
    zone: LowerName,
    zone_labels: u8,
    svc: LowerName,
    pod: LowerName,
    pods: PodsMode,
    ttl: u32,
    synced: bool,
    soa: Record,
    names: HashMap<LowerName, Node>,
}

fn rec(name: &Name, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name.clone(), ttl, data)
}

fn child(parent: &Name, label: &str) -> Option<Name> {
    parent.prepend_label(label).ok()
}

fn addr_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => rec(name, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => rec(name, ttl, RData::AAAA(AAAA(v6))),
    }
}

/// The label CoreDNS gives an endpoint without a hostname: its address with
/// `.` or `:` replaced by `-`.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address a pod label (`198-18-0-5`, `2001-db8--5`) spells, if any.
pub fn undash(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
            return Some(IpAddr::V4(v4));
        }
    }
    label.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// Splits 100 between `n` records of equal priority, as CoreDNS does.
fn srv_weight(n: usize) -> u16 {
    let n = n.max(1) as f64;
    ((100.0 / n) + 0.5).floor().max(1.0) as u16
}

fn service_records(
    key: &ObjectKey,
    svc: &Service,
    slices: &[&EndpointSlice],
    zone: &Name,
    ttl: u32,
) -> ServiceRecords {
    let mut out = ServiceRecords::default();
    let Some(base) = child(zone, "svc")
        .and_then(|n| child(&n, &key.namespace))
        .and_then(|n| child(&n, &key.name))
        .map(|n| n.to_lowercase())
    else {
        tracing::warn!(service = %key, "skipped Service: its name is not a valid DNS label");
        return out;
    };
    out.names.push(base.clone());
    let Some(spec) = svc.spec.as_ref() else { return out };

    if spec.type_.as_deref() == Some("ExternalName") {
        match spec.external_name.as_deref().map(parse_fqdn) {
            Some(Ok(target)) => out.records.push(rec(&base, ttl, RData::CNAME(CNAME(target)))),
            Some(Err(e)) => tracing::warn!(service = %key, error = %e, "skipped externalName: not a domain name"),
            None => tracing::warn!(service = %key, "ExternalName Service without spec.externalName"),
        }
        return out;
    }

    // (srv owner, priority-less SRV data) collected first so weights can be split.
    let mut srvs: Vec<(Name, u16, Name)> = Vec::new();
    let port_owner = |out: &mut ServiceRecords, name: Option<&str>, proto: &str| -> Option<Name> {
        let name = name.filter(|n| !n.is_empty())?;
        let proto_name = child(&base, &format!("_{}", proto.to_ascii_lowercase()))?;
        out.names.push(proto_name.clone());
        child(&proto_name, &format!("_{}", name.to_ascii_lowercase()))
    };

    if semantics::is_headless(svc) {
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        let mut seen: HashSet<(IpAddr, String)> = HashSet::new();
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            for ep in &slice.endpoints {
                if !(publish_not_ready || semantics::is_ready(ep)) {
                    continue;
                }
                for addr in &ep.addresses {
                    let Some(ip) = addr.ip() else {
                        tracing::warn!(service = %key, address = %addr, "skipped endpoint address: not an IP");
                        continue;
                    };
                    let label = ep
                        .hostname
                        .as_deref()
                        .filter(|h| !h.is_empty())
                        .map_or_else(|| dashed(ip), str::to_ascii_lowercase);
                    if !seen.insert((ip, label.clone())) {
                        continue;
                    }
                    let Some(host) = child(&base, &label) else {
                        tracing::warn!(service = %key, hostname = %label, "skipped endpoint: hostname is not a DNS label");
                        continue;
                    };
                    out.records.push(addr_record(&base, ttl, ip));
                    out.records.push(addr_record(&host, ttl, ip));
                    out.records.push(rec(&Name::from(ip), ttl, RData::PTR(PTR(host.clone()))));
                    for port in slice.ports.iter().flatten() {
                        let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else { continue };
                        let proto = semantics::endpoint_port_protocol(port);
                        if let Some(owner) = port_owner(&mut out, port.name.as_deref(), proto) {
                            srvs.push((owner, number, host.clone()));
                        }
                        srvs.push((base.clone(), number, host.clone()));
                    }
                }
            }
        }
    } else {
        let ips: Vec<IpAddr> = semantics::cluster_ips(svc).iter().filter_map(|ip| ip.parse().ok()).collect();
        for ip in &ips {
            out.records.push(addr_record(&base, ttl, *ip));
            out.records.push(rec(&Name::from(*ip), ttl, RData::PTR(PTR(base.clone()))));
        }
        if !ips.is_empty() {
            for port in spec.ports.iter().flatten() {
                let Ok(number) = u16::try_from(port.port) else { continue };
                let proto = semantics::service_port_protocol(port);
                if let Some(owner) = port_owner(&mut out, port.name.as_deref(), proto) {
                    srvs.push((owner, number, base.clone()));
                }
                srvs.push((base.clone(), number, base.clone()));
            }
        }
    }

    let mut per_owner: HashMap<&Name, usize> = HashMap::new();
    for (owner, _, _) in &srvs {
        *per_owner.entry(owner).or_default() += 1;
    }
    for (owner, port, target) in &srvs {
        let weight = srv_weight(per_owner[owner]);
        out.records.push(rec(owner, ttl, RData::SRV(SRV::new(0, weight, *port, target.clone()))));
    }
    // One endpoint address under two hostnames, one port number for TCP and
    // UDP: the same record twice. Keep the first (the model relies on it).
    let keep: Vec<bool> = {
        let mut seen: HashSet<(&Name, &RData)> = HashSet::with_capacity(out.records.len());
        out.records.iter().map(|r| seen.insert((&r.name, &r.data))).collect()
    };
    let mut keep = keep.into_iter();
    out.records.retain(|_| keep.next().unwrap_or(true));
    out
}

impl ClusterModel {
    /// The model of `snapshot`. `memo` carries per-Service work between calls.
    pub fn build(snapshot: &Snapshot, cfg: &Config, memo: &mut Memo) -> Self {
        let zone = cfg.zone.clone();
        let ttl = cfg.ttl;
        let mut names: HashMap<LowerName, Node> = HashMap::new();
        let add = |names: &mut HashMap<LowerName, Node>, r: Record| {
            let node = names.entry(LowerName::new(&r.name)).or_default();
            if !node.records.contains(&r) {
                node.records.push(r);
            }
        };
        let ent = |names: &mut HashMap<LowerName, Node>, n: &Name| {
            names.entry(LowerName::new(n)).or_default();
        };

        // Serial: the build time, strictly increasing across rebuilds.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        memo.serial = now.max(memo.serial.wrapping_add(1));

        let ns_host = child(&zone, "dns").and_then(|n| child(&n, "ns")).unwrap_or_else(|| zone.clone());
        let hostmaster = child(&zone, "hostmaster").unwrap_or_else(|| zone.clone());
        let soa = rec(
            &zone,
            ttl,
            RData::SOA(SOA::new(ns_host.clone(), hostmaster, memo.serial, 7200, 1800, 86400, ttl)),
        );
        add(&mut names, soa.clone());
        add(&mut names, rec(&zone, ttl, RData::NS(NS(ns_host.clone()))));
        if let Some(v) = child(&zone, "dns-version") {
            add(&mut names, rec(&v, ttl, RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()]))));
        }
        ent(&mut names, &ns_host);
        if let Some(svc) = snapshot.services.get(&cfg.dns_service) {
            for ip in semantics::cluster_ips(svc).iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                add(&mut names, addr_record(&ns_host, ttl, ip));
            }
        }
        let svc_zone = child(&zone, "svc").unwrap_or_else(|| zone.clone());
        let pod_zone = child(&zone, "pod").unwrap_or_else(|| zone.clone());
        ent(&mut names, &svc_zone);
        ent(&mut names, &pod_zone);

        let namespaces = snapshot.namespaces.keys().chain(snapshot.services.keys().map(|k| &k.namespace));
        for ns in namespaces {
            if let Some(n) = child(&svc_zone, ns) {
                ent(&mut names, &n.to_lowercase());
            }
            if cfg.pods != PodsMode::Disabled {
                if let Some(n) = child(&pod_zone, ns) {
                    ent(&mut names, &n.to_lowercase());
                }
            }
        }

        let mut memo_next = HashMap::with_capacity(snapshot.services.len());
        for (key, svc) in &snapshot.services {
            let slices: Vec<&Arc<EndpointSlice>> = snapshot.slices_of(key).collect();
            let svc_ptr = Arc::as_ptr(svc) as usize;
            let slice_ptrs: Vec<usize> = slices.iter().map(|s| Arc::as_ptr(s) as usize).collect();
            let records = match memo.services.remove(key) {
                Some(m) if m.service == svc_ptr && m.slices == slice_ptrs => m.records,
                _ => {
                    let plain: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
                    Arc::new(service_records(key, svc, &plain, &zone, ttl))
                }
            };
            for n in &records.names {
                ent(&mut names, n);
            }
            for r in &records.records {
                if r.record_type() == RecordType::PTR {
                    // Reverse names are the only owners two Services can share.
                    add(&mut names, r.clone());
                } else {
                    // Owned by this Service alone and unique within it
                    // (service_records deduplicates endpoints): no linear
                    // search, which made a 10,000-endpoint Service quadratic.
                    names.entry(LowerName::new(&r.name)).or_default().records.push(r.clone());
                }
            }
            memo_next.insert(key.clone(), MemoEntry { service: svc_ptr, slices: slice_ptrs, records });
        }
        memo.services = memo_next;

        // Every name between an owner and the apex exists (an empty
        // non-terminal): NODATA, never NXDOMAIN (RFC 8020: a resolver may
        // drop the whole subtree below an NXDOMAIN).
        let zone_lower = LowerName::new(&zone);
        let zone_labels = zone.num_labels();
        let mut missing: Vec<LowerName> = Vec::new();
        for name in names.keys().filter(|n| n.num_labels() > zone_labels + 1 && zone_lower.zone_of(n)) {
            let mut parent = name.base_name();
            while parent.num_labels() > zone_labels && !names.contains_key(&parent) {
                missing.push(parent.clone());
                parent = parent.base_name();
            }
        }
        for n in missing {
            names.entry(n).or_default();
        }

        Self {
            zone: LowerName::new(&zone),
            zone_labels: zone.num_labels(),
            svc: LowerName::new(&svc_zone),
            pod: LowerName::new(&pod_zone),
            pods: cfg.pods,
            ttl,
            synced: snapshot.synced,
            soa,
            names,
        }
    }

    /// The model before any snapshot: every cluster name is SERVFAIL.
    pub fn unsynced(cfg: &Config) -> Self {
        let mut m = Self::build(&Snapshot::default(), cfg, &mut Memo::default());
        m.synced = false;
        m
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Whether `name` is in the cluster zone.
    pub fn in_zone(&self, name: &LowerName) -> bool {
        self.zone.zone_of(name)
    }

    /// Number of owner names (for logs and metrics).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Answers `qtype` at `qname`; `original` is the name as the client spelt
    /// it, used as the owner of records owned by the question name.
    pub fn lookup(&self, qname: &LowerName, original: &Name, qtype: RecordType, qclass: DNSClass) -> Lookup {
        self.lookup_limited(qname, original, qtype, qclass, usize::MAX)
    }

    /// [`Self::lookup`] copying at most `max_records` records into each
    /// section: a caller that can send only so many bytes passes what surely
    /// overflows them (its limit / 12, the smallest record's size), so a name
    /// with 10,000 addresses costs a UDP query a hundred copies, not 10,000.
    pub fn lookup_limited(&self, qname: &LowerName, original: &Name, qtype: RecordType, qclass: DNSClass, max_records: usize) -> Lookup {
        let in_zone = self.in_zone(qname);
        if !in_zone {
            // Reverse names of cluster addresses are ours; other reverse names fall through.
            if matches!(qtype, RecordType::PTR | RecordType::ANY) && self.synced {
                if let Some(node) = self.names.get(qname) {
                    let answers = node
                        .records
                        .iter()
                        .filter(|r| r.record_type() == RecordType::PTR)
                        .map(|r| with_owner(r, original))
                        .collect::<Vec<_>>();
                    if !answers.is_empty() {
                        return Lookup::Authoritative(Answer {
                            authoritative: true,
                            answers,
                            ..Answer::default()
                        });
                    }
                }
            }
            return Lookup::NotInZone;
        }
        if !self.synced {
            return Lookup::NotSynced;
        }
        if qclass != DNSClass::IN && qclass != DNSClass::ANY {
            return Lookup::Authoritative(Answer::error(ResponseCode::Refused));
        }
        let mut ans = Answer { authoritative: true, ..Answer::default() };
        let mut owner_name: Name = original.clone();
        let mut owner: LowerName = qname.clone();
        let mut chased = 0;
        loop {
            let Some(records) = self.records_at(&owner) else {
                if chased == 0 {
                    ans.rcode = ResponseCode::NXDomain;
                }
                break;
            };
            let records = records.as_ref();
            let cname = records.iter().find(|r| r.record_type() == RecordType::CNAME);
            match cname {
                Some(c) if !matches!(qtype, RecordType::CNAME | RecordType::ANY) => {
                    ans.answers.push(with_owner(c, &owner_name));
                    let RData::CNAME(CNAME(target)) = &c.data else { unreachable!("filtered on CNAME") };
                    chased += 1;
                    let target_lower = LowerName::new(target);
                    if !self.zone.zone_of(&target_lower) {
                        ans.external_target = Some(target.clone());
                        return Lookup::Authoritative(ans);
                    }
                    if chased > MAX_CNAME_CHAIN {
                        break;
                    }
                    owner_name = target.clone();
                    owner = target_lower;
                }
                _ => {
                    // ANY gets one RRset, the first the name owns (RFC 8482).
                    let wanted = if qtype == RecordType::ANY { records.first().map(Record::record_type) } else { Some(qtype) };
                    let room = max_records.saturating_sub(ans.answers.len());
                    ans.answers.extend(
                        records
                            .iter()
                            .filter(|r| Some(r.record_type()) == wanted)
                            .take(room)
                            .map(|r| with_owner(r, &owner_name)),
                    );
                    break;
                }
            }
        }
        if ans.answers.is_empty() {
            ans.authorities.push(self.soa.clone());
        } else if qtype == RecordType::SRV || qtype == RecordType::ANY {
            self.add_srv_targets(&mut ans, max_records);
        }
        Lookup::Authoritative(ans)
    }

    /// Records at a zone name: stored ones, or synthesised pod records.
    fn records_at(&self, name: &LowerName) -> Option<std::borrow::Cow<'_, [Record]>> {
        if let Some(node) = self.names.get(name) {
            return Some(std::borrow::Cow::Borrowed(&node.records));
        }
        // `<dashed-ip>.<ns>.pod.<zone>`: exactly two labels below pod.<zone>.
        if self.pods == PodsMode::Insecure
            && name.num_labels() == self.zone_labels + 3
            && self.pod.zone_of(name)
        {
            let n: Name = name.into();
            let label = n.iter().next().and_then(|l| std::str::from_utf8(l).ok())?;
            let ip = undash(label)?;
            return Some(std::borrow::Cow::Owned(vec![addr_record(&n, self.ttl, ip)]));
        }
        None
    }

    /// Puts the addresses of SRV targets in the additional section.
    fn add_srv_targets(&self, ans: &mut Answer, max_records: usize) {
        let mut done: HashSet<LowerName> = HashSet::new();
        for r in &ans.answers {
            if ans.additionals.len() >= max_records {
                break;
            }
            let RData::SRV(srv) = &r.data else { continue };
            let target = LowerName::new(&srv.target);
            if !done.insert(target.clone()) {
                continue;
            }
            if let Some(node) = self.names.get(&target) {
                ans.additionals.extend(
                    node.records
                        .iter()
                        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
                        .cloned(),
                );
            }
        }
    }

    /// The SOA of the zone (authority of negative answers).
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// `svc.<zone>`.
    pub fn svc_zone(&self) -> &LowerName {
        &self.svc
    }
}

fn with_owner(r: &Record, owner: &Name) -> Record {
    let mut r = r.clone();
    r.name = owner.clone();
    r
}

#[cfg(test)]
mod tests;
