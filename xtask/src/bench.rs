//! `cargo xtask bench`: the benchmarks, written to target/bench/report.json,
//! report.md and plots. Not written yet.

#[derive(clap::Args, Debug, Default)]
pub struct BenchArgs {}

pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    crate::setup::run()?;
    println!("bench: not yet implemented");
    Ok(())
}
