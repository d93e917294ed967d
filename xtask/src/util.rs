//! Process helpers shared by the tasks.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `cargo` from PATH (the rustup proxy, so `+nightly` inside build scripts
/// keeps working), run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// Links `sluice-cni` again as a static, non-PIE executable (only the
/// binary's own crate is rebuilt; the flags do not reach dependencies).
/// A runtime execs the plugin for every pod: without the dynamic loader and
/// the relocation of a large PIE image, it starts in about 1 ms instead of
/// 2.5 (`CNI_COMMAND=VERSION`, measured here).
pub fn link_cni_static(release: bool) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args(["rustc", "-p", "sluice-cni", "--bin", "sluice-cni"]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--", "-C", "target-feature=+crt-static", "-C", "relocation-model=static"]);
    run(&mut cmd)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio; an error names the command.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let what = describe(cmd);
    println!("xtask: $ {what}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout (None if it could not run or failed).
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("`{what}` must run as root (it manages packages, network namespaces and cgroups); rerun it as root");
    }
    Ok(())
}

/// Cargo's target directory for this workspace (honours CARGO_TARGET_DIR and config).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let out = output(cargo().args(["metadata", "--no-deps", "--format-version", "1"]))
        .context("`cargo metadata` failed")?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parse cargo metadata")?;
    let dir = v["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// The variable overriding a workspace binary's path (as `tests::bin_env_var`):
/// `sluice-proxy` -> `SLUICE_PROXY_BIN`.
pub fn bin_env_var(name: &str) -> String {
    let stem = name.strip_prefix("sluice-").unwrap_or(name);
    format!("SLUICE_{}_BIN", stem.to_ascii_uppercase().replace('-', "_"))
}

/// Builds a binary of the `tests` package (debug or release) and returns its path.
pub fn tests_bin(name: &str, release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "tests", "--bin", name]);
    if release {
        cmd.arg("--release");
    }
    let built = run(&mut cmd);
    let path = target_dir()?
        .join(if release { "release" } else { "debug" })
        .join(name);
    match built {
        Ok(()) => Ok(path),
        // A binary from an earlier build still does the job (e.g. cleanup after a broken build).
        Err(e) if path.is_file() => {
            eprintln!("xtask: {e:#}; using the earlier build {}", path.display());
            Ok(path)
        }
        Err(e) => Err(e),
    }
}
