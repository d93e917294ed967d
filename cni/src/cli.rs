//! The binary's command line: the clap structs and their conversion to the
//! configuration the library runs ([`daemon::Config`]). The plugin takes
//! no arguments (a runtime passes everything in `CNI_*` and on stdin); see
//! [`crate::spec`] for that side.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ipnetwork::IpNetwork;

use crate::daemon::{self, HostRoutingMode};
use crate::model::Backend;

#[derive(Debug, Parser)]
#[command(name = "sluice-cni", version, about = "Sluice pod networking: CNI plugin (CNI_COMMAND set) and node daemon")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the node daemon (VXLAN/host-gw routes, masquerade, subnet file, conflist).
    Daemon(DaemonArgs),
    /// Copy this plugin (and optionally a conflist) onto the host: the DaemonSet's init container.
    Install(crate::install::Args),
}

/// `sluice-cni daemon`'s flags.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// How pod traffic crosses nodes.
    #[arg(long, value_enum, default_value = "vxlan")]
    pub backend: Backend,
    /// Standalone source: a directory of Kubernetes YAML with v1 Node objects.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// API source: a kubeconfig file (in-cluster config when neither source is given).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the Node object to read the pod range of).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Cluster-wide pod ranges: traffic between them is not masqueraded.
    #[arg(long = "cluster-cidr", default_values = ["10.244.0.0/16"])]
    pub cluster_cidrs: Vec<IpNetwork>,
    /// VXLAN network identifier (24 bits).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=0xff_ffff))]
    pub vni: u32,
    #[arg(long, default_value_t = 8472)]
    pub vxlan_port: u16,
    #[arg(long, default_value = "sluice.vxlan")]
    pub vxlan_device: String,
    /// Pod MTU; derived from the underlay interface when absent.
    #[arg(long, value_parser = clap::value_parser!(u32).range(576..=65535))]
    pub mtu: Option<u32>,
    /// Where the plugin's conflist is written.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    #[arg(long, default_value = "10-sluice.conflist")]
    pub cni_conf_name: String,
    /// Where the subnet file is written (`subnet.json`).
    #[arg(long, default_value = "/run/sluice")]
    pub state_dir: PathBuf,
    /// The built-in IPAM's store, written into the conflist.
    #[arg(long, default_value = crate::spec::DEFAULT_DATA_DIR)]
    pub ipam_dir: PathBuf,
    /// CNI network name in the conflist.
    #[arg(long, default_value = "sluice")]
    pub network_name: String,
    /// The conflist's cniVersion. 1.1.0 (GC and STATUS) needs every chained
    /// plugin to know it; reference plugins before v1.5 (Debian 12 ships
    /// 1.1.1) refuse it, so write 1.0.0 where those run.
    #[arg(long, default_value = crate::spec::LATEST_VERSION, value_parser = crate::spec::SUPPORTED_VERSIONS.to_vec())]
    pub cni_version: String,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (e.g. 127.0.0.1:10259); off when absent.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Leave pod traffic's source address alone.
    #[arg(long)]
    pub no_masquerade: bool,
    /// `ebpf`: pod-to-pod IPv4 traffic skips the node's forwarding path and
    /// netfilter (tc programs on the pod veths, the VXLAN device and the
    /// underlay). Opt-in: conntrack NAT of pod traffic (kube-proxy's
    /// iptables/nftables ClusterIP DNAT) is not undone on such replies, so use
    /// it where services are load-balanced at the socket (sluice-proxy).
    #[arg(long, value_enum, default_value = "kernel")]
    pub host_routing: HostRoutingMode,
    /// bpffs directory for `--host-routing ebpf` (mounted if it is not one).
    #[arg(long, default_value = "/sys/fs/bpf/sluice-cni")]
    pub bpffs: PathBuf,
    /// Full reconcile period even without changes (`500ms`, `30s`, `2m`; more than zero).
    #[arg(long, default_value = "30s", value_parser = parse_period)]
    pub resync: Duration,
}

impl DaemonArgs {
    pub fn into_config(self) -> daemon::Config {
        daemon::Config {
            backend: self.backend,
            manifests: self.manifests,
            kubeconfig: self.kubeconfig,
            node_name: self.node_name,
            cluster_cidrs: self.cluster_cidrs,
            vni: self.vni,
            vxlan_port: self.vxlan_port,
            vxlan_device: self.vxlan_device,
            mtu: self.mtu,
            cni_conf_dir: self.cni_conf_dir,
            cni_conf_name: self.cni_conf_name,
            state_dir: self.state_dir,
            ipam_dir: self.ipam_dir,
            network_name: self.network_name,
            cni_version: self.cni_version,
            metrics_addr: self.metrics_addr,
            no_masquerade: self.no_masquerade,
            host_routing: self.host_routing,
            bpffs: self.bpffs,
            resync: self.resync,
        }
    }
}

/// What one run of the binary does.
#[derive(Debug)]
pub enum Invocation {
    /// No arguments: a runtime ran the plugin (the command is in `CNI_COMMAND`).
    Plugin,
    Daemon(daemon::Config),
    /// Copy the plugin (and optionally a conflist) onto the host: the DaemonSet's init container.
    Install(crate::install::Args),
}

/// Parses the command line (program name first). A runtime invokes a
/// plugin without arguments; that path builds no parser at all.
pub fn parse<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args = args.into_iter().peekable();
    let program = args.next();
    if args.peek().is_none() {
        return Ok(Invocation::Plugin);
    }
    match Cli::try_parse_from(program.into_iter().chain(args))?.command {
        Cmd::Daemon(d) => Ok(Invocation::Daemon(d.into_config())),
        Cmd::Install(i) => Ok(Invocation::Install(i)),
    }
}

/// The daemon's configuration from its flags alone (tests, embedding).
pub fn daemon_config<I, T>(flags: I) -> Result<daemon::Config, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv = ["sluice-cni".into(), "daemon".into()].into_iter().chain(flags.into_iter().map(Into::into));
    match parse(argv)? {
        Invocation::Daemon(c) => Ok(c),
        Invocation::Plugin | Invocation::Install(_) => unreachable!("the daemon subcommand is always given"),
    }
}

/// A period: digits and a unit (`ms`, `s`, `m`; seconds without one). Zero
/// is refused: it would ask for a reconcile loop without pause.
fn parse_period(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_is_the_plugin() {
        assert!(matches!(parse(["sluice-cni"]).unwrap(), Invocation::Plugin));
    }

    #[test]
    fn daemon_defaults_become_the_config() {
        let c = daemon_config(["--node-name", "a"]).unwrap();
        let want = daemon::Config {
            backend: Backend::Vxlan,
            manifests: None,
            kubeconfig: None,
            node_name: "a".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            vni: 1,
            vxlan_port: 8472,
            vxlan_device: "sluice.vxlan".into(),
            mtu: None,
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_conf_name: "10-sluice.conflist".into(),
            state_dir: "/run/sluice".into(),
            ipam_dir: crate::spec::DEFAULT_DATA_DIR.into(),
            network_name: "sluice".into(),
            cni_version: crate::spec::LATEST_VERSION.into(),
            metrics_addr: None,
            no_masquerade: false,
            host_routing: HostRoutingMode::Kernel,
            bpffs: "/sys/fs/bpf/sluice-cni".into(),
            resync: Duration::from_secs(30),
        };
        assert_eq!(c, want);
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let c = daemon_config([
            "--backend", "host-gw", "--manifests", "/m", "--node-name", "n", "--cluster-cidr", "198.18.0.0/16",
            "--cluster-cidr", "2001:db8:1::/48", "--vni", "7", "--vxlan-port", "4789", "--vxlan-device", "vx",
            "--mtu", "1400", "--cni-conf-dir", "/c", "--cni-conf-name", "x.conflist", "--state-dir", "/s",
            "--ipam-dir", "/i", "--network-name", "net", "--no-masquerade", "--host-routing", "ebpf", "--bpffs", "/b",
            "--resync", "250ms",
        ])
        .unwrap();
        assert_eq!(c.backend, Backend::HostGw);
        assert_eq!(c.manifests.as_deref(), Some(std::path::Path::new("/m")));
        assert_eq!(c.cluster_cidrs.len(), 2);
        assert_eq!((c.vni, c.vxlan_port, c.vxlan_device.as_str(), c.mtu), (7, 4789, "vx", Some(1400)));
        assert_eq!((c.cni_conf_name.as_str(), c.network_name.as_str()), ("x.conflist", "net"));
        assert_eq!((c.state_dir, c.ipam_dir, c.cni_conf_dir, c.bpffs), ("/s".into(), "/i".into(), "/c".into(), "/b".into()));
        assert!(c.no_masquerade);
        assert_eq!(c.host_routing, HostRoutingMode::Ebpf);
        assert_eq!(c.resync, Duration::from_millis(250));
    }

    #[test]
    fn a_zero_resync_is_refused_with_a_clear_error() {
        for zero in ["0", "0s", "0ms", "0m"] {
            let e = daemon_config(["--node-name", "a", "--resync", zero]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{zero}");
            assert!(e.to_string().contains("must be more than zero"), "{zero}: {e}");
        }
        assert_eq!(parse_period("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_period("5h").unwrap_err().contains("unit"));
        assert!(parse_period("").is_err());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for (flag, v) in [("--vni", "16777216"), ("--mtu", "100"), ("--mtu", "70000"), ("--vxlan-port", "70000")] {
            assert!(daemon_config(["--node-name", "a", flag, v]).is_err(), "{flag} {v}");
        }
        assert!(daemon_config(["--node-name", "a", "--manifests", "/m", "--kubeconfig", "/k"]).is_err());
        assert!(daemon_config(["--frob"]).is_err());
    }
}
