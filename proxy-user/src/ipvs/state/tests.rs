use std::net::Ipv4Addr;

use sluice_k8s::ObjectKey;

use super::*;
use crate::{
    model::{DesiredState, Frontend},
    plan::Planner,
};

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn fk(addr: IpAddr, port: u16, proto: Proto, scope: Scope) -> FrontendKey {
    FrontendKey { addr, port, proto, scope }
}

fn vip(last: u8) -> FrontendKey {
    fk(v4(198, 19, 0, last), 80, Proto::Tcp, Scope::Cluster)
}

fn be(last: u8, proto: Proto) -> BackendAddr {
    BackendAddr { addr: v4(198, 18, 1, last), port: 8080, proto }
}

fn fe(backends: &[BackendAddr], affinity: Option<u32>) -> Frontend {
    Frontend {
        service: ObjectKey::new("default", "web"),
        port_name: String::new(),
        backends: backends.to_vec().into(),
        affinity_timeout: affinity,
    }
}

fn desired(items: &[(FrontendKey, Frontend)]) -> DesiredState {
    DesiredState { frontends: items.iter().cloned().collect() }
}

/// Runs the planner and this layer the way the dataplane does, with a
/// kernel that does whatever it is told. Returns the ops of the step.
struct Sim {
    planner: Planner,
    mirror: Programmed,
    held: BTreeMap<ServiceId, Held>,
    settings: Settings,
}

impl Sim {
    fn new() -> Self {
        Self { planner: Planner::adopt(Programmed::default()), mirror: Programmed::default(), held: BTreeMap::new(), settings: Settings::default() }
    }

    fn step(&mut self, d: &DesiredState) -> (Vec<Op>, NftDelta) {
        let diff = self.planner.plan(d);
        self.planner.commit(&diff, d.clone());
        apply_to(&mut self.mirror, &diff);
        let mut ops = Vec::new();
        let mut nft = NftDelta::default();
        for id in touched(&diff) {
            let want = desired_service(&self.mirror, &id, &self.settings);
            let before = self.held.get(&id).map(|h| h.external);
            let step = service_ops(self.held.get(&id), want.as_ref());
            let ext = want.as_ref().is_some_and(|w| w.external);
            for op in &step {
                record(&mut self.held, op, ext);
            }
            if let Some(h) = self.held.get_mut(&id) {
                h.external = ext;
            }
            vs_nft(&mut nft, &id, before, want.as_ref().map(|w| w.external));
            ops.extend(step);
        }
        backend_nft(&mut nft, &diff);
        (ops, nft)
    }
}

fn rs(b: &BackendAddr, weight: u32) -> Dest {
    Dest { addr: b.addr, port: b.port, weight, active_conns: 0, inactive_conns: 0 }
}

#[test]
fn a_new_clusterip_is_a_virtual_service_with_one_real_server_per_endpoint() {
    let mut sim = Sim::new();
    sim.settings.scheduler = Scheduler::Wrr;
    let (ops, nft) = sim.step(&desired(&[(vip(10), fe(&[be(1, Proto::Tcp), be(2, Proto::Tcp)], None))]));
    let id = service_id(&vip(10));
    let svc = Service { id, scheduler: "wrr".into(), flags: 0, timeout: 0 };
    assert_eq!(
        ops,
        vec![Op::AddService(svc), Op::AddDest(id, rs(&be(1, Proto::Tcp), 1)), Op::AddDest(id, rs(&be(2, Proto::Tcp), 1))]
    );
    assert_eq!(
        nft.lines,
        vec![
            "add element ip sluice-ipvs cluster-ips { 198.19.0.10 . tcp . 80 }",
            "add element ip sluice-ipvs loopback { 198.18.1.1 . tcp . 8080 . 198.18.1.1 }",
            "add element ip sluice-ipvs loopback { 198.18.1.2 . tcp . 8080 . 198.18.1.2 }",
        ]
    );
}

#[test]
fn client_ip_affinity_is_persistence_with_the_services_timeout() {
    let mut sim = Sim::new();
    let (ops, _) = sim.step(&desired(&[(vip(10), fe(&[be(1, Proto::Tcp)], Some(600)))]));
    let Op::AddService(s) = &ops[0] else { panic!("first op adds the service: {ops:?}") };
    assert_eq!((s.flags, s.timeout), (IP_VS_SVC_F_PERSISTENT, 600));
    // Turning affinity off updates the service in place, real servers untouched.
    let (ops, _) = sim.step(&desired(&[(vip(10), fe(&[be(1, Proto::Tcp)], None))]));
    let id = service_id(&vip(10));
    assert_eq!(ops, vec![Op::UpdateService(Service { id, scheduler: "rr".into(), flags: 0, timeout: 0 })]);
}

#[test]
fn a_removed_tcp_endpoint_drains_with_weight_zero_and_a_udp_one_goes_at_once() {
    let mut sim = Sim::new();
    let udp = fk(v4(198, 19, 0, 53), 53, Proto::Udp, Scope::Cluster);
    let both = desired(&[
        (vip(10), fe(&[be(1, Proto::Tcp), be(2, Proto::Tcp)], None)),
        (udp, fe(&[be(1, Proto::Udp), be(2, Proto::Udp)], None)),
    ]);
    sim.step(&both);
    let (ops, _) = sim.step(&desired(&[
        (vip(10), fe(&[be(1, Proto::Tcp)], None)),
        (udp, fe(&[be(1, Proto::Udp)], None)),
    ]));
    let tcp_id = service_id(&vip(10));
    let udp_id = service_id(&udp);
    assert_eq!(ops, vec![Op::SetDest(tcp_id, rs(&be(2, Proto::Tcp), 0)), Op::DelDest(udp_id, rs(&be(2, Proto::Udp), 0))]);
    // The draining server is left alone by later updates...
    let (ops, _) = sim.step(&desired(&[
        (vip(10), fe(&[be(1, Proto::Tcp), be(3, Proto::Tcp)], None)),
        (udp, fe(&[be(1, Proto::Udp)], None)),
    ]));
    assert_eq!(ops, vec![Op::AddDest(tcp_id, rs(&be(3, Proto::Tcp), 1))]);
    // ...and gets weight 1 back when its endpoint returns.
    let (ops, _) = sim.step(&both);
    assert!(ops.contains(&Op::SetDest(tcp_id, rs(&be(2, Proto::Tcp), 1))), "{ops:?}");
}

#[test]
fn drained_real_servers_are_deleted_only_without_connections() {
    let id = service_id(&vip(10));
    let mut busy = rs(&be(1, Proto::Tcp), 0);
    busy.inactive_conns = 1;
    let idle = rs(&be(2, Proto::Tcp), 0);
    let active = rs(&be(3, Proto::Tcp), 1);
    let wanted_again = rs(&be(4, Proto::Tcp), 0);
    let want = VirtualService {
        service: Service { id, scheduler: "rr".into(), flags: 0, timeout: 0 },
        real_servers: [(be(3, Proto::Tcp).addr, 8080), (be(4, Proto::Tcp).addr, 8080)].into_iter().collect(),
        external: false,
    };
    assert_eq!(drained(&id, &[busy, idle, active, wanted_again], Some(&want)), vec![Op::DelDest(id, idle)]);
}

#[test]
fn a_service_without_endpoints_keeps_an_empty_virtual_service_and_a_deleted_one_goes() {
    let mut sim = Sim::new();
    let (ops, _) = sim.step(&desired(&[(vip(10), fe(&[], None))]));
    assert!(matches!(&ops[..], [Op::AddService(_)]), "an empty virtual service refuses with ICMP: {ops:?}");
    assert!(wants_binding(&sim.held, vip(10).addr, &sim.settings));
    let (ops, nft) = sim.step(&desired(&[]));
    assert_eq!(ops, vec![Op::DelService(service_id(&vip(10)))]);
    assert_eq!(nft.lines, vec!["delete element ip sluice-ipvs cluster-ips { 198.19.0.10 . tcp . 80 }"]);
    assert!(!wants_binding(&sim.held, vip(10).addr, &sim.settings));
}

#[test]
fn external_frontend_backends_win_and_node_addresses_are_not_bound() {
    let node = v4(192, 0, 2, 1);
    let mut sim = Sim::new();
    sim.settings.node_ips.insert(node);
    let np_cluster = fk(node, 30080, Proto::Tcp, Scope::Cluster);
    let np_external = fk(node, 30080, Proto::Tcp, Scope::External);
    // externalTrafficPolicy: Local: the external frontend has only the local endpoint.
    let (ops, nft) = sim.step(&desired(&[
        (np_cluster, fe(&[be(1, Proto::Tcp), be(2, Proto::Tcp)], None)),
        (np_external, fe(&[be(1, Proto::Tcp)], None)),
    ]));
    let id = service_id(&np_cluster);
    assert_eq!(ops.iter().filter(|o| matches!(o, Op::AddService(_))).count(), 1, "one virtual service per address:port: {ops:?}");
    assert_eq!(ops.iter().filter(|o| matches!(o, Op::AddDest(..))).collect::<Vec<_>>(), vec![&Op::AddDest(id, rs(&be(1, Proto::Tcp), 1))]);
    assert!(nft.lines.contains(&"add element ip sluice-ipvs external { 192.0.2.1 . tcp . 30080 }".to_owned()), "{nft:?}");
    assert!(!wants_binding(&sim.held, node, &sim.settings), "a node address is never put on the dummy interface");
}

#[test]
fn one_endpoint_change_among_many_services_touches_one_virtual_service() {
    let mut sim = Sim::new();
    let many: Vec<(FrontendKey, Frontend)> =
        (1..=200).map(|i| (vip(i), fe(&[be(1, Proto::Tcp), be(2, Proto::Tcp)], None))).collect();
    sim.step(&desired(&many));
    let mut changed = many.clone();
    changed[7].1 = fe(&[be(1, Proto::Tcp), be(3, Proto::Tcp)], None);
    let (ops, nft) = sim.step(&desired(&changed));
    let id = service_id(&vip(8));
    assert_eq!(ops, vec![Op::AddDest(id, rs(&be(3, Proto::Tcp), 1)), Op::SetDest(id, rs(&be(2, Proto::Tcp), 0))]);
    assert_eq!(nft.lines, vec!["add element ip sluice-ipvs loopback { 198.18.1.3 . tcp . 8080 . 198.18.1.3 }"]);
}

#[test]
fn adopting_the_kernels_services_after_a_restart_plans_nothing() {
    let mut sim = Sim::new();
    let udp = fk(v4(198, 19, 0, 53), 53, Proto::Udp, Scope::Cluster);
    let d = desired(&[
        (vip(10), fe(&[be(1, Proto::Tcp), be(2, Proto::Tcp)], Some(60))),
        (vip(11), fe(&[be(2, Proto::Tcp)], None)),
        (udp, fe(&[be(1, Proto::Udp)], None)),
    ]);
    sim.step(&d);
    // A draining server must not come back as a backend.
    sim.step(&desired(&[
        (vip(10), fe(&[be(1, Proto::Tcp)], Some(60))),
        (vip(11), fe(&[be(2, Proto::Tcp)], None)),
        (udp, fe(&[be(1, Proto::Udp)], None)),
    ]));
    let on_dummy: BTreeSet<IpAddr> = sim.held.keys().map(|k| k.addr).collect();
    let adopted = adopt(&sim.held, &on_dummy, &sim.settings);
    assert_eq!(adopted.frontends[&vip(10)].slots.len(), 1, "{adopted:?}");
    let mut restarted = Planner::adopt(adopted);
    let d2 = desired(&[
        (vip(10), fe(&[be(1, Proto::Tcp)], Some(60))),
        (vip(11), fe(&[be(2, Proto::Tcp)], None)),
        (udp, fe(&[be(1, Proto::Udp)], None)),
    ]);
    let diff = restarted.plan(&d2);
    assert!(diff.is_empty(), "a restarted agent must not rewrite what is there: {diff:?}");
}

#[test]
fn foreign_virtual_services_are_neither_adopted_nor_ours() {
    let s = Settings { node_ips: [v4(192, 0, 2, 1)].into_iter().collect(), ..Settings::default() };
    let on_dummy: BTreeSet<IpAddr> = [v4(198, 19, 0, 10)].into_iter().collect();
    let id = |a| ServiceId { addr: a, port: 80, protocol: 6 };
    assert!(is_ours(&id(v4(198, 19, 0, 10)), &on_dummy, &s));
    assert!(is_ours(&id(v4(192, 0, 2, 1)), &on_dummy, &s));
    assert!(!is_ours(&id(v4(10, 0, 0, 1)), &on_dummy, &s));
    assert!(!is_ours(&ServiceId { addr: v4(198, 19, 0, 10), port: 80, protocol: 132 }, &on_dummy, &s), "SCTP is not ours");
}

#[test]
fn the_nft_table_masquerades_external_traffic_hairpins_and_outside_sources_only_with_a_cluster_cidr() {
    let mut sim = Sim::new();
    sim.settings.node_ips.insert(v4(192, 0, 2, 1));
    sim.step(&desired(&[
        (vip(10), fe(&[be(1, Proto::Tcp)], None)),
        (fk(v4(192, 0, 2, 1), 30080, Proto::Tcp, Scope::External), fe(&[be(1, Proto::Tcp)], None)),
    ]));
    let table = nft_table(&sim.held, &sim.mirror.backends, &sim.settings);
    assert!(table.starts_with("table ip sluice-ipvs {}\ndelete table ip sluice-ipvs\n"), "replaced atomically:\n{table}");
    assert!(table.contains("set cluster-ips { type ipv4_addr . inet_proto . inet_service; elements = { 198.19.0.10 . tcp . 80 }; }"), "{table}");
    assert!(table.contains("set external { type ipv4_addr . inet_proto . inet_service; elements = { 192.0.2.1 . tcp . 30080 }; }"), "{table}");
    assert!(table.contains("elements = { 198.18.1.1 . tcp . 8080 . 198.18.1.1 }"), "{table}");
    assert!(table.contains("@external meta mark set meta mark | 0x4000"), "{table}");
    assert!(!table.contains("@cluster-ips ip saddr"), "no cluster CIDR, no ClusterIP masquerade:\n{table}");
    sim.settings.cluster_cidr = Some("198.18.0.0/16".parse().unwrap());
    let table = nft_table(&sim.held, &sim.mirror.backends, &sim.settings);
    assert!(table.contains("ip daddr . meta l4proto . th dport @cluster-ips ip saddr != 198.18.0.0/16 meta mark set meta mark | 0x4000"), "{table}");
}

#[test]
fn ipv6_services_get_no_nft_elements_but_a_virtual_service() {
    let key = fk("2001:db8:2::10".parse().unwrap(), 80, Proto::Tcp, Scope::Cluster);
    let b = BackendAddr { addr: "2001:db8:1::10".parse().unwrap(), port: 8080, proto: Proto::Tcp };
    let mut sim = Sim::new();
    let (ops, nft) = sim.step(&desired(&[(key, fe(&[b], None))]));
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(nft.lines.is_empty(), "{nft:?}");
}
