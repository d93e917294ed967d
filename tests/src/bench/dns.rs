//! DNS: `dnsperf` against `sluice-dns` in a node namespace.
//!
//! Two `sluice-dns` processes on the namespace's loopback: the measured one
//! (127.0.0.53:5300, zone cluster.local, pinned to CPU 1 with one worker
//! thread: "one core busy") and an upstream for it (127.0.0.54:5300, zone
//! `upstream.test`, TTL 3600, CPU 0) that answers each forwarded name once;
//! after that the measured server answers from its cache. dnsperf runs on
//! CPU 0 (`-c 8 -T 1`). Query files and command lines come from
//! `sluice_dns::bench`.
//!
//! - QPS: dnsperf as fast as it goes, for cluster names (A, SRV, PTR,
//!   headless) and for cached upstream names.
//! - Latency: dnsperf at a fixed 25,000 queries/s (half the QPS
//!   target) with `-v`, one line per answer ending in its latency; p50 and
//!   p99 of those.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use sluice_dns::bench::{cluster_manifests, dnsperf_args, write_queryfile, QueryMix, UPSTREAM_ZONE};

use super::stats::Row;
use super::{Args, Plan, Progress};
use crate::{Proc, Topology};

const GROUP: &str = "dns";
const SERVICES: usize = 1_000;
const UPSTREAM_NAMES: usize = 1_000;
const SERVER: &str = "127.0.0.53";
const UPSTREAM: &str = "127.0.0.54";
const PORT: u16 = 5300;
/// Half of issue 6's 50,000 QPS target.
const FIXED_RATE: u32 = 25_000;

fn skipped(why: String) -> Vec<Row> {
    println!("  DNS: {why}");
    vec![Row::new(GROUP, "DNS QPS, cluster names", "sluice", "queries/s", Vec::new()).with_note(why)]
}

pub fn run(plan: &Plan, progress: &Progress, dns_bin: Option<PathBuf>, args: &Args) -> anyhow::Result<Vec<Row>> {
    let Some(bin) = dns_bin else {
        return Ok(skipped("skipped: not built (sluice-dns not found next to sluice-bench)".into()));
    };
    if Command::new("dnsperf").arg("-h").output().is_err() {
        return Ok(skipped("skipped: dnsperf is not installed (cargo xtask setup installs it)".into()));
    }
    let mut topo = Topology::new();
    super::note_topology(args, topo.id());
    let node = topo.add_node("dns", Ipv4Addr::new(192, 0, 2, 53));
    let dir = topo.scratch("dns");
    let manifests = dir.join("manifests");
    fs::create_dir_all(&manifests)?;
    fs::write(manifests.join("cluster.yaml"), cluster_manifests(SERVICES))?;
    let none = dir.join("no-upstream.conf");
    fs::write(&none, "")?;
    let via_upstream = dir.join("upstream.conf");
    fs::write(&via_upstream, format!("nameserver {UPSTREAM}:{PORT}\n"))?;
    let cluster_q = dir.join("cluster.queries");
    write_queryfile(&cluster_q, QueryMix::Cluster, SERVICES, "cluster.local", 0)?;
    let upstream_q = dir.join("upstream.queries");
    write_queryfile(&upstream_q, QueryMix::Upstream, SERVICES, "cluster.local", UPSTREAM_NAMES)?;

    let start = |cpu: &str, listen: &str, extra: &[&str], upstream: &Path| -> Proc {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", cpu])
            .arg(&bin)
            .arg("--manifests")
            .arg(&manifests)
            .args(["--listen", &format!("{listen}:{PORT}"), "--threads", "1", "--udp-sockets", "1"])
            .arg("--upstream")
            .arg(upstream)
            .args(extra)
            .env("RUST_LOG", "warn");
        topo.spawn_in_netns(&node.netns, None, cmd)
    };
    let _upstream = start("0", UPSTREAM, &["--zone", UPSTREAM_ZONE, "--ttl", "3600"], &none);
    let server = start("1", SERVER, &[], &via_upstream);
    wait_answering(&topo, &node.netns, UPSTREAM, &format!("svc-0.bench.svc.{UPSTREAM_ZONE}"))?;
    wait_answering(&topo, &node.netns, SERVER, "svc-0.bench.svc.cluster.local")?;
    progress.say("  sluice-dns (CPU 1, one worker) and its upstream are answering");

    let secs: u32 = if plan.quick { 3 } else { 5 };
    let mut rows = Vec::new();
    for (name, queries) in [("DNS QPS, cluster names", &cluster_q), ("DNS QPS, cached upstream names", &upstream_q)] {
        // One warm-up pass fills the cache (and the ARP/route caches).
        dnsperf(&topo, &node.netns, queries, 1, None, false)?;
        let mut qps = Vec::new();
        let mut lost = 0.0f64;
        for r in 0..plan.rounds {
            let out = dnsperf(&topo, &node.netns, queries, secs, None, false)?;
            progress.say(format!("  {name} run {}/{}: {:.0} queries/s, {:.2}% lost", r + 1, plan.rounds, out.qps, out.lost_pct));
            qps.push(out.qps);
            lost = lost.max(out.lost_pct);
        }
        rows.push(
            Row::new(GROUP, name, "sluice", "queries/s", qps)
                .with_note(format!("dnsperf -c 8 -T 1 on CPU 0, sluice-dns on CPU 1; max lost {lost:.2}%")),
        );
    }

    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for r in 0..plan.rounds {
        let out = dnsperf(&topo, &node.netns, &cluster_q, secs, Some(FIXED_RATE), true)?;
        progress.say(format!(
            "  latency at {FIXED_RATE} queries/s run {}/{}: achieved {:.0}/s, p50 {:.3} ms, p99 {:.3} ms ({} answers)",
            r + 1,
            plan.rounds,
            out.qps,
            out.p50_ms,
            out.p99_ms,
            out.answers
        ));
        p50.push(out.p50_ms);
        p99.push(out.p99_ms);
    }
    let name = format!("DNS latency at {FIXED_RATE} queries/s, cluster names");
    rows.push(Row::new(GROUP, &format!("{name}, p50"), "sluice", "ms", p50).lower_is_better());
    rows.push(
        Row::new(GROUP, &format!("{name}, p99"), "sluice", "ms", p99)
            .lower_is_better()
            .with_note("per-answer latency from dnsperf -v"),
    );
    drop(server);
    Ok(rows)
}

/// Polls with dig until `server` answers `name` (bounded).
fn wait_answering(topo: &Topology, netns: &str, server: &str, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut cmd = Command::new("dig");
        cmd.args([&format!("@{server}"), "-p", &PORT.to_string(), name, "A", "+short", "+time=1", "+tries=1"]);
        let out = topo.run_in_netns(netns, None, cmd, Duration::from_secs(5));
        if out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{server} did not answer {name} within 15 s: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Perf {
    qps: f64,
    lost_pct: f64,
    answers: usize,
    p50_ms: f64,
    p99_ms: f64,
}

fn dnsperf(topo: &Topology, netns: &str, queries: &Path, secs: u32, rate: Option<u32>, verbose: bool) -> anyhow::Result<Perf> {
    // Output goes to a file, not a pipe: with -v (a line per answer) a pipe
    // would have this process reading 25,000 lines a second on whichever
    // CPU, also the server's.
    let log = queries.with_extension("out");
    let mut perf = vec!["-c".to_string(), "0".into(), "dnsperf".into()];
    perf.extend(dnsperf_args(SERVER, PORT, queries, secs, rate));
    if verbose {
        perf.push("-v".into());
    }
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("exec taskset \"$@\" > '{}'", log.display())).arg("sh").args(&perf);
    let out = topo.run_in_netns(netns, None, cmd, Duration::from_secs(u64::from(secs) + 30));
    let text = fs::read_to_string(&log).unwrap_or_default();
    let _ = fs::remove_file(&log);
    ensure!(out.status.success(), "dnsperf failed ({}): {} {}", out.status, String::from_utf8_lossy(&out.stderr), text.lines().last().unwrap_or(""));
    let field = |label: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
        line.split(':').nth(1)?.split_whitespace().next()?.parse().ok()
    };
    let qps = field("Queries per second").context("dnsperf printed no \"Queries per second\"")?;
    let lost_pct = text
        .lines()
        .find(|l| l.trim_start().starts_with("Queries lost"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|l| l.trim_end_matches([')', '%', ' ']).trim_end_matches('%').parse().ok())
        .unwrap_or(0.0);
    // -v: "> NOERROR name TYPE 0.000123" per answer; the latency is the last field.
    let mut lat: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i.min(lat.len() - 1)] * 1000.0
    };
    Ok(Perf { qps, lost_pct, answers: lat.len(), p50_ms: pct(0.50), p99_ms: pct(0.99) })
}
