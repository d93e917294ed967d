//! The query path: a packet in, a response out. Cluster names and cache hits
//! are answered synchronously from the current [`ClusterModel`] (swapped
//! atomically on every snapshot); only forwarding needs the network, which
//! is what [`Local::Pending`] hands to the caller.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use arc_swap::ArcSwap;
use hickory_proto::{
    op::{Edns, MessageType, Metadata, OpCode, ResponseCode},
    rr::{rdata::HINFO, LowerName, Name, RData, Record, RecordType},
};
use hickory_server::{net::xfer::Protocol, server::Request};

use crate::{
    acl::{Acl, AllowRecursion},
    forward::{Forwarded, Forwarder},
    metrics::Metrics,
    model::{Answer, ClusterModel, Config, Lookup},
    wire,
};

/// Largest UDP response sent, whatever the client advertises (DNS flag day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// The smallest resource record on the wire (compressed owner, no data).
const MIN_RECORD_LEN: usize = 12;

/// What the synchronous part of the query path decided.
pub enum Local {
    /// The response is in the output buffer.
    Reply,
    /// Forwarding is needed: finish with [`Engine::complete`].
    Pending(Box<Pending>),
    /// Not answerable (too short to carry an id, or a response): dropped.
    Drop,
}

/// A query waiting for the upstreams.
pub struct Pending {
    request: Request,
    /// Already-known part of the answer (the CNAME of an ExternalName Service).
    partial: Option<Answer>,
    started: Instant,
}

/// The DNS server's state shared by every socket.
pub struct Engine {
    cfg: Config,
    model: ArcSwap<ClusterModel>,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
    edns: Edns,
    recursion: Vec<AllowRecursion>,
    acl: ArcSwap<Acl>,
}

impl Engine {
    /// An engine forwarding for the clients `--allow-recursion`'s default
    /// allows (`cluster`); see [`Self::with_recursion`].
    pub fn new(cfg: Config, forwarder: Forwarder, metrics: Arc<Metrics>) -> Self {
        Self::with_recursion(cfg, forwarder, metrics, vec![AllowRecursion::Cluster])
    }

    /// An engine forwarding only for the clients `recursion` allows.
    pub fn with_recursion(cfg: Config, forwarder: Forwarder, metrics: Arc<Metrics>, recursion: Vec<AllowRecursion>) -> Self {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        let acl = ArcSwap::from_pointee(Acl::new(&recursion, &sluice_k8s::Snapshot::default()));
        Self { model: ArcSwap::from_pointee(ClusterModel::unsynced(&cfg)), cfg, forwarder, metrics, edns, recursion, acl }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Makes `model` the one every following query sees.
    pub fn set_model(&self, model: ClusterModel) {
        self.metrics.model_names.store(model.len() as u64, Ordering::Relaxed);
        self.metrics.synced.store(model.is_synced(), Ordering::Relaxed);
        self.metrics.model_updates.fetch_add(1, Ordering::Relaxed);
        self.model.store(Arc::new(model));
    }

    /// Recomputes who may use forwarding from the Nodes of `snapshot`.
    pub fn set_nodes(&self, snapshot: &sluice_k8s::Snapshot) {
        self.acl.store(Arc::new(Acl::new(&self.recursion, snapshot)));
    }

    /// Whether `client` may have names outside the cluster resolved.
    pub fn may_recurse(&self, client: IpAddr) -> bool {
        self.acl.load().allows(client)
    }

    pub fn is_synced(&self) -> bool {
        self.model.load().is_synced()
    }

    /// Handles one packet as far as it can without the network. A reply is
    /// written to `out` (cleared first).
    pub fn handle_packet(&self, packet: Vec<u8>, src: SocketAddr, protocol: Protocol, out: &mut Vec<u8>) -> Local {
        let started = Instant::now();
        out.clear();
        if packet.len() < 12 {
            self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            return Local::Drop;
        }
        // QR set: a response, never answered (no reflection).
        if packet[2] & 0x80 != 0 {
            self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            return Local::Drop;
        }
        let mut header = [0u8; 12];
        header.copy_from_slice(&packet[..12]);
        let request = match Request::from_bytes(packet, src, protocol) {
            Ok(r) => r,
            Err(_) => {
                formerr(&header, out);
                self.metrics.observe(RecordType::Unknown(0), ResponseCode::FormErr, started.elapsed());
                return Local::Reply;
            }
        };
        match self.answer_local(&request) {
            Step::Done(ans) => {
                self.encode(&request, &ans, out);
                self.observe(&request, &ans, started);
                Local::Reply
            }
            Step::Relay(f) => {
                self.relay(&request, &f, out);
                self.observe_rcode(&request, ResponseCode::from_low(out.get(3).map_or(2, |b| b & 0x0f)), started);
                Local::Reply
            }
            Step::Forward(partial) => Local::Pending(Box::new(Pending { request, partial, started })),
        }
    }

    /// Finishes a pending query: resolves it upstream and writes the reply to `out`.
    pub async fn complete(&self, pending: Pending, out: &mut Vec<u8>) {
        out.clear();
        let request = &pending.request;
        if pending.partial.is_none() {
            let q = &request.queries.queries()[0];
            match self.forwarder.resolve(q.original().name(), q.query_type(), q.query_class()).await {
                Ok(f) => {
                    self.relay(request, &f, out);
                    self.observe_rcode(request, ResponseCode::from_low(out.get(3).map_or(2, |b| b & 0x0f)), pending.started);
                }
                Err(rcode) => {
                    let ans = Answer::error(rcode);
                    self.encode(request, &ans, out);
                    self.observe(request, &ans, pending.started);
                }
            }
            return;
        }
        let ans = self.resolve_pending(request, pending.partial).await;
        self.encode(request, &ans, out);
        self.observe(request, &ans, pending.started);
    }

    /// Answers a pending query SERVFAIL without forwarding it (too many in flight).
    pub fn reject(&self, pending: Pending, out: &mut Vec<u8>) {
        let ans = Answer::error(ResponseCode::ServFail);
        self.encode(&pending.request, &ans, out);
        self.observe(&pending.request, &ans, pending.started);
    }

    /// The whole answer for a parsed request, forwarding if needed, decoded
    /// into sections (the `--udp-engine hickory` path).
    pub async fn answer(&self, request: &Request) -> Answer {
        match self.answer_local(request) {
            Step::Done(ans) => ans,
            Step::Relay(f) => {
                let q = &request.queries.queries()[0];
                f.to_answer(q.name(), q.original().name())
            }
            Step::Forward(partial) => self.resolve_pending(request, partial).await,
        }
    }

    async fn resolve_pending(&self, request: &Request, partial: Option<Answer>) -> Answer {
        let q = &request.queries.queries()[0];
        match partial {
            None => self.forwarder.resolve_answer(q.original().name(), q.query_type(), q.query_class()).await,
            Some(mut ans) => {
                if let Some(target) = ans.external_target.take() {
                    let upstream = self.forwarder.resolve_answer(&target, q.query_type(), q.query_class()).await;
                    merge_external(&mut ans, upstream);
                }
                ans
            }
        }
    }

    fn observe(&self, request: &Request, ans: &Answer, started: Instant) {
        self.observe_rcode(request, ans.rcode, started);
    }

    fn observe_rcode(&self, request: &Request, rcode: ResponseCode, started: Instant) {
        let qtype = request.queries.queries().first().map_or(RecordType::Unknown(0), |q| q.query_type());
        self.metrics.observe(qtype, rcode, started.elapsed());
    }

    /// The largest response `request` may get.
    fn limit(request: &Request) -> usize {
        match request.protocol() {
            Protocol::Udp => usize::from(request.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
            _ => usize::from(u16::MAX),
        }
    }

    /// Everything that needs no network.
    pub fn answer_local(&self, request: &Request) -> Step {
        if request.metadata.message_type != MessageType::Query {
            return Step::Done(Answer::error(ResponseCode::FormErr));
        }
        if request.metadata.op_code != OpCode::Query {
            return Step::Done(Answer::error(ResponseCode::NotImp));
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Step::Done(Answer::error(ResponseCode::BADVERS));
        }
        let [q] = request.queries.queries() else {
            return Step::Done(Answer::error(ResponseCode::FormErr));
        };
        let (qname, qtype, qclass) = (q.name(), q.query_type(), q.query_class());
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Step::Done(Answer::error(ResponseCode::Refused));
        }
        if self.forwarder.is_loop_probe(qname) {
            // Our own probe came back: the upstreams forward to us.
            self.forwarder.mark_loop(Some(request.src()));
            return Step::Done(Answer::error(ResponseCode::ServFail));
        }
        let model = self.model.load();
        let max_records = Self::limit(request) / MIN_RECORD_LEN + 1;
        match model.lookup_limited(qname, q.original().name(), qtype, qclass, max_records) {
            Lookup::Authoritative(mut ans) => match &ans.external_target {
                None => Step::Done(ans),
                Some(_) if !self.may_recurse(request.src().ip()) => {
                    // The CNAME alone, as an authoritative-only server answers.
                    ans.external_target = None;
                    Step::Done(ans)
                }
                Some(target) => match self.forwarder.cached(&LowerName::new(target), qtype, qclass) {
                    Some(upstream) => {
                        let upstream = upstream.to_answer(&LowerName::new(target), target);
                        ans.external_target = None;
                        merge_external(&mut ans, upstream);
                        Step::Done(ans)
                    }
                    None => Step::Forward(Some(ans)),
                },
            },
            Lookup::NotSynced => Step::Done(Answer::error(ResponseCode::ServFail)),
            Lookup::NotInZone if !self.may_recurse(request.src().ip()) => {
                self.metrics.recursion_refused.fetch_add(1, Ordering::Relaxed);
                Step::Done(Answer::error(ResponseCode::Refused))
            }
            Lookup::NotInZone if qtype == RecordType::ANY => Step::Done(rfc8482_hinfo(q.original().name())),
            Lookup::NotInZone => match self.forwarder.cached(qname, qtype, qclass) {
                Some(f) => Step::Relay(f),
                None => Step::Forward(None),
            },
        }
    }

    /// Encodes `ans` as the response to `request`; a UDP response is cut to
    /// the client's buffer size with TC set.
    pub fn encode(&self, request: &Request, ans: &Answer, out: &mut Vec<u8>) {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = ans.authoritative;
        metadata.recursion_available = self.may_recurse(request.src().ip());
        metadata.response_code = ans.rcode;
        let edns = request.edns.as_ref().map(|_| &self.edns);
        let sections = wire::Sections { answers: &ans.answers, authorities: &ans.authorities, additionals: &ans.additionals };
        if wire::encode_response(&metadata, &request.queries, &sections, edns, Self::limit(request), out).is_err() {
            out.clear();
            let mut header = request.as_slice()[..12].to_vec();
            header[2] = 0x80 | (header[2] & 0x79);
            header[3] = 0x80 | ResponseCode::ServFail.low();
            header[4..12].fill(0);
            out.extend_from_slice(&header);
        }
    }

    /// Writes an upstream response as the response to `request`, as bytes
    /// when it can be relayed so, else decoded and encoded.
    fn relay(&self, request: &Request, f: &Forwarded, out: &mut Vec<u8>) {
        let raw = request.as_slice();
        let relayed = wire::question_end(raw).and_then(|question_end| {
            let walk = wire::walk(&f.bytes)?;
            let client = wire::Client {
                query: raw,
                question_end,
                edns: request.edns.as_ref().map(|_| &self.edns),
                limit: Self::limit(request),
            };
            wire::relay(&f.bytes, &walk, &client, f.aging, out)
        });
        if relayed.is_err() {
            let q = &request.queries.queries()[0];
            let ans = f.to_answer(q.name(), q.original().name());
            self.encode(request, &ans, out);
        }
    }

    /// The name of this server's zone.
    pub fn zone(&self) -> &Name {
        &self.cfg.zone
    }
}

/// Result of [`Engine::answer_local`].
pub enum Step {
    Done(Answer),
    /// An upstream's response from the cache, relayed as bytes.
    Relay(Forwarded),
    /// Needs the upstreams; carries the known part of the answer, if any.
    Forward(Option<Answer>),
}

/// The minimal answer to ANY for a name outside the zone (RFC 8482 4.2): a
/// synthesised HINFO, never forwarded.
fn rfc8482_hinfo(owner: &Name) -> Answer {
    Answer {
        answers: vec![Record::from_rdata(owner.clone(), 3600, RData::HINFO(HINFO::new("RFC8482".into(), String::new())))],
        ..Answer::default()
    }
}

/// Appends the upstream resolution of an ExternalName target to its CNAME.
fn merge_external(ans: &mut Answer, upstream: Answer) {
    ans.rcode = upstream.rcode;
    if upstream.rcode == ResponseCode::NoError || upstream.rcode == ResponseCode::NXDomain {
        ans.answers.extend(upstream.answers);
        if ans.answers.iter().all(|r| r.record_type() == RecordType::CNAME) {
            ans.authorities.extend(upstream.authorities);
        }
    }
}

/// A FORMERR for a packet whose header is readable but whose body is not.
fn formerr(packet: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&packet[..12]);
    // QR=1, opcode and RD kept, AA/TC cleared; RA=0, Z=0, RCODE=FORMERR; no sections.
    out[2] = 0x80 | (packet[2] & 0x79);
    out[3] = ResponseCode::FormErr.low();
    out[4..12].fill(0);
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
        rr::{Name, RecordType},
    };
    use hickory_server::net::xfer::Protocol;

    use super::*;
    use crate::testing;

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn reply(engine: &Engine, packet: Vec<u8>, protocol: Protocol) -> Option<(Message, usize)> {
        reply_from(engine, packet, protocol, ([127, 0, 0, 1], 5353).into())
    }

    fn reply_from(engine: &Engine, packet: Vec<u8>, protocol: Protocol, src: SocketAddr) -> Option<(Message, usize)> {
        let mut out = Vec::new();
        match engine.handle_packet(packet, src, protocol, &mut out) {
            Local::Reply => {
                crate::wire::walk(&out).unwrap_or_else(|e| panic!("reply is not a well-formed message ({e}): {out:?}"));
                Some((Message::from_vec(&out).expect("reply decodes"), out.len()))
            }
            Local::Drop => None,
            Local::Pending(_) => panic!("a cluster name should not need the network"),
        }
    }

    fn many(n: usize) -> String {
        let mut s = String::from(
            "apiVersion: v1\nkind: Service\nmetadata: {name: many, namespace: prod}\nspec: {clusterIP: None}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: many-a, namespace: prod, labels: {kubernetes.io/service-name: many}}\naddressType: IPv4\nendpoints:\n",
        );
        for i in 0..n {
            s.push_str(&format!("- {{addresses: [198.18.1.{}]}}\n", i + 1));
        }
        s
    }

    #[test]
    fn answer_keeps_id_question_and_sets_aa_ra() {
        let e = testing::engine_with_cluster();
        let (m, _) = reply(&e, query("svc-1.bench.svc.cluster.local.", RecordType::A, None), Protocol::Udp).unwrap();
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.metadata.authoritative && m.metadata.recursion_available && m.metadata.recursion_desired);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.answers.len(), 1);
        assert!(m.edns.is_none(), "no OPT in the reply when the query had none");
    }

    #[test]
    fn large_udp_answers_are_truncated_to_512_without_edns_and_1232_with_it() {
        let e = testing::engine_with(&many(120));
        let (m, len) = reply(&e, query("many.prod.svc.cluster.local.", RecordType::A, None), Protocol::Udp).unwrap();
        assert!(m.metadata.truncation && len <= 512, "TC and at most 512 bytes, saw tc={} len={len}", m.metadata.truncation);
        let (m, len) = reply(&e, query("many.prod.svc.cluster.local.", RecordType::A, Some(4096)), Protocol::Udp).unwrap();
        assert!(m.metadata.truncation && len <= 1232, "TC and at most 1232 bytes, saw len={len}");
        let (m, _) = reply(&e, query("many.prod.svc.cluster.local.", RecordType::A, None), Protocol::Tcp).unwrap();
        assert!(!m.metadata.truncation && m.answers.len() == 120, "TCP carries every record");
        let (m, _) = reply(&e, query("many.prod.svc.cluster.local.", RecordType::A, Some(512)), Protocol::Udp).unwrap();
        assert!(m.metadata.truncation, "a small EDNS buffer is honoured");
        assert!(m.edns.is_some_and(|e| e.max_payload() == MAX_UDP_PAYLOAD), "our OPT advertises 1232");
    }

    fn many_with_port(n: usize) -> String {
        many(n).replace("addressType: IPv4\n", "addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\n")
    }

    #[test]
    fn the_first_owner_is_compressed_to_the_question() {
        let e = testing::engine_with_cluster();
        let q = query("Svc-1.bench.svc.cluster.local.", RecordType::A, None);
        let (_, len) = reply(&e, q.clone(), Protocol::Udp).unwrap();
        // Header, the question (31-byte name, type, class), one A record with a 2-byte owner pointer.
        assert_eq!(len, 12 + 35 + 16, "the smallest encoding of a one-address answer");
        let mut out = Vec::new();
        let src: SocketAddr = ([127, 0, 0, 1], 5353).into();
        let _ = e.handle_packet(q, src, Protocol::Udp, &mut out);
        assert_eq!(out[47..49], [0xc0, 0x0c], "the owner points at the question");
    }

    #[test]
    fn truncated_answers_are_well_formed_messages_without_trailing_bytes() {
        let e = testing::engine_with(&many_with_port(200));
        for (name, qtype) in [
            ("many.prod.svc.cluster.local.", RecordType::SRV),
            ("_http._tcp.many.prod.svc.cluster.local.", RecordType::SRV),
            ("many.prod.svc.cluster.local.", RecordType::A),
        ] {
            for edns in [None, Some(512), Some(1232), Some(4096)] {
                // reply() walks the bytes: counts match the records, nothing trails.
                let (m, len) = reply(&e, query(name, qtype, edns), Protocol::Udp).unwrap();
                let limit = edns.map_or(512, |s| usize::from(s.min(MAX_UDP_PAYLOAD)));
                assert!(len <= limit, "{name} {qtype} edns {edns:?}: {len} bytes over {limit}");
                assert!(m.metadata.truncation, "{name} {qtype} edns {edns:?}: TC");
                assert!(!m.answers.is_empty(), "the records that fit are kept");
                assert!(m.additionals.is_empty(), "nothing after a cut answer section");
                assert_eq!(m.edns.is_some(), edns.is_some(), "an EDNS query gets our OPT even when the answer is cut");
            }
        }
    }

    #[test]
    fn additional_data_that_does_not_fit_is_left_out_without_tc() {
        // 15 SRV records (58 bytes each: SRV targets are never compressed) fit
        // in 1232 bytes; their 15 target addresses do not all fit too.
        let e = testing::engine_with(&many_with_port(15));
        let (m, len) = reply(&e, query("_http._tcp.many.prod.svc.cluster.local.", RecordType::SRV, Some(1232)), Protocol::Udp).unwrap();
        assert_eq!(m.answers.len(), 15, "every SRV record");
        assert!(m.additionals.len() < 15, "not every address fits, saw {}", m.additionals.len());
        assert!(!m.metadata.truncation, "RFC 2181 9: missing additional data is no reason for TC ({len} bytes, {} additionals)", m.additionals.len());
        assert!(m.edns.is_some());
    }

    #[test]
    fn dig_style_check_of_a_truncated_answer_with_the_message_parser() {
        // The exact bytes a client gets must decode to exactly the header's counts.
        let e = testing::engine_with(&many_with_port(100));
        let mut out = Vec::new();
        let src: SocketAddr = ([127, 0, 0, 1], 5353).into();
        let Local::Reply = e.handle_packet(query("many.prod.svc.cluster.local.", RecordType::SRV, None), src, Protocol::Udp, &mut out) else {
            panic!("reply expected")
        };
        let m = Message::from_vec(&out).unwrap();
        let re = m.to_vec().unwrap();
        assert!(re.len() <= out.len(), "re-encoding the decoded reply gives no more bytes than were sent: {} vs {}", re.len(), out.len());
    }

    fn engine_for(recursion: Vec<crate::acl::AllowRecursion>) -> Engine {
        let cfg = crate::model::Config::new("cluster.local").unwrap();
        let metrics = Arc::new(Metrics::default());
        let fwd = crate::forward::ForwardConfig { upstreams: vec!["127.0.0.1:9".parse().unwrap()], ..Default::default() };
        let e = Engine::with_recursion(cfg.clone(), crate::forward::Forwarder::new(fwd, metrics.clone()), metrics, recursion);
        let mut b = sluice_k8s::SnapshotBuilder::new();
        b.synced(true);
        e.set_model(crate::model::ClusterModel::build(&b.build(), &cfg, &mut crate::model::Memo::default()));
        e
    }

    #[test]
    fn forwarding_is_refused_outside_the_allowed_networks() {
        let e = engine_for(vec![crate::acl::AllowRecursion::Cluster]);
        let outside: SocketAddr = ([203, 0, 113, 5], 5353).into();
        let (m, _) = reply_from(&e, query("www.example.org.", RecordType::A, None), Protocol::Udp, outside).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "an outside client gets no forwarding");
        assert!(!m.metadata.recursion_available, "and no RA");
        let (m, _) = reply_from(&e, query("www.example.org.", RecordType::ANY, None), Protocol::Udp, outside).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "ANY too");
        let (m, _) = reply_from(&e, query("cluster.local.", RecordType::SOA, None), Protocol::Udp, outside).unwrap();
        assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 1), "cluster names are answered to everyone");
        let src: SocketAddr = ([127, 0, 0, 1], 5353).into();
        let mut out = Vec::new();
        assert!(
            matches!(e.handle_packet(query("www.example.org.", RecordType::A, None), src, Protocol::Udp, &mut out), Local::Pending(_)),
            "loopback is forwarded"
        );
        assert_eq!(e.metrics().recursion_refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn rfc8482_any_outside_the_zone_gets_a_synthesised_hinfo_not_forwarded() {
        let e = engine_for(vec![crate::acl::AllowRecursion::Any]);
        let (m, _) = reply(&e, query("Example.org.", RecordType::ANY, None), Protocol::Udp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].record_type(), RecordType::HINFO);
        assert!(m.answers[0].name.eq_case(&Name::from_ascii("Example.org.").unwrap()));
    }

    #[test]
    fn protocol_errors_get_their_rcodes() {
        let e = testing::engine_with_cluster();
        let mut notify = Message::from_vec(&query("svc-1.bench.svc.cluster.local.", RecordType::A, None)).unwrap();
        notify.metadata.op_code = OpCode::Notify;
        let (m, _) = reply(&e, notify.to_vec().unwrap(), Protocol::Udp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

        let mut two = Message::from_vec(&query("svc-1.bench.svc.cluster.local.", RecordType::A, None)).unwrap();
        two.add_query(Query::query(Name::from_ascii("svc-2.bench.svc.cluster.local.").unwrap(), RecordType::A));
        let (m, _) = reply(&e, two.to_vec().unwrap(), Protocol::Udp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "exactly one question");

        let mut v1 = Message::from_vec(&query("svc-1.bench.svc.cluster.local.", RecordType::A, Some(1232))).unwrap();
        v1.edns.as_mut().unwrap().set_version(1);
        let (m, _) = reply(&e, v1.to_vec().unwrap(), Protocol::Udp).unwrap();
        // BADVERS and BADSIG are both 16 on the wire; hickory decodes 16 as BADSIG.
        assert!(matches!(m.metadata.response_code, ResponseCode::BADVERS | ResponseCode::BADSIG), "{:?}", m.metadata.response_code);

        let (m, _) = reply(&e, query("cluster.local.", RecordType::AXFR, None), Protocol::Tcp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "no zone transfers");
    }

    #[test]
    fn malformed_packets_get_formerr_or_are_dropped() {
        let e = testing::engine_with_cluster();
        assert!(reply(&e, vec![1, 2, 3], Protocol::Udp).is_none(), "shorter than a header: dropped");
        let mut response = query("svc-1.bench.svc.cluster.local.", RecordType::A, None);
        response[2] |= 0x80;
        assert!(reply(&e, response, Protocol::Udp).is_none(), "responses are never answered");
        let mut cut = query("svc-1.bench.svc.cluster.local.", RecordType::A, None);
        cut.truncate(20);
        let (m, _) = reply(&e, cut, Protocol::Udp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 0x4242);
    }

    #[test]
    fn fuzz_corpus_seeds_do_not_panic() {
        let e = testing::engine_with_cluster();
        let mut seeds: Vec<Vec<u8>> = vec![
            query("svc-1.bench.svc.cluster.local.", RecordType::SRV, Some(1232)),
            query("headless.bench.svc.cluster.local.", RecordType::ANY, None),
        ];
        // Every prefix and single-byte corruption of a valid query.
        let base = query("_http._tcp.svc-4.bench.svc.cluster.local.", RecordType::SRV, Some(4096));
        for i in 0..base.len() {
            seeds.push(base[..i].to_vec());
            for v in [0u8, 0x3f, 0xc0, 0xff] {
                let mut b = base.clone();
                b[i] = v;
                seeds.push(b);
            }
        }
        for s in seeds.iter().filter(|s| s.len() >= 2) {
            testing::fuzz_one(&e, s);
        }
    }
}
