use std::{collections::BTreeMap, fmt, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Service},
    discovery::v1::EndpointSlice,
};

use crate::semantics::SERVICE_NAME_LABEL;

/// Namespace and name of an object (namespace empty for cluster-scoped kinds).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Everything a component knows about the cluster at one moment.
///
/// Objects are shared (`Arc`): an object that did not change between two
/// snapshots is the same allocation, so consumers can memoise per object by
/// pointer and do O(changed objects) work per update.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    /// EndpointSlices grouped by the Service they belong to (label
    /// `kubernetes.io/service-name`), keyed then by slice name.
    pub slices: BTreeMap<ObjectKey, BTreeMap<String, Arc<EndpointSlice>>>,
    pub nodes: BTreeMap<String, Arc<Node>>,
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    /// True once the source has completed a full list (or read every file).
    pub synced: bool,
}

impl Snapshot {
    /// The EndpointSlices of one Service.
    pub fn slices_of(&self, service: &ObjectKey) -> impl Iterator<Item = &Arc<EndpointSlice>> {
        self.slices.get(service).into_iter().flat_map(BTreeMap::values)
    }
}

/// Collects objects into a [`Snapshot`].
#[derive(Default)]
pub struct SnapshotBuilder {
    snap: Snapshot,
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn service(&mut self, svc: Arc<Service>) -> &mut Self {
        self.snap.services.insert(ObjectKey::of(&svc.metadata), svc);
        self
    }

    /// Adds a slice; one without the service-name label belongs to no Service and is dropped.
    pub fn slice(&mut self, slice: Arc<EndpointSlice>) -> &mut Self {
        let key = ObjectKey::of(&slice.metadata);
        let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            return self;
        };
        self.snap
            .slices
            .entry(ObjectKey::new(key.namespace, service.clone()))
            .or_default()
            .insert(key.name, slice);
        self
    }

    pub fn node(&mut self, node: Arc<Node>) -> &mut Self {
        self.snap.nodes.insert(node.metadata.name.clone().unwrap_or_default(), node);
        self
    }

    pub fn namespace(&mut self, ns: Arc<Namespace>) -> &mut Self {
        self.snap.namespaces.insert(ns.metadata.name.clone().unwrap_or_default(), ns);
        self
    }

    pub fn synced(&mut self, synced: bool) -> &mut Self {
        self.snap.synced = synced;
        self
    }

    pub fn build(self) -> Snapshot {
        self.snap
    }
}
