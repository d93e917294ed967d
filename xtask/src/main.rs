//! `cargo xtask`: what cargo alone cannot do for Sluice (machine setup,
//! privileged tests, demo, benchmarks, cleanup after crashes).

mod bench;
mod demo;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Sluice developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (Debian packages, nightly rust-src, bpf-linker); idempotent, needs root.
    Setup,
    /// Build the agent and its embedded eBPF object.
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
    /// A two-node cluster in namespaces with services, DNS and iperf3 through a ClusterIP.
    Demo(demo::DemoArgs),
    /// Every test, unit and privileged end to end (what CI runs). Arguments after `--` go to cargo test.
    Test(test::TestArgs),
    /// The benchmarks; writes target/bench/report.json, report.md and plots.
    Bench(bench::BenchArgs),
    /// Remove namespaces, cgroups, bpffs mounts and scratch dirs left by crashed tests.
    Clean {
        /// Name prefix of what to remove.
        #[arg(long, default_value = tests::NAME_PREFIX)]
        prefix: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf { release } => build_ebpf(release),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Test(args) => test::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Clean { prefix } => clean(&prefix),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_ebpf(release: bool) -> anyhow::Result<()> {
    let mut cmd = util::cargo();
    cmd.args(["build", "-p", "proxy-user"]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)
}

pub(crate) fn clean(prefix: &str) -> anyhow::Result<()> {
    util::require_root("cargo xtask clean")?;
    let log = tests::cleanup_leftovers(prefix);
    if log.is_empty() {
        println!("clean: nothing left over (prefix {prefix:?})");
    }
    for line in &log {
        println!("clean: {line}");
    }
    if log.iter().any(|l| l.starts_with("error")) {
        anyhow::bail!("some leftovers could not be removed (see above)");
    }
    Ok(())
}
