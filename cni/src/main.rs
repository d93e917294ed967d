//! `sluice-cni`: the CNI plugin when run without arguments (a runtime
//! passes the command in `CNI_COMMAND`), the node daemon with
//! `sluice-cni daemon ...`. The command line lives in [`sluice_cni::cli`].

use sluice_cni::cli::{self, Invocation};

fn main() {
    // A runtime invokes a plugin without arguments; that path skips
    // argument parsing entirely.
    if std::env::args_os().len() == 1 {
        std::process::exit(sluice_cni::plugin::main_from_env());
    }
    let config = match cli::parse(std::env::args_os()) {
        Ok(Invocation::Daemon(config)) => config,
        Ok(Invocation::Install(args)) => {
            if let Err(e) = sluice_cni::install::run(&args) {
                eprintln!("sluice-cni install: {e}");
                std::process::exit(1);
            }
            return;
        }
        Ok(Invocation::Plugin) => std::process::exit(sluice_cni::plugin::main_from_env()),
        Err(e) => e.exit(),
    };
    sluice_cni::logging::init_daemon();
    if let Err(e) = sluice_cni::daemon::run(config) {
        eprintln!("sluice-cni daemon: {e:#}");
        std::process::exit(1);
    }
}
