//! CNI ADD latency: `sluice-cni` against Debian's reference `bridge` +
//! `host-local` (containernetworking-plugins), run the way a container
//! runtime runs them: the plugin exec'd in the node's network namespace with
//! the CNI environment and its configuration on stdin, one fresh pod
//! namespace per ADD. The variants alternate pod by pod so both see the same
//! machine; each sample is the plugin's wall time from spawn to exit.
//!
//! Pod-to-pod iperf3 across two nodes through the overlay `sluice-cni
//! daemon` sets up, VXLAN and host-gw, against the underlay itself (`direct`:
//! iperf3 between the two nodes' own addresses, the limit of any overlay).
//! Two clusters of two nodes share one underlay; the daemons read Node
//! manifests, pods are added with the conflist each daemon wrote.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::json;

use super::lab::{pinned, IPERF_PORT};
use super::stats::Row;
use super::throughput::{measure_variants, streams_name, Iperf};
use super::{Args, Plan, Progress};
use crate::cni::{invoke, PodNetns};
use crate::{Node, Proc, Topology};

const GROUP: &str = "cni";
const REFERENCE: &str = "/usr/lib/cni";
const TIMEOUT: Duration = Duration::from_secs(20);

pub fn run(plan: &Plan, progress: &Progress, cni_bin: Option<PathBuf>, args: &Args) -> anyhow::Result<Vec<Row>> {
    let mut rows = add_latency(plan, progress, cni_bin.clone(), args)?;
    if let Some(bin) = cni_bin {
        rows.extend(overlay_throughput(plan, progress, &bin, args)?);
    }
    Ok(rows)
}

fn add_latency(plan: &Plan, progress: &Progress, cni_bin: Option<PathBuf>, args: &Args) -> anyhow::Result<Vec<Row>> {
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

const OVERLAY_ORDER: [&str; 6] =
    ["direct", "sluice-vxlan", "sluice-vxlan-ebpf", "sluice-host-gw", "sluice-host-gw-ebpf", "direct-aa"];

/// One node of an overlay cluster: its daemon and the pod added to it.
struct OverlayNode {
    node: Node,
    pod_netns: String,
    pod_ip: String,
    _daemon: Proc,
}

/// Builds a two-node cluster whose daemons run `backend` (with eBPF host
/// routing when `ebpf`); nodes `{tag}a` and `{tag}b` at 192.0.2.`first`
/// and `first + 1`, pod CIDRs 198.18.`first`.0/24 and the next.
fn overlay_cluster(
    topo: &mut Topology,
    pods: &mut PodNetns,
    bin: &Path,
    backend: &str,
    ebpf: bool,
    tag: &str,
    first: u8,
) -> anyhow::Result<[OverlayNode; 2]> {
    let manifests = topo.scratch(&format!("nodes-{tag}"));
    let mut nodes = Vec::new();
    for k in 0..2u8 {
        let name = format!("{tag}{}", char::from(b'a' + k));
        let addr = Ipv4Addr::new(192, 0, 2, first + k);
        let cidr = format!("198.18.{}.0/24", first + k);
        std::fs::write(
            manifests.join(format!("{name}.yaml")),
            format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDR: {cidr}, podCIDRs: [{cidr}]}}\n\
                 status: {{addresses: [{{type: InternalIP, address: {addr}}}]}}\n"
            ),
        )?;
        nodes.push((topo.add_node(&name, addr), name));
    }
    let mut out = Vec::new();
    for (node, name) in nodes {
        let (conf_dir, state_dir, ipam_dir) =
            (topo.scratch(&format!("{name}-net.d")), topo.scratch(&format!("{name}-run")), topo.scratch(&format!("{name}-ipam")));
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["daemon", "--backend", backend, "--node-name", &name, "--cluster-cidr", "198.18.0.0/16"])
            .arg("--manifests")
            .arg(&manifests)
            .arg("--cni-conf-dir")
            .arg(&conf_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--ipam-dir")
            .arg(&ipam_dir)
            .env("RUST_LOG", "warn");
        if ebpf {
            cmd.args(["--host-routing", "ebpf", "--bpffs"]).arg(topo.bpffs().join(&name));
        }
        let daemon = topo.spawn_in_node(&node, cmd);
        let conflist = conf_dir.join("10-sluice.conflist");
        let deadline = Instant::now() + TIMEOUT;
        while !(state_dir.join("subnet.json").exists() && conflist.exists()) {
            ensure!(daemon.try_wait().is_none(), "daemon on {name} exited: {}", daemon.stderr());
            ensure!(Instant::now() < deadline, "daemon on {name} did not publish its subnet: {}", daemon.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        // The conflist's first plugin, as a runtime hands it over.
        let list: serde_json::Value = serde_json::from_slice(&std::fs::read(&conflist)?)?;
        let mut conf = list["plugins"][0].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        let pod_netns = pods.add(&format!("{}-p{name}", topo.id()));
        let netns_path = format!("/run/netns/{pod_netns}");
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", name.as_str()),
            ("CNI_NETNS", netns_path.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        let added = invoke(bin, &node.netns, &env, &conf.to_string(), TIMEOUT);
        ensure!(added.ok, "ADD on {name}: {} {}", added.stdout, added.stderr);
        let pod_ip = added.json()["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("ADD on {name} returned no address: {}", added.stdout))?;
        out.push(OverlayNode { node, pod_netns, pod_ip, _daemon: daemon });
    }
    let [a, b]: [OverlayNode; 2] = out.try_into().map_err(|_| anyhow::anyhow!("two nodes"))?;
    Ok([a, b])
}

/// An iperf3 server in `netns` on CPU 1 (the clients run on CPU 0).
fn iperf_server(topo: &Topology, netns: &str) -> anyhow::Result<Proc> {
    let cmd = pinned(1, Path::new("iperf3"), &["-s", "-p", &IPERF_PORT.to_string(), "--forceflush"]);
    let p = topo.spawn_in_netns(netns, None, cmd);
    ensure!(p.wait_for_stdout("listening", Duration::from_secs(10)), "iperf3 server in {netns}: {}", p.stderr());
    Ok(p)
}

fn overlay_throughput(plan: &Plan, progress: &Progress, bin: &Path, args: &Args) -> anyhow::Result<Vec<Row>> {
    progress.say("building two 2-node clusters on one underlay: sluice-cni daemon with VXLAN and with host-gw");
    let mut topo = Topology::new();
    super::note_topology(args, topo.id());
    let mut pods = PodNetns::new();
    let vxlan = overlay_cluster(&mut topo, &mut pods, bin, "vxlan", false, "cv", 70)?;
    let hostgw = overlay_cluster(&mut topo, &mut pods, bin, "host-gw", false, "cg", 72)?;
    let vxlan_ebpf = overlay_cluster(&mut topo, &mut pods, bin, "vxlan", true, "ev", 74)?;
    let hostgw_ebpf = overlay_cluster(&mut topo, &mut pods, bin, "host-gw", true, "eg", 76)?;
    let _servers = [
        iperf_server(&topo, &vxlan[1].node.netns)?,
        iperf_server(&topo, &vxlan[1].pod_netns)?,
        iperf_server(&topo, &hostgw[1].pod_netns)?,
        iperf_server(&topo, &vxlan_ebpf[1].pod_netns)?,
        iperf_server(&topo, &hostgw_ebpf[1].pod_netns)?,
    ];
    // (client netns, server address) per variant.
    let target = |v: &str| -> (&str, String) {
        match v {
            "sluice-vxlan" => (&vxlan[0].pod_netns, vxlan[1].pod_ip.clone()),
            "sluice-host-gw" => (&hostgw[0].pod_netns, hostgw[1].pod_ip.clone()),
            "sluice-vxlan-ebpf" => (&vxlan_ebpf[0].pod_netns, vxlan_ebpf[1].pod_ip.clone()),
            "sluice-host-gw-ebpf" => (&hostgw_ebpf[0].pod_netns, hostgw_ebpf[1].pod_ip.clone()),
            _ => (&vxlan[0].node.netns, vxlan[1].node.underlay.to_string()),
        }
    };
    // One short transfer per path: neighbours resolved, a broken path fails here.
    for v in &OVERLAY_ORDER[..5] {
        let (netns, host) = target(v);
        let warm = Iperf::new(&host, IPERF_PORT, 1, 1);
        warm.run(|a, t| Ok(topo.run_in_netns(netns, None, pinned(0, Path::new("iperf3"), a), t)))
            .map_err(|e| anyhow::anyhow!("warm-up of {v} ({netns} -> {host}): {e:#}"))?;
    }
    let mut rows = Vec::new();
    for streams in [1u32, 4] {
        let name = format!("iperf3 pod-to-pod cross-node {}", streams_name(streams));
        let rounds = measure_variants(plan.rounds, progress, &name, &OVERLAY_ORDER, |v| {
            let (netns, host) = target(v);
            let spec = Iperf::new(&host, IPERF_PORT, streams, plan.iperf_secs);
            spec.run(|a, t| Ok(topo.run_in_netns(netns, None, pinned(0, Path::new("iperf3"), a), t)))
        });
        rows.extend(rounds.rows(GROUP, &name, "Gbit/s").into_iter().map(|r| {
            let note = match r.variant.as_str() {
                "direct" => "the underlay: node to node, no overlay",
                "sluice-vxlan" => "pod to pod over the VXLAN device (pod MTU 1450)",
                "sluice-host-gw" => "pod to pod over host-gw routes (pod MTU 1500)",
                "sluice-vxlan-ebpf" => "VXLAN with --host-routing ebpf (FIB lookup + redirect at tc)",
                "sluice-host-gw-ebpf" => "host-gw with --host-routing ebpf",
                _ => "a second underlay run: the noise floor",
            };
            r.with_note(note)
        }));
    }
    Ok(rows)
}
