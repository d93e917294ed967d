//! `cargo xtask demo`: a two-node cluster in namespaces, pods, services, DNS,
//! iperf3 through a ClusterIP, and a printed summary. Not written yet.

#[derive(clap::Args, Debug, Default)]
pub struct DemoArgs {}

pub fn run(_args: &DemoArgs) -> anyhow::Result<()> {
    crate::setup::run()?;
    println!("demo: not yet implemented");
    Ok(())
}
