//! `cargo xtask demo`: builds the binaries (release; the CNI plugin static,
//! as shipped) and runs `sluice-demo` from the tests crate, which builds the
//! two-node cluster in namespaces with the whole product (CNI daemon and
//! plugin, proxy, DNS), runs traffic through it, and cleans up.

use crate::util;

#[derive(clap::Args, Debug, Default)]
pub struct DemoArgs {
    /// How `sluice-cni daemon` joins the nodes' pod subnets.
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "host-gw"])]
    pub backend: String,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    crate::setup::run()?;
    util::require_root("cargo xtask demo")?;
    let mut build = util::cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "proxy-user",
        "-p",
        "sluice-dns",
        "-p",
        "tests",
        "--bins",
    ]);
    util::run(&mut build)?;
    util::link_cni_static(true)?;
    let bin = util::target_dir()?.join("release");
    let mut demo = std::process::Command::new(bin.join("sluice-demo"));
    demo.args(["--backend", &args.backend]);
    for name in ["sluice-proxy", "sluice-probe", "sluice-dns", "sluice-cni"] {
        demo.env(util::bin_env_var(name), bin.join(name));
    }
    util::run(&mut demo)
}
