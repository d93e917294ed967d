//! The NodePort bind guard (cgroup bind4), part of the external path.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use proxy_common::{NodePortBindKey, PROTO_TCP, PROTO_UDP};

use crate::conntrack::config;
use crate::maps::SLC_NPBIND;

/// bind() of a host socket to a NodePort fails with EADDRINUSE, so no host
/// process can shadow a NodePort and a closed NodePort stays closed (the
/// stack's RST/ICMP for frontends without endpoints depends on it).
#[cgroup_sock_addr(bind4)]
pub fn slc_bind4(ctx: SockAddrContext) -> i32 {
    const ALLOW: i32 = 1;
    const EADDRINUSE: i32 = 98;
    let cfg = config();
    if cfg.enabled == 0 {
        return ALLOW;
    }
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol;
    if proto != u32::from(PROTO_TCP) && proto != u32::from(PROTO_UDP) {
        return ALLOW;
    }
    // SAFETY: sock_addr programs may ask for their netns cookie.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != cfg.host_netns_cookie {
        return ALLOW;
    }
    let key = NodePortBindKey { port: sa.user_port as u16, proto: proto as u8, _pad: 0 };
    // SAFETY: presence check only.
    if unsafe { SLC_NPBIND.get(&key) }.is_some() {
        unsafe { bpf_set_retval(-EADDRINUSE) };
        return 0;
    }
    ALLOW
}
