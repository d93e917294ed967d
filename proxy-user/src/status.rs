//! `sluice-proxy status`: what is programmed, read from the pinned maps.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{dataplane::Dataplane as _, ebpf::{self, EbpfDataplane}, plan::Programmed};

#[derive(Debug, Serialize)]
pub struct FrontendStatus {
    pub frontend: String,
    pub revnat_id: u32,
    pub affinity_timeout: Option<u32>,
    pub backends: Vec<String>,
}

pub fn read(bpffs: &Path) -> Result<Vec<FrontendStatus>, ebpf::Error> {
    let dp = EbpfDataplane::open_pinned(bpffs)?;
    Ok(describe(&dp.programmed()?))
}

pub fn describe(p: &Programmed) -> Vec<FrontendStatus> {
    p.frontends
        .iter()
        .map(|(k, f)| FrontendStatus {
            frontend: k.to_string(),
            revnat_id: f.revnat_id,
            affinity_timeout: f.affinity_timeout,
            backends: f
                .slots
                .iter()
                .map(|id| p.backends.get(id).map_or_else(|| format!("#{id}?"), ToString::to_string))
                .collect(),
        })
        .collect()
}

/// A human table: one line per frontend.
pub fn table(rows: &[FrontendStatus]) -> String {
    let mut out = String::new();
    let width = rows.iter().map(|r| r.frontend.len()).max().unwrap_or(8).max(8);
    let _ = writeln!(out, "{:<width$}  {:>6}  {:>8}  BACKENDS", "FRONTEND", "REVNAT", "AFFINITY");
    let mut backends: BTreeMap<&str, ()> = BTreeMap::new();
    for r in rows {
        let aff = r.affinity_timeout.map_or_else(|| "-".to_owned(), |t| format!("{t}s"));
        let list = if r.backends.is_empty() { "(none: refused)".to_owned() } else { r.backends.join(" ") };
        let _ = writeln!(out, "{:<width$}  {:>6}  {:>8}  {list}", r.frontend, r.revnat_id, aff);
        for b in &r.backends {
            backends.insert(b, ());
        }
    }
    let _ = writeln!(out, "{} frontends, {} distinct backends", rows.len(), backends.len());
    out
}
