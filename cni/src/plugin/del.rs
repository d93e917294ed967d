//! DEL: the host veth (its pod end and both sides' routes go with it) and
//! the addresses.
//!
//! Once the veth is gone the container has no network left, and DEL
//! succeeds: a store that cannot be read or written (corrupt, full disk)
//! costs a warning and an address that GC reclaims later, never a DEL the
//! runtime retries forever. A busy store is still "try again later" (11).

use tracing::{debug, info, warn};

use super::addresses::release;
use super::{attachment, host_veth_name, internal, lock_attachment};
use crate::nl::Netlink;
use crate::spec::{Code, Env, Error, NetConf, Result};

pub(super) fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<()> {
    env.require(&["CNI_CONTAINERID", "CNI_IFNAME"])?;
    let owner = attachment(env);
    // Waits for an ADD of the same attachment still under way. Without a
    // lock file (or one that cannot be opened) there is nothing to wait for.
    let _serialised = match lock_attachment(conf, &owner, false) {
        Ok(lock) => lock,
        Err(e) if e.code == Code::TryAgainLater as u32 => return Err(e),
        Err(e) => {
            debug!(error = %e, "DEL goes on without the attachment lock");
            None
        }
    };
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    let mut host = Netlink::new().map_err(|e| internal(&e))?;
    // Deleting the host end takes the pod end and both sides' routes with it.
    // A pod end whose host end is gone cannot exist (veths die in pairs).
    let removed = host.link_del_by_name(&host_veth).map_err(|e| internal(&e))?;
    if !removed {
        debug!(%host_veth, "no host veth to delete");
    }
    if let Err(e) = release(env, conf, stdin, &owner) {
        if !tolerated(conf, &e) {
            return Err(e);
        }
        warn!(
            container = %env.container_id, ifname = %env.ifname, error = %e,
            "the pod's network is gone but its addresses could not be released; GC reclaims them"
        );
    }
    info!(container = %env.container_id, ifname = %env.ifname, removed, "pod detached");
    Ok(())
}

/// Store failures DEL does not report: the built-in store unreadable or
/// unwritable. A delegated plugin's errors are its own and pass through.
fn tolerated(conf: &NetConf, e: &Error) -> bool {
    conf.delegated_ipam().is_none() && [Code::Io as u32, Code::Decode as u32].contains(&e.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_builtin_store_io_and_decode_failures_are_tolerated() {
        let builtin = NetConf::default();
        let e = |c: Code| Error::new(c, "x", "");
        assert!(tolerated(&builtin, &e(Code::Io)));
        assert!(tolerated(&builtin, &e(Code::Decode)));
        assert!(!tolerated(&builtin, &e(Code::TryAgainLater)), "a busy store is worth a retry");
        assert!(!tolerated(&builtin, &e(Code::Internal)));
        let delegated = NetConf { ipam: Some(serde_json::json!({"type": "host-local"})), ..NetConf::default() };
        assert!(!tolerated(&delegated, &e(Code::Io)));
    }
}
