//! iperf3 TCP throughput, 1 and 4 streams:
//!
//! - client pod -> ClusterIP (one endpoint), same node and across nodes
//!   (host-gw static routes); `direct` uses the pod IP;
//! - outside client (203.0.113.10) -> node a's address:NodePort -> the pod on
//!   node b (kube-proxy's cross-node case: DNAT plus SNAT on node a, so the
//!   reply comes back through it); `direct` sends to the pod IP routed via
//!   node b. sluice serves the NodePort at tc on node a's `eth0`; iptables and
//!   nftables with kube-proxy's NodePort rules (KUBE-NODEPORTS / the
//!   `service-nodeports` map, marked for masquerade).
//!
//! Client on CPU 0, server on CPU 1; the variants run in rounds of
//! back-to-back runs (rotated order), ratios are medians of per-round ratios,
//! and a second `direct` run per round (`direct-aa`) gives the noise floor.
//! Then head-to-head rounds ([`head_to_head`]): each variant at the same
//! time as a `direct` run, the ratio of the pair; on this VM their A/A
//! spread is about +-3% where back-to-back runs drift by +-10-30%.
//! The two measurements use two labs built one after the other, so the
//! ClusterIP figures are taken without the external datapath attached.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::Context;

use super::lab::{
    nodeport_service, perf_services, Lab, Needs, Variant, IPERF_PORT, IPERF_PORT_AA, VIP_PERF_CROSS, VIP_PERF_SAME,
};
use super::stats::{median, AA, Rounds, Row};
use super::{Args, Plan, Progress};

const ORDER: [&str; 5] = ["direct", "sluice", "iptables", "nftables", AA];
/// The variants of head-to-head runs, each run at the same time as `direct`.
pub(super) const H2H: [&str; 4] = ["sluice", "iptables", "nftables", AA];
/// The report group of head-to-head rows (their unit is `x direct`).
pub const H2H_GROUP: &str = "head-to-head";
const NEEDS: Needs = Needs {
    perf: true,
    rate: false,
};

pub fn run(plan: &Plan, progress: &Progress, proxy: &Path, probe: &Path, args: &Args) -> anyhow::Result<Vec<Row>> {
    let mut rows = cluster_ip(plan, progress, proxy, probe, args)?;
    rows.extend(node_port(plan, progress, proxy, probe, args)?);
    Ok(rows)
}

fn variant(name: &str) -> Variant {
    match name {
        "sluice" => Variant::Sluice,
        "iptables" => Variant::Iptables,
        "nftables" => Variant::Nftables,
        _ => Variant::Direct,
    }
}

pub(super) fn streams_name(streams: u32) -> String {
    format!("{streams} stream{}", if streams > 1 { "s" } else { "" })
}

fn cluster_ip(plan: &Plan, progress: &Progress, proxy: &Path, probe: &Path, args: &Args) -> anyhow::Result<Vec<Row>> {
    progress.say("building 4 two-node clusters (direct, sluice, iptables, nftables)");
    let mut lab = Lab::new(&Variant::ALL, NEEDS, proxy.to_path_buf(), probe.to_path_buf())?;
    super::note_topology(args, lab.topo.id());
    for v in Variant::ALL {
        let services = perf_services(lab.cluster(v));
        lab.program(v, &services, true)?;
    }
    progress.say("services programmed; iperf3 servers ready");

    let mut rows = Vec::new();
    for (placement, vip) in [("same-node", VIP_PERF_SAME), ("cross-node", VIP_PERF_CROSS)] {
        for streams in [1u32, 4] {
            let name = format!("iperf3 {placement} {}", streams_name(streams));
            let one = |name: &str, secs: u64| {
                let (v, port) = if name == AA { (Variant::Direct, IPERF_PORT_AA) } else { (variant(name), IPERF_PORT) };
                let target = if v == Variant::Direct {
                    let c = lab.cluster(Variant::Direct);
                    let pod = if placement == "same-node" { &c.perf_same } else { &c.perf_cross };
                    pod.as_ref().context("perf pod")?.ip
                } else {
                    vip
                };
                let host = target.to_string();
                let spec = Iperf::new(&host, port, streams, secs);
                spec.run(|a, t| Ok(lab.run_client(v, Path::new("iperf3"), a, t)))
            };
            let rounds = measure(plan, progress, &name, |v| one(v.name(), plan.iperf_secs));
            rows.extend(rounds.rows("throughput", &name, "Gbit/s"));
            rows.extend(head_to_head(plan.h2h_rounds, progress, &name, &H2H, |_| (), |v| one(v, plan.h2h_secs)));
        }
    }
    Ok(rows)
}

fn node_port(plan: &Plan, progress: &Progress, proxy: &Path, probe: &Path, args: &Args) -> anyhow::Result<Vec<Row>> {
    progress.say("building 4 two-node clusters and an outside client (NodePort; sluice with --external-interfaces eth0)");
    let mut lab = Lab::new_external(&Variant::ALL, NEEDS, proxy.to_path_buf(), probe.to_path_buf())?;
    super::note_topology(args, lab.topo.id());
    for v in Variant::ALL {
        let mut services = perf_services(lab.cluster(v));
        services.extend(nodeport_service(lab.cluster(v)));
        lab.program(v, &services, true)?;
    }
    // One short transfer per path: ARP, neighbour and conntrack warm-up, and
    // an early, clear failure if a path does not work at all.
    for v in Variant::ALL {
        let (ip, port) = lab.nodeport_target(v)?;
        let host = ip.to_string();
        let warm = Iperf {
            bytes: Some("10M"),
            ..Iperf::new(&host, port, 1, 1)
        };
        if let Err(e) = warm.run(|a, t| lab.run_outside(Path::new("iperf3"), a, t)) {
            progress.say(format!("  warm-up of {} ({ip}:{port}) failed: {e:#}", v.name()));
        }
    }
    progress.say("NodePort services programmed; paths warmed up");

    let mut rows = Vec::new();
    for streams in [1u32, 4] {
        let name = format!("iperf3 outside->NodePort cross-node {}", streams_name(streams));
        let one = |name: &str, secs: u64| {
            let (ip, port) = match name {
                AA => (lab.nodeport_target(Variant::Direct)?.0, IPERF_PORT_AA),
                _ => lab.nodeport_target(variant(name))?,
            };
            let host = ip.to_string();
            let spec = Iperf::new(&host, port, streams, secs);
            spec.run(|a, t| lab.run_outside(Path::new("iperf3"), a, t))
        };
        let rounds = measure(plan, progress, &name, |v| one(v.name(), plan.iperf_secs));
        rows.extend(rounds.rows("throughput", &name, "Gbit/s"));
        rows.extend(head_to_head(plan.h2h_rounds, progress, &name, &H2H, |_| (), |v| one(v, plan.h2h_secs)));
    }
    Ok(rows)
}

/// Head-to-head rounds: each of `variants` runs at the same time as a
/// `direct` run (each in its own cluster, clients on CPU 0 and servers on
/// CPU 1 for both), and its sample is its result over direct's in that
/// pair. The two share whatever this VM's host does during those seconds,
/// which back-to-back runs do not (their A/A ratio moves by 10% or more
/// here); what is left is which path needs fewer CPU cycles per byte or per
/// transaction on the same CPUs. `direct-aa` is direct against itself (a
/// second server in the direct cluster): the noise floor of this method.
/// Variants rotate, and which of a pair starts first alternates;
/// `prepare(variant)` runs before each pair.
pub(super) fn head_to_head(
    rounds: usize,
    progress: &Progress,
    name: &str,
    variants: &[&str],
    prepare: impl Fn(&str),
    run: impl Fn(&str) -> anyhow::Result<f64> + Sync,
) -> Vec<Row> {
    let name = format!("{name}, head to head");
    if rounds == 0 {
        return Vec::new();
    }
    let waited = super::settle(Duration::from_secs(15));
    if waited > Duration::from_secs(1) {
        progress.say(format!("  {name}: waited {:.1} s for the machine to go quiet", waited.as_secs_f64()));
    }
    let run = &run;
    let mut ratios = vec![Vec::new(); variants.len()];
    for r in 0..rounds {
        let mut line = Vec::new();
        for k in 0..variants.len() {
            let i = (k + r) % variants.len();
            let direct_first = (k + r) % 2 == 1;
            prepare(variants[i]);
            let (x, d) = std::thread::scope(|s| {
                let start = |who: &'static str| s.spawn(move || run(if who == "direct" { who } else { variants[i] }));
                let (x, d) = if direct_first {
                    let d = start("direct");
                    (start("variant"), d)
                } else {
                    let x = start("variant");
                    (x, start("direct"))
                };
                let join = |h: std::thread::ScopedJoinHandle<'_, anyhow::Result<f64>>| {
                    h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("runner panicked")))
                };
                (join(x), join(d))
            });
            match (x, d) {
                (Ok(x), Ok(d)) if d > 0.0 => {
                    ratios[i].push(x / d);
                    line.push(format!("{} {x:.2}/{d:.2}", variants[i]));
                }
                (x, d) => {
                    let err = |res: anyhow::Result<f64>| res.err().map(|e| format!("{e:#}")).unwrap_or_default();
                    progress.say(format!("  {name} {} against direct: {} {}", variants[i], err(x), err(d)));
                }
            }
        }
        progress.say(format!("  {name} round {}/{rounds} (variant/direct): {}", r + 1, line.join(", ")));
    }
    h2h_rows(&name, variants, ratios)
}

/// One row per head-to-head variant: its per-pair ratios to direct; its
/// `x iptables` is the ratio of its median to iptables' median.
pub(super) fn h2h_rows(name: &str, variants: &[&str], ratios: Vec<Vec<f64>>) -> Vec<Row> {
    let mut rows: Vec<Row> = variants
        .iter()
        .zip(ratios)
        .map(|(v, samples)| {
            let mut row = Row::new(H2H_GROUP, name, v, "x direct", samples);
            row.ratio_to_direct = (!row.samples.is_empty()).then(|| median(&row.samples));
            row.with_note("run at the same time as direct; its result over direct's, per pair")
        })
        .collect();
    let iptables = rows.iter().find(|r| r.variant == "iptables").and_then(|r| r.ratio_to_direct);
    for row in rows.iter_mut().filter(|r| r.variant != "iptables") {
        row.ratio_to_iptables = row.ratio_to_direct.zip(iptables).map(|(a, b)| a / b);
    }
    rows
}

/// [`measure_variants`] over [`ORDER`].
fn measure(plan: &Plan, progress: &Progress, name: &str, mut run: impl FnMut(Variant) -> anyhow::Result<f64>) -> Rounds {
    measure_variants(plan.seq_rounds, progress, name, &ORDER, |v| run(variant(v)))
}

/// `count` rounds of one run per entry of `order`; a failed run is
/// logged and counts as NaN. See [`schedule`] for the order within a round.
pub(super) fn measure_variants(
    count: usize,
    progress: &Progress,
    name: &str,
    order: &[&str],
    mut run: impl FnMut(&str) -> anyhow::Result<f64>,
) -> Rounds {
    let mut rounds = Rounds::new(order);
    let waited = super::settle(Duration::from_secs(15));
    if waited > Duration::from_secs(1) {
        progress.say(format!("  {name}: waited {:.1} s for the machine to go quiet", waited.as_secs_f64()));
    }
    for r in 0..count {
        let mut values = vec![f64::NAN; order.len()];
        for idx in schedule(order, r) {
            values[idx] = run(order[idx]).unwrap_or_else(|e| {
                progress.say(format!("  {name} {}: {e:#}", order[idx]));
                f64::NAN
            });
        }
        progress.say(format!(
            "  {name} round {}/{count}: {}",
            r + 1,
            order
                .iter()
                .zip(&values)
                .map(|(v, x)| format!("{v} {x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        rounds.values.push(values);
    }
    rounds
}

/// The order of round `r`'s runs, as indices into `order`. With both
/// `direct` and `direct-aa` present they bracket the round (first and
/// last), the others rotated between them so none always runs first: each
/// variant is then compared with the mean of two `direct` runs, one before
/// and one after it (see [`Rounds::paired_ratio`]), which cancels a linear
/// drift of this VM's speed across the round. Otherwise all are rotated.
pub(super) fn schedule(order: &[&str], r: usize) -> Vec<usize> {
    let (d, aa) = (order.iter().position(|v| *v == "direct"), order.iter().position(|v| *v == AA));
    match (d, aa) {
        (Some(d), Some(aa)) => {
            let middle: Vec<usize> = (0..order.len()).filter(|i| *i != d && *i != aa).collect();
            let mut out = vec![d];
            out.extend((0..middle.len()).map(|k| middle[(k + r) % middle.len()]));
            out.push(aa);
            out
        }
        _ => (0..order.len()).map(|k| (k + r) % order.len()).collect(),
    }
}

/// One iperf3 client run.
pub(super) struct Iperf<'a> {
    host: &'a str,
    port: u16,
    streams: u32,
    secs: u64,
    /// `-n` instead of `-t`.
    bytes: Option<&'a str>,
}

impl<'a> Iperf<'a> {
    pub(super) fn new(host: &'a str, port: u16, streams: u32, secs: u64) -> Self {
        Iperf {
            host,
            port,
            streams,
            secs: secs.clamp(1, 10),
            bytes: None,
        }
    }

    fn args(&self) -> Vec<String> {
        let (limit, amount) = match self.bytes {
            Some(n) => ("-n", n.to_string()),
            None => ("-t", self.secs.to_string()),
        };
        [
            "-c",
            self.host,
            "-p",
            &self.port.to_string(),
            "-P",
            &self.streams.to_string(),
            limit,
            &amount,
            "-J",
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    /// Runs it with `runner(args, time limit)`; Gbit/s received.
    pub(super) fn run(&self, runner: impl FnOnce(&[&str], Duration) -> anyhow::Result<Output>) -> anyhow::Result<f64> {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.gbps(&runner(&args, self.timeout())?)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.secs + 20)
    }

    /// Gbit/s received, from iperf3's JSON output.
    fn gbps(&self, out: &Output) -> anyhow::Result<f64> {
        let text = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("iperf3 output is not JSON ({}): {text:.300}", out.status))?;
        if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
            anyhow::bail!("iperf3 to {}:{}: {err}", self.host, self.port);
        }
        let bps = json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
        Ok(bps / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_runs_bracket_every_round() {
        let order = ["direct", "a", "b", "c", AA];
        assert_eq!(schedule(&order, 0), vec![0, 1, 2, 3, 4]);
        assert_eq!(schedule(&order, 1), vec![0, 2, 3, 1, 4]);
        assert_eq!(schedule(&order, 2), vec![0, 3, 1, 2, 4]);
        assert_eq!(schedule(&["direct", "a", "b"], 1), vec![1, 2, 0]);
    }

    #[test]
    fn head_to_head_rows_carry_their_median_as_the_ratio() {
        let rows = h2h_rows("x, head to head", &["sluice", AA], vec![vec![0.99, 1.01, 0.97], vec![]]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].group, H2H_GROUP);
        assert_eq!(rows[0].unit, "x direct");
        assert_eq!(rows[0].ratio_to_direct, Some(0.99));
        assert_eq!(rows[1].ratio_to_direct, None);
        let rows = h2h_rows("y, head to head", &["sluice", "iptables"], vec![vec![1.0], vec![0.8]]);
        assert_eq!(rows[0].ratio_to_iptables, Some(1.25));
        assert_eq!(rows[1].ratio_to_iptables, None);
    }
}
