//! The kernel side of the external path: attaching the tc (and bind4)
//! programs, writing what [`crate::external`] computes into the maps the tc
//! program reads (Maglev tables, source ranges, guarded NodePorts, the node
//! settings), conntrack garbage collection, and the health-check servers of
//! `externalTrafficPolicy: Local` Services.
//!
//! Frontends and backends themselves go through the planner like every
//! other frontend; this module only reads their ids back from the services
//! map, once per changed frontend.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    ffi::CStr,
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, Map, MapData, MapError},
    programs::{
        links::FdLink, ProgramFd, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};
use proxy_common::{
    external as names, CtEntry4, CtKey4, ExternalConfig as CfgValue, MaglevKey, NodePortBindKey, ServiceKey4,
    ServiceValue, SourceRangeKey4, Backend4, EXT_F_PEER_REDIRECT, LB_MAGLEV, LB_RANDOM, SCOPE_EXTERNAL, SOURCE_RANGE_ALLOW,
    SOURCE_RANGE_DENY,
};
use sluice_node::tc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use crate::{
    ebpf::{Error, Result},
    external::{health_response, maglev_table, ExternalConfig, ExternalExtras, HealthCheck, LbAlgorithm},
    model::FrontendKey,
    sys,
};

/// Idle timeouts of external flows.
pub const TCP_TIMEOUT_S: u32 = 21_600;
pub const UDP_TIMEOUT_S: u32 = 60;

/// How often idle conntrack entries are swept (the LRU also evicts under
/// pressure).
pub const GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Where and how to attach the external programs.
#[derive(Clone, Debug, Default)]
pub struct ExternalAttach {
    /// Interfaces facing clients outside the cluster (and other nodes).
    pub interfaces: Vec<String>,
    /// Attach the XDP fast path too (native mode only; tc alone where the
    /// driver has none).
    pub xdp: bool,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Link { path: path.into(), source: std::io::Error::other(e.to_string()) }
}

/// Loads the tc programs and the bind4 hook and attaches them (TCX links,
/// pinned under `links`), or swaps them into the links a previous agent
/// pinned, as the socket programs are.
pub fn attach(bpf: &mut Ebpf, links: &Path, cgroup_dir: &File, opts: &ExternalAttach) -> Result<()> {
    for (name, kind) in [(names::PROG_TC_INGRESS, TcAttachType::Ingress), (names::PROG_TC_EGRESS, TcAttachType::Egress)] {
        let prog: &mut SchedClassifier = bpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })?;
        prog.load().map_err(|source| Error::Program { name, source })?;
        // TCX links pinned (or swapped behind a predecessor's pin), or legacy
        // cls_bpf filters replaced in place on kernels without TCX; all or none.
        let targets: Vec<(&str, PathBuf)> =
            opts.interfaces.iter().map(|i| (i.as_str(), links.join(format!("{name}@{i}")))).collect();
        let slot = if name == names::PROG_TC_INGRESS { tc::slots::PROXY_TC_INGRESS } else { tc::slots::PROXY_TC_EGRESS };
        tc::attach_persistent(prog, kind, &targets, sluice_node::KernelFeatures::get().tc_mode(), slot)
            .map_err(|e| io_err(links, e))?;
    }
    if opts.xdp {
        attach_xdp(bpf, links, &opts.interfaces)?;
    } else {
        // A previous agent's XDP links: unpinned, they detach.
        for ifname in &opts.interfaces {
            let pin = links.join(format!("{}@{ifname}", names::PROG_XDP));
            if pin.exists() {
                std::fs::remove_file(&pin).map_err(|source| Error::Link { path: pin.clone(), source })?;
                info!(interface = %ifname, "XDP fast path off: detached");
            }
        }
    }
    crate::ebpf::attach_cgroup_program(bpf, names::PROG_BIND4, cgroup_dir, links)?;
    Ok(())
}

/// When a previous agent pinned a link at `pin`, points it at `fd` (the
/// program just loaded) and says so: traffic never sees a detached moment.
fn swap_pinned_link(pin: &Path, fd: &ProgramFd) -> Result<bool> {
    if !pin.exists() {
        return Ok(false);
    }
    let link = sys::obj_get(pin).map_err(|source| Error::Link { path: pin.into(), source })?;
    sys::link_update(link.as_fd(), fd.as_fd()).map_err(|source| Error::Link { path: pin.into(), source })?;
    Ok(true)
}

/// The XDP fast path in native (driver) mode on every interface that
/// supports it, pinned like the tc links; where the driver refuses, a
/// warning and tc alone (generic XDP would only add a pass before tc).
fn attach_xdp(bpf: &mut Ebpf, links: &Path, interfaces: &[String]) -> Result<()> {
    let name = names::PROG_XDP;
    let prog: &mut Xdp =
        bpf.program_mut(name).ok_or(Error::MissingProgram(name))?.try_into().map_err(|source| Error::Program { name, source })?;
    prog.load().map_err(|source| Error::Program { name, source })?;
    for ifname in interfaces {
        let pin = links.join(format!("{name}@{ifname}"));
        if swap_pinned_link(&pin, prog.fd().map_err(|source| Error::Program { name, source })?)? {
            debug!(program = name, interface = %ifname, "replaced program behind pinned XDP link");
            continue;
        }
        match prog.attach(ifname, XdpMode::Driver) {
            Ok(id) => {
                let link = prog.take_link(id).map_err(|source| Error::Program { name, source })?;
                let link = FdLink::try_from(link).map_err(|e| io_err(&pin, e))?;
                link.pin(&pin).map_err(|e| io_err(&pin, e))?;
                info!(program = name, interface = %ifname, "attached (native XDP) and pinned");
            }
            Err(e) => warn!(interface = %ifname, error = %e, "no native XDP on this interface; tc alone serves it"),
        }
    }
    Ok(())
}

/// Pinned link names of the external programs under `links` (for cleanup).
pub fn pinned_links(links: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(links) {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(names::PROG_TC_INGRESS)
                || n.starts_with(names::PROG_TC_EGRESS)
                || n.starts_with(&format!("{}@", names::PROG_XDP))
                || n == names::PROG_BIND4
            {
                out.push(e.path());
            }
        }
    }
    out
}

fn pinned(bpffs: &Path, name: &'static str) -> Result<MapData> {
    MapData::from_pin(bpffs.join(name)).map_err(|source| Error::Map { name, source })
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn v4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// A frontend's Maglev table as written: the backend ids behind it and the
/// table itself.
struct WrittenTable {
    revnat_id: u32,
    backends: Vec<(u32, Backend4Key)>,
    table: Vec<u32>,
}

type Backend4Key = (u32, u16);

/// The external maps, opened from their pins, and what was last written.
pub struct ExternalMaps {
    svc4: HashMap<MapData, ServiceKey4, ServiceValue>,
    be4: HashMap<MapData, u32, Backend4>,
    ct4: HashMap<MapData, CtKey4, CtEntry4>,
    maglev: HashMap<MapData, MaglevKey, u32>,
    ranges: LpmTrie<MapData, SourceRangeKey4, u32>,
    bind: HashMap<MapData, NodePortBindKey, u32>,
    external_ips: HashMap<MapData, u32, u32>,
    config: Array<MapData, CfgValue>,
    cfg: ExternalConfig,
    tables: BTreeMap<FrontendKey, WrittenTable>,
    written_ranges: BTreeSet<(u32, u32, u32)>,
}

impl ExternalMaps {
    /// Opens the pinned maps and writes the node settings (turning the tc
    /// path on).
    pub fn open(bpffs: &Path, cfg: &ExternalConfig, peer_redirect: bool) -> Result<Self> {
        use proxy_common::maps as base;
        let hash = |name: &'static str| -> Result<MapData> { pinned(bpffs, name) };
        let mut me = Self {
            svc4: HashMap::try_from(Map::HashMap(hash(base::SERVICES4)?)).map_err(|source| Error::Map { name: base::SERVICES4, source })?,
            be4: HashMap::try_from(Map::HashMap(hash(base::BACKENDS4)?)).map_err(|source| Error::Map { name: base::BACKENDS4, source })?,
            ct4: HashMap::try_from(Map::LruHashMap(hash(names::CONNTRACK4)?)).map_err(|source| Error::Map { name: names::CONNTRACK4, source })?,
            maglev: HashMap::try_from(Map::HashMap(hash(names::MAGLEV4)?)).map_err(|source| Error::Map { name: names::MAGLEV4, source })?,
            ranges: LpmTrie::try_from(Map::LpmTrie(hash(names::SOURCE_RANGES4)?)).map_err(|source| Error::Map { name: names::SOURCE_RANGES4, source })?,
            bind: HashMap::try_from(Map::HashMap(hash(names::NODEPORT_BIND)?)).map_err(|source| Error::Map { name: names::NODEPORT_BIND, source })?,
            external_ips: HashMap::try_from(Map::HashMap(hash(names::EXTERNAL_IPS4)?)).map_err(|source| Error::Map { name: names::EXTERNAL_IPS4, source })?,
            config: Array::try_from(Map::Array(hash(names::CONFIG)?)).map_err(|source| Error::Map { name: names::CONFIG, source })?,
            cfg: cfg.clone(),
            tables: BTreeMap::new(),
            written_ranges: BTreeSet::new(),
        };
        // Adopt what a previous agent wrote, so stale entries get removed.
        for k in me.ranges.keys().flatten() {
            let d = k.data();
            me.written_ranges.insert((d.revnat_id, k.prefix_len(), d.addr));
        }
        let value = CfgValue {
            host_netns_cookie: netns_cookie().unwrap_or_else(|e| {
                warn!(error = %e, "reading the host netns cookie failed; NodePort bind() guard off");
                u64::MAX
            }),
            lb_algorithm: match cfg.lb_algorithm {
                LbAlgorithm::Random => LB_RANDOM,
                LbAlgorithm::Maglev => LB_MAGLEV,
            },
            maglev_size: cfg.maglev_size,
            tcp_timeout: TCP_TIMEOUT_S,
            udp_timeout: UDP_TIMEOUT_S,
            enabled: 1,
            flags: if peer_redirect { EXT_F_PEER_REDIRECT } else { 0 },
        };
        me.config.set(0, value, 0).map_err(|source| Error::Map { name: names::CONFIG, source })?;
        Ok(me)
    }

    fn frontend_ids(&self, fk: &FrontendKey) -> Option<(u32, Vec<(u32, Backend4Key)>)> {
        let IpAddr::V4(a) = fk.addr else { return None };
        let mut key = ServiceKey4 { addr: v4(a), port: fk.port.to_be(), proto: fk.proto.number(), scope: SCOPE_EXTERNAL, slot: 0, _pad: 0 };
        let head = self.svc4.get(&key, 0).ok()?;
        let mut out = Vec::with_capacity(head.count as usize);
        for slot in 1..=head.count {
            key.slot = slot as u16;
            let Ok(v) = self.svc4.get(&key, 0) else { continue };
            let Ok(b) = self.be4.get(&v.backend_id, 0) else { continue };
            out.push((v.backend_id, (b.addr, b.port)));
        }
        // Names, not ids, decide the table: ids differ between nodes.
        out.sort_by_key(|(_, k)| (u32::from_be(k.0), u16::from_be(k.1)));
        Some((head.revnat_id, out))
    }

    /// Writes Maglev tables, source ranges and guarded NodePorts for `extras`
    /// (after the planner has programmed the frontends).
    pub fn sync(&mut self, extras: &ExternalExtras) -> Result<()> {
        // Maglev tables.
        let maglev = self.cfg.lb_algorithm == LbAlgorithm::Maglev;
        let size = self.cfg.maglev_size;
        let mut seen = BTreeSet::new();
        for fk in extras.frontends.keys() {
            let Some((revnat_id, backends)) = self.frontend_ids(fk) else { continue };
            seen.insert(*fk);
            if !maglev {
                continue;
            }
            if self.tables.get(fk).is_some_and(|t| t.revnat_id == revnat_id && t.backends == backends) {
                continue;
            }
            let names: Vec<Vec<u8>> = backends
                .iter()
                .map(|(_, (a, p))| format!("{}:{}", Ipv4Addr::from(a.to_ne_bytes()), u16::from_be(*p)).into_bytes())
                .collect();
            let table: Vec<u32> = if names.is_empty() {
                Vec::new()
            } else {
                maglev_table(&names, size).into_iter().map(|i| backends[i].0).collect()
            };
            let old = self.tables.remove(fk).filter(|t| t.revnat_id == revnat_id);
            let mut writes = 0usize;
            for (i, id) in table.iter().enumerate() {
                if old.as_ref().and_then(|o| o.table.get(i)) == Some(id) {
                    continue;
                }
                self.maglev
                    .insert(MaglevKey { revnat_id, index: i as u32 }, id, 0)
                    .map_err(|source| Error::Map { name: names::MAGLEV4, source })?;
                writes += 1;
            }
            if table.is_empty() {
                for i in 0..size {
                    ignore_missing(self.maglev.remove(&MaglevKey { revnat_id, index: i }))
                        .map_err(|source| Error::Map { name: names::MAGLEV4, source })?;
                }
            }
            debug!(frontend = %fk, writes, "maglev table written");
            self.tables.insert(*fk, WrittenTable { revnat_id, backends, table });
        }
        let gone: Vec<FrontendKey> = self.tables.keys().filter(|k| !seen.contains(k)).copied().collect();
        for fk in gone {
            if let Some(t) = self.tables.remove(&fk) {
                for i in 0..t.table.len() {
                    ignore_missing(self.maglev.remove(&MaglevKey { revnat_id: t.revnat_id, index: i as u32 }))
                        .map_err(|source| Error::Map { name: names::MAGLEV4, source })?;
                }
            }
        }

        // Source ranges: (revnat id, prefix length, address).
        let mut want: BTreeMap<(u32, u32, u32), u32> = BTreeMap::new();
        for (fk, ranges) in &extras.frontends {
            if ranges.is_empty() {
                continue;
            }
            let Some((revnat_id, _)) = self.frontend_ids(fk) else { continue };
            want.insert((revnat_id, 32, 0), SOURCE_RANGE_DENY);
            for r in ranges {
                let net = v4(r.network());
                want.insert((revnat_id, 32 + u32::from(r.prefix()), net), SOURCE_RANGE_ALLOW);
            }
        }
        for (&(revnat_id, plen, addr), v) in &want {
            let key = LpmKey::new(plen, SourceRangeKey4 { revnat_id, addr });
            self.ranges.insert(&key, v, 0).map_err(|source| Error::Map { name: names::SOURCE_RANGES4, source })?;
        }
        let stale: Vec<(u32, u32, u32)> = self.written_ranges.iter().filter(|k| !want.contains_key(k)).copied().collect();
        for (revnat_id, plen, addr) in stale {
            let key = LpmKey::new(plen, SourceRangeKey4 { revnat_id, addr });
            ignore_missing(self.ranges.remove(&key)).map_err(|source| Error::Map { name: names::SOURCE_RANGES4, source })?;
        }
        self.written_ranges = want.keys().copied().collect();

        // NodePorts no host socket may bind.
        let want: Vec<NodePortBindKey> = extras
            .node_ports
            .iter()
            .map(|(p, proto)| NodePortBindKey { port: p.to_be(), proto: proto.number(), _pad: 0 })
            .collect();
        let have: Vec<NodePortBindKey> = self.bind.keys().flatten().collect();
        for k in &have {
            if !want.contains(k) {
                ignore_missing(self.bind.remove(k)).map_err(|source| Error::Map { name: names::NODEPORT_BIND, source })?;
            }
        }
        for k in &want {
            if !have.contains(k) {
                self.bind.insert(k, 1, 0).map_err(|source| Error::Map { name: names::NODEPORT_BIND, source })?;
            }
        }

        // LoadBalancer IPs and ExternalIPs that are not node addresses: the
        // tc program rejects what none of their frontends serves.
        let want: BTreeSet<u32> = extras
            .frontends
            .keys()
            .filter_map(|fk| match fk.addr {
                IpAddr::V4(a) if !self.cfg.node_ips.contains(&a) => Some(v4(a)),
                _ => None,
            })
            .collect();
        let have: BTreeSet<u32> = self.external_ips.keys().flatten().collect();
        for a in have.difference(&want) {
            ignore_missing(self.external_ips.remove(a)).map_err(|source| Error::Map { name: names::EXTERNAL_IPS4, source })?;
        }
        for a in want.difference(&have) {
            self.external_ips.insert(a, 1, 0).map_err(|source| Error::Map { name: names::EXTERNAL_IPS4, source })?;
        }
        Ok(())
    }

    /// Deletes conntrack entries idle longer than their protocol's timeout.
    /// Returns how many were removed.
    pub fn gc_conntrack(&mut self) -> usize {
        let now = monotonic_ns();
        let stale: Vec<CtKey4> = self
            .ct4
            .iter()
            .flatten()
            .filter(|(k, v)| {
                let t = if k.proto == proxy_common::PROTO_TCP { TCP_TIMEOUT_S } else { UDP_TIMEOUT_S };
                now.saturating_sub(v.last_seen_ns) > u64::from(t) * 1_000_000_000
            })
            .map(|(k, _)| k)
            .collect();
        let mut n = 0;
        for k in &stale {
            if self.ct4.remove(k).is_ok() {
                n += 1;
            }
        }
        n
    }
}

/// CLOCK_MONOTONIC in ns: what bpf_ktime_get_ns() returns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The cookie of the network namespace this process runs in.
pub fn netns_cookie() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket/getsockopt/close with valid pointers.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut v: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut v).cast(), &mut len);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(v)
    }
}

/// Whether `ifname` (in this network namespace) is a veth, by its driver
/// name (ETHTOOL_GDRVINFO; sysfs may show another namespace's devices).
pub fn is_veth(ifname: &str) -> bool {
    const ETHTOOL_GDRVINFO: u32 = 3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 4 * 5],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let bytes = ifname.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return false;
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 32 * 4 + 12 + 4 * 5] };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut info, _pad: [0; 16] };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a datagram socket for the ioctl, closed below; the request
    // points at live, correctly sized buffers.
    let ok = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &mut req);
        libc::close(fd);
        rc == 0
    };
    ok && info.driver.split(|b| *b == 0).next() == Some(b"veth")
}

/// IPv4 addresses of the named interfaces (for NodePorts when `--node-ip`
/// is not given).
pub fn interface_ipv4s(interfaces: &[String]) -> std::io::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur walks the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if !interfaces.iter().any(|i| *i == name) {
            continue;
        }
        // SAFETY: AF_INET addresses are sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    // SAFETY: freeing what getifaddrs allocated.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}

/// The health-check servers, one listener per healthCheckNodePort.
#[derive(Default)]
pub struct HealthServers {
    servers: StdHashMap<u16, (tokio::task::JoinHandle<()>, Arc<Mutex<HealthCheck>>)>,
}

impl HealthServers {
    /// Starts, updates and stops listeners to match `checks`. Must be called
    /// inside a tokio runtime.
    pub fn sync(&mut self, checks: &BTreeMap<u16, HealthCheck>) {
        self.servers.retain(|port, (task, _)| {
            let keep = checks.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, hc) in checks {
            if let Some((_, state)) = self.servers.get(port) {
                *state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = hc.clone();
                continue;
            }
            let listener = match std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, *port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
            {
                Ok(l) => l,
                Err(e) => {
                    warn!(port, service = %hc.service, error = %e, "cannot listen for the health check; will retry");
                    continue;
                }
            };
            let state = Arc::new(Mutex::new(hc.clone()));
            let s2 = state.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut conn, _)) = listener.accept().await else { continue };
                    let s3 = s2.clone();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.read(&mut buf)).await;
                        let hc = s3.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                        let (code, body) = health_response(&hc);
                        let reason = if code == 200 { "OK" } else { "Service Unavailable" };
                        let resp = format!(
                            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = conn.write_all(resp.as_bytes()).await;
                        let _ = conn.shutdown().await;
                    });
                }
            });
            info!(port, service = %hc.service, "health-check server listening");
            self.servers.insert(*port, (task, state));
        }
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for (task, _) in self.servers.values() {
            task.abort();
        }
    }
}

/// Everything the agent runs for external traffic.
pub struct ExternalRuntime {
    pub cfg: ExternalConfig,
    maps: ExternalMaps,
    health: HealthServers,
    warned: BTreeSet<String>,
}

impl ExternalRuntime {
    /// `interfaces`: where the tc programs are attached (when every one is
    /// a veth, packets bounced back out of one go straight to its peer).
    pub fn open(bpffs: &Path, cfg: ExternalConfig, interfaces: &[String]) -> Result<Self> {
        let peer_redirect = !interfaces.is_empty() && interfaces.iter().all(|i| is_veth(i));
        let maps = ExternalMaps::open(bpffs, &cfg, peer_redirect)?;
        info!(node_ips = ?cfg.node_ips, nodeport_ips = ?cfg.nodeport_ips(), algorithm = ?cfg.lb_algorithm, peer_redirect, "external datapath on");
        Ok(Self { cfg, maps, health: HealthServers::default(), warned: BTreeSet::new() })
    }

    /// Call after every successful reconcile of `snap`.
    pub fn after_reconcile(&mut self, snap: &sluice_k8s::Snapshot, node_name: &str) -> Result<()> {
        let node = crate::model::NodeInfo::from_snapshot(node_name, snap);
        let extras = ExternalExtras::compute(snap, &node, &self.cfg);
        for w in &extras.warnings {
            if self.warned.insert(w.clone()) {
                warn!("{w}");
            }
        }
        self.health.sync(&extras.health_checks);
        self.maps.sync(&extras)
    }

    pub fn gc(&mut self) -> usize {
        self.maps.gc_conntrack()
    }
}
