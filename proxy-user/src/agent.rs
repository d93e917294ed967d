//! The agent: a source of snapshots, the reconciler, and signal handling.

use std::{path::PathBuf, sync::Arc, time::Duration};

use sluice_k8s::Snapshot;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
    metrics::{MapLabel, Metrics},
    ebpf::{self, EbpfDataplane, MapSizes},
    reconcile::Reconciler,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ebpf(#[from] ebpf::Error),
    #[error(transparent)]
    Source(#[from] sluice_k8s::Error),
    #[error("no source: give --manifests DIR or --kubeconfig PATH (in-cluster config is not available here)")]
    NoSource,
    #[error("finding the cgroup v2 root: {0}")]
    Cgroup(std::io::Error),
    #[error("reading the IPv4 addresses of the external interfaces: {0}")]
    ExternalInterfaces(std::io::Error),
    #[error("serving metrics on {addr}: {source}")]
    Metrics { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("removing pinned objects under {path}: {source}")]
    Cleanup { path: PathBuf, source: std::io::Error },
}

/// Where the agent reads the cluster from.
#[derive(Clone, Debug)]
pub enum Source {
    Manifests(PathBuf),
    Kube { kubeconfig: Option<PathBuf> },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub source: Source,
    pub node_name: String,
    /// The cgroup v2 directory to attach to; `None` means the host's v2 root.
    pub cgroup: Option<PathBuf>,
    pub bpffs: PathBuf,
    pub sizes: MapSizes,
    /// Leave programs and maps in place on SIGTERM/SIGINT (for upgrades);
    /// by default the agent detaches and removes what it pinned.
    pub keep_on_exit: bool,
    /// Periodic full resync, even without changes.
    pub resync: Duration,
    /// Where to serve /metrics, /healthz and /readyz.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// NodePort / LoadBalancer / ExternalIP traffic at tc; `None` leaves it off.
    pub external: Option<ExternalSettings>,
}

/// The external path's settings: where to attach and what to serve.
#[derive(Clone, Debug)]
pub struct ExternalSettings {
    pub attach: crate::external_dp::ExternalAttach,
    /// Node addresses; empty means the IPv4 addresses of the interfaces.
    pub node_ips: Vec<std::net::Ipv4Addr>,
    pub model: crate::external::ExternalConfig,
}

/// Retry delay after a failed apply.
const RETRY: Duration = Duration::from_secs(1);

pub(crate) async fn open_source(source: &Source, node_name: &str) -> Result<watch::Receiver<Arc<Snapshot>>, Error> {
    match source {
        Source::Manifests(dir) => Ok(sluice_k8s::manifests::watch_dir(dir.clone())?),
        Source::Kube { kubeconfig } => {
            let kinds = sluice_k8s::kube_source::Kinds {
                services: true,
                slices: true,
                nodes: sluice_k8s::kube_source::NodeSelection::One(node_name.to_owned()),
                namespaces: false,
            };
            Ok(sluice_k8s::kube_source::watch_cluster(kubeconfig.clone(), kinds).await?)
        }
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), Error> {
    let cgroup = match &cfg.cgroup {
        Some(c) => c.clone(),
        None => crate::sys::cgroup2_root().map_err(Error::Cgroup)?,
    };
    let mut snapshots = open_source(&cfg.source, &cfg.node_name).await?;
    let dataplane =
        EbpfDataplane::load_with(&cfg.bpffs, &cgroup, cfg.sizes, cfg.external.as_ref().map(|e| &e.attach))?;
    let mut reconciler = Reconciler::new(dataplane, cfg.node_name.clone())?;
    reconciler.set_after_apply(Box::new(crate::sockdestroy::after_apply(cgroup.clone(), cfg.bpffs.clone())));
    let metrics = Arc::new(Metrics::new());
    reconciler.set_metrics(metrics.clone());
    if let Some(addr) = cfg.metrics_addr {
        // Liveness allows three missed resync periods before calling the loop stuck.
        crate::metrics::serve(addr, metrics.clone(), cfg.resync.as_secs() * 3 + 5)
            .await
            .map_err(|source| Error::Metrics { addr, source })?;
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    let mut external = match &cfg.external {
        Some(e) => {
            let mut model = e.model.clone();
            model.node_ips = if e.node_ips.is_empty() {
                crate::external_dp::interface_ipv4s(&e.attach.interfaces).map_err(Error::ExternalInterfaces)?
            } else {
                e.node_ips.clone()
            };
            reconciler.set_external(Some(model.clone()));
            Some(crate::external_dp::ExternalRuntime::open(&cfg.bpffs, model, &e.attach.interfaces)?)
        }
        None => None,
    };
    let mut gc = tokio::time::interval(crate::external_dp::GC_INTERVAL);
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    info!(node = %cfg.node_name, "sluice-proxy running");
    loop {
        let snap = snapshots.borrow_and_update().clone();
        metrics.beat();
        // Until the source has listed everything, an empty or partial view
        // must not overwrite what is programmed (adopted after a restart).
        let wait = if !snap.synced {
            cfg.resync
        } else {
            match reconciler.reconcile(&snap) {
                Ok(stats) => {
                    if stats.entry_writes >= TRIM_AFTER_WRITES {
                        release_free_memory();
                    }
                    record_fill(&metrics, reconciler.fill(), cfg.sizes);
                    match external.as_mut().map(|x| x.after_reconcile(&snap, &cfg.node_name)) {
                        Some(Err(e)) => {
                            metrics.error("external");
                            error!(error = %e, "programming the external datapath failed; retrying");
                            RETRY
                        }
                        _ => cfg.resync,
                    }
                }
                Err(e) => {
                    error!(error = %e, "applying to the dataplane failed; retrying");
                    RETRY
                }
            }
        };
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    warn!("the source stopped; keeping the dataplane as programmed");
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                    break;
                }
            }
            () = tokio::time::sleep(wait) => {}
            _ = gc.tick(), if external.is_some() => {
                if let Some(x) = external.as_mut() {
                    let n = x.gc();
                    if n > 0 {
                        tracing::debug!(removed = n, "conntrack garbage collected");
                    }
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(external);
    drop(reconciler);
    if cfg.keep_on_exit {
        info!(bpffs = %cfg.bpffs.display(), "exiting; programs and maps stay pinned and keep serving");
    } else {
        let removed = ebpf::remove_pinned(&cfg.bpffs)
            .map_err(|source| Error::Cleanup { path: cfg.bpffs.clone(), source })?;
        info!(removed = removed.len(), "detached and removed pinned objects");
    }
    Ok(())
}

/// A sync this large (a cold start, a relist) frees the parsed text and
/// scratch state of thousands of objects.
const TRIM_AFTER_WRITES: usize = 1_000;

/// Gives memory freed after a large sync back to the kernel. glibc keeps
/// freed blocks in its arenas (one per thread that ever allocated, e.g. the
/// manifest parsers), so without this the resident size stays at the peak
/// of the largest sync ever seen.
fn release_free_memory() {
    // SAFETY: malloc_trim only walks and shrinks the allocator's own arenas;
    // mallinfo2 only reads their counters.
    let info = unsafe {
        libc::malloc_trim(0);
        libc::mallinfo2()
    };
    const MIB: f64 = 1024.0 * 1024.0;
    info!(
        in_use_mib = format!("{:.1}", (info.uordblks + info.hblkhd) as f64 / MIB),
        free_mib = format!("{:.1}", info.fordblks as f64 / MIB),
        arenas = info.arena,
        "heap after a large sync"
    );
}

/// Map fill ratios from the planner's entry counts (O(1) per update).
fn record_fill(metrics: &Metrics, fill: crate::plan::Fill, sizes: MapSizes) {
    let crate::plan::Fill { svc4, svc6, be4, be6 } = fill;
    for (map, used, max) in [
        (proxy_common::maps::SERVICES4, svc4, sizes.services),
        (proxy_common::maps::SERVICES6, svc6, sizes.services),
        (proxy_common::maps::BACKENDS4, be4, sizes.backends),
        (proxy_common::maps::BACKENDS6, be6, sizes.backends),
    ] {
        metrics
            .map_fill
            .get_or_create(&MapLabel { map: map.to_owned() })
            .set(used as f64 / f64::from(max.max(1)));
    }
}
