//! `sluice-cni`: the CNI plugin when `CNI_COMMAND` is set, the node daemon
//! with `sluice-cni daemon ...`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice-cni", version, about = "Sluice pod networking: CNI plugin (CNI_COMMAND set) and node daemon")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node daemon (VXLAN/host-gw routes, masquerade, subnet file, conflist).
    Daemon(sluice_cni::daemon::Args),
    /// Copy this plugin (and optionally a conflist) onto the host: the DaemonSet's init container.
    Install(sluice_cni::install::Args),
}

fn main() {
    // A runtime invokes a plugin without arguments (the command comes in
    // CNI_COMMAND); that path skips argument parsing entirely.
    if std::env::args_os().len() == 1 {
        std::process::exit(sluice_cni::plugin::main_from_env());
    }
    let args = match Cli::parse().command {
        Cmd::Daemon(args) => args,
        Cmd::Install(args) => {
            if let Err(e) = sluice_cni::install::run(&args) {
                eprintln!("sluice-cni install: {e}");
                std::process::exit(1);
            }
            return;
        }
    };
    sluice_cni::logging::init_daemon();
    if let Err(e) = sluice_cni::daemon::run(args) {
        eprintln!("sluice-cni daemon: {e:#}");
        std::process::exit(1);
    }
}
