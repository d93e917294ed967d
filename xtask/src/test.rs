//! `cargo xtask test`: setup, build every binary, run every test (the
//! privileged ones with at most two threads), then remove leftovers.

use std::ffi::OsString;

use anyhow::bail;

use crate::util;

#[derive(clap::Args, Debug, Default)]
pub struct TestArgs {
    /// Passed to `cargo test`; anything after a further `--` goes to the test binaries.
    #[arg(last = true)]
    pub args: Vec<OsString>,
}

/// Workspace binaries the end-to-end tests look up with `tests::workspace_bin`.
const BINARIES: &[&str] = &["sluice-proxy", "sluice-cni", "sluice-dns", "sluice-probe"];

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    crate::setup::run()?;
    let result = build_and_test(args);
    // Even after a failure: a crashed test must not leave namespaces behind.
    let cleaned = crate::clean(crate::NAME_PREFIX);
    result?;
    cleaned
}

fn build_and_test(args: &TestArgs) -> anyhow::Result<()> {
    // proxy-ebpf and cni-ebpf target bpfel-unknown-none; proxy-user and
    // sluice-cni build them from their build scripts.
    util::run(util::cargo().args(["build", "--workspace", "--exclude", "proxy-ebpf", "--exclude", "cni-ebpf", "--bins"]))?;
    // The tests run the plugin as it is benchmarked and shipped.
    util::link_cni_static(false)?;
    let debug = util::target_dir()?.join("debug");
    let mut env = Vec::new();
    // tests/tests/least_privilege.rs runs the agent's image under podman
    // (debug binaries: a relink, not a release build).
    let images = util::target_dir()?.join("images");
    crate::image::run(&crate::image::ImageArgs {
        debug: true,
        only: vec!["sluice-proxy".to_owned()],
        out: Some(images.clone()),
    })?;
    env.push(("SLUICE_IMAGES_DIR".to_owned(), images));
    for bin in BINARIES {
        let path = debug.join(bin);
        if path.is_file() {
            env.push((util::bin_env_var(bin), path));
        } else {
            println!("xtask: {bin} not built; tests that need it will say so");
        }
    }

    let (cargo_args, test_args) = match args.args.iter().position(|a| a == "--") {
        Some(i) => (&args.args[..i], &args.args[i + 1..]),
        None => (&args.args[..], &[][..]),
    };
    let mut failed = Vec::new();

    let mut unit = util::cargo();
    unit.args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "proxy-ebpf",
        "--exclude",
        "cni-ebpf",
        "--exclude",
        "tests",
    ]);
    unit.args(cargo_args)
        .arg("--")
        .args(test_args)
        .envs(env.iter().cloned());
    if let Err(e) = util::run(&mut unit) {
        failed.push(format!("{e:#}"));
    }

    // The privileged tests build namespaces and run servers: two at a time is
    // what a 2-core machine sustains without timeouts.
    let mut privileged = util::cargo();
    privileged.args(["test", "--no-fail-fast", "-p", "tests"]);
    privileged
        .args(cargo_args)
        .arg("--")
        .arg("--test-threads=2")
        .args(test_args)
        .envs(env.iter().cloned());
    if let Err(e) = util::run(&mut privileged) {
        failed.push(format!("{e:#}"));
    }

    if !failed.is_empty() {
        bail!("tests failed:\n  {}", failed.join("\n  "));
    }
    println!("xtask: all tests passed");
    Ok(())
}
