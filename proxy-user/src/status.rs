//! `sluice-proxy status`: what is programmed, read from the pinned maps.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{dataplane::Dataplane as _, ebpf::{self, EbpfDataplane}, plan::Programmed};

/// Why `status` has nothing to show, each with what to check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no agent has pinned maps under {dir}: {why}. Is sluice-proxy running on this node? Check its pod \
         (`kubectl -n kube-system get pods -l k8s-app=sluice-proxy -o wide`) or its log; if it pins \
         elsewhere, give that directory with --bpffs"
    )]
    NoAgent { dir: std::path::PathBuf, why: String },
    #[error("reading the maps pinned under {dir} needs root (CAP_BPF): run `sudo sluice-proxy status`")]
    NotPermitted { dir: std::path::PathBuf },
    #[error("reading the maps pinned under {dir}: {cause}")]
    Ebpf { dir: std::path::PathBuf, cause: ebpf::Error },
}

/// Checks that an agent has pinned its maps under `bpffs` before opening
/// them, so the error says what is missing rather than which syscall failed.
fn check_pinned(bpffs: &Path) -> Result<(), Error> {
    let no_agent = |why: String| Error::NoAgent { dir: bpffs.to_owned(), why };
    match std::fs::metadata(bpffs) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Error::NotPermitted { dir: bpffs.to_owned() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(no_agent("the directory does not exist".into()))
        }
        Err(e) => return Err(no_agent(e.to_string())),
        Ok(m) if !m.is_dir() => return Err(no_agent("it is not a directory".into())),
        Ok(_) => {}
    }
    if !sluice_node::bpffs::is_bpffs(bpffs).unwrap_or(false) {
        return Err(no_agent(format!(
            "it is not on a bpf filesystem (is one mounted? `mount -t bpf bpf {}`)",
            sluice_node::bpffs::STANDARD_MOUNT
        )));
    }
    let map = bpffs.join(proxy_common::maps::SERVICES4);
    match std::fs::symlink_metadata(&map) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::NotPermitted { dir: bpffs.to_owned() }),
        Err(_) => Err(no_agent(format!("its services map {} is not pinned there", proxy_common::maps::SERVICES4))),
    }
}

#[derive(Debug, Serialize)]
pub struct FrontendStatus {
    pub frontend: String,
    pub revnat_id: u32,
    pub affinity_timeout: Option<u32>,
    pub backends: Vec<String>,
}

/// The frontends programmed under `bpffs`.
///
/// # Errors
/// [`Error`], naming what is missing and what to check.
pub fn read(bpffs: &Path) -> Result<Vec<FrontendStatus>, Error> {
    check_pinned(bpffs)?;
    let ebpf = |source| match source {
        ebpf::Error::Map { source: aya::maps::MapError::SyscallError(ref e), .. }
            if e.io_error.raw_os_error() == Some(libc::EPERM) =>
        {
            Error::NotPermitted { dir: bpffs.to_owned() }
        }
        cause => Error::Ebpf { dir: bpffs.to_owned(), cause },
    };
    let dp = EbpfDataplane::open_pinned(bpffs).map_err(ebpf)?;
    Ok(describe(&dp.programmed().map_err(ebpf)?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_without_an_agent_says_what_is_missing_and_what_to_check() {
        let missing = std::env::temp_dir().join(format!("sluice-status-none-{}", std::process::id()));
        let not_bpffs = std::env::temp_dir();
        for (dir, why) in [(&missing, "the directory does not exist"), (&not_bpffs, "it is not on a bpf filesystem")] {
            let text = read(dir).unwrap_err().to_string();
            assert!(text.starts_with(&format!("no agent has pinned maps under {}: {why}", dir.display())), "{text}");
            assert!(text.contains("Is sluice-proxy running on this node?") && text.contains("--bpffs"), "{text}");
            assert!(!text.contains("BPF_OBJ_GET"), "no syscall names: {text}");
        }
    }
}
