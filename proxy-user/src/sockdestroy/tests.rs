use std::collections::HashMap;

use sluice_k8s::ObjectKey;

use super::*;
use crate::{
    model::{BackendAddr, DesiredState, Frontend, FrontendKey, Scope},
    plan::Planner,
};

fn be(addr: &str, port: u16, proto: Proto) -> BackendAddr {
    BackendAddr { addr: addr.parse().unwrap(), port, proto }
}

fn fk(addr: &str, port: u16, proto: Proto) -> FrontendKey {
    FrontendKey { addr: addr.parse().unwrap(), port, proto, scope: Scope::Cluster }
}

fn fe(backends: &[BackendAddr]) -> Frontend {
    Frontend {
        service: ObjectKey::new("default", "svc"),
        port_name: String::new(),
        backends: backends.iter().copied().collect(),
        affinity_timeout: None,
    }
}

/// Plans and commits `desired`, returning the stale UDP backends of that step.
fn step(planner: &mut Planner, desired: &[(FrontendKey, Frontend)]) -> Vec<StaleUdp> {
    let desired = DesiredState { frontends: desired.iter().cloned().collect() };
    let diff = planner.plan(&desired);
    planner.commit(&diff, desired);
    stale_udp_backends(&diff, planner.programmed())
}

fn revnat(planner: &Planner, key: FrontendKey) -> RevNatId {
    planner.programmed().frontends[&key].revnat_id
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn a_udp_backend_dropped_from_one_frontend_is_stale_for_that_frontend_only() {
    let (dns, other) = (fk("198.19.0.10", 53, Proto::Udp), fk("198.19.0.11", 53, Proto::Udp));
    let (b1, b2) = (be("198.18.1.10", 8081, Proto::Udp), be("198.18.2.10", 8081, Proto::Udp));
    let mut p = Planner::adopt(Programmed::default());
    assert!(step(&mut p, &[(dns, fe(&[b1, b2])), (other, fe(&[b1]))]).is_empty(), "new frontends make nothing stale");
    let stale = step(&mut p, &[(dns, fe(&[b2])), (other, fe(&[b1]))]);
    assert_eq!(
        stale,
        vec![StaleUdp { backend: sa("198.18.1.10:8081"), frontends: BTreeSet::from([revnat(&p, dns)]) }],
        "b1 left `dns` but is still programmed for `other`"
    );
}

#[test]
fn a_backend_removed_everywhere_and_a_removed_frontend_are_stale_with_their_addresses() {
    let (dns, dns6) = (fk("198.19.0.10", 53, Proto::Udp), fk("2001:db8:2::10", 53, Proto::Udp));
    let (b1, b2) = (be("198.18.1.10", 8081, Proto::Udp), be("198.18.2.10", 8081, Proto::Udp));
    let b6 = be("2001:db8:1:1::10", 8081, Proto::Udp);
    let mut p = Planner::adopt(Programmed::default());
    step(&mut p, &[(dns, fe(&[b1, b2])), (dns6, fe(&[b6]))]);
    let (r4, r6) = (revnat(&p, dns), revnat(&p, dns6));
    let stale = step(&mut p, &[(dns, fe(&[b2]))]);
    assert_eq!(
        stale,
        vec![
            StaleUdp { backend: sa("198.18.1.10:8081"), frontends: BTreeSet::from([r4]) },
            StaleUdp { backend: sa("[2001:db8:1:1::10]:8081"), frontends: BTreeSet::from([r6]) },
        ],
        "b1 was removed from the backends map, the IPv6 frontend was deleted"
    );
}

#[test]
fn tcp_backends_and_unchanged_or_grown_frontends_are_never_stale() {
    let (web, dns) = (fk("198.19.0.10", 80, Proto::Tcp), fk("198.19.0.10", 53, Proto::Udp));
    let (t1, t2) = (be("198.18.1.10", 8080, Proto::Tcp), be("198.18.2.10", 8080, Proto::Tcp));
    let (u1, u2) = (be("198.18.1.10", 8081, Proto::Udp), be("198.18.2.10", 8081, Proto::Udp));
    let mut p = Planner::adopt(Programmed::default());
    step(&mut p, &[(web, fe(&[t1, t2])), (dns, fe(&[u1]))]);
    assert!(step(&mut p, &[(web, fe(&[t2])), (dns, fe(&[u1, u2]))]).is_empty(), "TCP removal and UDP growth");
    assert!(step(&mut p, &[(web, fe(&[t2])), (dns, fe(&[u1, u2]))]).is_empty(), "no change");
    assert!(step(&mut p, &[(dns, fe(&[u1, u2]))]).is_empty(), "a removed TCP frontend");
}

/// Records keyed like the socket LB's: (cookie, backend) -> revnat id.
struct Records(HashMap<(u64, SocketAddr), RevNatId>);

impl SockOrigin for Records {
    fn frontend_of(&self, cookie: u64, backend: SocketAddr) -> Option<RevNatId> {
        self.0.get(&(cookie, backend)).copied()
    }
}

#[test]
fn only_sockets_balanced_to_the_stale_backend_through_a_dropping_frontend_are_destroyed() {
    let stale = StaleUdp { backend: sa("198.18.1.10:8081"), frontends: BTreeSet::from([7]) };
    let by_backend = BTreeMap::from([(stale.backend, &stale)]);
    let records = Records(HashMap::from([
        ((1, sa("198.18.1.10:8081")), 7),
        ((2, sa("198.18.1.10:8081")), 9),
        ((4, sa("198.18.2.10:8081")), 7),
        ((5, sa("198.18.1.10:8081")), 7),
    ]));
    let sock = |cookie, remote: &str| UdpSock { cookie, local: sa("198.18.1.5:40000"), remote: sa(remote) };
    let cases = [
        (sock(1, "198.18.1.10:8081"), true, "balanced through the frontend that dropped it"),
        (sock(2, "198.18.1.10:8081"), false, "balanced through a frontend that still uses it"),
        (sock(3, "198.18.1.10:8081"), false, "never translated by the LB (direct pod traffic)"),
        (sock(4, "198.18.2.10:8081"), false, "connected to a backend that is not stale"),
        (sock(5, "[::ffff:198.18.1.10]:8081"), true, "IPv4-mapped form of the stale backend"),
    ];
    for (s, want, why) in cases {
        assert_eq!(should_destroy(&s, &by_backend, &records), want, "{why}: {s:?}");
    }
}

#[test]
fn the_cookie_is_read_as_the_kernel_writes_it_low_half_first() {
    let c: u64 = 0x0123_4567_89ab_cdef;
    let mut raw = [0u8; 8];
    raw[..4].copy_from_slice(&0x89ab_cdefu32.to_ne_bytes());
    raw[4..].copy_from_slice(&0x0123_4567u32.to_ne_bytes());
    assert_eq!(cookie(&raw), c);
}

#[test]
fn namespaces_are_swept_once_each() {
    let found = [
        ((4, 100), PathBuf::from("/proc/10/ns/net")),
        ((4, 200), PathBuf::from("/proc/11/ns/net")),
        ((4, 100), PathBuf::from("/proc/12/ns/net")),
        ((5, 100), PathBuf::from("/proc/13/ns/net")),
    ];
    assert_eq!(
        distinct_namespaces(found),
        vec![PathBuf::from("/proc/10/ns/net"), PathBuf::from("/proc/11/ns/net"), PathBuf::from("/proc/13/ns/net")],
    );
}

#[test]
fn startup_warns_when_the_sweep_cannot_work() {
    let none = |_: &Path| None;
    assert!(warnings_for(true, true, &[], none).is_empty(), "root with every capability: nothing to warn about");
    let dirs = [PathBuf::from("/var/run/netns")];
    assert!(warnings_for(true, false, &dirs, none).is_empty(), "SYS_ADMIN and a netns directory suffice");
    let w = warnings_for(false, false, &dirs, none);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("cannot be destroyed") && w[0].contains("CAP_SYS_ADMIN"), "{w:?}");
    let w = warnings_for(true, false, &[], none);
    assert!(w.len() == 1 && w[0].contains("--netns-dir"), "no netns dir and no SYS_PTRACE: {w:?}");
    let w = warnings_for(true, false, &dirs, |_| Some(io::Error::from_raw_os_error(libc::ENOENT)));
    assert!(w.len() == 1 && w[0].starts_with("--netns-dir /var/run/netns: "), "{w:?}");
}

#[test]
fn capabilities_are_read_from_cap_eff() {
    assert_eq!(cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"), Some(0x1ff_ffff_ffff));
    assert_eq!(cap_eff("CapEff:\t0000000000001000\n").map(|e| e >> CAP_NET_ADMIN & 1), Some(1));
    assert_eq!(cap_eff("nothing"), None);
}
