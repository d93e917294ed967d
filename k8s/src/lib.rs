//! Kubernetes inputs shared by every Sluice component: the cluster snapshot,
//! the API server source ([`kube_source`]), the standalone manifests source,
//! and the Service/EndpointSlice semantics (which endpoints are usable)
//! written once.
//!
//! Sources are level-triggered: they publish a full [`Snapshot`] on every
//! change through a `tokio::sync::watch` channel; consumers always converge to
//! the latest one and never rely on individual events. A snapshot is made of
//! persistent maps, so publishing one costs O(changed objects), not O(all).

pub mod kube_source;
pub mod manifests;
pub mod semantics;
pub mod slice;
pub mod snapshot;

pub use slice::EndpointSlice;
pub use snapshot::{ObjectKey, OrdMap, SliceGroup, Snapshot, SnapshotBuilder};

/// Errors of the sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {path}: {source}")]
    Watch {
        path: std::path::PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no in-cluster config and no usable default kubeconfig: {0}")]
    InferConfig(#[source] kube::config::InferConfigError),
    #[error("building the API client: {0}")]
    Client(#[source] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
