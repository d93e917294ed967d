//! Socket-level load balancing for ClusterIP traffic: one generic
//! `lb`/`revnat` over the address family ([`Family`], implemented by [`V4`]
//! and [`V6`]), so IPv4 and IPv6 cannot drift apart.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, ServiceKey4, ServiceKey6, ServiceValue, SockRevNat,
    SockRevNatKey4, SockRevNatKey6, BACKEND_ACTIVE, PROTO_TCP, PROTO_UDP, SCOPE_CLUSTER, SVC_FLAG_AFFINITY,
};

use crate::maps::{SLC_AFF, SLC_BE4, SLC_BE6, SLC_RNAT4, SLC_RNAT6, SLC_SKRNAT4, SLC_SKRNAT6, SLC_SVC4, SLC_SVC6};

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;
const NSEC_PER_SEC: u64 = 1_000_000_000;

/// What differs between IPv4 and IPv6: where the address sits in the
/// context, and which maps hold that family's services, backends and
/// reverse translations.
trait Family {
    type Key: Copy;
    type Backend: Copy;

    /// The slot-0 key of the frontend the socket addresses.
    fn frontend_key(sa: &bpf_sock_addr, proto: u8) -> Self::Key;
    fn set_slot(key: &mut Self::Key, slot: u16);
    fn service(key: &Self::Key) -> Option<ServiceValue>;
    fn backend(id: u32) -> Option<Self::Backend>;
    fn is_active(be: &Self::Backend) -> bool;
    /// Points the socket at the backend and remembers, for `cookie`, which
    /// frontend it stands for.
    fn translate(sa: &mut bpf_sock_addr, be: &Self::Backend, cookie: u64, revnat_id: u32);
    /// Shows the frontend again where the socket sees a backend it was translated to.
    fn translate_back(sa: &mut bpf_sock_addr, cookie: u64);
}

struct V4;
struct V6;

impl Family for V4 {
    type Key = ServiceKey4;
    type Backend = Backend4;

    #[inline(always)]
    fn frontend_key(sa: &bpf_sock_addr, proto: u8) -> ServiceKey4 {
        ServiceKey4 { addr: sa.user_ip4, port: sa.user_port as u16, proto, scope: SCOPE_CLUSTER, slot: 0, _pad: 0 }
    }
    #[inline(always)]
    fn set_slot(key: &mut ServiceKey4, slot: u16) {
        key.slot = slot;
    }
    #[inline(always)]
    fn service(key: &ServiceKey4) -> Option<ServiceValue> {
        // SAFETY: the value is copied out at once.
        unsafe { SLC_SVC4.get(key) }.copied()
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<Backend4> {
        // SAFETY: the value is copied out at once.
        unsafe { SLC_BE4.get(&id) }.copied()
    }
    #[inline(always)]
    fn is_active(be: &Backend4) -> bool {
        be.state == BACKEND_ACTIVE
    }
    #[inline(always)]
    fn translate(sa: &mut bpf_sock_addr, be: &Backend4, cookie: u64, revnat_id: u32) {
        sa.user_ip4 = be.addr;
        sa.user_port = u32::from(be.port);
        let key = SockRevNatKey4 { cookie, addr: be.addr, port: be.port, _pad: 0 };
        let _ = SLC_SKRNAT4.insert(&key, &SockRevNat { revnat_id, _pad: 0 }, 0);
    }
    #[inline(always)]
    fn translate_back(sa: &mut bpf_sock_addr, cookie: u64) {
        let key = SockRevNatKey4 { cookie, addr: sa.user_ip4, port: sa.user_port as u16, _pad: 0 };
        // SAFETY: values copied out at once.
        let Some(rn) = (unsafe { SLC_SKRNAT4.get(&key) }).copied() else { return };
        if let Some(front) = unsafe { SLC_RNAT4.get(&rn.revnat_id) } {
            sa.user_ip4 = front.addr;
            sa.user_port = u32::from(front.port);
        }
    }
}

impl Family for V6 {
    type Key = ServiceKey6;
    type Backend = Backend6;

    #[inline(always)]
    fn frontend_key(sa: &bpf_sock_addr, proto: u8) -> ServiceKey6 {
        ServiceKey6 { addr: read_ip6(sa), port: sa.user_port as u16, proto, scope: SCOPE_CLUSTER, slot: 0, _pad: 0 }
    }
    #[inline(always)]
    fn set_slot(key: &mut ServiceKey6, slot: u16) {
        key.slot = slot;
    }
    #[inline(always)]
    fn service(key: &ServiceKey6) -> Option<ServiceValue> {
        // SAFETY: the value is copied out at once.
        unsafe { SLC_SVC6.get(key) }.copied()
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<Backend6> {
        // SAFETY: the value is copied out at once.
        unsafe { SLC_BE6.get(&id) }.copied()
    }
    #[inline(always)]
    fn is_active(be: &Backend6) -> bool {
        be.state == BACKEND_ACTIVE
    }
    #[inline(always)]
    fn translate(sa: &mut bpf_sock_addr, be: &Backend6, cookie: u64, revnat_id: u32) {
        write_ip6(sa, &be.addr);
        sa.user_port = u32::from(be.port);
        let key = SockRevNatKey6 { cookie, addr: be.addr, port: be.port, _pad: [0; 6] };
        let _ = SLC_SKRNAT6.insert(&key, &SockRevNat { revnat_id, _pad: 0 }, 0);
    }
    #[inline(always)]
    fn translate_back(sa: &mut bpf_sock_addr, cookie: u64) {
        let key = SockRevNatKey6 { cookie, addr: read_ip6(sa), port: sa.user_port as u16, _pad: [0; 6] };
        // SAFETY: values copied out at once.
        let Some(rn) = (unsafe { SLC_SKRNAT6.get(&key) }).copied() else { return };
        if let Some(front) = unsafe { SLC_RNAT6.get(&rn.revnat_id) } {
            let addr = front.addr;
            let port = front.port;
            write_ip6(sa, &addr);
            sa.user_port = u32::from(port);
        }
    }
}

#[inline(always)]
fn read_ip6(sa: &bpf_sock_addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    // Four 4-byte reads: the verifier only allows word access to user_ip6.
    let w = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
fn write_ip6(sa: &mut bpf_sock_addr, addr: &[u8; 16]) {
    sa.user_ip6[0] = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
    sa.user_ip6[1] = u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]);
    sa.user_ip6[2] = u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]);
    sa.user_ip6[3] = u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]);
}

/// Fail the syscall with `errno` instead of the EPERM a plain reject gives,
/// so a client of a Service without endpoints sees "connection refused" at once.
#[inline(always)]
fn reject(errno: i32) -> i32 {
    // SAFETY: helper call with a plain integer.
    unsafe { bpf_set_retval(-errno) };
    REJECT
}

#[inline(always)]
fn sa(ctx: &SockAddrContext) -> &mut bpf_sock_addr {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    unsafe { &mut *ctx.sock_addr }
}

#[inline(always)]
fn l4_proto(sa: &bpf_sock_addr) -> Option<u8> {
    let proto = sa.protocol;
    if proto == u32::from(PROTO_TCP) || proto == u32::from(PROTO_UDP) {
        Some(proto as u8)
    } else {
        None
    }
}

/// A random backend slot of a frontend (1..=count).
#[inline(always)]
fn pick_slot(fe: &ServiceValue) -> u16 {
    // SAFETY: helper call without arguments.
    let r = unsafe { bpf_get_prandom_u32() };
    ((r % fe.count) + 1) as u16
}

/// The client's remembered (backend id, slot) for this frontend, if not expired.
#[inline(always)]
fn affinity_lookup(ctx: &SockAddrContext, fe: &ServiceValue) -> (AffinityKey, Option<(u32, u16)>) {
    // SAFETY: sock_addr programs may ask for the netns cookie of their context.
    let client_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = AffinityKey { client_cookie, revnat_id: fe.revnat_id, _pad: 0 };
    // SAFETY: the value is copied out at once.
    let hit = unsafe { SLC_AFF.get(&key) }.and_then(|v| {
        let now = unsafe { bpf_ktime_get_ns() };
        let timeout = u64::from(fe.affinity_timeout) * NSEC_PER_SEC;
        if now.wrapping_sub(v.last_used_ns) <= timeout && v.slot >= 1 && v.slot <= fe.count {
            Some((v.backend_id, v.slot as u16))
        } else {
            None
        }
    });
    (key, hit)
}

#[inline(always)]
fn affinity_store(key: &AffinityKey, backend_id: u32, slot: u16) {
    // SAFETY: helper without arguments.
    let value = AffinityValue { backend_id, slot: u32::from(slot), last_used_ns: unsafe { bpf_ktime_get_ns() } };
    let _ = SLC_AFF.insert(key, &value, 0);
}

/// connect/sendmsg: a socket addressing a frontend is pointed at one of its
/// backends (the affine one while valid, else a random slot).
#[inline(always)]
fn lb<F: Family>(ctx: &SockAddrContext) -> i32 {
    let sa = sa(ctx);
    let Some(proto) = l4_proto(sa) else { return ALLOW };
    let mut key = F::frontend_key(sa, proto);
    let Some(fe) = F::service(&key) else { return ALLOW };
    if fe.count == 0 {
        return reject(ECONNREFUSED);
    }
    let affinity = fe.flags & SVC_FLAG_AFFINITY != 0;
    let (aff_key, hit) = if affinity {
        affinity_lookup(ctx, &fe)
    } else {
        (AffinityKey { client_cookie: 0, revnat_id: 0, _pad: 0 }, None)
    };
    // The remembered backend still counts only if its slot still holds it.
    let mut slot = 0;
    let mut backend = hit.and_then(|(id, s)| {
        slot = s;
        F::set_slot(&mut key, s);
        let held = F::service(&key)?;
        (held.backend_id == id).then_some(id)
    });
    let mut be = backend.and_then(F::backend);
    if be.is_none_or(|b| !F::is_active(&b)) {
        slot = pick_slot(&fe);
        F::set_slot(&mut key, slot);
        // A shrinking service may have dropped this slot between our two
        // lookups; slot 1 always exists while count > 0.
        let held = F::service(&key).or_else(|| {
            slot = 1;
            F::set_slot(&mut key, 1);
            F::service(&key)
        });
        backend = held.map(|s| s.backend_id);
        be = backend.and_then(F::backend);
    }
    let (Some(id), Some(be)) = (backend, be) else { return reject(EHOSTUNREACH) };
    if affinity {
        affinity_store(&aff_key, id, slot);
    }
    // SAFETY: sock_addr programs may ask for their socket's cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    F::translate(sa, &be, cookie, fe.revnat_id);
    ALLOW
}

/// recvmsg/getpeername: the application sees the frontend, never the backend.
#[inline(always)]
fn revnat<F: Family>(ctx: &SockAddrContext) -> i32 {
    let sa = sa(ctx);
    if l4_proto(sa).is_some() {
        // SAFETY: sock_addr programs may ask for their socket's cookie.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        F::translate_back(sa, cookie);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn slc_connect4(ctx: SockAddrContext) -> i32 {
    lb::<V4>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn slc_sendmsg4(ctx: SockAddrContext) -> i32 {
    lb::<V4>(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn slc_recvmsg4(ctx: SockAddrContext) -> i32 {
    revnat::<V4>(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn slc_getpeername4(ctx: SockAddrContext) -> i32 {
    revnat::<V4>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn slc_connect6(ctx: SockAddrContext) -> i32 {
    lb::<V6>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn slc_sendmsg6(ctx: SockAddrContext) -> i32 {
    lb::<V6>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn slc_recvmsg6(ctx: SockAddrContext) -> i32 {
    revnat::<V6>(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn slc_getpeername6(ctx: SockAddrContext) -> i32 {
    revnat::<V6>(&ctx)
}
