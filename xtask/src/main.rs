//! `cargo xtask`: what cargo alone cannot do for Sluice (machine setup,
//! privileged tests, demo, benchmarks, cleanup after crashes).

mod bench;
mod demo;
mod image;
mod setup;
mod test;
mod util;
mod vmtest;

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
    /// The privileged tests on Debian's 6.1 and 6.12 kernels under qemu (a smoke set unless told otherwise).
    /// Arguments after `--` go to the test binaries (filters, --include-ignored).
    VmTest(vmtest::VmTestArgs),
    /// OCI image archives of sluice-proxy, sluice-cni and sluice-dns under target/images/ (no Docker engine needed).
    Image(image::ImageArgs),
    /// Remove namespaces, cgroups, bpffs mounts and scratch dirs left by crashed tests.
    Clean {
        /// Name prefix of what to remove.
        #[arg(long, default_value = NAME_PREFIX)]
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
        Cmd::VmTest(args) => vmtest::run(&args),
        Cmd::Image(args) => image::run(&args),
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

/// Prefix of every name the test harness creates (tests::NAME_PREFIX; xtask
/// does not link the tests crate, see DESIGN.md's dependency direction).
pub(crate) const NAME_PREFIX: &str = "slc";

/// Removes leftovers through `sluice-probe cleanup`, the harness's own
/// removal code, built here if needed.
pub(crate) fn clean(prefix: &str) -> anyhow::Result<()> {
    util::require_root("cargo xtask clean")?;
    let probe = util::tests_bin("sluice-probe", false)?;
    util::run(std::process::Command::new(probe).args(["cleanup", "--prefix", prefix]))
}
