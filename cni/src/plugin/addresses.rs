//! Addresses for an attachment: from the built-in IPAM store or a delegated
//! IPAM plugin, and given back by DEL or by a failed ADD.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;
use tracing::info;

use super::delegate::exec_ipam;
use super::node_subnet;
use crate::ipam::Store;
use crate::spec::{Attachment, Code, Env, Error, NetConf, Result};

/// What ADD got for the pod.
pub(super) struct Allocation {
    pub ips: Vec<IpNetwork>,
    pub dns: Value,
    /// What this call allocated, and a failed ADD gives back.
    pub made: Made,
}

pub(super) enum Made {
    /// Built-in IPAM: the addresses new to the store (an attachment that
    /// already held addresses, e.g. a retried ADD after a crash, gets them
    /// again, and they are not this call's to release).
    Builtin(Vec<IpAddr>),
    /// A delegated plugin's ADD succeeded: it allocated (host-local refuses
    /// a duplicate allocation), so its DEL undoes it.
    Delegated,
}

pub(super) fn allocate(env: &Env, conf: &NetConf, stdin: &[u8], owner: &Attachment) -> Result<Allocation> {
    if conf.delegated_ipam().is_some() {
        let r = exec_ipam(env, conf, "ADD", stdin)?.unwrap_or_else(|| unreachable!("ADD returns a result"));
        if r.ips.is_empty() {
            // It did allocate (nothing usable); give back whatever it holds.
            let _ = exec_ipam(env, conf, "DEL", stdin);
            return Err(Error::new(Code::Internal, "ipam plugin returned no address", ""));
        }
        return Ok(Allocation { ips: r.ips.iter().map(|c| c.address).collect(), dns: r.dns, made: Made::Delegated });
    }
    let ranges = if conf.pod_cidrs.is_empty() {
        match node_subnet(conf)? {
            Some(s) if !s.pod_cidrs.is_empty() => s.pod_cidrs,
            _ => {
                return Err(Error::new(
                    Code::TryAgainLater,
                    "this node's pod subnet is not published yet",
                    format!("{} does not exist; is the sluice-cni daemon running?", conf.subnet_file()),
                ))
            }
        }
    } else {
        conf.pod_cidrs.clone()
    };
    let store = Store::new(conf.data_dir(), &conf.name);
    let mut locked = store.lock()?;
    let held = locked.state.owned_by(owner);
    let ips = locked.state.allocate(&ranges, owner)?;
    let fresh: Vec<IpAddr> = ips.iter().map(IpNetwork::ip).filter(|ip| !held.contains(ip)).collect();
    if !fresh.is_empty() {
        locked.commit()?;
    }
    Ok(Allocation { ips, dns: Value::Null, made: Made::Builtin(fresh) })
}

/// Gives back what a failed ADD allocated, and nothing else.
pub(super) fn undo(env: &Env, conf: &NetConf, stdin: &[u8], owner: &Attachment, made: &Made) -> Result<()> {
    match made {
        Made::Delegated => exec_ipam(env, conf, "DEL", stdin).map(drop),
        Made::Builtin(fresh) if fresh.is_empty() => Ok(()),
        Made::Builtin(fresh) => {
            let store = Store::new(conf.data_dir(), &conf.name);
            let mut locked = store.lock()?;
            let freed = locked.state.release_addrs(owner, fresh);
            if !freed.is_empty() {
                locked.commit()?;
                info!(?freed, "released the addresses of a failed ADD");
            }
            Ok(())
        }
    }
}

/// DEL: every address of the attachment.
pub(super) fn release(env: &Env, conf: &NetConf, stdin: &[u8], owner: &Attachment) -> Result<()> {
    if conf.delegated_ipam().is_some() {
        return exec_ipam(env, conf, "DEL", stdin).map(drop);
    }
    let store = Store::new(conf.data_dir(), &conf.name);
    if !store.dir().exists() {
        return Ok(());
    }
    let mut locked = store.lock()?;
    if !locked.state.release(owner).is_empty() {
        locked.commit()?;
    }
    Ok(())
}
