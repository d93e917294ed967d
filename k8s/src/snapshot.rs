use std::{fmt, sync::Arc};

pub use imbl::{ordmap::DiffItem, OrdMap};

use k8s_openapi::api::core::v1::{Namespace, Node, Service};

use crate::slice::EndpointSlice;


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

/// The EndpointSlices of one Service, in slice-name order.
///
/// A Service has one or a few slices, so this is a sorted vector of shared
/// slices (one small allocation) rather than a map (a node per Service).
/// Two groups are equal when they hold the same allocations: sources keep an
/// unchanged slice's `Arc`, so a changed slice is a new one.
#[derive(Clone, Debug, Default)]
pub struct SliceGroup(Vec<Arc<EndpointSlice>>);

impl SliceGroup {
    pub fn iter(&self) -> std::slice::Iter<'_, Arc<EndpointSlice>> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The slices' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| slice_name(s))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `slice`, replacing the one of the same name.
    pub fn insert(&mut self, slice: Arc<EndpointSlice>) {
        match self.0.binary_search_by(|s| slice_name(s).cmp(slice_name(&slice))) {
            Ok(i) => self.0[i] = slice,
            Err(i) => self.0.insert(i, slice),
        }
    }

    /// Removes the slice named `name`.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|s| slice_name(s).cmp(name)) {
            self.0.remove(i);
        }
    }
}

impl PartialEq for SliceGroup {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for SliceGroup {}

impl FromIterator<Arc<EndpointSlice>> for SliceGroup {
    fn from_iter<I: IntoIterator<Item = Arc<EndpointSlice>>>(iter: I) -> Self {
        let mut g = Self::default();
        for s in iter {
            g.insert(s);
        }
        g
    }
}

fn slice_name(s: &EndpointSlice) -> &str {
    s.metadata.name.as_deref().unwrap_or_default()
}

/// Everything a component knows about the cluster at one moment.
///
/// Objects are shared (`Arc`): an object that did not change between two
/// snapshots is the same allocation, so consumers can memoise per object by
/// pointer and do O(changed objects) work per update.
///
/// The maps are persistent ([`OrdMap`]: a B-tree whose nodes are shared
/// between versions), so a source keeps its own maps, updates them in
/// O(log n) per changed object and publishes a snapshot as an O(1) clone;
/// two snapshots share every node the change did not touch. They read like
/// a `BTreeMap` (`get`, `iter`, `keys`, `values`, `len`, `contains_key`,
/// indexing) and iterate in key order; [`OrdMap::diff`] lists what changed
/// between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: OrdMap<ObjectKey, Arc<Service>>,
    /// EndpointSlices grouped by the Service they belong to (label
    /// `kubernetes.io/service-name`), keyed then by slice name. A Service
    /// without slices has no group (never an empty one).
    pub slices: OrdMap<ObjectKey, SliceGroup>,
    pub nodes: OrdMap<String, Arc<Node>>,
    pub namespaces: OrdMap<String, Arc<Namespace>>,
    /// True once the source has completed a full list (or read every file).
    pub synced: bool,
}

impl Snapshot {
    /// The EndpointSlices of one Service.
    pub fn slices_of(&self, service: &ObjectKey) -> impl Iterator<Item = &Arc<EndpointSlice>> {
        self.slices.get(service).into_iter().flat_map(SliceGroup::iter)
    }
}

/// Files `slice` under its Service in `groups`; a slice without the
/// service-name label belongs to no Service and is left out.
pub(crate) fn group_slice(groups: &mut OrdMap<ObjectKey, SliceGroup>, slice: Arc<EndpointSlice>) {
    let Some(service) = service_of(&slice) else {
        return;
    };
    groups.entry(service).or_default().insert(slice);
}

/// Takes `slice` (as [`group_slice`] filed it) out of its Service's group,
/// dropping the group when it becomes empty.
pub(crate) fn ungroup_slice(groups: &mut OrdMap<ObjectKey, SliceGroup>, slice: &EndpointSlice) {
    let Some(service) = service_of(slice) else {
        return;
    };
    if let Some(group) = groups.get_mut(&service) {
        group.remove(slice_name(slice));
        if group.is_empty() {
            groups.remove(&service);
        }
    }
}

/// The Service a slice belongs to, if it names one.
pub(crate) fn service_of(slice: &EndpointSlice) -> Option<ObjectKey> {
    let service = slice.service()?;
    Some(ObjectKey::new(ObjectKey::of(&slice.metadata).namespace, service))
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
        group_slice(&mut self.snap.slices, slice);
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
