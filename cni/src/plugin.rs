//! The CNI plugin: ADD, DEL, CHECK, VERSION, GC and STATUS.
//!
//! Pods are routed, not bridged: each pod gets a veth whose host end carries
//! no address and a /32 (/128) route to the pod; inside the pod the default
//! route goes via the link-local gateway 169.254.1.1 (fe80::1), statically
//! resolved to the host end's fixed MAC. See cni/README.md for why.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    route::{RouteProtocol, RouteScope},
    AddressFamily,
};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::ipam::Store;
use crate::nl::{self, Netlink, NlError};
use crate::spec::{
    AddResult, Attachment, Code, Env, Error, Interface, IpConfig, NetConf, Result, Route, Version, VersionInfo,
    LATEST_VERSION, SUPPORTED_VERSIONS,
};
use crate::subnet::NodeSubnet;

/// MAC of every host-side pod veth; pods resolve their gateway to it statically.
pub const HOST_VETH_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];
/// The pods' IPv4 gateway: link-local, never assigned anywhere.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 gateway: link-local, never assigned anywhere.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Prefix of host-side veth names; the rest is a hash of (container id, ifname).
pub const HOST_VETH_PREFIX: &str = "sl";

/// What one invocation prints on stdout.
pub enum Output {
    Json(Value),
    Nothing,
}

fn internal(e: &NlError) -> Error {
    Error::new(Code::Internal, "kernel operation failed", e.to_string())
}

/// The host-side veth name of an attachment: deterministic, so DEL and GC
/// find it without any state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across builds and releases (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_VETH_PREFIX}{:012x}", h >> 16)
}

fn is_host_veth_name(name: &str) -> bool {
    name.len() == HOST_VETH_PREFIX.len() + 12
        && name.starts_with(HOST_VETH_PREFIX)
        && name[HOST_VETH_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The pod interface's MAC, derived from its address (locally administered
/// 0a:58 + IPv4), so it is known before the link exists.
pub fn pod_mac(ips: &[IpNetwork]) -> [u8; 6] {
    let tail = ips
        .iter()
        .find_map(|n| match n.ip() {
            IpAddr::V4(v4) => Some(v4.octets()),
            IpAddr::V6(_) => None,
        })
        .or_else(|| {
            ips.first().map(|n| match n.ip() {
                IpAddr::V6(v6) => {
                    let o = v6.octets();
                    [o[12], o[13], o[14], o[15]]
                }
                IpAddr::V4(v4) => v4.octets(),
            })
        })
        .unwrap_or([0, 0, 0, 1]);
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// Runs one plugin invocation: `env` from the process environment, `stdin` the config.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Output> {
    match env.command.as_str() {
        "VERSION" => {
            // The config may be just `{"cniVersion": ...}` or even empty.
            let asked = serde_json::from_slice::<Value>(stdin)
                .ok()
                .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned))
                .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
                .unwrap_or_else(|| LATEST_VERSION.to_owned());
            let info = VersionInfo {
                cni_version: asked,
                supported_versions: SUPPORTED_VERSIONS.iter().map(|s| (*s).to_owned()).collect(),
            };
            Ok(Output::Json(serde_json::to_value(info).expect("version info serialises")))
        }
        "" => Err(Error::new(Code::InvalidEnvironment, "missing required environment variables", "CNI_COMMAND")),
        cmd @ ("ADD" | "DEL" | "CHECK" | "GC" | "STATUS") => {
            let (conf, version) = NetConf::parse(stdin)?;
            let with_version = |e: Error| e.with_version(&conf.cni_version);
            let gated = matches!(cmd, "GC" | "STATUS");
            if gated && !version.at_least_1_1() {
                return Err(with_version(Error::new(
                    Code::IncompatibleVersion,
                    "incompatible CNI version",
                    format!("{cmd} needs cniVersion 1.1.0, the config says {}", conf.cni_version),
                )));
            }
            let out = match cmd {
                "ADD" => add(env, &conf, stdin).map(|r| {
                    Output::Json(serde_json::to_value(r.for_version(version, &conf.cni_version)).expect("serialises"))
                }),
                "DEL" => del(env, &conf, stdin).map(|()| Output::Nothing),
                "CHECK" => check(env, &conf, version, stdin).map(|()| Output::Nothing),
                "GC" => gc(env, &conf, stdin).map(|()| Output::Nothing),
                _ => status(&conf).map(|()| Output::Nothing),
            };
            out.map_err(with_version)
        }
        other => Err(Error::new(
            Code::InvalidEnvironment,
            "unknown CNI_COMMAND",
            format!("{other:?} is not one of ADD, DEL, CHECK, VERSION, GC, STATUS"),
        )),
    }
}

fn open_netns(path: &str) -> Result<File> {
    File::open(path).map_err(|e| Error::new(Code::InvalidEnvironment, "cannot open CNI_NETNS", format!("{path}: {e}")))
}

/// The node subnet published by the daemon, if any.
fn node_subnet(conf: &NetConf) -> Result<Option<NodeSubnet>> {
    NodeSubnet::read(Path::new(conf.subnet_file())).map_err(|e| {
        Error::new(Code::Io, "cannot read the node subnet file", format!("{}: {e}", conf.subnet_file()))
    })
}

/// The MTU of the interface holding the host's default route (no encapsulation assumed).
fn underlay_mtu(host: &mut Netlink) -> Option<u32> {
    let routes = host.routes(AddressFamily::Inet).ok()?;
    let oif = routes.iter().find_map(|r| {
        let (dst, _, oif) = nl::route_parts(r);
        (r.header.destination_prefix_length == 0 && dst.is_none()).then_some(oif).flatten()
    })?;
    host.links().ok()?.into_iter().find(|l| l.header.index == oif).and_then(|l| nl::link_mtu(&l))
}

// ---------------------------------------------------------------------------
// Delegated IPAM (host-local and friends)

fn find_plugin(env: &Env, name: &str) -> Result<PathBuf> {
    if name.contains('/') {
        return Err(Error::new(Code::InvalidConfig, "invalid ipam type", format!("{name:?} contains '/'")));
    }
    env.path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(Code::InvalidEnvironment, "ipam plugin not found", format!("{name} is not in CNI_PATH {:?}", env.path))
        })
}

/// Runs the delegated IPAM plugin with the same environment and config, as
/// the spec's delegation rules say; its error object is passed through.
fn exec_ipam(env: &Env, conf: &NetConf, command: &str, stdin: &[u8]) -> Result<Option<AddResult>> {
    let name = conf.delegated_ipam().expect("only called for delegated ipam");
    let bin = find_plugin(env, name)?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::new(Code::Io, "cannot run the ipam plugin", format!("{}: {e}", bin.display())))?;
    let mut input = child.stdin.take().expect("piped");
    let write = input.write_all(stdin);
    drop(input);
    let mut out = Vec::new();
    let _ = child.stdout.take().expect("piped").read_to_end(&mut out);
    let status = child.wait().map_err(|e| Error::new(Code::Io, "ipam plugin", e.to_string()))?;
    write.map_err(|e| Error::new(Code::Io, "cannot write to the ipam plugin", e.to_string()))?;
    if !status.success() {
        return Err(serde_json::from_slice::<Error>(&out).unwrap_or_else(|_| {
            Error::new(
                Code::Internal,
                format!("ipam plugin {name} failed"),
                format!("{status}: {}", String::from_utf8_lossy(&out).trim()),
            )
        }));
    }
    if command != "ADD" {
        return Ok(None);
    }
    serde_json::from_slice(&out).map(Some).map_err(|e| {
        Error::new(Code::Decode, format!("cannot decode the result of ipam plugin {name}"), e.to_string())
    })
}

// ---------------------------------------------------------------------------
// ADD

struct Allocation {
    ips: Vec<IpNetwork>,
    dns: Value,
}

fn allocate(env: &Env, conf: &NetConf, stdin: &[u8], owner: &Attachment) -> Result<Allocation> {
    if conf.delegated_ipam().is_some() {
        let r = exec_ipam(env, conf, "ADD", stdin)?.unwrap_or_else(|| unreachable!("ADD returns a result"));
        if r.ips.is_empty() {
            return Err(Error::new(Code::Internal, "ipam plugin returned no address", ""));
        }
        return Ok(Allocation { ips: r.ips.iter().map(|c| c.address).collect(), dns: r.dns });
    }
    let ranges = if conf.pod_cidrs.is_empty() {
        match node_subnet(conf)? {
            Some(s) if !s.pod_cidrs.is_empty() => s.pod_cidrs,
            _ => {
                return Err(Error::new(
                    Code::TryAgainLater,
                    "this node's pod subnet is not published yet",
                    format!("{} does not exist; is the sluice-cni daemon running?", conf.subnet_file()),
                ))
            }
        }
    } else {
        conf.pod_cidrs.clone()
    };
    let store = Store::new(conf.data_dir(), &conf.name);
    let mut locked = store.lock()?;
    let ips = locked.state.allocate(&ranges, owner)?;
    locked.commit()?;
    Ok(Allocation { ips, dns: Value::Null })
}

fn release(env: &Env, conf: &NetConf, stdin: &[u8], owner: &Attachment) -> Result<()> {
    if conf.delegated_ipam().is_some() {
        return exec_ipam(env, conf, "DEL", stdin).map(drop);
    }
    let store = Store::new(conf.data_dir(), &conf.name);
    if !store.dir().exists() {
        return Ok(());
    }
    let mut locked = store.lock()?;
    if !locked.state.release(owner).is_empty() {
        locked.commit()?;
    }
    Ok(())
}

fn add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<AddResult> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    env.validate_ids()?;
    let netns = open_netns(&env.netns)?;
    let mut pod = Netlink::in_netns(&netns).map_err(|e| internal(&e))?;
    if pod.link_get(&env.ifname).map_err(|e| internal(&e))?.is_some() {
        return Err(Error::new(
            Code::InterfaceExists,
            "interface already exists",
            format!("{} already exists in {}", env.ifname, env.netns),
        ));
    }
    let mut host = Netlink::new().map_err(|e| internal(&e))?;
    let owner = Attachment { container_id: env.container_id.clone(), ifname: env.ifname.clone() };
    let subnet = node_subnet(conf).ok().flatten();
    let alloc = allocate(env, conf, stdin, &owner)?;
    let mtu = conf
        .mtu
        .or(subnet.as_ref().map(|s| s.mtu))
        .or_else(|| underlay_mtu(&mut host))
        .unwrap_or(1500);
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    match plumb(&mut host, &mut pod, &netns, env, &host_veth, &alloc.ips, mtu) {
        Ok((mac, host_if)) => {
            if let Some(pin) = subnet.as_ref().and_then(|s| s.host_routing.as_deref()) {
                host_routing(&mut host, pin, host_if, mac, &alloc.ips);
            }
            info!(container = %env.container_id, ifname = %env.ifname, ips = ?alloc.ips, %host_veth, mtu, "pod attached");
            Ok(result(env, &host_veth, mac, mtu, &alloc.ips, alloc.dns.clone(), conf))
        }
        Err(e) => {
            // Leave nothing behind: the veth (its peer goes with it) and the addresses.
            let _ = host.link_del_by_name(&host_veth);
            if let Err(re) = release(env, conf, stdin, &owner) {
                warn!(error = %re, "releasing addresses after a failed ADD");
            }
            Err(e)
        }
    }
}

fn result(
    env: &Env,
    host_veth: &str,
    mac: [u8; 6],
    mtu: u32,
    ips: &[IpNetwork],
    dns: Value,
    conf: &NetConf,
) -> AddResult {
    let mut routes = Vec::new();
    let mut ip_configs = Vec::new();
    for ip in ips {
        let (addr, gw, default) = match ip.ip() {
            IpAddr::V4(v4) => (IpNetwork::new(v4.into(), 32), IpAddr::V4(GATEWAY_V4), "0.0.0.0/0"),
            IpAddr::V6(v6) => (IpNetwork::new(v6.into(), 128), IpAddr::V6(GATEWAY_V6), "::/0"),
        };
        ip_configs.push(IpConfig {
            version: None,
            address: addr.expect("host prefix is valid"),
            gateway: Some(gw),
            interface: Some(1),
        });
        routes.push(Route { dst: default.parse().expect("valid default"), gw: Some(gw) });
    }
    AddResult {
        cni_version: LATEST_VERSION.to_owned(),
        interfaces: vec![
            Interface { name: host_veth.to_owned(), mac: nl::format_mac(HOST_VETH_MAC), mtu: Some(mtu), sandbox: String::new() },
            Interface { name: env.ifname.clone(), mac: nl::format_mac(mac), mtu: Some(mtu), sandbox: env.netns.clone() },
        ],
        ips: ip_configs,
        routes,
        dns: if dns.is_null() { conf.dns.clone().unwrap_or(Value::Null) } else { dns },
    }
}

/// Creates the veth pair (the pod end directly inside the pod namespace,
/// named and addressed there), then the routes on both sides.
fn plumb(
    host: &mut Netlink,
    pod: &mut Netlink,
    netns: &File,
    env: &Env,
    host_veth: &str,
    ips: &[IpNetwork],
    mtu: u32,
) -> Result<([u8; 6], u32)> {
    use std::os::fd::AsRawFd as _;
    let mac = pod_mac(ips);
    let peer = LinkMessageBuilderExt::pod_end(&env.ifname, mac, mtu, netns.as_raw_fd());
    let mut veth = LinkVeth::new(host_veth, &env.ifname)
        .mtu(mtu)
        .address(HOST_VETH_MAC.to_vec())
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .up()
        .build();
    // Replace the builder's bare peer with ours (name, MAC, MTU, namespace, up).
    for attr in &mut veth.attributes {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos.iter_mut() {
                if let LinkInfo::Data(netlink_packet_route::link::InfoData::Veth(v)) = info {
                    *v = netlink_packet_route::link::InfoVeth::Peer(peer.clone());
                }
            }
        }
    }
    let created = host.link_add_echo(veth).map_err(|e| {
        if e.is(libc::EEXIST) {
            Error::new(Code::InterfaceExists, "interface already exists", format!("host link {host_veth} or {}: {e}", env.ifname))
        } else {
            internal(&e)
        }
    })?;
    // The kernel echoes the new host end (Linux 6.3 and later), and its
    // IFLA_LINK is the pod end's index in the pod namespace: both indexes
    // without another request. Older kernels are asked.
    let echoed = created.filter(|l| nl::link_name(l) == Some(host_veth));
    let (host_if, pod_if) = match echoed.as_ref().and_then(|l| Some((l.header.index, nl::link_peer_index(l)?))) {
        Some(both) => both,
        None => {
            let get = |nl: &mut Netlink, name: &str, what: &str| -> Result<u32> {
                Ok(nl
                    .link_get(name)
                    .map_err(|e| internal(&e))?
                    .ok_or_else(|| Error::new(Code::Internal, format!("{what} interface vanished"), name.to_owned()))?
                    .header
                    .index)
            };
            (get(host, host_veth, "host")?, get(pod, &env.ifname, "pod")?)
        }
    };
    // Up only now: a veth end cannot open before its peer is linked to it (ENOTCONN).
    pod.link_up(pod_if).map_err(|e| internal(&e))?;
    let k = |e: NlError| internal(&e);
    for ip in ips {
        match ip.ip() {
            IpAddr::V4(v4) => {
                pod.addr_replace(pod_if, v4.into(), 32).map_err(k)?;
                pod.route_replace(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(GATEWAY_V4, 32)
                        .output_interface(pod_if)
                        .scope(RouteScope::Link)
                        .build(),
                )
                .map_err(k)?;
                pod.route_replace(
                    RouteMessageBuilder::<Ipv4Addr>::new().gateway(GATEWAY_V4).output_interface(pod_if).build(),
                )
                .map_err(k)?;
                pod.neigh_replace(pod_if, GATEWAY_V4.into(), HOST_VETH_MAC).map_err(k)?;
                host.route_replace(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(v4, 32)
                        .output_interface(host_if)
                        .scope(RouteScope::Link)
                        .protocol(RouteProtocol::Static)
                        .build(),
                )
                .map_err(k)?;
            }
            IpAddr::V6(v6) => {
                pod.addr_replace(pod_if, v6.into(), 128).map_err(k)?;
                pod.neigh_replace(pod_if, GATEWAY_V6.into(), HOST_VETH_MAC).map_err(k)?;
                pod.route_replace(
                    RouteMessageBuilder::<Ipv6Addr>::new().gateway(GATEWAY_V6).output_interface(pod_if).build(),
                )
                .map_err(k)?;
                host.route_replace(
                    RouteMessageBuilder::<Ipv6Addr>::new()
                        .destination_prefix(v6, 128)
                        .output_interface(host_if)
                        .protocol(RouteProtocol::Static)
                        .build(),
                )
                .map_err(k)?;
            }
        }
    }
    Ok((mac, host_if))
}

/// `--host-routing ebpf` on the daemon: the pod's packets go through the
/// pinned `slc_from_pod` program, and the host knows the pod's MAC from the
/// start (the programs' FIB lookups then succeed from the first packet).
/// Failing here costs speed, not connectivity: the kernel path still works.
fn host_routing(host: &mut Netlink, pin: &Path, host_if: u32, mac: [u8; 6], ips: &[IpNetwork]) {
    for ip in ips {
        if let Err(e) = host.neigh_replace(host_if, ip.ip(), mac) {
            warn!(error = %e, %ip, "host routing: cannot add the pod's neighbour entry");
        }
    }
    if let Err(e) = crate::bpf::attach_tcx_ingress(pin, host_if) {
        warn!(error = %e, pin = %pin.display(), "host routing: cannot attach; this pod's traffic takes the kernel path");
    }
}

/// The pod end of the veth: created straight in the pod namespace under its
/// final name (one request instead of create, move, rename).
struct LinkMessageBuilderExt;

impl LinkMessageBuilderExt {
    fn pod_end(ifname: &str, mac: [u8; 6], mtu: u32, netns_fd: i32) -> LinkMessage {
        LinkUnspec::new_with_name(ifname)
            .mtu(mtu)
            .address(mac.to_vec())
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .setns_by_fd(netns_fd)
            .build()
    }
}

// ---------------------------------------------------------------------------
// DEL

fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<()> {
    env.require(&["CNI_CONTAINERID", "CNI_IFNAME"])?;
    let owner = Attachment { container_id: env.container_id.clone(), ifname: env.ifname.clone() };
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    let mut host = Netlink::new().map_err(|e| internal(&e))?;
    // Deleting the host end takes the pod end and both sides' routes with it.
    let removed = host.link_del_by_name(&host_veth).map_err(|e| internal(&e))?;
    if !removed && !env.netns.is_empty() {
        // Half-created state of another shape: a pod end whose host end is gone
        // cannot exist (veths die in pairs), so there is nothing else to remove.
        debug!(%host_veth, "no host veth to delete");
    }
    release(env, conf, stdin, &owner)?;
    info!(container = %env.container_id, ifname = %env.ifname, removed, "pod detached");
    Ok(())
}

// ---------------------------------------------------------------------------
// CHECK

fn check(env: &Env, conf: &NetConf, version: Version, stdin: &[u8]) -> Result<()> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    let _ = version;
    let prev = conf.prev_result.clone().ok_or_else(|| {
        Error::new(Code::InvalidConfig, "invalid network configuration", "CHECK needs prevResult")
    })?;
    let prev: AddResult = serde_json::from_value(prev)
        .map_err(|e| Error::new(Code::Decode, "cannot decode prevResult", e.to_string()))?;
    let fail = |what: String| Err(Error::new(Code::Internal, "CHECK failed", what));
    let netns = open_netns(&env.netns)?;
    let mut pod = Netlink::in_netns(&netns).map_err(|e| internal(&e))?;
    let Some(pod_link) = pod.link_get(&env.ifname).map_err(|e| internal(&e))? else {
        return fail(format!("{} is missing from {}", env.ifname, env.netns));
    };
    let pod_if_pos = prev.interfaces.iter().position(|i| i.name == env.ifname && !i.sandbox.is_empty());
    if let Some(i) = pod_if_pos.and_then(|p| prev.interfaces.get(p)) {
        if !i.mac.is_empty() && nl::link_mac(&pod_link).map(nl::format_mac).as_deref() != Some(i.mac.as_str()) {
            return fail(format!("{} has MAC {:?}, the result says {}", env.ifname, nl::link_mac(&pod_link).map(nl::format_mac), i.mac));
        }
    }
    let have = pod.addrs(pod_link.header.index).map_err(|e| internal(&e))?;
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    let mut host = Netlink::new().map_err(|e| internal(&e))?;
    let Some(host_link) = host.link_get(&host_veth).map_err(|e| internal(&e))? else {
        return fail(format!("host veth {host_veth} is missing"));
    };
    let mut host_routes = host.routes(AddressFamily::Inet).map_err(|e| internal(&e))?;
    host_routes.extend(host.routes(AddressFamily::Inet6).map_err(|e| internal(&e))?);
    let ours: Vec<&IpConfig> =
        prev.ips.iter().filter(|c| c.interface.is_none() || c.interface == pod_if_pos).collect();
    for c in &ours {
        if !have.iter().any(|(ip, prefix)| *ip == c.address.ip() && *prefix == c.address.prefix()) {
            return fail(format!("{} lacks address {} (has {have:?})", env.ifname, c.address));
        }
        let routed = host_routes.iter().any(|r| {
            let (dst, _, oif) = nl::route_parts(r);
            dst == Some(c.address.ip()) && oif == Some(host_link.header.index)
        });
        if !routed {
            return fail(format!("no host route to {} via {host_veth}", c.address.ip()));
        }
    }
    if conf.delegated_ipam().is_some() {
        exec_ipam(env, conf, "CHECK", stdin)?;
    } else {
        let owner = Attachment { container_id: env.container_id.clone(), ifname: env.ifname.clone() };
        let held = Store::new(conf.data_dir(), &conf.name).peek()?.owned_by(&owner);
        for c in &ours {
            if !held.contains(&c.address.ip()) {
                return fail(format!("ipam store does not hold {} for this container", c.address.ip()));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// GC and STATUS

fn gc(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<()> {
    let valid = conf.gc_valid().ok_or_else(|| {
        Error::new(Code::InvalidConfig, "invalid network configuration", "GC needs cni.dev/valid-attachments")
    })?;
    if conf.delegated_ipam().is_some() {
        // Older IPAM plugins do not know GC: their leaks are theirs to report.
        if let Err(e) = exec_ipam(env, conf, "GC", stdin) {
            warn!(error = %e, "delegated ipam GC failed");
        }
    } else {
        let store = Store::new(conf.data_dir(), &conf.name);
        if store.dir().exists() {
            let mut locked = store.lock()?;
            let freed = locked.state.gc(valid);
            if !freed.is_empty() {
                locked.commit()?;
                info!(?freed, "GC released addresses");
            }
        }
    }
    // Host veths of attachments the runtime no longer knows.
    let keep: Vec<String> = valid.iter().map(|a| host_veth_name(&a.container_id, &a.ifname)).collect();
    let mut host = Netlink::new().map_err(|e| internal(&e))?;
    for link in host.links().map_err(|e| internal(&e))? {
        let Some(name) = nl::link_name(&link) else { continue };
        if is_host_veth_name(name) && is_veth(&link) && !keep.iter().any(|k| k == name) {
            info!(link = name, "GC removes stale pod veth");
            host.link_del(link.header.index).map_err(|e| internal(&e))?;
        }
    }
    Ok(())
}

fn is_veth(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

fn status(conf: &NetConf) -> Result<()> {
    if conf.delegated_ipam().is_some() || !conf.pod_cidrs.is_empty() {
        return Ok(());
    }
    match node_subnet(conf) {
        Ok(Some(s)) if s.ready && !s.pod_cidrs.is_empty() => Ok(()),
        Ok(Some(s)) if !s.pod_cidrs.is_empty() => Err(Error::new(
            Code::PluginNotAvailableLimitedConnectivity,
            "the node daemon lost its source",
            format!("{} is marked not ready; existing pods keep their connectivity", conf.subnet_file()),
        )),
        Ok(_) => Err(Error::new(
            Code::PluginNotAvailable,
            "this node's pod subnet is not published yet",
            format!("{} does not exist or lists no pod range; is the sluice-cni daemon running?", conf.subnet_file()),
        )),
        Err(e) => Err(Error::new(Code::PluginNotAvailable, e.msg, e.details)),
    }
}

/// Reads the process environment and stdin, runs the command, prints the
/// outcome as the spec says, and returns the exit code.
pub fn main_from_env() -> i32 {
    let env = Env::from_lookup(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    if env.command != "VERSION" || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            return print_error(&Error::new(Code::Io, "cannot read the network configuration", e.to_string()));
        }
    }
    crate::logging::init_plugin(&stdin);
    debug!(command = %env.command, container = %env.container_id, "invoked");
    match run(&env, &stdin) {
        Ok(Output::Json(v)) => {
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, &v);
            let _ = out.write_all(b"\n");
            0
        }
        Ok(Output::Nothing) => 0,
        Err(e) => {
            warn!(command = %env.command, container = %env.container_id, error = %e, code = e.code, "failed");
            print_error(&e)
        }
    }
}

fn print_error(e: &Error) -> i32 {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, e);
    let _ = out.write_all(b"\n");
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("c1", "eth0");
        assert_eq!(a, host_veth_name("c1", "eth0"));
        assert!(a.len() <= 15 && is_host_veth_name(&a), "{a}");
        assert_ne!(a, host_veth_name("c1", "net1"));
        assert_ne!(a, host_veth_name("c2", "eth0"));
        assert!(!is_host_veth_name("slave0"));
    }

    #[test]
    fn pod_mac_is_locally_administered_and_derived_from_ipv4() {
        let m = pod_mac(&["2001:db8:1::5/64".parse().unwrap(), "198.18.1.5/24".parse().unwrap()]);
        assert_eq!(m, [0x0a, 0x58, 198, 18, 1, 5]);
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn version_answers_the_asked_version_and_lists_all() {
        let env = Env { command: "VERSION".into(), ..Env::default() };
        let Output::Json(v) = run(&env, br#"{"cniVersion":"0.4.0"}"#).unwrap() else { panic!("VERSION prints JSON") };
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), SUPPORTED_VERSIONS.len());
        let Output::Json(v) = run(&env, b"").unwrap() else { panic!() };
        assert_eq!(v["cniVersion"], LATEST_VERSION);
    }

    #[test]
    fn gc_and_status_need_1_1() {
        for cmd in ["GC", "STATUS"] {
            let env = Env { command: cmd.into(), ..Env::default() };
            let Err(e) = run(&env, br#"{"cniVersion":"1.0.0","name":"n","type":"sluice-cni"}"#) else {
                panic!("{cmd} with 1.0.0 must fail")
            };
            assert_eq!((e.code, e.cni_version.as_str()), (1, "1.0.0"), "{cmd}");
        }
    }

    #[test]
    fn missing_and_unknown_command_are_code_4() {
        assert_eq!(run(&Env::default(), b"{}").err().unwrap().code, 4);
        let env = Env { command: "FROB".into(), ..Env::default() };
        assert_eq!(run(&env, b"{}").err().unwrap().code, 4);
    }

    #[test]
    fn add_without_netns_is_code_4_and_touches_nothing() {
        let env = Env { command: "ADD".into(), container_id: "c".into(), ifname: "eth0".into(), ..Env::default() };
        let e = run(&env, br#"{"cniVersion":"1.1.0","name":"n","type":"sluice-cni","podCidrs":["198.18.1.0/24"],"dataDir":"/nonexistent/x"}"#)
            .err()
            .unwrap();
        assert_eq!((e.code, e.details.as_str()), (4, "CNI_NETNS"));
    }

    fn status_conf(file: &Path) -> Vec<u8> {
        format!(r#"{{"cniVersion":"1.1.0","name":"n","type":"sluice-cni","subnetFile":"{}"}}"#, file.display()).into_bytes()
    }

    #[test]
    fn status_is_50_until_the_subnet_is_published_then_ok_and_51_when_not_ready() {
        let dir = std::env::temp_dir().join(format!("sluice-cni-status-{}", std::process::id()));
        let file = dir.join("subnet.json");
        let env = Env { command: "STATUS".into(), ..Env::default() };
        assert_eq!(run(&env, &status_conf(&file)).err().unwrap().code, 50);
        let mut s = NodeSubnet {
            node: "a".into(),
            pod_cidrs: vec!["198.18.1.0/24".parse().unwrap()],
            cluster_cidrs: vec![],
            mtu: 1450,
            backend: "vxlan".into(),
            ready: true,
            host_routing: None,
        };
        s.write(&file).unwrap();
        assert!(run(&env, &status_conf(&file)).is_ok());
        s.ready = false;
        s.write(&file).unwrap();
        assert_eq!(run(&env, &status_conf(&file)).err().unwrap().code, 51);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn result_routes_pods_via_the_link_local_gateway() {
        let env = Env { ifname: "eth0".into(), netns: "/run/netns/p".into(), ..Env::default() };
        let r = result(
            &env,
            "sl0",
            [0x0a, 0x58, 198, 18, 1, 2],
            1450,
            &["198.18.1.2/24".parse().unwrap(), "2001:db8:1:1::2/64".parse().unwrap()],
            Value::Null,
            &NetConf::default(),
        );
        assert_eq!(r.ips[0].address, "198.18.1.2/32".parse::<IpNetwork>().unwrap());
        assert_eq!(r.ips[1].address, "2001:db8:1:1::2/128".parse::<IpNetwork>().unwrap());
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(r.interfaces[1].sandbox, "/run/netns/p");
        assert!(r.interfaces[0].sandbox.is_empty(), "host veth has no sandbox (bandwidth finds it so)");
        assert_eq!(r.routes.len(), 2);
    }
}
