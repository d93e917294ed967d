//! The IPVS generic netlink family (`linux/ip_vs.h`): the message layout,
//! typed virtual services and real servers, and a blocking socket that
//! resolves the family and sends requests, dumps and acked commands.
//!
//! No kept crate covers this family (crates.io has only abandoned attempts),
//! so the few commands kube-proxy's ipvs mode needs are written here over
//! `netlink-packet-core`'s message and attribute types and `netlink-sys`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_packet_core::{
    DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader, Nla, NlaBuffer, NlasIterator, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP,
};
use netlink_sys::protocols::NETLINK_GENERIC;

use sluice_node::netlink::{Conn, NlError};

// The controller family (linux/genetlink.h).
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

pub const IPVS_GENL_NAME: &str = "IPVS";
pub const IPVS_GENL_VERSION: u8 = 1;

// Commands (enum in linux/ip_vs.h).
pub const IPVS_CMD_NEW_SERVICE: u8 = 1;
pub const IPVS_CMD_SET_SERVICE: u8 = 2;
pub const IPVS_CMD_DEL_SERVICE: u8 = 3;
pub const IPVS_CMD_GET_SERVICE: u8 = 4;
pub const IPVS_CMD_NEW_DEST: u8 = 5;
pub const IPVS_CMD_SET_DEST: u8 = 6;
pub const IPVS_CMD_DEL_DEST: u8 = 7;
pub const IPVS_CMD_GET_DEST: u8 = 8;

// Top-level attributes of a command.
pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
pub const IPVS_CMD_ATTR_DEST: u16 = 2;

// Attributes nested in IPVS_CMD_ATTR_SERVICE.
pub const IPVS_SVC_ATTR_AF: u16 = 1;
pub const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
pub const IPVS_SVC_ATTR_ADDR: u16 = 3;
pub const IPVS_SVC_ATTR_PORT: u16 = 4;
pub const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
pub const IPVS_SVC_ATTR_FLAGS: u16 = 7;
pub const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
pub const IPVS_SVC_ATTR_NETMASK: u16 = 9;

// Attributes nested in IPVS_CMD_ATTR_DEST.
pub const IPVS_DEST_ATTR_ADDR: u16 = 1;
pub const IPVS_DEST_ATTR_PORT: u16 = 2;
pub const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
pub const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
pub const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
pub const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
pub const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
pub const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
pub const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;

/// `IP_VS_SVC_F_PERSISTENT`: session affinity by client address.
pub const IP_VS_SVC_F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_CONN_F_MASQ`: forward by NAT (the only method kube-proxy uses).
pub const IP_VS_CONN_F_MASQ: u32 = 0;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// One attribute: raw bytes or a nested list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    Bytes(u16, Vec<u8>),
    Nested(u16, Vec<Attr>),
}

impl Attr {
    fn u16(kind: u16, v: u16) -> Self {
        Attr::Bytes(kind, v.to_ne_bytes().to_vec())
    }
    fn u32(kind: u16, v: u32) -> Self {
        Attr::Bytes(kind, v.to_ne_bytes().to_vec())
    }
    fn be16(kind: u16, v: u16) -> Self {
        Attr::Bytes(kind, v.to_be_bytes().to_vec())
    }
    fn string(kind: u16, s: &str) -> Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        Attr::Bytes(kind, b)
    }
    /// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first four.
    fn addr(kind: u16, a: IpAddr) -> Self {
        let mut b = vec![0u8; 16];
        match a {
            IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
        }
        Attr::Bytes(kind, b)
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Bytes(_, b) => b.len(),
            Attr::Nested(_, a) => a.as_slice().buffer_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Attr::Bytes(k, _) | Attr::Nested(k, _) => *k,
        }
    }
    fn is_nested(&self) -> bool {
        matches!(self, Attr::Nested(..))
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Bytes(_, b) => buffer[..b.len()].copy_from_slice(b),
            Attr::Nested(_, a) => a.as_slice().emit(buffer),
        }
    }
}

/// A generic netlink message: family id, `genlmsghdr` and attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenlMessage {
    pub family: u16,
    pub cmd: u8,
    pub version: u8,
    pub attrs: Vec<Attr>,
}

/// Size of `struct genlmsghdr` (cmd, version, reserved u16).
const GENL_HDRLEN: usize = 4;

impl NetlinkSerializable for GenlMessage {
    fn message_type(&self) -> u16 {
        self.family
    }
    fn buffer_len(&self) -> usize {
        GENL_HDRLEN + self.attrs.as_slice().buffer_len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.cmd;
        buffer[1] = self.version;
        buffer[2] = 0;
        buffer[3] = 0;
        self.attrs.as_slice().emit(&mut buffer[GENL_HDRLEN..]);
    }
}

impl NetlinkDeserializable for GenlMessage {
    type Error = DecodeError;
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        if payload.len() < GENL_HDRLEN {
            return Err(DecodeError::from("generic netlink message shorter than its header"));
        }
        Ok(Self {
            family: header.message_type,
            cmd: payload[0],
            version: payload[1],
            attrs: parse_attrs(&payload[GENL_HDRLEN..], &|_| false)?,
        })
    }
}

/// Attributes of `buf`; those `nested(kind)` says are nested are parsed
/// one level further (IPVS replies nest services and dests one level deep).
fn parse_attrs(buf: &[u8], nested: &dyn Fn(u16) -> bool) -> Result<Vec<Attr>, DecodeError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(buf) {
        let nla: NlaBuffer<&[u8]> = nla?;
        let kind = nla.kind() & netlink_packet_core::NLA_TYPE_MASK;
        if nla.nested_flag() || nested(kind) {
            out.push(Attr::Nested(kind, parse_attrs(nla.value(), &|_| false)?));
        } else {
            out.push(Attr::Bytes(kind, nla.value().to_vec()));
        }
    }
    Ok(out)
}

fn find(attrs: &[Attr], kind: u16) -> Option<&Attr> {
    attrs.iter().find(|a| a.kind() == kind)
}

fn bytes(attrs: &[Attr], kind: u16) -> Option<&[u8]> {
    match find(attrs, kind)? {
        Attr::Bytes(_, b) => Some(b),
        Attr::Nested(..) => None,
    }
}

/// A nested attribute's children, whether or not the kernel set the nested flag.
fn nested(attrs: &[Attr], kind: u16) -> Result<Option<Vec<Attr>>, DecodeError> {
    match find(attrs, kind) {
        None => Ok(None),
        Some(Attr::Nested(_, a)) => Ok(Some(a.clone())),
        Some(Attr::Bytes(_, b)) => Ok(Some(parse_attrs(b, &|_| false)?)),
    }
}

fn get_u16(attrs: &[Attr], kind: u16) -> Option<u16> {
    bytes(attrs, kind).and_then(|b| Some(u16::from_ne_bytes(b.get(..2)?.try_into().ok()?)))
}

fn get_u32(attrs: &[Attr], kind: u16) -> Option<u32> {
    bytes(attrs, kind).and_then(|b| Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?)))
}

fn get_be16(attrs: &[Attr], kind: u16) -> Option<u16> {
    bytes(attrs, kind).and_then(|b| Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?)))
}

fn get_addr(attrs: &[Attr], kind: u16, af: u16) -> Option<IpAddr> {
    let b = bytes(attrs, kind)?;
    match af {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?))),
        _ => None,
    }
}

fn af_of(a: IpAddr) -> u16 {
    if a.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

/// What identifies a virtual service: address, port and IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    pub addr: IpAddr,
    pub port: u16,
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    pub protocol: u16,
}

/// A virtual service as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: ServiceId,
    pub scheduler: String,
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with `IP_VS_SVC_F_PERSISTENT`).
    pub timeout: u32,
}

/// A real server of a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// Connection counters (reported by the kernel; ignored when sent).
    pub active_conns: u32,
    pub inactive_conns: u32,
}

impl ServiceId {
    /// The attributes that identify the service (enough for lookups).
    fn attrs(&self) -> Vec<Attr> {
        vec![
            Attr::u16(IPVS_SVC_ATTR_AF, af_of(self.addr)),
            Attr::u16(IPVS_SVC_ATTR_PROTOCOL, self.protocol),
            Attr::addr(IPVS_SVC_ATTR_ADDR, self.addr),
            Attr::be16(IPVS_SVC_ATTR_PORT, self.port),
        ]
    }
}

impl Service {
    /// The full entry NEW_SERVICE and SET_SERVICE require.
    fn attrs(&self) -> Vec<Attr> {
        let mut a = self.id.attrs();
        a.push(Attr::string(IPVS_SVC_ATTR_SCHED_NAME, &self.scheduler));
        // struct ip_vs_flags { __u32 flags; __u32 mask; }: set every bit we own.
        let mut flags = self.flags.to_ne_bytes().to_vec();
        flags.extend_from_slice(&u32::MAX.to_ne_bytes());
        a.push(Attr::Bytes(IPVS_SVC_ATTR_FLAGS, flags));
        a.push(Attr::u32(IPVS_SVC_ATTR_TIMEOUT, self.timeout));
        // IPv4: a netmask in network order; IPv6: a prefix length.
        let netmask = if self.id.addr.is_ipv4() { u32::MAX } else { 128 };
        a.push(Attr::u32(IPVS_SVC_ATTR_NETMASK, netmask));
        a
    }

    fn parse(attrs: &[Attr]) -> Option<Self> {
        let af = get_u16(attrs, IPVS_SVC_ATTR_AF)?;
        let addr = get_addr(attrs, IPVS_SVC_ATTR_ADDR, af)?;
        let flags = bytes(attrs, IPVS_SVC_ATTR_FLAGS)
            .and_then(|b| Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?)))
            .unwrap_or(0);
        let scheduler = bytes(attrs, IPVS_SVC_ATTR_SCHED_NAME)
            .map(|b| String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned())
            .unwrap_or_default();
        Some(Self {
            id: ServiceId {
                addr,
                // fwmark services have no port or protocol: not ours, and skipped by the caller.
                port: get_be16(attrs, IPVS_SVC_ATTR_PORT)?,
                protocol: get_u16(attrs, IPVS_SVC_ATTR_PROTOCOL)?,
            },
            scheduler,
            flags,
            timeout: get_u32(attrs, IPVS_SVC_ATTR_TIMEOUT).unwrap_or(0),
        })
    }
}

impl Dest {
    fn attrs(&self) -> Vec<Attr> {
        vec![
            Attr::addr(IPVS_DEST_ATTR_ADDR, self.addr),
            Attr::be16(IPVS_DEST_ATTR_PORT, self.port),
            Attr::u32(IPVS_DEST_ATTR_FWD_METHOD, IP_VS_CONN_F_MASQ),
            Attr::u32(IPVS_DEST_ATTR_WEIGHT, self.weight),
            Attr::u32(IPVS_DEST_ATTR_U_THRESH, 0),
            Attr::u32(IPVS_DEST_ATTR_L_THRESH, 0),
            Attr::u16(IPVS_DEST_ATTR_ADDR_FAMILY, af_of(self.addr)),
        ]
    }

    fn parse(attrs: &[Attr], svc_af: u16) -> Option<Self> {
        let af = get_u16(attrs, IPVS_DEST_ATTR_ADDR_FAMILY).unwrap_or(svc_af);
        Some(Self {
            addr: get_addr(attrs, IPVS_DEST_ATTR_ADDR, af)?,
            port: get_be16(attrs, IPVS_DEST_ATTR_PORT)?,
            weight: get_u32(attrs, IPVS_DEST_ATTR_WEIGHT).unwrap_or(0),
            active_conns: get_u32(attrs, IPVS_DEST_ATTR_ACTIVE_CONNS).unwrap_or(0),
            inactive_conns: get_u32(attrs, IPVS_DEST_ATTR_INACT_CONNS).unwrap_or(0),
        })
    }
}

/// The command messages, without the family id (filled in by the socket).
pub fn new_service(s: &Service) -> (u8, Vec<Attr>) {
    (IPVS_CMD_NEW_SERVICE, vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, s.attrs())])
}

pub fn set_service(s: &Service) -> (u8, Vec<Attr>) {
    (IPVS_CMD_SET_SERVICE, vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, s.attrs())])
}

pub fn del_service(id: &ServiceId) -> (u8, Vec<Attr>) {
    (IPVS_CMD_DEL_SERVICE, vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, id.attrs())])
}

pub fn new_dest(id: &ServiceId, d: &Dest) -> (u8, Vec<Attr>) {
    (IPVS_CMD_NEW_DEST, vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, id.attrs()), Attr::Nested(IPVS_CMD_ATTR_DEST, d.attrs())])
}

pub fn set_dest(id: &ServiceId, d: &Dest) -> (u8, Vec<Attr>) {
    (IPVS_CMD_SET_DEST, vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, id.attrs()), Attr::Nested(IPVS_CMD_ATTR_DEST, d.attrs())])
}

pub fn del_dest(id: &ServiceId, d: &Dest) -> (u8, Vec<Attr>) {
    (IPVS_CMD_DEL_DEST, vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, id.attrs()), Attr::Nested(IPVS_CMD_ATTR_DEST, d.attrs())])
}

/// A failure talking to the IPVS family.
#[derive(Debug, thiserror::Error)]
pub enum GenlError {
    #[error(
        "the kernel has no IPVS: CONFIG_IP_VS is not built in and module ip_vs is not loaded \
         (generic netlink family \"IPVS\" not found; try `modprobe ip_vs`)"
    )]
    NoIpvs,
    #[error(transparent)]
    Netlink(#[from] NlError),
}

impl GenlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink(e) => e.errno(),
            Self::NoIpvs => None,
        }
    }
}

/// A generic netlink socket bound to the IPVS family of the calling
/// thread's network namespace.
pub struct IpvsSocket {
    conn: Conn,
    family: u16,
}

impl IpvsSocket {
    /// Opens a socket and resolves the IPVS family (the kernel loads the
    /// module on demand when it can).
    pub fn open() -> Result<Self, GenlError> {
        let mut conn = Conn::open(NETLINK_GENERIC)?;
        let lookup = GenlMessage {
            family: GENL_ID_CTRL,
            cmd: CTRL_CMD_GETFAMILY,
            version: 1,
            attrs: vec![Attr::string(CTRL_ATTR_FAMILY_NAME, IPVS_GENL_NAME)],
        };
        let reply = match conn.request("resolve the IPVS family", lookup, 0) {
            Ok(r) => r,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Err(GenlError::NoIpvs),
            Err(e) => return Err(e.into()),
        };
        let family = reply.iter().find_map(|m| get_u16(&m.attrs, CTRL_ATTR_FAMILY_ID)).ok_or(GenlError::NoIpvs)?;
        Ok(Self { conn, family })
    }

    fn msg(&self, cmd: u8, attrs: Vec<Attr>) -> GenlMessage {
        GenlMessage { family: self.family, cmd, version: IPVS_GENL_VERSION, attrs }
    }

    /// Runs one IPVS command and waits for its ack.
    pub fn command(&mut self, op: &str, (cmd, attrs): (u8, Vec<Attr>)) -> Result<(), GenlError> {
        let m = self.msg(cmd, attrs);
        self.conn.request(op, m, NLM_F_ACK)?;
        Ok(())
    }

    /// Every virtual service (fwmark services are skipped).
    pub fn services(&mut self) -> Result<Vec<Service>, GenlError> {
        let m = self.msg(IPVS_CMD_GET_SERVICE, vec![]);
        let replies = self.conn.request("list virtual services", m, NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in replies {
            let attrs = nested(&m.attrs, IPVS_CMD_ATTR_SERVICE)
                .map_err(|e| NlError::Transport(format!("decoding a service: {e}")))?;
            if let Some(s) = attrs.as_deref().and_then(Service::parse) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The real servers of one virtual service.
    pub fn dests(&mut self, id: &ServiceId) -> Result<Vec<Dest>, GenlError> {
        let m = self.msg(IPVS_CMD_GET_DEST, vec![Attr::Nested(IPVS_CMD_ATTR_SERVICE, id.attrs())]);
        let replies = self.conn.request("list real servers", m, NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in replies {
            let attrs = nested(&m.attrs, IPVS_CMD_ATTR_DEST)
                .map_err(|e| NlError::Transport(format!("decoding a real server: {e}")))?;
            if let Some(d) = attrs.as_deref().and_then(|a| Dest::parse(a, af_of(id.addr))) {
                out.push(d);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_node::netlink::encode;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};

    fn svc() -> Service {
        Service {
            id: ServiceId { addr: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10)), port: 80, protocol: 6 },
            scheduler: "rr".into(),
            flags: IP_VS_SVC_F_PERSISTENT,
            timeout: 10_800,
        }
    }

    /// struct nlattr { u16 nla_len; u16 nla_type; } + value, padded to 4.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn new_service_has_the_layout_of_ip_vs_h() {
        let (cmd, attrs) = new_service(&svc());
        let bytes = encode(GenlMessage { family: 0x22, cmd, version: 1, attrs }, NLM_F_REQUEST | NLM_F_ACK, 7);
        let mut addr = vec![198, 19, 0, 10];
        addr.resize(16, 0);
        let mut flags = 1u32.to_ne_bytes().to_vec();
        flags.extend_from_slice(&[0xff; 4]);
        let inner = [
            nla(IPVS_SVC_ATTR_AF, &2u16.to_ne_bytes()),
            nla(IPVS_SVC_ATTR_PROTOCOL, &6u16.to_ne_bytes()),
            nla(IPVS_SVC_ATTR_ADDR, &addr),
            nla(IPVS_SVC_ATTR_PORT, &[0, 80]),
            nla(IPVS_SVC_ATTR_SCHED_NAME, b"rr\0"),
            nla(IPVS_SVC_ATTR_FLAGS, &flags),
            nla(IPVS_SVC_ATTR_TIMEOUT, &10_800u32.to_ne_bytes()),
            nla(IPVS_SVC_ATTR_NETMASK, &[0xff; 4]),
        ]
        .concat();
        // The nested flag (0x8000) is set on IPVS_CMD_ATTR_SERVICE.
        let outer = nla(IPVS_CMD_ATTR_SERVICE | 0x8000, &inner);
        let mut want = Vec::new();
        want.extend_from_slice(&((16 + 4 + outer.len()) as u32).to_ne_bytes()); // nlmsg_len
        want.extend_from_slice(&0x22u16.to_ne_bytes()); // nlmsg_type: the family id
        want.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes()); // seq
        want.extend_from_slice(&0u32.to_ne_bytes()); // pid
        want.extend_from_slice(&[IPVS_CMD_NEW_SERVICE, 1, 0, 0]); // genlmsghdr
        want.extend_from_slice(&outer);
        assert_eq!(bytes, want);
    }

    #[test]
    fn new_dest_carries_the_service_id_and_a_full_dest_entry() {
        let d = Dest {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 10)),
            port: 8080,
            weight: 1,
            active_conns: 5,
            inactive_conns: 0,
        };
        let (cmd, attrs) = new_dest(&svc().id, &d);
        assert_eq!(cmd, IPVS_CMD_NEW_DEST);
        let Attr::Nested(IPVS_CMD_ATTR_SERVICE, s) = &attrs[0] else { panic!("service first: {attrs:?}") };
        assert_eq!(s.len(), 4, "lookups carry af, protocol, addr, port only: {s:?}");
        let Attr::Nested(IPVS_CMD_ATTR_DEST, d_attrs) = &attrs[1] else { panic!("dest second: {attrs:?}") };
        assert_eq!(bytes(d_attrs, IPVS_DEST_ATTR_PORT), Some(&[0x1f, 0x90][..]), "port 8080 big-endian");
        assert_eq!(get_u32(d_attrs, IPVS_DEST_ATTR_FWD_METHOD), Some(IP_VS_CONN_F_MASQ));
        assert_eq!(get_u32(d_attrs, IPVS_DEST_ATTR_WEIGHT), Some(1));
        for required in [IPVS_DEST_ATTR_U_THRESH, IPVS_DEST_ATTR_L_THRESH, IPVS_DEST_ATTR_ADDR] {
            assert!(find(d_attrs, required).is_some(), "attribute {required} is required by the kernel");
        }
        assert!(find(d_attrs, IPVS_DEST_ATTR_ACTIVE_CONNS).is_none(), "counters are never sent");
    }

    #[test]
    fn a_dumped_service_and_dest_decode_back() {
        // A reply as the kernel sends it: IPVS_CMD_NEW_SERVICE with the nested service.
        let (_, attrs) = new_service(&svc());
        let bytes = encode(GenlMessage { family: 0x22, cmd: IPVS_CMD_NEW_SERVICE, version: 1, attrs }, 0, 1);
        let msg = NetlinkMessage::<GenlMessage>::deserialize(&bytes).unwrap();
        let NetlinkPayload::InnerMessage(m) = msg.payload else { panic!("an inner message") };
        let s = Service::parse(&nested(&m.attrs, IPVS_CMD_ATTR_SERVICE).unwrap().unwrap()).unwrap();
        assert_eq!(s, svc());

        let v6 = Dest {
            addr: "2001:db8:1::10".parse().unwrap(),
            port: 53,
            weight: 0,
            active_conns: 0,
            inactive_conns: 0,
        };
        let mut d_attrs = v6.attrs();
        d_attrs.push(Attr::u32(IPVS_DEST_ATTR_ACTIVE_CONNS, 3));
        d_attrs.push(Attr::u32(IPVS_DEST_ATTR_INACT_CONNS, 4));
        let bytes = encode(
            GenlMessage { family: 0x22, cmd: IPVS_CMD_NEW_DEST, version: 1, attrs: vec![Attr::Nested(IPVS_CMD_ATTR_DEST, d_attrs)] },
            0,
            1,
        );
        let msg = NetlinkMessage::<GenlMessage>::deserialize(&bytes).unwrap();
        let NetlinkPayload::InnerMessage(m) = msg.payload else { panic!("an inner message") };
        let d = Dest::parse(&nested(&m.attrs, IPVS_CMD_ATTR_DEST).unwrap().unwrap(), AF_INET).unwrap();
        assert_eq!(d, Dest { active_conns: 3, inactive_conns: 4, ..v6 });
    }

    #[test]
    fn family_lookup_asks_nlctrl_for_ipvs_by_name() {
        let bytes = encode(
            GenlMessage {
                family: GENL_ID_CTRL,
                cmd: CTRL_CMD_GETFAMILY,
                version: 1,
                attrs: vec![Attr::string(CTRL_ATTR_FAMILY_NAME, IPVS_GENL_NAME)],
            },
            NLM_F_REQUEST,
            1,
        );
        assert_eq!(&bytes[4..6], &0x10u16.to_ne_bytes());
        assert_eq!(&bytes[16..20], &[3, 1, 0, 0]);
        assert_eq!(&bytes[20..], &nla(CTRL_ATTR_FAMILY_NAME, b"IPVS\0")[..]);
    }

    #[test]
    fn truncated_replies_are_errors_not_panics() {
        let header = NetlinkHeader::default();
        assert!(GenlMessage::deserialize(&header, &[1, 2]).is_err());
        // An attribute claiming more bytes than there are.
        let mut payload = vec![IPVS_CMD_NEW_SERVICE, 1, 0, 0];
        payload.extend_from_slice(&40u16.to_ne_bytes());
        payload.extend_from_slice(&1u16.to_ne_bytes());
        assert!(GenlMessage::deserialize(&header, &payload).is_err());
    }
}
