//! sluice-bench: Sluice against kube-proxy's iptables and nftables datapaths
//! on the same namespace topology. Run it through `cargo xtask bench`.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "sluice-bench", about = "Sluice benchmarks: throughput, connection rate, control plane")]
struct Cli {
    #[command(flatten)]
    args: tests::bench::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match tests::bench::run(&cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
