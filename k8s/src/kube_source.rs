//! Cluster source: kube-rs watchers on the API server, folded into the same
//! level-triggered [`Snapshot`] the manifests source publishes.
//!
//! One watcher per selected kind (`kube::runtime::watcher`, list-then-watch
//! with pages of 500, bookmarks, the default backoff; it relists by itself on
//! 410 Gone). Their events feed per-kind stores of `Arc`s that this module
//! keeps itself rather than a reflector `Store`, for two reasons: an unchanged
//! object must keep its allocation across a relist (a reflector store hands
//! out fresh `Arc`s after every `InitDone`), and slices are kept grouped by
//! Service so a snapshot is a clone of ready-made maps. The stores are
//! persistent maps ([`OrdMap`]): an event costs O(log n), and a snapshot is
//! an O(1) clone that shares every untouched node with the previous one.
//!
//! A relist is buffered until its `InitDone` and then replaces the kind's
//! store wholesale, so an object deleted while the watch was down disappears
//! even though no delete event was ever seen.

use std::{
    fmt::Debug,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{stream::BoxStream, FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        watcher::{self, Event},
        WatchStreamExt as _,
    },
    Api, Client, Resource, ResourceExt as _,
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    slice::lean,
    snapshot::{group_slice, ungroup_slice},
    EndpointSlice, Error, ObjectKey, OrdMap, Result, SliceGroup, Snapshot,
};

/// Which kinds a component follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kinds {
    pub services: bool,
    pub slices: bool,
    pub nodes: NodeSelection,
    pub namespaces: bool,
}

impl Kinds {
    /// Every kind, every Node.
    pub fn all() -> Self {
        Self {
            services: true,
            slices: true,
            nodes: NodeSelection::All,
            namespaces: true,
        }
    }
}

/// Which Nodes to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeSelection {
    None,
    /// Only this Node (`fieldSelector=metadata.name=NAME`): the agent needs its own zone label.
    One(String),
    All,
}

/// Snapshots are rebuilt at most this often, or twice the last build time if
/// that is longer, so a burst of changes costs a bounded share of a core while
/// a lone change is published at once.
const MIN_PUBLISH_INTERVAL: Duration = Duration::from_millis(2);
/// Events taken from the watchers before a rebuild is considered.
const MAX_BATCH: usize = 4096;

/// Connects with `kubeconfig` (a path) or, when `None`, the in-cluster config
/// or the default kubeconfig (`kube::Config::infer`), starts one watcher per
/// selected kind and publishes a full [`Snapshot`] after every change.
///
/// The channel holds an empty, unsynced snapshot until every selected kind has
/// finished its initial list; from then on every snapshot has `synced` set. A
/// later relist (after 410 Gone or a reconnect) rebuilds that kind from the
/// full list. Unchanged objects keep their `Arc` between snapshots. API errors
/// are logged and retried with kube-rs's default backoff; the last snapshot
/// stays in the channel meanwhile. The background task ends when every
/// receiver is dropped.
///
/// # Errors
/// When the kubeconfig cannot be read or no configuration can be inferred.
pub async fn watch_cluster(
    kubeconfig: Option<PathBuf>,
    kinds: Kinds,
) -> Result<watch::Receiver<Arc<Snapshot>>> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| Error::Kubeconfig {
                path: path.clone(),
                source,
            };
            let file = Kubeconfig::read_from(&path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::infer().await.map_err(Error::InferConfig)?,
    };
    let cluster_url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(Error::Client)?;
    info!(%cluster_url, ?kinds, "watching the API server");
    Ok(watch_with_client(client, &kinds))
}

/// [`watch_cluster`] with a client the caller built.
pub fn watch_with_client(client: Client, kinds: &Kinds) -> watch::Receiver<Arc<Snapshot>> {
    let mut streams: Vec<BoxStream<'static, Update>> = Vec::new();
    if kinds.services {
        streams.push(kind_stream(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            Update::Service,
        ));
    }
    if kinds.slices {
        streams.push(kind_stream(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
            Update::Slice,
        ));
    }
    match &kinds.nodes {
        NodeSelection::None => {}
        NodeSelection::One(name) => streams.push(kind_stream(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
            Update::Node,
        )),
        NodeSelection::All => {
            streams.push(kind_stream(
                Api::<Node>::all(client.clone()),
                watcher::Config::default(),
                Update::Node,
            ));
        }
    }
    if kinds.namespaces {
        streams.push(kind_stream(
            Api::<Namespace>::all(client),
            watcher::Config::default(),
            Update::Namespace,
        ));
    }

    let state = ClusterState::new(kinds);
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    tokio::spawn(run(futures::stream::select_all(streams), state, tx));
    rx
}

/// One watcher event, tagged with its kind.
enum Update {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
    Node(Event<Node>),
    Namespace(Event<Namespace>),
}

fn kind_stream<K>(
    api: Api<K>,
    config: watcher::Config,
    tag: fn(Event<K>) -> Update,
) -> BoxStream<'static, Update>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind = K::kind(&()).into_owned();
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(move |res| {
            let out = match res {
                Ok(ev) => Some(tag(ev)),
                Err(e) => {
                    // Retried by the watcher after the backoff; a 410 also restarts with a full list.
                    warn!(kind = %kind, error = %e, "watch failed; retrying");
                    None
                }
            };
            futures::future::ready(out)
        })
        .boxed()
}

async fn run(
    mut updates: futures::stream::SelectAll<BoxStream<'static, Update>>,
    mut state: ClusterState,
    tx: watch::Sender<Arc<Snapshot>>,
) {
    let started = Instant::now();
    let mut dirty = false;
    let mut last_publish: Option<Instant> = None;
    let mut interval = MIN_PUBLISH_INTERVAL;
    loop {
        let deadline = last_publish.map_or_else(Instant::now, |t| t + interval);
        tokio::select! {
            biased;
            () = tx.closed() => return,
            () = tokio::time::sleep_until(deadline.into()), if dirty && state.synced() => {}
            update = updates.next() => {
                let Some(update) = update else { return };
                dirty |= state.apply(update);
                // Take what is already there so a burst becomes one snapshot.
                for _ in 0..MAX_BATCH {
                    match updates.next().now_or_never() {
                        Some(Some(update)) => dirty |= state.apply(update),
                        _ => break,
                    }
                }
                if !(dirty && state.synced() && Instant::now() >= deadline) {
                    continue;
                }
            }
        }
        let build = Instant::now();
        let snapshot = Arc::new(state.snapshot());
        let took = build.elapsed();
        if last_publish.is_none() {
            info!(
                services = snapshot.services.len(),
                slices = state.slices.all.live.len(),
                nodes = snapshot.nodes.len(),
                namespaces = snapshot.namespaces.len(),
                after_ms = started.elapsed().as_millis(),
                "initial sync complete"
            );
        }
        tx.send_replace(snapshot);
        debug!(build_us = took.as_micros(), "published snapshot");
        interval = MIN_PUBLISH_INTERVAL.max(took * 2);
        last_publish = Some(Instant::now());
        dirty = false;
    }
}

/// What one event did to a kind's live state.
enum Change<T> {
    None,
    Upsert {
        old: Option<Arc<T>>,
        new: Arc<T>,
    },
    Remove {
        old: Arc<T>,
    },
    /// A relist replaced the whole store.
    Replaced,
}

/// The objects of one kind. A relist is collected in `relist` and swapped in
/// at `InitDone`; the live map keeps serving until then.
struct Store<K, T> {
    live: OrdMap<K, Arc<T>>,
    relist: Option<OrdMap<K, Arc<T>>>,
    synced: bool,
    key_of: fn(&T) -> K,
}

impl<K: Ord + Clone, T: Resource<DynamicType = ()> + PartialEq> Store<K, T> {
    fn new(selected: bool, key_of: fn(&T) -> K) -> Self {
        Self {
            live: OrdMap::new(),
            relist: None,
            synced: !selected,
            key_of,
        }
    }

    /// The stored `Arc` when `obj` is the same version of it, else a new one
    /// (without the metadata no component reads, see [`lean`]).
    fn share(old: Option<&Arc<T>>, mut obj: T) -> Arc<T> {
        lean(obj.meta_mut());
        match old {
            Some(old)
                if match (old.resource_version(), obj.resource_version()) {
                    (Some(a), Some(b)) => a == b,
                    _ => **old == obj,
                } =>
            {
                old.clone()
            }
            _ => Arc::new(obj),
        }
    }

    fn handle(&mut self, event: Event<T>) -> Change<T> {
        match event {
            Event::Init => {
                debug!(kind = %T::kind(&()), "relisting");
                self.relist = Some(OrdMap::new());
                Change::None
            }
            Event::InitApply(obj) => {
                let key = (self.key_of)(&obj);
                let obj = Self::share(self.live.get(&key), obj);
                self.relist.get_or_insert_with(OrdMap::new).insert(key, obj);
                Change::None
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let same = listed.len() == self.live.len()
                    && listed
                        .iter()
                        .zip(&self.live)
                        .all(|((ka, a), (kb, b))| ka == kb && Arc::ptr_eq(a, b));
                let first = !self.synced;
                self.synced = true;
                if same && !first {
                    return Change::None;
                }
                self.live = listed;
                Change::Replaced
            }
            Event::Apply(obj) => {
                let key = (self.key_of)(&obj);
                let old = self.live.get(&key).cloned();
                let new = Self::share(old.as_ref(), obj);
                if old.as_ref().is_some_and(|o| Arc::ptr_eq(o, &new)) {
                    return Change::None;
                }
                self.live.insert(key, new.clone());
                Change::Upsert { old, new }
            }
            Event::Delete(obj) => match self.live.remove(&(self.key_of)(&obj)) {
                Some(old) => Change::Remove { old },
                None => Change::None,
            },
        }
    }
}

/// EndpointSlices, also kept grouped by Service as [`Snapshot::slices`] wants them.
struct SliceStore {
    all: Store<ObjectKey, EndpointSlice>,
    by_service: OrdMap<ObjectKey, SliceGroup>,
}

impl SliceStore {
    fn handle(&mut self, event: Event<EndpointSlice>) -> bool {
        match self.all.handle(event) {
            Change::None => false,
            Change::Upsert { old, new } => {
                if let Some(old) = old {
                    ungroup_slice(&mut self.by_service, &old);
                }
                group_slice(&mut self.by_service, new);
                true
            }
            Change::Remove { old } => {
                ungroup_slice(&mut self.by_service, &old);
                true
            }
            Change::Replaced => {
                self.by_service.clear();
                for slice in self.all.live.values() {
                    group_slice(&mut self.by_service, slice.clone());
                }
                true
            }
        }
    }
}

struct ClusterState {
    services: Store<ObjectKey, Service>,
    slices: SliceStore,
    nodes: Store<String, Node>,
    namespaces: Store<String, Namespace>,
}

fn name_of<T: Resource>(obj: &T) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

impl ClusterState {
    fn new(kinds: &Kinds) -> Self {
        Self {
            services: Store::new(kinds.services, |s: &Service| ObjectKey::of(&s.metadata)),
            slices: SliceStore {
                all: Store::new(kinds.slices, |s: &EndpointSlice| ObjectKey::of(&s.metadata)),
                by_service: OrdMap::new(),
            },
            nodes: Store::new(kinds.nodes != NodeSelection::None, name_of::<Node>),
            namespaces: Store::new(kinds.namespaces, name_of::<Namespace>),
        }
    }

    /// Applies one event; true when the live state changed.
    fn apply(&mut self, update: Update) -> bool {
        fn changed<T>(c: &Change<T>) -> bool {
            !matches!(c, Change::None)
        }
        match update {
            Update::Service(ev) => changed(&self.services.handle(ev)),
            Update::Slice(ev) => self.slices.handle(ev),
            Update::Node(ev) => changed(&self.nodes.handle(ev)),
            Update::Namespace(ev) => changed(&self.namespaces.handle(ev)),
        }
    }

    /// Every selected kind has completed its initial list.
    fn synced(&self) -> bool {
        self.services.synced
            && self.slices.all.synced
            && self.nodes.synced
            && self.namespaces.synced
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.live.clone(),
            slices: self.slices.by_service.clone(),
            nodes: self.nodes.live.clone(),
            namespaces: self.namespaces.live.clone(),
            synced: self.synced(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use crate::semantics::SERVICE_NAME_LABEL;

    use super::*;

    fn svc(name: &str, rv: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    fn slice(name: &str, service: &str, rv: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.to_owned(),
                    service.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            ..EndpointSlice::default()
        }
    }

    fn kinds() -> Kinds {
        Kinds {
            services: true,
            slices: true,
            nodes: NodeSelection::None,
            namespaces: false,
        }
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    fn initial(state: &mut ClusterState, services: Vec<Service>, slices: Vec<EndpointSlice>) {
        state.apply(Update::Service(Event::Init));
        for s in services {
            state.apply(Update::Service(Event::InitApply(s)));
        }
        state.apply(Update::Service(Event::InitDone));
        state.apply(Update::Slice(Event::Init));
        for s in slices {
            state.apply(Update::Slice(Event::InitApply(s)));
        }
        state.apply(Update::Slice(Event::InitDone));
    }

    #[test]
    fn synced_only_after_every_selected_kind_listed() {
        let mut state = ClusterState::new(&kinds());
        state.apply(Update::Service(Event::Init));
        state.apply(Update::Service(Event::InitDone));
        assert!(!state.synced(), "slices have not listed yet");
        state.apply(Update::Slice(Event::Init));
        state.apply(Update::Slice(Event::InitDone));
        assert!(
            state.synced(),
            "services and slices listed, nodes/namespaces not selected"
        );
    }

    #[test]
    fn relist_drops_objects_whose_delete_was_missed_and_keeps_unchanged_arcs() {
        let mut state = ClusterState::new(&kinds());
        initial(
            &mut state,
            vec![svc("a", "1"), svc("b", "2")],
            vec![slice("a-1", "a", "3"), slice("b-1", "b", "4")],
        );
        let before = state.snapshot();

        // A relist in which "b" and its slice are gone and "a" is unchanged.
        state.apply(Update::Service(Event::Init));
        state.apply(Update::Service(Event::InitApply(svc("a", "1"))));
        assert_eq!(
            state.snapshot().services.len(),
            2,
            "the old state serves until InitDone"
        );
        assert!(state.apply(Update::Service(Event::InitDone)));
        state.apply(Update::Slice(Event::Init));
        state.apply(Update::Slice(Event::InitApply(slice("a-1", "a", "3"))));
        assert!(state.apply(Update::Slice(Event::InitDone)));

        let after = state.snapshot();
        assert_eq!(
            after.services.keys().collect::<Vec<_>>(),
            vec![&key("a")],
            "stale Service b must be gone"
        );
        assert_eq!(
            after.slices.keys().collect::<Vec<_>>(),
            vec![&key("a")],
            "stale slices of b must be gone"
        );
        assert!(
            Arc::ptr_eq(&before.services[&key("a")], &after.services[&key("a")]),
            "unchanged Service keeps its Arc"
        );
        assert!(
            Arc::ptr_eq(
                before.slices_of(&key("a")).next().expect("a-1"),
                after.slices_of(&key("a")).next().expect("a-1")
            ),
            "unchanged slice keeps its Arc"
        );
    }

    #[test]
    fn relist_without_changes_is_not_a_change() {
        let mut state = ClusterState::new(&kinds());
        initial(&mut state, vec![svc("a", "1")], vec![]);
        state.apply(Update::Service(Event::Init));
        state.apply(Update::Service(Event::InitApply(svc("a", "1"))));
        assert!(
            !state.apply(Update::Service(Event::InitDone)),
            "identical relist must not trigger a rebuild"
        );
    }

    #[test]
    fn apply_replaces_only_on_a_new_resource_version() {
        let mut state = ClusterState::new(&kinds());
        initial(&mut state, vec![svc("a", "1"), svc("b", "1")], vec![]);
        let before = state.snapshot();
        assert!(
            !state.apply(Update::Service(Event::Apply(svc("a", "1")))),
            "same version is no change"
        );
        assert!(state.apply(Update::Service(Event::Apply(svc("a", "5")))));
        let after = state.snapshot();
        assert!(!Arc::ptr_eq(
            &before.services[&key("a")],
            &after.services[&key("a")]
        ));
        assert!(Arc::ptr_eq(
            &before.services[&key("b")],
            &after.services[&key("b")]
        ));
    }

    #[test]
    fn slice_moves_between_services_when_its_label_changes() {
        let mut state = ClusterState::new(&kinds());
        initial(&mut state, vec![], vec![slice("x", "a", "1")]);
        state.apply(Update::Slice(Event::Apply(slice("x", "b", "2"))));
        let snap = state.snapshot();
        assert!(
            !snap.slices.contains_key(&key("a")),
            "old group must be removed when empty: {:?}",
            snap.slices.keys().collect::<Vec<_>>()
        );
        assert_eq!(snap.slices_of(&key("b")).count(), 1);
        state.apply(Update::Slice(Event::Delete(slice("x", "b", "3"))));
        assert!(state.snapshot().slices.is_empty());
    }

    #[test]
    fn slice_without_service_label_is_kept_out_of_the_snapshot() {
        let mut state = ClusterState::new(&kinds());
        let mut orphan = slice("o", "a", "1");
        orphan.metadata.labels = None;
        initial(&mut state, vec![], vec![orphan]);
        assert!(state.snapshot().slices.is_empty());
    }

    /// Not a timing assertion: prints what publishing one endpoint change
    /// costs at 10k Services + 10k slices (apply the event, build the
    /// snapshot, free the one it replaces)
    /// (`cargo test -p sluice-k8s --release -- --ignored --nocapture publish_cost`).
    #[test]
    #[ignore = "benchmark: prints figures, asserts nothing about time"]
    fn publish_cost_of_one_change_at_ten_thousand_services() {
        let mut state = ClusterState::new(&kinds());
        let n = 10_000;
        let services = (0..n).map(|i| svc(&format!("svc-{i}"), "1")).collect();
        let slices = (0..n)
            .map(|i| slice(&format!("svc-{i}-abc"), &format!("svc-{i}"), "1"))
            .collect();
        initial(&mut state, services, slices);
        let mut held = Arc::new(state.snapshot());
        let rounds = 200;
        let mut took = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let target = (i * 7919) % n;
            let event = Event::Apply(slice(
                &format!("svc-{target}-abc"),
                &format!("svc-{target}"),
                &format!("{}", i + 2),
            ));
            let start = Instant::now();
            assert!(
                state.apply(Update::Slice(event)),
                "a new version is a change"
            );
            let snap = Arc::new(state.snapshot());
            // The publisher replaces the held snapshot: freeing it is part of the cost.
            let services = snap.services.len();
            held = snap;
            took.push(start.elapsed());
            assert_eq!(services, n);
        }
        drop(held);
        took.sort_unstable();
        eprintln!(
            "publish one slice change at {n} services + {n} slices ({rounds} rounds): \
             median {:?}, p99 {:?}, max {:?}",
            took[rounds / 2],
            took[rounds * 99 / 100],
            took[rounds - 1]
        );
    }
}
