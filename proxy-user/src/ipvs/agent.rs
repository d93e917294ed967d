//! The agent loop with the IPVS dataplane: the same sources, translator,
//! planner and reconciler as eBPF; only the dataplane differs, plus the
//! periodic deletion of drained real servers.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use super::{state::Settings, IpvsDataplane};
use crate::{agent::Source, external::ExternalConfig, metrics::Metrics, reconcile::Reconciler};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ipvs(#[from] super::Error),
    #[error(transparent)]
    Agent(#[from] crate::agent::Error),
    #[error("serving metrics on {addr}: {source}")]
    Metrics { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub source: Source,
    pub node_name: String,
    pub settings: Settings,
    /// NodePorts, LB IPs and ExternalIPs as virtual services; `None` leaves
    /// them out. Its `node_ips` are where NodePorts answer.
    pub external: Option<ExternalConfig>,
    /// Leave virtual services, addresses and nft table in place on exit.
    pub keep_on_exit: bool,
    pub resync: Duration,
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// How often drained real servers are looked at (kube-proxy: every minute;
/// shorter here so a drained endpoint disappears soon after its last connection).
const DRAIN_CHECK: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_secs(1);

/// Runs until SIGTERM or SIGINT.
pub async fn run(mut cfg: Config) -> Result<(), Error> {
    if let Some(e) = &cfg.external {
        cfg.settings.node_ips.extend(e.node_ips.iter().map(|ip| IpAddr::V4(*ip)));
    }
    // Refuse before anything else on a kernel without IPVS.
    let dataplane = IpvsDataplane::open(cfg.settings.clone())?;
    let mut snapshots = crate::agent::open_source(&cfg.source, &cfg.node_name).await?;
    let mut reconciler = Reconciler::new(dataplane, cfg.node_name.clone())?;
    reconciler.set_external(cfg.external.clone());
    let metrics = Arc::new(Metrics::new());
    reconciler.set_metrics(metrics.clone());
    if let Some(addr) = cfg.metrics_addr {
        crate::metrics::serve(addr, metrics.clone(), cfg.resync.as_secs() * 3 + 5)
            .await
            .map_err(|source| Error::Metrics { addr, source })?;
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    let mut drain = tokio::time::interval(DRAIN_CHECK);
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    info!(node = %cfg.node_name, scheduler = cfg.settings.scheduler.name(), "sluice-proxy running (dataplane ipvs)");
    loop {
        let snap = snapshots.borrow_and_update().clone();
        metrics.beat();
        let wait = if !snap.synced {
            cfg.resync
        } else {
            match reconciler.reconcile(&snap) {
                Ok(_) => cfg.resync,
                Err(e) => {
                    error!(error = %e, "applying to IPVS failed; retrying");
                    RETRY
                }
            }
        };
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    warn!("the source stopped; keeping IPVS as programmed");
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                    break;
                }
            }
            () = tokio::time::sleep(wait) => {}
            _ = drain.tick() => {
                // Not a dataplane change: no reconcile needed after it.
                match reconciler_gc(&mut reconciler) {
                    Ok(0) => {}
                    Ok(n) => info!(removed = n, "drained real servers deleted"),
                    Err(e) => warn!(error = %e, "deleting drained real servers failed"),
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(reconciler);
    if cfg.keep_on_exit {
        info!("exiting; virtual services stay and keep serving");
    } else {
        let removed = super::cleanup()?;
        info!(removed = removed.len(), "removed virtual services, addresses and the nft table");
    }
    Ok(())
}

fn reconciler_gc(r: &mut Reconciler<IpvsDataplane>) -> Result<usize, super::Error> {
    r.dataplane_mut().gc()
}
