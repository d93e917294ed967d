//! ADD: the pod's veth (the pod end created straight inside the sandbox),
//! its addresses and routes on both sides, and the result.
//!
//! A failed ADD undoes exactly what it made: the veth only if this call
//! created it, the addresses only if this call allocated them. The
//! attachment lock keeps a retried or racing duplicate ADD from running
//! beside the first: it waits, then finds the interface and answers 101.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnetwork::IpNetwork;
use netlink_packet_route::{
    link::{LinkAttribute, LinkInfo, LinkMessage},
    route::{RouteProtocol, RouteScope},
    AddressFamily,
};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::Value;
use tracing::{info, warn};

use super::addresses::{allocate, undo};
use super::{
    attachment, host_veth_name, internal, lock_attachment, network_mark, node_subnet, open_netns, pod_mac, GATEWAY_V4,
    GATEWAY_V6, HOST_VETH_MAC,
};
use crate::nl::{self, Netlink, NlError};
use crate::spec::{AddResult, Code, Env, Error, Interface, IpConfig, NetConf, Result, Route, LATEST_VERSION};

pub(super) fn add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<AddResult> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    env.validate_ids()?;
    let netns = open_netns(&env.netns)?;
    let owner = attachment(env);
    let _serialised = lock_attachment(conf, &owner, true)?;
    let mut pod = Netlink::in_netns(&netns).map_err(|e| internal(&e))?;
    if pod.link_get(&env.ifname).map_err(|e| internal(&e))?.is_some() {
        return Err(Error::new(
            Code::InterfaceExists,
            "interface already exists",
            format!("{} already exists in {}", env.ifname, env.netns),
        ));
    }
    let mut host = Netlink::new().map_err(|e| internal(&e))?;
    let subnet = node_subnet(conf).ok().flatten();
    let alloc = allocate(env, conf, stdin, &owner)?;
    let mtu = conf
        .mtu
        .or(subnet.as_ref().map(|s| s.mtu))
        .or_else(|| underlay_mtu(&mut host))
        .unwrap_or(1500);
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    let mut made = MadeVeth::default();
    let plumbed = Plumb { env, host_veth: &host_veth, ips: &alloc.ips, mtu, mark: network_mark(&conf.name) }
        .run(&mut host, &mut pod, &netns, &mut made);
    match plumbed {
        Ok((mac, host_if)) => {
            if let Some(pin) = subnet.as_ref().and_then(|s| s.host_routing.as_deref()) {
                host_routing(&mut host, pin, host_if, mac, &alloc.ips);
            }
            info!(container = %env.container_id, ifname = %env.ifname, ips = ?alloc.ips, %host_veth, mtu, "pod attached");
            Ok(result(env, &host_veth, mac, mtu, &alloc.ips, alloc.dns, conf))
        }
        Err(e) => {
            // Leave nothing of ours behind, and nothing of anyone else's gone:
            // the veth (its peer goes with it) only if this call created it,
            // the addresses only if this call allocated them.
            if let Err(de) = made.remove(&mut host, &host_veth) {
                warn!(error = %de, %host_veth, "removing the veth of a failed ADD");
            }
            if let Err(re) = undo(env, conf, stdin, &owner, &alloc.made) {
                warn!(error = %re, "releasing the addresses of a failed ADD");
            }
            Err(e)
        }
    }
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

pub(super) fn result(
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

/// Whether this call created the host veth, and its index once known.
#[derive(Default)]
struct MadeVeth {
    created: bool,
    index: Option<u32>,
}

impl MadeVeth {
    fn remove(&self, host: &mut Netlink, name: &str) -> Result<(), NlError> {
        match (self.created, self.index) {
            (false, _) => Ok(()),
            (true, Some(index)) => host.link_del(index).map(drop),
            (true, None) => host.link_del_by_name(name).map(drop),
        }
    }
}

/// What one pod's veth is made of.
struct Plumb<'a> {
    env: &'a Env,
    host_veth: &'a str,
    ips: &'a [IpNetwork],
    mtu: u32,
    /// The host veth's device group: its network (see [`network_mark`]).
    mark: u32,
}

impl Plumb<'_> {
    /// Creates the veth pair (the pod end directly inside the pod namespace,
    /// named and addressed there), then the routes on both sides. `made`
    /// records the veth as soon as the kernel has created it.
    fn run(&self, host: &mut Netlink, pod: &mut Netlink, netns: &File, made: &mut MadeVeth) -> Result<([u8; 6], u32)> {
        use std::os::fd::AsRawFd as _;
        let (env, host_veth, mtu) = (self.env, self.host_veth, self.mtu);
        let mac = pod_mac(self.ips);
        let peer = pod_end(&env.ifname, mac, mtu, netns.as_raw_fd());
        let mut veth = LinkVeth::new(host_veth, &env.ifname)
            .mtu(mtu)
            .address(HOST_VETH_MAC.to_vec())
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .append_extra_attribute(LinkAttribute::Group(self.mark))
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
        // EEXIST: the host name is another attachment's (the same container
        // and ifname in another sandbox), or the ifname appeared in the
        // sandbox since the check. Either way, not ours to touch.
        let created = host.link_add_echo(veth).map_err(|e| {
            if e.is(libc::EEXIST) {
                Error::new(Code::InterfaceExists, "interface already exists", format!("host link {host_veth} or {}: {e}", env.ifname))
            } else {
                internal(&e)
            }
        })?;
        made.created = true;
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
                let host_if = get(host, host_veth, "host")?;
                made.index = Some(host_if);
                (host_if, get(pod, &env.ifname, "pod")?)
            }
        };
        made.index = Some(host_if);
        // Up only now: a veth end cannot open before its peer is linked to it (ENOTCONN).
        pod.link_up(pod_if).map_err(|e| internal(&e))?;
        let k = |e: NlError| internal(&e);
        for ip in self.ips {
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
fn pod_end(ifname: &str, mac: [u8; 6], mtu: u32, netns_fd: i32) -> LinkMessage {
    LinkUnspec::new_with_name(ifname)
        .mtu(mtu)
        .address(mac.to_vec())
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .setns_by_fd(netns_fd)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

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
