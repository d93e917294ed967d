//! Support for tests and the fuzz target: an engine over a small synthetic
//! cluster without sockets, and one fuzz iteration of the query path.

use std::{net::SocketAddr, sync::Arc};

use hickory_proto::op::Message;
use hickory_server::net::xfer::Protocol;
use sluice_k8s::{manifests::{parse_documents, Object}, SnapshotBuilder};

use crate::{
    engine::{Engine, Local},
    forward::{ForwardConfig, Forwarder},
    metrics::Metrics,
    model::{ClusterModel, Config, Memo},
};

/// An engine (no upstreams) whose model is built from `yaml`.
///
/// # Panics
/// When `yaml` holds objects the manifests reader rejects.
pub fn engine_with(yaml: &str) -> Engine {
    let (objects, warnings) = parse_documents("testing.yaml", yaml);
    assert!(warnings.is_empty(), "test manifests: {warnings:?}");
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
    let cfg = Config::new("cluster.local").expect("valid zone");
    let metrics = Arc::new(Metrics::default());
    let engine = Engine::new(cfg.clone(), Forwarder::new(ForwardConfig::default(), metrics.clone()), metrics);
    engine.set_model(ClusterModel::build(&b.build(), &cfg, &mut Memo::default()));
    engine
}

/// [`engine_with`] over the benchmark cluster (64 Services and a headless one).
pub fn engine_with_cluster() -> Engine {
    engine_with(&crate::bench::cluster_manifests(64))
}

/// One fuzz iteration: `data` as a UDP and as a TCP query. Any reply must be
/// a decodable DNS message with QR set and the query's id.
///
/// # Panics
/// When a reply is not a valid response (that is the bug the fuzzer looks for).
pub fn fuzz_one(engine: &Engine, data: &[u8]) {
    let src: SocketAddr = ([127, 0, 0, 1], 5353).into();
    let mut out = Vec::new();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        if let Local::Reply = engine.handle_packet(data.to_vec(), src, protocol, &mut out) {
            let reply = Message::from_vec(&out).unwrap_or_else(|e| panic!("reply does not decode: {e}; reply {out:?}"));
            assert_eq!(reply.metadata.id, u16::from_be_bytes([data[0], data[1]]), "reply id");
            if protocol == Protocol::Udp {
                assert!(out.len() <= usize::from(crate::engine::MAX_UDP_PAYLOAD), "UDP reply too large: {}", out.len());
            }
        }
    }
}

/// One fuzz iteration of the relay of an upstream's response: `data` as
/// what an upstream sent back. Whatever it is, either it is refused or the
/// client gets a well-formed message within its limit, with its own id.
///
/// # Panics
/// When a relayed message is malformed or too large (the bug looked for).
pub fn fuzz_upstream(data: &[u8]) {
    use crate::wire;
    let Ok(walk) = wire::walk(data) else { return };
    let _ = wire::cache_ttl(data, &walk, 3600, 1800);
    // The client's query: the upstream's own question when it has one, so the relay is attempted.
    let mut query = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(data.get(12..walk.question_end).unwrap_or_default());
    if walk.qdcount != 1 {
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
    }
    let Ok(question_end) = wire::question_end(&query) else { return };
    let edns = hickory_proto::op::Edns::new();
    for (limit, edns) in [(512, None), (1232, Some(&edns)), (65535, Some(&edns))] {
        let client = wire::Client { query: &query, question_end, edns, limit };
        let mut out = Vec::new();
        for aging in [None, Some(wire::Aging { age: 7, cap: 30 })] {
            if wire::relay(data, &walk, &client, aging, &mut out).is_ok() {
                assert!(out.len() <= limit, "relayed {} bytes over the limit {limit}", out.len());
                let w = wire::walk(&out).unwrap_or_else(|e| panic!("relayed message does not walk: {e}"));
                assert_eq!(out[..2], [0xbe, 0xef], "the client's id");
                assert_eq!(w.rrs.iter().filter(|r| r.rtype == 41).count(), usize::from(edns.is_some()), "exactly our OPT, or none");
            }
        }
    }
}
