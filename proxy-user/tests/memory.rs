//! Where the agent's memory goes at 10,000 Services x 10 endpoints: live
//! heap bytes after each stage (objects read, snapshot, translation and
//! plan), counted by a global allocator wrapper. A tool, not a check:
//! `cargo test -p proxy-user --release --test memory -- --ignored --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use proxy_user::{
    dataplane::Dataplane,
    plan::{Diff, Programmed},
    reconcile::Reconciler,
};
use sluice_k8s::manifests::{parse_documents, Object};
use sluice_k8s::SnapshotBuilder;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// What glibc really spends: a chunk is the request plus an 8-byte header,
/// rounded up to 16, at least 32.
static REAL: AtomicIsize = AtomicIsize::new(0);

fn chunk(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        REAL.fetch_add(chunk(layout.size()), Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        REAL.fetch_sub(chunk(layout.size()), Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        REAL.fetch_add(chunk(new_size) - chunk(layout.size()), Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn mib(b: isize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Keeps nothing: only the agent's own state is measured.
#[derive(Default)]
struct Null;

impl Dataplane for Null {
    type Error = std::convert::Infallible;

    fn apply(&mut self, _: &Diff) -> Result<(), Self::Error> {
        Ok(())
    }

    fn programmed(&self) -> Result<Programmed, Self::Error> {
        Ok(Programmed::default())
    }
}

fn manifests(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let (hi, lo) = (i / 250, i % 250);
        let _ = write!(
            s,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\n\
             spec: {{clusterIP: 198.19.{hi}.{lo}, ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc-{i}-x1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints: ["
        );
        for e in 0..10 {
            let _ = write!(s, "{}{{addresses: [198.18.{}.{}], conditions: {{ready: true}}}}", if e > 0 { ", " } else { "" }, (i * 10 + e) / 250 % 250, (i * 10 + e) % 250);
        }
        s.push_str("]\n---\n");
    }
    s
}

#[test]
#[ignore = "a measuring tool; run with --ignored --nocapture"]
fn live_heap_at_ten_thousand_services() {
    let text = manifests(10_000);
    let base = LIVE.load(Relaxed);
    let t0 = std::time::Instant::now();
    let (objects, warnings) = parse_documents("bench", &text);
    println!("parsed 10,000 Services and their slices on one thread in {:?}", t0.elapsed());
    assert!(warnings.is_empty(), "{warnings:?}");
    let objects_bytes = LIVE.load(Relaxed) - base;
    {
        let dir = std::env::temp_dir().join(format!("sluice-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (k, chunk) in text.split_inclusive("---\n").collect::<Vec<_>>().chunks(200).enumerate() {
            std::fs::write(dir.join(format!("m{k:03}.yaml")), chunk.concat()).unwrap();
        }
        {
            let path = dir.join("m000.yaml");
            let t = std::fs::read_to_string(&path).unwrap();
            for name in ["bench".to_string(), path.display().to_string()] {
                let b0 = LIVE.load(Relaxed);
                let (o, w) = parse_documents(&name, &t);
                println!("one file as {name}: {} objects {} warnings {:.2} MiB", o.len(), w.len(), mib(LIVE.load(Relaxed) - b0));
            }
            let b0 = LIVE.load(Relaxed);
            let (o, _) = parse_documents("bench", &text[..t.len()]);
            println!("same bytes from the big text: {} objects {:.2} MiB", o.len(), mib(LIVE.load(Relaxed) - b0));
        }
        let before = LIVE.load(Relaxed);
        let mut kept = Vec::new();
        for k in 0..50 {
            let path = dir.join(format!("m{k:03}.yaml"));
            let t = std::fs::read_to_string(&path).unwrap();
            kept.push(parse_documents(&path.display().to_string(), &t).0);
        }
        println!("per-file parse_documents: {:.1} MiB", mib(LIVE.load(Relaxed) - before));
        let mut b = SnapshotBuilder::new();
        for o in kept.into_iter().flatten() {
            match o {
                Object::Service(s) => {
                    b.service(s);
                }
                Object::EndpointSlice(s) => {
                    b.slice(s);
                }
                _ => {}
            }
        }
        let built = b.build();
        println!("... as a snapshot: {:.1} MiB", mib(LIVE.load(Relaxed) - before));
        drop(built);
        let before = LIVE.load(Relaxed);
        let mut m = sluice_k8s::manifests::ManifestDir::new(&dir);
        let t0 = std::time::Instant::now();
        m.rescan().unwrap();
        println!("ManifestDir::rescan of 100 files: {:?}", t0.elapsed());
        let snap = m.snapshot();
        let source = LIVE.load(Relaxed) - before;
        let _ = std::fs::remove_dir_all(&dir);
        drop(m);
        let snap_only = LIVE.load(Relaxed) - before;
        println!(
            "manifest directory source with its snapshot: {:.1} MiB, of which the snapshot {:.1} MiB ({} services)",
            mib(source),
            mib(snap_only),
            snap.services.len()
        );
        let mut snap = snap;
        snap.services = Default::default();
        println!("without services: {:.1} MiB", mib(LIVE.load(Relaxed) - before));
        snap.slices = Default::default();
        println!("without slices: {:.1} MiB", mib(LIVE.load(Relaxed) - before));
        drop(snap);
        println!("after dropping everything: {:.1} MiB", mib(LIVE.load(Relaxed) - before));
    }
    drop(text);
    let mut b = SnapshotBuilder::new();
    for o in objects {
        match o {
            Object::Service(s) => {
                b.service(s);
            }
            Object::EndpointSlice(s) => {
                b.slice(s);
            }
            _ => {}
        }
    }
    b.synced(true);
    let snap = b.build();
    let snap_bytes = LIVE.load(Relaxed) - base;
    {
        let before = LIVE.load(Relaxed);
        let mut t = proxy_user::model::Translator::new();
        let node = proxy_user::model::NodeInfo::from_snapshot("node-a", &snap);
        let c = t.compute(&snap, &node);
        let with_state = LIVE.load(Relaxed) - before;
        let mut p = proxy_user::plan::Planner::adopt(Programmed::default());
        let b1 = LIVE.load(Relaxed);
        let diff = p.plan_changed(&c.state, &c.changed);
        let diff_bytes = LIVE.load(Relaxed) - b1;
        p.commit(&diff, c.state);
        drop(diff);
        let planner = LIVE.load(Relaxed) - b1;
        println!(
            "translator (memo + desired state) {:.1} MiB; diff {:.1} MiB; planner after commit {:.1} MiB",
            mib(with_state),
            mib(diff_bytes),
            mib(planner)
        );
    }
    let mut r = Reconciler::new(Null, "node-a").unwrap();
    let before = LIVE.load(Relaxed);
    r.reconcile(&snap).unwrap();
    let agent_bytes = LIVE.load(Relaxed) - before;
    println!("everything held now, in glibc chunks: {:.1} MiB (requested {:.1} MiB)", mib(REAL.load(Relaxed)), mib(LIVE.load(Relaxed)));
    println!(
        "objects {:.1} MiB; snapshot (objects + maps) {:.1} MiB; translation + plan state {:.1} MiB",
        mib(objects_bytes),
        mib(snap_bytes),
        mib(agent_bytes)
    );
}

#[test]
#[ignore = "a measuring tool; run with --ignored --nocapture"]
fn object_sizes() {
    use k8s_openapi::api::core::v1::{Service, ServiceSpec, ServiceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    println!(
        "Service {} (ObjectMeta {}, ServiceSpec {}, ServiceStatus {}), ServicePort {}, lean EndpointSlice {}",
        std::mem::size_of::<Service>(),
        std::mem::size_of::<ObjectMeta>(),
        std::mem::size_of::<ServiceSpec>(),
        std::mem::size_of::<ServiceStatus>(),
        std::mem::size_of::<k8s_openapi::api::core::v1::ServicePort>(),
        std::mem::size_of::<sluice_k8s::EndpointSlice>(),
    );
    let text = manifests(1000);
    let (objects, _) = parse_documents("bench", &text);
    let (mut svc, mut sl) = (Vec::new(), Vec::new());
    let b0 = LIVE.load(Relaxed);
    for o in objects {
        match o {
            Object::Service(s) => svc.push(s),
            Object::EndpointSlice(s) => sl.push(s),
            _ => {}
        }
    }
    let all = LIVE.load(Relaxed);
    drop(sl);
    let only_svc = LIVE.load(Relaxed);
    println!("per Service {} B, per slice {} B", (only_svc - b0) / 1000 + 0, (all - only_svc) / 1000);
}
