//! A lean `discovery.k8s.io/v1` EndpointSlice: the fields a node component
//! reads, laid out to be small, because a node holds every slice of the
//! cluster (100,000 endpoints at 10,000 Services x 10).
//!
//! k8s-openapi's `Endpoint` is 352 bytes before its strings (it carries
//! `targetRef`, a seven-string `ObjectReference`, and `deprecatedTopology`);
//! this one is 88, drops what no component reads, and its vectors are
//! trimmed to their length after decoding (serde grows them by doubling).
//! Field names and shapes follow k8s-openapi's, so code reads both alike;
//! `From` converts a k8s-openapi slice (tests and fixtures build those).
//!
//! Two more savings: an endpoint's address is kept parsed, inline (the
//! EndpointSlice controller always writes exactly one), and the slice's
//! Service name is taken out of its labels, which are then dropped (a
//! one-entry `BTreeMap` costs a 544-byte node).
//!
//! It implements k8s-openapi's `Resource` and `Metadata`, so kube-rs watches
//! it like any generated type; JSON or YAML fields it leaves out are ignored.

use std::{fmt, net::IpAddr};

use k8s_openapi::api::discovery::v1 as api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{de, Deserialize, Deserializer};

use crate::semantics::SERVICE_NAME_LABEL;

pub use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointHints, EndpointPort, ForNode, ForZone};

/// An EndpointSlice as a node component keeps it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "Wire")]
pub struct EndpointSlice {
    /// Without labels (see `service_name`), managed fields and annotations
    /// other than the last-change trigger time.
    pub metadata: ObjectMeta,
    /// The `kubernetes.io/service-name` label: the Service this slice serves.
    pub service_name: Option<Box<str>>,
    pub address_type: String,
    pub endpoints: Vec<Endpoint>,
    pub ports: Option<Vec<EndpointPort>>,
}

impl EndpointSlice {
    /// The Service this slice serves: `service_name`, or the label when the
    /// slice was built with its labels in place.
    pub fn service(&self) -> Option<&str> {
        self.service_name.as_deref().or_else(|| {
            self.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL).map(String::as_str)
        })
    }
}

/// The slice as sent, before the labels are folded away.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    metadata: ObjectMeta,
    address_type: String,
    #[serde(default, deserialize_with = "trimmed")]
    endpoints: Vec<Endpoint>,
    #[serde(default, deserialize_with = "trimmed_opt")]
    ports: Option<Vec<EndpointPort>>,
}

impl From<Wire> for EndpointSlice {
    fn from(w: Wire) -> Self {
        let mut metadata = w.metadata;
        let service_name = fold_labels(&mut metadata);
        Self { metadata, service_name, address_type: w.address_type, endpoints: w.endpoints, ports: w.ports }
    }
}

/// Leans `meta` (see [`lean`]), takes the Service name out of its labels and
/// drops the rest of them (no component reads a slice's other labels).
fn fold_labels(meta: &mut ObjectMeta) -> Option<Box<str>> {
    lean(meta);
    meta.labels.take().and_then(|mut l| l.remove(SERVICE_NAME_LABEL)).map(String::into_boxed_str)
}

/// One endpoint address: an IP, as `addressType` IPv4 and IPv6 promise, or
/// the text as sent when it is not one (reported by whoever reads it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    Ip(IpAddr),
    Text(Box<str>),
}

impl Address {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(ip) => Some(*ip),
            Address::Text(_) => None,
        }
    }
}

impl From<&str> for Address {
    fn from(s: &str) -> Self {
        s.parse().map_or_else(|_| Address::Text(s.into()), Address::Ip)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => ip.fmt(f),
            Address::Text(t) => f.write_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Address;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Address, E> {
                Ok(Address::from(s))
            }
        }
        de.deserialize_str(V)
    }
}

/// An endpoint's addresses. The EndpointSlice controller always writes
/// exactly one (and kube-proxy reads only the first), so one is kept inline;
/// reads like a slice of [`Address`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    One(Address),
    Many(Box<[Address]>),
}

impl Default for Addresses {
    fn default() -> Self {
        Addresses::Many(Box::default())
    }
}

impl std::ops::Deref for Addresses {
    type Target = [Address];

    fn deref(&self) -> &[Address] {
        match self {
            Addresses::One(a) => std::slice::from_ref(a),
            Addresses::Many(v) => v,
        }
    }
}

impl<'a> IntoIterator for &'a Addresses {
    type Item = &'a Address;
    type IntoIter = std::slice::Iter<'a, Address>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl FromIterator<Address> for Addresses {
    fn from_iter<I: IntoIterator<Item = Address>>(iter: I) -> Self {
        let mut v: Vec<Address> = iter.into_iter().collect();
        if v.len() == 1 {
            Addresses::One(v.remove(0))
        } else {
            Addresses::Many(v.into_boxed_slice())
        }
    }
}

/// One address (tests and fixtures).
impl From<&str> for Addresses {
    fn from(s: &str) -> Self {
        Addresses::One(Address::from(s))
    }
}

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        Ok(Option::<Vec<Address>>::deserialize(de)?.unwrap_or_default().into_iter().collect())
    }
}

/// One endpoint: what the proxy and the DNS server read of it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Addresses,
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    /// Boxed: most endpoints have none, and the box keeps those 40 bytes smaller.
    #[serde(default)]
    pub hints: Option<Box<EndpointHints>>,
    /// The names are boxed `str`s (no spare capacity word): read them with `as_deref()`.
    #[serde(default)]
    pub hostname: Option<Box<str>>,
    #[serde(default)]
    pub node_name: Option<Box<str>>,
    #[serde(default)]
    pub zone: Option<Box<str>>,
}

impl k8s_openapi::Resource for EndpointSlice {
    const API_VERSION: &'static str = <api::EndpointSlice as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <api::EndpointSlice as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <api::EndpointSlice as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <api::EndpointSlice as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <api::EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <api::EndpointSlice as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for EndpointSlice {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl From<api::EndpointSlice> for EndpointSlice {
    fn from(s: api::EndpointSlice) -> Self {
        let mut metadata = s.metadata;
        let service_name = fold_labels(&mut metadata);
        Self {
            metadata,
            service_name,
            address_type: s.address_type,
            endpoints: s.endpoints.into_iter().map(Endpoint::from).collect(),
            ports: s.ports,
        }
    }
}

impl From<api::Endpoint> for Endpoint {
    fn from(e: api::Endpoint) -> Self {
        Self {
            addresses: e.addresses.iter().map(|a| Address::from(a.as_str())).collect(),
            conditions: e.conditions,
            hints: e.hints.map(Box::new),
            hostname: e.hostname.map(String::into_boxed_str),
            node_name: e.node_name.map(String::into_boxed_str),
            zone: e.zone.map(String::into_boxed_str),
        }
    }
}

/// Drops what no component reads and a real API server sends with every
/// object: `managedFields` (often larger than the object) and annotations
/// other than the one the proxy's programming-latency metric reads.
pub fn lean(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k == LAST_CHANGE_TRIGGER_TIME);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// EndpointSlice annotation: when the change behind this slice version happened.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// A sequence (null reads as empty) whose buffer is no larger than its length.
fn trimmed<'de, D: Deserializer<'de>, T: Deserialize<'de>>(de: D) -> Result<Vec<T>, D::Error> {
    Ok(trimmed_opt(de)?.unwrap_or_default())
}

fn trimmed_opt<'de, D: Deserializer<'de>, T: Deserialize<'de>>(de: D) -> Result<Option<Vec<T>>, D::Error> {
    let mut v = Option::<Vec<T>>::deserialize(de)?;
    if let Some(v) = v.as_mut() {
        v.shrink_to_fit();
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_small() {
        assert!(std::mem::size_of::<Endpoint>() <= 88, "{}", std::mem::size_of::<Endpoint>());
        assert_eq!(std::mem::size_of::<Addresses>(), 24);
    }

    #[test]
    fn decodes_what_components_read_and_ignores_the_rest() {
        let json = r#"{
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "default", "resourceVersion": "7",
                "labels": {"kubernetes.io/service-name": "web"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z", "x": "y"},
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}]},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["198.18.0.1"], "conditions": {"ready": true},
                "hints": {"forZones": [{"name": "a"}]}, "nodeName": "n1", "zone": "a", "hostname": "h",
                "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default", "uid": "u"},
                "deprecatedTopology": {"k": "v"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }"#;
        let s: EndpointSlice = serde_json::from_str(json).unwrap();
        assert_eq!(s.metadata.managed_fields, None);
        assert_eq!(s.metadata.annotations.as_ref().unwrap().len(), 1);
        assert_eq!((s.service(), s.metadata.labels.as_ref()), (Some("web"), None));
        assert_eq!(s.metadata.resource_version.as_deref(), Some("7"));
        let e = &s.endpoints[0];
        assert_eq!(e.addresses[..], [Address::Ip("198.18.0.1".parse().unwrap())]);
        assert_eq!(e.conditions.as_ref().unwrap().ready, Some(true));
        assert_eq!(e.hints.as_ref().unwrap().for_zones.as_ref().unwrap()[0].name, "a");
        assert_eq!((e.node_name.as_deref(), e.zone.as_deref(), e.hostname.as_deref()), (Some("n1"), Some("a"), Some("h")));
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
        let null_endpoints: EndpointSlice =
            serde_json::from_str(r#"{"metadata": {"name": "e"}, "addressType": "IPv4", "endpoints": null}"#).unwrap();
        assert!(null_endpoints.endpoints.is_empty());
    }

    #[test]
    fn addresses_keep_what_is_not_an_ip_and_any_number() {
        let e: Endpoint = serde_json::from_str(r#"{"addresses": ["198.18.0.1", "not-an-ip"]}"#).unwrap();
        assert_eq!(e.addresses.len(), 2);
        assert_eq!(e.addresses[1].to_string(), "not-an-ip");
        assert_eq!(e.addresses[1].ip(), None);
        let none: Endpoint = serde_json::from_str(r#"{"addresses": []}"#).unwrap();
        assert!(none.addresses.is_empty());
        let null: Endpoint = serde_json::from_str(r#"{"addresses": null}"#).unwrap();
        assert!(null.addresses.first().is_none());
    }

    #[test]
    fn converts_from_the_generated_type() {
        let full = api::EndpointSlice {
            metadata: ObjectMeta { name: Some("s".into()), ..Default::default() },
            address_type: "IPv6".into(),
            endpoints: vec![api::Endpoint { addresses: vec!["2001:db8::1".into()], ..Default::default() }],
            ports: None,
        };
        let lean = EndpointSlice::from(full);
        assert_eq!(lean.address_type, "IPv6");
        assert_eq!(lean.endpoints[0].addresses.first().and_then(Address::ip), "2001:db8::1".parse().ok());
    }
}
