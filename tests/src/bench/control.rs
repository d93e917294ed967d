//! Control plane: time from an empty node to 1,000 and 10,000 Services (10
//! endpoints each) programmed, the latency of one endpoint change at 10,000
//! Services, and the agent's memory. All in one extra node namespace (`ctl`),
//! away from any traffic.
//!
//! - sluice: the agent follows an empty manifest directory; the Service files
//!   (staged beforehand) are renamed into it and the clock stops when the
//!   agent logs "dataplane synced ... frontends=N" (end to end: inotify,
//!   debounce, directory rescan and parse, translation, map writes). The
//!   agent's own figure is the sum of the `micros` it logged for that change
//!   (translation, diff and map writes only).
//! - iptables: `iptables-restore --noflush` of kube-proxy's full ruleset, from
//!   an empty table (cold) and again with one endpoint changed (what
//!   kube-proxy's iptables mode does on a full sync), until it returns.
//! - nftables: `nft -f` of kube-proxy's first transaction (cold) and of the
//!   incremental transaction for one endpoint change, until it returns.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use super::lab::{load_iptables_base, IPTABLES_RESTORE, nft_reset, run_ok_in_netns, Lab, Needs, CLUSTER_CIDR};
use super::stats::{median, Row};
use super::workload::{self, ServiceSpec};
use super::{Args, Plan, Progress};

const GROUP: &str = "control";
const LIMIT: Duration = Duration::from_secs(600);
const SIZES: [usize; 2] = [1_000, 10_000];

pub fn run(plan: &Plan, progress: &Progress, proxy: &Path, probe: &Path, args: &Args) -> anyhow::Result<Vec<Row>> {
    let mut lab = Lab::new(&[], Needs::default(), proxy.to_path_buf(), probe.to_path_buf())?;
    super::note_topology(args, lab.topo.id());
    let node = lab.topo.add_node("ctl", Ipv4Addr::new(192, 0, 2, 100));
    let ns = node.netns.clone();
    let mut agent = lab.start_agent(&node, "ctl")?;
    let mut rows = Vec::new();

    for n in SIZES {
        let services = workload::fillers(n);
        let name = format!("cold programming, {n} services");
        let slow = n >= 10_000;
        let runs = if slow { plan.cold_runs_slow } else { plan.cold_runs };

        // sluice
        let stage = lab.scratch(&format!("stage-{n}"));
        let mut files = Vec::new();
        for (f, text) in workload::manifest_files(&services) {
            fs::write(stage.join(&f), text)?;
            files.push(f);
        }
        let (mut e2e, mut own, mut rss) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..plan.cold_runs {
            agent.mark();
            let t0 = Instant::now();
            for f in &files {
                fs::rename(stage.join(f), agent.manifests.join(f))?;
            }
            let (seen, micros) = agent.wait_synced(n, LIMIT)?;
            e2e.push(ms(seen - t0));
            own.push(micros as f64 / 1000.0);
            rss.push(agent.rss_mib().unwrap_or(f64::NAN));
            if run == 0 {
                verify_status(proxy, &agent.bpffs, n)?;
            }
            progress.say(format!(
                "  sluice {name} run {}/{}: end to end {:.0} ms, agent {:.0} ms, RSS {:.1} MiB",
                run + 1,
                plan.cold_runs,
                e2e[run],
                own[run],
                rss[run]
            ));
            let last = run + 1 == plan.cold_runs;
            if !(last && n == 10_000) {
                agent.mark();
                for f in &files {
                    fs::rename(agent.manifests.join(f), stage.join(f))?;
                }
                agent.wait_synced(0, LIMIT)?;
            }
        }
        rows.push(Row::new(GROUP, &name, "sluice", "ms", e2e).lower_is_better());
        rows.push(
            Row::new(GROUP, &name, "sluice-agent", "ms", own)
                .lower_is_better()
                .with_note("agent's own time (logged micros): translate, diff, map writes"),
        );
        rows.push(Row::new(GROUP, &format!("agent RSS, {n} services"), "sluice", "MiB", rss).lower_is_better());

        // iptables
        let full = lab.scratch(&format!("ipt-{n}")).join("full.txt");
        fs::write(&full, workload::iptables_ruleset(&services, CLUSTER_CIDR))?;
        let empty = full.with_file_name("empty.txt");
        fs::write(&empty, workload::iptables_empty())?;
        let mut samples = Vec::new();
        for run in 0..runs {
            let mut clear = Command::new(IPTABLES_RESTORE);
            clear.arg(&empty);
            run_ok_in_netns(&ns, clear, LIMIT)?;
            load_iptables_base(&ns)?;
            let mut cmd = Command::new(IPTABLES_RESTORE);
            cmd.arg("--noflush").arg(&full);
            let t = run_ok_in_netns(&ns, cmd, LIMIT)?;
            samples.push(ms(t));
            progress.say(format!("  iptables {name} run {}/{runs}: {:.0} ms", run + 1, ms(t)));
        }
        rows.push(Row::new(GROUP, &name, "iptables", "ms", samples).lower_is_better());

        // nftables
        if n >= 10_000 && !plan.nft_10k {
            progress.say("  nftables at 10000 services: skipped in --quick (one nft -f of it takes minutes)");
            rows.push(
                Row::new(GROUP, &name, "nftables", "ms", Vec::new())
                    .lower_is_better()
                    .with_note("skipped in --quick: one nft -f of 10,000 Services takes minutes here"),
            );
            continue;
        }
        let full = lab.scratch(&format!("nft-{n}")).join("full.nft");
        fs::write(&full, workload::nft_ruleset(&services, CLUSTER_CIDR))?;
        let reset = full.with_file_name("reset.nft");
        fs::write(&reset, nft_reset())?;
        // One nft -f of 10,000 Services costs minutes of kernel time here.
        let runs = if slow { 1 } else { runs };
        let mut samples = Vec::new();
        for run in 0..runs {
            let mut clear = Command::new("nft");
            clear.arg("-f").arg(&reset);
            run_ok_in_netns(&ns, clear, LIMIT)?;
            let mut cmd = Command::new("nft");
            cmd.arg("-f").arg(&full);
            let t = run_ok_in_netns(&ns, cmd, LIMIT)?;
            samples.push(ms(t));
            progress.say(format!("  nftables {name} run {}/{runs}: {:.0} ms", run + 1, ms(t)));
        }
        rows.push(Row::new(GROUP, &name, "nftables", "ms", samples).lower_is_better());
    }

    // Single endpoint change at 10,000 Services: the agent holds 10,000
    // (last cold run), iptables and nftables hold their full rulesets.
    let n = 10_000;
    let services = workload::fillers(n);
    let target = n / 2;
    let changed = |k: usize| -> ServiceSpec {
        let mut s = services[target].clone();
        s.endpoints[0] = Ipv4Addr::new(198, 18, 127, u8::try_from(k % 250 + 1).expect("< 251"));
        s
    };
    let name = format!("endpoint change, {n} services");

    let (mut e2e, mut own) = (Vec::new(), Vec::new());
    let chunk = workload::filler_file(target);
    for k in 0..plan.change_runs * 2 {
        let mut all = services.clone();
        all[target] = changed(k);
        let text = workload::manifest_files(&all)
            .into_iter()
            .find(|(f, _)| *f == chunk)
            .map(|(_, t)| t)
            .context("chunk file")?;
        agent.mark();
        let t0 = Instant::now();
        agent.write_file(&chunk, &text)?;
        let (seen, micros) = agent.wait_synced(n, Duration::from_secs(60))?;
        e2e.push(ms(seen - t0));
        own.push(micros as f64 / 1000.0);
    }
    change_rows(progress, &mut rows, &name, e2e, own, "manifest file rewritten -> map written");

    // The same through the API server, the path a cluster uses: the test
    // API server (real list/watch protocol) runs in the ctl namespace and a
    // fresh agent follows it with a kubeconfig.
    drop(agent);
    kube_variant(plan, progress, &mut lab, &node, &services, &changed, &mut rows)?;

    let dir = lab.scratch("change");
    let mut ipt_files = Vec::new();
    for k in 0..2 {
        let mut all = services.clone();
        all[target] = changed(k);
        let f = dir.join(format!("ipt-{k}.txt"));
        fs::write(&f, workload::iptables_ruleset(&all, CLUSTER_CIDR))?;
        ipt_files.push(f);
    }
    let mut samples = Vec::new();
    for k in 0..plan.change_runs_slow {
        let mut cmd = Command::new(IPTABLES_RESTORE);
        cmd.arg("--noflush").arg(&ipt_files[k % 2]);
        samples.push(ms(run_ok_in_netns(&ns, cmd, LIMIT)?));
        if k == 0 || (k + 1) % 5 == 0 {
            progress.say(format!("  iptables {name}: {}/{} done", k + 1, plan.change_runs_slow));
        }
    }
    rows.push(
        Row::new(GROUP, &name, "iptables", "ms", samples)
            .lower_is_better()
            .with_p99()
            .with_note("full iptables-legacy-restore --noflush of the ruleset"),
    );

    if plan.nft_10k {
        nft_change(plan, progress, &mut rows, &ns, &dir, &services[target], &changed, &name)?;
    } else {
        rows.push(
            Row::new(GROUP, &name, "nftables", "ms", Vec::new())
                .lower_is_better()
                .with_note("skipped in --quick: needs the 10,000-Service nft ruleset"),
        );
    }

    // Ratios to iptables (medians; these runs are not paired).
    for name in rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>() {
        let base = rows
            .iter()
            .find(|r| r.name == name && r.variant == "iptables")
            .map(Row::median);
        if let Some(base) = base.filter(|b| *b > 0.0) {
            for r in rows
                .iter_mut()
                .filter(|r| r.name == name && r.variant != "iptables" && !r.samples.is_empty())
            {
                r.ratio_to_iptables = Some(r.median() / base);
            }
        }
    }
    Ok(rows)
}

/// Cold start and single endpoint changes at 10,000 Services with the agent
/// following the test API server: cold is from starting the agent (program
/// load, list of every object, translation, map writes) to all Services
/// programmed; a change is from the EndpointSlice update on the server to
/// the map written (watch event, translation, diff, map writes).
fn kube_variant(
    plan: &Plan,
    progress: &Progress,
    lab: &mut Lab,
    node: &crate::Node,
    services: &[ServiceSpec],
    changed: &dyn Fn(usize) -> ServiceSpec,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let n = services.len();
    let api = crate::in_netns(&node.netns, crate::apiserver::ApiServer::start)
        .context("starting the test API server in the ctl namespace")?;
    let kubeconfig = lab.scratch("kube").join("kubeconfig.yaml");
    api.write_kubeconfig(&kubeconfig);
    for (_, text) in workload::manifest_files(services) {
        api.apply_yaml_str(&text);
    }
    let t0 = Instant::now();
    let mut agent = lab.start_agent_kube(node, "ctl-kube", &kubeconfig)?;
    let (seen, micros) = agent.wait_synced(n, LIMIT)?;
    let cold = ms(seen - t0);
    let rss = agent.rss_mib().unwrap_or(f64::NAN);
    verify_status(&lab.proxy_bin, &agent.bpffs, n)?;
    progress.say(format!(
        "  sluice (API) cold start with {n} services: {cold:.0} ms (agent {:.0} ms), RSS {rss:.1} MiB",
        micros as f64 / 1000.0
    ));
    let name = format!("cold start from the API, {n} services");
    rows.push(
        Row::new(GROUP, &name, "sluice", "ms", vec![cold])
            .lower_is_better()
            .with_note("agent start (program load), list, translation, map writes"),
    );
    rows.push(Row::new(GROUP, &format!("agent RSS from the API, {n} services"), "sluice", "MiB", vec![rss]).lower_is_better());

    let (mut e2e, mut own) = (Vec::new(), Vec::new());
    for k in 0..plan.change_runs * 2 {
        let slice = crate::apiserver::fixtures(&workload::manifest(&changed(k)))
            .into_iter()
            .find(|o| matches!(o, crate::apiserver::Fixture::EndpointSlice(_)))
            .context("the changed Service's slice")?;
        agent.mark();
        let t0 = Instant::now();
        api.apply_fixture(&slice);
        let (seen, micros) = agent.wait_synced(n, Duration::from_secs(60))?;
        e2e.push(ms(seen - t0));
        own.push(micros as f64 / 1000.0);
    }
    let name = format!("endpoint change from the API, {n} services");
    change_rows(progress, rows, &name, e2e, own, "EndpointSlice updated on the API server -> map written");
    drop(agent);
    drop(api);
    Ok(())
}

/// The rows of one endpoint-change measurement: end to end (`e2e`) and the
/// agent's own logged time (`own`), both with p99.
fn change_rows(progress: &Progress, rows: &mut Vec<Row>, name: &str, e2e: Vec<f64>, own: Vec<f64>, path: &str) {
    progress.say(format!(
        "  sluice {name}: median end to end {:.2} ms, agent {:.2} ms ({} changes)",
        median(&e2e),
        median(&own),
        e2e.len()
    ));
    rows.push(Row::new(GROUP, name, "sluice", "ms", e2e).lower_is_better().with_p99().with_note(path));
    rows.push(
        Row::new(GROUP, name, "sluice-agent", "ms", own)
            .lower_is_better()
            .with_p99()
            .with_note("agent's own time (logged micros)"),
    );
}

#[expect(clippy::too_many_arguments, reason = "one call site; a struct would only rename them")]
fn nft_change(
    plan: &Plan,
    progress: &Progress,
    rows: &mut Vec<Row>,
    ns: &str,
    dir: &Path,
    original: &ServiceSpec,
    changed: &dyn Fn(usize) -> ServiceSpec,
    name: &str,
) -> anyhow::Result<()> {
    // orig -> 0 -> 1 -> 0 ...
    let mut nft_files = Vec::new();
    let first = dir.join("nft-first.nft");
    fs::write(&first, workload::nft_endpoint_change(original, &changed(0), CLUSTER_CIDR))?;
    for (k, (a, b)) in [(0, 1), (1, 0)].into_iter().enumerate() {
        let f = dir.join(format!("nft-{k}.nft"));
        fs::write(&f, workload::nft_endpoint_change(&changed(a), &changed(b), CLUSTER_CIDR))?;
        nft_files.push(f);
    }
    let mut samples = Vec::new();
    for k in 0..plan.change_runs_slow * 2 {
        let file = if k == 0 { &first } else { &nft_files[(k - 1) % 2] };
        let mut cmd = Command::new("nft");
        cmd.arg("-f").arg(file);
        samples.push(ms(run_ok_in_netns(ns, cmd, LIMIT)?));
    }
    progress.say(format!("  nftables {name}: median {:.1} ms", median(&samples)));
    rows.push(
        Row::new(GROUP, name, "nftables", "ms", samples)
            .lower_is_better()
            .with_p99()
            .with_note("incremental nft -f transaction"),
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Checks with `sluice-proxy status --json` that the maps hold `n` frontends.
fn verify_status(proxy: &Path, bpffs: &Path, n: usize) -> anyhow::Result<()> {
    let out = Command::new(proxy)
        .args(["status", "--json", "--bpffs"])
        .arg(bpffs)
        .output()
        .context("run sluice-proxy status")?;
    ensure!(
        out.status.success(),
        "sluice-proxy status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("status JSON")?;
    let count = v.as_array().map_or(0, Vec::len);
    ensure!(count == n, "status lists {count} frontends, expected {n}");
    Ok(())
}
