//! `sluice-bench`: Sluice against kube-proxy's iptables and nftables
//! datapaths on the same namespace topology (see [`lab`]). Run through
//! `cargo xtask bench`, which builds the release binaries first.
//!
//! Groups: `throughput` (iperf3 from a pod through a ClusterIP, and from an
//! outside client through a NodePort to a pod on another node), `connrate` (new TCP
//! connections and UDP request/responses per second at 10, 1,000 and 10,000
//! Services), `control` (programming time and agent memory), `cni` (pod to
//! pod across nodes, CNI ADD latency) and `dns` (dnsperf).
//!
//! Through Services, each measurement has two parts: alternating rounds
//! (each variant alone, bracketed by two `direct` runs: the absolute
//! figures), then head-to-head rounds (each variant at the same time as a
//! `direct` run: the ratios; see [`throughput::head_to_head`]).

mod cni;
mod connrate;
mod control;
mod dns;
mod lab;
mod report;
mod stats;
mod throughput;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

pub use stats::Row;

/// Measurement groups, in the order a full run does them: the short,
/// latency-sensitive ones first. After throughput, connrate and control the
/// kernel spends minutes tearing down their namespaces and 10,000-Service
/// rulesets (under the RTNL lock, in kworkers on both CPUs); CNI ADDs (netlink)
/// and DNS tail latency measured after them read two to twenty times worse.
pub const GROUPS: &[&str] = &["cni", "dns", "throughput", "connrate", "control"];

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Fewer and shorter runs (under 10 minutes on a 2-core machine).
    #[arg(long)]
    pub quick: bool,
    /// Run only this group: throughput, connrate, control, cni, dns.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(GROUPS))]
    pub only: Option<String>,
    /// Where report.json, report.md and the plots go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Append each topology's id here (so a wrapper can clean up after a crash).
    #[arg(long)]
    pub id_file: Option<PathBuf>,
}

/// Run sizes for quick and full runs.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Rounds of alternating runs: pod-to-pod (cni) and DNS.
    pub rounds: usize,
    /// Rounds of alternating runs through Services (throughput, connection
    /// rate); their ratios come from the head-to-head rounds.
    pub seq_rounds: usize,
    /// iperf3 -t (seconds; at most 10).
    pub iperf_secs: u64,
    /// Rounds of head-to-head iperf3 runs (each variant at the same time
    /// as direct) for the ClusterIP and NodePort measurements.
    pub h2h_rounds: usize,
    /// iperf3 -t of a head-to-head run.
    pub h2h_secs: u64,
    /// Duration of one head-to-head connection-rate run.
    pub h2h_rate_ms: u64,
    /// Duration of one connection-rate run.
    pub rate_ms: u64,
    /// Cold programming runs per variant and size.
    pub cold_runs: usize,
    /// Cold programming runs for iptables at 10,000 Services (slow).
    pub cold_runs_slow: usize,
    /// Single-endpoint-change samples per variant.
    pub change_runs: usize,
    /// Single-endpoint-change samples for iptables (a full restore each).
    pub change_runs_slow: usize,
    /// Whether the control plane measures nftables' cold load at 10,000
    /// Services: one `nft -f` of that ruleset (kube-proxy's single
    /// transaction) costs about 4 CPU-minutes on this kernel, too much for
    /// --quick.
    pub nft_10k: bool,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rounds: 3,
                seq_rounds: 2,
                iperf_secs: 2,
                h2h_rounds: 2,
                h2h_secs: 1,
                h2h_rate_ms: 500,
                rate_ms: 1000,
                cold_runs: 3,
                cold_runs_slow: 1,
                change_runs: 10,
                change_runs_slow: 2,
                nft_10k: false,
            }
        } else {
            Plan {
                quick,
                rounds: 5,
                seq_rounds: 3,
                iperf_secs: 3,
                h2h_rounds: 5,
                h2h_secs: 2,
                h2h_rate_ms: 1000,
                rate_ms: 2000,
                cold_runs: 5,
                cold_runs_slow: 2,
                change_runs: 25,
                change_runs_slow: 5,
                nft_10k: true,
            }
        }
    }
}

/// Progress printing with the time since start.
pub struct Progress {
    start: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            start: Instant::now(),
        }
    }

    pub fn say(&self, msg: impl AsRef<str>) {
        use std::io::Write as _;
        println!("[{:>7.1}s] {}", self.start.elapsed().as_secs_f64(), msg.as_ref());
        let _ = std::io::stdout().flush();
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Busy and total jiffies of all CPUs from /proc/stat (busy: everything
/// but idle and iowait; steal counts as busy, it is time we did not get).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Waits (at most `max`) until the machine is quiet: less than 20% of the
/// CPUs busy over a quarter of a second. Network namespaces of a torn-down
/// lab are freed by a kernel worker for seconds afterwards, and a lab just
/// built still settles; a measurement started then reads that work as the
/// first variant's slowness. Returns how long it waited.
pub fn settle(max: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < max {
        let Some((b0, t0)) = cpu_jiffies() else { break };
        std::thread::sleep(Duration::from_millis(250));
        let Some((b1, t1)) = cpu_jiffies() else { break };
        #[expect(clippy::cast_precision_loss, reason = "jiffy deltas are small")]
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        if busy < 0.2 {
            break;
        }
    }
    start.elapsed()
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// A workspace binary next to the running one, or None.
pub fn sibling_bin(name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(crate::bin_env_var(name)) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

fn selected(args: &Args, group: &str) -> bool {
    args.only.as_deref().is_none_or(|g| g == group)
}

/// Runs the selected groups and writes the report.
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        // SAFETY: geteuid(2) cannot fail.
        unsafe { libc::geteuid() } == 0,
        "sluice-bench needs root (network namespaces, cgroups, bpffs)"
    );
    let plan = Plan::new(args.quick);
    let progress = Progress::new();
    let proxy = sibling_bin("sluice-proxy").context(
        "sluice-proxy not found next to sluice-bench: build with `cargo build --release -p proxy-user -p tests` (cargo xtask bench does)",
    )?;
    let probe = sibling_bin("sluice-probe").context("sluice-probe not found next to sluice-bench")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("mkdir {}", args.out.display()))?;
    progress.say(format!(
        "sluice-bench {} run{}; binaries {}",
        if plan.quick { "quick" } else { "full" },
        args.only.as_deref().map(|g| format!(" of {g}")).unwrap_or_default(),
        proxy.parent().map(|p| p.display().to_string()).unwrap_or_default()
    ));

    let mut rows: Vec<Row> = Vec::new();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let tools = report::tools();

    for &group in GROUPS {
        if !selected(args, group) {
            continue;
        }
        let t0 = progress.elapsed();
        progress.say(format!("== {group}"));
        let result = match group {
            "throughput" => throughput::run(&plan, &progress, &proxy, &probe, args),
            "connrate" => connrate::run(&plan, &progress, &proxy, &probe, args),
            "control" => control::run(&plan, &progress, &proxy, &probe, args),
            "cni" => cni::run(&plan, &progress, sibling_bin("sluice-cni"), args),
            "dns" => dns::run(&plan, &progress, sibling_bin("sluice-dns"), args),
            _ => unreachable!("GROUPS"),
        };
        match result {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                progress.say(format!("{group} FAILED: {e:#}"));
                failures.push(format!("{group}: {e:#}"));
            }
        }
        timings.push((group.to_string(), progress.elapsed() - t0));
        // Written after every group, so a later failure keeps what was measured.
        report::write(&args.out, &rows, &timings, &plan, &tools, &failures)?;
    }
    report::write(&args.out, &rows, &timings, &plan, &tools, &failures)?;
    println!();
    print!("{}", report::table(&rows));
    println!();
    for (g, t) in &timings {
        println!("{g}: {:.0} s", t.as_secs_f64());
    }
    println!(
        "total {:.0} s; report in {}",
        progress.elapsed().as_secs_f64(),
        args.out.display()
    );
    if !failures.is_empty() {
        anyhow::bail!("some groups failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Records the topology id for the wrapper's crash cleanup.
pub fn note_topology(args: &Args, id: &str) {
    if let Some(f) = &args.id_file {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(f) {
            let _ = writeln!(file, "{id}");
        }
    }
}
