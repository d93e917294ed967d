//! GC: releases every address and removes every host veth of this network
//! whose attachment the runtime no longer lists.
//!
//! Only this network's veths: those in its device group ([`network_mark`]),
//! and, among veths made before the mark existed (group 0), those whose
//! attachment this network's store holds. Another network's veths are left
//! alone even though they share the `sl` prefix.

use std::collections::BTreeSet;

use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use tracing::{info, warn};

use super::delegate::exec_ipam;
use super::{host_veth_name, internal, is_host_veth_name, network_mark};
use crate::ipam::Store;
use crate::nl::{self, Netlink};
use crate::spec::{Code, Env, Error, NetConf, Result};

pub(super) fn gc(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<()> {
    let valid = conf.gc_valid().ok_or_else(|| {
        Error::new(Code::InvalidConfig, "invalid network configuration", "GC needs cni.dev/valid-attachments")
    })?;
    // Host veth names of the attachments this network's store knows.
    let mut stored = BTreeSet::new();
    if conf.delegated_ipam().is_some() {
        // Older IPAM plugins do not know GC: their leaks are theirs to report.
        if let Err(e) = exec_ipam(env, conf, "GC", stdin) {
            warn!(error = %e, "delegated ipam GC failed");
        }
    } else {
        let store = Store::new(conf.data_dir(), &conf.name);
        if store.dir().exists() {
            let mut locked = store.lock()?;
            stored.extend(locked.state.allocations.values().map(|a| host_veth_name(&a.container_id, &a.ifname)));
            let freed = locked.state.gc(valid);
            if !freed.is_empty() {
                locked.commit()?;
                info!(?freed, "GC released addresses");
            }
        }
    }
    let keep: BTreeSet<String> = valid.iter().map(|a| host_veth_name(&a.container_id, &a.ifname)).collect();
    let mark = network_mark(&conf.name);
    let mut host = Netlink::new().map_err(|e| internal(&e))?;
    for link in host.links().map_err(|e| internal(&e))? {
        let Some(name) = nl::link_name(&link) else { continue };
        if stale(&link, name, &keep, mark, &stored) {
            info!(link = name, "GC removes stale pod veth");
            host.link_del(link.header.index).map_err(|e| internal(&e))?;
        }
    }
    Ok(())
}

/// Whether GC of the network marked `mark` removes this link.
fn stale(link: &LinkMessage, name: &str, keep: &BTreeSet<String>, mark: u32, stored: &BTreeSet<String>) -> bool {
    if !is_host_veth_name(name) || !is_veth(link) || keep.contains(name) {
        return false;
    }
    match group(link) {
        0 => stored.contains(name),
        g => g == mark,
    }
}

fn group(l: &LinkMessage) -> u32 {
    l.attributes.iter().find_map(|a| if let LinkAttribute::Group(g) = a { Some(*g) } else { None }).unwrap_or(0)
}

fn is_veth(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(name: &str, group: u32) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l.attributes.push(LinkAttribute::Group(group));
        l.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]));
        l
    }

    #[test]
    fn gc_removes_only_unlisted_veths_of_its_own_network() {
        let (ours, theirs) = (network_mark("net-a"), network_mark("net-b"));
        let a1 = host_veth_name("a1", "eth0");
        let a2 = host_veth_name("a2", "eth0");
        let legacy_ours = host_veth_name("old-a", "eth0");
        let legacy_theirs = host_veth_name("old-b", "eth0");
        let keep = BTreeSet::from([a1.clone()]);
        let stored = BTreeSet::from([a1.clone(), a2.clone(), legacy_ours.clone()]);
        let gc = |l: &LinkMessage, name: &str| stale(l, name, &keep, ours, &stored);
        assert!(!gc(&veth(&a1, ours), &a1), "listed");
        assert!(gc(&veth(&a2, ours), &a2), "ours, unlisted");
        assert!(!gc(&veth(&a2, theirs), &a2), "another network's veth, even under a name our store knows");
        assert!(gc(&veth(&legacy_ours, 0), &legacy_ours), "unmarked, but our store holds its attachment");
        assert!(!gc(&veth(&legacy_theirs, 0), &legacy_theirs), "unmarked and unknown to our store");
        let mut not_veth = veth(&a2, ours);
        not_veth.attributes.pop();
        assert!(!gc(&not_veth, &a2), "not a veth");
        assert!(!gc(&veth("slave0", ours), "slave0"), "not one of our names");
    }
}
