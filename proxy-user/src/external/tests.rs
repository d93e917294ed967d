use super::*;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus};
use sluice_k8s::slice::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_k8s::SnapshotBuilder;

fn node() -> NodeInfo {
    NodeInfo { name: "node-a".into(), zone: None }
}

fn cfg() -> ExternalConfig {
    ExternalConfig {
        node_ips: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 101)],
        nodeport_addresses: Vec::new(),
        lb_algorithm: LbAlgorithm::Random,
        maglev_size: DEFAULT_MAGLEV_SIZE,
    }
}

fn svc(ty: &str, node_port: Option<i32>) -> Service {
    Service {
        metadata: ObjectMeta { name: Some("web".into()), namespace: Some("default".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            type_: Some(ty.into()),
            cluster_ip: Some("198.19.0.10".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                node_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_lb_ip(mut s: Service, ip: &str) -> Service {
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress { ip: Some(ip.into()), ..Default::default() }]),
        }),
        ..Default::default()
    });
    s
}

fn slice(eps: &[(&str, &str, bool)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some("default".into()),
            labels: Some([(semantics::SERVICE_NAME_LABEL.to_owned(), "web".to_owned())].into()),
            ..Default::default()
        },
        // The label, as a slice built in code has it (`service()` falls back to it).
        service_name: None,
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: eps
            .iter()
            .map(|(ip, node, ready)| Endpoint {
                addresses: (*ip).into(),
                conditions: Some(EndpointConditions { ready: Some(*ready), serving: Some(*ready), terminating: Some(false) }),
                node_name: Some((*node).into()),
                ..Default::default()
            })
            .collect(),
    }
}

fn two_nodes() -> EndpointSlice {
    slice(&[("198.18.1.10", "node-a", true), ("198.18.2.10", "node-b", true)])
}

fn translate(s: &Service, sl: &[EndpointSlice], c: &ExternalConfig) -> ServiceTranslation {
    let refs: Vec<&EndpointSlice> = sl.iter().collect();
    external_frontends(&ObjectKey::of(&s.metadata), s, &refs, &node(), c)
}

fn keys(t: &ServiceTranslation) -> Vec<String> {
    t.frontends.iter().map(|(k, _)| k.to_string()).collect()
}

fn backends_of(t: &ServiceTranslation, key: &str) -> Vec<String> {
    let (_, f) = t.frontends.iter().find(|(k, _)| k.to_string() == key).unwrap_or_else(|| panic!("no frontend {key} in {:?}", keys(t)));
    f.backends.iter().map(ToString::to_string).collect()
}

#[test]
fn node_port_answers_on_every_node_address_for_outside_and_for_sockets() {
    let t = translate(&svc("NodePort", Some(30080)), &[two_nodes()], &cfg());
    assert_eq!(
        keys(&t),
        [
            "192.0.2.1:30080/TCP (external)",
            "192.0.2.1:30080/TCP",
            "192.0.2.101:30080/TCP (external)",
            "192.0.2.101:30080/TCP"
        ]
    );
    assert_eq!(backends_of(&t, "192.0.2.1:30080/TCP (external)"), ["198.18.1.10:8080", "198.18.2.10:8080"]);
}

#[test]
fn node_port_addresses_select_which_node_addresses_answer() {
    let mut c = cfg();
    c.nodeport_addresses = vec!["192.0.2.100/30".parse().unwrap()];
    let t = translate(&svc("NodePort", Some(30080)), &[two_nodes()], &c);
    assert_eq!(keys(&t), ["192.0.2.101:30080/TCP (external)", "192.0.2.101:30080/TCP"]);
}

#[test]
fn cluster_ip_services_get_no_external_frontends() {
    let t = translate(&svc("ClusterIP", None), &[two_nodes()], &cfg());
    assert!(t.frontends.is_empty(), "{:?}", keys(&t));
}

#[test]
fn external_ips_are_served_at_the_service_port_even_for_cluster_ip_services() {
    let mut s = svc("ClusterIP", None);
    s.spec.as_mut().unwrap().external_ips = Some(vec!["203.0.113.200".into(), "2001:db8::1".into(), "bogus".into()]);
    let t = translate(&s, &[two_nodes()], &cfg());
    assert_eq!(keys(&t), ["203.0.113.200:80/TCP (external)", "203.0.113.200:80/TCP"]);
    assert_eq!(t.warnings.len(), 2, "IPv6 and invalid addresses are named: {:?}", t.warnings);
}

#[test]
fn load_balancer_ingress_ips_and_node_ports_both_answer() {
    let s = with_lb_ip(svc("LoadBalancer", Some(30080)), "198.51.100.7");
    let t = translate(&s, &[two_nodes()], &cfg());
    assert!(keys(&t).contains(&"198.51.100.7:80/TCP (external)".to_owned()), "{:?}", keys(&t));
    assert!(keys(&t).contains(&"192.0.2.1:30080/TCP (external)".to_owned()), "{:?}", keys(&t));
}

#[test]
fn external_traffic_policy_local_keeps_only_local_endpoints_for_outside_traffic() {
    let mut s = svc("NodePort", Some(30080));
    s.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    let t = translate(&s, &[two_nodes()], &cfg());
    assert_eq!(backends_of(&t, "192.0.2.1:30080/TCP (external)"), ["198.18.1.10:8080"]);
    // Pods and the host reaching the NodePort are short-circuited to every endpoint.
    assert_eq!(backends_of(&t, "192.0.2.1:30080/TCP"), ["198.18.1.10:8080", "198.18.2.10:8080"]);
}

#[test]
fn local_policy_without_local_endpoints_gives_an_empty_external_frontend() {
    let mut s = svc("NodePort", Some(30080));
    s.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    let t = translate(&s, &[slice(&[("198.18.2.10", "node-b", true)])], &cfg());
    assert!(backends_of(&t, "192.0.2.1:30080/TCP (external)").is_empty(), "must reject, not forward elsewhere");
}

fn snapshot(s: Service, sl: EndpointSlice) -> Snapshot {
    let mut b = SnapshotBuilder::new();
    b.service(std::sync::Arc::new(s)).slice(std::sync::Arc::new(sl));
    b.build()
}

#[test]
fn source_ranges_apply_to_load_balancer_ips_only() {
    let mut s = with_lb_ip(svc("LoadBalancer", Some(30080)), "198.51.100.7");
    s.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec!["203.0.113.0/28".into(), "nope".into()]);
    let x = ExternalExtras::compute(&snapshot(s, two_nodes()), &node(), &cfg());
    let lb = x.frontends.iter().find(|(k, _)| k.port == 80).expect("LB frontend");
    assert_eq!(lb.1, &vec!["203.0.113.0/28".parse::<Ipv4Network>().unwrap()]);
    let np = x.frontends.iter().find(|(k, _)| k.port == 30080).expect("NodePort frontend");
    assert!(np.1.is_empty(), "NodePorts are not restricted by loadBalancerSourceRanges");
    assert!(x.warnings.iter().any(|w| w.contains("nope")), "{:?}", x.warnings);
    assert!(x.node_ports.contains(&(30080, Proto::Tcp)));
}

#[test]
fn health_check_counts_ready_local_endpoints_and_flips_between_200_and_503() {
    let mut s = svc("LoadBalancer", Some(30080));
    let spec = s.spec.as_mut().unwrap();
    spec.external_traffic_policy = Some("Local".into());
    spec.health_check_node_port = Some(32000);
    let x = ExternalExtras::compute(&snapshot(s.clone(), two_nodes()), &node(), &cfg());
    let hc = &x.health_checks[&32000];
    assert_eq!(hc.local_endpoints, 1);
    let (code, body) = health_response(hc);
    assert_eq!(code, 200);
    assert!(body.contains("\"localEndpoints\":1"), "{body}");
    let none = slice(&[("198.18.1.10", "node-a", false), ("198.18.2.10", "node-b", true)]);
    let x = ExternalExtras::compute(&snapshot(s, none), &node(), &cfg());
    let (code, body) = health_response(&x.health_checks[&32000]);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"localEndpoints\":0"), "{body}");
}

fn names(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("198.18.{}.{}:8080", i / 200, i % 200 + 1).into_bytes()).collect()
}

#[test]
fn maglev_table_is_full_balanced_and_deterministic() {
    let t = maglev_table(&names(5), 1021);
    assert_eq!(t.len(), 1021);
    let mut counts = [0usize; 5];
    for i in &t {
        counts[*i] += 1;
    }
    for c in counts {
        assert!((194..=214).contains(&c), "each backend should own about 1/5 of the buckets: {counts:?}");
    }
    assert_eq!(t, maglev_table(&names(5), 1021), "same names, same table on every node");
}

#[test]
fn maglev_removing_a_backend_moves_few_other_buckets() {
    let all = names(10);
    let before = maglev_table(&all, 1021);
    let mut fewer = all.clone();
    let removed = fewer.remove(3);
    let after = maglev_table(&fewer, 1021);
    let name_before = |i: usize| &all[before[i]];
    let mut moved_other = 0;
    for i in 0..1021 {
        if *name_before(i) != removed && fewer[after[i]] != *name_before(i) {
            moved_other += 1;
        }
    }
    // Maglev guarantees minimal, not zero, disruption; a few percent is its known bound.
    assert!(moved_other < 1021 / 20, "{moved_other} buckets of surviving backends moved");
}

#[test]
fn maglev_size_must_be_prime() {
    assert!(is_prime(1021) && is_prime(16381) && is_prime(251));
    assert!(!is_prime(1000) && !is_prime(1) && !is_prime(65536));
}
