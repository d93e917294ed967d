//! CNI ADD latency: `sluice-cni` against Debian's reference `bridge` +
//! `host-local` (containernetworking-plugins), run the way a container
//! runtime runs them: the plugin exec'd in the node's network namespace with
//! the CNI environment and its configuration on stdin, one fresh pod
//! namespace per ADD. The variants alternate pod by pod so both see the same
//! machine; each sample is the plugin's wall time from spawn to exit.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::json;

use super::stats::Row;
use super::{Args, Plan, Progress};
use crate::cni::{invoke, PodNetns};
use crate::Topology;

const GROUP: &str = "cni";
const REFERENCE: &str = "/usr/lib/cni";
const TIMEOUT: Duration = Duration::from_secs(20);

pub fn run(plan: &Plan, progress: &Progress, cni_bin: Option<PathBuf>, args: &Args) -> anyhow::Result<Vec<Row>> {
    let name = "CNI ADD latency";
    let Some(bin) = cni_bin else {
        let note = "skipped: not built (sluice-cni not found next to sluice-bench)";
        println!("  {name}: {note}");
        return Ok(vec![Row::new(GROUP, name, "sluice", "ms", Vec::new()).with_note(note)]);
    };
    let bridge = Path::new(REFERENCE).join("bridge");
    if !bridge.is_file() {
        let note = "skipped: the reference plugins are not installed (containernetworking-plugins)";
        println!("  {name}: {note}");
        return Ok(vec![Row::new(GROUP, name, "sluice", "ms", Vec::new()).with_note(note)]);
    }
    let n = if plan.quick { 60 } else { 200 };
    let mut topo = Topology::new();
    super::note_topology(args, topo.id());
    let node = topo.add_node("cni", Ipv4Addr::new(192, 0, 2, 80));
    let mut pods = PodNetns::new();
    let ours = json!({
        "cniVersion": "1.0.0", "name": "sluice", "type": "sluice-cni",
        "podCidrs": ["198.18.0.0/23"], "dataDir": topo.scratch("ipam"), "mtu": 1450, "logLevel": "warn",
    })
    .to_string();
    let reference = json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cni0", "isGateway": true, "mtu": 1450,
        "ipam": {"type": "host-local", "dataDir": topo.scratch("host-local"), "ranges": [[{"subnet": "198.18.2.0/23"}]]},
    })
    .to_string();
    let cni_path = format!("{}:{REFERENCE}", bin.parent().map(|p| p.display().to_string()).unwrap_or_default());
    let (mut t_ours, mut t_ref) = (Vec::new(), Vec::new());
    for i in 0..n {
        // Alternate which goes first, so neither always runs on a warmer cache.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for variant in order {
            let netns = pods.add(&format!("{}-c{variant}-{i}", topo.id()));
            let netns_path = format!("/run/netns/{netns}");
            let container = format!("bench{variant}-{i}");
            let (plugin, conf) = if variant == 0 { (&bin, &ours) } else { (&bridge, &reference) };
            let env = [
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", container.as_str()),
                ("CNI_NETNS", netns_path.as_str()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", cni_path.as_str()),
            ];
            let start = Instant::now();
            let out = invoke(plugin, &node.netns, &env, conf, TIMEOUT);
            let took = start.elapsed().as_secs_f64() * 1000.0;
            ensure!(out.ok, "ADD #{i} with {} failed: {} {}", plugin.display(), out.stdout, out.stderr);
            if variant == 0 { t_ours.push(took) } else { t_ref.push(took) }
        }
        if (i + 1) % 20 == 0 {
            progress.say(format!("  {} ADDs of each plugin done", i + 1));
        }
    }
    let rate = |t: &[f64]| t.len() as f64 / (t.iter().sum::<f64>() / 1000.0);
    let (r_ours, r_ref) = (rate(&t_ours), rate(&t_ref));
    progress.say(format!(
        "  ADDs per second: sluice-cni {r_ours:.0}, bridge + host-local {r_ref:.0} ({:.2}x)",
        r_ours / r_ref
    ));
    let mut rows = vec![
        Row::new(GROUP, name, "sluice", "ms", t_ours).lower_is_better().with_p99(),
        Row::new(GROUP, name, "bridge+host-local", "ms", t_ref).lower_is_better().with_p99(),
    ];
    rows.push(
        Row::new(GROUP, "CNI ADDs per second (sequential)", "sluice", "ADD/s", vec![r_ours])
            .with_note(format!("{:.2}x bridge + host-local ({r_ref:.0}/s)", r_ours / r_ref)),
    );
    rows.push(Row::new(GROUP, "CNI ADDs per second (sequential)", "bridge+host-local", "ADD/s", vec![r_ref]));
    Ok(rows)
}
