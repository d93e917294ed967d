//! Medians, percentiles and the paired-ratio method of ENVIRONMENT.md
//! ("Measuring on a noisy 2-core VM").

use serde_json::{json, Value};

/// The second `direct` run of every round: the A/A noise floor.
pub const AA: &str = "direct-aa";

/// Median of the values (mean of the middle two for an even count); NaN for none.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// Nearest-rank percentile with linear interpolation; NaN for no values.
pub fn percentile(values: &[f64], pct: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    #[expect(clippy::cast_precision_loss, reason = "sample counts are small")]
    let rank = pct / 100.0 * (v.len() - 1) as f64;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "rank is in 0..len"
    )]
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - rank.floor())
}

pub fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::min)
}

pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

/// One row of the report: a measurement of one variant.
#[derive(Clone, Debug)]
pub struct Row {
    /// What was measured, e.g. "throughput same-node 1 stream".
    pub name: String,
    pub group: &'static str,
    pub variant: String,
    pub unit: String,
    pub samples: Vec<f64>,
    /// Median of per-round ratios to `direct` (same round), when paired.
    pub ratio_to_direct: Option<f64>,
    /// Median of per-round ratios to `iptables` (same round), when paired.
    pub ratio_to_iptables: Option<f64>,
    /// Whether a higher value is better (throughput, rates) or lower (latencies).
    pub higher_is_better: bool,
    /// Extra text (e.g. "skipped: not built").
    pub note: Option<String>,
    /// Also report this percentile (99 for latency distributions).
    pub p99: bool,
}

impl Row {
    pub fn new(group: &'static str, name: &str, variant: &str, unit: &str, samples: Vec<f64>) -> Row {
        Row {
            name: name.to_string(),
            group,
            variant: variant.to_string(),
            unit: unit.to_string(),
            samples,
            ratio_to_direct: None,
            ratio_to_iptables: None,
            higher_is_better: true,
            note: None,
            p99: false,
        }
    }

    pub fn lower_is_better(mut self) -> Row {
        self.higher_is_better = false;
        self
    }

    pub fn with_p99(mut self) -> Row {
        self.p99 = true;
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    pub fn median(&self) -> f64 {
        median(&self.samples)
    }

    pub fn to_json(&self) -> Value {
        let num = |x: f64| if x.is_finite() { json!(round(x)) } else { Value::Null };
        let opt = |x: Option<f64>| x.map_or(Value::Null, num);
        let mut v = json!({
            "name": self.name,
            "group": self.group,
            "variant": self.variant,
            "unit": self.unit,
            "median": num(self.median()),
            "min": num(min(&self.samples)),
            "max": num(max(&self.samples)),
            "runs": self.samples.len(),
            "ratio_to_direct": opt(self.ratio_to_direct),
            "ratio_to_iptables": opt(self.ratio_to_iptables),
            "higher_is_better": self.higher_is_better,
        });
        if self.p99 {
            v["p99"] = num(percentile(&self.samples, 99.0));
        }
        if let Some(n) = &self.note {
            v["note"] = json!(n);
        }
        v
    }
}

/// Rounds to 4 significant decimals for the report.
pub fn round(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    #[expect(clippy::cast_possible_truncation, reason = "exponent of an f64 fits")]
    let mag = x.abs().log10().floor() as i32;
    let scale = 10f64.powi(3 - mag);
    (x * scale).round() / scale
}

/// Rounds of alternating runs: `values[round][variant]`. Ratios are taken
/// within a round (back-to-back runs) and their median reported.
pub struct Rounds {
    pub variants: Vec<String>,
    pub values: Vec<Vec<f64>>,
}

impl Rounds {
    pub fn new(variants: &[&str]) -> Rounds {
        Rounds {
            variants: variants.iter().map(|s| (*s).to_string()).collect(),
            values: Vec::new(),
        }
    }

    pub fn samples(&self, variant: &str) -> Vec<f64> {
        let Some(i) = self.variants.iter().position(|v| v == variant) else {
            return Vec::new();
        };
        self.values.iter().map(|r| r[i]).collect()
    }

    /// Median over rounds of `a / b` (rounds where either failed are
    /// skipped). For `b` = `direct`, when the rounds also hold a second
    /// direct run (`direct-aa`, the A/A noise floor) and `a` is neither of
    /// them, `b` is the mean of the two: they bracket every other run of
    /// the round (see `throughput::schedule`).
    pub fn paired_ratio(&self, a: &str, b: &str) -> Option<f64> {
        let ia = self.variants.iter().position(|v| v == a)?;
        let ib = self.variants.iter().position(|v| v == b)?;
        let aa = (b == "direct" && a != AA).then(|| self.variants.iter().position(|v| v == AA)).flatten();
        let reference = |r: &[f64]| match aa {
            Some(i) if r[i].is_finite() && r[ib].is_finite() => (r[ib] + r[i]) / 2.0,
            _ => r[ib],
        };
        let ratios: Vec<f64> = self
            .values
            .iter()
            .filter(|r| r[ia].is_finite() && reference(r).is_finite() && reference(r) > 0.0)
            .map(|r| r[ia] / reference(r))
            .collect();
        (!ratios.is_empty()).then(|| median(&ratios))
    }

    /// One row per variant, with paired ratios to `direct` and `iptables`.
    pub fn rows(&self, group: &'static str, name: &str, unit: &str) -> Vec<Row> {
        self.variants
            .iter()
            .map(|v| {
                let mut row = Row::new(group, name, v, unit, self.samples(v));
                if v != "direct" {
                    row.ratio_to_direct = self.paired_ratio(v, "direct");
                }
                if v != "iptables" {
                    row.ratio_to_iptables = self.paired_ratio(v, "iptables");
                }
                row
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 100.0), 5.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.0), 1.0);
    }

    #[test]
    fn paired_ratios_are_per_round_medians() {
        let mut r = Rounds::new(&["direct", "sluice"]);
        r.values = vec![vec![10.0, 9.0], vec![20.0, 20.0], vec![5.0, 6.0]];
        // per-round ratios 0.9, 1.0, 1.2 -> median 1.0
        assert_eq!(r.paired_ratio("sluice", "direct"), Some(1.0));
    }

    #[test]
    fn direct_is_the_mean_of_both_direct_runs_except_for_the_aa_row() {
        let mut r = Rounds::new(&["direct", "sluice", "direct-aa"]);
        r.values = vec![vec![10.0, 9.0, 8.0], vec![10.0, 10.0, f64::NAN]];
        // round 1: 9 / mean(10, 8) = 1.0; round 2: 10 / 10 (no second run)
        assert_eq!(r.paired_ratio("sluice", "direct"), Some(1.0));
        assert_eq!(r.paired_ratio("direct-aa", "direct"), Some(0.8));
        assert_eq!(r.paired_ratio("sluice", "iptables"), None);
    }

    #[test]
    fn failed_rounds_are_skipped_in_ratios() {
        let mut r = Rounds::new(&["direct", "x"]);
        r.values = vec![vec![10.0, f64::NAN], vec![10.0, 5.0]];
        assert_eq!(r.paired_ratio("x", "direct"), Some(0.5));
    }
}
