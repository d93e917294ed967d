//! `sluice_k8s::kube_source::watch_cluster` against the test API server:
//! the real kube-rs list/watch path over HTTP on loopback. Each test runs in
//! a network namespace of its own (the runtime's threads are created inside
//! it); needs root, skipped otherwise.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use sluice_k8s::{
    kube_source::{watch_cluster, Kinds, NodeSelection},
    ObjectKey, Snapshot,
};
use tests::apiserver::ApiServer;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

/// A runtime whose worker threads start in the calling thread's namespace.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("building a tokio runtime")
}

fn service(name: &str, ip: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(name: &str, service: &str, addrs: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                service.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: addrs
            .iter()
            .map(|a| Endpoint {
                addresses: vec![(*a).to_owned()],
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

fn named<T: Default>(name: &str, make: impl FnOnce(ObjectMeta) -> T) -> T {
    make(ObjectMeta {
        name: Some(name.into()),
        ..ObjectMeta::default()
    })
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("default", name)
}

fn addresses(snap: &Snapshot, service: &str) -> Vec<String> {
    snap.slices_of(&key(service))
        .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.iter().map(ToString::to_string)))
        .collect()
}

/// A kubeconfig file for the server, removed on drop.
struct Kubeconfig(PathBuf);

impl Kubeconfig {
    fn new(server: &ApiServer, test: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "sluice-kubeconfig-{}-{test}.yaml",
            std::process::id()
        ));
        server.write_kubeconfig(&path);
        Self(path)
    }
}

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn kinds() -> Kinds {
    Kinds {
        services: true,
        slices: true,
        nodes: NodeSelection::One("node-a".into()),
        namespaces: true,
    }
}

/// Waits until a snapshot satisfies `what`; panics naming the expectation and the last snapshot.
async fn wait_for(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    expected: &str,
    what: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let snap = rx.borrow_and_update().clone();
        if what(&snap) {
            return snap;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!(
                "expected {expected}; the source ended. Last snapshot: {}",
                describe(&snap)
            ),
            Err(_) => panic!(
                "expected {expected} within {WAIT:?}; last snapshot: {}",
                describe(&snap)
            ),
        }
    }
}

fn describe(snap: &Snapshot) -> String {
    format!(
        "synced={} services={:?} slices={:?} nodes={:?} namespaces={:?}",
        snap.synced,
        snap.services
            .keys()
            .take(10)
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        snap.slices
            .iter()
            .take(10)
            .map(|(k, v)| format!("{k}: {:?}", v.names().collect::<Vec<_>>()))
            .collect::<Vec<_>>(),
        snap.nodes.keys().collect::<Vec<_>>(),
        snap.namespaces.keys().collect::<Vec<_>>(),
    )
}

/// Two Services with one slice each, two Nodes, one Namespace.
fn populated_server() -> ApiServer {
    let server = ApiServer::start();
    server.apply(&service("web", "198.19.0.10"));
    server.apply(&service("db", "198.19.0.11"));
    server.apply(&slice("web-1", "web", &["198.18.1.10", "198.18.2.10"]));
    server.apply(&slice("db-1", "db", &["198.18.1.20"]));
    server.apply(&named("node-a", |metadata| Node {
        metadata,
        ..Node::default()
    }));
    server.apply(&named("node-b", |metadata| Node {
        metadata,
        ..Node::default()
    }));
    server.apply(&named("default", |metadata| Namespace {
        metadata,
        ..Namespace::default()
    }));
    server
}

#[test]
fn initial_sync_sets_synced_and_carries_every_selected_object() {
    let Some(_netns) = tests::ThreadNetns::enter("initial_sync_s") else { return };
    runtime().block_on(initial_sync_sets_synced_and_carries_every_selected_object_body());
}

async fn initial_sync_sets_synced_and_carries_every_selected_object_body() {
    let server = populated_server();
    let kc = Kubeconfig::new(&server, "initial");
    let mut rx = watch_cluster(Some(kc.0.clone()), kinds())
        .await
        .expect("watch_cluster starts");
    assert!(
        !rx.borrow().synced,
        "nothing is synced before the first list"
    );

    let snap = wait_for(&mut rx, "a synced snapshot", |s| s.synced).await;
    assert_eq!(
        snap.services.keys().cloned().collect::<Vec<_>>(),
        vec![key("db"), key("web")],
        "{}",
        describe(&snap)
    );
    assert_eq!(addresses(&snap, "web"), vec!["198.18.1.10", "198.18.2.10"]);
    assert_eq!(addresses(&snap, "db"), vec!["198.18.1.20"]);
    assert_eq!(
        snap.nodes.keys().collect::<Vec<_>>(),
        vec!["node-a"],
        "NodeSelection::One must select only that node: {}",
        describe(&snap)
    );
    assert!(
        snap.namespaces.contains_key("default"),
        "{}",
        describe(&snap)
    );
    assert!(
        snap.services[&key("web")]
            .metadata
            .resource_version
            .is_some(),
        "objects carry the server's resourceVersion"
    );
}

#[test]
fn an_update_and_a_delete_show_up_and_unchanged_objects_keep_their_arc() {
    let Some(_netns) = tests::ThreadNetns::enter("an_update_and_") else { return };
    runtime().block_on(an_update_and_a_delete_show_up_and_unchanged_objects_keep_their_arc_body());
}

async fn an_update_and_a_delete_show_up_and_unchanged_objects_keep_their_arc_body() {
    let server = populated_server();
    let kc = Kubeconfig::new(&server, "update");
    let mut rx = watch_cluster(Some(kc.0.clone()), kinds())
        .await
        .expect("watch_cluster starts");
    let before = wait_for(&mut rx, "a synced snapshot", |s| s.synced).await;

    server.apply(&slice("web-1", "web", &["198.18.1.10", "198.18.3.10"]));
    let after = wait_for(&mut rx, "web's slice with 198.18.3.10", |s| {
        addresses(s, "web").contains(&"198.18.3.10".to_owned())
    })
    .await;
    assert!(
        Arc::ptr_eq(&before.services[&key("web")], &after.services[&key("web")]),
        "an unchanged Service must keep its Arc across snapshots"
    );
    assert!(
        Arc::ptr_eq(
            before.slices_of(&key("db")).next().expect("db has a slice"),
            after.slices_of(&key("db")).next().expect("db has a slice")
        ),
        "an unchanged slice must keep its Arc across snapshots"
    );

    server.delete::<Service>(Some("default"), "db");
    server.delete::<EndpointSlice>(Some("default"), "db-1");
    let snap = wait_for(&mut rx, "db and its slices gone", |s| {
        !s.services.contains_key(&key("db")) && s.slices_of(&key("db")).next().is_none()
    })
    .await;
    assert!(snap.synced);
    assert!(snap.services.contains_key(&key("web")));
}

#[test]
fn a_delete_missed_during_an_outage_is_dropped_by_the_relist() {
    let Some(_netns) = tests::ThreadNetns::enter("a_delete_misse") else { return };
    runtime().block_on(a_delete_missed_during_an_outage_is_dropped_by_the_relist_body());
}

async fn a_delete_missed_during_an_outage_is_dropped_by_the_relist_body() {
    let server = populated_server();
    let kc = Kubeconfig::new(&server, "outage");
    let mut rx = watch_cluster(Some(kc.0.clone()), kinds())
        .await
        .expect("watch_cluster starts");
    let synced = wait_for(&mut rx, "a synced snapshot", |s| s.synced).await;

    // The API server goes away; meanwhile db is deleted and the history compacted,
    // so no DELETED event can ever reach the client: only a relist can drop it.
    server.stop();
    server.delete::<Service>(Some("default"), "db");
    server.delete::<EndpointSlice>(Some("default"), "db-1");
    server.compact();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = rx.borrow().clone();
    assert!(
        Arc::ptr_eq(&during, &synced) || during.services.contains_key(&key("db")),
        "during the outage the last snapshot must stay: {}",
        describe(&during)
    );
    assert!(during.synced, "an outage must not unset synced");

    let lists_before = server.list_requests();
    server.resume();
    let snap = wait_for(&mut rx, "the stale Service db gone after the relist", |s| {
        !s.services.contains_key(&key("db")) && s.slices_of(&key("db")).next().is_none()
    })
    .await;
    assert!(
        snap.services.contains_key(&key("web")),
        "{}",
        describe(&snap)
    );
    assert!(
        server.list_requests() > lists_before,
        "the client must have relisted after 410 Gone (lists before resume {lists_before}, now {})",
        server.list_requests()
    );

    // Changes flow again after the outage.
    server.apply(&service("cache", "198.19.0.12"));
    wait_for(&mut rx, "the new Service cache", |s| {
        s.services.contains_key(&key("cache"))
    })
    .await;
}

#[test]
fn dropped_watches_with_compacted_history_relist_and_converge() {
    let Some(_netns) = tests::ThreadNetns::enter("dropped_watche") else { return };
    runtime().block_on(dropped_watches_with_compacted_history_relist_and_converge_body());
}

async fn dropped_watches_with_compacted_history_relist_and_converge_body() {
    let server = populated_server();
    let kc = Kubeconfig::new(&server, "disconnect");
    let mut rx = watch_cluster(Some(kc.0.clone()), kinds())
        .await
        .expect("watch_cluster starts");
    wait_for(&mut rx, "a synced snapshot", |s| s.synced).await;

    // Whether the client sees the DELETED live (it re-watched first) or relists
    // after 410, the stale Service must end up gone.
    server.disconnect_watches();
    server.delete::<Service>(Some("default"), "db");
    server.compact();
    wait_for(&mut rx, "the Service db gone", |s| {
        !s.services.contains_key(&key("db"))
    })
    .await;

    server.disconnect_watches();
    server.apply(&slice("web-1", "web", &["198.18.4.10"]));
    wait_for(&mut rx, "web's new endpoint after a reconnect", |s| {
        addresses(s, "web") == ["198.18.4.10"]
    })
    .await;
}

#[test]
fn yaml_fixtures_load() {
    let Some(_netns) = tests::ThreadNetns::enter("yaml_fixtures_") else { return };
    runtime().block_on(yaml_fixtures_load_body());
}

async fn yaml_fixtures_load_body() {
    let server = ApiServer::start();
    server.apply_yaml_str(
        r"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec: {clusterIP: 198.19.0.53, ports: [{port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints: [{addresses: [198.18.1.53]}]
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {topology.kubernetes.io/zone: z1}}
",
    );
    let kc = Kubeconfig::new(&server, "yaml");
    let mut rx = watch_cluster(Some(kc.0.clone()), kinds())
        .await
        .expect("watch_cluster starts");
    let snap = wait_for(&mut rx, "a synced snapshot", |s| s.synced).await;
    let dns = ObjectKey::new("kube-system", "dns");
    assert!(snap.services.contains_key(&dns), "{}", describe(&snap));
    assert_eq!(snap.slices_of(&dns).count(), 1);
    assert_eq!(
        snap.nodes["node-a"].metadata.labels.as_ref().unwrap()["topology.kubernetes.io/zone"],
        "z1"
    );
}

#[test]
fn ten_thousand_services_and_slices_sync() {
    let Some(_netns) = tests::ThreadNetns::enter("ten_thousand_s") else { return };
    runtime().block_on(ten_thousand_services_and_slices_sync_body());
}

async fn ten_thousand_services_and_slices_sync_body() {
    const N: usize = 10_000;
    let server = ApiServer::start();
    let fill = Instant::now();
    for i in 0..N {
        let name = format!("svc-{i}");
        let ip = format!("198.19.{}.{}", i / 250, i % 250 + 1);
        server.apply(&service(&name, &ip));
        let pod = format!("198.18.{}.{}", i / 250, i % 250 + 1);
        server.apply(&slice(&format!("{name}-abc"), &name, &[&pod]));
    }
    eprintln!(
        "filled the API server with {N} Services + {N} EndpointSlices in {:?}",
        fill.elapsed()
    );

    let kc = Kubeconfig::new(&server, "scale");
    let start = Instant::now();
    let mut rx = watch_cluster(
        Some(kc.0.clone()),
        Kinds {
            nodes: NodeSelection::None,
            namespaces: false,
            ..kinds()
        },
    )
    .await
    .expect("watch_cluster starts");
    let snap = wait_for(&mut rx, "a synced snapshot", |s| s.synced).await;
    let took = start.elapsed();
    assert_eq!(snap.services.len(), N);
    assert_eq!(snap.slices.len(), N);
    eprintln!(
        "synced {N} Services + {N} EndpointSlices in {took:?} ({} list requests)",
        server.list_requests()
    );

    // One endpoint change at this scale, end to end through the API server (reported, not asserted).
    let mut latencies = Vec::new();
    for round in 0..20 {
        let addr = format!("198.18.200.{}", round + 1);
        let t = Instant::now();
        server.apply(&slice("svc-7-abc", "svc-7", &[&addr]));
        wait_for(&mut rx, "svc-7's new endpoint", |s| {
            addresses(s, "svc-7") == [addr.as_str()]
        })
        .await;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    eprintln!(
        "single EndpointSlice change to snapshot at {N}+{N}: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}
