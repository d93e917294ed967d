//! Hooks for the measurements still being built: CNI ADD latency (against
//! the reference bridge + host-local plugins). Each reports "skipped" with
//! the reason until it is wired.

use super::stats::Row;
use super::sibling_bin;

fn skipped(group: &'static str, name: &str, unit: &str, bin: &str) -> Vec<Row> {
    let note = if sibling_bin(bin).is_some() {
        format!("skipped: {bin} is built but this measurement is not wired yet")
    } else {
        format!("skipped: not built ({bin} not found next to sluice-bench)")
    };
    println!("  {name}: {note}");
    vec![Row::new(group, name, "sluice", unit, Vec::new()).with_note(note)]
}

/// CNI ADD latency: sluice-cni against bridge + host-local. Not wired yet.
pub fn cni() -> Vec<Row> {
    skipped("cni", "CNI ADD latency", "ms", "sluice-cni")
}
