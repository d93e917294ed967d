//! Writes the dnsperf inputs into a directory: `manifests/cluster.yaml`,
//! `cluster.queries` and `upstream.queries` (see `sluice_dns::bench`).
//! Usage: `cargo run -p sluice-dns --example bench_files -- DIR [SERVICES]`.

use std::path::PathBuf;

use sluice_dns::bench::{cluster_manifests, write_queryfile, QueryMix};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "target/bench/dns".into()));
    let services: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    std::fs::create_dir_all(dir.join("manifests"))?;
    std::fs::write(dir.join("manifests/cluster.yaml"), cluster_manifests(services))?;
    write_queryfile(&dir.join("cluster.queries"), QueryMix::Cluster, services, "cluster.local", 0)?;
    write_queryfile(&dir.join("upstream.queries"), QueryMix::Upstream, services, "cluster.local", services)?;
    std::fs::write(dir.join("empty.conf"), "")?;
    std::fs::write(dir.join("upstream.conf"), "nameserver 127.0.0.54:5300\n")?;
    println!("{}", dir.display());
    Ok(())
}
