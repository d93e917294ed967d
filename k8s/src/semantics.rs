//! Service and EndpointSlice semantics as kube-proxy applies them, written
//! once for every component (the proxy and the DNS server both need "which
//! endpoints are usable").

use k8s_openapi::api::core::v1::{Service, ServicePort};

use crate::slice::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services carrying this label belong to another proxy (kube-proxy ignores them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Services carrying this label are not proxied at all.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The manifests source sets `metadata.selfLink` (deprecated and no longer
/// served by the API, so free) of every object it reads to this prefix and
/// the file it came from, so warnings about an object can name its file. A
/// plain string field, where an annotation would cost a map per object.
pub const SOURCE_LINK_PREFIX: &str = "file://";

/// "Service default/web" plus " (file /x/web.yaml)" when the object came from a manifest.
pub fn describe(kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or("");
    match meta.self_link.as_deref().and_then(|l| l.strip_prefix(SOURCE_LINK_PREFIX)) {
        Some(file) => format!("{kind} {ns}/{name} (file {file})"),
        None => format!("{kind} {ns}/{name}"),
    }
}

/// Zone label on Nodes.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// `conditions.ready`; absent means ready (the API's documented default).
pub fn is_ready(ep: &Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// `conditions.serving`; absent falls back to `ready`.
pub fn is_serving(ep: &Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.serving).unwrap_or_else(|| is_ready(ep))
}

/// `conditions.terminating`; absent means not terminating.
pub fn is_terminating(ep: &Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.terminating).unwrap_or(false)
}

/// Whether an endpoint may take new connections, given whether any ready one
/// exists in the candidate set: ready endpoints always; serving+terminating
/// ones only when none is ready (kube-proxy's graceful termination fallback).
pub fn is_usable(ep: &Endpoint, any_ready: bool) -> bool {
    if any_ready {
        is_ready(ep)
    } else {
        is_serving(ep) && is_terminating(ep)
    }
}

/// Why the proxy leaves a Service alone, if it does.
pub fn proxy_ignores(svc: &Service) -> Option<&'static str> {
    let labels = svc.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return Some("labelled service.kubernetes.io/service-proxy-name");
    }
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return Some("labelled service.kubernetes.io/headless");
    }
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("type ExternalName");
    }
    if is_headless(svc) {
        return Some("headless (clusterIP None)");
    }
    None
}

/// A Service with `clusterIP: None`.
pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).is_some_and(|ip| ip == "None")
}

/// The ClusterIPs of a Service: `clusterIPs` if set, else `clusterIP`; never "None" or "".
pub fn cluster_ips(svc: &Service) -> Vec<&str> {
    let Some(spec) = svc.spec.as_ref() else { return Vec::new() };
    let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => Vec::new(),
    };
    ips.into_iter().filter(|ip| !ip.is_empty() && *ip != "None").collect()
}

/// The protocol of a port, defaulting to TCP.
pub fn service_port_protocol(port: &ServicePort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
}

/// The protocol of an EndpointSlice port, defaulting to TCP.
pub fn endpoint_port_protocol(port: &EndpointPort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
}

/// The EndpointSlice port that serves a Service port. The EndpointSlice
/// controller names slice ports after the Service port they implement and has
/// already resolved a named targetPort to a number per endpoint, so matching is
/// by Service port name and protocol (kube-proxy does the same).
pub fn slice_port_for<'a>(slice: &'a EndpointSlice, port: &ServicePort) -> Option<&'a EndpointPort> {
    let want_name = port.name.as_deref().unwrap_or("");
    let want_proto = service_port_protocol(port);
    slice.ports.as_ref()?.iter().find(|p| {
        p.name.as_deref().unwrap_or("") == want_name && endpoint_port_protocol(p) == want_proto
    })
}

/// The numeric target port when the Service spells it as a number (or leaves it
/// out, meaning `port`). A named targetPort is resolved through the slices.
pub fn numeric_target_port(port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(s)) => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::EndpointConditions;

    fn ep(ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: "198.18.0.10".into(),
            conditions: Some(EndpointConditions { ready, serving, terminating }),
            ..Default::default()
        }
    }

    #[test]
    fn absent_conditions_mean_ready_serving_not_terminating() {
        let e = Endpoint { addresses: "198.18.0.1".into(), ..Default::default() };
        assert!(is_ready(&e));
        assert!(is_serving(&e));
        assert!(!is_terminating(&e));
    }

    #[test]
    fn usable_endpoints_follow_kube_proxy_fallback() {
        let cases = [
            // (ready, serving, terminating, any_ready, usable)
            (Some(true), Some(true), Some(false), true, true),
            (Some(false), Some(true), Some(true), true, false),
            (Some(false), Some(true), Some(true), false, true),
            (Some(false), Some(false), Some(true), false, false),
            (Some(false), None, Some(false), false, false),
            (None, None, None, true, true),
        ];
        for (ready, serving, terminating, any_ready, usable) in cases {
            assert_eq!(
                is_usable(&ep(ready, serving, terminating), any_ready),
                usable,
                "ready={ready:?} serving={serving:?} terminating={terminating:?} any_ready={any_ready}"
            );
        }
    }
}
