use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use anyhow::bail;
use proxy_user::{agent, config, ebpf::MapSizes, sockdestroy, status};
use tracing::{info, warn};

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
    /// Where to serve Prometheus metrics and the health endpoints
    /// (`/metrics`, `/healthz`, `/readyz`). Loopback by default, as
    /// kube-proxy's metrics; a node address makes them reachable from
    /// other hosts.
    #[arg(long, default_value = DEFAULT_METRICS_ADDR)]
    metrics_addr: std::net::SocketAddr,
    /// Directories holding bind mounts of pod network namespaces (the
    /// container runtime's, usually /var/run/netns), where connected UDP
    /// sockets of removed backends are destroyed. Without it, pods'
    /// namespaces are found through /proc, which needs the host PID
    /// namespace and CAP_SYS_PTRACE.
    #[arg(long, value_delimiter = ',')]
    netns_dir: Vec<PathBuf>,
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

const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:10249";

#[derive(Clone, Copy, clap::ValueEnum)]
enum LbAlgorithmArg {
    Random,
    Maglev,
}

fn main() -> ExitCode {
    sluice_node::logging::init("info");
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
            eprintln!("sluice-proxy: error: {}", once(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined with ": ", leaving out a cause the
/// text already says (many errors repeat their source in their message).
fn once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(a) => {
            let in_cluster = a.manifests.is_none() && a.kubeconfig.is_none();
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
            preflight(&a)?;
            match sluice_node::bpffs::ensure(&a.bpffs)? {
                sluice_node::bpffs::Ensured::Mounted(at) => info!(at = %at.display(), "mounted a bpf filesystem"),
                sluice_node::bpffs::Ensured::Present => {}
            }
            // Held until the process ends: a second agent on this directory refuses to start.
            let _lock = sluice_node::lock::DirLock::acquire(&a.bpffs, "sluice-proxy")?;
            for w in sockdestroy::startup_warnings(&a.netns_dir) {
                warn!("{w}");
            }
            sockdestroy::set_netns_dirs(a.netns_dir.clone());
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
                metrics_addr: Some(a.metrics_addr),
                external,
            };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(agent::run(cfg)).map_err(|e| explain(e, in_cluster))?;
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
        metrics_addr: Some(a.metrics_addr),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(proxy_user::ipvs::agent::run(cfg))?;
    Ok(())
}

/// What `run` needs before it touches anything, each failure with its fix.
fn preflight(a: &RunArgs) -> anyhow::Result<()> {
    use sockdestroy::{has_cap, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN};
    let admin = has_cap(CAP_SYS_ADMIN);
    let missing: Vec<&str> = [("BPF", has_cap(CAP_BPF) || admin), ("NET_ADMIN", has_cap(CAP_NET_ADMIN)), ("PERFMON", has_cap(CAP_PERFMON) || admin)]
        .into_iter()
        .filter_map(|(name, have)| (!have).then_some(name))
        .collect();
    if !missing.is_empty() {
        bail!(
            "sluice-proxy run needs the capabilities BPF, NET_ADMIN and PERFMON to load and attach its programs \
             (missing: {}): run it as root (`sudo sluice-proxy run ...`) or grant them as the DaemonSet does \
             (proxy-user/deploy/sluice-proxy.yaml)",
            missing.join(", ")
        );
    }
    if let Some(dir) = &a.manifests {
        if !dir.is_dir() {
            bail!(
                "--manifests {}: no such directory: give the directory of Kubernetes YAML (Services, EndpointSlices) to follow",
                dir.display()
            );
        }
    }
    if let Some(file) = &a.kubeconfig {
        if !file.is_file() {
            bail!(
                "--kubeconfig {}: no such file: give the path of a kubeconfig (e.g. ~/.kube/config), leave the flag out \
                 inside a cluster (in-cluster config), or run standalone with --manifests DIR",
                file.display()
            );
        }
    }
    if let Some(cgroup) = &a.cgroup {
        if !cgroup.is_dir() {
            bail!("--cgroup {}: no such directory: give a cgroup v2 directory (default: the host's cgroup v2 root)", cgroup.display());
        }
    }
    Ok(())
}

/// The agent's error with what to do about it, for the errors a new user meets.
fn explain(e: agent::Error, in_cluster: bool) -> anyhow::Error {
    let hint = match &e {
        agent::Error::Source(sluice_k8s::Error::InferConfig(_)) if in_cluster => Some(
            "not running in a cluster and no kubeconfig found: give --kubeconfig PATH, or run standalone with --manifests DIR",
        ),
        agent::Error::Source(sluice_k8s::Error::Kubeconfig { .. }) => {
            Some("the kubeconfig is unusable: check that it is a valid kubeconfig with a current context (`kubectl --kubeconfig PATH config view`)")
        }
        _ => None,
    };
    match hint {
        Some(h) => anyhow::anyhow!("{e}\n{h}"),
        None => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_bind_to_loopback_unless_told_otherwise() {
        let run = |extra: &[&str]| match Cli::try_parse_from(["sluice-proxy", "run", "--node-name", "n"].iter().chain(extra)) {
            Ok(Cli { command: Command::Run(a) }) => a,
            Ok(_) => panic!("not run"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(run(&[]).metrics_addr, "127.0.0.1:10249".parse().unwrap());
        assert_eq!(run(&["--metrics-addr", "192.0.2.1:9999"]).metrics_addr, "192.0.2.1:9999".parse().unwrap());
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let inner = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = anyhow::Error::new(inner).context("map SLC_SVC4: BPF_OBJ_GET failed: No such file or directory (os error 2)");
        assert_eq!(once(&e), "map SLC_SVC4: BPF_OBJ_GET failed: No such file or directory (os error 2)");
        let e = anyhow::anyhow!("disk").context("reading x");
        assert_eq!(once(&e), "reading x: disk");
    }
}
