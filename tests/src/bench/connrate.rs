//! Connection rate through a ClusterIP with 10, 1,000 and 10,000 Services
//! programmed (10 endpoints each; only the measured Service's endpoints are
//! real pods, the fillers point at unrouted 198.18.128.0/17 addresses).
//! `sluice-probe rate tcp` opens a connection, sends one request, reads the
//! reply and closes, as fast as it can; `rate udp` does one request/response
//! on a fresh socket each time (so each is a new conntrack entry for the
//! netfilter variants). `direct` sends to the 10 pods itself, round-robin
//! (`--also`): the same spread over 10 server processes as the Service's,
//! without translation. Same round method as throughput, head-to-head
//! rounds included.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::lab::{rate_service, Lab, Needs, Variant, RATE_TCP_PORT, RATE_UDP_PORT, VIP_RATE};
use super::stats::Row;
use super::throughput::{head_to_head, measure_variants, H2H_GROUP};
use super::workload;
use super::{Args, Plan, Progress};

pub const SCALES: [usize; 3] = [10, 1_000, 10_000];

pub fn run(plan: &Plan, progress: &Progress, proxy: &Path, probe: &Path, args: &Args) -> anyhow::Result<Vec<Row>> {
    progress.say("building 4 clusters with 10 backend pods each");
    let mut lab = Lab::new(
        &Variant::ALL,
        Needs {
            perf: false,
            rate: true,
        },
        proxy.to_path_buf(),
        probe.to_path_buf(),
    )?;
    super::note_topology(args, lab.topo.id());
    let mut rows = Vec::new();
    for scale in SCALES {
        // nftables is loaded in batches (Lab::program), seconds even at 10,000.
        let order = vec!["direct", "sluice", "iptables", "nftables", "direct-aa"];
        for v in [Variant::Sluice, Variant::Iptables, Variant::Nftables] {
            let services = workload::with_fillers(&rate_service(lab.cluster(v)), scale);
            let t = std::time::Instant::now();
            // Only node a carries the traffic (client and backends live there).
            lab.program(v, &services, false)
                .with_context(|| format!("programming {scale} services for {}", v.name()))?;
            progress.say(format!(
                "  {scale} services programmed for {} in {:.2} s",
                v.name(),
                t.elapsed().as_secs_f64()
            ));
        }
        for (proto, vport, dport) in [("tcp", 80u16, RATE_TCP_PORT), ("udp", 81, RATE_UDP_PORT)] {
            let name = format!("{} rate, {scale} services", proto.to_uppercase());
            let cluster = |variant: &str| match variant {
                "sluice" => Variant::Sluice,
                "iptables" => Variant::Iptables,
                "nftables" => Variant::Nftables,
                _ => Variant::Direct,
            };
            // direct addresses the Service's 10 pods round-robin itself: the
            // same spread over 10 server processes as through the Service,
            // without translation.
            let pods: Vec<String> = lab.cluster(Variant::Direct).rate_pods.iter().map(|p| format!("{}:{dport}", p.ip)).collect();
            let one = |variant: &str, ms: u64| {
                let v = cluster(variant);
                let (target, also) = match v {
                    Variant::Direct => (pods[0].clone(), pods[1..].join(",")),
                    _ => (format!("{VIP_RATE}:{vport}"), String::new()),
                };
                rate(&lab, v, proto, &target, &also, ms)
            };
            let rounds = measure_variants(plan.seq_rounds, progress, &name, &order, |variant| {
                lab.flush_conntrack(cluster(variant));
                one(variant, plan.rate_ms)
            });
            rows.extend(rounds.rows("connrate", &name, if proto == "tcp" { "conn/s" } else { "req/s" }));
            let h2h: Vec<&str> = order.iter().copied().filter(|v| *v != "direct").collect();
            rows.extend(head_to_head(
                plan.h2h_rounds,
                progress,
                &name,
                &h2h,
                |variant| {
                    lab.flush_conntrack(cluster(variant));
                    lab.flush_conntrack(Variant::Direct);
                },
                |variant| one(variant, plan.h2h_rate_ms),
            ));
        }
    }
    rows.extend(scaling_rows(&rows));
    Ok(rows)
}

/// Each variant's rate at the largest scale relative to its own at the
/// smallest. The scales are measured minutes apart, and this machine's
/// speed drifts more than that between them (the `direct` rate itself moves
/// by tens of percent), so each rate is first taken relative to `direct`,
/// then the two scales are compared: once with the `x direct` of the
/// alternating rounds (each variant alone: what a user sees), once with
/// the head-to-head ratios (precise to about 1% here, but a variant's extra
/// work in softirq is partly paid by its competitor, so they understate a
/// drop: iptables' 10,000-Service walk shows much less there than alone).
fn scaling_rows(rows: &[Row]) -> Vec<Row> {
    let (small, large) = (SCALES[0], SCALES[SCALES.len() - 1]);
    let mut out = Vec::new();
    for proto in ["TCP", "UDP"] {
        let at = |scale: usize, variant: &str, group: &str| {
            let name = format!("{proto} rate, {scale} services");
            rows.iter()
                .find(|r| r.group == group && r.name.starts_with(&name) && r.variant == variant)
                .cloned()
        };
        for variant in ["sluice", "iptables", "nftables"] {
            for (group, suffix, how) in [("connrate", "", "x direct"), (H2H_GROUP, ", head to head", "head-to-head x direct")] {
                let (Some(a), Some(b)) = (at(small, variant, group), at(large, variant, group)) else { continue };
                let (Some(ra), Some(rb)) = (a.ratio_to_direct, b.ratio_to_direct) else { continue };
                if !(ra > 0.0) || !rb.is_finite() {
                    continue;
                }
                let note = if group == "connrate" {
                    format!("({how} at {large}) / ({how} at {small}); raw ratio of medians {:.3}", b.median() / a.median())
                } else {
                    format!("({how} at {large}) / ({how} at {small})")
                };
                out.push(
                    Row::new("connrate", &format!("{proto} rate at {large} vs {small} services{suffix}"), variant, "x", vec![rb / ra])
                        .with_note(note),
                );
            }
        }
    }
    out
}

/// One bounded rate run; transactions per second.
fn rate(lab: &Lab, v: Variant, proto: &str, target: &str, also: &str, ms: u64) -> anyhow::Result<f64> {
    let probe = lab.probe_bin.clone();
    let ms_arg = ms.to_string();
    let mut args = vec!["rate", proto, target, "--duration-ms", &ms_arg, "--max", "1000000", "--timeout-ms", "1000"];
    if !also.is_empty() {
        args.extend(["--also", also]);
    }
    let out = lab.run_client(v, &probe, &args, Duration::from_millis(ms + 15_000));
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("probe output is not JSON ({}): {text:.300} {}", out.status, String::from_utf8_lossy(&out.stderr)))?;
    let ok = json["ok"].as_u64().unwrap_or(0);
    let errors: u64 = json["errors"]
        .as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    anyhow::ensure!(ok > 0, "no successful transaction to {target}: {json}");
    anyhow::ensure!(
        errors * 100 <= ok,
        "more than 1% failed transactions to {target}: {json}"
    );
    json["per_sec"].as_f64().context("no per_sec")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::throughput::h2h_rows;

    fn seq(scale: usize, variant: &str, value: f64, ratio: f64) -> Row {
        let mut r = Row::new("connrate", &format!("UDP rate, {scale} services"), variant, "req/s", vec![value]);
        r.ratio_to_direct = Some(ratio);
        r
    }

    #[test]
    fn scaling_compares_alone_and_head_to_head_ratios() {
        let mut rows = vec![seq(10, "sluice", 100.0, 0.9), seq(10_000, "sluice", 80.0, 0.6)];
        let s = scaling_rows(&rows);
        assert_eq!(s.len(), 1);
        assert!((s[0].median() - 0.6 / 0.9).abs() < 1e-9);
        let variants = ["sluice"];
        rows.extend(h2h_rows("UDP rate, 10 services, head to head", &variants, vec![vec![0.8, 0.9, 0.85]]));
        rows.extend(h2h_rows("UDP rate, 10000 services, head to head", &variants, vec![vec![0.88, 0.86, 0.87]]));
        let s = scaling_rows(&rows);
        assert_eq!(s.len(), 2);
        assert!((s[0].median() - 0.6 / 0.9).abs() < 1e-9);
        assert_eq!(s[1].name, "UDP rate at 10000 vs 10 services, head to head");
        assert!((s[1].median() - 0.87 / 0.85).abs() < 1e-9, "{}", s[1].median());
    }
}
