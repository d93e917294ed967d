//! A small synchronous rtnetlink client: the message types and builders of
//! `netlink-packet-route`/`rtnetlink`, sent over a blocking `netlink-sys`
//! socket. The plugin is a short-lived process doing a handful of requests;
//! a blocking socket costs no runtime start-up and no thread, and because a
//! netlink socket stays bound to the namespace it was opened in, one socket
//! per namespace is all the namespace switching a pod setup needs.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage},
    link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::protocols::NETLINK_ROUTE;

pub use sluice_node::netlink::NlError;
use sluice_node::netlink::Conn;

pub type NlResult<T> = std::result::Result<T, NlError>;

/// One rtnetlink socket, bound to the namespace it was opened in.
pub struct Netlink {
    conn: Conn,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> NlResult<Self> {
        Ok(Self { conn: Conn::open(NETLINK_ROUTE)? })
    }

    /// A socket in the namespace `netns` (a file under /run/netns or
    /// /proc/PID/ns/net). The calling thread enters `netns` just long enough
    /// to open the socket and then returns to its own namespace; nothing
    /// else runs on the thread meanwhile, and other threads are not
    /// affected (setns(2) acts on the calling thread only). This used to be
    /// a short-lived thread, which cost the plugin about 0.4 ms per ADD
    /// (stack and malloc arena set-up and teardown) against ~20 us here.
    pub fn in_netns(netns: &File) -> NlResult<Self> {
        let own = File::open("/proc/thread-self/ns/net")
            .map_err(|e| NlError::Transport(format!("open own netns: {e}")))?;
        // SAFETY: setns(2) on a namespace fd we hold open; affects only this thread.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NlError::Transport(format!("setns: {}", io::Error::last_os_error())));
        }
        let socket = Self::new();
        // SAFETY: as above, back into the namespace this thread started in.
        if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // Going on would run every later request in the wrong namespace.
            let e = io::Error::last_os_error();
            panic!("cannot return to the original network namespace after opening a socket in another: {e}");
        }
        socket
    }

    /// Sends one request and collects the answers until the ack or DONE.
    fn request(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> NlResult<Vec<RouteNetlinkMessage>> {
        self.conn.request(op, msg, flags)
    }

    fn ack(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> NlResult<()> {
        self.request(op, msg, NLM_F_ACK | flags).map(drop)
    }

    // ---- links ----

    /// Creates a link (fails with EEXIST if the name is taken).
    pub fn link_add(&mut self, msg: LinkMessage) -> NlResult<()> {
        self.ack("create link", RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Creates a link and returns it as the kernel echoes it (NLM_F_ECHO,
    /// honoured for new links since Linux 6.3; `None` from older kernels):
    /// its index without another request.
    pub fn link_add_echo(&mut self, msg: LinkMessage) -> NlResult<Option<LinkMessage>> {
        let answers =
            self.request("create link", RouteNetlinkMessage::NewLink(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO)?;
        Ok(first_link(answers))
    }

    /// Changes an existing link.
    pub fn link_set(&mut self, msg: LinkMessage) -> NlResult<()> {
        self.ack("change link", RouteNetlinkMessage::SetLink(msg), 0)
    }

    pub fn link_get(&mut self, name: &str) -> NlResult<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        // Nobody here reads counters; the kernel then skips gathering them.
        msg.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        match self.request("get link", RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> NlResult<Vec<LinkMessage>> {
        let answers = self.request("list links", RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// Deletes a link by index; false if it was already gone.
    pub fn link_del(&mut self, index: u32) -> NlResult<bool> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.ack("delete link", RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a link by name; false if there was none.
    pub fn link_del_by_name(&mut self, name: &str) -> NlResult<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.ack("delete link", RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets IFF_UP on a link.
    pub fn link_up(&mut self, index: u32) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.link_set(msg)
    }

    // ---- addresses ----

    /// Adds (or replaces) `addr` on a link; IPv6 without duplicate detection
    /// (the address comes from IPAM, which already guarantees uniqueness).
    pub fn addr_replace(&mut self, index: u32, addr: IpAddr, prefix: u8) -> NlResult<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix;
        msg.header.family = family(addr);
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.ack("add address", RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    pub fn addrs(&mut self, index: u32) -> NlResult<Vec<(IpAddr, u8)>> {
        let answers =
            self.request("list addresses", RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(ip) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    // ---- routes ----

    pub fn route_replace(&mut self, msg: RouteMessage) -> NlResult<()> {
        self.ack("add route", RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    /// Deletes a route; false if it was already gone.
    pub fn route_del(&mut self, msg: RouteMessage) -> NlResult<bool> {
        match self.ack("delete route", RouteNetlinkMessage::DelRoute(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ESRCH) || e.is(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every route of the main table of one family.
    pub fn routes(&mut self, family: AddressFamily) -> NlResult<Vec<RouteMessage>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        let answers = self.request("list routes", RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    // ---- neighbours and FDB ----

    /// A permanent neighbour entry `ip -> mac` on a link.
    pub fn neigh_replace(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) -> NlResult<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(NeighbourAttribute::Destination(neigh_addr(ip)));
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.ack("add neighbour", RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    pub fn neigh_del(&mut self, index: u32, ip: IpAddr) -> NlResult<bool> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        msg.header.ifindex = index;
        msg.attributes.push(NeighbourAttribute::Destination(neigh_addr(ip)));
        match self.ack("delete neighbour", RouteNetlinkMessage::DelNeighbour(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A permanent FDB entry on a VXLAN device: frames for `mac` go to `dst`.
    pub fn fdb_replace(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) -> NlResult<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(neigh_addr(dst)));
        self.ack("add fdb entry", RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    pub fn fdb_del(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) -> NlResult<bool> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(neigh_addr(dst)));
        match self.ack("delete fdb entry", RouteNetlinkMessage::DelNeighbour(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Neighbour entries (family Inet/Inet6) or FDB entries (Bridge) of one link.
    pub fn neighbours(&mut self, family: AddressFamily, index: u32) -> NlResult<Vec<NeighbourMessage>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        let answers = self.request("list neighbours", RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => Some(n),
                _ => None,
            })
            .collect())
    }
}

fn first_link(answers: Vec<RouteNetlinkMessage>) -> Option<LinkMessage> {
    answers.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(l),
        _ => None,
    })
}

pub fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

pub fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Destination, gateway and output link of a route message.
pub fn route_parts(r: &RouteMessage) -> (Option<IpAddr>, Option<IpAddr>, Option<u32>) {
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gw = route_addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    (dst, gw, oif)
}

pub fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// A veth's peer index (IFLA_LINK; in the peer's namespace when that differs).
pub fn link_peer_index(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

pub fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

pub fn link_mac(l: &LinkMessage) -> Option<[u8; 6]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) if m.len() == 6 => <[u8; 6]>::try_from(m.as_slice()).ok(),
        _ => None,
    })
}

pub fn format_mac(m: [u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}
