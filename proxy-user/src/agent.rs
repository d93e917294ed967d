//! The agent: a source of snapshots, the reconciler, and signal handling.

use std::{path::PathBuf, sync::Arc, time::Duration};

use sluice_k8s::Snapshot;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
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
    #[error("the Kubernetes API source is not available in this build yet; use --manifests DIR")]
    KubeNotYet,
    #[error("finding the cgroup v2 root: {0}")]
    Cgroup(std::io::Error),
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
}

/// Retry delay after a failed apply.
const RETRY: Duration = Duration::from_secs(1);

fn open_source(source: &Source) -> Result<watch::Receiver<Arc<Snapshot>>, Error> {
    match source {
        Source::Manifests(dir) => Ok(sluice_k8s::manifests::watch_dir(dir.clone())?),
        Source::Kube { .. } => Err(Error::KubeNotYet),
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), Error> {
    let cgroup = match &cfg.cgroup {
        Some(c) => c.clone(),
        None => crate::sys::cgroup2_root().map_err(Error::Cgroup)?,
    };
    let mut snapshots = open_source(&cfg.source)?;
    let dataplane = EbpfDataplane::load(&cfg.bpffs, &cgroup, cfg.sizes)?;
    let mut reconciler = Reconciler::new(dataplane, cfg.node_name.clone())?;
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    info!(node = %cfg.node_name, "sluice-proxy running");
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let wait = match reconciler.reconcile(&snap) {
            Ok(_) => cfg.resync,
            Err(e) => {
                error!(error = %e, "applying to the dataplane failed; retrying");
                RETRY
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
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
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
