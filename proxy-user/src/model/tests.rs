use super::*;
use k8s_openapi::api::core::v1::{ClientIPConfig, ServiceSpec, SessionAffinityConfig};
use sluice_k8s::slice::{EndpointConditions, EndpointHints, EndpointPort, ForNode, ForZone};
use k8s_openapi::apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString};
use sluice_k8s::SnapshotBuilder;

fn svc(name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| ServicePort {
                        name: Some((*n).into()),
                        port: *p,
                        protocol: Some((*proto).into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Ep {
    ip: &'static str,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: &'static str,
    zones: &'static [&'static str],
    nodes: &'static [&'static str],
}

const fn ep(ip: &'static str) -> Ep {
    Ep { ip, ready: true, serving: true, terminating: false, node: "node-a", zones: &[], nodes: &[] }
}

fn slice(svc: &str, name: &str, family: &str, ports: &[(&str, i32, &str)], eps: &[Ep]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        service_name: Some(svc.into()),
        address_type: family.into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p, proto)| EndpointPort {
                    name: Some((*n).into()),
                    port: Some(*p),
                    protocol: Some((*proto).into()),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: eps
            .iter()
            .map(|e| Endpoint {
                addresses: e.ip.into(),
                conditions: Some(EndpointConditions {
                    ready: Some(e.ready),
                    serving: Some(e.serving),
                    terminating: Some(e.terminating),
                }),
                node_name: Some(e.node.into()),
                hints: (!e.zones.is_empty() || !e.nodes.is_empty()).then(|| {
                    Box::new(EndpointHints {
                        for_zones: (!e.zones.is_empty())
                            .then(|| e.zones.iter().map(|z| ForZone { name: (*z).into() }).collect()),
                        for_nodes: (!e.nodes.is_empty())
                            .then(|| e.nodes.iter().map(|n| ForNode { name: (*n).into() }).collect()),
                    })
                }),
                ..Default::default()
            })
            .collect(),
    }
}

fn node() -> NodeInfo {
    NodeInfo { name: "node-a".into(), zone: Some("z1".into()) }
}

fn translate(s: &Service, slices: &[EndpointSlice]) -> ServiceTranslation {
    let refs: Vec<&EndpointSlice> = slices.iter().collect();
    service_frontends(&ObjectKey::of(&s.metadata), s, &refs, &node())
}

fn backends(t: &ServiceTranslation, i: usize) -> Vec<String> {
    t.frontends[i].1.backends.iter().map(ToString::to_string).collect()
}

#[test]
fn ready_endpoints_become_backends_with_the_slice_port() {
    let s = svc("web", "198.19.0.10", &[("http", 80, "TCP")]);
    let t = translate(&s, &[slice("web", "web-1", "IPv4", &[("http", 8080, "TCP")], &[ep("198.18.1.10"), ep("198.18.2.10")])]);
    assert_eq!(t.frontends.len(), 1);
    assert_eq!(t.frontends[0].0.to_string(), "198.19.0.10:80/TCP");
    assert_eq!(backends(&t, 0), ["198.18.1.10:8080", "198.18.2.10:8080"]);
}

#[test]
fn not_ready_endpoints_are_skipped_while_a_ready_one_exists() {
    let s = svc("web", "198.19.0.10", &[("", 80, "TCP")]);
    let mut bad = ep("198.18.1.11");
    bad.ready = false;
    let t = translate(&s, &[slice("web", "w", "IPv4", &[("", 80, "TCP")], &[ep("198.18.1.10"), bad])]);
    assert_eq!(backends(&t, 0), ["198.18.1.10:80"]);
}

#[test]
fn serving_terminating_endpoints_are_used_only_when_none_is_ready() {
    let s = svc("web", "198.19.0.10", &[("", 80, "TCP")]);
    let term = Ep { ready: false, serving: true, terminating: true, ..ep("198.18.1.11") };
    let gone = Ep { ready: false, serving: false, terminating: true, ..ep("198.18.1.12") };
    let t = translate(&s, &[slice("web", "w", "IPv4", &[("", 80, "TCP")], &[term, gone])]);
    assert_eq!(backends(&t, 0), ["198.18.1.11:80"]);
    let term = Ep { ready: false, serving: true, terminating: true, ..ep("198.18.1.11") };
    let t = translate(&s, &[slice("web", "w", "IPv4", &[("", 80, "TCP")], &[term, ep("198.18.1.10")])]);
    assert_eq!(backends(&t, 0), ["198.18.1.10:80"]);
}

#[test]
fn named_target_port_resolves_through_the_slice_port_of_the_same_name() {
    let mut s = svc("web", "198.19.0.10", &[("http", 80, "TCP"), ("metrics", 9090, "TCP")]);
    s.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port = Some(IntOrString::String("web".into()));
    let t = translate(&s, &[slice("web", "w", "IPv4", &[("http", 8080, "TCP"), ("metrics", 9100, "TCP")], &[ep("198.18.1.10")])]);
    assert_eq!(backends(&t, 0), ["198.18.1.10:8080"]);
    assert_eq!(backends(&t, 1), ["198.18.1.10:9100"]);
}

#[test]
fn zero_endpoints_give_a_frontend_without_backends() {
    let s = svc("web", "198.19.0.10", &[("", 80, "TCP")]);
    let t = translate(&s, &[]);
    assert_eq!(t.frontends.len(), 1, "a Service without endpoints must still refuse at its VIP");
    assert!(t.frontends[0].1.backends.is_empty());
}

#[test]
fn ignored_services_produce_nothing() {
    let mut headless = svc("h", "None", &[("", 80, "TCP")]);
    assert!(translate(&headless, &[]).frontends.is_empty(), "headless");
    headless.spec.as_mut().unwrap().cluster_ip = Some("198.19.0.9".into());
    headless.metadata.labels = Some([(semantics::SERVICE_PROXY_NAME_LABEL.to_owned(), "other".to_owned())].into());
    assert!(translate(&headless, &[]).frontends.is_empty(), "service-proxy-name label");
    let mut ext = svc("e", "", &[("", 80, "TCP")]);
    ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    assert!(translate(&ext, &[]).frontends.is_empty(), "ExternalName");
}

#[test]
fn sctp_ports_are_skipped_with_a_warning_and_tcp_udp_kept() {
    let s = svc("dns", "198.19.0.53", &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("x", 9, "SCTP")]);
    let t = translate(&s, &[slice("dns", "d", "IPv4", &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")], &[ep("198.18.1.53")])]);
    assert_eq!(t.frontends.len(), 2);
    assert_eq!(t.frontends[0].0.proto, Proto::Udp);
    assert!(t.warnings.iter().any(|w| w.contains("default/dns") && w.contains("SCTP")), "{:?}", t.warnings);
}

#[test]
fn invalid_addresses_are_skipped_with_warnings_naming_the_object() {
    let s = svc("web", "not-an-ip", &[("", 80, "TCP")]);
    let t = translate(&s, &[]);
    assert!(t.frontends.is_empty());
    assert!(t.warnings[0].contains("default/web") && t.warnings[0].contains("not-an-ip"), "{:?}", t.warnings);
    let s = svc("web", "198.19.0.10", &[("", 80, "TCP")]);
    let t = translate(&s, &[slice("web", "w", "IPv4", &[("", 80, "TCP")], &[ep("198.18.1.999"), ep("198.18.1.10")])]);
    assert_eq!(backends(&t, 0), ["198.18.1.10:80"]);
    assert!(t.warnings[0].contains("198.18.1.999"), "{:?}", t.warnings);
}

#[test]
fn dual_stack_service_gets_a_frontend_per_family_from_the_matching_slices() {
    let mut s = svc("web", "198.19.0.10", &[("", 80, "TCP")]);
    s.spec.as_mut().unwrap().cluster_ips = Some(vec!["198.19.0.10".into(), "2001:db8:2::10".into()]);
    let t = translate(&s, &[
        slice("web", "w4", "IPv4", &[("", 80, "TCP")], &[ep("198.18.1.10")]),
        slice("web", "w6", "IPv6", &[("", 80, "TCP")], &[ep("2001:db8:1::10")]),
    ]);
    assert_eq!(t.frontends.len(), 2);
    assert_eq!(backends(&t, 0), ["198.18.1.10:80"]);
    assert_eq!(backends(&t, 1), ["[2001:db8:1::10]:80"]);
}

#[test]
fn session_affinity_defaults_to_three_hours() {
    let mut s = svc("web", "198.19.0.10", &[("", 80, "TCP")]);
    s.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
    assert_eq!(translate(&s, &[]).frontends[0].1.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
    s.spec.as_mut().unwrap().session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig { timeout_seconds: Some(60) }),
    });
    assert_eq!(translate(&s, &[]).frontends[0].1.affinity_timeout, Some(60));
    s.spec.as_mut().unwrap().session_affinity = Some("None".into());
    assert_eq!(translate(&s, &[]).frontends[0].1.affinity_timeout, None);
}

#[test]
fn internal_traffic_policy_local_keeps_only_this_nodes_endpoints() {
    let mut s = svc("web", "198.19.0.10", &[("", 80, "TCP")]);
    s.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
    let remote = Ep { node: "node-b", ..ep("198.18.2.10") };
    let t = translate(&s, &[slice("web", "w", "IPv4", &[("", 80, "TCP")], &[ep("198.18.1.10"), remote])]);
    assert_eq!(backends(&t, 0), ["198.18.1.10:80"]);
    let remote = Ep { node: "node-b", ..ep("198.18.2.10") };
    let t = translate(&s, &[slice("web", "w", "IPv4", &[("", 80, "TCP")], &[remote])]);
    assert!(backends(&t, 0).is_empty(), "no local endpoint means refuse");
}

#[test]
fn zone_hints_are_used_only_when_every_endpoint_has_them_and_one_matches() {
    let s = svc("web", "198.19.0.10", &[("", 80, "TCP")]);
    let mk = |hints_b: &'static [&'static str]| {
        slice("web", "w", "IPv4", &[("", 80, "TCP")], &[
            Ep { zones: &["z1"], ..ep("198.18.1.10") },
            Ep { zones: hints_b, node: "node-b", ..ep("198.18.2.10") },
        ])
    };
    assert_eq!(backends(&translate(&s, &[mk(&["z2"])]), 0), ["198.18.1.10:80"], "hints used");
    assert_eq!(backends(&translate(&s, &[mk(&[])]), 0).len(), 2, "one endpoint without hints: all used");
    let none_match = slice("web", "w", "IPv4", &[("", 80, "TCP")], &[Ep { zones: &["z9"], ..ep("198.18.1.10") }]);
    assert_eq!(backends(&translate(&s, &[none_match]), 0).len(), 1, "no hint for our zone: all used");
}

#[test]
fn prefer_same_node_uses_node_hints_then_zone_hints() {
    let mut s = svc("web", "198.19.0.10", &[("", 80, "TCP")]);
    s.spec.as_mut().unwrap().traffic_distribution = Some("PreferSameNode".into());
    let sl = slice("web", "w", "IPv4", &[("", 80, "TCP")], &[
        Ep { zones: &["z1"], nodes: &["node-a"], ..ep("198.18.1.10") },
        Ep { zones: &["z1"], nodes: &["node-b"], node: "node-b", ..ep("198.18.2.10") },
    ]);
    assert_eq!(backends(&translate(&s, &[sl]), 0), ["198.18.1.10:80"]);
    let sl = slice("web", "w", "IPv4", &[("", 80, "TCP")], &[
        Ep { zones: &["z1"], nodes: &["node-c"], node: "node-c", ..ep("198.18.3.10") },
        Ep { zones: &["z2"], nodes: &["node-b"], node: "node-b", ..ep("198.18.2.10") },
    ]);
    assert_eq!(backends(&translate(&s, &[sl]), 0), ["198.18.3.10:80"], "falls back to the zone");
}

#[test]
fn translator_reuses_unchanged_services_and_flags_frontend_conflicts() {
    let a = Arc::new(svc("a", "198.19.0.10", &[("", 80, "TCP")]));
    let b = Arc::new(svc("b", "198.19.0.10", &[("", 80, "TCP")]));
    let mut builder = SnapshotBuilder::new();
    builder.service(a).service(b);
    let snap = builder.build();
    let mut tr = Translator::new();
    let first = tr.compute(&snap, &node());
    assert_eq!(first.changed, Changed::All);
    assert_eq!(first.state.frontends.len(), 1);
    let owner = &first.state.frontends.values().next().unwrap().service;
    assert_eq!(owner.name, "a", "the first Service in key order owns a shared frontend");
    assert!(first.new_warnings.iter().any(|w| w.contains("default/b") && w.contains("already used")), "{:?}", first.new_warnings);
    assert_eq!(first.warning_count, 1);
    let again = tr.compute(&snap, &node());
    assert_eq!(first.state, again.state);
    assert!(again.changed.is_empty(), "an unchanged snapshot changes nothing: {:?}", again.changed);
    assert!(tr.recomputed().is_empty());
}

/// A small deterministic generator (xorshift), so the sequences below are
/// the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const EPS: [&str; 6] = ["198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.2.1", "198.18.2.2", "198.18.2.3"];

/// One random change to `builder`'s view: a Service (re)defined with one of
/// a few VIPs (so Services collide), removed, or its slice rewritten/removed.
fn random_step(rng: &mut Rng, services: &mut OrdMap<ObjectKey, Arc<Service>>, slices: &mut OrdMap<ObjectKey, sluice_k8s::SliceGroup>) {
    let name = format!("s{}", rng.below(8));
    let key = ObjectKey::new("default", name.clone());
    match rng.below(5) {
        0 | 1 => {
            let vip = format!("198.19.0.{}", 10 + rng.below(4));
            let port = if rng.below(2) == 0 { 80 } else { 443 };
            let mut s = svc(&name, &vip, &[("http", port, "TCP")]);
            if rng.below(3) == 0 {
                s.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
            }
            services.insert(key, Arc::new(s));
        }
        2 => {
            services.remove(&key);
        }
        3 => {
            let n = rng.below(4) as usize;
            let eps: Vec<Ep> = (0..n).map(|_| ep(EPS[rng.below(EPS.len() as u64) as usize])).collect();
            let sl = slice(&name, &format!("{name}-x"), "IPv4", &[("http", 8080, "TCP")], &eps);
            slices.insert(key, [Arc::new(sl)].into_iter().collect());
        }
        _ => {
            slices.remove(&key);
        }
    }
}

#[test]
fn incremental_translation_and_planning_equal_a_full_recompute_at_every_step() {
    use crate::plan::Planner;
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut services = OrdMap::new();
        let mut slices = OrdMap::new();
        let mut tr = Translator::new();
        let mut planner = Planner::adopt(Default::default());
        for step in 0..60 {
            random_step(&mut rng, &mut services, &mut slices);
            let snap = Snapshot { services: services.clone(), slices: slices.clone(), synced: true, ..Default::default() };
            let inc = tr.compute(&snap, &node());
            let full = Translator::new().compute(&snap, &node());
            assert_eq!(inc.state, full.state, "seed {seed} step {step}: desired state");
            let mut a: Vec<_> = tr.warnings();
            let mut b: Vec<_> = full.new_warnings.clone();
            assert_eq!(inc.warning_count, b.len(), "seed {seed} step {step}: warning count");
            a.sort();
            b.sort();
            assert_eq!(a, b, "seed {seed} step {step}: warnings");
            let diff = planner.plan_changed(&inc.state, &inc.changed);
            planner.commit(&diff, inc.state.clone());
            // What a fresh planner would program for the same state.
            let mut fresh = Planner::adopt(planner.programmed().clone());
            assert!(fresh.plan(&full.state).is_empty(), "seed {seed} step {step}: incremental plan missed a change");
            for (k, f) in &planner.programmed().frontends {
                let want = full.state.frontends.get(k).expect("programmed frontend is desired");
                let got: BTreeSet<BackendAddr> =
                    f.slots.iter().map(|id| planner.programmed().backends[id]).collect();
                assert_eq!(got, want.backends.iter().copied().collect(), "seed {seed} step {step}: backends of {k}");
            }
            assert_eq!(planner.programmed().frontends.len(), full.state.frontends.len());
            assert_eq!(planner.fill(), fresh.fill(), "seed {seed} step {step}: kept fill counts equal a recount");
        }
    }
}

#[test]
fn a_frontend_passes_to_the_next_claimant_when_its_owner_leaves() {
    let a = Arc::new(svc("a", "198.19.0.10", &[("", 80, "TCP")]));
    let b = Arc::new(svc("b", "198.19.0.10", &[("", 80, "TCP")]));
    let mut tr = Translator::new();
    // b first, then a arrives and takes the frontend (a < b).
    let mut builder = SnapshotBuilder::new();
    builder.service(b.clone());
    let only_b = builder.build();
    tr.compute(&only_b, &node());
    let mut both = only_b.clone();
    both.services.insert(ObjectKey::of(&a.metadata), a);
    let c = tr.compute(&both, &node());
    assert_eq!(c.state.frontends.values().next().unwrap().service.name, "a");
    assert!(matches!(&c.changed, Changed::Keys(k) if k.len() == 1));
    // a leaves: b gets it back.
    let c = tr.compute(&only_b, &node());
    assert_eq!(c.state.frontends.values().next().unwrap().service.name, "b");
    assert_eq!(c.warning_count, 0, "{:?}", tr.warnings());
}
