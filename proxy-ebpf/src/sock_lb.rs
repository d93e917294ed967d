use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::SockAddrContext,
    EbpfContext as _,
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, RevNat4, RevNat6, ServiceKey4, ServiceKey6,
    ServiceValue, SockRevNat, SockRevNatKey4, SockRevNatKey6, BACKEND_ACTIVE, PROTO_TCP, PROTO_UDP,
    SCOPE_CLUSTER, SVC_FLAG_AFFINITY,
};

// Sizes here are defaults; the agent overrides them from its flags.
// SLC_SVC4 and SLC_BE4 are pub(crate): the tc programs (tc.rs) look up
// external frontends (scope SCOPE_EXTERNAL) and backends in the same maps.
#[map]
pub(crate) static SLC_SVC4: HashMap<ServiceKey4, ServiceValue> = HashMap::pinned(65536, 0);
#[map]
static SLC_SVC6: HashMap<ServiceKey6, ServiceValue> = HashMap::pinned(65536, 0);
#[map]
pub(crate) static SLC_BE4: HashMap<u32, Backend4> = HashMap::pinned(65536, 0);
#[map]
static SLC_BE6: HashMap<u32, Backend6> = HashMap::pinned(65536, 0);
#[map]
static SLC_RNAT4: HashMap<u32, RevNat4> = HashMap::pinned(65536, 0);
#[map]
static SLC_RNAT6: HashMap<u32, RevNat6> = HashMap::pinned(65536, 0);
#[map]
static SLC_SKRNAT4: LruHashMap<SockRevNatKey4, SockRevNat> = LruHashMap::pinned(262_144, 0);
#[map]
static SLC_SKRNAT6: LruHashMap<SockRevNatKey6, SockRevNat> = LruHashMap::pinned(262_144, 0);
#[map]
static SLC_AFF: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(65536, 0);

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;
const NSEC_PER_SEC: u64 = 1_000_000_000;

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

/// Picks a backend id for a frontend: the affine one if still valid, else a random slot.
#[inline(always)]
fn pick_slot(fe: &ServiceValue) -> u16 {
    // SAFETY: helper call without arguments.
    let r = unsafe { bpf_get_prandom_u32() };
    ((r % fe.count) + 1) as u16
}

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
    let value = AffinityValue { backend_id, slot: u32::from(slot), last_used_ns: unsafe { bpf_ktime_get_ns() } };
    let _ = SLC_AFF.insert(key, &value, 0);
}

#[inline(always)]
fn lb4(ctx: &SockAddrContext) -> i32 {
    let sa = sa(ctx);
    let Some(proto) = l4_proto(sa) else { return ALLOW };
    let mut key = ServiceKey4 {
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        proto,
        scope: SCOPE_CLUSTER,
        slot: 0,
        _pad: 0,
    };
    // SAFETY: values are copied out before the next map operation.
    let Some(fe) = (unsafe { SLC_SVC4.get(&key) }).copied() else { return ALLOW };
    if fe.count == 0 {
        return reject(ECONNREFUSED);
    }
    let (aff_key, hit) = if fe.flags & SVC_FLAG_AFFINITY != 0 {
        affinity_lookup(ctx, &fe)
    } else {
        (AffinityKey { client_cookie: 0, revnat_id: 0, _pad: 0 }, None)
    };
    // The remembered backend still counts only if its slot still holds it.
    let mut backend = hit.and_then(|(id, slot)| {
        key.slot = slot;
        // SAFETY: the value is read at once.
        let s = unsafe { SLC_SVC4.get(&key) }?;
        (s.backend_id == id).then_some(id)
    });
    let mut be = backend.and_then(|id| unsafe { SLC_BE4.get(&id) }.copied());
    if be.is_none_or(|b| b.state != BACKEND_ACTIVE) {
        key.slot = pick_slot(&fe);
        // A shrinking service may have dropped this slot between our two
        // lookups; slot 1 always exists while count > 0.
        let slot = unsafe { SLC_SVC4.get(&key) }.or_else(|| {
            key.slot = 1;
            unsafe { SLC_SVC4.get(&key) }
        });
        backend = slot.map(|s| s.backend_id);
        be = backend.and_then(|id| unsafe { SLC_BE4.get(&id) }.copied());
    }
    let (Some(id), Some(be)) = (backend, be) else { return reject(EHOSTUNREACH) };
    if fe.flags & SVC_FLAG_AFFINITY != 0 {
        affinity_store(&aff_key, id, key.slot);
    }
    sa.user_ip4 = be.addr;
    sa.user_port = u32::from(be.port);
    // SAFETY: sock_addr programs may ask for their socket's cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rkey = SockRevNatKey4 { cookie, addr: be.addr, port: be.port, _pad: 0 };
    let _ = SLC_SKRNAT4.insert(&rkey, &SockRevNat { revnat_id: fe.revnat_id, _pad: 0 }, 0);
    ALLOW
}

#[inline(always)]
fn revnat4(ctx: &SockAddrContext) -> i32 {
    let sa = sa(ctx);
    if l4_proto(sa).is_none() {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNatKey4 { cookie, addr: sa.user_ip4, port: sa.user_port as u16, _pad: 0 };
    let Some(rn) = (unsafe { SLC_SKRNAT4.get(&key) }).copied() else { return ALLOW };
    if let Some(front) = unsafe { SLC_RNAT4.get(&rn.revnat_id) } {
        sa.user_ip4 = front.addr;
        sa.user_port = u32::from(front.port);
    }
    ALLOW
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

#[inline(always)]
fn lb6(ctx: &SockAddrContext) -> i32 {
    let sa = sa(ctx);
    let Some(proto) = l4_proto(sa) else { return ALLOW };
    let mut key = ServiceKey6 {
        addr: read_ip6(sa),
        port: sa.user_port as u16,
        proto,
        scope: SCOPE_CLUSTER,
        slot: 0,
        _pad: 0,
    };
    let Some(fe) = (unsafe { SLC_SVC6.get(&key) }).copied() else { return ALLOW };
    if fe.count == 0 {
        return reject(ECONNREFUSED);
    }
    let (aff_key, hit) = if fe.flags & SVC_FLAG_AFFINITY != 0 {
        affinity_lookup(ctx, &fe)
    } else {
        (AffinityKey { client_cookie: 0, revnat_id: 0, _pad: 0 }, None)
    };
    // The remembered backend still counts only if its slot still holds it.
    let mut backend = hit.and_then(|(id, slot)| {
        key.slot = slot;
        // SAFETY: the value is read at once.
        let s = unsafe { SLC_SVC6.get(&key) }?;
        (s.backend_id == id).then_some(id)
    });
    let mut be = backend.and_then(|id| unsafe { SLC_BE6.get(&id) }.copied());
    if be.is_none_or(|b| b.state != BACKEND_ACTIVE) {
        key.slot = pick_slot(&fe);
        let slot = unsafe { SLC_SVC6.get(&key) }.or_else(|| {
            key.slot = 1;
            unsafe { SLC_SVC6.get(&key) }
        });
        backend = slot.map(|s| s.backend_id);
        be = backend.and_then(|id| unsafe { SLC_BE6.get(&id) }.copied());
    }
    let (Some(id), Some(be)) = (backend, be) else { return reject(EHOSTUNREACH) };
    if fe.flags & SVC_FLAG_AFFINITY != 0 {
        affinity_store(&aff_key, id, key.slot);
    }
    write_ip6(sa, &be.addr);
    sa.user_port = u32::from(be.port);
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rkey = SockRevNatKey6 { cookie, addr: be.addr, port: be.port, _pad: [0; 6] };
    let _ = SLC_SKRNAT6.insert(&rkey, &SockRevNat { revnat_id: fe.revnat_id, _pad: 0 }, 0);
    ALLOW
}

#[inline(always)]
fn revnat6(ctx: &SockAddrContext) -> i32 {
    let sa = sa(ctx);
    if l4_proto(sa).is_none() {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key =
        SockRevNatKey6 { cookie, addr: read_ip6(sa), port: sa.user_port as u16, _pad: [0; 6] };
    let Some(rn) = (unsafe { SLC_SKRNAT6.get(&key) }).copied() else { return ALLOW };
    if let Some(front) = unsafe { SLC_RNAT6.get(&rn.revnat_id) } {
        let addr = front.addr;
        let port = front.port;
        write_ip6(sa, &addr);
        sa.user_port = u32::from(port);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn slc_connect4(ctx: SockAddrContext) -> i32 {
    lb4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn slc_sendmsg4(ctx: SockAddrContext) -> i32 {
    lb4(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn slc_recvmsg4(ctx: SockAddrContext) -> i32 {
    revnat4(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn slc_getpeername4(ctx: SockAddrContext) -> i32 {
    revnat4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn slc_connect6(ctx: SockAddrContext) -> i32 {
    lb6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn slc_sendmsg6(ctx: SockAddrContext) -> i32 {
    lb6(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn slc_recvmsg6(ctx: SockAddrContext) -> i32 {
    revnat6(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn slc_getpeername6(ctx: SockAddrContext) -> i32 {
    revnat6(&ctx)
}
