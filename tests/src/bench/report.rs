//! report.json, report.md, the PNG plots and the printed table.

use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use plotters::prelude::*;

use super::stats::{max, median, min, percentile, Row};
use super::Plan;

/// Tool versions and machine facts for the report header.
pub fn tools() -> Vec<(String, String)> {
    let sh = |prog: &str, args: &[&str]| -> String {
        Command::new(prog)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                let s = if o.stdout.is_empty() { o.stderr } else { o.stdout };
                String::from_utf8_lossy(&s).lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_else(|| "unavailable".into())
    };
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or_else(|| "unknown".into(), |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0));
    vec![
        ("date".into(), sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])),
        ("kernel (uname -r)".into(), sh("uname", &["-r"])),
        ("CPUs (nproc)".into(), sh("nproc", &[])),
        ("CPU model".into(), cpu),
        ("memory".into(), mem),
        // Other work on the machine shows up as noise: the A/A rows quantify it.
        (
            "load average at start".into(),
            fs::read_to_string("/proc/loadavg").map_or_else(|_| "unknown".into(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        ),
        ("iperf3".into(), sh("iperf3", &["--version"])),
        ("iptables (baseline backend)".into(), sh("iptables-legacy", &["-V"])),
        ("nft".into(), sh("nft", &["-v"])),
    ]
}

fn fmt(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.3}"))
}

fn extra(r: &Row) -> String {
    let mut parts = Vec::new();
    if r.p99 {
        parts.push(format!("p99 {}", fmt(percentile(&r.samples, 99.0))));
    }
    if let Some(n) = &r.note {
        parts.push(n.clone());
    }
    parts.join("; ")
}

/// The plain-text table printed at the end.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(10).max(11);
    let _ = writeln!(
        out,
        "{:<w$}  {:<12}  {:>10}  {:>10}  {:>10}  {:>4}  {:<9}  {:>8}  {:>8}  NOTE",
        "MEASUREMENT", "VARIANT", "MEDIAN", "MIN", "MAX", "RUNS", "UNIT", "xDIRECT", "xIPTABLES"
    );
    for r in rows {
        let min = r.samples.iter().copied().fold(f64::NAN, f64::min);
        let max = r.samples.iter().copied().fold(f64::NAN, f64::max);
        let _ = writeln!(
            out,
            "{:<w$}  {:<12}  {:>10}  {:>10}  {:>10}  {:>4}  {:<9}  {:>8}  {:>8}  {}",
            r.name,
            r.variant,
            fmt(r.median()),
            fmt(min),
            fmt(max),
            r.samples.len(),
            r.unit,
            fmt_ratio(r.ratio_to_direct),
            fmt_ratio(r.ratio_to_iptables),
            extra(r)
        );
    }
    out
}

fn markdown(rows: &[Row], timings: &[(String, Duration)], plan: &Plan, tools: &[(String, String)], failures: &[String], plots: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Sluice benchmark report\n");
    let _ = writeln!(
        md,
        "Run: `cargo xtask bench{}` ({} rounds of alternating runs through Services and {} for \
         pod-to-pod and DNS, iperf3 -t {}, rate runs of {} ms; {} head-to-head rounds, iperf3 -t {}, \
         rate runs of {} ms).\n",
        if plan.quick { " --quick" } else { "" },
        plan.seq_rounds,
        plan.rounds,
        plan.iperf_secs,
        plan.rate_ms,
        plan.h2h_rounds,
        plan.h2h_secs,
        plan.h2h_rate_ms
    );
    let _ = writeln!(md, "## Machine\n\n| | |\n| --- | --- |");
    for (k, v) in tools {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(md, "\n## Results\n");
    let _ = writeln!(
        md,
        "Median, min and max over the runs. `x direct` and `x iptables` are medians of per-round \
         ratios of back-to-back runs (throughput, connection rate) or ratios of medians (control \
         plane). Every round starts with `direct` and ends with `direct-aa`, a second `direct` run, \
         the other variants between them in rotating order; their `x direct` is taken against the \
         mean of the two direct runs bracketing them, and `direct-aa`'s own `x direct` (last run \
         over first) is the noise floor.\n"
    );
    let _ = writeln!(
        md,
        "Rows named `..., head to head` are the ratios to trust for small differences: each \
         variant runs at the same time as a `direct` run (clients on CPU 0, servers on CPU 1 for \
         both), so both see the same machine during those seconds, and the sample is its result \
         over direct's in that pair. What is left is which path costs fewer CPU cycles per byte or \
         per transaction when the CPUs are saturated. `direct-aa` there is direct against a second \
         direct run (its noise floor). It is a precise test that a path adds nothing, not a full \
         measure of what a costlier path loses alone: work done in softirq is partly paid by \
         whichever run is on the CPU (iptables' walk of 10,000 Services shows much less head to \
         head than alone), while a path that needs more CPU in total (an extra node hop) loses \
         more there than alone, where the hop runs on the otherwise idle CPU.\n"
    );
    md.push_str(&h2h_summary(rows));
    let _ = writeln!(
        md,
        "| measurement | variant | median | min | max | runs | unit | x direct | x iptables | notes |\n\
         | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"
    );
    for r in rows {
        let min = r.samples.iter().copied().fold(f64::NAN, f64::min);
        let max = r.samples.iter().copied().fold(f64::NAN, f64::max);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.variant,
            fmt(r.median()),
            fmt(min),
            fmt(max),
            r.samples.len(),
            r.unit,
            fmt_ratio(r.ratio_to_direct),
            fmt_ratio(r.ratio_to_iptables),
            extra(r)
        );
    }
    if !plots.is_empty() {
        let _ = writeln!(md, "\n## Plots\n");
        for p in plots {
            let _ = writeln!(md, "![{p}]({p})");
        }
    }
    let _ = writeln!(md, "\n## Method\n");
    md.push_str(
        "- Every variant has its own two-node cluster of network namespaces on one underlay bridge \
         (host-gw static routes between the nodes' pod /24s): `direct` (no translation, clients use \
         the pod IP), `sluice` (sluice-proxy attached to node a's cgroup, where the client pod's \
         processes run; socket-level load balancing), `iptables` (kube-proxy's iptables-mode ruleset \
         loaded with `iptables-legacy-restore` in the node netns: iptables-nft 1.8.9 took over ten \
         minutes to restore the 10,000-Service ruleset here, legacy about ten seconds), `nftables` (kube-proxy's nftables-mode \
         ruleset loaded with `nft -f`). No variant ever sees another's rules or programs.\n\
         - Clients run on CPU 0 (`taskset -c 0`), servers on CPU 1.\n\
         - Throughput: iperf3 from a pod on node a to a ClusterIP whose one endpoint is on node a \
         (same node) or node b (cross node); and from an outside client (203.0.113.10) to node a's \
         address and a NodePort whose endpoint is on node b (sluice at tc on the nodes' eth0, \
         kube-proxy's NodePort rules with masquerade for the netfilter variants; `direct` is the \
         client routed to the pod IP via node b).\n\
         - Connection rate: `sluice-probe rate` (TCP: connect, one request/response, close; UDP: one \
         request/response on a fresh socket) to a Service with 10 real endpoint pods, while 10, \
         1,000 or 10,000 Services of 10 endpoints each are programmed (the measured Service sits in \
         the middle of kube-proxy's KUBE-SERVICES chain, its expected position). Conntrack is \
         flushed before each run.\n\
         - Control plane: see the notes per row; sluice's end-to-end figure from files includes the \
         standalone manifest source (inotify, 2 ms debounce, a stat of every file, YAML parsing of \
         the changed file of 100 Services); the figure from the API is the kube-rs watch path against \
         the test API server.\n",
    );
    let _ = writeln!(md, "\n## Time taken\n");
    for (g, t) in timings {
        let _ = writeln!(md, "- {g}: {:.0} s", t.as_secs_f64());
    }
    if !failures.is_empty() {
        let _ = writeln!(md, "\n## Failures\n");
        for f in failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    md
}

/// Writes report.json, report.md and the plots into `out`.
/// A compact table of the head-to-head medians (min-max), one line per measurement.
fn h2h_summary(rows: &[Row]) -> String {
    let h2h: Vec<&Row> = rows.iter().filter(|r| r.group == super::throughput::H2H_GROUP).collect();
    if h2h.is_empty() {
        return String::new();
    }
    let variants = ["sluice", "iptables", "nftables", "direct-aa"];
    let mut md = String::from("| head to head, x direct (median, min-max) | sluice | iptables | nftables | A/A |\n| --- | ---: | ---: | ---: | ---: |\n");
    for name in names(&h2h) {
        let cells: Vec<String> = variants
            .iter()
            .map(|v| {
                h2h.iter().find(|r| r.name == name && r.variant == *v && !r.samples.is_empty()).map_or("-".into(), |r| {
                    format!("{:.3} ({:.3}-{:.3})", r.median(), min(&r.samples), max(&r.samples))
                })
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", name.trim_end_matches(", head to head"), cells.join(" | "));
    }
    md.push('\n');
    md
}

pub fn write(
    out: &Path,
    rows: &[Row],
    timings: &[(String, Duration)],
    plan: &Plan,
    tools: &[(String, String)],
    failures: &[String],
) -> anyhow::Result<()> {
    let json: Vec<serde_json::Value> = rows.iter().map(Row::to_json).collect();
    fs::write(out.join("report.json"), serde_json::to_string_pretty(&json)? + "\n")?;
    let plots = match plots(out, rows) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sluice-bench: plots not drawn: {e}");
            Vec::new()
        }
    };
    fs::write(out.join("report.md"), markdown(rows, timings, plan, tools, failures, &plots))?;
    Ok(())
}

// ---------------------------------------------------------------- plots

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// plotters draws text with ab_glyph from a font registered at run time (no
/// fontconfig needed); `cargo xtask setup` installs fonts-dejavu-core.
fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = FONT_CANDIDATES
            .iter()
            .find_map(|p| fs::read(p).ok())
            .ok_or_else(|| format!("no TrueType font found (looked for {})", FONT_CANDIDATES.join(", ")))?;
        let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, leaked)
            .map_err(|_| "the font could not be parsed".to_string())
    })
    .clone()
}

fn color(variant: &str) -> RGBColor {
    match variant {
        "direct" => RGBColor(120, 120, 120),
        "direct-aa" => RGBColor(190, 190, 190),
        "sluice" => RGBColor(31, 119, 180),
        "sluice-agent" => RGBColor(120, 180, 230),
        "iptables" => RGBColor(214, 39, 40),
        "nftables" => RGBColor(255, 127, 14),
        _ => RGBColor(0, 0, 0),
    }
}

fn plots(out: &Path, rows: &[Row]) -> Result<Vec<String>, Box<dyn Error>> {
    register_font()?;
    let mut made = Vec::new();
    let variants = ["direct", "sluice", "iptables", "nftables"];

    let tput: Vec<&Row> = rows.iter().filter(|r| r.group == "throughput").collect();
    if !tput.is_empty() {
        let cats = names(&tput);
        let series = series(&tput, &cats, &variants);
        grouped_bars(&out.join("throughput.png"), "iperf3 through a ClusterIP or NodePort (Gbit/s)", &cats, &series, false)?;
        made.push("throughput.png".into());
    }
    for proto in ["TCP", "UDP"] {
        let rate: Vec<&Row> = rows
            .iter()
            .filter(|r| r.group == "connrate" && r.name.starts_with(proto))
            .collect();
        if !rate.is_empty() {
            let cats = names(&rate);
            let series = series(&rate, &cats, &variants);
            let file = format!("connrate-{}.png", proto.to_lowercase());
            let title = if proto == "TCP" {
                "new TCP connections per second (connect, request/response, close)"
            } else {
                "UDP request/responses per second (fresh socket each)"
            };
            lines(&out.join(&file), title, &cats, &series)?;
            made.push(file);
        }
    }
    let h2h: Vec<&Row> = rows.iter().filter(|r| r.group == super::throughput::H2H_GROUP).collect();
    if !h2h.is_empty() {
        let cats = names(&h2h);
        let series = series(&h2h, &cats, &["sluice", "iptables", "nftables", "direct-aa"]);
        grouped_bars(
            &out.join("head-to-head.png"),
            "head to head: each run at the same time as direct, its result over direct's (1 = as cheap as no translation)",
            &cats,
            &series,
            false,
        )?;
        made.push("head-to-head.png".into());
    }
    let ctl: Vec<&Row> = rows
        .iter()
        .filter(|r| r.group == "control" && r.unit == "ms")
        .collect();
    if !ctl.is_empty() {
        let cats = names(&ctl);
        let series = series(&ctl, &cats, &["sluice", "sluice-agent", "iptables", "nftables"]);
        grouped_bars(&out.join("control.png"), "control plane (ms, log scale, lower is better)", &cats, &series, true)?;
        made.push("control.png".into());
    }
    Ok(made)
}

fn names(rows: &[&Row]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in rows {
        if !v.contains(&r.name) {
            v.push(r.name.clone());
        }
    }
    v
}

fn series(rows: &[&Row], cats: &[String], variants: &[&str]) -> Vec<(String, Vec<f64>)> {
    variants
        .iter()
        .map(|v| {
            let vals = cats
                .iter()
                .map(|c| {
                    rows.iter()
                        .find(|r| &r.name == c && r.variant == *v)
                        .map_or(f64::NAN, |r| median(&r.samples))
                })
                .collect();
            ((*v).to_string(), vals)
        })
        .collect()
}

fn grouped_bars(path: &Path, title: &str, cats: &[String], series: &[(String, Vec<f64>)], log: bool) -> Result<(), Box<dyn Error>> {
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let vals: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|x| x.is_finite() && *x > 0.0).collect();
    let max = vals.iter().copied().fold(1e-9, f64::max);
    let min = vals.iter().copied().fold(f64::INFINITY, f64::min).min(max);
    #[expect(clippy::cast_precision_loss, reason = "few categories")]
    let ncat = cats.len() as f64;
    let nser = series.len().max(1);
    let width = 0.8 / nser as f64;
    let label_cats = cats.to_vec();
    let x_fmt = move |x: &f64| {
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "category index")]
        let i = x.floor() as usize;
        if (x - x.floor() - 0.5).abs() < 1e-6 {
            label_cats.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    if log {
        let bottom = (min / 2.0).max(1e-3);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..ncat, (bottom..max * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(cats.len() * 2 + 1)
            .x_label_formatter(&x_fmt)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (s, (name, v)) in series.iter().enumerate() {
            let c = color(name);
            #[expect(clippy::cast_precision_loss, reason = "small")]
            let bars = v.iter().enumerate().filter(|(_, y)| y.is_finite() && **y > 0.0).map(move |(i, y)| {
                let x0 = i as f64 + 0.1 + width * s as f64;
                Rectangle::new([(x0, bottom), (x0 + width * 0.9, *y)], c.filled())
            });
            chart.draw_series(bars)?.label(name.clone()).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 14)).draw()?;
    } else {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..ncat, 0f64..max * 1.15)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(cats.len() * 2 + 1)
            .x_label_formatter(&x_fmt)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (s, (name, v)) in series.iter().enumerate() {
            let c = color(name);
            #[expect(clippy::cast_precision_loss, reason = "small")]
            let bars = v.iter().enumerate().filter(|(_, y)| y.is_finite()).map(move |(i, y)| {
                let x0 = i as f64 + 0.1 + width * s as f64;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, *y)], c.filled())
            });
            chart.draw_series(bars)?.label(name.clone()).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 14)).draw()?;
    }
    root.present()?;
    Ok(())
}

fn lines(path: &Path, title: &str, cats: &[String], series: &[(String, Vec<f64>)]) -> Result<(), Box<dyn Error>> {
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|x| x.is_finite())
        .fold(1e-9, f64::max);
    #[expect(clippy::cast_precision_loss, reason = "few categories")]
    let n = cats.len() as f64;
    let label_cats: Vec<String> = cats
        .iter()
        .map(|c| c.split(", ").nth(1).unwrap_or(c).to_string())
        .collect();
    let x_fmt = move |x: &f64| {
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "category index")]
        let i = x.round() as usize;
        if (x - x.round()).abs() < 1e-6 {
            label_cats.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.3f64..(n - 0.7), 0f64..max * 1.15)?;
    chart
        .configure_mesh()
        .x_labels(cats.len())
        .x_label_formatter(&x_fmt)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (name, v) in series {
        let c = color(name);
        #[expect(clippy::cast_precision_loss, reason = "small")]
        let pts: Vec<(f64, f64)> = v.iter().enumerate().filter(|(_, y)| y.is_finite()).map(|(i, y)| (i as f64, *y)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(3)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 5, c.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 14)).draw()?;
    root.present()?;
    Ok(())
}
