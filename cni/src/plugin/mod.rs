//! The CNI plugin: one module per command ([`add`], [`del`], [`check`],
//! [`gc`], [`status`], [`version`]), the delegation to another IPAM plugin
//! ([`delegate`]) and the address bookkeeping they share ([`addresses`]).
//!
//! Pods are routed, not bridged: each pod gets a veth whose host end carries
//! no address and a /32 (/128) route to the pod; inside the pod the default
//! route goes via the link-local gateway 169.254.1.1 (fe80::1), statically
//! resolved to the host end's fixed MAC. See cni/README.md for why.
//!
//! Never delete what this call did not create: a failed ADD undoes only
//! the links and addresses it made, the commands of one attachment are
//! serialised ([`crate::ipam::Store::lock_attachment`]), and GC removes only
//! host veths marked with its own network ([`network_mark`]).

mod add;
mod addresses;
mod check;
mod del;
mod delegate;
mod gc;
mod status;
mod version;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnetwork::IpNetwork;
use serde_json::Value;
use tracing::{debug, warn};

use crate::ipam::{AttachmentLock, Store};
use crate::nl::NlError;
use crate::invocation::{prepare, Command, Prepared};
use crate::spec::{Attachment, Code, Env, Error, NetConf, Result};
use crate::subnet::NodeSubnet;

/// MAC of every host-side pod veth; pods resolve their gateway to it statically.
pub const HOST_VETH_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];
/// The pods' IPv4 gateway: link-local, never assigned anywhere.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 gateway: link-local, never assigned anywhere.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Prefix of host-side veth names; the rest is a hash of (container id, ifname).
pub const HOST_VETH_PREFIX: &str = "sl";

/// What one invocation prints on stdout.
#[derive(Debug)]
pub enum Output {
    Json(Value),
    Nothing,
}

fn internal(e: &NlError) -> Error {
    Error::new(Code::Internal, "kernel operation failed", e.to_string())
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        let sep: &[u8] = if i == 0 { b"" } else { b"/" };
        for b in sep.iter().chain(part.iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The host-side veth name of an attachment: deterministic, so DEL and GC
/// find it without any state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across builds and releases (std's hasher is not).
    let h = fnv1a(&[container_id.as_bytes(), ifname.as_bytes()]);
    format!("{HOST_VETH_PREFIX}{:012x}", h >> 16)
}

fn is_host_veth_name(name: &str) -> bool {
    name.len() == HOST_VETH_PREFIX.len() + 12
        && name.starts_with(HOST_VETH_PREFIX)
        && name[HOST_VETH_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The device group (`IFLA_GROUP`) a host veth of network `network` is
/// created in: a 32-bit hash of the network name, never 0 (the kernel's
/// default group, which veths made before this mark existed carry). It is
/// set in the creating request itself (an alias would cost another one), and
/// lets GC tell its own network's veths from another network's.
pub fn network_mark(network: &str) -> u32 {
    let h = fnv1a(&[b"sluice-cni", network.as_bytes()]);
    let folded = (h ^ (h >> 32)) as u32;
    if folded == 0 {
        1
    } else {
        folded
    }
}

/// The pod interface's MAC, derived from its address (locally administered
/// 0a:58 + IPv4), so it is known before the link exists.
pub fn pod_mac(ips: &[IpNetwork]) -> [u8; 6] {
    let tail = ips
        .iter()
        .find_map(|n| match n.ip() {
            IpAddr::V4(v4) => Some(v4.octets()),
            IpAddr::V6(_) => None,
        })
        .or_else(|| {
            ips.first().map(|n| match n.ip() {
                IpAddr::V6(v6) => {
                    let o = v6.octets();
                    [o[12], o[13], o[14], o[15]]
                }
                IpAddr::V4(v4) => v4.octets(),
            })
        })
        .unwrap_or([0, 0, 0, 1]);
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// The attachment a command acts on.
fn attachment(env: &Env) -> Attachment {
    Attachment { container_id: env.container_id.clone(), ifname: env.ifname.clone() }
}

/// Serialises this attachment's commands (see [`Store::lock_attachment`]).
/// The lock lives in the built-in IPAM's directory even with delegated IPAM.
fn lock_attachment(conf: &NetConf, owner: &Attachment, create: bool) -> Result<Option<AttachmentLock>> {
    Store::new(conf.data_dir(), &conf.name).lock_attachment(owner, create)
}

/// Runs one plugin invocation: `env` from the process environment, `stdin` the config.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Output> {
    let (command, conf, version) = match prepare(env, stdin)? {
        Prepared::Version => return Ok(Output::Json(version::version(stdin))),
        Prepared::Command { command, conf, version } => (command, conf, version),
    };
    let out = match command {
        Command::Add => add::add(env, &conf, stdin).map(|r| {
            Output::Json(serde_json::to_value(r.for_version(version, &conf.cni_version)).expect("serialises"))
        }),
        Command::Del => del::del(env, &conf, stdin).map(|()| Output::Nothing),
        Command::Check => check::check(env, &conf, stdin).map(|()| Output::Nothing),
        Command::Gc => gc::gc(env, &conf, stdin).map(|()| Output::Nothing),
        Command::Status => status::status(&conf).map(|()| Output::Nothing),
    };
    out.map_err(|e| e.with_version(&conf.cni_version))
}

fn open_netns(path: &str) -> Result<File> {
    File::open(path).map_err(|e| Error::new(Code::InvalidEnvironment, "cannot open CNI_NETNS", format!("{path}: {e}")))
}

/// The node subnet published by the daemon, if any.
fn node_subnet(conf: &NetConf) -> Result<Option<NodeSubnet>> {
    NodeSubnet::read(Path::new(conf.subnet_file())).map_err(|e| {
        Error::new(Code::Io, "cannot read the node subnet file", format!("{}: {e}", conf.subnet_file()))
    })
}

/// Reads the process environment and stdin, runs the command, prints the
/// outcome as the spec says, and returns the exit code.
pub fn main_from_env() -> i32 {
    let env = Env::from_lookup(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    if env.command != "VERSION" || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            return print_error(&Error::new(Code::Io, "cannot read the network configuration", e.to_string()));
        }
    }
    crate::logging::init_plugin(&stdin);
    debug!(command = %env.command, container = %env.container_id, "invoked");
    match run(&env, &stdin) {
        Ok(Output::Json(v)) => {
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, &v);
            let _ = out.write_all(b"\n");
            0
        }
        Ok(Output::Nothing) => 0,
        Err(e) => {
            warn!(command = %env.command, container = %env.container_id, error = %e, code = e.code, "failed");
            print_error(&e)
        }
    }
}

fn print_error(e: &Error) -> i32 {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, e);
    let _ = out.write_all(b"\n");
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("c1", "eth0");
        assert_eq!(a, host_veth_name("c1", "eth0"));
        assert!(a.len() <= 15 && is_host_veth_name(&a), "{a}");
        assert_ne!(a, host_veth_name("c1", "net1"));
        assert_ne!(a, host_veth_name("c2", "eth0"));
        assert!(!is_host_veth_name("slave0"));
    }

    #[test]
    fn host_veth_names_do_not_change_across_releases() {
        // DEL and GC of pods attached by an older plugin find their veths by this name.
        assert_eq!(host_veth_name("c1", "eth0"), "sl9e27a0abdbb0");
    }

    #[test]
    fn network_marks_are_stable_nonzero_and_differ_between_networks() {
        assert_eq!(network_mark("sluice"), network_mark("sluice"));
        assert_ne!(network_mark("net-a"), network_mark("net-b"));
        for n in ["", "sluice", "net-a", "x"] {
            assert_ne!(network_mark(n), 0, "{n:?}: group 0 is every link's default");
        }
    }

    #[test]
    fn pod_mac_is_locally_administered_and_derived_from_ipv4() {
        let m = pod_mac(&["2001:db8:1::5/64".parse().unwrap(), "198.18.1.5/24".parse().unwrap()]);
        assert_eq!(m, [0x0a, 0x58, 198, 18, 1, 5]);
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn gc_and_status_need_1_1() {
        for cmd in ["GC", "STATUS"] {
            let env = Env { command: cmd.into(), ..Env::default() };
            let Err(e) = run(&env, br#"{"cniVersion":"1.0.0","name":"n","type":"sluice-cni"}"#) else {
                panic!("{cmd} with 1.0.0 must fail")
            };
            assert_eq!((e.code, e.cni_version.as_str()), (1, "1.0.0"), "{cmd}");
        }
    }

    #[test]
    fn missing_and_unknown_command_are_code_4() {
        assert_eq!(run(&Env::default(), b"{}").err().unwrap().code, 4);
        let env = Env { command: "FROB".into(), ..Env::default() };
        assert_eq!(run(&env, b"{}").err().unwrap().code, 4);
    }

    #[test]
    fn add_without_netns_is_code_4_and_touches_nothing() {
        let env = Env { command: "ADD".into(), container_id: "c".into(), ifname: "eth0".into(), ..Env::default() };
        let e = run(&env, br#"{"cniVersion":"1.1.0","name":"n","type":"sluice-cni","podCidrs":["198.18.1.0/24"],"dataDir":"/nonexistent/x"}"#)
            .err()
            .unwrap();
        assert_eq!((e.code, e.details.as_str()), (4, "CNI_NETNS"));
        assert!(!Path::new("/nonexistent/x").exists());
    }
}
