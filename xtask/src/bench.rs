//! `cargo xtask bench`: builds the release binaries and runs `sluice-bench`
//! (tests/src/bench), which writes target/bench/report.json, report.md and
//! the plots. xtask only orchestrates: it does not link the benchmark code.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{bail, Context};

use crate::util;

#[derive(clap::Args, Debug, Default)]
pub struct BenchArgs {
    /// Fewer and shorter runs (under 10 minutes on a 2-core machine).
    #[arg(long)]
    pub quick: bool,
    /// Run only one group: throughput, connrate, control, cni, dns.
    #[arg(long)]
    pub only: Option<String>,
}

/// Components whose benchmarks are hooks until they land: built when asked
/// for, and reported as skipped when they do not build.
const OPTIONAL: &[(&str, &str)] = &[("cni", "sluice-cni"), ("dns", "sluice-dns")];

extern "C" fn ignore_signal(_: libc::c_int) {}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    crate::setup::run()?;
    util::run(util::cargo().args([
        "build", "--release", "-p", "proxy-user", "-p", "tests", "--bins",
    ]))?;
    for (group, package) in OPTIONAL {
        if args.only.as_deref().is_none_or(|g| g == *group) {
            if let Err(e) = util::run(util::cargo().args(["build", "--release", "-p", package])) {
                println!("xtask: {package} did not build ({e:#}); its benchmark will say skipped");
            } else if *package == "sluice-cni" {
                if let Err(e) = util::link_cni_static(true) {
                    println!("xtask: static link of sluice-cni failed ({e:#}); benchmarking the dynamic one");
                }
            }
        }
    }
    let target = util::target_dir()?;
    let release = target.join("release");
    let out = target.join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("mkdir {}", out.display()))?;
    let id_file = out.join(".topologies");
    let _ = std::fs::remove_file(&id_file);

    let mut cmd = Command::new(release.join("sluice-bench"));
    cmd.arg("--out").arg(&out).arg("--id-file").arg(&id_file);
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(only) = &args.only {
        cmd.arg("--only").arg(only);
    }
    // Ctrl-C should stop the benchmark, not xtask: the handler (reset to the
    // default in the child by exec) lets xtask survive to clean up after it.
    // SAFETY: installs a handler that does nothing; async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            ignore_signal as *const () as libc::sighandler_t,
        );
    }
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", release.join("sluice-bench").display()))?;
    if !status.success() {
        // The benchmark's RAII guards do not run when it is killed: remove
        // what its topologies left, by their own ids only.
        let ids = std::fs::read_to_string(&id_file).unwrap_or_default();
        let probe = release.join("sluice-probe");
        for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = Command::new(&probe)
                .args(["cleanup", "--prefix"])
                .arg(OsString::from(id))
                .status();
        }
        bail!("sluice-bench failed ({status}); partial results in {}", out.display());
    }
    Ok(())
}
