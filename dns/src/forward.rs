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
    rr::{DNSClass, LowerName, Name, Record, RecordType},
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
    /// Bytes the cache may hold, entries and keys counted (0 disables the cache).
    pub cache_bytes: usize,
    pub max_ttl: u32,
    pub max_negative_ttl: u32,
    /// Questions waiting for an upstream at once; more are answered SERVFAIL at once.
    pub max_inflight: usize,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_size: 10_000,
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_ttl: 3600,
            max_negative_ttl: 1800,
            max_inflight: DEFAULT_MAX_INFLIGHT,
        }
    }
}

/// Default of `--cache-bytes`: 32 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;
/// Default of `--max-inflight-forwards`.
pub const DEFAULT_MAX_INFLIGHT: usize = 1024;
/// Receive buffer of one upstream UDP exchange: we advertise 1232 bytes; an
/// upstream that sends more than this is cut by the kernel, fails to walk, and
/// the exchange goes on to TCP after the timeout.
const UPSTREAM_UDP_BUFFER: usize = 4096;

type Key = (LowerName, RecordType, DNSClass);

/// A cached upstream response: its bytes as received, walked once when stored.
struct Entry {
    bytes: Arc<[u8]>,
    stored: Instant,
    ttl: u32,
}

impl Entry {
    fn expired(&self) -> bool {
        self.stored.elapsed() >= Duration::from_secs(u64::from(self.ttl))
    }
}

/// What an entry costs: its bytes, its key, the bookkeeping around them.
fn cost(key: &Key, entry: &Entry) -> usize {
    const OVERHEAD: usize = 128;
    entry.bytes.len() + key.0.len() + OVERHEAD
}

const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    /// Bytes of every shard together (shared).
    total: Arc<std::sync::atomic::AtomicUsize>,
    map: HashMap<Key, (u64, Arc<Entry>)>,
    /// Insertion order for eviction; stale generations are skipped.
    order: std::collections::VecDeque<(Key, u64)>,
    bytes: usize,
    generation: u64,
}

impl Shard {
    fn remove(&mut self, key: &Key) {
        if let Some((_, e)) = self.map.remove(key) {
            let c = cost(key, &e);
            self.bytes -= c;
            self.total.fetch_sub(c, Ordering::Relaxed);
        }
    }

    /// Evicts the oldest entries until `need` more bytes and one more entry fit.
    fn make_room(&mut self, need: usize, max_bytes: usize, max_entries: usize) {
        while self.bytes + need > max_bytes || self.map.len() >= max_entries {
            let Some((key, generation)) = self.order.pop_front() else { break };
            if self.map.get(&key).is_some_and(|(g, _)| *g == generation) {
                self.remove(&key);
            }
        }
        // Stale queue entries (removed or replaced keys) must not pile up.
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order.retain(|(k, g)| map.get(k).is_some_and(|(mg, _)| mg == g));
        }
    }
}

/// A response cache bounded in entries and in bytes, split in shards to keep
/// lock hold times and contention short; oldest entries are evicted first.
struct Cache {
    shards: Vec<Mutex<Shard>>,
    total: Arc<std::sync::atomic::AtomicUsize>,
    per_shard_entries: usize,
    per_shard_bytes: usize,
    hasher: RandomState,
}

impl Cache {
    fn new(entries: usize, bytes: usize) -> Self {
        let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard { total: total.clone(), ..Shard::default() })).collect(),
            total,
            per_shard_entries: entries.div_ceil(SHARDS),
            per_shard_bytes: bytes / SHARDS,
            hasher: RandomState::new(),
        }
    }

    fn enabled(&self) -> bool {
        self.per_shard_entries > 0 && self.per_shard_bytes > 0
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(self.hasher.hash_one(key) as usize) % SHARDS].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        if !self.enabled() {
            return None;
        }
        let mut shard = self.shard(key);
        let (_, entry) = shard.map.get(key)?;
        if entry.expired() {
            shard.remove(key);
            return None;
        }
        Some(entry.clone())
    }

    fn put(&self, key: Key, entry: Entry) {
        let need = cost(&key, &entry);
        if !self.enabled() || entry.ttl == 0 || need > self.per_shard_bytes {
            return;
        }
        let mut shard = self.shard(&key);
        shard.remove(&key);
        shard.make_room(need, self.per_shard_bytes, self.per_shard_entries);
        shard.generation += 1;
        let generation = shard.generation;
        shard.bytes += need;
        self.total.fetch_add(need, Ordering::Relaxed);
        shard.order.push_back((key.clone(), generation));
        shard.map.insert(key, (generation, Arc::new(entry)));
    }

    /// Bytes and entries held (for metrics and tests).
    fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(b, n), s| {
            let s = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (b + s.bytes, n + s.map.len())
        })
    }
}

/// An upstream's response, as bytes, ready to be relayed to a client.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub bytes: Arc<[u8]>,
    /// Set when the response comes from the cache: TTLs are counted down.
    pub aging: Option<crate::wire::Aging>,
}

impl Forwarded {
    /// The response decoded into sections (for ExternalName chains and the
    /// hickory engine); owner names equal to `qname` get the client's spelling.
    pub fn to_answer(&self, qname: &LowerName, original: &Name) -> Answer {
        let Ok(msg) = Message::from_vec(&self.bytes) else { return Answer::error(ResponseCode::ServFail) };
        let fix = |mut r: Record| {
            if let Some(crate::wire::Aging { age, cap }) = self.aging {
                r.ttl = r.ttl.saturating_sub(age).max(1).min(cap.saturating_sub(age).max(1));
            }
            if LowerName::new(&r.name) == *qname {
                r.name = original.clone();
            }
            r
        };
        Answer {
            rcode: msg.metadata.response_code,
            authoritative: false,
            answers: msg.answers.into_iter().map(fix).collect(),
            authorities: msg.authorities.into_iter().map(fix).collect(),
            additionals: msg.additionals.into_iter().filter(|r| r.record_type() != RecordType::OPT).map(fix).collect(),
            external_target: None,
        }
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
    inflight: tokio::sync::Semaphore,
}

impl Forwarder {
    pub fn new(cfg: ForwardConfig, metrics: Arc<Metrics>) -> Self {
        let ids = RandomState::new();
        let probe = Name::from_ascii(format!("{:016x}.sluice-loop-check.", ids.hash_one(Instant::now())))
            .map_or_else(|_| LowerName::new(&Name::root()), |n| LowerName::new(&n));
        Self {
            cache: Cache::new(cfg.cache_size, cfg.cache_bytes),
            inflight: tokio::sync::Semaphore::new(cfg.max_inflight.min(tokio::sync::Semaphore::MAX_PERMITS)),
            cfg,
            metrics,
            loop_detected: AtomicBool::new(false),
            probe,
            ids,
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.cfg.upstreams
    }

    /// Bytes and entries the cache holds.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
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

    /// The cached response, counted as a hit or a miss.
    pub fn cached(&self, qname: &LowerName, qtype: RecordType, qclass: DNSClass) -> Option<Forwarded> {
        let hit = self.cached_uncounted(qname, qtype, qclass);
        let counter = if hit.is_some() { &self.metrics.cache_hits } else { &self.metrics.cache_misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    fn cached_uncounted(&self, qname: &LowerName, qtype: RecordType, qclass: DNSClass) -> Option<Forwarded> {
        let key = (qname.clone(), qtype, qclass);
        let entry = self.cache.get(&key)?;
        let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        Some(Forwarded { bytes: entry.bytes.clone(), aging: Some(crate::wire::Aging { age, cap: entry.ttl }) })
    }

    /// The response for an out-of-zone question: from the cache, else from the
    /// first upstream that answers. `Err(SERVFAIL)` when none does, or when
    /// too many questions already wait for the upstreams.
    pub async fn resolve(&self, name: &Name, qtype: RecordType, qclass: DNSClass) -> Result<Forwarded, ResponseCode> {
        let lower = LowerName::new(name);
        // Usually checked (and counted) by the caller already; this catches a racing fill.
        if let Some(hit) = self.cached_uncounted(&lower, qtype, qclass) {
            return Ok(hit);
        }
        // Other servers' loop probes still travel, so every member of a loop finds out.
        let probe = name.iter().next_back().is_some_and(|l| l.eq_ignore_ascii_case(PROBE_SUFFIX.as_bytes()));
        if (self.loop_detected() && !probe) || self.cfg.upstreams.is_empty() {
            return Err(ResponseCode::ServFail);
        }
        let Ok(_permit) = self.inflight.try_acquire() else {
            self.metrics.forward_rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ResponseCode::ServFail);
        };
        match self.exchange_any(name, qtype, qclass).await {
            Ok((bytes, walk)) => {
                let bytes: Arc<[u8]> = bytes.into();
                if let Some(ttl) = crate::wire::cache_ttl(&bytes, &walk, self.cfg.max_ttl, self.cfg.max_negative_ttl) {
                    self.cache.put((lower, qtype, qclass), Entry { bytes: bytes.clone(), stored: Instant::now(), ttl });
                    self.metrics.cache_bytes.store(self.cache.total.load(Ordering::Relaxed) as u64, Ordering::Relaxed);
                }
                Ok(Forwarded { bytes, aging: None })
            }
            Err(e) => {
                debug!(%name, %qtype, error = %e, "no upstream answered");
                Err(ResponseCode::ServFail)
            }
        }
    }

    /// [`Self::resolve`] decoded into sections (ExternalName targets).
    pub async fn resolve_answer(&self, name: &Name, qtype: RecordType, qclass: DNSClass) -> Answer {
        match self.resolve(name, qtype, qclass).await {
            Ok(f) => f.to_answer(&LowerName::new(name), name),
            Err(rcode) => Answer::error(rcode),
        }
    }

    async fn exchange_any(&self, name: &Name, qtype: RecordType, qclass: DNSClass) -> Result<(Vec<u8>, crate::wire::Walk), Error> {
        let mut last = Error::Upstream("no upstreams".into());
        for upstream in &self.cfg.upstreams {
            self.metrics.upstream_queries.fetch_add(1, Ordering::Relaxed);
            match self.exchange(*upstream, name, qtype, qclass).await {
                Ok((m, _)) if matches!(m[3] & 0x0f, 2 | 5) => {
                    last = Error::Upstream(format!("{upstream} answered {}", ResponseCode::from_low(m[3] & 0x0f)));
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
    /// The response is checked (a response to this id and this question, every
    /// record within its bounds) but not decoded.
    async fn exchange(&self, upstream: SocketAddr, name: &Name, qtype: RecordType, qclass: DNSClass) -> Result<(Vec<u8>, crate::wire::Walk), Error> {
        let id = (self.ids.hash_one((Instant::now(), name.to_ascii())) & 0xffff) as u16;
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        let mut q = Query::query(name.clone(), qtype);
        q.set_query_class(qclass);
        query.add_query(q);
        let mut edns = Edns::new();
        edns.set_max_payload(crate::engine::MAX_UDP_PAYLOAD);
        query.set_edns(edns);
        let bytes = query.to_vec().map_err(|e| Error::Upstream(e.to_string()))?;
        let question = crate::wire::walk(&bytes).map(|w| bytes[12..w.question_end].to_vec()).map_err(|e| Error::Upstream(e.to_string()))?;
        let matches = |m: &[u8]| -> Option<crate::wire::Walk> {
            let w = crate::wire::walk(m).ok()?;
            let ok = m[..2] == id.to_be_bytes() && m[2] & 0x80 != 0 && m[12..w.question_end].eq_ignore_ascii_case(&question);
            ok.then_some(w)
        };
        let io = |e: std::io::Error| Error::Upstream(format!("{upstream}: {e}"));

        // A socket per exchange: a random source port per question (RFC 5452);
        // their number is bounded by `max_inflight`.
        let response = tokio::time::timeout(self.cfg.timeout, async {
            let bind: SocketAddr = match upstream {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let sock = tokio::net::UdpSocket::bind(bind).await.map_err(io)?;
            sock.connect(upstream).await.map_err(io)?;
            sock.send(&bytes).await.map_err(io)?;
            let mut buf = vec![0u8; UPSTREAM_UDP_BUFFER];
            loop {
                let n = sock.recv(&mut buf).await.map_err(io)?;
                // Anything but the answer to this very question is ignored (spoofing, stale replies).
                if let Some(w) = matches(&buf[..n]) {
                    buf.truncate(n);
                    return Ok::<_, Error>((buf, w));
                }
            }
        })
        .await
        .map_err(|_| Error::Upstream(format!("{upstream}: timed out over UDP")))??;

        if response.0[2] & 0x02 == 0 {
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
            let w = matches(&buf).ok_or_else(|| Error::Upstream(format!("{upstream}: TCP answer does not match the question")))?;
            Ok((buf, w))
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

    fn response(name: &str, ttl: u32) -> Vec<u8> {
        let n = Name::from_ascii(name).unwrap();
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(n.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(n, ttl, hickory_proto::rr::RData::A(Ipv4Addr::new(192, 0, 2, 1).into())));
        m.to_vec().unwrap()
    }

    fn put(f: &Forwarder, name: &str, bytes: Vec<u8>, age: u64, ttl: u32) {
        let lower = LowerName::new(&Name::from_ascii(name).unwrap());
        f.cache.put(
            (lower, RecordType::A, DNSClass::IN),
            Entry { bytes: bytes.into(), stored: Instant::now() - Duration::from_secs(age), ttl },
        );
    }

    #[test]
    fn cache_hit_counts_ttl_down_and_keeps_client_case() {
        let f = Forwarder::new(ForwardConfig::default(), Arc::default());
        put(&f, "example.org.", response("example.org.", 30), 10, 30);
        let lower = LowerName::new(&Name::from_ascii("example.org.").unwrap());
        let asked = Name::from_ascii("ExAmple.ORG.").unwrap();
        let hit = f.cached(&lower, RecordType::A, DNSClass::IN).expect("cached");
        let ans = hit.to_answer(&lower, &asked);
        assert_eq!(ans.answers[0].ttl, 20, "TTL should be counted down by the entry's age");
        assert!(ans.answers[0].name.eq_case(&asked), "owner should keep the client's case, saw {}", ans.answers[0].name);
        assert!(f.cached(&lower, RecordType::AAAA, DNSClass::IN).is_none(), "other types are misses");
    }

    #[test]
    fn expired_entries_are_misses() {
        let f = Forwarder::new(ForwardConfig::default(), Arc::default());
        put(&f, "example.org.", response("example.org.", 5), 6, 5);
        let lower = LowerName::new(&Name::from_ascii("example.org.").unwrap());
        assert!(f.cached(&lower, RecordType::A, DNSClass::IN).is_none());
    }

    #[test]
    fn cache_is_bounded_in_bytes_oldest_out_first() {
        let budget = 64 * 1024;
        let f = Forwarder::new(ForwardConfig { cache_bytes: budget, ..ForwardConfig::default() }, Arc::default());
        // 2,000 entries of about 100 bytes each would be 200 KB: the budget holds a third.
        for i in 0..2000 {
            let name = format!("n{i}.example.org.");
            put(&f, &name, response(&name, 300), 0, 300);
        }
        let (bytes, entries) = f.cache_usage();
        assert!(bytes <= budget, "cache holds {bytes} bytes, budget {budget}");
        assert!(entries > 100, "the budget is used, not wasted: {entries} entries");
        let last = LowerName::new(&Name::from_ascii("n1999.example.org.").unwrap());
        assert!(f.cached(&last, RecordType::A, DNSClass::IN).is_some(), "the newest entry stays");
        let first = LowerName::new(&Name::from_ascii("n0.example.org.").unwrap());
        assert!(f.cached(&first, RecordType::A, DNSClass::IN).is_none(), "the oldest was evicted");
        // One response larger than a shard's share is not cached at all.
        put(&f, "huge.example.org.", vec![0u8; budget], 0, 300);
        assert!(f.cache_usage().0 <= budget);
    }

    #[tokio::test]
    async fn forwards_beyond_the_inflight_limit_fail_at_once() {
        let f = Forwarder::new(
            ForwardConfig { upstreams: vec!["127.0.0.1:9".parse().unwrap()], max_inflight: 0, ..ForwardConfig::default() },
            Arc::default(),
        );
        let got = f.resolve(&Name::from_ascii("example.org.").unwrap(), RecordType::A, DNSClass::IN).await;
        assert_eq!(got.unwrap_err(), ResponseCode::ServFail);
        assert_eq!(f.metrics.forward_rejected.load(Ordering::Relaxed), 1);
    }
}
