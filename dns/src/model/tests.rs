//! Table tests of the record model, one per rule of the Kubernetes DNS
//! specification 1.1.0 (sections in the names) and per CoreDNS behaviour
//! relied on where it is silent.

use std::{net::IpAddr, sync::Arc};

use hickory_proto::{
    op::ResponseCode,
    rr::{DNSClass, LowerName, Name, RData, Record, RecordType},
};
use sluice_k8s::{manifests::{parse_documents, Object}, Snapshot, SnapshotBuilder};

use super::*;

const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Namespace
metadata: {name: empty}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, protocol: TCP}, {name: dns, port: 53, protocol: UDP}, {port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  clusterIP: 198.19.0.11
  clusterIPs: [198.19.0.11, 2001:db8:2::11]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: v6only, namespace: default}
spec: {clusterIP: 2001:db8:2::12, clusterIPs: [2001:db8:2::12], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: nginx, namespace: default}
spec: {clusterIP: None, ports: [{name: web, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: nginx-a, namespace: default, labels: {kubernetes.io/service-name: nginx}}
addressType: IPv4
ports: [{name: web, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.18.0.20], hostname: web-0, conditions: {ready: true}}
- {addresses: [198.18.0.21], hostname: web-1}
- {addresses: [198.18.0.22], hostname: web-2, conditions: {ready: false}}
- {addresses: [198.18.0.23], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [198.18.0.24]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: nginx-b, namespace: default, labels: {kubernetes.io/service-name: nginx}}
addressType: IPv4
ports: [{name: web, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.18.0.24]}
---
apiVersion: v1
kind: Service
metadata: {name: nginx6, namespace: default}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: nginx6-a, namespace: default, labels: {kubernetes.io/service-name: nginx6}}
addressType: IPv6
endpoints:
- {addresses: ['2001:db8:1::20'], hostname: web-0}
---
apiVersion: v1
kind: Service
metadata: {name: notready, namespace: default}
spec: {clusterIP: None, publishNotReadyAddresses: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: notready-a, namespace: default, labels: {kubernetes.io/service-name: notready}}
addressType: IPv4
endpoints:
- {addresses: [198.18.0.30], hostname: db-0, conditions: {ready: false}}
- {addresses: [198.18.0.31], hostname: db-1}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: db.example.org}
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: default}
spec: {type: ExternalName, externalName: web.default.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {clusterIP: 198.19.0.53, ports: [{name: dns, port: 53, protocol: UDP}]}
";

fn snapshot(yaml: &str) -> Snapshot {
    let (objects, warnings) = parse_documents("test.yaml", yaml);
    assert!(warnings.is_empty(), "test manifests should parse, saw {warnings:?}");
    let mut b = SnapshotBuilder::new();
    for o in objects {
        match o {
            Object::Service(s) => b.service(s),
            Object::EndpointSlice(s) => b.slice(s),
            Object::Namespace(n) => b.namespace(n),
            Object::Node(n) => b.node(n),
        };
    }
    b.synced(true);
    b.build()
}

fn model_with(yaml: &str, pods: PodsMode) -> ClusterModel {
    let mut cfg = Config::new("cluster.local").unwrap();
    cfg.pods = pods;
    ClusterModel::build(&snapshot(yaml), &cfg, &mut Memo::default())
}

fn model() -> ClusterModel {
    model_with(CLUSTER, PodsMode::Insecure)
}

fn ask(m: &ClusterModel, name: &str, qtype: RecordType) -> Lookup {
    let original = Name::from_ascii(name).unwrap();
    m.lookup(&LowerName::new(&original), &original, qtype, DNSClass::IN)
}

fn authoritative(m: &ClusterModel, name: &str, qtype: RecordType) -> Answer {
    match ask(m, name, qtype) {
        Lookup::Authoritative(a) => a,
        other => panic!("{name} {qtype}: expected an authoritative answer, saw {other:?}"),
    }
}

fn rdata(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(|r| format!("{} {}", r.record_type(), r.data)).collect();
    v.sort();
    v
}

fn ips(records: &[Record]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[track_caller]
fn assert_positive(m: &ClusterModel, name: &str, qtype: RecordType, want: &[&str]) {
    let a = authoritative(m, name, qtype);
    assert_eq!(a.rcode, ResponseCode::NoError, "{name} {qtype}: rcode");
    assert!(a.authoritative, "{name} {qtype}: cluster answers are authoritative");
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(rdata(&a.answers), want, "{name} {qtype}: answer section");
}

#[track_caller]
fn assert_negative(m: &ClusterModel, name: &str, qtype: RecordType, rcode: ResponseCode) {
    let a = authoritative(m, name, qtype);
    assert_eq!(a.rcode, rcode, "{name} {qtype}: expected {rcode}, answers {:?}", rdata(&a.answers));
    assert!(a.answers.is_empty(), "{name} {qtype}: negative answers carry no records, saw {:?}", rdata(&a.answers));
    assert_eq!(a.authorities.len(), 1, "{name} {qtype}: the SOA goes in the authority section");
    assert_eq!(a.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(a.authorities[0].name, Name::from_ascii("cluster.local.").unwrap());
}

#[test]
fn spec_2_2_schema_version_txt_record() {
    assert_positive(&model(), "dns-version.cluster.local.", RecordType::TXT, &["TXT 1.1.0"]);
}

#[test]
fn spec_2_3_1_cluster_ip_service_a_record() {
    assert_positive(&model(), "web.default.svc.cluster.local.", RecordType::A, &["A 198.19.0.10"]);
}

#[test]
fn spec_2_3_1_single_stack_service_has_no_aaaa_record_nodata() {
    assert_negative(&model(), "web.default.svc.cluster.local.", RecordType::AAAA, ResponseCode::NoError);
}

#[test]
fn spec_2_3_1_dual_stack_service_has_a_and_aaaa() {
    let m = model();
    assert_positive(&m, "dual.default.svc.cluster.local.", RecordType::A, &["A 198.19.0.11"]);
    assert_positive(&m, "dual.default.svc.cluster.local.", RecordType::AAAA, &["AAAA 2001:db8:2::11"]);
    assert_positive(&m, "v6only.default.svc.cluster.local.", RecordType::AAAA, &["AAAA 2001:db8:2::12"]);
    assert_negative(&m, "v6only.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError);
}

#[test]
fn spec_2_3_2_srv_record_per_named_port_of_a_cluster_ip_service() {
    let m = model();
    let a = authoritative(&m, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(rdata(&a.answers), vec!["SRV 0 100 80 web.default.svc.cluster.local."]);
    assert_eq!(ips(&a.additionals), vec![ip("198.19.0.10")], "SRV target address goes in the additional section");
    assert_positive(&m, "_dns._udp.web.default.svc.cluster.local.", RecordType::SRV, &["SRV 0 100 53 web.default.svc.cluster.local."]);
}

#[test]
fn spec_2_3_2_srv_names_that_do_not_match_a_port() {
    let m = model();
    // Wrong protocol, unknown port name: the name does not exist.
    assert_negative(&m, "_http._udp.web.default.svc.cluster.local.", RecordType::SRV, ResponseCode::NXDomain);
    assert_negative(&m, "_nope._tcp.web.default.svc.cluster.local.", RecordType::SRV, ResponseCode::NXDomain);
    // `_tcp.<svc>` exists as an empty non-terminal: NODATA.
    assert_negative(&m, "_tcp.web.default.svc.cluster.local.", RecordType::SRV, ResponseCode::NoError);
    // A named port has no A record of its own.
    assert_negative(&m, "_http._tcp.web.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError);
}

#[test]
fn coredns_srv_at_the_service_name_lists_every_port() {
    let a = authoritative(&model(), "web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        rdata(&a.answers),
        vec![
            "SRV 0 33 53 web.default.svc.cluster.local.",
            "SRV 0 33 80 web.default.svc.cluster.local.",
            "SRV 0 33 9000 web.default.svc.cluster.local.",
        ]
    );
}

#[test]
fn spec_2_3_3_ptr_record_of_a_cluster_ip() {
    let m = model();
    assert_positive(&m, "10.0.19.198.in-addr.arpa.", RecordType::PTR, &["PTR web.default.svc.cluster.local."]);
    let v6 = Name::from(ip("2001:db8:2::11")).to_ascii();
    assert_positive(&m, &v6, RecordType::PTR, &["PTR dual.default.svc.cluster.local."]);
}

#[test]
fn spec_2_4_1_headless_service_a_record_per_ready_endpoint() {
    let a = authoritative(&model(), "nginx.default.svc.cluster.local.", RecordType::A);
    // web-2 (not ready) and the terminating endpoint are left out; 198.18.0.24 is in two slices but answered once.
    assert_eq!(ips(&a.answers), vec![ip("198.18.0.20"), ip("198.18.0.21"), ip("198.18.0.24")]);
}

#[test]
fn spec_2_4_1_headless_ipv6_endpoints_are_aaaa_records() {
    let m = model();
    assert_positive(&m, "nginx6.default.svc.cluster.local.", RecordType::AAAA, &["AAAA 2001:db8:1::20"]);
    assert_negative(&m, "nginx6.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError);
    assert_positive(&m, "web-0.nginx6.default.svc.cluster.local.", RecordType::AAAA, &["AAAA 2001:db8:1::20"]);
}

#[test]
fn spec_2_4_1_hostname_records_of_headless_endpoints() {
    let m = model();
    assert_positive(&m, "web-0.nginx.default.svc.cluster.local.", RecordType::A, &["A 198.18.0.20"]);
    assert_positive(&m, "web-1.nginx.default.svc.cluster.local.", RecordType::A, &["A 198.18.0.21"]);
    // Not ready: no record, and the name does not exist.
    assert_negative(&m, "web-2.nginx.default.svc.cluster.local.", RecordType::A, ResponseCode::NXDomain);
}

#[test]
fn coredns_endpoint_without_hostname_is_named_by_its_dashed_address() {
    let m = model();
    assert_positive(&m, "198-18-0-24.nginx.default.svc.cluster.local.", RecordType::A, &["A 198.18.0.24"]);
}

#[test]
fn spec_2_4_2_srv_record_per_ready_endpoint_and_named_port() {
    let a = authoritative(&model(), "_web._tcp.nginx.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        rdata(&a.answers),
        vec![
            "SRV 0 33 8080 198-18-0-24.nginx.default.svc.cluster.local.",
            "SRV 0 33 8080 web-0.nginx.default.svc.cluster.local.",
            "SRV 0 33 8080 web-1.nginx.default.svc.cluster.local.",
        ]
    );
    assert_eq!(ips(&a.additionals), vec![ip("198.18.0.20"), ip("198.18.0.21"), ip("198.18.0.24")]);
}

#[test]
fn spec_2_4_3_ptr_records_of_headless_endpoints() {
    let m = model();
    assert_positive(&m, "20.0.18.198.in-addr.arpa.", RecordType::PTR, &["PTR web-0.nginx.default.svc.cluster.local."]);
    assert_positive(&m, "24.0.18.198.in-addr.arpa.", RecordType::PTR, &["PTR 198-18-0-24.nginx.default.svc.cluster.local."]);
    let v6 = Name::from(ip("2001:db8:1::20")).to_ascii();
    assert_positive(&m, &v6, RecordType::PTR, &["PTR web-0.nginx6.default.svc.cluster.local."]);
}

#[test]
fn ptr_of_a_not_ready_endpoint_or_unknown_address_falls_through_to_upstream() {
    let m = model();
    assert_eq!(ask(&m, "22.0.18.198.in-addr.arpa.", RecordType::PTR), Lookup::NotInZone);
    assert_eq!(ask(&m, "1.2.0.192.in-addr.arpa.", RecordType::PTR), Lookup::NotInZone);
}

#[test]
fn publish_not_ready_addresses_includes_not_ready_endpoints() {
    let m = model();
    let a = authoritative(&m, "notready.default.svc.cluster.local.", RecordType::A);
    assert_eq!(ips(&a.answers), vec![ip("198.18.0.30"), ip("198.18.0.31")]);
    assert_positive(&m, "db-0.notready.default.svc.cluster.local.", RecordType::A, &["A 198.18.0.30"]);
}

#[test]
fn spec_2_5_external_name_is_a_cname_whose_outside_target_is_resolved_upstream() {
    let m = model();
    let a = authoritative(&m, "ext.default.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a.answers), vec!["CNAME db.example.org."]);
    assert_eq!(a.external_target, Some(Name::from_ascii("db.example.org.").unwrap()));
    // Asked for the CNAME itself: nothing to chase.
    let c = authoritative(&m, "ext.default.svc.cluster.local.", RecordType::CNAME);
    assert_eq!(rdata(&c.answers), vec!["CNAME db.example.org."]);
    assert_eq!(c.external_target, None);
}

#[test]
fn external_name_inside_the_zone_is_chased_in_the_same_answer() {
    let a = authoritative(&model(), "alias.default.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a.answers), vec!["A 198.19.0.10", "CNAME web.default.svc.cluster.local."]);
    assert_eq!(a.external_target, None);
    assert_eq!(a.answers[0].record_type(), RecordType::CNAME, "the CNAME comes first");
}

#[test]
fn nxdomain_for_names_that_do_not_exist() {
    let m = model();
    for name in [
        "nope.default.svc.cluster.local.",
        "web.nonexistent.svc.cluster.local.",
        "nonexistent.svc.cluster.local.",
        "deeper.web.default.svc.cluster.local.",
        "whatever.cluster.local.",
    ] {
        assert_negative(&m, name, RecordType::A, ResponseCode::NXDomain);
    }
}

#[test]
fn nodata_for_names_that_exist_without_the_type() {
    let m = model();
    for (name, qtype) in [
        ("default.svc.cluster.local.", RecordType::A),
        ("empty.svc.cluster.local.", RecordType::A),
        ("svc.cluster.local.", RecordType::A),
        ("web.default.svc.cluster.local.", RecordType::TXT),
        ("web.default.svc.cluster.local.", RecordType::MX),
        ("dns-version.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::A),
    ] {
        assert_negative(&m, name, qtype, ResponseCode::NoError);
    }
}

#[test]
fn matching_is_case_insensitive_and_answers_keep_the_question_case() {
    let m = model();
    let asked = "WeB.DeFault.SVC.Cluster.Local.";
    let a = authoritative(&m, asked, RecordType::A);
    assert_eq!(ips(&a.answers), vec![ip("198.19.0.10")]);
    assert!(
        a.answers[0].name.eq_case(&Name::from_ascii(asked).unwrap()),
        "owner should be spelt as asked, saw {}",
        a.answers[0].name
    );
}

#[test]
fn coredns_pods_insecure_answers_dashed_addresses() {
    let m = model();
    assert_positive(&m, "198-18-0-5.default.pod.cluster.local.", RecordType::A, &["A 198.18.0.5"]);
    assert_positive(&m, "2001-db8-1--5.default.pod.cluster.local.", RecordType::AAAA, &["AAAA 2001:db8:1::5"]);
    assert_negative(&m, "198-18-0-5.default.pod.cluster.local.", RecordType::AAAA, ResponseCode::NoError);
    assert_negative(&m, "not-an-ip.default.pod.cluster.local.", RecordType::A, ResponseCode::NXDomain);
    assert_negative(&m, "x.198-18-0-5.default.pod.cluster.local.", RecordType::A, ResponseCode::NXDomain);
    assert_negative(&m, "default.pod.cluster.local.", RecordType::A, ResponseCode::NoError);
}

#[test]
fn coredns_pods_disabled_has_no_pod_records() {
    let m = model_with(CLUSTER, PodsMode::Disabled);
    assert_negative(&m, "198-18-0-5.default.pod.cluster.local.", RecordType::A, ResponseCode::NXDomain);
}

#[test]
fn coredns_soa_and_ns_at_the_apex_and_ns_address_from_kube_dns() {
    let m = model();
    let soa = authoritative(&m, "cluster.local.", RecordType::SOA);
    assert_eq!(soa.answers.len(), 1);
    let RData::SOA(s) = &soa.answers[0].data else { panic!("expected SOA, saw {:?}", soa.answers) };
    assert_eq!(s.mname.to_ascii(), "ns.dns.cluster.local.");
    assert_eq!(s.rname.to_ascii(), "hostmaster.cluster.local.");
    assert_eq!(s.minimum, 5, "the negative TTL is the record TTL");
    assert_positive(&m, "cluster.local.", RecordType::NS, &["NS ns.dns.cluster.local."]);
    assert_positive(&m, "ns.dns.cluster.local.", RecordType::A, &["A 198.19.0.53"]);
}

#[test]
fn records_carry_the_configured_ttl() {
    let mut cfg = Config::new("cluster.local").unwrap();
    cfg.ttl = 30;
    let m = ClusterModel::build(&snapshot(CLUSTER), &cfg, &mut Memo::default());
    let a = authoritative(&m, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(a.answers[0].ttl, 30);
}

#[test]
fn rfc8482_any_question_returns_one_rrset() {
    let a = authoritative(&model(), "dual.default.svc.cluster.local.", RecordType::ANY);
    let types: HashSet<RecordType> = a.answers.iter().map(Record::record_type).collect();
    assert_eq!(types.len(), 1, "one RRset, not every record of the name: {:?}", rdata(&a.answers));
    assert!(!a.answers.is_empty());
    assert_negative(&model(), "_tcp.web.default.svc.cluster.local.", RecordType::ANY, ResponseCode::NoError);
    assert_negative(&model(), "nope.default.svc.cluster.local.", RecordType::ANY, ResponseCode::NXDomain);
}

#[test]
fn rfc8020_empty_non_terminals_are_nodata_not_nxdomain() {
    let m = model();
    for name in ["dns.cluster.local.", "svc.cluster.local.", "pod.cluster.local.", "cluster.local.", "_tcp.nginx.default.svc.cluster.local."] {
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::TXT] {
            if name == "cluster.local." && qtype == RecordType::TXT {
                continue;
            }
            assert_negative(&m, name, qtype, ResponseCode::NoError);
        }
    }
    // The reverse of the rule: a name below which nothing exists is NXDOMAIN.
    assert_negative(&m, "nope.dns.cluster.local.", RecordType::A, ResponseCode::NXDomain);
}

#[test]
fn answers_copy_at_most_the_records_asked_for() {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: many, namespace: default}\nspec: {clusterIP: None, ports: [{name: web, port: 80}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: many-a, namespace: default, labels: {kubernetes.io/service-name: many}}\naddressType: IPv4\n\
         ports: [{name: web, port: 80}]\nendpoints:\n",
    );
    for i in 0..1000 {
        yaml.push_str(&format!("- {{addresses: [198.18.{}.{}]}}\n", i / 250, i % 250 + 1));
    }
    let m = model_with(&yaml, PodsMode::Insecure);
    let original = Name::from_ascii("many.default.svc.cluster.local.").unwrap();
    let lower = LowerName::new(&original);
    let Lookup::Authoritative(a) = m.lookup_limited(&lower, &original, RecordType::A, DNSClass::IN, 103) else { panic!("authoritative") };
    assert_eq!(a.answers.len(), 103);
    let Lookup::Authoritative(a) = m.lookup_limited(&lower, &original, RecordType::SRV, DNSClass::IN, 103) else { panic!("authoritative") };
    assert!(a.answers.len() == 103 && a.additionals.len() <= 103, "{} answers, {} additionals", a.answers.len(), a.additionals.len());
    let Lookup::Authoritative(a) = m.lookup(&lower, &original, RecordType::A, DNSClass::IN) else { panic!("authoritative") };
    assert_eq!(a.answers.len(), 1000, "unlimited: every record");
}

#[test]
fn names_outside_the_zone_are_forwarded() {
    let m = model();
    assert_eq!(ask(&m, "example.org.", RecordType::A), Lookup::NotInZone);
    assert_eq!(ask(&m, "cluster.local.example.org.", RecordType::A), Lookup::NotInZone);
    assert_eq!(ask(&m, "local.", RecordType::A), Lookup::NotInZone);
}

#[test]
fn cluster_names_are_servfail_until_the_first_sync() {
    let m = ClusterModel::unsynced(&Config::new("cluster.local").unwrap());
    assert_eq!(ask(&m, "web.default.svc.cluster.local.", RecordType::A), Lookup::NotSynced);
    assert_eq!(ask(&m, "example.org.", RecordType::A), Lookup::NotInZone);
}

#[test]
fn other_classes_are_refused() {
    let m = model();
    let original = Name::from_ascii("web.default.svc.cluster.local.").unwrap();
    let got = m.lookup(&LowerName::new(&original), &original, RecordType::A, DNSClass::CH);
    assert!(matches!(got, Lookup::Authoritative(a) if a.rcode == ResponseCode::Refused));
}

#[test]
fn a_custom_zone_is_honoured() {
    let snap = snapshot(CLUSTER);
    let m = ClusterModel::build(&snap, &Config::new("Corp.Example").unwrap(), &mut Memo::default());
    let a = authoritative(&m, "web.default.svc.corp.example.", RecordType::A);
    assert_eq!(ips(&a.answers), vec![ip("198.19.0.10")]);
    assert_eq!(ask(&m, "web.default.svc.cluster.local.", RecordType::A), Lookup::NotInZone);
}

#[test]
fn invalid_objects_are_skipped_and_the_rest_is_served() {
    let yaml = r"
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: default}
spec: {type: ExternalName, externalName: 'not a name!'}
---
apiVersion: v1
kind: Service
metadata: {name: good, namespace: default}
spec: {clusterIP: 198.19.0.99}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: good-x, namespace: default, labels: {kubernetes.io/service-name: good}}
addressType: IPv4
endpoints: [{addresses: [banana]}]
";
    let m = model_with(yaml, PodsMode::Insecure);
    assert_positive(&m, "good.default.svc.cluster.local.", RecordType::A, &["A 198.19.0.99"]);
    assert_negative(&m, "bad.default.svc.cluster.local.", RecordType::A, ResponseCode::NoError);
}

#[test]
fn unchanged_services_reuse_their_records_across_rebuilds() {
    let snap = snapshot(CLUSTER);
    let cfg = Config::new("cluster.local").unwrap();
    let mut memo = Memo::default();
    let _ = ClusterModel::build(&snap, &cfg, &mut memo);
    let key = sluice_k8s::ObjectKey::new("default", "nginx");
    let before = Arc::as_ptr(&memo.services[&key].records);
    let serial_before = memo.serial;
    let _ = ClusterModel::build(&snap, &cfg, &mut memo);
    assert_eq!(Arc::as_ptr(&memo.services[&key].records), before, "same objects: memoised records reused");
    assert!(memo.serial > serial_before, "the SOA serial grows on every rebuild");
}

#[test]
fn an_endpoint_change_is_visible_in_the_next_model() {
    let cfg = Config::new("cluster.local").unwrap();
    let mut memo = Memo::default();
    let m1 = ClusterModel::build(&snapshot(CLUSTER), &cfg, &mut memo);
    assert_eq!(ips(&authoritative(&m1, "nginx.default.svc.cluster.local.", RecordType::A).answers).len(), 3);
    let changed = CLUSTER.replace("{addresses: [198.18.0.21], hostname: web-1}", "{addresses: [198.18.0.21], hostname: web-1, conditions: {ready: false}}");
    let m2 = ClusterModel::build(&snapshot(&changed), &cfg, &mut memo);
    assert_eq!(
        ips(&authoritative(&m2, "nginx.default.svc.cluster.local.", RecordType::A).answers),
        vec![ip("198.18.0.20"), ip("198.18.0.24")]
    );
}

#[test]
fn dashed_and_undashed_addresses_round_trip() {
    for s in ["198.18.0.5", "2001:db8:1::5", "::1", "2001:db8::"] {
        let a = ip(s);
        assert_eq!(undash(&dashed(a)), Some(a), "{s} -> {}", dashed(a));
    }
    assert_eq!(undash("1-2-3"), None);
    assert_eq!(undash("web-0"), None);
}

#[test]
fn the_same_record_from_two_endpoints_or_ports_is_answered_once() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: dup, namespace: default}\n\
        spec: {clusterIP: None, ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]}\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
        metadata: {name: dup-a, namespace: default, labels: {kubernetes.io/service-name: dup}}\naddressType: IPv4\n\
        ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]\n\
        endpoints:\n- {addresses: [198.18.0.30], hostname: a}\n- {addresses: [198.18.0.30], hostname: b}\n";
    let m = model_with(yaml, PodsMode::Insecure);
    let a = authoritative(&m, "dup.default.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&a.answers), vec!["A 198.18.0.30"], "one address under two hostnames: one A record");
    let srv = authoritative(&m, "dup.default.svc.cluster.local.", RecordType::SRV);
    let mut got = rdata(&srv.answers);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), srv.answers.len(), "no SRV record twice: {:?}", rdata(&srv.answers));
}
