//! The dummy interface that holds service addresses (kube-proxy's
//! kube-ipvs0), over rtnetlink: IPVS only sees packets addressed to a local
//! address, so every ClusterIP, ExternalIP and LB IP is bound here.

use std::{collections::BTreeSet, net::IpAddr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::protocols::NETLINK_ROUTE;

use sluice_node::netlink::{Conn, NlError};

/// Our dummy interface.
pub const DUMMY: &str = "sluice-ipvs0";

pub struct Rtnl {
    conn: Conn,
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

impl Rtnl {
    pub fn open() -> Result<Self, NlError> {
        Ok(Self { conn: Conn::open(NETLINK_ROUTE)? })
    }

    fn ack(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NlError> {
        self.conn.request(op, msg, NLM_F_ACK | flags).map(drop)
    }

    /// The index of link `name`, if it exists.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.conn.request("look up a link", RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the dummy interface if needed, brings it up, returns its index.
    pub fn ensure_dummy(&mut self) -> Result<u32, NlError> {
        let index = match self.link_index(DUMMY)? {
            Some(i) => i,
            None => {
                let mut msg = LinkMessage::default();
                msg.attributes.push(LinkAttribute::IfName(DUMMY.to_owned()));
                msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]));
                match self.ack("create the dummy interface", RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                self.link_index(DUMMY)?
                    .ok_or_else(|| NlError::Transport(format!("{DUMMY} vanished after it was created")))?
            }
        };
        let mut up = LinkMessage::default();
        up.header.index = index;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        self.ack("bring the dummy interface up", RouteNetlinkMessage::SetLink(up), 0)?;
        Ok(index)
    }

    /// Deletes the dummy interface (and with it every address); false if
    /// there was none.
    pub fn delete_dummy(&mut self) -> Result<bool, NlError> {
        let Some(index) = self.link_index(DUMMY)? else { return Ok(false) };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.ack("delete the dummy interface", RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn addr_msg(index: u32, addr: IpAddr) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.family = family(addr);
        msg.header.prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        msg
    }

    pub fn add_addr(&mut self, index: u32, addr: IpAddr) -> Result<(), NlError> {
        self.ack(
            &format!("bind {addr} on {DUMMY}"),
            RouteNetlinkMessage::NewAddress(Self::addr_msg(index, addr)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    pub fn del_addr(&mut self, index: u32, addr: IpAddr) -> Result<(), NlError> {
        match self.ack(&format!("unbind {addr} from {DUMMY}"), RouteNetlinkMessage::DelAddress(Self::addr_msg(index, addr)), 0) {
            Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r,
        }
    }

    /// Addresses of every link, or of link `only`.
    pub fn addrs(&mut self, only: Option<u32>) -> Result<BTreeSet<IpAddr>, NlError> {
        let answers =
            self.conn.request("list addresses", RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if only.is_none_or(|i| i == a.header.index) => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }
}
