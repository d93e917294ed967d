//! The eBPF dataplane: loads the embedded programs, pins maps and links under
//! the bpffs directory, and applies diffs to the maps.
//!
//! Restart safety: maps are pinned by name, so a new agent reuses them; links
//! are pinned too, and a new agent swaps its programs in with BPF_LINK_UPDATE
//! instead of detaching and re-attaching, so no connect() is ever missed.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData, MapError},
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr, ProgramError},
    Ebpf, EbpfError, EbpfLoader,
};
use proxy_common::{
    maps as names, Backend4, Backend6, RevNat4, RevNat6, ServiceKey4, ServiceKey6, ServiceValue,
    BACKEND_ACTIVE, PROGRAMS, SVC_FLAG_AFFINITY,
};
use tracing::{debug, info, warn};

use crate::{
    dataplane::Dataplane,
    model::{BackendAddr, FrontendKey, Proto, Scope},
    plan::{Diff, Programmed, ProgrammedFrontend},
    sys,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-proxy-ebpf"));

/// The embedded eBPF object, for tests that load its programs themselves
/// (the `BPF_PROG_TEST_RUN` tests in `tests/tests/bpf_test_run.rs`).
pub fn object() -> &'static [u8] {
    OBJECT
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("preparing bpffs at {path}: {source}")]
    Bpffs { path: PathBuf, source: std::io::Error },
    #[error("opening cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("link {path}: {source}")]
    Link { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Map sizes (max entries), from the agent's flags.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// Frontends plus backend slots, per address family.
    pub services: u32,
    pub backends: u32,
    pub sock_revnat: u32,
    pub affinity: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self { services: 262_144, backends: 131_072, sock_revnat: 262_144, affinity: 65_536 }
    }
}

fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

pub struct EbpfDataplane {
    svc4: HashMap<MapData, ServiceKey4, ServiceValue>,
    svc6: HashMap<MapData, ServiceKey6, ServiceValue>,
    be4: HashMap<MapData, u32, Backend4>,
    be6: HashMap<MapData, u32, Backend6>,
    rnat4: HashMap<MapData, u32, RevNat4>,
    rnat6: HashMap<MapData, u32, RevNat6>,
    sizes: MapSizes,
    /// The kernel takes batched map updates (until one is refused).
    batch: bool,
}

/// Loads a cgroup sock_addr program and either swaps it into the link a
/// previous agent pinned (BPF_LINK_UPDATE: no gap) or attaches and pins it.
pub(crate) fn attach_cgroup_program(
    bpf: &mut Ebpf,
    name: &'static str,
    cgroup_dir: &File,
    links: &Path,
) -> Result<()> {
    let prog: &mut CgroupSockAddr = bpf
        .program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })?;
    prog.load().map_err(|source| Error::Program { name, source })?;
    let pin = links.join(name);
    let link_err = |e: &dyn std::fmt::Display| Error::Link { path: pin.clone(), source: std::io::Error::other(e.to_string()) };
    if pin.exists() {
        let link = sys::obj_get(&pin).map_err(|source| Error::Link { path: pin.clone(), source })?;
        let fd = prog.fd().map_err(|source| Error::Program { name, source })?;
        sys::link_update(link.as_fd(), fd.as_fd()).map_err(|source| Error::Link { path: pin.clone(), source })?;
        debug!(program = name, "replaced program behind pinned link");
    } else {
        // bpf_link attachments to cgroups are always multi; the flags must be 0.
        let id = prog
            .attach(cgroup_dir, CgroupAttachMode::Single)
            .map_err(|source| Error::Program { name, source })?;
        let link = prog.take_link(id).map_err(|source| Error::Program { name, source })?;
        let link = FdLink::try_from(link).map_err(|e| link_err(&e))?;
        link.pin(&pin).map_err(|e| link_err(&e))?;
        debug!(program = name, "attached and pinned");
    }
    Ok(())
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>> {
    let map = bpf.take_map(name).ok_or(Error::MissingMap(name))?;
    HashMap::try_from(map).map_err(|source| Error::Map { name, source })
}

fn pinned_hash<K: aya::Pod, V: aya::Pod>(
    bpffs: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>> {
    let data = MapData::from_pin(bpffs.join(name)).map_err(|source| Error::Map { name, source })?;
    HashMap::try_from(Map::HashMap(data)).map_err(|source| Error::Map { name, source })
}

impl EbpfDataplane {
    /// Loads the programs, reusing pinned maps, and attaches them to `cgroup`
    /// (or swaps them into the links a previous agent pinned).
    pub fn load(bpffs: &Path, cgroup: &Path, sizes: MapSizes) -> Result<Self> {
        Self::load_with(bpffs, cgroup, sizes, None)
    }

    /// [`EbpfDataplane::load`], plus the external path's programs (tc on
    /// `external.interfaces`, the NodePort bind4 guard) when given.
    pub fn load_with(
        bpffs: &Path,
        cgroup: &Path,
        sizes: MapSizes,
        external: Option<&crate::external_dp::ExternalAttach>,
    ) -> Result<Self> {
        sys::ensure_bpffs(bpffs).map_err(|source| Error::Bpffs { path: bpffs.into(), source })?;
        let links = links_dir(bpffs);
        std::fs::create_dir_all(&links).map_err(|source| Error::Bpffs { path: links.clone(), source })?;
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(bpffs)
            .map_max_entries(names::SERVICES4, sizes.services)
            .map_max_entries(names::SERVICES6, sizes.services)
            .map_max_entries(names::BACKENDS4, sizes.backends)
            .map_max_entries(names::BACKENDS6, sizes.backends)
            .map_max_entries(names::REVNAT4, sizes.services)
            .map_max_entries(names::REVNAT6, sizes.services)
            .map_max_entries(names::SOCK_REVNAT4, sizes.sock_revnat)
            .map_max_entries(names::SOCK_REVNAT6, sizes.sock_revnat)
            .map_max_entries(names::AFFINITY, sizes.affinity)
            .load(OBJECT)?;
        let cgroup_dir =
            File::open(cgroup).map_err(|source| Error::Cgroup { path: cgroup.into(), source })?;
        for name in PROGRAMS {
            attach_cgroup_program(&mut bpf, name, &cgroup_dir, &links)?;
        }
        info!(bpffs = %bpffs.display(), cgroup = %cgroup.display(), "socket load balancer attached");
        if let Some(ext) = external {
            crate::external_dp::attach(&mut bpf, &links, &cgroup_dir, ext)?;
        }
        Ok(Self {
            svc4: take_hash(&mut bpf, names::SERVICES4)?,
            svc6: take_hash(&mut bpf, names::SERVICES6)?,
            be4: take_hash(&mut bpf, names::BACKENDS4)?,
            be6: take_hash(&mut bpf, names::BACKENDS6)?,
            rnat4: take_hash(&mut bpf, names::REVNAT4)?,
            rnat6: take_hash(&mut bpf, names::REVNAT6)?,
            sizes,
            batch: true,
        })
    }

    /// Opens the pinned maps read-write without loading or attaching anything
    /// (for `status`).
    pub fn open_pinned(bpffs: &Path) -> Result<Self> {
        Ok(Self {
            svc4: pinned_hash(bpffs, names::SERVICES4)?,
            svc6: pinned_hash(bpffs, names::SERVICES6)?,
            be4: pinned_hash(bpffs, names::BACKENDS4)?,
            be6: pinned_hash(bpffs, names::BACKENDS6)?,
            rnat4: pinned_hash(bpffs, names::REVNAT4)?,
            rnat6: pinned_hash(bpffs, names::REVNAT6)?,
            sizes: MapSizes::default(),
            batch: true,
        })
    }

    pub fn sizes(&self) -> MapSizes {
        self.sizes
    }

    fn delete_slot(&mut self, key: &FrontendKey, slot: u16) -> Result<()> {
        let r = match key.addr {
            IpAddr::V4(a) => self.svc4.remove(&svc_key4(a, key, slot)),
            IpAddr::V6(a) => self.svc6.remove(&svc_key6(a, key, slot)),
        };
        ignore_missing(r).map_err(|source| Error::Map { name: names::SERVICES4, source })
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn svc_key4(a: Ipv4Addr, key: &FrontendKey, slot: u16) -> ServiceKey4 {
    ServiceKey4 {
        addr: u32::from_ne_bytes(a.octets()),
        port: key.port.to_be(),
        proto: key.proto.number(),
        scope: key.scope.number(),
        slot,
        _pad: 0,
    }
}

fn svc_key6(a: Ipv6Addr, key: &FrontendKey, slot: u16) -> ServiceKey6 {
    ServiceKey6 {
        addr: a.octets(),
        port: key.port.to_be(),
        proto: key.proto.number(),
        scope: key.scope.number(),
        slot,
        _pad: 0,
    }
}

fn frontend_value(f: &ProgrammedFrontend) -> ServiceValue {
    ServiceValue {
        backend_id: 0,
        count: f.slots.len() as u32,
        revnat_id: f.revnat_id,
        flags: if f.affinity_timeout.is_some() { SVC_FLAG_AFFINITY } else { 0 },
        affinity_timeout: f.affinity_timeout.unwrap_or(0),
        _pad: 0,
    }
}

fn slot_value(backend_id: u32) -> ServiceValue {
    ServiceValue { backend_id, ..Default::default() }
}

/// Map writes collected for one batch syscall.
struct Writes<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K, V> Default for Writes<K, V> {
    fn default() -> Self {
        Self { keys: Vec::new(), values: Vec::new() }
    }
}

impl<K: aya::Pod, V: aya::Pod> Writes<K, V> {
    fn push(&mut self, k: K, v: V) {
        self.keys.push(k);
        self.values.push(v);
    }

    /// Writes everything into `map`: one BPF_MAP_UPDATE_BATCH while the
    /// kernel takes them (`batch`), else one update per entry (and `batch`
    /// turns off for good).
    fn flush(self, map: &mut HashMap<MapData, K, V>, name: &'static str, batch: &mut bool) -> Result<()> {
        if self.keys.is_empty() {
            return Ok(());
        }
        if *batch {
            use aya::maps::IterableMap as _;
            match sys::map_update_batch(map.map().fd().as_fd(), &self.keys, &self.values) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) => {
                    warn!(map = name, error = %e, "batched map updates unavailable; writing entries one by one");
                    *batch = false;
                }
                Err(io_error) => {
                    return Err(Error::Map {
                        name,
                        source: MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_update_batch", io_error }),
                    })
                }
            }
        }
        for (k, v) in self.keys.iter().zip(&self.values) {
            map.insert(k, v, 0).map_err(|source| Error::Map { name, source })?;
        }
        Ok(())
    }
}

impl Dataplane for EbpfDataplane {
    type Error = Error;

    fn apply(&mut self, diff: &Diff) -> Result<()> {
        // Map writes go in batches (one syscall per map and phase), phase by
        // phase: backends, then reverse-NAT entries, then the slots of every
        // changed frontend, then their headers (which publish the counts),
        // then the trims. Per frontend that is the order a reader needs: it
        // never sees a count pointing past filled slots or at a missing
        // backend.
        let mut be4 = Writes::default();
        let mut be6 = Writes::default();
        for (id, be) in &diff.backends_added {
            match be.addr {
                IpAddr::V4(a) => be4.push(
                    *id,
                    Backend4 { addr: u32::from_ne_bytes(a.octets()), port: be.port.to_be(), proto: be.proto.number(), state: BACKEND_ACTIVE },
                ),
                IpAddr::V6(a) => be6.push(
                    *id,
                    Backend6 { addr: a.octets(), port: be.port.to_be(), proto: be.proto.number(), state: BACKEND_ACTIVE },
                ),
            }
        }
        be4.flush(&mut self.be4, names::BACKENDS4, &mut self.batch)?;
        be6.flush(&mut self.be6, names::BACKENDS6, &mut self.batch)?;

        let mut rnat4 = Writes::default();
        let mut rnat6 = Writes::default();
        let (mut slots4, mut slots6) = (Writes::default(), Writes::default());
        let (mut heads4, mut heads6) = (Writes::default(), Writes::default());
        for change in &diff.frontends_changed {
            let key = &change.key;
            if change.old.as_ref().is_none_or(|o| o.revnat_id != change.new.revnat_id) {
                match key.addr {
                    IpAddr::V4(a) => rnat4.push(
                        change.new.revnat_id,
                        RevNat4 { addr: u32::from_ne_bytes(a.octets()), port: key.port.to_be(), _pad: 0 },
                    ),
                    IpAddr::V6(a) => {
                        rnat6.push(change.new.revnat_id, RevNat6 { addr: a.octets(), port: key.port.to_be(), _pad: 0 })
                    }
                }
            }
            let old_slots = change.old.as_ref().map_or(&[][..], |o| &o.slots[..]);
            let head = change.old.as_ref().is_none_or(|o| frontend_value(o) != frontend_value(&change.new));
            match key.addr {
                IpAddr::V4(a) => {
                    for (i, id) in change.new.slots.iter().enumerate() {
                        if old_slots.get(i) != Some(id) {
                            slots4.push(svc_key4(a, key, (i + 1) as u16), slot_value(*id));
                        }
                    }
                    if head {
                        heads4.push(svc_key4(a, key, 0), frontend_value(&change.new));
                    }
                }
                IpAddr::V6(a) => {
                    for (i, id) in change.new.slots.iter().enumerate() {
                        if old_slots.get(i) != Some(id) {
                            slots6.push(svc_key6(a, key, (i + 1) as u16), slot_value(*id));
                        }
                    }
                    if head {
                        heads6.push(svc_key6(a, key, 0), frontend_value(&change.new));
                    }
                }
            }
        }
        rnat4.flush(&mut self.rnat4, names::REVNAT4, &mut self.batch)?;
        rnat6.flush(&mut self.rnat6, names::REVNAT6, &mut self.batch)?;
        slots4.flush(&mut self.svc4, names::SERVICES4, &mut self.batch)?;
        slots6.flush(&mut self.svc6, names::SERVICES6, &mut self.batch)?;
        heads4.flush(&mut self.svc4, names::SERVICES4, &mut self.batch)?;
        heads6.flush(&mut self.svc6, names::SERVICES6, &mut self.batch)?;
        for change in &diff.frontends_changed {
            let old_slots = change.old.as_ref().map_or(&[][..], |o| &o.slots[..]);
            for i in change.new.slots.len()..old_slots.len() {
                self.delete_slot(&change.key, (i + 1) as u16)?;
            }
        }
        for (key, old) in &diff.frontends_removed {
            self.delete_slot(key, 0)?;
            for i in 0..old.slots.len() {
                self.delete_slot(key, (i + 1) as u16)?;
            }
            let r = match key.addr {
                IpAddr::V4(_) => self.rnat4.remove(&old.revnat_id),
                IpAddr::V6(_) => self.rnat6.remove(&old.revnat_id),
            };
            ignore_missing(r).map_err(|source| Error::Map { name: names::REVNAT4, source })?;
        }
        for (id, be) in &diff.backends_removed {
            let r = match be.addr {
                IpAddr::V4(_) => self.be4.remove(id),
                IpAddr::V6(_) => self.be6.remove(id),
            };
            ignore_missing(r).map_err(|source| Error::Map { name: names::BACKENDS4, source })?;
        }
        Ok(())
    }

    fn programmed(&self) -> Result<Programmed> {
        let mut out = Programmed::default();
        let mut slots4 = std::collections::HashMap::new();
        for entry in self.svc4.iter() {
            let (k, v) = entry.map_err(|source| Error::Map { name: names::SERVICES4, source })?;
            let Some(proto) = Proto::from_number(k.proto) else { continue };
            let Some(scope) = Scope::from_number(k.scope) else { continue };
            let fk = FrontendKey {
                addr: IpAddr::V4(Ipv4Addr::from(k.addr.to_ne_bytes())),
                port: u16::from_be(k.port),
                proto,
                scope,
            };
            slots4.entry(fk).or_insert_with(Vec::new).push((k.slot, v));
        }
        for entry in self.svc6.iter() {
            let (k, v) = entry.map_err(|source| Error::Map { name: names::SERVICES6, source })?;
            let Some(proto) = Proto::from_number(k.proto) else { continue };
            let Some(scope) = Scope::from_number(k.scope) else { continue };
            let fk = FrontendKey {
                addr: IpAddr::V6(Ipv6Addr::from(k.addr)),
                port: u16::from_be(k.port),
                proto,
                scope,
            };
            slots4.entry(fk).or_insert_with(Vec::new).push((k.slot, v));
        }
        for (fk, mut entries) in slots4 {
            entries.sort_unstable_by_key(|(slot, _)| *slot);
            let Some((0, head)) = entries.first().copied() else {
                warn!(frontend = %fk, "slots without a frontend entry in the pinned map; they will be removed");
                // A frontend with an impossible count makes the planner rewrite it.
                out.frontends.insert(
                    fk,
                    ProgrammedFrontend {
                        revnat_id: 0,
                        slots: entries.iter().map(|(_, v)| v.backend_id).collect(),
                        affinity_timeout: None,
                    },
                );
                continue;
            };
            let slots: Vec<u32> = entries[1..]
                .iter()
                .filter(|(slot, _)| u32::from(*slot) <= head.count)
                .map(|(_, v)| v.backend_id)
                .collect();
            out.frontends.insert(
                fk,
                ProgrammedFrontend {
                    revnat_id: head.revnat_id,
                    slots,
                    affinity_timeout: (head.flags & SVC_FLAG_AFFINITY != 0).then_some(head.affinity_timeout),
                },
            );
        }
        for entry in self.be4.iter() {
            let (id, b) = entry.map_err(|source| Error::Map { name: names::BACKENDS4, source })?;
            let Some(proto) = Proto::from_number(b.proto) else { continue };
            out.backends.insert(
                id,
                BackendAddr { addr: IpAddr::V4(Ipv4Addr::from(b.addr.to_ne_bytes())), port: u16::from_be(b.port), proto },
            );
        }
        for entry in self.be6.iter() {
            let (id, b) = entry.map_err(|source| Error::Map { name: names::BACKENDS6, source })?;
            let Some(proto) = Proto::from_number(b.proto) else { continue };
            out.backends.insert(
                id,
                BackendAddr { addr: IpAddr::V6(Ipv6Addr::from(b.addr)), port: u16::from_be(b.port), proto },
            );
        }
        Ok(out)
    }
}

/// Removes every link and map Sluice pinned under `bpffs`: the programs detach
/// as their last reference goes. Returns the names removed.
pub fn remove_pinned(bpffs: &Path) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let links = links_dir(bpffs);
    for pin in crate::external_dp::pinned_links(&links) {
        match std::fs::remove_file(&pin) {
            Ok(()) => removed.push(format!("link {}", pin.file_name().unwrap_or_default().to_string_lossy())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    for name in PROGRAMS {
        let pin = links.join(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => removed.push(format!("link {name}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let _ = std::fs::remove_dir(&links);
    // Kernels without TCX: the external programs sit in legacy tc filters, which have no pins.
    let ext = [proxy_common::external::PROG_TC_INGRESS, proxy_common::external::PROG_TC_EGRESS];
    removed.extend((0..sluice_node::tc::detach_legacy_named(&ext)).map(|_| "legacy tc filter".to_string()));
    for name in names::ALL.into_iter().chain(proxy_common::external::MAPS) {
        match std::fs::remove_file(bpffs.join(name)) {
            Ok(()) => removed.push(format!("map {name}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}
