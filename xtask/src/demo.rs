//! `cargo xtask demo`: builds the binaries (release) and runs `sluice-demo`
//! from the tests crate, which builds the two-node cluster in namespaces,
//! runs the agent on the bundled manifests and iperf3, and cleans up.

use crate::util;

#[derive(clap::Args, Debug, Default)]
pub struct DemoArgs {}

pub fn run(_args: &DemoArgs) -> anyhow::Result<()> {
    crate::setup::run()?;
    util::require_root("cargo xtask demo")?;
    let mut build = util::cargo();
    build.args(["build", "--release", "-p", "proxy-user", "-p", "tests", "--bins"]);
    // sluice-dns joins the demo when it builds.
    let mut dns = util::cargo();
    dns.args(["build", "--release", "-p", "sluice-dns", "--bins"]);
    util::run(&mut build)?;
    let dns_built = util::run(&mut dns).is_ok();
    let bin = util::target_dir()?.join("release");
    let mut demo = std::process::Command::new(bin.join("sluice-demo"));
    demo.env("SLUICE_PROXY_BIN", bin.join("sluice-proxy")).env("SLUICE_PROBE_BIN", bin.join("sluice-probe"));
    if dns_built {
        demo.env("SLUICE_DNS_BIN", bin.join("sluice-dns"));
    }
    util::run(&mut demo)
}
