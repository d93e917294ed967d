use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use proxy_user::{agent, config, ebpf::MapSizes, status};

/// sluice-proxy: eBPF service load balancing, a kube-proxy replacement.
#[derive(Parser)]
#[command(version, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent.
    Run(RunArgs),
    /// Show services, frontends and backends as programmed (from the pinned maps).
    Status {
        #[arg(long, default_value = "/sys/fs/bpf/sluice")]
        bpffs: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Which dataplane to read: pinned maps (ebpf) or this network
        /// namespace's IPVS virtual services and real servers (ipvs).
        #[arg(long, value_enum, default_value_t = DataplaneArg::Ebpf)]
        dataplane: DataplaneArg,
    },
    /// Detach the programs and remove every map and link Sluice pinned
    /// (with --dataplane ipvs: our virtual services, the sluice-ipvs0 dummy
    /// interface and the nft table, in this network namespace).
    Cleanup {
        #[arg(long, default_value = "/sys/fs/bpf/sluice")]
        bpffs: PathBuf,
        #[arg(long, value_enum, default_value_t = DataplaneArg::Ebpf)]
        dataplane: DataplaneArg,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A YAML config file whose keys are the flags of `run` in camelCase
    /// (e.g. `bpffs`, `metricsAddr`, `keepOnExit`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Standalone mode: follow a directory of Kubernetes YAML.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig for the API server (default: in-cluster config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name (topology, internalTrafficPolicy).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// cgroup v2 directory to attach to (default: the host's cgroup v2 root).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// bpffs directory for pinned maps and links (mounted if it is not a bpffs).
    #[arg(long, default_value = "/sys/fs/bpf/sluice")]
    bpffs: PathBuf,
    /// Prometheus metrics and health endpoints.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Max entries of the services map (frontends plus backend slots) per family.
    #[arg(long, default_value_t = MapSizes::default().services)]
    lb_map_max: u32,
    /// Max entries of the backends map per family.
    #[arg(long, default_value_t = MapSizes::default().backends)]
    backend_map_max: u32,
    /// Max entries of the socket reverse-NAT map (LRU).
    #[arg(long, default_value_t = MapSizes::default().sock_revnat)]
    sock_revnat_map_max: u32,
    /// Max entries of the session-affinity map (LRU).
    #[arg(long, default_value_t = MapSizes::default().affinity)]
    affinity_map_max: u32,
    /// Keep programs and maps in place on SIGTERM/SIGINT so traffic keeps
    /// flowing across an upgrade (the DaemonSet sets this).
    #[arg(long)]
    keep_on_exit: bool,
    /// Full resync period in seconds.
    #[arg(long, default_value_t = 60)]
    resync_secs: u64,
    /// Interfaces facing outside clients: serve NodePorts, LoadBalancer IPs
    /// and ExternalIPs there at tc (off when empty).
    #[arg(long, value_delimiter = ',')]
    external_interfaces: Vec<String>,
    /// Also attach the XDP fast path (native mode) to --external-interfaces:
    /// packets of flows tc already tracks are forwarded before an skb
    /// exists. An interface whose driver has no native XDP keeps tc alone.
    #[arg(long)]
    external_xdp: bool,
    /// This node's addresses for NodePorts (default: the IPv4 addresses of
    /// --external-interfaces).
    #[arg(long, value_delimiter = ',')]
    node_ip: Vec<std::net::Ipv4Addr>,
    /// nodePortAddresses: CIDRs selecting which node addresses answer NodePorts (default: all).
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<ipnetwork::Ipv4Network>,
    /// Backend selection for external traffic.
    #[arg(long, value_enum, default_value_t = LbAlgorithmArg::Random)]
    lb_algorithm: LbAlgorithmArg,
    /// Size of each Maglev table (a prime, larger than any Service's backend count).
    #[arg(long, default_value_t = proxy_user::external::DEFAULT_MAGLEV_SIZE)]
    maglev_table_size: u32,
    /// The dataplane: eBPF programs, or IPVS virtual services (kube-proxy's
    /// ipvs mode, for nodes that cannot load eBPF; needs CONFIG_IP_VS).
    #[arg(long, value_enum, default_value_t = DataplaneArg::Ebpf)]
    dataplane: DataplaneArg,
    /// IPVS scheduler of every virtual service (--dataplane ipvs).
    #[arg(long, value_enum, default_value_t = proxy_user::ipvs::state::Scheduler::Rr)]
    ipvs_scheduler: proxy_user::ipvs::state::Scheduler,
    /// The pod CIDR of the cluster: with --dataplane ipvs, traffic to a
    /// ClusterIP from outside it is masqueraded (kube-proxy's --cluster-cidr).
    #[arg(long)]
    cluster_cidr: Option<ipnetwork::Ipv4Network>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DataplaneArg {
    Ebpf,
    Ipvs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LbAlgorithmArg {
    Random,
    Maglev,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = match config::expand_args(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sluice-proxy: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match real_main(Cli::parse_from(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-proxy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(a) => {
            let source = match (a.manifests.clone(), a.kubeconfig.clone()) {
                (Some(dir), _) => agent::Source::Manifests(dir),
                (None, kubeconfig) => agent::Source::Kube { kubeconfig },
            };
            if !proxy_user::external::is_prime(a.maglev_table_size) {
                anyhow::bail!("--maglev-table-size {} is not a prime", a.maglev_table_size);
            }
            if a.dataplane == DataplaneArg::Ipvs {
                return run_ipvs(a, source);
            }
            let external = (!a.external_interfaces.is_empty()).then(|| agent::ExternalSettings {
                attach: proxy_user::external_dp::ExternalAttach {
                    interfaces: a.external_interfaces.clone(),
                    xdp: a.external_xdp,
                },
                node_ips: a.node_ip.clone(),
                model: proxy_user::external::ExternalConfig {
                    node_ips: Vec::new(),
                    nodeport_addresses: a.nodeport_addresses.clone(),
                    lb_algorithm: match a.lb_algorithm {
                        LbAlgorithmArg::Random => proxy_user::external::LbAlgorithm::Random,
                        LbAlgorithmArg::Maglev => proxy_user::external::LbAlgorithm::Maglev,
                    },
                    maglev_size: a.maglev_table_size,
                },
            });
            let cfg = agent::Config {
                source,
                node_name: a.node_name,
                cgroup: a.cgroup,
                bpffs: a.bpffs,
                sizes: MapSizes {
                    services: a.lb_map_max,
                    backends: a.backend_map_max,
                    sock_revnat: a.sock_revnat_map_max,
                    affinity: a.affinity_map_max,
                },
                keep_on_exit: a.keep_on_exit,
                resync: Duration::from_secs(a.resync_secs.max(1)),
                metrics_addr: a.metrics_addr,
                external,
            };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(agent::run(cfg))?;
            Ok(())
        }
        Command::Status { json, dataplane: DataplaneArg::Ipvs, .. } => {
            let rows = proxy_user::ipvs::status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", proxy_user::ipvs::status_table(&rows));
            }
            Ok(())
        }
        Command::Cleanup { dataplane: DataplaneArg::Ipvs, .. } => {
            let removed = proxy_user::ipvs::cleanup()?;
            for r in &removed {
                println!("removed {r}");
            }
            if removed.is_empty() {
                println!("nothing of the ipvs dataplane in this network namespace");
            }
            Ok(())
        }
        Command::Status { bpffs, json, .. } => {
            let rows = status::read(&bpffs)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", status::table(&rows));
            }
            Ok(())
        }
        Command::Cleanup { bpffs, .. } => {
            let removed = proxy_user::ebpf::remove_pinned(&bpffs)?;
            for r in &removed {
                println!("removed {r}");
            }
            if removed.is_empty() {
                println!("nothing pinned under {}", bpffs.display());
            }
            Ok(())
        }
    }
}

/// `run --dataplane ipvs`: NodePorts answer on --node-ip (or the addresses
/// of --external-interfaces); the eBPF-only flags do not apply.
fn run_ipvs(a: RunArgs, source: agent::Source) -> anyhow::Result<()> {
    let node_ips = if !a.node_ip.is_empty() {
        a.node_ip.clone()
    } else if !a.external_interfaces.is_empty() {
        proxy_user::external_dp::interface_ipv4s(&a.external_interfaces)?
    } else {
        Vec::new()
    };
    let external = (!node_ips.is_empty()).then(|| proxy_user::external::ExternalConfig {
        node_ips,
        nodeport_addresses: a.nodeport_addresses.clone(),
        ..Default::default()
    });
    let cfg = proxy_user::ipvs::agent::Config {
        source,
        node_name: a.node_name,
        settings: proxy_user::ipvs::state::Settings {
            scheduler: a.ipvs_scheduler,
            node_ips: Default::default(),
            cluster_cidr: a.cluster_cidr,
        },
        external,
        keep_on_exit: a.keep_on_exit,
        resync: Duration::from_secs(a.resync_secs.max(1)),
        metrics_addr: a.metrics_addr,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(proxy_user::ipvs::agent::run(cfg))?;
    Ok(())
}
