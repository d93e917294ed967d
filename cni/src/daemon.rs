//! The node daemon: follows Nodes, converges this node's VXLAN device,
//! routes, neighbours and FDB entries to [`model::desired`], masquerades pod
//! traffic leaving the cluster, and publishes the subnet file and conflist the
//! plugin reads. Level-triggered: every pass recomputes everything from the
//! latest snapshot and removes what is no longer wanted.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteMessage, RouteProtocol},
    AddressFamily,
};
use rtnetlink::{LinkVxlan, RouteMessageBuilder};
use sluice_k8s::Snapshot;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::hostrouting::HostRouting;
use crate::model::{self, Backend, Desired, Via};
use crate::nl::{self, Netlink, NlError};
use crate::subnet::{write_atomic, NodeSubnet};

/// Route protocol number marking the daemon's routes, so a reconcile removes
/// exactly the stale ones it made and never anyone else's.
pub const ROUTE_PROTO: u8 = 0x5c;

/// What the daemon runs with (from the command line: [`crate::cli::DaemonArgs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How pod traffic crosses nodes.
    pub backend: Backend,
    /// Standalone source: a directory of Kubernetes YAML with v1 Node objects.
    pub manifests: Option<PathBuf>,
    /// API source: a kubeconfig file (in-cluster config when neither source is given).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the Node object to read the pod range of).
    pub node_name: String,
    /// Cluster-wide pod ranges: traffic between them is not masqueraded.
    pub cluster_cidrs: Vec<IpNetwork>,
    pub vni: u32,
    pub vxlan_port: u16,
    pub vxlan_device: String,
    /// Pod MTU; derived from the underlay interface when absent.
    pub mtu: Option<u32>,
    /// Where the plugin's conflist is written.
    pub cni_conf_dir: PathBuf,
    pub cni_conf_name: String,
    /// Where the subnet file is written (`subnet.json`).
    pub state_dir: PathBuf,
    /// The built-in IPAM's store, written into the conflist.
    pub ipam_dir: PathBuf,
    /// CNI network name in the conflist.
    pub network_name: String,
    /// The conflist's cniVersion.
    pub cni_version: String,
    /// Leave pod traffic's source address alone.
    pub no_masquerade: bool,
    pub host_routing: HostRoutingMode,
    /// bpffs directory for `--host-routing ebpf` (mounted if it is not one).
    pub bpffs: PathBuf,
    /// Full reconcile period even without changes; never zero.
    pub resync: Duration,
    /// Serve `/metrics`, `/healthz` and `/readyz` here; off when absent.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// [`Config`] under the name the daemon's functions use for it (`args`).
pub type Args = Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HostRoutingMode {
    /// The kernel's IP forwarding, as flannel does.
    Kernel,
    /// eBPF: FIB lookup and redirect at tc, straight into the pod's namespace.
    Ebpf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("source: {0}")]
    Source(String),
    #[error("underlay: {0}")]
    Underlay(String),
    #[error(transparent)]
    HostRouting(#[from] crate::hostrouting::Error),
    #[error("nftables: {0}")]
    Nft(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let rx = match (&args.manifests, &args.kubeconfig) {
            (Some(dir), _) => sluice_k8s::manifests::watch_dir(dir).map_err(|e| Error::Source(e.to_string()))?,
            (None, kubeconfig) => {
                let kinds = sluice_k8s::kube_source::Kinds {
                    services: false,
                    slices: false,
                    nodes: sluice_k8s::kube_source::NodeSelection::All,
                    namespaces: false,
                };
                sluice_k8s::kube_source::watch_cluster(kubeconfig.clone(), kinds)
                    .await
                    .map_err(|e| Error::Source(e.to_string()))?
            }
        };
        converge(args, rx).await
    })
}

async fn converge(args: Args, mut rx: watch::Receiver<Arc<Snapshot>>) -> anyhow::Result<()> {
    let mut nl = Netlink::new()?;
    let mut tick = tokio::time::interval(args.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut failures = Failures::default();
    let mut host_routing = (args.host_routing == HostRoutingMode::Ebpf).then(|| HostRouting::new(args.bpffs.clone()));
    let health = Arc::new(sluice_node::http::LoopHealth::new("sluice_cni", args.resync * 3 + Duration::from_secs(5)));
    if let Some(addr) = args.metrics_addr {
        sluice_node::http::Endpoint::bind(addr, sluice_node::http::Limits::default()).await?.spawn(health.clone());
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    info!(node = %args.node_name, backend = args.backend.as_str(), "sluice-cni daemon started");
    loop {
        let snap = rx.borrow_and_update().clone();
        health.beat();
        if snap.synced {
            match reconcile(&args, &mut nl, &snap, host_routing.as_mut()) {
                Ok(()) => failures.succeeded(),
                Err(e) => {
                    warn!(error = %e, failures = failures.count + 1, "reconcile failed; retrying");
                    if failures.failed() {
                        mark_not_ready(&args, &format!("{} reconciles in a row failed, the last with: {e}", failures.count));
                    }
                }
            }
            health.pass(failures.count == 0);
        }
        let last_error = failures.count > 0;
        let retry = tokio::time::sleep(if last_error { Duration::from_secs(1) } else { args.resync });
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { warn!("source ended"); break; },
            _ = tick.tick() => {}
            () = retry => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    mark_not_ready(&args, "the daemon stopped");
    info!("sluice-cni daemon stopping; programmed state stays");
    Ok(())
}

/// After this many reconciles in a row fail, STATUS turns 51.
pub const FAILURES_BEFORE_NOT_READY: u32 = 3;

/// Consecutive failed reconciles.
#[derive(Debug, Default)]
struct Failures {
    count: u32,
}

impl Failures {
    fn succeeded(&mut self) {
        self.count = 0;
    }

    /// Counts one failure; true once when the run of failures reaches
    /// [`FAILURES_BEFORE_NOT_READY`] (the moment to say not ready).
    fn failed(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.count == FAILURES_BEFORE_NOT_READY
    }
}

/// Rewrites the subnet file with `ready: false` (when there is one and it
/// says ready): the daemon is no longer keeping this node's routes in step,
/// so STATUS answers 51. Pods keep what is programmed; the next successful
/// reconcile publishes `ready: true` again.
pub fn mark_not_ready(args: &Args, why: &str) {
    let path = args.state_dir.join("subnet.json");
    match NodeSubnet::read(&path) {
        Ok(Some(mut s)) if s.ready => {
            s.ready = false;
            match s.write(&path) {
                Ok(()) => warn!(path = %path.display(), why, "marked this node not ready"),
                Err(e) => warn!(path = %path.display(), error = %e, why, "cannot mark this node not ready"),
            }
        }
        Ok(_) => {}
        Err(e) => warn!(path = %path.display(), error = %e, "cannot read the subnet file to mark it not ready"),
    }
}

/// The underlay: the link holding this node's address, the address's prefix, the link's MTU.
struct Underlay {
    index: u32,
    name: String,
    net: IpNetwork,
    mtu: u32,
}

fn find_underlay(nl: &mut Netlink, ip: Ipv4Addr) -> Result<Underlay> {
    for link in nl.links()? {
        let addrs = nl.addrs(link.header.index)?;
        if let Some((_, prefix)) = addrs.iter().find(|(a, _)| *a == IpAddr::V4(ip)) {
            let net = IpNetwork::new(IpAddr::V4(ip), *prefix).map_err(|e| Error::Underlay(e.to_string()))?;
            let name = nl::link_name(&link).unwrap_or_default().to_owned();
            return Ok(Underlay { index: link.header.index, name, net, mtu: nl::link_mtu(&link).unwrap_or(1500) });
        }
    }
    Err(Error::Underlay(format!("no local interface holds this node's address {ip}")))
}

/// One full pass: kernel state, masquerade, then the files (published last,
/// so STATUS turns ready only once the node can actually carry pod traffic).
pub fn reconcile(args: &Args, nl: &mut Netlink, snap: &Snapshot, host_routing: Option<&mut HostRouting>) -> Result<()> {
    let self_ip = snap
        .nodes
        .get(&args.node_name)
        .and_then(|n| model::node_info(n).ok())
        .map(|i| i.ip);
    let underlay = match self_ip {
        Some(ip) => Some(find_underlay(nl, ip)?),
        None => None,
    };
    let (desired, warnings) =
        model::desired(snap.nodes.values().map(AsRef::as_ref), &args.node_name, args.backend, underlay.as_ref().map(|u| u.net));
    for w in &warnings {
        warn!("{w}");
    }
    let (Some(desired), Some(underlay)) = (desired, underlay) else {
        return Ok(());
    };
    let vxlan_wanted = args.backend == Backend::Vxlan || desired.needs_vxlan();
    let vxlan = if vxlan_wanted { Some(ensure_vxlan(args, nl, &desired, &underlay)?) } else { None };
    if !vxlan_wanted {
        remove_vxlan(args, nl)?;
    }
    sync_routes(nl, &desired, &underlay, vxlan)?;
    if let Some(index) = vxlan {
        sync_neighbours(nl, &desired, index)?;
        sync_fdb(nl, &desired, index)?;
    }
    let host_routing = match host_routing {
        Some(hr) => {
            let mut interfaces = vec![(underlay.name.clone(), underlay.index)];
            if let Some(index) = vxlan {
                interfaces.push((args.vxlan_device.clone(), index));
            }
            let params = crate::hostrouting::Params {
                cluster: args.cluster_cidrs.clone(),
                local: desired.local.pod_cidrs.clone(),
                node_ip: match underlay.net.ip() {
                    IpAddr::V4(v4) => v4,
                    IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                },
                underlay_if: underlay.index,
                vxlan: vxlan.map(|index| (args.vxlan_port, args.vni, index)),
            };
            Some(hr.ensure(&params, &interfaces)?)
        }
        None => None,
    };
    if !args.no_masquerade {
        masquerade(&desired.local.pod_cidrs, &args.cluster_cidrs)?;
    }
    let mtu = args.mtu.unwrap_or_else(|| model::pod_mtu(args.backend, underlay.mtu));
    let subnet = NodeSubnet {
        node: args.node_name.clone(),
        pod_cidrs: desired.local.pod_cidrs.clone(),
        cluster_cidrs: args.cluster_cidrs.clone(),
        mtu,
        backend: args.backend.as_str().to_owned(),
        ready: true,
        host_routing,
    };
    let subnet_path = args.state_dir.join("subnet.json");
    if NodeSubnet::read(&subnet_path).ok().flatten().as_ref() != Some(&subnet) {
        subnet.write(&subnet_path).map_err(|source| Error::Write { path: subnet_path.clone(), source })?;
        info!(path = %subnet_path.display(), pod_cidrs = ?subnet.pod_cidrs, mtu, "published node subnet");
    }
    write_conflist(args, &subnet_path)?;
    debug!(peers = desired.routes.len(), "reconciled");
    Ok(())
}

fn ensure_vxlan(args: &Args, nl: &mut Netlink, desired: &Desired, underlay: &Underlay) -> Result<u32> {
    let mac = model::vtep_mac(desired.local.ip);
    let mtu = underlay.mtu - model::VXLAN_OVERHEAD;
    if let Some(link) = nl.link_get(&args.vxlan_device)? {
        let matches = nl::link_mac(&link) == Some(mac) && vxlan_params(&link) == Some((args.vni, args.vxlan_port));
        if matches {
            if nl::link_mtu(&link) != Some(mtu) {
                let mut m = rtnetlink::LinkUnspec::new_with_index(link.header.index).mtu(mtu).build();
                m.header.index = link.header.index;
                nl.link_set(m)?;
            }
            nl.link_up(link.header.index)?;
            ensure_vtep_addrs(nl, link.header.index, desired)?;
            return Ok(link.header.index);
        }
        // A device with another identity would leave peers with stale FDB/ARP: recreate it.
        warn!(device = %args.vxlan_device, "VXLAN device differs from the wanted one; recreating");
        nl.link_del(link.header.index)?;
    }
    let msg = LinkVxlan::new(&args.vxlan_device, args.vni)
        .port(args.vxlan_port)
        .local(desired.local.ip)
        .dev(underlay.index)
        .learning(false)
        .mtu(mtu)
        .address(mac.to_vec())
        .up()
        .build();
    nl.link_add(msg)?;
    let index = nl
        .link_get(&args.vxlan_device)?
        .ok_or_else(|| Error::Underlay("VXLAN device vanished after creation".into()))?
        .header
        .index;
    info!(device = %args.vxlan_device, vni = args.vni, port = args.vxlan_port, mac = %nl::format_mac(mac), "created VXLAN device");
    ensure_vtep_addrs(nl, index, desired)?;
    Ok(index)
}

fn vxlan_params(link: &netlink_packet_route::link::LinkMessage) -> Option<(u32, u16)> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => {
            let is_vxlan = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
            let data = infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
                _ => None,
            })?;
            let vni = data.iter().find_map(|d| if let InfoVxlan::Id(v) = d { Some(*v) } else { None })?;
            let port = data.iter().find_map(|d| if let InfoVxlan::Port(p) = d { Some(*p) } else { None })?;
            is_vxlan.then_some((vni, port))
        }
        _ => None,
    })
}

fn ensure_vtep_addrs(nl: &mut Netlink, index: u32, desired: &Desired) -> Result<()> {
    let have = nl.addrs(index)?;
    for cidr in &desired.local.pod_cidrs {
        let (addr, prefix) = (model::vtep_addr(cidr), if cidr.is_ipv4() { 32 } else { 128 });
        if !have.contains(&(addr, prefix)) {
            nl.addr_replace(index, addr, prefix)?;
        }
    }
    Ok(())
}

fn remove_vxlan(args: &Args, nl: &mut Netlink) -> Result<()> {
    if let Some(link) = nl.link_get(&args.vxlan_device)? {
        info!(device = %args.vxlan_device, "no peer needs VXLAN; removing the device");
        nl.link_del(link.header.index)?;
    }
    Ok(())
}

fn route_message(dst: &IpNetwork, via: &Via, underlay: u32, vxlan: Option<u32>) -> Option<RouteMessage> {
    let proto = RouteProtocol::Other(ROUTE_PROTO);
    let msg = match (dst, via) {
        (IpNetwork::V4(d), Via::Direct { gw: IpAddr::V4(gw) }) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(*gw)
            .output_interface(underlay)
            .protocol(proto)
            .build(),
        (IpNetwork::V6(d), Via::Direct { gw: IpAddr::V6(gw) }) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(*gw)
            .output_interface(underlay)
            .protocol(proto)
            .build(),
        (IpNetwork::V4(d), Via::Vxlan { vtep: IpAddr::V4(v), .. }) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(*v)
            .output_interface(vxlan?)
            .onlink()
            .protocol(proto)
            .build(),
        (IpNetwork::V6(d), Via::Vxlan { vtep: IpAddr::V6(v), .. }) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(*v)
            .output_interface(vxlan?)
            .onlink()
            .protocol(proto)
            .build(),
        _ => return None,
    };
    Some(msg)
}

fn sync_routes(nl: &mut Netlink, desired: &Desired, underlay: &Underlay, vxlan: Option<u32>) -> Result<()> {
    let mut want = BTreeSet::new();
    for r in &desired.routes {
        let Some(msg) = route_message(&r.cidr, &r.via, underlay.index, vxlan) else { continue };
        want.insert((r.cidr.network(), r.cidr.prefix()));
        nl.route_replace(msg)?;
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for route in nl.routes(family)? {
            if route.header.protocol != RouteProtocol::Other(ROUTE_PROTO) {
                continue;
            }
            let (dst, _, _) = nl::route_parts(&route);
            let Some(dst) = dst else { continue };
            if !want.contains(&(dst, route.header.destination_prefix_length)) {
                info!(route = %format!("{dst}/{}", route.header.destination_prefix_length), "removing route of a departed node");
                let mut del = RouteMessage::default();
                del.header = route.header.clone();
                del.attributes = route.attributes.clone();
                nl.route_del(del)?;
            }
        }
    }
    Ok(())
}

fn sync_neighbours(nl: &mut Netlink, desired: &Desired, index: u32) -> Result<()> {
    let want = desired.neighbours();
    for (ip, mac) in &want {
        nl.neigh_replace(index, *ip, *mac)?;
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for n in nl.neighbours(family, index)? {
            if n.header.state != NeighbourState::Permanent {
                continue;
            }
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                _ => None,
            });
            if let Some(ip) = ip.filter(|ip| !want.contains_key(ip)) {
                info!(%ip, "removing neighbour of a departed node");
                nl.neigh_del(index, ip)?;
            }
        }
    }
    Ok(())
}

fn sync_fdb(nl: &mut Netlink, desired: &Desired, index: u32) -> Result<()> {
    let want = desired.fdb();
    for (mac, remote) in &want {
        nl.fdb_replace(index, *mac, IpAddr::V4(*remote))?;
    }
    for n in nl.neighbours(AddressFamily::Bridge, index)? {
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        });
        // FDB dumps are family AF_BRIDGE, so the parser leaves NDA_DST as raw bytes.
        let dst = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(*v4),
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
                <[u8; 4]>::try_from(raw.as_slice()).ok().map(Ipv4Addr::from)
            }
            _ => None,
        });
        if let (Some(mac), Some(dst)) = (mac, dst) {
            if want.get(&mac) != Some(&dst) {
                info!(mac = %nl::format_mac(mac), %dst, "removing FDB entry of a departed node");
                nl.fdb_del(index, mac, IpAddr::V4(dst))?;
            }
        }
    }
    Ok(())
}

/// Loads the masquerade table with `nft -f -` in this process's network namespace.
fn masquerade(local: &[IpNetwork], cluster: &[IpNetwork]) -> Result<()> {
    let ruleset = model::masquerade_ruleset("sluice", local, cluster);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("cannot run nft: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(ruleset.as_bytes())
        .map_err(|e| Error::Nft(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| Error::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(Error::Nft(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

/// The conflist: sluice-cni, then portmap for hostPorts.
pub fn conflist(network: &str, cni_version: &str, subnet_file: &std::path::Path, ipam_dir: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": cni_version,
        "name": network,
        "plugins": [
            {
                "type": "sluice-cni",
                "subnetFile": subnet_file,
                "dataDir": ipam_dir,
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
            },
        ],
    })
}

fn write_conflist(args: &Args, subnet_path: &std::path::Path) -> Result<()> {
    let path = args.cni_conf_dir.join(&args.cni_conf_name);
    let body = serde_json::to_vec_pretty(&conflist(&args.network_name, &args.cni_version, subnet_path, &args.ipam_dir)).expect("serialises");
    if std::fs::read(&path).ok().as_deref() == Some(body.as_slice()) {
        return Ok(());
    }
    write_atomic(&path, &body).map_err(|source| Error::Write { path: path.clone(), source })?;
    info!(path = %path.display(), "wrote CNI config");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_is_said_once_after_a_run_of_failures_and_a_success_resets_it() {
        let mut f = Failures::default();
        let said: Vec<bool> = (0..FAILURES_BEFORE_NOT_READY + 2).map(|_| f.failed()).collect();
        assert_eq!(said.iter().filter(|s| **s).count(), 1, "{said:?}");
        assert!(said[FAILURES_BEFORE_NOT_READY as usize - 1]);
        f.succeeded();
        assert_eq!(f.count, 0);
        assert!(!f.failed());
    }

    fn config(state_dir: PathBuf) -> Config {
        crate::cli::daemon_config(["--node-name", "a", "--state-dir", state_dir.to_str().unwrap()]).unwrap()
    }

    #[test]
    fn mark_not_ready_flips_a_ready_subnet_file_and_leaves_the_rest() {
        let dir = std::env::temp_dir().join(format!("sluice-cni-ready-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let args = config(dir.clone());
        mark_not_ready(&args, "test: no file yet");
        assert!(!dir.join("subnet.json").exists(), "nothing published, nothing to mark");
        let s = NodeSubnet {
            node: "a".into(),
            pod_cidrs: vec!["198.18.1.0/24".parse().unwrap()],
            cluster_cidrs: vec![],
            mtu: 1450,
            backend: "vxlan".into(),
            ready: true,
            host_routing: None,
        };
        s.write(&dir.join("subnet.json")).unwrap();
        mark_not_ready(&args, "test");
        let after = NodeSubnet::read(&dir.join("subnet.json")).unwrap().unwrap();
        assert_eq!(after, NodeSubnet { ready: false, ..s });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
