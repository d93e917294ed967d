//! Connected UDP sockets stay pinned to the backend their `connect()` was
//! translated to: socket LB rewrote the destination once, so a DNS client
//! would keep talking to a pod that left the Service. After a diff drops a
//! UDP backend from a frontend, the agent destroys (SOCK_DESTROY) the
//! connected UDP sockets that were load-balanced through that frontend to
//! that backend; the client sees `ECONNABORTED` and reconnects through the
//! VIP, which picks a live backend.
//!
//! Pure part: [`stale_udp_backends`] (which backends each diff made stale,
//! for which frontends) and [`should_destroy`] (does one socket qualify).
//! Thin edges: [`pod_netns`] (the network namespaces of the processes in the
//! attached cgroup, and those the container runtime keeps in a netns
//! directory) and [`destroy_stale_udp`] (a sock_diag dump and SOCK_DESTROY
//! per namespace, on a dedicated thread that enters each one).
//!
//! Privileges. Both ways of destroying a socket are scoped to one network
//! namespace: sock_diag answers for the namespace its netlink socket was
//! created in, and the `bpf_sock_destroy` kfunc runs only in `iter/udp`
//! programs, whose iterator walks the namespace of the process that created
//! it. So reaching a pod's sockets means entering its namespace (`setns`),
//! which needs CAP_SYS_ADMIN; no combination of BPF, NET_ADMIN, PERFMON and
//! SYS_RESOURCE can do it. Finding the namespaces through `/proc/PID/ns/net`
//! needs the host PID namespace and CAP_SYS_PTRACE as well, while the
//! runtime's netns directory (`--netns-dir /var/run/netns`, mounted
//! read-only) needs neither. The DaemonSet grants SYS_ADMIN and mounts that
//! directory; [`startup_warnings`] says at start when this cannot work.
//!
//! Which frontend a socket came through is what the socket LB recorded for
//! `getpeername()` (socket cookie + backend -> revnat id); a socket the LB
//! never translated (a pod talking to another pod's address directly) is
//! left alone.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};
use tracing::{debug, info, warn};

use crate::{
    model::Proto,
    plan::{BackendId, Diff, Programmed, RevNatId},
};

/// A UDP backend that the frontends with these revnat ids stopped using.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleUdp {
    pub backend: SocketAddr,
    pub frontends: BTreeSet<RevNatId>,
}

/// The UDP backends `diff` took out of frontends (a slot dropped, or the
/// whole frontend removed), each with the frontends that dropped it.
/// `after` is the programmed state once `diff` is committed; backends the
/// diff removed entirely are named by the diff itself.
pub fn stale_udp_backends(diff: &Diff, after: &Programmed) -> Vec<StaleUdp> {
    let removed: BTreeMap<BackendId, _> = diff.backends_removed.iter().map(|(id, a)| (*id, *a)).collect();
    let addr_of = |id: &BackendId| removed.get(id).or_else(|| after.backends.get(id)).copied();
    let mut stale: BTreeMap<SocketAddr, BTreeSet<RevNatId>> = BTreeMap::new();
    let mut note = |ids: &mut dyn Iterator<Item = &BackendId>, revnat: RevNatId| {
        for id in ids {
            if let Some(b) = addr_of(id).filter(|b| b.proto == Proto::Udp) {
                stale.entry(SocketAddr::new(b.addr, b.port)).or_default().insert(revnat);
            }
        }
    };
    for c in &diff.frontends_changed {
        let Some(old) = &c.old else { continue };
        let kept: HashSet<&BackendId> = c.new.slots.iter().collect();
        note(&mut old.slots.iter().filter(|id| !kept.contains(id)), old.revnat_id);
    }
    for (_, old) in &diff.frontends_removed {
        note(&mut old.slots.iter(), old.revnat_id);
    }
    stale.into_iter().map(|(backend, frontends)| StaleUdp { backend, frontends }).collect()
}

/// Which frontend (revnat id) the socket LB translated a socket's
/// `connect()` through, if it did.
pub trait SockOrigin {
    fn frontend_of(&self, cookie: u64, backend: SocketAddr) -> Option<RevNatId>;
}

/// A connected UDP socket as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSock {
    pub cookie: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// True when `sock` was load-balanced to a stale backend through a frontend
/// that dropped it.
pub fn should_destroy(sock: &UdpSock, stale: &BTreeMap<SocketAddr, &StaleUdp>, origin: &dyn SockOrigin) -> bool {
    let remote = SocketAddr::new(sock.remote.ip().to_canonical(), sock.remote.port());
    let Some(s) = stale.get(&remote) else { return false };
    origin.frontend_of(sock.cookie, remote).is_some_and(|fe| s.frontends.contains(&fe))
}

/// Reads the socket LB's per-socket records from the pinned maps under `bpffs`.
pub struct PinnedSockOrigin {
    v4: aya::maps::HashMap<aya::maps::MapData, proxy_common::SockRevNatKey4, proxy_common::SockRevNat>,
    v6: aya::maps::HashMap<aya::maps::MapData, proxy_common::SockRevNatKey6, proxy_common::SockRevNat>,
}

impl PinnedSockOrigin {
    pub fn open(bpffs: &Path) -> Result<Self, aya::maps::MapError> {
        use aya::maps::{HashMap, Map, MapData};
        use proxy_common::maps::{SOCK_REVNAT4, SOCK_REVNAT6};
        let open = |name: &str| MapData::from_pin(bpffs.join(name)).map(Map::LruHashMap);
        Ok(Self { v4: HashMap::try_from(open(SOCK_REVNAT4)?)?, v6: HashMap::try_from(open(SOCK_REVNAT6)?)? })
    }
}

impl SockOrigin for PinnedSockOrigin {
    fn frontend_of(&self, cookie: u64, backend: SocketAddr) -> Option<RevNatId> {
        // Same layout as the eBPF side writes: address and port in network order.
        let port = backend.port().to_be();
        let hit = match backend.ip() {
            IpAddr::V4(a) => self
                .v4
                .get(&proxy_common::SockRevNatKey4 { cookie, addr: u32::from_ne_bytes(a.octets()), port, _pad: 0 }, 0),
            IpAddr::V6(a) => {
                self.v6.get(&proxy_common::SockRevNatKey6 { cookie, addr: a.octets(), port, _pad: [0; 6] }, 0)
            }
        };
        hit.ok().map(|v| v.revnat_id)
    }
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub namespaces: usize,
    pub destroyed: usize,
    pub errors: Vec<String>,
}

/// Capability numbers (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Whether this process has `cap` in its effective set (`CapEff` of /proc/self/status).
pub fn has_cap(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|s| cap_eff(&s)).is_some_and(|eff| eff >> cap & 1 == 1)
}

fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// What keeps the sweep from working with this process's privileges and
/// settings, one line each (the agent logs them at warn level at start).
pub fn startup_warnings(netns_dirs: &[PathBuf]) -> Vec<String> {
    warnings_for(has_cap(CAP_SYS_ADMIN), has_cap(CAP_SYS_PTRACE), netns_dirs, |d| std::fs::read_dir(d).err())
}

fn warnings_for(
    sys_admin: bool,
    sys_ptrace: bool,
    netns_dirs: &[PathBuf],
    unreadable: impl Fn(&Path) -> Option<io::Error>,
) -> Vec<String> {
    let mut out = Vec::new();
    if !sys_admin {
        out.push(
            "connected UDP sockets of removed backends cannot be destroyed: entering a pod's network namespace \
             needs CAP_SYS_ADMIN, which this process lacks; clients keep sending to a removed UDP backend until \
             they reconnect on their own. Grant SYS_ADMIN (the shipped DaemonSet does)"
                .to_owned(),
        );
    }
    if netns_dirs.is_empty() && !sys_ptrace {
        out.push(
            "pods' network namespaces are looked up only through /proc/PID/ns/net, which needs the host PID \
             namespace and CAP_SYS_PTRACE: give --netns-dir with the container runtime's netns directory \
             (usually /var/run/netns) so connected UDP sockets of removed backends can be destroyed"
                .to_owned(),
        );
    }
    for dir in netns_dirs {
        if let Some(e) = unreadable(dir) {
            out.push(format!("--netns-dir {}: {e}: pods' network namespaces there cannot be swept", dir.display()));
        }
    }
    out
}

/// Netns directories given on the command line, set once by the binary
/// before the agent starts (read by every sweep).
static NETNS_DIRS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// Where [`after_apply`]'s sweeps also look for pod network namespaces.
pub fn set_netns_dirs(dirs: Vec<PathBuf>) {
    let _ = NETNS_DIRS.set(dirs);
}

/// Most cgroup directories and processes one sweep looks at (bounded work
/// even on a node with a runaway cgroup tree).
const MAX_CGROUP_DIRS: usize = 100_000;
const MAX_DEPTH: usize = 32;

/// One path per distinct network namespace among the processes of `cgroup`
/// and its descendants (`/proc/PID/ns/net`) and the namespaces bind-mounted
/// in `netns_dirs`.
pub fn pod_netns(cgroup: &Path, netns_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut pids = Vec::new();
    let mut stack = vec![(cgroup.to_path_buf(), 0usize)];
    let mut dirs = 0;
    while let Some((dir, depth)) = stack.pop() {
        dirs += 1;
        if dirs > MAX_CGROUP_DIRS {
            warn!(cgroup = %cgroup.display(), "cgroup tree too large; sweeping part of it");
            break;
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if depth < MAX_DEPTH {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                stack.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| (e.path(), depth + 1)));
            }
        }
    }
    let mut denied = 0usize;
    let mut candidates: Vec<PathBuf> = Vec::new();
    for pid in pids {
        candidates.push(PathBuf::from(format!("/proc/{pid}/ns/net")));
    }
    let from_proc = candidates.len();
    for dir in netns_dirs {
        match std::fs::read_dir(dir) {
            Ok(rd) => candidates.extend(rd.flatten().map(|e| e.path())),
            Err(e) => warn!(dir = %dir.display(), error = %e, "cannot list the netns directory"),
        }
    }
    let found: Vec<_> = candidates
        .into_iter()
        .enumerate()
        .filter_map(|(i, path)| {
            use std::os::unix::fs::MetadataExt as _;
            match std::fs::metadata(&path) {
                Ok(meta) => Some(((meta.dev(), meta.ino()), path)),
                // A process that exited meanwhile is simply skipped.
                Err(e) => {
                    if i < from_proc && e.kind() == io::ErrorKind::PermissionDenied {
                        denied += 1;
                    }
                    None
                }
            }
        })
        .collect();
    if denied > 0 {
        warn!(
            denied,
            "cannot open the network namespace of pod processes through /proc (needs CAP_SYS_PTRACE): give --netns-dir"
        );
    }
    distinct_namespaces(found)
}

/// Keeps the first path of every namespace identity (device, inode).
fn distinct_namespaces(found: impl IntoIterator<Item = ((u64, u64), PathBuf)>) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    found.into_iter().filter(|(id, _)| seen.insert(*id)).map(|(_, p)| p).collect()
}

/// Destroys, in every network namespace with a process in `cgroup`, the
/// connected UDP sockets [`should_destroy`] selects. Blocks; runs the
/// namespace switching on a thread of its own.
pub fn destroy_stale_udp(cgroup: &Path, stale: &[StaleUdp], origin: &(dyn SockOrigin + Sync)) -> Sweep {
    let mut sweep = Sweep::default();
    if stale.is_empty() {
        return sweep;
    }
    let by_backend: BTreeMap<SocketAddr, &StaleUdp> = stale.iter().map(|s| (s.backend, s)).collect();
    let families: BTreeSet<u8> =
        stale.iter().map(|s| if s.backend.is_ipv4() { AF_INET } else { AF_INET6 }).collect();
    let namespaces = pod_netns(cgroup, NETNS_DIRS.get().map_or(&[][..], Vec::as_slice));
    sweep.namespaces = namespaces.len();
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let mut destroyed = 0;
            let mut errors = Vec::new();
            for ns in &namespaces {
                match sweep_netns(ns, &families, &by_backend, origin) {
                    Ok(n) => destroyed += n,
                    Err(e) => errors.push(format!("{}: {e}", ns.display())),
                }
            }
            (destroyed, errors)
        });
        match worker.join() {
            Ok((d, e)) => {
                sweep.destroyed = d;
                sweep.errors = e;
            }
            Err(_) => sweep.errors.push("the socket sweep thread panicked".into()),
        }
    });
    sweep
}

/// Enters `ns` (this thread only: the caller's thread is dedicated) and
/// destroys what qualifies there.
fn sweep_netns(
    ns: &Path,
    families: &BTreeSet<u8>,
    stale: &BTreeMap<SocketAddr, &StaleUdp>,
    origin: &dyn SockOrigin,
) -> io::Result<usize> {
    let file = File::open(ns)?;
    // SAFETY: setns(2) on a namespace fd we hold; it changes only the calling
    // thread, which exists for this sweep alone.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // A netlink socket belongs to the namespace it is created in.
    let mut nl = Socket::new(NETLINK_SOCK_DIAG)?;
    nl.bind_auto()?;
    nl.connect(&NlAddr::new(0, 0))?;
    let mut destroyed = 0;
    for &family in families {
        for sock in dump_connected_udp(&nl, family)? {
            if !should_destroy(&sock, stale, origin) {
                continue;
            }
            match destroy(&nl, family, &sock) {
                Ok(()) => {
                    destroyed += 1;
                    debug!(local = %sock.local, remote = %sock.remote, ns = %ns.display(), "destroyed connected UDP socket");
                }
                // Closed between the dump and now: nothing left to do.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(destroyed)
}

fn request(family: u8, socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        // Connected UDP sockets are in TCP_ESTABLISHED.
        states: StateFlags::ESTABLISHED,
        socket_id,
    })
}

fn send<T>(nl: &Socket, flags: u16, payload: T) -> io::Result<()>
where
    T: NetlinkSerializable,
    NetlinkPayload<T>: From<T>,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    nl.send(&buf, 0)?;
    Ok(())
}

/// Bound on reply datagrams per request (a namespace with a million UDP sockets still ends).
const MAX_REPLIES: usize = 1 << 16;

fn dump_connected_udp(nl: &Socket, family: u8) -> io::Result<Vec<UdpSock>> {
    let wildcard = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    send(nl, NLM_F_REQUEST | NLM_F_DUMP, request(family, wildcard))?;
    let mut out = Vec::new();
    for _ in 0..MAX_REPLIES {
        let (buf, _) = nl.recv_from_full()?;
        let mut offset = 0;
        while offset < buf.len() {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    if id.destination_port != 0 {
                        out.push(UdpSock {
                            cookie: cookie(&id.cookie),
                            local: SocketAddr::new(id.source_address, id.source_port),
                            remote: SocketAddr::new(id.destination_address, id.destination_port),
                        });
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
        }
    }
    Err(io::Error::other("sock_diag dump did not end"))
}

fn destroy(nl: &Socket, family: u8, sock: &UdpSock) -> io::Result<()> {
    let mut id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    id.source_address = sock.local.ip();
    id.source_port = sock.local.port();
    id.destination_address = sock.remote.ip();
    id.destination_port = sock.remote.port();
    let c = sock.cookie;
    // Two native-endian u32 halves, low first, as the kernel writes them.
    let halves = [((c & 0xffff_ffff) as u32).to_ne_bytes(), ((c >> 32) as u32).to_ne_bytes()];
    id.cookie[..4].copy_from_slice(&halves[0]);
    id.cookie[4..].copy_from_slice(&halves[1]);
    send(nl, NLM_F_REQUEST | NLM_F_ACK, SockDiagDestroy::new(request(family, id)))?;
    for _ in 0..MAX_REPLIES {
        let (buf, _) = nl.recv_from_full()?;
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if let NetlinkPayload::Error(e) = msg.payload {
            return match e.code {
                None => Ok(()),
                Some(_) => Err(e.to_io()),
            };
        }
    }
    Err(io::Error::other("no acknowledgement for SOCK_DESTROY"))
}

fn cookie(raw: &[u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let hi = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    u64::from(lo) | (u64::from(hi) << 32)
}

/// The reconciler hook: after every applied diff, sweep for the UDP
/// backends it made stale, on a thread of its own so the loop never waits
/// on it. Needs the pinned socket-LB maps under `bpffs`.
pub fn after_apply(cgroup: PathBuf, bpffs: PathBuf) -> impl FnMut(&Diff, &Programmed) + Send + 'static {
    move |diff, after| {
        let stale = stale_udp_backends(diff, after);
        if stale.is_empty() {
            return;
        }
        let (cgroup, bpffs) = (cgroup.clone(), bpffs.clone());
        let spawned = std::thread::Builder::new().name("sock-destroy".into()).spawn(move || {
            let origin = match PinnedSockOrigin::open(&bpffs) {
                Ok(o) => o,
                Err(e) => {
                    warn!(error = %e, "cannot read the socket LB's records; connected UDP sockets not swept");
                    return;
                }
            };
            let sweep = destroy_stale_udp(&cgroup, &stale, &origin);
            for e in &sweep.errors {
                warn!(error = %e, "destroying connected UDP sockets");
            }
            let backends: Vec<String> = stale.iter().map(|s| s.backend.to_string()).collect();
            if sweep.destroyed > 0 {
                info!(destroyed = sweep.destroyed, namespaces = sweep.namespaces, ?backends, "destroyed connected UDP sockets of removed backends");
            } else {
                debug!(namespaces = sweep.namespaces, ?backends, "no connected UDP socket to destroy");
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the UDP socket sweep");
        }
    }
}

#[cfg(test)]
mod tests;
