//! The `sluice-dns` command line.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tracing::{error, info, warn};

use crate::{
    acl::AllowRecursion,
    engine::Engine,
    forward::{self, ForwardConfig, Forwarder},
    metrics::Metrics,
    model::{Config, PodsMode},
    server::{self, ServeOptions, UdpEngine},
};

/// Cluster DNS server: the Kubernetes DNS specification, forwarding the rest upstream.
#[derive(Debug, clap::Parser)]
#[command(name = "sluice-dns", version)]
pub struct Args {
    /// Read Services, EndpointSlices and Namespaces from this directory of YAML manifests (standalone mode) and follow its changes.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Watch the API server described by this kubeconfig (default without --manifests: in-cluster config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub zone: String,
    /// Address to serve DNS on, UDP and TCP (repeatable).
    #[arg(long, default_value = "0.0.0.0:53")]
    pub listen: Vec<SocketAddr>,
    /// resolv.conf-style file naming the upstream servers for names outside the zone (`nameserver IP` or `nameserver IP:PORT`).
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    pub upstream: PathBuf,
    /// TTL of cluster records (and the SOA minimum, the negative TTL).
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`.
    #[arg(long, value_enum, default_value = "insecure")]
    pub pods: PodsMode,
    /// The Service whose ClusterIPs answer `ns.dns.<zone>` (NAMESPACE/NAME).
    #[arg(long, default_value = "kube-system/kube-dns")]
    pub dns_service: String,
    /// Prometheus `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// UDP sockets per listen address (SO_REUSEPORT); default: one per CPU.
    #[arg(long)]
    pub udp_sockets: Option<usize>,
    /// Worker threads; default: one per CPU.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Who reads the UDP sockets.
    #[arg(long, value_enum, default_value = "direct")]
    pub udp_engine: UdpEngine,
    /// Entries of the forwarding cache (0 disables it).
    #[arg(long, default_value_t = 10_000)]
    pub cache_size: usize,
    /// Bytes the forwarding cache may hold, responses and keys counted (0 disables it).
    #[arg(long, default_value_t = forward::DEFAULT_CACHE_BYTES)]
    pub cache_bytes: usize,
    /// Forwarded questions waiting for an upstream at once; more are answered SERVFAIL at once.
    #[arg(long, default_value_t = forward::DEFAULT_MAX_INFLIGHT)]
    pub max_inflight_forwards: usize,
    /// TCP connections open at once; more are closed at once.
    #[arg(long, default_value_t = 256)]
    pub max_tcp_connections: usize,
    /// Clients that may have names outside the zone forwarded (repeatable):
    /// `cluster` (loopback, every Node's spec.podCIDRs and InternalIP/ExternalIP
    /// addresses, following Node changes), a CIDR, or `any`. Others get REFUSED;
    /// cluster names are answered to everyone.
    #[arg(long, value_name = "cluster|any|CIDR", default_value = "cluster")]
    pub allow_recursion: Vec<AllowRecursion>,
    /// Longest time a forwarded answer is cached, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub cache_max_ttl: u32,
    /// Longest time a forwarded NXDOMAIN/NODATA is cached, in seconds.
    #[arg(long, default_value_t = 1800)]
    pub cache_max_negative_ttl: u32,
    /// Timeout of one upstream attempt, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub upstream_timeout_ms: u64,
}

/// Runs the server until SIGINT or SIGTERM.
///
/// # Errors
/// Bad flags, unreadable sources or unbindable sockets.
pub fn run(args: Args) -> anyhow::Result<()> {
    sluice_node::logging::init("info,hickory_server=warn");
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.unwrap_or(cpus).max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run_async(args, cpus))
}

async fn run_async(args: Args, cpus: usize) -> anyhow::Result<()> {
    let mut cfg = Config::new(&args.zone)?;
    cfg.ttl = args.ttl;
    cfg.pods = args.pods;
    let (ns, name) = args
        .dns_service
        .split_once('/')
        .with_context(|| format!("--dns-service {:?}: expected NAMESPACE/NAME", args.dns_service))?;
    cfg.dns_service = sluice_k8s::ObjectKey::new(ns, name);

    let text = std::fs::read_to_string(&args.upstream)
        .with_context(|| format!("reading upstreams from {}", args.upstream.display()))?;
    let upstreams = forward::parse_resolv_conf(&text)
        .with_context(|| format!("upstreams in {}", args.upstream.display()))?;
    let (upstreams, refused) = forward::without_self(upstreams, &args.listen);
    if !refused.is_empty() {
        error!(?refused, "refusing upstreams that are this server itself (forwarding loop)");
    }
    if upstreams.is_empty() {
        warn!(file = %args.upstream.display(), "no usable upstreams: names outside the zone answer SERVFAIL");
    }

    let snapshots = match &args.manifests {
        Some(dir) => sluice_k8s::manifests::watch_dir(dir)
            .with_context(|| format!("reading manifests from {}", dir.display()))?,
        None => {
            let nodes = if args.allow_recursion.contains(&AllowRecursion::Cluster) {
                // `--allow-recursion cluster` reads the pod CIDRs and addresses of the Nodes.
                sluice_k8s::kube_source::NodeSelection::All
            } else {
                sluice_k8s::kube_source::NodeSelection::None
            };
            let kinds = sluice_k8s::kube_source::Kinds {
                services: true,
                slices: true,
                nodes,
                namespaces: true,
            };
            sluice_k8s::kube_source::watch_cluster(args.kubeconfig.clone(), kinds)
                .await
                .context("connecting to the API server (--kubeconfig, or in-cluster config)")?
        }
    };

    let metrics = Arc::new(Metrics::default());
    if !refused.is_empty() && upstreams.is_empty() {
        metrics.loop_detected.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let forwarder = Forwarder::new(
        ForwardConfig {
            upstreams,
            timeout: Duration::from_millis(args.upstream_timeout_ms),
            cache_size: args.cache_size,
            cache_bytes: args.cache_bytes,
            max_inflight: args.max_inflight_forwards,
            max_ttl: args.cache_max_ttl,
            max_negative_ttl: args.cache_max_negative_ttl,
        },
        metrics.clone(),
    );
    let engine = Arc::new(Engine::with_recursion(cfg, forwarder, metrics, args.allow_recursion.clone()));
    info!(zone = %engine.zone(), upstreams = ?engine.forwarder().upstreams(), allow_recursion = ?args.allow_recursion, "sluice-dns starting");
    let opts = ServeOptions {
        listen: args.listen.clone(),
        udp_sockets: args.udp_sockets.unwrap_or(cpus),
        udp_engine: args.udp_engine,
        tcp_idle_timeout: Duration::from_secs(10),
        metrics_addr: args.metrics_addr,
        max_pending: args.max_inflight_forwards,
        max_tcp_connections: args.max_tcp_connections,
    };
    server::serve(engine, snapshots, opts, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
