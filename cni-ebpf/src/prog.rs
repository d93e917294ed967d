//! The two classifiers: siblings over the shared modules.

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::config::{in_cluster, is_local_pod};
use crate::forward::forward;
use crate::packet::{ipv4, TC_ACT_UNSPEC};
use crate::vxlan::vxlan_decap;

/// Tc ingress of a pod's host-side veth: what the pod sends.
#[classifier]
pub fn slc_from_pod(ctx: TcContext) -> i32 {
    let Some((saddr, daddr, ttl)) = ipv4(&ctx) else { return TC_ACT_UNSPEC };
    if !is_local_pod(saddr) || !in_cluster(daddr) {
        return TC_ACT_UNSPEC; // leaving the cluster: the stack masquerades it
    }
    forward(&ctx, saddr, daddr, ttl, is_local_pod(daddr))
}

/// Tc ingress of the VXLAN device and the underlay: what other nodes send.
#[classifier]
pub fn slc_to_pod(ctx: TcContext) -> i32 {
    if let Some((saddr, daddr, ttl)) = vxlan_decap(&ctx) {
        // Should the FIB not say, the stack routes the now plain inner
        // packet to the pod as if it had come in unencapsulated.
        return forward(&ctx, saddr, daddr, ttl, true);
    }
    let Some((saddr, daddr, ttl)) = ipv4(&ctx) else { return TC_ACT_UNSPEC };
    if !is_local_pod(daddr) || !in_cluster(saddr) {
        return TC_ACT_UNSPEC;
    }
    forward(&ctx, saddr, daddr, ttl, true)
}
