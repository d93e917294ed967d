//! `sluice-dns`: cluster DNS to the Kubernetes DNS-Based Service Discovery
//! specification (schema 1.1.0), behaving like CoreDNS's kubernetes plugin
//! where the specification is silent, on hickory-server and hickory-proto.
//!
//! - [`model`]: the pure record model (cluster snapshot -> answers).
//! - [`engine`]: the query path (packet -> response), shared by every socket.
//! - [`forward`]: upstream forwarding, the response cache, loop detection.
//! - [`wire`]: responses cut to the client's size; upstream answers relayed as bytes.
//! - [`acl`]: which clients may use forwarding (`--allow-recursion`).
//! - [`server`]: SO_REUSEPORT UDP sockets, TCP through `hickory_server::Server`.
//! - [`metrics`]: Prometheus metrics and health endpoints.
//! - [`cli`]: the command line of the `sluice-dns` binary.
//! - [`bench`]: dnsperf query files and command lines.
//! - [`testing`]: an engine without sockets, for tests and the fuzz target.

pub mod acl;
pub mod bench;
pub mod cli;
pub mod engine;
pub mod forward;
pub mod metrics;
pub mod model;
pub mod server;
pub mod testing;
pub mod wire;

use std::net::SocketAddr;

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream: {0}")]
    Upstream(String),
    #[error(transparent)]
    Source(#[from] sluice_k8s::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
