//! Forwarding of names outside the cluster zone: the upstreams of a
//! resolv.conf-style file, UDP with TCP on truncation, a TTL-honouring cache
//! with negative caching (RFC 2308), and forwarding-loop detection.

use std::{
    collections::{hash_map::RandomState, HashMap},
    hash::BuildHasher,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, LowerName, Name, RData, Record, RecordType},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, error, warn};

use crate::{metrics::Metrics, model::Answer, Error};

/// Reads the `nameserver` lines of a resolv.conf-style file. Besides plain
/// addresses (port 53) it accepts `ADDR:PORT` and `[V6]:PORT`, as CoreDNS's
/// forward plugin does, so tests can run upstreams on high ports.
///
/// # Errors
/// When a nameserver line does not hold an address.
pub fn parse_resolv_conf(text: &str) -> Result<Vec<SocketAddr>, Error> {
    let mut out = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else {
            return Err(Error::Config(format!("line {}: nameserver without an address", no + 1)));
        };
        // A zone index (`fe80::1%eth0`) is dropped: link-local upstreams are out of scope.
        let addr = addr.split('%').next().unwrap_or(addr);
        let parsed = addr
            .parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, 53))
            .or_else(|_| addr.parse::<SocketAddr>())
            .map_err(|_| Error::Config(format!("line {}: {addr:?} is not an address", no + 1)))?;
        out.push(parsed);
    }
    Ok(out)
}

/// The label under which loop probes are asked (`<random>.sluice-loop-check.`).
const PROBE_SUFFIX: &str = "sluice-loop-check";

/// Removes upstreams that are this server itself: forwarding to them would loop.
pub fn without_self(upstreams: Vec<SocketAddr>, listen: &[SocketAddr]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    upstreams.into_iter().partition(|up| {
        !listen.iter().any(|l| {
            l.port() == up.port()
                && (l.ip() == up.ip() || (l.ip().is_unspecified() && (up.ip().is_loopback() || up.ip().is_unspecified())))
        })
    })
}

/// Cache and forwarding limits.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    pub upstreams: Vec<SocketAddr>,
    /// Per-upstream attempt timeout.
    pub timeout: Duration,
    /// Entries kept (0 disables the cache).
    pub cache_size: usize,
    pub max_ttl: u32,
    pub max_negative_ttl: u32,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_size: 10_000,
            max_ttl: 3600,
            max_negative_ttl: 1800,
        }
    }
}

type Key = (LowerName, RecordType, DNSClass);

struct Entry {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    stored: Instant,
    ttl: u32,
}

const SHARDS: usize = 16;

/// A response cache split in shards to keep lock hold times and contention short.
struct Cache {
    shards: Vec<Mutex<HashMap<Key, Arc<Entry>>>>,
    per_shard: usize,
    hasher: RandomState,
}

impl Cache {
    fn new(size: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: size.div_ceil(SHARDS),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Arc<Entry>>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(key).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = shard.get(key)?;
        if entry.stored.elapsed() >= Duration::from_secs(u64::from(entry.ttl)) {
            shard.remove(key);
            return None;
        }
        Some(entry.clone())
    }

    fn put(&self, key: Key, entry: Entry) {
        if self.per_shard == 0 || entry.ttl == 0 {
            return;
        }
        let mut shard = self.shard(&key).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| e.stored.elapsed() < Duration::from_secs(u64::from(e.ttl)));
            if shard.len() >= self.per_shard {
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(key, Arc::new(entry));
    }
}

/// Sends out-of-zone questions to the upstreams and caches their answers.
pub struct Forwarder {
    cfg: ForwardConfig,
    cache: Cache,
    metrics: Arc<Metrics>,
    loop_detected: AtomicBool,
    probe: LowerName,
    ids: RandomState,
}

impl Forwarder {
    pub fn new(cfg: ForwardConfig, metrics: Arc<Metrics>) -> Self {
        let ids = RandomState::new();
        let probe = Name::from_ascii(format!("{:016x}.sluice-loop-check.", ids.hash_one(Instant::now())))
            .map_or_else(|_| LowerName::new(&Name::root()), |n| LowerName::new(&n));
        Self { cache: Cache::new(cfg.cache_size), cfg, metrics, loop_detected: AtomicBool::new(false), probe, ids }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.cfg.upstreams
    }

    pub fn is_loop_probe(&self, name: &LowerName) -> bool {
        *name == self.probe
    }

    /// Stops forwarding for good: the upstreams send our queries back to us.
    pub fn mark_loop(&self, via: Option<SocketAddr>) {
        if !self.loop_detected.swap(true, Ordering::Relaxed) {
            error!(?via, upstreams = ?self.cfg.upstreams, "forwarding loop detected: our loop probe came back; forwarding disabled, out-of-zone names answer SERVFAIL");
            self.metrics.loop_detected.store(true, Ordering::Relaxed);
        }
    }

    pub fn loop_detected(&self) -> bool {
        self.loop_detected.load(Ordering::Relaxed)
    }

    /// Sends the loop probe (a random name under `sluice-loop-check.`) through
    /// the upstreams; if it arrives back at this server, the engine calls
    /// [`Self::mark_loop`]. CoreDNS's loop plugin works the same way.
    pub async fn probe_for_loop(&self) {
        if self.cfg.upstreams.is_empty() {
            return;
        }
        let name: Name = (&self.probe).into();
        // Upstreams may start after us: probe a few times over the first seconds.
        for wait in [0u64, 1, 2, 4] {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            if self.loop_detected() {
                return;
            }
            let _ = self.exchange_any(&name, RecordType::HINFO, DNSClass::IN).await;
        }
    }

    /// The cached answer, TTLs counted down, owner case as the client asked.
    pub fn cached(&self, qname: &LowerName, original: &Name, qtype: RecordType, qclass: DNSClass) -> Option<Answer> {
        let hit = self.cached_uncounted(qname, original, qtype, qclass);
        let counter = if hit.is_some() { &self.metrics.cache_hits } else { &self.metrics.cache_misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    fn cached_uncounted(&self, qname: &LowerName, original: &Name, qtype: RecordType, qclass: DNSClass) -> Option<Answer> {
        let key = (qname.clone(), qtype, qclass);
        let entry = self.cache.get(&key)?;
        let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        let fix = |r: &Record| {
            let mut r = r.clone();
            r.ttl = r.ttl.saturating_sub(age).max(1).min(entry.ttl.saturating_sub(age).max(1));
            if LowerName::new(&r.name) == *qname {
                r.name = original.clone();
            }
            r
        };
        Some(Answer {
            rcode: entry.rcode,
            authoritative: false,
            answers: entry.answers.iter().map(fix).collect(),
            authorities: entry.authorities.iter().map(fix).collect(),
            additionals: entry.additionals.iter().map(fix).collect(),
            external_target: None,
        })
    }

    /// The answer for an out-of-zone question: from the cache, else from the
    /// first upstream that answers. SERVFAIL when none does.
    pub async fn resolve(&self, name: &Name, qtype: RecordType, qclass: DNSClass) -> Answer {
        let lower = LowerName::new(name);
        // Usually checked (and counted) by the caller already; this catches a racing fill.
        if let Some(hit) = self.cached_uncounted(&lower, name, qtype, qclass) {
            return hit;
        }
        // Other servers' loop probes still travel, so every member of a loop finds out.
        let probe = name.iter().next_back().is_some_and(|l| l.eq_ignore_ascii_case(PROBE_SUFFIX.as_bytes()));
        if (self.loop_detected() && !probe) || self.cfg.upstreams.is_empty() {
            return Answer::error(ResponseCode::ServFail);
        }
        match self.exchange_any(name, qtype, qclass).await {
            Ok(msg) => {
                let ttl = self.cache_ttl(&msg);
                let answer = Answer {
                    rcode: msg.metadata.response_code,
                    authoritative: false,
                    answers: msg.answers,
                    authorities: msg.authorities,
                    additionals: msg.additionals,
                    external_target: None,
                };
                if let Some(ttl) = ttl {
                    self.cache.put(
                        (lower, qtype, qclass),
                        Entry {
                            rcode: answer.rcode,
                            answers: answer.answers.clone(),
                            authorities: answer.authorities.clone(),
                            additionals: answer.additionals.clone(),
                            stored: Instant::now(),
                            ttl,
                        },
                    );
                }
                answer
            }
            Err(e) => {
                debug!(%name, %qtype, error = %e, "no upstream answered");
                Answer::error(ResponseCode::ServFail)
            }
        }
    }

    /// How long a response may be cached: the smallest answer TTL for data,
    /// min(SOA TTL, SOA minimum) for NXDOMAIN and NODATA, nothing otherwise.
    fn cache_ttl(&self, msg: &Message) -> Option<u32> {
        let rcode = msg.metadata.response_code;
        let negative = rcode == ResponseCode::NXDomain || (rcode == ResponseCode::NoError && msg.answers.is_empty());
        if negative {
            let soa = msg.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?;
            return Some(soa.min(self.cfg.max_negative_ttl)).filter(|t| *t > 0);
        }
        if rcode != ResponseCode::NoError || msg.metadata.truncation {
            return None;
        }
        msg.answers.iter().map(|r| r.ttl).min().map(|t| t.min(self.cfg.max_ttl)).filter(|t| *t > 0)
    }

    async fn exchange_any(&self, name: &Name, qtype: RecordType, qclass: DNSClass) -> Result<Message, Error> {
        let mut last = Error::Upstream("no upstreams".into());
        for upstream in &self.cfg.upstreams {
            self.metrics.upstream_queries.fetch_add(1, Ordering::Relaxed);
            match self.exchange(*upstream, name, qtype, qclass).await {
                Ok(m) if m.metadata.response_code == ResponseCode::ServFail
                    || m.metadata.response_code == ResponseCode::Refused =>
                {
                    last = Error::Upstream(format!("{upstream} answered {}", m.metadata.response_code));
                }
                Ok(m) => return Ok(m),
                Err(e) => {
                    self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(%upstream, error = %e, "upstream failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// One question to one upstream: UDP, then TCP when the answer is truncated.
    async fn exchange(&self, upstream: SocketAddr, name: &Name, qtype: RecordType, qclass: DNSClass) -> Result<Message, Error> {
        let id = (self.ids.hash_one((Instant::now(), name.to_ascii())) & 0xffff) as u16;
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        let mut q = Query::query(name.clone(), qtype);
        q.set_query_class(qclass);
        query.add_query(q.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(crate::engine::MAX_UDP_PAYLOAD);
        query.set_edns(edns);
        let bytes = query.to_vec().map_err(|e| Error::Upstream(e.to_string()))?;
        let io = |e: std::io::Error| Error::Upstream(format!("{upstream}: {e}"));

        let response = tokio::time::timeout(self.cfg.timeout, async {
            let bind: SocketAddr = match upstream {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let sock = tokio::net::UdpSocket::bind(bind).await.map_err(io)?;
            sock.connect(upstream).await.map_err(io)?;
            sock.send(&bytes).await.map_err(io)?;
            let mut buf = vec![0u8; 65535];
            loop {
                let n = sock.recv(&mut buf).await.map_err(io)?;
                // Anything but the answer to this very question is ignored (spoofing, stale replies).
                match Message::from_vec(&buf[..n]) {
                    Ok(m) if m.metadata.id == id && m.metadata.message_type == MessageType::Response && m.queries.first() == Some(&q) => {
                        return Ok::<_, Error>(m);
                    }
                    _ => continue,
                }
            }
        })
        .await
        .map_err(|_| Error::Upstream(format!("{upstream}: timed out over UDP")))??;

        if !response.metadata.truncation {
            return Ok(response);
        }
        self.metrics.upstream_tcp.fetch_add(1, Ordering::Relaxed);
        tokio::time::timeout(self.cfg.timeout, async {
            let mut tcp = tokio::net::TcpStream::connect(upstream).await.map_err(io)?;
            let len = u16::try_from(bytes.len()).map_err(|_| Error::Upstream("query too large".into()))?;
            let mut framed = Vec::with_capacity(bytes.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&bytes);
            tcp.write_all(&framed).await.map_err(io)?;
            let len = tcp.read_u16().await.map_err(io)?;
            let mut buf = vec![0u8; usize::from(len)];
            tcp.read_exact(&mut buf).await.map_err(io)?;
            let m = Message::from_vec(&buf).map_err(|e| Error::Upstream(format!("{upstream}: {e}")))?;
            if m.metadata.id != id || m.queries.first() != Some(&q) {
                return Err(Error::Upstream(format!("{upstream}: TCP answer does not match the question")));
            }
            Ok(m)
        })
        .await
        .map_err(|_| Error::Upstream(format!("{upstream}: timed out over TCP")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_with_default_and_explicit_ports() {
        let text = "# comment\nsearch svc.cluster.local\nnameserver 127.0.0.53\nnameserver 127.0.0.9:5353\nnameserver [::1]:5300\nnameserver 2001:db8::1\noptions ndots:5\n";
        let got = parse_resolv_conf(text).expect("valid file");
        let want: Vec<SocketAddr> = vec![
            "127.0.0.53:53".parse().unwrap(),
            "127.0.0.9:5353".parse().unwrap(),
            "[::1]:5300".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn resolv_conf_bad_address_is_an_error_naming_the_line() {
        let err = parse_resolv_conf("nameserver 127.0.0.1\nnameserver banana\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("banana"), "{err}");
    }

    #[test]
    fn upstreams_that_are_this_server_are_refused() {
        let listen: Vec<SocketAddr> = vec!["127.0.0.20:5300".parse().unwrap(), "0.0.0.0:53".parse().unwrap()];
        let ups: Vec<SocketAddr> = vec![
            "127.0.0.20:5300".parse().unwrap(),
            "127.0.0.1:53".parse().unwrap(),
            "127.0.0.20:5301".parse().unwrap(),
            "192.0.2.1:53".parse().unwrap(),
        ];
        let (kept, refused) = without_self(ups, &listen);
        assert_eq!(kept, vec!["127.0.0.20:5301".parse::<SocketAddr>().unwrap(), "192.0.2.1:53".parse().unwrap()]);
        assert_eq!(refused.len(), 2);
    }

    fn msg(rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.answers = answers;
        m.authorities = authorities;
        m
    }

    fn a(ttl: u32) -> Record {
        Record::from_rdata(Name::from_ascii("example.org.").unwrap(), ttl, RData::A(Ipv4Addr::new(192, 0, 2, 1).into()))
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let n = Name::from_ascii("org.").unwrap();
        Record::from_rdata(
            n.clone(),
            ttl,
            RData::SOA(hickory_proto::rr::rdata::SOA::new(n.clone(), n, 1, 1, 1, 1, minimum)),
        )
    }

    #[test]
    fn cache_ttl_follows_rfc2308() {
        let f = Forwarder::new(ForwardConfig { max_ttl: 100, max_negative_ttl: 50, ..ForwardConfig::default() }, Arc::default());
        let cases = [
            ("positive: smallest answer TTL", msg(ResponseCode::NoError, vec![a(30), a(20)], vec![]), Some(20)),
            ("positive: capped", msg(ResponseCode::NoError, vec![a(3000)], vec![]), Some(100)),
            ("positive: TTL 0 not cached", msg(ResponseCode::NoError, vec![a(0)], vec![]), None),
            ("NXDOMAIN: min(SOA TTL, minimum)", msg(ResponseCode::NXDomain, vec![], vec![soa(40, 10)]), Some(10)),
            ("NODATA: min(SOA TTL, minimum)", msg(ResponseCode::NoError, vec![], vec![soa(7, 30)]), Some(7)),
            ("negative: capped", msg(ResponseCode::NXDomain, vec![], vec![soa(900, 900)]), Some(50)),
            ("negative without SOA: not cached", msg(ResponseCode::NXDomain, vec![], vec![]), None),
            ("SERVFAIL: not cached", msg(ResponseCode::ServFail, vec![], vec![soa(40, 40)]), None),
        ];
        for (what, m, want) in cases {
            assert_eq!(f.cache_ttl(&m), want, "{what}");
        }
    }

    #[test]
    fn cache_hit_counts_ttl_down_and_keeps_client_case() {
        let f = Forwarder::new(ForwardConfig::default(), Arc::default());
        let lower = LowerName::new(&Name::from_ascii("example.org.").unwrap());
        f.cache.put(
            (lower.clone(), RecordType::A, DNSClass::IN),
            Entry {
                rcode: ResponseCode::NoError,
                answers: vec![a(30)],
                authorities: vec![],
                additionals: vec![],
                stored: Instant::now() - Duration::from_secs(10),
                ttl: 30,
            },
        );
        let asked = Name::from_ascii("ExAmple.ORG.").unwrap();
        let hit = f.cached(&lower, &asked, RecordType::A, DNSClass::IN).expect("cached");
        assert_eq!(hit.answers[0].ttl, 20, "TTL should be counted down by the entry's age");
        assert!(hit.answers[0].name.eq_case(&asked), "owner should keep the client's case, saw {}", hit.answers[0].name);
        assert!(f.cached(&lower, &asked, RecordType::AAAA, DNSClass::IN).is_none(), "other types are misses");
    }

    #[test]
    fn expired_entries_are_misses() {
        let f = Forwarder::new(ForwardConfig::default(), Arc::default());
        let lower = LowerName::new(&Name::from_ascii("example.org.").unwrap());
        f.cache.put(
            (lower.clone(), RecordType::A, DNSClass::IN),
            Entry {
                rcode: ResponseCode::NoError,
                answers: vec![a(5)],
                authorities: vec![],
                additionals: vec![],
                stored: Instant::now() - Duration::from_secs(6),
                ttl: 5,
            },
        );
        assert!(f.cached(&lower, &lower.clone().into(), RecordType::A, DNSClass::IN).is_none());
    }
}
