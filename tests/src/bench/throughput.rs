//! iperf3 TCP throughput, client pod -> ClusterIP (one endpoint), same node
//! and across nodes (host-gw static routes), 1 and 4 streams; `direct` uses
//! the pod IP. Client on CPU 0, server on CPU 1; the variants run in rounds
//! of back-to-back runs (rotated order), ratios are medians of per-round
//! ratios, and a second `direct` run per round (`direct-aa`) gives the noise floor.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::lab::{perf_services, Lab, Needs, Variant, IPERF_PORT, VIP_PERF_CROSS, VIP_PERF_SAME};
use super::stats::{Rounds, Row};
use super::{Args, Plan, Progress};

const AA: &str = "direct-aa";

pub fn run(plan: &Plan, progress: &Progress, proxy: &Path, probe: &Path, args: &Args) -> anyhow::Result<Vec<Row>> {
    progress.say("building 4 two-node clusters (direct, sluice, iptables, nftables)");
    let mut lab = Lab::new(
        &Variant::ALL,
        Needs {
            perf: true,
            rate: false,
        },
        proxy.to_path_buf(),
        probe.to_path_buf(),
    )?;
    super::note_topology(args, lab.topo.id());
    for v in Variant::ALL {
        let services = perf_services(lab.cluster(v));
        lab.program(v, &services, true)?;
    }
    progress.say("services programmed; iperf3 servers ready");

    let mut rows = Vec::new();
    let order: Vec<&str> = vec!["direct", "sluice", "iptables", "nftables", AA];
    for (placement, vip) in [("same-node", VIP_PERF_SAME), ("cross-node", VIP_PERF_CROSS)] {
        for streams in [1u32, 4] {
            let name = format!("iperf3 {placement} {streams} stream{}", if streams > 1 { "s" } else { "" });
            let mut rounds = Rounds::new(&order);
            for r in 0..plan.rounds {
                let mut values = vec![f64::NAN; order.len()];
                for k in 0..order.len() {
                    // Rotate the order each round so no variant always runs first.
                    let idx = (k + r) % order.len();
                    let variant = order[idx];
                    let v = match variant {
                        "sluice" => Variant::Sluice,
                        "iptables" => Variant::Iptables,
                        "nftables" => Variant::Nftables,
                        _ => Variant::Direct,
                    };
                    let target = if v == Variant::Direct {
                        let c = lab.cluster(Variant::Direct);
                        let pod = if placement == "same-node" { &c.perf_same } else { &c.perf_cross };
                        pod.as_ref().context("perf pod")?.ip
                    } else {
                        vip
                    };
                    values[idx] = match iperf(&lab, v, &target.to_string(), streams, plan.iperf_secs) {
                        Ok(g) => g,
                        Err(e) => {
                            progress.say(format!("  {name} {variant}: {e:#}"));
                            f64::NAN
                        }
                    };
                }
                progress.say(format!(
                    "  {name} round {}/{}: {}",
                    r + 1,
                    plan.rounds,
                    order
                        .iter()
                        .zip(&values)
                        .map(|(v, x)| format!("{v} {x:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                rounds.values.push(values);
            }
            rows.extend(rounds.rows("throughput", &name, "Gbit/s"));
        }
    }
    Ok(rows)
}

/// One iperf3 run from the client pod; Gbit/s received.
fn iperf(lab: &Lab, v: Variant, target: &str, streams: u32, secs: u64) -> anyhow::Result<f64> {
    let out = lab.run_client(
        v,
        Path::new("iperf3"),
        &[
            "-c",
            target,
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &secs.min(10).to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
        Duration::from_secs(secs.min(10) + 20),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("iperf3 output is not JSON ({}): {text:.300}", out.status))?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {err}");
    }
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}
