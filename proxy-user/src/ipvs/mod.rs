//! The IPVS dataplane: kube-proxy's ipvs mode behind the same
//! [`Dataplane`] interface as eBPF, for clusters that cannot load eBPF.
//!
//! [`state`] is the pure layer (frontends -> virtual services, real servers,
//! addresses, nft set elements, kernel operations); this module is the thin
//! edge that runs those operations: IPVS over generic netlink ([`genl`]),
//! the `sluice-ipvs0` dummy interface ([`link`]), a table of our own in
//! nftables for masquerading, and the sysctls kube-proxy sets. Everything it
//! touches lives in the network namespace it runs in.

pub mod agent;
pub mod genl;
pub mod link;
pub mod state;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use sluice_node::netlink::NlError;
use tracing::{debug, info, warn};

use self::{
    genl::{Dest, GenlError, IpvsSocket, ServiceId},
    link::{Rtnl, DUMMY},
    state::{Held, NftDelta, Op, Settings},
};
use crate::{
    dataplane::Dataplane,
    plan::{Diff, Programmed},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ipvs(#[from] GenlError),
    #[error("{0}")]
    Netlink(#[from] NlError),
    #[error("{op}: {source}")]
    Op {
        op: String,
        #[source]
        source: GenlError,
    },
    #[error("setting sysctl {name}: {source}")]
    Sysctl { name: String, source: std::io::Error },
    #[error("running nft: {0}")]
    Nft(String),
}

/// The sysctls kube-proxy's ipvs mode sets (in this network namespace).
/// `conn_reuse_mode` is set to 0 only before 5.9, where reusing a port
/// otherwise stalls connections for a second; later kernels fixed it and
/// kube-proxy leaves them alone.
pub fn sysctls(kernel: (u32, u32)) -> Vec<(String, &'static str)> {
    let mut v = vec![
        ("net/ipv4/ip_forward".to_owned(), "1"),
        // Keep conntrack entries for IPVS connections so nftables can masquerade them.
        ("net/ipv4/vs/conntrack".to_owned(), "1"),
        // A deleted real server's connections end on their next packet.
        ("net/ipv4/vs/expire_nodest_conn".to_owned(), "1"),
        // A weight-0 real server's persistence templates expire.
        ("net/ipv4/vs/expire_quiescent_template".to_owned(), "1"),
        // Never answer ARP for service addresses on the dummy interface.
        (format!("net/ipv4/conf/{DUMMY}/arp_ignore"), "1"),
        (format!("net/ipv4/conf/{DUMMY}/arp_announce"), "2"),
    ];
    if kernel < (5, 9) {
        v.push(("net/ipv4/vs/conn_reuse_mode".to_owned(), "0"));
    }
    v
}

fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn set_sysctls() -> Result<(), Error> {
    for (name, value) in sysctls(kernel_version()) {
        let path = format!("/proc/sys/{name}");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current.trim() == value {
            continue;
        }
        std::fs::write(&path, value).map_err(|source| Error::Sysctl { name: name.replace('/', "."), source })?;
    }
    Ok(())
}

/// Runs an nft script as one transaction.
fn nft(script: &str) -> Result<(), Error> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("starting nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| Error::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::Nft(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(Error::Nft(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// The IPVS dataplane of the calling thread's network namespace.
pub struct IpvsDataplane {
    ipvs: IpvsSocket,
    rtnl: Rtnl,
    dummy: u32,
    settings: Settings,
    /// The planner's view, as applied (ids as the planner gave them).
    mirror: Programmed,
    /// Our virtual services as the kernel holds them.
    held: BTreeMap<ServiceId, Held>,
    /// Addresses bound on the dummy interface.
    bound: BTreeSet<IpAddr>,
}

impl IpvsDataplane {
    /// Checks the kernel has IPVS, sets the sysctls, creates the dummy
    /// interface, and adopts the virtual services already there.
    pub fn open(settings: Settings) -> Result<Self, Error> {
        let ipvs = IpvsSocket::open()?;
        let mut rtnl = Rtnl::open()?;
        let fresh = rtnl.link_index(DUMMY)?.is_none();
        let dummy = rtnl.ensure_dummy()?;
        let mut dp = Self {
            ipvs,
            rtnl,
            dummy,
            settings,
            mirror: Programmed::default(),
            held: BTreeMap::new(),
            bound: BTreeSet::new(),
        };
        if let Err(e) = set_sysctls().and_then(|()| dp.resync()) {
            // Leave nothing half made on a node we started on.
            if fresh {
                let _ = dp.rtnl.delete_dummy();
            }
            return Err(e);
        }
        Ok(dp)
    }

    /// Re-reads the kernel: our virtual services, the dummy's addresses; the
    /// planner's view becomes what they say; the nft table is rebuilt.
    fn resync(&mut self) -> Result<(), Error> {
        self.bound = self.rtnl.addrs(Some(self.dummy))?;
        let mut held = BTreeMap::new();
        for s in self.ipvs.services()? {
            if !state::is_ours(&s.id, &self.bound, &self.settings) {
                continue;
            }
            let dests = self.ipvs.dests(&s.id)?.into_iter().map(|d| ((d.addr, d.port), d)).collect();
            let external = !self.bound.contains(&s.id.addr);
            held.insert(s.id, Held { service: s, dests, external });
        }
        self.held = held;
        self.mirror = state::adopt(&self.held, &self.bound, &self.settings);
        nft(&state::nft_table(&self.held, &self.mirror.backends, &self.settings))?;
        Ok(())
    }

    fn exec(&mut self, op: &Op) -> Result<(), Error> {
        debug!(%op, "ipvs");
        let result = match op {
            Op::AddService(s) => match self.ipvs.command("add", genl::new_service(s)) {
                Err(e) if e.errno() == Some(libc::EEXIST) => self.ipvs.command("update", genl::set_service(s)),
                r => r,
            },
            Op::UpdateService(s) => self.ipvs.command("update", genl::set_service(s)),
            Op::DelService(id) => match self.ipvs.command("delete", genl::del_service(id)) {
                Err(e) if e.errno() == Some(libc::ESRCH) || e.errno() == Some(libc::ENOENT) => Ok(()),
                r => r,
            },
            Op::AddDest(id, d) => match self.ipvs.command("add", genl::new_dest(id, d)) {
                Err(e) if e.errno() == Some(libc::EEXIST) => self.ipvs.command("set", genl::set_dest(id, d)),
                r => r,
            },
            Op::SetDest(id, d) => self.ipvs.command("set", genl::set_dest(id, d)),
            Op::DelDest(id, d) => match self.ipvs.command("delete", genl::del_dest(id, d)) {
                Err(e) if e.errno() == Some(libc::ENOENT) || e.errno() == Some(libc::ESRCH) => Ok(()),
                r => r,
            },
        };
        result.map_err(|source| Error::Op { op: op.to_string(), source })
    }

    fn apply_inner(&mut self, diff: &Diff) -> Result<(), Error> {
        state::apply_to(&mut self.mirror, diff);
        let mut delta = NftDelta::default();
        let mut addrs = BTreeSet::new();
        for id in state::touched(diff) {
            let want = state::desired_service(&self.mirror, &id, &self.settings);
            let before = self.held.get(&id).map(|h| h.external);
            let after = want.as_ref().map(|w| w.external);
            // The address first, so the service answers from its first packet.
            if want.is_some() && !self.settings.node_ips.contains(&id.addr) && !self.bound.contains(&id.addr) {
                self.rtnl.add_addr(self.dummy, id.addr)?;
                self.bound.insert(id.addr);
            }
            for op in state::service_ops(self.held.get(&id), want.as_ref()) {
                self.exec(&op)?;
                state::record(&mut self.held, &op, after.unwrap_or(false));
            }
            if let (Some(h), Some(ext)) = (self.held.get_mut(&id), after) {
                h.external = ext;
            }
            state::vs_nft(&mut delta, &id, before, after);
            addrs.insert(id.addr);
        }
        for addr in addrs {
            if self.bound.contains(&addr) && !state::wants_binding(&self.held, addr, &self.settings) {
                self.rtnl.del_addr(self.dummy, addr)?;
                self.bound.remove(&addr);
            }
        }
        state::backend_nft(&mut delta, diff);
        if !delta.lines.is_empty() {
            if let Err(e) = nft(&delta.script()) {
                warn!(error = %e, "updating the nft sets failed; replacing the table");
                nft(&state::nft_table(&self.held, &self.mirror.backends, &self.settings))?;
            }
        }
        Ok(())
    }

    /// Deletes draining real servers whose connections are gone (kube-proxy's
    /// graceful termination). Returns how many went.
    pub fn gc(&mut self) -> Result<usize, Error> {
        let draining: Vec<ServiceId> = self
            .held
            .iter()
            .filter(|(_, h)| h.dests.values().any(|d| d.weight == 0))
            .map(|(id, _)| *id)
            .collect();
        let mut removed = 0;
        for id in draining {
            let fresh = self.ipvs.dests(&id)?;
            let want = state::desired_service(&self.mirror, &id, &self.settings);
            for op in state::drained(&id, &fresh, want.as_ref()) {
                self.exec(&op)?;
                state::record(&mut self.held, &op, false);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Number of virtual services held.
    pub fn services(&self) -> usize {
        self.held.len()
    }
}

impl Dataplane for IpvsDataplane {
    type Error = Error;

    fn apply(&mut self, diff: &Diff) -> Result<(), Error> {
        let result = self.apply_inner(diff);
        if result.is_err() {
            // Whatever part of the diff the kernel holds, the next plan starts from it.
            if let Err(e) = self.resync() {
                warn!(error = %e, "re-reading IPVS state after a failed apply failed");
            }
        }
        result
    }

    fn programmed(&self) -> Result<Programmed, Error> {
        Ok(self.mirror.clone())
    }
}

/// One virtual service as `sluice-proxy status --dataplane ipvs` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusRow {
    pub frontend: String,
    pub scheduler: String,
    /// Persistence (ClientIP affinity) timeout, when set.
    pub persistence_secs: Option<u32>,
    /// Real servers taking new connections.
    pub backends: Vec<String>,
    /// Real servers with weight 0, draining.
    pub draining: Vec<String>,
    pub active_conns: u32,
    pub inactive_conns: u32,
    /// Bound on the dummy interface (a ClusterIP, ExternalIP or LB IP).
    pub bound: bool,
}

/// Every virtual service of this network namespace with its real servers.
pub fn status() -> Result<Vec<StatusRow>, Error> {
    let mut ipvs = IpvsSocket::open()?;
    let mut rtnl = Rtnl::open()?;
    let bound = match rtnl.link_index(DUMMY)? {
        Some(i) => rtnl.addrs(Some(i))?,
        None => BTreeSet::new(),
    };
    let mut rows = Vec::new();
    let mut services = ipvs.services()?;
    services.sort_by_key(|s| s.id);
    for s in services {
        let dests = ipvs.dests(&s.id)?;
        let list = |f: &dyn Fn(&Dest) -> bool| {
            let mut v: Vec<String> = dests.iter().filter(|d| f(d)).map(state::show_rs).collect();
            v.sort();
            v
        };
        rows.push(StatusRow {
            frontend: state::show(&s.id),
            scheduler: s.scheduler.clone(),
            persistence_secs: (s.flags & genl::IP_VS_SVC_F_PERSISTENT != 0).then_some(s.timeout),
            backends: list(&|d| d.weight > 0),
            draining: list(&|d| d.weight == 0),
            active_conns: dests.iter().map(|d| d.active_conns).sum(),
            inactive_conns: dests.iter().map(|d| d.inactive_conns).sum(),
            bound: bound.contains(&s.id.addr),
        });
    }
    Ok(rows)
}

/// A text table of [`status`] rows.
pub fn status_table(rows: &[StatusRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("FRONTEND                                  SCHED  PERSIST  ACTIVE  INACT  BACKENDS\n");
    for r in rows {
        let mut backends = r.backends.join(",");
        if !r.draining.is_empty() {
            let _ = write!(backends, " draining:{}", r.draining.join(","));
        }
        let _ = writeln!(
            out,
            "{:<41} {:<6} {:<8} {:<7} {:<6} {}",
            r.frontend,
            r.scheduler,
            r.persistence_secs.map_or("-".to_owned(), |t| format!("{t}s")),
            r.active_conns,
            r.inactive_conns,
            if backends.is_empty() { "(none: refuses)".to_owned() } else { backends }
        );
    }
    out
}

/// Removes what the IPVS dataplane made in this network namespace: virtual
/// services on the dummy interface's addresses or on the node's own
/// addresses (NodePorts), the dummy interface, and the nft table. Returns
/// what it removed.
pub fn cleanup() -> Result<Vec<String>, Error> {
    let mut removed = Vec::new();
    let mut rtnl = Rtnl::open()?;
    let local = rtnl.addrs(None)?;
    match IpvsSocket::open() {
        Ok(mut ipvs) => {
            for s in ipvs.services()? {
                if local.contains(&s.id.addr) && state::is_ours(&s.id, &local, &Settings::default()) {
                    match ipvs.command("delete", genl::del_service(&s.id)) {
                        Ok(()) => removed.push(format!("virtual service {}", state::show(&s.id))),
                        Err(e) if e.errno() == Some(libc::ESRCH) => {}
                        Err(source) => {
                            return Err(Error::Op { op: format!("delete virtual service {}", state::show(&s.id)), source })
                        }
                    }
                }
            }
        }
        // Nothing to remove from a kernel without IPVS.
        Err(GenlError::NoIpvs) => {}
        Err(e) => return Err(e.into()),
    }
    if rtnl.delete_dummy()? {
        removed.push(format!("link {DUMMY}"));
    }
    if nft(&format!("table ip {t} {{}}\ndelete table ip {t}\n", t = state::NFT_TABLE)).is_ok() {
        removed.push(format!("nft table ip {}", state::NFT_TABLE));
    }
    info!(removed = removed.len(), "ipvs cleanup");
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_are_kube_proxys_and_conn_reuse_mode_only_before_5_9() {
        let new: Vec<String> = sysctls((6, 1)).into_iter().map(|(n, v)| format!("{n}={v}")).collect();
        for want in [
            "net/ipv4/ip_forward=1",
            "net/ipv4/vs/conntrack=1",
            "net/ipv4/vs/expire_nodest_conn=1",
            "net/ipv4/vs/expire_quiescent_template=1",
            "net/ipv4/conf/sluice-ipvs0/arp_ignore=1",
            "net/ipv4/conf/sluice-ipvs0/arp_announce=2",
        ] {
            assert!(new.contains(&want.to_owned()), "{want} missing from {new:?}");
        }
        assert!(!new.iter().any(|s| s.contains("conn_reuse_mode")), "{new:?}");
        assert!(sysctls((5, 4)).iter().any(|(n, v)| n == "net/ipv4/vs/conn_reuse_mode" && *v == "0"));
    }

    #[test]
    fn the_missing_kernel_feature_is_named() {
        let msg = Error::from(GenlError::NoIpvs).to_string();
        assert!(msg.contains("CONFIG_IP_VS") && msg.contains("ip_vs"), "{msg}");
    }
}
