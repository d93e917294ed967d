//! CHECK: the pod interface, its MAC and addresses, the host veth and host
//! routes, and the IPAM store (or the delegated plugin's CHECK) agree with
//! `prevResult`.

use netlink_packet_route::AddressFamily;

use super::delegate::exec_ipam;
use super::{attachment, host_veth_name, internal, open_netns};
use crate::ipam::Store;
use crate::nl::{self, Netlink};
use crate::spec::{AddResult, Code, Env, Error, IpConfig, NetConf, Result};

pub(super) fn check(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<()> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])?;
    let prev = conf.prev_result.clone().ok_or_else(|| {
        Error::new(Code::InvalidConfig, "invalid network configuration", "CHECK needs prevResult")
    })?;
    let prev: AddResult = serde_json::from_value(prev)
        .map_err(|e| Error::new(Code::Decode, "cannot decode prevResult", e.to_string()))?;
    let fail = |what: String| Err(Error::new(Code::Internal, "CHECK failed", what));
    let netns = open_netns(&env.netns)?;
    let mut pod = Netlink::in_netns(&netns).map_err(|e| internal(&e))?;
    let Some(pod_link) = pod.link_get(&env.ifname).map_err(|e| internal(&e))? else {
        return fail(format!("{} is missing from {}", env.ifname, env.netns));
    };
    let pod_if_pos = prev.interfaces.iter().position(|i| i.name == env.ifname && !i.sandbox.is_empty());
    if let Some(i) = pod_if_pos.and_then(|p| prev.interfaces.get(p)) {
        if !i.mac.is_empty() && nl::link_mac(&pod_link).map(nl::format_mac).as_deref() != Some(i.mac.as_str()) {
            return fail(format!("{} has MAC {:?}, the result says {}", env.ifname, nl::link_mac(&pod_link).map(nl::format_mac), i.mac));
        }
    }
    let have = pod.addrs(pod_link.header.index).map_err(|e| internal(&e))?;
    let host_veth = host_veth_name(&env.container_id, &env.ifname);
    let mut host = Netlink::new().map_err(|e| internal(&e))?;
    let Some(host_link) = host.link_get(&host_veth).map_err(|e| internal(&e))? else {
        return fail(format!("host veth {host_veth} is missing"));
    };
    let mut host_routes = host.routes(AddressFamily::Inet).map_err(|e| internal(&e))?;
    host_routes.extend(host.routes(AddressFamily::Inet6).map_err(|e| internal(&e))?);
    let ours: Vec<&IpConfig> =
        prev.ips.iter().filter(|c| c.interface.is_none() || c.interface == pod_if_pos).collect();
    for c in &ours {
        if !have.iter().any(|(ip, prefix)| *ip == c.address.ip() && *prefix == c.address.prefix()) {
            return fail(format!("{} lacks address {} (has {have:?})", env.ifname, c.address));
        }
        let routed = host_routes.iter().any(|r| {
            let (dst, _, oif) = nl::route_parts(r);
            dst == Some(c.address.ip()) && oif == Some(host_link.header.index)
        });
        if !routed {
            return fail(format!("no host route to {} via {host_veth}", c.address.ip()));
        }
    }
    if conf.delegated_ipam().is_some() {
        exec_ipam(env, conf, "CHECK", stdin)?;
    } else {
        let held = Store::new(conf.data_dir(), &conf.name).peek()?.owned_by(&attachment(env));
        for c in &ours {
            if !held.contains(&c.address.ip()) {
                return fail(format!("ipam store does not hold {} for this container", c.address.ip()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::run;
    use crate::spec::Env;

    #[test]
    fn check_without_prev_result_is_code_7() {
        let env = Env {
            command: "CHECK".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/nonexistent".into(),
            ..Env::default()
        };
        let e = run(&env, br#"{"cniVersion":"1.1.0","name":"n","type":"sluice-cni"}"#).unwrap_err();
        assert_eq!(e.code, 7, "{e:?}");
    }
}
